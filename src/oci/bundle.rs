//! An OCI runtime bundle (`config.json` beside a `rootfs`) turned into boxrun's run plan.
//!
//! Slurm's `srun --container=BUNDLE` hands the runtime a `config.json` it rewrote (see
//! shared/slurm/README.md §3.4): `root.path` absolute, `process.args` the srun command,
//! `process.env` the bundle's env followed by the job's. boxrun honours what its sandbox can
//! give (args, env, cwd, the user as yourself or root inside, readonly root, proc/dev/sys/tmpfs
//! and bind mounts, uts/ipc/network namespaces, hostname, rlimits) and refuses, naming the
//! field, what it cannot (a terminal, hooks, joining existing namespaces, another uid, other
//! mount types). It never weakens its own lock-down for a bundle: capabilities, seccomp and
//! no_new_privs come from the site's settings, as for `boxrun run`; cgroup resources are the
//! scheduler's.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;

use crate::sandbox::plan::{MountOp, Namespaces, User};

#[derive(Debug, Error)]
pub enum BundleError {
    #[error("cannot read {path}: {source}; is {bundle} an OCI bundle (a config.json beside a rootfs)?", bundle = .path.parent().unwrap_or(Path::new("?")).display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("invalid {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{field} in the bundle's config.json is not supported by boxrun: {why}")]
    Unsupported { field: String, why: String },
}

fn unsupported(field: impl Into<String>, why: impl Into<String>) -> BundleError {
    BundleError::Unsupported { field: field.into(), why: why.into() }
}

/// The parts of the runtime spec (config.json) that boxrun reads; the rest is ignored.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Spec {
    pub root: Option<SpecRoot>,
    pub process: Option<Process>,
    pub hostname: Option<String>,
    #[serde(default)]
    pub mounts: Vec<SpecMount>,
    pub hooks: Option<serde_json::Map<String, serde_json::Value>>,
    pub linux: Option<Linux>,
}

#[derive(Debug, Deserialize)]
pub struct SpecRoot {
    pub path: PathBuf,
    #[serde(default)]
    pub readonly: bool,
}

#[derive(Debug, Deserialize)]
pub struct Process {
    #[serde(default)]
    pub terminal: bool,
    #[serde(default)]
    pub user: ProcessUser,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default = "root_dir")]
    pub cwd: PathBuf,
    #[serde(default)]
    pub rlimits: Vec<Rlimit>,
}

fn root_dir() -> PathBuf {
    PathBuf::from("/")
}

#[derive(Debug, Default, Deserialize)]
pub struct ProcessUser {
    #[serde(default)]
    pub uid: u32,
    #[serde(default)]
    pub gid: u32,
}

#[derive(Debug, Deserialize)]
pub struct Rlimit {
    #[serde(rename = "type")]
    pub kind: String,
    pub soft: u64,
    pub hard: u64,
}

#[derive(Debug, Deserialize)]
pub struct SpecMount {
    pub destination: PathBuf,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub source: Option<PathBuf>,
    #[serde(default)]
    pub options: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Linux {
    #[serde(default)]
    pub namespaces: Vec<SpecNamespace>,
}

#[derive(Debug, Deserialize)]
pub struct SpecNamespace {
    #[serde(rename = "type")]
    pub kind: String,
    pub path: Option<PathBuf>,
}

/// Read and parse `BUNDLE/config.json`.
pub fn read(bundle: &Path) -> Result<Spec, BundleError> {
    let path = bundle.join("config.json");
    let text = fs_err::read(&path).map_err(|e| BundleError::Read { path: path.clone(), source: e })?;
    serde_json::from_slice(&text).map_err(|e| BundleError::Parse { path, message: e.to_string() })
}

/// What the bundle asks of boxrun's sandbox, checked: the plan's bundle-specific parts.
#[derive(Debug, PartialEq)]
pub struct Container {
    pub rootfs: PathBuf,
    pub writable: bool,
    pub argv: Vec<String>,
    /// The process env, later duplicates winning (Slurm appends the job's env to the bundle's).
    pub env: Vec<(String, String)>,
    pub workdir: PathBuf,
    /// uid 0 in the spec: root inside the user namespace (`--fakeroot`).
    pub fakeroot: bool,
    pub namespaces: Namespaces,
    pub hostname: Option<String>,
    pub mounts: Vec<MountOp>,
    pub rlimits: Vec<(nix::sys::resource::Resource, u64, u64)>,
}

impl Spec {
    /// Check the spec against what boxrun supports for `user` and translate it.
    pub fn container(&self, bundle: &Path, user: &User) -> Result<Container, BundleError> {
        if let Some(hooks) = &self.hooks
            && hooks.values().any(|v| v.as_array().is_none_or(|a| !a.is_empty()))
        {
            return Err(unsupported("hooks", "boxrun runs no hooks; remove them"));
        }
        let root = self.root.as_ref().ok_or_else(|| unsupported("root", "it is missing"))?;
        let process = self.process.as_ref().ok_or_else(|| unsupported("process", "it is missing"))?;
        if process.terminal {
            return Err(unsupported(
                "process.terminal = true",
                "boxrun passes on the caller's stdio; set it to false",
            ));
        }
        if process.args.is_empty() {
            return Err(unsupported("process.args", "it is empty: give a command"));
        }
        let fakeroot = match (process.user.uid, process.user.gid) {
            (0, 0) => true,
            (uid, gid) if uid == user.uid && gid == user.gid => false,
            (uid, gid) => {
                return Err(unsupported(
                    format!("process.user {uid}:{gid}"),
                    format!("jobs run as you ({}:{}) or as root inside (0:0)", user.uid, user.gid),
                ));
            }
        };
        let namespaces = namespaces(self.linux.as_ref().map_or(&[][..], |l| &l.namespaces))?;
        let mut mounts = Vec::new();
        for mount in &self.mounts {
            mounts.extend(translate_mount(mount, bundle, namespaces.ipc)?);
        }
        Ok(Container {
            rootfs: bundle.join(&root.path),
            writable: !root.readonly,
            argv: process.args.clone(),
            env: dedupe_env(&process.env),
            workdir: process.cwd.clone(),
            fakeroot,
            namespaces,
            hostname: self.hostname.clone().filter(|_| namespaces.uts),
            mounts,
            rlimits: process.rlimits.iter().map(rlimit).collect::<Result<_, _>>()?,
        })
    }
}

/// user and mount are always new; pid, uts, ipc and network on request; cgroup is accepted
/// (the job stays in the scheduler's cgroup either way).
fn namespaces(spec: &[SpecNamespace]) -> Result<Namespaces, BundleError> {
    let mut namespaces = Namespaces { host_pid: true, ..Namespaces::default() };
    for ns in spec {
        if let Some(path) = &ns.path {
            return Err(unsupported(
                format!("linux.namespaces {} path {}", ns.kind, path.display()),
                "boxrun cannot join an existing namespace",
            ));
        }
        match ns.kind.as_str() {
            "user" | "mount" | "cgroup" => {}
            "pid" => namespaces.host_pid = false,
            "uts" => namespaces.uts = true,
            "ipc" => namespaces.ipc = true,
            "network" => namespaces.net = true,
            other => return Err(unsupported(format!("linux.namespaces {other}"), "not available in boxrun")),
        }
    }
    Ok(namespaces)
}

/// One spec mount as boxrun's mount steps (none for /dev's sub-mounts and the cgroup tree,
/// which the /dev and /sys steps already provide).
fn translate_mount(mount: &SpecMount, bundle: &Path, private_ipc: bool) -> Result<Vec<MountOp>, BundleError> {
    let dst = &mount.destination;
    let kind = mount.kind.as_deref().unwrap_or("none");
    let is_bind = kind == "bind" || mount.options.iter().any(|o| o == "bind" || o == "rbind");
    let field = || format!("mounts {} (type {kind})", dst.display());
    if !dst.is_absolute() {
        return Err(unsupported(field(), "the destination must be absolute"));
    }
    let op = if is_bind {
        let src = mount.source.as_ref().ok_or_else(|| unsupported(field(), "a bind needs a source"))?;
        let readonly = mount.options.iter().any(|o| o == "ro");
        MountOp::Bind { src: bundle.join(src), dst: dst.clone(), readonly, optional: false }
    } else if dst == Path::new("/proc") && kind == "proc" {
        MountOp::Proc
    } else if dst == Path::new("/dev") && kind == "tmpfs" {
        // The host's devices are the caller's to add (`crate::sandbox::dev::host_devices`).
        MountOp::Dev { private_shm: private_ipc, devices: Vec::new() }
    } else if dst == Path::new("/sys") && kind == "sysfs" {
        MountOp::Sys
    } else if dst.starts_with("/dev/") && ["devpts", "mqueue", "tmpfs"].contains(&kind)
        || dst.starts_with("/sys/fs/cgroup") && ["cgroup", "cgroup2"].contains(&kind)
    {
        return Ok(Vec::new());
    } else if kind == "tmpfs" {
        let mode = mount.options.iter().find_map(|o| o.strip_prefix("mode=")).unwrap_or("755");
        let mode =
            u32::from_str_radix(mode, 8).map_err(|_| unsupported(field(), format!("bad mode={mode}")))?;
        MountOp::Tmpfs { dst: dst.clone(), mode }
    } else {
        return Err(unsupported(field(), "boxrun mounts proc, sysfs, tmpfs and binds only"));
    };
    Ok(vec![op])
}

/// `KEY=VALUE` strings as pairs; a later KEY replaces an earlier one, in the earlier's place.
pub fn dedupe_env(env: &[String]) -> Vec<(String, String)> {
    let mut pairs: Vec<(String, String)> = Vec::new();
    for entry in env {
        let (key, value) = entry.split_once('=').unwrap_or((entry, ""));
        crate::sandbox::plan::set_var(&mut pairs, key, value.to_string());
    }
    pairs
}

fn rlimit(limit: &Rlimit) -> Result<(nix::sys::resource::Resource, u64, u64), BundleError> {
    use nix::sys::resource::Resource as R;
    let resource = match limit.kind.as_str() {
        "RLIMIT_AS" => R::RLIMIT_AS,
        "RLIMIT_CORE" => R::RLIMIT_CORE,
        "RLIMIT_CPU" => R::RLIMIT_CPU,
        "RLIMIT_DATA" => R::RLIMIT_DATA,
        "RLIMIT_FSIZE" => R::RLIMIT_FSIZE,
        "RLIMIT_MEMLOCK" => R::RLIMIT_MEMLOCK,
        "RLIMIT_NOFILE" => R::RLIMIT_NOFILE,
        "RLIMIT_NPROC" => R::RLIMIT_NPROC,
        "RLIMIT_STACK" => R::RLIMIT_STACK,
        other => return Err(unsupported(format!("process.rlimits {other}"), "not one boxrun sets")),
    };
    Ok((resource, limit.soft, limit.hard))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user() -> User {
        User { uid: 1001, gid: 1001, name: "u".into(), group: "g".into(), home: "/home/u".into() }
    }

    fn spec(json: &str) -> Spec {
        serde_json::from_str(json).unwrap()
    }

    /// `runc spec --rootless` as Slurm rewrites it, trimmed.
    const SLURM: &str = r#"{
        "ociVersion": "1.0.2-dev",
        "process": {"terminal": false, "user": {"uid": 0, "gid": 0},
            "args": ["echo", "a b"], "env": ["PATH=/bin", "TERM=xterm", "PATH=/usr/bin:/bin", "SLURM_JOB_ID=4"],
            "cwd": "/", "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "capabilities": {"bounding": ["CAP_KILL"]}, "noNewPrivileges": true},
        "root": {"path": "/b/rootfs", "readonly": true},
        "hostname": "runc",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=755"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts"},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm"},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue"},
            {"destination": "/sys", "type": "none", "source": "/sys", "options": ["rbind", "nosuid", "ro"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup"},
            {"destination": "/tmp/slurm/stdout", "type": "none", "source": "/spool/out", "options": ["bind"]}
        ],
        "linux": {"uidMappings": [{"containerID": 0, "hostID": 1001, "size": 1}],
            "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}, {"type": "user"}, {"type": "cgroup"}],
            "maskedPaths": ["/proc/kcore"]}
    }"#;

    #[test]
    fn slurms_rewritten_rootless_spec_becomes_a_plan() {
        let c = spec(SLURM).container(Path::new("/spool/b"), &user()).unwrap();
        assert_eq!(c.rootfs, PathBuf::from("/b/rootfs"));
        assert!(!c.writable && c.fakeroot);
        assert_eq!(c.argv, ["echo", "a b"]);
        assert_eq!(c.env[0], ("PATH".into(), "/usr/bin:/bin".into()), "the later PATH wins, in place");
        assert_eq!(c.env.len(), 3);
        assert_eq!(c.namespaces, Namespaces { uts: true, ipc: true, net: false, host_pid: false });
        assert_eq!(c.hostname.as_deref(), Some("runc"));
        assert_eq!(
            c.mounts,
            [
                MountOp::Proc,
                MountOp::Dev { private_shm: true, devices: Vec::new() },
                MountOp::Bind { src: "/sys".into(), dst: "/sys".into(), readonly: true, optional: false },
                MountOp::Bind {
                    src: "/spool/out".into(),
                    dst: "/tmp/slurm/stdout".into(),
                    readonly: false,
                    optional: false
                },
            ]
        );
        assert_eq!(c.rlimits, [(nix::sys::resource::Resource::RLIMIT_NOFILE, 1024, 1024)]);
    }

    #[test]
    fn what_boxrun_cannot_do_is_refused_naming_the_field() {
        let refused = |json: &str, needle: &str| {
            let error = spec(json).container(Path::new("/b"), &user()).unwrap_err().to_string();
            assert!(error.contains(needle), "{error}");
        };
        let base = |process: &str, rest: &str| {
            format!(r#"{{"root": {{"path": "rootfs"}}, "process": {{{process}}}{rest}}}"#)
        };
        refused(&base(r#""args": ["id"], "terminal": true"#, ""), "process.terminal");
        refused(&base(r#""args": ["id"], "user": {"uid": 7, "gid": 7}"#, ""), "process.user 7:7");
        refused(&base(r#""args": []"#, ""), "process.args");
        refused(
            &base(r#""args": ["id"]"#, r#", "hooks": {"prestart": [{"path": "/x"}]}"#),
            "hooks in the bundle",
        );
        refused(
            &base(
                r#""args": ["id"]"#,
                r#", "linux": {"namespaces": [{"type": "network", "path": "/run/netns/x"}]}"#,
            ),
            "cannot join",
        );
        refused(
            &base(
                r#""args": ["id"]"#,
                r#", "mounts": [{"destination": "/mnt", "type": "nfs", "source": "h:/x"}]"#,
            ),
            "mounts /mnt (type nfs)",
        );
        let own = spec(&base(r#""args": ["id"], "user": {"uid": 1001, "gid": 1001}"#, ""));
        let c = own.container(Path::new("/b"), &user()).unwrap();
        assert!(!c.fakeroot && c.writable);
        assert_eq!(c.rootfs, PathBuf::from("/b/rootfs"), "a relative root is the bundle's");
    }
}
