//! Normal form of a parsed event: full years, sorted lists, range limits, and the text systemd prints.

use super::{CalendarEvent, Chain, Component, Problem, USEC_PER_SEC};
use std::fmt::Write as _;

const MIN_YEAR: i64 = 1970;
pub(super) const MAX_YEAR: i64 = 2199;
const ALL_WEEKDAYS: u8 = 0x7f;

/// systemd's `calendar_spec_normalize()`.
pub(super) fn normalize(ev: &mut CalendarEvent) {
    if ev.weekdays.is_some_and(|b| b == 0 || b >= ALL_WEEKDAYS) {
        ev.weekdays = None;
    }
    if ev.end_of_month && ev.day.is_none() {
        ev.end_of_month = false;
    }
    if let Some(years) = &mut ev.year {
        for c in years.iter_mut() {
            c.start = full_year(c.start);
            c.stop = full_year(c.stop);
        }
    }
    for list in [
        &mut ev.year,
        &mut ev.month,
        &mut ev.day,
        &mut ev.hour,
        &mut ev.minute,
        &mut ev.second,
    ]
    .into_iter()
    .flatten()
    {
        normalize_chain(list);
    }
}

/// A valid seconds list holding `*` (every whole second) is just `*`: systemd drops the rest,
/// fractions included (after validation: `*:*:60,0/1` is still refused).
pub(super) fn collapse_seconds(ev: &mut CalendarEvent) {
    let any = Component {
        start: 0,
        stop: -1,
        repeat: USEC_PER_SEC,
    };
    if let Some(list) = &mut ev.second
        && list.contains(&any)
    {
        *list = vec![any];
    }
}

/// 12 → 2012, 89 → 1989.
fn full_year(y: i64) -> i64 {
    match y {
        0..70 => y + 2000,
        70..100 => y + 1900,
        _ => y,
    }
}

/// Ranges end on a repetition; a range that cannot repeat becomes a single value; the list is
/// sorted and duplicates dropped.
fn normalize_chain(list: &mut Vec<Component>) {
    for c in list.iter_mut() {
        if c.stop > c.start && c.repeat > 0 {
            c.stop -= (c.stop - c.start) % c.repeat;
        }
        if (c.stop > c.start && c.repeat > 0 && c.start + c.repeat > c.stop) || c.start == c.stop {
            c.repeat = 0;
            c.stop = -1;
        }
    }
    list.sort_unstable();
    list.dedup();
}

/// systemd's `calendar_spec_valid()`, naming the first component out of range.
pub(super) fn validate(ev: &CalendarEvent) -> Result<(), Problem> {
    let fields: [(&Chain, &'static str, i64, i64, &'static str, bool); 6] = [
        (&ev.year, "year", MIN_YEAR, MAX_YEAR, "1970..2199", false),
        (&ev.month, "month", 1, 12, "1..12", false),
        (&ev.day, "day", 1, 31, "1..31 (~1..~28)", ev.end_of_month),
        (&ev.hour, "hour", 0, 23, "0..23", false),
        (&ev.minute, "minute", 0, 59, "0..59", false),
        (
            &ev.second,
            "second",
            0,
            60 * USEC_PER_SEC - 1,
            "0..59.999999",
            false,
        ),
    ];
    for (chain, field, from, to, limits, eom) in fields {
        let usec = field == "second";
        for (i, c) in (0..).zip(chain.iter().flatten()) {
            // systemd takes the 28-day allowance off again for each further day in a `~` list,
            // so `*-*~28,14/3` is refused while `*-*~28` and `*-*~14/3` are not.
            let to = if eom { to - 3 * i } else { to };
            if !component_valid(c, from, to, eom) {
                let mut value = String::new();
                format_component(&mut value, if usec { 2 } else { 1 }, c, usec);
                return Err(Problem::OutOfRange {
                    field,
                    value,
                    limits,
                });
            }
        }
    }
    Ok(())
}

fn component_valid(c: &Component, from: i64, to: i64, end_of_month: bool) -> bool {
    // No more than 28 days from the end of a month.
    let to = if end_of_month { to - 3 } else { to };
    if c.start < from || c.start > to || c.repeat > to - from {
        return false;
    }
    if c.stop >= 0 {
        c.stop >= from && c.stop <= to && c.start + c.repeat <= c.stop
    } else if end_of_month {
        c.start - c.repeat >= from
    } else {
        c.start + c.repeat <= to
    }
}

/// The normalized form, as `calendar_spec_to_string()` writes it.
pub(super) fn format_event(ev: &CalendarEvent) -> String {
    let mut out = String::new();
    if let Some(bits) = ev.weekdays {
        format_weekdays(&mut out, bits);
        out.push(' ');
    }
    format_chain(&mut out, 4, &ev.year, false);
    out.push('-');
    format_chain(&mut out, 2, &ev.month, false);
    out.push(if ev.end_of_month { '~' } else { '-' });
    format_chain(&mut out, 2, &ev.day, false);
    out.push(' ');
    format_chain(&mut out, 2, &ev.hour, false);
    out.push(':');
    format_chain(&mut out, 2, &ev.minute, false);
    out.push(':');
    format_chain(&mut out, 2, &ev.second, true);
    if ev.utc {
        out.push_str(" UTC");
    } else if let Some((name, _)) = &ev.timezone {
        out.push(' ');
        out.push_str(name);
    } else if ev.dst >= 0 && !ev.dst_name.is_empty() {
        out.push(' ');
        out.push_str(&ev.dst_name);
    }
    out
}

const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];

/// Runs of three or more days as `a..b`, shorter runs as lists.
fn format_weekdays(out: &mut String, bits: u8) {
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for day in 0..DAYS.len() {
        if bits & (1 << day) == 0 {
            continue;
        }
        match runs.last_mut() {
            Some((_, end)) if *end + 1 == day => *end = day,
            _ => runs.push((day, day)),
        }
    }
    let name = |d: usize| DAYS.get(d).copied().unwrap_or("?");
    for (i, &(start, end)) in runs.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(name(start));
        if end > start {
            out.push_str(if end > start + 1 { ".." } else { "," });
            out.push_str(name(end));
        }
    }
}

fn format_chain(out: &mut String, width: usize, chain: &Chain, usec: bool) {
    let Some(list) = chain else {
        out.push('*');
        return;
    };
    if usec
        && let [only] = list.as_slice()
        && only.start == 0
        && only.stop < 0
        && only.repeat == USEC_PER_SEC
    {
        out.push('*');
        return;
    }
    for (i, c) in list.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        format_component(out, width, c, usec);
    }
}

/// One component: zero-padded values, µs fractions as six digits, `..stop`, `/repeat`.
fn format_component(out: &mut String, width: usize, c: &Component, usec: bool) {
    let d = if usec { USEC_PER_SEC } else { 1 };
    let _ = write!(out, "{:0width$}", c.start / d);
    if c.start % d > 0 {
        let _ = write!(out, ".{:06}", c.start % d);
    }
    if c.stop > 0 {
        let _ = write!(out, "..{:0width$}", c.stop / d);
    }
    if c.stop % d > 0 {
        let _ = write!(out, ".{:06}", c.stop % d);
    }
    if c.repeat > 0 && !(c.stop > 0 && c.repeat == d) {
        let _ = write!(out, "/{}", c.repeat / d);
    }
    if c.repeat % d > 0 {
        let _ = write!(out, ".{:06}", c.repeat % d);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::super::CalendarEvent;
    use jiff::tz::TimeZone;

    #[test]
    fn normalized_forms_match_systemd() {
        // From systemd.time(7) and systemd-analyze 252.
        let cases = [
            (
                "Sat,Thu,Mon..Wed,Sat..Sun",
                "Mon..Thu,Sat,Sun *-*-* 00:00:00",
            ),
            ("Mon,Sun 12-*-* 2,1:23", "Mon,Sun 2012-*-* 01,02:23:00"),
            ("Wed..Wed,Wed *-1", "Wed *-*-01 00:00:00"),
            (
                "Wed..Sat,Tue 12-10-15 1:2:3",
                "Tue..Sat 2012-10-15 01:02:03",
            ),
            ("12,14,13,12:20,10,30", "*-*-* 12,13,14:10,20,30:00"),
            ("mon,fri *-1/2-1,3 *:30:45", "Mon,Fri *-01/2-01,03 *:30:45"),
            (
                "05:40:23.4200004/3.1700005",
                "*-*-* 05:40:23.420000/3.170001",
            ),
            ("2003-02..04-05", "2003-02..04-05 00:00:00"),
            ("daily UTC", "*-*-* 00:00:00 UTC"),
            ("weekly", "Mon *-*-* 00:00:00"),
            ("quarterly", "*-01,04,07,10-01 00:00:00"),
            ("minutely", "*-*-* *:*:00"),
            ("*:2/3", "*-*-* *:02/3:00"),
            ("*:1..5/10", "*-*-* *:01:00"),
            ("*:*:1..5/10", "*-*-* *:*:01"),
            ("*:0..59/7", "*-*-* *:00..56/7:00"),
            ("Mon,Tue,Thu", "Mon,Tue,Thu *-*-* 00:00:00"),
            ("Mon..Sun", "*-*-* 00:00:00"),
            ("Sat,Sun,Mon", "Mon,Sat,Sun *-*-* 00:00:00"),
            ("*-02~03", "*-02~03 00:00:00"),
            ("*-*~*", "*-*-* 00:00:00"),
            ("@1700000000", "2023-11-14 22:13:20 UTC"),
            ("*:*:0.5", "*-*-* *:*:00.500000"),
            ("*:*:*", "*-*-* *:*:*"),
            ("*:*:0/1", "*-*-* *:*:*"),
            ("*:*:1..3", "*-*-* *:*:01..03"),
            ("*:*:0..59", "*-*-* *:*:00..59"),
            ("*:*:54,0/1,4/5", "*-*-* *:*:*"),
            ("*:*:0/2,1", "*-*-* *:*:00/2,01"),
            ("99-1-1", "1999-01-01 00:00:00"),
        ];
        for (expr, want) in cases {
            let ev = CalendarEvent::parse_with_local(expr, &TimeZone::UTC).unwrap();
            assert_eq!(ev.normalized(), want, "{expr}");
        }
    }
}
