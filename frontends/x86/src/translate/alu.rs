//! Data movement and two-operand arithmetic: MOV family, ADD…CMP, TEST, INC/DEC,
//! NEG/NOT, XCHG, CMOVcc/SETcc, XADD, CMPXCHG*, BSWAP, MOVBE, flag instructions.
//!
//! Ordering rule for precise exceptions: every store comes before every register,
//! flag or global update of the instruction.

use super::operand::Opnd;
use super::{Flow, Tr, DF};
use crate::flags::CcKind;
use iced_x86::{Mnemonic, OpKind, Register};
use vireo_core::cpu::flags::{CF, OF, ZF};
use vireo_core::ir::{BinOp, Cond, Global, Size, UnOp};

impl Tr {
    /// ADD, OR, ADC, SBB, AND, SUB, XOR, CMP.
    pub(super) fn alu2(&mut self) -> Flow {
        let m = self.i.mnemonic();
        let size = self.op_size(0);
        let is_cmp = m == Mnemonic::Cmp;
        let dst = self.operand(0, !is_cmp);
        let src = self.operand(1, false);
        let a = self.read(dst, size);
        let b = self.read(src, size);
        let (r, kind, src2) = match m {
            Mnemonic::Add => (self.b.bin(BinOp::Add, size, a, b), CcKind::Add, None),
            Mnemonic::Adc => {
                let c = self.carry();
                let t = self.b.bin(BinOp::Add, size, a, b);
                (self.b.bin(BinOp::Add, size, t, c), CcKind::Adc, Some(c))
            }
            Mnemonic::Sbb => {
                let c = self.carry();
                let t = self.b.bin(BinOp::Sub, size, a, b);
                (self.b.bin(BinOp::Sub, size, t, c), CcKind::Sbb, Some(c))
            }
            Mnemonic::Sub | Mnemonic::Cmp => {
                (self.b.bin(BinOp::Sub, size, a, b), CcKind::Sub, None)
            }
            Mnemonic::And => (self.b.bin(BinOp::And, size, a, b), CcKind::Logic, None),
            Mnemonic::Or => (self.b.bin(BinOp::Or, size, a, b), CcKind::Logic, None),
            _ => (self.b.bin(BinOp::Xor, size, a, b), CcKind::Logic, None),
        };
        if !is_cmp {
            self.write(dst, size, r);
        }
        self.set_cc(kind, size, r, b, src2);
        if kind == CcKind::Sub {
            self.cc.first = Some(a);
        }
        Flow::Next
    }

    pub(super) fn test(&mut self) -> Flow {
        let size = self.op_size(0);
        let dst = self.operand(0, false);
        let src = self.operand(1, false);
        let a = self.read(dst, size);
        let b = self.read(src, size);
        let r = self.b.bin(BinOp::And, size, a, b);
        self.set_cc(CcKind::Logic, size, r, r, None);
        Flow::Next
    }

    pub(super) fn incdec(&mut self) -> Flow {
        let size = self.op_size(0);
        let dst = self.operand(0, true);
        let a = self.read(dst, size);
        let c = self.carry();
        let (op, kind) = if self.i.mnemonic() == Mnemonic::Inc {
            (BinOp::Add, CcKind::Inc)
        } else {
            (BinOp::Sub, CcKind::Dec)
        };
        let r = self.b.bini(op, size, a, 1);
        self.write(dst, size, r);
        self.set_cc(kind, size, r, c, None);
        Flow::Next
    }

    pub(super) fn neg(&mut self) -> Flow {
        let size = self.op_size(0);
        let dst = self.operand(0, true);
        let a = self.read(dst, size);
        let r = self.b.un(UnOp::Neg, size, a);
        self.write(dst, size, r);
        self.set_cc(CcKind::Sub, size, r, a, None);
        Flow::Next
    }

    pub(super) fn not(&mut self) -> Flow {
        let size = self.op_size(0);
        let dst = self.operand(0, true);
        let a = self.read(dst, size);
        let r = self.b.un(UnOp::Not, size, a);
        self.write(dst, size, r);
        Flow::Next
    }

    pub(super) fn mov(&mut self) -> Flow {
        let r0 = (self.i.op_kind(0) == OpKind::Register).then(|| self.i.op_register(0));
        let r1 = (self.i.op_kind(1) == OpKind::Register).then(|| self.i.op_register(1));
        let special = |r: Option<Register>| {
            r.is_some_and(|r| r.is_segment_register() || r.is_cr() || r.is_dr() || r.is_tr())
        };
        if special(r0) || special(r1) {
            return self.mov_special(r0, r1);
        }
        let size = self.op_size(0);
        let src = self.operand(1, false);
        let v = self.read(src, size);
        let dst = self.operand(0, true);
        self.write(dst, size, v);
        Flow::Next
    }

    /// MOVZX, MOVSX, MOVSXD.
    pub(super) fn movx(&mut self) -> Flow {
        let dsize = self.op_size(0);
        let ssize = self.op_size(1);
        let src = self.operand(1, false);
        let v = self.read(src, ssize);
        let signed = self.i.mnemonic() != Mnemonic::Movzx;
        let e = self.b.ext(v, ssize, signed);
        let dst = self.operand(0, true);
        self.write(dst, dsize, e);
        Flow::Next
    }

    pub(super) fn lea(&mut self) -> Flow {
        let size = self.op_size(0);
        let ea = self.ea();
        let dst = self.operand(0, true);
        self.write(dst, size, ea);
        Flow::Next
    }

    pub(super) fn xchg(&mut self) -> Flow {
        let size = self.op_size(0);
        let o0 = self.operand(0, true);
        let o1 = self.operand(1, true);
        let a = self.read(o0, size);
        let b = self.read(o1, size);
        if matches!(o1, Opnd::Mem(_)) {
            self.write(o1, size, a);
            self.write(o0, size, b);
        } else {
            self.write(o0, size, b);
            self.write(o1, size, a);
        }
        Flow::Next
    }

    pub(super) fn cmov(&mut self) -> Flow {
        let size = self.op_size(0);
        let c = self.cond(self.i.condition_code());
        let src = self.operand(1, false);
        let v = self.read(src, size);
        let dst = self.operand(0, true);
        let old = self.read(dst, size);
        let r = self.b.select(c, v, old);
        self.write(dst, size, r);
        Flow::Next
    }

    pub(super) fn setcc(&mut self) -> Flow {
        let c = self.cond(self.i.condition_code());
        let dst = self.operand(0, true);
        self.write(dst, Size::B8, c);
        Flow::Next
    }

    /// CBW, CWDE, CDQE.
    pub(super) fn cbw(&mut self) -> Flow {
        let (from, to) = match self.i.mnemonic() {
            Mnemonic::Cbw => (Size::B8, Size::B16),
            Mnemonic::Cwde => (Size::B16, Size::B32),
            _ => (Size::B32, Size::B64),
        };
        let v = self.get_reg(0, from);
        let e = self.b.ext(v, from, true);
        self.set_reg(0, to, e);
        Flow::Next
    }

    /// CWD, CDQ, CQO.
    pub(super) fn cwd(&mut self) -> Flow {
        let size = match self.i.mnemonic() {
            Mnemonic::Cwd => Size::B16,
            Mnemonic::Cdq => Size::B32,
            _ => Size::B64,
        };
        let v = self.get_reg(0, size);
        let r = self.b.bini(BinOp::Sar, size, v, u64::from(size.bits() - 1));
        self.set_reg(2, size, r);
        Flow::Next
    }

    pub(super) fn xadd(&mut self) -> Flow {
        let size = self.op_size(0);
        let dst = self.operand(0, true);
        let src = self.operand(1, true);
        let a = self.read(dst, size);
        let b = self.read(src, size);
        let r = self.b.bin(BinOp::Add, size, a, b);
        if matches!(dst, Opnd::Mem(_)) {
            self.write(dst, size, r);
            self.write(src, size, a);
        } else {
            self.write(src, size, a);
            self.write(dst, size, r);
        }
        self.set_cc(CcKind::Add, size, r, b, None);
        Flow::Next
    }

    pub(super) fn cmpxchg(&mut self) -> Flow {
        let size = self.op_size(0);
        let dst = self.operand(0, true);
        let src = self.operand(1, false);
        let d = self.read(dst, size);
        let s = self.read(src, size);
        let acc = self.get_reg(0, size);
        let eq = self.b.setcond(Cond::Eq, size, acc, d);
        if matches!(dst, Opnd::Mem(_)) {
            // Memory gets a write cycle whatever the comparison (its old value back
            // on failure).
            let nd = self.b.select(eq, s, d);
            self.write(dst, size, nd);
        }
        // A register destination is written only on success, and the accumulator only
        // on failure: the other keeps all 64 bits (no zero-extension of a 32-bit
        // register that is not written).
        let success = self.b.label();
        let done = self.b.label();
        self.b.br_if(eq, success);
        self.set_reg(0, size, d);
        self.b.br(done);
        self.b.set_label(success);
        if !matches!(dst, Opnd::Mem(_)) {
            self.write(dst, size, s);
        }
        self.b.set_label(done);
        let r = self.b.bin(BinOp::Sub, size, acc, d);
        self.set_cc(CcKind::Sub, size, r, d, None);
        Flow::Next
    }

    /// CMPXCHG8B / CMPXCHG16B.
    pub(super) fn cmpxchg8b(&mut self) -> Flow {
        let wide = self.i.mnemonic() == Mnemonic::Cmpxchg16b;
        let half = if wide { Size::B64 } else { Size::B32 };
        let len = 2 * half.bytes() as u64;
        let addr = self.mem_addr(len, true);
        if wide {
            let mis = self.b.bini(BinOp::And, Size::B64, addr, 15);
            self.raise_if(mis, 13, true);
        }
        let mmu = self.m.mmu();
        let hi_addr = self
            .b
            .bini(BinOp::Add, Size::B64, addr, half.bytes() as u64);
        // Both halves are checked for writing before anything is stored.
        let lo = self.b.load_for_write(addr, half, mmu);
        let hi = self.b.load_for_write(hi_addr, half, mmu);
        let eax = self.get_reg(0, half);
        let edx = self.get_reg(2, half);
        let ebx = self.get_reg(3, half);
        let ecx = self.get_reg(1, half);
        let e1 = self.b.setcond(Cond::Eq, half, lo, eax);
        let e2 = self.b.setcond(Cond::Eq, half, hi, edx);
        let eq = self.b.bin(BinOp::And, Size::B64, e1, e2);
        let nlo = self.b.select(eq, ebx, lo);
        let nhi = self.b.select(eq, ecx, hi);
        self.b.store(addr, nlo, half, mmu);
        self.b.store(hi_addr, nhi, half, mmu);
        let skip = self.b.label();
        let f = self.eflags();
        self.b.br_if(eq, skip);
        self.set_reg(0, half, lo);
        self.set_reg(2, half, hi);
        self.b.set_label(skip);
        let cleared = self.b.bini(BinOp::And, Size::B64, f, !ZF);
        let z = self.b.bini(BinOp::Shl, Size::B64, eq, 6);
        let nf = self.b.bin(BinOp::Or, Size::B64, cleared, z);
        self.set_eflags(nf);
        Flow::Next
    }

    pub(super) fn bswap(&mut self) -> Flow {
        let Some(g) = self.reg_op(0) else {
            return self.ud();
        };
        let v = self.read_gpr(g);
        let r = if g.size == Size::B16 {
            // Undefined by the SDM; hardware clears the low word.
            self.b.konst(0)
        } else {
            self.b.un(UnOp::Bswap, g.size, v)
        };
        self.write_gpr(g, r);
        Flow::Next
    }

    pub(super) fn movbe(&mut self) -> Flow {
        let size = self.op_size(0);
        let src = self.operand(1, false);
        let v = self.read(src, size);
        let r = self.b.un(UnOp::Bswap, size, v);
        let dst = self.operand(0, true);
        self.write(dst, size, r);
        Flow::Next
    }

    pub(super) fn xlat(&mut self) -> Flow {
        let addr = self.mem_addr(1, false);
        let mmu = self.m.mmu();
        let v = self.b.load(addr, Size::B8, false, mmu);
        self.set_reg(0, Size::B8, v);
        Flow::Next
    }

    pub(super) fn lahf(&mut self) -> Flow {
        let f = self.eflags();
        let m = self.b.bini(BinOp::And, Size::B64, f, 0xd5);
        let v = self.b.bini(BinOp::Or, Size::B64, m, 2);
        let ah = super::operand::Gpr {
            idx: 0,
            size: Size::B8,
            high: true,
        };
        self.write_gpr(ah, v);
        Flow::Next
    }

    pub(super) fn sahf(&mut self) -> Flow {
        let rax = self.b.get(Global::Gpr(0));
        let ah = self.b.bini(BinOp::Shr, Size::B64, rax, 8);
        let ah = self.b.bini(BinOp::And, Size::B64, ah, 0xd5);
        let f = self.eflags();
        let of = self.b.bini(BinOp::And, Size::B64, f, OF);
        let nf = self.b.bin(BinOp::Or, Size::B64, of, ah);
        self.set_eflags(nf);
        Flow::Next
    }

    /// CLC, STC, CMC.
    pub(super) fn carry_op(&mut self) -> Flow {
        let f = self.eflags();
        let nf = match self.i.mnemonic() {
            Mnemonic::Clc => self.b.bini(BinOp::And, Size::B64, f, !CF),
            Mnemonic::Stc => self.b.bini(BinOp::Or, Size::B64, f, CF),
            _ => self.b.bini(BinOp::Xor, Size::B64, f, CF),
        };
        self.set_eflags(nf);
        Flow::Next
    }

    /// CLD, STD.
    pub(super) fn df_op(&mut self) -> Flow {
        let f = self.b.get(Global::Flags);
        let nf = if self.i.mnemonic() == Mnemonic::Cld {
            self.b.bini(BinOp::And, Size::B64, f, !DF)
        } else {
            self.b.bini(BinOp::Or, Size::B64, f, DF)
        };
        self.b.set(Global::Flags, nf);
        Flow::Next
    }

    /// SALC (undocumented D6): AL = CF ? 0xFF : 0.
    pub(super) fn salc(&mut self) -> Flow {
        let c = self.carry();
        let z = self.b.konst(0);
        let v = self.b.bin(BinOp::Sub, Size::B8, z, c);
        self.set_reg(0, Size::B8, v);
        Flow::Next
    }
}

impl Tr {
    /// ADCX / ADOX: add with carry through CF (ADCX) or OF (ADOX) only; every other
    /// flag is kept.
    pub(super) fn adx(&mut self) -> Flow {
        let flag = if self.i.mnemonic() == Mnemonic::Adcx {
            CF
        } else {
            OF
        };
        let shift = u64::from(flag.trailing_zeros());
        let size = self.op_size(0);
        let dst = self.operand(0, true);
        let src = self.operand(1, false);
        let a = self.read(dst, size);
        let b = self.read(src, size);
        let f = self.eflags();
        let fs = self.b.bini(BinOp::Shr, Size::B64, f, shift);
        let cin = self.b.bini(BinOp::And, Size::B64, fs, 1);
        let t = self.b.bin(BinOp::Add, size, a, b);
        let r = self.b.bin(BinOp::Add, size, t, cin);
        // a + b + c wrapped: a carry out iff r < a (c = 0) or r <= a (c = 1).
        let lt = self.b.setcond(Cond::Ltu, size, r, a);
        let le = self.b.setcond(Cond::Leu, size, r, a);
        let cout = self.b.select(cin, le, lt);
        let keep = self.b.bini(BinOp::And, Size::B64, f, !flag);
        let cbit = self.b.bini(BinOp::Shl, Size::B64, cout, shift);
        let nf = self.b.bin(BinOp::Or, Size::B64, keep, cbit);
        self.write(dst, size, r);
        self.set_eflags(nf);
        Flow::Next
    }
}
