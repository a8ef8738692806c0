//! Blobs: stored under their digest, verified before they appear, read-only after.
//!
//! A download goes into `tmp/<hex>.partial` while its blob lock is held, so a later process (after
//! a kill, a reset or a timeout) can resume it with a Range request: the partial is re-hashed from
//! disk on open. A partial whose final digest or size is wrong is deleted, never renamed.

use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use sha2::{Digest as _, Sha256};

use super::{LockGuard, Mode, Store, StoreError, lock};
use crate::digest::Digest;

/// Manifests, indexes and configs are small; a larger one is refused rather than read into memory.
pub const MAX_METADATA_BLOB: u64 = 16 << 20;

impl Store {
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.blobs_dir().join(digest.hex())
    }

    pub fn has_blob(&self, digest: &Digest) -> bool {
        self.blob_path(digest).is_file()
    }

    /// Read a small blob (manifest, index, config) and check it against its digest.
    pub fn read_blob(&self, digest: &Digest) -> Result<Vec<u8>, StoreError> {
        let path = self.blob_path(digest);
        let bytes = fs_err::read(&path).map_err(|e| StoreError::io("read", &path, e))?;
        verify_bytes(digest, &bytes)?;
        Ok(bytes)
    }

    /// Store a small blob held in memory, after checking its digest.
    pub fn put_blob(&self, digest: &Digest, bytes: &[u8]) -> Result<(), StoreError> {
        verify_bytes(digest, bytes)?;
        if self.has_blob(digest) {
            return Ok(());
        }
        let dest = self.blob_path(digest);
        self.write_atomic(&dest, bytes)?;
        make_read_only(&dest)
    }

    /// Exclusive lock on one blob: whoever holds it downloads it; the others wait, then reuse it.
    pub fn lock_blob(&self, digest: &Digest, on_wait: impl FnOnce()) -> Result<LockGuard, StoreError> {
        lock::acquire(&lock::lock_path(&self.locks_dir(), digest.hex()), Mode::Exclusive, on_wait)
    }

    /// Open (or resume) the staging file of a blob. Call with the blob's lock held.
    pub fn partial(&self, digest: &Digest) -> Result<Partial, StoreError> {
        let path = self.tmp_dir().join(format!("{}.partial", digest.hex()));
        let io_err = |e| StoreError::io("open", &path, e);
        let mut file =
            fs_err::OpenOptions::new().read(true).append(true).create(true).open(&path).map_err(io_err)?;
        file.seek(SeekFrom::Start(0)).map_err(io_err)?;
        let (hasher, len) = crate::digest::hash_reader(&mut file).map_err(io_err)?;
        Ok(Partial { path, file, hasher, len })
    }
}

/// A blob being downloaded: bytes appended to `tmp/<hex>.partial` and hashed as they arrive.
pub struct Partial {
    path: PathBuf,
    file: fs_err::File,
    hasher: Sha256,
    len: u64,
}

impl Partial {
    /// Bytes already on disk (from an earlier attempt): where a Range request resumes.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn append(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        self.file.write_all(bytes).map_err(|e| StoreError::io("write", &self.path, e))?;
        self.hasher.update(bytes);
        self.len += bytes.len() as u64;
        Ok(())
    }

    /// Throw away what was downloaded (the server would not resume, or sent too much).
    pub fn restart(&mut self) -> Result<(), StoreError> {
        self.file.set_len(0).map_err(|e| StoreError::io("truncate", &self.path, e))?;
        self.hasher = Sha256::new();
        self.len = 0;
        Ok(())
    }

    /// Verify digest and size, then make the blob visible. A mismatch deletes the partial.
    pub fn commit(self, store: &Store, expected: &Digest, expected_size: u64) -> Result<(), StoreError> {
        let actual = Digest::from_hasher(self.hasher);
        if &actual != expected || self.len != expected_size {
            let _ = fs_err::remove_file(&self.path); // best effort: it is garbage either way
            return Err(StoreError::Mismatch {
                expected: expected.clone(),
                expected_size,
                actual_digest: actual,
                actual_size: self.len,
            });
        }
        self.file.sync_all().map_err(|e| StoreError::io("sync", &self.path, e))?;
        make_read_only(&self.path)?;
        let dest = store.blob_path(expected);
        fs_err::rename(&self.path, &dest).map_err(|e| StoreError::io("rename into place", &dest, e))
    }

    /// Delete the partial: for a blob that can never verify (e.g. more bytes than declared).
    pub fn discard(self) -> Result<(), StoreError> {
        fs_err::remove_file(&self.path).map_err(|e| StoreError::io("remove", &self.path, e))
    }
}

fn make_read_only(path: &std::path::Path) -> Result<(), StoreError> {
    fs_err::set_permissions(path, std::fs::Permissions::from_mode(0o444))
        .map_err(|e| StoreError::io("make read-only", path, e))
}

/// Check in-memory bytes against the digest they are stored under.
pub fn verify_bytes(digest: &Digest, bytes: &[u8]) -> Result<(), StoreError> {
    let actual = Digest::of(bytes);
    if &actual == digest {
        return Ok(());
    }
    Err(StoreError::Mismatch {
        expected: digest.clone(),
        expected_size: bytes.len() as u64,
        actual_digest: actual,
        actual_size: bytes.len() as u64,
    })
}
