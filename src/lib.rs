//! nixos-hydra-upgrade: upgrades a NixOS host the moment its system closure turns green in Hydra.

pub mod app;
pub mod calendar;
pub mod cli;
pub mod client;
pub mod closure_diff;
pub mod commands;
pub mod config;
pub mod demo;
pub mod follow;
pub mod health;
pub mod hooks;
pub mod http;
pub mod hydra;
pub mod intake;
pub mod logging;
pub mod metrics;
pub mod notify;
pub mod queue;
pub mod recovery;
pub mod replay;
pub mod schedule;
pub mod signature;
pub mod state;
pub mod status_view;
pub mod systemd_notify;
pub mod upgrade;
