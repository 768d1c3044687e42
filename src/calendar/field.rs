//! One field of an expression: numbers (with second fractions), ranges, repetitions, lists.

use super::{Chain, Component, Problem, USEC_PER_SEC};

/// systemd refuses a field with more than this many comma-separated values (plus one).
const COMPONENTS_MAX: usize = 240;

/// The byte at `i`, or 0 past the end (C's terminating NUL).
pub(super) fn at(s: &[u8], i: usize) -> u8 {
    s.get(i).copied().unwrap_or(0)
}

/// The text from `i` up to the next space, for error messages.
pub(super) fn token(s: &[u8], i: usize) -> String {
    let rest = s.get(i..).unwrap_or_default();
    let end = rest.iter().position(|&b| b == b' ').unwrap_or(rest.len());
    String::from_utf8_lossy(rest.get(..end.min(40)).unwrap_or_default()).into_owned()
}

pub(super) fn skip_spaces(s: &[u8], mut pos: usize) -> usize {
    while at(s, pos) == b' ' {
        pos += 1;
    }
    pos
}

/// Digits from `pos` as strtoul reads them; `None` when they overflow 64 bits.
pub(super) fn digits(s: &[u8], mut pos: usize) -> Option<(u64, usize)> {
    let mut value: u64 = 0;
    while at(s, pos).is_ascii_digit() {
        value = value
            .checked_mul(10)?
            .checked_add(u64::from(at(s, pos) - b'0'))?;
        pos += 1;
    }
    Some((value, pos))
}

/// Up to six fraction digits (padded, the seventh rounding), then any further digits skipped.
fn fraction(s: &[u8], mut pos: usize) -> Option<(u64, usize)> {
    let mut value = 0;
    let mut n = 0;
    while n < 6 && at(s, pos).is_ascii_digit() {
        value = value * 10 + u64::from(at(s, pos) - b'0');
        pos += 1;
        n += 1;
    }
    if n == 0 {
        return None;
    }
    if n == 6 && matches!(at(s, pos), b'5'..=b'9') {
        value += 1;
    }
    for _ in n..6 {
        value *= 10;
    }
    while at(s, pos).is_ascii_digit() {
        pos += 1;
    }
    Some((value, pos))
}

/// One number; in the seconds field scaled to µs and allowing a fraction.
fn decimal(s: &[u8], pos: usize, usec: bool) -> Result<(i64, usize), Problem> {
    if !at(s, pos).is_ascii_digit() {
        return Err(Problem::BadNumber(token(s, pos)));
    }
    let too_large = || Problem::TooLarge(token(s, pos));
    let (mut value, mut end) = digits(s, pos).ok_or_else(too_large)?;
    if usec {
        value = value.checked_mul(1_000_000).ok_or_else(too_large)?;
        if at(s, end) == b'.' && at(s, end + 1) != b'.' {
            let (add, e) = fraction(s, end + 1).ok_or_else(|| Problem::BadNumber(token(s, pos)))?;
            value = value.checked_add(add).ok_or_else(too_large)?;
            end = e;
        }
    }
    let value = i64::try_from(value)
        .ok()
        .filter(|&v| v <= i64::from(i32::MAX))
        .ok_or_else(too_large)?;
    Ok((value, end))
}

/// A field: `*` or a comma-separated list of components.
pub(super) fn chain(s: &[u8], mut pos: usize, usec: bool) -> Result<(Chain, usize), Problem> {
    if at(s, pos) == b'*' {
        let any = usec.then(|| {
            vec![Component {
                start: 0,
                stop: -1,
                repeat: USEC_PER_SEC,
            }]
        });
        return Ok((any, pos + 1));
    }
    let mut list = Vec::new();
    loop {
        if list.len() > COMPONENTS_MAX {
            return Err(Problem::TooManyValues(token(s, pos)));
        }
        let begin = pos;
        let (start, mut e) = decimal(s, pos, usec)?;
        let (mut stop, mut repeat) = (-1, 0);
        if at(s, e) == b'.' && at(s, e + 1) == b'.' {
            (stop, e) = decimal(s, e + 2, usec)?;
            repeat = if usec { USEC_PER_SEC } else { 1 };
        }
        if at(s, e) == b'/' {
            (repeat, e) = decimal(s, e + 1, usec)?;
            if repeat == 0 {
                return Err(Problem::ZeroRepeat(token(s, e.saturating_sub(1))));
            }
        } else {
            if start > i64::from(i32::MAX) - repeat {
                return Err(Problem::TooLarge(token(s, begin)));
            }
            if usec && stop >= 0 && start + repeat > stop {
                return Err(Problem::ShortSecondsRange(token(s, begin)));
            }
        }
        if !matches!(at(s, e), 0 | b' ' | b',' | b'-' | b'~' | b':') {
            return Err(Problem::Unexpected(token(s, e)));
        }
        list.push(Component {
            start,
            stop,
            repeat,
        });
        pos = e;
        if at(s, pos) != b',' {
            return Ok((Some(list), pos));
        }
        pos += 1;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn fractions_round_at_the_seventh_digit() {
        let s = b"1.9999995";
        assert_eq!(decimal(s, 0, true).unwrap(), (2_000_000, 9));
        assert_eq!(decimal(b"0.5", 0, true).unwrap(), (500_000, 3));
        assert_eq!(decimal(b"3000", 0, true).map_err(|_| ()), Err(()));
    }

    #[test]
    fn lists_stop_at_241_values() {
        let list: Vec<String> = (0..242).map(|i| (i % 60).to_string()).collect();
        let s = list.join(",");
        assert!(matches!(
            chain(s.as_bytes(), 0, false),
            Err(Problem::TooManyValues(_))
        ));
        let s = list[..241].join(",");
        let (parsed, end) = chain(s.as_bytes(), 0, false).unwrap();
        assert_eq!((parsed.map(|l| l.len()), end), (Some(241), s.len()));
    }

    #[test]
    fn components_like_systemd() {
        let c = |start, stop, repeat| Component {
            start,
            stop,
            repeat,
        };
        let cases = [
            ("5", false, Ok(vec![c(5, -1, 0)])),
            ("1..3", false, Ok(vec![c(1, 3, 1)])),
            ("1..9/2,4", false, Ok(vec![c(1, 9, 2), c(4, -1, 0)])),
            ("0/0.5", true, Ok(vec![c(0, -1, 500_000)])),
            ("1..2", true, Ok(vec![c(1_000_000, 2_000_000, 1_000_000)])),
            ("1.5..2", true, Err(())),
            ("3/0", false, Err(())),
            ("x", false, Err(())),
            ("3x", false, Err(())),
            ("2147483648", false, Err(())),
        ];
        for (input, usec, want) in cases {
            let got = chain(input.as_bytes(), 0, usec).map(|(l, _)| l.unwrap_or_default());
            assert_eq!(got.map_err(|_| ()), want, "{input}");
        }
    }
}
