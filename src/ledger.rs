//! What the agent remembers across restarts (`state.json`, SPEC §7), and the lock that keeps it to one agent.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::model::{Attempt, Deployed, InFlight};

/// How many attempts `history` keeps.
pub const HISTORY_LEN: usize = 20;
const STATE_FILE: &str = "state.json";
const LOCK_FILE: &str = "lock";

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PersistedState {
    #[serde(default)]
    pub deployed: Option<Deployed>,
    #[serde(default)]
    pub in_flight: Option<InFlight>,
    /// Newest first, at most `HISTORY_LEN`.
    #[serde(default)]
    pub history: VecDeque<Attempt>,
    #[serde(default)]
    pub last_poll: Option<Timestamp>,
    /// Builds whose post-checks failed and were rolled back: never retried without force.
    #[serde(default)]
    pub rolled_back: Vec<u64>,
    /// Set when an unreadable state file was moved aside: until a deployed build is known
    /// again, only Hydra's newest build (or a forced request) is accepted (see `recovery.rs`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deployed_unknown: bool,
}

impl PersistedState {
    pub fn record(&mut self, attempt: Attempt) {
        self.history.push_front(attempt);
        self.history.truncate(HISTORY_LEN);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state directory {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "another nixos-hydra-upgrade agent holds {0}; stop it first or give this one another state_dir"
    )]
    Locked(PathBuf),
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

/// The state file, its lock, and the state in memory; every change is written before it is visible.
pub struct StateStore {
    dir: PathBuf,
    state: Mutex<PersistedState>,
    _lock: File,
}

impl StateStore {
    pub fn open(dir: &Path) -> Result<(StateStore, Loaded), StateError> {
        let io = |source| StateError::Io {
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
            Err(std::fs::TryLockError::WouldBlock) => return Err(StateError::Locked(lock_path)),
            Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
        }
        let path = dir.join(STATE_FILE);
        let parsed = match std::fs::read(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => Some(Err(format!("cannot read it: {e}"))),
            Ok(bytes) => Some(serde_json::from_slice(&bytes).map_err(|e| e.to_string())),
        };
        let (state, loaded) = match parsed {
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
        let store = StateStore {
            dir: dir.to_owned(),
            state: Mutex::new(state),
            _lock: lock,
        };
        Ok((store, loaded))
    }

    fn lock(&self) -> MutexGuard<'_, PersistedState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn snapshot(&self) -> PersistedState {
        self.lock().clone()
    }

    /// Applies `change` and writes the result; on a write error memory keeps the old state.
    pub fn update(&self, change: impl FnOnce(&mut PersistedState)) -> Result<(), StateError> {
        let mut guard = self.lock();
        let mut next = guard.clone();
        change(&mut next);
        write_atomically(&self.dir, &next).map_err(|source| StateError::Io {
            path: self.dir.join(STATE_FILE),
            source,
        })?;
        *guard = next;
        Ok(())
    }
}

/// Replaced atomically (SPEC §7) by the crate's one writer.
fn write_atomically(dir: &Path, state: &PersistedState) -> std::io::Result<()> {
    let bytes = serde_json::to_vec_pretty(state).map_err(std::io::Error::other)?;
    crate::durable::write(&dir.join(STATE_FILE), &bytes)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::model::{Outcome, Reboot, Source, now};

    fn attempt(build: u64) -> Attempt {
        Attempt {
            build,
            path: None,
            source: Source::Hydra,
            outcome: Outcome::Upgraded,
            reboot: Reboot::None,
            error: None,
            started_at: now(),
            finished_at: now(),
            checks: vec![],
        }
    }

    #[test]
    fn survives_reopen_and_keeps_history_bounded() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (store, loaded) = StateStore::open(dir.path()).unwrap();
            assert_eq!(loaded, Loaded::Fresh);
            for build in 1..=25 {
                store.update(|s| s.record(attempt(build))).unwrap();
            }
            store
                .update(|s| {
                    s.deployed = Some(Deployed {
                        build: 25,
                        path: crate::model::StorePath::parse(
                            "/nix/store/00000000000000000000000000000000-x",
                        )
                        .unwrap(),
                        at: now(),
                    })
                })
                .unwrap();
        }
        let (store, loaded) = StateStore::open(dir.path()).unwrap();
        assert_eq!(loaded, Loaded::Existing);
        let state = store.snapshot();
        assert_eq!(state.history.len(), HISTORY_LEN);
        assert_eq!(state.history.front().unwrap().build, 25);
        assert_eq!(state.deployed.unwrap().build, 25);
    }

    #[test]
    fn second_open_is_refused_while_locked() {
        let dir = tempfile::tempdir().unwrap();
        let _first = StateStore::open(dir.path()).unwrap();
        let err = StateStore::open(dir.path()).err().unwrap();
        assert!(matches!(err, StateError::Locked(_)), "{err}");
    }

    #[test]
    fn corrupt_file_is_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(STATE_FILE), b"{\"deployed\": {\"bui").unwrap();
        let (store, loaded) = StateStore::open(dir.path()).unwrap();
        let Loaded::MovedAside { to, .. } = loaded else {
            panic!("expected MovedAside, got {loaded:?}");
        };
        assert!(to.exists());
        let state = store.snapshot();
        assert!(state.deployed_unknown && state.deployed.is_none());
        drop(store);
        let (store, loaded) = StateStore::open(dir.path()).unwrap();
        assert_eq!(loaded, Loaded::Existing);
        assert!(
            store.snapshot().deployed_unknown,
            "the guard survives a restart"
        );
    }
}
