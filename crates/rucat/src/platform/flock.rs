//! Exclusive `flock`s on files, to serialise work on one resource across processes.

use std::fs;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use super::PlatformError;

/// An exclusive `flock` on a file, held until dropped (or the process dies).
pub(crate) struct FileLock {
    _file: fs::File,
}

impl FileLock {
    /// Takes the lock on `path` (creating the file), waiting up to `timeout`. `what` names what
    /// the lock guards, for errors.
    pub(crate) async fn acquire(
        path: &Path,
        what: &str,
        timeout: Duration,
    ) -> Result<Self, PlatformError> {
        let deadline = Instant::now() + timeout;
        loop {
            let file = fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .read(true)
                .write(true)
                .mode(0o600)
                .open(path)
                .map_err(PlatformError::io(format!(
                    "opening the lock file of {what}"
                )))?;
            // SAFETY: flock on a file descriptor we own; no memory is involved.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if rc == 0 {
                // The file may have been removed between our open and our lock: then the lock
                // guards nothing, try again.
                let same = match (fs::metadata(path), file.metadata()) {
                    (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
                    _ => false,
                };
                if same {
                    return Ok(FileLock { _file: file });
                }
            } else {
                let e = io::Error::last_os_error();
                if !matches!(
                    e.raw_os_error(),
                    Some(libc::EWOULDBLOCK) | Some(libc::EINTR)
                ) {
                    return Err(PlatformError::Io {
                        what: format!("locking {what}"),
                        source: e,
                    });
                }
            }
            if Instant::now() >= deadline {
                return Err(PlatformError::Inspect(format!(
                    "{what} is busy: its lock was held for {timeout:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
