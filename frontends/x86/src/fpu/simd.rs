//! Packed-integer SIMD arithmetic for MMX and SSE2 on plain integers.
//!
//! A register value is a `u128` (an MMX register uses the low 64 bits, `bytes` = 8;
//! an XMM register all 128, `bytes` = 16). Lanes are numbered from the least
//! significant end. Every function here is pure.

use iced_x86::Mnemonic;

/// Lane `i` of `bits` width.
pub fn lane(v: u128, bits: u32, i: u32) -> u64 {
    let m = if bits == 64 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    };
    (v >> (i * bits)) as u64 & m
}

/// `v` with lane `i` replaced by `x`.
pub fn set_lane(v: u128, bits: u32, i: u32, x: u64) -> u128 {
    let m: u128 = if bits == 64 {
        u128::from(u64::MAX)
    } else {
        (1u128 << bits) - 1
    };
    (v & !(m << (i * bits))) | ((u128::from(x) & m) << (i * bits))
}

/// Applies `f` lane by lane to `a` and `b` over `bytes` bytes.
pub fn map2(a: u128, b: u128, bytes: u32, bits: u32, f: impl Fn(u64, u64) -> u64) -> u128 {
    let mut r = 0u128;
    for i in 0..bytes * 8 / bits {
        r = set_lane(r, bits, i, f(lane(a, bits, i), lane(b, bits, i)));
    }
    r
}

/// Sign-extends the low `bits` of `v`.
pub fn sx(v: u64, bits: u32) -> i64 {
    let sh = 64 - bits;
    ((v << sh) as i64) >> sh
}

/// `v` saturated to a signed integer of `bits`.
pub fn sat_s(v: i64, bits: u32) -> u64 {
    let max = (1i64 << (bits - 1)) - 1;
    v.clamp(-max - 1, max) as u64
}

/// `v` saturated to an unsigned integer of `bits`.
pub fn sat_u(v: i64, bits: u32) -> u64 {
    v.clamp(0, (1i64 << bits) - 1) as u64
}

/// Lane width (bits) implied by a mnemonic's suffix.
fn width(mn: Mnemonic) -> u32 {
    use Mnemonic as M;
    match mn {
        M::Paddb | M::Psubb | M::Paddsb | M::Paddusb | M::Psubsb | M::Psubusb | M::Pcmpeqb => 8,
        M::Pcmpgtb | M::Pminub | M::Pmaxub | M::Pavgb | M::Packsswb | M::Packuswb => 8,
        M::Punpcklbw | M::Punpckhbw => 8,
        M::Paddd | M::Psubd | M::Pcmpeqd | M::Pcmpgtd | M::Pslld | M::Psrld | M::Psrad => 32,
        M::Packssdw | M::Punpckldq | M::Punpckhdq | M::Unpcklps | M::Unpckhps => 32,
        M::Paddq | M::Psubq | M::Psllq | M::Psrlq | M::Pmuludq | M::Psadbw => 64,
        M::Punpcklqdq | M::Punpckhqdq | M::Unpcklpd | M::Unpckhpd => 64,
        _ => 16,
    }
}

/// Two-operand packed-integer operations (`d` op `s`); `None` if `mn` is not one.
/// Shift counts come from the low 64 bits of `s` (the immediate forms pass it there).
pub fn int_op(mn: Mnemonic, d: u128, s: u128, bytes: u32) -> Option<u128> {
    use Mnemonic as M;
    let w = width(mn);
    let count = s as u64;
    Some(match mn {
        M::Paddb | M::Paddw | M::Paddd | M::Paddq => map2(d, s, bytes, w, u64::wrapping_add),
        M::Psubb | M::Psubw | M::Psubd | M::Psubq => map2(d, s, bytes, w, u64::wrapping_sub),
        M::Paddsb | M::Paddsw => map2(d, s, bytes, w, |a, b| sat_s(sx(a, w) + sx(b, w), w)),
        M::Psubsb | M::Psubsw => map2(d, s, bytes, w, |a, b| sat_s(sx(a, w) - sx(b, w), w)),
        M::Paddusb | M::Paddusw => map2(d, s, bytes, w, |a, b| sat_u(a as i64 + b as i64, w)),
        M::Psubusb | M::Psubusw => map2(d, s, bytes, w, |a, b| sat_u(a as i64 - b as i64, w)),
        M::Pcmpeqb | M::Pcmpeqw | M::Pcmpeqd => {
            map2(d, s, bytes, w, |a, b| if a == b { u64::MAX } else { 0 })
        }
        M::Pcmpgtb | M::Pcmpgtw | M::Pcmpgtd => map2(d, s, bytes, w, |a, b| {
            if sx(a, w) > sx(b, w) {
                u64::MAX
            } else {
                0
            }
        }),
        M::Pmullw => map2(d, s, bytes, 16, |a, b| a.wrapping_mul(b)),
        M::Pmulhw => map2(d, s, bytes, 16, |a, b| {
            ((sx(a, 16) * sx(b, 16)) >> 16) as u64
        }),
        M::Pmulhuw => map2(d, s, bytes, 16, |a, b| (a * b) >> 16),
        M::Pmuludq => map2(d, s, bytes, 64, |a, b| {
            (a & 0xffff_ffff) * (b & 0xffff_ffff)
        }),
        M::Pmaddwd => map2(d, s, bytes, 32, |a, b| {
            let p0 = sx(a, 16) * sx(b, 16);
            let p1 = sx(a >> 16, 16) * sx(b >> 16, 16);
            p0.wrapping_add(p1) as u64
        }),
        M::Pand | M::Andps | M::Andpd => d & s,
        M::Pandn | M::Andnps | M::Andnpd => !d & s,
        M::Por | M::Orps | M::Orpd => d | s,
        M::Pxor | M::Xorps | M::Xorpd => d ^ s,
        M::Pminub => map2(d, s, bytes, 8, u64::min),
        M::Pmaxub => map2(d, s, bytes, 8, u64::max),
        M::Pminsw => map2(d, s, bytes, 16, |a, b| sx(a, 16).min(sx(b, 16)) as u64),
        M::Pmaxsw => map2(d, s, bytes, 16, |a, b| sx(a, 16).max(sx(b, 16)) as u64),
        M::Pavgb | M::Pavgw => map2(d, s, bytes, w, |a, b| (a + b + 1) >> 1),
        M::Psadbw => map2(d, s, bytes, 64, |a, b| {
            (0..8)
                .map(|i| lane(a.into(), 8, i).abs_diff(lane(b.into(), 8, i)))
                .sum()
        }),
        M::Psllw | M::Pslld | M::Psllq => map2(d, 0, bytes, w, |a, _| {
            if count >= u64::from(w) {
                0
            } else {
                a << count
            }
        }),
        M::Psrlw | M::Psrld | M::Psrlq => map2(d, 0, bytes, w, |a, _| {
            if count >= u64::from(w) {
                0
            } else {
                a >> count
            }
        }),
        M::Psraw | M::Psrad => map2(d, 0, bytes, w, |a, _| {
            (sx(a, w) >> count.min(u64::from(w) - 1)) as u64
        }),
        M::Pslldq => {
            if count > 15 {
                0
            } else {
                d << (count * 8)
            }
        }
        M::Psrldq => {
            if count > 15 {
                0
            } else {
                d >> (count * 8)
            }
        }
        M::Punpcklbw | M::Punpcklwd | M::Punpckldq | M::Punpcklqdq | M::Unpcklps | M::Unpcklpd => {
            unpack(d, s, bytes, w, 0)
        }
        M::Punpckhbw | M::Punpckhwd | M::Punpckhdq | M::Punpckhqdq | M::Unpckhps | M::Unpckhpd => {
            unpack(d, s, bytes, w, bytes * 4 / w)
        }
        M::Packsswb | M::Packssdw | M::Packuswb => {
            let src = if mn == M::Packssdw { 32 } else { 16 };
            let n = bytes * 8 / src;
            let mut r = 0u128;
            for i in 0..2 * n {
                let v = if i < n {
                    lane(d, src, i)
                } else {
                    lane(s, src, i - n)
                };
                let v = sx(v, src);
                let x = if mn == M::Packuswb {
                    sat_u(v, src / 2)
                } else {
                    sat_s(v, src / 2)
                };
                r = set_lane(r, src / 2, i, x);
            }
            r
        }
        _ => return None,
    })
}

/// Interleaves lanes `first..` of `d` and `s` (`first` = 0: low halves, else high).
fn unpack(d: u128, s: u128, bytes: u32, w: u32, first: u32) -> u128 {
    let mut r = 0u128;
    for i in 0..bytes * 4 / w {
        r = set_lane(r, w, 2 * i, lane(d, w, first + i));
        r = set_lane(r, w, 2 * i + 1, lane(s, w, first + i));
    }
    r
}

/// PSHUFD/PSHUFLW/PSHUFHW/PSHUFW: shuffles lanes of `s` by `imm`.
pub fn pshuf(mn: Mnemonic, s: u128, imm: u8) -> u128 {
    let sel = |i: u32| u32::from(imm >> (2 * i) & 3);
    let mut r = s;
    match mn {
        Mnemonic::Pshufd => {
            for i in 0..4 {
                r = set_lane(r, 32, i, lane(s, 32, sel(i)));
            }
        }
        Mnemonic::Pshufhw => {
            for i in 0..4 {
                r = set_lane(r, 16, 4 + i, lane(s, 16, 4 + sel(i)));
            }
        }
        _ => {
            for i in 0..4 {
                r = set_lane(r, 16, i, lane(s, 16, sel(i)));
            }
        }
    }
    r
}

/// Sign bits of each `bits`-wide lane of `s` over `bytes` bytes (PMOVMSKB, MOVMSKPS/PD).
pub fn movmsk(s: u128, bytes: u32, bits: u32) -> u64 {
    (0..bytes * 8 / bits).fold(0, |m, i| m | (lane(s, bits, i) >> (bits - 1)) << i)
}
