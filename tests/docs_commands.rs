//! Every command and config block in README.md and docs/*.md is checked against the real program:
//! each `nixos-hydra-upgrade …` line in a code block parses with the real command line
//! (`cli::Cli`), each TOML block passes `check-config` run as the real binary, each Nix block
//! parses (`nix-instantiate --parse`) and sets only options module.nix declares, relative links
//! lead to files, and the README's key recipe makes a key the agent loads. All failures are
//! reported at once, each as file:line.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;

use clap::Parser;
use nixos_hydra_upgrade::cli::Cli;

/// Precedes a TOML block that must pass `check-config` exactly as written.
const CHECK_CONFIG_MARKER: &str = "<!-- check-config -->";

/// Added to a TOML fragment that has no `[hydra]` table, so `check-config` can judge the rest.
const HYDRA_TABLE: &str = "\n[hydra]\ninstance = \"https://hydra.example.com\"\nproject = \"nix-config\"\njobset = \"main\"\n";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// README.md and every docs/*.md, as (relative path, text).
fn pages() -> Vec<(String, String)> {
    let mut names = vec!["README.md".to_string()];
    let mut docs: Vec<String> = std::fs::read_dir(root().join("docs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".md"))
        .map(|n| format!("docs/{n}"))
        .collect();
    docs.sort();
    names.extend(docs);
    names
        .into_iter()
        .map(|n| {
            let text = std::fs::read_to_string(root().join(&n)).unwrap();
            (n, text)
        })
        .collect()
}

struct Block {
    file: String,
    lang: String,
    /// (1-based line number, text)
    lines: Vec<(usize, String)>,
    check_config: bool,
}

impl Block {
    fn text(&self) -> String {
        self.lines
            .iter()
            .map(|(_, l)| l.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn start(&self) -> usize {
        self.lines.first().map_or(0, |(n, _)| *n)
    }
}

fn blocks(file: &str, text: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut open: Option<Block> = None;
    let mut previous = "";
    for (index, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if let Some(info) = trimmed.strip_prefix("```") {
            match open.take() {
                Some(block) => out.push(block),
                None => {
                    open = Some(Block {
                        file: file.to_string(),
                        lang: info.trim().to_string(),
                        lines: Vec::new(),
                        check_config: previous.trim() == CHECK_CONFIG_MARKER,
                    })
                }
            }
        } else if let Some(block) = open.as_mut() {
            block.lines.push((index + 1, line.to_string()));
        }
        if !line.trim().is_empty() {
            previous = line;
        }
    }
    assert!(open.is_none(), "{file}: a code block is never closed");
    out
}

/// Shell-like words of one command line, split into simple commands at `|`, `;`, `&&`, `||`,
/// `(` and `)`; a word starting with `#` ends the line; redirections end a command's words.
fn simple_commands(line: &str) -> Vec<Vec<String>> {
    let mut commands = vec![Vec::new()];
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = line.chars().peekable();
    let mut redirected = false;
    let finish = |word: &mut String,
                  in_word: &mut bool,
                  commands: &mut Vec<Vec<String>>,
                  redirected: bool| {
        if *in_word && !redirected {
            commands.last_mut().unwrap().push(std::mem::take(word));
        }
        word.clear();
        *in_word = false;
    };
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                for q in chars.by_ref() {
                    if q == '\'' {
                        break;
                    }
                    word.push(q);
                }
            }
            '"' => {
                in_word = true;
                while let Some(q) = chars.next() {
                    match q {
                        '"' => break,
                        '\\' => {
                            if let Some(n) = chars.next() {
                                word.push(n);
                            }
                        }
                        _ => word.push(q),
                    }
                }
            }
            '\\' => {
                in_word = true;
                if let Some(n) = chars.next() {
                    word.push(n);
                }
            }
            '#' if !in_word => break,
            c if c.is_whitespace() => finish(&mut word, &mut in_word, &mut commands, redirected),
            '|' | ';' | '&' | '(' | ')' => {
                finish(&mut word, &mut in_word, &mut commands, redirected);
                while matches!(chars.peek(), Some('|' | '&')) {
                    chars.next();
                }
                commands.push(Vec::new());
                redirected = false;
            }
            '>' | '<' if !in_word || word.chars().all(|d| d.is_ascii_digit()) => {
                word.clear();
                in_word = false;
                redirected = true;
            }
            _ => {
                in_word = true;
                word.push(c);
            }
        }
    }
    finish(&mut word, &mut in_word, &mut commands, redirected);
    commands.retain(|c| !c.is_empty());
    commands
}

/// The arguments after the program name when this simple command runs nixos-hydra-upgrade
/// (directly, through a path, as hydra.conf's `command = …`, or as `cargo run … -- ARGS`).
fn invocation(words: &[String]) -> Option<Vec<String>> {
    let mut i = 0;
    while i < words.len() {
        let w = words[i].as_str();
        let assignment = w.split_once('=').is_some_and(|(name, _)| {
            !name.is_empty() && name.chars().all(|c| c == '_' || c.is_ascii_alphanumeric())
        });
        if matches!(w, "$" | "sudo" | "env" | "exec" | "time") || assignment {
            i += 1;
        } else if w == "command" && words.get(i + 1).map(String::as_str) == Some("=") {
            i += 2;
        } else {
            break;
        }
    }
    let program = words.get(i)?;
    if program == "nixos-hydra-upgrade" || program.ends_with("/nixos-hydra-upgrade") {
        return Some(words[i + 1..].to_vec());
    }
    if program == "cargo" && words.get(i + 1).map(String::as_str) == Some("run") {
        let dashes = words.iter().position(|w| w == "--")?;
        return Some(words[dashes + 1..].to_vec());
    }
    None
}

/// Each command line of a block (continuation lines joined) with its first line number.
fn command_lines(block: &Block) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (n, line) in &block.lines {
        let (number, mut text) = current.take().unwrap_or((*n, String::new()));
        if let Some(head) = line.trim_end().strip_suffix('\\') {
            text.push_str(head);
            text.push(' ');
            current = Some((number, text));
        } else {
            text.push_str(line);
            out.push((number, text));
        }
    }
    out.extend(current);
    out
}

struct Report {
    failures: Vec<String>,
    checked: usize,
}

fn check_commands(block: &Block, report: &mut Report) {
    for (number, line) in command_lines(block) {
        for words in simple_commands(&line) {
            let Some(args) = invocation(&words) else {
                continue;
            };
            report.checked += 1;
            let argv =
                std::iter::once("nixos-hydra-upgrade".to_string()).chain(args.iter().cloned());
            let result = match Cli::try_parse_from(argv) {
                Ok(_) => Ok(()),
                Err(e)
                    if matches!(
                        e.kind(),
                        clap::error::ErrorKind::DisplayHelp
                            | clap::error::ErrorKind::DisplayVersion
                    ) =>
                {
                    Ok(())
                }
                Err(e) => Err(e.to_string().lines().next().unwrap_or_default().to_string()),
            };
            let place = format!(
                "{}:{number}: nixos-hydra-upgrade {}",
                block.file,
                args.join(" ")
            );
            if let Err(e) = result {
                report.failures.push(format!("{place}: {e}"));
            }
        }
    }
}

fn check_toml(block: &Block, dir: &Path, report: &mut Report) {
    let mut text = block.text();
    if !block.check_config && !text.lines().any(|l| l.trim() == "[hydra]") {
        text.push_str(HYDRA_TABLE);
    }
    let file = dir.join(format!("block-{}.toml", report.checked));
    std::fs::write(&file, &text).unwrap();
    report.checked += 1;
    // The examples name a NixOS host's programs (/run/current-system/sw/bin/…), not this machine's.
    let output = Command::new(env!("CARGO_BIN_EXE_nixos-hydra-upgrade"))
        .arg("check-config")
        .arg("--skip-programs")
        .arg("--config")
        .arg(&file)
        .output()
        .unwrap();
    if !output.status.success() {
        report.failures.push(format!(
            "{}:{}: TOML block fails check-config: {}",
            block.file,
            block.start(),
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
}

/// Option paths under `options.system.autoUpgradeHydra` (module.nix declares each on one line
/// at the block's first indentation: `hydra.job = lib.mkOption {`).
fn declared_options() -> Vec<String> {
    let module = std::fs::read_to_string(root().join("module.nix")).unwrap();
    let lines: Vec<&str> = module.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.trim() == "options.system.autoUpgradeHydra = {")
        .expect("module.nix declares options.system.autoUpgradeHydra");
    let indent = |l: &str| l.len() - l.trim_start().len();
    let level = indent(lines[start]) + 2;
    let mut options = Vec::new();
    for line in &lines[start + 1..] {
        if indent(line) == level - 2 && line.trim() == "};" {
            break;
        }
        if indent(line) != level {
            continue;
        }
        if let Some((name, value)) = line.trim().split_once(" = ")
            && value.starts_with("lib.mk")
            && value.contains("Option")
        {
            options.push(name.to_string());
        }
    }
    assert!(
        options.len() > 10,
        "module.nix: too few options found: {options:?}"
    );
    options
}

fn nix(args: &[&str]) -> std::process::Output {
    Command::new("nix-instantiate")
        .args(args)
        .output()
        .expect("nix-instantiate is required for this test and missing (Debian: nix-bin)")
}

fn check_nix(block: &Block, declared: &[String], report: &mut Report) {
    report.checked += 1;
    let text = block.text();
    // A page may show a bare binding (`services.hydra.extraConfig = …;`) rather than a module:
    // it is read as the body of a module with the usual arguments.
    let expression = if nix(&["--parse", "-E", &text]).status.success() {
        text
    } else {
        let wrapped = format!(
            "{{ config, lib, pkgs, inputs, options, self, modulesPath, ... }}:\n{{\n{text}\n}}"
        );
        let output = nix(&["--parse", "-E", &wrapped]);
        if !output.status.success() {
            report.failures.push(format!(
                "{}:{}: Nix block does not parse: {}",
                block.file,
                block.start(),
                String::from_utf8_lossy(&output.stderr).trim()
            ));
            return;
        }
        wrapped
    };
    let declared: Vec<String> = declared.iter().map(|o| format!("{o:?}")).collect();
    // Walks system.autoUpgradeHydra without forcing option values: a path is fine when module.nix
    // declares it, is walked into when it is an attribute set, else it is unknown.
    let walker = format!(
        r#"let
  declared = [ {} ];
  block = (
{expression}
  );
  stub = {{ inputs = {{ }}; lib = {{ }}; pkgs = {{ }}; config = {{ }}; options = {{ }}; self = {{ }}; modulesPath = ""; }};
  value = if builtins.isFunction block then block stub else block;
  top = if builtins.isAttrs value then value else {{ }};
  system = if builtins.isAttrs (top.system or null) then top.system else {{ }};
  cfg = system.autoUpgradeHydra or {{ }};
  walk = prefix: set: builtins.concatLists (map (name:
    let path = if prefix == "" then name else "${{prefix}}.${{name}}"; in
    if builtins.elem path declared then [ ]
    else if builtins.isAttrs set.${{name}} then walk path set.${{name}}
    else [ path ]) (builtins.attrNames set));
in walk "" cfg"#,
        declared.join(" ")
    );
    let output = nix(&["--eval", "--strict", "-E", &walker]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        report.failures.push(format!(
            "{}:{}: Nix block: cannot read its system.autoUpgradeHydra settings: {}",
            block.file,
            block.start(),
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    } else if stdout.trim() != "[ ]" {
        report.failures.push(format!(
            "{}:{}: Nix block sets options module.nix does not declare: system.autoUpgradeHydra.{}",
            block.file,
            block.start(),
            stdout.trim()
        ));
    }
}

/// Relative links `](path)` and `]: path` of a page lead to existing files.
fn check_links(file: &str, text: &str, report: &mut Report) {
    let base = Path::new(file).parent().unwrap_or(Path::new(""));
    for (index, line) in text.lines().enumerate() {
        let mut targets = Vec::new();
        let mut rest = line;
        while let Some(at) = rest.find("](") {
            rest = &rest[at + 2..];
            if let Some(end) = rest.find(')') {
                targets.push(rest[..end].to_string());
            }
        }
        if let Some((_, target)) = line.split_once("]: ")
            && line.starts_with('[')
        {
            targets.push(target.trim().to_string());
        }
        for target in targets {
            if target.contains("://") || target.starts_with('#') || target.starts_with("mailto:") {
                continue;
            }
            let path = target.split('#').next().unwrap_or_default();
            let joined = base.join(path);
            let normal = normalize(&joined);
            report.checked += 1;
            if !root().join(&normal).exists() {
                report.failures.push(format!(
                    "{file}:{}: link to a missing file: {target}",
                    index + 1
                ));
            }
        }
    }
}

fn normalize(path: &Path) -> String {
    let mut parts: Vec<String> = Vec::new();
    for part in path.components() {
        match part {
            std::path::Component::ParentDir => {
                parts.pop();
            }
            std::path::Component::Normal(p) => parts.push(p.to_string_lossy().into_owned()),
            _ => {}
        }
    }
    parts.join("/")
}

#[test]
fn every_command_and_config_in_the_docs_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    let declared = declared_options();
    let mut report = Report {
        failures: Vec::new(),
        checked: 0,
    };
    let mut commands = 0;
    let mut tomls = 0;
    let mut nixes = 0;
    for (file, text) in pages() {
        check_links(&file, &text, &mut report);
        for block in blocks(&file, &text) {
            let before = report.checked;
            check_commands(&block, &mut report);
            commands += report.checked - before;
            match block.lang.as_str() {
                "toml" => {
                    check_toml(&block, dir.path(), &mut report);
                    tomls += 1;
                }
                "nix" => {
                    check_nix(&block, &declared, &mut report);
                    nixes += 1;
                }
                _ => {}
            }
        }
    }
    println!("checked {commands} command lines, {tomls} TOML blocks, {nixes} Nix blocks");
    assert!(
        commands >= 10,
        "only {commands} command lines found in the docs"
    );
    assert!(
        tomls >= 3 && nixes >= 3,
        "too few config blocks found: {tomls} TOML, {nixes} Nix"
    );
    assert!(
        report.failures.is_empty(),
        "{} problems in the docs:\n{}",
        report.failures.len(),
        report.failures.join("\n")
    );
}

#[test]
fn the_quick_start_config_is_marked_for_check_config() {
    let marked = pages()
        .iter()
        .flat_map(|(file, text)| blocks(file, text))
        .filter(|b| b.check_config && b.lang == "toml")
        .count();
    assert!(marked >= 1, "no TOML block marked {CHECK_CONFIG_MARKER}");
}

#[test]
fn the_readme_key_recipe_makes_a_key_the_agent_loads() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let recipe = blocks("README.md", &readme)
        .into_iter()
        .flat_map(|b| b.lines)
        .map(|(_, l)| l)
        .find(|l| l.contains("printf 'whsec_"))
        .expect("README shows how to make the key");
    let dir = tempfile::tempdir().unwrap();
    let status = Command::new("sh")
        .arg("-c")
        .arg(&recipe)
        .current_dir(dir.path())
        .status()
        .unwrap();
    assert!(status.success(), "the key recipe failed: {recipe}");
    let key = dir.path().join("nixos-hydra-upgrade.key");
    let keys = nixos_hydra_upgrade::signature::Keys::load(&key);
    assert!(keys.is_ok(), "{recipe}: {:?}", keys.err());
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the key file is readable by others: {mode:o}");
}

#[test]
fn the_command_scanner_finds_invocations_and_only_them() {
    let found = |line: &str| -> Vec<Vec<String>> {
        simple_commands(line)
            .iter()
            .filter_map(|w| invocation(w))
            .collect()
    };
    assert_eq!(
        found("TZ=Europe/Berlin nixos-hydra-upgrade calendar --json 'Mon *-*-* 04:40' # note"),
        vec![vec!["calendar", "--json", "Mon *-*-* 04:40"]]
    );
    assert_eq!(
        found("nixos-hydra-upgrade status --json | jq .last_attempt"),
        vec![vec!["status", "--json"]]
    );
    assert_eq!(
        found("command = /run/current-system/sw/bin/nixos-hydra-upgrade notify --url http://a:1"),
        vec![vec!["notify", "--url", "http://a:1"]]
    );
    assert_eq!(
        found("cargo run --release -- demo   # tour"),
        vec![vec!["demo"]]
    );
    assert!(found("journalctl -u nixos-hydra-upgrade -o cat").is_empty());
    assert!(found("systemctl restart nixos-hydra-upgrade").is_empty());
    assert_eq!(
        found("nixos-hydra-upgrade check-config --config a.toml 2>&1 > out"),
        vec![vec!["check-config", "--config", "a.toml"]]
    );
}

#[test]
fn the_readme_opens_with_the_demo_and_the_ci_command() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let first = blocks("README.md", &readme)
        .into_iter()
        .next()
        .expect("README has a code block");
    let words: Vec<Vec<String>> = first
        .lines
        .iter()
        .flat_map(|(_, l)| simple_commands(l))
        .collect();
    assert_eq!(
        words,
        vec![
            vec!["cargo", "run", "--release", "--", "demo"],
            vec!["bash", ".ci/run"]
        ],
        "README's first block: the demo, then exactly what CI runs"
    );
    assert!(root().join(".ci/run").is_file(), ".ci/run is missing");
}
