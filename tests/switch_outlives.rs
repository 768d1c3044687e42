//! A switch outlives the agent (switch-to-configuration runs in its own transient unit): the
//! restarted agent settles the attempt only once the switch lock is free, then post-checks it,
//! and never runs nixos-rebuild twice. The fake switch (tests/common) holds the lock the way
//! switch-to-configuration does, in a session of its own that a systemd-like kill spares.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::Rig;
use nixos_hydra_upgrade::hydra::sim::fake_out_path;

async fn rig_with_post_check() -> Rig {
    let mut rig = Rig::start("").await;
    rig.stop().await;
    let checks = format!(
        "[health_checks]\nsettle = \"0s\"\n[[health_checks.post]]\nkind = \"command\"\nname = \"app\"\n\
         retries = 0\nargv = [\"touch\", \"{}\"]\n",
        rig.path("post-check-ran").display()
    );
    let text = rig
        .config_text()
        .replace("[hydra]", &format!("{checks}[hydra]"));
    std::fs::write(rig.path("agent.toml"), text).unwrap();
    rig.spawn_with_written_config().await;
    rig
}

async fn wait_for_file(rig: &Rig, name: &str) {
    let started = Instant::now();
    while !rig.path(name).exists() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{name} never appeared"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn rebuilds(rig: &Rig) -> usize {
    rig.calls()
        .iter()
        .filter(|c| c.starts_with("nixos-rebuild"))
        .count()
}

#[tokio::test]
async fn a_switch_that_outlives_the_agent_is_settled_upgraded_with_its_post_checks() {
    let mut rig = rig_with_post_check().await;
    rig.set("switch-time", "2");
    rig.build(7);
    assert_eq!(rig.post(r#"{"build": 7}"#).await.0, 202);
    wait_for_file(&rig, "switching").await;
    rig.kill_like_systemd().await;
    let restarted = Instant::now();
    rig.spawn_with_written_config().await;
    let status = rig.wait_for_outcome(7, "upgraded").await;
    assert!(
        restarted.elapsed() >= Duration::from_millis(500),
        "settled while the switch still held its lock: {status}"
    );
    assert_eq!(status["deployed"]["build"], 7, "{status}");
    assert_eq!(
        status["last_attempt"]["checks"][0]["name"], "app",
        "{status}"
    );
    assert_eq!(
        status["last_attempt"]["checks"][0]["passed"], true,
        "{status}"
    );
    assert!(rig.path("post-check-ran").exists());
    assert_eq!(
        rebuilds(&rig),
        1,
        "nixos-rebuild ran again: {:?}",
        rig.calls()
    );
    assert_eq!(
        std::fs::read_link(rig.path("current-system")).unwrap(),
        std::path::PathBuf::from(fake_out_path(7, common::JOB))
    );
}

#[tokio::test]
async fn an_activation_killed_before_its_switch_is_settled_interrupted() {
    let mut rig = rig_with_post_check().await;
    rig.set("delay", "1");
    rig.build(7);
    assert_eq!(rig.post(r#"{"build": 7}"#).await.0, 202);
    let started = Instant::now();
    while rig.calls().is_empty() {
        assert!(started.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    rig.kill_like_systemd().await;
    rig.spawn_with_written_config().await;
    let status = rig.wait_for_outcome(7, "interrupted").await;
    assert!(status["deployed"].is_null(), "{status}");
    assert!(
        !rig.path("post-check-ran").exists(),
        "no post-checks for an unchanged system"
    );
    // nixos-rebuild died with the agent's cgroup before its switch began: nothing switched.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        std::fs::read_link(rig.path("current-system"))
            .unwrap()
            .to_str()
            .unwrap()
            .ends_with("-old")
    );
    assert_eq!(rebuilds(&rig), 1, "{:?}", rig.calls());
}
