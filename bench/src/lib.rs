//! meshd benchmarks: each one runs meshd and a reference system side by side, in the same
//! invocation and on the same lab topology, and prints the figures with their ratios.
//!
//! - [`raft`]: control-plane writes (throughput and latency with 1 and N concurrent
//!   clients), leader kill to the first accepted write, and how fast a killed node is marked
//!   down; the reference is a 3-member etcd.
//!
//! The building blocks are public so that other benchmarks reuse them: [`http`] (a small
//! keep-alive HTTP/1.1 client over unix or TCP sockets), [`load`] (time- and count-bounded
//! load with latency percentiles, and the first-write-after-a-fault probe), [`netns`]
//! (running async code inside a lab namespace), [`machine`] (what the figures were measured
//! on) and [`cleanup`] (undoing everything on Ctrl-C).

pub mod cleanup;
pub mod error;
pub mod etcd;
pub mod http;
pub mod load;
pub mod machine;
pub mod meshd;
pub mod netns;
pub mod raft;
pub mod report;
pub mod stats;

pub use error::BenchError;
