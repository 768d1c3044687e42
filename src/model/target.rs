//! What an upgrade is about: the build Hydra vouched for, and the queued job around it.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::{FlakeRef, StorePath};

/// Who asked for an upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    Hydra,
    Manual,
    Schedule,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Hydra => "hydra",
            Source::Manual => "manual",
            Source::Schedule => "schedule",
        }
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the worker deploys: a build Hydra confirmed, with its out path (and flake for flake activation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    pub build: u64,
    pub path: StorePath,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flake: Option<FlakeRef>,
}

/// A verified target waiting for, or taken by, the worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    pub target: Target,
    pub source: Source,
    /// A manual request that may redeploy or go back.
    #[serde(default)]
    pub force: bool,
    pub received_at: Timestamp,
}
