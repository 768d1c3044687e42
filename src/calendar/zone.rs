//! The trailing zone of an expression: ` UTC`, a local abbreviation (` CET`) or an IANA name.

use super::CalendarEvent;
use jiff::tz::TimeZone;
use std::io::Read;

/// Where zone names are looked up (names are files below): `$TZDIR` if set, systemd's own
/// /usr/share/zoneinfo, then /etc/zoneinfo, which NixOS's patched systemd uses instead.
fn zoneinfo_dirs() -> impl Iterator<Item = std::path::PathBuf> {
    let tzdir = std::env::var_os("TZDIR").filter(|d| !d.is_empty());
    tzdir
        .into_iter()
        .map(std::path::PathBuf::from)
        .chain(["/usr/share/zoneinfo", "/etc/zoneinfo"].map(std::path::PathBuf::from))
}

/// Takes the zone off the end of `expr` into `ev` and returns what is left, as systemd does:
/// ` UTC` (any case) first, then one of the local zone's two abbreviations, then the last
/// space-separated word if it names a zone file.
pub(super) fn split_zone<'a>(expr: &'a str, local: &TimeZone, ev: &mut CalendarEvent) -> &'a str {
    if let Some(body) = strip_suffix_no_case(expr, " UTC") {
        ev.utc = true;
        return body;
    }
    for (dst, name) in (0..).zip(local_abbreviations(local)) {
        if name.is_empty() {
            continue;
        }
        let Some(body) = strip_suffix_no_case(expr, &name) else {
            continue;
        };
        if let Some(body) = body.strip_suffix(' ') {
            ev.dst = dst;
            ev.dst_name = name;
            return body;
        }
    }
    if let Some((body, name)) = expr.rsplit_once(' ')
        && let Some(tz) = load_zone(name)
    {
        ev.timezone = Some((name.to_owned(), tz));
        return body;
    }
    expr
}

fn strip_suffix_no_case<'a>(s: &'a str, suffix: &str) -> Option<&'a str> {
    let cut = s.len().checked_sub(suffix.len())?;
    let tail = s.get(cut..)?;
    tail.eq_ignore_ascii_case(suffix).then(|| s.get(..cut))?
}

/// glibc's `tzname[0]` and `tzname[1]` after reading the zone file: the abbreviations of the
/// latest standard-time and daylight-time types; the standard one stands in for a missing other.
pub(super) fn local_abbreviations(local: &TimeZone) -> [String; 2] {
    let mut names: [Option<String>; 2] = [None, None];
    // Far enough ahead that every explicit transition of the zone file precedes it.
    if let Ok(end) = jiff::Timestamp::from_second(7_258_118_400) {
        for transition in local.preceding(end).take(5000) {
            let slot = usize::from(transition.dst().is_dst());
            if let Some(s) = names.get_mut(slot) {
                s.get_or_insert_with(|| transition.abbreviation().to_owned());
            }
            if names.iter().all(Option::is_some) {
                break;
            }
        }
    }
    let [std, dst] = names;
    let std = std.or_else(|| dst.clone()).unwrap_or_else(|| {
        jiff::Timestamp::from_second(0)
            .map(|t| local.to_offset_info(t).abbreviation().to_owned())
            .unwrap_or_default()
    });
    let dst = dst.unwrap_or_else(|| std.clone());
    [std, dst]
}

/// systemd's `timezone_is_valid()`: a name of letters, digits, `-_+/` (no leading, trailing or
/// doubled `/`) naming a regular file in the zoneinfo directory that starts with `TZif`.
/// The zone is loaded from that very file, the one glibc would read.
fn load_zone(name: &str) -> Option<TimeZone> {
    if name.is_empty() || name.len() >= 4096 || name.starts_with('/') || name.ends_with('/') {
        return None;
    }
    let allowed = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'+' | b'/');
    if !name.bytes().all(allowed) || name.contains("//") {
        return None;
    }
    let mut file = zoneinfo_dirs().find_map(|dir| std::fs::File::open(dir.join(name)).ok())?;
    if !file.metadata().ok()?.is_file() {
        return None;
    }
    let mut data = Vec::new();
    // Zone files are a few kB; refuse anything absurd rather than read it whole.
    file.by_ref().take(1 << 20).read_to_end(&mut data).ok()?;
    if !data.starts_with(b"TZif") {
        return None;
    }
    TimeZone::tzif(name, &data).ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn abbreviations_follow_glibc() {
        let cases = [
            ("Europe/Berlin", ["CET", "CEST"]),
            ("America/New_York", ["EST", "EDT"]),
            ("Asia/Kolkata", ["IST", "+0630"]),
            ("UTC", ["UTC", "UTC"]),
        ];
        for (zone, want) in cases {
            let tz = load_zone(zone).unwrap();
            assert_eq!(local_abbreviations(&tz), want.map(String::from), "{zone}");
        }
    }

    #[test]
    fn zone_names_are_checked_like_systemd() {
        for good in ["Europe/Berlin", "UTC", "EST", "Etc/GMT+5"] {
            assert!(load_zone(good).is_some(), "{good}");
        }
        for bad in [
            "",
            "/etc/localtime",
            "Europe//Berlin",
            "Europe/",
            "Europe",
            "Europe/../Europe/Berlin",
            "europe/berlin",
            "Nowhere/Land",
        ] {
            assert!(load_zone(bad).is_none(), "{bad}");
        }
    }
}
