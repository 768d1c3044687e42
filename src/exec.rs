//! The one way the agent runs a command: no shell, its own process group, stdin from /dev/null.
//! `CommandRunner` streams the output to the log (activation, rollback, fetch, diff, hooks) and
//! kills the group on its timeout or at shutdown; `capture` keeps the output (health checks) and
//! kills the group when its caller drops it.

use std::ffi::OsStr;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Longer output lines are cut here so one runaway line cannot fill memory.
const MAX_LINE: usize = 8 * 1024;
/// How long a killed command gets between SIGTERM and SIGKILL.
const KILL_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RunError {
    #[error("{program}: cannot start: {message}")]
    Spawn { program: String, message: String },
    #[error("{program}: exited with status {code}")]
    Exit { program: String, code: i32 },
    #[error("{program}: killed by signal {signal}")]
    Signal { program: String, signal: i32 },
    #[error("{program}: still running after {after:?}, killed with its process group")]
    Timeout { program: String, after: Duration },
    #[error("{program}: interrupted because the agent is stopping")]
    Cancelled { program: String },
}

/// Sees each output line (stdout and stderr alike); returns whether the line is still logged.
pub type LineObserver = Arc<dyn Fn(&str) -> bool + Send + Sync>;

#[derive(Clone)]
pub struct CommandRunner {
    pub timeout: Duration,
    pub dry_run: bool,
    pub cancel: CancellationToken,
}

impl CommandRunner {
    /// Runs `argv` to completion; in dry-run mode only logs it.
    pub async fn run(&self, argv: &[String]) -> Result<(), RunError> {
        self.run_with_env(argv, &[]).await
    }

    /// `run` with extra environment variables (the hooks' `NIXOS_HYDRA_UPGRADE_*`).
    pub async fn run_with_env(
        &self,
        argv: &[String],
        env: &[(String, String)],
    ) -> Result<(), RunError> {
        self.run_observed(argv, env, None).await
    }

    /// `run_with_env`, handing each output line to `observer` first (nix's progress, a gate's
    /// answer); lines it declines are not logged.
    pub async fn run_observed(
        &self,
        argv: &[String],
        env: &[(String, String)],
        observer: Option<LineObserver>,
    ) -> Result<(), RunError> {
        let Some((program, args)) = argv.split_first() else {
            return Err(RunError::Spawn {
                program: String::new(),
                message: "empty command".into(),
            });
        };
        let command_line = argv.join(" ");
        if self.dry_run {
            tracing::info!(command = %command_line, "dry run: would run");
            return Ok(());
        }
        tracing::info!(command = %command_line, "running");
        let mut child = Command::new(program)
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            // systemd's notify socket is the agent's alone (NotifyAccess=main).
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| RunError::Spawn {
                program: program.clone(),
                message: e.to_string(),
            })?;
        let group = child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .map(Pid::from_raw);
        let readers = [
            child
                .stdout
                .take()
                .map(|s| spawn_logger(s, "stdout", observer.clone())),
            child
                .stderr
                .take()
                .map(|s| spawn_logger(s, "stderr", observer.clone())),
        ];
        let result = tokio::select! {
            status = child.wait() => match status {
                Ok(status) => exit_result(program, status),
                Err(e) => Err(RunError::Spawn { program: program.clone(), message: e.to_string() }),
            },
            () = tokio::time::sleep(self.timeout) => {
                stop_group(group, &mut child).await;
                Err(RunError::Timeout { program: program.clone(), after: self.timeout })
            }
            () = self.cancel.cancelled() => {
                stop_group(group, &mut child).await;
                Err(RunError::Cancelled { program: program.clone() })
            }
        };
        for reader in readers.into_iter().flatten() {
            // A grandchild may still hold the pipe open; don't wait for it forever.
            if tokio::time::timeout(Duration::from_secs(2), reader)
                .await
                .is_err()
            {
                tracing::warn!(program = %program, "output still open after exit; stopped reading it");
            }
        }
        result
    }
}

fn exit_result(program: &str, status: std::process::ExitStatus) -> Result<(), RunError> {
    use std::os::unix::process::ExitStatusExt;
    if status.success() {
        return Ok(());
    }
    match (status.code(), status.signal()) {
        (Some(code), _) => Err(RunError::Exit {
            program: program.into(),
            code,
        }),
        (None, Some(signal)) => Err(RunError::Signal {
            program: program.into(),
            signal,
        }),
        (None, None) => Err(RunError::Exit {
            program: program.into(),
            code: -1,
        }),
    }
}

/// SIGTERM to the whole group, SIGKILL after a grace period.
async fn stop_group(group: Option<Pid>, child: &mut tokio::process::Child) {
    if let Some(group) = group {
        let _ = killpg(group, Signal::SIGTERM);
        if tokio::time::timeout(KILL_GRACE, child.wait()).await.is_ok() {
            let _ = killpg(group, Signal::SIGKILL);
            return;
        }
        let _ = killpg(group, Signal::SIGKILL);
    }
    let _ = child.kill().await;
}

fn spawn_logger(
    stream: impl AsyncRead + Unpin + Send + 'static,
    name: &'static str,
    observer: Option<LineObserver>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(log_lines(stream, name, observer).instrument(tracing::Span::current()))
}

/// Logs each line of `stream` (unless the observer takes it), cutting lines at `MAX_LINE` bytes.
async fn log_lines(
    mut stream: impl AsyncRead + Unpin,
    name: &'static str,
    observer: Option<LineObserver>,
) {
    let mut buffer = vec![0u8; 4096];
    let mut line: Vec<u8> = Vec::new();
    let mut cut = false;
    loop {
        let n = match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        for &byte in buffer.iter().take(n) {
            if byte == b'\n' {
                emit(name, &line, cut, observer.as_ref());
                line.clear();
                cut = false;
            } else if line.len() < MAX_LINE {
                line.push(byte);
            } else {
                cut = true;
            }
        }
    }
    if !line.is_empty() {
        emit(name, &line, cut, observer.as_ref());
    }
}

fn emit(stream: &'static str, line: &[u8], cut: bool, observer: Option<&LineObserver>) {
    let text = String::from_utf8_lossy(line);
    let text = text.trim_end_matches('\r');
    if observer.is_some_and(|see| !see(text)) {
        return;
    }
    if cut {
        tracing::info!(stream, truncated = true, "{text}");
    } else {
        tracing::info!(stream, "{text}");
    }
}

/// At most this much of stdout and of stderr is kept by `capture`; the rest is read and dropped.
const OUTPUT_CAP: usize = 64 * 1024;
/// After a captured process exits, how long its pipes may stay open (held by a leftover child).
const PIPE_GRACE: Duration = Duration::from_millis(100);

/// A process that ran to its end.
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// Runs `program args…` in its own process group, stdin from /dev/null, output captured (capped).
/// It has no timeout of its own: the caller bounds it by dropping the future, which kills the
/// whole process group (`kill_on_drop` alone would reach only the direct child).
pub async fn capture<S: AsRef<OsStr>>(program: &OsStr, args: &[S]) -> std::io::Result<Finished> {
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()?;
    // Declared after `child`, so dropped before it: the group dies before tokio reaps the leader,
    // and the group id cannot have been reused by then.
    let mut group = KillGroupOnDrop(child.id().and_then(|id| i32::try_from(id).ok()));
    let stdout = child
        .stdout
        .take()
        .map(|p| AbortOnDrop(tokio::spawn(read_capped(p))));
    let stderr = child
        .stderr
        .take()
        .map(|p| AbortOnDrop(tokio::spawn(read_capped(p))));
    let status = child.wait().await?;
    group.0 = None; // reaped: its id may be reused from now on
    Ok(Finished {
        status,
        stdout: collect(stdout).await,
        stderr: collect(stderr).await,
    })
}

/// Kills the process group `.0` on drop, unless cleared.
struct KillGroupOnDrop(Option<i32>);

impl Drop for KillGroupOnDrop {
    fn drop(&mut self) {
        if let Some(pgid) = self.0.take() {
            let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
        }
    }
}

/// Aborts the task on drop, so no reader outlives the check.
struct AbortOnDrop(JoinHandle<Vec<u8>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn read_capped<R: AsyncRead + Unpin>(mut pipe: R) -> Vec<u8> {
    let mut kept = Vec::new();
    let mut buf = [0u8; 8192];
    // Ends at EOF or on a read error; the caller's abort ends it otherwise.
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => return kept,
            Ok(n) => {
                let room = OUTPUT_CAP.saturating_sub(kept.len());
                kept.extend_from_slice(buf.get(..n.min(room)).unwrap_or(&[]));
            }
        }
    }
}

async fn collect(reader: Option<AbortOnDrop>) -> Vec<u8> {
    let Some(mut reader) = reader else {
        return Vec::new();
    };
    match tokio::time::timeout(PIPE_GRACE, &mut reader.0).await {
        Ok(Ok(bytes)) => bytes,
        _ => Vec::new(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn runner(timeout: Duration) -> CommandRunner {
        CommandRunner {
            timeout,
            dry_run: false,
            cancel: CancellationToken::new(),
        }
    }

    fn argv(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| w.to_string()).collect()
    }

    #[tokio::test]
    async fn exit_codes_and_missing_programs() {
        let r = runner(Duration::from_secs(10));
        assert_eq!(r.run(&argv(&["true"])).await, Ok(()));
        let err = r
            .run(&argv(&["sh", "-c", "echo out; echo err >&2; exit 4"]))
            .await;
        assert_eq!(
            err,
            Err(RunError::Exit {
                program: "sh".into(),
                code: 4
            })
        );
        let missing = r
            .run(&argv(&["/nonexistent/nixos-rebuild"]))
            .await
            .unwrap_err();
        assert!(matches!(missing, RunError::Spawn { .. }), "{missing}");
        assert!(r.run(&[]).await.is_err());
    }

    #[tokio::test]
    async fn timeout_kills_the_whole_group() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("grandchild-survived");
        let script = format!("(sleep 2; touch {}) & sleep 30", marker.display());
        let started = std::time::Instant::now();
        let err = runner(Duration::from_millis(300))
            .run(&argv(&["sh", "-c", &script]))
            .await;
        assert!(matches!(err, Err(RunError::Timeout { .. })), "{err:?}");
        assert!(started.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert!(
            !marker.exists(),
            "the backgrounded grandchild must die with the group"
        );
    }

    #[tokio::test]
    async fn observer_sees_every_line_of_both_streams() {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = seen.clone();
        let observer: LineObserver = Arc::new(move |line: &str| {
            sink.lock().unwrap().push(line.to_owned());
            false
        });
        runner(Duration::from_secs(10))
            .run_observed(
                &argv(&["sh", "-c", "echo one; echo two >&2; printf three"]),
                &[],
                Some(observer),
            )
            .await
            .unwrap();
        let mut seen = seen.lock().unwrap().clone();
        seen.sort();
        assert_eq!(seen, ["one", "three", "two"]);
    }

    #[tokio::test]
    async fn dry_run_runs_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("ran");
        let r = CommandRunner {
            dry_run: true,
            ..runner(Duration::from_secs(1))
        };
        r.run(&argv(&["touch", &marker.display().to_string()]))
            .await
            .unwrap();
        assert!(!marker.exists());
    }
}
