//! Stable-Rust fuzzing of every parser that sees untrusted bytes (the same entry points as the
//! cargo-fuzz targets in `fuzz/`, which need nightly): a deterministic structure-aware mutator,
//! bounded iterations, properties checked on every input, found inputs kept as regressions.
//!
//! `FUZZ_ITERS=2000000 FUZZ_SEED=7 cargo test --release --test fuzz_inputs` runs it for longer.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use nixos_hydra_upgrade::calendar::CalendarEvent;
use nixos_hydra_upgrade::http::upgrade::{Parsed, parse_body};
use nixos_hydra_upgrade::hydra::build_id_from_location;
use nixos_hydra_upgrade::hydra::models::{Build, ErrorBody, Eval};
use nixos_hydra_upgrade::model::StorePath;
use nixos_hydra_upgrade::signature::{Headers, Keys, is_valid_id};

const SECRET: &str =
    "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD\nwhsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n";
const NOW: i64 = 1_767_225_600;

/// Inputs that once broke a property (or nearly did), replayed on every run.
const REGRESSIONS: &[&[u8]] = &[
    b"",
    b"{\"build\": 18446744073709551616}",
    b"{\"build\": 1e400}",
    b"{\"event\":\"buildFinished\",\"build\":1,\"finished\":1,\"buildStatus\":-0}",
    b"{\"build\": 1.0}",
    b"\xef\xbb\xbf{}",
    b"{\"id\":-1,\"finished\":1,\"buildstatus\":0,\"project\":\"\",\"jobset\":\"\",\"job\":\"\"}",
    b"http://[::1/build/5",
    b"/build/5/../6",
    b"//build/7",
    b"https://h/build/00000000000000000000000000000000000000007",
    // The URL parser drops \t \r \n: this once read as build 4821 (now refused).
    b"https://hydra.exle/b\ruild/4821",
    b"https://hydra.example/build/48\t21",
    // The URL parser turned `\` into `/` (build 7 read from "build\7"); now read as written.
    b"http://localhost:3000/hydra/build\\7/",
    b"http://h/build/5/../6",
];

fn iterations() -> usize {
    std::env::var("FUZZ_ITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000)
}

/// xorshift64*.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

/// Tokens that matter to JSON, URLs, base64 and the signature header.
const TOKENS: &[&[u8]] = &[
    b"{",
    b"}",
    b"[",
    b"]",
    b"\"",
    b":",
    b",",
    b"null",
    b"true",
    b"false",
    b"0",
    b"1",
    b"-1",
    b"1e999",
    b"18446744073709551616",
    b"-9223372036854775809",
    b"0.5",
    b"\\u0000",
    b"\\ud800",
    b"\"build\"",
    b"\"event\"",
    b"\"buildFinished\"",
    b"\"finished\"",
    b"\"buildStatus\"",
    b"\"force\"",
    b"\"buildoutputs\"",
    b"\"out\"",
    b"\"path\"",
    b"/nix/store/",
    b"/build/",
    b"http://",
    b"?",
    b"#",
    b"%2F",
    b"v1,",
    b" ",
    b"=",
    b"+",
    b"/",
    b"\xff",
    b"\xc3\x28",
    b"\x00",
];

fn mutate(rng: &mut Rng, corpus: &[Vec<u8>]) -> Vec<u8> {
    let mut data = corpus[rng.below(corpus.len())].clone();
    for _ in 0..=rng.below(6) {
        let at = rng.below(data.len() + 1);
        match rng.below(8) {
            0 if !data.is_empty() => {
                let i = rng.below(data.len());
                data[i] ^= 1 << rng.below(8);
            }
            1 => data.insert(at, rng.next() as u8),
            2 if !data.is_empty() => {
                let end = (at + rng.below(16)).min(data.len());
                data.drain(at.min(end)..end);
            }
            3 => {
                let token = TOKENS[rng.below(TOKENS.len())];
                data.splice(at..at, token.iter().copied());
            }
            4 if !data.is_empty() && data.len() < 1 << 16 => {
                let start = rng.below(data.len());
                let end = (start + rng.below(64)).min(data.len());
                let piece: Vec<u8> = data[start..end].to_vec();
                for _ in 0..rng.below(8) {
                    data.splice(at..at, piece.iter().copied());
                }
            }
            5 => {
                let other = &corpus[rng.below(corpus.len())];
                let cut = rng.below(other.len() + 1);
                data.truncate(at);
                data.extend_from_slice(&other[cut..]);
            }
            6 => {
                let depth = rng.below(300);
                let open = if rng.below(2) == 0 { b'[' } else { b'{' };
                data.splice(at..at, std::iter::repeat_n(open, depth));
            }
            _ => data.truncate(at),
        }
    }
    data
}

/// Runs `check` on the regressions, the seeds, then mutants; the slowest input must stay fast.
fn fuzz(name: &str, seeds: &[&[u8]], check: impl Fn(&[u8])) {
    let seed = std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5EED_u64);
    let mut rng = Rng(seed ^ name.len() as u64 ^ 0x9E37_79B9_7F4A_7C15);
    let corpus: Vec<Vec<u8>> = seeds.iter().map(|s| s.to_vec()).collect();
    for input in REGRESSIONS.iter().chain(seeds) {
        check(input);
    }
    let mut slowest = (Duration::ZERO, Vec::new());
    for _ in 0..iterations() {
        let input = mutate(&mut rng, &corpus);
        let started = Instant::now();
        check(&input);
        let took = started.elapsed();
        if took > slowest.0 {
            slowest = (took, input);
        }
    }
    // Generous: a preempted run on a loaded machine must not fail; a pathological input would.
    assert!(
        slowest.0 < Duration::from_millis(500),
        "{name}: {} bytes took {:?}: {:?}",
        slowest.1.len(),
        slowest.0,
        String::from_utf8_lossy(&slowest.1[..slowest.1.len().min(300)])
    );
}

#[test]
fn upgrade_body_parser() {
    fuzz(
        "body",
        &[
            b"{}",
            b"{\"build\": 7, \"force\": true}",
            br#"{"event":"buildFinished","build":4821,"finished":true,"buildStatus":0,"job":"web1","outputs":[{"name":"out","path":"/nix/store/x"}]}"#,
            br#"{"event":"buildStarted","build":1}"#,
        ],
        |input| match parse_body(input) {
            Ok(Parsed::Request(r)) => {
                assert!(r.build.is_none_or(|b| b > 0), "{input:?}");
                let value: serde_json::Value = serde_json::from_slice(input).unwrap();
                assert!(value.is_object());
            }
            Ok(Parsed::Ignore(reason)) => assert!(!reason.is_empty()),
            Err(reason) => assert!(!reason.is_empty() && !reason.contains('\n'), "one line: {reason}"),
        },
    );
}

#[test]
fn signature_headers() {
    let keys = Keys::parse(SECRET).unwrap();
    let body = br#"{"build": 7}"#;
    let good = keys.sign("msg_1", NOW, body);
    let seeds: Vec<Vec<u8>> = vec![
        format!("msg_1\u{1}{NOW}\u{1}{good}\u{1}{{\"build\": 7}}").into_bytes(),
        format!("msg_1\u{1}{NOW}\u{1}v1,AAAA {good} v2,x\u{1}").into_bytes(),
        b"\x01\x01\x01".to_vec(),
    ];
    let seeds: Vec<&[u8]> = seeds.iter().map(Vec::as_slice).collect();
    fuzz("signature", &seeds, |input| {
        // id \x01 timestamp \x01 signature \x01 body; missing parts are absent headers.
        let mut parts = input.splitn(4, |&b| b == 1);
        let text = |p: Option<&[u8]>| p.map(|b| String::from_utf8_lossy(b).into_owned());
        let (id, ts, sig) = (text(parts.next()), text(parts.next()), text(parts.next()));
        let body = parts.next().unwrap_or_default();
        let headers = Headers {
            id: id.as_deref(),
            timestamp: ts.as_deref(),
            signature: sig.as_deref(),
        };
        if keys.verify(&headers, body, NOW, 300).is_ok() {
            // Only a real signature over exactly these bytes passes.
            let (id, sig) = (headers.id.unwrap(), headers.signature.unwrap());
            let ts = headers.timestamp.unwrap().parse::<i64>().unwrap();
            assert!(is_valid_id(id));
            assert!(sig.split(' ').any(|s| s == keys.sign(id, ts, body)));
        }
        // Any valid id signs and verifies; one flipped body byte does not.
        if let Some(id) = headers.id.filter(|id| is_valid_id(id)) {
            let sig = keys.sign(id, NOW, body);
            let ts = NOW.to_string();
            let ok = Headers {
                id: Some(id),
                timestamp: Some(&ts),
                signature: Some(&sig),
            };
            assert!(keys.verify(&ok, body, NOW, 300).is_ok());
            let mut tampered = body.to_vec();
            tampered.push(b' ');
            assert!(keys.verify(&ok, &tampered, NOW, 300).is_err());
        }
    });
}

#[test]
fn hydra_models_and_location() {
    fuzz(
        "hydra",
        &[
            br#"{"id":4821,"finished":1,"buildstatus":0,"project":"p","jobset":"j","job":"web1","system":"x86_64-linux","jobsetevals":[912,915],"buildoutputs":{"out":{"path":"/nix/store/0123456789abcdfghijklmnpqrsvwxyz-nixos-system-web1"}}}"#,
            br#"{"id":915,"flake":"github:acme/infra/0123","builds":[1,2],"hasnewbuilds":1}"#,
            br#"{"error":"Build with ID 5 doesn't exist."}"#,
            b"https://hydra.example/build/4821",
            b"http://localhost:3000/hydra/build/7/",
        ],
        |input| {
            if let Ok(build) = serde_json::from_slice::<Build>(input) {
                for output in build.buildoutputs.values() {
                    if let Some(path) = &output.path
                        && StorePath::parse(path).is_ok()
                    {
                        assert!(path.starts_with("/nix/store/") && path.len() > 44);
                        assert!(!path[11..].contains('/'));
                    }
                }
            }
            let _ = serde_json::from_slice::<Eval>(input);
            let _ = serde_json::from_slice::<ErrorBody>(input);
            let text = String::from_utf8_lossy(input);
            if let Some(id) = build_id_from_location(&text) {
                assert!(id > 0);
                assert!(text.contains(&format!("build/{id}")) || text.contains("build/0"), "{text:?}");
            }
        },
    );
}

#[test]
fn secret_file_lines() {
    fuzz(
        "secret",
        &[SECRET.as_bytes(), b"# comment\n\nwhsec_AAAA\n", b"whsec_\n"],
        |input| {
            if let Ok(keys) = Keys::parse(&String::from_utf8_lossy(input)) {
                let sig = keys.sign("msg_1", NOW, b"x");
                let ts = NOW.to_string();
                let h = Headers {
                    id: Some("msg_1"),
                    timestamp: Some(&ts),
                    signature: Some(&sig),
                };
                assert!(keys.verify(&h, b"x", NOW, 0).is_ok());
            }
        },
    );
}

#[test]
fn calendar_expressions() {
    let utc = jiff::tz::TimeZone::UTC;
    let base = jiff::Timestamp::from_second(NOW).unwrap();
    let parsed = std::sync::atomic::AtomicUsize::new(0);
    fuzz(
        "calendar",
        &[
            b"04:40",
            b"daily",
            b"Mon..Fri *-*-* 10:00",
            b"*-*-1/3 2:00:00 UTC",
            b"2026-02-29",
            b"@1767225600",
            b"Sat,Sun 4:40 Europe/Berlin",
            b"*:0/15",
            b"*-02~03 12:00:00.5",
            b"2024..2030-1,6-1..7 *:*:0/0.25",
        ],
        |input| {
            let Ok(text) = std::str::from_utf8(input) else {
                return;
            };
            let Ok(event) = CalendarEvent::parse_with_local(text, &utc) else {
                return;
            };
            parsed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            // The normalized form parses again, to itself; the next elapse lies after the base.
            let normalized = event.normalized();
            let again = CalendarEvent::parse_with_local(&normalized, &utc)
                .unwrap_or_else(|e| panic!("{text:?} -> {normalized:?} does not parse: {e}"));
            assert_eq!(again.normalized(), normalized, "{text:?}");
            if let Some(next) = event.next_after(base, &utc) {
                assert!(next.timestamp() > base, "{text:?}: {next}");
            }
        },
    );
    let parsed = parsed.into_inner();
    println!("calendar: {parsed} valid expressions among the inputs");
    assert!(
        parsed > iterations() / 100,
        "the mutator must reach valid expressions"
    );
}
