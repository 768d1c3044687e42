//! `calendar`: evaluates a systemd calendar event the way the schedule does (SPEC §2).

use jiff::Timestamp;
use jiff::tz::TimeZone;

use crate::calendar::{CalendarError, parse_base_time, render};

/// `calendar`: prints the normalized form and the next elapses (exit 0), or the error (exit 2).
pub fn run(expr: &str, iterations: u32, base: Option<&str>, json: bool) -> u8 {
    let base = match base.map(parse_base_time).transpose() {
        Ok(base) => base.unwrap_or_else(Timestamp::now),
        Err(e) => {
            eprintln!("nixos-hydra-upgrade: {e}");
            return 2;
        }
    };
    match render(expr, iterations, base, &TimeZone::system(), json) {
        Ok(text) => {
            print!("{text}");
            if !text.ends_with('\n') {
                println!();
            }
            0
        }
        Err(e) => {
            eprintln!("nixos-hydra-upgrade: {e}");
            // systemd-analyze fails the same way when its search gives up on a valid event.
            if matches!(e, CalendarError::Stuck { .. }) {
                1
            } else {
                2
            }
        }
    }
}
