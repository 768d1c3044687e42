//! The command line (SPEC §2): one variant per subcommand, with help and an example for each.
//!
//! Self-contained (clap, humantime and std only): build.rs `include!`s this file to generate the
//! shell completions and the man page from the same definition.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

/// Where the NixOS module installs the agent's config; `serve`, `check-config`, `check` and
/// `status` read it when neither `--config` nor `$NIXOS_HYDRA_UPGRADE_CONFIG` names another.
pub const DEFAULT_CONFIG: &str = "/etc/nixos-hydra-upgrade/config.toml";
/// The environment variable that names the config file.
pub const CONFIG_ENV: &str = "NIXOS_HYDRA_UPGRADE_CONFIG";

const CONFIG_HELP: &str = "The agent's TOML config file [env: NIXOS_HYDRA_UPGRADE_CONFIG] \
                           [default: /etc/nixos-hydra-upgrade/config.toml]";

fn duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{e} (write e.g. 30s, 10min, 1h 30min)"))
}

#[derive(Debug, Parser)]
#[command(
    name = "nixos-hydra-upgrade",
    version,
    about = "Upgrades this NixOS host when its Hydra build turns green",
    long_about = "Upgrades this NixOS host when its Hydra build turns green.\n\n\
                  On each host `serve` runs the agent; on the Hydra server `notify` (from \
                  RunCommand) tells the agents a build finished. The other subcommands inspect \
                  and drive an agent over its HTTP API.",
    after_help = "Examples:\n  \
                  nixos-hydra-upgrade status                # this host's agent\n  \
                  nixos-hydra-upgrade status --follow       # then one line per phase change\n  \
                  nixos-hydra-upgrade check-config          # validate the installed config\n  \
                  nixos-hydra-upgrade demo                  # the whole story on loopback"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent (the systemd service runs this).
    #[command(after_help = "Example:\n  \
                            nixos-hydra-upgrade serve --config /etc/nixos-hydra-upgrade/config.toml\n\n\
                            Exit status: 0 after SIGTERM/SIGINT, 1 on a runtime error, 2 on a bad config.")]
    Serve {
        #[arg(long, value_name = "FILE", env = CONFIG_ENV, hide_env = true, help = CONFIG_HELP)]
        config: Option<PathBuf>,
    },
    /// Validate a config file: syntax, keys, values, and that the programs it names exist.
    #[command(
        long_about = "Validate a config file without reading the secret file or touching the \
                      network: syntax, unknown keys (with the closest known one), values, and \
                      that the calendar event in `dates` fires again.\n\n\
                      Programs named by hooks, command checks, system.nixos_rebuild, \
                      system.reboot_command (with allow_reboot) and system.systemctl (with \
                      systemd checks) are looked up: an absolute path that is missing or not \
                      executable, or a relative path, is an error (exit 2); a bare name not \
                      found on this PATH is a warning only (exit 0), because the agent's PATH, \
                      set by its unit, may differ from yours.",
        after_help = "Examples:\n  \
                      nixos-hydra-upgrade check-config\n  \
                      nixos-hydra-upgrade check-config --config ./agent.toml\n\n\
                      nixos-hydra-upgrade check-config --skip-programs --config \"$out\"   # in a Nix build\n\n\
                      Exit status: 0 valid, 2 invalid (one line naming the file, key and fix)."
    )]
    CheckConfig {
        #[arg(long, value_name = "FILE", env = CONFIG_ENV, hide_env = true, help = CONFIG_HELP)]
        config: Option<PathBuf>,
        /// Do not look for the programs: for a check away from the host, e.g. in a Nix build.
        #[arg(long)]
        skip_programs: bool,
    },
    /// Hydra-side sender: deliver the RunCommand payload ($HYDRA_JSON), signed, to the agents.
    ///
    /// One concurrent round bounded by --hand-back, then it returns; what is still undelivered
    /// goes to the spool (--spool, else $NIXOS_HYDRA_UPGRADE_SPOOL, both drained by a `retry`
    /// service; else ~/.local/state/nixos-hydra-upgrade/spool drained by a detached `retry` this
    /// command starts). Exit 0 when every agent got it or it is spooled, 1 when any refused it.
    #[command(after_help = "Example (Hydra's RunCommand):\n  \
                            nixos-hydra-upgrade notify --secret-file /run/keys/upgrade \\\n    \
                            --spool /var/lib/nixos-hydra-upgrade-spool \\\n    \
                            --route web1=http://web1:9980 --route db1=http://db1:9980\n\n\
                            Exit status: 0 delivered, spooled or nothing to do, 1 an agent refused it \
                            or it could not be spooled, 2 usage.")]
    Notify {
        /// Agent base URL (or unix:/path) that gets every payload; repeatable.
        #[arg(long = "url", value_name = "URL")]
        urls: Vec<String>,
        /// Deliver only payloads of Hydra job JOB to URL; repeatable.
        #[arg(long = "route", value_name = "JOB=URL")]
        routes: Vec<String>,
        /// File with the shared key(s), one `whsec_<base64>` per line.
        #[arg(long, value_name = "FILE")]
        secret_file: PathBuf,
        /// The RunCommand payload file [default: $HYDRA_JSON].
        #[arg(long, value_name = "FILE")]
        hydra_json: Option<PathBuf>,
        /// How long the one round of deliveries may take before the command returns to Hydra.
        #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = duration)]
        hand_back: Duration,
        /// Until when an undelivered notification is retried (by the retrier) before it is given up.
        #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = duration)]
        deadline: Duration,
        /// Spool directory for what is undelivered after the hand-back (a `retry` service drains it).
        #[arg(long, value_name = "DIR")]
        spool: Option<PathBuf>,
    },
    /// Deliver what `notify` spooled: same webhook-id, fresh signature, backoff, until each
    /// entry's deadline; a newer build for the same agent supersedes an older one; every give-up
    /// is logged. Runs until SIGTERM unless --once or --exit-when-empty.
    #[command(
        after_help = "Example (a service on the Hydra host):\n  nixos-hydra-upgrade retry --spool /var/lib/nixos-hydra-upgrade-spool \\\n    --secret-file /run/credentials/nixos-hydra-upgrade-retry.service/nixos-hydra-upgrade-key"
    )]
    Retry {
        /// The spool directory notify writes undelivered notifications to.
        #[arg(long, value_name = "DIR")]
        spool: PathBuf,
        /// File with the shared key(s), one `whsec_<base64>` per line (the first signs).
        #[arg(long, value_name = "FILE")]
        secret_file: PathBuf,
        /// One pass over every entry, whatever its backoff; exit 0 if the spool is then empty.
        #[arg(long)]
        once: bool,
        /// Exit once the spool is empty (what notify's detached retrier does).
        #[arg(long)]
        exit_when_empty: bool,
    },
    /// One row per agent from many agents' /v1/status, asked concurrently: deployed build, how
    /// far behind the newest green build any of them knows, phase, last outcome, reboot state.
    /// Exit 1 if any agent is unreachable (each is named).
    #[command(
        after_help = "Example:\n  nixos-hydra-upgrade fleet --url http://web1:9980 --hosts-file /etc/fleet-hosts \\\n    --spool /var/lib/nixos-hydra-upgrade-spool"
    )]
    Fleet {
        /// Agent base URL (or unix:/path); repeatable.
        #[arg(long = "url", value_name = "URL")]
        urls: Vec<String>,
        /// A file with one agent URL per line (# comments allowed).
        #[arg(long, value_name = "FILE")]
        hosts_file: Option<PathBuf>,
        /// Print the rows as JSON.
        #[arg(long)]
        json: bool,
        /// Also show what this notify spool still holds undelivered.
        #[arg(long, value_name = "DIR")]
        spool: Option<PathBuf>,
        /// How long to wait for each agent.
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// Ask an agent to upgrade to the newest successful build, or to --build N.
    #[command(after_help = "Examples:\n  \
                            nixos-hydra-upgrade trigger --url http://web1:9980 --secret-file ./key\n  \
                            nixos-hydra-upgrade trigger --url http://web1:9980 --secret-file ./key \
                            --build 4821 --force --wait\n\n\
                            Exit status: 0 when the agent accepted (2xx; with --wait: when the \
                            attempt upgraded or was current), 1 otherwise.")]
    Trigger {
        /// The agent's base URL (http://host:9980) or unix:/path.
        #[arg(long, value_name = "URL")]
        url: String,
        /// File with the shared key(s), one `whsec_<base64>` per line.
        #[arg(long, value_name = "FILE")]
        secret_file: PathBuf,
        /// Deploy this Hydra build id instead of the job's newest successful one.
        #[arg(long, value_name = "N")]
        build: Option<u64>,
        /// Allow redeploying the deployed build or going back to an older one.
        #[arg(long)]
        force: bool,
        /// Follow the attempt, printing each phase; exit 0 only if it upgraded (or was current, or a
        /// dry run).
        #[arg(long)]
        wait: bool,
        /// How long --wait follows the attempt.
        #[arg(long, value_name = "DURATION", default_value = "2h", value_parser = duration)]
        timeout: Duration,
        /// Print the agent's answer as JSON (one object) instead of a sentence.
        #[arg(long, conflicts_with = "wait")]
        json: bool,
    },
    /// Show an agent's status: who it is, what it runs, what it does now.
    #[command(after_help = "Examples:\n  \
                            nixos-hydra-upgrade status\n  \
                            nixos-hydra-upgrade status --url http://web1:9980 --follow\n  \
                            nixos-hydra-upgrade status --json | jq .last_attempt\n\n\
                            Without --url the address is the `listen` of the config file \
                            (--config, $NIXOS_HYDRA_UPGRADE_CONFIG, or the default path), else \
                            http://127.0.0.1:9980.\n\
                            Exit status: 0, 1 if the agent is unreachable.")]
    Status {
        /// The agent's base URL or unix:/path [default: `listen` of the config, else http://127.0.0.1:9980].
        #[arg(long, value_name = "URL")]
        url: Option<String>,
        #[arg(long, value_name = "FILE", env = CONFIG_ENV, hide_env = true, help = CONFIG_HELP)]
        config: Option<PathBuf>,
        /// Print the raw JSON of GET /v1/status.
        #[arg(long, conflicts_with = "follow")]
        json: bool,
        /// After the status, print one line per phase change until interrupted (Ctrl-C).
        #[arg(long)]
        follow: bool,
    },
    /// Run the configured health checks once and print each result.
    #[command(after_help = "Examples:\n  \
                            nixos-hydra-upgrade check\n  \
                            nixos-hydra-upgrade check --config ./agent.toml\n\n\
                            Exit status: 0 all passed, 1 any failed, 2 bad config.")]
    Check {
        #[arg(long, value_name = "FILE", env = CONFIG_ENV, hide_env = true, help = CONFIG_HELP)]
        config: Option<PathBuf>,
    },
    /// Evaluate a systemd calendar event (as for `dates`) the way the schedule does.
    #[command(after_help = "Examples:\n  \
                            nixos-hydra-upgrade calendar 04:40\n  \
                            nixos-hydra-upgrade calendar --iterations 3 'Mon..Fri 02:00 Europe/Berlin'\n  \
                            nixos-hydra-upgrade calendar --json --base-time @1767225600 weekly\n\n\
                            Exit status: 0, 2 if EXPR is invalid.")]
    Calendar {
        /// How many next elapses to print.
        #[arg(long, value_name = "N", default_value_t = 1)]
        iterations: u32,
        /// Count from this time: RFC 3339 or @UNIX seconds [default: now].
        #[arg(long, value_name = "TIME")]
        base_time: Option<String>,
        /// Print {"normalized": …, "next": […]}.
        #[arg(long)]
        json: bool,
        /// A systemd.time(7) calendar event, e.g. `04:40`, `daily`, `Sat *-*-* 02:00 UTC`.
        #[arg(value_name = "EXPR", allow_hyphen_values = true)]
        expr: String,
    },
    /// A self-contained tour: simulated Hydra, an agent in dry-run mode, a signed notification.
    #[command(after_help = "Examples:\n  \
                            nixos-hydra-upgrade demo\n  \
                            nixos-hydra-upgrade demo --keep    # then try status and trigger yourself")]
    Demo {
        /// Leave the simulated Hydra and the agent running and print commands to try, until Ctrl-C.
        #[arg(long)]
        keep: bool,
    },
}
