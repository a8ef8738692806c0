//! What the relay and PID 1 wait on: the signals they forward and SIGCHLD (read from a
//! signalfd), PID 1's word on the job's exit status (the relay only), and the moment to give
//! back the pages their start-up touched.

use std::os::fd::{AsFd, OwnedFd};
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

pub(super) enum Event {
    /// A forwarded signal or SIGCHLD.
    Signal(Signal),
    /// PID 1's exit status for the job, sent before PID 1 exits; `None` if it died first.
    Status(Option<u8>),
}

pub(super) struct Waiter {
    signals: SignalFd,
    status: Option<OwnedFd>,
    release_at: Option<Instant>,
}

impl Waiter {
    /// Wait for `signals` (blocked by the caller, so they queue for the signalfd) and, for
    /// the relay, on PID 1's `status` pipe.
    pub(super) fn new(signals: &SigSet, status: Option<OwnedFd>) -> Waiter {
        let flags = SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK;
        let signals = SignalFd::with_flags(signals, flags).unwrap_or_else(|e| fail(format!("signalfd: {e}")));
        Waiter { signals, status, release_at: Some(Instant::now() + RELEASE_AFTER) }
    }

    /// The next event. Unmaps the start-up pages when `RELEASE_AFTER` passes first.
    pub(super) fn next(&mut self) -> Event {
        loop {
            if let Some(signal) = self.pending_signal() {
                return Event::Signal(signal);
            }
            if let Some(status) = self.status_if_ready() {
                return Event::Status(status);
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

    /// One byte, the status; end of file: PID 1 is gone without one (its SIGCHLD follows).
    fn status_if_ready(&mut self) -> Option<Option<u8>> {
        let fd = self.status.as_ref()?;
        let mut byte = [0u8];
        match nix::unistd::read(fd, &mut byte) {
            Ok(1) => Some(Some(byte[0])),
            Ok(_) => {
                self.status = None;
                Some(None)
            }
            Err(Errno::EAGAIN | Errno::EINTR) => None,
            Err(e) => fail(format!("reading PID 1's status: {e}")),
        }
    }

    /// Poll until an event. The start-up pages are released, when it is time, right before
    /// the poll that blocks: what runs after the release and is faulted back in (64 KiB of code
    /// around each page touched) is then only the poll, until the next event.
    fn sleep(&mut self) {
        let signals = PollFd::new(self.signals.as_fd(), PollFlags::POLLIN);
        let mut fds = match &self.status {
            Some(status) => [signals, PollFd::new(status.as_fd(), PollFlags::POLLIN)],
            // No status pipe: an entry that waits for no event keeps the array's size.
            None => [signals, PollFd::new(self.signals.as_fd(), PollFlags::empty())],
        };
        if let Some(at) = self.release_at {
            let timeout = PollTimeout::try_from(at.saturating_duration_since(Instant::now()))
                .unwrap_or(PollTimeout::MAX);
            match poll(&mut fds, timeout) {
                Ok(0) => {
                    self.release_at = None;
                    super::release_startup_pages();
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
