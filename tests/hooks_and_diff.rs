//! Operator hooks run with the attempt in `NIXOS_HYDRA_UPGRADE_*` and never change its outcome;
//! the closure diff is logged before activation with the attempt's build on every line.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::{JOB, Rig};
use nixos_hydra_upgrade::hydra::sim::fake_out_path;

fn script(path: &std::path::Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

async fn wait_for_file(path: &std::path::Path) -> String {
    let started = Instant::now();
    loop {
        if let Ok(text) = std::fs::read_to_string(path)
            && text.ends_with("END\n")
        {
            return text;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{} never written",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn hooks_see_the_attempt_and_cannot_fail_it() {
    let dir = tempfile::tempdir().unwrap();
    let hook = dir.path().join("hook");
    // Writes its event's environment to a file named after the event, then fails.
    script(
        &hook,
        "#!/bin/sh\nout=\"$(dirname \"$0\")/$NIXOS_HYDRA_UPGRADE_EVENT\"\nenv | grep ^NIXOS_HYDRA_UPGRADE_ | sort > \"$out.tmp\"\necho END >> \"$out.tmp\"\nmv \"$out.tmp\" \"$out\"\necho hook says hi\nexit 3\n",
    );
    let sleeper = dir.path().join("sleeper");
    script(&sleeper, "#!/bin/sh\nsleep 30\n");
    let config = format!(
        "[hooks]\non_success = [\"{}\"]\non_failure = [\"{}\", \"ignored-arg\"]\non_rollback = [\"{}\"]\ntimeout = \"1s\"\n",
        hook.display(),
        hook.display(),
        sleeper.display()
    );
    let rig = Rig::start(&config).await;
    rig.build(40);
    assert_eq!(rig.post(r#"{"build": 40}"#).await.0, 202);
    let status = rig.wait_for_attempt(40).await;
    assert_eq!(
        status["last_attempt"]["outcome"], "upgraded",
        "a failing hook changes nothing"
    );
    let env = wait_for_file(&dir.path().join("success")).await;
    for line in [
        "NIXOS_HYDRA_UPGRADE_BUILD=40".to_owned(),
        format!("NIXOS_HYDRA_UPGRADE_PATH={}", fake_out_path(40, JOB)),
        "NIXOS_HYDRA_UPGRADE_OUTCOME=upgraded".to_owned(),
        "NIXOS_HYDRA_UPGRADE_ERROR=".to_owned(),
        format!("NIXOS_HYDRA_UPGRADE_HYDRA_URL={}/build/40", rig.hydra.url()),
        "NIXOS_HYDRA_UPGRADE_SOURCE=manual".to_owned(),
        format!("NIXOS_HYDRA_UPGRADE_HOST={JOB}"),
    ] {
        assert!(env.lines().any(|l| l == line), "{line} in\n{env}");
    }

    rig.build(41);
    rig.set("exit-code", "1");
    assert_eq!(rig.post(r#"{"build": 41}"#).await.0, 202);
    rig.wait_for_attempt(41).await;
    let env = wait_for_file(&dir.path().join("failure")).await;
    assert!(env.contains("NIXOS_HYDRA_UPGRADE_OUTCOME=failed"), "{env}");
    assert!(
        env.contains("NIXOS_HYDRA_UPGRADE_ERROR=") && env.contains("exited with status 1"),
        "{env}"
    );

    // The hook's failure is logged (with its output, carrying the build) and counted.
    let started = Instant::now();
    loop {
        let logs = rig.logs();
        let said_hi = logs
            .iter()
            .any(|l| l["message"] == "hook says hi" && l["build"] == 41);
        let failed = logs.iter().any(|l| {
            l["message"] == "hook did not succeed; the attempt stands" && l["result"] == "failed"
        });
        if said_hi && failed {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "hook logs missing"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let metrics = reqwest::get(format!("{}/metrics", rig.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .contains("nixos_hydra_upgrade_hooks_total{hook=\"on_failure\",result=\"failed\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn closure_diff_is_logged_before_activation() {
    let rig = Rig::start("").await;
    // A fake nix: records its argv, prints a diff, and must run before nixos-rebuild.
    script(
        &rig.path("nix"),
        "#!/bin/sh\necho \"nix $*\" >> \"$(dirname \"$0\")/calls\"\necho 'linux: 6.6.1 → 6.6.2, +1.2 MiB'\n",
    );
    rig.build(50);
    assert_eq!(rig.post(r#"{"build": 50}"#).await.0, 202);
    rig.wait_for_attempt(50).await;
    let old = "/nix/store/00000000000000000000000000000000-nixos-system-web1-old";
    let target = fake_out_path(50, JOB);
    assert_eq!(
        rig.calls(),
        [
            format!(
                "nix --extra-experimental-features nix-command --option substituters  store diff-closures {old} {target}"
            ),
            format!("nixos-rebuild switch --store-path {target} --no-reexec"),
        ]
    );
    let logs = rig.logs();
    let line = logs
        .iter()
        .find(|l| l["message"] == "linux: 6.6.1 → 6.6.2, +1.2 MiB")
        .expect("the diff is logged");
    assert_eq!(line["build"], 50);

    // Without nix, a note and the activation as before.
    std::fs::remove_file(rig.path("nix")).unwrap();
    rig.build(51);
    assert_eq!(rig.post(r#"{"build": 51}"#).await.0, 202);
    rig.wait_for_attempt(51).await;
    assert!(
        rig.logs()
            .iter()
            .any(|l| { l["build"] == 51 && l["message"] == "nix not found: closure diff skipped" })
    );
    assert_eq!(rig.calls().len(), 3);
}
