//! Turns an authenticated upgrade request into a queued job: the no-downgrade and idempotence
//! rules, then Hydra's word on the build.

use std::sync::atomic::Ordering;

use crate::app::Agent;
use crate::hydra::HydraError;
use crate::model::{Job, Source, Target, now};
use crate::queue::Decision;

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

/// Counts a verification in flight for the `verifying` phase while it lives.
struct Verifying<'a>(&'a Agent);

impl<'a> Verifying<'a> {
    fn start(agent: &'a Agent) -> Self {
        agent.verifying.fetch_add(1, Ordering::SeqCst);
        Verifying(agent)
    }
}

impl Drop for Verifying<'_> {
    fn drop(&mut self) {
        self.0.verifying.fetch_sub(1, Ordering::SeqCst);
    }
}

pub async fn intake(agent: &Agent, request: UpgradeRequest) -> Intake {
    let _verifying = Verifying::start(agent);
    let build = match request.build {
        Some(build) => build,
        None => match agent.hydra.latest().await {
            Ok(build) => build,
            Err(e) => return from_hydra(e),
        },
    };
    let newest = request.build.is_none().then_some(build);
    match crate::recovery::check(agent, build, request.force, newest).await {
        Ok(()) => {}
        Err(crate::recovery::RecoveryError::Hydra(e)) => return from_hydra(e),
        Err(e) => return Intake::Refused(e.to_string()),
    }
    match agent.queue.decide(build, request.force) {
        Decision::Proceed => {}
        Decision::Current(reason) => return Intake::Current { build, reason },
        Decision::Refused(reason) => return Intake::Refused(reason),
    }
    let target = match agent.hydra.verify(build).await {
        Ok(target) => target,
        Err(e) => return from_hydra(e),
    };
    let job = Job {
        target: target.clone(),
        source: request.source,
        force: request.force,
        received_at: now(),
    };
    match agent.queue.offer(job) {
        Decision::Proceed => {
            tracing::info!(build, path = %target.path, source = %request.source, "queued");
            Intake::Queued(target)
        }
        Decision::Current(reason) => Intake::Current { build, reason },
        Decision::Refused(reason) => Intake::Refused(reason),
    }
}

fn from_hydra(e: HydraError) -> Intake {
    match e {
        HydraError::Unavailable(_) => Intake::Unavailable(e.to_string()),
        HydraError::Rejected(reason) => Intake::Rejected(reason),
    }
}
