//! Namespaces: one `unshare`, then the process maps its own single uid and gid (as Charliecloud
//! does), so no helper process and no handshake is needed. The mount namespace is PID 1's alone
//! (`own_mounts`): the relay outside stays in the host's.

use std::io;

use nix::errno::Errno;
use nix::sched::{CloneFlags, unshare};
use thiserror::Error;

use super::plan::{Namespaces, RunPlan};

#[derive(Debug, Error)]
pub enum NsError {
    #[error("cannot create a user namespace: {reason}")]
    UserNamespaces { reason: String },
    #[error("cannot write {file}: {source}")]
    IdMap { file: &'static str, source: io::Error },
}

/// The flags for the relay's `unshare`: user always, PID unless the host's, the rest on request.
/// Not the mount namespace: see `own_mounts`.
pub fn flags(namespaces: Namespaces) -> CloneFlags {
    let mut flags = CloneFlags::CLONE_NEWUSER;
    if !namespaces.host_pid {
        flags |= CloneFlags::CLONE_NEWPID;
    }
    if namespaces.uts {
        flags |= CloneFlags::CLONE_NEWUTS;
    }
    if namespaces.ipc {
        flags |= CloneFlags::CLONE_NEWIPC;
    }
    if namespaces.net {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    flags
}

/// Enter the new namespaces and map the user. The caller must be single-threaded
/// (`unshare(CLONE_NEWUSER)` fails with EINVAL otherwise) and forks PID 1 next.
pub fn enter(plan: &RunPlan) -> Result<(), NsError> {
    unshare(flags(plan.namespaces)).map_err(|errno| NsError::UserNamespaces { reason: diagnose(errno) })?;
    // ORDER: "deny" must be written to setgroups before gid_map, or the unprivileged gid_map
    // write fails with EPERM (user_namespaces(7), "Interaction with setgroups").
    write_proc("/proc/self/setgroups", "deny")?;
    let (inside_uid, inside_gid) = if plan.fakeroot { (0, 0) } else { (plan.uid, plan.gid) };
    write_proc("/proc/self/uid_map", &format!("{inside_uid} {} 1", plan.uid))?;
    write_proc("/proc/self/gid_map", &format!("{inside_gid} {} 1", plan.gid))?;
    Ok(())
}

/// Give PID 1 a mount namespace of its own, owned by the user namespace `enter` made.
///
/// Why not in `enter`'s `unshare`: the last process to leave a mount namespace tears its mounts
/// down (the overlay, the tmpfs, every bind) in its exit, before its parent hears of it. With
/// the relay outside it, that is PID 1, which exits after the relay has the job's status and
/// no one waits for; inside it, the relay's exit paid 0.3 ms of teardown at every job's end.
pub fn own_mounts() -> Result<(), Errno> {
    unshare(CloneFlags::CLONE_NEWNS)
}

fn write_proc(file: &'static str, text: &str) -> Result<(), NsError> {
    fs_err::write(file, text).map_err(|source| NsError::IdMap { file, source })
}

/// Say which knob forbids user namespaces on this node, as precisely as the kernel lets us.
fn diagnose(errno: Errno) -> String {
    let sysctl = |path: &str| fs_err::read_to_string(path).ok().map(|v| v.trim().to_string());
    if sysctl("/proc/sys/user/max_user_namespaces").as_deref() == Some("0") {
        return "user namespaces are disabled on this node (sysctl user.max_user_namespaces = 0); ask your admins to raise it".into();
    }
    if sysctl("/proc/sys/kernel/unprivileged_userns_clone").as_deref() == Some("0") {
        return "unprivileged user namespaces are disabled on this node (sysctl kernel.unprivileged_userns_clone = 0); ask your admins to set it to 1".into();
    }
    match errno {
        Errno::ENOSPC => "the limit of user namespaces is reached (sysctl user.max_user_namespaces)".into(),
        Errno::EINVAL => "boxrun's start process had more than one thread (a bug: please report it)".into(),
        other => format!(
            "{other} (check sysctl user.max_user_namespaces and any seccomp or AppArmor policy of the node)"
        ),
    }
}

/// A mount refused inside our own user namespace usually means Ubuntu's AppArmor restriction.
pub fn restricted_hint() -> Option<&'static str> {
    let restricted = fs_err::read_to_string("/proc/sys/kernel/apparmor_restrict_unprivileged_userns")
        .is_ok_and(|v| v.trim() == "1");
    restricted.then_some(
        "unprivileged user namespaces are restricted by AppArmor on this node (sysctl kernel.apparmor_restrict_unprivileged_userns = 1); ask your admins for a boxrun AppArmor profile or to set it to 0",
    )
}
