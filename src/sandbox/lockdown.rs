//! The last steps before the job runs: drop capabilities, forbid gaining privileges, load
//! the seccomp filter. Applied in the job's process before its exec (everything it starts
//! inherits it) and in PID 1.

use caps::{CapSet, Capability, CapsHashSet};
use nix::sys::prctl;
use thiserror::Error;

use super::seccomp::{self, Seccomp};

#[derive(Debug, Error)]
#[error("cannot {action}: {message}")]
pub struct LockdownError {
    action: &'static str,
    message: String,
}

fn error(action: &'static str, message: impl ToString) -> LockdownError {
    LockdownError { action, message: message.to_string() }
}

/// Shrink this process's bounding set, ambient and inheritable capabilities to `keep`, the
/// set a `--fakeroot` job may use (empty otherwise): a root job regains exactly those at exec,
/// a non-root job none. It keeps its effective capabilities (it may still join a namespace):
/// [`apply`] drops those. Done apart so that the job's process can do it while it waits.
pub fn bound(keep: &CapsHashSet) -> Result<(), LockdownError> {
    // ORDER: the bounding set before `apply`: dropping from it needs CAP_SETPCAP, which `apply`
    // takes away (capabilities(7), "Capability bounding set").
    for cap in caps::all().difference(keep) {
        caps::drop(None, CapSet::Bounding, *cap)
            .map_err(|e| error("drop a capability from the bounding set", e))?;
    }
    caps::clear(None, CapSet::Ambient).map_err(|e| error("clear the ambient capabilities", e))?;
    caps::clear(None, CapSet::Inheritable).map_err(|e| error("clear the inheritable capabilities", e))
}

/// Load the seccomp filter now, while this process still holds CAP_SYS_ADMIN in its user
/// namespace (seccomp(2) then needs no no_new_privs), if it is one of boxrun's own: the job's
/// process loads it while PID 1 still mounts, off the start's critical path. The filter still
/// to load, for [`apply`]: `None` if this loaded it.
pub fn filter_early(filter: &Seccomp) -> Result<Option<&Seccomp>, LockdownError> {
    if !filter.built_in() {
        return Ok(Some(filter));
    }
    seccomp::load(filter).map_err(|e| error("load the seccomp filter", e))?;
    Ok(None)
}

/// Lock this process down, after [`bound`] with the same `keep`; `filter` is the seccomp
/// filter still to load, if any.
pub fn apply(keep: &CapsHashSet, filter: Option<&Seccomp>) -> Result<(), LockdownError> {
    // A --fakeroot job execs as root, but under no_new_privs an exec can only keep what the
    // process already holds (permitted ∩ old permitted): keep exactly `keep`, drop the rest.
    caps::set(None, CapSet::Effective, keep).map_err(|e| error("drop the effective capabilities", e))?;
    caps::set(None, CapSet::Permitted, keep).map_err(|e| error("drop the permitted capabilities", e))?;
    // ORDER: no_new_privs before a late seccomp filter: without CAP_SYS_ADMIN a filter may only
    // be loaded with it set (seccomp(2)); and from here no exec can gain privileges (setuid,
    // file caps).
    prctl::set_no_new_privs().map_err(|e| error("set no_new_privs", e))?;
    // ORDER: seccomp last: it also binds this process, which needs nothing it denies.
    match filter {
        Some(filter) => seccomp::load(filter).map_err(|e| error("load the seccomp filter", e)),
        None => Ok(()),
    }
}

/// Parse capability names (`CAP_CHOWN` or `chown`) from the site's configuration.
pub fn parse_caps(names: &[String]) -> Result<CapsHashSet, String> {
    names
        .iter()
        .map(|name| {
            let upper = name.to_ascii_uppercase();
            let full = if upper.starts_with("CAP_") { upper } else { format!("CAP_{upper}") };
            full.parse::<Capability>().map_err(|_| format!("unknown capability '{name}'"))
        })
        .collect()
}

/// What a `--fakeroot` job keeps by default: enough for a package manager inside the user
/// namespace (chown files, override permissions, switch to service users), nothing more.
pub const FAKEROOT_DEFAULT: [&str; 5] =
    ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_SETUID", "CAP_SETGID"];
