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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::hydra::JobRef;
    use crate::hydra::sim::{Fault, HydraSim};
    use crate::model::{Attempt, Outcome, Reboot, StorePath};
    use std::time::Duration;

    struct Setup {
        intake: RequestIntake,
        ledger: Arc<Ledger>,
        sim: HydraSim,
        _dir: tempfile::TempDir,
    }

    async fn setup() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let sim = HydraSim::start().await.unwrap();
        let hydra = HydraClient::new(JobRef {
            instance: sim.url(),
            project: "p".into(),
            jobset: "j".into(),
            job: "web1".into(),
            timeout: Duration::from_secs(2),
            flake: false,
        })
        .unwrap();
        let ledger = Arc::new(Ledger::open(dir.path()).unwrap().0);
        let recovery = Recovery {
            hydra: hydra.clone(),
            ledger: ledger.clone(),
            current_system: dir.path().join("current-system"),
        };
        let intake = RequestIntake {
            hydra,
            ledger: ledger.clone(),
            progress: Arc::new(Progress::default()),
            recovery,
        };
        Setup {
            intake,
            ledger,
            sim,
            _dir: dir,
        }
    }

    fn request(build: Option<u64>, force: bool) -> UpgradeRequest {
        UpgradeRequest {
            build,
            force,
            source: Source::Manual,
        }
    }

    async fn deploy(ledger: &Ledger, build: u64, path: &str) {
        ledger
            .finish(Attempt {
                build,
                path: Some(StorePath::parse(path).unwrap()),
                source: Source::Hydra,
                outcome: Outcome::Upgraded,
                reboot: Reboot::None,
                error: None,
                started_at: now(),
                finished_at: now(),
                checks: vec![],
            })
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn queues_what_hydra_vouches_for_and_nothing_twice() {
        let s = setup().await;
        let path = s.sim.succeed(7, "p", "j", "web1", 1);
        match s.intake.intake(request(Some(7), false)).await {
            Intake::Queued(target) => assert_eq!(target.path.as_str(), path),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            s.intake.intake(request(Some(7), false)).await,
            Intake::Current { build: 7, .. }
        ));
        // The newest build, asked of Hydra's /latest.
        s.sim.succeed(9, "p", "j", "web1", 2);
        assert!(
            matches!(s.intake.intake(request(None, false)).await, Intake::Queued(t) if t.build == 9)
        );
        assert_eq!(s.ledger.snapshot().pending.unwrap().target.build, 9);
    }

    #[tokio::test]
    async fn refuses_going_back_and_asks_hydra_nothing_then() {
        let s = setup().await;
        let path = s.sim.succeed(10, "p", "j", "web1", 1);
        s.sim.succeed(8, "p", "j", "web1", 1);
        deploy(&s.ledger, 10, &path).await;
        let asked = s.sim.requests().len();
        assert!(matches!(
            s.intake.intake(request(Some(8), false)).await,
            Intake::Refused(reason) if reason.contains("older than deployed build 10")
        ));
        assert_eq!(s.sim.requests().len(), asked, "refused before asking Hydra");
        assert!(matches!(
            s.intake.intake(request(Some(8), true)).await,
            Intake::Queued(_)
        ));
    }

    #[tokio::test]
    async fn hydra_says_no_or_cannot_answer() {
        let s = setup().await;
        s.sim.succeed(5, "p", "j", "db1", 1);
        assert!(matches!(
            s.intake.intake(request(Some(5), false)).await,
            Intake::Rejected(reason) if reason.contains("not p:j:web1")
        ));
        s.sim.set_fault(Some(Fault::Status(502)));
        assert!(matches!(
            s.intake.intake(request(Some(6), false)).await,
            Intake::Unavailable(_)
        ));
        assert!(s.ledger.snapshot().pending.is_none());
    }
}
