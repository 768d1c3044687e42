//! Rollout waves with real agents: the rest wait in phase `waiting` until the canary has run the
//! build for `bake`; a canary that fails keeps them waiting; `timeout` ends the wait as
//! `deferred-timeout`; a pushed build waits out `push_delay` and a newer one replaces it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::{JOB, Rig, runcommand_payload};
use serde_json::{Value, json};

fn wave(canary: &Rig, bake: &str, timeout: &str) -> String {
    format!(
        "[rollout]\nafter = [\"{}\"]\nbake = \"{bake}\"\ntimeout = \"{timeout}\"\n",
        canary.url
    )
}

/// Waits until `rig` is waiting for its rollout wave; the status then.
async fn wait_until_waiting(rig: &Rig) -> Value {
    let started = Instant::now();
    loop {
        let status = rig.status().await;
        if status["phase"] == "waiting" && status["waiting"]["reason"] == "rollout" {
            return status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "never waited: {status:#}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn time(v: &Value) -> jiff::Timestamp {
    v.as_str().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rest_follow_the_canary_after_the_bake() {
    let canary = Rig::start("").await;
    let rest = [
        Rig::start(&wave(&canary, "2s", "1h")).await,
        Rig::start(&wave(&canary, "2s", "1h")).await,
    ];
    for rig in rest.iter().chain([&canary]) {
        rig.build(10);
    }
    for rig in &rest {
        let (code, answer) = rig.post(r#"{"build":10}"#).await;
        assert_eq!(code, 202, "{answer}");
    }
    for rig in &rest {
        let status = wait_until_waiting(rig).await;
        assert_eq!(
            status["waiting"]["agents"],
            json!([canary.url]),
            "{status:#}"
        );
        assert!(
            status["waiting"]["detail"]
                .as_str()
                .unwrap()
                .contains("has deployed nothing yet"),
            "{status:#}"
        );
        assert!(
            rig.calls().is_empty(),
            "nothing activated before the canary"
        );
    }

    let (code, answer) = canary.post(r#"{"build":10}"#).await;
    assert_eq!(code, 202, "{answer}");
    let canary_status = canary.wait_for_attempt(10).await;
    assert_eq!(canary_status["last_attempt"]["outcome"], "upgraded");
    let canary_at = time(&canary_status["deployed"]["at"]);
    for rig in &rest {
        let status = rig.wait_for_attempt(10).await;
        assert_eq!(status["last_attempt"]["outcome"], "upgraded", "{status:#}");
        assert_eq!(status["waiting"], Value::Null);
        let started = time(&status["last_attempt"]["started_at"]);
        let activated = time(&status["deployed"]["at"]);
        assert!(
            activated.duration_since(canary_at) >= jiff::SignedDuration::from_secs(2),
            "activated at {activated}, canary at {canary_at}: the bake was not waited for"
        );
        assert!(started <= canary_at, "the attempt waited in place");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_canary_keeps_the_rest_waiting_until_the_timeout() {
    let canary = Rig::start("").await;
    canary.set("exit-code", "1");
    let rest = Rig::start(&wave(&canary, "1s", "8s")).await;
    canary.build(10);
    rest.build(10);
    let (code, _) = rest.post(r#"{"build":10}"#).await;
    assert_eq!(code, 202);
    wait_until_waiting(&rest).await;
    let (code, _) = canary.post(r#"{"build":10}"#).await;
    assert_eq!(code, 202);
    let canary_status = canary.wait_for_attempt(10).await;
    assert_eq!(canary_status["last_attempt"]["outcome"], "failed");

    // Two rechecks later, the rest still waits, and names the canary.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let status = rest.status().await;
    assert_eq!(status["phase"], "waiting", "{status:#}");
    assert_eq!(status["waiting"]["agents"], json!([canary.url]));
    assert!(status["last_attempt"].is_null(), "{status:#}");

    // The timeout ends the wait: recorded, nothing activated.
    let status = rest.wait_for_attempt(10).await;
    assert_eq!(
        status["last_attempt"]["outcome"], "deferred-timeout",
        "{status:#}"
    );
    assert!(
        status["last_attempt"]["error"]
            .as_str()
            .unwrap()
            .contains(&canary.url),
        "{status:#}"
    );
    assert_eq!(status["phase"], "idle");
    assert!(status["deployed"].is_null());
    assert!(rest.calls().is_empty(), "{:?}", rest.calls());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pushed_build_waits_its_push_delay_and_a_newer_one_replaces_it() {
    let rig = Rig::start("push_delay = \"1h\"\n").await;
    let pushed = rig.build(10);
    rig.build(11);
    let (code, answer) = rig.post(&runcommand_payload(10, 0, JOB)).await;
    assert_eq!(code, 202, "{answer}");
    let started = Instant::now();
    loop {
        let status = rig.status().await;
        if status["phase"] == "waiting" {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "{status:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        rig.calls().is_empty(),
        "a pushed build waits before anything runs"
    );
    // A manual request does not wait, and replaces the waiting pushed build.
    let (code, answer) = rig.post(r#"{"build":11}"#).await;
    assert_eq!(code, 202, "{answer}");
    let status = rig.wait_for_attempt(11).await;
    assert_eq!(status["last_attempt"]["outcome"], "upgraded", "{status:#}");
    assert_eq!(
        status["history"].as_array().unwrap().len(),
        1,
        "build 10 was dropped"
    );
    assert!(
        rig.calls().iter().all(|c| !c.contains(&pushed)),
        "{:?}",
        rig.calls()
    );
}
