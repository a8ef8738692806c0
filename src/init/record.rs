//! The container's `boxrun ps` record. The job's process writes it, first thing after its
//! clone, while PID 1 builds the container: off the start's critical path, and before the job
//! runs, so that `boxrun ps` lists every container whose job has started. The job is told the
//! name it was recorded under (`name`, or `name-2`… where a live container has it) in
//! `BOXRUN_CONTAINER`; the relay, which shares the job's memory until its exec, removes the
//! record when the container ends.
//!
//! Why not the relay, between its fork of PID 1 and its clone of the job: where the kernel
//! runs a new child on its parent's CPU (as on VMs that pack vCPUs), PID 1 takes the relay's
//! CPU at once, and the job's clone and everything the job does before PID 1 is ready waited
//! behind the record's file operations: 0.12–0.14 ms of a 3.5 ms warm start (README,
//! Performance).

use std::path::PathBuf;

use nix::unistd::Pid;

use crate::sandbox::plan::Record;
use crate::state::{self, ContainerState, StateError};

/// A record still to write.
pub struct Pending {
    /// The user's uid on the host, taken before the user namespace is entered: under
    /// `--fakeroot` the uid is 0 there, and would name another user's state directory.
    uid: u32,
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
            let uid = nix::unistd::getuid().as_raw();
            Recording::Pending(Pending { uid, name: name.clone(), image: image.clone(), job: job.clone() })
        }
    }
}

/// The record written: its file, for the relay to remove when the container ends, and the name
/// the container has in it, if boxrun chose it.
#[derive(Default)]
pub struct Recorded {
    pub file: Option<PathBuf>,
    pub name: Option<String>,
}

impl Recording {
    /// Record the container whose relay is `relay`: in the job's process before its exec, or
    /// in the relay itself.
    pub fn write(&self, relay: Pid, command: &[String]) -> Result<Recorded, StateError> {
        let Pending { uid, name, image, job } = match self {
            Recording::Done(file) => return Ok(Recorded { file: file.clone(), name: None }),
            Recording::Pending(pending) => pending,
        };
        let mut state = ContainerState::of_relay(
            relay.as_raw(),
            name.clone(),
            image.clone(),
            job.clone(),
            command.to_vec(),
        );
        let file = state::register(&state::dir_of(*uid)?, &mut state)?;
        Ok(Recorded { file: Some(file), name: Some(state.name) })
    }
}
