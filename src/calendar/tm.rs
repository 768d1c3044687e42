//! A model of glibc's `struct tm`, `localtime_r`, `mktime` and `timegm`, whose DST choices systemd inherits.

use jiff::tz::TimeZone;

/// `struct tm` with a full year (not years since 1900) and wide fields; `mon` is 0-based.
/// Fields may be out of range before normalization.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Tm {
    pub year: i64,
    pub mon: i64,
    pub mday: i64,
    pub hour: i64,
    pub min: i64,
    pub sec: i64,
    /// -1 unknown, 0 standard time, 1 daylight time.
    pub isdst: i64,
    /// 0 = Sunday.
    pub wday: i64,
    /// 0-based day of the year.
    pub yday: i64,
}

/// Days before each month (normal and leap years).
const MON_YDAY: [[i64; 13]; 2] = [
    [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334, 365],
    [0, 31, 60, 91, 121, 152, 182, 213, 244, 274, 305, 335, 366],
];

fn is_leap(y: i64) -> bool {
    y % 4 == 0 && (y % 100 != 0 || y % 400 == 0)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (`m` 1..=12).
pub(super) fn days_from_civil(y: i64, m: i64, d: i64) -> Option<i64> {
    let y = if m <= 2 { y.checked_sub(1)? } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era.checked_mul(146_097)?.checked_add(doe - 719_468)
}

/// The date (`m` 1..=12) of a day number since 1970-01-01.
pub(super) fn civil_from_days(days: i64) -> Option<(i64, i64, i64)> {
    let z = days.checked_add(719_468)?;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = era.checked_mul(400)?.checked_add(yoe)? + i64::from(m <= 2);
    Some((y, m, d))
}

/// Seconds since the epoch of a wall-clock reading taken as UTC (`yday` 0-based, may overflow).
fn linear(year: i64, yday: i64, hour: i64, min: i64, sec: i64) -> Option<i64> {
    if !(-1_000_000..=1_000_000).contains(&year) {
        return None;
    }
    let days = days_from_civil(year, 1, 1)?.checked_add(yday)?;
    days.checked_mul(86_400)?
        .checked_add(hour.checked_mul(3600)?)?
        .checked_add(min.checked_mul(60)?)?
        .checked_add(sec)
}

fn tm_linear(tm: &Tm) -> Option<i64> {
    linear(tm.year, tm.yday, tm.hour, tm.min, tm.sec)
}

/// Whether two `tm_isdst` values disagree (both known, one zero and one not).
fn isdst_differ(a: i64, b: i64) -> bool {
    (a == 0) != (b == 0) && a >= 0 && b >= 0
}

/// `localtime_r` in one zone (or `gmtime_r`), plus the offset guess glibc's `mktime` carries
/// from one call to the next (`localtime_offset`: result minus wall clock, in seconds).
pub(super) struct Clock<'a> {
    zone: Option<&'a TimeZone>,
    pub guess: i64,
}

impl<'a> Clock<'a> {
    pub(super) fn utc() -> Self {
        Clock {
            zone: None,
            guess: 0,
        }
    }

    pub(super) fn zone(tz: &'a TimeZone, guess: i64) -> Self {
        Clock {
            zone: Some(tz),
            guess,
        }
    }

    /// `localtime_r`/`gmtime_r`.
    pub(super) fn convert(&self, t: i64) -> Option<Tm> {
        let (offset, isdst) = match self.zone {
            None => (0, 0),
            Some(tz) => {
                let info = tz.to_offset_info(jiff::Timestamp::from_second(t).ok()?);
                (
                    i64::from(info.offset().seconds()),
                    i64::from(info.dst().is_dst()),
                )
            }
        };
        let local = t.checked_add(offset)?;
        let days = local.div_euclid(86_400);
        let secs = local.rem_euclid(86_400);
        let (year, m, mday) = civil_from_days(days)?;
        Some(Tm {
            year,
            mon: m - 1,
            mday,
            hour: secs / 3600,
            min: secs / 60 % 60,
            sec: secs % 60,
            isdst,
            wday: (days + 4).rem_euclid(7),
            yday: days - days_from_civil(year, 1, 1)?,
        })
    }

    /// `mktime`/`timegm`: normalizes `tp` in place and returns its time, or `None` (leaving `tp`
    /// alone) where glibc fails. The search is glibc's: start from the previous call's offset,
    /// correct by the error; on oscillation (a spring-forward gap) settle on the daylight-time
    /// side; when the match has the wrong `tm_isdst`, extrapolate from a neighbour that has it.
    pub(super) fn mktime(&mut self, tp: &mut Tm) -> Option<i64> {
        // timegm() clears tm_isdst before searching.
        let isdst = if self.zone.is_none() { 0 } else { tp.isdst };
        let year = tp.year.checked_add(tp.mon.div_euclid(12))?;
        let row = MON_YDAY.get(usize::from(is_leap(year)))?;
        let mon_yday = row.get(usize::try_from(tp.mon.rem_euclid(12)).ok()?)?;
        let yday = tp.mday.checked_add(mon_yday - 1)?;
        let sec_requested = tp.sec;
        // glibc allows for leap seconds: it probes with 0..=59 and adds the rest back at the end.
        let sec = tp.sec.clamp(0, 59);
        let target = linear(year, yday, tp.hour, tp.min, sec)?;
        let t0 = target.checked_add(self.guess)?;
        let (mut t, mut t1, mut t2) = (t0, t0, t0);
        let mut dst2 = 0;
        let mut remaining_probes = 6;
        let mut tm;
        let mut settled = false;
        loop {
            tm = self.convert(t)?;
            let dt = target.checked_sub(tm_linear(&tm)?)?;
            if dt == 0 {
                break;
            }
            let other_side = if isdst < 0 {
                dst2 <= i64::from(tm.isdst != 0)
            } else {
                (isdst != 0) != (tm.isdst != 0)
            };
            if t == t1 && t != t2 && (tm.isdst < 0 || other_side) {
                settled = true;
                break;
            }
            remaining_probes -= 1;
            if remaining_probes == 0 {
                return None;
            }
            (t1, t2) = (t2, t);
            t = t.checked_add(dt)?;
            dst2 = i64::from(tm.isdst != 0);
        }
        if !settled && isdst_differ(isdst, tm.isdst) {
            (t, tm) = self.neighbour_with_isdst(t, isdst, year, yday, tp, sec)?;
        }
        self.guess = t.wrapping_sub(target);
        if sec_requested != tm.sec {
            let leap = i64::from(sec == 0 && tm.sec == 60);
            t = t.checked_add(leap - sec + sec_requested)?;
            tm = self.convert(t)?;
        }
        *tp = tm;
        Some(t)
    }

    /// glibc's probe, a week at a time up to about eight years each way, for a time with the
    /// requested `tm_isdst`, then the wall clock taken with that time's offset.
    fn neighbour_with_isdst(
        &self,
        t: i64,
        isdst: i64,
        year: i64,
        yday: i64,
        tp: &Tm,
        sec: i64,
    ) -> Option<(i64, Tm)> {
        const STRIDE: i64 = 601_200;
        const DURATION_MAX: i64 = 536_454_000;
        let bound = DURATION_MAX / 2 + STRIDE;
        let target = linear(year, yday, tp.hour, tp.min, sec)?;
        let mut delta = STRIDE;
        while delta < bound {
            for direction in [-1, 1] {
                let ot = t.checked_add(delta * direction)?;
                let otm = self.convert(ot)?;
                if !isdst_differ(isdst, otm.isdst) {
                    let gt = ot.checked_add(target.checked_sub(tm_linear(&otm)?)?)?;
                    if let Some(tm) = self.convert(gt) {
                        return Some((gt, tm));
                    }
                }
            }
            delta += STRIDE;
        }
        None
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn tm(year: i64, mon: i64, mday: i64, hour: i64, min: i64, isdst: i64) -> Tm {
        Tm {
            year,
            mon,
            mday,
            hour,
            min,
            sec: 0,
            isdst,
            wday: 0,
            yday: 0,
        }
    }

    #[test]
    fn civil_round_trips() {
        for days in [-800_000, -1, 0, 59, 11_016, 2_932_896, 10_000_000] {
            let (y, m, d) = civil_from_days(days).unwrap();
            assert_eq!(days_from_civil(y, m, d), Some(days));
        }
        assert_eq!(civil_from_days(0), Some((1970, 1, 1)));
    }

    #[test]
    fn mktime_in_gaps_and_folds_like_glibc() {
        let berlin = TimeZone::get("Europe/Berlin").unwrap();
        // (wall time, isdst, guess, expected UTC seconds, expected normalized hour)
        let cases = [
            // 2026-03-29 02:30 does not exist: glibc lands on 03:30 CEST (01:30 UTC).
            (tm(2026, 2, 29, 2, 30, -1), -3600, 1_774_747_800, 3),
            (tm(2026, 2, 29, 2, 30, -1), -7200, 1_774_747_800, 3),
            // 2026-10-25 02:30 happens twice: the guess picks the side.
            (tm(2026, 9, 25, 2, 30, -1), -7200, 1_792_888_200, 2),
            (tm(2026, 9, 25, 2, 30, -1), -3600, 1_792_891_800, 2),
            (tm(2026, 9, 25, 2, 30, 0), -7200, 1_792_891_800, 2),
            // Out-of-range fields normalize: 2026-12-32 24:00 is 2027-01-02 00:00 CET.
            (tm(2026, 11, 32, 24, 0, -1), 0, 1_798_844_400, 0),
        ];
        for (mut t, guess, want, hour) in cases {
            let mut clock = Clock::zone(&berlin, guess);
            assert_eq!(clock.mktime(&mut t), Some(want), "{t:?}");
            assert_eq!(t.hour, hour);
        }
    }

    #[test]
    fn timegm_is_linear() {
        let mut clock = Clock::utc();
        let mut t = tm(2026, 13, 0, 0, 0, -1);
        t.sec = 60;
        // 2027-02-00 00:00:60 = 2027-01-31 00:01:00 UTC
        assert_eq!(clock.mktime(&mut t), Some(1_801_353_660));
        assert_eq!((t.mon, t.mday, t.min, t.sec), (0, 31, 1, 0));
    }
}
