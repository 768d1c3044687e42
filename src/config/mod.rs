//! The agent's TOML config file turned into validated `Settings` (SPEC §3).

mod bounds;
mod gates;
mod gc;
mod hooks;
mod hydra;
mod rollout;
mod system;
mod window;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::health::HealthChecksConfig;

pub use bounds::MAX_DURATION;
pub use gates::{GateConfig, GateKind};
pub use gc::GcConfig;
pub use hooks::{Hook, HookError, HooksConfig};
pub use hydra::{HydraConfig, HydraCredentials};
use hydra::{check_instance, check_name};
pub use rollout::RolloutConfig;
pub use system::SystemConfig;
pub use window::{TimeOfDay, TimeWindow};

/// Largest allowed upgrade request body (SPEC §4).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config {path}: {key}: {message}")]
    Invalid {
        path: PathBuf,
        key: &'static str,
        message: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Operation {
    Switch,
    Boot,
    Test,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Switch => "switch",
            Operation::Boot => "boot",
            Operation::Test => "test",
        }
    }

    /// `switch` and `test` change the running system; `boot` only the next boot.
    pub fn is_live(self) -> bool {
        !matches!(self, Operation::Boot)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Activation {
    StorePath,
    Flake,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    Json,
    Text,
}

/// Where the HTTP API listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    Tcp(String),
    Unix(PathBuf),
}

impl std::fmt::Display for Listen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Listen::Tcp(addr) => write!(f, "{addr}"),
            Listen::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// The file as written; `Settings::from_file` validates it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    host: Option<String>,
    #[serde(default = "default_operation")]
    operation: Operation,
    #[serde(default = "default_activation")]
    activation: Activation,
    #[serde(default)]
    flags: Vec<String>,
    #[serde(default)]
    allow_reboot: bool,
    #[serde(default)]
    reboot_window: Option<TimeWindow>,
    #[serde(default = "default_activation_timeout", with = "humantime_serde")]
    activation_timeout: Duration,
    #[serde(default = "default_dates")]
    dates: String,
    #[serde(default, with = "humantime_serde")]
    randomized_delay: Duration,
    #[serde(default = "default_true")]
    persistent: bool,
    #[serde(default = "default_listen")]
    listen: String,
    #[serde(default)]
    secret_file: Option<PathBuf>,
    #[serde(default = "default_tolerance", with = "humantime_serde")]
    signature_tolerance: Duration,
    #[serde(default = "default_state_dir")]
    state_dir: PathBuf,
    #[serde(default)]
    dry_run: bool,
    #[serde(default = "default_log_format")]
    log_format: LogFormat,
    hydra: HydraConfig,
    #[serde(default)]
    health_checks: HealthChecksConfig,
    #[serde(default)]
    system: SystemConfig,
    #[serde(default)]
    hooks: HooksConfig,
    // issue 14: switch only when it is safe and useful.
    #[serde(default)]
    activation_window: Option<TimeWindow>,
    #[serde(default)]
    gates: Vec<GateConfig>,
    #[serde(default)]
    gc: Option<GcConfig>,
    #[serde(default)]
    rollout: Option<RolloutConfig>,
    #[serde(default, with = "humantime_serde")]
    push_delay: Duration,
}

/// Validated settings; every field has its final value.
#[derive(Debug, Clone)]
pub struct Settings {
    pub host: String,
    pub operation: Operation,
    pub activation: Activation,
    pub flags: Vec<String>,
    pub allow_reboot: bool,
    pub reboot_window: Option<TimeWindow>,
    pub activation_timeout: Duration,
    pub dates: String,
    pub randomized_delay: Duration,
    pub persistent: bool,
    pub listen: Listen,
    pub secret_file: Option<PathBuf>,
    pub signature_tolerance: Duration,
    pub state_dir: PathBuf,
    pub dry_run: bool,
    pub log_format: LogFormat,
    /// `hydra.instance` without a trailing slash.
    pub hydra_instance: String,
    pub hydra_project: String,
    pub hydra_jobset: String,
    pub hydra_job: String,
    pub hydra_timeout: Duration,
    pub hydra_credentials_file: Option<PathBuf>,
    pub health_checks: HealthChecksConfig,
    pub system: SystemConfig,
    pub hooks: HooksConfig,
    /// Switch only inside it; fetching and boot-only activations happen any time.
    pub activation_window: Option<TimeWindow>,
    pub gates: Vec<GateConfig>,
    pub gc: Option<GcConfig>,
    /// `[rollout]`: wait for these agents to run a build healthily before activating it.
    pub rollout: Option<RolloutConfig>,
    /// Uniform random delay before a pushed (source hydra) upgrade starts fetching.
    pub push_delay: Duration,
}

fn default_operation() -> Operation {
    Operation::Switch
}
fn default_activation() -> Activation {
    Activation::StorePath
}
fn default_activation_timeout() -> Duration {
    Duration::from_secs(3600)
}
fn default_dates() -> String {
    "04:40".into()
}
fn default_true() -> bool {
    true
}
fn default_listen() -> String {
    "127.0.0.1:9980".into()
}
fn default_tolerance() -> Duration {
    Duration::from_secs(300)
}
fn default_state_dir() -> PathBuf {
    "/var/lib/nixos-hydra-upgrade".into()
}
fn default_log_format() -> LogFormat {
    LogFormat::Json
}

impl Settings {
    pub fn from_file(path: &Path) -> Result<Settings, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Settings::from_toml(&text, path)
    }

    /// Parses and validates config text; `path` is only used in messages.
    pub fn from_toml(text: &str, path: &Path) -> Result<Settings, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: toml_message(&e, text),
        })?;
        let invalid = |key: &'static str, message: String| ConfigError::Invalid {
            path: path.to_owned(),
            key,
            message,
        };

        let host = match raw.host {
            Some(host) => host,
            None => nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .ok_or_else(|| invalid("host", "not set and the hostname is unreadable".into()))?,
        };
        if host.is_empty()
            || !host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(invalid(
                "host",
                format!("\"{host}\" is not a flake attribute name (letters, digits, - _ .)"),
            ));
        }
        let hydra = raw.hydra;
        let instance = hydra.instance.trim_end_matches('/').to_owned();
        check_instance(&instance).map_err(|m| invalid("hydra.instance", m))?;
        for (key, value) in [
            ("hydra.project", &hydra.project),
            ("hydra.jobset", &hydra.jobset),
        ] {
            check_name(value).map_err(|m| invalid(key, m))?;
        }
        let job = hydra.job.unwrap_or_else(|| host.clone());
        check_name(&job).map_err(|m| invalid("hydra.job", m))?;
        if hydra.timeout.is_zero() {
            return Err(invalid("hydra.timeout", "must be more than 0s".into()));
        }
        if raw.activation_timeout.is_zero() {
            return Err(invalid("activation_timeout", "must be more than 0s".into()));
        }
        if raw.signature_tolerance.is_zero() {
            return Err(invalid(
                "signature_tolerance",
                "must be more than 0s".into(),
            ));
        }
        let listen = parse_listen(&raw.listen).map_err(|m| invalid("listen", m))?;
        if raw.flags.iter().any(|f| f.is_empty()) {
            return Err(invalid("flags", "an empty argument is not allowed".into()));
        }
        crate::refused_flags::check(&raw.flags).map_err(|m| invalid("flags", m))?;
        if raw.system.nixos_rebuild.is_empty() {
            return Err(invalid("system.nixos_rebuild", "must not be empty".into()));
        }
        if raw
            .system
            .reboot_command
            .first()
            .is_none_or(|c| c.is_empty())
        {
            return Err(invalid("system.reboot_command", "needs a program".into()));
        }
        if raw.reboot_window.is_some() && !raw.allow_reboot {
            return Err(invalid(
                "reboot_window",
                "is set but allow_reboot is false; set allow_reboot = true or remove it".into(),
            ));
        }
        validate_dates(&raw.dates).map_err(|m| invalid("dates", m))?;
        let checks = raw.health_checks.pre_checks().into_iter();
        let checks = checks.chain(raw.health_checks.post_checks());
        let per_check = checks.flat_map(|c| {
            [
                ("health_checks (a check's timeout)", c.timeout),
                ("health_checks (a check's interval)", c.interval),
            ]
        });
        let durations: Vec<(&'static str, Duration)> = [
            ("activation_timeout", raw.activation_timeout),
            ("randomized_delay", raw.randomized_delay),
            ("signature_tolerance", raw.signature_tolerance),
            ("hydra.timeout", hydra.timeout),
            ("hooks.timeout", raw.hooks.timeout),
            ("health_checks.timeout", raw.health_checks.timeout),
            ("health_checks.settle", raw.health_checks.settle),
            ("health_checks.deadline", raw.health_checks.deadline),
        ]
        .into_iter()
        .chain(per_check)
        .chain(
            raw.gates
                .iter()
                .map(|g| ("gates (a gate's recheck)", g.recheck)),
        )
        .collect();
        bounds::check(&durations).map_err(|(key, m)| invalid(key, m))?;
        // These errors name their own key (`hooks.on_success`, `health_checks.post[0].argv`).
        let named = |message: String| ConfigError::Parse {
            path: path.to_owned(),
            message,
        };
        raw.health_checks
            .validate()
            .map_err(|e| named(e.to_string()))?;
        raw.hooks.validate().map_err(|e| named(e.to_string()))?;
        gates::validate_all(&raw.gates).map_err(|m| invalid("gates", m))?;
        if let Some(gc) = &raw.gc {
            gc.validate().map_err(|m| invalid("gc", m))?;
        }
        raw.system
            .validate_programs()
            .map_err(|(key, m)| invalid(key, m))?;
        if let Some(rollout) = &raw.rollout {
            rollout.validate().map_err(|(key, m)| invalid(key, m))?;
        }
        if raw.push_delay > rollout::MAX_WAIT {
            return Err(invalid("push_delay", "is longer than a year".into()));
        }

        Ok(Settings {
            host,
            operation: raw.operation,
            activation: raw.activation,
            flags: raw.flags,
            allow_reboot: raw.allow_reboot,
            reboot_window: raw.reboot_window,
            activation_timeout: raw.activation_timeout,
            dates: raw.dates,
            randomized_delay: raw.randomized_delay,
            persistent: raw.persistent,
            listen,
            secret_file: raw.secret_file,
            signature_tolerance: raw.signature_tolerance,
            state_dir: raw.state_dir,
            dry_run: raw.dry_run,
            log_format: raw.log_format,
            hydra_instance: instance,
            hydra_project: hydra.project,
            hydra_jobset: hydra.jobset,
            hydra_job: job,
            hydra_timeout: hydra.timeout,
            hydra_credentials_file: hydra.credentials_file,
            health_checks: raw.health_checks,
            system: raw.system,
            hooks: raw.hooks,
            activation_window: raw.activation_window,
            gates: raw.gates,
            gc: raw.gc,
            rollout: raw.rollout,
            push_delay: raw.push_delay,
        })
    }

    /// The Hydra page of a build, for people and logs.
    pub fn build_url(&self, build: u64) -> String {
        format!("{}/build/{build}", self.hydra_instance)
    }
}

fn parse_listen(text: &str) -> Result<Listen, String> {
    if let Some(path) = text.strip_prefix("unix:") {
        return if path.starts_with('/') {
            Ok(Listen::Unix(path.into()))
        } else {
            Err(format!("\"{text}\": a unix socket path must be absolute"))
        };
    }
    let (host, port) = text
        .rsplit_once(':')
        .ok_or_else(|| format!("\"{text}\" is not host:port or unix:/path"))?;
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(format!("\"{text}\" is not host:port or unix:/path"));
    }
    Ok(Listen::Tcp(text.to_owned()))
}

/// `dates` is a systemd calendar event, or "" for no schedule.
fn validate_dates(dates: &str) -> Result<(), String> {
    if dates.is_empty() {
        return Ok(());
    }
    dates
        .parse::<crate::calendar::CalendarEvent>()
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// `line 3, column 1: unknown key `dry_rn`; did you mean `dry_run`?` and the line with a caret
/// under the bad part (the same excerpt toml prints, but with the suggestion instead of the
/// list of every key).
fn toml_message(e: &toml::de::Error, text: &str) -> String {
    let message = suggest(e.message().trim());
    let Some(span) = e.span() else {
        return message;
    };
    let start = span.start.min(text.len());
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[start..].find('\n').map_or(text.len(), |i| start + i);
    let line_no = text[..start].matches('\n').count() + 1;
    let source = &text[line_start..line_end];
    let column = text[line_start..start].chars().count() + 1;
    let width = text[start..span.end.clamp(start, line_end)]
        .chars()
        .count()
        .max(1);
    let gutter = " ".repeat(line_no.to_string().len());
    let message = match key_at(text, line_start, source) {
        Some(key) if !message.starts_with("unknown key") => format!("{key}: {message}"),
        _ => message,
    };
    let message = if message.ends_with("expected a duration") {
        format!("{message} (e.g. 30s, 10min, 1h 30min)")
    } else {
        message
    };
    format!(
        "line {line_no}, column {column}: {message}\n{gutter} |\n{line_no} | {}\n{gutter} | {}{}",
        crate::logging::escape_controls(source),
        " ".repeat(column - 1),
        "^".repeat(width)
    )
}

/// The dotted key assigned on `line` (`hydra.timeout`), from the `[section]` above it.
fn key_at(text: &str, line_start: usize, line: &str) -> Option<String> {
    let (key, _) = line.split_once('=')?;
    let key = key.trim().trim_matches('"');
    if key.is_empty() || key.contains(['[', '{', ',']) {
        return None;
    }
    let section = text[..line_start].lines().rev().find_map(|l| {
        let l = l.trim();
        l.starts_with('[')
            .then(|| l.trim_matches(['[', ']']).trim().to_owned())
    });
    Some(match section {
        Some(section) => format!("{section}.{key}"),
        None => key.to_owned(),
    })
}

/// serde's "unknown field `dry_rn`, expected one of `a`, `b`, …" (or variant) becomes
/// "unknown key `dry_rn`; did you mean `dry_run`?"; the list stays only when nothing is close.
fn suggest(message: &str) -> String {
    let (what, rest) = if let Some(rest) = message.strip_prefix("unknown field `") {
        ("key", rest)
    } else if let Some(rest) = message.strip_prefix("unknown variant `") {
        ("value", rest)
    } else {
        return message.to_owned();
    };
    let Some((given, expected)) = rest.split_once("`, expected ") else {
        return message.to_owned();
    };
    let candidates: Vec<&str> = expected
        .trim_start_matches("one of ")
        .split(", ")
        .filter_map(|c| c.strip_prefix('`')?.strip_suffix('`'))
        .collect();
    let closest = candidates
        .iter()
        .map(|c| (strsim::damerau_levenshtein(given, c), *c))
        .filter(|(distance, c)| *distance <= (c.len() / 3).max(2))
        .min_by_key(|(distance, _)| *distance);
    match closest {
        Some((_, c)) => format!("unknown {what} `{given}`; did you mean `{c}`?"),
        None => format!(
            "unknown {what} `{given}`; expected one of {}",
            expected.trim_start_matches("one of ")
        ),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const MINIMAL: &str =
        "[hydra]\ninstance = \"https://hydra.example.com/\"\nproject = \"p\"\njobset = \"main\"\n";

    fn parse(text: &str) -> Result<Settings, ConfigError> {
        Settings::from_toml(text, Path::new("test.toml"))
    }

    #[test]
    fn minimal_config_takes_spec_defaults() {
        let s = parse(&format!("host = \"web1\"\n{MINIMAL}")).unwrap();
        assert_eq!(s.hydra_instance, "https://hydra.example.com");
        assert_eq!(s.hydra_job, "web1");
        assert_eq!(s.operation, Operation::Switch);
        assert_eq!(s.activation, Activation::StorePath);
        assert_eq!(s.listen, Listen::Tcp("127.0.0.1:9980".into()));
        assert_eq!(s.signature_tolerance, Duration::from_secs(300));
        assert_eq!(s.activation_timeout, Duration::from_secs(3600));
        assert_eq!(s.dates, "04:40");
        assert!(s.persistent && !s.allow_reboot && !s.dry_run);
        assert_eq!(s.system.reboot_command, ["systemctl", "reboot"]);
        assert!(s.activation_window.is_none() && s.gates.is_empty() && s.gc.is_none());
    }

    #[test]
    fn issue_14_keys() {
        let s = parse(&format!(
            "host = \"web1\"\nactivation_window = {{ lower = \"22:00\", upper = \"04:00\" }}\n{MINIMAL}\
             [[gates]]\nkind = \"no-sessions\"\n[[gates]]\nkind = \"command\"\nargv = [\"/bin/check\", \"-q\"]\nrecheck = \"1m\"\n\
             [gc]\nkeep_generations = 5\n"
        ))
        .unwrap();
        let window = s.activation_window.unwrap();
        assert!(window.contains(TimeOfDay::parse("23:00").unwrap()));
        assert_eq!(s.gates.len(), 2);
        assert_eq!(s.gates[0].recheck, Duration::from_secs(300));
        assert_eq!(s.gates[1].name(), "command /bin/check");
        assert_eq!(s.gates[1].recheck, Duration::from_secs(60));
        assert_eq!(
            s.gc,
            Some(GcConfig {
                keep_generations: 5
            })
        );
        assert_eq!(s.system.loginctl, "loginctl");
        assert_eq!(s.system.nmcli, "nmcli");
    }

    #[test]
    fn rejections_name_the_key() {
        let cases = [
            ("bogus = 1\n", "bogus"),
            ("operation = \"dance\"\n", "dance"),
            ("listen = \"9980\"\n", "listen"),
            ("listen = \"unix:relative\"\n", "listen"),
            ("activation_timeout = \"forever\"\n", "activation_timeout"),
            (
                "reboot_window = { lower = \"25:00\", upper = \"01:00\" }\nallow_reboot = true\n",
                "25:00",
            ),
            (
                "reboot_window = { lower = \"01:00\", upper = \"02:00\" }\n",
                "reboot_window",
            ),
            ("host = \"a b\"\n", "host"),
            ("flags = [\"\"]\n", "flags"),
            (
                "activation_window = { lower = \"02:00\" }\n",
                "activation_window",
            ),
            ("[[gates]]\nkind = \"command\"\n", "gates"),
            (
                "[[gates]]\nkind = \"no-sessions\"\nargv = [\"x\"]\n",
                "gates",
            ),
            (
                "[[gates]]\nkind = \"not-metered\"\nrecheck = \"0s\"\n",
                "gates",
            ),
            ("[[gates]]\nkind = \"elsewhere\"\n", "elsewhere"),
            ("[gc]\nkeep_generations = 0\n", "gc"),
            ("[system]\nloginctl = \"\"\n", "system.loginctl"),
            (
                "flags = [\"-L\", \"--profile-name\", \"x\"]\n",
                "--profile-name is refused",
            ),
            ("flags = [\"-Lc\", \"gpu\"]\n", "-Lc is refused"),
            (
                "activation_timeout = \"300000000000years\"\n",
                "activation_timeout",
            ),
            ("randomized_delay = \"400days\"\n", "randomized_delay"),
            ("[hooks]\ntimeout = \"9999999999999s\"\n", "hooks.timeout"),
        ];
        for (extra, needle) in cases {
            let err = parse(&format!("{extra}{MINIMAL}")).unwrap_err().to_string();
            let first = err.lines().next().unwrap_or_default();
            assert!(first.contains(needle), "{extra:?}: {err}");
        }
        let err = parse(
            "host = \"x\"\n[hydra]\ninstance = \"ftp://x\"\nproject = \"p\"\njobset = \"j\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("hydra.instance"), "{err}");
        let err = parse("host = \"x\"\n[hydra]\ninstance = \"https://u:s3cret@x\"\nproject = \"p\"\njobset = \"j\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("credentials_file") && !err.contains("s3cret"),
            "{err}"
        );
        let err = parse("[hydra]\ninstance = \"https://x\"\nproject = \"p\"\n").unwrap_err();
        assert!(err.to_string().contains("jobset"), "{err}");
    }

    #[test]
    fn toml_errors_keep_the_line_and_caret_and_suggest_the_key() {
        let err = parse(&format!("host = \"web1\"\ndry_rn = true\n{MINIMAL}"))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "config test.toml: line 2, column 1: unknown key `dry_rn`; did you mean `dry_run`?\n  \
             |\n2 | dry_rn = true\n  | ^^^^^^"
        );
        let err = parse(&format!("operation = \"swich\"\n{MINIMAL}"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("unknown value `swich`; did you mean `switch`?"),
            "{err}"
        );
        let err = parse(&format!("{MINIMAL}jbo = \"web1\"\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("did you mean `job`?"), "{err}");
        let err = parse(&format!("{MINIMAL}timeout = \"soon\"\n"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("config test.toml: line 5, column 11: hydra.timeout: invalid value")
                && err.contains("(e.g. 30s, 10min, 1h 30min)"),
            "{err}"
        );
        // Nothing close: the known keys are listed.
        let err = parse(&format!("colour = true\n{MINIMAL}"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("unknown key `colour`; expected one of `host`"),
            "{err}"
        );
        // A syntax error has its line too.
        let err = parse("host = \"web1\n").unwrap_err().to_string();
        assert!(err.contains("line 1, column"), "{err}");
    }
}
