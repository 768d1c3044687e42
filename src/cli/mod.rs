//! The command line: subcommands, and everything that talks to an agent from outside (SPEC §2).

mod args;
mod calendar;
pub mod client;
mod commands;
pub mod demo;
pub mod fleet;
pub mod follow;
pub mod notify;
pub mod retry;
pub mod spool;
pub mod status_view;

pub use args::{Cli, Command};
pub use commands::run;
