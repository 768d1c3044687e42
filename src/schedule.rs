//! The fallback poll on `dates`: at each elapse (plus a random delay) ask Hydra for the newest
//! successful build and queue it like any other request; `persistent` catches up after downtime.

use std::sync::Arc;
use std::time::Duration;

use jiff::tz::TimeZone;
use jiff::{Timestamp, Zoned};
use rand::Rng;
use tokio_util::sync::CancellationToken;

use crate::app::Agent;
use crate::calendar::CalendarEvent;
use crate::intake::{Intake, UpgradeRequest, intake};
use crate::model::{Source, now};

/// Sleeps are cut into slices this long so a wall-clock jump (suspend, NTP) is noticed.
const SLICE: Duration = Duration::from_secs(30);

/// RFC 3339 with the zone's offset, as `/v1/status` shows `next_poll`.
pub fn rfc3339(zoned: &Zoned) -> String {
    zoned.strftime("%Y-%m-%dT%H:%M:%S%:z").to_string()
}

/// Runs until shutdown: one poll per elapse of `dates`.
pub async fn run_schedule(agent: Arc<Agent>, shutdown: CancellationToken) {
    let settings = &agent.settings;
    if settings.dates.is_empty() {
        tracing::info!("dates is empty: no scheduled polls");
        return;
    }
    let event = match settings.dates.parse::<CalendarEvent>() {
        Ok(event) => event,
        Err(e) => {
            tracing::error!(error = %e, "no scheduled polls");
            return;
        }
    };
    let zone = TimeZone::system();
    if settings.persistent && missed_while_down(&agent, &event, &zone) {
        tracing::info!("a scheduled poll was missed while the agent was down: polling now");
        poll(&agent).await;
    }
    loop {
        let Some(next) = event.next_after(Timestamp::now(), &zone) else {
            tracing::info!(dates = %settings.dates, "the calendar event never elapses again");
            agent.set_next_poll(None);
            return;
        };
        let fire = next
            .checked_add(random_delay(settings.randomized_delay))
            .unwrap_or_else(|_| next.clone());
        agent.set_next_poll(Some(rfc3339(&fire)));
        tracing::debug!(next_poll = %rfc3339(&fire), "next scheduled poll");
        if !sleep_until(fire.timestamp(), &shutdown).await {
            return;
        }
        poll(&agent).await;
    }
}

/// Whether an elapse fell between the last recorded poll and now.
fn missed_while_down(agent: &Agent, event: &CalendarEvent, zone: &TimeZone) -> bool {
    let Some(last) = agent.store.snapshot().last_poll else {
        return false;
    };
    event
        .next_after(last, zone)
        .is_some_and(|due| due.timestamp() <= Timestamp::now())
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

/// One poll: the newest successful build, through the same verification as a push.
async fn poll(agent: &Agent) {
    let request = UpgradeRequest {
        build: None,
        force: false,
        source: Source::Schedule,
    };
    match intake(agent, request).await {
        Intake::Queued(target) => {
            tracing::info!(build = target.build, "scheduled poll queued a build")
        }
        Intake::Current { build, reason } => {
            tracing::info!(build, reason = %reason, "scheduled poll: up to date")
        }
        Intake::Hydra(e) if e.is_unavailable() => {
            tracing::warn!(reason = %e, "scheduled poll failed; retrying at the next elapse")
        }
        Intake::Refused(reason) => {
            tracing::warn!(reason = %reason, "scheduled poll found nothing to deploy")
        }
        Intake::Hydra(e) => {
            tracing::warn!(reason = %e, "scheduled poll found nothing to deploy")
        }
    }
    if let Err(e) = agent.store.update(|s| s.last_poll = Some(now())) {
        tracing::error!(error = %e, "cannot record the poll time");
    }
}
