//! `GET /v1/status`, `GET /healthz` and `GET /metrics`: what the agent is doing and has done.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use serde_json::Value;

use super::Api;

pub async fn status(State(api): State<Arc<Api>>) -> Json<Value> {
    Json(api.status.snapshot())
}

pub async fn healthz() -> &'static str {
    "ok"
}

pub async fn metrics(State(api): State<Arc<Api>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        api.status.metrics(&api.metrics),
    )
}
