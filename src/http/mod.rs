//! The HTTP API: routes, limits, and serving on TCP or a unix socket until shutdown.

pub mod answer;
pub mod serve;
pub mod status;
pub mod upgrade;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use tokio_util::sync::CancellationToken;

use crate::intake::RequestIntake;
use crate::metrics::Metrics;
use crate::replay::ReplayGuard;
use crate::signature::Keys;
use crate::status::StatusView;

/// What the HTTP API is handed by the composition root.
pub struct Api {
    /// None: no `secret_file`, every push is refused.
    pub keys: Option<Keys>,
    pub signature_tolerance: Duration,
    pub replay: ReplayGuard,
    pub intake: Arc<RequestIntake>,
    pub metrics: Arc<Metrics>,
    pub status: Arc<StatusView>,
}

/// Requests in flight at once; more wait for a slot.
const MAX_IN_FLIGHT: usize = 256;
/// A request that takes longer is answered 408 (slow clients, stalled Hydra).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

pub fn router(api: Arc<Api>) -> Router {
    Router::new()
        .route("/v1/upgrade", post(upgrade::upgrade))
        .route("/v1/status", get(status::status))
        .route("/healthz", get(status::healthz))
        .route("/metrics", get(status::metrics))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
        .layer(tower::limit::ConcurrencyLimitLayer::new(MAX_IN_FLIGHT))
        .with_state(api)
}

/// A bound listener, TCP or unix.
pub enum Listener {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener),
}

impl Listener {
    pub fn describe(&self) -> String {
        match self {
            Listener::Tcp(l) => l.local_addr().map_or("tcp".into(), |a| a.to_string()),
            Listener::Unix(l) => l
                .local_addr()
                .ok()
                .and_then(|a| a.as_pathname().map(|p| format!("unix:{}", p.display())))
                .unwrap_or_else(|| "unix".into()),
        }
    }
}

/// Serves until `shutdown` with bounded connections and header limits (see `serve.rs`).
pub async fn serve(
    listener: Listener,
    app: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    serve::run(listener, app, shutdown).await
}
