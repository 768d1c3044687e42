//! A corrupt or unreadable state file: reported, moved aside, and no downgrade until the deployed
//! build is learned again from `current_system` and Hydra.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::{JOB, Rig};
use nixos_hydra_upgrade::hydra::sim::fake_out_path;

/// Stops the agent, breaks its state with `damage`, points current-system at build `running`'s
/// path, and starts it again.
async fn restart_with_broken_state(rig: &mut Rig, damage: impl Fn(&std::path::Path), running: u64) {
    if rig.agent.is_some() {
        rig.stop().await;
    }
    damage(&rig.path("state/state.json"));
    let link = rig.path("current-system");
    std::fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink(fake_out_path(running, JOB), &link).unwrap();
    rig.spawn().await;
}

fn moved_aside(rig: &Rig) -> usize {
    std::fs::read_dir(rig.path("state"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("state.json.corrupt-")
        })
        .count()
}

#[tokio::test]
async fn corrupt_state_refuses_older_builds_until_the_deployed_one_is_known() {
    let mut rig = Rig::start("").await;
    for id in [10, 11, 12] {
        rig.build(id);
    }
    assert_eq!(rig.post(r#"{"build": 11}"#).await.0, 202);
    rig.wait_for_attempt(11).await;
    // Truncated mid-write, as a broken disk or a hand edit would leave it.
    restart_with_broken_state(
        &mut rig,
        |p| std::fs::write(p, b"{\"deployed\": {\"bui").unwrap(),
        11,
    )
    .await;
    assert_eq!(moved_aside(&rig), 1);
    assert!(
        rig.logs().iter().any(
            |l| l["level"] == "error" && l["message"].as_str().unwrap().contains("moved aside")
        ),
        "reported clearly"
    );
    let status = rig.status().await;
    assert!(status["deployed"].is_null(), "{status}");

    // A captured old notification cannot take the host back while the deployed build is unknown.
    let (code, body) = rig.post(&common::runcommand_payload(10, 0, JOB)).await;
    assert_eq!(
        (code, body["status"].as_str()),
        (409, Some("refused")),
        "{body}"
    );
    assert!(
        body["reason"].as_str().unwrap().contains("unknown"),
        "{body}"
    );
    // The build the host runs is recognised, recorded as current, and becomes the deployed one.
    let (code, body) = rig.post(r#"{"build": 11}"#).await;
    assert_eq!(code, 202, "{body}");
    let status = rig.wait_for_attempt(11).await;
    assert_eq!(status["last_attempt"]["outcome"], "current", "{status}");
    assert_eq!(status["deployed"]["build"], 11, "{status}");
    // From now on the ordinary rule applies.
    let (code, _) = rig.post(r#"{"build": 10}"#).await;
    assert_eq!(code, 409);
    assert_eq!(
        rig.calls().len(),
        1,
        "only the first deployment ran nixos-rebuild"
    );
}

#[tokio::test]
async fn the_guard_survives_a_restart_and_force_overrides_it() {
    let mut rig = Rig::start("").await;
    for id in [20, 21, 22] {
        rig.build(id);
    }
    restart_with_broken_state(
        &mut rig,
        |p| std::fs::write(p, b"\xff\xfe not json").unwrap(),
        21,
    )
    .await;
    rig.stop().await;
    rig.spawn().await;
    let (code, body) = rig.post(r#"{"build": 20}"#).await;
    assert_eq!(code, 409, "still guarded after a restart: {body}");
    let (code, body) = rig.post(r#"{"build": 20, "force": true}"#).await;
    assert_eq!(code, 202, "the operator may force it: {body}");
    let status = rig.wait_for_attempt(20).await;
    assert_eq!(status["deployed"]["build"], 20, "{status}");
}

#[tokio::test]
async fn running_the_newest_build_is_learned_at_start_without_activation() {
    let mut rig = Rig::start("").await;
    rig.build(30);
    rig.build(31);
    // A state file that cannot be read at all (a directory in its place).
    restart_with_broken_state(&mut rig, |p| std::fs::create_dir_all(p).unwrap(), 31).await;
    assert_eq!(moved_aside(&rig), 1);
    let started = Instant::now();
    loop {
        let status = rig.status().await;
        if status["deployed"]["build"] == 31 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{status}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let (code, _) = rig.post(r#"{"build": 30}"#).await;
    assert_eq!(code, 409);
    assert!(rig.calls().is_empty());
}
