//! A bounded memory of accepted `webhook-id`s, so a redelivered request does nothing twice.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

/// At most this many ids are remembered; the oldest are forgotten first.
pub const CAPACITY: usize = 10_000;

pub struct ReplayGuard {
    window_secs: i64,
    seen: Mutex<Seen>,
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
        }
    }

    pub fn seen(&self, id: &str) -> bool {
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .by_id
            .contains_key(id)
    }

    /// Remembers an id accepted at `now`.
    pub fn remember(&self, id: &str, now: i64) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        // A signature stays valid up to `window` after its timestamp, which may lie `window` ahead of now.
        let horizon = now.saturating_sub(self.window_secs.saturating_mul(2));
        while let Some((at, _)) = seen.order.front() {
            if *at >= horizon && seen.order.len() < CAPACITY {
                break;
            }
            if let Some((at, old)) = seen.order.pop_front()
                && seen.by_id.get(&old) == Some(&at)
            {
                seen.by_id.remove(&old);
            }
        }
        seen.by_id.insert(id.to_owned(), now);
        seen.order.push_back((now, id.to_owned()));
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

#[cfg(test)]
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
}
