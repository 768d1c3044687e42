//! Validated Nix values from outside (Hydra's answers): store paths and flake references.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

const STORE_DIR: &str = "/nix/store/";
/// Nix's hash part: 32 characters of its base-32 alphabet (no e, o, u, t).
const HASH_LEN: usize = 32;
const NIX32: &[u8] = b"0123456789abcdfghijklmnpqrsvwxyz";
/// Nix refuses store path names longer than this (libstore `checkName`).
const MAX_NAME_LEN: usize = 211;
/// Flake references longer than this are not something Hydra locks.
const MAX_FLAKE_LEN: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error("not a store path (expected /nix/store/<32-char hash>-<name>): {0:?}")]
    StorePath(String),
    #[error("not a flake reference Nix would lock (URL or path, no leading '-', no '#'): {0:?}")]
    FlakeRef(String),
}

/// `/nix/store/<hash>-<name>` by Nix's own rules: hash in nix32, name of `[A-Za-z0-9+-._?=]`,
/// 1 to 211 characters, no leading dot.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct StorePath(String);

impl StorePath {
    pub fn parse(path: &str) -> Result<StorePath, ValueError> {
        let bad = || ValueError::StorePath(shorten(path));
        let rest = path.strip_prefix(STORE_DIR).ok_or_else(bad)?;
        let (hash, name) = (rest.get(..HASH_LEN).ok_or_else(bad)?, &rest[HASH_LEN..]);
        let name = name.strip_prefix('-').ok_or_else(bad)?;
        let name_ok = !name.is_empty()
            && name.len() <= MAX_NAME_LEN
            && !name.starts_with('.')
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+-._?=".contains(&b));
        if hash.bytes().all(|b| NIX32.contains(&b)) && name_ok {
            Ok(StorePath(path.to_owned()))
        } else {
            Err(bad())
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for StorePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for StorePath {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl AsRef<std::path::Path> for StorePath {
    fn as_ref(&self) -> &std::path::Path {
        std::path::Path::new(&self.0)
    }
}

impl<'de> Deserialize<'de> for StorePath {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        StorePath::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A locked flake reference as Hydra records it on an evaluation (`github:o/r/<rev>`,
/// `git+https://…?rev=…`, `/path`): never an option, never with an attribute of its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct FlakeRef(String);

impl FlakeRef {
    pub fn parse(text: &str) -> Result<FlakeRef, ValueError> {
        let scheme_ok = match text.split_once(':') {
            Some((scheme, rest)) => {
                !rest.is_empty()
                    && scheme.starts_with(|c: char| c.is_ascii_lowercase())
                    && scheme
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+.-".contains(c))
            }
            None => text.starts_with('/'),
        };
        let ok = scheme_ok
            && text.len() <= MAX_FLAKE_LEN
            && !text.starts_with('-')
            && !text.contains('#')
            && !text.chars().any(|c| c.is_control() || c.is_whitespace());
        if ok {
            Ok(FlakeRef(text.to_owned()))
        } else {
            Err(ValueError::FlakeRef(shorten(text)))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for FlakeRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for FlakeRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        FlakeRef::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Error messages quote at most this much of a hostile value, escaped.
fn shorten(text: &str) -> String {
    const MAX: usize = 120;
    let mut out: String = text
        .chars()
        .take(MAX)
        .flat_map(char::escape_debug)
        .collect();
    if text.chars().count() > MAX {
        out.push('…');
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const HASH: &str = "0123456789abcdfghijklmnpqrsvwxyz";

    #[test]
    fn store_paths_follow_nix_name_rules() {
        let good = format!("/nix/store/{HASH}-nixos-system-web1-26.05.20261101.abcdef0");
        assert_eq!(StorePath::parse(&good).unwrap().as_str(), good);
        let long_name = "a".repeat(MAX_NAME_LEN);
        assert!(StorePath::parse(&format!("/nix/store/{HASH}-{long_name}")).is_ok());
        let bad = [
            String::new(),
            format!("/nix/store/{HASH}"),
            format!("/nix/store/{HASH}-"),
            format!("/nix/store/{HASH}-a{long_name}"),
            format!("/nix/store/{HASH}-.hidden"),
            format!("/nix/store/{HASH}-.."),
            format!("/nix/store/{HASH}-a/b"),
            format!("/nix/store/{HASH}-a\u{202e}b"),
            format!("/nix/store/{HASH}-a b"),
            format!("/nix/store/{HASH}-a\nb"),
            format!("/nix/store/{}-a", "e".repeat(32)),
            format!("/nix/store/{}-a", &HASH[..31]),
            format!("/nix/store/{}-a", HASH.to_uppercase()),
            format!("/nix/stor/{HASH}-a"),
            format!("//nix/store/{HASH}-a"),
            "/nix/store/é".repeat(40),
        ];
        for path in bad {
            assert!(StorePath::parse(&path).is_err(), "{path:?}");
        }
    }

    #[test]
    fn store_path_errors_are_short_and_escaped() {
        let hostile = format!("/nix/store/{HASH}-x\u{1b}[2J{}", "y".repeat(10_000));
        let message = StorePath::parse(&hostile).unwrap_err().to_string();
        assert!(message.len() < 300, "{}", message.len());
        assert!(!message.contains('\u{1b}'), "{message}");
    }

    #[test]
    fn flake_refs() {
        for good in [
            "github:nixos/nixpkgs/0123456789abcdef0123456789abcdef01234567",
            "git+https://git.example/config?rev=0123456789abcdef&ref=main",
            "git+ssh://git@git.example/config?rev=abc",
            "path:/srv/config",
            "/srv/config",
        ] {
            assert_eq!(FlakeRef::parse(good).unwrap().as_str(), good);
        }
        for bad in [
            "",
            "--upgrade",
            "-p",
            "github:o/r#evil",
            "github:o/r --option x",
            "github:o/r\n",
            "relative/path",
            "Github:o/r",
            "1ab:x",
            "github:",
        ] {
            assert!(FlakeRef::parse(bad).is_err(), "{bad:?}");
        }
        assert!(FlakeRef::parse(&format!("github:{}", "a".repeat(MAX_FLAKE_LEN))).is_err());
    }

    #[test]
    fn deserialising_validates() {
        assert!(serde_json::from_str::<StorePath>("\"/etc/passwd\"").is_err());
        assert!(serde_json::from_str::<FlakeRef>("\"--upgrade\"").is_err());
        let ok = format!("\"/nix/store/{HASH}-x\"");
        assert!(serde_json::from_str::<StorePath>(&ok).is_ok());
    }
}
