//! The fleet's conditions on activation (issue 15): the rollout wave (`[rollout]`) and the push
//! stagger (`push_delay`), as `wait` step conditions.

use std::sync::Mutex;
use std::time::Duration;

use futures_util::future::BoxFuture;
use jiff::Timestamp;

use crate::config::{RolloutConfig, Settings};
use crate::model::{Job, Source, Verdict, WaitingFor};
use crate::upgrade::wait::Condition;

/// The conditions `settings` asks for, in the order they are looked at: the wave first, then
/// the stagger, so hosts a wave releases together still reach the cache spread out.
pub fn conditions(settings: &Settings) -> Vec<Box<dyn Condition>> {
    let mut conditions: Vec<Box<dyn Condition>> = Vec::new();
    if let Some(rollout) = &settings.rollout {
        conditions.push(Box::new(RolloutWave::new(rollout.clone())));
    }
    if !settings.push_delay.is_zero() {
        conditions.push(Box::new(PushDelay::new(settings.push_delay)));
    }
    conditions
}

/// `[rollout]`: open once every `after` agent has run the build long enough (`crate::rollout`).
pub struct RolloutWave {
    config: RolloutConfig,
    client: reqwest::Client,
}

impl RolloutWave {
    pub fn new(config: RolloutConfig) -> RolloutWave {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        RolloutWave { config, client }
    }
}

impl Condition for RolloutWave {
    fn check<'a>(&'a self, job: &'a Job, now: Timestamp) -> BoxFuture<'a, Verdict> {
        Box::pin(crate::rollout::check(
            &self.config.after,
            job.target.build,
            self.config.bake,
            now,
            &self.client,
        ))
    }

    fn timeout(&self) -> Option<Duration> {
        Some(self.config.timeout)
    }
}

/// `push_delay`: a pushed (source hydra) job waits a uniform random delay in [0, max], counted
/// from when every condition before this one was open (so after its wave, if any).
pub struct PushDelay {
    max: Duration,
    /// The job being delayed (build, queued at) and when it may go.
    due: Mutex<Option<(u64, Timestamp, Timestamp)>>,
}

impl PushDelay {
    pub fn new(max: Duration) -> PushDelay {
        PushDelay {
            max,
            due: Mutex::new(None),
        }
    }

    fn due(&self, job: &Job, now: Timestamp) -> Timestamp {
        let mut due = self.due.lock().unwrap_or_else(|p| p.into_inner());
        match *due {
            Some((build, queued, at)) if build == job.target.build && queued == job.received_at => {
                at
            }
            _ => {
                let delay = self.max.mul_f64(rand::random_range(0.0..=1.0));
                let at = now.checked_add(delay).unwrap_or(now);
                tracing::info!(
                    delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                    "push_delay: staggering this pushed build's start"
                );
                *due = Some((job.target.build, job.received_at, at));
                at
            }
        }
    }
}

impl Condition for PushDelay {
    fn check<'a>(&'a self, job: &'a Job, now: Timestamp) -> BoxFuture<'a, Verdict> {
        let verdict = if job.source != Source::Hydra {
            Verdict::Open
        } else {
            let due = self.due(job, now);
            match Duration::try_from(due.duration_since(now)) {
                Ok(left) if !left.is_zero() => Verdict::Closed {
                    what: WaitingFor::Gate {
                        gate: "push_delay".into(),
                    },
                    detail: format!(
                        "push_delay: staggered start at {due} (at most {} after it may go)",
                        humantime::format_duration(self.max)
                    ),
                    recheck: left,
                },
                _ => Verdict::Open,
            }
        };
        Box::pin(std::future::ready(verdict))
    }

    /// The stagger spreads the fleet's downloads from the binary cache, so it comes first.
    fn before_fetch(&self) -> bool {
        true
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::model::{StorePath, Target};

    fn job(build: u64, source: Source) -> Job {
        Job {
            target: Target {
                build,
                path: StorePath::parse(&format!("/nix/store/{build:0>32}-x")).unwrap(),
                flake: None,
            },
            source,
            force: false,
            received_at: "2026-12-01T00:00:00Z".parse().unwrap(),
        }
    }

    #[tokio::test]
    async fn push_delay_holds_pushed_jobs_once_within_its_bound() {
        let max = Duration::from_secs(300);
        let delay = PushDelay::new(max);
        let now: Timestamp = "2026-12-01T01:00:00Z".parse().unwrap();
        assert_eq!(
            delay.check(&job(7, Source::Manual), now).await,
            Verdict::Open
        );
        assert_eq!(
            delay.check(&job(7, Source::Schedule), now).await,
            Verdict::Open
        );
        let pushed = job(7, Source::Hydra);
        let first = delay.check(&pushed, now).await;
        let due = delay.due(&pushed, now);
        assert!(due >= now && due <= now.checked_add(max).unwrap(), "{due}");
        if let Verdict::Closed { what, recheck, .. } = first {
            assert_eq!(what.reason(), "gate");
            assert_eq!(
                now.checked_add(recheck).unwrap(),
                due,
                "looked at again when due"
            );
        }
        // The same job keeps its delay; at the due time it goes.
        let later = now.checked_add(Duration::from_secs(10)).unwrap();
        assert_eq!(delay.due(&pushed, later), due);
        assert_eq!(delay.check(&pushed, due).await, Verdict::Open);
        // Delays spread over the bound.
        let spread: Vec<Timestamp> = (0..50)
            .map(|b| delay.due(&job(100 + b, Source::Hydra), now))
            .collect();
        let (lo, hi) = (spread.iter().min().unwrap(), spread.iter().max().unwrap());
        assert!(hi.duration_since(*lo) > jiff::SignedDuration::from_secs(100));
    }
}
