//! Encodings of `[base + disp]` operands with the shortest displacement.
//!
//! dynasm-rs encodes a displacement it only knows at run time (an offset into the
//! environment, the temp area or the context) with 32 bits, always. The accesses
//! generated code makes most (guest registers, lazy flags, the instruction counter,
//! temps) have offsets that fit 8 bits once `r12` points near them
//! (`DirectGlobals::hot_offset`), so these forms are encoded here: 3 bytes shorter
//! each, which keeps more of the hot code in the instruction cache.

use super::Asm;
use dynasmrt::DynasmApi;

/// A REX prefix: `w` for 64-bit operands, the high bits of `reg` (ModRM.reg) and
/// `base` (ModRM.rm).
fn rex(ops: &mut Asm, w: bool, reg: u8, base: u8) {
    let b = 0x40 | u8::from(w) << 3 | (reg >> 3 & 1) << 2 | (base >> 3 & 1);
    if b != 0x40 {
        ops.push(b);
    }
}

/// ModRM (with a SIB byte for an `rsp`/`r12` base) and the displacement: none when 0
/// (and the base allows it), 8 bits when it fits, else 32.
fn modrm(ops: &mut Asm, reg: u8, base: u8, disp: i32) {
    let (r, b) = (reg & 7, base & 7);
    let md: u8 = if disp == 0 && b != 5 {
        0
    } else if i8::try_from(disp).is_ok() {
        1
    } else {
        2
    };
    ops.push(md << 6 | r << 3 | b);
    if b == 4 {
        ops.push(0x24);
    }
    match md {
        1 => ops.push(disp as i8 as u8),
        2 => ops.extend(disp.to_le_bytes()),
        _ => {}
    }
}

/// One instruction with a ModRM memory operand: REX (`w`: 64-bit operand), the
/// opcode, then ModRM/SIB/displacement with `reg` (a register or an opcode
/// extension) in ModRM.reg.
fn rm(ops: &mut Asm, w: bool, opcode: u8, reg: u8, base: u8, disp: i32) {
    rex(ops, w, reg, base);
    ops.push(opcode);
    modrm(ops, reg, base, disp);
}

/// `mov dst, QWORD [base + disp]`.
pub(crate) fn load(ops: &mut Asm, dst: u8, base: u8, disp: i32) {
    rm(ops, true, 0x8b, dst, base, disp);
}

/// `mov QWORD [base + disp], src`.
pub(crate) fn store(ops: &mut Asm, base: u8, disp: i32, src: u8) {
    rm(ops, true, 0x89, src, base, disp);
}

/// `mov QWORD [base + disp], imm` (sign-extended).
pub(crate) fn store_imm(ops: &mut Asm, base: u8, disp: i32, imm: i32) {
    rm(ops, true, 0xc7, 0, base, disp);
    ops.extend(imm.to_le_bytes());
}

/// `lea dst, [base + disp]`.
pub(crate) fn lea(ops: &mut Asm, dst: u8, base: u8, disp: i32) {
    lea_sized(ops, true, dst, base, disp);
}

/// `lea dst, [base + disp]` with a 64-bit (`wide`) or 32-bit destination.
pub(crate) fn lea_sized(ops: &mut Asm, wide: bool, dst: u8, base: u8, disp: i32) {
    rm(ops, wide, 0x8d, dst, base, disp);
}

/// `lea dst, [base + index * 2^scale + disp]` (no base: `[index * 2^scale + disp32]`)
/// with a 64-bit (`wide`) or 32-bit destination. `index` must not be `rsp`.
pub(crate) fn lea_index(
    ops: &mut Asm,
    wide: bool,
    dst: u8,
    base: Option<u8>,
    index: u8,
    scale: u8,
    disp: i32,
) {
    debug_assert!(index & 15 != 4 && scale <= 3);
    // REX: W, R (dst), X (index), B (base).
    let b = base.unwrap_or(5);
    let rex =
        0x40 | u8::from(wide) << 3 | (dst >> 3 & 1) << 2 | (index >> 3 & 1) << 1 | (b >> 3 & 1);
    if rex != 0x40 {
        ops.push(rex);
    }
    ops.push(0x8d);
    // No base: mod 00 with SIB base 101 and a 32-bit displacement.
    let md: u8 = match base {
        None => 0,
        Some(_) if disp == 0 && b & 7 != 5 => 0,
        Some(_) if i8::try_from(disp).is_ok() => 1,
        Some(_) => 2,
    };
    ops.push(md << 6 | (dst & 7) << 3 | 4);
    ops.push(scale << 6 | (index & 7) << 3 | (b & 7));
    match (base, md) {
        (None, _) | (_, 2) => ops.extend(disp.to_le_bytes()),
        (_, 1) => ops.push(disp as i8 as u8),
        _ => {}
    }
}

/// An arithmetic operation of the `0x81`/`0x83` group on a memory operand.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Alu {
    Add = 0,
    Sub = 5,
    Cmp = 7,
}

/// `op QWORD [base + disp], imm` (sign-extended; 8 bits when it fits).
pub(crate) fn alu_imm(ops: &mut Asm, op: Alu, base: u8, disp: i32, imm: i32) {
    match i8::try_from(imm) {
        Ok(k) => {
            rm(ops, true, 0x83, op as u8, base, disp);
            ops.push(k as u8);
        }
        Err(_) => {
            rm(ops, true, 0x81, op as u8, base, disp);
            ops.extend(imm.to_le_bytes());
        }
    }
}

/// `cmp reg, imm` (64-bit if `wide`, else 32), the immediate sign-extended from 8
/// bits.
pub(crate) fn cmp_reg_imm8(ops: &mut Asm, wide: bool, reg: u8, imm: i8) {
    rex(ops, wide, 0, reg);
    ops.push(0x83);
    ops.push(0xc0 | 7 << 3 | (reg & 7));
    ops.push(imm as u8);
}

/// `call QWORD [base + disp]`.
pub(crate) fn call_mem(ops: &mut Asm, base: u8, disp: i32) {
    rm(ops, false, 0xff, 2, base, disp);
}

/// `jmp QWORD [base + disp]`.
pub(crate) fn jmp_mem(ops: &mut Asm, base: u8, disp: i32) {
    rm(ops, false, 0xff, 4, base, disp);
}

/// `cmp reg, QWORD [base + disp]`.
pub(crate) fn cmp_load(ops: &mut Asm, reg: u8, base: u8, disp: i32) {
    rm(ops, true, 0x3b, reg, base, disp);
}

/// `cmp BYTE [base + disp], imm`.
pub(crate) fn cmp_byte(ops: &mut Asm, base: u8, disp: i32, imm: u8) {
    rm(ops, false, 0x80, 7, base, disp);
    ops.push(imm);
}

#[cfg(test)]
mod tests {
    use super::*;
    use dynasmrt::x64::X64Relocation;
    use dynasmrt::VecAssembler;
    use iced_x86::{Decoder, DecoderOptions, Instruction, Mnemonic, OpKind, Register};

    const GPR: [Register; 16] = [
        Register::RAX,
        Register::RCX,
        Register::RDX,
        Register::RBX,
        Register::RSP,
        Register::RBP,
        Register::RSI,
        Register::RDI,
        Register::R8,
        Register::R9,
        Register::R10,
        Register::R11,
        Register::R12,
        Register::R13,
        Register::R14,
        Register::R15,
    ];

    const GPR32: [Register; 16] = [
        Register::EAX,
        Register::ECX,
        Register::EDX,
        Register::EBX,
        Register::ESP,
        Register::EBP,
        Register::ESI,
        Register::EDI,
        Register::R8D,
        Register::R9D,
        Register::R10D,
        Register::R11D,
        Register::R12D,
        Register::R13D,
        Register::R14D,
        Register::R15D,
    ];

    fn one(f: impl FnOnce(&mut Asm)) -> (Instruction, usize) {
        let mut ops: Asm = VecAssembler::<X64Relocation>::new(0);
        f(&mut ops);
        let code = ops.finalize().expect("assembles");
        let mut d = Decoder::new(64, &code, DecoderOptions::NONE);
        let i = d.decode();
        assert_eq!(i.len(), code.len(), "one instruction: {code:02x?}");
        (i, code.len())
    }

    fn check_mem(i: &Instruction, k: usize, base: u8, disp: i32) {
        assert_eq!(i.op_kind(k as u32), OpKind::Memory, "{i}");
        assert_eq!(i.memory_base(), GPR[base as usize], "{i}");
        assert_eq!(i.memory_index(), Register::None, "{i}");
        assert_eq!(i.memory_displacement64() as i64, i64::from(disp), "{i}");
    }

    const DISPS: [i32; 9] = [0, 1, -1, 127, -128, 128, -129, 0x6850, -0x4000_0000];

    /// Indexed `lea`: every destination, base (or none), index (not `rsp`), scale
    /// and displacement class decodes to what was asked.
    #[test]
    fn indexed_lea_decodes_to_what_was_asked() {
        for wide in [false, true] {
            for dst in 0..16u8 {
                for base in (0..17u8).map(|b| (b < 16).then_some(b)) {
                    for index in (0..16u8).filter(|&x| x != 4) {
                        for scale in 0..4u8 {
                            for disp in DISPS {
                                let (i, _) =
                                    one(|o| lea_index(o, wide, dst, base, index, scale, disp));
                                assert_eq!(i.mnemonic(), Mnemonic::Lea, "{i}");
                                let want = if wide {
                                    GPR[dst as usize]
                                } else {
                                    GPR32[dst as usize]
                                };
                                assert_eq!(i.op0_register(), want, "{i}");
                                assert_eq!(
                                    i.memory_base(),
                                    base.map_or(Register::None, |b| GPR[b as usize]),
                                    "{i}"
                                );
                                assert_eq!(i.memory_index(), GPR[index as usize], "{i}");
                                assert_eq!(i.memory_index_scale(), 1 << scale, "{i}");
                                assert_eq!(
                                    i.memory_displacement64() as i64,
                                    i64::from(disp),
                                    "{i}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    /// Every base register, every displacement class and every register: what the
    /// decoder reads back is what was asked, in the fewest bytes.
    #[test]
    fn encodings_decode_to_what_was_asked() {
        for base in 0..16u8 {
            for disp in DISPS {
                let short = if disp == 0 && base & 7 != 5 {
                    0
                } else if i8::try_from(disp).is_ok() {
                    1
                } else {
                    4
                };
                let sib = usize::from(base & 7 == 4);
                // (encoder, mnemonic, the register's operand, its width: 64?)
                type Form = (fn(&mut Asm, u8, u8, i32), Mnemonic, u32, bool);
                let forms: [Form; 5] = [
                    (|o, r, b, d| load(o, r, b, d), Mnemonic::Mov, 0, true),
                    (|o, r, b, d| store(o, b, d, r), Mnemonic::Mov, 1, true),
                    (|o, r, b, d| lea(o, r, b, d), Mnemonic::Lea, 0, true),
                    (
                        |o, r, b, d| lea_sized(o, false, r, b, d),
                        Mnemonic::Lea,
                        0,
                        false,
                    ),
                    (|o, r, b, d| cmp_load(o, r, b, d), Mnemonic::Cmp, 0, true),
                ];
                for reg in 0..16u8 {
                    for (k, (f, m, at, wide)) in forms.iter().enumerate() {
                        let (i, n) = one(|o| f(o, reg, base, disp));
                        assert_eq!(i.mnemonic(), *m, "{i}");
                        let regs = if *wide { GPR } else { GPR32 };
                        assert_eq!(i.op_register(*at), regs[reg as usize], "{i}");
                        check_mem(&i, 1 - *at as usize, base, disp);
                        if k == 0 {
                            assert_eq!(n, 3 + sib + short, "{i}");
                        }
                    }
                }
                for imm in [0i8, 1, -1, 127, -128] {
                    for wide in [false, true] {
                        let (i, n) = one(|o| cmp_reg_imm8(o, wide, base, imm));
                        assert_eq!(i.mnemonic(), Mnemonic::Cmp);
                        let r = if wide { GPR } else { GPR32 };
                        assert_eq!(i.op0_register(), r[base as usize], "{i}");
                        assert_eq!(i.immediate(1) as i64 as i8, imm, "{i}");
                        assert_eq!(n, 3 + usize::from(wide || base >= 8), "{i}");
                    }
                }
                for imm in [0, 1, -1, 127, -128, 128, 0x1234_5678, i32::MIN] {
                    let (i, _) = one(|o| store_imm(o, base, disp, imm));
                    assert_eq!(i.mnemonic(), Mnemonic::Mov);
                    assert_eq!(i.memory_size(), iced_x86::MemorySize::UInt64, "{i}");
                    check_mem(&i, 0, base, disp);
                    assert_eq!(i.immediate(1) as i64, i64::from(imm), "{i}");
                    for (op, m) in [
                        (Alu::Add, Mnemonic::Add),
                        (Alu::Sub, Mnemonic::Sub),
                        (Alu::Cmp, Mnemonic::Cmp),
                    ] {
                        let (i, n) = one(|o| alu_imm(o, op, base, disp, imm));
                        assert_eq!(i.mnemonic(), m, "{i}");
                        assert_eq!(i.memory_size(), iced_x86::MemorySize::UInt64, "{i}");
                        check_mem(&i, 0, base, disp);
                        assert_eq!(i.immediate(1) as i64, i64::from(imm), "{i}");
                        let ib = if i8::try_from(imm).is_ok() { 1 } else { 4 };
                        assert_eq!(n, 3 + sib + short + ib, "{i}");
                    }
                }
                for imm in [0u8, 1, 0xff] {
                    let (i, _) = one(|o| cmp_byte(o, base, disp, imm));
                    assert_eq!(i.mnemonic(), Mnemonic::Cmp);
                    assert_eq!(i.memory_size(), iced_x86::MemorySize::UInt8, "{i}");
                    check_mem(&i, 0, base, disp);
                    assert_eq!(i.immediate(1) as u8, imm, "{i}");
                }
                let (i, _) = one(|o| call_mem(o, base, disp));
                assert_eq!(i.mnemonic(), Mnemonic::Call);
                check_mem(&i, 0, base, disp);
                let (i, _) = one(|o| jmp_mem(o, base, disp));
                assert_eq!(i.mnemonic(), Mnemonic::Jmp);
                check_mem(&i, 0, base, disp);
            }
        }
    }
}

#[cfg(test)]
mod byte_register_tests {
    use super::super::Asm;
    use dynasmrt::{dynasm, DynasmApi};
    use iced_x86::{Decoder, DecoderOptions, Register};

    /// dynasm's dynamic byte registers name SPL/BPL/SIL/DIL for 4 to 7 (not AH to
    /// BH), so any allocatable register (RBP among them) works in byte forms.
    #[test]
    fn dynamic_byte_registers_4_to_7_are_the_low_bytes() {
        // iced numbers AL, CL, DL, BL, AH, CH, DH, BH, SPL ... DIL, R8L ... R15L.
        let low = |r: u8| {
            let at = match r {
                0..=3 => Register::AL as usize + usize::from(r),
                _ => Register::SPL as usize + usize::from(r - 4),
            };
            Register::try_from(at).expect("a byte register")
        };
        for r in 0..16u8 {
            let mut ops = Asm::new(0);
            dynasm!(ops
                ; .arch x64
                ; movzx eax, Rb(r)
                ; cmp Rb(r), al
                ; mov BYTE [rax + rcx], Rb(r)
                ; setb Rb(r)
                ; test Rb(r), Rb(r)
            );
            let code = ops.finalize().expect("assembles");
            let mut d = Decoder::with_ip(64, &code, 0, DecoderOptions::NONE);
            for (i, at) in [(0usize, 1u32), (1, 0), (2, 1), (3, 0), (4, 0)] {
                let insn = d.decode();
                assert_eq!(insn.op_register(at), low(r), "form {i}: {insn}");
            }
        }
    }
}
