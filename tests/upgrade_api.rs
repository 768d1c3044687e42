//! Every row of SPEC §4's `POST /v1/upgrade` table, against the real binary and the Hydra simulator.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{JOB, Rig, runcommand_payload};
use nixos_hydra_upgrade::hydra::sim::{Fault, SimBuild};
use serde_json::json;

#[tokio::test]
async fn queued_current_duplicate_and_refused() {
    let rig = Rig::start("").await;
    let path = rig.build(100);
    rig.build(90);

    let (code, body) = rig.post(&runcommand_payload(100, 0, JOB)).await;
    assert_eq!((code, &body["status"]), (202, &json!("queued")), "{body}");
    assert_eq!(body["build"], 100);
    assert_eq!(
        body["path"],
        json!(path),
        "the path comes from Hydra, never from the payload"
    );
    rig.wait_for_attempt(100).await;

    let (code, body) = rig.post(r#"{"build": 100}"#).await;
    assert_eq!(
        (code, body["status"].as_str()),
        (200, Some("current")),
        "{body}"
    );

    let id = "msg_duplicate_test";
    let now = jiff::Timestamp::now().as_second();
    rig.build(101);
    let (code, body) = rig.post_with(r#"{"build": 101}"#, id, now).await;
    assert_eq!(code, 202, "{body}");
    let (code, body) = rig.post_with(r#"{"build": 101}"#, id, now).await;
    assert_eq!(
        (code, body["status"].as_str()),
        (200, Some("duplicate")),
        "{body}"
    );
    rig.wait_for_attempt(101).await;

    let (code, body) = rig.post(r#"{"build": 90}"#).await;
    assert_eq!(
        (code, body["status"].as_str()),
        (409, Some("refused")),
        "{body}"
    );
    let reason = body["reason"].as_str().unwrap();
    assert!(
        reason.contains("90") && reason.contains("101"),
        "names both ids: {reason}"
    );

    let (code, body) = rig.post(r#"{"build": 90, "force": true}"#).await;
    assert_eq!(
        (code, body["status"].as_str()),
        (202, Some("queued")),
        "forced: {body}"
    );
    rig.wait_for_attempt(90).await;
    let calls = rig.calls();
    assert_eq!(calls.len(), 3, "100, 101, then forced 90: {calls:?}");
}

#[tokio::test]
async fn newest_successful_build_when_body_is_empty() {
    let rig = Rig::start("").await;
    rig.build(7);
    let newest = rig.build(12);
    rig.hydra.add_build(SimBuild {
        id: 13,
        project: common::PROJECT.into(),
        jobset: common::JOBSET.into(),
        job: JOB.into(),
        finished: true,
        buildstatus: Some(1),
        out_path: nixos_hydra_upgrade::hydra::sim::fake_out_path(13, JOB),
        evals: vec![1],
    });
    let (code, body) = rig.post("{}").await;
    assert_eq!(
        (code, &body["build"], &body["path"]),
        (202, &json!(12), &json!(newest)),
        "{body}"
    );
    let requests = rig.hydra.requests();
    assert!(requests.contains(&format!(
        "/job/{}/{}/{JOB}/latest",
        common::PROJECT,
        common::JOBSET
    )));
    assert!(
        requests.contains(&"/build/12".to_owned()),
        "fetched from the configured instance: {requests:?}"
    );
}

#[tokio::test]
async fn ignored_without_asking_hydra() {
    let rig = Rig::start("").await;
    for (payload, why) in [
        (runcommand_payload(5, 1, JOB), "buildStatus 1"),
        (
            runcommand_payload(5, 6, JOB).replace("\"finished\":true", "\"finished\":false"),
            "not finished",
        ),
        (
            runcommand_payload(5, 0, JOB).replace("buildFinished", "buildStarted"),
            "buildStarted",
        ),
    ] {
        let (code, body) = rig.post(&payload).await;
        assert_eq!(
            (code, body["status"].as_str()),
            (200, Some("ignored")),
            "{body}"
        );
        assert!(body["reason"].as_str().unwrap().contains(why), "{body}");
    }
    assert!(
        rig.hydra.requests().is_empty(),
        "Hydra was asked: {:?}",
        rig.hydra.requests()
    );
}

#[tokio::test]
async fn invalid_bodies() {
    let rig = Rig::start("").await;
    for body in [
        "[]",
        "\"x\"",
        "not json",
        r#"{"build": 0}"#,
        r#"{"build": -3}"#,
        r#"{"build": "5"}"#,
        r#"{"build": 5, "path": "/nix/store/x"}"#,
    ] {
        let (code, answer) = rig.post(body).await;
        assert_eq!(
            (code, answer["status"].as_str()),
            (400, Some("invalid")),
            "{body}: {answer}"
        );
    }
    let big = format!("{{\"build\": 1, \"pad\": \"{}\"}}", "x".repeat(70 * 1024));
    let (code, answer) = rig.post(&big).await;
    assert_eq!(
        (code, answer["status"].as_str()),
        (413, Some("invalid")),
        "{answer}"
    );
}

#[tokio::test]
async fn unauthorized_requests() {
    let rig = Rig::start("").await;
    rig.build(5);
    let body = r#"{"build": 5}"#;
    let now = jiff::Timestamp::now().as_second();
    let good = rig.keys.sign("msg_a", now, body.as_bytes());
    let cases: Vec<Vec<(&str, String)>> = vec![
        vec![],
        vec![
            ("webhook-id", "msg_a".into()),
            ("webhook-timestamp", now.to_string()),
        ],
        vec![
            ("webhook-id", "msg_a".into()),
            ("webhook-timestamp", (now - 600).to_string()),
            (
                "webhook-signature",
                rig.keys.sign("msg_a", now - 600, body.as_bytes()),
            ),
        ],
        vec![
            ("webhook-id", "msg_a".into()),
            ("webhook-timestamp", (now + 600).to_string()),
            (
                "webhook-signature",
                rig.keys.sign("msg_a", now + 600, body.as_bytes()),
            ),
        ],
        vec![
            ("webhook-id", "msg_b".into()),
            ("webhook-timestamp", now.to_string()),
            ("webhook-signature", good.clone()),
        ],
        vec![
            ("webhook-id", "msg a".into()),
            ("webhook-timestamp", now.to_string()),
            ("webhook-signature", good.clone()),
        ],
        vec![
            ("webhook-id", "msg_a".into()),
            ("webhook-timestamp", now.to_string()),
            ("webhook-signature", "v1,garbage".into()),
        ],
    ];
    for headers in cases {
        let (code, answer) = rig.post_raw(body.as_bytes().to_vec(), &headers).await;
        assert_eq!(
            (code, answer["status"].as_str()),
            (401, Some("unauthorized")),
            "{headers:?}: {answer}"
        );
    }
    let (code, _) = rig
        .post_raw(
            br#"{"build": 5, "force": true}"#.to_vec(),
            &[
                ("webhook-id", "msg_a".into()),
                ("webhook-timestamp", now.to_string()),
                ("webhook-signature", good),
            ],
        )
        .await;
    assert_eq!(code, 401, "a signature over another body");
    assert!(rig.hydra.requests().is_empty());
    // An id is remembered only after a 2xx: the same id, now signed right, is processed.
    let (code, answer) = rig.post_with(body, "msg_a", now).await;
    assert_eq!(code, 202, "{answer}");
}

#[tokio::test]
async fn rejected_when_hydra_says_no() {
    let rig = Rig::start("").await;
    let build = |id: u64, f: &dyn Fn(&mut SimBuild)| {
        let mut b = SimBuild {
            id,
            project: common::PROJECT.into(),
            jobset: common::JOBSET.into(),
            job: JOB.into(),
            finished: true,
            buildstatus: Some(0),
            out_path: nixos_hydra_upgrade::hydra::sim::fake_out_path(id, JOB),
            evals: vec![1],
        };
        f(&mut b);
        rig.hydra.add_build(b);
    };
    build(2, &|b| b.job = "web2".into());
    build(3, &|b| b.jobset = "staging".into());
    build(4, &|b| b.finished = false);
    build(5, &|b| b.buildstatus = Some(1));
    build(6, &|b| b.buildstatus = Some(6));
    build(7, &|b| b.out_path = "/nix/store/short-path".into());
    build(8, &|b| b.buildstatus = None);
    for (id, why) in [
        (1, "unknown"),
        (2, "web2"),
        (3, "staging"),
        (4, "not finished"),
        (5, "buildstatus 1"),
        (6, "buildstatus 6"),
        (7, "out path"),
        (8, "buildstatus null"),
    ] {
        let (code, body) = rig.post(&format!("{{\"build\": {id}}}")).await;
        assert_eq!(
            (code, body["status"].as_str()),
            (422, Some("rejected")),
            "{id}: {body}"
        );
        assert!(
            body["reason"].as_str().unwrap().contains(why),
            "{id}: {body}"
        );
    }
    assert!(rig.calls().is_empty());
}

#[tokio::test]
async fn unavailable_when_hydra_fails() {
    let rig = Rig::start("").await;
    rig.build(5);
    for fault in [
        Fault::Status(500),
        Fault::Body("text/html", "<html>login</html>".into()),
        Fault::Body("application/json", r#"{"id": 5, "finished": 1"#.into()),
        Fault::Body(
            "application/json",
            r#"{"id": "5", "finished": 1, "buildstatus": 0}"#.into(),
        ),
        Fault::Huge(2 * 1024 * 1024),
        Fault::Delay(std::time::Duration::from_secs(4)),
    ] {
        rig.hydra.set_fault(Some(fault.clone()));
        let response = reqwest::Client::new()
            .post(format!("{}/v1/upgrade", rig.url))
            .headers(signed_headers(&rig, r#"{"build": 5}"#))
            .body(r#"{"build": 5}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 503, "{fault:?}");
        assert!(response.headers().contains_key("retry-after"), "{fault:?}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["status"], "unavailable", "{fault:?}");
    }
    rig.hydra.set_fault(None);
    let (code, body) = rig.post(r#"{"build": 5}"#).await;
    assert_eq!(code, 202, "retried after Hydra recovered: {body}");
}

fn signed_headers(rig: &Rig, body: &str) -> reqwest::header::HeaderMap {
    let id = nixos_hydra_upgrade::signature::generate_id();
    let now = jiff::Timestamp::now().as_second();
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("webhook-id", id.parse().unwrap());
    headers.insert("webhook-timestamp", now.to_string().parse().unwrap());
    headers.insert(
        "webhook-signature",
        rig.keys.sign(&id, now, body.as_bytes()).parse().unwrap(),
    );
    headers
}

#[tokio::test]
async fn no_secret_file_accepts_no_pushes() {
    let mut rig = Rig::start("").await;
    rig.stop().await;
    let text = rig.config_text().replace(
        &format!("secret_file = \"{}\"\n", rig.path("secret").display()),
        "",
    );
    std::fs::write(rig.path("agent.toml"), &text).unwrap();
    let mut child = tokio::process::Command::new(common::BIN)
        .args(["serve", "--config"])
        .arg(rig.path("agent.toml"))
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut listen = None;
    let mut warned = false;
    while let Some(line) = lines.next_line().await.unwrap() {
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        warned |= v["level"] == "warn" && v["message"].as_str().unwrap().contains("no secret_file");
        if v["message"] == "agent started" {
            listen = v["listen"].as_str().map(str::to_owned);
            break;
        }
    }
    assert!(warned, "start-up warns that pushes are off");
    let response = reqwest::Client::new()
        .post(format!("http://{}/v1/upgrade", listen.unwrap()))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);
}
