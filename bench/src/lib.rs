//! meshd benchmarks: each one runs meshd and a reference system side by side, in the same
//! invocation and on the same lab topology, and prints the figures with their ratios.
//!
//! - [`raft`]: control-plane writes (throughput and latency with 1 and N concurrent
//!   clients), leader kill to the first accepted write, and how fast a killed node is marked
//!   down; the reference is a 3-member etcd.
//! - [`services`]: time from `service create` to N containers running, a killed host's
//!   tasks running elsewhere, a rolling update, and the scheduler's placements per second
//!   ([`sched`]); the reference is a Docker Swarm of the same shape ([`docker`]), and
//!   Nomad's figure, quoted.
//!
//! The building blocks are public so that other benchmarks reuse them: [`http`] (a small
//! keep-alive HTTP/1.1 client over unix or TCP sockets), [`load`] (time- and count-bounded
//! load with latency percentiles, and the first-write-after-a-fault probe), [`netns`]
//! (running async code inside a lab namespace), [`machine`] (what the figures were measured
//! on), [`kill`] (killing a lab host as a whole) and [`cleanup`] (undoing everything on
//! Ctrl-C).

pub mod cleanup;
pub mod docker;
pub mod error;
pub mod etcd;
pub mod http;
pub mod kill;
pub mod load;
pub mod machine;
pub mod meshd;
pub mod netns;
pub mod raft;
pub mod report;
pub mod sched;
pub mod services;
pub mod services_report;
pub mod stats;

pub use error::BenchError;
