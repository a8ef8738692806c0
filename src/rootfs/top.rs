//! Top layers kept beside the images, so that a warm start opens one small file instead of
//! laying its top layer out in a fresh tmpfs (a tmpfs mount and some 50 syscalls, 0.35 ms of
//! every start on a 2-core VM).
//!
//! ```text
//! <data>/v1/top/<key>/layer/   the overlay's top layer over the image (`sandbox::top::prepare`)
//!                    /done     which of the plan's ops the layer did, '1' or '0' each; every
//!                              running container holds it flock'ed shared
//! ```
//!
//! The key names the image and what the layer holds (`sandbox::top::key`): the mount targets
//! and the generated files' contents (passwd, group, hosts, resolv.conf). A layer is made in
//! staging and renamed into place, so `done` exists only in a complete one; jobs that start
//! together on a new key each make one and the first rename wins. `gc` removes the layers no
//! running container holds: the next start makes its layer again.

use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::sandbox::plan::MountOp;
use crate::sandbox::top;
use crate::store::{Mode, Store, StoreError, lock};
use crate::unpack::root::Root;

/// A top layer, held for this process's life (and its children's: PID 1 inherits it).
#[derive(Debug)]
pub struct CachedTop {
    pub layer: PathBuf,
    /// For each of the plan's ops, whether the layer did it (a generated file it holds).
    pub done: Vec<bool>,
    /// `done`, locked shared: `gc` leaves the layer alone while it is open here.
    _held: fs_err::File,
}

/// The top layer for `ops` over the image at `rootfs`, made first if no start made it yet.
pub fn open(store: &Store, rootfs: &Path, ops: &[MountOp]) -> Result<CachedTop, StoreError> {
    let entry = store.top_dir().join(top::key(ops, rootfs));
    // A gc may remove the layer between the open and the lock: then it is made again, once.
    for _ in 0..2 {
        if let Some(top) = hold(&entry, ops.len())? {
            return Ok(top);
        }
        make(store, &entry, rootfs, ops)?;
    }
    Err(StoreError::io("keep", &entry, io::Error::other("a concurrent `boxrun gc` removed it twice")))
}

/// Open and lock the layer at `entry`; None if there is none (or a gc has just removed it).
fn hold(entry: &Path, ops: usize) -> Result<Option<CachedTop>, StoreError> {
    let path = entry.join("done");
    let mut file = match fs_err::File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StoreError::io("open", &path, e)),
    };
    lock::lock_open(&file, Mode::Shared, || {})?;
    // ORDER: after the lock: a gc that held it before us has unlinked the file by now.
    if file.metadata().map_err(|e| StoreError::io("inspect", &path, e))?.nlink() == 0 {
        return Ok(None);
    }
    let mut flags = vec![0; ops + 1];
    let read = file.read(&mut flags).map_err(|e| StoreError::io("read", &path, e))?;
    let done = parse_done(&flags[..read], ops).ok_or_else(|| {
        StoreError::io("read", &path, io::Error::other("damaged: remove it with `boxrun gc`"))
    })?;
    Ok(Some(CachedTop { layer: entry.join("layer"), done, _held: file }))
}

fn parse_done(flags: &[u8], ops: usize) -> Option<Vec<bool>> {
    if flags.len() != ops {
        return None;
    }
    flags.iter().map(|flag| matches!(flag, b'0' | b'1').then_some(*flag == b'1')).collect()
}

/// Make the layer in staging and rename it to `entry`; another process's layer, renamed there
/// first, is as good.
fn make(store: &Store, entry: &Path, rootfs: &Path, ops: &[MountOp]) -> Result<(), StoreError> {
    // Shared with other users of the cache: gc, which clears staging, waits for this one.
    let _users = store.lock_users(|| eprintln!("boxrun: waiting for `boxrun gc` to finish"))?;
    let staging = store.data_staging_path("top");
    let made = lay_out(&staging, rootfs, ops).and_then(|()| {
        fs_err::create_dir_all(store.top_dir())?;
        fs_err::rename(&staging, entry)
    });
    match made {
        Ok(()) => Ok(()),
        Err(e) => {
            // Staging is discarded now; gc would also remove it.
            drop(fs_err::remove_dir_all(&staging));
            let raced = entry.join("done").exists();
            if raced { Ok(()) } else { Err(StoreError::io("make the top layer", entry, e)) }
        }
    }
}

/// `staging/layer`, laid out for `ops` over `rootfs`, and `staging/done`.
fn lay_out(staging: &Path, rootfs: &Path, ops: &[MountOp]) -> io::Result<()> {
    let layer = staging.join("layer");
    fs_err::create_dir(staging)?;
    fs_err::create_dir(&layer)?;
    let done = top::prepare(ops, &Root::open(rootfs)?, &Root::open(&layer)?)?;
    let flags: Vec<u8> = done.iter().map(|&done| if done { b'1' } else { b'0' }).collect();
    fs_err::write(staging.join("done"), flags)
}

/// Remove the top layer at `entry` unless a running container holds it; whether it was removed.
pub(crate) fn remove_if_idle(entry: &Path) -> Result<bool, StoreError> {
    let done = entry.join("done");
    // Held until the layer is gone: a start that opened `done` before sees it unlinked.
    let _held = match fs_err::File::open(&done) {
        Ok(file) => match file.file().try_lock() {
            Ok(()) => Some(file),
            // In use, or a file system without flock, where no one can tell: kept.
            Err(_) => return Ok(false),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => None, // damaged: no start can use it
        Err(e) => return Err(StoreError::io("open", &done, e)),
    };
    fs_err::remove_dir_all(entry).map_err(|e| StoreError::io("remove", entry, e))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::parse_done;

    #[test]
    fn done_flags_are_one_digit_per_op() {
        assert_eq!(parse_done(b"0110", 4), Some(vec![false, true, true, false]));
        assert_eq!(parse_done(b"011", 4), None, "too few");
        assert_eq!(parse_done(b"01x0", 4), None, "not a flag");
        assert_eq!(parse_done(b"", 0), Some(vec![]));
    }
}
