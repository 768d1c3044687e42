//! The command line (SPEC §2): one variant per subcommand.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "nixos-hydra-upgrade",
    version,
    about = "Upgrades this NixOS host when its Hydra build turns green"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent.
    Serve {
        #[arg(long)]
        config: PathBuf,
    },
    /// Parse and validate a config file (reads no secret, touches no network).
    CheckConfig {
        #[arg(long)]
        config: PathBuf,
    },
    /// Hydra-side sender: deliver the RunCommand payload ($HYDRA_JSON), signed, to the agents.
    ///
    /// One concurrent round bounded by --hand-back, then it returns; what is still undelivered
    /// goes to the spool (--spool, else $NIXOS_HYDRA_UPGRADE_SPOOL, both drained by a `retry`
    /// service; else ~/.local/state/nixos-hydra-upgrade/spool drained by a detached `retry` this
    /// command starts). Exit 0 when every agent got it or it is spooled, 1 when any refused it.
    #[command(
        after_help = "Example (hydra.conf <runcommand>):\n  nixos-hydra-upgrade notify --secret-file /var/lib/hydra/nixos-hydra-upgrade.key \\\n    --spool /var/spool/nixos-hydra-upgrade --url http://web1:9980 --url http://web2:9980"
    )]
    Notify {
        /// Agent base URL (or unix:/path); repeatable.
        #[arg(long = "url", value_name = "URL")]
        urls: Vec<String>,
        /// Deliver only payloads of job JOB to URL; repeatable.
        #[arg(long = "route", value_name = "JOB=URL")]
        routes: Vec<String>,
        #[arg(long)]
        secret_file: PathBuf,
        /// The payload file (default: $HYDRA_JSON).
        #[arg(long)]
        hydra_json: Option<PathBuf>,
        /// How long the one round of deliveries may take before the command returns to Hydra.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        hand_back: Duration,
        /// Until when an undelivered notification is retried (by the retrier) before it is given up.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        deadline: Duration,
        /// Spool directory for what is undelivered after the hand-back (a `retry` service drains it).
        #[arg(long, value_name = "DIR")]
        spool: Option<PathBuf>,
    },
    /// Deliver what `notify` spooled: same webhook-id, fresh signature, backoff, until each
    /// entry's deadline; a newer build for the same agent supersedes an older one; every give-up
    /// is logged. Runs until SIGTERM unless --once or --exit-when-empty.
    #[command(
        after_help = "Example (a service on the Hydra host):\n  nixos-hydra-upgrade retry --spool /var/spool/nixos-hydra-upgrade \\\n    --secret-file /var/lib/hydra/nixos-hydra-upgrade.key"
    )]
    Retry {
        #[arg(long, value_name = "DIR")]
        spool: PathBuf,
        #[arg(long)]
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
        after_help = "Example:\n  nixos-hydra-upgrade fleet --url http://web1:9980 --hosts-file /etc/fleet-hosts \\\n    --spool /var/spool/nixos-hydra-upgrade"
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
    Trigger {
        #[arg(long)]
        url: String,
        #[arg(long)]
        secret_file: PathBuf,
        #[arg(long)]
        build: Option<u64>,
        /// Allow redeploying the deployed build or going back to an older one.
        #[arg(long)]
        force: bool,
        /// Follow the attempt, printing each phase; exit 0 only if it upgraded (or was current).
        #[arg(long)]
        wait: bool,
        /// How long --wait follows the attempt.
        #[arg(long, default_value = "2h", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// Show an agent's status.
    Status {
        #[arg(long, default_value = "http://127.0.0.1:9980")]
        url: String,
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run the configured health checks once and print each result.
    Check {
        #[arg(long)]
        config: PathBuf,
    },
    /// Evaluate a systemd calendar event the way the schedule does.
    Calendar {
        #[arg(long, default_value_t = 1)]
        iterations: u32,
        /// RFC 3339 or @UNIX (default: now).
        #[arg(long)]
        base_time: Option<String>,
        #[arg(long)]
        json: bool,
        #[arg(allow_hyphen_values = true)]
        expr: String,
    },
    /// A self-contained tour: simulated Hydra, an agent in dry-run mode, a signed notification.
    Demo,
}
