//! What survives a restart (SPEC §7, §8): the deployed build, the refusal to go back, and an
//! attempt interrupted by a stop, settled from current_system at the next start.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::{JOB, Rig};
use nixos_hydra_upgrade::hydra::sim::fake_out_path;

#[tokio::test]
async fn restart_keeps_the_deployed_build() {
    let mut rig = Rig::start("").await;
    rig.build(30);
    rig.build(29);
    assert_eq!(rig.post(r#"{"build": 30}"#).await.0, 202);
    rig.wait_for_attempt(30).await;
    assert_eq!(rig.stop().await, 0, "SIGTERM is a clean shutdown");

    rig.spawn().await;
    let status = rig.status().await;
    assert_eq!(status["deployed"]["build"], 30, "{status}");
    assert_eq!(status["deployed"]["path"], fake_out_path(30, JOB));
    let (code, body) = rig.post(&common::runcommand_payload(30, 0, JOB)).await;
    assert_eq!(
        (code, body["status"].as_str()),
        (200, Some("current")),
        "no redeploy: {body}"
    );
    let (code, body) = rig.post(r#"{"build": 29}"#).await;
    assert_eq!(
        (code, body["status"].as_str()),
        (409, Some("refused")),
        "{body}"
    );
    assert_eq!(rig.calls().len(), 1);
}

#[tokio::test]
async fn second_agent_on_the_same_state_dir_refuses_to_start() {
    let rig = Rig::start("").await;
    let output = tokio::process::Command::new(common::BIN)
        .args(["serve", "--config"])
        .arg(rig.path("agent.toml"))
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("another nixos-hydra-upgrade agent holds"),
        "{stderr}"
    );
}

#[tokio::test]
async fn stop_during_activation_is_settled_at_the_next_start() {
    let mut rig = Rig::start("").await;
    rig.set("delay", "30");
    rig.build(40);
    assert_eq!(rig.post(r#"{"build": 40}"#).await.0, 202);
    while rig.status().await["phase"] != "activating" {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stopping = Instant::now();
    assert_eq!(rig.stop().await, 0);
    assert!(
        stopping.elapsed() < Duration::from_secs(8),
        "exits within a few seconds of SIGTERM"
    );
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(rig.path("state/state.json")).unwrap()).unwrap();
    assert_eq!(
        state["in_flight"]["build"], 40,
        "marked before activation: {state}"
    );

    rig.set("delay", "0");
    rig.spawn().await;
    let status = rig.wait_for_attempt(40).await;
    assert_eq!(status["last_attempt"]["outcome"], "interrupted", "{status}");
    assert!(
        status["last_attempt"]["error"]
            .as_str()
            .unwrap()
            .contains("interrupted")
    );
    assert!(status["deployed"].is_null());
    // The interrupted build can be deployed again.
    assert_eq!(rig.post(r#"{"build": 40}"#).await.0, 202);
    let status = rig.wait_for_history(2).await;
    assert_eq!(status["deployed"]["build"], 40, "{status}");
}

#[tokio::test]
async fn an_attempt_that_landed_before_the_stop_is_recorded_as_upgraded() {
    let mut rig = Rig::start("").await;
    rig.build(50);
    // The switch happens, then the command lingers (as nixos-rebuild does after switch-to-configuration).
    let script = std::fs::read_to_string(rig.path("nixos-rebuild")).unwrap();
    std::fs::write(
        rig.path("nixos-rebuild"),
        script.replace("exit 0\n", "sleep 30\nexit 0\n"),
    )
    .unwrap();
    assert_eq!(rig.post(r#"{"build": 50}"#).await.0, 202);
    let started = Instant::now();
    while std::fs::read_link(rig.path("current-system"))
        .unwrap()
        .to_string_lossy()
        != fake_out_path(50, JOB)
    {
        assert!(started.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(rig.stop().await, 0);
    rig.spawn().await;
    let status = rig.wait_for_attempt(50).await;
    assert_eq!(status["last_attempt"]["outcome"], "upgraded", "{status}");
    assert_eq!(status["deployed"]["build"], 50);
}
