//! The status component: `/v1/status` (SPEC §4) and the inputs of a metrics scrape, read from the
//! ledger, the live progress and the host's system links.

use std::sync::Arc;

use serde_json::{Value, json};

use crate::config::Settings;
use crate::ledger::Ledger;
use crate::metrics::{Metrics, Scrape};
use crate::model::Job;
use crate::progress::Progress;

pub struct StatusView {
    pub settings: Arc<Settings>,
    pub ledger: Arc<Ledger>,
    pub progress: Arc<Progress>,
}

impl StatusView {
    /// The status document of SPEC §4.
    pub fn snapshot(&self) -> Value {
        let settings = &self.settings;
        let state = self.ledger.snapshot();
        let live = self.progress.live();
        let elapsed = (jiff::Timestamp::now().as_second() - live.since.as_second()).max(0);
        let job = |j: Job| json!({ "build": j.target.build, "source": j.source, "path": j.target.path, "since": j.received_at });
        json!({
            "agent": {
                "host": settings.host,
                "job": format!("{}:{}:{}", settings.hydra_project, settings.hydra_jobset, settings.hydra_job),
                "hydra": settings.hydra_instance,
                "version": env!("CARGO_PKG_VERSION"),
                "dry_run": settings.dry_run,
            },
            "phase": live.phase,
            "phase_since": live.since,
            "phase_elapsed_seconds": elapsed,
            "waiting": live.waiting,
            "current_system": crate::host::resolved(&settings.system.current_system),
            "deployed": state.deployed,
            "running": state.running.map(job),
            "pending": state.pending.map(job),
            "last_attempt": state.history.front(),
            "next_poll": live.next_poll,
            "last_poll": state.last_poll,
            "hydra": settings.hydra_instance,
            "reboot_needed": self.reboot_needed(),
            "state_error": self.ledger.write_error(),
            "history": state.history,
        })
    }

    /// Whether the installed system boots another kernel, initrd or modules than the running one.
    pub fn reboot_needed(&self) -> bool {
        let system = &self.settings.system;
        crate::upgrade::reboot::boot_files_differ(&system.booted_system, &system.system_profile)
    }

    /// The Prometheus text of a scrape.
    pub fn metrics(&self, metrics: &Metrics) -> String {
        let state = self.ledger.snapshot();
        let live = self.progress.live();
        let elapsed = jiff::Timestamp::now().duration_since(live.since);
        let scrape = Scrape {
            deployed: state.deployed.as_ref(),
            history: &state.history,
            phase: live.phase,
            phase_elapsed: std::time::Duration::try_from(elapsed).unwrap_or_default(),
            pending: state.pending.as_ref().map(|j| j.target.build),
            depth: usize::from(state.pending.is_some()) + usize::from(state.running.is_some()),
            boot_files_differ: self.reboot_needed(),
            next_poll: live
                .next_poll
                .and_then(|t| t.parse::<jiff::Timestamp>().ok())
                .map(|t| t.as_second()),
        };
        metrics.render(&scrape)
    }
}
