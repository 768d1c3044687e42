//! One attempt as explicit steps: pre-check → gates → fetch and diff → wait → activate → settle →
//! post-check → roll back → record (→ clean-up). Each step is small; a step that ends the attempt says how (`Stop`).

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use crate::exec::{CommandRunner, RunError};
use crate::model::{Attempt, CheckResult, InFlight, Job, Outcome, Phase, Reboot, now};
use crate::upgrade::activate::{self, Activated};
use crate::upgrade::wait::Waited;
use crate::upgrade::{Worker, fetch, gc, inhibitors, reboot, rollback, self_update, wait};

/// How an attempt left the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Take the next job.
    Next,
    /// The agent is stopping (a signal, or its own unit was replaced).
    Stop,
}

/// Why the steps ended early.
#[derive(Debug)]
pub enum Stop {
    /// The attempt is over with this outcome and error; it is recorded.
    Outcome(Outcome, String),
    /// The agent is stopping: nothing is recorded, the job or in-flight marker stays.
    Shutdown,
    /// A newer job replaced this one before it changed anything: nothing is recorded.
    GiveWay,
}

/// The attempt being made, and what it has found so far.
pub struct Attempting<'a> {
    pub worker: &'a Worker,
    pub record: Attempt,
    runner: CommandRunner,
    clock: Instant,
    /// What `current_system` ran before activation, for rollback and the self-update check.
    previous_system: Option<String>,
    /// Whether the running system changed (so post-checks, rollback and self-update apply).
    live: bool,
    /// switch-to-configuration's exit 4: switched, but some units failed to start.
    units_failed: bool,
    /// Switch inhibitors that differ between the running system and the fetched target.
    inhibitors: Vec<inhibitors::Change>,
}

/// Runs `job` from pre-checks to the record.
pub async fn run(worker: &Worker, job: &Job) -> Ended {
    let mut attempt = Attempting::new(worker, job);
    tracing::info!(path = %job.target.path, source = %job.source, force = job.force, "attempt started");
    match attempt.before_activation(job).await {
        Ok(true) => {}
        Ok(false) => return attempt.record().await,
        Err(stop) => return attempt.stop(stop).await,
    }
    let activated = match attempt.activate(job).await {
        Ok(activated) => activated,
        Err(stop) => return attempt.stop(stop).await,
    };
    if worker.settings.dry_run {
        attempt.record.outcome = Outcome::DryRun;
        return attempt.record().await;
    }
    attempt.record.outcome = if attempt.units_failed {
        Outcome::Failed
    } else {
        Outcome::Upgraded
    };
    attempt.record.reboot = activated.reboot;
    attempt.live = activated.live;
    attempt.after_activation().await
}

impl<'a> Attempting<'a> {
    fn new(worker: &'a Worker, job: &Job) -> Attempting<'a> {
        let settings = &worker.settings;
        Attempting {
            worker,
            record: Attempt {
                build: job.target.build,
                path: Some(job.target.path.clone()),
                source: job.source,
                outcome: Outcome::Failed,
                reboot: Reboot::None,
                error: None,
                started_at: now(),
                finished_at: now(),
                checks: Vec::new(),
            },
            runner: CommandRunner {
                timeout: settings.activation_timeout,
                dry_run: settings.dry_run,
                cancel: worker.shutdown.child_token(),
            },
            clock: Instant::now(),
            previous_system: crate::host::resolved(&settings.system.current_system),
            live: false,
            units_failed: false,
            inhibitors: Vec::new(),
        }
    }

    /// An attempt interrupted by a stop, picked up again at start from its in-flight marker.
    pub fn resume(worker: &'a Worker, flight: &InFlight) -> Attempting<'a> {
        let mut attempt = Attempting::new(
            worker,
            &Job {
                target: crate::model::Target {
                    build: flight.build,
                    path: flight.path.clone(),
                    flake: None,
                },
                source: flight.source,
                force: false,
                received_at: flight.started_at,
            },
        );
        attempt.record.started_at = flight.started_at;
        attempt.previous_system = flight.previous_system.clone();
        attempt.live = flight.live;
        attempt
    }

    /// Pre-checks, the nothing-to-do test, the gates, the fetch and closure diff, the switch
    /// inhibitors and the wait; false when the host already runs the target (outcome `current`).
    async fn before_activation(&mut self, job: &Job) -> Result<bool, Stop> {
        self.pre_check().await?;
        if self.host_runs(job) {
            tracing::info!("the host already runs this system; nothing to activate");
            self.record.outcome = Outcome::Current;
            return Ok(false);
        }
        // A closed gate (a metered link, a user logged in) holds back the download too.
        let gated = wait::until_open_before_fetch(self.worker, job).await?;
        self.fetch(job).await?;
        self.inhibitors = self.changed_inhibitors(job);
        if self.wait(job).await? == Waited::Some || gated == Waited::Some {
            // Hours may have passed: the host's health is judged again just before activating.
            self.pre_check().await?;
        }
        Ok(true)
    }

    /// Step: the pre-checks; any failure ends the attempt `unhealthy` with nothing run.
    async fn pre_check(&mut self) -> Result<(), Stop> {
        self.phase(Phase::PreChecking);
        let settings = &self.worker.settings;
        let checks =
            crate::health::phase_checks(&settings.health_checks, &settings.system.systemctl, false);
        let results = tokio::select! {
            results = crate::health::run_phase(&checks, settings.health_checks.deadline) => results,
            () = self.worker.shutdown.cancelled() => return Err(Stop::Shutdown),
        };
        self.checks("pre-check", results)
            .map_err(|failure| Stop::Outcome(Outcome::Unhealthy, failure))
    }

    /// Whether the host already runs (or, for `boot`, will boot) the target.
    fn host_runs(&self, job: &Job) -> bool {
        let settings = &self.worker.settings;
        if job.force || settings.dry_run {
            return false;
        }
        let on_host = if settings.operation.is_live() {
            self.previous_system.clone()
        } else {
            crate::host::resolved(&settings.system.system_profile)
        };
        on_host.as_deref() == Some(job.target.path.as_str())
    }

    /// Step: realise the target closure into the local store (phase `fetching`, progress in the
    /// status), then log the closure diff; a failed fetch ends the attempt `failed` (retried at
    /// the next poll or notification).
    async fn fetch(&mut self, job: &Job) -> Result<(), Stop> {
        self.phase(Phase::Fetching);
        let progress = self.worker.progress.clone();
        let report: fetch::Report = Arc::new(move |p| progress.set_fetch(p));
        let settings = &self.worker.settings;
        let target = job.target.path.as_str();
        match fetch::fetch_and_diff(settings, &self.runner, target, &report).await {
            Ok(()) => Ok(()),
            Err(_) if self.worker.shutdown.is_cancelled() => Err(Stop::Shutdown),
            Err(e) => Err(Stop::Outcome(Outcome::Failed, e.to_string())),
        }
    }

    /// Step: the switch inhibitors of the fetched target against the running system's.
    fn changed_inhibitors(&self, job: &Job) -> Vec<inhibitors::Change> {
        let system = &self.worker.settings.system;
        if self.worker.settings.dry_run {
            return Vec::new();
        }
        let name = Path::new(job.target.path.as_str())
            .file_name()
            .unwrap_or_default();
        inhibitors::compare(&system.current_system, &system.store_dir.join(name))
    }

    /// Step: hold the attempt in `waiting` while a window, gate or wave says not yet.
    async fn wait(&mut self, job: &Job) -> Result<Waited, Stop> {
        wait::until_open(self.worker, job).await
    }

    /// Step: the in-flight marker (durable first), then nixos-rebuild and the reboot decision.
    async fn activate(&mut self, job: &Job) -> Result<Activated, Stop> {
        let settings = &self.worker.settings;
        let marker = InFlight {
            build: job.target.build,
            path: job.target.path.clone(),
            source: job.source,
            started_at: self.record.started_at,
            previous_system: self.previous_system.clone(),
            live: inhibitors::effective_operation(settings.operation, &self.inhibitors).is_live(),
        };
        if !settings.dry_run
            && let Err(e) = self.worker.ledger.begin_activation(marker).await
        {
            return Err(Stop::Outcome(
                Outcome::Failed,
                format!("not activating: cannot record the attempt first: {e}"),
            ));
        }
        self.phase(Phase::Activating);
        let progress = &self.worker.progress;
        let conditions = activate::Conditions {
            inhibitors: self.inhibitors.clone(),
            now: reboot::local_time_of_day(),
        };
        match activate::activate(settings, &self.runner, &job.target, &conditions, |p| {
            progress.set_phase(p)
        })
        .await
        {
            Ok(activated) => Ok(activated),
            Err(RunError::Cancelled { .. }) => Err(Stop::Shutdown),
            // switch-to-configuration's exit 4: the new system is active, but some units failed.
            Err(e @ RunError::Exit { code: 4, .. })
                if settings.operation.is_live() && !settings.allow_reboot =>
            {
                self.add_error(format!(
                    "{e}: the new system is active but some units failed to start"
                ));
                self.units_failed = true;
                Ok(Activated {
                    reboot: Reboot::None,
                    live: true,
                })
            }
            Err(e) => Err(Stop::Outcome(Outcome::Failed, e.to_string())),
        }
    }

    /// Settle, post-check, roll back on failure, record. Also the way an interrupted attempt
    /// whose switch reached its target is finished at start.
    pub async fn after_activation(mut self) -> Ended {
        if !self.live || self.record.outcome == Outcome::Interrupted {
            return self.record().await;
        }
        let failure = match self.settle_and_post_check().await {
            Ok(failure) => failure,
            Err(stop) => return self.stop(stop).await,
        };
        if let Some(failure) = failure {
            self.roll_back(failure).await;
        }
        self.record().await
    }

    /// Steps: settle (let units start), then the post-checks; the first failure, if any.
    async fn settle_and_post_check(&mut self) -> Result<Option<String>, Stop> {
        let settings = &self.worker.settings;
        let checks =
            crate::health::phase_checks(&settings.health_checks, &settings.system.systemctl, true);
        if checks.is_empty() {
            return Ok(None);
        }
        self.phase(Phase::Settling);
        tokio::select! {
            () = tokio::time::sleep(settings.health_checks.settle) => {}
            () = self.worker.shutdown.cancelled() => return Err(Stop::Shutdown),
        }
        self.phase(Phase::PostChecking);
        let results = tokio::select! {
            results = crate::health::run_phase(&checks, settings.health_checks.deadline) => results,
            () = self.worker.shutdown.cancelled() => return Err(Stop::Shutdown),
        };
        Ok(self.checks("post-check", results).err())
    }

    /// Step: back to the system that ran before; outcome `rolled-back`, or `failed` when that
    /// is impossible.
    async fn roll_back(&mut self, failure: String) {
        self.phase(Phase::RollingBack);
        let settings = &self.worker.settings;
        let previous = self.previous_system.clone();
        match rollback::roll_back(settings, &self.runner, previous.as_deref()).await {
            Ok(after) => {
                self.record.outcome = Outcome::RolledBack;
                let still = self.checks("after rollback, post-check", after).err();
                self.add_error(still.map_or(failure.clone(), |s| format!("{failure}; {s}")));
            }
            Err(why) => {
                self.record.outcome = Outcome::Failed;
                self.add_error(format!("{failure}; {why}"));
            }
        }
    }

    /// Ends early: a recorded outcome, or nothing recorded for a stop or a newer job.
    async fn stop(mut self, stop: Stop) -> Ended {
        match stop {
            Stop::Outcome(outcome, error) => {
                self.record.outcome = outcome;
                self.add_error(error);
                self.record().await
            }
            Stop::Shutdown => {
                tracing::warn!("agent stopping mid-attempt; it is settled at the next start");
                Ended::Stop
            }
            Stop::GiveWay => {
                tracing::info!("a newer build was queued while waiting; this one gives way");
                self.worker.ledger.give_way().await;
                self.worker.progress.set_phase(Phase::Idle);
                Ended::Next
            }
        }
    }

    /// Step: the record — ledger, metrics, log, hooks (a settled outcome only), and the
    /// self-update check after a live switch.
    async fn record(mut self) -> Ended {
        let worker = self.worker;
        worker.progress.set_phase(Phase::Idle);
        self.record.finished_at = now();
        let record = self.record;
        let duration_ms = u64::try_from(self.clock.elapsed().as_millis()).unwrap_or(u64::MAX);
        match &record.error {
            None => {
                tracing::info!(outcome = %record.outcome, reboot = %record.reboot, duration_ms, "attempt finished")
            }
            Some(error) => {
                tracing::warn!(outcome = %record.outcome, reboot = %record.reboot, error = %error, duration_ms, "attempt finished")
            }
        }
        worker.metrics.attempt_finished(&record);
        worker.hooks.after_attempt(&record);
        let upgraded = record.outcome == Outcome::Upgraded;
        if let Err(e) = worker.ledger.finish(record).await {
            tracing::error!(error = %e, "cannot save the attempt");
        }
        let settings = &worker.settings;
        if let Some(gc) = settings.gc.filter(|_| upgraded && !settings.dry_run) {
            gc::collect(&gc, &settings.system, &self.runner).await;
        }
        let history = worker.ledger.snapshot().history;
        let was_deferred = reboot::deferred_in(history.iter().skip(1));
        reboot::recompute(&settings.system, &history, was_deferred);
        // Compared after any rollback: a system rolled back to runs the old unit again.
        let replaced = self.live
            && !settings.dry_run
            && self_update::own_unit_changed(
                &settings.system.unit,
                self.previous_system.as_deref().map(Path::new),
                &settings.system.current_system,
            );
        if replaced {
            tracing::warn!(
                "the switch replaced the agent's own unit; exiting so systemd starts the new version"
            );
            let hooks_bound = settings.hooks.timeout.saturating_mul(2);
            worker.hooks.drain(hooks_bound).await;
            worker.shutdown.cancel();
            return Ended::Stop;
        }
        Ended::Next
    }

    fn phase(&self, phase: Phase) {
        self.worker.progress.set_phase(phase);
    }

    /// Keeps `results`; the first failure as "pre-check gateway (icmp) failed: …".
    fn checks(&mut self, what: &str, results: Vec<CheckResult>) -> Result<(), String> {
        let failure = results
            .iter()
            .find(|r| !r.passed)
            .map(|r| format!("{what} {} ({}) failed: {}", r.name, r.kind, r.detail));
        self.record.checks.extend(results);
        failure.map_or(Ok(()), Err)
    }

    fn add_error(&mut self, error: String) {
        self.record.error = Some(match self.record.error.take() {
            Some(earlier) => format!("{earlier}; {error}"),
            None => error,
        });
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    //! Each step against a recording stand-in for nixos-rebuild (a script that writes its argv
    //! and moves the fake `current-system` link, as a switch would) and a ledger in a temp dir.
    use super::*;
    use crate::config::Settings;
    use crate::hooks::Hooks;
    use crate::ledger::Ledger;
    use crate::metrics::Metrics;
    use crate::model::{Source, StorePath, Target, Verdict, WaitingFor};
    use crate::progress::Progress;
    use crate::upgrade::wait::Condition;
    use futures_util::future::BoxFuture;
    use jiff::Timestamp;
    use std::path::PathBuf;
    use std::sync::Arc;
    use std::time::Duration;
    use tokio_util::sync::CancellationToken;
    use tokio_util::task::TaskTracker;

    const OLD: &str = "/nix/store/00000000000000000000000000000000-nixos-system-web1-old";
    const REBUILD: &str = "#!/bin/sh\ndir=$(dirname \"$0\")\necho \"$*\" >> \"$dir/calls\"\n\
        op=$1; shift\ncase \"$op\" in switch|test) ln -sfn \"$2\" \"$dir/current-system\" ;; esac\n";

    fn path(build: u64) -> StorePath {
        StorePath::parse(&format!("/nix/store/{build:0>32}-nixos-system-web1")).unwrap()
    }

    fn job(build: u64) -> Job {
        Job {
            target: Target {
                build,
                path: path(build),
                flake: None,
            },
            source: Source::Hydra,
            force: false,
            received_at: now(),
        }
    }

    struct Rig {
        dir: tempfile::TempDir,
        worker: Worker,
    }

    impl Rig {
        fn calls(&self) -> Vec<String> {
            std::fs::read_to_string(self.dir.path().join("calls"))
                .unwrap_or_default()
                .lines()
                .map(str::to_owned)
                .collect()
        }

        fn current(&self) -> PathBuf {
            std::fs::read_link(self.dir.path().join("current-system")).unwrap()
        }
    }

    fn rig(extra: &str, conditions: Vec<Box<dyn Condition>>) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let rebuild = root.join("nixos-rebuild");
        std::fs::write(&rebuild, REBUILD).unwrap();
        std::fs::set_permissions(
            &rebuild,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        std::os::unix::fs::symlink(OLD, root.join("current-system")).unwrap();
        let d = root.display();
        let text = format!(
            "host = \"web1\"\n{extra}\n[hydra]\ninstance = \"http://127.0.0.1:9\"\nproject = \"p\"\njobset = \"j\"\n\
             [system]\nnixos_rebuild = \"{d}/nixos-rebuild\"\ncurrent_system = \"{d}/current-system\"\n\
             booted_system = \"{d}/current-system\"\nsystem_profile = \"{d}/current-system\"\n\
             nix = \"{d}/no-nix\"\nswitch_lock = \"{d}/switch.lock\"\n"
        );
        let settings =
            Arc::new(Settings::from_toml(&text, std::path::Path::new("t.toml")).unwrap());
        let shutdown = CancellationToken::new();
        let metrics = Arc::new(Metrics::new());
        let hooks = Hooks::start(
            settings.hooks.clone(),
            "web1".into(),
            "http://127.0.0.1:9".into(),
            metrics.hook_counter(),
            &TaskTracker::new(),
            shutdown.clone(),
        );
        let worker = Worker {
            ledger: Arc::new(Ledger::open(&root.join("state")).unwrap().0),
            progress: Arc::new(Progress::default()),
            metrics,
            hooks,
            conditions,
            shutdown,
            settings,
        };
        Rig { dir, worker }
    }

    const POST_CHECK: &str = "[health_checks]\nsettle = \"0s\"\n[[health_checks.post]]\nkind = \"command\"\nname = \"app\"\nretries = 0\nargv = [\"CMD\"]\n";

    #[tokio::test]
    async fn a_failing_pre_check_runs_nothing() {
        let rig = rig(
            "[[health_checks.pre]]\nkind = \"command\"\nname = \"gate\"\nretries = 0\nargv = [\"false\"]\n",
            vec![],
        );
        assert_eq!(run(&rig.worker, &job(7)).await, Ended::Next);
        let state = rig.worker.ledger.snapshot();
        let last = state.history.front().unwrap();
        assert_eq!(last.outcome, Outcome::Unhealthy);
        assert!(
            last.error
                .as_deref()
                .unwrap()
                .contains("pre-check gate (command) failed")
        );
        assert!(rig.calls().is_empty() && state.in_flight.is_none() && state.deployed.is_none());
    }

    #[tokio::test]
    async fn a_host_that_runs_the_target_is_current() {
        let rig = rig("", vec![]);
        std::fs::remove_file(rig.dir.path().join("current-system")).unwrap();
        std::os::unix::fs::symlink(path(7).as_str(), rig.dir.path().join("current-system"))
            .unwrap();
        run(&rig.worker, &job(7)).await;
        let state = rig.worker.ledger.snapshot();
        assert_eq!(state.history.front().unwrap().outcome, Outcome::Current);
        assert_eq!(state.deployed.unwrap().build, 7);
        assert!(rig.calls().is_empty());
    }

    #[tokio::test]
    async fn a_switch_is_recorded_upgraded_and_the_marker_cleared() {
        let rig = rig("", vec![]);
        run(&rig.worker, &job(7)).await;
        assert_eq!(
            rig.calls(),
            [format!("switch --store-path {} --no-reexec", path(7))]
        );
        let state = rig.worker.ledger.snapshot();
        assert_eq!(state.history.front().unwrap().outcome, Outcome::Upgraded);
        assert_eq!(state.deployed.unwrap().build, 7);
        assert!(state.in_flight.is_none() && state.running.is_none());
    }

    #[tokio::test]
    async fn a_failing_post_check_rolls_back_to_the_previous_system() {
        let rig = rig(&POST_CHECK.replace("CMD", "false"), vec![]);
        run(&rig.worker, &job(7)).await;
        let state = rig.worker.ledger.snapshot();
        let last = state.history.front().unwrap();
        assert_eq!(last.outcome, Outcome::RolledBack, "{last:?}");
        assert_eq!(state.rolled_back, [7]);
        assert!(state.deployed.is_none());
        assert_eq!(
            rig.calls()[1],
            format!("switch --store-path {OLD} --no-reexec")
        );
        assert_eq!(rig.current(), PathBuf::from(OLD));
    }

    #[tokio::test]
    async fn a_dry_run_runs_nothing_and_deploys_nothing() {
        let rig = rig("dry_run = true", vec![]);
        run(&rig.worker, &job(7)).await;
        let state = rig.worker.ledger.snapshot();
        assert_eq!(state.history.front().unwrap().outcome, Outcome::DryRun);
        assert!(state.deployed.is_none() && rig.calls().is_empty());
    }

    /// A condition that is always closed.
    struct Closed(Option<Duration>);

    impl Condition for Closed {
        fn check<'a>(&'a self, _: &'a Job, _: Timestamp) -> BoxFuture<'a, Verdict> {
            Box::pin(async {
                Verdict::Closed {
                    what: WaitingFor::Window,
                    detail: "outside 02:00-04:00".into(),
                    recheck: Duration::from_secs(3600),
                }
            })
        }

        fn timeout(&self) -> Option<Duration> {
            self.0
        }
    }

    #[tokio::test]
    async fn a_waiting_attempt_gives_way_to_a_newer_job() {
        let rig = rig("", vec![Box::new(Closed(None))]);
        let ledger = rig.worker.ledger.clone();
        ledger.offer(job(7)).await;
        let taken = ledger.next().await;
        let attempt = run(&rig.worker, &taken);
        let newer = async {
            while rig.worker.progress.live().waiting.is_none() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            ledger.offer(job(8)).await
        };
        let (ended, _) = tokio::join!(attempt, newer);
        assert_eq!(ended, Ended::Next);
        let state = ledger.snapshot();
        assert!(
            state.history.is_empty() && state.running.is_none(),
            "{state:?}"
        );
        assert_eq!(state.pending.unwrap().target.build, 8);
        assert!(rig.calls().is_empty());
    }

    #[tokio::test]
    async fn a_wave_that_never_opens_ends_deferred_timeout() {
        let rig = rig("", vec![Box::new(Closed(Some(Duration::ZERO)))]);
        run(&rig.worker, &job(7)).await;
        let last = rig
            .worker
            .ledger
            .snapshot()
            .history
            .front()
            .cloned()
            .unwrap();
        assert_eq!(last.outcome, Outcome::DeferredTimeout);
        assert!(rig.calls().is_empty());
    }
}
