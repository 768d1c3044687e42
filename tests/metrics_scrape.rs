//! `/metrics` read through a real Prometheus text parser: names, bounded labels, and values that
//! move as requests and attempts happen.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{JOB, Rig};
use nixos_hydra_upgrade::hydra::sim::fake_out_path;
use prometheus_parse::{Scrape, Value};

async fn scrape(rig: &Rig) -> Scrape {
    let response = reqwest::get(format!("{}/metrics", rig.url)).await.unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    assert!(text.ends_with("# EOF\n"), "OpenMetrics text: {text}");
    let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
    for sample in &scrape.samples {
        assert!(
            sample.metric.starts_with("nixos_hydra_upgrade_"),
            "{}",
            sample.metric
        );
    }
    scrape
}

/// The value of `name` whose labels include every pair of `labels`; None if absent.
fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(v)))
        .map(|s| match &s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            other => panic!("{name}: not a number: {other:?}"),
        })
}

fn get(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    value(scrape, name, labels).unwrap_or_else(|| panic!("no {name} {labels:?}"))
}

#[tokio::test]
async fn values_follow_attempts_and_requests() {
    let config =
        "[[health_checks.pre]]\nkind = \"command\"\nname = \"always\"\nargv = [\"true\"]\n";
    let rig = Rig::start(config).await;
    let m = scrape(&rig).await;
    assert_eq!(get(&m, "nixos_hydra_upgrade_deployed_build", &[]), 0.0);
    assert_eq!(
        get(&m, "nixos_hydra_upgrade_phase", &[("phase", "idle")]),
        1.0
    );
    assert_eq!(
        get(
            &m,
            "nixos_hydra_upgrade_attempts_total",
            &[("outcome", "upgraded")]
        ),
        0.0
    );
    assert_eq!(
        get(&m, "nixos_hydra_upgrade_next_poll_timestamp_seconds", &[]),
        0.0
    );
    assert_eq!(get(&m, "nixos_hydra_upgrade_reboot_needed", &[]), 0.0);

    rig.build(30);
    assert_eq!(rig.post(r#"{"build": 30}"#).await.0, 202);
    rig.wait_for_attempt(30).await;
    assert_eq!(rig.post(r#"{"build": 999}"#).await.0, 422);
    let m = scrape(&rig).await;
    assert_eq!(get(&m, "nixos_hydra_upgrade_deployed_build", &[]), 30.0);
    assert_eq!(get(&m, "nixos_hydra_upgrade_newest_green_build", &[]), 30.0);
    let path = fake_out_path(30, JOB);
    assert_eq!(
        get(
            &m,
            "nixos_hydra_upgrade_deployed",
            &[("build", "30"), ("path", &path)]
        ),
        1.0
    );
    assert_eq!(
        get(
            &m,
            "nixos_hydra_upgrade_attempts_total",
            &[("outcome", "upgraded")]
        ),
        1.0
    );
    assert_eq!(
        get(
            &m,
            "nixos_hydra_upgrade_last_attempt_outcome",
            &[("outcome", "upgraded")]
        ),
        1.0
    );
    assert!(get(&m, "nixos_hydra_upgrade_deployed_timestamp_seconds", &[]) > 1.7e9);
    assert!(
        get(
            &m,
            "nixos_hydra_upgrade_last_attempt_by_outcome_timestamp_seconds",
            &[("outcome", "upgraded")]
        ) > 1.7e9
    );
    assert_eq!(
        get(
            &m,
            "nixos_hydra_upgrade_notifications_total",
            &[("status", "queued")]
        ),
        1.0
    );
    assert_eq!(
        get(
            &m,
            "nixos_hydra_upgrade_notifications_total",
            &[("status", "rejected")]
        ),
        1.0
    );
    // The 422 for build 999, by its bounded cause.
    assert_eq!(
        get(
            &m,
            "nixos_hydra_upgrade_refusals_total",
            &[("status", "rejected"), ("cause", "unknown-build")]
        ),
        1.0
    );
    let labels = [("check", "always"), ("kind", "command")];
    assert_eq!(
        get(&m, "nixos_hydra_upgrade_health_check_passed", &labels),
        1.0
    );
    assert!(
        get(
            &m,
            "nixos_hydra_upgrade_health_check_duration_seconds",
            &labels
        ) >= 0.0
    );
    // Two requests to Hydra's /build/N: both observed, neither an error (a 404 is an answer).
    let count = "nixos_hydra_upgrade_hydra_request_duration_seconds_count";
    assert_eq!(get(&m, count, &[("endpoint", "build")]), 2.0);
    assert_eq!(
        value(
            &m,
            "nixos_hydra_upgrade_hydra_request_errors_total",
            &[("endpoint", "build")]
        ),
        None
    );
    assert!(m.samples.iter().any(|s| {
        s.metric == "nixos_hydra_upgrade_hydra_request_duration_seconds"
            && matches!(&s.value, Value::Histogram(buckets) if !buckets.is_empty())
    }));

    // A failing activation: counted, and the last outcome moves.
    rig.build(31);
    rig.set("exit-code", "1");
    assert_eq!(rig.post(r#"{"build": 31}"#).await.0, 202);
    rig.wait_for_attempt(31).await;
    let m = scrape(&rig).await;
    assert_eq!(
        get(
            &m,
            "nixos_hydra_upgrade_attempts_total",
            &[("outcome", "failed")]
        ),
        1.0
    );
    assert_eq!(
        get(
            &m,
            "nixos_hydra_upgrade_last_attempt_outcome",
            &[("outcome", "failed")]
        ),
        1.0
    );
    assert_eq!(
        get(
            &m,
            "nixos_hydra_upgrade_last_attempt_outcome",
            &[("outcome", "upgraded")]
        ),
        0.0
    );
    assert_eq!(get(&m, "nixos_hydra_upgrade_deployed_build", &[]), 30.0);
    assert_eq!(get(&m, "nixos_hydra_upgrade_newest_green_build", &[]), 31.0);
}

#[tokio::test]
async fn hydra_errors_are_counted() {
    let mut rig = Rig::start("").await;
    rig.stop().await;
    // Point the agent at a closed port: every request to Hydra fails to connect.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = closed.local_addr().unwrap();
    drop(closed);
    let text = rig
        .config_text()
        .replace(&rig.hydra.url(), &format!("http://{address}"));
    std::fs::write(rig.path("agent.toml"), text).unwrap();
    rig.spawn_with_written_config().await;
    assert_eq!(rig.post(r#"{"build": 5}"#).await.0, 503);
    let m = scrape(&rig).await;
    assert_eq!(
        get(
            &m,
            "nixos_hydra_upgrade_hydra_request_errors_total",
            &[("endpoint", "build")]
        ),
        1.0
    );
    assert_eq!(
        get(
            &m,
            "nixos_hydra_upgrade_notifications_total",
            &[("status", "unavailable")]
        ),
        1.0
    );
    assert_eq!(
        get(
            &m,
            "nixos_hydra_upgrade_refusals_total",
            &[("status", "unavailable"), ("cause", "unreachable")]
        ),
        1.0
    );
}
