//! Blob download: streamed into the store's partial file while hashed, resumed with `Range`
//! after a broken connection (or from what an earlier, killed process left), never longer than
//! the descriptor says.

use std::io::Read;

use reqwest::StatusCode;
use reqwest::header::{CONTENT_RANGE, RANGE};

use super::{ATTEMPTS, Client, RegistryError, backoff, error_chain};
use crate::digest::Digest;
use crate::store::blobs::Partial;

const CHUNK: usize = 256 * 1024;

/// Why one attempt stopped.
enum Interrupted {
    /// The connection broke mid-body: resume from where the partial ends.
    Transient(String),
    Fatal(RegistryError),
}

impl Client {
    /// Download `digest` (of `size` bytes) into `partial`, calling `progress` with the bytes on
    /// disk so far. The caller verifies and commits the partial.
    pub fn fetch_blob(
        &self,
        digest: &Digest,
        size: u64,
        partial: &mut Partial,
        progress: &dyn Fn(u64),
    ) -> Result<(), RegistryError> {
        if partial.len() > size {
            partial.restart().map_err(|e| self.protocol(e.to_string()))?;
        }
        progress(partial.len());
        let mut attempt = 0;
        while partial.len() < size {
            attempt += 1;
            match self.fetch_from(digest, size, partial, progress) {
                Ok(()) => return Ok(()),
                Err(Interrupted::Transient(message)) if attempt < ATTEMPTS => {
                    tracing::debug!("blob {digest}: {message}; resuming at byte {}", partial.len());
                    backoff(attempt);
                }
                Err(Interrupted::Transient(message)) => {
                    let url = self.url("blobs", &digest.to_string());
                    let hint = "; check the network and pull again: the download resumes where it stopped";
                    return Err(RegistryError::Network {
                        registry: self.registry.clone(),
                        url,
                        message,
                        hint,
                    });
                }
                Err(Interrupted::Fatal(e)) => return Err(e),
            }
        }
        Ok(())
    }

    /// One GET, from where the partial ends to the end of the blob.
    fn fetch_from(
        &self,
        digest: &Digest,
        size: u64,
        partial: &mut Partial,
        progress: &dyn Fn(u64),
    ) -> Result<(), Interrupted> {
        let offset = partial.len();
        let url = self.url("blobs", &digest.to_string());
        let what = format!("blob {digest} of {}", self.repository);
        let range = format!("bytes={offset}-");
        let response = self
            .get(&url, &what, |r| if offset > 0 { r.header(RANGE, range.as_str()) } else { r })
            .map_err(Interrupted::Fatal)?;
        let resumed = response.status() == StatusCode::PARTIAL_CONTENT
            && response
                .headers()
                .get(CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with(&format!("bytes {offset}-")));
        if offset > 0 && !resumed {
            // The server ignored the Range (200) or answered another one: start over.
            partial.restart().map_err(|e| Interrupted::Fatal(self.protocol(e.to_string())))?;
            progress(0);
        }
        self.stream_body(response, digest, size, partial, progress)
    }

    fn stream_body(
        &self,
        mut body: impl Read,
        digest: &Digest,
        size: u64,
        partial: &mut Partial,
        progress: &dyn Fn(u64),
    ) -> Result<(), Interrupted> {
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = match body.read(&mut buf) {
                Ok(0) if partial.len() == size => return Ok(()),
                Ok(0) => {
                    let message = format!("the connection closed after {} of {size} bytes", partial.len());
                    return Err(Interrupted::Transient(message));
                }
                Ok(n) => n,
                Err(e) => return Err(Interrupted::Transient(error_chain(&e))),
            };
            if partial.len() + n as u64 > size {
                let message = format!("blob {digest} is longer than the {size} bytes its manifest declares");
                return Err(Interrupted::Fatal(self.protocol(message)));
            }
            partial.append(&buf[..n]).map_err(|e| Interrupted::Fatal(self.protocol(e.to_string())))?;
            progress(partial.len());
        }
    }
}
