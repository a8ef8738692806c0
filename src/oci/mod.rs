//! `boxrun oci`: the OCI runtime commands that Slurm's `oci.conf` names, so that
//! `srun --container=BUNDLE cmd` and `sbatch --container` run in boxrun's sandbox
//! (contrib/slurm/oci.conf). `run` starts the bundle in the foreground, as the job's task, in
//! the step's cgroup; `state`, `kill` and `delete` act on it by id afterwards.
//!
//! slurmstepd runs `state`, `kill` and `delete` as root with slurmd's environment. With
//! `--user NAME` (oci.conf passes `%u`) root first becomes that user, so it only ever reads
//! that user's state directory and signals that user's processes: a state file cannot make
//! root signal anything the user could not.

pub mod bundle;

use std::path::{Path, PathBuf};

use nix::sys::signal::Signal;
use serde::Serialize;
use thiserror::Error;

use crate::cli::{OciArgs, OciCommand};
use crate::config::Settings;
use crate::run::identity_files;
use crate::sandbox::plan::{self, MountOp, RunPlan};
use crate::state::{self, ContainerState};
use crate::store::Store;

#[derive(Debug, Error)]
pub enum OciError {
    #[error(transparent)]
    Bundle(#[from] bundle::BundleError),
    #[error("invalid container id '{0}': use letters, digits and . _ - (no '/', not starting with '.')")]
    BadId(String),
    #[error("a container with id '{0}' is already running")]
    Exists(String),
    #[error("container '{0}' does not exist")]
    NotFound(String),
    #[error("container '{0}' is not running")]
    NotRunning(String),
    #[error("container '{0}' is still running: stop it first or use --force")]
    Running(String),
    #[error("the bundle's rootfs {0} is not a directory")]
    NoRootfs(PathBuf),
    #[error("--user {0}: {1}")]
    User(String, String),
    #[error(
        "`boxrun oci {0}` is not supported: configure RunTimeRun (not RunTimeCreate/RunTimeStart) in oci.conf, as contrib/slurm/oci.conf does"
    )]
    CreateStart(&'static str),
    #[error("cannot set {0:?} to {1}: {2}")]
    Rlimit(nix::sys::resource::Resource, u64, nix::errno::Errno),
}

/// Run one `boxrun oci` command; the exit status.
pub fn dispatch(args: OciArgs) -> Result<i32, crate::Error> {
    if let Some(user) = &args.user {
        become_user(user)?;
    }
    match args.command {
        OciCommand::State { id } => show_state(&id),
        OciCommand::Run { bundle, id } => run(&bundle, &id),
        OciCommand::Kill { id, signal, all: _ } => {
            let signal = state::parse_signal(&signal).ok_or(crate::Error::BadSignal(signal))?;
            let container = running(&id)?;
            state::signal(&container, signal)?;
            Ok(0)
        }
        OciCommand::Delete { id, force } => delete(&id, force),
        OciCommand::Create { .. } => Err(OciError::CreateStart("create").into()),
        OciCommand::Start { .. } => Err(OciError::CreateStart("start").into()),
    }
}

/// Root becomes `name` (groups, gid, uid, in that order: each needs the privilege the next
/// drops). Anyone else may only name themselves.
fn become_user(name: &str) -> Result<(), OciError> {
    use nix::unistd::{Gid, Uid, geteuid, setgid, setgroups, setuid};
    let fail = |why: String| OciError::User(name.into(), why);
    let account = crate::accounts::user_by_name(name).ok_or_else(|| fail("no such user".into()))?;
    let (uid, gid) = (Uid::from_raw(account.uid), Gid::from_raw(account.gid));
    if geteuid() == uid {
        return Ok(());
    }
    if !geteuid().is_root() {
        return Err(fail("only root can act on another user's containers".into()));
    }
    setgroups(&[gid]).map_err(|e| fail(format!("setgroups: {e}")))?;
    setgid(gid).map_err(|e| fail(format!("setgid: {e}")))?;
    setuid(uid).map_err(|e| fail(format!("setuid: {e}")))?;
    debug_assert!(geteuid() != Uid::from_raw(0));
    Ok(())
}

fn check_id(id: &str) -> Result<(), OciError> {
    let ok = !id.is_empty()
        && !id.starts_with('.')
        && id.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if ok { Ok(()) } else { Err(OciError::BadId(id.into())) }
}

/// The runtime spec's state object, as `runc state` prints it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct OciState<'a> {
    oci_version: &'static str,
    id: &'a str,
    status: &'static str,
    pid: i32,
    bundle: String,
}

/// `state ID`: the state JSON on stdout, nothing on stderr (Slurm parses both together).
fn show_state(id: &str) -> Result<i32, crate::Error> {
    check_id(id)?;
    let (container, alive) = state::lookup(id)?.ok_or_else(|| OciError::NotFound(id.into()))?;
    let state = OciState {
        oci_version: "1.0.2",
        id,
        status: if alive { "running" } else { "stopped" },
        pid: if alive { container.pid } else { 0 },
        bundle: container.bundle.map(|b| b.display().to_string()).unwrap_or_default(),
    };
    println!("{}", serde_json::to_string(&state).expect("state serialises"));
    Ok(0)
}

fn running(id: &str) -> Result<ContainerState, crate::Error> {
    check_id(id)?;
    match state::lookup(id)? {
        Some((container, true)) => Ok(container),
        Some(_) => Err(OciError::NotRunning(id.into()).into()),
        None => Err(OciError::NotFound(id.into()).into()),
    }
}

/// `delete [--force] ID`: forget a stopped container; with --force, SIGKILL a running one
/// first (its PID 1 dies with it, and the kernel then kills the whole PID namespace).
fn delete(id: &str, force: bool) -> Result<i32, crate::Error> {
    check_id(id)?;
    match state::lookup(id)? {
        None if force => return Ok(0),
        None => return Err(OciError::NotFound(id.into()).into()),
        Some((_, true)) if !force => return Err(OciError::Running(id.into()).into()),
        Some((container, true)) => {
            state::signal(&container, Signal::SIGKILL)?;
        }
        Some(_) => {}
    }
    state::forget(id)?;
    Ok(0)
}

/// `run --bundle B ID`: start the bundle's process in boxrun's sandbox, in the foreground;
/// exits with its status.
fn run(bundle: &Path, id: &str) -> Result<i32, crate::Error> {
    check_id(id)?;
    let settings = Settings::load()?;
    let store = Store::open(&settings.cache_dir, &settings.data_dir)?;
    let bundle = std::path::absolute(bundle).unwrap_or_else(|_| bundle.to_path_buf());
    let user = crate::run::host_user();
    let container =
        bundle::read(&bundle).and_then(|spec| spec.container(&bundle, &user)).map_err(OciError::from)?;
    if !container.rootfs.is_dir() {
        return Err(OciError::NoRootfs(container.rootfs).into());
    }
    for &(resource, soft, hard) in &container.rlimits {
        nix::sys::resource::setrlimit(resource, soft, hard)
            .map_err(|e| OciError::Rlimit(resource, soft, e))?;
    }
    let mut mounts = container.mounts;
    for op in &mut mounts {
        if let MountOp::Dev { devices, .. } = op {
            *devices = crate::sandbox::dev::host_devices();
        }
    }
    mounts.extend(identity_files(&container.rootfs, &user, container.fakeroot));
    let extra = plan::protect(&mounts, &crate::run::protected_dirs(&settings));
    mounts.extend(extra);
    let mut env = container.env;
    let host = crate::run::HostEnv::read();
    for (key, value) in crate::scheduler::slurm_task_env(&host.by_name, &env) {
        plan::set_default_var(&mut env, &key, value);
    }
    crate::run::set_path_and_home(&mut env, &user);
    env.retain(|(k, _)| k != "BOXRUN_CONTAINER");
    env.push(("BOXRUN_CONTAINER".into(), id.into()));
    let mut plan = RunPlan {
        rootfs: container.rootfs,
        scratch: store.mnt_dir(),
        top_layers: None,
        writable: container.writable,
        argv: container.argv,
        env,
        workdir: container.workdir,
        uid: user.uid,
        gid: user.gid,
        fakeroot: container.fakeroot,
        namespaces: container.namespaces,
        hostname: container.hostname,
        mounts,
        stats: None,
        forward_interrupts: true,
        seccomp: crate::run::seccomp_choice(&settings, None, false)?,
        keep_caps: settings.fakeroot_capabilities.clone(),
        report: false,
        record: None,
    };
    let job = crate::scheduler::Job::detect(&plan.env.iter().cloned().collect()).id();
    let mut record =
        ContainerState::of_this_process(id.into(), bundle.display().to_string(), job, plan.argv.clone());
    record.bundle = Some(bundle);
    let state_file = state::register_exact(&state::dir()?, &record).map_err(|e| match e {
        state::StateError::Taken(_) => crate::Error::from(OciError::Exists(id.into())),
        other => other.into(),
    })?;
    plan.record = Some(plan::Record::File(state_file));
    Err(crate::run::start(&plan, true))
}
