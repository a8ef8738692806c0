//! The container's `boxrun ps` record, written by the relay while PID 1 builds the container:
//! the record's file and its name check cost 0.1 ms that the start need not wait for.
//!
//! The relay tells PID 1 the name it recorded (`name`, or `name-2`… where a live container has
//! it) through a pipe; PID 1 reads it just before it starts the job, whose `BOXRUN_CONTAINER`
//! says it. An empty pipe means the relay could not record the container: it reports why, and
//! PID 1 exits without starting the job.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::PathBuf;

use nix::fcntl::OFlag;
use nix::sys::signal::{Signal, kill};
use nix::unistd::{Pid, pipe2};

use super::fail;
use crate::EXIT_BOXRUN_FAILED;
use crate::sandbox::plan::Record;
use crate::state::{self, ContainerState};

/// A record for the relay to write, with the pipe that carries its name to PID 1.
pub struct Pending {
    /// The state directory, found before the user namespace is entered: under `--fakeroot`
    /// the relay's uid is 0 there, and would name another user's fallback directory.
    dir: PathBuf,
    name: String,
    image: String,
    job: Option<String>,
    read: OwnedFd,
    write: OwnedFd,
}

/// What the relay holds of the record, and PID 1 waits for.
pub enum Recording {
    /// Written before the start (`boxrun oci run`), or none at all.
    Done(Option<PathBuf>),
    Pending(Pending),
}

/// Get ready to record `record`; before the namespaces are entered.
pub fn prepare(record: Option<&Record>) -> Recording {
    match record {
        None => Recording::Done(None),
        Some(Record::File(path)) => Recording::Done(Some(path.clone())),
        Some(Record::Register { name, image, job }) => {
            let dir = state::dir().unwrap_or_else(|e| fail(e));
            let (read, write) = pipe2(OFlag::O_CLOEXEC).unwrap_or_else(|e| fail(format!("pipe: {e}")));
            Recording::Pending(Pending {
                dir,
                name: name.clone(),
                image: image.clone(),
                job: job.clone(),
                read,
                write,
            })
        }
    }
}

impl Recording {
    /// In the relay, after the fork of PID 1 (`pid1`): record the container and tell PID 1 its
    /// name; the record's file, for the relay to remove when the container ends. If it cannot
    /// be recorded, PID 1 is killed and the relay fails with the reason.
    pub fn write(self, pid1: Pid, command: &[String]) -> Option<PathBuf> {
        let pending = match self {
            Recording::Done(path) => return path,
            Recording::Pending(pending) => pending,
        };
        let Pending { dir, name, image, job, read, write } = pending;
        drop(read);
        let mut state = ContainerState::of_this_process(name, image, job, command.to_vec());
        match state::register(&dir, &mut state) {
            Ok(path) => {
                // A failed write (PID 1 died) shows in the exit status the relay reports next.
                drop(std::fs::File::from(write).write_all(state.name.as_bytes()));
                Some(path)
            }
            Err(e) => {
                let _ = kill(pid1, Signal::SIGKILL);
                fail(e)
            }
        }
    }

    /// In PID 1, right after the fork: the part it waits on, if any.
    pub fn into_name_pipe(self) -> Option<OwnedFd> {
        match self {
            Recording::Done(_) => None,
            Recording::Pending(Pending { read, .. }) => Some(read),
        }
    }
}

/// In PID 1, before the job starts: the name the relay recorded the container under. The relay
/// closes the pipe when it has written it; nothing written means it failed and says why.
pub fn recorded_name(pipe: OwnedFd) -> String {
    let mut name = String::new();
    match std::fs::File::from(pipe).read_to_string(&mut name) {
        Ok(_) if !name.is_empty() => name,
        _ => std::process::exit(EXIT_BOXRUN_FAILED),
    }
}
