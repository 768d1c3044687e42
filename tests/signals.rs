//! SPEC §8 signals: SIGHUP does not stop an activation; SIGTERM exits 0 within 10 s, killing what
//! the agent started (nixos-rebuild's process group, a running hook) and leaving the attempt to be
//! settled at the next start.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::Rig;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

fn signal(rig: &Rig, signal: Signal) {
    let pid = rig.agent.as_ref().unwrap().id().unwrap();
    kill(Pid::from_raw(i32::try_from(pid).unwrap()), signal).unwrap();
}

/// Whether a process whose command line contains `needle` is alive.
fn running(needle: &str) -> bool {
    std::fs::read_dir("/proc").unwrap().flatten().any(|entry| {
        std::fs::read(entry.path().join("cmdline")).is_ok_and(|c| {
            String::from_utf8_lossy(&c)
                .replace('\0', " ")
                .contains(needle)
        })
    })
}

#[tokio::test]
async fn sighup_does_not_interrupt_an_activation() {
    let rig = Rig::start("").await;
    rig.set("delay", "1");
    rig.build(7);
    assert_eq!(rig.post(r#"{"build": 7}"#).await.0, 202);
    while rig.calls().is_empty() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    signal(&rig, Signal::SIGHUP);
    let status = rig.wait_for_outcome(7, "upgraded").await;
    assert_eq!(status["deployed"]["build"], 7, "{status}");
}

#[tokio::test]
async fn sigterm_exits_0_within_10s_and_stops_what_it_started() {
    let mut rig = Rig::start("").await;
    rig.stop().await;
    // A hook that would run for a minute, and an activation that would take a minute.
    let hook = rig.path("slow-hook");
    std::fs::write(&hook, "#!/bin/sh\nexec sleep 61\n").unwrap();
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let text = rig.config_text().replace(
        "[hydra]",
        &format!(
            "[hooks]\non_failure = [\"{}\"]\ntimeout = \"5min\"\n[hydra]",
            hook.display()
        ),
    );
    std::fs::write(rig.path("agent.toml"), text).unwrap();
    rig.spawn_with_written_config().await;
    rig.set("exit-code", "1");
    rig.build(6);
    assert_eq!(rig.post(r#"{"build": 6}"#).await.0, 202);
    rig.wait_for_outcome(6, "failed").await;
    let started = Instant::now();
    while !running("sleep 61") {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the hook never started"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    std::fs::remove_file(rig.path("exit-code")).unwrap();
    rig.set("delay", "62");
    rig.build(7);
    assert_eq!(rig.post(r#"{"build": 7}"#).await.0, 202);
    while rig.calls().len() < 2 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let stopping = Instant::now();
    assert_eq!(rig.stop().await, 0);
    assert!(
        stopping.elapsed() < Duration::from_secs(10),
        "{:?}",
        stopping.elapsed()
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!running("sleep 61"), "the hook outlived the agent");
    assert!(
        !running("sleep 62"),
        "nixos-rebuild's group outlived the agent"
    );
    // The attempt is settled at the next start: the switch never happened.
    rig.spawn_with_written_config().await;
    let status = rig.wait_for_outcome(7, "interrupted").await;
    assert_eq!(status["history"][1]["outcome"], "failed", "{status}");
}
