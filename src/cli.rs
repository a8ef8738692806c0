//! The command line (clap derive only; no behaviour here).

use clap::{Args, FromArgMatches, Parser, Subcommand};

const EXAMPLES: &str = "\
Examples:
  boxrun ghcr.io/org/app:1.4 ./solver in.dat   run a job in the image (short for `boxrun run`)
  boxrun pull ghcr.io/org/app:1.4          fetch an image into your cache (on a login node)
  boxrun pull --platform linux/arm64 debian
  boxrun images                            list cached images
  boxrun rmi ghcr.io/org/app:1.4           forget an image (its blobs go at the next gc)
  boxrun gc                                free what no cached image needs

Images are cached per user under $BOXRUN_CACHE (default ~/.cache/boxrun).
Exit status: the job's own status; 128+N if a signal N killed it; 125 boxrun itself
failed (the message says why); 126 the command cannot be executed; 127 it was not found.";

/// Run OCI container images in HPC batch jobs: no daemon, no setuid, no root.
#[derive(Debug, Parser)]
#[command(name = "boxrun", version, about, after_help = EXAMPLES)]
pub struct Cli {
    /// Print debug detail (HTTP requests, locks) to stderr; twice for more.
    #[arg(long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a command in an image (pulled first if it is not cached): `boxrun IMAGE CMD...`
    #[command(after_help = RUN_HELP)]
    Run(Box<RunArgs>),
    /// Fetch an image from its registry into your cache
    #[command(
        after_help = "Credentials come from ~/.docker/config.json or $XDG_RUNTIME_DIR/containers/auth.json."
    )]
    Pull(PullArgs),
    /// List the images in your cache
    Images(ImagesArgs),
    /// Remove images from your cache
    Rmi(RmiArgs),
    /// Delete blobs that no cached image needs, and staging left by killed processes
    Gc(GcArgs),
    /// List your running containers
    Ps(PsArgs),
    /// Send a signal to one of your running containers (default SIGTERM)
    Kill(KillArgs),
    /// A scheduler's job wrapper: run CMD in $BOXRUN_IMAGE (or $CONTAINER_IMAGE), bare if unset
    #[command(after_help = WRAP_HELP)]
    Wrap(WrapArgs),
    /// The OCI runtime commands for Slurm's oci.conf (`srun --container=BUNDLE`)
    #[command(after_help = OCI_HELP)]
    Oci(OciArgs),
    /// (internal) the start path after the re-exec: namespaces, PID 1, the job
    #[command(name = "__init", hide = true)]
    Init {
        #[arg(long)]
        plan_fd: i32,
    },
}

const RUN_HELP: &str = "\
The job runs as you (same uid and gid; --fakeroot maps you to root inside), in new user, PID
and mount namespaces, with the host's network, in the cgroup the scheduler put you in. The
image is read-only; /tmp and /var/tmp are private; your home and the current directory are
bound (the job starts in the current directory); /dev, /proc, /sys are set up.
Environment: the host's, then the image's Env, then --env-file, then -e.";

const WRAP_HELP: &str = "\
Sites configure this as their job wrapper (HTCondor USER_JOB_WRAPPER, a PBS execjob_launch hook,
a Slurm srun wrapper): the image comes from BOXRUN_IMAGE, else CONTAINER_IMAGE; options from
BOXRUN_OPTS (e.g. \"--writable-tmpfs -v /scratch:/scratch\"). With neither image variable set the
command runs bare, so a cluster-wide wrapper does not break ordinary jobs (unless the site's
config sets wrap_require_image = true).";

const OCI_HELP: &str = "\
Slurm runs `run` as the job's task and `state`, `kill`, `delete` as root afterwards; give
those `--user %u` so they act as the job's user. See contrib/slurm/oci.conf. The bundle's
config.json is honoured where boxrun's sandbox can (args, env, cwd, user as yourself or root
inside, readonly root, proc/dev/sys/tmpfs/bind mounts, uts/ipc/network namespaces, hostname,
rlimits) and refused, naming the field, where it cannot. Capabilities, seccomp and
no_new_privs are boxrun's own, whatever the bundle asks.";

#[derive(Debug, Args)]
pub struct OciArgs {
    /// Act as this user (root only; slurmstepd runs state/kill/delete as root)
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,
    #[command(subcommand)]
    pub command: OciCommand,
}

#[derive(Debug, Subcommand)]
pub enum OciCommand {
    /// Print the container's state as OCI runtime-spec JSON
    State { id: String },
    /// Run the bundle's process in the foreground; exits with its status
    Run {
        /// The bundle directory (config.json and its rootfs)
        #[arg(short, long, default_value = ".")]
        bundle: std::path::PathBuf,
        id: String,
    },
    /// Send a signal (default SIGTERM) to the container
    Kill {
        /// Accepted for runc compatibility: the signal reaches the job; KILL ends every process
        #[arg(short, long)]
        all: bool,
        id: String,
        #[arg(default_value = "TERM")]
        signal: String,
    },
    /// Forget a stopped container; --force kills a running one first
    Delete {
        #[arg(short, long)]
        force: bool,
        id: String,
    },
    /// Not supported: use `run` (RunTimeRun)
    Create {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        rest: Vec<String>,
    },
    /// Not supported: use `run` (RunTimeRun)
    Start {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        rest: Vec<String>,
    },
}

#[derive(Debug, Args)]
pub struct PsArgs {
    /// Print JSON instead of a table
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct KillArgs {
    /// The container's name, as `boxrun ps` shows it
    pub name: String,
    /// Signal name or number (TERM, SIGUSR1, 9, ...)
    #[arg(default_value = "TERM")]
    pub signal: String,
}

#[derive(Debug, Args)]
pub struct WrapArgs {
    /// The job's command and its arguments
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true, num_args = 1..)]
    pub command: Vec<String>,
}

#[derive(Debug, PartialEq, Args)]
pub struct RunArgs {
    /// The container's name for `boxrun ps` and `boxrun kill` (default: from the scheduler's
    /// job, e.g. slurm-JOB.STEP.RANK, or a random one)
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Bind a host path into the container (repeatable)
    #[arg(short = 'v', long = "bind", value_name = "SRC[:DST[:ro|rw]]")]
    pub binds: Vec<String>,
    /// Set an environment variable; KEY alone copies the host's value (repeatable)
    #[arg(short = 'e', long = "env", value_name = "KEY[=VALUE]")]
    pub env: Vec<String>,
    /// Read environment variables from a file of KEY=VALUE lines (repeatable)
    #[arg(long, value_name = "FILE")]
    pub env_file: Vec<std::path::PathBuf>,
    /// Start from the image's environment only, not the host's
    #[arg(long)]
    pub clean_env: bool,
    /// Working directory inside the container (default: the current directory)
    #[arg(short = 'w', long, value_name = "DIR")]
    pub workdir: Option<String>,
    /// Replace the image's entrypoint ("" removes it)
    #[arg(long, value_name = "CMD")]
    pub entrypoint: Option<String>,
    /// Let the job write to the image; the changes live in memory and vanish at exit
    #[arg(long)]
    pub writable_tmpfs: bool,
    /// Map your user to root inside the container (it gains no privilege on the host)
    #[arg(long)]
    pub fakeroot: bool,
    /// Do not bind your home directory
    #[arg(long)]
    pub no_home: bool,
    /// Do not bind the current directory (the job starts in the image's WorkingDir)
    #[arg(long)]
    pub no_cwd: bool,
    /// A private hostname namespace (see --hostname)
    #[arg(long)]
    pub uts: bool,
    /// The container's hostname (implies --uts)
    #[arg(long, value_name = "NAME")]
    pub hostname: Option<String>,
    /// A private IPC namespace (and a private /dev/shm instead of the host's)
    #[arg(long)]
    pub ipc: bool,
    /// A private network namespace with loopback only
    #[arg(long)]
    pub net: bool,
    /// The PID namespace: private, host, or auto (host for an MPI rank, whose shared memory
    /// with the node's other ranks needs pids that differ; private otherwise)
    #[arg(long, value_enum, default_value_t = PidArg::Auto, value_name = "MODE")]
    pub pid: PidArg,
    /// Print wall time, CPU time and peak memory of the job at exit (text or json), to stderr
    #[arg(long, value_name = "FORMAT", num_args = 0..=1, require_equals = true, default_missing_value = "text")]
    pub stats: Option<StatsArg>,
    /// Seccomp profile file, or `unconfined` where the site allows it (default: built in)
    #[arg(long, value_name = "FILE|unconfined")]
    pub seccomp: Option<String>,
    /// Allow the job to create user namespaces of its own (nested containers)
    #[arg(long)]
    pub allow_nested: bool,
    /// Print the container's capabilities, NoNewPrivs, seccomp mode, id maps and mount flags
    /// as seen from inside, instead of running a command
    #[arg(long)]
    pub security_report: bool,
    /// Platform to pull if the image is not cached yet
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    pub platform: Option<String>,
    /// No progress output if the image must be pulled first
    #[arg(short, long)]
    pub quiet: bool,
    /// The image reference, as for `boxrun pull`
    pub image: String,
    /// The command and its arguments (default: the image's Entrypoint and Cmd)
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
    pub command: Vec<String>,
}

impl RunArgs {
    /// `IMAGE CMD...` when neither starts with `-` (so no option can be among them: all that
    /// follows the image is the command), as clap would parse it; None for anything else.
    fn without_options(args: &[std::ffi::OsString]) -> Option<RunArgs> {
        let mut words = args.iter().map(|a| a.to_str().map(str::to_string));
        let image = words.next()??;
        let command: Vec<String> = words.collect::<Option<_>>()?;
        let option = |word: Option<&String>| word.is_some_and(|w| w.starts_with('-'));
        if option(Some(&image)) || option(command.first()) {
            return None;
        }
        Some(RunArgs {
            name: None,
            binds: Vec::new(),
            env: Vec::new(),
            env_file: Vec::new(),
            clean_env: false,
            workdir: None,
            entrypoint: None,
            writable_tmpfs: false,
            fakeroot: false,
            no_home: false,
            no_cwd: false,
            uts: false,
            hostname: None,
            ipc: false,
            net: false,
            pid: PidArg::Auto,
            stats: None,
            seccomp: None,
            allow_nested: false,
            security_report: false,
            platform: None,
            quiet: false,
            image,
            command,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, clap::ValueEnum)]
pub enum PidArg {
    Auto,
    Private,
    Host,
}

#[derive(Clone, Copy, Debug, PartialEq, clap::ValueEnum)]
pub enum StatsArg {
    Text,
    Json,
}

/// Parse the command line. `boxrun [run] IMAGE CMD...` with no option, the start path of most
/// jobs, needs no parser at all (clap's `run` parser costs 0.13 ms per start); with options it
/// builds only the `run` subcommand's parser (the whole tree costs ~0.2 ms); help, `--version`
/// and errors take the whole tree, so they read the same either way.
pub fn parse(args: Vec<std::ffi::OsString>) -> Cli {
    let args = with_implicit_run(args);
    if args.get(1).is_some_and(|a| a == "run") {
        if let Some(run) = RunArgs::without_options(&args[2..]) {
            return Cli { verbose: 0, command: Command::Run(Box::new(run)) };
        }
        let verbose = clap::Arg::new("verbose").long("verbose").action(clap::ArgAction::Count);
        let parser = RunArgs::augment_args(clap::Command::new("run").arg(verbose).no_binary_name(true));
        let parsed = parser.try_get_matches_from(&args[2..]).and_then(|mut matches| {
            let verbose = matches.get_count("verbose");
            let run = RunArgs::from_arg_matches_mut(&mut matches)?;
            Ok(Cli { verbose, command: Command::Run(Box::new(run)) })
        });
        if let Ok(cli) = parsed {
            return cli;
        }
    }
    Cli::parse_from(args)
}

/// `boxrun IMAGE CMD...` means `boxrun run IMAGE CMD...`: insert `run` when the first
/// argument is neither a subcommand nor a top-level flag.
fn with_implicit_run(mut args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    let Some(first) = args.get(1).and_then(|a| a.to_str()) else { return args };
    let top_level_flags = ["-h", "--help", "-V", "--version", "--verbose"];
    // The derive's name match: building the whole command tree to ask would cost the start
    // path a second clap build.
    let is_subcommand = <Command as Subcommand>::has_subcommand(first) || first == "help";
    if !is_subcommand && !top_level_flags.contains(&first) {
        args.insert(1, "run".into());
    }
    args
}

#[derive(Debug, Args)]
pub struct PullArgs {
    /// Image reference: [HOST[:PORT]/]PATH[:TAG][@sha256:DIGEST]; one word means Docker Hub's library/
    pub image: String,
    /// Pull for another platform than this host's, e.g. linux/arm64
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    pub platform: Option<String>,
    /// Use only the cache: no network at all (fails if the image is not cached)
    #[arg(long)]
    pub offline: bool,
    /// Only fetch the blobs; do not unpack the image's rootfs (a job unpacks it when it starts)
    #[arg(long)]
    pub no_unpack: bool,
    /// No progress output
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct ImagesArgs {
    /// Print JSON (one array of image records) instead of a table
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RmiArgs {
    /// Image references, as given to pull
    #[arg(required = true)]
    pub images: Vec<String>,
}

#[derive(Debug, Args)]
pub struct GcArgs {
    /// Print the report as JSON
    #[arg(long)]
    pub json: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(args: &[&str]) -> Vec<std::ffi::OsString> {
        args.iter().map(Into::into).collect()
    }

    /// What clap makes of `boxrun run ARGS...`.
    fn by_clap(args: &[&str]) -> RunArgs {
        let argv = [&["boxrun", "run"][..], args].concat();
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Run(run) => *run,
            other => panic!("not a run: {other:?}"),
        }
    }

    #[test]
    fn a_run_without_options_is_what_clap_makes_of_it() {
        for args in [&["debian"][..], &["debian", "true"], &["reg:5000/a/b:1", "sh", "-c", "echo -v --help"]]
        {
            assert_eq!(RunArgs::without_options(&words(args)).as_ref(), Some(&by_clap(args)), "{args:?}");
        }
    }

    #[test]
    fn anything_with_an_option_goes_to_clap() {
        for args in [&["-v", "/a", "debian"][..], &["debian", "--help"], &["--fakeroot", "debian", "id"], &[]]
        {
            assert_eq!(RunArgs::without_options(&words(args)), None, "{args:?}");
        }
    }
}
