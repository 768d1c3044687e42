//! Whether a switch (the agent's own, or anyone's: an admin, colmena, deploy-rs) replaced the
//! agent's binary or rendered config, so the agent must exit and let systemd (`Restart=always`,
//! `restartIfChanged = false`) start the new version; and the idle-time watcher for foreign ones.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Where a NixOS system keeps its unit files.
pub const UNIT_DIR: &str = "etc/systemd/system";

/// How often [`watch_foreign_switch`] looks at the current system: a foreign switch is picked
/// up within about this long once the worker is idle.
pub const WATCH_EVERY: Duration = Duration::from_secs(30);

/// What this process runs: its executable and the `--config` file it was started with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Running {
    pub exe: PathBuf,
    pub config: Option<PathBuf>,
}

impl Running {
    /// `/proc/self/exe` and the `--config` argument of `/proc/self/cmdline`; None unless the
    /// binary runs from the Nix store (started by hand or by tests, no unit manages it).
    pub fn this_process() -> Option<Running> {
        let exe = std::fs::read_link("/proc/self/exe").ok()?;
        if !exe.starts_with("/nix/store/") {
            return None;
        }
        let cmdline = std::fs::read("/proc/self/cmdline").ok()?;
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        Some(Running {
            exe,
            config: config_arg(args.iter().map(String::as_str)).map(PathBuf::from),
        })
    }
}

/// What `<system>/etc/systemd/system/<unit>` says about the running agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The unit runs this binary with this config.
    Same,
    /// The unit runs another binary or config; says which.
    Changed(String),
    /// No unit file, or no ExecStart= in it: nothing to decide on.
    Unknown,
}

/// Compares what the unit of `system` starts with what this process runs (pure but for reading
/// the unit file, its drop-ins, and resolving symlinks).
pub fn verdict(running: &Running, system: &Path, unit: &str) -> Verdict {
    let Some((program, config)) = unit_exec_start(system, unit) else {
        return Verdict::Unknown;
    };
    if !same_file(Path::new(&program), &running.exe) {
        return Verdict::Changed(format!(
            "the unit now runs {program}, this process runs {}",
            running.exe.display()
        ));
    }
    match (config, &running.config) {
        (Some(new), Some(old)) if !same_file(Path::new(&new), old) => Verdict::Changed(format!(
            "the unit now reads {new}, this process read {}",
            old.display()
        )),
        (Some(new), None) => Verdict::Changed(format!("the unit now reads {new}")),
        (None, Some(old)) => Verdict::Changed(format!(
            "the unit no longer passes --config (this process read {})",
            old.display()
        )),
        _ => Verdict::Same,
    }
}

/// True when `<previous>/etc/systemd/system/<unit>` and the same file under `current` differ
/// (content, or one exists and the other does not), or when the unit under `current` runs
/// another binary or config than this process (a change made by an earlier, foreign switch).
pub fn own_unit_changed(unit: &str, previous: Option<&Path>, current: &Path) -> bool {
    let read = |system: &Path| std::fs::read(system.join(UNIT_DIR).join(unit)).ok();
    let new = read(current);
    let text_changed = match previous {
        Some(previous) => read(previous) != new,
        None => new.is_some(),
    };
    if text_changed {
        return true;
    }
    Running::this_process()
        .is_some_and(|running| matches!(verdict(&running, current, unit), Verdict::Changed(_)))
}

/// Every `every`, while `shutdown` is not cancelled, compares the unit under `current_system`
/// with `running`; when it changed and `is_idle()` says no attempt is queued or running, logs
/// why and cancels `shutdown` (the agent then exits 0 and systemd starts the new version).
/// While the worker is busy it keeps looking, so an attempt is never cut short. `is_idle` must
/// keep the worker from starting a new attempt once it has answered true (e.g. by taking the
/// worker's slot), or the race between its answer and the cancel remains.
pub async fn watch_foreign_switch(
    unit: String,
    current_system: PathBuf,
    running: Running,
    every: Duration,
    is_idle: impl Fn() -> bool,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        if let Verdict::Changed(why) = verdict(&running, &current_system, &unit) {
            if is_idle() {
                tracing::warn!(
                    unit = %unit,
                    "a switch replaced the agent's binary or config ({why}); exiting so systemd starts the new version"
                );
                shutdown.cancel();
                return;
            }
            tracing::debug!(unit = %unit, "agent replaced ({why}); waiting for the worker to be idle");
        }
    }
}

/// The program and `--config` value of the unit's effective `ExecStart=` (the unit file, then
/// its `<unit>.d/*.conf` drop-ins in name order; an empty `ExecStart=` resets the list).
fn unit_exec_start(system: &Path, unit: &str) -> Option<(String, Option<String>)> {
    let dir = system.join(UNIT_DIR);
    let mut texts = vec![std::fs::read_to_string(dir.join(unit)).ok()?];
    if let Ok(entries) = std::fs::read_dir(dir.join(format!("{unit}.d"))) {
        let mut dropins: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "conf"))
            .collect();
        dropins.sort();
        texts.extend(
            dropins
                .iter()
                .filter_map(|p| std::fs::read_to_string(p).ok()),
        );
    }
    let mut exec: Option<String> = None;
    for text in &texts {
        for line in text.lines() {
            if let Some(value) = line.trim().strip_prefix("ExecStart=") {
                let value = value.trim();
                exec = (!value.is_empty()).then(|| value.to_owned());
            }
        }
    }
    let exec = exec?;
    // Prefixes systemd allows before the path: @ - : + !
    let mut words = exec
        .trim_start_matches(['@', '-', ':', '+', '!'])
        .split_whitespace()
        .map(|w| w.trim_matches('"'));
    let program = words.next()?.to_owned();
    Some((program, config_arg(words).map(str::to_owned)))
}

/// The value of `--config X` or `--config=X` among `args`.
fn config_arg<'a>(mut args: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    while let Some(arg) = args.next() {
        if arg == "--config" {
            return args.next();
        }
        if let Some(value) = arg.strip_prefix("--config=") {
            return Some(value);
        }
    }
    None
}

/// Same file after resolving symlinks; compared as written when either cannot be resolved.
fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    fn system(root: &Path, name: &str, unit_text: Option<&str>) -> PathBuf {
        let dir = root.join(name);
        std::fs::create_dir_all(dir.join(UNIT_DIR)).unwrap();
        if let Some(text) = unit_text {
            std::fs::write(dir.join(UNIT_DIR).join("agent.service"), text).unwrap();
        }
        dir
    }

    #[test]
    fn unit_text_change_table() {
        let root = tempfile::tempdir().unwrap();
        let a = system(
            root.path(),
            "a",
            Some("ExecStart=/nix/store/aaa-agent/bin/x serve"),
        );
        let a2 = system(
            root.path(),
            "a2",
            Some("ExecStart=/nix/store/aaa-agent/bin/x serve"),
        );
        let b = system(
            root.path(),
            "b",
            Some("ExecStart=/nix/store/bbb-agent/bin/x serve"),
        );
        let none = system(root.path(), "none", None);
        // The test binary does not run from the store, so only the unit text decides here;
        // what a store-run agent compares with the unit is verdict()'s (table below).
        let cases = [
            (Some(&a), &a2, false),
            (Some(&a), &b, true),
            (Some(&none), &a, true),
            (Some(&a), &none, true),
            (Some(&none), &none, false),
            (None, &none, false),
            (None, &a, true),
        ];
        for (previous, current, want) in cases {
            assert_eq!(
                own_unit_changed("agent.service", previous.map(|p| p.as_path()), current),
                want,
                "{previous:?} -> {current:?}"
            );
        }
        assert_eq!(
            Running::this_process(),
            None,
            "tests do not run from the store"
        );
        assert!(matches!(
            verdict(
                &Running {
                    exe: "/nix/store/aaa-agent/bin/x".into(),
                    config: None
                },
                &a2,
                "agent.service"
            ),
            Verdict::Same
        ));
    }

    #[test]
    fn verdict_table() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        for f in ["old-bin", "new-bin", "old.toml", "new.toml"] {
            std::fs::write(r.join(f), f).unwrap();
        }
        // A symlinked bin dir, as a wrapper package would have: resolves to the same file.
        std::os::unix::fs::symlink(r.join("old-bin"), r.join("link-bin")).unwrap();
        let p = |f: &str| r.join(f).display().to_string();
        let running = Running {
            exe: r.join("old-bin"),
            config: Some(r.join("old.toml")),
        };
        let unit =
            |exec: &str| format!("[Service]\nType=notify\nExecStart={exec}\nRestart=always\n");
        let cases = [
            (
                unit(&format!(
                    "{} serve --config {}",
                    p("old-bin"),
                    p("old.toml")
                )),
                "same",
            ),
            (
                unit(&format!(
                    "{} serve --config={}",
                    p("link-bin"),
                    p("old.toml")
                )),
                "same",
            ),
            (
                unit(&format!(
                    "@{} serve --config {}",
                    p("old-bin"),
                    p("old.toml")
                )),
                "same",
            ),
            (
                unit(&format!(
                    "{} serve --config {}",
                    p("new-bin"),
                    p("old.toml")
                )),
                "changed",
            ),
            (
                unit(&format!(
                    "{} serve --config {}",
                    p("old-bin"),
                    p("new.toml")
                )),
                "changed",
            ),
            (unit(&format!("{} serve", p("old-bin"))), "changed"),
            ("[Service]\nType=notify\n".to_owned(), "unknown"),
        ];
        for (i, (text, want)) in cases.iter().enumerate() {
            let sys = system(r, &format!("s{i}"), Some(text));
            let got = match verdict(&running, &sys, "agent.service") {
                Verdict::Same => "same",
                Verdict::Changed(_) => "changed",
                Verdict::Unknown => "unknown",
            };
            assert_eq!(got, *want, "{text}");
        }
        let missing = system(r, "missing", None);
        assert_eq!(
            verdict(&running, &missing, "agent.service"),
            Verdict::Unknown
        );
    }

    #[test]
    fn dropins_override_exec_start() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        let sys = system(r, "s", Some("ExecStart=/old serve --config /old.toml\n"));
        let dropins = sys.join(UNIT_DIR).join("agent.service.d");
        std::fs::create_dir_all(&dropins).unwrap();
        std::fs::write(
            dropins.join("10-a.conf"),
            "[Service]\nExecStart=\nExecStart=/new serve --config /new.toml\n",
        )
        .unwrap();
        std::fs::write(dropins.join("readme.txt"), "ExecStart=/ignored\n").unwrap();
        assert_eq!(
            unit_exec_start(&sys, "agent.service"),
            Some(("/new".into(), Some("/new.toml".into())))
        );
    }

    #[test]
    fn config_arg_forms() {
        assert_eq!(
            config_arg(["serve", "--config", "/a"].into_iter()),
            Some("/a")
        );
        assert_eq!(config_arg(["serve", "--config=/b"].into_iter()), Some("/b"));
        assert_eq!(config_arg(["serve", "--config"].into_iter()), None);
        assert_eq!(config_arg(["serve"].into_iter()), None);
    }

    #[tokio::test]
    async fn watcher_waits_for_idle_then_cancels() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path().to_owned();
        let sys = system(
            &r,
            "current",
            Some("ExecStart=/nix/store/new-agent/bin/x serve --config /nix/store/new.toml\n"),
        );
        let running = Running {
            exe: "/nix/store/old-agent/bin/x".into(),
            config: None,
        };
        let idle = Arc::new(AtomicBool::new(false));
        let checks = Arc::new(AtomicUsize::new(0));
        let token = CancellationToken::new();
        let watcher = tokio::spawn(watch_foreign_switch(
            "agent.service".into(),
            sys,
            running,
            Duration::from_millis(5),
            {
                let (idle, checks) = (idle.clone(), checks.clone());
                move || {
                    checks.fetch_add(1, Ordering::SeqCst);
                    idle.load(Ordering::SeqCst)
                }
            },
            token.clone(),
        ));
        // Busy for several checks: never cancelled while busy.
        let bound = tokio::time::Instant::now() + Duration::from_secs(30);
        while checks.load(Ordering::SeqCst) < 5 && tokio::time::Instant::now() < bound {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert!(
            checks.load(Ordering::SeqCst) >= 5,
            "the watcher never asked is_idle"
        );
        assert!(!token.is_cancelled(), "cancelled while the worker was busy");
        idle.store(true, Ordering::SeqCst);
        tokio::time::timeout(Duration::from_secs(30), token.cancelled())
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(30), watcher)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn watcher_leaves_an_unchanged_agent_alone_and_stops_on_shutdown() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path().to_owned();
        std::fs::write(r.join("bin"), "x").unwrap();
        let sys = system(
            &r,
            "current",
            Some(&format!("ExecStart={} serve\n", r.join("bin").display())),
        );
        let running = Running {
            exe: r.join("bin"),
            config: None,
        };
        let checks = Arc::new(AtomicUsize::new(0));
        let token = CancellationToken::new();
        let watcher = tokio::spawn(watch_foreign_switch(
            "agent.service".into(),
            sys,
            running,
            Duration::from_millis(5),
            {
                let checks = checks.clone();
                move || {
                    checks.fetch_add(1, Ordering::SeqCst);
                    true
                }
            },
            token.clone(),
        ));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !token.is_cancelled(),
            "an unchanged unit must not stop the agent"
        );
        assert_eq!(
            checks.load(Ordering::SeqCst),
            0,
            "is_idle is only asked about a change"
        );
        token.cancel();
        tokio::time::timeout(Duration::from_secs(30), watcher)
            .await
            .unwrap()
            .unwrap();
    }
}
