//! Command checks (`argv` exits 0), run through the crate's one executor (`exec::capture`).

use std::ffi::OsStr;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

use super::failure::{CheckFailure, Probe};
use crate::exec::capture;

/// One attempt: runs `argv` without a shell; passes when it exits 0.
pub(super) async fn check(argv: &[String]) -> Probe {
    let Some((program, args)) = argv.split_first() else {
        return Err(CheckFailure::NothingToCheck("empty argv"));
    };
    let done = capture(OsStr::new(program), args)
        .await
        .map_err(|e| CheckFailure::CannotProbe(format!("cannot run {program}: {e}")))?;
    if done.status.success() {
        Ok("exit status 0".into())
    } else {
        Err(CheckFailure::Exit {
            status: describe_status(done.status),
            last_line: last_line(&done.stderr, &done.stdout),
        })
    }
}

/// "exit status 3", "killed by signal 9".
pub(super) fn describe_status(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        (None, None) => status.to_string(),
    }
}

/// ": <last non-empty line of stderr, else of stdout>", at most 200 characters; "" if none.
pub(super) fn last_line(stderr: &[u8], stdout: &[u8]) -> String {
    let pick = |bytes: &[u8]| {
        String::from_utf8_lossy(bytes)
            .lines()
            .map(str::trim)
            .rfind(|l| !l.is_empty())
            .map(|l| l.chars().take(200).collect::<String>())
    };
    pick(stderr)
        .or_else(|| pick(stdout))
        .map_or_else(String::new, |l| format!(": {l}"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::super::{Check, CheckKind, run_phase};
    use super::*;
    use std::time::{Duration, Instant};

    fn argv(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[tokio::test]
    async fn true_passes_and_false_fails() {
        assert_eq!(check(&argv(&["true"])).await.unwrap(), "exit status 0");
        assert_eq!(
            check(&argv(&["false"])).await.unwrap_err(),
            CheckFailure::Exit {
                status: "exit status 1".into(),
                last_line: String::new()
            }
        );
    }

    #[tokio::test]
    async fn failure_detail_carries_the_last_line_of_stderr() {
        let a = argv(&[
            "sh",
            "-c",
            "echo starting; echo 'db: connection refused' >&2; exit 3",
        ]);
        assert_eq!(
            check(&a).await.unwrap_err().to_string(),
            "exit status 3: db: connection refused"
        );
    }

    #[tokio::test]
    async fn a_missing_program_and_empty_argv_fail() {
        let detail = check(&argv(&["/nonexistent/nhu-check"]))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            detail.starts_with("cannot run /nonexistent/nhu-check: "),
            "{detail}"
        );
        assert_eq!(
            check(&[]).await.unwrap_err(),
            CheckFailure::NothingToCheck("empty argv")
        );
    }

    #[tokio::test]
    async fn a_slow_command_is_killed_at_the_timeout_with_its_children() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("grandchild.pid");
        let script = format!("sleep 30 & echo $! > {}; wait", pidfile.display());
        let check = Check {
            name: "slow".into(),
            kind: CheckKind::Command {
                argv: argv(&["sh", "-c", &script]),
            },
            timeout: Duration::from_millis(500),
            retries: 0,
            interval: Duration::ZERO,
        };
        let started = Instant::now();
        let results = run_phase(&[check], Duration::from_secs(10)).await;
        let elapsed = started.elapsed();
        assert!(!results[0].passed);
        assert_eq!(results[0].detail, "timed out after 500ms (killed)");
        assert!(elapsed < Duration::from_secs(2), "took {elapsed:?}");
        // The backgrounded `sleep` was in the command's process group: it must be gone
        // (or a zombie waiting for init), not sleeping on.
        let pid = std::fs::read_to_string(&pidfile).unwrap().trim().to_owned();
        let mut alive = true;
        for _ in 0..40 {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let state = stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .chars()
                .next();
            if matches!(state, None | Some('Z') | Some('X')) {
                alive = false;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(!alive, "grandchild {pid} survived the timeout");
    }

    #[tokio::test]
    async fn a_leftover_child_holding_the_pipe_does_not_stall_the_check() {
        // `sh` exits 0 at once; its background child keeps stdout open for 5 s.
        let started = Instant::now();
        let detail = check(&argv(&["sh", "-c", "sleep 5 & exit 0"]))
            .await
            .unwrap();
        assert_eq!(detail, "exit status 0");
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn last_line_prefers_stderr_and_handles_garbage() {
        assert_eq!(last_line(b"a\nb\n\n", b"c"), ": b");
        assert_eq!(last_line(b"", b"out\n"), ": out");
        assert_eq!(last_line(b"\xff\xfe", b""), ": \u{fffd}\u{fffd}");
        assert_eq!(last_line(b"", b""), "");
    }
}
