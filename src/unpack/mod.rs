//! Unpack: an image's layers, applied in order, into one flattened directory tree.
//!
//! The `tar` crate reads entries; boxrun writes them itself (see [`root`]), because tar's own
//! `unpack_in` checks escapes against the host's file system and has no whiteouts. Each layer
//! is decompressed on a thread of its own while the previous one is still being written, its
//! diff_id is verified, and its expansion is bounded so a decompression bomb cannot fill a disk.

mod apply;
mod decompress;
pub mod entry;
pub mod root;

use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::digest::Digest;
use decompress::StreamError;

/// A layer may expand to this much more than its compressed size before it is refused.
/// Real layers expand 2-5×; a generous factor plus a floor keeps odd-but-honest images working.
const EXPANSION_FACTOR: u64 = 32;
const EXPANSION_FLOOR: u64 = 256 << 20;

#[derive(Debug, Error)]
pub enum UnpackError {
    #[error("layer {layer}: cannot unpack entry '{entry}': {source}")]
    Entry { layer: Digest, entry: String, source: std::io::Error },
    #[error("layer {layer}: refused entry '{entry}': {reason}")]
    Refused { layer: Digest, entry: String, reason: String },
    #[error("layer {layer} is not a readable tar stream: {source}")]
    Stream { layer: Digest, source: std::io::Error },
    #[error(
        "layer {layer} expands to more than {limit} bytes, far beyond its {size}-byte blob (a decompression bomb?); refusing it"
    )]
    TooLarge { layer: Digest, size: u64, limit: u64 },
    #[error("layer {layer} has diff_id {actual}, but the image config says {expected}; the image is corrupt")]
    DiffId { layer: Digest, expected: Digest, actual: Digest },
    #[error("cannot {action} {path}: {source}")]
    Io { action: &'static str, path: PathBuf, source: std::io::Error },
}

impl UnpackError {
    fn stream(layer: &Digest, source: std::io::Error) -> UnpackError {
        UnpackError::Stream { layer: layer.clone(), source }
    }
}

/// One layer to apply: its blob in the store and what its uncompressed stream must hash to.
pub struct Layer {
    pub blob: PathBuf,
    pub digest: Digest,
    pub diff_id: Digest,
    pub size: u64,
}

/// What an unpack did, for the one summary line.
#[derive(Debug, Default)]
pub struct Report {
    pub files: u64,
    pub bytes: u64,
    pub skipped_devices: u64,
    pub skipped_fifos: u64,
}

/// Apply `layers` in order into the (empty, existing) directory `dest`.
pub fn unpack(dest: &Path, layers: &[Layer]) -> Result<Report, UnpackError> {
    let root = root::Root::open(dest).map_err(|source| UnpackError::Io {
        action: "open",
        path: dest.to_path_buf(),
        source,
    })?;
    let mut applier = apply::Applier::new(&root);
    std::thread::scope(|scope| {
        // One layer decompresses ahead of the one being written.
        let mut streams = layers.iter().map(|layer| decompress::spawn(scope, &layer.blob, limit(layer.size)));
        let mut next = streams.next();
        for layer in layers {
            let mut stream = next.take().expect("one stream per layer");
            next = streams.next();
            if let Err(error) = applier.apply_layer(&mut stream, &layer.digest) {
                // A stream that failed (a bomb, a corrupt blob) explains a tar error best.
                return Err(stream
                    .take_failure()
                    .map_or(error, |failure| check_ending(layer, Err(failure)).unwrap_err()));
            }
            check_ending(layer, stream.finish())?;
        }
        Ok::<(), UnpackError>(())
    })?;
    applier.finish()
}

fn limit(compressed: u64) -> u64 {
    EXPANSION_FLOOR.saturating_add(compressed.saturating_mul(EXPANSION_FACTOR))
}

fn check_ending(layer: &Layer, ending: decompress::Ending) -> Result<(), UnpackError> {
    match ending {
        Ok((actual, _)) if actual == layer.diff_id => Ok(()),
        Ok((actual, _)) => {
            Err(UnpackError::DiffId { layer: layer.digest.clone(), expected: layer.diff_id.clone(), actual })
        }
        Err(StreamError::TooLarge { limit }) => {
            Err(UnpackError::TooLarge { layer: layer.digest.clone(), size: layer.size, limit })
        }
        Err(StreamError::Io(source)) => Err(UnpackError::stream(&layer.digest, source)),
    }
}
