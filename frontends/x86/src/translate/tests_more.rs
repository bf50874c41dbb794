//! More translator tests: mul/div, strings, BCD, bit ops, CMPXCHG*, stack frames,
//! 16-bit specifics (IP wrap, 67h, segment overrides), LOCK, and a no-panic fuzz.

use super::tests::{exec, machine, rd, run, End, CODE, M};
use super::translate_block;
use vireo_core::cpu::flags::{AF, CF, DF, OF, ZF};
use vireo_core::cpu::sreg;

#[test]
fn mul_imul_div_idiv_and_divide_errors() {
    // mul rbx (48 F7 E3): rdx:rax = rax * rbx.
    let (c, e) = exec(M::Long64, &[0x48, 0xf7, 0xe3], &[(0, u64::MAX), (3, 3)], 0);
    assert_eq!(e, End::Halt);
    let p = u128::from(u64::MAX) * 3;
    assert_eq!(
        (c.state.gpr[0], c.state.gpr[2]),
        (p as u64, (p >> 64) as u64)
    );
    assert_eq!(c.rflags() & (CF | OF), CF | OF);
    // imul ebx (F7 EB) with -2 * 3: fits, CF = OF = 0; upper halves cleared.
    let (c, _) = exec(
        M::Long64,
        &[0xf7, 0xeb],
        &[(0, 0xffff_fffe), (3, 3), (2, 7 << 32)],
        0,
    );
    assert_eq!((c.state.gpr[0], c.state.gpr[2]), (0xffff_fffa, 0xffff_ffff));
    assert_eq!(c.rflags() & (CF | OF), 0);
    // mul bl (F6 E3): ax = al * bl.
    let (c, _) = exec(M::Long64, &[0xf6, 0xe3], &[(0, 0x1234_0080), (3, 4)], 0);
    assert_eq!(c.state.gpr[0], 0x1234_0200);
    assert_eq!(c.rflags() & CF, CF);
    // imul cx, dx, 0x7f (66 6B CA 7F) overflows 16 bits.
    let (c, _) = exec(M::Long64, &[0x66, 0x6b, 0xca, 0x7f], &[(2, 0x1000)], 0);
    assert_eq!(
        c.state.gpr[1] & 0xffff,
        0x1000u64.wrapping_mul(0x7f) & 0xffff
    );
    assert_eq!(c.rflags() & (CF | OF), CF | OF);
    // imul rax, rbx (48 0F AF C3).
    let (c, _) = exec(
        M::Long64,
        &[0x48, 0x0f, 0xaf, 0xc3],
        &[(0, (-5i64) as u64), (3, 7)],
        0,
    );
    assert_eq!(c.state.gpr[0], (-35i64) as u64);
    // div rbx: 128-bit dividend.
    let (c, e) = exec(M::Long64, &[0x48, 0xf7, 0xf3], &[(2, 1), (0, 5), (3, 2)], 0);
    assert_eq!(e, End::Halt);
    let n = (1u128 << 64) + 5;
    assert_eq!(
        (c.state.gpr[0], c.state.gpr[2]),
        ((n / 2) as u64, (n % 2) as u64)
    );
    // idiv ecx: -7 / 2 = -3 rem -1.
    let (c, _) = exec(
        M::Long64,
        &[0xf7, 0xf9],
        &[(0, 0xffff_fff9), (2, 0xffff_ffff), (1, 2)],
        0,
    );
    assert_eq!((c.state.gpr[0], c.state.gpr[2]), (0xffff_fffd, 0xffff_ffff));
    // div bl: ax / bl.
    let (c, _) = exec(M::Real, &[0xf6, 0xf3], &[(0, 1000), (3, 7)], 0);
    assert_eq!(c.state.gpr[0] & 0xffff, ((1000 % 7) << 8) | (1000 / 7));
    // #DE: divide by zero, quotient overflow (unsigned and signed), PC on the insn.
    for (code, regs) in [
        (vec![0xf7, 0xf3], vec![(0, 1), (3, 0)]),
        (vec![0xf6, 0xf3], vec![(0, 0x1000), (3, 2)]),
        (
            vec![0xf7, 0xfb],
            vec![(0, 0x8000_0000), (2, 0xffff_ffff), (3, 0xffff_ffff)],
        ),
        (vec![0x48, 0xf7, 0xfb], vec![(0, 0), (2, 1), (3, 1)]),
    ] {
        let (c, e) = exec(M::Long64, &code, &regs, 0);
        assert_eq!(e, End::Fault(0, None), "{code:x?}");
        assert_eq!(c.state.rip, CODE);
        assert_eq!(c.state.gpr[0], regs[0].1, "registers untouched");
    }
}

#[test]
fn rep_strings_with_df_and_address_size() {
    // 32-bit: rep movsb forward, 5 bytes from 0x3000 to 0x4000.
    let mut cpu = machine(M::Prot32, &[0xf3, 0xa4, 0xf4]);
    super::tests::load(&cpu, 0x3000, b"hello");
    cpu.state.gpr[6] = 0x3000;
    cpu.state.gpr[7] = 0x4000;
    cpu.state.gpr[1] = 5;
    assert_eq!(run(&mut cpu, 100), End::Halt);
    assert_eq!(rd(&cpu, 0x4000, 5), rd(&cpu, 0x3000, 5));
    assert_eq!(
        (cpu.state.gpr[1], cpu.state.gpr[6], cpu.state.gpr[7]),
        (0, 0x3005, 0x4005)
    );
    // std; rep stosw backwards, 3 words ending at 0x5004.
    let mut cpu = machine(M::Prot32, &[0xfd, 0x66, 0xf3, 0xab, 0xf4]);
    cpu.state.gpr[0] = 0xabcd;
    cpu.state.gpr[7] = 0x5004;
    cpu.state.gpr[1] = 3;
    assert_eq!(run(&mut cpu, 100), End::Halt);
    assert_eq!(rd(&cpu, 0x5000, 6), 0xabcd_abcd_abcd);
    assert_eq!(cpu.state.gpr[7], 0x4ffe);
    assert_ne!(cpu.rflags() & DF, 0);
    // repe cmpsb stops at the first difference.
    let mut cpu = machine(M::Prot32, &[0xf3, 0xa6, 0xf4]);
    super::tests::load(&cpu, 0x3000, b"abcXe");
    super::tests::load(&cpu, 0x4000, b"abcde");
    cpu.state.gpr[6] = 0x3000;
    cpu.state.gpr[7] = 0x4000;
    cpu.state.gpr[1] = 5;
    assert_eq!(run(&mut cpu, 100), End::Halt);
    assert_eq!(cpu.state.gpr[1], 1);
    assert_eq!(cpu.state.gpr[6], 0x3004);
    assert_eq!(cpu.rflags() & ZF, 0);
    // repne scasb finds the byte.
    let mut cpu = machine(M::Prot32, &[0xf2, 0xae, 0xf4]);
    super::tests::load(&cpu, 0x4000, b"xyz\0");
    cpu.state.gpr[0] = 0;
    cpu.state.gpr[7] = 0x4000;
    cpu.state.gpr[1] = 100;
    assert_eq!(run(&mut cpu, 100), End::Halt);
    assert_eq!((cpu.state.gpr[1], cpu.state.gpr[7]), (96, 0x4004));
    assert_ne!(cpu.rflags() & ZF, 0);
    // 67h in 32-bit code: SI/DI/CX are 16 bits wide (upper halves kept).
    let mut cpu = machine(M::Prot32, &[0x67, 0xf3, 0xa4, 0xf4]);
    cpu.state.gpr[6] = 0xdead_fffe;
    cpu.state.gpr[7] = 0xbeef_1000;
    cpu.state.gpr[1] = 0x7777_0003;
    assert_eq!(run(&mut cpu, 100), End::Halt);
    assert_eq!(cpu.state.gpr[6], 0xdead_0001);
    assert_eq!(cpu.state.gpr[7], 0xbeef_1003);
    assert_eq!(cpu.state.gpr[1], 0x7777_0000);
    // A long REP runs over several block executions.
    let mut cpu = machine(M::Long64, &[0xf3, 0x48, 0xab, 0xf4]);
    cpu.state.gpr[7] = 0x10_0000;
    cpu.state.gpr[1] = 10_000;
    cpu.state.gpr[0] = 0x1122_3344_5566_7788;
    assert_eq!(run(&mut cpu, 100), End::Halt);
    assert_eq!(rd(&cpu, 0x10_0000 + 8 * 9_999, 8), 0x1122_3344_5566_7788);
    assert_eq!(cpu.state.gpr[7], 0x10_0000 + 80_000);
}

#[test]
fn bcd_adjustments() {
    // add al, bl; daa: 0x15 + 0x27 = 0x42.
    let (c, _) = exec(M::Real, &[0x00, 0xd8, 0x27], &[(0, 0x15), (3, 0x27)], 0);
    assert_eq!(c.state.gpr[0] & 0xff, 0x42);
    // sub al, bl; das: 0x42 - 0x27 = 0x15.
    let (c, _) = exec(M::Real, &[0x28, 0xd8, 0x2f], &[(0, 0x42), (3, 0x27)], 0);
    assert_eq!(c.state.gpr[0] & 0xff, 0x15);
    // 0x99 + 0x01 = 0x00 with CF.
    let (c, _) = exec(M::Real, &[0x00, 0xd8, 0x27], &[(0, 0x99), (3, 0x01)], 0);
    assert_eq!(c.state.gpr[0] & 0xff, 0);
    assert_ne!(c.rflags() & CF, 0);
    // aaa: AX = 0x000F -> 0x0105; aas: 0x0205 - ...
    let (c, _) = exec(M::Real, &[0x37], &[(0, 0x000f)], 0);
    assert_eq!(c.state.gpr[0] & 0xffff, 0x0105);
    assert_eq!(c.rflags() & (CF | AF), CF | AF);
    let (c, _) = exec(M::Real, &[0x3f], &[(0, 0x020f)], 0);
    assert_eq!(c.state.gpr[0] & 0xffff, 0x0109);
    // aam: 63 -> AH 6, AL 3; aad: 0x0603 -> 63; aam 0 -> #DE.
    let (c, _) = exec(M::Real, &[0xd4, 0x0a], &[(0, 63)], 0);
    assert_eq!(c.state.gpr[0] & 0xffff, 0x0603);
    let (c, _) = exec(M::Real, &[0xd5, 0x0a], &[(0, 0x0603)], 0);
    assert_eq!(c.state.gpr[0] & 0xffff, 63);
    let (_, e) = exec(M::Real, &[0xd4, 0x00], &[], 0);
    assert_eq!(e, End::Fault(0, None));
    // #UD in 64-bit mode.
    let (_, e) = exec(M::Long64, &[0x27], &[], 0);
    assert_eq!(e, End::Fault(6, None));
}

#[test]
fn bit_test_forms() {
    // bts dword [0x2000], eax with eax = 35: sets bit 3 of the dword at 0x2004.
    let code = [0x0f, 0xab, 0x05, 0x00, 0x20, 0x00, 0x00];
    let (c, _) = exec(M::Prot32, &code, &[(0, 35)], 0);
    assert_eq!(rd(&c, 0x2004, 4), 8);
    assert_eq!(c.rflags() & CF, 0);
    // Negative offset: btc [0x2000], -1 flips bit 31 of the dword at 0x1ffc.
    let (c, _) = exec(
        M::Prot32,
        &[0x0f, 0xbb, 0x05, 0x00, 0x20, 0x00, 0x00],
        &[(0, u64::from(u32::MAX))],
        0,
    );
    assert_eq!(rd(&c, 0x1ffc, 4), 0x8000_0000);
    // bt reg, imm masks the offset; ZF preserved.
    let (c, _) = exec(M::Long64, &[0x48, 0x0f, 0xba, 0xe3, 0x41], &[(3, 2)], ZF);
    assert_eq!(c.rflags() & (CF | ZF), CF | ZF);
    // btr rbx, rax register form.
    let (c, _) = exec(
        M::Long64,
        &[0x48, 0x0f, 0xb3, 0xc3],
        &[(3, 0xff), (0, 64 + 2)],
        0,
    );
    assert_eq!(c.state.gpr[3], 0xfb);
    // bsf/bsr/tzcnt/lzcnt/popcnt.
    let (c, _) = exec(M::Long64, &[0x0f, 0xbc, 0xc3], &[(3, 0x50), (0, 7)], 0);
    assert_eq!(c.state.gpr[0], 4);
    let (c, _) = exec(M::Long64, &[0x0f, 0xbd, 0xc3], &[(3, 0), (0, 7)], 0);
    assert_eq!((c.state.gpr[0], c.rflags() & ZF), (7, ZF));
    let (c, _) = exec(M::Long64, &[0xf3, 0x0f, 0xbc, 0xc3], &[(3, 0)], 0);
    assert_eq!((c.state.gpr[0], c.rflags() & CF), (32, CF));
    let (c, _) = exec(M::Long64, &[0xf3, 0x48, 0x0f, 0xbd, 0xc3], &[(3, 1)], 0);
    assert_eq!(c.state.gpr[0], 63);
    let (c, _) = exec(
        M::Long64,
        &[0xf3, 0x48, 0x0f, 0xb8, 0xc3],
        &[(3, 0xf0f0)],
        0,
    );
    assert_eq!((c.state.gpr[0], c.rflags() & ZF), (8, 0));
}

#[test]
fn cmpxchg_family() {
    // cmpxchg [0x2000], ebx: equal -> store ebx, ZF.
    let code = [0x0f, 0xb1, 0x1d, 0x00, 0x20, 0x00, 0x00];
    let mut cpu = machine(M::Prot32, &[&code[..], &[0xf4]].concat());
    super::tests::load(&cpu, 0x2000, &5u32.to_le_bytes());
    cpu.state.gpr[0] = 5;
    cpu.state.gpr[3] = 9;
    assert_eq!(run(&mut cpu, 10), End::Halt);
    assert_eq!((rd(&cpu, 0x2000, 4), cpu.rflags() & ZF), (9, ZF));
    // Not equal -> eax = memory.
    cpu.state.rip = CODE;
    cpu.state.gpr[0] = 1;
    assert_eq!(run(&mut cpu, 10), End::Halt);
    assert_eq!((cpu.state.gpr[0], cpu.rflags() & ZF), (9, 0));
    // cmpxchg8b [0x2000].
    let mut cpu = machine(M::Prot32, &[0x0f, 0xc7, 0x0d, 0x00, 0x20, 0x00, 0x00, 0xf4]);
    super::tests::load(&cpu, 0x2000, &0x1111_2222_3333_4444u64.to_le_bytes());
    cpu.state.gpr[2] = 0x1111_2222;
    cpu.state.gpr[0] = 0x3333_4444;
    cpu.state.gpr[1] = 0xaaaa_bbbb;
    cpu.state.gpr[3] = 0xcccc_dddd;
    assert_eq!(run(&mut cpu, 10), End::Halt);
    assert_eq!(rd(&cpu, 0x2000, 8), 0xaaaa_bbbb_cccc_dddd);
    assert_ne!(cpu.rflags() & ZF, 0);
    // cmpxchg16b [rsi]: misaligned -> #GP(0); aligned and unequal loads rdx:rax.
    let (_, e) = exec(M::Long64, &[0x48, 0x0f, 0xc7, 0x0e], &[(6, 0x2008)], 0);
    assert_eq!(e, End::Fault(13, Some(0)));
    let (c, e) = exec(
        M::Long64,
        &[0x48, 0x0f, 0xc7, 0x0e],
        &[(6, 0x2010), (0, 1)],
        ZF,
    );
    assert_eq!(e, End::Halt);
    assert_eq!((c.state.gpr[0], c.state.gpr[2], c.rflags() & ZF), (0, 0, 0));
    // xadd.
    let (c, _) = exec(M::Long64, &[0x48, 0x0f, 0xc1, 0xc3], &[(3, 10), (0, 5)], 0);
    assert_eq!((c.state.gpr[3], c.state.gpr[0]), (15, 10));
}

#[test]
fn stack_frames_and_push_pop_forms() {
    // enter 8, 2 in 32-bit code: pushes ebp, one outer frame pointer, the new frame.
    let mut cpu = machine(M::Prot32, &[0xc8, 0x08, 0x00, 0x02, 0xc9, 0xf4]);
    cpu.state.gpr[5] = 0x7000;
    super::tests::load(&cpu, 0x6ffc, &0x1234u32.to_le_bytes());
    // Run just ENTER: step one instruction.
    let b = translate_block(&mut cpu, 1).expect("translate");
    let p = vireo_interp::Prepared::new(b);
    vireo_interp::Interp::new().run(&p, &mut cpu);
    assert_eq!(cpu.state.gpr[5], 0x7ffc);
    assert_eq!(rd(&cpu, 0x7ffc, 4), 0x7000);
    assert_eq!(rd(&cpu, 0x7ff8, 4), 0x1234);
    assert_eq!(rd(&cpu, 0x7ff4, 4), 0x7ffc);
    assert_eq!(cpu.state.gpr[4], 0x7ff4 - 8);
    // leave restores.
    assert_eq!(run(&mut cpu, 10), End::Halt);
    assert_eq!((cpu.state.gpr[4], cpu.state.gpr[5]), (0x8000, 0x7000));
    // pusha/popa round trip with push sp semantics; popa skips sp.
    let regs: Vec<(usize, u64)> = (0..8)
        .filter(|&r| r != 4)
        .map(|r| (r, 0x100 + r as u64))
        .collect();
    let (c, _) = exec(M::Prot32, &[0x60, 0x31, 0xc0, 0x61], &regs, 0);
    for &(r, v) in &regs {
        assert_eq!(c.state.gpr[r], v);
    }
    assert_eq!(c.state.gpr[4], 0x8000);
    assert_eq!(rd(&c, 0x8000 - 20, 4), 0x8000);
    // push rsp pushes the old value; pop qword [rsp] uses the incremented rsp.
    let (c, _) = exec(M::Long64, &[0x54, 0x8f, 0x04, 0x24], &[], 0);
    assert_eq!(c.state.gpr[4], 0x8000);
    assert_eq!(rd(&c, 0x8000, 8), 0x8000);
    // 66 push imm16 in 64-bit mode: rsp -= 2.
    let (c, _) = exec(M::Long64, &[0x66, 0x68, 0x34, 0x12], &[], 0);
    assert_eq!((c.state.gpr[4], rd(&c, 0x7ffe, 2)), (0x7ffe, 0x1234));
    // call/ret near.
    let (c, e) = exec(
        M::Long64,
        &[0xe8, 0x01, 0x00, 0x00, 0x00, 0xf4, 0x48, 0xff, 0xc0, 0xc3],
        &[],
        0,
    );
    assert_eq!(e, End::Halt);
    assert_eq!((c.state.gpr[0], c.state.rip), (1, CODE + 6));
}

#[test]
fn real_mode_specifics() {
    // IP wraps at 16 bits: nop at 0xFFFF, then hlt at 0.
    let mut cpu = machine(M::Real, &[]);
    super::tests::load(&cpu, 0xffff, &[0x90]);
    super::tests::load(&cpu, 0, &[0xf4]);
    cpu.state.rip = 0xffff;
    assert_eq!(run(&mut cpu, 10), End::Halt);
    assert_eq!(cpu.state.rip, 1);
    // Segment override: mov al, es:[bx]; ds default.
    let mut cpu = machine(M::Real, &[0x26, 0x8a, 0x07, 0x8a, 0x27, 0xf4]);
    cpu.state.seg[0] = vireo_core::cpu::Segment::real_mode(0x200, false);
    super::tests::load(&cpu, 0x2010, &[0xaa]);
    super::tests::load(&cpu, 0x10, &[0xbb]);
    cpu.state.gpr[3] = 0x10;
    assert_eq!(run(&mut cpu, 10), End::Halt);
    assert_eq!(cpu.state.gpr[0] & 0xffff, 0xbbaa);
    // 67h in real mode: 32-bit EA; beyond 0xFFFF -> #GP(0).
    let (_, e) = exec(M::Real, &[0x67, 0x8b, 0x03], &[(3, 0x1_0000)], 0);
    assert_eq!(e, End::Fault(13, Some(0)));
    // Word at offset 0xFFFF -> #GP; via BP -> #SS.
    let (_, e) = exec(M::Real, &[0x8b, 0x07], &[(3, 0xffff)], 0);
    assert_eq!(e, End::Fault(13, Some(0)));
    let (_, e) = exec(M::Real, &[0x8b, 0x46, 0x00], &[(5, 0xffff)], 0);
    assert_eq!(e, End::Fault(12, Some(0)));
    // mov ds, ax then lds: segment bases follow.
    let code = [0x8e, 0xd8, 0xc5, 0x36, 0x00, 0x01, 0xf4];
    let mut cpu = machine(M::Real, &code);
    cpu.state.gpr[0] = 0x300;
    super::tests::load(&cpu, 0x3100, &[0x34, 0x12, 0x00, 0x05]);
    assert_eq!(run(&mut cpu, 10), End::Halt);
    assert_eq!(cpu.state.gpr[6] & 0xffff, 0x1234);
    assert_eq!(
        (cpu.state.seg[3].selector, cpu.state.seg[3].base),
        (0x500, 0x5000)
    );
    // Far jmp in real mode.
    let mut cpu = machine(M::Real, &[0xea, 0x05, 0x00, 0x00, 0x02]);
    super::tests::load(&cpu, 0x2005, &[0xf4]);
    assert_eq!(run(&mut cpu, 10), End::Halt);
    assert_eq!((cpu.state.seg[1].selector, cpu.state.rip), (0x200, 6));
}

#[test]
fn lock_prefix_rules() {
    // lock add eax, ebx: #UD; lock add [rbx], eax: fine; lock mov: #UD.
    let (_, e) = exec(M::Long64, &[0xf0, 0x01, 0xd8], &[], 0);
    assert_eq!(e, End::Fault(6, None));
    let (c, e) = exec(M::Long64, &[0xf0, 0x01, 0x03], &[(3, 0x2000), (0, 7)], 0);
    assert_eq!(e, End::Halt);
    assert_eq!(rd(&c, 0x2000, 4), 7);
    let (_, e) = exec(M::Long64, &[0xf0, 0x89, 0x03], &[(3, 0x2000)], 0);
    assert_eq!(e, End::Fault(6, None));
    // ud2, and a non-canonical address -> #GP(0).
    let (_, e) = exec(M::Long64, &[0x0f, 0x0b], &[], 0);
    assert_eq!(e, End::Fault(6, None));
    let (_, e) = exec(M::Long64, &[0x8b, 0x03], &[(3, 0x8000_0000_0000_0000)], 0);
    assert_eq!(e, End::Fault(13, Some(0)));
}

#[test]
fn misc_moves_and_flags() {
    // movsx / movzx / movsxd / cdqe / cqo / bswap / lahf / sahf / xlat / setcc.
    let (c, _) = exec(M::Long64, &[0x48, 0x0f, 0xbe, 0xc3], &[(3, 0x80)], 0);
    assert_eq!(c.state.gpr[0], 0xffff_ffff_ffff_ff80);
    let (c, _) = exec(
        M::Long64,
        &[0x0f, 0xb7, 0xc3],
        &[(3, 0x1_8001), (0, u64::MAX)],
        0,
    );
    assert_eq!(c.state.gpr[0], 0x8001);
    let (c, _) = exec(M::Long64, &[0x48, 0x63, 0xc3], &[(3, 0x8000_0000)], 0);
    assert_eq!(c.state.gpr[0], 0xffff_ffff_8000_0000);
    let (c, _) = exec(M::Long64, &[0x48, 0x99], &[(0, 1 << 63)], 0);
    assert_eq!(c.state.gpr[2], u64::MAX);
    let (c, _) = exec(M::Long64, &[0x0f, 0xcb], &[(3, 0x1122_3344)], 0);
    assert_eq!(c.state.gpr[3], 0x4433_2211);
    let (c, _) = exec(M::Long64, &[0x9f], &[], CF | ZF | OF);
    assert_eq!((c.state.gpr[0] >> 8) & 0xff, 0x43);
    let (c, _) = exec(M::Long64, &[0x9e], &[(0, 0xd500)], OF);
    assert_eq!(c.rflags() & 0xfff, 0xd5 | 2 | OF);
    let mut cpu = machine(M::Prot32, &[0xd7, 0xf4]);
    super::tests::load(&cpu, 0x2005, &[0x77]);
    cpu.state.gpr[3] = 0x2000;
    cpu.state.gpr[0] = 5;
    assert_eq!(run(&mut cpu, 10), End::Halt);
    assert_eq!(cpu.state.gpr[0], 0x77);
    // lea with 67h in 64-bit mode truncates to 32 bits.
    let (c, _) = exec(
        M::Long64,
        &[0x67, 0x48, 0x8d, 0x43, 0x01],
        &[(3, 0xffff_ffff)],
        0,
    );
    assert_eq!(c.state.gpr[0], 0);
    // loop with ecx.
    let (c, _) = exec(M::Prot32, &[0x40, 0xe2, 0xfd], &[(1, 5)], 0);
    assert_eq!((c.state.gpr[0], c.state.gpr[1]), (5, 0));
    // cmovz both ways; 32-bit cmov zero-extends.
    let (c, _) = exec(M::Long64, &[0x0f, 0x44, 0xc3], &[(0, u64::MAX), (3, 1)], 0);
    assert_eq!(c.state.gpr[0], 0xffff_ffff);
    let (c, _) = exec(M::Long64, &[0x0f, 0x44, 0xc3], &[(0, u64::MAX), (3, 1)], ZF);
    assert_eq!(c.state.gpr[0], 1);
    // shld/shrd.
    let (c, _) = exec(
        M::Long64,
        &[0x0f, 0xa4, 0xd8, 0x04],
        &[(0, 0x1234_5678), (3, 0xf000_0000)],
        0,
    );
    assert_eq!(c.state.gpr[0], 0x2345_678f);
    let (c, _) = exec(
        M::Long64,
        &[0x48, 0x0f, 0xad, 0xd8],
        &[(0, 1), (3, 3), (1, 1)],
        0,
    );
    assert_eq!((c.state.gpr[0], c.rflags() & CF), (1 << 63, CF));
}

#[test]
fn clac_stac_toggle_ac_at_cpl0_only() {
    use vireo_core::cpu::flags::AC;
    // stac; hlt / clac; hlt at CPL 0 (64-bit and real mode).
    let (c, e) = exec(M::Long64, &[0x0f, 0x01, 0xcb, 0xf4], &[], 0);
    assert_eq!((e, c.rflags() & AC), (End::Halt, AC));
    let (c, e) = exec(M::Long64, &[0x0f, 0x01, 0xca, 0xf4], &[], AC | CF);
    assert_eq!((e, c.rflags() & (AC | CF)), (End::Halt, CF));
    let (c, e) = exec(M::Real, &[0x0f, 0x01, 0xcb, 0xf4], &[], 0);
    assert_eq!((e, c.rflags() & AC), (End::Halt, AC));
    // CPL 3: #UD, AC unchanged.
    let mut cpu = machine(M::Long64, &[0x0f, 0x01, 0xca, 0xf4]);
    cpu.state.seg[sreg::CS].selector |= 3;
    cpu.state.seg[sreg::CS].dpl = 3;
    cpu.set_rflags(cpu.rflags() | AC);
    assert_eq!(run(&mut cpu, 10), End::Fault(6, None));
    assert_eq!(cpu.rflags() & AC, AC);
}

#[test]
fn blocks_stop_at_page_boundaries() {
    let mut cpu = machine(M::Prot32, &[]);
    let start = 0x1ffc;
    super::tests::load(&cpu, start, &[0x90; 16]);
    cpu.state.rip = start;
    let b = translate_block(&mut cpu, 64).expect("translate");
    assert_eq!(b.insns, 4);
    assert_eq!(b.guest_len, 4);
}

/// A tiny deterministic generator (xorshift).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut interp = vireo_interp::Interp::new();
    for mode in [M::Real, M::Prot32, M::Long64] {
        let mut cpu = machine(mode, &[]);
        for _ in 0..1500 {
            let mut bytes = [0u8; 32];
            for b in bytes.iter_mut() {
                *b = rng.next() as u8;
            }
            super::tests::load(&cpu, CODE, &bytes);
            let mut st = super::tests::state(mode);
            for r in st.gpr.iter_mut() {
                *r = rng.next() & 0xffff_ffff;
            }
            st.gpr[4] = 0x8000;
            st.rflags = (rng.next() & 0xcd5) | 2;
            cpu.set_state(st);
            for _ in 0..4 {
                let Ok(b) = translate_block(&mut cpu, 8) else {
                    break;
                };
                b.validate().expect("valid block");
                let p = vireo_interp::Prepared::new(b);
                match interp.run(&p, &mut cpu) {
                    vireo_core::exec::BlockOutcome::Exit(_) => {}
                    _ => break,
                }
            }
        }
    }
}

/// A non-canonical address is #SS(0) in an instruction whose accesses all go through
/// SS (the stack instructions, RSP/RBP-based operands), #GP(0) otherwise, also when
/// an SS access of the same instruction would fault too; nothing is written.
#[test]
fn non_canonical_addresses_fault_ss_for_stack_accesses_only() {
    const BAD: u64 = 0x8000_0000_0000_0010;
    const SP: u64 = 0x7000;
    // (code, RSP, RBP, RAX, expected vector)
    let cases: [(&[u8], u64, u64, u64, u8); 13] = [
        (&[0x50], BAD, 0, 0, 12),                         // push rax
        (&[0x58], BAD, 0, 0, 12),                         // pop rax
        (&[0xe8, 0, 0, 0, 0], BAD, 0, 0, 12),             // call rel32
        (&[0xc3], BAD, 0, 0, 12),                         // ret
        (&[0xc9], SP, BAD, 0, 12),                        // leave (RSP = RBP first)
        (&[0x48, 0x8b, 0x44, 0x24, 0x08], BAD, 0, 0, 12), // mov rax, [rsp+8]
        (&[0x48, 0x8b, 0x45, 0x00], SP, BAD, 0, 12),      // mov rax, [rbp]
        (&[0x48, 0x89, 0x45, 0x08], SP, BAD, 0, 12),      // mov [rbp+8], rax
        (&[0x48, 0x8b, 0x00], SP, 0, BAD, 13),            // mov rax, [rax]
        (&[0xff, 0x30], SP, 0, BAD, 13),                  // push qword [rax]
        (&[0xff, 0x30], BAD, 0, 0x6000, 12),              // push qword [rax]: the push
        (&[0x8f, 0x00], SP, 0, BAD, 13),                  // pop qword [rax]
        (&[0x64, 0x48, 0x8b, 0x04, 0x24], BAD, 0, 0, 13), // mov rax, fs:[rsp]
    ];
    for (code, sp, bp, ax, vector) in cases {
        let (cpu, end) = exec(M::Long64, code, &[(4, sp), (5, bp), (0, ax)], 0);
        assert_eq!(end, End::Fault(vector, Some(0)), "{code:02x?}");
        assert_eq!(cpu.state.gpr[4], sp, "{code:02x?}: RSP unchanged");
    }
}

/// INC at the start of a block keeps the CF of the block before's operation: the
/// block is translated while a CMP's state is live (its CF is then computed inline,
/// guarded by the operation), and is entered again after an ADD (the guard fails:
/// the carry helper). `adc edx, 0` after each INC adds the CF it kept.
#[test]
fn inc_at_a_block_start_keeps_the_carry_of_any_operation_before() {
    let code = super::tests::asm64(|a| {
        use iced_x86::code_asm::*;
        let (mut top, mut done) = (a.create_label(), a.create_label());
        a.mov(esi, 2)?;
        a.xor(edx, edx)?;
        a.cmp(eax, ebx)?;
        a.jmp(top)?;
        a.set_label(&mut top)?;
        a.inc(ecx)?;
        a.adc(edx, 0)?;
        a.dec(esi)?;
        a.jz(done)?;
        a.add(eax, ebx)?;
        a.jmp(top)?;
        a.set_label(&mut done)?;
        a.nop()
    });
    // (eax, ebx): CF of the CMP, then of the ADD.
    for (ax, bx) in [(1u64, 2u64), (0xffff_ffff, 2), (5, 3), (0xffff_fff0, 0x20)] {
        let (cpu, end) = exec(M::Long64, &code, &[(0, ax), (3, bx), (1, 7)], 0);
        assert_eq!(end, End::Halt);
        let cmp_cf = u64::from(ax < bx);
        let add_cf = u64::from(ax + bx > 0xffff_ffff);
        assert_eq!(cpu.state.gpr[2], cmp_cf + add_cf, "{ax:#x}, {bx:#x}");
        assert_eq!(cpu.state.gpr[1], 9);
    }
}

/// A block translated while one lazy-flag operation is live and run with another:
/// the guarded inline CF (same operation) and the carry helper (any other) both give
/// the CF the INC at its start keeps, under both backends.
#[test]
fn inc_carry_guessed_at_translation_is_checked_at_run_time() {
    use crate::cpu::LazyFlags;
    use crate::flags::{cc_op, CcKind};
    use vireo_core::ir::Size;
    // inc ecx; adc edx, 0; hlt
    let code = [0xff, 0xc1, 0x83, 0xd2, 0x00];
    let state = |kind: CcKind, a: u64, b: u64| {
        let (dst, cf) = match kind {
            CcKind::Sub => (a.wrapping_sub(b) & 0xffff_ffff, a < b),
            _ => {
                let s = a + b;
                (s & 0xffff_ffff, s > 0xffff_ffff)
            }
        };
        let op = cc_op(kind, Size::B32);
        (
            LazyFlags {
                op,
                dst,
                src: b,
                src2: 0,
            },
            u64::from(cf),
        )
    };
    let jit = std::env::var("VIREO_TEST_BACKEND").is_ok_and(|v| v == "jit");
    for guess in [CcKind::Sub, CcKind::Add] {
        for kind in [CcKind::Sub, CcKind::Add] {
            for (a, b) in [(1u64, 2u64), (0xffff_ffff, 2), (5, 3), (0, 0)] {
                let mut cpu = machine(M::Long64, &code);
                cpu.cc = state(guess, 7, 9).0;
                let mut block = translate_block(&mut cpu, 32).expect("translate");
                vireo_core::opt::optimize(&mut block);
                let (cc, cf) = state(kind, a, b);
                cpu.cc = cc;
                cpu.state.gpr[2] = 0;
                if jit {
                    let mut cache = vireo_jit::JitCache::<crate::X86Cpu>::new(1 << 20);
                    let code = cache.compile(&block).expect("JIT compile");
                    cache
                        .run(&code, &mut cpu, &mut vireo_jit::JitState::new())
                        .expect("live block");
                } else {
                    vireo_interp::Interp::new().run(&vireo_interp::Prepared::new(block), &mut cpu);
                }
                assert_eq!(
                    cpu.state.gpr[2], cf,
                    "guess {guess:?}, run {kind:?} {a:#x} {b:#x}"
                );
            }
        }
    }
}

/// A forward Jcc leaves the block only when taken: the block goes on with the
/// instruction after it (up to `MAX_SIDE_EXITS` such branches); a backward Jcc ends
/// the block. Either way the guest sees the same: the taken path skips, the other
/// runs the instructions after the branch, and the TSC-less instruction count is
/// exact on both.
#[test]
fn forward_branches_are_side_exits() {
    use iced_x86::code_asm::*;
    use vireo_core::ir::{ExitKind, Op};
    let code = super::tests::asm64(|a| {
        let mut skip = a.create_label();
        let mut back = a.create_label();
        a.set_label(&mut back)?;
        a.cmp(rax, 5)?;
        a.je(skip)?; // forward: a side exit
        a.add(rcx, 1)?;
        a.add(rdx, 2)?;
        a.set_label(&mut skip)?;
        a.inc(rsi)?;
        a.cmp(rsi, 3)?;
        a.jb(back)?; // backward: the end
        Ok(())
    });
    let mut cpu = machine(M::Long64, &code);
    let block = translate_block(&mut cpu, 32).expect("translates");
    let jumps: Vec<u64> = block
        .ops
        .iter()
        .filter_map(|o| match o {
            Op::Exit(ExitKind::Jump(t)) => Some(*t),
            _ => None,
        })
        .collect();
    // The skip target (side exit), then the loop head and the fall-through after
    // the backward branch: the whole sequence is one block.
    assert_eq!(jumps.len(), 3, "{block}");
    assert_eq!(block.insns, 7, "{block}");
    assert!(jumps.contains(&CODE), "{block}");
    for (a0, want_rcx) in [(5u64, 0u64), (4, 3)] {
        let mut cpu = machine(M::Long64, &code);
        cpu.state.gpr[0] = a0;
        assert_eq!(run(&mut cpu, 100), End::Halt);
        assert_eq!(cpu.state.gpr[1], want_rcx, "rax {a0}");
        assert_eq!(cpu.state.gpr[2], 2 * want_rcx, "rax {a0}");
        assert_eq!(cpu.state.gpr[6], 3);
    }
    // A forward JMP: the block goes on at its target (the bytes between are not
    // translated), and its length spans them.
    let code = super::tests::asm64(|a| {
        let mut over = a.create_label();
        a.inc(rcx)?;
        a.jmp(over)?;
        a.inc(rdx)?;
        a.inc(rdx)?;
        a.set_label(&mut over)?;
        a.inc(rsi)?;
        Ok(())
    });
    let mut cpu = machine(M::Long64, &code);
    let block = translate_block(&mut cpu, 32).expect("translates");
    assert_eq!(block.insns, 4, "{block}");
    assert_eq!(block.guest_len as usize, code.len(), "{block}");
    assert_eq!(run(&mut cpu, 100), End::Halt);
    assert_eq!(
        [cpu.state.gpr[1], cpu.state.gpr[2], cpu.state.gpr[6]],
        [1, 0, 1]
    );
    // More forward branches than side exits allowed: the block ends at the one
    // after the last.
    let code = super::tests::asm64(|a| {
        let mut end = a.create_label();
        for _ in 0..super::MAX_SIDE_EXITS + 2 {
            a.test(rax, rax)?;
            a.jnz(end)?;
            a.inc(rcx)?;
        }
        a.set_label(&mut end)?;
        Ok(())
    });
    let mut cpu = machine(M::Long64, &code);
    let block = translate_block(&mut cpu, 64).expect("translates");
    let n = super::MAX_SIDE_EXITS as usize + 1;
    assert_eq!(block.insns as usize, 3 * n - 1, "{block}");
    for (a0, want) in [(0u64, u64::from(super::MAX_SIDE_EXITS) + 2), (1, 0)] {
        let mut cpu = machine(M::Long64, &code);
        cpu.state.gpr[0] = a0;
        assert_eq!(run(&mut cpu, 100), End::Halt);
        assert_eq!(cpu.state.gpr[1], want, "rax {a0}");
    }
}
