//! Hydra down, slow, lying or changing its mind: a clear 503 or 422, no activation, no crash,
//! and the next trigger (even with the same webhook-id) is processed afresh.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::{JOB, Rig};
use nixos_hydra_upgrade::hydra::sim::{Fault, SimBuild, fake_out_path};
use serde_json::Value;

fn reason(body: &Value) -> &str {
    body["reason"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn hydra_down_answers_503_fast() {
    let mut rig = Rig::start("").await;
    rig.stop().await;
    // A loopback port nobody listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let text = rig
        .config_text()
        .replace(&rig.hydra.url(), &format!("http://127.0.0.1:{port}"));
    std::fs::write(rig.path("agent.toml"), text).unwrap();
    rig.spawn_with_written_config().await;
    for body in [r#"{"build": 5}"#, "{}"] {
        let started = Instant::now();
        let (code, answer) = rig.post(body).await;
        assert_eq!(
            (code, answer["status"].as_str()),
            (503, Some("unavailable"))
        );
        assert!(reason(&answer).contains("hydra"), "{answer}");
        assert!(started.elapsed() < Duration::from_secs(3));
    }
    assert!(rig.calls().is_empty());
}

#[tokio::test]
async fn slow_hydra_is_cut_at_its_timeout_and_retried_with_the_same_id() {
    let rig = Rig::start("").await;
    rig.build(5);
    rig.hydra
        .set_fault(Some(Fault::Delay(Duration::from_secs(6))));
    let id = "msg_slow_hydra";
    let now = jiff::Timestamp::now().as_second();
    let started = Instant::now();
    let (code, answer) = rig.post_with(r#"{"build": 5}"#, id, now).await;
    assert_eq!(code, 503, "{answer}");
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(4),
        "hydra.timeout is 2 s, took {took:?}"
    );
    rig.hydra.set_fault(None);
    let (code, answer) = rig.post_with(r#"{"build": 5}"#, id, now).await;
    assert_eq!(code, 202, "a 503 is not remembered as seen: {answer}");
    rig.wait_for_attempt(5).await;
}

#[tokio::test]
async fn garbage_from_latest_is_503_for_an_empty_body() {
    let rig = Rig::start("").await;
    rig.build(5);
    let latest = format!("/job/{}/{}/{JOB}/latest", common::PROJECT, common::JOBSET);
    for fault in [
        Fault::Status(502),
        Fault::Status(200),
        Fault::Redirect("https://hydra.example/eval/5".into()),
        Fault::Redirect("not a url at all".into()),
        Fault::Redirect("/build/0".into()),
    ] {
        rig.hydra.set_path_fault("/job/", None);
        rig.hydra.set_path_fault(&latest, Some(fault.clone()));
        let (code, answer) = rig.post("{}").await;
        assert_eq!(code, 503, "{fault:?}: {answer}");
    }
    assert!(rig.calls().is_empty());
}

#[tokio::test]
async fn a_location_on_another_host_is_fetched_from_the_configured_instance() {
    let rig = Rig::start("").await;
    let path = rig.build(9);
    let latest = format!("/job/{}/{}/{JOB}/latest", common::PROJECT, common::JOBSET);
    // Only the path counts; the agent never resolves or connects to the foreign host.
    rig.hydra.set_path_fault(
        &latest,
        Some(Fault::Redirect(
            "http://attacker.invalid:1/hydra/build/9".into(),
        )),
    );
    let (code, answer) = rig.post("{}").await;
    assert_eq!(
        (code, &answer["path"]),
        (202, &Value::from(path)),
        "{answer}"
    );
    assert!(rig.hydra.requests().contains(&"/build/9".to_owned()));
}

#[tokio::test]
async fn a_build_that_changes_between_calls() {
    let rig = Rig::start("").await;
    rig.build(7);
    rig.build(8);
    let latest = format!("/job/{}/{}/{JOB}/latest", common::PROJECT, common::JOBSET);
    // latest names 7, but /build/7 answers for another build: nothing is trusted.
    rig.hydra
        .set_path_fault(&latest, Some(Fault::Redirect("/build/7".into())));
    rig.hydra.set_path_fault(
        "/build/7",
        Some(Fault::Body(
            "application/json",
            serde_json::json!({"id": 8, "finished": 1, "buildstatus": 0, "project": common::PROJECT,
                "jobset": common::JOBSET, "job": JOB,
                "buildoutputs": {"out": {"path": fake_out_path(8, JOB)}}})
            .to_string(),
        )),
    );
    let (code, answer) = rig.post("{}").await;
    assert_eq!(code, 503, "{answer}");
    assert!(reason(&answer).contains("answered for build 8"), "{answer}");

    // latest names 7, which was restarted since (finished 0, old buildstatus 0): 422.
    rig.hydra.set_path_fault("/", None);
    rig.hydra.add_build(SimBuild {
        id: 7,
        project: common::PROJECT.into(),
        jobset: common::JOBSET.into(),
        job: JOB.into(),
        finished: false,
        buildstatus: Some(0),
        out_path: fake_out_path(7, JOB),
        evals: vec![1],
    });
    rig.hydra
        .set_path_fault(&latest, Some(Fault::Redirect("/build/7".into())));
    let (code, answer) = rig.post("{}").await;
    assert_eq!(code, 422, "{answer}");
    assert!(reason(&answer).contains("not finished"), "{answer}");
    assert!(rig.calls().is_empty(), "nothing activated");
}

#[tokio::test]
async fn the_worker_deploys_the_path_hydra_vouched_for_even_if_hydra_changes_later() {
    let rig = Rig::start("").await;
    rig.set("delay", "1");
    rig.build(3);
    let vouched = rig.build(4);
    assert_eq!(rig.post(r#"{"build": 3}"#).await.0, 202);
    let (code, answer) = rig.post(r#"{"build": 4}"#).await;
    assert_eq!(
        (code, &answer["path"]),
        (202, &Value::from(vouched.clone()))
    );
    // While 4 waits in the queue, Hydra starts answering something else for it.
    rig.hydra.add_build(SimBuild {
        id: 4,
        project: common::PROJECT.into(),
        jobset: common::JOBSET.into(),
        job: JOB.into(),
        finished: true,
        buildstatus: Some(0),
        out_path: fake_out_path(44, JOB),
        evals: vec![1],
    });
    let status = rig.wait_for_attempt(4).await;
    assert_eq!(status["deployed"]["path"], vouched.as_str(), "{status}");
    let calls = rig.calls();
    assert!(calls.last().unwrap().contains(&vouched), "{calls:?}");
}

#[tokio::test]
async fn hydra_slow_in_total_is_a_json_503_within_the_request_timeout() {
    let mut rig = Rig::start("activation = \"flake\"").await;
    rig.stop().await;
    // Each answer within hydra.timeout (10 s), but latest + build + eval take 3 × 9 s.
    let text = rig
        .config_text()
        .replace("timeout = \"2s\"", "timeout = \"10s\"");
    std::fs::write(rig.path("agent.toml"), text).unwrap();
    rig.spawn_with_written_config().await;
    rig.build(5);
    rig.hydra
        .set_fault(Some(Fault::Delay(Duration::from_secs(9))));
    let id = nixos_hydra_upgrade::signature::generate_id();
    let body = "{}";
    let mut request = reqwest::Client::new()
        .post(format!("{}/v1/upgrade", rig.url))
        .body(body);
    for (name, value) in rig.keys.headers(&id, body.as_bytes()) {
        request = request.header(name, value);
    }
    let started = Instant::now();
    let response = request.send().await.unwrap();
    let took = started.elapsed();
    assert_eq!(response.status().as_u16(), 503);
    assert!(
        response.headers().get("retry-after").is_some(),
        "{:?}",
        response.headers()
    );
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["status"], "unavailable", "{answer}");
    assert!(reason(&answer).contains("hydra"), "{answer}");
    let limit = nixos_hydra_upgrade::http::REQUEST_TIMEOUT;
    assert!(
        took < limit,
        "answered within the request timeout: {took:?}"
    );
    assert!(rig.calls().is_empty(), "nothing activated");
}
