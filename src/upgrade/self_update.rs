//! Whether a live switch replaced the agent's own unit or binary, so the agent must exit and let
//! systemd (`Restart=always`, `restartIfChanged = false`) start the new version.

use std::path::Path;

/// Where a NixOS system keeps its unit files.
pub const UNIT_DIR: &str = "etc/systemd/system";

/// True when `<previous>/etc/systemd/system/<unit>` and the same file under `current` differ
/// (content, or one exists and the other does not), or when the new unit no longer runs the
/// store path this process was started from. Unreadable on both sides: nothing to say, false.
pub fn own_unit_changed(unit: &str, previous: Option<&Path>, current: &Path) -> bool {
    let read = |system: &Path| std::fs::read(system.join(UNIT_DIR).join(unit)).ok();
    let new = read(current);
    let old = previous.and_then(read);
    if old != new {
        return true;
    }
    match (new, running_store_dir()) {
        (Some(text), Some(store_dir)) => !contains(&text, store_dir.as_bytes()),
        _ => false,
    }
}

/// `/nix/store/<hash>-<name>` of `/proc/self/exe`, when the agent runs from the store.
fn running_store_dir() -> Option<String> {
    let exe = std::fs::read_link("/proc/self/exe").ok()?;
    let text = exe.to_str()?;
    let rest = text.strip_prefix("/nix/store/")?;
    let name = rest.split('/').next()?;
    Some(format!("/nix/store/{name}"))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn system(root: &Path, name: &str, unit_text: Option<&str>) -> std::path::PathBuf {
        let dir = root.join(name);
        std::fs::create_dir_all(dir.join(UNIT_DIR)).unwrap();
        if let Some(text) = unit_text {
            std::fs::write(dir.join(UNIT_DIR).join("agent.service"), text).unwrap();
        }
        dir
    }

    #[test]
    fn change_table() {
        let root = tempfile::tempdir().unwrap();
        let a = system(
            root.path(),
            "a",
            Some("ExecStart=/nix/store/aaa-agent/bin/x serve"),
        );
        let a2 = system(
            root.path(),
            "a2",
            Some("ExecStart=/nix/store/aaa-agent/bin/x serve"),
        );
        let b = system(
            root.path(),
            "b",
            Some("ExecStart=/nix/store/bbb-agent/bin/x serve"),
        );
        let none = system(root.path(), "none", None);
        let cases = [
            (Some(&a), &a2, false),
            (Some(&a), &b, true),
            (Some(&none), &a, true),
            (Some(&a), &none, true),
            (Some(&none), &none, false),
            (None, &none, false),
            (None, &a, true),
        ];
        for (previous, current, want) in cases {
            assert_eq!(
                own_unit_changed("agent.service", previous.map(|p| p.as_path()), current),
                want,
                "{previous:?} -> {current:?}"
            );
        }
        assert!(contains(b"abc", b"b") && !contains(b"abc", b"") && !contains(b"a", b"ab"));
    }
}
