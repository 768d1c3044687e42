//! Prometheus metrics (`GET /metrics`): counters fed as things happen, gauges read from the agent at
//! scrape time so they can never drift from what `/v1/status` says.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

use crate::state::{Attempt, Outcome, PersistedState, Reboot};
use crate::upgrade::Phase;

type Labels = Vec<(&'static str, String)>;

pub struct Metrics {
    registry: Registry,
    attempts: Family<Labels, Counter>,
    notifications: Family<Labels, Counter>,
    last_finish: Family<Labels, Gauge<f64, AtomicU64>>,
    deployed_build: Gauge,
    deployed_info: Family<Labels, Gauge>,
    pending_build: Gauge,
    queue_depth: Gauge,
    phase: Family<Labels, Gauge>,
    reboot_needed: Gauge,
    last_attempt_finish: Gauge<f64, AtomicU64>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("nixos_hydra_upgrade");
        let m = Metrics {
            attempts: Family::default(),
            notifications: Family::default(),
            last_finish: Family::default(),
            deployed_build: Gauge::default(),
            deployed_info: Family::default(),
            pending_build: Gauge::default(),
            queue_depth: Gauge::default(),
            phase: Family::default(),
            reboot_needed: Gauge::default(),
            last_attempt_finish: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "attempts",
            "Upgrade attempts by outcome",
            m.attempts.clone(),
        );
        registry.register(
            "notifications",
            "Upgrade requests answered, by answer status",
            m.notifications.clone(),
        );
        registry.register_with_unit(
            "last_attempt_by_outcome_timestamp",
            "When an attempt last ended with each outcome (Unix time)",
            Unit::Seconds,
            m.last_finish.clone(),
        );
        registry.register(
            "deployed_build",
            "Hydra build id deployed on this host",
            m.deployed_build.clone(),
        );
        registry.register(
            "deployed",
            "The deployed build and store path (value always 1)",
            m.deployed_info.clone(),
        );
        registry.register(
            "pending_build",
            "Hydra build id waiting in the queue, 0 if none",
            m.pending_build.clone(),
        );
        registry.register(
            "queue_depth",
            "Jobs waiting or running (0 to 2)",
            m.queue_depth.clone(),
        );
        registry.register("phase", "1 for the worker's current phase", m.phase.clone());
        registry.register(
            "reboot_needed",
            "1 when an upgrade waits for a reboot outside the reboot window",
            m.reboot_needed.clone(),
        );
        registry.register_with_unit(
            "last_attempt_finish_timestamp",
            "When the last attempt ended (Unix time)",
            Unit::Seconds,
            m.last_attempt_finish.clone(),
        );
        Metrics { registry, ..m }
    }

    pub fn attempt_finished(&self, attempt: &Attempt) {
        let outcome = attempt.outcome.as_str();
        self.attempts
            .get_or_create(&vec![("outcome", outcome.into())])
            .inc();
        self.last_finish
            .get_or_create(&vec![("outcome", outcome.into())])
            .set(attempt.finished_at.as_second() as f64);
    }

    pub fn notification(&self, status: &'static str) {
        self.notifications
            .get_or_create(&vec![("status", status.into())])
            .inc();
    }

    /// Prometheus text for the current moment.
    pub fn render(
        &self,
        state: &PersistedState,
        phase: Phase,
        pending: Option<u64>,
        depth: usize,
    ) -> String {
        let deployed = state.deployed.as_ref();
        self.deployed_build
            .set(deployed.map_or(0, |d| i64::try_from(d.build).unwrap_or(0)));
        self.deployed_info.clear();
        if let Some(d) = deployed {
            self.deployed_info
                .get_or_create(&vec![
                    ("build", d.build.to_string()),
                    ("path", d.path.clone()),
                ])
                .set(1);
        }
        self.pending_build
            .set(pending.map_or(0, |b| i64::try_from(b).unwrap_or(0)));
        self.queue_depth.set(i64::try_from(depth).unwrap_or(0));
        for p in Phase::ALL {
            self.phase
                .get_or_create(&vec![("phase", p.as_str().into())])
                .set(i64::from(p == phase));
        }
        let last = state.history.front();
        self.reboot_needed.set(i64::from(
            last.is_some_and(|a| a.reboot == Reboot::Deferred),
        ));
        self.last_attempt_finish
            .set(last.map_or(0.0, |a| a.finished_at.as_second() as f64));
        for outcome in Outcome::ALL {
            // Make every outcome visible at 0 so rate() and alerts see the series from the start.
            let _ = self
                .attempts
                .get_or_create(&vec![("outcome", outcome.as_str().into())]);
        }
        let mut text = String::new();
        if encode(&mut text, &self.registry).is_err() {
            text.clear();
        }
        text
    }
}
