//! The top layer of a read-only root. Before the image's overlay is mounted, the mount points
//! and generated files that the image lacks are made in a directory of the scratch tmpfs, and
//! the overlay stacks it over the image (`lowerdir=TOP:IMAGE`). An overlay with no upper layer
//! is read-only by itself, and its mount skips overlayfs's work-directory checks; nothing is
//! ever copied up. That is 0.1 ms of every start (`--writable-tmpfs` keeps the upper layer).
//!
//! Each path is laid out in the top layer where it lands in the image: the image's symlinks
//! on the way are followed inside the image, as the mounts themselves follow them (with
//! `RESOLVE_IN_ROOT`). A directory the image has gets the image's mode and mtime in the top
//! layer, since the overlay shows the upper-most layer's. A target under an earlier mount of
//! the plan (a bind below the private /tmp) is left for [`super::mount`] to make in that mount;
//! so is one the image has with the wrong type, which then fails as it always did.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
use nix::sys::stat::{SFlag, fstat};

use super::plan::MountOp;
use crate::unpack::entry::ImagePath;
use crate::unpack::root::Root;

/// What a plan's operation needs in the root.
enum Target<'a> {
    Dir(&'a Path),
    File(&'a Path),
    Contents(&'a Path, &'a str),
}

/// Lay out in `top` what `ops` need that `image` lacks; returns, for each op, whether it is
/// done (a generated file written here; the mounts are all still to be made).
pub fn prepare(ops: &[MountOp], image: &Root, top: &Root) -> io::Result<Vec<bool>> {
    let image_root = real_path(image.fd())?;
    // The root is the top layer's own directory, and the overlay shows its mode and mtime.
    let made = BTreeSet::from([PathBuf::new()]);
    let mut layer = Layer { image, image_root, top, made };
    let mut mounted: Vec<PathBuf> = Vec::new();
    let mut done = Vec::with_capacity(ops.len());
    for op in ops {
        let Some(target) = target(op) else {
            done.push(false);
            continue;
        };
        let landed = match target {
            Target::Dir(dst) => layer.land(dst),
            Target::File(dst) | Target::Contents(dst, _) => layer.land_file(dst),
        };
        // A path the image cannot resolve (a file where a directory should be, a symlink
        // loop) is left to the mount, which reports it.
        let Ok(landed) = landed else {
            done.push(false);
            continue;
        };
        let under_mount = mounted.iter().any(|m| landed.starts_with(m));
        if !matches!(target, Target::Contents(..)) {
            mounted.push(landed.clone());
        }
        done.push(!under_mount && layer.make(&target, &landed)?);
    }
    layer.finish_dirs()?;
    Ok(done)
}

/// The target of an op, or None for a bind that will be skipped (optional, source gone).
fn target(op: &MountOp) -> Option<Target<'_>> {
    Some(match op {
        MountOp::Proc => Target::Dir(Path::new("/proc")),
        MountOp::Dev { .. } => Target::Dir(Path::new("/dev")),
        MountOp::Sys => Target::Dir(Path::new("/sys")),
        MountOp::Tmpfs { dst, .. } => Target::Dir(dst),
        MountOp::Bind { src, dst, optional, .. } => match fs_err::metadata(src) {
            Ok(meta) if meta.is_dir() => Target::Dir(dst),
            Ok(_) => Target::File(dst),
            Err(_) if *optional => return None,
            Err(_) => Target::Dir(dst), // the mount reports the missing source
        },
        MountOp::File { dst, contents } => Target::Contents(dst, contents),
    })
}

struct Layer<'a> {
    image: &'a Root,
    /// The image's root as the kernel names it (symlinks in the cache's path resolved).
    image_root: PathBuf,
    top: &'a Root,
    /// The directories made in the top layer, relative to the root.
    made: BTreeSet<PathBuf>,
}

impl Layer<'_> {
    /// Where directory `path` (absolute in the container) lands in the image: its longest
    /// prefix the image has, every symlink in it resolved inside the image, then the rest.
    fn land(&self, path: &Path) -> io::Result<PathBuf> {
        let path = path.strip_prefix("/").unwrap_or(path);
        if let Some(found) = self.resolve(path)? {
            return Ok(found);
        }
        let mut found = PathBuf::new();
        let mut prefix = PathBuf::new();
        let mut components = path.iter();
        for name in components.by_ref() {
            prefix.push(name);
            match self.resolve(&prefix)? {
                Some(resolved) => found = resolved,
                None => {
                    found.push(name);
                    break;
                }
            }
        }
        found.extend(components);
        Ok(found)
    }

    /// Where file `path` lands: its directory's landing, then its own name (a file mount
    /// point replaces a symlink there rather than following it, as [`Root::mountpoint_file`]).
    fn land_file(&self, path: &Path) -> io::Result<PathBuf> {
        let parent = path.parent().unwrap_or(Path::new("/"));
        let name = path.file_name().unwrap_or(OsStr::new(""));
        Ok(self.land(parent)?.join(name))
    }

    /// `path`'s place in the image, relative to its root, if the image has it.
    fn resolve(&self, path: &Path) -> io::Result<Option<PathBuf>> {
        let target = if path.as_os_str().is_empty() { Path::new(".") } else { path };
        match openat2(self.image.fd(), target, in_root(OFlag::O_PATH)) {
            Ok(fd) => {
                let real = real_path(&fd)?;
                let inside = real.strip_prefix(&self.image_root).map_err(|_| {
                    io::Error::other(format!("{} resolves outside the image", path.display()))
                })?;
                Ok(Some(inside.to_path_buf()))
            }
            Err(Errno::ENOENT) => Ok(None),
            Err(e) => Err(io::Error::from(e)),
        }
    }

    /// The image's file type at `landed`, None if it has nothing there.
    fn image_type(&self, landed: &Path) -> io::Result<Option<SFlag>> {
        let (parent, name) = match (landed.parent(), landed.file_name()) {
            (Some(parent), Some(name)) => (parent, name),
            _ => return Ok(Some(SFlag::S_IFDIR)), // the root
        };
        let Ok(dir) = self.image.dir(parent, false) else { return Ok(None) };
        Ok(Root::lstat(&dir, name)?.map(|stat| SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT))
    }

    /// Make `target` at `landed` in the top layer unless the image has it already (or has
    /// something of another type there, which the mount will then refuse). Returns whether a
    /// generated file was written.
    fn make(&mut self, target: &Target, landed: &Path) -> io::Result<bool> {
        let existing = self.image_type(landed)?;
        match target {
            Target::Dir(_) => {
                if existing.is_none() {
                    self.dir(landed)?;
                }
                Ok(false)
            }
            Target::File(_) => {
                // Anything but a file or a directory there is replaced, as in the image itself.
                if existing.is_none_or(|kind| kind != SFlag::S_IFREG && kind != SFlag::S_IFDIR) {
                    let parent = self.dir(landed.parent().unwrap_or(Path::new("")))?;
                    Root::write_file(&parent, file_name(landed), 0o644, 0, &mut io::empty(), &mut [])?;
                }
                Ok(false)
            }
            Target::Contents(_, contents) => {
                if existing == Some(SFlag::S_IFDIR) {
                    return Ok(false);
                }
                let parent = self.dir(landed.parent().unwrap_or(Path::new("")))?;
                let now = crate::unix_time() as i64;
                Root::write_file(
                    &parent,
                    file_name(landed),
                    0o644,
                    now,
                    &mut contents.as_bytes(),
                    &mut [0; 4096],
                )?;
                Ok(true)
            }
        }
    }

    /// Directory `path` in the top layer, made with its parents.
    fn dir(&mut self, path: &Path) -> io::Result<OwnedFd> {
        let mut prefix = PathBuf::new();
        for name in path.iter() {
            prefix.push(name);
            self.made.insert(prefix.clone());
        }
        self.top.dir(path, true)
    }

    /// Give each directory made here that the image also has the image's mode and mtime
    /// (the deepest first: setting a mode may take the owner's write bit away).
    fn finish_dirs(&self) -> io::Result<()> {
        for path in self.made.iter().rev() {
            let target = if path.as_os_str().is_empty() { Path::new(".") } else { path.as_path() };
            let Ok(fd) = openat2(self.image.fd(), target, in_root(OFlag::O_PATH | OFlag::O_DIRECTORY)) else {
                continue;
            };
            let stat = fstat(&fd)?;
            let image_path = ImagePath::clean(path.as_os_str().as_bytes());
            self.top.finish_dir(&image_path, stat.st_mode & 0o7777, stat.st_mtime)?;
        }
        Ok(())
    }
}

fn file_name(path: &Path) -> &OsStr {
    path.file_name().unwrap_or(OsStr::new(""))
}

fn in_root(flags: OFlag) -> OpenHow {
    OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS)
}

/// The path the kernel has for an open file (`/proc/self/fd/N`).
fn real_path(fd: &OwnedFd) -> io::Result<PathBuf> {
    fs_err::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}
