//! The start path after the re-exec (`boxrun __init`): a fresh single-threaded process that
//! enters the namespaces, forks PID 1, and relays signals and the exit status.
//!
//! ```text
//! boxrun (outer, same pid after exec) ── relay: forwards signals to PID 1, exits with its status
//!   └─ PID 1 (boxrun init) ── mounts, pivot_root, lock-down; forwards signals to the job, reaps
//!        └─ the job
//! ```
//! If the outer process dies (even by SIGKILL), PID 1 gets SIGKILL (parent-death signal) and
//! the kernel kills every process of the PID namespace with it.
//!
//! When the job ends, PID 1 kills and reaps what the job left running, then tells the relay the
//! job's status through a pipe before it exits: the relay returns while the kernel tears the
//! container's mounts down, which no one needs to wait for. For that, the mount namespace is PID
//! 1's alone (`ns::own_mounts`): the relay, in the host's, does not pay the teardown in its exit.

mod record;
mod wait;

use std::ffi::CString;
use std::io::Read;
use std::os::fd::{AsFd, FromRawFd, OwnedFd, RawFd};
use std::time::Instant;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::spawn::{PosixSpawnAttr, PosixSpawnFileActions, PosixSpawnFlags, posix_spawn};
use nix::sys::prctl;
use nix::sys::resource::{UsageWho, getrusage};
use nix::sys::signal::{
    SaFlags, SigAction, SigHandler, SigSet, SigmaskHow, Signal, kill, sigaction, sigprocmask,
};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, fork, pipe2};
use wait::{Event, Waiter};

use crate::EXIT_BOXRUN_FAILED;
use crate::rootfs::top::{self, CachedTop};
use crate::sandbox::plan::{RunPlan, StatsFormat};
use crate::sandbox::{lockdown, mount, ns};

/// Signals a scheduler or a user sends that must reach the job.
const FORWARDED: [Signal; 7] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGQUIT,
    Signal::SIGCONT,
];

/// Report a failure of boxrun itself and exit 125.
fn fail(message: impl std::fmt::Display) -> ! {
    eprintln!("boxrun: error: {message}");
    std::process::exit(EXIT_BOXRUN_FAILED)
}

/// `boxrun __init --plan-fd N`: never returns.
pub fn main(plan_fd: RawFd) -> ! {
    let plan = read_plan(plan_fd).unwrap_or_else(|e| fail(format!("cannot read the run plan: {e}")));
    start(&plan)
}

/// Enter the namespaces and run the plan. The caller must be single-threaded: a fresh exec,
/// or the outer boxrun on the warm path, which started no thread.
pub fn start(plan: &RunPlan) -> ! {
    // The image's top layer, on the host's side and before anything forks: made once per image
    // and plan, then held open by the relay and PID 1 while the container runs (gc spares it).
    let top = plan.top_layers.as_ref().map(|store| top::open(store, &plan.rootfs, &plan.mounts));
    let top = top.transpose().unwrap_or_else(|e| fail(e));
    let signals = forwarded(plan);
    let mut blocked = signals;
    blocked.add(Signal::SIGCHLD);
    // ORDER: block before fork, so a signal arriving before a wait loop runs stays pending.
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&blocked), None)
        .unwrap_or_else(|e| fail(format!("sigprocmask: {e}")));
    let recording = record::prepare(plan.record.as_ref());
    ns::enter(plan).unwrap_or_else(|e| fail(e));
    // Closed by the kernel when this process dies: PID 1 watches it to close the race
    // between its fork and its prctl(PR_SET_PDEATHSIG).
    let (alive_read, alive_write) = pipe2(OFlag::O_CLOEXEC).unwrap_or_else(|e| fail(format!("pipe: {e}")));
    let (status_read, status_write) =
        pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK).unwrap_or_else(|e| fail(format!("pipe: {e}")));
    // ORDER: fork after unshare(CLONE_NEWPID): the child is PID 1 of the new namespace.
    // SAFETY: this process is single-threaded (`start`'s precondition).
    match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            drop(alive_write);
            drop(status_read);
            let name_pipe = recording.into_name_pipe();
            pid1(plan, top.as_ref(), signals, alive_read, status_write, name_pipe)
        }
        Ok(ForkResult::Parent { child }) => {
            drop(alive_read);
            drop(status_write);
            let record = recording.write(child, &plan.argv);
            let code = relay(child, signals, status_read);
            // Gone from `boxrun ps`; if this fails, ps prunes it (the pid is dead). The relay
            // is in the host's mount namespace: the path still names the record.
            if let Some(record) = record {
                drop(fs_err::remove_file(record));
            }
            drop(alive_write);
            std::process::exit(code)
        }
        Err(e) => fail(format!("fork: {e}")),
    }
}

fn read_plan(fd: RawFd) -> Result<RunPlan, String> {
    // SAFETY: the outer boxrun passed us this fd (a memfd) for us alone to own and close.
    let mut file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    let mut text = String::new();
    file.read_to_string(&mut text).map_err(|e| e.to_string())?;
    serde_json::from_str(&text).map_err(|e| e.to_string())
}

fn forwarded(plan: &RunPlan) -> SigSet {
    let mut set = SigSet::empty();
    for signal in FORWARDED {
        let interrupt = matches!(signal, Signal::SIGINT | Signal::SIGQUIT);
        if plan.forward_interrupts || !interrupt {
            set.add(signal);
        }
    }
    set
}

/// Wait for PID 1's word on the job's status, forwarding `signals` to it; if PID 1 dies without
/// a word, its own exit status, or 128+N if a signal killed it.
fn relay(child: Pid, signals: SigSet, status: OwnedFd) -> i32 {
    forward_until(child, signals, Some(status), || match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
        Ok(WaitStatus::Exited(_, code)) => Some(code),
        Ok(WaitStatus::Signaled(_, signal, _)) => Some(128 + signal as i32),
        Ok(_) | Err(Errno::EINTR) => None,
        Err(e) => fail(format!("waitpid: {e}")),
    })
}

/// Forward `signals` to `target` until a `status` arrives or, on a SIGCHLD, `reap` says the
/// child we wait for has ended (its status; `None`: not yet).
fn forward_until(
    target: Pid,
    signals: SigSet,
    status: Option<OwnedFd>,
    mut reap: impl FnMut() -> Option<i32>,
) -> i32 {
    let mut waited = signals;
    waited.add(Signal::SIGCHLD);
    let mut waiter = Waiter::new(&waited, status);
    loop {
        match waiter.next() {
            Event::Status(Some(code)) => return i32::from(code),
            Event::Status(None) => {} // PID 1 died without a word: its SIGCHLD follows
            Event::Signal(Signal::SIGCHLD) => {
                if let Some(code) = reap() {
                    return code;
                }
            }
            // The target may be gone already; its SIGCHLD is then pending.
            Event::Signal(signal) => drop(kill(target, signal)),
        }
    }
}

/// PID 1 of the container: build it, start the job, forward, reap, exit with the job's status.
fn pid1(
    plan: &RunPlan,
    top: Option<&CachedTop>,
    signals: SigSet,
    parent_alive: OwnedFd,
    status: OwnedFd,
    name_pipe: Option<OwnedFd>,
) -> ! {
    // ORDER: the parent-death signal before anything else, then the check that the parent
    // did not die before it was set (its end of the pipe would be closed).
    prctl::set_pdeathsig(Signal::SIGKILL).unwrap_or_else(|e| fail(format!("prctl(PR_SET_PDEATHSIG): {e}")));
    let mut poll_fds = [PollFd::new(parent_alive.as_fd(), PollFlags::POLLIN)];
    if poll(&mut poll_fds, PollTimeout::ZERO).unwrap_or(0) > 0 {
        std::process::exit(EXIT_BOXRUN_FAILED);
    }
    if plan.namespaces.host_pid {
        // Not PID 1 of a namespace: become the reaper of the job's orphans instead, so that
        // they can be found and killed when the job ends.
        prctl::set_child_subreaper(true)
            .unwrap_or_else(|e| fail(format!("prctl(PR_SET_CHILD_SUBREAPER): {e}")));
    }
    ns::own_mounts().unwrap_or_else(|e| fail(format!("cannot create a mount namespace: {e}")));
    mount::build(plan, top).unwrap_or_else(|e| fail(e));
    if let Some(hostname) = &plan.hostname {
        nix::unistd::sethostname(hostname).unwrap_or_else(|e| fail(format!("sethostname: {e}")));
    }
    if plan.namespaces.net {
        crate::sandbox::net::loopback_up().unwrap_or_else(|e| fail(e));
    }
    // A PID 1 receives a signal from an ancestor namespace only if it has a handler for it
    // (pid_namespaces(7)): install no-op ones; the signals stay blocked and queue for the signalfd.
    for signal in signals.iter() {
        let action = SigAction::new(SigHandler::Handler(noop), SaFlags::empty(), SigSet::empty());
        // SAFETY: `noop` is async-signal-safe (it does nothing).
        unsafe { sigaction(signal, &action) }.unwrap_or_else(|e| fail(format!("sigaction: {e}")));
    }
    nix::unistd::chdir(&plan.workdir).unwrap_or_else(|e| {
        fail(format!("cannot enter the working directory {}: {e}", plan.workdir.display()))
    });
    let keep = if plan.fakeroot {
        lockdown::parse_caps(&plan.keep_caps).unwrap_or_else(|e| fail(e))
    } else {
        caps::CapsHashSet::new()
    };
    lockdown::apply(&keep, &plan.seccomp).unwrap_or_else(|e| fail(e));
    let container = name_pipe.map(record::recorded_name);
    let start = Instant::now();
    let job = start_job(plan, container.as_deref());
    let code = supervise(job, signals);
    if plan.namespaces.host_pid {
        kill_leftovers();
    } else {
        kill_namespace();
    }
    if let Some(format) = plan.stats {
        print_stats(format, start, code);
    }
    // ORDER: after the kills: when the relay returns, nothing of the container runs any more.
    let _ = nix::unistd::write(&status, &[u8::try_from(code).unwrap_or(u8::MAX)]);
    std::process::exit(code)
}

extern "C" fn noop(_: libc::c_int) {}

/// Unmap what the start path touched and the wait loops will not: the pages of every
/// read-only segment of the binary and its libraries (code and constants: the few the loop
/// runs fault back in from the page cache) and the heap's free memory. Slurm's job accounting
/// sums the RSS of the job's processes: the relay and PID 1 then weigh what they use while they
/// wait (under 1 MB each), not the 5 MB of pages the setup mapped.
fn release_startup_pages() {
    /// dl_iterate_phdr's callback: MADV_DONTNEED each loaded segment without write access.
    /// Writable segments (data, and the relocated RELRO inside them) hold state: never dropped.
    extern "C" fn each_object(
        info: *mut libc::dl_phdr_info,
        _: libc::size_t,
        _: *mut libc::c_void,
    ) -> libc::c_int {
        // SAFETY: the loader passes a valid dl_phdr_info whose dlpi_phdr points to dlpi_phnum
        // program headers, for the duration of the call.
        let (base, headers) = unsafe {
            let info = &*info;
            (info.dlpi_addr as usize, std::slice::from_raw_parts(info.dlpi_phdr, info.dlpi_phnum as usize))
        };
        // SAFETY: sysconf has no preconditions. madvise's range must be whole pages of this
        // machine (64 KiB on some aarch64), or it would reach into the next mapping.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        for header in headers.iter().filter(|h| h.p_type == libc::PT_LOAD && h.p_flags & libc::PF_W == 0) {
            let start = (base + header.p_vaddr as usize) & !(page - 1);
            let end = (base + (header.p_vaddr + header.p_memsz) as usize).next_multiple_of(page);
            // SAFETY: the range is a read-only mapping of a file: dropping its pages loses
            // nothing (the next access reads the page cache again). An error (the vDSO is no
            // file mapping) leaves the pages as they were.
            unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) };
        }
        0
    }
    // SAFETY: the callback only reads what the loader hands it; this process is single-threaded.
    unsafe {
        #[cfg(target_env = "gnu")]
        libc::malloc_trim(0);
        libc::dl_iterate_phdr(Some(each_object), std::ptr::null_mut());
    }
}

/// Forward signals to the job and reap every child (orphans re-parent to PID 1) until the job
/// itself exits; what is left, `kill_namespace` or `kill_leftovers` ends.
fn supervise(job: Pid, signals: SigSet) -> i32 {
    forward_until(job, signals, None, || {
        loop {
            match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) if pid == job => return Some(code),
                Ok(WaitStatus::Signaled(pid, signal, _)) if pid == job => return Some(128 + signal as i32),
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return None,
                Ok(_) | Err(Errno::EINTR) => {}
                Err(e) => fail(format!("waitpid: {e}")),
            }
        }
    })
}

/// SIGKILL every other process of the container's PID namespace (what the job left running)
/// and reap them all, as the kernel would when PID 1 exits, but before the relay is told.
fn kill_namespace() {
    // In a PID namespace, kill(-1) from its PID 1 reaches every process of it but PID 1.
    // Anywhere else it would reach every process of the user: only ever from PID 1.
    if std::process::id() != 1 {
        return;
    }
    // Every other process of the namespace descends from PID 1 (orphans re-parent to it), so
    // no child left means no process left. Checking costs one syscall; kill(-1) walks every
    // task of the node, 50 µs at each job's end.
    if waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) == Err(Errno::ECHILD) {
        return;
    }
    if kill(Pid::from_raw(-1), Signal::SIGKILL).is_err() {
        return; // ESRCH: nothing left
    }
    // Orphans of the killed re-parent to PID 1 before their parent can be reaped: no child
    // left (ECHILD) means no process left.
    while matches!(waitpid(None::<Pid>, None), Ok(_) | Err(Errno::EINTR)) {}
}

/// With no PID namespace whose end kills them, SIGKILL what the job left running: our
/// children (the job's orphans, reparented to us as their subreaper), until none is left.
fn kill_leftovers() {
    let children = || {
        let me = std::process::id();
        fs_err::read_to_string(format!("/proc/{me}/task/{me}/children")).unwrap_or_default()
    };
    for _ in 0..1000 {
        let pids: Vec<i32> = children().split_whitespace().filter_map(|p| p.parse().ok()).collect();
        if pids.is_empty() {
            return;
        }
        for pid in pids {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            let _ = waitpid(Pid::from_raw(pid), None);
        }
    }
}

/// Start the job, told it runs in the container named `container` when the relay recorded
/// one. `--security-report` prints from a forked child; a command is spawned.
fn start_job(plan: &RunPlan, container: Option<&str>) -> Pid {
    if !plan.report {
        return spawn_job(plan, container);
    }
    // SAFETY: PID 1 is single-threaded.
    match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
            crate::sandbox::report::print();
            std::process::exit(0)
        }
        Ok(ForkResult::Parent { child }) => child,
        Err(e) => fail(format!("fork: {e}")),
    }
}

/// posix_spawn the command, found on the image's PATH, with the image's environment. glibc
/// spawns with `clone(CLONE_VM | CLONE_VFORK)`: PID 1's pages are neither copied for the job
/// nor torn down by its exec, which a fork would do. The job starts with no signal blocked and
/// SIGPIPE back to its default: Rust's runtime ignores SIGPIPE in boxrun, and an ignored signal
/// stays ignored across exec (`cmd | head` would then end in EPIPE errors instead of quietly).
fn spawn_job(plan: &RunPlan, container: Option<&str>) -> Pid {
    let command = &plan.argv[0];
    let path = plan.env.iter().find(|(k, _)| k == "PATH").map_or("/usr/local/bin:/usr/bin:/bin", |(_, v)| v);
    let Some(program) = find_program(command, path) else {
        eprintln!("boxrun: error: '{command}': command not found in the image (PATH={path})");
        std::process::exit(127);
    };
    let cstring = |s: &str| CString::new(s).unwrap_or_else(|_| fail(format!("'{s}' contains a NUL byte")));
    let argv: Vec<CString> = plan.argv.iter().map(|a| cstring(a)).collect();
    let variable = |(k, v): &(String, String)| match container {
        Some(name) if k == "BOXRUN_CONTAINER" => format!("{k}={name}"),
        _ => format!("{k}={v}"),
    };
    let env: Vec<CString> = plan.env.iter().map(|kv| cstring(&variable(kv))).collect();
    let spawned = job_attributes().and_then(|attributes| {
        posix_spawn(program.as_path(), &PosixSpawnFileActions::init()?, &attributes, &argv, &env)
    });
    spawned.unwrap_or_else(|error| {
        eprintln!("boxrun: error: cannot execute '{command}': {}", error.desc());
        std::process::exit(if error == Errno::ENOENT { 127 } else { 126 })
    })
}

fn job_attributes() -> nix::Result<PosixSpawnAttr> {
    let mut attributes = PosixSpawnAttr::init()?;
    attributes.set_flags(PosixSpawnFlags::POSIX_SPAWN_SETSIGMASK | PosixSpawnFlags::POSIX_SPAWN_SETSIGDEF)?;
    attributes.set_sigmask(&SigSet::empty())?;
    attributes.set_sigdefault(&SigSet::from(Signal::SIGPIPE))?;
    Ok(attributes)
}

/// `command` itself if it has a `/`, else the first executable file of that name on `path`.
fn find_program(command: &str, path: &str) -> Option<std::path::PathBuf> {
    if command.contains('/') {
        return Some(command.into());
    }
    path.split(':').filter(|dir| !dir.is_empty()).map(|dir| std::path::Path::new(dir).join(command)).find(
        |candidate| {
            nix::unistd::access(candidate, nix::unistd::AccessFlags::X_OK).is_ok()
                && fs_err::metadata(candidate).is_ok_and(|m| m.is_file())
        },
    )
}

fn print_stats(format: StatsFormat, start: Instant, code: i32) {
    let wall = start.elapsed().as_secs_f64();
    let usage = getrusage(UsageWho::RUSAGE_CHILDREN).ok();
    let seconds = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    let (user, system, max_rss_kib) =
        usage.map_or((0.0, 0.0, 0), |u| (seconds(u.user_time()), seconds(u.system_time()), u.max_rss()));
    match format {
        StatsFormat::Text => eprintln!(
            "boxrun: stats: wall {wall:.3}s, cpu {:.3}s (user {user:.3}s, system {system:.3}s), peak rss {:.1} MiB, exit {code}",
            user + system,
            max_rss_kib as f64 / 1024.0
        ),
        StatsFormat::Json => eprintln!(
            r#"{{"wall_s":{wall:.6},"cpu_s":{:.6},"user_s":{user:.6},"system_s":{system:.6},"max_rss_kib":{max_rss_kib},"exit":{code}}}"#,
            user + system
        ),
    }
}
