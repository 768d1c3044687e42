//! Switch inhibitors (NixOS `system.switch.inhibitors`): when the target's differ from the running
//! system's, a live switch would be refused by switch-to-configuration, so the target is installed
//! for the next boot instead.
//!
//! nixpkgs (nixos/modules/system/activation/switchable-system.nix) links the inhibitors into every
//! system as `<toplevel>/switch-inhibitors`: a JSON object of name → string (current), or a text
//! file of store paths, one a line (an older revision). Its pre-switch check compares the running
//! system's file with the new one; a missing or unreadable file counts as none, and for JSON only
//! keys present in both whose values differ block.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use crate::config::Operation;

/// The file a system closure keeps its switch inhibitors in.
pub const FILE: &str = "switch-inhibitors";
/// Larger files are not inhibitors anyone wrote; they count as none.
const MAX_BYTES: u64 = 1024 * 1024;

/// A system's switch inhibitors, as its file says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inhibitors {
    /// The JSON object form (and "none": an empty object).
    Named(BTreeMap<String, String>),
    /// The older form: store paths, one a line.
    Paths(BTreeSet<String>),
}

impl Inhibitors {
    /// Reads `<system>/switch-inhibitors`; anything missing or unreadable is no inhibitors.
    pub fn of_system(system: &Path) -> Inhibitors {
        let file = system.join(FILE);
        let text = match std::fs::metadata(&file) {
            Ok(meta) if meta.len() <= MAX_BYTES => std::fs::read_to_string(&file).ok(),
            _ => None,
        };
        text.map_or_else(
            || Inhibitors::Named(BTreeMap::new()),
            |t| Inhibitors::parse(&t),
        )
    }

    pub fn parse(text: &str) -> Inhibitors {
        let trimmed = text.trim();
        if trimmed.starts_with('{') {
            let named = serde_json::from_str::<BTreeMap<String, serde_json::Value>>(trimmed)
                .map(|map| {
                    map.into_iter()
                        .map(|(k, v)| match v {
                            serde_json::Value::String(s) => (k, s),
                            other => (k, other.to_string()),
                        })
                        .collect()
                })
                .unwrap_or_default();
            return Inhibitors::Named(named);
        }
        let paths: BTreeSet<String> = trimmed
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect();
        if paths.is_empty() {
            Inhibitors::Named(BTreeMap::new())
        } else {
            Inhibitors::Paths(paths)
        }
    }
}

/// One inhibitor whose value differs between the running system and the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub name: String,
    pub from: String,
    pub to: String,
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {} -> {}", self.name, self.from, self.to)
    }
}

/// The inhibitors that block a live switch from `running` to `target`, as nixpkgs' check sees them.
pub fn changes(running: &Inhibitors, target: &Inhibitors) -> Vec<Change> {
    match (running, target) {
        (Inhibitors::Named(old), Inhibitors::Named(new)) => old
            .iter()
            .filter_map(|(name, from)| {
                let to = new.get(name)?;
                (to != from).then(|| Change {
                    name: name.clone(),
                    from: from.clone(),
                    to: to.clone(),
                })
            })
            .collect(),
        // The older check compared the files whole.
        (Inhibitors::Paths(old), Inhibitors::Paths(new)) if old != new => {
            let only = |a: &BTreeSet<String>, b: &BTreeSet<String>| {
                a.difference(b).cloned().collect::<Vec<_>>().join(" ")
            };
            vec![Change {
                name: FILE.to_owned(),
                from: only(old, new),
                to: only(new, old),
            }]
        }
        // One file in each form: the newer check reads the text one as `{}`, so nothing blocks.
        _ => Vec::new(),
    }
}

/// Compares the running system with the target closure (which must be in the store by now).
pub fn compare(current_system: &Path, target: &Path) -> Vec<Change> {
    changes(
        &Inhibitors::of_system(current_system),
        &Inhibitors::of_system(target),
    )
}

/// The operation to run: a `switch` becomes `boot` when inhibitors changed; `test` and `boot`
/// stay (a `test` is refused by switch-to-configuration itself, which is what its user asked).
pub fn effective_operation(configured: Operation, changes: &[Change]) -> Operation {
    match configured {
        Operation::Switch if !changes.is_empty() => Operation::Boot,
        other => other,
    }
}

/// "systemd: /nix/store/a -> /nix/store/b; dbus-implementation: dbus -> broker".
pub fn describe(changes: &[Change]) -> String {
    changes
        .iter()
        .map(Change::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn named(pairs: &[(&str, &str)]) -> Inhibitors {
        Inhibitors::Named(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn parses_both_forms_leniently() {
        assert_eq!(
            Inhibitors::parse(r#"{"systemd": "/nix/store/a-systemd", "n": 3}"#),
            named(&[("systemd", "/nix/store/a-systemd"), ("n", "3")])
        );
        assert_eq!(
            Inhibitors::parse("/nix/store/a-systemd\n\n/nix/store/b-dbus\n"),
            Inhibitors::Paths(
                ["/nix/store/a-systemd", "/nix/store/b-dbus"]
                    .map(String::from)
                    .into()
            )
        );
        for none in ["", "  \n", "{not json", "{}", "[1,2]\n"] {
            let parsed = Inhibitors::parse(none);
            assert!(
                changes(&parsed, &named(&[("x", "1")])).is_empty(),
                "{none:?} → {parsed:?}"
            );
        }
    }

    #[test]
    fn only_keys_in_both_with_new_values_block() {
        let running = named(&[
            ("systemd", "a"),
            ("dbus-implementation", "dbus"),
            ("gone", "x"),
        ]);
        let target = named(&[
            ("systemd", "a"),
            ("dbus-implementation", "broker"),
            ("new", "y"),
        ]);
        let found = changes(&running, &target);
        assert_eq!(describe(&found), "dbus-implementation: dbus -> broker");
        assert!(changes(&running, &running).is_empty());
        assert!(changes(&named(&[]), &target).is_empty());
        let old = Inhibitors::parse("/nix/store/a-systemd-256\n");
        let new = Inhibitors::parse("/nix/store/b-systemd-257\n");
        assert_eq!(
            describe(&changes(&old, &new)),
            "switch-inhibitors: /nix/store/a-systemd-256 -> /nix/store/b-systemd-257"
        );
        assert!(changes(&old, &target).is_empty(), "mixed forms never block");
    }

    #[test]
    fn reads_the_file_in_each_system_and_turns_switch_into_boot() {
        let dir = tempfile::tempdir().unwrap();
        let running = dir.path().join("running");
        let target = dir.path().join("target");
        std::fs::create_dir_all(&running).unwrap();
        std::fs::create_dir_all(&target).unwrap();
        assert!(
            compare(&running, &target).is_empty(),
            "no files, no inhibitors"
        );
        std::fs::write(running.join(FILE), r#"{"systemd":"/nix/store/a"}"#).unwrap();
        std::fs::write(target.join(FILE), r#"{"systemd":"/nix/store/b"}"#).unwrap();
        let found = compare(&running, &target);
        assert_eq!(describe(&found), "systemd: /nix/store/a -> /nix/store/b");
        assert_eq!(
            effective_operation(Operation::Switch, &found),
            Operation::Boot
        );
        assert_eq!(
            effective_operation(Operation::Test, &found),
            Operation::Test
        );
        assert_eq!(
            effective_operation(Operation::Switch, &[]),
            Operation::Switch
        );
        assert!(compare(&dir.path().join("absent"), &target).is_empty());
    }
}
