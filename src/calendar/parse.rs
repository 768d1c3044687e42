//! Reading calendar expressions the way systemd's parser does, byte by byte, into an event.

use super::field::{at, chain, digits, skip_spaces, token};
use super::{CalendarEvent, Chain, Component, Problem, USEC_PER_SEC, normalize, zone};
use jiff::tz::TimeZone;

/// Parses, normalizes and validates `expr`. When it fails but all of it except the last word
/// parses, that word was meant as a time zone and is named as the problem (systemd takes a last
/// word it cannot load as a zone for part of the date, and reports a confusing other part).
pub(super) fn parse_event(expr: &str, local: &TimeZone) -> Result<CalendarEvent, Problem> {
    let problem = match parse_whole(expr, local) {
        Ok(event) => return Ok(event),
        Err(problem) => problem,
    };
    match expr.trim_end().rsplit_once(' ') {
        Some((head, zone))
            if !matches!(problem, Problem::Nul | Problem::Empty)
                && !head.trim().is_empty()
                && parse_whole(head, local).is_ok() =>
        {
            Err(Problem::UnknownZone(zone.to_owned()))
        }
        _ => Err(problem),
    }
}

fn parse_whole(expr: &str, local: &TimeZone) -> Result<CalendarEvent, Problem> {
    if expr.contains('\0') {
        return Err(Problem::Nul);
    }
    let mut ev = CalendarEvent {
        weekdays: None,
        year: None,
        month: None,
        day: None,
        hour: None,
        minute: None,
        second: None,
        end_of_month: false,
        utc: false,
        timezone: None,
        dst: -1,
        dst_name: String::new(),
    };
    let body = zone::split_zone(expr, local, &mut ev);
    if body.is_empty() {
        return Err(Problem::Empty);
    }
    let mut bits = 0u8;
    if !shorthand(body, &mut ev, &mut bits) {
        let s = body.as_bytes();
        let mut pos = weekdays(s, 0, &mut bits)?;
        let (timestamp, p) = date(s, pos, &mut ev)?;
        pos = p;
        if !timestamp {
            pos = time(s, pos, &mut ev)?;
        }
        if at(s, pos) != 0 {
            return Err(Problem::Unexpected(token(s, pos)));
        }
    }
    ev.weekdays = Some(bits);
    normalize::normalize(&mut ev);
    normalize::validate(&ev)?;
    normalize::collapse_seconds(&mut ev);
    Ok(ev)
}

fn zero() -> Chain {
    Some(vec![Component::single(0)])
}

fn consts(values: &[i64]) -> Chain {
    Some(values.iter().map(|&v| Component::single(v)).collect())
}

/// The named shorthands (`daily`, …); false when `body` is none of them.
fn shorthand(body: &str, ev: &mut CalendarEvent, bits: &mut u8) -> bool {
    let is = |names: &[&str]| names.iter().any(|n| body.eq_ignore_ascii_case(n));
    let (month, day, hour, minute): (&[i64], &[i64], &[i64], &[i64]) = if is(&["minutely"]) {
        (&[], &[], &[], &[])
    } else if is(&["hourly"]) {
        (&[], &[], &[], &[0])
    } else if is(&["daily"]) {
        (&[], &[], &[0], &[0])
    } else if is(&["weekly"]) {
        *bits = 1;
        (&[], &[], &[0], &[0])
    } else if is(&["monthly"]) {
        (&[], &[1], &[0], &[0])
    } else if is(&["annually", "yearly", "anually"]) {
        (&[1], &[1], &[0], &[0])
    } else if is(&["quarterly"]) {
        (&[1, 4, 7, 10], &[1], &[0], &[0])
    } else if is(&["biannually", "bi-annually", "semiannually", "semi-annually"]) {
        (&[1, 7], &[1], &[0], &[0])
    } else {
        return false;
    };
    let chain = |v: &[i64]| if v.is_empty() { None } else { consts(v) };
    ev.month = chain(month);
    ev.day = chain(day);
    ev.hour = chain(hour);
    ev.minute = chain(minute);
    ev.second = zero();
    true
}

const WEEKDAYS: [(&str, u8); 14] = [
    ("monday", 0),
    ("mon", 0),
    ("tuesday", 1),
    ("tue", 1),
    ("wednesday", 2),
    ("wed", 2),
    ("thursday", 3),
    ("thu", 3),
    ("friday", 4),
    ("fri", 4),
    ("saturday", 5),
    ("sat", 5),
    ("sunday", 6),
    ("sun", 6),
];

/// The optional leading weekday list; returns where the date starts.
fn weekdays(s: &[u8], mut pos: usize, bits: &mut u8) -> Result<usize, Problem> {
    let mut range_from: Option<u8> = None;
    let mut first = true;
    loop {
        let rest = s.get(pos..).unwrap_or_default();
        let found = WEEKDAYS.iter().find(|(name, _)| {
            rest.get(..name.len())
                .is_some_and(|p| p.eq_ignore_ascii_case(name.as_bytes()))
        });
        let Some(&(name, nr)) = found else {
            return if first {
                Ok(pos)
            } else {
                Err(Problem::BadWeekday(weekday_token(s, pos)))
            };
        };
        let after = pos + name.len();
        if !matches!(at(s, after), 0 | b'-' | b'.' | b',' | b' ') {
            return Err(Problem::BadWeekday(weekday_token(s, pos)));
        }
        *bits |= 1 << nr;
        if let Some(l) = range_from {
            if l > nr {
                return Err(Problem::BadWeekdayRange(token(s, 0)));
            }
            for j in l + 1..nr {
                *bits |= 1 << j;
            }
        }
        pos = after;
        match at(s, pos) {
            0 => return Ok(pos),
            b' ' => return Ok(skip_spaces(s, pos)),
            b'.' => {
                if range_from.is_some() || at(s, pos + 1) != b'.' {
                    return Err(Problem::BadWeekdayRange(token(s, 0)));
                }
                range_from = Some(nr);
                pos += 2;
            }
            b'-' => {
                if range_from.is_some() {
                    return Err(Problem::BadWeekdayRange(token(s, 0)));
                }
                range_from = Some(nr);
                pos += 1;
            }
            b',' => {
                range_from = None;
                pos += 1;
            }
            _ => {}
        }
        if matches!(at(s, pos), 0 | b' ') {
            return if range_from.is_none() {
                Ok(skip_spaces(s, pos))
            } else {
                Err(Problem::BadWeekdayRange(token(s, 0)))
            };
        }
        first = false;
    }
}

/// A would-be weekday for an error message: up to the next separator.
fn weekday_token(s: &[u8], pos: usize) -> String {
    let rest = s.get(pos..).unwrap_or_default();
    let end = rest
        .iter()
        .position(|b| matches!(b, b' ' | b',' | b'.' | b'-'))
        .unwrap_or(rest.len());
    String::from_utf8_lossy(rest.get(..end.min(40)).unwrap_or_default()).into_owned()
}

/// The optional date (or `@UNIX`). Returns true for a timestamp, which has no time part, and
/// where the time starts (unchanged when what follows is a time rather than a date).
fn date(s: &[u8], pos: usize, ev: &mut CalendarEvent) -> Result<(bool, usize), Problem> {
    match at(s, pos) {
        0 => return Ok((false, pos)),
        b'@' => return timestamp(s, pos, ev).map(|end| (true, end)),
        _ => {}
    }
    let (first, mut t) = chain(s, pos, false)?;
    if matches!(at(s, t), 0 | b':') {
        return Ok((false, pos));
    }
    let separator = |t: usize, ev: &mut CalendarEvent| match at(s, t) {
        b'~' => {
            ev.end_of_month = true;
            Ok(())
        }
        b'-' => Ok(()),
        _ => Err(Problem::Unexpected(token(s, t))),
    };
    separator(t, ev)?;
    let (second, t2) = chain(s, t + 1, false)?;
    t = t2;
    if matches!(at(s, t), 0 | b' ') {
        ev.month = first;
        ev.day = second;
        return Ok((false, skip_spaces(s, t)));
    }
    if ev.end_of_month {
        return Err(Problem::Unexpected(token(s, t)));
    }
    separator(t, ev)?;
    let (third, t3) = chain(s, t + 1, false)?;
    t = t3;
    if !matches!(at(s, t), 0 | b' ') {
        return Err(Problem::Unexpected(token(s, t)));
    }
    ev.year = first;
    ev.month = second;
    ev.day = third;
    Ok((false, skip_spaces(s, t)))
}

/// `@UNIX`, read with strtoul's leniency (spaces, sign, wrap-around of negatives), in UTC.
fn timestamp(s: &[u8], pos: usize, ev: &mut CalendarEvent) -> Result<usize, Problem> {
    let bad = || Problem::BadTimestamp(token(s, pos));
    let mut p = pos + 1;
    while matches!(at(s, p), b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r') {
        p += 1;
    }
    let negative = at(s, p) == b'-';
    if matches!(at(s, p), b'-' | b'+') {
        p += 1;
    }
    if !at(s, p).is_ascii_digit() {
        return Err(bad());
    }
    let (value, end) = digits(s, p).ok_or_else(bad)?;
    let value = if negative {
        value.wrapping_neg()
    } else {
        value
    };
    // time_t is signed: the cast wraps, as C's does.
    let secs = value as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = super::tm::civil_from_days(days).ok_or_else(bad)?;
    ev.year = consts(&[y]);
    ev.month = consts(&[m]);
    ev.day = consts(&[d]);
    ev.hour = consts(&[rem / 3600]);
    ev.minute = consts(&[rem / 60 % 60]);
    ev.second = consts(&[rem % 60 * USEC_PER_SEC]);
    ev.utc = true;
    Ok(end)
}

/// The optional time `h:m[:s]`; without one, 00:00:00.
fn time(s: &[u8], pos: usize, ev: &mut CalendarEvent) -> Result<usize, Problem> {
    if at(s, pos) == 0 {
        (ev.hour, ev.minute, ev.second) = (zero(), zero(), zero());
        return Ok(pos);
    }
    let (hour, t) = chain(s, pos, false)?;
    if at(s, t) != b':' {
        return Err(Problem::Unexpected(token(s, t)));
    }
    let (minute, t) = chain(s, t + 1, false)?;
    ev.hour = hour;
    ev.minute = minute;
    match at(s, t) {
        0 => {
            ev.second = zero();
            Ok(t)
        }
        b':' => {
            let (second, t) = chain(s, t + 1, true)?;
            if at(s, t) != 0 {
                return Err(Problem::Unexpected(token(s, t)));
            }
            ev.second = second;
            Ok(t)
        }
        _ => Err(Problem::Unexpected(token(s, t))),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn accepts_and_rejects_like_systemd() {
        let utc = TimeZone::UTC;
        // (expression, accepted?) — each checked against systemd-analyze 252.
        let cases = [
            ("Mon..Fri 04:40", true),
            ("mon-wed 04:40", true),
            ("Mon,", true),
            ("Mon..", false),
            ("Monday..Sunday", true),
            ("Monda", false),
            ("Fri..Mon", false),
            ("Mon..Wed..Fri", false),
            ("Mon,,Tue", false),
            ("*-*-* *:*:*", true),
            ("*/2:00", false),
            ("0/2:00", true),
            ("*:*:1.5..2", false),
            ("*:*:1..1", false),
            ("*:1..1", true),
            ("*:*:0/0.5", true),
            ("*:*:5.", false),
            ("12:00 ", false),
            (" daily", false),
            ("@0", true),
            ("@ 5", true),
            ("@-0", true),
            ("@-1", false),
            ("@5x", false),
            ("*-02~03", true),
            ("*-02~03-01", false),
            ("2026-02-29", true),
            ("*:60", false),
            ("24:00", false),
            ("*-*-32", false),
            ("*~29", false),
            ("*-*~28,14/3", false),
            ("*-*~14/3", true),
            ("*:*:60,0/1", false),
        ];
        for (expr, ok) in cases {
            assert_eq!(parse_event(expr, &utc).is_ok(), ok, "{expr}");
        }
    }

    #[test]
    fn an_unknown_zone_is_named() {
        let utc = TimeZone::UTC;
        for (expr, zone) in [
            ("weekly Mars/Olympus", "Mars/Olympus"),
            ("Mon..Fri 04:40 Europe/Berln", "Europe/Berln"),
            ("04:40 Nowhere", "Nowhere"),
        ] {
            assert_eq!(
                parse_event(expr, &utc).err(),
                Some(Problem::UnknownZone(zone.into())),
                "{expr}"
            );
        }
        // Not a zone problem: the part before the last word is bad too.
        assert!(matches!(
            parse_event("weakly Mars/Olympus", &utc),
            Err(Problem::BadNumber(_) | Problem::Unexpected(_) | Problem::BadWeekday(_))
        ));
    }

    #[test]
    fn too_many_values_are_refused() {
        let list: Vec<String> = (0..242).map(|i| (i % 60).to_string()).collect();
        let expr = format!("*:{}", list.join(","));
        assert!(parse_event(&expr, &TimeZone::UTC).is_err());
        let expr = format!("*:{}", list[..241].join(","));
        assert!(parse_event(&expr, &TimeZone::UTC).is_ok());
    }
}
