//! The Hydra-side sender: reads a RunCommand payload and delivers it unchanged, signed, to every
//! agent concerned in one concurrent round bounded by the hand-back, so hydra-notify never
//! stalls; what is still undelivered goes to the spool for `retry`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::cli::client::{Endpoint, fan_out_bound, fan_out_client, printable, request_via};
use crate::cli::spool::{self, Entry};
use crate::config::MAX_BODY_BYTES;
use crate::signature::{Keys, generate_id};

/// First wait between retries of one delivery; doubles each time.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(8);
/// One HTTP exchange never takes longer than this: more than the agent's own request timeout
/// (30 s), so the agent's answer (a 503 at worst) arrives before the sender gives up.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(35);
const _: () = assert!(ATTEMPT_TIMEOUT.as_secs() > crate::model::REQUEST_TIMEOUT.as_secs());
/// Kept from the hand-back for writing the spool, so the whole command ends within it.
const SPOOL_RESERVE: Duration = Duration::from_secs(1);
/// The retrier's first try of a spooled entry comes this long after it was spooled.
const FIRST_RETRY: Duration = Duration::from_secs(1);

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
    /// How long the one round of deliveries may take before `notify` returns.
    pub hand_back: Duration,
    /// Until when undelivered notifications are retried (by the retrier, after the hand-back).
    pub deadline: Duration,
    /// Where undelivered notifications go; None: `$NIXOS_HYDRA_UPGRADE_SPOOL`, else a default
    /// directory drained by a detached retrier.
    pub spool: Option<PathBuf>,
}

/// What happened, one line per target, and whether all went well.
pub struct Report {
    pub lines: Vec<String>,
    pub all_delivered: bool,
}

/// How one delivery ended within the hand-back.
enum Delivery {
    Delivered(String),
    /// A permanent answer (400, 401, 409, 422, …): retrying cannot help.
    Refused(String),
    /// Unreachable, timed out, or a transient answer until the round ended.
    Undelivered(String),
}

pub async fn notify(options: NotifyOptions) -> Result<Report, NotifyError> {
    let started = Instant::now();
    let started_at = jiff::Timestamp::now();
    let mut targets = options
        .urls
        .iter()
        .map(|u| Endpoint::parse(u).map(|e| (None, u.clone(), e)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(NotifyError::Usage)?;
    for route in &options.routes {
        let (job, url) = route
            .split_once('=')
            .filter(|(job, _)| !job.is_empty())
            .ok_or_else(|| NotifyError::Usage(format!("--route {route:?} is not JOB=URL")))?;
        targets.push((
            Some(job.to_owned()),
            url.to_owned(),
            Endpoint::parse(url).map_err(NotifyError::Usage)?,
        ));
    }
    if targets.is_empty() {
        return Err(NotifyError::Usage(
            "give at least one --url or --route".into(),
        ));
    }
    if options.hand_back.is_zero() {
        return Err(NotifyError::Usage(
            "--hand-back must be more than 0s".into(),
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
        .unwrap_or_default()
        .to_owned();
    let build = payload
        .get("build")
        .and_then(Value::as_u64)
        .unwrap_or_default();
    targets.retain(|(route_job, _, _)| route_job.as_deref().is_none_or(|j| j == job));
    if targets.is_empty() {
        return Ok(Report {
            lines: vec![format!(
                "nothing to do: no --url, and no --route for job {job:?}"
            )],
            all_delivered: true,
        });
    }
    let keys = Keys::load(&options.secret_file).map_err(|e| NotifyError::Failed(e.to_string()))?;
    let client = fan_out_client().map_err(NotifyError::Failed)?;
    let id = generate_id();
    let deadline = started + options.deadline;
    let hand_back = options.hand_back.min(options.deadline);
    let round_end = started + hand_back.saturating_sub(SPOOL_RESERVE.min(hand_back / 5));
    let in_flight = Arc::new(tokio::sync::Semaphore::new(fan_out_bound()));
    let deliveries = targets.iter().map(|(_, _, endpoint)| {
        let in_flight = in_flight.clone();
        let (client, keys, id, body) = (&client, &keys, &id, &body);
        async move {
            let Ok(_permit) = in_flight.acquire().await else {
                return Delivery::Undelivered("not tried".into());
            };
            deliver(client, endpoint, keys, id, body, round_end).await
        }
    });
    let results = futures_util::future::join_all(deliveries).await;

    let place = SpoolPlace::choose(options.spool);
    let mut lines = Vec::new();
    let mut all_delivered = true;
    let mut delivered_urls = Vec::new();
    let mut undelivered = Vec::new();
    for ((_, url, _), result) in targets.iter().zip(results) {
        match result {
            Delivery::Delivered(line) => {
                delivered_urls.push(url.as_str());
                lines.push(line);
            }
            Delivery::Refused(line) => {
                all_delivered = false;
                lines.push(format!("FAILED: {line}"));
            }
            Delivery::Undelivered(line) if Instant::now() + FIRST_RETRY < deadline => {
                undelivered.push((url.clone(), line));
            }
            Delivery::Undelivered(line) => {
                all_delivered = false;
                lines.push(format!("FAILED (deadline reached): {line}"));
            }
        }
    }
    // A delivered build makes an older spooled one for the same agent pointless.
    let dir = place.dir();
    if !delivered_urls.is_empty() && dir.is_dir() {
        let index = spool::index(dir);
        for url in delivered_urls {
            spool::remove_older(dir, &index, url, build);
        }
    }
    if !undelivered.is_empty() {
        let deadline_at = started_at
            .checked_add(options.deadline)
            .unwrap_or(jiff::Timestamp::MAX);
        let next_try = started_at
            .checked_add(hand_back + FIRST_RETRY)
            .unwrap_or(deadline_at);
        let entries = undelivered
            .iter()
            .map(|(url, line)| Entry {
                url: url.clone(),
                webhook_id: id.clone(),
                build,
                job: job.clone(),
                payload: body.clone(),
                spooled_at: jiff::Timestamp::now(),
                deadline: deadline_at,
                attempts: 1,
                last_error: Some(line.clone()),
                next_try,
            })
            .collect();
        let spooled = spool_all(dir, entries, started + hand_back).await;
        // This build supersedes what is spooled older for the same agents.
        let index = spool::index(dir);
        for ((url, _), written) in undelivered.iter().zip(&spooled) {
            if written.is_ok() {
                spool::remove_older(dir, &index, url, build);
            }
        }
        let until = humantime::format_duration(options.deadline);
        for ((url, line), written) in undelivered.iter().zip(&spooled) {
            match written {
                Ok(()) => lines.push(format!(
                    "SPOOLED {url} (retried until {until} after the build finished): {line}"
                )),
                Err(e) => {
                    all_delivered = false;
                    lines.push(format!("FAILED, not spooled: {line}; {e}"));
                }
            }
        }
        if spooled.iter().any(Result::is_ok) {
            lines.push(place.hand_over(&options.secret_file));
        }
    }
    Ok(Report {
        lines,
        all_delivered,
    })
}

/// Where undelivered notifications go and who drains them.
enum SpoolPlace {
    /// `--spool` or `$NIXOS_HYDRA_UPGRADE_SPOOL`: a `retry` service drains it.
    Drained(PathBuf),
    /// Neither given: a per-user directory, drained by a detached `retry` this command starts.
    Detached(PathBuf),
}

impl SpoolPlace {
    fn choose(given: Option<PathBuf>) -> SpoolPlace {
        if let Some(dir) = given {
            return SpoolPlace::Drained(dir);
        }
        if let Some(dir) = std::env::var_os(spool::SPOOL_ENV).filter(|d| !d.is_empty()) {
            return SpoolPlace::Drained(dir.into());
        }
        let state = std::env::var_os("XDG_STATE_HOME")
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME")
                    .filter(|d| !d.is_empty())
                    .map(|h| Path::new(&h).join(".local/state"))
            });
        SpoolPlace::Detached(match state {
            Some(state) => state.join("nixos-hydra-upgrade/spool"),
            None => std::env::temp_dir().join(format!(
                "nixos-hydra-upgrade-spool-{}",
                nix::unistd::getuid()
            )),
        })
    }

    fn dir(&self) -> &Path {
        match self {
            SpoolPlace::Drained(dir) | SpoolPlace::Detached(dir) => dir,
        }
    }

    /// Starts the detached retrier where one is needed; the line saying who delivers the rest.
    fn hand_over(&self, secret_file: &Path) -> String {
        match self {
            SpoolPlace::Drained(dir) => format!(
                "spool {}: delivered by the retrier that drains it (nixos-hydra-upgrade retry --spool {})",
                dir.display(),
                dir.display()
            ),
            SpoolPlace::Detached(dir) => match spawn_retrier(dir, secret_file) {
                Ok(pid) => format!(
                    "spool {}: a detached retrier (pid {pid}) delivers it; its log is {}",
                    dir.display(),
                    dir.join(RETRY_LOG).display()
                ),
                Err(e) => format!(
                    "spool {}: cannot start a retrier ({e}); run nixos-hydra-upgrade retry --spool {} --secret-file {} --once",
                    dir.display(),
                    dir.display(),
                    secret_file.display()
                ),
            },
        }
    }
}

/// The detached retrier's log, in its spool directory.
const RETRY_LOG: &str = "retry.log";

/// Starts `retry --exit-when-empty` in its own process group, so it outlives this command and
/// hydra-notify's handling of it; it waits for the spool's lock if another retrier holds it.
fn spawn_retrier(dir: &Path, secret_file: &Path) -> Result<u32, String> {
    use std::os::unix::fs::OpenOptionsExt;
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this program: {e}"))?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(dir.join(RETRY_LOG))
        .map_err(|e| format!("cannot open {}: {e}", dir.join(RETRY_LOG).display()))?;
    let log_err = log.try_clone().map_err(|e| e.to_string())?;
    let secret_file = std::path::absolute(secret_file).map_err(|e| e.to_string())?;
    let child = std::process::Command::new(exe)
        .arg("retry")
        .arg("--spool")
        .arg(dir)
        .arg("--secret-file")
        .arg(secret_file)
        .arg("--exit-when-empty")
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .process_group(0)
        .spawn()
        .map_err(|e| e.to_string())?;
    Ok(child.id())
}

/// Writes the entries, then syncs them to disk on a thread of its own for as long as the
/// hand-back allows (`sync_until`); a sync still running then finishes as the process exits.
async fn spool_all(
    dir: &Path,
    entries: Vec<Entry>,
    sync_until: Instant,
) -> Vec<Result<(), String>> {
    if let Err(e) = spool::ensure_dir(dir) {
        return entries.iter().map(|_| Err(e.clone())).collect();
    }
    let owned = dir.to_owned();
    let written = tokio::task::spawn_blocking(move || {
        entries
            .iter()
            .map(|e| spool::write(&owned, e))
            .collect::<Vec<_>>()
    })
    .await
    .unwrap_or_else(|e| vec![Err(format!("spool writer failed: {e}"))]);
    let files: Vec<PathBuf> = written.iter().filter_map(|w| w.clone().ok()).collect();
    let (done, synced) = tokio::sync::oneshot::channel();
    let owned = dir.to_owned();
    // A plain thread: the runtime would wait for a blocking task at exit, past the hand-back.
    let started = std::thread::Builder::new()
        .name("spool-sync".into())
        .spawn(move || {
            let _ = done.send(spool::sync(&owned, &files));
        });
    let left = sync_until.saturating_duration_since(Instant::now());
    match started {
        Ok(_) => match tokio::time::timeout(left, synced).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "spool written but not synced"),
            Ok(Err(_)) | Err(_) => {
                tracing::warn!("spool written; syncing it to disk outlasts the hand-back")
            }
        },
        Err(e) => tracing::warn!(error = %e, "spool written but not synced"),
    }
    written.into_iter().map(|w| w.map(|_| ())).collect()
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

/// Delivers to one agent, retrying transient failures with the same id until `round_end`.
async fn deliver(
    client: &reqwest::Client,
    endpoint: &Endpoint,
    keys: &Keys,
    id: &str,
    body: &[u8],
    round_end: Instant,
) -> Delivery {
    let url = endpoint.describe("/v1/upgrade");
    let mut backoff = FIRST_BACKOFF;
    let mut tries = 0u32;
    loop {
        tries += 1;
        let remaining = round_end.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Delivery::Undelivered(format!("{url}: not tried within the hand-back"));
        }
        let (retry, line) = match try_once(client, endpoint, keys, id, body, remaining).await {
            Attempted::Delivered(line) => return Delivery::Delivered(line),
            Attempted::Permanent(line) => (false, line),
            Attempted::Transient(line) => (true, line),
        };
        if !retry {
            return Delivery::Refused(format!("after {tries} tries: {line}"));
        }
        if round_end.saturating_duration_since(Instant::now()) < backoff {
            return Delivery::Undelivered(format!("after {tries} tries: {line}"));
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// How one HTTP exchange ended.
pub enum Attempted {
    Delivered(String),
    Permanent(String),
    Transient(String),
}

/// One signed POST (signed afresh: same id, current timestamp), bounded by `within`.
pub async fn try_once(
    client: &reqwest::Client,
    endpoint: &Endpoint,
    keys: &Keys,
    id: &str,
    body: &[u8],
    within: Duration,
) -> Attempted {
    let url = endpoint.describe("/v1/upgrade");
    let headers = keys.headers(id, body);
    let timeout = within.min(ATTEMPT_TIMEOUT).max(Duration::from_millis(1));
    let result = request_via(
        client,
        endpoint,
        reqwest::Method::POST,
        "/v1/upgrade",
        &headers,
        Some(body.to_vec()),
        timeout,
    )
    .await;
    match result {
        Ok(answer) if (200..300).contains(&answer.status) => Attempted::Delivered(format!(
            "{url}: {} {}",
            answer.status,
            summary(&answer.body)
        )),
        Ok(answer) => {
            let line = format!("{url}: {} {}", answer.status, summary(&answer.body));
            if matches!(answer.status, 408 | 429 | 500..=599) {
                Attempted::Transient(line)
            } else {
                Attempted::Permanent(line)
            }
        }
        Err(e) => Attempted::Transient(e),
    }
}

/// `queued build 4821`, or the answer's reason, in one short line.
pub fn summary(body: &[u8]) -> String {
    let Ok(answer) = serde_json::from_slice::<Value>(body) else {
        return printable(&String::from_utf8_lossy(body), 200);
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
    printable(&text, 300)
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
