//! Groups of memory accesses that share one fast-TLB lookup: accesses in a straight
//! line at constant offsets from the same base (a function's pushes and pops, the
//! locals of its frame, a structure's fields, an unrolled loop's elements) whose
//! bytes lie within [`SPAN`] of each other.
//!
//! The first access of a group (its lead) looks up the group's whole span at once:
//! the fast-TLB entry of the span's first byte, compared with the page of its last
//! byte (the usual lookup's test for an access within one page, so a span across a
//! page boundary misses). A hit leaves the entry's host addend in the group's slot
//! of the temp area; a miss leaves an odd mark there (host addends are page
//! aligned) and the lead looks itself up as usual. The later accesses (members) take
//! the addend from the slot, or look themselves up when they find the mark.
//!
//! A cached addend stays right as long as the mapping does: nothing between the
//! lead and a member may change the fast TLB's view but a call into the
//! environment, so a group ends at any call that is not pure, and at every label
//! (a path from elsewhere would not have run the lead). A slow path taken inside a
//! group (a miss of any access: the softmmu may have done anything a device does)
//! marks the slots of the groups open there. The group's base temp must hold the
//! same value throughout (assigned again: a new base). Reads and writes are grouped
//! apart (a write hit checks the write tag), and so are the MMU's tables.

use vireo_core::ir::{BinOp, Block, MmuIdx, Op, Size, Temp};

/// Groups open at once at most: each has a slot in the temp area after the
/// block's temps.
pub(crate) const SLOTS: usize = 4;

/// Bytes a group's span may cover (from its lowest to its highest byte).
const SPAN: i64 = 2048;

/// What an access does in its group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// Looks up the span from its own address + `lo` to + `hi` (its last byte) and
    /// leaves the addend, or the mark, in slot `slot`.
    Lead { slot: u8, lo: i32, hi: i32 },
    /// Takes the addend from slot `slot`.
    Member { slot: u8 },
}

/// The groups of a block: each access's role, and for each access the slots of the
/// groups its slow path must mark (bit `k`: slot `k`).
#[derive(Debug, Default)]
pub(crate) struct Groups {
    pub role: Vec<Option<Role>>,
    pub open: Vec<u8>,
}

impl Groups {
    /// No groups, for a block of `n` ops.
    pub fn none(&mut self, n: usize) {
        self.role.clear();
        self.role.resize(n, None);
        self.open.clear();
        self.open.resize(n, 0);
    }
}

/// The base of an address: the sum of one to three temps (each as of its
/// definition then, see [`Scratch::version`]), in the order of their numbers,
/// [`NO_TEMP`] in the places after them.
type Root = [(Temp, u64); 3];

/// An empty place of a [`Root`].
const NO_TEMP: (Temp, u64) = (Temp(u32::MAX), 0);

/// A group being formed.
#[derive(Debug, Clone, Copy)]
struct Open {
    root: Root,
    mmu: MmuIdx,
    write: bool,
    lead: usize,
    lead_off: i64,
    /// Lowest and highest byte, as offsets from the base.
    lo: i64,
    hi: i64,
    slot: u8,
    /// The last member so far (the lead if none).
    last: usize,
}

/// The groups open at a point, by slot: (group id, op that last joined it).
type OpenSet = [Option<(usize, usize)>; SLOTS];

/// What a temp holds, as far as the straight line since the last label shows.
#[derive(Debug, Clone, Copy)]
struct Value {
    /// `root` plus `off`.
    root: Root,
    off: i64,
    konst: Option<u64>,
    /// The stretch between labels it was defined in (from an earlier one it is
    /// unknown: a path from elsewhere, or an earlier pass of a loop, may have
    /// assigned it since).
    stretch: u64,
}

/// Working space kept between blocks.
#[derive(Debug, Default)]
pub(crate) struct Scratch {
    /// A counter of definitions and stretches, over all blocks (so that nothing
    /// needs clearing per block: what an earlier block left never matches).
    tick: u64,
    /// Per temp: the tick of its last definition (of an earlier block if none in
    /// this one: then it names the value the block starts with).
    version: Vec<u64>,
    value: Vec<Value>,
    /// The tick the current stretch began at.
    stretch: u64,
    /// Every group of the block (its index is its id).
    groups: Vec<Open>,
    /// Per op: the group an access joined as a member.
    joined: Vec<Option<u32>>,
    /// At each branch (by op, ascending): the groups open there.
    snaps: Vec<(usize, OpenSet)>,
}

/// Finds the groups of `block`'s accesses. `pure_call(op)`: whether a call op
/// leaves the fast TLB and memory mappings alone; `only`: per label, the branch
/// that is its only way in ([`Block::branch_only_labels`]): after such a label the
/// groups open at its branch go on (the ops the branch skipped ran on no path to
/// it: what they assigned is unknown there).
pub(crate) fn find(
    block: &Block,
    pure_call: impl Fn(&Op) -> bool,
    only: &[Option<usize>],
    sc: &mut Scratch,
    out: &mut Groups,
) {
    let n = block.ops.len();
    let temps = block.temps as usize;
    out.none(n);
    if sc.version.len() < temps {
        sc.version.resize(temps, 0);
        sc.value.resize(
            temps,
            Value {
                root: [NO_TEMP; 3],
                off: 0,
                konst: None,
                stretch: 0,
            },
        );
    }
    sc.tick += 1;
    sc.stretch = sc.tick;
    sc.snaps.clear();
    sc.groups.clear();
    sc.joined.clear();
    sc.joined.resize(n, None);
    // The open groups by slot (ids), and when each was last joined.
    let mut open: OpenSet = [None; SLOTS];
    for (i, op) in block.ops.iter().enumerate() {
        match *op {
            Op::Label(l) => {
                let from = only.get(l.0 as usize).copied().flatten();
                let snap = from
                    .filter(|&b| b < i)
                    .and_then(|b| sc.snaps.binary_search_by_key(&b, |s| s.0).ok());
                match snap.and_then(|k| sc.snaps.get(k)) {
                    Some(&(b, groups)) => {
                        open = groups;
                        // What the skipped ops assigned holds on no path to here.
                        for o in &block.ops[b + 1..i] {
                            if let Some(v) = o.dst().and_then(|d| sc.value.get_mut(d.0 as usize)) {
                                v.stretch = 0;
                            }
                        }
                    }
                    None => {
                        open = [None; SLOTS];
                        sc.tick += 1;
                        sc.stretch = sc.tick;
                    }
                }
            }
            Op::BrIf { .. } => sc.snaps.push((i, open)),
            Op::Br(_) => {
                sc.snaps.push((i, open));
                open = [None; SLOTS];
            }
            Op::Exit(_) | Op::Raise { .. } => open = [None; SLOTS],
            Op::Call { .. } if !pure_call(op) => open = [None; SLOTS],
            Op::Load {
                addr,
                size,
                mmu,
                write,
                ..
            } => access(i, addr, size, mmu, write, sc, &mut open),
            Op::Store {
                addr, size, mmu, ..
            } => access(i, addr, size, mmu, true, sc, &mut open),
            _ => {}
        }
        if let Some(d) = op.dst() {
            define(op, d, sc);
        }
    }
    // Groups with members: their roles, and the slots open at each access after the
    // lead up to the last member.
    for g in &sc.groups {
        if g.last == g.lead {
            continue;
        }
        let (lo, hi) = (g.lo - g.lead_off, g.hi - g.lead_off);
        let (Ok(lo), Ok(hi)) = (i32::try_from(lo), i32::try_from(hi)) else {
            continue;
        };
        out.role[g.lead] = Some(Role::Lead {
            slot: g.slot,
            lo,
            hi,
        });
        for (j, o) in block
            .ops
            .iter()
            .enumerate()
            .take(g.last + 1)
            .skip(g.lead + 1)
        {
            if matches!(o, Op::Load { .. } | Op::Store { .. }) {
                out.open[j] |= 1 << g.slot;
            }
        }
    }
    for (i, id) in sc.joined.iter().enumerate() {
        if let Some(g) = id.and_then(|id| sc.groups.get(id as usize)) {
            if matches!(out.role[g.lead], Some(Role::Lead { .. })) {
                out.role[i] = Some(Role::Member { slot: g.slot });
            }
        }
    }
}

/// Access `i` of `size` at temp `addr`: joins an open group or begins one.
fn access(
    i: usize,
    addr: Temp,
    size: Size,
    mmu: MmuIdx,
    write: bool,
    sc: &mut Scratch,
    open: &mut OpenSet,
) {
    let Some((root, off)) = sc.of(addr) else {
        return;
    };
    let end = i128::from(off) + size.bytes() as i128 - 1;
    let Ok(end) = i64::try_from(end) else {
        return;
    };
    let groups = &mut sc.groups;
    let fits = |g: &Open| {
        g.root == root
            && g.mmu == mmu
            && g.write == write
            && i128::from(g.hi.max(end)) - i128::from(g.lo.min(off)) < i128::from(SPAN)
    };
    let found = open
        .iter_mut()
        .flatten()
        .find(|(id, _)| groups.get(*id).is_some_and(&fits));
    if let Some((id, used)) = found {
        if let Some(g) = groups.get_mut(*id) {
            g.lo = g.lo.min(off);
            g.hi = g.hi.max(end);
            g.last = i;
            *used = i;
            sc.joined[i] = Some(*id as u32);
        }
        return;
    }
    // A new group, in a free slot or in that of the one joined longest ago.
    let k = match open.iter().position(Option::is_none) {
        Some(k) => k,
        None => open
            .iter()
            .enumerate()
            .min_by_key(|(_, g)| g.map_or(0, |(_, used)| used))
            .map_or(0, |(k, _)| k),
    };
    open[k] = Some((groups.len(), i));
    groups.push(Open {
        root,
        mmu,
        write,
        lead: i,
        lead_off: off,
        lo: off,
        hi: end,
        slot: k as u8,
        last: i,
    });
}

impl Scratch {
    /// What temp `t` holds: a root plus an offset; itself if nothing else is known.
    /// `None` for a temp out of range.
    fn of(&self, t: Temp) -> Option<(Root, i64)> {
        let v = self.value.get(t.0 as usize)?;
        let holds =
            |(b, n): (Temp, u64)| (b, n) == NO_TEMP || self.version.get(b.0 as usize) == Some(&n);
        // Defined in this stretch from bases that still hold those values.
        if v.stretch == self.stretch && v.root.iter().all(|&r| holds(r)) {
            return Some((v.root, v.off));
        }
        Some(([(t, *self.version.get(t.0 as usize)?), NO_TEMP, NO_TEMP], 0))
    }

    /// The constant temp `t` holds, if known in this stretch.
    fn konst(&self, t: Temp) -> Option<u64> {
        let v = self.value.get(t.0 as usize)?;
        if v.stretch == self.stretch {
            v.konst
        } else {
            None
        }
    }
}

/// Records what temp `d`, assigned by `op`, holds: a constant, a root plus an
/// offset (an add or subtract of a constant, the sum of two one-temp roots, a
/// copy), or itself.
fn define(op: &Op, d: Temp, sc: &mut Scratch) {
    let di = d.0 as usize;
    if di >= sc.version.len() {
        return;
    }
    // Read the operands before the assignment counts.
    let plus = |a: Temp, c: u64, neg: bool| {
        sc.of(a).map(|(r, o)| {
            let c = c as i64;
            (
                r,
                if neg {
                    o.wrapping_sub(c)
                } else {
                    o.wrapping_add(c)
                },
            )
        })
    };
    let (rel, konst) = match *op {
        Op::Const { value, .. } => (None, Some(value)),
        Op::Mov { src, .. } => (sc.of(src), sc.konst(src)),
        Op::Bin {
            op: BinOp::Add,
            size: Size::B64,
            a,
            b,
            ..
        } => match (sc.konst(a), sc.konst(b)) {
            (_, Some(c)) => (plus(a, c, false), None),
            (Some(c), None) => (plus(b, c, false), None),
            (None, None) => match (sc.of(a), sc.of(b)) {
                (Some((x, ox)), Some((y, oy))) => {
                    (sum(x, y).map(|r| (r, ox.wrapping_add(oy))), None)
                }
                _ => (None, None),
            },
        },
        Op::Bin {
            op: BinOp::Sub,
            size: Size::B64,
            a,
            b,
            ..
        } => (sc.konst(b).and_then(|c| plus(a, c, true)), None),
        _ => (None, None),
    };
    sc.tick += 1;
    sc.version[di] = sc.tick;
    // A value in terms of `d` itself (`d = d + 8`) refers to its old value.
    let rel = rel.filter(|(r, _)| r.iter().all(|&(b, _)| b != d));
    let (root, off) = rel.unwrap_or(([(d, sc.version[di]), NO_TEMP, NO_TEMP], 0));
    sc.value[di] = Value {
        root,
        off,
        konst,
        stretch: sc.stretch,
    };
}

/// The root of the sum of roots `x` and `y`, if it has three temps at most.
fn sum(x: Root, y: Root) -> Option<Root> {
    let mut out = [NO_TEMP; 3];
    let mut n = 0;
    for r in x.into_iter().chain(y).filter(|&r| r != NO_TEMP) {
        *out.get_mut(n)? = r;
        n += 1;
    }
    out[..n].sort_unstable_by_key(|&(t, v)| (t.0, v));
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vireo_core::ir::{Builder, Effects, ExitKind, Global, HelperId};

    /// The roles of `block`'s ops (pure calls: helper 5).
    fn roles(block: &Block) -> (Vec<Option<Role>>, Vec<u8>) {
        let mut out = Groups::default();
        let only = block.branch_only_labels();
        let pure = |o: &Op| matches!(o, Op::Call { helper, .. } if helper.0 == 5);
        find(block, pure, &only, &mut Scratch::default(), &mut out);
        (out.role, out.open)
    }

    /// The roles of the accesses, in order.
    fn access_roles(block: &Block) -> Vec<Option<Role>> {
        let (r, _) = roles(block);
        block
            .ops
            .iter()
            .zip(r)
            .filter(|(o, _)| matches!(o, Op::Load { .. } | Op::Store { .. }))
            .map(|(_, r)| r)
            .collect()
    }

    fn lead(slot: u8, lo: i32, hi: i32) -> Option<Role> {
        Some(Role::Lead { slot, lo, hi })
    }

    fn member(slot: u8) -> Option<Role> {
        Some(Role::Member { slot })
    }

    const K: MmuIdx = MmuIdx::Kernel;

    /// Pushes (the stack pointer moved down by each), then loads of the frame: a
    /// group of stores from the first push's view, and one of loads.
    #[test]
    fn pushes_and_frame_loads_form_groups() {
        let mut b = Builder::new(0);
        let sp = b.get(Global::Gpr(4));
        let v = b.get(Global::Gpr(0));
        let mut at = sp;
        for _ in 0..3 {
            at = b.bini(BinOp::Sub, Size::B64, at, 8);
            b.store(at, v, Size::B64, K);
            b.set(Global::Gpr(4), at);
        }
        let l1 = b.bini(BinOp::Add, Size::B64, at, 0x10);
        b.load(l1, Size::B32, false, K);
        b.load(sp, Size::B8, false, K);
        b.exit(ExitKind::Indirect);
        assert_eq!(
            access_roles(&b.finish()),
            [
                lead(0, -16, 7),
                member(0),
                member(0),
                lead(1, 0, 8),
                member(1)
            ]
        );
    }

    /// Sums of temps in either order and association are one base; separate
    /// tables, reads and writes, far offsets, another base: separate groups.
    #[test]
    fn groups_need_one_base_table_and_kind_within_the_span() {
        let mut b = Builder::new(0);
        let x = b.get(Global::Gpr(1));
        let y = b.get(Global::Gpr(2));
        let z = b.get(Global::Gpr(3));
        let xy = b.bin(BinOp::Add, Size::B64, x, y);
        let xyz = b.bin(BinOp::Add, Size::B64, xy, z);
        let x1 = b.bini(BinOp::Add, Size::B64, x, 1);
        let zx1 = b.bin(BinOp::Add, Size::B64, z, x1);
        let zx1y = b.bin(BinOp::Add, Size::B64, zx1, y);
        b.load(xyz, Size::B8, false, K); // lead 0
        b.load(zx1y, Size::B8, false, K); // member: x+y+z+1
        b.load(zx1y, Size::B8, false, MmuIdx::User); // another table
        b.store(xyz, x, Size::B8, K); // a write
        b.load_for_write(zx1y, Size::B8, K); // a write too: joins it
        let far = b.bini(BinOp::Add, Size::B64, xyz, 4000);
        b.load(far, Size::B8, false, K); // beyond the span
        b.load(xy, Size::B8, false, K); // another base
        b.exit(ExitKind::Indirect);
        assert_eq!(
            access_roles(&b.finish()),
            [
                lead(0, 0, 1),
                member(0),
                None,
                lead(2, 0, 1),
                member(2),
                None,
                None
            ]
        );
    }

    /// A label ends the groups (unless only a branch before it leads there, which
    /// keeps those open at the branch); so do calls into the environment (not pure
    /// ones), exits and a base assigned again. Accesses after the lead up to the
    /// last member have the group's slot to mark.
    #[test]
    fn labels_calls_and_new_bases_end_groups() {
        let mut b = Builder::new(0);
        let p = b.get(Global::Gpr(1));
        let p8 = b.bini(BinOp::Add, Size::B64, p, 8);
        let q = b.get(Global::Gpr(2));
        b.load(p, Size::B64, false, K); // 0: lead 0
                                        // A check raising when it fails: skipped on the way on.
        let ok = b.label();
        b.br_if(q, ok);
        let skipped = b.bini(BinOp::Add, Size::B64, p, 16);
        b.raise(13, None);
        b.set_label(ok);
        b.load(p8, Size::B64, false, K); // 1: member 0
        b.load(q, Size::B64, false, K); // 2: lead 1 (no member)
        b.load(skipped, Size::B64, false, K); // 3: not known to be p + 16
        b.call(HelperId(5), &[p], true, Effects::PURE);
        b.load(p, Size::B64, false, K); // 4: member 0
        b.call(HelperId(1), &[p], true, Effects::PURE);
        b.load(p8, Size::B64, false, K); // 5: lead (the call ended group 0)
        b.load(p, Size::B64, false, K); // 6: member
        let l = b.label();
        b.set_label(l);
        b.load(p, Size::B64, false, K); // 7: lead again after the label
        b.push(Op::Mov { dst: p, src: q });
        b.load(p8, Size::B64, false, K); // 8: p8 is the old p + 8: lead
        b.load(p, Size::B64, false, K); // 9: p is q now: not with 8
        b.load(q, Size::B64, false, K); // 10: ... but with q
        b.exit(ExitKind::Indirect);
        let blk = b.finish();
        let r = access_roles(&blk);
        assert_eq!(r[0], lead(0, 0, 15));
        assert_eq!(r[1], member(0));
        assert_eq!((r[2], r[3]), (None, None));
        assert_eq!(r[4], member(0));
        assert!(matches!(r[5], Some(Role::Lead { .. })));
        assert!(matches!(r[6], Some(Role::Member { .. })));
        assert_eq!(r[7], None, "a lead without members is a plain access");
        assert_eq!(r[8], None);
        assert!(matches!(r[9], Some(Role::Lead { .. })), "{r:?}");
        assert!(matches!(r[10], Some(Role::Member { .. })));
        // Slots to mark: from after a lead to its last member.
        let (_, open) = roles(&blk);
        let acc: Vec<u8> = blk
            .ops
            .iter()
            .zip(open)
            .filter(|(o, _)| matches!(o, Op::Load { .. } | Op::Store { .. }))
            .map(|(_, m)| m)
            .collect();
        assert_eq!(acc[0], 0);
        assert_eq!(&acc[1..5], &[1, 1, 1, 1]);
    }
}
