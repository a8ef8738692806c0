//! `boxrun pull`: reference → manifest → blobs in the store → an image record.
//!
//! A warm pull asks the registry for the (tagged) manifest alone: every blob it names is already
//! in the store. Missing blobs download in parallel, each under its own lock, so many jobs
//! pulling one image at the same second fetch every blob exactly once.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use thiserror::Error;

use crate::config::{ConfigError, Settings};
use crate::digest::Digest;
use crate::image::RunConfig;
use crate::platform::Platform;
use crate::progress::{Outcome, Progress};
use crate::reference::Reference;
use crate::registry::manifest::{self, Manifest, RawManifest, descriptor_digest};
use crate::registry::{Client, RegistryError};
use crate::store::refs::ImageRecord;
use crate::store::{Store, StoreError};

const MAX_PARALLEL_BLOBS: usize = 4;

#[derive(Debug, Error)]
pub enum PullError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("pulling {reference}: {source}")]
    Registry { reference: String, source: RegistryError },
    #[error("pulling {reference}: {source}")]
    Store { reference: String, source: StoreError },
    #[error("pulling {reference}: {message}")]
    Image { reference: String, message: String },
    #[error("{reference} ({platform}) is not in the cache; pull it without --offline first")]
    NotCached { reference: String, platform: Platform },
}

pub struct PullOptions {
    pub platform: Option<Platform>,
    pub offline: bool,
}

/// One blob to make present: digest and declared size.
#[derive(Clone)]
struct Wanted {
    digest: Digest,
    size: u64,
}

/// Make `reference` present in `store`; its record says what it is made of.
pub fn pull(
    settings: &Settings,
    store: &Store,
    reference: &Reference,
    options: &PullOptions,
    progress: &Progress,
) -> Result<ImageRecord, PullError> {
    settings.check_allowed(reference)?;
    let platform = options.platform.clone().unwrap_or_else(Platform::host);
    let name = reference.to_string();
    let store_error = |source| PullError::Store { reference: name.clone(), source };
    if options.offline {
        return resolve_offline(store, reference, &platform);
    }
    let _users =
        store.lock_users(|| progress.note("waiting for `boxrun gc` to finish")).map_err(store_error)?;
    let registry_error = |source| PullError::Registry { reference: name.clone(), source };
    let origin = Client::new(settings, reference).map_err(registry_error)?;
    let image = match Client::mirror(settings, reference).map_err(registry_error)? {
        Some(mirror) => match fetch_image(&mirror, store, reference, &platform, progress) {
            Err(PullError::Registry { source, .. }) => {
                progress.note(&format!(
                    "mirror {} failed ({source}); trying {}",
                    mirror.registry(),
                    origin.registry()
                ));
                fetch_image(&origin, store, reference, &platform, progress)?
            }
            result => result?,
        },
        None => fetch_image(&origin, store, reference, &platform, progress)?,
    };
    let config = &image.blobs[0].digest;
    let config_bytes = store.read_blob(config).map_err(store_error)?;
    let run = RunConfig::from_config_json(&config_bytes).map_err(|message| PullError::Image {
        reference: name.clone(),
        message: format!("the image config {config} is not valid: {message}"),
    })?;
    let record = ImageRecord {
        reference: name.clone(),
        platform,
        manifest: image.manifest,
        index: image.index,
        config: image.blobs[0].digest.clone(),
        layers: image.blobs[1..].iter().map(|b| b.digest.clone()).collect(),
        size: image.blobs.iter().map(|b| b.size).sum(),
        pulled_at: crate::unix_time(),
        run,
    };
    store.save_record(reference, &record).map_err(store_error)?;
    Ok(record)
}

fn resolve_offline(
    store: &Store,
    reference: &Reference,
    platform: &Platform,
) -> Result<ImageRecord, PullError> {
    let not_cached = || PullError::NotCached { reference: reference.to_string(), platform: platform.clone() };
    let record = store
        .load_record(reference, platform)
        .map_err(|source| PullError::Store { reference: reference.to_string(), source })?
        .ok_or_else(not_cached)?;
    if record.blobs().all(|d| store.has_blob(d)) { Ok(record) } else { Err(not_cached()) }
}

/// Resolve the manifest and make every blob it names present, from one registry (or mirror).
fn fetch_image(
    client: &Client,
    store: &Store,
    reference: &Reference,
    platform: &Platform,
    progress: &Progress,
) -> Result<Resolved, PullError> {
    let image = resolve_manifest(client, store, reference, platform)?;
    fetch_blobs(client, store, &image.blobs, progress)
        .map_err(|e| e.into_pull_error(&reference.to_string()))?;
    Ok(image)
}

/// The manifest chosen for this platform: its digest, its index's, and config + layers.
struct Resolved {
    manifest: Digest,
    index: Option<Digest>,
    /// The config first, then the layers in order.
    blobs: Vec<Wanted>,
}

fn resolve_manifest(
    client: &Client,
    store: &Store,
    reference: &Reference,
    platform: &Platform,
) -> Result<Resolved, PullError> {
    let name = reference.to_string();
    let image_error = |message| PullError::Image { reference: name.clone(), message };
    let registry_error = |source| PullError::Registry { reference: name.clone(), source };
    let store_error = |source| PullError::Store { reference: name.clone(), source };
    let top = client.fetch_manifest(&reference.manifest_key()).map_err(registry_error)?;
    let (raw, index) = match manifest::parse(&top, "the manifest").map_err(image_error)? {
        Manifest::Image(_) => (top, None),
        Manifest::Index(index) => {
            store.put_blob(&top.digest, &top.bytes).map_err(store_error)?;
            let entry = manifest::choose_platform(&index, platform).map_err(image_error)?;
            let digest = descriptor_digest(&entry).map_err(image_error)?;
            (load_or_fetch_manifest(client, store, &digest).map_err(registry_error)?, Some(top.digest))
        }
    };
    let Manifest::Image(image) = manifest::parse(&raw, "the platform's manifest").map_err(image_error)?
    else {
        return Err(image_error("an index points to another index; boxrun reads one level".into()));
    };
    store.put_blob(&raw.digest, &raw.bytes).map_err(store_error)?;
    let mut blobs = Vec::with_capacity(image.layers().len() + 1);
    for descriptor in std::iter::once(image.config()).chain(image.layers()) {
        let digest = descriptor_digest(descriptor).map_err(image_error)?;
        blobs.push(Wanted { digest, size: descriptor.size() });
    }
    Ok(Resolved { manifest: raw.digest, index, blobs })
}

/// A platform manifest by digest: from the store when present (a warm pull), else the registry.
fn load_or_fetch_manifest(
    client: &Client,
    store: &Store,
    digest: &Digest,
) -> Result<RawManifest, RegistryError> {
    if let Ok(bytes) = store.read_blob(digest) {
        let media_type = manifest::sniff_media_type(&bytes);
        return Ok(RawManifest { bytes, digest: digest.clone(), media_type });
    }
    client.fetch_manifest(&digest.to_string())
}

enum BlobError {
    Registry(RegistryError),
    Store(StoreError),
}

impl BlobError {
    fn into_pull_error(self, reference: &str) -> PullError {
        match self {
            BlobError::Registry(source) => PullError::Registry { reference: reference.into(), source },
            BlobError::Store(source) => PullError::Store { reference: reference.into(), source },
        }
    }
}

/// Download the missing blobs, `MAX_PARALLEL_BLOBS` at a time; the first error stops the rest.
fn fetch_blobs(
    client: &Client,
    store: &Store,
    blobs: &[Wanted],
    progress: &Progress,
) -> Result<(), BlobError> {
    let queue = Mutex::new(blobs.iter().cloned().collect::<VecDeque<_>>());
    let failed = AtomicBool::new(false);
    let first_error = Mutex::new(None);
    let workers = blobs.len().clamp(1, MAX_PARALLEL_BLOBS);
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                while !failed.load(Ordering::Relaxed) {
                    let Some(wanted) = queue.lock().expect("queue lock").pop_front() else { break };
                    if let Err(e) = fetch_one(client, store, &wanted, progress) {
                        failed.store(true, Ordering::Relaxed);
                        first_error.lock().expect("error lock").get_or_insert(e);
                    }
                }
            });
        }
    });
    match first_error.into_inner().expect("error lock") {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn fetch_one(client: &Client, store: &Store, wanted: &Wanted, progress: &Progress) -> Result<(), BlobError> {
    let bar = progress.blob(&wanted.digest, wanted.size);
    if store.has_blob(&wanted.digest) {
        bar.finish(Outcome::Present);
        return Ok(());
    }
    let _lock = store.lock_blob(&wanted.digest, || bar.waiting()).map_err(BlobError::Store)?;
    if store.has_blob(&wanted.digest) {
        bar.finish(Outcome::Present); // another process downloaded it while we waited
        return Ok(());
    }
    let result = (|| {
        let mut partial = store.partial(&wanted.digest).map_err(BlobError::Store)?;
        client
            .fetch_blob(&wanted.digest, wanted.size, &mut partial, &|n| bar.position(n))
            .map_err(BlobError::Registry)?;
        partial.commit(store, &wanted.digest, wanted.size).map_err(BlobError::Store)
    })();
    match result {
        Ok(()) => bar.finish(Outcome::Downloaded),
        Err(_) => bar.abandon(),
    }
    result
}
