//! Compile seccomp/default.profile to BPF for the target architecture, so that starting a job
//! parses nothing: two programs (the default, and one allowing nested user namespaces), each
//! one filter, written as raw `sock_filter` bytes to OUT_DIR.

#![allow(clippy::disallowed_methods)] // a build script panics with its own context

#[path = "src/sandbox/seccomp_profile.rs"]
mod seccomp_profile;

use std::path::PathBuf;

fn main() {
    link_unwinder_statically();
    println!("cargo:rerun-if-changed=seccomp/default.profile");
    println!("cargo:rerun-if-changed=src/sandbox/seccomp_profile.rs");
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").expect("cargo sets the target arch");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let text = std::fs::read_to_string("seccomp/default.profile").expect("seccomp/default.profile");
    let rules = seccomp_profile::parse(&text).unwrap_or_else(|e| panic!("seccomp/default.profile: {e}"));
    for (name, nested) in [("default", false), ("nested", true)] {
        let bytes = if seccomp_profile::ARCHES.contains(&arch.as_str()) {
            seccomp_profile::compile(&rules, &arch, nested)
                .unwrap_or_else(|e| panic!("seccomp/default.profile: {e}"))
        } else {
            println!("cargo:warning=no seccomp filter for {arch}: jobs will run without one");
            Vec::new()
        };
        std::fs::write(out.join(format!("seccomp-{name}.bpf")), bytes).expect("write to OUT_DIR");
    }
}

/// Link gcc's unwinder (`libgcc_eh.a`) into boxrun instead of loading `libgcc_s.so` at every
/// start. Rust's std asks the linker for `-lgcc_s` on glibc targets; a directory searched first
/// that holds a `libgcc_s.a` naming `libgcc_eh.a` answers that with the static archive. Loading
/// libgcc_s costs each start 0.15 ms here (mapping it, its relocations, and the constructor that
/// probes the CPU with `cpuid`, which traps to the hypervisor on a VM), for code that only runs
/// when a panic unwinds. Where the compiler has no libgcc_eh.a, boxrun links libgcc_s as before.
fn link_unwinder_statically() {
    let gnu = std::env::var("CARGO_CFG_TARGET_ENV").is_ok_and(|env| env == "gnu");
    let static_crt =
        std::env::var("CARGO_CFG_TARGET_FEATURE").is_ok_and(|f| f.split(',').any(|f| f == "crt-static"));
    if !gnu || static_crt {
        return;
    }
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_owned());
    let Ok(out) = std::process::Command::new(cc).arg("-print-file-name=libgcc_eh.a").output() else {
        return;
    };
    let eh = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if !out.status.success() || !eh.is_absolute() || !eh.exists() {
        return;
    }
    let dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("unwinder");
    std::fs::create_dir_all(&dir).expect("create OUT_DIR/unwinder");
    let link = dir.join("libgcc_s.a");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&eh, &link).expect("symlink libgcc_s.a in OUT_DIR");
    println!("cargo:rustc-link-search=native={}", dir.display());
}
