//! MUL/IMUL (one, two and three operands), DIV/IDIV (helper, #DE), BCD adjustments.
//!
//! MUL/IMUL set CF = OF = "the high half is significant"; SF, ZF, PF come from the
//! low half of the result (undefined by the SDM), AF is cleared.

use super::{Flow, Tr};
use crate::flags::CcKind;
use crate::helpers::integer::IntHelper;
use iced_x86::Mnemonic;
use vireo_core::ir::{BinOp, Cond, Size};

impl Tr {
    pub(super) fn mul(&mut self) -> Flow {
        let signed = self.i.mnemonic() == Mnemonic::Imul;
        let n = self.i.op_count();
        if n == 1 {
            let size = self.op_size(0);
            let src = self.operand(0, false);
            let v = self.read(src, size);
            let a = self.get_reg(0, size);
            if size == Size::B8 {
                let (x, y) = (self.b.ext(a, size, signed), self.b.ext(v, size, signed));
                let p = self.b.bin(BinOp::Mul, Size::B16, x, y);
                self.set_reg(0, Size::B16, p);
                let lo = self.b.ext(p, Size::B8, false);
                let ovf = if signed {
                    let se = self.b.ext(p, Size::B8, true);
                    self.b.setcond(Cond::Ne, Size::B16, se, p)
                } else {
                    let hi = self.b.bini(BinOp::Shr, Size::B16, p, 8);
                    let z = self.b.konst(0);
                    self.b.setcond(Cond::Ne, Size::B16, hi, z)
                };
                self.set_cc(CcKind::Mul, size, lo, ovf, None);
                return Flow::Next;
            }
            let lo = self.b.bin(BinOp::Mul, size, a, v);
            let hop = if signed { BinOp::MulHiS } else { BinOp::MulHiU };
            let hi = self.b.bin(hop, size, a, v);
            let ovf = if signed {
                let sign = self
                    .b
                    .bini(BinOp::Sar, size, lo, u64::from(size.bits() - 1));
                self.b.setcond(Cond::Ne, size, hi, sign)
            } else {
                let z = self.b.konst(0);
                self.b.setcond(Cond::Ne, size, hi, z)
            };
            self.set_reg(0, size, lo);
            self.set_reg(2, size, hi);
            self.set_cc(CcKind::Mul, size, lo, ovf, None);
            return Flow::Next;
        }
        // IMUL r, r/m (, imm).
        let size = self.op_size(0);
        let (x, y) = if n == 2 {
            let d = self.operand(0, false);
            let s = self.operand(1, false);
            (self.read(d, size), self.read(s, size))
        } else {
            let s = self.operand(1, false);
            let im = self.operand(2, false);
            (self.read(s, size), self.read(im, size))
        };
        let lo = self.b.bin(BinOp::Mul, size, x, y);
        let hi = self.b.bin(BinOp::MulHiS, size, x, y);
        let sign = self
            .b
            .bini(BinOp::Sar, size, lo, u64::from(size.bits() - 1));
        let ovf = self.b.setcond(Cond::Ne, size, hi, sign);
        let dst = self.operand(0, true);
        self.write(dst, size, lo);
        self.set_cc(CcKind::Mul, size, lo, ovf, None);
        Flow::Next
    }

    pub(super) fn div(&mut self) -> Flow {
        let signed = self.i.mnemonic() == Mnemonic::Idiv;
        let size = self.op_size(0);
        let src = self.operand(0, false);
        let v = self.read(src, size);
        let code = self
            .b
            .konst(crate::flags::size_code(size) | if signed { 4 } else { 0 });
        self.int(IntHelper::Div, &[v, code], false);
        self.cc.known = None;
        Flow::Next
    }

    /// DAA (0), DAS (1), AAA (2), AAS (3).
    pub(super) fn bcd(&mut self, op: u64) -> Flow {
        let k = self.b.konst(op);
        self.int(IntHelper::Bcd, &[k], false);
        self.cc.known = None;
        Flow::Next
    }

    /// AAM / AAD with their immediate base.
    pub(super) fn aam(&mut self) -> Flow {
        let op = self.b.konst(u64::from(self.i.mnemonic() == Mnemonic::Aad));
        let imm = self.b.konst(self.i.immediate(0) & 0xff);
        self.int(IntHelper::AamAad, &[op, imm], false);
        self.cc.known = None;
        Flow::Next
    }
}
