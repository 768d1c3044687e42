//! Fetch first (SPEC §6): realise the target closure into the local store before anything is
//! activated, with nix's structured progress in the log and in `/v1/status`.
//!
//! `nix build --no-link <store path>` is "build a derivation or fetch a store path" (nix3-build(1)):
//! for a store path it substitutes the closure through the daemon's configured substituters and
//! trusted keys, and `--log-format internal-json` gives machine-readable progress, which
//! `nix-store --realise` only prints as prose.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use serde_json::Value;

use crate::config::Settings;
use crate::exec::{CommandRunner, LineObserver, RunError};
use crate::model::{FetchProgress, StorePath};
use crate::upgrade::closure_diff;

/// nix's `ActivityType` values (src/libutil/logging.hh) that carry fetch progress.
const ACT_COPY_PATH: u64 = 100;
const ACT_COPY_PATHS: u64 = 103;
/// nix's `ResultType` values.
const RES_PROGRESS: u64 = 105;
const RES_SET_EXPECTED: u64 = 106;
/// nix's `Verbosity::lvlError`.
const LVL_ERROR: u64 = 0;

/// Where the progress goes while the fetch runs (the status's `fetch`); None once it ended.
pub type Report = Arc<dyn Fn(Option<FetchProgress>) + Send + Sync>;

/// Why the fetch failed; the attempt fails and the next poll or notification retries it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("fetching {target} failed{}: {why}", at.as_ref().map(|p| format!(" at {p}")).unwrap_or_default())]
pub struct FetchError {
    pub target: String,
    /// The store path nix named in its error, or the one it was copying.
    pub at: Option<String>,
    pub why: String,
}

/// `nix build --no-link <target>` with structured logs.
pub fn fetch_argv(nix: &Path, target: &str) -> Vec<String> {
    vec![
        nix.display().to_string(),
        "--extra-experimental-features".into(),
        "nix-command".into(),
        "build".into(),
        "--no-link".into(),
        "--log-format".into(),
        "internal-json".into(),
        "-v".into(),
        target.into(),
    ]
}

/// One activity nix reported, as far as progress needs it.
#[derive(Debug, Clone)]
struct Activity {
    kind: u64,
    done: u64,
}

/// Reads nix's `@nix {json}` lines into `FetchProgress`.
#[derive(Debug, Default)]
pub struct NixLog {
    activities: HashMap<u64, Activity>,
    progress: FetchProgress,
    /// nix's last error message, without colours.
    error: Option<String>,
}

/// What a line meant, for the log.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// Not nix's JSON: log the line as it is.
    Text,
    /// Bookkeeping only.
    Quiet,
    /// A path started copying.
    Copying { path: String, from: String },
    /// The count of paths done changed.
    Progress,
    /// A message nix meant for people (level ≤ info).
    Message(String),
}

impl NixLog {
    pub fn new(target: &str) -> NixLog {
        NixLog {
            progress: FetchProgress {
                target: target.to_owned(),
                ..FetchProgress::default()
            },
            ..NixLog::default()
        }
    }

    pub fn progress(&self) -> &FetchProgress {
        &self.progress
    }

    pub fn error(&self) -> Option<&str> {
        self.error.as_deref()
    }

    /// Takes one line of nix's stderr.
    pub fn feed(&mut self, line: &str) -> Event {
        let Some(json) = line.strip_prefix("@nix ") else {
            if let Some(rest) = strip_ansi(line).strip_prefix("error:") {
                self.error = Some(rest.trim().to_owned());
            }
            return Event::Text;
        };
        let Ok(v) = serde_json::from_str::<Value>(json) else {
            return Event::Text;
        };
        let id = v["id"].as_u64().unwrap_or(0);
        let number = |i: usize| v["fields"][i].as_u64().unwrap_or(0);
        match v["action"].as_str().unwrap_or_default() {
            "start" => {
                let kind = v["type"].as_u64().unwrap_or(0);
                let path = (kind == ACT_COPY_PATH)
                    .then(|| v["fields"][0].as_str().map(str::to_owned))
                    .flatten();
                self.activities.insert(id, Activity { kind, done: 0 });
                match path {
                    Some(path) => {
                        self.progress.current = Some(path.clone());
                        let from = v["fields"][1].as_str().unwrap_or_default().to_owned();
                        Event::Copying { path, from }
                    }
                    None => Event::Quiet,
                }
            }
            "result" => match v["type"].as_u64().unwrap_or(0) {
                RES_PROGRESS => {
                    let Some(activity) = self.activities.get_mut(&id) else {
                        return Event::Quiet;
                    };
                    activity.done = number(0);
                    match activity.kind {
                        ACT_COPY_PATHS => {
                            let before = self.progress.paths_done;
                            self.progress.paths_done = number(0);
                            self.progress.paths_expected = number(1);
                            if self.progress.paths_done != before {
                                Event::Progress
                            } else {
                                Event::Quiet
                            }
                        }
                        ACT_COPY_PATH => {
                            self.progress.bytes_done = self
                                .activities
                                .values()
                                .filter(|a| a.kind == ACT_COPY_PATH)
                                .map(|a| a.done)
                                .sum();
                            Event::Quiet
                        }
                        _ => Event::Quiet,
                    }
                }
                RES_SET_EXPECTED if number(0) == ACT_COPY_PATH => {
                    self.progress.bytes_expected = number(1);
                    Event::Quiet
                }
                _ => Event::Quiet,
            },
            "msg" => {
                let text = strip_ansi(v["msg"].as_str().unwrap_or_default());
                let level = v["level"].as_u64().unwrap_or(u64::MAX);
                if level == LVL_ERROR {
                    let text = text.trim();
                    self.error = Some(
                        text.strip_prefix("error:")
                            .unwrap_or(text)
                            .trim()
                            .to_owned(),
                    );
                }
                // Verbose chatter (-v) stays out of the log; info and worse go in.
                if level <= 3 {
                    Event::Message(text)
                } else {
                    Event::Quiet
                }
            }
            _ => Event::Quiet,
        }
    }

    /// The store path the failure is about: one named in nix's error, else the last one copied.
    fn failed_at(&self) -> Option<String> {
        let named = self.error.as_deref().and_then(|e| {
            e.split(|c: char| c.is_whitespace() || "'\"‘’`".contains(c))
                .find(|word| StorePath::parse(word.trim_end_matches([',', '.', ':'])).is_ok())
                .map(|w| w.trim_end_matches([',', '.', ':']).to_owned())
        });
        named.or_else(|| self.progress.current.clone())
    }
}

/// Removes terminal colour sequences (`ESC [ … letter`) nix puts around words.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

const MIB: f64 = 1024.0 * 1024.0;

fn mib(bytes: u64) -> String {
    // Display only: u64 → f64 loses nothing a person would read.
    #[allow(clippy::cast_precision_loss)]
    let value = bytes as f64 / MIB;
    format!("{value:.1}")
}

/// Realises `target` with `nix`; progress goes to the log and to `report` while it runs.
pub async fn fetch(
    nix: &Path,
    runner: &CommandRunner,
    target: &str,
    report: &Report,
) -> Result<FetchProgress, FetchError> {
    let log = Arc::new(Mutex::new(NixLog::new(target)));
    report(Some(log_progress(&log)));
    let observer: LineObserver = {
        let log = log.clone();
        let report = report.clone();
        Arc::new(move |line: &str| {
            let mut log = log.lock().unwrap_or_else(|p| p.into_inner());
            let event = log.feed(line);
            match &event {
                Event::Text => return true,
                Event::Quiet => {}
                Event::Copying { path, from } => {
                    tracing::info!(path = %path, from = %from, "fetching path");
                }
                Event::Progress => {
                    let p = log.progress();
                    tracing::info!(
                        paths_done = p.paths_done,
                        paths_expected = p.paths_expected,
                        bytes_done = p.bytes_done,
                        bytes_expected = p.bytes_expected,
                        "fetched {}/{} paths, {}/{} MiB",
                        p.paths_done,
                        p.paths_expected,
                        mib(p.bytes_done),
                        mib(p.bytes_expected)
                    );
                }
                Event::Message(text) => tracing::info!(stream = "nix", "{text}"),
            }
            report(Some(log.progress().clone()));
            false
        })
    };
    tracing::info!(target = %target, "fetching the target closure");
    let result = runner
        .run_observed(&fetch_argv(nix, target), &[], Some(observer))
        .await;
    report(None);
    let log = log.lock().unwrap_or_else(|p| p.into_inner());
    let done = log.progress().clone();
    match result {
        Ok(()) => {
            tracing::info!(
                paths = done.paths_done,
                bytes = done.bytes_done,
                "target closure is in the local store ({} paths, {} MiB fetched)",
                done.paths_done,
                mib(done.bytes_done)
            );
            Ok(done)
        }
        Err(e) => Err(FetchError {
            target: target.to_owned(),
            at: log.failed_at(),
            why: match (log.error(), &e) {
                (
                    _,
                    RunError::Timeout { .. } | RunError::Cancelled { .. } | RunError::Spawn { .. },
                ) => e.to_string(),
                (Some(error), _) => error.to_owned(),
                (None, _) => e.to_string(),
            },
        }),
    }
}

/// The fetch step: realise `target`, then log the closure diff. With `system.nix` absent, one
/// note and no command: nixos-rebuild then fetches during activation, as before.
pub async fn fetch_and_diff(
    settings: &Settings,
    runner: &CommandRunner,
    target: &str,
    report: &Report,
) -> Result<(), FetchError> {
    let path_var = std::env::var("PATH").ok();
    let Some(nix) = closure_diff::find_program(&settings.system.nix, path_var.as_deref()) else {
        tracing::info!(nix = %settings.system.nix, "nix not found: fetch and closure diff skipped");
        return Ok(());
    };
    fetch(&nix, runner, target, report).await?;
    closure_diff::log(settings, runner, &nix, target).await;
    Ok(())
}

fn log_progress(log: &Mutex<NixLog>) -> FetchProgress {
    log.lock()
        .unwrap_or_else(|p| p.into_inner())
        .progress()
        .clone()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const TARGET: &str = "/nix/store/00000000000000000000000000000000-nixos-system-web1";
    const DEP: &str = "/nix/store/11111111111111111111111111111111-glibc-2.40";

    /// The shape of what `nix build --log-format internal-json -v` prints while substituting
    /// (activities from src/libstore/build/worker.cc and substitution-goal.cc).
    fn transcript() -> Vec<String> {
        vec![
            r#"@nix {"action":"start","id":1,"level":4,"parent":0,"text":"","type":102}"#.into(),
            r#"@nix {"action":"start","id":2,"level":0,"parent":0,"text":"","type":103}"#.into(),
            r#"@nix {"action":"result","fields":[100,52428800],"id":1,"type":106}"#.into(),
            r#"@nix {"action":"result","fields":[0,2,0,0],"id":2,"type":105}"#.into(),
            format!(
                r#"@nix {{"action":"start","fields":["{DEP}","https://cache.example","local"],"id":3,"level":3,"parent":0,"text":"copying path '{DEP}'","type":100}}"#
            ),
            r#"@nix {"action":"result","fields":[1048576,31457280,0,0],"id":3,"type":105}"#.into(),
            r#"@nix {"action":"result","fields":[31457280,31457280,0,0],"id":3,"type":105}"#.into(),
            r#"@nix {"action":"stop","id":3}"#.into(),
            r#"@nix {"action":"result","fields":[1,2,0,0],"id":2,"type":105}"#.into(),
            r#"@nix {"action":"msg","level":5,"msg":"verbose chatter"}"#.into(),
            "plain text from an old nix".into(),
        ]
    }

    #[test]
    fn reads_paths_and_bytes_from_internal_json() {
        let mut log = NixLog::new(TARGET);
        let events: Vec<Event> = transcript().iter().map(|l| log.feed(l)).collect();
        let p = log.progress();
        assert_eq!((p.paths_done, p.paths_expected), (1, 2));
        assert_eq!((p.bytes_done, p.bytes_expected), (31_457_280, 52_428_800));
        assert_eq!(p.current.as_deref(), Some(DEP));
        assert!(events.contains(&Event::Copying {
            path: DEP.into(),
            from: "https://cache.example".into()
        }));
        assert_eq!(events.iter().filter(|e| **e == Event::Progress).count(), 1);
        assert_eq!(events.last(), Some(&Event::Text));
        assert!(log.error().is_none());
    }

    #[test]
    fn an_error_names_the_path_and_why() {
        let mut log = NixLog::new(TARGET);
        for line in transcript() {
            log.feed(&line);
        }
        log.feed(&format!(
            r#"@nix {{"action":"msg","level":0,"msg":"\u001b[31;1merror:\u001b[0m path '\u001b[35;1m{TARGET}\u001b[0m' is required, but there is no substituter that can build it"}}"#
        ));
        assert_eq!(log.failed_at().as_deref(), Some(TARGET));
        let error = log.error().unwrap();
        assert!(error.starts_with("path '/nix/store/"), "{error}");
        assert!(!error.contains('\u{1b}'), "{error}");
        // Without a path in the message, the path being copied is named.
        let mut log = NixLog::new(TARGET);
        for line in transcript() {
            log.feed(&line);
        }
        log.feed("error: unable to download 'https://cache.example/nar/x.nar.xz': HTTP error 503");
        assert_eq!(log.failed_at().as_deref(), Some(DEP));
    }

    #[test]
    fn garbage_lines_are_text_never_panics() {
        let mut log = NixLog::new(TARGET);
        for line in [
            "@nix ",
            "@nix {",
            "@nix []",
            r#"@nix {"action":"result","id":99,"type":105,"fields":["x"]}"#,
            r#"@nix {"action":"start","id":1,"type":100,"fields":[]}"#,
            "\u{1b}[",
        ] {
            log.feed(line);
        }
        assert_eq!(log.progress().paths_done, 0);
    }

    #[tokio::test]
    async fn fetch_reports_progress_and_failures() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let nix = dir.path().join("nix");
        let lines = transcript()
            .iter()
            .map(|l| format!("printf '%s\\n' '{l}' >&2"))
            .collect::<Vec<_>>()
            .join("\n");
        std::fs::write(
            &nix,
            format!(
                "#!/bin/sh\necho \"$@\" > {args}\n{lines}\n[ -f {fail} ] && {{ echo 'error: cannot connect to the daemon' >&2; exit 1; }}\nexit 0\n",
                args = dir.path().join("args").display(),
                fail = dir.path().join("fail").display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&nix, std::fs::Permissions::from_mode(0o755)).unwrap();
        let runner = CommandRunner {
            timeout: std::time::Duration::from_secs(10),
            dry_run: false,
            cancel: tokio_util::sync::CancellationToken::new(),
        };
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        let report: Report = Arc::new(move |p| sink.lock().unwrap().push(p));
        let done = fetch(&nix, &runner, TARGET, &report).await.unwrap();
        assert_eq!((done.paths_done, done.bytes_done), (1, 31_457_280));
        let seen = seen.lock().unwrap().clone();
        assert!(
            seen.iter()
                .flatten()
                .any(|p| p.paths_done == 1 && p.paths_expected == 2)
        );
        assert_eq!(seen.last(), Some(&None), "no progress once the fetch ended");
        let args = std::fs::read_to_string(dir.path().join("args")).unwrap();
        assert!(
            args.contains(&format!(
                "build --no-link --log-format internal-json -v {TARGET}"
            )),
            "{args}"
        );
        std::fs::write(dir.path().join("fail"), "").unwrap();
        let err = fetch(&nix, &runner, TARGET, &report).await.unwrap_err();
        assert_eq!(err.at.as_deref(), Some(DEP));
        assert_eq!(err.why, "cannot connect to the daemon");
        let text = err.to_string();
        assert!(text.contains(TARGET) && text.contains(DEP), "{text}");
    }
}
