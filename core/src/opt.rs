//! IR passes shared by every backend: constant folding and propagation, copy and
//! global forwarding, dead global stores (lazy flags overwritten by the next
//! instruction, registers written twice) and dead-code removal (pure helper calls
//! included: a rotate's flag computation whose result nothing reads goes).
//!
//! What the passes rely on (the IR's contract, see [`crate::ir`]):
//! - a plain global (GPRs 0-15, the PC, the lazy-flag quadruple, segment bases 0-5)
//!   is one storage location: `Get` returns what the last `Set` stored. `Flags` may
//!   be masked on the way in, so it is never forwarded;
//! - guest state is observed only at ops that may leave the block or read it: loads
//!   and stores (a fault reports the state), calls (unless pure), raises, exits,
//!   branches (another path may read it), and instruction boundaries once an op that
//!   may raise a stop request (a store, a call) has run;
//! - temporaries are plain values; a temp may be assigned more than once (knowledge
//!   about it ends at its next assignment).
//!
//! Knowledge is kept per straight-line region (it ends at each label), except across
//! a label only one branch reaches past code that cannot fall through (a check's
//! `Raise`: [`Block::branch_only_labels`]), where what was known at the branch holds
//! less what the skipped code assigned. The passes keep the number of temps and
//! labels, so a block stays valid.

use crate::fxhash::FxMap;
use crate::ir::{BinOp, Block, Cond, Effects, Global, Op, Size, Temp};

/// Runs all passes on `block`.
pub fn optimize(block: &mut Block) {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut s) => optimize_with(block, &mut s),
        Err(_) => optimize_with(block, &mut Scratch::default()),
    });
}

fn optimize_with(block: &mut Block, s: &mut Scratch) {
    narrow_extensions(block, s);
    forward(block, s);
    dead_global_stores(block, s);
    dead_temps(block, s);
}

/// Buffers the passes reuse from block to block (their allocations showed in the
/// translation-bound Linux boot).
#[derive(Default)]
struct Scratch {
    keep: Vec<bool>,
    only: Vec<Option<usize>>,
    known: Known,
    /// `forward`'s open branch-only labels and the temps and global slots assigned
    /// since.
    /// The condition temp of each such branch, if conditional.
    open: Vec<(u32, usize, usize, Option<Temp>)>,
    log: Vec<Temp>,
    glog: Vec<usize>,
    /// Demanded bits (`narrow_extensions`) or reads (`dead_temps`) per temp.
    per_temp: Vec<u32>,
    /// The last assignment of each temp (`dead_temps`).
    last_def: Vec<usize>,
    may_stop: Vec<bool>,
    at_branch: Vec<bool>,
    overwritten: Vec<Global>,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::default();
}

/// `v` cleared and holding `n` copies of `x` (its allocation kept).
fn reset<T: Clone>(v: &mut Vec<T>, n: usize, x: T) {
    v.clear();
    v.resize(n, x);
}

/// Plain globals, numbered: [`slot`]'s range.
const SLOTS: usize = 60;

/// The number of plain global `g` (below [`SLOTS`]); `None` for the others.
fn slot(g: Global) -> Option<usize> {
    Some(match g {
        Global::Gpr(n) if n < 16 => usize::from(n),
        Global::Pc => 16,
        Global::CcOp => 17,
        Global::CcDst => 18,
        Global::CcSrc => 19,
        Global::CcSrc2 => 20,
        Global::SegBase(n) if n < 6 => 21 + usize::from(n),
        Global::Xmm(n) if n < 32 => 27 + usize::from(n),
        _ => return None,
    })
}

/// The first [`slot`] of the vector-register halves.
const XMM_SLOTS: usize = 27;

/// Whether `g` is one plain storage location (see the module documentation).
fn plain(g: Global) -> bool {
    slot(g).is_some()
}

/// A call that reads no guest state, writes none, cannot fault and does not end the
/// block: it observes nothing and cannot raise a stop request.
fn pure_call(e: &Effects) -> bool {
    !e.reads_globals && !e.writes_globals && !e.may_fault && !e.ends_block
}

/// Drops the ops whose `keep` entry is false.
fn retain_kept(block: &mut Block, keep: &[bool]) {
    if keep.iter().all(|&k| k) {
        return;
    }
    let mut i = 0;
    block.ops.retain(|_| {
        i += 1;
        keep[i - 1]
    });
}

/// An operand as common-subexpression keys see it: constants by value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Operand {
    Temp(Temp),
    Const(u64),
}

/// What is known about the temps and globals at a point of a region.
struct Known {
    konst: Vec<Option<u64>>,
    /// `fits[t] = Some(s)`: `t`'s bits above width `s` are known to be zero.
    fits: Vec<Option<Size>>,
    /// `copy[t] = Some(s)`: `t` holds the value `s` holds now.
    copy: Vec<Option<Temp>>,
    /// The temp holding each plain global's current value.
    globals: [Option<Temp>; SLOTS],
    /// `setcc[t] = Some((cond, size, a, b))`: `t` holds `a cond b` (0 or 1), with
    /// `a` and `b` holding the values compared.
    setcc: Vec<Option<(Cond, Size, Temp, Temp)>>,
    /// The temp holding the value of each binary operation computed in the region
    /// (common subexpressions: an address computed for a load and again for the
    /// store after it).
    exprs: FxMap<(BinOp, Size, Operand, Operand), Temp>,
    /// Comparisons whose outcome the region knows: `(cond, size, a, b, v)` says
    /// `a cond b` is `v` (past a branch-only label its conditional branch reaches:
    /// the compare before a jump, made again for the flags of the instruction
    /// after it, as DEC's carry after a CMP).
    facts: Vec<(Cond, Size, Temp, Temp, bool)>,
    /// Assignments of each temp in the block (a temp assigned once needs no
    /// invalidation scan: nothing can refer to it before its assignment).
    defs: Vec<u32>,
}

impl Default for Known {
    fn default() -> Known {
        Known {
            konst: Vec::new(),
            fits: Vec::new(),
            copy: Vec::new(),
            globals: [None; SLOTS],
            setcc: Vec::new(),
            exprs: FxMap::default(),
            facts: Vec::new(),
            defs: Vec::new(),
        }
    }
}

impl Known {
    /// Nothing known, for a block of `n` temps.
    fn reset(&mut self, n: usize) {
        reset(&mut self.konst, n, None);
        reset(&mut self.fits, n, None);
        reset(&mut self.copy, n, None);
        self.globals = [None; SLOTS];
        reset(&mut self.setcc, n, None);
        self.exprs.clear();
        self.facts.clear();
        reset(&mut self.defs, n, 0);
    }

    fn clear(&mut self) {
        self.konst.fill(None);
        self.fits.fill(None);
        self.copy.fill(None);
        self.globals = [None; SLOTS];
        self.setcc.fill(None);
        self.exprs.clear();
        self.facts.clear();
    }

    fn resolve(&self, t: Temp) -> Temp {
        self.copy.get(t.0 as usize).copied().flatten().unwrap_or(t)
    }

    fn konst(&self, t: Temp) -> Option<u64> {
        self.konst.get(t.0 as usize).copied().flatten()
    }

    fn operand(&self, t: Temp) -> Operand {
        self.konst(t).map_or(Operand::Temp(t), Operand::Const)
    }

    /// `t` is being assigned: what was known about (and through) it ends.
    fn assign(&mut self, t: Temp) {
        let i = t.0 as usize;
        if i >= self.konst.len() {
            return;
        }
        self.konst[i] = None;
        self.fits[i] = None;
        self.copy[i] = None;
        self.setcc[i] = None;
        if self.defs[i] > 1 {
            for c in self.copy.iter_mut() {
                if *c == Some(t) {
                    *c = None;
                }
            }
            for g in self.globals.iter_mut() {
                if *g == Some(t) {
                    *g = None;
                }
            }
            for c in self.setcc.iter_mut() {
                if matches!(*c, Some((_, _, a, b)) if a == t || b == t) {
                    *c = None;
                }
            }
            let o = Operand::Temp(t);
            self.exprs
                .retain(|&(_, _, a, b), v| a != o && b != o && *v != t);
            self.facts.retain(|&(_, _, a, b, _)| a != t && b != t);
        }
    }

    /// Back at a label whose only way in is a branch (see
    /// [`Block::branch_only_labels`]): what the skipped ops taught goes, as the
    /// temps they assigned (`temps`) and the global slots they set (`slots`) do not
    /// hold what was learnt about them on that path.
    fn forget(&mut self, temps: &[Temp], slots: &[usize]) {
        if temps.is_empty() && slots.is_empty() {
            return;
        }
        // `assign` forgets a temp's own entries (and, for one assigned more than
        // once, everything referring to it); a temp assigned only on the skipped
        // path is referred to only by entries of that path: the globals and
        // subexpressions it holds.
        for &t in temps {
            self.assign(t);
        }
        for g in self.globals.iter_mut() {
            if g.is_some_and(|g| temps.contains(&g)) {
                *g = None;
            }
        }
        for &s in slots {
            if let Some(g) = self.globals.get_mut(s) {
                *g = None;
            }
        }
        if !self.exprs.is_empty() && !temps.is_empty() {
            let dead = |o: Operand| matches!(o, Operand::Temp(t) if temps.contains(&t));
            self.exprs
                .retain(|&(_, _, a, b), v| !temps.contains(v) && !dead(a) && !dead(b));
        }
    }

    /// What the region knows of `a cond b` at `size` (or its opposite).
    fn fact(&self, cond: Cond, size: Size, a: Temp, b: Temp) -> Option<bool> {
        self.facts.iter().find_map(|&(c, s, x, y, v)| {
            (s == size && x == a && y == b)
                .then_some(())
                .and_then(|()| match c {
                    _ if c == cond => Some(v),
                    _ if c == cond.invert() => Some(!v),
                    _ => None,
                })
        })
    }

    /// Temp `c` is known nonzero (a branch on it was taken): a comparison's result
    /// is 1, and the comparison known true.
    fn learn(&mut self, c: Temp) {
        if let Some((cond, size, a, b)) = self.setcc.get(c.0 as usize).copied().flatten() {
            self.set_konst(c, 1);
            self.facts.push((cond, size, a, b, true));
        }
    }

    fn set_konst(&mut self, t: Temp, v: u64) {
        if let Some(k) = self.konst.get_mut(t.0 as usize) {
            *k = Some(v);
        }
        let w = [Size::B8, Size::B16, Size::B32]
            .into_iter()
            .find(|s| s.trunc(v) == v);
        self.set_fits(t, w);
    }

    /// The narrowest width `t` is known to fit in (`None`: unknown, or 64 bits).
    fn fits(&self, t: Temp) -> Option<Size> {
        self.fits.get(t.0 as usize).copied().flatten()
    }

    fn set_fits(&mut self, t: Temp, w: Option<Size>) {
        if let Some(f) = self.fits.get_mut(t.0 as usize) {
            *f = w.filter(|&w| w != Size::B64);
        }
    }

    fn set_copy(&mut self, t: Temp, s: Temp) {
        if t != s {
            if let Some(c) = self.copy.get_mut(t.0 as usize) {
                *c = Some(s);
            }
        }
    }
}

/// The op that computes `op size a, b` when one operand is a known constant and the
/// result is just the other operand (truncated to `size`): `Some(x)` for "the value of
/// `x`". `None` if there is no such identity.
fn identity(op: BinOp, a: Temp, b: Temp, ka: Option<u64>, kb: Option<u64>) -> Option<Temp> {
    use BinOp::*;
    match (op, ka, kb) {
        (Add | Sub | Or | Xor | Shl | Shr | Sar | Rol | Ror, _, Some(0)) => Some(a),
        (Add | Or | Xor, Some(0), _) => Some(b),
        (And, _, Some(u64::MAX)) => Some(a),
        (And, Some(u64::MAX), _) => Some(b),
        (Mul, _, Some(1)) => Some(a),
        (Mul, Some(1), _) => Some(b),
        _ => None,
    }
}

/// The value (as an op assigning `dst`) of `x` truncated to `size`.
fn trunc_of(dst: Temp, x: Temp, size: Size) -> Op {
    if size == Size::B64 {
        Op::Mov { dst, src: x }
    } else {
        Op::Ext {
            dst,
            src: x,
            from: size,
            signed: false,
        }
    }
}

/// Constant folding and propagation, copy propagation, forwarding of globals to the
/// temps that hold their values, and branches on constants resolved.
fn forward(block: &mut Block, s: &mut Scratch) {
    let n = block.temps as usize;
    let Scratch {
        keep,
        only,
        known: k,
        open,
        log,
        glog,
        ..
    } = s;
    k.reset(n);
    for op in &block.ops {
        if let Some(d) = op.dst() {
            if let Some(c) = k.defs.get_mut(d.0 as usize) {
                *c += 1;
            }
        }
    }
    reset(keep, block.ops.len(), true);
    // Labels reached only from one branch (typically past a check's `Raise`): the
    // knowledge at the branch holds there, less what the ops skipped assigned. While
    // such a branch's label is ahead (`open`: label, start in `log` and `glog`), the
    // temps assigned and global slots set go to the logs.
    block.branch_only_labels_into(only);
    open.clear();
    log.clear();
    glog.clear();
    for (i, op) in block.ops.iter_mut().enumerate() {
        op.for_each_read_mut(|t| *t = k.resolve(*t));
        // Rewrite the op from what is known.
        let rewritten = match *op {
            Op::Get { dst, src } if plain(src) => slot(src)
                .and_then(|i| k.globals[i])
                .map(|t| Op::Mov { dst, src: t }),
            Op::Bin {
                op: bop,
                size,
                dst,
                a,
                b,
            } => {
                let (ka, kb) = (k.konst(a), k.konst(b));
                let setcc = k.setcc.get(a.0 as usize).copied().flatten();
                match (ka, kb, setcc) {
                    (Some(x), Some(y), _) => Some(Op::Const {
                        dst,
                        value: bop.eval(size, x, y),
                    }),
                    // A comparison's result flipped: the opposite comparison.
                    (_, Some(1), Some((cond, csize, ca, cb))) if bop == BinOp::Xor => {
                        Some(Op::SetCond {
                            cond: cond.invert(),
                            size: csize,
                            dst,
                            a: ca,
                            b: cb,
                        })
                    }
                    _ => identity(bop, a, b, ka, kb)
                        .map(|x| {
                            // Already narrow enough: the value itself.
                            let narrow = k.fits(x).is_some_and(|w| w.bits() <= size.bits());
                            if narrow {
                                Op::Mov { dst, src: x }
                            } else {
                                trunc_of(dst, x, size)
                            }
                        })
                        .or_else(|| {
                            let key = (bop, size, k.operand(a), k.operand(b));
                            let e = k.exprs.get(&key).copied();
                            e.filter(|&x| x != dst).map(|src| Op::Mov { dst, src })
                        }),
                }
            }
            Op::Un {
                op: uop,
                size,
                dst,
                a,
            } => k.konst(a).map(|x| Op::Const {
                dst,
                value: uop.eval(size, x),
            }),
            Op::Ext {
                dst,
                src,
                from,
                signed,
            } => match (k.konst(src), k.fits(src)) {
                (Some(x), _) => Some(Op::Const {
                    dst,
                    value: if signed { from.sext(x) } else { from.trunc(x) },
                }),
                // Already zero above `from` (and, sign-extending, below its sign bit
                // too): the value itself.
                (None, Some(w))
                    if w.bits() < from.bits() || (!signed && w.bits() == from.bits()) =>
                {
                    Some(Op::Mov { dst, src })
                }
                _ => None,
            },
            Op::SetCond {
                cond,
                size,
                dst,
                a,
                b,
            } => match (k.konst(a), k.konst(b), k.fact(cond, size, a, b)) {
                (Some(x), Some(y), _) => Some(Op::Const {
                    dst,
                    value: u64::from(cond.eval(size, x, y)),
                }),
                // Decided by the branch that led here.
                (_, _, Some(v)) => Some(Op::Const {
                    dst,
                    value: u64::from(v),
                }),
                // A comparison's result (0 or 1) compared with 0: that comparison or
                // its opposite.
                (None, Some(0), None) if matches!(cond, Cond::Eq | Cond::Ne) => k
                    .setcc
                    .get(a.0 as usize)
                    .copied()
                    .flatten()
                    .map(|(c, csize, ca, cb)| Op::SetCond {
                        cond: if cond == Cond::Eq { c.invert() } else { c },
                        size: csize,
                        dst,
                        a: ca,
                        b: cb,
                    }),
                _ => None,
            },
            Op::Select { dst, cond, a, b } => k.konst(cond).map(|c| Op::Mov {
                dst,
                src: if c != 0 { a } else { b },
            }),
            Op::BrIf { cond, target } => match k.konst(cond) {
                Some(0) => {
                    keep[i] = false;
                    None
                }
                Some(_) => Some(Op::Br(target)),
                None => None,
            },
            _ => None,
        };
        if let Some(r) = rewritten {
            *op = r;
        }
        // A move of a constant is the constant.
        if let Op::Mov { dst, src } = *op {
            if let Some(v) = k.konst(src) {
                *op = Op::Const { dst, value: v };
            }
        }
        // Update what is known.
        if let Some(d) = op.dst() {
            k.assign(d);
            if !open.is_empty() {
                log.push(d);
            }
        }
        if let (Op::Set { dst, .. }, false) = (&*op, open.is_empty()) {
            glog.extend(slot(*dst));
        }
        match *op {
            Op::Const { dst, value } => k.set_konst(dst, value),
            Op::Mov { dst, src } => {
                k.set_copy(dst, src);
                k.set_fits(dst, k.fits(src));
            }
            // Results at a width are zero-extended from it.
            Op::Bin {
                op: bop,
                dst,
                size,
                a,
                b,
            } => {
                k.set_fits(dst, Some(size));
                if dst != a && dst != b {
                    let key = (bop, size, k.operand(a), k.operand(b));
                    k.exprs.insert(key, dst);
                }
            }
            Op::Un { dst, size, .. } => k.set_fits(dst, Some(size)),
            Op::Ext {
                dst,
                from,
                signed: false,
                ..
            } => k.set_fits(dst, Some(from)),
            Op::SetCond {
                cond,
                size,
                dst,
                a,
                b,
            } => {
                k.set_fits(dst, Some(Size::B8));
                if dst != a && dst != b {
                    if let Some(c) = k.setcc.get_mut(dst.0 as usize) {
                        *c = Some((cond, size, a, b));
                    }
                }
            }
            Op::Load {
                dst,
                size,
                signed: false,
                ..
            } => k.set_fits(dst, Some(size)),
            Op::Get { dst, src } if plain(src) => {
                if let Some(i) = slot(src) {
                    k.globals[i] = Some(dst);
                }
            }
            Op::Set { dst, src } if plain(dst) => {
                if let Some(i) = slot(dst) {
                    k.globals[i] = Some(src);
                }
            }
            Op::Call { ref effects, .. } if effects.writes_globals => k.globals = [None; SLOTS],
            // Vector state may change in any call that is not pure (see `Global::Xmm`).
            Op::Call { ref effects, .. } if !pure_call(effects) => {
                k.globals[XMM_SLOTS..].fill(None)
            }
            Op::Label(l) => match open.last() {
                Some(&(o, t0, g0, cond)) if o == l.0 => {
                    open.pop();
                    k.forget(&log[t0..], &glog[g0..]);
                    // The branch was taken: its condition holds (a comparison's
                    // result is 1 here).
                    if let Some(c) = cond {
                        k.learn(c);
                    }
                    if open.is_empty() {
                        log.clear();
                        glog.clear();
                    }
                }
                _ => {
                    k.clear();
                    open.clear();
                    log.clear();
                    glog.clear();
                }
            },
            Op::Br(l) | Op::BrIf { target: l, .. }
                if keep[i] && only.get(l.0 as usize).copied().flatten() == Some(i) =>
            {
                let cond = match *op {
                    Op::BrIf { cond, .. } => Some(cond),
                    _ => None,
                };
                open.push((l.0, log.len(), glog.len(), cond));
            }
            _ => {}
        }
    }
    retain_kept(block, keep);
}

/// The low bits of each temp that some op reads (64 where unknown): an op at a width
/// reads only that many bits of its operands (the IR's semantics, see
/// [`BinOp::eval`]), an extension only its `from` bits, a store only its size.
fn demanded_bits(block: &Block, demand: &mut Vec<u32>) {
    reset(demand, block.temps as usize, 0);
    let mut need = |t: Temp, bits: u32| {
        if let Some(d) = demand.get_mut(t.0 as usize) {
            *d = (*d).max(bits);
        }
    };
    for op in &block.ops {
        match *op {
            Op::Bin { size, a, b, .. } | Op::SetCond { size, a, b, .. } => {
                need(a, size.bits());
                need(b, size.bits());
            }
            Op::Un { size, a, .. } => need(a, size.bits()),
            Op::Ext { src, from, .. } => need(src, from.bits()),
            Op::Store {
                addr, val, size, ..
            } => {
                need(addr, 64);
                need(val, size.bits());
            }
            ref o => o.for_each_read(|t| need(t, 64)),
        }
    }
}

/// An extension whose result is read only in bits its source already holds (a
/// register zero-extended, then added at 32 bits) is a move: the copy propagation
/// that follows lets its readers take the source.
fn narrow_extensions(block: &mut Block, s: &mut Scratch) {
    if !block.ops.iter().any(|op| matches!(op, Op::Ext { .. })) {
        return;
    }
    let demand = &mut s.per_temp;
    demanded_bits(block, demand);
    for op in block.ops.iter_mut() {
        if let Op::Ext { dst, src, from, .. } = *op {
            if demand
                .get(dst.0 as usize)
                .is_some_and(|&d| d <= from.bits())
            {
                *op = Op::Mov { dst, src };
            }
        }
    }
}

/// Drops `Set`s of plain globals that a later `Set` of the same global overwrites
/// before anything can observe them.
fn dead_global_stores(block: &mut Block, s: &mut Scratch) {
    // An instruction boundary observes the state if a stop request may be pending
    // there: it is the block's first (one may have been raised before the block), or
    // a store or a call that is not pure ran since the last boundary (one that saw no
    // stop request leaves none pending: only a store or a call raises one). After a
    // label, any such op of the block may have run on the way there (after one only a
    // branch reaches, those before the branch).
    let effect = |op: &Op| match op {
        Op::Store { .. } => true,
        Op::Call { effects, .. } => !pure_call(effects),
        _ => false,
    };
    let any_effect = block.ops.iter().any(effect);
    let Scratch {
        keep,
        only,
        may_stop,
        at_branch,
        overwritten,
        ..
    } = s;
    block.branch_only_labels_into(only);
    reset(may_stop, block.ops.len(), false);
    let mut seen_effect = false;
    // `seen_effect` at each branch (for the labels only it reaches).
    reset(at_branch, block.ops.len(), false);
    let mut first = true;
    for (i, op) in block.ops.iter().enumerate() {
        match op {
            Op::InsnStart { .. } => {
                may_stop[i] = first || seen_effect;
                first = false;
                seen_effect = false;
            }
            Op::Br(_) | Op::BrIf { .. } => at_branch[i] = seen_effect,
            Op::Label(l) => match only.get(l.0 as usize).copied().flatten() {
                Some(b) => seen_effect = at_branch[b],
                None => seen_effect |= any_effect,
            },
            o if effect(o) => seen_effect = true,
            _ => {}
        }
    }
    overwritten.clear();
    reset(keep, block.ops.len(), true);
    for (i, op) in block.ops.iter().enumerate().rev() {
        match op {
            Op::Set { dst, .. } if plain(*dst) => {
                if overwritten.contains(dst) {
                    keep[i] = false;
                } else {
                    overwritten.push(*dst);
                }
            }
            Op::Set { .. } => overwritten.clear(),
            Op::Get { src, .. } => overwritten.retain(|g| g != src),
            Op::InsnStart { .. } if !may_stop[i] => {}
            Op::Call { effects, .. } if pure_call(effects) => {}
            o if o.is_arith() => {}
            _ => overwritten.clear(),
        }
    }
    retain_kept(block, keep);
}

/// Drops ops without side effects whose result no op reads.
fn dead_temps(block: &mut Block, s: &mut Scratch) {
    let Scratch {
        keep,
        per_temp: uses,
        last_def,
        ..
    } = s;
    reset(uses, block.temps as usize, 0);
    reset(last_def, block.temps as usize, 0);
    for (i, op) in block.ops.iter().enumerate() {
        op.for_each_read(|t| {
            if let Some(u) = uses.get_mut(t.0 as usize) {
                *u += 1;
            }
        });
        if let Some(d) = op.dst().and_then(|d| last_def.get_mut(d.0 as usize)) {
            *d = i;
        }
    }
    reset(keep, block.ops.len(), true);
    // Backwards, an op's operands are assigned before it, so they are seen after it
    // lost its last reader: one pass, unless a temp whose readers all went is
    // assigned again further on (a temp assigned more than once).
    loop {
        let mut again = false;
        for (i, op) in block.ops.iter().enumerate().rev() {
            if !keep[i] {
                continue;
            }
            let removable = match op {
                o if o.is_arith() => true,
                Op::Get { .. } => true,
                // A pure helper (e.g. computing the flags a later instruction
                // overwrites) is an expression too.
                Op::Call { effects, .. } => pure_call(effects),
                _ => false,
            };
            let unused = match op.dst() {
                Some(d) => uses.get(d.0 as usize) == Some(&0),
                None => matches!(op, Op::Call { .. }),
            };
            if removable && unused {
                keep[i] = false;
                op.for_each_read(|t| {
                    if let Some(u) = uses.get_mut(t.0 as usize) {
                        *u = u.saturating_sub(1);
                        again |= *u == 0 && last_def.get(t.0 as usize).is_some_and(|&d| d > i);
                    }
                });
            }
        }
        if !again {
            break;
        }
    }
    retain_kept(block, keep);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{Builder, ExitKind, MmuIdx};

    fn count(b: &Block, f: impl Fn(&Op) -> bool) -> usize {
        b.ops.iter().filter(|o| f(o)).count()
    }

    fn sets_of(b: &Block, g: Global) -> usize {
        count(b, |o| matches!(o, Op::Set { dst, .. } if *dst == g))
    }

    /// Dead code goes in one backward pass, and in another when a temp whose readers
    /// went is assigned again further on.
    #[test]
    fn dead_temps_go_also_when_assigned_twice() {
        let mut b = Builder::new(0x10);
        b.insn_start(0x10, 3);
        let t = b.konst(1);
        let x = b.bin(BinOp::Add, Size::B64, t, t);
        let _ = x;
        b.push(Op::Const { dst: t, value: 2 });
        let r = b.get(Global::Gpr(1));
        let y = b.bin(BinOp::Xor, Size::B64, r, r);
        let _ = b.bin(BinOp::Add, Size::B64, y, y);
        b.set(Global::Gpr(0), r);
        b.exit(ExitKind::Jump(0x13));
        let mut blk = b.finish();
        dead_temps(&mut blk, &mut Scratch::default());
        blk.validate().unwrap();
        assert_eq!(count(&blk, |o| o.is_arith()), 0, "{blk}");
        assert_eq!(count(&blk, |o| matches!(o, Op::Get { .. })), 1, "{blk}");
    }

    /// Two ALU instructions in a row: the first one's lazy flags are dead, the
    /// register is forwarded, constants fold.
    #[test]
    fn flags_of_an_overwritten_instruction_go() {
        let mut b = Builder::new(0x10);
        for (pc, k) in [(0x10, 5u64), (0x13, 7)] {
            b.insn_start(pc, 3);
            let r = b.get(Global::Gpr(0));
            let c = b.konst(k);
            let zero = b.konst(0);
            let c2 = b.bin(BinOp::Add, Size::B64, c, zero);
            let s = b.bin(BinOp::Add, Size::B64, r, c2);
            b.set(Global::Gpr(0), s);
            let op = b.konst(3);
            b.set(Global::CcOp, op);
            b.set(Global::CcDst, s);
            b.set(Global::CcSrc, c2);
        }
        let n = b.konst(0x16);
        b.set(Global::Pc, n);
        b.exit(ExitKind::Jump(0x16));
        let mut blk = b.finish();
        optimize(&mut blk);
        blk.validate().unwrap();
        for g in [Global::Gpr(0), Global::CcOp, Global::CcDst, Global::CcSrc] {
            assert_eq!(sets_of(&blk, g), 1, "{g}\n{blk}");
        }
        // One read of r0; `c + 0` folded into the constants.
        assert_eq!(count(&blk, |o| matches!(o, Op::Get { .. })), 1, "{blk}");
        assert_eq!(count(&blk, |o| matches!(o, Op::Bin { .. })), 2, "{blk}");
    }

    /// A pure helper whose result only fed dead flags goes; an impure one stays.
    #[test]
    fn extensions_of_values_already_narrow_go() {
        let mut b = Builder::new(0);
        b.insn_start(0, 2);
        let r = b.get(Global::Gpr(0));
        let r32 = b.ext(r, Size::B32, false);
        let s = b.bin(BinOp::Add, Size::B32, r32, r32);
        let s32 = b.ext(s, Size::B32, false);
        let s64 = b.ext(s32, Size::B32, true);
        b.set(Global::Gpr(0), s32);
        b.set(Global::Gpr(1), s64);
        let q = b.get(Global::Gpr(2));
        let q32 = b.ext(q, Size::B32, false);
        b.set(Global::Gpr(3), q32);
        b.exit(ExitKind::Indirect);
        let mut blk = b.finish();
        optimize(&mut blk);
        blk.validate().unwrap();
        let exts: Vec<(Size, bool)> = blk
            .ops
            .iter()
            .filter_map(|o| match *o {
                Op::Ext { from, signed, .. } => Some((from, signed)),
                _ => None,
            })
            .collect();
        // The zero-extension of a 32-bit result goes, and so does that of a register
        // only a 32-bit add reads; a sign extension from the same width stays, and so
        // does the zero-extension of a register stored whole.
        assert_eq!(exts, [(Size::B32, true), (Size::B32, false)], "{blk}");
    }

    /// An address computed for a load and again for the store after it is
    /// computed once.
    #[test]
    fn a_repeated_computation_is_reused() {
        let mut b = Builder::new(0);
        b.insn_start(0, 4);
        let base = b.get(Global::Gpr(6));
        let idx = b.get(Global::Gpr(1));
        let off = b.bini(BinOp::Shl, Size::B64, idx, 3);
        let a1 = b.bin(BinOp::Add, Size::B64, base, off);
        let v = b.load(a1, Size::B64, false, MmuIdx::User);
        let s = b.bin(BinOp::Add, Size::B64, v, idx);
        b.insn_start(4, 4);
        let base2 = b.get(Global::Gpr(6));
        let idx2 = b.get(Global::Gpr(1));
        let off2 = b.bini(BinOp::Shl, Size::B64, idx2, 3);
        let a2 = b.bin(BinOp::Add, Size::B64, base2, off2);
        b.store(a2, s, Size::B64, MmuIdx::User);
        b.exit(ExitKind::Indirect);
        let mut blk = b.finish();
        optimize(&mut blk);
        blk.validate().unwrap();
        // The shift and the address add once, the sum once.
        assert_eq!(count(&blk, |o| matches!(o, Op::Bin { .. })), 3, "{blk}");
    }

    /// Flipping a comparison's result is the opposite comparison.
    #[test]
    fn a_flipped_comparison_is_the_opposite_one() {
        let mut b = Builder::new(0);
        b.insn_start(0, 2);
        let x = b.get(Global::Gpr(0));
        let zero = b.konst(0);
        let eq = b.setcond(Cond::Eq, Size::B32, x, zero);
        let one = b.konst(1);
        let ne = b.bin(BinOp::Xor, Size::B64, eq, one);
        b.set(Global::Gpr(1), ne);
        // (x <u y) == 0 is x >=u y.
        let y = b.get(Global::Gpr(2));
        let lt = b.setcond(Cond::Ltu, Size::B16, x, y);
        let ge = b.setcond(Cond::Eq, Size::B64, lt, zero);
        b.set(Global::Gpr(3), ge);
        b.exit(ExitKind::Indirect);
        let mut blk = b.finish();
        optimize(&mut blk);
        let conds: Vec<Cond> = blk
            .ops
            .iter()
            .filter_map(|o| match *o {
                Op::SetCond { cond, .. } => Some(cond),
                _ => None,
            })
            .collect();
        assert_eq!(conds, [Cond::Ne, Cond::Geu], "{blk}");
        assert_eq!(count(&blk, |o| matches!(o, Op::Bin { .. })), 0, "{blk}");
    }

    /// Past a jump out of the block (a conditional branch over the way out, to a
    /// label only it reaches) the compare it took is known: made again (DEC's carry
    /// after CMP and JAE), it and its opposite are constants (at the same width);
    /// not past a label that other code reaches too.
    #[test]
    fn a_comparison_a_branch_decided_is_known_after_it() {
        let mut b = Builder::new(0);
        b.insn_start(0, 2);
        let x = b.get(Global::Gpr(0));
        let y = b.get(Global::Gpr(1));
        let lt = b.setcond(Cond::Ltu, Size::B32, x, y);
        let stay = b.label();
        b.br_if(lt, stay);
        let out = b.konst(0x99);
        b.set(Global::Pc, out);
        b.exit(ExitKind::Jump(0x99));
        b.set_label(stay);
        b.insn_start(2, 3);
        let again = b.setcond(Cond::Ltu, Size::B32, x, y);
        b.set(Global::CcSrc, again);
        let ge = b.setcond(Cond::Geu, Size::B32, x, y);
        b.set(Global::Gpr(2), ge);
        // Another width: not the same comparison.
        let narrow = b.setcond(Cond::Ltu, Size::B8, x, y);
        b.set(Global::Gpr(3), narrow);
        // A label reached by falling through as well: nothing known there.
        let merge = b.label();
        let z = b.get(Global::Gpr(4));
        b.br_if(z, merge);
        b.set(Global::Gpr(5), z);
        b.set_label(merge);
        let after = b.setcond(Cond::Ltu, Size::B32, x, y);
        b.set(Global::Gpr(6), after);
        b.exit(ExitKind::Indirect);
        let mut blk = b.finish();
        optimize(&mut blk);
        let set_of = |g: Global| {
            let src = blk.ops.iter().rev().find_map(|o| match *o {
                Op::Set { dst, src } if dst == g => Some(src),
                _ => None,
            });
            blk.ops.iter().find_map(|o| match *o {
                Op::Const { dst, value } if Some(dst) == src => Some(value),
                _ => None,
            })
        };
        assert_eq!(set_of(Global::CcSrc), Some(1), "{blk}");
        assert_eq!(set_of(Global::Gpr(2)), Some(0), "{blk}");
        assert_eq!(set_of(Global::Gpr(3)), None, "{blk}");
        assert_eq!(set_of(Global::Gpr(6)), None, "{blk}");
    }

    #[test]
    fn unused_pure_calls_go() {
        use crate::ir::{Effects, HelperId};
        let mut b = Builder::new(0);
        b.insn_start(0, 3);
        let x = b.get(Global::CcSrc);
        let f = b.call(HelperId(0), &[x], true, Effects::PURE).unwrap();
        b.set(Global::CcSrc, f);
        b.call(HelperId(1), &[x], false, Effects::ALL);
        b.insn_start(3, 3);
        let z = b.konst(0);
        b.set(Global::CcSrc, z);
        b.exit(ExitKind::Indirect);
        let mut blk = b.finish();
        optimize(&mut blk);
        let calls: Vec<u16> = blk
            .ops
            .iter()
            .filter_map(|o| match o {
                Op::Call { helper, .. } => Some(helper.0),
                _ => None,
            })
            .collect();
        // The impure call observes the first `Set`, so it stays, and so does the
        // pure call feeding it.
        assert_eq!(calls, vec![0, 1], "{blk}");
        let mut b = Builder::new(0);
        b.insn_start(0, 3);
        let x = b.get(Global::CcSrc);
        let f = b.call(HelperId(0), &[x], true, Effects::PURE).unwrap();
        b.set(Global::CcSrc, f);
        b.insn_start(3, 3);
        let z = b.konst(0);
        b.set(Global::CcSrc, z);
        b.exit(ExitKind::Indirect);
        let mut blk = b.finish();
        optimize(&mut blk);
        assert!(
            !blk.ops.iter().any(|o| matches!(o, Op::Call { .. })),
            "{blk}"
        );
    }

    /// State stays exact where it can be observed: before a load (it may fault),
    /// and at an instruction boundary after a store (it may have asked to stop).
    #[test]
    fn observed_state_is_kept() {
        let mut b = Builder::new(0);
        b.insn_start(0, 1);
        let one = b.konst(1);
        b.set(Global::CcOp, one);
        let a = b.konst(0x1000);
        b.load(a, Size::B8, false, MmuIdx::Kernel);
        b.set(Global::CcOp, a);
        b.store(a, a, Size::B8, MmuIdx::Kernel);
        b.set(Global::CcDst, one);
        b.insn_start(1, 1);
        b.set(Global::CcDst, a);
        b.exit(ExitKind::Indirect);
        let mut blk = b.finish();
        let before = blk.clone();
        optimize(&mut blk);
        assert_eq!(sets_of(&blk, Global::CcOp), 2, "{blk}");
        assert_eq!(sets_of(&blk, Global::CcDst), 2, "{blk}");
        assert_eq!(blk.ops.len(), before.ops.len());
    }

    /// A branch on a constant is resolved; `Flags` is never forwarded (its writes
    /// are masked); knowledge ends at a label.
    #[test]
    fn constant_branches_flags_and_labels() {
        let mut b = Builder::new(0);
        b.insn_start(0, 1);
        let l = b.label();
        let z = b.konst(0);
        b.br_if(z, l);
        let v = b.konst(0xffff);
        b.set(Global::Flags, v);
        let f = b.get(Global::Flags);
        b.set(Global::Gpr(1), f);
        b.set_label(l);
        let r = b.get(Global::Gpr(1));
        b.set(Global::Gpr(2), r);
        b.exit(ExitKind::Indirect);
        let mut blk = b.finish();
        optimize(&mut blk);
        assert_eq!(count(&blk, |o| matches!(o, Op::BrIf { .. })), 0, "{blk}");
        assert!(blk.ops.iter().any(|o| matches!(
            o,
            Op::Get {
                src: Global::Flags,
                ..
            }
        )));
        assert!(blk.ops.iter().any(|o| matches!(
            o,
            Op::Get {
                src: Global::Gpr(1),
                ..
            }
        )));
    }
}
