//! nixos-hydra-upgrade: upgrades a NixOS host the moment its system closure turns green in Hydra.
//!
//! Layers (docs/architecture.md; `tests/layering.rs` keeps them): `model` names things and uses
//! nothing; the leaves use only `model`; components are handed their parts by `app`; `cli` talks
//! to the agent over HTTP.

// The vocabulary.
pub mod model;

// Leaves.
pub mod calendar;
pub mod config;
pub mod durable;
pub mod exec;
pub mod health;
pub mod host;
pub mod hydra;
pub mod ledger;
pub mod logging;
pub mod metrics;
pub mod net;
pub mod progress;
pub mod queue;
pub mod refused_flags;
pub mod replay;
pub mod rollout;
pub mod signature;
pub mod systemd_notify;

// Components, and the composition root that builds them.
pub mod app;
pub mod hooks;
pub mod http;
pub mod intake;
pub mod recovery;
pub mod schedule;
pub mod status;
pub mod upgrade;

// The command line.
pub mod cli;
