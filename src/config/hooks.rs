//! `[hooks]`: operator commands run after an attempt, each an argv (no shell).

use std::time::Duration;

use serde::Deserialize;

use crate::model::{Attempt, Outcome, Reboot};

/// `[hooks]`: each an argv (no shell), empty for none.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HooksConfig {
    pub on_success: Vec<String>,
    pub on_failure: Vec<String>,
    pub on_rollback: Vec<String>,
    pub on_reboot_needed: Vec<String>,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for HooksConfig {
    fn default() -> Self {
        HooksConfig {
            on_success: Vec::new(),
            on_failure: Vec::new(),
            on_rollback: Vec::new(),
            on_reboot_needed: Vec::new(),
            timeout: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HookError {
    #[error(
        "hooks.{0}: the first element must be a program, e.g. [\"/path/to/notify\", \"arg\"] \
         (or [] for no hook)"
    )]
    NoProgram(&'static str),
    #[error("hooks.timeout: must be more than 0s")]
    ZeroTimeout,
}

/// Which hook an attempt fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    Success,
    Failure,
    Rollback,
    RebootNeeded,
}

impl Hook {
    pub fn key(self) -> &'static str {
        match self {
            Hook::Success => "on_success",
            Hook::Failure => "on_failure",
            Hook::Rollback => "on_rollback",
            Hook::RebootNeeded => "on_reboot_needed",
        }
    }

    pub fn event(self) -> &'static str {
        match self {
            Hook::Success => "success",
            Hook::Failure => "failure",
            Hook::Rollback => "rollback",
            Hook::RebootNeeded => "reboot-needed",
        }
    }
}

impl HooksConfig {
    pub fn validate(&self) -> Result<(), HookError> {
        for hook in [
            Hook::Success,
            Hook::Failure,
            Hook::Rollback,
            Hook::RebootNeeded,
        ] {
            let argv = self.argv(hook);
            if argv.first().is_some_and(|p| p.trim().is_empty()) {
                return Err(HookError::NoProgram(hook.key()));
            }
        }
        if self.timeout.is_zero() {
            return Err(HookError::ZeroTimeout);
        }
        Ok(())
    }

    pub fn argv(&self, hook: Hook) -> &[String] {
        match hook {
            Hook::Success => &self.on_success,
            Hook::Failure => &self.on_failure,
            Hook::Rollback => &self.on_rollback,
            Hook::RebootNeeded => &self.on_reboot_needed,
        }
    }

    /// The configured hooks an attempt fires, in order. `current` fires none; a rollback fires
    /// `on_rollback`, or `on_failure` when `on_rollback` is not set.
    pub fn fired(&self, attempt: &Attempt) -> Vec<Hook> {
        let hooks = match attempt.outcome {
            Outcome::Upgraded if attempt.reboot == Reboot::Deferred => {
                vec![Hook::Success, Hook::RebootNeeded]
            }
            Outcome::Upgraded => vec![Hook::Success],
            Outcome::Current | Outcome::DryRun => vec![],
            Outcome::Unhealthy
            | Outcome::Failed
            | Outcome::Interrupted
            | Outcome::DeferredTimeout => vec![Hook::Failure],
            Outcome::RolledBack if self.on_rollback.is_empty() => vec![Hook::Failure],
            Outcome::RolledBack => vec![Hook::Rollback],
        };
        hooks
            .into_iter()
            .filter(|h| !self.argv(*h).is_empty())
            .collect()
    }
}
