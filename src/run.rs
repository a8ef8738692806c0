//! `boxrun run IMAGE CMD...`, the outer side: find (or pull and unpack) the image, make the
//! run plan, and start the init: in this very process on the warm path (it started no thread),
//! else by re-executing boxrun single-threaded with the plan on a memfd.
//!
//! The warm path (image cached and unpacked) reads the image record and the image's
//! /etc/passwd and /etc/group and stats the rootfs: no network, no layer JSON, no exec.

use std::collections::HashMap;
use std::ffi::CString;
use std::io::{IsTerminal, Write};
use std::os::fd::IntoRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use clap::Parser;
use thiserror::Error;

use crate::cli::{PidArg, RunArgs, StatsArg, WrapArgs};
use crate::config::Settings;
use crate::platform::Platform;
use crate::progress::{self, Progress};
use crate::pull::{PullOptions, pull};
use crate::reference::Reference;
use crate::rootfs;
use crate::sandbox::plan::{self, MountOp, Namespaces, PlanError, Record, RunPlan, StatsFormat, User};
use crate::sandbox::seccomp::{self, Seccomp};
use crate::scheduler::{self, Job};
use crate::store::Store;
use crate::store::refs::ImageRecord;

#[derive(Debug, Error)]
pub enum RunError {
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error("cannot start the container: {0}")]
    Exec(String),
    #[error("{0}")]
    Policy(String),
}

/// Prepare and start the job; returns only on failure (on success the process becomes init).
pub fn run(settings: &Settings, store: &Store, args: RunArgs) -> Result<i32, crate::Error> {
    let reference = Reference::parse(&args.image, &settings.default_registry)?;
    let platform = args.platform.as_deref().map(Platform::parse).transpose()?;
    let progress = Progress::new(progress::Mode::detect(args.quiet));
    let (record, pulled) = record_or_pull(settings, store, &reference, platform, &progress)?;
    let (rootfs, built) = rootfs::ensure(store, &record, &progress)?;
    let host = HostEnv::read();
    let mut plan = make_plan(settings, store, &record, rootfs, &args, &host)?;
    let job = Job::detect(&host.by_name);
    let name = args.name.clone().unwrap_or_else(|| job.container_name());
    plan.record = Some(Record::Register { name, image: record.reference.clone(), job: job.id() });
    Err(start(&plan, !pulled && !built))
}

/// The cached record of `reference`, or a pull's; and whether this process pulled. Jobs that
/// start together on an image the cache lacks pull it in turn: the first asks the registry,
/// the others find its record once they hold the lock, and ask nothing.
fn record_or_pull(
    settings: &Settings,
    store: &Store,
    reference: &Reference,
    platform: Option<Platform>,
    progress: &Progress,
) -> Result<(ImageRecord, bool), crate::Error> {
    let host = Platform::host();
    let wanted = platform.as_ref().unwrap_or(&host);
    if let Some(record) = store.load_record(reference, wanted)? {
        return Ok((record, false));
    }
    let _turn = store.lock_reference(reference, wanted, || {
        progress.note(&format!("{reference}: waiting for another boxrun to pull it"))
    })?;
    if let Some(record) = store.load_record(reference, wanted)? {
        return Ok((record, false));
    }
    let record = pull(settings, store, reference, &PullOptions { platform, offline: false }, progress)?;
    Ok((record, true))
}

/// Start the container of `plan`; returns only on failure. When this process started no
/// thread (`may_start_here`: nothing was pulled or unpacked), it enters the namespaces itself,
/// saving an exec; otherwise a fresh single-threaded exec of boxrun does.
pub(crate) fn start(plan: &RunPlan, may_start_here: bool) -> crate::Error {
    if may_start_here && single_threaded() {
        crate::init::start(plan);
    }
    let error = exec_init(plan);
    if let Some(Record::File(record)) = &plan.record {
        drop(fs_err::remove_file(record)); // the container never started
    }
    crate::Error::Run(error)
}

/// The host environment, read once per run: the job's environment starts from it (in its
/// order); the scheduler's job and an MPI launcher show in it (by name).
pub(crate) struct HostEnv {
    vars: Vec<(String, String)>,
    pub(crate) by_name: HashMap<String, String>,
}

impl HostEnv {
    /// Lossy where a variable is not UTF-8 (`std::env::vars` would panic on it).
    pub(crate) fn read() -> HostEnv {
        let vars: Vec<(String, String)> = std::env::vars_os()
            .map(|(k, v)| (k.to_string_lossy().into_owned(), v.to_string_lossy().into_owned()))
            .collect();
        let by_name = vars.iter().cloned().collect();
        HostEnv { vars, by_name }
    }
}

/// `boxrun wrap -- CMD...`: run CMD in the image the scheduler's environment names, with the
/// options of `BOXRUN_OPTS`, or bare when it names none.
pub fn wrap(settings: &Settings, store: &Store, args: WrapArgs) -> Result<i32, crate::Error> {
    let env: HashMap<String, String> = std::env::vars().collect();
    let Some(image) = scheduler::wrap_image(&env) else {
        if settings.wrap_require_image {
            return Err(RunError::Policy(
                "this site runs every job in a container: set BOXRUN_IMAGE (or CONTAINER_IMAGE) to an image"
                    .into(),
            )
            .into());
        }
        let error = std::process::Command::new(&args.command[0]).args(&args.command[1..]).exec();
        let code = if error.kind() == std::io::ErrorKind::NotFound { 127 } else { 126 };
        eprintln!("boxrun: error: cannot execute '{}': {error}", args.command[0]);
        return Ok(code);
    };
    let options: Vec<String> = env
        .get("BOXRUN_OPTS")
        .map(|o| o.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default();
    let argv =
        ["boxrun".to_string(), "run".into()].into_iter().chain(options).chain([image]).chain(args.command);
    match crate::cli::Cli::try_parse_from(argv) {
        Ok(crate::cli::Cli { command: crate::cli::Command::Run(run_args), .. }) => {
            run(settings, store, *run_args)
        }
        Ok(_) => unreachable!("the argv starts with `run`"),
        Err(e) => Err(RunError::Policy(format!(
            "invalid BOXRUN_OPTS: {}",
            e.to_string().lines().next().unwrap_or("")
        ))
        .into()),
    }
}

fn make_plan(
    settings: &Settings,
    store: &Store,
    record: &ImageRecord,
    rootfs: PathBuf,
    args: &RunArgs,
    host: &HostEnv,
) -> Result<RunPlan, RunError> {
    let cwd = std::env::current_dir()
        .map_err(|e| RunError::Exec(format!("cannot find the current directory: {e}")))?;
    let user = host_user();
    let mpi_rank = scheduler::is_mpi_rank(&host.by_name);
    let mut mounts = vec![
        MountOp::Proc,
        MountOp::Dev { private_shm: args.ipc, devices: crate::sandbox::dev::host_devices() },
        MountOp::Sys,
        tmp_mount(settings)?,
        MountOp::Tmpfs { dst: "/var/tmp".into(), mode: 0o1777 },
    ];
    let home_bound = !args.no_home && !plan::is_system_path(&user.home);
    if home_bound {
        mounts.push(MountOp::Bind {
            src: user.home.clone(),
            dst: user.home.clone(),
            readonly: false,
            optional: true,
        });
    }
    let cwd_bound = !args.no_cwd && !plan::is_system_path(&cwd);
    if cwd_bound && !(home_bound && cwd.starts_with(&user.home)) {
        mounts.push(MountOp::Bind { src: cwd.clone(), dst: cwd.clone(), readonly: false, optional: false });
    }
    for dir in scheduler::mpi_directories(&host.by_name) {
        mounts.push(MountOp::Bind { src: dir.clone(), dst: dir, readonly: false, optional: true });
    }
    for spec in &settings.mount_paths {
        let (src, dst, readonly) = plan::parse_bind(spec, &cwd)?;
        mounts.push(MountOp::Bind { src, dst, readonly, optional: true });
    }
    for spec in &args.binds {
        mounts.push(plan::checked_bind(spec, &cwd, "--bind")?);
    }
    mounts.extend(identity_files(&rootfs, &user, args.fakeroot));
    // Copies, as podman makes them, rather than binds: two mounts fewer at every start. A job
    // sees the host's files as they were when it started.
    for file in ["/etc/hosts", "/etc/resolv.conf"] {
        if let Ok(contents) = crate::small_file::read_to_string(Path::new(file)) {
            mounts.push(MountOp::File { dst: file.into(), contents });
        }
    }
    // ORDER: after every bind that could expose them: the cache and the unpacked images stay
    // read-only to the job even where they live under its home or working directory.
    let extra = plan::protect(&mounts, &protected_dirs(settings));
    mounts.extend(extra);
    let workdir = match &args.workdir {
        Some(dir) if !dir.starts_with('/') => return Err(PlanError::RelativeWorkdir(dir.clone()).into()),
        Some(dir) => PathBuf::from(dir),
        None if cwd_bound => cwd,
        None => record.run.working_dir.clone().map_or_else(|| PathBuf::from("/"), PathBuf::from),
    };
    let argv = record.run.argv(args.entrypoint.as_deref(), &args.command);
    if argv.is_empty() && !args.security_report {
        return Err(PlanError::NoCommand.into());
    }
    Ok(RunPlan {
        rootfs,
        scratch: store.mnt_dir(),
        top_layers: (!args.writable_tmpfs).then(|| store.clone()),
        writable: args.writable_tmpfs,
        argv,
        env: environment(settings, record, args, &user, &host.vars, mpi_rank)?,
        workdir,
        uid: user.uid,
        gid: user.gid,
        fakeroot: args.fakeroot,
        namespaces: Namespaces {
            uts: args.uts || args.hostname.is_some(),
            ipc: args.ipc,
            net: args.net,
            host_pid: match args.pid {
                PidArg::Host => true,
                PidArg::Private => false,
                PidArg::Auto => mpi_rank,
            },
        },
        hostname: args.hostname.clone(),
        mounts,
        stats: args.stats.map(|s| match s {
            StatsArg::Text => StatsFormat::Text,
            StatsArg::Json => StatsFormat::Json,
        }),
        forward_interrupts: !std::io::stdin().is_terminal(),
        seccomp: seccomp_choice(settings, args.seccomp.as_deref(), args.allow_nested)?,
        keep_caps: settings.fakeroot_capabilities.clone(),
        report: args.security_report,
        record: None,
    })
}

/// /etc/passwd and /etc/group for the container: the image's, with the user (or root) in them.
pub(crate) fn identity_files(rootfs: &Path, user: &User, fakeroot: bool) -> [MountOp; 2] {
    let [passwd, group] = crate::unpack::root::read_files(rootfs, ["etc/passwd", "etc/group"]);
    [
        MountOp::File {
            dst: "/etc/passwd".into(),
            contents: plan::passwd(passwd.as_deref(), user, fakeroot),
        },
        MountOp::File { dst: "/etc/group".into(), contents: plan::group(group.as_deref(), user, fakeroot) },
    ]
}

/// The container's /tmp: a private tmpfs, or with `tmp_from = "scratch"` a directory in the
/// scheduler's per-job scratch space (which the scheduler cleans), when the job has one.
fn tmp_mount(settings: &Settings) -> Result<MountOp, RunError> {
    // Read as OsStrings: a scratch path need not be UTF-8.
    let scratch =
        ["_CONDOR_SCRATCH_DIR", "TMPDIR"].iter().find_map(|k| std::env::var_os(k).filter(|v| !v.is_empty()));
    match (settings.tmp_from, scratch) {
        (crate::config::TmpFrom::Scratch, Some(scratch)) => {
            let dir = PathBuf::from(scratch).join("boxrun-tmp");
            fs_err::create_dir_all(&dir)
                .map_err(|e| RunError::Exec(format!("cannot create /tmp's scratch directory: {e}")))?;
            Ok(MountOp::Bind { src: dir, dst: "/tmp".into(), readonly: false, optional: false })
        }
        _ => Ok(MountOp::Tmpfs { dst: "/tmp".into(), mode: 0o1777 }),
    }
}

/// The seccomp filters: `--seccomp`, else the site's profile, else the built-in one.
pub(crate) fn seccomp_choice(
    settings: &Settings,
    choice: Option<&str>,
    allow_nested: bool,
) -> Result<Seccomp, RunError> {
    let file = match choice {
        Some("unconfined") if settings.allow_unconfined => return Ok(Seccomp::Unconfined),
        Some("unconfined") => return Err(RunError::Policy(
            "--seccomp=unconfined is not allowed on this system (the site's config sets allow_unconfined = false)".into(),
        )),
        Some(file) => Some(PathBuf::from(file)),
        None => settings.seccomp.clone(),
    };
    match file {
        Some(file) => seccomp::compile_file(&file, allow_nested)
            .map_err(|e| RunError::Policy(format!("invalid seccomp profile {}: {e}", file.display()))),
        None if allow_nested => Ok(Seccomp::Nested),
        None => Ok(Seccomp::Default),
    }
}

/// The cache and the unpacked images: kept read-only under any writable bind.
pub(crate) fn protected_dirs(settings: &Settings) -> Vec<PathBuf> {
    let mut protected = vec![settings.cache_dir.clone()];
    if !settings.data_dir.starts_with(&settings.cache_dir) {
        protected.push(settings.data_dir.clone());
    }
    protected
}

/// The job's environment from the host's `host` (`mpi_rank`: started by an MPI launcher).
fn environment(
    settings: &Settings,
    record: &ImageRecord,
    args: &RunArgs,
    user: &User,
    host: &[(String, String)],
    mpi_rank: bool,
) -> Result<Vec<(String, String)>, PlanError> {
    let mut overrides = Vec::new();
    for file in &args.env_file {
        overrides.extend(plan::read_env_file(file)?);
    }
    overrides.extend(args.env.iter().cloned());
    let mut env =
        plan::environment(host, args.clean_env, &settings.remove_env_keys, &record.run.env, &overrides)?;
    set_path_and_home(&mut env, user);
    if mpi_rank {
        // Each rank has its own user namespace, across which the kernel refuses Open MPI's
        // default single-copy mechanism (CMA): say so up front rather than per rank.
        plan::set_default_var(&mut env, "OMPI_MCA_btl_vader_single_copy_mechanism", "none".into());
    }
    env.retain(|(k, _)| k != "BOXRUN_IMAGE" && k != "BOXRUN_CONTAINER");
    env.push(("BOXRUN_IMAGE".into(), record.reference.clone()));
    env.push(("BOXRUN_CONTAINER".into(), format!("boxrun-{}", std::process::id())));
    Ok(env)
}

/// PATH for a job whose image and environment set none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// PATH and HOME, where neither the image nor the environment set them.
pub(crate) fn set_path_and_home(env: &mut Vec<(String, String)>, user: &User) {
    plan::set_default_var(env, "PATH", DEFAULT_PATH.into());
    plan::set_default_var(env, "HOME", user.home.display().to_string());
}

/// The user as the host knows them (directory accounts too, see `accounts`), with fallbacks to
/// the environment where there is no entry.
pub(crate) fn host_user() -> User {
    use nix::unistd::{getgid, getuid};
    let (uid, gid) = (getuid().as_raw(), getgid().as_raw());
    let env = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    // /etc/passwd first, then $USER and $HOME (set in every login and batch job): only where
    // neither knows does this ask the host's directory service.
    let entry = match (env("USER"), env("HOME")) {
        (Some(_), Some(_)) => crate::accounts::local_user(uid),
        _ => crate::accounts::user_by_uid(uid),
    };
    let name = entry.as_ref().map(|e| e.name.clone()).or_else(|| env("USER")?.into_string().ok());
    // $HOME first: it is what the job's environment says, and what a user may have pointed
    // elsewhere on purpose; the passwd entry where it is unset.
    let home = env("HOME").map(PathBuf::from).or_else(|| entry.map(|e| e.home));
    User {
        uid,
        gid,
        name: name.unwrap_or_else(|| format!("user{uid}")),
        group: crate::accounts::group_name(gid).unwrap_or_else(|| format!("group{gid}")),
        home: home.unwrap_or_else(|| PathBuf::from("/")),
    }
}

/// Does this process have one thread (`unshare(CLONE_NEWUSER)` fails with EINVAL otherwise)?
fn single_threaded() -> bool {
    fs_err::read_dir("/proc/self/task").is_ok_and(|tasks| tasks.count() == 1)
}

/// Put the plan on a memfd and exec `/proc/self/exe __init --plan-fd N`. The exec ends every
/// thread the pull started: the init starts single-threaded, as `unshare(CLONE_NEWUSER)` needs.
fn exec_init(plan: &RunPlan) -> RunError {
    let fail = |what: &str, e: &dyn std::fmt::Display| RunError::Exec(format!("{what}: {e}"));
    let json = serde_json::to_vec(plan).expect("a plan always serialises");
    // No MFD_CLOEXEC: the fd must survive the exec.
    let memfd = match nix::sys::memfd::memfd_create("boxrun-plan", nix::sys::memfd::MFdFlags::empty()) {
        Ok(fd) => fd,
        Err(e) => return fail("memfd_create", &e),
    };
    let mut file = std::fs::File::from(memfd);
    if let Err(e) = file.write_all(&json) {
        return fail("write the plan", &e);
    }
    if let Err(e) = std::io::Seek::rewind(&mut file) {
        return fail("rewind the plan", &e);
    }
    let fd = file.into_raw_fd();
    let _ = std::io::stdout().flush();
    let argv = [
        c"boxrun".to_owned(),
        c"__init".to_owned(),
        c"--plan-fd".to_owned(),
        CString::new(fd.to_string()).expect("digits"),
    ];
    let env: Vec<CString> = std::env::vars_os()
        .filter_map(|(k, v)| CString::new([k.as_encoded_bytes(), b"=", v.as_encoded_bytes()].concat()).ok())
        .collect();
    match nix::unistd::execve(c"/proc/self/exe", &argv, &env) {
        Err(e) => fail("re-execute /proc/self/exe", &e),
    }
}
