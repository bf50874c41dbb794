//! What the code generator learns about a block before emitting it: which ops want
//! the current PC or may raise the stop request, which labels need the PC, the
//! register allocation of temps and the reads of each temp.

use crate::codegen::direct;
use vireo_core::exec::{DirectGlobals, EnvFn, PureFn};
use vireo_core::ir::{Block, Effects, Global, HelperId, Op, Temp};

/// How a helper call is compiled.
pub(crate) enum CallKind<E> {
    /// A pure helper with a plain-function form (`DirectGlobals::pure_fn`): called
    /// directly, nothing synced.
    Pure(PureFn),
    /// A function on the environment that cannot fault or ask to stop
    /// (`DirectGlobals::env_fn`): through the minimal trampoline.
    Env(EnvFn<E>),
    /// Everything else: the general trampoline, after a sync.
    General,
}

/// How the call of `helper` with `args` and `effects` is compiled.
pub(crate) fn call_kind<E: DirectGlobals>(
    helper: HelperId,
    args: &[Temp],
    effects: Effects,
) -> CallKind<E> {
    match (E::pure_fn(helper), E::env_fn(helper)) {
        (Some(f), _) if effects == Effects::PURE && args.len() <= 4 => CallKind::Pure(f),
        (_, Some(f)) if args.len() <= 3 => CallKind::Env(f),
        _ => CallKind::General,
    }
}

/// Whether `op` may fault or call into the environment (wants the current PC and
/// the counters up to date).
pub(crate) fn wants_pc<E: DirectGlobals>(op: &Op) -> bool {
    match op {
        Op::Get { src: g, .. } | Op::Set { dst: g, .. } => direct::<E>(*g).is_none(),
        Op::Load { .. } | Op::Store { .. } | Op::Call { .. } | Op::Raise { .. } => true,
        _ => false,
    }
}

/// Whether `op` may raise the environment's stop request or set one of its chain
/// guards: only code that calls into the environment with effects may (a store, which
/// may hit code; a helper; a global that is not a plain field). Loads and the plain
/// functions of [`DirectGlobals::pure_fn`]/[`DirectGlobals::env_fn`] cannot; a `Raise`
/// leaves the block. A store raises at most the stop request (the contract of
/// [`DirectGlobals::chain_guards`]): `stores` says whether to count stores.
pub(crate) fn guard_risk<E: DirectGlobals>(op: &Op, stores: bool) -> bool {
    match op {
        Op::Get { src: g, .. } | Op::Set { dst: g, .. } => direct::<E>(*g).is_none(),
        Op::Store { .. } => stores,
        Op::Call {
            helper,
            args,
            effects,
            ..
        } => matches!(call_kind::<E>(*helper, args, *effects), CallKind::General),
        _ => false,
    }
}

/// Which labels need the PC (`Gen::label_needs_pc`): a label does if the code after it,
/// up to the next instruction start, wants it or goes to a label that needs it
/// (by a branch or by falling through).
pub(crate) fn labels_needing_pc<E: DirectGlobals>(block: &Block, sc: &mut Scratch) -> Vec<bool> {
    let mut needs = std::mem::take(&mut sc.label_needs_pc);
    reset(&mut needs, block.labels as usize, false);
    let at = |l: u32, needs: &[bool]| needs.get(l as usize).copied().unwrap_or(true);
    loop {
        let mut changed = false;
        for (i, op) in block.ops.iter().enumerate() {
            let Op::Label(l) = op else { continue };
            if at(l.0, &needs) {
                continue;
            }
            let wants = block.ops[i + 1..]
                .iter()
                .take_while(|o| !matches!(o, Op::InsnStart { .. }))
                .any(|o| match o {
                    Op::Label(m) | Op::Br(m) | Op::BrIf { target: m, .. } => at(m.0, &needs),
                    o => wants_pc::<E>(o),
                });
            if wants {
                if let Some(n) = needs.get_mut(l.0 as usize) {
                    *n = true;
                    changed = true;
                }
            }
        }
        if !changed {
            return needs;
        }
    }
}

/// Stores of direct globals that only the slow paths of memory accesses could see
/// before the global is stored again (lazy: see [`lazy_sets`]).
#[derive(Default)]
pub(crate) struct LazySets {
    /// Per op: a `Set` left for the slow paths (its value stays available until the
    /// last access before the global is stored again).
    pub lazy: Vec<bool>,
    /// (access or way out, `Set`): the lazy `Set`s (op indices) a slow path of the
    /// access stores before calling into the environment, or the way out of the
    /// block (`Exit`, `Raise`) stores before leaving, by op.
    pub pending: Vec<(usize, usize)>,
}

/// Buffers one compilation leaves to the next (allocations showed in the
/// translation-bound Linux boot): the analyses' working space, and the vectors of
/// their results, which the code generator hands back when done.
#[derive(Default)]
pub(crate) struct Scratch {
    last_read: Vec<usize>,
    is_const: Vec<bool>,
    accesses: Vec<usize>,
    next_set: Vec<(Global, usize, u32)>,
    spare: Vec<(Global, usize, u32)>,
    /// `lazy_sets`: `next_set` at each branch-only label (label, global, next `Set`,
    /// exits).
    at_label: Vec<(u32, Global, usize, u32)>,
    /// `lazy_sets`: chains of ways out of the block (op, the chain's rest).
    exits: Vec<(usize, u32)>,
    skipped_reads: Vec<Global>,
    starts: Vec<usize>,
    stored: Vec<bool>,
    defs: Vec<u32>,
    first_def: Vec<usize>,
    first_use: Vec<usize>,
    last_use: Vec<usize>,
    straight: Vec<bool>,
    labels: Vec<usize>,
    /// Per label: the first and last branch to it, and its definitions.
    branch_span: Vec<(usize, usize)>,
    label_defs: Vec<u32>,
    intervals: Vec<(usize, usize, Temp)>,
    active: Vec<(usize, u8, Temp)>,
    /// Result vectors, given back.
    pub lazy: LazySets,
    pub regs: Vec<Option<u8>>,
    pub volatile: Vec<Volatile>,
    pub konst: Vec<Option<u64>>,
    pub uses: Vec<u32>,
    pub label_needs_pc: Vec<bool>,
    pub label_pos: Vec<usize>,
    pub only: Vec<Option<usize>>,
}

/// `v` cleared and holding `n` copies of `x` (its allocation kept).
pub(crate) fn reset<T: Clone>(v: &mut Vec<T>, n: usize, x: T) {
    v.clear();
    v.resize(n, x);
}

/// How many ops past its last read a lazy `Set`'s value may be kept for the slow
/// paths ([`lazy_sets`]): a compare's flags, whose temps die at the jump after it,
/// stay available for the next compare's load.
pub(crate) const LAZY_REACH: usize = 16;

/// The empty chain of ways out (`lazy_sets`).
const NO_EXITS: u32 = u32::MAX;

/// The ways out (op indices) on the chain of `exits` that starts at `c`.
fn ways_out(exits: &[(usize, u32)], mut c: u32) -> impl Iterator<Item = usize> + '_ {
    std::iter::from_fn(move || {
        let &(e, prev) = exits.get(c as usize)?;
        c = prev;
        Some(e)
    })
}

/// Finds the lazy `Set`s of `block`: a `Set` of a direct global (not the PC) is lazy
/// when the same global is set again later in the straight line, only loads,
/// stores, temp arithmetic, instruction starts and accesses of other direct globals
/// come between, and its value is a constant or a temp read at most [`LAZY_REACH`]
/// ops before the last of those accesses and ways out (below; or after it), of
/// which there is at least one. The fast path of a load or
/// store cannot observe the environment, so only those accesses' slow paths (which
/// may fault, call into the environment or raise the stop request, after which a
/// stop exit may leave) need the value in place: they store it before their call,
/// and the main path stores only the second value. A stop exit between them is taken
/// only after a slow path (the only code that raises the request in such a stretch)
/// stored the pending values; so no instruction start may lie between them when a
/// store earlier in the `Set`'s instruction may have raised the request.
///
/// The straight line goes on over a conditional branch to a label only it reaches
/// (`only`: [`Block::branch_only_labels`]) when the code it skips is plain (no
/// access, instruction start or call) and either sets the global again or leaves the
/// block (`Exit`, `Raise`) without reading it: that way out is then pending too and
/// stores the value itself (a compare's flags before a jump out of the block, left
/// to the way out and to the next compare's load).
pub(crate) fn lazy_sets<E: DirectGlobals>(
    block: &Block,
    only: &[Option<usize>],
    sc: &mut Scratch,
) -> LazySets {
    let n = block.ops.len();
    let mut out = std::mem::take(&mut sc.lazy);
    reset(&mut out.lazy, n, false);
    out.pending.clear();
    // The last read of each temp, and the temps that are constants.
    let (last_read, konst, accesses) = (&mut sc.last_read, &mut sc.is_const, &mut sc.accesses);
    reset(last_read, block.temps as usize, 0);
    reset(konst, block.temps as usize, false);
    accesses.clear();
    // The instruction starts, and per op whether a store ran since the last one (its
    // slow path may have raised a stop request, which the next start's check takes).
    let (starts, stored) = (&mut sc.starts, &mut sc.stored);
    starts.clear();
    reset(stored, n, false);
    let mut store_seen = false;
    let mut sets = false;
    for (i, op) in block.ops.iter().enumerate() {
        op.for_each_read(|t| {
            if let Some(u) = last_read.get_mut(t.0 as usize) {
                *u = i;
            }
        });
        stored[i] = store_seen;
        match *op {
            Op::InsnStart { .. } => {
                starts.push(i);
                store_seen = false;
            }
            Op::Store { .. } => {
                accesses.push(i);
                store_seen = true;
            }
            Op::Load { .. } => accesses.push(i),
            Op::Const { dst, .. } => {
                if let Some(k) = konst.get_mut(dst.0 as usize) {
                    *k = true;
                }
            }
            Op::Set { dst, .. } => sets |= dst != Global::Pc && direct::<E>(dst).is_some(),
            _ => {}
        }
    }
    if !sets {
        return out;
    }
    // Backwards: `next` holds, for each direct global, the next `Set` of it in the
    // stretch ahead (ops the fast paths pass over: loads, stores, temp arithmetic,
    // instruction starts, accesses of direct globals) and the ways out of the block
    // skipped on the way there that need the value (a chain in `exits`); a read of a
    // global ends its entry, anything else the stretch.
    let next = &mut sc.next_set;
    next.clear();
    let (at_label, exits, reads) = (&mut sc.at_label, &mut sc.exits, &mut sc.skipped_reads);
    at_label.clear();
    exits.clear();
    // The code a branch to a branch-only label skips, while the scan is in it: the
    // label, the way out that ends it if it leaves with the state as it is (`Exit`,
    // `Raise`), and whether it is plain (no access, instruction start, call, ...).
    let mut skip: Option<(u32, Option<usize>, bool)> = None;
    let mut label_before = None;
    for (i, op) in block.ops.iter().enumerate().rev() {
        let after_label = label_before.take();
        match *op {
            Op::Set { dst: g, src } if direct::<E>(g).is_some() => {
                let ahead = next.iter().position(|&(h, _, _)| h == g);
                if let (Some(k), true) = (ahead, g != Global::Pc) {
                    let (_, j, chain) = next[k];
                    // The accesses between this `Set` and the next.
                    let from = accesses.partition_point(|&a| a < i);
                    let to = accesses.partition_point(|&a| a < j);
                    // Only where the value costs little register beyond its own life:
                    // a constant, or a temp read at most `LAZY_REACH` ops before the
                    // last of the accesses, or after it anyway (keeping others in
                    // registers longer could spill hot temps).
                    let t = src.0 as usize;
                    // The last access or way out that needs the value (with no
                    // access between, the ways out alone make it lazy).
                    let last_exit = ways_out(exits, chain).max();
                    let last = accesses[from..to].last().copied().max(last_exit);
                    let free = konst.get(t).copied().unwrap_or(false)
                        || last.is_some_and(|a| {
                            last_read.get(t).is_some_and(|&u| u + LAZY_REACH >= a)
                        });
                    // A stop request a store before it in its instruction raised is
                    // taken at the next instruction start, perhaps before any slow
                    // path stored the value: none may come between then.
                    let stop_ahead = stored[i]
                        && starts.partition_point(|&s| s < i) != starts.partition_point(|&s| s < j);
                    if last.is_some() && free && !stop_ahead {
                        out.lazy[i] = true;
                        out.pending
                            .extend(accesses[from..to].iter().map(|&a| (a, i)));
                        out.pending.extend(ways_out(exits, chain).map(|e| (e, i)));
                    }
                }
                match ahead {
                    Some(k) => next[k] = (g, i, NO_EXITS),
                    None => next.push((g, i, NO_EXITS)),
                }
            }
            Op::Get { src: g, .. } if direct::<E>(g).is_some() => {
                next.retain(|&(h, _, _)| h != g);
                if skip.is_some() {
                    reads.push(g);
                }
            }
            Op::Load { .. } | Op::Store { .. } | Op::InsnStart { .. } => {
                if let Some(s) = skip.as_mut() {
                    s.2 = false;
                }
            }
            ref o if o.is_arith() => {}
            Op::Label(l) if only.get(l.0 as usize).copied().flatten().is_some() => {
                if let Some(s) = skip.as_mut() {
                    s.2 = false;
                }
                at_label.extend(next.iter().map(|&(g, j, c)| (l.0, g, j, c)));
                next.clear();
                label_before = Some(l.0);
            }
            Op::BrIf { target: l, .. } if only.get(l.0 as usize) == Some(&Some(i)) => {
                match skip.take() {
                    Some((m, out_at, true)) if m == l.0 => {
                        // `next` holds what the skipped code sets; the label's entries
                        // go on when the skipped code sets the global again, or leaves
                        // the block without reading it (then storing it there).
                        let fall = &mut sc.spare;
                        std::mem::swap(next, fall);
                        next.clear();
                        for &(m, g, j, c) in at_label.iter() {
                            if m != l.0 {
                                continue;
                            }
                            if fall.iter().any(|&(h, _, _)| h == g) {
                                next.push((g, j, c));
                            } else if let (Some(e), false) = (out_at, reads.contains(&g)) {
                                exits.push((e, c));
                                next.push((g, j, (exits.len() - 1) as u32));
                            }
                        }
                    }
                    _ => next.clear(),
                }
            }
            Op::Exit(_) | Op::Raise { .. } | Op::Br(_) if after_label.is_some() => {
                // The end of the code a branch-only label's branch skips.
                let out_at = (!matches!(op, Op::Br(_))).then_some(i);
                skip = after_label.map(|l| (l, out_at, true));
                reads.clear();
                next.clear();
            }
            _ => {
                if let Some(s) = skip.as_mut() {
                    s.2 = false;
                }
                next.clear();
            }
        }
    }
    // By access (then by `Set`, the order they are stored in).
    out.pending.sort_unstable();
    out
}

/// Registers temps may live in: three callee-saved (kept across calls; the shared
/// entry saves them), four caller-saved (saved around calls, [`VOLATILE_REGS`]). The
/// op templates use none of them; r8 and r9 are argument registers of environment
/// calls (moved in as one parallel move after the temps in them are saved), and
/// only on the way out of a block carry anything else (`r8`: the slot an exit to
/// the shared lookup names; `r9`: the lookup's scratch).
pub(crate) const ALLOC_REGS: [u8; 7] = [14, 15, 5, 10, 11, 8, 9];

/// The caller-saved registers of [`ALLOC_REGS`].
pub(crate) const VOLATILE_REGS: [u8; 4] = [10, 11, 8, 9];

/// A temp in a caller-saved register, live from op `start` (its assignment) to op
/// `end` (its last use).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Volatile {
    pub temp: Temp,
    pub reg: u8,
    pub start: usize,
    pub end: usize,
}

/// Linear-scan allocation of temps to [`ALLOC_REGS`]: a temp qualifies when it is
/// assigned once, before any use, and no label lies between its assignment and its
/// last use (so every path that reads it ran the assignment in the same straight
/// line). Temps that get no register stay in the temp area.
pub(crate) fn allocate(block: &Block, lazy: &LazySets, sc: &mut Scratch) -> Allocation {
    let n = block.temps as usize;
    let Scratch {
        defs,
        first_def,
        first_use,
        last_use,
        straight,
        labels,
        branch_span,
        label_defs,
        intervals,
        active,
        ..
    } = sc;
    reset(defs, n, 0);
    reset(first_def, n, usize::MAX);
    reset(first_use, n, usize::MAX);
    reset(last_use, n, 0);
    labels.clear();
    // The first and last branch to each label, and its definitions.
    reset(branch_span, block.labels as usize, (usize::MAX, 0));
    reset(label_defs, block.labels as usize, 0);
    for (i, op) in block.ops.iter().enumerate() {
        match *op {
            Op::Label(l) => {
                labels.push(i);
                if let Some(c) = label_defs.get_mut(l.0 as usize) {
                    *c += 1;
                }
            }
            Op::Br(l) | Op::BrIf { target: l, .. } => {
                if let Some(s) = branch_span.get_mut(l.0 as usize) {
                    *s = (s.0.min(i), s.1.max(i));
                }
            }
            _ => {}
        }
        let d = op.dst();
        op.for_each_read(|t| {
            let k = t.0 as usize;
            if k < n {
                first_use[k] = first_use[k].min(i);
                last_use[k] = last_use[k].max(i);
            }
        });
        if let Some(t) = d {
            let k = t.0 as usize;
            if k < n {
                defs[k] += 1;
                first_def[k] = first_def[k].min(i);
            }
        }
    }
    // A lazy `Set`'s value is read by the slow paths of the accesses after it.
    for &(j, i) in &lazy.pending {
        if let Some(Op::Set { src, .. }) = block.ops.get(i) {
            if let Some(u) = last_use.get_mut(src.0 as usize) {
                *u = (*u).max(j);
            }
        }
    }
    // Each label defined once (else the old rule: no label inside the interval).
    let unique = label_defs.iter().all(|&c| c <= 1);
    // A path into the interval after the assignment (up to the last use) either runs
    // the assignment or branches to a label inside it: every branch to such a label
    // must come from inside too (as to the label after a check's `Raise`).
    let inside = |d: usize, u: usize, i: usize| d < i && i <= u;
    reset(straight, n, false);
    for k in 0..n {
        let (d, u) = (first_def[k], last_use[k]);
        straight[k] = defs[k] == 1 && d < first_use[k] && first_use[k] != usize::MAX && {
            // The labels inside the interval.
            let from = labels.partition_point(|&p| p <= d);
            let to = labels.partition_point(|&p| p <= u);
            if unique {
                labels[from..to].iter().all(|&p| {
                    let span = match block.ops[p] {
                        Op::Label(x) => branch_span.get(x.0 as usize).copied(),
                        _ => None,
                    };
                    span.is_none_or(|(lo, hi)| {
                        lo == usize::MAX || (inside(d, u, lo) && inside(d, u, hi))
                    })
                })
            } else {
                from == to
            }
        };
    }
    // Constants that qualify are not computed at all: each use takes the value.
    let mut konst = std::mem::take(&mut sc.konst);
    reset(&mut konst, n, None);
    intervals.clear();
    for k in (0..n).filter(|&k| straight[k]) {
        match block.ops.get(first_def[k]) {
            Some(Op::Const { value, .. }) => konst[k] = Some(*value),
            _ => intervals.push((first_def[k], last_use[k], Temp(k as u32))),
        }
    }
    intervals.sort_unstable();
    let mut alloc = std::mem::take(&mut sc.regs);
    reset(&mut alloc, n, None);
    // (end, register, temp) of the intervals holding a register.
    active.clear();
    // The free registers, a stack (the first of ALLOC_REGS on top).
    let mut free = [0u8; ALLOC_REGS.len()];
    for (f, &r) in free.iter_mut().zip(ALLOC_REGS.iter().rev()) {
        *f = r;
    }
    let mut nfree = ALLOC_REGS.len();
    for &(start, end, t) in intervals.iter() {
        // An interval ending at this op frees its register for the op's result.
        active.retain(|&(e, r, _)| {
            if e <= start {
                if let Some(f) = free.get_mut(nfree) {
                    *f = r;
                    nfree += 1;
                }
                false
            } else {
                true
            }
        });
        if nfree > 0 {
            nfree -= 1;
            let r = free[nfree];
            alloc[t.0 as usize] = Some(r);
            active.push((end, r, t));
            continue;
        }
        // None free: the interval that ends last stays in the temp area, as in
        // Poletto and Sarkar's linear scan (the decisions are made before any code,
        // so the temp it displaces never had the register).
        let Some(far) = (0..active.len()).max_by_key(|&i| active[i].0) else {
            continue;
        };
        let (e, r, s) = active[far];
        if e > end {
            alloc[s.0 as usize] = None;
            alloc[t.0 as usize] = Some(r);
            active[far] = (end, r, t);
        }
    }
    let mut volatile = std::mem::take(&mut sc.volatile);
    volatile.clear();
    volatile.extend(
        intervals
            .iter()
            .filter_map(|&(start, end, t)| match alloc[t.0 as usize] {
                Some(reg) if VOLATILE_REGS.contains(&reg) => Some(Volatile {
                    temp: t,
                    reg,
                    start,
                    end,
                }),
                _ => None,
            }),
    );
    Allocation {
        regs: alloc,
        volatile,
        konst,
    }
}

/// Where the temps live.
pub(crate) struct Allocation {
    /// The host register of each temp that has one.
    pub regs: Vec<Option<u8>>,
    pub volatile: Vec<Volatile>,
    /// The value of each temp that is a constant assigned once, before every use in
    /// the same straight line: never stored, its uses take the value.
    pub konst: Vec<Option<u64>>,
}

/// The number of reads of each temp in `block`.
pub(crate) fn reads(block: &Block, sc: &mut Scratch) -> Vec<u32> {
    let mut n = std::mem::take(&mut sc.uses);
    reset(&mut n, block.temps as usize, 0);
    for op in &block.ops {
        op.for_each_read(|t| {
            if let Some(c) = n.get_mut(t.0 as usize) {
                *c += 1;
            }
        });
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use vireo_core::ir::{BinOp, Builder, ExitKind, Size};

    /// With more long-lived temps than registers, the ones that live longest stay in
    /// the temp area and the short ones between get registers (first come, first
    /// served would leave every short temp in memory).
    #[test]
    fn the_longest_intervals_give_way_to_short_ones() {
        let mut b = Builder::new(0x1000);
        let long: Vec<Temp> = (0..ALLOC_REGS.len() + 2)
            .map(|i| b.get(Global::Gpr(i as u8)))
            .collect();
        let mut short = Vec::new();
        let mut x = b.konst(3);
        let mut y = b.get(Global::Gpr(15));
        for _ in 0..4 {
            let s = b.bin(BinOp::Add, Size::B64, x, y);
            short.push(s);
            x = b.bin(BinOp::Xor, Size::B64, s, y);
            short.push(x);
            y = x;
        }
        b.set(Global::Gpr(15), x);
        let mut acc = x;
        for &t in long.iter().rev() {
            acc = b.bin(BinOp::Add, Size::B64, acc, t);
        }
        b.set(Global::Gpr(14), acc);
        b.exit(ExitKind::Jump(0x2000));
        let block = b.finish();
        let lazy = LazySets {
            lazy: vec![false; block.ops.len()],
            pending: Vec::new(),
        };
        let a = allocate(&block, &lazy, &mut Scratch::default());
        for &s in &short {
            assert!(
                a.regs[s.0 as usize].is_some(),
                "short-lived {s:?} got no register"
            );
        }
        // The long ones read last (the first defined) are the ones left in memory.
        let kept = long
            .iter()
            .filter(|t| a.regs[t.0 as usize].is_some())
            .count();
        assert!(
            kept < ALLOC_REGS.len(),
            "{kept} long-lived temps kept registers"
        );
        // No register holds two temps at once (one may end where the next starts).
        let mut live = vec![(usize::MAX, 0usize); block.temps as usize];
        for (i, op) in block.ops.iter().enumerate() {
            if let Some(d) = op.dst() {
                live[d.0 as usize].0 = live[d.0 as usize].0.min(i);
            }
            op.for_each_read(|t| live[t.0 as usize].1 = i);
        }
        for (p, rp) in a.regs.iter().enumerate() {
            for (q, rq) in a.regs.iter().enumerate().skip(p + 1) {
                if let (Some(rp), Some(rq)) = (rp, rq) {
                    let (sp, ep) = live[p];
                    let (sq, eq) = live[q];
                    assert!(
                        rp != rq || ep <= sq || eq <= sp,
                        "t{p} and t{q} share register {rp}"
                    );
                }
            }
        }
        assert!(a.regs.iter().flatten().all(|r| ALLOC_REGS.contains(r)));
    }
}
