//! May the attempt activate now? The activation window and the gates as one `Verdict`, and the
//! wait (phase `waiting`) until it opens, a newer build replaces the job, or the agent stops.

use std::sync::Mutex;
use std::time::Duration;

use jiff::Timestamp;
use tokio_util::sync::CancellationToken;

use crate::config::{Settings, TimeOfDay, TimeWindow};
use crate::model::{Phase, Verdict, Waiting, WaitingFor};
use crate::upgrade::gates;
use crate::upgrade::runner::CommandRunner;

/// How often a waiting worker looks whether a newer build replaced its job.
const SUPERSEDE_POLL: Duration = Duration::from_millis(200);
const DAY_MINUTES: u16 = 24 * 60;

/// "02:00".
pub fn hhmm(t: TimeOfDay) -> String {
    format!("{:02}:{:02}", t.0 / 60, t.0 % 60)
}

/// Inside `window` (or none set): Open; else Closed until its lower bound.
pub fn window_verdict(window: Option<TimeWindow>, now: TimeOfDay) -> Verdict {
    let Some(window) = window.filter(|w| !w.contains(now)) else {
        return Verdict::Open;
    };
    let minutes = (window.lower.0 + DAY_MINUTES - now.0 % DAY_MINUTES) % DAY_MINUTES;
    Verdict::Closed {
        what: WaitingFor::Window,
        detail: format!(
            "outside the activation window {}–{}",
            hhmm(window.lower),
            hhmm(window.upper)
        ),
        recheck: Duration::from_secs(u64::from(minutes.max(1)) * 60),
    }
}

/// The window (unless the activation is boot-only: that may be installed any time), then each
/// gate in config order. `now` is the local wall-clock time.
pub async fn may_activate(
    settings: &Settings,
    runner: &CommandRunner,
    boot_only: bool,
    now: TimeOfDay,
) -> Verdict {
    if !boot_only {
        let verdict = window_verdict(settings.activation_window, now);
        if verdict != Verdict::Open {
            return verdict;
        }
    }
    gates::check_all(&settings.gates, &settings.system, runner).await
}

/// The `waiting` object `/v1/status` shows while the worker waits.
#[derive(Default)]
pub struct WaitingCell(Mutex<Option<Waiting>>);

impl WaitingCell {
    pub fn get(&self) -> Option<Waiting> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn set(&self, waiting: Option<Waiting>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = waiting;
    }
}

/// How a wait ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WaitEnd {
    Open,
    /// A newer build was queued: this job gives way without an attempt record.
    Superseded,
    Shutdown,
}

/// Asks `check` until it says Open, sleeping each `recheck` in between; shows the wait in `cell`
/// and phase `waiting` through `set_phase`. `superseded` is polled often so a newer build never
/// waits for a long recheck.
pub async fn wait_until_open<F, Fut>(
    mut check: F,
    cell: &WaitingCell,
    set_phase: impl Fn(Phase),
    superseded: impl Fn() -> bool,
    shutdown: &CancellationToken,
) -> WaitEnd
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Verdict>,
{
    let mut since: Option<Timestamp> = None;
    let end = loop {
        let (what, detail, recheck) = match check().await {
            Verdict::Open => break WaitEnd::Open,
            Verdict::Closed {
                what,
                detail,
                recheck,
            } => (what, detail, recheck),
        };
        let now = crate::model::now();
        let started = *since.get_or_insert(now);
        let until = now
            .checked_add(
                jiff::SignedDuration::try_from(recheck).unwrap_or(jiff::SignedDuration::MAX),
            )
            .unwrap_or(Timestamp::MAX);
        let reason = what.reason();
        let changed = cell
            .get()
            .is_none_or(|w| w.what != what || w.detail != detail);
        if changed {
            tracing::info!(reason, detail = %detail, until = %until, "waiting");
        }
        set_phase(Phase::Waiting);
        cell.set(Some(Waiting {
            what,
            detail,
            since: started,
            until,
        }));
        let deadline = tokio::time::Instant::now() + recheck;
        loop {
            if superseded() {
                break;
            }
            let step = deadline.saturating_duration_since(tokio::time::Instant::now());
            if step.is_zero() {
                break;
            }
            tokio::select! {
                () = tokio::time::sleep(step.min(SUPERSEDE_POLL)) => {}
                () = shutdown.cancelled() => break,
            }
        }
        if shutdown.is_cancelled() {
            break WaitEnd::Shutdown;
        }
        if superseded() {
            tracing::info!("a newer build was queued while waiting; this one gives way");
            break WaitEnd::Superseded;
        }
    };
    cell.set(None);
    end
}

/// The local wall-clock time of day, for the activation window.
pub fn local_time_of_day() -> TimeOfDay {
    crate::upgrade::reboot::local_time_of_day()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn t(s: &str) -> TimeOfDay {
        TimeOfDay::parse(s).unwrap()
    }

    #[test]
    fn window_defers_until_its_lower_bound() {
        let window = Some(TimeWindow {
            lower: t("02:00"),
            upper: t("04:00"),
        });
        assert_eq!(window_verdict(None, t("12:00")), Verdict::Open);
        assert_eq!(window_verdict(window, t("03:00")), Verdict::Open);
        let Verdict::Closed {
            what,
            detail,
            recheck,
        } = window_verdict(window, t("01:30"))
        else {
            panic!("closed at 01:30")
        };
        assert_eq!(what, WaitingFor::Window);
        assert_eq!(detail, "outside the activation window 02:00–04:00");
        assert_eq!(recheck, Duration::from_secs(30 * 60));
        let Verdict::Closed { recheck, .. } = window_verdict(window, t("04:01")) else {
            panic!("closed at 04:01")
        };
        assert_eq!(recheck, Duration::from_secs((21 * 60 + 59) * 60));
        let night = Some(TimeWindow {
            lower: t("23:00"),
            upper: t("01:00"),
        });
        assert_eq!(window_verdict(night, t("00:30")), Verdict::Open);
        let Verdict::Closed { recheck, .. } = window_verdict(night, t("22:59")) else {
            panic!("closed at 22:59")
        };
        assert_eq!(recheck, Duration::from_secs(60));
    }

    fn settings(extra: &str) -> Settings {
        let text = format!(
            "host = \"web1\"\n{extra}\n[hydra]\ninstance = \"http://h\"\nproject = \"p\"\njobset = \"j\"\n"
        );
        Settings::from_toml(&text, std::path::Path::new("t.toml")).unwrap()
    }

    fn runner() -> CommandRunner {
        CommandRunner {
            timeout: Duration::from_secs(10),
            dry_run: false,
            cancel: CancellationToken::new(),
        }
    }

    #[tokio::test]
    async fn boot_only_ignores_the_window_but_not_the_gates() {
        let dir = tempfile::tempdir().unwrap();
        let flag = dir.path().join("closed");
        let s = settings(&format!(
            "activation_window = {{ lower = \"02:00\", upper = \"04:00\" }}\n\
             [[gates]]\nkind = \"command\"\nargv = [\"sh\", \"-c\", \"! test -e {}\"]\n",
            flag.display()
        ));
        let noon = t("12:00");
        let closed = may_activate(&s, &runner(), false, noon).await;
        assert!(matches!(
            closed,
            Verdict::Closed {
                what: WaitingFor::Window,
                ..
            }
        ));
        assert_eq!(may_activate(&s, &runner(), true, noon).await, Verdict::Open);
        assert_eq!(
            may_activate(&s, &runner(), false, t("03:00")).await,
            Verdict::Open
        );
        std::fs::write(&flag, "").unwrap();
        let gate = may_activate(&s, &runner(), true, noon).await;
        let Verdict::Closed {
            what,
            detail,
            recheck,
        } = gate
        else {
            panic!("gate closed")
        };
        assert_eq!(
            what,
            WaitingFor::Gate {
                gate: "command sh".into()
            }
        );
        assert!(
            detail.starts_with("gate command sh: sh: exited with status 1"),
            "{detail}"
        );
        assert_eq!(recheck, Duration::from_secs(300));
    }

    #[tokio::test]
    async fn a_window_defers_then_opens_as_time_passes() {
        // The clock is injected: each look at the window happens a minute later.
        let s = settings("activation_window = { lower = \"02:00\", upper = \"04:00\" }");
        let r = runner();
        let times = ["01:58", "01:59", "02:00"];
        let cell = WaitingCell::default();
        let asked = AtomicUsize::new(0);
        let phases = std::sync::Mutex::new(Vec::new());
        let shutdown = CancellationToken::new();
        let end = wait_until_open(
            || {
                let now = t(times[asked.fetch_add(1, Ordering::SeqCst).min(2)]);
                let (s, r) = (&s, &r);
                async move {
                    may_activate(s, r, false, now)
                        .await
                        .closed_for(Duration::from_millis(20))
                }
            },
            &cell,
            |p| phases.lock().unwrap().push(p),
            || false,
            &shutdown,
        )
        .await;
        assert_eq!(end, WaitEnd::Open);
        assert_eq!(
            asked.load(Ordering::SeqCst),
            3,
            "closed at 01:58 and 01:59, open at 02:00"
        );
        assert_eq!(*phases.lock().unwrap(), [Phase::Waiting, Phase::Waiting]);
        assert!(cell.get().is_none(), "no waiting object once open");
    }

    #[tokio::test]
    async fn a_newer_build_or_shutdown_ends_the_wait() {
        let cell = WaitingCell::default();
        let shutdown = CancellationToken::new();
        let closed = || async {
            Verdict::Closed {
                what: WaitingFor::Gate {
                    gate: "no-sessions".into(),
                },
                detail: "gate no-sessions: 1 user session(s): alice on tty2".into(),
                recheck: Duration::from_secs(3600),
            }
        };
        let polls = AtomicUsize::new(0);
        let superseded = || polls.fetch_add(1, Ordering::SeqCst) > 3;
        let waiting = async {
            // The status shows the wait while it lasts.
            tokio::time::sleep(Duration::from_millis(100)).await;
            cell.get()
        };
        let (end, seen) = tokio::join!(
            wait_until_open(closed, &cell, |_| {}, superseded, &shutdown),
            waiting
        );
        assert_eq!(end, WaitEnd::Superseded);
        let seen = seen.unwrap();
        assert_eq!(seen.what.reason(), "gate");
        assert!(seen.until > seen.since);
        shutdown.cancel();
        let end = wait_until_open(closed, &cell, |_| {}, || false, &shutdown).await;
        assert_eq!(end, WaitEnd::Shutdown);
    }

    trait ClosedFor {
        fn closed_for(self, recheck: Duration) -> Verdict;
    }
    impl ClosedFor for Verdict {
        fn closed_for(self, d: Duration) -> Verdict {
            match self {
                Verdict::Closed { what, detail, .. } => Verdict::Closed {
                    what,
                    detail,
                    recheck: d,
                },
                open => open,
            }
        }
    }
}
