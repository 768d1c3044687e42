//! The human-readable form of `/v1/status` that `status` and `demo` print: who the agent is,
//! what it runs, what it does now, with times relative to now. Every value from the agent is
//! escaped: a hostile or broken agent cannot move the cursor or forge lines.

use std::fmt::Write;

use jiff::Timestamp;
use serde_json::Value;

use crate::logging::escape_controls;

const WIDTH: usize = 16;

/// A JSON value as one escaped line: strings unquoted, anything else as JSON.
pub fn text(v: &Value) -> String {
    escape_controls(&v.as_str().map_or_else(|| v.to_string(), str::to_owned))
}

fn present<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    v.get(key).filter(|v| !v.is_null())
}

/// "1h 2m 3s" for a number of seconds.
fn seconds(value: Option<&Value>) -> Option<String> {
    let secs = value?.as_i64()?.max(0).unsigned_abs();
    Some(humantime::format_duration(std::time::Duration::from_secs(secs)).to_string())
}

fn timestamp(v: &Value) -> Option<Timestamp> {
    v.as_str()?.parse().ok()
}

/// "3 min ago", "in 5 h", "just now": the coarsest unit that is at least 1, rounded down.
pub fn relative(then: Timestamp, now: Timestamp) -> String {
    let delta = then.as_second() - now.as_second();
    let span = delta.unsigned_abs();
    if span < 5 {
        return "just now".into();
    }
    let amount = match span {
        s if s < 60 => format!("{s} s"),
        s if s < 3600 => format!("{} min", s / 60),
        s if s < 2 * 86400 => format!("{} h", s / 3600),
        s => format!("{} d", s / 86400),
    };
    if delta < 0 {
        format!("{amount} ago")
    } else {
        format!("in {amount}")
    }
}

/// "3 min ago (2026-11-25T04:40:12Z)", or the value as it came when it is not a time.
fn when(v: &Value, now: Timestamp) -> String {
    match timestamp(v) {
        Some(t) => format!("{} ({})", relative(t, now), text(v)),
        None => text(v),
    }
}

fn elapsed(attempt: &Value) -> Option<String> {
    let started = timestamp(attempt.get("started_at")?)?;
    let finished = timestamp(attempt.get("finished_at")?)?;
    let secs = (finished.as_second() - started.as_second()).max(0);
    seconds(Some(&Value::from(secs)))
}

/// The whole status, one labelled line (or block) per fact.
pub fn describe(status: &Value, now: Timestamp) -> String {
    let mut out = String::new();
    let mut line = |label: &str, value: String| {
        let mut rows = value.lines();
        let _ = writeln!(out, "{label:<WIDTH$}{}", rows.next().unwrap_or_default());
        for row in rows {
            let _ = writeln!(out, "{:WIDTH$}{row}", "");
        }
    };
    let agent = present(status, "agent");
    let hydra = agent
        .and_then(|a| present(a, "hydra"))
        .or_else(|| present(status, "hydra"))
        .map(text)
        .unwrap_or_default();
    if let Some(agent) = agent {
        let field = |k: &str| present(agent, k).map_or("?".into(), text);
        let mode = if agent["dry_run"] == Value::Bool(true) {
            ", DRY RUN: commands are logged, not run"
        } else {
            ""
        };
        line(
            "agent",
            format!(
                "{} (nixos-hydra-upgrade {}{mode})",
                field("host"),
                field("version")
            ),
        );
        line("job", format!("{} on {hydra}", field("job")));
    }

    line("phase", describe_phase(status));
    if let Some(waiting) = present(status, "waiting") {
        line("waiting", describe_waiting(waiting, now));
    }
    if let Some(f) = present(status, "fetch") {
        let mib = |v: &Value| v.as_u64().unwrap_or(0) / (1024 * 1024);
        line(
            "fetch",
            format!(
                "{}/{} paths, {}/{} MiB{}",
                f["paths_done"],
                f["paths_expected"],
                mib(&f["bytes_done"]),
                mib(&f["bytes_expected"]),
                present(f, "current").map_or(String::new(), |c| format!("\n{}", text(c)))
            ),
        );
    }

    let deployed = present(status, "deployed");
    line(
        "deployed",
        deployed.map_or("nothing yet".into(), |d| {
            format!(
                "build {}, {}\n{hydra}/build/{}\n{}",
                text(&d["build"]),
                when(&d["at"], now),
                text(&d["build"]),
                text(&d["path"])
            )
        }),
    );
    let current = present(status, "current_system").map(text);
    let relation = match (&current, deployed.and_then(|d| d["path"].as_str())) {
        (None, _) => "unknown (unreadable)".to_owned(),
        (Some(c), Some(d)) if *c == escape_controls(d) => "the deployed build".to_owned(),
        (Some(c), Some(_)) => format!("{c}\n(differs from the deployed build)"),
        (Some(c), None) => c.clone(),
    };
    line("current system", relation);
    line(
        "pending",
        present(status, "pending").map_or("none".into(), |j| {
            format!("build {} from {}", text(&j["build"]), text(&j["source"]))
        }),
    );
    line(
        "last attempt",
        present(status, "last_attempt").map_or("none".into(), |a| describe_attempt(a, &hydra, now)),
    );
    let deferred = present(status, "last_attempt").is_some_and(|a| a["reboot"] == "deferred");
    let because = present(status, "reboot_needed_because").map(text);
    let reboot = match (
        deferred,
        status.get("reboot_needed") == Some(&Value::Bool(true)),
    ) {
        (true, true) => "deferred to the reboot window".to_owned(),
        (_, true) => because.map_or(
            "needed: the installed system boots another kernel, initrd or modules".to_owned(),
            |b| format!("needed: {b}"),
        ),
        (_, false) => "not needed".to_owned(),
    };
    line("reboot", reboot);
    line(
        "last poll",
        describe_poll(present(status, "last_poll"), now),
    );
    line(
        "next poll",
        present(status, "next_poll").map_or("none (no dates schedule)".into(), |t| when(t, now)),
    );
    if let Some(error) = present(status, "state_error") {
        line(
            "STATE",
            format!(
                "{}\n(the attempts above are kept in memory only until this is fixed)",
                text(error)
            ),
        );
    }
    out
}

/// "activating for 1m 15s (build 4830 from hydra)".
fn describe_phase(status: &Value) -> String {
    let phase = present(status, "phase").map_or("?".into(), text);
    let mut s = phase.clone();
    if phase != "idle"
        && let Some(for_) = seconds(status.get("phase_elapsed_seconds"))
    {
        let _ = write!(s, " for {for_}");
    }
    if let Some(job) = present(status, "running") {
        let _ = write!(
            s,
            " (build {} from {})",
            text(&job["build"]),
            text(&job["source"])
        );
    }
    s
}

/// "gate no-sessions: 2 sessions open; looks again in 4 min (waiting since 1 h ago)".
fn describe_waiting(waiting: &Value, now: Timestamp) -> String {
    let reason = present(waiting, "reason").map_or("?".into(), text);
    let what = match reason.as_str() {
        "gate" => format!("gate {}", present(waiting, "gate").map_or("?".into(), text)),
        "rollout" => {
            let agents: Vec<String> = waiting["agents"]
                .as_array()
                .map(|a| a.iter().map(text).collect())
                .unwrap_or_default();
            format!("rollout wave (not yet baked: {})", agents.join(", "))
        }
        "window" => "the activation window".into(),
        other => other.to_owned(),
    };
    let mut s = what;
    if let Some(detail) = present(waiting, "detail") {
        let _ = write!(s, ": {}", text(detail));
    }
    if let Some(until) = present(waiting, "until").and_then(timestamp) {
        let _ = write!(s, "\nlooks again {}", relative(until, now));
    }
    if let Some(since) = present(waiting, "since").and_then(timestamp) {
        let _ = write!(s, ", waiting since {}", relative(since, now));
    }
    s
}

/// `{"at", "result"}` (or, from older agents, the time alone).
fn describe_poll(poll: Option<&Value>, now: Timestamp) -> String {
    match poll {
        None => "never".into(),
        Some(at @ Value::String(_)) => when(at, now),
        Some(poll) => {
            let at = present(poll, "at").map_or("?".into(), |t| when(t, now));
            match present(poll, "result") {
                Some(result) => format!("{at}\n{}", text(result)),
                None => at,
            }
        }
    }
}

/// "build 4830 from hydra: upgraded in 12s, reboot none" (and "; error: …").
pub fn describe_attempt_line(a: &Value) -> String {
    let took = elapsed(a).map(|e| format!(" in {e}")).unwrap_or_default();
    let mut s = format!(
        "build {} from {}: {}{took}, reboot {}",
        text(&a["build"]),
        text(&a["source"]),
        text(&a["outcome"]),
        text(&a["reboot"]),
    );
    if let Some(error) = present(a, "error") {
        let _ = write!(s, "; error: {}", text(error));
    }
    s
}

/// One attempt: what, how it ended, its error, and its checks.
pub fn describe_attempt(a: &Value, hydra: &str, now: Timestamp) -> String {
    let took = elapsed(a).map(|e| format!(" in {e}")).unwrap_or_default();
    let mut s = format!(
        "build {} from {}: {}{took}, reboot {}\nfinished {}\n{hydra}/build/{}",
        text(&a["build"]),
        text(&a["source"]),
        text(&a["outcome"]),
        text(&a["reboot"]),
        when(&a["finished_at"], now),
        text(&a["build"]),
    );
    if let Some(error) = present(a, "error") {
        let _ = write!(s, "\nerror: {}", text(error));
    }
    if let Some(checks) = a
        .get("checks")
        .and_then(Value::as_array)
        .filter(|c| !c.is_empty())
    {
        s.push_str("\nchecks:");
        for c in checks {
            let mark = if c["passed"] == Value::Bool(true) {
                "ok  "
            } else {
                "FAIL"
            };
            let _ = write!(
                s,
                "\n  {mark} {} ({}) {} ms: {}",
                text(&c["name"]),
                text(&c["kind"]),
                text(&c["duration_ms"]),
                text(&c["detail"])
            );
        }
    }
    s
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    #[test]
    fn relative_times() {
        let now = at("2026-01-01T12:00:00Z");
        assert_eq!(relative(at("2026-01-01T11:57:00Z"), now), "3 min ago");
        assert_eq!(relative(at("2026-01-01T17:00:00Z"), now), "in 5 h");
        assert_eq!(relative(at("2026-01-01T12:00:02Z"), now), "just now");
        assert_eq!(relative(at("2026-01-01T11:59:30Z"), now), "30 s ago");
        assert_eq!(relative(at("2025-12-25T12:00:00Z"), now), "7 d ago");
    }

    #[test]
    fn describes_a_busy_agent() {
        let now = at("2026-01-01T06:40:12Z");
        let path = "/nix/store/00000000000000000000000000000000-nixos-system-web1";
        let status = json!({
            "agent": {"host": "web1", "job": "infra:main:web1", "hydra": "https://hydra",
                      "version": "0.1.0", "dry_run": true},
            "phase": "post-checking", "phase_elapsed_seconds": 75,
            "current_system": "/nix/store/11111111111111111111111111111111-old",
            "deployed": {"build": 4821, "path": path, "at": "2026-01-01T04:40:12Z"},
            "running": {"build": 4830, "source": "hydra"}, "pending": null,
            "last_attempt": {"build": 4821, "source": "schedule", "outcome": "rolled-back",
                "reboot": "none", "error": "post-check app (http) failed: status 503",
                "started_at": "2026-01-01T04:40:00Z", "finished_at": "2026-01-01T04:40:12Z",
                "checks": [{"name": "app", "kind": "http", "passed": false, "detail": "status 503",
                            "attempts": 3, "duration_ms": 40}]},
            "last_poll": {"at": "2026-01-01T06:37:12Z", "result": "no build newer than 4821"},
            "reboot_needed": true, "next_poll": "2026-01-01T11:40:12Z", "history": [],
            "state_error": null,
            "fetch": {"target": path, "paths_done": 1, "paths_expected": 2,
                "bytes_done": 31_457_280, "bytes_expected": 52_428_800, "current": path}
        });
        let text = describe(&status, now);
        for needle in [
            "agent           web1 (nixos-hydra-upgrade 0.1.0, DRY RUN",
            "job             infra:main:web1 on https://hydra",
            "post-checking for 1m 15s (build 4830 from hydra)",
            "build 4821, 2 h ago (2026-01-01T04:40:12Z)",
            "https://hydra/build/4821",
            "(differs from the deployed build)",
            "rolled-back in 12s",
            "error: post-check app (http) failed",
            "FAIL app (http) 40 ms: status 503",
            "reboot          needed",
            "last poll       3 min ago",
            "no build newer than 4821",
            "next poll       in 5 h",
            "fetch           1/2 paths, 30/50 MiB",
        ] {
            assert!(text.contains(needle), "{needle:?} in\n{text}");
        }
        assert!(!text.contains("STATE"), "{text}");
        let idle = describe(&json!({"phase": "idle", "deployed": null}), now);
        assert!(
            idle.contains("nothing yet")
                && idle.contains("last attempt    none")
                && idle.contains("last poll       never"),
            "{idle}"
        );
    }

    #[test]
    fn every_phase_and_the_waiting_object() {
        let now = at("2026-01-01T12:00:00Z");
        for phase in crate::model::Phase::ALL {
            let status = json!({"phase": phase, "phase_elapsed_seconds": 3});
            assert!(
                describe(&status, now).contains(&format!("phase           {phase}")),
                "{phase}"
            );
        }
        let status = json!({"phase": "waiting", "waiting": {
            "reason": "rollout", "agents": ["http://canary1:9980"], "detail": "not baked",
            "since": "2026-01-01T11:00:00Z", "until": "2026-01-01T12:05:00Z"}});
        let text = describe(&status, now);
        assert!(
            text.contains("rollout wave (not yet baked: http://canary1:9980): not baked")
                && text.contains("looks again in 5 min, waiting since 1 h ago"),
            "{text}"
        );
        let gate = json!({"phase": "waiting", "waiting": {"reason": "gate", "gate": "no-sessions",
            "detail": "2 sessions", "since": "2026-01-01T11:59:00Z", "until": "2026-01-01T12:04:00Z"}});
        assert!(
            describe(&gate, now).contains("gate no-sessions: 2 sessions"),
            "{}",
            describe(&gate, now)
        );
        let broken = json!({"phase": "idle", "state_error": "cannot write state.json: disk full"});
        assert!(describe(&broken, now).contains("STATE           cannot write state.json"));
    }

    #[test]
    fn hostile_values_are_escaped() {
        let now = at("2026-01-01T12:00:00Z");
        let evil =
            "x\u{1b}]0;pwned\u{7}\u{1b}[2J\rfake line\nphase           idle\u{9b}31m\u{202e}";
        let status = json!({
            "agent": {"host": evil, "job": evil, "hydra": evil, "version": evil, "dry_run": evil},
            "phase": evil, "phase_elapsed_seconds": evil, "current_system": evil,
            "deployed": {"build": evil, "path": evil, "at": evil},
            "running": {"build": evil, "source": evil}, "pending": {"build": [evil], "source": {"a": evil}},
            "last_attempt": {"build": evil, "source": evil, "outcome": evil, "reboot": evil,
                "error": evil, "started_at": evil, "finished_at": evil,
                "checks": [{"name": evil, "kind": evil, "passed": evil, "detail": evil, "duration_ms": evil}]},
            "waiting": {"reason": "gate", "gate": evil, "detail": evil, "since": evil, "until": evil},
            "last_poll": {"at": evil, "result": evil}, "next_poll": evil, "state_error": evil,
        });
        let text = describe(&status, now);
        for bad in ['\u{1b}', '\u{7}', '\r', '\u{9b}', '\u{202e}'] {
            assert!(!text.contains(bad), "{bad:?} in {text:?}");
        }
        // The injected newline did not start a line of its own.
        assert!(
            !text.lines().any(|l| l.starts_with("phase           idle")),
            "{text}"
        );
        assert!(text.contains("\\u{1b}]0;pwned"), "{text}");
        // And a status that is not even an object still prints.
        let _ = describe(&json!([1, 2]), now);
        let _ = describe(&json!({"last_poll": 5, "waiting": "x"}), now);
    }
}
