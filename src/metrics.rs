//! Prometheus metrics (`GET /metrics`): counters fed as things happen, gauges read from the agent at
//! scrape time so they can never drift from what `/v1/status` says. A scrape only reads shared
//! state: its gauges live in a registry of its own, so concurrent scrapes cannot interleave.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Metric, Registry, Unit};

use std::collections::VecDeque;

use crate::model::{Attempt, Deployed, Outcome, Phase};

type Labels = Vec<(&'static str, String)>;

/// The `status` values of SPEC §4's answers, the labels of the notifications counter.
const NOTIFICATION_STATUSES: [&str; 9] = [
    "queued",
    "current",
    "duplicate",
    "ignored",
    "invalid",
    "unauthorized",
    "refused",
    "rejected",
    "unavailable",
];
type FloatGauge = Gauge<f64, AtomicU64>;

fn hydra_histogram() -> Histogram {
    // 5 ms to about 10 s: a local Hydra answers in milliseconds, a busy one in seconds.
    Histogram::new(exponential_buckets(0.005, 2.0, 12))
}

/// Hydra request latency and errors, by endpoint (`build`, `eval`, `job`); cheap to clone into
/// the Hydra client.
#[derive(Clone)]
pub struct HydraMetrics {
    latency: Family<Labels, Histogram, fn() -> Histogram>,
    errors: Family<Labels, Counter>,
    newest_green: std::sync::Arc<AtomicU64>,
}

impl crate::model::RequestObserver for HydraMetrics {
    fn request(&self, endpoint: &'static str, elapsed: Duration, ok: bool) {
        let labels = vec![("endpoint", endpoint.to_owned())];
        self.latency
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
        if !ok {
            self.errors.get_or_create(&labels).inc();
        }
    }

    fn verified(&self, build: u64) {
        self.newest_green.fetch_max(build, Ordering::Relaxed);
    }
}

fn add(registry: &mut Registry, name: &str, help: &str, seconds: bool, metric: impl Metric) {
    if seconds {
        registry.register_with_unit(name, help, Unit::Seconds, metric);
    } else {
        registry.register(name, help, metric);
    }
}

/// Counts hook runs by hook and result (`ok`, `failed`, `timeout`).
#[derive(Clone)]
pub struct HookCounter(Family<Labels, Counter>);

impl HookCounter {
    pub fn inc(&self, hook: &'static str, result: &'static str) {
        self.0
            .get_or_create(&vec![("hook", hook.into()), ("result", result.into())])
            .inc();
    }
}

/// What a scrape reads from the agent.
pub struct Scrape<'a> {
    pub deployed: Option<&'a Deployed>,
    /// Newest first.
    pub history: &'a VecDeque<Attempt>,
    pub phase: Phase,
    pub phase_elapsed: Duration,
    pub pending: Option<u64>,
    pub depth: usize,
    /// Kernel, initrd or modules of the system profile differ from the booted system's.
    pub boot_files_differ: bool,
    /// The next scheduled poll, Unix seconds.
    pub next_poll: Option<i64>,
    /// What the worker waits for (`window`, `gate`, `rollout`), if it waits.
    pub waiting: Option<&'static str>,
    /// The newest upgrade deferred its reboot and the host still needs it.
    pub reboot_deferred: bool,
}

/// The counters and histograms fed as things happen; gauges are built per scrape.
pub struct Metrics {
    registry: Registry,
    pub hydra: HydraMetrics,
    attempts: Family<Labels, Counter>,
    notifications: Family<Labels, Counter>,
    refusals: Family<Labels, Counter>,
    /// Handles into `refusals`; the causes are a bounded set, so this stays small.
    refusal_handles: std::sync::Mutex<Vec<(&'static str, &'static str, Counter)>>,
    /// Handles into `notifications` by status, made on first use: a refusal then costs one
    /// atomic add, not a label vector, a hash and a lock.
    notification_handles: [std::sync::OnceLock<Counter>; NOTIFICATION_STATUSES.len()],
    hooks: Family<Labels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut r = Registry::with_prefix(PREFIX);
        let m = Metrics {
            registry: Registry::default(),
            hydra: HydraMetrics {
                latency: Family::new_with_constructor(hydra_histogram),
                errors: Family::default(),
                newest_green: Default::default(),
            },
            attempts: Family::default(),
            notifications: Family::default(),
            refusals: Family::default(),
            refusal_handles: std::sync::Mutex::default(),
            notification_handles: Default::default(),
            hooks: Family::default(),
        };
        // Every outcome visible at 0 so rate() and alerts see the series from the start.
        for outcome in Outcome::ALL {
            let _ = m
                .attempts
                .get_or_create(&vec![("outcome", outcome.as_str().into())]);
        }
        add(
            &mut r,
            "attempts",
            "Upgrade attempts since start, by outcome",
            false,
            m.attempts.clone(),
        );
        add(
            &mut r,
            "notifications",
            "Upgrade requests answered since start, by answer status",
            false,
            m.notifications.clone(),
        );
        add(
            &mut r,
            "refusals",
            "Upgrade requests not accepted since start, by answer status and cause",
            false,
            m.refusals.clone(),
        );
        add(
            &mut r,
            "hooks",
            "Hook commands run since start, by hook and result",
            false,
            m.hooks.clone(),
        );
        add(
            &mut r,
            "hydra_request_duration",
            "Latency of requests to Hydra, by endpoint",
            true,
            m.hydra.latency.clone(),
        );
        add(
            &mut r,
            "hydra_request_errors",
            "Requests to Hydra that failed (transport error or 5xx), by endpoint",
            false,
            m.hydra.errors.clone(),
        );
        Metrics { registry: r, ..m }
    }

    pub fn attempt_finished(&self, attempt: &Attempt) {
        let outcome = attempt.outcome.as_str();
        self.attempts
            .get_or_create(&vec![("outcome", outcome.into())])
            .inc();
    }

    /// An upgrade request answered with `status`; `cause` (bounded) when it was not accepted.
    pub fn notification(&self, status: &'static str, cause: Option<&'static str>) {
        let family = || {
            self.notifications
                .get_or_create(&vec![("status", status.into())])
                .clone()
        };
        match NOTIFICATION_STATUSES.iter().position(|s| *s == status) {
            Some(i) => self.notification_handles[i].get_or_init(family).inc(),
            None => family().inc(),
        };
        if let Some(cause) = cause {
            self.refusal(status, cause).inc();
        }
    }

    /// The refusals counter of (`status`, `cause`), made once: a flood of forged requests then
    /// costs a short scan and an atomic add per refusal, not a label vector, a hash and a lock.
    fn refusal(&self, status: &'static str, cause: &'static str) -> Counter {
        let mut handles = self
            .refusal_handles
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some((_, _, counter)) = handles.iter().find(|(s, c, _)| *s == status && *c == cause)
        {
            return counter.clone();
        }
        let counter = self
            .refusals
            .get_or_create(&vec![("status", status.into()), ("cause", cause.into())])
            .clone();
        handles.push((status, cause, counter.clone()));
        counter
    }

    /// The hook counter, for the background task that runs hooks.
    pub fn hook_counter(&self) -> HookCounter {
        HookCounter(self.hooks.clone())
    }

    /// Prometheus (OpenMetrics) text for the current moment; reads shared state, writes none.
    pub fn render(&self, scrape: &Scrape<'_>) -> String {
        let newest_green = self.hydra.newest_green.load(Ordering::Relaxed);
        let gauges = gauges(scrape, newest_green);
        let mut text = String::new();
        let encoded = encode_registry(&mut text, &self.registry)
            .and_then(|()| encode_registry(&mut text, &gauges))
            .and_then(|()| encode_eof(&mut text));
        if encoded.is_err() {
            text.clear();
        }
        text
    }
}

const PREFIX: &str = "nixos_hydra_upgrade";

fn int(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn gauge(value: i64) -> Gauge {
    let g = Gauge::default();
    g.set(value);
    g
}

fn float(value: f64) -> FloatGauge {
    let g = FloatGauge::default();
    g.set(value);
    g
}

/// A family holding exactly `rows`.
fn family<G: prometheus_client::metrics::gauge::Atomic<V> + Default, V>(
    rows: impl IntoIterator<Item = (Labels, V)>,
) -> Family<Labels, Gauge<V, G>>
where
    Gauge<V, G>: Default,
{
    let family = Family::<Labels, Gauge<V, G>>::default();
    for (labels, value) in rows {
        family.get_or_create(&labels).set(value);
    }
    family
}

/// The gauges of one scrape, in a registry of their own built from the snapshot.
fn gauges(scrape: &Scrape<'_>, newest_green: u64) -> Registry {
    let mut r = Registry::with_prefix(PREFIX);
    let deployed = scrape.deployed;
    let history = scrape.history;
    let last = history.front();
    let deferred = scrape.reboot_deferred;
    let seconds = |t: jiff::Timestamp| t.as_second() as f64;
    let outcome_rows = |value: &dyn Fn(Outcome) -> f64| {
        Outcome::ALL
            .iter()
            .map(|&o| (vec![("outcome", o.as_str().into())], value(o)))
            .collect::<Vec<(Labels, f64)>>()
    };
    add(
        &mut r,
        "last_attempt_by_outcome_timestamp",
        "When an attempt last ended with each outcome (Unix time)",
        true,
        family::<AtomicU64, f64>(outcome_rows(&|o| {
            history
                .iter()
                .find(|a| a.outcome == o)
                .map_or(0.0, |a| seconds(a.finished_at))
        })),
    );
    add(
        &mut r,
        "last_attempt_outcome",
        "1 for the outcome of the last attempt",
        false,
        family::<std::sync::atomic::AtomicI64, i64>(Outcome::ALL.iter().map(|&o| {
            (
                vec![("outcome", o.as_str().into())],
                i64::from(last.is_some_and(|a| a.outcome == o)),
            )
        })),
    );
    add(
        &mut r,
        "deployed_build",
        "Hydra build id deployed on this host, 0 if none",
        false,
        gauge(deployed.map_or(0, |d| int(d.build))),
    );
    add(
        &mut r,
        "deployed",
        "The deployed build and store path (value always 1)",
        false,
        family::<std::sync::atomic::AtomicI64, i64>(deployed.map(|d| {
            (
                vec![("build", d.build.to_string()), ("path", d.path.to_string())],
                1,
            )
        })),
    );
    add(
        &mut r,
        "deployed_timestamp",
        "When the deployed build was deployed (Unix time)",
        true,
        float(deployed.map_or(0.0, |d| seconds(d.at))),
    );
    // Every attempt in the history was verified green by Hydra: that survives a restart.
    let newest = history
        .iter()
        .map(|a| a.build)
        .chain(deployed.map(|d| d.build))
        .max()
        .unwrap_or(0)
        .max(newest_green);
    add(
        &mut r,
        "newest_green_build",
        "Newest build id Hydra confirmed deployable to this agent (notifications, polls, history)",
        false,
        gauge(int(newest)),
    );
    add(
        &mut r,
        "pending_build",
        "Hydra build id waiting in the queue, 0 if none",
        false,
        gauge(scrape.pending.map_or(0, int)),
    );
    add(
        &mut r,
        "queue_depth",
        "Jobs waiting or running (0 to 2)",
        false,
        gauge(i64::try_from(scrape.depth).unwrap_or(0)),
    );
    add(
        &mut r,
        "phase",
        "1 for the worker's current phase",
        false,
        family::<std::sync::atomic::AtomicI64, i64>(Phase::ALL.iter().map(|&p| {
            (
                vec![("phase", p.as_str().into())],
                i64::from(p == scrape.phase),
            )
        })),
    );
    add(
        &mut r,
        "phase_elapsed",
        "Time spent in the current phase",
        true,
        float(scrape.phase_elapsed.as_secs_f64()),
    );
    add(
        &mut r,
        "reboot_needed",
        "1 when the installed system's kernel, initrd or modules differ from the booted one's",
        false,
        gauge(i64::from(deferred || scrape.boot_files_differ)),
    );
    add(
        &mut r,
        "reboot_deferred",
        "1 when the last upgrade deferred its reboot to the reboot window and it is still needed",
        false,
        gauge(i64::from(deferred)),
    );
    add(
        &mut r,
        "waiting",
        "1 while the worker waits to activate, by what it waits for",
        false,
        family::<std::sync::atomic::AtomicI64, i64>(["window", "gate", "rollout"].map(|reason| {
            (
                vec![("reason", reason.into())],
                i64::from(scrape.waiting == Some(reason)),
            )
        })),
    );
    add(
        &mut r,
        "last_attempt_finish_timestamp",
        "When the last attempt ended (Unix time)",
        true,
        float(last.map_or(0.0, |a| seconds(a.finished_at))),
    );
    add(
        &mut r,
        "last_attempt_duration",
        "How long the last attempt took",
        true,
        float(last.map_or(0.0, |a| {
            (a.finished_at.as_second() - a.started_at.as_second()).max(0) as f64
        })),
    );
    let checks = latest_checks(history);
    add(
        &mut r,
        "health_check_passed",
        "1 if the check passed in the last attempt that ran it",
        false,
        family::<std::sync::atomic::AtomicI64, i64>(
            checks
                .iter()
                .map(|((name, kind), (passed, _))| (check_labels(name, kind), i64::from(*passed))),
        ),
    );
    add(
        &mut r,
        "health_check_duration",
        "How long the check took in the last attempt that ran it",
        true,
        family::<AtomicU64, f64>(
            checks
                .iter()
                .map(|((name, kind), (_, ms))| (check_labels(name, kind), *ms as f64 / 1000.0)),
        ),
    );
    add(
        &mut r,
        "next_poll_timestamp",
        "When the schedule polls Hydra next (Unix time), 0 if never",
        true,
        float(scrape.next_poll.map_or(0.0, |t| t as f64)),
    );
    r
}

fn check_labels(name: &str, kind: &str) -> Labels {
    vec![("check", name.to_owned()), ("kind", kind.to_owned())]
}

/// Each configured check's latest result; check names come from the config, so they are bounded.
fn latest_checks(history: &VecDeque<Attempt>) -> BTreeMap<(String, String), (bool, u64)> {
    let mut latest = BTreeMap::new();
    // Oldest first, so newer results (and a check re-run after a rollback) win.
    for attempt in history.iter().rev() {
        for check in &attempt.checks {
            latest.insert(
                (check.name.clone(), check.kind.clone()),
                (check.passed, check.duration_ms),
            );
        }
    }
    latest
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::model::{CheckResult, Reboot, Source, StorePath, now};

    /// A state where build `build` is deployed and the last attempt ran one check named `check`.
    fn state(build: u64, check: &str) -> (Deployed, VecDeque<Attempt>) {
        let path = StorePath::parse(&format!("/nix/store/{build:0>32}-nixos-system-web1")).unwrap();
        let deployed = Deployed {
            build,
            path: path.clone(),
            at: now(),
        };
        let attempt = Attempt {
            build,
            path: Some(path),
            source: Source::Manual,
            outcome: Outcome::Upgraded,
            reboot: Reboot::None,
            error: None,
            started_at: now(),
            finished_at: now(),
            checks: vec![CheckResult {
                name: check.into(),
                kind: "command".into(),
                passed: true,
                detail: "exit status 0".into(),
                attempts: 1,
                duration_ms: 5,
            }],
        };
        (deployed, VecDeque::from([attempt]))
    }

    fn samples<'t>(text: &'t str, name: &str) -> Vec<&'t str> {
        text.lines()
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with([' ', '{']))
            })
            .collect()
    }

    /// Two snapshots rendered from many threads at once: every scrape must be exactly one of
    /// them, each gauge once, never a mix (as clearing and refilling shared gauges produced).
    #[test]
    fn concurrent_scrapes_each_show_their_own_snapshot() {
        let metrics = Metrics::new();
        let snapshots = [state(41, "alpha"), state(42, "beta")];
        std::thread::scope(|scope| {
            for thread in 0..8 {
                let (metrics, snapshots) = (&metrics, &snapshots);
                scope.spawn(move || {
                    for round in 0..200 {
                        let (deployed, history) = &snapshots[(thread + round) % 2];
                        let text = metrics.render(&Scrape {
                            deployed: Some(deployed),
                            history,
                            phase: Phase::Idle,
                            phase_elapsed: Duration::ZERO,
                            pending: None,
                            depth: 0,
                            boot_files_differ: false,
                            next_poll: None,
                            waiting: None,
                            reboot_deferred: false,
                        });
                        let build = deployed.build;
                        let want = |name: &str, n: usize| {
                            let found = samples(&text, &format!("nixos_hydra_upgrade_{name}"));
                            assert_eq!(found.len(), n, "{name} in scrape of {build}: {text}");
                            found
                        };
                        assert_eq!(
                            want("deployed_build", 1),
                            [format!("nixos_hydra_upgrade_deployed_build {build}")]
                        );
                        let info = want("deployed", 1);
                        assert!(info[0].contains(&format!("build=\"{build}\"")), "{text}");
                        let check = if build == 41 { "alpha" } else { "beta" };
                        let passed = want("health_check_passed", 1);
                        assert!(passed[0].contains(&format!("check=\"{check}\"")), "{text}");
                        want("health_check_duration_seconds", 1);
                        want("phase", Phase::ALL.len());
                        want("last_attempt_outcome", Outcome::ALL.len());
                        want("attempts_total", Outcome::ALL.len());
                        assert!(text.ends_with("# EOF\n"));
                    }
                });
            }
        });
    }
}
