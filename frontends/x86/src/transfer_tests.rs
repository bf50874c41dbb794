//! Far transfers, task switches and segment loads.

use crate::exception_tests::*;
use crate::testutil::*;
use crate::{seg, task, transfer};
use vireo_core::cpu::{flags as fl, reg, sreg};

#[test]
fn call_gate_to_ring0_copies_parameters() {
    let mut cpu = pm(3);
    // GDT entry 9 (0x48): 32-bit call gate, DPL 3, 2 parameters → K_CS:0x5000.
    w64(&cpu, GDT + 9 * 8, gate(K_CS, 0x5000, 0xc, 3, 2));
    cpu.state.gdtr.limit = 10 * 8 - 1;
    cpu.state.gpr[reg::RSP] = 0x6000 - 8;
    w32(&cpu, 0x6000 - 8, 0xaaaa);
    w32(&cpu, 0x6000 - 4, 0xbbbb);
    transfer::far_call(&mut cpu, 0x48 | 3, 0, 32, 0x1234).unwrap();
    assert_eq!(cpu.state.cpl(), 0);
    assert_eq!(cpu.state.rip, 0x5000);
    assert_eq!(cpu.state.seg[sreg::CS].selector, K_CS);
    assert_eq!(cpu.state.seg[sreg::SS].selector, K_DS);
    let sp = cpu.state.gpr[reg::RSP];
    assert_eq!(sp, 0x9000 - 24);
    let frame: Vec<u32> = (0..6).map(|i| r32(&cpu, sp + i * 4)).collect();
    assert_eq!(
        frame,
        vec![
            0x1234,
            u32::from(U_CS),
            0xaaaa,
            0xbbbb,
            0x6000 - 8,
            u32::from(U_DS)
        ]
    );
    // And back: RET 8 to ring 3 releases the parameters on both stacks.
    cpu.state.seg[sreg::DS] = seg_of(K_DS, data32(0));
    transfer::far_ret(&mut cpu, 32, 8).unwrap();
    assert_eq!(cpu.state.cpl(), 3);
    assert_eq!(cpu.state.rip, 0x1234);
    assert_eq!(cpu.state.gpr[reg::RSP], 0x6000);
    assert_eq!(cpu.state.seg[sreg::SS].selector, U_DS);
    // DS held a DPL 0 segment: nulled on the way out.
    assert!(cpu.state.seg[sreg::DS].unusable);
    assert_eq!(cpu.state.seg[sreg::ES].selector, U_DS);
}

#[test]
fn far_jmp_checks() {
    let mut cpu = pm(3);
    // Non-conforming ring-0 code from ring 3: #GP(sel).
    let f = transfer::far_jmp(&mut cpu, K_CS, 0x100, 32).unwrap_err();
    assert_eq!((f.vector, f.error_code), (13, Some(u32::from(K_CS))));
    // Null selector: #GP(0); beyond the GDT: #GP(sel).
    assert_eq!(
        transfer::far_jmp(&mut cpu, 0, 0, 32)
            .unwrap_err()
            .error_code,
        Some(0)
    );
    assert_eq!(
        transfer::far_jmp(&mut cpu, 0x200, 0, 32)
            .unwrap_err()
            .error_code,
        Some(0x200)
    );
    // A not-present segment: #NP(sel).
    w64(&cpu, GDT + 9 * 8, code32(3) & !(1 << 47));
    cpu.state.gdtr.limit = 10 * 8 - 1;
    let f = transfer::far_jmp(&mut cpu, 0x4b, 0, 32).unwrap_err();
    assert_eq!((f.vector, f.error_code), (11, Some(0x48)));
    // Same ring works and sets the accessed bit.
    transfer::far_jmp(&mut cpu, U_CS, 0x777, 32).unwrap();
    assert_eq!(cpu.state.rip, 0x777);
    assert_ne!(r64(&cpu, GDT + 0x18) & (1 << 40), 0);
}

#[test]
fn iret_to_ring3_and_to_v86() {
    let mut cpu = pm(0);
    let sp = 0x7000 - 20;
    for (i, v) in [
        0x3000u32,
        u32::from(U_CS),
        0x202 | 0x3000,
        0x6500,
        u32::from(U_DS),
    ]
    .iter()
    .enumerate()
    {
        w32(&cpu, sp + i as u64 * 4, *v);
    }
    cpu.state.gpr[reg::RSP] = sp;
    transfer::iret(&mut cpu, 32).unwrap();
    assert_eq!(cpu.state.cpl(), 3);
    assert_eq!(cpu.state.rip, 0x3000);
    assert_eq!(cpu.state.gpr[reg::RSP], 0x6500);
    assert_eq!(cpu.rflags(), 0x202 | 0x3000);
    // IRET from ring 3 cannot raise IOPL or clear IF with IOPL < CPL.
    let mut cpu = pm(3);
    cpu.set_rflags(fl::FIXED1 | fl::IF);
    let sp = 0x6000 - 12;
    w32(&cpu, sp, 0x10);
    w32(&cpu, sp + 4, u32::from(U_CS));
    w32(&cpu, sp + 8, 0x3002);
    cpu.state.gpr[reg::RSP] = sp;
    transfer::iret(&mut cpu, 32).unwrap();
    assert_eq!(cpu.rflags(), fl::FIXED1 | fl::IF);

    // To V86: EIP, CS, EFLAGS(VM), ESP, SS, ES, DS, FS, GS.
    let mut cpu = pm(0);
    let sp = 0x7000 - 36;
    let vals = [
        0x100u32,
        0x2000,
        (fl::VM | fl::IF | fl::FIXED1) as u32,
        0xfff0,
        0x3000,
        0x11,
        0x22,
        0x33,
        0x44,
    ];
    for (i, v) in vals.iter().enumerate() {
        w32(&cpu, sp + i as u64 * 4, *v);
    }
    cpu.state.gpr[reg::RSP] = sp;
    transfer::iret(&mut cpu, 32).unwrap();
    assert!(cpu.v86());
    assert_eq!(cpu.state.cpl(), 3);
    assert_eq!(cpu.state.seg[sreg::CS].base, 0x20000);
    assert_eq!(cpu.state.seg[sreg::SS].base, 0x30000);
    assert_eq!(cpu.state.seg[sreg::GS].selector, 0x44);
    assert_eq!(cpu.state.gpr[reg::RSP], 0xfff0);
    // IRET in V86 with IOPL 0: #GP(0).
    assert_eq!(transfer::iret(&mut cpu, 16).unwrap_err().vector, 13);
}

#[test]
fn real_mode_far_call_and_iret() {
    let mut cpu = machine();
    cpu.state.seg[sreg::SS] = vireo_core::cpu::Segment::real_mode(0x100, false);
    cpu.state.gpr[reg::RSP] = 0x200;
    transfer::far_call(&mut cpu, 0x2000, 0x30, 16, 0x1005).unwrap();
    assert_eq!(cpu.state.seg[sreg::CS].base, 0x20000);
    assert_eq!(r16(&cpu, 0x1000 + 0x1fe), 0xf000);
    assert_eq!(r16(&cpu, 0x1000 + 0x1fc), 0x1005);
    transfer::far_ret(&mut cpu, 16, 0).unwrap();
    assert_eq!(
        (cpu.state.seg[sreg::CS].selector, cpu.state.rip),
        (0xf000, 0x1005)
    );
    assert_eq!(cpu.state.gpr[reg::RSP], 0x200);
}

/// Second TSS for task-switch tests at 0x4000 (GDT entry 9 = 0x48).
const TSS2: u64 = 0x4000;

fn two_tasks() -> crate::cpu::X86Cpu {
    let mut cpu = pm(0);
    w64(&cpu, GDT + 9 * 8, tss32(TSS2 as u32, 0x67));
    cpu.state.gdtr.limit = 10 * 8 - 1;
    // Mark the current TSS busy in the GDT.
    w64(&cpu, GDT + 5 * 8, r64(&cpu, GDT + 5 * 8) | 2 << 40);
    // New task: EIP 0x5555, EFLAGS 0x2, EAX 0xa, ESP 0x8800, segments.
    w32(&cpu, TSS2 + 0x20, 0x5555);
    w32(&cpu, TSS2 + 0x24, 0x2);
    w32(&cpu, TSS2 + 0x28, 0xa);
    w32(&cpu, TSS2 + 0x38, 0x8800);
    for i in 0..6 {
        w16(&cpu, TSS2 + 0x48 + i * 4, if i == 1 { K_CS } else { K_DS });
    }
    cpu.state.gpr[reg::RAX] = 0x1111;
    cpu
}

#[test]
fn task_switch_by_call_and_back_by_iret() {
    let mut cpu = two_tasks();
    transfer::far_call(&mut cpu, 0x48, 0, 32, 0x1007).unwrap();
    assert_eq!(cpu.state.tr.selector, 0x48);
    assert_eq!(cpu.state.rip, 0x5555);
    assert_eq!(cpu.state.gpr[reg::RAX], 0xa);
    assert_eq!(cpu.state.gpr[reg::RSP], 0x8800);
    assert_ne!(cpu.rflags() & fl::NT, 0);
    assert_ne!(cpu.state.cr0 & vireo_core::cpu::ctl::CR0_TS, 0);
    // Back link and saved state of the old task; both TSSs busy.
    assert_eq!(r16(&cpu, TSS2), TSS_SEL);
    assert_eq!(r32(&cpu, TSS + 0x20), 0x1007);
    assert_eq!(r32(&cpu, TSS + 0x28), 0x1111);
    assert_eq!((r64(&cpu, GDT + 9 * 8) >> 40) & 0xf, 0xb);
    assert_eq!((r64(&cpu, GDT + 5 * 8) >> 40) & 0xf, 0xb);
    // IRET with NT: back to the first task, the second one no longer busy.
    cpu.state.gpr[reg::RAX] = 0xb;
    cpu.insn_pc = 0x5600;
    w16(&cpu, 0x5600, 0x00cf); // IRET at CS:0x5600 (flat CS).
    transfer::iret(&mut cpu, 32).unwrap();
    assert_eq!(cpu.state.tr.selector, TSS_SEL);
    assert_eq!(cpu.state.rip, 0x1007);
    assert_eq!(cpu.state.gpr[reg::RAX], 0x1111);
    assert_eq!(cpu.rflags() & fl::NT, 0);
    assert_eq!((r64(&cpu, GDT + 9 * 8) >> 40) & 0xf, 0x9);
    assert_eq!(r32(&cpu, TSS2 + 0x20), 0x5601, "EIP after the IRET");
    assert_eq!(r32(&cpu, TSS2 + 0x28), 0xb);
}

#[test]
fn task_switch_by_jmp_clears_old_busy() {
    let mut cpu = two_tasks();
    cpu.insn_pc = 0x800;
    // jmp far 0x48:0 (EA 00 00 00 00 48 00): 7 bytes.
    for (i, b) in [0xea, 0, 0, 0, 0, 0x48, 0].iter().enumerate() {
        cpu.bus.mem.write_u8(0x800 + i as u64, *b).unwrap();
    }
    transfer::far_jmp(&mut cpu, 0x48, 0, 32).unwrap();
    assert_eq!(cpu.state.tr.selector, 0x48);
    assert_eq!(cpu.rflags() & fl::NT, 0);
    assert_eq!((r64(&cpu, GDT + 5 * 8) >> 40) & 0xf, 0x9);
    assert_eq!((r64(&cpu, GDT + 9 * 8) >> 40) & 0xf, 0xb);
    assert_eq!(r32(&cpu, TSS + 0x20), 0x807);
    // Jumping to a busy TSS: #GP(sel).
    let f = transfer::far_jmp(&mut cpu, 0x48, 0, 32).unwrap_err();
    assert_eq!((f.vector, f.error_code), (13, Some(0x48)));
    // A bad CS in the new task faults after the switch, in the new task's context.
    let mut cpu = two_tasks();
    w16(&cpu, TSS2 + 0x4c, K_DS);
    let f = task::switch(&mut cpu, 0x48, task::TaskSource::Jmp, 0, false).unwrap_err();
    assert_eq!((f.vector, f.error_code), (10, Some(u32::from(K_DS))));
    assert_eq!(cpu.state.tr.selector, 0x48);
    assert_eq!(cpu.fault_pc, Some(0x5555));
}

#[test]
fn segment_loads() {
    let mut cpu = pm(3);
    // Ring-0 data from ring 3: #GP(sel); SS with RPL != CPL: #GP(sel).
    let f = seg::load_seg(&mut cpu, sreg::DS, K_DS).unwrap_err();
    assert_eq!((f.vector, f.error_code), (13, Some(u32::from(K_DS))));
    let f = seg::load_seg(&mut cpu, sreg::SS, U_DS & !3).unwrap_err();
    assert_eq!(f.error_code, Some(u32::from(U_DS & !3)));
    // Null into DS is fine, into SS is #GP(0).
    seg::load_seg(&mut cpu, sreg::DS, 0).unwrap();
    assert!(cpu.state.seg[sreg::DS].unusable);
    assert_eq!(
        seg::load_seg(&mut cpu, sreg::SS, 0).unwrap_err().error_code,
        Some(0)
    );
    seg::load_seg(&mut cpu, sreg::SS, U_DS).unwrap();
    assert!(cpu.state.events.interrupt_shadow);
    // Execute-only code into DS: #GP; readable code is fine.
    w64(&cpu, GDT + 9 * 8, desc(0, 0xfffff, 0xf8, 0xc));
    cpu.state.gdtr.limit = 10 * 8 - 1;
    assert_eq!(
        seg::load_seg(&mut cpu, sreg::ES, 0x4b)
            .unwrap_err()
            .error_code,
        Some(0x48)
    );
    seg::load_seg(&mut cpu, sreg::ES, U_CS).unwrap();
    // Real mode: base = selector << 4, limit kept.
    let mut cpu = machine();
    cpu.state.seg[sreg::DS].limit = 0xffff_ffff;
    seg::load_seg(&mut cpu, sreg::DS, 0x1234).unwrap();
    assert_eq!(cpu.state.seg[sreg::DS].base, 0x12340);
    assert_eq!(cpu.state.seg[sreg::DS].limit, 0xffff_ffff);
}

#[test]
fn ltr_lldt_lar_lsl_verr() {
    let mut cpu = pm(0);
    cpu.state.tr = Default::default();
    seg::ltr(&mut cpu, TSS_SEL).unwrap();
    assert_eq!((r64(&cpu, GDT + 5 * 8) >> 40) & 0xf, 0xb);
    // Busy now: LTR again is #GP.
    assert_eq!(
        seg::ltr(&mut cpu, TSS_SEL).unwrap_err().error_code,
        Some(u32::from(TSS_SEL))
    );
    // LDT at 0x6000 in GDT entry 9.
    w64(&cpu, GDT + 9 * 8, desc(0x6000, 0xff, 0x82, 0));
    cpu.state.gdtr.limit = 10 * 8 - 1;
    seg::lldt(&mut cpu, 0x48).unwrap();
    assert_eq!(cpu.state.ldtr.base, 0x6000);
    w64(&cpu, 0x6008, data32(3));
    seg::load_seg(&mut cpu, sreg::FS, 0x0f).unwrap();
    assert_eq!(cpu.state.seg[sreg::FS].selector, 0x0f);
    // LAR/LSL.
    let v = seg::lar_lsl(&mut cpu, 0, U_CS).unwrap();
    assert_eq!(v, 1 << 63 | (code32(3) >> 32) & 0x00f0_ff00);
    assert_eq!(
        seg::lar_lsl(&mut cpu, 1, U_CS).unwrap(),
        1 << 63 | 0xffff_ffff
    );
    assert_eq!(seg::lar_lsl(&mut cpu, 1, 0x200).unwrap(), 0);
    // From ring 3, a ring-0 segment is invisible.
    let mut cpu3 = pm(3);
    assert_eq!(seg::lar_lsl(&mut cpu3, 0, K_DS).unwrap(), 0);
    assert_eq!(seg::verify(&mut cpu3, 1, U_DS).unwrap(), 1);
    assert_eq!(seg::verify(&mut cpu3, 1, U_CS).unwrap(), 0);
    assert_eq!(seg::verify(&mut cpu3, 0, U_CS).unwrap(), 1);
}

#[test]
fn long_mode_call_gate_and_iretq() {
    let mut cpu = lm(3);
    // 64-bit call gate at GDT 0x48 (16 bytes), DPL 3 → K_CS64:0xffff_8000_0000_2000.
    let off = 0xffff_8000_0000_2000u64;
    w64(&cpu, GDT + 9 * 8, gate(K_CS64, off as u32, 0xc, 3, 0));
    w64(&cpu, GDT + 10 * 8, off >> 32);
    cpu.state.gdtr.limit = 11 * 8 - 1;
    transfer::far_call(&mut cpu, 0x4b, 0, 64, 0x40_0010).unwrap();
    assert_eq!(cpu.state.rip, off);
    assert_eq!(cpu.state.cpl(), 0);
    assert_eq!(cpu.state.gpr[reg::RSP], 0x9000 - 32);
    assert_eq!(r64(&cpu, 0x9000 - 8), u64::from(U_DS));
    assert_eq!(r64(&cpu, 0x9000 - 16), 0x7008);
    assert_eq!(r64(&cpu, 0x9000 - 24), u64::from(U_CS64));
    assert_eq!(r64(&cpu, 0x9000 - 32), 0x40_0010);
    // IRETQ back to ring 3 through a hand-made frame.
    let sp = 0x8000u64;
    for (i, v) in [
        0x40_0020u64,
        u64::from(U_CS64),
        0x202,
        0x7100,
        u64::from(U_DS),
    ]
    .iter()
    .enumerate()
    {
        w64(&cpu, sp + i as u64 * 8, *v);
    }
    cpu.state.gpr[reg::RSP] = sp;
    transfer::iret(&mut cpu, 64).unwrap();
    assert_eq!(cpu.state.cpl(), 3);
    assert_eq!(
        (cpu.state.rip, cpu.state.gpr[reg::RSP]),
        (0x40_0020, 0x7100)
    );
    assert_eq!(cpu.state.seg[sreg::SS].selector, U_DS);
}

#[test]
fn exception_through_idt_task_gate() {
    let mut cpu = two_tasks();
    set_idt(&cpu, 13, gate(0x48, 0, 5, 0, 0));
    cpu.deliver_exception(vireo_core::exec::Fault::with_error(13, 0x10), 0x1003)
        .unwrap();
    assert_eq!(cpu.state.tr.selector, 0x48);
    assert_eq!(cpu.state.rip, 0x5555);
    assert_ne!(cpu.rflags() & fl::NT, 0);
    assert_eq!(r16(&cpu, TSS2), TSS_SEL);
    // The faulting EIP is saved in the old TSS; the error code is on the new stack.
    assert_eq!(r32(&cpu, TSS + 0x20), 0x1003);
    assert_eq!(cpu.state.gpr[reg::RSP], 0x8800 - 4);
    assert_eq!(r32(&cpu, 0x8800 - 4), 0x10);
}

#[test]
fn call_to_16bit_tss() {
    let mut cpu = pm(0);
    w64(&cpu, GDT + 9 * 8, desc(TSS2 as u32, 0x2b, 0x81, 0));
    cpu.state.gdtr.limit = 10 * 8 - 1;
    w64(&cpu, GDT + 5 * 8, r64(&cpu, GDT + 5 * 8) | 2 << 40);
    w16(&cpu, TSS2 + 0x0e, 0x4321);
    w16(&cpu, TSS2 + 0x10, 0x0002);
    w16(&cpu, TSS2 + 0x12, 0xaaaa);
    w16(&cpu, TSS2 + 0x1a, 0x7700);
    for (i, s) in [K_DS, K_CS, K_DS, K_DS].iter().enumerate() {
        w16(&cpu, TSS2 + 0x22 + i as u64 * 2, *s);
    }
    cpu.state.gpr[reg::RAX] = 0x1234_5678;
    transfer::far_call(&mut cpu, 0x48, 0, 32, 0x2000).unwrap();
    assert_eq!(cpu.state.rip, 0x4321);
    // 16-bit task: only the low halves of the registers are loaded.
    assert_eq!(cpu.state.gpr[reg::RAX], 0x1234_aaaa);
    assert_eq!(cpu.state.gpr[reg::RSP] & 0xffff, 0x7700);
    assert!(cpu.state.seg[sreg::FS].unusable);
    assert_eq!(r16(&cpu, TSS2), TSS_SEL);
    assert_eq!((r64(&cpu, GDT + 9 * 8) >> 40) & 0xf, 0x3);
}
