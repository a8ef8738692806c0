//! Loading the seccomp filter: the default profile, compiled to BPF by build.rs, or a site's
//! or user's profile file (`--seccomp FILE`, config `seccomp`), compiled by the outer boxrun
//! before any namespace exists, so a bad file is an error before the job starts.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::seccomp_profile;

static DEFAULT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/seccomp-default.bpf"));
static NESTED: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/seccomp-nested.bpf"));

/// Which filter a job gets.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Seccomp {
    /// seccomp/default.profile, built in.
    Default,
    /// The default profile without its `unless-nested` rules (`--allow-nested`).
    Nested,
    /// A profile file, compiled by the outer boxrun (a raw program as build.rs writes it).
    Compiled(Vec<u8>),
    /// No filter at all: only where the site allows it.
    Unconfined,
}

impl Seccomp {
    /// Whether the filter is one of boxrun's own, which deny none of the calls the job's
    /// process makes between loading it and its exec (setns, chdir, capset, prctl, execve):
    /// every test's job runs through them under both. A site's or user's profile may deny
    /// them, so it is loaded last.
    pub fn built_in(&self) -> bool {
        matches!(self, Seccomp::Default | Seccomp::Nested)
    }
}

/// Compile a profile file for this machine's architecture.
pub fn compile_file(path: &Path, nested: bool) -> Result<Seccomp, String> {
    let text = fs_err::read_to_string(path).map_err(|e| e.to_string())?;
    let rules = seccomp_profile::parse(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let bytes = seccomp_profile::compile(&rules, std::env::consts::ARCH, nested)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(Seccomp::Compiled(bytes))
}

/// Install the filter in this process (inherited by its children and kept across exec).
/// Needs no_new_privs set first, or CAP_SYS_ADMIN in the process's user namespace (seccomp(2)).
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
    seccompiler::apply_filter(&program(bytes)?).map_err(|e| format!("cannot load the seccomp filter: {e}"))
}

/// Read build.rs's format: a u32 length, then exactly that many 8-byte instructions.
fn program(bytes: &[u8]) -> Result<seccompiler::BpfProgram, String> {
    let corrupt = || "the compiled seccomp filter is corrupt".to_string();
    let (len, body) = bytes.split_first_chunk::<4>().ok_or_else(corrupt)?;
    if body.len() != u32::from_ne_bytes(*len) as usize * 8 {
        return Err(corrupt());
    }
    Ok(body
        .chunks_exact(8)
        .map(|i| seccompiler::sock_filter {
            code: u16::from_ne_bytes([i[0], i[1]]),
            jt: i[2],
            jf: i[3],
            k: u32::from_ne_bytes([i[4], i[5], i[6], i[7]]),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_filters_are_whole_programs() {
        for bytes in [DEFAULT, NESTED] {
            assert!(program(bytes).unwrap().len() > 4);
        }
        assert!(program(&DEFAULT[..DEFAULT.len() - 1]).is_err());
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
                assert!(program(&bytes).unwrap().len() > 4, "{arch}");
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
