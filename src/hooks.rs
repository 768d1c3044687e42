//! Operator hooks: commands run after an attempt with it described in `NIXOS_HYDRA_UPGRADE_*`
//! variables, bounded by a timeout, their failure logged and never failing the attempt.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::config::{Hook, HooksConfig};
use crate::exec::{CommandRunner, RunError};
use crate::metrics::HookCounter;
use crate::model::Attempt;

/// The attempt as `NIXOS_HYDRA_UPGRADE_*` variables.
pub fn environment(
    hook: Hook,
    attempt: &Attempt,
    host: &str,
    build_url: &str,
) -> Vec<(String, String)> {
    let failed: Vec<&str> = attempt
        .checks
        .iter()
        .filter(|c| !c.passed)
        .map(|c| c.name.as_str())
        .collect();
    let duration = (attempt.finished_at.as_second() - attempt.started_at.as_second()).max(0);
    [
        ("EVENT", hook.event().to_owned()),
        ("HOST", host.to_owned()),
        ("BUILD", attempt.build.to_string()),
        (
            "PATH",
            attempt
                .path
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
        ),
        ("OUTCOME", attempt.outcome.as_str().to_owned()),
        ("ERROR", attempt.error.clone().unwrap_or_default()),
        ("REBOOT", attempt.reboot.as_str().to_owned()),
        ("SOURCE", attempt.source.as_str().to_owned()),
        ("HYDRA_URL", build_url.to_owned()),
        ("STARTED_AT", attempt.started_at.to_string()),
        ("FINISHED_AT", attempt.finished_at.to_string()),
        ("DURATION_SECONDS", duration.to_string()),
        ("FAILED_CHECKS", failed.join(",")),
    ]
    .into_iter()
    .map(|(k, v)| (format!("NIXOS_HYDRA_UPGRADE_{k}"), v))
    .collect()
}

/// Hooks waiting behind the running one; when full, the oldest is dropped (with a log line), so
/// a burst of failing attempts cannot pile up commands.
const QUEUE_LEN: usize = 4;

/// A hook to run: which, for which build, its argv and environment.
struct HookRun {
    hook: Hook,
    build: u64,
    argv: Vec<String>,
    env: Vec<(String, String)>,
}

/// The hooks component: queues the hooks a settled attempt fires and runs them one at a time.
#[derive(Clone)]
pub struct Hooks {
    config: HooksConfig,
    host: String,
    hydra_instance: String,
    queue: Arc<Mutex<VecDeque<HookRun>>>,
    wake: Arc<Notify>,
    /// Hooks queued or running, for `drain`.
    outstanding: Arc<tokio::sync::watch::Sender<usize>>,
}

impl Hooks {
    /// Starts the runner on `tracker`; it stops (killing a running hook) when `shutdown` fires.
    pub fn start(
        config: HooksConfig,
        host: String,
        hydra_instance: String,
        counter: HookCounter,
        tracker: &TaskTracker,
        shutdown: CancellationToken,
    ) -> Hooks {
        let hooks = Hooks {
            config,
            host,
            hydra_instance,
            queue: Arc::default(),
            wake: Arc::default(),
            outstanding: Arc::new(tokio::sync::watch::Sender::new(0)),
        };
        tracker.spawn(hooks.clone().run(counter, shutdown));
        hooks
    }

    /// Queues the hooks `attempt` fires (a settled outcome).
    pub fn after_attempt(&self, attempt: &Attempt) {
        let fired = self.config.fired(attempt);
        if fired.is_empty() {
            return;
        }
        let url = format!("{}/build/{}", self.hydra_instance, attempt.build);
        let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        for hook in fired {
            if queue.len() >= QUEUE_LEN
                && let Some(dropped) = queue.pop_front()
            {
                tracing::warn!(
                    hook = dropped.hook.key(),
                    dropped_build = dropped.build,
                    "hook queue full: the oldest queued hook is dropped"
                );
                self.outstanding.send_modify(|n| *n = n.saturating_sub(1));
            }
            self.outstanding.send_modify(|n| *n += 1);
            queue.push_back(HookRun {
                hook,
                build: attempt.build,
                argv: self.config.argv(hook).to_vec(),
                env: environment(hook, attempt, &self.host, &url),
            });
        }
        drop(queue);
        self.wake.notify_one();
    }

    /// Waits (at most `bound`) until every queued hook has run: before the agent exits on its
    /// own (its unit was replaced), so the last attempt's hooks are not cut short.
    pub async fn drain(&self, bound: std::time::Duration) {
        let mut outstanding = self.outstanding.subscribe();
        let drained = outstanding.wait_for(|n| *n == 0);
        if tokio::time::timeout(bound, drained).await.is_err() {
            tracing::warn!("hooks still running; exiting anyway");
        }
    }

    async fn run(self, counter: HookCounter, shutdown: CancellationToken) {
        let runner = CommandRunner {
            timeout: self.config.timeout,
            dry_run: false,
            cancel: shutdown.clone(),
        };
        loop {
            let next = self
                .queue
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .pop_front();
            let Some(run) = next else {
                tokio::select! {
                    () = self.wake.notified() => continue,
                    () = shutdown.cancelled() => return,
                }
            };
            let span = tracing::info_span!("hook", build = run.build);
            let result = run_one(&runner, &run).instrument(span).await;
            counter.inc(run.hook.key(), result);
            self.outstanding.send_modify(|n| *n = n.saturating_sub(1));
            if shutdown.is_cancelled() {
                return;
            }
        }
    }
}

async fn run_one(runner: &CommandRunner, run: &HookRun) -> &'static str {
    tracing::info!(hook = run.hook.key(), "running hook");
    let result = match runner.run_with_env(&run.argv, &run.env).await {
        Ok(()) => "ok",
        Err(RunError::Timeout { .. }) => "timeout",
        Err(_) => "failed",
    };
    if result != "ok" {
        tracing::warn!(
            hook = run.hook.key(),
            result,
            "hook did not succeed; the attempt stands"
        );
    }
    result
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::HookError;
    use crate::model::{Outcome, Reboot};
    use crate::model::{Source, now};
    use std::time::Duration;

    fn attempt(outcome: Outcome, reboot: Reboot) -> Attempt {
        Attempt {
            build: 7,
            path: Some(
                crate::model::StorePath::parse("/nix/store/00000000000000000000000000000000-x")
                    .unwrap(),
            ),
            source: Source::Manual,
            outcome,
            reboot,
            error: None,
            started_at: now(),
            finished_at: now(),
            checks: vec![],
        }
    }

    #[test]
    fn which_hooks_fire() {
        let argv = vec!["true".to_owned()];
        let all = HooksConfig {
            on_success: argv.clone(),
            on_failure: argv.clone(),
            on_rollback: argv.clone(),
            on_reboot_needed: argv,
            ..HooksConfig::default()
        };
        let only_failure = HooksConfig {
            on_failure: vec!["true".into()],
            ..HooksConfig::default()
        };
        let cases = [
            (Outcome::Upgraded, Reboot::None, vec![Hook::Success], vec![]),
            (
                Outcome::Upgraded,
                Reboot::Deferred,
                vec![Hook::Success, Hook::RebootNeeded],
                vec![],
            ),
            (Outcome::Current, Reboot::None, vec![], vec![]),
            (
                Outcome::Failed,
                Reboot::None,
                vec![Hook::Failure],
                vec![Hook::Failure],
            ),
            (
                Outcome::Unhealthy,
                Reboot::None,
                vec![Hook::Failure],
                vec![Hook::Failure],
            ),
            (
                Outcome::RolledBack,
                Reboot::None,
                vec![Hook::Rollback],
                vec![Hook::Failure],
            ),
        ];
        for (outcome, reboot, with_all, with_failure) in cases {
            let a = attempt(outcome, reboot);
            assert_eq!(all.fired(&a), with_all, "{outcome:?}");
            assert_eq!(only_failure.fired(&a), with_failure, "{outcome:?}");
        }
    }

    #[test]
    fn environment_describes_the_attempt() {
        let mut a = attempt(Outcome::Failed, Reboot::None);
        a.error = Some("nixos-rebuild: exited with status 1".into());
        let env = environment(Hook::Failure, &a, "web1", "https://hydra/build/7");
        let get = |k: &str| {
            env.iter()
                .find(|(name, _)| name == &format!("NIXOS_HYDRA_UPGRADE_{k}"))
                .map(|(_, v)| v.as_str())
                .unwrap()
        };
        assert_eq!(get("EVENT"), "failure");
        assert_eq!(get("BUILD"), "7");
        assert_eq!(get("OUTCOME"), "failed");
        assert_eq!(get("SOURCE"), "manual");
        assert_eq!(get("HYDRA_URL"), "https://hydra/build/7");
        assert!(get("ERROR").contains("status 1"));
    }

    #[test]
    fn validation() {
        let bad = HooksConfig {
            on_failure: vec![String::new()],
            ..HooksConfig::default()
        };
        assert_eq!(bad.validate(), Err(HookError::NoProgram("on_failure")));
        let zero = HooksConfig {
            timeout: Duration::ZERO,
            ..HooksConfig::default()
        };
        assert_eq!(zero.validate(), Err(HookError::ZeroTimeout));
        assert_eq!(HooksConfig::default().validate(), Ok(()));
    }
}
