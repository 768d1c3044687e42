//! kill -9 at random points of a slow activation (the agent and what it started, as systemd kills
//! a unit; a switch already under way survives, as switch-to-configuration's own unit does), then
//! an immediate restart, 50 rounds: state.json always parses, the deployed build never goes
//! backwards, and once settled the state catches up with what the host runs (never behind it).
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
    rig.set("switch-time", "0.05");
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
        rig.kill_like_systemd().await;

        let state = read_state(&rig);
        if !state["in_flight"].is_null() {
            kills_during_activation += 1;
        }
        assert!(
            deployed(&state) >= floor,
            "round {round}: deployed went back from {floor}: {state}"
        );
        floor = deployed(&state);

        // Restart at once: a switch still under way holds the lock and is waited for.
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
