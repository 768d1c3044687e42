//! `retry`: drains the notification spool — each entry re-signed with a fresh timestamp and its
//! own webhook-id, with backoff, until delivered or its deadline; every give-up is logged.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;

use crate::cli::client::{Endpoint, fan_out_bound, fan_out_client};
use crate::cli::notify::{Attempted, try_once};
use crate::cli::spool::{self, Entry};
use crate::signature::Keys;

/// Waits between tries of one entry: 1 s, 2 s, 4 s, … up to this.
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// New spool entries are noticed within this, whatever the backoff of the others.
const RESCAN: Duration = Duration::from_secs(2);
/// One exchange never takes longer than this.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(15);

pub struct RetryOptions {
    pub spool: PathBuf,
    pub secret_file: PathBuf,
    /// One pass over every entry, whatever its backoff, then exit.
    pub once: bool,
    /// Exit as soon as the spool is empty (the detached retrier `notify` starts).
    pub exit_when_empty: bool,
}

/// What one pass left behind.
struct Pass {
    left: usize,
    gave_up: usize,
    next_due: Option<Timestamp>,
}

/// Runs until stopped (SIGTERM/SIGINT), or as `once`/`exit_when_empty` say; Ok(true) when the
/// spool ended empty with nothing given up.
pub async fn run(options: RetryOptions) -> Result<bool, String> {
    let dir = options.spool.as_path();
    spool::ensure_dir(dir)?;
    let keys = Keys::load(&options.secret_file).map_err(|e| e.to_string())?;
    let client = fan_out_client()?;
    let _lock = lock(dir, !options.once).await?;
    tracing::info!(spool = %dir.display(), "retrier started");
    let mut stop = std::pin::pin!(stopped());
    loop {
        let pass = tokio::select! {
            pass = pass(dir, &keys, &client, options.once) => pass,
            () = &mut stop => return Ok(false),
        };
        if options.once {
            return Ok(pass.left == 0 && pass.gave_up == 0);
        }
        if options.exit_when_empty && pass.left == 0 {
            tracing::info!("spool empty; retrier exits");
            return Ok(pass.gave_up == 0);
        }
        let wait = pass
            .next_due
            .map(|t| Duration::try_from(t.duration_since(Timestamp::now())).unwrap_or_default())
            .unwrap_or(RESCAN)
            .clamp(Duration::from_millis(50), RESCAN);
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = &mut stop => return Ok(false),
        }
    }
}

async fn stopped() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    tracing::info!("retrier stopped; what is left stays in the spool");
}

/// The spool's lock: waited for (a retrier before this one is still draining) or, for `--once`,
/// refused when held.
async fn lock(dir: &Path, wait: bool) -> Result<nix::fcntl::Flock<std::fs::File>, String> {
    use nix::fcntl::{Flock, FlockArg};
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(spool::LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let arg = if wait {
        FlockArg::LockExclusive
    } else {
        FlockArg::LockExclusiveNonblock
    };
    let shown = path.display().to_string();
    tokio::task::spawn_blocking(move || Flock::lock(file, arg))
        .await
        .map_err(|e| format!("cannot lock {shown}: {e}"))?
        .map_err(|(_, errno)| {
            format!(
                "{shown}: another retrier drains this spool ({errno}); let it, or stop it first"
            )
        })
}

/// One look at the spool: drops superseded and expired entries, tries the due ones concurrently.
async fn pass(dir: &Path, keys: &Keys, client: &reqwest::Client, all: bool) -> Pass {
    let (entries, bad) = spool::load(dir);
    for file in bad {
        let aside = file.path.with_file_name(format!(
            ".bad-{}",
            file.path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        ));
        let _ = std::fs::rename(&file.path, &aside);
        tracing::warn!(error = %file.error, moved_to = %aside.display(), "unreadable spool file set aside");
    }
    let (newest, older) = spool::newest_per_agent(entries);
    for (path, entry) in older {
        tracing::info!(url = %entry.url, build = entry.build, webhook_id = %entry.webhook_id, "superseded by a newer build for the same agent; dropped");
        spool::remove_if_same(&path, &entry.webhook_id);
    }
    let now = Timestamp::now();
    let mut gave_up = 0;
    let mut waiting = Vec::new();
    let mut due = Vec::new();
    for (path, entry) in newest {
        if now >= entry.deadline {
            give_up(&path, &entry, "its deadline passed");
            gave_up += 1;
        } else if all || entry.next_try <= now {
            due.push((path, entry));
        } else {
            waiting.push(entry.next_try);
        }
    }
    let in_flight = Arc::new(tokio::sync::Semaphore::new(fan_out_bound()));
    let tries = due.into_iter().map(|(path, entry)| {
        let in_flight = in_flight.clone();
        async move {
            let _permit = in_flight.acquire().await.ok();
            try_entry(dir, keys, client, &path, entry).await
        }
    });
    for outcome in futures_util::future::join_all(tries).await {
        match outcome {
            Tried::Settled => {}
            Tried::GaveUp => gave_up += 1,
            Tried::Later(next) => waiting.push(next),
        }
    }
    Pass {
        left: waiting.len(),
        gave_up,
        next_due: waiting.into_iter().min(),
    }
}

enum Tried {
    Settled,
    GaveUp,
    Later(Timestamp),
}

async fn try_entry(
    dir: &Path,
    keys: &Keys,
    client: &reqwest::Client,
    path: &Path,
    mut entry: Entry,
) -> Tried {
    let endpoint = match Endpoint::parse(&entry.url) {
        Ok(endpoint) => endpoint,
        Err(e) => {
            give_up(path, &entry, &e);
            return Tried::GaveUp;
        }
    };
    let left =
        Duration::try_from(entry.deadline.duration_since(Timestamp::now())).unwrap_or_default();
    let within = left.min(ATTEMPT_TIMEOUT);
    match try_once(
        client,
        &endpoint,
        keys,
        &entry.webhook_id,
        &entry.payload,
        within,
    )
    .await
    {
        Attempted::Delivered(line) => {
            tracing::info!(url = %entry.url, build = entry.build, webhook_id = %entry.webhook_id, attempts = entry.attempts + 1, answer = %line, "delivered");
            spool::remove_if_same(path, &entry.webhook_id);
            Tried::Settled
        }
        Attempted::Permanent(line) => {
            give_up(path, &entry, &format!("refused: {line}"));
            Tried::GaveUp
        }
        Attempted::Transient(line) => {
            entry.attempts += 1;
            let exponent = entry.attempts.saturating_sub(1).min(16);
            let backoff = Duration::from_secs(1u64 << exponent).min(MAX_BACKOFF);
            // ±10 %: agents that went down together are not retried in one burst.
            let jitter = backoff.mul_f64(rand::random_range(0.9..1.1));
            let now = Timestamp::now();
            entry.next_try = now
                .checked_add(jitter)
                .unwrap_or(entry.deadline)
                .min(entry.deadline);
            tracing::info!(url = %entry.url, build = entry.build, attempts = entry.attempts, error = %line, next_try = %entry.next_try, "not delivered yet");
            entry.last_error = Some(line);
            if let Err(e) = spool::update_if_same(dir, path, &entry) {
                tracing::warn!(error = %e, "cannot record the try; the entry is retried as before");
            }
            Tried::Later(entry.next_try)
        }
    }
}

fn give_up(path: &Path, entry: &Entry, why: &str) {
    tracing::warn!(
        url = %entry.url, build = entry.build, job = %entry.job, webhook_id = %entry.webhook_id,
        attempts = entry.attempts, spooled_at = %entry.spooled_at, last_error = entry.last_error.as_deref().unwrap_or(""),
        "gave up on a notification: {why}"
    );
    spool::remove_if_same(path, &entry.webhook_id);
}
