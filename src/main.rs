//! The `boxrun` binary: parse the command line, run the library, map failures to exit status.
//!
//! `main` is boxrun's own (`no_main`) rather than Rust's runtime start, which also gives the main
//! thread a stack-overflow handler: it finds the stack's guard page by reading /proc/self/maps
//! and sets up a signal stack, 14 syscalls and 0.09 ms of every warm start (README,
//! Performance). boxrun keeps the two parts of that start it relies on: stdin, stdout and stderr
//! are open, and SIGPIPE is ignored. A stack overflow ends in a plain SIGSEGV.

#![no_main]

use nix::sys::signal::{SigHandler, Signal, signal};

/// What the C library's start calls. std still collects the arguments on glibc (from
/// .init_array), so `std::env::args_os` works as under Rust's own `main`.
#[unsafe(no_mangle)]
extern "C" fn main(_argc: libc::c_int, _argv: *const *const libc::c_char) -> libc::c_int {
    open_standard_fds();
    // SAFETY: no handler is installed; SIG_IGN is what Rust's runtime sets, so that a write to a
    // closed pipe is an EPIPE error (the job gets SIGPIPE's default back, init::job::exec).
    unsafe { signal(Signal::SIGPIPE, SigHandler::SigIgn) }.expect("SIGPIPE is a signal");
    // A panic must not unwind into C, which aborts: it exits 101 as a Rust `main`'s would, once
    // the panic hook has printed it.
    std::process::exit(std::panic::catch_unwind(run).unwrap_or(101))
}

/// Opens /dev/null on each of fds 0, 1 and 2 that is closed, as Rust's runtime does: otherwise
/// the first files boxrun opens would take those numbers, its messages would be written into
/// them, and the job would inherit whatever they became.
fn open_standard_fds() {
    for fd in 0..=2 {
        // SAFETY: F_GETFD only reads the descriptor's flags.
        let closed = unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1;
        // SAFETY: a NUL-terminated path; open returns the lowest free descriptor, this one, as
        // the ones below it are open by now.
        if closed && unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR) } != fd {
            std::process::abort(); // no /dev/null: nothing safe to write a message to
        }
    }
}

fn run() -> i32 {
    let cli = boxrun::cli::parse(std::env::args_os().collect());
    init_logging(cli.verbose);
    match boxrun::commands::dispatch(cli.command) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("boxrun: error: {error}");
            error.exit_code()
        }
    }
}

/// `-v` prints debug detail, `-vv` trace; `BOXRUN_LOG` (e.g. `debug`) does the same. Without
/// either no subscriber is set up (40 µs of every start): tracing is for debug detail only, and
/// warnings and errors are printed where they arise.
fn init_logging(verbose: u8) {
    let from_env = || std::env::var("BOXRUN_LOG").ok().and_then(|v| v.parse().ok());
    let level = match verbose {
        0 => match from_env() {
            Some(level) => level,
            None => return,
        },
        1 => tracing::Level::DEBUG,
        _ => tracing::Level::TRACE,
    };
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_target(false)
        .without_time()
        .init();
}

/// boxrun's one use of the C math library is `f64::powf` in indicatif's rate estimator. Defining
/// `pow` here, from the libm crate, keeps `libm.so` out of the binary's needed libraries, so
/// that no start pays for loading it (0.1 ms measured; `ldd boxrun` shows libc only).
#[unsafe(no_mangle)]
extern "C" fn pow(base: f64, exponent: f64) -> f64 {
    libm::pow(base, exponent)
}
