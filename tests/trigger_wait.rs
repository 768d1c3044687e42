//! `trigger --wait` follows its attempt phase by phase and exits by its outcome.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{BIN, Rig};

async fn trigger(rig: &Rig, extra: &[&str]) -> (i32, String) {
    let output = tokio::process::Command::new(BIN)
        .args(["trigger", "--url", &rig.url, "--secret-file"])
        .arg(rig.path("secret"))
        .arg("--wait")
        .args(extra)
        .output()
        .await
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code().unwrap_or(-1), text)
}

#[tokio::test]
async fn wait_prints_phases_and_exits_by_outcome() {
    let rig = Rig::start("").await;
    rig.build(70);
    rig.set("delay", "1.5");
    let (code, out) = trigger(&rig, &["--build", "70"]).await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.starts_with(&format!("{}/v1/upgrade: 202 queued build 70\n", rig.url)),
        "{out}"
    );
    assert!(out.contains("build 70: activating\n"), "{out}");
    assert!(out.contains("build 70: upgraded (followed for"), "{out}");

    // Already deployed: answered current, nothing to follow.
    let (code, out) = trigger(&rig, &["--build", "70"]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("build 70: already deployed"), "{out}");

    rig.build(71);
    rig.set("exit-code", "1");
    let (code, out) = trigger(&rig, &[]).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("build 71: failed"), "{out}");
    assert!(out.contains("error: ") && out.contains("status 1"), "{out}");

    rig.build(72);
    rig.set("exit-code", "0");
    rig.set("delay", "4");
    let (code, out) = trigger(&rig, &["--timeout", "1s"]).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("stopped waiting"), "{out}");
    rig.wait_for_attempt(72).await;
}
