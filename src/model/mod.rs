//! The shared vocabulary: what every part of the agent may name, and which names nothing else.

mod attempt;
mod phase;
mod store_path;
mod target;

pub use attempt::{Attempt, CheckResult, Deployed, InFlight, Outcome, Reboot, now};
pub use phase::{FetchProgress, Phase, Verdict, Waiting, WaitingFor};
pub use store_path::{FlakeRef, StorePath, ValueError};
pub use target::{Job, Source, Target};

/// Every request to an agent is answered within this time, the wait for a slot included: past
/// it, 503 `unavailable` with `Retry-After` (SPEC §4). Senders wait longer than this per attempt.
pub const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Told about every request to Hydra (for metrics); the Hydra client works without one.
pub trait RequestObserver: Send + Sync {
    /// `endpoint` is the first path segment (`build`, `eval`, `job`); `ok` is false on a
    /// transport error or a 5xx answer.
    fn request(&self, endpoint: &'static str, elapsed: std::time::Duration, ok: bool);
    /// Hydra confirmed `build` deployable.
    fn verified(&self, build: u64);
}
