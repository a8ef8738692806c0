//! The top layer of a read-only root. The mount points and generated files that the image
//! lacks are made in a directory, and the overlay stacks it over the image
//! (`lowerdir=TOP:IMAGE`). An overlay with no upper layer is read-only by itself, and its mount
//! skips overlayfs's work-directory checks; nothing is ever copied up (`--writable-tmpfs` keeps
//! the upper layer). The directory is one the store keeps per [`key`] (`rootfs::top`), laid out
//! by the first start that needs it, or one in the scratch tmpfs, laid out at each start.
//!
//! Each path is laid out in the top layer where it lands in the image: the image's symlinks
//! on the way are followed inside the image, as the mounts themselves follow them (with
//! `RESOLVE_IN_ROOT`). A directory the image has gets the image's mode and mtime in the top
//! layer, since the overlay shows the upper-most layer's. A target under an earlier mount of
//! the plan (a bind below the private /tmp) is left for [`super::mount`] to make in that mount;
//! so is one the image has with the wrong type, which then fails as it always did.

use std::cell::OnceCell;
use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, ResolveFlag, openat, openat2};
use nix::sys::stat::{Mode, SFlag, fstat};

use super::dev::{self, Device};
use super::plan::MountOp;
use crate::unpack::entry::ImagePath;
use crate::unpack::root::{IN_ROOT, Root, in_root};

/// What a plan's operation needs in the root.
enum Target<'a> {
    /// /dev, laid out with mount points for these devices (`dev::lay_out`).
    Dev(&'a [Device]),
    Dir(&'a Path),
    File(&'a Path),
    Contents(&'a Path, &'a str),
}

/// Lay out in `top` what `ops` need that `image` lacks; returns, for each op, whether it is
/// done (a generated file written here, or /dev laid out for its binds; the other mounts are
/// all still to be made).
pub fn prepare(ops: &[MountOp], image: &Root, top: &Root) -> io::Result<Vec<bool>> {
    // The root is the top layer's own directory, and the overlay shows its mode and mtime.
    let made = BTreeSet::from([PathBuf::new()]);
    let mut layer = Layer { image, image_root: OnceCell::new(), top, made };
    let mut mounted: Vec<PathBuf> = Vec::new();
    let mut done = Vec::with_capacity(ops.len());
    for op in ops {
        let Some(target) = target(op) else {
            done.push(false);
            continue;
        };
        // A path the image cannot resolve (a file where a directory should be, a symlink
        // loop) is left to the mount, which reports it.
        let Ok(landing) = layer.land(&target) else {
            done.push(false);
            continue;
        };
        let under_mount = mounted.iter().any(|m| landing.path.starts_with(m));
        match target {
            Target::Contents(..) => {}
            // /dev is laid out here, not mounted: only devpts and /dev/shm are mounts in it.
            Target::Dev(_) => mounted.extend(dev::DIRS.map(|dir| landing.path.join(dir))),
            _ => mounted.push(landing.path.clone()),
        }
        done.push(!under_mount && layer.make(&target, &landing)?);
    }
    layer.finish_dirs()?;
    Ok(done)
}

/// What `prepare` makes of `ops` over the image at `rootfs`, as a name: the same for every
/// plan that would lay out the same top layer (the image is immutable, named by its digest),
/// so one made before can serve (`rootfs::top`). Bump the version when `prepare` changes.
///
/// Two SipHash passes, 128 bits: a collision needs some 2^64 plans of one user, and no one
/// gains from making one (the layers are the user's own). Not SHA-256: its first use asks the
/// CPU for its features (`cpuid`), which traps to the hypervisor in a VM: 60 µs of a start.
/// std's hasher may change with the toolchain; the layers are then made anew, nothing worse.
pub fn key(ops: &[MountOp], rootfs: &Path) -> String {
    use std::hash::{DefaultHasher, Hash, Hasher};
    let mut halves = [DefaultHasher::new(), DefaultHasher::new()];
    for (salt, hasher) in halves.iter_mut().enumerate() {
        (salt, "boxrun top layer v1", rootfs).hash(hasher);
    }
    for op in ops {
        let target = match target(op) {
            None => (0u8, Path::new(""), None, None),
            Some(Target::Dir(path)) => (1, path, None, None),
            Some(Target::File(path)) => (2, path, None, None),
            Some(Target::Contents(path, contents)) => (3, path, Some(contents), None),
            Some(Target::Dev(devices)) => (4, Path::new("/dev"), None, Some(devices)),
        };
        halves.iter_mut().for_each(|hasher| target.hash(hasher));
    }
    format!("{:016x}{:016x}", halves[0].finish(), halves[1].finish())
}

/// The target of an op, or None for a bind that will be skipped (optional, source gone).
fn target(op: &MountOp) -> Option<Target<'_>> {
    Some(match op {
        MountOp::Proc => Target::Dir(Path::new("/proc")),
        MountOp::Dev { devices, .. } => Target::Dev(devices),
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
    /// The image's root as the kernel names it (symlinks in the cache's path resolved), for
    /// the paths that pass through the image's own symlinks.
    image_root: OnceCell<PathBuf>,
    top: &'a Root,
    /// The directories made in the top layer, relative to the root.
    made: BTreeSet<PathBuf>,
}

/// Where a target lands in the image, relative to its root.
struct Landing {
    path: PathBuf,
    /// What the image has there: its type, None if nothing. A directory target's final
    /// symlink is followed; a file target's is not (a file mount point replaces a symlink, as
    /// [`Root::mountpoint_file`] does).
    existing: Option<SFlag>,
}

impl Layer<'_> {
    fn land(&self, target: &Target) -> io::Result<Landing> {
        let path = match target {
            Target::Dir(path) | Target::File(path) | Target::Contents(path, _) => path,
            Target::Dev(_) => Path::new("/dev"),
        };
        if path.components().any(|c| c == Component::ParentDir) {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        }
        let path = path.strip_prefix("/").unwrap_or(path);
        if let Target::Dir(_) | Target::Dev(_) = target {
            let (path, fd) = self.land_dir(path)?;
            let existing = fd.map(|fd| fstat(&fd).map(|stat| file_type(stat.st_mode))).transpose()?;
            return Ok(Landing { path, existing });
        }
        let (parent, fd) = self.land_dir(path.parent().unwrap_or(Path::new("")))?;
        let name = path.file_name().unwrap_or(OsStr::new(""));
        let existing = match fd {
            Some(fd) => Root::lstat(&fd, name)?.map(|stat| file_type(stat.st_mode)),
            None => None,
        };
        Ok(Landing { path: parent.join(name), existing })
    }

    /// Where `path` lands in the image: its longest prefix the image has, every symlink in
    /// it resolved inside the image, then the rest; and the image's file there, if any.
    fn land_dir(&self, path: &Path) -> io::Result<(PathBuf, Option<OwnedFd>)> {
        if let Some((found, fd)) = self.resolve(path)? {
            return Ok((found, Some(fd)));
        }
        let mut found = PathBuf::new();
        let mut prefix = PathBuf::new();
        let mut components = path.iter();
        for name in components.by_ref() {
            prefix.push(name);
            match self.resolve(&prefix)? {
                Some((resolved, _)) => found = resolved,
                None => {
                    found.push(name);
                    break;
                }
            }
        }
        found.extend(components);
        Ok((found, None))
    }

    /// `path`'s place in the image and the file there, if the image has it: the path itself
    /// when no symlink is on the way (one `openat2`), else where the kernel found it.
    fn resolve(&self, path: &Path) -> io::Result<Option<(PathBuf, OwnedFd)>> {
        let target = if path.as_os_str().is_empty() { Path::new(".") } else { path };
        let no_symlinks = in_root(OFlag::O_PATH).resolve(IN_ROOT | ResolveFlag::RESOLVE_NO_SYMLINKS);
        match openat2(self.image.fd(), target, no_symlinks) {
            Ok(fd) => return Ok(Some((path.to_path_buf(), fd))),
            Err(Errno::ENOENT) => return Ok(None),
            Err(Errno::ELOOP) => {} // a symlink on the way: followed below
            Err(e) => return Err(io::Error::from(e)),
        }
        let fd = match openat2(self.image.fd(), target, in_root(OFlag::O_PATH)) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return Ok(None),
            Err(e) => return Err(io::Error::from(e)),
        };
        let image_root = match self.image_root.get() {
            Some(root) => root,
            None => {
                let root = real_path(self.image.fd())?;
                self.image_root.get_or_init(|| root)
            }
        };
        let real = real_path(&fd)?;
        let inside = real
            .strip_prefix(image_root)
            .map_err(|_| io::Error::other(format!("{} resolves outside the image", path.display())))?;
        Ok(Some((inside.to_path_buf(), fd)))
    }

    /// Make `target` at its landing in the top layer unless the image has it already (or has
    /// something of another type there, which the mount will then refuse). Returns whether the
    /// op is done here: a generated file written, or /dev laid out (its binds still to make).
    fn make(&mut self, target: &Target, landing: &Landing) -> io::Result<bool> {
        let (path, existing) = (&landing.path, landing.existing);
        let parent = || path.parent().unwrap_or(Path::new(""));
        match target {
            Target::Dir(_) => {
                if existing.is_none() {
                    self.dir(path)?;
                }
                Ok(false)
            }
            Target::File(_) => {
                // Anything but a file or a directory there is replaced, as in the image itself.
                if existing.is_none_or(|kind| kind != SFlag::S_IFREG && kind != SFlag::S_IFDIR) {
                    let dir = self.dir(parent())?;
                    let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_CLOEXEC;
                    match openat(
                        &dir,
                        file_name(path),
                        flags | OFlag::O_NOFOLLOW,
                        Mode::from_bits_truncate(0o644),
                    ) {
                        Ok(_) | Err(Errno::EEXIST) => {}
                        Err(e) => return Err(io::Error::from(e)),
                    }
                }
                Ok(false)
            }
            // Over the image's /dev: its entries and the layer's show together.
            Target::Dev(devices) => match existing {
                None | Some(SFlag::S_IFDIR) => {
                    dev::lay_out(&self.dir(path)?, devices)?;
                    Ok(true)
                }
                Some(_) => Ok(false),
            },
            Target::Contents(_, contents) => {
                if existing == Some(SFlag::S_IFDIR) {
                    return Ok(false);
                }
                let dir = self.dir(parent())?;
                let now = crate::unix_time() as i64;
                let mut buf = [0; 4096];
                Root::write_file(&dir, file_name(path), 0o644, now, &mut contents.as_bytes(), &mut buf)?;
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

fn file_type(mode: u32) -> SFlag {
    SFlag::from_bits_truncate(mode) & SFlag::S_IFMT
}

/// The path the kernel has for an open file.
fn real_path(fd: &OwnedFd) -> io::Result<PathBuf> {
    fs_err::read_link(super::mount::fd_path(fd))
}
