//! The queue's rules (SPEC §6): one slot, newest build wins, nothing goes backwards unless forced.
//! Pure: the ledger holds the jobs and asks these rules under its lock.

/// What to do with a request for a build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Worth verifying (before Hydra) or queued (after).
    Proceed,
    /// Nothing to do: deployed, running, queued, or superseded by a newer one.
    Current(String),
    /// Would move the host backwards.
    Refused(String),
}

/// Where the builds stand, as the ledger knows it.
#[derive(Debug, Clone, Copy)]
pub struct Standing<'a> {
    pub deployed: Option<u64>,
    /// Taken by the worker (or in flight since before a restart).
    pub running: Option<u64>,
    pub pending: Option<u64>,
    pub rolled_back: &'a [u64],
}

pub fn decide(standing: &Standing<'_>, build: u64, force: bool) -> Decision {
    let Standing {
        deployed,
        running,
        pending,
        rolled_back,
    } = *standing;
    if running == Some(build) {
        return Decision::Current(format!("build {build} is being deployed now"));
    }
    if pending == Some(build) {
        return Decision::Current(format!("build {build} is already queued"));
    }
    if force {
        return Decision::Proceed;
    }
    match deployed {
        Some(d) if d == build => {
            return Decision::Current(format!("build {build} is already deployed"));
        }
        Some(d) if d > build => {
            return Decision::Refused(format!(
                "build {build} is older than deployed build {d}; use force to go back"
            ));
        }
        _ => {}
    }
    if rolled_back.contains(&build) {
        return Decision::Refused(format!(
            "build {build} failed its post-checks and was rolled back; use force to retry it"
        ));
    }
    if let Some(p) = pending.filter(|&p| p > build) {
        return Decision::Current(format!("newer build {p} is already queued"));
    }
    if let Some(r) = running.filter(|&r| r > build) {
        return Decision::Current(format!("newer build {r} is being deployed now"));
    }
    Decision::Proceed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(d: Decision) -> &'static str {
        match d {
            Decision::Proceed => "proceed",
            Decision::Current(_) => "current",
            Decision::Refused(_) => "refused",
        }
    }

    #[test]
    fn decisions() {
        let rolled_back = [12];
        let idle = Standing {
            deployed: Some(10),
            running: None,
            pending: None,
            rolled_back: &rolled_back,
        };
        let cases = [
            (idle, 10, false, "current"),
            (idle, 9, false, "refused"),
            (idle, 9, true, "proceed"),
            (idle, 10, true, "proceed"),
            (idle, 12, false, "refused"),
            (idle, 12, true, "proceed"),
            (idle, 13, false, "proceed"),
        ];
        let queued = Standing {
            pending: Some(15),
            ..idle
        };
        let busy = Standing {
            running: Some(15),
            ..idle
        };
        let more = [
            (queued, 15, false, "current"),
            (queued, 15, true, "current"),
            (queued, 14, false, "current"),
            (queued, 16, false, "proceed"),
            (queued, 11, true, "proceed"),
            (busy, 15, true, "current"),
            (busy, 14, false, "current"),
            (busy, 16, false, "proceed"),
        ];
        for (standing, build, force, expected) in cases.into_iter().chain(more) {
            assert_eq!(
                kind(decide(&standing, build, force)),
                expected,
                "{standing:?} build {build} force {force}"
            );
        }
    }
}
