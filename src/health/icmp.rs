//! ICMP echo checks: one shared surge-ping client per address family for a whole phase.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU16, AtomicU32, Ordering};
use std::time::Duration;

use std::sync::Arc;
use surge_ping::{Client, Config, ICMP, IcmpPacket, PingIdentifier, PingSequence, SurgeError};

use super::failure::{Awaited, CheckFailure, Probe};
use tokio::sync::{OnceCell, Semaphore};
use tokio::task::JoinSet;

/// Echo payload: recognisable in a packet capture.
const PAYLOAD: &[u8] = b"nixos-hydra-upgr";

/// Separates the identifiers of phases that run at the same time in one process.
static PHASES: AtomicU16 = AtomicU16::new(0);

/// Echoes awaiting a reply at once, per phase. A raw socket also receives its own outgoing
/// requests on loopback, so hundreds at once overflow its receive buffer and drop replies.
const MAX_IN_FLIGHT: usize = 64;

/// Sends echo requests for every icmp check of a phase. It opens at most one socket per address
/// family, on first use (surge-ping tries an unprivileged datagram socket, then a raw one), so
/// 256 canaries use two sockets, not 256. Each echo gets its own sequence number (and, on raw
/// sockets, identifier), so concurrent checks — even of one address — never take each other's
/// replies.
pub(super) struct Prober {
    v4: OnceCell<Result<Client, String>>,
    v6: OnceCell<Result<Client, String>>,
    ident_base: u16,
    next: AtomicU32,
    in_flight: Arc<Semaphore>,
}

impl Prober {
    pub(super) fn new() -> Self {
        // Truncation is intended: the identifier only has to differ from other pingers'.
        let pid = std::process::id() as u16;
        let phase = PHASES.fetch_add(1, Ordering::Relaxed);
        Self {
            v4: OnceCell::new(),
            v6: OnceCell::new(),
            ident_base: pid.rotate_left(8) ^ phase.wrapping_mul(0x9e37),
            next: AtomicU32::new(0),
            in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
        }
    }

    /// The shared client of `ip`'s family, opened on first use; the open error is kept.
    async fn client(&self, ip: IpAddr) -> Result<&Client, String> {
        let (cell, kind, label) = match ip {
            IpAddr::V4(_) => (&self.v4, ICMP::V4, "ICMPv4"),
            IpAddr::V6(_) => (&self.v6, ICMP::V6, "ICMPv6"),
        };
        let opened = cell
            .get_or_init(|| async move {
                Client::new(&Config::builder().kind(kind).build())
                    .map_err(|e| format!("cannot open an {label} socket: {e}"))
            })
            .await;
        opened.as_ref().map_err(String::clone)
    }

    /// One attempt: resolve `host`, ping each of its addresses once, concurrently; passes on the
    /// first echo reply.
    pub(super) async fn check(&self, host: &str, timeout: Duration) -> Probe {
        let addrs = resolve(host).await?;
        let mut pings = JoinSet::new();
        let mut failures = Vec::new();
        for (ip, scope_id) in addrs {
            let client = match self.client(ip).await {
                Ok(client) => client,
                Err(e) => {
                    failures.push(CheckFailure::CannotProbe(e));
                    continue;
                }
            };
            let n = self.next.fetch_add(1, Ordering::Relaxed);
            // Truncation is intended: sequence numbers wrap after 65536 echoes of one phase.
            let seq = PingSequence(n as u16);
            let ident = PingIdentifier(self.ident_base.wrapping_add((n >> 16) as u16));
            let mut pinger = client.pinger(ip, ident).await;
            pinger.scope_id(scope_id).timeout(timeout);
            let in_flight = self.in_flight.clone();
            pings.spawn(async move {
                // The semaphore is never closed; the permit lives until the echo is settled.
                let _permit = in_flight.acquire_owned().await;
                match pinger.ping(seq, PAYLOAD).await {
                    Ok((packet, rtt)) => echo_reply(ip, &packet, rtt),
                    Err(SurgeError::Timeout { .. }) => Err(CheckFailure::Timeout {
                        awaited: Awaited::EchoReply {
                            from: ip.to_string(),
                        },
                        after: timeout,
                    }),
                    Err(e) => Err(CheckFailure::Connect {
                        to: Some(ip.to_string()),
                        reason: e.to_string(),
                    }),
                }
            });
        }
        // Bounded: one iteration per spawned ping.
        while let Some(joined) = pings.join_next().await {
            match joined {
                Ok(Ok(detail)) => return Ok(detail),
                Ok(Err(detail)) => failures.push(detail),
                Err(e) => failures.push(CheckFailure::Aborted(e.to_string())),
            }
        }
        Err(match failures.len() {
            1 => failures.remove(0),
            _ => CheckFailure::All(failures),
        })
    }
}

/// Only an echo reply passes; anything else the target sent back (e.g. "administratively
/// prohibited") is a failure.
fn echo_reply(ip: IpAddr, packet: &IcmpPacket, rtt: Duration) -> Probe {
    let (is_reply, kind) = match packet {
        IcmpPacket::V4(p) => (p.get_icmp_type().0 == 0, p.get_icmp_type().0),
        IcmpPacket::V6(p) => (p.get_icmpv6_type().0 == 129, p.get_icmpv6_type().0),
    };
    if is_reply {
        Ok(format!("{} reply from {ip}", super::fmt_rtt(rtt)))
    } else {
        Err(CheckFailure::NotEchoReply {
            ip,
            icmp_type: kind,
        })
    }
}

/// The addresses of `host` (an IP literal is used as is), each with its IPv6 scope id.
async fn resolve(host: &str) -> Result<Vec<(IpAddr, u32)>, CheckFailure> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![(ip, 0)]);
    }
    let found = tokio::net::lookup_host((host, 0))
        .await
        .map_err(|e| CheckFailure::CannotProbe(format!("cannot resolve {host}: {e}")))?;
    let mut addrs: Vec<(IpAddr, u32)> = Vec::new();
    for sa in found {
        let scope = match sa {
            std::net::SocketAddr::V6(v6) => v6.scope_id(),
            std::net::SocketAddr::V4(_) => 0,
        };
        if !addrs.contains(&(sa.ip(), scope)) {
            addrs.push((sa.ip(), scope));
        }
    }
    if addrs.is_empty() {
        return Err(CheckFailure::CannotProbe(format!(
            "{host} resolves to no address"
        )));
    }
    Ok(addrs)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use std::time::Instant;

    const T: Duration = Duration::from_secs(2);

    #[tokio::test]
    async fn ipv4_loopback_answers() {
        let detail = Prober::new().check("127.0.0.1", T).await.unwrap();
        assert!(detail.ends_with("reply from 127.0.0.1"), "{detail}");
    }

    #[tokio::test]
    async fn ipv6_loopback_answers() {
        let detail = Prober::new().check("::1", T).await.unwrap();
        assert!(detail.ends_with("reply from ::1"), "{detail}");
    }

    #[tokio::test]
    async fn a_name_passes_when_one_address_answers() {
        // "localhost" comes from /etc/hosts (no DNS traffic); 127.0.0.1 and/or ::1.
        let detail = Prober::new().check("localhost", T).await.unwrap();
        assert!(detail.contains("reply from"), "{detail}");
    }

    #[tokio::test]
    async fn many_canaries_share_two_sockets_and_run_concurrently() {
        // 256 distinct loopback addresses plus ::1, all at once: one ICMPv4 and one ICMPv6
        // socket carry them, with distinct sequence numbers, and no reply is lost.
        let prober = std::sync::Arc::new(Prober::new());
        let started = Instant::now();
        let mut set = JoinSet::new();
        for i in 1..=255u8 {
            let p = prober.clone();
            set.spawn(async move { p.check(&format!("127.0.1.{i}"), T).await });
        }
        for i in 1..=1u8 {
            let p = prober.clone();
            set.spawn(async move { p.check(&format!("127.0.0.{i}"), T).await });
        }
        let p = prober.clone();
        set.spawn(async move { p.check("::1", T).await });
        let mut passed = 0;
        while let Some(r) = set.join_next().await {
            r.unwrap().unwrap();
            passed += 1;
        }
        assert_eq!(passed, 257);
        assert!(started.elapsed() < T, "took {:?}", started.elapsed());
    }

    #[tokio::test]
    async fn same_address_twice_at_once_gets_two_replies() {
        let p = Prober::new();
        let (a, b) = tokio::join!(p.check("127.0.0.1", T), p.check("127.0.0.1", T));
        a.unwrap();
        b.unwrap();
    }
}
