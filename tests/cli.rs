//! The subcommands around the agent, through the real binary: check-config, trigger, status, help.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;

use common::{BIN, Rig};

async fn run(args: &[&str]) -> (i32, String, String) {
    let output = tokio::process::Command::new(BIN)
        .args(args)
        .output()
        .await
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn the_documented_example_config_is_valid() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/agent.toml");
    let (code, out, err) = run(&["check-config", "--config", example.to_str().unwrap()]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("valid"), "{out}");
}

#[tokio::test]
async fn check_config_names_the_bad_key_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let example =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/agent.toml"))
            .unwrap();
    for (from, to, key) in [
        ("operation = \"switch\"", "operation = \"reboot\"", "reboot"),
        (
            "signature_tolerance = \"5m\"",
            "signature_tolerance = \"soon\"",
            "signature_tolerance",
        ),
        (
            "dry_run = false",
            "dry_run = false\ncolour = true",
            "colour",
        ),
        (
            "instance = \"https://hydra.example.com\"",
            "instance = \"hydra.example.com\"",
            "hydra.instance",
        ),
    ] {
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, example.replace(from, to)).unwrap();
        let (code, _, err) = run(&["check-config", "--config", file.to_str().unwrap()]).await;
        assert_eq!(code, 2, "{to}: {err}");
        // One line naming the key (TOML errors add the line with a caret under it).
        let first = err.lines().next().unwrap_or_default();
        assert!(first.contains(key), "{to}: {err}");
    }
    let (code, _, err) = run(&["check-config", "--config", "/nonexistent.toml"]).await;
    assert_eq!(code, 2, "{err}");
}

#[tokio::test]
async fn trigger_and_status() {
    let rig = Rig::start("").await;
    rig.build(60);
    let newest = rig.build(61);
    let key = rig.path("secret");
    let key = key.to_str().unwrap();
    let (code, out, err) = run(&["trigger", "--url", &rig.url, "--secret-file", key]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(": 202 queued build 61"), "{out}");
    rig.wait_for_attempt(61).await;

    let (code, out, _) = run(&[
        "trigger",
        "--url",
        &rig.url,
        "--secret-file",
        key,
        "--build",
        "60",
    ])
    .await;
    assert_eq!(code, 1, "older without force: {out}");
    assert!(out.contains(": 409 refused"), "{out}");
    let (code, out, _) = run(&[
        "trigger",
        "--url",
        &rig.url,
        "--secret-file",
        key,
        "--build",
        "60",
        "--force",
    ])
    .await;
    assert_eq!(code, 0, "{out}");
    rig.wait_for_attempt(60).await;

    let (code, out, _) = run(&["status", "--url", &rig.url]).await;
    assert_eq!(code, 0);
    assert!(
        out.contains("build 60") && out.contains(&format!("{}/build/60", rig.hydra.url())),
        "{out}"
    );
    let (code, out, _) = run(&["status", "--url", &rig.url, "--json"]).await;
    assert_eq!(code, 0);
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(status["history"][1]["path"], newest.as_str());

    let wrong = rig.path("wrong-key");
    std::fs::write(&wrong, nixos_hydra_upgrade::signature::generate_secret()).unwrap();
    let (code, out, _) = run(&[
        "trigger",
        "--url",
        &rig.url,
        "--secret-file",
        wrong.to_str().unwrap(),
    ])
    .await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(": 401 unauthorized"), "{out}");
}

#[tokio::test]
async fn status_of_an_unreachable_agent_exits_1() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (code, _, err) = run(&["status", "--url", &format!("http://{closed}")]).await;
    assert_eq!(code, 1, "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
}

#[tokio::test]
async fn every_subcommand_has_help() {
    for sub in [
        "serve",
        "check-config",
        "notify",
        "trigger",
        "status",
        "check",
        "calendar",
        "demo",
    ] {
        let (code, out, _) = run(&[sub, "--help"]).await;
        assert_eq!(code, 0, "{sub}");
        assert!(out.contains("Usage:"), "{sub}: {out}");
    }
}

#[tokio::test]
async fn unix_socket_listener_with_trigger_and_status() {
    let mut rig = Rig::start("").await;
    rig.build(80);
    rig.stop().await;
    let socket = rig.path("agent.sock");
    let text = rig.config_text().replace(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"unix:{}\"", socket.display()),
    );
    std::fs::write(rig.path("agent.toml"), text).unwrap();
    let mut agent = tokio::process::Command::new(BIN)
        .args(["serve", "--config"])
        .arg(rig.path("agent.toml"))
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let url = format!("unix:{}", socket.display());
    let started = std::time::Instant::now();
    while !socket.exists() {
        assert!(started.elapsed().as_secs() < 10, "no socket");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let key = rig.path("secret");
    let (code, out, err) = run(&[
        "trigger",
        "--url",
        &url,
        "--secret-file",
        key.to_str().unwrap(),
    ])
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(": 202 queued"), "{out}");
    let mut deployed = false;
    while !deployed && started.elapsed().as_secs() < 20 {
        let (code, out, _) = run(&["status", "--url", &url, "--json"]).await;
        assert_eq!(code, 0);
        deployed =
            serde_json::from_str::<serde_json::Value>(&out).unwrap()["deployed"]["build"] == 80;
    }
    assert!(deployed);
    agent.kill().await.unwrap();
}
