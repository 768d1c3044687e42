//! The wait step: an attempt may not activate until every condition (activation window, gates,
//! rollout wave) is open. Meanwhile the job stays in phase `waiting` and gives way to a newer one.

use std::time::Duration;

use futures_util::future::BoxFuture;
use jiff::Timestamp;

use crate::model::{Job, Outcome, Verdict, Waiting, now};
use crate::upgrade::Worker;
use crate::upgrade::attempt::Stop;

/// Something that may hold an activation back.
pub trait Condition: Send + Sync {
    /// Whether `job` may activate at `now`.
    fn check<'a>(&'a self, job: &'a Job, now: Timestamp) -> BoxFuture<'a, Verdict>;

    /// How long after the job was queued this condition gives up on it (`deferred-timeout`).
    fn timeout(&self) -> Option<Duration> {
        None
    }
}

/// Whether the attempt had to wait (its pre-checks are then run again).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waited {
    No,
    Some,
}

/// Returns once every condition is open; `Stop` on shutdown, a newer job, or a timeout.
pub async fn until_open(worker: &Worker, job: &Job) -> Result<Waited, Stop> {
    let mut waited = Waited::No;
    loop {
        let Some((condition, verdict)) = first_closed(&worker.conditions, job).await else {
            return Ok(waited);
        };
        let Verdict::Closed {
            what,
            detail,
            recheck,
        } = verdict
        else {
            return Ok(waited);
        };
        if let Some(limit) = condition.timeout()
            && queued_for(job) >= limit
        {
            return Err(Stop::Outcome(
                Outcome::DeferredTimeout,
                format!(
                    "still waiting after {}: {detail}",
                    humantime::format_duration(limit)
                ),
            ));
        }
        if waited == Waited::No {
            tracing::info!(reason = what.reason(), detail = %detail, "waiting before activation");
        }
        waited = Waited::Some;
        let until = now()
            .checked_add(jiff::SignedDuration::try_from(recheck).unwrap_or_default())
            .unwrap_or_else(|_| now());
        worker.progress.set_waiting(Waiting {
            what,
            detail,
            since: now(),
            until,
        });
        tokio::select! {
            () = tokio::time::sleep(recheck) => {}
            () = worker.ledger.offered() => {
                if worker.ledger.has_pending() {
                    return Err(Stop::GiveWay);
                }
            }
            () = worker.shutdown.cancelled() => return Err(Stop::Shutdown),
        }
    }
}

async fn first_closed<'a>(
    conditions: &'a [Box<dyn Condition>],
    job: &Job,
) -> Option<(&'a dyn Condition, Verdict)> {
    for condition in conditions {
        let verdict = condition.check(job, Timestamp::now()).await;
        if verdict != Verdict::Open {
            return Some((condition.as_ref(), verdict));
        }
    }
    None
}

/// How long ago the job was queued.
fn queued_for(job: &Job) -> Duration {
    Duration::try_from(Timestamp::now().duration_since(job.received_at)).unwrap_or_default()
}
