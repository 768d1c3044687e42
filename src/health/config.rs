//! The `[health_checks]` table: its TOML shape, defaults, validation and expansion into `Check`s.

use std::time::Duration;

use serde::Deserialize;

use super::spec::CheckSpec;
use super::validate::check_host;
use super::{Check, CheckKind};

/// Per-check timeout when neither the check nor `health_checks.timeout` sets one (SPEC §3).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// Retries after a failed attempt. Two, not zero: a check's verdict aborts an upgrade or rolls
/// one back, so one lost echo or one refused connection during a restart must not decide it.
/// A healthy target pays nothing for this (it passes on the first attempt); a dead one costs
/// `3 × timeout + 2 × interval` = 17 s with the defaults, well inside the phase deadline.
pub const DEFAULT_RETRIES: u32 = 2;
/// Pause between two attempts of one check.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);
/// Wait between activation and the post-checks, so restarted services can come up.
pub const DEFAULT_SETTLE: Duration = Duration::from_secs(10);
/// Deadline of a whole phase (all its checks, run concurrently).
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(120);
/// Upper bound on `retries`, so every retry loop stays bounded.
pub const MAX_RETRIES: u32 = 10;
/// The `systemctl` that systemd checks run unless the caller sets another.
pub const DEFAULT_SYSTEMCTL: &str = "systemctl";

/// The `[health_checks]` TOML table; every key has a default.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HealthChecksConfig {
    /// Shorthand: one `icmp` pre-check per entry (SPEC default `[]`).
    pub canary_hosts: Vec<String>,
    /// Default timeout of one attempt of any check (SPEC default 5s).
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// `[[health_checks.pre]]`: run before activation; any failure ends the attempt `unhealthy`.
    pub pre: Vec<CheckSpec>,
    /// `[[health_checks.post]]`: run `settle` after a live activation; failure rolls back.
    pub post: Vec<CheckSpec>,
    /// Wait before the post-checks.
    #[serde(with = "humantime_serde")]
    pub settle: Duration,
    /// Deadline of one phase; a check still running then is reported failed.
    #[serde(with = "humantime_serde")]
    pub deadline: Duration,
}

impl Default for HealthChecksConfig {
    fn default() -> Self {
        Self {
            canary_hosts: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
            pre: Vec::new(),
            post: Vec::new(),
            settle: DEFAULT_SETTLE,
            deadline: DEFAULT_DEADLINE,
        }
    }
}

/// A bad `[health_checks]` value; the message starts with the key, e.g.
/// `health_checks.pre[2].url: …` (indices count from 0, in file order).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HealthConfigError {
    #[error("{key}: {reason}")]
    Invalid { key: String, reason: String },
}

impl HealthChecksConfig {
    /// `canary_hosts` as icmp checks, then `pre`, defaults filled in.
    pub fn pre_checks(&self) -> Vec<Check> {
        let canaries = self.canary_hosts.iter().map(|host| Check {
            name: host.clone(),
            kind: CheckKind::Icmp { host: host.clone() },
            timeout: self.timeout,
            retries: DEFAULT_RETRIES,
            interval: DEFAULT_INTERVAL,
        });
        let pre = self.pre.iter().map(|s| s.to_check(self.timeout));
        canaries.chain(pre).collect()
    }

    /// `post`, defaults filled in.
    pub fn post_checks(&self) -> Vec<Check> {
        self.post.iter().map(|s| s.to_check(self.timeout)).collect()
    }

    /// Checks what serde cannot; the error names the key.
    pub fn validate(&self) -> Result<(), HealthConfigError> {
        let invalid = |key: String, reason: String| HealthConfigError::Invalid { key, reason };
        for (key, d) in [("timeout", self.timeout), ("deadline", self.deadline)] {
            if d.is_zero() {
                return Err(invalid(
                    format!("health_checks.{key}"),
                    "must be greater than 0".into(),
                ));
            }
        }
        for (i, host) in self.canary_hosts.iter().enumerate() {
            check_host(host).map_err(|r| invalid(format!("health_checks.canary_hosts[{i}]"), r))?;
        }
        for (phase, specs) in [("pre", &self.pre), ("post", &self.post)] {
            for (i, spec) in specs.iter().enumerate() {
                spec.validate(&format!("health_checks.{phase}[{i}]"))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use std::path::PathBuf;

    /// Parses `[health_checks]` the way the agent's config does: a table inside the file.
    fn parse(toml_text: &str) -> Result<HealthChecksConfig, String> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct File {
            #[serde(default)]
            health_checks: HealthChecksConfig,
        }
        let file: File = toml::from_str(toml_text).map_err(|e| e.to_string())?;
        file.health_checks.validate().map_err(|e| e.to_string())?;
        Ok(file.health_checks)
    }

    #[test]
    fn defaults_without_the_table() {
        let c = parse("").unwrap();
        assert_eq!(c, HealthChecksConfig::default());
        assert_eq!(c.timeout, Duration::from_secs(5));
        assert!(c.pre_checks().is_empty() && c.post_checks().is_empty());
    }

    #[test]
    fn spec_example_and_every_kind() {
        let c = parse(
            r#"
            [health_checks]
            canary_hosts = ["gateway.lan", "10.0.0.1"]
            timeout = "2s"
            settle = "30s"
            deadline = "1min"

            [[health_checks.pre]]
            kind = "tcp"
            address = "[::1]:5432"
            retries = 0

            [[health_checks.post]]
            kind = "http"
            name = "app"
            url = "https://app.example/health"
            status = 204
            body_contains = "ok"
            timeout = "500ms"
            interval = "250ms"

            [[health_checks.post]]
            kind = "systemd"
            units = ["nginx.service", "-.mount"]

            [[health_checks.post]]
            kind = "command"
            argv = ["/run/current-system/sw/bin/true"]

            [[health_checks.post]]
            kind = "icmp"
            host = "fe80::1%eth0"
            "#,
        )
        .unwrap();
        assert_eq!(
            (c.settle, c.deadline),
            (Duration::from_secs(30), Duration::from_secs(60))
        );
        let pre = c.pre_checks();
        let names: Vec<&str> = pre.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["gateway.lan", "10.0.0.1", "[::1]:5432"]);
        assert_eq!(
            pre[0].kind,
            CheckKind::Icmp {
                host: "gateway.lan".into()
            }
        );
        assert_eq!(
            (pre[0].timeout, pre[0].retries),
            (Duration::from_secs(2), DEFAULT_RETRIES)
        );
        assert_eq!((pre[2].retries, pre[2].interval), (0, DEFAULT_INTERVAL));
        let post = c.post_checks();
        assert_eq!(
            post[0],
            Check {
                name: "app".into(),
                kind: CheckKind::Http {
                    url: "https://app.example/health".into(),
                    status: Some(204),
                    body_contains: Some("ok".into()),
                },
                timeout: Duration::from_millis(500),
                retries: DEFAULT_RETRIES,
                interval: Duration::from_millis(250),
            }
        );
        assert_eq!(post[1].name, "nginx.service -.mount");
        assert_eq!(
            post[1].kind,
            CheckKind::Systemd {
                units: vec!["nginx.service".into(), "-.mount".into()],
                systemctl: PathBuf::from("systemctl"),
            }
        );
        let kinds: Vec<&str> = post.iter().map(|c| c.kind.as_str()).collect();
        assert_eq!(kinds, ["http", "systemd", "command", "icmp"]);
    }

    /// One case a line: the inside of `health_checks = { … }` => what the error must contain.
    /// First serde's rejects (unknown keys and kinds, missing keys, wrong types), then
    /// validate()'s, whose message starts with the key.
    const REJECTS: &str = r#"
bogus = 1                                                    => unknown field `bogus`
pre = [{ kind = "ping", host = "a" }]                        => unknown variant `ping`
pre = [{ host = "a" }]                                       => missing field `kind`
pre = [{ kind = "icmp" }]                                    => missing field `host`
pre = [{ kind = "icmp", host = "a", url = "x" }]             => unknown field `url`
pre = [{ kind = "tcp", address = "a:1", retries = -1 }]      => retries: invalid value
pre = [{ kind = "tcp", address = "a:1", timeout = "soon" }]  => timeout: 
pre = [{ kind = "http", url = "http://h/", status = "ok" }]  => status: invalid type
pre = [{ kind = "http", url = "http://h/", status = 70000 }] => status: invalid value
timeout = "5 parsecs"                                        => timeout
timeout = "0s"                                  => health_checks.timeout: must be greater than 0
deadline = "0s"                                              => health_checks.deadline: 
canary_hosts = ["ok", "bad host"]                            => health_checks.canary_hosts[1]: 
pre = [{ kind = "tcp", address = "a:1" }, { kind = "icmp", host = "b" }, { kind = "http", url = "/x" }] => health_checks.pre[2].url: 
post = [{ kind = "http", url = "ftp://h/" }]                 => health_checks.post[0].url: 
post = [{ kind = "http", url = "http://h/", status = 42 }]   => health_checks.post[0].status: 
post = [{ kind = "http", url = "http://h/", body_contains = "" }] => health_checks.post[0].body_contains: 
post = [{ kind = "tcp", address = "h" }]                     => health_checks.post[0].address: 
post = [{ kind = "tcp", address = "h:0" }]                   => health_checks.post[0].address: 
post = [{ kind = "tcp", address = "::1:80" }]                => health_checks.post[0].address: 
post = [{ kind = "systemd", units = [] }]                    => health_checks.post[0].units: 
post = [{ kind = "systemd", units = ["a", "b*"] }]           => health_checks.post[0].units[1]: 
post = [{ kind = "command", argv = [] }]                     => health_checks.post[0].argv: 
post = [{ kind = "command", argv = [""] }]                   => health_checks.post[0].argv[0]: 
post = [{ kind = "command", argv = ["a"], timeout = "0s" }]  => health_checks.post[0].timeout: 
post = [{ kind = "command", argv = ["a"], retries = 11 }]    => health_checks.post[0].retries: 
post = [{ kind = "command", argv = ["a"], name = " " }]      => health_checks.post[0].name: 
"#;

    #[test]
    fn rejects_name_the_key() {
        let cases: Vec<_> = REJECTS
            .lines()
            .filter_map(|l| l.split_once(" => "))
            .collect();
        assert_eq!(cases.len(), 27);
        for (inner, want) in cases {
            let text = format!("health_checks = {{ {} }}", inner.trim());
            let err = parse(&text).expect_err(&text);
            assert!(
                err.contains(want),
                "{text}\n  error {err:?}\n  lacks {want:?}"
            );
        }
    }
}
