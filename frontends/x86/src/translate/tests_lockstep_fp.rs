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
/// is written back normalised; a tiny remainder with UE unmasked is delivered biased.
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
