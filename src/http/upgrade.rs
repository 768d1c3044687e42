//! `POST /v1/upgrade`: size, then signature over the raw bytes, then replay, then the body.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};

use super::Api;
use super::answer::Answer;
use crate::config::MAX_BODY_BYTES;
use crate::intake::UpgradeRequest;
use crate::model::Source;
use crate::signature::Headers;

/// At most one warning per this interval sums up unauthenticated requests.
const UNAUTHENTICATED_WARN_EVERY: Duration = Duration::from_secs(10);
static UNAUTHENTICATED_SINCE_WARN: AtomicU64 = AtomicU64::new(0);
static LAST_UNAUTHENTICATED_WARN: Mutex<Option<Instant>> = Mutex::new(None);

pub async fn upgrade(State(agent): State<Arc<Api>>, headers: HeaderMap, body: Body) -> Response {
    let answer = answer(&agent, &headers, body).await;
    agent.metrics.notification(answer.label());
    match &answer {
        Answer::Queued(_) | Answer::Current { .. } | Answer::Duplicate | Answer::Ignored(_) => {
            tracing::info!(status = answer.label(), answer = ?answer, "upgrade request answered")
        }
        Answer::Unauthorized(_) | Answer::Invalid(_) | Answer::TooLarge => {
            log_unauthenticated(&answer)
        }
        _ => tracing::warn!(status = answer.label(), answer = ?answer, "upgrade request refused"),
    }
    answer.into_response()
}

/// A flood is made of unauthenticated requests: a line each would cost more than refusing them,
/// so each is logged at debug and a warning sums them up at most every 10 s (metrics count all).
fn log_unauthenticated(answer: &Answer) {
    tracing::debug!(status = answer.label(), answer = ?answer, "upgrade request refused");
    let count = UNAUTHENTICATED_SINCE_WARN.fetch_add(1, Ordering::Relaxed) + 1;
    let now = Instant::now();
    let mut last = LAST_UNAUTHENTICATED_WARN
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if last.is_none_or(|t| now.duration_since(t) >= UNAUTHENTICATED_WARN_EVERY) {
        *last = Some(now);
        UNAUTHENTICATED_SINCE_WARN.fetch_sub(count, Ordering::Relaxed);
        tracing::warn!(count, latest = ?answer, "unauthenticated upgrade requests refused");
    }
}

async fn answer(agent: &Api, headers: &HeaderMap, body: Body) -> Answer {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Answer::TooLarge;
    }
    let Some(keys) = &agent.keys else {
        return Answer::Unauthorized("this agent has no secret_file and accepts no pushes".into());
    };
    let Ok(bytes) = axum::body::to_bytes(body, MAX_BODY_BYTES).await else {
        return Answer::TooLarge;
    };
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let signed = Headers {
        id: text("webhook-id"),
        timestamp: text("webhook-timestamp"),
        signature: text("webhook-signature"),
    };
    let now = jiff::Timestamp::now().as_second();
    let tolerance = agent.signature_tolerance.as_secs();
    if let Err(e) = keys.verify(&signed, &bytes, now, tolerance) {
        return Answer::Unauthorized(e.to_string());
    }
    let id = signed.id.unwrap_or_default();
    if agent.replay.seen(id) {
        return Answer::Duplicate;
    }
    let answer = match parse_body(&bytes) {
        Err(reason) => Answer::Invalid(reason),
        Ok(Parsed::Ignore(reason)) => Answer::Ignored(reason),
        Ok(Parsed::Request(request)) => agent.intake.intake(request).await.into(),
    };
    if answer.status().is_success() {
        agent.replay.remember(id, now);
    }
    answer
}

#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    Request(UpgradeRequest),
    Ignore(String),
}

/// A RunCommand payload (it has `event`) or a manual `{"build": N, "force": true}` body.
pub fn parse_body(bytes: &[u8]) -> Result<Parsed, String> {
    let value: Value =
        serde_json::from_slice(bytes).map_err(|e| format!("body is not JSON: {e}"))?;
    let Value::Object(object) = value else {
        return Err("body is not a JSON object".into());
    };
    if object.contains_key("event") {
        runcommand(&object)
    } else {
        manual(&object)
    }
}

fn runcommand(object: &Map<String, Value>) -> Result<Parsed, String> {
    let build = build_id(object.get("build"))?.ok_or("RunCommand payload without build")?;
    let event = object
        .get("event")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if event != "buildFinished" {
        return Ok(Parsed::Ignore(format!(
            "event {event:?} is not buildFinished"
        )));
    }
    let finished = match object.get("finished") {
        Some(Value::Bool(b)) => *b,
        Some(Value::Number(n)) => n.as_i64() == Some(1),
        _ => false,
    };
    if !finished {
        return Ok(Parsed::Ignore(format!("build {build} is not finished")));
    }
    match object.get("buildStatus").and_then(Value::as_i64) {
        Some(0) => Ok(Parsed::Request(UpgradeRequest {
            build: Some(build),
            force: false,
            source: Source::Hydra,
        })),
        status => Ok(Parsed::Ignore(format!(
            "build {build} failed (buildStatus {})",
            status.map_or("null".into(), |s| s.to_string())
        ))),
    }
}

fn manual(object: &Map<String, Value>) -> Result<Parsed, String> {
    if let Some(unknown) = object
        .keys()
        .find(|k| !matches!(k.as_str(), "build" | "force"))
    {
        return Err(format!(
            "unknown field {unknown:?}; a manual request has only build and force"
        ));
    }
    let force = match object.get("force") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err("force must be true or false".into()),
    };
    Ok(Parsed::Request(UpgradeRequest {
        build: build_id(object.get("build"))?,
        force,
        source: Source::Manual,
    }))
}

fn build_id(value: Option<&Value>) -> Result<Option<u64>, String> {
    match value {
        None => Ok(None),
        Some(v) => v
            .as_u64()
            .filter(|&n| n > 0)
            .map(Some)
            .ok_or_else(|| format!("build must be a positive integer, got {v}")),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn request(build: Option<u64>, force: bool, source: Source) -> Result<Parsed, String> {
        Ok(Parsed::Request(UpgradeRequest {
            build,
            force,
            source,
        }))
    }

    #[test]
    fn body_table() {
        let ok = |b: &str| parse_body(b.as_bytes());
        assert_eq!(ok("{}"), request(None, false, Source::Manual));
        assert_eq!(
            ok(r#"{"build": 7}"#),
            request(Some(7), false, Source::Manual)
        );
        assert_eq!(
            ok(r#"{"build": 7, "force": true}"#),
            request(Some(7), true, Source::Manual)
        );
        assert_eq!(
            ok(r#"{"force": true}"#),
            request(None, true, Source::Manual)
        );
        let hydra = r#"{"event":"buildFinished","build":4821,"finished":true,"buildStatus":0,"job":"web1","outputs":[]}"#;
        assert_eq!(ok(hydra), request(Some(4821), false, Source::Hydra));
        let failed = r#"{"event":"buildFinished","build":4821,"finished":true,"buildStatus":1}"#;
        assert!(matches!(ok(failed), Ok(Parsed::Ignore(r)) if r.contains("buildStatus 1")));
        let unfinished =
            r#"{"event":"buildFinished","build":4821,"finished":false,"buildStatus":0}"#;
        assert!(matches!(ok(unfinished), Ok(Parsed::Ignore(_))));
        let null_status =
            r#"{"event":"buildFinished","build":4821,"finished":true,"buildStatus":null}"#;
        assert!(matches!(ok(null_status), Ok(Parsed::Ignore(_))));
        let other_event = r#"{"event":"buildStarted","build":4821}"#;
        assert!(matches!(ok(other_event), Ok(Parsed::Ignore(_))));
        for invalid in [
            "",
            "[]",
            "7",
            "null",
            "{",
            r#"{"build": 0}"#,
            r#"{"build": -1}"#,
            r#"{"build": 1.5}"#,
            r#"{"build": "7"}"#,
            r#"{"build": 7, "path": "/nix/store/x"}"#,
            r#"{"force": "yes"}"#,
            r#"{"event":"buildFinished","build":"x","buildStatus":0}"#,
            r#"{"event":"buildFinished"}"#,
        ] {
            assert!(ok(invalid).is_err(), "{invalid:?}");
        }
    }
}
