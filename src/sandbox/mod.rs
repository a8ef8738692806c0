//! The sandbox: a plan made on the host side ([`plan`]), then namespaces ([`ns`]), the
//! container's file system ([`mount`], over the image's [`top`] layer) and the lock-down
//! ([`lockdown`]), applied by the single-threaded init (`crate::init`).

pub mod dev;
pub mod lockdown;
pub mod mount;
pub mod net;
pub mod ns;
pub mod plan;
pub mod report;
pub mod seccomp;
pub mod seccomp_profile;
pub mod top;
