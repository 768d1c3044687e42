//! The accept loop: bounded connections, header size and read-time limits, graceful shutdown.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use super::Listener;

/// Open connections at once; further clients wait in the kernel's backlog until one closes.
pub const MAX_CONNECTIONS: usize = 512;
/// A client must send its whole request head within this time, also on an idle keep-alive
/// connection (slowloris, idle sockets).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Request line plus headers; larger heads are answered 431.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// Header fields per request; more are answered 431.
pub const MAX_HEADERS: usize = 64;
/// Read buffer per connection (hyper's minimum is 8 KiB).
const MAX_BUF_BYTES: usize = 64 * 1024 + MAX_HEADER_BYTES;
/// Pause after a failed accept (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Serves `app` on `listener` until `shutdown`; then stops accepting and lets open
/// connections finish their current request.
pub async fn run(
    listener: Listener,
    app: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => permit.map_err(std::io::Error::other)?,
            () = shutdown.cancelled() => break,
        };
        let accepted = tokio::select! {
            accepted = accept(&listener) => accepted,
            () = shutdown.cancelled() => break,
        };
        match accepted {
            Ok(Stream::Tcp(io)) => {
                let _ = io.set_nodelay(true);
                spawn_connection(io, app.clone(), shutdown.clone(), permit, slots.clone());
            }
            Ok(Stream::Unix(io)) => {
                spawn_connection(io, app.clone(), shutdown.clone(), permit, slots.clone())
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed; retrying");
                drop(permit);
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
    // Wait for open connections to finish (the caller bounds how long it waits for us).
    let _ = slots.acquire_many(MAX_CONNECTIONS as u32).await;
    Ok(())
}

enum Stream {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

async fn accept(listener: &Listener) -> std::io::Result<Stream> {
    match listener {
        Listener::Tcp(l) => l.accept().await.map(|(s, _)| Stream::Tcp(s)),
        Listener::Unix(l) => l.accept().await.map(|(s, _)| Stream::Unix(s)),
    }
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
/// cannot hold every slot with busy keep-alives: each bad request then costs a new connection,
/// and a legitimate client waiting in the backlog gets a slot within moments. Below it, bad
/// requests keep their connection, which costs less than closing and reconnecting.
fn close_after_client_error(
    mut response: axum::response::Response,
    slots: &Semaphore,
) -> axum::response::Response {
    let in_use = MAX_CONNECTIONS.saturating_sub(slots.available_permits());
    if response.status().is_client_error() && in_use >= PRESSURE_CONNECTIONS {
        response.headers_mut().insert(
            axum::http::header::CONNECTION,
            axum::http::HeaderValue::from_static("close"),
        );
    }
    response
}

fn spawn_connection<IO>(
    io: IO,
    app: Router,
    shutdown: CancellationToken,
    permit: tokio::sync::OwnedSemaphorePermit,
    slots: Arc<Semaphore>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let service = hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
            let answer = app.clone().oneshot(request.map(axum::body::Body::new));
            let slots = slots.clone();
            async move { answer.await.map(|r| close_after_client_error(r, &slots)) }
        });
        let connection = builder().serve_connection(TokioIo::new(io), service);
        let mut connection = std::pin::pin!(connection);
        let result = tokio::select! {
            result = connection.as_mut() => result,
            () = shutdown.cancelled() => {
                connection.as_mut().graceful_shutdown();
                connection.as_mut().await
            }
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, "connection closed with an error");
        }
        drop(permit);
    });
}
