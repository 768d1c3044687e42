//! Turns an authenticated upgrade request into a queued job: the no-downgrade and idempotence
//! rules, then Hydra's word on the build, then the ledger's queue.

use std::sync::Arc;

use crate::hydra::{HydraClient, HydraError};
use crate::ledger::Ledger;
use crate::model::{Job, Source, Target, now};
use crate::progress::Progress;
use crate::queue::Decision;
use crate::recovery::{Recovery, RecoveryError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpgradeRequest {
    /// None: the newest successful build of the configured job.
    pub build: Option<u64>,
    pub force: bool,
    pub source: Source,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Intake {
    Queued(Target),
    Current { build: u64, reason: String },
    Refused(String),
    Rejected(String),
    Unavailable(String),
}

impl std::fmt::Display for Intake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Intake::Queued(target) => write!(f, "queued build {}", target.build),
            Intake::Current { reason, .. } => write!(f, "up to date: {reason}"),
            Intake::Refused(reason) => write!(f, "refused: {reason}"),
            Intake::Rejected(reason) => write!(f, "rejected by hydra: {reason}"),
            Intake::Unavailable(reason) => write!(f, "{reason}"),
        }
    }
}

/// The intake component: what it needs to judge a request.
pub struct RequestIntake {
    pub hydra: HydraClient,
    pub ledger: Arc<Ledger>,
    pub progress: Arc<Progress>,
    pub recovery: Recovery,
}

impl RequestIntake {
    pub async fn intake(&self, request: UpgradeRequest) -> Intake {
        let _verifying = self.progress.verifying();
        let build = match request.build {
            Some(build) => build,
            None => match self.hydra.latest().await {
                Ok(build) => build,
                Err(e) => return from_hydra(e),
            },
        };
        let newest = request.build.is_none().then_some(build);
        match self.recovery.check(build, request.force, newest).await {
            Ok(()) => {}
            Err(RecoveryError::Hydra(e)) => return from_hydra(e),
            Err(e) => return Intake::Refused(e.to_string()),
        }
        match self.ledger.decide(build, request.force) {
            Decision::Proceed => {}
            Decision::Current(reason) => return Intake::Current { build, reason },
            Decision::Refused(reason) => return Intake::Refused(reason),
        }
        let target = match self.hydra.verify(build).await {
            Ok(target) => target,
            Err(e) => return from_hydra(e),
        };
        let job = Job {
            target: target.clone(),
            source: request.source,
            force: request.force,
            received_at: now(),
        };
        match self.ledger.offer(job).await {
            Decision::Proceed => {
                tracing::info!(build, path = %target.path, source = %request.source, "queued");
                Intake::Queued(target)
            }
            Decision::Current(reason) => Intake::Current { build, reason },
            Decision::Refused(reason) => Intake::Refused(reason),
        }
    }
}

fn from_hydra(e: HydraError) -> Intake {
    match e {
        HydraError::Unavailable(_) => Intake::Unavailable(e.to_string()),
        HydraError::Rejected(reason) => Intake::Rejected(reason),
    }
}
