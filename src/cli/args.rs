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
        /// Hard limit for all deliveries together.
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        deadline: Duration,
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
