//! `[[gates]]`: whether each gate is open now. A closed gate, or one that cannot be read, defers
//! the activation (`Verdict::Closed`); it never fails the attempt.
//!
//! - `no-sessions`: `loginctl list-sessions --no-legend` gives the session ids (first column in
//!   every systemd version; later columns changed, and `--json` on `list-sessions` is newer than
//!   Debian's 252), then `loginctl show-session -p …` gives `Class` and `State` of each: the gate
//!   is closed while any `user` session is not `closing`.
//! - `not-metered`: `nmcli -t -f GENERAL.DEVICE,GENERAL.METERED device show` (LC_ALL=C, as nmcli
//!   translates its values) lists each device's metered state (`yes`, `no`, `yes (guessed)`,
//!   `no (guessed)`, `unknown`): closed while any device says `yes…`.
//! - `command`: `argv` exits 0 = open.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use jiff::Timestamp;
use tokio_util::sync::CancellationToken;

use crate::config::{GateConfig, GateKind, SystemConfig};
use crate::exec::{CommandRunner, LineObserver};
use crate::model::{Job, Verdict, WaitingFor};
use crate::upgrade::wait::Condition;

/// A gate's question must answer within this.
const GATE_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `argv` and returns its stdout and stderr lines (not logged: they are the answer).
async fn capture(runner: &CommandRunner, argv: &[String]) -> Result<Vec<String>, String> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    let observer: LineObserver = Arc::new(move |line: &str| {
        sink.lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(line.to_owned());
        false
    });
    let env = [("LC_ALL".to_owned(), "C".to_owned())];
    let result = runner.run_observed(argv, &env, Some(observer)).await;
    let lines = lines.lock().unwrap_or_else(|p| p.into_inner()).clone();
    match result {
        Ok(()) => Ok(lines),
        Err(e) => {
            let said = lines.last().map(|l| format!(" ({l})")).unwrap_or_default();
            Err(format!("{e}{said}"))
        }
    }
}

fn argv(program: &str, args: &[&str]) -> Vec<String> {
    std::iter::once(program)
        .chain(args.iter().copied())
        .map(str::to_owned)
        .collect()
}

/// Session ids: the first word of each line of `loginctl list-sessions --no-legend`.
pub fn session_ids(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|id| {
            id.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
        .map(str::to_owned)
        .collect()
}

/// One session as `loginctl show-session` describes it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Session {
    pub id: String,
    pub name: String,
    pub class: String,
    pub state: String,
    pub tty: String,
}

/// Parses `KEY=value` blocks (separated by blank lines, or by a key repeating).
pub fn parse_sessions(lines: &[String]) -> Vec<Session> {
    let mut sessions = Vec::new();
    let mut current = Session::default();
    let mut seen: Vec<String> = Vec::new();
    for line in lines {
        let Some((key, value)) = line.split_once('=') else {
            if !seen.is_empty() {
                sessions.push(std::mem::take(&mut current));
                seen.clear();
            }
            continue;
        };
        if seen.iter().any(|k| k == key) {
            sessions.push(std::mem::take(&mut current));
            seen.clear();
        }
        seen.push(key.to_owned());
        let value = value.to_owned();
        match key {
            "Id" => current.id = value,
            "Name" => current.name = value,
            "Class" => current.class = value,
            "State" => current.state = value,
            "TTY" => current.tty = value,
            _ => {}
        }
    }
    if !seen.is_empty() {
        sessions.push(current);
    }
    sessions
}

/// The user sessions that keep the `no-sessions` gate closed.
pub fn blocking_sessions(sessions: &[Session]) -> Vec<&Session> {
    sessions
        .iter()
        .filter(|s| s.class.starts_with("user") && s.state != "closing")
        .collect()
}

/// Metered devices in `nmcli -t -f GENERAL.DEVICE,GENERAL.METERED device show` output.
pub fn metered_devices(lines: &[String]) -> Vec<String> {
    let mut device = String::new();
    let mut metered = Vec::new();
    for line in lines {
        if let Some(name) = line.strip_prefix("GENERAL.DEVICE:") {
            name.clone_into(&mut device);
        } else if let Some(value) = line.strip_prefix("GENERAL.METERED:")
            && value.trim_start().starts_with("yes")
        {
            metered.push(format!("{device} ({})", value.trim()));
        }
    }
    metered
}

/// Open, or closed with what closes it.
async fn is_open(
    gate: &GateConfig,
    system: &SystemConfig,
    runner: &CommandRunner,
) -> Result<(), String> {
    match gate.kind {
        GateKind::NoSessions => {
            let list = capture(
                runner,
                &argv(
                    &system.loginctl,
                    &["list-sessions", "--no-legend", "--no-pager"],
                ),
            )
            .await
            .map_err(|e| format!("cannot list sessions: {e}"))?;
            let ids = session_ids(&list);
            if ids.is_empty() {
                return Ok(());
            }
            let mut show = argv(
                &system.loginctl,
                &[
                    "show-session",
                    "--no-pager",
                    "--property=Id",
                    "--property=Name",
                    "--property=Class",
                    "--property=State",
                    "--property=TTY",
                ],
            );
            show.extend(ids);
            let details = capture(runner, &show)
                .await
                .map_err(|e| format!("cannot read sessions: {e}"))?;
            let sessions = parse_sessions(&details);
            let blocking = blocking_sessions(&sessions);
            if blocking.is_empty() {
                return Ok(());
            }
            let who = blocking
                .iter()
                .map(|s| match s.tty.as_str() {
                    "" => format!("{} (session {})", s.name, s.id),
                    tty => format!("{} on {tty}", s.name),
                })
                .collect::<Vec<_>>()
                .join(", ");
            Err(format!("{} user session(s): {who}", blocking.len()))
        }
        GateKind::NotMetered => {
            let lines = capture(
                runner,
                &argv(
                    &system.nmcli,
                    &[
                        "-t",
                        "-f",
                        "GENERAL.DEVICE,GENERAL.METERED",
                        "device",
                        "show",
                    ],
                ),
            )
            .await
            .map_err(|e| format!("cannot read NetworkManager's metered state: {e}"))?;
            let metered = metered_devices(&lines);
            if metered.is_empty() {
                Ok(())
            } else {
                Err(format!("metered: {}", metered.join(", ")))
            }
        }
        GateKind::Command => runner.run(&gate.argv).await.map_err(|e| e.to_string()),
    }
}

/// What `gate` says now.
pub async fn check(gate: &GateConfig, system: &SystemConfig, runner: &CommandRunner) -> Verdict {
    let runner = CommandRunner {
        timeout: GATE_TIMEOUT.min(runner.timeout),
        ..runner.clone()
    };
    match is_open(gate, system, &runner).await {
        Ok(()) => Verdict::Open,
        Err(detail) => Verdict::Closed {
            what: WaitingFor::Gate { gate: gate.name() },
            detail: format!("gate {}: {detail}", gate.name()),
            recheck: gate.recheck,
        },
    }
}

/// A gate as a condition of the wait step; asked before fetching too.
pub struct Gate {
    pub config: GateConfig,
    pub system: SystemConfig,
    /// dry_run: the question is logged, not asked, and the gate counts as open.
    pub dry_run: bool,
    /// Stops a running question when the agent stops.
    pub cancel: CancellationToken,
}

impl Condition for Gate {
    fn check<'a>(&'a self, _job: &'a Job, _now: Timestamp) -> BoxFuture<'a, Verdict> {
        Box::pin(async move {
            let runner = CommandRunner {
                timeout: GATE_TIMEOUT,
                dry_run: self.dry_run,
                cancel: self.cancel.clone(),
            };
            check(&self.config, &self.system, &runner).await
        })
    }

    fn before_fetch(&self) -> bool {
        true
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn lines(text: &str) -> Vec<String> {
        text.lines().map(str::to_owned).collect()
    }

    #[test]
    fn reads_session_ids_from_old_and_new_column_sets() {
        // systemd 252: SESSION UID USER SEAT TTY; 256: adds STATE IDLE SINCE and LEADER CLASS.
        let old = lines("      2 1000 alice seat0 tty2\n     c1  997 gdm   seat0 tty1\n");
        assert_eq!(session_ids(&old), ["2", "c1"]);
        let new = lines("3 1000 bob - 812 user pts/0 active no -\n");
        assert_eq!(session_ids(&new), ["3"]);
        assert!(session_ids(&lines("")).is_empty());
    }

    #[test]
    fn user_sessions_block_greeters_and_closing_ones_do_not() {
        let shown = lines(
            "Id=2\nName=alice\nClass=user\nState=active\nTTY=tty2\n\n\
             Id=c1\nName=gdm\nClass=greeter\nState=online\nTTY=tty1\n\n\
             Id=5\nName=bob\nClass=user\nState=closing\nTTY=pts/1\n\
             Id=6\nName=carol\nClass=user\nState=online\nTTY=\n",
        );
        let sessions = parse_sessions(&shown);
        assert_eq!(sessions.len(), 4, "{sessions:?}");
        let blocking: Vec<&str> = blocking_sessions(&sessions)
            .iter()
            .map(|s| s.name.as_str())
            .collect();
        assert_eq!(blocking, ["alice", "carol"]);
    }

    #[tokio::test]
    async fn a_command_gate_is_closed_then_open() {
        let dir = tempfile::tempdir().unwrap();
        let flag = dir.path().join("busy");
        std::fs::write(&flag, "").unwrap();
        let gate = Gate {
            config: GateConfig {
                kind: GateKind::Command,
                recheck: Duration::from_secs(60),
                argv: vec![
                    "test".into(),
                    "!".into(),
                    "-e".into(),
                    flag.display().to_string(),
                ],
            },
            system: SystemConfig::default(),
            dry_run: false,
            cancel: CancellationToken::new(),
        };
        let job = crate::model::Job {
            target: crate::model::Target {
                build: 1,
                path: crate::model::StorePath::parse(
                    "/nix/store/00000000000000000000000000000000-nixos-system-web1",
                )
                .unwrap(),
                flake: None,
            },
            source: crate::model::Source::Hydra,
            force: false,
            received_at: Timestamp::UNIX_EPOCH,
        };
        let closed = gate.check(&job, Timestamp::UNIX_EPOCH).await;
        assert_eq!(
            closed,
            Verdict::Closed {
                what: WaitingFor::Gate {
                    gate: "command test".into()
                },
                detail: "gate command test: test: exited with status 1".into(),
                recheck: Duration::from_secs(60),
            }
        );
        assert!(gate.before_fetch());
        std::fs::remove_file(&flag).unwrap();
        assert_eq!(gate.check(&job, Timestamp::UNIX_EPOCH).await, Verdict::Open);
    }

    #[test]
    fn metered_devices_from_terse_output() {
        let out = lines(
            "GENERAL.DEVICE:wlp3s0\nGENERAL.METERED:no (guessed)\n\nGENERAL.DEVICE:wwan0\nGENERAL.METERED:yes\n\nGENERAL.DEVICE:lo\nGENERAL.METERED:unknown\n",
        );
        assert_eq!(metered_devices(&out), ["wwan0 (yes)"]);
        let guessed = lines("GENERAL.DEVICE:usb0\nGENERAL.METERED:yes (guessed)\n");
        assert_eq!(metered_devices(&guessed), ["usb0 (yes (guessed))"]);
        assert!(metered_devices(&lines("GENERAL.METERED:no\n")).is_empty());
    }
}
