//! One upgrade attempt as it is recorded: its outcome, reboot state, checks, and the build it deployed.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::{Source, StorePath};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    Upgraded,
    Current,
    Unhealthy,
    Failed,
    RolledBack,
    /// `dry_run`: everything logged, nothing run; the deployed build does not change.
    DryRun,
    /// The agent stopped mid-activation and the host did not reach the target.
    Interrupted,
    /// `[rollout] timeout` passed before the wave opened.
    DeferredTimeout,
}

impl Outcome {
    pub const ALL: [Outcome; 8] = [
        Outcome::Upgraded,
        Outcome::Current,
        Outcome::Unhealthy,
        Outcome::Failed,
        Outcome::RolledBack,
        Outcome::DryRun,
        Outcome::Interrupted,
        Outcome::DeferredTimeout,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Upgraded => "upgraded",
            Outcome::Current => "current",
            Outcome::Unhealthy => "unhealthy",
            Outcome::Failed => "failed",
            Outcome::RolledBack => "rolled-back",
            Outcome::DryRun => "dry-run",
            Outcome::Interrupted => "interrupted",
            Outcome::DeferredTimeout => "deferred-timeout",
        }
    }

    /// Whether the host now runs the attempt's build.
    pub fn deploys(self) -> bool {
        matches!(self, Outcome::Upgraded | Outcome::Current)
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reboot {
    None,
    Scheduled,
    Deferred,
}

impl Reboot {
    pub fn as_str(self) -> &'static str {
        match self {
            Reboot::None => "none",
            Reboot::Scheduled => "scheduled",
            Reboot::Deferred => "deferred",
        }
    }
}

impl std::fmt::Display for Reboot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The build the host runs, as far as the agent deployed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployed {
    pub build: u64,
    pub path: StorePath,
    pub at: Timestamp,
}

/// An attempt that reached activation; written before the first command runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InFlight {
    pub build: u64,
    pub path: StorePath,
    pub source: Source,
    pub started_at: Timestamp,
    /// What `current_system` pointed to before, for rollback and for settling after a crash.
    #[serde(default)]
    pub previous_system: Option<String>,
    /// Whether the activation changes the running system (switch/test), so post-checks apply.
    #[serde(default = "live_default")]
    pub live: bool,
}

fn live_default() -> bool {
    true
}

/// The outcome of one check, as shown in the table, the log and `/v1/status`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CheckResult {
    pub name: String,
    pub kind: String,
    pub passed: bool,
    /// e.g. "0.04 ms reply from ::1", "connection refused", "status 503".
    pub detail: String,
    /// Attempts started (1 + retries used).
    pub attempts: u32,
    pub duration_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    pub build: u64,
    #[serde(default)]
    pub path: Option<StorePath>,
    pub source: Source,
    pub outcome: Outcome,
    pub reboot: Reboot,
    pub error: Option<String>,
    pub started_at: Timestamp,
    pub finished_at: Timestamp,
    #[serde(default)]
    pub checks: Vec<CheckResult>,
}

/// Now, to the second (fractions only clutter the status).
pub fn now() -> Timestamp {
    Timestamp::from_second(Timestamp::now().as_second()).unwrap_or(Timestamp::UNIX_EPOCH)
}
