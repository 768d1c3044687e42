//! Every duration of the config has an upper bound, so no sum or product the agent makes of
//! them (timeouts times retries, deadlines from now) can overflow.

use std::time::Duration;

/// The longest duration any key accepts: a year is past every sensible timeout or delay, and
/// far below what `Instant + Duration` or a few multiplications could overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(366 * 24 * 3600);

/// The first of `durations` over `MAX_DURATION`, as (key, message).
pub(super) fn check(durations: &[(&'static str, Duration)]) -> Result<(), (&'static str, String)> {
    match durations.iter().find(|(_, d)| *d > MAX_DURATION) {
        Some((key, d)) => Err((
            key,
            format!(
                "{} is longer than the largest accepted duration ({})",
                humantime::format_duration(*d),
                humantime::format_duration(MAX_DURATION)
            ),
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn over_a_year_is_refused_with_its_key() {
        assert!(check(&[("a", MAX_DURATION), ("b", Duration::ZERO)]).is_ok());
        let (key, message) = check(&[
            ("a", Duration::from_secs(1)),
            ("b", MAX_DURATION + Duration::from_secs(1)),
        ])
        .unwrap_err();
        assert_eq!(key, "b");
        assert!(
            message.contains("longest") || message.contains("largest"),
            "{message}"
        );
    }
}
