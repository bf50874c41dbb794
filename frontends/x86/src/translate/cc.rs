//! Lazy flags in the translator: recording the flag-setting operation in the
//! `CcOp/CcDst/CcSrc/CcSrc2` globals, and evaluating conditions inline when the
//! operation is known at translation time (else through `compute_eflags`).

use super::Tr;
use crate::flags::{cc_op, CcKind, CC_EFLAGS};
use crate::helpers::integer::IntHelper;
use iced_x86::ConditionCode;
use vireo_core::cpu::flags::{AF, CF, OF, PF, SF, ZF};
use vireo_core::ir::{BinOp, Cond, Global, Op, Size, Temp};

/// What the translator knows about the lazy flags at the current point.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct CcTrack {
    /// The operation and the temps holding `cc_dst`/`cc_src`, when known.
    pub known: Option<(CcKind, Size, Temp, Temp)>,
    /// With a known `Sub`: the temp holding its first operand (`cc_dst + cc_src`),
    /// when the translator recorded it.
    pub first: Option<Temp>,
    /// With a known `Adc` or `Sbb`: the temp holding its carry in (0 or 1).
    pub carry_in: Option<Temp>,
}

impl CcTrack {
    /// Forgets the operation (a helper may have changed the flags).
    pub fn forget_if(&mut self, writes: bool) {
        if writes {
            *self = CcTrack::default();
        }
    }
}

impl Tr {
    /// Records a flag-setting operation.
    pub fn set_cc(&mut self, kind: CcKind, size: Size, dst: Temp, src: Temp, src2: Option<Temp>) {
        let op = self.b.konst(cc_op(kind, size));
        self.b.set(Global::CcOp, op);
        self.b.set(Global::CcDst, dst);
        self.b.set(Global::CcSrc, src);
        if let Some(s2) = src2 {
            self.b.set(Global::CcSrc2, s2);
        }
        self.cc = CcTrack {
            known: Some((kind, size, dst, src)),
            first: None,
            carry_in: src2,
        };
    }

    /// The first operand of the known `Sub` whose result is `d` and second operand
    /// `s`: recorded, else recomputed as `d + s`.
    fn sub_first(&mut self, size: Size, d: Temp, s: Temp) -> Temp {
        match self.cc.first {
            Some(a) => a,
            None => self.b.bin(BinOp::Add, size, d, s),
        }
    }

    /// Sets the flags to the explicit value `f` (arithmetic bits in RFLAGS positions).
    pub fn set_eflags(&mut self, f: Temp) {
        let op = self.b.konst(CC_EFLAGS);
        self.b.set(Global::CcOp, op);
        self.b.set(Global::CcSrc, f);
        let z = self.b.konst(0);
        self.b.set(Global::CcDst, z);
        self.cc = CcTrack {
            known: Some((CcKind::Eflags, Size::B64, z, f)),
            ..CcTrack::default()
        };
    }

    /// The six arithmetic flags, computed.
    pub fn eflags(&mut self) -> Temp {
        if let Some((CcKind::Eflags, _, _, src)) = self.cc.known {
            return src;
        }
        let op = self.b.get(Global::CcOp);
        let d = self.b.get(Global::CcDst);
        let s = self.b.get(Global::CcSrc);
        let s2 = self.b.get(Global::CcSrc2);
        self.int(IntHelper::ComputeEflags, &[op, d, s, s2], true)
            .unwrap_or(op)
    }

    /// The arithmetic flags with CF and OF left undefined (their bits may hold
    /// anything: the caller replaces them, as rotates do). Computed inline when the
    /// last operation is a known add, subtract, logic op, increment or decrement:
    /// ZF, SF and PF of its result, AF from its operands; else through
    /// `compute_eflags`.
    pub fn eflags_but_cf_of(&mut self) -> Temp {
        use vireo_core::ir::UnOp;
        let Some((kind, size, d, s)) = self.cc.known else {
            return self.eflags();
        };
        // The first operand and the second (AF is bit 4 of a ^ b ^ result).
        let operands = match kind {
            CcKind::Add => Some((self.b.bin(BinOp::Sub, size, d, s), s)),
            CcKind::Sub => Some((self.sub_first(size, d, s), s)),
            CcKind::Inc => {
                let one = self.b.konst(1);
                Some((self.b.bin(BinOp::Sub, size, d, one), one))
            }
            CcKind::Dec => {
                let one = self.b.konst(1);
                Some((self.b.bin(BinOp::Add, size, d, one), one))
            }
            CcKind::Logic => None,
            _ => return self.eflags(),
        };
        let zero = self.b.konst(0);
        let z = self.b.setcond(Cond::Eq, size, d, zero);
        let zf = self
            .b
            .bini(BinOp::Shl, Size::B64, z, u64::from(ZF.trailing_zeros()));
        let sign = self
            .b
            .bini(BinOp::Shr, Size::B64, d, u64::from(size.bits() - 1));
        let sf = self
            .b
            .bini(BinOp::Shl, Size::B64, sign, u64::from(SF.trailing_zeros()));
        let ones = self.b.un(UnOp::Popcnt, Size::B8, d);
        let odd = self.b.bini(BinOp::And, Size::B64, ones, 1);
        let even = self.b.bini(BinOp::Xor, Size::B64, odd, 1);
        let pf = self
            .b
            .bini(BinOp::Shl, Size::B64, even, u64::from(PF.trailing_zeros()));
        let mut f = self.b.bin(BinOp::Or, Size::B64, zf, sf);
        f = self.b.bin(BinOp::Or, Size::B64, f, pf);
        if let Some((a, b)) = operands {
            let x = self.b.bin(BinOp::Xor, Size::B64, a, b);
            let x = self.b.bin(BinOp::Xor, Size::B64, x, d);
            let af = self.b.bini(BinOp::And, Size::B64, x, AF);
            f = self.b.bin(BinOp::Or, Size::B64, f, af);
        }
        f
    }

    /// CF as 0/1.
    pub fn carry(&mut self) -> Temp {
        match self.cc.known {
            Some((CcKind::Logic | CcKind::Clr | CcKind::Popcnt, ..)) => self.b.konst(0),
            Some((CcKind::Sub, size, d, s)) => {
                let a = self.sub_first(size, d, s);
                self.b.setcond(Cond::Ltu, size, a, s)
            }
            Some((CcKind::Add, size, d, s)) => self.b.setcond(Cond::Ltu, size, d, s),
            // Shifts right keep the last bit out in `cc_src`'s bit 0, shifts left in
            // its bit `size - 1`; a multiply sets CF when the high half is nonzero.
            Some((CcKind::Inc | CcKind::Dec | CcKind::Sar, _, _, s)) => {
                self.b.bini(BinOp::And, Size::B64, s, 1)
            }
            Some((CcKind::Shl, size, _, s)) => {
                let top = self
                    .b
                    .bini(BinOp::Shr, Size::B64, s, u64::from(size.bits() - 1));
                self.b.bini(BinOp::And, Size::B64, top, 1)
            }
            Some((CcKind::Mul, size, _, s)) => {
                let zero = self.b.konst(0);
                self.b.setcond(Cond::Ne, size, s, zero)
            }
            Some((CcKind::Eflags, _, _, f)) => self.b.bini(BinOp::And, Size::B64, f, CF),
            // With the carry in: ADC carries when the sum wrapped below its second
            // operand (or met it, with a carry in); SBB borrows when its first
            // operand was below the second (or equal, with a borrow in).
            Some((kind @ (CcKind::Adc | CcKind::Sbb), size, d, s)) => {
                let Some(c) = self.cc.carry_in else {
                    return self.carry_of_state();
                };
                let cin = self.b.bini(BinOp::And, Size::B64, c, 1);
                let x = if kind == CcKind::Adc {
                    d
                } else {
                    let t = self.b.bin(BinOp::Add, size, d, s);
                    self.b.bin(BinOp::Add, size, t, cin)
                };
                let below = self.b.setcond(Cond::Ltu, size, x, s);
                let equal = self.b.setcond(Cond::Eq, size, x, s);
                let tie = self.b.bin(BinOp::And, Size::B64, equal, cin);
                self.b.bin(BinOp::Or, Size::B64, below, tie)
            }
            _ => self.carry_of_state(),
        }
    }

    /// OF as 0/1 of the known operation, for the operations [`Tr::cond_inline`]
    /// takes, less ADC and SBB (whose OF needs the carry in).
    fn overflow(&mut self) -> Option<Temp> {
        let (kind, size, d, s) = self.cc.known?;
        let top = u64::from(size.bits() - 1);
        let sign_bit = |t: &mut Self, v: Temp| {
            let v = t.b.bini(BinOp::Shr, Size::B64, v, top);
            t.b.bini(BinOp::And, Size::B64, v, 1)
        };
        Some(match kind {
            CcKind::Logic => self.b.konst(0),
            // The result's sign differs from both operands' (ADD) or the operands'
            // signs differ and the result's differs from the first's (SUB).
            CcKind::Add => {
                let a = self.b.bin(BinOp::Sub, size, d, s);
                let x = self.b.bin(BinOp::Xor, Size::B64, d, a);
                let y = self.b.bin(BinOp::Xor, Size::B64, d, s);
                let both = self.b.bin(BinOp::And, Size::B64, x, y);
                sign_bit(self, both)
            }
            CcKind::Sub => {
                let a = self.sub_first(size, d, s);
                let x = self.b.bin(BinOp::Xor, Size::B64, a, s);
                let y = self.b.bin(BinOp::Xor, Size::B64, a, d);
                let both = self.b.bin(BinOp::And, Size::B64, x, y);
                sign_bit(self, both)
            }
            CcKind::Inc | CcKind::Dec => {
                let sign = 1u64 << top;
                let edge = self
                    .b
                    .konst(if kind == CcKind::Inc { sign } else { sign - 1 });
                self.b.setcond(Cond::Eq, size, d, edge)
            }
            CcKind::Mul => {
                let zero = self.b.konst(0);
                self.b.setcond(Cond::Ne, size, s, zero)
            }
            // SHL: the result's sign against CF (the last bit out, `cc_src`'s top);
            // SAR/SHR: `cc_src`'s sign against the result's.
            CcKind::Shl | CcKind::Sar => {
                let x = self.b.bin(BinOp::Xor, Size::B64, s, d);
                sign_bit(self, x)
            }
            CcKind::Adc | CcKind::Sbb | CcKind::Eflags | CcKind::Clr | CcKind::Popcnt => {
                return None
            }
        })
    }

    /// Condition `cc` from the known operation's result and operands, without the
    /// flags helper: `None` when one of the flags it needs has no short formula.
    fn cond_inline(&mut self, cc: ConditionCode) -> Option<Temp> {
        use ConditionCode as C;
        let (kind, size, d, _) = self.cc.known?;
        if matches!(kind, CcKind::Eflags | CcKind::Clr | CcKind::Popcnt) {
            return None;
        }
        let zero = self.b.konst(0);
        let zf = |t: &mut Self| t.b.setcond(Cond::Eq, size, d, zero);
        let sf_xor_of = |t: &mut Self| -> Option<Temp> {
            let of = t.overflow()?;
            let sf = t.b.setcond(Cond::Lt, size, d, zero);
            Some(t.b.bin(BinOp::Xor, Size::B64, sf, of))
        };
        Some(match cc {
            C::o => self.overflow()?,
            C::b => self.carry(),
            C::be => {
                let cf = self.carry();
                let z = zf(self);
                self.b.bin(BinOp::Or, Size::B64, cf, z)
            }
            C::l => sf_xor_of(self)?,
            C::le => {
                let l = sf_xor_of(self)?;
                let z = zf(self);
                self.b.bin(BinOp::Or, Size::B64, l, z)
            }
            C::p => {
                use vireo_core::ir::UnOp;
                let ones = self.b.un(UnOp::Popcnt, Size::B8, d);
                let odd = self.b.bini(BinOp::And, Size::B64, ones, 1);
                self.b.bini(BinOp::Xor, Size::B64, odd, 1)
            }
            _ => return None,
        })
    }

    /// CF of the lazy-flag state in the globals (an operation the block does not
    /// know: typically the block before's). When the operation is the one the CPU
    /// held at translation (`entry_cc_op`) and its CF is simple (INC or DEC after a
    /// CMP, the top of many loops; after SYSRET, IRET or POPF, which leave the flags
    /// themselves), the check and the inline formula; otherwise (and as the
    /// fallback) the carry helper.
    fn carry_of_state(&mut self) -> Temp {
        let op = self.b.get(Global::CcOp);
        let d = self.b.get(Global::CcDst);
        let s = self.b.get(Global::CcSrc);
        let k = self.entry_cc_op;
        let (kind, size) = crate::flags::decode(k);
        let simple = matches!(
            kind,
            CcKind::Eflags
                | CcKind::Add
                | CcKind::Sub
                | CcKind::Logic
                | CcKind::Inc
                | CcKind::Dec
                | CcKind::Sar
                | CcKind::Clr
        ) && cc_op(kind, size) == k;
        let call = |t: &mut Self| {
            let s2 = t.b.get(Global::CcSrc2);
            t.int(IntHelper::ComputeCarry, &[op, d, s, s2], true)
                .unwrap_or(op)
        };
        if !simple {
            return call(self);
        }
        let (fast, done) = (self.b.label(), self.b.label());
        let r = self.b.temp();
        let kk = self.b.konst(k);
        let same = self.b.setcond(Cond::Eq, Size::B64, op, kk);
        self.b.br_if(same, fast);
        let c = call(self);
        self.b.push(Op::Mov { dst: r, src: c });
        self.b.br(done);
        self.b.set_label(fast);
        let saved = std::mem::replace(
            &mut self.cc,
            CcTrack {
                known: Some((kind, size, d, s)),
                ..CcTrack::default()
            },
        );
        let c = self.carry();
        self.cc = saved;
        self.b.push(Op::Mov { dst: r, src: c });
        self.b.set_label(done);
        r
    }

    /// Evaluates condition `cc` to 0/1.
    pub fn cond(&mut self, cc: ConditionCode) -> Temp {
        use ConditionCode as C;
        let (base, neg) = match cc {
            C::no => (C::o, true),
            C::ae => (C::b, true),
            C::ne => (C::e, true),
            C::a => (C::be, true),
            C::ns => (C::s, true),
            C::np => (C::p, true),
            C::ge => (C::l, true),
            C::g => (C::le, true),
            C::None => {
                return self.b.konst(1);
            }
            c => (c, false),
        };
        let v = self.cond_base(base);
        if neg {
            self.b.bini(BinOp::Xor, Size::B64, v, 1)
        } else {
            v
        }
    }

    fn cond_base(&mut self, cc: ConditionCode) -> Temp {
        use ConditionCode as C;
        if let Some((kind, size, d, s)) = self.cc.known {
            let zero = self.b.konst(0);
            let from_dst = matches!(
                kind,
                CcKind::Add
                    | CcKind::Adc
                    | CcKind::Sub
                    | CcKind::Sbb
                    | CcKind::Logic
                    | CcKind::Inc
                    | CcKind::Dec
                    | CcKind::Shl
                    | CcKind::Sar
                    | CcKind::Mul
            );
            match (kind, cc) {
                (CcKind::Sub, C::b | C::be | C::l | C::le) => {
                    let a = self.sub_first(size, d, s);
                    let c = match cc {
                        C::b => Cond::Ltu,
                        C::be => Cond::Leu,
                        C::l => Cond::Lt,
                        _ => Cond::Le,
                    };
                    return self.b.setcond(c, size, a, s);
                }
                (CcKind::Logic, C::b | C::o) => return zero,
                (CcKind::Logic, C::l) => return self.b.setcond(Cond::Lt, size, d, zero),
                (CcKind::Logic, C::le) => return self.b.setcond(Cond::Le, size, d, zero),
                (CcKind::Logic, C::be) => return self.b.setcond(Cond::Eq, size, d, zero),
                (_, C::e) if from_dst => return self.b.setcond(Cond::Eq, size, d, zero),
                (_, C::s) if from_dst => return self.b.setcond(Cond::Lt, size, d, zero),
                _ => {}
            }
            if let Some(v) = self.cond_inline(cc) {
                return v;
            }
        }
        let f = self.eflags();
        let bit = |t: &mut Tr, f: Temp, m: u64| {
            let sh =
                t.b.bini(BinOp::Shr, Size::B64, f, u64::from(m.trailing_zeros()));
            t.b.bini(BinOp::And, Size::B64, sh, 1)
        };
        match cc {
            C::o => bit(self, f, OF),
            C::b => bit(self, f, CF),
            C::e => bit(self, f, ZF),
            C::s => bit(self, f, SF),
            C::p => bit(self, f, PF),
            C::be => {
                let m = self.b.bini(BinOp::And, Size::B64, f, CF | ZF);
                let z = self.b.konst(0);
                self.b.setcond(Cond::Ne, Size::B64, m, z)
            }
            C::l | C::le => {
                let sf = bit(self, f, SF);
                let of = bit(self, f, OF);
                let l = self.b.bin(BinOp::Xor, Size::B64, sf, of);
                if cc == C::l {
                    l
                } else {
                    let zf = bit(self, f, ZF);
                    self.b.bin(BinOp::Or, Size::B64, l, zf)
                }
            }
            _ => self.b.konst(0),
        }
    }
}
