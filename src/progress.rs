//! What the agent is doing right now (not persisted): the worker's phase and since when, what a
//! waiting attempt waits for, how many requests are being verified, and the next scheduled poll.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use jiff::Timestamp;

use crate::model::{Phase, Waiting, now};

/// One point of view on the live state; components hold an `Arc` of it.
pub struct Progress {
    worker: Mutex<Worker>,
    verifying: AtomicUsize,
    next_poll: Mutex<Option<String>>,
}

#[derive(Clone)]
struct Worker {
    phase: Phase,
    since: Timestamp,
    build: Option<u64>,
    waiting: Option<Waiting>,
}

/// A copy of the live state for one status answer or scrape.
#[derive(Debug, Clone)]
pub struct Live {
    /// `verifying` while the worker idles and Hydra is being asked.
    pub phase: Phase,
    pub since: Timestamp,
    pub waiting: Option<Waiting>,
    pub next_poll: Option<String>,
}

impl Default for Progress {
    fn default() -> Self {
        Progress {
            worker: Mutex::new(Worker {
                phase: Phase::Idle,
                since: now(),
                build: None,
                waiting: None,
            }),
            verifying: AtomicUsize::new(0),
            next_poll: Mutex::new(None),
        }
    }
}

impl Progress {
    /// Moves the worker to `phase`; logged and told to systemd when it changes.
    pub fn set_phase(&self, phase: Phase) {
        let build = {
            let mut worker = self.worker.lock().unwrap_or_else(|p| p.into_inner());
            if worker.phase == phase {
                return;
            }
            worker.phase = phase;
            worker.since = now();
            if phase != Phase::Waiting {
                worker.waiting = None;
            }
            worker.build
        };
        tracing::info!(phase = phase.as_str(), "phase");
        crate::systemd_notify::status(phase.as_str(), build);
    }

    /// The build the worker works on (None when idle).
    pub fn set_build(&self, build: Option<u64>) {
        self.worker.lock().unwrap_or_else(|p| p.into_inner()).build = build;
    }

    /// Phase `waiting` with what for; the same reason again keeps its `since`.
    pub fn set_waiting(&self, waiting: Waiting) {
        self.set_phase(Phase::Waiting);
        let mut worker = self.worker.lock().unwrap_or_else(|p| p.into_inner());
        let since = match &worker.waiting {
            Some(old) if old.what == waiting.what => old.since,
            _ => waiting.since,
        };
        worker.waiting = Some(Waiting { since, ..waiting });
    }

    pub fn set_next_poll(&self, next: Option<String>) {
        *self.next_poll.lock().unwrap_or_else(|p| p.into_inner()) = next;
    }

    /// Counts a verification against Hydra while the guard lives.
    pub fn verifying(&self) -> VerifyingGuard<'_> {
        self.verifying.fetch_add(1, Ordering::SeqCst);
        VerifyingGuard(self)
    }

    pub fn live(&self) -> Live {
        let worker = self
            .worker
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let phase = if worker.phase == Phase::Idle && self.verifying.load(Ordering::SeqCst) > 0 {
            Phase::Verifying
        } else {
            worker.phase
        };
        Live {
            phase,
            since: worker.since,
            waiting: worker.waiting,
            next_poll: self
                .next_poll
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        }
    }
}

pub struct VerifyingGuard<'a>(&'a Progress);

impl Drop for VerifyingGuard<'_> {
    fn drop(&mut self) {
        self.0.verifying.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::model::WaitingFor;

    #[test]
    fn verifying_shows_only_while_idle_and_waiting_keeps_its_since() {
        let progress = Progress::default();
        {
            let _guard = progress.verifying();
            assert_eq!(progress.live().phase, Phase::Verifying);
        }
        assert_eq!(progress.live().phase, Phase::Idle);
        let early = Timestamp::from_second(1000).unwrap();
        let waiting = |since| Waiting {
            what: WaitingFor::Window,
            detail: "outside 02:00-04:00".into(),
            since,
            until: since,
        };
        progress.set_waiting(waiting(early));
        progress.set_waiting(waiting(Timestamp::from_second(2000).unwrap()));
        let live = progress.live();
        assert_eq!(live.phase, Phase::Waiting);
        assert_eq!(live.waiting.unwrap().since, early);
        progress.set_phase(Phase::Activating);
        assert!(progress.live().waiting.is_none());
    }
}
