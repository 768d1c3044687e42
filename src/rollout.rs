//! Rollout waves (SPEC §6): whether the `[rollout] after` agents have run a build long enough,
//! read from each one's `GET /v1/status`; no control plane, only the agents' own status.

use std::time::Duration;

use jiff::Timestamp;
use serde_json::Value;

use crate::model::{Outcome, Verdict, WaitingFor};

/// One status request never takes longer than this.
const STATUS_TIMEOUT: Duration = Duration::from_secs(5);
/// Bounds of the interval at which an agent not yet running the build is asked again.
const MIN_RECHECK: Duration = Duration::from_secs(2);
const MAX_RECHECK: Duration = Duration::from_secs(60);
/// Largest status answer read.
const MAX_STATUS: usize = 1024 * 1024;

/// Where one `after` agent stands for `build`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Standing {
    Baked,
    /// Runs it healthily, for less than `bake` so far: `left` to go.
    Baking {
        left: Duration,
    },
    /// Not there (unreachable, older build, unhealthy, busy): why.
    NotYet(String),
}

/// Whether the wave is open for `build`: every `after` agent has deployed it or a newer one, its
/// last outcome is `upgraded` (or `current`: it runs that build and its checks passed), its phase
/// is idle, and it deployed at least `bake` before `now`. Closed names the agents not yet baked.
pub async fn check(
    after: &[String],
    build: u64,
    bake: Duration,
    now: Timestamp,
    client: &reqwest::Client,
) -> Verdict {
    let asks = after.iter().map(|url| async move {
        let standing = match fetch(client, url).await {
            Ok(status) => judge(&status, build, bake, now),
            Err(e) => Standing::NotYet(format!("unreachable: {e}")),
        };
        (url, standing)
    });
    let standings = futures_util::future::join_all(asks).await;
    verdict(standings, bake)
}

/// Whether a job queued at `queued_at` has waited for its wave longer than `timeout`.
pub fn expired(queued_at: Timestamp, timeout: Duration, now: Timestamp) -> bool {
    queued_at
        .checked_add(timeout)
        .is_ok_and(|give_up| now >= give_up)
}

fn verdict(standings: Vec<(&String, Standing)>, bake: Duration) -> Verdict {
    let poll = (bake / 10).clamp(MIN_RECHECK, MAX_RECHECK);
    let mut agents = Vec::new();
    let mut details = Vec::new();
    let mut recheck = MAX_RECHECK;
    for (url, standing) in standings {
        let (detail, next) = match standing {
            Standing::Baked => continue,
            Standing::Baking { left } => (
                format!("baking, {} left", humantime::format_duration(left)),
                left.max(Duration::from_secs(1)),
            ),
            Standing::NotYet(why) => (why, poll),
        };
        recheck = recheck.min(next);
        details.push(format!("{url}: {detail}"));
        agents.push(url.clone());
    }
    if agents.is_empty() {
        return Verdict::Open;
    }
    Verdict::Closed {
        what: WaitingFor::Rollout { agents },
        detail: details.join("; "),
        recheck,
    }
}

async fn fetch(client: &reqwest::Client, base: &str) -> Result<Value, String> {
    let url = format!("{}/v1/status", base.trim_end_matches('/'));
    let mut response = client
        .get(&url)
        .timeout(STATUS_TIMEOUT)
        .send()
        .await
        .map_err(|e| crate::net::describe(&e))?;
    if response.status() != reqwest::StatusCode::OK {
        return Err(format!("status answered {}", response.status().as_u16()));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| crate::net::describe(&e))?
    {
        if body.len() + chunk.len() > MAX_STATUS {
            return Err("status answer over 1 MiB".into());
        }
        body.extend_from_slice(&chunk);
    }
    serde_json::from_slice(&body).map_err(|e| format!("status is not JSON: {e}"))
}

fn judge(status: &Value, build: u64, bake: Duration, now: Timestamp) -> Standing {
    let Some(deployed) = status["deployed"]["build"].as_u64() else {
        return Standing::NotYet("has deployed nothing yet".into());
    };
    if deployed < build {
        return Standing::NotYet(format!("runs build {deployed}, not {build} yet"));
    }
    let outcome = status["last_attempt"]["outcome"].as_str().unwrap_or("none");
    let healthy = [Outcome::Upgraded, Outcome::Current].map(Outcome::as_str);
    if !healthy.contains(&outcome) {
        return Standing::NotYet(format!("last outcome {}", shown(outcome)));
    }
    let phase = status["phase"].as_str().unwrap_or("unknown");
    if phase != "idle" {
        return Standing::NotYet(format!("phase {}", shown(phase)));
    }
    let Some(at) = status["deployed"]["at"]
        .as_str()
        .and_then(|t| t.parse::<Timestamp>().ok())
    else {
        return Standing::NotYet("deployed without a readable time".into());
    };
    let ran = Duration::try_from(now.duration_since(at)).unwrap_or_default();
    match bake.checked_sub(ran) {
        Some(left) if !left.is_zero() => Standing::Baking { left },
        _ => Standing::Baked,
    }
}

/// An agent's word in our log and status: escaped and short.
fn shown(text: &str) -> String {
    text.chars().take(40).flat_map(char::escape_debug).collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    const MIN: Duration = Duration::from_secs(60);

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    fn status(deployed: u64, outcome: &str, phase: &str, when: &str) -> Value {
        json!({"phase": phase, "deployed": {"build": deployed, "at": when},
               "last_attempt": {"build": deployed, "outcome": outcome}})
    }

    #[test]
    fn judges_each_agent() {
        let now = at("2026-12-01T12:00:00Z");
        let cases = [
            (
                status(10, "upgraded", "idle", "2026-12-01T11:00:00Z"),
                Standing::Baked,
            ),
            (
                status(11, "current", "idle", "2026-12-01T11:00:00Z"),
                Standing::Baked,
            ),
            (
                status(10, "upgraded", "idle", "2026-12-01T11:50:00Z"),
                Standing::Baking { left: 20 * MIN },
            ),
            (
                status(9, "upgraded", "idle", "2026-12-01T11:00:00Z"),
                Standing::NotYet("runs build 9, not 10 yet".into()),
            ),
            (
                status(10, "rolled-back", "idle", "2026-12-01T11:00:00Z"),
                Standing::NotYet("last outcome rolled-back".into()),
            ),
            (
                status(10, "upgraded", "activating", "2026-12-01T11:00:00Z"),
                Standing::NotYet("phase activating".into()),
            ),
            (
                json!({"phase": "idle", "deployed": null}),
                Standing::NotYet("has deployed nothing yet".into()),
            ),
            (
                status(10, "upgraded", "\u{1b}[2J", "2026-12-01T11:00:00Z"),
                Standing::NotYet("phase \\u{1b}[2J".into()),
            ),
        ];
        for (s, want) in cases {
            assert_eq!(judge(&s, 10, 30 * MIN, now), want, "{s}");
        }
    }

    #[test]
    fn the_wave_opens_when_every_agent_baked() {
        let (a, b) = ("http://a".to_owned(), "http://b".to_owned());
        assert_eq!(
            verdict(vec![(&a, Standing::Baked), (&b, Standing::Baked)], MIN),
            Verdict::Open
        );
        let closed = verdict(
            vec![
                (&a, Standing::Baked),
                (
                    &b,
                    Standing::Baking {
                        left: Duration::from_secs(7),
                    },
                ),
            ],
            30 * MIN,
        );
        let Verdict::Closed {
            what,
            detail,
            recheck,
        } = closed
        else {
            panic!("open")
        };
        assert_eq!(
            what,
            WaitingFor::Rollout {
                agents: vec![b.clone()]
            }
        );
        assert_eq!(recheck, Duration::from_secs(7));
        assert!(detail.contains("http://b: baking, 7s left"), "{detail}");
        let Verdict::Closed { recheck, .. } =
            verdict(vec![(&a, Standing::NotYet("x".into()))], 30 * MIN)
        else {
            panic!("open")
        };
        assert_eq!(recheck, MAX_RECHECK.min(3 * MIN));
    }

    #[test]
    fn gives_up_after_the_timeout() {
        let queued = at("2026-12-01T00:00:00Z");
        assert!(!expired(queued, 24 * 60 * MIN, at("2026-12-01T23:59:59Z")));
        assert!(expired(queued, 24 * 60 * MIN, at("2026-12-02T00:00:00Z")));
    }

    #[tokio::test]
    async fn reads_the_agents_over_http() {
        let ok = status(10, "upgraded", "idle", "2000-01-01T00:00:00Z");
        let app = axum::Router::new().route(
            "/v1/status",
            axum::routing::get(move || {
                let ok = ok.clone();
                async move { axum::Json(ok) }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let up = format!("http://{}/", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        let down = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            format!("http://{}", l.local_addr().unwrap())
        };
        let client = reqwest::Client::new();
        let now = Timestamp::now();
        assert_eq!(
            check(std::slice::from_ref(&up), 10, MIN, now, &client).await,
            Verdict::Open
        );
        let Verdict::Closed { what, detail, .. } =
            check(&[up, down.clone()], 10, MIN, now, &client).await
        else {
            panic!("open with an agent down")
        };
        assert_eq!(what, WaitingFor::Rollout { agents: vec![down] });
        assert!(detail.contains("unreachable"), "{detail}");
    }
}
