//! Health checks: the check model and the concurrent phase runner (fan-out/fan-in).

mod command;
mod config;
mod http;
mod icmp;
mod spec;
mod systemd;
mod table;
mod tcp;
mod validate;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::model::CheckResult;

pub use self::config::{
    DEFAULT_DEADLINE, DEFAULT_INTERVAL, DEFAULT_RETRIES, DEFAULT_SETTLE, DEFAULT_SYSTEMCTL,
    DEFAULT_TIMEOUT, HealthChecksConfig, HealthConfigError, MAX_RETRIES,
};
pub use self::spec::{CheckSpec, CommandSpec, HttpSpec, IcmpSpec, SystemdSpec, TcpSpec};
pub use self::table::render_table;

/// One runnable check: what to probe and how patiently.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    pub name: String,
    pub kind: CheckKind,
    /// Bound on one attempt (resolution, probe, reading the answer, a command's whole run).
    pub timeout: Duration,
    /// Attempts after the first failed one.
    pub retries: u32,
    /// Pause between attempts.
    pub interval: Duration,
}

/// What a check probes.
#[derive(Debug, Clone, PartialEq)]
pub enum CheckKind {
    /// Passes when at least one echo reply arrives in time from any address of `host`.
    Icmp { host: String },
    /// Passes when `address` (`host:port`) accepts a TCP connection.
    Tcp { address: String },
    /// `GET url`; passes on `status` (or any 2xx) and, if set, `body_contains` within 1 MiB.
    Http {
        url: String,
        status: Option<u16>,
        body_contains: Option<String>,
    },
    /// `systemctl is-active -- UNIT…` says `active` for every unit.
    Systemd {
        units: Vec<String>,
        /// The systemctl binary (tests point it at a stand-in).
        systemctl: PathBuf,
    },
    /// `argv` exits 0.
    Command { argv: Vec<String> },
}

impl CheckKind {
    /// The `kind` key's value: `icmp`, `tcp`, `http`, `systemd` or `command`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Icmp { .. } => "icmp",
            Self::Tcp { .. } => "tcp",
            Self::Http { .. } => "http",
            Self::Systemd { .. } => "systemd",
            Self::Command { .. } => "command",
        }
    }

    /// What is probed, as text: the default check name.
    pub fn target(&self) -> String {
        match self {
            Self::Icmp { host } => host.clone(),
            Self::Tcp { address } => address.clone(),
            Self::Http { url, .. } => url.clone(),
            Self::Systemd { units, .. } => units.join(" "),
            Self::Command { argv } => argv.join(" "),
        }
    }
}

/// What one attempt found: `Ok(detail)` passed, `Err(detail)` failed.
type Outcome = Result<String, String>;

/// How far a running check got, read when the phase deadline cuts it off.
#[derive(Default)]
struct Progress {
    attempts: AtomicU32,
    last_failure: Mutex<Option<String>>,
}

/// The configured checks of one phase (pre or post), run through `systemctl` for systemd checks.
pub fn phase_checks(config: &HealthChecksConfig, systemctl: &str, post: bool) -> Vec<Check> {
    let mut checks = if post {
        config.post_checks()
    } else {
        config.pre_checks()
    };
    for check in &mut checks {
        if let CheckKind::Systemd {
            systemctl: program, ..
        } = &mut check.kind
        {
            *program = systemctl.into();
        }
    }
    checks
}

/// Runs all `checks` concurrently and returns their results in the order of `checks`. A check
/// still running when `deadline` elapses is stopped (its command killed) and reported failed.
/// All icmp checks share one ICMP socket per address family.
pub async fn run_phase(checks: &[Check], deadline: Duration) -> Vec<CheckResult> {
    let started = Instant::now();
    let prober = Arc::new(icmp::Prober::new());
    let progress: Vec<Arc<Progress>> = checks.iter().map(|_| Arc::default()).collect();
    let mut tasks = JoinSet::new();
    let mut index_of = HashMap::new();
    for (i, check) in checks.iter().enumerate() {
        let (check, prober, progress) = (check.clone(), prober.clone(), progress[i].clone());
        let handle = tasks.spawn(async move { run_check(&check, &prober, &progress).await });
        index_of.insert(handle.id(), i);
    }

    let mut results: Vec<Option<CheckResult>> = vec![None; checks.len()];
    let end = started.checked_add(deadline);
    loop {
        let joined = match end {
            Some(end) => match tokio::time::timeout_at(end, tasks.join_next_with_id()).await {
                Ok(joined) => joined,
                Err(_) => break,
            },
            None => tasks.join_next_with_id().await,
        };
        let Some(joined) = joined else { break };
        let (id, result) = match joined {
            Ok((id, result)) => (id, Ok(result)),
            Err(e) => (e.id(), Err(format!("check task ended abnormally: {e}"))),
        };
        let Some(&i) = index_of.get(&id) else {
            continue;
        };
        results[i] = Some(result.unwrap_or_else(|detail| {
            let r = failed(&checks[i], &progress[i], detail, started);
            log_result(&r);
            r
        }));
    }
    tasks.abort_all();

    let mut out = Vec::with_capacity(checks.len());
    for (i, r) in results.into_iter().enumerate() {
        out.push(r.unwrap_or_else(|| {
            let last = progress[i]
                .last_failure
                .lock()
                .ok()
                .and_then(|g| g.clone())
                .map_or_else(String::new, |d| format!(" (last attempt: {d})"));
            let r = failed(
                &checks[i],
                &progress[i],
                format!("phase deadline exceeded{last}"),
                started,
            );
            log_result(&r);
            r
        }));
    }
    out
}

/// `run_phase` of the post-checks after waiting `settle` (no wait when there are none).
pub async fn run_post_checks(config: &HealthChecksConfig) -> Vec<CheckResult> {
    let checks = config.post_checks();
    if checks.is_empty() {
        return Vec::new();
    }
    tokio::time::sleep(config.settle).await;
    run_phase(&checks, config.deadline).await
}

fn failed(check: &Check, progress: &Progress, detail: String, started: Instant) -> CheckResult {
    CheckResult {
        name: check.name.clone(),
        kind: check.kind.as_str().into(),
        passed: false,
        detail,
        attempts: progress.attempts.load(Ordering::Relaxed),
        duration_ms: millis(started.elapsed()),
    }
}

/// Attempts `check` up to `1 + retries` times, each bounded by its timeout.
async fn run_check(check: &Check, prober: &icmp::Prober, progress: &Progress) -> CheckResult {
    let started = Instant::now();
    let max_attempts = check.retries.saturating_add(1);
    let mut attempts = 0;
    let outcome = loop {
        attempts += 1;
        progress.attempts.store(attempts, Ordering::Relaxed);
        let outcome = match tokio::time::timeout(check.timeout, attempt(check, prober)).await {
            Ok(outcome) => outcome,
            Err(_) => Err(timeout_detail(&check.kind, check.timeout)),
        };
        match outcome {
            Err(detail) if attempts < max_attempts => {
                tracing::debug!(check = %check.name, attempt = attempts, %detail, "health check attempt failed, retrying");
                if let Ok(mut last) = progress.last_failure.lock() {
                    *last = Some(detail);
                }
                tokio::time::sleep(check.interval).await;
            }
            outcome => break outcome,
        }
    };
    let (passed, detail) = match outcome {
        Ok(d) => (true, d),
        Err(d) => (false, d),
    };
    let result = CheckResult {
        name: check.name.clone(),
        kind: check.kind.as_str().into(),
        passed,
        detail,
        attempts,
        duration_ms: millis(started.elapsed()),
    };
    log_result(&result);
    result
}

async fn attempt(check: &Check, prober: &icmp::Prober) -> Outcome {
    match &check.kind {
        CheckKind::Icmp { host } => prober.check(host, check.timeout).await,
        CheckKind::Tcp { address } => self::tcp::check(address).await,
        CheckKind::Http {
            url,
            status,
            body_contains,
        } => self::http::check(url, *status, body_contains.as_deref(), check.timeout).await,
        CheckKind::Systemd { units, systemctl } => self::systemd::check(systemctl, units).await,
        CheckKind::Command { argv } => self::command::check(argv).await,
    }
}

fn timeout_detail(kind: &CheckKind, timeout: Duration) -> String {
    let t = humantime::format_duration(timeout);
    match kind {
        CheckKind::Icmp { host } => format!("no echo reply from {host} within {t}"),
        CheckKind::Tcp { address } => format!("connect to {address} timed out after {t}"),
        CheckKind::Http { .. } => format!("no complete response within {t}"),
        CheckKind::Systemd { .. } => format!("systemctl timed out after {t} (killed)"),
        CheckKind::Command { .. } => format!("timed out after {t} (killed)"),
    }
}

fn log_result(r: &CheckResult) {
    if r.passed {
        tracing::info!(check = %r.name, kind = r.kind, passed = true, attempts = r.attempts,
            duration_ms = r.duration_ms, detail = %r.detail, "health check passed");
    } else {
        tracing::warn!(check = %r.name, kind = r.kind, passed = false, attempts = r.attempts,
            duration_ms = r.duration_ms, detail = %r.detail, "health check failed");
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A short round-trip time: "0.05 ms", "3.2 ms", "41 ms".
fn fmt_rtt(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms < 1.0 {
        format!("{ms:.2} ms")
    } else if ms < 10.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{ms:.0} ms")
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    fn command(name: &str, argv: &[&str], timeout_ms: u64, retries: u32) -> Check {
        Check {
            name: name.into(),
            kind: CheckKind::Command {
                argv: argv.iter().map(|s| s.to_string()).collect(),
            },
            timeout: Duration::from_millis(timeout_ms),
            retries,
            interval: Duration::from_millis(50),
        }
    }

    #[tokio::test]
    async fn checks_run_concurrently_and_results_keep_their_order() {
        let checks: Vec<Check> = (0..4)
            .map(|i| command(&format!("c{i}"), &["sleep", "0.5"], 5000, 0))
            .chain([command("fails", &["false"], 5000, 2)])
            .collect();
        let started = Instant::now();
        let results = run_phase(&checks, Duration::from_secs(10)).await;
        let elapsed = started.elapsed();
        // Sequentially this would be >= 2 s.
        assert!(elapsed < Duration::from_millis(1500), "took {elapsed:?}");
        let names: Vec<&str> = results.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["c0", "c1", "c2", "c3", "fails"]);
        assert!(results[..4].iter().all(|r| r.passed && r.attempts == 1));
        assert_eq!((results[4].passed, results[4].attempts), (false, 3));
        assert_eq!(results[4].detail, "exit status 1");
    }

    #[tokio::test]
    async fn the_phase_deadline_cuts_off_slow_checks() {
        let checks = [
            command("quick", &["true"], 5000, 0),
            command("stuck", &["sleep", "30"], 20_000, 0),
            command("flapping", &["false"], 5000, 10),
        ];
        let started = Instant::now();
        let results = run_phase(&checks, Duration::from_millis(400)).await;
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(results[0].passed);
        assert!(!results[1].passed);
        assert_eq!(results[1].detail, "phase deadline exceeded");
        assert_eq!(results[1].attempts, 1);
        assert!(results[1].duration_ms >= 400);
        assert!(
            results[2]
                .detail
                .starts_with("phase deadline exceeded (last attempt: exit status 1)"),
            "{}",
            results[2].detail
        );
        assert!(results[2].attempts > 1);
    }

    #[tokio::test]
    async fn no_checks_no_results() {
        assert!(run_phase(&[], Duration::from_secs(1)).await.is_empty());
        let config = HealthChecksConfig::default();
        let started = Instant::now();
        assert!(run_post_checks(&config).await.is_empty());
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "no settle without post-checks"
        );
    }

    #[tokio::test]
    async fn post_checks_wait_for_settle() {
        let mut config = HealthChecksConfig {
            settle: Duration::from_millis(300),
            ..HealthChecksConfig::default()
        };
        config.post.push(CheckSpec::Command(CommandSpec {
            name: None,
            timeout: None,
            retries: None,
            interval: None,
            argv: vec!["true".into()],
        }));
        let started = Instant::now();
        let results = run_post_checks(&config).await;
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert_eq!(results[0].name, "true");
        assert!(results[0].passed);
    }

    #[test]
    fn results_serialize_for_the_status_api() {
        let r = CheckResult {
            name: "db".into(),
            kind: "tcp".into(),
            passed: false,
            detail: "connection refused".into(),
            attempts: 3,
            duration_ms: 2004,
        };
        assert_eq!(
            serde_json::to_value(&r).unwrap(),
            serde_json::json!({"name": "db", "kind": "tcp", "passed": false,
                "detail": "connection refused", "attempts": 3, "duration_ms": 2004})
        );
    }
}
