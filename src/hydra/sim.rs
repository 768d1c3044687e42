//! An in-process Hydra on loopback for the demo and the tests, answering like Hydra's own
//! serialisers do (HYDRA-API.md): 0/1 flags, `{"error": …}` 404s, a 302 with a foreign host.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

/// Where Hydra's redirects point when it sits behind a proxy without `X-Request-Base`.
pub const INTERNAL_BASE: &str = "http://localhost:3000";

#[derive(Debug, Clone)]
pub struct SimBuild {
    pub id: u64,
    pub project: String,
    pub jobset: String,
    pub job: String,
    pub finished: bool,
    pub buildstatus: Option<i64>,
    pub out_path: String,
    pub evals: Vec<u64>,
}

/// A misbehaviour applied to every answer while set.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Answer with this status and an HTML body.
    Status(u16),
    /// Answer 200 with this body and content type.
    Body(&'static str, String),
    /// Sleep this long before answering.
    Delay(Duration),
    /// Answer 200 with this many bytes of JSON whitespace.
    Huge(usize),
    /// Answer 302 with this `Location`.
    Redirect(String),
}

#[derive(Default)]
struct Inner {
    builds: BTreeMap<u64, SimBuild>,
    evals: BTreeMap<u64, Option<String>>,
    fault: Option<Fault>,
    /// Faults for requests whose path starts with the prefix; they win over `fault`.
    path_faults: Vec<(String, Fault)>,
    requests: Vec<String>,
    /// The `Authorization` header of each request, in order (None when absent).
    authorizations: Vec<Option<String>>,
}

/// A running simulator; it stops with the tokio runtime that started it.
#[derive(Clone)]
pub struct HydraSim {
    addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
}

impl HydraSim {
    pub async fn start() -> std::io::Result<HydraSim> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let inner = Arc::new(Mutex::new(Inner::default()));
        let app = axum::Router::new()
            .route("/build/{id}", get(build))
            .route("/eval/{id}", get(eval))
            .route("/job/{project}/{jobset}/{job}/latest", get(latest))
            .with_state(inner.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(HydraSim { addr, inner })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn add_build(&self, build: SimBuild) {
        self.lock().builds.insert(build.id, build);
    }

    /// Adds a finished, successful build of `project:jobset:job` in evaluation `eval`, whose flake is
    /// `github:acme/infra/<rev>`; returns its out path.
    pub fn succeed(&self, id: u64, project: &str, jobset: &str, job: &str, eval: u64) -> String {
        let out_path = fake_out_path(id, job);
        self.add_build(SimBuild {
            id,
            project: project.into(),
            jobset: jobset.into(),
            job: job.into(),
            finished: true,
            buildstatus: Some(0),
            out_path: out_path.clone(),
            evals: vec![eval],
        });
        self.set_eval(eval, Some(format!("github:acme/infra/{:040x}", eval)));
        out_path
    }

    pub fn set_eval(&self, id: u64, flake: Option<String>) {
        self.lock().evals.insert(id, flake);
    }

    pub fn set_fault(&self, fault: Option<Fault>) {
        self.lock().fault = fault;
    }

    /// The paths requested so far, in order.
    /// Applies `fault` only to requests whose path starts with `prefix` (None clears them all).
    pub fn set_path_fault(&self, prefix: &str, fault: Option<Fault>) {
        let mut inner = self.lock();
        match fault {
            Some(fault) => inner.path_faults.push((prefix.to_owned(), fault)),
            None => inner.path_faults.clear(),
        }
    }

    pub fn requests(&self) -> Vec<String> {
        self.lock().requests.clone()
    }

    /// The `Authorization` header each request carried, in order.
    pub fn authorizations(&self) -> Vec<Option<String>> {
        self.lock().authorizations.clone()
    }
}

/// A well-formed store path, unique per build.
pub fn fake_out_path(id: u64, job: &str) -> String {
    const ALPHABET: &[u8] = b"0123456789abcdfghijklmnpqrsvwxyz";
    let mut n = id.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let hash: String = (0..32)
        .map(|_| {
            let c = ALPHABET[(n % 32) as usize] as char;
            n = n.rotate_right(5) ^ id;
            c
        })
        .collect();
    format!("/nix/store/{hash}-nixos-system-{job}-26.05.{id}")
}

type Shared = Arc<Mutex<Inner>>;

/// Records the request and applies the fault, if any; `Some` is the answer to give instead.
async fn intercept(inner: &Shared, path: String, headers: &HeaderMap) -> Option<Response> {
    let fault = {
        let mut guard = inner.lock().unwrap_or_else(|p| p.into_inner());
        let fault = guard
            .path_faults
            .iter()
            .find(|(prefix, _)| path.starts_with(prefix.as_str()))
            .map(|(_, f)| f.clone())
            .or_else(|| guard.fault.clone());
        guard.requests.push(path);
        let authorization = headers
            .get(header::AUTHORIZATION)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        guard.authorizations.push(authorization);
        fault
    };
    match fault {
        Some(Fault::Status(code)) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return Some((status, html("error")).into_response());
        }
        Some(Fault::Body(content_type, body)) => {
            return Some(([(header::CONTENT_TYPE, content_type)], body).into_response());
        }
        Some(Fault::Delay(delay)) => tokio::time::sleep(delay).await,
        Some(Fault::Redirect(location)) => {
            return Some((StatusCode::FOUND, [(header::LOCATION, location)]).into_response());
        }
        Some(Fault::Huge(n)) => {
            return Some(
                ([(header::CONTENT_TYPE, "application/json")], " ".repeat(n)).into_response(),
            );
        }
        None => {}
    }
    // Hydra's pages are HTML unless JSON is asked for.
    let wants_json = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/json"));
    (!wants_json).then(|| html("a Hydra page").into_response())
}

fn html(text: &str) -> ([(header::HeaderName, &'static str); 1], String) {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        format!("<!DOCTYPE html><html><body>{text}</body></html>"),
    )
}

fn not_found(message: String) -> Response {
    (
        StatusCode::NOT_FOUND,
        axum::Json(json!({ "error": message })),
    )
        .into_response()
}

async fn build(
    State(inner): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(answer) = intercept(&inner, format!("/build/{id}"), &headers).await {
        return answer;
    }
    let found = id.parse::<u64>().ok().and_then(|n| {
        inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .builds
            .get(&n)
            .cloned()
    });
    let Some(b) = found else {
        return not_found(format!("Build with ID {id} doesn't exist."));
    };
    let name = b.out_path.get(44..).unwrap_or_default().to_owned();
    axum::Json(json!({
        "id": b.id, "finished": i64::from(b.finished), "buildstatus": b.buildstatus,
        "timestamp": 1_767_225_600u64 + b.id, "starttime": null, "stoptime": null,
        "project": b.project, "jobset": b.jobset, "job": b.job,
        "nixname": name, "system": "x86_64-linux", "priority": 100, "releasename": null,
        "drvpath": format!("{}.drv", b.out_path), "jobsetevals": b.evals,
        "buildoutputs": { "out": { "path": b.out_path } },
        "buildproducts": {}, "buildmetrics": {}
    }))
    .into_response()
}

async fn eval(State(inner): State<Shared>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    if let Some(answer) = intercept(&inner, format!("/eval/{id}"), &headers).await {
        return answer;
    }
    let found = id.parse::<u64>().ok().and_then(|n| {
        inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .evals
            .get(&n)
            .cloned()
    });
    match found {
        Some(flake) => axum::Json(json!({
            "id": id.parse::<u64>().unwrap_or_default(), "timestamp": 1_767_225_580u64,
            "checkouttime": 2, "evaltime": 41, "hasnewbuilds": 1, "flake": flake,
            "builds": [], "jobsetevalinputs": {}
        }))
        .into_response(),
        None => not_found(format!("Evaluation with ID {id} doesn't exist.")),
    }
}

async fn latest(
    State(inner): State<Shared>,
    Path((project, jobset, job)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    let path = format!("/job/{project}/{jobset}/{job}/latest");
    if let Some(answer) = intercept(&inner, path, &headers).await {
        return answer;
    }
    // The highest-id successful build of the job, from any eval (Hydra's ListBuilds.pm).
    let newest = inner
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .builds
        .values()
        .filter(|b| b.project == project && b.jobset == jobset && b.job == job)
        .filter(|b| b.finished && b.buildstatus == Some(0))
        .map(|b| b.id)
        .max();
    match newest {
        Some(id) => (
            StatusCode::FOUND,
            [(header::LOCATION, format!("{INTERNAL_BASE}/build/{id}"))],
        )
            .into_response(),
        None => not_found("There is no successful build to redirect to.".into()),
    }
}
