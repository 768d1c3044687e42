//! `fleet`: many agents' `GET /v1/status` asked concurrently (bounded), one row per agent, and the
//! notification spool's state; unreachable agents are named, never fatal.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::{Value, json};

use crate::cli::client::{Endpoint, fan_out_bound, fan_out_client, printable, request_via};
use crate::cli::spool;

/// At most this many status requests in flight.
const MAX_IN_FLIGHT: usize = 256;
/// Longest text shown from an agent's answer.
const MAX_FIELD: usize = 80;

pub struct FleetOptions {
    pub urls: Vec<String>,
    pub hosts_file: Option<PathBuf>,
    pub json: bool,
    pub spool: Option<PathBuf>,
    pub timeout: Duration,
}

/// One agent's row.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub url: String,
    pub reachable: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub phase: Option<String>,
    /// The `waiting.reason` while phase is `waiting` (window, gate, rollout).
    pub waiting: Option<String>,
    pub deployed: Option<u64>,
    /// Hydra build ids between the deployed build and the newest green build any agent knows.
    pub behind: Option<u64>,
    pub pending: Option<u64>,
    pub last_build: Option<u64>,
    pub last_outcome: Option<String>,
    pub reboot: Option<String>,
    pub reboot_needed: Option<bool>,
}

/// Usage errors (exit 2) apart from what the agents answer.
pub async fn run(options: FleetOptions) -> Result<(String, bool), String> {
    let mut urls = options.urls;
    if let Some(file) = &options.hosts_file {
        urls.extend(read_hosts(file)?);
    }
    if urls.is_empty() {
        return Err("give at least one --url or a --hosts-file with URLs".into());
    }
    let endpoints = urls
        .iter()
        .map(|u| Endpoint::parse(u))
        .collect::<Result<Vec<_>, _>>()?;
    let client = fan_out_client()?;
    let in_flight = Arc::new(tokio::sync::Semaphore::new(
        fan_out_bound().min(MAX_IN_FLIGHT),
    ));
    let asks = endpoints.iter().map(|endpoint| {
        let (client, in_flight) = (&client, in_flight.clone());
        async move {
            let _permit = in_flight.acquire().await.ok();
            fetch(client, endpoint, options.timeout).await
        }
    });
    let answers = futures_util::future::join_all(asks).await;
    let newest = answers
        .iter()
        .filter_map(|a| a.as_ref().ok())
        .flat_map(known_builds)
        .max();
    let rows: Vec<Row> = urls
        .iter()
        .zip(answers)
        .map(|(url, answer)| row(url, answer, newest))
        .collect();
    let all_reachable = rows.iter().all(|r| r.reachable);
    let spooled = options.spool.as_deref().map(spool_rows);
    let text = if options.json {
        let mut doc = json!({ "newest_known": newest, "agents": rows });
        if let Some(spooled) = &spooled {
            doc["spool"] = json!(spooled);
        }
        format!("{doc:#}\n")
    } else {
        let mut text = render(&rows, newest);
        if let (Some(dir), Some(spooled)) = (&options.spool, &spooled) {
            text.push_str(&render_spool(dir, spooled));
        }
        text
    };
    Ok((text, all_reachable))
}

fn read_hosts(file: &Path) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| format!("cannot read hosts file {}: {e}", file.display()))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect())
}

async fn fetch(
    client: &reqwest::Client,
    endpoint: &Endpoint,
    timeout: Duration,
) -> Result<Value, String> {
    let answer = request_via(
        client,
        endpoint,
        reqwest::Method::GET,
        "/v1/status",
        &[],
        None,
        timeout,
    )
    .await?;
    if answer.status != 200 {
        return Err(format!("answered {}", answer.status));
    }
    serde_json::from_slice(&answer.body).map_err(|e| format!("status is not JSON: {e}"))
}

/// Every build an agent has seen verified green by Hydra: deployed, queued, running, attempted.
fn known_builds(status: &Value) -> Vec<u64> {
    let mut builds: Vec<u64> = ["deployed", "pending", "running", "last_attempt"]
        .iter()
        .filter_map(|k| status[k]["build"].as_u64())
        .collect();
    if let Some(history) = status["history"].as_array() {
        builds.extend(history.iter().filter_map(|a| a["build"].as_u64()));
    }
    builds
}

fn row(url: &str, answer: Result<Value, String>, newest: Option<u64>) -> Row {
    let text = |v: &Value| v.as_str().map(|s| printable(s, MAX_FIELD));
    match answer {
        Ok(status) => {
            let deployed = status["deployed"]["build"].as_u64();
            Row {
                url: url.to_owned(),
                reachable: true,
                error: None,
                phase: text(&status["phase"]),
                waiting: text(&status["waiting"]["reason"]),
                deployed,
                behind: newest.map(|n| n.saturating_sub(deployed.unwrap_or(0))),
                pending: status["pending"]["build"].as_u64(),
                last_build: status["last_attempt"]["build"].as_u64(),
                last_outcome: text(&status["last_attempt"]["outcome"]),
                reboot: text(&status["last_attempt"]["reboot"]),
                reboot_needed: status["reboot_needed"].as_bool(),
            }
        }
        Err(error) => Row {
            url: url.to_owned(),
            reachable: false,
            error: Some(printable(&error, 200)),
            phase: None,
            waiting: None,
            deployed: None,
            behind: None,
            pending: None,
            last_build: None,
            last_outcome: None,
            reboot: None,
            reboot_needed: None,
        },
    }
}

/// Fixed-width columns, one row per agent, then a summary line.
fn render(rows: &[Row], newest: Option<u64>) -> String {
    let show = |v: Option<u64>| v.map_or("-".to_owned(), |b| b.to_string());
    let header = ["AGENT", "DEPLOYED", "BEHIND", "PHASE", "LAST", "REBOOT"].map(str::to_owned);
    let mut table = vec![header];
    for r in rows {
        if !r.reachable {
            continue;
        }
        let phase = match (&r.phase, &r.waiting) {
            (Some(p), Some(w)) => format!("{p} ({w})"),
            (Some(p), None) => p.clone(),
            (None, _) => "-".into(),
        };
        let last = match (&r.last_outcome, r.last_build) {
            (Some(o), Some(b)) => format!("{o} {b}"),
            _ => "-".into(),
        };
        let reboot = match (&r.reboot, r.reboot_needed) {
            (Some(x), Some(true)) => format!("{x}, needed"),
            (Some(x), _) => x.clone(),
            (None, Some(true)) => "needed".into(),
            (None, _) => "-".into(),
        };
        let behind = match r.behind {
            Some(0) | None => "-".to_owned(),
            Some(n) => n.to_string(),
        };
        table.push([
            printable(&r.url, 200),
            show(r.deployed),
            behind,
            phase,
            last,
            reboot,
        ]);
    }
    let widths: Vec<usize> = (0..6)
        .map(|c| {
            table
                .iter()
                .map(|r| r[c].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for cells in &table {
        let line: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    let unreachable: Vec<&Row> = rows.iter().filter(|r| !r.reachable).collect();
    for r in &unreachable {
        out.push_str(&format!(
            "UNREACHABLE {}: {}\n",
            printable(&r.url, 200),
            r.error.as_deref().unwrap_or("")
        ));
    }
    out.push_str(&format!(
        "{} of {} agents answered; newest green build known: {}\n",
        rows.len() - unreachable.len(),
        rows.len(),
        show(newest)
    ));
    out
}

/// What the spool holds: one row per undelivered notification.
#[derive(Debug, Serialize)]
pub struct Spooled {
    pub url: String,
    pub build: u64,
    pub job: String,
    pub since: jiff::Timestamp,
    pub attempts: u32,
    pub next_try: jiff::Timestamp,
    pub deadline: jiff::Timestamp,
    pub last_error: Option<String>,
}

fn spool_rows(dir: &Path) -> Vec<Spooled> {
    let (entries, bad) = spool::load(dir);
    for b in bad {
        tracing::warn!(error = %b.error, "spool file not readable");
    }
    entries
        .into_iter()
        .map(|(_, e)| Spooled {
            url: e.url,
            build: e.build,
            job: e.job,
            since: e.spooled_at,
            attempts: e.attempts,
            next_try: e.next_try,
            deadline: e.deadline,
            last_error: e.last_error,
        })
        .collect()
}

fn render_spool(dir: &Path, rows: &[Spooled]) -> String {
    let mut out = format!("spool {}: {} undelivered\n", dir.display(), rows.len());
    for s in rows {
        out.push_str(&format!(
            "  {} build {} ({}) since {}, {} tries, next {}, gives up {}: {}\n",
            printable(&s.url, 200),
            s.build,
            printable(&s.job, MAX_FIELD),
            s.since,
            s.attempts,
            s.next_try,
            s.deadline,
            printable(s.last_error.as_deref().unwrap_or("-"), 200)
        ));
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn rows_measure_behind_the_newest_known_build_and_escape_agent_text() {
        let a = json!({"phase": "idle", "deployed": {"build": 40}, "last_attempt":
            {"build": 40, "outcome": "upgraded", "reboot": "none"}, "history": []});
        let b = json!({"phase": "wait\u{1b}[2Jing", "deployed": {"build": 30},
            "pending": {"build": 45}, "reboot_needed": true});
        let newest = [&a, &b].iter().flat_map(|s| known_builds(s)).max();
        assert_eq!(newest, Some(45));
        let rows = vec![
            row("http://a", Ok(a), newest),
            row("http://b", Ok(b), newest),
            row("http://c", Err("connection refused".into()), newest),
        ];
        assert_eq!(rows[0].behind, Some(5));
        assert_eq!(rows[1].behind, Some(15));
        let text = render(&rows, newest);
        assert!(!text.contains('\u{1b}'), "{text}");
        assert!(
            text.contains("UNREACHABLE http://c: connection refused"),
            "{text}"
        );
        assert!(text.contains("upgraded 40"), "{text}");
        assert!(text.contains("2 of 3 agents answered; newest green build known: 45"));
    }
}
