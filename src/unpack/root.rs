//! Writing inside a rootfs directory without ever leaving it.
//!
//! Every operation starts from the rootfs's directory fd: the parent of the entry is resolved
//! with `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`, so an absolute symlink such as
//! Debian's `var/run -> /run` leads to the image's `/run`, `..` stops at the image's root and
//! `/proc/self/root`-style links are refused; the final component is then created, replaced or
//! removed with `*at` calls on that parent fd that never follow it (`O_NOFOLLOW`, `O_EXCL`,
//! `unlinkat`, `linkat` without `AT_SYMLINK_FOLLOW`). Nothing here takes a host path from a layer.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat, openat2};
use nix::sys::stat::{FileStat, Mode, SFlag, fchmod, fstatat, futimens, mkdirat};
use nix::sys::time::TimeSpec;
use nix::unistd::{LinkatFlags, UnlinkatFlags, linkat, symlinkat, unlinkat};

use super::entry::ImagePath;

/// Directories stay owner-writable while a layer may still add to them (modes are applied last).
const WORKING_DIR_MODE: u32 = 0o700;
/// The buffer a caller of [`Root::write_file`] should reuse across files.
pub const COPY_BUFFER: usize = 256 * 1024;

/// An open rootfs directory.
pub struct Root {
    fd: OwnedFd,
    path: PathBuf,
}

/// How every path inside a rootfs is resolved: within it, and never through a magic link.
pub const IN_ROOT: ResolveFlag = ResolveFlag::RESOLVE_IN_ROOT.union(ResolveFlag::RESOLVE_NO_MAGICLINKS);

/// `openat2` options for `flags` (and O_CLOEXEC), resolved [`IN_ROOT`].
pub fn in_root(flags: OFlag) -> OpenHow {
    OpenHow::new().flags(flags | OFlag::O_CLOEXEC).resolve(IN_ROOT)
}

fn io(errno: Errno) -> io::Error {
    io::Error::from(errno)
}

impl Root {
    pub fn open(path: &Path) -> io::Result<Root> {
        let fd = openat(
            nix::fcntl::AT_FDCWD,
            path,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(io)?;
        Ok(Root { fd, path: path.to_path_buf() })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The root directory's own fd.
    pub fn fd(&self) -> &OwnedFd {
        &self.fd
    }

    /// Open the directory `dir` (a cleaned image path) inside the root; with `create`, make
    /// missing components (mode 0700 until the final modes are applied).
    pub fn dir(&self, dir: &Path, create: bool) -> io::Result<OwnedFd> {
        let how = || in_root(OFlag::O_PATH | OFlag::O_DIRECTORY);
        let target = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
        match openat2(&self.fd, target, how()) {
            Err(Errno::ENOENT) if create => {}
            result => return result.map_err(io),
        }
        // Slow path (a layer without entries for its parent directories): walk from the root,
        // creating what is missing. Each prefix is resolved from the root again, so symlinks
        // met on the way still resolve inside it.
        let mut parent = openat2(&self.fd, ".", how()).map_err(io)?;
        let mut prefix = PathBuf::new();
        for component in dir.iter() {
            prefix.push(component);
            match mkdirat(&parent, component, Mode::from_bits_truncate(WORKING_DIR_MODE)) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => return Err(io(e)),
            }
            parent = openat2(&self.fd, &prefix, how()).map_err(io)?;
        }
        Ok(parent)
    }

    /// A regular file at `path` to mount over: created if missing, and a symlink there (say
    /// `/etc/resolv.conf -> ../run/...`) replaced by an empty file. Returns an `O_PATH` fd.
    pub fn mountpoint_file(&self, path: &Path) -> io::Result<OwnedFd> {
        let (dir, name) = match (path.parent(), path.file_name()) {
            (Some(dir), Some(name)) => (dir, name),
            _ => return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a file path")),
        };
        let parent = self.dir(dir, true)?;
        match Root::lstat(&parent, name)? {
            Some(stat) if SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT == SFlag::S_IFREG => {}
            Some(stat) if SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR => {
                return Err(io::Error::new(
                    io::ErrorKind::IsADirectory,
                    format!("{} is a directory", path.display()),
                ));
            }
            existing => {
                if existing.is_some() {
                    unlinkat(&parent, name, UnlinkatFlags::NoRemoveDir).map_err(io)?;
                }
                let flags =
                    OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
                drop(openat(&parent, name, flags, Mode::from_bits_truncate(0o644)).map_err(io)?);
            }
        }
        openat(&parent, name, OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC, Mode::empty()).map_err(io)
    }

    /// Replace whatever is at `path` with a regular file holding `contents` (mode 0644).
    pub fn replace_file(&self, path: &Path, contents: &[u8]) -> io::Result<()> {
        let (dir, name) = match (path.parent(), path.file_name()) {
            (Some(dir), Some(name)) => (dir, name),
            _ => return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a file path")),
        };
        let parent = self.dir(dir, true)?;
        let now = crate::unix_time() as i64;
        Root::write_file(&parent, name, 0o644, now, &mut &contents[..], &mut [0u8; 4096]).map(drop)
    }

    /// Remove whatever `name` is in `parent` (a whole tree for a directory); absent is fine.
    pub fn remove(parent: &OwnedFd, name: &OsStr) -> io::Result<()> {
        match unlinkat(parent, name, UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(Errno::EISDIR) => Root::remove_dir_tree(parent, name),
            Err(e) => Err(io(e)),
        }
    }

    fn remove_dir_tree(parent: &OwnedFd, name: &OsStr) -> io::Result<()> {
        let dir = openat(
            parent,
            name,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(io)?;
        // A read-only directory from the image cannot be emptied until we may write to it.
        fchmod(&dir, Mode::from_bits_truncate(WORKING_DIR_MODE)).map_err(io)?;
        for child in Root::children(&dir)? {
            Root::remove(&dir, &child)?;
        }
        unlinkat(parent, name, UnlinkatFlags::RemoveDir).map_err(io)
    }

    /// The names in a directory (without `.` and `..`).
    pub fn children(dir: &OwnedFd) -> io::Result<Vec<std::ffi::OsString>> {
        use std::os::unix::ffi::OsStrExt;
        let listing =
            openat(dir, ".", OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())
                .map_err(io)?;
        let mut listing = nix::dir::Dir::from_fd(listing).map_err(io)?;
        let mut names = Vec::new();
        for entry in listing.iter() {
            let name = entry.map_err(io)?.file_name().to_bytes().to_vec();
            if name != b"." && name != b".." {
                names.push(OsStr::from_bytes(&name).to_owned());
            }
        }
        Ok(names)
    }

    /// `lstat` of `name` in `parent`, `None` if absent.
    pub fn lstat(parent: &OwnedFd, name: &OsStr) -> io::Result<Option<FileStat>> {
        match fstatat(parent, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(stat) => Ok(Some(stat)),
            Err(Errno::ENOENT) => Ok(None),
            Err(e) => Err(io(e)),
        }
    }

    /// Is `name` in `parent` a directory (not a symlink to one)?
    pub fn is_dir(parent: &OwnedFd, name: &OsStr) -> io::Result<bool> {
        let mode = Root::lstat(parent, name)?.map(|s| SFlag::from_bits_truncate(s.st_mode) & SFlag::S_IFMT);
        Ok(mode == Some(SFlag::S_IFDIR))
    }

    /// Make `name` a directory in `parent`, replacing anything else there; an existing
    /// directory (and what lower layers put in it) stays.
    pub fn mkdir(parent: &OwnedFd, name: &OsStr) -> io::Result<()> {
        match mkdirat(parent, name, Mode::from_bits_truncate(WORKING_DIR_MODE)) {
            Ok(()) => Ok(()),
            Err(Errno::EEXIST) => {
                if Root::is_dir(parent, name)? {
                    return Ok(());
                }
                Root::remove(parent, name)?;
                mkdirat(parent, name, Mode::from_bits_truncate(WORKING_DIR_MODE)).map_err(io)
            }
            Err(e) => Err(io(e)),
        }
    }

    /// Write a regular file from `content`, replacing what was there. Returns bytes written.
    pub fn write_file(
        parent: &OwnedFd,
        name: &OsStr,
        mode: u32,
        mtime: i64,
        content: &mut dyn Read,
        buf: &mut [u8],
    ) -> io::Result<u64> {
        Root::remove(parent, name)?;
        let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = openat(parent, name, flags, Mode::from_bits_truncate(0o600)).map_err(io)?;
        let mut file = File::from(fd);
        let written = copy(content, &mut file, buf)?;
        fchmod(file.as_fd(), Mode::from_bits_truncate(mode)).map_err(io)?;
        set_mtime(file.as_fd(), mtime)?;
        Ok(written)
    }

    pub fn symlink(parent: &OwnedFd, name: &OsStr, target: &Path) -> io::Result<()> {
        Root::remove(parent, name)?;
        symlinkat(target, parent, name).map_err(io)
    }

    /// Hard-link `name` in `parent` to the image path `target` (resolved inside the root).
    pub fn hardlink(&self, parent: &OwnedFd, name: &OsStr, target: &ImagePath) -> io::Result<()> {
        let Some((target_dir, target_name)) = target.split() else {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "a hard link to the root directory"));
        };
        let target_parent = self.dir(target_dir, false)?;
        if Root::lstat(&target_parent, target_name)?.is_none() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("its target {target} is not in the image"),
            ));
        }
        Root::remove(parent, name)?;
        // No AT_SYMLINK_FOLLOW: a link to a symlink links the symlink itself, as tar does.
        linkat(&target_parent, target_name, parent, name, LinkatFlags::empty()).map_err(io)
    }

    /// Give a directory its final mode (always owner-rwx, so the user can remove the tree)
    /// and mtime. A path that is no longer a directory (a later layer replaced it) is skipped.
    pub fn finish_dir(&self, dir: &ImagePath, mode: u32, mtime: i64) -> io::Result<()> {
        let target = if dir.is_root() { Path::new(".") } else { dir.as_path() };
        let fd = match openat2(
            &self.fd,
            target,
            in_root(OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW),
        ) {
            Ok(fd) => fd,
            Err(Errno::ENOENT | Errno::ELOOP | Errno::ENOTDIR) => return Ok(()),
            Err(e) => return Err(io(e)),
        };
        fchmod(&fd, Mode::from_bits_truncate(mode | 0o700)).map_err(io)?;
        set_mtime(fd.as_fd(), mtime)
    }
}

/// Read small text files of an image (e.g. `etc/passwd`, `etc/group`), resolving each path
/// inside the rootfs, which is opened once for all of them; `None` for one that does not exist
/// or cannot be read as text.
pub fn read_files<const N: usize>(rootfs: &Path, paths: [&str; N]) -> [Option<String>; N] {
    let mut texts = [const { None }; N];
    let Ok(root) = Root::open(rootfs) else { return texts };
    let read = |path: &str| {
        let fd = openat2(&root.fd, path, in_root(OFlag::O_RDONLY | OFlag::O_NOCTTY)).ok()?;
        let mut text = String::new();
        File::from(fd).take(1 << 20).read_to_string(&mut text).ok()?;
        Some(text)
    };
    for (text, path) in texts.iter_mut().zip(paths) {
        *text = read(path);
    }
    texts
}

fn set_mtime(fd: std::os::fd::BorrowedFd<'_>, mtime: i64) -> io::Result<()> {
    let mtime = TimeSpec::new(mtime, 0);
    futimens(fd, &TimeSpec::UTIME_OMIT, &mtime).map_err(io)
}

/// Copy file content, seeking over all-zero chunks instead of writing them: zero-filled files
/// (and decompression bombs made of zeros) take no disk space, as with `cp --sparse=auto`.
fn copy(reader: &mut dyn Read, writer: &mut File, buf: &mut [u8]) -> io::Result<u64> {
    let mut total = 0;
    let mut ends_in_hole = false;
    loop {
        let n = match reader.read(buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let chunk = &buf[..n];
        ends_in_hole = chunk.iter().all(|&b| b == 0);
        if ends_in_hole {
            writer.seek(SeekFrom::Current(n as i64))?;
        } else {
            writer.write_all(chunk)?;
        }
        total += n as u64;
    }
    if ends_in_hole {
        writer.set_len(total)?; // a trailing hole needs the length set explicitly
    }
    Ok(total)
}
