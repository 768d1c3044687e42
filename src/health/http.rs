//! HTTP(S) checks: `GET url`, expected status (default any 2xx), optional body substring.
//!
//! Redirects are not followed: the check probes exactly the configured endpoint (a redirect to
//! a login page on another host says nothing about this one), as Hydra requests do (SPEC §5). A
//! 3xx therefore fails unless `status` names it. Proxy variables are ignored: they are set for
//! nix downloads, while a health check asks whether the service answers from here.

use std::error::Error as _;
use std::time::Duration;

use super::failure::{Awaited, CheckFailure, Probe};
use reqwest::redirect::Policy;
use tokio::time::Instant;

/// At most this much of the body is searched for `body_contains`.
pub(super) const BODY_CAP: usize = 1024 * 1024;

/// One attempt with a fresh client (no connection reuse between attempts).
pub(super) async fn check(
    url: &str,
    status: Option<u16>,
    body_contains: Option<&str>,
    timeout: Duration,
) -> Probe {
    let client = reqwest::Client::builder()
        .redirect(Policy::none())
        .no_proxy()
        .timeout(timeout)
        .connect_timeout(timeout)
        .user_agent(concat!(
            "nixos-hydra-upgrade/",
            env!("CARGO_PKG_VERSION"),
            " health-check"
        ))
        .build()
        .map_err(|e| {
            CheckFailure::CannotProbe(format!("cannot build an HTTP client: {}", describe(&e)))
        })?;
    let started = Instant::now();
    let mut response = client
        .get(url)
        .send()
        .await
        .map_err(|e| transport(&e, timeout))?;
    let code = response.status();
    let status_ok = match status {
        Some(want) => code.as_u16() == want,
        None => code.is_success(),
    };
    if !status_ok {
        return Err(CheckFailure::Status {
            code: code.as_u16(),
            expected: status,
        });
    }
    if let Some(needle) = body_contains {
        let mut body = Vec::new();
        let mut truncated = false;
        // Bounded by BODY_CAP and by the attempt's timeout.
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    let room = BODY_CAP.saturating_sub(body.len());
                    body.extend_from_slice(chunk.get(..room.min(chunk.len())).unwrap_or(&[]));
                    if body.len() >= BODY_CAP {
                        truncated = true;
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    return Err(CheckFailure::BodyUnreadable {
                        code: code.as_u16(),
                        reason: describe(&e),
                    });
                }
            }
        }
        if !contains(&body, needle.as_bytes()) {
            return Err(CheckFailure::BodyMismatch {
                code: code.as_u16(),
                needle: needle.to_owned(),
                truncated,
            });
        }
    }
    Ok(format!(
        "status {} in {}",
        code.as_u16(),
        super::fmt_rtt(started.elapsed())
    ))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

/// A request that got no answer: its timeout, or why the connection failed.
fn transport(e: &reqwest::Error, timeout: Duration) -> CheckFailure {
    if e.is_timeout() {
        CheckFailure::Timeout {
            awaited: Awaited::Response,
            after: timeout,
        }
    } else {
        CheckFailure::Connect {
            to: None,
            reason: describe(e),
        }
    }
}

/// The useful part of a reqwest error: "connection refused", "timed out", the resolver's or the
/// TLS library's words — without the URL, which the check's name already shows.
fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        return "timed out".into();
    }
    let mut innermost = None;
    let mut source = e.source();
    // Bounded: error chains are short; stop after 16 links regardless.
    for _ in 0..16 {
        let Some(s) = source else { break };
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return super::tcp::describe_io_error(io);
        }
        innermost = Some(s);
        source = s.source();
    }
    match innermost {
        Some(s) if e.is_connect() => format!("connect: {s}"),
        Some(s) => s.to_string(),
        None => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    const T: Duration = Duration::from_secs(3);

    /// A real HTTP/1.1 server on 127.0.0.1: answers up to `max` connections with `response`
    /// (raw bytes) after reading the request head; counts connections.
    async fn serve(response: Vec<u8>, max: usize) -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(AtomicUsize::new(0));
        let counter = seen.clone();
        tokio::spawn(async move {
            for _ in 0..max {
                let Ok((mut conn, _)) = listener.accept().await else {
                    return;
                };
                counter.fetch_add(1, Ordering::SeqCst);
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16384 {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = conn.write_all(&response).await;
                let _ = conn.shutdown().await;
            }
        });
        (addr, seen)
    }

    fn response(status: &str, headers: &str, body: &[u8]) -> Vec<u8> {
        let mut r = format!(
            "HTTP/1.1 {status}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        r.extend_from_slice(body);
        r
    }

    /// (what, raw response, expected status, body_contains, wanted detail prefix)
    type Case<'a> = (
        &'a str,
        Vec<u8>,
        Option<u16>,
        Option<&'a str>,
        Result<&'a str, &'a str>,
    );

    #[tokio::test]
    async fn status_and_body_cases() {
        let ok = response("200 OK", "", b"database: up\n");
        let cases: &[Case] = &[
            ("2xx passes", ok.clone(), None, None, Ok("status 200 in ")),
            (
                "204 passes",
                response("204 No Content", "", b""),
                None,
                None,
                Ok("status 204"),
            ),
            (
                "503 fails",
                response("503 Service Unavailable", "", b"down"),
                None,
                None,
                Err("status 503"),
            ),
            (
                "expected 503",
                response("503 Service Unavailable", "", b""),
                Some(503),
                None,
                Ok("status 503"),
            ),
            (
                "200 but 204 wanted",
                ok.clone(),
                Some(204),
                None,
                Err("status 200, expected 204"),
            ),
            (
                "body found",
                ok.clone(),
                None,
                Some("database: up"),
                Ok("status 200"),
            ),
            (
                "body missing",
                ok.clone(),
                None,
                Some("database: down"),
                Err("status 200, body does not contain \"database: down\""),
            ),
            (
                "redirect not followed",
                response("302 Found", "Location: /elsewhere\r\n", b""),
                None,
                None,
                Err("status 302"),
            ),
            (
                "redirect accepted when named",
                response("301 Moved Permanently", "Location: /x\r\n", b""),
                Some(301),
                None,
                Ok("status 301"),
            ),
        ];
        for (what, resp, status, body, want) in cases {
            let (addr, _) = serve(resp.clone(), 1).await;
            let got = check(&format!("http://{addr}/health"), *status, *body, T).await;
            let got = got.map_err(|e| e.to_string());
            match (want, &got) {
                (Ok(prefix), Ok(d)) | (Err(prefix), Err(d)) => {
                    assert!(
                        d.starts_with(prefix),
                        "{what}: {d:?} does not start with {prefix:?}"
                    )
                }
                _ => panic!("{what}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[tokio::test]
    async fn a_redirect_target_is_never_contacted() {
        let (target, target_hits) = serve(response("200 OK", "", b""), 1).await;
        let location = format!("Location: http://{target}/\r\n");
        let (addr, _) = serve(response("302 Found", &location, b""), 1).await;
        let detail = check(&format!("http://{addr}/"), None, None, T)
            .await
            .unwrap_err();
        assert_eq!(
            detail,
            CheckFailure::Status {
                code: 302,
                expected: None
            }
        );
        assert_eq!(target_hits.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn body_search_stops_at_one_mebibyte() {
        let mut body = vec![b'x'; BODY_CAP + 10];
        body.extend_from_slice(b"NEEDLE");
        let (addr, _) = serve(response("200 OK", "", &body), 1).await;
        let detail = check(&format!("http://{addr}/"), None, Some("NEEDLE"), T)
            .await
            .unwrap_err()
            .to_string();
        assert!(detail.ends_with("(first 1 MiB read)"), "{detail}");
    }

    #[tokio::test]
    async fn a_closed_port_is_refused() {
        let port = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let detail = check(&format!("http://127.0.0.1:{port}/"), None, None, T)
            .await
            .unwrap_err();
        assert_eq!(detail.to_string(), "connection refused");
        assert!(matches!(detail, CheckFailure::Connect { .. }), "{detail:?}");
    }

    #[tokio::test]
    async fn a_silent_server_times_out() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hold = tokio::spawn(async move {
            let conn = listener.accept().await;
            tokio::time::sleep(Duration::from_secs(5)).await;
            drop(conn);
        });
        let started = Instant::now();
        let short = Duration::from_millis(300);
        let detail = check(&format!("http://{addr}/"), None, None, short)
            .await
            .unwrap_err();
        assert_eq!(detail.to_string(), "no complete response within 300ms");
        assert!(started.elapsed() < Duration::from_secs(2));
        hold.abort();
    }

    #[tokio::test]
    async fn https_to_a_plain_http_server_fails_cleanly() {
        let (addr, _) = serve(response("200 OK", "", b"hi"), 1).await;
        let got = check(&format!("https://{addr}/"), None, None, T).await;
        let detail = got.unwrap_err().to_string();
        assert!(!detail.is_empty());
    }

    #[tokio::test]
    async fn garbage_urls_fail_without_panicking() {
        for url in ["", "not a url", "ftp://127.0.0.1/", "http://"] {
            check(url, None, None, T).await.unwrap_err();
        }
    }

    #[test]
    fn substring_search() {
        assert!(contains(b"abc", b""));
        assert!(contains(b"abc", b"bc"));
        assert!(!contains(b"ab", b"abc"));
    }
}
