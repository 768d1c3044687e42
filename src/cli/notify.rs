//! The Hydra-side sender: reads a RunCommand payload and delivers it unchanged, signed, to every
//! agent concerned, under a hard deadline so hydra-notify never stalls.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::cli::client::{Endpoint, request};
use crate::config::MAX_BODY_BYTES;
use crate::signature::{Keys, generate_id};

/// First wait between retries of one delivery; doubles each time.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(8);
/// One HTTP exchange never takes longer than this: more than the agent's own request timeout
/// (30 s), so the agent's answer (a 503 at worst) arrives before the sender gives up.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(35);
const _: () = assert!(ATTEMPT_TIMEOUT.as_secs() > crate::model::REQUEST_TIMEOUT.as_secs());

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// Exit 2.
    #[error("usage: {0}")]
    Usage(String),
    /// Exit 1.
    #[error("{0}")]
    Failed(String),
}

pub struct NotifyOptions {
    pub urls: Vec<String>,
    /// `JOB=URL`: deliver only payloads of that job.
    pub routes: Vec<String>,
    pub secret_file: PathBuf,
    /// Default: `$HYDRA_JSON`.
    pub hydra_json: Option<PathBuf>,
    pub deadline: Duration,
}

/// What happened, one line per target, and whether all went well.
pub struct Report {
    pub lines: Vec<String>,
    pub all_delivered: bool,
}

pub async fn notify(options: NotifyOptions) -> Result<Report, NotifyError> {
    let started = Instant::now();
    let mut targets = options
        .urls
        .iter()
        .map(|u| Endpoint::parse(u).map(|e| (None, e)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(NotifyError::Usage)?;
    for route in &options.routes {
        let (job, url) = route
            .split_once('=')
            .filter(|(job, _)| !job.is_empty())
            .ok_or_else(|| NotifyError::Usage(format!("--route {route:?} is not JOB=URL")))?;
        targets.push((
            Some(job.to_owned()),
            Endpoint::parse(url).map_err(NotifyError::Usage)?,
        ));
    }
    if targets.is_empty() {
        return Err(NotifyError::Usage(
            "give at least one --url or --route".into(),
        ));
    }
    let payload_path = match options.hydra_json {
        Some(path) => path,
        None => std::env::var_os("HYDRA_JSON")
            .map(PathBuf::from)
            .ok_or_else(|| {
                NotifyError::Usage("no --hydra-json and HYDRA_JSON is not set".into())
            })?,
    };
    let body = read_payload(&payload_path)?;
    let payload: Value = serde_json::from_slice(&body)
        .map_err(|e| NotifyError::Failed(format!("{}: not JSON: {e}", payload_path.display())))?;
    if let Some(reason) = nothing_to_do(&payload) {
        return Ok(Report {
            lines: vec![format!("nothing to do: {reason}")],
            all_delivered: true,
        });
    }
    let job = payload
        .get("job")
        .and_then(Value::as_str)
        .unwrap_or_default();
    targets.retain(|(route_job, _)| route_job.as_deref().is_none_or(|j| j == job));
    if targets.is_empty() {
        return Ok(Report {
            lines: vec![format!(
                "nothing to do: no --url, and no --route for job {job:?}"
            )],
            all_delivered: true,
        });
    }
    let keys = Keys::load(&options.secret_file).map_err(|e| NotifyError::Failed(e.to_string()))?;
    let id = generate_id();
    let deadline = started + options.deadline;
    let deliveries = targets
        .iter()
        .map(|(_, endpoint)| deliver(endpoint, &keys, &id, &body, deadline));
    let results = futures_util::future::join_all(deliveries).await;
    let all_delivered = results.iter().all(Result::is_ok);
    let lines = results
        .into_iter()
        .map(|r| r.unwrap_or_else(|failed| failed))
        .collect();
    Ok(Report {
        lines,
        all_delivered,
    })
}

fn read_payload(path: &Path) -> Result<Vec<u8>, NotifyError> {
    use std::io::Read;
    let file = std::fs::File::open(path)
        .map_err(|e| NotifyError::Failed(format!("cannot read {}: {e}", path.display())))?;
    let mut body = Vec::new();
    file.take(MAX_BODY_BYTES as u64 + 1)
        .read_to_end(&mut body)
        .map_err(|e| NotifyError::Failed(format!("cannot read {}: {e}", path.display())))?;
    if body.len() > MAX_BODY_BYTES {
        return Err(NotifyError::Failed(format!(
            "{}: payload over {MAX_BODY_BYTES} bytes, more than an agent accepts",
            path.display()
        )));
    }
    Ok(body)
}

/// Only finished, successful builds are worth a notification.
fn nothing_to_do(payload: &Value) -> Option<String> {
    let event = payload
        .get("event")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if event != "buildFinished" {
        return Some(format!("event {event:?} is not buildFinished"));
    }
    let build = payload
        .get("build")
        .and_then(Value::as_u64)
        .unwrap_or_default();
    match payload.get("buildStatus").and_then(Value::as_i64) {
        Some(0) => None,
        Some(status) => Some(format!("build {build} has buildStatus {status}")),
        None => Some(format!("build {build} has no buildStatus")),
    }
}

/// Delivers to one agent, retrying transient failures with the same id until `deadline`.
async fn deliver(
    endpoint: &Endpoint,
    keys: &Keys,
    id: &str,
    body: &[u8],
    deadline: Instant,
) -> Result<String, String> {
    let url = endpoint.describe("/v1/upgrade");
    let mut backoff = FIRST_BACKOFF;
    let mut tries = 0u32;
    loop {
        tries += 1;
        let remaining = deadline.saturating_duration_since(Instant::now());
        // Signed afresh each try: same id, current timestamp.
        let headers = keys.headers(id, body);
        let timeout = remaining.min(ATTEMPT_TIMEOUT).max(Duration::from_millis(1));
        let result = request(
            endpoint,
            reqwest::Method::POST,
            "/v1/upgrade",
            &headers,
            Some(body.to_vec()),
            timeout,
        )
        .await;
        let (retry, line) = match result {
            Ok(answer) if (200..300).contains(&answer.status) => {
                return Ok(format!(
                    "{url}: {} {}",
                    answer.status,
                    summary(&answer.body)
                ));
            }
            Ok(answer) => (
                matches!(answer.status, 408 | 429 | 500..=599),
                format!("{url}: {} {}", answer.status, summary(&answer.body)),
            ),
            Err(e) => (true, e),
        };
        let wait = backoff.min(deadline.saturating_duration_since(Instant::now()));
        if !retry || wait < backoff {
            return Err(format!("FAILED after {tries} tries: {line}"));
        }
        tokio::time::sleep(wait).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// `queued build 4821`, or the answer's reason, in one short line.
pub fn summary(body: &[u8]) -> String {
    let Ok(answer) = serde_json::from_slice::<Value>(body) else {
        return String::from_utf8_lossy(body).chars().take(200).collect();
    };
    let field = |k: &str| {
        answer
            .get(k)
            .map(|v| v.as_str().map_or(v.to_string(), str::to_owned))
    };
    let mut text = field("status").unwrap_or_default();
    if let Some(build) = field("build") {
        text = format!("{text} build {build}");
    }
    if let Some(reason) = field("reason") {
        text = format!("{text}: {reason}");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn filters_what_is_not_a_success() {
        assert_eq!(
            nothing_to_do(&json!({"event":"buildFinished","build":1,"buildStatus":0})),
            None
        );
        assert!(
            nothing_to_do(&json!({"event":"buildFinished","build":1,"buildStatus":2})).is_some()
        );
        assert!(
            nothing_to_do(&json!({"event":"buildFinished","build":1,"buildStatus":null})).is_some()
        );
        assert!(nothing_to_do(&json!({"event":"buildQueued","build":1,"buildStatus":0})).is_some());
    }

    #[test]
    fn summaries() {
        assert_eq!(
            summary(br#"{"status":"queued","build":4821,"path":"/nix/store/x"}"#),
            "queued build 4821"
        );
        assert_eq!(
            summary(br#"{"status":"refused","reason":"older"}"#),
            "refused: older"
        );
        assert_eq!(summary(b"<html>"), "<html>");
    }
}
