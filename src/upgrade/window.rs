//! `activation_window`: a switch happens only inside it; fetching happens before the wait, and a
//! boot-only activation (`operation = "boot"`, or a switch that changed switch inhibitors turn
//! into boot) may be installed at any time.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use jiff::Timestamp;

use crate::config::{Settings, TimeOfDay, TimeWindow};
use crate::model::{Job, Verdict, WaitingFor};
use crate::upgrade::inhibitors;
use crate::upgrade::wait::Condition;

const DAY_MINUTES: u16 = 24 * 60;

/// "02:00".
pub fn hhmm(t: TimeOfDay) -> String {
    format!("{:02}:{:02}", t.0 / 60, t.0 % 60)
}

/// Inside `window`: Open; else Closed until its lower bound (at least a minute).
pub fn verdict(window: TimeWindow, now: TimeOfDay) -> Verdict {
    if window.contains(now) {
        return Verdict::Open;
    }
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

/// The wall-clock time of day of `now` in `zone`.
pub fn time_of_day(now: Timestamp, zone: &jiff::tz::TimeZone) -> TimeOfDay {
    let local = now.to_zoned(zone.clone());
    TimeOfDay(
        u16::try_from(local.hour()).unwrap_or(0) * 60 + u16::try_from(local.minute()).unwrap_or(0),
    )
}

/// The window as a condition of the wait step.
pub struct ActivationWindow {
    pub settings: Arc<Settings>,
    pub window: TimeWindow,
    /// The host's time zone (the window is local time).
    pub zone: jiff::tz::TimeZone,
}

impl ActivationWindow {
    /// Whether `job` installs for the next boot only: configured so, or its switch inhibitors
    /// (read from the fetched target) differ from the running system's.
    fn boot_only(&self, job: &Job) -> bool {
        let system = &self.settings.system;
        let name = Path::new(job.target.path.as_str())
            .file_name()
            .unwrap_or_default();
        let changes = inhibitors::compare(&system.current_system, &system.store_dir.join(name));
        !inhibitors::effective_operation(self.settings.operation, &changes).is_live()
    }
}

impl Condition for ActivationWindow {
    fn check<'a>(&'a self, job: &'a Job, now: Timestamp) -> BoxFuture<'a, Verdict> {
        let verdict = if self.boot_only(job) {
            Verdict::Open
        } else {
            verdict(self.window, time_of_day(now, &self.zone))
        };
        Box::pin(async move { verdict })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    fn t(s: &str) -> TimeOfDay {
        TimeOfDay::parse(s).unwrap()
    }

    fn window(lower: &str, upper: &str) -> TimeWindow {
        TimeWindow {
            lower: t(lower),
            upper: t(upper),
        }
    }

    #[test]
    fn defers_until_the_lower_bound() {
        let w = window("02:00", "04:00");
        assert_eq!(verdict(w, t("03:00")), Verdict::Open);
        let Verdict::Closed {
            what,
            detail,
            recheck,
        } = verdict(w, t("01:30"))
        else {
            panic!("closed at 01:30")
        };
        assert_eq!(what, WaitingFor::Window);
        assert_eq!(detail, "outside the activation window 02:00–04:00");
        assert_eq!(recheck, Duration::from_secs(30 * 60));
        let Verdict::Closed { recheck, .. } = verdict(w, t("04:01")) else {
            panic!("closed at 04:01")
        };
        assert_eq!(recheck, Duration::from_secs((21 * 60 + 59) * 60));
        let night = window("23:00", "01:00");
        assert_eq!(verdict(night, t("00:30")), Verdict::Open);
        let Verdict::Closed { recheck, .. } = verdict(night, t("22:59")) else {
            panic!("closed at 22:59")
        };
        assert_eq!(recheck, Duration::from_secs(60));
    }

    fn settings(extra: &str) -> Arc<Settings> {
        let text = format!(
            "host = \"web1\"\n{extra}\n[hydra]\ninstance = \"http://h\"\nproject = \"p\"\njobset = \"j\"\n"
        );
        Arc::new(Settings::from_toml(&text, Path::new("t.toml")).unwrap())
    }

    fn job() -> Job {
        Job {
            target: crate::model::Target {
                build: 1,
                path: crate::model::StorePath::parse(
                    "/nix/store/00000000000000000000000000000000-nixos-system-web1",
                )
                .unwrap(),
                flake: None,
            },
            source: crate::model::Source::Hydra,
            force: false,
            received_at: Timestamp::UNIX_EPOCH,
        }
    }

    #[tokio::test]
    async fn a_window_defers_then_opens_as_time_passes_and_boot_ignores_it() {
        // The clock is injected: the same job looked at a minute apart, in UTC.
        let utc = jiff::tz::TimeZone::UTC;
        let at = |hhmm: &str| -> Timestamp { format!("2026-12-01T{hhmm}:00Z").parse().unwrap() };
        let condition = ActivationWindow {
            settings: settings("[system]\nstore_dir = \"/nonexistent\"\n"),
            window: window("02:00", "04:00"),
            zone: utc.clone(),
        };
        let job = job();
        let closed = condition.check(&job, at("01:59")).await;
        assert!(
            matches!(
                closed,
                Verdict::Closed {
                    what: WaitingFor::Window,
                    ..
                }
            ),
            "{closed:?}"
        );
        assert_eq!(condition.check(&job, at("02:00")).await, Verdict::Open);
        let boot = ActivationWindow {
            settings: settings("operation = \"boot\""),
            ..condition
        };
        assert_eq!(boot.check(&job, at("12:00")).await, Verdict::Open);
    }

    #[tokio::test]
    async fn changed_inhibitors_make_it_boot_only() {
        let dir = tempfile::tempdir().unwrap();
        let running = dir.path().join("running");
        let target = dir
            .path()
            .join("00000000000000000000000000000000-nixos-system-web1");
        for (system, value) in [(&running, "a"), (&target, "b")] {
            std::fs::create_dir_all(system).unwrap();
            std::fs::write(
                system.join(inhibitors::FILE),
                format!(r#"{{"systemd":"{value}"}}"#),
            )
            .unwrap();
        }
        let condition = ActivationWindow {
            settings: settings(&format!(
                "[system]\ncurrent_system = \"{}\"\nstore_dir = \"{}\"\n",
                running.display(),
                dir.path().display()
            )),
            window: window("02:00", "04:00"),
            zone: jiff::tz::TimeZone::UTC,
        };
        let noon: Timestamp = "2026-12-01T12:00:00Z".parse().unwrap();
        assert_eq!(condition.check(&job(), noon).await, Verdict::Open);
    }
}
