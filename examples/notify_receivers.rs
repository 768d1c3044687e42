//! Minimal agents for bench/notify-fleet: N listeners on 127.0.0.1 that accept `POST /v1/upgrade`
//! and check its Standard Webhooks signature the way an agent does; every Kth one is silent
//! (accepts, reads, never answers) until SIGUSR1. SIGUSR2 writes the counts to the stats file.
//! `GET /v1/status` answers a fixed idle status, for timing `fleet`.
//!
//!   notify_receivers COUNT SILENT_EVERY SECRET_FILE URLS_FILE STATS_FILE
//!
//! SILENT_EVERY 0 = none silent. Exits on SIGTERM, or after 10 minutes whatever happens.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use nixos_hydra_upgrade::signature::{Headers, Keys};
use tokio::signal::unix::{SignalKind, signal};

#[derive(Default)]
struct Counts {
    valid: AtomicU64,
    invalid: AtomicU64,
    /// Receivers that got at least one validly signed delivery.
    distinct: AtomicU64,
    distinct_silent: AtomicU64,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    assert_eq!(
        args.len(),
        6,
        "usage: {}",
        "COUNT SILENT_EVERY SECRET_FILE URLS_FILE STATS_FILE"
    );
    let count: usize = args[1].parse().unwrap();
    let silent_every: usize = args[2].parse().unwrap();
    let keys = Keys::load(std::path::Path::new(&args[3])).unwrap();
    let (urls_file, stats_file) = (args[4].clone(), args[5].clone());
    let counts = Arc::new(Counts::default());
    let (release, released) = tokio::sync::watch::channel(false);
    let mut urls = Vec::with_capacity(count);
    for n in 0..count {
        let silent = silent_every > 0 && n % silent_every == 0;
        let seen = Arc::new(AtomicBool::new(false));
        let (keys, counts, released) = (keys.clone(), counts.clone(), released.clone());
        let app = axum::Router::new().route(
            "/v1/upgrade",
            axum::routing::post(move |headers: HeaderMap, body: Bytes| {
                let (keys, counts, seen, released) =
                    (keys.clone(), counts.clone(), seen.clone(), released.clone());
                async move {
                    if silent && !*released.borrow() {
                        // Accepted and read, never answered; requests after SIGUSR1 are.
                        std::future::pending::<()>().await;
                    }
                    let text = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
                    let signed = Headers {
                        id: text("webhook-id"),
                        timestamp: text("webhook-timestamp"),
                        signature: text("webhook-signature"),
                    };
                    let now = jiff::Timestamp::now().as_second();
                    if keys.verify(&signed, &body, now, 300).is_err() {
                        counts.invalid.fetch_add(1, Ordering::Relaxed);
                        return (StatusCode::UNAUTHORIZED, r#"{"status":"unauthorized"}"#);
                    }
                    counts.valid.fetch_add(1, Ordering::Relaxed);
                    if !seen.swap(true, Ordering::Relaxed) {
                        counts.distinct.fetch_add(1, Ordering::Relaxed);
                        if silent {
                            counts.distinct_silent.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    (StatusCode::ACCEPTED, r#"{"status":"queued"}"#)
                }
            }),
        );
        let app = app.route(
            "/v1/status",
            axum::routing::get(|| async {
                axum::Json(serde_json::json!({
                    "phase": "idle",
                    "deployed": {"build": 4821, "path": "/nix/store/00000000000000000000000000000000-x",
                                 "at": "2026-12-01T04:40:00Z"},
                    "last_attempt": {"build": 4821, "source": "hydra", "outcome": "upgraded",
                                     "reboot": "none"},
                    "reboot_needed": false, "history": []
                }))
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        urls.push(format!("http://{}", listener.local_addr().unwrap()));
        tokio::spawn(async move { axum::serve(listener, app).await });
    }
    std::fs::write(&urls_file, urls.join("\n") + "\n").unwrap();
    println!("ready {count}");
    let mut usr1 = signal(SignalKind::user_defined1()).unwrap();
    let mut usr2 = signal(SignalKind::user_defined2()).unwrap();
    let mut term = signal(SignalKind::terminate()).unwrap();
    let lifetime = tokio::time::sleep(Duration::from_secs(600));
    tokio::pin!(lifetime);
    loop {
        tokio::select! {
            _ = usr1.recv() => { let _ = release.send(true); }
            _ = usr2.recv() => {
                let stats = format!(
                    "{{\"valid\":{},\"invalid\":{},\"distinct\":{},\"distinct_silent\":{}}}\n",
                    counts.valid.load(Ordering::Relaxed),
                    counts.invalid.load(Ordering::Relaxed),
                    counts.distinct.load(Ordering::Relaxed),
                    counts.distinct_silent.load(Ordering::Relaxed),
                );
                let temp = format!("{stats_file}.tmp");
                std::fs::write(&temp, stats).unwrap();
                std::fs::rename(&temp, &stats_file).unwrap();
            }
            _ = term.recv() => return,
            () = &mut lifetime => return,
        }
    }
}
