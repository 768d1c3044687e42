//! Replays: a stale signed request is 401, a redelivery within the window is `duplicate` (also
//! after a restart), a captured old notification never moves the host backwards, and copies
//! arriving while the first is in flight never run it twice.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{JOB, Rig, runcommand_payload};
use nixos_hydra_upgrade::hydra::sim::Fault;

fn status(answer: &(u16, serde_json::Value)) -> (u16, &str) {
    (answer.0, answer.1["status"].as_str().unwrap_or_default())
}

#[tokio::test]
async fn stale_signed_requests_are_401_and_redeliveries_are_duplicate() {
    let rig = Rig::start("").await;
    rig.build(5);
    let now = jiff::Timestamp::now().as_second();
    let body = r#"{"build": 5}"#;
    // Signed correctly, but 6 minutes old or ahead (tolerance 5 min).
    for at in [now - 360, now + 360] {
        let answer = rig.post_with(body, "msg_stale", at).await;
        assert_eq!(status(&answer), (401, "unauthorized"), "{}", answer.1);
    }
    // Within tolerance: processed once, then duplicate, whatever the timestamp's age.
    let answer = rig.post_with(body, "msg_once", now - 200).await;
    assert_eq!(status(&answer), (202, "queued"));
    for _ in 0..3 {
        let answer = rig.post_with(body, "msg_once", now - 200).await;
        assert_eq!(status(&answer), (200, "duplicate"));
    }
    rig.wait_for_attempt(5).await;
    assert_eq!(rig.calls().len(), 1);
}

#[tokio::test]
async fn a_captured_old_notification_never_moves_the_host_back() {
    let mut rig = Rig::start("").await;
    rig.build(10);
    rig.build(11);
    let now = jiff::Timestamp::now().as_second();
    let captured = runcommand_payload(10, 0, JOB);
    assert_eq!(
        status(&rig.post_with(&captured, "msg_captured", now).await),
        (202, "queued")
    );
    rig.wait_for_attempt(10).await;
    assert_eq!(rig.post(&runcommand_payload(11, 0, JOB)).await.0, 202);
    rig.wait_for_attempt(11).await;
    // Replayed as captured: duplicate. Re-stamped: the signature no longer matches.
    assert_eq!(
        status(&rig.post_with(&captured, "msg_captured", now).await),
        (200, "duplicate")
    );
    let restamped = rig.keys.sign("msg_captured", now, captured.as_bytes());
    let answer = rig
        .post_raw(
            captured.clone().into_bytes(),
            &[
                ("webhook-id", "msg_captured".into()),
                ("webhook-timestamp", (now + 1).to_string()),
                ("webhook-signature", restamped),
            ],
        )
        .await;
    assert_eq!(answer.0, 401);
    // After a restart the id is still remembered; and were it not, build 10 is older: 409.
    rig.stop().await;
    rig.spawn().await;
    assert_eq!(
        status(&rig.post_with(&captured, "msg_captured", now).await),
        (200, "duplicate")
    );
    std::fs::remove_file(rig.path("state/seen-ids.json")).unwrap();
    rig.stop().await;
    rig.spawn().await;
    assert_eq!(
        status(&rig.post_with(&captured, "msg_captured", now).await),
        (409, "refused")
    );
    let state = rig.status().await;
    assert_eq!(state["deployed"]["build"], 11, "{state}");
    assert_eq!(rig.calls().len(), 2);
}

#[tokio::test]
async fn a_captured_forced_request_cannot_be_replayed_after_a_restart() {
    let mut rig = Rig::start("").await;
    rig.build(20);
    rig.build(21);
    assert_eq!(rig.post(r#"{"build": 21}"#).await.0, 202);
    rig.wait_for_attempt(21).await;
    let now = jiff::Timestamp::now().as_second();
    let forced = r#"{"build": 20, "force": true}"#;
    assert_eq!(
        status(&rig.post_with(forced, "msg_forced", now).await).0,
        202
    );
    rig.wait_for_attempt(20).await;
    assert_eq!(rig.post(r#"{"build": 21, "force": true}"#).await.0, 202);
    rig.wait_for_history(3).await;
    // The operator moved forward again; a replay of the forced request must not undo that.
    rig.stop().await;
    rig.spawn().await;
    assert_eq!(
        status(&rig.post_with(forced, "msg_forced", now).await),
        (200, "duplicate")
    );
    assert_eq!(rig.status().await["deployed"]["build"], 21);
    assert_eq!(rig.calls().len(), 3);
}

/// The answers of `copies` concurrent posts of one signed request, all with id `id`.
async fn concurrent_copies(rig: &Rig, body: &str, id: &str, copies: usize) -> Vec<(u16, String)> {
    let now = jiff::Timestamp::now().as_second();
    let answers =
        futures_util::future::join_all((0..copies).map(|_| rig.post_with(body, id, now))).await;
    answers
        .iter()
        .map(|a| (a.0, a.1["status"].as_str().unwrap_or_default().to_owned()))
        .collect()
}

fn count(answers: &[(u16, String)], code: u16, status: &str) -> usize {
    answers
        .iter()
        .filter(|(c, s)| *c == code && s == status)
        .count()
}

#[tokio::test]
async fn concurrent_copies_while_hydra_is_slow_run_once() {
    let rig = Rig::start("").await;
    rig.build(5);
    // Slow but within hydra.timeout (2 s): every copy arrives while the first is with Hydra.
    rig.hydra
        .set_fault(Some(Fault::Delay(Duration::from_millis(800))));
    // Forced, so the queue alone would take every copy: only the id reservation stops them.
    let body = r#"{"build": 5, "force": true}"#;
    let answers = concurrent_copies(&rig, body, "msg_concurrent", 20).await;
    assert_eq!(count(&answers, 202, "queued"), 1, "{answers:?}");
    let in_flight = count(&answers, 503, "unavailable");
    assert_eq!(
        in_flight + count(&answers, 200, "duplicate"),
        19,
        "the others wait for the first answer or see it: {answers:?}"
    );
    assert!(in_flight > 0, "no copy overlapped the first: {answers:?}");
    let asked = rig.hydra.requests();
    assert_eq!(asked, ["/build/5"], "Hydra asked once");
    rig.hydra.set_fault(None);
    let status = rig.wait_for_attempt(5).await;
    assert_eq!(
        status["history"].as_array().map(Vec::len),
        Some(1),
        "{status}"
    );
    // Once answered 2xx, every later copy is a duplicate and nothing runs again.
    let answers = concurrent_copies(&rig, body, "msg_concurrent", 5).await;
    assert_eq!(count(&answers, 200, "duplicate"), 5, "{answers:?}");
    assert_eq!(rig.calls().len(), 1, "{:?}", rig.calls());
    assert_eq!(rig.hydra.requests().len(), 1);
}

#[tokio::test]
async fn a_retry_after_hydra_was_down_is_processed_afresh() {
    let rig = Rig::start("").await;
    rig.build(6);
    let body = r#"{"build": 6}"#;
    // Down: every copy is 503 (the first from Hydra, the rest while it is in flight).
    rig.hydra.set_fault(Some(Fault::Status(503)));
    let answers = concurrent_copies(&rig, body, "msg_after_503", 5).await;
    assert_eq!(count(&answers, 503, "unavailable"), 5, "{answers:?}");
    // Slow past hydra.timeout: 503 again, and copies meanwhile are 503 too.
    rig.hydra
        .set_fault(Some(Fault::Delay(Duration::from_secs(6))));
    let answers = concurrent_copies(&rig, body, "msg_after_503", 5).await;
    assert_eq!(count(&answers, 503, "unavailable"), 5, "{answers:?}");
    assert!(rig.calls().is_empty());
    // Hydra back: the same id is processed afresh, once.
    rig.hydra.set_fault(None);
    let now = jiff::Timestamp::now().as_second();
    let answer = rig.post_with(body, "msg_after_503", now).await;
    assert_eq!(status(&answer), (202, "queued"), "{}", answer.1);
    rig.wait_for_attempt(6).await;
    let answer = rig.post_with(body, "msg_after_503", now).await;
    assert_eq!(status(&answer), (200, "duplicate"));
    assert_eq!(rig.calls().len(), 1);
}
