//! Post-checks after a live activation, and the way back when they fail.

use std::path::Path;

use crate::config::{Activation, Operation, Settings};
use crate::health;

use crate::exec::{CommandRunner, RunError};
use crate::model::CheckResult;

/// Waits `settle`, then runs the post-checks (none: nothing to wait for).
pub async fn post_checks(settings: &Settings) -> Vec<CheckResult> {
    let checks = health::phase_checks(&settings.health_checks, &settings.system.systemctl, true);
    if checks.is_empty() {
        return Vec::new();
    }
    tokio::time::sleep(settings.health_checks.settle).await;
    health::run_phase(&checks, settings.health_checks.deadline).await
}

/// The command that re-activates `previous`, the system that ran before the attempt.
pub fn rollback_argv(settings: &Settings, previous: &str) -> Vec<String> {
    let operation = match settings.operation {
        Operation::Test => Operation::Test,
        Operation::Switch | Operation::Boot => Operation::Switch,
    };
    let mut argv = match (settings.activation, operation) {
        (Activation::StorePath, _) => {
            let mut argv = vec![
                settings.system.nixos_rebuild.clone(),
                operation.as_str().into(),
            ];
            argv.extend(super::activate::store_path_args(previous));
            argv
        }
        // `--rollback` steps the profile back one generation, which `switch` just added;
        // `--fast` (both nixos-rebuild and -ng) skips re-executing from /etc/nixos, which a
        // rollback never needs and which fails the rollback when /etc/nixos does not evaluate.
        (Activation::Flake, Operation::Switch | Operation::Boot) => {
            vec![
                settings.system.nixos_rebuild.clone(),
                "switch".into(),
                "--rollback".into(),
                "--fast".into(),
            ]
        }
        // `test` added no generation to step back from: activate the old system directly.
        (Activation::Flake, Operation::Test) => {
            let activate = Path::new(previous).join("bin/switch-to-configuration");
            return vec![activate.display().to_string(), "test".into()];
        }
    };
    argv.extend(settings.flags.iter().cloned());
    argv
}

/// Re-activates `previous`; the post-checks after it, or why it could not be done.
pub async fn roll_back(
    settings: &Settings,
    runner: &CommandRunner,
    previous: Option<&str>,
) -> Result<Vec<CheckResult>, RollbackError> {
    let previous = previous.ok_or(RollbackError::PreviousUnknown)?;
    tracing::warn!(previous, "rolling back to the previous system");
    runner
        .run(&rollback_argv(settings, previous))
        .await
        .map_err(RollbackError::Command)?;
    Ok(post_checks(settings).await)
}

/// Why the way back could not be taken.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RollbackError {
    #[error("the previous system is unknown (current_system was unreadable)")]
    PreviousUnknown,
    #[error("rollback failed: {0}")]
    Command(RunError),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(extra: &str) -> Settings {
        let text = format!(
            "host = \"web1\"\nflags = [\"-L\"]\n{extra}\n[hydra]\ninstance = \"http://h\"\nproject = \"p\"\njobset = \"j\"\n"
        );
        Settings::from_toml(&text, Path::new("t.toml")).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn rollback_argv_table() {
        let old = "/nix/store/abc-nixos-system-web1-old";
        let cases = [
            (
                "",
                vec![
                    "nixos-rebuild",
                    "switch",
                    "--store-path",
                    old,
                    "--no-reexec",
                    "-L",
                ],
            ),
            (
                "operation = \"test\"",
                vec![
                    "nixos-rebuild",
                    "test",
                    "--store-path",
                    old,
                    "--no-reexec",
                    "-L",
                ],
            ),
            (
                "allow_reboot = true",
                vec![
                    "nixos-rebuild",
                    "switch",
                    "--store-path",
                    old,
                    "--no-reexec",
                    "-L",
                ],
            ),
            (
                "activation = \"flake\"",
                vec!["nixos-rebuild", "switch", "--rollback", "--fast", "-L"],
            ),
            (
                "activation = \"flake\"\noperation = \"test\"",
                vec![
                    "/nix/store/abc-nixos-system-web1-old/bin/switch-to-configuration",
                    "test",
                ],
            ),
        ];
        for (extra, want) in cases {
            assert_eq!(rollback_argv(&settings(extra), old), want, "{extra}");
        }
    }
}
