//! The Hydra-side `notify` binary: what it sends, to whom, how it retries, and that it always
//! ends in time. The receivers here stand in for agents: they check the signature like an agent
//! does and answer whatever the test scripts.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use common::{BIN, JOB, runcommand_payload};
use nixos_hydra_upgrade::signature::{Headers, Keys, generate_secret};

/// One delivery as a receiver saw it: webhook-id, body, whether the signature verified.
type Delivery = (String, Vec<u8>, bool);

#[derive(Clone, Default)]
struct Received(Arc<Mutex<Vec<Delivery>>>);

/// A receiver answering the scripted statuses in turn (the last one repeats); records
/// (webhook-id, body, signature valid).
async fn receiver(keys: Keys, script: Vec<u16>, hang: bool) -> (String, Received) {
    let received = Received::default();
    let log = received.clone();
    let app = axum::Router::new().route(
        "/v1/upgrade",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let log = log.clone();
            let keys = keys.clone();
            let script = script.clone();
            async move {
                let text = |n: &str| {
                    headers
                        .get(n)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned)
                };
                let (id, ts, sig) = (
                    text("webhook-id"),
                    text("webhook-timestamp"),
                    text("webhook-signature"),
                );
                let signed = Headers {
                    id: id.as_deref(),
                    timestamp: ts.as_deref(),
                    signature: sig.as_deref(),
                };
                let valid = keys
                    .verify(&signed, &body, jiff::Timestamp::now().as_second(), 300)
                    .is_ok();
                let n = {
                    let mut log = log.0.lock().unwrap();
                    log.push((id.unwrap_or_default(), body.to_vec(), valid));
                    log.len()
                };
                if hang {
                    tokio::time::sleep(Duration::from_secs(600)).await;
                }
                let code = script.get(n - 1).or(script.last()).copied().unwrap_or(202);
                (
                    StatusCode::from_u16(code).unwrap(),
                    r#"{"status":"queued","build":7}"#,
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, received)
}

struct Setup {
    dir: tempfile::TempDir,
    keys: Keys,
    secret: String,
}

fn setup(payload: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let secret = generate_secret();
    std::fs::write(dir.path().join("key"), format!("{secret}\n")).unwrap();
    std::fs::write(dir.path().join("hydra.json"), payload).unwrap();
    Setup {
        keys: Keys::parse(&secret).unwrap(),
        dir,
        secret,
    }
}

async fn run(s: &Setup, args: &[&str]) -> (i32, String, Duration) {
    let started = Instant::now();
    let output = tokio::process::Command::new(BIN)
        .arg("notify")
        .args(args)
        .arg("--secret-file")
        .arg(s.dir.path().join("key"))
        .env("HYDRA_JSON", s.dir.path().join("hydra.json"))
        .output()
        .await
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        !text.contains(s.secret.trim_start_matches("whsec_")),
        "the secret was printed: {text}"
    );
    (output.status.code().unwrap_or(-1), text, started.elapsed())
}

#[tokio::test]
async fn delivers_the_payload_unchanged_to_urls_and_matching_routes() {
    let payload = runcommand_payload(7, 0, JOB);
    let s = setup(&payload);
    let (a, got_a) = receiver(s.keys.clone(), vec![202], false).await;
    let (b, got_b) = receiver(s.keys.clone(), vec![202], false).await;
    let (c, got_c) = receiver(s.keys.clone(), vec![200], false).await;
    let (code, out, _) = run(
        &s,
        &[
            "--url",
            &a,
            "--route",
            &format!("{JOB}={b}"),
            "--route",
            &format!("web2={c}"),
        ],
    )
    .await;
    assert_eq!(code, 0, "{out}");
    for got in [&got_a, &got_b] {
        let got = got.0.lock().unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].1, payload.as_bytes(), "bytes unchanged");
        assert!(got[0].2, "signature verifies");
    }
    assert!(got_c.0.lock().unwrap().is_empty(), "route for another job");
    assert!(out.contains("202 queued build 7"), "{out}");
}

#[tokio::test]
async fn does_nothing_for_failed_builds_and_other_events() {
    for payload in [
        runcommand_payload(7, 1, JOB),
        runcommand_payload(7, 0, JOB).replace("buildFinished", "buildStarted"),
    ] {
        let s = setup(&payload);
        let (a, got) = receiver(s.keys.clone(), vec![202], false).await;
        let (code, out, _) = run(&s, &["--url", &a]).await;
        assert_eq!(code, 0, "{out}");
        assert!(out.contains("nothing to do"), "{out}");
        assert!(got.0.lock().unwrap().is_empty());
    }
}

#[tokio::test]
async fn retries_transient_failures_with_the_same_id() {
    let s = setup(&runcommand_payload(7, 0, JOB));
    let (a, got) = receiver(s.keys.clone(), vec![503, 502, 202], false).await;
    let (code, out, _) = run(&s, &["--url", &a]).await;
    assert_eq!(code, 0, "{out}");
    let got = got.0.lock().unwrap();
    assert_eq!(got.len(), 3);
    assert!(
        got.iter().all(|(id, _, valid)| id == &got[0].0 && *valid),
        "same id, valid each time"
    );
}

#[tokio::test]
async fn permanent_failures_and_unreachable_agents_exit_1() {
    let s = setup(&runcommand_payload(7, 0, JOB));
    let (a, got) = receiver(s.keys.clone(), vec![401], false).await;
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let (ok, _) = receiver(s.keys.clone(), vec![202], false).await;
    let (code, out, _) = run(
        &s,
        &[
            "--url",
            &a,
            "--url",
            &ok,
            "--url",
            &closed,
            "--deadline",
            "3s",
        ],
    )
    .await;
    assert_eq!(code, 1, "{out}");
    assert_eq!(got.0.lock().unwrap().len(), 1, "a 401 is not retried");
    assert!(out.contains("FAILED"), "{out}");
}

#[tokio::test]
async fn a_hanging_agent_cannot_stall_hydra() {
    let s = setup(&runcommand_payload(7, 0, JOB));
    let (a, _) = receiver(s.keys.clone(), vec![202], true).await;
    let (code, out, took) = run(&s, &["--url", &a, "--deadline", "2s"]).await;
    assert_eq!(code, 1, "{out}");
    assert!(took < Duration::from_secs(6), "took {took:?}");
}

#[tokio::test]
async fn usage_errors_exit_2() {
    let s = setup(&runcommand_payload(7, 0, JOB));
    let (code, out, _) = run(&s, &["--route", "no-equals-sign"]).await;
    assert_eq!(code, 2, "{out}");
    let (code, out, _) = run(&s, &[]).await;
    assert_eq!(code, 2, "{out}");
    let output = tokio::process::Command::new(BIN)
        .args([
            "notify",
            "--url",
            "http://127.0.0.1:9",
            "--secret-file",
            "/dev/null",
        ])
        .env_remove("HYDRA_JSON")
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
}
