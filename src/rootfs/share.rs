//! Identical files shared between the rootfs trees of images built on the same base layers.
//!
//! The blobs of a shared base layer are stored once; its files, unpacked into each image's
//! rootfs, would be stored once per image. So once a new rootfs is unpacked in staging, every
//! regular file of it that an already-built sibling rootfs has at the same path, with the same
//! mode, owner, size and mtime and the same bytes, is replaced by a hard link to the sibling's.
//! A rootfs is never changed after it is built (jobs see it read-only, or as an overlay's lower
//! layer whose writes go to a tmpfs), so a link is as good as a copy, and removing either tree
//! (`rmi` + `gc`) leaves the other's files in place.
//!
//! Metadata alone is not proof: a later layer may rewrite a file with the same size and mtime, so
//! the bytes are compared too. Both trees are walked one directory fd at a time with
//! `O_NOFOLLOW`, and a name that is a symlink in either tree is never followed, so nothing outside
//! the two trees is read or linked.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat, renameat};
use nix::sys::stat::{FileStat, Mode, SFlag, fstat, futimens};
use nix::sys::time::TimeSpec;
use nix::unistd::linkat;

use crate::unpack::root::Root;

/// Deeper trees are left unshared below this depth: each level holds two directory fds.
const MAX_DEPTH: usize = 128;
/// The name a link is made under before it is renamed over the file it replaces.
const LINK_NAME: &str = ".boxrun-share.tmp";
const COMPARE_BUFFER: usize = 128 * 1024;

/// What [`link_identical`] shared.
#[derive(Debug, Default, PartialEq)]
pub struct Shared {
    pub files: u64,
    /// Bytes on disk the links saved.
    pub bytes: u64,
}

/// Replace each file of the rootfs `new` (in staging, written by this process) that `sibling`
/// holds identically by a hard link to the sibling's.
pub fn link_identical(new: &Path, sibling: &Path) -> io::Result<Shared> {
    let mut walk =
        Walk { shared: Shared::default(), buffers: (vec![0; COMPARE_BUFFER], vec![0; COMPARE_BUFFER]) };
    let new = open_dir(None, new.as_os_str())?;
    let sibling = open_dir(None, sibling.as_os_str())?;
    walk.dir(&new, &sibling, 0)?;
    Ok(walk.shared)
}

struct Walk {
    shared: Shared,
    buffers: (Vec<u8>, Vec<u8>),
}

impl Walk {
    /// Share what can be shared in the directory `new` with its counterpart `sibling`.
    fn dir(&mut self, new: &OwnedFd, sibling: &OwnedFd, depth: usize) -> io::Result<()> {
        let times = fstat(new).map_err(io::Error::from)?;
        let mut linked = false;
        for name in Root::children(new)? {
            let Some(stat) = Root::lstat(new, &name)? else { continue };
            match SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT {
                SFlag::S_IFDIR if depth < MAX_DEPTH => {
                    // A sibling without this directory (or with a symlink there) shares nothing in it.
                    let Ok(sibling_dir) = open_dir(Some(sibling), &name) else { continue };
                    self.dir(&open_dir(Some(new), &name)?, &sibling_dir, depth + 1)?;
                }
                SFlag::S_IFREG => linked |= self.file(new, sibling, &name, &stat)?,
                _ => {}
            }
        }
        if linked {
            // The links changed the directory's mtime, which the image set.
            futimens(
                new,
                &TimeSpec::new(times.st_atime, times.st_atime_nsec),
                &TimeSpec::new(times.st_mtime, times.st_mtime_nsec),
            )
            .map_err(io::Error::from)?;
        }
        Ok(())
    }

    /// Link the regular file `name` of `new` to the sibling's if they are identical; whether it
    /// did.
    fn file(&mut self, new: &OwnedFd, sibling: &OwnedFd, name: &OsStr, stat: &FileStat) -> io::Result<bool> {
        // A file with other links in its own tree keeps them: linking one of its names
        // elsewhere would split them.
        if stat.st_nlink != 1 || stat.st_size == 0 || !self.is_identical(new, sibling, name, stat)? {
            return Ok(false);
        }
        link(sibling, new, name)?;
        self.shared.files += 1;
        self.shared.bytes += stat.st_blocks as u64 * 512;
        Ok(true)
    }

    /// Does `sibling` hold `name` as a regular file with the same metadata and bytes?
    fn is_identical(
        &mut self,
        new: &OwnedFd,
        sibling: &OwnedFd,
        name: &OsStr,
        stat: &FileStat,
    ) -> io::Result<bool> {
        let Some(other) = Root::lstat(sibling, name)? else { return Ok(false) };
        let same_metadata = other.st_mode == stat.st_mode
            && other.st_uid == stat.st_uid
            && other.st_gid == stat.st_gid
            && other.st_size == stat.st_size
            && other.st_mtime == stat.st_mtime
            && other.st_mtime_nsec == stat.st_mtime_nsec
            && (other.st_dev, other.st_ino) != (stat.st_dev, stat.st_ino);
        if !same_metadata {
            return Ok(false);
        }
        // A file its owner may not read (mode 0000) stays unshared.
        let (Ok(a), Ok(b)) = (open_file(new, name), open_file(sibling, name)) else { return Ok(false) };
        same_bytes(a, b, &mut self.buffers)
    }
}

fn same_bytes(mut a: File, mut b: File, (buf_a, buf_b): &mut (Vec<u8>, Vec<u8>)) -> io::Result<bool> {
    loop {
        let n = read_full(&mut a, buf_a)?;
        if read_full(&mut b, &mut buf_b[..n])? != n || buf_a[..n] != buf_b[..n] {
            return Ok(false);
        }
        if n < buf_a.len() {
            // `a` ended: the same only if `b` ends here too.
            return Ok(read_full(&mut b, &mut buf_b[..1])? == 0);
        }
    }
}

/// Read until `buf` is full or the file ends; how many bytes were read.
fn read_full(file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Replace `name` in `new` by a link to `name` in `sibling`: link under a spare name, then
/// rename over, so the staging tree holds one or the other at every moment.
fn link(sibling: &OwnedFd, new: &OwnedFd, name: &OsStr) -> io::Result<()> {
    // linkat without AT_SYMLINK_FOLLOW links the name itself, never what it might point to.
    linkat(sibling, name, new, LINK_NAME, AtFlags::empty()).map_err(io::Error::from)?;
    renameat(new, LINK_NAME, new, name).map_err(|e| {
        let _ = nix::unistd::unlinkat(new, LINK_NAME, nix::unistd::UnlinkatFlags::NoRemoveDir);
        io::Error::from(e)
    })
}

fn open_dir(parent: Option<&OwnedFd>, name: &OsStr) -> io::Result<OwnedFd> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    match parent {
        Some(parent) => openat(parent, name, flags, Mode::empty()),
        None => openat(nix::fcntl::AT_FDCWD, name, flags, Mode::empty()),
    }
    .map_err(io::Error::from)
}

fn open_file(dir: &OwnedFd, name: &OsStr) -> Result<File, Errno> {
    openat(dir, name, OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC, Mode::empty()).map(File::from)
}
