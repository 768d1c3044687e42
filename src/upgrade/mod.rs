//! The one worker: takes the queued job, runs pre-checks, activation and post-checks, and records
//! the attempt.

pub mod activate;
pub mod closure_diff;
pub mod fetch;
pub mod gates;
pub mod gc;
pub mod inhibitors;
pub mod reboot;
pub mod rollback;
pub mod runner;
pub mod self_update;
pub mod wait;

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use jiff::Timestamp;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::app::Agent;
use crate::model::{Attempt, CheckResult, Deployed, InFlight, Job, Outcome, Phase, Reboot, now};
use runner::{CommandRunner, RunError};

/// The worker's phase and since when it is in it.
pub struct PhaseCell(Mutex<(Phase, Timestamp)>);

impl Default for PhaseCell {
    fn default() -> Self {
        PhaseCell(Mutex::new((Phase::Idle, now())))
    }
}

impl PhaseCell {
    pub fn set(&self, phase: Phase) {
        let mut guard = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if guard.0 != phase {
            *guard = (phase, now());
            tracing::info!(phase = phase.as_str(), "phase");
            crate::systemd_notify::phase(phase.as_str());
        }
    }

    pub fn get(&self) -> (Phase, Timestamp) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Takes jobs until `shutdown`; an attempt cut short by shutdown stays in flight for the next start.
pub async fn run_worker(agent: std::sync::Arc<Agent>, shutdown: CancellationToken) {
    loop {
        let job = tokio::select! {
            job = agent.queue.next() => job,
            () = shutdown.cancelled() => return,
            () = crate::systemd_notify::tick() => {
                crate::systemd_notify::ping();
                continue;
            }
        };
        let span = tracing::info_span!("attempt", build = job.target.build);
        crate::systemd_notify::attempt(Some(job.target.build));
        let budget = crate::systemd_notify::attempt_budget(&agent.settings);
        let attempt = run_attempt(&agent, &job, &shutdown).instrument(span);
        let interrupted = crate::systemd_notify::keep_alive(budget, attempt).await;
        crate::systemd_notify::attempt(None);
        if interrupted {
            return;
        }
    }
}

/// One attempt from pre-checks to the record; true when shutdown interrupted it.
async fn run_attempt(agent: &Agent, job: &Job, shutdown: &CancellationToken) -> bool {
    let settings = &agent.settings;
    let target = &job.target;
    let clock = Instant::now();
    let mut record = Attempt {
        build: target.build,
        path: Some(target.path.clone()),
        source: job.source,
        outcome: Outcome::Failed,
        reboot: Reboot::None,
        error: None,
        started_at: now(),
        finished_at: now(),
        checks: Vec::new(),
    };
    tracing::info!(path = %target.path, source = ?job.source, force = job.force, "attempt started");

    agent.phase.set(Phase::PreChecking);
    let pre = crate::health::run_phase(
        &rollback::checks(settings, false),
        settings.health_checks.deadline,
    )
    .await;
    let failed = first_failure("pre-check", &pre);
    record.checks = pre;
    if let Some(error) = failed {
        record.outcome = Outcome::Unhealthy;
        record.error = Some(error);
        finish(agent, record, clock);
        return false;
    }

    let previous_system =
        resolve_link(&settings.system.current_system).map(|p| p.display().to_string());
    let on_host = if settings.operation.is_live() {
        previous_system.clone()
    } else {
        resolve_link(&settings.system.system_profile).map(|p| p.display().to_string())
    };
    if !job.force && !settings.dry_run && on_host.as_deref() == Some(target.path.as_str()) {
        tracing::info!("the host already runs this system; nothing to activate");
        record.outcome = Outcome::Current;
        finish(agent, record, clock);
        return false;
    }

    let runner = CommandRunner {
        timeout: settings.activation_timeout,
        dry_run: settings.dry_run,
        cancel: shutdown.child_token(),
    };
    // Issue 14: gates before fetching (a metered link must not download), fetch and diff, then
    // the window and gates for what this activation turns out to be.
    let conditions = match prepare(agent, job, &runner, shutdown).await {
        Prepared::Go(conditions) => conditions,
        Prepared::Failed(error) => {
            record.error = Some(error);
            finish(agent, record, clock);
            return false;
        }
        Prepared::GaveWay => {
            agent.phase.set(Phase::Idle);
            agent.queue.finish(None, None);
            return false;
        }
        Prepared::Shutdown => return true,
    };

    let marker = InFlight {
        build: target.build,
        path: target.path.clone(),
        source: job.source,
        started_at: record.started_at,
        previous_system: previous_system.clone(),
        live: settings.operation.is_live(),
    };
    if let Err(e) = agent.store.update(|s| s.in_flight = Some(marker)) {
        record.error = Some(format!(
            "not activating: cannot record the attempt first: {e}"
        ));
        finish(agent, record, clock);
        return false;
    }

    agent.phase.set(Phase::Activating);
    let activated = activate::activate(settings, &runner, target, &conditions, |p| {
        agent.phase.set(p)
    })
    .await;
    let live = match activated {
        Ok(done) => {
            record.outcome = Outcome::Upgraded;
            record.reboot = done.reboot;
            done.live
        }
        Err(RunError::Cancelled { .. }) => {
            tracing::warn!(
                "agent stopping during activation; the attempt is settled at the next start"
            );
            return true;
        }
        // switch-to-configuration's exit 4: the new system is active, but some units failed.
        Err(e @ RunError::Exit { code: 4, .. })
            if settings.operation.is_live() && !settings.allow_reboot =>
        {
            record.error = Some(format!(
                "{e}: the new system is active but some units failed to start"
            ));
            true
        }
        Err(e) => {
            record.error = Some(e.to_string());
            false
        }
    };
    if live && !settings.dry_run {
        agent.phase.set(Phase::PostChecking);
        let post = rollback::post_checks(settings).await;
        let failed = first_failure("post-check", &post);
        record.checks.extend(post);
        if let Some(failure) = failed {
            agent.phase.set(Phase::RollingBack);
            let previous = resolve_previous(agent);
            let note = match rollback::roll_back(settings, &runner, previous.as_deref()).await {
                Ok(after) => {
                    record.outcome = Outcome::RolledBack;
                    let still = first_failure("after rollback, post-check", &after);
                    record.checks.extend(after);
                    still.map_or(failure.clone(), |still| format!("{failure}; {still}"))
                }
                Err(why) => {
                    record.outcome = Outcome::Failed;
                    format!("{failure}; {why}")
                }
            };
            record.error = Some(
                record
                    .error
                    .take()
                    .map_or(note.clone(), |e| format!("{e}; {note}")),
            );
        }
    }
    if let Some(gc) = settings.gc.filter(|_| record.outcome == Outcome::Upgraded) {
        gc::collect(&gc, &settings.system, &runner).await;
    }
    // Compared after any rollback: a system rolled back to runs the old unit again.
    let replaced = live
        && !settings.dry_run
        && self_update::own_unit_changed(
            &settings.system.unit,
            previous_system.as_deref().map(Path::new),
            &settings.system.current_system,
        );
    finish(agent, record, clock);
    if replaced {
        tracing::warn!(
            "the switch replaced the agent's own unit; exiting so systemd starts the new version"
        );
        shutdown.cancel();
        return true;
    }
    false
}

/// How the steps before activation ended.
enum Prepared {
    Go(activate::Conditions),
    /// The fetch failed (retried at the next poll or notification).
    Failed(String),
    /// A newer build was queued while this one waited.
    GaveWay,
    Shutdown,
}

/// Waits for the gates, fetches the target and logs the diff, compares switch inhibitors, then
/// waits for the window (unless boot-only) and the gates again.
async fn prepare(
    agent: &Agent,
    job: &Job,
    runner: &CommandRunner,
    shutdown: &CancellationToken,
) -> Prepared {
    let settings = &agent.settings;
    let superseded = || agent.queue.pending().is_some();
    let set_phase = |p| agent.phase.set(p);
    let gates = || gates::check_all(&settings.gates, &settings.system, runner);
    match wait::wait_until_open(gates, &agent.waiting, set_phase, superseded, shutdown).await {
        wait::WaitEnd::Open => {}
        wait::WaitEnd::Superseded => return Prepared::GaveWay,
        wait::WaitEnd::Shutdown => return Prepared::Shutdown,
    }
    agent.phase.set(Phase::Fetching);
    let target = job.target.path.as_str();
    if let Err(e) = fetch::fetch_and_diff(settings, runner, target, &agent.fetch).await {
        return Prepared::Failed(e.to_string());
    }
    let changed = if settings.dry_run {
        Vec::new()
    } else {
        let toplevel = settings
            .system
            .store_dir
            .join(Path::new(target).file_name().unwrap_or_default());
        inhibitors::compare(&settings.system.current_system, &toplevel)
    };
    let mut conditions = activate::Conditions {
        inhibitors: changed,
        now: wait::local_time_of_day(),
    };
    let boot_only = conditions.boot_only(settings);
    let may = || wait::may_activate(settings, runner, boot_only, wait::local_time_of_day());
    match wait::wait_until_open(may, &agent.waiting, set_phase, superseded, shutdown).await {
        wait::WaitEnd::Open => {}
        wait::WaitEnd::Superseded => return Prepared::GaveWay,
        wait::WaitEnd::Shutdown => return Prepared::Shutdown,
    }
    conditions.now = wait::local_time_of_day();
    Prepared::Go(conditions)
}

/// The system that ran before this attempt, as recorded in the in-flight marker.
fn resolve_previous(agent: &Agent) -> Option<String> {
    agent
        .store
        .snapshot()
        .in_flight
        .and_then(|f| f.previous_system)
}

/// "pre-check gateway (icmp) failed: no reply within 5s", for the first failed check.
fn first_failure(phase: &str, results: &[CheckResult]) -> Option<String> {
    results
        .iter()
        .find(|r| !r.passed)
        .map(|r| format!("{phase} {} ({}) failed: {}", r.name, r.kind, r.detail))
}

/// Records the attempt, moves `deployed` on success, clears the in-flight marker, frees the queue.
fn finish(agent: &Agent, mut record: Attempt, clock: Instant) {
    agent.phase.set(Phase::Idle);
    record.finished_at = now();
    let deployed = record
        .path
        .clone()
        .filter(|_| record.outcome.deploys())
        .map(|path| Deployed {
            build: record.build,
            path,
            at: record.finished_at,
        });
    let rolled_back = (record.outcome == Outcome::RolledBack).then_some(record.build);
    let duration_ms = u64::try_from(clock.elapsed().as_millis()).unwrap_or(u64::MAX);
    match &record.error {
        None => {
            tracing::info!(outcome = record.outcome.as_str(), reboot = ?record.reboot, duration_ms, "attempt finished")
        }
        Some(error) => {
            tracing::warn!(outcome = record.outcome.as_str(), error = %error, duration_ms, "attempt finished")
        }
    }
    agent.metrics.attempt_finished(&record);
    crate::hooks::after_attempt(agent, &record);
    let saved = agent.store.update(|s| {
        if let Some(d) = deployed.clone() {
            s.deployed = Some(d);
        }
        if let Some(build) = rolled_back {
            s.rolled_back.push(build);
        }
        s.in_flight = None;
        s.record(record);
    });
    if let Err(e) = saved {
        tracing::error!(error = %e, "cannot save state; the attempt is remembered until the agent stops");
    }
    agent.queue.finish(deployed.map(|d| d.build), rolled_back);
    let history = agent.store.snapshot().history;
    let was_deferred = reboot::deferred_in(history.iter().skip(1));
    reboot::recompute(&agent.settings.system, &history, was_deferred);
}

/// Settles an attempt that a stop or crash interrupted, from what the host runs now.
pub fn settle_interrupted(agent: &Agent) {
    let Some(flight) = agent.store.snapshot().in_flight else {
        return;
    };
    let system = &agent.settings.system;
    let running = resolve_link(&system.current_system);
    let profile = resolve_link(&system.system_profile);
    let landed = [running, profile]
        .iter()
        .any(|p| p.as_deref() == Some(Path::new(flight.path.as_str())));
    let (outcome, error) = if landed {
        (Outcome::Upgraded, None)
    } else {
        (
            Outcome::Failed,
            Some(
                "interrupted: the agent stopped during activation and the system did not change"
                    .to_owned(),
            ),
        )
    };
    tracing::warn!(
        build = flight.build,
        outcome = outcome.as_str(),
        "settled an attempt interrupted by a restart"
    );
    let record = Attempt {
        build: flight.build,
        path: Some(flight.path),
        source: flight.source,
        outcome,
        reboot: Reboot::None,
        error,
        started_at: flight.started_at,
        finished_at: now(),
        checks: Vec::new(),
    };
    finish(agent, record, Instant::now());
}

/// Follows a chain of symlinks (as `/nix/var/nix/profiles/system` is) without requiring the end
/// to exist; None when `path` is not a symlink at all.
pub fn resolve_link(path: &Path) -> Option<PathBuf> {
    let mut current = std::fs::read_link(path).ok().map(|t| join_link(path, t))?;
    for _ in 0..16 {
        match std::fs::read_link(&current) {
            Ok(next) => current = join_link(&current, next),
            Err(_) => return Some(current),
        }
    }
    None
}

fn join_link(link: &Path, target: PathBuf) -> PathBuf {
    if target.is_absolute() {
        target
    } else {
        link.parent()
            .map_or(target.clone(), |dir| dir.join(&target))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn resolves_profile_chains_to_dangling_ends() {
        let dir = tempfile::tempdir().unwrap();
        let profile = dir.path().join("system");
        symlink("system-42-link", &profile).unwrap();
        symlink(
            "/nix/store/abc-nixos-system-web1",
            dir.path().join("system-42-link"),
        )
        .unwrap();
        assert_eq!(
            resolve_link(&profile),
            Some(PathBuf::from("/nix/store/abc-nixos-system-web1"))
        );
        assert_eq!(resolve_link(&dir.path().join("absent")), None);
        let looped = dir.path().join("loop");
        symlink(&looped, &looped).unwrap();
        assert_eq!(resolve_link(&looped), None);
    }
}
