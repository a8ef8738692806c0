//! Garbage collection: remove blobs no image record needs, the top layers no running container
//! holds, and staging left by killed processes.
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
    pub top_layers_removed: usize,
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
        let kept = |name: &str| Digest::parse(&format!("sha256:{name}")).is_ok_and(|d| keep.contains(&d));
        for (path, name) in list(&self.blobs_dir())? {
            if !kept(&name) {
                report.bytes_freed += fs_err::metadata(&path).map(|m| m.len()).unwrap_or(0);
                remove(&path)?;
                report.blobs_removed += 1;
            }
        }
        for (path, name) in list(&self.rootfs_dir())? {
            if !kept(&name) {
                remove(&path)?;
                report.rootfs_removed += 1;
            }
        }
        // Made again by the next start that needs one; those of running containers are kept.
        if self.top_dir().is_dir() {
            for (path, _) in list(&self.top_dir())? {
                if crate::rootfs::top::remove_if_idle(&path)? {
                    report.top_layers_removed += 1;
                }
            }
        }
        for (path, _) in list_each(&[self.tmp_dir(), self.data_tmp_dir()])? {
            remove(&path)?;
            report.staging_removed += 1;
        }
        for (path, name) in list_each(&[self.locks_dir(), self.data_locks_dir()])? {
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

/// The entries of each directory, once each (the data directories default to the cache's).
fn list_each(dirs: &[std::path::PathBuf]) -> Result<Vec<(std::path::PathBuf, String)>, StoreError> {
    let mut out = Vec::new();
    for dir in super::distinct(dirs) {
        out.extend(list(dir)?);
    }
    Ok(out)
}

fn remove(path: &Path) -> Result<(), StoreError> {
    let result = if path.is_dir() { fs_err::remove_dir_all(path) } else { fs_err::remove_file(path) };
    result.map_err(|e| StoreError::io("remove", path, e))
}
