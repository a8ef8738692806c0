//! boxrun: run OCI container images in HPC batch jobs, with no daemon, no setuid bit and no root.
//!
//! The pipeline, one module per stage: [`reference`] → [`registry`] → [`store`] → [`unpack`] →
//! [`rootfs`] (→ sandbox, in later modules). [`commands`] ties them to the [`cli`].

pub mod accounts;
pub mod cli;
pub mod commands;
pub mod config;
pub mod digest;
pub mod image;
pub mod init;
pub mod oci;
pub mod platform;
pub mod progress;
pub mod pull;
pub mod reference;
pub mod registry;
pub mod rootfs;
pub mod run;
pub mod sandbox;
pub mod scheduler;
pub mod small_file;
pub mod state;
pub mod store;
pub mod unpack;

use thiserror::Error;

/// Exit status when boxrun itself fails (docker's and podman's convention).
pub const EXIT_BOXRUN_FAILED: i32 = 125;

/// Everything that can stop a boxrun command; each variant's message is one line for the user.
#[derive(Debug, Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Reference(#[from] reference::ReferenceError),
    #[error(transparent)]
    Platform(#[from] platform::PlatformError),
    #[error(transparent)]
    Pull(#[from] pull::PullError),
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error(transparent)]
    Rootfs(#[from] rootfs::RootfsError),
    #[error(transparent)]
    Run(#[from] run::RunError),
    #[error("no image '{0}' in the cache (see `boxrun images`)")]
    NotInCache(String),
    #[error(transparent)]
    State(#[from] state::StateError),
    #[error(transparent)]
    Oci(#[from] oci::OciError),
    #[error("unknown signal '{0}': give a name (TERM, SIGUSR1) or a number")]
    BadSignal(String),
}

impl Error {
    /// The documented exit status for this failure.
    pub fn exit_code(&self) -> i32 {
        EXIT_BOXRUN_FAILED
    }
}

/// Seconds since the epoch (0 if the clock is before it): record and container timestamps.
pub fn unix_time() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl From<sandbox::plan::PlanError> for Error {
    fn from(error: sandbox::plan::PlanError) -> Error {
        Error::Run(run::RunError::Plan(error))
    }
}
