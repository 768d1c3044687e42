//! Differential test: the calendar engine against `systemd-analyze calendar` (systemd 252+),
//! on generated expressions across time zones with base times near DST transitions, and on the
//! examples of systemd.time(7). Fails when systemd-analyze is missing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use jiff::Timestamp;
use jiff::tz::TimeZone;
use nixos_hydra_upgrade::calendar::{CalendarEvent, render};
use std::process::Command;

const ITERATIONS: u32 = 5;

/// Zones with ordinary, half-hour (Lord Howe), 45-minute offset (Chatham) and no DST.
const ZONES: [&str; 8] = [
    "UTC",
    "Europe/Berlin",
    "America/New_York",
    "Australia/Lord_Howe",
    "Pacific/Chatham",
    "Asia/Kolkata",
    "America/Sao_Paulo",
    "Europe/Dublin",
];

/// xorshift64*: small, deterministic, good enough to pick grammar branches.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
}

fn load_zone(name: &str) -> TimeZone {
    let data = std::fs::read(format!("/usr/share/zoneinfo/{name}")).unwrap();
    TimeZone::tzif(name, &data).unwrap()
}

/// Values that matter near DST changes (01:00-03:00) and month ends, now and then one out of
/// range, else anything in range.
fn value(rng: &mut Rng, field: usize) -> u64 {
    let (lo, hi, hot, bad): (u64, u64, &[u64], &[u64]) = match field {
        0 => (2024, 2028, &[24, 25, 26, 27, 2026, 2199, 99], &[1969, 2200]),
        1 => (1, 12, &[2, 3, 4, 10, 11], &[13, 0]),
        2 => (1, 31, &[1, 28, 29, 30, 31], &[32, 0]),
        3 => (0, 23, &[1, 2, 3], &[24]),
        4 => (0, 59, &[0, 15, 30, 45, 59], &[60]),
        _ => (0, 59, &[0, 30, 59], &[60]),
    };
    match rng.below(100) {
        0..=2 => bad[rng.below(bad.len() as u64) as usize],
        3..=42 => hot[rng.below(hot.len() as u64) as usize],
        _ => lo + rng.below(hi - lo + 1),
    }
}

fn seconds_value(rng: &mut Rng) -> String {
    let v = value(rng, 5);
    if rng.chance(25) {
        let frac = rng.pick(&["5", "25", "125", "0000005", "999999", "4200004", "75"]);
        format!("{v}.{frac}")
    } else {
        v.to_string()
    }
}

fn component(rng: &mut Rng, field: usize) -> String {
    let num = |rng: &mut Rng| {
        if field == 5 {
            seconds_value(rng)
        } else if field == 0 && rng.chance(50) {
            format!("{:02}", value(rng, 0) % 100)
        } else {
            value(rng, field).to_string()
        }
    };
    let repeat = |rng: &mut Rng| {
        if field == 5 && rng.chance(30) {
            rng.pick(&["0.5", "1.5", "0.25", "7.1700005", "0"])
                .to_owned()
        } else {
            let max = if field == 0 { 4 } else { 13 };
            (rng.below(max) + u64::from(rng.chance(95))).to_string()
        }
    };
    match rng.below(10) {
        0..=4 => num(rng),
        5 | 6 => format!("{}..{}", num(rng), num(rng)),
        7 | 8 => format!("{}/{}", num(rng), repeat(rng)),
        _ => format!("{}..{}/{}", num(rng), num(rng), repeat(rng)),
    }
}

fn field(rng: &mut Rng, field: usize) -> String {
    if rng.chance(35) {
        return "*".to_owned();
    }
    let max = if rng.chance(80) { 1 } else { 4 };
    let n = 1 + rng.below(max);
    let parts: Vec<String> = (0..n).map(|_| component(rng, field)).collect();
    parts.join(",")
}

const DAY_NAMES: [&str; 14] = [
    "Mon",
    "Tue",
    "Wed",
    "Thu",
    "Fri",
    "Sat",
    "Sun",
    "monday",
    "TUESDAY",
    "Wednesday",
    "thursday",
    "Friday",
    "sat",
    "Sunday",
];

fn weekdays(rng: &mut Rng) -> String {
    let n = 1 + rng.below(3);
    let mut out = Vec::new();
    for _ in 0..n {
        let a = rng.pick(&DAY_NAMES);
        out.push(match rng.below(6) {
            0 | 1 => format!("{a}..{}", rng.pick(&DAY_NAMES)),
            2 => format!("{a}-{}", rng.pick(&DAY_NAMES)),
            3 if rng.chance(20) => rng.pick(&["Fxi", "Mo", "Mond", "Tues"]).to_owned(),
            _ => a.to_owned(),
        });
    }
    let mut s = out.join(",");
    if rng.chance(5) {
        s.push(',');
    }
    s
}

fn expression(rng: &mut Rng) -> String {
    let mut s = String::new();
    if rng.chance(8) {
        let short = rng.pick(&[
            "minutely",
            "hourly",
            "daily",
            "weekly",
            "monthly",
            "yearly",
            "annually",
            "quarterly",
            "semiannually",
            "semi-annually",
            "biannually",
            "DAILY",
            "Weekly",
        ]);
        s.push_str(short);
    } else if rng.chance(3) {
        s = format!(
            "@{}",
            rng.pick(&["0", "1700000000", "1800000000", "7258118399", "-1"])
        );
    } else {
        let mut parts = Vec::new();
        if rng.chance(30) {
            parts.push(weekdays(rng));
        }
        if rng.chance(65) {
            let eom = if rng.chance(12) { "~" } else { "-" };
            if rng.chance(55) {
                parts.push(format!(
                    "{}-{}{eom}{}",
                    field(rng, 0),
                    field(rng, 1),
                    field(rng, 2)
                ));
            } else {
                parts.push(format!("{}{eom}{}", field(rng, 1), field(rng, 2)));
            }
        }
        if rng.chance(75) || parts.is_empty() {
            let mut t = format!("{}:{}", field(rng, 3), field(rng, 4));
            if rng.chance(45) {
                t.push(':');
                t.push_str(&field(rng, 5));
            }
            parts.push(t);
        }
        s = parts.join(" ");
    }
    if rng.chance(25) {
        s.push(' ');
        s.push_str(rng.pick(&[
            "UTC",
            "utc",
            "Europe/Berlin",
            "America/New_York",
            "Australia/Lord_Howe",
            "Pacific/Chatham",
            "Asia/Kolkata",
            "Etc/GMT-3",
            "CET",
            "CEST",
            "EST",
            "EDT",
            "Mars/Olympus",
        ]));
    }
    if rng.chance(8) {
        mutate(rng, &mut s);
    }
    s
}

/// One random edit, to probe what systemd rejects.
fn mutate(rng: &mut Rng, s: &mut String) {
    const ALPHABET: &[u8] = b"0123456789*-:.,/~ @xM";
    let c = char::from(ALPHABET[rng.below(ALPHABET.len() as u64) as usize]);
    let at = rng.below(s.len() as u64 + 1) as usize;
    match rng.below(3) {
        0 => s.insert(at, c),
        1 if at < s.len() => {
            s.remove(at);
        }
        _ if at < s.len() => s.replace_range(at..=at, &c.to_string()),
        _ => s.push(c),
    }
}

/// Base times for a zone: around each DST change of 2025-2027, plus a few ordinary ones.
fn base_times(rng: &mut Rng, tz: &TimeZone) -> Vec<i64> {
    let start = Timestamp::from_second(1_735_689_600).unwrap(); // 2025-01-01
    let end = 1_830_297_600; // 2028-01-01
    let mut out = Vec::new();
    for t in tz.following(start).take(8) {
        let s = t.timestamp().as_second();
        if s > end {
            break;
        }
        for delta in [-86_400, -5400, -3600, -1, 0, 1800, 3600] {
            if rng.chance(45) {
                out.push(s + delta);
            }
        }
    }
    while out.len() < 12 {
        out.push(1_735_689_600 + rng.below(94_608_000) as i64);
    }
    out
}

/// The elapses systemd-analyze printed for one expression, or `None` if it refused it.
#[derive(Debug, PartialEq)]
struct Outcome {
    normalized: String,
    next: Vec<i64>,
}

fn utc_seconds(line: &str) -> i64 {
    // "Wed 2023-11-15 03:40:00 UTC"
    let mut words = line.split_whitespace().skip(1);
    let (date, time) = (words.next().unwrap(), words.next().unwrap());
    let ts: Timestamp = format!("{date}T{time}Z").parse().unwrap();
    ts.as_second()
}

fn parse_block(lines: &[&str]) -> Option<Outcome> {
    if lines.is_empty() {
        return None;
    }
    let mut normalized = None;
    let (mut main, mut utc) = (Vec::new(), Vec::new());
    for line in lines {
        let (label, value) = line.split_once(": ").unwrap();
        match label.trim() {
            "Normalized form" => normalized = Some(value.to_owned()),
            "(in UTC)" => utc.push(utc_seconds(value)),
            "Next elapse" if value == "never" => {}
            l if l == "Next elapse" || l.starts_with("Iter. #") => main.push(value.to_owned()),
            _ => {}
        }
    }
    let next = if utc.is_empty() {
        main.iter().map(|v| utc_seconds(v)).collect()
    } else {
        utc
    };
    Some(Outcome {
        normalized: normalized.unwrap(),
        next,
    })
}

/// Runs systemd-analyze once for many expressions; one outcome per expression.
fn systemd(zone: &str, base: i64, exprs: &[String]) -> Vec<Option<Outcome>> {
    let out = Command::new("systemd-analyze")
        .env("TZ", zone)
        .env("LC_ALL", "C")
        .env("SYSTEMD_COLORS", "0")
        .arg("calendar")
        .arg(format!("--iterations={ITERATIONS}"))
        .arg(format!("--base-time=@{base}"))
        .arg("--")
        .args(exprs)
        .output()
        .expect("systemd-analyze must be installed (systemd 252 or later) for this test");
    let stdout = String::from_utf8(out.stdout).unwrap();
    // Every expression after the first starts with an empty line; a refused one prints nothing.
    let mut blocks: Vec<Vec<&str>> = vec![Vec::new()];
    for line in stdout.lines() {
        if line.is_empty() {
            blocks.push(Vec::new());
        } else if let Some(b) = blocks.last_mut() {
            b.push(line);
        }
    }
    assert_eq!(blocks.len(), exprs.len(), "output blocks for {exprs:?}");
    blocks.iter().map(|b| parse_block(b)).collect()
}

fn ours(expr: &str, base: i64, local: &TimeZone) -> Option<Outcome> {
    let json = render(
        expr,
        ITERATIONS,
        Timestamp::from_second(base).unwrap(),
        local,
        true,
    )
    .ok()?;
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let next = v["next"].as_array().unwrap();
    let next = next
        .iter()
        .map(|s| {
            s.as_str()
                .unwrap()
                .parse::<Timestamp>()
                .unwrap()
                .as_second()
        })
        .collect();
    Some(Outcome {
        normalized: v["normalized"].as_str().unwrap().to_owned(),
        next,
    })
}

/// Compares one batch; returns (agreeing, accepted by systemd, disagreements described).
fn compare(zone: &str, base: i64, exprs: &[String]) -> (usize, usize, Vec<String>) {
    let local = load_zone(zone);
    let theirs = systemd(zone, base, exprs);
    let accepted = theirs.iter().filter(|o| o.is_some()).count();
    let mut agree = 0;
    let mut diffs = Vec::new();
    for (expr, want) in exprs.iter().zip(theirs) {
        let got = ours(expr, base, &local);
        if got == want {
            agree += 1;
        } else {
            diffs.push(format!(
                "TZ={zone} base=@{base} {expr:?}\n  systemd: {want:?}\n  ours:    {got:?}"
            ));
        }
    }
    (agree, accepted, diffs)
}

#[test]
fn calendar_differential_generated() {
    // Another seed explores other expressions: CALENDAR_DIFF_SEED=42 cargo test --test calendar_systemd
    let seed = std::env::var("CALENDAR_DIFF_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_cafe_f00d_1234_u64);
    let mut rng = Rng(seed | 1);
    let (mut total, mut agree, mut accepted, mut diffs) = (0, 0, 0, Vec::new());
    for zone in ZONES {
        let tz = load_zone(zone);
        for base in base_times(&mut rng, &tz) {
            let exprs: Vec<String> = (0..40).map(|_| expression(&mut rng)).collect();
            let (a, ok, d) = compare(zone, base, &exprs);
            total += exprs.len();
            agree += a;
            accepted += ok;
            diffs.extend(d);
        }
    }
    for d in diffs.iter().take(40) {
        eprintln!("{d}");
    }
    println!(
        "calendar differential: {agree}/{total} agree ({accepted} accepted by systemd, {} refused)",
        total - accepted
    );
    assert!(total >= 2000, "only {total} cases generated");
    assert!(diffs.is_empty(), "{} disagreements", diffs.len());
}

/// Every example of systemd.time(7) (systemd 252), with the normalized form the man page gives.
const MAN_PAGE: [(&str, &str); 44] = [
    (
        "Thu,Fri 2012-*-1,5 11:12:13",
        "Thu,Fri 2012-*-01,05 11:12:13",
    ),
    ("*-02~03", "*-02~03 00:00:00"),
    ("Mon *-05~07/1", "Mon *-05~07/1 00:00:00"),
    ("minutely", "*-*-* *:*:00"),
    ("hourly", "*-*-* *:00:00"),
    ("daily", "*-*-* 00:00:00"),
    ("monthly", "*-*-01 00:00:00"),
    ("weekly", "Mon *-*-* 00:00:00"),
    ("yearly", "*-01-01 00:00:00"),
    ("quarterly", "*-01,04,07,10-01 00:00:00"),
    ("semiannually", "*-01,07-01 00:00:00"),
    (
        "Sat,Thu,Mon..Wed,Sat..Sun",
        "Mon..Thu,Sat,Sun *-*-* 00:00:00",
    ),
    ("Mon,Sun 12-*-* 2,1:23", "Mon,Sun 2012-*-* 01,02:23:00"),
    ("Wed *-1", "Wed *-*-01 00:00:00"),
    ("Wed..Wed,Wed *-1", "Wed *-*-01 00:00:00"),
    ("Wed, 17:48", "Wed *-*-* 17:48:00"),
    (
        "Wed..Sat,Tue 12-10-15 1:2:3",
        "Tue..Sat 2012-10-15 01:02:03",
    ),
    ("*-*-7 0:0:0", "*-*-07 00:00:00"),
    ("10-15", "*-10-15 00:00:00"),
    ("monday *-12-* 17:00", "Mon *-12-* 17:00:00"),
    ("Mon,Fri *-*-3,1,2 *:30:45", "Mon,Fri *-*-01,02,03 *:30:45"),
    ("12,14,13,12:20,10,30", "*-*-* 12,13,14:10,20,30:00"),
    ("12..14:10,20,30", "*-*-* 12..14:10,20,30:00"),
    ("mon,fri *-1/2-1,3 *:30:45", "Mon,Fri *-01/2-01,03 *:30:45"),
    ("03-05 08:05:40", "*-03-05 08:05:40"),
    ("08:05:40", "*-*-* 08:05:40"),
    ("05:40", "*-*-* 05:40:00"),
    ("Sat,Sun 12-05 08:05:40", "Sat,Sun *-12-05 08:05:40"),
    ("Sat,Sun 08:05:40", "Sat,Sun *-*-* 08:05:40"),
    ("2003-03-05 05:40", "2003-03-05 05:40:00"),
    (
        "05:40:23.4200004/3.1700005",
        "*-*-* 05:40:23.420000/3.170001",
    ),
    ("2003-02..04-05", "2003-02..04-05 00:00:00"),
    ("2003-03-05 05:40 UTC", "2003-03-05 05:40:00 UTC"),
    ("2003-03-05", "2003-03-05 00:00:00"),
    ("03-05", "*-03-05 00:00:00"),
    ("hourly", "*-*-* *:00:00"),
    ("daily", "*-*-* 00:00:00"),
    ("daily UTC", "*-*-* 00:00:00 UTC"),
    ("monthly", "*-*-01 00:00:00"),
    ("weekly", "Mon *-*-* 00:00:00"),
    (
        "weekly Pacific/Auckland",
        "Mon *-*-* 00:00:00 Pacific/Auckland",
    ),
    ("yearly", "*-01-01 00:00:00"),
    ("annually", "*-01-01 00:00:00"),
    ("*:2/3", "*-*-* *:02/3:00"),
];

#[test]
fn calendar_differential_man_page() {
    let zone = "Europe/Berlin";
    let local = load_zone(zone);
    for (expr, want) in MAN_PAGE {
        let ev = CalendarEvent::parse_with_local(expr, &local).unwrap();
        assert_eq!(ev.normalized(), want, "{expr}");
    }
    let exprs: Vec<String> = MAN_PAGE.iter().map(|(e, _)| (*e).to_owned()).collect();
    let mut total = 0;
    let mut diffs = Vec::new();
    for base in [1_700_000_000, 1_774_746_000, 1_792_890_000] {
        let (_, _, d) = compare(zone, base, &exprs);
        total += exprs.len();
        diffs.extend(d);
    }
    for d in &diffs {
        eprintln!("{d}");
    }
    println!(
        "man page examples: {}/{total} agree with systemd-analyze",
        total - diffs.len()
    );
    assert!(diffs.is_empty());
}
