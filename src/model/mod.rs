//! The shared vocabulary: what every part of the agent may name, and which names nothing else.

mod attempt;
mod phase;
mod store_path;
mod target;

pub use attempt::{Attempt, CheckResult, Deployed, InFlight, Outcome, Reboot, now};
pub use phase::{Phase, Verdict, Waiting, WaitingFor};
pub use store_path::{FlakeRef, StorePath, ValueError};
pub use target::{Job, Source, Target};
