//! The run plan: everything the sandbox will do, decided on the host side as plain data.
//!
//! `boxrun run` builds a [`RunPlan`] (argv, environment, working directory, ids, namespaces and
//! an ordered list of [`MountOp`]s), checks what can be checked before any namespace exists
//! (bind sources, the env file), and hands the plan to the single-threaded init as JSON. The
//! init applies it in one loop; these functions are unit-tested without privileges.

use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum PlanError {
    #[error("bind source '{source_path}' does not exist (from {flag}); create it or fix the path")]
    MissingSource { source_path: PathBuf, flag: String },
    #[error("invalid bind '{spec}': {problem}")]
    BadBind { spec: String, problem: &'static str },
    #[error("cannot read env file {path}: {message}")]
    EnvFile { path: PathBuf, message: String },
    #[error("invalid environment variable '{0}': expected KEY=VALUE or KEY")]
    BadEnv(String),
    #[error("no command to run: the image has no Entrypoint or Cmd; give one after the image name")]
    NoCommand,
    #[error("the working directory '{0}' must be an absolute path")]
    RelativeWorkdir(String),
}

/// One step of building the container's file system, applied in order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum MountOp {
    /// A fresh procfs for the new PID namespace at /proc.
    Proc,
    /// /dev with the host's `devices` (null, zero, full, random, urandom and tty, and the HPC
    /// devices the node has: [`super::dev::host_devices`]), a new devpts, and /dev/shm (the
    /// host's, for MPI, unless `private_shm`).
    Dev {
        private_shm: bool,
        #[serde(default)]
        devices: Vec<super::dev::Device>,
    },
    /// The host's /sys, read-only.
    Sys,
    /// An empty tmpfs (private /tmp and /var/tmp).
    Tmpfs { dst: PathBuf, mode: u32 },
    /// A host path at `dst`; `optional` ones are skipped when the source is gone.
    Bind { src: PathBuf, dst: PathBuf, readonly: bool, optional: bool },
    /// A generated file (e.g. /etc/passwd) at `dst`, read-only with the rest of the image: a
    /// file of the top layer, or written in place where that layer cannot hold it.
    File { dst: PathBuf, contents: String },
}

/// Which optional namespaces to create (user, mount and PID always are).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Namespaces {
    pub uts: bool,
    pub ipc: bool,
    pub net: bool,
    /// Stay in the host's PID namespace (MPI ranks: Open MPI tells shared-memory segments
    /// apart by pid, and every container's job would otherwise be pid 2).
    pub host_pid: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum StatsFormat {
    Text,
    Json,
}

/// Everything the init needs, and nothing it has to look up.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunPlan {
    pub rootfs: PathBuf,
    /// An empty directory the init mounts the container's root on: the image's overlay itself
    /// where `top_layers` keeps its top layer, else a private tmpfs holding the overlay's top
    /// (or upper) layer and the overlay.
    pub scratch: PathBuf,
    /// The store that keeps the image's top layer, made once (`rootfs::top`). None: the top
    /// layer is laid out at each start in the tmpfs (with `--writable-tmpfs`, whose upper layer
    /// holds it; for an OCI bundle, whose rootfs may change between runs).
    pub top_layers: Option<crate::store::Store>,
    pub writable: bool,
    pub argv: Vec<String>,
    /// The job's environment, in order.
    pub env: Vec<(String, String)>,
    pub workdir: PathBuf,
    pub uid: u32,
    pub gid: u32,
    /// Map the user to root inside (the user namespace's root: no host privilege).
    pub fakeroot: bool,
    pub namespaces: Namespaces,
    pub hostname: Option<String>,
    pub mounts: Vec<MountOp>,
    pub stats: Option<StatsFormat>,
    /// Forward SIGINT and SIGQUIT to the job (not on a terminal, where the job gets them itself).
    pub forward_interrupts: bool,
    /// The seccomp filters to load.
    pub seccomp: super::seccomp::Seccomp,
    /// Capability names a `--fakeroot` job keeps in its bounding set (none otherwise).
    pub keep_caps: Vec<String>,
    /// Instead of the job, print what the container looks like from inside (`--security-report`).
    pub report: bool,
    /// How the container shows in `boxrun ps`; the relay removes the record when it ends.
    pub record: Option<Record>,
}

/// How a container is recorded for `boxrun ps`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Record {
    /// Recorded already, in this file (`boxrun oci run`: its id must be free before it starts).
    File(PathBuf),
    /// To be recorded by the job's process while PID 1 builds the container: as `name`, or
    /// `name-2`… where a live container has that name; the job's `BOXRUN_CONTAINER` says which.
    Register { name: String, image: String, job: Option<String> },
}

/// Read-only binds over the parts of `protected` (the cache, the unpacked images) that the
/// binds in `mounts` would otherwise expose writable to the job (e.g. a cache under $HOME).
pub fn protect(mounts: &[MountOp], protected: &[PathBuf]) -> Vec<MountOp> {
    let mut extra = Vec::new();
    for op in mounts {
        let MountOp::Bind { src, dst, readonly: false, .. } = op else { continue };
        for dir in protected {
            if let Ok(rest) = dir.strip_prefix(src) {
                let dst = dst.join(rest);
                extra.push(MountOp::Bind { src: dir.clone(), dst, readonly: true, optional: true });
            }
        }
    }
    extra
}

/// The user the job runs as, as the host knows them.
#[derive(Clone, Debug, PartialEq)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
    pub name: String,
    pub group: String,
    pub home: PathBuf,
}

/// Host paths never bound as the working directory: they would hide the image's own.
const SYSTEM_DIRS: [&str; 12] = [
    "/usr", "/bin", "/sbin", "/lib", "/lib64", "/lib32", "/etc", "/proc", "/sys", "/dev", "/boot", "/var/lib",
];

/// Is `path` (absolute) the root, one of the system directories, or inside one?
pub fn is_system_path(path: &Path) -> bool {
    path == Path::new("/") || SYSTEM_DIRS.iter().any(|dir| path.starts_with(dir))
}

/// Parse `SRC[:DST[:ro|rw]]` (docker's `-v`); a relative SRC is taken from `cwd`.
pub fn parse_bind(spec: &str, cwd: &Path) -> Result<(PathBuf, PathBuf, bool), PlanError> {
    let bad = |problem| PlanError::BadBind { spec: spec.to_string(), problem };
    let parts: Vec<&str> = spec.split(':').collect();
    let (src, dst, mode) = match parts.as_slice() {
        [src] => (*src, *src, "rw"),
        [src, dst] => (*src, *dst, "rw"),
        [src, dst, mode] => (*src, *dst, *mode),
        _ => return Err(bad("expected SRC[:DST[:ro|rw]]")),
    };
    let readonly = match mode {
        "ro" => true,
        "rw" => false,
        _ => return Err(bad("the mode must be 'ro' or 'rw'")),
    };
    if src.is_empty() || dst.is_empty() {
        return Err(bad("SRC and DST must not be empty"));
    }
    let dst: PathBuf = if dst == src && !Path::new(src).is_absolute() { cwd.join(src) } else { dst.into() };
    if !dst.is_absolute() {
        return Err(bad("DST must be an absolute path inside the container"));
    }
    if dst == Path::new("/") || dst.components().any(|c| c == Component::ParentDir) {
        return Err(bad("DST must not be '/' or contain '..'"));
    }
    Ok((cwd.join(src), dst, readonly))
}

/// A bind whose source must exist now (user `--bind`s): a missing one is an error naming it.
pub fn checked_bind(spec: &str, cwd: &Path, flag: &str) -> Result<MountOp, PlanError> {
    let (src, dst, readonly) = parse_bind(spec, cwd)?;
    if fs_err::metadata(&src).is_err() {
        return Err(PlanError::MissingSource { source_path: src, flag: format!("{flag} {spec}") });
    }
    Ok(MountOp::Bind { src, dst, readonly, optional: false })
}

/// The environment: host (unless `clean`, minus `remove`d keys) < image < env file < `-e`.
/// `-e KEY` without a value takes the host's value (and is dropped if the host has none).
pub fn environment(
    host: &[(String, String)],
    clean: bool,
    remove: &[String],
    image: &[String],
    overrides: &[String],
) -> Result<Vec<(String, String)>, PlanError> {
    let removed = |key: &str| {
        remove.iter().any(|pattern| match pattern.strip_suffix('*') {
            Some(prefix) => key.starts_with(prefix),
            None => key == pattern,
        })
    };
    let mut env: Vec<(String, String)> =
        if clean { Vec::new() } else { host.iter().filter(|(k, _)| !removed(k)).cloned().collect() };
    for entry in image {
        if let Some((key, value)) = entry.split_once('=') {
            set_var(&mut env, key, value.to_string());
        }
    }
    for entry in overrides {
        match entry.split_once('=') {
            Some(("", _)) => return Err(PlanError::BadEnv(entry.clone())),
            Some((key, value)) => set_var(&mut env, key, value.to_string()),
            None if entry.is_empty() || entry.contains(char::is_whitespace) => {
                return Err(PlanError::BadEnv(entry.clone()));
            }
            None => {
                if let Some((_, value)) = host.iter().find(|(k, _)| k == entry) {
                    set_var(&mut env, entry, value.clone());
                }
            }
        }
    }
    Ok(env)
}

/// Set `key` in `env`: in place where it is already set (its position kept), else at the end.
pub fn set_var(env: &mut Vec<(String, String)>, key: &str, value: String) {
    match env.iter_mut().find(|(k, _)| k == key) {
        Some(slot) => slot.1 = value,
        None => env.push((key.to_string(), value)),
    }
}

/// Set `key` in `env` only where it is not set yet.
pub fn set_default_var(env: &mut Vec<(String, String)>, key: &str, value: String) {
    if !env.iter().any(|(k, _)| k == key) {
        env.push((key.to_string(), value));
    }
}

/// The lines of an env file: `KEY=VALUE` or `KEY`; blank lines and `#` comments skipped.
pub fn read_env_file(path: &Path) -> Result<Vec<String>, PlanError> {
    let text = fs_err::read_to_string(path)
        .map_err(|e| PlanError::EnvFile { path: path.to_path_buf(), message: e.to_string() })?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect())
}

/// `/etc/passwd` for the container: the image's, without entries that would shadow the user,
/// plus the user. Under `--fakeroot` the user is the image's root: its file stays as it is.
pub fn passwd(image: Option<&str>, user: &User, fakeroot: bool) -> String {
    if fakeroot {
        return with_root(keep_lines(image, |_| true), "root:x:0:0:root:/root:/bin/sh");
    }
    let uid = user.uid.to_string();
    let mut out = keep_lines(image, |fields| fields[0] != user.name && fields.get(2) != Some(&uid.as_str()));
    let home = user.home.display();
    out.push_str(&format!("{}:x:{uid}:{}:{}:{home}:/bin/sh\n", user.name, user.gid, user.name));
    out
}

/// `/etc/group` for the container: the image's plus the user's primary group.
pub fn group(image: Option<&str>, user: &User, fakeroot: bool) -> String {
    if fakeroot {
        return with_root(keep_lines(image, |_| true), "root:x:0:");
    }
    let gid = user.gid.to_string();
    let mut out = keep_lines(image, |fields| fields[0] != user.group && fields.get(2) != Some(&gid.as_str()));
    out.push_str(&format!("{}:x:{gid}:\n", user.group));
    out
}

fn with_root(mut text: String, root_line: &str) -> String {
    if !text.lines().any(|l| l.starts_with("root:")) {
        text.push_str(root_line);
        text.push('\n');
    }
    text
}

fn keep_lines(image: Option<&str>, keep: impl Fn(&[&str]) -> bool) -> String {
    let mut out = String::new();
    for line in image.unwrap_or("").lines() {
        let fields: Vec<&str> = line.split(':').collect();
        if !line.trim().is_empty() && keep(&fields) {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn strings(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn environment_precedence_is_host_then_image_then_flags() {
        let host = pairs(&[("PATH", "/host"), ("SLURM_JOB_ID", "7"), ("SECRET", "x"), ("A", "host")]);
        let image = strings(&["PATH=/image", "A=image", "B=image"]);
        let env =
            environment(&host, false, &strings(&["SECRET"]), &image, &strings(&["B=flag", "SLURM_JOB_ID"]))
                .unwrap();
        assert_eq!(env, pairs(&[("PATH", "/image"), ("SLURM_JOB_ID", "7"), ("A", "image"), ("B", "flag")]));
        let clean = environment(&host, true, &[], &image, &strings(&["C=1"])).unwrap();
        assert_eq!(clean, pairs(&[("PATH", "/image"), ("A", "image"), ("B", "image"), ("C", "1")]));
        let globbed = environment(&host, false, &strings(&["SLURM_*"]), &[], &[]).unwrap();
        assert!(!globbed.iter().any(|(k, _)| k == "SLURM_JOB_ID"));
        assert!(environment(&host, false, &[], &[], &strings(&["=x"])).is_err());
    }

    #[test]
    fn binds_parse_like_docker() {
        let cwd = Path::new("/work");
        assert_eq!(parse_bind("/data:/in:ro", cwd).unwrap(), ("/data".into(), "/in".into(), true));
        assert_eq!(parse_bind("/data", cwd).unwrap(), ("/data".into(), "/data".into(), false));
        assert_eq!(parse_bind("rel:/in", cwd).unwrap(), ("/work/rel".into(), "/in".into(), false));
        assert_eq!(parse_bind("rel", cwd).unwrap(), ("/work/rel".into(), "/work/rel".into(), false));
        for bad in ["/a:/b:rx", "/a:b", "/a:/", "/a:/x/../y", ":/x", "/a:/b:ro:x"] {
            assert!(parse_bind(bad, cwd).is_err(), "{bad}");
        }
        let missing = checked_bind("/nonexistent-boxrun:/x", cwd, "--bind").unwrap_err().to_string();
        assert!(missing.contains("'/nonexistent-boxrun' does not exist"), "{missing}");
    }

    #[test]
    fn passwd_and_group_add_the_user() {
        let user = User {
            uid: 1001,
            gid: 1001,
            name: "alice".into(),
            group: "alice".into(),
            home: "/home/alice".into(),
        };
        let image = "root:x:0:0:root:/root:/bin/sh\nalice:x:5:5::/:/bin/false\nbob:x:1001:1:::\n";
        assert_eq!(
            passwd(Some(image), &user, false),
            "root:x:0:0:root:/root:/bin/sh\nalice:x:1001:1001:alice:/home/alice:/bin/sh\n"
        );
        assert_eq!(passwd(Some(image), &user, true), image);
        assert_eq!(group(Some("root:x:0:\n"), &user, false), "root:x:0:\nalice:x:1001:\n");
        assert_eq!(passwd(None, &user, true), "root:x:0:0:root:/root:/bin/sh\n");
    }

    #[test]
    fn a_cache_under_a_writable_bind_is_bound_again_read_only() {
        let bind = |src: &str, dst: &str, readonly| MountOp::Bind {
            src: src.into(),
            dst: dst.into(),
            readonly,
            optional: false,
        };
        let mounts =
            [bind("/home/a", "/home/a", false), bind("/data", "/in", false), bind("/home", "/h", true)];
        let extra =
            protect(&mounts, &["/home/a/.cache/boxrun".into(), "/data/rootfs".into(), "/elsewhere".into()]);
        let expect = |src: &str, dst: &str| MountOp::Bind {
            src: src.into(),
            dst: dst.into(),
            readonly: true,
            optional: true,
        };
        assert_eq!(
            extra,
            [expect("/home/a/.cache/boxrun", "/home/a/.cache/boxrun"), expect("/data/rootfs", "/in/rootfs")]
        );
    }

    #[test]
    fn system_directories_are_never_the_bound_workdir() {
        for path in ["/", "/usr", "/usr/local/bin", "/etc/x", "/proc/1"] {
            assert!(is_system_path(Path::new(path)), "{path}");
        }
        for path in ["/home/alice", "/scratch/job", "/tmp/x", "/var/tmp/x"] {
            assert!(!is_system_path(Path::new(path)), "{path}");
        }
    }
}
