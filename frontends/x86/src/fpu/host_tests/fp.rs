//! SSE3/SSE4.1 floating point against the host: results and MXCSR flags under every
//! rounding mode with DAZ/FTZ on and off (exceptions masked), on special values
//! (zeros, infinities, NaNs, denormals, halfway cases, the edges of exactness) and
//! random ones.

use super::{host_ok, run2, with_imm, Rng};
use crate::fpu::sse4_fp::fp_op;
use crate::fpu::sse_fp::Env;
use iced_x86::Mnemonic;

const SPECIAL32: [u32; 24] = [
    0x0000_0000,
    0x8000_0000,
    0x3f80_0000,
    0xbf80_0000,
    0x3f00_0000,
    0x3fc0_0000,
    0x4020_0000,
    0xc020_0000,
    0x7f80_0000,
    0xff80_0000,
    0x7fc0_1234,
    0xffc0_0001,
    0x7f80_0001,
    0xff90_0000,
    0x0000_0001,
    0x807f_ffff,
    0x0080_0000,
    0x7f7f_ffff,
    0x4b00_0000,
    0x4b00_0001,
    0xcb7f_ffff,
    0x4aff_ffff,
    0x3eff_ffff,
    0x0040_0000,
];

const SPECIAL64: [u64; 20] = [
    0,
    1 << 63,
    0x3ff0_0000_0000_0000,
    0xbff0_0000_0000_0000,
    0x3fe0_0000_0000_0000,
    0x3ff8_0000_0000_0000,
    0x7ff0_0000_0000_0000,
    0xfff0_0000_0000_0000,
    0x7ff8_0000_0000_0042,
    0x7ff0_0000_0000_0001,
    0xfff4_0000_0000_0000,
    1,
    0x800f_ffff_ffff_ffff,
    0x0010_0000_0000_0000,
    0x7fef_ffff_ffff_ffff,
    0x4330_0000_0000_0000,
    0x4330_0000_0000_0001,
    0xc32f_ffff_ffff_ffff,
    0x432f_ffff_ffff_ffff,
    0x3fdf_ffff_ffff_ffff,
];

/// A random lane: a special value, a value with a short fraction (halfway cases),
/// a value near the overflow/underflow edges, or random bits.
fn lane32(rng: &mut Rng) -> u64 {
    match rng.below(5) {
        0 => u64::from(SPECIAL32[rng.below(SPECIAL32.len() as u64) as usize]),
        1 => u64::from((rng.below(64) as f32 / 4.0 - 8.0).to_bits()),
        2 => u64::from(f32::from_bits((rng.next() as u32 & 0x807f_ffff) | 0x7e80_0000).to_bits()),
        3 => u64::from((rng.next() as u32 & 0x81ff_ffff) | 0x0080_0000),
        _ => rng.next() & 0xffff_ffff,
    }
}

fn lane64(rng: &mut Rng) -> u64 {
    match rng.below(5) {
        0 => SPECIAL64[rng.below(SPECIAL64.len() as u64) as usize],
        1 => (rng.below(64) as f64 / 4.0 - 8.0).to_bits(),
        2 => (rng.next() & 0x800f_ffff_ffff_ffff) | 0x7fd0_0000_0000_0000,
        3 => (rng.next() & 0x803f_ffff_ffff_ffff) | 0x0010_0000_0000_0000,
        _ => rng.next(),
    }
}

fn ps(rng: &mut Rng) -> u128 {
    (0..4).fold(0, |v, i| v | u128::from(lane32(rng)) << (32 * i))
}

fn pd(rng: &mut Rng) -> u128 {
    u128::from(lane64(rng)) | u128::from(lane64(rng)) << 64
}

/// A masked MXCSR with a random rounding mode, DAZ and FTZ.
fn mxcsr(rng: &mut Rng) -> u32 {
    0x1f80 | (rng.below(4) as u32) << 13 | (rng.below(2) as u32) << 6 | (rng.below(2) as u32) << 15
}

/// Our result and MXCSR after.
fn ours(mn: Mnemonic, d: u128, s: u128, imm: u8, mx: u32) -> (u128, u32) {
    let mut env = Env::new(mx);
    let r = fp_op(&mut env, mn, d, s, imm).expect("implemented");
    (r, mx | u32::from(env.committed | env.ctx.flags))
}

fn operands(rng: &mut Rng, double: bool) -> (u128, u128) {
    if double {
        (pd(rng), pd(rng))
    } else {
        (ps(rng), ps(rng))
    }
}

#[test]
fn horizontal_and_alternating_match_host() {
    if !host_ok() {
        return;
    }
    let mut rng = Rng(0x5eed_0101);
    macro_rules! check {
        ($($mn:ident $name:literal $double:literal),* $(,)?) => {$(
            for _ in 0..3000 {
                let (d, s) = operands(&mut rng, $double);
                let mx = mxcsr(&mut rng);
                let want = run2!($name, d, s, mx);
                let got = ours(Mnemonic::$mn, d, s, 0, mx);
                assert_eq!(got, want, "{} {d:#034x} {s:#034x} mxcsr {mx:#x}", $name);
            }
        )*};
    }
    check!(
        Addsubps "addsubps" false, Addsubpd "addsubpd" true, Haddps "haddps" false,
        Haddpd "haddpd" true, Hsubps "hsubps" false, Hsubpd "hsubpd" true,
    );
}

#[test]
fn round_matches_host() {
    if !host_ok() {
        return;
    }
    let mut rng = Rng(0x5eed_0102);
    for imm in 0..=255u8 {
        for _ in 0..40 {
            let mx = mxcsr(&mut rng);
            let (d, s) = operands(&mut rng, false);
            let (d2, s2) = operands(&mut rng, true);
            let cases = [
                (
                    Mnemonic::Roundps,
                    d,
                    s,
                    with_imm!(imm, I => run2!("roundps", d, s, mx, I)),
                ),
                (
                    Mnemonic::Roundss,
                    d,
                    s,
                    with_imm!(imm, I => run2!("roundss", d, s, mx, I)),
                ),
                (
                    Mnemonic::Roundpd,
                    d2,
                    s2,
                    with_imm!(imm, I => run2!("roundpd", d2, s2, mx, I)),
                ),
                (
                    Mnemonic::Roundsd,
                    d2,
                    s2,
                    with_imm!(imm, I => run2!("roundsd", d2, s2, mx, I)),
                ),
            ];
            for (mn, d, s, want) in cases {
                let got = ours(mn, d, s, imm, mx);
                assert_eq!(got, want, "{mn:?} imm {imm:#x} {s:#034x} mxcsr {mx:#x}");
            }
        }
    }
}

/// `got` with every `bits`-wide lane that is a NaN in both `got` and `want` replaced by
/// `want`'s.
fn nan_lanes_as(got: u128, want: u128, bits: u32) -> u128 {
    let mask = if bits == 32 {
        0xffff_ffffu128
    } else {
        u128::from(u64::MAX)
    };
    let is_nan = |v: u128| {
        if bits == 32 {
            f32::from_bits(v as u32).is_nan()
        } else {
            f64::from_bits(v as u64).is_nan()
        }
    };
    let mut out = got;
    for i in 0..128 / bits {
        let sh = i * bits;
        let (g, w) = ((got >> sh) & mask, (want >> sh) & mask);
        if is_nan(g) && is_nan(w) {
            out = (out & !(mask << sh)) | (w << sh);
        }
    }
    out
}

#[test]
fn dot_products_match_host() {
    if !host_ok() {
        return;
    }
    let mut rng = Rng(0x5eed_0103);
    for imm in 0..=255u8 {
        for _ in 0..40 {
            let mx = mxcsr(&mut rng);
            let (d, s) = operands(&mut rng, false);
            let (d2, s2) = operands(&mut rng, true);
            let cases = [
                (
                    Mnemonic::Dpps,
                    d,
                    s,
                    with_imm!(imm, I => run2!("dpps", d, s, mx, I)),
                ),
                (
                    Mnemonic::Dppd,
                    d2,
                    s2,
                    with_imm!(imm, I => run2!("dppd", d2, s2, mx, I)),
                ),
            ];
            for (mn, d, s, want) in cases {
                let got = ours(mn, d, s, imm, mx);
                // Which NaN a sum of several NaN products gives differs between
                // Intel generations (ours follows the SDM's order of additions): lanes
                // where both are NaN count as equal.
                let lane = if mn == Mnemonic::Dpps { 32 } else { 64 };
                let got_cmp = (nan_lanes_as(got.0, want.0, lane), got.1);
                assert_eq!(
                    got_cmp, want,
                    "{mn:?} imm {imm:#x} {d:#034x} {s:#034x} mxcsr {mx:#x} (ours {:#034x})",
                    got.0
                );
            }
        }
    }
}

/// SSE/SSE2 arithmetic shares the rounding and FTZ code: a result that rounds up
/// to the smallest normal from below it is tiny and flushed under FTZ (found by the
/// dot-product comparison).
#[test]
fn sse2_arithmetic_matches_host() {
    use crate::fpu::sse_fp::{self as fp, Arith};
    if !host_ok() {
        return;
    }
    let mut rng = Rng(0x5eed_0104);
    let lanes = |e: &mut Env, bits: u32, d: u128, s: u128, op: Option<Arith>| {
        let t = fp::ieee(bits);
        let m = if bits == 32 { 0xffff_ffff } else { u64::MAX };
        (0..128 / bits).fold(0u128, |r, i| {
            let (a, b) = ((d >> (bits * i)) as u64 & m, (s >> (bits * i)) as u64 & m);
            let v = match op {
                Some(op) => fp::arith(e, t, op, a, b),
                None => fp::sqrt(e, t, b),
            };
            r | u128::from(v) << (bits * i)
        })
    };
    macro_rules! check {
        ($($op:expr, $name:literal, $double:literal);* $(;)?) => {$(
            for _ in 0..3000 {
                let (d, s) = operands(&mut rng, $double);
                let mx = mxcsr(&mut rng);
                let want = run2!($name, d, s, mx);
                let mut env = Env::new(mx);
                let r = lanes(&mut env, if $double { 64 } else { 32 }, d, s, $op);
                let got = (r, mx | u32::from(env.ctx.flags));
                assert_eq!(got, want, "{} {d:#034x} {s:#034x} mxcsr {mx:#x}", $name);
            }
        )*};
    }
    check!(
        Some(Arith::Add), "addps", false; Some(Arith::Sub), "subpd", true;
        Some(Arith::Mul), "mulps", false; Some(Arith::Mul), "mulpd", true;
        Some(Arith::Div), "divps", false; Some(Arith::Div), "divpd", true;
        Some(Arith::Min), "minps", false; Some(Arith::Max), "maxpd", true;
        None, "sqrtps", false; None, "sqrtpd", true;
    );
}

/// SSE/SSE2 compares and conversions on the same operands.
#[test]
fn sse2_compares_and_conversions_match_host() {
    use crate::fpu::sse_fp::{self as fp};
    if !host_ok() {
        return;
    }
    let mut rng = Rng(0x5eed_0105);
    let m32 = |v: u128, i: u32| (v >> (32 * i)) as u64 & 0xffff_ffff;
    let m64 = |v: u128, i: u32| (v >> (64 * i)) as u64;
    for imm in 0..8u8 {
        for _ in 0..500 {
            let ((d, s), (d2, s2)) = (operands(&mut rng, false), operands(&mut rng, true));
            let mx = mxcsr(&mut rng);
            let want = with_imm!(imm, I => run2!("cmpps", d, s, mx, I));
            let mut e = Env::new(mx);
            let r = (0..4).fold(0u128, |r, i| {
                r | u128::from(fp::cmp(&mut e, fp::ieee(32), imm, m32(d, i), m32(s, i))) << (32 * i)
            });
            assert_eq!(
                (r, mx | u32::from(e.ctx.flags)),
                want,
                "cmpps {imm} {d:#x} {s:#x}"
            );
            let want = with_imm!(imm, I => run2!("cmppd", d2, s2, mx, I));
            let mut e = Env::new(mx);
            let r = (0..2).fold(0u128, |r, i| {
                r | u128::from(fp::cmp(&mut e, fp::ieee(64), imm, m64(d2, i), m64(s2, i)))
                    << (64 * i)
            });
            assert_eq!(
                (r, mx | u32::from(e.ctx.flags)),
                want,
                "cmppd {imm} {d2:#x} {s2:#x}"
            );
        }
    }
    for _ in 0..3000 {
        let ((_, s), (_, s2)) = (operands(&mut rng, false), operands(&mut rng, true));
        let mx = mxcsr(&mut rng);
        for trunc in [false, true] {
            let want = if trunc {
                run2!("cvttps2dq", 0, s, mx)
            } else {
                run2!("cvtps2dq", 0, s, mx)
            };
            let mut e = Env::new(mx);
            let r = (0..4).fold(0u128, |r, i| {
                r | u128::from(fp::to_int(&mut e, fp::ieee(32), m32(s, i), 32, trunc)) << (32 * i)
            });
            assert_eq!(
                (r, mx | u32::from(e.ctx.flags)),
                want,
                "cvt(t)ps2dq {s:#x} {mx:#x}"
            );
        }
        let want = run2!("cvtpd2ps", 0, s2, mx);
        let mut e = Env::new(mx);
        let r = (0..2).fold(0u128, |r, i| {
            r | u128::from(fp::convert(&mut e, fp::ieee(64), fp::ieee(32), m64(s2, i))) << (32 * i)
        });
        assert_eq!(
            (r, mx | u32::from(e.ctx.flags)),
            want,
            "cvtpd2ps {s2:#x} {mx:#x}"
        );
        let want = run2!("cvtps2pd", 0, s, mx);
        let mut e = Env::new(mx);
        let r = (0..2).fold(0u128, |r, i| {
            r | u128::from(fp::convert(&mut e, fp::ieee(32), fp::ieee(64), m32(s, i))) << (64 * i)
        });
        assert_eq!(
            (r, mx | u32::from(e.ctx.flags)),
            want,
            "cvtps2pd {s:#x} {mx:#x}"
        );
        let want = run2!("cvtdq2ps", 0, s, mx);
        let mut e = Env::new(mx);
        let r = (0..4).fold(0u128, |r, i| {
            let v = i64::from(m32(s, i) as u32 as i32);
            r | u128::from(fp::from_int(&mut e, fp::ieee(32), v)) << (32 * i)
        });
        assert_eq!(
            (r, mx | u32::from(e.ctx.flags)),
            want,
            "cvtdq2ps {s:#x} {mx:#x}"
        );
    }
}
