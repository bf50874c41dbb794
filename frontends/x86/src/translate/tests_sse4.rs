//! SSE3, SSSE3 and SSE4.1 through the translator and the IR interpreter (64-bit
//! mode): register plumbing, memory forms, MMX forms, the implicit XMM0, MXCSR
//! interaction and the exception checks. Expected values are worked out by hand from
//! the SDM's definitions (written next to each check), or are exact host `f32`/`f64`
//! results; the #XM flag sets of DPPS were measured on hardware. The arithmetic
//! itself is also compared with the host CPU on random operands in
//! `fpu::host_tests`.

use super::tests::{asm64, rd, End, DATA};
use super::tests_sse::{bytes, pd, ps, run_with, set_xmm, xmm};
use crate::cpu::X86Cpu;
use iced_x86::code_asm::*;
use vireo_core::cpu::ctl;
use vireo_core::cpu::flags::{AF, CF, OF, PF, SF, ZF};

fn set_mm(cpu: &mut X86Cpu, n: usize, v: u64) {
    // TOP = 0 (reset): MMn is register slot n.
    cpu.state.fpu.st[n][..8].copy_from_slice(&v.to_le_bytes());
}

fn mm(cpu: &X86Cpu, n: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&cpu.state.fpu.st[n][..8]);
    u64::from_le_bytes(b)
}

/// Four dwords, lane 0 first.
fn d4(v: [u32; 4]) -> u128 {
    v.iter()
        .enumerate()
        .fold(0, |a, (i, &x)| a | u128::from(x) << (32 * i))
}

/// Eight words, lane 0 first.
fn w8(v: [u16; 8]) -> u128 {
    v.iter()
        .enumerate()
        .fold(0, |a, (i, &x)| a | u128::from(x) << (16 * i))
}

/// Sixteen bytes, lane 0 first.
fn b16(v: [u8; 16]) -> u128 {
    u128::from_le_bytes(v)
}

const ARITH6: u64 = CF | PF | AF | ZF | SF | OF;

#[test]
fn sse3_moves_and_horizontal_arithmetic() {
    let code = asm64(|a| {
        a.movsldup(xmm0, xmmword_ptr(rbx))?;
        a.movshdup(xmm1, xmmword_ptr(rbx))?;
        a.movddup(xmm2, qword_ptr(rbx + 4))?; // m64: no alignment needed
        a.lddqu(xmm3, xmmword_ptr(rbx + 1))?; // never aligned
        a.addsubps(xmm4, xmm5)?;
        a.haddpd(xmm6, xmm7)?;
        a.hsubps(xmm8, xmmword_ptr(rbx + 32))?;
        Ok(())
    });
    let d = [0x1111_1111, 0x2222_2222, 0x3333_3333, 0x4444_4444];
    let tail: u128 = 0xf0e0_d0c0_b0a0_9080_7060_5040_3020_1099;
    let data = bytes(&[d4(d), tail, ps([10.0, 20.0, 40.0, 80.0])]);
    let (cpu, end) = run_with(&code, &data, |c| {
        set_xmm(c, 4, ps([1.0, 2.0, 3.0, 4.0]));
        set_xmm(c, 5, ps([0.5, 0.25, 0.125, 1.0]));
        set_xmm(c, 6, pd([1.5, 2.25]));
        set_xmm(c, 7, pd([-1.0, 8.0]));
        set_xmm(c, 8, ps([1.0, 2.0, 3.0, 4.0]));
    });
    assert_eq!(end, End::Halt);
    assert_eq!(xmm(&cpu, 0), d4([d[0], d[0], d[2], d[2]]));
    assert_eq!(xmm(&cpu, 1), d4([d[1], d[1], d[3], d[3]]));
    assert_eq!(xmm(&cpu, 2), d4([d[1], d[2], d[1], d[2]]));
    assert_eq!(xmm(&cpu, 3), d4(d) >> 8 | (tail & 0xff) << 120);
    // Even lanes subtract, odd lanes add.
    assert_eq!(xmm(&cpu, 4), ps([0.5, 2.25, 2.875, 5.0]));
    assert_eq!(xmm(&cpu, 6), pd([3.75, 7.0]));
    assert_eq!(xmm(&cpu, 8), ps([-1.0, -1.0, -10.0, -40.0]));
    assert_eq!(cpu.state.fpu.mxcsr & 0x3f, 0);
}

#[test]
fn ssse3_xmm_forms() {
    let code = asm64(|a| {
        a.pshufb(xmm0, xmm1)?;
        a.phaddw(xmm2, xmm3)?;
        a.phsubsw(xmm4, xmm5)?;
        a.pmaddubsw(xmm6, xmmword_ptr(rbx))?;
        a.pmulhrsw(xmm7, xmm7)?;
        a.psignb(xmm8, xmm9)?;
        a.pabsd(xmm10, xmm11)?;
        a.palignr(xmm12, xmm13, 5)?;
        a.palignr(xmm14, xmm13, 20)?;
        Ok(())
    });
    let data = bytes(&[b16([
        127, 0x80, 1, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ])]);
    let x13 = b16(core::array::from_fn(|i| 0x10 + i as u8));
    let x12 = b16(core::array::from_fn(|i| 0xa0 + i as u8));
    let (cpu, end) = run_with(&code, &data, |c| {
        set_xmm(c, 0, b16(core::array::from_fn(|i| 0xa0 + i as u8)));
        // Selectors: 15, bit 7 set, 3, 3, 0x8f, 16 (= 0 mod 16), 1, the rest 0.
        let sel = [15, 0x80, 3, 3, 0x8f, 16, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        set_xmm(c, 1, b16(sel));
        set_xmm(c, 2, w8([1, 2, 0xffff, 1, 10, 20, 30, 40]));
        set_xmm(c, 3, w8([100, 200, 0x8000, 0x8000, 0, 0, 5, 6]));
        set_xmm(c, 4, w8([0x8000, 1, 0x7fff, 0xffff, 7, 3, 0, 0]));
        set_xmm(c, 5, w8([1, 2, 3, 4, 5, 6, 0x7fff, 0x8000]));
        set_xmm(
            c,
            6,
            b16([255, 255, 2, 3, 255, 255, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
        );
        set_xmm(c, 7, w8([0x4000, 0x8000, 0xc000, 1, 0x7fff, 0, 0, 0]));
        set_xmm(
            c,
            8,
            b16([5, 5, 5, 0x80, 9, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
        );
        set_xmm(
            c,
            9,
            b16([0xff, 0, 1, 0xff, 0x80, 0x7f, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
        );
        set_xmm(c, 11, d4([0xffff_ffff, 0x8000_0000, 7, 0]));
        set_xmm(c, 12, x12);
        set_xmm(c, 13, x13);
        set_xmm(c, 14, x12);
    });
    assert_eq!(end, End::Halt);
    let mut want = [0u8; 16];
    want[0] = 0xaf; // byte 15 of xmm0
    want[2] = 0xa3;
    want[3] = 0xa3;
    want[5] = 0xa0;
    want[6] = 0xa1;
    for w in want.iter_mut().skip(7) {
        *w = 0xa0;
    }
    assert_eq!(xmm(&cpu, 0), b16(want));
    // PHADDW: pairs of xmm2 (wrapping), then pairs of xmm3.
    assert_eq!(xmm(&cpu, 2), w8([3, 0, 30, 70, 300, 0, 0, 11]));
    // PHSUBSW: 0x8000 - 1 saturates to 0x8000, 0x7fff - (-1) to 0x7fff; 0x7fff -
    // 0x8000 saturates to 0x7fff.
    assert_eq!(
        xmm(&cpu, 4),
        w8([0x8000, 0x7fff, 4, 0, 0xffff, 0xffff, 0xffff, 0x7fff])
    );
    // PMADDUBSW: 255*127 + 255*(-128) = -255; 2*1 + 3*(-1) = -1; the rest 0.
    assert_eq!(
        xmm(&cpu, 6),
        w8([(-255i16) as u16, 0xffff, 0, 0, 0, 0, 0, 0])
    );
    // PMULHRSW of squares: 0.5² = 0.25 (0x2000); (-1)² overflows to 0x8000;
    // (-0.5)² = 0x2000; 1*1 rounds to 0; 0x7fff² = 0x7ffe.
    assert_eq!(
        xmm(&cpu, 7),
        w8([0x2000, 0x8000, 0x2000, 0, 0x7ffe, 0, 0, 0])
    );
    // PSIGNB: negate, zero, keep, negate (-128 stays 0x80), negate, keep.
    let mut s = [0u8; 16];
    s[..6].copy_from_slice(&[0xfb, 0, 5, 0x80, 0xf7, 9]);
    assert_eq!(xmm(&cpu, 8), b16(s));
    assert_eq!(xmm(&cpu, 10), d4([1, 0x8000_0000, 7, 0]));
    // PALIGNR 5: bytes 5..20 of xmm13:xmm12 (xmm13 low); 20: bytes 4..15 of xmm12.
    let cat: Vec<u8> = x13
        .to_le_bytes()
        .iter()
        .chain(x12.to_le_bytes().iter())
        .copied()
        .collect();
    let mut w5 = [0u8; 16];
    w5.copy_from_slice(&cat[5..21]);
    assert_eq!(xmm(&cpu, 12), b16(w5));
    assert_eq!(xmm(&cpu, 14), x12 >> 32);
}

#[test]
fn ssse3_mmx_forms() {
    let code = asm64(|a| {
        a.pshufb(mm0, mm1)?;
        a.phaddd(mm2, qword_ptr(rbx))?;
        a.palignr(mm3, mm4, 3)?;
        a.pabsw(mm5, mm5)?;
        Ok(())
    });
    let data = 0x0000_0010_ffff_ffffu64.to_le_bytes();
    let (cpu, end) = run_with(&code, &data, |c| {
        set_mm(c, 0, 0x0706_0504_0302_0100);
        // Selectors: 15 (= 7 mod 8), bit 7, 9 (= 1), 0...
        set_mm(c, 1, 0x0000_0000_0009_800f);
        set_mm(c, 2, 0x0000_0005_0000_0003);
        set_mm(c, 3, 0x3736_3534_3332_3130);
        set_mm(c, 4, 0x2726_2524_2322_2120);
        set_mm(c, 5, 0x8000_ffff_0005_fffb);
        // MMX forms need no CR4.OSFXSR.
        c.state.cr4 &= !ctl::CR4_OSFXSR;
    });
    assert_eq!(end, End::Halt);
    assert_eq!(mm(&cpu, 0), 0x0000_0000_0001_0007);
    // PHADDD: 3 + 5, then 0xffffffff + 0x10 (wrapping).
    assert_eq!(mm(&cpu, 2), 0x0000_000f_0000_0008);
    // PALIGNR 3 of mm3:mm4 (mm4 low): bytes 3..10.
    assert_eq!(mm(&cpu, 3), 0x3231_3027_2625_2423);
    assert_eq!(mm(&cpu, 5), 0x8000_0001_0005_0005);
    // MMX mode: TOP = 0, every tag valid.
    assert_eq!(cpu.state.fpu.ftw, 0xff);
}

#[test]
fn sse41_integer() {
    let code = asm64(|a| {
        a.pmulld(xmm1, xmm2)?;
        a.pmuldq(xmm3, xmm4)?;
        a.pminsb(xmm5, xmm6)?;
        a.pmaxud(xmm7, xmm8)?;
        a.pblendw(xmm9, xmm10, 0xa5)?;
        a.blendps(xmm11, xmm12, 0x6)?;
        a.blendvpd(xmm13, xmm14)?; // mask in xmm0
        a.pcmpeqq(xmm15, xmmword_ptr(rbx))?;
        a.packusdw(xmm2, xmmword_ptr(rbx + 16))?;
        Ok(())
    });
    let data = bytes(&[
        0x1234_5678_9abc_def0_0000_0000_0000_0001,
        d4([0xffff_ffff, 0x1_0000, 0x1234, 70000]),
    ]);
    let (cpu, end) = run_with(&code, &data, |c| {
        set_xmm(c, 0, 1u128 << 127);
        set_xmm(c, 1, d4([0x1_0000, (-3i32) as u32, 5, 0xffff_ffff]));
        set_xmm(c, 2, d4([0x1_0000, 7, 6, 0xffff_ffff]));
        set_xmm(c, 3, d4([(-2i32) as u32, 99, 0x7fff_ffff, 99]));
        set_xmm(c, 4, d4([3, 99, 0x7fff_ffff, 99]));
        set_xmm(
            c,
            5,
            b16([0x80, 0x7f, 5, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
        );
        set_xmm(
            c,
            6,
            b16([0x7f, 0x80, 0xfb, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]),
        );
        set_xmm(c, 7, d4([0x8000_0000, 1, 5, 0]));
        set_xmm(c, 8, d4([0x7fff_ffff, 2, 5, 0xffff_ffff]));
        set_xmm(c, 9, w8([0; 8]));
        set_xmm(c, 10, w8([1, 2, 3, 4, 5, 6, 7, 8]));
        set_xmm(c, 11, d4([1, 2, 3, 4]));
        set_xmm(c, 12, d4([10, 20, 30, 40]));
        set_xmm(c, 13, 0x1111);
        set_xmm(c, 14, 0x2222_0000_0000_0000_0000_0000_0000_3333);
        set_xmm(c, 15, 0x1234_5678_9abc_def0_0000_0000_0000_0002);
    });
    assert_eq!(end, End::Halt);
    // PMULLD: low halves of 2^32, -21, 30, 1.
    let want1 = d4([0, (-21i32) as u32, 30, 1]);
    // PMULDQ: lanes 0 and 2 sign-extended: -6, (2^31 - 1)².
    let want3 = u128::from((-6i64) as u64) | u128::from(0x7fff_ffffu64 * 0x7fff_ffff) << 64;
    assert_eq!(xmm(&cpu, 3), want3);
    assert_eq!(
        xmm(&cpu, 5),
        b16([0x80, 0x80, 0xfb, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])
    );
    assert_eq!(xmm(&cpu, 7), d4([0x8000_0000, 2, 5, 0xffff_ffff]));
    // 0xa5: words 0, 2, 5, 7 from the source.
    assert_eq!(xmm(&cpu, 9), w8([1, 0, 3, 0, 0, 6, 0, 8]));
    assert_eq!(xmm(&cpu, 11), d4([1, 20, 30, 4]));
    // XMM0 has only qword 1's sign bit set: qword 1 from xmm14.
    assert_eq!(xmm(&cpu, 13), 0x2222_0000_0000_0000_0000_0000_0000_1111);
    assert_eq!(xmm(&cpu, 15), u128::from(u64::MAX) << 64);
    assert_eq!(xmm(&cpu, 1), want1);
    // PACKUSDW of xmm2 (PMULLD's source) and memory: signed dwords saturated to
    // unsigned words (65536 and 70000 to 0xffff, -1 to 0).
    assert_eq!(
        xmm(&cpu, 2),
        w8([0xffff, 7, 6, 0, 0, 0xffff, 0x1234, 0xffff])
    );
}

#[test]
fn sse41_moves_inserts_extracts() {
    let code = asm64(|a| {
        a.pmovsxbw(xmm0, qword_ptr(rbx + 3))?; // m64: no alignment needed
        a.pmovzxdq(xmm1, xmm15)?;
        a.pmovsxwq(xmm2, dword_ptr(rbx + 4))?;
        a.insertps(xmm3, xmm15, 0b0110_0001)?; // count_s 1, count_d 2, zero 0
        a.insertps(xmm4, dword_ptr(rbx + 4), 0b1100_1000)?; // zero lane 3
        a.mov(eax, 0x1ab)?;
        a.pinsrb(xmm5, eax, 15)?;
        a.pinsrd(xmm5, dword_ptr(rbx + 4), 2)?;
        a.mov(rcx, 0x0123_4567_89ab_cdefu64)?;
        a.pinsrq(xmm5, rcx, 0)?;
        a.pextrb(byte_ptr(rbx + 32), xmm15, 17)?; // imm mod 16
        a.pextrw(word_ptr(rbx + 34), xmm15, 7)?;
        a.pextrd(edx, xmm15, 3)?;
        a.pextrq(qword_ptr(rbx + 40), xmm15, 1)?;
        a.extractps(rsi, xmm15, 2)?;
        a.extractps(dword_ptr(rbx + 48), xmm15, 1)?;
        a.movntdqa(xmm6, xmmword_ptr(rbx + 16))?;
        a.phminposuw(xmm7, xmm7)?;
        a.mpsadbw(xmm8, xmm9, 0b101)?;
        Ok(())
    });
    let mut data = vec![0u8; 64];
    data[..8].copy_from_slice(&[0x00, 0x01, 0x02, 0x80, 0xff, 0x7f, 0x81, 0x05]);
    data[8..12].copy_from_slice(&[0x10, 0x90, 0xfe, 0x01]);
    data[16..32].copy_from_slice(&0x0f0e_0d0c_0b0a_0908_0706_0504_0302_0100u128.to_le_bytes());
    let x15 = d4([0x8899_aabb, 0x4433_2211, 0xdead_beef, 0xcafe_f00d]);
    let x9 = b16([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]);
    let x8 = b16([
        0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 110, 120, 130, 140, 150,
    ]);
    let (cpu, end) = run_with(&code, &data, |c| {
        set_xmm(c, 15, x15);
        set_xmm(c, 3, d4([1, 2, 3, 4]));
        set_xmm(c, 4, u128::MAX);
        set_xmm(c, 5, 0);
        set_xmm(c, 7, w8([9, 5, 7, 3, 8, 3, 0xffff, 4]));
        set_xmm(c, 8, x8);
        set_xmm(c, 9, x9);
    });
    assert_eq!(end, End::Halt);
    // Bytes 3..11: 0x80 0xff 0x7f 0x81 0x05 0x10 0x90 0xfe, sign-extended.
    assert_eq!(
        xmm(&cpu, 0),
        w8([0xff80, 0xffff, 0x7f, 0xff81, 5, 0x10, 0xff90, 0xfffe])
    );
    assert_eq!(
        xmm(&cpu, 1),
        u128::from(0x8899_aabbu64) | u128::from(0x4433_2211u64) << 64
    );
    // Words at 4: 0x7fff (bytes ff 7f), 0x0581 (81 05), sign-extended to qwords.
    assert_eq!(xmm(&cpu, 2), 0x7fff | 0x0581u128 << 64);
    // INSERTPS: source dword 1 into dword 2, dword 0 zeroed.
    assert_eq!(xmm(&cpu, 3), d4([0, 2, 0x4433_2211, 4]));
    // From memory the dword is taken as is (count_s ignored); dword 3 zeroed.
    assert_eq!(xmm(&cpu, 4), d4([0x0581_7fff, u32::MAX, u32::MAX, 0]));
    assert_eq!(
        xmm(&cpu, 5),
        0x0123_4567_89ab_cdefu128 | 0x0581_7fffu128 << 64 | 0xabu128 << 120
    );
    assert_eq!(rd(&cpu, DATA + 32, 1), 0xaa);
    assert_eq!(rd(&cpu, DATA + 34, 2), 0xcafe);
    assert_eq!(cpu.state.gpr[2], 0xcafe_f00d);
    assert_eq!(rd(&cpu, DATA + 40, 8), 0xcafe_f00d_dead_beef);
    assert_eq!(cpu.state.gpr[6], 0xdead_beef);
    assert_eq!(rd(&cpu, DATA + 48, 4), 0x4433_2211);
    assert_eq!(xmm(&cpu, 6), 0x0f0e_0d0c_0b0a_0908_0706_0504_0302_0100);
    // PHMINPOSUW: minimum 3 first at index 3.
    assert_eq!(xmm(&cpu, 7), 3 | 3 << 16);
    // MPSADBW 0b101: source bytes 4..8 (5 6 7 8), destination from byte 4: sum of
    // |x8[4 + j + k] - x9[4 + k]| for k < 4.
    let want: [u16; 8] = core::array::from_fn(|j| {
        (0..4)
            .map(|k| {
                (i32::from(x8.to_le_bytes()[4 + j + k]) - (5 + k as i32)).unsigned_abs() as u16
            })
            .sum()
    });
    assert_eq!(xmm(&cpu, 8), w8(want));
}

#[test]
fn ptest_sets_zf_cf_and_clears_the_rest() {
    for (d, s, zf, cf) in [
        (0xf0u128, 0x0f, true, false),
        (0xf0, 0xf0, false, true),
        (0xff, 0x00, true, true),
        (1 << 127, 1 << 127 | 1, false, false),
    ] {
        let code = asm64(|a| {
            a.stc()?;
            a.mov(eax, 0x7fff_ffff)?;
            a.add(eax, 1)?; // SF, OF, AF, PF set
            a.ptest(xmm0, xmm1)
        });
        let (cpu, end) = run_with(&code, &[], |c| {
            set_xmm(c, 0, d);
            set_xmm(c, 1, s);
        });
        assert_eq!(end, End::Halt);
        let want = if zf { ZF } else { 0 } | if cf { CF } else { 0 };
        assert_eq!(cpu.rflags() & ARITH6, want, "ptest {d:#x} {s:#x}");
    }
}

#[test]
fn round_uses_imm_or_mxcsr_rounding() {
    let code = asm64(|a| {
        a.roundps(xmm0, xmm8, 0)?; // nearest even
        a.roundps(xmm1, xmm8, 4)?; // MXCSR.RC (up)
        a.roundps(xmm2, xmm8, 0xb)?; // toward zero, PE suppressed
        a.roundsd(xmm3, qword_ptr(rbx), 9)?; // down, PE suppressed, upper kept
        Ok(())
    });
    let x = ps([2.5, -2.5, 1.5, -0.4]);
    let (cpu, end) = run_with(&code, &(-7.25f64).to_bits().to_le_bytes(), |c| {
        set_xmm(c, 8, x);
        set_xmm(c, 3, pd([100.0, 42.5]));
        c.state.fpu.mxcsr = 0x1f80 | 2 << 13;
    });
    assert_eq!(end, End::Halt);
    assert_eq!(xmm(&cpu, 0), ps([2.0, -2.0, 2.0, -0.0]));
    assert_eq!(xmm(&cpu, 1), ps([3.0, -2.0, 2.0, -0.0]));
    assert_eq!(xmm(&cpu, 2), ps([2.0, -2.0, 1.0, -0.0]));
    assert_eq!(xmm(&cpu, 3), pd([-8.0, 42.5]));
    assert_eq!(cpu.state.fpu.mxcsr & 0x3f, 0x20);
    // PE suppressed: no flag even with PE unmasked, no #XM.
    let code = asm64(|a| a.roundss(xmm0, xmm1, 8));
    let (cpu, end) = run_with(&code, &[], |c| {
        set_xmm(c, 1, ps([0.75, 0.0, 0.0, 0.0]));
        c.state.fpu.mxcsr = 0x1f80 & !(1 << 12);
    });
    assert_eq!(end, End::Halt);
    assert_eq!(xmm(&cpu, 0) as u32, 1.0f32.to_bits());
    assert_eq!(cpu.state.fpu.mxcsr & 0x3f, 0);
    // Inexact with PE unmasked: #XM, destination unchanged, PE set.
    let code = asm64(|a| a.roundss(xmm0, xmm1, 0));
    let (cpu, end) = run_with(&code, &[], |c| {
        set_xmm(c, 0, 0x1234);
        set_xmm(c, 1, ps([0.75, 0.0, 0.0, 0.0]));
        c.state.fpu.mxcsr = 0x1f80 & !(1 << 12);
    });
    assert_eq!(end, End::Fault(19, None));
    assert_eq!(xmm(&cpu, 0), 0x1234);
    assert_eq!(cpu.state.fpu.mxcsr & 0x3f, 0x20);
    // A SNaN with IM unmasked: #XM with IE; masked: the QNaN.
    let code = asm64(|a| a.roundpd(xmm0, xmm1, 0));
    let snan = 0x7ff0_0000_0000_0001u64;
    let (cpu, end) = run_with(&code, &[], |c| {
        set_xmm(c, 1, u128::from(snan));
        c.state.fpu.mxcsr = 0x1f80 & !(1 << 7);
    });
    assert_eq!(end, End::Fault(19, None));
    assert_eq!(xmm(&cpu, 0), 0);
    assert_eq!(cpu.state.fpu.mxcsr & 0x3f, 1);
    let (cpu, _) = run_with(&code, &[], |c| set_xmm(c, 1, u128::from(snan)));
    assert_eq!(xmm(&cpu, 0), u128::from(snan | 1 << 51));
    // Denormals: no DE; DAZ flushes them.
    let code = asm64(|a| a.roundss(xmm0, xmm1, 2));
    let (cpu, _) = run_with(&code, &[], |c| set_xmm(c, 1, 1));
    assert_eq!(xmm(&cpu, 0) as u32, 1.0f32.to_bits());
    assert_eq!(cpu.state.fpu.mxcsr & 0x3f, 0x20);
    let (cpu, _) = run_with(&code, &[], |c| {
        set_xmm(c, 1, 1);
        c.state.fpu.mxcsr = 0x1f80 | 1 << 6;
    });
    assert_eq!(xmm(&cpu, 0) as u32, 0);
    assert_eq!(cpu.state.fpu.mxcsr & 0x3f, 0);
}

#[test]
fn dot_products_and_their_exceptions() {
    let code = asm64(|a| {
        a.dpps(xmm0, xmm1, 0xf1)?;
        a.dpps(xmm2, xmm1, 0x3a)?;
        a.dppd(xmm3, xmmword_ptr(rbx), 0x31)?;
        Ok(())
    });
    let (cpu, end) = run_with(&code, &bytes(&[pd([0.5, 4.0])]), |c| {
        set_xmm(c, 0, ps([1.0, 2.0, 3.0, 4.0]));
        set_xmm(c, 1, ps([5.0, 6.0, 7.0, 8.0]));
        set_xmm(c, 2, ps([1.0, 2.0, 3.0, 4.0]));
        set_xmm(c, 3, pd([3.0, -1.0]));
    });
    assert_eq!(end, End::Halt);
    assert_eq!(xmm(&cpu, 0), ps([70.0, 0.0, 0.0, 0.0]));
    // 0x3a: products of lanes 0 and 1 (5 + 12), stored in lanes 1 and 3.
    assert_eq!(xmm(&cpu, 2), ps([0.0, 17.0, 0.0, 17.0]));
    assert_eq!(xmm(&cpu, 3), pd([1.5 - 4.0, 0.0]));
    // Measured on hardware: products (3e38 * 1 twice, -inf * 1, 0) are exact; the
    // pairwise sums overflow (OE, PE masked) and give +inf and -inf; their sum is
    // invalid. With IM unmasked: #XM, the destination unchanged, and the flags of
    // the earlier step kept: IE | OE | PE.
    let code = asm64(|a| a.dpps(xmm0, xmm1, 0xf1));
    let d = ps([3e38, 3e38, f32::NEG_INFINITY, 0.0]);
    let (cpu, end) = run_with(&code, &[], |c| {
        set_xmm(c, 0, d);
        set_xmm(c, 1, ps([1.0; 4]));
        c.state.fpu.mxcsr = 0x1f80 & !(1 << 7);
    });
    assert_eq!(end, End::Fault(19, None));
    assert_eq!(xmm(&cpu, 0), d);
    assert_eq!(cpu.state.fpu.mxcsr & 0x3f, 0x29);
    // Masked: the indefinite NaN broadcast to lane 0 only, the same flags.
    let (cpu, _) = run_with(&code, &[], |c| {
        set_xmm(c, 0, d);
        set_xmm(c, 1, ps([1.0; 4]));
    });
    assert_eq!(xmm(&cpu, 0), 0xffc0_0000);
    assert_eq!(cpu.state.fpu.mxcsr & 0x3f, 0x29);
    // Measured: in one step an unmasked IE (inf * 0) hides the masked OE of another
    // lane (1e30 * 1e30): only IE is recorded.
    let d = ps([f32::INFINITY, 1e30, 1.0, 1.0]);
    let (cpu, end) = run_with(&code, &[], |c| {
        set_xmm(c, 0, d);
        set_xmm(c, 1, ps([0.0, 1e30, 1.0, 1.0]));
        c.state.fpu.mxcsr = 0x1f80 & !(1 << 7);
    });
    assert_eq!(end, End::Fault(19, None));
    assert_eq!(cpu.state.fpu.mxcsr & 0x3f, 0x01);
}

#[test]
fn blendv_and_pblendvb_read_xmm0() {
    let code = asm64(|a| {
        a.blendvps(xmm1, xmmword_ptr(rbx))?;
        a.pblendvb(xmm2, xmm3)?;
        Ok(())
    });
    let mask = d4([0x8000_0000, 0x7fff_ffff, 0xffff_ffff, 0]);
    let (cpu, end) = run_with(&code, &bytes(&[d4([1, 2, 3, 4])]), |c| {
        set_xmm(c, 0, mask);
        set_xmm(c, 1, d4([10, 20, 30, 40]));
        set_xmm(c, 2, 0);
        set_xmm(c, 3, u128::MAX);
    });
    assert_eq!(end, End::Halt);
    assert_eq!(xmm(&cpu, 1), d4([1, 20, 3, 40]));
    // Bytes whose mask byte has bit 7 set: 3 (0x80), 4 to 6 (0xff of 0x7fffffff),
    // and 8 to 11.
    assert_eq!(
        xmm(&cpu, 2),
        0xff << 24 | 0xff_ffff << 32 | 0xffff_ffffu128 << 64
    );
}

/// Runs `code` with SSE enabled and then `tweak`; returns how it ended.
fn end_of(code: &[u8], tweak: impl FnOnce(&mut X86Cpu)) -> End {
    run_with(code, &[0; 64], tweak).1
}

#[test]
fn control_and_alignment_checks() {
    type Asm = fn(&mut CodeAssembler) -> Result<(), IcedError>;
    let xmm_forms: [Asm; 6] = [
        |a| a.pshufb(xmm0, xmm1),
        |a| a.roundps(xmm0, xmm1, 0),
        |a| a.haddps(xmm0, xmm1),
        |a| a.pmovsxbw(xmm0, xmm1),
        |a| a.dpps(xmm0, xmm1, 0xff),
        |a| a.movddup(xmm0, xmm1),
    ];
    for f in xmm_forms {
        let code = asm64(f);
        assert_eq!(end_of(&code, |_| {}), End::Halt);
        assert_eq!(
            end_of(&code, |c| c.state.cr4 &= !ctl::CR4_OSFXSR),
            End::Fault(6, None)
        );
        assert_eq!(
            end_of(&code, |c| c.state.cr0 |= ctl::CR0_EM),
            End::Fault(6, None)
        );
        assert_eq!(
            end_of(&code, |c| c.state.cr0 |= ctl::CR0_TS),
            End::Fault(7, None)
        );
    }
    // MMX forms: #UD only for CR0.EM, #NM for TS, no OSFXSR needed.
    let code = asm64(|a| a.pshufb(mm0, mm1));
    assert_eq!(
        end_of(&code, |c| c.state.cr4 &= !ctl::CR4_OSFXSR),
        End::Halt
    );
    assert_eq!(
        end_of(&code, |c| c.state.cr0 |= ctl::CR0_EM),
        End::Fault(6, None)
    );
    assert_eq!(
        end_of(&code, |c| c.state.cr0 |= ctl::CR0_TS),
        End::Fault(7, None)
    );
    // Misaligned 16-byte operands: #GP(0) for the aligned forms (checked on
    // hardware for each of these).
    let aligned: [Asm; 12] = [
        |a| a.pshufb(xmm0, xmmword_ptr(rbx + 1)),
        |a| a.movshdup(xmm0, xmmword_ptr(rbx + 1)),
        |a| a.haddps(xmm0, xmmword_ptr(rbx + 1)),
        |a| a.palignr(xmm0, xmmword_ptr(rbx + 1), 3),
        |a| a.pabsb(xmm0, xmmword_ptr(rbx + 1)),
        |a| a.roundps(xmm0, xmmword_ptr(rbx + 1), 0),
        |a| a.dpps(xmm0, xmmword_ptr(rbx + 1), 0xff),
        |a| a.ptest(xmm0, xmmword_ptr(rbx + 1)),
        |a| a.movntdqa(xmm0, xmmword_ptr(rbx + 1)),
        |a| a.blendvps(xmm1, xmmword_ptr(rbx + 1)),
        |a| a.mpsadbw(xmm0, xmmword_ptr(rbx + 1), 0),
        |a| a.phminposuw(xmm0, xmmword_ptr(rbx + 1)),
    ];
    for f in aligned {
        let code = asm64(f);
        assert_eq!(end_of(&code, |_| {}), End::Fault(13, Some(0)));
    }
    // Smaller or unaligned-by-definition operands: no alignment check.
    let unaligned: [Asm; 9] = [
        |a| a.lddqu(xmm0, xmmword_ptr(rbx + 1)),
        |a| a.movddup(xmm0, qword_ptr(rbx + 1)),
        |a| a.pmovsxbw(xmm0, qword_ptr(rbx + 1)),
        |a| a.pmovzxbq(xmm0, word_ptr(rbx + 1)),
        |a| a.roundss(xmm0, dword_ptr(rbx + 1), 0),
        |a| a.insertps(xmm0, dword_ptr(rbx + 1), 0),
        |a| a.pinsrd(xmm0, dword_ptr(rbx + 1), 0),
        |a| a.pextrd(dword_ptr(rbx + 1), xmm0, 0),
        |a| a.extractps(dword_ptr(rbx + 1), xmm0, 0),
    ];
    for f in unaligned {
        let code = asm64(f);
        assert_eq!(end_of(&code, |_| {}), End::Halt);
    }
}

#[test]
fn monitor_mwait_and_lock_are_undefined() {
    for f in [
        (|a: &mut CodeAssembler| a.monitor()) as fn(&mut CodeAssembler) -> Result<(), IcedError>,
        |a| a.mwait(),
        // LOCK PSHUFB xmm0, xmm1.
        |a| a.db(&[0xf0, 0x66, 0x0f, 0x38, 0x00, 0xc1]),
    ] {
        assert_eq!(end_of(&asm64(f), |_| {}), End::Fault(6, None));
    }
}

/// Every legacy-encoded form of SSE3, SSSE3, SSE4.1, SSE4.2 and PCLMULQDQ that is
/// valid in 64-bit mode (iced-x86's tables) translates and runs, in its register and
/// its memory form, on zero operands: none is left to #UD.
#[test]
fn every_form_is_implemented() {
    use iced_x86::{
        Code, CpuidFeature as F, Encoder, EncodingKind, Instruction, MemoryOperand,
        OpCodeOperandKind as K, Register as R,
    };
    #[derive(Clone, Copy)]
    enum O {
        Reg(R),
        Mem,
        Imm,
    }
    let mut count = 0;
    for code in Code::values() {
        let oc = code.op_code();
        let f = code.cpuid_features();
        let ours = |x: &F| matches!(x, F::SSE3 | F::SSSE3 | F::SSE4_1 | F::SSE4_2 | F::PCLMULQDQ);
        if oc.encoding() != EncodingKind::Legacy || !oc.mode64() || f.is_empty() {
            continue;
        }
        if !f.iter().all(ours) || code.mnemonic() == iced_x86::Mnemonic::Crc32 {
            continue;
        }
        for mem in [false, true] {
            let ops: Vec<O> = (0..oc.op_count())
                .map(|i| match oc.op_kind(i) {
                    K::xmm_reg => O::Reg(R::XMM1),
                    K::mm_reg => O::Reg(R::MM1),
                    K::r32_reg => O::Reg(R::EDX),
                    K::r64_reg => O::Reg(R::RDX),
                    K::mem => O::Mem,
                    K::imm8 => O::Imm,
                    _ if mem => O::Mem,
                    K::xmm_or_mem => O::Reg(R::XMM2),
                    K::mm_or_mem => O::Reg(R::MM2),
                    K::r8_or_mem => O::Reg(R::CL),
                    K::r16_or_mem => O::Reg(R::CX),
                    K::r32_or_mem => O::Reg(R::ECX),
                    K::r64_or_mem => O::Reg(R::RCX),
                    k => panic!("{code:?}: operand kind {k:?}"),
                })
                .collect();
            let m = MemoryOperand::with_base(R::RBX);
            let insn = match ops[..] {
                [O::Reg(a), O::Reg(b)] => Instruction::with2(code, a, b),
                [O::Reg(a), O::Mem] => Instruction::with2(code, a, m),
                [O::Mem, O::Reg(b)] => Instruction::with2(code, m, b),
                [O::Reg(a), O::Reg(b), O::Imm] => Instruction::with3(code, a, b, 1u32),
                [O::Reg(a), O::Mem, O::Imm] => Instruction::with3(code, a, m, 1u32),
                [O::Mem, O::Reg(b), O::Imm] => Instruction::with3(code, m, b, 1u32),
                _ => panic!("{code:?}: unexpected operands"),
            }
            .expect("instruction");
            let mut enc = Encoder::new(64);
            enc.encode(&insn, super::tests::CODE).expect("encode");
            let mut bytes = enc.take_buffer();
            bytes.push(0xf4);
            let (_, end) = run_with(&bytes, &[0; 64], |_| {});
            assert_eq!(end, End::Halt, "{code:?} (memory form: {mem})");
            count += 1;
        }
    }
    // iced-x86 1.22 lists 103 such forms (a register and a memory run of each).
    assert!(count >= 2 * 103, "{count}");
}

/// Random operands, immediates and MXCSR settings for the 0F 38 / 0F 3A opcode maps
/// (with and without 66h/F2h, REX.W, MMX forms): whatever the outcome, nothing
/// panics (debug builds also check arithmetic overflow).
#[test]
fn random_sse4_encodings_never_panic() {
    let mut r = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        r ^= r << 13;
        r ^= r >> 7;
        r ^= r << 17;
        r
    };
    for _ in 0..3000 {
        let prefix: &[u8] = match next() % 4 {
            0 => &[0x66],
            1 => &[0xf2],
            2 => &[0x66, 0x48],
            _ => &[],
        };
        let map = if next() % 2 == 0 { 0x38 } else { 0x3a };
        let mut code = prefix.to_vec();
        code.extend_from_slice(&[0x0f, map, next() as u8, 0xc0 | (next() as u8 & 0x3f)]);
        code.push(next() as u8); // imm8 (or the next instruction's first byte)
        code.push(0xf4);
        let data: Vec<u8> = (0..64).map(|_| next() as u8).collect();
        let vals: Vec<u64> = (0..40).map(|_| next()).collect();
        let _ = run_with(&code, &data, |c| {
            for (i, x) in c.state.fpu.xmm.iter_mut().enumerate() {
                *x = (u128::from(vals[2 * i]) | u128::from(vals[2 * i + 1]) << 64).to_le_bytes();
            }
            c.state.gpr[..3].copy_from_slice(&vals[32..35]);
            c.state.fpu.mxcsr = 0x1f80 | (vals[36] as u32 & 0xe040);
        });
    }
}
