//! The syscall number dispatch of a seccomp program, rewritten as a binary search.
//!
//! seccompiler compares the syscall number against each listed call in turn, so most calls (the
//! allowed ones, listed nowhere) run through every compare. When a filter is loaded, the kernel
//! emulates it for each of the ~450 syscall numbers, to cache the calls it always allows
//! (`seccomp_cache_prepare`): with the default profile's chain of ~35 compares, a load took
//! 80 µs on our 2-core VM, and 53 µs with the search, paid by the job and by PID 1 at every
//! start. A search over the ranges of numbers that get the same decision runs about seven
//! compares for any number (libseccomp also builds a tree, with `SCMP_FLTATR_CTL_OPTIMIZE=2`).
//!
//! The rewrite works on the finished program, so it knows nothing of profiles: it runs the
//! program for each range of numbers, on this machine's architecture, up to the first
//! instruction that reads anything but the number and the architecture (an argument, the
//! instruction pointer), and keeps the program from there as it was. Anything it does not
//! model leaves the program unchanged.

use super::{AND_K, JA, JEQ_K, JGE_K, JGT_K, JSET_K, LD_W_ABS, RET_K};

/// Offsets in `struct seccomp_data`: the syscall number, then the audit architecture.
const NR: u32 = 0;
const ARCH: u32 = 4;

type Insn = seccompiler::sock_filter;

fn insn(code: u16, jt: u8, jf: u8, k: u32) -> Insn {
    Insn { code, jt, jf, k }
}

/// Where a syscall number's run of the program ends without reading its arguments: a return
/// value, or the instruction (index in the program) that reads one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Return(u32),
    Continue(usize),
}

/// `program` with its dispatch on the syscall number made a binary search, for programs that
/// start with seccompiler's architecture check (`ld arch; jeq NATIVE`). None if the program
/// does something the rewrite does not model, or a jump would not fit.
pub fn search_tree(program: &[Insn]) -> Option<Vec<Insn>> {
    // The architecture check, and its verdict on every other architecture: a return.
    let (native, foreign) = match program {
        [load, check, ..] if (load.code, load.k, check.code) == (LD_W_ABS, ARCH, JEQ_K) => {
            match program.get(2 + check.jf as usize) {
                Some(verdict) if verdict.code == RET_K => (check.k, verdict.k),
                _ => return None,
            }
        }
        _ => return None,
    };
    let ranges = ranges(program, native)?;
    let mut nodes = Vec::new();
    let mut pool = vec![Outcome::Return(foreign)];
    // One range (a profile with no rule for this architecture): nothing to search.
    let Target::Node(0) = build(&ranges, &mut nodes, &mut pool) else { return None };
    lay_out(native, &nodes, &pool, program)
}

/// The numbers from which the outcome may change: every constant the program compares with,
/// and the one after it. Between two of them, every number runs the same way.
fn ranges(program: &[Insn], native: u32) -> Option<Vec<(u32, Outcome)>> {
    let mut starts: Vec<u32> = vec![0];
    for i in program.iter().filter(|i| matches!(i.code, JEQ_K | JGT_K | JGE_K)) {
        starts.push(i.k);
        starts.extend(i.k.checked_add(1));
    }
    starts.sort_unstable();
    starts.dedup();
    let mut ranges: Vec<(u32, Outcome)> = Vec::new();
    for start in starts {
        let outcome = outcome_of(program, start, native)?;
        if ranges.last().is_none_or(|&(_, last)| last != outcome) {
            ranges.push((start, outcome));
        }
    }
    Some(ranges)
}

/// Run `program` for syscall `nr` of the architecture `native` until it returns or reads
/// anything but the number and the architecture. None where the number is transformed
/// (masked, tested bit by bit): its outcome would not be the same over a range.
fn outcome_of(program: &[Insn], nr: u32, native: u32) -> Option<Outcome> {
    let (mut a, mut a_is_nr, mut pc) = (0u32, false, 0usize);
    loop {
        let i = program.get(pc)?;
        let next = pc + 1;
        let taken = match i.code {
            LD_W_ABS if i.k == NR => {
                (a, a_is_nr, pc) = (nr, true, next);
                continue;
            }
            LD_W_ABS if i.k == ARCH => {
                (a, a_is_nr, pc) = (native, false, next);
                continue;
            }
            LD_W_ABS => return Some(Outcome::Continue(pc)),
            RET_K => return Some(Outcome::Return(i.k)),
            JA => {
                pc = next + i.k as usize;
                continue;
            }
            JEQ_K => a == i.k,
            JGT_K => a > i.k,
            JGE_K => a >= i.k,
            JSET_K | AND_K if a_is_nr => return None,
            JSET_K => a & i.k != 0,
            AND_K => {
                (a, pc) = (a & i.k, next);
                continue;
            }
            _ => return None,
        };
        pc = next + if taken { i.jt } else { i.jf } as usize;
    }
}

/// A node of the search: jump to `yes` when the number compares true with `k`, else to `no`.
struct Node {
    code: u16,
    k: u32,
    yes: Target,
    no: Target,
}

#[derive(Clone, Copy)]
enum Target {
    Node(usize),
    Pool(usize),
}

/// The search over `ranges` (each from its start to the next one's), as nodes in `nodes` (the
/// root first), each leaf an entry of `pool`. A number alone between two ranges of the same
/// outcome (a listed call) takes one `jeq`; everything else halves the ranges with a `jge`.
fn build(ranges: &[(u32, Outcome)], nodes: &mut Vec<Node>, pool: &mut Vec<Outcome>) -> Target {
    let leaf = |outcome: Outcome, pool: &mut Vec<Outcome>| {
        let at = pool.iter().position(|o| *o == outcome).unwrap_or_else(|| {
            pool.push(outcome);
            pool.len() - 1
        });
        Target::Pool(at)
    };
    match ranges {
        [(_, outcome)] => leaf(*outcome, pool),
        [(_, outer), (k, inner), (after, again)] if after.checked_sub(*k) == Some(1) && outer == again => {
            nodes.push(Node { code: JEQ_K, k: *k, yes: leaf(*inner, pool), no: leaf(*outer, pool) });
            Target::Node(nodes.len() - 1)
        }
        _ => {
            let (low, high) = ranges.split_at(ranges.len() / 2);
            let at = nodes.len();
            nodes.push(Node { code: JGE_K, k: high[0].0, yes: Target::Pool(0), no: Target::Pool(0) });
            let no = build(low, nodes, pool);
            let yes = build(high, nodes, pool);
            (nodes[at].yes, nodes[at].no) = (yes, no);
            Target::Node(at)
        }
    }
}

/// The new program: the architecture check (another architecture gets the old program's
/// verdict, `pool[0]`), the search from its root `nodes[0]`, its pool of returns and of jumps
/// into the old program, then the old program, whose instructions from an argument read on are
/// reached from the pool.
fn lay_out(native: u32, nodes: &[Node], pool: &[Outcome], old: &[Insn]) -> Option<Vec<Insn>> {
    let first_node = 3; // after: ld arch; jeq native; ld nr
    let pool_at = first_node + nodes.len();
    let old_at = pool_at + pool.len();
    let index = |target: Target| match target {
        Target::Node(n) => first_node + n,
        Target::Pool(p) => pool_at + p,
    };
    // Classic BPF jumps only forward, by at most 255 for a conditional one.
    let offset = |from: usize, to: usize| u8::try_from(to.checked_sub(from + 1)?).ok();
    let mut out = vec![insn(LD_W_ABS, 0, 0, ARCH), insn(JEQ_K, 0, offset(1, pool_at)?, native)];
    out.push(insn(LD_W_ABS, 0, 0, NR));
    for (n, node) in nodes.iter().enumerate() {
        let at = first_node + n;
        out.push(insn(node.code, offset(at, index(node.yes))?, offset(at, index(node.no))?, node.k));
    }
    for outcome in pool {
        out.push(match *outcome {
            Outcome::Return(value) => insn(RET_K, 0, 0, value),
            Outcome::Continue(pc) => insn(JA, 0, 0, (old_at + pc - out.len() - 1) as u32),
        });
    }
    out.extend_from_slice(old);
    Some(out)
}
