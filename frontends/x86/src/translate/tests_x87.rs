//! x87 tests: guest code assembled with iced-x86, run through the translator and the
//! IR interpreter in 64-bit mode. Expected values are SDM constants (FLDPI, √2 in
//! extended precision), values checked by hand (1/3 in each rounding mode), or host
//! IEEE arithmetic where the x87 result must equal it (precision control 53 and 24).

use super::tests::{asm64, rd, run_with_data, End, DATA};
use crate::cpu::X86Cpu;
use iced_x86::code_asm::*;
use vireo_core::cpu::ctl;

fn m80(cpu: &X86Cpu, at: u64) -> (u16, u64) {
    (rd(cpu, at + 8, 2) as u16, rd(cpu, at, 8))
}

fn f64s(v: &[f64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

#[test]
fn constants_and_extended_store() {
    let code = asm64(|a| {
        a.fldpi()?;
        a.fstp(tword_ptr(rbx))?;
        a.fldl2e()?;
        a.fstp(tword_ptr(rbx + 16))?;
        a.fld1()?;
        a.fstp(tword_ptr(rbx + 32))?;
        Ok(())
    });
    let (cpu, end) = run_with_data(&code, &[], |_| {});
    assert_eq!(end, End::Halt);
    assert_eq!(m80(&cpu, DATA), (0x4000, 0xc90f_daa2_2168_c235));
    assert_eq!(m80(&cpu, DATA + 16), (0x3fff, 0xb8aa_3b29_5c17_f0bc));
    assert_eq!(m80(&cpu, DATA + 32), (0x3fff, 0x8000_0000_0000_0000));
    // Stack balanced: TOP 0, all empty.
    assert_eq!(cpu.state.fpu.fsw & 0x3800, 0);
    assert_eq!(cpu.state.fpu.ftw, 0);
}

#[test]
fn extended_precision_beyond_double() {
    // 1 + 2^-60 is exact in extended precision, 1.0 in double.
    let code = asm64(|a| {
        a.fld1()?;
        a.fld(qword_ptr(rbx))?;
        a.faddp(st1, st0)?;
        a.fld(st0)?;
        a.fstp(tword_ptr(rbx + 16))?;
        a.fstp(qword_ptr(rbx + 32))?;
        Ok(())
    });
    let (cpu, end) = run_with_data(&code, &f64s(&[2f64.powi(-60)]), |_| {});
    assert_eq!(end, End::Halt);
    assert_eq!(m80(&cpu, DATA + 16), (0x3fff, 0x8000_0000_0000_0008));
    assert_eq!(rd(&cpu, DATA + 32, 8), 1f64.to_bits());
    // The m64 store was inexact: PE.
    assert_ne!(cpu.state.fpu.fsw & 0x20, 0);
}

#[test]
fn sqrt2_and_rounding_modes() {
    // √2 = 3FFF B504F333F9DE6484 (next bits 597D...: rounds down in RN).
    let code = asm64(|a| {
        a.fld(qword_ptr(rbx))?;
        a.fsqrt()?;
        a.fstp(tword_ptr(rbx + 16))?;
        for (k, cw) in [0x037fu64, 0x077f, 0x0b7f, 0x0f7f].iter().enumerate() {
            a.mov(word_ptr(rbx + 8), *cw as u32)?;
            a.fldcw(word_ptr(rbx + 8))?;
            a.fld1()?;
            a.fidiv(dword_ptr(rbx + 12))?;
            a.fstp(tword_ptr(rbx + 32 + 16 * k as i32))?;
        }
        Ok(())
    });
    let mut data = f64s(&[2.0]);
    data.extend_from_slice(&[0, 0, 0, 0, 3, 0, 0, 0]);
    let (cpu, end) = run_with_data(&code, &data, |_| {});
    assert_eq!(end, End::Halt);
    assert_eq!(m80(&cpu, DATA + 16), (0x3fff, 0xb504_f333_f9de_6484));
    // 1/3 = 0.AAAA…AAAA|AAA… × 2^-1: nearest and up round up, down and zero truncate.
    let third = |k: u64| m80(&cpu, DATA + 32 + 16 * k);
    assert_eq!(third(0), (0x3ffd, 0xaaaa_aaaa_aaaa_aaab));
    assert_eq!(third(1), (0x3ffd, 0xaaaa_aaaa_aaaa_aaaa));
    assert_eq!(third(2), (0x3ffd, 0xaaaa_aaaa_aaaa_aaab));
    assert_eq!(third(3), (0x3ffd, 0xaaaa_aaaa_aaaa_aaaa));
}

/// With PC = 53 (and 24), results equal IEEE double (single) arithmetic.
#[test]
fn precision_control_matches_ieee() {
    let vals = [
        1.0f64,
        3.0,
        0.1,
        -7.25,
        1e10,
        123456.789,
        2f64.powi(-30) * 1.7,
        -0.3,
    ];
    for &x in &vals {
        for &y in &vals {
            let code = asm64(|a| {
                a.fldcw(word_ptr(rbx + 64))?;
                for (k, op) in [0, 1, 2, 3].iter().enumerate() {
                    a.fld(qword_ptr(rbx))?;
                    match op {
                        0 => a.fadd(qword_ptr(rbx + 8))?,
                        1 => a.fsub(qword_ptr(rbx + 8))?,
                        2 => a.fmul(qword_ptr(rbx + 8))?,
                        _ => a.fdiv(qword_ptr(rbx + 8))?,
                    }
                    a.fstp(tword_ptr(rbx + 80 + 16 * k as i32))?;
                }
                Ok(())
            });
            let mut data = f64s(&[x, y]);
            data.resize(64, 0);
            data.extend_from_slice(&0x027fu16.to_le_bytes());
            let (cpu, end) = run_with_data(&code, &data, |_| {});
            assert_eq!(end, End::Halt);
            for (k, want) in [x + y, x - y, x * y, x / y].iter().enumerate() {
                let (hi, lo) = m80(&cpu, DATA + 80 + 16 * k as u64);
                let got =
                    crate::fpu::x87::to_f64(crate::fpu::ext::Ext::from_parts(lo, u64::from(hi)));
                // The extended value must hold exactly the double (no extra bits).
                assert_eq!(lo & 0x7ff, 0, "{x} op{k} {y}");
                assert_eq!(got.to_bits(), want.to_bits(), "{x} op{k} {y}");
            }
        }
    }
}

#[test]
fn single_precision_control() {
    let code = asm64(|a| {
        a.fldcw(word_ptr(rbx + 8))?;
        a.fld(dword_ptr(rbx))?;
        a.fdiv(dword_ptr(rbx + 4))?;
        a.fstp(dword_ptr(rbx + 16))?;
        Ok(())
    });
    let mut data = Vec::new();
    data.extend_from_slice(&1.0f32.to_le_bytes());
    data.extend_from_slice(&3.0f32.to_le_bytes());
    data.extend_from_slice(&0x007fu16.to_le_bytes());
    let (cpu, end) = run_with_data(&code, &data, |_| {});
    assert_eq!(end, End::Halt);
    assert_eq!(rd(&cpu, DATA + 16, 4) as u32, (1.0f32 / 3.0).to_bits());
}

#[test]
fn integer_conversions() {
    let code = asm64(|a| {
        a.fld(qword_ptr(rbx))?; // 2.5
        a.fist(dword_ptr(rbx + 16))?; // RN: 2
        a.fisttp(dword_ptr(rbx + 20))?; // trunc: 2
        a.fld(qword_ptr(rbx + 8))?; // -3.5
        a.fistp(word_ptr(rbx + 24))?; // RN: -4
        a.fild(dword_ptr(rbx + 28))?; // 0x7fffffff
        a.fimul(word_ptr(rbx + 32))?; // * 4
        a.fistp(qword_ptr(rbx + 40))?;
        a.fld(qword_ptr(rbx + 48))?; // 1e20: out of range for m32
        a.fistp(dword_ptr(rbx + 56))?;
        Ok(())
    });
    let mut data = f64s(&[2.5, -3.5]);
    data.resize(28, 0);
    data.extend_from_slice(&0x7fff_ffffu32.to_le_bytes());
    data.extend_from_slice(&4u16.to_le_bytes());
    data.resize(48, 0);
    data.extend_from_slice(&1e20f64.to_le_bytes());
    let (cpu, end) = run_with_data(&code, &data, |_| {});
    assert_eq!(end, End::Halt);
    assert_eq!(rd(&cpu, DATA + 16, 4), 2);
    assert_eq!(rd(&cpu, DATA + 20, 4), 2);
    assert_eq!(rd(&cpu, DATA + 24, 2), 0xfffc);
    assert_eq!(rd(&cpu, DATA + 40, 8), 0x7fff_ffff * 4);
    // Masked invalid: the integer indefinite, IE set.
    assert_eq!(rd(&cpu, DATA + 56, 4), 0x8000_0000);
    assert_ne!(cpu.state.fpu.fsw & 1, 0);
}

#[test]
fn compare_and_status_word() {
    let code = asm64(|a| {
        a.fld(qword_ptr(rbx))?; // 1.0
        a.fld(qword_ptr(rbx + 8))?; // 2.0
        a.fcomi(st0, st1)?; // 2 > 1: ZF=PF=CF=0
        a.setb(byte_ptr(rbx + 16))?;
        a.fcom_2(st0, st1)?; // C3 C2 C0 = 000
        a.fnstsw(ax)?;
        a.mov(word_ptr(rbx + 18), ax)?;
        a.fxch(st0, st1)?; // ST0 = 1
        a.fcom_2(st0, st1)?; // less: C0
        a.fnstsw(word_ptr(rbx + 20))?;
        a.fucomip(st0, st1)?; // CF = 1, pops
        a.setb(byte_ptr(rbx + 22))?;
        a.ftst()?; // 2 vs 0: greater
        a.fxam()?; // positive normal: C2
        a.fnstsw(word_ptr(rbx + 24))?;
        a.fstp(st0)?;
        Ok(())
    });
    let data = f64s(&[1.0, 2.0]);
    let (cpu, end) = run_with_data(&code, &data, |_| {});
    assert_eq!(end, End::Halt);
    assert_eq!(rd(&cpu, DATA + 16, 1), 0);
    let sw1 = rd(&cpu, DATA + 18, 2);
    assert_eq!(sw1 & 0x4500, 0);
    assert_eq!(sw1 >> 11 & 7, 6, "TOP after two pushes");
    assert_eq!(rd(&cpu, DATA + 20, 2) & 0x4500, 0x0100);
    assert_eq!(rd(&cpu, DATA + 22, 1), 1);
    assert_eq!(rd(&cpu, DATA + 24, 2) & 0x4700, 0x0400);
    assert_eq!(cpu.state.fpu.ftw, 0);
}

#[test]
fn fprem_quotient_bits_and_partial() {
    let code = asm64(|a| {
        a.fld(qword_ptr(rbx + 8))?; // 3
        a.fld(qword_ptr(rbx))?; // 10
        a.fprem()?;
        a.fnstsw(word_ptr(rbx + 32))?;
        a.fstp(qword_ptr(rbx + 40))?;
        a.fstp(st0)?;
        a.fld(qword_ptr(rbx + 8))?; // 3
        a.fld(qword_ptr(rbx + 16))?; // 1e30
        a.fprem()?;
        a.fnstsw(word_ptr(rbx + 48))?;
        Ok(())
    });
    let data = f64s(&[10.0, 3.0, 1e30]);
    let (cpu, end) = run_with_data(&code, &data, |_| {});
    assert_eq!(end, End::Halt);
    // q = 3: Q0 (C1) = 1, Q1 (C3) = 1, Q2 (C0) = 0; C2 = 0 (complete).
    assert_eq!(rd(&cpu, DATA + 32, 2) & 0x4700, 0x4200);
    assert_eq!(rd(&cpu, DATA + 40, 8), 1f64.to_bits());
    // Exponent difference ≥ 64: partial remainder, C2 = 1.
    assert_ne!(rd(&cpu, DATA + 48, 2) & 0x0400, 0);
}

#[test]
fn masked_and_unmasked_exceptions() {
    // Masked zero-divide: ∞, ZE. Stack underflow: IE+SF, indefinite.
    let code = asm64(|a| {
        a.fld1()?;
        a.fldz()?;
        a.fdivp(st1, st0)?;
        a.fstp(tword_ptr(rbx))?;
        a.fadd_2(st0, st1)?; // empty: underflow
        a.fstp(tword_ptr(rbx + 16))?;
        a.fnstsw(word_ptr(rbx + 32))?;
        Ok(())
    });
    let (cpu, end) = run_with_data(&code, &[], |_| {});
    assert_eq!(end, End::Halt);
    assert_eq!(m80(&cpu, DATA), (0x7fff, 0x8000_0000_0000_0000));
    assert_eq!(m80(&cpu, DATA + 16), (0xffff, 0xc000_0000_0000_0000));
    let sw = rd(&cpu, DATA + 32, 2);
    assert_eq!(sw & 0x7f, 0x45, "IE, ZE, SF");

    // Unmasked zero-divide with CR0.NE: the destination is kept, ES is set, and the
    // next waiting instruction raises #MF.
    let code = asm64(|a| {
        a.fldcw(word_ptr(rbx))?;
        a.fld1()?;
        a.fldz()?;
        a.fdivp(st1, st0)?;
        a.fnstsw(word_ptr(rbx + 8))?; // no-wait: fine
        a.fld1()?; // #MF here
        Ok(())
    });
    let (cpu, end) = run_with_data(&code, &0x037bu16.to_le_bytes(), |c| {
        c.state.cr0 |= ctl::CR0_NE;
    });
    assert_eq!(end, End::Fault(16, None));
    assert_eq!(rd(&cpu, DATA + 8, 2) & 0x80ff, 0x8084);
    // ST(0) is still the 0 and ST(1) the 1 (no pop, no write).
    assert_eq!(cpu.state.fpu.fsw >> 11 & 7, 6);
    assert_eq!(crate::fpu::ext::Ext::from_slot(&cpu.state.fpu.st[0]).exp, 0);
}

#[test]
fn device_not_available() {
    let code = asm64(|a| {
        a.fld1()?;
        Ok(())
    });
    let (_, end) = run_with_data(&code, &[], |c| c.state.cr0 |= ctl::CR0_TS);
    assert_eq!(end, End::Fault(7, None));
    // WAIT faults on TS only with MP.
    let code = asm64(|a| {
        a.wait()?;
        Ok(())
    });
    let (_, end) = run_with_data(&code, &[], |c| c.state.cr0 |= ctl::CR0_TS);
    assert_eq!(end, End::Halt);
    let (_, end) = run_with_data(&code, &[], |c| c.state.cr0 |= ctl::CR0_TS | ctl::CR0_MP);
    assert_eq!(end, End::Fault(7, None));
}

#[test]
fn fxsave_layout_and_round_trip() {
    let code = asm64(|a| {
        a.fld1()?;
        a.fldpi()?;
        a.fxsave(ptr(rbx))?;
        a.fninit()?;
        a.fxrstor(ptr(rbx))?;
        a.fstp(tword_ptr(rbx + 0x300))?;
        a.fxsave(ptr(rbx + 1))?; // misaligned: #GP(0)
        Ok(())
    });
    let (cpu, end) = run_with_data(&code, &[], |c| {
        c.state.fpu.xmm[3] = [0x33; 16];
        c.state.fpu.mxcsr = 0x1fa0;
    });
    assert_eq!(end, End::Fault(13, Some(0)));
    let b = |o: u64, n: usize| rd(&cpu, DATA + o, n);
    assert_eq!(b(0, 2), 0x037f, "FCW");
    assert_eq!(b(2, 2) >> 11 & 7, 6, "FSW.TOP");
    assert_eq!(b(4, 1), 0xc0, "abridged tag: physical 6 and 7 valid");
    assert_eq!(b(24, 4), 0x1fa0, "MXCSR");
    assert_eq!(b(28, 4), 0xffff, "MXCSR_MASK");
    assert_eq!(b(32, 8), 0xc90f_daa2_2168_c235, "ST0 = pi");
    assert_eq!(b(40, 2), 0x4000);
    assert_eq!(b(48, 8), 0x8000_0000_0000_0000, "ST1 = 1");
    assert_eq!(b(160 + 3 * 16, 8), 0x3333_3333_3333_3333, "XMM3");
    assert_eq!(m80(&cpu, DATA + 0x300), (0x4000, 0xc90f_daa2_2168_c235));
}

#[test]
fn fnstenv_and_fldenv() {
    let code = asm64(|a| {
        a.fld1()?;
        a.fnstenv(ptr(rbx))?;
        a.fldenv(ptr(rbx + 64))?;
        Ok(())
    });
    let mut data = vec![0u8; 64];
    // A 28-byte environment: FCW 0x0c7f, FSW with TOP 3, all tags empty.
    data.extend_from_slice(&[0x7f, 0x0c, 0, 0, 0x00, 0x18, 0, 0, 0xff, 0xff, 0, 0]);
    data.resize(64 + 28, 0);
    let (cpu, end) = run_with_data(&code, &data, |_| {});
    assert_eq!(end, End::Halt);
    assert_eq!(rd(&cpu, DATA, 2), 0x037f);
    assert_eq!(rd(&cpu, DATA + 4, 2) >> 11 & 7, 7);
    // Full tag word: physical 7 valid (00), others empty (11).
    assert_eq!(rd(&cpu, DATA + 8, 2), 0x3fff);
    assert_eq!(cpu.state.fpu.fcw, 0x0c7f);
    assert_eq!(cpu.state.fpu.fsw >> 11 & 7, 3);
    assert_eq!(cpu.state.fpu.ftw, 0);
}

#[test]
fn transcendentals_and_misc() {
    let code = asm64(|a| {
        a.fld(qword_ptr(rbx))?; // 0.5
        a.fsin()?;
        a.fstp(qword_ptr(rbx + 16))?;
        a.fld1()?;
        a.fld(qword_ptr(rbx + 8))?; // 8
        a.fyl2x()?; // 1 * log2 8 = 3
        a.fstp(qword_ptr(rbx + 24))?;
        a.fld(qword_ptr(rbx + 8))?;
        a.fxtract()?; // exponent 3, significand 1
        a.fstp(qword_ptr(rbx + 32))?;
        a.fstp(qword_ptr(rbx + 40))?;
        a.fld(qword_ptr(rbx + 8))?;
        a.fld1()?;
        a.fscale()?; // 1 * 2^8
        a.fstp(qword_ptr(rbx + 48))?;
        a.fstp(st0)?;
        a.fld(qword_ptr(rbx))?;
        a.fchs()?;
        a.frndint()?; // -0.5 → -0 (RN)
        a.fstp(qword_ptr(rbx + 56))?;
        Ok(())
    });
    let data = f64s(&[0.5, 8.0]);
    let (cpu, end) = run_with_data(&code, &data, |_| {});
    assert_eq!(end, End::Halt);
    assert_eq!(rd(&cpu, DATA + 16, 8), 0.5f64.sin().to_bits());
    assert_eq!(rd(&cpu, DATA + 24, 8), 3f64.to_bits());
    assert_eq!(rd(&cpu, DATA + 32, 8), 1f64.to_bits());
    assert_eq!(rd(&cpu, DATA + 40, 8), 3f64.to_bits());
    assert_eq!(rd(&cpu, DATA + 48, 8), 256f64.to_bits());
    assert_eq!(rd(&cpu, DATA + 56, 8), (-0f64).to_bits());
}

#[test]
fn fcmov_and_denormal_operand() {
    let code = asm64(|a| {
        a.fld(qword_ptr(rbx))?; // 1
        a.fld(qword_ptr(rbx + 8))?; // 2
        a.stc()?;
        a.fcmovb(st0, st1)?; // CF=1: ST0 = 1
        a.fstp(qword_ptr(rbx + 24))?;
        a.fstp(st0)?;
        a.fld(qword_ptr(rbx + 16))?; // denormal double: exact in extended, DE
        a.fnstsw(word_ptr(rbx + 32))?;
        a.fstp(qword_ptr(rbx + 40))?;
        Ok(())
    });
    let mut data = f64s(&[1.0, 2.0]);
    data.extend_from_slice(&5u64.to_le_bytes());
    let (cpu, end) = run_with_data(&code, &data, |_| {});
    assert_eq!(end, End::Halt);
    assert_eq!(rd(&cpu, DATA + 24, 8), 1f64.to_bits());
    assert_eq!(rd(&cpu, DATA + 32, 2) & 0x3f, 2, "DE");
    assert_eq!(rd(&cpu, DATA + 40, 8), 5);
}
