//! The nixos-rebuild (and reboot) command lines of SPEC §6, as data, and the sequence that runs them.

use crate::config::{Activation, Operation, Settings, TimeOfDay};

use super::inhibitors::{self, Change};
use super::reboot::{self, Plan};
use crate::exec::{CommandRunner, RunError};
use crate::model::{Phase, Reboot, Target};

/// nixos-rebuild-ng's opt-out of re-executing itself as the `config.system.build.nixos-rebuild`
/// of the host's local configuration (`/etc/nixos`), which `--store-path` must not evaluate.
pub const NO_REEXEC: &str = "--no-reexec";

/// `--store-path <path> --no-reexec`: activate exactly `path`, evaluating nothing.
pub fn store_path_args(path: &str) -> Vec<String> {
    vec!["--store-path".into(), path.into(), NO_REEXEC.into()]
}

/// `--store-path <out> --no-reexec` or `--flake <flake>#<host>` (whose re-exec builds
/// nixos-rebuild from the very flake being deployed, so it is left on).
pub fn target_args(settings: &Settings, target: &Target) -> Vec<String> {
    match (settings.activation, &target.flake) {
        (Activation::Flake, Some(flake)) => {
            vec!["--flake".into(), format!("{flake}#{}", settings.host)]
        }
        _ => store_path_args(target.path.as_str()),
    }
}

/// `nixos-rebuild <operation> <target> <flags>`.
pub fn rebuild_argv(settings: &Settings, operation: Operation, target: &Target) -> Vec<String> {
    let mut argv = vec![
        settings.system.nixos_rebuild.clone(),
        operation.as_str().into(),
    ];
    argv.extend(target_args(settings, target));
    argv.extend(settings.flags.iter().cloned());
    argv
}

/// What the activation left behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Activated {
    pub reboot: Reboot,
    /// The new system is running now (a live switch or test happened).
    pub live: bool,
}

/// What the activation must take into account beyond the settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conditions {
    /// Switch inhibitors that differ between the running system and the target.
    pub inhibitors: Vec<Change>,
    /// The local time of day, for the reboot window.
    pub now: TimeOfDay,
}

impl Conditions {
    /// Whether the activation installs for the next boot only (so the activation window does
    /// not apply to it).
    pub fn boot_only(&self, settings: &Settings) -> bool {
        !inhibitors::effective_operation(settings.operation, &self.inhibitors).is_live()
    }
}

/// Runs the commands of SPEC §6 for `target`.
pub async fn activate(
    settings: &Settings,
    runner: &CommandRunner,
    target: &Target,
    conditions: &Conditions,
    set_phase: impl Fn(Phase),
) -> Result<Activated, RunError> {
    let operation = inhibitors::effective_operation(settings.operation, &conditions.inhibitors);
    let inhibited = operation != settings.operation;
    if inhibited {
        tracing::warn!(
            inhibitors = %inhibitors::describe(&conditions.inhibitors),
            "switch inhibitors changed: installing for the next boot instead of switching"
        );
    }
    if !settings.allow_reboot {
        runner
            .run(&rebuild_argv(settings, operation, target))
            .await?;
        return Ok(Activated {
            reboot: Reboot::None,
            live: operation.is_live(),
        });
    }
    runner
        .run(&rebuild_argv(settings, Operation::Boot, target))
        .await?;
    let differ = reboot::boot_files_differ(
        &settings.system.booted_system,
        &settings.system.system_profile,
    ) || inhibited;
    let why = if inhibited {
        "switch inhibitors changed"
    } else {
        "kernel, initrd or modules changed"
    };
    match reboot::plan(differ, settings.reboot_window, conditions.now) {
        Plan::NoReboot if operation.is_live() => {
            runner
                .run(&rebuild_argv(settings, operation, target))
                .await?;
            Ok(Activated {
                reboot: Reboot::None,
                live: true,
            })
        }
        Plan::NoReboot => Ok(Activated {
            reboot: Reboot::None,
            live: false,
        }),
        Plan::RebootNow => {
            tracing::info!("{why}: rebooting");
            set_phase(Phase::Rebooting);
            runner.run(&settings.system.reboot_command).await?;
            Ok(Activated {
                reboot: Reboot::Scheduled,
                live: false,
            })
        }
        Plan::Defer => {
            tracing::info!("{why}: reboot deferred to the reboot window");
            Ok(Activated {
                reboot: Reboot::Deferred,
                live: false,
            })
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::path::Path;

    fn settings(extra: &str) -> Settings {
        let text = format!(
            "host = \"web1\"\nflags = [\"--option\", \"cores\", \"2\"]\n{extra}\n[hydra]\ninstance = \"http://h\"\nproject = \"p\"\njobset = \"j\"\n"
        );
        Settings::from_toml(&text, Path::new("t.toml")).unwrap()
    }

    #[test]
    fn argv_for_each_activation_and_operation() {
        let target = Target {
            build: 7,
            path: crate::model::StorePath::parse(
                "/nix/store/00000000000000000000000000000000-nixos-system-web1",
            )
            .unwrap(),
            flake: Some(crate::model::FlakeRef::parse("github:acme/infra/0123").unwrap()),
        };
        let store = settings("");
        let flake = settings("activation = \"flake\"");
        for op in [Operation::Switch, Operation::Boot, Operation::Test] {
            let name = op.as_str();
            assert_eq!(
                rebuild_argv(&store, op, &target),
                [
                    "nixos-rebuild",
                    name,
                    "--store-path",
                    "/nix/store/00000000000000000000000000000000-nixos-system-web1",
                    "--no-reexec",
                    "--option",
                    "cores",
                    "2"
                ]
            );
            assert_eq!(
                rebuild_argv(&flake, op, &target),
                [
                    "nixos-rebuild",
                    name,
                    "--flake",
                    "github:acme/infra/0123#web1",
                    "--option",
                    "cores",
                    "2"
                ]
            );
        }
    }
}
