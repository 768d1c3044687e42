//! Hydra JSON API client: which build to deploy, and whether Hydra vouches for it (SPEC §5).

pub mod models;
pub mod sim;

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::{StatusCode, header};
use serde::de::DeserializeOwned;

use crate::model::{FlakeRef, RequestObserver, StorePath, Target};
use crate::net::describe;
use models::{Build, ErrorBody, Eval};

/// Hydra answers larger than this are treated as garbage.
pub const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

/// Why Hydra's word could not be had (`is_unavailable`: 503, try again) or is no (422). Every
/// variant names the step and its input in `what` ("hydra build 4821", "hydra eval 912").
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum HydraError {
    #[error("hydra unavailable: cannot build the HTTP client: {0}")]
    Client(String),
    #[error("hydra unavailable: {what}: {detail}")]
    Unreachable { what: String, detail: String },
    #[error("hydra unavailable: {what}: {detail}")]
    TimedOut { what: String, detail: String },
    #[error("hydra unavailable: {what}: answered {status}")]
    UnexpectedStatus { what: String, status: u16 },
    #[error("hydra unavailable: {what}: answer over {MAX_RESPONSE_BYTES} bytes")]
    TooLarge { what: String },
    #[error("hydra unavailable: {what}: unusable JSON: {detail}")]
    BadJson { what: String, detail: String },
    /// Hydra answered about another build or evaluation than the one asked for.
    #[error("hydra unavailable: {what}: answered for {noun} {answered}")]
    IdMismatch {
        what: String,
        noun: &'static str,
        answered: i64,
    },
    #[error("hydra unavailable: {what}: expected a redirect, got {status}")]
    NotRedirect { what: String, status: u16 },
    #[error("hydra unavailable: {what}: redirect without Location")]
    NoLocation { what: String },
    #[error("hydra unavailable: {what}: Location {location:?} names no build")]
    LocationNamesNoBuild { what: String, location: String },

    #[error("{what}: unknown to Hydra ({reason})")]
    Unknown { what: String, reason: String },
    #[error("{what}: Hydra has no successful build")]
    NoSuccessfulBuild { what: String },
    #[error("{what}: belongs to {found}, not {wanted}")]
    OtherJob {
        what: String,
        found: String,
        wanted: String,
    },
    #[error("{what}: not finished")]
    NotFinished { what: String },
    #[error("{what}: buildstatus {}, not deployable", .status.map_or("null".into(), |s| s.to_string()))]
    NotSuccessful { what: String, status: Option<i64> },
    #[error("{what}: no out path")]
    NoOutPath { what: String },
    #[error("{what}: out path refused: {reason}")]
    OutPathRefused { what: String, reason: String },
    #[error("{what}: belongs to no evaluation, so no flake")]
    NoEvaluation { what: String },
    #[error("{what}: no flake (a legacy jobset); use activation = \"store-path\"")]
    NoFlake { what: String },
    #[error("{what}: flake refused: {reason}")]
    FlakeRefused { what: String, reason: String },
}

impl HydraError {
    /// Hydra could not be asked or answered nonsense: the request may succeed later (503).
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            HydraError::Client(_)
                | HydraError::Unreachable { .. }
                | HydraError::TimedOut { .. }
                | HydraError::UnexpectedStatus { .. }
                | HydraError::TooLarge { .. }
                | HydraError::BadJson { .. }
                | HydraError::IdMismatch { .. }
                | HydraError::NotRedirect { .. }
                | HydraError::NoLocation { .. }
                | HydraError::LocationNamesNoBuild { .. }
        )
    }

    /// A bounded label for metrics: one per variant, no input in it.
    pub fn cause(&self) -> &'static str {
        match self {
            HydraError::Client(_) => "client",
            HydraError::Unreachable { .. } => "unreachable",
            HydraError::TimedOut { .. } => "timeout",
            HydraError::UnexpectedStatus { .. } => "status",
            HydraError::TooLarge { .. } => "too-large",
            HydraError::BadJson { .. } => "bad-json",
            HydraError::IdMismatch { .. } => "id-mismatch",
            HydraError::NotRedirect { .. } => "not-redirect",
            HydraError::NoLocation { .. } => "no-location",
            HydraError::LocationNamesNoBuild { .. } => "bad-location",
            HydraError::Unknown { .. } => "unknown-build",
            HydraError::NoSuccessfulBuild { .. } => "no-successful-build",
            HydraError::OtherJob { .. } => "other-job",
            HydraError::NotFinished { .. } => "not-finished",
            HydraError::NotSuccessful { .. } => "build-failed",
            HydraError::NoOutPath { .. } => "no-out-path",
            HydraError::OutPathRefused { .. } => "out-path-refused",
            HydraError::NoEvaluation { .. } => "no-evaluation",
            HydraError::NoFlake { .. } => "no-flake",
            HydraError::FlakeRefused { .. } => "flake-refused",
        }
    }

    /// A transport failure, told apart by whether it was the configured timeout.
    fn transport(what: &str, e: &reqwest::Error) -> HydraError {
        let (what, detail) = (what.to_owned(), describe(e));
        if e.is_timeout() {
            HydraError::TimedOut { what, detail }
        } else {
            HydraError::Unreachable { what, detail }
        }
    }
}

/// Which Hydra, and which job of it holds this host's system: plain values from the config.
#[derive(Debug, Clone)]
pub struct JobRef {
    /// Without a trailing slash.
    pub instance: String,
    pub project: String,
    pub jobset: String,
    pub job: String,
    /// Per request.
    pub timeout: Duration,
    /// Flake activation: the evaluation's locked flake is part of the target.
    pub flake: bool,
}

#[derive(Clone)]
pub struct HydraClient {
    observer: Option<Arc<dyn RequestObserver>>,
    http: reqwest::Client,
    base: String,
    project: String,
    jobset: String,
    job: String,
    flake: bool,
}

impl HydraClient {
    pub fn new(job: JobRef) -> Result<HydraClient, HydraError> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(job.timeout)
            .connect_timeout(job.timeout.min(Duration::from_secs(5)))
            .user_agent(concat!("nixos-hydra-upgrade/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| HydraError::Client(e.to_string()))?;
        Ok(HydraClient {
            observer: None,
            http,
            base: job.instance,
            project: job.project,
            jobset: job.jobset,
            job: job.job,
            flake: job.flake,
        })
    }

    /// Reports each request to `observer`.
    pub fn observed_by(mut self, observer: Arc<dyn RequestObserver>) -> HydraClient {
        self.observer = Some(observer);
        self
    }

    /// The id of the newest successful build of the configured job (`/job/…/latest`, a 302).
    pub async fn latest(&self) -> Result<u64, HydraError> {
        let what = format!(
            "hydra job {}:{}:{} latest",
            self.project, self.jobset, self.job
        );
        let path = format!("/job/{}/{}/{}/latest", self.project, self.jobset, self.job);
        let response = self.get(&path, &what).await?;
        let status = response.status();
        if status == StatusCode::NOT_FOUND {
            return Err(HydraError::NoSuccessfulBuild { what });
        }
        if !status.is_redirection() {
            return Err(HydraError::NotRedirect {
                what,
                status: status.as_u16(),
            });
        }
        let Some(location) = response
            .headers()
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
        else {
            return Err(HydraError::NoLocation { what });
        };
        build_id_from_location(location).ok_or_else(|| HydraError::LocationNamesNoBuild {
            what,
            location: location.to_owned(),
        })
    }

    /// Fetches build `id` and checks it is a finished, successful build of this host's job.
    pub async fn verify(&self, id: u64) -> Result<Target, HydraError> {
        let what = format!("hydra build {id}");
        let build: Build = self.get_json(&format!("/build/{id}"), &what).await?;
        if u64::try_from(build.id).ok() != Some(id) {
            return Err(HydraError::IdMismatch {
                what,
                noun: "build",
                answered: build.id,
            });
        }
        let (p, j, job) = (&self.project, &self.jobset, &self.job);
        if (&build.project, &build.jobset, &build.job) != (p, j, job) {
            return Err(HydraError::OtherJob {
                what,
                found: format!("{}:{}:{}", build.project, build.jobset, build.job),
                wanted: format!("{p}:{j}:{job}"),
            });
        }
        if !build.finished {
            return Err(HydraError::NotFinished { what });
        }
        if build.buildstatus != Some(0) {
            return Err(HydraError::NotSuccessful {
                what,
                status: build.buildstatus,
            });
        }
        let Some(path) = build
            .buildoutputs
            .get("out")
            .and_then(|o| o.path.as_deref())
        else {
            return Err(HydraError::NoOutPath { what });
        };
        let path = StorePath::parse(path).map_err(|e| HydraError::OutPathRefused {
            what: what.clone(),
            reason: e.to_string(),
        })?;
        let flake = if self.flake {
            Some(self.flake_of(&build, &what).await?)
        } else {
            None
        };
        if let Some(observer) = &self.observer {
            observer.verified(id);
        }
        Ok(Target {
            build: id,
            path,
            flake,
        })
    }

    /// The locked flake of the newest evaluation that contains the build.
    async fn flake_of(&self, build: &Build, what: &str) -> Result<FlakeRef, HydraError> {
        let eval_id =
            build
                .jobsetevals
                .iter()
                .copied()
                .max()
                .ok_or_else(|| HydraError::NoEvaluation {
                    what: what.to_owned(),
                })?;
        let eval_what = format!("hydra eval {eval_id}");
        let eval: Eval = self
            .get_json(&format!("/eval/{eval_id}"), &eval_what)
            .await?;
        if eval.id != eval_id {
            return Err(HydraError::IdMismatch {
                what: eval_what,
                noun: "eval",
                answered: eval.id,
            });
        }
        let Some(flake) = eval.flake.filter(|f| !f.is_empty()) else {
            return Err(HydraError::NoFlake { what: eval_what });
        };
        FlakeRef::parse(&flake).map_err(|e| HydraError::FlakeRefused {
            what: eval_what,
            reason: e.to_string(),
        })
    }

    async fn get(&self, path: &str, what: &str) -> Result<reqwest::Response, HydraError> {
        let started = Instant::now();
        let result = self
            .http
            .get(format!("{}{path}", self.base))
            .header(header::ACCEPT, "application/json")
            .send()
            .await;
        if let Some(observer) = &self.observer {
            let endpoint = match path.split('/').nth(1) {
                Some("build") => "build",
                Some("eval") => "eval",
                Some("job") => "job",
                _ => "other",
            };
            let ok = result.as_ref().is_ok_and(|r| !r.status().is_server_error());
            observer.request(endpoint, started.elapsed(), ok);
        }
        result.map_err(|e| HydraError::transport(what, &e))
    }

    async fn get_json<T: DeserializeOwned>(&self, path: &str, what: &str) -> Result<T, HydraError> {
        let response = self.get(path, what).await?;
        let status = response.status();
        let body = read_capped(response, what).await?;
        if status == StatusCode::NOT_FOUND {
            let reason = serde_json::from_slice::<ErrorBody>(&body)
                .map(|e| e.error)
                .unwrap_or_else(|_| "not found".into());
            return Err(HydraError::Unknown {
                what: what.to_owned(),
                reason,
            });
        }
        if status != StatusCode::OK {
            return Err(HydraError::UnexpectedStatus {
                what: what.to_owned(),
                status: status.as_u16(),
            });
        }
        serde_json::from_slice(&body).map_err(|e| HydraError::BadJson {
            what: what.to_owned(),
            detail: e.to_string(),
        })
    }
}

async fn read_capped(mut response: reqwest::Response, what: &str) -> Result<Vec<u8>, HydraError> {
    let too_big = || HydraError::TooLarge {
        what: what.to_owned(),
    };
    if response
        .content_length()
        .is_some_and(|n| n > MAX_RESPONSE_BYTES as u64)
    {
        return Err(too_big());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| HydraError::transport(what, &e))?
    {
        if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(too_big());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Hydra's `Location` may carry its internal host: only the `/build/N` path counts.
pub fn build_id_from_location(location: &str) -> Option<u64> {
    // Read as written, not through a URL parser: that one drops tabs and line breaks, turns `\`
    // into `/` and resolves `..`, so "/b\ruild/7" or "/build\7" would read as build 7.
    if location.chars().any(|c| c.is_control() || c == '\\') {
        return None;
    }
    let path = match location.split_once("://") {
        Some((scheme, rest))
            if !scheme.is_empty()
                && scheme
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b)) =>
        {
            &rest[rest.find('/')?..]
        }
        _ => location,
    };
    let path = path.split(['?', '#']).next()?;
    let mut segments = path.trim_end_matches('/').rsplit('/');
    let id = segments.next()?;
    (segments.next()? == "build" && !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()))
        .then(|| id.parse().ok())
        .flatten()
        .filter(|&n| n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_cause_has_its_answer_label_and_message() {
        let what = || "hydra build 4821".to_owned();
        let cases = [
            (
                HydraError::TimedOut {
                    what: what(),
                    detail: "timed out".into(),
                },
                true,
                "timeout",
                "hydra unavailable: hydra build 4821: timed out",
            ),
            (
                HydraError::UnexpectedStatus {
                    what: what(),
                    status: 502,
                },
                true,
                "status",
                "hydra unavailable: hydra build 4821: answered 502",
            ),
            (
                HydraError::IdMismatch {
                    what: what(),
                    noun: "build",
                    answered: 8,
                },
                true,
                "id-mismatch",
                "hydra unavailable: hydra build 4821: answered for build 8",
            ),
            (
                HydraError::NotSuccessful {
                    what: what(),
                    status: Some(1),
                },
                false,
                "build-failed",
                "hydra build 4821: buildstatus 1, not deployable",
            ),
            (
                HydraError::NotSuccessful {
                    what: what(),
                    status: None,
                },
                false,
                "build-failed",
                "hydra build 4821: buildstatus null, not deployable",
            ),
            (
                HydraError::NoFlake {
                    what: "hydra eval 912".into(),
                },
                false,
                "no-flake",
                "hydra eval 912: no flake (a legacy jobset); use activation = \"store-path\"",
            ),
        ];
        for (error, unavailable, cause, text) in cases {
            assert_eq!(error.is_unavailable(), unavailable, "{error:?}");
            assert_eq!(error.cause(), cause);
            assert_eq!(error.to_string(), text);
        }
    }

    #[test]
    fn location_parsing() {
        let cases = [
            ("https://hydra.example/build/4821", Some(4821)),
            ("http://localhost:3000/build/7", Some(7)),
            ("http://localhost:3000/hydra/build/7/", Some(7)),
            ("/build/12", Some(12)),
            ("/build/12?x=1", Some(12)),
            ("https://hydra.example/eval/12", None),
            ("https://hydra.example/build/", None),
            ("https://hydra.example/build/0", None),
            ("https://hydra.example/build/-1", None),
            ("https://hydra.example/build/99999999999999999999999", None),
            ("", None),
            // Found by tests/fuzz_inputs.rs: control characters are not stripped, but refused.
            ("https://hydra.example/b\ruild/4821", None),
            ("https://hydra.example/build/48\t21", None),
            ("http://localhost:3000/hydra/build\\7/", None),
            ("http://h/build/5/../6", None),
            ("http://h/build/7?next=http://x/build/8", Some(7)),
            ("/build/7?next=http://x/build/8", Some(7)),
        ];
        for (location, want) in cases {
            assert_eq!(build_id_from_location(location), want, "{location}");
        }
    }
}
