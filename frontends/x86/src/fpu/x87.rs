//! x87 architectural behaviour on [`FpuState`]: the register stack, tags, status and
//! control words, exception signalling with masking, and the arithmetic of the
//! instruction classes (special operands first, then the soft-float).
//!
//! # Register layout
//! `FpuState::st[i]` holds ST(i), relative to TOP (the FXSAVE and KVM convention);
//! pushes and pops rotate the array. `FpuState::ftw` is the abridged tag of FXSAVE,
//! indexed by *physical* register: bit `(TOP + i) & 7` says whether ST(i) is valid.
//!
//! # Unmasked exceptions
//! An unmasked invalid, denormal or zero-divide exception leaves the destination
//! unchanged and sets ES (and B); the next waiting x87 instruction raises #MF (with
//! CR0.NE; without it the legacy FERR#/IRQ13 path is not wired and the exception is
//! dropped). Unmasked overflow/underflow deliver the rounded result without the
//! 2^±24576 bias adjustment of real hardware (a documented simplification).

use super::ext::{Class, Ext};
use super::softfloat::{self as sf, flag, Ctx, Round, Rounded, Unpacked};
use vireo_core::cpu::FpuState;

/// FSW bits.
pub mod sw {
    pub const SF: u16 = 1 << 6;
    pub const ES: u16 = 1 << 7;
    pub const C0: u16 = 1 << 8;
    pub const C1: u16 = 1 << 9;
    pub const C2: u16 = 1 << 10;
    pub const C3: u16 = 1 << 14;
    pub const B: u16 = 1 << 15;
    pub const TOP_SHIFT: u16 = 11;
    pub const CC: u16 = C0 | C1 | C2 | C3;
}

/// Two-operand arithmetic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArithOp {
    Add,
    Mul,
    Sub,
    Div,
}

/// The x87 view of [`FpuState`].
pub struct X87<'a> {
    pub s: &'a mut FpuState,
}

impl X87<'_> {
    pub fn top(&self) -> u8 {
        ((self.s.fsw >> sw::TOP_SHIFT) & 7) as u8
    }

    fn set_top(&mut self, t: u8) {
        self.s.fsw = (self.s.fsw & !(7 << sw::TOP_SHIFT)) | (u16::from(t & 7) << sw::TOP_SHIFT);
    }

    fn phys(&self, i: u8) -> u8 {
        (self.top() + i) & 7
    }

    /// Whether ST(i) is empty.
    pub fn empty(&self, i: u8) -> bool {
        self.s.ftw & (1 << self.phys(i)) == 0
    }

    pub fn set_valid(&mut self, i: u8, valid: bool) {
        let bit = 1 << self.phys(i);
        if valid {
            self.s.ftw |= bit;
        } else {
            self.s.ftw &= !bit;
        }
    }

    pub fn st(&self, i: u8) -> Ext {
        Ext::from_slot(&self.s.st[usize::from(i & 7)])
    }

    /// Writes ST(i) and marks it valid.
    pub fn set_st(&mut self, i: u8, v: Ext) {
        self.s.st[usize::from(i & 7)] = v.to_slot();
        self.set_valid(i, true);
    }

    /// Loads TOP with `t` without moving the physical registers (FNINIT, FLDENV): the
    /// slots rotate so that slot i is still ST(i).
    pub fn load_top(&mut self, t: u8) {
        let k = t.wrapping_sub(self.top()) & 7;
        self.s.st.rotate_left(usize::from(k));
        self.set_top(t);
    }

    /// TOP − 1 (rotates the slots so that slot i stays ST(i)).
    pub fn dec_top(&mut self) {
        self.s.st.rotate_right(1);
        let t = self.top().wrapping_sub(1);
        self.set_top(t);
    }

    /// TOP + 1.
    pub fn inc_top(&mut self) {
        self.s.st.rotate_left(1);
        let t = self.top().wrapping_add(1);
        self.set_top(t);
    }

    /// Marks ST(0) empty and increments TOP.
    pub fn pop(&mut self) {
        self.set_valid(0, false);
        self.inc_top();
    }

    pub fn round(&self) -> Round {
        Round::from_bits(u64::from(self.s.fcw >> 10))
    }

    /// Significand precision from FCW.PC (the reserved value 01 acts as 64).
    pub fn prec(&self) -> u32 {
        match (self.s.fcw >> 8) & 3 {
            0 => 24,
            2 => 53,
            _ => 64,
        }
    }

    pub fn ctx(&self) -> Ctx {
        Ctx::new(self.round())
    }

    /// The rounding context of a computation whose result goes to a register: with
    /// the overflow or underflow exception unmasked, out-of-range results are
    /// delivered with a biased exponent (see [`Ctx::wrap_overflow`]).
    pub fn result_ctx(&self) -> Ctx {
        let mut c = self.ctx();
        c.wrap_overflow = self.s.fcw & u16::from(flag::OVERFLOW) == 0;
        c.wrap_underflow = self.s.fcw & u16::from(flag::UNDERFLOW) == 0;
        c
    }

    /// Clears C1 (most instructions do, or set it from rounding).
    pub fn clear_c1(&mut self) {
        self.s.fsw &= !sw::C1;
    }

    /// Records exception `flags`; returns true if one of them is unmasked (the
    /// caller then leaves the destination alone for IE/DE/ZE).
    pub fn signal(&mut self, flags: u8) -> bool {
        let f = u16::from(flags & 0x3f);
        self.s.fsw |= f;
        let unmasked = f & !self.s.fcw & 0x3f;
        if unmasked != 0 {
            self.s.fsw |= sw::ES | sw::B;
        }
        unmasked != 0
    }

    /// Recomputes ES/B after FCW or FSW are loaded.
    pub fn update_es(&mut self) {
        if self.s.fsw & !self.s.fcw & 0x3f != 0 {
            self.s.fsw |= sw::ES | sw::B;
        } else {
            self.s.fsw &= !(sw::ES | sw::B);
        }
    }

    /// A stack fault: IE + SF with C1 = `overflow`. Returns true if unmasked.
    pub fn stack_fault(&mut self, overflow: bool) -> bool {
        self.s.fsw |= sw::SF;
        if overflow {
            self.s.fsw |= sw::C1;
        } else {
            self.s.fsw &= !sw::C1;
        }
        self.signal(flag::INVALID)
    }

    /// Applies the flags of a computation that produced a result: returns true if the
    /// result may be written (false: an unmasked pre-computation exception, IE, DE or
    /// ZE: the operation is not carried out, only those flags are recorded). Clears
    /// C1, or sets it from the rounding direction when inexact.
    pub fn finish(&mut self, c: &Ctx) -> bool {
        let pre = c.flags & (flag::INVALID | flag::DENORMAL | flag::ZERO_DIV);
        self.clear_c1();
        if pre & !(self.s.fcw as u8) != 0 {
            self.signal(pre);
            return false;
        }
        self.signal(c.flags);
        if c.flags & flag::INEXACT != 0 && c.rounded_up {
            self.s.fsw |= sw::C1;
        }
        true
    }

    /// Pushes `v` (stack overflow: masked → indefinite). Returns false if nothing was
    /// pushed.
    pub fn push(&mut self, v: Ext) -> bool {
        if !self.empty(7) {
            if self.stack_fault(true) {
                return false;
            }
            self.dec_top();
            self.set_st(0, Ext::INDEFINITE);
            return true;
        }
        self.dec_top();
        self.set_st(0, v);
        true
    }

    /// Reads ST(i) for an operation: `None` on stack underflow (already signalled).
    pub fn read(&mut self, i: u8) -> Option<Ext> {
        if self.empty(i) {
            self.stack_fault(false);
            None
        } else {
            Some(self.st(i))
        }
    }

    /// On a stack underflow with the destination ST(i): writes the indefinite if
    /// IE is masked.
    pub fn underflow_result(&mut self, i: u8) {
        if self.s.fcw & 1 != 0 {
            self.set_st(i, Ext::INDEFINITE);
        }
    }

    /// FINIT state (the registers keep their contents: TOP 0 renames them).
    pub fn init(&mut self) {
        self.load_top(0);
        self.s.fcw = 0x37f;
        self.s.fsw = 0;
        self.s.ftw = 0;
        self.s.fop = 0;
        self.s.fip = 0;
        self.s.fdp = 0;
    }

    /// The full 16-bit tag word (00 valid, 01 zero, 10 special, 11 empty), by physical
    /// register.
    pub fn full_tag(&self) -> u16 {
        let mut t = 0u16;
        for p in 0..8u8 {
            let tag = if self.s.ftw & (1 << p) == 0 {
                3
            } else {
                let i = (p + 8 - self.top()) & 7;
                match self.st(i).class() {
                    Class::Zero => 1,
                    Class::Normal => 0,
                    _ => 2,
                }
            };
            t |= tag << (2 * p);
        }
        t
    }

    /// Loads the abridged tag from a full tag word.
    pub fn set_full_tag(&mut self, t: u16) {
        let mut ftw = 0u8;
        for p in 0..8 {
            if (t >> (2 * p)) & 3 != 3 {
                ftw |= 1 << p;
            }
        }
        self.s.ftw = ftw;
    }
}

/// The result of a NaN operand (x87 rules, SDM Vol. 1 table 4-7: of an SNaN and a
/// QNaN the QNaN, of two of a kind the one with the larger significand, SNaNs
/// quieted), with the invalid flag for SNaNs.
pub fn propagate_nan(ctx: &mut Ctx, a: Ext, b: Ext) -> Ext {
    let (an, bn) = (a.is_nan(), b.is_nan());
    let (sa, sb) = (a.class() == Class::SNan, b.class() == Class::SNan);
    if sa || sb {
        ctx.flags |= flag::INVALID;
    }
    match (an, bn) {
        (true, true) if sa != sb => {
            if sa {
                b
            } else {
                a
            }
        }
        (true, true) => {
            let (qa, qb) = (a.quiet(), b.quiet());
            if qa.sig > qb.sig || (qa.sig == qb.sig && !qa.sign) {
                qa
            } else {
                qb
            }
        }
        (true, false) => a.quiet(),
        _ => b.quiet(),
    }
}

/// Common operand screening: unsupported encodings and NaNs. Returns the result if
/// the operation is decided, and adds the denormal flag for denormal operands.
fn screen(ctx: &mut Ctx, a: Ext, b: Ext) -> Option<Ext> {
    let (ca, cb) = (a.class(), b.class());
    // An unsupported or NaN operand takes precedence over a denormal one (the DE a
    // denormal memory operand signalled on conversion is withdrawn).
    if ca == Class::Unsupported || cb == Class::Unsupported {
        ctx.flags = (ctx.flags & !flag::DENORMAL) | flag::INVALID;
        return Some(Ext::INDEFINITE);
    }
    if a.is_nan() || b.is_nan() {
        ctx.flags &= !flag::DENORMAL;
        return Some(propagate_nan(ctx, a, b));
    }
    if ca == Class::Denormal || cb == Class::Denormal {
        ctx.flags |= flag::DENORMAL;
    }
    None
}

/// `a op b` at precision `prec` (the caller orders the operands of reversed forms).
pub fn arith(ctx: &mut Ctx, op: ArithOp, a: Ext, b: Ext, prec: u32) -> Ext {
    if let Some(r) = screen(ctx, a, b) {
        return r;
    }
    let (ca, cb) = (a.class(), b.class());
    let f = sf::ext(prec);
    let invalid = |ctx: &mut Ctx| {
        ctx.flags |= flag::INVALID;
        Ext::INDEFINITE
    };
    match op {
        ArithOp::Add | ArithOp::Sub => {
            let b = if op == ArithOp::Sub {
                Ext { sign: !b.sign, ..b }
            } else {
                b
            };
            match (ca == Class::Inf, cb == Class::Inf) {
                (true, true) if a.sign != b.sign => invalid(ctx),
                (true, _) => a,
                (_, true) => b,
                _ => Ext::from_rounded(sf::add(ctx, a.unpack(), b.unpack(), f)),
            }
        }
        ArithOp::Mul => {
            let sign = a.sign != b.sign;
            match (ca, cb) {
                (Class::Inf, Class::Zero) | (Class::Zero, Class::Inf) => invalid(ctx),
                (Class::Inf, _) | (_, Class::Inf) => Ext::inf(sign),
                _ => Ext::from_rounded(sf::mul(ctx, a.unpack(), b.unpack(), f)),
            }
        }
        ArithOp::Div => {
            let sign = a.sign != b.sign;
            match (ca, cb) {
                (Class::Inf, Class::Inf) | (Class::Zero, Class::Zero) => invalid(ctx),
                (Class::Inf, _) => Ext::inf(sign),
                (_, Class::Inf) => Ext::zero(sign),
                // A zero divide signals no DE for a denormal dividend.
                (_, Class::Zero) => {
                    ctx.flags = (ctx.flags & !flag::DENORMAL) | flag::ZERO_DIV;
                    Ext::inf(sign)
                }
                _ => Ext::from_rounded(sf::div(ctx, a.unpack(), b.unpack(), f)),
            }
        }
    }
}

/// Square root.
pub fn sqrt(ctx: &mut Ctx, a: Ext, prec: u32) -> Ext {
    if let Some(r) = screen(ctx, a, Ext::ZERO) {
        return r;
    }
    match a.class() {
        Class::Zero => a,
        // A negative operand is invalid before it is a denormal (no DE).
        _ if a.sign => {
            ctx.flags = (ctx.flags & !flag::DENORMAL) | flag::INVALID;
            Ext::INDEFINITE
        }
        Class::Inf => a,
        _ => Ext::from_rounded(sf::sqrt(ctx, a.unpack(), sf::ext(prec))),
    }
}

/// Comparison outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    Less,
    Equal,
    Greater,
    Unordered,
}

/// Compares `a` with `b`; `quiet` (FUCOM, UCOMIS*) signals invalid only for SNaNs.
pub fn compare(ctx: &mut Ctx, a: Ext, b: Ext, quiet: bool) -> Order {
    let (ca, cb) = (a.class(), b.class());
    if ca == Class::Unsupported || cb == Class::Unsupported {
        ctx.flags = (ctx.flags & !flag::DENORMAL) | flag::INVALID;
        return Order::Unordered;
    }
    if a.is_nan() || b.is_nan() {
        ctx.flags &= !flag::DENORMAL;
        if !quiet || ca == Class::SNan || cb == Class::SNan {
            ctx.flags |= flag::INVALID;
        }
        return Order::Unordered;
    }
    if ca == Class::Denormal || cb == Class::Denormal {
        ctx.flags |= flag::DENORMAL;
    }
    let key = |v: Ext| -> (bool, i128) {
        // Map to a totally ordered integer (zero of either sign is 0).
        if v.class() == Class::Zero {
            return (false, 0);
        }
        let mag = if v.class() == Class::Inf {
            i128::MAX
        } else {
            let u = v.unpack();
            let lz = u.sig.leading_zeros() as i128;
            ((i128::from(u.exp) - lz + 20000) << 64) | i128::from((u.sig << lz >> 64) as u64)
        };
        (v.sign, if v.sign { -mag } else { mag })
    };
    let (ka, kb) = (key(a).1, key(b).1);
    match ka.cmp(&kb) {
        std::cmp::Ordering::Less => Order::Less,
        std::cmp::Ordering::Equal => Order::Equal,
        std::cmp::Ordering::Greater => Order::Greater,
    }
}

/// Condition codes C3 C2 C0 of a comparison (FCOM, FTST).
pub fn compare_cc(o: Order) -> u16 {
    match o {
        Order::Greater => 0,
        Order::Less => sw::C0,
        Order::Equal => sw::C3,
        Order::Unordered => sw::C3 | sw::C2 | sw::C0,
    }
}

/// Rounds to an integer value (FRNDINT).
pub fn round_int(ctx: &mut Ctx, a: Ext) -> Ext {
    if let Some(r) = screen(ctx, a, Ext::ZERO) {
        return r;
    }
    match a.class() {
        Class::Zero | Class::Inf => a,
        _ => {
            let (neg, mag, inexact) = sf::to_int(a.unpack(), ctx.round);
            if inexact {
                ctx.flags |= flag::INEXACT;
                ctx.rounded_up = mag != 0 && {
                    let (_, trunc, _) = sf::to_int(a.unpack(), Round::Zero);
                    mag > trunc
                };
            }
            if mag == 0 {
                return Ext::zero(neg);
            }
            if mag > u128::from(u64::MAX) {
                return a;
            }
            let m = mag as u64;
            let lz = m.leading_zeros();
            Ext {
                sign: neg,
                exp: (super::ext::BIAS + 63 - lz as i32) as u16,
                sig: m << lz,
            }
        }
    }
}

/// Converts to a signed integer of `bits` bits in mode `round`: `None` (invalid) when
/// out of range or not a number. A denormal signals no DE (FIST and FBSTP report only
/// IS, IA and P).
pub fn to_int(ctx: &mut Ctx, a: Ext, bits: u32, round: Round) -> Option<i64> {
    match a.class() {
        Class::Zero => return Some(0),
        Class::Normal | Class::Denormal => {}
        _ => {
            ctx.flags |= flag::INVALID;
            return None;
        }
    }
    let (neg, mag, inexact) = sf::to_int(a.unpack(), round);
    let lim = 1u128 << (bits - 1);
    if (!neg && mag >= lim) || (neg && mag > lim) {
        ctx.flags |= flag::INVALID;
        return None;
    }
    if inexact {
        ctx.flags |= flag::INEXACT;
        let (_, t, _) = sf::to_int(a.unpack(), Round::Zero);
        ctx.rounded_up = mag > t;
    }
    let v = mag as i128;
    Some(if neg { -v } else { v } as i64)
}

/// ST(0) × 2^trunc(ST(1)) (FSCALE).
pub fn scale(ctx: &mut Ctx, a: Ext, b: Ext, prec: u32) -> Ext {
    if let Some(r) = screen(ctx, a, b) {
        return r;
    }
    let (ca, cb) = (a.class(), b.class());
    match (ca, cb) {
        (Class::Inf, Class::Inf) if b.sign => {
            ctx.flags |= flag::INVALID;
            Ext::INDEFINITE
        }
        (Class::Zero, Class::Inf) if !b.sign => {
            ctx.flags |= flag::INVALID;
            Ext::INDEFINITE
        }
        (Class::Zero | Class::Inf, _) => a,
        (_, Class::Inf) => {
            if b.sign {
                Ext::zero(a.sign)
            } else {
                Ext::inf(a.sign)
            }
        }
        _ => {
            let (neg, mag, _) = sf::to_int(b.unpack(), Round::Zero);
            let n = mag.min(1 << 20) as i32;
            let n = if neg { -n } else { n };
            let u = a.unpack();
            Ext::from_rounded(sf::round_pack(ctx, u.sign, u.exp + n, u.sig, sf::ext(prec)))
        }
    }
}

/// FXTRACT: (exponent as a value, significand with exponent 0).
pub fn extract(ctx: &mut Ctx, a: Ext) -> (Ext, Ext) {
    if let Some(r) = screen(ctx, a, Ext::ZERO) {
        return (r, r);
    }
    match a.class() {
        Class::Zero => {
            ctx.flags |= flag::ZERO_DIV;
            (Ext::inf(true), a)
        }
        Class::Inf => (Ext::inf(false), a),
        _ => {
            let u = a.unpack();
            let lz = u.sig.leading_zeros();
            let exp = u.exp - lz as i32;
            let sig = Ext {
                sign: a.sign,
                exp: super::ext::BIAS as u16,
                sig: (u.sig << lz >> 64) as u64,
            };
            (Ext::from_i64(i64::from(exp)), sig)
        }
    }
}

/// FXAM condition codes (C3 C2 C1 C0) for ST(0), `empty` if the register is empty.
pub fn examine(v: Ext, empty: bool) -> u16 {
    let c1 = if v.sign { sw::C1 } else { 0 };
    let cls = if empty {
        sw::C3 | sw::C0
    } else {
        match v.class() {
            Class::Unsupported => 0,
            Class::QNan | Class::SNan => sw::C0,
            Class::Normal => sw::C2,
            Class::Inf => sw::C2 | sw::C0,
            Class::Zero => sw::C3,
            Class::Denormal => sw::C3 | sw::C2,
        }
    };
    c1 | cls
}

/// An f64 approximation of a finite extended value (for the transcendental
/// functions, which are computed in double precision).
pub fn to_f64(v: Ext) -> f64 {
    let mut c = Ctx::new(Round::Nearest);
    f64::from_bits(super::ext::F64.from_ext(&mut c, v))
}

/// An f64 result widened (exact) to extended.
pub fn from_f64(v: f64) -> Ext {
    super::ext::F64.to_ext(v.to_bits())
}

/// Re-rounds a value to precision `prec` (results computed elsewhere).
pub fn reround(ctx: &mut Ctx, v: Ext, prec: u32) -> Ext {
    match v.class() {
        Class::Normal | Class::Denormal => {
            let u: Unpacked = v.unpack();
            match sf::round_pack(ctx, u.sign, u.exp, u.sig, sf::ext(prec)) {
                r @ (Rounded::Finite(_) | Rounded::Inf(_)) => Ext::from_rounded(r),
            }
        }
        _ => v,
    }
}
