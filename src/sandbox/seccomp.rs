//! Loading the seccomp filters: the default profile, compiled to BPF by build.rs, or a site's
//! or user's profile file (`--seccomp FILE`, config `seccomp`), compiled by the outer boxrun
//! before any namespace exists, so a bad file is an error before the job starts.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::seccomp_profile;

static DEFAULT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/seccomp-default.bpf"));
static NESTED: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/seccomp-nested.bpf"));

/// Which filters a job gets.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Seccomp {
    /// seccomp/default.profile, built in.
    Default,
    /// The default profile without its `unless-nested` rules (`--allow-nested`).
    Nested,
    /// A profile file, compiled by the outer boxrun (raw filters as build.rs writes them).
    Compiled(Vec<u8>),
    /// No filter at all: only where the site allows it.
    Unconfined,
}

/// Compile a profile file for this machine's architecture.
pub fn compile_file(path: &Path, nested: bool) -> Result<Seccomp, String> {
    let text = fs_err::read_to_string(path).map_err(|e| e.to_string())?;
    let rules = seccomp_profile::parse(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let bytes = seccomp_profile::compile(&rules, std::env::consts::ARCH, nested)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(Seccomp::Compiled(bytes))
}

/// Install the filters in this process (inherited by its children and kept across exec).
/// Needs no_new_privs set first (seccomp(2): an unprivileged caller must have it).
pub fn load(choice: &Seccomp) -> Result<(), String> {
    let bytes = match choice {
        Seccomp::Default => DEFAULT,
        Seccomp::Nested => NESTED,
        Seccomp::Compiled(bytes) => bytes,
        Seccomp::Unconfined => return Ok(()),
    };
    if bytes.is_empty() {
        return Err(format!(
            "boxrun has no seccomp filter for {}; ask the site to allow unconfined runs",
            std::env::consts::ARCH
        ));
    }
    for program in programs(bytes)? {
        seccompiler::apply_filter(&program).map_err(|e| format!("cannot load the seccomp filter: {e}"))?;
    }
    Ok(())
}

/// Split build.rs's format: per filter a u32 length, then that many 8-byte instructions.
fn programs(mut bytes: &[u8]) -> Result<Vec<seccompiler::BpfProgram>, String> {
    let corrupt = || "the compiled seccomp filter is corrupt".to_string();
    let mut programs = Vec::new();
    while !bytes.is_empty() {
        let (len, rest) = bytes.split_first_chunk::<4>().ok_or_else(corrupt)?;
        let len = u32::from_ne_bytes(*len) as usize;
        let body = rest.get(..len * 8).ok_or_else(corrupt)?;
        let program = body
            .chunks_exact(8)
            .map(|i| seccompiler::sock_filter {
                code: u16::from_ne_bytes([i[0], i[1]]),
                jt: i[2],
                jf: i[3],
                k: u32::from_ne_bytes([i[4], i[5], i[6], i[7]]),
            })
            .collect();
        programs.push(program);
        bytes = &rest[len * 8..];
    }
    Ok(programs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_filters_are_one_program_each() {
        for bytes in [DEFAULT, NESTED] {
            let programs = programs(bytes).unwrap();
            assert_eq!(programs.len(), 1);
            assert!(programs[0].len() > 4);
        }
        assert!(programs(&DEFAULT[..DEFAULT.len() - 1]).is_err());
    }

    #[test]
    fn the_default_profile_compiles_for_every_supported_architecture() {
        let text =
            fs_err::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/seccomp/default.profile")).unwrap();
        let rules = seccomp_profile::parse(&text).unwrap();
        for arch in seccomp_profile::ARCHES {
            for nested in [false, true] {
                let bytes =
                    seccomp_profile::compile(&rules, arch, nested).unwrap_or_else(|e| panic!("{arch}: {e}"));
                assert_eq!(programs(&bytes).unwrap().len(), 1, "{arch}");
            }
        }
    }

    #[test]
    fn profiles_parse_and_errors_name_the_line() {
        let text =
            fs_err::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/seccomp/default.profile")).unwrap();
        let rules = seccomp_profile::parse(&text).unwrap();
        assert!(rules.iter().any(|r| r.syscalls.contains(&"bpf".to_string())));
        let error = seccomp_profile::parse("bpf EPERM\nkeyctl EBADNESS\n").unwrap_err();
        assert!(error.starts_with("line 2:"), "{error}");
        assert!(seccomp_profile::parse("clone EPERM when arg9&1").is_err());
    }
}
