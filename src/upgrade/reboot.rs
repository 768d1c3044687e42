//! Whether a new generation needs a reboot, and whether now is the time for it (pure decisions).

use std::path::{Path, PathBuf};

use crate::config::{SystemConfig, TimeOfDay, TimeWindow};
use crate::model::{Attempt, Outcome, Reboot};
use crate::upgrade::inhibitors;

/// The boot-critical parts of a system closure (as nixpkgs' system.autoUpgrade compares them).
const BOOT_FILES: [&str; 3] = ["initrd", "kernel", "kernel-modules"];

/// What to do after `nixos-rebuild boot` with `allow_reboot`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// Kernel, initrd and modules are unchanged: activate live.
    NoReboot,
    /// They changed and now is inside the window (or there is none).
    RebootNow,
    /// They changed but now is outside the window.
    Defer,
}

/// Whether any boot file resolves differently under the booted system and the new profile.
pub fn boot_files_differ(booted_system: &Path, system_profile: &Path) -> bool {
    let resolve = |root: &Path, name: &str| -> Option<PathBuf> {
        std::fs::canonicalize(root.join(name)).ok()
    };
    BOOT_FILES
        .iter()
        .any(|name| resolve(booted_system, name) != resolve(system_profile, name))
}

/// The boot files that resolve differently under the booted system and the new profile.
pub fn differing_boot_files(booted_system: &Path, system_profile: &Path) -> Vec<&'static str> {
    let resolve = |root: &Path, name: &str| -> Option<PathBuf> {
        std::fs::canonicalize(root.join(name)).ok()
    };
    BOOT_FILES
        .into_iter()
        .filter(|name| resolve(booted_system, name) != resolve(system_profile, name))
        .collect()
}

/// Whether the host needs a reboot to run its installed system, and why.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RebootNeed {
    /// Kernel, initrd or modules differ between the booted system and the profile.
    pub boot_files: Vec<&'static str>,
    /// Switch inhibitors differ between the running system and the profile (it was installed
    /// for the next boot because a live switch would be refused).
    pub inhibitors: Vec<inhibitors::Change>,
}

impl RebootNeed {
    /// Read from the host now (at start and after every attempt).
    pub fn of_host(system: &SystemConfig) -> RebootNeed {
        RebootNeed {
            boot_files: differing_boot_files(&system.booted_system, &system.system_profile),
            inhibitors: inhibitors::compare(&system.current_system, &system.system_profile),
        }
    }

    pub fn needed(&self) -> bool {
        !self.boot_files.is_empty() || !self.inhibitors.is_empty()
    }

    /// "kernel, initrd; switch inhibitors (systemd: a -> b)", or "" when none is needed.
    pub fn why(&self) -> String {
        let mut parts = Vec::new();
        if !self.boot_files.is_empty() {
            parts.push(self.boot_files.join(", "));
        }
        if !self.inhibitors.is_empty() {
            parts.push(format!(
                "switch inhibitors ({})",
                inhibitors::describe(&self.inhibitors)
            ));
        }
        parts.join("; ")
    }
}

/// Whether the newest upgrade in `history` (newest first) deferred its reboot.
pub fn deferred_in<'a>(history: impl IntoIterator<Item = &'a Attempt>) -> bool {
    history
        .into_iter()
        .find(|a| a.outcome == Outcome::Upgraded)
        .is_some_and(|a| a.reboot == Reboot::Deferred)
}

/// The reboot state now: a deferred reboot stands while the newest upgrade deferred it and the
/// host still needs it; it is cancelled once an activation made the boot files (and switch
/// inhibitors) equal to what the host runs again.
pub fn settle<'a>(history: impl IntoIterator<Item = &'a Attempt>, need: &RebootNeed) -> Reboot {
    if deferred_in(history) && need.needed() {
        Reboot::Deferred
    } else {
        Reboot::None
    }
}

/// `settle` from the host now, logged: at start and after every attempt. `was_deferred`: a
/// reboot was deferred before (so its cancellation is worth a line).
pub fn recompute<'a>(
    system: &SystemConfig,
    history: impl IntoIterator<Item = &'a Attempt>,
    was_deferred: bool,
) -> (RebootNeed, Reboot) {
    let need = RebootNeed::of_host(system);
    let history: Vec<&Attempt> = history.into_iter().collect();
    let reboot = settle(history.iter().copied(), &need);
    let rebooting = history
        .first()
        .is_some_and(|a| a.reboot == Reboot::Scheduled);
    if was_deferred && reboot == Reboot::None && !rebooting {
        tracing::info!(
            "deferred reboot cancelled: the installed system boots what the host booted"
        );
    }
    if need.needed() {
        tracing::info!(because = %need.why(), deferred = reboot == Reboot::Deferred, "reboot needed");
    }
    (need, reboot)
}

pub fn plan(differ: bool, window: Option<TimeWindow>, now: TimeOfDay) -> Plan {
    match (differ, window) {
        (false, _) => Plan::NoReboot,
        (true, None) => Plan::RebootNow,
        (true, Some(w)) if w.contains(now) => Plan::RebootNow,
        (true, Some(_)) => Plan::Defer,
    }
}

/// The local wall-clock time, for the reboot window.
pub fn local_time_of_day() -> TimeOfDay {
    let now = jiff::Zoned::now();
    TimeOfDay(
        u16::try_from(now.hour()).unwrap_or(0) * 60 + u16::try_from(now.minute()).unwrap_or(0),
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn plan_table() {
        let t = |s| TimeOfDay::parse(s).unwrap();
        let window = Some(TimeWindow {
            lower: t("01:00"),
            upper: t("05:00"),
        });
        let night = Some(TimeWindow {
            lower: t("22:00"),
            upper: t("02:00"),
        });
        let cases = [
            (false, None, "12:00", Plan::NoReboot),
            (false, window, "03:00", Plan::NoReboot),
            (true, None, "12:00", Plan::RebootNow),
            (true, window, "03:00", Plan::RebootNow),
            (true, window, "12:00", Plan::Defer),
            (true, night, "23:59", Plan::RebootNow),
            (true, night, "01:59", Plan::RebootNow),
            (true, night, "02:01", Plan::Defer),
        ];
        for (differ, window, now, want) in cases {
            assert_eq!(
                plan(differ, window, t(now)),
                want,
                "{differ} {window:?} {now}"
            );
        }
    }

    #[test]
    fn a_deferred_reboot_stands_only_while_needed() {
        let attempt = |reboot| Attempt {
            build: 1,
            path: None,
            source: crate::model::Source::Hydra,
            outcome: crate::model::Outcome::Upgraded,
            reboot,
            error: None,
            started_at: jiff::Timestamp::UNIX_EPOCH,
            finished_at: jiff::Timestamp::UNIX_EPOCH,
            checks: Vec::new(),
        };
        let needed = RebootNeed {
            boot_files: vec!["kernel"],
            inhibitors: Vec::new(),
        };
        let deferred = attempt(Reboot::Deferred);
        let failed = Attempt {
            outcome: crate::model::Outcome::Failed,
            ..attempt(Reboot::None)
        };
        assert_eq!(settle([&deferred], &needed), Reboot::Deferred);
        assert_eq!(settle([&failed, &deferred], &needed), Reboot::Deferred);
        assert_eq!(settle([&deferred], &RebootNeed::default()), Reboot::None);
        let later = attempt(Reboot::None);
        assert_eq!(settle([&later, &deferred], &needed), Reboot::None);
        assert_eq!(settle([], &needed), Reboot::None);
        assert_eq!(needed.why(), "kernel");
    }

    #[test]
    fn compares_resolved_boot_files() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        for name in ["kernel-a", "kernel-b", "initrd", "modules"] {
            std::fs::create_dir_all(store.join(name)).unwrap();
        }
        let system = |name: &str, kernel: &str| {
            let root = dir.path().join(name);
            std::fs::create_dir_all(&root).unwrap();
            symlink(store.join(kernel), root.join("kernel")).unwrap();
            symlink(store.join("initrd"), root.join("initrd")).unwrap();
            symlink(store.join("modules"), root.join("kernel-modules")).unwrap();
            root
        };
        let booted = system("booted", "kernel-a");
        let same = system("same", "kernel-a");
        let newer = system("newer", "kernel-b");
        assert!(!boot_files_differ(&booted, &same));
        assert!(boot_files_differ(&booted, &newer));
        assert!(boot_files_differ(&booted, &dir.path().join("missing")));
        assert_eq!(differing_boot_files(&booted, &newer), ["kernel"]);
        assert!(differing_boot_files(&booted, &same).is_empty());
    }
}
