//! `[hydra]`: which Hydra, project, jobset and job hold this host's system.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HydraConfig {
    pub instance: String,
    pub project: String,
    pub jobset: String,
    #[serde(default)]
    pub job: Option<String>,
    #[serde(default = "default_hydra_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// One `user:password` line: HTTP basic auth for a Hydra behind it (never in the URL).
    #[serde(default)]
    pub credentials_file: Option<PathBuf>,
}

/// `hydra.instance` must be an http(s) URL without userinfo; the message never repeats a
/// password that was written into it.
pub(super) fn check_instance(instance: &str) -> Result<(), String> {
    match reqwest::Url::parse(instance) {
        Ok(url) if !url.username().is_empty() || url.password().is_some() => Err(format!(
            "has a user name or password in it (\"{}\"); remove them and put \"user:password\" \
             in the file named by hydra.credentials_file",
            redacted(&url)
        )),
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => Ok(()),
        _ if instance.contains('@') => Err("is not an http(s) URL".into()),
        _ => Err(format!("\"{instance}\" is not an http(s) URL")),
    }
}

fn redacted(url: &reqwest::Url) -> String {
    let mut shown = url.clone();
    let _ = shown.set_username("…");
    let _ = shown.set_password(None);
    shown.to_string()
}

/// Credentials for HTTP basic auth; shown only as `<redacted>`.
#[derive(Clone, PartialEq, Eq)]
pub struct HydraCredentials {
    pub user: String,
    pub password: String,
}

impl std::fmt::Debug for HydraCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HydraCredentials(<redacted>)")
    }
}

impl HydraCredentials {
    /// Reads `path`: one `user:password` line (a trailing newline is fine). Warns when the file
    /// is readable by group or others.
    pub fn load(path: &Path) -> Result<HydraCredentials, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read hydra.credentials_file {}: {e}", path.display()))?;
        crate::signature::warn_if_shared(path, "hydra.credentials_file");
        HydraCredentials::parse(&text)
            .map_err(|m| format!("hydra.credentials_file {}: {m}", path.display()))
    }

    pub fn parse(text: &str) -> Result<HydraCredentials, String> {
        let line = text.strip_suffix('\n').unwrap_or(text);
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.contains(['\n', '\r']) {
            return Err("holds more than one line; write one user:password line".into());
        }
        let (user, password) = line
            .split_once(':')
            .ok_or("is not one user:password line")?;
        if user.is_empty() || line.chars().any(char::is_control) {
            return Err("is not one user:password line (empty user or control characters)".into());
        }
        Ok(HydraCredentials {
            user: user.to_owned(),
            password: password.to_owned(),
        })
    }
}

pub(super) fn default_hydra_timeout() -> Duration {
    Duration::from_secs(10)
}

/// Hydra project, jobset and job names go into URL paths: keep them to Hydra's own alphabet.
pub(super) fn check_name(name: &str) -> Result<(), String> {
    if !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        Ok(())
    } else {
        Err(format!(
            "\"{name}\" is not a Hydra name (letters, digits, - _ .)"
        ))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn instance_with_userinfo_is_refused_without_echoing_the_password() {
        let error = check_instance("https://alice:hunter2@hydra.example").unwrap_err();
        assert!(error.contains("credentials_file"), "{error}");
        assert!(
            !error.contains("hunter2") && !error.contains("alice"),
            "{error}"
        );
        assert!(check_instance("https://alice@hydra.example").is_err());
        assert!(
            !check_instance("ftp://a:hunter2@x")
                .unwrap_err()
                .contains("hunter2")
        );
        assert!(check_instance("https://hydra.example").is_ok());
        assert!(check_instance("http://127.0.0.1:3000").is_ok());
    }

    #[test]
    fn credentials_file_is_one_line() {
        let c = HydraCredentials::parse("alice:pa:ss\n").unwrap();
        assert_eq!((c.user.as_str(), c.password.as_str()), ("alice", "pa:ss"));
        assert!(!format!("{c:?}").contains("pa:ss"));
        for bad in ["", "\n", "alice", ":pw", "a:b\nc:d", "a:b\u{7}"] {
            assert!(HydraCredentials::parse(bad).is_err(), "{bad:?}");
        }
    }
}
