//! `notify` hands back to Hydra within `--hand-back` however many agents are silent, spools what
//! it could not deliver, and `retry` delivers it later with the same webhook-id, re-signed; a
//! newer build for the same agent supersedes a spooled older one. The receivers stand in for
//! agents: they check the signature as an agent does; a silent one accepts and never answers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use common::{BIN, JOB, runcommand_payload};
use nixos_hydra_upgrade::signature::{Headers, Keys, generate_secret};
use serde_json::Value;

/// (webhook-id, webhook-timestamp, body, signature valid)
type Delivery = (String, i64, Vec<u8>, bool);

#[derive(Clone)]
struct Agent {
    url: String,
    received: Arc<Mutex<Vec<Delivery>>>,
    /// While set, requests are read and never answered.
    silent: Arc<AtomicBool>,
}

impl Agent {
    fn got(&self) -> Vec<Delivery> {
        self.received.lock().unwrap().clone()
    }
}

async fn agent(keys: Keys, silent: bool) -> Agent {
    let received: Arc<Mutex<Vec<Delivery>>> = Arc::default();
    let silent = Arc::new(AtomicBool::new(silent));
    let (log, quiet) = (received.clone(), silent.clone());
    let app = axum::Router::new().route(
        "/v1/upgrade",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let (log, quiet, keys) = (log.clone(), quiet.clone(), keys.clone());
            async move {
                if quiet.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                }
                let text = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
                let signed = Headers {
                    id: text("webhook-id"),
                    timestamp: text("webhook-timestamp"),
                    signature: text("webhook-signature"),
                };
                let valid = keys
                    .verify(&signed, &body, jiff::Timestamp::now().as_second(), 300)
                    .is_ok();
                log.lock().unwrap().push((
                    text("webhook-id").unwrap_or_default().to_owned(),
                    text("webhook-timestamp")
                        .and_then(|t| t.parse().ok())
                        .unwrap_or(0),
                    body.to_vec(),
                    valid,
                ));
                (StatusCode::ACCEPTED, r#"{"status":"queued"}"#)
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    Agent {
        url,
        received,
        silent,
    }
}

struct Hydra {
    dir: tempfile::TempDir,
    keys: Keys,
}

impl Hydra {
    fn new() -> Hydra {
        let dir = tempfile::tempdir().unwrap();
        let secret = generate_secret();
        std::fs::write(dir.path().join("key"), format!("{secret}\n")).unwrap();
        Hydra {
            keys: Keys::parse(&secret).unwrap(),
            dir,
        }
    }

    fn spool(&self) -> std::path::PathBuf {
        self.dir.path().join("spool")
    }

    /// Runs notify for `build`; exit code, output, how long it took.
    async fn notify(
        &self,
        build: u64,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> (i32, String, Duration) {
        let payload = self.dir.path().join(format!("hydra-{build}.json"));
        std::fs::write(&payload, runcommand_payload(build, 0, JOB)).unwrap();
        let started = Instant::now();
        let output = tokio::process::Command::new(BIN)
            .arg("notify")
            .args(args)
            .arg("--secret-file")
            .arg(self.dir.path().join("key"))
            .env("HYDRA_JSON", &payload)
            .env_remove(nixos_hydra_upgrade::cli::spool::SPOOL_ENV)
            .envs(env.iter().copied())
            .output()
            .await
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        (output.status.code().unwrap_or(-1), text, started.elapsed())
    }

    async fn retry_once(&self) -> (i32, String) {
        let output = tokio::process::Command::new(BIN)
            .args(["retry", "--once", "--spool"])
            .arg(self.spool())
            .arg("--secret-file")
            .arg(self.dir.path().join("key"))
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

    /// The spool entries: (url, build, webhook_id).
    fn spooled(&self) -> Vec<(String, u64, String)> {
        let mut out = Vec::new();
        for file in std::fs::read_dir(self.spool()).unwrap() {
            let path = file.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if !name.ends_with(".json") || name.starts_with('.') {
                continue;
            }
            let v: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
            out.push((
                v["url"].as_str().unwrap().to_owned(),
                v["build"].as_u64().unwrap(),
                v["webhook_id"].as_str().unwrap().to_owned(),
            ));
        }
        out.sort();
        out
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_agent_is_spooled_within_the_hand_back_and_retried_with_the_same_id() {
    let hydra = Hydra::new();
    let ok = agent(hydra.keys.clone(), false).await;
    let silent = agent(hydra.keys.clone(), true).await;
    let spool = hydra.spool();
    let hand_back = Duration::from_secs(2);
    let (code, out, took) = hydra
        .notify(
            7,
            &[
                "--url",
                &ok.url,
                "--url",
                &silent.url,
                "--hand-back",
                "2s",
                "--spool",
                spool.to_str().unwrap(),
            ],
            &[],
        )
        .await;
    assert_eq!(code, 0, "spooled is not failed: {out}");
    assert!(took < hand_back * 2, "handed back after {took:?}: {out}");
    assert!(out.contains(&format!("SPOOLED {}", silent.url)), "{out}");
    let delivered = ok.got();
    assert_eq!(delivered.len(), 1);
    assert!(delivered[0].3, "signature verifies");
    let id = delivered[0].0.clone();
    assert_eq!(
        hydra.spooled(),
        [(silent.url.clone(), 7, id.clone())],
        "the spool holds the silent agent's notification, same id"
    );
    let mode = {
        use std::os::unix::fs::PermissionsExt;
        let file = std::fs::read_dir(&spool)
            .unwrap()
            .map(|f| f.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == "json"))
            .unwrap();
        std::fs::metadata(file).unwrap().permissions().mode() & 0o777
    };
    assert_eq!(mode, 0o600);

    // Still silent: a pass leaves it in the spool, counted as a try.
    let (code, out) = hydra.retry_once().await;
    assert_eq!(code, 1, "{out}");
    assert_eq!(hydra.spooled().len(), 1, "{out}");

    // Back: the retrier delivers the same bytes with the same id and a fresh, valid signature.
    silent.silent.store(false, Ordering::SeqCst);
    let (code, out) = hydra.retry_once().await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("delivered"), "{out}");
    let got = silent.got();
    let last = got.last().unwrap();
    assert_eq!(last.0, id, "same webhook-id");
    assert!(last.3, "signature verifies");
    assert!(last.1 >= delivered[0].1, "timestamp signed afresh");
    assert_eq!(
        last.2,
        runcommand_payload(7, 0, JOB).as_bytes(),
        "bytes unchanged"
    );
    assert!(hydra.spooled().is_empty());
    assert_eq!(
        ok.got().len(),
        1,
        "the delivered agent is not sent it again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_build_supersedes_a_spooled_older_one() {
    let hydra = Hydra::new();
    let a = agent(hydra.keys.clone(), true).await;
    let spool = hydra.spool();
    let spool = spool.to_str().unwrap();
    for build in [7, 8] {
        let (code, out, _) = hydra
            .notify(
                build,
                &["--url", &a.url, "--hand-back", "1s", "--spool", spool],
                &[],
            )
            .await;
        assert_eq!(code, 0, "{out}");
    }
    let spooled = hydra.spooled();
    assert_eq!(
        spooled.iter().map(|s| s.1).collect::<Vec<_>>(),
        [8],
        "only the newest build stays spooled"
    );
    // An older build spooled late (Hydra's notifications are not ordered) is dropped by the retrier.
    let (_, _, _) = hydra
        .notify(
            6,
            &["--url", &a.url, "--hand-back", "1s", "--spool", spool],
            &[],
        )
        .await;
    assert_eq!(hydra.spooled().len(), 2);
    a.silent.store(false, Ordering::SeqCst);
    let (code, out) = hydra.retry_once().await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("superseded"), "{out}");
    let got = a.got();
    let builds: Vec<u64> = got
        .iter()
        .map(|d| {
            serde_json::from_slice::<Value>(&d.2).unwrap()["build"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(builds.last(), Some(&8), "{builds:?}");
    assert!(!builds.contains(&6), "{builds:?}");

    // Delivering a newer build directly removes an older spooled one for that agent.
    a.silent.store(true, Ordering::SeqCst);
    hydra
        .notify(
            9,
            &["--url", &a.url, "--hand-back", "1s", "--spool", spool],
            &[],
        )
        .await;
    assert_eq!(hydra.spooled().iter().map(|s| s.1).collect::<Vec<_>>(), [9]);
    a.silent.store(false, Ordering::SeqCst);
    let (code, out, _) = hydra
        .notify(
            10,
            &["--url", &a.url, "--hand-back", "2s", "--spool", spool],
            &[],
        )
        .await;
    assert_eq!(code, 0, "{out}");
    assert!(hydra.spooled().is_empty(), "{:?}", hydra.spooled());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_spool_a_detached_retrier_delivers_later() {
    let hydra = Hydra::new();
    let a = agent(hydra.keys.clone(), true).await;
    let home = hydra.dir.path().join("home");
    std::fs::create_dir(&home).unwrap();
    let (code, out, _) = hydra
        .notify(
            7,
            &["--url", &a.url, "--hand-back", "1s", "--deadline", "2min"],
            &[("HOME", home.to_str().unwrap()), ("XDG_STATE_HOME", "")],
        )
        .await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("detached retrier"), "{out}");
    let spool = home.join(".local/state/nixos-hydra-upgrade/spool");
    assert!(spool.is_dir(), "{out}");
    let sent = a.got().len();
    a.silent.store(false, Ordering::SeqCst);
    let started = Instant::now();
    while a.got().iter().skip(sent).all(|d| !d.3) {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the detached retrier delivered nothing: {}",
            std::fs::read_to_string(spool.join("retry.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // It leaves nothing behind and exits once the spool is empty.
    let log = spool.join("retry.log");
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("retrier exits")
    {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "retrier still running"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let left: Vec<_> = std::fs::read_dir(&spool)
        .unwrap()
        .map(|f| f.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".json"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_notify_processes_share_one_spool_safely() {
    let hydra = Hydra::new();
    let a = agent(hydra.keys.clone(), true).await;
    let b = agent(hydra.keys.clone(), true).await;
    let spool = hydra.spool();
    let spool = spool.to_str().unwrap();
    let runs = (7..=12).map(|build| {
        let (a, b, hydra) = (a.url.as_str(), b.url.as_str(), &hydra);
        async move {
            hydra
                .notify(
                    build,
                    &[
                        "--url",
                        a,
                        "--url",
                        b,
                        "--hand-back",
                        "1s",
                        "--spool",
                        spool,
                    ],
                    &[],
                )
                .await
        }
    });
    for (code, out, _) in futures_util::future::join_all(runs).await {
        assert_eq!(code, 0, "{out}");
    }
    // Every file is a whole entry (no temp file left, none torn), and each agent's newest is there.
    let names: Vec<String> = std::fs::read_dir(hydra.spool())
        .unwrap()
        .map(|f| f.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.starts_with(".tmp")), "{names:?}");
    let spooled = hydra.spooled();
    for url in [&a.url, &b.url] {
        let newest = spooled.iter().filter(|s| &s.0 == url).map(|s| s.1).max();
        assert_eq!(newest, Some(12), "{spooled:?}");
    }
    // The retrier delivers only the newest to each.
    a.silent.store(false, Ordering::SeqCst);
    b.silent.store(false, Ordering::SeqCst);
    let (code, out) = hydra.retry_once().await;
    assert_eq!(code, 0, "{out}");
    for agent in [&a, &b] {
        let answered: Vec<u64> = agent
            .got()
            .iter()
            .map(|d| {
                serde_json::from_slice::<Value>(&d.2).unwrap()["build"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        assert_eq!(answered, [12], "only the newest is retried: {answered:?}");
    }
    assert!(hydra.spooled().is_empty());
}
