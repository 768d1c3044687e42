//! The metric names the docs use are the ones a real agent exports, and the other way round:
//! every name in docs/alerts.yml and in the metrics table of docs/monitoring.md appears on
//! `/metrics` of an agent that has run an attempt, a health check, a hook and a failed Hydra
//! request, and every metric family it exports is in that table.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeSet;

use common::Rig;
use nixos_hydra_upgrade::hydra::sim::Fault;

const PREFIX: &str = "nixos_hydra_upgrade_";

fn read(path: &str) -> String {
    std::fs::read_to_string(format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

/// Every `nixos_hydra_upgrade_…` name in a text.
fn prefixed_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find(PREFIX) {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

/// The metric names of the first column of the table under `## Metrics` in monitoring.md,
/// prefixed: `phase{phase}`, `phase_elapsed_seconds` → two names.
fn table_names(monitoring: &str) -> BTreeSet<String> {
    let section = monitoring
        .split("## Metrics")
        .nth(1)
        .expect("docs/monitoring.md has a ## Metrics section");
    let mut names = BTreeSet::new();
    for line in section
        .lines()
        .skip_while(|l| !l.starts_with("| metric"))
        .skip(2)
    {
        if !line.starts_with('|') {
            break;
        }
        let first = line.split('|').nth(1).unwrap_or_default();
        for cell in first.split('`').skip(1).step_by(2) {
            let name = cell.split('{').next().unwrap_or_default();
            names.insert(format!("{PREFIX}{name}"));
        }
    }
    assert!(names.len() > 15, "too few metrics in the table: {names:?}");
    names
}

/// Metric families on a scrape: a histogram's `_bucket`, `_sum` and `_count` samples count as
/// its family name, read from the `# TYPE` lines.
fn exported(text: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let families: BTreeSet<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect();
    let samples: BTreeSet<String> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect();
    (families, samples)
}

#[tokio::test]
async fn documented_metric_names_are_the_exported_ones() {
    let config = "[[health_checks.pre]]\nkind = \"command\"\nname = \"always\"\nargv = [\"true\"]\n\
                  [hooks]\non_success = [\"true\"]\n";
    let rig = Rig::start(config).await;
    rig.build(4821);
    let (code, answer) = rig.post(r#"{"build": 4821}"#).await;
    assert_eq!(code, 202, "{answer}");
    rig.wait_for_attempt(4821).await;
    // A Hydra that answers 502 makes the error counter appear.
    rig.hydra.set_fault(Some(Fault::Status(502)));
    let (code, answer) = rig.post(r#"{"build": 4830}"#).await;
    assert_eq!(code, 503, "{answer}");
    rig.hydra.set_fault(None);
    // The hook runs in the background after the attempt; wait for its counter.
    let mut text = String::new();
    for _ in 0..100 {
        text = reqwest::get(format!("{}/metrics", rig.url))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if text.contains(&format!("{PREFIX}hooks_total")) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let (families, samples) = exported(&text);

    let mut problems = Vec::new();
    for name in prefixed_names(&read("docs/alerts.yml")) {
        if !samples.contains(&name) {
            problems.push(format!(
                "docs/alerts.yml uses {name}, which /metrics does not export"
            ));
        }
    }
    let documented = table_names(&read("docs/monitoring.md"));
    for name in &documented {
        let histogram = samples.contains(&format!("{name}_count"));
        if !samples.contains(name) && !families.contains(name) && !histogram {
            problems.push(format!(
                "docs/monitoring.md lists {name}, which /metrics does not export"
            ));
        }
    }
    for family in &families {
        // OpenMetrics names a counter's family without `_total`; the table uses the sample name.
        let counter = format!("{family}_total");
        if !documented.contains(family) && !documented.contains(&counter) {
            problems.push(format!(
                "/metrics exports {family}, which the table in docs/monitoring.md does not list"
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "{}\n\n/metrics:\n{text}",
        problems.join("\n")
    );
}
