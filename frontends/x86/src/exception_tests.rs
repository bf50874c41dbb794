//! Exception and interrupt delivery tests: stack frames byte for byte in real,
//! protected (same ring, ring 3 → 0, V86 → 0) and long mode (IST), #DF, triple fault.

use crate::cpu::X86Cpu;
use crate::exception::Shutdown;
use crate::testutil::*;
use vireo_core::cpu::{ctl, flags as fl, reg, sreg};
use vireo_core::exec::Fault;

pub const K_CS: u16 = 0x08;
pub const K_DS: u16 = 0x10;
pub const U_CS: u16 = 0x1b;
pub const U_DS: u16 = 0x23;
pub const TSS_SEL: u16 = 0x28;
pub const K_CS64: u16 = 0x30;
pub const U_CS64: u16 = 0x3b;
pub const TSS64_SEL: u16 = 0x40;

/// The standard test GDT.
pub fn std_gdt(cpu: &mut X86Cpu) {
    set_gdt(
        cpu,
        &[
            0,
            code32(0),
            data32(0),
            code32(3),
            data32(3),
            tss32(TSS as u32, 0x67 + 0x2000 / 8 + 1),
            code64(0),
            code64(3),
            desc(TSS as u32, 0x67, 0x89, 0),
            0,
        ],
    );
}

/// Protected mode at ring `cpl` with the standard GDT, TSS (ESP0 = 0x9000, SS0 =
/// K_DS) and an IDT at [`IDT`] with 256 entries.
pub fn pm(cpl: u8) -> X86Cpu {
    let mut cpu = machine();
    std_gdt(&mut cpu);
    if cpl == 3 {
        protected32(&mut cpu, U_CS, U_DS);
    } else {
        protected32(&mut cpu, K_CS, K_DS);
    }
    cpu.state.idtr.base = IDT;
    cpu.state.idtr.limit = 256 * 8 - 1;
    cpu.state.tr = seg_of(TSS_SEL, tss32(TSS as u32, 0x67 + 0x2000 / 8 + 1));
    cpu.state.tr.type_ = 0xb;
    w32(&cpu, TSS + 4, 0x9000);
    w16(&cpu, TSS + 8, K_DS);
    cpu.state.gpr[reg::RSP] = 0x7000;
    cpu
}

pub fn set_idt(cpu: &X86Cpu, vector: u8, g: u64) {
    w64(cpu, IDT + u64::from(vector) * 8, g);
}

#[test]
fn real_mode_ivt() {
    let mut cpu = machine();
    cpu.state.idtr.base = 0;
    cpu.state.idtr.limit = 0x3ff;
    w32(&cpu, 0x40, 0x1234_5678);
    cpu.state.seg[sreg::CS] = vireo_core::cpu::Segment::real_mode(0x100, true);
    cpu.state.seg[sreg::SS] = vireo_core::cpu::Segment::real_mode(0x200, false);
    cpu.state.gpr[reg::RSP] = 0x100;
    cpu.state.rip = 0x55;
    cpu.set_rflags(fl::FIXED1 | fl::IF | fl::TF | fl::CF);
    cpu.state.events.halted = true;
    cpu.deliver_interrupt(0x10).unwrap();
    assert_eq!(cpu.state.gpr[reg::RSP], 0xfa);
    assert_eq!(r16(&cpu, 0x20fa), 0x55);
    assert_eq!(r16(&cpu, 0x20fc), 0x100);
    assert_eq!(
        r16(&cpu, 0x20fe),
        (fl::FIXED1 | fl::IF | fl::TF | fl::CF) as u16
    );
    assert_eq!(cpu.state.seg[sreg::CS].selector, 0x1234);
    assert_eq!(cpu.state.seg[sreg::CS].base, 0x12340);
    assert_eq!(cpu.state.rip, 0x5678);
    assert_eq!(cpu.rflags() & (fl::IF | fl::TF), 0);
    assert_eq!(cpu.rflags() & fl::CF, fl::CF);
    assert!(!cpu.state.events.halted);
}

#[test]
fn protected_same_ring_fault_with_error_code() {
    let mut cpu = pm(0);
    set_idt(&cpu, 13, gate(K_CS, 0x4000, 0xe, 0, 0));
    cpu.set_rflags(fl::FIXED1 | fl::IF);
    cpu.deliver_exception(Fault::with_error(13, 0x28), 0x1234)
        .unwrap();
    assert_eq!(cpu.state.gpr[reg::RSP], 0x7000 - 16);
    assert_eq!(r32(&cpu, 0x7000 - 16), 0x28);
    assert_eq!(r32(&cpu, 0x7000 - 12), 0x1234);
    assert_eq!(r32(&cpu, 0x7000 - 8), u32::from(K_CS));
    // Fault-class: RF set in the image.
    assert_eq!(
        u64::from(r32(&cpu, 0x7000 - 4)),
        fl::FIXED1 | fl::IF | fl::RF
    );
    assert_eq!(cpu.state.rip, 0x4000);
    assert_eq!(cpu.rflags() & fl::IF, 0);
}

#[test]
fn ring3_to_ring0_stack_switch() {
    let mut cpu = pm(3);
    set_idt(&cpu, 0x80, gate(K_CS, 0x4000, 0xf, 3, 0));
    cpu.set_rflags(fl::FIXED1 | fl::IF);
    cpu.state.gpr[reg::RSP] = 0x6000;
    crate::exception::soft_int(&mut cpu, 0x80, 0x2002, 0).unwrap();
    assert_eq!(cpu.state.cpl(), 0);
    assert_eq!(cpu.state.seg[sreg::SS].selector, K_DS);
    assert_eq!(cpu.state.gpr[reg::RSP], 0x9000 - 20);
    let words: Vec<u32> = (0..5).map(|i| r32(&cpu, 0x9000 - 20 + i * 4)).collect();
    assert_eq!(
        words,
        vec![
            0x2002,
            u32::from(U_CS),
            (fl::FIXED1 | fl::IF) as u32,
            0x6000,
            u32::from(U_DS)
        ]
    );
    // Trap gate: IF kept.
    assert_eq!(cpu.rflags() & fl::IF, fl::IF);
    // Software INT through a DPL 0 gate from ring 3: #GP(vector*8+2).
    let mut cpu = pm(3);
    set_idt(&cpu, 0x81, gate(K_CS, 0x4000, 0xe, 0, 0));
    let f = crate::exception::soft_int(&mut cpu, 0x81, 0, 0).unwrap_err();
    assert_eq!((f.vector, f.error_code), (13, Some(0x81 * 8 + 2)));
    assert_eq!(cpu.state.cpl(), 3);
    // ... but a hardware interrupt may use it (EXT).
    cpu.set_rflags(fl::FIXED1 | fl::IF);
    cpu.deliver_interrupt(0x81).unwrap();
    assert_eq!(cpu.state.cpl(), 0);
}

#[test]
fn v86_to_ring0_pushes_data_segments() {
    let mut cpu = pm(0);
    set_idt(&cpu, 0x20, gate(K_CS, 0x4000, 0xe, 0, 0));
    cpu.set_rflags(fl::FIXED1 | fl::VM | fl::IF);
    for (r, s) in [
        (0, 0x11u16),
        (1, 0x22),
        (2, 0x33),
        (3, 0x44),
        (4, 0x55),
        (5, 0x66),
    ] {
        cpu.state.seg[r] = crate::seg::real_segment(&cpu.state.seg[r], s, true);
    }
    cpu.state.gpr[reg::RSP] = 0xfffe;
    cpu.state.rip = 0x100;
    cpu.deliver_interrupt(0x20).unwrap();
    let top = 0x9000u64;
    let frame: Vec<u32> = (1..=9).map(|i| r32(&cpu, top - i * 4)).collect();
    // GS, FS, DS, ES, SS, ESP, EFLAGS, CS, EIP from the top down.
    assert_eq!(
        frame,
        vec![
            0x66,
            0x55,
            0x44,
            0x11,
            0x33,
            0xfffe,
            (fl::FIXED1 | fl::VM | fl::IF) as u32,
            0x22,
            0x100
        ]
    );
    assert_eq!(cpu.state.rflags & fl::VM, 0);
    assert_eq!(cpu.state.cpl(), 0);
    for r in [sreg::ES, sreg::DS, sreg::FS, sreg::GS] {
        assert!(cpu.state.seg[r].unusable && cpu.state.seg[r].selector == 0);
    }
    // INT n in V86 with IOPL < 3: #GP(0).
    cpu.set_rflags(fl::FIXED1 | fl::VM);
    let f = crate::exception::soft_int(&mut cpu, 0x20, 0, 0).unwrap_err();
    assert_eq!((f.vector, f.error_code), (13, Some(0)));
}

/// Long mode at ring `cpl` with a 64-bit TSS (RSP0 = 0x9000, IST1 = 0xa008) and an
/// IDT of 16-byte gates.
pub fn lm(cpl: u8) -> X86Cpu {
    let mut cpu = machine();
    std_gdt(&mut cpu);
    cpu.state.cr0 = ctl::CR0_PE | ctl::CR0_ET;
    cpu.state.efer = ctl::EFER_LME | ctl::EFER_LMA | ctl::EFER_SCE;
    cpu.state.cr4 = crate::mmu::cr4::PAE;
    let (cs, ds) = if cpl == 3 {
        (U_CS64, U_DS)
    } else {
        (K_CS64, K_DS)
    };
    for r in 0..6 {
        cpu.state.seg[r] = seg_of(ds, data32(cpl));
    }
    cpu.state.seg[sreg::CS] = seg_of(cs, code64(cpl));
    cpu.set_rflags(fl::FIXED1);
    cpu.state.idtr.base = IDT;
    cpu.state.idtr.limit = 256 * 16 - 1;
    cpu.state.tr = seg_of(TSS64_SEL, desc(TSS as u32, 0x67, 0x8b, 0));
    w64(&cpu, TSS + 4, 0x9000);
    w64(&cpu, TSS + 0x24, 0xa008);
    cpu.state.gpr[reg::RSP] = 0x7008;
    cpu
}

pub fn set_idt64(cpu: &X86Cpu, vector: u8, sel: u16, offset: u64, kind: u8, dpl: u8, ist: u8) {
    let lo = gate(sel, offset as u32, kind, dpl, 0) | u64::from(ist) << 32;
    w64(cpu, IDT + u64::from(vector) * 16, lo);
    w64(cpu, IDT + u64::from(vector) * 16 + 8, offset >> 32);
}

#[test]
fn long_mode_ring3_to_ring0_with_ist() {
    let mut cpu = lm(3);
    set_idt64(&cpu, 14, K_CS64, 0xffff_8000_0000_1000, 0xe, 0, 1);
    cpu.set_rflags(fl::FIXED1 | fl::IF);
    let f = Fault {
        vector: 14,
        error_code: Some(6),
        address: Some(0xdead_0000),
    };
    cpu.deliver_exception(f, 0x40_1000).unwrap();
    assert_eq!(cpu.state.cr2, 0xdead_0000);
    // IST1 = 0xa008, aligned down to 0xa000.
    assert_eq!(cpu.state.gpr[reg::RSP], 0xa000 - 48);
    let frame: Vec<u64> = (0..6).map(|i| r64(&cpu, 0xa000 - 48 + i * 8)).collect();
    assert_eq!(
        frame,
        vec![
            6,
            0x40_1000,
            u64::from(U_CS64),
            fl::FIXED1 | fl::IF | fl::RF,
            0x7008,
            u64::from(U_DS)
        ]
    );
    assert_eq!(cpu.state.rip, 0xffff_8000_0000_1000);
    assert_eq!(cpu.state.cpl(), 0);
    assert!(cpu.state.seg[sreg::SS].unusable);
    assert_eq!(cpu.state.seg[sreg::SS].selector, 0);
    // Same ring without IST: aligned current stack, SS:RSP still pushed.
    let mut cpu = lm(0);
    set_idt64(&cpu, 0x30, K_CS64, 0x5000, 0xe, 0, 0);
    cpu.deliver_interrupt(0x30).unwrap();
    assert_eq!(cpu.state.gpr[reg::RSP], 0x7000 - 40);
    assert_eq!(r64(&cpu, 0x7000 - 8), u64::from(K_DS));
    assert_eq!(r64(&cpu, 0x7000 - 16), 0x7008);
}

#[test]
fn double_fault_and_triple_fault() {
    // #GP's gate is not present: #NP during #GP delivery → #DF.
    let mut cpu = pm(0);
    set_idt(&cpu, 13, gate(K_CS, 0x4000, 0xe, 0, 0) & !(1 << 47));
    set_idt(&cpu, 8, gate(K_CS, 0x8888, 0xe, 0, 0));
    cpu.deliver_exception(Fault::with_error(13, 0), 0x1000)
        .unwrap();
    assert_eq!(cpu.state.rip, 0x8888);
    assert_eq!(r32(&cpu, 0x7000 - 16), 0, "#DF error code");
    assert_eq!(r32(&cpu, 0x7000 - 12), 0x1000);
    // A benign exception whose delivery faults: the fault is delivered instead.
    let mut cpu = pm(0);
    set_idt(&cpu, 13, gate(K_CS, 0x4444, 0xe, 0, 0));
    cpu.deliver_exception(Fault::new(6), 0x1000).unwrap();
    assert_eq!(cpu.state.rip, 0x4444);
    assert_eq!(
        r32(&cpu, 0x7000 - 16),
        6 * 8 + 2 + 1,
        "IDT | EXT error code"
    );
    // #PF during #PF delivery → #DF; a #DF that faults → shutdown.
    let mut cpu = pm(0);
    cpu.state.idtr.limit = 15 * 8 - 1;
    set_idt(&cpu, 14, gate(K_CS, 0x4444, 0xe, 0, 0));
    cpu.state.gpr[reg::RSP] = 0x7000;
    // Paging with nothing mapped but the IDT/GDT page: the push faults.
    let pd = 0x10000u64;
    w32(&cpu, pd, 0x11000 | 3);
    w32(&cpu, 0x11000 + 8, 0x2000 | 1);
    w32(&cpu, 0x11000 + 4, 0x1000 | 1);
    cpu.state.cr3 = pd;
    cpu.state.cr0 |= ctl::CR0_PG;
    let f = Fault {
        vector: 14,
        error_code: Some(0),
        address: Some(0x5000),
    };
    assert_eq!(cpu.deliver_exception(f, 0), Err(Shutdown));
    assert_eq!(cpu.state.cr2, 0x6ffc, "CR2 of the nested fault");
    // Empty IDT in real mode: #GP → #DF → shutdown.
    let mut cpu = machine();
    cpu.state.idtr.limit = 0;
    assert_eq!(cpu.deliver_exception(Fault::new(0), 0), Err(Shutdown));
}

#[test]
fn task_gate_in_idt_and_interrupt_shadow() {
    let mut cpu = pm(0);
    cpu.state.events.interrupt_shadow = true;
    cpu.set_rflags(fl::FIXED1 | fl::IF);
    assert!(!cpu.interrupts_enabled());
    cpu.state.events.interrupt_shadow = false;
    assert!(cpu.interrupts_enabled());
    // Interrupt gate with a bad selector: #GP(sel | EXT) is delivered.
    set_idt(&cpu, 0x40, gate(0x80, 0x4000, 0xe, 0, 0));
    set_idt(&cpu, 13, gate(K_CS, 0x1313, 0xe, 0, 0));
    cpu.deliver_interrupt(0x40).unwrap();
    assert_eq!(cpu.state.rip, 0x1313);
    assert_eq!(r32(&cpu, 0x7000 - 16), 0x81);
}
