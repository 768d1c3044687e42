//! kill -9 at random points of a slow activation, 50 rounds: state.json always parses, the
//! deployed build never goes backwards, and after the restart the state catches up with what the
//! host runs (never behind it).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::Rig;
use serde_json::Value;

const ROUNDS: u64 = 50;

/// xorshift64*: reproducible from the printed seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

fn read_state(rig: &Rig) -> Value {
    let bytes = std::fs::read(rig.path("state/state.json")).unwrap_or_default();
    if bytes.is_empty() {
        return Value::Null;
    }
    serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        panic!(
            "state.json does not parse ({e}): {}",
            String::from_utf8_lossy(&bytes)
        )
    })
}

fn deployed(state: &Value) -> u64 {
    state["deployed"]["build"].as_u64().unwrap_or(0)
}

#[tokio::test]
async fn sigkill_at_random_points_never_loses_or_corrupts_state() {
    let seed = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| jiff::Timestamp::now().as_nanosecond() as u64 | 1);
    println!("CRASH_SEED={seed}");
    let mut rng = Rng(seed);
    let started = Instant::now();
    let mut rig = Rig::start("").await;
    // The fake nixos-rebuild outlives a killed agent (as the real one's transient unit does);
    // `busy` says it is still running.
    let script = std::fs::read_to_string(rig.path("nixos-rebuild")).unwrap();
    let script = script.replacen(
        "dir=$(dirname \"$0\")\n",
        "dir=$(dirname \"$0\")\ntouch \"$dir/busy\"\ntrap 'rm -f \"$dir/busy\"' EXIT\n",
        1,
    );
    std::fs::write(rig.path("nixos-rebuild"), script).unwrap();
    rig.set("delay", "0.15");

    let mut paths: HashMap<String, u64> = HashMap::new();
    let mut floor = 0;
    let mut kills_during_activation = 0;
    for round in 0..ROUNDS {
        let build = 100 + round;
        paths.insert(rig.build(build), build);
        let (code, body) = rig.post(&format!("{{\"build\": {build}}}")).await;
        assert_eq!(code, 202, "round {round}: {body}");
        tokio::time::sleep(Duration::from_millis(rng.below(300))).await;
        if std::fs::metadata(rig.path("busy")).is_ok() {
            kills_during_activation += 1;
        }
        let mut child = rig.agent.take().unwrap();
        child.start_kill().unwrap();
        child.wait().await.unwrap();

        let state = read_state(&rig);
        assert!(
            deployed(&state) >= floor,
            "round {round}: deployed went back from {floor}: {state}"
        );
        floor = deployed(&state);

        // Let the orphaned activation end, then restart and let it settle.
        let orphan = Instant::now();
        while std::fs::metadata(rig.path("busy")).is_ok() {
            assert!(orphan.elapsed() < Duration::from_secs(5));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        rig.spawn().await;
        // Settling waits for the switch lock, then runs in the worker: give it a moment.
        let restarted = Instant::now();
        let mut state = read_state(&rig);
        while !state["in_flight"].is_null() && restarted.elapsed() < Duration::from_secs(5) {
            tokio::time::sleep(Duration::from_millis(10)).await;
            state = read_state(&rig);
        }
        assert!(
            state["in_flight"].is_null(),
            "round {round}: settled at start: {state}"
        );
        assert!(deployed(&state) >= floor, "round {round}: {state}");
        floor = deployed(&state);
        let running = std::fs::read_link(rig.path("current-system")).unwrap();
        if let Some(&runs) = paths.get(running.to_str().unwrap()) {
            assert!(
                floor >= runs,
                "round {round}: the host runs {runs}, the state says {floor}: {state}"
            );
        }
    }
    println!(
        "{ROUNDS} rounds, {kills_during_activation} kills during activation, final deployed {floor}, {:?}",
        started.elapsed()
    );
    assert!(
        kills_during_activation >= 5,
        "the kills should hit activations: {kills_during_activation}"
    );
    assert!(started.elapsed() < Duration::from_secs(60));
}
