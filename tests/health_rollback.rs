//! Checks around an activation, through the real binary: a failing pre-check runs nothing; a
//! failing post-check rolls back to the previous system, and that build is not retried unforced.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{BIN, JOB, Rig};
use nixos_hydra_upgrade::hydra::sim::fake_out_path;

const OLD: &str = "/nix/store/00000000000000000000000000000000-nixos-system-web1-old";

fn closed_port() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

#[tokio::test]
async fn failing_pre_check_runs_nothing() {
    let config = format!(
        "[[health_checks.pre]]\nkind = \"tcp\"\nname = \"database\"\naddress = \"{}\"\nretries = 0\n",
        closed_port()
    );
    let rig = Rig::start(&config).await;
    rig.build(10);
    assert_eq!(rig.post(r#"{"build": 10}"#).await.0, 202);
    let status = rig.wait_for_attempt(10).await;
    let attempt = &status["last_attempt"];
    assert_eq!(attempt["outcome"], "unhealthy", "{status}");
    assert!(
        attempt["error"]
            .as_str()
            .unwrap()
            .contains("pre-check database (tcp) failed"),
        "{attempt}"
    );
    assert_eq!(attempt["checks"][0]["passed"], false);
    assert!(rig.calls().is_empty(), "nothing may run: {:?}", rig.calls());
    assert!(status["deployed"].is_null());
}

/// A post-check that fails while build 20's system runs: healthy only on the old system.
fn post_check_failing_on_new_system(rig_dir: &std::path::Path) -> String {
    format!(
        "[health_checks]\nsettle = \"0s\"\n[[health_checks.post]]\nkind = \"command\"\nname = \"app\"\nretries = 0\n\
         argv = [\"sh\", \"-c\", \"test \\\"$(readlink {}/current-system)\\\" != {}\"]\n",
        rig_dir.display(),
        fake_out_path(20, JOB)
    )
}

#[tokio::test]
async fn failing_post_check_rolls_back_and_is_not_retried() {
    let mut rig = Rig::start("").await;
    rig.stop().await;
    let config = post_check_failing_on_new_system(rig.dir.path());
    let text = rig
        .config_text()
        .replace("[hydra]", &format!("{config}[hydra]"));
    std::fs::write(rig.path("agent.toml"), &text).unwrap();
    respawn_with(&mut rig, &text).await;
    rig.build(20);
    assert_eq!(rig.post(r#"{"build": 20}"#).await.0, 202);
    let status = rig.wait_for_attempt(20).await;
    let attempt = &status["last_attempt"];
    assert_eq!(attempt["outcome"], "rolled-back", "{status}");
    assert!(
        attempt["error"]
            .as_str()
            .unwrap()
            .contains("post-check app (command) failed"),
        "{attempt}"
    );
    assert_eq!(
        rig.calls(),
        [
            format!(
                "nixos-rebuild switch --store-path {} --no-reexec",
                fake_out_path(20, JOB)
            ),
            format!("nixos-rebuild switch --store-path {OLD} --no-reexec"),
        ]
    );
    assert_eq!(status["current_system"], OLD);
    let checks = attempt["checks"].as_array().unwrap();
    assert_eq!(
        checks.len(),
        2,
        "post-checks, then again after the rollback: {checks:?}"
    );
    assert_eq!(
        (&checks[0]["passed"], &checks[1]["passed"]),
        (&false.into(), &true.into())
    );
    assert!(status["deployed"].is_null());

    let (code, body) = rig.post(&common::runcommand_payload(20, 0, JOB)).await;
    assert_eq!(
        (code, body["status"].as_str()),
        (409, Some("refused")),
        "{body}"
    );
    assert!(body["reason"].as_str().unwrap().contains("rolled back"));
    assert_eq!(rig.calls().len(), 2, "a second notification does nothing");

    rig.build(21);
    assert_eq!(
        rig.post(r#"{"build": 21}"#).await.0,
        202,
        "a newer build still deploys"
    );
    let status = rig.wait_for_attempt(21).await;
    assert_eq!(status["last_attempt"]["outcome"], "upgraded", "{status}");
}

#[tokio::test]
async fn flake_activation_rolls_back_with_rollback() {
    let mut rig = Rig::start("").await;
    rig.stop().await;
    let config = format!(
        "activation = \"flake\"\n{}",
        post_check_failing_on_new_system(rig.dir.path())
    );
    // The fake resolves --flake to this path, as a real build of the flake would.
    rig.set("flake-result", &fake_out_path(20, JOB));
    let text = rig
        .config_text()
        .replace("[hydra]", &format!("{config}[hydra]"));
    respawn_with(&mut rig, &text).await;
    rig.build(20);
    assert_eq!(rig.post(r#"{"build": 20}"#).await.0, 202);
    let status = rig.wait_for_attempt(20).await;
    assert_eq!(status["last_attempt"]["outcome"], "rolled-back", "{status}");
    assert_eq!(rig.calls()[1], "nixos-rebuild switch --rollback --fast");
}

async fn respawn_with(rig: &mut Rig, text: &str) {
    std::fs::write(rig.path("agent.toml"), text).unwrap();
    rig.spawn_with_written_config().await;
}

#[tokio::test]
async fn check_subcommand_prints_a_table() {
    let dir = tempfile::tempdir().unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        format!(
            "[hydra]\ninstance = \"http://127.0.0.1:1\"\nproject = \"p\"\njobset = \"j\"\n\
             [[health_checks.pre]]\nkind = \"tcp\"\nname = \"open\"\naddress = \"{}\"\n\
             [[health_checks.post]]\nkind = \"command\"\nname = \"broken\"\nretries = 0\nargv = [\"false\"]\n",
            listener.local_addr().unwrap()
        ),
    )
    .unwrap();
    let output = std::process::Command::new(BIN)
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{out}");
    assert!(out.contains("open") && out.contains("ok"), "{out}");
    assert!(out.contains("broken") && out.contains("FAIL"), "{out}");
}

#[tokio::test]
async fn systemd_pre_check_uses_the_configured_systemctl() {
    // A stand-in for systemctl (systemd does not run here): nginx is down, sshd is up.
    let mut rig = Rig::start("").await;
    rig.stop().await;
    let fake = rig.path("systemctl");
    std::fs::write(
        &fake,
        "#!/bin/sh\nshift; shift\nfor u in \"$@\"; do case $u in nginx.service) echo inactive;; *) echo active;; esac; done\n",
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let text = rig
        .config_text()
        .replace("[hydra]", "[[health_checks.pre]]\nkind = \"systemd\"\nretries = 0\nunits = [\"sshd.service\", \"nginx.service\"]\n[hydra]")
        .replace("[system]\n", &format!("[system]\nsystemctl = \"{}\"\n", fake.display()));
    std::fs::write(rig.path("agent.toml"), text).unwrap();
    rig.spawn_with_written_config().await;
    rig.build(30);
    assert_eq!(rig.post(r#"{"build": 30}"#).await.0, 202);
    let status = rig.wait_for_attempt(30).await;
    assert_eq!(status["last_attempt"]["outcome"], "unhealthy", "{status}");
    assert!(
        status["last_attempt"]["error"]
            .as_str()
            .unwrap()
            .contains("nginx"),
        "{status}"
    );
    assert!(rig.calls().is_empty());
}
