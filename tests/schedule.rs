//! Scheduler integration without a scheduler daemon: container names from the job's
//! variables, `boxrun ps` and `boxrun kill`, and `boxrun wrap` as a site's job wrapper.

#![allow(clippy::disallowed_methods)] // tests report failures by panicking with context

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;

use common::{Guard, Run, rig};

/// Wait until the job says it is ready on the FIFO `ready`.
fn wait_ready(path: &std::path::Path) {
    BufReader::new(std::fs::File::open(path).unwrap()).read_line(&mut String::new()).unwrap();
}

#[test]
fn ps_lists_a_running_container_named_after_its_slurm_job_and_kill_signals_it() {
    let rig = rig();
    let ready = rig.env.fifo("ready");
    let script = "trap 'echo got USR1 > usr1; exit 0' USR1; echo $BOXRUN_CONTAINER > name; echo ready > ready; while :; do sleep 0.05; done";
    let mut command = rig.env.boxrun();
    command.envs([("SLURM_JOB_ID", "4242"), ("SLURM_STEP_ID", "3"), ("SLURM_PROCID", "1")]);
    command.args([&rig.tiny, "sh", "-c", script]).current_dir(rig.env.work());
    let mut job = Guard(command.spawn().unwrap());
    wait_ready(&ready);
    let ps = rig.env.run(&["ps", "--json"]);
    let listed: serde_json::Value = serde_json::from_str(&ps.ok().stdout).unwrap();
    let entry = &listed[0];
    assert_eq!(entry["name"], "slurm-4242.3.1");
    assert_eq!(entry["job"], "4242");
    assert_eq!(entry["pid"], job.0.id());
    assert_eq!(std::fs::read_to_string(rig.env.work().join("name")).unwrap(), "slurm-4242.3.1\n");
    let table = rig.env.run(&["ps"]);
    assert!(table.ok().stdout.lines().nth(1).unwrap().starts_with("slurm-4242.3.1"), "{}", table.stdout);
    rig.env.run(&["kill", "slurm-4242.3.1", "USR1"]).ok();
    assert!(job.0.wait().unwrap().success());
    assert_eq!(std::fs::read_to_string(rig.env.work().join("usr1")).unwrap(), "got USR1\n");
    assert_eq!(
        rig.env.run(&["ps", "--json"]).ok().stdout.trim(),
        "[]",
        "the ended container is still listed"
    );
    rig.env.run(&["kill", "slurm-4242.3.1"]).fails_with(125, "no running container named 'slurm-4242.3.1'");
}

#[test]
fn a_batch_job_that_inherited_the_login_nodes_xdg_runtime_dir_still_runs() {
    // sbatch exports the submitting shell's environment, and the compute node has no login
    // session, so no /run/user/UID: the record goes to /tmp/boxrun-UID instead.
    let rig = rig();
    let mut command = rig.env.boxrun();
    command.env("XDG_RUNTIME_DIR", rig.env.path("run/user/no-session-here"));
    command.args([&rig.tiny, "echo", "ran"]).current_dir(rig.env.work());
    assert_eq!(Run::from(command.output().unwrap()).ok().stdout, "ran\n");
}

#[test]
fn a_container_killed_with_boxrun_leaves_ps_and_another_user_sees_nothing() {
    let rig = rig();
    let ready = rig.env.fifo("ready");
    let mut command = rig.env.boxrun();
    command
        .args(["--name", "mine", &rig.tiny, "sh", "-c", "echo ready > ready; sleep 300"])
        .current_dir(rig.env.work());
    let mut job = Guard(command.stdout(Stdio::null()).spawn().unwrap());
    wait_ready(&ready);
    // Another user, even pointed at the same runtime directory, cannot see or signal it.
    if unsafe { libc::geteuid() } == 0 {
        let other = |args: &[&str]| {
            let mut command = std::process::Command::new("setpriv");
            command.args(["--reuid=boxrun-other", "--regid=boxrun-other", "--clear-groups", "--"]);
            command
                .arg(common::boxrun_binary())
                .args(args)
                .env_clear()
                .env("XDG_RUNTIME_DIR", rig.env.path("run"));
            Run::from(command.output().unwrap())
        };
        other(&["ps"]).fails_with(125, "belongs to another user");
        other(&["kill", "mine"]).fails_with(125, "belongs to another user");
        let own_dir = Run::from(
            std::process::Command::new("setpriv")
                .args(["--reuid=boxrun-other", "--regid=boxrun-other", "--clear-groups", "--"])
                .arg(common::boxrun_binary())
                .args(["ps", "--json"])
                .env_clear()
                .output()
                .unwrap(),
        );
        assert_eq!(own_dir.ok().stdout.trim(), "[]");
    }
    let listed = rig.env.run(&["ps"]);
    assert!(listed.ok().stdout.contains("mine"));
    job.0.kill().unwrap(); // SIGKILL: no chance to clean up
    job.0.wait().unwrap();
    assert!(!rig.env.run(&["ps"]).ok().stdout.contains("mine"), "a dead container is listed");
}

#[test]
fn wrap_runs_the_job_in_the_image_the_scheduler_names_or_bare() {
    let rig = rig();
    let wrap = |env: &[(&str, &str)]| {
        let mut command = rig.env.boxrun();
        command.envs(env.iter().copied()).args([
            "wrap",
            "--",
            "sh",
            "-c",
            "test -e /hello && busybox hostname || echo bare",
        ]);
        Run::from(command.current_dir(rig.env.work()).output().unwrap())
    };
    let hostname = |name: &str| format!("--hostname {name}");
    assert_eq!(
        wrap(&[("BOXRUN_IMAGE", &rig.tiny), ("BOXRUN_OPTS", &hostname("boxrun-image"))]).ok().stdout,
        "boxrun-image\n"
    );
    let pbs = wrap(&[("CONTAINER_IMAGE", &rig.tiny), ("BOXRUN_OPTS", &hostname("pbs-image"))]);
    assert_eq!(pbs.ok().stdout, "pbs-image\n");
    assert_eq!(wrap(&[]).ok().stdout, "bare\n");
    rig.env.write("etc/config.toml", "wrap_require_image = true\n");
    wrap(&[]).fails_with(125, "set BOXRUN_IMAGE");
    wrap(&[("BOXRUN_IMAGE", &rig.tiny), ("BOXRUN_OPTS", "--no-such-flag")])
        .fails_with(125, "invalid BOXRUN_OPTS");
}

#[test]
fn tmp_can_live_in_the_schedulers_scratch_directory() {
    let rig = rig();
    let scratch = rig.env.mkdir("work/scratch");
    rig.env.config("tmp_from = \"scratch\"\n");
    let mut command = rig.env.boxrun();
    command.env("TMPDIR", &scratch).args([&rig.tiny, "sh", "-c", "echo kept > /tmp/result"]);
    Run::from(command.current_dir(rig.env.work()).output().unwrap()).ok();
    assert_eq!(std::fs::read_to_string(scratch.join("boxrun-tmp/result")).unwrap(), "kept\n");
    // Without a scratch directory in the environment, /tmp stays a private tmpfs.
    rig.sh(&[], "echo gone > /tmp/result").ok();
    assert_eq!(std::fs::read_to_string(scratch.join("boxrun-tmp/result")).unwrap(), "kept\n");
}

#[test]
fn oci_run_starts_a_bundle_whatever_bytes_the_host_environment_holds() {
    use std::io::Write;
    use std::os::unix::ffi::OsStrExt;
    let env = common::Env::new();
    let bundle = common::bundle(&env, "bundle", common::test_ids());
    let mut command = env.boxrun();
    command.args(["oci", "run", "--bundle"]).arg(&bundle).arg("not-utf8");
    command.env("NOT_UTF8", std::ffi::OsStr::from_bytes(b"\xff"));
    command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = command.spawn().unwrap();
    child.stdin.take().unwrap().write_all(b"echo $BUNDLE_VAR").unwrap();
    let run = Run::from(child.wait_with_output().unwrap());
    assert_eq!(run.ok().stdout.trim(), "from-bundle");
}
