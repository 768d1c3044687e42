//! The one worker: takes the queued job from the ledger and runs it as an attempt of explicit
//! steps (`attempt.rs`); at start it first settles an attempt a stop interrupted (`settle.rs`).

pub mod activate;
pub mod attempt;
pub mod closure_diff;
pub mod fetch;
pub mod gates;
pub mod gc;
pub mod inhibitors;
pub mod reboot;
pub mod rollback;
pub mod self_update;
pub mod settle;
pub mod wait;
pub mod wave;
pub mod window;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::Settings;
use crate::hooks::Hooks;
use crate::ledger::Ledger;
use crate::metrics::Metrics;
use crate::progress::Progress;
use attempt::Ended;
use wait::Condition;

/// What the worker is handed by the composition root.
pub struct Worker {
    pub settings: Arc<Settings>,
    pub ledger: Arc<Ledger>,
    pub progress: Arc<Progress>,
    pub metrics: Arc<Metrics>,
    pub hooks: Hooks,
    /// Window, gates, rollout: each may hold an attempt in `waiting`.
    pub conditions: Vec<Box<dyn Condition>>,
    pub shutdown: CancellationToken,
}

impl Worker {
    /// Settles an interrupted attempt, then takes jobs until shutdown. An attempt cut short by
    /// shutdown stays in flight (or queued) for the next start.
    pub async fn run(self) {
        // Whether a reboot is needed (or a deferred one was cancelled meanwhile), from the host.
        let history = self.ledger.snapshot().history;
        reboot::recompute(
            &self.settings.system,
            &history,
            reboot::deferred_in(&history),
        );
        if let Some(flight) = self.ledger.snapshot().in_flight {
            let span = tracing::info_span!("attempt", build = flight.build);
            self.progress.set_build(Some(flight.build));
            let ended = settle::interrupted(&self, flight).instrument(span).await;
            self.progress.set_build(None);
            if ended == Ended::Stop {
                return;
            }
        }
        loop {
            // Biased: a stop (a signal, a foreign switch) wins over a job that is ready too.
            let job = tokio::select! {
                biased;
                () = self.shutdown.cancelled() => return,
                job = self.ledger.next() => job,
                () = crate::systemd_notify::tick() => {
                    crate::systemd_notify::ping();
                    continue;
                }
            };
            let span = tracing::info_span!("attempt", build = job.target.build);
            self.progress.set_build(Some(job.target.build));
            let budget = crate::systemd_notify::attempt_budget(&self.settings);
            let ended = crate::systemd_notify::keep_alive(
                budget,
                attempt::run(&self, &job).instrument(span),
            )
            .await;
            self.progress.set_build(None);
            if ended == Ended::Stop {
                return;
            }
        }
    }
}
