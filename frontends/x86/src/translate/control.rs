//! Control transfers: JMP, Jcc, LOOP/JCXZ, CALL, RET (near and far), IRET.
//!
//! Near branch targets come from iced (already truncated to the operand size, so IP
//! wraps at 16 bits in 16-bit code). Far transfers in real and V86 mode are done
//! inline (CS = selector, base = selector << 4); in protected and long mode they are
//! [`SysHelper`] calls that set CS:RIP themselves and end the block with `Sync`.

use super::{Flow, Tr};
use crate::helpers::integer::IntHelper;
use crate::helpers::system::SysHelper;
use iced_x86::{Code, ConditionCode, Mnemonic, OpKind};
use vireo_core::cpu::sreg;
use vireo_core::ir::{BinOp, Cond, ExitKind, Size, Tail, Temp};

impl Tr {
    /// Far pointer operand: (selector, offset, operand size).
    fn far_operand(&mut self) -> (Temp, Temp, Size) {
        match self.i.op_kind(0) {
            OpKind::FarBranch16 => (
                self.b.konst(u64::from(self.i.far_branch_selector())),
                self.b.konst(u64::from(self.i.far_branch16())),
                Size::B16,
            ),
            OpKind::FarBranch32 => (
                self.b.konst(u64::from(self.i.far_branch_selector())),
                self.b.konst(u64::from(self.i.far_branch32())),
                Size::B32,
            ),
            _ => {
                let total = self.i.memory_size().size();
                let size = Size::from_bytes(total.saturating_sub(2)).unwrap_or(Size::B16);
                let addr = self.mem_addr(total as u64, false);
                let mmu = self.m.mmu();
                let off = self.b.load(addr, size, false, mmu);
                let a2 = self
                    .b
                    .bini(BinOp::Add, Size::B64, addr, size.bytes() as u64);
                let sel = self.b.load(a2, Size::B16, false, mmu);
                (sel, off, size)
            }
        }
    }

    /// Real/V86 mode far transfer target: CS = `sel`, IP = `off`.
    fn real_far_to(&mut self, sel: Temp, off: Temp) -> Flow {
        let k = self.b.konst(sreg::CS as u64);
        self.int(IntHelper::LoadSegReal, &[k, sel], false);
        self.exit_indirect(off);
        Flow::End
    }

    fn far_ok_here(&self) -> bool {
        self.m.real() || self.m.vm86
    }

    pub(super) fn jmp(&mut self) -> Flow {
        match self.i.op_kind(0) {
            OpKind::NearBranch16 | OpKind::NearBranch32 | OpKind::NearBranch64 => {
                let t = self.i.near_branch_target();
                if t > self.next_pc {
                    // Forward: the block goes on at the target (the block loop ends
                    // it there if the target is on another page). PCs only grow
                    // along a block, so no instruction is translated twice.
                    self.next_pc = t;
                    return Flow::Next;
                }
                self.exit_to(t);
                Flow::End
            }
            OpKind::Register => {
                let size = self.op_size(0);
                let o = self.operand(0, false);
                let v = self.read(o, size);
                self.exit_indirect(v);
                Flow::End
            }
            OpKind::Memory if !is_far_mem(self.i.code()) => {
                let size = self.op_size(0);
                let o = self.operand(0, false);
                let v = self.read(o, size);
                self.exit_indirect(v);
                Flow::End
            }
            _ => {
                let (sel, off, size) = self.far_operand();
                if self.far_ok_here() {
                    return self.real_far_to(sel, off);
                }
                let bits = self.b.konst(u64::from(size.bits()));
                self.sys(SysHelper::FarJmp, &[sel, off, bits], false);
                self.sync()
            }
        }
    }

    pub(super) fn call(&mut self) -> Flow {
        match self.i.op_kind(0) {
            OpKind::NearBranch16 | OpKind::NearBranch32 | OpKind::NearBranch64 => {
                let size = self.call_size();
                let t = self.i.near_branch_target();
                let ret = self.b.konst(self.next_pc);
                self.push(ret, size);
                self.exit_to(t);
                self.b.set_tail(Tail::Call { ret: self.next_pc });
                Flow::End
            }
            OpKind::Register => self.call_indirect(),
            OpKind::Memory if !is_far_mem(self.i.code()) => self.call_indirect(),
            _ => {
                let (sel, off, size) = self.far_operand();
                if self.far_ok_here() {
                    let cs = self.read_sel(sreg::CS as u8);
                    let sp = self.sp();
                    let sp1 = self.push_at(sp, cs, size);
                    let ret = self.b.konst(self.next_pc);
                    let sp2 = self.push_at(sp1, ret, size);
                    self.set_sp(sp2);
                    return self.real_far_to(sel, off);
                }
                let bits = self.b.konst(u64::from(size.bits()));
                let next = self.b.konst(self.next_pc);
                self.sys(SysHelper::FarCall, &[sel, off, bits, next], false);
                self.sync()
            }
        }
    }

    fn call_size(&self) -> Size {
        Size::from_bytes(self.i.stack_pointer_increment().unsigned_abs() as usize).unwrap_or(
            match self.m.bits {
                64 => Size::B64,
                32 => Size::B32,
                _ => Size::B16,
            },
        )
    }

    fn call_indirect(&mut self) -> Flow {
        let size = self.op_size(0);
        let o = self.operand(0, false);
        let target = self.read(o, size);
        let ret = self.b.konst(self.next_pc);
        self.push(ret, size);
        self.exit_indirect(target);
        self.b.set_tail(Tail::Call { ret: self.next_pc });
        Flow::End
    }

    pub(super) fn ret(&mut self) -> Flow {
        use Code as C;
        let code = self.i.code();
        let (size, far) = match code {
            C::Retnw | C::Retnw_imm16 => (Size::B16, false),
            C::Retnd | C::Retnd_imm16 => (Size::B32, false),
            C::Retnq | C::Retnq_imm16 => (Size::B64, false),
            C::Retfw | C::Retfw_imm16 => (Size::B16, true),
            C::Retfd | C::Retfd_imm16 => (Size::B32, true),
            _ => (Size::B64, true),
        };
        let imm = if self.i.op_count() > 0 {
            self.i.immediate(0) & 0xffff
        } else {
            0
        };
        let st = self.m.stack;
        if !far {
            let sp = self.sp();
            let (v, nsp) = self.pop_at(sp, size);
            let nsp = self.b.bini(BinOp::Add, st, nsp, imm);
            self.set_sp(nsp);
            self.exit_indirect(v);
            self.b.set_tail(Tail::Return);
            return Flow::End;
        }
        if self.far_ok_here() {
            let sp = self.sp();
            let (ip, sp1) = self.pop_at(sp, size);
            let (cs, sp2) = self.pop_at(sp1, size);
            let cs = self.b.ext(cs, Size::B16, false);
            let nsp = self.b.bini(BinOp::Add, st, sp2, imm);
            self.set_sp(nsp);
            return self.real_far_to(cs, ip);
        }
        let bits = self.b.konst(u64::from(size.bits()));
        let k = self.b.konst(imm);
        self.sys(SysHelper::FarRet, &[bits, k], false);
        self.sync()
    }

    pub(super) fn iret(&mut self) -> Flow {
        let bits = match self.i.code() {
            Code::Iretw => 16,
            Code::Iretd => 32,
            _ => 64,
        };
        let k = self.b.konst(bits);
        // `Indirect`: the helper sets the lookup guard for the new state and, when an
        // interrupt or NMI may now be delivered, a chain guard (`X86Cpu::irq_window`).
        self.sys(SysHelper::Iret, &[k], false);
        self.b.exit(ExitKind::Indirect);
        Flow::End
    }

    /// Jcc. A forward branch (the fall-through is the likely way, as static
    /// prediction has it) leaves the block only if taken: the block goes on with the
    /// next instruction, one transition fewer where the branch falls through, and
    /// the flags state the branch read still known. A backward branch (a loop) ends
    /// the block.
    pub(super) fn jcc(&mut self) -> Flow {
        let (cc, target) = (self.i.condition_code(), self.i.near_branch_target());
        match negated(cc) {
            Some(nc) if target > self.next_pc && self.side_exits < super::MAX_SIDE_EXITS => {
                self.side_exits += 1;
                let c = self.cond(nc);
                let on = self.b.label();
                self.b.br_if(c, on);
                self.exit_to(target);
                self.b.set_label(on);
                Flow::Next
            }
            _ => {
                let c = self.cond(cc);
                self.branch(c, target)
            }
        }
    }

    /// Two-way exit: to `target` if `c != 0`, else to the next instruction.
    fn branch(&mut self, c: Temp, target: u64) -> Flow {
        let taken = self.b.label();
        self.b.br_if(c, taken);
        self.exit_to(self.next_pc);
        self.b.set_label(taken);
        self.exit_to(target);
        Flow::End
    }

    /// LOOP, LOOPE, LOOPNE, JCXZ, JECXZ, JRCXZ (count register by address size).
    pub(super) fn loop_(&mut self) -> Flow {
        let m = self.i.mnemonic();
        let target = self.i.near_branch_target();
        let asize = match m {
            Mnemonic::Jcxz => Size::B16,
            Mnemonic::Jecxz => Size::B32,
            Mnemonic::Jrcxz => Size::B64,
            _ => self.asize,
        };
        let saved = self.asize;
        self.asize = asize;
        let cx = self.get_areg(1);
        let z = self.b.konst(0);
        let c = if matches!(m, Mnemonic::Jcxz | Mnemonic::Jecxz | Mnemonic::Jrcxz) {
            self.b.setcond(Cond::Eq, Size::B64, cx, z)
        } else {
            let zf = match m {
                Mnemonic::Loope => Some(self.cond(ConditionCode::e)),
                Mnemonic::Loopne => Some(self.cond(ConditionCode::ne)),
                _ => None,
            };
            let n = self.b.bini(BinOp::Sub, asize, cx, 1);
            self.set_areg(1, n);
            let nz = self.b.setcond(Cond::Ne, Size::B64, n, z);
            match zf {
                Some(f) => self.b.bin(BinOp::And, Size::B64, nz, f),
                None => nz,
            }
        };
        self.asize = saved;
        self.branch(c, target)
    }
}

/// The condition that holds exactly when `cc` does not (`None` for no condition).
fn negated(cc: ConditionCode) -> Option<ConditionCode> {
    use ConditionCode as C;
    Some(match cc {
        C::o => C::no,
        C::no => C::o,
        C::b => C::ae,
        C::ae => C::b,
        C::e => C::ne,
        C::ne => C::e,
        C::be => C::a,
        C::a => C::be,
        C::s => C::ns,
        C::ns => C::s,
        C::p => C::np,
        C::np => C::p,
        C::l => C::ge,
        C::ge => C::l,
        C::le => C::g,
        C::g => C::le,
        C::None => return None,
    })
}

fn is_far_mem(c: Code) -> bool {
    matches!(
        c,
        Code::Jmp_m1616
            | Code::Jmp_m1632
            | Code::Jmp_m1664
            | Code::Call_m1616
            | Code::Call_m1632
            | Code::Call_m1664
    )
}
