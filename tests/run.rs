//! `boxrun IMAGE CMD`: the job runs as the user in its own namespaces, as the unprivileged
//! test user. These tests need unprivileged user namespaces; they fail (never skip) without.

#![allow(clippy::disallowed_methods)] // tests report failures by panicking with context

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::Stdio;

use common::{Env, Guard, Registry, Run, rig, sleeping, wait_until, within};

fn outside(command: &str, args: &[&str]) -> String {
    let (uid, gid) = common::test_ids();
    let output = if unsafe { libc::geteuid() } == 0 {
        std::process::Command::new("setpriv")
            .args([format!("--reuid={uid}"), format!("--regid={gid}"), "--init-groups".into(), "--".into()])
            .arg(command)
            .args(args)
            .output()
    } else {
        std::process::Command::new(command).args(args).output()
    };
    String::from_utf8(output.unwrap().stdout).unwrap().trim().to_string()
}

#[test]
fn the_job_runs_as_the_user_with_the_same_ids_and_groups() {
    let rig = rig();
    let run = rig.sh(&[], "id -u; id -g; id -un; id -gn");
    let ids = ["-u", "-g", "-un", "-gn"].map(|flag| outside("id", &[flag]));
    let expected = ids.join("\n");
    assert_eq!(run.ok().stdout.trim(), expected);
    // A file only the supplementary group may read, bound in through the work directory.
    let secret = rig.env.work().join("group-secret");
    std::fs::write(&secret, "for the group\n").unwrap();
    if unsafe { libc::geteuid() } == 0 {
        let gid =
            outside("getent", &["group", common::TEST_GROUP]).split(':').nth(2).unwrap().parse().unwrap();
        std::os::unix::fs::chown(&secret, Some(0), Some(gid)).unwrap();
    }
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o040)).unwrap();
    assert_eq!(rig.sh(&[], "cat group-secret").ok().stdout, "for the group\n");
    let fakeroot = rig.sh(&["--fakeroot"], "id -u; id -un");
    assert_eq!(fakeroot.ok().stdout, "0\nroot\n");
}

#[test]
fn the_job_sees_only_its_own_processes_and_stays_in_the_schedulers_cgroup() {
    let rig = rig();
    let run = rig.sh(&[], "ps -o pid,comm | busybox tail -n +2");
    let processes: Vec<&str> = run.ok().stdout.lines().collect();
    assert!(processes.len() <= 4, "{processes:?}");
    assert!(processes[0].trim().starts_with("1 "), "PID 1 is boxrun's init: {processes:?}");
    let cgroup = rig.sh(&[], "cat /proc/self/cgroup");
    assert_eq!(cgroup.ok().stdout, std::fs::read_to_string("/proc/self/cgroup").unwrap());
}

#[test]
fn each_container_has_a_private_tmp() {
    let rig = rig();
    let (ready, go) = (rig.env.fifo("ready"), rig.env.fifo("go"));
    let marker = format!("boxrun-private-{}", std::process::id());
    let mut first = rig.env.boxrun();
    first.args([&rig.tiny, "sh", "-c", &format!("echo one > /tmp/{marker}; echo ready > ready; cat go")]);
    let mut first = Guard(first.current_dir(rig.env.work()).stdout(Stdio::piped()).spawn().unwrap());
    BufReader::new(std::fs::File::open(&ready).unwrap()).read_line(&mut String::new()).unwrap();
    // The first container holds its file in /tmp while the second looks.
    let second = rig.sh(&[], &format!("ls -A /tmp; test ! -e /tmp/{marker}"));
    assert!(!second.stdout.contains(&marker), "another container's /tmp is visible: {}", second.stdout);
    second.ok();
    std::fs::File::create(&go).unwrap().write_all(b"go\n").unwrap();
    assert!(first.0.wait().unwrap().success());
    assert!(!Path::new("/tmp").join(&marker).exists(), "the host's /tmp was written");
}

#[test]
fn exit_status_is_the_jobs_or_says_why_it_could_not_run() {
    let rig = rig();
    assert_eq!(rig.sh(&[], "exit 0").code, 0);
    assert_eq!(rig.sh(&[], "exit 7").code, 7);
    assert_eq!(rig.sh(&[], "kill -TERM $$").code, 143);
    assert_eq!(rig.sh(&[], "kill -KILL $$").code, 137);
    let missing = rig.env.run_in_work(&[&rig.tiny, "no-such-command"], None);
    missing.fails_with(127, "'no-such-command': command not found");
    let not_executable = rig.env.run_in_work(&[&rig.tiny, "/etc/os-release"], None);
    not_executable.fails_with(126, "cannot execute '/etc/os-release'");
    // Searched as execvp(3) and a shell search: a PATH entry that is a file, or holds the name
    // but not executable, is passed over; if nothing else matches, the job cannot execute it.
    let passed_over = rig.env.run_in_work(&["-e", "PATH=/etc/os-release:/etc:/bin", &rig.tiny, "true"], None);
    assert_eq!(passed_over.code, 0, "{}", passed_over.stderr);
    let no_permission = rig.env.run_in_work(&["-e", "PATH=/etc:/sbin", &rig.tiny, "os-release"], None);
    no_permission.fails_with(126, "cannot execute 'os-release': Permission denied");
}

#[test]
fn a_writer_into_a_closed_pipe_dies_of_sigpipe_as_outside() {
    let rig = rig();
    // boxrun's own runtime ignores SIGPIPE; the job must not inherit that: `cat` is killed
    // (128 + 13) when `true` closes the pipe, where an ignored SIGPIPE gives an EPIPE error.
    let run = rig.sh(&[], "(cat /dev/zero; echo \"cat: $?\" >&2) | true");
    assert!(run.ok().stderr.contains("cat: 141"), "{}", run.stderr);
}

#[test]
fn a_job_started_with_stdin_and_stderr_closed_has_dev_null_there() {
    // boxrun opens /dev/null on a closed 0, 1 or 2 before anything else, as Rust's runtime
    // would: the first files it opens must not take those numbers, nor the job inherit them.
    let rig = rig();
    let mut boxrun = rig.env.boxrun_under(&["sh", "-c", "exec \"$@\" <&- 2>&-", "sh"]);
    let script = "readlink /proc/self/fd/0; readlink /proc/self/fd/2";
    let output = boxrun.args([&rig.tiny, "sh", "-c", script]).current_dir(rig.env.work()).output().unwrap();
    let run = Run::from(output);
    assert_eq!(run.ok().stdout, "/dev/null\n/dev/null\n");
}

#[test]
fn sigterm_reaches_the_jobs_handler() {
    let rig = rig();
    let ready = rig.env.fifo("ready");
    let script = "trap 'echo caught > caught; exit 3' TERM; echo ready > ready; while :; do sleep 0.05; done";
    let mut child = Guard(
        rig.env.boxrun().args([&rig.tiny, "sh", "-c", script]).current_dir(rig.env.work()).spawn().unwrap(),
    );
    BufReader::new(std::fs::File::open(&ready).unwrap()).read_line(&mut String::new()).unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.0.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = child.0.wait().unwrap();
    assert_eq!(status.code(), Some(3));
    assert_eq!(std::fs::read_to_string(rig.env.work().join("caught")).unwrap(), "caught\n");
}

#[test]
fn sigkill_of_boxrun_kills_every_process_of_the_container() {
    let rig = rig();
    let ready = rig.env.fifo("ready");
    let marker = format!("{}.{}", 400_000 + std::process::id() % 100_000, 7);
    let script = format!("sleep {marker} & sleep {marker} & echo ready > ready; wait");
    let mut child = Guard(
        rig.env.boxrun().args([&rig.tiny, "sh", "-c", &script]).current_dir(rig.env.work()).spawn().unwrap(),
    );
    BufReader::new(std::fs::File::open(&ready).unwrap()).read_line(&mut String::new()).unwrap();
    // The background sleeps may still be between fork and exec: wait (bounded) to see both.
    wait_until(|| sleeping(&marker) == 2);
    assert_eq!(sleeping(&marker), 2);
    child.0.kill().unwrap();
    child.0.wait().unwrap();
    // The kernel kills the PID namespace as PID 1 dies; allow it a moment, bounded.
    wait_until(|| sleeping(&marker) == 0);
    assert_eq!(sleeping(&marker), 0, "container processes outlived boxrun");
}

#[test]
fn what_the_job_leaves_running_is_gone_when_boxrun_returns() {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let rig = rig();
    for (n, options) in [&[][..], &["--pid=host"][..]].into_iter().enumerate() {
        // The job leaves a sleep holding the write end of a FIFO whose read end the test holds:
        // a read gives end-of-file once no writer is left, "would block" while one lives.
        let fifo = rig.env.fifo(&format!("left{n}"));
        let mut reader =
            std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(&fifo).unwrap();
        let script = format!(
            "sleep 1000 > left{n} & a=$!; until [ \"$(cat /proc/$a/comm)\" = sleep ]; do :; done; echo started"
        );
        // Output to files: a pipe's reader would also wait for the container's copies of it, and
        // a sleep left running would hold the test harness's own output open for 1000 s.
        let (out, err) = (rig.env.work().join("out"), rig.env.work().join("err"));
        let mut boxrun = rig.env.boxrun();
        boxrun.args(options).args([&rig.tiny, "sh", "-c", &script]).current_dir(rig.env.work());
        // Bounded: a boxrun that waited for the sleep instead of killing it would take 1000 s.
        let status = within(60, &boxrun)
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            .status()
            .unwrap();
        // No waiting: boxrun returns only once nothing of the container runs.
        let left = reader.read(&mut [0u8; 1]);
        let killed = status.signal() == Some(libc::SIGKILL);
        assert!(!killed, "boxrun {options:?} still ran after 60 s: it waited for the job's leftovers");
        let stderr = std::fs::read_to_string(&err).unwrap();
        assert!(status.success(), "{status:?}: {stderr}");
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "started\n");
        assert!(matches!(left, Ok(0)), "the job's background sleep outlived boxrun {options:?}: {left:?}");
    }
}

#[test]
fn orphans_are_reaped_so_no_zombie_stays() {
    let rig = rig();
    // Each `( ... &)` leaves an orphan that PID 1 adopts; it exits at once and must be reaped.
    let run = rig
        .sh(&[], "(true &); (true &); (true &); sleep 0.5; ps -o stat,comm | busybox grep -c '^Z' || true");
    assert_eq!(run.ok().stdout.trim(), "0", "zombies left");
}

#[test]
fn the_image_is_read_only_unless_writable_tmpfs_and_the_cache_never_changes() {
    let rig = rig();
    let rootfs_hash = || {
        let root = rig.env.cache().join("rootfs");
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg("find . -printf '%p %m %s\\n' | sort; find . -type f -exec sha256sum {} + | sort")
            .current_dir(root)
            .output()
            .unwrap();
        out.stdout
    };
    let before = rootfs_hash();
    rig.sh(&[], "touch /etc/new-file").fails_with(1, "Read-only file system");
    let writable =
        rig.sh(&["--writable-tmpfs"], "touch /etc/new-file && echo x > /etc/os-release && ls /etc/new-file");
    assert_eq!(writable.ok().stdout.trim(), "/etc/new-file");
    assert_eq!(rig.sh(&["--writable-tmpfs"], "ls /etc/new-file").code, 1, "a write survived its container");
    assert!(before == rootfs_hash(), "the cached rootfs changed");
}

#[test]
fn environment_precedence_host_then_image_then_flags() {
    let rig = rig();
    let env_file = rig.env.work().join("vars");
    std::fs::write(&env_file, "# comment\nFROM_FILE=file\nFOO=file\n").unwrap();
    let mut command = rig.env.boxrun();
    command.env("FOO", "host").env("HOST_ONLY", "h").env("PATH", "/host/bin:/usr/bin:/bin");
    command.args(["-e", "FOO=flag", "--env-file", env_file.to_str().unwrap(), &rig.tiny, "sh", "-c"]);
    command.arg("echo $FOO $HOST_ONLY $FROM_FILE $PATH $BOXRUN_IMAGE").current_dir(rig.env.work());
    let run = Run::from(command.output().unwrap());
    let image_path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
    assert_eq!(run.ok().stdout.trim(), format!("flag h file {image_path} {}:latest", rig.tiny));
    let mut clean = rig.env.boxrun();
    clean.env("HOST_ONLY", "h").args([
        "--clean-env",
        "-e",
        "X=1",
        &rig.tiny,
        "sh",
        "-c",
        "echo ${HOST_ONLY:-none} $X $PATH",
    ]);
    let run = Run::from(clean.current_dir(rig.env.work()).output().unwrap());
    assert_eq!(run.ok().stdout.trim(), format!("none 1 {image_path}"));
}

#[test]
fn binds_read_write_read_only_and_a_missing_source() {
    let rig = rig();
    let data = rig.env.mkdir("data");
    let data = data.to_str().unwrap();
    let rw = rig.sh(&["-v", &format!("{data}:/data")], "echo written > /data/out && cat /data/out");
    assert_eq!(rw.ok().stdout, "written\n");
    assert_eq!(std::fs::read_to_string(Path::new(data).join("out")).unwrap(), "written\n");
    rig.sh(&["--bind", &format!("{data}:/data:ro")], "echo x > /data/other")
        .fails_with(1, "Read-only file system");
    let missing = rig.sh(&["-v", "/no/such/dir:/data"], "true");
    missing.fails_with(125, "bind source '/no/such/dir' does not exist");
    assert_eq!(missing.stderr.lines().count(), 1, "{}", missing.stderr);
}

#[test]
fn entrypoint_cmd_workdir_and_stdin_follow_docker() {
    let rig = rig();
    assert_eq!(rig.env.run_in_work(&[&rig.tiny], None).ok().stdout, "hello from boxrun tiny image\n");
    let echo = rig.env.run_in_work(&["--entrypoint", "/bin/echo", &rig.tiny, "hi", "there"], None);
    assert_eq!(echo.ok().stdout, "hi there\n");
    assert_eq!(
        rig.env.run_in_work(&["run", "-w", "/etc", &rig.tiny, "sh", "-c", "pwd"], None).ok().stdout,
        "/etc\n"
    );
    let work = rig.env.work();
    assert_eq!(
        rig.sh(&[], "pwd").ok().stdout.trim(),
        work.to_str().unwrap(),
        "starts in the current directory"
    );
    let piped = rig.env.run_in_work(&[&rig.tiny, "cat"], Some("through stdin\n"));
    assert_eq!(piped.ok().stdout, "through stdin\n");
}

#[test]
fn optional_namespaces_hostname_network_and_stats() {
    let rig = rig();
    assert_eq!(rig.sh(&["--hostname", "jobhost"], "busybox hostname").ok().stdout, "jobhost\n");
    let devices = rig.sh(&["--net"], "cat /proc/net/dev | busybox tail -n +3 | busybox cut -d: -f1");
    assert_eq!(devices.ok().stdout.trim(), "lo");
    let stats = rig.sh(&["--stats=json"], "true");
    let line = stats.ok().stderr.lines().last().unwrap().to_string();
    let json: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert!(json["wall_s"].as_f64().unwrap() > 0.0 && json["exit"] == 0, "{line}");
    let text = rig.sh(&["--stats"], "exit 4");
    assert!(text.stderr.contains("boxrun: stats: wall") && text.code == 4, "{}", text.stderr);
}

#[test]
fn an_uncached_image_is_pulled_and_unpacked_when_a_job_starts() {
    let registry = Registry::start();
    registry.push("layered", "layered");
    let env = Env::new();
    let run = env.run_in_work(&["-q", &format!("{}/layered", registry.host()), "cat", "/run/pidfile"], None);
    assert_eq!(run.ok().stdout, "42\n");
}

#[test]
fn a_node_without_user_namespaces_gets_an_error_naming_the_sysctl() {
    let rig = rig();
    // The limit is per user namespace: inside one of its own, the test can set it to 0.
    let limit = "echo 0 > /proc/sys/user/max_user_namespaces && exec \"$0\" \"$@\"";
    let mut command = rig.env.boxrun_under(&["unshare", "--user", "--map-root-user", "sh", "-c", limit]);
    command.args([&rig.tiny, "true"]).current_dir(rig.env.work());
    let run = Run::from(command.output().unwrap());
    run.fails_with(125, "sysctl user.max_user_namespaces = 0");
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
}

#[test]
fn a_terminal_passes_through_to_the_job() {
    let rig = rig();
    // script(1) gives boxrun a pseudo-terminal as stdin, stdout and stderr.
    let inner = rig.env.boxrun();
    let mut line: Vec<String> = std::iter::once(inner.get_program())
        .chain(inner.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    line.extend([
        rig.tiny.clone(),
        "sh".into(),
        "-c".into(),
        "'test -t 0 && test -t 1 && echo on-a-tty'".into(),
    ]);
    let mut command = std::process::Command::new("script");
    command
        .args(["-qec", &line.join(" "), "/dev/null"])
        .env_clear()
        .envs(inner.get_envs().filter_map(|(k, v)| Some((k, v?))));
    let run = Run::from(command.current_dir(rig.env.work()).stdin(Stdio::null()).output().unwrap());
    assert!(run.ok().stdout.contains("on-a-tty"), "{}", run.stdout);
}

#[test]
fn every_forwarded_signal_reaches_the_job() {
    let rig = rig();
    let ready = rig.env.fifo("ready");
    use nix::sys::signal::Signal::*;
    let signals = [SIGHUP, SIGINT, SIGQUIT, SIGUSR1, SIGUSR2, SIGCONT];
    let names = signals.map(|signal| signal.as_str().trim_start_matches("SIG"));
    let traps: String = names.iter().map(|n| format!("trap 'touch got-{n}' {n}; ")).collect();
    // The job waits (bounded) until it has seen all six, then exits 0 by itself.
    let script = format!(
        "{traps}echo ready > ready; i=0; while [ $(ls got-* 2>/dev/null | busybox wc -l) -lt 6 ] && [ $i -lt 400 ]; do sleep 0.05; i=$((i+1)); done; ls got-* | busybox wc -l"
    );
    let mut command = rig.env.boxrun();
    command.args([&rig.tiny, "sh", "-c", &script]).current_dir(rig.env.work()).stdout(Stdio::piped());
    // An ignored signal stays ignored across exec, through boxrun to the job (as `nohup boxrun`
    // means), and sh cannot trap a signal ignored on entry: a test run under nohup (HUP) or
    // started with `&` by a non-interactive shell (INT, QUIT) would see them "not reach" the job.
    // SAFETY: signal(2) with SIG_DFL is async-signal-safe and installs no handler.
    unsafe {
        command.pre_exec(move || {
            for signal in signals {
                libc::signal(signal as libc::c_int, libc::SIG_DFL);
            }
            Ok(())
        });
    }
    let mut child = Guard(command.spawn().unwrap());
    BufReader::new(std::fs::File::open(&ready).unwrap()).read_line(&mut String::new()).unwrap();
    let pid = nix::unistd::Pid::from_raw(child.0.id() as i32);
    for signal in signals {
        nix::sys::signal::kill(pid, signal).unwrap();
    }
    let output = std::mem::replace(&mut child.0, std::process::Command::new("true").spawn().unwrap())
        .wait_with_output()
        .unwrap();
    let missing: Vec<_> =
        names.iter().filter(|n| !rig.env.work().join(format!("got-{n}")).exists()).collect();
    assert!(missing.is_empty(), "signals that did not reach the job: {missing:?}");
    assert_eq!(output.status.code(), Some(0));
}

#[test]
fn the_container_file_system_has_what_jobs_expect() {
    let rig = rig();
    let script = "echo x > /dev/null && ls /dev && busybox grep -E ' /sys | /proc ' /proc/mounts && cat /etc/hosts /etc/resolv.conf";
    let run = rig.sh(&[], script);
    let out = &run.ok().stdout;
    for node in ["null", "zero", "full", "random", "urandom", "tty", "pts", "shm", "ptmx", "fd"] {
        assert!(out.lines().any(|l| l == node), "/dev lacks {node}: {out}");
    }
    assert!(out.lines().any(|l| l.starts_with("proc /proc proc")), "no fresh procfs: {out}");
    assert!(out.lines().any(|l| l.contains(" /sys ") && l.contains(" ro,")), "/sys is not read-only: {out}");
    let host = std::fs::read_to_string("/etc/hosts").unwrap()
        + &std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    assert!(out.ends_with(&host), "hosts and resolv.conf are not the host's");
    // /dev/shm is the host's (MPI shares memory through it) unless --ipc.
    let name = format!("boxrun-shm-{}", std::process::id());
    rig.sh(&["--ipc"], &format!("touch /dev/shm/{name}")).ok();
    assert!(!Path::new("/dev/shm").join(&name).exists(), "--ipc wrote to the host's /dev/shm");
    rig.sh(&[], &format!("touch /dev/shm/{name}")).ok();
    assert!(Path::new("/dev/shm").join(&name).exists(), "/dev/shm is not the host's");
    std::fs::remove_file(Path::new("/dev/shm").join(&name)).unwrap();
}

#[test]
fn home_cwd_and_site_mount_paths_are_bound_unless_refused() {
    let rig = rig();
    let work = rig.env.work();
    let no_cwd =
        rig.sh(&["--no-cwd"], &format!("pwd; test -e {} && echo visible || echo hidden", work.display()));
    assert_eq!(no_cwd.ok().stdout, "/\nhidden\n");
    let site = rig.env.mkdir("site-data");
    std::fs::write(site.join("x"), "site\n").unwrap();
    rig.env.config(&format!("mount_paths = [\"{}:/site:ro\", \"/no/such/site/path\"]\n", site.display()));
    assert_eq!(rig.sh(&[], "cat /site/x").ok().stdout, "site\n");
    let home = rig.env.path("home");
    std::fs::write(home.join("in-home"), "home\n").unwrap();
    let run = rig.sh(&["--no-cwd"], &format!("cat {}/in-home", home.display()));
    assert_eq!(run.ok().stdout, "home\n");
    rig.sh(&["--no-home", "--no-cwd"], &format!("cat {}/in-home", home.display()))
        .fails_with(1, "No such file");
}

#[test]
fn sixteen_jobs_starting_on_an_uncached_image_ask_the_registry_once_and_build_one_rootfs() {
    let registry = Registry::start();
    registry.push("layered", "layered");
    let proxy = common::proxy::Proxy::start(registry.addr, common::proxy::Fault::None);
    let env = Env::new();
    let reference = format!("{}/layered", proxy.addr());
    let children: Vec<_> = (0..16)
        .map(|i| {
            let mut command = env.boxrun();
            command.args([&reference, "sh", "-c", &format!("echo job {i}")]);
            command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()
        })
        .collect();
    let mut unpacked = 0;
    for (i, child) in children.into_iter().enumerate() {
        let output = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "job {i} failed: {stderr}");
        assert_eq!(String::from_utf8_lossy(&output.stdout), format!("job {i}\n"));
        unpacked += stderr.lines().filter(|l| l.contains("unpacked")).count();
    }
    assert_eq!(unpacked, 1, "the rootfs was built {unpacked} times");
    let seen = proxy.seen();
    let manifest_gets = seen.iter().filter(|s| s.method == "GET" && s.path.contains("/manifests/")).count();
    assert_eq!(manifest_gets, 1, "16 jobs asked for the manifest {manifest_gets} times");
    let blobs = std::fs::read_dir(common::images().join("layered/blobs/sha256")).unwrap().count();
    // The layout's blobs are the manifest, the config and the layers: each fetched once.
    assert_eq!(proxy.blob_gets(None), blobs - 1, "blobs fetched more than once");
}

#[test]
fn mount_points_follow_the_images_symlinks_and_leave_its_directories_as_they_are() {
    let (_registry, env, layered) = common::pulled("layered");
    let data = env.mkdir("data");
    env.write("data/marker", "from the host\n");
    let data = data.to_str().unwrap();
    // In the image, var/run is a symlink to /run, and every directory has the image's one
    // mtime, as /usr (no mount point under it) shows.
    let script = "busybox readlink /var/run && cat /run/bound/marker /var/run/pidfile /srv/ro/sub/marker \
                  && stat -c %Y /srv/ro /srv /usr && touch /srv/ro/new";
    let binds = [format!("{data}:/var/run/bound"), format!("{data}:/srv/ro/sub")];
    let run = env.run_in_work(&["-v", &binds[0], "-v", &binds[1], &layered, "sh", "-c", script], None);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 7, "stdout: {}stderr: {}", run.stdout, run.stderr);
    assert_eq!(lines[..4], ["/run", "from the host", "42", "from the host"], "{}", run.stderr);
    assert_eq!(lines[4..], [lines[6]; 3], "/srv/ro and /srv do not have the image's mtime");
    run.fails_with(1, "Read-only file system");
}

#[test]
fn a_top_layer_is_made_once_per_plan_and_gc_removes_it_only_when_no_container_holds_it() {
    let rig = rig();
    let top_layers = || std::fs::read_dir(rig.env.cache().join("top")).map_or(0, |d| d.count());
    let passwd = |home: &str| {
        let mut command = rig.env.boxrun();
        command.env("HOME", home).current_dir(rig.env.work());
        command.args([&rig.tiny, "sh", "-c", "busybox grep boxrun-test /etc/passwd"]);
        Run::from(command.output().unwrap()).ok().stdout.clone()
    };
    // The generated files are the plan's: another home is another passwd, in another layer,
    // and the first layer serves its plan again.
    for home in ["/home/one", "/home/two", "/home/one"] {
        assert!(passwd(home).contains(&format!(":{home}:")), "passwd lacks {home}");
    }
    assert_eq!(top_layers(), 2, "not one top layer per plan");
    // A running container holds its layer: gc removes the idle one only.
    let (ready, go) = (rig.env.fifo("ready"), rig.env.fifo("go"));
    let script = "echo ready > ready; read x < go; busybox grep boxrun-test /etc/passwd";
    let mut command = rig.env.boxrun();
    command.env("HOME", "/home/one").args([&rig.tiny, "sh", "-c", script]);
    let mut running = Guard(command.current_dir(rig.env.work()).stdout(Stdio::piped()).spawn().unwrap());
    BufReader::new(std::fs::File::open(&ready).unwrap()).read_line(&mut String::new()).unwrap();
    let removed = |run: &Run| -> u64 {
        let report: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
        report["top_layers_removed"].as_u64().unwrap()
    };
    assert_eq!(removed(rig.env.run(&["gc", "--json"]).ok()), 1, "gc removed a layer in use, or none");
    assert_eq!(top_layers(), 1);
    writeln!(std::fs::OpenOptions::new().write(true).open(&go).unwrap(), "go").unwrap();
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut running.0.stdout.take().unwrap(), &mut stdout).unwrap();
    let status = running.0.wait().unwrap();
    assert!(status.success() && stdout.contains(":/home/one:"), "after gc: {status:?}, {stdout}");
    assert_eq!(removed(rig.env.run(&["gc", "--json"]).ok()), 1, "the ended container's layer stayed");
    assert_eq!(top_layers(), 0);
}

#[test]
fn host_devices_bound_into_the_container_stay_usable() {
    let rig = rig();
    // A device bound with -v reads as itself (not a nodev mount, not replaced by a file).
    let run = rig.run(&["-v", "/dev/zero:/mnt/zero"], &["sh", "-c", "head -c 3 /mnt/zero | od -An -c"]);
    assert_eq!(run.ok().stdout.split_whitespace().collect::<Vec<_>>(), ["\\0", "\\0", "\\0"]);
}

/// NVIDIA's nodes, made on the host (as char devices that behave as /dev/null and /dev/zero)
/// where the node has no driver, and removed again.
struct FakeGpu(Vec<&'static str>);

impl FakeGpu {
    fn new() -> FakeGpu {
        assert!(common::is_root(), "this test makes device nodes in the host's /dev: run it as root");
        let mut made = Vec::new();
        for (name, minor) in [("nvidiactl", 3), ("nvidia0", 5)] {
            let path = std::ffi::CString::new(format!("/dev/{name}")).unwrap();
            // SAFETY: mknod reads a NUL-terminated path; EEXIST (a real GPU) leaves it alone.
            if unsafe { libc::mknod(path.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, minor)) } == 0 {
                made.push(name);
            }
        }
        FakeGpu(made)
    }
}

impl Drop for FakeGpu {
    fn drop(&mut self) {
        for name in &self.0 {
            let _ = std::fs::remove_file(format!("/dev/{name}"));
        }
    }
}

#[test]
fn the_nodes_gpus_are_in_the_container_and_usable() {
    let rig = rig();
    let _gpu = FakeGpu::new();
    let run = rig.sh(&[], "ls /dev/nvidiactl /dev/nvidia0 && head -c 2 /dev/nvidia0 | busybox wc -c");
    assert_eq!(run.ok().stdout, "/dev/nvidia0\n/dev/nvidiactl\n2\n");
}
