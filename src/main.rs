//! The `nixos-hydra-upgrade` binary: parse the command line and hand over to the library.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = nixos_hydra_upgrade::cli::Cli::parse();
    std::process::ExitCode::from(nixos_hydra_upgrade::cli::run(cli.command))
}
