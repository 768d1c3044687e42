//! The composition root: builds each component from `Settings` with exactly the parts it needs,
//! and runs server, worker, schedule and hooks under one shutdown token. Nothing imports it.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Activation, HydraCredentials, Settings};
use crate::hooks::Hooks;
use crate::http::{self, Api};
use crate::hydra::{BasicAuth, HydraClient, HydraError, JobRef};
use crate::intake::RequestIntake;
use crate::ledger::{Ledger, LedgerError, Loaded};
use crate::metrics::Metrics;
use crate::model::Phase;
use crate::progress::Progress;
use crate::recovery::Recovery;
use crate::replay::ReplayGuard;
use crate::schedule::Schedule;
use crate::signature::{KeyError, Keys};
use crate::status::StatusView;
use crate::upgrade::{Worker, self_update};

/// After a shutdown signal, how long the worker and hooks get to stop what they run: more than
/// the runner's SIGTERM-to-SIGKILL grace (5 s), so a process group is never left half-killed,
/// and within SPEC §8's 10 s.
const STOP_GRACE: Duration = Duration::from_secs(8);
/// How long open requests get to finish after the worker stopped.
const SERVER_GRACE: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Keys(#[from] KeyError),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error(transparent)]
    Hydra(#[from] HydraError),
    #[error("cannot listen on {listen}: {source}")]
    Bind {
        listen: String,
        source: std::io::Error,
    },
    #[error("HTTP server failed: {0}")]
    Serve(std::io::Error),
    #[error("{0}")]
    Credentials(String),
}

/// A started agent: its address, its status, and the tasks to wait for.
pub struct Running {
    pub address: String,
    server: JoinHandle<std::io::Result<()>>,
    worker: JoinHandle<()>,
    background: TaskTracker,
}

/// Builds the parts, binds the listener and starts everything; returns once the listener accepts.
pub async fn start(settings: Settings, shutdown: CancellationToken) -> Result<Running, AppError> {
    crate::systemd_notify::init();
    let settings = Arc::new(settings);
    let keys = match &settings.secret_file {
        Some(path) => Some(Keys::load(path)?),
        None => {
            tracing::warn!(
                "no secret_file: every POST /v1/upgrade answers 401; only the schedule upgrades"
            );
            None
        }
    };
    let metrics = Arc::new(Metrics::new());
    let hydra = HydraClient::new(JobRef {
        instance: settings.hydra_instance.clone(),
        project: settings.hydra_project.clone(),
        jobset: settings.hydra_jobset.clone(),
        job: settings.hydra_job.clone(),
        timeout: settings.hydra_timeout,
        flake: settings.activation == Activation::Flake,
        basic_auth: match &settings.hydra_credentials_file {
            Some(path) => {
                let c = HydraCredentials::load(path).map_err(AppError::Credentials)?;
                Some(BasicAuth {
                    user: c.user,
                    password: c.password,
                })
            }
            None => None,
        },
    })?
    .observed_by(Arc::new(metrics.hydra.clone()));
    let (ledger, loaded) = Ledger::open(&settings.state_dir)?;
    log_loaded(&settings, loaded);
    let ledger = Arc::new(ledger);
    let progress = Arc::new(Progress::default());
    let background = TaskTracker::new();

    let recovery = Recovery {
        hydra: hydra.clone(),
        ledger: ledger.clone(),
        current_system: settings.system.current_system.clone(),
    };
    background.spawn(recovery.clone().learn());
    let intake = Arc::new(RequestIntake {
        hydra,
        ledger: ledger.clone(),
        progress: progress.clone(),
        recovery,
    });
    let hooks = Hooks::start(
        settings.hooks.clone(),
        settings.host.clone(),
        settings.hydra_instance.clone(),
        metrics.hook_counter(),
        &background,
        shutdown.clone(),
    );
    let status = Arc::new(StatusView {
        settings: settings.clone(),
        ledger: ledger.clone(),
        progress: progress.clone(),
    });
    let api = Arc::new(Api {
        keys,
        signature_tolerance: settings.signature_tolerance,
        replay: ReplayGuard::open(
            &settings.state_dir.join("seen-ids.json"),
            settings.signature_tolerance.as_secs(),
            jiff::Timestamp::now().as_second(),
        ),
        intake: intake.clone(),
        metrics: metrics.clone(),
        status,
    });
    let schedule = Schedule {
        dates: settings.dates.clone(),
        randomized_delay: settings.randomized_delay,
        persistent: settings.persistent,
        intake,
        ledger: ledger.clone(),
        progress: progress.clone(),
    };
    if let Some(running) = self_update::Running::this_process() {
        let (ledger, progress) = (ledger.clone(), progress.clone());
        let idle = move || {
            let state = ledger.snapshot();
            progress.live().phase == Phase::Idle
                && state.pending.is_none()
                && state.running.is_none()
                && state.in_flight.is_none()
        };
        background.spawn(self_update::watch_foreign_switch(
            settings.system.unit.clone(),
            settings.system.current_system.clone(),
            running,
            self_update::WATCH_EVERY,
            idle,
            shutdown.clone(),
        ));
    }
    let worker = Worker {
        settings: settings.clone(),
        ledger,
        progress,
        metrics,
        hooks,
        conditions: {
            // The wave and the push stagger come last: the stagger counts from when all else opened.
            let mut conditions = safety_conditions(&settings, &shutdown);
            conditions.extend(crate::upgrade::wave::conditions(&settings));
            conditions
        },
        shutdown: shutdown.clone(),
    };

    let listener = http::listen::bind(&settings.listen)
        .await
        .map_err(|source| AppError::Bind {
            listen: settings.listen.to_string(),
            source,
        })?;
    let address = listener.describe();
    let server = tokio::spawn(http::serve(listener, http::router(api), shutdown.clone()));
    let worker = tokio::spawn(worker.run());
    background.spawn(schedule.run(shutdown.clone()));
    tracing::info!(
        listen = %address, host = %settings.host,
        job = %format!("{}:{}:{}", settings.hydra_project, settings.hydra_jobset, settings.hydra_job),
        dry_run = settings.dry_run, "agent started"
    );
    crate::systemd_notify::ready(&address);
    Ok(Running {
        address,
        server,
        worker,
        background,
    })
}

/// Issue 14's conditions of the wait step: the activation window, then each gate in order.
fn safety_conditions(
    settings: &Arc<Settings>,
    shutdown: &CancellationToken,
) -> Vec<Box<dyn crate::upgrade::wait::Condition>> {
    let mut conditions: Vec<Box<dyn crate::upgrade::wait::Condition>> = Vec::new();
    if let Some(window) = settings.activation_window {
        conditions.push(Box::new(crate::upgrade::window::ActivationWindow {
            settings: settings.clone(),
            window,
            zone: jiff::tz::TimeZone::system(),
        }));
    }
    for gate in &settings.gates {
        conditions.push(Box::new(crate::upgrade::gates::Gate {
            config: gate.clone(),
            system: settings.system.clone(),
            dry_run: settings.dry_run,
            cancel: shutdown.child_token(),
        }));
    }
    conditions
}

fn log_loaded(settings: &Settings, loaded: Loaded) {
    match loaded {
        Loaded::Fresh => {
            tracing::info!(state_dir = %settings.state_dir.display(), "no state yet")
        }
        Loaded::Existing => {}
        Loaded::MovedAside { to, reason } => tracing::error!(
            moved_to = %to.display(), reason = %reason,
            "state file unreadable; moved aside: deployed build unknown, no downgrade until it is learned"
        ),
    }
}

impl Running {
    /// Waits until the shutdown token fires (or the server fails), then stops the parts: what
    /// they run is killed with its process group, all within `STOP_GRACE + SERVER_GRACE`.
    pub async fn wait(self, shutdown: CancellationToken) -> Result<(), AppError> {
        let Running {
            mut server,
            worker,
            background,
            ..
        } = self;
        let ended = tokio::select! {
            result = &mut server => Some(result),
            () = shutdown.cancelled() => None,
        };
        // A signal, the worker after replacing the agent's own unit, or the server failing.
        shutdown.cancel();
        crate::systemd_notify::stopping();
        background.close();
        let stopped = async {
            let _ = worker.await;
            background.wait().await;
        };
        if tokio::time::timeout(STOP_GRACE, stopped).await.is_err() {
            tracing::warn!("the worker or a hook did not stop in time; exiting anyway");
        }
        match ended {
            Some(result) => flatten(result),
            None => match tokio::time::timeout(SERVER_GRACE, server).await {
                Ok(result) => flatten(result),
                Err(_) => Ok(()),
            },
        }
    }
}

fn flatten(result: Result<std::io::Result<()>, tokio::task::JoinError>) -> Result<(), AppError> {
    match result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(AppError::Serve(e)),
        Err(e) => Err(AppError::Serve(std::io::Error::other(e))),
    }
}

/// `serve`: runs until SIGTERM or SIGINT (exit 0); SIGHUP is ignored (SPEC §8).
pub async fn serve(settings: Settings) -> Result<(), AppError> {
    let shutdown = CancellationToken::new();
    let running = start(settings, shutdown.clone()).await?;
    let signal = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        signal.cancel();
    });
    running.wait(shutdown).await
}

/// SIGTERM or SIGINT; SIGHUP is received and ignored so it cannot kill the agent mid-activation.
async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    let mut hup = signal(SignalKind::hangup()).ok();
    loop {
        tokio::select! {
            _ = term.recv() => return,
            _ = int.recv() => return,
            Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                tracing::info!("SIGHUP ignored: stop with SIGTERM, reconfigure by restarting the unit");
            }
        }
    }
}
