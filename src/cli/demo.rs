//! `demo`: a self-contained tour on loopback — a simulated Hydra, an agent whose nixos-rebuild is a
//! stand-in script in a temporary directory, and signed RunCommand notifications sent through the
//! real `notify` code.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::cli::client::{Endpoint, request};
use crate::cli::notify::{NotifyOptions, notify};
use crate::config::Settings;
use crate::hydra::sim::HydraSim;
use crate::signature::generate_secret;

const PROJECT: &str = "infra";
const JOBSET: &str = "main";
const JOB: &str = "web1";

/// Stands in for nixos-rebuild: points the demo's own `current-system` link at the target.
const STAND_IN_REBUILD: &str = r#"#!/bin/sh
dir=$(dirname "$0"); op=$1; shift
while [ $# -gt 0 ]; do
  case "$1" in --store-path) path=$2; shift ;; esac
  shift
done
echo "stand-in nixos-rebuild $op: $dir/current-system -> $path"
ln -sfn "$path" "$dir/current-system"
"#;

/// The tour; with `keep`, the simulator and the agent stay up for the operator until Ctrl-C.
pub async fn run(keep: bool) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| format!("cannot make a temporary directory: {e}"))?;
    let io = |e: std::io::Error| e.to_string();

    stage(
        1,
        "start a simulated Hydra on loopback with three builds of infra:main:web1",
    );
    let hydra = HydraSim::start().await.map_err(io)?;
    hydra.succeed(4821, PROJECT, JOBSET, JOB, 912);
    let failed = hydra.succeed(4822, PROJECT, JOBSET, JOB, 913);
    hydra.add_build(crate::hydra::sim::SimBuild {
        buildstatus: Some(1),
        ..sim_build(4822, failed)
    });
    let newest = hydra.succeed(4830, PROJECT, JOBSET, JOB, 915);
    println!("   Hydra at {}: 4821 ok, 4822 failed, 4830 ok", hydra.url());

    stage(
        2,
        "start the agent with a TCP pre-check; its nixos-rebuild is a stand-in script that only \
         moves a symlink in a temporary directory",
    );
    let secret = dir.path().join("secret");
    std::fs::write(&secret, format!("{}\n", generate_secret())).map_err(io)?;
    let rebuild = dir.path().join("nixos-rebuild");
    std::fs::write(&rebuild, STAND_IN_REBUILD).map_err(io)?;
    std::fs::set_permissions(
        &rebuild,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .map_err(io)?;
    let root = dir.path().display();
    let config = format!(
        "host = \"{JOB}\"\nlisten = \"127.0.0.1:0\"\nlog_format = \"text\"\n\
         secret_file = \"{root}/secret\"\nstate_dir = \"{root}/state\"\ndates = \"\"\n\
         [hydra]\ninstance = \"{}\"\nproject = \"{PROJECT}\"\njobset = \"{JOBSET}\"\n\
         [[health_checks.pre]]\nkind = \"tcp\"\nname = \"hydra reachable\"\naddress = \"{}\"\n\
         [system]\nnixos_rebuild = \"{root}/nixos-rebuild\"\ncurrent_system = \"{root}/current-system\"\n\
         booted_system = \"{root}/current-system\"\nsystem_profile = \"{root}/current-system\"\n\
         nix = \"{root}/no-nix\"\nswitch_lock = \"{root}/switch.lock\"\n",
        hydra.url(),
        hydra.url().trim_start_matches("http://"),
    );
    let settings =
        Settings::from_toml(&config, Path::new("demo.toml")).map_err(|e| e.to_string())?;
    let shutdown = CancellationToken::new();
    let running = crate::app::start(settings, shutdown.clone())
        .await
        .map_err(|e| e.to_string())?;
    let agent_url = format!("http://{}", running.address);
    println!("   agent at {agent_url}");

    stage(
        3,
        "Hydra finishes build 4822 with a failure: notify sends nothing",
    );
    send(dir.path(), &secret, &agent_url, 4822, 1).await?;

    stage(
        4,
        "Hydra finishes build 4830: notify signs and delivers it; the agent asks Hydra and queues it",
    );
    send(dir.path(), &secret, &agent_url, 4830, 0).await?;
    let endpoint = Endpoint::parse(&agent_url)?;
    let status = wait_for_attempt(&endpoint, 4830).await?;
    for check in status["last_attempt"]["checks"]
        .as_array()
        .into_iter()
        .flatten()
    {
        println!(
            "   pre-check {}: passed {} ({})",
            check["name"], check["passed"], check["detail"]
        );
    }
    println!("   worker finished: {}", status["last_attempt"]["outcome"]);

    stage(
        5,
        "Hydra's RunCommand fires again for 4830 (it may): the agent answers current",
    );
    send(dir.path(), &secret, &agent_url, 4830, 0).await?;

    stage(
        6,
        "a request signed with the wrong key is refused before anything is parsed",
    );
    let forged = request(
        &endpoint,
        reqwest::Method::POST,
        "/v1/upgrade",
        &[
            ("webhook-id", "msg_forged".into()),
            (
                "webhook-timestamp",
                jiff::Timestamp::now().as_second().to_string(),
            ),
            (
                "webhook-signature",
                "v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".into(),
            ),
        ],
        Some(br#"{"build": 4821, "force": true}"#.to_vec()),
        Duration::from_secs(5),
    )
    .await?;
    println!(
        "   {} {}",
        forged.status,
        String::from_utf8_lossy(&forged.body)
    );

    stage(7, "the agent's status");
    print!(
        "{}",
        crate::cli::status_view::describe(&status, jiff::Timestamp::now())
    );
    println!(
        "   deployed path matches Hydra's out path: {}",
        status["deployed"]["path"] == json!(newest)
    );

    if keep {
        try_it(&agent_url, &secret, &hydra.url());
        // Until Ctrl-C; a failure to listen for it ends the demo as if it came.
        let _ = tokio::signal::ctrl_c().await;
        println!("\nstopping the agent and the simulated Hydra");
    }
    shutdown.cancel();
    running.wait(shutdown).await.map_err(|e| e.to_string())?;
    println!(
        "\ndemo finished: the agent upgraded to build 4830 (through the stand-in) and refused everything else."
    );
    Ok(())
}

/// What to try against the demo while it stays up.
fn try_it(agent: &str, secret: &Path, hydra: &str) {
    let me = std::env::current_exe()
        .ok()
        .filter(|p| p.is_absolute())
        .map_or("nixos-hydra-upgrade".into(), |p| p.display().to_string());
    let key = secret.display();
    println!(
        "\n== the agent ({agent}) and the simulated Hydra ({hydra}) keep running; try, in \
         another terminal:\n\
         \n  {me} status --url {agent}\
         \n  {me} status --url {agent} --follow\
         \n  {me} trigger --url {agent} --secret-file {key} --build 4821 --force --wait\
         \n  {me} trigger --url {agent} --secret-file {key} --build 4822\
         \n  curl -s {agent}/v1/status\
         \n  curl -s {agent}/metrics\
         \n\nCtrl-C stops both."
    );
}

fn stage(n: u32, text: &str) {
    println!("\n== {n}. {text}");
}

fn sim_build(id: u64, out_path: String) -> crate::hydra::sim::SimBuild {
    crate::hydra::sim::SimBuild {
        id,
        project: PROJECT.into(),
        jobset: JOBSET.into(),
        job: JOB.into(),
        finished: true,
        buildstatus: Some(0),
        out_path,
        evals: vec![913],
    }
}

/// Writes a RunCommand payload the way Hydra does and runs the real sender on it.
async fn send(
    dir: &Path,
    secret: &Path,
    agent: &str,
    build: u64,
    status: i64,
) -> Result<(), String> {
    let payload = json!({
        "event": "buildFinished", "build": build, "finished": true, "buildStatus": status,
        "timestamp": 1_767_225_600, "startTime": 1_767_225_790, "stopTime": 1_767_226_412,
        "project": PROJECT, "jobset": JOBSET, "job": JOB, "system": "x86_64-linux",
        "drvPath": "/nix/store/00000000000000000000000000000000-demo.drv", "nixName": "nixos-system-web1",
        "homepage": null, "description": null, "license": null,
        "outputs": [], "products": [], "metrics": []
    });
    let file = dir.join(format!("hydra-{build}.json"));
    std::fs::write(&file, payload.to_string()).map_err(|e| e.to_string())?;
    let report = notify(NotifyOptions {
        urls: vec![agent.into()],
        routes: vec![],
        secret_file: secret.into(),
        hydra_json: Some(file),
        hand_back: Duration::from_secs(20),
        deadline: Duration::from_secs(20),
        // The demo's own directory: an agent it cannot reach is reported, no retrier is started.
        spool: Some(dir.join("spool")),
    })
    .await
    .map_err(|e| e.to_string())?;
    for line in report.lines {
        println!("   notify: {line}");
    }
    Ok(())
}

async fn wait_for_attempt(endpoint: &Endpoint, build: u64) -> Result<Value, String> {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(20) {
        let status = crate::cli::follow::fetch_status(endpoint)
            .await
            .map_err(|e| e.to_string())?;
        if status["last_attempt"]["build"] == json!(build) {
            return Ok(status);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!(
        "the agent did not finish build {build} within 20 s"
    ))
}
