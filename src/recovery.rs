//! After an unreadable state file was moved aside the deployed build is unknown: no downgrade
//! until it is learned again from `current_system` and Hydra.
//!
//! The rule: the deployed build was a successful build of this job, so it is at most Hydra's
//! newest successful build (`/job/…/latest`). While it is unknown, an unforced request is let
//! through only for that newest build, or for a build whose out path is what `current_system`
//! runs now (the worker then records it as `current`, which makes it known). Anything else is
//! refused (409), so a captured old notification cannot move the host back in this window.
//! A forced manual request is the operator's word and passes. The guard ends as soon as any
//! attempt records a deployed build, or at start-up when `current_system` is Hydra's newest.

use std::path::PathBuf;
use std::sync::Arc;

use crate::hydra::{HydraClient, HydraError};
use crate::ledger::Ledger;
use crate::model::{Deployed, now};

/// Why a request was stopped while the deployed build is unknown.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecoveryError {
    #[error(
        "build {build} is older than Hydra's newest build {newest} and the deployed build is unknown \
         (the state file was unreadable and moved aside); use force to go back"
    )]
    Older { build: u64, newest: u64 },
    #[error(transparent)]
    Hydra(#[from] HydraError),
}

/// The recovery component: what it needs to learn the deployed build again.
#[derive(Clone)]
pub struct Recovery {
    pub hydra: HydraClient,
    pub ledger: Arc<Ledger>,
    pub current_system: PathBuf,
}

impl Recovery {
    /// Whether the guard applies now.
    pub fn active(&self) -> bool {
        let state = self.ledger.snapshot();
        state.deployed_unknown && state.deployed.is_none()
    }

    /// Lets an unforced request for `build` through only if it cannot be a downgrade.
    /// `newest` is Hydra's newest build when the caller asked for it already.
    pub async fn check(
        &self,
        build: u64,
        force: bool,
        newest: Option<u64>,
    ) -> Result<(), RecoveryError> {
        if force || !self.active() {
            return Ok(());
        }
        let newest = match newest {
            Some(n) => n,
            None => self.hydra.latest().await?,
        };
        if build >= newest {
            return Ok(());
        }
        let target = self.hydra.verify(build).await?;
        if self.running_path().as_deref() == Some(target.path.as_str()) {
            return Ok(());
        }
        Err(RecoveryError::Older { build, newest })
    }

    /// At start-up: if the host runs Hydra's newest build, that is the deployed build.
    pub async fn learn(self) {
        if !self.active() {
            return;
        }
        let learned = async {
            let newest = self.hydra.latest().await?;
            let target = self.hydra.verify(newest).await?;
            Ok::<_, HydraError>(
                (self.running_path().as_deref() == Some(target.path.as_str())).then_some(target),
            )
        }
        .await;
        match learned {
            Ok(Some(target)) => {
                let deployed = Deployed {
                    build: target.build,
                    path: target.path.clone(),
                    at: now(),
                };
                match self.ledger.learn_deployed(deployed).await {
                    Ok(()) => tracing::info!(build = target.build, path = %target.path,
                        "deployed build learned: current_system is Hydra's newest build"),
                    Err(e) => tracing::error!(error = %e, "cannot save the learned deployed build"),
                }
            }
            Ok(None) => tracing::warn!(
                "deployed build unknown and current_system is not Hydra's newest build: \
                 until one is deployed, only the newest build is accepted without force"
            ),
            Err(e) => tracing::warn!(error = %e,
                "deployed build unknown and Hydra cannot tell now: each request asks it again"),
        }
    }

    fn running_path(&self) -> Option<String> {
        crate::host::resolved(&self.current_system)
    }
}
