//! The per-user, content-addressed cache.
//!
//! ```text
//! <cache>/v1/blobs/sha256/<hex>   immutable, read-only, verified before they appear
//!          refs/<registry>/<repository>/<tag>/<platform>.json   reference → image record
//!          tmp/                   staging (same file system, so rename is atomic)
//!          locks/                 flock files: one per blob, `gc.lock` shared by users
//! <data>/v1/rootfs/<manifest hex>  unpacked images (data defaults to the cache; sites put it
//!          tmp/, locks/            on node-local disk), with their own staging and locks
//!          top/<key>/              the images' top layers (mount points, generated files)
//!          mnt/                    where each container mounts its root (in its own namespace)
//! ```
//!
//! Nothing becomes visible except by `rename` of a complete, verified item, so a process killed
//! at any instant leaves at most staging behind, which `gc` clears.

pub mod blobs;
pub mod gc;
pub mod lock;
pub mod refs;

use std::io;
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::digest::Digest;
pub use lock::{LockGuard, Mode};

/// The cache format; a change that old boxruns cannot read bumps it.
const FORMAT: &str = "v1";

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("cannot {action} {path}: {source}")]
    Io { action: &'static str, path: PathBuf, source: io::Error },
    #[error(
        "blob {expected} failed verification: got {actual_digest} ({actual_size} bytes, expected {expected_size}); it was not stored"
    )]
    Mismatch { expected: Digest, expected_size: u64, actual_digest: Digest, actual_size: u64 },
    #[error("image record {path} is damaged ({message}); remove it with `boxrun rmi` and pull again")]
    BadRecord { path: PathBuf, message: String },
}

impl StoreError {
    pub fn io(action: &'static str, path: &Path, source: io::Error) -> StoreError {
        StoreError::Io { action, path: path.to_path_buf(), source }
    }
}

/// A handle on one cache directory (in a run plan too: the init keeps its top layers there).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Store {
    root: PathBuf,
    data: PathBuf,
}

/// Each directory once: by default the data directory is the cache's, so its tmp/ and locks/
/// are the cache's too.
fn distinct<'a>(dirs: impl IntoIterator<Item = &'a PathBuf>) -> Vec<&'a PathBuf> {
    let mut out: Vec<&PathBuf> = Vec::new();
    for dir in dirs {
        if !out.contains(&dir) {
            out.push(dir);
        }
    }
    out
}

impl Store {
    /// Open (creating if needed) the cache under `cache_dir`, with rootfs trees under `data_dir`.
    pub fn open(cache_dir: &Path, data_dir: &Path) -> Result<Store, StoreError> {
        let store = Store { root: cache_dir.join(FORMAT), data: data_dir.join(FORMAT) };
        let dirs = [store.blobs_dir(), store.refs_dir(), store.tmp_dir(), store.locks_dir()];
        let data_dirs = [store.rootfs_dir(), store.data_tmp_dir(), store.data_locks_dir(), store.mnt_dir()];
        for dir in distinct(dirs.iter().chain(&data_dirs)) {
            // One mkdir per directory on the start path; the parents only the first time.
            match fs_err::create_dir(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(_) => fs_err::create_dir_all(dir).map_err(|e| StoreError::io("create", dir, e))?,
            }
        }
        Ok(store)
    }

    /// Unpacked images, one directory per manifest digest.
    pub fn rootfs_dir(&self) -> PathBuf {
        self.data.join("rootfs")
    }

    /// An empty directory each container mounts its private tmpfs on (in its own mount
    /// namespace: no container sees another's).
    pub fn mnt_dir(&self) -> PathBuf {
        self.data.join("mnt")
    }

    /// The images' top layers (`rootfs::top`), made when a container first needs one.
    pub fn top_dir(&self) -> PathBuf {
        self.data.join("top")
    }

    pub fn data_tmp_dir(&self) -> PathBuf {
        self.data.join("tmp")
    }

    pub fn data_locks_dir(&self) -> PathBuf {
        self.data.join("locks")
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn blobs_dir(&self) -> PathBuf {
        self.root.join("blobs/sha256")
    }

    pub fn refs_dir(&self) -> PathBuf {
        self.root.join("refs")
    }

    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    pub fn locks_dir(&self) -> PathBuf {
        self.root.join("locks")
    }

    /// Users hold this shared while they pull or remove; `gc` holds it exclusively.
    pub fn lock_users(&self, on_wait: impl FnOnce()) -> Result<LockGuard, StoreError> {
        lock::acquire(&lock::lock_path(&self.locks_dir(), "gc"), Mode::Shared, on_wait)
    }

    /// A fresh staging path under `tmp/` (unique to this process and call).
    pub fn staging_path(&self, label: &str) -> PathBuf {
        unique_path(&self.tmp_dir(), label)
    }

    /// A fresh staging path on the data file system, for a rootfs being built.
    pub fn data_staging_path(&self, label: &str) -> PathBuf {
        unique_path(&self.data_tmp_dir(), label)
    }

    /// Write `bytes` to `dest` atomically: stage under `tmp/`, fsync, rename.
    pub fn write_atomic(&self, dest: &Path, bytes: &[u8]) -> Result<(), StoreError> {
        use std::io::Write;
        let staging = self.staging_path("write");
        let result = (|| {
            let mut file = fs_err::File::create(&staging)?;
            file.write_all(bytes)?;
            file.sync_all()
        })();
        result.map_err(|e| StoreError::io("write", &staging, e))?;
        if let Some(parent) = dest.parent() {
            fs_err::create_dir_all(parent).map_err(|e| StoreError::io("create", parent, e))?;
        }
        fs_err::rename(&staging, dest).map_err(|e| {
            let _ = fs_err::remove_file(&staging); // best effort: gc clears tmp/ anyway
            StoreError::io("rename into place", dest, e)
        })
    }
}

fn unique_path(dir: &Path, label: &str) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    dir.join(format!("{label}.{}.{n}", std::process::id()))
}
