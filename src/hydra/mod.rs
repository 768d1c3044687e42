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

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HydraError {
    /// Hydra could not be asked or answered nonsense: try again later (503).
    #[error("hydra unavailable: {0}")]
    Unavailable(String),
    /// Hydra answered, and the answer is no (422).
    #[error("{0}")]
    Rejected(String),
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
            .map_err(|e| HydraError::Unavailable(format!("cannot build HTTP client: {e}")))?;
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
            return Err(HydraError::Rejected(format!(
                "{what}: Hydra has no successful build"
            )));
        }
        if !status.is_redirection() {
            return Err(HydraError::Unavailable(format!(
                "{what}: expected a redirect, got {status}"
            )));
        }
        let location = response
            .headers()
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| HydraError::Unavailable(format!("{what}: redirect without Location")))?;
        build_id_from_location(location).ok_or_else(|| {
            HydraError::Unavailable(format!("{what}: Location {location:?} names no build"))
        })
    }

    /// Fetches build `id` and checks it is a finished, successful build of this host's job.
    pub async fn verify(&self, id: u64) -> Result<Target, HydraError> {
        let what = format!("hydra build {id}");
        let build: Build = self.get_json(&format!("/build/{id}"), &what).await?;
        if u64::try_from(build.id).ok() != Some(id) {
            return Err(HydraError::Unavailable(format!(
                "{what}: answered for build {}",
                build.id
            )));
        }
        let (p, j, job) = (&self.project, &self.jobset, &self.job);
        if (&build.project, &build.jobset, &build.job) != (p, j, job) {
            return Err(HydraError::Rejected(format!(
                "{what}: belongs to {}:{}:{}, not {p}:{j}:{job}",
                build.project, build.jobset, build.job
            )));
        }
        if !build.finished {
            return Err(HydraError::Rejected(format!("{what}: not finished")));
        }
        if build.buildstatus != Some(0) {
            let status = build.buildstatus.map_or("null".into(), |s| s.to_string());
            return Err(HydraError::Rejected(format!(
                "{what}: buildstatus {status}, not deployable"
            )));
        }
        let path = build
            .buildoutputs
            .get("out")
            .and_then(|o| o.path.as_deref())
            .ok_or_else(|| HydraError::Rejected(format!("{what}: no out path")))?;
        let path = StorePath::parse(path)
            .map_err(|e| HydraError::Rejected(format!("{what}: out path refused: {e}")))?;
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
        let eval_id = build.jobsetevals.iter().copied().max().ok_or_else(|| {
            HydraError::Rejected(format!("{what}: belongs to no evaluation, so no flake"))
        })?;
        let eval_what = format!("hydra eval {eval_id}");
        let eval: Eval = self
            .get_json(&format!("/eval/{eval_id}"), &eval_what)
            .await?;
        if eval.id != eval_id {
            return Err(HydraError::Unavailable(format!(
                "{eval_what}: answered for eval {}",
                eval.id
            )));
        }
        let flake = eval.flake.filter(|f| !f.is_empty()).ok_or_else(|| {
            HydraError::Rejected(format!(
                "{eval_what}: no flake (a legacy jobset); use activation = \"store-path\""
            ))
        })?;
        FlakeRef::parse(&flake)
            .map_err(|e| HydraError::Rejected(format!("{eval_what}: flake refused: {e}")))
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
        result.map_err(|e| HydraError::Unavailable(format!("{what}: {}", describe(&e))))
    }

    async fn get_json<T: DeserializeOwned>(&self, path: &str, what: &str) -> Result<T, HydraError> {
        let response = self.get(path, what).await?;
        let status = response.status();
        let body = read_capped(response, what).await?;
        if status == StatusCode::NOT_FOUND {
            let reason = serde_json::from_slice::<ErrorBody>(&body)
                .map(|e| e.error)
                .unwrap_or_else(|_| "not found".into());
            return Err(HydraError::Rejected(format!(
                "{what}: unknown to Hydra ({reason})"
            )));
        }
        if status != StatusCode::OK {
            return Err(HydraError::Unavailable(format!(
                "{what}: answered {status}"
            )));
        }
        serde_json::from_slice(&body)
            .map_err(|e| HydraError::Unavailable(format!("{what}: unusable JSON: {e}")))
    }
}

async fn read_capped(mut response: reqwest::Response, what: &str) -> Result<Vec<u8>, HydraError> {
    let too_big =
        || HydraError::Unavailable(format!("{what}: answer over {MAX_RESPONSE_BYTES} bytes"));
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
        .map_err(|e| HydraError::Unavailable(format!("{what}: {}", describe(&e))))?
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
