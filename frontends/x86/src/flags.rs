//! Lazy flags, QEMU-style: an instruction that sets the arithmetic flags records the
//! operation kind and its operands in `cc_op`/`cc_dst`/`cc_src`/`cc_src2` instead of
//! computing CF, PF, AF, ZF, SF and OF; they are evaluated only when read.
//!
//! `cc_op` encodes a [`CcKind`] and an operand size: `kind * 4 + size index`.
//!
//! | kind | cc_dst | cc_src | cc_src2 |
//! | --- | --- | --- | --- |
//! | `Eflags` | – | the six flags, in their RFLAGS positions | – |
//! | `Add` | result | second operand | – |
//! | `Adc` | result | second operand | carry in (0/1) |
//! | `Sub` | result | second operand (subtrahend) | – |
//! | `Sbb` | result | second operand | borrow in (0/1) |
//! | `Logic` | result | – | – |
//! | `Inc`, `Dec` | result | CF before the instruction (0/1) | – |
//! | `Shl` | result | operand shifted left by count-1 | – |
//! | `Sar` (SAR and SHR) | result | operand shifted right by count-1 | – |
//! | `Mul` (MUL, IMUL) | low result | non-zero if the result overflowed | – |
//! | `Clr` (xor r,r) | – | – | – |
//! | `Popcnt` | – | the source operand | – |

use vireo_core::cpu::flags::{AF, CF, OF, PF, SF, ZF};
use vireo_core::ir::Size;

/// The arithmetic flags lazy evaluation covers.
pub const ARITH: u64 = CF | PF | AF | ZF | SF | OF;

/// The operation that last set the flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u64)]
pub enum CcKind {
    Eflags = 0,
    Add,
    Adc,
    Sub,
    Sbb,
    Logic,
    Inc,
    Dec,
    Shl,
    Sar,
    Mul,
    Clr,
    Popcnt,
}

const KINDS: [CcKind; 13] = [
    CcKind::Eflags,
    CcKind::Add,
    CcKind::Adc,
    CcKind::Sub,
    CcKind::Sbb,
    CcKind::Logic,
    CcKind::Inc,
    CcKind::Dec,
    CcKind::Shl,
    CcKind::Sar,
    CcKind::Mul,
    CcKind::Clr,
    CcKind::Popcnt,
];

fn size_index(s: Size) -> u64 {
    match s {
        Size::B8 => 0,
        Size::B16 => 1,
        Size::B32 => 2,
        Size::B64 => 3,
    }
}

/// The `cc_op` value for `kind` at `size`.
pub const fn cc_op(kind: CcKind, size: Size) -> u64 {
    let idx = match size {
        Size::B8 => 0,
        Size::B16 => 1,
        Size::B32 => 2,
        Size::B64 => 3,
    };
    (kind as u64) * 4 + idx
}

/// `cc_op` for flags held directly in `cc_src`.
pub const CC_EFLAGS: u64 = 0;

/// Splits a `cc_op` value; an out-of-range value (never produced by the frontend)
/// decodes as `Eflags`.
pub fn decode(op: u64) -> (CcKind, Size) {
    let kind = KINDS
        .get((op / 4) as usize)
        .copied()
        .unwrap_or(CcKind::Eflags);
    let size = [Size::B8, Size::B16, Size::B32, Size::B64][(op % 4) as usize];
    (kind, size)
}

/// PF of a result: bit `b` of this table is set when byte `b` has an even number of
/// ones (a table: `count_ones` is a dozen instructions without POPCNT, which the
/// baseline x86-64 target lacks).
const EVEN_PARITY: [u64; 4] = {
    let mut t = [0u64; 4];
    let mut b = 0;
    while b < 256 {
        if (b as u8).count_ones().is_multiple_of(2) {
            t[b / 64] |= 1 << (b % 64);
        }
        b += 1;
    }
    t
};

fn parity(v: u64) -> u64 {
    let b = v as u8;
    ((EVEN_PARITY[usize::from(b >> 6)] >> (b & 63)) & 1) << PF.trailing_zeros()
}

/// ZF, SF and PF of a result truncated to its size, whose sign bit is `sign`.
fn szp(sign: u64, d: u64) -> u64 {
    let mut f = parity(d);
    if d == 0 {
        f |= ZF;
    }
    if d & sign != 0 {
        f |= SF;
    }
    f
}

/// CF (0 or 1) of the lazy-flag state: what [`compute`] gives, `& CF`, without the
/// other five. (Called for every INC/DEC whose block does not know the operation
/// before it: kept to a mask and one comparison for the common kinds.)
pub fn carry(op: u64, dst: u64, src: u64, src2: u64) -> u64 {
    const ADD: u64 = CcKind::Add as u64;
    const ADC: u64 = CcKind::Adc as u64;
    const SUB: u64 = CcKind::Sub as u64;
    const SBB: u64 = CcKind::Sbb as u64;
    const INC: u64 = CcKind::Inc as u64;
    const DEC: u64 = CcKind::Dec as u64;
    const SHL: u64 = CcKind::Shl as u64;
    const SAR: u64 = CcKind::Sar as u64;
    const MUL: u64 = CcKind::Mul as u64;
    let bits = 8u32 << (op & 3);
    let mask = u64::MAX >> (64 - bits);
    let (d, s) = (dst & mask, src & mask);
    let cf = match op >> 2 {
        SUB => (d.wrapping_add(s) & mask) < s,
        ADD => d < s,
        0 => src & CF != 0,
        INC | DEC | SAR => src & 1 != 0,
        ADC if src2 & 1 != 0 => d <= s,
        ADC => d < s,
        SBB if src2 & 1 != 0 => (d.wrapping_add(s).wrapping_add(1) & mask) <= s,
        SBB => (d.wrapping_add(s) & mask) < s,
        SHL => s >> (bits - 1) != 0,
        MUL => s != 0,
        // Logic, Clr, Popcnt (and codes no operation has, as `compute` reads them:
        // EFLAGS).
        k if k < KINDS.len() as u64 => false,
        _ => src & CF != 0,
    };
    u64::from(cf)
}

/// Evaluates the six arithmetic flags.
pub fn compute(op: u64, dst: u64, src: u64, src2: u64) -> u64 {
    let kind = KINDS
        .get((op / 4) as usize)
        .copied()
        .unwrap_or(CcKind::Eflags);
    // Sizes by shifts (`decode`'s `Size` goes through two table lookups).
    let bits = 8u32 << (op & 3);
    let mask = u64::MAX >> (64 - bits);
    let sign = 1u64 << (bits - 1);
    let t = |v: u64| v & mask;
    let (d, s) = (t(dst), t(src));
    match kind {
        CcKind::Eflags => src & ARITH,
        CcKind::Add | CcKind::Adc => {
            let cin = if kind == CcKind::Adc { src2 & 1 } else { 0 };
            let first = t(d.wrapping_sub(s).wrapping_sub(cin));
            let cf = if cin != 0 { d <= s } else { d < s };
            let mut f = szp(sign, d) | ((first ^ s ^ d) & AF);
            if cf {
                f |= CF;
            }
            if (first ^ !s) & (first ^ d) & sign != 0 {
                f |= OF;
            }
            f
        }
        CcKind::Sub | CcKind::Sbb => {
            let cin = if kind == CcKind::Sbb { src2 & 1 } else { 0 };
            let first = t(d.wrapping_add(s).wrapping_add(cin));
            let cf = if cin != 0 { first <= s } else { first < s };
            let mut f = szp(sign, d) | ((first ^ s ^ d) & AF);
            if cf {
                f |= CF;
            }
            if (first ^ s) & (first ^ d) & sign != 0 {
                f |= OF;
            }
            f
        }
        CcKind::Logic => szp(sign, d),
        CcKind::Inc | CcKind::Dec => {
            let first = if kind == CcKind::Inc {
                t(d.wrapping_sub(1))
            } else {
                t(d.wrapping_add(1))
            };
            let mut f = szp(sign, d) | ((first ^ 1 ^ d) & AF) | (src & 1);
            let of = if kind == CcKind::Inc {
                d == sign
            } else {
                d == sign - 1
            };
            if of {
                f |= OF;
            }
            f
        }
        CcKind::Shl => {
            let cf = u64::from(s & sign != 0);
            let mut f = szp(sign, d) | cf;
            if ((d & sign != 0) as u64) ^ cf != 0 {
                f |= OF;
            }
            f
        }
        CcKind::Sar => {
            let mut f = szp(sign, d) | (s & 1);
            if (s ^ d) & sign != 0 {
                f |= OF;
            }
            f
        }
        CcKind::Mul => {
            let mut f = szp(sign, d);
            if s != 0 {
                f |= CF | OF;
            }
            f
        }
        CcKind::Clr => ZF | PF,
        CcKind::Popcnt => {
            if s == 0 {
                ZF
            } else {
                0
            }
        }
    }
}

/// The `cc_op` index of a size (for frontends that build `cc_op` values at run time).
pub fn size_code(s: Size) -> u64 {
    size_index(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `carry` is `compute`'s CF for every operation, size and a spread of values.
    #[test]
    fn carry_is_the_computed_cf() {
        let vals = crate::translate::tests::EDGE;
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for kind in KINDS {
            for size in [Size::B8, Size::B16, Size::B32, Size::B64] {
                let op = cc_op(kind, size);
                for i in 0..400 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let (d, s) = if i < vals.len() * vals.len() {
                        (vals[i % vals.len()], vals[i / vals.len()])
                    } else {
                        (x, x.rotate_left(23) ^ 0x55)
                    };
                    for s2 in [0, 1] {
                        assert_eq!(
                            carry(op, d, s, s2),
                            compute(op, d, s, s2) & CF,
                            "{kind:?} {size:?} {d:#x} {s:#x} {s2}"
                        );
                    }
                }
            }
        }
        // Codes of no operation read as explicit flags.
        for op in [52, 55, 1000, u64::MAX] {
            for s in [0, 1, 0xfe, 0x8d5] {
                assert_eq!(carry(op, 0, s, 0), compute(op, 0, s, 0) & CF, "{op} {s:#x}");
            }
        }
    }

    /// The parity table gives PF for every byte value.
    #[test]
    fn parity_flag_of_every_byte() {
        for b in 0..=255u64 {
            let even = (b as u8).count_ones().is_multiple_of(2);
            let f = compute(cc_op(CcKind::Logic, Size::B32), b | 0x100, 0, 0);
            assert_eq!(f & PF != 0, even, "{b:#x}");
        }
    }

    fn add8(a: u8, b: u8) -> u64 {
        compute(
            cc_op(CcKind::Add, Size::B8),
            u64::from(a.wrapping_add(b)),
            u64::from(b),
            0,
        )
    }
    fn sub8(a: u8, b: u8) -> u64 {
        compute(
            cc_op(CcKind::Sub, Size::B8),
            u64::from(a.wrapping_sub(b)),
            u64::from(b),
            0,
        )
    }

    #[test]
    fn add_and_sub_flags() {
        // The vector suite's first example: 0xDE + 0x23 = 0x01 with CF and AF.
        assert_eq!(add8(0xde, 0x23), CF | AF);
        assert_eq!(add8(0x7f, 1), OF | SF | AF);
        assert_eq!(add8(0xff, 1), CF | ZF | PF | AF);
        assert_eq!(sub8(0, 1), CF | SF | PF | AF);
        assert_eq!(sub8(0x80, 1), OF | AF);
        assert_eq!(sub8(5, 5), ZF | PF);
    }

    #[test]
    fn carry_in_forms() {
        // adc 0xff + 0 + 1 = 0 with carry.
        let f = compute(cc_op(CcKind::Adc, Size::B8), 0, 0, 1);
        assert_eq!(f & CF, CF);
        assert_eq!(f & ZF, ZF);
        // sbb 0 - 0 - 1 = 0xff with borrow.
        let f = compute(cc_op(CcKind::Sbb, Size::B8), 0xff, 0, 1);
        assert_eq!(f & (CF | SF), CF | SF);
        // adc 0x7fff + 0 + 1 overflows.
        let f = compute(cc_op(CcKind::Adc, Size::B16), 0x8000, 0, 1);
        assert_eq!(f & OF, OF);
    }

    #[test]
    fn inc_dec_keep_carry() {
        let f = compute(cc_op(CcKind::Inc, Size::B32), 0x8000_0000, 1, 0);
        assert_eq!(f & (OF | CF | SF), OF | CF | SF);
        let f = compute(cc_op(CcKind::Dec, Size::B8), 0x7f, 0, 0);
        assert_eq!(f & (OF | CF | AF), OF | AF);
    }

    #[test]
    fn shifts_mul_logic() {
        // shl 0xc0, 1 = 0x80: CF = 1, OF = CF ^ MSB = 0.
        let f = compute(cc_op(CcKind::Shl, Size::B8), 0x80, 0xc0, 0);
        assert_eq!(f & (CF | OF | SF), CF | SF);
        // shr 0x81, 1 = 0x40: CF = 1, OF = MSB of the original.
        let f = compute(cc_op(CcKind::Sar, Size::B8), 0x40, 0x81, 0);
        assert_eq!(f & (CF | OF), CF | OF);
        assert_eq!(
            compute(cc_op(CcKind::Mul, Size::B16), 0, 1, 0) & (CF | OF),
            CF | OF
        );
        assert_eq!(compute(cc_op(CcKind::Logic, Size::B64), 0, 0, 0), ZF | PF);
        assert_eq!(compute(CC_EFLAGS, 0, 0xffff_ffff, 0), ARITH);
        assert_eq!(
            decode(cc_op(CcKind::Sbb, Size::B64)),
            (CcKind::Sbb, Size::B64)
        );
    }
}
