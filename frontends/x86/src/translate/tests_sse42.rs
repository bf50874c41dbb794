//! SSE4.2 (the string comparisons, PCMPGTQ, CRC32) and PCLMULQDQ through the
//! translator and the IR interpreter (64-bit mode). Expected values are worked out
//! by hand from the SDM's definitions (next to each check) or are published
//! constants (the CRC-32C check value); `fpu::host_tests` also compares the
//! arithmetic with the host CPU on random operands.

use super::tests::{asm64, End};
use super::tests_sse::{run_with, set_xmm, xmm};
use crate::cpu::X86Cpu;
use iced_x86::code_asm::*;
use vireo_core::cpu::ctl;
use vireo_core::cpu::flags::{AF, CF, OF, PF, SF, ZF};

const ARITH6: u64 = CF | PF | AF | ZF | SF | OF;

/// A string operand: `s` in the low bytes, zero bytes after.
fn s16(s: &[u8]) -> u128 {
    let mut b = [0u8; 16];
    b[..s.len()].copy_from_slice(s);
    u128::from_le_bytes(b)
}

/// A string of words: `s` widened, zero words after.
fn w16(s: &[u8]) -> u128 {
    s.iter()
        .enumerate()
        .fold(0, |v, (i, &c)| v | u128::from(c) << (16 * i))
}

type Asm = fn(&mut CodeAssembler, u32) -> Result<(), IcedError>;

/// Runs one string comparison (`f(imm)`, operands xmm1 and xmm2) after setting every
/// arithmetic flag: (ECX, the six arithmetic flags, XMM0).
fn strcmp(f: Asm, imm: u32, a: u128, b: u128, len1: u64, len2: u64) -> (u64, u64, u128) {
    let code = asm64(|asm| {
        asm.mov(eax, 0x7fff_ffff)?;
        asm.add(eax, 1)?; // OF SF AF PF
        asm.stc()?;
        asm.mov(rax, r8)?; // the lengths, from R8/R9
        asm.mov(rdx, r9)?;
        f(asm, imm)
    });
    let (cpu, end) = run_with(&code, &[], |c| {
        set_xmm(c, 0, 0x5555);
        set_xmm(c, 1, a);
        set_xmm(c, 2, b);
        c.state.gpr[1] = u64::MAX;
        c.state.gpr[8] = len1;
        c.state.gpr[9] = len2;
    });
    assert_eq!(end, End::Halt);
    (cpu.state.gpr[1], cpu.rflags() & ARITH6, xmm(&cpu, 0))
}

const ESTRI: Asm = |a, i| a.pcmpestri(xmm1, xmm2, i);
const ESTRI64: Asm = |a, i| a.pcmpestri64(xmm1, xmm2, i);
const ESTRM: Asm = |a, i| a.pcmpestrm(xmm1, xmm2, i);
const ISTRI: Asm = |a, i| a.pcmpistri(xmm1, xmm2, i);
const ISTRM: Asm = |a, i| a.pcmpistrm(xmm1, xmm2, i);

#[test]
fn equal_any_with_polarity_and_index_selection() {
    // Set "aeiou" (5), text "hello world" (11): vowels at 1, 4, 7 → IntRes1 0x92.
    let (a, b) = (s16(b"aeiou"), s16(b"hello world"));
    let short = ZF | SF; // both strings end inside their registers
    for (imm, index, flags) in [
        (0x00, 1, CF | short),
        (0x40, 7, CF | short), // most significant bit
        // Negative: ~0x92 over 16 bits (0xff6d): bit 0 set.
        (0x10, 0, CF | OF | short),
        (0x50, 15, CF | OF | short),
        // Masked negative: inverted below the text length 11 only: 0x76d.
        (0x30, 0, CF | OF | short),
        (0x70, 10, CF | OF | short),
    ] {
        let (c, f, x0) = strcmp(ISTRI, imm, a, b, 0, 0);
        assert_eq!((c, f), (index, flags), "pcmpistri imm {imm:#x}");
        assert_eq!(x0, 0x5555, "XMM0 untouched");
    }
    // The explicit form with the same lengths agrees.
    assert_eq!(strcmp(ESTRI, 0x00, a, b, 5, 11).0, 1);
    // A shorter explicit text (EDX = 4, "hell") holds only the 'e' at 1.
    assert_eq!(strcmp(ESTRI, 0x40, a, b, 5, 4).0, 1);
    // No match at all: the element count, CF clear.
    let (c, f, _) = strcmp(ISTRI, 0x00, s16(b"xyz"), b, 0, 0);
    assert_eq!((c, f), (16, short));
}

#[test]
fn ranges_signed_and_unsigned() {
    // Ranges a-z and A-Z over "Hi, 9x!": H, i and x (bits 0, 1, 5).
    let (a, b) = (s16(b"azAZ"), s16(b"Hi, 9x!"));
    let (_, f, x0) = strcmp(ISTRM, 0x04, a, b, 0, 0);
    assert_eq!(x0, 0x23);
    assert_eq!(f, CF | ZF | SF | OF);
    // Byte mask: each set bit widened to 0xff.
    let (_, _, x0) = strcmp(ISTRM, 0x44, a, b, 0, 0);
    assert_eq!(x0, 0xffff | 0xff << 40);
    // Signed bytes: the range [-10, 10] holds -5 and 5, not -128 or 20.
    let (a, b) = (s16(&[0xf6, 0x0a]), s16(&[0xfb, 0x80, 0x05, 0x14]));
    assert_eq!(strcmp(ISTRI, 0x06, a, b, 0, 0).0, 0);
    assert_eq!(strcmp(ISTRI, 0x46, a, b, 0, 0).0, 2);
    // Unsigned, [246, 10] is empty: no match, index 16, CF clear.
    let (c, f, _) = strcmp(ISTRI, 0x04, a, b, 0, 0);
    assert_eq!((c, f & CF), (16, 0));
}

#[test]
fn equal_each_with_explicit_lengths() {
    // "abcdef" vs "abXdeZ", both 6 long: IntRes1 = 0xffdb (elements 6-15 are
    // invalid in both: true).
    let (a, b) = (s16(b"abcdef"), s16(b"abXdeZ"));
    let short = ZF | SF;
    for (imm, index, flags) in [
        (0x08, 0, CF | OF | short),
        (0x18, 2, CF | short), // negative: 0x0024
        (0x58, 5, CF | short), // its most significant bit
        (0x38, 2, CF | short), // masked negative: 0xffdb ^ 0x3f = 0xffe4
        (0x78, 15, CF | short),
    ] {
        let (c, f, _) = strcmp(ESTRI, imm, a, b, 6, 6);
        assert_eq!((c, f), (index, flags), "pcmpestri imm {imm:#x}");
    }
    // The mask form writes XMM0: IntRes1 zero-extended.
    let (_, f, x0) = strcmp(ESTRM, 0x08, a, b, 6, 6);
    assert_eq!((x0, f), (0xffdb, CF | OF | short));
    // Lengths are absolute values: EAX = -5, EDX = -6 make element 5 valid in the
    // second operand only (false); negative polarity finds it.
    let neg = |v: i32| u64::from(v as u32);
    let (c, f, _) = strcmp(ESTRI, 0x18, a, b, neg(-5), neg(-6));
    assert_eq!((c, f), (2, CF | short));
    let same = s16(b"abcdeXghijklmnop");
    let other = s16(b"abcdeYghijklmnop");
    assert_eq!(strcmp(ESTRI, 0x18, same, other, neg(-5), neg(-5)).0, 16);
    assert_eq!(strcmp(ESTRI, 0x18, same, other, neg(-5), neg(-6)).0, 5);
    // Saturation at 16: 17 and i32::MIN count as 16 (ZF and SF clear).
    let (c, f, _) = strcmp(ESTRI, 0x18, same, other, 17, neg(i32::MIN));
    assert_eq!((c, f), (5, CF));
}

#[test]
fn rex_w_forms_use_rax_and_rdx() {
    let same = s16(b"abcdeXghijklmnop");
    let other = s16(b"abcdeYghijklmnop");
    // RAX = RDX = 2^32 + 3: 3 as EAX/EDX, saturated to 16 as RAX/RDX.
    let big = (1u64 << 32) + 3;
    let (c, f, _) = strcmp(ESTRI64, 0x18, same, other, big, big);
    assert_eq!((c, f), (5, CF));
    let (c, f, _) = strcmp(ESTRI, 0x18, same, other, big, big);
    assert_eq!((c, f), (16, ZF | SF));
    // RAX = -5 (64-bit) is length 5; i64::MIN saturates to 16.
    let (c, _, _) = strcmp(ESTRI64, 0x18, same, other, (-5i64) as u64, 1 << 63);
    assert_eq!(c, 5);
}

#[test]
fn equal_ordered_finds_substrings() {
    // "lo" in "hello world, lo" (15): at 3 and 13; not at 15 (past the text).
    let (a, b) = (s16(b"lo"), s16(b"hello world, lo"));
    let (c, f, _) = strcmp(ESTRI, 0x0c, a, b, 2, 15);
    assert_eq!((c, f), (3, CF | ZF | SF));
    assert_eq!(strcmp(ESTRI, 0x4c, a, b, 2, 15).0, 13);
    let (_, _, x0) = strcmp(ESTRM, 0x0c, a, b, 2, 15);
    assert_eq!(x0, 1 << 3 | 1 << 13);
    // A prefix at the end of a full register matches (the rest may follow in the
    // next block of text).
    let b = s16(b"xxxxxxxxxxxxxxxl");
    let (c, f, _) = strcmp(ESTRI, 0x0c, a, b, 2, 16);
    assert_eq!((c, f), (15, CF | SF));
    // Words: "lo" in "hello" at 3; 8 elements per register.
    let (c, f, _) = strcmp(ISTRI, 0x0d, w16(b"lo"), w16(b"hello"), 0, 0);
    assert_eq!((c, f), (3, CF | ZF | SF));
    // No word match: index 8.
    assert_eq!(strcmp(ISTRI, 0x0d, w16(b"lx"), w16(b"hello"), 0, 0).0, 8);
}

#[test]
fn string_compares_need_no_alignment() {
    let code = asm64(|a| {
        a.pcmpistri(xmm1, xmmword_ptr(rbx + 1), 0)?;
        a.pcmpestrm(xmm1, xmmword_ptr(rbx + 3), 0)
    });
    let (_, end) = run_with(&code, &[0x41; 32], |_| {});
    assert_eq!(end, End::Halt);
    let code = asm64(|a| a.pcmpistri(xmm1, xmm2, 0));
    let (_, end) = run_with(&code, &[], |c| c.state.cr4 &= !ctl::CR4_OSFXSR);
    assert_eq!(end, End::Fault(6, None));
}

#[test]
fn pcmpgtq_and_pclmulqdq() {
    let code = asm64(|a| {
        a.pcmpgtq(xmm0, xmm1)?;
        a.movdqa(xmm3, xmm2)?;
        a.pclmulqdq(xmm3, xmm2, 0x00)?;
        a.movdqa(xmm4, xmm2)?;
        a.pclmulqdq(xmm4, xmm2, 0x11)?;
        a.movdqa(xmm5, xmm2)?;
        a.pclmulqdq(xmm5, xmmword_ptr(rbx), 0x01)?;
        a.movdqa(xmm6, xmm7)?;
        a.pclmulqdq(xmm6, xmm7, 0x10)?;
        Ok(())
    });
    let m = u64::MAX;
    let data = (u128::from(m) | 3u128 << 64).to_le_bytes();
    let (cpu, end) = run_with(&code, &data, |c| {
        set_xmm(c, 0, 5 | u128::from(1u64 << 63) << 64);
        set_xmm(c, 1, u128::from((-1i64) as u64));
        set_xmm(c, 2, u128::from(m) | 3u128 << 64);
        set_xmm(c, 7, 1u128 << 63 | 1u128 << 127);
    });
    assert_eq!(end, End::Halt);
    // 5 > -1; i64::MIN > 0 is false.
    assert_eq!(xmm(&cpu, 0), u128::from(m));
    // (x^63 + ... + 1)² = x^126 + x^124 + ... + 1 over GF(2).
    assert_eq!(xmm(&cpu, 3), 0x5555_5555_5555_5555_5555_5555_5555_5555);
    // (x + 1)² = x² + 1.
    assert_eq!(xmm(&cpu, 4), 5);
    // High qword of the destination (x + 1) times the low of the source (all ones).
    assert_eq!(xmm(&cpu, 5), 0x1_0000_0000_0000_0001);
    // x^63 · x^63.
    assert_eq!(xmm(&cpu, 6), 1 << 126);
}

fn crc_code() -> Vec<u8> {
    asm64(|a| {
        // Byte by byte from !0, inverted at the end.
        a.mov(eax, 0xffff_ffffu32)?;
        a.xor(ecx, ecx)?;
        let mut top = a.create_label();
        a.set_label(&mut top)?;
        a.crc32(eax, byte_ptr(rbx + rcx))?;
        a.inc(ecx)?;
        a.cmp(ecx, 9)?;
        a.jne(top)?;
        a.not(eax)?;
        // A qword and a byte; the upper half of RDX is not part of the input.
        a.mov(rdx, 0xdead_beef_ffff_ffffu64)?;
        a.crc32(rdx, qword_ptr(rbx))?;
        a.crc32(edx, byte_ptr(rbx + 8))?;
        a.not(edx)?;
        // A dword, a word from memory, a word and a byte from registers.
        a.mov(esi, 0xffff_ffffu32)?;
        a.crc32(esi, dword_ptr(rbx))?;
        a.crc32(esi, word_ptr(rbx + 4))?;
        a.mov(di, word_ptr(rbx + 6))?;
        a.crc32(esi, di)?;
        a.mov(r8b, byte_ptr(rbx + 8))?;
        a.crc32(esi, r8b)?;
        a.not(esi)?;
        // A 64-bit destination is written zero-extended.
        a.mov(r9, u64::MAX)?;
        a.crc32(r9, r8b)?;
        Ok(())
    })
}

#[test]
fn crc32_gives_the_crc32c_check_value() {
    let tweaks: [fn(&mut X86Cpu); 4] = [
        |_| {},
        // CRC32 is a general-purpose instruction: no SSE checks.
        |c| c.state.cr4 &= !ctl::CR4_OSFXSR,
        |c| c.state.cr0 |= ctl::CR0_EM,
        |c| c.state.cr0 |= ctl::CR0_TS,
    ];
    for tweak in tweaks {
        let (cpu, end) = run_with(&crc_code(), b"123456789", tweak);
        assert_eq!(end, End::Halt);
        // CRC-32C("123456789") = 0xE3069283.
        assert_eq!(cpu.state.gpr[0], 0xe306_9283);
        assert_eq!(cpu.state.gpr[2], 0xe306_9283);
        assert_eq!(cpu.state.gpr[6], 0xe306_9283);
        assert_eq!(cpu.state.gpr[9] >> 32, 0);
    }
}

#[test]
fn protected_mode_32_bit_forms() {
    use super::tests::{load, machine, rd, run, CODE, DATA, M};
    let mut a = CodeAssembler::new(32).expect("assembler");
    let code = (|| {
        a.mov(eax, 2)?;
        a.mov(edx, 15)?;
        a.pcmpestri(xmm1, xmmword_ptr(ebx + 3), 0x0c)?; // unaligned, EAX/EDX
        a.mov(esi, ecx)?;
        a.mov(ecx, 0xffff_ffffu32)?;
        a.crc32(ecx, dword_ptr(ebx + 3))?;
        a.pextrd(dword_ptr(ebx + 32), xmm1, 0)?;
        a.hlt()?;
        a.assemble(CODE)
    })()
    .expect("assemble");
    let mut cpu = machine(M::Prot32, &code);
    cpu.state.cr4 |= ctl::CR4_OSFXSR;
    cpu.state.gpr[3] = DATA;
    set_xmm(&mut cpu, 1, s16(b"lo"));
    load(&cpu, DATA + 3, b"hello world, lo");
    assert_eq!(run(&mut cpu, 100), End::Halt);
    assert_eq!(cpu.state.gpr[6], 3);
    // CRC-32C of "hell" from !0 (not inverted): the dword form equals four bytes.
    let want = b"hell".iter().fold(!0u32, |c, &b| {
        crate::helpers::integer::crc32c(c, u64::from(b), 1)
    });
    assert_eq!(cpu.state.gpr[1], u64::from(want));
    assert_eq!(
        rd(&cpu, DATA + 32, 4),
        u64::from(u32::from_le_bytes(*b"lo\0\0"))
    );
}
