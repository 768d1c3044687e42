//! Before activating, logs what changes: `nix store diff-closures <current> <target>`, once the
//! target is fetched and this is no dry run; a note otherwise. Never fails the attempt.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::Settings;
use crate::exec::CommandRunner;
use crate::host::resolve_link;

/// Both closures are local by now; a diff that takes longer than this is cut off.
const DIFF_TIMEOUT: Duration = Duration::from_secs(600);

/// The `nix` program to run: a path as given, or a bare name looked up on `PATH`.
pub fn find_program(program: &str, path_var: Option<&str>) -> Option<PathBuf> {
    if program.contains('/') {
        return Path::new(program).is_file().then(|| PathBuf::from(program));
    }
    path_var?
        .split(':')
        .filter(|dir| !dir.is_empty())
        .map(|dir| Path::new(dir).join(program))
        .find(|candidate| candidate.is_file())
}

/// The argv of the diff.
pub fn diff_argv(nix: &Path, current: &str, target: &str) -> Vec<String> {
    vec![
        nix.display().to_string(),
        "--extra-experimental-features".into(),
        "nix-command".into(),
        // Only a log aid: never download for it (the fetch step brought the target in).
        "--option".into(),
        "substituters".into(),
        String::new(),
        "store".into(),
        "diff-closures".into(),
        current.into(),
        target.into(),
    ]
}

/// Logs the closure diff from the running system to `target` (its output, line by line); `nix`
/// is the program the fetch step found.
pub async fn log(settings: &Settings, runner: &CommandRunner, nix: &Path, target: &str) {
    if settings.dry_run {
        tracing::info!("dry run: closure diff skipped");
        return;
    }
    let Some(current) = resolve_link(&settings.system.current_system) else {
        tracing::info!("current system unknown: closure diff skipped");
        return;
    };
    let current = current.display().to_string();
    if current == target {
        return;
    }
    tracing::info!(from = %current, to = %target, "closure diff");
    let runner = CommandRunner {
        timeout: DIFF_TIMEOUT.min(settings.activation_timeout),
        ..runner.clone()
    };
    if let Err(e) = runner.run(&diff_argv(nix, &current, target)).await {
        tracing::info!(error = %e, "no closure diff; activating anyway");
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn finds_programs_on_path_or_by_path() {
        let dir = tempfile::tempdir().unwrap();
        let nix = dir.path().join("nix");
        std::fs::write(&nix, "").unwrap();
        let path = format!("/nonexistent::{}", dir.path().display());
        assert_eq!(find_program("nix", Some(&path)), Some(nix.clone()));
        assert_eq!(find_program("nix", Some("/nonexistent")), None);
        assert_eq!(find_program("nix", None), None);
        let absolute = nix.display().to_string();
        assert_eq!(find_program(&absolute, None), Some(nix));
        assert_eq!(find_program("/nonexistent/nix", None), None);
    }
}
