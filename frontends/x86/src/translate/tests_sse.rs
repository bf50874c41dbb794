//! MMX/SSE/SSE2 tests: guest code assembled with iced-x86 and run through the
//! translator and the IR interpreter in 64-bit mode. Expected values come from Rust
//! integer arithmetic and host `f32`/`f64` (round to nearest), or from the SDM
//! (indefinite values, flags, faults).

use super::tests::{asm64, rd, run_with_data, End, DATA};
use crate::cpu::X86Cpu;
use iced_x86::code_asm::*;
use vireo_core::cpu::ctl;

/// Runs with SSE enabled (CR4.OSFXSR/OSXMMEXCPT on, CR0.EM/TS off) before `setup`.
pub(super) fn run_with(code: &[u8], data: &[u8], setup: impl FnOnce(&mut X86Cpu)) -> (X86Cpu, End) {
    run_with_data(code, data, |cpu| {
        cpu.state.cr4 |= ctl::CR4_OSFXSR | ctl::CR4_OSXMMEXCPT;
        cpu.state.cr0 &= !(ctl::CR0_EM | ctl::CR0_TS);
        setup(cpu);
    })
}

pub(super) fn xmm(cpu: &X86Cpu, r: usize) -> u128 {
    u128::from_le_bytes(cpu.state.fpu.xmm[r])
}

pub(super) fn set_xmm(cpu: &mut X86Cpu, r: usize, v: u128) {
    cpu.state.fpu.xmm[r] = v.to_le_bytes();
}

pub(super) fn bytes(v: &[u128]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

pub(super) fn ps(v: [f32; 4]) -> u128 {
    v.iter()
        .enumerate()
        .fold(0, |a, (i, x)| a | u128::from(x.to_bits()) << (32 * i))
}

pub(super) fn pd(v: [f64; 2]) -> u128 {
    u128::from(v[0].to_bits()) | u128::from(v[1].to_bits()) << 64
}

const A: u128 = 0x8000_7fff_0123_4567_89ab_cdef_fe01_ff80;
const B: u128 = 0x7fff_8000_ffff_0001_0101_ffff_8081_7f7f;

#[test]
fn moves_and_logic() {
    let code = asm64(|a| {
        a.movaps(xmm0, xmmword_ptr(rbx))?;
        a.movups(xmm1, xmmword_ptr(rbx + 17))?;
        a.movdqa(xmm2, xmm0)?;
        a.pxor(xmm2, xmm1)?;
        a.movdqu(xmmword_ptr(rbx + 33), xmm2)?;
        a.movd(eax, xmm0)?;
        a.movq(rcx, xmm0)?;
        a.movq(xmm3, rcx)?;
        a.movd(xmm4, eax)?;
        a.movss(xmm5, dword_ptr(rbx))?;
        a.movhps(xmm5, qword_ptr(rbx + 8))?;
        a.movlhps(xmm6, xmm0)?;
        a.movhlps(xmm6, xmm0)?;
        a.andnps(xmm7, xmm0)?;
        a.movhpd(qword_ptr(rbx + 64), xmm0)?;
        a.movsd_2(xmm8, xmm0)?;
        Ok(())
    });
    let mut data = bytes(&[A, 0, 0, 0, 0]);
    data[17..33].copy_from_slice(&B.to_le_bytes());
    let (cpu, end) = run_with(&code, &data, |c| {
        set_xmm(c, 7, u128::MAX);
        set_xmm(c, 8, u128::MAX);
    });
    assert_eq!(end, End::Halt);
    assert_eq!(xmm(&cpu, 0), A);
    assert_eq!(xmm(&cpu, 1), B);
    assert_eq!(
        rd(&cpu, DATA + 33, 8) as u128 | u128::from(rd(&cpu, DATA + 41, 8)) << 64,
        A ^ B
    );
    assert_eq!(cpu.state.gpr[0], A as u32 as u64);
    assert_eq!(cpu.state.gpr[1], A as u64);
    assert_eq!(xmm(&cpu, 3), A & u128::from(u64::MAX));
    assert_eq!(xmm(&cpu, 4), A & 0xffff_ffff);
    assert_eq!(xmm(&cpu, 5), (A & 0xffff_ffff) | (A >> 64) << 64);
    assert_eq!(xmm(&cpu, 6), (A >> 64) | (A & u128::from(u64::MAX)) << 64);
    assert_eq!(xmm(&cpu, 7), 0);
    assert_eq!(rd(&cpu, DATA + 64, 8), (A >> 64) as u64);
    assert_eq!(xmm(&cpu, 8), (u128::MAX << 64) | (A & u128::from(u64::MAX)));
}

/// The forms done in IR on register halves (see `sse_ir`), each from both register
/// and memory sources, against Rust arithmetic on the halves.
#[test]
fn qword_forms_in_ir() {
    let lo = |v: u128| v as u64;
    let hi = |v: u128| (v >> 64) as u64;
    let q = |l: u64, h: u64| u128::from(l) | u128::from(h) << 64;
    let code = asm64(|a| {
        a.movdqa(xmm0, xmmword_ptr(rbx))?; // A
        a.movdqa(xmm1, xmmword_ptr(rbx + 16))?; // B
        a.movdqa(xmm2, xmm0)?;
        a.punpcklqdq(xmm2, xmm1)?;
        a.movdqa(xmm3, xmm0)?;
        a.punpckhqdq(xmm3, xmmword_ptr(rbx + 16))?;
        a.movdqa(xmm4, xmm0)?;
        a.paddq(xmm4, xmm1)?;
        a.movdqa(xmm5, xmm0)?;
        a.psubq(xmm5, xmmword_ptr(rbx + 16))?;
        a.movdqa(xmm6, xmm0)?;
        a.pandn(xmm6, xmm1)?;
        a.movdqa(xmm7, xmm1)?;
        a.movlps(xmm7, qword_ptr(rbx))?;
        a.movdqa(xmm8, xmm1)?;
        a.movhpd(xmm8, qword_ptr(rbx))?;
        a.movlpd(qword_ptr(rbx + 32), xmm1)?;
        a.movhps(qword_ptr(rbx + 40), xmm0)?;
        a.movq(xmm9, xmm0)?;
        a.movq(xmm10, qword_ptr(rbx + 16))?;
        a.movd(xmm11, dword_ptr(rbx + 16))?;
        a.movq(qword_ptr(rbx + 48), xmm1)?;
        a.movd(dword_ptr(rbx + 56), xmm0)?;
        a.psubq(xmm12, xmm12)?;
        a.por(xmm13, xmm0)?;
        a.movntdq(xmmword_ptr(rbx + 64), xmm1)?;
        a.lddqu(xmm14, xmmword_ptr(rbx + 1))?;
        Ok(())
    });
    let mut data = bytes(&[A, B, 0, 0, 0, 0]);
    data.extend([0u8; 16]);
    let (cpu, end) = run_with(&code, &data, |c| {
        set_xmm(c, 12, u128::MAX);
        set_xmm(c, 13, 0x5555 << 70);
    });
    assert_eq!(end, End::Halt);
    assert_eq!(xmm(&cpu, 2), q(lo(A), lo(B)));
    assert_eq!(xmm(&cpu, 3), q(hi(A), hi(B)));
    assert_eq!(
        xmm(&cpu, 4),
        q(lo(A).wrapping_add(lo(B)), hi(A).wrapping_add(hi(B)))
    );
    assert_eq!(
        xmm(&cpu, 5),
        q(lo(A).wrapping_sub(lo(B)), hi(A).wrapping_sub(hi(B)))
    );
    assert_eq!(xmm(&cpu, 6), !A & B);
    assert_eq!(xmm(&cpu, 7), q(lo(A), hi(B)));
    assert_eq!(xmm(&cpu, 8), q(lo(B), lo(A)));
    assert_eq!(rd(&cpu, DATA + 32, 8), lo(B));
    assert_eq!(rd(&cpu, DATA + 40, 8), hi(A));
    assert_eq!(xmm(&cpu, 9), q(lo(A), 0));
    assert_eq!(xmm(&cpu, 10), q(lo(B), 0));
    assert_eq!(xmm(&cpu, 11), q(lo(B) & 0xffff_ffff, 0));
    assert_eq!(rd(&cpu, DATA + 48, 8), lo(B));
    assert_eq!(rd(&cpu, DATA + 56, 4), lo(A) & 0xffff_ffff);
    assert_eq!(xmm(&cpu, 12), 0);
    assert_eq!(xmm(&cpu, 13), A | 0x5555 << 70);
    assert_eq!(
        rd(&cpu, DATA + 64, 8) as u128 | u128::from(rd(&cpu, DATA + 72, 8)) << 64,
        B
    );
    let mut want = [0u8; 16];
    want.copy_from_slice(&data[1..17]);
    assert_eq!(xmm(&cpu, 14), u128::from_le_bytes(want));
}

/// A misaligned MOVDQA source faults (#GP) before the register changes, and a
/// misaligned PAND too.
#[test]
fn aligned_ir_forms_fault_on_misaligned_operands() {
    for form in 0..2 {
        let code = asm64(|a| {
            if form == 0 {
                a.movdqa(xmm1, xmmword_ptr(rbx + 8))?;
            } else {
                a.pand(xmm1, xmmword_ptr(rbx + 8))?;
            }
            Ok(())
        });
        let (cpu, end) = run_with(&code, &bytes(&[A, B]), |c| set_xmm(c, 1, 7));
        assert_eq!(end, End::Fault(13, Some(0)));
        assert_eq!(xmm(&cpu, 1), 7);
    }
}

/// PCMPEQB and PMOVMSKB (bit tricks on the halves in IR) against byte-wise
/// references, on operands whose bytes run through every value against equal,
/// one-bit-off and top-bit-off partners (carries between bytes would show).
#[test]
fn byte_compare_and_mask() {
    let code = asm64(|a| {
        a.movdqu(xmm0, xmmword_ptr(rbx))?;
        a.movdqu(xmm1, xmmword_ptr(rbx + 16))?;
        a.pcmpeqb(xmm0, xmm1)?;
        a.pmovmskb(eax, xmm0)?;
        a.movdqu(xmm2, xmmword_ptr(rbx + 16))?;
        a.pcmpeqb(xmm2, xmmword_ptr(rbx))?;
        a.pmovmskb(rcx, xmm1)?;
        Ok(())
    });
    for k in 0..64u32 {
        let mut a = [0u8; 16];
        let mut b = [0u8; 16];
        for i in 0..16 {
            let v = (k * 16 + i as u32) as u8;
            a[i] = v;
            b[i] = match (k + i as u32) % 4 {
                0 => v,
                1 => v ^ 1,
                2 => v ^ 0x80,
                _ => v.wrapping_add(0x7f),
            };
        }
        let (x, y) = (u128::from_le_bytes(a), u128::from_le_bytes(b));
        let (cpu, end) = run_with(&code, &bytes(&[x, y]), |c| {
            c.state.gpr[0] = u64::MAX;
            c.state.gpr[1] = u64::MAX;
        });
        assert_eq!(end, End::Halt);
        let eq: [u8; 16] = std::array::from_fn(|i| if a[i] == b[i] { 0xff } else { 0 });
        let eq = u128::from_le_bytes(eq);
        let mask = |v: u128| (0..16).fold(0u64, |m, i| m | (((v >> (8 * i + 7)) & 1) as u64) << i);
        assert_eq!(xmm(&cpu, 0), eq, "{x:032x} {y:032x}");
        assert_eq!(xmm(&cpu, 2), eq, "{x:032x} {y:032x}");
        assert_eq!(cpu.state.gpr[0], mask(eq), "eax zero-extended");
        assert_eq!(cpu.state.gpr[1], mask(y), "rcx");
    }
}

/// A non-canonical aligned 16-byte operand (checked by the softmmu on the first
/// half, not in the block): #SS(0) through SS, else #GP(0); nothing is written.
#[test]
fn aligned_forms_fault_on_non_canonical_operands() {
    const BAD: u64 = 0x8000_0000_0000_0010;
    type Form = fn(&mut CodeAssembler) -> Result<(), IcedError>;
    let cases: [(Form, u8); 4] = [
        (|a| a.movaps(xmmword_ptr(rsp), xmm1), 12),
        (|a| a.movdqa(xmm1, xmmword_ptr(rbp + 16)), 12),
        (|a| a.movaps(xmmword_ptr(rax), xmm1), 13),
        (|a| a.pand(xmm1, xmmword_ptr(rax)), 13),
    ];
    for (form, vector) in cases {
        let code = asm64(form);
        let (cpu, end) = run_with(&code, &[], |c| {
            set_xmm(c, 1, 7);
            c.state.gpr[0] = BAD;
            c.state.gpr[4] = BAD;
            c.state.gpr[5] = BAD - 16;
        });
        assert_eq!(end, End::Fault(vector, Some(0)), "{code:02x?}");
        assert_eq!(xmm(&cpu, 1), 7);
    }
}

fn lanes16(v: u128) -> [u16; 8] {
    core::array::from_fn(|i| (v >> (16 * i)) as u16)
}

fn lanes8(v: u128) -> [u8; 16] {
    v.to_le_bytes()
}

#[test]
fn integer_arith() {
    let code = asm64(|a| {
        for (r, f) in [xmm0, xmm1, xmm2, xmm3, xmm4, xmm5, xmm6]
            .into_iter()
            .enumerate()
        {
            let _ = r;
            a.movdqa(f, xmmword_ptr(rbx))?;
        }
        a.paddw(xmm0, xmmword_ptr(rbx + 16))?;
        a.paddsw(xmm1, xmmword_ptr(rbx + 16))?;
        a.psubusb(xmm2, xmmword_ptr(rbx + 16))?;
        a.pmulhw(xmm3, xmmword_ptr(rbx + 16))?;
        a.psraw(xmm4, 3)?;
        a.pcmpgtb(xmm5, xmmword_ptr(rbx + 16))?;
        a.pshufd(xmm6, xmm6, 0x1b)?;
        a.pmovmskb(eax, xmm5)?;
        a.pextrw(ecx, xmm0, 3)?;
        Ok(())
    });
    let (cpu, end) = run_with(&code, &bytes(&[A, B]), |_| {});
    assert_eq!(end, End::Halt);
    let (a16, b16) = (lanes16(A), lanes16(B));
    let (a8, b8) = (lanes8(A), lanes8(B));
    for i in 0..8 {
        assert_eq!(lanes16(xmm(&cpu, 0))[i], a16[i].wrapping_add(b16[i]));
        assert_eq!(
            lanes16(xmm(&cpu, 1))[i],
            (a16[i] as i16).saturating_add(b16[i] as i16) as u16
        );
        let hi = (i32::from(a16[i] as i16) * i32::from(b16[i] as i16)) >> 16;
        assert_eq!(lanes16(xmm(&cpu, 3))[i], hi as u16);
        assert_eq!(lanes16(xmm(&cpu, 4))[i], ((a16[i] as i16) >> 3) as u16);
    }
    let mut mask = 0;
    for i in 0..16 {
        assert_eq!(lanes8(xmm(&cpu, 2))[i], a8[i].saturating_sub(b8[i]));
        let gt = (a8[i] as i8) > (b8[i] as i8);
        assert_eq!(lanes8(xmm(&cpu, 5))[i], if gt { 0xff } else { 0 });
        mask |= u64::from(gt) << i;
    }
    assert_eq!(cpu.state.gpr[0], mask);
    let d: [u32; 4] = core::array::from_fn(|i| (A >> (32 * i)) as u32);
    assert_eq!(
        xmm(&cpu, 6),
        u128::from(d[3]) | u128::from(d[2]) << 32 | u128::from(d[1]) << 64 | u128::from(d[0]) << 96
    );
    assert_eq!(cpu.state.gpr[1], u64::from(a16[3].wrapping_add(b16[3])));
}

#[test]
fn float_arith_and_compare() {
    let x = [1.5f32, -2.25, 3.0e38, 1.0e-3];
    let y = [0.1f32, 7.0, 3.0e38, 3.0];
    let code = asm64(|a| {
        a.movaps(xmm0, xmmword_ptr(rbx))?;
        a.movaps(xmm1, xmm0)?;
        a.addps(xmm0, xmmword_ptr(rbx + 16))?;
        a.divps(xmm1, xmmword_ptr(rbx + 16))?;
        a.movapd(xmm2, xmmword_ptr(rbx + 32))?;
        a.mulpd(xmm2, xmmword_ptr(rbx + 48))?;
        a.sqrtsd(xmm3, xmmword_ptr(rbx + 32))?;
        a.comisd(xmm3, xmmword_ptr(rbx + 48))?;
        a.setb(al)?;
        a.cvttsd2si(rcx, xmm2)?;
        a.cvtsd2si(edx, xmm6)?;
        a.cvtsi2ss(xmm4, edx)?;
        a.cmpltps(xmm5, xmm0)?;
        Ok(())
    });
    let (px, py) = ([2.0f64, -7.5], [1.0e300, 3.25]);
    let data = bytes(&[ps(x), ps(y), pd(px), pd(py)]);
    let (cpu, end) = run_with(&code, &data, |c| {
        set_xmm(c, 5, ps([0.0, 1e9, -1.0, 2.0]));
        set_xmm(c, 6, pd([-24.375, 0.0]));
    });
    assert_eq!(end, End::Halt);
    let sum: [f32; 4] = core::array::from_fn(|i| x[i] + y[i]);
    assert_eq!(xmm(&cpu, 0), ps(sum));
    assert_eq!(xmm(&cpu, 1), ps(core::array::from_fn(|i| x[i] / y[i])));
    assert_eq!(xmm(&cpu, 2), pd([px[0] * py[0], px[1] * py[1]]));
    assert_eq!(xmm(&cpu, 3) as u64, 2f64.sqrt().to_bits());
    // sqrt(2) < 1e300: CF.
    assert_eq!(cpu.state.gpr[0] & 0xff, 1);
    // 2e300 does not fit: the integer indefinite; -24.375 rounds to -24.
    assert_eq!(cpu.state.gpr[1], 0x8000_0000_0000_0000);
    assert_eq!(xmm(&cpu, 4) as u32, (-24.0f32).to_bits());
    // 3e38 + 3e38 overflows (OE, PE); 0.1 and 1e-3 sums are inexact.
    assert_eq!(cpu.state.fpu.mxcsr & 0x3f, 0x08 | 0x20 | 0x01);
    let lt: [bool; 4] = [0.0 < sum[0], 1e9 < sum[1], -1.0 < sum[2], 2.0 < sum[3]];
    let expect = lt.iter().enumerate().fold(0u128, |a, (i, &b)| {
        a | if b { 0xffff_ffffu128 << (32 * i) } else { 0 }
    });
    assert_eq!(xmm(&cpu, 5), expect);
}

#[test]
fn unmasked_exception_and_alignment() {
    // Division by zero with ZM clear: #XM, destination unchanged, ZE set.
    let code = asm64(|a| a.divss(xmm0, xmm1));
    let (cpu, end) = run_with(&code, &[], |c| {
        set_xmm(c, 0, ps([1.0, 0.0, 0.0, 0.0]));
        c.state.fpu.mxcsr = 0x1f80 & !(1 << 9);
    });
    assert_eq!(end, End::Fault(19, None));
    assert_eq!(xmm(&cpu, 0), ps([1.0, 0.0, 0.0, 0.0]));
    assert_eq!(cpu.state.fpu.mxcsr & 0x3f, 4);
    // Without OSXMMEXCPT: #UD.
    let (_, end) = run_with(&code, &[], |c| {
        set_xmm(c, 0, ps([1.0, 0.0, 0.0, 0.0]));
        c.state.fpu.mxcsr = 0x1f80 & !(1 << 9);
        c.state.cr4 &= !ctl::CR4_OSXMMEXCPT;
    });
    assert_eq!(end, End::Fault(6, None));
    let code = asm64(|a| a.movaps(xmm0, xmmword_ptr(rbx + 8)));
    let (_, end) = run_with(&code, &[], |_| {});
    assert_eq!(end, End::Fault(13, Some(0)));
    let code = asm64(|a| a.pxor(xmm0, xmmword_ptr(rbx + 8)));
    let (_, end) = run_with(&code, &[], |_| {});
    assert_eq!(end, End::Fault(13, Some(0)));
    let code = asm64(|a| a.movups(xmm0, xmmword_ptr(rbx + 8)));
    let (_, end) = run_with(&code, &[], |_| {});
    assert_eq!(end, End::Halt);
}

#[test]
fn control_checks() {
    let code = asm64(|a| a.addps(xmm0, xmm1));
    let (_, end) = run_with(&code, &[], |c| c.state.cr4 &= !ctl::CR4_OSFXSR);
    assert_eq!(end, End::Fault(6, None));
    let (_, end) = run_with(&code, &[], |c| c.state.cr0 |= ctl::CR0_EM);
    assert_eq!(end, End::Fault(6, None));
    let (_, end) = run_with(&code, &[], |c| c.state.cr0 |= ctl::CR0_TS);
    assert_eq!(end, End::Fault(7, None));
    // MMX ignores OSFXSR, faults #NM on TS.
    let mcode = asm64(|a| a.paddb(mm0, mm1));
    let (_, end) = run_with(&mcode, &[], |c| c.state.cr4 &= !ctl::CR4_OSFXSR);
    assert_eq!(end, End::Halt);
    let (_, end) = run_with(&mcode, &[], |c| c.state.cr0 |= ctl::CR0_TS);
    assert_eq!(end, End::Fault(7, None));
    // LDMXCSR with a reserved bit: #GP(0).
    let code = asm64(|a| a.ldmxcsr(dword_ptr(rbx)));
    let (_, end) = run_with(&code, &0x1_0000u32.to_le_bytes(), |_| {});
    assert_eq!(end, End::Fault(13, Some(0)));
    let code = asm64(|a| {
        a.ldmxcsr(dword_ptr(rbx))?;
        a.stmxcsr(dword_ptr(rbx + 4))
    });
    let (cpu, end) = run_with(&code, &0x7f80u32.to_le_bytes(), |_| {});
    assert_eq!(end, End::Halt);
    assert_eq!(rd(&cpu, DATA + 4, 4), 0x7f80);
}

#[test]
fn mmx_aliasing() {
    let code = asm64(|a| {
        a.movq(mm2, qword_ptr(rbx))?;
        a.paddusb(mm2, qword_ptr(rbx + 8))?;
        a.punpcklbw(mm3, mm2)?;
        a.movq(qword_ptr(rbx + 16), mm2)?;
        a.movd(eax, mm3)?;
        Ok(())
    });
    let (x, y) = (0x0102_0304_f0f1_f2f3u64, 0x1010_1010_2020_2020u64);
    let data: Vec<u8> = [x, y].iter().flat_map(|v| v.to_le_bytes()).collect();
    let (cpu, end) = run_with(&code, &data, |c| {
        // TOP = 5: MMn is physical register n = slot (n - 5) mod 8; MM3 is slot 6.
        c.state.fpu.fsw = 5 << 11;
        c.state.fpu.st[6][..8].copy_from_slice(&0x1122_3344_5566_7788u64.to_le_bytes());
    });
    assert_eq!(end, End::Halt);
    let sum: u64 = (0..8)
        .map(|i| u64::from(((x >> (8 * i)) as u8).saturating_add((y >> (8 * i)) as u8)) << (8 * i))
        .sum();
    assert_eq!(rd(&cpu, DATA + 16, 8), sum);
    assert_eq!(cpu.state.fpu.fsw & 0x3800, 0);
    assert_eq!(cpu.state.fpu.ftw, 0xff);
    assert_eq!(
        &cpu.state.fpu.st[2][..10],
        &[&sum.to_le_bytes()[..], &[0xff, 0xff]].concat()[..]
    );
    // PUNPCKLBW mm3 (old 0x...5566_7788), mm2: bytes interleaved, low dword to EAX.
    let lo = |v: u64, i: u32| (v >> (8 * i)) as u8 as u64;
    let old3 = 0x1122_3344_5566_7788u64;
    let want = lo(old3, 0) | lo(sum, 0) << 8 | lo(old3, 1) << 16 | lo(sum, 1) << 24;
    assert_eq!(cpu.state.gpr[0], want);
    // EMMS empties the tags.
    let (cpu, _) = run_with(
        &asm64(|a| {
            a.pxor(mm0, mm0)?;
            a.emms()
        }),
        &[],
        |_| {},
    );
    assert_eq!(cpu.state.fpu.ftw, 0);
}

#[test]
fn maskmovdqu_stores_selected_bytes() {
    let code = asm64(|a| {
        a.mov(rdi, rbx)?;
        a.maskmovdqu(xmm0, xmm1)
    });
    let (cpu, end) = run_with(&code, &[0xee; 16], |c| {
        set_xmm(c, 0, A);
        set_xmm(c, 1, 0x80 | 0xff << 40 | 0x7f << 48);
    });
    assert_eq!(end, End::Halt);
    let got: Vec<u8> = (0..16).map(|i| rd(&cpu, DATA + i, 1) as u8).collect();
    let want: Vec<u8> = (0..16)
        .map(|i| {
            if i == 0 || i == 5 {
                A.to_le_bytes()[i]
            } else {
                0xee
            }
        })
        .collect();
    assert_eq!(got, want);
}

/// The element `i` (`bits` wide) of `v`.
fn elem(v: u128, bits: u32, i: u32) -> u128 {
    v >> (bits * i) & ((1u128 << bits) - 1)
}

/// PUNPCKL/H on 128 bits: the low (or high) halves' elements of `d` and `s`
/// alternating, `d`'s first.
fn unpacked(d: u128, s: u128, bits: u32, high: bool) -> u128 {
    let n = 64 / bits;
    let first = if high { n } else { 0 };
    (0..n).fold(0, |r, i| {
        r | elem(d, bits, first + i) << (2 * i * bits)
            | elem(s, bits, first + i) << ((2 * i + 1) * bits)
    })
}

/// The byte, word and dword unpacks and PSHUFD (done in IR in this mode), from
/// registers (the source the destination itself too) and from memory.
#[test]
fn unpacks_and_dword_shuffles() {
    type Unpack = fn(&mut CodeAssembler, AsmRegisterXmm, AsmRegisterXmm) -> Result<(), IcedError>;
    type UnpackMem =
        fn(&mut CodeAssembler, AsmRegisterXmm, AsmMemoryOperand) -> Result<(), IcedError>;
    let forms: [(Unpack, UnpackMem, u32, bool); 6] = [
        (CodeAssembler::punpcklbw, CodeAssembler::punpcklbw, 8, false),
        (
            CodeAssembler::punpcklwd,
            CodeAssembler::punpcklwd,
            16,
            false,
        ),
        (
            CodeAssembler::punpckldq,
            CodeAssembler::punpckldq,
            32,
            false,
        ),
        (CodeAssembler::punpckhbw, CodeAssembler::punpckhbw, 8, true),
        (CodeAssembler::punpckhwd, CodeAssembler::punpckhwd, 16, true),
        (CodeAssembler::punpckhdq, CodeAssembler::punpckhdq, 32, true),
    ];
    for (reg, mem, bits, high) in forms {
        let code = asm64(|a| {
            a.movdqa(xmm0, xmmword_ptr(rbx))?;
            a.movdqa(xmm1, xmm0)?;
            a.movdqa(xmm2, xmm0)?;
            reg(a, xmm0, xmm3)?;
            mem(a, xmm1, xmmword_ptr(rbx + 16))?;
            reg(a, xmm2, xmm2)?;
            Ok(())
        });
        let (cpu, end) = run_with(&code, &bytes(&[A, B]), |cpu| set_xmm(cpu, 3, B));
        assert_eq!(end, End::Halt);
        let want = unpacked(A, B, bits, high);
        assert_eq!(
            xmm(&cpu, 0),
            want,
            "{bits} high={high}: {:#x}",
            xmm(&cpu, 0)
        );
        assert_eq!(xmm(&cpu, 1), want, "{bits} high={high}, memory");
        assert_eq!(
            xmm(&cpu, 2),
            unpacked(A, A, bits, high),
            "{bits} high={high}, itself"
        );
    }
    for imm in [0x00u32, 0x1b, 0xe4, 0x4e, 0xb1, 0x93] {
        let code = asm64(|a| {
            a.pshufd(xmm0, xmm1, imm)?;
            a.pshufd(xmm2, xmmword_ptr(rbx), imm)?;
            a.pshufd(xmm1, xmm1, imm)?;
            Ok(())
        });
        let (cpu, end) = run_with(&code, &bytes(&[A]), |cpu| set_xmm(cpu, 1, A));
        assert_eq!(end, End::Halt);
        let want = (0..4).fold(0u128, |r, i| {
            r | elem(A, 32, imm >> (2 * i) & 3) << (32 * i)
        });
        for x in [0, 2, 1] {
            assert_eq!(xmm(&cpu, x), want, "pshufd {imm:#x} xmm{x}");
        }
    }
    // An unaligned memory source faults (#GP) and leaves the destination.
    let code = asm64(|a| {
        a.punpcklbw(xmm0, xmmword_ptr(rbx + 8))?;
        Ok(())
    });
    let (cpu, end) = run_with(&code, &bytes(&[A, B]), |cpu| set_xmm(cpu, 0, B));
    assert!(matches!(end, End::Fault(13, _)), "{end:?}");
    assert_eq!(xmm(&cpu, 0), B);
}
