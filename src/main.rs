//! The `boxrun` binary: parse the command line, run the library, map failures to exit status.

fn main() {
    let cli = boxrun::cli::parse(std::env::args_os().collect());
    init_logging(cli.verbose);
    let code = match boxrun::commands::dispatch(cli.command) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("boxrun: error: {error}");
            error.exit_code()
        }
    };
    std::process::exit(code);
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
