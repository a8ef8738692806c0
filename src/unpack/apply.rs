//! Apply one layer's tar stream to the rootfs: entries in order, whiteouts and opaque markers as
//! the OCI image spec defines them, unprivileged semantics (everything owned by the user, no
//! device nodes, no setuid/setgid bits), directory modes deferred to the end of the unpack.

use std::collections::{BTreeMap, HashSet};
use std::ffi::OsStr;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use tar::EntryType;

use super::entry::{ImagePath, Target};
use super::root::{COPY_BUFFER, Root};
use super::{Report, UnpackError};
use crate::digest::Digest;

/// Owner, group and others may keep r/w/x and the sticky bit; setuid and setgid go (they mean
/// nothing under no_new_privs, and a file the user owns must not carry them).
const KEPT_MODE_BITS: u32 = 0o1777;

/// State that outlives one layer: directory modes to apply last, and the counts.
pub struct Applier<'a> {
    root: &'a Root,
    dirs: BTreeMap<ImagePath, (u32, i64)>,
    pub report: Report,
    buf: Vec<u8>,
}

/// What the current layer created: opaque markers hide everything else in their directory.
#[derive(Default)]
struct LayerPaths {
    /// Paths this layer wrote, and all their ancestors.
    touched: HashSet<ImagePath>,
}

impl LayerPaths {
    fn add(&mut self, path: &ImagePath) {
        for ancestor in path.ancestors() {
            if !self.touched.insert(ancestor) {
                break; // its ancestors are in already
            }
        }
    }
}

impl<'a> Applier<'a> {
    pub fn new(root: &'a Root) -> Applier<'a> {
        Applier { root, dirs: BTreeMap::new(), report: Report::default(), buf: vec![0; COPY_BUFFER] }
    }

    /// Apply every entry of one layer.
    pub fn apply_layer(&mut self, stream: impl Read, layer: &Digest) -> Result<(), UnpackError> {
        let mut archive = tar::Archive::new(stream);
        let mut paths = LayerPaths::default();
        let entries = archive.entries().map_err(|e| UnpackError::stream(layer, e))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| UnpackError::stream(layer, e))?;
            let raw = entry.path_bytes().into_owned();
            let name = String::from_utf8_lossy(&raw).into_owned();
            let entry_error =
                |source| UnpackError::Entry { layer: layer.clone(), entry: name.clone(), source };
            match Target::of(&raw) {
                Target::Path(path) => {
                    self.write_entry(&mut entry, &path).map_err(entry_error)?;
                    paths.add(&path);
                }
                Target::Whiteout { dir, name: hidden } => {
                    self.whiteout(&dir, &hidden).map_err(entry_error)?
                }
                Target::Opaque(dir) => self.opaque(&dir, &paths).map_err(entry_error)?,
                Target::Invalid(reason) => {
                    return Err(UnpackError::Refused {
                        layer: layer.clone(),
                        entry: name,
                        reason: reason.into(),
                    });
                }
            }
        }
        Ok(())
    }

    fn write_entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>, path: &ImagePath) -> io::Result<()> {
        let header = entry.header();
        let kind = header.entry_type();
        let mode = header.mode()? & KEPT_MODE_BITS;
        let mtime = header.mtime().unwrap_or(0) as i64;
        if path.is_root() {
            if kind == EntryType::Directory {
                self.dirs.insert(path.clone(), (mode, mtime));
            }
            return Ok(());
        }
        let (dir, name) = path.split().expect("not the root");
        match kind {
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                let parent = self.root.dir(dir, true)?;
                self.report.bytes += Root::write_file(&parent, name, mode, mtime, entry, &mut self.buf)?;
                self.report.files += 1;
            }
            EntryType::Directory => {
                let parent = self.root.dir(dir, true)?;
                Root::mkdir(&parent, name)?;
                self.dirs.insert(path.clone(), (mode, mtime));
            }
            EntryType::Symlink => {
                let target = entry.link_name_bytes().ok_or_else(|| invalid("a symlink without a target"))?;
                let parent = self.root.dir(dir, true)?;
                Root::symlink(&parent, name, Path::new(OsStr::from_bytes(&target)))?;
            }
            EntryType::Link => {
                let target =
                    entry.link_name_bytes().ok_or_else(|| invalid("a hard link without a target"))?;
                let target = ImagePath::clean(&target);
                if &target != path {
                    let parent = self.root.dir(dir, true)?;
                    self.root.hardlink(&parent, name, &target)?;
                }
            }
            EntryType::Char | EntryType::Block => self.report.skipped_devices += 1,
            EntryType::Fifo => self.report.skipped_fifos += 1,
            other => tracing::debug!("skipping tar entry {path} of type {other:?}"),
        }
        Ok(())
    }

    /// `.wh.NAME`: delete NAME in `dir`, whatever it is. A missing directory hides nothing.
    fn whiteout(&self, dir: &ImagePath, name: &OsStr) -> io::Result<()> {
        match self.root.dir(dir.as_path(), false) {
            Ok(parent) => Root::remove(&parent, name),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// `.wh..wh..opq`: remove what lower layers put in `dir`, keeping what this layer wrote,
    /// even when the marker comes after this layer's own entries in the stream.
    fn opaque(&self, dir: &ImagePath, paths: &LayerPaths) -> io::Result<()> {
        let fd = match self.root.dir(dir.as_path(), false) {
            Ok(fd) => fd,
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => return Ok(()),
            Err(e) => return Err(e),
        };
        for child in Root::children(&fd)? {
            let child_path = dir.join(&child);
            if !paths.touched.contains(&child_path) {
                Root::remove(&fd, &child)?;
            } else if Root::is_dir(&fd, &child)? {
                self.opaque(&child_path, paths)?;
            }
        }
        Ok(())
    }

    /// Give every directory its mode and mtime, deepest first (a parent's mtime changes when
    /// a child's metadata does not, but its mode may forbid reaching the child).
    pub fn finish(self) -> Result<Report, UnpackError> {
        for (dir, (mode, mtime)) in self.dirs.iter().rev() {
            self.root.finish_dir(dir, *mode, *mtime).map_err(|source| UnpackError::Io {
                action: "set the mode of",
                path: self.root.path().join(dir.as_path()),
                source,
            })?;
        }
        Ok(self.report)
    }
}

fn invalid(message: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.to_string())
}
