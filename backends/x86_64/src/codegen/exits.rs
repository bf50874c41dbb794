//! A block's ways out: its exits, the shared chaining code (slots, the
//! indirect-exit table, the run conditions) and returning to the run loop.

// dynasm's dynamic registers (`Rq(r)`) expand to `r.into()`.
#![allow(clippy::useless_conversion)]

use super::{
    direct, enc, env_off, exit_code, hooks, Gen, CELL_ENTRY, CELL_GUARDS, CELL_IC_CS,
    CELL_IC_ENTRY, CELL_IC_GUARD, CELL_IC_PC, CELL_LINKABLE, CELL_PAGE, CELL_SLOTS, CTX_CHAINS,
    CTX_DEPTH, CTX_FRAME, CTX_LAST, CTX_LIMIT, CTX_LINKS, CTX_LOOKUP, CTX_NLINKS, CTX_TARGET, R11,
    R12, R9, RAX, RBX, RCX, RDX, RSI, RSP,
};
use crate::tramp;
use dynasmrt::{dynasm, DynamicLabel, DynasmApi, DynasmLabelApi};
use vireo_core::exec::{DirectGlobals, GuestEnv};
use vireo_core::ir::{ExitKind, Global, Tail};

/// What an exit going to the table lookup names as its slot to link when it has
/// none ([`lookup_stub`]): the offset of the cell's entry, which no slot has.
const NO_LINK: i32 = CELL_ENTRY;

/// Most guest calls with host `call` frames on the stack at once (16 bytes each).
const MAX_DEPTH: i32 = 64;

impl Gen<'_> {
    /// Whether a `Jump` exit to `t` goes straight into the next block (its own start
    /// or a chain slot) with the run conditions checked at the exit: then the PC
    /// store before it waits for the paths that return ([`Gen::pc_later`]).
    pub(super) fn chains_directly<E: DirectGlobals>(&self, t: u64) -> bool {
        self.guards.is_some()
            && hooks::<E>().is_some()
            && direct::<E>(Global::Pc).is_some()
            && (t == self.block.pc || self.slot_targets.contains(&Some(t)))
    }

    /// Stores the PC held back for the exit ([`Gen::pc_later`]), if any.
    fn store_pc_later<E: DirectGlobals>(&mut self, pc: Option<u64>) {
        if let (Some(v), Some(off)) = (pc, direct::<E>(Global::Pc)) {
            self.store_imm(R12, off, v);
        }
    }

    pub(super) fn exit<E: GuestEnv + DirectGlobals>(&mut self, kind: ExitKind) {
        self.flush::<E>();
        // Calls and returns as host calls and returns (predicted by the host's
        // return stack): the block's last exit, a call, runs as a host `call` of its
        // exit; a return whose call did so returns (host `ret`) there, and the code
        // after that call goes on at the call's return PC if the guest returned
        // there. The frames live only while the run goes on from block to block: no
        // mapping or code change can come between the call and the return (each
        // ends the run, whose return drops the frames).
        let last = self.cur + 1 == self.block.ops.len();
        if last && self.indirect_ok::<E>() {
            match (self.block.tail, kind) {
                (Tail::Call { ret }, ExitKind::Jump(_) | ExitKind::Indirect) => {
                    let seq = self.ops.new_dynamic_label();
                    enc::alu_imm(&mut self.ops, enc::Alu::Cmp, RBX, CTX_DEPTH, MAX_DEPTH);
                    dynasm!(self.ops ; .arch x64 ; jae =>seq);
                    enc::alu_imm(&mut self.ops, enc::Alu::Add, RBX, CTX_DEPTH, 1);
                    // (16 bytes a frame keep the stack aligned for helper calls.)
                    dynasm!(self.ops
                        ; .arch x64
                        ; sub rsp, 8
                        ; call =>seq
                        ; add rsp, 8
                    );
                    self.resume::<E>(ret);
                    dynasm!(self.ops ; .arch x64 ; =>seq);
                }
                (Tail::Return, ExitKind::Indirect) => {
                    let pc_later = self.pc_later.take();
                    self.store_pc_later::<E>(pc_later);
                    let plain = self.ops.new_dynamic_label();
                    enc::alu_imm(&mut self.ops, enc::Alu::Cmp, RBX, CTX_DEPTH, 0);
                    dynasm!(self.ops ; .arch x64 ; je =>plain);
                    enc::alu_imm(&mut self.ops, enc::Alu::Sub, RBX, CTX_DEPTH, 1);
                    dynasm!(self.ops
                        ; .arch x64
                        ; ret
                        ; =>plain
                    );
                }
                _ => {}
            }
        }
        let mut pc_later = self.pc_later.take();
        let (code, target) = exit_code(kind);
        if let Some(t) = target {
            self.store_imm(RBX, CTX_TARGET, t);
        }
        let direct_to = match kind {
            ExitKind::Jump(t) if self.chains_directly::<E>(t) => Some(t),
            _ => None,
        };
        if direct_to.is_none() || pc_later != direct_to {
            self.store_pc_later::<E>(pc_later.take());
        }
        if let ExitKind::Jump(t) = kind {
            // A jump to the block's own start (a loop that is one block): its own
            // chain entry, under the same run conditions as any chaining (a store
            // that hits this block's code raises the stop request, which they check).
            // The run conditions are checked here, and the jump is direct.
            if t == self.block.pc && self.guards.is_some() {
                if let Some(fail) = self.run_checks::<E>() {
                    let entry = self.entry;
                    self.count_chain();
                    dynasm!(self.ops
                        ; .arch x64
                        ; jmp =>entry
                        ; =>fail
                    );
                    self.store_pc_later::<E>(pc_later);
                    self.leave(code);
                    return;
                }
            }
            if let Some(k) = self.slot_targets.iter().position(|s| *s == Some(t)) {
                if self.guards.is_some() {
                    self.through_slot::<E>(k, code, pc_later);
                    return;
                }
            }
        }
        // An indirect exit, or a jump no slot took (another page, not linked yet):
        // the indirect-exit table.
        match kind {
            ExitKind::Jump(_) => self.go_lookup::<E>(code, NO_LINK),
            ExitKind::Indirect => self.through_ic::<E>(code),
            _ => self.leave(code),
        }
    }

    /// An `Indirect` exit through the block's inline cache: the target its last
    /// table hit found, if the new PC, CS base and guard are those it was found for
    /// (and the block lives), under the run conditions; else the table lookup,
    /// which fills the cache ([`lookup_stub`]). A call through a function pointer
    /// (glibc's string functions in a static binary) or a return to the one caller
    /// goes straight on, through a jump of its own (predicted by the host per site,
    /// unlike the shared lookup's).
    fn through_ic<E: GuestEnv + DirectGlobals>(&mut self, code: u64) {
        let (true, Some(pc), Some(cs), Some(guard)) = (
            self.indirect_ok::<E>(),
            direct::<E>(Global::Pc),
            direct::<E>(Global::SegBase(1)),
            E::indirect_guard().and_then(env_off::<E>),
        ) else {
            self.go_lookup::<E>(code, NO_LINK);
            return;
        };
        let cell = self.cell as i64;
        let miss = self.ops.new_dynamic_label();
        dynasm!(self.ops ; .arch x64 ; mov rax, QWORD cell);
        for (env, at) in [(pc, CELL_IC_PC), (guard, CELL_IC_GUARD), (cs, CELL_IC_CS)] {
            cmp_env(&mut self.ops, RCX, env, RAX, at);
            dynasm!(self.ops ; .arch x64 ; jne =>miss);
        }
        self.enter_ic_target::<E>(miss, code);
    }

    /// The end of an `Indirect` exit whose key matched its inline cache (`rax`: this
    /// block's cell): the run conditions, then into the block it holds (`jmp [cell +
    /// ic_entry]`; a dropped block's cache has its key voided, `JitCache::kill`); a
    /// failed condition returns with `code`, `miss` goes to the table lookup naming
    /// the inline cache ([`lookup_stub`]).
    fn enter_ic_target<E: GuestEnv + DirectGlobals>(&mut self, miss: DynamicLabel, code: u64) {
        if let Some(fail) = self.run_checks::<E>() {
            self.count_chain();
            enc::jmp_mem(&mut self.ops, RAX, CELL_IC_ENTRY);
            dynasm!(self.ops ; .arch x64 ; =>fail);
        }
        self.leave(code);
        dynasm!(self.ops ; .arch x64 ; =>miss);
        self.go_lookup::<E>(code, CELL_IC_PC);
    }

    /// Where the host `call` of a guest call returns: the guest PC (which the
    /// returning block stored) is `ret`, the call's return PC: on into its block
    /// (through the chain slot for it, else the table); another PC: the table.
    fn resume<E: GuestEnv + DirectGlobals>(&mut self, ret: u64) {
        let Some(pc_off) = direct::<E>(Global::Pc) else {
            return;
        };
        let other = self.ops.new_dynamic_label();
        self.imm(RAX, ret);
        enc::cmp_load(&mut self.ops, RAX, R12, pc_off);
        dynasm!(self.ops ; .arch x64 ; jne =>other);
        let (code, _) = exit_code(ExitKind::Jump(ret));
        match self.slot_targets.iter().position(|s| *s == Some(ret)) {
            Some(k) => {
                self.stop_unknown = true;
                self.through_slot::<E>(k, code, None);
                self.stop_unknown = false;
            }
            None => self.go_lookup::<E>(code, NO_LINK),
        }
        dynasm!(self.ops ; .arch x64 ; =>other);
        self.go_lookup::<E>(exit_code(ExitKind::Indirect).0, NO_LINK);
    }

    /// A `Jump` exit through chain slot `k`: the run conditions, then `jmp [slot]`,
    /// into the block linked or, unlinked, to the block's code for the slot
    /// ([`Gen::slot_misses`]), which looks the target up; a failed condition returns
    /// with `code`, storing the PC held back, if any. A slot of a jump to another
    /// page is followed only while the environment's guard is the one it was
    /// linked under; else the same lookup.
    fn through_slot<E: GuestEnv + DirectGlobals>(
        &mut self,
        k: usize,
        code: u64,
        pc_later: Option<u64>,
    ) {
        let Some(fail) = self.run_checks::<E>() else {
            self.store_pc_later::<E>(pc_later);
            self.leave(code);
            return;
        };
        let (_, guard_miss) = match self.slot_miss[k] {
            Some(m) => m,
            None => {
                let m = (self.ops.new_dynamic_label(), self.ops.new_dynamic_label());
                self.slot_miss[k] = Some(m);
                m
            }
        };
        let cell = self.cell as i64;
        dynasm!(self.ops ; .arch x64 ; mov rax, QWORD cell);
        if let Some(g) = self.slot_guard::<E>(k) {
            cmp_env(&mut self.ops, RCX, g, RAX, CELL_GUARDS + 8 * k as i32);
            dynasm!(self.ops ; .arch x64 ; jne =>guard_miss);
        }
        self.count_chain();
        enc::jmp_mem(&mut self.ops, RAX, CELL_SLOTS + 8 * k as i32);
        dynasm!(self.ops ; .arch x64 ; =>fail);
        self.store_pc_later::<E>(pc_later);
        self.leave(code);
    }

    /// The environment's indirect guard (its offset) if chain slot `k` checks it
    /// (a jump to another page).
    fn slot_guard<E: DirectGlobals>(&self, k: usize) -> Option<i32> {
        self.guarded
            .get(k)
            .copied()
            .unwrap_or(false)
            .then(|| E::indirect_guard().and_then(env_off::<E>))
            .flatten()
    }

    /// The code unlinked chain slots lead to (`Cell::miss`), one per slot that
    /// exits jump through, after the block's code: it stores the slot's target as
    /// the PC and goes to the table lookup naming the slot (for a slot that checks
    /// the guard, the slot's guard), which links it on a hit when allowed
    /// ([`lookup_stub`]). Returns the offset of each.
    pub(super) fn slot_misses<E: GuestEnv + DirectGlobals>(
        &mut self,
    ) -> [Option<usize>; crate::SLOTS] {
        let mut at = [None; crate::SLOTS];
        for (k, at) in at.iter_mut().enumerate() {
            let (Some((slot_miss, guard_miss)), Some(t)) =
                (self.slot_miss[k], self.slot_targets[k])
            else {
                continue;
            };
            *at = Some(self.ops.offset().0);
            dynasm!(self.ops ; .arch x64 ; =>slot_miss);
            // (The exit counted a chain before its jump.)
            if self.count_chains {
                enc::alu_imm(&mut self.ops, enc::Alu::Sub, RBX, CTX_CHAINS, 1);
            }
            dynasm!(self.ops ; .arch x64 ; =>guard_miss);
            self.store_pc_later::<E>(Some(t));
            let link = match self.slot_guard::<E>(k) {
                Some(_) => CELL_GUARDS,
                None => CELL_SLOTS,
            };
            let (code, _) = exit_code(ExitKind::Jump(t));
            self.go_lookup::<E>(code, link + 8 * k as i32);
        }
        at
    }

    /// Goes to the cache's shared table lookup ([`lookup_stub`]) with return code
    /// `code` for when it finds nothing, and the offset of the chain slot to link
    /// in the block's cell ([`NO_LINK`]: none); returns with `code` if lookups are
    /// not possible.
    fn go_lookup<E: DirectGlobals>(&mut self, code: u64, slot: i32) {
        if !self.indirect_ok::<E>() {
            self.leave(code);
            return;
        }
        let tail = *self
            .lookup_tail
            .get_or_insert_with(|| self.ops.new_dynamic_label());
        dynasm!(self.ops
            ; .arch x64
            ; mov esi, code as i32
            ; mov r8d, slot
            ; jmp =>tail
        );
    }

    /// Returns from the block with return code `code`.
    pub(super) fn leave(&mut self, code: u64) {
        let epilogue = self.epilogue;
        self.imm(RAX, code);
        dynasm!(self.ops ; .arch x64 ; jmp =>epilogue);
    }

    /// Whether exits can look up the indirect-exit table.
    pub(super) fn indirect_ok<E: DirectGlobals>(&self) -> bool {
        self.lookup
            && self.guards.is_some()
            && direct::<E>(Global::Pc).is_some()
            && direct::<E>(Global::SegBase(1)).is_some()
            && E::indirect_guard().and_then(env_off::<E>).is_some()
    }

    /// The block's way into the shared lookup: its cell in `rcx`, then the stub.
    pub(super) fn lookup_tail(&mut self) {
        if let Some(l) = self.lookup_tail {
            let cell = self.cell as i64;
            dynasm!(self.ops ; .arch x64 ; =>l ; mov rcx, QWORD cell);
            enc::jmp_mem(&mut self.ops, RBX, CTX_LOOKUP);
        }
    }

    /// The run conditions of chaining: the environment's counter below the gate's
    /// limit (0 once a wake-up flag is raised) and, if the block may have changed them, the stop
    /// request and chain guards clear. Falls through when they hold, else jumps to the
    /// returned label (which the caller places). Clobbers `rcx`.
    fn run_checks<E: DirectGlobals>(&mut self) -> Option<DynamicLabel> {
        let (Some(guards), Some(h)) = (self.guards, hooks::<E>()) else {
            return None;
        };
        let fail = self.ops.new_dynamic_label();
        // Short jumps: the callers place `fail` within a few dozen bytes. The limit
        // is 0 once a wake-up flag is raised (`Gate`).
        limit_check(&mut self.ops, RCX, h.counter);
        dynasm!(self.ops ; .arch x64 ; jbe BYTE =>fail);
        // The stop request first, then the chain guards (which stores never set).
        // Stores raise the request only in their slow paths, which check it right
        // after the store when an instruction boundary follows; otherwise they leave
        // `book.may_stop` set, as calls do, so a path whose last check saw it clear
        // (and that entered the block with it clear: every chained entry checks it
        // after a block that may have raised it) needs none. After a guest call
        // returned (`resume`), the callee's blocks ran since: checked regardless.
        let stop = self.book.may_stop || self.stop_unknown;
        let n = match (self.stop_risk, self.guard_risk) {
            (_, true) => guards.as_slice().len(),
            (true, false) if stop => 1,
            _ => 0,
        };
        for &g in guards.as_slice().iter().take(n) {
            enc::cmp_byte(&mut self.ops, R12, g, 0);
            dynasm!(self.ops ; .arch x64 ; jne BYTE =>fail);
        }
        Some(fail)
    }

    /// Counts one block entered straight from another (`ctx.chains`), if the cache
    /// counts them.
    fn count_chain(&mut self) {
        if self.count_chains {
            enc::alu_imm(&mut self.ops, enc::Alu::Add, RBX, CTX_CHAINS, 1);
        }
    }
}

/// The code of a cache's shared indirect-exit-table lookup, which blocks jump to
/// (`jmp [rbx + CTX_LOOKUP]`) with their cell in `rcx`, the return code for a miss
/// in `esi` and the offset of an empty chain slot to link in `r8d` ([`NO_LINK`]
/// for none; the offset of the slot's guard for a slot that checks it; that of the
/// cell's inline cache for an `Indirect` exit); `None` if the environment does not
/// allow lookups (no block then jumps there).
///
/// It finds the block the table holds for the new PC, CS base and the
/// environment's guard (in either way of the PC's set); if that block lives,
/// links the slot to its entry if the two blocks may be linked
/// ([`crate::JitCache::set_page`]; a slot that checks the guard always, with the
/// guard) and `ctx.links` has room to record the link, or fills the inline cache
/// (`Gen::through_ic`); and jumps into the block if
/// it lives and the run may go on: the environment's counter below the gate's limit
/// (no wake-up flag raised), and the stop request and every chain guard clear (all of
/// them: it does not know what the block before may have changed). Otherwise it
/// returns from the run as the block would have: `ctx.last` its cell, `esi` the
/// return code, through the frame the prologue built (the same for every block).
/// One copy per cache instead of one per block: ~150 bytes of host code a block.
fn lookup_stub<E: GuestEnv + DirectGlobals>(
    o: &mut super::Asm,
    ind: usize,
    leave: DynamicLabel,
    count_chains: bool,
) -> Option<()> {
    let (Some(pc_off), Some(cs_off), Some(guard_off), Some(h), Some(guards)) = (
        direct::<E>(Global::Pc),
        direct::<E>(Global::SegBase(1)),
        E::indirect_guard().and_then(env_off::<E>),
        hooks::<E>(),
        super::guards::<E>(),
    ) else {
        return None;
    };
    const PC: i32 = std::mem::offset_of!(crate::IndEntry, pc) as i32;
    const CS: i32 = std::mem::offset_of!(crate::IndEntry, cs_base) as i32;
    const GUARD: i32 = std::mem::offset_of!(crate::IndEntry, guard) as i32;
    const CELL: i32 = std::mem::offset_of!(crate::IndEntry, cell) as i32;
    const SIZE: i32 = std::mem::size_of::<crate::IndEntry>() as i32;
    let mask = (crate::IND_SETS - 1) as i32;
    let shift = (std::mem::size_of::<crate::IndEntry>() * crate::IND_WAYS).trailing_zeros() as i8;
    enc::load(o, RAX, R12, pc_off);
    dynasm!(o
        ; .arch x64
        ; mov rdx, rax
        ; shr rdx, 10
        ; xor rdx, rax
        ; and edx, mask
        ; shl edx, shift
        ; mov r9, QWORD ind as i64
        ; add rdx, r9
    );
    // The set's ways in turn (a PC is in one way at most).
    enc::cmp_load(o, RAX, RDX, PC);
    for _ in 1..crate::IND_WAYS {
        dynasm!(o
            ; .arch x64
            ; je >way
            ; add rdx, SIZE
        );
        enc::cmp_load(o, RAX, RDX, PC);
    }
    dynasm!(o
        ; .arch x64
        ; jne >fail
        ; way:
    );
    cmp_env(o, RAX, cs_off, RDX, CS);
    dynasm!(o ; .arch x64 ; jne >fail);
    cmp_env(o, RAX, guard_off, RDX, GUARD);
    dynasm!(o ; .arch x64 ; jne >fail);
    enc::load(o, RAX, RDX, CELL);
    // A dropped block (entry 0) is neither linked nor entered.
    enc::load(o, R9, RAX, CELL_ENTRY);
    dynasm!(o
        ; .arch x64
        ; test r9, r9
        ; jz >fail
    );
    // Link the slot the jump missed, when allowed: a slot checking the guard with
    // the guard (its offset is past every slot's), else if on the same page; and
    // only while `ctx.links` has room to record the link (a dropped block's slots
    // are emptied through that record).
    dynasm!(o
        ; .arch x64
        ; cmp r8d, NO_LINK
        ; je >nolink
    );
    enc::load(o, RDX, RBX, CTX_NLINKS);
    dynasm!(o
        ; .arch x64
        ; cmp rdx, tramp::LINKS as i32
        ; jae >nolink
        ; cmp r8d, CELL_IC_PC
        ; je >ic
        ; cmp r8d, CELL_GUARDS
        ; jb >page
        ; lea r10, [rcx + r8 + (CELL_SLOTS - CELL_GUARDS)]
    );
    enc::load(o, R11, R12, guard_off);
    dynasm!(o
        ; .arch x64
        ; mov [rcx + r8], r11
        ; jmp >record
        ; ic:
    );
    // The inline cache keeps its target under the same guard when the PC differs
    // (a site jumping to many: refilling it at every miss made a threaded
    // interpreter 3.5% slower); under another guard (a new address space, or none:
    // its block was dropped), it takes the new one. Its record is tagged (the
    // address of its entry plus 1): dropping the block voids the cache's key.
    cmp_env(o, R11, guard_off, RCX, CELL_IC_GUARD);
    dynasm!(o ; .arch x64 ; jne >fill);
    cmp_env(o, R11, pc_off, RCX, CELL_IC_PC);
    dynasm!(o
        ; .arch x64
        ; jne >nolink
        ; fill:
    );
    for (env, at) in [
        (pc_off, CELL_IC_PC),
        (cs_off, CELL_IC_CS),
        (guard_off, CELL_IC_GUARD),
    ] {
        enc::load(o, R11, R12, env);
        enc::store(o, RCX, at, R11);
    }
    // (Holding that block already: recorded when it was filled, and not dropped
    // since, as it lives.)
    dynasm!(o
        ; .arch x64
        ; cmp [rcx + CELL_IC_ENTRY], r9
        ; je >nolink
        ; mov [rcx + CELL_IC_ENTRY], r9
        ; lea r10, [rcx + CELL_IC_ENTRY + 1]
        ; jmp >push
        ; page:
    );
    enc::load(o, R11, RCX, CELL_PAGE);
    enc::cmp_load(o, R11, RAX, CELL_PAGE);
    dynasm!(o ; .arch x64 ; jne >nolink);
    enc::alu_imm(o, enc::Alu::Cmp, RAX, CELL_LINKABLE, 0);
    dynasm!(o
        ; .arch x64
        ; je >nolink
        ; lea r10, [rcx + r8]
        // The slot leads to the block's entry; the link goes on the record (unless
        // it led there already: then it is on it).
        ; record:
        ; cmp [r10], r9
        ; je >nolink
        ; mov [r10], r9
        // The record: the address linked (`r10`), the cell of the block (`rax`).
        ; push:
        ; shl rdx, 4
        ; mov [rbx + rdx + CTX_LINKS], r10
        ; mov [rbx + rdx + CTX_LINKS + 8], rax
    );
    enc::alu_imm(o, enc::Alu::Add, RBX, CTX_NLINKS, 1);
    dynasm!(o ; .arch x64 ; nolink:);
    // The run conditions.
    limit_check(o, RDX, h.counter);
    dynasm!(o ; .arch x64 ; jbe >fail);
    for &g in guards.as_slice() {
        enc::cmp_byte(o, R12, g, 0);
        dynasm!(o ; .arch x64 ; jne >fail);
    }
    if count_chains {
        enc::alu_imm(o, enc::Alu::Add, RBX, CTX_CHAINS, 1);
    }
    dynasm!(o
        ; .arch x64
        ; jmp r9
        ; fail:
        ; mov eax, esi
        ; jmp =>leave
    );
    Some(())
}

/// Compares the run's limit (in `scratch`) with the environment's counter at
/// `counter`: `jbe` to stop chaining (the limit reached, or the gate closed).
fn limit_check(o: &mut super::Asm, scratch: u8, counter: i32) {
    enc::load(o, scratch, RBX, CTX_LIMIT);
    enc::load(o, scratch, scratch, 0);
    enc::cmp_load(o, scratch, R12, counter);
}

/// Compares the environment's `u64` at `env` (loaded into `scratch`) with the one at
/// `[base + at]`.
fn cmp_env(o: &mut super::Asm, scratch: u8, env: i32, base: u8, at: i32) {
    enc::load(o, scratch, R12, env);
    enc::cmp_load(o, scratch, base, at);
}

/// A cache's shared code ([`shared_stubs`]).
pub(crate) struct Stubs {
    pub code: Vec<u8>,
    /// Offset of the entry from Rust: `extern "C" fn(ctx, env, temps, block)`
    /// builds the frame every block runs in (see `codegen`) and jumps to `block`
    /// (a block's chain entry).
    pub enter: usize,
    /// Offset of the return from a run: `ctx.last` from `rcx` (the block's cell),
    /// the return code in `rax`, then the frame the prologue built (the same for
    /// every block) undone.
    pub leave: usize,
    /// Offset of the table lookup ([`lookup_stub`]), if the environment allows it.
    pub lookup: Option<usize>,
}

/// The code every block of a cache shares: the entry from Rust, and, reached
/// through the context (`jmp [rbx + d8]`), the return from a run and the
/// indirect-exit-table lookup.
pub(crate) fn shared_stubs<E: GuestEnv + DirectGlobals>(
    ind: usize,
    count_chains: bool,
) -> Option<Stubs> {
    let mut ops = super::Asm::new(0);
    let leave = ops.new_dynamic_label();
    dynasm!(ops ; .arch x64 ; =>leave);
    enc::store(&mut ops, RBX, CTX_LAST, RCX);
    // (Dropping the frames of guest calls, see `Gen::exit`.)
    enc::load(&mut ops, RSP, RBX, CTX_FRAME);
    dynasm!(ops
        ; .arch x64
        ; add rsp, 8
        ; pop r15
        ; pop r14
        ; pop r13
        ; pop r12
        ; pop rbx
        ; pop rbp
        ; ret
    );
    let enter = ops.offset().0;
    dynasm!(ops
        ; .arch x64
        ; push rbp
        ; mov rbp, rsp
        ; push rbx
        ; push r12
        ; push r13
        ; push r14
        ; push r15
        ; sub rsp, 8
        ; mov rbx, rdi
        ; mov r13, rdx
    );
    enc::store(&mut ops, RBX, CTX_FRAME, RSP);
    enc::lea(&mut ops, R12, RSI, super::bias::<E>());
    dynasm!(ops ; .arch x64 ; jmp rcx);
    let at = ops.offset().0;
    let lookup = lookup_stub::<E>(&mut ops, ind, leave, count_chains).map(|()| at);
    Some(Stubs {
        code: ops.finalize().ok()?,
        enter,
        leave: 0,
        lookup,
    })
}
