//! One unpacked rootfs per image, shared by every job of that image:
//! `<data>/v1/rootfs/<manifest hex>/`, built once from the blobs and never changed after.
//!
//! Built in staging under `<data>/v1/tmp/` and renamed into place, under a per-image lock: 16
//! jobs starting one image at the same second build it once, and a process killed mid-unpack
//! leaves only staging (which `gc` removes), never a tree a later run could take for complete.
//! Before the rename, files identical to those of an image on the same base layers become hard
//! links to them (`share`).

mod share;
pub mod top;

use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::digest::Digest;
use crate::progress::Progress;
use crate::store::refs::ImageRecord;
use crate::store::{Store, StoreError, lock};
use crate::unpack::{self, Layer, Report, UnpackError};

#[derive(Debug, Error)]
pub enum RootfsError {
    #[error("unpacking {reference}: {source}")]
    Store { reference: String, source: StoreError },
    #[error("unpacking {reference}: {source}")]
    Unpack { reference: String, source: UnpackError },
    #[error("unpacking {reference}: the image config {config} is not valid: {message}")]
    Config { reference: String, config: Digest, message: String },
}

/// Where the rootfs of `record` lives (whether or not it is built yet).
pub fn path(store: &Store, record: &ImageRecord) -> PathBuf {
    store.rootfs_dir().join(record.manifest.hex())
}

/// The rootfs of `record`, unpacking it first if no one has yet; and whether this process
/// unpacked it.
pub fn ensure(
    store: &Store,
    record: &ImageRecord,
    progress: &Progress,
) -> Result<(PathBuf, bool), RootfsError> {
    let target = path(store, record);
    if target.is_dir() {
        return Ok((target, false));
    }
    let store_error = |source| RootfsError::Store { reference: record.reference.clone(), source };
    let _users =
        store.lock_users(|| progress.note("waiting for `boxrun gc` to finish")).map_err(store_error)?;
    let lock_path = lock::lock_path(&store.data_locks_dir(), &format!("rootfs-{}", record.manifest.hex()));
    let _lock = lock::acquire(&lock_path, lock::Mode::Exclusive, || {
        progress.note(&format!("{}: waiting for another boxrun to unpack it", record.reference))
    })
    .map_err(store_error)?;
    if target.is_dir() {
        return Ok((target, false)); // built by the process we waited for
    }
    let layers = layers(store, record)?;
    let staging = store.data_staging_path(&format!("rootfs-{}", record.manifest.short()));
    fs_err::create_dir(&staging).map_err(|e| store_error(StoreError::io("create", &staging, e)))?;
    let report = match unpack::unpack(&staging, &layers) {
        Ok(report) => report,
        Err(source) => {
            // The partial tree is discarded now; gc would also remove it.
            let _ = fs_err::remove_dir_all(&staging);
            return Err(RootfsError::Unpack { reference: record.reference.clone(), source });
        }
    };
    let shared = share_with_sibling(store, record, &staging);
    fs_err::rename(&staging, &target)
        .map_err(|e| store_error(StoreError::io("rename into place", &target, e)))?;
    summarise(progress, record, &report);
    if let Some(note) = shared {
        progress.note(&note);
    }
    Ok((target, true))
}

/// Hard-link the files `staging` has in common with the built rootfs that shares the most base
/// layers with `record`; what it saved, or why it could not, as a note. Sharing only saves disk,
/// so its failure is no error: each file is the unpacked one or a link to an identical one.
fn share_with_sibling(store: &Store, record: &ImageRecord, staging: &Path) -> Option<String> {
    let sibling = sibling(store, record)?;
    let sibling_path = path(store, &sibling);
    Some(match share::link_identical(staging, &sibling_path) {
        Ok(shared) if shared.files == 0 => return None,
        Ok(shared) => format!(
            "{}: shares {} files ({}) with {}",
            record.reference,
            shared.files,
            crate::progress::human_bytes(shared.bytes),
            sibling.reference
        ),
        Err(e) => format!("{}: not sharing files with {}: {e}", record.reference, sibling.reference),
    })
}

/// The image with a built rootfs whose layers begin with the most of `record`'s.
fn sibling(store: &Store, record: &ImageRecord) -> Option<ImageRecord> {
    let common =
        |other: &ImageRecord| other.layers.iter().zip(&record.layers).take_while(|(a, b)| a == b).count();
    store
        .records()
        .ok()?
        .into_iter()
        .map(|(_, other)| (common(&other), other))
        .filter(|(n, other)| *n > 0 && other.manifest != record.manifest && path(store, other).is_dir())
        .max_by_key(|(n, _)| *n)
        .map(|(_, other)| other)
}

/// The layers with their blobs and diff_ids (from the image config).
fn layers(store: &Store, record: &ImageRecord) -> Result<Vec<Layer>, RootfsError> {
    let config_error = |message: String| RootfsError::Config {
        reference: record.reference.clone(),
        config: record.config.clone(),
        message,
    };
    let bytes = store
        .read_blob(&record.config)
        .map_err(|source| RootfsError::Store { reference: record.reference.clone(), source })?;
    let config = oci_spec::image::ImageConfiguration::from_reader(&bytes[..])
        .map_err(|e| config_error(e.to_string()))?;
    let diff_ids = config.rootfs().diff_ids();
    if diff_ids.len() != record.layers.len() {
        return Err(config_error(format!(
            "it lists {} diff_ids for {} layers",
            diff_ids.len(),
            record.layers.len()
        )));
    }
    record
        .layers
        .iter()
        .zip(diff_ids)
        .map(|(digest, diff_id)| {
            let blob = store.blob_path(digest);
            let size = fs_err::metadata(&blob)
                .map_err(|e| RootfsError::Store {
                    reference: record.reference.clone(),
                    source: StoreError::io("read", &blob, e),
                })?
                .len();
            let diff_id = Digest::parse(diff_id).map_err(|e| config_error(e.to_string()))?;
            Ok(Layer { blob, digest: digest.clone(), diff_id, size })
        })
        .collect()
}

fn summarise(progress: &Progress, record: &ImageRecord, report: &Report) {
    let mut skipped = Vec::new();
    if report.skipped_devices > 0 {
        skipped.push(format!("{} device nodes", report.skipped_devices));
    }
    if report.skipped_fifos > 0 {
        skipped.push(format!("{} fifos", report.skipped_fifos));
    }
    let skipped = if skipped.is_empty() {
        String::new()
    } else {
        format!("; skipped {} (an unprivileged user cannot create them)", skipped.join(" and "))
    };
    progress.note(&format!(
        "{}: unpacked {} files ({}){skipped}",
        record.reference,
        report.files,
        crate::progress::human_bytes(report.bytes)
    ));
}
