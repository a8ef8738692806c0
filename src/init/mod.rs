//! The start path after the re-exec (`boxrun __init`): a fresh single-threaded process that
//! enters the namespaces, forks PID 1 and the job, and relays signals and the exit status.
//!
//! ```text
//! boxrun (outer, same pid after exec) ── relay: forwards signals to the job, exits with its status
//!   ├─ PID 1 (boxrun init) ── mounts, pivot_root, lock-down; then reaps the job's orphans
//!   └─ the job (PID 2) ── waits for PID 1's file system, joins it, locks down, execs
//! ```
//! If the outer process dies (even by SIGKILL), PID 1 gets SIGKILL (parent-death signal) and
//! the kernel kills every process of the PID namespace with it.
//!
//! When the job ends, the relay, its parent, returns its status as soon as no process of the
//! container is left but PID 1: the job's orphans are PID 1's children, so an empty list of
//! them says so. The relay's exit then kills PID 1, whose exit tears the container's mounts
//! down, which no one needs to wait for. For that, the mount namespace is PID 1's (the job
//! joins it; `ns::own_mounts`): the relay, in the host's, does not pay the teardown in its exit.

mod job;
mod pid1;
mod record;
mod wait;

use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::time::Instant;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::prctl;
use nix::sys::resource::{UsageWho, getrusage};
use nix::sys::signal::{SigSet, SigmaskHow, Signal, kill, sigprocmask};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, fork, pipe2};
use wait::Waiter;

use crate::EXIT_BOXRUN_FAILED;
use crate::rootfs::top;
use crate::sandbox::ns;
use crate::sandbox::plan::{RunPlan, StatsFormat};

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
    if plan.namespaces.host_pid {
        // No PID namespace: the relay adopts the job's orphans instead of a PID 1, so that
        // they can be found and killed when the job ends.
        prctl::set_child_subreaper(true)
            .unwrap_or_else(|e| fail(format!("prctl(PR_SET_CHILD_SUBREAPER): {e}")));
    }
    let recording = record::prepare(plan.record.as_ref());
    ns::enter(plan).unwrap_or_else(|e| fail(e));
    // Closed by the kernel when this process dies: PID 1 watches it to close the race
    // between its fork and its prctl(PR_SET_PDEATHSIG).
    let (alive_read, alive_write) = pipe2(OFlag::O_CLOEXEC).unwrap_or_else(|e| fail(format!("pipe: {e}")));
    // PID 1 writes a byte once the container's file system is ready; the job waits for it.
    let (ready_read, ready_write) = pipe2(OFlag::O_CLOEXEC).unwrap_or_else(|e| fail(format!("pipe: {e}")));
    // ORDER: fork after unshare(CLONE_NEWPID): the child is PID 1 of the new namespace.
    // SAFETY: this process is single-threaded (`start`'s precondition).
    match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            drop(alive_write);
            drop(ready_read);
            pid1::run(plan, top.as_ref(), alive_read, ready_write)
        }
        Ok(ForkResult::Parent { child }) => {
            drop(alive_read);
            // ORDER: before the job's fork: PID 1's failure must reach the job as end of file.
            drop(ready_write);
            relay(plan, child, signals, recording, ready_read);
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

/// The relay: fork the job (which records the container), forward `signals` to it, and exit
/// with its status once nothing of the container but PID 1 runs.
fn relay(plan: &RunPlan, pid1: Pid, signals: SigSet, recording: record::Recording, ready: OwnedFd) -> ! {
    let start = Instant::now();
    let (job, recorded) = job::start(plan, pid1, ready, &recording).unwrap_or_else(|e| {
        // A PID namespace whose PID 1 died takes no new process: PID 1 said why.
        std::process::exit(end_namespace(pid1).unwrap_or_else(|| fail(format!("fork: {e}"))))
    });
    // Opened while the job runs, so that at its end only a read is left to do: the walk
    // through /proc to a new process's task is not on the critical path.
    let pid1_children = (!plan.namespaces.host_pid).then(|| Children::open(pid1)).flatten();
    let mut code = supervise(job, signals);
    if plan.namespaces.host_pid {
        kill_leftovers(pid1);
    } else if code == 128 + Signal::SIGKILL as i32 || !only_pid1_left(pid1_children.as_ref()) {
        // The job left processes behind, or was killed with the whole namespace because PID 1
        // failed (and said why: its status is the one to report).
        code = end_namespace(pid1).unwrap_or(code);
    }
    if let Some(format) = plan.stats {
        print_stats(format, start, code);
    }
    // Gone from `boxrun ps`; if this fails, ps prunes it (the pid is dead). The relay is in
    // the host's mount namespace: the path still names the record.
    if let Some(file) = recorded.file {
        drop(fs_err::remove_file(file));
    }
    std::process::exit(code)
}

/// Forward signals to the job until it exits; its status, or 128+N if a signal killed it.
/// Under `--pid=host` the relay also reaps the job's orphans here.
fn supervise(job: Pid, signals: SigSet) -> i32 {
    let mut waited = signals;
    waited.add(Signal::SIGCHLD);
    let mut waiter = Waiter::new(&waited);
    loop {
        match waiter.next() {
            Signal::SIGCHLD => {
                if let Some(code) = reap(Some(job)) {
                    return code;
                }
            }
            // The job may be gone already; its SIGCHLD is then pending.
            signal => drop(kill(job, signal)),
        }
    }
}

/// Reap the children that have ended; the `job`'s status if it is one of them.
fn reap(job: Option<Pid>) -> Option<i32> {
    loop {
        match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) if Some(pid) == job => return Some(code),
            Ok(WaitStatus::Signaled(pid, signal, _)) if Some(pid) == job => return Some(128 + signal as i32),
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return None,
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => fail(format!("waitpid: {e}")),
        }
    }
}

/// Whether PID 1 has no child: every process of the container's PID namespace but the job
/// (the relay's child, reaped) descends from PID 1, and the job's orphans were re-parented to
/// it before the job's exit was reported. Unreadable: no.
fn only_pid1_left(pid1_children: Option<&Children>) -> bool {
    pid1_children.and_then(Children::read).is_some_and(|pids| pids.is_empty())
}

/// The list of a single-threaded process's children in the host's /proc, open: each read
/// lists them as they are at that moment (a read from offset 0 starts the seq_file over).
struct Children(fs_err::File);

impl Children {
    fn open(pid: Pid) -> Option<Children> {
        fs_err::File::open(format!("/proc/{pid}/task/{pid}/children")).ok().map(Children)
    }

    /// The children now; `None` if unreadable.
    fn read(&self) -> Option<Vec<Pid>> {
        use std::os::unix::fs::FileExt;
        let (mut list, mut chunk) = (Vec::new(), [0u8; 1024]);
        loop {
            match self.0.file().read_at(&mut chunk, list.len() as u64) {
                Ok(0) => break,
                Ok(n) => list.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return None,
            }
        }
        let list = std::str::from_utf8(&list).ok()?;
        Some(list.split_whitespace().filter_map(|p| p.parse().ok()).map(Pid::from_raw).collect())
    }
}

/// Kill PID 1, with it every process of its PID namespace, and reap it: its exit is reported
/// only once the namespace is empty (pid_namespaces(7)). Its status if it exited by itself,
/// which it does only when it failed.
fn end_namespace(pid1: Pid) -> Option<i32> {
    let _ = kill(pid1, Signal::SIGKILL);
    loop {
        match waitpid(pid1, None) {
            Ok(WaitStatus::Exited(_, code)) => return Some(code),
            Err(Errno::EINTR) => {}
            Ok(_) | Err(_) => return None,
        }
    }
}

/// With no PID namespace whose end kills them, SIGKILL what the job left running: the relay's
/// children but PID 1 (the job's orphans, reparented to the relay as their subreaper), until
/// none is left.
fn kill_leftovers(pid1: Pid) {
    let children = Children::open(Pid::this());
    for _ in 0..1000 {
        let mut pids = children.as_ref().and_then(Children::read).unwrap_or_default();
        pids.retain(|&pid| pid != pid1);
        if pids.is_empty() {
            return;
        }
        for pid in pids {
            let _ = kill(pid, Signal::SIGKILL);
            let _ = waitpid(pid, None);
        }
    }
}

/// This machine's page size (4 KiB, or up to 64 KiB on some aarch64).
fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096)
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
