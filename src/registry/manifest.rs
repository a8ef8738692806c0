//! Manifests and indexes: fetch with the right `Accept`, verify the digest, pick a platform.
//!
//! OCI and Docker schema 2 share one JSON shape, so both parse into oci-spec's types; the media
//! type (from `Content-Type`, else the document's `mediaType`) says which one it is.

use std::io::Read;

use oci_spec::image::{Descriptor, ImageIndex, ImageManifest};
use reqwest::header::{ACCEPT, CONTENT_TYPE};

use super::{Client, RegistryError};
use crate::digest::Digest;
use crate::platform::Platform;
use crate::store::blobs::MAX_METADATA_BLOB;

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1";

/// A manifest or index as the registry sent it, with its verified digest.
pub struct RawManifest {
    pub bytes: Vec<u8>,
    pub digest: Digest,
    pub media_type: String,
}

pub enum Manifest {
    Index(Box<ImageIndex>),
    Image(Box<ImageManifest>),
}

impl Client {
    /// GET a manifest by tag or digest and check its digest: against the one asked for, or
    /// against `Docker-Content-Digest` when asked by tag.
    pub fn fetch_manifest(&self, key: &str) -> Result<RawManifest, RegistryError> {
        let url = self.url("manifests", key);
        let what = format!("manifest {}:{key}", self.repository);
        let accept = [OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST].join(", ");
        let response = self.get(&url, &what, |r| r.header(ACCEPT, accept.as_str()))?;
        let header = |name| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
        let content_type = header(CONTENT_TYPE.as_str()).unwrap_or_default();
        let announced = header("docker-content-digest");
        let mut bytes = Vec::new();
        response
            .take(MAX_METADATA_BLOB + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| self.protocol(format!("reading {what}: {e}")))?;
        if bytes.len() as u64 > MAX_METADATA_BLOB {
            return Err(self.protocol(format!("{what} is larger than {MAX_METADATA_BLOB} bytes")));
        }
        let digest = Digest::of(&bytes);
        let expected = match Digest::parse(key) {
            Ok(asked) => Some(asked),
            Err(_) => announced.and_then(|a| Digest::parse(&a).ok()),
        };
        if let Some(expected) = expected
            && expected != digest
        {
            return Err(self.protocol(format!("{what} has digest {digest}, expected {expected}")));
        }
        let media_type = media_type_of(&content_type, &bytes);
        Ok(RawManifest { bytes, digest, media_type })
    }
}

/// The media type of a manifest read back from the store.
pub fn sniff_media_type(bytes: &[u8]) -> String {
    media_type_of("", bytes)
}

/// The media type: `Content-Type` unless it is generic, else the document's own `mediaType`.
fn media_type_of(content_type: &str, bytes: &[u8]) -> String {
    let content_type = content_type.split(';').next().unwrap_or("").trim();
    if content_type.starts_with("application/vnd.") {
        return content_type.to_string();
    }
    #[derive(serde::Deserialize)]
    struct Probe {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
        manifests: Option<serde_json::Value>,
    }
    match serde_json::from_slice::<Probe>(bytes) {
        Ok(Probe { media_type: Some(m), .. }) => m,
        Ok(Probe { manifests: Some(_), .. }) => OCI_INDEX.to_string(),
        _ => OCI_MANIFEST.to_string(),
    }
}

/// Parse a manifest or index. `what` names it in errors.
pub fn parse(raw: &RawManifest, what: &str) -> Result<Manifest, String> {
    let bad = |e: oci_spec::OciSpecError| format!("{what} is not a valid manifest: {e}");
    match raw.media_type.as_str() {
        OCI_INDEX | DOCKER_LIST => {
            ImageIndex::from_reader(&raw.bytes[..]).map(|i| Manifest::Index(Box::new(i))).map_err(bad)
        }
        OCI_MANIFEST | DOCKER_MANIFEST => {
            ImageManifest::from_reader(&raw.bytes[..]).map(|m| Manifest::Image(Box::new(m))).map_err(bad)
        }
        m if m.starts_with(DOCKER_SCHEMA1) => Err(format!(
            "{what} uses Docker schema 1, which registries retired in 2019; push the image again with a current client"
        )),
        other => Err(format!("{what} has media type '{other}', which is not an image")),
    }
}

/// The entry of `index` for `wanted`, or an error listing what the index offers.
pub fn choose_platform(index: &ImageIndex, wanted: &Platform) -> Result<Descriptor, String> {
    let offered: Vec<(Platform, &Descriptor)> =
        index.manifests().iter().filter_map(|d| d.platform().as_ref().map(|p| (to_platform(p), d))).collect();
    if let Some((_, descriptor)) = offered.iter().find(|(p, _)| wanted.matches(p)) {
        return Ok((*descriptor).clone());
    }
    let list: Vec<String> = offered.iter().map(|(p, _)| p.to_string()).collect();
    Err(format!(
        "the image has no {wanted} variant (it has: {}); choose one with --platform",
        if list.is_empty() { "none named".to_string() } else { list.join(", ") }
    ))
}

pub fn to_platform(p: &oci_spec::image::Platform) -> Platform {
    Platform {
        os: p.os().to_string(),
        architecture: p.architecture().to_string(),
        variant: p.variant().clone(),
    }
}

/// Our digest type for a descriptor's digest (strictly parsed: it becomes a file name).
pub fn descriptor_digest(descriptor: &Descriptor) -> Result<Digest, String> {
    Digest::parse(descriptor.digest().as_ref()).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_type_from_header_or_body() {
        assert_eq!(media_type_of("application/vnd.oci.image.index.v1+json; charset=x", b"{}"), OCI_INDEX);
        assert_eq!(media_type_of("application/json", br#"{"mediaType":"a.b"}"#), "a.b");
        assert_eq!(media_type_of("", br#"{"manifests":[]}"#), OCI_INDEX);
        assert_eq!(media_type_of("", br#"{"layers":[]}"#), OCI_MANIFEST);
    }

    #[test]
    fn schema1_is_refused_with_advice() {
        let raw = RawManifest {
            bytes: b"{}".to_vec(),
            digest: Digest::of(b"{}"),
            media_type: "application/vnd.docker.distribution.manifest.v1+prettyjws".into(),
        };
        assert!(parse(&raw, "m").err().unwrap().contains("schema 1"));
    }
}
