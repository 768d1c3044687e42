//! The fallback poll on `dates`: at each elapse (plus a random delay) ask Hydra for the newest
//! successful build and queue it like any other request; `persistent` catches up after downtime.

use std::sync::Arc;
use std::time::Duration;

use jiff::tz::TimeZone;
use jiff::{Timestamp, Zoned};
use rand::Rng;
use tokio_util::sync::CancellationToken;

use crate::calendar::CalendarEvent;
use crate::intake::{Intake, RequestIntake, UpgradeRequest};
use crate::ledger::{Ledger, Poll};
use crate::model::{Source, now};
use crate::progress::Progress;

/// Sleeps are cut into slices this long so a wall-clock jump (suspend, NTP) is noticed.
const SLICE: Duration = Duration::from_secs(30);

/// RFC 3339 with the zone's offset, as `/v1/status` shows `next_poll`.
pub fn rfc3339(zoned: &Zoned) -> String {
    zoned.strftime("%Y-%m-%dT%H:%M:%S%:z").to_string()
}

/// The schedule component: what a poll needs.
pub struct Schedule {
    pub dates: String,
    pub randomized_delay: Duration,
    pub persistent: bool,
    pub intake: Arc<RequestIntake>,
    pub ledger: Arc<Ledger>,
    pub progress: Arc<Progress>,
}

impl Schedule {
    /// Runs until shutdown: one poll per elapse of `dates`.
    pub async fn run(self, shutdown: CancellationToken) {
        if self.dates.is_empty() {
            tracing::info!("dates is empty: no scheduled polls");
            return;
        }
        let event = match self.dates.parse::<CalendarEvent>() {
            Ok(event) => event,
            Err(e) => {
                tracing::error!(error = %e, "no scheduled polls");
                return;
            }
        };
        let zone = TimeZone::system();
        let last_poll = self.ledger.snapshot().last_poll.map(|p| p.at);
        if self.persistent && missed(last_poll, &event, &zone, Timestamp::now()) {
            tracing::info!("a scheduled poll was missed while the agent was down: polling now");
            self.poll().await;
        }
        loop {
            let Some(next) = event.next_after(Timestamp::now(), &zone) else {
                tracing::info!(dates = %self.dates, "the calendar event never elapses again");
                self.progress.set_next_poll(None);
                return;
            };
            let fire = next
                .checked_add(random_delay(self.randomized_delay))
                .unwrap_or_else(|_| next.clone());
            self.progress.set_next_poll(Some(rfc3339(&fire)));
            tracing::debug!(next_poll = %rfc3339(&fire), "next scheduled poll");
            if !sleep_until(fire.timestamp(), &shutdown).await {
                return;
            }
            self.poll().await;
        }
    }

    /// One poll: the newest successful build, through the same verification as a push.
    async fn poll(&self) {
        let request = UpgradeRequest {
            build: None,
            force: false,
            source: Source::Schedule,
        };
        let answer = self.intake.intake(request).await;
        match &answer {
            Intake::Queued(target) => {
                tracing::info!(build = target.build, "scheduled poll queued a build")
            }
            Intake::Current { build, reason } => {
                tracing::info!(build, reason = %reason, "scheduled poll: up to date")
            }
            Intake::Refused(reason) | Intake::Rejected(reason) => {
                tracing::warn!(reason = %reason, "scheduled poll found nothing to deploy")
            }
            Intake::Unavailable(reason) => {
                tracing::warn!(reason = %reason, "scheduled poll failed; retrying at the next elapse")
            }
        }
        self.ledger
            .record_poll(Poll {
                at: now(),
                result: answer.to_string(),
            })
            .await;
    }
}

/// Whether an elapse fell between the last recorded poll and `now`.
fn missed(
    last_poll: Option<Timestamp>,
    event: &CalendarEvent,
    zone: &TimeZone,
    now: Timestamp,
) -> bool {
    let Some(last) = last_poll else {
        return false;
    };
    event
        .next_after(last, zone)
        .is_some_and(|due| due.timestamp() <= now)
}

fn random_delay(max: Duration) -> Duration {
    let ms = u64::try_from(max.as_millis()).unwrap_or(u64::MAX);
    if ms == 0 {
        return Duration::ZERO;
    }
    Duration::from_millis(rand::rng().random_range(0..=ms))
}

/// Sleeps until `at` by the wall clock; false when shutdown came first.
async fn sleep_until(at: Timestamp, shutdown: &CancellationToken) -> bool {
    loop {
        let left = at.duration_since(Timestamp::now());
        let Ok(left) = Duration::try_from(left) else {
            return true;
        };
        if left.is_zero() {
            return true;
        }
        tokio::select! {
            () = tokio::time::sleep(left.min(SLICE)) => {}
            () = shutdown.cancelled() => return false,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    #[test]
    fn a_poll_is_missed_only_when_an_elapse_fell_since_the_last_one() {
        let event: CalendarEvent = "04:40".parse().unwrap();
        let utc = TimeZone::UTC;
        let last = Some(at("2026-11-25T04:40:00Z"));
        assert!(!missed(None, &event, &utc, at("2026-11-30T00:00:00Z")));
        assert!(!missed(last, &event, &utc, at("2026-11-26T04:39:59Z")));
        assert!(missed(last, &event, &utc, at("2026-11-26T04:40:00Z")));
        assert!(missed(last, &event, &utc, at("2026-12-01T00:00:00Z")));
    }

    #[test]
    fn random_delay_stays_within_its_bound() {
        assert_eq!(random_delay(Duration::ZERO), Duration::ZERO);
        for _ in 0..1000 {
            assert!(random_delay(Duration::from_secs(3)) <= Duration::from_secs(3));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn sleep_until_stops_at_shutdown_and_returns_for_the_past() {
        let shutdown = CancellationToken::new();
        assert!(sleep_until(at("2000-01-01T00:00:00Z"), &shutdown).await);
        shutdown.cancel();
        let far = Timestamp::now()
            .checked_add(jiff::SignedDuration::from_hours(1))
            .unwrap();
        assert!(!sleep_until(far, &shutdown).await);
    }
}
