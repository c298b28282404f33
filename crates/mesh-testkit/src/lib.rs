//! meshd lab: N hosts in network namespaces on one machine.
//!
//! A lab is an underlay namespace `ml<ID>-lab` holding a bridge `br0`, and one namespace per
//! host, `ml<ID>-h<i>`, whose `eth0` (`192.0.2.i/24`) is plugged into that bridge; optionally a
//! client namespace `ml<ID>-c` at `192.0.2.200`. Each host runs its own `meshd`. The machine's
//! own network is never touched. Everything is undone when the [`Lab`] is dropped, also while
//! a test panics; labs left by a process that died are removed by [`sweep_stale`].
//!
//! ```no_run
//! use std::time::Duration;
//! use mesh_testkit::{Lab, LabOptions};
//!
//! # fn main() -> Result<(), mesh_testkit::LabError> {
//! let lab = Lab::start(LabOptions::hosts(3))?;
//! lab.swarm(1, &["init", "--advertise-addr", "192.0.2.1"]).ok()?;
//! lab.partition(&[1], &[2, 3])?;
//! lab.wait_until("host1 to be cut off", Duration::from_secs(30), || Some(()))?;
//! lab.heal()?;
//! # Ok(())
//! # }
//! ```

mod bins;
mod cmd;
pub mod demo;
mod error;
mod lab;
mod stale;

pub use bins::{meshd_bin, swarm_bin};
pub use cmd::CmdOutput;
pub use error::LabError;
pub use lab::{CLIENT_IP, CONTROL_PORT, Lab, LabOptions, MAX_HOSTS};
pub use stale::sweep_stale;
