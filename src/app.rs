//! The composition root: builds the agent's parts from `Settings` and runs server, worker and
//! schedule under one shutdown token.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::http;
use crate::hydra::{HydraClient, HydraError};
use crate::ledger::{Loaded, StateError, StateStore};
use crate::metrics::Metrics;
use crate::queue::Queue;
use crate::replay::ReplayGuard;
use crate::signature::{KeyError, Keys};
use crate::upgrade::{self, PhaseCell};

/// How long `serve` waits for open requests after a shutdown signal before it exits anyway.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Keys(#[from] KeyError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Hydra(#[from] HydraError),
    #[error("cannot listen on {listen}: {source}")]
    Bind {
        listen: String,
        source: std::io::Error,
    },
    #[error("HTTP server failed: {0}")]
    Serve(std::io::Error),
}

/// Everything the server, the worker and the schedule share.
pub struct Agent {
    pub settings: Settings,
    pub keys: Option<Keys>,
    pub hydra: HydraClient,
    pub queue: Queue,
    pub store: StateStore,
    pub phase: PhaseCell,
    /// Upgrade requests being verified against Hydra right now.
    pub verifying: AtomicUsize,
    pub replay: ReplayGuard,
    pub metrics: Metrics,
    /// Work that outlives an attempt (its hooks); waited for at shutdown.
    pub background: tokio_util::task::TaskTracker,
    next_poll: Mutex<Option<String>>,
}

impl Agent {
    pub fn new(settings: Settings) -> Result<Agent, AppError> {
        let keys = match &settings.secret_file {
            Some(path) => Some(Keys::load(path)?),
            None => None,
        };
        let metrics = Metrics::new();
        let hydra = HydraClient::new(&settings)?.observed_by(Arc::new(metrics.hydra.clone()));
        let (store, loaded) = StateStore::open(&settings.state_dir)?;
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
        let state = store.snapshot();
        let queue = Queue::new(
            state.deployed.as_ref().map(|d| d.build),
            state.rolled_back.iter().copied(),
        );
        Ok(Agent {
            replay: ReplayGuard::open(
                &settings.state_dir.join("seen-ids.json"),
                settings.signature_tolerance.as_secs(),
                jiff::Timestamp::now().as_second(),
            ),
            keys,
            hydra,
            queue,
            store,
            phase: PhaseCell::default(),
            verifying: AtomicUsize::new(0),
            metrics,
            background: tokio_util::task::TaskTracker::new(),
            next_poll: Mutex::new(None),
            settings,
        })
    }

    /// The next scheduled poll as RFC 3339 with offset, if any.
    pub fn next_poll(&self) -> Option<String> {
        self.next_poll
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn set_next_poll(&self, next: Option<String>) {
        *self.next_poll.lock().unwrap_or_else(|p| p.into_inner()) = next;
    }
}

/// A started agent: its address and the tasks to wait for.
pub struct Running {
    pub agent: Arc<Agent>,
    pub address: String,
    server: JoinHandle<std::io::Result<()>>,
    worker: JoinHandle<()>,
}

/// Binds the listener and starts server and worker; returns once the listener accepts.
pub async fn start(settings: Settings, shutdown: CancellationToken) -> Result<Running, AppError> {
    crate::systemd_notify::init();
    let agent = Arc::new(Agent::new(settings)?);
    if agent.keys.is_none() {
        tracing::warn!(
            "no secret_file: every POST /v1/upgrade answers 401; only the schedule upgrades"
        );
    }
    upgrade::settle_interrupted(&agent);
    tokio::spawn(crate::recovery::learn(agent.clone()));
    let listener = http::listen::bind(&agent.settings.listen)
        .await
        .map_err(|source| AppError::Bind {
            listen: agent.settings.listen.to_string(),
            source,
        })?;
    let address = listener.describe();
    let server = tokio::spawn(http::serve(
        listener,
        http::router(agent.clone()),
        shutdown.clone(),
    ));
    let worker = tokio::spawn(upgrade::run_worker(agent.clone(), shutdown.clone()));
    tokio::spawn(crate::schedule::run_schedule(
        agent.clone(),
        shutdown.clone(),
    ));
    tracing::info!(
        listen = %address, host = %agent.settings.host,
        job = %format!("{}:{}:{}", agent.settings.hydra_project, agent.settings.hydra_jobset, agent.settings.hydra_job),
        dry_run = agent.settings.dry_run, "agent started"
    );
    crate::systemd_notify::ready(&address);
    Ok(Running {
        agent,
        address,
        server,
        worker,
    })
}

impl Running {
    /// Waits until the shutdown token fires and the parts stop (bounded by a grace period).
    pub async fn wait(self, shutdown: CancellationToken) -> Result<(), AppError> {
        let Running {
            agent,
            server,
            worker,
            ..
        } = self;
        let mut server = server;
        let ended = tokio::select! {
            result = &mut server => Some(result),
            () = shutdown.cancelled() => None,
        };
        // A signal, the worker after replacing the agent's own unit, or the server failing.
        shutdown.cancel();
        crate::systemd_notify::stopping();
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, worker).await;
        // Hooks of the last attempt finish (each is bounded by hooks.timeout) before the exit.
        agent.background.close();
        let hooks_bound = agent.settings.hooks.timeout.saturating_mul(4) + SHUTDOWN_GRACE;
        if tokio::time::timeout(hooks_bound, agent.background.wait())
            .await
            .is_err()
        {
            tracing::warn!("hooks still running at exit were stopped");
        }
        match ended {
            Some(result) => flatten(result),
            None => match tokio::time::timeout(SHUTDOWN_GRACE, server).await {
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

/// `serve`: runs until SIGTERM or SIGINT.
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

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
