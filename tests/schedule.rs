//! The fallback poll: a 2-second calendar schedule polls Hydra and deploys through the worker;
//! `persistent` catches up a poll missed while the agent was down; `dates` is validated.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::{BIN, JOB, Rig};
use nixos_hydra_upgrade::hydra::sim::fake_out_path;

#[tokio::test]
async fn a_two_second_schedule_polls_and_deploys() {
    let mut rig = Rig::start("").await;
    rig.build(5);
    rig.stop().await;
    let text = rig
        .config_text()
        .replace("dates = \"\"", "dates = \"*:*:0/2\"");
    std::fs::write(rig.path("agent.toml"), text).unwrap();
    rig.spawn_with_written_config().await;
    // The schedule task starts beside the server: give it a moment to publish next_poll.
    let started = Instant::now();
    let mut status = rig.status().await;
    while status["next_poll"].is_null() && started.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        status = rig.status().await;
    }
    assert!(
        status["next_poll"].is_string(),
        "next_poll is shown: {status}"
    );
    let next = jiff::Timestamp::strptime(
        "%Y-%m-%dT%H:%M:%S%:z",
        status["next_poll"].as_str().unwrap(),
    )
    .unwrap();
    assert!(
        next.duration_since(jiff::Timestamp::now()).as_secs_f64() <= 2.0,
        "{next}"
    );
    let status = rig.wait_for_attempt(5).await;
    assert_eq!(status["last_attempt"]["source"], "schedule", "{status}");
    assert_eq!(status["deployed"]["path"], fake_out_path(5, JOB));
    assert!(rig.hydra.requests().iter().any(|r| r.ends_with("/latest")));

    // A newer green build is picked up at a later elapse, with no notification.
    rig.build(6);
    let status = rig.wait_for_attempt(6).await;
    assert_eq!(status["last_attempt"]["source"], "schedule");
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(rig.path("state/state.json")).unwrap()).unwrap();
    assert!(state["last_poll"]["at"].is_string(), "{state}");
    assert!(
        state["last_poll"]["result"]
            .as_str()
            .is_some_and(|r| r.contains("build 6")),
        "what the poll found: {state}"
    );
}

#[tokio::test]
async fn persistent_polls_at_start_when_an_elapse_was_missed() {
    let mut rig = Rig::start("").await;
    rig.build(8);
    rig.stop().await;
    // Last poll two days ago, daily at 04:40: at least one elapse was missed.
    let two_days_ago = jiff::Timestamp::now() - jiff::SignedDuration::from_hours(48);
    std::fs::write(
        rig.path("state/state.json"),
        format!("{{\"last_poll\": \"{two_days_ago}\"}}"),
    )
    .unwrap();
    let text = rig
        .config_text()
        .replace("dates = \"\"", "dates = \"04:40\"");
    std::fs::write(rig.path("agent.toml"), &text).unwrap();
    rig.spawn_with_written_config().await;
    let status = rig.wait_for_attempt(8).await;
    assert_eq!(status["last_attempt"]["source"], "schedule");

    // With persistent = false nothing is polled at start.
    rig.stop().await;
    rig.build(9);
    std::fs::write(
        rig.path("state/state.json"),
        format!("{{\"last_poll\": \"{two_days_ago}\"}}"),
    )
    .unwrap();
    std::fs::write(
        rig.path("agent.toml"),
        text.replace("dates = \"04:40\"", "dates = \"04:40\"\npersistent = false"),
    )
    .unwrap();
    rig.spawn_with_written_config().await;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(2) {
        assert!(rig.status().await["last_attempt"].is_null());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn check_config_rejects_bad_dates() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.toml");
    for (dates, ok) in [
        ("04:40", true),
        ("Mon..Fri *-*-* 04:40:00 Europe/Berlin", true),
        ("", true),
        ("Mon..Fxi 04:00", false),
        ("25:00", false),
    ] {
        std::fs::write(&file, format!("dates = \"{dates}\"\n[hydra]\ninstance = \"http://h\"\nproject = \"p\"\njobset = \"j\"\n")).unwrap();
        let out = std::process::Command::new(BIN)
            .args(["check-config", "--config"])
            .arg(&file)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(if ok { 0 } else { 2 }),
            "{dates}: {err}"
        );
        if !ok {
            assert!(err.contains("dates"), "{err}");
        }
    }
}

#[test]
fn calendar_subcommand_json() {
    let out = std::process::Command::new(BIN)
        .args([
            "calendar",
            "--iterations",
            "3",
            "--base-time",
            "2026-03-28T12:00:00Z",
            "--json",
            "daily",
        ])
        .env("TZ", "Europe/Berlin")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["normalized"], "*-*-* 00:00:00");
    assert_eq!(
        v["next"],
        serde_json::json!([
            "2026-03-29T00:00:00+01:00",
            "2026-03-30T00:00:00+02:00",
            "2026-03-31T00:00:00+02:00"
        ])
    );
    let bad = std::process::Command::new(BIN)
        .args(["calendar", "Mon..Fxi"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
}
