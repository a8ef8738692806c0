//! The test rig: real parts only.
//!
//! - the test images, built once per test process by `images/build.sh` (deterministic);
//! - Debian's `docker-registry` on 127.0.0.1 on a free port, images pushed into it by skopeo
//!   (`registry.rs`);
//! - the boxrun binary run as the unprivileged user `boxrun-test` when the tests run as root,
//!   with its own HOME, cache and config per test.
//!
//! A missing tool is a test failure with the package to install, never a skip.

#![allow(dead_code)] // each test binary uses a different part of the rig
#![allow(clippy::disallowed_methods)] // test set-up panics with its own context

pub mod proxy;
mod registry;

pub use registry::Registry;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;

pub const TEST_USER: &str = "boxrun-test";
/// A supplementary group of the test user (scripts/install-deps makes it).
pub const TEST_GROUP: &str = "boxrun-test-extra";
pub const REGISTRY_USER: &str = "tester";
pub const REGISTRY_PASSWORD: &str = "correct horse";

/// Run a command, panicking with its output if it fails.
pub fn run_ok(command: &mut Command) -> Output {
    let output = command.output().unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed: {}\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn require_tool(tool: &str, package: &str) {
    let found = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()));
    assert!(found, "`{tool}` is missing: apt-get install {package} (or run tests/run)");
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Kill `command`'s process when the thread that started it dies (a panicking test included).
fn die_with_parent(command: &mut Command) {
    // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and touches no memory of ours.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// The OCI layouts of `images/`, built once per test process.
pub fn images() -> &'static Path {
    static IMAGES: OnceLock<PathBuf> = OnceLock::new();
    IMAGES.get_or_init(|| {
        require_tool("python3", "python3");
        let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("images");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("images/build.sh");
        run_ok(Command::new("bash").arg(script).arg(&out));
        out
    })
}

/// The `mpi` image (images/mkmpi.sh: this host's Open MPI packages and an allreduce job),
/// built once per test process.
pub fn mpi_images() -> &'static Path {
    static IMAGES: OnceLock<PathBuf> = OnceLock::new();
    IMAGES.get_or_init(|| {
        require_tool("mpicc", "libopenmpi-dev openmpi-bin");
        let out = per_process_path("mpi-images");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("images/mkmpi.sh");
        run_ok(Command::new("bash").arg(script).arg(&out));
        out
    })
}

/// `CARGO_TARGET_TMPDIR/NAME.PID`, for what one test process builds for itself. What earlier
/// processes left there under `NAME.*` is removed first, where that process is gone: nothing
/// else would (a static is never dropped), and each mpi image is 15 MB.
fn per_process_path(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let prefix = format!("{name}.");
    for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        let file_name = entry.file_name();
        let pid =
            file_name.to_str().and_then(|n| n.strip_prefix(&prefix)).and_then(|p| p.parse::<u32>().ok());
        if let Some(pid) = pid
            && !Path::new(&format!("/proc/{pid}")).exists()
        {
            let path = entry.path();
            let _ = std::fs::remove_dir_all(&path).or_else(|_| std::fs::remove_file(&path));
        }
    }
    dir.join(format!("{name}.{}", std::process::id()))
}

/// tests/probe/probe.c, compiled static once per process (it runs inside any image).
pub fn probe() -> &'static Path {
    static PROBE: OnceLock<PathBuf> = OnceLock::new();
    PROBE.get_or_init(|| {
        require_tool("cc", "gcc libc6-dev");
        let out = per_process_path("probe");
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/probe/probe.c");
        run_ok(Command::new("cc").args(["-static", "-O2", "-o"]).arg(&out).arg(source));
        out
    })
}

/// The uid and gid boxrun runs as: the test user's under root, else our own.
pub fn test_ids() -> (u32, u32) {
    static IDS: OnceLock<(u32, u32)> = OnceLock::new();
    *IDS.get_or_init(|| {
        if !is_root() {
            // SAFETY: getuid/getgid have no preconditions.
            return unsafe { (libc::getuid(), libc::getgid()) };
        }
        let id = |flag: &str| {
            let out = Command::new("id").args([flag, TEST_USER]).output().expect("run id");
            assert!(out.status.success(), "test user {TEST_USER} is missing: run tests/run (useradd)");
            String::from_utf8_lossy(&out.stdout).trim().parse::<u32>().expect("numeric id")
        };
        (id("-u"), id("-g"))
    })
}

/// The boxrun binary, copied where the test user can execute it.
pub fn boxrun_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let dir = PathBuf::from("/tmp/boxrun-test-bin");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let staging = dir.join(format!(".boxrun.{}", std::process::id()));
        std::fs::copy(env!("CARGO_BIN_EXE_boxrun"), &staging).unwrap();
        std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o755)).unwrap();
        let binary = dir.join(format!("boxrun.{}", std::process::id()));
        std::fs::rename(&staging, &binary).unwrap();
        binary
    })
}

/// One test's world: a home, a cache and config files owned by the test user.
pub struct Env {
    pub dir: tempfile::TempDir,
}

impl Env {
    pub fn new() -> Env {
        let dir = tempfile::Builder::new().prefix("boxrun-test.").tempdir_in("/tmp").unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let env = Env { dir };
        for sub in ["home", "config/boxrun", "run", "cache", "etc"] {
            env.mkdir(sub);
        }
        env
    }

    pub fn path(&self, sub: &str) -> PathBuf {
        self.dir.path().join(sub)
    }

    /// Make a directory (and its parents under the env) owned by the test user.
    pub fn mkdir(&self, sub: &str) -> PathBuf {
        let path = self.path(sub);
        std::fs::create_dir_all(&path).unwrap();
        let mut dir = path.as_path();
        while dir != self.dir.path() {
            chown(dir);
            dir = dir.parent().unwrap();
        }
        path
    }

    /// Write a file owned by the test user.
    pub fn write(&self, sub: &str, text: &str) -> PathBuf {
        let path = self.path(sub);
        std::fs::write(&path, text).unwrap();
        chown(&path);
        path
    }

    /// The user's config file (`~/.config/boxrun/config.toml`).
    pub fn config(&self, toml: &str) {
        self.write("config/boxrun/config.toml", toml);
    }

    /// `~/.docker/config.json` with credentials for `registry`.
    pub fn docker_login(&self, registry: &str, user: &str, password: &str) {
        use base64::Engine as _;
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        self.mkdir("home/.docker");
        self.write(
            "home/.docker/config.json",
            &format!(r#"{{"auths":{{"{registry}":{{"auth":"{auth}"}}}}}}"#),
        );
    }

    pub fn cache(&self) -> PathBuf {
        self.path("cache/v1")
    }

    /// A boxrun command as the test user, with this env's HOME, cache and config only.
    pub fn boxrun(&self) -> Command {
        self.boxrun_under(&[])
    }

    /// `boxrun()`, started through `wrapper` (a command and its arguments that exec the rest).
    pub fn boxrun_under(&self, wrapper: &[&str]) -> Command {
        let (uid, gid) = test_ids();
        let mut command = if is_root() {
            let mut c = Command::new("setpriv");
            c.args([
                format!("--reuid={uid}"),
                format!("--regid={gid}"),
                "--init-groups".into(), // the user's supplementary groups, as a login gives them
                "--".into(),
            ]);
            c.args(wrapper).arg(boxrun_binary());
            c
        } else if let Some((program, args)) = wrapper.split_first() {
            let mut c = Command::new(program);
            c.args(args).arg(boxrun_binary());
            c
        } else {
            Command::new(boxrun_binary())
        };
        command
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("HOME", self.path("home"))
            .env("XDG_CONFIG_HOME", self.path("config"))
            .env("XDG_RUNTIME_DIR", self.path("run"))
            .env("BOXRUN_CACHE", self.path("cache"))
            .env("BOXRUN_SYSTEM_CONFIG", self.path("etc/config.toml"))
            .current_dir(self.dir.path())
            .stdin(Stdio::null());
        die_with_parent(&mut command);
        command
    }

    /// A directory owned by the test user, made the current directory of `boxrun_in`.
    pub fn work(&self) -> PathBuf {
        self.mkdir("work")
    }

    /// A FIFO in the work directory, for a job and the test to wait on each other.
    pub fn fifo(&self, name: &str) -> PathBuf {
        let path = self.work().join(name);
        let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: mkfifo reads a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0, "mkfifo {}", path.display());
        chown(&path);
        path
    }

    /// Run boxrun with `args` in the work directory, `stdin` as its input.
    pub fn run_in_work(&self, args: &[&str], stdin: Option<&str>) -> Run {
        use std::io::Write;
        let mut command = self.boxrun();
        command.args(args).current_dir(self.work()).stdout(Stdio::piped()).stderr(Stdio::piped());
        command.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
        let mut child = command.spawn().expect("start boxrun");
        if let Some(input) = stdin {
            child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        }
        Run::from(child.wait_with_output().unwrap())
    }

    /// Run boxrun with `args`; its exit code, stdout and stderr.
    pub fn run(&self, args: &[&str]) -> Run {
        let output = self.boxrun().args(args).output().expect("run boxrun");
        Run::from(output)
    }

    /// Run boxrun with `args`, killed (exit -1) if it runs longer than `seconds`.
    pub fn run_within(&self, seconds: u32, args: &[&str]) -> Run {
        let mut inner = self.boxrun();
        inner.args(args);
        Run::from(within(seconds, &inner).output().expect("run boxrun"))
    }

    /// The blobs in this env's cache, by hex digest.
    pub fn cached_blobs(&self) -> Vec<String> {
        let mut blobs: Vec<String> = std::fs::read_dir(self.cache().join("blobs/sha256"))
            .map(|d| d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        blobs.sort();
        blobs
    }
}

/// An OCI bundle of busybox owned by the test user, whose config.json runs as `user`
/// (uid, gid) with the usual rootless mounts and namespaces.
pub fn bundle(env: &Env, name: &str, user: (u32, u32)) -> PathBuf {
    let rootfs = env.mkdir(&format!("{name}/rootfs"));
    for dir in ["bin", "proc", "dev", "sys", "tmp", "etc"] {
        env.mkdir(&format!("{name}/rootfs/{dir}"));
    }
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
    chown(&rootfs.join("bin/busybox"));
    for applet in ["sh", "id", "cat", "echo", "sleep", "grep"] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
        chown(&rootfs.join("bin").join(applet));
    }
    let config = serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false, "user": {"uid": user.0, "gid": user.1}, "args": ["sh"],
            "env": ["PATH=/bin", "BUNDLE_VAR=from-bundle"], "cwd": "/",
        },
        "root": {"path": "rootfs", "readonly": true},
        "hostname": "bundle",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=755"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts"},
            {"destination": "/sys", "type": "none", "source": "/sys", "options": ["rbind", "nosuid", "ro"]},
        ],
        "linux": {"namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}, {"type": "user"}]},
    });
    env.write(&format!("{name}/config.json"), &config.to_string());
    env.path(name)
}

/// Give `path` (not what a symlink points to) to the test user.
pub fn chown(path: &Path) {
    if is_root() {
        let (uid, gid) = test_ids();
        std::os::unix::fs::lchown(path, Some(uid), Some(gid)).unwrap();
    }
}

/// What a boxrun run printed and how it ended.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(output: Output) -> Run {
        Run {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

impl Run {
    #[track_caller]
    pub fn ok(&self) -> &Run {
        assert_eq!(self.code, 0, "boxrun failed:\nstdout: {}\nstderr: {}", self.stdout, self.stderr);
        self
    }

    #[track_caller]
    pub fn fails_with(&self, code: i32, needle: &str) -> &Run {
        assert_eq!(
            self.code, code,
            "unexpected exit status:\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        assert!(self.stderr.contains(needle), "stderr lacks {needle:?}:\n{}", self.stderr);
        self
    }
}

/// A registry serving `tiny`, and an env whose cache has it pulled: the start of every test of
/// running jobs.
pub struct Rig {
    _registry: Registry,
    pub env: Env,
    pub tiny: String,
}

pub fn rig() -> Rig {
    let (registry, env, tiny) = pulled("tiny");
    Rig { _registry: registry, env, tiny }
}

/// A registry holding the test image `image`, and an environment that has pulled it: the
/// registry, the environment and the image's reference.
pub fn pulled(image: &str) -> (Registry, Env, String) {
    let registry = Registry::start();
    registry.push(image, image);
    let env = Env::new();
    let reference = format!("{}/{image}", registry.host());
    env.run(&["pull", "-q", &reference]).ok();
    (registry, env, reference)
}

impl Rig {
    /// `boxrun OPTIONS tiny COMMAND...` in the work directory.
    pub fn run(&self, options: &[&str], command: &[&str]) -> Run {
        let mut args: Vec<&str> = options.to_vec();
        args.push(&self.tiny);
        args.extend(command);
        self.env.run_in_work(&args, None)
    }

    /// `boxrun OPTIONS tiny sh -c SCRIPT` in the work directory.
    pub fn sh(&self, options: &[&str], script: &str) -> Run {
        self.run(options, &["sh", "-c", script])
    }
}

/// A process started in the background, killed if the test fails before it ends.
pub struct Guard(pub Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// How many `sleep` processes (of anyone) have `marker` in their command line: tests start
/// `sleep MARKER` in containers and count them from the host.
pub fn sleeping(marker: &str) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.starts_with("sleep ") && c.contains(marker))
        .count()
}

/// `inner` (program, arguments, environment, directory) under timeout(1): if it runs longer
/// than `seconds`, SIGKILL ends its process group, timeout included, so the status is that
/// signal. For a test whose failure would be a hang. Its input is /dev/null unless set.
pub fn within(seconds: u32, inner: &Command) -> Command {
    let mut command = Command::new("timeout");
    command.args(["--signal=KILL", &seconds.to_string()]).arg(inner.get_program()).args(inner.get_args());
    command.env_clear().envs(inner.get_envs().filter_map(|(k, v)| Some((k, v?))));
    if let Some(dir) = inner.get_current_dir() {
        command.current_dir(dir);
    }
    command.stdin(Stdio::null());
    command
}

/// Poll `condition` until it holds or 30 seconds pass; the assertion after it decides.
pub fn wait_until(condition: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !condition() && std::time::Instant::now() < deadline {
        std::thread::yield_now();
    }
}
