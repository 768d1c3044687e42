//! Replays: a stale signed request is 401, a redelivery within the window is `duplicate` (also
//! after a restart), and a captured old notification never moves the host backwards.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{JOB, Rig, runcommand_payload};

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
