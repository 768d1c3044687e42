//! Fair admission of connections: a total cap, a cap per peer, and, when every slot is taken,
//! room for a light peer made by evicting the heaviest peer's newest connection.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

/// Open connections at once, all peers together.
pub const MAX_CONNECTIONS: usize = 512;
/// Open connections of one peer (an IPv4 address, an IPv6 /64, a local uid): one address cannot
/// take more than an eighth of the slots, so at least seven others always find room.
pub const MAX_PER_PEER: usize = 64;

/// Who holds a connection, as far as fairness is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Peer {
    V4(std::net::Ipv4Addr),
    /// The first 64 bits: one site gets a whole /64 and could otherwise be a thousand peers.
    V6Prefix(u64),
    /// A unix socket client, by uid.
    Local(u32),
    /// A unix socket client whose credentials could not be read.
    Unknown,
}

impl Peer {
    pub fn of(address: SocketAddr) -> Peer {
        match address.ip() {
            IpAddr::V4(v4) => Peer::V4(v4),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Peer::V4(v4),
                None => Peer::V6Prefix((u128::from(v6) >> 64) as u64),
            },
        }
    }
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// This peer already holds `MAX_PER_PEER` connections.
    PeerFull,
    /// Every slot is taken and this peer already holds as many as the heaviest one.
    Full,
}

/// The connections open now, by peer.
#[derive(Default)]
pub struct Admission {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    total: usize,
    next_id: u64,
    /// Each peer's connections, oldest first: (id, token cancelled to evict it).
    peers: HashMap<Peer, Vec<(u64, CancellationToken)>>,
}

/// An admitted connection's slot, given back on drop.
pub struct Ticket {
    admission: Arc<Admission>,
    peer: Peer,
    id: u64,
    /// Cancelled when a lighter peer needs the slot: the connection then closes at once.
    pub evicted: CancellationToken,
}

impl Admission {
    /// Admits a connection from `peer`, evicting the heaviest peer's newest connection when
    /// every slot is taken and that peer holds at least two more than `peer` does.
    pub fn admit(self: &Arc<Self>, peer: Peer) -> Result<Ticket, Refusal> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let own = inner.peers.get(&peer).map_or(0, Vec::len);
        if own >= MAX_PER_PEER {
            return Err(Refusal::PeerFull);
        }
        if inner.total >= MAX_CONNECTIONS {
            let heaviest = inner
                .peers
                .iter_mut()
                .max_by_key(|(_, held)| held.len())
                .filter(|(_, held)| held.len() > own + 1)
                .and_then(|(_, held)| held.pop());
            let Some((_, token)) = heaviest else {
                return Err(Refusal::Full);
            };
            token.cancel();
            inner.total -= 1;
            inner.peers.retain(|_, held| !held.is_empty());
        }
        inner.total += 1;
        inner.next_id += 1;
        let id = inner.next_id;
        let evicted = CancellationToken::new();
        inner
            .peers
            .entry(peer)
            .or_default()
            .push((id, evicted.clone()));
        Ok(Ticket {
            admission: self.clone(),
            peer,
            id,
            evicted,
        })
    }

    /// Connections open now.
    pub fn in_use(&self) -> usize {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).total
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut inner = self
            .admission
            .inner
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let Some(held) = inner.peers.get_mut(&self.peer) else {
            return;
        };
        // An evicted ticket was already taken out of the count when it was evicted.
        if let Some(at) = held.iter().position(|(id, _)| *id == self.id) {
            held.remove(at);
            if held.is_empty() {
                inner.peers.remove(&self.peer);
            }
            inner.total -= 1;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn v4(last: u8) -> Peer {
        Peer::V4(std::net::Ipv4Addr::new(127, 0, 0, last))
    }

    #[test]
    fn one_peer_is_capped_and_others_still_get_in() {
        let admission = Arc::new(Admission::default());
        let held: Vec<_> = (0..MAX_PER_PEER)
            .map(|_| admission.admit(v4(2)).unwrap())
            .collect();
        assert_eq!(admission.admit(v4(2)).err(), Some(Refusal::PeerFull));
        let other = admission.admit(v4(1)).unwrap();
        assert_eq!(admission.in_use(), MAX_PER_PEER + 1);
        drop(held);
        drop(other);
        assert_eq!(admission.in_use(), 0);
    }

    #[test]
    fn when_full_the_heaviest_peer_loses_its_newest_connection() {
        let admission = Arc::new(Admission::default());
        let mut held = Vec::new();
        // Every slot taken: peer 2 holds 64, peers 3..=9 hold 63 each, peer 10 the rest.
        for _ in 0..MAX_PER_PEER {
            held.push(admission.admit(v4(2)).unwrap());
        }
        for peer in 3..=9u8 {
            for _ in 0..MAX_PER_PEER - 1 {
                held.push(admission.admit(v4(peer)).unwrap());
            }
        }
        while admission.in_use() < MAX_CONNECTIONS {
            held.push(admission.admit(v4(10)).unwrap());
        }
        let newest_of_2 = held
            .iter()
            .rposition(|t| t.peer == v4(2))
            .map(|i| held[i].evicted.clone())
            .unwrap();
        let newcomer = admission.admit(v4(1)).unwrap();
        assert!(
            newest_of_2.is_cancelled(),
            "the heaviest peer's newest went"
        );
        assert_eq!(admission.in_use(), MAX_CONNECTIONS);
        // Its ticket, dropped later by its task, does not count twice.
        drop(held);
        assert_eq!(admission.in_use(), 1);
        drop(newcomer);
        assert_eq!(admission.in_use(), 0);
    }

    #[test]
    fn when_full_a_peer_as_heavy_as_the_heaviest_is_refused() {
        let admission = Arc::new(Admission::default());
        let mut held = Vec::new();
        for peer in 0..7u8 {
            for _ in 0..MAX_PER_PEER {
                held.push(admission.admit(v4(10 + peer)).unwrap());
            }
        }
        for _ in 0..MAX_PER_PEER - 1 {
            held.push(admission.admit(v4(99)).unwrap());
        }
        held.push(admission.admit(v4(98)).unwrap());
        assert_eq!(admission.in_use(), MAX_CONNECTIONS);
        // 63 against the heaviest 64: taking one of theirs would only swap who is heavier.
        assert_eq!(admission.admit(v4(99)).err(), Some(Refusal::Full));
        assert!(held.iter().all(|t| !t.evicted.is_cancelled()));
        // A light peer is let in at a heavy one's expense.
        assert!(admission.admit(v4(97)).is_ok());
        assert_eq!(held.iter().filter(|t| t.evicted.is_cancelled()).count(), 1);
    }

    #[test]
    fn ipv6_peers_are_grouped_by_64() {
        let a: SocketAddr = "[2001:db8::1]:1".parse().unwrap();
        let b: SocketAddr = "[2001:db8::ffff:2]:2".parse().unwrap();
        let c: SocketAddr = "[2001:db8:0:1::1]:1".parse().unwrap();
        assert_eq!(Peer::of(a), Peer::of(b));
        assert_ne!(Peer::of(a), Peer::of(c));
        let mapped: SocketAddr = "[::ffff:127.0.0.2]:1".parse().unwrap();
        assert_eq!(Peer::of(mapped), v4(2));
    }
}
