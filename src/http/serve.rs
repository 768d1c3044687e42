//! The accept loop: fair admission per peer, header limits, write and lifetime deadlines per
//! connection, graceful shutdown.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use super::Listener;
use super::admission::{Admission, Peer, Refusal, Ticket};
use super::write_deadline::WriteDeadline;

pub use super::admission::{MAX_CONNECTIONS, MAX_PER_PEER};

/// A client must send its whole request head within this time; hyper starts the clock whenever
/// the connection waits for a head, so it is also the idle timeout of a keep-alive connection.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// A write the peer takes no byte of for this long ends the connection (slow readers).
pub const WRITE_STALL_TIMEOUT: Duration = Duration::from_secs(10);
/// After this a connection finishes its current request and closes (trickling keep-alives).
pub const MAX_CONNECTION_LIFETIME: Duration = Duration::from_secs(120);
/// How long a connection asked to close (lifetime, shutdown) may take to finish its request.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// Request line plus headers; larger heads are answered 431.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// Header fields per request; more are answered 431.
pub const MAX_HEADERS: usize = 64;
/// Read buffer per connection (hyper's minimum is 8 KiB).
const MAX_BUF_BYTES: usize = 64 * 1024 + MAX_HEADER_BYTES;
/// Pause after a failed accept (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// What a refused connection is told before it is closed (best effort, never waited for).
const REFUSED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 30\r\nconnection: close\r\ncontent-length: 71\r\n\r\n{\"status\":\"unavailable\",\"reason\":\"too many connections from this peer\"}";

/// Serves `app` on `listener` until `shutdown`; then stops accepting and lets open
/// connections finish their current request.
pub async fn run(
    listener: Listener,
    app: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let admission = Arc::new(Admission::default());
    let tasks = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            accepted = accept(&listener) => accepted,
            () = shutdown.cancelled() => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed; retrying");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let ticket = match admission.admit(peer) {
            Ok(ticket) => ticket,
            Err(refusal) => {
                refuse(&stream, refusal, peer);
                continue;
            }
        };
        let connection = Connection {
            app: app.clone(),
            shutdown: shutdown.clone(),
            ticket,
            admission: admission.clone(),
        };
        match stream {
            Stream::Tcp(io) => {
                let _ = io.set_nodelay(true);
                tasks.spawn(connection.serve(io));
            }
            Stream::Unix(io) => {
                tasks.spawn(connection.serve(io));
            }
        }
    }
    // Wait for open connections to finish (the caller bounds how long it waits for us).
    tasks.close();
    tasks.wait().await;
    Ok(())
}

enum Stream {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

async fn accept(listener: &Listener) -> std::io::Result<(Stream, Peer)> {
    match listener {
        Listener::Tcp(l) => l
            .accept()
            .await
            .map(|(s, address)| (Stream::Tcp(s), Peer::of(address))),
        Listener::Unix(l) => l.accept().await.map(|(s, _)| {
            let peer = s
                .peer_cred()
                .map_or(Peer::Unknown, |c| Peer::Local(c.uid()));
            (Stream::Unix(s), peer)
        }),
    }
}

/// Tells a refused client why (without waiting on it) and closes its connection.
fn refuse(stream: &Stream, refusal: Refusal, peer: Peer) {
    tracing::debug!(?peer, ?refusal, "connection refused");
    let _ = match stream {
        Stream::Tcp(s) => s.try_write(REFUSED),
        Stream::Unix(s) => s.try_write(REFUSED),
    };
}

/// The HTTP/1 settings of every connection.
fn builder() -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_header_size(MAX_HEADER_BYTES)
        .max_headers(MAX_HEADERS)
        .max_buf_size(MAX_BUF_BYTES)
        .keep_alive(true);
    builder
}

/// Connections in use from which a bad request (401, 413, …) also closes its connection.
pub const PRESSURE_CONNECTIONS: usize = MAX_CONNECTIONS / 2;

/// Under pressure, a client that sent a bad request loses its keep-alive connection, so a flood
/// cannot hold every slot with busy keep-alives: each bad request then costs a new connection.
/// Below it, bad requests keep their connection, which costs less than closing and reconnecting.
fn close_after_client_error(
    mut response: axum::response::Response,
    admission: &Admission,
) -> axum::response::Response {
    if response.status().is_client_error() && admission.in_use() >= PRESSURE_CONNECTIONS {
        response.headers_mut().insert(
            axum::http::header::CONNECTION,
            axum::http::HeaderValue::from_static("close"),
        );
    }
    response
}

/// One admitted connection and what it needs to serve itself.
struct Connection {
    app: Router,
    shutdown: CancellationToken,
    ticket: Ticket,
    admission: Arc<Admission>,
}

impl Connection {
    async fn serve<IO>(self, io: IO)
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Connection {
            app,
            shutdown,
            ticket,
            admission,
        } = self;
        let service = hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
            let answer = app.clone().oneshot(request.map(axum::body::Body::new));
            let admission = admission.clone();
            async move {
                answer
                    .await
                    .map(|r| close_after_client_error(r, &admission))
            }
        });
        let io = TokioIo::new(WriteDeadline::new(io, WRITE_STALL_TIMEOUT));
        let connection = builder().serve_connection(io, service);
        let mut connection = std::pin::pin!(connection);
        let evicted = ticket.evicted.clone();
        // First the lifetime; once draining (lifetime or shutdown), the grace to finish.
        let deadline = tokio::time::sleep(MAX_CONNECTION_LIFETIME);
        let mut deadline = std::pin::pin!(deadline);
        let mut draining = false;
        let result = loop {
            tokio::select! {
                result = connection.as_mut() => break Some(result),
                // A lighter peer needed the slot: close now, mid-request or not.
                () = evicted.cancelled() => break None,
                () = &mut deadline => {
                    if draining {
                        break None;
                    }
                    connection.as_mut().graceful_shutdown();
                    draining = true;
                    deadline.as_mut().reset(tokio::time::Instant::now() + CLOSE_GRACE);
                }
                () = shutdown.cancelled(), if !draining => {
                    connection.as_mut().graceful_shutdown();
                    draining = true;
                    deadline.as_mut().reset(tokio::time::Instant::now() + CLOSE_GRACE);
                }
            }
        };
        if let Some(Err(e)) = result {
            tracing::debug!(error = %e, "connection closed with an error");
        }
        drop(ticket);
    }
}
