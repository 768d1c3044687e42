//! A bounded memory of accepted `webhook-id`s, so a redelivered request does nothing twice,
//! kept on disk so that a restart does not reopen the window for replaying a captured request.

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// At most this many ids are remembered; the oldest are forgotten first.
pub const CAPACITY: usize = 10_000;

pub struct ReplayGuard {
    window_secs: i64,
    seen: Mutex<Seen>,
    /// Where the ids are kept across restarts; None: memory only.
    file: Option<PathBuf>,
}

#[derive(Default)]
struct Seen {
    by_id: HashMap<String, i64>,
    order: VecDeque<(i64, String)>,
}

impl ReplayGuard {
    /// Ids are kept as long as their timestamp could still pass the signature check.
    pub fn new(tolerance_secs: u64) -> ReplayGuard {
        ReplayGuard {
            window_secs: i64::try_from(tolerance_secs).unwrap_or(i64::MAX / 4),
            seen: Mutex::default(),
            file: None,
        }
    }

    /// A guard kept in `file`: ids still inside the window at `now` are loaded from it (an
    /// unreadable file only costs the memory of the last few minutes, and is logged).
    pub fn open(file: &Path, tolerance_secs: u64, now: i64) -> ReplayGuard {
        let mut guard = ReplayGuard::new(tolerance_secs);
        let loaded: Vec<(String, i64)> = match std::fs::read(file) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(file = %file.display(), error = %e, "seen webhook-ids unreadable; starting empty");
                Vec::new()
            }),
            Err(_) => Vec::new(),
        };
        let horizon = now.saturating_sub(guard.window_secs.saturating_mul(2));
        for (id, at) in loaded {
            if at >= horizon && crate::signature::is_valid_id(&id) {
                guard
                    .seen
                    .get_mut()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(&id, at, guard.window_secs);
            }
        }
        guard.file = Some(file.to_owned());
        guard
    }

    pub fn seen(&self, id: &str) -> bool {
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .by_id
            .contains_key(id)
    }

    /// Remembers an id accepted at `now` (and writes the file, if there is one; under the lock,
    /// so concurrent writers never interleave).
    pub fn remember(&self, id: &str, now: i64) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.insert(id, now, self.window_secs);
        if let Some(file) = &self.file
            && let Err(e) = write_atomically(file, &seen.kept())
        {
            tracing::warn!(file = %file.display(), error = %e, "cannot save seen webhook-ids");
        }
    }

    pub fn len(&self) -> usize {
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .by_id
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Seen {
    fn insert(&mut self, id: &str, now: i64, window_secs: i64) {
        // A signature stays valid up to `window` after its timestamp, which may lie `window` ahead of now.
        let horizon = now.saturating_sub(window_secs.saturating_mul(2));
        while let Some((at, _)) = self.order.front() {
            if *at >= horizon && self.order.len() < CAPACITY {
                break;
            }
            if let Some((at, old)) = self.order.pop_front()
                && self.by_id.get(&old) == Some(&at)
            {
                self.by_id.remove(&old);
            }
        }
        self.by_id.insert(id.to_owned(), now);
        self.order.push_back((now, id.to_owned()));
    }

    /// The ids kept, oldest first.
    fn kept(&self) -> Vec<(String, i64)> {
        self.order
            .iter()
            .filter(|(at, id)| self.by_id.get(id) == Some(at))
            .map(|(at, id)| (id.clone(), *at))
            .collect()
    }
}

/// Temp file, fsync, rename: a kill at any moment leaves the old list or the new one.
fn write_atomically(file: &Path, ids: &[(String, i64)]) -> std::io::Result<()> {
    let bytes = serde_json::to_vec(ids).map_err(std::io::Error::other)?;
    let tmp = file.with_extension("tmp");
    let mut out = std::fs::File::create(&tmp)?;
    out.write_all(&bytes)?;
    out.sync_all()?;
    drop(out);
    std::fs::rename(&tmp, file)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn remembers_within_the_window_and_stays_bounded() {
        let guard = ReplayGuard::new(300);
        guard.remember("a", 1_000);
        assert!(guard.seen("a"));
        assert!(!guard.seen("b"));
        guard.remember("b", 1_000 + 601);
        assert!(!guard.seen("a"), "expired");
        for i in 0..(CAPACITY + 50) {
            guard.remember(&format!("id{i}"), 2_000);
        }
        assert_eq!(guard.len(), CAPACITY);
        assert!(guard.seen(&format!("id{}", CAPACITY + 49)));
        assert!(!guard.seen("id0"));
    }

    #[test]
    fn survives_a_restart_within_the_window_only() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("seen-ids.json");
        let guard = ReplayGuard::open(&file, 300, 1_000);
        guard.remember("old", 1_000);
        guard.remember("new", 1_500);
        drop(guard);
        let guard = ReplayGuard::open(&file, 300, 1_650);
        assert!(guard.seen("new"));
        assert!(
            !guard.seen("old"),
            "outside the window: its signature is stale anyway"
        );
        std::fs::write(&file, b"garbage").unwrap();
        assert!(ReplayGuard::open(&file, 300, 1_650).is_empty());
    }
}
