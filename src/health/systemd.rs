//! systemd checks: every listed unit is active, per `systemctl is-active -- UNIT…`.
//!
//! The exit status alone is not enough: `systemctl is-active` exits 0 when *any* of several
//! units is active. It prints one state per unit, in order, so each line is compared instead.

use std::path::Path;

use super::command::{describe_status, last_line};
use super::failure::{CheckFailure, Probe};
use crate::exec::capture;

/// One attempt: asks `systemctl` for the state of `units`.
pub(super) async fn check(systemctl: &Path, units: &[String]) -> Probe {
    if units.is_empty() {
        return Err(CheckFailure::NothingToCheck("no units named"));
    }
    let mut args = vec!["is-active", "--"];
    args.extend(units.iter().map(String::as_str));
    let done = capture(systemctl.as_os_str(), &args).await.map_err(|e| {
        CheckFailure::CannotProbe(format!("cannot run {}: {e}", systemctl.display()))
    })?;
    let stdout = String::from_utf8_lossy(&done.stdout);
    let states: Vec<&str> = stdout
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    if states.len() != units.len() {
        return Err(CheckFailure::SystemctlOutput {
            states: states.len(),
            units: units.len(),
            status: describe_status(done.status),
            last_line: last_line(&done.stderr, b""),
        });
    }
    let not_active: Vec<(String, String)> = units
        .iter()
        .zip(&states)
        .filter(|(_, state)| **state != "active")
        .map(|(unit, state)| (unit.clone(), (*state).to_owned()))
        .collect();
    match (not_active.is_empty(), units) {
        (true, [one]) => Ok(format!("{one} is active")),
        (true, _) => Ok(format!("all {} units active", units.len())),
        (false, _) => Err(CheckFailure::Inactive(not_active)),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::path::PathBuf;

    /// systemd is not running in this sandbox (no PID 1 systemd, no bus), so these tests run a
    /// stand-in `systemctl`: a script answering `is-active -- UNIT…` like the real one — one
    /// state per line, in order, exit 0 if any unit is active — from the unit's name.
    const FAKE_SYSTEMCTL: &str = r#"#!/bin/sh
[ "$1" = is-active ] || { echo "Unknown command verb '$1'." >&2; exit 1; }
shift
[ "$1" = -- ] && shift
rc=3
for unit in "$@"; do
  case "$unit" in
    ok*|-.mount) echo active; rc=0 ;;
    failed*) echo failed ;;
    starting*) echo activating ;;
    slow*) sleep 30; echo active ;;
    *) echo inactive ;;
  esac
done
exit $rc
"#;

    const NO_BUS: &str =
        "#!/bin/sh\necho 'Failed to connect to bus: No such file or directory' >&2\nexit 1\n";

    fn script(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    fn units(u: &[&str]) -> Vec<String> {
        u.iter().map(|s| s.to_string()).collect()
    }

    #[tokio::test]
    async fn unit_states_decide() {
        let dir = tempfile::tempdir().unwrap();
        let systemctl = script(&dir, "systemctl", FAKE_SYSTEMCTL);
        let cases: &[(&[&str], Result<&str, &str>)] = &[
            (&["ok-nginx.service"], Ok("ok-nginx.service is active")),
            (&["ok-a.service", "ok-b.service"], Ok("all 2 units active")),
            (&["-.mount"], Ok("-.mount is active")),
            // Real systemctl exits 0 here (one is active); the check must still fail.
            (
                &["ok-a.service", "failed-db.service"],
                Err("failed-db.service is failed"),
            ),
            (
                &["starting-x.service", "gone.service"],
                Err("starting-x.service is activating, gone.service is inactive"),
            ),
        ];
        for (u, want) in cases {
            let got = check(&systemctl, &units(u)).await;
            let got = got.map_err(|e| e.to_string());
            assert_eq!(got.as_deref().map_err(String::as_str), *want, "{u:?}");
        }
    }

    #[tokio::test]
    async fn systemctl_failing_outright_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let systemctl = script(&dir, "systemctl", NO_BUS);
        let detail = check(&systemctl, &units(&["ok.service"]))
            .await
            .unwrap_err()
            .to_string();
        assert_eq!(
            detail,
            "systemctl is-active gave 0 states for 1 units (exit status 1): \
             Failed to connect to bus: No such file or directory"
        );
    }

    #[tokio::test]
    async fn a_missing_systemctl_fails() {
        let detail = check(Path::new("/nonexistent/systemctl"), &units(&["ok.service"]))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            detail.starts_with("cannot run /nonexistent/systemctl"),
            "{detail}"
        );
    }

    #[tokio::test]
    async fn a_hanging_systemctl_is_cut_off_by_the_timeout() {
        use super::super::{Check, CheckKind, run_phase};
        let dir = tempfile::tempdir().unwrap();
        let systemctl = script(&dir, "systemctl", FAKE_SYSTEMCTL);
        let check = Check {
            name: "slow".into(),
            kind: CheckKind::Systemd {
                units: units(&["slow.service"]),
                systemctl,
            },
            timeout: std::time::Duration::from_millis(300),
            retries: 1,
            interval: std::time::Duration::from_millis(100),
        };
        let r = run_phase(&[check], std::time::Duration::from_secs(10)).await;
        assert!(!r[0].passed);
        assert_eq!(r[0].attempts, 2);
        assert_eq!(r[0].detail, "systemctl timed out after 300ms (killed)");
        assert!(r[0].duration_ms < 1500, "{}", r[0].duration_ms);
    }
}
