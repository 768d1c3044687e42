//! Daily time windows (`reboot_window`, `activation_window`): "HH:MM" bounds, spanning midnight
//! when lower > upper.

use serde::Deserialize;

/// A wall-clock time of day, minutes since midnight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeOfDay(pub u16);

impl TimeOfDay {
    pub fn parse(text: &str) -> Option<TimeOfDay> {
        let (h, m) = text.split_once(':')?;
        if h.is_empty() || h.len() > 2 || m.len() != 2 {
            return None;
        }
        let h: u16 = h.parse().ok()?;
        let m: u16 = m.parse().ok()?;
        (h < 24 && m < 60).then_some(TimeOfDay(h * 60 + m))
    }
}

impl<'de> Deserialize<'de> for TimeOfDay {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        TimeOfDay::parse(&text)
            .ok_or_else(|| serde::de::Error::custom(format!("\"{text}\" is not a time HH:MM")))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeWindow {
    pub lower: TimeOfDay,
    pub upper: TimeOfDay,
}

impl TimeWindow {
    /// Whether `now` lies in the window; `lower > upper` spans midnight.
    pub fn contains(&self, now: TimeOfDay) -> bool {
        if self.lower.0 <= self.upper.0 {
            self.lower.0 <= now.0 && now.0 <= self.upper.0
        } else {
            now.0 >= self.lower.0 || now.0 <= self.upper.0
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn reboot_window_spans_midnight() {
        let w = TimeWindow {
            lower: TimeOfDay::parse("23:00").unwrap(),
            upper: TimeOfDay::parse("02:00").unwrap(),
        };
        for (t, inside) in [
            ("23:30", true),
            ("00:00", true),
            ("02:00", true),
            ("02:01", false),
            ("12:00", false),
        ] {
            assert_eq!(w.contains(TimeOfDay::parse(t).unwrap()), inside, "{t}");
        }
        let day = TimeWindow {
            lower: TimeOfDay::parse("01:00").unwrap(),
            upper: TimeOfDay::parse("05:00").unwrap(),
        };
        assert!(day.contains(TimeOfDay::parse("04:59").unwrap()));
        assert!(!day.contains(TimeOfDay::parse("05:01").unwrap()));
    }
}
