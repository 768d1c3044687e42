//! What the host runs: its system symlinks (`/run/current-system`, the system profile) resolved.

use std::path::{Path, PathBuf};

/// Follows a chain of symlinks (as `/nix/var/nix/profiles/system` is) without requiring the end
/// to exist; None when `path` is not a symlink at all.
pub fn resolve_link(path: &Path) -> Option<PathBuf> {
    let mut current = std::fs::read_link(path).ok().map(|t| join_link(path, t))?;
    for _ in 0..16 {
        match std::fs::read_link(&current) {
            Ok(next) => current = join_link(&current, next),
            Err(_) => return Some(current),
        }
    }
    None
}

fn join_link(link: &Path, target: PathBuf) -> PathBuf {
    if target.is_absolute() {
        target
    } else {
        link.parent()
            .map_or(target.clone(), |dir| dir.join(&target))
    }
}

/// The store path `link` resolves to, as text (None when unreadable).
pub fn resolved(link: &Path) -> Option<String> {
    resolve_link(link).map(|p| p.display().to_string())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn resolves_profile_chains_to_dangling_ends() {
        let dir = tempfile::tempdir().unwrap();
        let profile = dir.path().join("system");
        symlink("system-42-link", &profile).unwrap();
        symlink(
            "/nix/store/abc-nixos-system-web1",
            dir.path().join("system-42-link"),
        )
        .unwrap();
        assert_eq!(
            resolve_link(&profile),
            Some(PathBuf::from("/nix/store/abc-nixos-system-web1"))
        );
        assert_eq!(resolve_link(&dir.path().join("absent")), None);
        let looped = dir.path().join("loop");
        symlink(&looped, &looped).unwrap();
        assert_eq!(resolve_link(&looped), None);
    }
}
