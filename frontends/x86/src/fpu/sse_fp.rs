//! SSE/SSE2 floating point on binary32/binary64 lanes, with MXCSR semantics: rounding
//! control, DAZ (denormal operands read as zero), FTZ (masked underflow flushes to
//! zero), the six exception flags, and x86's NaN rules (the first source NaN wins,
//! quieted; invalid operations give the negative "indefinite" QNaN).
//!
//! Arithmetic widens exactly to the extended format and rounds once through
//! [`sf::round_pack`] with the IEEE format, so results are correctly rounded.

use super::ext::{Class, Ieee, F32, F64};
use super::softfloat::{self as sf, flag, Ctx, Round, Unpacked};

/// MXCSR bits.
pub mod mx {
    pub const DAZ: u32 = 1 << 6;
    pub const MASK_SHIFT: u32 = 7;
    pub const RC_SHIFT: u32 = 13;
    pub const FTZ: u32 = 1 << 15;
}

/// One instruction's environment: MXCSR in, flags out.
///
/// Instructions made of dependent steps (DPPS/DPPD: the products, then the sums)
/// end each step with [`Env::stage`]: the flags of a completed step move to
/// `committed` (they stay set in MXCSR even if a later step raises an unmasked
/// exception, as hardware does); `ctx.flags` holds those of the current step.
pub struct Env {
    pub mxcsr: u32,
    pub ctx: Ctx,
    /// Flags of the steps completed before the current one.
    pub committed: u8,
}

impl Env {
    pub fn new(mxcsr: u32) -> Env {
        let mut ctx = Ctx::new(Round::from_bits(u64::from(mxcsr >> mx::RC_SHIFT)));
        // With overflow or underflow unmasked the result is not delivered (#XM), but
        // the CPU reports PE as for a result rounded with an unbounded exponent, and UE
        // for any tiny result: the x87's biased rounding gives both.
        let masks = mxcsr >> mx::MASK_SHIFT;
        ctx.wrap_overflow = masks & u32::from(flag::OVERFLOW) == 0;
        ctx.wrap_underflow = masks & u32::from(flag::UNDERFLOW) == 0;
        Env {
            mxcsr,
            ctx,
            committed: 0,
        }
    }

    /// Ends a step: `true` if it raised an unmasked exception (the instruction stops
    /// there), else its flags are committed and the next step starts.
    pub fn stage(&mut self) -> bool {
        let unmasked = u32::from(self.ctx.flags) & !(self.mxcsr >> mx::MASK_SHIFT) & 0x3f;
        if unmasked != 0 {
            return true;
        }
        self.committed |= self.ctx.flags;
        self.ctx.flags = 0;
        false
    }
    pub(super) fn raise(&mut self, f: u8) {
        self.ctx.flags |= f;
    }
    /// Applies DAZ (a denormal operand reads as a zero of its sign).
    fn daz(&self, t: Ieee, v: u64) -> u64 {
        if t.is_denormal(v) && self.mxcsr & mx::DAZ != 0 {
            v & sign_bit(t)
        } else {
            v
        }
    }
    /// Applies DAZ and records DE for a denormal operand.
    fn input(&mut self, t: Ieee, v: u64) -> u64 {
        let d = self.daz(t, v);
        if t.is_denormal(d) {
            self.raise(flag::DENORMAL);
        }
        d
    }
    /// Computes and packs one rounded result, applying FTZ to tiny results (as the
    /// rounding detected them: one whose denormal rounding reaches the smallest normal
    /// is flushed too, as on the CPU).
    fn output(&mut self, t: Ieee, f: impl FnOnce(&mut Ctx) -> sf::Rounded) -> u64 {
        self.ctx.tiny = false;
        let v = t.pack(f(&mut self.ctx));
        let tiny = self.ctx.tiny;
        let um = self.mxcsr >> mx::MASK_SHIFT & u32::from(flag::UNDERFLOW) != 0;
        if tiny && self.mxcsr & mx::FTZ != 0 && um {
            self.raise(flag::UNDERFLOW | flag::INEXACT);
            return v & sign_bit(t);
        }
        v
    }
}

fn sign_bit(t: Ieee) -> u64 {
    1 << (t.ebits + t.fbits)
}

fn quiet(t: Ieee, v: u64) -> u64 {
    v | 1 << (t.fbits - 1)
}

fn unpacked(t: Ieee, v: u64) -> Unpacked {
    t.to_ext(v).unpack()
}

fn class(t: Ieee, v: u64) -> Class {
    t.to_ext(v).class()
}

/// The format of a lane width.
pub fn ieee(bits: u32) -> Ieee {
    if bits == 32 {
        F32
    } else {
        F64
    }
}

/// Binary arithmetic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arith {
    Add,
    Sub,
    Mul,
    Div,
    Min,
    Max,
}

/// NaN propagation of a two-operand operation: `Some(result)` if either is a NaN.
fn nan2(e: &mut Env, t: Ieee, a: u64, b: u64) -> Option<u64> {
    if t.is_snan(a) || t.is_snan(b) {
        e.raise(flag::INVALID);
    }
    if t.is_nan(a) {
        Some(quiet(t, a))
    } else if t.is_nan(b) {
        Some(quiet(t, b))
    } else {
        None
    }
}

/// Runs one lane operation with the SDM's exception priority: an invalid-operation
/// or divide-by-zero exception hides a denormal-operand exception of the same
/// operation (x/0 with a denormal x, the square root of a negative denormal).
fn prioritised(e: &mut Env, f: impl FnOnce(&mut Env) -> u64) -> u64 {
    let earlier = e.ctx.flags;
    e.ctx.flags = 0;
    let v = f(e);
    if e.ctx.flags & (flag::INVALID | flag::ZERO_DIV) != 0 {
        e.ctx.flags &= !flag::DENORMAL;
    }
    e.ctx.flags |= earlier;
    v
}

/// `a op b` in format `t`.
pub fn arith(e: &mut Env, t: Ieee, op: Arith, a: u64, b: u64) -> u64 {
    prioritised(e, |e| arith_lane(e, t, op, a, b))
}

fn arith_lane(e: &mut Env, t: Ieee, op: Arith, a: u64, b: u64) -> u64 {
    if matches!(op, Arith::Min | Arith::Max) {
        if t.is_nan(a) || t.is_nan(b) {
            // The second operand, as DAZ reads it.
            e.raise(flag::INVALID);
            return e.daz(t, b);
        }
        let (a, b) = (e.input(t, a), e.input(t, b));
        let lt = less(t, a, b);
        let gt = less(t, b, a);
        return match op {
            Arith::Min if lt => a,
            Arith::Max if gt => a,
            _ => b,
        };
    }
    if let Some(n) = nan2(e, t, a, b) {
        return n;
    }
    // A finite non-zero value divided by zero signals only the zero divide, not a
    // denormal dividend (as the CPU does).
    let divide_by_zero = op == Arith::Div
        && class(t, e.daz(t, b)) == Class::Zero
        && !matches!(class(t, e.daz(t, a)), Class::Zero | Class::Inf);
    let (a, b) = if divide_by_zero {
        (e.daz(t, a), e.daz(t, b))
    } else {
        (e.input(t, a), e.input(t, b))
    };
    let (ca, cb) = (class(t, a), class(t, b));
    let sa = a & sign_bit(t) != 0;
    let sb = b & sign_bit(t) != 0;
    let inf = |s: bool| t.pack(sf::Rounded::Inf(s));
    let zero = |s: bool| if s { sign_bit(t) } else { 0 };
    let invalid = |e: &mut Env| {
        e.raise(flag::INVALID);
        t.indefinite()
    };
    let f = t.fmt;
    match op {
        Arith::Add | Arith::Sub => {
            let sb = sb ^ (op == Arith::Sub);
            match (ca, cb) {
                (Class::Inf, Class::Inf) if sa != sb => invalid(e),
                (Class::Inf, _) => inf(sa),
                (_, Class::Inf) => inf(sb),
                _ => {
                    let mut ub = unpacked(t, b);
                    ub.sign = sb;
                    e.output(t, |c| sf::add(c, unpacked(t, a), ub, f))
                }
            }
        }
        Arith::Mul => match (ca, cb) {
            (Class::Inf, Class::Zero) | (Class::Zero, Class::Inf) => invalid(e),
            (Class::Inf, _) | (_, Class::Inf) => inf(sa ^ sb),
            (Class::Zero, _) | (_, Class::Zero) => zero(sa ^ sb),
            _ => e.output(t, |c| sf::mul(c, unpacked(t, a), unpacked(t, b), f)),
        },
        _ => match (ca, cb) {
            (Class::Inf, Class::Inf) | (Class::Zero, Class::Zero) => invalid(e),
            (Class::Inf, _) => inf(sa ^ sb),
            (_, Class::Inf) => zero(sa ^ sb),
            (Class::Zero, _) => zero(sa ^ sb),
            (_, Class::Zero) => {
                e.raise(flag::ZERO_DIV);
                inf(sa ^ sb)
            }
            _ => e.output(t, |c| sf::div(c, unpacked(t, a), unpacked(t, b), f)),
        },
    }
}

/// `a < b` for non-NaN values (signed zeros equal).
fn less(t: Ieee, a: u64, b: u64) -> bool {
    let key = |v: u64| {
        let mag = v & !sign_bit(t);
        if mag == 0 {
            0i128
        } else if v & sign_bit(t) != 0 {
            -i128::from(mag)
        } else {
            i128::from(mag)
        }
    };
    key(a) < key(b)
}

/// Square root.
pub fn sqrt(e: &mut Env, t: Ieee, a: u64) -> u64 {
    prioritised(e, |e| sqrt_lane(e, t, a))
}

fn sqrt_lane(e: &mut Env, t: Ieee, a: u64) -> u64 {
    if t.is_nan(a) {
        if t.is_snan(a) {
            e.raise(flag::INVALID);
        }
        return quiet(t, a);
    }
    // A negative operand is invalid before it is a denormal (no DE).
    let neg = a & sign_bit(t) != 0;
    if neg && class(t, e.daz(t, a)) != Class::Zero {
        e.raise(flag::INVALID);
        return t.indefinite();
    }
    let a = e.input(t, a);
    match class(t, a) {
        Class::Zero => a,
        Class::Inf => a,
        _ => e.output(t, |c| sf::sqrt(c, unpacked(t, a), t.fmt)),
    }
}

/// Compare predicate 0-7 (EQ LT LE UNORD NEQ NLT NLE ORD): all-ones if true.
pub fn cmp(e: &mut Env, t: Ieee, pred: u8, a: u64, b: u64) -> u64 {
    let unord = t.is_nan(a) || t.is_nan(b);
    let signal_qnan = matches!(pred & 7, 1 | 2 | 5 | 6);
    if t.is_snan(a) || t.is_snan(b) || (unord && signal_qnan) {
        e.raise(flag::INVALID);
    }
    let r = if unord {
        matches!(pred & 7, 3..=6)
    } else {
        let (a, b) = (e.input(t, a), e.input(t, b));
        let (lt, eq) = (less(t, a, b), !less(t, a, b) && !less(t, b, a));
        match pred & 7 {
            0 => eq,
            1 => lt,
            2 => lt || eq,
            3 => false,
            4 => !eq,
            5 => !lt,
            6 => !(lt || eq),
            _ => true,
        }
    };
    if r {
        if t.ebits == 8 {
            0xffff_ffff
        } else {
            u64::MAX
        }
    } else {
        0
    }
}

/// COMIS/UCOMIS: the ZF/PF/CF flags (`signal`: COMIS, IE on QNaN too).
pub fn comi(e: &mut Env, t: Ieee, signal: bool, a: u64, b: u64) -> u64 {
    use vireo_core::cpu::flags::{CF, PF, ZF};
    if t.is_snan(a) || t.is_snan(b) || (signal && (t.is_nan(a) || t.is_nan(b))) {
        e.raise(flag::INVALID);
    }
    if t.is_nan(a) || t.is_nan(b) {
        return ZF | PF | CF;
    }
    let (a, b) = (e.input(t, a), e.input(t, b));
    if less(t, a, b) {
        CF
    } else if less(t, b, a) {
        0
    } else {
        ZF
    }
}

/// Float → integer of `ibits` (32/64), rounding with MXCSR.RC or truncating; the
/// integer indefinite (only the sign bit set) with IE when out of range or NaN. A
/// denormal source signals no DE (the conversions report only IE and PE; DAZ applies).
pub fn to_int(e: &mut Env, t: Ieee, a: u64, ibits: u32, truncate: bool) -> u64 {
    let indef = 1u64 << (ibits - 1);
    if t.is_nan(a) || class(t, a) == Class::Inf {
        e.raise(flag::INVALID);
        return indef;
    }
    let a = e.daz(t, a);
    if class(t, a) == Class::Zero {
        return 0;
    }
    let round = if truncate { Round::Zero } else { e.ctx.round };
    let (neg, mag, inexact) = sf::to_int(unpacked(t, a), round);
    let limit = if neg {
        u128::from(indef)
    } else {
        u128::from(indef) - 1
    };
    if mag > limit {
        e.raise(flag::INVALID);
        return indef;
    }
    if inexact {
        e.raise(flag::INEXACT);
    }
    let v = mag as u64;
    let v = if neg { v.wrapping_neg() } else { v };
    if ibits == 32 {
        v & 0xffff_ffff
    } else {
        v
    }
}

/// Signed integer → float, rounded with MXCSR.RC.
pub fn from_int(e: &mut Env, t: Ieee, v: i64) -> u64 {
    if v == 0 {
        return 0;
    }
    let u = super::ext::Ext::from_i64(v).unpack();
    let r = sf::round_pack(&mut e.ctx, u.sign, u.exp, u.sig, t.fmt);
    t.pack(r)
}

/// Converts between single and double (`from` → `to`).
pub fn convert(e: &mut Env, from: Ieee, to: Ieee, a: u64) -> u64 {
    // `output` reads the tininess of this lane's rounding only.
    e.ctx.tiny = false;
    if from.is_snan(a) {
        e.raise(flag::INVALID);
    }
    let a = if from.is_nan(a) { a } else { e.input(from, a) };
    let x = from.to_ext(a);
    if from.is_nan(a) {
        return to.from_ext(&mut e.ctx, x.quiet());
    }
    match x.class() {
        Class::Zero | Class::Inf => to.from_ext(&mut e.ctx, x),
        _ => {
            let u = x.unpack();
            e.output(to, |c| sf::round_pack(c, u.sign, u.exp, u.sig, to.fmt))
        }
    }
}

/// RCP/RSQRT approximations: the correctly rounded reciprocal (square root) with the
/// significand cut to 12 bits, within the SDM's bound of 1.5 × 2^-12 relative error
/// (hardware tables differ between vendors; lockstep does not compare them).
pub fn approx(a: u32, rsqrt: bool) -> u32 {
    let mut e = Env::new(0x1f80 | mx::DAZ);
    let one = 0x3f80_0000u64;
    let v = if rsqrt {
        let s = sqrt(&mut e, F32, u64::from(a));
        arith(&mut e, F32, Arith::Div, one, s)
    } else {
        arith(&mut e, F32, Arith::Div, one, u64::from(a))
    };
    let v = v as u32;
    if F32.is_nan(u64::from(v)) || v & 0x7f80_0000 == 0x7f80_0000 || v & 0x7f80_0000 == 0 {
        // NaN, infinity, zero (and denormal results, flushed as hardware does).
        if v & 0x7f80_0000 == 0 && v & 0x007f_ffff != 0 {
            return v & 0x8000_0000;
        }
        return v;
    }
    v & !0x7ff
}

/// ROUNDPS/PD/SS/SD on one lane: `a` rounded to an integral value in mode `round`.
/// A SNaN gives its QNaN with IE; an inexact result raises PE unless `no_pe`
/// (imm8 bit 3). Denormal operands raise no DE, but DAZ applies (to a signed zero).
pub fn round_int(e: &mut Env, t: Ieee, a: u64, round: Round, no_pe: bool) -> u64 {
    if t.is_nan(a) {
        if t.is_snan(a) {
            e.raise(flag::INVALID);
        }
        return quiet(t, a);
    }
    let sign = a & sign_bit(t);
    if t.is_denormal(a) && e.mxcsr & mx::DAZ != 0 {
        return sign;
    }
    // Zeros, infinities and magnitudes of 2^fbits and more are integral already.
    let bias = (1u64 << (t.ebits - 1)) - 1;
    let biased = a >> t.fbits & ((1u64 << t.ebits) - 1);
    if a & !sign == 0 || biased >= bias + u64::from(t.fbits) {
        return a;
    }
    let (neg, mag, inexact) = sf::to_int(unpacked(t, a), round);
    if inexact && !no_pe {
        e.raise(flag::INEXACT);
    }
    if mag == 0 {
        return sign;
    }
    // mag <= 2^fbits: exact in the format.
    let v = mag as i64;
    from_int(e, t, if neg { -v } else { v })
}
