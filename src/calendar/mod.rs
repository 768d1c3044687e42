//! systemd calendar events (systemd.time(7)): parse, normalize and find the next elapse exactly as systemd 252 does.
//!
//! systemd is the reference: `systemd-analyze calendar` accepts, rejects, normalizes and
//! computes elapses the same way as this module (see `tests/calendar_systemd.rs`, which checks
//! thousands of generated expressions against it). Two details shape the code:
//!
//! * systemd walks broken-down local time with glibc's `mktime`, whose choices inside DST gaps and
//!   folds depend on an internal guess carried from call to call. `tm.rs` models that function,
//!   so gaps are skipped and folds fire once, as on a real host.
//! * Impossible dates (`2026-02-29`) and events past the year 2199 never elapse:
//!   [`CalendarEvent::next_after`] returns `None`.
//!
//! ```
//! use nixos_hydra_upgrade::calendar::CalendarEvent;
//! let event: CalendarEvent = "Mon..Fri 04:40 Europe/Berlin".parse().unwrap();
//! assert_eq!(event.normalized(), "Mon..Fri *-*-* 04:40:00 Europe/Berlin");
//! let after = "2026-11-27T12:00:00Z".parse().unwrap();
//! let next = event.next_after(after, &jiff::tz::TimeZone::UTC).unwrap();
//! assert_eq!(next.to_string(), "2026-11-30T04:40:00+01:00[Europe/Berlin]");
//! ```

mod field;
mod next;
mod normalize;
mod parse;
mod render;
mod tm;
mod zone;

use jiff::tz::TimeZone;

pub use render::{parse_base_time, render};

/// Seconds are kept in microseconds, as systemd does.
const USEC_PER_SEC: i64 = 1_000_000;

/// One element of a component list: `start`, `start..stop`, `start/repeat` or `start..stop/repeat`.
/// `stop` is -1 and `repeat` 0 when absent (systemd's encoding, which the arithmetic relies on).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Component {
    start: i64,
    stop: i64,
    repeat: i64,
}

impl Component {
    const fn single(start: i64) -> Self {
        Self {
            start,
            stop: -1,
            repeat: 0,
        }
    }
}

/// A field's list of components; `None` is `*` (any value).
type Chain = Option<Vec<Component>>;

/// A parsed, normalized and validated calendar event.
#[derive(Clone, Debug)]
pub struct CalendarEvent {
    /// Bit 0 = Monday … bit 6 = Sunday; `None` = every day.
    weekdays: Option<u8>,
    year: Chain,
    month: Chain,
    day: Chain,
    hour: Chain,
    minute: Chain,
    /// In microseconds.
    second: Chain,
    /// The day components count from the end of the month (`~`).
    end_of_month: bool,
    /// Evaluated in UTC (`… UTC`, or an `@UNIX` timestamp).
    utc: bool,
    /// A named IANA zone (`… Europe/Berlin`), evaluated there whatever the local zone is.
    timezone: Option<(String, TimeZone)>,
    /// `… CET` naming the local zone's standard (0) or daylight (1) abbreviation: systemd then
    /// forces that `tm_isdst`. -1 otherwise.
    dst: i64,
    /// The abbreviation matched for `dst`, printed back in the normalized form.
    dst_name: String,
}

/// Why a calendar event or a base time was refused.
#[derive(Debug, thiserror::Error)]
pub enum CalendarError {
    /// The expression is not one systemd accepts.
    #[error("calendar event {expr:?}: {problem}")]
    Invalid {
        /// The expression as given.
        expr: String,
        /// What is wrong with it, naming the offending part.
        problem: Problem,
    },
    /// `--base-time` is neither RFC 3339 nor `@UNIX`.
    #[error(
        "base time {input:?}: expected RFC 3339 (e.g. 2026-11-28T04:40:00+01:00) or @UNIX seconds"
    )]
    BaseTime {
        /// The value as given.
        input: String,
    },
    /// systemd cannot compute the next elapse either: its search gives up after 1000 steps
    /// ("Infinite loop in calendar calculation"), which happens around some DST changes.
    #[error("calendar event {expr:?}: no next elapse found (systemd's search gives up here too)")]
    Stuck {
        /// The expression as given.
        expr: String,
    },
    /// Serializing the JSON answer failed (not expected to happen).
    #[error("calendar output: {0}")]
    Json(#[from] serde_json::Error),
}

/// The part of an expression that systemd refuses, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Problem {
    /// Nothing left once the time zone is taken off.
    #[error("empty expression")]
    Empty,
    /// C strings end at NUL; systemd never sees what follows.
    #[error("contains a NUL byte")]
    Nul,
    /// A weekday name that is not one, or is glued to other text.
    #[error("bad weekday {0:?}")]
    BadWeekday(String),
    /// `Fri..Mon`, `Mon..Wed..Fri`, `Mon..` and the like.
    #[error("bad weekday range {0:?}")]
    BadWeekdayRange(String),
    /// A component that is not a number where one is needed.
    #[error("bad number {0:?}")]
    BadNumber(String),
    /// A number beyond what systemd stores (2^31 - 1, or 2147 s with fractions).
    #[error("number too large at {0:?}")]
    TooLarge(String),
    /// `/0`.
    #[error("zero repetition at {0:?}")]
    ZeroRepeat(String),
    /// A seconds range shorter than one second without an explicit repetition.
    #[error("seconds range {0:?} is shorter than the default 1 s step")]
    ShortSecondsRange(String),
    /// More than 241 comma-separated values in one field.
    #[error("too many values in one field at {0:?}")]
    TooManyValues(String),
    /// `@…` that is not a number, or out of range.
    #[error("bad timestamp {0:?}")]
    BadTimestamp(String),
    /// The last word is not UTC, a local zone abbreviation, nor a zone file, and without it the
    /// expression is valid.
    #[error(
        "unknown time zone {0:?}: not UTC, nor a zone under /usr/share/zoneinfo (e.g. Europe/Berlin)"
    )]
    UnknownZone(String),
    /// Text where a separator or the end was expected.
    #[error("unexpected {0:?}")]
    Unexpected(String),
    /// A value, range or repetition outside its field's limits after normalization.
    #[error("{field} {value:?} out of range {limits}")]
    OutOfRange {
        /// `year`, `month`, `day`, `hour`, `minute`, `second`.
        field: &'static str,
        /// The offending component, normalized.
        value: String,
        /// The allowed range.
        limits: &'static str,
    },
}

impl std::str::FromStr for CalendarEvent {
    type Err = CalendarError;

    /// Parses with the system's local zone (`TZ`, /etc/localtime) for the rare `… CET` suffix
    /// naming a local abbreviation; see [`CalendarEvent::parse_with_local`].
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse_with_local(s, &TimeZone::system())
    }
}

impl CalendarEvent {
    /// Parses `expr`. `local` matters only when the expression ends in one of the local zone's
    /// abbreviations (`daily CET` where local time is Europe/Berlin), as with systemd.
    pub fn parse_with_local(expr: &str, local: &TimeZone) -> Result<Self, CalendarError> {
        parse::parse_event(expr, local).map_err(|problem| CalendarError::Invalid {
            expr: expr.to_owned(),
            problem,
        })
    }

    /// The normalized form, exactly as `systemd-analyze calendar` prints it.
    pub fn normalized(&self) -> String {
        normalize::format_event(self)
    }

    /// Next elapse strictly after `after`, in the event's own zone if it names one (UTC for
    /// `UTC` and `@UNIX`), else in `local`. `None` when it never elapses again, or when
    /// systemd's own search would give up (see [`CalendarError::Stuck`]): a timer then never
    /// fires either.
    pub fn next_after(&self, after: jiff::Timestamp, local: &TimeZone) -> Option<jiff::Zoned> {
        let mut guess = 0;
        let usec = next::next_usec(self, base_usec(after), local, &mut guess).ok()??;
        Some(
            jiff::Timestamp::from_microsecond(usec)
                .ok()?
                .to_zoned(self.zone(local)),
        )
    }

    /// The zone the elapses are reported in.
    fn zone(&self, local: &TimeZone) -> TimeZone {
        if self.utc {
            TimeZone::UTC
        } else if let Some((_, tz)) = &self.timezone {
            tz.clone()
        } else {
            local.clone()
        }
    }
}

/// `after` in whole microseconds (systemd's resolution), rounded down; instants before the epoch
/// count as just before it.
fn base_usec(after: jiff::Timestamp) -> i64 {
    let us = after.as_microsecond();
    let us = if after.subsec_nanosecond() < 0 {
        us.saturating_sub(1)
    } else {
        us
    };
    us.max(-1)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn berlin() -> TimeZone {
        TimeZone::get("Europe/Berlin").unwrap()
    }

    #[test]
    fn error_messages_name_the_bad_part() {
        let cases = [
            (
                "Mon..Fxi 04:00",
                r#"calendar event "Mon..Fxi 04:00": bad weekday "Fxi""#,
            ),
            ("", r#"calendar event "": empty expression"#),
            (
                "*-13-01",
                r#"calendar event "*-13-01": month "13" out of range 1..12"#,
            ),
            ("04:4x", r#"calendar event "04:4x": unexpected "x""#),
            (
                "*:*:0/0",
                r#"calendar event "*:*:0/0": zero repetition at "0""#,
            ),
        ];
        for (expr, want) in cases {
            let err = CalendarEvent::parse_with_local(expr, &berlin()).unwrap_err();
            assert_eq!(err.to_string(), want, "{expr}");
        }
    }

    #[test]
    fn next_after_uses_the_named_zone() {
        let ev = CalendarEvent::parse_with_local("04:40 Asia/Kolkata", &berlin()).unwrap();
        let next = ev
            .next_after("2026-01-01T00:00:00Z".parse().unwrap(), &berlin())
            .unwrap();
        assert_eq!(next.to_string(), "2026-01-02T04:40:00+05:30[Asia/Kolkata]");
    }

    #[test]
    fn base_usec_rounds_down() {
        let t: jiff::Timestamp = "1970-01-01T00:00:01.0000019Z".parse().unwrap();
        assert_eq!(base_usec(t), 1_000_001);
        let t: jiff::Timestamp = "1969-01-01T00:00:00Z".parse().unwrap();
        assert_eq!(base_usec(t), -1);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod robustness {
    use super::*;

    /// Random byte soup and near-miss expressions: parsing and searching must never panic
    /// (debug builds also trap arithmetic overflow) and must always finish.
    #[test]
    fn no_panics_on_any_input() {
        const ALPHABET: &[u8] = b"0123456789*-:.,/~@ MonTueFriSatSundayUTCEurope/BerlinCESTx\t+";
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let zones = [TimeZone::UTC, TimeZone::get("Europe/Berlin").unwrap()];
        let bases = [
            0,
            1_774_746_000,
            1_792_890_000,
            7_258_118_399,
            253_402_207_199,
        ];
        let mut accepted = 0;
        for round in 0..20_000u64 {
            let expr = if round % 2 == 0 {
                let len = next() % 40;
                let bytes: Vec<u8> = (0..len)
                    .map(|_| ALPHABET[(next() % ALPHABET.len() as u64) as usize])
                    .collect();
                String::from_utf8_lossy(&bytes).into_owned()
            } else {
                // Well-formed shape, random parts: mostly valid.
                let mut pick =
                    |items: &[&'static str]| items[(next() % items.len() as u64) as usize];
                let parts = [
                    "*", "0", "1", "2", "3", "12", "28", "29", "30", "31", "59", "0/5", "1..3",
                    "2/3", "1..31/2", "5,1,3", "2026", "26", "2199", "0..59/7",
                ];
                let (y, m, d) = (pick(&parts), pick(&parts), pick(&parts));
                let (h, mi, se) = (pick(&parts), pick(&parts), pick(&parts));
                let sep = pick(&["-", "~"]);
                let tz = pick(&["", " UTC", " Europe/Berlin", " CEST", " Pacific/Chatham"]);
                let wd = pick(&["", "Mon ", "Sat..Sun ", "Fri,Mon "]);
                format!("{wd}{y}-{m}{sep}{d} {h}:{mi}:{se}.{}{tz}", next() % 1000)
            };
            let local = &zones[(round % 2) as usize];
            if let Ok(ev) = CalendarEvent::parse_with_local(&expr, local) {
                accepted += 1;
                let _ = ev.normalized();
                let base = jiff::Timestamp::from_second(bases[(round % 5) as usize]).unwrap();
                let _ = ev.next_after(base, local);
            }
        }
        assert!(accepted > 500, "only {accepted} random expressions parsed");
        for expr in [
            "@18446744073709551615",
            "@-18446744073709551615",
            "@9223372036854775807",
            "*:*:2147.483647",
            "*:*:2147.483648",
            "99999999999999999999:00",
            "2199-12-31 23:59:59.999999",
        ] {
            if let Ok(ev) = expr.parse::<CalendarEvent>() {
                let _ = ev.next_after(jiff::Timestamp::MAX, &TimeZone::UTC);
                let _ = ev.next_after(jiff::Timestamp::MIN, &TimeZone::UTC);
            }
        }
    }
}
