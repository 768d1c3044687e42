//! Operator hooks: commands run after an attempt with it described in `NIXOS_HYDRA_UPGRADE_*`
//! variables, bounded by a timeout, their failure logged and never failing the attempt.

use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::app::Agent;
use crate::config::Hook;
use crate::metrics::HookCounter;
use crate::model::{Attempt, Reboot};
use crate::upgrade::runner::{CommandRunner, RunError};

/// A hook to run: which, its argv, its environment.
type HookRun = (Hook, Vec<String>, Vec<(String, String)>);

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
    let reboot = match attempt.reboot {
        Reboot::None => "none",
        Reboot::Scheduled => "scheduled",
        Reboot::Deferred => "deferred",
    };
    let source = serde_json::to_value(attempt.source)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
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
        ("REBOOT", reboot.to_owned()),
        ("SOURCE", source),
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

/// Starts the hooks `attempt` fires, in the background, one after the other.
pub fn after_attempt(agent: &Agent, attempt: &Attempt) {
    let config = &agent.settings.hooks;
    let hooks = config.fired(attempt);
    if hooks.is_empty() {
        return;
    }
    if tokio::runtime::Handle::try_current().is_err() {
        return;
    }
    let jobs: Vec<HookRun> = hooks
        .into_iter()
        .map(|h| {
            let url = agent.settings.build_url(attempt.build);
            let env = environment(h, attempt, &agent.settings.host, &url);
            (h, config.argv(h).to_vec(), env)
        })
        .collect();
    let runner = CommandRunner {
        timeout: config.timeout,
        dry_run: false,
        cancel: CancellationToken::new(),
    };
    let counter = agent.metrics.hook_counter();
    let span = tracing::info_span!("hooks", build = attempt.build);
    agent
        .background
        .spawn(run_all(runner, jobs, counter).instrument(span));
}

async fn run_all(runner: CommandRunner, jobs: Vec<HookRun>, counter: HookCounter) {
    for (hook, argv, env) in jobs {
        tracing::info!(hook = hook.key(), "running hook");
        let result = match runner.run_with_env(&argv, &env).await {
            Ok(()) => "ok",
            Err(RunError::Timeout { .. }) => "timeout",
            Err(_) => "failed",
        };
        if result != "ok" {
            tracing::warn!(
                hook = hook.key(),
                result,
                "hook did not succeed; the attempt stands"
            );
        }
        counter.inc(hook.key(), result);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::{HookError, HooksConfig};
    use crate::model::Outcome;
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
