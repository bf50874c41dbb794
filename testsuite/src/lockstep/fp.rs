//! x87, MMX and SSE in lockstep sequences: which forms are generated (those the TCG
//! CPUID model advertises, minus the implementation-specific approximations), their
//! register operands, the x87 condition codes each instruction leaves undefined, the
//! bytes of FPU environment images that are not compared, and a random initial FPU
//! state (FCW, FSW, tags, ST(i)/MMX registers, MXCSR, XMM registers) with float-class
//! values in the data page.
//!
//! # What is compared
//! FCW, FSW (C0-C3 masked where the SDM leaves them undefined: [`cc_after`]), the
//! abridged tag word, the 80 bits of every ST(i)/MMX register (empty ones too: FXSAVE
//! and MMX reads see them), MXCSR and XMM0-15 (YMM upper halves: unchanged). Not
//! compared: the x87 instruction and data pointers and the last opcode (FIP, FDP, FOP,
//! and the FCS/FDS selectors of the environment images): which of them a CPU updates
//! is model-specific (FDP_EXCPTN_ONLY, AMD's save-on-error-only pointers), and the CPU
//! under PVM runs the guest with the host's code selector. Nor FXSAVE's MXCSR_MASK (a
//! property of the CPU model). The generator never emits a read of those image bytes
//! ([`uncompared_bytes`], [`data_operand`]).

use super::env::{Setup, DATA};
use super::gen::Rng;
use iced_x86::{Code, CpuidFeature, Instruction, Mnemonic, OpCodeOperandKind, OpKind, Register};
use std::ops::Range;
use vireo_x86::cpuid::{edx1, CpuidModel};

/// FSW condition code C0.
pub const C0: u16 = 1 << 8;
/// FSW condition code C1.
pub const C1: u16 = 1 << 9;
/// FSW condition code C2.
pub const C2: u16 = 1 << 10;
/// FSW condition code C3.
pub const C3: u16 = 1 << 14;
/// All four condition codes.
pub const CC: u16 = C0 | C1 | C2 | C3;

/// Whether TCG's CPUID model advertises floating-point/SIMD feature `x`: `None` if `x`
/// is not one of the x87/MMX/SSE groups.
pub fn advertised(x: CpuidFeature) -> Option<bool> {
    use CpuidFeature::*;
    let m = CpuidModel::default();
    let (reg, bit) = match x {
        FPU | FPU287 | FPU387 => (m.edx1, edx1::FPU),
        FXSR => (m.edx1, edx1::FXSR),
        MMX => (m.edx1, edx1::MMX),
        SSE => (m.edx1, edx1::SSE),
        SSE2 => (m.edx1, edx1::SSE2),
        // CPUID.1:ECX bits 0, 9, 19, 20.
        SSE3 => (m.ecx1, 1),
        SSSE3 => (m.ecx1, 1 << 9),
        SSE4_1 => (m.ecx1, 1 << 19),
        SSE4_2 => (m.ecx1, 1 << 20),
        _ => return None,
    };
    Some(reg & bit != 0)
}

/// Whether `x` belongs to the x87 group (else, if [`advertised`] knows it, to MMX/SSE).
pub fn is_x87_feature(x: CpuidFeature) -> bool {
    matches!(
        x,
        CpuidFeature::FPU | CpuidFeature::FPU287 | CpuidFeature::FPU387
    )
}

/// Floating-point instructions not generated: their results are implementation-specific
/// approximations, not bit-exact across CPUs (and TCG computes the x87 transcendentals
/// through f64: about 53 correct bits of 64).
pub fn approximate(m: Mnemonic) -> bool {
    use Mnemonic::*;
    matches!(
        m,
        Fsin | Fcos
            | Fsincos
            | Fptan
            | Fpatan
            | F2xm1
            | Fyl2x
            | Fyl2xp1
            | Rcpps
            | Rcpss
            | Rsqrtps
            | Rsqrtss
    )
}

/// Whether a form uses the x87, MMX or SSE state (its memory operands are aligned more
/// often, see [`crate::lockstep::gen::random_instruction`]).
pub fn is_fp(code: Code) -> bool {
    code.cpuid_features()
        .iter()
        .any(|x| advertised(*x).is_some())
}

/// The register operand kinds of floating-point forms.
pub fn operand_ok(k: OpCodeOperandKind) -> bool {
    use OpCodeOperandKind::*;
    matches!(
        k,
        st0 | sti_opcode | mm_reg | mm_rm | mm_or_mem | xmm_reg | xmm_rm | xmm_or_mem
    )
}

/// A random register for operand kind `k` (`None` if it is not a register kind of
/// [`operand_ok`], or `k` is a register-or-memory kind and `want_mem`).
pub fn register(
    rng: &mut Rng,
    k: OpCodeOperandKind,
    bitness: u32,
    want_mem: bool,
) -> Option<Register> {
    use OpCodeOperandKind::*;
    let pick = |rng: &mut Rng, base: Register, n: u64| {
        Register::values()
            .nth(base as usize + rng.below(n) as usize)
            .unwrap_or(base)
    };
    let xmms = if bitness == 64 { 16 } else { 8 };
    Some(match k {
        st0 => Register::ST0,
        sti_opcode => pick(rng, Register::ST0, 8),
        mm_reg | mm_rm => pick(rng, Register::MM0, 8),
        mm_or_mem if !want_mem => pick(rng, Register::MM0, 8),
        xmm_reg | xmm_rm => pick(rng, Register::XMM0, xmms),
        xmm_or_mem if !want_mem => pick(rng, Register::XMM0, xmms),
        _ => return Option::None,
    })
}

/// The alignment a memory operand of `size` bytes gets when it is aligned (the data
/// page's float values sit at these boundaries; the aligned SSE forms need 16).
pub fn alignment(size: usize) -> u64 {
    match size {
        0 => 1,
        s if s >= 16 => 16,
        s if s.is_power_of_two() => s as u64,
        // m80 reals and BCD, environments.
        _ => 16,
    }
}

/// Whether `insn` stores the status word (FNSTSW, the environment and state images):
/// it must not be generated while a condition code is undefined.
pub fn reads_cc(insn: &Instruction) -> bool {
    use Mnemonic::*;
    matches!(
        insn.mnemonic(),
        Fnstsw | Fstsw | Fnstenv | Fstenv | Fnsave | Fsave | Fxsave | Fxsave64
    )
}

/// The condition codes (C0-C3 bits of FSW) undefined after `insn`, given those
/// undefined before (SDM Vol. 2, "FPU Flags Affected" of each instruction).
///
/// Compares, FXAM, FPREM/FPREM1 and what loads or initialises the whole status word
/// define all four; FCOMI/FUCOMI leave them alone (C1 aside, which Intel's SDM clears
/// and AMD's CPUs keep: left as it was, defined or not); FCMOVcc defines C1 only on a
/// stack underflow (left as it was); FLDCW, FSTCW,
/// FSTSW, FSTENV, FNOP, FFREE, FCLEX (and the 8087 no-ops, FWAIT) leave all four
/// undefined; every other x87 instruction sets C1 (stack fault direction, rounding)
/// and leaves C0, C2, C3 undefined. MMX, SSE and FXSAVE leave them alone.
pub fn cc_after(undefined: u16, insn: &Instruction) -> u16 {
    use Mnemonic::*;
    let m = insn.mnemonic();
    match m {
        Fcom | Fcomp | Fcompp | Fucom | Fucomp | Fucompp | Ficom | Ficomp | Ftst | Fxam | Fprem
        | Fprem1 | Fninit | Finit | Fnsave | Fsave | Fldenv | Frstor | Fxrstor | Fxrstor64 => 0,
        // Intel's SDM: C1 cleared; AMD's CPUs leave it alone (but on a stack fault).
        Fcomi | Fcomip | Fucomi | Fucomip => undefined,
        Fldcw | Fnstcw | Fstcw | Fnstsw | Fstsw | Fnstenv | Fstenv | Fnop | Ffree | Ffreep
        | Fnclex | Fclex | Fneni | Feni | Fndisi | Fdisi | Fnsetpm | Fsetpm | Wait => CC,
        // C1 is only defined (cleared) on a stack underflow.
        Fcmovb | Fcmove | Fcmovbe | Fcmovu | Fcmovnb | Fcmovne | Fcmovnbe | Fcmovnu => {
            undefined | C0 | C2 | C3
        }
        _ if insn.cpuid_features().iter().copied().any(is_x87_feature) => {
            (undefined | C0 | C2 | C3) & !C1
        }
        _ => undefined,
    }
}

/// The data-page bytes (offsets from [`DATA`]) the explicit memory operand of `insn`
/// covers, if it has one off the pointer register (every generated one is).
pub fn data_operand(insn: &Instruction) -> Option<Range<usize>> {
    let mem = (0..insn.op_count()).any(|n| insn.op_kind(n) == OpKind::Memory);
    if !mem || insn.memory_base() == Register::None {
        return None;
    }
    let at = usize::try_from(insn.memory_displacement64()).ok()?;
    Some(at..at + insn.memory_size().size().max(1))
}

/// The bytes of the data page (offsets from [`DATA`]) that `insn` may write but are
/// not compared: the instruction and data pointers, opcode and selectors of the
/// FNSTENV/FNSAVE/FXSAVE images (see the module docs), and FXSAVE's MXCSR_MASK.
pub fn uncompared_bytes(insn: &Instruction) -> Option<Range<usize>> {
    use Mnemonic::*;
    if insn.op0_kind() != OpKind::Memory || insn.memory_base() == Register::None {
        return None;
    }
    let at = usize::try_from(insn.memory_displacement64()).ok()?;
    let (from, to) = match insn.mnemonic() {
        // 14/28-byte environments (also the head of FNSAVE images): FIP, FCS/FOP,
        // FDP, FDS. The 16-bit format keeps them in bytes 6..14, the 32-bit one in
        // 12..28 (real-mode formats use the same ranges).
        Fnstenv | Fstenv | Fnsave | Fsave => {
            let env16 = insn.memory_size() == iced_x86::MemorySize::FpuEnv14
                || insn.memory_size() == iced_x86::MemorySize::FpuState94;
            if env16 {
                (6, 14)
            } else {
                (12, 28)
            }
        }
        // FXSAVE: FOP (6..8), FIP/FCS (8..16), FDP/FDS (16..24), and MXCSR_MASK
        // (28..32): a property of the CPU model (this host's has bit 17, AMD's
        // misaligned-SSE mode MXCSR.MM, which TCG does not implement).
        Fxsave | Fxsave64 => (6, 32),
        _ => return None,
    };
    Some(at + from..at + to)
}

/// One 80-bit value: (sign and exponent, significand with its explicit integer bit).
fn f80(rng: &mut Rng) -> (u16, u64) {
    let sign = if rng.chance(40) { 0x8000 } else { 0 };
    let frac = |rng: &mut Rng| match rng.below(4) {
        0 => 0,
        1 => 1u64 << rng.below(63),
        2 => rng.next_u64() & !(u64::MAX << rng.below(64)),
        _ => rng.next_u64() & 0x7fff_ffff_ffff_ffff,
    };
    let j = 1u64 << 63;
    let (exp, sig) = match rng.below(20) {
        0 => (0, 0),
        // Denormal, pseudo-denormal (J set, exponent 0).
        1 => (0, frac(rng) & !j | 1),
        2 => (0, frac(rng) | j),
        3 => (0x7fff, j),
        // QNaN (sometimes the real indefinite), SNaN.
        4 => (0x7fff, j | 1 << 62 | frac(rng) >> 2),
        5 => (0x7fff, j | (frac(rng) >> 2).max(1)),
        // Unsupported: pseudo-infinity/NaN, unnormal.
        6 => (0x7fff, frac(rng) >> 1),
        7 => (1 + rng.below(0x7ffe) as u16, frac(rng) >> 1),
        // Near the ends of the exponent range.
        8 => (1 + rng.below(64) as u16, j | frac(rng)),
        9 => (0x7ffe - rng.below(64) as u16, j | frac(rng)),
        // Anywhere.
        10 => (1 + rng.below(0x7ffe) as u16, j | frac(rng)),
        // MMX-written register: exponent all ones, any significand.
        11 => return (0xffff, rng.value()),
        // Integers and halves near the integer-conversion limits (2^15, 2^31, 2^63) and
        // small ones; values exactly representable in single/double.
        12 | 13 => {
            let bits = [1u64, 4, 15, 16, 31, 32, 52, 53, 63, 64][rng.below(10) as usize];
            let e = 16383 + bits as u16 - 1;
            let sig = match rng.below(4) {
                0 => j,
                1 => u64::MAX,
                2 => j | 1 << (64 - bits.min(64)).min(63) >> 1,
                _ => j | rng.next_u64() >> bits.min(63),
            };
            (e, sig)
        }
        14 => {
            let prec = [24u64, 53][rng.below(2) as usize];
            let s = (j | rng.next_u64() >> 1) & !(u64::MAX >> prec);
            (16383 - 64 + rng.below(128) as u16, s)
        }
        _ => (16383 - 8 + rng.below(16) as u16, j | frac(rng)),
    };
    (sign | exp, sig)
}

/// One IEEE value of `ebits`/`fbits`, from the same classes.
fn ieee(rng: &mut Rng, ebits: u32, fbits: u32) -> u64 {
    let emax = (1u64 << ebits) - 1;
    let bias = emax >> 1;
    let fmask = (1u64 << fbits) - 1;
    let sign = u64::from(rng.chance(40)) << (ebits + fbits);
    let frac = |rng: &mut Rng| match rng.below(4) {
        0 => 0,
        1 => 1u64 << rng.below(u64::from(fbits)),
        2 => rng.next_u64() & fmask & !(fmask << rng.below(u64::from(fbits))),
        _ => rng.next_u64() & fmask,
    };
    let quiet = 1u64 << (fbits - 1);
    let (e, f) = match rng.below(16) {
        0 => (0, 0),
        1 => (0, frac(rng).max(1)),
        2 => (emax, 0),
        3 => (emax, quiet | frac(rng)),
        4 => (emax, (frac(rng) & !quiet).max(1)),
        5 => (1 + rng.below(8), frac(rng)),
        6 => (emax - 1 - rng.below(8), frac(rng)),
        7 => (1 + rng.below(emax - 1), frac(rng)),
        // Near the integer-conversion limits and small integers.
        8 | 9 => {
            let bits = [1u64, 8, 16, 23, 24, 31, 32, 52, 53, 63, 64][rng.below(11) as usize];
            let f = match rng.below(3) {
                0 => 0,
                1 => fmask,
                _ => frac(rng),
            };
            ((bias + bits - 1).min(emax - 1), f)
        }
        // Results near the rounding boundary of the narrower format.
        10 => (bias - 30 + rng.below(60), frac(rng) | 1),
        _ => (bias - 10 + rng.below(20), frac(rng)),
    };
    sign | e << fbits | f
}

/// A random 16-byte vector: packed singles, packed doubles, integers or a mix.
fn vector(rng: &mut Rng) -> [u8; 16] {
    let mut q = [0u64; 2];
    match rng.below(4) {
        0 => {
            for v in q.iter_mut() {
                *v = ieee(rng, 8, 23) | ieee(rng, 8, 23) << 32;
            }
        }
        1 => {
            for v in q.iter_mut() {
                *v = ieee(rng, 11, 52);
            }
        }
        2 => {
            for v in q.iter_mut() {
                *v = rng.value();
            }
        }
        _ => {
            q[0] = ieee(rng, 11, 52);
            q[1] = ieee(rng, 8, 23) | rng.value() << 32;
        }
    }
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&q[0].to_le_bytes());
    out[8..].copy_from_slice(&q[1].to_le_bytes());
    out
}

/// A 16-byte chunk of the data page: packed IEEE values, an 80-bit real, integers at
/// the conversion limits, packed BCD, or random bytes.
fn data_chunk(rng: &mut Rng) -> Option<[u8; 16]> {
    let mut out = [0u8; 16];
    match rng.below(8) {
        0..=2 => out = vector(rng),
        3 | 4 => {
            let (se, sig) = f80(rng);
            out[..8].copy_from_slice(&sig.to_le_bytes());
            out[8..10].copy_from_slice(&se.to_le_bytes());
        }
        5 => {
            for w in out.chunks_exact_mut(4) {
                let v: u32 = match rng.below(5) {
                    0 => 0x8000_0000,
                    1 => 0x7fff_ffff,
                    2 => 0x0000_8000 | (rng.below(2) as u32 * 0xffff_0000),
                    3 => 0x7fff,
                    _ => rng.value() as u32,
                };
                w.copy_from_slice(&v.to_le_bytes());
            }
        }
        6 => out[..10].copy_from_slice(&bcd(rng)),
        _ => return None,
    }
    Some(out)
}

/// A packed BCD value: 18 digits and a sign byte (whose low bits are ignored).
fn bcd(rng: &mut Rng) -> [u8; 10] {
    let mut out = [0u8; 10];
    let digits = rng.below(19) as usize;
    for (i, b) in out.iter_mut().take(9).enumerate() {
        let d = |rng: &mut Rng, k: usize| if k < digits { rng.below(10) as u8 } else { 0 };
        *b = d(rng, 2 * i + 1) << 4 | d(rng, 2 * i);
    }
    out[9] = (rng.next_u64() as u8 & 0x7f) | if rng.chance(50) { 0x80 } else { 0 };
    out
}

/// A random x87 control word: mostly masked exceptions, random precision and rounding.
fn fcw(rng: &mut Rng) -> u16 {
    let masks = if rng.chance(85) {
        0x3f
    } else {
        rng.next_u64() as u16 & 0x3f
    };
    let pc = [3u16, 3, 2, 0, 1][rng.below(5) as usize];
    let rc = rng.below(4) as u16;
    masks | 0x40 | pc << 8 | rc << 10
}

/// A random MXCSR: mostly masked exceptions, random rounding, DAZ, FTZ and flags.
fn mxcsr(rng: &mut Rng) -> u32 {
    let masks = if rng.chance(85) {
        0x3f
    } else {
        rng.next_u64() as u32 & 0x3f
    };
    let flags = if rng.chance(30) {
        rng.next_u64() as u32 & 0x3f
    } else {
        0
    };
    let daz = u32::from(rng.chance(25)) << 6;
    let ftz = u32::from(rng.chance(25)) << 15;
    flags | daz | masks << 7 | (rng.below(4) as u32) << 13 | ftz
}

/// Replaces the FPU state of `setup` by a random one and writes float-class values into
/// chunks of its data page. The operands of FBLD in `insns` mostly get valid packed
/// BCD (invalid digits give an undefined result, which TCG computes as the CPU does).
pub fn randomize(rng: &mut Rng, setup: &mut Setup, insns: &[Instruction]) {
    let f = &mut setup.state.fpu;
    f.fcw = fcw(rng);
    let top = rng.below(8) as u16;
    let mut fsw = top << 11;
    if rng.chance(30) {
        fsw |= rng.next_u64() as u16 & 0x3f;
        // SF only with IE (a stack fault is an invalid operation).
        if fsw & 1 != 0 && rng.chance(50) {
            fsw |= 1 << 6;
        }
    }
    fsw |= rng.next_u64() as u16 & CC;
    // ES and B summarise the unmasked exceptions.
    if fsw & !f.fcw & 0x3f != 0 {
        fsw |= 0x8080;
    }
    f.fsw = fsw;
    // Tags: the top `depth` registers valid (a stack), sometimes any pattern.
    f.ftw = if rng.chance(20) {
        rng.next_u64() as u8
    } else {
        let depth = rng.below(9) as u32;
        let rel = ((1u32 << depth) - 1) as u8;
        rel.rotate_left(u32::from(top))
    };
    for st in f.st.iter_mut() {
        let (se, sig) = f80(rng);
        *st = [0; 16];
        st[..8].copy_from_slice(&sig.to_le_bytes());
        st[8..10].copy_from_slice(&se.to_le_bytes());
    }
    f.fop = 0;
    f.fip = 0;
    f.fdp = 0;
    f.mxcsr = mxcsr(rng);
    for x in f.xmm.iter_mut() {
        *x = vector(rng);
    }
    if let Some((_, data)) = setup.memory.iter_mut().find(|(a, _)| *a == DATA) {
        for chunk in data.chunks_exact_mut(16) {
            if let Some(c) = data_chunk(rng) {
                chunk.copy_from_slice(&c);
            }
        }
        for i in insns.iter().filter(|i| i.mnemonic() == Mnemonic::Fbld) {
            if rng.chance(10) {
                continue;
            }
            let at = i.memory_displacement64() as usize;
            if let Some(d) = data.get_mut(at..at + 10) {
                d.copy_from_slice(&bcd(rng));
            }
        }
    }
}

/// The initial FPU state of `setup` and the bytes of the memory operands of the
/// floating-point instructions in `insns` (as the data page holds them before the
/// run), one item per line.
pub fn describe(setup: &Setup, insns: &[Instruction]) -> String {
    let f = &setup.state.fpu;
    let g = &setup.state.gpr;
    let mut s = format!(
        "rax {:#x} rcx {:#x} rdx {:#x} rsi {:#x} rdi {:#x} rflags {:#x}\n",
        g[0], g[1], g[2], g[6], g[7], setup.state.rflags
    );
    s += &format!(
        "fcw {:#06x} fsw {:#06x} (top {}) ftw {:#04x} mxcsr {:#06x}\n",
        f.fcw,
        f.fsw,
        f.fsw >> 11 & 7,
        f.ftw,
        f.mxcsr
    );
    for (i, st) in f.st.iter().enumerate() {
        let se = u16::from_le_bytes([st[8], st[9]]);
        let sig = u64::from_le_bytes([st[0], st[1], st[2], st[3], st[4], st[5], st[6], st[7]]);
        s.push_str(&format!("st{i} {se:04x} {sig:016x}\n"));
    }
    for (i, x) in f.xmm.iter().enumerate() {
        s.push_str(&format!("xmm{i} {:#034x}\n", u128::from_le_bytes(*x)));
    }
    let data = setup
        .memory
        .iter()
        .find(|(a, _)| *a == DATA)
        .map(|(_, d)| d.as_slice())
        .unwrap_or(&[]);
    for i in insns.iter().filter(|i| is_fp(i.code())) {
        if i.op_count() == 0 || !(0..i.op_count()).any(|n| i.op_kind(n) == OpKind::Memory) {
            continue;
        }
        let at = i.memory_displacement64() as usize;
        let len = i.memory_size().size().clamp(1, 32);
        let bytes: String = data
            .iter()
            .skip(at)
            .take(len)
            .map(|b| format!("{b:02x}"))
            .collect();
        s.push_str(&format!("[{at:#x}] ({i}): {bytes}\n"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tcg_model_advertises_x87_to_sse2() {
        for x in [
            CpuidFeature::FPU,
            CpuidFeature::MMX,
            CpuidFeature::SSE,
            CpuidFeature::SSE2,
        ] {
            assert_eq!(advertised(x), Some(true), "{x:?}");
        }
        assert_eq!(advertised(CpuidFeature::ADX), None);
    }

    #[test]
    fn condition_codes_follow_the_sdm() {
        let fcom = Instruction::with2(Code::Fcom_st0_sti, Register::ST0, Register::ST1).unwrap();
        let fadd = Instruction::with2(Code::Fadd_st0_sti, Register::ST0, Register::ST2).unwrap();
        let fcomi = Instruction::with2(Code::Fcomi_st0_sti, Register::ST0, Register::ST1).unwrap();
        let fnop = Instruction::with(Code::Fnop);
        assert_eq!(cc_after(CC, &fcom), 0);
        assert_eq!(cc_after(0, &fadd), C0 | C2 | C3);
        assert_eq!(cc_after(CC, &fcomi), CC);
        assert_eq!(cc_after(0, &fcomi), 0);
        assert_eq!(cc_after(0, &fnop), CC);
        let paddb = Instruction::with2(Code::Paddb_mm_mmm64, Register::MM0, Register::MM1).unwrap();
        assert_eq!(cc_after(C2, &paddb), C2);
    }

    #[test]
    fn random_state_is_consistent() {
        let mut rng = Rng::new(3);
        for _ in 0..200 {
            let mut s =
                super::super::env::long_mode(&mut rng, &[0x90], super::super::env::Privilege::User);
            randomize(&mut rng, &mut s, &[]);
            let f = &s.state.fpu;
            let es = f.fsw & !f.fcw & 0x3f != 0;
            assert_eq!(f.fsw & 0x80 != 0, es);
            assert_eq!(f.fsw & 0x8000 != 0, es);
            assert_eq!(f.mxcsr & !0xffff, 0);
            assert_eq!(f.fcw & 0xe080, 0);
            assert!(f.st.iter().all(|st| st[10..] == [0; 6]));
        }
    }
}
