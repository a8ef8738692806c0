//! The container's /dev: the host's harmless nodes and the node's HPC devices (GPUs,
//! InfiniBand, AMD compute), each bound over a mount point of its own, a new devpts, /dev/shm
//! and the usual links. Nothing else of the host's /dev is there.
//!
//! Which devices a container gets is decided on the host side ([`host_devices`]), so that the
//! mount points can be laid out ahead ([`lay_out`]): in the image's top layer when the store
//! keeps it (the start then only binds), else in a tmpfs on /dev at each start.

use std::ffi::OsStr;
use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;

use nix::fcntl::{OFlag, openat};
use nix::sys::stat::{Mode, mkdirat};
use nix::unistd::symlinkat;
use serde::{Deserialize, Serialize};

/// Host device nodes every container gets.
const DEV_NODES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];
/// HPC devices a container gets when the node has them.
const HPC_DEVICES: [&str; 3] = ["infiniband", "kfd", "dri"];
/// The directories made in /dev: devpts and /dev/shm are mounted on them.
pub const DIRS: [&str; 2] = ["pts", "shm"];
/// The links every /dev has.
const LINKS: [(&str, &str); 5] = [
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
    ("ptmx", "pts/ptmx"),
];

/// A host device bound into the container's /dev.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Device {
    /// Its name under /dev (the same inside).
    pub name: String,
    /// A directory of devices (/dev/infiniband, /dev/dri), bound with what is below it.
    pub dir: bool,
}

/// The devices of this node a container gets: a look-up of each name it may take, and a listing
/// of /dev only on a node with the NVIDIA driver (its nodes are numbered). Ten look-ups take
/// ~15 µs of a start; listing a node's /dev (100+ entries) took ~60 µs (README, Performance).
pub fn host_devices() -> Vec<Device> {
    let mut found: Vec<(String, bool)> =
        DEV_NODES.iter().chain(&HPC_DEVICES).filter_map(|name| look_up(name)).collect();
    if look_up("nvidiactl").is_some() {
        found.extend(nvidia_nodes());
    }
    select(found)
}

/// Whether /dev has `name`, and whether it is a directory (not following a link, as a listing).
fn look_up(name: &str) -> Option<(String, bool)> {
    let stat = nix::sys::stat::lstat(&Path::new("/dev").join(name)).ok()?;
    Some((name.to_string(), stat.st_mode & libc::S_IFMT == libc::S_IFDIR))
}

/// The entries of /dev whose names start with "nvidia", each with whether it is a directory
/// (the entry's type comes with the listing: no stat).
fn nvidia_nodes() -> Vec<(String, bool)> {
    let Ok(entries) = fs_err::read_dir("/dev") else { return Vec::new() };
    let listed = entries.filter_map(Result::ok).filter_map(|entry| {
        let name = entry.file_name().into_string().ok()?;
        Some((name, entry.file_type().ok()?.is_dir()))
    });
    listed.filter(|(name, _)| name.starts_with("nvidia")).collect()
}

/// The devices a container gets of those found in /dev (name, is a directory), by name: the NVIDIA
/// nodes (nvidia0.., nvidiactl, nvidia-uvm, nvidia-caps/) only where the driver's control node is.
fn select(listed: Vec<(String, bool)>) -> Vec<Device> {
    let nvidia = listed.iter().any(|(name, _)| name == "nvidiactl");
    let wanted = |name: &str| {
        DEV_NODES.contains(&name) || HPC_DEVICES.contains(&name) || nvidia && name.starts_with("nvidia")
    };
    let mut devices: Vec<Device> =
        listed.into_iter().filter(|(name, _)| wanted(name)).map(|(name, dir)| Device { name, dir }).collect();
    devices.sort_by(|a, b| a.name.cmp(&b.name)); // one plan, one top layer, whatever the order
    devices
}

/// Lay out /dev in the directory `dev`: a mount point for each device, the devpts and /dev/shm
/// directories, and the links.
pub fn lay_out(dev: &OwnedFd, devices: &[Device]) -> io::Result<()> {
    for device in devices {
        let name = OsStr::new(&device.name);
        if device.dir {
            mkdirat(dev, name, Mode::from_bits_truncate(0o755))?;
        } else {
            let flags =
                OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
            drop(openat(dev, name, flags, Mode::from_bits_truncate(0o644))?);
        }
    }
    for dir in DIRS {
        mkdirat(dev, dir, Mode::from_bits_truncate(0o755))?;
    }
    for (name, target) in LINKS {
        symlinkat(Path::new(target), dev, name)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listing(names: &[(&str, bool)]) -> Vec<(String, bool)> {
        names.iter().map(|(n, d)| (n.to_string(), *d)).collect()
    }

    #[test]
    fn the_harmless_nodes_and_the_hpc_devices_the_node_has_are_taken() {
        let dev = listing(&[("zero", false), ("sda", false), ("null", false), ("infiniband", true)]);
        let names: Vec<_> = select(dev).into_iter().map(|d| (d.name, d.dir)).collect();
        assert_eq!(names, [("infiniband".into(), true), ("null".into(), false), ("zero".into(), false)]);
    }

    #[test]
    fn nvidia_nodes_come_with_the_drivers_control_node_only() {
        let gpu = [("nvidia0", false), ("nvidia-uvm", false), ("nvidia-caps", true)];
        assert!(select(listing(&gpu)).is_empty(), "no nvidiactl: no driver");
        let mut with_driver = gpu.to_vec();
        with_driver.push(("nvidiactl", false));
        let names: Vec<_> = select(listing(&with_driver)).into_iter().map(|d| d.name).collect();
        assert_eq!(names, ["nvidia-caps", "nvidia-uvm", "nvidia0", "nvidiactl"]);
    }
}
