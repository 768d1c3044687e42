//! Benchmark baseline (`bench/run`): a bare axum handler answering 200 to `POST /v1/upgrade`,
//! built from the agent's own stack (same axum/hyper/tokio versions, same release profile, same
//! one-worker runtime; `WORKERS=N` to compare), so the reject-throughput figure compares like with like.
//!
//! `cargo run --release --example bench_baseline -- 127.0.0.1:PORT` — loopback only; it exits by
//! itself after `SECONDS` (second argument, default 120).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use axum::Router;
use axum::routing::post;

fn main() {
    let mut args = std::env::args().skip(1);
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:9981".into());
    let seconds: u64 = args.next().map_or(120, |s| s.parse().unwrap());
    let address: std::net::SocketAddr = listen.parse().unwrap();
    assert!(address.ip().is_loopback(), "loopback only");
    // The same runtime shape as `nixos-hydra-upgrade serve` (src/commands.rs); `WORKERS` overrides.
    let workers = std::env::var("WORKERS").map_or(1, |w| w.parse().unwrap());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let app = Router::new().route("/v1/upgrade", post(|| async { "ok" }));
        let listener = tokio::net::TcpListener::bind(address).await.unwrap();
        let serve = axum::serve(listener, app);
        let _ = tokio::time::timeout(Duration::from_secs(seconds), serve).await;
    });
}
