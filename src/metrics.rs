//! Prometheus metrics (`GET /metrics`): counters fed as things happen, gauges read from the agent at
//! scrape time so they can never drift from what `/v1/status` says.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Metric, Registry, Unit};

use std::collections::VecDeque;

use crate::model::{Attempt, Deployed, Outcome, Phase, Reboot};

type Labels = Vec<(&'static str, String)>;
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
}

pub struct Metrics {
    registry: Registry,
    pub hydra: HydraMetrics,
    attempts: Family<Labels, Counter>,
    notifications: Family<Labels, Counter>,
    hooks: Family<Labels, Counter>,
    last_finish: Family<Labels, FloatGauge>,
    last_outcome: Family<Labels, Gauge>,
    deployed_build: Gauge,
    deployed_info: Family<Labels, Gauge>,
    deployed_at: FloatGauge,
    newest_green: Gauge,
    pending_build: Gauge,
    queue_depth: Gauge,
    phase: Family<Labels, Gauge>,
    phase_elapsed: FloatGauge,
    reboot_needed: Gauge,
    reboot_deferred: Gauge,
    last_attempt_finish: FloatGauge,
    last_attempt_duration: FloatGauge,
    check_passed: Family<Labels, Gauge>,
    check_duration: Family<Labels, FloatGauge>,
    next_poll: FloatGauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut r = Registry::with_prefix("nixos_hydra_upgrade");
        let m = Metrics {
            registry: Registry::default(),
            hydra: HydraMetrics {
                latency: Family::new_with_constructor(hydra_histogram),
                errors: Family::default(),
                newest_green: Default::default(),
            },
            attempts: Family::default(),
            notifications: Family::default(),
            hooks: Family::default(),
            last_finish: Family::default(),
            last_outcome: Family::default(),
            deployed_build: Gauge::default(),
            deployed_info: Family::default(),
            deployed_at: Gauge::default(),
            newest_green: Gauge::default(),
            pending_build: Gauge::default(),
            queue_depth: Gauge::default(),
            phase: Family::default(),
            phase_elapsed: Gauge::default(),
            reboot_needed: Gauge::default(),
            reboot_deferred: Gauge::default(),
            last_attempt_finish: Gauge::default(),
            last_attempt_duration: Gauge::default(),
            check_passed: Family::default(),
            check_duration: Family::default(),
            next_poll: Gauge::default(),
        };
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
            "hooks",
            "Hook commands run since start, by hook and result",
            false,
            m.hooks.clone(),
        );
        add(
            &mut r,
            "last_attempt_by_outcome_timestamp",
            "When an attempt last ended with each outcome (Unix time)",
            true,
            m.last_finish.clone(),
        );
        add(
            &mut r,
            "last_attempt_outcome",
            "1 for the outcome of the last attempt",
            false,
            m.last_outcome.clone(),
        );
        add(
            &mut r,
            "deployed_build",
            "Hydra build id deployed on this host, 0 if none",
            false,
            m.deployed_build.clone(),
        );
        add(
            &mut r,
            "deployed",
            "The deployed build and store path (value always 1)",
            false,
            m.deployed_info.clone(),
        );
        add(
            &mut r,
            "deployed_timestamp",
            "When the deployed build was deployed (Unix time)",
            true,
            m.deployed_at.clone(),
        );
        add(
            &mut r,
            "newest_green_build",
            "Newest build id Hydra confirmed deployable to this agent (notifications, polls, history)",
            false,
            m.newest_green.clone(),
        );
        add(
            &mut r,
            "pending_build",
            "Hydra build id waiting in the queue, 0 if none",
            false,
            m.pending_build.clone(),
        );
        add(
            &mut r,
            "queue_depth",
            "Jobs waiting or running (0 to 2)",
            false,
            m.queue_depth.clone(),
        );
        add(
            &mut r,
            "phase",
            "1 for the worker's current phase",
            false,
            m.phase.clone(),
        );
        add(
            &mut r,
            "phase_elapsed",
            "Time spent in the current phase",
            true,
            m.phase_elapsed.clone(),
        );
        add(
            &mut r,
            "reboot_needed",
            "1 when the installed system's kernel, initrd or modules differ from the booted one's",
            false,
            m.reboot_needed.clone(),
        );
        add(
            &mut r,
            "reboot_deferred",
            "1 when the last upgrade deferred its reboot to the reboot window",
            false,
            m.reboot_deferred.clone(),
        );
        add(
            &mut r,
            "last_attempt_finish_timestamp",
            "When the last attempt ended (Unix time)",
            true,
            m.last_attempt_finish.clone(),
        );
        add(
            &mut r,
            "last_attempt_duration",
            "How long the last attempt took",
            true,
            m.last_attempt_duration.clone(),
        );
        add(
            &mut r,
            "health_check_passed",
            "1 if the check passed in the last attempt that ran it",
            false,
            m.check_passed.clone(),
        );
        add(
            &mut r,
            "health_check_duration",
            "How long the check took in the last attempt that ran it",
            true,
            m.check_duration.clone(),
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
        add(
            &mut r,
            "next_poll_timestamp",
            "When the schedule polls Hydra next (Unix time), 0 if never",
            true,
            m.next_poll.clone(),
        );
        Metrics { registry: r, ..m }
    }

    pub fn attempt_finished(&self, attempt: &Attempt) {
        let outcome = attempt.outcome.as_str();
        self.attempts
            .get_or_create(&vec![("outcome", outcome.into())])
            .inc();
    }

    pub fn notification(&self, status: &'static str) {
        self.notifications
            .get_or_create(&vec![("status", status.into())])
            .inc();
    }

    /// The hook counter, for the background task that runs hooks.
    pub fn hook_counter(&self) -> HookCounter {
        HookCounter(self.hooks.clone())
    }

    /// Prometheus (OpenMetrics) text for the current moment.
    pub fn render(&self, scrape: &Scrape<'_>) -> String {
        let to_i64 = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        let deployed = scrape.deployed;
        self.deployed_build
            .set(deployed.map_or(0, |d| to_i64(d.build)));
        self.deployed_at
            .set(deployed.map_or(0.0, |d| d.at.as_second() as f64));
        self.deployed_info.clear();
        if let Some(d) = deployed {
            self.deployed_info
                .get_or_create(&vec![
                    ("build", d.build.to_string()),
                    ("path", d.path.to_string()),
                ])
                .set(1);
        }
        // Every attempt in the history was verified green by Hydra: that survives a restart.
        let seen = scrape.history.iter().map(|a| a.build);
        let newest = seen
            .chain(deployed.map(|d| d.build))
            .max()
            .unwrap_or(0)
            .max(self.hydra.newest_green.load(Ordering::Relaxed));
        self.newest_green.set(to_i64(newest));
        self.pending_build.set(scrape.pending.map_or(0, to_i64));
        self.queue_depth
            .set(i64::try_from(scrape.depth).unwrap_or(0));
        for p in Phase::ALL {
            self.phase
                .get_or_create(&vec![("phase", p.as_str().into())])
                .set(i64::from(p == scrape.phase));
        }
        self.phase_elapsed.set(scrape.phase_elapsed.as_secs_f64());
        let last = scrape.history.front();
        let deferred = last.is_some_and(|a| a.reboot == Reboot::Deferred);
        self.reboot_deferred.set(i64::from(deferred));
        self.reboot_needed
            .set(i64::from(deferred || scrape.boot_files_differ));
        self.last_attempt_finish
            .set(last.map_or(0.0, |a| a.finished_at.as_second() as f64));
        self.last_attempt_duration.set(last.map_or(0.0, |a| {
            (a.finished_at.as_second() - a.started_at.as_second()).max(0) as f64
        }));
        for outcome in Outcome::ALL {
            let labels = vec![("outcome", outcome.as_str().into())];
            // Every outcome visible at 0 so rate() and alerts see the series from the start.
            let _ = self.attempts.get_or_create(&labels);
            self.last_outcome
                .get_or_create(&labels)
                .set(i64::from(last.is_some_and(|a| a.outcome == outcome)));
            let when = scrape
                .history
                .iter()
                .find(|a| a.outcome == outcome)
                .map_or(0.0, |a| a.finished_at.as_second() as f64);
            self.last_finish.get_or_create(&labels).set(when);
        }
        self.fill_checks(scrape.history);
        self.next_poll
            .set(scrape.next_poll.map_or(0.0, |t| t as f64));
        let mut text = String::new();
        if encode(&mut text, &self.registry).is_err() {
            text.clear();
        }
        text
    }

    /// Each configured check's latest result; check names come from the config, so they are bounded.
    fn fill_checks(&self, history: &VecDeque<Attempt>) {
        let mut latest: BTreeMap<(String, String), (bool, u64)> = BTreeMap::new();
        // Oldest first, so newer results (and a check re-run after a rollback) win.
        for attempt in history.iter().rev() {
            for check in &attempt.checks {
                latest.insert(
                    (check.name.clone(), check.kind.clone()),
                    (check.passed, check.duration_ms),
                );
            }
        }
        self.check_passed.clear();
        self.check_duration.clear();
        for ((name, kind), (passed, ms)) in latest {
            let labels = vec![("check", name), ("kind", kind)];
            self.check_passed
                .get_or_create(&labels)
                .set(i64::from(passed));
            self.check_duration
                .get_or_create(&labels)
                .set(ms as f64 / 1000.0);
        }
    }
}
