//! Lenient views of Hydra's JSON: 0/1 or true/false booleans, numbers as i64, extra keys ignored.

use serde::{Deserialize, Deserializer};
use std::collections::BTreeMap;

/// `GET /build/{id}` (Hydra's `Builds::as_json`), only the fields the agent decides on.
#[derive(Debug, Clone, Deserialize)]
pub struct Build {
    pub id: i64,
    #[serde(deserialize_with = "flag")]
    pub finished: bool,
    pub buildstatus: Option<i64>,
    pub project: String,
    pub jobset: String,
    pub job: String,
    #[serde(default)]
    pub system: Option<String>,
    #[serde(default)]
    pub jobsetevals: Vec<i64>,
    #[serde(default)]
    pub buildoutputs: BTreeMap<String, Output>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Output {
    pub path: Option<String>,
}

/// `GET /eval/{id}`: only the locked flake reference matters to the agent.
#[derive(Debug, Clone, Deserialize)]
pub struct Eval {
    pub id: i64,
    #[serde(default)]
    pub flake: Option<String>,
}

/// Hydra's JSON error body, `{"error": "…"}`.
#[derive(Debug, Clone, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

/// Accepts `0`, `1`, `true` and `false` (Hydra serialises some booleans as integers).
fn flag<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Flag {
        Bool(bool),
        Int(i64),
    }
    match Flag::deserialize(d)? {
        Flag::Bool(b) => Ok(b),
        Flag::Int(0) => Ok(false),
        Flag::Int(1) => Ok(true),
        Flag::Int(n) => Err(serde::de::Error::custom(format!(
            "expected 0 or 1, got {n}"
        ))),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn build_accepts_integer_and_boolean_flags() {
        for finished in ["1", "true"] {
            let json = format!(
                r#"{{"id":4821,"finished":{finished},"buildstatus":0,"project":"p","jobset":"j","job":"web1",
                "system":"x86_64-linux","jobsetevals":[912,915],"priority":100,
                "buildoutputs":{{"out":{{"path":"/nix/store/aaaa"}}}},"buildproducts":{{}},"buildmetrics":{{}}}}"#
            );
            let build: Build = serde_json::from_str(&json).unwrap();
            assert!(build.finished);
            assert_eq!(build.jobsetevals, [912, 915]);
        }
        let queued = r#"{"id":1,"finished":0,"buildstatus":null,"project":"p","jobset":"j","job":"w","buildoutputs":{}}"#;
        let build: Build = serde_json::from_str(queued).unwrap();
        assert!(!build.finished && build.buildstatus.is_none());
        let bad = r#"{"id":1,"finished":2,"buildstatus":0,"project":"p","jobset":"j","job":"w"}"#;
        assert!(serde_json::from_str::<Build>(bad).is_err());
        let wrong_type =
            r#"{"id":"1","finished":1,"buildstatus":0,"project":"p","jobset":"j","job":"w"}"#;
        assert!(serde_json::from_str::<Build>(wrong_type).is_err());
    }
}
