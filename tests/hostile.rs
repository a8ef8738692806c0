//! Hostile layers (images/mkhostile.py) pulled and unpacked as the unprivileged user: each
//! ends as a contained tree or a clear refusal, and nothing outside the rootfs is created,
//! changed or deleted. What each image must give is in images/hostile.expect.

#![allow(clippy::disallowed_methods)] // tests report failures by panicking with context

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use common::{Env, Registry};

/// The victim directory the hostile images aim at (fixed: the images name it).
const VICTIM: &str = "/tmp/boxrun-victim";
const CANARIES: [(&str, &str); 2] = [("canary", "canary one\n"), ("canary2", "canary two\n")];

/// `images/hostile.expect`: image → its lines (verb, args).
fn expectations() -> BTreeMap<String, Vec<Vec<String>>> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("images/hostile.expect");
    let mut images: BTreeMap<String, Vec<Vec<String>>> = BTreeMap::new();
    for line in std::fs::read_to_string(path).unwrap().lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut parts = line.splitn(4, ' ').map(str::to_string);
        let image = parts.next().unwrap();
        images.entry(image).or_default().push(parts.collect());
    }
    images
}

/// What the host side looks like: the victim directory and its canaries, /etc/passwd.
#[derive(Debug, PartialEq)]
struct HostState {
    victim_mode: u32,
    victim_entries: Vec<String>,
    canaries: Vec<(String, Vec<u8>, u32, i64, u64)>,
    passwd: (Vec<u8>, u64),
}

fn plant_victim() -> HostState {
    let _ = std::fs::remove_dir_all(VICTIM);
    std::fs::create_dir(VICTIM).unwrap();
    for (name, content) in CANARIES {
        std::fs::write(Path::new(VICTIM).join(name), content).unwrap();
        std::fs::set_permissions(Path::new(VICTIM).join(name), std::fs::Permissions::from_mode(0o644))
            .unwrap();
    }
    std::fs::set_permissions(VICTIM, std::fs::Permissions::from_mode(0o755)).unwrap();
    // Writable by boxrun's user: a wrong extractor must be able to do damage, so that a
    // refusal by EACCES cannot pass for a correct one.
    let (uid, gid) = common::test_ids();
    std::os::unix::fs::chown(VICTIM, Some(uid), Some(gid)).unwrap();
    host_state()
}

fn host_state() -> HostState {
    let meta = std::fs::symlink_metadata(VICTIM).unwrap();
    let mut victim_entries: Vec<String> = std::fs::read_dir(VICTIM)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    victim_entries.sort();
    let canaries = CANARIES
        .iter()
        .filter_map(|(name, _)| {
            let path = Path::new(VICTIM).join(name);
            let m = std::fs::symlink_metadata(&path).ok()?;
            Some((name.to_string(), std::fs::read(&path).ok()?, m.mode(), m.mtime(), m.nlink()))
        })
        .collect();
    let passwd = (std::fs::read("/etc/passwd").unwrap(), std::fs::metadata("/etc/passwd").unwrap().nlink());
    HostState { victim_mode: meta.mode(), victim_entries, canaries, passwd }
}

/// `lstat` of an absolute image path inside `rootfs`, refusing to pass through a symlink.
fn lstat_in(rootfs: &Path, path: &str) -> Option<std::fs::Metadata> {
    let mut current = rootfs.to_path_buf();
    let components: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    for (i, component) in components.iter().enumerate() {
        current.push(component);
        let meta = std::fs::symlink_metadata(&current).ok()?;
        if i + 1 < components.len() {
            assert!(meta.is_dir(), "{path}: {} is not a directory inside the rootfs", current.display());
        } else {
            return Some(meta);
        }
    }
    None
}

fn unescape(text: &str) -> Vec<u8> {
    text.replace("\\n", "\n").replace("\\\\", "\\").into_bytes()
}

/// Check one line of an `unpacks` image against its rootfs.
fn check_rootfs(image: &str, rootfs: &Path, verb: &str, args: &[String]) {
    let at = |path: &str| lstat_in(rootfs, path);
    let what = format!("{image}: {verb} {}", args.join(" "));
    match verb {
        "inside" => {
            let meta = at(&args[0]).unwrap_or_else(|| panic!("{what}: missing"));
            assert!(meta.is_file(), "{what}: not a regular file");
            if let Some(content) = args.get(1) {
                let actual = std::fs::read(rootfs.join(args[0].trim_start_matches('/'))).unwrap();
                assert_eq!(actual, unescape(content), "{what}: content");
            }
        }
        "dir" => assert!(at(&args[0]).is_some_and(|m| m.is_dir()), "{what}"),
        "symlink" => {
            assert!(at(&args[0]).is_some_and(|m| m.file_type().is_symlink()), "{what}: not a symlink");
            let target = std::fs::read_link(rootfs.join(args[0].trim_start_matches('/'))).unwrap();
            assert_eq!(target, PathBuf::from(&args[1]), "{what}");
        }
        "samefile" => {
            let (a, b) = (at(&args[0]).expect(&what), at(&args[1]).expect(&what));
            assert_eq!((a.dev(), a.ino()), (b.dev(), b.ino()), "{what}: not one inode");
        }
        "absent" => assert!(at(&args[0]).is_none(), "{what}: present"),
        other => panic!("unknown verb {other} in hostile.expect"),
    }
}

/// Everything directly in `dir`, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn hostile_layers_never_touch_anything_outside_the_rootfs() {
    let registry = Registry::start();
    let images = expectations();
    assert!(images.len() >= 10, "hostile.expect lists {} images", images.len());
    for (image, lines) in &images {
        registry.push(image, image);
        let before = plant_victim();
        let env = Env::new();
        let env_top = listing(env.dir.path());
        let run = env.run_within(120, &["pull", "-q", &format!("{}/{image}", registry.host())]);
        assert!(run.code == 0 || run.code == 125, "{image}: boxrun died ({}): {}", run.code, run.stderr);
        assert_eq!(host_state(), before, "{image} changed the host");
        assert_eq!(listing(env.dir.path()), env_top, "{image} created something beside the cache");
        let rootfs_dir = env.cache().join("rootfs");
        let outcome =
            lines.iter().find(|l| ["unpacks", "refuse", "contained-or-refuse"].contains(&l[0].as_str()));
        match outcome.map(|l| l[0].as_str()) {
            Some("unpacks") => {
                assert_eq!(run.code, 0, "{image} was refused: {}", run.stderr);
                let rootfs = rootfs_dir.join(run.stdout.trim().trim_start_matches("sha256:"));
                assert_eq!(listing(&rootfs_dir).len(), 1, "{image}: one image, one rootfs");
                for line in lines.iter().filter(|l| l[0] != "unpacks") {
                    check_rootfs(image, &rootfs, &line[0], &line[1..]);
                }
            }
            Some("refuse") => {
                assert_eq!(run.code, 125, "{image} was not refused");
                assert!(
                    run.stderr.contains("layer sha256:"),
                    "{image}: the error names no layer: {}",
                    run.stderr
                );
                assert_eq!(run.stderr.trim().lines().count(), 1, "{image}: not one line: {}", run.stderr);
                assert!(listing(&rootfs_dir).is_empty(), "{image} left a rootfs behind");
            }
            Some("contained-or-refuse") => {
                if run.code == 125 {
                    assert!(listing(&rootfs_dir).is_empty(), "{image} left a rootfs behind");
                }
            }
            other => panic!("{image}: no outcome line in hostile.expect ({other:?})"),
        }
        env.run(&["gc"]).ok();
        assert!(listing(&env.cache().join("tmp")).is_empty(), "{image}: staging left after gc");
    }
    let _ = std::fs::remove_dir_all(VICTIM);
}
