//! The `nixos-rebuild` flags the agent refuses in `flags`, each with why; module.nix and
//! docs/nixos.md list the same ones (tests/nix_module_options.rs compares the three).

/// One refused flag: its spellings (long first) and why it is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefusedFlag {
    pub names: &'static [&'static str],
    pub reason: &'static str,
}

/// Every flag of nixos-rebuild(-ng)'s argument parser that deploys something other than the
/// build Hydra verified, or that breaks the agent's own checks.
pub const REFUSED: &[RefusedFlag] = &[
    RefusedFlag {
        names: &["--flake", "-F"],
        reason: "the agent passes the target itself (the flake of Hydra's evaluation)",
    },
    RefusedFlag {
        names: &["--store-path"],
        reason: "the agent passes the target itself (the store path Hydra built)",
    },
    RefusedFlag {
        names: &["--no-flake"],
        reason: "makes nixos-rebuild build /etc/nixos/configuration.nix instead of Hydra's build",
    },
    RefusedFlag {
        names: &["--file", "-f"],
        reason: "builds the system from another Nix file instead of deploying Hydra's build",
    },
    RefusedFlag {
        names: &["--attr", "-A"],
        reason: "builds another attribute instead of deploying Hydra's build",
    },
    RefusedFlag {
        names: &["--include", "-I"],
        reason: "changes the search path the configuration is evaluated with, so another system is built",
    },
    RefusedFlag {
        names: &["--override-input"],
        reason: "replaces a flake input, so the result is not the system Hydra built",
    },
    RefusedFlag {
        names: &["--update-input"],
        reason: "updates a flake input, so the result is not the system Hydra built",
    },
    RefusedFlag {
        names: &["--recreate-lock-file"],
        reason: "re-locks every flake input, so the result is not the system Hydra built",
    },
    RefusedFlag {
        names: &["--commit-lock-file"],
        reason: "writes the flake's lock file; the agent deploys, it never edits the flake",
    },
    RefusedFlag {
        names: &["--impure"],
        reason: "lets the host's environment change the evaluation, so the result may differ from Hydra's build",
    },
    RefusedFlag {
        names: &["--upgrade"],
        reason: "updates root's channels and evaluates against them instead of Hydra's build",
    },
    RefusedFlag {
        names: &["--upgrade-all"],
        reason: "updates all of root's channels and evaluates against them instead of Hydra's build",
    },
    RefusedFlag {
        names: &["--rollback"],
        reason: "activates the previous generation instead of Hydra's build",
    },
    RefusedFlag {
        names: &["--profile-name", "-p"],
        reason: "installs into another profile, so the reboot decision and rollback read the wrong one (system.system_profile)",
    },
    RefusedFlag {
        names: &["--specialisation", "-c"],
        reason: "activates a specialisation, so the running system never equals the target and post-checks roll back",
    },
    RefusedFlag {
        names: &["--target-host"],
        reason: "deploys to another machine; the agent upgrades the host it runs on",
    },
    RefusedFlag {
        names: &["--build-host"],
        reason: "builds on another machine; the agent deploys what Hydra built, it does not build",
    },
];

/// Short flags that take no value: argparse lets them lead a cluster such as `-vp name`.
const VALUELESS_SHORT: &str = "vkKLQsSh";

/// The refused flag that `argument` spells, if any: `--long`, `--long=value`, `-x`, `-xvalue`,
/// or `x` after leading value-less short flags (`-Lp`).
pub fn refused(argument: &str) -> Option<&'static RefusedFlag> {
    let spelled = |wanted: &str| REFUSED.iter().find(|r| r.names.contains(&wanted));
    if let Some(long) = argument.strip_prefix("--") {
        let name = long.split('=').next().unwrap_or(long);
        return spelled(&format!("--{name}"));
    }
    let cluster = argument.strip_prefix('-')?;
    let first = cluster.chars().find(|c| !VALUELESS_SHORT.contains(*c))?;
    spelled(&format!("-{first}"))
}

/// The first refused flag in `flags`, as "FLAG: REASON".
pub fn check(flags: &[String]) -> Result<(), String> {
    match flags.iter().find_map(|f| refused(f).map(|r| (f, r))) {
        None => Ok(()),
        Some((flag, r)) => Err(format!(
            "{flag} is refused: {}; remove it (refused: {})",
            r.reason,
            REFUSED
                .iter()
                .map(|r| r.names.join("/"))
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings() {
        let cases = [
            ("--flake", Some("--flake")),
            ("--flake=github:a/b#c", Some("--flake")),
            ("-F", Some("--flake")),
            ("-p", Some("--profile-name")),
            ("-ptest", Some("--profile-name")),
            ("-Lp", Some("--profile-name")),
            ("-vvc", Some("--specialisation")),
            ("-Inixpkgs=/x", Some("--include")),
            ("--override-input", Some("--override-input")),
            ("--no-flake", Some("--no-flake")),
            ("-L", None),
            ("-vL", None),
            ("-j4", None),
            ("-jfoo", None),
            ("--option", None),
            ("--print-build-logs", None),
            ("--no-reexec", None),
            ("--fast", None),
            ("connect-timeout", None),
            ("-", None),
            ("--", None),
            ("", None),
        ];
        for (arg, want) in cases {
            assert_eq!(refused(arg).map(|r| r.names[0]), want, "{arg}");
        }
    }

    #[test]
    fn every_name_is_refused_and_unique() {
        let mut seen = std::collections::HashSet::new();
        for r in REFUSED {
            assert!(!r.reason.is_empty());
            for name in r.names {
                assert!(seen.insert(*name), "{name} listed twice");
                assert_eq!(refused(name), Some(r), "{name}");
            }
        }
    }

    #[test]
    fn check_names_the_flag_and_why() {
        let err = check(&["-L".into(), "--rollback".into()]).err();
        assert!(err.as_deref().is_some_and(|e| {
            e.starts_with("--rollback is refused: activates the previous generation")
        }));
        assert_eq!(
            check(&["--option".into(), "cores".into(), "2".into()]),
            Ok(())
        );
    }
}
