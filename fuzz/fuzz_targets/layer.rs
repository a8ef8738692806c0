//! Extracting an arbitrary layer never writes outside the rootfs: the directory holding the
//! rootfs must hold exactly the rootfs and an untouched canary afterwards, whatever the input.
#![no_main]

use std::path::Path;

use boxrun::digest::Digest;
use boxrun::unpack::{self, Layer};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let sandbox = tempfile::tempdir().expect("tempdir");
    let blob = sandbox.path().join("blob");
    std::fs::write(&blob, data).expect("write blob");
    std::fs::write(sandbox.path().join("canary"), b"canary").expect("write canary");
    let rootfs = sandbox.path().join("rootfs");
    std::fs::create_dir(&rootfs).expect("mkdir rootfs");
    let layer = Layer { blob: blob.clone(), digest: Digest::of(data), diff_id: Digest::of(data), size: data.len() as u64 };
    let _ = unpack::unpack(&rootfs, &[layer]);
    let mut names: Vec<_> = std::fs::read_dir(sandbox.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    names.sort();
    assert_eq!(names, ["blob", "canary", "rootfs"], "something was created beside the rootfs");
    assert_eq!(std::fs::read(sandbox.path().join("canary")).unwrap(), b"canary");
    assert!(Path::new("/tmp/boxrun-fuzz-escape").symlink_metadata().is_err(), "wrote into /tmp");
});
