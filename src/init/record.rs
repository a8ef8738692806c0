//! The container's `boxrun ps` record, written by the relay while PID 1 builds the container:
//! the record's file and its name check cost 0.1 ms that the start need not wait for. The job,
//! forked by the relay after that, is told the name it was recorded under (`name`, or
//! `name-2`… where a live container has it) in `BOXRUN_CONTAINER`.

use std::path::PathBuf;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::fail;
use crate::sandbox::plan::Record;
use crate::state::{self, ContainerState};

/// A record for the relay to write.
pub struct Pending {
    /// The state directory, found before the user namespace is entered: under `--fakeroot`
    /// the relay's uid is 0 there, and would name another user's fallback directory.
    dir: PathBuf,
    name: String,
    image: String,
    job: Option<String>,
}

/// What the relay holds of the record.
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
            Recording::Pending(Pending { dir, name: name.clone(), image: image.clone(), job: job.clone() })
        }
    }
}

/// The record written: its file, for the relay to remove when the container ends, and the name
/// the container has in it, if the relay chose it.
pub struct Recorded {
    pub file: Option<PathBuf>,
    pub name: Option<String>,
}

impl Recording {
    /// In the relay, after the fork of PID 1: record the container. If it cannot be recorded,
    /// PID 1 is killed and the relay fails with the reason.
    pub fn write(self, pid1: Pid, command: &[String]) -> Recorded {
        let Pending { dir, name, image, job } = match self {
            Recording::Done(file) => return Recorded { file, name: None },
            Recording::Pending(pending) => pending,
        };
        let mut state = ContainerState::of_this_process(name, image, job, command.to_vec());
        match state::register(&dir, &mut state) {
            Ok(file) => Recorded { file: Some(file), name: Some(state.name) },
            Err(e) => {
                let _ = kill(pid1, Signal::SIGKILL);
                fail(e)
            }
        }
    }
}
