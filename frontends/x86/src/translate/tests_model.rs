//! The CPUID model gates instructions: what a named model does not advertise raises
//! #UD, as on a CPU without the feature.

use super::tests::{asm64, machine, rd, run, End, M};
use crate::cpuid::{ecx1, CpuidModel};
use iced_x86::code_asm::*;

/// Runs 64-bit code assembled by `f` on `model`; returns how it ended and the CPU.
fn run_on(
    model: &CpuidModel,
    f: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>,
) -> (End, crate::cpu::X86Cpu) {
    let mut cpu = machine(M::Long64, &asm64(f));
    cpu.cpuid = model.clone();
    // SSE on (CR4.OSFXSR), so only the model decides.
    cpu.state.cr4 |= crate::mmu::cr4::OSFXSR;
    let end = run(&mut cpu, 100);
    (end, cpu)
}

const UD: End = End::Fault(6, None);

#[test]
fn qemu64_refuses_what_it_does_not_advertise() {
    let q = CpuidModel::named("qemu64").expect("qemu64");
    let max = CpuidModel::named("max").expect("max");
    type Code = fn(&mut CodeAssembler) -> Result<(), IcedError>;
    let cases: &[(&str, Code)] = &[
        ("pshufb (SSSE3)", |a| a.pshufb(xmm0, xmm1)),
        ("pmulld (SSE4.1)", |a| a.pmulld(xmm0, xmm1)),
        ("crc32 (SSE4.2)", |a| a.crc32(eax, ecx)),
        ("popcnt", |a| a.popcnt(eax, ecx)),
        ("lzcnt (ABM)", |a| a.lzcnt(eax, ecx)),
        ("pclmulqdq", |a| a.pclmulqdq(xmm0, xmm1, 0)),
        ("rdtscp", |a| a.rdtscp()),
        ("adcx (ADX)", |a| a.adcx(eax, ecx)),
        ("movbe", |a| a.movbe(eax, dword_ptr(0x4000))),
    ];
    for (what, code) in cases {
        let (end, _) = run_on(&q, code);
        assert_eq!(end, UD, "{what} under qemu64");
        let (end, _) = run_on(&max, code);
        assert_eq!(end, End::Halt, "{what} under max");
    }
    // What qemu64 has runs: SSE3, CMPXCHG16B, SSE2.
    let (end, _) = run_on(&q, |a| {
        a.haddpd(xmm0, xmm1)?;
        a.mov(rsp, 0x8000u64)?;
        a.cmpxchg16b(xmmword_ptr(0x4000))?;
        a.paddq(xmm0, xmm1)
    });
    assert_eq!(end, End::Halt);
}

#[test]
fn movbe_swaps_bytes_on_load_and_store() {
    let max = CpuidModel::named("max").expect("max");
    assert_ne!(max.ecx1 & ecx1::MOVBE, 0, "max advertises MOVBE");
    let (end, cpu) = run_on(&max, |a| {
        a.mov(rax, 0x1122_3344_5566_7788u64)?;
        a.movbe(qword_ptr(0x4000), rax)?;
        a.movbe(ecx, dword_ptr(0x4000))?;
        a.movbe(dx, word_ptr(0x4004))
    });
    assert_eq!(end, End::Halt);
    assert_eq!(rd(&cpu, 0x4000, 8), 0x8877_6655_4433_2211);
    // Bytes 11 22 33 44 55 66 77 88 at 0x4000.
    assert_eq!(cpu.state.gpr[1], 0x1122_3344, "movbe ecx, [m32]");
    assert_eq!(cpu.state.gpr[2] & 0xffff, 0x5566, "movbe dx, [m16]");
}

#[test]
fn qemu64_cpuid_leaves() {
    let q = CpuidModel::qemu64();
    let l1 = q.query(1, 0, 0, 1);
    assert_eq!(l1[2], ecx1::SSE3 | ecx1::CX16);
    assert_eq!(q.query(7, 0, 0, 1)[1], 0, "no leaf-7 features");
    let e1 = q.query(0x8000_0001, 0, 0, 1);
    assert_eq!(e1[2], crate::cpuid::ext1::LAHF_LM);
    assert_eq!(e1[3] & (1 << 29), 1 << 29, "long mode");
    let brand: Vec<u8> = (0x8000_0002..=0x8000_0004u32)
        .flat_map(|l| q.query(l, 0, 0, 1))
        .flat_map(u32::to_le_bytes)
        .collect();
    assert!(brand.starts_with(b"QEMU Virtual CPU version 2.5+"));
    // The TSC frequency leaves stay.
    assert_eq!(q.query(0x15, 0, 0, 1)[2] as u64, crate::cpuid::CRYSTAL_HZ);
    assert!(CpuidModel::named("pentium").is_none());
}
