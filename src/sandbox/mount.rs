//! Build the container's file system from the plan's [`MountOp`]s, then `pivot_root` into it.
//!
//! The image is the lower layer of an overlayfs, under a top layer in a private tmpfs that holds
//! the mount points and generated files the image lacks ([`super::top`]): the shared rootfs is
//! never touched, and the overlay, with no upper layer, is read-only. With `--writable-tmpfs`
//! the overlay has an upper layer in the tmpfs instead, where the mount points are made and the
//! job's writes go (and vanish at exit). Every target inside the new root is resolved with
//! `RESOLVE_IN_ROOT` and mounted on through its fd (as the working directory, or
//! `/proc/self/fd/N` for a file), so an image's symlinks cannot point a mount at the host.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, openat2};
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::unistd::{chdir, fchdir, pivot_root};
use thiserror::Error;

use super::dev::{self, Device};
use super::plan::{MountOp, RunPlan};
use crate::rootfs::top::CachedTop;
use crate::unpack::root::{Root, in_root};

/// `mount_setattr(2)` attributes (linux/mount.h).
const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const MOUNT_ATTR_NODEV: u64 = 0x4;
const AT_RECURSIVE: libc::c_uint = 0x8000;

/// Parts of /proc that reconfigure the kernel: read-only inside.
const PROC_READ_ONLY: [&str; 4] = ["sys", "sysrq-trigger", "irq", "bus"];

#[derive(Debug, Error)]
#[error("cannot {action} {path}: {source}{hint}")]
pub struct MountError {
    action: &'static str,
    path: PathBuf,
    source: io::Error,
    hint: String,
}

fn error(action: &'static str, path: &Path, source: impl Into<io::Error>) -> MountError {
    let source = source.into();
    let hint = match (source.raw_os_error(), super::ns::restricted_hint()) {
        (Some(libc::EPERM), Some(hint)) => format!("; {hint}"),
        _ => String::new(),
    };
    MountError { action, path: path.to_path_buf(), source, hint }
}

/// `/proc/self/fd/N`: how a mount call names a target we hold an fd for.
pub(super) fn fd_path(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// The new root under construction.
struct NewRoot {
    root: Root,
    path: PathBuf,
    /// The root is the unbindable mount itself (not a mount inside an unbindable tmpfs).
    unbindable: bool,
}

/// Set up every mount of the plan and make the new root `/`; `top` is the image's top layer
/// when the store keeps it (`plan.top_layers`).
pub fn build(plan: &RunPlan, top: Option<&CachedTop>) -> Result<(), MountError> {
    // ORDER: first make every mount private, so nothing below propagates to the host.
    mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>)
        .map_err(|e| error("make private the mounts of", Path::new("/"), e))?;
    let (new_root, done) = match top {
        Some(top) => NewRoot::mount_over_top(plan, top)?,
        None => NewRoot::mount_image(plan)?,
    };
    for (op, done) in plan.mounts.iter().zip(done) {
        new_root.apply(op, done)?;
    }
    // ORDER: read-only only after every mount point was created in the overlay.
    let mut attrs = MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV;
    if !plan.writable {
        attrs |= MOUNT_ATTR_RDONLY;
    }
    let image = Root::open(&new_root.path).map_err(|e| error("open", &new_root.path, e))?;
    set_attrs(image.fd(), Path::new("/"), attrs, false)?;
    new_root.pivot()
}

impl NewRoot {
    /// The image's overlay under its kept top layer, mounted on the scratch directory itself:
    /// no tmpfs, nothing to lay out. Returns, for each op of the plan, whether the top layer
    /// did it.
    fn mount_over_top(plan: &RunPlan, top: &CachedTop) -> Result<(NewRoot, Vec<bool>), MountError> {
        let path = plan.scratch.clone();
        let options = format!("lowerdir={}:{}", layer_path(&top.layer), layer_path(&plan.rootfs));
        mount_overlay(&path, &options)?;
        // ORDER: unbindable before any bind, as in `mount_image`; `pivot` makes it private.
        mount(None::<&str>, &path, None::<&str>, MsFlags::MS_UNBINDABLE, None::<&str>)
            .map_err(|e| error("make unbindable", &path, e))?;
        let root = Root::open(&path).map_err(|e| error("open", &path, e))?;
        Ok((NewRoot { root, path, unbindable: true }, top.done.clone()))
    }

    /// A private tmpfs on the scratch directory, holding the overlay's top layer (read-only
    /// root) or upper and work directories (`--writable-tmpfs`), and the mounted image at
    /// `root/`. Returns, for each op of the plan, whether the top layer already did it.
    fn mount_image(plan: &RunPlan) -> Result<(NewRoot, Vec<bool>), MountError> {
        let scratch = &plan.scratch;
        mount(
            Some("boxrun"),
            scratch,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=0755"),
        )
        .map_err(|e| error("mount a tmpfs on", scratch, e))?;
        let layers: &[&str] = if plan.writable { &["upper", "work"] } else { &["top"] };
        for dir in layers.iter().chain(&["root"]) {
            fs_err::create_dir(scratch.join(dir)).map_err(|e| error("create", &scratch.join(dir), e))?;
        }
        let path = scratch.join("root");
        let (options, done) = if plan.writable {
            let options = format!(
                "lowerdir={},upperdir={},workdir={}",
                layer_path(&plan.rootfs),
                layer_path(&scratch.join("upper")),
                layer_path(&scratch.join("work"))
            );
            (options, vec![false; plan.mounts.len()])
        } else {
            let top = scratch.join("top");
            let image = Root::open(&plan.rootfs).map_err(|e| error("open", &plan.rootfs, e))?;
            let top_root = Root::open(&top).map_err(|e| error("open", &top, e))?;
            let done = super::top::prepare(&plan.mounts, &image, &top_root)
                .map_err(|e| error("prepare the mount points in", &top, e))?;
            (format!("lowerdir={}:{}", layer_path(&top), layer_path(&plan.rootfs)), done)
        };
        mount_overlay(&path, &options)?;
        // ORDER: unbindable once the image is mounted (overlayfs refuses an unbindable parent)
        // and before any bind: the scratch directory usually lives under the user's home (the
        // cache), and a recursive bind of the home would copy the whole container tree into
        // itself; an unbindable mount, and everything below it, is pruned from such copies.
        mount(None::<&str>, scratch, None::<&str>, MsFlags::MS_UNBINDABLE, None::<&str>)
            .map_err(|e| error("make unbindable", scratch, e))?;
        let root = Root::open(&path).map_err(|e| error("open", &path, e))?;
        Ok((NewRoot { root, path, unbindable: false }, done))
    }

    /// Apply `op`; `done`: the top layer did what it could of it (all, but for /dev's binds).
    fn apply(&self, op: &MountOp, done: bool) -> Result<(), MountError> {
        match op {
            MountOp::Dev { private_shm, devices } => self.dev(*private_shm, devices, done),
            _ if done => Ok(()),
            MountOp::Proc => self.proc(),
            MountOp::Sys => {
                let target = self.dir(Path::new("/sys"))?;
                bind(Path::new("/sys"), &target, true)?;
                // The fd is the directory under the new mount: look the path up again.
                let mounted = self.dir(Path::new("/sys"))?;
                set_attrs(
                    &mounted,
                    Path::new("/sys"),
                    MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
                    true,
                )
            }
            MountOp::Tmpfs { dst, mode } => {
                let target = self.dir(dst)?;
                let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
                mount_on(&target, None, "tmpfs", Some("tmpfs"), flags, Some(&format!("mode={mode:o}")))
                    .map_err(|e| error("mount a tmpfs on", dst, e))
            }
            MountOp::Bind { src, dst, readonly, optional } => {
                if *optional && fs_err::metadata(src).is_err() {
                    return Ok(());
                }
                self.bind_host(src, dst, *readonly)
            }
            // What the top layer could not hold (under an earlier mount of the plan, or with
            // `--writable-tmpfs`, in the upper layer): written in place, in memory, no bind.
            MountOp::File { dst, contents } => {
                self.root.replace_file(relative(dst), contents.as_bytes()).map_err(|e| error("write", dst, e))
            }
        }
    }

    /// Bind a host path (file or directory) at `dst` inside the new root, nosuid, and nodev
    /// unless it comes from the host's /dev (a device bound with `-v` must stay usable).
    fn bind_host(&self, src: &Path, dst: &Path, readonly: bool) -> Result<(), MountError> {
        let is_dir = fs_err::metadata(src).map_err(|e| error("find the bind source", src, e))?.is_dir();
        let target = if is_dir { self.dir(dst)? } else { self.file(dst)? };
        bind(src, &target, true)?;
        let mut attrs = MOUNT_ATTR_NOSUID;
        if !src.starts_with("/dev") {
            attrs |= MOUNT_ATTR_NODEV;
        }
        if readonly {
            attrs |= MOUNT_ATTR_RDONLY;
        }
        // The fd is the mount point under the new mount: look the path up again (only look:
        // what is there now is the source, a device say, which must not be replaced).
        let mounted = if is_dir { self.dir(dst)? } else { self.mounted_file(dst)? };
        set_attrs(&mounted, dst, attrs, true)
    }

    fn dir(&self, dst: &Path) -> Result<OwnedFd, MountError> {
        self.root.dir(relative(dst), true).map_err(|e| error("create the mount point", dst, e))
    }

    fn file(&self, dst: &Path) -> Result<OwnedFd, MountError> {
        self.root.mountpoint_file(relative(dst)).map_err(|e| error("create the mount point", dst, e))
    }

    /// The file mounted at `dst`, as an `O_PATH` fd.
    fn mounted_file(&self, dst: &Path) -> Result<OwnedFd, MountError> {
        let how = in_root(OFlag::O_PATH | OFlag::O_NOFOLLOW);
        openat2(self.root.fd(), relative(dst), how).map_err(|e| error("open", dst, e))
    }

    /// A procfs of the new PID namespace; a bind of the host's where the host hides parts of
    /// its /proc (the kernel's mount_too_revealing check, e.g. inside a container) or where
    /// the job stays in the host's PID namespace (a user namespace may not mount its procfs).
    fn proc(&self) -> Result<(), MountError> {
        let target = self.dir(Path::new("/proc"))?;
        let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
        match mount_on(&target, None, "proc", Some("proc"), flags, None) {
            Ok(()) => {}
            Err(Errno::EPERM) => bind(Path::new("/proc"), &target, true)?,
            Err(e) => return Err(error("mount /proc at", Path::new("/proc"), e)),
        }
        // Kernel knobs stay read-only even to a --fakeroot job: /proc/sys and friends are
        // bound over themselves and made read-only, as docker and bwrap do.
        // The procfs was just mounted here, by us: its paths lead to nothing an image placed,
        // and nothing is mounted below them. Two calls each: a bind, then its read-only
        // remount, keeping the procfs's own flags (a remount may not drop them in a user
        // namespace). One the kernel lacks is skipped.
        // From the procfs's root as the working directory, each knob's path is its name.
        let proc = self.path.join("proc");
        chdir(&proc).map_err(|e| error("enter", &proc, e))?;
        let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
        for knob in PROC_READ_ONLY {
            match mount(Some(knob), knob, None::<&str>, MsFlags::MS_BIND, None::<&str>) {
                Ok(()) => {}
                Err(Errno::ENOENT) => continue,
                Err(e) => return Err(error("bind-mount", &proc.join(knob), e)),
            }
            let read_only = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY | flags;
            mount(None::<&str>, knob, None::<&str>, read_only, None::<&str>)
                .map_err(|e| error("make read-only", &Path::new("/proc").join(knob), e))?;
        }
        Ok(())
    }

    /// /dev: the host's `devices`, each bound over its mount point; a devpts; /dev/shm. The
    /// mount points and links are the top layer's (`laid_out`), or made now in a fresh tmpfs
    /// on /dev, opened once: either way they hold nothing an image or a user could have placed.
    fn dev(&self, private_shm: bool, devices: &[Device], laid_out: bool) -> Result<(), MountError> {
        if !laid_out {
            let dev = self.dir(Path::new("/dev"))?;
            let flags = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC;
            mount_on(&dev, None, "tmpfs", Some("tmpfs"), flags, Some("mode=0755"))
                .map_err(|e| error("mount a tmpfs on", Path::new("/dev"), e))?;
        }
        let dev_dir =
            self.root.dir(Path::new("dev"), false).map_err(|e| error("open", Path::new("/dev"), e))?;
        if !laid_out {
            dev::lay_out(&dev_dir, devices).map_err(|e| error("lay out", Path::new("/dev"), e))?;
        }
        for device in devices {
            let host = Path::new("/dev").join(&device.name);
            // The host's flags stay (its /dev is nosuid); nodev would make the devices useless.
            let flags = if device.dir { MsFlags::MS_BIND | MsFlags::MS_REC } else { MsFlags::MS_BIND };
            match mount_on(&dev_dir, Some(OsStr::new(&device.name)), &host, None, flags, None) {
                Ok(()) => {}
                // Gone from the host since the plan listed it: the container goes without.
                Err(Errno::ENOENT) => {}
                Err(e) => return Err(error("bind-mount", &host, e)),
            }
        }
        self.devpts()?;
        if private_shm {
            self.apply(&MountOp::Tmpfs { dst: "/dev/shm".into(), mode: 0o1777 }, false)
        } else {
            self.bind_host(Path::new("/dev/shm"), Path::new("/dev/shm"), false)
        }
    }

    /// A new devpts instance (its own pty numbers); the host's if the kernel refuses one.
    fn devpts(&self) -> Result<(), MountError> {
        let pts = self.dir(Path::new("/dev/pts"))?;
        let flags = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC;
        let options = "newinstance,ptmxmode=0666,mode=0620";
        match mount_on(&pts, None, "devpts", Some("devpts"), flags, Some(options)) {
            Ok(()) => Ok(()),
            Err(_) => bind(Path::new("/dev/pts"), &pts, true),
        }
    }

    /// ORDER: pivot_root(".", ".") stacks the old root under the new one; unmounting "."
    /// with MNT_DETACH then drops the host's tree (pivot_root(2), "NOTES").
    fn pivot(self) -> Result<(), MountError> {
        chdir(&self.path).map_err(|e| error("enter", &self.path, e))?;
        pivot_root(".", ".").map_err(|e| error("pivot_root into", &self.path, e))?;
        umount2(".", MntFlags::MNT_DETACH)
            .map_err(|e| error("detach the host's root from", &self.path, e))?;
        chdir("/").map_err(|e| error("enter", Path::new("/"), e))?;
        if self.unbindable {
            // The job's root may be bound again (a nested container binds parts of it).
            mount(None::<&str>, "/", None::<&str>, MsFlags::MS_PRIVATE, None::<&str>)
                .map_err(|e| error("make private", Path::new("/"), e))?;
        }
        Ok(())
    }
}

/// Mount the image's overlay at `path`. userxattr: the overlay keeps its own metadata in
/// user.* xattrs, which an unprivileged mount may write; kernels before 5.11 lack it and get
/// the plain options.
fn mount_overlay(path: &Path, options: &str) -> Result<(), MountError> {
    let overlay =
        |options: &str| mount(Some("overlay"), path, Some("overlay"), MsFlags::empty(), Some(options));
    overlay(&format!("{options},userxattr"))
        .or_else(|_| overlay(options))
        .map_err(|e| error("mount the image (overlayfs) at", path, e))
}

/// A path in overlayfs's options, where `,` separates options and `:` layers: both, and the
/// backslash that escapes them, are escaped (a cache under `/scratch/a,b` still mounts).
fn layer_path(path: &Path) -> String {
    let mut escaped = String::new();
    for c in path.to_string_lossy().chars() {
        if matches!(c, ',' | ':' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

/// An absolute container path as a path relative to the new root.
fn relative(path: &Path) -> &Path {
    path.strip_prefix("/").unwrap_or(path)
}

fn bind(src: &Path, target: &OwnedFd, recursive: bool) -> Result<(), MountError> {
    let mut flags = MsFlags::MS_BIND;
    if recursive {
        flags |= MsFlags::MS_REC;
    }
    mount_on(target, None, src, None, flags, None).map_err(|e| error("bind-mount", src, e))
}

/// Mount `source` on the directory `dir` (from a lookup inside the new root), or on its entry
/// `name`, with `dir` as the working directory: "." is the mount point `/proc/self/fd/N` names,
/// found with no path to walk. The magic link costs a walk through procfs at each mount, where
/// PID 1, a new process, has no dentries yet (its pid, its fd directory, N): -0.04 to -0.06 ms
/// of a warm start (500 paired rounds). A file mount point (a bind over a file) has no
/// directory to enter: it is named through the magic link.
fn mount_on<S: nix::NixPath + ?Sized>(
    dir: &OwnedFd,
    name: Option<&OsStr>,
    source: &S,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> nix::Result<()> {
    match (fchdir(dir), name) {
        (Ok(()), name) => mount(Some(source), name.unwrap_or(OsStr::new(".")), fstype, flags, data),
        (Err(Errno::ENOTDIR), None) => mount(Some(source), &fd_path(dir), fstype, flags, data),
        (Err(e), _) => Err(e),
    }
}

/// Add mount attributes (read-only, nosuid, nodev) to the mount `fd` is the root of, and with
/// `recursive` to every mount below it, with mount_setattr(2) (Linux 5.12). Older kernels get
/// a remount of the top mount, keeping the flags the kernel locked on it. `name` is for errors.
fn set_attrs(fd: &OwnedFd, name: &Path, attrs: u64, recursive: bool) -> Result<(), MountError> {
    #[repr(C)]
    struct MountAttr {
        attr_set: u64,
        attr_clr: u64,
        propagation: u64,
        userns_fd: u64,
    }
    let attr = MountAttr { attr_set: attrs, attr_clr: 0, propagation: 0, userns_fd: 0 };
    let flags = libc::AT_EMPTY_PATH as libc::c_uint | if recursive { AT_RECURSIVE } else { 0 };
    // SAFETY: mount_setattr reads `size` bytes of `attr`, a live repr(C) struct, and the empty
    // NUL-terminated path; it writes no memory of ours.
    let result = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            c"".as_ptr(),
            flags,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if result == 0 {
        return Ok(());
    }
    match Errno::last() {
        Errno::ENOSYS => remount(&fd_path(fd), name, attrs),
        e => Err(error("set mount flags on", name, e)),
    }
}

fn remount(path: &Path, name: &Path, attrs: u64) -> Result<(), MountError> {
    let stat = nix::sys::statvfs::statvfs(path).map_err(|e| error("inspect", name, e))?;
    let locked = stat.flags();
    let mut flags = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    use nix::sys::statvfs::FsFlags;
    for (fs, ms) in [(FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC), (FsFlags::ST_RDONLY, MsFlags::MS_RDONLY)] {
        if locked.contains(fs) {
            flags |= ms;
        }
    }
    if attrs & MOUNT_ATTR_RDONLY != 0 {
        flags |= MsFlags::MS_RDONLY;
    }
    mount(None::<&str>, path, None::<&str>, flags, None::<&str>).map_err(|e| error("remount", name, e))
}
