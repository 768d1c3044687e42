//! `fleet` over many agents: one row each, unreachable ones named (exit 1), agent text escaped,
//! 1,000 agents asked concurrently. The endpoints stand in for agents: they serve a fixed SPEC §4
//! status document each, after a delay that stands in for a network round trip.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::BIN;
use serde_json::{Value, json};

/// Starts one status endpoint per document, answering after `rtt`; their base URLs.
async fn agents(docs: Vec<Value>, rtt: Duration) -> Vec<String> {
    let mut urls = Vec::new();
    for doc in docs {
        let app = axum::Router::new().route(
            "/v1/status",
            axum::routing::get(move || {
                let doc = doc.clone();
                async move {
                    tokio::time::sleep(rtt).await;
                    axum::Json(doc)
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        urls.push(format!("http://{}", listener.local_addr().unwrap()));
        tokio::spawn(async move { axum::serve(listener, app).await });
    }
    urls
}

fn status(deployed: u64, phase: &str, outcome: &str) -> Value {
    json!({
        "phase": phase,
        "deployed": {"build": deployed, "path": "/nix/store/00000000000000000000000000000000-x",
                     "at": "2026-12-01T04:40:00Z"},
        "pending": null,
        "last_attempt": {"build": deployed, "source": "hydra", "outcome": outcome, "reboot": "none",
                         "error": null, "started_at": "2026-12-01T04:39:00Z",
                         "finished_at": "2026-12-01T04:40:00Z"},
        "reboot_needed": false,
        "history": [],
    })
}

async fn fleet(args: &[String]) -> (i32, String, Duration) {
    let started = Instant::now();
    let output = tokio::process::Command::new(BIN)
        .arg("fleet")
        .args(args)
        .output()
        .await
        .unwrap();
    let took = started.elapsed();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code().unwrap_or(-1), text, took)
}

fn closed_port() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://{}", l.local_addr().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_behind_unreachable_and_escaped() {
    let mut hostile = status(40, "idle", "upgraded");
    hostile["phase"] = json!("idle\u{1b}]0;pwned\u{7}");
    let mut waiting = status(38, "waiting", "upgraded");
    waiting["waiting"] = json!({"reason": "rollout", "agents": ["http://canary"]});
    waiting["pending"] = json!({"build": 41, "source": "hydra"});
    let urls = agents(
        vec![status(41, "idle", "upgraded"), waiting, hostile],
        Duration::ZERO,
    )
    .await;
    let down = closed_port();
    let mut args: Vec<String> = urls
        .iter()
        .flat_map(|u| ["--url".into(), u.clone()])
        .collect();
    args.extend(["--url".into(), down.clone()]);
    let (code, out, _) = fleet(&args).await;
    assert_eq!(code, 1, "an unreachable agent: exit 1\n{out}");
    assert!(out.contains(&format!("UNREACHABLE {down}")), "{out}");
    assert!(out.contains("waiting (rollout)"), "{out}");
    assert!(
        out.contains("3 of 4 agents answered; newest green build known: 41"),
        "{out}"
    );
    assert!(
        !out.contains('\u{1b}') && !out.contains('\u{7}'),
        "escaped: {out:?}"
    );

    // JSON: one object per agent; hosts file with comments.
    let dir = tempfile::tempdir().unwrap();
    let hosts = dir.path().join("hosts");
    std::fs::write(&hosts, format!("# web\n{}\n\n{}\n", urls[0], urls[1])).unwrap();
    let (code, out, _) = fleet(&[
        "--json".into(),
        "--hosts-file".into(),
        hosts.display().to_string(),
    ])
    .await;
    assert_eq!(code, 0, "{out}");
    let doc: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["newest_known"], 41);
    assert_eq!(doc["agents"][1]["behind"], 3);
    assert_eq!(doc["agents"][1]["waiting"], "rollout");
    assert_eq!(doc["agents"].as_array().unwrap().len(), 2);

    let (code, out, _) = fleet(&["--url".into(), "web1:9980".into()]).await;
    assert_eq!(code, 2, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_agents_concurrently() {
    const N: usize = 1000;
    const RTT: Duration = Duration::from_millis(50);
    let urls = agents(
        (0..N as u64)
            .map(|i| status(4000 + i % 7, "idle", "upgraded"))
            .collect(),
        RTT,
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let hosts = dir.path().join("hosts");
    std::fs::write(&hosts, urls.join("\n")).unwrap();
    // Baseline in this run: the same command for one agent (process start, one round trip).
    let mut baseline = Duration::MAX;
    for _ in 0..3 {
        let (code, out, took) = fleet(&["--url".into(), urls[0].clone()]).await;
        assert_eq!(code, 0, "{out}");
        baseline = baseline.min(took);
    }
    let mut took_all = Duration::MAX;
    for _ in 0..2 {
        let (code, out, took) = fleet(&["--hosts-file".into(), hosts.display().to_string()]).await;
        assert_eq!(code, 0, "{}", out.lines().last().unwrap_or_default());
        assert_eq!(out.lines().count(), N + 2, "header, one row each, summary");
        took_all = took_all.min(took);
    }
    println!(
        "fleet: {N} agents ({RTT:?} each) in {took_all:?}, one agent in {baseline:?} ({:.1}x); \
         asked one after another they would take {:?}",
        took_all.as_secs_f64() / baseline.as_secs_f64(),
        RTT * N as u32
    );
    // The 2 s holds for a release build (BENCHMARKS.md, bench/notify-fleet); this debug
    // build on a shared machine gets a generous bound, still a fifth of asking one at a time.
    assert!(
        took_all < RTT * N as u32 / 5,
        "{N} agents took {took_all:?} (one: {baseline:?})"
    );
}
