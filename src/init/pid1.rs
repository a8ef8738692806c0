//! PID 1 of the container: it builds the container's file system in a mount namespace of its
//! own, tells the job (waiting for it) that it is ready, locks itself down and then only reaps
//! the orphans the job leaves, until the relay's exit kills it (its parent-death signal).

use std::os::fd::{AsFd, OwnedFd};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::prctl;
use nix::sys::signal::{SigSet, Signal};

use super::fail;
use super::wait::Waiter;
use crate::EXIT_BOXRUN_FAILED;
use crate::rootfs::top::CachedTop;
use crate::sandbox::plan::RunPlan;
use crate::sandbox::{lockdown, mount, ns};

/// Build the container, then reap; never returns.
pub fn run(plan: &RunPlan, top: Option<&CachedTop>, parent_alive: OwnedFd, ready: OwnedFd) -> ! {
    // ORDER: the parent-death signal before anything else, then the check that the parent
    // did not die before it was set (its end of the pipe would be closed).
    prctl::set_pdeathsig(Signal::SIGKILL).unwrap_or_else(|e| fail(format!("prctl(PR_SET_PDEATHSIG): {e}")));
    let mut poll_fds = [PollFd::new(parent_alive.as_fd(), PollFlags::POLLIN)];
    if poll(&mut poll_fds, PollTimeout::ZERO).unwrap_or(0) > 0 {
        std::process::exit(EXIT_BOXRUN_FAILED);
    }
    ns::own_mounts().unwrap_or_else(|e| fail(format!("cannot create a mount namespace: {e}")));
    mount::build(plan, top).unwrap_or_else(|e| fail(e));
    if let Some(hostname) = &plan.hostname {
        nix::unistd::sethostname(hostname).unwrap_or_else(|e| fail(format!("sethostname: {e}")));
    }
    if plan.namespaces.net {
        crate::sandbox::net::loopback_up().unwrap_or_else(|e| fail(e));
    }
    // ORDER: the job joins the mount namespace only once it is complete.
    let _ = nix::unistd::write(&ready, &[1]);
    drop(ready);
    // PID 1 needs no capability at all to reap, whatever the job keeps (`--fakeroot`).
    let none = caps::CapsHashSet::new();
    lockdown::bound(&none)
        .and_then(|()| lockdown::apply(&none, Some(&plan.seccomp)))
        .unwrap_or_else(|e| fail(e));
    reap_orphans()
}

/// Reap every child: the job's orphans re-parent to the PID namespace's init. PID 1 installs no
/// signal handler, so no signal from the job or from outside the namespace reaches it but the
/// SIGKILL of its parent's death (pid_namespaces(7)).
fn reap_orphans() -> ! {
    let mut waiter = Waiter::new(&SigSet::from(Signal::SIGCHLD));
    loop {
        waiter.next();
        super::reap(None);
    }
}
