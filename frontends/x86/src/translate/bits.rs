//! Bit instructions: BT/BTS/BTR/BTC, BSF/BSR, TZCNT/LZCNT, POPCNT, CRC32 and BOUND.
//!
//! Flags: BT* set CF and keep every other flag (ZF is architecturally unchanged, the
//! rest undefined). BSF/BSR set ZF from the source and CF = OF = 0, SF/PF from the
//! source (undefined); with a zero source the destination is left unchanged.
//! TZCNT/LZCNT set CF (source zero) and ZF (result zero), the others cleared.

use super::operand::{sreg_index, Opnd};
use super::{Flow, Tr};
use crate::flags::CcKind;
use crate::helpers::integer::IntHelper;
use iced_x86::{Mnemonic, OpKind};
use vireo_core::cpu::flags::{CF, ZF};
use vireo_core::cpu::sreg;
use vireo_core::ir::{BinOp, Cond, Size, UnOp};

impl Tr {
    pub(super) fn bt(&mut self) -> Flow {
        let m = self.i.mnemonic();
        let size = self.op_size(0);
        let bits = u64::from(size.bits());
        let write = m != Mnemonic::Bt;
        let imm = self.i.op_kind(1) != OpKind::Register;
        let off = if imm {
            self.b.konst(self.i.immediate(1) & (bits - 1))
        } else {
            let o = self.operand(1, false);
            self.read(o, size)
        };
        let dst = if self.i.op_kind(0) == OpKind::Memory && !imm {
            // The bit offset addresses memory beyond the operand (signed).
            let so = self.b.ext(off, size, true);
            let words = self
                .b
                .bini(BinOp::Sar, Size::B64, so, u64::from(bits.trailing_zeros()));
            let bytes = self.b.bini(
                BinOp::Shl,
                Size::B64,
                words,
                u64::from(size.bytes().trailing_zeros()),
            );
            let ea = self.ea();
            let sum = self.b.bin(BinOp::Add, Size::B64, ea, bytes);
            let ea2 = if self.asize == Size::B64 {
                sum
            } else {
                self.b.ext(sum, self.asize, false)
            };
            let seg = sreg_index(self.i.memory_segment()).unwrap_or(sreg::DS as u8);
            Opnd::Mem(self.linear(seg, ea2, size.bytes() as u64, write))
        } else {
            self.operand(0, write)
        };
        let bit = self.b.bini(BinOp::And, Size::B64, off, bits - 1);
        let v = self.read(dst, size);
        let sh = self.b.bin(BinOp::Shr, Size::B64, v, bit);
        let cf = self.b.bini(BinOp::And, Size::B64, sh, 1);
        if write {
            let one = self.b.konst(1);
            let mask = self.b.bin(BinOp::Shl, Size::B64, one, bit);
            let r = match m {
                Mnemonic::Bts => self.b.bin(BinOp::Or, size, v, mask),
                Mnemonic::Btr => {
                    let nm = self.b.un(UnOp::Not, Size::B64, mask);
                    self.b.bin(BinOp::And, size, v, nm)
                }
                _ => self.b.bin(BinOp::Xor, size, v, mask),
            };
            self.write(dst, size, r);
        }
        let f = self.eflags();
        let keep = self.b.bini(BinOp::And, Size::B64, f, !CF);
        let nf = self.b.bin(BinOp::Or, Size::B64, keep, cf);
        self.set_eflags(nf);
        Flow::Next
    }

    pub(super) fn bsf(&mut self) -> Flow {
        let size = self.op_size(0);
        let so = self.operand(1, false);
        let s = self.read(so, size);
        let r = if self.i.mnemonic() == Mnemonic::Bsf {
            self.b.un(UnOp::Ctz, size, s)
        } else {
            let c = self.b.un(UnOp::Clz, size, s);
            let top = self.b.konst(u64::from(size.bits() - 1));
            self.b.bin(BinOp::Sub, size, top, c)
        };
        let skip = self.b.label();
        let z = self.b.konst(0);
        let is0 = self.b.setcond(Cond::Eq, size, s, z);
        self.b.br_if(is0, skip);
        let dst = self.operand(0, true);
        self.write(dst, size, r);
        self.b.set_label(skip);
        self.set_cc(CcKind::Logic, size, s, s, None);
        Flow::Next
    }

    pub(super) fn tzcnt(&mut self) -> Flow {
        let size = self.op_size(0);
        let so = self.operand(1, false);
        let s = self.read(so, size);
        let op = if self.i.mnemonic() == Mnemonic::Tzcnt {
            UnOp::Ctz
        } else {
            UnOp::Clz
        };
        let r = self.b.un(op, size, s);
        let dst = self.operand(0, true);
        self.write(dst, size, r);
        let z = self.b.konst(0);
        let cf = self.b.setcond(Cond::Eq, size, s, z);
        let zf = self.b.setcond(Cond::Eq, size, r, z);
        let zf = self
            .b
            .bini(BinOp::Shl, Size::B64, zf, u64::from(ZF.trailing_zeros()));
        let nf = self.b.bin(BinOp::Or, Size::B64, cf, zf);
        self.set_eflags(nf);
        Flow::Next
    }

    pub(super) fn popcnt(&mut self) -> Flow {
        let size = self.op_size(0);
        let so = self.operand(1, false);
        let s = self.read(so, size);
        let r = self.b.un(UnOp::Popcnt, size, s);
        let dst = self.operand(0, true);
        self.write(dst, size, r);
        self.set_cc(CcKind::Popcnt, size, r, s, None);
        Flow::Next
    }

    /// CRC32 r32/r64, r/m8/16/32/64: the CRC-32C of the source continued from the low
    /// dword of the destination, written zero-extended. No flags, no SSE checks.
    pub(super) fn crc32(&mut self) -> Flow {
        let Some(g) = self.reg_op(0) else {
            return self.ud();
        };
        let size = self.op_size(1);
        let so = self.operand(1, false);
        let src = self.read(so, size);
        let crc = self.get_reg(g.idx, Size::B32);
        let n = self.b.konst(size.bytes() as u64);
        let Some(r) = self.int(IntHelper::Crc32, &[crc, src, n], true) else {
            return self.ud();
        };
        self.set_reg(g.idx, Size::B32, r);
        Flow::Next
    }

    /// BOUND: #BR (vector 5) when the signed index is outside [lower, upper].
    pub(super) fn bound(&mut self) -> Flow {
        let size = self.op_size(0);
        let Some(g) = self.reg_op(0) else {
            return self.ud();
        };
        if self.i.op_kind(1) != OpKind::Memory {
            return self.ud();
        }
        let idx = self.read_gpr(g);
        let addr = self.mem_addr(2 * size.bytes() as u64, false);
        let mmu = self.m.mmu();
        let lo = self.b.load(addr, size, false, mmu);
        let a2 = self
            .b
            .bini(BinOp::Add, Size::B32, addr, size.bytes() as u64);
        let hi = self.b.load(a2, size, false, mmu);
        let below = self.b.setcond(Cond::Lt, size, idx, lo);
        let above = self.b.setcond(Cond::Gt, size, idx, hi);
        let bad = self.b.bin(BinOp::Or, Size::B64, below, above);
        self.raise_if(bad, 5, false);
        Flow::Next
    }
}
