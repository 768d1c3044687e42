//! The crate's one atomic file writer: a kill at any moment leaves the old file or the new one.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Names tried before giving up; each collision means another file already holds the name.
const NAME_ATTEMPTS: u32 = 16;

/// Replaces `target` with `bytes`: a fresh temp file beside it (mode 0600, never through a
/// symlink), fsync, rename over `target`, fsync the directory. Blocks: call it off the runtime.
pub fn write(target: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = parent(target)?;
    let (tmp, mut file) = create_temp(&dir, target)?;
    let written = file
        .write_all(bytes)
        .and_then(|()| file.sync_all())
        .and_then(|()| {
            drop(file);
            std::fs::rename(&tmp, target)
        });
    if let Err(e) = written {
        // The temp file is ours (created exclusively), so removing it cannot hit anyone else's.
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    File::open(&dir)?.sync_all()
}

/// [`write`] on tokio's blocking pool, so no fsync stalls the runtime thread.
pub async fn write_async(target: PathBuf, bytes: Vec<u8>) -> io::Result<()> {
    tokio::task::spawn_blocking(move || write(&target, &bytes))
        .await
        .map_err(|e| io::Error::other(format!("the write of a file stopped: {e}")))?
}

fn parent(target: &Path) -> io::Result<PathBuf> {
    match target.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => Ok(dir.to_owned()),
        Some(_) => Ok(PathBuf::from(".")),
        None => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} names no file", target.display()),
        )),
    }
}

/// A new file beside `target`, created with O_CREAT|O_EXCL|O_NOFOLLOW: a name taken by anything,
/// a planted symlink included, is skipped rather than opened.
fn create_temp(dir: &Path, target: &Path) -> io::Result<(PathBuf, File)> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut last = io::Error::other("no name tried");
    for _ in 0..NAME_ATTEMPTS {
        let unique = format!(
            ".{name}.{}.{}.{:016x}.tmp",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            rand::random::<u64>()
        );
        let tmp = dir.join(unique);
        match open_exclusive(&tmp) {
            Ok(file) => return Ok((tmp, file)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = e,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(
        last.kind(),
        format!("no free temp file name beside {}: {last}", target.display()),
    ))
}

/// Creates `path` for writing only if nothing, not even a dangling symlink, has that name.
fn open_exclusive(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
        .open(path)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    #[test]
    fn replaces_the_file_with_mode_0600_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("state.json");
        write(&target, b"one").unwrap();
        write(&target, b"two").unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"two");
        let mode = std::fs::metadata(&target).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["state.json"]);
    }

    #[test]
    fn a_symlink_planted_at_the_temp_path_is_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        let planted = dir.path().join(".state.json.planted.tmp");
        let dangling = dir.path().join(".state.json.dangling.tmp");
        std::os::unix::fs::symlink(&victim, &planted).unwrap();
        std::os::unix::fs::symlink(dir.path().join("absent"), &dangling).unwrap();
        for link in [&planted, &dangling] {
            let opened = open_exclusive(link);
            assert_eq!(opened.unwrap_err().kind(), io::ErrorKind::AlreadyExists);
        }
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
        assert!(
            !dir.path().join("absent").exists(),
            "nothing created through the link"
        );
        // The writer skips a taken name and still replaces the target, leaving the links be.
        let target = dir.path().join("state.json");
        write(&target, b"new").unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"new");
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
        assert_eq!(std::fs::metadata(&victim).unwrap().nlink(), 1);
    }

    #[tokio::test]
    async fn the_async_wrapper_writes_off_the_runtime() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("ids.json");
        write_async(target.clone(), b"[]".to_vec()).await.unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"[]");
        let missing = dir.path().join("no-such-dir").join("x");
        assert!(write_async(missing, b"x".to_vec()).await.is_err());
    }
}
