//! The SSE4.2 string comparisons PCMPESTRI, PCMPESTRM, PCMPISTRI and PCMPISTRM
//! (SDM Vol. 2B, section 4.1, "Imm8 control byte operation for PCMPESTRI / PCMPESTRM /
//! PCMPISTRI / PCMPISTRM").
//!
//! The first operand `a` (xmm1) and the second `b` (xmm2/m128) hold 16 bytes or 8
//! words. imm8 selects:
//!
//! | bits | meaning |
//! | --- | --- |
//! | 1:0 | unsigned bytes, unsigned words, signed bytes, signed words |
//! | 3:2 | aggregation: equal any, ranges, equal each, equal ordered |
//! | 5:4 | polarity: positive, negative, masked positive, masked negative |
//! | 6 | index: least (0) or most (1) significant bit; mask: bits (0) or elements (1) |
//!
//! Each element of `b` gets a bit of IntRes1 from the aggregation, over the valid
//! elements (explicit lengths: the first |EAX| of `a` and |EDX| of `b`, saturated;
//! implicit: those before the first zero element). Polarity turns IntRes1 into
//! IntRes2, which gives the index, the mask and the flags: CF = IntRes2 ≠ 0, ZF = `b`
//! shorter than the register, SF = `a` shorter, OF = IntRes2 bit 0, AF = PF = 0.

use super::simd::{lane, set_lane, sx};
use vireo_core::cpu::flags::{CF, OF, SF, ZF};

/// The outcome of one comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StrCmp {
    /// IntRes2, one bit per element.
    pub res: u32,
    /// CF, ZF, SF, OF.
    pub flags: u64,
    /// Elements per register: 16 (bytes) or 8 (words).
    pub n: u32,
}

impl StrCmp {
    /// PCMPxSTRI's index (ECX): the least or most significant set bit of IntRes2, or
    /// the element count if there is none.
    pub fn index(&self, imm: u8) -> u32 {
        if self.res == 0 {
            self.n
        } else if imm & 0x40 != 0 {
            31 - self.res.leading_zeros()
        } else {
            self.res.trailing_zeros()
        }
    }

    /// PCMPxSTRM's mask (XMM0): IntRes2 zero-extended, or each bit widened to its
    /// element.
    pub fn mask(&self, imm: u8) -> u128 {
        if imm & 0x40 == 0 {
            return u128::from(self.res);
        }
        let w = 128 / self.n;
        (0..self.n)
            .filter(|i| self.res >> i & 1 != 0)
            .fold(0, |r, i| set_lane(r, w, i, u64::MAX))
    }
}

/// Compares `a` with `b` under `imm`; `lens` are the explicit lengths (already
/// absolute values saturated to 16) or `None` for the implicit (zero-terminated) forms.
pub fn compare(a: u128, b: u128, imm: u8, lens: Option<(u32, u32)>) -> StrCmp {
    let words = imm & 1 != 0;
    let signed = imm & 2 != 0;
    let (n, w) = if words { (8u32, 16u32) } else { (16, 8) };
    let elem = |v: u128, i: u32| {
        let x = lane(v, w, i);
        if signed {
            sx(x, w)
        } else {
            x as i64
        }
    };
    let implicit = |v: u128| (0..n).find(|&i| lane(v, w, i) == 0).unwrap_or(n);
    let (la, lb) = match lens {
        Some((la, lb)) => (la.min(n), lb.min(n)),
        None => (implicit(a), implicit(b)),
    };
    let mut r1 = 0u32;
    for j in 0..n {
        let hit = match imm >> 2 & 3 {
            // Equal any: b[j] is one of the valid elements of a.
            0 => j < lb && (0..la).any(|i| elem(a, i) == elem(b, j)),
            // Ranges: a[i] <= b[j] <= a[i + 1] for a complete valid pair (i even).
            1 => {
                j < lb
                    && (0..la / 2)
                        .any(|p| elem(a, 2 * p) <= elem(b, j) && elem(b, j) <= elem(a, 2 * p + 1))
            }
            // Equal each: a[j] = b[j]; true where both are invalid.
            2 => match (j < la, j < lb) {
                (true, true) => elem(a, j) == elem(b, j),
                (va, vb) => !va && !vb,
            },
            // Equal ordered: a occurs in b at j (an invalid a element matches
            // anything; a valid one never matches an invalid b element).
            _ => (0..n - j).all(|k| match (k < la, j + k < lb) {
                (false, _) => true,
                (true, false) => false,
                (true, true) => elem(a, k) == elem(b, j + k),
            }),
        };
        r1 |= u32::from(hit) << j;
    }
    let all = (1u32 << n) - 1;
    let res = match imm >> 4 & 3 {
        1 => !r1 & all,
        3 => r1 ^ ((1u32 << lb) - 1),
        _ => r1,
    };
    let mut flags = 0;
    if res != 0 {
        flags |= CF;
    }
    if lb < n {
        flags |= ZF;
    }
    if la < n {
        flags |= SF;
    }
    if res & 1 != 0 {
        flags |= OF;
    }
    StrCmp { res, flags, n }
}
