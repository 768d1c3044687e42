//! The shared vocabulary: what every part of the agent may name, and which names nothing else.

mod attempt;
mod phase;
mod store_path;
mod target;

pub use attempt::{Attempt, CheckResult, Deployed, InFlight, Outcome, Reboot, now};
pub use phase::{Phase, Verdict, Waiting, WaitingFor};
pub use store_path::{FlakeRef, StorePath, ValueError};
pub use target::{Job, Source, Target};

/// Told about every request to Hydra (for metrics); the Hydra client works without one.
pub trait RequestObserver: Send + Sync {
    /// `endpoint` is the first path segment (`build`, `eval`, `job`); `ok` is false on a
    /// transport error or a 5xx answer.
    fn request(&self, endpoint: &'static str, elapsed: std::time::Duration, ok: bool);
    /// Hydra confirmed `build` deployable.
    fn verified(&self, build: u64);
}
