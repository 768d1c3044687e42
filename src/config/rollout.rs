//! `[rollout]` (SPEC §3): waves without a control plane — the agents that go first, how long they
//! must run the build healthily, and when to give up waiting for them.

use std::time::Duration;

use serde::Deserialize;

/// Longest `bake`, `timeout` or `push_delay` accepted: longer is a typo, not a plan.
pub const MAX_WAIT: Duration = Duration::from_secs(366 * 24 * 3600);

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutConfig {
    /// Base URLs of the agents that must run this build (or a newer one) first.
    pub after: Vec<String>,
    /// How long each of them must have run it, idle, with the last outcome upgraded.
    #[serde(default = "default_bake", with = "humantime_serde")]
    pub bake: Duration,
    /// Since the job was queued; then the attempt ends as `deferred-timeout`.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

fn default_bake() -> Duration {
    Duration::from_secs(30 * 60)
}

fn default_timeout() -> Duration {
    Duration::from_secs(24 * 3600)
}

impl RolloutConfig {
    /// The key at fault and what is wrong with it.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.after.is_empty() {
            return Err((
                "rollout.after",
                "is empty; name the agents that go first, or remove [rollout]".into(),
            ));
        }
        for url in &self.after {
            match reqwest::Url::parse(url) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {
                    if !u.username().is_empty() || u.password().is_some() {
                        return Err((
                            "rollout.after",
                            format!("\"{url}\" carries credentials; /v1/status needs none"),
                        ));
                    }
                }
                _ => {
                    return Err((
                        "rollout.after",
                        format!("\"{url}\" is not an http(s) agent URL like http://canary1:9980"),
                    ));
                }
            }
        }
        if self.timeout.is_zero() {
            return Err(("rollout.timeout", "must be more than 0s".into()));
        }
        for (key, value) in [
            ("rollout.bake", self.bake),
            ("rollout.timeout", self.timeout),
        ] {
            if value > MAX_WAIT {
                return Err((key, "is longer than a year".into()));
            }
        }
        if self.bake >= self.timeout {
            return Err((
                "rollout.timeout",
                format!(
                    "{} is not longer than bake {}: the wave could never open in time",
                    humantime::format_duration(self.timeout),
                    humantime::format_duration(self.bake)
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<RolloutConfig, String> {
        let config: RolloutConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        config.validate().map_err(|(k, m)| format!("{k}: {m}"))?;
        Ok(config)
    }

    #[test]
    fn defaults_and_rejections() {
        let c = parse("after = [\"http://canary1:9980\"]").unwrap();
        assert_eq!(c.bake, Duration::from_secs(1800));
        assert_eq!(c.timeout, Duration::from_secs(86400));
        for (text, needle) in [
            ("after = []", "rollout.after"),
            ("after = [\"canary1:9980\"]", "rollout.after"),
            ("after = [\"http://u:p@canary1:9980\"]", "credentials"),
            (
                "after = [\"http://c\"]\nbake = \"2h\"\ntimeout = \"1h\"",
                "rollout.timeout",
            ),
            (
                "after = [\"http://c\"]\ntimeout = \"0s\"",
                "rollout.timeout",
            ),
            (
                "after = [\"http://c\"]\nbake = \"400days\"\ntimeout = \"500days\"",
                "rollout.bake",
            ),
            ("after = [\"http://c\"]\nwave = 2", "wave"),
        ] {
            let err = parse(text).unwrap_err();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }
}
