//! The seccomp profile format (seccomp/default.profile) and its compilation to BPF with
//! seccompiler. build.rs compiles the default profile with this same file (`#[path]`), and
//! `--seccomp FILE` at run time.

#[path = "seccomp_tree.rs"]
mod tree;

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

/// The classic-BPF instructions seccompiler emits, which the rewrites below and in [`tree`]
/// read and write, and the seccomp return values they use (linux/filter.h, linux/seccomp.h).
const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
const AND_K: u16 = 0x54; // BPF_ALU | BPF_AND | BPF_K
const JA: u16 = 0x05; // BPF_JMP | BPF_JA: pc += 1 + k
const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
const JGT_K: u16 = 0x25; // BPF_JMP | BPF_JGT | BPF_K
const JGE_K: u16 = 0x35; // BPF_JMP | BPF_JGE | BPF_K
const JSET_K: u16 = 0x45; // BPF_JMP | BPF_JSET | BPF_K
const RET_K: u16 = 0x06; // BPF_RET | BPF_K
const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
/// The instruction classes and the jump operation `shorten` tells apart.
const CLASS: u16 = 0x07;
const CLASS_JMP: u16 = 0x05;
const CLASS_RET: u16 = 0x06;
const OP: u16 = 0xf0;

/// Compile `rules` for `arch` to one raw BPF program: its length (u32), then its instructions,
/// 8 bytes each (`struct sock_filter`), all native endian.
pub fn compile(rules: &[Rule], arch: &str, nested: bool) -> Result<Vec<u8>, String> {
    let program = optimized(program(rules, arch, nested)?);
    let mut bytes = Vec::with_capacity(4 + program.len() * 8);
    bytes.extend((program.len() as u32).to_ne_bytes());
    for insn in program {
        bytes.extend(insn.code.to_ne_bytes());
        bytes.extend([insn.jt, insn.jf]);
        bytes.extend(insn.k.to_ne_bytes());
    }
    Ok(bytes)
}

/// `program`, deciding the same in fewer instructions ([`shorten`]), the syscall number found
/// by a binary search ([`tree`]). The search jumps into the program, leaving its own dispatch
/// unreached: shortened away.
fn optimized(program: seccompiler::BpfProgram) -> seccompiler::BpfProgram {
    let program = shorten(&program).unwrap_or(program);
    tree::search_tree(&program).map(|t| shorten(&t).unwrap_or(t)).unwrap_or(program)
}

/// seccompiler's program for `rules`: its two filters chained, and x32 refused on x86_64.
fn program(rules: &[Rule], arch: &str, nested: bool) -> Result<seccompiler::BpfProgram, String> {
    let target: seccompiler::TargetArch = arch.try_into().map_err(|e| format!("{e:?}"))?;
    let json = to_json(rules, arch, nested);
    let filters = seccompiler::compile_from_json(json.as_bytes(), target).map_err(|e| e.to_string())?;
    let filter = |errno: Errno| filters[&errno.value().to_string()].clone();
    let mut program = chain(filter(Errno::Enosys), filter(Errno::Eperm));
    if arch == "x86_64" {
        refuse_x32(&mut program);
    }
    Ok(program)
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

/// The same decisions in fewer instructions. seccompiler spends five per syscall (a compare,
/// two jumps, a deny and an allow return); every jump that lands on a jump is sent straight to
/// where that one goes, every return to the last identical one, and what no path reaches any
/// more is dropped: one compare per syscall is left. The kernel translates and JITs each
/// instruction at load, and before the first syscall it runs the program for every syscall
/// number to find the ones it may allow without running it: both scale with the length
/// (140 -> 47 instructions for the default profile). None if an offset would not fit.
fn shorten(program: &[seccompiler::sock_filter]) -> Option<seccompiler::BpfProgram> {
    let len = program.len();
    let is = |at: usize, class: u16| program[at].code & CLASS == class;
    let is_ja = |at: usize| is(at, CLASS_JMP) && program[at].code & OP == 0;
    // The last return of each value: every identical return may jump there instead (forward).
    let last_return =
        |at: usize| (at..len).rev().find(|&r| is(r, CLASS_RET) && program[r].k == program[at].k);
    let resolve = |mut at: usize| -> Option<usize> {
        while at < len && is_ja(at) {
            at = at + 1 + program[at].k as usize;
        }
        if at < len && is(at, CLASS_RET) { last_return(at) } else { (at < len).then_some(at) }
    };
    // Where each kept instruction goes: (jump true or JA, jump false); fall-through is at + 1.
    let mut targets: Vec<Option<(usize, usize)>> = vec![None; len];
    let mut reached = vec![false; len];
    let mut stack = vec![0];
    while let Some(at) = stack.pop() {
        if std::mem::replace(&mut reached[at], true) {
            continue;
        }
        let next: Vec<usize> = if is_ja(at) {
            let to = resolve(at + 1 + program[at].k as usize)?;
            targets[at] = Some((to, to));
            vec![to]
        } else if is(at, CLASS_JMP) {
            let insn = &program[at];
            let (yes, no) = (resolve(at + 1 + insn.jt as usize)?, resolve(at + 1 + insn.jf as usize)?);
            targets[at] = Some((yes, no));
            vec![yes, no]
        } else if is(at, CLASS_RET) {
            vec![]
        } else {
            vec![at + 1]
        };
        stack.extend(next.into_iter().filter(|&to| to < len));
    }
    let mut index = vec![0usize; len];
    let mut kept = 0;
    for at in 0..len {
        index[at] = kept;
        kept += reached[at] as usize;
    }
    let offset = |from: usize, to: usize| index[to].checked_sub(index[from] + 1);
    let mut out = Vec::with_capacity(kept);
    for at in (0..len).filter(|&at| reached[at]) {
        let mut insn = program[at].clone();
        match targets[at] {
            Some((to, _)) if is_ja(at) => insn.k = offset(at, to)? as u32,
            Some((yes, no)) => {
                insn.jt = u8::try_from(offset(at, yes)?).ok()?;
                insn.jf = u8::try_from(offset(at, no)?).ok()?;
            }
            None => {}
        }
        out.push(insn);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A classic-BPF machine for what seccompiler emits, over `struct seccomp_data` as words:
    /// nr, arch, ip (2), then each argument's low and high word (little endian).
    fn run(program: &[seccompiler::sock_filter], data: &[u32; 16]) -> u32 {
        steps(program, data).0
    }

    /// What `program` returns, and how many instructions it ran to decide.
    fn steps(program: &[seccompiler::sock_filter], data: &[u32; 16]) -> (u32, usize) {
        let (mut a, mut pc, mut ran) = (0u32, 0usize, 0);
        loop {
            let insn = &program[pc];
            pc += 1;
            ran += 1;
            let taken = match insn.code {
                LD_W_ABS => {
                    a = data[insn.k as usize / 4];
                    continue;
                }
                AND_K => {
                    a &= insn.k;
                    continue;
                }
                JA => {
                    pc += insn.k as usize;
                    continue;
                }
                RET_K => return (insn.k, ran),
                JEQ_K => a == insn.k,
                JGT_K => a > insn.k,
                JGE_K => a >= insn.k,
                JSET_K => a & insn.k != 0,
                code => panic!("opcode {code:#x} not in this machine"),
            };
            pc += if taken { insn.jt } else { insn.jf } as usize;
        }
    }

    /// At load, the kernel runs a new filter once for each syscall number of the architecture,
    /// to cache the calls it always allows: the search is there to shorten that pass.
    #[test]
    fn the_search_decides_any_syscall_number_in_a_few_instructions() {
        let rules = parse(include_str!("../../seccomp/default.profile")).unwrap();
        for ((arch, audit_arch), nested) in
            ARCHES.into_iter().zip(AUDIT_ARCHES).flat_map(|a| [(a, false), (a, true)])
        {
            let long = program(&rules, arch, nested).unwrap();
            let chain = shorten(&long).unwrap();
            let searched = optimized(long);
            // The numbers the kernel's pass covers (x86_64 has fewer than 500 syscalls).
            let cost = |program: &[seccompiler::sock_filter]| -> Vec<usize> {
                (0..500)
                    .map(|nr| steps(program, &[nr, audit_arch, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]).1)
                    .collect()
            };
            let (before, after) = (cost(&chain), cost(&searched));
            let (most, sum_before, sum_after) =
                (after.iter().max().unwrap(), before.iter().sum::<usize>(), after.iter().sum::<usize>());
            // The kernel also translates and JITs every instruction at load.
            assert!(searched.len() < chain.len() + 8, "{arch}: {} instructions", searched.len());
            assert!(*most <= 16, "{arch}: {most} instructions for one number");
            assert!(sum_after * 2 < sum_before, "{arch}: {sum_after} against {sum_before}");
        }
    }

    #[test]
    fn the_optimized_program_decides_every_syscall_as_seccompilers() {
        let rules = parse(include_str!("../../seccomp/default.profile")).unwrap();
        for (arch, audit_arch) in ARCHES.into_iter().zip(AUDIT_ARCHES) {
            for nested in [false, true] {
                let long = program(&rules, arch, nested).unwrap();
                let short = optimized(long.clone());
                assert!(
                    short.len() * 2 < long.len(),
                    "{arch}: {} of {} instructions",
                    short.len(),
                    long.len()
                );
                assert_same_decisions(&rules, &long, &short, audit_arch);
            }
        }
    }

    /// Profiles whose program has nothing to search on some architecture: no rule at all, only
    /// rules dropped for nested containers, only rules of the other architecture.
    #[test]
    fn a_profile_with_no_rule_for_the_architecture_still_allows_everything_else() {
        for text in ["# nothing\n", "clone3 ENOSYS unless-nested\n", "iopl EPERM only x86_64\n"] {
            let rules = parse(text).unwrap();
            for (arch, audit_arch) in ARCHES.into_iter().zip(AUDIT_ARCHES) {
                for nested in [false, true] {
                    let long = program(&rules, arch, nested).unwrap();
                    assert_same_decisions(&rules, &long, &optimized(long.clone()), audit_arch);
                }
            }
        }
    }

    /// The audit architecture of each of `ARCHES` (linux/audit.h).
    const AUDIT_ARCHES: [u32; 2] = [0xc000_003e, 0xc000_00b7];

    /// `short` decides as `long` for every syscall number around each constant `long` compares
    /// with, the first 600 and the x32 ones, under its own architecture and another, with no
    /// argument set, all set, and each rule's mask alone and all but it.
    fn assert_same_decisions(
        rules: &[Rule],
        long: &[seccompiler::sock_filter],
        short: &[seccompiler::sock_filter],
        audit_arch: u32,
    ) {
        let mut argument_sets = vec![[0u64; 6], [u64::MAX; 6]];
        for (index, mask) in rules.iter().filter_map(|rule| rule.when) {
            for value in [mask, !mask] {
                let mut args = [0u64; 6];
                args[index as usize] = value;
                argument_sets.push(args);
            }
        }
        let around = long.iter().flat_map(|insn| (0..4).map(move |d| insn.k.wrapping_add(d).wrapping_sub(1)));
        let numbers = (0..600).chain(X32_SYSCALL_BIT..X32_SYSCALL_BIT + 600).chain(around);
        for nr in numbers.chain([0x7fff_ffff, 0xbfff_ffff, u32::MAX]) {
            for seen_arch in [audit_arch, 0x4000_0003, 0] {
                for args in &argument_sets {
                    let mut data = [0u32; 16];
                    (data[0], data[1]) = (nr, seen_arch);
                    for (i, arg) in args.iter().enumerate() {
                        (data[4 + 2 * i], data[5 + 2 * i]) = (*arg as u32, (*arg >> 32) as u32);
                    }
                    assert_eq!(
                        run(short, &data),
                        run(long, &data),
                        "arch {audit_arch:#x} nr {nr:#x} {args:x?}"
                    );
                }
            }
        }
    }
}
