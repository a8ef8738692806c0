//! What the relay and PID 1 wait on: the signals they forward and SIGCHLD (read from a
//! signalfd), and the moment to give back the pages their start-up touched.

use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

use super::fail;

/// How long a job runs before the relay and PID 1 unmap their start-up pages. A job that ends
/// sooner (a probe, a `true` per rank) never pays the unmapping and its TLB flushes; one that
/// runs longer is accounted well under 1 MB for each of them from then on.
const RELEASE_AFTER: Duration = Duration::from_millis(50);

pub(super) struct Waiter {
    signals: SignalFd,
    release_at: Option<Instant>,
}

impl Waiter {
    /// Wait for `signals`, blocked by the caller, so they queue for the signalfd.
    pub(super) fn new(signals: &SigSet) -> Waiter {
        let flags = SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK;
        let signals = SignalFd::with_flags(signals, flags).unwrap_or_else(|e| fail(format!("signalfd: {e}")));
        Waiter { signals, release_at: Some(Instant::now() + RELEASE_AFTER) }
    }

    /// The next signal (a forwarded one or SIGCHLD). Unmaps the start-up pages when
    /// `RELEASE_AFTER` passes first.
    pub(super) fn next(&mut self) -> Signal {
        loop {
            if let Some(signal) = self.pending_signal() {
                return signal;
            }
            self.sleep();
        }
    }

    fn pending_signal(&self) -> Option<Signal> {
        match self.signals.read_signal() {
            Ok(Some(info)) => Signal::try_from(info.ssi_signo as i32).ok(),
            Ok(None) | Err(Errno::EINTR) => None,
            Err(e) => fail(format!("reading the signalfd: {e}")),
        }
    }

    /// Poll until an event. The start-up pages are released, when it is time, right before
    /// the poll that blocks: what runs after the release and is faulted back in (64 KiB of code
    /// around each page touched) is then only the poll, until the next event.
    fn sleep(&mut self) {
        let mut fds = [PollFd::new(self.signals.as_fd(), PollFlags::POLLIN)];
        if let Some(at) = self.release_at {
            let timeout = PollTimeout::try_from(at.saturating_duration_since(Instant::now()))
                .unwrap_or(PollTimeout::MAX);
            match poll(&mut fds, timeout) {
                Ok(0) => {
                    self.release_at = None;
                    release_startup_pages();
                }
                Ok(_) | Err(Errno::EINTR) => return,
                Err(e) => fail(format!("poll: {e}")),
            }
        }
        if let Err(e) = poll(&mut fds, PollTimeout::NONE)
            && e != Errno::EINTR
        {
            fail(format!("poll: {e}"));
        }
    }
}

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
        // madvise's range must be whole pages of this machine, or it would reach into the
        // next mapping.
        let page = super::page_size();
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
