//! Running containers, for `boxrun ps` and `boxrun kill`: one small JSON file per container in
//! the user's runtime directory, `$XDG_RUNTIME_DIR/boxrun` (else `/tmp/boxrun-<uid>`, mode
//! 0700, so no other user sees or signals them). Written before the container starts, removed
//! by the relay when it ends; a file whose process is gone (SIGKILL) is pruned when listed.

use std::path::{Path, PathBuf};

use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum StateError {
    #[error("cannot {action} {path}: {source}")]
    Io { action: &'static str, path: PathBuf, source: std::io::Error },
    #[error("{path} belongs to another user; set XDG_RUNTIME_DIR to a directory of your own")]
    NotOurs { path: PathBuf },
    #[error("no running container named '{0}' (see `boxrun ps`)")]
    Unknown(String),
    #[error("a running container is named '{0}' already")]
    Taken(String),
}

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> StateError + 'a {
    move |source| StateError::Io { action, path: path.to_path_buf(), source }
}

/// What `boxrun ps` shows of one container.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ContainerState {
    pub name: String,
    pub image: String,
    pub job: Option<String>,
    /// The outer boxrun (the relay): signals sent to it reach the job.
    pub pid: i32,
    /// The relay's start time in clock ticks (/proc/PID/stat field 22): a reused pid differs.
    pub start_ticks: u64,
    /// Seconds since the epoch.
    pub started_at: u64,
    pub command: Vec<String>,
    /// The OCI bundle it was started from (`boxrun oci run`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle: Option<PathBuf>,
}

/// The state directory, created 0700 if missing. `$XDG_RUNTIME_DIR` counts only where it is a
/// directory: a batch job inherits the login node's (sbatch exports the environment), and the
/// compute node, with no login session, has no /run/user/UID.
pub fn dir() -> Result<PathBuf, StateError> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let uid = nix::unistd::getuid().as_raw();
    let runtime = std::env::var_os("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()).map(PathBuf::from);
    let dir = match runtime.filter(|runtime| runtime.is_dir()) {
        Some(runtime) => runtime.join("boxrun"),
        None => PathBuf::from(format!("/tmp/boxrun-{uid}")),
    };
    // std's DirBuilder (fs_err has none): its error is mapped to one naming the path below.
    #[allow(clippy::disallowed_methods)]
    let created = std::fs::DirBuilder::new().mode(0o700).create(&dir);
    match created {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io("create", &dir)(e)),
    }
    // In a shared /tmp, someone else could have made it first.
    let meta = fs_err::symlink_metadata(&dir).map_err(io("inspect", &dir))?;
    if meta.uid() != uid || !meta.is_dir() {
        return Err(StateError::NotOurs { path: dir });
    }
    Ok(dir)
}

/// The start time of process `pid` in clock ticks, if it exists.
pub fn start_ticks(pid: i32) -> Option<u64> {
    use std::io::Read;
    // One read: the file is a few hundred bytes, but says its size is 0, so read_to_string
    // would read it in six growing steps.
    let mut buf = [0u8; 1024];
    let read = fs_err::File::open(format!("/proc/{pid}/stat")).ok()?.read(&mut buf).ok()?;
    let stat = String::from_utf8_lossy(&buf[..read]);
    // The command name (field 2) may hold spaces and parentheses: count from the last ')'.
    stat.rsplit_once(')')?.1.split_whitespace().nth(19)?.parse().ok()
}

impl ContainerState {
    /// The record of a container this process starts and relays for.
    pub fn of_this_process(name: String, image: String, job: Option<String>, command: Vec<String>) -> Self {
        let pid = std::process::id() as i32;
        ContainerState {
            name,
            image,
            job,
            pid,
            start_ticks: start_ticks(pid).unwrap_or(0),
            started_at: crate::unix_time(),
            command,
            bundle: None,
        }
    }

    fn alive(&self) -> bool {
        start_ticks(self.pid) == Some(self.start_ticks)
    }
}

/// Record a starting container in the state directory `dir` under its name (suffixed `-2`,
/// `-3`… if a live container has it already); the file's path, for the relay to remove at the end.
pub fn register(dir: &Path, state: &mut ContainerState) -> Result<PathBuf, StateError> {
    let base = state.name.clone();
    for n in 1.. {
        if n > 1 {
            state.name = format!("{base}-{n}");
        }
        match register_exact(dir, state) {
            Err(StateError::Taken(_)) => continue,
            result => return result,
        }
    }
    unreachable!("an unused name exists")
}

/// Record a starting container in `dir` under exactly its name (an OCI id), unless a live
/// container has it.
pub fn register_exact(dir: &Path, state: &ContainerState) -> Result<PathBuf, StateError> {
    let path = dir.join(format!("{}.json", state.name));
    if read(&path).is_some_and(|existing| existing.alive()) {
        return Err(StateError::Taken(state.name.clone()));
    }
    let json = serde_json::to_vec(state).expect("state serialises");
    let staging = dir.join(format!(".{}.{}", state.name, std::process::id()));
    fs_err::write(&staging, json).map_err(io("write", &staging))?;
    fs_err::rename(&staging, &path).map_err(io("write", &path))?;
    Ok(path)
}

/// The container recorded as `name`, and whether it is still alive.
pub fn lookup(name: &str) -> Result<Option<(ContainerState, bool)>, StateError> {
    let path = dir()?.join(format!("{name}.json"));
    Ok(read(&path).map(|state| {
        let alive = state.alive();
        (state, alive)
    }))
}

/// Remove the record of `name` (gone already is fine).
pub fn forget(name: &str) -> Result<(), StateError> {
    let path = dir()?.join(format!("{name}.json"));
    match fs_err::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io("remove", &path)(e)),
        _ => Ok(()),
    }
}

fn read(path: &Path) -> Option<ContainerState> {
    serde_json::from_slice(&fs_err::read(path).ok()?).ok()
}

/// The user's running containers, oldest first; files of dead ones are removed.
pub fn list() -> Result<Vec<ContainerState>, StateError> {
    let dir = dir()?;
    let mut running = Vec::new();
    for entry in fs_err::read_dir(&dir).map_err(io("list", &dir))? {
        let path = entry.map_err(io("list", &dir))?.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        match read(&path) {
            Some(state) if state.alive() => running.push(state),
            // Dead (killed before it could clean up) or unreadable: prune, best effort.
            _ => drop(fs_err::remove_file(&path)),
        }
    }
    running.sort_by_key(|s| (s.started_at, s.name.clone()));
    Ok(running)
}

/// Send `signal` to the container `name` (its relay forwards it to the job).
pub fn kill(name: &str, signal: Signal) -> Result<(), StateError> {
    match lookup(name)? {
        Some((state, true)) => self::signal(&state, signal),
        _ => Err(StateError::Unknown(name.into())),
    }
}

/// Send `signal` to a container's relay, which forwards it to the job (SIGKILL ends the relay,
/// and with it the container's PID 1 and every process of its PID namespace).
pub fn signal(state: &ContainerState, signal: Signal) -> Result<(), StateError> {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(state.pid), signal).map_err(|e| StateError::Io {
        action: "signal",
        path: format!("/proc/{}", state.pid).into(),
        source: e.into(),
    })
}

/// A signal by name (`TERM`, `SIGUSR1`, any case) or number.
pub fn parse_signal(text: &str) -> Option<Signal> {
    let name = text.to_ascii_uppercase();
    match name.parse::<i32>() {
        Ok(number) => Signal::try_from(number).ok(),
        Err(_) if name.starts_with("SIG") => name.parse().ok(),
        Err(_) => format!("SIG{name}").parse().ok(),
    }
}
