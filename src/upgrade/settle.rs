//! Settles an attempt that a stop or crash interrupted mid-activation (SPEC §7): only once
//! `system.switch_lock` is free (switch-to-configuration may outlive the agent), then from what
//! the host runs: the target reached → post-checks decide; else `interrupted`.

use std::path::Path;
use std::time::Duration;

use crate::model::{InFlight, Outcome, Phase};
use crate::upgrade::Worker;
use crate::upgrade::attempt::{Attempting, Ended};

/// How often a held switch lock is looked at again.
const LOCK_POLL: Duration = Duration::from_millis(200);

pub async fn interrupted(worker: &Worker, flight: InFlight) -> Ended {
    let settings = &worker.settings;
    worker.progress.set_phase(Phase::Settling);
    tracing::warn!(path = %flight.path, "settling an attempt interrupted by a stop");
    let lock = &settings.system.switch_lock;
    let waited = tokio::select! {
        waited = switch_lock_free(lock, settings.activation_timeout) => waited,
        () = worker.shutdown.cancelled() => return Ended::Stop,
    };
    if let Err(held) = waited {
        tracing::warn!(lock = %lock.display(), held_for = %humantime::format_duration(held),
            "the switch lock is still held; settling from what the host runs now");
    }
    let system = &settings.system;
    let reached =
        |link: &Path| crate::host::resolved(link).as_deref() == Some(flight.path.as_str());
    let landed = if flight.live {
        reached(&system.current_system)
    } else {
        reached(&system.system_profile)
    };
    let mut attempt = Attempting::resume(worker, &flight);
    if landed {
        attempt.record.outcome = Outcome::Upgraded;
    } else {
        attempt.record.outcome = Outcome::Interrupted;
        attempt.record.error = Some(
            "interrupted: the agent stopped during activation and the system did not change".into(),
        );
    }
    attempt.after_activation().await
}

/// Waits until nobody holds the switch lock (a missing lock file is free); Err with the time
/// waited when it is still held after `bound`.
pub async fn switch_lock_free(path: &Path, bound: Duration) -> Result<(), Duration> {
    let started = tokio::time::Instant::now();
    loop {
        let path = path.to_owned();
        let held = tokio::task::spawn_blocking(move || is_held(&path))
            .await
            .unwrap_or(false);
        if !held {
            return Ok(());
        }
        if started.elapsed() >= bound {
            return Err(started.elapsed());
        }
        tokio::time::sleep(LOCK_POLL).await;
    }
}

/// Whether another process holds an exclusive flock on `path` (as switch-to-configuration does).
fn is_held(path: &Path) -> bool {
    let Ok(file) = std::fs::File::open(path) else {
        return false;
    };
    match file.try_lock() {
        Ok(()) => false,
        Err(std::fs::TryLockError::WouldBlock) => true,
        Err(std::fs::TryLockError::Error(_)) => false,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waits_while_another_process_holds_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let lock = dir.path().join("switch.lock");
        assert_eq!(switch_lock_free(&lock, Duration::ZERO).await, Ok(()));
        // flock(1) holds the lock in another process, as switch-to-configuration would.
        let mut holder = tokio::process::Command::new("flock")
            .arg(&lock)
            .args(["sleep", "0.6"])
            .spawn()
            .unwrap();
        while !is_held(&lock) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            switch_lock_free(&lock, Duration::from_millis(100))
                .await
                .is_err()
        );
        let started = std::time::Instant::now();
        assert_eq!(
            switch_lock_free(&lock, Duration::from_secs(10)).await,
            Ok(())
        );
        assert!(started.elapsed() >= Duration::from_millis(100));
        holder.wait().await.unwrap();
    }
}
