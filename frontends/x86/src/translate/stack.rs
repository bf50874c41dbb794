//! Stack instructions: PUSH/POP (registers, memory, immediates, segment registers),
//! PUSHA/POPA, PUSHF/POPF, ENTER/LEAVE, and segment-register loads.
//!
//! The stack pointer width is SS.B (64 in 64-bit mode); stores come before the
//! stack-pointer update, so a faulting push or pop leaves rSP unchanged.

use super::operand::sreg_index;
use super::{Flow, Tr};
use crate::helpers::integer::IntHelper;
use crate::helpers::system::SysHelper;
use iced_x86::{Code, OpKind};
use vireo_core::cpu::sreg;
use vireo_core::ir::{BinOp, Size, Temp};

impl Tr {
    /// rSP at the stack width.
    pub fn sp(&mut self) -> Temp {
        let s = self.m.stack;
        self.get_reg(4, s)
    }

    pub fn set_sp(&mut self, v: Temp) {
        let s = self.m.stack;
        self.set_reg(4, s, v);
    }

    /// Linear address of stack offset `off`.
    pub fn stack_addr(&mut self, off: Temp, len: u64, write: bool) -> Temp {
        let saved = self.asize;
        self.asize = self.m.stack;
        let a = self.linear(sreg::SS as u8, off, len, write);
        self.asize = saved;
        a
    }

    /// Pushes `v` (`size`) below stack offset `sp`; returns the new offset (rSP is
    /// not written).
    pub fn push_at(&mut self, sp: Temp, v: Temp, size: Size) -> Temp {
        let st = self.m.stack;
        let nsp = self.b.bini(BinOp::Sub, st, sp, size.bytes() as u64);
        let a = self.stack_addr(nsp, size.bytes() as u64, true);
        let mmu = self.m.mmu();
        self.b.store(a, v, size, mmu);
        nsp
    }

    /// Pops `size` bytes at stack offset `sp`: (value, new offset).
    pub fn pop_at(&mut self, sp: Temp, size: Size) -> (Temp, Temp) {
        let a = self.stack_addr(sp, size.bytes() as u64, false);
        let mmu = self.m.mmu();
        let v = self.b.load(a, size, false, mmu);
        let st = self.m.stack;
        let nsp = self.b.bini(BinOp::Add, st, sp, size.bytes() as u64);
        (v, nsp)
    }

    /// Push with rSP update.
    pub fn push(&mut self, v: Temp, size: Size) {
        let sp = self.sp();
        let nsp = self.push_at(sp, v, size);
        self.set_sp(nsp);
    }

    /// The operand size of a stack instruction from its rSP increment.
    fn stack_opsize(&self) -> Size {
        let inc = self.i.stack_pointer_increment().unsigned_abs() as usize;
        Size::from_bytes(inc).unwrap_or(match self.m.bits {
            64 => Size::B64,
            32 => Size::B32,
            _ => Size::B16,
        })
    }

    /// Loads segment register `s` with selector `sel`. Returns true if the block must
    /// end after the instruction (`Global::Pc` is then already the next PC).
    pub fn load_sreg(&mut self, s: u8, sel: Temp) -> bool {
        if usize::from(s) == sreg::CS {
            self.ud();
            return true;
        }
        if self.m.real() || self.m.vm86 {
            let k = self.b.konst(u64::from(s));
            self.int(IntHelper::LoadSegReal, &[k, sel], false);
            if usize::from(s) == sreg::SS {
                let pc = self.b.konst(self.next_pc);
                self.b.set(vireo_core::ir::Global::Pc, pc);
                return true;
            }
            false
        } else {
            let k = self.b.konst(u64::from(s));
            self.sys(SysHelper::LoadSeg, &[k, sel], false);
            true
        }
    }

    /// The selector of segment register `s`.
    pub fn read_sel(&mut self, s: u8) -> Temp {
        let k = self.b.konst(u64::from(s));
        self.int(IntHelper::ReadSel, &[k], true).unwrap_or(k)
    }

    pub(super) fn push_insn(&mut self) -> Flow {
        let size = self.stack_opsize();
        if self.i.op_kind(0) == OpKind::Register {
            if let Some(s) = sreg_index(self.i.op_register(0)) {
                // Recent CPUs write only the selector word of a wider push.
                let v = self.read_sel(s);
                let sp = self.sp();
                let st = self.m.stack;
                let nsp = self.b.bini(BinOp::Sub, st, sp, size.bytes() as u64);
                let a = self.stack_addr(nsp, size.bytes() as u64, true);
                let mmu = self.m.mmu();
                self.b.store(a, v, Size::B16, mmu);
                self.set_sp(nsp);
                return Flow::Next;
            }
        }
        let o = self.operand(0, false);
        let v = self.read(o, size);
        self.push(v, size);
        Flow::Next
    }

    pub(super) fn pop_insn(&mut self) -> Flow {
        let size = self.stack_opsize();
        let sp = self.sp();
        let (v, nsp) = self.pop_at(sp, size);
        match self.i.op_kind(0) {
            OpKind::Register => {
                let r = self.i.op_register(0);
                if let Some(s) = sreg_index(r) {
                    let end = self.load_sreg(s, v);
                    self.set_sp(nsp);
                    return if end { self.sync() } else { Flow::Next };
                }
                self.set_sp(nsp);
                let o = self.operand(0, true);
                self.write(o, size, v);
            }
            _ => {
                self.sp_adjust = size.bytes() as u64;
                let o = self.operand(0, true);
                self.sp_adjust = 0;
                self.write(o, size, v);
                self.set_sp(nsp);
            }
        }
        Flow::Next
    }

    pub(super) fn pusha(&mut self) -> Flow {
        let size = if self.i.code() == Code::Pushad {
            Size::B32
        } else {
            Size::B16
        };
        let mut sp = self.sp();
        let orig = self.get_reg(4, size);
        for r in 0..8u8 {
            let v = if r == 4 { orig } else { self.get_reg(r, size) };
            sp = self.push_at(sp, v, size);
        }
        self.set_sp(sp);
        Flow::Next
    }

    pub(super) fn popa(&mut self) -> Flow {
        let size = if self.i.code() == Code::Popad {
            Size::B32
        } else {
            Size::B16
        };
        let mut sp = self.sp();
        let mut vals = Vec::with_capacity(8);
        for _ in 0..8 {
            let (v, nsp) = self.pop_at(sp, size);
            vals.push(v);
            sp = nsp;
        }
        for (n, v) in vals.into_iter().enumerate() {
            let r = 7 - n as u8;
            if r != 4 {
                self.set_reg(r, size, v);
            }
        }
        self.set_sp(sp);
        Flow::Next
    }

    pub(super) fn pushf(&mut self) -> Flow {
        let size = self.stack_opsize();
        let bits = self.b.konst(u64::from(size.bits()));
        let v = self.sys(SysHelper::Pushf, &[bits], true).unwrap_or(bits);
        self.push(v, size);
        Flow::Next
    }

    pub(super) fn popf(&mut self) -> Flow {
        let size = self.stack_opsize();
        let sp = self.sp();
        let (v, nsp) = self.pop_at(sp, size);
        let bits = self.b.konst(u64::from(size.bits()));
        self.sys(SysHelper::Popf, &[v, bits], false);
        self.set_sp(nsp);
        self.sync()
    }

    fn frame_opsize(&self, w: Code, d: Code) -> Size {
        let c = self.i.code();
        if c == w {
            Size::B16
        } else if c == d {
            Size::B32
        } else {
            Size::B64
        }
    }

    pub(super) fn enter(&mut self) -> Flow {
        let size = self.frame_opsize(Code::Enterw_imm16_imm8, Code::Enterd_imm16_imm8);
        let st = self.m.stack;
        let alloc = self.i.immediate(0) & 0xffff;
        let level = self.i.immediate(1) & 31;
        let sp0 = self.sp();
        let bp0 = self.get_reg(5, size);
        let mut sp = self.push_at(sp0, bp0, size);
        let frame = sp;
        let mut bp = self.get_reg(5, st);
        for _ in 1..level {
            bp = self.b.bini(BinOp::Sub, st, bp, size.bytes() as u64);
            let a = self.stack_addr(bp, size.bytes() as u64, false);
            let mmu = self.m.mmu();
            let v = self.b.load(a, size, false, mmu);
            sp = self.push_at(sp, v, size);
        }
        if level > 0 {
            sp = self.push_at(sp, frame, size);
        }
        let nsp = self.b.bini(BinOp::Sub, st, sp, alloc);
        self.set_reg(5, st, frame);
        self.set_sp(nsp);
        Flow::Next
    }

    pub(super) fn leave(&mut self) -> Flow {
        let size = self.frame_opsize(Code::Leavew, Code::Leaved);
        let st = self.m.stack;
        let bp = self.get_reg(5, st);
        let (v, nsp) = self.pop_at(bp, size);
        self.set_sp(nsp);
        self.set_reg(5, size, v);
        Flow::Next
    }
}
