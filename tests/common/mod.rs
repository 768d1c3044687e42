//! Shared test rig: the real agent binary against the in-process Hydra simulator, with a fake
//! `nixos-rebuild` that stands in for the real one (which needs NixOS): it records its argv and
//! moves the fake `current_system` / `system_profile` symlinks the way a switch or boot would.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nixos_hydra_upgrade::hydra::sim::HydraSim;
use nixos_hydra_upgrade::signature::{Keys, generate_secret};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub const PROJECT: &str = "infra";
pub const JOBSET: &str = "main";
pub const JOB: &str = "web1";
pub const BIN: &str = env!("CARGO_BIN_EXE_nixos-hydra-upgrade");

/// The fake nixos-rebuild: argv to `calls`, optional delay and exit code from files the test
/// writes. The switch itself runs in `switch` (below), started in a session of its own and
/// without the rig's cgroup mark, as switch-to-configuration runs in a transient unit: killing
/// the agent like systemd does (`kill_like_systemd`) kills nixos-rebuild, never a started switch.
const FAKE_REBUILD: &str = r#"#!/bin/sh
dir=$(dirname "$0")
echo "nixos-rebuild $*" >> "$dir/calls"
op=$1; shift
path=
while [ $# -gt 0 ]; do
  case "$1" in
    --store-path) path=$2; shift ;;
    --flake) path=$(cat "$dir/flake-result" 2>/dev/null || echo "$2"); shift ;;
  esac
  shift
done
[ -f "$dir/delay" ] && sleep "$(cat "$dir/delay")"
code=$(cat "$dir/exit-code" 2>/dev/null || echo 0)
[ "$code" = 0 ] || exit "$code"
exec 9>"$dir/switch.lock"
flock 9
setsid -w env -u RIG_CGROUP "$dir/switch" "$op" "$path" || exit 1
exit 0
"#;

/// The switch: holds the switch lock (inherited fd 9, flock, as switch-to-configuration holds
/// it) for `switch-time` seconds, then moves the symlinks the way a switch or boot does.
const FAKE_SWITCH: &str = r#"#!/bin/sh
dir=$(dirname "$0")
op=$1; path=$2
touch "$dir/switching"
[ -f "$dir/switch-time" ] && sleep "$(cat "$dir/switch-time")"
case "$op" in
  switch|test) ln -sfn "$path" "$dir/current-system" ;;
esac
case "$op" in
  switch|boot)
    gen="$dir/systems/$(basename "$path")"
    mkdir -p "$gen"
    ln -sfn "$dir/kernels/$(cat "$dir/next-kernel")" "$gen/kernel"
    ln -sfn "$dir/kernels/initrd" "$gen/initrd"
    ln -sfn "$dir/kernels/modules" "$gen/kernel-modules"
    ln -sfn "$gen" "$dir/system-profile" ;;
esac
rm -f "$dir/switching"
"#;

const FAKE_REBOOT: &str = "#!/bin/sh\necho \"reboot $*\" >> \"$(dirname \"$0\")/calls\"\n";

pub struct Rig {
    pub dir: tempfile::TempDir,
    pub hydra: HydraSim,
    pub keys: Keys,
    pub url: String,
    pub agent: Option<Child>,
    pub logs: Arc<Mutex<Vec<String>>>,
    /// Extra environment for the agent process (e.g. NOTIFY_SOCKET).
    pub env: Vec<(String, String)>,
    /// Marks the agent and everything it starts, as a cgroup would (`kill_like_systemd`).
    cgroup: String,
    extra_config: String,
}

impl Rig {
    /// A simulator with no builds and an agent configured with `extra` TOML lines.
    pub async fn start(extra: &str) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let hydra = HydraSim::start().await.unwrap();
        let secret = generate_secret();
        std::fs::write(dir.path().join("secret"), format!("{secret}\n")).unwrap();
        let keys = Keys::parse(&secret).unwrap();
        let root = dir.path();
        for sub in [
            "kernels/a",
            "kernels/b",
            "kernels/initrd",
            "kernels/modules",
            "systems/booted",
        ] {
            std::fs::create_dir_all(root.join(sub)).unwrap();
        }
        let link = |target: &str, name: &str| {
            std::os::unix::fs::symlink(root.join(target), root.join(name)).unwrap()
        };
        link("kernels/a", "systems/booted/kernel");
        link("kernels/initrd", "systems/booted/initrd");
        link("kernels/modules", "systems/booted/kernel-modules");
        link("systems/booted", "booted-system");
        link("systems/booted", "system-profile");
        std::os::unix::fs::symlink(
            "/nix/store/00000000000000000000000000000000-nixos-system-web1-old",
            root.join("current-system"),
        )
        .unwrap();
        std::fs::write(root.join("next-kernel"), "a").unwrap();
        write_script(&root.join("nixos-rebuild"), FAKE_REBUILD);
        write_script(&root.join("switch"), FAKE_SWITCH);
        write_script(&root.join("reboot"), FAKE_REBOOT);
        let mut rig = Rig {
            dir,
            hydra,
            keys,
            url: String::new(),
            agent: None,
            logs: Arc::default(),
            env: Vec::new(),
            cgroup: format!(
                "rig-{}-{}",
                std::process::id(),
                jiff::Timestamp::now().as_nanosecond()
            ),
            extra_config: extra.to_owned(),
        };
        rig.spawn().await;
        rig
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn config_text(&self) -> String {
        let root = self.dir.path();
        format!(
            "host = \"{JOB}\"\nlisten = \"127.0.0.1:0\"\nsecret_file = \"{}\"\nstate_dir = \"{}\"\ndates = \"\"\n{}\n\
             [hydra]\ninstance = \"{}\"\nproject = \"{PROJECT}\"\njobset = \"{JOBSET}\"\ntimeout = \"2s\"\n\
             [system]\nnixos_rebuild = \"{}\"\nreboot_command = [\"{}\", \"now\"]\ncurrent_system = \"{}\"\n\
             booted_system = \"{}\"\nsystem_profile = \"{}\"\nnix = \"{}\"\nswitch_lock = \"{}\"\n",
            root.join("secret").display(),
            root.join("state").display(),
            self.extra_config,
            self.hydra.url(),
            root.join("nixos-rebuild").display(),
            root.join("reboot").display(),
            root.join("current-system").display(),
            root.join("booted-system").display(),
            root.join("system-profile").display(),
            // Never the host's nix (it would reach for substituters): a fake, if a test writes one.
            root.join("nix").display(),
            root.join("switch.lock").display(),
        )
    }

    /// Starts the agent binary and waits for its "agent started" log line.
    pub async fn spawn(&mut self) {
        std::fs::write(self.path("agent.toml"), self.config_text()).unwrap();
        self.spawn_with_written_config().await;
    }

    /// `spawn` with whatever `agent.toml` holds now.
    pub async fn spawn_with_written_config(&mut self) {
        let config = self.path("agent.toml");
        let mut child = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(&config)
            .env("TZ", "UTC")
            .env("RIG_CGROUP", &self.cgroup)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let logs = self.logs.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let mut tx = Some(tx);
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(v) = serde_json::from_str::<Value>(&line)
                    && v["message"] == "agent started"
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(v["listen"].as_str().unwrap_or_default().to_owned());
                }
                logs.lock().unwrap().push(line);
            }
        });
        let listen = tokio::time::timeout(Duration::from_secs(15), rx)
            .await
            .expect("agent did not start within 15 s")
            .expect("agent exited before it started");
        self.url = format!("http://{listen}");
        self.agent = Some(child);
    }

    /// SIGKILL to the agent and to everything it started that still carries its mark, as
    /// systemd kills a unit's cgroup; a switch already started (its own unit) survives.
    pub async fn kill_like_systemd(&mut self) {
        let mut child = self.agent.take().unwrap();
        child.start_kill().unwrap();
        child.wait().await.unwrap();
        let mark = format!("RIG_CGROUP={}", self.cgroup);
        // A process in the middle of an exec can read as having no environment for a moment:
        // only several empty scans in a row mean everything marked is gone.
        let mut empty_scans = 0;
        for _ in 0..200 {
            let marked: Vec<i32> = std::fs::read_dir("/proc")
                .unwrap()
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
                .filter(|pid| {
                    std::fs::read(format!("/proc/{pid}/environ"))
                        .is_ok_and(|env| env.split(|&b| b == 0).any(|var| var == mark.as_bytes()))
                })
                .collect();
            if marked.is_empty() {
                empty_scans += 1;
                if empty_scans == 5 {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
                continue;
            }
            empty_scans = 0;
            for pid in marked {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("processes of the killed agent kept appearing");
    }

    /// SIGTERM, and the exit code.
    pub async fn stop(&mut self) -> i32 {
        let mut child = self.agent.take().unwrap();
        let pid = nix::unistd::Pid::from_raw(child.id().unwrap() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .expect("agent did not stop within 10 s of SIGTERM")
            .unwrap();
        status.code().unwrap_or(-1)
    }

    /// Adds a successful build of this host's job; its out path.
    pub fn build(&self, id: u64) -> String {
        self.hydra.succeed(id, PROJECT, JOBSET, JOB, id / 10)
    }

    /// POSTs `body` signed with the agent's key.
    pub async fn post(&self, body: &str) -> (u16, Value) {
        let id = nixos_hydra_upgrade::signature::generate_id();
        self.post_with(body, &id, jiff::Timestamp::now().as_second())
            .await
    }

    /// `post` for an owned body, for joining many at once.
    pub async fn post_owned(&self, body: String) -> (u16, Value) {
        self.post(&body).await
    }

    pub async fn post_with(&self, body: &str, id: &str, timestamp: i64) -> (u16, Value) {
        let signature = self.keys.sign(id, timestamp, body.as_bytes());
        self.post_raw(
            body.as_bytes().to_vec(),
            &[
                ("webhook-id", id.to_owned()),
                ("webhook-timestamp", timestamp.to_string()),
                ("webhook-signature", signature),
            ],
        )
        .await
    }

    pub async fn post_raw(&self, body: Vec<u8>, headers: &[(&str, String)]) -> (u16, Value) {
        let mut request = reqwest::Client::new()
            .post(format!("{}/v1/upgrade", self.url))
            .body(body);
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let body = response.json().await.unwrap_or(Value::Null);
        (status, body)
    }

    pub async fn status(&self) -> Value {
        reqwest::get(format!("{}/v1/status", self.url))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Waits until the newest attempt is for `build`; the status then.
    pub async fn wait_for_attempt(&self, build: u64) -> Value {
        let started = Instant::now();
        loop {
            let status = self.status().await;
            if status["last_attempt"]["build"] == json!(build) {
                return status;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "no attempt for {build}: {status:#}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Waits until the last attempt is `build` with `outcome`; the status then.
    pub async fn wait_for_outcome(&self, build: u64, outcome: &str) -> Value {
        self.wait_until(&format!("build {build} {outcome}"), |s| {
            s["last_attempt"]["build"] == json!(build) && s["last_attempt"]["outcome"] == outcome
        })
        .await
    }

    /// Polls `/v1/status` until `done` holds (20 s at most); the status then.
    pub async fn wait_until(&self, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let started = Instant::now();
        loop {
            let status = self.status().await;
            if done(&status) {
                return status;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "not {what} within 20 s: {status:#}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Waits until `history` holds `n` attempts; the status then.
    pub async fn wait_for_history(&self, n: usize) -> Value {
        let started = Instant::now();
        loop {
            let status = self.status().await;
            if status["history"].as_array().is_some_and(|h| h.len() >= n) {
                return status;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "fewer than {n} attempts: {status:#}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// The commands the fakes recorded, one per line.
    pub fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.path("calls"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    pub fn set(&self, name: &str, value: &str) {
        std::fs::write(self.path(name), value).unwrap();
    }

    pub fn logs(&self) -> Vec<Value> {
        self.logs
            .lock()
            .unwrap()
            .iter()
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|_| panic!("log line is not JSON: {l}"))
            })
            .collect()
    }
}

fn write_script(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A RunCommand payload as Hydra's `makeJsonPayload` writes it.
pub fn runcommand_payload(build: u64, status: i64, job: &str) -> String {
    json!({
        "event": "buildFinished", "build": build, "finished": true, "buildStatus": status,
        "timestamp": 1_767_225_600, "startTime": 1_767_225_790, "stopTime": 1_767_226_412,
        "project": PROJECT, "jobset": JOBSET, "job": job, "system": "x86_64-linux",
        "drvPath": "/nix/store/00000000000000000000000000000000-x.drv", "nixName": "nixos-system-web1",
        "homepage": null, "description": null, "license": null,
        "outputs": [{"name": "out", "path": "/nix/store/00000000000000000000000000000000-claimed"}],
        "products": [], "metrics": []
    })
    .to_string()
}
