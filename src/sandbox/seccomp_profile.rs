//! The seccomp profile format (seccomp/default.profile) and its compilation to BPF with
//! seccompiler. build.rs compiles the default profile with this same file (`#[path]`), and
//! `--seccomp FILE` at run time.

/// The architectures boxrun builds seccomp filters for.
pub const ARCHES: [&str; 2] = ["x86_64", "aarch64"];

/// One rule: which syscalls, the errno they get, an optional argument condition.
#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    pub syscalls: Vec<String>,
    pub errno: Errno,
    /// (argument index, mask): applies when `arg & mask != 0`.
    pub when: Option<(u8, u64)>,
    pub unless_nested: bool,
    pub only_arch: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Errno {
    Eperm,
    Enosys,
}

impl Errno {
    pub fn value(self) -> u32 {
        match self {
            Errno::Eperm => 1,
            Errno::Enosys => 38,
        }
    }
}

/// Parse a profile; errors name the line.
pub fn parse(text: &str) -> Result<Vec<Rule>, String> {
    let mut rules = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        rules.push(parse_rule(line).map_err(|e| format!("line {}: {e}", n + 1))?);
    }
    Ok(rules)
}

fn parse_rule(line: &str) -> Result<Rule, String> {
    let mut words = line.split_whitespace();
    let syscalls: Vec<String> = words.next().unwrap_or("").split(',').map(str::to_string).collect();
    if syscalls.iter().any(|s| s.is_empty() || !s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')) {
        return Err(format!("'{line}' does not start with SYSCALL[,SYSCALL...]"));
    }
    let errno = match words.next() {
        Some("EPERM") => Errno::Eperm,
        Some("ENOSYS") => Errno::Enosys,
        other => return Err(format!("expected EPERM or ENOSYS after the syscalls, found {other:?}")),
    };
    let mut rule = Rule { syscalls, errno, when: None, unless_nested: false, only_arch: None };
    while let Some(word) = words.next() {
        match word {
            "when" => rule.when = Some(parse_condition(words.next().unwrap_or(""))?),
            "unless-nested" => rule.unless_nested = true,
            "only" => match words.next() {
                Some(arch) if ARCHES.contains(&arch) => rule.only_arch = Some(arch.to_string()),
                other => return Err(format!("'only' needs x86_64 or aarch64, found {other:?}")),
            },
            other => return Err(format!("unknown word '{other}'")),
        }
    }
    Ok(rule)
}

/// `argN&MASK` with MASK in decimal or 0x hex.
fn parse_condition(text: &str) -> Result<(u8, u64), String> {
    let bad = || format!("'{text}' is not argN&MASK");
    let (arg, mask) = text.split_once('&').ok_or_else(bad)?;
    let index: u8 =
        arg.strip_prefix("arg").and_then(|i| i.parse().ok()).filter(|i| *i < 6).ok_or_else(bad)?;
    let mask = match mask.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => mask.parse(),
    }
    .map_err(|_| bad())?;
    Ok((index, mask))
}

/// seccompiler's JSON for `rules` on `arch`: one filter per errno (a seccompiler filter has a
/// single match action), named after it. `nested` drops the `unless-nested` rules.
pub fn to_json(rules: &[Rule], arch: &str, nested: bool) -> String {
    let mut filters = Vec::new();
    for errno in [Errno::Eperm, Errno::Enosys] {
        let mut entries = Vec::new();
        for rule in rules.iter().filter(|r| r.errno == errno && !(nested && r.unless_nested)) {
            if rule.only_arch.as_deref().is_some_and(|a| a != arch) {
                continue;
            }
            for syscall in &rule.syscalls {
                entries.push(match rule.when {
                    None => format!(r#"{{"syscall":"{syscall}"}}"#),
                    Some((index, mask)) => format!(
                        r#"{{"syscall":"{syscall}","args":[{{"index":{index},"type":"qword","op":{{"masked_eq":{mask}}},"val":{mask}}}]}}"#
                    ),
                });
            }
        }
        // A mask condition above means "all of MASK's bits"; each rule here has a single bit.
        filters.push(format!(
            r#""{}":{{"mismatch_action":"allow","match_action":{{"errno":{}}},"filter":[{}]}}"#,
            errno.value(),
            errno.value(),
            entries.join(",")
        ));
    }
    format!("{{{}}}", filters.join(","))
}

/// An x32 syscall number on x86_64 has this bit set; the audit architecture is the same as
/// x86_64's, so only the number tells them apart (seccomp(2), "Caveats").
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// The classic-BPF instructions and seccomp return values the rewrites below use
/// (linux/filter.h, linux/seccomp.h).
const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
const JGE_K: u16 = 0x35; // BPF_JMP | BPF_JGE | BPF_K
const JA: u16 = 0x05; // BPF_JMP | BPF_JA: pc += 1 + k
const RET_K: u16 = 0x06; // BPF_RET | BPF_K
const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;

/// Compile `rules` for `arch` to one raw BPF program: its length (u32), then its instructions,
/// 8 bytes each (`struct sock_filter`), all native endian.
pub fn compile(rules: &[Rule], arch: &str, nested: bool) -> Result<Vec<u8>, String> {
    let target: seccompiler::TargetArch = arch.try_into().map_err(|e| format!("{e:?}"))?;
    let json = to_json(rules, arch, nested);
    let filters = seccompiler::compile_from_json(json.as_bytes(), target).map_err(|e| e.to_string())?;
    let filter = |errno: Errno| filters[&errno.value().to_string()].clone();
    let mut program = chain(filter(Errno::Enosys), filter(Errno::Eperm));
    if arch == "x86_64" {
        refuse_x32(&mut program);
    }
    let mut bytes = Vec::with_capacity(4 + program.len() * 8);
    bytes.extend((program.len() as u32).to_ne_bytes());
    for insn in program {
        bytes.extend(insn.code.to_ne_bytes());
        bytes.extend([insn.jt, insn.jf]);
        bytes.extend(insn.k.to_ne_bytes());
    }
    Ok(bytes)
}

/// One program that does what loading `first` then `second` would, but loads once and runs
/// once per syscall (the kernel JITs every filter at load and runs every filter on every
/// syscall). Each "allow" of `first` becomes a jump to `second`'s start: a syscall `first`
/// denies gets `first`'s errno, which is also what the stack gives when both deny it (the
/// later-loaded filter's errno wins among equals, seccomp(2)); the rest is `second`'s to judge.
/// Replacing one instruction by one moves nothing, so `first`'s own jumps stay right.
fn chain(mut first: seccompiler::BpfProgram, second: seccompiler::BpfProgram) -> seccompiler::BpfProgram {
    let len = first.len();
    for (at, insn) in first.iter_mut().enumerate() {
        if insn.code == RET_K && insn.k == SECCOMP_RET_ALLOW {
            *insn = seccompiler::sock_filter { code: JA, jt: 0, jf: 0, k: (len - at - 1) as u32 };
        }
    }
    first.extend(second);
    first
}

/// Insert, right after seccompiler's architecture check (3 instructions), a refusal of every
/// x32 syscall number: a deny-list filter would otherwise let the x32 twin of a denied call
/// through. Jumps in BPF are relative and forward: the check's own jump lands on the guard,
/// and every jump after it moves with its target.
fn refuse_x32(program: &mut Vec<seccompiler::sock_filter>) {
    let insn = |code, jt, jf, k| seccompiler::sock_filter { code, jt, jf, k };
    let guard = [
        insn(LD_W_ABS, 0, 0, 0), // seccomp_data.nr
        insn(JGE_K, 0, 1, X32_SYSCALL_BIT),
        insn(RET_K, 0, 0, SECCOMP_RET_ERRNO | Errno::Eperm.value()),
    ];
    program.splice(3..3, guard);
}
