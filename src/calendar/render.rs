//! What the `calendar` subcommand prints (systemd-analyze layout or JSON), and its `--base-time`.

use super::{CalendarError, CalendarEvent, base_usec, next};
use jiff::tz::TimeZone;
use jiff::{Timestamp, Zoned};
use std::fmt::Write as _;

/// The normalized form of `expr` and its next `iterations` elapses strictly after `base`.
///
/// Human-readable, it mimics `systemd-analyze calendar` (without its "From now" lines, which
/// depend on the wall clock):
/// ```text
///   Original form: Mon..Fri 04:40
/// Normalized form: Mon..Fri *-*-* 04:40:00
///     Next elapse: Mon 2026-11-30 04:40:00 CET
///        (in UTC): Mon 2026-11-30 03:40:00 UTC
///        Iter. #2: Tue 2026-12-01 04:40:00 CET
///        (in UTC): Tue 2026-12-01 03:40:00 UTC
/// ```
/// With `json`: `{"normalized":"…","next":["2026-11-30T04:40:00+01:00",…]}`, times in `local`,
/// fewer entries (or none) when the event stops elapsing.
pub fn render(
    expr: &str,
    iterations: u32,
    base: Timestamp,
    local: &TimeZone,
    json: bool,
) -> Result<String, CalendarError> {
    let event = CalendarEvent::parse_with_local(expr, local)?;
    let normalized = event.normalized();
    let next = elapses(&event, iterations, base, local).map_err(|_| CalendarError::Stuck {
        expr: expr.to_owned(),
    })?;
    if json {
        #[derive(serde::Serialize)]
        struct Answer<'a> {
            normalized: &'a str,
            next: Vec<String>,
        }
        let next = next
            .iter()
            .map(|z| z.timestamp().display_with_offset(z.offset()).to_string())
            .collect();
        return Ok(serde_json::to_string(&Answer {
            normalized: &normalized,
            next,
        })?);
    }
    let mut out = String::new();
    let mut line = |label: &str, value: &str| {
        let _ = writeln!(out, "{label:>15}: {value}");
    };
    if expr != normalized {
        line("Original form", expr);
    }
    line("Normalized form", &normalized);
    if next.is_empty() && iterations > 0 {
        line("Next elapse", "never");
    }
    let local_is_utc = local
        .to_fixed_offset()
        .is_ok_and(|o| o == jiff::tz::Offset::UTC);
    for (i, when) in next.iter().enumerate() {
        let label = if i == 0 {
            "Next elapse".to_owned()
        } else {
            format!("Iter. #{}", i + 1)
        };
        line(&label, &pretty(when));
        if !local_is_utc {
            line("(in UTC)", &pretty(&when.with_time_zone(TimeZone::UTC)));
        }
    }
    Ok(out)
}

/// The next `iterations` elapses, each strictly after the one before, in `local` time.
fn elapses(
    event: &CalendarEvent,
    iterations: u32,
    base: Timestamp,
    local: &TimeZone,
) -> Result<Vec<Zoned>, next::Stuck> {
    let mut out = Vec::new();
    let mut usec = base_usec(base);
    // The offset guess of glibc's mktime lives on from one elapse to the next, as in systemd.
    let mut guess = 0;
    for _ in 0..iterations {
        let Some(found) = next::next_usec(event, usec, local, &mut guess)? else {
            break;
        };
        let Ok(at) = Timestamp::from_microsecond(found) else {
            break;
        };
        out.push(at.to_zoned(local.clone()));
        usec = found;
    }
    Ok(out)
}

/// systemd's timestamp style: `Sat 2026-11-28 04:40:00 CET`.
fn pretty(z: &Zoned) -> String {
    z.strftime("%a %Y-%m-%d %H:%M:%S %Z").to_string()
}

/// Parses `--base-time`: RFC 3339 (`2026-11-28T04:40:00+01:00`, `…Z`) or `@UNIX` seconds
/// (with an optional fraction).
pub fn parse_base_time(s: &str) -> Result<Timestamp, CalendarError> {
    let bad = || CalendarError::BaseTime {
        input: s.to_owned(),
    };
    let Some(unix) = s.strip_prefix('@') else {
        return s.parse().map_err(|_| bad());
    };
    let (whole, frac) = unix.split_once('.').unwrap_or((unix, "0"));
    let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
    let negative = whole.starts_with('-');
    let magnitude = whole.strip_prefix('-').unwrap_or(whole);
    if !digits(magnitude) || !digits(frac) || frac.len() > 9 {
        return Err(bad());
    }
    let secs: i64 = magnitude.parse().map_err(|_| bad())?;
    let nanos: i64 = format!("{frac:0<9}").parse().map_err(|_| bad())?;
    let (secs, nanos) = if negative {
        (-secs, -nanos)
    } else {
        (secs, nanos)
    };
    let nanos = i32::try_from(nanos).map_err(|_| bad())?;
    Timestamp::new(secs, nanos).map_err(|_| bad())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn base_time_forms() {
        let cases = [
            ("@1700000000", Some("2023-11-14T22:13:20Z")),
            ("@1700000000.25", Some("2023-11-14T22:13:20.25Z")),
            ("@-1", Some("1969-12-31T23:59:59Z")),
            ("2026-11-28T04:40:00+01:00", Some("2026-11-28T03:40:00Z")),
            ("2026-11-28T03:40:00Z", Some("2026-11-28T03:40:00Z")),
            ("@", None),
            ("@12x", None),
            ("@1.", None),
            ("2026-11-28 04:40", None),
            ("tomorrow", None),
        ];
        for (input, want) in cases {
            let got = parse_base_time(input).ok().map(|t| t.to_string());
            assert_eq!(got.as_deref(), want, "{input}");
        }
    }

    #[test]
    fn human_and_json_layouts() {
        let berlin = TimeZone::get("Europe/Berlin").unwrap();
        let base = parse_base_time("2026-11-27T12:00:00Z").unwrap();
        let text = render("Mon..Fri 04:40", 2, base, &berlin, false).unwrap();
        assert_eq!(
            text,
            "  Original form: Mon..Fri 04:40\n\
             Normalized form: Mon..Fri *-*-* 04:40:00\n    \
             Next elapse: Mon 2026-11-30 04:40:00 CET\n       \
             (in UTC): Mon 2026-11-30 03:40:00 UTC\n       \
             Iter. #2: Tue 2026-12-01 04:40:00 CET\n       \
             (in UTC): Tue 2026-12-01 03:40:00 UTC\n"
        );
        let json = render("2026-11-30 04:40", 3, base, &berlin, true).unwrap();
        assert_eq!(
            json,
            r#"{"normalized":"2026-11-30 04:40:00","next":["2026-11-30T04:40:00+01:00"]}"#
        );
        let never = render("2026-02-29", 1, base, &berlin, false).unwrap();
        assert_eq!(
            never,
            "  Original form: 2026-02-29\nNormalized form: 2026-02-29 00:00:00\n    Next elapse: never\n"
        );
        assert!(render("Mon..Fxi 04:00", 1, base, &berlin, true).is_err());
    }
}
