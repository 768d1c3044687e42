//! `[system]`: where the host's facts and tools live; tests point these elsewhere.

use std::path::PathBuf;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SystemConfig {
    pub nixos_rebuild: String,
    pub reboot_command: Vec<String>,
    pub current_system: PathBuf,
    pub booted_system: PathBuf,
    pub system_profile: PathBuf,
    /// For `systemd` health checks.
    pub systemctl: String,
    /// For the closure diff logged before activation (skipped when not found).
    pub nix: String,
    /// The agent's own unit: a switch that changes `etc/systemd/system/<unit>` makes it exit 0
    /// so systemd starts the new version.
    pub unit: String,
    /// The lock switch-to-configuration holds while it switches; an interrupted attempt is
    /// settled only once it is free.
    pub switch_lock: PathBuf,
}

impl Default for SystemConfig {
    fn default() -> Self {
        SystemConfig {
            nixos_rebuild: "nixos-rebuild".into(),
            reboot_command: vec!["systemctl".into(), "reboot".into()],
            current_system: "/run/current-system".into(),
            booted_system: "/run/booted-system".into(),
            system_profile: "/nix/var/nix/profiles/system".into(),
            systemctl: "systemctl".into(),
            nix: "nix".into(),
            unit: "nixos-hydra-upgrade.service".into(),
            switch_lock: "/run/nixos/switch-to-configuration.lock".into(),
        }
    }
}
