//! References: which manifest a name (and platform) stands for in this cache.
//!
//! One small JSON record per reference and platform, under
//! `refs/<registry>/<repository>/<tag, or sha256-<hex> when pinned>/<os-arch[-variant]>.json`.
//! The record lists the config and layer digests too, so `images`, `gc` and the start path never
//! parse a manifest. Reference components are validated by the parser, so they are safe file names.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Store, StoreError};
use crate::digest::Digest;
use crate::image::RunConfig;
use crate::platform::Platform;
use crate::reference::Reference;

/// What a pull leaves behind for one reference and platform.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ImageRecord {
    pub reference: String,
    pub platform: Platform,
    /// The image's identity: its manifest's digest.
    pub manifest: Digest,
    /// The index (manifest list) the manifest was chosen from, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<Digest>,
    pub config: Digest,
    pub layers: Vec<Digest>,
    /// Compressed bytes of config and layers.
    pub size: u64,
    /// Seconds since the epoch.
    pub pulled_at: u64,
    /// Entrypoint, Cmd, Env and WorkingDir from the image config: all a job start needs.
    #[serde(default)]
    pub run: RunConfig,
}

impl ImageRecord {
    /// Every blob this image needs.
    pub fn blobs(&self) -> impl Iterator<Item = &Digest> {
        [&self.manifest, &self.config].into_iter().chain(&self.layers).chain(&self.index)
    }
}

impl Store {
    fn reference_dir(&self, reference: &Reference) -> PathBuf {
        let key = match (&reference.digest, &reference.tag) {
            (Some(digest), _) => format!("sha256-{}", digest.hex()),
            (None, Some(tag)) => tag.clone(),
            (None, None) => "latest".to_string(),
        };
        self.refs_dir().join(&reference.registry).join(&reference.repository).join(key)
    }

    fn record_path(&self, reference: &Reference, platform: &Platform) -> PathBuf {
        self.reference_dir(reference).join(format!("{}.json", platform.file_key()))
    }

    pub fn save_record(&self, reference: &Reference, record: &ImageRecord) -> Result<(), StoreError> {
        let path = self.record_path(reference, &record.platform);
        let json = serde_json::to_vec_pretty(record).expect("an image record always serialises");
        self.write_atomic(&path, &json)
    }

    /// Exclusive lock on pulling `reference` for `platform`: jobs that start on an image this
    /// cache lacks take it in turn, and those that waited find the record and ask no registry.
    pub fn lock_reference(
        &self,
        reference: &Reference,
        platform: &Platform,
        on_wait: impl FnOnce(),
    ) -> Result<super::LockGuard, StoreError> {
        let key = Digest::of(self.record_path(reference, platform).as_os_str().as_encoded_bytes());
        super::lock::acquire(
            &super::lock::lock_path(&self.locks_dir(), &format!("ref-{}", key.short())),
            super::Mode::Exclusive,
            on_wait,
        )
    }

    /// The record for `reference` on `platform`, if this cache has it.
    pub fn load_record(
        &self,
        reference: &Reference,
        platform: &Platform,
    ) -> Result<Option<ImageRecord>, StoreError> {
        let path = self.record_path(reference, platform);
        match crate::small_file::read(&path) {
            Ok(bytes) => parse_record(&path, &bytes).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::io("read", &path, e)),
        }
    }

    /// Every record in the cache, sorted by path.
    pub fn records(&self) -> Result<Vec<(PathBuf, ImageRecord)>, StoreError> {
        let mut files = Vec::new();
        collect_json(&self.refs_dir(), &mut files)?;
        files.sort();
        files
            .into_iter()
            .map(|path| {
                let bytes = fs_err::read(&path).map_err(|e| StoreError::io("read", &path, e))?;
                Ok((path.clone(), parse_record(&path, &bytes)?))
            })
            .collect()
    }

    /// Remove every platform's record of `reference`; how many there were.
    pub fn remove_records(&self, reference: &Reference) -> Result<usize, StoreError> {
        let dir = self.reference_dir(reference);
        let mut files = Vec::new();
        collect_json(&dir, &mut files)?;
        for file in &files {
            fs_err::remove_file(file).map_err(|e| StoreError::io("remove", file, e))?;
        }
        remove_empty_parents(&dir, &self.refs_dir());
        Ok(files.len())
    }
}

fn parse_record(path: &Path, bytes: &[u8]) -> Result<ImageRecord, StoreError> {
    serde_json::from_slice(bytes)
        .map_err(|e| StoreError::BadRecord { path: path.to_path_buf(), message: e.to_string() })
}

fn collect_json(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), StoreError> {
    let entries = match fs_err::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(StoreError::io("list", dir, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| StoreError::io("list", dir, e))?;
        let path = entry.path();
        let file_type = entry.file_type().map_err(|e| StoreError::io("inspect", &path, e))?;
        if file_type.is_dir() {
            collect_json(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "json") {
            out.push(path);
        }
    }
    Ok(())
}

/// Tidy `refs/` after a removal: drop directories left empty, up to (not including) `stop`.
fn remove_empty_parents(dir: &Path, stop: &Path) {
    let mut dir = Some(dir);
    while let Some(d) = dir.filter(|d| *d != stop && d.starts_with(stop)) {
        // rmdir fails on a non-empty directory, which is exactly where to stop.
        if fs_err::remove_dir(d).is_err() {
            break;
        }
        dir = d.parent();
    }
}
