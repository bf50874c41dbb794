//! Floating point of SSE3 (ADDSUBPS/PD, HADDPS/PD, HSUBPS/PD) and SSE4.1
//! (ROUNDPS/PD/SS/SD, DPPS/DPPD), built on the MXCSR arithmetic of [`super::sse_fp`].
//!
//! Every lane operation is an ordinary SSE addition, subtraction or multiplication
//! (rounding, DAZ/FTZ, NaN rules, flags). The dot products are three (DPPS) or two
//! (DPPD) dependent steps in the SDM's order: the selected products (a deselected
//! one is +0.0 and raises nothing), the pairwise sums, the final sum; each step ends
//! with [`Env::stage`], so an unmasked exception stops the instruction after the step
//! that raised it with the flags of the earlier steps kept (measured on hardware:
//! a masked PE from the products stays set when the final sum raises an unmasked IE).

use super::simd::{lane, set_lane};
use super::softfloat::Round;
use super::sse_fp::{self as fp, mx, Arith, Env};
use iced_x86::Mnemonic;

/// The instructions of this module; `None` if `mn` is not one.
pub fn fp_op(env: &mut Env, mn: Mnemonic, d: u128, s: u128, imm: u8) -> Option<u128> {
    use Mnemonic as M;
    let bits = match mn {
        M::Addsubps | M::Haddps | M::Hsubps | M::Roundps | M::Roundss | M::Dpps => 32,
        M::Addsubpd | M::Haddpd | M::Hsubpd | M::Roundpd | M::Roundsd | M::Dppd => 64,
        _ => return None,
    };
    let t = fp::ieee(bits);
    let n = 128 / bits;
    let op = |e: &mut Env, o: Arith, a: u64, b: u64| fp::arith(e, t, o, a, b);
    Some(match mn {
        M::Addsubps | M::Addsubpd => {
            let mut r = 0;
            for i in 0..n {
                let o = if i % 2 == 0 { Arith::Sub } else { Arith::Add };
                r = set_lane(r, bits, i, op(env, o, lane(d, bits, i), lane(s, bits, i)));
            }
            r
        }
        M::Haddps | M::Haddpd | M::Hsubps | M::Hsubpd => {
            let o = if matches!(mn, M::Haddps | M::Haddpd) {
                Arith::Add
            } else {
                Arith::Sub
            };
            let half = n / 2;
            let mut r = 0;
            for i in 0..half {
                let x = op(env, o, lane(d, bits, 2 * i), lane(d, bits, 2 * i + 1));
                r = set_lane(r, bits, i, x);
            }
            for i in 0..half {
                let x = op(env, o, lane(s, bits, 2 * i), lane(s, bits, 2 * i + 1));
                r = set_lane(r, bits, half + i, x);
            }
            r
        }
        M::Roundps | M::Roundpd | M::Roundss | M::Roundsd => {
            let mode = if imm & 4 != 0 {
                Round::from_bits(u64::from(env.mxcsr >> mx::RC_SHIFT))
            } else {
                Round::from_bits(u64::from(imm))
            };
            let no_pe = imm & 8 != 0;
            let (base, lanes) = if matches!(mn, M::Roundss | M::Roundsd) {
                (d, 1)
            } else {
                (0, n)
            };
            let mut r = base;
            for i in 0..lanes {
                let x = fp::round_int(env, t, lane(s, bits, i), mode, no_pe);
                r = set_lane(r, bits, i, x);
            }
            r
        }
        _ => dot(env, t, bits, d, s, imm),
    })
}

/// DPPS/DPPD. On an unmasked exception the value returned is meaningless (the caller
/// faults and leaves the destination alone).
fn dot(env: &mut Env, t: super::ext::Ieee, bits: u32, d: u128, s: u128, imm: u8) -> u128 {
    let n = 128 / bits;
    let mut p = [0u64; 4];
    for (i, pi) in p.iter_mut().enumerate().take(n as usize) {
        if imm >> (4 + i) & 1 != 0 {
            let i = i as u32;
            *pi = fp::arith(env, t, Arith::Mul, lane(d, bits, i), lane(s, bits, i));
        }
    }
    if env.stage() {
        return d;
    }
    let sum = if n == 4 {
        let lo = fp::arith(env, t, Arith::Add, p[0], p[1]);
        let hi = fp::arith(env, t, Arith::Add, p[2], p[3]);
        if env.stage() {
            return d;
        }
        fp::arith(env, t, Arith::Add, lo, hi)
    } else {
        fp::arith(env, t, Arith::Add, p[0], p[1])
    };
    let mut r = 0;
    for i in 0..n {
        if imm >> i & 1 != 0 {
            r = set_lane(r, bits, i, sum);
        }
    }
    r
}
