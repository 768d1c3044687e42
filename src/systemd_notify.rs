//! systemd's notify protocol (`Type=notify`): READY after bind, STATUS with the phase, and a
//! watchdog that only the worker task itself keeps fed.
//!
//! The watchdog is fed from inside the worker task: between jobs by the worker loop, and during an
//! attempt by [`keep_alive`], which polls the attempt and pings in the same task. A task blocked
//! in a synchronous call is not polled, so it stops pinging; an await that hangs beyond every
//! bound the attempt has (pre-checks, activation timeouts, post-checks) stops pinging at that
//! budget. Either way systemd restarts the agent, and the interrupted attempt is settled at start.

use std::future::Future;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The notifier for this process, read from the environment once (`init`).
static NOTIFIER: OnceLock<Option<Notifier>> = OnceLock::new();

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("NOTIFY_SOCKET {socket}: {source}")]
    Send {
        socket: String,
        source: std::io::Error,
    },
}

/// Where systemd listens and how often it wants a watchdog ping.
#[derive(Debug)]
pub struct Notifier {
    socket: String,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// From `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID`; None when not under systemd.
    pub fn from_env() -> Option<Notifier> {
        let socket = std::env::var("NOTIFY_SOCKET")
            .ok()
            .filter(|s| !s.is_empty())?;
        let for_us = std::env::var("WATCHDOG_PID")
            .ok()
            .and_then(|p| p.parse::<u32>().ok())
            .is_none_or(|pid| pid == std::process::id());
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|u| u.parse::<u64>().ok())
            .filter(|&u| u > 0 && for_us)
            .map(Duration::from_micros);
        Some(Notifier { socket, watchdog })
    }

    /// Sends one datagram of `KEY=value` lines; abstract sockets start with '@'.
    pub fn send(&self, message: &str) -> Result<(), NotifyError> {
        let error = |source| NotifyError::Send {
            socket: self.socket.clone(),
            source,
        };
        let socket = UnixDatagram::unbound().map_err(error)?;
        match self.socket.strip_prefix('@') {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                let address =
                    std::os::unix::net::SocketAddr::from_abstract_name(name).map_err(error)?;
                socket.send_to_addr(message.as_bytes(), &address)
            }
            None => socket.send_to(message.as_bytes(), PathBuf::from(&self.socket)),
        }
        .map(drop)
        .map_err(error)
    }
}

/// Reads the environment; call once at start-up, before the worker runs.
pub fn init() {
    let notifier = NOTIFIER.get_or_init(Notifier::from_env);
    if let Some(n) = notifier {
        tracing::debug!(socket = %n.socket, watchdog = %n.watchdog.map_or("off".into(), |d| humantime::format_duration(d).to_string()), "systemd notify enabled");
    }
}

fn notifier() -> Option<&'static Notifier> {
    NOTIFIER.get().and_then(Option::as_ref)
}

fn send(message: &str) {
    if let Some(n) = notifier()
        && let Err(e) = n.send(message)
    {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

/// READY=1 once the listener accepts connections.
pub fn ready(listen: &str) {
    send(&format!("READY=1\nSTATUS=idle, listening on {listen}"));
}

/// STOPPING=1 when a shutdown begins.
pub fn stopping() {
    send("STOPPING=1\nSTATUS=stopping");
}

/// STATUS= with the worker's phase (and build), as `systemctl status` shows it.
pub fn status(phase: &str, build: Option<u64>) {
    match build {
        Some(build) if phase != "idle" => send(&format!("STATUS={phase} build {build}")),
        _ => send(&format!("STATUS={phase}")),
    }
}

/// How often to ping: half the watchdog interval, None when systemd wants no pings.
pub fn ping_interval() -> Option<Duration> {
    notifier().and_then(|n| n.watchdog).map(|w| w / 2)
}

/// WATCHDOG=1.
pub fn ping() {
    send("WATCHDOG=1");
}

/// Sleeps one ping interval, or forever when there is no watchdog (for a `select!` arm).
pub async fn tick() {
    match ping_interval() {
        Some(interval) => tokio::time::sleep(interval).await,
        None => std::future::pending().await,
    }
}

/// The longest an attempt can legitimately take: the pre-check phase, every command it may run
/// (closure diff, boot, switch or reboot, rollback) at its timeout plus the kill grace, the settle
/// time and two post-check phases, and a minute of slack.
pub fn attempt_budget(settings: &crate::config::Settings) -> Duration {
    let checks = &settings.health_checks;
    // Saturating: config bounds every duration, and a budget can only err on the long side.
    let command = settings
        .activation_timeout
        .saturating_add(Duration::from_secs(10));
    // The wait step may hold an attempt up to the rollout timeout, plus the push stagger.
    let held = settings.push_delay.saturating_add(
        settings
            .rollout
            .as_ref()
            .map_or(Duration::ZERO, |r| r.timeout),
    );
    checks
        .deadline
        .saturating_mul(3)
        .saturating_add(checks.settle)
        .saturating_add(command.saturating_mul(5))
        .saturating_add(held)
        .saturating_add(Duration::from_secs(60))
}

/// Runs `work` in the calling task, pinging the watchdog while it is pending, for at most
/// `budget`: past it the work is considered wedged and systemd is left to restart the agent.
pub async fn keep_alive<F: Future>(budget: Duration, work: F) -> F::Output {
    let started = Instant::now();
    let mut work = std::pin::pin!(work);
    let mut warned = false;
    loop {
        tokio::select! {
            output = &mut work => return output,
            () = tick() => {
                if started.elapsed() <= budget {
                    ping();
                } else if !warned {
                    warned = true;
                    tracing::error!(budget = %humantime::format_duration(budget), "attempt outlived every timeout it has; no longer feeding the watchdog");
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn notifier(socket: String) -> Notifier {
        Notifier {
            socket,
            watchdog: None,
        }
    }

    #[test]
    fn sends_to_path_and_abstract_sockets() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        notifier(path.display().to_string())
            .send("READY=1")
            .unwrap();
        let mut buffer = [0u8; 64];
        let n = listener.recv(&mut buffer).unwrap();
        assert_eq!(&buffer[..n], b"READY=1");

        use std::os::linux::net::SocketAddrExt;
        let name = format!("nhu-test-{}", std::process::id());
        let address = std::os::unix::net::SocketAddr::from_abstract_name(&name).unwrap();
        let listener = UnixDatagram::bind_addr(&address).unwrap();
        notifier(format!("@{name}")).send("WATCHDOG=1").unwrap();
        let n = listener.recv(&mut buffer).unwrap();
        assert_eq!(&buffer[..n], b"WATCHDOG=1");

        let err = notifier("/nonexistent/notify".into())
            .send("READY=1")
            .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/notify"), "{err}");
    }
}
