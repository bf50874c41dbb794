//! A block's ways out: its exits, the shared chaining code (slots, the
//! indirect-exit table, the run conditions) and returning to the run loop.

// dynasm's dynamic registers (`Rq(r)`) expand to `r.into()`.
#![allow(clippy::useless_conversion)]

use super::{
    direct, enc, env_off, exit_code, hooks, Gen, CELL_ENTRY, CELL_LINKABLE, CELL_PAGE, CELL_SLOTS,
    CTX_CHAINS, CTX_FLAGS, CTX_LIMIT, CTX_TARGET, R12, RAX, RBX, RCX, RDX,
};
use dynasmrt::{dynasm, DynamicLabel, DynasmApi, DynasmLabelApi};
use vireo_core::exec::{DirectGlobals, GuestEnv};
use vireo_core::ir::{ExitKind, Global};

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
                    // The slot's cell and its block's entry (0: not linked or gone:
                    // the table, or the run loop), then the run conditions.
                    let cell = self.cell as i64;
                    let slot = CELL_SLOTS + 8 * k as i32;
                    let tail = *self
                        .slot_tail
                        .get_or_insert_with(|| self.ops.new_dynamic_label());
                    // A miss (storing the PC held back, if any) names the slot for
                    // the table lookup to link ([`Gen::chain_indirect`]).
                    let miss = self.ops.new_dynamic_label();
                    dynasm!(self.ops ; .arch x64 ; mov rax, QWORD cell);
                    enc::load(&mut self.ops, RAX, RAX, slot);
                    enc::load(&mut self.ops, RAX, RAX, CELL_ENTRY);
                    dynasm!(self.ops
                        ; .arch x64
                        ; test rax, rax
                        ; jz =>miss
                    );
                    if let Some(fail) = self.run_checks::<E>() {
                        self.count_chain();
                        dynasm!(self.ops
                            ; .arch x64
                            ; jmp rax
                            ; =>fail
                        );
                    }
                    self.store_pc_later::<E>(pc_later);
                    self.leave(code);
                    dynasm!(self.ops ; .arch x64 ; =>miss);
                    self.store_pc_later::<E>(pc_later);
                    dynasm!(self.ops
                        ; .arch x64
                        ; mov r8d, slot
                        ; jmp =>tail
                    );
                    return;
                }
            }
        }
        // An indirect exit, or a jump no slot took (another page, not linked yet):
        // the indirect-exit table, through the block's shared lookup.
        let tail = match kind {
            ExitKind::Jump(_) => Some(0),
            ExitKind::Indirect => Some(1),
            _ => None,
        };
        if let (Some(k), true) = (tail, self.indirect_ok::<E>()) {
            let l = *self.ind_tails[k].get_or_insert_with(|| self.ops.new_dynamic_label());
            dynasm!(self.ops ; .arch x64 ; jmp =>l);
            return;
        }
        self.leave(code);
    }

    /// Returns from the block with return code `code`.
    pub(super) fn leave(&mut self, code: u64) {
        let epilogue = self.epilogue;
        self.imm(RAX, code);
        dynasm!(self.ops ; .arch x64 ; jmp =>epilogue);
    }

    /// Whether exits can look up the indirect-exit table.
    fn indirect_ok<E: DirectGlobals>(&self) -> bool {
        self.guards.is_some()
            && direct::<E>(Global::Pc).is_some()
            && direct::<E>(Global::SegBase(1)).is_some()
            && E::indirect_guard().and_then(env_off::<E>).is_some()
    }

    /// The shared exit code the block's exits jump to: chaining through a slot (else
    /// the table), the table lookups, else the exit's return code (a `Jump` target is
    /// already in `ctx.target`).
    pub(super) fn indirect_tails<E: DirectGlobals>(&mut self) {
        let slot_tail = match self.slot_tail {
            Some(l) if self.indirect_ok::<E>() => {
                // A slot that named no live block (its offset in `r8d`): the jump
                // lookup, which links the slot on a hit.
                self.ind_tails[0].get_or_insert_with(|| self.ops.new_dynamic_label());
                Some(l)
            }
            Some(l) => {
                dynasm!(self.ops ; .arch x64 ; =>l);
                self.leave(exit_code(ExitKind::Jump(0)).0);
                None
            }
            None => None,
        };
        for (k, kind) in [(0, ExitKind::Jump(0)), (1, ExitKind::Indirect)] {
            if let Some(l) = self.ind_tails[k] {
                dynasm!(self.ops ; .arch x64 ; =>l);
                let code = exit_code(kind).0;
                // Jumps no slot serves come first (nothing to link), then the
                // slots' misses (the slot in `r8d`).
                let link = match (k, slot_tail) {
                    (0, Some(s)) => {
                        dynasm!(self.ops ; .arch x64 ; xor r8d, r8d ; =>s);
                        true
                    }
                    _ => false,
                };
                self.chain_indirect::<E>(code, link);
                self.leave(code);
            }
        }
    }

    /// At an indirect exit: goes on into the block the indirect-exit table holds for
    /// the new PC, CS base and the environment's guard, if any and allowed; falls
    /// through otherwise. With `link`, `r8d` holds 0 or the offset in the block's
    /// cell of the chain slot the exit missed: a hit links that slot when the two
    /// blocks may be linked ([`crate::JitCache::set_page`]).
    fn chain_indirect<E: DirectGlobals>(&mut self, code: u64, link: bool) {
        let (Some(pc_off), Some(cs_off), Some(guard_off)) = (
            direct::<E>(Global::Pc),
            direct::<E>(Global::SegBase(1)),
            E::indirect_guard().and_then(env_off::<E>),
        ) else {
            return;
        };
        if self.guards.is_none() {
            return;
        }
        let ind = self.ind as i64;
        let mask = (crate::IND_SETS - 1) as i32;
        const PC: i32 = std::mem::offset_of!(crate::IndEntry, pc) as i32;
        const CS: i32 = std::mem::offset_of!(crate::IndEntry, cs_base) as i32;
        const GUARD: i32 = std::mem::offset_of!(crate::IndEntry, guard) as i32;
        const CELL: i32 = std::mem::offset_of!(crate::IndEntry, cell) as i32;
        const SIZE: i32 = std::mem::size_of::<crate::IndEntry>() as i32;
        let shift =
            (std::mem::size_of::<crate::IndEntry>() * crate::IND_WAYS).trailing_zeros() as i8;
        enc::load(&mut self.ops, RAX, R12, pc_off);
        dynasm!(self.ops
            ; .arch x64
            ; mov rcx, rax
            ; shr rcx, 10
            ; xor rcx, rax
            ; and ecx, mask
            ; shl ecx, shift
            ; mov rdx, QWORD ind
            ; add rdx, rcx
        );
        // The set's first way, else its second (a PC is in one way at most).
        enc::cmp_load(&mut self.ops, RAX, RDX, PC);
        dynasm!(self.ops ; .arch x64 ; je >way);
        enc::cmp_load(&mut self.ops, RAX, RDX, SIZE + PC);
        dynasm!(self.ops
            ; .arch x64
            ; jne >no
            ; add rdx, SIZE
            ; way:
        );
        enc::load(&mut self.ops, RAX, R12, cs_off);
        enc::cmp_load(&mut self.ops, RAX, RDX, CS);
        dynasm!(self.ops ; .arch x64 ; jne >no);
        enc::load(&mut self.ops, RAX, R12, guard_off);
        enc::cmp_load(&mut self.ops, RAX, RDX, GUARD);
        dynasm!(self.ops ; .arch x64 ; jne >no);
        enc::load(&mut self.ops, RAX, RDX, CELL);
        if link {
            let cell = self.cell as i64;
            dynasm!(self.ops
                ; .arch x64
                ; test r8d, r8d
                ; jz >nolink
                ; mov rcx, QWORD cell
            );
            enc::load(&mut self.ops, RDX, RCX, CELL_PAGE);
            enc::cmp_load(&mut self.ops, RDX, RAX, CELL_PAGE);
            dynasm!(self.ops ; .arch x64 ; jne >nolink);
            enc::alu_imm(&mut self.ops, enc::Alu::Cmp, RAX, CELL_LINKABLE, 0);
            dynasm!(self.ops
                ; .arch x64
                ; je >nolink
                ; mov [rcx + r8], rax
                ; nolink:
            );
        }
        self.chain_to_cell(code);
        dynasm!(self.ops ; .arch x64 ; no:);
    }

    /// With a cell address in `rax` (never 0: empty slots and table entries name the
    /// null cell, whose entry is 0): jumps into its block if it lives and the run may
    /// go on; else jumps to the local label `no` (which the caller defines).
    /// (If the block is live: the run conditions are checked by the block's shared
    /// `go` code, which returns with `code` when they fail.)
    fn chain_to_cell(&mut self, code: u64) {
        if self.guards.is_none() {
            dynasm!(self.ops ; .arch x64 ; jmp >no);
            return;
        }
        let go = *self.go.get_or_insert_with(|| self.ops.new_dynamic_label());
        enc::load(&mut self.ops, RAX, RAX, CELL_ENTRY);
        dynasm!(self.ops
            ; .arch x64
            ; test rax, rax
            ; jz >no
            ; mov esi, code as i32
            ; jmp =>go
        );
    }

    /// The shared end of chaining: with a live block's entry in `rax` and an exit's
    /// return code in `esi`, jumps into the block if the run may go on (the
    /// environment's counter below `ctx.limit`, the wake-up flags clear and, if the
    /// block may have changed them, the stop request and chain guards clear: at the
    /// run's start they are, or the limit is already reached), else returns the code.
    pub(super) fn go_tail<E: DirectGlobals>(&mut self) {
        // (`go` exists only with the guards and hooks: `run_checks` then checks.)
        let (Some(go), Some(_), Some(_)) = (self.go, &self.guards, hooks::<E>()) else {
            return;
        };
        dynasm!(self.ops ; .arch x64 ; =>go);
        let Some(fail) = self.run_checks::<E>() else {
            return;
        };
        let epilogue = self.epilogue;
        self.count_chain();
        dynasm!(self.ops
            ; .arch x64
            ; jmp rax
            ; =>fail
            ; mov eax, esi
            ; jmp =>epilogue
        );
    }

    /// The run conditions of chaining: the environment's counter below `ctx.limit`,
    /// the wake-up flags clear and, if the block may have changed them, the stop
    /// request and chain guards clear. Falls through when they hold, else jumps to the
    /// returned label (which the caller places). Clobbers `rcx`.
    fn run_checks<E: DirectGlobals>(&mut self) -> Option<DynamicLabel> {
        let (Some(guards), Some(h)) = (self.guards.clone(), hooks::<E>()) else {
            return None;
        };
        let fail = self.ops.new_dynamic_label();
        // Short jumps: the callers place `fail` within a few dozen bytes.
        enc::load(&mut self.ops, RCX, R12, h.counter);
        enc::cmp_load(&mut self.ops, RCX, RBX, CTX_LIMIT);
        dynasm!(self.ops ; .arch x64 ; jae BYTE =>fail);
        enc::load(&mut self.ops, RCX, RBX, CTX_FLAGS);
        enc::cmp_dword(&mut self.ops, RCX, 0, 0);
        dynasm!(self.ops ; .arch x64 ; jne BYTE =>fail);
        // The stop request first, then the chain guards (which stores never set).
        let n = match (self.stop_risk, self.guard_risk) {
            (_, true) => guards.len(),
            (true, false) => 1,
            (false, false) => 0,
        };
        for g in guards.into_iter().take(n) {
            enc::cmp_byte(&mut self.ops, R12, g, 0);
            dynasm!(self.ops ; .arch x64 ; jne BYTE =>fail);
        }
        Some(fail)
    }

    /// Counts one block entered straight from another (`ctx.chains`).
    fn count_chain(&mut self) {
        enc::alu_imm(&mut self.ops, enc::Alu::Add, RBX, CTX_CHAINS, 1);
    }
}
