//! The job's process: the relay's own child, cloned while PID 1 builds the container's file
//! system. It records the container for `boxrun ps` and drops its bounding set meanwhile, waits
//! for PID 1's word that the file system is ready, joins PID 1's mount namespace, locks itself
//! down and execs the command.
//!
//! Why the relay's child and not PID 1's: PID 1 spawned the job only once its mounts were done,
//! and locked itself down first for the job to inherit, all on the start's critical path; here
//! the clone and the ~40 `prctl` calls of the bounding set happen while PID 1 mounts. And when
//! the job ends, the relay, its parent, hears of it at once, where PID 1 had to be woken, reap
//! the job and pass its status on. Paired warm starts: -0.075 and -0.079 ms (2000 rounds each).

use std::ffi::CString;
use std::os::fd::{FromRawFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::{OFlag, open};
use nix::sched::{CloneFlags, setns};
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, SigmaskHow, Signal, sigaction, sigprocmask};
use nix::sys::stat::Mode;
use nix::unistd::{ForkResult, Pid, execve, fork};

use super::record::{Recorded, Recording};
use crate::EXIT_BOXRUN_FAILED;
use crate::sandbox::lockdown;
use crate::sandbox::plan::RunPlan;

/// Start the job. In a new PID namespace it is that namespace's PID 2: the relay's children
/// after PID 1 are born in it. `ready` is PID 1's pipe (end of file if PID 1 failed). The job's
/// process writes the container's `recording` first (see `record`), and is told the name it
/// was recorded under; the record written is the relay's to remove.
///
/// The job is cloned with the relay's memory and the relay suspended until the job's exec
/// (`CLONE_VM | CLONE_VFORK`, as glibc's posix_spawn does): a fork would copy the relay's page
/// tables for an exec to throw away, and every page either of them writes after it would be
/// copied on the way. The relay has nothing to do meanwhile: signals sent to it stay pending
/// until it forwards them. `--security-report` is no exec: its child is forked.
pub fn start(
    plan: &RunPlan,
    pid1: Pid,
    ready: OwnedFd,
    recording: &Recording,
) -> nix::Result<(Pid, Recorded)> {
    let relay = Pid::this();
    let pid1_fd = pidfd_open(pid1);
    let pid1_fd = pid1_fd.as_ref();
    if plan.report {
        let recorded = recording.write(relay, &plan.argv).unwrap_or_else(|e| super::fail(e));
        // SAFETY: the relay is single-threaded (`init::start`'s precondition).
        return match unsafe { fork() }? {
            ForkResult::Parent { child } => Ok((child, recorded)),
            ForkResult::Child => {
                enter(plan, pid1, pid1_fd, &ready);
                restore_signals();
                crate::sandbox::report::print();
                std::process::exit(0)
            }
        };
    }
    let mut stack = Stack::map()?;
    let mut recorded = None;
    let job = Box::new(|| {
        let record = recording.write(relay, &plan.argv).unwrap_or_else(|e| die(e));
        let container = recorded.insert(record).name.clone();
        enter(plan, pid1, pid1_fd, &ready);
        exec(plan, container.as_deref())
    });
    // SAFETY: CLONE_VFORK suspends the relay, single-threaded, until the child has exec'd or
    // exited, so nothing else touches the memory they share meanwhile; the child runs on its
    // own `stack`, which outlives it. What the child runs is written for a process that shares
    // the relay's memory and thread-local storage: it leaves only through execve or `_exit`
    // (never exit handlers nor a panic's abort, which would act on the relay), and writes its
    // errors to fd 2 itself.
    let flags = CloneFlags::CLONE_VM | CloneFlags::CLONE_VFORK;
    let job = unsafe { nix::sched::clone(job, stack.usable(), flags, Some(libc::SIGCHLD)) }?;
    // What the job's process left in the memory it shared: the record, once written.
    Ok((job, recorded.unwrap_or_default()))
}

/// The job's stack until its exec: 256 KiB over a guard page, so that an overflow faults
/// instead of writing into the relay's memory. Its top is populated up front, while PID 1 still
/// mounts: the child's first touches of its stack then fault on no critical path.
struct Stack {
    base: *mut libc::c_void,
    guard: usize,
}

impl Stack {
    const LEN: usize = 256 << 10;
    const POPULATED: usize = 32 << 10;

    fn map() -> nix::Result<Stack> {
        let guard = super::page_size();
        let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK;
        // SAFETY: a fresh anonymous mapping, owned by the Stack and unmapped in its drop.
        let base =
            unsafe { libc::mmap(std::ptr::null_mut(), guard + Self::LEN, libc::PROT_NONE, flags, -1, 0) };
        if base == libc::MAP_FAILED {
            return Err(Errno::last());
        }
        let stack = Stack { base, guard };
        let usable = stack.usable_ptr();
        // SAFETY: the range lies inside the mapping made above, past its guard page.
        if unsafe { libc::mprotect(usable.cast(), Self::LEN, libc::PROT_READ | libc::PROT_WRITE) } != 0 {
            return Err(Errno::last());
        }
        // SAFETY: as above. An old kernel without MADV_POPULATE_WRITE (5.14) only faults later.
        unsafe {
            libc::madvise(
                usable.add(Self::LEN - Self::POPULATED).cast(),
                Self::POPULATED,
                libc::MADV_POPULATE_WRITE,
            )
        };
        Ok(stack)
    }

    fn usable_ptr(&self) -> *mut u8 {
        // SAFETY: the guard page is the mapping's first.
        unsafe { self.base.cast::<u8>().add(self.guard) }
    }

    fn usable(&mut self) -> &mut [u8] {
        // SAFETY: the LEN bytes past the guard page are mapped read-write, and borrowed
        // from `self`, which unmaps them only when dropped.
        unsafe { std::slice::from_raw_parts_mut(self.usable_ptr(), Self::LEN) }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping `map` made, once; the child using it has exec'd
        // or exited (CLONE_VFORK).
        unsafe { libc::munmap(self.base, self.guard + Self::LEN) };
    }
}

/// Wait for PID 1's container, join it and lock this process down.
fn enter(plan: &RunPlan, pid1: Pid, pid1_fd: Option<&OwnedFd>, ready: &OwnedFd) {
    let keep = if plan.fakeroot {
        lockdown::parse_caps(&plan.keep_caps).unwrap_or_else(|e| die(e))
    } else {
        caps::CapsHashSet::new()
    };
    // While PID 1 still mounts, off the start's critical path: ~40 prctl calls, and the
    // built-in seccomp filter (50 µs to load), which allows what is left to do here.
    lockdown::bound(&keep).unwrap_or_else(|e| die(e));
    let filter = lockdown::filter_early(&plan.seccomp).unwrap_or_else(|e| die(e));
    let mut byte = [0u8];
    loop {
        match nix::unistd::read(ready, &mut byte) {
            Ok(1) => break,
            Err(Errno::EINTR) => {}
            // PID 1 failed before the container was ready, and said why.
            _ => leave(EXIT_BOXRUN_FAILED),
        }
    }
    join_mounts(pid1, pid1_fd);
    nix::unistd::chdir(&plan.workdir).unwrap_or_else(|e| {
        die(format!("cannot enter the working directory {}: {e}", plan.workdir.display()))
    });
    lockdown::apply(&keep, filter).unwrap_or_else(|e| die(e));
}

/// A pidfd of `pid` (Linux 5.3; close-on-exec), taken by the relay, whose PID namespace the
/// pid is of, while PID 1 mounts: the job's setns(2) through it needs no path, where
/// `/proc/PID/ns/mnt` costs a walk through procfs on the critical path (a new process has no
/// dentries there yet).
fn pidfd_open(pid: Pid) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd, which we own.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    // SAFETY: a non-negative return is a fresh fd that nothing else owns.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Join PID 1's mount namespace: through its pidfd (setns by pidfd, Linux 5.8), else through
/// /proc. setns(2) also moves the root and the working directory to the namespace's root:
/// PID 1's pivot_root target. Allowed: the job holds every capability of the user namespace
/// that owns the mount namespace, until `lockdown::apply`.
fn join_mounts(pid1: Pid, pid1_fd: Option<&OwnedFd>) {
    if let Some(fd) = pid1_fd
        && setns(fd, CloneFlags::CLONE_NEWNS).is_ok()
    {
        return;
    }
    // The job is still in the host's mount namespace: /proc is the host's, where PID 1 has
    // the pid the fork returned.
    let namespace = format!("/proc/{pid1}/ns/mnt");
    let namespace = open(namespace.as_str(), OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty())
        .unwrap_or_else(|e| die(format!("cannot open the container's mount namespace: {e}")));
    setns(&namespace, CloneFlags::CLONE_NEWNS)
        .unwrap_or_else(|e| die(format!("cannot enter the container's mount namespace: {e}")));
}

/// Exec the command, found on the image's PATH, with the image's environment. The job starts
/// with no signal blocked and SIGPIPE back to its default: Rust's runtime ignores SIGPIPE in
/// boxrun, and an ignored signal stays ignored across exec (`cmd | head` would then end in
/// EPIPE errors instead of quietly). A signal the relay forwarded before this point was
/// pending, and acts now, as it would have on the running job.
fn exec(plan: &RunPlan, container: Option<&str>) -> ! {
    let command = &plan.argv[0];
    let path = plan.env.iter().find(|(k, _)| k == "PATH").map_or("/usr/local/bin:/usr/bin:/bin", |(_, v)| v);
    let argv: Vec<CString> = plan.argv.iter().map(|a| cstring(a)).collect();
    let variable = |(k, v): &(String, String)| match container {
        Some(name) if k == "BOXRUN_CONTAINER" => format!("{k}={name}"),
        _ => format!("{k}={v}"),
    };
    let env: Vec<CString> = plan.env.iter().map(|kv| cstring(&variable(kv))).collect();
    restore_signals();
    match exec_on_path(command, path, &argv, &env) {
        Errno::ENOENT if !command.contains('/') => {
            say(format!("'{command}': command not found in the image (PATH={path})"));
            leave(127)
        }
        error => {
            say(format!("cannot execute '{command}': {}", error.desc()));
            leave(if error == Errno::ENOENT { 127 } else { 126 })
        }
    }
}

/// Exec `command`: itself if it has a `/`, else the first file of that name on `path` that
/// execs, searched as execvp(3) searches. A candidate that is missing (ENOENT, ENOTDIR) or not
/// executable (EACCES) is passed over, and EACCES is the error if no candidate runs. Trying
/// each candidate's exec rather than checking it first (access, stat) saves two syscalls on
/// the start's critical path. Returns only on failure, with the error to report.
fn exec_on_path(command: &str, path: &str, argv: &[CString], env: &[CString]) -> Errno {
    let exec = |program: &str| execve(&cstring(program), argv, env).unwrap_err();
    if command.contains('/') {
        return exec(command);
    }
    let mut error = Errno::ENOENT;
    for dir in path.split(':').filter(|dir| !dir.is_empty()) {
        match exec(&format!("{}/{command}", dir.trim_end_matches('/'))) {
            Errno::ENOENT | Errno::ENOTDIR | Errno::ENAMETOOLONG => {}
            Errno::EACCES => error = Errno::EACCES,
            other => return other,
        }
    }
    error
}

fn cstring(s: &str) -> CString {
    CString::new(s).unwrap_or_else(|_| die(format!("'{s}' contains a NUL byte")))
}

/// Write `boxrun: error: MESSAGE` to stderr with one write (no std lock, no panic if stderr
/// is gone).
fn say(message: impl std::fmt::Display) {
    let line = format!("boxrun: error: {message}\n");
    // SAFETY: writes a valid buffer to fd 2; a failure is ignored, as it has nowhere to go.
    unsafe { libc::write(2, line.as_ptr().cast(), line.len()) };
}

/// Exit the job's process before its exec: `_exit`, because it may share the relay's memory,
/// whose exit handlers and buffers are the relay's.
fn leave(code: i32) -> ! {
    // SAFETY: _exit has no preconditions.
    unsafe { libc::_exit(code) }
}

/// Report a failure of boxrun in the job's process and exit 125.
fn die(message: impl std::fmt::Display) -> ! {
    say(message);
    leave(EXIT_BOXRUN_FAILED)
}

/// SIGPIPE back to its default, and no signal blocked: the relay blocked those it forwards.
fn restore_signals() {
    let default = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
    // SAFETY: restoring a default disposition installs no handler.
    let _ = unsafe { sigaction(Signal::SIGPIPE, &default) };
    let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
}
