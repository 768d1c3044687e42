//! Runs each subcommand and maps its result to the exit code of SPEC §2.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::cli::Command;
use crate::cli::client::{Endpoint, request};
use crate::cli::notify::{NotifyError, NotifyOptions};
use crate::config::{LogFormat, Settings};
use crate::signature::{Keys, generate_id};

const OK: u8 = 0;
const FAILED: u8 = 1;
const USAGE: u8 = 2;
/// How long `trigger` and `status` wait for the agent.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

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
        Command::Demo => crate::logging::init(LogFormat::Text, "nixos_hydra_upgrade=info", false),
        Command::Retry { .. } => crate::logging::init(LogFormat::Text, "info", true),
        _ => crate::logging::init(LogFormat::Text, "warn", true),
    }
    match command {
        Command::Serve { config } => {
            let settings = match Settings::from_file(&config) {
                Ok(settings) => settings,
                Err(e) => return usage(&e.to_string()),
            };
            crate::logging::init(settings.log_format, "info", false);
            match runtime.block_on(crate::app::serve(settings)) {
                Ok(()) => OK,
                Err(e) => {
                    tracing::error!(error = %e, "agent stopped");
                    fail(&e.to_string())
                }
            }
        }
        Command::CheckConfig { config } => match Settings::from_file(&config) {
            Ok(s) => {
                println!(
                    "{}: valid (host {}, job {}:{}:{}, {} on {})",
                    config.display(),
                    s.host,
                    s.hydra_project,
                    s.hydra_jobset,
                    s.hydra_job,
                    s.operation.as_str(),
                    s.listen
                );
                OK
            }
            Err(e) => usage(&e.to_string()),
        },
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
                        println!("{line}");
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
        } => {
            let wait = wait.then_some(timeout);
            runtime.block_on(trigger(&url, &secret_file, build, force, wait))
        }
        Command::Status { url, json } => runtime.block_on(status(&url, json)),
        Command::Check { config } => match Settings::from_file(&config) {
            Ok(settings) => runtime.block_on(check(&settings)),
            Err(e) => usage(&e.to_string()),
        },
        Command::Calendar {
            iterations,
            base_time,
            json,
            expr,
        } => crate::cli::calendar::run(&expr, iterations, base_time.as_deref(), json),
        Command::Demo => match runtime.block_on(crate::cli::demo::run()) {
            Ok(()) => OK,
            Err(e) => fail(&e),
        },
    }
}

fn fail(message: &str) -> u8 {
    eprintln!("nixos-hydra-upgrade: {message}");
    FAILED
}

fn usage(message: &str) -> u8 {
    eprintln!("nixos-hydra-upgrade: {message}");
    USAGE
}

async fn trigger(
    url: &str,
    secret_file: &Path,
    build: Option<u64>,
    force: bool,
    wait: Option<Duration>,
) -> u8 {
    let endpoint = match Endpoint::parse(url) {
        Ok(e) => e,
        Err(e) => return usage(&e),
    };
    let keys = match Keys::load(secret_file) {
        Ok(k) => k,
        Err(e) => return fail(&e.to_string()),
    };
    let baseline = match wait {
        Some(_) => match crate::cli::follow::baseline(&endpoint).await {
            Ok(b) => b,
            Err(e) => return fail(&e.to_string()),
        },
        None => Value::Null,
    };
    let mut body = serde_json::Map::new();
    if let Some(build) = build {
        body.insert("build".into(), build.into());
    }
    if force {
        body.insert("force".into(), true.into());
    }
    let body = Value::Object(body).to_string().into_bytes();
    let headers = keys.headers(&generate_id(), &body);
    match request(
        &endpoint,
        reqwest::Method::POST,
        "/v1/upgrade",
        &headers,
        Some(body),
        CLIENT_TIMEOUT,
    )
    .await
    {
        Ok(answer) => {
            println!(
                "{} {}",
                answer.status,
                String::from_utf8_lossy(&answer.body)
            );
            if !(200..300).contains(&answer.status) {
                return FAILED;
            }
            match (wait, serde_json::from_slice::<Value>(&answer.body)) {
                (None, _) => OK,
                (Some(timeout), Ok(body)) => {
                    crate::cli::follow::follow(&endpoint, &body, &baseline, timeout).await
                }
                (Some(_), Err(e)) => fail(&format!("the answer is not JSON: {e}")),
            }
        }
        Err(e) => fail(&e),
    }
}

async fn status(url: &str, json: bool) -> u8 {
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
    match serde_json::from_slice::<Value>(&answer.body) {
        Ok(value) => {
            print!("{}", crate::cli::status_view::describe(&value));
            OK
        }
        Err(e) => fail(&format!("status is not JSON: {e}")),
    }
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
