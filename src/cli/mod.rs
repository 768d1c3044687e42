//! The command line: subcommands, and everything that talks to an agent from outside (SPEC §2).

pub mod args;
mod calendar;
mod check_config;
pub mod client;
mod commands;
pub mod demo;
pub mod fleet;
pub mod follow;
pub mod notify;
pub mod retry;
pub mod spool;
pub mod status_view;
mod watch;

pub use args::{Cli, Command};
pub use commands::run;
