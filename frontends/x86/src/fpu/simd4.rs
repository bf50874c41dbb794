//! Packed-integer SIMD of SSE3 (the duplicating moves), SSSE3, SSE4.1, SSE4.2
//! (PCMPGTQ) and PCLMULQDQ, on the register values of [`super::simd`] (`u128`, lanes
//! from the least significant end; `bytes` = 8 for the MMX forms of SSSE3, else 16).
//! The string comparisons of SSE4.2 are in [`super::pcmpstr`]. Every function here is
//! pure.

use super::simd::{lane, map2, movmsk, sat_s, sat_u, set_lane, sx};
use iced_x86::Mnemonic;
use vireo_core::cpu::flags::{CF, ZF};

/// Operands besides the destination and source registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extra {
    /// The imm8 operand (0 if none).
    pub imm: u8,
    /// The source is a memory operand (INSERTPS takes its dword as is).
    pub mem: bool,
    /// XMM0, the implicit mask of BLENDVPS/BLENDVPD/PBLENDVB.
    pub xmm0: u128,
}

/// Operations that write the destination register; `None` if `mn` is not one.
pub fn int_op(mn: Mnemonic, d: u128, s: u128, bytes: u32, x: &Extra) -> Option<u128> {
    use Mnemonic as M;
    let imm = x.imm;
    Some(match mn {
        M::Movsldup => dup32(s, 0),
        M::Movshdup => dup32(s, 1),
        M::Movddup => {
            let q = lane(s, 64, 0);
            set_lane(u128::from(q), 64, 1, q)
        }
        M::Movntdqa => s,
        M::Pshufb => pshufb(d, s, bytes),
        M::Phaddw | M::Phaddd | M::Phaddsw | M::Phsubw | M::Phsubd | M::Phsubsw => {
            horizontal(mn, d, s, bytes)
        }
        M::Pmaddubsw => map2(d, s, bytes, 16, |a, b| {
            // Unsigned bytes of the destination times signed bytes of the source.
            let p0 = (a & 0xff) as i64 * sx(b, 8);
            let p1 = (a >> 8 & 0xff) as i64 * sx(b >> 8, 8);
            sat_s(p0 + p1, 16)
        }),
        M::Pmulhrsw => map2(d, s, bytes, 16, |a, b| {
            let p = sx(a, 16) * sx(b, 16);
            (((p >> 14) + 1) >> 1) as u64
        }),
        M::Psignb | M::Psignw | M::Psignd => {
            let w = width(mn);
            map2(d, s, bytes, w, |a, b| match sx(b, w) {
                v if v < 0 => a.wrapping_neg(),
                0 => 0,
                _ => a,
            })
        }
        M::Pabsb | M::Pabsw | M::Pabsd => {
            let w = width(mn);
            map2(s, 0, bytes, w, |a, _| sx(a, w).unsigned_abs())
        }
        M::Palignr => palignr(d, s, bytes, imm),
        M::Pmulld => map2(d, s, 16, 32, u64::wrapping_mul),
        M::Pmuldq => map2(d, s, 16, 64, |a, b| (sx(a, 32) * sx(b, 32)) as u64),
        M::Pminsb => map2(d, s, 16, 8, |a, b| sx(a, 8).min(sx(b, 8)) as u64),
        M::Pmaxsb => map2(d, s, 16, 8, |a, b| sx(a, 8).max(sx(b, 8)) as u64),
        M::Pminsd => map2(d, s, 16, 32, |a, b| sx(a, 32).min(sx(b, 32)) as u64),
        M::Pmaxsd => map2(d, s, 16, 32, |a, b| sx(a, 32).max(sx(b, 32)) as u64),
        M::Pminuw => map2(d, s, 16, 16, u64::min),
        M::Pmaxuw => map2(d, s, 16, 16, u64::max),
        M::Pminud => map2(d, s, 16, 32, u64::min),
        M::Pmaxud => map2(d, s, 16, 32, u64::max),
        M::Pcmpeqq => map2(d, s, 16, 64, |a, b| if a == b { u64::MAX } else { 0 }),
        M::Pcmpgtq => map2(d, s, 16, 64, |a, b| {
            if (a as i64) > (b as i64) {
                u64::MAX
            } else {
                0
            }
        }),
        M::Pblendw => blend(d, s, 16, u64::from(imm)),
        M::Blendps => blend(d, s, 32, u64::from(imm)),
        M::Blendpd => blend(d, s, 64, u64::from(imm)),
        M::Pblendvb => blend(d, s, 8, movmsk(x.xmm0, 16, 8)),
        M::Blendvps => blend(d, s, 32, movmsk(x.xmm0, 16, 32)),
        M::Blendvpd => blend(d, s, 64, movmsk(x.xmm0, 16, 64)),
        M::Insertps => {
            let v = if x.mem {
                lane(s, 32, 0)
            } else {
                lane(s, 32, u32::from(imm >> 6))
            };
            let r = set_lane(d, 32, u32::from(imm >> 4 & 3), v);
            blend(r, 0, 32, u64::from(imm & 15))
        }
        M::Pinsrb => set_lane(d, 8, u32::from(imm & 15), s as u64),
        M::Pinsrd => set_lane(d, 32, u32::from(imm & 3), s as u64),
        M::Pinsrq => set_lane(d, 64, u32::from(imm & 1), s as u64),
        M::Pmovsxbw | M::Pmovsxbd | M::Pmovsxbq | M::Pmovsxwd | M::Pmovsxwq | M::Pmovsxdq => {
            pmovx(mn, s, true)
        }
        M::Pmovzxbw | M::Pmovzxbd | M::Pmovzxbq | M::Pmovzxwd | M::Pmovzxwq | M::Pmovzxdq => {
            pmovx(mn, s, false)
        }
        M::Packusdw => {
            let mut r = 0;
            for i in 0..8 {
                let v = if i < 4 {
                    lane(d, 32, i)
                } else {
                    lane(s, 32, i - 4)
                };
                r = set_lane(r, 16, i, sat_u(sx(v, 32), 16));
            }
            r
        }
        M::Mpsadbw => {
            let so = u32::from(imm & 3) * 4;
            let doff = u32::from(imm >> 2 & 1) * 4;
            let mut r = 0;
            for j in 0..8 {
                let sum = (0..4)
                    .map(|k| lane(d, 8, doff + j + k).abs_diff(lane(s, 8, so + k)))
                    .sum();
                r = set_lane(r, 16, j, sum);
            }
            r
        }
        M::Phminposuw => {
            let (mut idx, mut min) = (0u32, lane(s, 16, 0));
            for i in 1..8 {
                if lane(s, 16, i) < min {
                    min = lane(s, 16, i);
                    idx = i;
                }
            }
            u128::from(min) | u128::from(idx) << 16
        }
        M::Pclmulqdq => clmul(
            lane(d, 64, u32::from(imm & 1)),
            lane(s, 64, u32::from(imm >> 4 & 1)),
        ),
        _ => return None,
    })
}

/// PEXTRB/PEXTRD/PEXTRQ/EXTRACTPS: the selected element of `s`, zero-extended; `None`
/// if `mn` is not one of them.
pub fn extract(mn: Mnemonic, s: u128, imm: u8) -> Option<u64> {
    use Mnemonic as M;
    Some(match mn {
        M::Pextrb => lane(s, 8, u32::from(imm & 15)),
        M::Pextrd | M::Extractps => lane(s, 32, u32::from(imm & 3)),
        M::Pextrq => lane(s, 64, u32::from(imm & 1)),
        _ => return None,
    })
}

/// PTEST: ZF if `d AND s` is zero, CF if `(NOT d) AND s` is zero (the other arithmetic
/// flags clear).
pub fn ptest(d: u128, s: u128) -> u64 {
    let zf = if d & s == 0 { ZF } else { 0 };
    let cf = if !d & s == 0 { CF } else { 0 };
    zf | cf
}

/// Lane width of the SSSE3 sign and absolute-value instructions.
fn width(mn: Mnemonic) -> u32 {
    use Mnemonic as M;
    match mn {
        M::Psignb | M::Pabsb => 8,
        M::Psignd | M::Pabsd => 32,
        _ => 16,
    }
}

/// MOVSLDUP (`odd` = 0) / MOVSHDUP (1): dwords `odd` and `2 + odd` duplicated.
fn dup32(s: u128, odd: u32) -> u128 {
    let mut r = 0;
    for i in 0..4 {
        r = set_lane(r, 32, i, lane(s, 32, (i & !1) + odd));
    }
    r
}

/// PSHUFB: byte `i` is byte `s[i] mod bytes` of `d`, or zero if `s[i]` bit 7 is set.
fn pshufb(d: u128, s: u128, bytes: u32) -> u128 {
    let mut r = 0;
    for i in 0..bytes {
        let sel = lane(s, 8, i);
        if sel & 0x80 == 0 {
            r = set_lane(r, 8, i, lane(d, 8, sel as u32 & (bytes - 1)));
        }
    }
    r
}

/// PHADD/PHSUB: pairs of adjacent lanes of `d` give the low half of the result, those
/// of `s` the high half (first lane minus second for the subtractions).
fn horizontal(mn: Mnemonic, d: u128, s: u128, bytes: u32) -> u128 {
    use Mnemonic as M;
    let w = if matches!(mn, M::Phaddd | M::Phsubd) {
        32
    } else {
        16
    };
    let f = |a: u64, b: u64| match mn {
        M::Phaddw | M::Phaddd => a.wrapping_add(b),
        M::Phsubw | M::Phsubd => a.wrapping_sub(b),
        M::Phaddsw => sat_s(sx(a, 16) + sx(b, 16), 16),
        _ => sat_s(sx(a, 16) - sx(b, 16), 16),
    };
    let half = bytes * 4 / w;
    let mut r = 0;
    for i in 0..half {
        r = set_lane(r, w, i, f(lane(d, w, 2 * i), lane(d, w, 2 * i + 1)));
        r = set_lane(r, w, half + i, f(lane(s, w, 2 * i), lane(s, w, 2 * i + 1)));
    }
    r
}

/// PALIGNR: `d:s` (d high) shifted right by `imm` bytes, the low `bytes` bytes kept.
fn palignr(d: u128, s: u128, bytes: u32, imm: u8) -> u128 {
    let sh = u32::from(imm) * 8;
    if bytes == 8 {
        let m = u128::from(u64::MAX);
        let cat = (d & m) << 64 | (s & m);
        return if sh >= 128 { 0 } else { cat >> sh & m };
    }
    match sh {
        0 => s,
        1..=127 => s >> sh | d << (128 - sh),
        128..=255 => d >> (sh - 128),
        _ => 0,
    }
}

/// Lane `i` of `s` where bit `i` of `mask` is set, else lane `i` of `d`.
fn blend(d: u128, s: u128, w: u32, mask: u64) -> u128 {
    let mut r = d;
    for i in 0..128 / w {
        if mask >> i & 1 != 0 {
            r = set_lane(r, w, i, lane(s, w, i));
        }
    }
    r
}

/// PMOVSX/PMOVZX: the low lanes of `s` widened.
fn pmovx(mn: Mnemonic, s: u128, signed: bool) -> u128 {
    use Mnemonic as M;
    let (from, to) = match mn {
        M::Pmovsxbw | M::Pmovzxbw => (8, 16),
        M::Pmovsxbd | M::Pmovzxbd => (8, 32),
        M::Pmovsxbq | M::Pmovzxbq => (8, 64),
        M::Pmovsxwd | M::Pmovzxwd => (16, 32),
        M::Pmovsxwq | M::Pmovzxwq => (16, 64),
        _ => (32, 64),
    };
    let mut r = 0;
    for i in 0..128 / to {
        let v = lane(s, from, i);
        let v = if signed { sx(v, from) as u64 } else { v };
        r = set_lane(r, to, i, v);
    }
    r
}

/// Carry-less product of two 64-bit polynomials over GF(2).
pub fn clmul(a: u64, b: u64) -> u128 {
    (0..64)
        .filter(|i| b >> i & 1 != 0)
        .fold(0, |r, i| r ^ u128::from(a) << i)
}
