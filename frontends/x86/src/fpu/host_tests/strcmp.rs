//! PCMPESTRI/PCMPESTRM/PCMPISTRI/PCMPISTRM against the host: every imm8 control
//! byte (bit 7 reserved) on random strings over small alphabets (so that matches,
//! ranges and terminators occur), with random explicit lengths including negative
//! and out-of-range ones.

use super::{host_ok, with_imm, Rng};
use crate::fpu::pcmpstr::compare;

/// A random string operand of bytes (`words` false) or words, over a small alphabet
/// with occasional zero elements.
fn string(rng: &mut Rng, words: bool) -> u128 {
    let alphabet: [u64; 8] = [0x61, 0x62, 0x63, 0x7f, 0x80, 0xff, 0x8000, 0x7fff];
    let (n, w) = if words { (8, 16) } else { (16, 8) };
    let mut v = 0u128;
    let zero_at = if rng.below(3) == 0 {
        99
    } else {
        rng.below(n + 2)
    };
    for i in 0..n {
        let e = if i == zero_at || rng.below(24) == 0 {
            0
        } else {
            alphabet[rng.below(if words { 8 } else { 6 }) as usize]
        };
        v |= u128::from(e) << (w * i);
    }
    v
}

/// A random explicit length register value.
fn length(rng: &mut Rng) -> i32 {
    match rng.below(8) {
        0 => -(rng.below(20) as i32),
        1 => [i32::MIN, i32::MAX, -16, 16, 17, -17][rng.below(6) as usize],
        _ => rng.below(18) as i32,
    }
}

const FLAGS: u64 = 0x8d5;

#[test]
fn string_compares_match_host() {
    if !host_ok() {
        return;
    }
    let mut rng = Rng(0x5eed_0007);
    for imm in 0..0x80u8 {
        for _ in 0..40 {
            let words = imm & 1 != 0;
            let (a, b) = (string(&mut rng, words), string(&mut rng, words));
            let (la, lb) = (length(&mut rng), length(&mut rng));
            let (xa, xb) = (super::m(a), super::m(b));
            let (ei, ef, em, emf, ii, iif, im, imf): (u32, u64, _, u64, u32, u64, _, u64);
            with_imm!(imm, I => {
                // SAFETY: SSE4.2 is present (`host_ok`); the instructions write ECX,
                // XMM0 and RFLAGS (read back through the stack), all declared.
                unsafe {
                    core::arch::asm!(
                        "pcmpestri {a}, {b}, {i}",
                        "pushfq",
                        "pop {ef}",
                        "pcmpestrm {a}, {b}, {i}",
                        "pushfq",
                        "pop {emf}",
                        "movdqa {em}, xmm0",
                        "mov {ei:e}, ecx",
                        "pcmpistri {a}, {b}, {i}",
                        "pushfq",
                        "pop {iif}",
                        "pcmpistrm {a}, {b}, {i}",
                        "pushfq",
                        "pop {imf}",
                        a = in(xmm_reg) xa,
                        b = in(xmm_reg) xb,
                        in("eax") la,
                        in("edx") lb,
                        ei = out(reg) ei,
                        ef = out(reg) ef,
                        em = out(xmm_reg) em,
                        emf = out(reg) emf,
                        out("ecx") ii,
                        iif = out(reg) iif,
                        out("xmm0") im,
                        imf = out(reg) imf,
                        i = const I,
                    );
                }
            });
            let sat = |l: i32| l.unsigned_abs().min(16);
            let e = compare(a, b, imm, Some((sat(la), sat(lb))));
            let i = compare(a, b, imm, None);
            let ctx = format!("imm {imm:#04x} a {a:#034x} b {b:#034x} eax {la} edx {lb}");
            assert_eq!(e.index(imm), ei, "pcmpestri index, {ctx}");
            assert_eq!(e.flags, ef & FLAGS, "pcmpestri flags, {ctx}");
            assert_eq!(e.mask(imm), super::u(em), "pcmpestrm mask, {ctx}");
            assert_eq!(e.flags, emf & FLAGS, "pcmpestrm flags, {ctx}");
            assert_eq!(i.index(imm), ii, "pcmpistri index, {ctx}");
            assert_eq!(i.flags, iif & FLAGS, "pcmpistri flags, {ctx}");
            assert_eq!(i.mask(imm), super::u(im), "pcmpistrm mask, {ctx}");
            assert_eq!(i.flags, imf & FLAGS, "pcmpistrm flags, {ctx}");
        }
    }
}
