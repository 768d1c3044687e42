//! The notification spool: deliveries `notify` could not make within its hand-back, one file per
//! agent and build (`<agent key>-<build>.json`, 0600), written atomically, drained by `retry`.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Environment variable naming the spool `notify` uses when `--spool` is not given.
pub const SPOOL_ENV: &str = "NIXOS_HYDRA_UPGRADE_SPOOL";
/// The lock a draining retrier holds, so two retriers never deliver the same entries.
pub const LOCK_FILE: &str = ".retrier.lock";

/// One undelivered notification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The agent as given to `notify` (`--url` or the URL of a `--route`).
    pub url: String,
    pub webhook_id: String,
    pub build: u64,
    #[serde(default)]
    pub job: String,
    /// The RunCommand payload bytes, unchanged (base64 in the file).
    #[serde(with = "payload_base64")]
    pub payload: Vec<u8>,
    pub spooled_at: Timestamp,
    /// The `notify --deadline`: the retrier gives up after it.
    pub deadline: Timestamp,
    #[serde(default)]
    pub attempts: u32,
    #[serde(default)]
    pub last_error: Option<String>,
    pub next_try: Timestamp,
}

mod payload_base64 {
    use super::{Engine, STANDARD};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        STANDARD.decode(text).map_err(serde::de::Error::custom)
    }
}

/// The file-name key of an agent: the first 16 bytes of SHA-256 of its URL, in hex.
pub fn agent_key(url: &str) -> String {
    Sha256::digest(url.as_bytes())
        .iter()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `<key>-<build>.json`.
pub fn file_name(url: &str, build: u64) -> String {
    format!("{}-{build}.json", agent_key(url))
}

/// The agent key and build a spool file name stands for; None for anything else in the directory.
pub fn parse_name(name: &str) -> Option<(String, u64)> {
    let stem = name.strip_suffix(".json")?;
    let (key, build) = stem.split_once('-')?;
    let key_ok = key.len() == 32 && key.bytes().all(|b| b.is_ascii_hexdigit());
    key_ok.then_some(())?;
    Some((key.to_owned(), build.parse().ok()?))
}

/// Creates the spool directory (0700) if it is missing.
pub fn ensure_dir(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("cannot create spool directory {}: {e}", dir.display()))
}

/// Writes an entry atomically: a private temp file in the same directory, renamed over the
/// entry's name. Safe with concurrent writers: each has its own temp file, and a rename is
/// atomic. Not synced to disk: `sync` does that for a batch (about 5 ms per file on ext4, too
/// slow to wait for within a hand-back; an entry lost to a crash is one Hydra replays or the
/// agent's poll catches up on, and one left empty by a crash is set aside by the retrier).
pub fn write(dir: &Path, entry: &Entry) -> Result<PathBuf, String> {
    let final_path = dir.join(file_name(&entry.url, entry.build));
    let nonce: u64 = rand::random();
    let temp = dir.join(format!(
        ".tmp-{}-{}-{nonce:016x}",
        std::process::id(),
        entry.build
    ));
    let text = serde_json::to_vec_pretty(entry)
        .map_err(|e| format!("cannot encode spool entry for {}: {e}", entry.url))?;
    let written = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)?;
        file.write_all(&text)?;
        std::fs::rename(&temp, &final_path)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&temp);
        return Err(format!(
            "cannot write spool file {}: {e}",
            final_path.display()
        ));
    }
    Ok(final_path)
}

/// Makes written entries durable: each file's data, then the directory (the renames).
pub fn sync(dir: &Path, files: &[PathBuf]) -> Result<(), String> {
    for file in files {
        std::fs::File::open(file)
            .and_then(|f| f.sync_data())
            .map_err(|e| format!("cannot sync spool file {}: {e}", file.display()))?;
    }
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| format!("cannot sync spool directory {}: {e}", dir.display()))
}

/// The spool file names by agent key: builds spooled for each agent.
pub fn index(dir: &Path) -> HashMap<String, Vec<u64>> {
    let mut index: HashMap<String, Vec<u64>> = HashMap::new();
    for (key, build) in list(dir).into_iter().filter_map(|(_, parsed)| parsed) {
        index.entry(key).or_default().push(build);
    }
    index
}

/// Every file in the spool directory with what its name says (None: not a spool entry).
fn list(dir: &Path) -> Vec<(PathBuf, Option<(String, u64)>)> {
    let Ok(read) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    read.filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            (!name.starts_with('.')).then(|| (e.path(), parse_name(&name)))
        })
        .collect()
}

/// Removes the agent's spooled entries older than `build`; how many went.
pub fn remove_older(dir: &Path, index: &HashMap<String, Vec<u64>>, url: &str, build: u64) -> usize {
    let key = agent_key(url);
    let Some(builds) = index.get(&key) else {
        return 0;
    };
    builds
        .iter()
        .filter(|b| **b < build)
        .filter(|b| std::fs::remove_file(dir.join(format!("{key}-{b}.json"))).is_ok())
        .count()
}

/// A spool file that could not be read as an entry.
pub struct BadFile {
    pub path: PathBuf,
    pub error: String,
}

/// Reads every entry; unreadable ones are returned apart.
pub fn load(dir: &Path) -> (Vec<(PathBuf, Entry)>, Vec<BadFile>) {
    let mut entries = Vec::new();
    let mut bad = Vec::new();
    for (path, parsed) in list(dir) {
        if parsed.is_none() {
            continue;
        }
        match read(&path) {
            Ok(entry) => entries.push((path, entry)),
            Err(error) => bad.push(BadFile { path, error }),
        }
    }
    entries.sort_by(|a, b| (a.1.spooled_at, &a.1.url).cmp(&(b.1.spooled_at, &b.1.url)));
    (entries, bad)
}

/// Largest spool file read (a payload is at most 64 KiB, base64 and JSON around it).
const MAX_FILE: u64 = 256 * 1024;

pub fn read(path: &Path) -> Result<Entry, String> {
    use std::io::Read;
    let mut text = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_FILE + 1).read_to_end(&mut text))
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if text.len() as u64 > MAX_FILE {
        return Err(format!(
            "{}: larger than a spool entry can be",
            path.display()
        ));
    }
    serde_json::from_slice(&text).map_err(|e| format!("{}: not a spool entry: {e}", path.display()))
}

/// A spool file and what it holds.
pub type Spooled = (PathBuf, Entry);

/// Splits entries into the newest per agent and the older ones a newer build supersedes.
pub fn newest_per_agent(entries: Vec<Spooled>) -> (Vec<Spooled>, Vec<Spooled>) {
    let mut newest: HashMap<String, (PathBuf, Entry)> = HashMap::new();
    let mut older = Vec::new();
    for (path, entry) in entries {
        match newest.remove(&entry.url) {
            Some(kept) if kept.1.build >= entry.build => {
                older.push((path, entry));
                newest.insert(kept.1.url.clone(), kept);
            }
            Some(kept) => {
                older.push(kept);
                newest.insert(entry.url.clone(), (path, entry));
            }
            None => {
                newest.insert(entry.url.clone(), (path, entry));
            }
        }
    }
    let mut newest: Vec<_> = newest.into_values().collect();
    newest.sort_by(|a, b| (a.1.spooled_at, &a.1.url).cmp(&(b.1.spooled_at, &b.1.url)));
    (newest, older)
}

/// Removes an entry's file if it still holds that delivery (a concurrent `notify` may have
/// replaced it with a newer one, which must stay).
pub fn remove_if_same(path: &Path, webhook_id: &str) {
    if read(path).is_ok_and(|e| e.webhook_id == webhook_id) {
        let _ = std::fs::remove_file(path);
    }
}

/// Rewrites an entry (after a failed try) unless the file was replaced or removed meanwhile.
pub fn update_if_same(dir: &Path, path: &Path, entry: &Entry) -> Result<(), String> {
    if read(path).is_ok_and(|e| e.webhook_id == entry.webhook_id) {
        write(dir, entry)?;
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn entry(url: &str, build: u64) -> Entry {
        Entry {
            url: url.into(),
            webhook_id: format!("msg_{build}"),
            build,
            job: "web1".into(),
            payload: b"{\"build\":1}\xff".to_vec(),
            spooled_at: Timestamp::UNIX_EPOCH,
            deadline: Timestamp::UNIX_EPOCH,
            attempts: 0,
            last_error: None,
            next_try: Timestamp::UNIX_EPOCH,
        }
    }

    #[test]
    fn entries_round_trip_privately_and_atomically() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), &entry("http://a:1", 7)).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let (entries, bad) = load(dir.path());
        assert!(bad.is_empty());
        assert_eq!(entries, vec![(path.clone(), entry("http://a:1", 7))]);
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temp file left"
        );
        std::fs::write(dir.path().join(file_name("http://b:1", 3)), "garbage").unwrap();
        let (entries, bad) = load(dir.path());
        assert_eq!((entries.len(), bad.len()), (1, 1));
    }

    #[test]
    fn a_newer_build_supersedes_per_agent() {
        let dir = tempfile::tempdir().unwrap();
        let entries = vec![
            (dir.path().join("1"), entry("http://a:1", 7)),
            (dir.path().join("2"), entry("http://a:1", 9)),
            (dir.path().join("3"), entry("http://b:1", 8)),
            (dir.path().join("4"), entry("http://a:1", 8)),
        ];
        let (newest, older) = newest_per_agent(entries);
        let mut kept: Vec<_> = newest
            .iter()
            .map(|(_, e)| (e.url.as_str(), e.build))
            .collect();
        kept.sort();
        assert_eq!(kept, [("http://a:1", 9), ("http://b:1", 8)]);
        let mut gone: Vec<_> = older.iter().map(|(_, e)| e.build).collect();
        gone.sort();
        assert_eq!(gone, [7, 8]);
    }

    #[test]
    fn names() {
        let name = file_name("http://a:1", 42);
        assert_eq!(parse_name(&name), Some((agent_key("http://a:1"), 42)));
        assert_eq!(parse_name(".tmp-1-2-3"), None);
        assert_eq!(parse_name("x-1.json"), None);
        assert_eq!(parse_name(LOCK_FILE), None);
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &entry("http://a:1", 5)).unwrap();
        write(dir.path(), &entry("http://a:1", 6)).unwrap();
        let index = index(dir.path());
        assert_eq!(remove_older(dir.path(), &index, "http://a:1", 6), 1);
        assert_eq!(load(dir.path()).0.len(), 1);
    }
}
