//! The exact commands SPEC §6 prescribes, as the fake nixos-rebuild and reboot record them: both
//! activation modes, each operation, flags, and allow_reboot with same and different kernels,
//! inside and outside the reboot window.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{JOB, Rig};
use serde_json::Value;

/// Deploys build 20 with `extra` config; the recorded commands and the final status.
async fn deploy(extra: &str, next_kernel: &str) -> (Rig, Vec<String>, Value) {
    let rig = Rig::start(extra).await;
    rig.set("next-kernel", next_kernel);
    rig.build(20);
    let (code, body) = rig.post(r#"{"build": 20}"#).await;
    assert_eq!(code, 202, "{body}");
    let status = rig.wait_for_attempt(20).await;
    let calls = rig.calls();
    (rig, calls, status)
}

/// Build 20's out path as the simulator serves it.
fn out() -> String {
    nixos_hydra_upgrade::hydra::sim::fake_out_path(20, JOB)
}

#[tokio::test]
async fn store_path_activation_for_each_operation() {
    for op in ["switch", "boot", "test"] {
        let (_rig, calls, status) = deploy(
            &format!("operation = \"{op}\"\nflags = [\"--option\", \"cores\", \"2\"]"),
            "a",
        )
        .await;
        assert_eq!(
            calls,
            [format!(
                "nixos-rebuild {op} --store-path {} --no-reexec --option cores 2",
                out()
            )]
        );
        assert_eq!(status["last_attempt"]["outcome"], "upgraded", "{status}");
        assert_eq!(status["deployed"]["build"], 20);
        if op != "boot" {
            assert_eq!(status["current_system"].as_str(), Some(out().as_str()));
        }
    }
}

#[tokio::test]
async fn flake_activation_uses_the_evaluations_locked_flake() {
    for op in ["switch", "boot", "test"] {
        let (_rig, calls, status) = deploy(
            &format!("operation = \"{op}\"\nactivation = \"flake\""),
            "a",
        )
        .await;
        // build 20 is in eval 2 (see Rig::build), whose flake the simulator pins to rev 0x2.
        let flake = format!("github:acme/infra/{:040x}#{JOB}", 2);
        assert_eq!(calls, [format!("nixos-rebuild {op} --flake {flake}")]);
        assert_eq!(status["last_attempt"]["outcome"], "upgraded");
    }
}

#[tokio::test]
async fn flake_activation_without_a_flake_is_rejected() {
    let rig = Rig::start("activation = \"flake\"").await;
    rig.build(20);
    rig.hydra.set_eval(2, None);
    let (code, body) = rig.post(r#"{"build": 20}"#).await;
    assert_eq!(
        (code, body["status"].as_str()),
        (422, Some("rejected")),
        "{body}"
    );
    assert!(
        body["reason"].as_str().unwrap().contains("no flake"),
        "{body}"
    );
}

#[tokio::test]
async fn reboot_allowed_same_kernel_switches_live() {
    let (_rig, calls, status) = deploy("allow_reboot = true", "a").await;
    let path = out();
    assert_eq!(
        calls,
        [
            format!("nixos-rebuild boot --store-path {path} --no-reexec"),
            format!("nixos-rebuild switch --store-path {path} --no-reexec")
        ]
    );
    assert_eq!(status["last_attempt"]["reboot"], "none");
}

#[tokio::test]
async fn reboot_allowed_same_kernel_boot_only() {
    let (_rig, calls, _) = deploy("allow_reboot = true\noperation = \"boot\"", "a").await;
    assert_eq!(
        calls,
        [format!(
            "nixos-rebuild boot --store-path {} --no-reexec",
            out()
        )]
    );
}

#[tokio::test]
async fn new_kernel_reboots_without_a_window() {
    let (_rig, calls, status) = deploy("allow_reboot = true", "b").await;
    assert_eq!(
        calls,
        [
            format!("nixos-rebuild boot --store-path {} --no-reexec", out()),
            "reboot now".to_owned()
        ]
    );
    assert_eq!(status["last_attempt"]["outcome"], "upgraded");
    assert_eq!(status["last_attempt"]["reboot"], "scheduled");
}

/// "HH:MM" of UTC now plus `hours` (the agent runs with TZ=UTC).
fn utc_plus(hours: i64) -> String {
    let now = jiff::Timestamp::now().to_zoned(jiff::tz::TimeZone::UTC);
    let t = now
        .checked_add(jiff::SignedDuration::from_hours(hours))
        .unwrap();
    format!("{:02}:{:02}", t.hour(), t.minute())
}

#[tokio::test]
async fn new_kernel_inside_the_window_reboots() {
    let window = format!(
        "allow_reboot = true\nreboot_window = {{ lower = \"{}\", upper = \"{}\" }}",
        utc_plus(-1),
        utc_plus(1)
    );
    let (_rig, calls, status) = deploy(&window, "b").await;
    assert_eq!(
        calls,
        [
            format!("nixos-rebuild boot --store-path {} --no-reexec", out()),
            "reboot now".to_owned()
        ]
    );
    assert_eq!(status["last_attempt"]["reboot"], "scheduled");
}

#[tokio::test]
async fn new_kernel_outside_the_window_defers() {
    let window = format!(
        "allow_reboot = true\nreboot_window = {{ lower = \"{}\", upper = \"{}\" }}",
        utc_plus(2),
        utc_plus(3)
    );
    let (_rig, calls, status) = deploy(&window, "b").await;
    assert_eq!(
        calls,
        [format!(
            "nixos-rebuild boot --store-path {} --no-reexec",
            out()
        )]
    );
    assert_eq!(status["last_attempt"]["outcome"], "upgraded");
    assert_eq!(status["last_attempt"]["reboot"], "deferred");
}

#[tokio::test]
async fn dry_run_runs_nothing_and_deploys_nothing() {
    let (mut rig, calls, status) = deploy("dry_run = true\nallow_reboot = true", "b").await;
    assert!(calls.is_empty(), "{calls:?}");
    assert_eq!(status["last_attempt"]["outcome"], "dry-run");
    assert!(status["deployed"].is_null(), "{status}");
    // Dry run off: the same build is deployed for real, not answered `current`.
    assert_eq!(rig.stop().await, 0);
    let config = rig.config_text().replace("dry_run = true\n", "");
    std::fs::write(rig.path("agent.toml"), config).unwrap();
    rig.spawn_with_written_config().await;
    let (code, body) = rig.post(r#"{"build": 20}"#).await;
    assert_eq!(code, 202, "{body}");
    let status = rig.wait_for_outcome(20, "upgraded").await;
    assert_eq!(status["deployed"]["build"], 20, "{status}");
    assert_eq!(
        rig.calls(),
        [
            format!("nixos-rebuild boot --store-path {} --no-reexec", out()),
            "reboot now".into()
        ]
    );
}

#[tokio::test]
async fn every_log_line_of_an_attempt_carries_its_build() {
    let (rig, _, _) = deploy("", "a").await;
    let logs = rig.logs();
    let attempt: Vec<&Value> = logs
        .iter()
        .skip_while(|l| l["message"] != "attempt started")
        .take_while(|l| l["message"] != "attempt finished")
        // The HTTP handler's own line about the request may land after the worker started.
        .filter(|l| l["target"] != "nixos_hydra_upgrade::http::upgrade")
        .collect();
    assert!(attempt.len() >= 3, "{logs:#?}");
    for line in attempt {
        for key in ["timestamp", "level", "message"] {
            assert!(line.get(key).is_some(), "{key} missing: {line}");
        }
        assert_eq!(line["build"], 20, "{line}");
    }
    let secret = std::fs::read_to_string(rig.path("secret")).unwrap();
    let key = secret.trim().trim_start_matches("whsec_");
    assert!(
        rig.logs.lock().unwrap().iter().all(|l| !l.contains(key)),
        "the secret was logged"
    );
}
