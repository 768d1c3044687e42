//! `[[gates]]`: conditions that defer an activation while they are closed, never fail it.

use std::time::Duration;

use serde::Deserialize;

/// Longest `recheck`: a closed gate is looked at again at least weekly.
pub const MAX_RECHECK: Duration = Duration::from_secs(7 * 24 * 3600);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GateKind {
    /// logind has no user session.
    NoSessions,
    /// NetworkManager does not report a metered connection.
    NotMetered,
    /// `argv` exits 0.
    Command,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GateConfig {
    pub kind: GateKind,
    #[serde(default = "default_recheck", with = "humantime_serde")]
    pub recheck: Duration,
    #[serde(default)]
    pub argv: Vec<String>,
}

fn default_recheck() -> Duration {
    Duration::from_secs(300)
}

impl GateConfig {
    /// The name status and logs use: the kind, or `command <program>`.
    pub fn name(&self) -> String {
        match self.kind {
            GateKind::NoSessions => "no-sessions".into(),
            GateKind::NotMetered => "not-metered".into(),
            GateKind::Command => format!(
                "command {}",
                self.argv.first().map(String::as_str).unwrap_or_default()
            ),
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.recheck.is_zero() || self.recheck > MAX_RECHECK {
            return Err(format!(
                "{}: recheck must be more than 0s and at most 7days",
                self.name()
            ));
        }
        match (self.kind, self.argv.first()) {
            (GateKind::Command, None) => {
                Err("kind = \"command\" needs argv = [\"/path/to/check\", …]".into())
            }
            (GateKind::Command, Some(program)) if program.is_empty() => {
                Err("command: argv[0] must not be empty".into())
            }
            (GateKind::Command, _) => Ok(()),
            (_, Some(_)) => Err(format!(
                "{}: argv is only for kind = \"command\"",
                self.name()
            )),
            (_, None) => Ok(()),
        }
    }
}

/// Validates every gate; the error names the first bad one by position.
pub fn validate_all(gates: &[GateConfig]) -> Result<(), String> {
    for (i, gate) in gates.iter().enumerate() {
        gate.validate().map_err(|m| format!("[{i}] {m}"))?;
    }
    Ok(())
}
