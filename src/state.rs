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
/// compute node, with no login session, has no /run/user/UID. Its `boxrun` directory is made
/// without looking first: where the runtime directory is missing, that says so.
pub fn dir() -> Result<PathBuf, StateError> {
    dir_of(nix::unistd::getuid().as_raw())
}

/// [`dir`] of the host's user `uid`, from a process that may be in a user namespace where it
/// has another uid (`--fakeroot`: 0): the directory must belong to the uid it has there.
pub fn dir_of(uid: u32) -> Result<PathBuf, StateError> {
    use std::os::unix::fs::MetadataExt;
    let runtime = std::env::var_os("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()).map(PathBuf::from);
    let in_runtime = match runtime.map(|runtime| runtime.join("boxrun")) {
        Some(dir) => match make_private_dir(&dir) {
            Ok(()) => Some(dir),
            // No such runtime directory on this node: a batch job's, inherited.
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => None,
            Err(e) => return Err(io("create", &dir)(e)),
        },
        None => None,
    };
    let dir = match in_runtime {
        Some(dir) => dir,
        None => {
            let dir = PathBuf::from(format!("/tmp/boxrun-{uid}"));
            make_private_dir(&dir).map_err(io("create", &dir))?;
            dir
        }
    };
    // In a shared /tmp, someone else could have made it first.
    let meta = fs_err::symlink_metadata(&dir).map_err(io("inspect", &dir))?;
    if meta.uid() != nix::unistd::getuid().as_raw() || !meta.is_dir() {
        return Err(StateError::NotOurs { path: dir });
    }
    Ok(dir)
}

/// Create `dir` with mode 0700; there already is fine.
fn make_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    // std's DirBuilder (fs_err has none): the caller's error names the path.
    #[allow(clippy::disallowed_methods)]
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        result => result,
    }
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
        Self::of_relay(std::process::id() as i32, name, image, job, command)
    }

    /// The record of a container whose relay is `pid` (in the host's PID namespace).
    pub fn of_relay(
        pid: i32,
        name: String,
        image: String,
        job: Option<String>,
        command: Vec<String>,
    ) -> Self {
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
/// container has it. The file is created under its name at once (`O_EXCL`: one create, no
/// staging file to rename) and filled by one write; a reader that finds it empty or cut short
/// takes it for a record being written (see [`Found`]).
pub fn register_exact(dir: &Path, state: &ContainerState) -> Result<PathBuf, StateError> {
    let path = dir.join(format!("{}.json", state.name));
    let json = serde_json::to_vec(state).expect("state serialises");
    // A dead record in the way is removed and the create tried again: twice is enough unless
    // another start races this one for the name, which then has it.
    for _ in 0..3 {
        match fs_err::OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(mut file) => {
                use std::io::Write;
                if let Err(e) = file.write_all(&json) {
                    drop(fs_err::remove_file(&path));
                    return Err(io("write", &path)(e));
                }
                return Ok(path);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io("write", &path)(e)),
        }
        match Found::at(&path) {
            Found::Dead => match fs_err::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io("remove", &path)(e)),
                _ => {}
            },
            Found::Alive(_) | Found::Writing => break,
        }
    }
    Err(StateError::Taken(state.name.clone()))
}

/// What a record file holds, for a reader.
enum Found {
    Alive(ContainerState),
    /// Its relay is gone (SIGKILL left it behind), or the file is gone or unreadable.
    Dead,
    /// Empty or cut short, and new: its start is writing it (`register_exact`).
    Writing,
}

impl Found {
    /// A record that does not parse is one being written for a minute after its change, then
    /// one whose writer died in between.
    const WRITING_FOR: std::time::Duration = std::time::Duration::from_secs(60);

    fn at(path: &Path) -> Found {
        let Ok(bytes) = fs_err::read(path) else { return Found::Dead };
        match serde_json::from_slice::<ContainerState>(&bytes) {
            Ok(state) if state.alive() => Found::Alive(state),
            Ok(_) => Found::Dead,
            Err(_) => {
                let changed = fs_err::metadata(path).and_then(|meta| meta.modified());
                let age = changed.map(|at| at.elapsed().unwrap_or_default());
                if age.is_ok_and(|age| age < Self::WRITING_FOR) { Found::Writing } else { Found::Dead }
            }
        }
    }
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
    list_in(&dir()?)
}

fn list_in(dir: &Path) -> Result<Vec<ContainerState>, StateError> {
    let mut running = Vec::new();
    for entry in fs_err::read_dir(dir).map_err(io("list", dir))? {
        let path = entry.map_err(io("list", dir))?.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        match Found::at(&path) {
            Found::Alive(state) => running.push(state),
            // Dead (killed before it could clean up) or unreadable: prune, best effort.
            Found::Dead => drop(fs_err::remove_file(&path)),
            Found::Writing => {}
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

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str, pid: i32) -> ContainerState {
        ContainerState::of_relay(pid, name.into(), "img".into(), None, vec!["true".into()])
    }

    /// A record whose relay is gone: a pid no process has (above the kernel's pid_max limit).
    fn dead(name: &str) -> ContainerState {
        ContainerState { start_ticks: 1, ..record(name, 1 << 23) }
    }

    fn names(dir: &Path) -> Vec<String> {
        list_in(dir).unwrap().into_iter().map(|state| state.name).collect()
    }

    #[test]
    fn a_live_name_is_taken_and_the_next_free_suffix_is_given() {
        let dir = tempfile::tempdir().unwrap();
        let mut first = ContainerState::of_this_process("job".into(), "img".into(), None, vec![]);
        register(dir.path(), &mut first).unwrap();
        let mut second = first.clone();
        let file = register(dir.path(), &mut second).unwrap();
        assert_eq!((first.name.as_str(), second.name.as_str()), ("job", "job-2"));
        assert_eq!(file, dir.path().join("job-2.json"));
        assert!(matches!(register_exact(dir.path(), &first), Err(StateError::Taken(name)) if name == "job"));
        assert_eq!(names(dir.path()), ["job", "job-2"]);
    }

    #[test]
    fn a_dead_record_gives_its_name_up_and_is_pruned_when_listed() {
        let dir = tempfile::tempdir().unwrap();
        register_exact(dir.path(), &dead("old")).unwrap();
        register_exact(dir.path(), &dead("gone")).unwrap();
        let mut new = ContainerState::of_this_process("old".into(), "img".into(), None, vec![]);
        register(dir.path(), &mut new).unwrap();
        assert_eq!(new.name, "old");
        assert_eq!(names(dir.path()), ["old"]);
        assert!(!dir.path().join("gone.json").exists(), "the dead record was not pruned");
    }

    #[test]
    fn a_record_being_written_is_neither_listed_nor_pruned_nor_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let writing = dir.path().join("new.json");
        fs_err::write(&writing, b"{\"name\":").unwrap();
        assert!(names(dir.path()).is_empty());
        assert!(writing.exists(), "ps pruned a record still being written");
        let mut next = record("new", std::process::id() as i32);
        register(dir.path(), &mut next).unwrap();
        assert_eq!(next.name, "new-2");
        // One left cut short for longer than a start takes: its writer died; pruned.
        let old = std::time::SystemTime::now() - 2 * Found::WRITING_FOR;
        fs_err::File::options().write(true).open(&writing).unwrap().set_modified(old).unwrap();
        assert_eq!(names(dir.path()), ["new-2"]);
        assert!(!writing.exists());
    }
}
