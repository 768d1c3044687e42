//! Talks to an agent's HTTP API from the command line: `http(s)://` URLs through reqwest, and
//! `unix:/path` sockets through hyper.

use crate::net::describe;
use std::time::Duration;

use axum::body::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;

/// Answers larger than this are cut off as an error.
const MAX_ANSWER: usize = 1024 * 1024;

/// An agent address: a base URL or a unix socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Http(reqwest::Url),
    Unix(std::path::PathBuf),
}

impl Endpoint {
    /// `http://host:port`, `https://…/prefix` or `unix:/path`.
    pub fn parse(text: &str) -> Result<Endpoint, String> {
        if let Some(path) = text.strip_prefix("unix:") {
            return Ok(Endpoint::Unix(path.into()));
        }
        let url = reqwest::Url::parse(text).map_err(|e| format!("{text}: not a URL: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
            return Err(format!("{text}: not an http(s) URL or unix:/path"));
        }
        Ok(Endpoint::Http(url))
    }

    /// The URL of an API path, keeping any prefix path of the base (`…/v1/upgrade` given whole is kept).
    pub fn describe(&self, path: &str) -> String {
        match self {
            Endpoint::Http(url) => join(url, path).to_string(),
            Endpoint::Unix(socket) => format!("unix:{}{path}", socket.display()),
        }
    }
}

fn join(base: &reqwest::Url, path: &str) -> reqwest::Url {
    let mut url = base.clone();
    let prefix = base.path().trim_end_matches('/');
    if !prefix.ends_with(path) {
        url.set_path(&format!("{prefix}{path}"));
    }
    url
}

/// One HTTP exchange; the answer's status and body.
pub struct Exchange {
    pub status: u16,
    pub body: Vec<u8>,
}

pub async fn request(
    endpoint: &Endpoint,
    method: reqwest::Method,
    path: &str,
    headers: &[(&str, String)],
    body: Option<Vec<u8>>,
    timeout: Duration,
) -> Result<Exchange, String> {
    let client =
        one_shot_client(timeout).map_err(|e| format!("{}: {e}", endpoint.describe(path)))?;
    request_via(&client, endpoint, method, path, headers, body, timeout).await
}

/// A client for one exchange: no redirects followed.
fn one_shot_client(timeout: Duration) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| e.to_string())
}

/// A client shared by many exchanges with many agents (notify, fleet, retry): built once, since
/// building one per request costs more than a loopback exchange; keeps no idle connections, so
/// thousands of agents do not hold thousands of file descriptors.
pub fn fan_out_client() -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(0)
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))
}

/// How many exchanges a fan-out (notify, fleet) keeps in flight: the open-file limit is raised
/// to its hard limit first (a default soft limit of 1024 would cap a fleet at ~1000 agents),
/// and a margin is left for everything else the process opens.
pub fn fan_out_bound() -> usize {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    const MARGIN: u64 = 64;
    let soft: u64 = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => hard,
            Err(_) => soft,
        },
        Ok((soft, _)) => soft,
        Err(_) => 1024,
    };
    usize::try_from(soft.saturating_sub(MARGIN).clamp(16, 65_536)).unwrap_or(16)
}

/// Text from an agent made safe for a terminal or a log: control and bidirectional-override
/// characters escaped, length bounded.
pub fn printable(text: &str, max_chars: usize) -> String {
    let mut out = String::new();
    for (n, c) in text.chars().enumerate() {
        if n == max_chars {
            out.push('…');
            break;
        }
        if c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}') {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out
}

/// `request` through a given client.
pub async fn request_via(
    client: &reqwest::Client,
    endpoint: &Endpoint,
    method: reqwest::Method,
    path: &str,
    headers: &[(&str, String)],
    body: Option<Vec<u8>>,
    timeout: Duration,
) -> Result<Exchange, String> {
    let target = endpoint.describe(path);
    let exchange = async {
        match endpoint {
            Endpoint::Http(base) => {
                http_request(client, base, method, path, headers, body, timeout).await
            }
            Endpoint::Unix(socket) => unix_request(socket, method, path, headers, body).await,
        }
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(Ok(exchange)) => Ok(exchange),
        Ok(Err(Failure::Unreachable(why))) => Err(format!(
            "cannot reach the agent at {target}: {why}; is it running? \
             (on its host: systemctl status nixos-hydra-upgrade)"
        )),
        Ok(Err(Failure::Other(e))) => Err(format!("{target}: {e}")),
        Err(_) => Err(format!(
            "{target}: no answer within {}",
            humantime::format_duration(timeout)
        )),
    }
}

/// Why an exchange failed: nobody there (the usual case, said plainly), or something else.
enum Failure {
    Unreachable(String),
    Other(String),
}

impl From<String> for Failure {
    fn from(e: String) -> Failure {
        Failure::Other(e)
    }
}

/// "connection refused", "no such socket", … for an error connecting, from its io cause.
fn connect_failure(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            return Some(match io.kind() {
                std::io::ErrorKind::ConnectionRefused => "connection refused".into(),
                std::io::ErrorKind::NotFound => "no such socket".into(),
                std::io::ErrorKind::PermissionDenied => "permission denied".into(),
                std::io::ErrorKind::TimedOut => "connection timed out".into(),
                std::io::ErrorKind::HostUnreachable | std::io::ErrorKind::NetworkUnreachable => {
                    "host unreachable".into()
                }
                _ => io.to_string(),
            });
        }
        if c.to_string().starts_with("dns error") {
            return Some(format!(
                "cannot resolve the host name ({})",
                c.source().map_or_else(|| c.to_string(), |s| s.to_string())
            ));
        }
        cause = c.source();
    }
    None
}

fn reqwest_failure(e: &reqwest::Error) -> Failure {
    if e.is_connect()
        && let Some(why) = connect_failure(e)
    {
        return Failure::Unreachable(why);
    }
    Failure::Other(describe(e))
}

async fn http_request(
    client: &reqwest::Client,
    base: &reqwest::Url,
    method: reqwest::Method,
    path: &str,
    headers: &[(&str, String)],
    body: Option<Vec<u8>>,
    timeout: Duration,
) -> Result<Exchange, Failure> {
    let mut request = client.request(method, join(base, path)).timeout(timeout);
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(body);
    }
    let mut response = request.send().await.map_err(|e| reqwest_failure(&e))?;
    let status = response.status().as_u16();
    let mut bytes = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| describe(&e))? {
        if bytes.len() + chunk.len() > MAX_ANSWER {
            return Err(Failure::Other("answer too large".into()));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(Exchange {
        status,
        body: bytes,
    })
}

async fn unix_request(
    socket: &std::path::Path,
    method: reqwest::Method,
    path: &str,
    headers: &[(&str, String)],
    body: Option<Vec<u8>>,
) -> Result<Exchange, Failure> {
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|e| Failure::Unreachable(connect_failure(&e).unwrap_or_else(|| e.to_string())))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let mut builder = hyper::Request::builder()
        .method(method.as_str())
        .uri(path)
        .header("host", "localhost");
    for (name, value) in headers {
        builder = builder.header(*name, value);
    }
    if body.is_some() {
        builder = builder.header("content-type", "application/json");
    }
    let request = builder
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let bytes = Limited::new(response.into_body(), MAX_ANSWER)
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok(Exchange {
        status,
        body: bytes.to_vec(),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        let e = Endpoint::parse("http://127.0.0.1:9980").unwrap();
        assert_eq!(
            e.describe("/v1/upgrade"),
            "http://127.0.0.1:9980/v1/upgrade"
        );
        let e = Endpoint::parse("https://web1.example/agent/").unwrap();
        assert_eq!(
            e.describe("/v1/status"),
            "https://web1.example/agent/v1/status"
        );
        let e = Endpoint::parse("http://web1:9980/v1/upgrade").unwrap();
        assert_eq!(e.describe("/v1/upgrade"), "http://web1:9980/v1/upgrade");
        assert_eq!(
            Endpoint::parse("unix:/run/a.sock").unwrap(),
            Endpoint::Unix("/run/a.sock".into())
        );
        assert!(Endpoint::parse("ftp://x").is_err());
        assert!(Endpoint::parse("web1:9980").is_err());
    }

    #[test]
    fn printable_escapes_terminal_controls() {
        assert_eq!(printable("ok 4821", 100), "ok 4821");
        assert_eq!(printable("a\u{1b}[2Jb\n", 100), "a\\u{1b}[2Jb\\u{a}");
        assert_eq!(printable("x\u{202e}y", 100), "x\\u{202e}y");
        assert_eq!(printable("abcdef", 3), "abc…");
    }
}
