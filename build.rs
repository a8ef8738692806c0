//! Compile seccomp/default.profile to BPF for the target architecture, so that starting a job
//! parses nothing: two programs (the default, and one allowing nested user namespaces), each
//! one filter, written as raw `sock_filter` bytes to OUT_DIR. Also links the static unwinder and
//! lays out the warm start's code together (see each function).

#![allow(clippy::disallowed_methods)] // a build script panics with its own context

#[path = "src/sandbox/seccomp_profile.rs"]
mod seccomp_profile;

use std::path::PathBuf;

fn main() {
    link_unwinder_statically();
    order_warm_start_symbols();
    println!("cargo:rerun-if-changed=seccomp/default.profile");
    println!("cargo:rerun-if-changed=src/sandbox/seccomp_profile.rs");
    println!("cargo:rerun-if-changed=src/sandbox/seccomp_tree.rs");
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

/// Hand the linker the functions a warm start runs, hottest first (build/warm-start.order, made
/// by scripts/order-symbols), so that they sit together in .text. Each 64 KB of code a start
/// touches costs a page fault (2-4 us on a VM; fault-around maps the rest of the 64 KB), and PID 1
/// takes its own again after fork, which copies no page table entries of a file mapping.
/// Scattered over 5.2 MB of text, the start's code took 72 faults per start; laid out together,
/// 14: 0.3 ms of a 3.4 ms start (README, Performance). rust-lld, the default linker of rustc's
/// x86_64-linux-gnu, reads the list.
///
/// The list names mangled symbols, whose hashes come from the rustc and from cargo's -C metadata,
/// which hashes Cargo.toml's package, profile and dependencies, Cargo.lock's versions and each
/// crate's features (Cargo.toml's rustix says why that matters for `cargo test`). Its
/// first lines name the rustc and a hash of both files; a build where any of them differs links
/// without it (its names would match little) and says so.
fn order_warm_start_symbols() {
    const LIST: &str = "build/warm-start.order";
    for input in [LIST, "Cargo.toml", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={input}");
    }
    let release = std::env::var("PROFILE").as_deref() == Ok("release");
    if !release || std::env::var("TARGET").as_deref() != Ok("x86_64-unknown-linux-gnu") {
        return; // the list names the release build's symbols, and rust-lld's options
    }
    let Ok(list) = std::fs::read_to_string(LIST) else { return };
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let version = std::process::Command::new(rustc).arg("-V").output().map(|out| out.stdout);
    let version = String::from_utf8_lossy(version.as_deref().unwrap_or_default()).trim().to_owned();
    let manifests = ["Cargo.toml", "Cargo.lock"].map(|file| std::fs::read(file).unwrap_or_default()).concat();
    let header =
        format!("# {version}\n# Cargo.toml and Cargo.lock: fnv1a-64 {:016x}\n", fnv1a_64(&manifests));
    if !list.starts_with(&header) {
        println!(
            "cargo:warning=boxrun is linked without {LIST}: it was made for another rustc, Cargo.toml \
             or Cargo.lock, and a warm start takes ~0.3 ms more (scripts/order-symbols makes a new one)"
        );
        return;
    }
    let list = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it")).join(LIST);
    println!("cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={}", list.display());
    println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
}

/// FNV-1a, 64 bits: the same few lines in scripts/order-symbols compute it for the list's header.
fn fnv1a_64(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(0xcbf2_9ce4_8422_2325, |hash, &byte| (hash ^ u64::from(byte)).wrapping_mul(0x100_0000_01b3))
}
