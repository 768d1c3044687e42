//! Where the worker is in an attempt (SPEC §4 `phase`), and what a waiting attempt waits for.

use jiff::Timestamp;
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    Idle,
    Verifying,
    PreChecking,
    Fetching,
    Waiting,
    Activating,
    Settling,
    PostChecking,
    RollingBack,
    Rebooting,
}

impl Phase {
    pub const ALL: [Phase; 10] = [
        Phase::Idle,
        Phase::Verifying,
        Phase::PreChecking,
        Phase::Fetching,
        Phase::Waiting,
        Phase::Activating,
        Phase::Settling,
        Phase::PostChecking,
        Phase::RollingBack,
        Phase::Rebooting,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Idle => "idle",
            Phase::Verifying => "verifying",
            Phase::PreChecking => "pre-checking",
            Phase::Fetching => "fetching",
            Phase::Waiting => "waiting",
            Phase::Activating => "activating",
            Phase::Settling => "settling",
            Phase::PostChecking => "post-checking",
            Phase::RollingBack => "rolling-back",
            Phase::Rebooting => "rebooting",
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an attempt may not activate yet (SPEC §4 `waiting`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "reason", rename_all = "kebab-case")]
pub enum WaitingFor {
    /// Outside `activation_window`.
    Window,
    /// A `[[gates]]` entry is closed.
    Gate { gate: String },
    /// `[rollout] after` agents that have not run this build (or a newer one) healthy for `bake`.
    Rollout { agents: Vec<String> },
}

impl WaitingFor {
    /// The bounded label for metrics: `window`, `gate` or `rollout`.
    pub fn reason(&self) -> &'static str {
        match self {
            WaitingFor::Window => "window",
            WaitingFor::Gate { .. } => "gate",
            WaitingFor::Rollout { .. } => "rollout",
        }
    }
}

/// The `waiting` object of `/v1/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Waiting {
    #[serde(flatten)]
    pub what: WaitingFor,
    /// Human-readable: "outside 02:00–04:00", "gate no-sessions: 2 sessions".
    pub detail: String,
    pub since: Timestamp,
    /// When the worker looks again.
    pub until: Timestamp,
}

/// How far fetching the target closure is (`/v1/status` `fetch`, while phase `fetching`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FetchProgress {
    pub target: String,
    pub paths_done: u64,
    pub paths_expected: u64,
    /// NAR bytes copied into the store so far, and in all.
    pub bytes_done: u64,
    pub bytes_expected: u64,
    /// The path most recently started.
    pub current: Option<String>,
}

/// What a condition on activation (window, gate, rollout wave) says now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Open,
    /// Not yet: wait for `what`, and look again after `recheck`.
    Closed {
        what: WaitingFor,
        detail: String,
        recheck: std::time::Duration,
    },
}
