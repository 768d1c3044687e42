//! The single-slot mailbox between intake and the worker: newest build wins, nothing goes backwards
//! unless forced.

use std::collections::BTreeSet;
use std::sync::{Mutex, MutexGuard};

use crate::model::Job;
use tokio::sync::Notify;

/// What to do with a request for a build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Worth verifying (before Hydra) or queued (after).
    Proceed,
    /// Nothing to do: deployed, running, queued, or superseded by a newer one.
    Current(String),
    /// Would move the host backwards.
    Refused(String),
}

#[derive(Default)]
struct Slots {
    deployed: Option<u64>,
    running: Option<Job>,
    pending: Option<Job>,
    rolled_back: BTreeSet<u64>,
}

pub struct Queue {
    slots: Mutex<Slots>,
    wake: Notify,
}

impl Queue {
    pub fn new(deployed: Option<u64>, rolled_back: impl IntoIterator<Item = u64>) -> Queue {
        Queue {
            slots: Mutex::new(Slots {
                deployed,
                rolled_back: rolled_back.into_iter().collect(),
                ..Slots::default()
            }),
            wake: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a request for `build` deserves a question to Hydra.
    pub fn decide(&self, build: u64, force: bool) -> Decision {
        decide(&self.lock(), build, force)
    }

    /// Queues a verified job unless the slots moved on while Hydra was asked.
    pub fn offer(&self, job: Job) -> Decision {
        let mut slots = self.lock();
        let decision = decide(&slots, job.target.build, job.force);
        if decision == Decision::Proceed {
            slots.pending = Some(job);
            self.wake.notify_one();
        }
        decision
    }

    /// Waits for a pending job and marks it running.
    pub async fn next(&self) -> Job {
        loop {
            {
                let mut slots = self.lock();
                if let Some(job) = slots.pending.take() {
                    slots.running = Some(job.clone());
                    return job;
                }
            }
            self.wake.notified().await;
        }
    }

    /// The running job ended; `deployed` is the build now on the host, if it changed.
    pub fn finish(&self, deployed: Option<u64>, rolled_back: Option<u64>) {
        let mut slots = self.lock();
        slots.running = None;
        if deployed.is_some() {
            slots.deployed = deployed;
        }
        slots.rolled_back.extend(rolled_back);
    }

    /// The deployed build, learned after it was unknown (state moved aside); never lowers it.
    pub fn learn_deployed(&self, build: u64) {
        let mut slots = self.lock();
        if slots.deployed.is_none_or(|d| d < build) {
            slots.deployed = Some(build);
        }
    }

    pub fn pending(&self) -> Option<Job> {
        self.lock().pending.clone()
    }

    pub fn running(&self) -> Option<Job> {
        self.lock().running.clone()
    }

    /// How many jobs wait or run (0, 1 or 2).
    pub fn depth(&self) -> usize {
        let slots = self.lock();
        usize::from(slots.pending.is_some()) + usize::from(slots.running.is_some())
    }
}

fn decide(slots: &Slots, build: u64, force: bool) -> Decision {
    let running = slots.running.as_ref().map(|j| j.target.build);
    let pending = slots.pending.as_ref().map(|j| j.target.build);
    if running == Some(build) {
        return Decision::Current(format!("build {build} is being deployed now"));
    }
    if pending == Some(build) {
        return Decision::Current(format!("build {build} is already queued"));
    }
    if force {
        return Decision::Proceed;
    }
    match slots.deployed {
        Some(d) if d == build => {
            return Decision::Current(format!("build {build} is already deployed"));
        }
        Some(d) if d > build => {
            return Decision::Refused(format!(
                "build {build} is older than deployed build {d}; use force to go back"
            ));
        }
        _ => {}
    }
    if slots.rolled_back.contains(&build) {
        return Decision::Refused(format!(
            "build {build} failed its post-checks and was rolled back; use force to retry it"
        ));
    }
    if let Some(p) = pending.filter(|&p| p > build) {
        return Decision::Current(format!("newer build {p} is already queued"));
    }
    if let Some(r) = running.filter(|&r| r > build) {
        return Decision::Current(format!("newer build {r} is being deployed now"));
    }
    Decision::Proceed
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::model::{Source, StorePath, Target};
    use jiff::Timestamp;

    fn job(build: u64, force: bool) -> Job {
        Job {
            target: Target {
                build,
                path: StorePath::parse(&format!(
                    "/nix/store/00000000000000000000000000000000-{build}"
                ))
                .unwrap(),
                flake: None,
            },
            source: Source::Hydra,
            force,
            received_at: Timestamp::UNIX_EPOCH,
        }
    }

    fn kind(d: Decision) -> &'static str {
        match d {
            Decision::Proceed => "proceed",
            Decision::Current(_) => "current",
            Decision::Refused(_) => "refused",
        }
    }

    #[test]
    fn decisions() {
        let q = Queue::new(Some(10), [12]);
        assert_eq!(kind(q.decide(10, false)), "current");
        assert_eq!(kind(q.decide(9, false)), "refused");
        assert_eq!(kind(q.decide(9, true)), "proceed");
        assert_eq!(kind(q.decide(10, true)), "proceed");
        assert_eq!(kind(q.decide(12, false)), "refused");
        assert_eq!(kind(q.decide(12, true)), "proceed");
        assert_eq!(kind(q.offer(job(15, false))), "proceed");
        assert_eq!(kind(q.decide(15, false)), "current");
        assert_eq!(kind(q.decide(15, true)), "current");
        assert_eq!(kind(q.decide(14, false)), "current");
        assert_eq!(kind(q.offer(job(16, false))), "proceed");
        assert_eq!(q.pending().unwrap().target.build, 16);
        assert_eq!(kind(q.offer(job(11, true))), "proceed");
        assert_eq!(q.pending().unwrap().target.build, 11);
    }

    #[tokio::test]
    async fn newest_wins_and_finish_updates_deployed() {
        let q = Queue::new(None, []);
        for build in [3, 7, 5, 6] {
            q.offer(job(build, false));
        }
        let taken = q.next().await;
        assert_eq!(taken.target.build, 7);
        assert_eq!(q.depth(), 1);
        assert_eq!(kind(q.decide(7, false)), "current");
        assert_eq!(kind(q.decide(6, false)), "current");
        q.finish(Some(7), None);
        assert_eq!(q.depth(), 0);
        assert_eq!(kind(q.decide(6, false)), "refused");
        assert_eq!(kind(q.decide(8, false)), "proceed");
    }
}
