//! Surviving its own upgrade: a switch that changes the agent's unit is recorded, then the agent
//! exits 0 for systemd to start the new version, which neither repeats nor forgets the attempt.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::Rig;

const UNIT: &str = "etc/systemd/system/nixos-hydra-upgrade.service";

/// A fake system directory holding only the agent's unit file.
fn system_with_unit(rig: &Rig, name: &str, exec_start: &str) {
    let unit = rig.path(name).join(UNIT);
    std::fs::create_dir_all(unit.parent().unwrap()).unwrap();
    std::fs::write(unit, format!("[Service]\nExecStart={exec_start}\n")).unwrap();
}

/// Makes the fake switch point `current-system` at `name` instead of the store path.
fn switch_to(rig: &Rig, name: &str) {
    rig.set("switch-target", name);
    let script = std::fs::read_to_string(rig.path("switch")).unwrap();
    let script = script.replace(
        "ln -sfn \"$path\" \"$dir/current-system\"",
        "ln -sfn \"$dir/$(cat \"$dir/switch-target\")\" \"$dir/current-system\"",
    );
    std::fs::write(rig.path("switch"), script).unwrap();
}

#[tokio::test]
async fn a_switch_that_changes_the_agents_unit_records_then_exits_0() {
    // A slow on_success hook: it still completes before the agent exits.
    let marker = tempfile::tempdir().unwrap();
    let hook_file = marker.path().join("hook-ran");
    let mut rig = Rig::start(&format!(
        "[hooks]\non_success = [\"sh\", \"-c\", \"sleep 1; echo $NIXOS_HYDRA_UPGRADE_BUILD >> {}\"]\n",
        hook_file.display()
    ))
    .await;
    system_with_unit(
        &rig,
        "old-system",
        "/nix/store/aaa-agent/bin/nixos-hydra-upgrade serve",
    );
    system_with_unit(
        &rig,
        "same-system",
        "/nix/store/aaa-agent/bin/nixos-hydra-upgrade serve",
    );
    system_with_unit(
        &rig,
        "new-system",
        "/nix/store/bbb-agent/bin/nixos-hydra-upgrade serve",
    );
    std::fs::remove_file(rig.path("current-system")).unwrap();
    std::os::unix::fs::symlink(rig.path("old-system"), rig.path("current-system")).unwrap();

    // An upgrade that leaves the unit alone: the agent keeps running.
    switch_to(&rig, "same-system");
    rig.build(5);
    assert_eq!(rig.post(r#"{"build": 5}"#).await.0, 202);
    let status = rig.wait_for_attempt(5).await;
    assert_eq!(status["last_attempt"]["outcome"], "upgraded", "{status}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        rig.agent.as_mut().unwrap().try_wait().unwrap().is_none(),
        "unit unchanged: still running"
    );

    // An upgrade that replaces the unit: recorded, then a clean exit.
    switch_to(&rig, "new-system");
    rig.build(6);
    assert_eq!(rig.post(r#"{"build": 6}"#).await.0, 202);
    let mut child = rig.agent.take().unwrap();
    let exit = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "no exit: {:#?}",
                rig.logs().iter().rev().take(8).collect::<Vec<_>>()
            )
        })
        .unwrap();
    assert_eq!(
        exit.code(),
        Some(0),
        "exit 0 so Restart=always starts the new one"
    );
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(rig.path("state/state.json")).unwrap()).unwrap();
    assert_eq!(state["deployed"]["build"], 6, "{state}");
    assert!(state["in_flight"].is_null(), "settled before exit: {state}");
    assert_eq!(state["history"][0]["outcome"], "upgraded");
    assert_eq!(
        std::fs::read_to_string(&hook_file).unwrap(),
        "5\n6\n",
        "the last attempt's hook finished before the exit"
    );
    assert!(
        rig.logs().iter().any(|l| l["message"]
            .as_str()
            .unwrap_or_default()
            .contains("own unit")),
        "says why it exits"
    );

    // The new version starts, knows build 6 and does not activate it again.
    rig.spawn().await;
    let status = rig.status().await;
    assert_eq!(status["deployed"]["build"], 6, "{status}");
    let (code, body) = rig.post(r#"{"build": 6}"#).await;
    assert_eq!((code, body["status"].as_str()), (200, Some("current")));
    assert_eq!(rig.calls().len(), 2, "{:?}", rig.calls());
}
