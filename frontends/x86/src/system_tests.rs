//! Tests of the other system helpers: SYSCALL/SYSRET, I/O permission, CPUID, MSRs,
//! control and debug registers, flags instructions, XCR0, and the helper table.

use crate::exception_tests::*;
use crate::helpers::system::SysHelper;
use crate::mmu::cr4;
use crate::testutil::*;
use crate::{control, cpuid, io, msr, syscall};
use vireo_core::cpu::{ctl, flags as fl, msr as m, reg, sreg};
use vireo_core::exec::GuestEnv;

#[test]
fn syscall_sysret_round_trip() {
    let mut cpu = lm(3);
    cpu.state.msr.star = (u64::from(K_DS) << 48) | (u64::from(K_CS64) << 32);
    cpu.state.msr.lstar = 0xffff_8000_0000_3000;
    cpu.state.msr.sfmask = fl::IF | fl::TF;
    cpu.set_rflags(fl::FIXED1 | fl::IF | fl::CF);
    syscall::syscall(&mut cpu, 0x40_1002).unwrap();
    assert_eq!(cpu.state.rip, 0xffff_8000_0000_3000);
    assert_eq!(cpu.state.gpr[reg::RCX], 0x40_1002);
    assert_eq!(cpu.state.gpr[11], fl::FIXED1 | fl::IF | fl::CF);
    assert_eq!(cpu.state.cpl(), 0);
    assert_eq!(cpu.state.seg[sreg::SS].selector, K_CS64 + 8);
    assert_eq!(cpu.rflags() & (fl::IF | fl::TF), 0);
    // SYSRET: STAR[63:48] + 16 for 64-bit CS, + 8 for SS, RPL 3.
    cpu.state.msr.star = (0x20u64 << 48) | (u64::from(K_CS64) << 32);
    syscall::sysret(&mut cpu, 64).unwrap();
    assert_eq!(cpu.state.seg[sreg::CS].selector, 0x33);
    assert!(cpu.state.seg[sreg::CS].l);
    assert_eq!(cpu.state.seg[sreg::SS].selector, 0x2b);
    assert_eq!(cpu.state.cpl(), 3);
    assert_eq!(cpu.state.rip, 0x40_1002);
    assert_eq!(cpu.rflags(), fl::FIXED1 | fl::IF | fl::CF);
    // Non-canonical RCX: #GP(0) before any change; CPL 3: #GP(0).
    assert_eq!(syscall::sysret(&mut cpu, 64).unwrap_err().vector, 13);
    let mut cpu = lm(0);
    cpu.state.gpr[reg::RCX] = 0x8000_0000_0000;
    assert_eq!(
        syscall::sysret(&mut cpu, 64).unwrap_err().error_code,
        Some(0)
    );
    assert_eq!(cpu.state.cpl(), 0);
    // SCE off: #UD.
    cpu.state.efer &= !ctl::EFER_SCE;
    assert_eq!(syscall::syscall(&mut cpu, 0).unwrap_err().vector, 6);
    // AMD: SYSENTER is #UD in long mode.
    assert_eq!(syscall::sysenter(&mut cpu).unwrap_err().vector, 6);
}

#[test]
fn sysenter_sysexit_legacy() {
    let mut cpu = pm(3);
    cpu.state.msr.sysenter_cs = u64::from(K_CS);
    cpu.state.msr.sysenter_esp = 0x9000;
    cpu.state.msr.sysenter_eip = 0x4000;
    syscall::sysenter(&mut cpu).unwrap();
    assert_eq!((cpu.state.cpl(), cpu.state.rip), (0, 0x4000));
    assert_eq!(cpu.state.seg[sreg::SS].selector, K_DS);
    cpu.state.gpr[reg::RCX] = 0x6000;
    cpu.state.gpr[reg::RDX] = 0x1234;
    syscall::sysexit(&mut cpu, 32).unwrap();
    assert_eq!(cpu.state.cpl(), 3);
    assert_eq!(cpu.state.seg[sreg::CS].selector, K_CS + 16 + 3);
    assert_eq!(cpu.state.seg[sreg::SS].selector, K_CS + 24 + 3);
    assert_eq!((cpu.state.rip, cpu.state.gpr[reg::RSP]), (0x1234, 0x6000));
}

#[test]
fn io_permission_bitmap() {
    let mut cpu = pm(3);
    // Bitmap at offset 0x68 in the TSS: all ports allowed but 0x61 and 0x3f9.
    w16(&cpu, TSS + 0x66, 0x68);
    cpu.bus
        .mem
        .write_u8(TSS + 0x68 + 0x61 / 8, 1 << (0x61 % 8))
        .unwrap();
    cpu.bus
        .mem
        .write_u8(TSS + 0x68 + 0x3f9 / 8, 1 << (0x3f9 % 8))
        .unwrap();
    assert!(io::check_io(&mut cpu, 0x60, 1).is_ok());
    assert_eq!(
        io::check_io(&mut cpu, 0x61, 1).unwrap_err().error_code,
        Some(0)
    );
    assert!(io::check_io(&mut cpu, 0x60, 2).is_err());
    assert!(io::check_io(&mut cpu, 0x3f8, 1).is_ok());
    assert!(io::check_io(&mut cpu, 0x3f8, 4).is_err());
    // Beyond the TSS limit: denied.
    assert!(io::check_io(&mut cpu, 0xffff, 1).is_err());
    // IOPL 3: no bitmap needed; unassigned ports read all ones.
    cpu.set_rflags(fl::FIXED1 | fl::IOPL);
    assert_eq!(io::port_in(&mut cpu, 0x61, 1), Ok(0xff));
    // Real mode: always allowed.
    let mut cpu = machine();
    assert!(io::port_out(&mut cpu, 0x80, 1, 0).is_ok());
}

#[test]
fn cli_sti_pushf_popf_rules() {
    let mut cpu = pm(3);
    cpu.set_rflags(fl::FIXED1 | fl::IF);
    assert_eq!(io::cli(&mut cpu).unwrap_err().vector, 13);
    // POPF at CPL 3 with IOPL 0: IF and IOPL unchanged, arithmetic flags loaded.
    io::popf(&mut cpu, fl::CF | fl::IOPL | fl::FIXED1, 32).unwrap();
    assert_eq!(cpu.rflags(), fl::FIXED1 | fl::IF | fl::CF);
    assert_eq!(io::pushf(&mut cpu, 16), Ok(fl::FIXED1 | fl::IF | fl::CF));
    // Ring 0: IF changes, STI starts the shadow only when IF was clear.
    let mut cpu = pm(0);
    io::cli(&mut cpu).unwrap();
    io::sti(&mut cpu).unwrap();
    assert!(cpu.state.events.interrupt_shadow);
    cpu.state.events.interrupt_shadow = false;
    io::sti(&mut cpu).unwrap();
    assert!(!cpu.state.events.interrupt_shadow);
    io::popf(&mut cpu, fl::FIXED1 | fl::IOPL | fl::VM | fl::RF, 32).unwrap();
    assert_eq!(cpu.rflags(), fl::FIXED1 | fl::IOPL);
    // V86 with IOPL < 3: PUSHF is #GP.
    cpu.set_rflags(fl::FIXED1 | fl::VM);
    assert!(io::pushf(&mut cpu, 16).is_err());
}

#[test]
fn cpuid_leaves_are_consistent() {
    let mut cpu = machine();
    let q = |cpu: &mut crate::cpu::X86Cpu, leaf: u64| {
        cpu.state.gpr[0] = leaf;
        cpu.state.gpr[1] = 0;
        cpuid::cpuid(cpu);
        [
            cpu.state.gpr[0],
            cpu.state.gpr[3],
            cpu.state.gpr[1],
            cpu.state.gpr[2],
        ]
        .map(|v| v as u32)
    };
    let l0 = q(&mut cpu, 0);
    let mut vendor = Vec::new();
    for r in [l0[1], l0[3], l0[2]] {
        vendor.extend_from_slice(&r.to_le_bytes());
    }
    assert_eq!(&vendor, b"AuthenticAMD");
    assert!(l0[0] >= 7);
    let l1 = q(&mut cpu, 1);
    // Family 15, model 107 (extended model 6).
    assert_eq!((l1[0] >> 8) & 0xf, 15);
    assert_eq!(((l1[0] >> 16) & 0xf) << 4 | (l1[0] >> 4) & 0xf, 107);
    for bit in [
        cpuid::edx1::PAE,
        cpuid::edx1::PSE,
        cpuid::edx1::PGE,
        cpuid::edx1::TSC,
        cpuid::edx1::FPU,
        cpuid::edx1::FXSR,
        cpuid::edx1::MMX,
        cpuid::edx1::SSE,
        cpuid::edx1::SSE2,
    ] {
        assert_ne!(l1[3] & bit, 0);
    }
    assert_eq!(l1[3] & cpuid::edx1::APIC, 0, "no APIC yet");
    for bit in [
        cpuid::ecx1::SSE3,
        cpuid::ecx1::PCLMULQDQ,
        cpuid::ecx1::SSSE3,
        cpuid::ecx1::SSE41,
        cpuid::ecx1::SSE42,
        cpuid::ecx1::POPCNT,
        cpuid::ecx1::CX16,
    ] {
        assert_ne!(l1[2] & bit, 0, "{bit:#x}");
    }
    // Not implemented: MONITOR/MWAIT, AVX (bit 28), XSAVE, FMA (bit 12).
    for bit in [cpuid::ecx1::MONITOR, cpuid::ecx1::XSAVE, 1 << 28, 1 << 12] {
        assert_eq!(l1[2] & bit, 0, "{bit:#x}");
    }
    // The TSC frequency: leaf 15h crystal ratio and leaf 16h MHz.
    let l15 = q(&mut cpu, 0x15);
    assert_eq!(
        u64::from(l15[2]) * u64::from(l15[1]) / u64::from(l15[0]),
        cpuid::TSC_HZ
    );
    assert_eq!(u64::from(q(&mut cpu, 0x16)[0]), cpuid::TSC_HZ / 1_000_000);
    let e0 = q(&mut cpu, 0x8000_0000);
    assert!(e0[0] >= 0x8000_0008);
    let e1 = q(&mut cpu, 0x8000_0001);
    assert_ne!(e1[3] & cpuid::ext1::LM, 0);
    assert_ne!(e1[3] & cpuid::ext1::NX, 0);
    assert_ne!(e1[3] & cpuid::ext1::SYSCALL, 0);
    let e8 = q(&mut cpu, 0x8000_0008);
    assert_eq!(e8[0] & 0xff, crate::mmu::PHYS_BITS);
    let brand: Vec<u8> = (0x8000_0002..=0x8000_0004u64)
        .flat_map(|l| q(&mut cpu, l).into_iter().flat_map(|r| r.to_le_bytes()))
        .collect();
    assert!(brand.starts_with(b"vireo"));
    // Every CR4 bit the model allows can be set; the others #GP.
    assert_eq!(q(&mut cpu, 0x4000_0000), [0; 4]);
    assert_eq!(cpu.cpuid.cr4_valid() & cr4::VME, 0);
}

#[test]
fn msrs() {
    let mut cpu = pm(0);
    let wr = |cpu: &mut crate::cpu::X86Cpu, i: u32, v: u64| msr::write_msr(cpu, i, v);
    // EFER: reserved bits; LME change with paging on.
    assert!(wr(&mut cpu, m::EFER, 1 << 20).is_err());
    wr(
        &mut cpu,
        m::EFER,
        ctl::EFER_LME | ctl::EFER_NXE | ctl::EFER_SCE,
    )
    .unwrap();
    cpu.state.cr0 |= ctl::CR0_PG;
    assert!(wr(&mut cpu, m::EFER, ctl::EFER_NXE).is_err());
    // Canonical bases.
    assert!(wr(&mut cpu, m::GS_BASE, 0x8000_0000_0000).is_err());
    wr(&mut cpu, m::GS_BASE, 0xffff_8000_0000_0000).unwrap();
    assert_eq!(cpu.state.seg[sreg::GS].base, 0xffff_8000_0000_0000);
    // PAT validation.
    assert!(wr(&mut cpu, m::PAT, 0x0000_0000_0000_0002).is_err());
    wr(&mut cpu, m::PAT, 0x0007_0406_0007_0406).unwrap();
    // TSC writes move the offset.
    cpu.icount = 1000;
    wr(&mut cpu, m::TSC, 5000).unwrap();
    cpu.icount = 1100;
    assert_eq!(msr::read_msr(&cpu, m::TSC), Ok(5100));
    assert_eq!(cpu.state().msr.tsc, 5100);
    // MTRRs.
    wr(&mut cpu, 0x2ff, 0xc06).unwrap();
    assert!(wr(&mut cpu, 0x250, 0x0202_0202_0202_0202).is_err());
    wr(&mut cpu, 0x201, 0xff_f000_0800).unwrap();
    assert_eq!(msr::read_msr(&cpu, 0x201), Ok(0xff_f000_0800));
    assert_eq!(msr::read_msr(&cpu, 0xfe).map(|v| v & 0xff), Ok(8));
    // MTRRs are part of the portable state (they move between engines).
    assert_eq!(cpu.state().msr.mtrr_def_type, 0xc06);
    assert_eq!(cpu.state().msr.mtrr_var[1], 0xff_f000_0800);
    // AMD SYSCFG: reads 0; the fixed-MTRR extension bits are writable, others #GP.
    assert_eq!(msr::read_msr(&cpu, msr::AMD_SYSCFG), Ok(0));
    wr(&mut cpu, msr::AMD_SYSCFG, 1 << 19).unwrap();
    assert_eq!(msr::read_msr(&cpu, msr::AMD_SYSCFG), Ok(1 << 19));
    assert!(wr(&mut cpu, msr::AMD_SYSCFG, 1 << 23).is_err());
    // AMD interrupt pending message: 0 (no C1E); C1E enable bits #GP.
    assert_eq!(msr::read_msr(&cpu, msr::AMD_INT_PENDING_MSG), Ok(0));
    assert!(wr(&mut cpu, msr::AMD_INT_PENDING_MSG, 1 << 27).is_err());
    // Unknown: #GP(0).
    assert_eq!(msr::read_msr(&cpu, 0x1234).unwrap_err().error_code, Some(0));
    // RDMSR/WRMSR at CPL 3: #GP.
    let mut cpu3 = pm(3);
    cpu3.state.gpr[reg::RCX] = u64::from(m::EFER);
    assert!(msr::rdmsr(&mut cpu3).is_err());
    // RDTSC with CR4.TSD at CPL 3.
    cpu3.state.cr4 = cr4::TSD;
    assert!(msr::rdtsc(&mut cpu3, false).is_err());
    cpu3.state.cr4 = 0;
    cpu3.tsc_source = Some(Box::new(|| 0x1_0000_0002));
    msr::rdtsc(&mut cpu3, true).unwrap();
    assert_eq!((cpu3.state.gpr[reg::RAX], cpu3.state.gpr[reg::RDX]), (2, 1));
}

#[test]
fn long_mode_activation_through_cr0() {
    let mut cpu = pm(0);
    cpu.state.efer = ctl::EFER_LME;
    // PG with LME but without PAE: #GP.
    let pg = cpu.state.cr0 | ctl::CR0_PG;
    assert!(control::write_cr0(&mut cpu, pg).is_err());
    control::write_cr4(&mut cpu, cr4::PAE).unwrap();
    control::write_cr3(&mut cpu, 0x10000).unwrap();
    control::write_cr0(&mut cpu, pg).unwrap();
    assert!(cpu.state.long_mode());
    // In long mode, PAE cannot be cleared; PCIDE needs CR3[11:0] = 0.
    assert!(control::write_cr4(&mut cpu, 0).is_err());
    control::write_cr4(&mut cpu, cr4::PAE | cr4::PCIDE).unwrap();
    // 64-bit code cannot turn paging off.
    cpu.state.seg[sreg::CS].l = true;
    assert!(control::write_cr0(&mut cpu, ctl::CR0_PE).is_err());
    cpu.state.seg[sreg::CS].l = false;
    control::write_cr4(&mut cpu, cr4::PAE).unwrap();
    control::write_cr0(&mut cpu, ctl::CR0_PE).unwrap();
    assert!(!cpu.state.long_mode());
    // Reserved and inconsistent CR0 values.
    assert!(control::write_cr0(&mut cpu, 1 << 32).is_err());
    assert!(control::write_cr0(&mut cpu, ctl::CR0_PG).is_err());
    assert!(control::write_cr0(&mut cpu, ctl::CR0_PE | ctl::CR0_NW).is_err());
    assert_ne!(cpu.state.cr0 & ctl::CR0_ET, 0);
    // PAE paging with a bad PDPTE: #GP at the CR3 load.
    let mut cpu = pm(0);
    cpu.state.cr4 = cr4::PAE;
    cpu.state.cr0 |= ctl::CR0_PG;
    w64(&cpu, 0x10000, 1 | 1 << 5);
    assert!(control::write_cr3(&mut cpu, 0x10000).is_err());
    // CR8, privilege, unknown CR.
    assert!(control::mov_to_cr(&mut cpu, 8, 16).is_err());
    control::mov_to_cr(&mut cpu, 8, 5).unwrap();
    assert_eq!(control::mov_from_cr(&mut cpu, 8), Ok(5));
    assert_eq!(control::mov_from_cr(&mut cpu, 5).unwrap_err().vector, 6);
    let mut cpu3 = pm(3);
    assert_eq!(control::mov_from_cr(&mut cpu3, 0).unwrap_err().vector, 13);
}

#[test]
fn debug_registers_and_xcr0() {
    let mut cpu = pm(0);
    control::mov_to_dr(&mut cpu, 7, 0x1).unwrap();
    assert_eq!(control::mov_from_dr(&mut cpu, 5), Ok(0x401));
    control::mov_to_dr(&mut cpu, 6, 0).unwrap();
    assert_eq!(control::mov_from_dr(&mut cpu, 6), Ok(0xffff_0ff0));
    assert!(control::mov_to_dr(&mut cpu, 7, 1 << 32).is_err());
    cpu.state.cr4 = cr4::DE;
    assert_eq!(control::mov_from_dr(&mut cpu, 4).unwrap_err().vector, 6);
    // DR7.GD: #DB with DR6.BD.
    control::mov_to_dr(&mut cpu, 7, 1 << 13).unwrap();
    assert_eq!(control::mov_from_dr(&mut cpu, 0).unwrap_err().vector, 1);
    assert_ne!(cpu.state.dr[4] & (1 << 13), 0);
    // XSETBV needs CR4.OSXSAVE (not offered by the default model).
    assert_eq!(control::xgetbv(&mut cpu).unwrap_err().vector, 6);
    assert!(control::write_cr4(&mut cpu, cr4::OSXSAVE).is_err());
    cpu.cpuid.ecx1 |= cpuid::ecx1::XSAVE;
    cpu.cpuid.max_leaf = 0xd;
    control::write_cr4(&mut cpu, cr4::OSXSAVE).unwrap();
    cpu.state.gpr[reg::RCX] = 0;
    cpu.state.gpr[reg::RAX] = 2;
    assert!(control::xsetbv(&mut cpu).is_err(), "x87 bit clear");
    cpu.state.gpr[reg::RAX] = 7;
    assert!(control::xsetbv(&mut cpu).is_err(), "AVX not offered");
    cpu.state.gpr[reg::RAX] = 3;
    control::xsetbv(&mut cpu).unwrap();
    cpu.state.gpr[reg::RAX] = 0;
    control::xgetbv(&mut cpu).unwrap();
    assert_eq!(cpu.state.gpr[reg::RAX], 3);
    let r = cpu.cpuid.query(1, 0, cpu.state.cr4, 3);
    assert_ne!(r[2] & cpuid::ecx1::OSXSAVE, 0);
}

#[test]
fn descriptor_table_registers_and_hlt() {
    let mut cpu = pm(0);
    w16(&cpu, 0x500, 0x1234);
    w32(&cpu, 0x502, 0xaabb_ccdd);
    control::load_dtr(&mut cpu, 1, 0x500, 16).unwrap();
    assert_eq!(
        (cpu.state.idtr.base, cpu.state.idtr.limit),
        (0xbb_ccdd, 0x1234)
    );
    control::load_dtr(&mut cpu, 1, 0x500, 32).unwrap();
    assert_eq!(cpu.state.idtr.base, 0xaabb_ccdd);
    control::store_dtr(&mut cpu, 0, 0x600).unwrap();
    assert_eq!(r16(&cpu, 0x600), cpu.state.gdtr.limit);
    assert_eq!(u64::from(r32(&cpu, 0x602)), GDT);
    control::hlt(&mut cpu, 0x99).unwrap();
    assert!(cpu.state.events.halted);
    assert_eq!(cpu.state.rip, 0x99);
    let mut cpu3 = pm(3);
    assert!(control::load_dtr(&mut cpu3, 0, 0x500, 32).is_err());
    assert!(control::hlt(&mut cpu3, 0).is_err());
    assert!(control::store_dtr(&mut cpu3, 0, 0x600).is_ok());
}

#[test]
fn helper_table_dispatch() {
    let mut cpu = pm(0);
    cpu.state.gpr[reg::RAX] = 0;
    cpu.call(SysHelper::Cpuid.id(), &[]).unwrap();
    assert_eq!(cpu.state.gpr[reg::RAX], 0x16);
    assert_eq!(cpu.call(SysHelper::MovFromCr.id(), &[0]), Ok(cpu.state.cr0));
    let v = cpu
        .call(SysHelper::LarLsl.id(), &[1, u64::from(K_DS)])
        .unwrap();
    assert_eq!(v, 1 << 63 | 0xffff_ffff);
    cpu.call(SysHelper::Hlt.id(), &[0x10]).unwrap();
    assert!(cpu.state.events.halted);
}
