//! Packed-integer instructions (XMM and MMX forms), PTEST, the extracts and inserts,
//! PCLMULQDQ and CRC32 against the host.

use super::{host_ok, run2, with_imm, Rng};
use crate::fpu::simd4::{self, Extra};
use crate::helpers::integer::crc32c;
use iced_x86::Mnemonic;

/// Random operands biased towards the lane values where saturation, signs and
/// wrap-around matter.
fn operand(rng: &mut Rng) -> u128 {
    if rng.below(3) == 0 {
        return rng.u128();
    }
    let special = [0x00u8, 0x01, 0x7f, 0x80, 0x81, 0xff, 0xfe, 0x40];
    let mut v = 0u128;
    for i in 0..16 {
        let b = if rng.below(2) == 0 {
            special[rng.below(8) as usize]
        } else {
            rng.next() as u8
        };
        v |= u128::from(b) << (8 * i);
    }
    v
}

fn ours(mn: Mnemonic, d: u128, s: u128, bytes: u32, imm: u8, xmm0: u128) -> u128 {
    let x = Extra {
        imm,
        mem: false,
        xmm0,
    };
    simd4::int_op(mn, d, s, bytes, &x).expect("implemented")
}

const N: usize = 300;

#[test]
fn xmm_forms_match_host() {
    if !host_ok() {
        return;
    }
    let mut rng = Rng(0x5eed_0001);
    macro_rules! check {
        ($($mn:ident $name:literal),* $(,)?) => {$(
            for _ in 0..N {
                let (d, s) = (operand(&mut rng), operand(&mut rng));
                let (want, _) = run2!($name, d, s, 0);
                let got = ours(Mnemonic::$mn, d, s, 16, 0, 0);
                assert_eq!(got, want, "{} {d:#034x} {s:#034x}", $name);
            }
        )*};
    }
    check!(
        Movsldup "movsldup", Movshdup "movshdup", Movddup "movddup", Pshufb "pshufb",
        Phaddw "phaddw", Phaddd "phaddd", Phaddsw "phaddsw", Phsubw "phsubw",
        Phsubd "phsubd", Phsubsw "phsubsw", Pmaddubsw "pmaddubsw", Pmulhrsw "pmulhrsw",
        Psignb "psignb", Psignw "psignw", Psignd "psignd", Pabsb "pabsb", Pabsw "pabsw",
        Pabsd "pabsd", Pmulld "pmulld", Pmuldq "pmuldq", Pminsb "pminsb",
        Pminsd "pminsd", Pminuw "pminuw", Pminud "pminud", Pmaxsb "pmaxsb",
        Pmaxsd "pmaxsd", Pmaxuw "pmaxuw", Pmaxud "pmaxud", Pcmpeqq "pcmpeqq",
        Pcmpgtq "pcmpgtq", Packusdw "packusdw", Phminposuw "phminposuw",
        Pmovsxbw "pmovsxbw", Pmovsxbd "pmovsxbd", Pmovsxbq "pmovsxbq",
        Pmovsxwd "pmovsxwd", Pmovsxwq "pmovsxwq", Pmovsxdq "pmovsxdq",
        Pmovzxbw "pmovzxbw", Pmovzxbd "pmovzxbd", Pmovzxbq "pmovzxbq",
        Pmovzxwd "pmovzxwd", Pmovzxwq "pmovzxwq", Pmovzxdq "pmovzxdq",
    );
    // PCMPEQQ/PCMPGTQ/PHMINPOSUW with equal lanes.
    for _ in 0..N {
        let d = operand(&mut rng);
        let s = d ^ (u128::from(rng.below(2)) << 70);
        for (mn, got) in [
            (Mnemonic::Pcmpeqq, run2!("pcmpeqq", d, s, 0).0),
            (Mnemonic::Pcmpgtq, run2!("pcmpgtq", d, s, 0).0),
        ] {
            assert_eq!(ours(mn, d, s, 16, 0, 0), got, "{mn:?}");
        }
        let w = d & 0xffff;
        let dup = w | w << 48 | w << 96;
        assert_eq!(
            ours(Mnemonic::Phminposuw, 0, dup, 16, 0, 0),
            run2!("phminposuw", 0, dup, 0).0
        );
    }
}

#[test]
fn blendv_uses_xmm0() {
    if !host_ok() {
        return;
    }
    let mut rng = Rng(0x5eed_0002);
    for _ in 0..N {
        let (d, s, mask) = (rng.u128(), rng.u128(), operand(&mut rng));
        for (mn, name) in [
            (Mnemonic::Pblendvb, 0),
            (Mnemonic::Blendvps, 1),
            (Mnemonic::Blendvpd, 2),
        ] {
            let mut r = super::m(d);
            // SAFETY: SSE4.1 is present (`host_ok`); only the named registers change.
            unsafe {
                match name {
                    0 => core::arch::asm!("pblendvb {d}, {s}, xmm0", d = inout(xmm_reg) r,
                        s = in(xmm_reg) super::m(s), in("xmm0") super::m(mask)),
                    1 => core::arch::asm!("blendvps {d}, {s}, xmm0", d = inout(xmm_reg) r,
                        s = in(xmm_reg) super::m(s), in("xmm0") super::m(mask)),
                    _ => core::arch::asm!("blendvpd {d}, {s}, xmm0", d = inout(xmm_reg) r,
                        s = in(xmm_reg) super::m(s), in("xmm0") super::m(mask)),
                }
            }
            assert_eq!(ours(mn, d, s, 16, 0, mask), super::u(r), "{mn:?}");
        }
    }
}

#[test]
fn immediate_forms_match_host() {
    if !host_ok() {
        return;
    }
    let mut rng = Rng(0x5eed_0003);
    for imm in 0..=255u8 {
        for _ in 0..6 {
            let (d, s) = (operand(&mut rng), operand(&mut rng));
            let cases = [
                (
                    Mnemonic::Palignr,
                    with_imm!(imm, I => run2!("palignr", d, s, 0, I)),
                ),
                (
                    Mnemonic::Pblendw,
                    with_imm!(imm, I => run2!("pblendw", d, s, 0, I)),
                ),
                (
                    Mnemonic::Blendps,
                    with_imm!(imm, I => run2!("blendps", d, s, 0, I)),
                ),
                (
                    Mnemonic::Blendpd,
                    with_imm!(imm, I => run2!("blendpd", d, s, 0, I)),
                ),
                (
                    Mnemonic::Insertps,
                    with_imm!(imm, I => run2!("insertps", d, s, 0, I)),
                ),
                (
                    Mnemonic::Mpsadbw,
                    with_imm!(imm, I => run2!("mpsadbw", d, s, 0, I)),
                ),
                (
                    Mnemonic::Pclmulqdq,
                    with_imm!(imm, I => run2!("pclmulqdq", d, s, 0, I)),
                ),
            ];
            for (mn, (want, _)) in cases {
                let got = ours(mn, d, s, 16, imm, 0);
                assert_eq!(got, want, "{mn:?} imm {imm:#x} {d:#034x} {s:#034x}");
            }
        }
    }
}

#[test]
fn extract_insert_and_ptest_match_host() {
    if !host_ok() {
        return;
    }
    let mut rng = Rng(0x5eed_0004);
    for imm in 0..=255u8 {
        let (d, s, g) = (rng.u128(), rng.u128(), rng.next());
        let (b, w, dw, q, ps): (u64, u64, u64, u64, u64);
        let (mut ib, mut id, mut iq) = (super::m(d), super::m(d), super::m(d));
        let sv = super::m(s);
        with_imm!(imm, I => {
            // SAFETY: SSE4.1 is present (`host_ok`); only the named registers change.
            unsafe {
                core::arch::asm!(
                    "pextrb {b:e}, {s}, {i}",
                    "pextrw {w:e}, {s}, {i}",
                    "pextrd {dw:e}, {s}, {i}",
                    "pextrq {q}, {s}, {i}",
                    "extractps {ps:e}, {s}, {i}",
                    "pinsrb {ib}, {g:e}, {i}",
                    "pinsrd {id}, {g:e}, {i}",
                    "pinsrq {iq}, {g}, {i}",
                    s = in(xmm_reg) sv,
                    g = in(reg) g,
                    b = out(reg) b,
                    w = out(reg) w,
                    dw = out(reg) dw,
                    q = out(reg) q,
                    ps = out(reg) ps,
                    ib = inout(xmm_reg) ib,
                    id = inout(xmm_reg) id,
                    iq = inout(xmm_reg) iq,
                    i = const I,
                    options(nostack),
                );
            }
        });
        let x = |mn| simd4::extract(mn, s, imm).expect("extract");
        assert_eq!(x(Mnemonic::Pextrb), b, "pextrb {imm}");
        assert_eq!(x(Mnemonic::Pextrd), dw, "pextrd {imm}");
        assert_eq!(x(Mnemonic::Pextrq), q, "pextrq {imm}");
        assert_eq!(x(Mnemonic::Extractps), ps, "extractps {imm}");
        // PEXTRW is SSE2's (helpers::sse): the word of imm mod 8.
        assert_eq!((s >> (16 * u32::from(imm & 7))) as u16 as u64, w);
        let gv = u128::from(g);
        assert_eq!(ours(Mnemonic::Pinsrb, d, gv, 16, imm, 0), super::u(ib));
        assert_eq!(ours(Mnemonic::Pinsrd, d, gv, 16, imm, 0), super::u(id));
        assert_eq!(ours(Mnemonic::Pinsrq, d, gv, 16, imm, 0), super::u(iq));
    }
    for i in 0..N {
        let d = rng.u128();
        let s = match i % 4 {
            0 => rng.u128(),
            1 => d & rng.u128(),
            2 => !d & rng.u128(),
            _ => 0,
        };
        let f: u64;
        // SAFETY: SSE4.1 is present (`host_ok`); PTEST only writes RFLAGS, read
        // back through the stack.
        unsafe {
            core::arch::asm!(
                "ptest {d}, {s}",
                "pushfq",
                "pop {f}",
                d = in(xmm_reg) super::m(d),
                s = in(xmm_reg) super::m(s),
                f = out(reg) f,
            );
        }
        assert_eq!(simd4::ptest(d, s), f & 0x8d5, "ptest {d:#x} {s:#x}");
    }
}

/// `insn mm0, mm1[, imm]` on the host (the MMX registers alias the x87 stack, which
/// Rust code on x86-64 does not use; EMMS empties it afterwards).
macro_rules! run_mmx {
    ($insn:literal, $d:expr, $s:expr $(, $imm:literal)?) => {{
        let mut r: u64 = $d;
        // SAFETY: SSSE3 is present (`host_ok`); MM0/MM1 (the x87 stack) are declared
        // clobbered and emptied with EMMS.
        unsafe {
            core::arch::asm!(
                "movq mm0, {d}",
                "movq mm1, {s}",
                concat!($insn, " mm0, mm1" $(, ", ", $imm)?),
                "movq {d}, mm0",
                "emms",
                d = inout(reg) r,
                s = in(reg) $s,
                out("mm0") _,
                out("mm1") _,
                options(nostack),
            );
        }
        r
    }};
}

#[test]
fn mmx_forms_match_host() {
    if !host_ok() {
        return;
    }
    let mut rng = Rng(0x5eed_0005);
    macro_rules! check {
        ($($mn:ident $name:literal),* $(,)?) => {$(
            for _ in 0..N {
                let (d, s) = (operand(&mut rng) as u64, operand(&mut rng) as u64);
                let want = run_mmx!($name, d, s);
                let got = ours(Mnemonic::$mn, u128::from(d), u128::from(s), 8, 0, 0);
                assert_eq!(got, u128::from(want), "{} mm {d:#x} {s:#x}", $name);
            }
        )*};
    }
    check!(
        Pshufb "pshufb", Phaddw "phaddw", Phaddd "phaddd", Phaddsw "phaddsw",
        Phsubw "phsubw", Phsubd "phsubd", Phsubsw "phsubsw", Pmaddubsw "pmaddubsw",
        Pmulhrsw "pmulhrsw", Psignb "psignb", Psignw "psignw", Psignd "psignd",
        Pabsb "pabsb", Pabsw "pabsw", Pabsd "pabsd",
    );
    for _ in 0..N {
        let (d, s) = (rng.next(), rng.next());
        let cases = [
            (0u8, run_mmx!("palignr", d, s, 0)),
            (3, run_mmx!("palignr", d, s, 3)),
            (8, run_mmx!("palignr", d, s, 8)),
            (13, run_mmx!("palignr", d, s, 13)),
            (16, run_mmx!("palignr", d, s, 16)),
            (200, run_mmx!("palignr", d, s, 200)),
        ];
        for (imm, want) in cases {
            let got = ours(Mnemonic::Palignr, u128::from(d), u128::from(s), 8, imm, 0);
            assert_eq!(got, u128::from(want), "palignr mm imm {imm}");
        }
    }
}

#[test]
fn crc32_matches_host() {
    if !host_ok() {
        return;
    }
    let mut rng = Rng(0x5eed_0006);
    for _ in 0..2000 {
        let (c, v) = (rng.next(), rng.next());
        let (mut r8, mut r16, mut r32, mut r64) = (c, c, c, c);
        // SAFETY: SSE4.2 is present (`host_ok`); CRC32 writes only its destination.
        unsafe {
            core::arch::asm!(
                "crc32 {a:e}, {v:l}",
                "crc32 {b:e}, {v:x}",
                "crc32 {c:e}, {v:e}",
                "crc32 {d}, {v}",
                a = inout(reg) r8,
                b = inout(reg) r16,
                c = inout(reg) r32,
                d = inout(reg) r64,
                v = in(reg) v,
                options(nostack, nomem, pure),
            );
        }
        let c32 = c as u32;
        assert_eq!(u64::from(crc32c(c32, v, 1)), r8);
        assert_eq!(u64::from(crc32c(c32, v, 2)), r16);
        assert_eq!(u64::from(crc32c(c32, v, 4)), r32);
        assert_eq!(u64::from(crc32c(c32, v, 8)), r64);
    }
}
