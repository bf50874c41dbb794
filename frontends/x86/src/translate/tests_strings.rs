//! REP MOVS / REP STOS in long mode (the many-iterations helper of
//! `crate::string_ops`) against a one-element-at-a-time model: overlaps, page
//! crossings, both directions, faults part-way.

use super::tests::{load, machine, run, End, M, PML4};

const MEM: usize = 0x40_0000;

/// The model: `n` iterations of `size` bytes, one at a time.
fn model_movs(mem: &mut [u8], src: u64, dst: u64, n: u64, size: usize, back: bool) {
    let (mut s, mut d) = (src as i64, dst as i64);
    let step = if back { -(size as i64) } else { size as i64 };
    for _ in 0..n {
        let mut e = [0u8; 8];
        e[..size].copy_from_slice(&mem[s as usize..s as usize + size]);
        mem[d as usize..d as usize + size].copy_from_slice(&e[..size]);
        s += step;
        d += step;
    }
}

/// Guest memory below [`MEM`] as bytes.
fn snapshot(cpu: &crate::X86Cpu) -> Vec<u8> {
    let mut v = vec![0u8; MEM];
    cpu.bus.mem.read(0, &mut v).unwrap();
    v
}

/// `rep movs` (prefix bytes `op`) from `src` to `dst`, `n` elements of `size`.
fn check_movs(op: &[u8], size: usize, src: u64, dst: u64, n: u64, back: bool) {
    let mut code = Vec::new();
    if back {
        code.push(0xfd); // std
    }
    code.extend_from_slice(op);
    code.push(0xf4);
    let mut cpu = machine(M::Long64, &code);
    // A recognisable pattern around both ranges.
    let pattern: Vec<u8> = (0..0x2_0000u32).map(|i| (i * 7 + i / 251) as u8).collect();
    load(&cpu, 0x10_0000, &pattern);
    load(&cpu, 0x12_0000, &pattern);
    let mut want = snapshot(&cpu);
    model_movs(&mut want, src, dst, n, size, back);
    cpu.state.gpr[6] = src;
    cpu.state.gpr[7] = dst;
    cpu.state.gpr[1] = n;
    assert_eq!(
        run(&mut cpu, 1000),
        End::Halt,
        "{op:x?} {src:#x}->{dst:#x} x{n}"
    );
    let got = snapshot(&cpu);
    let first = got.iter().zip(&want).position(|(a, b)| a != b);
    assert_eq!(
        first, None,
        "{op:x?} {src:#x}->{dst:#x} x{n}: first differing byte"
    );
    let moved = n * size as u64;
    let (s, d) = if back {
        (src.wrapping_sub(moved), dst.wrapping_sub(moved))
    } else {
        (src + moved, dst + moved)
    };
    assert_eq!(
        (cpu.state.gpr[1], cpu.state.gpr[6], cpu.state.gpr[7]),
        (0, s, d)
    );
}

#[test]
fn rep_movs_matches_one_element_at_a_time() {
    let movsb = [0xf3, 0xa4];
    let movsw = [0x66, 0xf3, 0xa5];
    let movsd = [0xf3, 0xa5];
    let movsq = [0xf3, 0x48, 0xa5];
    // Plain copies across pages, misaligned, longer than one helper call.
    check_movs(&movsb, 1, 0x10_0123, 0x12_0ffd, 100_000, false);
    check_movs(&movsq, 8, 0x10_0004, 0x12_0ff9, 9_000, false);
    check_movs(&movsw, 2, 0x10_0ffe, 0x12_0001, 3, false);
    // The destination just ahead of the source: the bytes repeat.
    check_movs(&movsb, 1, 0x10_0100, 0x10_0101, 5_000, false);
    check_movs(&movsd, 4, 0x10_0100, 0x10_0102, 5_000, false);
    check_movs(&movsq, 8, 0x10_0100, 0x10_0180, 5_000, false);
    // Behind the source (memmove forward is exact), and the same address.
    check_movs(&movsb, 1, 0x10_0800, 0x10_0100, 10_000, false);
    check_movs(&movsq, 8, 0x10_0800, 0x10_0800, 1_000, false);
    // Backwards.
    check_movs(&movsw, 2, 0x10_8000, 0x10_8010, 3_000, true);
    check_movs(&movsb, 1, 0x11_0000, 0x12_7000, 9_000, true);
}

#[test]
fn rep_movs_through_one_physical_page_at_two_addresses() {
    // 0x3000_0000.. maps the same 2 MiB as 0x20_0000..: a copy from the first alias to
    // just ahead in the second must repeat bytes as one element at a time would.
    let mut cpu = machine(M::Long64, &[0xf3, 0xa4, 0xf4]);
    cpu.bus
        .mem
        .write_u64(PML4 + 0x2000 + 8 * (0x3000_0000 >> 21), 0x20_0000 | 0x87)
        .unwrap();
    let pattern: Vec<u8> = (0..0x2000u32).map(|i| (i * 13) as u8).collect();
    load(&cpu, 0x20_0000, &pattern);
    let mut want = snapshot(&cpu);
    model_movs(&mut want, 0x20_0000, 0x20_0001, 4000, 1, false);
    cpu.state.gpr[6] = 0x20_0000;
    cpu.state.gpr[7] = 0x3000_0001;
    cpu.state.gpr[1] = 4000;
    assert_eq!(run(&mut cpu, 1000), End::Halt);
    assert_eq!(snapshot(&cpu), want);
}

#[test]
fn rep_stos_fills_and_faults_part_way() {
    // rep stosd: 3000 dwords from a misaligned address.
    let mut cpu = machine(M::Long64, &[0xf3, 0xab, 0xf4]);
    cpu.state.gpr[0] = 0x1122_3344_aabb_ccdd;
    cpu.state.gpr[7] = 0x10_0ffe;
    cpu.state.gpr[1] = 3000;
    assert_eq!(run(&mut cpu, 1000), End::Halt);
    let got = snapshot(&cpu);
    for i in 0..3000 {
        let a = 0x10_0ffe + 4 * i;
        assert_eq!(got[a..a + 4], [0xdd, 0xcc, 0xbb, 0xaa], "dword {i}");
    }
    assert_eq!(got[0x10_0ffe + 4 * 3000], 0);
    assert_eq!(
        (cpu.state.gpr[1], cpu.state.gpr[7]),
        (0, 0x10_0ffe + 12_000)
    );

    // rep movsb into a page that is not present (the 2 MiB at 0x20_0000): the bytes
    // before it are written, the registers stop at the fault, #PF (write).
    let mut cpu = machine(M::Long64, &[0xf3, 0xa4, 0xf4]);
    cpu.bus.mem.write_u64(PML4 + 0x2000 + 8, 0).unwrap();
    load(&cpu, 0x10_0000, b"0123456789abcdefXYZ");
    cpu.state.gpr[6] = 0x10_0000;
    cpu.state.gpr[7] = 0x1f_fff0;
    cpu.state.gpr[1] = 100;
    assert_eq!(run(&mut cpu, 1000), End::Fault(14, Some(2)));
    let got = snapshot(&cpu);
    assert_eq!(&got[0x1f_fff0..0x20_0000], b"0123456789abcdef");
    assert_eq!(
        (cpu.state.gpr[1], cpu.state.gpr[6], cpu.state.gpr[7]),
        (84, 0x10_0010, 0x20_0000)
    );

    // A non-canonical source: #GP(0) before anything moves.
    let mut cpu = machine(M::Long64, &[0xf3, 0xa4, 0xf4]);
    cpu.state.gpr[6] = 0x8000_0000_0000;
    cpu.state.gpr[7] = 0x10_0000;
    cpu.state.gpr[1] = 10;
    assert_eq!(run(&mut cpu, 1000), End::Fault(13, Some(0)));
    assert_eq!(cpu.state.gpr[1], 10);
}

#[test]
fn rep_with_a_zero_count_writes_nothing() {
    // 67h: ECX is the count; it is 0, so RCX, RSI, RDI keep all 64 bits.
    let mut cpu = machine(M::Long64, &[0x67, 0xf3, 0xa5, 0xf4]);
    cpu.state.gpr[1] = 0x8000_0000_0000_0000;
    cpu.state.gpr[6] = 0x0080_0000_0000_0000;
    cpu.state.gpr[7] = 0x0000_0080_0000_0000;
    assert_eq!(run(&mut cpu, 10), End::Halt);
    assert_eq!(
        (cpu.state.gpr[1], cpu.state.gpr[6], cpu.state.gpr[7]),
        (
            0x8000_0000_0000_0000,
            0x0080_0000_0000_0000,
            0x0000_0080_0000_0000
        )
    );
}
