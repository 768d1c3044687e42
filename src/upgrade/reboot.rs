//! Whether a new generation needs a reboot, and whether now is the time for it (pure decisions).

use std::path::{Path, PathBuf};

use crate::config::{TimeOfDay, TimeWindow};

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
    }
}
