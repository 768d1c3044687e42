//! `GET /v1/status`, `GET /healthz` and `GET /metrics`: what the agent is doing and has done.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use serde_json::{Value, json};

use crate::app::Agent;
use crate::upgrade::{Phase, resolve_link};

/// The worker's phase, or `verifying` while it idles and Hydra is being asked.
pub fn phase(agent: &Agent) -> (Phase, jiff::Timestamp) {
    let (phase, since) = agent.phase.get();
    if phase == Phase::Idle && agent.verifying.load(Ordering::SeqCst) > 0 {
        return (Phase::Verifying, since);
    }
    (phase, since)
}

/// The status document of SPEC §4.
pub fn snapshot(agent: &Agent) -> Value {
    let state = agent.store.snapshot();
    let (phase, since) = phase(agent);
    let current_system =
        resolve_link(&agent.settings.system.current_system).map(|p| p.display().to_string());
    let job = |j: crate::queue::Job| json!({ "build": j.target.build, "source": j.source, "path": j.target.path, "since": j.received_at });
    json!({
        "phase": phase,
        "phase_since": since,
        "current_system": current_system,
        "deployed": state.deployed,
        "running": agent.queue.running().map(job),
        "pending": agent.queue.pending().map(job),
        "last_attempt": state.history.front(),
        "next_poll": agent.next_poll(),
        "last_poll": state.last_poll,
        "hydra": agent.settings.hydra_instance,
        "history": state.history,
    })
}

pub async fn status(State(agent): State<Arc<Agent>>) -> Json<Value> {
    Json(snapshot(&agent))
}

pub async fn healthz() -> &'static str {
    "ok"
}

pub async fn metrics(State(agent): State<Arc<Agent>>) -> impl IntoResponse {
    let state = agent.store.snapshot();
    let pending = agent.queue.pending().map(|j| j.target.build);
    let text = agent
        .metrics
        .render(&state, phase(&agent).0, pending, agent.queue.depth());
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
}
