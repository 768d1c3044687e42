//! `status --follow`: after the status, one line per change (phase, waiting, queue, finished
//! attempt) read from `/v1/status` until interrupted.

use std::time::Duration;

use serde_json::Value;

use crate::cli::client::Endpoint;
use crate::cli::follow::fetch_status;
use crate::cli::status_view::{describe_attempt_line, text};

/// How often the status is read; shorter phases between two reads are not shown.
const POLL: Duration = Duration::from_millis(500);

/// What a change line is computed from.
#[derive(Debug, Clone, PartialEq)]
struct Snapshot {
    phase: String,
    running: Option<String>,
    waiting: Option<String>,
    pending: Option<String>,
    last_attempt: Value,
}

impl Snapshot {
    fn of(status: &Value) -> Snapshot {
        let present = |k: &str| status.get(k).filter(|v| !v.is_null());
        Snapshot {
            phase: present("phase").map_or("?".into(), text),
            running: present("running")
                .map(|j| format!("build {} from {}", text(&j["build"]), text(&j["source"]))),
            waiting: present("waiting").map(|w| {
                let what = match w["reason"].as_str() {
                    Some("gate") => format!("gate {}", text(&w["gate"])),
                    Some(reason) => text(&Value::from(reason)),
                    None => "?".into(),
                };
                format!("{what}: {}", text(&w["detail"]))
            }),
            pending: present("pending")
                .map(|j| format!("build {} from {}", text(&j["build"]), text(&j["source"]))),
            last_attempt: present("last_attempt").cloned().unwrap_or(Value::Null),
        }
    }
}

/// The lines that say how `before` became `after`, oldest event first.
fn changes(before: &Snapshot, after: &Snapshot) -> Vec<String> {
    let mut lines = Vec::new();
    if after.pending != before.pending
        && let Some(pending) = &after.pending
    {
        lines.push(format!("queued: {pending}"));
    }
    if after.last_attempt != before.last_attempt && !after.last_attempt.is_null() {
        lines.push(format!(
            "finished: {}",
            describe_attempt_line(&after.last_attempt)
        ));
    }
    if after.phase != before.phase || after.running != before.running {
        lines.push(match &after.running {
            Some(job) => format!("{}: {job}", after.phase),
            None => after.phase.clone(),
        });
    }
    if after.waiting != before.waiting
        && let Some(waiting) = &after.waiting
    {
        lines.push(format!("waiting for {waiting}"));
    }
    lines
}

fn clock() -> String {
    jiff::Zoned::now().strftime("%H:%M:%S").to_string()
}

/// Prints a line per change after `first` until Ctrl-C (exit 0). An agent that stops answering
/// is said once, and again when it answers.
pub async fn watch(endpoint: &Endpoint, first: &Value) -> u8 {
    let mut last = Snapshot::of(first);
    let mut unreachable = false;
    println!("{} following; Ctrl-C stops", clock());
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    loop {
        let status = tokio::select! {
            _ = &mut interrupted => return 0,
            status = async {
                tokio::time::sleep(POLL).await;
                fetch_status(endpoint).await
            } => status,
        };
        match status {
            Ok(status) => {
                if unreachable {
                    println!("{} the agent answers again", clock());
                    unreachable = false;
                }
                let now = Snapshot::of(&status);
                for line in changes(&last, &now) {
                    println!("{} {line}", clock());
                }
                last = now;
            }
            Err(e) if !unreachable => {
                println!("{} {}", clock(), text(&Value::from(e.to_string())));
                unreachable = true;
            }
            Err(_) => {}
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn one_line_per_change() {
        let idle = Snapshot::of(&json!({"phase": "idle"}));
        assert!(changes(&idle, &idle).is_empty());
        let queued = Snapshot::of(
            &json!({"phase": "verifying", "pending": {"build": 7, "source": "manual"}}),
        );
        assert_eq!(
            changes(&idle, &queued),
            ["queued: build 7 from manual", "verifying"]
        );
        let running = Snapshot::of(
            &json!({"phase": "pre-checking", "running": {"build": 7, "source": "manual"}}),
        );
        assert_eq!(
            changes(&queued, &running),
            ["pre-checking: build 7 from manual"]
        );
        let waiting = Snapshot::of(&json!({"phase": "waiting",
            "running": {"build": 7, "source": "manual"},
            "waiting": {"reason": "gate", "gate": "no-sessions", "detail": "2 sessions"}}));
        assert_eq!(
            changes(&running, &waiting),
            [
                "waiting: build 7 from manual",
                "waiting for gate no-sessions: 2 sessions"
            ]
        );
        let done = Snapshot::of(&json!({"phase": "idle", "last_attempt": {
            "build": 7, "source": "manual", "outcome": "upgraded", "reboot": "none",
            "started_at": "2026-01-01T00:00:00Z", "finished_at": "2026-01-01T00:00:12Z"}}));
        assert_eq!(
            changes(&waiting, &done),
            [
                "finished: build 7 from manual: upgraded in 12s, reboot none",
                "idle"
            ]
        );
        let evil = Snapshot::of(&json!({"phase": "idle\u{1b}[2J\rx"}));
        assert!(changes(&idle, &evil)[0].starts_with("idle\\u{1b}[2J\\rx"));
    }
}
