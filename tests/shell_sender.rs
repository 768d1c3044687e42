//! The POSIX fallback sender (hydra-plugin-config/notify.sh) against the real agent, with
//! HYDRA_JSON set the way Hydra's RunCommand sets it (a temporary .json file). Needs sh, jq,
//! openssl and curl; .ci/run installs them, and the test fails if one is missing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::PathBuf;

use common::{JOB, Rig, runcommand_payload};

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("hydra-plugin-config/notify.sh")
}

fn require_tools() {
    for tool in ["sh", "jq", "openssl", "curl"] {
        let found = std::process::Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .unwrap();
        assert!(
            found.status.success(),
            "{tool} is required for this test and missing"
        );
    }
}

#[test]
fn signs_the_published_standard_webhooks_vector() {
    require_tools();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("key"),
        "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("payload.json"),
        r#"{"email":"test@example.com","username":"test_user"}"#,
    )
    .unwrap();
    let output = std::process::Command::new("sh")
        .arg(script())
        .arg(dir.path().join("key"))
        .env("HYDRA_JSON", dir.path().join("payload.json"))
        .env("NIXOS_HYDRA_UPGRADE_SIGN_ONLY", "1")
        .env(
            "NIXOS_HYDRA_UPGRADE_WEBHOOK_ID",
            "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
        )
        .env("NIXOS_HYDRA_UPGRADE_WEBHOOK_TIMESTAMP", "1649367553")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw="
    );
}

#[tokio::test]
async fn queues_an_upgrade_on_the_real_agent() {
    require_tools();
    let rig = Rig::start("").await;
    let path = rig.build(70);
    let hydra_tmp = tempfile::Builder::new().suffix(".json").tempfile().unwrap();
    std::fs::write(hydra_tmp.path(), runcommand_payload(70, 0, JOB)).unwrap();
    let output = tokio::process::Command::new("sh")
        .arg(script())
        .arg(rig.path("secret"))
        .arg(&rig.url)
        .env("HYDRA_JSON", hydra_tmp.path())
        .output()
        .await
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{text}");
    let status = rig.wait_for_attempt(70).await;
    assert_eq!(status["deployed"]["path"], path.as_str(), "{status}");
    assert_eq!(status["last_attempt"]["source"], "hydra");
}
