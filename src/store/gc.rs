//! Garbage collection: remove blobs no image record needs, and staging left by killed processes.
//!
//! Every user of the cache holds `locks/gc.lock` shared for the whole of a pull or removal; gc
//! holds it exclusively, so nothing it deletes can be in use: a blob downloaded but not yet named
//! by a record, a partial download, a lock file.

use std::collections::HashSet;
use std::path::Path;

use super::{Mode, Store, StoreError, lock};
use crate::digest::Digest;

#[derive(Debug, Default, serde::Serialize)]
pub struct GcReport {
    pub blobs_removed: usize,
    pub bytes_freed: u64,
    pub rootfs_removed: usize,
    pub staging_removed: usize,
}

impl Store {
    /// Collect garbage, waiting for running pulls to finish first.
    pub fn gc(&self, on_wait: impl FnOnce()) -> Result<GcReport, StoreError> {
        let _guard = lock::acquire(&self.gc_lock_path(), Mode::Exclusive, on_wait)?;
        self.sweep()
    }

    /// Collect garbage only if no other process is using the cache right now.
    pub fn try_gc(&self) -> Result<Option<GcReport>, StoreError> {
        match lock::try_acquire(&self.gc_lock_path(), Mode::Exclusive)? {
            Some(_guard) => self.sweep().map(Some),
            None => Ok(None),
        }
    }

    fn gc_lock_path(&self) -> std::path::PathBuf {
        lock::lock_path(&self.locks_dir(), "gc")
    }

    fn sweep(&self) -> Result<GcReport, StoreError> {
        let mut report = GcReport::default();
        let keep: HashSet<Digest> =
            self.records()?.iter().flat_map(|(_, record)| record.blobs().cloned()).collect();
        for (path, name) in list(&self.blobs_dir())? {
            if Digest::parse(&format!("sha256:{name}")).is_ok_and(|d| keep.contains(&d)) {
                continue;
            }
            let size = fs_err::metadata(&path).map(|m| m.len()).unwrap_or(0);
            remove(&path)?;
            report.blobs_removed += 1;
            report.bytes_freed += size;
        }
        for (path, name) in list(&self.rootfs_dir())? {
            if Digest::parse(&format!("sha256:{name}")).is_ok_and(|d| keep.contains(&d)) {
                continue;
            }
            remove(&path)?;
            report.rootfs_removed += 1;
        }
        let mut staging = list(&self.tmp_dir())?;
        if self.data_tmp_dir() != self.tmp_dir() {
            staging.extend(list(&self.data_tmp_dir())?);
        }
        for (path, _) in staging {
            remove(&path)?;
            report.staging_removed += 1;
        }
        let mut locks = list(&self.locks_dir())?;
        if self.data_locks_dir() != self.locks_dir() {
            locks.extend(list(&self.data_locks_dir())?);
        }
        for (path, name) in locks {
            if name != "gc.lock" {
                remove(&path)?;
            }
        }
        Ok(report)
    }
}

fn list(dir: &Path) -> Result<Vec<(std::path::PathBuf, String)>, StoreError> {
    let mut out = Vec::new();
    for entry in fs_err::read_dir(dir).map_err(|e| StoreError::io("list", dir, e))? {
        let entry = entry.map_err(|e| StoreError::io("list", dir, e))?;
        out.push((entry.path(), entry.file_name().to_string_lossy().into_owned()));
    }
    Ok(out)
}

fn remove(path: &Path) -> Result<(), StoreError> {
    let result = if path.is_dir() { fs_err::remove_dir_all(path) } else { fs_err::remove_file(path) };
    result.map_err(|e| StoreError::io("remove", path, e))
}
