//! Loads and stores: the inline fast-TLB lookup, the access itself from and to the
//! temps' registers, and the out-of-line slow paths through the softmmu trampolines.

// dynasm's dynamic registers (`Rq(r)`) expand to `r.into()`.
#![allow(clippy::useless_conversion)]

use super::{
    direct, enc, hooks, toff, Access, Gen, GroupStub, Probe, SlowPath, Value, R13, RAX, RCX, RDI,
    RDX, RSI,
};
use crate::groups::Role;
use crate::tramp;
use dynasmrt::{dynasm, DynamicLabel, DynasmApi, DynasmLabelApi};
use vireo_core::exec::{DirectGlobals, GuestEnv};
use vireo_core::ir::{BinOp, MmuIdx, Op, Size, Temp};

/// Where the inline lookup finds table `mmu` of the environment's fast TLB: the
/// displacements (from `r12`) of the read tag, write tag and addend of its first
/// entry, the index mask and the entry shift; `None` if code cannot address it.
fn tlb_layout<E: DirectGlobals>(mmu: MmuIdx) -> Option<((i32, i32, i32), i32, i8)> {
    let t = E::fast_tlb()?;
    let table = t.table_of(mmu);
    let offs = (
        super::env_off::<E>(table + t.read_tag)?,
        super::env_off::<E>(table + t.write_tag)?,
        super::env_off::<E>(table + t.addend)?,
    );
    if t.index_bits == 0 || t.index_bits + t.entry_shift > 30 {
        return None;
    }
    Some((
        offs,
        ((1u32 << t.index_bits) - 1) as i32,
        t.entry_shift as i8,
    ))
}

impl Gen<'_> {
    /// A load: the fast TLB inline (the value straight into the result's register),
    /// else the slow path; without a fast TLB, the trampoline.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn load<E: GuestEnv + DirectGlobals>(
        &mut self,
        dst: Temp,
        addr: Temp,
        size: Size,
        signed: bool,
        mmu: MmuIdx,
        write: bool,
    ) {
        let packed = tramp::pack_access(size, mmu, write, signed) as i32;
        let slow = self.ops.new_dynamic_label();
        let a = self.addr_reg(addr);
        // A store to the same address later (the two halves of a read-modify-write,
        // `x[i] += y`): the lookup checks the write tag first and leaves the host
        // address in `rdi` for it.
        // (Not for accesses of a group: theirs is the group's lookup.)
        let store = self
            .reusing_store::<E>(addr, size, mmu)
            .filter(|&j| self.role(self.cur).is_none() && self.role(j).is_none());
        let last = size.bytes() as i32 - 1;
        let fast = match store {
            Some(_) => self.fast_lookup_rw::<E>(Probe::new(a, mmu, last, write, slow)),
            None => self.grouped_lookup::<E>(Probe::new(a, mmu, last, write, slow)),
        };
        if fast {
            self.reuse = store;
        }
        if fast {
            // [a + rax] is the host address; the value goes straight to the
            // result's register (the slow path puts it there too).
            let d = self.reg(dst).unwrap_or(RDX);
            match (size, signed) {
                (Size::B8, false) => {
                    dynasm!(self.ops ; .arch x64 ; movzx Rd(d), BYTE [Rq(a) + rax])
                }
                (Size::B8, true) => {
                    dynasm!(self.ops ; .arch x64 ; movsx Rq(d), BYTE [Rq(a) + rax])
                }
                (Size::B16, false) => {
                    dynasm!(self.ops ; .arch x64 ; movzx Rd(d), WORD [Rq(a) + rax])
                }
                (Size::B16, true) => {
                    dynasm!(self.ops ; .arch x64 ; movsx Rq(d), WORD [Rq(a) + rax])
                }
                (Size::B32, false) => {
                    dynasm!(self.ops ; .arch x64 ; mov Rd(d), DWORD [Rq(a) + rax])
                }
                (Size::B32, true) => {
                    dynasm!(self.ops ; .arch x64 ; movsxd Rq(d), DWORD [Rq(a) + rax])
                }
                (Size::B64, _) => {
                    dynasm!(self.ops ; .arch x64 ; mov Rq(d), QWORD [Rq(a) + rax])
                }
            }
            self.slow_path(slow, Access::Load { addr: a, dst: d }, packed);
            self.st(dst, d);
        } else {
            self.sync::<E>();
            self.store_lazy::<E>(self.cur);
            if a != RSI {
                dynasm!(self.ops ; .arch x64 ; mov rsi, Rq(a));
            }
            dynasm!(self.ops ; .arch x64 ; mov rdi, rbx ; mov edx, packed);
            self.call_tramp(tramp::Tramp::Load);
            self.check_status();
            self.st(dst, RDX);
        }
    }

    /// A store: the fast TLB inline (from the value's register or an immediate),
    /// else the slow path; without a fast TLB, the trampoline.
    pub(super) fn store<E: GuestEnv + DirectGlobals>(
        &mut self,
        addr: Temp,
        val: Temp,
        size: Size,
        mmu: MmuIdx,
        reuse: bool,
    ) {
        let packed = tramp::pack_access(size, mmu, false, false) as i32;
        let slow = self.ops.new_dynamic_label();
        let a = self.addr_reg(addr);
        // The value from its register, as an immediate, or from rdx.
        let v = match (self.reg(val), self.k(val)) {
            (_, Some(k)) => Value::Imm(k),
            (Some(r), None) => Value::Reg(r),
            (None, None) => {
                self.ld(RDX, val);
                Value::Reg(RDX)
            }
        };
        // The load before left the host address (or 0: look up).
        let end = reuse.then(|| {
            let (end, lookup) = (self.ops.new_dynamic_label(), self.ops.new_dynamic_label());
            dynasm!(self.ops
                ; .arch x64
                ; test rdi, rdi
                ; jz =>lookup
            );
            self.store_at_rdi(size, v);
            dynasm!(self.ops
                ; .arch x64
                ; jmp =>end
                ; =>lookup
            );
            end
        });
        let last = size.bytes() as i32 - 1;
        let fast = self.grouped_lookup::<E>(Probe::new(a, mmu, last, true, slow));
        if fast {
            self.store_fast(a, size, v);
            self.slow_path(slow, Access::Store { addr: a, val: v }, packed);
        } else {
            self.sync::<E>();
            self.store_lazy::<E>(self.cur);
            if a != RSI {
                dynasm!(self.ops ; .arch x64 ; mov rsi, Rq(a));
            }
            match v {
                Value::Reg(RDX) => {}
                Value::Reg(r) => dynasm!(self.ops ; .arch x64 ; mov rdx, Rq(r)),
                Value::Imm(k) => self.imm(RDX, k),
            }
            dynasm!(self.ops ; .arch x64 ; mov rdi, rbx ; mov ecx, packed);
            self.call_tramp(tramp::Tramp::Store);
            self.check_status();
        }
        if let Some(end) = end {
            dynasm!(self.ops ; .arch x64 ; =>end);
        }
    }

    /// The store of `v` at `a + rax` (a hit's host address).
    fn store_fast(&mut self, a: u8, size: Size, v: Value) {
        match (size, v) {
            (Size::B8, Value::Reg(r)) => {
                dynasm!(self.ops ; .arch x64 ; mov BYTE [Rq(a) + rax], Rb(r))
            }
            (Size::B16, Value::Reg(r)) => {
                dynasm!(self.ops ; .arch x64 ; mov WORD [Rq(a) + rax], Rw(r))
            }
            (Size::B32, Value::Reg(r)) => {
                dynasm!(self.ops ; .arch x64 ; mov DWORD [Rq(a) + rax], Rd(r))
            }
            (Size::B64, Value::Reg(r)) => {
                dynasm!(self.ops ; .arch x64 ; mov QWORD [Rq(a) + rax], Rq(r))
            }
            (Size::B8, Value::Imm(k)) => {
                dynasm!(self.ops ; .arch x64 ; mov BYTE [Rq(a) + rax], k as u8 as i8)
            }
            (Size::B16, Value::Imm(k)) => {
                dynasm!(self.ops ; .arch x64 ; mov WORD [Rq(a) + rax], k as u16 as i16)
            }
            (Size::B32, Value::Imm(k)) => {
                dynasm!(self.ops ; .arch x64 ; mov DWORD [Rq(a) + rax], k as u32 as i32)
            }
            (Size::B64, Value::Imm(k)) => match i32::try_from(k as i64) {
                Ok(i) => dynasm!(self.ops ; .arch x64 ; mov QWORD [Rq(a) + rax], i),
                Err(_) => {
                    self.imm(RCX, k);
                    dynasm!(self.ops ; .arch x64 ; mov QWORD [Rq(a) + rax], rcx);
                }
            },
        }
    }

    /// The 64-bit store at op `cur` and the one right after it at 8 bytes further (a
    /// 128-bit store split in halves: `movaps`, `movdqu`) with one fast-TLB lookup
    /// for the 16 bytes; `false` (nothing emitted) if the ops are not such a pair or
    /// there is no fast TLB. The slow path stores the halves one after the other,
    /// as the two ops would.
    pub(super) fn store_pair<E: GuestEnv + DirectGlobals>(
        &mut self,
        addr: Temp,
        val: Temp,
        mmu: MmuIdx,
    ) -> bool {
        let Some(&Op::Store {
            addr: addr2,
            val: val2,
            size: Size::B64,
            mmu: m2,
        }) = self.block.ops.get(self.cur + 1)
        else {
            return false;
        };
        if m2 != mmu || E::fast_tlb().is_none() || !self.is_plus8(addr2, addr) {
            return false;
        }
        // Accesses of a group take the group's lookup, each on its own.
        if self.role(self.cur).is_some() || self.role(self.cur + 1).is_some() {
            return false;
        }
        let packed = tramp::pack_access(Size::B64, mmu, false, false) as i32;
        let slow = self.ops.new_dynamic_label();
        let a = self.addr_reg(addr);
        // The values from their registers, as immediates, or from rdx and rdi
        // (the lookup clobbers rax and rcx).
        let value = |g: &mut Self, t: Temp, scratch: u8| match (g.reg(t), g.k(t)) {
            (_, Some(k)) if i32::try_from(k as i64).is_ok() => Value::Imm(k),
            (Some(r), None) => Value::Reg(r),
            _ => {
                g.ld(scratch, t);
                Value::Reg(scratch)
            }
        };
        let v1 = value(self, val, RDX);
        let v2 = value(self, val2, RDI);
        if !self.fast_lookup::<E>(Probe::new(a, mmu, 15, true, slow)) {
            return false;
        }
        for (v, d) in [(v1, 0i32), (v2, 8)] {
            match v {
                Value::Reg(r) => dynasm!(self.ops ; .arch x64 ; mov QWORD [Rq(a) + rax + d], Rq(r)),
                Value::Imm(k) => {
                    dynasm!(self.ops ; .arch x64 ; mov QWORD [Rq(a) + rax + d], k as i64 as i32)
                }
            }
        }
        let access = Access::StorePair {
            addr: a,
            val: v1,
            addr2,
            val2,
        };
        self.slow_path(slow, access, packed);
        self.skip = self.cur + 1..self.cur + 2;
        true
    }

    /// Whether temp `t` holds `base + 8`: assigned once, by `add64 base, 8` (or
    /// `8, base`) in the straight line before the current op, with neither temp
    /// assigned again since.
    fn is_plus8(&self, t: Temp, base: Temp) -> bool {
        for o in self.block.ops[..self.cur].iter().rev() {
            match *o {
                Op::Label(_) => return false,
                Op::Bin {
                    op: BinOp::Add,
                    size: Size::B64,
                    dst,
                    a,
                    b,
                } if dst == t => {
                    return (a == base && self.k(b) == Some(8))
                        || (b == base && self.k(a) == Some(8));
                }
                ref o if o.dst() == Some(t) || o.dst() == Some(base) => return false,
                _ => {}
            }
        }
        false
    }

    /// The store a load at the current op may leave its host address to (see
    /// [`Gen::load`]): the next store to the same address temp, size and table,
    /// with only ops between that leave `rdi` and the fast TLB alone (temp
    /// arithmetic, direct globals, instruction starts with the hooks).
    fn reusing_store<E: DirectGlobals>(
        &self,
        addr: Temp,
        size: Size,
        mmu: MmuIdx,
    ) -> Option<usize> {
        hooks::<E>()?;
        for (j, o) in self.block.ops.iter().enumerate().skip(self.cur + 1) {
            match *o {
                Op::Store {
                    addr: a,
                    size: s,
                    mmu: m,
                    ..
                } => return (a == addr && s == size && m == mmu).then_some(j),
                Op::Get { src: g, .. } | Op::Set { dst: g, .. } if direct::<E>(g).is_some() => {}
                Op::InsnStart { .. } => {}
                ref o if o.is_arith() && o.dst() != Some(addr) => {}
                _ => return None,
            }
        }
        None
    }

    /// A store of `v` at the host address in `rdi`.
    fn store_at_rdi(&mut self, size: Size, v: Value) {
        dynasm!(self.ops ; .arch x64 ; xor eax, eax);
        self.store_fast(RDI, size, v);
    }

    /// [`Gen::fast_lookup`] for a load whose host address a later store takes
    /// (`Gen::reusing_store`): a write-tag hit leaves it in `rdi`; otherwise, for a
    /// plain load, a read-tag hit loads with 0 in `rdi` (the store looks up for
    /// itself), and a miss goes to `slow` (whose return leaves 0 in `rdi` too).
    fn fast_lookup_rw<E: DirectGlobals>(&mut self, p: Probe) -> bool {
        let (a, slow) = (p.addr, p.slow);
        if p.write {
            // A read-modify-write checks the write tag anyway.
            if !self.fast_lookup::<E>(p) {
                return false;
            }
            dynasm!(self.ops ; .arch x64 ; lea rdi, [Rq(a) + rax]);
            return true;
        }
        let Some((rtag, wtag, addend)) = self.lookup_start::<E>(a, p.mmu, 0, p.last) else {
            return false;
        };
        let (read, go) = (self.ops.new_dynamic_label(), self.ops.new_dynamic_label());
        dynasm!(self.ops
            ; .arch x64
            ; cmp rcx, QWORD [r12 + rax + wtag]
            ; jne =>read
            ; mov rax, QWORD [r12 + rax + addend]
            ; lea rdi, [Rq(a) + rax]
            ; jmp =>go
            ; =>read
            ; cmp rcx, QWORD [r12 + rax + rtag]
            ; jne =>slow
            ; mov rax, QWORD [r12 + rax + addend]
            ; xor edi, edi
            ; =>go
        );
        true
    }

    /// The register holding access address `t`: its own, else `rsi` (loaded).
    fn addr_reg(&mut self, t: Temp) -> u8 {
        match (self.reg(t), self.k(t)) {
            (Some(r), None) => r,
            _ => {
                self.ld(RSI, t);
                RSI
            }
        }
    }

    /// The inline fast TLB lookup for access `p` (see
    /// [`vireo_core::exec::DirectGlobals::fast_tlb`]): on a hit, `rax` holds the
    /// host addend (the access is at `p.addr + rax`) and the code falls through; on a
    /// miss it jumps to `p.slow` (with the address register and `rdx` intact).
    /// Clobbers `rcx`. `false` (nothing emitted) when the environment has no fast TLB.
    fn fast_lookup<E: DirectGlobals>(&mut self, p: Probe) -> bool {
        self.probe_span::<E>(p, 0, p.last, p.slow)
    }

    /// [`Gen::fast_lookup`] of the bytes from `p.addr + first` to `+ last`, going
    /// to `miss` on a miss.
    fn probe_span<E: DirectGlobals>(
        &mut self,
        p: Probe,
        first: i32,
        last: i32,
        miss: DynamicLabel,
    ) -> bool {
        let Some((rtag, wtag, addend)) = self.lookup_start::<E>(p.addr, p.mmu, first, last) else {
            return false;
        };
        let tag = if p.write { wtag } else { rtag };
        dynasm!(self.ops
            ; .arch x64
            ; cmp rcx, QWORD [r12 + rax + tag]
            ; jne =>miss
            ; mov rax, QWORD [r12 + rax + addend]
        );
        true
    }

    /// The role of op `i` in an access group, if any.
    fn role(&self, i: usize) -> Option<Role> {
        self.groups.role.get(i).copied().flatten()
    }

    /// The displacement (from `r13`) of access-group slot `slot`: after the temps.
    fn group_slot(&self, slot: u8) -> i32 {
        toff(vireo_core::ir::Temp(self.block.temps + u32::from(slot)))
    }

    /// [`Gen::fast_lookup`] for the current access, as its role in an access group
    /// has it ([`crate::groups`]): a lead looks up the group's span and leaves the
    /// addend in the group's slot (a miss: the mark, then its own lookup); a member
    /// takes the addend from the slot (the mark: its own lookup). Either way `rax`
    /// holds the addend when the code falls through.
    fn grouped_lookup<E: DirectGlobals>(&mut self, p: Probe) -> bool {
        let Some(role) = self.role(self.cur) else {
            return self.fast_lookup::<E>(p);
        };
        // Without an inline lookup for the table, none of the group's accesses has
        // one (they share the table): each goes through its trampoline.
        if tlb_layout::<E>(p.mmu).is_none() {
            return false;
        }
        let have = self.ops.new_dynamic_label();
        let cold = self.ops.new_dynamic_label();
        let mark = match role {
            Role::Lead { slot, lo, hi } => {
                if !self.probe_span::<E>(p, lo, hi, cold) {
                    return false;
                }
                let at = self.group_slot(slot);
                enc::store(&mut self.ops, R13, at, RAX);
                Some(at)
            }
            Role::Member { slot } => {
                let at = self.group_slot(slot);
                enc::load(&mut self.ops, RAX, R13, at);
                dynasm!(self.ops ; .arch x64 ; test al, 1 ; jnz =>cold);
                None
            }
        };
        dynasm!(self.ops ; .arch x64 ; =>have);
        self.group_stubs.push(GroupStub {
            entry: cold,
            back: have,
            probe: p,
            mark,
        });
        true
    }

    /// The out-of-line ends of [`Gen::grouped_lookup`]: a lead's miss marks its slot,
    /// and it or a member that found the mark looks itself up (a miss: its slow
    /// path), then goes back to its access.
    pub(super) fn group_stubs<E: DirectGlobals>(&mut self) {
        for s in std::mem::take(&mut self.group_stubs) {
            dynasm!(self.ops ; .arch x64 ; =>s.entry);
            if let Some(at) = s.mark {
                enc::store_imm(&mut self.ops, R13, at, 1);
            }
            self.fast_lookup::<E>(s.probe);
            dynasm!(self.ops ; .arch x64 ; jmp =>s.back);
        }
    }

    /// The start of an inline lookup for bytes from `a + first` to `a + last`:
    /// `rax` = the first byte's entry's offset in the table, `rcx` = the last byte's
    /// page. Returns the displacements (from `r12`) of table `mmu`'s read tag, write
    /// tag and addend; `None` (nothing emitted) when the environment has no fast TLB
    /// the code can address.
    fn lookup_start<E: DirectGlobals>(
        &mut self,
        a: u8,
        mmu: MmuIdx,
        first: i32,
        last: i32,
    ) -> Option<(i32, i32, i32)> {
        let (offs, mask, shift) = tlb_layout::<E>(mmu)?;
        if first == 0 {
            dynasm!(self.ops ; .arch x64 ; mov rax, Rq(a));
        } else {
            super::enc::lea(&mut self.ops, RAX, a, first);
        }
        if shift <= 12 {
            // ((la >> 12) & mask) << shift, in two steps.
            dynasm!(self.ops
                ; .arch x64
                ; shr rax, 12 - shift
                ; and eax, mask << shift
            );
        } else {
            dynasm!(self.ops
                ; .arch x64
                ; shr rax, 12
                ; and eax, mask
                ; shl eax, shift
            );
        }
        // (`lea` with no displacement for a one-byte access.)
        super::enc::lea(&mut self.ops, RCX, a, last);
        dynasm!(self.ops ; .arch x64 ; shr rcx, 12);
        Some(offs)
    }

    /// Records the slow path entered at `entry` for the current access and places
    /// the point it returns to here.
    fn slow_path(&mut self, entry: DynamicLabel, access: Access, packed: i32) {
        let done = self.ops.new_dynamic_label();
        dynasm!(self.ops ; .arch x64 ; =>done);
        // A store may hit code (self-modifying code raises the stop request); loads
        // never raise it. Only the slow path can: when nothing but temp arithmetic
        // follows the store in its instruction, the slow path checks the request
        // itself (and stops before the next instruction), the fast path nothing.
        let stop_at = match access {
            Access::Store { .. } | Access::StorePair { .. } => {
                let after = match access {
                    Access::StorePair { .. } => self.cur + 2,
                    _ => self.cur + 1,
                };
                let next = self.block.ops[after..].iter().find(|o| !o.is_arith());
                match next {
                    Some(&Op::InsnStart { pc, .. }) => Some(pc),
                    _ => {
                        self.book.may_stop = true;
                        None
                    }
                }
            }
            Access::Load { .. } => None,
        };
        self.stubs.push(SlowPath {
            entry,
            done,
            access,
            packed,
            op: self.cur,
            book: self.book,
            stop_at,
            marks: self.groups.open.get(self.cur).copied().unwrap_or(0),
        });
    }

    /// The slow paths of the block's memory accesses (out of line: the fast paths
    /// fall through without a jump).
    pub(super) fn slow_paths<E: GuestEnv + DirectGlobals>(&mut self) {
        for s in std::mem::take(&mut self.stubs) {
            self.cur = s.op;
            let (entry, done, packed) = (s.entry, s.done, s.packed);
            dynasm!(self.ops ; .arch x64 ; =>entry);
            // The call sees the bookkeeping as of the access; the fast path that
            // goes on after it still counts the pending instructions itself.
            self.book = s.book;
            let pending = s.book.pending;
            self.sync::<E>();
            self.store_lazy::<E>(s.op);
            let addr = match s.access {
                Access::Load { addr, .. }
                | Access::Store { addr, .. }
                | Access::StorePair { addr, .. } => addr,
            };
            if addr != RSI {
                dynasm!(self.ops ; .arch x64 ; mov rsi, Rq(addr));
            }
            dynasm!(self.ops ; .arch x64 ; mov rdi, rbx);
            match s.access {
                Access::Store { val, .. } | Access::StorePair { val, .. } => {
                    match val {
                        Value::Reg(RDX) => {}
                        Value::Reg(r) => dynasm!(self.ops ; .arch x64 ; mov rdx, Rq(r)),
                        Value::Imm(k) => self.imm(RDX, k),
                    }
                    dynasm!(self.ops ; .arch x64 ; mov ecx, packed);
                    self.call_tramp(tramp::Tramp::Store);
                    if let Access::StorePair { addr2, val2, .. } = s.access {
                        self.check_status();
                        // The second half as its own op would: its address and
                        // value from where they live (both are read by that op, so
                        // they outlive the first call).
                        self.ld(RSI, addr2);
                        self.ld(RDX, val2);
                        dynasm!(self.ops ; .arch x64 ; mov rdi, rbx ; mov ecx, packed);
                        self.call_tramp(tramp::Tramp::Store);
                    }
                }
                Access::Load { .. } => {
                    dynasm!(self.ops ; .arch x64 ; mov edx, packed);
                    self.call_tramp(tramp::Tramp::Load);
                    // No host address for a store after it (`Gen::load`).
                    dynasm!(self.ops ; .arch x64 ; xor edi, edi);
                }
            }
            self.check_status();
            // The softmmu may have changed what the open groups looked up.
            for k in 0..crate::groups::SLOTS as u8 {
                if s.marks & (1 << k) != 0 {
                    let at = self.group_slot(k);
                    enc::store_imm(&mut self.ops, R13, at, 1);
                }
            }
            if let Some(pc) = s.stop_at {
                // A stop request the store raised: stop before the next instruction
                // (the counters already count this one).
                self.stop_check::<E>(pc, 0);
            }
            self.count::<E>(pending, false);
            if let Access::Load { dst, .. } = s.access {
                if dst != RDX {
                    dynasm!(self.ops ; .arch x64 ; mov Rq(dst), rdx);
                }
            }
            dynasm!(self.ops ; .arch x64 ; jmp =>done);
        }
    }
}
