//! Compile seccomp/default.profile to BPF for the target architecture, so that starting a job
//! parses nothing: two programs (the default, and one allowing nested user namespaces), each
//! one filter, written as raw `sock_filter` bytes to OUT_DIR.

#![allow(clippy::disallowed_methods)] // a build script panics with its own context

#[path = "src/sandbox/seccomp_profile.rs"]
mod seccomp_profile;

use std::path::PathBuf;

fn main() {
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
