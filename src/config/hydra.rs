//! `[hydra]`: which Hydra, project, jobset and job hold this host's system.

use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HydraConfig {
    pub instance: String,
    pub project: String,
    pub jobset: String,
    #[serde(default)]
    pub job: Option<String>,
    #[serde(default = "default_hydra_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

pub(super) fn default_hydra_timeout() -> Duration {
    Duration::from_secs(10)
}

/// Hydra project, jobset and job names go into URL paths: keep them to Hydra's own alphabet.
pub(super) fn check_name(name: &str) -> Result<(), String> {
    if !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        Ok(())
    } else {
        Err(format!(
            "\"{name}\" is not a Hydra name (letters, digits, - _ .)"
        ))
    }
}
