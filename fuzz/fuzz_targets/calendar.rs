//! libFuzzer target: the systemd calendar parser, its normal form and the next elapse.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nixos_hydra_upgrade::calendar::CalendarEvent;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let utc = jiff::tz::TimeZone::UTC;
    let Ok(event) = CalendarEvent::parse_with_local(text, &utc) else {
        return;
    };
    let normalized = event.normalized();
    let again = CalendarEvent::parse_with_local(&normalized, &utc)
        .unwrap_or_else(|e| panic!("{text:?} -> {normalized:?} does not parse: {e}"));
    assert_eq!(again.normalized(), normalized);
    let base = jiff::Timestamp::from_second(1_767_225_600).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    if let Some(next) = event.next_after(base, &utc) {
        assert!(next.timestamp() > base);
    }
});
