//! The frontend's APIC plumbing with a recording stand-in for the APIC: the register
//! page reaches the port (not RAM or the bus) and moves with IA32_APIC_BASE, the MSRs
//! and CR8 go to it, CPUID follows it, INIT and SIPI set the CPU up as the SDM says.

use super::*;
use crate::testutil::machine;
use crate::{control, cpuid, mmu, msr as msrs};
use std::sync::{Arc, Mutex};
use vireo_core::cpu::{ctl, msr, reg, sreg};
use vireo_core::ir::{MmuIdx, Size};

#[derive(Default)]
struct State {
    base: u64,
    tpr: u8,
    deadline: (u64, u64),
    writes: Vec<(u64, Vec<u8>)>,
    x2: Vec<(u32, u64)>,
}

#[derive(Clone, Default)]
struct Fake(Arc<Mutex<State>>);

impl Fake {
    fn st(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap()
    }
}

impl LocalApicPort for Fake {
    fn mmio_read(&self, offset: u64, data: &mut [u8]) {
        // Reads return the offset's low byte in every byte.
        data.fill(offset as u8);
    }
    fn mmio_write(&self, offset: u64, data: &[u8]) {
        self.st().writes.push((offset, data.to_vec()));
    }
    fn apic_base(&self) -> u64 {
        self.st().base
    }
    fn set_apic_base(&self, v: u64) -> Result<(), ApicGp> {
        if v & (1 << 10) != 0 && v & (1 << 11) == 0 {
            return Err(ApicGp);
        }
        self.st().base = v;
        Ok(())
    }
    fn load_apic_base(&self, v: u64) {
        self.st().base = v;
    }
    fn mmio_page(&self) -> Option<u64> {
        let b = self.st().base;
        (b & 0xc00 == 0x800).then_some(b & !0xfff)
    }
    fn read_x2apic(&self, index: u32) -> Result<u64, ApicGp> {
        if index == 0x802 {
            Ok(7)
        } else {
            Err(ApicGp)
        }
    }
    fn write_x2apic(&self, index: u32, v: u64) -> Result<(), ApicGp> {
        self.st().x2.push((index, v));
        Ok(())
    }
    fn tsc_deadline(&self) -> u64 {
        self.st().deadline.0
    }
    fn set_tsc_deadline(&self, deadline: u64, tsc_now: u64) {
        self.st().deadline = (deadline, tsc_now);
    }
    fn tpr(&self) -> u8 {
        self.st().tpr
    }
    fn set_tpr(&self, v: u8) {
        self.st().tpr = v;
    }
}

fn with_apic() -> (X86Cpu, Fake) {
    let mut cpu = machine();
    let f = Fake::default();
    cpu.attach_apic(Box::new(f.clone()), 3);
    (cpu, f)
}

#[test]
fn register_page_goes_to_the_apic() {
    let (mut cpu, f) = with_apic();
    // Reset IA32_APIC_BASE: 0xFEE00000, enabled, BSP.
    assert_eq!(cpu.apic_page, Some(0xfee0_0000));
    let v = mmu::read(&mut cpu, 0xfee0_0030, Size::B32, MmuIdx::Kernel).unwrap();
    assert_eq!(v, 0x3030_3030);
    mmu::write(&mut cpu, 0xfee0_00b0, 0, Size::B32, MmuIdx::Kernel).unwrap();
    assert_eq!(f.st().writes, vec![(0xb0, vec![0, 0, 0, 0])]);
    // Relocated into RAM: the APIC shadows RAM there, and the old page is free.
    msrs::write_msr(&mut cpu, msr::APIC_BASE, 0x10_0000 | 0x900).unwrap();
    cpu.bus.mem.write_u32(0x10_0020, 0x1234_5678).unwrap();
    assert_eq!(
        mmu::read(&mut cpu, 0x10_0020, Size::B32, MmuIdx::Kernel).unwrap(),
        0x2020_2020
    );
    assert_eq!(
        mmu::read(&mut cpu, 0xfee0_0030, Size::B32, MmuIdx::Kernel).unwrap(),
        0xffff_ffff,
        "unassigned MMIO"
    );
    // Globally disabled: no page, RAM is RAM again, CPUID clears the APIC flag.
    msrs::write_msr(&mut cpu, msr::APIC_BASE, 0x10_0000).unwrap();
    assert_eq!(
        mmu::read(&mut cpu, 0x10_0020, Size::B32, MmuIdx::Kernel).unwrap(),
        0x1234_5678
    );
    assert_eq!(cpu.cpuid.query(1, 0, 0, 1)[3] & cpuid::edx1::APIC, 0);
}

#[test]
fn cpuid_advertises_what_is_attached() {
    let plain = machine();
    let l1 = plain.cpuid.query(1, 0, 0, 1);
    assert_eq!(l1[3] & cpuid::edx1::APIC, 0);
    assert_eq!(l1[2] & (cpuid::ecx1::X2APIC | cpuid::ecx1::TSC_DEADLINE), 0);
    let (cpu, _) = with_apic();
    let l1 = cpu.cpuid.query(1, 0, 0, 1);
    assert_ne!(l1[3] & (1 << 9), 0, "APIC");
    assert_ne!(l1[2] & (1 << 21), 0, "x2APIC");
    assert_ne!(l1[2] & (1 << 24), 0, "TSC deadline");
    assert_eq!(l1[1] >> 24, 3, "initial APIC ID");
    // Leaf 15h: the crystal (the APIC timer clock) times EBX/EAX is the TSC.
    let l15 = cpu.cpuid.query(0x15, 0, 0, 1);
    assert_eq!(u64::from(l15[2]), cpuid::CRYSTAL_HZ);
    assert_eq!(
        u64::from(l15[2]) * u64::from(l15[1]) / u64::from(l15[0]),
        cpuid::TSC_HZ
    );
}

#[test]
fn apic_msrs_reach_the_apic() {
    let (mut cpu, f) = with_apic();
    assert_eq!(msrs::read_msr(&cpu, msr::APIC_BASE).unwrap(), 0xfee0_0900);
    // Bits above MAXPHYADDR: #GP before the APIC sees them.
    let e = msrs::write_msr(&mut cpu, msr::APIC_BASE, (1 << 45) | 0xfee0_0900);
    assert_eq!(e.unwrap_err().vector, 13);
    // The APIC's own refusal is a #GP too.
    let e = msrs::write_msr(&mut cpu, msr::APIC_BASE, 0xfee0_0400);
    assert_eq!(e.unwrap_err().vector, 13);
    assert_eq!(f.st().base, 0xfee0_0900);
    assert_eq!(msrs::read_msr(&cpu, 0x802).unwrap(), 7);
    assert_eq!(msrs::read_msr(&cpu, 0x8ff).unwrap_err().vector, 13);
    msrs::write_msr(&mut cpu, 0x830, 0x1_0000_4041).unwrap();
    assert_eq!(f.st().x2, vec![(0x830, 0x1_0000_4041)]);
    // IA32_TSC_DEADLINE gets the TSC of the moment.
    let tsc = cpu.tsc();
    msrs::write_msr(&mut cpu, TSC_DEADLINE, tsc + 500).unwrap();
    assert_eq!(f.st().deadline, (tsc + 500, tsc));
    assert_eq!(msrs::read_msr(&cpu, TSC_DEADLINE).unwrap(), tsc + 500);
    // The state carries the APIC's base.
    assert_eq!(cpu.state().msr.apic_base, 0xfee0_0900);
}

#[test]
fn without_an_apic_the_x2apic_msrs_do_not_exist() {
    let mut cpu = machine();
    assert_eq!(msrs::read_msr(&cpu, 0x802).unwrap_err().vector, 13);
    assert_eq!(msrs::read_msr(&cpu, TSC_DEADLINE).unwrap_err().vector, 13);
    assert_eq!(msrs::write_msr(&mut cpu, 0x808, 0).unwrap_err().vector, 13);
    // And CR8 is its own register.
    control::mov_to_cr(&mut cpu, 8, 5).unwrap();
    assert_eq!(control::mov_from_cr(&mut cpu, 8).unwrap(), 5);
}

#[test]
fn cr8_is_the_task_priority() {
    let (mut cpu, f) = with_apic();
    control::mov_to_cr(&mut cpu, 8, 0xa).unwrap();
    assert_eq!(f.st().tpr, 0xa0, "TPR[7:4] = CR8[3:0], TPR[3:0] = 0");
    f.st().tpr = 0x5c;
    assert_eq!(control::mov_from_cr(&mut cpu, 8).unwrap(), 5);
    assert_eq!(
        control::mov_to_cr(&mut cpu, 8, 0x10).unwrap_err().vector,
        13
    );
    assert_eq!(cpu.state().cr8, 5);
    // set_state gives the APIC its TPR back.
    let mut s = cpu.state();
    s.cr8 = 3;
    cpu.set_state(s);
    assert_eq!(f.st().tpr, 0x30);
}

/// INIT keeps the TSC running as it was: its offset stays, even though time passes
/// between reading the old state and setting the new one.
#[test]
fn init_keeps_the_tsc_offset() {
    let (mut cpu, f) = with_apic();
    f.st().base = 0xfee0_0800;
    cpu.state.msr.apic_base = 0xfee0_0800;
    let clock = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let c = clock.clone();
    // A source that moves on at every read.
    cpu.tsc_source = Some(Box::new(move || {
        c.fetch_add(1000, std::sync::atomic::Ordering::SeqCst)
    }));
    cpu.set_tsc(5_000_000);
    let offset = cpu.msrs.tsc_offset;
    cpu.init_reset();
    assert_eq!(cpu.msrs.tsc_offset, offset);
}

#[test]
fn init_keeps_what_the_sdm_keeps() {
    let (mut cpu, f) = with_apic();
    // An AP (no BSP bit) in 32-bit protected mode with some state.
    f.st().base = 0xfee0_0800;
    cpu.state.msr.apic_base = 0xfee0_0800;
    cpu.state.cr0 |= ctl::CR0_PE;
    cpu.state.cr0 &= !(ctl::CR0_CD | ctl::CR0_NW);
    cpu.state.gpr[reg::RBX] = 0x55;
    cpu.state.msr.lstar = 0xffff_8000_0000_1000;
    cpu.state.fpu.fcw = 0x27f;
    cpu.state.xcr0 = 3;
    cpu.init_reset();
    let s = cpu.state();
    assert_eq!(s.cr0 & ctl::CR0_PE, 0);
    assert_eq!(s.cr0 & (ctl::CR0_CD | ctl::CR0_NW), 0, "CD/NW kept");
    assert_eq!(s.gpr[reg::RBX], 0);
    assert_eq!(s.gpr[reg::RDX], u64::from(cpu.cpuid.signature()));
    assert_eq!(s.msr.lstar, 0xffff_8000_0000_1000, "MSRs kept");
    assert_eq!(s.fpu.fcw, 0x27f, "x87 state kept");
    assert_eq!(s.xcr0, 3);
    assert!(s.events.wait_for_sipi, "an AP waits for SIPI");
    // SIPI vector 0x9A: CS = 0x9A00, base 0x9A000, IP = 0.
    cpu.start_up(0x9a);
    let s = cpu.state();
    assert!(!s.events.wait_for_sipi);
    assert_eq!(s.seg[sreg::CS].selector, 0x9a00);
    assert_eq!(s.seg[sreg::CS].base, 0x9_a000);
    assert_eq!(s.rip, 0);
    // A second SIPI is ignored.
    cpu.state.rip = 0x10;
    cpu.start_up(0x10);
    assert_eq!(cpu.state.seg[sreg::CS].selector, 0x9a00);
    // INIT of the BSP: back at the reset vector, running.
    f.st().base = 0xfee0_0900;
    cpu.state.msr.apic_base = 0xfee0_0900;
    cpu.init_reset();
    assert!(!cpu.state.events.wait_for_sipi);
    let cs = cpu.state.seg[sreg::CS];
    assert_eq!(cs.base + cpu.state.rip, 0xffff_fff0);
}
