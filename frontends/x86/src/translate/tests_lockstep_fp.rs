//! Regression tests for the x87, MMX and SSE divergences the floating-point lockstep
//! campaigns (TCG against the host CPU, `testsuite/src/lockstep`, `vireo-tools lockstep
//! --fp`) found: each test fails without its fix. The expected values are what the
//! host CPU (an AMD EPYC) produced for the same inputs, in the campaigns and again
//! natively; where the SDM leaves the result open or says otherwise, the test says so.

use super::tests::{machine, rd, DATA, M};
use super::translate_block;
use crate::cpu::X86Cpu;
use vireo_core::cpu::ctl;
use vireo_core::cpu::flags::{CF, PF, ZF};
use vireo_core::exec::{BlockOutcome, Fault};
use vireo_core::ir::ExitKind;
use vireo_interp::{Interp, Prepared};

const ONE: (u16, u64) = (0x3fff, 1 << 63);
const TWO: (u16, u64) = (0x4000, 1 << 63);
const ZERO: (u16, u64) = (0, 0);

/// An x87 state: FCW, FSW (with TOP), abridged tags by physical register, ST(0..8).
struct X87 {
    fcw: u16,
    fsw: u16,
    ftw: u8,
    st: [(u16, u64); 8],
}

impl X87 {
    /// FCW `fcw`, FSW `fsw`, tags `ftw`, ST(0), ST(1) given, the rest zeros.
    fn new(fcw: u16, fsw: u16, ftw: u8, st0: (u16, u64), st1: (u16, u64)) -> X87 {
        let mut st = [ZERO; 8];
        st[0] = st0;
        st[1] = st1;
        X87 { fcw, fsw, ftw, st }
    }
}

/// A 64-bit CPU with `code` (HLT appended) at [`CODE`], `data` at [`DATA`] (RBX),
/// x87, MMX and SSE enabled (CR0.NE/MP, CR4.OSFXSR/OSXMMEXCPT).
fn cpu_with(code: &[u8], data: &[u8]) -> X86Cpu {
    let mut c = code.to_vec();
    c.push(0xf4);
    let mut cpu = machine(M::Long64, &c);
    cpu.bus.mem.write(DATA, data).expect("data");
    cpu.state.gpr[3] = DATA;
    cpu.state.cr0 = (cpu.state.cr0 | ctl::CR0_NE | ctl::CR0_MP) & !(ctl::CR0_EM | ctl::CR0_TS);
    cpu.state.cr4 |= ctl::CR4_OSFXSR | ctl::CR4_OSXMMEXCPT;
    cpu
}

fn set_x87(cpu: &mut X86Cpu, x: &X87) {
    let f = &mut cpu.state.fpu;
    f.fcw = x.fcw;
    f.fsw = x.fsw;
    f.ftw = x.ftw;
    for (slot, &(se, sig)) in f.st.iter_mut().zip(&x.st) {
        *slot = [0; 16];
        slot[..8].copy_from_slice(&sig.to_le_bytes());
        slot[8..10].copy_from_slice(&se.to_le_bytes());
    }
}

/// Runs to the HLT; `Err` with the fault (and its address) otherwise.
fn go(cpu: &mut X86Cpu) -> Result<(), Fault> {
    let mut interp = Interp::new();
    for _ in 0..100 {
        let block = translate_block(cpu, 32)?;
        match interp.run(&Prepared::new(block), cpu) {
            BlockOutcome::Exit(ExitKind::Halt) => return Ok(()),
            BlockOutcome::Exit(_) => {}
            BlockOutcome::Stopped { .. } => cpu.stop = false,
            BlockOutcome::Fault { fault, pc } => {
                cpu.state.rip = pc;
                // The HLT helper stand-in (see `tests::run`).
                if fault.vector == 6 && rd(cpu, pc, 1) == 0xf4 {
                    return Ok(());
                }
                return Err(fault);
            }
        }
    }
    panic!("no HLT");
}

/// Runs `code` from x87 state `x` with `data`.
fn x87(code: &[u8], data: &[u8], x: &X87) -> (X86Cpu, Result<(), Fault>) {
    let mut cpu = cpu_with(code, data);
    set_x87(&mut cpu, x);
    let r = go(&mut cpu);
    (cpu, r)
}

/// ST(i) as (sign and exponent, significand).
fn st(cpu: &X86Cpu, i: usize) -> (u16, u64) {
    let s = &cpu.state.fpu.st[i];
    (
        u16::from_le_bytes([s[8], s[9]]),
        u64::from_le_bytes([s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]]),
    )
}

fn fsw(cpu: &X86Cpu) -> u16 {
    cpu.state.fpu.fsw
}

// ---- x87 ------------------------------------------------------------------------

/// FNINIT and FLDENV set TOP without moving the physical registers: ST(i) renames.
#[test]
fn fninit_and_fldenv_keep_the_physical_registers() {
    // TOP 3: ST(0) = physical 3 = 1.0, ST(5) = physical 0 = 2.0.
    let mut x = X87::new(0x037f, 3 << 11, 0x08, ONE, ZERO);
    x.st[5] = TWO;
    let (cpu, r) = x87(&[0xdb, 0xe3], &[], &x); // fninit
    assert!(r.is_ok());
    assert_eq!((fsw(&cpu), cpu.state.fpu.ftw), (0, 0));
    assert_eq!(st(&cpu, 0), TWO);
    assert_eq!(st(&cpu, 3), ONE);
    // FLDENV of a 28-byte environment with TOP 5, all tags valid.
    let mut env = [0u8; 28];
    env[0..2].copy_from_slice(&0x037fu16.to_le_bytes());
    env[4..6].copy_from_slice(&(5u16 << 11).to_le_bytes());
    let (cpu, r) = x87(&[0xd9, 0x23], &env, &x); // fldenv [rbx]
    assert!(r.is_ok());
    assert_eq!((fsw(&cpu), cpu.state.fpu.ftw), (5 << 11, 0xff));
    assert_eq!(st(&cpu, 3), TWO);
    assert_eq!(st(&cpu, 6), ONE);
}

/// FCMOVcc moves only when its condition holds (iced-x86 reports no condition code
/// for it) and leaves C1 alone without a stack underflow.
#[test]
fn fcmov_tests_its_condition() {
    let x = X87::new(0x037f, 0x0200, 0x03, ONE, TWO);
    for (code, moved) in [(&[0xf8, 0xda, 0xc1], false), (&[0xf9, 0xda, 0xc1], true)] {
        // clc/stc; fcmovb st, st(1)
        let (cpu, r) = x87(code, &[], &x);
        assert!(r.is_ok());
        assert_eq!(st(&cpu, 0), if moved { TWO } else { ONE });
        assert_eq!(fsw(&cpu), 0x0200);
    }
}

/// FSTPNCE (D9 D8+i) is FSTP ST(i); with ST(0) empty it only pops (no stack fault,
/// nothing written), C1 cleared. FSTP ST(i) with an unmasked underflow does not pop.
#[test]
fn fstpnce_and_fstp_with_an_empty_stack_top() {
    let (cpu, r) = x87(
        &[0xd9, 0xd9],
        &[],
        &X87::new(0x037f, 0x0200, 0x03, ONE, TWO),
    );
    assert!(r.is_ok());
    assert_eq!((fsw(&cpu), cpu.state.fpu.ftw), (0x0800, 0x02));
    assert_eq!(st(&cpu, 0), ONE);
    let (cpu, r) = x87(
        &[0xd9, 0xd9],
        &[],
        &X87::new(0x037f, 0x0200, 0x02, ONE, TWO),
    );
    assert!(r.is_ok());
    assert_eq!((fsw(&cpu), cpu.state.fpu.ftw), (0x0800, 0x02));
    assert_eq!(st(&cpu, 0), TWO);
    // fstp st(1) with IE unmasked: IE, SF, ES, B; no pop.
    let (cpu, r) = x87(
        &[0xdd, 0xd9],
        &[],
        &X87::new(0x037e, 0x0200, 0x02, ONE, TWO),
    );
    assert!(r.is_ok());
    assert_eq!((fsw(&cpu), cpu.state.fpu.ftw), (0x80c1, 0x02));
    assert_eq!(st(&cpu, 1), TWO);
}

/// The compares set the condition codes (FCOMI: EFLAGS) even when an unmasked
/// exception is raised: a stack underflow, a denormal, and on the CPU also an invalid
/// operand (Intel's SDM says the flags are then not set); they pop only when complete.
/// FCOMI/FUCOMI leave C1 alone (Intel's SDM: cleared).
#[test]
fn compares_set_the_condition_codes_on_unmasked_exceptions() {
    // fcomp st(5), ST(5) empty, IE unmasked: unordered, C1 = 0, no pop.
    let (cpu, r) = x87(
        &[0xde, 0xd5],
        &[],
        &X87::new(0x037e, 0x0200, 0x01, ONE, TWO),
    );
    assert!(r.is_ok());
    assert_eq!((fsw(&cpu), cpu.state.fpu.ftw), (0xc5c1, 0x01));
    // fcom qword [rbx] with ST(0) an unnormal (unsupported), IE unmasked: unordered.
    let unnormal = (0x0005, 0);
    let one64 = 1f64.to_bits().to_le_bytes();
    let x = X87::new(0x037e, 0x0200, 0x01, unnormal, TWO);
    let (cpu, r) = x87(&[0xdc, 0x13], &one64, &x);
    assert!(r.is_ok());
    assert_eq!(fsw(&cpu), 0xc581);
    // fcom qword [rbx] with a denormal, DE unmasked: 1.0 > it, C3 C2 C0 cleared.
    let x = X87::new(0x037d, 0x4700, 0x01, ONE, TWO);
    let (cpu, r) = x87(&[0xdc, 0x13], &1u64.to_le_bytes(), &x);
    assert!(r.is_ok());
    assert_eq!(fsw(&cpu), 0x8082);
    // fucomip st(1): 1.0 < 2.0, CF; C1 kept; popped.
    let (cpu, r) = x87(
        &[0xdf, 0xe9],
        &[],
        &X87::new(0x037f, 0x0200, 0x03, ONE, TWO),
    );
    assert!(r.is_ok());
    assert_eq!((fsw(&cpu), cpu.state.fpu.ftw), (0x0a00, 0x02));
    assert_eq!(cpu.rflags() & (ZF | PF | CF), CF);
    // clc; fcomip st(1) with ST(1) unsupported, IE unmasked: unordered, no pop.
    let x = X87::new(0x037e, 0, 0x03, ONE, unnormal);
    let (cpu, r) = x87(&[0xf8, 0xdf, 0xf1], &[], &x);
    assert!(r.is_ok());
    assert_eq!((fsw(&cpu), cpu.state.fpu.ftw), (0x8081, 0x03));
    assert_eq!(cpu.rflags() & (ZF | PF | CF), ZF | PF | CF);
}

/// Exception priorities: a stack fault is reported alone (no DE for the operand, no
/// overflow after an underflow); an unsupported or NaN operand hides a denormal one;
/// a finite non-zero value divided by zero is only a zero divide.
#[test]
fn exception_priorities() {
    let d32 = 1u32.to_le_bytes();
    // fadd dword [rbx] (denormal) with ST(0) a pseudo-infinity: IE only.
    let x = X87::new(0x037f, 0, 0x01, (0x7fff, 0), TWO);
    let (cpu, _) = x87(&[0xd8, 0x03], &d32, &x);
    assert_eq!(
        (fsw(&cpu), st(&cpu, 0)),
        (0x0001, (0xffff, 0xc000_0000_0000_0000))
    );
    // ... with ST(0) a QNaN: nothing (the QNaN stays).
    let qnan = (0x7fff, 0xc000_0000_0000_0001);
    let (cpu, _) = x87(&[0xd8, 0x03], &d32, &X87::new(0x037f, 0, 0x01, qnan, TWO));
    assert_eq!((fsw(&cpu), st(&cpu, 0)), (0, qnan));
    // fld qword [rbx] (denormal) onto a full stack: overflow (IE, SF, C1), indefinite.
    let mut x = X87::new(0x037f, 0, 0xff, ONE, TWO);
    x.st = [ONE; 8];
    let (cpu, _) = x87(&[0xdd, 0x03], &1u64.to_le_bytes(), &x);
    assert_eq!(
        (fsw(&cpu), st(&cpu, 0)),
        (0x3a41, (0xffff, 0xc000_0000_0000_0000))
    );
    // fld st(0), ST(0) empty and ST(7) full (TOP 1, physical 0 valid): underflow.
    let mut x = X87::new(0x037f, 1 << 11, 0x01, ZERO, ZERO);
    x.st[7] = ONE;
    let (cpu, _) = x87(&[0xd9, 0xc0], &[], &x);
    assert_eq!((fsw(&cpu), cpu.state.fpu.ftw), (0x0041, 0x01));
    assert_eq!(st(&cpu, 0), (0xffff, 0xc000_0000_0000_0000));
    // fxtract, ST(0) empty and ST(7) full (TOP 5, physicals 0 3 4 6 7 valid).
    let mut x = X87::new(0x037f, 5 << 11, 0xd9, ZERO, ZERO);
    x.st[7] = ONE;
    let (cpu, _) = x87(&[0xd9, 0xf4], &[], &x);
    assert_eq!((fsw(&cpu), cpu.state.fpu.ftw), (0x2041, 0xf9));
    // fidiv word [rbx] (0) of a negative denormal: ZE only (masked: -inf).
    let x = X87::new(0x037f, 0x0200, 0x01, (0x8000, 9), TWO);
    let (cpu, _) = x87(&[0xde, 0x33], &[0, 0], &x);
    assert_eq!((fsw(&cpu), st(&cpu, 0)), (0x0004, (0xffff, 1 << 63)));
    // fsqrt of a negative denormal, DE unmasked: IE only (masked: indefinite).
    let x = X87::new(0x037d, 0, 0x01, (0x8000, 1), TWO);
    let (cpu, _) = x87(&[0xd9, 0xfa], &[], &x);
    assert_eq!(
        (fsw(&cpu), st(&cpu, 0)),
        (0x0001, (0xffff, 0xc000_0000_0000_0000))
    );
}

/// FIST, FST m32/m64 and FBSTP report no denormal-operand exception; an FBSTP out of
/// range is invalid only (not inexact, C1 clear).
#[test]
fn stores_report_no_denormal() {
    // fist word [rbx] of a denormal: 0, PE.
    let x = X87::new(0x037f, 0, 0x01, (0, 1), TWO);
    let (cpu, _) = x87(&[0xdf, 0x13], &[0xff; 2], &x);
    assert_eq!((fsw(&cpu), rd(&cpu, DATA, 2)), (0x0020, 0));
    // fstp dword [rbx] of a pseudo-denormal: +0, UE PE.
    let x = X87::new(0x037f, 0, 0x01, (0, 0x8eff_5f2e_42b8_4974), TWO);
    let (cpu, _) = x87(&[0xd9, 0x1b], &[0xff; 4], &x);
    assert_eq!((fsw(&cpu), rd(&cpu, DATA, 4)), (0x0830, 0));
    // fbstp tbyte [rbx] of -(2^64 - 1) / 2 (>= 10^18): the BCD indefinite, IE only.
    let x = X87::new(0x037f, 0x0200, 0x01, (0xc03d, u64::MAX), TWO);
    let (cpu, _) = x87(&[0xdf, 0x33], &[0; 10], &x);
    assert_eq!(fsw(&cpu), 0x0801);
    assert_eq!(
        (rd(&cpu, DATA, 8), rd(&cpu, DATA + 8, 2)),
        (0xc000_0000_0000_0000, 0xffff)
    );
}

/// An unmasked invalid, denormal or zero-divide exception records only those flags
/// (no PE from the result that is not delivered) and clears C1.
#[test]
fn unmasked_precomputation_exceptions() {
    // fadd st, st(1) with ST(0) a denormal, DE unmasked.
    let x = X87::new(
        0x037d,
        0x0200,
        0x03,
        (0, 1),
        (0x3ffb, 0x8000_0000_0080_0000),
    );
    let (cpu, _) = x87(&[0xd8, 0xc1], &[], &x);
    assert_eq!((fsw(&cpu), st(&cpu, 0)), (0x8082, (0, 1)));
    // fidiv word [rbx] (0), ZE unmasked.
    let x = X87::new(0x037b, 0x0200, 0x01, (0x8000, 9), TWO);
    let (cpu, _) = x87(&[0xde, 0x33], &[0, 0], &x);
    assert_eq!((fsw(&cpu), st(&cpu, 0)), (0x8084, (0x8000, 9)));
}

/// An unmasked overflow or underflow delivers the result rounded with an unbounded
/// exponent and biased by ∓24576 (SDM Vol. 1, 8.5.4/8.5.5); one still out of range
/// (FSCALE) becomes an infinity, inexact and rounded up. A store to memory with an
/// unmasked underflow stores nothing and does not pop (UE only, C1 cleared).
#[test]
fn unmasked_overflow_and_underflow() {
    // fmulp st(1), st: (-1.0625 × 2^16341) × (-(1 + 2^-61) × 2^16368), RC up, OE
    // unmasked: 1.0625 (1 + 2^-61) × 2^32709 → exponent 0xbfc4 - 0x6000.
    let x = X87::new(
        0x0b77,
        0,
        0x03,
        (0xffd4, 0x8800_0000_0000_0000),
        (0xffef, 0x8000_0000_0000_0004),
    );
    let (cpu, _) = x87(&[0xde, 0xc9], &[], &x);
    assert_eq!(fsw(&cpu), 0x8aa8);
    assert_eq!(st(&cpu, 0), (0x5fc4, 0x8800_0000_0000_0005));
    // fmul st, st(1): 2^-16256 (1 + 2^-63) × 1.5 × 2^-16256, UE unmasked.
    let x = X87::new(
        0x036f,
        0,
        0x03,
        (0x007f, 0x8000_0000_0000_0001),
        (0x007f, 0xc000_0000_0000_0000),
    );
    let (cpu, _) = x87(&[0xd8, 0xc9], &[], &x);
    assert_eq!(fsw(&cpu), 0x82b0);
    assert_eq!(st(&cpu, 0), (0x20ff, 0xc000_0000_0000_0002));
    // fscale: 0.25 × 2^(2^62), OE unmasked, RC down: +inf, OE PE C1.
    let x = X87::new(0x0777, 0, 0x03, (0x3ffd, 1 << 63), (0x403d, 1 << 63));
    let (cpu, _) = x87(&[0xd9, 0xfd], &[], &x);
    assert_eq!((fsw(&cpu), st(&cpu, 0)), (0x82a8, (0x7fff, 1 << 63)));
    // fst qword [rbx] of 2^-1087 with UE unmasked: memory unchanged.
    let x = X87::new(0x036f, 0x0200, 0x01, (0x3bc0, 1 << 63), TWO);
    let (cpu, _) = x87(&[0xdd, 0x13], &[0x11; 8], &x);
    assert_eq!(fsw(&cpu), 0x8090);
    assert_eq!(rd(&cpu, DATA, 8), 0x1111_1111_1111_1111);
}

/// FPREM/FPREM1: C1 and C2 cleared whatever happens (here a stack underflow); an
/// unsupported operand beats a NaN; a pseudo-denormal ST(0) with an infinite divisor
/// is written back normalised; a tiny remainder (or denormal ST(0) with an infinite
/// divisor) with UE unmasked is delivered biased.
#[test]
fn fprem_corner_cases() {
    let (cpu, _) = x87(
        &[0xd9, 0xf8],
        &[],
        &X87::new(0x037f, 0x0600, 0x01, ONE, ZERO),
    );
    assert_eq!(fsw(&cpu), 0x0041);
    let x = X87::new(
        0x037f,
        0,
        0x03,
        (0xffff, 0x66),
        (0xffff, 0xc000_0000_0000_0040),
    );
    let (cpu, _) = x87(&[0xd9, 0xf8], &[], &x);
    assert_eq!(
        (fsw(&cpu), st(&cpu, 0)),
        (0x0001, (0xffff, 0xc000_0000_0000_0000))
    );
    let x = X87::new(0x037f, 0, 0x03, (0, 1 << 63), (0x7fff, 1 << 63));
    let (cpu, _) = x87(&[0xd9, 0xf5], &[], &x);
    assert_eq!((fsw(&cpu), st(&cpu, 0)), (0x0002, (0x0001, 1 << 63)));
    let x = X87::new(0x036f, 0, 0x03, (0, 1), (0x4002, 0xa000_0000_0000_0000));
    let (cpu, _) = x87(&[0xd9, 0xf5], &[], &x);
    assert_eq!((fsw(&cpu), st(&cpu, 0)), (0x8092, (0x5fc2, 1 << 63)));
    // fprem: a denormal ST(0) with an infinite divisor and UE unmasked: biased too.
    let x = X87::new(0x0c4e, 0x4400, 0x03, (0, 0x8001), (0x7fff, 1 << 63));
    let (cpu, _) = x87(&[0xd9, 0xf8], &[], &x);
    assert_eq!((fsw(&cpu), st(&cpu, 0)), (0x8092, (0x5fd1, 0x8001 << 48)));
}

/// Precision control applies to the basic arithmetic and FSQRT only, not to FSCALE.
#[test]
fn fscale_ignores_precision_control() {
    let v = (0xbffd, 0x8000_0000_0000_0040);
    let x = X87::new(0x007f, 0, 0x03, v, (0x3ff5, 0xebb8_222b_7bf8_e800));
    let (cpu, _) = x87(&[0xd9, 0xfd], &[], &x);
    assert_eq!((fsw(&cpu), st(&cpu, 0)), (0, v));
}

/// FLD m32/m64 of a denormal with DE unmasked still loads it (ES set).
#[test]
fn fld_of_a_denormal_with_de_unmasked() {
    let x = X87::new(0x037d, 0, 0, ZERO, ZERO);
    let (cpu, _) = x87(&[0xdd, 0x03], &1u64.to_le_bytes(), &x);
    assert_eq!((fsw(&cpu), cpu.state.fpu.ftw), (0xb882, 0x80));
    assert_eq!(st(&cpu, 0), (0x3bcd, 1 << 63));
}

/// FNOP checks for a pending unmasked exception (#MF); FNSTENV masks every exception,
/// so none is pending afterwards (ES and B clear).
#[test]
fn fnop_waits_and_fnstenv_clears_es() {
    let x = X87::new(0x037e, 0x8081, 0, ZERO, ZERO);
    let (_, r) = x87(&[0xd9, 0xd0], &[], &x);
    assert_eq!(r.map_err(|f| f.vector), Err(16));
    let (cpu, r) = x87(&[0xd9, 0x33], &[0; 28], &x);
    assert!(r.is_ok());
    assert_eq!((cpu.state.fpu.fcw, fsw(&cpu)), (0x037f, 0x0001));
}

/// Of an SNaN and a QNaN the x87 returns the QNaN (SDM Vol. 1, table 4-7), whatever
/// the significands.
#[test]
fn snan_and_qnan_give_the_qnan() {
    let (s, q) = (
        (0xffff, 0x8342_f44c_8ef3_683d),
        (0xffff, 0xc003_a949_635b_f3ae),
    );
    for (a, b) in [(s, q), (q, s)] {
        let (cpu, _) = x87(&[0xd8, 0xe9], &[], &X87::new(0x037f, 0, 0x03, a, b));
        assert_eq!((fsw(&cpu), st(&cpu, 0)), (0x0001, q));
    }
}

/// FBLD of invalid digits (A-F): undefined per the SDM; the CPU sums digit × 10^k with
/// the digit values 10-15, and so does TCG.
#[test]
fn fbld_of_invalid_digits() {
    let mut all_f = [0xffu8; 10];
    all_f[9] = 0;
    let (cpu, _) = x87(&[0xdf, 0x23], &all_f, &X87::new(0x037f, 0, 0, ZERO, ZERO));
    // 15 × (10^18 - 1) / 9.
    assert_eq!(st(&cpu, 0), (0x403b, 0xb909_8406_0d35_5548));
    let mut a = [0u8; 10];
    a[8] = 0x0a;
    a[9] = 0xa0;
    let (cpu, _) = x87(&[0xdf, 0x23], &a, &X87::new(0x037f, 0, 0, ZERO, ZERO));
    // -(10 × 10^16).
    assert_eq!(st(&cpu, 0), (0xc037, 0xb1a2_bc2e_c500_0000));
}

/// C1 after FFREE is undefined (SDM); the CPU clears it, and so does TCG.
#[test]
fn ffree_clears_c1() {
    let (cpu, _) = x87(
        &[0xdd, 0xc1],
        &[],
        &X87::new(0x037f, 0x0200, 0x03, ONE, TWO),
    );
    assert_eq!((fsw(&cpu), cpu.state.fpu.ftw), (0, 0x01));
}

// ---- SSE ------------------------------------------------------------------------

fn sse(code: &[u8], data: &[u8], mxcsr: u32, xmm: &[(usize, u128)]) -> (X86Cpu, Result<(), Fault>) {
    let mut cpu = cpu_with(code, data);
    cpu.state.fpu.mxcsr = mxcsr;
    for &(r, v) in xmm {
        cpu.state.fpu.xmm[r] = v.to_le_bytes();
    }
    let r = go(&mut cpu);
    (cpu, r)
}

fn xmm(cpu: &X86Cpu, r: usize) -> u128 {
    u128::from_le_bytes(cpu.state.fpu.xmm[r])
}

/// Float-to-integer conversions report IE and PE, never DE (a denormal source with DE
/// unmasked converts to 0, inexact; with DAZ exactly).
#[test]
fn conversions_report_no_denormal() {
    // cvtsd2si rax, xmm1 (denormal 3 × 2^-1074), DE unmasked.
    let code = [0xf2, 0x48, 0x0f, 0x2d, 0xc1];
    let (cpu, r) = sse(&code, &[], 0x1e80, &[(1, 3)]);
    assert!(r.is_ok());
    assert_eq!((cpu.state.gpr[0], cpu.state.fpu.mxcsr), (0, 0x1ea0));
    let (cpu, _) = sse(&code, &[], 0x1ec0, &[(1, 3)]);
    assert_eq!(cpu.state.fpu.mxcsr, 0x1ec0);
    // cvttps2dq xmm0, xmm1, a denormal lane.
    let (cpu, r) = sse(&[0xf3, 0x0f, 0x5b, 0xc1], &[], 0x1e80, &[(1, 1)]);
    assert!(r.is_ok());
    assert_eq!((xmm(&cpu, 0), cpu.state.fpu.mxcsr), (0, 0x1ea0));
}

/// A denormal divided by zero is only a zero divide.
#[test]
fn denormal_divided_by_zero() {
    // divss xmm0, xmm1.
    let code = [0xf3, 0x0f, 0x5e, 0xc1];
    let (cpu, _) = sse(&code, &[], 0x1f80, &[(0, 6), (1, 0)]);
    assert_eq!((xmm(&cpu, 0), cpu.state.fpu.mxcsr), (0x7f80_0000, 0x1f84));
    let (cpu, r) = sse(&code, &[], 0x1d80, &[(0, 6), (1, 0)]);
    assert_eq!(r.map_err(|f| f.vector), Err(19));
    assert_eq!(cpu.state.fpu.mxcsr, 0x1d84);
}

/// With overflow or underflow unmasked (#XM, no result), PE reports whether the result
/// rounded with an unbounded exponent is inexact, and a tiny result is an underflow
/// even when exact. Lanes without the unmasked exception report their flags as usual.
#[test]
fn unmasked_overflow_and_underflow_flags() {
    let divss = [0xf3, 0x0f, 0x5e, 0xc1];
    // 6 × 2^-149 / -2^97: exact; 2^-149 / 3: inexact.
    for (a, b, flags) in [(6, 0xf000_0000, 0x12), (1, 0x4040_0000, 0x32)] {
        let (cpu, r) = sse(&divss, &[], 0x1780, &[(0, a), (1, b)]);
        assert_eq!(r.map_err(|f| f.vector), Err(19));
        assert_eq!(cpu.state.fpu.mxcsr, 0x1780 | flags);
    }
    // divsd: 0.25 / (0xca0578 × 2^-1074) overflows, inexact; 2^1023 / 0.5 exact.
    let divsd = [0xf2, 0x0f, 0x5e, 0xc1];
    for (a, b, flags) in [
        (0x3fd0_0000_0000_0000u128, 0xca_0578u128, 0x2a),
        (0x7fe0_0000_0000_0000, 0x3fe0_0000_0000_0000, 0x08),
    ] {
        let (cpu, _) = sse(&divsd, &[], 0x1b80, &[(0, a), (1, b)]);
        assert_eq!(cpu.state.fpu.mxcsr, 0x1b80 | flags);
    }
    // cvtsd2ss of 2^-1027 (exact, far below the single range): DE UE.
    let (cpu, _) = sse(&[0xf2, 0x0f, 0x5a, 0xc1], &[], 0x1780, &[(1, 1 << 47)]);
    assert_eq!(cpu.state.fpu.mxcsr, 0x1792);
    // subps: lane 0 is 0 - 2^-134 (exact, tiny), lane 1 is inexact: DE UE PE.
    let a = 0x739d_82c0u128 << 32;
    let b = 0x8000u128 | 7 << 32;
    let (cpu, _) = sse(&[0x0f, 0x5c, 0xc1], &[], 0x7380, &[(0, a), (1, b)]);
    assert_eq!(cpu.state.fpu.mxcsr, 0x73b2);
}

/// Tininess is detected after rounding with an unbounded exponent (SSE and x87): a
/// result exact at the format's precision but just below the smallest normal is tiny
/// even though its denormal rounding reaches the smallest normal: it signals underflow
/// (masked: with PE), is delivered biased with UE unmasked, and FTZ flushes it (TCG
/// flushed only denormal results). A result whose rounding at the precision (here PC
/// 24) reaches the smallest normal is not tiny.
#[test]
fn tininess_after_rounding_and_ftz() {
    // mulss xmm0, xmm1: -(2^24 - 1) × 2^-16 × 2^-134 = -(2^-126 - 2^-150), a tie
    // that rounds (to even) to -2^-126.
    let code = [0xf3, 0x0f, 0x59, 0xc1];
    let regs = [(0, 0xc37f_ffffu128), (1, 0x8000)];
    let (cpu, _) = sse(&code, &[], 0x1f80, &regs);
    assert_eq!((xmm(&cpu, 0), cpu.state.fpu.mxcsr), (0x8080_0000, 0x1fb2));
    let (cpu, _) = sse(&code, &[], 0x9f80, &regs);
    assert_eq!((xmm(&cpu, 0), cpu.state.fpu.mxcsr), (0x8000_0000, 0x9fb2));
    // fmul st, st(1): (2^64 - 1) × 2^-63 × 2^-16383 rounds to 2^-16382: UE PE (DE).
    let x = X87::new(0x037f, 0, 0x03, (0x3fff, u64::MAX), (0, 1 << 62));
    let (cpu, _) = x87(&[0xd8, 0xc9], &[], &x);
    assert_eq!((fsw(&cpu), st(&cpu, 0)), (0x0232, (0x0001, 1 << 63)));
    // The same with UE unmasked: delivered exact and biased.
    let x = X87::new(0x036f, 0, 0x03, (0x3fff, u64::MAX), (0, 1 << 62));
    let (cpu, _) = x87(&[0xd8, 0xc9], &[], &x);
    assert_eq!((fsw(&cpu), st(&cpu, 0)), (0x8092, (0x6000, u64::MAX)));
    // fsub st(3), st at PC 24, RC up: 2^-16382 (1 + 7 × 2^-63) - 0x1f3231d × 2^-16445
    // rounds at 24 bits to 2^-16382: DE PE C1, no UE.
    let mut x = X87::new(0x087f, 0, 0x09, (0, 0x1f3_231d), ZERO);
    x.st[3] = (0, 0x8000_0000_0000_0007);
    let (cpu, _) = x87(&[0xdc, 0xeb], &[], &x);
    assert_eq!((fsw(&cpu), st(&cpu, 3)), (0x0222, (0x0001, 1 << 63)));
}

/// MINSD/MAXSD with a NaN return the second operand as DAZ reads it.
#[test]
fn min_max_with_a_nan_return_the_daz_source() {
    // minsd xmm0, xmm1 / maxsd xmm0, xmm1 with DAZ.
    for (code, a) in [
        ([0xf2, 0x0f, 0x5d, 0xc1], 0x7ff8_0001_0000_0000u128),
        ([0xf2, 0x0f, 0x5f, 0xc1], 0xffff_ffff_ffff_fffd),
    ] {
        let (cpu, _) = sse(&code, &[], 0x1fc0, &[(0, a), (1, 0x30ea_153f)]);
        assert_eq!((xmm(&cpu, 0), cpu.state.fpu.mxcsr), (0, 0x1fc1));
    }
}

/// CVTSI2SD/CVTSI2SS with REX.W convert a 64-bit memory operand.
#[test]
fn cvtsi2sd_of_a_64_bit_memory_operand() {
    // cvtsi2sd xmm7, qword [rbx]
    let code = [0xf2, 0x48, 0x0f, 0x2a, 0x3b];
    let v = 0x7f80_0000_42ff_5946u64;
    let (cpu, _) = sse(&code, &v.to_le_bytes(), 0x1f80, &[]);
    assert_eq!(xmm(&cpu, 7), u128::from(0x43df_e000_0010_bfd6u64));
    assert_eq!(cpu.state.fpu.mxcsr, 0x1fa0);
}

/// SQRTSD of a negative denormal is invalid only (no DE).
#[test]
fn sqrt_of_a_negative_denormal() {
    let (cpu, _) = sse(
        &[0xf2, 0x0f, 0x51, 0xc1],
        &[],
        0x1f80,
        &[(1, 0x8000_0000_7fff_ffff)],
    );
    assert_eq!(xmm(&cpu, 0), u128::from(0xfff8_0000_0000_0000u64));
    assert_eq!(cpu.state.fpu.mxcsr, 0x1f81);
}

/// A fault on the memory operand of an MMX instruction leaves the x87 state alone (no
/// switch to MMX mode); an #XM comes after the switch; MASKMOVQ switches before its
/// store faults, and with an all-zero mask still checks its destination for writing.
#[test]
fn mmx_mode_switch_and_faults() {
    let x = X87::new(0x037f, 3 << 11, 0x08, ZERO, ZERO);
    // cvtpd2pi mm0, [rbx+1] (misaligned: #GP), paddb mm0, [rbx] (RBX unmapped: #PF).
    for (code, rbx, vector) in [
        (&[0x66, 0x0f, 0x2d, 0x43, 0x01][..], DATA, 13),
        (&[0x0f, 0xfc, 0x03][..], 0x4000_0000, 14),
    ] {
        let mut cpu = cpu_with(code, &[]);
        set_x87(&mut cpu, &x);
        cpu.state.gpr[3] = rbx;
        assert_eq!(go(&mut cpu).map_err(|f| f.vector), Err(vector));
        assert_eq!((fsw(&cpu), cpu.state.fpu.ftw), (3 << 11, 0x08));
    }
    // cvtpd2pi mm0, xmm1 of a QNaN with IE unmasked: #XM after the switch.
    let mut cpu = cpu_with(&[0x66, 0x0f, 0x2d, 0xc1], &[]);
    set_x87(&mut cpu, &x);
    cpu.state.fpu.mxcsr = 0x1f00;
    cpu.state.fpu.xmm[1] = u128::from(0x7ff8_0000_0000_0000u64).to_le_bytes();
    assert_eq!(go(&mut cpu).map_err(|f| f.vector), Err(19));
    assert_eq!((fsw(&cpu), cpu.state.fpu.ftw), (0, 0xff));
    // maskmovq mm0, mm1 with a zero mask to an unmapped RDI: #PF for a write.
    let mut cpu = cpu_with(&[0x0f, 0xf7, 0xc1], &[]);
    set_x87(&mut cpu, &x);
    cpu.state.gpr[7] = 0x4000_0010;
    let f = go(&mut cpu).expect_err("page fault");
    assert_eq!(
        (f.vector, f.error_code, f.address),
        (14, Some(2), Some(0x4000_0010))
    );
    assert_eq!((fsw(&cpu), cpu.state.fpu.ftw), (0, 0xff));
}

/// FXSAVE/FXRSTOR check their whole 512-byte area; a page fault reports its last
/// byte (CR2), and nothing is written.
#[test]
fn fxsave_checks_the_whole_area() {
    // The area ends 0x70 bytes into the unmapped page at 1 GiB.
    let at = 0x4000_0000 - 0x190;
    for (code, err) in [([0x0f, 0xae, 0x03], 2), ([0x0f, 0xae, 0x0b], 0)] {
        let mut cpu = cpu_with(&code, &[]);
        cpu.state.gpr[3] = at;
        let f = go(&mut cpu).expect_err("page fault");
        assert_eq!((f.vector, f.error_code), (14, Some(err)));
        assert_eq!(f.address, Some(at + 511));
    }
}

/// An access crossing from canonical into non-canonical addresses (2^47) is a #GP
/// before any page is walked.
#[test]
fn access_crossing_into_non_canonical_addresses() {
    for (code, at) in [
        (&[0x8b, 0x03][..], 0x7fff_ffff_fffd),       // mov eax, [rbx]
        (&[0x48, 0x8b, 0x03][..], 0x7fff_ffff_fff9), // mov rax, [rbx]
        (&[0xf3, 0x0f, 0x6f, 0x03][..], 0x7fff_ffff_fff1), // movdqu xmm0, [rbx]
    ] {
        let mut cpu = cpu_with(code, &[]);
        cpu.state.gpr[3] = at;
        let f = go(&mut cpu).expect_err("fault");
        assert_eq!((f.vector, f.error_code), (13, Some(0)), "{code:02x?}");
    }
    // The last canonical bytes themselves: a page fault (not mapped here).
    let mut cpu = cpu_with(&[0x8b, 0x03], &[]);
    cpu.state.gpr[3] = 0x7fff_ffff_fffc - 4;
    assert_eq!(go(&mut cpu).map_err(|f| f.vector), Err(14));
}
