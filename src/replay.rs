//! A bounded memory of accepted `webhook-id`s, so a redelivered request does nothing twice,
//! kept on disk so that a restart does not reopen the window for replaying a captured request.
//! An id is reserved while its request is in flight and remembered only once answered 2xx.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

/// At most this many ids are remembered; the oldest are forgotten first.
pub const CAPACITY: usize = 10_000;

pub struct ReplayGuard {
    window_secs: i64,
    seen: Mutex<Seen>,
    /// Where the ids are kept across restarts; None: memory only.
    file: Option<PathBuf>,
    /// Serialises file writes and holds the generation last written, so the last write to
    /// finish holds the newest list and a write already covered by a later one is skipped.
    writing: tokio::sync::Mutex<u64>,
}

#[derive(Default)]
struct Seen {
    by_id: HashMap<String, i64>,
    order: VecDeque<(i64, String)>,
    /// Ids whose request is being answered (bounded by the requests in flight).
    in_flight: HashSet<String>,
    /// Counts remembered ids, to tell whether the file already holds one.
    generation: u64,
}

/// What an arriving `webhook-id` may do.
pub enum Claim<'a> {
    /// Not seen: the request runs, holding the id until it is answered.
    Fresh(Reservation<'a>),
    /// Already answered 2xx within the window.
    Seen,
    /// An earlier copy is still being answered.
    InFlight,
}

/// Holds an id while its request is answered; dropped without [`Reservation::accepted`] (an
/// answer other than 2xx, or a request cut short), it frees the id for a retry.
pub struct Reservation<'a> {
    guard: &'a ReplayGuard,
    id: String,
    settled: bool,
}

impl ReplayGuard {
    /// Ids are kept as long as their timestamp could still pass the signature check.
    pub fn new(tolerance_secs: u64) -> ReplayGuard {
        ReplayGuard {
            window_secs: i64::try_from(tolerance_secs).unwrap_or(i64::MAX / 4),
            seen: Mutex::default(),
            file: None,
            writing: tokio::sync::Mutex::new(0),
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

    fn lock(&self) -> MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Seen, in flight, or reserved now for the caller: one decision under one lock, so of
    /// concurrent copies exactly one is `Fresh`.
    pub fn claim(&self, id: &str) -> Claim<'_> {
        let mut seen = self.lock();
        if seen.by_id.contains_key(id) {
            Claim::Seen
        } else if !seen.in_flight.insert(id.to_owned()) {
            Claim::InFlight
        } else {
            Claim::Fresh(Reservation {
                guard: self,
                id: id.to_owned(),
                settled: false,
            })
        }
    }

    /// Remembers an id accepted at `now` and writes the file, if there is one, off the runtime.
    pub async fn remember(&self, id: &str, now: i64) {
        let generation = {
            let mut seen = self.lock();
            seen.insert(id, now, self.window_secs);
            seen.in_flight.remove(id);
            seen.generation += 1;
            seen.generation
        };
        self.save(generation).await;
    }

    /// Writes the list unless a write of `generation` or later has finished meanwhile.
    async fn save(&self, generation: u64) {
        let Some(file) = &self.file else {
            return;
        };
        let mut written_generation = self.writing.lock().await;
        if *written_generation >= generation {
            return;
        }
        // Read after taking the write lock: whoever writes last writes the newest list.
        let (kept, newest) = {
            let seen = self.lock();
            (seen.kept(), seen.generation)
        };
        let written = match serde_json::to_vec(&kept) {
            Ok(bytes) => crate::durable::write_async(file.clone(), bytes).await,
            Err(e) => Err(std::io::Error::other(e)),
        };
        match written {
            Ok(()) => *written_generation = newest,
            Err(e) => {
                tracing::warn!(file = %file.display(), error = %e, "cannot save seen webhook-ids")
            }
        }
    }

    pub fn len(&self) -> usize {
        self.lock().by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Reservation<'_> {
    /// The request was answered 2xx at `now`: the id is remembered (and saved) instead of held.
    pub async fn accepted(mut self, now: i64) {
        self.settled = true;
        self.guard.remember(&self.id, now).await;
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if !self.settled {
            self.guard.lock().in_flight.remove(&self.id);
        }
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    fn seen(guard: &ReplayGuard, id: &str) -> bool {
        matches!(guard.claim(id), Claim::Seen)
    }

    #[tokio::test]
    async fn remembers_within_the_window_and_stays_bounded() {
        let guard = ReplayGuard::new(300);
        guard.remember("a", 1_000).await;
        assert!(seen(&guard, "a"));
        assert!(!seen(&guard, "b"));
        guard.remember("b", 1_000 + 601).await;
        assert!(!seen(&guard, "a"), "expired");
        for i in 0..(CAPACITY + 50) {
            guard.remember(&format!("id{i}"), 2_000).await;
        }
        assert_eq!(guard.len(), CAPACITY);
        assert!(seen(&guard, &format!("id{}", CAPACITY + 49)));
        assert!(!seen(&guard, "id0"));
    }

    #[tokio::test]
    async fn survives_a_restart_within_the_window_only() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("seen-ids.json");
        let guard = ReplayGuard::open(&file, 300, 1_000);
        guard.remember("old", 1_000).await;
        guard.remember("new", 1_500).await;
        drop(guard);
        let guard = ReplayGuard::open(&file, 300, 1_650);
        assert!(seen(&guard, "new"));
        assert!(
            !seen(&guard, "old"),
            "outside the window: its signature is stale anyway"
        );
        std::fs::write(&file, b"garbage").unwrap();
        assert!(ReplayGuard::open(&file, 300, 1_650).is_empty());
    }

    #[tokio::test]
    async fn an_id_is_held_while_in_flight_and_freed_unless_accepted() {
        let guard = ReplayGuard::new(300);
        let Claim::Fresh(first) = guard.claim("a") else {
            panic!("a new id is fresh")
        };
        assert!(matches!(guard.claim("a"), Claim::InFlight));
        assert!(
            matches!(guard.claim("b"), Claim::Fresh(_)),
            "other ids are free"
        );
        drop(first);
        let Claim::Fresh(retry) = guard.claim("a") else {
            panic!("a request not answered 2xx frees its id")
        };
        assert!(!seen(&guard, "a"));
        retry.accepted(1_000).await;
        assert!(matches!(guard.claim("a"), Claim::Seen));
        assert!(seen(&guard, "a"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_accepts_all_reach_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("seen-ids.json");
        let guard = std::sync::Arc::new(ReplayGuard::open(&file, 300, 1_000));
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..50 {
            let guard = guard.clone();
            tasks.spawn(async move { guard.remember(&format!("id{i}"), 1_000).await });
        }
        while let Some(done) = tasks.join_next().await {
            done.unwrap();
        }
        let reopened = ReplayGuard::open(&file, 300, 1_010);
        assert_eq!(reopened.len(), 50);
    }

    #[tokio::test]
    async fn an_accepted_id_is_saved_for_the_next_start() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("seen-ids.json");
        let guard = ReplayGuard::open(&file, 300, 1_000);
        let Claim::Fresh(held) = guard.claim("kept") else {
            panic!("fresh")
        };
        drop(guard.claim("dropped"));
        held.accepted(1_000).await;
        let reopened = ReplayGuard::open(&file, 300, 1_010);
        assert!(seen(&reopened, "kept"));
        assert!(!seen(&reopened, "dropped"));
    }
}
