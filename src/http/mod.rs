//! The HTTP API: routes, limits, and serving on TCP or a unix socket until shutdown.

pub mod admission;
pub mod answer;
pub mod listen;
pub mod serve;
pub mod status;
pub mod upgrade;
pub mod write_deadline;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::sync::Semaphore;
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

/// Requests in flight at once; more wait for a slot (inside their request timeout).
const MAX_IN_FLIGHT: usize = 256;
pub use crate::model::REQUEST_TIMEOUT;
/// All of intake's questions to Hydra together; less than the request timeout, so a slow Hydra
/// is answered with its own reason rather than the generic timeout.
pub const INTAKE_BUDGET: Duration = Duration::from_secs(25);
const _: () = assert!(INTAKE_BUDGET.as_secs() < REQUEST_TIMEOUT.as_secs());

pub fn router(api: Arc<Api>) -> Router {
    let limits = Arc::new(Limits {
        slots: Semaphore::new(MAX_IN_FLIGHT),
        metrics: api.metrics.clone(),
    });
    Router::new()
        .route("/v1/upgrade", post(upgrade::upgrade))
        .route("/v1/status", get(status::status))
        .route("/healthz", get(status::healthz))
        .route("/metrics", get(status::metrics))
        .layer(axum::middleware::from_fn_with_state(limits, bounded))
        .with_state(api)
}

struct Limits {
    slots: Semaphore,
    metrics: Arc<Metrics>,
}

/// A slot, then the route, all within `REQUEST_TIMEOUT`; a timeout is a SPEC §4 answer too.
async fn bounded(State(limits): State<Arc<Limits>>, request: Request, next: Next) -> Response {
    let upgrade = request.uri().path() == "/v1/upgrade";
    let served = async {
        let _slot = limits.slots.acquire().await.ok();
        next.run(request).await
    };
    match tokio::time::timeout(REQUEST_TIMEOUT, served).await {
        Ok(response) => response,
        Err(_) => {
            let answer = answer::Answer::TimedOut(format!(
                "not answered within {} s (busy, or a slow client or Hydra); try again",
                REQUEST_TIMEOUT.as_secs()
            ));
            if upgrade {
                limits.metrics.notification(answer.label(), answer.cause());
            }
            tracing::debug!(upgrade, "request timed out");
            answer.into_response()
        }
    }
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
