//! The option table of the NixOS docs names exactly the options module.nix declares, with their
//! types and defaults; and the refused `flags` are the same, with the same reasons, in module.nix,
//! docs/nixos.md and check-config (src/refused_flags.rs).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::Path;

const PREFIX: &str = "system.autoUpgradeHydra";
const OPEN: &str = "options.system.autoUpgradeHydra = {";
const BEGIN: &str = "<!-- options-table:begin -->";
const END: &str = "<!-- options-table:end -->";

#[derive(Debug, PartialEq, Eq)]
struct Entry {
    ty: String,
    default: String,
}

fn read(relative: &str) -> Option<String> {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)).ok()
}

fn indent(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

/// `name = lib.mkOption {` lines directly inside `options.system.autoUpgradeHydra = { … }`
/// (module.nix keeps every declaration there, nested names written with dots), each with the
/// attributes of its block, joined onto one line.
fn module_options(module: &str) -> BTreeMap<String, Entry> {
    let lines: Vec<&str> = module.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.trim() == OPEN)
        .unwrap_or_else(|| panic!("module.nix: no line `{OPEN}`"));
    let level = indent(lines[start]) + 2;
    let mut options = BTreeMap::new();
    let mut i = start + 1;
    while i < lines.len() && !(indent(lines[i]) == level - 2 && lines[i].trim() == "};") {
        let line = lines[i];
        i += 1;
        if indent(line) != level || line.trim().is_empty() || line.trim().starts_with('#') {
            continue;
        }
        let Some((name, value)) = line.trim().split_once(" = ") else {
            continue;
        };
        let entry = if value.starts_with("lib.mkEnableOption") {
            Entry {
                ty: "boolean".into(),
                default: "`false`".into(),
            }
        } else if value.starts_with("lib.mkPackageOption") {
            Entry {
                ty: "package".into(),
                default: String::new(),
            }
        } else if value == "lib.mkOption {" {
            let mut fields: BTreeMap<String, String> = BTreeMap::new();
            while i < lines.len() && !(indent(lines[i]) == level && lines[i].trim() == "};") {
                let l = lines[i];
                i += 1;
                if indent(l) == level + 2 {
                    if let Some(key) = l.trim().strip_suffix(" =") {
                        fields.insert(key.to_string(), String::new());
                        continue;
                    }
                    if let Some((key, rest)) = l.trim().split_once(" = ") {
                        fields.insert(key.to_string(), rest.to_string());
                        continue;
                    }
                    if let Some(key) = l.trim().strip_prefix("inherit (settingsFormat) ") {
                        fields.insert(key.trim_end_matches(';').into(), "settingsFormat".into());
                        continue;
                    }
                }
                // continuation of the field above (a multi-line list, type or default)
                if let Some(key) = last_key(&lines, i - 1, level + 2) {
                    let value = fields.entry(key).or_default();
                    value.push(' ');
                    value.push_str(l.trim());
                }
            }
            i += 1;
            let ty = fields
                .get("type")
                .map(|t| type_description(t.trim_end_matches(';'), name))
                .unwrap_or_else(|| panic!("module.nix: option {name} has no type"));
            let default = if let Some(text) = fields.get("defaultText") {
                format!("`{}`", literal_expression(text, name))
            } else if let Some(value) = fields.get("default") {
                let value = value.trim_end_matches(';');
                if value.contains(" then ") || value.ends_with('(') {
                    panic!("module.nix: option {name} computes its default; give it a defaultText")
                }
                format!("`{value}`")
            } else {
                "*required*".into()
            };
            Entry { ty, default }
        } else {
            continue;
        };
        assert!(
            options.insert(format!("{PREFIX}.{name}"), entry).is_none(),
            "module.nix declares {name} twice"
        );
    }
    assert!(!options.is_empty(), "module.nix: no option found");
    options
}

/// The key of the field a continuation line at `at` belongs to: the nearest line above at
/// the field indentation that has `key = `.
fn last_key(lines: &[&str], at: usize, field_indent: usize) -> Option<String> {
    lines[..at].iter().rev().find_map(|l| {
        if indent(l) == field_indent {
            let l = l.trim();
            l.strip_suffix(" =")
                .or_else(|| l.split_once(" = ").map(|(k, _)| k))
                .or_else(|| {
                    l.strip_prefix("inherit (settingsFormat) ")
                        .map(|k| k.trim_end_matches(';'))
                })
                .map(str::to_string)
        } else {
            None
        }
    })
}

/// `lib.literalExpression "…"` or `lib.literalExpression ''…''` → the expression's text.
fn literal_expression(field: &str, name: &str) -> String {
    let field = field.trim().trim_end_matches(';');
    let body = field
        .strip_prefix("lib.literalExpression ")
        .unwrap_or_else(|| panic!("module.nix: {name}: defaultText is not lib.literalExpression"));
    if let Some(inner) = body.strip_prefix("''").and_then(|b| b.strip_suffix("''")) {
        return inner.replace("''$", "$").replace("'''", "''");
    }
    let inner = body
        .strip_prefix('"')
        .and_then(|b| b.strip_suffix('"'))
        .unwrap_or_else(|| panic!("module.nix: {name}: cannot read defaultText {body}"));
    let mut out = String::new();
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            out.extend(chars.next());
        } else {
            out.push(c);
        }
    }
    out
}

/// The description lib.types gives the types module.nix uses (the option table shows it).
fn type_description(expr: &str, name: &str) -> String {
    let (text, rest) = describe(expr.trim(), name);
    assert!(
        rest.trim().is_empty(),
        "module.nix: {name}: cannot read the type {expr}"
    );
    text
}

/// Parses one type expression from the front of `expr`; returns its description and the rest.
fn describe<'a>(expr: &'a str, name: &str) -> (String, &'a str) {
    let expr = expr.trim_start();
    if let Some(inner) = expr.strip_prefix('(') {
        let (text, rest) = describe(inner, name);
        let rest = rest
            .trim_start()
            .strip_prefix(')')
            .unwrap_or_else(|| panic!("module.nix: {name}: unbalanced parentheses in its type"));
        return (text, rest);
    }
    if let Some(rest) = expr.strip_prefix("settingsFormat") {
        return ("TOML value".into(), rest);
    }
    let word_end = expr
        .find(|c: char| c.is_whitespace() || c == ')')
        .unwrap_or(expr.len());
    let (word, rest) = expr.split_at(word_end);
    match word.strip_prefix("lib.types.") {
        Some("bool") => ("boolean".into(), rest),
        Some("str") => ("string".into(), rest),
        Some("package") => ("package".into(), rest),
        Some("path") => ("path".into(), rest),
        Some("int") => ("signed integer".into(), rest),
        Some("port") => (
            "16 bit unsigned integer; between 0 and 65535 (both inclusive)".into(),
            rest,
        ),
        Some("nullOr") => {
            let (inner, rest) = describe(rest, name);
            (format!("null or {}", parenthesize(&inner)), rest)
        }
        Some("listOf") => {
            let (inner, rest) = describe(rest, name);
            (format!("list of {}", parenthesize(&inner)), rest)
        }
        Some("attrsOf") => {
            let (inner, rest) = describe(rest, name);
            (format!("attribute set of {}", parenthesize(&inner)), rest)
        }
        Some("submodule") => {
            // skip the submodule's body: everything up to the parenthesis that closes it
            let mut depth = 0i32;
            let mut end = rest.len();
            for (at, c) in rest.char_indices() {
                match c {
                    '(' | '{' | '[' => depth += 1,
                    ')' | '}' | ']' if depth == 0 => {
                        end = at;
                        break;
                    }
                    ')' | '}' | ']' => depth -= 1,
                    _ => {}
                }
            }
            ("submodule".into(), &rest[end..])
        }
        Some("enum") => {
            let rest = rest
                .trim_start()
                .strip_prefix('[')
                .unwrap_or_else(|| panic!("module.nix: {name}: enum without a list"));
            let (items, rest) = rest
                .split_once(']')
                .unwrap_or_else(|| panic!("module.nix: {name}: unterminated enum"));
            let values: Vec<&str> = items.split_whitespace().collect();
            (format!("one of {}", values.join(", ")), rest)
        }
        _ => panic!(
            "module.nix: option {name}: the type `{expr}` is unknown to this test; \
             extend describe() in tests/nix_module_options.rs"
        ),
    }
}

/// lib.types puts a phrase other than a plain noun in parentheses inside another type.
fn parenthesize(inner: &str) -> String {
    if inner.contains(' ') || inner == "submodule" {
        format!("({inner})")
    } else {
        inner.to_string()
    }
}

/// Rows `| \`name\` | type | default | description |` between the markers.
fn documented_options(doc: &str, file: &str) -> BTreeMap<String, Entry> {
    let (_, after) = doc
        .split_once(BEGIN)
        .unwrap_or_else(|| panic!("{file}: no {BEGIN}"));
    let (table, _) = after
        .split_once(END)
        .unwrap_or_else(|| panic!("{file}: no {END} after {BEGIN}"));
    let mut rows = BTreeMap::new();
    for line in table.lines().map(str::trim) {
        let Some(row) = line.strip_prefix("| `") else {
            continue;
        };
        let cells: Vec<&str> = row.trim_end_matches('|').split(" | ").collect();
        assert!(cells.len() >= 4, "{file}: malformed option row: {line}");
        let name = cells[0].trim_end_matches('`').to_string();
        assert!(
            cells[3].trim().len() > 1,
            "{file}: {name} has no description"
        );
        let entry = Entry {
            ty: cells[1].trim().to_string(),
            default: cells[2].trim().to_string(),
        };
        assert!(
            rows.insert(name.clone(), entry).is_none(),
            "{file}: {name} listed twice"
        );
    }
    rows
}

#[test]
fn option_table_matches_module() {
    let module = read("module.nix").expect("module.nix");
    let declared = module_options(&module);
    let mut checked = 0;
    for file in ["docs/nixos.md", "README.md"] {
        let Some(doc) = read(file) else { continue };
        if !doc.contains(BEGIN) {
            continue;
        }
        checked += 1;
        let documented = documented_options(&doc, file);
        let missing: Vec<_> = declared
            .keys()
            .filter(|k| !documented.contains_key(*k))
            .collect();
        let extra: Vec<_> = documented
            .keys()
            .filter(|k| !declared.contains_key(*k))
            .collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "{file}: the option table drifted from module.nix: \
             missing {missing:?}, not declared {extra:?}"
        );
        for (name, entry) in &declared {
            let row = &documented[name];
            assert_eq!(row.ty, entry.ty, "{file}: type of {name}");
            if !entry.default.is_empty() {
                assert_eq!(row.default, entry.default, "{file}: default of {name}");
            }
        }
    }
    assert!(
        checked > 0,
        "no option table ({BEGIN}) in docs/nixos.md or README.md"
    );
}

#[test]
fn scan_reads_nested_and_multiline_declarations() {
    let module = r#"
{
  options.system.autoUpgradeHydra = {
    enable = lib.mkEnableOption "it";

    hydra.job = lib.mkOption {
      type = lib.types.str;
      default = cfg.host;
      defaultText = lib.literalExpression "config.system.autoUpgradeHydra.host";
      description = "x";
    };

    operation = lib.mkOption {
      type = lib.types.enum [
        "switch"
        "boot"
      ];
      default = "switch";
      description = "x";
    };

    window = lib.mkOption {
      type = lib.types.nullOr (
        lib.types.submodule {
          options = {
            lower = lib.mkOption {
              type = lib.types.str;
            };
          };
        }
      );
      default = null;
      description = "x";
    };

    required = lib.mkOption {
      type = lib.types.listOf lib.types.str;
      description = "x";
    };
  };
}
"#;
    let options = module_options(module);
    let get = |n: &str| &options[&format!("{PREFIX}.{n}")];
    assert_eq!(options.len(), 5, "{options:?}");
    assert_eq!(get("enable").ty, "boolean");
    assert_eq!(
        get("hydra.job").default,
        "`config.system.autoUpgradeHydra.host`"
    );
    assert_eq!(get("operation").ty, r#"one of "switch", "boot""#);
    assert_eq!(get("window").ty, "null or (submodule)");
    assert_eq!(get("window").default, "`null`");
    assert_eq!(get("required").ty, "list of string");
    assert_eq!(get("required").default, "*required*");
}

const REFUSED_OPEN: &str = "refusedFlags = {";
const REFUSED_BEGIN: &str = "<!-- refused-flags:begin -->";
const REFUSED_END: &str = "<!-- refused-flags:end -->";

/// `"NAME" = "REASON";` pairs of module.nix's `refusedFlags` attribute set (nixfmt may break a
/// pair after the `=`).
fn module_refused(module: &str) -> BTreeMap<String, String> {
    let start = module
        .find(REFUSED_OPEN)
        .unwrap_or_else(|| panic!("module.nix: no `{REFUSED_OPEN}`"));
    let body = &module[start + REFUSED_OPEN.len()..];
    let body = &body[..body
        .find("};")
        .expect("module.nix: refusedFlags is not closed")];
    let mut pairs = BTreeMap::new();
    let mut rest = body.trim();
    while !rest.is_empty() {
        let quoted = |s: &str| -> (String, usize) {
            assert!(
                s.starts_with('"'),
                "module.nix refusedFlags: expected a string at {s:?}"
            );
            let end = s[1..].find('"').expect("unterminated string") + 1;
            (s[1..end].to_owned(), end + 1)
        };
        let (name, used) = quoted(rest);
        rest = rest[used..].trim_start();
        rest = rest.strip_prefix('=').expect("expected =").trim_start();
        let (reason, used) = quoted(rest);
        rest = rest[used..].trim_start();
        rest = rest.strip_prefix(';').expect("expected ;").trim_start();
        assert!(pairs.insert(name.clone(), reason).is_none(), "{name} twice");
    }
    pairs
}

/// `| `--a`, `-b` | reason |` rows between the refused-flags markers of docs/nixos.md.
fn documented_refused(doc: &str) -> BTreeMap<String, String> {
    let start = doc
        .find(REFUSED_BEGIN)
        .expect("docs/nixos.md: no refused-flags table");
    let end = doc
        .find(REFUSED_END)
        .expect("docs/nixos.md: refused-flags table not closed");
    let mut pairs = BTreeMap::new();
    for row in doc[start..end].lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = row.trim_matches('|').split(" | ").map(str::trim).collect();
        assert_eq!(cells.len(), 2, "docs/nixos.md row: {row}");
        for name in cells[0].split(", ") {
            let name = name.trim_matches('`');
            assert!(
                pairs
                    .insert(name.to_owned(), cells[1].trim_end_matches('.').to_owned())
                    .is_none(),
                "{name} twice"
            );
        }
    }
    pairs
}

#[test]
fn refused_flags_match_in_module_docs_and_check_config() {
    let rust: BTreeMap<String, String> = nixos_hydra_upgrade::refused_flags::REFUSED
        .iter()
        .flat_map(|r| {
            r.names
                .iter()
                .map(|n| ((*n).to_owned(), r.reason.to_owned()))
        })
        .collect();
    let module = module_refused(&read("module.nix").expect("module.nix"));
    let docs = documented_refused(&read("docs/nixos.md").expect("docs/nixos.md"));
    assert_eq!(
        module, rust,
        "module.nix refusedFlags vs src/refused_flags.rs"
    );
    assert_eq!(
        docs, rust,
        "docs/nixos.md refused-flags table vs src/refused_flags.rs"
    );
    assert!(rust.len() >= 20, "{rust:?}");
    // The README's quick start names every spelling, and no other flag, in its refused list.
    let readme = read("README.md").expect("README.md");
    let sentence = readme
        .split("`flags` refuses")
        .nth(1)
        .and_then(|rest| rest.split("check-config").next())
        .expect("README.md: the sentence starting \"`flags` refuses\"");
    let named: std::collections::BTreeSet<String> = sentence
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|w| w.starts_with('-'))
        .map(str::to_owned)
        .collect();
    let expected: std::collections::BTreeSet<String> = rust.keys().cloned().collect();
    assert_eq!(
        named, expected,
        "README.md's refused flags vs src/refused_flags.rs"
    );
}

#[test]
fn refused_scan_reads_broken_lines() {
    let module = "x\n  refusedFlags = {\n    \"-a\" = \"why a\";\n    \"--bee\" =\n      \"why, bee\";\n  };\n";
    let got = module_refused(module);
    assert_eq!(got.len(), 2);
    assert_eq!(got["--bee"], "why, bee");
    let doc = "<!-- refused-flags:begin -->\n| Flag | Why |\n|---|---|\n| `--a`, `-a` | why a. |\n<!-- refused-flags:end -->\n";
    let got = documented_refused(doc);
    assert_eq!(got["-a"], "why a");
    assert_eq!(got["--a"], "why a");
}
