//! Shifts and rotates: SHL/SAL/SHR/SAR, ROL/ROR, RCL/RCR, SHLD/SHRD.
//!
//! Counts are masked to 5 bits (6 for 64-bit operands); a masked count of 0 leaves
//! the flags alone (the translator branches over the flag update when the count is
//! only known at run time). CF is the last bit shifted out; OF is defined for count 1
//! and computed the same way for larger counts (as Intel hardware does for SHL/SHR).
//! AF is left clear (undefined).

use super::operand::Opnd;
use super::{Flow, Tr};
use crate::flags::CcKind;
use crate::helpers::integer::IntHelper;
use iced_x86::{Mnemonic, OpKind};
use vireo_core::cpu::flags::{CF, OF};
use vireo_core::ir::{BinOp, Cond, Size, Temp};

impl Tr {
    /// The masked count of operand `n`: a temp, and the constant when known.
    fn count(&mut self, n: u32, size: Size) -> (Temp, Option<u64>) {
        let mask = if size == Size::B64 { 0x3f } else { 0x1f };
        match self.i.op_kind(n) {
            OpKind::Register => {
                let cl = self.get_reg(1, Size::B8);
                (self.b.bini(BinOp::And, Size::B64, cl, mask), None)
            }
            _ => {
                let c = self.i.immediate(n) & mask;
                (self.b.konst(c), Some(c))
            }
        }
    }

    /// Emits the flag update `f` only when the count is non-zero.
    fn with_nonzero_count(&mut self, cnt: Temp, known: Option<u64>, f: impl FnOnce(&mut Tr)) {
        match known {
            Some(0) => {}
            Some(_) => f(self),
            None => {
                let skip = self.b.label();
                let z = self.b.konst(0);
                let is0 = self.b.setcond(Cond::Eq, Size::B64, cnt, z);
                self.b.br_if(is0, skip);
                f(self);
                self.b.set_label(skip);
                self.cc.known = None;
            }
        }
    }

    /// Writes a shift result: memory is not written for a constant count of 0.
    fn shift_writeback(&mut self, dst: Opnd, size: Size, r: Temp, known: Option<u64>) {
        if known == Some(0) && matches!(dst, Opnd::Mem(_)) {
            return;
        }
        self.write(dst, size, r);
    }

    pub(super) fn shift(&mut self) -> Flow {
        let m = self.i.mnemonic();
        let size = self.op_size(0);
        let dst = self.operand(0, true);
        let val = self.read(dst, size);
        let (cnt, known) = self.count(1, size);
        let one = self.b.konst(1);
        let cm1 = self.b.bin(BinOp::Sub, Size::B64, cnt, one);
        match m {
            Mnemonic::Shl | Mnemonic::Sal | Mnemonic::Shr | Mnemonic::Sar => {
                let (r, src) = match m {
                    Mnemonic::Shr => {
                        let r = self.b.bin(BinOp::Shr, Size::B64, val, cnt);
                        let s = self.b.bin(BinOp::Shr, Size::B64, val, cm1);
                        (r, s)
                    }
                    Mnemonic::Sar => {
                        let sv = self.b.ext(val, size, true);
                        let r = self.b.bin(BinOp::Sar, Size::B64, sv, cnt);
                        let s = self.b.bin(BinOp::Sar, Size::B64, sv, cm1);
                        (self.b.ext(r, size, false), self.b.ext(s, size, false))
                    }
                    _ => {
                        let r = self.b.bin(BinOp::Shl, Size::B64, val, cnt);
                        let s = self.b.bin(BinOp::Shl, Size::B64, val, cm1);
                        (self.b.ext(r, size, false), self.b.ext(s, size, false))
                    }
                };
                let r = self.b.ext(r, size, false);
                self.shift_writeback(dst, size, r, known);
                let kind = if matches!(m, Mnemonic::Shr | Mnemonic::Sar) {
                    CcKind::Sar
                } else {
                    CcKind::Shl
                };
                self.with_nonzero_count(cnt, known, |t| t.set_cc(kind, size, r, src, None));
            }
            Mnemonic::Rol | Mnemonic::Ror => {
                let op = if m == Mnemonic::Rol {
                    BinOp::Rol
                } else {
                    BinOp::Ror
                };
                let r = self.b.bin(op, size, val, cnt);
                let f = if known == Some(0) {
                    None
                } else {
                    Some(self.eflags_but_cf_of())
                };
                self.shift_writeback(dst, size, r, known);
                self.with_nonzero_count(cnt, known, |t| {
                    let f = f.unwrap_or(r);
                    let top = u64::from(size.bits() - 1);
                    let msb = t.b.bini(BinOp::Shr, Size::B64, r, top);
                    let msb = t.b.bini(BinOp::And, Size::B64, msb, 1);
                    let (cf, other) = if m == Mnemonic::Rol {
                        (t.b.bini(BinOp::And, Size::B64, r, 1), msb)
                    } else {
                        let b2 = t.b.bini(BinOp::Shr, Size::B64, r, top - 1);
                        (msb, t.b.bini(BinOp::And, Size::B64, b2, 1))
                    };
                    let of = t.b.bin(BinOp::Xor, Size::B64, cf, other);
                    let of = t.b.bini(BinOp::Shl, Size::B64, of, 11);
                    let keep = t.b.bini(BinOp::And, Size::B64, f, !(CF | OF));
                    let nf = t.b.bin(BinOp::Or, Size::B64, keep, cf);
                    let nf = t.b.bin(BinOp::Or, Size::B64, nf, of);
                    t.set_eflags(nf);
                });
            }
            _ => {
                // RCL / RCR.
                let code = crate::flags::size_code(size) | if m == Mnemonic::Rcr { 4 } else { 0 };
                let c = self.b.konst(code);
                let r = self
                    .int(IntHelper::Rcx, &[val, cnt, c], true)
                    .unwrap_or(val);
                self.cc.known = None;
                self.shift_writeback(dst, size, r, known);
            }
        }
        Flow::Next
    }

    /// SHLD, SHRD.
    pub(super) fn shxd(&mut self) -> Flow {
        let left = self.i.mnemonic() == Mnemonic::Shld;
        let size = self.op_size(0);
        let dst = self.operand(0, true);
        let d = self.read(dst, size);
        let so = self.operand(1, false);
        let s = self.read(so, size);
        let (cnt, known) = self.count(2, size);
        let one = self.b.konst(1);
        let cm1 = self.b.bin(BinOp::Sub, Size::B64, cnt, one);
        let (r, src) = if size == Size::B64 {
            let k64 = self.b.konst(64);
            let k65 = self.b.konst(65);
            let inv = self.b.bin(BinOp::Sub, Size::B64, k64, cnt);
            let inv1 = self.b.bin(BinOp::Sub, Size::B64, k65, cnt);
            let (op, back) = if left {
                (BinOp::Shl, BinOp::Shr)
            } else {
                (BinOp::Shr, BinOp::Shl)
            };
            let a = self.b.bin(op, Size::B64, d, cnt);
            let bb = self.b.bin(back, Size::B64, s, inv);
            let r = self.b.bin(BinOp::Or, Size::B64, a, bb);
            // A count of 0 leaves the destination as it was (the IR's shift by 64 - 0
            // is a shift by 0 and would bring the whole source in).
            let z = self.b.konst(0);
            let is0 = self.b.setcond(Cond::Eq, Size::B64, cnt, z);
            let r = self.b.select(is0, d, r);
            let a1 = self.b.bin(op, Size::B64, d, cm1);
            let b1 = self.b.bin(back, Size::B64, s, inv1);
            let s1 = self.b.bin(BinOp::Or, Size::B64, a1, b1);
            let is1 = self.b.setcond(Cond::Eq, Size::B64, cnt, one);
            let src = self.b.select(is1, d, s1);
            (r, src)
        } else {
            // Build a 64-bit window: SHLD d:s(:d) shifted left, SHRD (d:)s:d right.
            let w = size.bits() as u64;
            let x = if size == Size::B32 {
                if left {
                    let hi = self.b.bini(BinOp::Shl, Size::B64, d, 32);
                    self.b.bin(BinOp::Or, Size::B64, hi, s)
                } else {
                    let hi = self.b.bini(BinOp::Shl, Size::B64, s, 32);
                    self.b.bin(BinOp::Or, Size::B64, hi, d)
                }
            } else if left {
                let a = self.b.bini(BinOp::Shl, Size::B64, d, 48);
                let bb = self.b.bini(BinOp::Shl, Size::B64, s, 32);
                let c = self.b.bini(BinOp::Shl, Size::B64, d, 16);
                let t = self.b.bin(BinOp::Or, Size::B64, a, bb);
                self.b.bin(BinOp::Or, Size::B64, t, c)
            } else {
                let bb = self.b.bini(BinOp::Shl, Size::B64, s, 16);
                let c = self.b.bini(BinOp::Shl, Size::B64, d, 32);
                let t = self.b.bin(BinOp::Or, Size::B64, d, bb);
                self.b.bin(BinOp::Or, Size::B64, t, c)
            };
            if left {
                let y = self.b.bin(BinOp::Shl, Size::B64, x, cnt);
                let r = self.b.bini(BinOp::Shr, Size::B64, y, 64 - w);
                let y1 = self.b.bin(BinOp::Shl, Size::B64, x, cm1);
                let s1 = self.b.bini(BinOp::Shr, Size::B64, y1, 64 - w);
                (r, s1)
            } else {
                let y = self.b.bin(BinOp::Shr, Size::B64, x, cnt);
                let y1 = self.b.bin(BinOp::Shr, Size::B64, x, cm1);
                (self.b.ext(y, size, false), self.b.ext(y1, size, false))
            }
        };
        let r = self.b.ext(r, size, false);
        self.shift_writeback(dst, size, r, known);
        let kind = if left { CcKind::Shl } else { CcKind::Sar };
        self.with_nonzero_count(cnt, known, |t| t.set_cc(kind, size, r, src, None));
        Flow::Next
    }
}
