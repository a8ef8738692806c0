//! Unpacking layers into the rootfs, as the unprivileged user: what the tree holds, and that
//! concurrent and killed unpacks never leave a wrong one.

#![allow(clippy::disallowed_methods)] // tests report failures by panicking with context

mod common;

use std::collections::BTreeSet;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use common::{Env, Registry};

/// Pull `image` (pushed under the same name) and return its rootfs directory.
fn pull_rootfs(env: &Env, registry: &Registry, image: &str) -> PathBuf {
    let run = env.run(&["pull", &format!("{}/{image}", registry.host())]);
    rootfs_of(env, run.ok().stdout.trim())
}

fn rootfs_of(env: &Env, manifest: &str) -> PathBuf {
    env.cache().join("rootfs").join(manifest.trim_start_matches("sha256:"))
}

/// One line of `images/layered.expect`.
struct Expected {
    path: String,
    kind: String,
    mode: String,
    detail: String,
}

fn expectations() -> Vec<Expected> {
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("images/layered.expect")).unwrap();
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|line| {
            let mut parts = line.splitn(4, ' ');
            let mut next = || parts.next().unwrap().to_string();
            Expected { path: next(), kind: next(), mode: next(), detail: next() }
        })
        .collect()
}

fn unescape(text: &str) -> Vec<u8> {
    text.replace("\\n", "\n").replace("\\\\", "\\").into_bytes()
}

/// Check one expectation against the tree; unprivileged modes: no setuid/setgid, dirs u+rwx.
fn check(rootfs: &Path, e: &Expected) {
    let path = rootfs.join(e.path.trim_start_matches('/'));
    let meta = std::fs::symlink_metadata(&path);
    if e.kind == "absent" {
        assert!(meta.is_err(), "{} should be absent", e.path);
        return;
    }
    let meta = meta.unwrap_or_else(|err| panic!("{} is missing: {err}", e.path));
    let image_mode = u32::from_str_radix(&e.mode, 8).unwrap();
    let mode = meta.permissions().mode() & 0o7777;
    match e.kind.as_str() {
        "dir" => {
            assert!(meta.is_dir(), "{} is not a directory", e.path);
            assert_eq!(mode, image_mode | 0o700, "{} mode {mode:o}", e.path);
        }
        "file" => {
            assert!(meta.is_file(), "{} is not a file", e.path);
            assert_eq!(mode, image_mode & !0o6000, "{}: mode {mode:o} (setuid/setgid must go)", e.path);
            let content = std::fs::read(&path).unwrap();
            let expected = match e.detail.strip_prefix("text:") {
                Some(text) => unescape(text),
                None => std::fs::read(e.detail.strip_prefix("host:").unwrap()).unwrap(),
            };
            assert!(content == expected, "{} has the wrong content", e.path);
        }
        "symlink" => {
            assert!(meta.file_type().is_symlink(), "{} is not a symlink", e.path);
            assert_eq!(std::fs::read_link(&path).unwrap(), PathBuf::from(&e.detail), "{}", e.path);
        }
        "hardlink" => {
            let target = std::fs::metadata(rootfs.join(e.detail.trim_start_matches('/'))).unwrap();
            assert_eq!(
                (meta.dev(), meta.ino()),
                (target.dev(), target.ino()),
                "{} is not a hard link",
                e.path
            );
        }
        other => panic!("unknown kind {other} in layered.expect"),
    }
}

/// Every path under `rootfs`, as `/a/b`.
fn tree(rootfs: &Path) -> BTreeSet<String> {
    let mut paths = BTreeSet::new();
    let mut pending = vec![rootfs.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            paths.insert(format!("/{}", path.strip_prefix(rootfs).unwrap().display()));
            if entry.file_type().unwrap().is_dir() {
                pending.push(path);
            }
        }
    }
    paths
}

fn assert_layered_tree(rootfs: &Path) {
    let expected = expectations();
    for e in &expected {
        check(rootfs, e);
    }
    let listed: BTreeSet<String> =
        expected.iter().filter(|e| e.kind != "absent").map(|e| e.path.clone()).collect();
    let extra: Vec<_> = tree(rootfs).difference(&listed).cloned().collect();
    assert!(extra.is_empty(), "unexpected paths in the rootfs: {extra:?}");
}

#[test]
fn the_layered_image_unpacks_to_exactly_what_its_layers_mean() {
    let registry = Registry::start();
    registry.push("layered", "layered");
    let env = Env::new();
    let rootfs = pull_rootfs(&env, &registry, "layered");
    assert_layered_tree(&rootfs);
    let owner = std::fs::metadata(rootfs.join("etc/motd")).unwrap().uid();
    assert_eq!(owner, common::test_ids().0, "files belong to the user who pulled");
}

#[test]
fn rmi_and_gc_remove_a_rootfs_built_from_read_only_directories() {
    let registry = Registry::start();
    registry.push("layered", "layered");
    let env = Env::new();
    let rootfs = pull_rootfs(&env, &registry, "layered");
    assert!(rootfs.join("srv/ro/inside").is_file());
    env.run(&["rmi", &format!("{}/layered", registry.host())]).ok();
    env.run(&["gc"]).ok();
    assert!(!rootfs.exists(), "the rootfs survived rmi + gc");
    assert!(std::fs::read_dir(env.cache().join("rootfs")).unwrap().next().is_none());
}

/// `layered` fetched without its rootfs: the registry, the env, the reference and its manifest.
fn fetched_layered() -> (Registry, Env, String, String) {
    let registry = Registry::start();
    registry.push("layered", "layered");
    let env = Env::new();
    let reference = format!("{}/layered", registry.host());
    let manifest = env.run(&["pull", "--no-unpack", &reference]).ok().stdout.trim().to_string();
    (registry, env, reference, manifest)
}

#[test]
fn no_unpack_only_fetches_and_a_later_pull_builds_the_rootfs_from_the_blobs() {
    let (registry, env, reference, manifest) = fetched_layered();
    let rootfs = rootfs_of(&env, &manifest);
    assert!(!rootfs.exists());
    drop(registry);
    env.run(&["pull", "--offline", &reference]).ok();
    assert_layered_tree(&rootfs);
}

#[test]
fn sixteen_jobs_starting_one_image_build_its_rootfs_once() {
    let (_registry, env, reference, manifest) = fetched_layered();
    let children: Vec<_> = (0..16)
        .map(|_| {
            let mut command = env.boxrun();
            command.args(["pull", "--offline", &reference]).stdout(Stdio::null()).stderr(Stdio::piped());
            command.spawn().unwrap()
        })
        .collect();
    let mut unpacked = 0;
    for child in children {
        let output = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "a job failed: {stderr}");
        unpacked += stderr.lines().filter(|l| l.contains("unpacked")).count();
    }
    assert_eq!(unpacked, 1, "the rootfs was built {unpacked} times");
    assert_layered_tree(&rootfs_of(&env, &manifest));
}

#[test]
fn an_unpack_killed_at_any_point_leaves_nothing_a_later_run_takes_for_complete() {
    let (_registry, env, reference, manifest) = fetched_layered();
    let rootfs = rootfs_of(&env, &manifest);
    // Kill points spread over the unpack's lifetime: before, during, and maybe after it.
    for delay_us in [0u64, 500, 2_000, 5_000, 10_000, 20_000] {
        let mut child =
            env.boxrun().args(["pull", "--offline", &reference]).stderr(Stdio::null()).spawn().unwrap();
        std::thread::sleep(std::time::Duration::from_micros(delay_us)); // picks the kill point
        child.kill().unwrap();
        child.wait().unwrap();
        env.run(&["pull", "--offline", &reference]).ok();
        assert_layered_tree(&rootfs);
        env.run(&["gc"]).ok();
        assert_only_gc_lock_left(&env);
        // Back to blobs without a rootfs for the next kill point.
        env.run(&["rmi", &reference]).ok();
        env.run(&["gc"]).ok();
        assert!(!rootfs.exists());
        env.run(&["pull", "--no-unpack", &reference]).ok();
    }
}

fn assert_only_gc_lock_left(env: &Env) {
    for dir in [env.cache().join("tmp"), env.cache().join("locks")] {
        let left: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n != "gc.lock")
            .collect();
        assert!(left.is_empty(), "{} keeps {left:?}", dir.display());
    }
}

#[test]
fn zstd_layers_and_layers_whose_media_type_lies_unpack_by_their_magic_bytes() {
    let registry = Registry::start();
    let env = Env::new();
    for image in ["tiny-zstd", "tiny-mislabeled"] {
        registry.push(image, image);
        let rootfs = pull_rootfs(&env, &registry, image);
        let hello = std::fs::read_to_string(rootfs.join("hello")).unwrap();
        assert!(hello.contains("hello from boxrun tiny image"), "{image}: {hello}");
        assert_eq!(
            std::fs::read(rootfs.join("bin/busybox")).unwrap(),
            std::fs::read("/bin/busybox").unwrap()
        );
    }
}

#[test]
fn device_nodes_and_fifos_are_skipped_with_one_summary_line() {
    let registry = Registry::start();
    registry.push("hostile-device", "devices");
    let env = Env::new();
    let run = env.run(&["pull", &format!("{}/devices", registry.host())]);
    let rootfs = rootfs_of(&env, run.ok().stdout.trim());
    let notes: Vec<_> = run.stderr.lines().filter(|l| l.contains("skipped")).collect();
    assert_eq!(notes.len(), 1, "{}", run.stderr);
    assert!(notes[0].contains("2 device nodes and 1 fifos"), "{}", notes[0]);
    assert!(rootfs.join("ok").is_file());
    assert!(std::fs::symlink_metadata(rootfs.join("dev/evil-null")).is_err());
}

#[test]
fn an_image_on_a_cached_base_shares_its_identical_files_and_keeps_its_own() {
    let registry = Registry::start();
    registry.push("tiny", "tiny");
    registry.push("tiny-child", "tiny-child");
    let env = Env::new();
    let base = pull_rootfs(&env, &registry, "tiny");
    let child_ref = format!("{}/tiny-child", registry.host());
    let run = env.run(&["pull", &child_ref]);
    let child = rootfs_of(&env, run.ok().stdout.trim());
    assert!(run.stderr.contains("shares 2 files"), "no sharing note: {}", run.stderr);
    let inode = |path: PathBuf| std::fs::metadata(path).unwrap().ino();
    for shared in ["bin/busybox", "etc/os-release"] {
        assert_eq!(inode(base.join(shared)), inode(child.join(shared)), "{shared} is stored twice");
    }
    // Rewritten by the child's layer with the same size and mtime: only the bytes differ.
    assert_ne!(inode(base.join("hello")), inode(child.join("hello")));
    let hello = |rootfs: &Path| std::fs::read_to_string(rootfs.join("hello")).unwrap();
    assert!(hello(&base).contains("tiny image") && hello(&child).contains("tiny child"));
    // Each tree stands alone: removing the base leaves the child whole.
    env.run(&["rmi", &format!("{}/tiny", registry.host())]).ok();
    env.run(&["gc"]).ok();
    assert!(!base.exists());
    let run = env.run(&[&child_ref, "sh", "-c", "/hello; cat /etc/os-release"]);
    assert!(run.ok().stdout.contains("hello from boxrun tiny child\nNAME=\"boxrun tiny\""), "{}", run.stdout);
}
