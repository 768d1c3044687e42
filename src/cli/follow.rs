//! `trigger --wait`: follows the attempt for the triggered build through `/v1/status`, printing
//! each phase, until it ends (exit 0 on `upgraded`/`current`/`dry-run`, 1 otherwise) or the
//! timeout.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::cli::client::{Endpoint, request};

const POLL: Duration = Duration::from_millis(500);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FollowError {
    #[error("{0}")]
    Status(String),
    #[error("{url}: status is not JSON: {message}")]
    NotJson { url: String, message: String },
}

/// What one status snapshot says about the followed build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// Waiting in the queue.
    Queued,
    /// The worker runs it, in this phase.
    Running(String),
    /// Its attempt ended.
    Done {
        outcome: String,
        error: Option<String>,
    },
    /// Neither queued, running, nor recorded: a newer request replaced it.
    Gone,
}

/// Reads `status` for `build`; `baseline` is the newest attempt before the trigger (or null).
pub fn observe(status: &Value, build: u64, baseline: &Value) -> Progress {
    let empty = Vec::new();
    let history = status["history"].as_array().unwrap_or(&empty);
    let newer = history.iter().take_while(|a| *a != baseline);
    if let Some(attempt) = newer.into_iter().find(|a| a["build"] == build) {
        return Progress::Done {
            outcome: attempt["outcome"].as_str().unwrap_or("?").to_owned(),
            error: attempt["error"].as_str().map(str::to_owned),
        };
    }
    if status["running"]["build"] == build {
        let phase = status["phase"].as_str().unwrap_or("?");
        // A wait says what for, so a gate that changes shows as a new line.
        if let Some(detail) = status["waiting"]["detail"].as_str() {
            return Progress::Running(format!("{phase}: {detail}"));
        }
        return Progress::Running(phase.to_owned());
    }
    if status["pending"]["build"] == build {
        return Progress::Queued;
    }
    Progress::Gone
}

/// GET /v1/status as JSON.
pub async fn fetch_status(endpoint: &Endpoint) -> Result<Value, FollowError> {
    let url = endpoint.describe("/v1/status");
    let answer = request(
        endpoint,
        reqwest::Method::GET,
        "/v1/status",
        &[],
        None,
        REQUEST_TIMEOUT,
    )
    .await
    .map_err(FollowError::Status)?;
    if answer.status != 200 {
        return Err(FollowError::Status(format!(
            "{url}: answered {}",
            answer.status
        )));
    }
    serde_json::from_slice(&answer.body).map_err(|e| FollowError::NotJson {
        url,
        message: e.to_string(),
    })
}

/// The newest attempt now, to tell later attempts from it.
pub async fn baseline(endpoint: &Endpoint) -> Result<Value, FollowError> {
    Ok(fetch_status(endpoint).await?["last_attempt"].clone())
}

/// Follows the build the agent answered with; the exit code.
pub async fn follow(
    endpoint: &Endpoint,
    answer: &Value,
    baseline: &Value,
    timeout: Duration,
) -> u8 {
    let Some(build) = answer["build"].as_u64() else {
        println!(
            "nothing to wait for ({})",
            answer["status"].as_str().unwrap_or("?")
        );
        return 0;
    };
    let started = Instant::now();
    let mut last: Option<Progress> = None;
    let mut gone_twice = false;
    loop {
        let progress = match fetch_status(endpoint).await {
            Ok(status) => {
                if answer["status"] == "current" && status["deployed"]["build"] == build {
                    println!("build {build}: already deployed");
                    return 0;
                }
                observe(&status, build, baseline)
            }
            Err(e) => {
                eprintln!("nixos-hydra-upgrade: {e}");
                return 1;
            }
        };
        match &progress {
            Progress::Done { outcome, error } => {
                let took =
                    humantime::format_duration(Duration::from_secs(started.elapsed().as_secs()));
                println!("build {build}: {outcome} (followed for {took})");
                if let Some(error) = error {
                    println!("build {build}: error: {error}");
                }
                // A dry-run agent's success is a dry run.
                return if matches!(outcome.as_str(), "upgraded" | "current" | "dry-run") {
                    0
                } else {
                    1
                };
            }
            // The worker records the attempt before it frees the queue, but a status read can
            // fall between the two: only a second look that still finds nothing counts.
            Progress::Gone if gone_twice => {
                println!("build {build}: replaced by a newer request before it ran");
                return 1;
            }
            Progress::Gone => gone_twice = true,
            _ => gone_twice = false,
        }
        if last.as_ref() != Some(&progress) {
            match &progress {
                Progress::Queued => println!("build {build}: queued"),
                Progress::Running(phase) => println!("build {build}: {phase}"),
                _ => {}
            }
            last = Some(progress);
        }
        if started.elapsed() >= timeout {
            println!(
                "build {build}: still not done after {}; stopped waiting (the attempt goes on)",
                humantime::format_duration(timeout)
            );
            return 1;
        }
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tells_queued_running_done_and_gone() {
        let old = json!({"build": 5, "outcome": "upgraded", "started_at": "a"});
        let queued = json!({"pending": {"build": 7}, "running": null, "history": [old]});
        assert_eq!(observe(&queued, 7, &old), Progress::Queued);
        let running = json!({"phase": "activating", "running": {"build": 7}, "history": [old]});
        assert_eq!(
            observe(&running, 7, &old),
            Progress::Running("activating".into())
        );
        let waiting = json!({"phase": "waiting", "running": {"build": 7}, "history": [old],
            "waiting": {"reason": "window", "detail": "outside the activation window 02:00–04:00"}});
        assert_eq!(
            observe(&waiting, 7, &old),
            Progress::Running("waiting: outside the activation window 02:00–04:00".into())
        );
        let done = json!({"history": [
            {"build": 8, "outcome": "upgraded"},
            {"build": 7, "outcome": "failed", "error": "boom"}, old]});
        assert_eq!(
            observe(&done, 7, &old),
            Progress::Done {
                outcome: "failed".into(),
                error: Some("boom".into())
            }
        );
        // An attempt for the same build before the trigger does not count.
        let before = json!({"history": [{"build": 7, "outcome": "failed"}]});
        assert_eq!(observe(&before, 7, &before["history"][0]), Progress::Gone);
        assert_eq!(
            observe(
                &json!({"history": [{"build": 7, "outcome": "current"}]}),
                7,
                &Value::Null
            ),
            Progress::Done {
                outcome: "current".into(),
                error: None
            }
        );
    }
}
