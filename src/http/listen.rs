//! Binding `listen`: a TCP address, or a unix socket that is never taken from a live agent and
//! is mode 0660 whatever the umask.

use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;

use super::Listener;
use crate::config::Listen;

/// Mode of the unix socket: the owner and its group may connect, nobody else.
pub const SOCKET_MODE: u32 = 0o660;
/// Connections the kernel queues before `accept`.
const BACKLOG: u32 = 1024;

/// Binds `listen`; the error says what is in the way.
pub async fn bind(listen: &Listen) -> io::Result<Listener> {
    match listen {
        Listen::Tcp(address) => tokio::net::TcpListener::bind(address.as_str())
            .await
            .map(Listener::Tcp),
        Listen::Unix(path) => bind_unix(path).map(Listener::Unix),
    }
}

fn bind_unix(path: &Path) -> io::Result<tokio::net::UnixListener> {
    remove_if_stale(path)?;
    let socket = tokio::net::UnixSocket::new_stream()?;
    // bind creates the node with the socket's own mode less the umask: set it first, so the
    // socket is never wider than 0660, not even between bind and the chmod below.
    nix::sys::stat::fchmod(
        &socket,
        nix::sys::stat::Mode::from_bits_truncate(SOCKET_MODE),
    )
    .map_err(io::Error::from)?;
    socket.bind(path)?;
    // ...and exactly 0660 even under a stricter umask.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(SOCKET_MODE))?;
    socket.listen(BACKLOG)
}

/// A socket left by an agent that is gone is removed; one that accepts connections is another
/// agent's, and anything that is not a socket is not ours to remove.
fn remove_if_stale(path: &Path) -> io::Result<()> {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !meta.file_type().is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "the path exists and is not a socket; remove it or choose another listen path",
        ));
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            "another process (an agent already running?) accepts connections on it",
        )),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => std::fs::remove_file(path),
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!("cannot tell whether a live process holds it: {e}"),
        )),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[tokio::test]
    async fn a_live_socket_is_refused_a_stale_one_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        let listen = Listen::Unix(path.clone());
        let first = bind(&listen).await.unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().mode() & 0o777,
            SOCKET_MODE
        );
        let error = bind(&listen).await.err().unwrap();
        assert_eq!(error.kind(), io::ErrorKind::AddrInUse, "{error}");
        drop(first);
        // The node stays behind, and nobody accepts on it: stale, so replaced.
        assert!(path.exists());
        let _second = bind(&listen).await.unwrap();
        let file = dir.path().join("not-a-socket");
        std::fs::write(&file, "x").unwrap();
        assert!(bind(&Listen::Unix(file.clone())).await.is_err());
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "x", "left alone");
    }
}
