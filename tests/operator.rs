//! An operator's first hour through the real binary: error messages (golden files in
//! tests/golden/), the default config path, trigger's sentence and --json, status against a
//! hostile agent, status --follow against a real one, NO_COLOR, completions and man pages,
//! demo --keep.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{BIN, Rig};
use tokio::io::{AsyncBufReadExt, BufReader};

fn run_with(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let output = std::process::Command::new(BIN)
        .args(args)
        .env_remove("NIXOS_HYDRA_UPGRADE_CONFIG")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn run(args: &[&str]) -> (i32, String, String) {
    run_with(args, &[])
}

/// `run` without blocking the test's runtime, which serves the simulated Hydra.
async fn run_async(args: &[&str]) -> (i32, String, String) {
    let output = tokio::process::Command::new(BIN)
        .args(args)
        .env_remove("NIXOS_HYDRA_UPGRADE_CONFIG")
        .output()
        .await
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Compares `actual` with tests/golden/`name` after putting the placeholders in.
fn golden(name: &str, actual: &str, replace: &[(&str, &str)]) {
    let file = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    let mut expected = std::fs::read_to_string(&file).unwrap();
    for (from, to) in replace {
        expected = expected.replace(from, to);
    }
    assert_eq!(actual, expected, "golden file {name}");
}

const MINIMAL: &str = "[hydra]\ninstance = \"https://hydra.example.com\"\nproject = \"p\"\njobset = \"j\"\n\
                       [system]\nnixos_rebuild = \"/bin/sh\"\n";

/// Writes `agent.toml` with `top` (top-level keys) and `rest` (sections after the minimal ones).
fn config(dir: &Path, top: &str, rest: &str) -> String {
    let path = dir.join("agent.toml");
    std::fs::write(
        &path,
        format!("host = \"web1\"\n{top}\ndates = \"\"\n{MINIMAL}{rest}"),
    )
    .unwrap();
    path.to_str().unwrap().to_owned()
}

#[test]
fn config_errors_name_the_key_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let cases = [
        ("unknown-key.txt", "dry_rn = true", ""),
        (
            "empty-hook.txt",
            "",
            "[hooks]\non_success = [\" \", \"x\"]\n",
        ),
        (
            "missing-program.txt",
            "",
            "[hooks]\non_success = [\"no-such-program-here\"]\non_failure = [\"/nonexistent/page-me\"]\n",
        ),
    ];
    for (name, top, rest) in cases {
        let file = config(dir.path(), top, rest);
        let (code, out, err) = run(&["check-config", "--config", &file]);
        assert_eq!(code, 2, "{name}: {out}{err}");
        golden(name, &err, &[("{DIR}", d)]);
    }
    // "dates" is written again after the default "" (TOML refuses a key twice): its own file.
    let file = dir.path().join("agent.toml");
    std::fs::write(
        &file,
        format!("host = \"web1\"\ndates = \"2020-01-01\"\n{MINIMAL}"),
    )
    .unwrap();
    let (code, _, err) = run(&["check-config", "--config", file.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    golden("dates-never.txt", &err, &[("{DIR}", d)]);

    // --skip-programs (a Nix build checks the config away from the host).
    let file = config(
        dir.path(),
        "",
        "[hooks]\non_failure = [\"/nonexistent/page-me\"]\n",
    );
    let (code, _, err) = run(&["check-config", "--skip-programs", "--config", &file]);
    assert_eq!(code, 0, "{err}");
    // A warning alone leaves the config valid.
    let file = config(
        dir.path(),
        "",
        "[hooks]\non_success = [\"no-such-program-here\"]\n",
    );
    let (code, out, err) = run(&["check-config", "--config", &file]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("valid") && err.contains("warning: "),
        "{out}{err}"
    );
}

#[test]
fn calendar_and_key_file_errors_name_the_bad_part() {
    let (code, _, err) = run(&["calendar", "weekly Mars/Olympus"]);
    assert_eq!(code, 2);
    golden("calendar-zone.txt", &err, &[]);

    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key");
    std::fs::write(&key, "whsec_not base64!\n").unwrap();
    // Owner-only, as a key should be: the golden text is the malformed-key error alone.
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let (code, _, err) = run(&[
        "trigger",
        "--url",
        "http://127.0.0.1:9",
        "--secret-file",
        key.to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    golden(
        "key-file.txt",
        &err,
        &[("{DIR}", dir.path().to_str().unwrap())],
    );
}

#[test]
fn a_dead_agent_is_said_plainly() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let url = format!("http://{closed}");
    let (code, _, err) = run(&["status", "--url", &url]);
    assert_eq!(code, 1);
    golden("dead-agent.txt", &err, &[("{URL}", &url)]);
}

#[test]
fn status_finds_the_agent_through_the_config() {
    // Nothing listens there: the error shows which address the config led to.
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let file = config(dir.path(), &format!("listen = \"0.0.0.0:{port}\""), "");
    let expected = format!("cannot reach the agent at http://127.0.0.1:{port}/v1/status");
    let (code, _, err) = run_with(&["status"], &[("NIXOS_HYDRA_UPGRADE_CONFIG", &file)]);
    assert_eq!(code, 1);
    assert!(err.contains(&expected), "{err}");
    let (_, _, err) = run(&["status", "--config", &file]);
    assert!(err.contains(&expected), "{err}");
    // An explicit config that does not exist is an error; check-config names the way out.
    let (code, _, err) = run(&["check-config", "--config", "/nonexistent/agent.toml"]);
    assert_eq!(code, 2);
    assert!(err.contains("/nonexistent/agent.toml"), "{err}");
    let (code, _, err) = run_with(&["check"], &[]);
    if !Path::new("/etc/nixos-hydra-upgrade/config.toml").exists() {
        assert_eq!(code, 2);
        assert!(
            err.contains("/etc/nixos-hydra-upgrade/config.toml")
                && err.contains("give --config FILE or set NIXOS_HYDRA_UPGRADE_CONFIG"),
            "{err}"
        );
    }
}

/// A loopback server that answers every request with `body`: stands in for a broken or hostile
/// agent, which a real one cannot be made into.
fn hostile_agent(body: String) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming().take(8) {
            let Ok(mut stream) = stream else { continue };
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
                 connection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    url
}

#[test]
fn status_and_trigger_escape_what_a_hostile_agent_sends() {
    let evil = "x\u{1b}]0;pwned\u{7}\u{1b}[2J\rforged\nphase           idle\u{9b}";
    let body = serde_json::json!({
        "agent": {"host": evil, "job": evil, "hydra": evil, "version": evil, "dry_run": false},
        "phase": evil, "current_system": evil,
        "deployed": {"build": 1, "path": evil, "at": evil},
        "last_attempt": {"build": 1, "source": evil, "outcome": evil, "reboot": evil, "error": evil,
            "checks": [{"name": evil, "kind": evil, "passed": false, "detail": evil}]},
        "waiting": {"reason": "gate", "gate": evil, "detail": evil},
        "last_poll": {"at": evil, "result": evil}, "next_poll": evil, "state_error": evil,
        "status": "queued", "build": evil, "reason": evil,
    })
    .to_string();
    let url = hostile_agent(body);
    let (code, out, err) = run(&["status", "--url", &url]);
    assert_eq!(code, 0, "{err}");
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key");
    std::fs::write(
        &key,
        format!("{}\n", nixos_hydra_upgrade::signature::generate_secret()),
    )
    .unwrap();
    let (code, trigger, err) = run(&[
        "trigger",
        "--url",
        &url,
        "--secret-file",
        key.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    for text in [&out, &trigger] {
        for bad in ['\u{1b}', '\u{7}', '\r', '\u{9b}'] {
            assert!(!text.contains(bad), "{bad:?} in {text:?}");
        }
        assert!(text.contains("\\u{1b}]0;pwned"), "{text}");
    }
    assert!(
        !out.lines().any(|l| l.starts_with("phase           idle")),
        "{out}"
    );
    assert_eq!(trigger.lines().count(), 1, "{trigger}");
}

#[tokio::test]
async fn trigger_says_a_sentence_or_json() {
    let rig = Rig::start("").await;
    rig.build(70);
    let key = rig.path("secret");
    let key = key.to_str().unwrap();
    let (code, out, err) = run_async(&["trigger", "--url", &rig.url, "--secret-file", key]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        out.trim(),
        format!("{}/v1/upgrade: 202 queued build 70", rig.url),
        "{out}"
    );
    rig.wait_for_attempt(70).await;
    let (code, out, _) =
        run_async(&["trigger", "--url", &rig.url, "--secret-file", key, "--json"]).await;
    assert_eq!(code, 0, "{out}");
    let answer: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(answer["status"], "current", "{out}");
    assert_eq!(answer["build"], 70);
}

#[tokio::test]
async fn status_follow_prints_each_change_until_interrupted() {
    let rig = Rig::start("").await;
    rig.build(90);
    // The fake nixos-rebuild takes 2 s: long enough for `activating` to be seen.
    rig.set("delay", "2");
    let mut follow = tokio::process::Command::new(BIN)
        .args(["status", "--follow", "--url", &rig.url])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(follow.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    while !seen
        .iter()
        .any(|l: &String| l.ends_with("following; Ctrl-C stops"))
    {
        seen.push(lines.next_line().await.unwrap().expect("status printed"));
    }
    let (code, _) = rig.post("{}").await;
    assert_eq!(code, 202);
    let started = Instant::now();
    while !seen.iter().any(|l| l.contains("finished: build 90")) {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{}",
            seen.join("\n")
        );
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .unwrap()
            .unwrap()
            .expect("follow ended early");
        seen.push(line);
    }
    let text = seen.join("\n");
    assert!(
        text.contains("activating: build 90 from manual")
            && text.contains("finished: build 90 from manual: upgraded"),
        "{text}"
    );
    assert!(
        text.contains("agent           web1 (nixos-hydra-upgrade ")
            && text.contains("job             infra:main:web1 on http://127.0.0.1:"),
        "{text}"
    );
    let pid = nix::unistd::Pid::from_raw(follow.id().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), follow.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn health_check_lines_carry_the_build() {
    let rig = Rig::start(
        "[[health_checks.pre]]\nkind = \"command\"\nname = \"probe\"\nargv = [\"/bin/true\"]\n",
    )
    .await;
    rig.build(95);
    let (code, _) = rig.post("{}").await;
    assert_eq!(code, 202);
    rig.wait_for_attempt(95).await;
    let logs = rig.logs();
    let checks: Vec<_> = logs.iter().filter(|l| l["check"] == "probe").collect();
    assert!(!checks.is_empty(), "no health-check line in {logs:?}");
    for line in checks {
        assert_eq!(line["build"], 95, "{line}");
    }
    let queued = logs
        .iter()
        .find(|l| l["message"] == "upgrade request answered")
        .expect("answer logged");
    assert!(
        queued["answer"]
            .as_str()
            .unwrap()
            .starts_with("queued build 95 /nix/store/"),
        "Display, not Debug: {queued}"
    );
    for line in &logs {
        for (key, value) in line.as_object().unwrap() {
            let text = value.to_string();
            assert!(
                !text.contains("Some(") && !text.contains("None") && !text.contains(" {"),
                "{key} looks like Rust Debug: {line}"
            );
        }
    }
    let started = logs
        .iter()
        .find(|l| l["message"] == "attempt started")
        .unwrap();
    assert_eq!(started["source"], "manual");
}

#[test]
fn completions_and_man_pages_are_generated() {
    let assets = Path::new(env!("OUT_DIR")).join("assets");
    for (file, needle) in [
        ("completions/nixos-hydra-upgrade.bash", "check-config"),
        ("completions/_nixos-hydra-upgrade", "--follow"),
        ("completions/nixos-hydra-upgrade.fish", "secret-file"),
        ("man/nixos-hydra-upgrade.1", ".TH nixos-hydra-upgrade"),
        ("man/nixos-hydra-upgrade-status.1", "\\-\\-follow"),
        ("man/nixos-hydra-upgrade-trigger.1", "\\-\\-json"),
    ] {
        let text =
            std::fs::read_to_string(assets.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert!(text.contains(needle), "{file} lacks {needle:?}");
    }
    let mut pages: Vec<String> = std::fs::read_dir(assets.join("man"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    pages.sort();
    use clap::CommandFactory;
    let mut expected: Vec<String> = nixos_hydra_upgrade::cli::Cli::command()
        .get_subcommands()
        .map(|s| format!("nixos-hydra-upgrade-{}.1", s.get_name()))
        .chain(["nixos-hydra-upgrade.1".to_owned()])
        .collect();
    expected.sort();
    assert_eq!(pages, expected, "one page per subcommand, none for `help`");
}

/// Runs `args` under a pseudo-terminal (util-linux `script`), where colour is on unless
/// NO_COLOR says otherwise.
fn on_a_terminal(args: &str, no_color: bool) -> String {
    let mut command = std::process::Command::new("script");
    command
        .args(["-qec", &format!("{BIN} {args}"), "/dev/null"])
        .env_remove("NO_COLOR")
        .env("TERM", "xterm-256color");
    if no_color {
        command.env("NO_COLOR", "1");
    }
    let output = command
        .output()
        .expect("util-linux `script` is needed to give the binary a terminal");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn no_color_is_honoured() {
    let colored = on_a_terminal("status --help", false);
    assert!(
        colored.contains('\u{1b}'),
        "colour on a terminal: {colored:?}"
    );
    let plain = on_a_terminal("status --help", true);
    assert!(plain.contains("Usage"), "{plain}");
    assert!(!plain.contains('\u{1b}'), "NO_COLOR: {plain:?}");
    let plain = on_a_terminal("statsu", true);
    assert!(
        plain.contains("status") && !plain.contains('\u{1b}'),
        "did-you-mean without colour: {plain:?}"
    );
}

#[test]
fn every_subcommand_and_option_has_help_and_an_example() {
    let (_, top, _) = run(&["--help"]);
    let subcommands: Vec<&str> = top
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|s| *s != "help")
        .collect();
    assert!(subcommands.len() >= 8, "{top}");
    for sub in subcommands {
        // `-h`: the short form, one line per option.
        let (code, out, _) = run(&[sub, "-h"]);
        assert_eq!(code, 0, "{sub}");
        assert!(out.contains("Example"), "{sub}: no example\n{out}");
        // Every option line has text after its name.
        for line in out
            .lines()
            .skip_while(|l| !l.starts_with("Options:"))
            .skip(1)
            .take_while(|l| !l.is_empty())
        {
            let line = line.trim();
            if line.starts_with('-') {
                let words = line.split_whitespace().count();
                assert!(words >= 3, "{sub}: option without help: {line:?}");
            }
        }
    }
    let (code, _, err) = run(&["staus"]);
    assert_eq!(code, 2);
    assert!(err.contains("'status'"), "did you mean: {err}");
}

#[tokio::test]
async fn demo_keep_stays_up_until_interrupted() {
    let mut demo = tokio::process::Command::new(BIN)
        .args(["demo", "--keep"])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(demo.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    let started = Instant::now();
    while !seen
        .iter()
        .any(|l: &String| l.contains("Ctrl-C stops both"))
    {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{}",
            seen.join("\n")
        );
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .unwrap()
            .unwrap()
            .expect("demo ended before it offered commands");
        seen.push(line);
    }
    let text = seen.join("\n");
    let status_line = seen
        .iter()
        .find(|l| l.contains(" status --url ") && !l.contains("--follow"))
        .unwrap_or_else(|| panic!("no status command in {text}"));
    let url = status_line.split_whitespace().last().unwrap().to_owned();
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    let (code, out, err) = run_async(&["status", "--url", &url]).await;
    assert_eq!(code, 0, "the agent stays up: {err}");
    assert!(out.contains("build 4830"), "{out}");
    let trigger = seen
        .iter()
        .find(|l| l.contains(" trigger ") && l.contains("--wait"))
        .unwrap_or_else(|| panic!("no trigger command in {text}"));
    let args: Vec<&str> = trigger.split_whitespace().skip(1).collect();
    let (code, out, err) = run_async(&args).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("build 4821"), "{out}");
    let pid = nix::unistd::Pid::from_raw(demo.id().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), demo.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0));
}
