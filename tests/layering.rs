//! The layering of docs/architecture.md as data: reads every file under src/ and fails on an
//! import that crosses a layer the wrong way, naming the file, the line and the rule's reason.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

/// The shared vocabulary.
const VOCABULARY: &[&str] = &["model"];
/// Parts that own one thing and know no component.
const LEAVES: &[&str] = &[
    "calendar",
    "config",
    "durable",
    "exec",
    "health",
    "host",
    "hydra",
    "ledger",
    "logging",
    "metrics",
    "net",
    "progress",
    "queue",
    "refused_flags",
    "replay",
    "rollout",
    "signature",
    "systemd_notify",
];
/// Components: built by the composition root, each handed exactly its parts.
const COMPONENTS: &[&str] = &[
    "hooks", "http", "intake", "recovery", "schedule", "status", "upgrade",
];
/// Modules that exist only at run time (what config must not know).
const RUNTIME: &[&str] = &[
    "app",
    "hooks",
    "http",
    "intake",
    "recovery",
    "schedule",
    "status",
    "upgrade",
    "ledger",
    "metrics",
    "progress",
    "queue",
    "replay",
    "systemd_notify",
    "cli",
];

struct Rule {
    /// Top-level modules the rule applies to.
    from: &'static [&'static str],
    /// What they may not import.
    forbidden: fn(&str) -> bool,
    reason: &'static str,
}

const RULES: &[Rule] = &[
    Rule {
        from: VOCABULARY,
        forbidden: |to| to != "model",
        reason: "the vocabulary names things and uses nothing, so everything may use it",
    },
    Rule {
        from: LEAVES,
        forbidden: |to| COMPONENTS.contains(&to) || to == "app" || to == "cli",
        reason: "a leaf owns one thing; knowing a component would tie it to the runtime's shape",
    },
    Rule {
        from: COMPONENTS,
        forbidden: |to| to == "app" || to == "cli",
        reason: "components are handed their parts by app.rs; reaching back into it hides who needs what",
    },
    Rule {
        from: &["config"],
        forbidden: |to| RUNTIME.contains(&to),
        reason: "config is read by check-config without starting anything: it may not know runtime parts",
    },
    Rule {
        from: &["ledger", "metrics"],
        forbidden: |to| !matches!(to, "model" | "queue" | "durable"),
        reason: "the record and its metrics speak only the vocabulary (with the queue's pure rules and the atomic file writer)",
    },
    Rule {
        from: &["hydra"],
        forbidden: |to| !matches!(to, "model" | "net"),
        reason: "the Hydra client takes plain values: no settings, no CLI code",
    },
    Rule {
        from: &["cli"],
        forbidden: |to| COMPONENTS.contains(&to) || matches!(to, "ledger" | "queue" | "progress"),
        reason: "the command line talks to an agent over HTTP, never to its parts (app.rs starts one for serve and demo)",
    },
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file belongs to (`src/upgrade/attempt.rs` → `upgrade`).
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let relative = file.strip_prefix(src).ok()?;
    let first = relative.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (!matches!(name, "lib" | "main")).then(|| name.to_owned())
}

/// `crate::<module>` references outside comments, with their line numbers.
fn imports(text: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or_default();
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                found.push((number + 1, name));
            }
        }
    }
    found
}

#[test]
fn imports_follow_the_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    assert!(files.len() > 30, "read {} files under src/", files.len());
    let mut violations = Vec::new();
    for file in &files {
        let Some(from) = module_of(&src, file) else {
            continue;
        };
        let text = std::fs::read_to_string(file).unwrap();
        for (line, to) in imports(&text) {
            if to == from {
                continue;
            }
            for rule in RULES {
                if rule.from.contains(&from.as_str()) && (rule.forbidden)(&to) {
                    violations.push(format!(
                        "{}:{line}: {from} imports {to}: {}",
                        file.strip_prefix(&src).unwrap().display(),
                        rule.reason
                    ));
                }
            }
        }
    }
    assert!(
        violations.is_empty(),
        "{} forbidden imports:\n{}",
        violations.len(),
        violations.join("\n")
    );
}

#[test]
fn every_module_is_placed_in_a_layer() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let lib = std::fs::read_to_string(src.join("lib.rs")).unwrap();
    for line in lib.lines() {
        if let Some(name) = line
            .strip_prefix("pub mod ")
            .and_then(|l| l.strip_suffix(';'))
        {
            let placed = VOCABULARY.contains(&name)
                || LEAVES.contains(&name)
                || COMPONENTS.contains(&name)
                || matches!(name, "app" | "cli");
            assert!(placed, "src/{name}: add it to a layer in tests/layering.rs");
        }
    }
}

#[test]
fn the_checker_sees_a_forbidden_import() {
    let text = "use crate::model::Job; // crate::app in a comment\nuse crate::app::start;\n";
    assert_eq!(
        imports(text),
        [(1, "model".to_owned()), (2, "app".to_owned())]
    );
    let rule = &RULES[2];
    assert!((rule.forbidden)("app") && !(rule.forbidden)("model"));
}
