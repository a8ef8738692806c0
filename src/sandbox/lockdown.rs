//! The last step before the job runs: no privilege can be gained from here on.

use nix::sys::prctl;
use thiserror::Error;

#[derive(Debug, Error)]
#[error("cannot {action}: {source}")]
pub struct LockdownError {
    action: &'static str,
    source: nix::errno::Errno,
}

/// ORDER: after every mount (which needs CAP_SYS_ADMIN in the user namespace) and before the
/// job's exec, which then cannot gain privileges through setuid bits or file capabilities.
pub fn apply() -> Result<(), LockdownError> {
    prctl::set_no_new_privs().map_err(|source| LockdownError { action: "set no_new_privs", source })
}
