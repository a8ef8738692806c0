//! Advisory `flock` locks on files under `locks/`.
//!
//! Every lock is tried first and only when someone else holds it does boxrun say it is waiting,
//! so a user sees "waiting" only when there is something to wait for. A file system that refuses
//! flock (Lustre without `-o flock`) gets one warning and no locking: the cache stays correct
//! because nothing becomes visible except by `rename` of a complete, verified item.

use std::fs::TryLockError;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use super::StoreError;

/// Held until dropped (closing the file releases the flock).
#[derive(Debug)]
pub struct LockGuard {
    _file: Option<fs_err::File>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mode {
    Shared,
    Exclusive,
}

static WARNED_UNSUPPORTED: AtomicBool = AtomicBool::new(false);

/// Lock `path` (created if missing), calling `on_wait` once if another process holds it.
pub fn acquire(path: &Path, mode: Mode, on_wait: impl FnOnce()) -> Result<LockGuard, StoreError> {
    let file = open(path)?;
    lock_open(&file, mode, on_wait)?;
    Ok(LockGuard { _file: Some(file) })
}

/// Lock a file already open (its lock lasts as long as the file), calling `on_wait` once if
/// another process holds it. Where the file system refuses flock, the file stays unlocked.
pub fn lock_open(file: &fs_err::File, mode: Mode, on_wait: impl FnOnce()) -> Result<(), StoreError> {
    match try_lock(file, mode) {
        Ok(()) => Ok(()),
        Err(TryLockError::WouldBlock) => {
            on_wait();
            let blocking = match mode {
                Mode::Shared => file.file().lock_shared(),
                Mode::Exclusive => file.file().lock(),
            };
            blocking.or_else(|e| unsupported_or(file.path(), e))
        }
        Err(TryLockError::Error(e)) => unsupported_or(file.path(), e),
    }
}

/// Try to lock without waiting: `None` when another process holds it.
pub fn try_acquire(path: &Path, mode: Mode) -> Result<Option<LockGuard>, StoreError> {
    let file = open(path)?;
    match try_lock(&file, mode) {
        Ok(()) => Ok(Some(LockGuard { _file: Some(file) })),
        Err(TryLockError::WouldBlock) => Ok(None),
        Err(TryLockError::Error(e)) => unsupported_or(path, e).map(|()| Some(LockGuard { _file: None })),
    }
}

fn open(path: &Path) -> Result<fs_err::File, StoreError> {
    fs_err::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| StoreError::io("open lock file", path, e))
}

fn try_lock(file: &fs_err::File, mode: Mode) -> Result<(), TryLockError> {
    match mode {
        Mode::Shared => file.file().try_lock_shared(),
        Mode::Exclusive => file.file().try_lock(),
    }
}

/// File systems without flock answer ENOSYS, EOPNOTSUPP or ENOLCK: warn once and go on unlocked.
fn unsupported_or(path: &Path, error: io::Error) -> Result<(), StoreError> {
    let unsupported = matches!(error.raw_os_error(), Some(libc::ENOSYS | libc::EOPNOTSUPP | libc::ENOLCK));
    if !unsupported {
        return Err(StoreError::io("lock", path, error));
    }
    if !WARNED_UNSUPPORTED.swap(true, Ordering::Relaxed) {
        eprintln!(
            "boxrun: warning: the file system of {} does not support flock; going on without locks (mount it with -o flock to avoid duplicate downloads)",
            path.display()
        );
    }
    Ok(())
}

/// The lock file that guards one named item.
pub fn lock_path(locks_dir: &Path, name: &str) -> PathBuf {
    locks_dir.join(format!("{name}.lock"))
}
