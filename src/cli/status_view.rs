//! The human-readable form of `/v1/status` that `status` and `demo` print.

use std::fmt::Write;

use serde_json::Value;

const WIDTH: usize = 16;

fn text(v: &Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), str::to_owned)
}

fn present<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    v.get(key).filter(|v| !v.is_null())
}

/// "1h 2m 3s" for a number of seconds.
fn seconds(value: Option<&Value>) -> Option<String> {
    let secs = value?.as_i64()?.max(0).unsigned_abs();
    Some(humantime::format_duration(std::time::Duration::from_secs(secs)).to_string())
}

fn elapsed(attempt: &Value) -> Option<String> {
    let started: jiff::Timestamp = attempt.get("started_at")?.as_str()?.parse().ok()?;
    let finished: jiff::Timestamp = attempt.get("finished_at")?.as_str()?.parse().ok()?;
    let secs = (finished.as_second() - started.as_second()).max(0);
    seconds(Some(&Value::from(secs)))
}

/// The whole status, one labelled line (or block) per fact.
pub fn describe(status: &Value) -> String {
    let mut out = String::new();
    let mut line = |label: &str, value: String| {
        let mut rows = value.lines();
        let _ = writeln!(out, "{label:<WIDTH$}{}", rows.next().unwrap_or_default());
        for row in rows {
            let _ = writeln!(out, "{:WIDTH$}{row}", "");
        }
    };
    let hydra = present(status, "hydra").map(text).unwrap_or_default();
    let phase = present(status, "phase").map_or("?".into(), text);
    let running = present(status, "running");
    let mut phase_text = phase.clone();
    if phase != "idle"
        && let Some(for_) = seconds(status.get("phase_elapsed_seconds"))
    {
        phase_text.push_str(&format!(" for {for_}"));
    }
    if let Some(job) = running {
        phase_text.push_str(&format!(" (build {})", job["build"]));
    }
    line("phase", phase_text);
    if let Some(w) = present(status, "waiting") {
        line(
            "waiting",
            format!(
                "{}
since {}, looks again at {}",
                text(&w["detail"]),
                text(&w["since"]),
                text(&w["until"])
            ),
        );
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
                "build {} at {}\n{hydra}/build/{}\n{}",
                d["build"],
                text(&d["at"]),
                d["build"],
                text(&d["path"])
            )
        }),
    );
    let current = present(status, "current_system").map(text);
    let relation = match (&current, deployed.and_then(|d| d["path"].as_str())) {
        (None, _) => "unknown (unreadable)".to_owned(),
        (Some(c), Some(d)) if c == d => "the deployed build".to_owned(),
        (Some(c), Some(_)) => format!("{c}\n(differs from the deployed build)"),
        (Some(c), None) => c.clone(),
    };
    line("current system", relation);
    for key in ["running", "pending"] {
        line(
            key,
            present(status, key).map_or("none".into(), |j| {
                format!("build {} from {}", j["build"], text(&j["source"]))
            }),
        );
    }
    line(
        "last attempt",
        present(status, "last_attempt").map_or("none".into(), |a| describe_attempt(a, &hydra)),
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
        "next poll",
        present(status, "next_poll").map_or("none".into(), text),
    );
    out
}

/// One attempt: what, how it ended, its error, and its checks.
pub fn describe_attempt(a: &Value, hydra: &str) -> String {
    let took = elapsed(a).map(|e| format!(" in {e}")).unwrap_or_default();
    let mut s = format!(
        "build {} from {}: {}{took}, reboot {}\nfinished {} ({hydra}/build/{})",
        a["build"],
        text(&a["source"]),
        text(&a["outcome"]),
        text(&a["reboot"]),
        text(&a["finished_at"]),
        a["build"],
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
                c["duration_ms"],
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

    #[test]
    fn describes_a_busy_agent() {
        let path = "/nix/store/00000000000000000000000000000000-nixos-system-web1";
        let status = json!({
            "phase": "activating", "phase_elapsed_seconds": 75, "hydra": "https://hydra",
            "current_system": "/nix/store/11111111111111111111111111111111-old",
            "deployed": {"build": 4821, "path": path, "at": "2026-01-01T04:40:12Z"},
            "running": {"build": 4830, "source": "hydra"}, "pending": null,
            "last_attempt": {"build": 4821, "source": "schedule", "outcome": "rolled-back",
                "reboot": "none", "error": "post-check app (http) failed: status 503",
                "started_at": "2026-01-01T04:40:00Z", "finished_at": "2026-01-01T04:40:12Z",
                "checks": [{"name": "app", "kind": "http", "passed": false, "detail": "status 503",
                            "attempts": 3, "duration_ms": 40}]},
            "reboot_needed": true, "next_poll": null, "history": [],
            "waiting": {"reason": "gate", "gate": "no-sessions",
                "detail": "gate no-sessions: 1 user session(s): alice on tty2",
                "since": "2026-01-01T04:40:00Z", "until": "2026-01-01T04:45:00Z"},
            "fetch": {"target": path, "paths_done": 1, "paths_expected": 2,
                "bytes_done": 31_457_280, "bytes_expected": 52_428_800, "current": path}
        });
        let text = describe(&status);
        for needle in [
            "activating for 1m 15s (build 4830)",
            "https://hydra/build/4821",
            "(differs from the deployed build)",
            "rolled-back in 12s",
            "error: post-check app (http) failed",
            "FAIL app (http) 40 ms: status 503",
            "reboot          needed",
            "next poll       none",
            "waiting         gate no-sessions: 1 user session(s): alice on tty2",
            "looks again at 2026-01-01T04:45:00Z",
            "fetch           1/2 paths, 30/50 MiB",
        ] {
            assert!(text.contains(needle), "{needle:?} in\n{text}");
        }
        let idle = describe(&json!({"phase": "idle", "deployed": null}));
        assert!(
            idle.contains("nothing yet") && idle.contains("last attempt    none"),
            "{idle}"
        );
    }
}
