//! The one owner of what the agent has done and will do (`state.json`, SPEC §7): deployed build,
//! rolled-back builds, the pending and running job, the attempt in flight, the history and the
//! last poll. Memory and disk change together; a failed write keeps memory true and is shown.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::model::{Attempt, Deployed, InFlight, Job, Outcome};
use crate::queue::{self, Decision, Standing};

/// How many attempts `history` keeps.
pub const HISTORY_LEN: usize = 20;
const STATE_FILE: &str = "state.json";
const LOCK_FILE: &str = "lock";

/// What the last scheduled poll found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Poll {
    pub at: Timestamp,
    /// "queued build 4830", "up to date: build 4830 is already deployed", "hydra unavailable: …".
    pub result: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PersistedState {
    #[serde(default)]
    pub deployed: Option<Deployed>,
    /// Verified and waiting for the worker.
    #[serde(default)]
    pub pending: Option<Job>,
    /// Taken by the worker; before activation a restart queues it again.
    #[serde(default)]
    pub running: Option<Job>,
    #[serde(default)]
    pub in_flight: Option<InFlight>,
    /// Newest first, at most `HISTORY_LEN`.
    #[serde(default)]
    pub history: VecDeque<Attempt>,
    #[serde(default, deserialize_with = "poll_or_timestamp")]
    pub last_poll: Option<Poll>,
    /// Builds whose post-checks failed and were rolled back: never retried without force.
    #[serde(default)]
    pub rolled_back: Vec<u64>,
    /// Set when an unreadable state file was moved aside: until a deployed build is known
    /// again, only Hydra's newest build (or a forced request) is accepted (see `recovery.rs`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deployed_unknown: bool,
}

impl PersistedState {
    fn record(&mut self, attempt: Attempt) {
        self.history.push_front(attempt);
        self.history.truncate(HISTORY_LEN);
    }

    fn standing(&self) -> Standing<'_> {
        Standing {
            deployed: self.deployed.as_ref().map(|d| d.build),
            running: self
                .running
                .as_ref()
                .map(|j| j.target.build)
                .or(self.in_flight.as_ref().map(|f| f.build)),
            pending: self.pending.as_ref().map(|j| j.target.build),
            rolled_back: &self.rolled_back,
        }
    }
}

/// Earlier versions kept `last_poll` as a bare timestamp.
fn poll_or_timestamp<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Poll>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        Poll(Poll),
        At(Timestamp),
    }
    Ok(match Option::<Either>::deserialize(d)? {
        Some(Either::Poll(poll)) => Some(poll),
        Some(Either::At(at)) => Some(Poll {
            at,
            result: "unknown".into(),
        }),
        None => None,
    })
}

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("state directory {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "another nixos-hydra-upgrade agent holds {0}; stop it first or give this one another state_dir"
    )]
    Locked(PathBuf),
    #[error("cannot write {path}: {message}; the agent keeps the record in memory until it stops")]
    Write { path: PathBuf, message: String },
}

/// What `open` found on disk, for the start-up log.
#[derive(Debug, PartialEq, Eq)]
pub enum Loaded {
    Fresh,
    Existing,
    /// The file was unreadable and moved to this path; the agent starts from nothing.
    MovedAside {
        to: PathBuf,
        reason: String,
    },
}

struct Inner {
    state: PersistedState,
    /// Bumped by every change; the disk holds `written`.
    version: u64,
    write_error: Option<String>,
}

pub struct Ledger {
    dir: PathBuf,
    inner: Mutex<Inner>,
    /// The version on disk; held while writing, so writes land in order.
    written: tokio::sync::Mutex<u64>,
    /// Woken when a job is offered.
    offered: Notify,
    _lock: File,
}

impl Ledger {
    /// Takes the state directory's lock and reads the state; a job that was taken but never
    /// reached activation is queued again.
    pub fn open(dir: &Path) -> Result<(Ledger, Loaded), LedgerError> {
        let io = |source| LedgerError::Io {
            path: dir.to_owned(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let lock_path = dir.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Err(LedgerError::Locked(lock_path)),
            Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
        }
        let path = dir.join(STATE_FILE);
        let parsed = match std::fs::read(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => Some(Err(format!("cannot read it: {e}"))),
            Ok(bytes) => Some(serde_json::from_slice(&bytes).map_err(|e| e.to_string())),
        };
        let (mut state, loaded) = match parsed {
            None => (PersistedState::default(), Loaded::Fresh),
            Some(Ok(state)) => (state, Loaded::Existing),
            Some(Err(reason)) => {
                let to = dir.join(format!(
                    "{STATE_FILE}.corrupt-{}",
                    Timestamp::now().as_second()
                ));
                std::fs::rename(&path, &to).map_err(io)?;
                // Written at once, so a restart before anything else is saved keeps the guard.
                let state = PersistedState {
                    deployed_unknown: true,
                    ..PersistedState::default()
                };
                write_atomically(dir, &state).map_err(io)?;
                (state, Loaded::MovedAside { to, reason })
            }
        };
        requeue_unstarted(&mut state);
        let ledger = Ledger {
            dir: dir.to_owned(),
            inner: Mutex::new(Inner {
                state,
                version: 1,
                write_error: None,
            }),
            written: tokio::sync::Mutex::new(0),
            offered: Notify::new(),
            _lock: lock,
        };
        Ok((ledger, loaded))
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn snapshot(&self) -> PersistedState {
        self.lock().state.clone()
    }

    /// Why the last write failed, while the disk is behind memory.
    pub fn write_error(&self) -> Option<String> {
        self.lock().write_error.clone()
    }

    /// Whether a request for `build` deserves a question to Hydra (SPEC §6 queue rules).
    pub fn decide(&self, build: u64, force: bool) -> Decision {
        queue::decide(&self.lock().state.standing(), build, force)
    }

    /// Queues a verified job unless the ledger moved on while Hydra was asked.
    pub async fn offer(&self, job: Job) -> Decision {
        let decision = {
            let mut inner = self.lock();
            let decision = queue::decide(&inner.state.standing(), job.target.build, job.force);
            if decision == Decision::Proceed {
                inner.state.pending = Some(job);
                inner.version += 1;
            }
            decision
        };
        if decision == Decision::Proceed {
            self.offered.notify_one();
            self.persist_logged("the queued job").await;
        }
        decision
    }

    /// Waits for a pending job and marks it running.
    pub async fn next(&self) -> Job {
        loop {
            let notified = self.offered.notified();
            if let Some(job) = self.take_pending() {
                self.persist_logged("the job taken").await;
                return job;
            }
            notified.await;
        }
    }

    fn take_pending(&self) -> Option<Job> {
        let mut inner = self.lock();
        let job = inner.state.pending.take()?;
        inner.state.running = Some(job.clone());
        inner.version += 1;
        Some(job)
    }

    /// Whether a job waits behind the running one (it replaces a waiting attempt).
    pub fn has_pending(&self) -> bool {
        self.lock().state.pending.is_some()
    }

    /// Resolves when a job is offered (for a waiting attempt to give way).
    pub async fn offered(&self) {
        self.offered.notified().await;
    }

    /// Written to disk before activation starts; on a write error memory is put back, so the
    /// caller can refuse to activate what a crash would not know about.
    pub async fn begin_activation(&self, marker: InFlight) -> Result<(), LedgerError> {
        self.change(|s| s.in_flight = Some(marker));
        let written = self.persist().await;
        if written.is_err() {
            self.change(|s| s.in_flight = None);
            self.persist_logged("the cleared in-flight marker").await;
        }
        written
    }

    /// Records a settled attempt: history, deployed build, rolled-back builds; frees the worker.
    pub async fn finish(&self, attempt: Attempt) -> Result<(), LedgerError> {
        self.change(|s| {
            if attempt.outcome.deploys()
                && let Some(path) = attempt.path.clone()
            {
                s.deployed = Some(Deployed {
                    build: attempt.build,
                    path,
                    at: attempt.finished_at,
                });
                s.deployed_unknown = false;
            }
            if attempt.outcome == Outcome::RolledBack && !s.rolled_back.contains(&attempt.build) {
                s.rolled_back.push(attempt.build);
            }
            s.running = None;
            s.in_flight = None;
            s.record(attempt);
        });
        self.persist().await
    }

    /// The running job gave way to a newer one before it changed anything: no record.
    pub async fn give_way(&self) {
        self.change(|s| s.running = None);
        self.persist_logged("the superseded job").await;
    }

    pub async fn record_poll(&self, poll: Poll) {
        self.change(|s| s.last_poll = Some(poll));
        self.persist_logged("the poll result").await;
    }

    /// The deployed build, learned after it was unknown (state moved aside); never lowers it.
    pub async fn learn_deployed(&self, deployed: Deployed) -> Result<(), LedgerError> {
        self.change(|s| {
            if s.deployed.as_ref().is_none_or(|d| d.build < deployed.build) {
                s.deployed = Some(deployed);
            }
            s.deployed_unknown = false;
        });
        self.persist().await
    }

    fn change(&self, change: impl FnOnce(&mut PersistedState)) {
        let mut inner = self.lock();
        change(&mut inner.state);
        inner.version += 1;
    }

    async fn persist_logged(&self, what: &str) {
        if let Err(e) = self.persist().await {
            tracing::error!(error = %e, "cannot save {what}");
        }
    }

    /// Writes the newest state unless a later write already did; off the runtime thread.
    async fn persist(&self) -> Result<(), LedgerError> {
        let mut written = self.written.lock().await;
        let (state, version) = {
            let inner = self.lock();
            (inner.state.clone(), inner.version)
        };
        if version <= *written {
            return match self.write_error() {
                None => Ok(()),
                Some(message) => Err(self.write_failed(message)),
            };
        }
        let dir = self.dir.clone();
        let result = tokio::task::spawn_blocking(move || write_atomically(&dir, &state))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        *written = version;
        let mut inner = self.lock();
        match result {
            Ok(()) => {
                inner.write_error = None;
                Ok(())
            }
            Err(e) => {
                inner.write_error = Some(e.to_string());
                Err(self.write_failed(e.to_string()))
            }
        }
    }

    fn write_failed(&self, message: String) -> LedgerError {
        LedgerError::Write {
            path: self.dir.join(STATE_FILE),
            message,
        }
    }
}

/// A job taken before a stop but never activated is simply queued again (unless a newer one
/// waits); one that reached activation is settled from `in_flight` instead.
fn requeue_unstarted(state: &mut PersistedState) {
    let Some(job) = state.running.take() else {
        return;
    };
    if state.in_flight.is_some() {
        return;
    }
    let newer_waits = state
        .pending
        .as_ref()
        .is_some_and(|p| p.target.build >= job.target.build);
    if !newer_waits {
        state.pending = Some(job);
    }
}

/// Write a temp file, fsync it, rename it over the old one, fsync the directory.
fn write_atomically(dir: &Path, state: &PersistedState) -> std::io::Result<()> {
    let bytes = serde_json::to_vec_pretty(state).map_err(std::io::Error::other)?;
    let tmp = dir.join(format!("{STATE_FILE}.tmp"));
    let mut file = File::create(&tmp)?;
    file.write_all(&bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, dir.join(STATE_FILE))?;
    File::open(dir)?.sync_all()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::model::{Reboot, Source, StorePath, Target, now};

    fn path(build: u64) -> StorePath {
        StorePath::parse(&format!(
            "/nix/store/00000000000000000000000000000000-system-{build}"
        ))
        .unwrap()
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

    fn attempt(build: u64, outcome: Outcome) -> Attempt {
        Attempt {
            build,
            path: Some(path(build)),
            source: Source::Hydra,
            outcome,
            reboot: Reboot::None,
            error: None,
            started_at: now(),
            finished_at: now(),
            checks: vec![],
        }
    }

    fn marker(build: u64) -> InFlight {
        InFlight {
            build,
            path: path(build),
            source: Source::Hydra,
            started_at: now(),
            previous_system: None,
            live: true,
        }
    }

    #[tokio::test]
    async fn survives_reopen_and_keeps_history_bounded() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (ledger, loaded) = Ledger::open(dir.path()).unwrap();
            assert_eq!(loaded, Loaded::Fresh);
            for build in 1..=25 {
                ledger
                    .finish(attempt(build, Outcome::Upgraded))
                    .await
                    .unwrap();
            }
        }
        let (ledger, loaded) = Ledger::open(dir.path()).unwrap();
        assert_eq!(loaded, Loaded::Existing);
        let state = ledger.snapshot();
        assert_eq!(state.history.len(), HISTORY_LEN);
        assert_eq!(state.history.front().unwrap().build, 25);
        assert_eq!(state.deployed.unwrap().build, 25);
    }

    #[tokio::test]
    async fn outcomes_that_do_not_deploy_leave_deployed_alone() {
        let dir = tempfile::tempdir().unwrap();
        let (ledger, _) = Ledger::open(dir.path()).unwrap();
        ledger.finish(attempt(5, Outcome::Upgraded)).await.unwrap();
        for outcome in [
            Outcome::DryRun,
            Outcome::Failed,
            Outcome::Unhealthy,
            Outcome::Interrupted,
            Outcome::DeferredTimeout,
            Outcome::RolledBack,
        ] {
            ledger.finish(attempt(6, outcome)).await.unwrap();
            assert_eq!(ledger.snapshot().deployed.unwrap().build, 5, "{outcome}");
        }
        assert_eq!(ledger.snapshot().rolled_back, [6]);
        assert_eq!(
            ledger.decide(6, false),
            queue::Decision::Refused(
                "build 6 failed its post-checks and was rolled back; use force to retry it".into()
            )
        );
        assert_eq!(ledger.decide(7, false), queue::Decision::Proceed);
    }

    #[tokio::test]
    async fn the_queue_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (ledger, _) = Ledger::open(dir.path()).unwrap();
            assert_eq!(ledger.offer(job(7)).await, Decision::Proceed);
            assert_eq!(ledger.next().await.target.build, 7);
            assert_eq!(ledger.offer(job(8)).await, Decision::Proceed);
        }
        // 7 was taken but never activated, 8 waits: 8 goes first, 7 is superseded.
        let (ledger, _) = Ledger::open(dir.path()).unwrap();
        let state = ledger.snapshot();
        assert_eq!(state.pending.as_ref().unwrap().target.build, 8);
        assert!(state.running.is_none());
        drop(ledger);
        let dir = tempfile::tempdir().unwrap();
        {
            let (ledger, _) = Ledger::open(dir.path()).unwrap();
            ledger.offer(job(9)).await;
            ledger.next().await;
        }
        let (ledger, _) = Ledger::open(dir.path()).unwrap();
        assert_eq!(ledger.snapshot().pending.unwrap().target.build, 9);
    }

    #[tokio::test]
    async fn a_job_that_reached_activation_is_left_to_settle() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (ledger, _) = Ledger::open(dir.path()).unwrap();
            ledger.offer(job(7)).await;
            ledger.next().await;
            ledger.begin_activation(marker(7)).await.unwrap();
        }
        let (ledger, _) = Ledger::open(dir.path()).unwrap();
        let state = ledger.snapshot();
        assert!(state.pending.is_none() && state.running.is_none());
        assert_eq!(state.in_flight.unwrap().build, 7);
        assert!(matches!(ledger.decide(7, false), Decision::Current(_)));
    }

    #[tokio::test]
    async fn a_failed_write_keeps_memory_true_and_is_shown() {
        let dir = tempfile::tempdir().unwrap();
        let (ledger, _) = Ledger::open(dir.path()).unwrap();
        ledger.finish(attempt(5, Outcome::Upgraded)).await.unwrap();
        // A directory where the temp file goes makes every write fail, as a full disk would.
        std::fs::create_dir(dir.path().join("state.json.tmp")).unwrap();
        ledger.offer(job(6)).await;
        ledger.next().await;
        let err = ledger.begin_activation(marker(6)).await.unwrap_err();
        assert!(err.to_string().contains("state.json"), "{err}");
        assert!(
            ledger.snapshot().in_flight.is_none(),
            "not activating what a crash would not know"
        );
        let err = ledger
            .finish(attempt(6, Outcome::Failed))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("in memory"), "{err}");
        let state = ledger.snapshot();
        assert_eq!(
            state.history.front().unwrap().build,
            6,
            "shown though not saved"
        );
        assert!(ledger.write_error().is_some());
        std::fs::remove_dir(dir.path().join("state.json.tmp")).unwrap();
        ledger
            .record_poll(Poll {
                at: now(),
                result: "ok".into(),
            })
            .await;
        assert!(ledger.write_error().is_none());
        let on_disk: PersistedState =
            serde_json::from_slice(&std::fs::read(dir.path().join(STATE_FILE)).unwrap()).unwrap();
        assert_eq!(on_disk.history.front().unwrap().build, 6);
    }

    #[test]
    fn second_open_is_refused_while_locked() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Ledger::open(dir.path()).unwrap();
        let err = Ledger::open(dir.path()).err().unwrap();
        assert!(matches!(err, LedgerError::Locked(_)), "{err}");
    }

    #[test]
    fn corrupt_file_is_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(STATE_FILE), b"{\"deployed\": {\"bui").unwrap();
        let (ledger, loaded) = Ledger::open(dir.path()).unwrap();
        let Loaded::MovedAside { to, .. } = loaded else {
            panic!("expected MovedAside, got {loaded:?}");
        };
        assert!(to.exists());
        let state = ledger.snapshot();
        assert!(state.deployed_unknown && state.deployed.is_none());
        drop(ledger);
        let (ledger, loaded) = Ledger::open(dir.path()).unwrap();
        assert_eq!(loaded, Loaded::Existing);
        assert!(
            ledger.snapshot().deployed_unknown,
            "the guard survives a restart"
        );
    }

    #[test]
    fn reads_the_earlier_last_poll_timestamp() {
        let state: PersistedState =
            serde_json::from_str(r#"{"last_poll": "2026-11-25T04:40:00Z"}"#).unwrap();
        assert_eq!(state.last_poll.unwrap().result, "unknown");
    }
}
