//! A layer blob as a stream of tar bytes: decompressed by its magic bytes (gzip, zstd, or none,
//! whatever the media type claims), hashed for its diff_id, bounded against decompression bombs,
//! and produced on a thread of its own so inflating overlaps with writing files.

use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use sha2::{Digest as _, Sha256};

use crate::digest::Digest;

const READ_BUFFER: usize = 1 << 20;
const CHUNK: usize = 256 * 1024;
/// Chunks in flight per layer: bounds memory (8 MiB) whatever the layer's size.
const CHUNKS_IN_FLIGHT: usize = 32;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Compression {
    Gzip,
    Zstd,
    None,
}

/// What the first bytes of a blob say it is.
pub fn sniff(head: &[u8]) -> Compression {
    match head {
        [0x1f, 0x8b, ..] => Compression::Gzip,
        [0x28, 0xb5, 0x2f, 0xfd, ..] => Compression::Zstd,
        _ => Compression::None,
    }
}

/// The decompressed bytes of the blob at `path`.
pub fn open(path: &Path) -> io::Result<Box<dyn Read + Send>> {
    let mut file = BufReader::with_capacity(READ_BUFFER, fs_err::File::open(path)?);
    Ok(match sniff(file.fill_buf()?) {
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(file)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(file)?),
        Compression::None => Box::new(file),
    })
}

/// How a layer's stream ended: its diff_id and length, or why it stopped.
pub type Ending = Result<(Digest, u64), StreamError>;

#[derive(Debug)]
pub enum StreamError {
    Io(io::Error),
    /// More than `limit` bytes of tar: a decompression bomb, or a layer far beyond its size.
    TooLarge {
        limit: u64,
    },
}

enum Message {
    Data(Vec<u8>),
    End(Ending),
}

/// Start decompressing `path` on a thread of `scope`; read the tar stream from the result.
pub fn spawn<'scope>(
    scope: &'scope std::thread::Scope<'scope, '_>,
    path: &'scope Path,
    limit: u64,
) -> LayerStream {
    let (sender, receiver) = sync_channel(CHUNKS_IN_FLIGHT);
    scope.spawn(move || produce(path, limit, &sender));
    LayerStream { receiver, chunk: Vec::new(), pos: 0, ending: None }
}

fn produce(path: &Path, limit: u64, sender: &SyncSender<Message>) {
    let ending = (|| {
        let mut reader = open(path).map_err(StreamError::Io)?;
        let mut hasher = Sha256::new();
        let mut len = 0u64;
        loop {
            let mut chunk = vec![0u8; CHUNK];
            let n = match reader.read(&mut chunk) {
                Ok(0) => return Ok((Digest::from_hasher(hasher), len)),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(StreamError::Io(e)),
            };
            len += n as u64;
            if len > limit {
                return Err(StreamError::TooLarge { limit });
            }
            chunk.truncate(n);
            hasher.update(&chunk);
            if sender.send(Message::Data(chunk)).is_err() {
                // The reader gave up (an error in this layer): nobody wants the rest.
                return Err(StreamError::Io(io::Error::other("abandoned")));
            }
        }
    })();
    // The receiver may be gone already; then no one needs to know how the stream ended.
    let _ = sender.send(Message::End(ending));
}

/// The reading end: a `Read` over the chunks, then [`LayerStream::finish`] for the diff_id.
pub struct LayerStream {
    receiver: Receiver<Message>,
    chunk: Vec<u8>,
    pos: usize,
    ending: Option<Ending>,
}

impl Read for LayerStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.chunk.len() {
            if self.ending.is_some() {
                return self.ended();
            }
            match self.receiver.recv() {
                Ok(Message::Data(chunk)) => (self.chunk, self.pos) = (chunk, 0),
                Ok(Message::End(ending)) => self.ending = Some(ending),
                Err(_) => return Err(io::Error::other("the decompressor stopped")),
            }
        }
        let n = buf.len().min(self.chunk.len() - self.pos);
        buf[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl LayerStream {
    /// EOF when the stream ended well; its error otherwise (so tar reports where it stopped).
    fn ended(&self) -> io::Result<usize> {
        match &self.ending {
            Some(Ok(_)) | None => Ok(0),
            Some(Err(StreamError::Io(e))) => Err(io::Error::new(e.kind(), e.to_string())),
            Some(Err(StreamError::TooLarge { limit })) => {
                Err(io::Error::other(format!("the layer expands to more than {limit} bytes")))
            }
        }
    }

    /// How the stream failed, if it already has.
    pub fn take_failure(&mut self) -> Option<StreamError> {
        match self.ending.take() {
            Some(Err(failure)) => Some(failure),
            other => {
                self.ending = other;
                None
            }
        }
    }

    /// Read what tar left (end-of-archive padding) and return the diff_id and length.
    pub fn finish(mut self) -> Ending {
        let mut sink = [0u8; 64 * 1024];
        loop {
            match self.read(&mut sink) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => return Err(self.ending.take().and_then(Result::err).unwrap_or(StreamError::Io(e))),
            }
        }
        self.ending.take().unwrap_or_else(|| Err(StreamError::Io(io::Error::other("the stream did not end"))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magic_bytes_decide_the_decoder() {
        assert_eq!(sniff(&[0x1f, 0x8b, 8, 0]), Compression::Gzip);
        assert_eq!(sniff(&[0x28, 0xb5, 0x2f, 0xfd, 0]), Compression::Zstd);
        assert_eq!(sniff(b"etc/passwd\0"), Compression::None);
        assert_eq!(sniff(b""), Compression::None);
    }
}
