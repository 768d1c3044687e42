//! TCP checks: `host:port` accepts a connection (each resolved address is tried in turn).

use std::io;
use std::net::SocketAddr;

use super::failure::{CheckFailure, Probe};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// One attempt: resolve `address`, connect to its addresses in turn until one accepts.
pub(super) async fn check(address: &str) -> Probe {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(address)
        .await
        .map_err(|e| CheckFailure::CannotProbe(format!("cannot resolve {address}: {e}")))?
        .collect();
    let mut failures = Vec::new();
    // Bounded: one connect per resolved address.
    for addr in &addrs {
        let started = Instant::now();
        match TcpStream::connect(addr).await {
            Ok(stream) => {
                drop(stream);
                return Ok(format!(
                    "connected to {addr} in {}",
                    super::fmt_rtt(started.elapsed())
                ));
            }
            Err(e) => failures.push((addr, describe_io_error(&e))),
        }
    }
    let mut failures: Vec<CheckFailure> = failures
        .into_iter()
        .map(|(addr, reason)| CheckFailure::Connect {
            to: Some(addr.to_string()),
            reason,
        })
        .collect();
    match failures.len() {
        0 => Err(CheckFailure::CannotProbe(format!(
            "{address} resolves to no address"
        ))),
        1 => Err(match failures.remove(0) {
            // One address: the reason alone, the check's name already says where.
            CheckFailure::Connect { reason, .. } => CheckFailure::Connect { to: None, reason },
            other => other,
        }),
        _ => Err(CheckFailure::All(failures)),
    }
}

/// Short lower-case words for the errors a probe meets, e.g. "connection refused".
pub(super) fn describe_io_error(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => "connection refused".into(),
        io::ErrorKind::ConnectionReset => "connection reset".into(),
        io::ErrorKind::HostUnreachable => "host unreachable".into(),
        io::ErrorKind::NetworkUnreachable => "network unreachable".into(),
        io::ErrorKind::TimedOut => "timed out".into(),
        io::ErrorKind::PermissionDenied => "permission denied".into(),
        io::ErrorKind::AddrNotAvailable => "address not available".into(),
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use tokio::net::TcpListener;

    #[tokio::test]
    async fn a_listening_port_passes() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let detail = check(&addr.to_string()).await.unwrap();
        assert!(
            detail.starts_with(&format!("connected to {addr} in ")),
            "{detail}"
        );
    }

    #[tokio::test]
    async fn ipv6_loopback_in_brackets_passes() {
        let listener = TcpListener::bind("[::1]:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        check(&format!("[::1]:{port}")).await.unwrap();
    }

    #[tokio::test]
    async fn a_closed_port_is_refused() {
        // Bind, learn the port, close: nothing listens there any more.
        let port = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let detail = check(&format!("127.0.0.1:{port}")).await.unwrap_err();
        assert_eq!(
            detail,
            CheckFailure::Connect {
                to: None,
                reason: "connection refused".into()
            }
        );
    }

    #[tokio::test]
    async fn a_name_resolves_from_etc_hosts() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        // localhost may also resolve to ::1 (refused there); one accepting address suffices.
        check(&format!("localhost:{port}")).await.unwrap();
    }

    #[tokio::test]
    async fn a_malformed_address_fails_without_panicking() {
        for bad in ["", "no-port", "127.0.0.1:99999", "[::1]"] {
            let detail = check(bad).await.unwrap_err().to_string();
            assert!(detail.starts_with("cannot resolve"), "{bad}: {detail}");
        }
    }
}
