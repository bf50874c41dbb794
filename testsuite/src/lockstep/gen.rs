//! Random instruction sequences for lockstep testing, generated from iced-x86's
//! encoder tables: every legacy-encoded instruction form valid in the chosen mode is a
//! candidate (filtered only by what the sequence must not do: leave the code page,
//! touch I/O, read nondeterministic sources), so the generator covers the instruction
//! set rather than a hand-picked list.

use super::fp;
use iced_x86::{
    Code, CpuidFeature, EncodingKind, FlowControl, Instruction, MemoryOperand, Mnemonic,
    OpCodeOperandKind, Register, RflagsBits,
};

/// A small, seedable generator (SplitMix64): reproducible sequences from a seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9e37_79b9_7f4a_7c15)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    /// An "interesting" value: small, boundary or random, at random widths.
    pub fn value(&mut self) -> u64 {
        match self.below(8) {
            0 => 0,
            1 => self.below(16),
            2 => u64::MAX - self.below(4),
            3 => 0x8000_0000_0000_0000u64 >> (self.below(8) * 8),
            4 => 0x7fff_ffff_ffff_ffffu64 >> (self.below(8) * 8),
            5 => self.next_u64() & 0xff,
            6 => self.next_u64() & 0xffff_ffff,
            _ => self.next_u64(),
        }
    }
}

/// Which instructions a sequence may contain: the general-purpose ones always, the
/// floating-point groups as far as TCG's CPUID model advertises them (see
/// [`fp::advertised`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Features {
    /// x87 instructions (FPU), with a random initial x87 state.
    pub x87: bool,
    /// MMX, SSE and later SSE levels (and FXSAVE/FXRSTOR), with a random MXCSR and
    /// random XMM/MMX registers.
    pub mmx_sse: bool,
    /// Privileged instructions (only meaningful at CPL 0).
    pub system: bool,
}

impl Features {
    pub const GP: Features = Features {
        x87: false,
        mmx_sse: false,
        system: false,
    };
    /// General-purpose, x87, MMX and SSE instructions.
    pub const FP: Features = Features {
        x87: true,
        mmx_sse: true,
        system: false,
    };

    /// Whether sequences use floating-point state (which is then randomised).
    pub fn fp(self) -> bool {
        self.x87 || self.mmx_sse
    }
}

/// How many times each floating-point form is listed among the candidates when a
/// floating-point group is on, so that most of a sequence is floating point (there
/// are about as many general-purpose forms as floating-point ones).
pub const FP_WEIGHT: usize = 3;

/// The register that always points at the data area (never an operand).
pub fn pointer_register(bitness: u32) -> Register {
    match bitness {
        64 => Register::RBX,
        32 => Register::EBX,
        _ => Register::BX,
    }
}

/// Mnemonics a sequence must not contain: they read nondeterministic or
/// machine-specific sources, or leave the sequence.
fn excluded(m: Mnemonic) -> bool {
    use Mnemonic::*;
    matches!(
        m,
        Cpuid
            | Rdtsc
            | Rdtscp
            | Rdrand
            | Rdseed
            | Rdpid
            | Rdpmc
            | Rdpru
            | Hlt
            | Pause
            | Syscall
            | Sysenter
            | Sysret
            | Sysexit
            | Int
            | Int1
            | Int3
            | Into
            | Iret
            | Iretd
            | Iretq
            | Ud0
            | Ud1
            | Ud2
            | Xgetbv
            | Xsetbv
            | Rdmsr
            | Wrmsr
            | Enter
            | Leave
            // POPA would reload the pointer register.
            | Popa
            | Popad
            | Popf
            | Popfd
            | Popfq
            | Pushf
            | Pushfd
            | Pushfq
            | Cli
            | Sti
            | Monitor
            | Mwait
            | Monitorx
            | Mwaitx
            | Umonitor
            | Umwait
            | Tpause
            | Wbinvd
            | Invd
            | Lfence
            | Mfence
            | Sfence
            | Xbegin
            | Xend
            | Xabort
            | Xtest
            | Bound
            | Lds
            | Les
            | Lfs
            | Lgs
            | Lss
            | Arpl
            | Clflush
            | Clflushopt
            | Clwb
            | Prefetchw
            | Serialize
            | Encls
            | Enclu
            | Getsec
            | Vmcall
            | Vmmcall
    )
}

fn operand_ok(k: OpCodeOperandKind) -> bool {
    use OpCodeOperandKind::*;
    matches!(
        k,
        mem | r8_or_mem
            | r16_or_mem
            | r32_or_mem
            | r64_or_mem
            | r8_reg
            | r8_opcode
            | r16_reg
            | r16_rm
            | r16_opcode
            | r32_reg
            | r32_rm
            | r32_opcode
            | r64_reg
            | r64_rm
            | r64_opcode
            | al
            | cl
            | ax
            | eax
            | rax
            | imm8
            | imm8_const_1
            | imm8sex16
            | imm8sex32
            | imm8sex64
            | imm16
            | imm32
            | imm32sex64
            | imm64
            | seg_rSI
            | es_rDI
            | seg_rDI
    )
}

/// The instruction forms a sequence may use in `bitness`-bit code.
pub fn candidates(bitness: u32, f: Features) -> Vec<Code> {
    Code::values()
        .filter(|c| {
            let oc = c.op_code();
            // `fwait` forms encode a separate WAIT instruction before them.
            if !oc.is_instruction() || oc.encoding() != EncodingKind::Legacy || oc.fwait() {
                return false;
            }
            // Valid in the mode, and decoded the same way by Intel and AMD CPUs.
            let valid = match bitness {
                64 => oc.mode64() && oc.intel_decoder64() && oc.amd_decoder64(),
                32 => oc.mode32() && oc.intel_decoder32() && oc.amd_decoder32(),
                _ => oc.mode16() && oc.intel_decoder16() && oc.amd_decoder16(),
            };
            if !valid || excluded(c.mnemonic()) || (!f.system && oc.is_privileged()) {
                return false;
            }
            if oc.is_input_output() || c.flow_control() != FlowControl::Next {
                return false;
            }
            if fp::approximate(c.mnemonic()) {
                return false;
            }
            oc.op_kinds()
                .iter()
                .all(|k| operand_ok(*k) || fp::operand_ok(*k))
                && c.cpuid_features().iter().all(|x| feature_ok(*x, f))
        })
        .flat_map(|c| {
            let n = if f.fp() && fp::is_fp(c) { FP_WEIGHT } else { 1 };
            std::iter::repeat_n(c, n)
        })
        .collect()
}

/// Whether an instruction needing CPUID feature `x` belongs to the feature set: the
/// floating-point groups when they are on and TCG's CPUID model advertises them.
fn feature_ok(x: CpuidFeature, f: Features) -> bool {
    use CpuidFeature::*;
    if let Some(advertised) = fp::advertised(x) {
        let on = if fp::is_x87_feature(x) {
            f.x87
        } else {
            f.mmx_sse
        };
        return on && advertised;
    }
    matches!(
        x,
        INTEL8086
            | INTEL186
            | INTEL286
            | INTEL386
            | INTEL486
            | X64
            | CMOV
            | CX8
            | CMPXCHG16B
            | MOVBE
            | POPCNT
            | LZCNT
            | ADX
            | MULTIBYTENOP
            | PAUSE
    )
}

fn gpr(size: u32, index: u64) -> Register {
    let r8 = [
        Register::AL,
        Register::CL,
        Register::DL,
        Register::BL,
        Register::AH,
        Register::CH,
        Register::DH,
        Register::BH,
    ];
    let r8x = [
        Register::AL,
        Register::CL,
        Register::DL,
        Register::BL,
        Register::SPL,
        Register::BPL,
        Register::SIL,
        Register::DIL,
        Register::R8L,
        Register::R9L,
        Register::R10L,
        Register::R11L,
        Register::R12L,
        Register::R13L,
        Register::R14L,
        Register::R15L,
    ];
    let i = index as usize;
    match size {
        8 if i < 8 => r8[i],
        8 => r8x[i & 15],
        16 => Register::from_u8(Register::AX as u8 + (i & 15) as u8),
        32 => Register::from_u8(Register::EAX as u8 + (i & 15) as u8),
        _ => Register::from_u8(Register::RAX as u8 + (i & 15) as u8),
    }
}

trait FromU8 {
    fn from_u8(v: u8) -> Register;
}

impl FromU8 for Register {
    fn from_u8(v: u8) -> Register {
        Register::values()
            .nth(usize::from(v))
            .unwrap_or(Register::None)
    }
}

/// A random register of `size` bits that is neither the stack pointer nor the
/// pointer register.
fn random_reg(rng: &mut Rng, size: u32, bitness: u32) -> Register {
    let n = if bitness == 64 { 16 } else { 8 };
    loop {
        let i = rng.below(n);
        // 3 = rBX (pointer), 4 = rSP; for 8-bit legacy registers 3 is BL and 7 is BH
        // (both parts of rBX), 4 is AH.
        let bad = if size == 8 && !(bitness == 64 && i >= 8) {
            i == 3 || i == 7
        } else {
            i == 3 || i == 4
        };
        if !bad {
            return gpr(size, i);
        }
    }
}

enum Opnd {
    Reg(Register),
    Mem(MemoryOperand),
    Imm32(u32),
    Imm64(u64),
}

/// Size of the data area a memory operand may reach from the pointer register.
pub const DATA_WINDOW: u64 = 0xf00;

/// A random operand of kind `k`; memory operands are `align`-byte aligned.
fn operand(
    rng: &mut Rng,
    k: OpCodeOperandKind,
    bitness: u32,
    want_mem: bool,
    align: u64,
) -> Option<Opnd> {
    use OpCodeOperandKind::*;
    let memop = |rng: &mut Rng| {
        Opnd::Mem(MemoryOperand::with_base_displ(
            pointer_register(bitness),
            (rng.below(DATA_WINDOW) & !(align - 1)) as i64,
        ))
    };
    if fp::operand_ok(k) {
        return Some(match fp::register(rng, k, bitness, want_mem) {
            Some(r) => Opnd::Reg(r),
            Option::None => memop(rng),
        });
    }
    Some(match k {
        mem => memop(rng),
        r8_or_mem if want_mem => memop(rng),
        r16_or_mem if want_mem => memop(rng),
        r32_or_mem if want_mem => memop(rng),
        r64_or_mem if want_mem => memop(rng),
        r8_or_mem | r8_reg | r8_opcode => Opnd::Reg(random_reg(rng, 8, bitness)),
        r16_or_mem | r16_reg | r16_rm | r16_opcode => Opnd::Reg(random_reg(rng, 16, bitness)),
        r32_or_mem | r32_reg | r32_rm | r32_opcode => Opnd::Reg(random_reg(rng, 32, bitness)),
        r64_or_mem | r64_reg | r64_rm | r64_opcode => Opnd::Reg(random_reg(rng, 64, bitness)),
        al => Opnd::Reg(Register::AL),
        cl => Opnd::Reg(Register::CL),
        ax => Opnd::Reg(Register::AX),
        eax => Opnd::Reg(Register::EAX),
        rax => Opnd::Reg(Register::RAX),
        imm8 | imm8sex16 | imm8sex32 | imm8sex64 => Opnd::Imm32(rng.value() as u8 as u32),
        imm8_const_1 => Opnd::Imm32(1),
        imm16 => Opnd::Imm32(rng.value() as u16 as u32),
        imm32 | imm32sex64 => Opnd::Imm32(rng.value() as u32),
        imm64 => Opnd::Imm64(rng.value()),
        _ => return Option::None,
    })
}

/// One random instruction of form `code`, or `None` if it cannot be built.
pub fn random_instruction(rng: &mut Rng, code: Code, bitness: u32) -> Option<Instruction> {
    let oc = code.op_code();
    let kinds = oc.op_kinds();
    if matches!(
        code,
        Code::Maskmovq_rDI_mm_mm | Code::Maskmovdqu_rDI_xmm_xmm
    ) {
        return maskmov(rng, code, bitness);
    }
    // String instructions take implicit operands: build them with iced's helpers.
    if kinds.iter().any(|k| {
        matches!(
            k,
            OpCodeOperandKind::seg_rSI | OpCodeOperandKind::es_rDI | OpCodeOperandKind::seg_rDI
        )
    }) {
        return string_instruction(rng, code, bitness);
    }
    // 16-bit SHLD/SHRD with a masked count above 16 leave the destination and the
    // flags undefined (SDM: "if the count is greater than the operand size, the result
    // is undefined"; AMD and Intel CPUs differ). A count in CL is only known at run
    // time: those forms are not generated; immediate counts are kept to 0..=16.
    let shxd16 = matches!(code, Code::Shld_rm16_r16_imm8 | Code::Shrd_rm16_r16_imm8);
    if matches!(code, Code::Shld_rm16_r16_CL | Code::Shrd_rm16_r16_CL) {
        return None;
    }
    let want_mem = rng.chance(50);
    // Floating-point memory operands are mostly aligned to their size: the aligned SSE
    // forms fault otherwise (which natively run code cannot show: see KNOWN_KVM), and
    // the data page's float values sit at those boundaries.
    let align = if fp::is_fp(code) && rng.chance(90) {
        fp::alignment(oc.memory_size().size())
    } else {
        1
    };
    let mut ops: Vec<Opnd> = kinds
        .iter()
        .map(|k| operand(rng, *k, bitness, want_mem, align))
        .collect::<Option<Vec<_>>>()?;
    if shxd16 {
        if let Some(Opnd::Imm32(c)) = ops.last_mut() {
            // Keep the random high bits (masked away by the CPU) but a low count <= 16.
            *c = (*c & !0x1f) | ((*c & 0x1f) % 17);
        }
    }
    let r = match ops.as_slice() {
        [] => Ok(Instruction::with(code)),
        [Opnd::Reg(a)] => Instruction::with1(code, *a),
        [Opnd::Mem(a)] => Instruction::with1(code, *a),
        [Opnd::Imm32(a)] => Instruction::with1(code, *a),
        [Opnd::Reg(a), Opnd::Reg(b)] => Instruction::with2(code, *a, *b),
        [Opnd::Reg(a), Opnd::Mem(b)] => Instruction::with2(code, *a, *b),
        [Opnd::Mem(a), Opnd::Reg(b)] => Instruction::with2(code, *a, *b),
        [Opnd::Reg(a), Opnd::Imm32(b)] => Instruction::with2(code, *a, *b),
        [Opnd::Reg(a), Opnd::Imm64(b)] => Instruction::with2(code, *a, *b),
        [Opnd::Mem(a), Opnd::Imm32(b)] => Instruction::with2(code, *a, *b),
        [Opnd::Reg(a), Opnd::Reg(b), Opnd::Reg(c)] => Instruction::with3(code, *a, *b, *c),
        [Opnd::Reg(a), Opnd::Reg(b), Opnd::Imm32(c)] => Instruction::with3(code, *a, *b, *c),
        [Opnd::Reg(a), Opnd::Mem(b), Opnd::Imm32(c)] => Instruction::with3(code, *a, *b, *c),
        [Opnd::Mem(a), Opnd::Reg(b), Opnd::Imm32(c)] => Instruction::with3(code, *a, *b, *c),
        [Opnd::Mem(a), Opnd::Reg(b), Opnd::Reg(c)] => Instruction::with3(code, *a, *b, *c),
        [Opnd::Reg(a), Opnd::Reg(b), Opnd::Mem(c)] => Instruction::with3(code, *a, *b, *c),
        _ => return None,
    };
    let mut insn = r.ok()?;
    if oc.can_use_lock_prefix() && insn.op0_kind() == iced_x86::OpKind::Memory && rng.chance(20) {
        insn.set_has_lock_prefix(true);
    }
    Some(insn)
}

/// MASKMOVQ/MASKMOVDQU (store through DS:rDI, sometimes with an address-size
/// override); not in 32-bit code, for the reason string stores are not (see
/// [`string_instruction`]).
fn maskmov(rng: &mut Rng, code: Code, bitness: u32) -> Option<Instruction> {
    if bitness == 32 {
        return None;
    }
    let asize = match (bitness, rng.chance(20)) {
        (64, false) => 64,
        (64, true) | (32, false) | (16, true) => 32,
        _ => 16,
    };
    let mmx = code == Code::Maskmovq_rDI_mm_mm;
    let k = if mmx {
        OpCodeOperandKind::mm_reg
    } else {
        OpCodeOperandKind::xmm_reg
    };
    let a = fp::register(rng, k, bitness, false)?;
    let b = fp::register(rng, k, bitness, false)?;
    let r = if mmx {
        Instruction::with_maskmovq(asize, a, b, Register::None)
    } else {
        Instruction::with_maskmovdqu(asize, a, b, Register::None)
    };
    r.ok()
}

/// A string instruction of form `code` (MOVS, STOS, LODS, SCAS, CMPS), sometimes with
/// an address-size override, sometimes with REP/REPE/REPNE.
///
/// REP is used where a huge count still ends quickly and stays in the data areas:
/// 64-bit code (paging bounds the run with a page fault; system pages are read-only)
/// and 16-bit code (real mode: CX <= 65535 within the 64 KiB data segment). 32-bit
/// code may run without paging (`Mode::Protected32`), where a REP with ECX = 2^32 - 1
/// would sweep all 4 GiB and one with 16-bit addressing sweeps (and rewrites) the
/// descriptor tables and exception stubs in the first 64 KiB.
fn string_instruction(rng: &mut Rng, code: Code, bitness: u32) -> Option<Instruction> {
    use iced_x86::RepPrefixKind as Rep;
    use Mnemonic::*;
    let asize = match (bitness, rng.chance(20)) {
        (64, false) => 64,
        (64, true) | (32, false) | (16, true) => 32,
        _ => 16,
    };
    let rep_ok = bitness != 32;
    let m = code.mnemonic();
    // Without paging (`Mode::Protected32`) a store through a random rDI can rewrite the
    // descriptor tables and exception stubs: 32-bit code only reads with strings.
    let stores = matches!(
        m,
        Movsb | Movsw | Movsd | Movsq | Stosb | Stosw | Stosd | Stosq
    );
    if bitness == 32 && stores {
        return None;
    }
    let compares = matches!(
        m,
        Scasb | Scasw | Scasd | Scasq | Cmpsb | Cmpsw | Cmpsd | Cmpsq
    );
    let rep = match (rep_ok, rng.below(4)) {
        (false, _) | (true, 0 | 1) => Rep::None,
        (true, 2) => Rep::Repe,
        // REPNE only on the compares (it is no REP prefix for the others).
        (true, _) if compares => Rep::Repne,
        (true, _) => Rep::Repe,
    };
    let seg = Register::None;
    let r = match m {
        Movsb => Instruction::with_movsb(asize, seg, rep),
        Movsw => Instruction::with_movsw(asize, seg, rep),
        Movsd => Instruction::with_movsd(asize, seg, rep),
        Movsq => Instruction::with_movsq(asize, seg, rep),
        Stosb => Instruction::with_stosb(asize, rep),
        Stosw => Instruction::with_stosw(asize, rep),
        Stosd => Instruction::with_stosd(asize, rep),
        Stosq => Instruction::with_stosq(asize, rep),
        Lodsb => Instruction::with_lodsb(asize, seg, rep),
        Lodsw => Instruction::with_lodsw(asize, seg, rep),
        Lodsd => Instruction::with_lodsd(asize, seg, rep),
        Lodsq => Instruction::with_lodsq(asize, seg, rep),
        Scasb => Instruction::with_scasb(asize, rep),
        Scasw => Instruction::with_scasw(asize, rep),
        Scasd => Instruction::with_scasd(asize, rep),
        Scasq => Instruction::with_scasq(asize, rep),
        Cmpsb => Instruction::with_cmpsb(asize, seg, rep),
        Cmpsw => Instruction::with_cmpsw(asize, seg, rep),
        Cmpsd => Instruction::with_cmpsd(asize, seg, rep),
        Cmpsq => Instruction::with_cmpsq(asize, seg, rep),
        _ => return None,
    };
    r.ok()
}

/// A random sequence of `n` instructions, encoded for address `rip`, and the flags
/// (architectural RFLAGS bits) whose final value is undefined. No instruction reads an
/// undefined flag or x87 condition code, or a data-page byte that is not compared.
pub fn random_sequence(
    rng: &mut Rng,
    codes: &[Code],
    bitness: u32,
    n: usize,
    rip: u64,
) -> (Vec<u8>, Vec<Instruction>, u64) {
    let mut enc = iced_x86::Encoder::new(bitness);
    let mut bytes = Vec::new();
    let mut insns = Vec::new();
    let mut undefined = 0u64;
    let mut undefined_cc = 0u16;
    // Data-page bytes not compared (FPU environment images): nothing may read them.
    let mut uncompared: Vec<std::ops::Range<usize>> = Vec::new();
    while insns.len() < n {
        let code = codes[rng.below(codes.len() as u64) as usize];
        let Some(insn) = random_instruction(rng, code, bitness) else {
            continue;
        };
        // An instruction that reads a flag the sequence left undefined would make its
        // own results undefined: pick another. The same for the x87 condition codes.
        if arch_flags(insn.rflags_read()) & undefined != 0 {
            continue;
        }
        if undefined_cc != 0 && fp::reads_cc(&insn) {
            continue;
        }
        if let Some(r) = fp::data_operand(&insn) {
            if uncompared
                .iter()
                .any(|u| u.start < r.end && r.start < u.end)
            {
                continue;
            }
        }
        // A string instruction's run-time address could read them too.
        if !uncompared.is_empty() && insn.is_string_instruction() {
            continue;
        }
        let r = enc.encode(&insn, rip + bytes.len() as u64);
        // Take the buffer even after a failure: a failed encode can leave bytes in it.
        let out = enc.take_buffer();
        let Ok(len) = r else {
            continue;
        };
        // Keep only encodings the default decoder reads back as one instruction of the
        // same length (drops forms that need special decoder options).
        let back =
            iced_x86::Decoder::new(bitness, &out[..len], iced_x86::DecoderOptions::NONE).decode();
        if back.is_invalid() || back.len() != len {
            continue;
        }
        bytes.extend_from_slice(&out[..len]);
        undefined = after(undefined, &insn);
        undefined_cc = fp::cc_after(undefined_cc, &insn);
        uncompared.extend(fp::uncompared_bytes(&insn));
        insns.push(insn);
    }
    (bytes, insns, undefined)
}

/// The arithmetic flags left undefined after `insn`, given those undefined before.
///
/// iced lists what an instruction may modify; a REP string instruction whose count is
/// 0 and a shift or rotate whose masked count is 0 modify nothing, so a count only known at run time (CL) leaves the flags that
/// were undefined undefined (and adds its own undefined ones), and an immediate count
/// of 0 changes nothing. RCL/RCR of 8/16 bits rotate by the count modulo 9/17: a
/// nonzero count that is a multiple keeps CF and leaves OF undefined.
pub fn after(undefined: u64, insn: &Instruction) -> u64 {
    use Mnemonic::*;
    let u = arch_flags(insn.rflags_undefined());
    let m = arch_flags(insn.rflags_modified());
    let mnemonic = insn.mnemonic();
    // A REP string instruction with a count of 0 changes no flag.
    let repeated = insn.has_rep_prefix() || insn.has_repe_prefix() || insn.has_repne_prefix();
    if repeated && insn.is_string_instruction() {
        return undefined | u;
    }
    if !matches!(
        mnemonic,
        Shl | Sal | Shr | Sar | Rol | Ror | Rcl | Rcr | Shld | Shrd
    ) {
        return (undefined & !m) | u;
    }
    let last = insn.op_count().saturating_sub(1);
    if insn.op_kind(last) == iced_x86::OpKind::Register {
        return undefined | u;
    }
    let bits = insn.memory_size().size().max(1) * 8;
    let bits = if insn.op0_kind() == iced_x86::OpKind::Register {
        insn.op0_register().size() * 8
    } else {
        bits
    };
    let count = insn.immediate(last) & if bits == 64 { 0x3f } else { 0x1f };
    let period = match (mnemonic, bits) {
        (Rcl | Rcr, 8) => 9,
        (Rcl | Rcr, 16) => 17,
        _ => u64::MAX,
    };
    if count == 0 {
        undefined
    } else if count.is_multiple_of(period) {
        undefined | u | (1 << 11)
    } else {
        (undefined & !m) | u
    }
}

/// iced's `RflagsBits` to architectural RFLAGS bit positions.
pub fn arch_flags(iced: u32) -> u64 {
    let map = [
        (RflagsBits::CF, 1u64 << 0),
        (RflagsBits::PF, 1 << 2),
        (RflagsBits::AF, 1 << 4),
        (RflagsBits::ZF, 1 << 6),
        (RflagsBits::SF, 1 << 7),
        (RflagsBits::OF, 1 << 11),
        (RflagsBits::DF, 1 << 10),
        (RflagsBits::IF, 1 << 9),
        (RflagsBits::AC, 1 << 18),
    ];
    map.iter()
        .filter(|(i, _)| iced & i != 0)
        .map(|(_, a)| a)
        .fold(0, |acc, a| acc | a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_cover_the_general_purpose_set() {
        let c64 = candidates(64, Features::GP);
        let c16 = candidates(16, Features::GP);
        assert!(c64.len() > 400, "only {} forms", c64.len());
        assert!(c16.len() > 300, "only {} forms", c16.len());
        for m in [
            Mnemonic::Add,
            Mnemonic::Shld,
            Mnemonic::Cmpxchg,
            Mnemonic::Bsf,
            Mnemonic::Imul,
            Mnemonic::Push,
            Mnemonic::Pop,
            Mnemonic::Lahf,
        ] {
            assert!(c64.iter().any(|c| c.mnemonic() == m), "{m:?} missing");
        }
        assert!(!c64.iter().any(|c| c.mnemonic() == Mnemonic::Rdtsc));
    }

    #[test]
    fn fp_candidates_cover_x87_mmx_and_sse() {
        let c = candidates(64, Features::FP);
        for code in [
            Code::Fadd_st0_sti,
            Code::Fadd_sti_st0,
            Code::Fxch_st0_sti,
            Code::Fld_m80fp,
            Code::Fcmovb_st0_sti,
            Code::Paddb_mm_mmm64,
            Code::Addps_xmm_xmmm128,
            Code::Cvtsd2si_r64_xmmm64,
            Code::Maskmovq_rDI_mm_mm,
            Code::Fxsave_m512byte,
        ] {
            assert!(c.contains(&code), "{code:?} missing");
        }
        // What TCG advertises beyond SSE2 (SSE3, SSSE3, SSE4.1, SSE4.2) is drawn too.
        for m in [
            Mnemonic::Addsubps,
            Mnemonic::Pshufb,
            Mnemonic::Pblendvb,
            Mnemonic::Pcmpistri,
        ] {
            assert!(c.iter().any(|x| x.mnemonic() == m), "{m:?} not generated");
        }
        // Implementation-specific approximations, and what TCG does not advertise.
        for m in [Mnemonic::Fsin, Mnemonic::Rcpps, Mnemonic::Extrq] {
            assert!(!c.iter().any(|x| x.mnemonic() == m), "{m:?} generated");
        }
        // Floating-point forms are weighted: most of the list.
        let fp = c.iter().filter(|x| fp::is_fp(**x)).count();
        assert!(fp * 3 > c.len() * 2, "{fp} of {}", c.len());
        // None in the general-purpose set.
        assert!(!candidates(64, Features::GP).iter().any(|x| fp::is_fp(*x)));
        let mut rng = Rng::new(11);
        let (bytes, insns, _) = random_sequence(&mut rng, &c, 64, 300, 0x10000);
        let mut d = iced_x86::Decoder::with_ip(64, &bytes, 0x10000, iced_x86::DecoderOptions::NONE);
        let decoded: Vec<Instruction> =
            std::iter::from_fn(|| d.can_decode().then(|| d.decode())).collect();
        assert_eq!(decoded.len(), insns.len());
        assert!(decoded.iter().all(|i| !i.is_invalid()));
        // No instruction reads an undefined condition code.
        let mut cc = 0;
        for i in &decoded {
            assert!(cc == 0 || !fp::reads_cc(i), "{i} reads undefined C0-C3");
            cc = fp::cc_after(cc, i);
        }
    }

    #[test]
    fn sequences_decode_back() {
        let mut rng = Rng::new(7);
        let codes = candidates(64, Features::GP);
        let (bytes, insns, _) = random_sequence(&mut rng, &codes, 64, 200, 0x10000);
        let mut d = iced_x86::Decoder::with_ip(64, &bytes, 0x10000, iced_x86::DecoderOptions::NONE);
        let mut n = 0;
        while d.can_decode() {
            let i = d.decode();
            assert!(!i.is_invalid());
            // Aliases (reserved-NOP forms and the like) decode as their canonical form.
            let alias = insns[n].code().op_code().is_reserved_nop();
            assert!(
                i.mnemonic() == insns[n].mnemonic() || alias,
                "instruction {n}: {:?} vs {:?}",
                i.code(),
                insns[n].code()
            );
            n += 1;
        }
        assert_eq!(n, insns.len());
        // Same seed, same sequence.
        let mut rng2 = Rng::new(7);
        assert_eq!(
            random_sequence(&mut rng2, &codes, 64, 200, 0x10000).0,
            bytes
        );
    }
}
