//! Generates the shell completions and the man page from the clap definition in src/cli/args.rs
//! (compiled here too, as a module: one definition for the binary and its documentation).
//!
//! They land in `$OUT_DIR/assets/` (package.nix installs them from
//! `$releaseDir/build/nixos-hydra-upgrade-*/out/assets/`; tests read them through `OUT_DIR`).

#[allow(dead_code)]
#[path = "src/cli/args.rs"]
mod args;

use std::path::Path;

use clap::CommandFactory;
use clap_complete::Shell;

fn main() -> std::io::Result<()> {
    println!("cargo::rerun-if-changed=src/cli/args.rs");
    println!("cargo::rerun-if-changed=build.rs");
    let out = std::env::var_os("OUT_DIR").ok_or_else(|| std::io::Error::other("OUT_DIR unset"))?;
    let assets = Path::new(&out).join("assets");
    let completions = assets.join("completions");
    let man = assets.join("man");
    // Fresh each time: a subcommand renamed or removed leaves no stale page behind.
    if assets.exists() {
        std::fs::remove_dir_all(&assets)?;
    }
    std::fs::create_dir_all(&completions)?;
    std::fs::create_dir_all(&man)?;

    let mut command = args::Cli::command();
    for shell in [Shell::Bash, Shell::Fish, Shell::Zsh] {
        clap_complete::generate_to(shell, &mut command, "nixos-hydra-upgrade", &completions)?;
    }
    // One page for the command and one per subcommand (nixos-hydra-upgrade-status.1, …), from a
    // command not yet built: clap_mangen leaves out the `help` subcommand only then.
    clap_mangen::generate_to(args::Cli::command(), &man)?;
    Ok(())
}
