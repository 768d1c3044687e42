//! Runs each subcommand and maps its result to the exit code of SPEC §2.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use std::path::PathBuf;

use crate::cli::Command;
use crate::cli::args::{CONFIG_ENV, DEFAULT_CONFIG};
use crate::cli::client::{Endpoint, request};
use crate::cli::notify::{NotifyError, NotifyOptions, summary};
use crate::config::{ConfigError, Listen, LogFormat, Settings};
use crate::logging::escape_controls;
use crate::signature::{Keys, generate_id};

const OK: u8 = 0;
const FAILED: u8 = 1;
const USAGE: u8 = 2;
/// How long `trigger` and `status` wait for the agent.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);
/// The agent's default `listen`, for `status` on a host without a config file.
const DEFAULT_URL: &str = "http://127.0.0.1:9980";

pub fn run(command: Command) -> u8 {
    // One worker: an upgrade agent needs no more than one core to answer requests, and under a
    // flood of bad requests the other core(s) stay free for the activation it must start
    // (BENCHMARKS.md: p99 under flood 245 -> 20 ms on 2 cores, for ~8% of reject throughput).
    // The fan-out commands talk to thousands of agents: every core helps them.
    let fan_out = matches!(
        command,
        Command::Notify { .. } | Command::Fleet { .. } | Command::Retry { .. }
    );
    let workers = if fan_out {
        std::thread::available_parallelism().map_or(1, |n| n.get().min(4))
    } else {
        1
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return fail(&format!("cannot start the async runtime: {e}")),
    };
    match command {
        Command::Serve { .. } => {}
        Command::Demo { .. } => {
            crate::logging::init(LogFormat::Text, "nixos_hydra_upgrade=info", false)
        }
        // `check` prints every result in its table; log lines would say each failure twice.
        Command::Check { .. } => crate::logging::init(LogFormat::Text, "error", true),
        Command::Retry { .. } => crate::logging::init(LogFormat::Text, "info", true),
        _ => crate::logging::init(LogFormat::Text, "warn", true),
    }
    match command {
        Command::Serve { config } => {
            let settings = match load(config) {
                Ok(settings) => settings,
                Err(e) => return usage(&e),
            };
            crate::logging::init(settings.log_format, "info", false);
            match runtime.block_on(crate::app::serve(settings)) {
                Ok(()) => OK,
                Err(e) => {
                    // Said once, in the agent's own log (journalctl shows it), not again on stderr.
                    tracing::error!(error = %e, "agent stopped");
                    FAILED
                }
            }
        }
        Command::CheckConfig {
            config,
            skip_programs,
        } => check_config(config, !skip_programs),
        Command::Notify {
            urls,
            routes,
            secret_file,
            hydra_json,
            hand_back,
            deadline,
            spool,
        } => {
            let options = NotifyOptions {
                urls,
                routes,
                secret_file,
                hydra_json,
                hand_back,
                deadline,
                spool,
            };
            match runtime.block_on(crate::cli::notify::notify(options)) {
                Ok(report) => {
                    for line in &report.lines {
                        println!("{}", escape_controls(line));
                    }
                    if report.all_delivered { OK } else { FAILED }
                }
                Err(NotifyError::Usage(e)) => usage(&e),
                Err(NotifyError::Failed(e)) => fail(&e),
            }
        }
        Command::Retry {
            spool,
            secret_file,
            once,
            exit_when_empty,
        } => {
            let options = crate::cli::retry::RetryOptions {
                spool,
                secret_file,
                once,
                exit_when_empty,
            };
            match runtime.block_on(crate::cli::retry::run(options)) {
                Ok(true) => OK,
                Ok(false) => FAILED,
                Err(e) => fail(&e),
            }
        }
        Command::Fleet {
            urls,
            hosts_file,
            json,
            spool,
            timeout,
        } => {
            let options = crate::cli::fleet::FleetOptions {
                urls,
                hosts_file,
                json,
                spool,
                timeout,
            };
            match runtime.block_on(crate::cli::fleet::run(options)) {
                Ok((text, all_reachable)) => {
                    print!("{text}");
                    if all_reachable { OK } else { FAILED }
                }
                Err(e) => usage(&e),
            }
        }
        Command::Trigger {
            url,
            secret_file,
            build,
            force,
            wait,
            timeout,
            json,
        } => {
            let request = TriggerRequest {
                build,
                force,
                wait: wait.then_some(timeout),
                json,
            };
            runtime.block_on(trigger(&url, &secret_file, &request))
        }
        Command::Status {
            url,
            config,
            json,
            follow,
        } => {
            let url = match agent_url(url, config) {
                Ok(url) => url,
                Err(e) => return usage(&e),
            };
            runtime.block_on(status(&url, json, follow))
        }
        Command::Check { config } => match load(config) {
            Ok(settings) => runtime.block_on(check(&settings)),
            Err(e) => usage(&e),
        },
        Command::Calendar {
            iterations,
            base_time,
            json,
            expr,
        } => crate::cli::calendar::run(&expr, iterations, base_time.as_deref(), json),
        Command::Demo { keep } => match runtime.block_on(crate::cli::demo::run(keep)) {
            Ok(()) => OK,
            Err(e) => fail(&e),
        },
    }
}

/// `check-config`: parse and validate, then look for the programs and a `dates` that fires.
fn check_config(config: Option<PathBuf>, programs: bool) -> u8 {
    let given = config.is_some();
    let path = config_path(config);
    let settings = match Settings::from_file(&path) {
        Ok(settings) => settings,
        Err(e) => return usage(&with_config_hint(&e, given)),
    };
    let path_var = std::env::var_os("PATH");
    let findings =
        crate::cli::check_config::findings(&settings, programs.then_some(path_var.as_deref()));
    for finding in &findings {
        let kind = if finding.error { "" } else { "warning: " };
        eprintln!(
            "nixos-hydra-upgrade: {kind}config {}: {}",
            path.display(),
            escape_controls(&finding.message)
        );
    }
    if findings.iter().any(|f| f.error) {
        return USAGE;
    }
    println!(
        "{}: valid (host {}, job {}:{}:{}, {} on {})",
        path.display(),
        settings.host,
        settings.hydra_project,
        settings.hydra_jobset,
        settings.hydra_job,
        settings.operation.as_str(),
        settings.listen
    );
    OK
}

/// `--config`, else `$NIXOS_HYDRA_UPGRADE_CONFIG` (clap reads both), else the module's path.
fn config_path(config: Option<PathBuf>) -> PathBuf {
    config.unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG))
}

/// Reads and validates the config; a missing default file says how to name another.
fn load(config: Option<PathBuf>) -> Result<Settings, String> {
    let given = config.is_some();
    let path = config_path(config);
    Settings::from_file(&path).map_err(|e| with_config_hint(&e, given))
}

/// The error, plus how to point at a config when the default one is missing.
pub(super) fn with_config_hint(e: &ConfigError, given: bool) -> String {
    match e {
        ConfigError::Read { source, .. }
            if !given && source.kind() == std::io::ErrorKind::NotFound =>
        {
            format!("{e}; give --config FILE or set {CONFIG_ENV}")
        }
        _ => e.to_string(),
    }
}

/// The agent to ask: `--url`, else the `listen` of the config (when there is one), else the
/// default listen address.
fn agent_url(url: Option<String>, config: Option<PathBuf>) -> Result<String, String> {
    if let Some(url) = url {
        return Ok(url);
    }
    let given = config.is_some();
    let path = config_path(config);
    if !given && !path.exists() {
        return Ok(DEFAULT_URL.into());
    }
    let settings = Settings::from_file(&path).map_err(|e| with_config_hint(&e, given))?;
    Ok(listen_url(&settings.listen))
}

/// How a client on this host reaches a listen address (a wildcard means loopback).
fn listen_url(listen: &Listen) -> String {
    match listen {
        Listen::Unix(path) => format!("unix:{}", path.display()),
        Listen::Tcp(addr) => {
            let (host, port) = addr.rsplit_once(':').unwrap_or((addr.as_str(), "9980"));
            let host = match host {
                "0.0.0.0" | "" => "127.0.0.1",
                "[::]" | "::" => "[::1]",
                other => other,
            };
            format!("http://{host}:{port}")
        }
    }
}

fn fail(message: &str) -> u8 {
    eprintln!(
        "nixos-hydra-upgrade: {}",
        escape_controls_but_lines(message)
    );
    FAILED
}

fn usage(message: &str) -> u8 {
    eprintln!(
        "nixos-hydra-upgrade: {}",
        escape_controls_but_lines(message)
    );
    USAGE
}

/// Errors may span lines (a TOML excerpt with its caret); everything else is escaped.
fn escape_controls_but_lines(message: &str) -> String {
    message
        .split('\n')
        .map(escape_controls)
        .collect::<Vec<_>>()
        .join("\n")
}

/// What `trigger` asks for and how it reports.
struct TriggerRequest {
    build: Option<u64>,
    force: bool,
    /// `--wait`: follow the attempt for at most this long.
    wait: Option<Duration>,
    json: bool,
}

async fn trigger(url: &str, secret_file: &Path, request_: &TriggerRequest) -> u8 {
    let endpoint = match Endpoint::parse(url) {
        Ok(e) => e,
        Err(e) => return usage(&e),
    };
    let keys = match Keys::load(secret_file) {
        Ok(k) => k,
        Err(e) => return fail(&e.to_string()),
    };
    let baseline = match request_.wait {
        Some(_) => match crate::cli::follow::baseline(&endpoint).await {
            Ok(b) => b,
            Err(e) => return fail(&e.to_string()),
        },
        None => Value::Null,
    };
    let mut body = serde_json::Map::new();
    if let Some(build) = request_.build {
        body.insert("build".into(), build.into());
    }
    if request_.force {
        body.insert("force".into(), true.into());
    }
    let body = Value::Object(body).to_string().into_bytes();
    let headers = keys.headers(&generate_id(), &body);
    let answer = match request(
        &endpoint,
        reqwest::Method::POST,
        "/v1/upgrade",
        &headers,
        Some(body),
        CLIENT_TIMEOUT,
    )
    .await
    {
        Ok(answer) => answer,
        Err(e) => return fail(&e),
    };
    let parsed = serde_json::from_slice::<Value>(&answer.body);
    if request_.json {
        // The agent's answer as it is: one JSON object (or, if it sent something else, one
        // object saying so).
        let object = match &parsed {
            Ok(value) if value.is_object() => value.clone(),
            _ => serde_json::json!({
                "status": "not-json",
                "http_status": answer.status,
                "body": String::from_utf8_lossy(&answer.body),
            }),
        };
        println!("{object}");
    } else {
        println!(
            "{}: {} {}",
            endpoint.describe("/v1/upgrade"),
            answer.status,
            escape_controls(&summary(&answer.body))
        );
    }
    if !(200..300).contains(&answer.status) {
        return FAILED;
    }
    match (request_.wait, parsed) {
        (None, _) => OK,
        (Some(timeout), Ok(body)) => {
            crate::cli::follow::follow(&endpoint, &body, &baseline, timeout).await
        }
        (Some(_), Err(e)) => fail(&format!("the answer is not JSON: {e}")),
    }
}

async fn status(url: &str, json: bool, follow: bool) -> u8 {
    let endpoint = match Endpoint::parse(url) {
        Ok(e) => e,
        Err(e) => return usage(&e),
    };
    let answer = match request(
        &endpoint,
        reqwest::Method::GET,
        "/v1/status",
        &[],
        None,
        CLIENT_TIMEOUT,
    )
    .await
    {
        Ok(a) if a.status == 200 => a,
        Ok(a) => {
            return fail(&format!(
                "{}: answered {}",
                endpoint.describe("/v1/status"),
                a.status
            ));
        }
        Err(e) => return fail(&e),
    };
    if json {
        println!("{}", String::from_utf8_lossy(&answer.body));
        return OK;
    }
    let value = match serde_json::from_slice::<Value>(&answer.body) {
        Ok(value) => value,
        Err(e) => return fail(&format!("status is not JSON: {e}")),
    };
    print!(
        "{}",
        crate::cli::status_view::describe(&value, jiff::Timestamp::now())
    );
    if follow {
        return crate::cli::watch::watch(&endpoint, &value).await;
    }
    OK
}

async fn check(settings: &Settings) -> u8 {
    let deadline = settings.health_checks.deadline;
    let mut passed = true;
    for (title, post) in [("pre-checks", false), ("post-checks", true)] {
        let checks =
            crate::health::phase_checks(&settings.health_checks, &settings.system.systemctl, post);
        let results = crate::health::run_phase(&checks, deadline).await;
        passed &= results.iter().all(|r| r.passed);
        println!("{title}:");
        print!("{}", crate::health::render_table(&results));
    }
    if passed { OK } else { FAILED }
}
