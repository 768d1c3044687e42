//! nixos-rebuild missing, failing, half-succeeding (exit 4) or hanging: each attempt is recorded
//! as `failed` with the reason, the agent keeps serving, and the build can be tried again.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::{JOB, Rig};
use nixos_hydra_upgrade::hydra::sim::fake_out_path;

fn error(status: &serde_json::Value) -> String {
    status["last_attempt"]["error"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn missing_nixos_rebuild() {
    let rig = Rig::start("").await;
    rig.build(5);
    std::fs::remove_file(rig.path("nixos-rebuild")).unwrap();
    assert_eq!(rig.post(r#"{"build": 5}"#).await.0, 202);
    let status = rig.wait_for_attempt(5).await;
    assert_eq!(status["last_attempt"]["outcome"], "failed", "{status}");
    assert!(error(&status).contains("cannot start"), "{status}");
    assert!(status["deployed"].is_null());
    assert_eq!(status["phase"], "idle");
}

#[tokio::test]
async fn non_zero_exit_is_failed_and_retryable() {
    let rig = Rig::start("").await;
    rig.build(5);
    rig.set("exit-code", "1");
    assert_eq!(rig.post(r#"{"build": 5}"#).await.0, 202);
    let status = rig.wait_for_attempt(5).await;
    assert_eq!(status["last_attempt"]["outcome"], "failed", "{status}");
    assert!(error(&status).contains("exited with status 1"), "{status}");
    assert!(status["deployed"].is_null());
    rig.set("exit-code", "0");
    assert_eq!(
        rig.post(r#"{"build": 5}"#).await.0,
        202,
        "a failed build can be retried"
    );
    let status = rig.wait_for_history(2).await;
    assert_eq!(status["deployed"]["build"], 5, "{status}");
}

#[tokio::test]
async fn exit_4_switched_but_units_failed_runs_post_checks() {
    let mut rig = Rig::start("").await;
    rig.stop().await;
    // Switch first, then exit 4, as switch-to-configuration does when some units fail.
    let script = std::fs::read_to_string(rig.path("nixos-rebuild")).unwrap();
    std::fs::write(
        rig.path("nixos-rebuild"),
        script
            .replace("[ \"$code\" = 0 ] || exit \"$code\"\n", "")
            .replace("exit 0\n", "exit \"$code\"\n"),
    )
    .unwrap();
    rig.set("exit-code", "4");
    let marker = rig.path("post-check-ran");
    let checks = format!(
        "[health_checks]\nsettle = \"0s\"\n[[health_checks.post]]\nkind = \"command\"\nname = \"app\"\n\
         retries = 0\nargv = [\"touch\", \"{}\"]\n",
        marker.display()
    );
    let text = rig
        .config_text()
        .replace("[hydra]", &format!("{checks}[hydra]"));
    std::fs::write(rig.path("agent.toml"), text).unwrap();
    rig.spawn_with_written_config().await;
    rig.build(6);
    assert_eq!(rig.post(r#"{"build": 6}"#).await.0, 202);
    let status = rig.wait_for_attempt(6).await;
    assert_eq!(status["last_attempt"]["outcome"], "failed", "{status}");
    assert!(
        error(&status).contains("exited with status 4")
            && error(&status).contains("some units failed"),
        "{status}"
    );
    assert!(marker.exists(), "post-checks ran after exit 4");
    assert_eq!(
        status["last_attempt"]["checks"][0]["name"], "app",
        "{status}"
    );
    assert_eq!(
        std::fs::read_link(rig.path("current-system")).unwrap(),
        std::path::PathBuf::from(fake_out_path(6, JOB)),
        "the switch happened and was not rolled back (post-checks passed)"
    );
}

#[tokio::test]
async fn hanging_activation_is_killed_with_its_children() {
    let mut rig = Rig::start("").await;
    rig.stop().await;
    let script = std::fs::read_to_string(rig.path("nixos-rebuild")).unwrap();
    std::fs::write(
        rig.path("nixos-rebuild"),
        script.replace(
            "[ -f \"$dir/delay\" ]",
            "(sleep 3; touch \"$dir/grandchild-survived\") &\n[ -f \"$dir/delay\" ]",
        ),
    )
    .unwrap();
    rig.set("delay", "60");
    let text = rig
        .config_text()
        .replace("dates = \"\"", "dates = \"\"\nactivation_timeout = \"1s\"");
    std::fs::write(rig.path("agent.toml"), text).unwrap();
    rig.spawn_with_written_config().await;
    rig.build(7);
    let started = Instant::now();
    assert_eq!(rig.post(r#"{"build": 7}"#).await.0, 202);
    let status = rig.wait_for_attempt(7).await;
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(status["last_attempt"]["outcome"], "failed", "{status}");
    assert!(
        error(&status).contains("killed with its process group"),
        "{status}"
    );
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert!(
        !rig.path("grandchild-survived").exists(),
        "the backgrounded child died with the group"
    );
    assert_eq!(rig.status().await["phase"], "idle");
}
