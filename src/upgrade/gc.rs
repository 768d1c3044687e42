//! `[gc] keep_generations = N`: after a healthy upgrade, keep the newest N system generations and
//! collect garbage — what nixpkgs' `system.autoUpgrade.runGarbageCollection` gets by starting
//! `nix-gc.service` (`nix-collect-garbage`) on success, bounded by a generation count instead
//! of an age. Never fails the attempt: the upgrade already succeeded.

use crate::config::{GcConfig, SystemConfig};
use crate::exec::CommandRunner;

/// `nix-env --profile <system_profile> --delete-generations +N`, then `nix-store --gc`.
pub fn gc_argvs(gc: &GcConfig, system: &SystemConfig) -> [Vec<String>; 2] {
    [
        vec![
            system.nix_env.clone(),
            "--profile".into(),
            system.system_profile.display().to_string(),
            "--delete-generations".into(),
            format!("+{}", gc.keep_generations),
        ],
        vec![system.nix_store.clone(), "--gc".into()],
    ]
}

/// Runs the clean-up; a failure is logged and stops it (no garbage collection after a failed
/// deletion, which would free nothing new).
pub async fn collect(gc: &GcConfig, system: &SystemConfig, runner: &CommandRunner) {
    tracing::info!(
        keep_generations = gc.keep_generations,
        "clean-up: keeping the newest system generations, then collecting garbage"
    );
    for argv in gc_argvs(gc, system) {
        if let Err(e) = runner.run(&argv).await {
            tracing::warn!(error = %e, "clean-up failed; the upgrade stands");
            return;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn deletes_old_generations_then_collects() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let calls = dir.path().join("calls");
        let fake = |name: &str, code: i32| {
            let path = dir.path().join(name);
            std::fs::write(
                &path,
                format!(
                    "#!/bin/sh\necho \"{name} $*\" >> {}\nexit {code}\n",
                    calls.display()
                ),
            )
            .unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
            path.display().to_string()
        };
        let system = SystemConfig {
            nix_env: fake("nix-env", 0),
            nix_store: fake("nix-store", 0),
            system_profile: "/nix/var/nix/profiles/system".into(),
            ..SystemConfig::default()
        };
        let runner = CommandRunner {
            timeout: Duration::from_secs(10),
            dry_run: false,
            cancel: tokio_util::sync::CancellationToken::new(),
        };
        let gc = GcConfig {
            keep_generations: 3,
        };
        collect(&gc, &system, &runner).await;
        assert_eq!(
            std::fs::read_to_string(&calls).unwrap(),
            "nix-env --profile /nix/var/nix/profiles/system --delete-generations +3\nnix-store --gc\n"
        );
        std::fs::remove_file(&calls).unwrap();
        let failing = SystemConfig {
            nix_env: fake("nix-env", 1),
            ..system
        };
        collect(&gc, &failing, &runner).await;
        assert_eq!(
            std::fs::read_to_string(&calls).unwrap().lines().count(),
            1,
            "no gc after a failed deletion"
        );
    }
}
