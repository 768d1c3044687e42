//! Issue 14 end to end, with the real agent binary: fetch first (progress, a failure that names
//! the path, a retry), switch inhibitors turning a switch into boot plus the reboot decision, a
//! deferred reboot cancelled, the activation window, and each gate kind closed then open.
//! Fakes stand in for what needs NixOS: `nix` (prints what `nix build --log-format
//! internal-json` prints while substituting), `loginctl`, `nmcli`, and the rig's nixos-rebuild.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use common::Rig;
use serde_json::Value;

const DEP: &str = "/nix/store/11111111111111111111111111111111-glibc-2.40";

fn script(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// The fake nix: `build` records its target and prints a substitution in internal-json; it fails
/// as nix does when `fetch-fail` exists and pauses when `fetch-delay` exists.
fn fake_nix(rig: &Rig) {
    let progress = [
        r#"{"action":"start","id":1,"level":4,"parent":0,"text":"","type":102}"#.to_owned(),
        r#"{"action":"start","id":2,"level":0,"parent":0,"text":"","type":103}"#.to_owned(),
        r#"{"action":"result","fields":[100,52428800],"id":1,"type":106}"#.to_owned(),
        r#"{"action":"result","fields":[0,2,0,0],"id":2,"type":105}"#.to_owned(),
        format!(
            r#"{{"action":"start","fields":["{DEP}","https://cache.example","local"],"id":3,"level":3,"parent":0,"text":"copying path","type":100}}"#
        ),
        r#"{"action":"result","fields":[31457280,31457280,0,0],"id":3,"type":105}"#.to_owned(),
        r#"{"action":"stop","id":3}"#.to_owned(),
        r#"{"action":"result","fields":[1,2,0,0],"id":2,"type":105}"#.to_owned(),
    ]
    .iter()
    .map(|l| format!("  printf '%s\\n' '@nix {l}' >&2\n"))
    .collect::<String>();
    script(
        &rig.path("nix"),
        &format!(
            r#"#!/bin/sh
dir=$(dirname "$0")
case "$*" in
*" build "*)
  for last; do :; done
  echo "nix build $last" >> "$dir/calls"
{progress}  if [ -f "$dir/fetch-fail" ]; then
    printf '%s\n' "@nix {{\"action\":\"msg\",\"level\":0,\"msg\":\"error: path '$last' is required, but there is no substituter that can build it\"}}" >&2
    exit 1
  fi
  [ -f "$dir/fetch-delay" ] && sleep "$(cat "$dir/fetch-delay")"
  exit 0 ;;
*) echo "nix diff" >> "$dir/calls" ;;
esac
"#
        ),
    );
}

/// Restarts the agent with `system` lines added to its `[system]` table and `tail` after it.
async fn respawn(rig: &mut Rig, system: &str, tail: &str) {
    // Its exit code is restart.rs's business; this only needs it gone.
    rig.stop().await;
    let text = format!("{}{system}\n{tail}", rig.config_text());
    std::fs::write(rig.path("agent.toml"), text).unwrap();
    rig.spawn_with_written_config().await;
}

/// Polls the status until `ready` holds; the status then.
async fn status_until(rig: &Rig, what: &str, ready: impl Fn(&Value) -> bool) -> Value {
    let started = Instant::now();
    loop {
        let status = rig.status().await;
        if ready(&status) {
            return status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{what}: never seen in {status:#}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn metrics(rig: &Rig) -> String {
    reqwest::get(format!("{}/metrics", rig.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// A window that excludes now (the agent runs with TZ=UTC): two to three hours ahead.
fn window_not_now() -> String {
    let hour = jiff::Timestamp::now()
        .to_zoned(jiff::tz::TimeZone::UTC)
        .hour();
    let at = |h: i8| format!("{:02}:00", (h + 24) % 24);
    format!(
        "{{ lower = \"{}\", upper = \"{}\" }}",
        at(hour + 2),
        at(hour + 3)
    )
}

#[tokio::test]
async fn fetch_first_shows_progress_names_a_failed_path_and_retries() {
    let rig = Rig::start("").await;
    fake_nix(&rig);
    let target = rig.build(60);
    rig.set("fetch-fail", "");
    assert_eq!(rig.post(r#"{"build": 60}"#).await.0, 202);
    let failed = rig.wait_for_attempt(60).await;
    let attempt = &failed["last_attempt"];
    assert_eq!(attempt["outcome"], "failed", "{failed:#}");
    let error = attempt["error"].as_str().unwrap();
    assert_eq!(
        error,
        format!(
            "fetching {target} failed at {target}: path '{target}' is required, but there is no substituter that can build it"
        )
    );
    assert_eq!(
        rig.calls(),
        [format!("nix build {target}")],
        "nothing activated after a failed fetch"
    );

    // The next notification retries; progress shows in /v1/status while nix runs.
    std::fs::remove_file(rig.path("fetch-fail")).unwrap();
    rig.set("fetch-delay", "1");
    assert_eq!(rig.post(r#"{"build": 60}"#).await.0, 202);
    let fetching = status_until(&rig, "fetch progress", |s| {
        s["phase"] == "fetching" && s["fetch"]["paths_done"] == 1
    })
    .await;
    let fetch = &fetching["fetch"];
    assert_eq!(fetch["target"], target.as_str());
    assert_eq!(fetch["paths_expected"], 2);
    assert_eq!(fetch["bytes_done"], 31_457_280);
    assert_eq!(fetch["bytes_expected"], 52_428_800);
    assert_eq!(fetch["current"], DEP);
    let done = rig.wait_for_history(2).await;
    assert_eq!(done["last_attempt"]["outcome"], "upgraded", "{done:#}");
    assert!(done["fetch"].is_null(), "no fetch object once it ended");
    assert_eq!(
        rig.calls(),
        [
            format!("nix build {target}"),
            format!("nix build {target}"),
            "nix diff".to_owned(),
            format!("nixos-rebuild switch --store-path {target} --no-reexec"),
        ]
    );
    let logs = rig.logs();
    assert!(
        logs.iter()
            .any(|l| l["message"] == "fetching path" && l["path"] == DEP && l["build"] == 60),
        "each path is logged as it starts"
    );
    assert!(
        logs.iter()
            .any(|l| l["message"] == "fetched 1/2 paths, 30.0/50.0 MiB"),
        "paths and bytes done are logged"
    );
}

#[tokio::test]
async fn an_inhibitor_change_installs_for_boot_and_a_later_activation_cancels_the_reboot() {
    let mut rig = Rig::start(&format!(
        "allow_reboot = true\nreboot_window = {}",
        window_not_now()
    ))
    .await;
    let store = rig.path("store");
    respawn(
        &mut rig,
        &format!("store_dir = \"{}\"", store.display()),
        "",
    )
    .await;
    let inhibitors = |dir: &Path, systemd: &str| {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(
            dir.join("switch-inhibitors"),
            format!(r#"{{"systemd": "/nix/store/{systemd}-systemd"}}"#),
        )
        .unwrap();
    };
    // The running system, with its inhibitors.
    inhibitors(&rig.path("systems/running"), "a");
    std::fs::remove_file(rig.path("current-system")).unwrap();
    std::os::unix::fs::symlink(rig.path("systems/running"), rig.path("current-system")).unwrap();

    // Build 70 changes systemd: installed for the next boot, the reboot waits for its window.
    let t70 = rig.build(70);
    let name70 = Path::new(&t70).file_name().unwrap();
    inhibitors(&store.join(name70), "b");
    inhibitors(&rig.path("systems").join(name70), "b");
    assert_eq!(rig.post(r#"{"build": 70}"#).await.0, 202);
    let status = rig.wait_for_attempt(70).await;
    assert_eq!(status["last_attempt"]["outcome"], "upgraded", "{status:#}");
    assert_eq!(status["last_attempt"]["reboot"], "deferred");
    assert_eq!(
        rig.calls(),
        [format!("nixos-rebuild boot --store-path {t70} --no-reexec")]
    );
    assert_eq!(status["reboot_needed"], true);
    assert_eq!(
        status["reboot_needed_because"],
        "switch inhibitors (systemd: /nix/store/a-systemd -> /nix/store/b-systemd)"
    );
    assert!(rig.logs().iter().any(|l| {
        l["message"]
            == "switch inhibitors changed: installing for the next boot instead of switching"
            && l["inhibitors"] == "systemd: /nix/store/a-systemd -> /nix/store/b-systemd"
    }));
    assert!(
        metrics(&rig)
            .await
            .contains("nixos_hydra_upgrade_reboot_deferred 1")
    );

    // Build 71 keeps the running systemd: switched live, and the deferred reboot is cancelled.
    let t71 = rig.build(71);
    inhibitors(&store.join(Path::new(&t71).file_name().unwrap()), "a");
    assert_eq!(rig.post(r#"{"build": 71}"#).await.0, 202);
    let status = rig.wait_for_attempt(71).await;
    assert_eq!(status["last_attempt"]["outcome"], "upgraded", "{status:#}");
    assert_eq!(status["last_attempt"]["reboot"], "none");
    assert_eq!(
        rig.calls()[1..],
        [
            format!("nixos-rebuild boot --store-path {t71} --no-reexec"),
            format!("nixos-rebuild switch --store-path {t71} --no-reexec"),
        ]
    );
    assert_eq!(status["reboot_needed"], false);
    // Logged right after the attempt is recorded, so it may trail the status by a moment.
    let started = Instant::now();
    while !rig.logs().iter().any(|l| {
        l["message"] == "deferred reboot cancelled: the installed system boots what the host booted"
    }) {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no cancellation logged"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let text = metrics(&rig).await;
    assert!(
        text.contains("nixos_hydra_upgrade_reboot_deferred 0"),
        "{text}"
    );
    assert!(
        text.contains("nixos_hydra_upgrade_reboot_needed 0"),
        "{text}"
    );
}

#[tokio::test]
async fn outside_the_window_a_switch_waits_and_a_newer_build_replaces_it() {
    let rig = Rig::start(&format!("activation_window = {}", window_not_now())).await;
    rig.build(80);
    rig.build(81);
    assert_eq!(rig.post(r#"{"build": 80}"#).await.0, 202);
    let status = status_until(&rig, "waiting for the window", |s| s["phase"] == "waiting").await;
    let waiting = &status["waiting"];
    assert_eq!(waiting["reason"], "window", "{status:#}");
    assert!(
        waiting["detail"]
            .as_str()
            .unwrap()
            .starts_with("outside the activation window "),
        "{waiting}"
    );
    let since: jiff::Timestamp = waiting["since"].as_str().unwrap().parse().unwrap();
    let until: jiff::Timestamp = waiting["until"].as_str().unwrap().parse().unwrap();
    assert!(until > since, "{waiting}");
    let text = metrics(&rig).await;
    assert!(
        text.contains("nixos_hydra_upgrade_waiting{reason=\"window\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("nixos_hydra_upgrade_waiting{reason=\"gate\"} 0"),
        "{text}"
    );

    // A newer build replaces the waiting one, which leaves no attempt behind.
    assert_eq!(rig.post(r#"{"build": 81}"#).await.0, 202);
    let status = status_until(&rig, "81 waiting", |s| {
        s["phase"] == "waiting" && s["running"]["build"] == 81 && s["pending"].is_null()
    })
    .await;
    assert_eq!(status["history"], serde_json::json!([]), "{status:#}");
    assert!(
        rig.calls().is_empty(),
        "nothing activated outside the window"
    );
}

#[tokio::test]
async fn a_boot_only_activation_ignores_the_window() {
    let rig = Rig::start(&format!(
        "operation = \"boot\"\nactivation_window = {}",
        window_not_now()
    ))
    .await;
    let target = rig.build(85);
    assert_eq!(rig.post(r#"{"build": 85}"#).await.0, 202);
    let status = rig.wait_for_attempt(85).await;
    assert_eq!(status["last_attempt"]["outcome"], "upgraded", "{status:#}");
    assert_eq!(
        rig.calls(),
        [format!(
            "nixos-rebuild boot --store-path {target} --no-reexec"
        )]
    );
}

#[tokio::test]
async fn each_gate_kind_defers_while_closed_and_opens() {
    let mut rig = Rig::start("").await;
    let dir = rig.dir.path().to_owned();
    // loginctl (systemd 252's columns) and nmcli stand in for logind and NetworkManager.
    script(
        &rig.path("loginctl"),
        "#!/bin/sh\ndir=$(dirname \"$0\")\ncase \"$1\" in\n\
         list-sessions) [ -f \"$dir/sessions\" ] && echo '      2 1000 alice seat0 tty2' ;;\n\
         show-session) printf 'Id=2\\nName=alice\\nClass=user\\nState=active\\nTTY=tty2\\n' ;;\n\
         esac\nexit 0\n",
    );
    script(
        &rig.path("nmcli"),
        "#!/bin/sh\ndir=$(dirname \"$0\")\necho GENERAL.DEVICE:wwan0\n\
         if [ -f \"$dir/metered\" ]; then echo GENERAL.METERED:yes; else echo 'GENERAL.METERED:no (guessed)'; fi\n",
    );
    script(
        &rig.path("check"),
        "#!/bin/sh\n[ ! -f \"$(dirname \"$0\")/busy\" ]\n",
    );
    for flag in ["sessions", "metered", "busy"] {
        rig.set(flag, "");
    }
    let system = format!(
        "loginctl = \"{}\"\nnmcli = \"{}\"",
        dir.join("loginctl").display(),
        dir.join("nmcli").display()
    );
    let gates = format!(
        "[[gates]]\nkind = \"no-sessions\"\nrecheck = \"1s\"\n\
         [[gates]]\nkind = \"not-metered\"\nrecheck = \"1s\"\n\
         [[gates]]\nkind = \"command\"\nargv = [\"{}\"]\nrecheck = \"1s\"\n",
        dir.join("check").display()
    );
    respawn(&mut rig, &system, &gates).await;
    let target = rig.build(90);
    assert_eq!(rig.post(r#"{"build": 90}"#).await.0, 202);

    let check = format!("command {}", dir.join("check").display());
    let steps = [
        (
            "sessions",
            "no-sessions",
            "gate no-sessions: 1 user session(s): alice on tty2".to_owned(),
        ),
        (
            "metered",
            "not-metered",
            "gate not-metered: metered: wwan0 (yes)".to_owned(),
        ),
        (
            "busy",
            check.as_str(),
            format!(
                "gate {check}: {}: exited with status 1",
                dir.join("check").display()
            ),
        ),
    ];
    for (flag, gate, detail) in steps {
        let status = status_until(&rig, gate, |s| s["waiting"]["gate"] == gate).await;
        assert_eq!(status["phase"], "waiting");
        assert_eq!(status["waiting"]["reason"], "gate");
        assert_eq!(status["waiting"]["detail"], detail.as_str());
        assert!(
            metrics(&rig)
                .await
                .contains("nixos_hydra_upgrade_waiting{reason=\"gate\"} 1")
        );
        assert!(
            rig.calls().is_empty(),
            "nothing runs while {gate} is closed"
        );
        std::fs::remove_file(dir.join(flag)).unwrap();
    }
    let status = rig.wait_for_attempt(90).await;
    assert_eq!(status["last_attempt"]["outcome"], "upgraded", "{status:#}");
    assert!(status["waiting"].is_null());
    assert_eq!(
        rig.calls(),
        [format!(
            "nixos-rebuild switch --store-path {target} --no-reexec"
        )]
    );
}
