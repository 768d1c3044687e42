//! The next elapse: systemd's field-by-field search over broken-down time (with 252.38's stuck-search fix).

use super::normalize::MAX_YEAR;
use super::tm::{Clock, Tm};
use super::{CalendarEvent, Component, USEC_PER_SEC};
use jiff::tz::TimeZone;

/// systemd gives up (and the timer never fires) after this many rounds of the search.
const MAX_ITERATIONS: usize = 1000;
/// The last microsecond systemd can format (9999-12-30 23:59:59.999999 UTC).
const USEC_FORMATTABLE_MAX: i64 = 253_402_214_399_999_999;

/// systemd could not compute an elapse (its search looped 1000 times, or the result is not a
/// representable time): `systemd-analyze calendar` reports an error rather than "never".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Stuck;

/// The first elapse strictly after `usec` (µs since the epoch), in µs; `Ok(None)` when there is
/// none. `guess` is glibc's `mktime` offset guess for `local`, carried between calls as a
/// long-running process does.
pub(super) fn next_usec(
    ev: &CalendarEvent,
    usec: i64,
    local: &TimeZone,
    guess: &mut i64,
) -> Result<Option<i64>, Stuck> {
    if usec > USEC_FORMATTABLE_MAX {
        return Err(Stuck);
    }
    let usec = usec.saturating_add(1).max(0);
    let (secs, sub) = (usec / USEC_PER_SEC, usec % USEC_PER_SEC);
    if ev.utc {
        return search(ev, &mut Clock::utc(), secs, sub);
    }
    if let Some((_, tz)) = &ev.timezone {
        // systemd evaluates a named zone in a forked child, whose guess starts afresh.
        return search(ev, &mut Clock::zone(tz, 0), secs, sub);
    }
    let mut clock = Clock::zone(local, *guess);
    let next = search(ev, &mut clock, secs, sub);
    *guess = clock.guess;
    next
}

fn search(
    ev: &CalendarEvent,
    clock: &mut Clock<'_>,
    secs: i64,
    sub: i64,
) -> Result<Option<i64>, Stuck> {
    let tm = clock.convert(secs).ok_or(Stuck)?;
    let Some((mut tm, sub)) = find_next(ev, clock, tm, sub)? else {
        return Ok(None);
    };
    let t = clock.mktime(&mut tm).filter(|&t| t >= 0).ok_or(Stuck)?;
    let at = t.checked_mul(USEC_PER_SEC).and_then(|u| u.checked_add(sub));
    at.map(Some).ok_or(Stuck)
}

/// Which fields a step resets when it moves a larger one.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Below {
    Year,
    Month,
    Day,
    Hour,
    Minute,
}

fn reset(c: &mut Tm, usec: &mut i64, below: Below) {
    if below <= Below::Year {
        c.mon = 0;
    }
    if below <= Below::Month {
        c.mday = 1;
    }
    if below <= Below::Day {
        c.hour = 0;
    }
    if below <= Below::Hour {
        c.min = 0;
    }
    c.sec = 0;
    *usec = 0;
}

/// Outcome of matching one field against the current time.
enum Step {
    /// No value left in this unit: move the larger unit on.
    Overflow,
    /// The time was normalized forward (gap, month end): start over from there.
    Again,
    /// Matched: go on to the smaller unit.
    Ok,
}

/// Match a field, then check the time still exists as written (`tm_within_bounds`).
fn step(clock: &mut Clock<'_>, c: &mut Tm, changed: i32) -> Step {
    if changed < 0 {
        return Step::Overflow;
    }
    match within_bounds(clock, c) {
        r if r < 0 => Step::Overflow,
        0 => Step::Again,
        _ => Step::Ok,
    }
}

/// `Ok(None)`: no elapse left (before 2200). `Err`: the search did not settle.
fn find_next(
    ev: &CalendarEvent,
    clock: &mut Clock<'_>,
    start: Tm,
    usec: i64,
) -> Result<Option<(Tm, i64)>, Stuck> {
    let mut c = start;
    let mut us = usec;
    // Once the search is stuck (it came back to or before where it started, as happens when
    // mktime resolves a gap backwards), tm_isdst is left to mktime instead of the event.
    let mut keep_isdst = false;
    for _ in 0..MAX_ITERATIONS {
        let _ = clock.mktime(&mut c);
        if !keep_isdst {
            c.isdst = ev.dst;
        }

        let r = matching(clock, ev.year.as_deref(), false, &mut c, |t| &mut t.year, 0);
        if r > 0 {
            reset(&mut c, &mut us, Below::Year);
        }
        if r < 0 || within_bounds(clock, &mut c) <= 0 {
            return Ok(None);
        }

        let r = matching(clock, ev.month.as_deref(), false, &mut c, |t| &mut t.mon, 1);
        if r > 0 {
            reset(&mut c, &mut us, Below::Month);
        }
        match step(clock, &mut c, r) {
            Step::Overflow => {
                c.year += 1;
                reset(&mut c, &mut us, Below::Year);
                continue;
            }
            Step::Again => continue,
            Step::Ok => {}
        }

        let eom = ev.end_of_month;
        let r = matching(clock, ev.day.as_deref(), eom, &mut c, |t| &mut t.mday, 0);
        if r > 0 {
            reset(&mut c, &mut us, Below::Day);
        }
        match step(clock, &mut c, r) {
            Step::Overflow => {
                c.mon += 1;
                reset(&mut c, &mut us, Below::Month);
                continue;
            }
            Step::Again => continue,
            Step::Ok => {}
        }

        if !matches_weekday(ev.weekdays, clock, &c) {
            c.mday += 1;
            reset(&mut c, &mut us, Below::Day);
            continue;
        }

        let r = matching(clock, ev.hour.as_deref(), false, &mut c, |t| &mut t.hour, 0);
        if r > 0 {
            reset(&mut c, &mut us, Below::Hour);
        }
        match step(clock, &mut c, r) {
            Step::Overflow => {
                c.mday += 1;
                reset(&mut c, &mut us, Below::Day);
                continue;
            }
            Step::Again => continue,
            Step::Ok => {}
        }

        let r = matching(
            clock,
            ev.minute.as_deref(),
            false,
            &mut c,
            |t| &mut t.min,
            0,
        );
        if r > 0 {
            reset(&mut c, &mut us, Below::Minute);
        }
        match step(clock, &mut c, r) {
            Step::Overflow => {
                c.hour += 1;
                reset(&mut c, &mut us, Below::Hour);
                continue;
            }
            Step::Again => continue,
            Step::Ok => {}
        }

        // Seconds are matched in µs.
        let mut v = c.sec * USEC_PER_SEC + us;
        let r = find_matching(clock, ev.second.as_deref(), false, &c, &mut v);
        us = v % USEC_PER_SEC;
        c.sec = v / USEC_PER_SEC;
        match step(clock, &mut c, r) {
            Step::Overflow => {
                c.min += 1;
                reset(&mut c, &mut us, Below::Minute);
                continue;
            }
            Step::Again => continue,
            Step::Ok => {}
        }
        if wall_clock(&c, us) < wall_clock(&start, usec) {
            keep_isdst = true;
            c.hour += 1;
            continue;
        }
        return Ok(Some((c, us)));
    }
    Err(Stuck)
}

/// Broken-down fields in order of significance, for comparing wall-clock readings.
fn wall_clock(t: &Tm, usec: i64) -> [i64; 7] {
    [t.year, t.mon, t.mday, t.hour, t.min, t.sec, usec]
}

/// Runs [`find_matching`] on one field of `c` (`base` 1 for months, which match 1-based).
fn matching(
    clock: &mut Clock<'_>,
    chain: Option<&[Component]>,
    end_of_month: bool,
    c: &mut Tm,
    field: fn(&mut Tm) -> &mut i64,
    base: i64,
) -> i32 {
    let snapshot = *c;
    let slot = field(c);
    let mut v = *slot + base;
    let r = find_matching(clock, chain, end_of_month, &snapshot, &mut v);
    *slot = v - base;
    r
}

/// The earliest value of `chain` at or after `*val` (`find_matching_component`): -1 if none,
/// else 1 when `*val` moved and 0 when it already matched. End-of-month days are resolved
/// against the month of `tm`.
fn find_matching(
    clock: &mut Clock<'_>,
    chain: Option<&[Component]>,
    end_of_month: bool,
    tm: &Tm,
    val: &mut i64,
) -> i32 {
    let Some(chain) = chain else {
        return 0;
    };
    let mut best: Option<i64> = None;
    for c in chain {
        let (start, stop) = if end_of_month {
            let start = end_of_month_day(clock, tm, c.start);
            let stop = end_of_month_day(clock, tm, c.stop);
            if stop > 0 {
                (stop, start)
            } else {
                (start, stop)
            }
        } else {
            (c.start, c.stop)
        };
        if start >= *val {
            if best.is_none_or(|d| start < d) {
                best = Some(start);
            }
        } else if c.repeat > 0 {
            let steps = (*val - start + c.repeat - 1) / c.repeat;
            let Some(k) = steps
                .checked_mul(c.repeat)
                .and_then(|n| n.checked_add(start))
            else {
                continue;
            };
            if best.is_none_or(|d| k < d) && (stop < 0 || k <= stop) {
                best = Some(k);
            }
        }
    }
    match best {
        None => -1,
        Some(d) => {
            let changed = i32::from(*val != d);
            *val = d;
            changed
        }
    }
}

/// The day of `tm`'s month that is `day` days from its end (1 = the last), or -1.
fn end_of_month_day(clock: &mut Clock<'_>, tm: &Tm, day: i64) -> i64 {
    let mut t = *tm;
    t.mon += 1;
    t.mday = 1 - day;
    match clock.mktime(&mut t) {
        Some(secs) if secs >= 0 && t.mon == tm.mon => t.mday,
        _ => -1,
    }
}

/// systemd's `tm_within_bounds()`: -1 if `tm` is past 2199, unrepresentable or normalizes to
/// an earlier time; 0 if it normalized forward (then `tm` is updated, with the next smaller
/// field reset); 1 if it exists as written.
fn within_bounds(clock: &mut Clock<'_>, tm: &mut Tm) -> i32 {
    if tm.year > MAX_YEAR {
        return -1;
    }
    let mut t = *tm;
    match clock.mktime(&mut t) {
        Some(secs) if secs >= 0 => {}
        _ => return -1,
    }
    let order = if t.year != tm.year {
        t.mon = 0;
        t.year.cmp(&tm.year)
    } else if t.mon != tm.mon {
        t.mday = 1;
        t.mon.cmp(&tm.mon)
    } else if t.mday != tm.mday {
        t.hour = 0;
        t.mday.cmp(&tm.mday)
    } else if t.hour != tm.hour {
        t.min = 0;
        t.hour.cmp(&tm.hour)
    } else if t.min != tm.min {
        t.sec = 0;
        t.min.cmp(&tm.min)
    } else {
        t.sec.cmp(&tm.sec)
    };
    match order {
        std::cmp::Ordering::Less => -1,
        std::cmp::Ordering::Equal => 1,
        std::cmp::Ordering::Greater => {
            *tm = t;
            0
        }
    }
}

fn matches_weekday(weekdays: Option<u8>, clock: &mut Clock<'_>, tm: &Tm) -> bool {
    let Some(bits) = weekdays else {
        return true;
    };
    let mut t = *tm;
    match clock.mktime(&mut t) {
        Some(secs) if secs >= 0 => {}
        _ => return false,
    }
    // Bit 0 is Monday; tm_wday 0 is Sunday.
    let k = (t.wday + 6) % 7;
    u32::try_from(k)
        .ok()
        .and_then(|k| 1u8.checked_shl(k))
        .is_some_and(|bit| bits & bit != 0)
}
