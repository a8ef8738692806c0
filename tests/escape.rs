//! Escape tests: a job tries to gain privilege or reach what it should not, as the
//! unprivileged test user. Each protection (capabilities, no_new_privs, seccomp, nosuid and
//! read-only mounts) has at least one test here that fails if it is removed.

#![allow(clippy::disallowed_methods)] // tests report failures by panicking with context

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use common::{Rig, Run};

/// `rig()` with the probe in the work directory (the job's cwd).
fn rig() -> Rig {
    let rig = common::rig();
    let probe = rig.env.work().join("probe");
    std::fs::copy(common::probe(), &probe).unwrap();
    std::fs::set_permissions(&probe, std::fs::Permissions::from_mode(0o755)).unwrap();
    rig
}

/// `boxrun OPTIONS tiny ./probe ARGS...`: what the probe printed.
fn probe(rig: &Rig, options: &[&str], args: &[&str]) -> String {
    let mut command = vec!["./probe"];
    command.extend(args);
    rig.run(options, &command).ok().stdout.trim().to_string()
}

/// `Key: value` of /proc/self/status inside the container.
fn status_field(status: &str, key: &str) -> String {
    let line =
        status.lines().find(|l| l.starts_with(&format!("{key}:"))).unwrap_or_else(|| panic!("no {key}"));
    line.split_whitespace().nth(1).unwrap().to_string()
}

/// Shell that waits (bounded, no sleep) until PID 1, which locks itself down right after it let
/// the job in, shows its seccomp filter: its last step.
const PID1_LOCKED_DOWN: &str = "i=0; until [ $i -ge 5000 ]; do while read -r key value; do \
    [ \"$key\" = Seccomp: ] && [ \"$value\" = 2 ] && break 2; done < /proc/1/status; i=$((i+1)); done; ";

#[test]
fn no_capability_no_new_privileges_and_a_seccomp_filter_inside() {
    let rig = rig();
    let status = rig.run(&[], &["cat", "/proc/self/status"]).ok().stdout.clone();
    for key in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(status_field(&status, key), "0000000000000000", "{key}");
    }
    assert_eq!(status_field(&status, "NoNewPrivs"), "1");
    assert_eq!(status_field(&status, "Seccomp"), "2");
    // --fakeroot: root inside keeps only the site's small set (default CHOWN, DAC_OVERRIDE,
    // FOWNER, SETGID, SETUID: bits 0, 1, 3, 6, 7).
    let fakeroot = rig.run(&["--fakeroot"], &["cat", "/proc/self/status"]).ok().stdout.clone();
    assert_eq!(status_field(&fakeroot, "CapBnd"), "00000000000000cb");
    assert_eq!(status_field(&fakeroot, "CapEff"), "00000000000000cb");
    assert_eq!(status_field(&fakeroot, "CapAmb"), "0000000000000000");
    assert_eq!(status_field(&fakeroot, "NoNewPrivs"), "1");
    // PID 1, boxrun's init, locks itself down too (with nothing kept, even under --fakeroot),
    // right after it let the job in.
    let pid1 = format!("{PID1_LOCKED_DOWN}cat /proc/1/status");
    for options in [&[][..], &["--fakeroot"][..]] {
        let status = rig.run(options, &["sh", "-c", &pid1]).ok().stdout.clone();
        for key in ["CapPrm", "CapEff", "CapBnd", "CapAmb"] {
            assert_eq!(status_field(&status, key), "0000000000000000", "PID 1's {key} {options:?}");
        }
        assert_eq!(status_field(&status, "NoNewPrivs"), "1", "PID 1 {options:?}");
        assert_eq!(status_field(&status, "Seccomp"), "2", "PID 1 {options:?}");
    }
}

#[test]
fn every_denied_syscall_gets_eperm_and_only_the_filter_denies_them() {
    let rig = rig();
    let mut denied = vec![
        "unshare-user",
        "clone-user",
        "userfaultfd",
        "keyctl",
        "add_key",
        "request_key",
        "name_to_handle_at",
        "open_by_handle_at",
        "bpf",
        "perf_event_open",
        "kexec_load",
        "init_module",
        "finit_module",
        "delete_module",
        "syslog",
        "acct",
    ];
    if cfg!(target_arch = "x86_64") {
        denied.extend(["iopl", "x32-getpid"]);
    }
    for name in &denied {
        assert_eq!(probe(&rig, &[], &["syscall", name]), "EPERM", "{name}");
    }
    assert_eq!(probe(&rig, &[], &["syscall", "clone3-user"]), "ENOSYS", "clone3 must look absent");
    // Without the filter (a site that allows it), these succeed or fail otherwise: the
    // filter, not a missing capability, is what denied them above.
    rig.env.write("etc/config.toml", "allow_unconfined = true\n");
    let discriminating = [
        "unshare-user",
        "clone-user",
        "userfaultfd",
        "keyctl",
        "add_key",
        "name_to_handle_at",
        "bpf",
        "perf_event_open",
    ];
    for name in
        discriminating.iter().chain(if cfg!(target_arch = "x86_64") { &["x32-getpid"][..] } else { &[] })
    {
        assert_ne!(probe(&rig, &["--seccomp=unconfined"], &["syscall", name]), "EPERM", "{name} unconfined");
    }
    // Unconfined means no filter, not no lock-down: no_new_privs stays (seccompiler would
    // set it while loading a filter, so only a run without one shows it is ours).
    let status = rig.run(&["--seccomp=unconfined"], &["cat", "/proc/self/status"]).ok().stdout.clone();
    assert_eq!(
        (status_field(&status, "NoNewPrivs").as_str(), status_field(&status, "Seccomp").as_str()),
        ("1", "0")
    );
    // --allow-nested lifts only the user-namespace rules.
    assert_eq!(probe(&rig, &["--allow-nested"], &["syscall", "unshare-user"]), "OK");
    assert_eq!(probe(&rig, &["--allow-nested"], &["syscall", "keyctl"]), "EPERM");
}

#[test]
fn unconfined_needs_the_site_and_a_bad_profile_is_a_clear_error() {
    let rig = rig();
    rig.run(&["--seccomp=unconfined"], &["true"]).fails_with(125, "allow_unconfined");
    let profile = rig.env.write("work/profile", "keyctl EPERM\nbogus-line\n");
    let profile = profile.to_str().unwrap();
    let run = rig.run(&["--seccomp", profile], &["true"]);
    run.fails_with(125, "line 2");
    // A profile of its own replaces the default (add_key allowed again) and is loaded (keyctl
    // denied): after the built-in ones, which the job loads earlier.
    let custom = rig.env.write("work/custom", "keyctl EPERM\n");
    let custom = ["--seccomp", custom.to_str().unwrap()];
    assert_eq!(probe(&rig, &custom, &["syscall", "add_key"]), "OK");
    assert_eq!(probe(&rig, &custom, &["syscall", "keyctl"]), "EPERM");
}

#[test]
fn setuid_binaries_and_su_gain_nothing() {
    let rig = rig();
    let bin = rig.env.mkdir("suid-bin");
    let suid = bin.join("probe");
    std::fs::copy(common::probe(), &suid).unwrap();
    std::fs::set_permissions(&suid, std::fs::Permissions::from_mode(0o4755)).unwrap(); // owned by root
    let bin = bin.to_str().unwrap();
    let euid = rig.run(&["-v", &format!("{bin}:/suid")], &["/suid/probe", "euid"]);
    assert_eq!(euid.ok().stdout.trim(), common::test_ids().0.to_string());
    let mounts = rig.sh(&["-v", &format!("{bin}:/suid")], "busybox grep ' /suid ' /proc/mounts");
    assert!(mounts.ok().stdout.contains("nosuid"), "{}", mounts.stdout);
    assert_ne!(rig.sh(&[], "busybox su -c id root </dev/null").code, 0, "su worked");
}

#[test]
fn mounts_kernel_knobs_and_the_host_stay_out_of_reach() {
    let rig = rig();
    for options in [&[][..], &["--fakeroot"][..]] {
        let mount = rig.sh(options, "busybox mount -t tmpfs none /tmp");
        assert_ne!(mount.code, 0, "mount worked with {options:?}");
        rig.sh(options, "echo 1 > /proc/sys/kernel/hostname").fails_with(1, "Read-only file system");
        rig.sh(options, "echo x > /sys/kernel/x").fails_with(1, "Read-only file system");
    }
    // PID 1 is boxrun's init, and its root is the container's: the host's PID 1 is invisible.
    // (Until PID 1 has dropped its capabilities, the job, which has none, may not look at its
    // root: ptrace's access check.)
    let init = rig.sh(&[], &format!("{PID1_LOCKED_DOWN}cat /proc/1/cmdline; echo; ls /proc/1/root/"));
    let out = init.ok().stdout.clone();
    assert!(out.lines().next().unwrap_or("").contains("boxrun"), "PID 1 is not boxrun: {out}");
    assert!(out.contains("hello") && !out.contains("boot"), "/proc/1/root is not the container's: {out}");
}

#[test]
fn the_cache_and_the_rootfs_are_read_only_even_to_fakeroot() {
    let rig = rig();
    // Run from the env's top directory, which holds the cache: the cwd bind exposes it.
    let top = rig.env.dir.path().to_path_buf();
    let rootfs: PathBuf =
        std::fs::read_dir(rig.env.cache().join("rootfs")).unwrap().next().unwrap().unwrap().path();
    let script =
        format!("touch {}/x; touch {}/etc/x; echo done", rig.env.cache().display(), rootfs.display());
    for options in [&[][..], &["--fakeroot"][..]] {
        let mut args: Vec<&str> = options.to_vec();
        args.extend([rig.tiny.as_str(), "sh", "-c", &script]);
        let run = Run::from(rig.env.boxrun().args(&args).current_dir(&top).output().unwrap());
        assert_eq!(run.stderr.matches("Read-only file system").count(), 2, "{options:?}: {}", run.stderr);
    }
    assert!(!rig.env.cache().join("x").exists());
}

#[test]
fn processes_outside_cannot_be_signalled_or_traced() {
    let rig = rig();
    let (uid, gid) = common::test_ids();
    let mut outside = std::process::Command::new("setpriv")
        .args([
            format!("--reuid={uid}"),
            format!("--regid={gid}"),
            "--clear-groups".into(),
            "sleep".into(),
            "300".into(),
        ])
        .spawn()
        .unwrap();
    let pid = outside.id().to_string();
    assert_eq!(probe(&rig, &[], &["kill", &pid]), "ESRCH");
    assert_eq!(probe(&rig, &[], &["ptrace", &pid]), "ESRCH");
    outside.kill().unwrap();
    outside.wait().unwrap();
}

#[test]
fn the_security_report_shows_what_an_admin_checks() {
    let rig = rig();
    let report = rig.env.run_in_work(&["run", "--security-report", &rig.tiny], None);
    let out = &report.ok().stdout;
    for needle in [
        "CapEff:\t0000000000000000",
        "NoNewPrivs:\t1",
        "Seccomp:\t2",
        "setgroups: deny",
        " / overlay ro,nosuid,nodev",
    ] {
        assert!(out.contains(needle), "report lacks {needle:?}:\n{out}");
    }
}
