//! IR to x86-64: one pass over the ops; temps live in the registers the linear-scan
//! allocation gives them (`analysis::allocate`), the others in their slots of the
//! temp area.
//!
//! Registers while a block runs:
//!
//! | register | holds |
//! | --- | --- |
//! | `rbx` | the [`Ctx`] |
//! | `r12` | the environment (`*mut E`) plus [`bias`]: direct globals are `[r12 + offset]` |
//! | `r13` | the temp area: temp `n` is `[r13 + 8n]` |
//! | `[rsp]` | the PC of the current instruction without the instruction hooks (with them, the `pc` hook holds it) |
//! | `r14`, `r15`, `rbp`, `r10`, `r11`, `r8`, `r9` | temps (`analysis::ALLOC_REGS`) |
//! | `rax`, `rcx`, `rdx`, `rsi`, `rdi` | scratch |
//!
//! Blocks have no prologue: the cache's shared entry (`exits::shared_stubs`),
//! `extern "C" fn(ctx, env, temps, block) -> u64`, builds the frame and the
//! registers above (`r12` is the environment plus [`bias`]) and jumps to the
//! block's first byte. A run returns [`RET_FAULT`] (a fault or a panic is parked in
//! the context, `ctx.pc` is the instruction's PC), [`RET_STOP`] (`ctx.pc` is the PC
//! to stop at) or `RET_EXIT + k` for an exit of kind `k` (see [`exit_of`]; the
//! target of a `Pause` is in `ctx.target`, a `Jump`'s is the PC the block stored, as
//! the IR requires), through the shared return, which records the block's cell (in
//! `rcx`) in `ctx.last`.
//!
//! **Chaining.** A block's first byte is its *chain entry*, where another block in
//! the same frame may jump straight in (nothing is stored there with the
//! instruction hooks). A `Jump` exit to a PC one of the block's chain slots serves
//! loads the slot (the target's cell, or 0), the target's chain entry from it (0 once
//! the target was dropped), and jumps there if the run may go on: the environment's
//! instruction counter below the limit `ctx.limit` points to (a [`crate::Gate`]'s,
//! which raising one of the vCPU's kick / interrupt / event flags sets to 0: one
//! compare covers both) and, after a block that may have changed
//! them, the environment's guard bools clear (after a store only the stop request;
//! after a helper also the chain guards; `JitCache::run_chained` lets nothing chain
//! if one is set at the start); if they fail it returns as any exit does. An empty
//! slot (or a dropped target) goes to the cache's shared table lookup, which may
//! link it. Code is never patched: the slots are data in the cell.

// dynasm's dynamic registers (`Rq(r)`) expand to `r.into()`.
#![allow(clippy::useless_conversion)]

mod enc;
mod exits;
pub(crate) use exits::shared_stubs;
mod memory;

use crate::analysis::{
    self, allocate, call_kind, guard_risk, labels_needing_pc, lazy_sets, reads, wants_pc,
    Allocation, CallKind, LazySets, Volatile,
};
use crate::tramp::{self, Ctx};
use crate::JitError;
use dynasmrt::x64::X64Relocation;
use dynasmrt::{dynasm, DynamicLabel, DynasmApi, DynasmLabelApi, VecAssembler};
use std::mem::offset_of;
use vireo_core::exec::{DirectGlobals, GuestEnv};
use vireo_core::ir::{BinOp, Block, Cond, ExitKind, Global, Op, Size, Temp, UnOp};

/// Return code: fault (or panic) at `ctx.pc`.
pub const RET_FAULT: u64 = 0;
/// Return code: stopped before `ctx.pc`.
pub const RET_STOP: u64 = 1;
/// Return code of the first exit.
pub const RET_EXIT: u64 = 2;

const RAX: u8 = 0;
const RCX: u8 = 1;
const RDX: u8 = 2;
const RBX: u8 = 3;
const R12: u8 = 12;
const R13: u8 = 13;
const RSP: u8 = 4;

const CTX_PC: i32 = offset_of!(Ctx, pc) as i32;

const CTX_LIMIT: i32 = offset_of!(Ctx, limit) as i32;
const CTX_LAST: i32 = offset_of!(Ctx, last) as i32;
const CTX_TARGET: i32 = offset_of!(Ctx, target) as i32;
const CTX_CHAINS: i32 = offset_of!(Ctx, chains) as i32;
const CTX_TRAMPS: i32 = offset_of!(Ctx, tramps) as i32;
const CTX_LOOKUP: i32 = offset_of!(Ctx, lookup) as i32;
const CTX_LEAVE: i32 = offset_of!(Ctx, leave) as i32;
const CTX_DEPTH: i32 = offset_of!(Ctx, depth) as i32;
const CTX_FRAME: i32 = offset_of!(Ctx, frame) as i32;
const CTX_NLINKS: i32 = offset_of!(Ctx, nlinks) as i32;
const CTX_LINKS: i32 = offset_of!(Ctx, links) as i32;
const CELL_ENTRY: i32 = offset_of!(crate::Cell, entry) as i32;
const CELL_SLOTS: i32 = offset_of!(crate::Cell, slots) as i32;
const CELL_GUARDS: i32 = offset_of!(crate::Cell, guards) as i32;
const CELL_IC_PC: i32 = offset_of!(crate::Cell, ic_pc) as i32;
const CELL_IC_CS: i32 = offset_of!(crate::Cell, ic_cs) as i32;
const CELL_IC_GUARD: i32 = offset_of!(crate::Cell, ic_guard) as i32;
const CELL_IC_ENTRY: i32 = offset_of!(crate::Cell, ic_entry) as i32;
const CELL_PAGE: i32 = offset_of!(crate::Cell, page) as i32;
const CELL_LINKABLE: i32 = offset_of!(crate::Cell, linkable) as i32;

/// A compiled block, position-independent (relative branches inside, absolute
/// addresses of the trampolines and of its cell).
pub struct Compiled {
    /// The code; its first byte is the chain entry.
    pub code: Vec<u8>,
    /// The `Jump` targets served by the chain slots.
    pub slot_targets: [Option<u64>; crate::SLOTS],
    /// The slots that check the indirect guard (jumps to another page).
    pub guarded: [bool; crate::SLOTS],
    /// Per slot its exits jump through, the offset of the code an unlinked slot
    /// leads to (`Cell::miss`).
    pub miss: [Option<usize>; crate::SLOTS],
}

/// The exit a return code `n >= RET_EXIT` stands for (`target` from `ctx.target`;
/// the run takes a `Jump`'s from the environment's PC instead).
pub fn exit_of(n: u64, target: u64) -> ExitKind {
    match n.wrapping_sub(RET_EXIT) {
        0 => ExitKind::Jump(target),
        1 => ExitKind::Pause(target),
        3 => ExitKind::Sync,
        4 => ExitKind::Halt,
        _ => ExitKind::Indirect,
    }
}

/// The return code of exit `kind` and the target it stores in `ctx.target`, if any
/// (a `Jump`'s target is the PC the block stored, see `ExitKind::Jump`: the run
/// reads it from there).
fn exit_code(kind: ExitKind) -> (u64, Option<u64>) {
    match kind {
        ExitKind::Jump(_) => (RET_EXIT, None),
        ExitKind::Pause(t) => (RET_EXIT + 1, Some(t)),
        ExitKind::Indirect => (RET_EXIT + 2, None),
        ExitKind::Sync => (RET_EXIT + 3, None),
        ExitKind::Halt => (RET_EXIT + 4, None),
    }
}

type Asm = VecAssembler<X64Relocation>;

struct Gen<'a> {
    ops: Asm,
    block: &'a Block,
    labels: Vec<DynamicLabel>,
    epilogue: DynamicLabel,
    fault: DynamicLabel,
    /// Address of the block's cell.
    cell: usize,
    /// The block's chain entry.
    entry: DynamicLabel,
    /// The `Jump` targets served by the chain slots.
    slot_targets: [Option<u64>; crate::SLOTS],
    /// Slots of jumps to another page, which check the indirect guard
    /// ([`crate::JitCache::set_page`]).
    guarded: [bool; crate::SLOTS],
    /// Per slot exits jump through: the code an unlinked slot leads to, and the
    /// place in it an exit whose guard did not match goes to (after the
    /// correction of the chain count).
    slot_miss: [Option<(DynamicLabel, DynamicLabel)>; crate::SLOTS],
    /// Offsets of the bools that must be false to chain; `None`: never chain.
    guards: Option<Guards>,
    popcnt: bool,
    /// The host register each temp lives in, if any (else its slot in the temp area).
    alloc: Vec<Option<u8>>,
    /// Temps in caller-saved registers: saved to their slots around calls inside
    /// their live range.
    volatile: Vec<Volatile>,
    /// Index of the op being compiled.
    cur: usize,
    /// Slow paths of memory accesses, emitted after the block's code.
    stubs: Vec<SlowPath>,
    /// Instruction bookkeeping (with [`vireo_core::exec::InsnHooks`]), done lazily:
    /// see [`Book`].
    book: Book,
    /// Stop exits (taken when the stop request is set at an instruction boundary),
    /// emitted after the block's code.
    stop_stubs: Vec<StopStub>,
    /// Per label: code after it, before the next instruction starts, may want the
    /// current PC (which then depends on the path taken: every path stores it).
    label_needs_pc: Vec<bool>,
    /// The block may raise the stop request or set a chain guard (a store, a call
    /// into the environment): its chaining checks them ([`guard_risk`]).
    guard_risk: bool,
    /// The block may raise the stop request (a store, or any of `guard_risk`): its
    /// chaining checks that where a call or a store's slow path may have raised it
    /// since the last check (`Book::may_stop`).
    stop_risk: bool,
    /// The run conditions being emitted follow code that ran elsewhere (a guest
    /// call returned): the stop request is checked whatever `Book::may_stop` says.
    stop_unknown: bool,
    /// Temps that are constants (see [`Allocation::konst`]).
    konst: Vec<Option<u64>>,
    /// Reads of each temp in the block.
    uses: Vec<u32>,
    /// The op just compiled was a comparison that also did the `BrIf` after it.
    fused: bool,
    /// The op just compiled was a comparison whose result only the `Select` after it
    /// reads: the host flags hold it, true when this condition holds.
    select_on: Option<Cond>,
    /// The block's way into the cache's shared table lookup (its cell in `rcx`),
    /// emitted after its code when used ([`Gen::lookup_tail`]).
    lookup_tail: Option<DynamicLabel>,
    /// The cache has the shared lookup (`ctx.lookup` is nonzero).
    lookup: bool,
    /// Count blocks entered straight from another in `ctx.chains`
    /// ([`crate::JitCache::set_count_chains`]).
    count_chains: bool,
    /// Per label, the branch that is its only way in ([`Block::branch_only_labels`]):
    /// that branch syncs nothing, the label takes the bookkeeping it had (`at_branch`).
    only: Vec<Option<usize>>,
    at_branch: Vec<Option<Book>>,
    /// Per label reached otherwise: a stop request may be pending there (a branch
    /// to it after a call or a store's slow path with no check since, or a branch
    /// back to it in a block with such code); the code falling through brings its
    /// own `Book::may_stop`.
    label_stop: Vec<bool>,
    /// An `And` with a constant left for the comparison with zero after it.
    test_of: Option<TestOf>,
    /// The PC a `Set` left for the `Jump` exit right after it to store on its paths
    /// back to the run loop ([`Gen::chains_directly`]).
    pc_later: Option<u64>,
    /// Where each label is in the block's ops.
    label_pos: Vec<usize>,
    /// Ops the main pass passes over (a branch's skipped ops, see
    /// [`Gen::book_for_branch`]; the second op of a store pair, `Gen::store_pair`).
    skip: std::ops::Range<usize>,
    /// The op of the store to the same address a load left its host address in
    /// `rdi` for (0 in `rdi`: the store looks up for itself), see `Gen::load`.
    reuse: Option<usize>,
    /// Skipped ops compiled after the block's code.
    cold: Vec<Cold>,
    /// Stores of globals left to the slow paths ([`lazy_sets`]).
    lazy: LazySets,
    /// Accesses sharing a fast-TLB lookup ([`crate::groups`]).
    groups: crate::groups::Groups,
    /// Their out-of-line lookups ([`Gen::group_stubs`]).
    group_stubs: Vec<GroupStub>,
}

/// The out-of-line lookup of an access of a group (see [`Gen::grouped_lookup`]).
struct GroupStub {
    entry: DynamicLabel,
    /// Back to the access (the addend in `rax`).
    back: DynamicLabel,
    probe: Probe,
    /// A lead's slot (marked first).
    mark: Option<i32>,
}

/// What an inline fast-TLB lookup checks: an access at the address in register
/// `addr` whose last byte is at `+ last`, in table `mmu`, for writing (the write
/// tag) or not; a miss goes to `slow`.
#[derive(Clone, Copy)]
struct Probe {
    addr: u8,
    mmu: vireo_core::ir::MmuIdx,
    last: i32,
    write: bool,
    slow: DynamicLabel,
}

impl Probe {
    fn new(
        addr: u8,
        mmu: vireo_core::ir::MmuIdx,
        last: i32,
        write: bool,
        slow: DynamicLabel,
    ) -> Probe {
        Probe {
            addr,
            mmu,
            last,
            write,
            slow,
        }
    }
}

/// How a branch is compiled ([`Gen::book_for_branch`]).
enum Branch {
    /// To its label.
    ToLabel,
    /// Falling through to its label; the ops it skips run at this entry (out of
    /// line) when it is not taken.
    Cold(DynamicLabel),
    /// Not at all: an unconditional branch over ops nothing else reaches.
    Over,
}

/// Ops compiled out of line, at `entry`, with the bookkeeping `book`.
struct Cold {
    entry: DynamicLabel,
    ops: std::ops::Range<usize>,
    book: Book,
}

/// `dst = src & mask` not computed: the next comparison of `dst` with zero tests
/// `src` against `mask` (64 bits wide, or 32).
#[derive(Debug, Clone, Copy)]
struct TestOf {
    dst: Temp,
    src: Temp,
    mask: i32,
    wide: bool,
}

/// Lazy instruction bookkeeping. The PC of the current instruction (`[rsp]` and the
/// environment's `pc` hook) matters only to code that can fault or call into the
/// environment, and the instruction counters (the environment's `counter`,
/// `ctx.insns`) only there and at exits; so they are written just before such code
/// (`sync`), not at every instruction. The stop request can only be raised by a call
/// into the environment (a helper, a slow-path store, a port write), so it is
/// checked only at instruction boundaries after one.
#[derive(Debug, Clone, Copy, Default)]
struct Book {
    /// The current instruction's PC.
    pc: u64,
    /// `[rsp]` and the `pc` hook hold `pc`.
    pc_synced: bool,
    /// Instructions started and not yet added to the counters.
    pending: u32,
    /// A call into the environment may have happened since the last stop check.
    may_stop: bool,
}

/// An out-of-line stop exit: counts `pending` instructions, stops before `pc`.
struct StopStub {
    entry: DynamicLabel,
    pc: u64,
    pending: u32,
}

/// The out-of-line slow path of a load or store whose inline fast TLB lookup missed:
/// the softmmu trampoline, then back to `done`.
struct SlowPath {
    entry: DynamicLabel,
    done: DynamicLabel,
    access: Access,
    packed: i32,
    /// The op it belongs to (which temps live in caller-saved registers across it).
    op: usize,
    /// The bookkeeping at the access (the stub syncs it for the call).
    book: Book,
    /// A store the stub checks the stop request after: the PC of the instruction
    /// to stop before (see `Gen::slow_path`).
    stop_at: Option<u64>,
    /// The access groups' slots it marks (bit `k`: slot `k`; see [`crate::groups`]).
    marks: u8,
}

/// Where a memory access's operands are (the slow path moves them where the
/// trampolines want them: address in `rsi`, a store's value in `rdx`, a load's
/// result from `rdx`).
#[derive(Debug, Clone, Copy)]
enum Access {
    Load {
        addr: u8,
        dst: u8,
    },
    Store {
        addr: u8,
        val: Value,
    },
    /// Two 64-bit stores, at `addr` and at `addr + 8` (which temp `addr2` holds),
    /// with one lookup: the second value is `val2` (a temp or a constant).
    StorePair {
        addr: u8,
        val: Value,
        addr2: Temp,
        val2: Temp,
    },
}

/// A store's value: a register, or a constant.
#[derive(Debug, Clone, Copy)]
enum Value {
    Reg(u8),
    Imm(u64),
}

/// Buffers one compilation leaves to the next (allocations showed in the
/// translation-bound Linux boot).
#[derive(Default)]
pub struct Scratch {
    /// [`guards`] for the environment (asked once).
    guards: Option<Option<Guards>>,
    analysis: analysis::Scratch,
    ops: Option<Asm>,
    labels: Vec<DynamicLabel>,
    stubs: Vec<SlowPath>,
    stop_stubs: Vec<StopStub>,
    at_branch: Vec<Option<Book>>,
    label_stop: Vec<bool>,
    cold: Vec<Cold>,
    groups: crate::groups::Scratch,
    roles: crate::groups::Groups,
    group_stubs: Vec<GroupStub>,
}

/// Compiles `block` for environment type `E`, with its cell at address `cell`, with
/// buffers from `sc` (which it gives back); `lookup`: the cache has the shared table
/// lookup; `count_chains`: count chained entries ([`crate::JitCache::set_count_chains`]).
pub fn compile_with<E: GuestEnv + DirectGlobals>(
    block: &Block,
    cell: usize,
    lookup: bool,
    count_chains: bool,
    sc: &mut Scratch,
) -> Result<Compiled, JitError> {
    if block.temps >= 1 << 28 {
        return Err(JitError::Unsupported("too many temporaries".into()));
    }
    // Room for a typical block's code, labels and label references up front (the
    // buffer grew by doubling from nothing: several reallocations per block, a few
    // percent of a Linux boot, which is mostly translation).
    let ops_room = 64 + 24 * block.ops.len();
    let label_room = block.labels as usize + block.ops.len() / 4 + 8;
    let mut ops = match sc.ops.take() {
        Some(mut a) => {
            a.reserve_ops(ops_room);
            a
        }
        None => Asm::new_with_capacity(0, ops_room, 0, 0, label_room, 0, 2 * label_room),
    };
    let mut labels = std::mem::take(&mut sc.labels);
    labels.clear();
    labels.extend((0..block.labels).map(|_| ops.new_dynamic_label()));
    let epilogue = ops.new_dynamic_label();
    let fault = ops.new_dynamic_label();
    let entry = ops.new_dynamic_label();
    // The first distinct static successors get chain slots.
    let mut slot_targets = [None; crate::SLOTS];
    let mut n = 0;
    // (A call's return PC too: where the block goes on when the callee returns.)
    let ret = match block.tail {
        vireo_core::ir::Tail::Call { ret } => Some(ret),
        _ => None,
    };
    let jumps = block.ops.iter().filter_map(|op| match *op {
        Op::Exit(ExitKind::Jump(t)) => Some(t),
        _ => None,
    });
    for t in jumps.chain(ret) {
        if n < crate::SLOTS && !slot_targets.contains(&Some(t)) {
            slot_targets[n] = Some(t);
            n += 1;
        }
    }
    let guards = *sc.guards.get_or_insert_with(guards::<E>);
    let asc = &mut sc.analysis;
    let mut only = std::mem::take(&mut asc.only);
    block.branch_only_labels_into(&mut only);
    let lazy = lazy_sets::<E>(block, &only, asc);
    let Allocation {
        regs: alloc,
        volatile,
        konst,
    } = allocate(block, &lazy, asc);
    let label_needs_pc = labels_needing_pc::<E>(block, asc);
    let uses = reads(block, asc);
    let mut label_pos = std::mem::take(&mut asc.label_pos);
    block.label_positions_into(&mut label_pos);
    let mut stubs = std::mem::take(&mut sc.stubs);
    stubs.clear();
    let mut stop_stubs = std::mem::take(&mut sc.stop_stubs);
    stop_stubs.clear();
    let mut at_branch = std::mem::take(&mut sc.at_branch);
    analysis::reset(&mut at_branch, block.labels as usize, None);
    // What the block's ops may do, in one pass; labels a branch goes back to.
    let (mut has_calls, mut risk, mut stores) = (false, false, false);
    let mut label_stop = std::mem::take(&mut sc.label_stop);
    analysis::reset(&mut label_stop, block.labels as usize, false);
    for (i, o) in block.ops.iter().enumerate() {
        has_calls |= wants_pc::<E>(o);
        risk |= guard_risk::<E>(o, false);
        stores |= matches!(o, Op::Store { .. });
        if let Op::Br(l) | Op::BrIf { target: l, .. } = *o {
            let back = label_pos.get(l.0 as usize).is_some_and(|&p| p < i);
            if let (true, Some(s)) = (back, label_stop.get_mut(l.0 as usize)) {
                *s = true;
            }
        }
    }
    if !has_calls {
        label_stop.fill(false);
    }
    let mut cold = std::mem::take(&mut sc.cold);
    cold.clear();
    // Accesses sharing a lookup (none without a fast TLB).
    let mut groups = std::mem::take(&mut sc.roles);
    if E::fast_tlb().is_some() {
        let pure = |o: &Op| match o {
            Op::Call {
                helper,
                args,
                effects,
                ..
            } => matches!(
                analysis::call_kind::<E>(*helper, args, *effects),
                analysis::CallKind::Pure(_)
            ),
            _ => false,
        };
        crate::groups::find(block, pure, &only, &mut sc.groups, &mut groups);
    } else {
        groups.none(block.ops.len());
    }
    let mut g = Gen {
        ops,
        block,
        labels,
        epilogue,
        fault,
        cell,
        entry,
        slot_targets,
        guarded: [false; crate::SLOTS],
        slot_miss: [None; crate::SLOTS],
        guards,
        popcnt: std::arch::is_x86_feature_detected!("popcnt"),
        alloc,
        volatile,
        cur: 0,
        stubs,
        book: Book::default(),
        stop_stubs,
        label_needs_pc,
        konst,
        uses,
        fused: false,
        select_on: None,
        guard_risk: risk,
        // (`guard_risk` with stores counted.)
        stop_risk: risk || stores,
        stop_unknown: false,
        lookup_tail: None,
        lookup,
        count_chains,
        only,
        at_branch,
        label_stop,
        test_of: None,
        pc_later: None,
        label_pos,
        skip: 0..0,
        reuse: None,
        cold,
        lazy,
        groups,
        group_stubs: std::mem::take(&mut sc.group_stubs),
    };
    if g.indirect_ok::<E>() {
        for (k, t) in slot_targets.iter().enumerate() {
            g.guarded[k] = t.is_some_and(|t| (t ^ block.pc) >> 12 != 0);
        }
    }
    g.chain_entry::<E>();
    for (i, op) in block.ops.iter().enumerate() {
        if g.skip.contains(&i) {
            continue;
        }
        g.cur = i;
        g.op::<E>(op)?;
    }
    // A block without a final exit falls off its end: an indirect exit, as in the
    // interpreter (validated blocks never do; nothing is emitted after a last op
    // that cannot fall through).
    if !matches!(
        block.ops.last(),
        Some(Op::Exit(_) | Op::Raise { .. } | Op::Br(_))
    ) {
        g.flush::<E>();
        g.leave(exit_code(ExitKind::Indirect).0);
    }
    g.cold_paths::<E>()?;
    g.group_stubs::<E>();
    g.slow_paths::<E>();
    g.stop_exits::<E>();
    let miss = g.slot_misses::<E>();
    g.lookup_tail();
    g.epilogue::<E>();
    let (slot_targets, guarded) = (g.slot_targets, g.guarded);
    let code = g.ops.take().map_err(|e| JitError::Asm(e.to_string()))?;
    // The buffers back for the next block.
    let asc = &mut sc.analysis;
    (asc.lazy, asc.regs, asc.volatile, asc.konst) = (g.lazy, g.alloc, g.volatile, g.konst);
    (asc.uses, asc.label_needs_pc, asc.only, asc.label_pos) =
        (g.uses, g.label_needs_pc, g.only, g.label_pos);
    (sc.labels, sc.stubs, sc.stop_stubs, sc.at_branch, sc.cold) =
        (g.labels, g.stubs, g.stop_stubs, g.at_branch, g.cold);
    sc.label_stop = g.label_stop;
    sc.roles = g.groups;
    sc.group_stubs = g.group_stubs;
    sc.ops = Some(g.ops);
    Ok(Compiled {
        code,
        slot_targets,
        guarded,
        miss,
    })
}

fn toff(t: Temp) -> i32 {
    // In range: `compile` checked `temps < 2^28`, and `Block::validate` that every
    // temp is below `temps` (an unvalidated out-of-range temp still fits an i32).
    (t.0 as i32).wrapping_mul(8)
}

impl Gen<'_> {
    /// The chain entry, the block's first byte (the frame is the cache's shared
    /// entry's, `exits::shared_stubs`). With the instruction hooks nothing is stored
    /// there: the PC goes to the `pc` hook before anything can fault, and `ctx.last`
    /// is set on the way out; without them the PC goes to `[rsp]`.
    fn chain_entry<E: DirectGlobals>(&mut self) {
        let entry = self.entry;
        dynasm!(self.ops ; .arch x64 ; =>entry);
        if hooks::<E>().is_none() {
            let pc = self.block.pc as i64;
            dynasm!(self.ops
                ; .arch x64
                ; mov rax, QWORD pc
                ; mov [rsp], rax
            );
        }
    }

    /// The fault path and the epilogue, which records the block as the last one run
    /// (`ctx.last`).
    fn epilogue<E: DirectGlobals>(&mut self) {
        let (epilogue, fault) = (self.epilogue, self.fault);
        dynasm!(self.ops ; .arch x64 ; =>fault);
        match hooks::<E>() {
            Some(h) => {
                enc::load(&mut self.ops, RAX, R12, h.pc);
            }
            None => dynasm!(self.ops ; .arch x64 ; mov rax, [rsp]),
        }
        let cell = self.cell as i64;
        enc::store(&mut self.ops, RBX, CTX_PC, RAX);
        dynasm!(self.ops
            ; .arch x64
            ; mov eax, RET_FAULT as i32
            ; =>epilogue
            ; mov rcx, QWORD cell
        );
        // The cache's shared return (`exits::shared_stubs`).
        enc::jmp_mem(&mut self.ops, RBX, CTX_LEAVE);
    }

    /// The register temp `t` lives in, if any.
    fn reg(&self, t: Temp) -> Option<u8> {
        self.alloc.get(t.0 as usize).copied().flatten()
    }

    /// The value of `t` if it is a constant that is never stored.
    fn k(&self, t: Temp) -> Option<u64> {
        self.konst.get(t.0 as usize).copied().flatten()
    }

    /// The value of `t` as a sign-extended 32-bit immediate, if it is one.
    fn k32(&self, t: Temp) -> Option<i32> {
        self.k(t).and_then(|v| i32::try_from(v as i64).ok())
    }

    /// `t`'s constant as an instruction's 32-bit immediate: sign-extended for a
    /// 64-bit operation (`wide`), any 32-bit value for a 32-bit one (only its low
    /// bits count).
    fn imm_of(&self, t: Temp, wide: bool) -> Option<i32> {
        if wide {
            self.k32(t)
        } else {
            self.k(t).map(|v| v as u32 as i32)
        }
    }

    fn ld(&mut self, r: u8, t: Temp) {
        if let Some(v) = self.k(t) {
            self.imm(r, v);
            return;
        }
        match self.reg(t) {
            Some(h) if h == r => {}
            Some(h) => dynasm!(self.ops ; .arch x64 ; mov Rq(r), Rq(h)),
            None => enc::load(&mut self.ops, r, R13, toff(t)),
        }
    }

    fn st(&mut self, t: Temp, r: u8) {
        match self.reg(t) {
            Some(h) if h == r => {}
            Some(h) => dynasm!(self.ops ; .arch x64 ; mov Rq(h), Rq(r)),
            None => enc::store(&mut self.ops, R13, toff(t), r),
        }
    }

    /// Sets the flags from `t` compared with 0.
    fn test_zero(&mut self, t: Temp) {
        if let Some(v) = self.k(t) {
            self.imm(RDX, v);
            dynasm!(self.ops ; .arch x64 ; test rdx, rdx);
            return;
        }
        match self.reg(t) {
            Some(h) => dynasm!(self.ops ; .arch x64 ; test Rq(h), Rq(h)),
            None => enc::alu_imm(&mut self.ops, enc::Alu::Cmp, R13, toff(t), 0),
        }
    }

    /// Caller-saved registers holding temps that live across the current op.
    fn live_volatile(&self) -> Vec<(Temp, u8)> {
        let i = self.cur;
        self.volatile
            .iter()
            .filter(|v| v.start < i && i < v.end)
            .map(|v| (v.temp, v.reg))
            .collect()
    }

    fn imm(&mut self, r: u8, v: u64) {
        if v <= u32::MAX as u64 {
            dynasm!(self.ops ; .arch x64 ; mov Rd(r), v as u32 as i32);
        } else {
            dynasm!(self.ops ; .arch x64 ; mov Rq(r), QWORD v as i64);
        }
    }

    /// Loads `args` into `regs` in order, 0 into the registers left over, as one
    /// parallel move: an argument in a register another argument goes to is read
    /// before that register is written (a cycle goes through `rax`, which is never an
    /// argument register; two of them, `r8` and `r9`, can hold temps, so there is at
    /// most one cycle).
    fn args_or_zero(&mut self, regs: &[u8], args: &[Temp]) {
        // (destination, temp, the register it is read from if any)
        let mut moves: Vec<(u8, Temp, Option<u8>)> = regs
            .iter()
            .zip(args)
            .map(|(&r, &a)| (r, a, self.reg(a).filter(|_| self.k(a).is_none())))
            .collect();
        while !moves.is_empty() {
            let free = (0..moves.len()).find(|&i| {
                let d = moves[i].0;
                moves
                    .iter()
                    .enumerate()
                    .all(|(j, m)| j == i || m.2 != Some(d))
            });
            match free {
                Some(i) => {
                    let (d, t, src) = moves.remove(i);
                    match src {
                        Some(s) if s == d => {}
                        Some(s) => dynasm!(self.ops ; .arch x64 ; mov Rq(d), Rq(s)),
                        None => self.ld(d, t),
                    }
                }
                None => {
                    // Every destination is still to be read: park the first one's
                    // value in rax and read it from there.
                    let d = moves[0].0;
                    dynasm!(self.ops ; .arch x64 ; mov rax, Rq(d));
                    for m in moves.iter_mut().filter(|m| m.2 == Some(d)) {
                        m.2 = Some(RAX);
                    }
                }
            }
        }
        for &r in regs.iter().skip(args.len()) {
            dynasm!(self.ops ; .arch x64 ; xor Rd(r), Rd(r));
        }
    }

    /// `dst` = the direct global at `off` (from `r12`) extended from `from`.
    fn load_global_ext(&mut self, off: i32, dst: Temp, from: Size, signed: bool) {
        let d = self.reg(dst).unwrap_or(RAX);
        match (from, signed) {
            (Size::B8, false) => dynasm!(self.ops ; .arch x64 ; movzx Rd(d), BYTE [r12 + off]),
            (Size::B8, true) => dynasm!(self.ops ; .arch x64 ; movsx Rq(d), BYTE [r12 + off]),
            (Size::B16, false) => dynasm!(self.ops ; .arch x64 ; movzx Rd(d), WORD [r12 + off]),
            (Size::B16, true) => dynasm!(self.ops ; .arch x64 ; movsx Rq(d), WORD [r12 + off]),
            (Size::B32, false) => dynasm!(self.ops ; .arch x64 ; mov Rd(d), DWORD [r12 + off]),
            (Size::B32, true) => dynasm!(self.ops ; .arch x64 ; movsxd Rq(d), DWORD [r12 + off]),
            (Size::B64, _) => enc::load(&mut self.ops, d, R12, off),
        }
        self.st(dst, d);
    }

    /// Truncates register `r` to `size`, zero-extended.
    fn trunc(&mut self, r: u8, size: Size) {
        match size {
            Size::B8 => dynasm!(self.ops ; .arch x64 ; movzx Rd(r), Rb(r)),
            Size::B16 => dynasm!(self.ops ; .arch x64 ; movzx Rd(r), Rw(r)),
            Size::B32 => dynasm!(self.ops ; .arch x64 ; mov Rd(r), Rd(r)),
            Size::B64 => {}
        }
    }

    /// Sign-extends the low `size` bits of register `r` to 64.
    fn sext(&mut self, r: u8, size: Size) {
        match size {
            Size::B8 => dynasm!(self.ops ; .arch x64 ; movsx Rq(r), Rb(r)),
            Size::B16 => dynasm!(self.ops ; .arch x64 ; movsx Rq(r), Rw(r)),
            Size::B32 => dynasm!(self.ops ; .arch x64 ; movsxd Rq(r), Rd(r)),
            Size::B64 => {}
        }
    }

    /// Calls `f` (an `extern "C"` function; arguments already in place), keeping
    /// the temps that live in caller-saved registers across it (in their slots).
    fn call(&mut self, f: usize) {
        self.call_with(|ops| {
            dynasm!(ops
                ; .arch x64
                ; mov rax, QWORD f as i64
                ; call rax
            )
        });
    }

    /// Calls trampoline `t` through the context's table (three bytes), as
    /// [`Gen::call`].
    fn call_tramp(&mut self, t: tramp::Tramp) {
        self.call_tramp_after(t, |_| {});
    }

    /// Calls trampoline `t` once `setup` has put its arguments in place, with the
    /// temps that live in caller-saved registers across the call saved before the
    /// setup (its moves into `r8`/`r9` may overwrite them) and reloaded after.
    fn call_tramp_after(&mut self, t: tramp::Tramp, setup: impl FnOnce(&mut Self)) {
        let live = self.save_volatile();
        setup(self);
        enc::call_mem(&mut self.ops, RBX, tramp_off(t));
        self.restore_volatile(&live);
    }

    fn call_with(&mut self, emit: impl FnOnce(&mut Asm)) {
        let live = self.save_volatile();
        emit(&mut self.ops);
        self.restore_volatile(&live);
    }

    /// Stores the temps that live in caller-saved registers across the current op
    /// in their slots (before a call, or before argument moves that may overwrite
    /// them); returns them for [`Gen::restore_volatile`].
    fn save_volatile(&mut self) -> Vec<(Temp, u8)> {
        let live = self.live_volatile();
        for &(t, r) in &live {
            enc::store(&mut self.ops, R13, toff(t), r);
        }
        live
    }

    fn restore_volatile(&mut self, live: &[(Temp, u8)]) {
        for &(t, r) in live {
            enc::load(&mut self.ops, r, R13, toff(t));
        }
    }

    /// `dst = a & mask` read only by the comparison with zero after it: nothing
    /// computed, the comparison is a `test` ([`Gen::test_of`]).
    fn fuse_test(&mut self, size: Size, dst: Temp, a: Temp, b: Temp) -> bool {
        let (Some(mask), None) = (self.k32(b), self.k(a)) else {
            return false;
        };
        // The comparison next (constants before it emit nothing).
        let next = self.block.ops[self.cur + 1..]
            .iter()
            .find(|o| !matches!(o, Op::Const { dst, .. } if self.k(*dst).is_some()));
        let Some(&Op::SetCond {
            cond: Cond::Eq | Cond::Ne,
            size: s,
            a: x,
            b: z,
            ..
        }) = next
        else {
            return false;
        };
        if x != dst || z == dst || self.k(z) != Some(0) || !self.read_once(dst) {
            return false;
        }
        // The bits the comparison sees: 64 only if both widths are.
        let wide = match (size, s) {
            (Size::B64, Size::B64) => true,
            (Size::B32 | Size::B64, Size::B32 | Size::B64) => false,
            _ => return false,
        };
        self.test_of = Some(TestOf {
            dst,
            src: a,
            mask,
            wide,
        });
        true
    }

    /// Whether the block reads temp `t` exactly once.
    fn read_once(&self, t: Temp) -> bool {
        self.uses.get(t.0 as usize) == Some(&1)
    }

    /// Sets the host flags from `a` compared with `b` at width `size` (`a` from its
    /// register or `rax`, `b` as an immediate, a register or `rcx`).
    fn compare(&mut self, size: Size, a: Temp, b: Temp) {
        if let Some(t) = self.test_of.take() {
            if t.dst == a {
                let r = match (self.reg(t.src), self.k(t.src)) {
                    (Some(r), None) => r,
                    _ => {
                        self.ld(RAX, t.src);
                        RAX
                    }
                };
                let v = t.mask;
                if t.wide {
                    dynasm!(self.ops ; .arch x64 ; test Rq(r), v);
                } else {
                    dynasm!(self.ops ; .arch x64 ; test Rd(r), v);
                }
                return;
            }
        }
        if self.k(b) == Some(0) && self.k(a).is_none() {
            if let Some(r) = self.reg(a) {
                // The same flags as `cmp r, 0`.
                match size {
                    Size::B8 => dynasm!(self.ops ; .arch x64 ; test Rb(r), Rb(r)),
                    Size::B16 => dynasm!(self.ops ; .arch x64 ; test Rw(r), Rw(r)),
                    Size::B32 => dynasm!(self.ops ; .arch x64 ; test Rd(r), Rd(r)),
                    Size::B64 => dynasm!(self.ops ; .arch x64 ; test Rq(r), Rq(r)),
                }
                return;
            }
        }
        let ra = match (self.reg(a), self.k(a)) {
            (Some(r), None) => r,
            _ => {
                self.ld(RAX, a);
                RAX
            }
        };
        let k8 = self.k32(b).and_then(|v| i8::try_from(v).ok());
        match (size, self.k32(b), self.k(b)) {
            (Size::B32 | Size::B64, Some(_), _) if let Some(v) = k8 => {
                enc::cmp_reg_imm8(&mut self.ops, size == Size::B64, ra, v)
            }
            (Size::B32, Some(v), _) => dynasm!(self.ops ; .arch x64 ; cmp Rd(ra), v),
            (Size::B64, Some(v), _) => dynasm!(self.ops ; .arch x64 ; cmp Rq(ra), v),
            // The constant truncated to the width, as the comparison sees it.
            (Size::B8, _, Some(v)) => dynasm!(self.ops ; .arch x64 ; cmp Rb(ra), v as u8 as i8),
            (Size::B16, _, Some(v)) => {
                dynasm!(self.ops ; .arch x64 ; cmp Rw(ra), v as u16 as i16)
            }
            _ => {
                let rb = match (self.reg(b), self.k(b)) {
                    (Some(r), None) => r,
                    _ => {
                        self.ld(RCX, b);
                        RCX
                    }
                };
                match size {
                    Size::B8 => dynasm!(self.ops ; .arch x64 ; cmp Rb(ra), Rb(rb)),
                    Size::B16 => dynasm!(self.ops ; .arch x64 ; cmp Rw(ra), Rw(rb)),
                    Size::B32 => dynasm!(self.ops ; .arch x64 ; cmp Rd(ra), Rd(rb)),
                    Size::B64 => dynasm!(self.ops ; .arch x64 ; cmp Rq(ra), Rq(rb)),
                }
            }
        }
    }

    /// Jumps to `l` if `cond` holds for the last comparison.
    fn jcc(&mut self, cond: Cond, l: DynamicLabel) {
        match cond {
            Cond::Eq => dynasm!(self.ops ; .arch x64 ; je =>l),
            Cond::Ne => dynasm!(self.ops ; .arch x64 ; jne =>l),
            Cond::Ltu => dynasm!(self.ops ; .arch x64 ; jb =>l),
            Cond::Leu => dynasm!(self.ops ; .arch x64 ; jbe =>l),
            Cond::Gtu => dynasm!(self.ops ; .arch x64 ; ja =>l),
            Cond::Geu => dynasm!(self.ops ; .arch x64 ; jae =>l),
            Cond::Lt => dynasm!(self.ops ; .arch x64 ; jl =>l),
            Cond::Le => dynasm!(self.ops ; .arch x64 ; jle =>l),
            Cond::Gt => dynasm!(self.ops ; .arch x64 ; jg =>l),
            Cond::Ge => dynasm!(self.ops ; .arch x64 ; jge =>l),
        }
    }

    /// `d = s` if `cond` holds (of the host flags).
    fn cmov(&mut self, cond: Cond, d: u8, s: u8) {
        match cond {
            Cond::Eq => dynasm!(self.ops ; .arch x64 ; cmove Rq(d), Rq(s)),
            Cond::Ne => dynasm!(self.ops ; .arch x64 ; cmovne Rq(d), Rq(s)),
            Cond::Ltu => dynasm!(self.ops ; .arch x64 ; cmovb Rq(d), Rq(s)),
            Cond::Leu => dynasm!(self.ops ; .arch x64 ; cmovbe Rq(d), Rq(s)),
            Cond::Gtu => dynasm!(self.ops ; .arch x64 ; cmova Rq(d), Rq(s)),
            Cond::Geu => dynasm!(self.ops ; .arch x64 ; cmovae Rq(d), Rq(s)),
            Cond::Lt => dynasm!(self.ops ; .arch x64 ; cmovl Rq(d), Rq(s)),
            Cond::Le => dynasm!(self.ops ; .arch x64 ; cmovle Rq(d), Rq(s)),
            Cond::Gt => dynasm!(self.ops ; .arch x64 ; cmovg Rq(d), Rq(s)),
            Cond::Ge => dynasm!(self.ops ; .arch x64 ; cmovge Rq(d), Rq(s)),
        }
    }

    /// Leaves through the fault path unless the status in `rax` is OK.
    fn check_status(&mut self) {
        let fault = self.fault;
        dynasm!(self.ops
            ; .arch x64
            ; test rax, rax
            ; jnz =>fault
        );
    }

    fn op<E: GuestEnv + DirectGlobals>(&mut self, op: &Op) -> Result<(), JitError> {
        match *op {
            Op::InsnStart { pc, .. } => self.insn_start::<E>(pc),
            Op::Const { dst, value } => {
                if self.k(dst).is_some() {
                    // Its uses take the value.
                } else if let Some(h) = self.reg(dst) {
                    self.imm(h, value);
                } else if let Ok(v) = i32::try_from(value as i64) {
                    enc::store_imm(&mut self.ops, R13, toff(dst), v);
                } else {
                    self.imm(RAX, value);
                    self.st(dst, RAX);
                }
            }
            Op::Mov { dst, src } => {
                let d = self.reg(dst).unwrap_or(RAX);
                self.ld(d, src);
                self.st(dst, d);
            }
            Op::Get { dst, src } => {
                let next = self.block.ops.get(self.cur + 1);
                if let (
                    Some(off),
                    Some(&Op::Ext {
                        dst: x,
                        src: s,
                        from,
                        signed,
                    }),
                ) = (direct::<E>(src), next)
                {
                    if s == dst && self.read_once(dst) {
                        // Read only by the extension after it: one load at the width.
                        self.load_global_ext(off, x, from, signed);
                        self.skip = self.cur + 1..self.cur + 2;
                        return Ok(());
                    }
                }
                match (direct::<E>(src), self.reg(dst)) {
                    (Some(off), Some(h)) => {
                        enc::load(&mut self.ops, h, R12, off);
                        return Ok(());
                    }
                    (Some(off), None) => enc::load(&mut self.ops, RAX, R12, off),
                    (None, _) => {
                        self.sync::<E>();
                        let g = tramp::pack_global(src) as i32;
                        dynasm!(self.ops ; .arch x64 ; mov rdi, rbx ; mov esi, g);
                        self.call_tramp(tramp::Tramp::Get);
                        self.check_status();
                        dynasm!(self.ops ; .arch x64 ; mov rax, rdx);
                    }
                }
                self.st(dst, RAX);
            }
            // The PC of a `Jump` that chains directly: stored only on the paths that
            // return to the run loop.
            Op::Set {
                dst: Global::Pc,
                src,
            } if matches!(
                (self.k(src), self.block.ops.get(self.cur + 1)),
                (Some(v), Some(&Op::Exit(ExitKind::Jump(t)))) if v == t && self.chains_directly::<E>(t)
            ) =>
            {
                self.pc_later = self.k(src);
            }
            // Left to the slow paths of the accesses before the next store.
            Op::Set { .. } if self.lazy.lazy.get(self.cur) == Some(&true) => {}
            Op::Set { dst, src } => match direct::<E>(dst) {
                Some(off) => self.store_global(off, src),
                None => {
                    self.sync::<E>();
                    let g = tramp::pack_global(dst) as i32;
                    self.ld(RDX, src);
                    dynasm!(self.ops ; .arch x64 ; mov rdi, rbx ; mov esi, g);
                    self.call_tramp(tramp::Tramp::Set);
                    self.check_status();
                }
            },
            Op::Bin {
                op,
                size,
                dst,
                a,
                b,
            } => {
                if op == BinOp::And && self.fuse_test(size, dst, a, b) {
                    return Ok(());
                }
                if op == BinOp::Shl && self.fuse_scaled_lea(size, dst, a, b) {
                    return Ok(());
                }
                if !self.bin_in_place(op, size, dst, a, b) {
                    self.ld(RAX, a);
                    self.ld(RCX, b);
                    self.bin(op, size);
                    self.st(dst, RAX);
                }
            }
            Op::Un {
                op: op @ (UnOp::Not | UnOp::Neg),
                size,
                dst,
                a,
            } => {
                // In the result's register when it has one.
                let d = self.reg(dst).unwrap_or(RAX);
                self.ld(d, a);
                if op == UnOp::Not {
                    dynasm!(self.ops ; .arch x64 ; not Rq(d));
                } else {
                    dynasm!(self.ops ; .arch x64 ; neg Rq(d));
                }
                self.trunc(d, size);
                self.st(dst, d);
            }
            Op::Un { op, size, dst, a } => {
                self.ld(RAX, a);
                self.un(op, size)?;
                self.st(dst, RAX);
            }
            Op::Ext {
                dst,
                src,
                from,
                signed,
            } => {
                let d = self.reg(dst).unwrap_or(RAX);
                match (signed, from, self.reg(src)) {
                    (false, Size::B32, Some(s)) => {
                        dynasm!(self.ops ; .arch x64 ; mov Rd(d), Rd(s));
                    }
                    _ => {
                        self.ld(d, src);
                        if signed {
                            self.sext(d, from);
                        } else {
                            self.trunc(d, from);
                        }
                    }
                }
                self.st(dst, d);
            }
            Op::SetCond {
                cond,
                size,
                dst,
                a,
                b,
            } => {
                // A comparison only the branch right after it reads: compare and
                // branch (the branch's bookkeeping first, it may touch the flags).
                let branch = match self.block.ops.get(self.cur + 1) {
                    Some(&Op::BrIf { cond: c, target }) if c == dst && self.read_once(dst) => {
                        let n = target.0;
                        let l = self.label(n)?;
                        Some((l, self.book_for_branch::<E>(n, self.cur + 1, true)))
                    }
                    _ => None,
                };
                // A comparison only the select right after it reads: compare, and the
                // select moves on the flags.
                if let Some(&Op::Select { cond: c, .. }) = self.block.ops.get(self.cur + 1) {
                    if c == dst && self.read_once(dst) {
                        self.compare(size, a, b);
                        self.select_on = Some(cond);
                        return Ok(());
                    }
                }
                self.compare(size, a, b);
                if let Some((l, how)) = branch {
                    match how {
                        Branch::Cold(c) => self.jcc(cond.invert(), c),
                        _ => self.jcc(cond, l),
                    }
                    self.fused = true;
                    return Ok(());
                }
                // In the result's register when it has one.
                let d = self.reg(dst).unwrap_or(RAX);
                match cond {
                    Cond::Eq => dynasm!(self.ops ; .arch x64 ; sete Rb(d)),
                    Cond::Ne => dynasm!(self.ops ; .arch x64 ; setne Rb(d)),
                    Cond::Ltu => dynasm!(self.ops ; .arch x64 ; setb Rb(d)),
                    Cond::Leu => dynasm!(self.ops ; .arch x64 ; setbe Rb(d)),
                    Cond::Gtu => dynasm!(self.ops ; .arch x64 ; seta Rb(d)),
                    Cond::Geu => dynasm!(self.ops ; .arch x64 ; setae Rb(d)),
                    Cond::Lt => dynasm!(self.ops ; .arch x64 ; setl Rb(d)),
                    Cond::Le => dynasm!(self.ops ; .arch x64 ; setle Rb(d)),
                    Cond::Gt => dynasm!(self.ops ; .arch x64 ; setg Rb(d)),
                    Cond::Ge => dynasm!(self.ops ; .arch x64 ; setge Rb(d)),
                }
                dynasm!(self.ops ; .arch x64 ; movzx Rd(d), Rb(d));
                self.st(dst, d);
            }
            Op::Select { dst, a, b, .. } if let Some(c) = self.select_on.take() => {
                // Register moves leave the flags of the comparison before alone.
                self.ld(RAX, b);
                self.ld(RCX, a);
                self.cmov(c, RAX, RCX);
                self.st(dst, RAX);
            }
            Op::Select { dst, cond, a, b } => {
                self.ld(RAX, a);
                self.ld(RCX, b);
                self.test_zero(cond);
                dynasm!(self.ops ; .arch x64 ; cmove rax, rcx);
                self.st(dst, RAX);
            }
            Op::Load {
                dst,
                addr,
                size,
                signed,
                mmu,
                write,
            } => self.load::<E>(dst, addr, size, signed, mmu, write),
            Op::Store {
                addr,
                val,
                size,
                mmu,
            } => {
                let reuse = self.reuse.take() == Some(self.cur);
                if !reuse && size == Size::B64 && self.store_pair::<E>(addr, val, mmu) {
                    return Ok(());
                }
                self.store::<E>(addr, val, size, mmu, reuse)
            }
            Op::Label(l) => {
                // Every path reaches the label with the counters up to date, and
                // with the PC stored if the code after it may want it (the PC
                // depends on the path).
                let n = l.0;
                let l = self.label(n)?;
                if let Some(b) = self.at_branch.get(n as usize).copied().flatten() {
                    // Only its branch comes here (the op before cannot fall through).
                    dynasm!(self.ops ; .arch x64 ; =>l);
                    self.book = b;
                    return Ok(());
                }
                self.flush::<E>();
                self.pc_for_label::<E>(n);
                dynasm!(self.ops ; .arch x64 ; =>l);
                self.book.pc_synced = self.label_wants_pc(n);
                // Pending here if it is on the way in or a way to here.
                self.book.may_stop |= self.label_stop.get(n as usize).copied().unwrap_or(true);
            }
            Op::Br(l) => {
                let n = l.0;
                let l = self.label(n)?;
                if let Branch::ToLabel = self.book_for_branch::<E>(n, self.cur, false) {
                    dynasm!(self.ops ; .arch x64 ; jmp =>l);
                }
            }
            Op::BrIf { .. } if std::mem::take(&mut self.fused) => {}
            Op::BrIf { cond, target } => {
                let n = target.0;
                let l = self.label(n)?;
                let how = self.book_for_branch::<E>(n, self.cur, true);
                self.test_zero(cond);
                match how {
                    Branch::Cold(c) => dynasm!(self.ops ; .arch x64 ; je =>c),
                    _ => dynasm!(self.ops ; .arch x64 ; jne =>l),
                }
            }
            Op::Call {
                helper,
                ref args,
                ret,
                effects,
            } => match call_kind::<E>(helper, args, effects) {
                CallKind::Pure(f) => {
                    // A plain function of its arguments: called directly (nothing to
                    // sync, it cannot fault or ask to stop).
                    self.args_or_zero(&[RDI, RSI, RDX, RCX], args);
                    self.call(f as usize);
                    if let Some(r) = ret {
                        self.st(r, RAX);
                    }
                }
                CallKind::Env(f) => {
                    // A plain function on the environment that cannot fault or ask to
                    // stop: no sync, no status.
                    let f = f as usize as i64;
                    self.call_tramp_after(tramp::Tramp::Env, |g| {
                        g.args_or_zero(&[RDX, RCX, R8], args);
                        dynasm!(g.ops ; .arch x64 ; mov rdi, rbx ; mov rsi, QWORD f);
                    });
                    if let Some(r) = ret {
                        self.st(r, RAX);
                    }
                }
                CallKind::General => {
                    // Arguments 1-4 of the helper go to rdx, rcx, r8, r9.
                    const ARG_REGS: [u8; 4] = [RDX, RCX, R8, R9];
                    self.sync::<E>();
                    let n = args.len().min(4);
                    let hn = u64::from(helper.0) | (n as u64) << 16;
                    self.call_tramp_after(tramp::Tramp::Call, |g| {
                        g.args_or_zero(&ARG_REGS[..n], &args[..n]);
                        dynasm!(g.ops ; .arch x64 ; mov rdi, rbx ; mov esi, hn as i32);
                    });
                    self.check_status();
                    if let Some(r) = ret {
                        self.st(r, RDX);
                    }
                }
            },
            Op::Raise { vector, error } => {
                // (Values left to the slow paths that this way out needs.)
                self.store_lazy::<E>(self.cur);
                self.sync::<E>();
                match error {
                    Some(e) => {
                        self.ld(RCX, e);
                        dynasm!(self.ops ; .arch x64 ; mov edx, 1);
                    }
                    None => dynasm!(self.ops ; .arch x64 ; xor edx, edx ; xor ecx, ecx),
                }
                let fault = self.fault;
                dynasm!(self.ops ; .arch x64 ; mov rdi, rbx ; mov esi, i32::from(vector));
                self.call_tramp(tramp::Tramp::Raise);
                dynasm!(self.ops ; .arch x64 ; jmp =>fault);
            }
            Op::Exit(kind) => {
                self.store_lazy::<E>(self.cur);
                self.exit::<E>(kind);
            }
        }
        Ok(())
    }

    /// Stores temp `src` to the direct global at `off` (clobbers `rax`).
    fn store_global(&mut self, off: i32, src: Temp) {
        if let Some(v) = self.k32(src) {
            enc::store_imm(&mut self.ops, R12, off, v);
        } else if let Some(h) = self.reg(src) {
            enc::store(&mut self.ops, R12, off, h);
        } else {
            self.ld(RAX, src);
            enc::store(&mut self.ops, R12, off, RAX);
        }
    }

    /// Before the access at op `at` calls into the environment, or the way out of
    /// the block at `at` leaves: the lazy `Set`s pending there, stored (clobbers
    /// `rax`).
    fn store_lazy<E: DirectGlobals>(&mut self, at: usize) {
        let from = self.lazy.pending.partition_point(|&(a, _)| a < at);
        for k in from..self.lazy.pending.len() {
            let (a, i) = self.lazy.pending[k];
            if a != at {
                break;
            }
            if let Some(&Op::Set { dst, src }) = self.block.ops.get(i) {
                if let Some(off) = direct::<E>(dst) {
                    self.store_global(off, src);
                }
            }
        }
    }

    /// The stop exits of the block's instruction boundaries.
    fn stop_exits<E: GuestEnv + DirectGlobals>(&mut self) {
        let epilogue = self.epilogue;
        for s in std::mem::take(&mut self.stop_stubs) {
            let entry = s.entry;
            dynasm!(self.ops ; .arch x64 ; =>entry);
            self.count::<E>(s.pending, true);
            self.store_imm(RBX, CTX_PC, s.pc);
            dynasm!(self.ops
                ; .arch x64
                ; mov eax, RET_STOP as i32
                ; jmp =>epilogue
            );
        }
    }

    /// Adds (`add`) or takes back `n` instructions from the environment's counter
    /// (with the hooks, the run's count is the counter's difference).
    fn count<E: GuestEnv + DirectGlobals>(&mut self, n: u32, add: bool) {
        let Some(h) = hooks::<E>() else {
            return;
        };
        if n == 0 {
            return;
        }
        let op = if add { enc::Alu::Add } else { enc::Alu::Sub };
        enc::alu_imm(&mut self.ops, op, R12, h.counter, n as i32);
    }

    /// Stores `v` to the `u64` at `off` from register `base` (`r12`: the
    /// environment, `rbx`: the context); one instruction when `v` is a sign-extended
    /// 32-bit immediate, else through `rax`.
    fn store_imm(&mut self, base: u8, off: i32, v: u64) {
        match i32::try_from(v as i64) {
            Ok(k) => enc::store_imm(&mut self.ops, base, off, k),
            Err(_) => {
                self.imm(RAX, v);
                enc::store(&mut self.ops, base, off, RAX);
            }
        }
    }

    /// Before a branch to (or the fall-through into) label `l`: the PC up to date if
    /// the code after the label may want it.
    fn pc_for_label<E: GuestEnv + DirectGlobals>(&mut self, l: u32) {
        if self.label_wants_pc(l) {
            self.sync_pc::<E>();
        }
    }

    /// Before the branch at op `at` to label `l`: the label takes the bookkeeping as
    /// it is if the branch is its only way in, else the counters are brought up to
    /// date (and the PC stored if the code after the label may want it).
    ///
    /// The ops such a branch skips (up to its label) leave the straight line: a
    /// conditional branch's go out of line ([`Branch::Cold`]: the caller jumps there
    /// on the opposite condition and falls through to the label), an unconditional
    /// one's are not compiled at all ([`Branch::Over`]) unless a label lies among
    /// them.
    fn book_for_branch<E: GuestEnv + DirectGlobals>(
        &mut self,
        l: u32,
        at: usize,
        conditional: bool,
    ) -> Branch {
        let li = l as usize;
        if self.only.get(li).copied().flatten() == Some(at) && li < self.at_branch.len() {
            self.at_branch[li] = Some(self.book);
            let to = self.label_pos.get(li).copied().unwrap_or(0);
            let Some(skipped) = self.block.ops.get(at + 1..to) else {
                return Branch::ToLabel;
            };
            let labels = skipped.iter().any(|o| matches!(o, Op::Label(_)));
            if !conditional && !labels {
                self.skip = at + 1..to;
                return Branch::Over;
            }
            let straight = !skipped.is_empty()
                && !skipped.iter().any(|o| {
                    matches!(
                        o,
                        Op::Label(_) | Op::Br(_) | Op::BrIf { .. } | Op::InsnStart { .. }
                    )
                });
            if conditional && straight {
                let entry = self.ops.new_dynamic_label();
                self.cold.push(Cold {
                    entry,
                    ops: at + 1..to,
                    book: self.book,
                });
                self.skip = at + 1..to;
                return Branch::Cold(entry);
            }
            return Branch::ToLabel;
        }
        self.flush::<E>();
        self.pc_for_label::<E>(l);
        if let Some(s) = self.label_stop.get_mut(li) {
            *s |= self.book.may_stop;
        }
        Branch::ToLabel
    }

    /// The skipped ops of the branches compiled as [`Branch::Cold`], out of line,
    /// each with the bookkeeping of its branch.
    fn cold_paths<E: GuestEnv + DirectGlobals>(&mut self) -> Result<(), JitError> {
        for c in std::mem::take(&mut self.cold) {
            let entry = c.entry;
            dynasm!(self.ops ; .arch x64 ; =>entry);
            self.book = c.book;
            // (The main pass's last skip is over; a store pair here skips its
            // second op.)
            self.skip = 0..0;
            for i in c.ops {
                if self.skip.contains(&i) {
                    continue;
                }
                self.cur = i;
                let block = self.block;
                self.op::<E>(&block.ops[i])?;
            }
        }
        Ok(())
    }

    /// Whether code after label `l` may want the PC ([`Gen::label_needs_pc`]; an
    /// unknown label is taken to).
    fn label_wants_pc(&self, l: u32) -> bool {
        self.label_needs_pc.get(l as usize).copied().unwrap_or(true)
    }

    /// The current instruction's PC in `[rsp]` and the `pc` hook.
    fn sync_pc<E: GuestEnv + DirectGlobals>(&mut self) {
        if self.book.pc_synced {
            return;
        }
        if let Some(h) = hooks::<E>() {
            self.store_imm(R12, h.pc, self.book.pc);
        }
        self.book.pc_synced = true;
    }

    /// Brings the instruction counters up to date.
    fn flush<E: GuestEnv + DirectGlobals>(&mut self) {
        let n = self.book.pending;
        self.count::<E>(n, true);
        self.book.pending = 0;
    }

    /// Before code that can fault or call into the environment: counters and PC
    /// up to date; the stop request may be raised from here on.
    fn sync<E: GuestEnv + DirectGlobals>(&mut self) {
        self.flush::<E>();
        self.sync_pc::<E>();
        self.book.may_stop = true;
    }

    fn label(&self, l: u32) -> Result<DynamicLabel, JitError> {
        self.labels
            .get(l as usize)
            .copied()
            .ok_or_else(|| JitError::Unsupported(format!("label L{l} out of range")))
    }

    /// Goes to an out-of-line stop exit (counting `pending` more instructions, then
    /// stopping before `pc`) if the environment's stop request is set.
    pub(super) fn stop_check<E: DirectGlobals>(&mut self, pc: u64, pending: u32) {
        let Some(h) = hooks::<E>() else {
            return;
        };
        let entry = self.ops.new_dynamic_label();
        enc::cmp_byte(&mut self.ops, R12, h.stop, 0);
        dynasm!(self.ops ; .arch x64 ; jne =>entry);
        self.stop_stubs.push(StopStub { entry, pc, pending });
    }

    fn insn_start<E: GuestEnv + DirectGlobals>(&mut self, pc: u64) {
        let epilogue = self.epilogue;
        match hooks::<E>() {
            Some(_) => {
                if self.book.may_stop {
                    self.stop_check::<E>(pc, self.book.pending);
                    self.book.may_stop = false;
                }
                self.book.pending += 1;
                self.book.pc = pc;
                self.book.pc_synced = false;
            }
            None => {
                self.book.pc = pc;
                self.book.pc_synced = true;
                self.imm(RSI, pc);
                dynasm!(self.ops ; .arch x64 ; mov [rsp], rsi ; mov rdi, rbx);
                self.call_tramp(tramp::Tramp::Insn);
                let fault = self.fault;
                dynasm!(self.ops
                    ; .arch x64
                    ; test rax, rax
                    ; jz >go
                    ; cmp rax, tramp::ST_STOP as i32
                    ; jne =>fault
                    ; mov eax, RET_STOP as i32
                    ; jmp =>epilogue
                    ; go:
                );
            }
        }
    }

    /// `dst = a op b` computed in `dst`'s register (or `rax`) with the second
    /// operand as an immediate, a register or memory, for the common 32- and 64-bit
    /// operations (a 32-bit operation zero-extends by itself); `false` (nothing
    /// emitted) for the others.
    fn bin_in_place(&mut self, op: BinOp, size: Size, dst: Temp, a: Temp, b: Temp) -> bool {
        use BinOp::*;
        // 8 and 16 bits: the 32-bit operation, truncated (the low bits of a sum,
        // difference, product or bitwise result depend on the operands' low bits
        // only; not so for shifts).
        let (wide, narrow) = match size {
            Size::B32 => (false, false),
            Size::B64 => (true, false),
            Size::B8 | Size::B16 => (false, true),
        };
        let kb = self.k(b);
        let shift = matches!(op, Shl | Shr | Sar | Rol | Ror);
        if !(matches!(op, Add | Sub | And | Or | Xor | Mul) || (shift && kb.is_some() && !narrow)) {
            return false;
        }
        let mut d = self.reg(dst).unwrap_or(RAX);
        let (mut a, mut b) = (a, b);
        let commutes = matches!(op, Add | And | Or | Xor | Mul);
        // A constant first operand goes second (as an immediate).
        if commutes && self.k(a).is_some() && self.k(b).is_none() {
            (a, b) = (b, a);
        }
        // A register plus a constant into another register: one `lea`.
        if let (Add, Some(v), Some(ra), None) = (op, self.imm_of(b, wide), self.reg(a), self.k(a)) {
            if ra != d {
                enc::lea_sized(&mut self.ops, wide, d, ra, v);
                if narrow {
                    self.trunc(d, size);
                }
                self.st(dst, d);
                return true;
            }
        }
        // Two registers into a third: one `lea`.
        if let (Add, Some(ra), Some(rb), None, None) =
            (op, self.reg(a), self.reg(b), self.k(a), self.k(b))
        {
            if ra != d && rb != d {
                enc::lea_index(&mut self.ops, wide, d, Some(ra), rb, 0, 0);
                if narrow {
                    self.trunc(d, size);
                }
                self.st(dst, d);
                return true;
            }
        }
        // `b` in `d` would be overwritten by `a` first: take the operands the other
        // way round if the operation allows, else compute in `rax`.
        if b != a && self.reg(b) == Some(d) && self.k(b).is_none() {
            if commutes {
                (a, b) = (b, a);
            } else {
                d = RAX;
            }
        }
        let kb = self.k(b);
        self.ld(d, a);
        if shift {
            let n = (kb.unwrap_or(0) % u64::from(size.bits())) as i8;
            match (op, wide) {
                // (A count of 0 may leave the register unwritten.)
                (_, true) if n == 0 => {}
                (_, false) if n == 0 => dynasm!(self.ops ; .arch x64 ; mov Rd(d), Rd(d)),
                (Shl, true) => dynasm!(self.ops ; .arch x64 ; shl Rq(d), n),
                (Shr, true) => dynasm!(self.ops ; .arch x64 ; shr Rq(d), n),
                (Sar, true) => dynasm!(self.ops ; .arch x64 ; sar Rq(d), n),
                (Rol, true) => dynasm!(self.ops ; .arch x64 ; rol Rq(d), n),
                (Ror, true) => dynasm!(self.ops ; .arch x64 ; ror Rq(d), n),
                (Shl, false) => dynasm!(self.ops ; .arch x64 ; shl Rd(d), n),
                (Shr, false) => dynasm!(self.ops ; .arch x64 ; shr Rd(d), n),
                (Sar, false) => dynasm!(self.ops ; .arch x64 ; sar Rd(d), n),
                (Rol, false) => dynasm!(self.ops ; .arch x64 ; rol Rd(d), n),
                (_, false) => dynasm!(self.ops ; .arch x64 ; ror Rd(d), n),
                _ => unreachable!("shifts only"),
            }
        } else if let Some(v) = self.imm_of(b, wide).and_then(|v| i8::try_from(v).ok()) {
            // An immediate that fits a byte: the short forms.
            match (op, wide) {
                (Add, true) => dynasm!(self.ops ; .arch x64 ; add Rq(d), BYTE v),
                (Sub, true) => dynasm!(self.ops ; .arch x64 ; sub Rq(d), BYTE v),
                (And, true) => dynasm!(self.ops ; .arch x64 ; and Rq(d), BYTE v),
                (Or, true) => dynasm!(self.ops ; .arch x64 ; or Rq(d), BYTE v),
                (Xor, true) => dynasm!(self.ops ; .arch x64 ; xor Rq(d), BYTE v),
                (Mul, true) => dynasm!(self.ops ; .arch x64 ; imul Rq(d), Rq(d), BYTE v),
                (Add, false) => dynasm!(self.ops ; .arch x64 ; add Rd(d), BYTE v),
                (Sub, false) => dynasm!(self.ops ; .arch x64 ; sub Rd(d), BYTE v),
                (And, false) => dynasm!(self.ops ; .arch x64 ; and Rd(d), BYTE v),
                (Or, false) => dynasm!(self.ops ; .arch x64 ; or Rd(d), BYTE v),
                (Xor, false) => dynasm!(self.ops ; .arch x64 ; xor Rd(d), BYTE v),
                (_, false) => dynasm!(self.ops ; .arch x64 ; imul Rd(d), Rd(d), BYTE v),
                _ => unreachable!("ALU operations only"),
            }
        } else if let Some(v) = self.imm_of(b, wide) {
            match (op, wide) {
                (Add, true) => dynasm!(self.ops ; .arch x64 ; add Rq(d), v),
                (Sub, true) => dynasm!(self.ops ; .arch x64 ; sub Rq(d), v),
                (And, true) => dynasm!(self.ops ; .arch x64 ; and Rq(d), v),
                (Or, true) => dynasm!(self.ops ; .arch x64 ; or Rq(d), v),
                (Xor, true) => dynasm!(self.ops ; .arch x64 ; xor Rq(d), v),
                (Mul, true) => dynasm!(self.ops ; .arch x64 ; imul Rq(d), Rq(d), v),
                (Add, false) => dynasm!(self.ops ; .arch x64 ; add Rd(d), v),
                (Sub, false) => dynasm!(self.ops ; .arch x64 ; sub Rd(d), v),
                (And, false) => dynasm!(self.ops ; .arch x64 ; and Rd(d), v),
                (Or, false) => dynasm!(self.ops ; .arch x64 ; or Rd(d), v),
                (Xor, false) => dynasm!(self.ops ; .arch x64 ; xor Rd(d), v),
                (_, false) => dynasm!(self.ops ; .arch x64 ; imul Rd(d), Rd(d), v),
                _ => unreachable!("ALU operations only"),
            }
        } else {
            // The second operand from its register, or into rcx first.
            let r = match self.reg(b) {
                Some(r) if self.k(b).is_none() => r,
                _ => {
                    self.ld(RCX, b);
                    RCX
                }
            };
            match (op, wide) {
                (Add, true) => dynasm!(self.ops ; .arch x64 ; add Rq(d), Rq(r)),
                (Sub, true) => dynasm!(self.ops ; .arch x64 ; sub Rq(d), Rq(r)),
                (And, true) => dynasm!(self.ops ; .arch x64 ; and Rq(d), Rq(r)),
                (Or, true) => dynasm!(self.ops ; .arch x64 ; or Rq(d), Rq(r)),
                (Xor, true) => dynasm!(self.ops ; .arch x64 ; xor Rq(d), Rq(r)),
                (Mul, true) => dynasm!(self.ops ; .arch x64 ; imul Rq(d), Rq(r)),
                (Add, false) => dynasm!(self.ops ; .arch x64 ; add Rd(d), Rd(r)),
                (Sub, false) => dynasm!(self.ops ; .arch x64 ; sub Rd(d), Rd(r)),
                (And, false) => dynasm!(self.ops ; .arch x64 ; and Rd(d), Rd(r)),
                (Or, false) => dynasm!(self.ops ; .arch x64 ; or Rd(d), Rd(r)),
                (Xor, false) => dynasm!(self.ops ; .arch x64 ; xor Rd(d), Rd(r)),
                (_, false) => dynasm!(self.ops ; .arch x64 ; imul Rd(d), Rd(r)),
                _ => unreachable!("ALU operations only"),
            }
        }
        if narrow {
            self.trunc(d, size);
        }
        self.st(dst, d);
        true
    }

    /// A shift left by 1-3 read only by the addition after it (of a register or a
    /// constant), with a constant addition and a 32-bit zero extension after that
    /// taken along when they only read the sum: one `lea` (an address
    /// `[base + index * scale + disp]`, or x86's `lea` itself). `false` (nothing
    /// emitted) otherwise.
    fn fuse_scaled_lea(&mut self, size: Size, s: Temp, x: Temp, k: Temp) -> bool {
        use BinOp::Add;
        let (Some(k), Some(rx), None) = (self.k(k), self.reg(x), self.k(x)) else {
            return false;
        };
        if !(1..=3).contains(&k) || size.bytes() < 4 || !self.read_once(s) {
            return false;
        }
        let ops = &self.block.ops;
        let Some(&Op::Bin {
            op: Add,
            size: s2,
            mut dst,
            a,
            b,
        }) = ops.get(self.cur + 1)
        else {
            return false;
        };
        // A 64-bit sum of the 64-bit shift, or a 32-bit sum (of its low bits).
        let mut wide = match (size, s2) {
            (Size::B64, Size::B64) => true,
            (_, Size::B32) => false,
            _ => return false,
        };
        let other = match (a == s, b == s) {
            (true, false) => b,
            (false, true) => a,
            _ => return false,
        };
        let (base, mut disp) = match (self.reg(other), self.k(other)) {
            (_, Some(c)) => (None, c),
            (Some(r), None) => (Some(r), 0),
            _ => return false,
        };
        let mut end = self.cur + 2;
        if let Some(&Op::Bin {
            op: Add,
            size: s3,
            dst: d3,
            a,
            b,
        }) = ops.get(end)
        {
            let c = match (a == dst, b == dst) {
                (true, false) => self.k(b),
                (false, true) => self.k(a),
                _ => None,
            };
            if let (Some(c), true, true) = (c, s3 == s2, self.read_once(dst)) {
                disp = disp.wrapping_add(c);
                dst = d3;
                end += 1;
            }
        }
        if let Some(&Op::Ext {
            dst: d4,
            src,
            from: Size::B32,
            signed: false,
        }) = ops.get(end)
        {
            if src == dst && self.read_once(dst) {
                wide = false;
                dst = d4;
                end += 1;
            }
        }
        // The displacement: 32 bits sign-extended (a 32-bit sum wraps anyway).
        let disp = if wide {
            match i32::try_from(disp as i64) {
                Ok(d) => d,
                Err(_) => return false,
            }
        } else {
            disp as u32 as i32
        };
        let d = self.reg(dst).unwrap_or(RAX);
        enc::lea_index(&mut self.ops, wide, d, base, rx, k as u8, disp);
        self.st(dst, d);
        self.skip = self.cur + 1..end;
        true
    }

    /// `rax = rax op rcx` at `size`, zero-extended.
    fn bin(&mut self, op: BinOp, size: Size) {
        let bits = size.bits() as i32;
        match op {
            BinOp::Add => dynasm!(self.ops ; .arch x64 ; add rax, rcx),
            BinOp::Sub => dynasm!(self.ops ; .arch x64 ; sub rax, rcx),
            BinOp::And => dynasm!(self.ops ; .arch x64 ; and rax, rcx),
            BinOp::Or => dynasm!(self.ops ; .arch x64 ; or rax, rcx),
            BinOp::Xor => dynasm!(self.ops ; .arch x64 ; xor rax, rcx),
            BinOp::Mul => dynasm!(self.ops ; .arch x64 ; imul rax, rcx),
            BinOp::Shl | BinOp::Shr | BinOp::Sar => {
                // 32- and 64-bit shifts take the count modulo the width themselves.
                match size {
                    Size::B8 | Size::B16 => {
                        match op {
                            BinOp::Shr => self.trunc(RAX, size),
                            BinOp::Sar => self.sext(RAX, size),
                            _ => {}
                        }
                        dynasm!(self.ops ; .arch x64 ; and ecx, bits - 1);
                        match op {
                            BinOp::Shl => dynasm!(self.ops ; .arch x64 ; shl rax, cl),
                            BinOp::Shr => dynasm!(self.ops ; .arch x64 ; shr rax, cl),
                            _ => dynasm!(self.ops ; .arch x64 ; sar rax, cl),
                        }
                    }
                    Size::B32 => match op {
                        BinOp::Shl => dynasm!(self.ops ; .arch x64 ; shl eax, cl),
                        BinOp::Shr => dynasm!(self.ops ; .arch x64 ; shr eax, cl),
                        _ => dynasm!(self.ops ; .arch x64 ; sar eax, cl),
                    },
                    Size::B64 => match op {
                        BinOp::Shl => dynasm!(self.ops ; .arch x64 ; shl rax, cl),
                        BinOp::Shr => dynasm!(self.ops ; .arch x64 ; shr rax, cl),
                        _ => dynasm!(self.ops ; .arch x64 ; sar rax, cl),
                    },
                }
            }
            // Rotates at the operand width: the CPU takes the count modulo the width
            // (8- and 16-bit rotates: count & 31, then modulo the width).
            BinOp::Rol => match size {
                Size::B8 => dynasm!(self.ops ; .arch x64 ; rol al, cl),
                Size::B16 => dynasm!(self.ops ; .arch x64 ; rol ax, cl),
                Size::B32 => dynasm!(self.ops ; .arch x64 ; rol eax, cl),
                Size::B64 => dynasm!(self.ops ; .arch x64 ; rol rax, cl),
            },
            BinOp::Ror => match size {
                Size::B8 => dynasm!(self.ops ; .arch x64 ; ror al, cl),
                Size::B16 => dynasm!(self.ops ; .arch x64 ; ror ax, cl),
                Size::B32 => dynasm!(self.ops ; .arch x64 ; ror eax, cl),
                Size::B64 => dynasm!(self.ops ; .arch x64 ; ror rax, cl),
            },
            BinOp::MulHiU => {
                if size == Size::B64 {
                    dynasm!(self.ops ; .arch x64 ; mul rcx ; mov rax, rdx);
                } else {
                    // The product of two values of at most 32 bits fits 64 bits.
                    self.trunc(RAX, size);
                    self.trunc(RCX, size);
                    dynasm!(self.ops ; .arch x64 ; imul rax, rcx ; shr rax, bits as i8);
                }
            }
            BinOp::MulHiS => {
                if size == Size::B64 {
                    dynasm!(self.ops ; .arch x64 ; imul rcx ; mov rax, rdx);
                } else {
                    self.sext(RAX, size);
                    self.sext(RCX, size);
                    dynasm!(self.ops ; .arch x64 ; imul rax, rcx ; sar rax, bits as i8);
                }
            }
            BinOp::DivU | BinOp::RemU => {
                self.trunc(RAX, size);
                self.trunc(RCX, size);
                dynasm!(self.ops
                    ; .arch x64
                    ; test rcx, rcx
                    ; jz >zero
                    ; xor edx, edx
                    ; div rcx
                );
                if op == BinOp::RemU {
                    dynasm!(self.ops ; .arch x64 ; mov rax, rdx);
                }
                dynasm!(self.ops
                    ; .arch x64
                    ; jmp >done
                    ; zero:
                    ; xor eax, eax
                    ; done:
                );
            }
            BinOp::DivS | BinOp::RemS => {
                // As `i64::checked_div`/`checked_rem` on the sign-extended values: a
                // zero divisor gives 0, and so does i64::MIN / -1 (which would trap).
                self.sext(RAX, size);
                self.sext(RCX, size);
                dynasm!(self.ops
                    ; .arch x64
                    ; test rcx, rcx
                    ; jz >zero
                    ; cmp rcx, -1
                    ; je >minus1
                    ; cqo
                    ; idiv rcx
                );
                if op == BinOp::RemS {
                    dynasm!(self.ops ; .arch x64 ; mov rax, rdx);
                }
                dynasm!(self.ops ; .arch x64 ; jmp >done ; minus1:);
                if op == BinOp::DivS {
                    // x / -1 = -x; i64::MIN overflows: 0. (x % -1 is always 0.)
                    dynasm!(self.ops ; .arch x64 ; neg rax ; jno >done);
                }
                dynasm!(self.ops
                    ; .arch x64
                    ; zero:
                    ; xor eax, eax
                    ; done:
                );
            }
        }
        self.trunc(RAX, size);
    }

    /// `rax = op rax` at `size`, zero-extended.
    fn un(&mut self, op: UnOp, size: Size) -> Result<(), JitError> {
        let bits = size.bits() as i32;
        match op {
            UnOp::Neg => dynasm!(self.ops ; .arch x64 ; neg rax),
            UnOp::Not => dynasm!(self.ops ; .arch x64 ; not rax),
            UnOp::Bswap => match size {
                // One byte swapped within itself.
                Size::B8 => {}
                Size::B16 => dynasm!(self.ops ; .arch x64 ; rol ax, 8),
                Size::B32 => dynasm!(self.ops ; .arch x64 ; bswap eax),
                Size::B64 => dynasm!(self.ops ; .arch x64 ; bswap rax),
            },
            UnOp::Popcnt => {
                if !self.popcnt {
                    return Err(JitError::Unsupported("popcnt (host CPU lacks it)".into()));
                }
                self.trunc(RAX, size);
                dynasm!(self.ops ; .arch x64 ; popcnt rax, rax);
            }
            UnOp::Ctz => {
                self.trunc(RAX, size);
                dynasm!(self.ops
                    ; .arch x64
                    ; mov ecx, bits
                    ; bsf rax, rax
                    ; cmovz rax, rcx
                );
            }
            UnOp::Clz => {
                // (bits - 1) - index of the highest set bit; index -1 for zero.
                self.trunc(RAX, size);
                dynasm!(self.ops
                    ; .arch x64
                    ; mov rcx, -1
                    ; bsr rax, rax
                    ; cmovz rax, rcx
                    ; neg rax
                    ; add rax, bits - 1
                );
            }
        }
        self.trunc(RAX, size);
        Ok(())
    }
}

pub(crate) const RSI: u8 = 6;
pub(crate) const RDI: u8 = 7;
const R8: u8 = 8;
const R9: u8 = 9;
const R11: u8 = 11;

/// The context displacement of trampoline `t`'s address.
fn tramp_off(t: tramp::Tramp) -> i32 {
    CTX_TRAMPS + 8 * t as i32
}

/// Where `r12` points: [`DirectGlobals::hot_offset`] bytes into the environment
/// (0 if that is not a small enough offset).
pub(crate) fn bias<E: DirectGlobals>() -> i32 {
    i32::try_from(E::hot_offset())
        .ok()
        .filter(|&b| b < 1 << 30)
        .unwrap_or(0)
}

/// The displacement from `r12` ([`bias`]) of the environment's byte `off`, if it
/// fits 32 bits.
pub(crate) fn env_off<E: DirectGlobals>(off: usize) -> Option<i32> {
    i32::try_from(off).ok()?.checked_sub(bias::<E>())
}

/// The displacement from `r12` of global `g`, if direct and addressable.
pub(crate) fn direct<E: DirectGlobals>(g: Global) -> Option<i32> {
    E::global_offset(g).and_then(env_off::<E>)
}

/// The displacements from `r12` of the instruction hooks, if the environment has
/// them and they are addressable.
pub(crate) fn hooks<E: DirectGlobals>() -> Option<Hooks> {
    let h = E::insn_hooks()?;
    Some(Hooks {
        stop: env_off::<E>(h.stop)?,
        pc: env_off::<E>(h.pc)?,
        counter: env_off::<E>(h.counter)?,
    })
}

/// The displacements from `r12` of the bools that must be false to chain: the stop
/// request first, then [`DirectGlobals::chain_guards`]; `None` (never chain)
/// without the hooks or if one is not addressable.
pub(crate) fn guards<E: DirectGlobals>() -> Option<Guards> {
    let h = hooks::<E>()?;
    let mut g = Guards {
        offs: [0; MAX_GUARDS],
        n: 0,
    };
    for off in std::iter::once(Some(h.stop)).chain(E::chain_guards().into_iter().map(env_off::<E>))
    {
        // More than fit: never chain (it is only slower).
        *g.offs.get_mut(g.n)? = off?;
        g.n += 1;
    }
    Some(g)
}

/// Most chain guards (the stop request included) chaining supports.
const MAX_GUARDS: usize = 8;

/// The displacements of [`guards`] (a copy costs nothing: the code generator asks
/// at every exit).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Guards {
    offs: [i32; MAX_GUARDS],
    n: usize,
}

impl Guards {
    pub(crate) fn as_slice(&self) -> &[i32] {
        &self.offs[..self.n]
    }
}

/// [`vireo_core::exec::InsnHooks`] as displacements from `r12`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Hooks {
    pub stop: i32,
    pub pc: i32,
    pub counter: i32,
}
