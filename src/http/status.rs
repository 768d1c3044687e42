//! `GET /v1/status`, `GET /healthz` and `GET /metrics`: what the agent is doing and has done.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use serde_json::{Value, json};

use crate::app::Agent;
use crate::metrics::Scrape;
use crate::model::Phase;
use crate::upgrade::resolve_link;

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
    let elapsed = (jiff::Timestamp::now().as_second() - since.as_second()).max(0);
    let job = |j: crate::model::Job| json!({ "build": j.target.build, "source": j.source, "path": j.target.path, "since": j.received_at });
    json!({
        "phase": phase,
        "phase_since": since,
        "phase_elapsed_seconds": elapsed,
        "current_system": current_system,
        "deployed": state.deployed,
        "running": agent.queue.running().map(job),
        "pending": agent.queue.pending().map(job),
        "last_attempt": state.history.front(),
        "next_poll": agent.next_poll(),
        "last_poll": state.last_poll,
        "hydra": agent.settings.hydra_instance,
        "reboot_needed": reboot_needed(agent),
        "reboot_needed_because": Some(reboot_need(agent).why()).filter(|w| !w.is_empty()),
        "waiting": agent.waiting.get(),
        "fetch": agent.fetch.get(),
        "history": state.history,
    })
}

pub async fn status(State(agent): State<Arc<Agent>>) -> Json<Value> {
    Json(snapshot(&agent))
}

pub async fn healthz() -> &'static str {
    "ok"
}

/// Whether the installed system boots another kernel, initrd or modules than the running one, or
/// was installed for the next boot because switch inhibitors changed.
fn reboot_needed(agent: &Agent) -> bool {
    reboot_need(agent).needed()
}

fn reboot_need(agent: &Agent) -> crate::upgrade::reboot::RebootNeed {
    crate::upgrade::reboot::RebootNeed::of_host(&agent.settings.system)
}

pub async fn metrics(State(agent): State<Arc<Agent>>) -> impl IntoResponse {
    let state = agent.store.snapshot();
    let (phase, since) = phase(&agent);
    let elapsed = jiff::Timestamp::now().duration_since(since);
    let scrape = Scrape {
        state: &state,
        phase,
        phase_elapsed: std::time::Duration::try_from(elapsed).unwrap_or_default(),
        pending: agent.queue.pending().map(|j| j.target.build),
        depth: agent.queue.depth(),
        boot_files_differ: reboot_needed(&agent),
        waiting: agent.waiting.get().map(|w| w.what.reason()),
        next_poll: agent
            .next_poll()
            .and_then(|t| t.parse::<jiff::Timestamp>().ok())
            .map(|t| t.as_second()),
    };
    let text = agent.metrics.render(&scrape);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
}
