//! SYSRET and IRET with the real x86 translator in long mode: their blocks exit
//! `Indirect` (compiled code may chain on), so an interrupt request deferred while the
//! CPU ran with IF clear must still be taken before the first instruction after the
//! one that sets IF.

use crate::irq::PicInterrupts;
use crate::tests::pc_pic;
use crate::vcpu::TcgVcpu;
use crate::Backend;
use iced_x86::code_asm::*;
use std::sync::Arc;
use vireo_core::cpu::{ctl, reg, sreg, CpuState, DescriptorTable, Segment};
use vireo_core::{A20Gate, Bus, GuestMemory, MachineControl, SystemBus, Vcpu, VcpuExit};

const KERNEL: u64 = 0x1_0000;
const USER: u64 = 0x2_0000;
const HANDLER: u64 = 0x7000;
const RSP0: u64 = 0x9_0000;

fn code(at: u64, f: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>) -> Vec<u8> {
    let mut a = CodeAssembler::new(64).unwrap();
    f(&mut a).unwrap();
    a.assemble(at).unwrap()
}

/// Long-mode state and memory (page tables, GDT, IDT with IRQ 0 to a HLT, TSS)
/// with `kernel` at [`KERNEL`] and `user` at [`USER`]; runs with IRQ 0 pending until
/// the handler halts.
fn run_long(backend: Backend, kernel: &[u8], user: &[u8]) -> (TcgVcpu, Arc<GuestMemory>) {
    let mem = Arc::new(GuestMemory::new_flat(2 << 20).unwrap());
    mem.write(KERNEL, kernel).unwrap();
    mem.write(USER, user).unwrap();
    run_on(backend, mem)
}

/// Kernel code with IF clear and IRQ 0 pending: rounds of SYSRET and SYSCALL with IF
/// clear (compiled code chains on while the request is deferred), then a SYSRET with
/// IF set in R11.
fn run_sysret(backend: Backend) -> (TcgVcpu, Arc<GuestMemory>) {
    // Five rounds of SYSRET to user code that makes a system call straight back (the
    // blocks of both sides get cached and chained), the last one with IF set in R11.
    let kernel = code(KERNEL, |a| {
        let (mut entry, mut last) = (a.create_label(), a.create_label());
        a.mov(ebx, 5)?;
        a.set_label(&mut entry)?;
        a.dec(ebx)?;
        a.jz(last)?;
        a.mov(rcx, USER)?;
        a.mov(r11, 0x002u64)?;
        a.sysretq()?;
        a.set_label(&mut last)?;
        a.mov(rcx, USER)?;
        a.mov(r11, 0x202u64)?;
        a.sysretq()
    });
    let user = code(USER, |a| {
        a.inc(rax)?;
        a.syscall()
    });
    run_long(backend, &kernel, &user)
}

fn run_on(backend: Backend, mem: Arc<GuestMemory>) -> (TcgVcpu, Arc<GuestMemory>) {
    // 1 GiB identity-mapped with user-accessible 2 MiB pages.
    mem.write_u64(0x1000, 0x2007).unwrap();
    mem.write_u64(0x2000, 0x3007).unwrap();
    for i in 0..512u64 {
        mem.write_u64(0x3000 + 8 * i, (i << 21) | 0x87).unwrap();
    }
    // GDT: null, 64-bit kernel code 0x08, kernel data 0x10.
    mem.write_u64(0x4008, 0x0020_9b00_0000_0000).unwrap();
    mem.write_u64(0x4010, 0x0000_9300_0000_0000).unwrap();
    // IDT: vector 8 (the PIC's IRQ 0), an interrupt gate to HANDLER.
    let gate = (HANDLER & 0xffff) | 0x08 << 16 | 0x8e << 40 | (HANDLER >> 16 & 0xffff) << 48;
    mem.write_u64(0x6000 + 8 * 16, gate).unwrap();
    // TSS: RSP0.
    mem.write_u64(0x8000 + 4, RSP0).unwrap();
    mem.write(HANDLER, &[0xf4]).unwrap(); // hlt

    let mut s = CpuState::reset();
    s.cr0 = ctl::CR0_PE | ctl::CR0_PG | ctl::CR0_ET | ctl::CR0_NE;
    s.cr3 = 0x1000;
    s.cr4 = ctl::CR4_PAE;
    s.efer = ctl::EFER_LME | ctl::EFER_LMA | ctl::EFER_SCE;
    for (i, seg) in s.seg.iter_mut().enumerate() {
        *seg = Segment::flat(if i == sreg::CS { 8 } else { 16 }, i == sreg::CS, true);
    }
    s.gdtr = DescriptorTable {
        base: 0x4000,
        limit: 0x17,
    };
    s.idtr = DescriptorTable {
        base: 0x6000,
        limit: 0xfff,
    };
    s.tr = Segment {
        selector: 0x18,
        base: 0x8000,
        limit: 0x67,
        type_: 0xb,
        s: false,
        ..Segment::flat(0x18, false, true)
    };
    s.msr.star = 0x23 << 48 | 0x08 << 32;
    // System calls enter after the first instruction (`mov ebx, 5`).
    s.msr.lstar = KERNEL + 5;
    s.msr.sfmask = 0x200;
    s.rflags = 2;
    s.rip = KERNEL;
    s.gpr[reg::RSP] = 0x8_0000;

    let pic = pc_pic();
    let bus = SystemBus {
        mem: mem.clone(),
        pio: Arc::new(Bus::new("pio")),
        mmio: Arc::new(Bus::new("mmio")),
        a20: A20Gate::new(),
    };
    let mut vcpu = TcgVcpu::new(bus, MachineControl::new())
        .with_interrupts(Arc::new(PicInterrupts(pic.clone())));
    vcpu.set_backend(backend);
    vcpu.set_state(&s).unwrap();
    pic.lock().set_irq(0, true);
    vcpu.set_insn_limit(Some(100_000));
    // The handler halts with IF clear: nothing can wake it.
    assert_eq!(vcpu.run().unwrap(), VcpuExit::Halted);
    (vcpu, mem)
}

fn deferred_interrupt_is_taken_right_after_sysret(backend: Backend) {
    let (mut vcpu, mem) = run_sysret(backend);
    assert_eq!(vcpu.stats.interrupts, 1);
    // The frame on RSP0: RIP, CS, RFLAGS, RSP, SS.
    let frame: Vec<u64> = (0..5)
        .map(|i| mem.read_u64(RSP0 - 40 + 8 * i).unwrap())
        .collect();
    assert_eq!(frame[0], USER, "taken before the first user instruction");
    assert_eq!(frame[1], 0x33, "from user mode");
    assert_eq!(frame[2] & 0x200, 0x200);
    assert_eq!(
        vcpu.state().unwrap().gpr[reg::RAX],
        4,
        "four user rounds before"
    );
}

#[test]
fn sysret_takes_a_deferred_interrupt_at_once() {
    deferred_interrupt_is_taken_right_after_sysret(Backend::Interp);
}

#[test]
fn sysret_takes_a_deferred_interrupt_at_once_jit() {
    deferred_interrupt_is_taken_right_after_sysret(Backend::Jit);
}

/// Rounds of IRETQ in the kernel back to its own loop with IF clear, the last one
/// (to the same, by now chained, block) with IF set: the deferred interrupt is taken
/// before that block runs again.
fn deferred_interrupt_is_taken_right_after_iret(backend: Backend) {
    let kernel = code(KERNEL, |a| {
        let (mut top, mut last) = (a.create_label(), a.create_label());
        a.mov(ebx, 5)?;
        a.set_label(&mut top)?;
        a.inc(rdx)?;
        a.dec(ebx)?;
        a.jz(last)?;
        for flags in [0x002, 0x202] {
            if flags == 0x202 {
                a.set_label(&mut last)?;
            }
            a.mov(rax, rsp)?;
            a.push(0x10)?;
            a.push(rax)?;
            a.push(flags)?;
            a.push(0x08)?;
            a.lea(rcx, ptr(top))?;
            a.push(rcx)?;
            a.iretq()?;
        }
        Ok(())
    });
    // `mov ebx, 5` is 5 bytes: the loop starts after it.
    let top_at = KERNEL + 5;
    let (mut vcpu, mem) = run_long(backend, &kernel, &[]);
    assert_eq!(vcpu.stats.interrupts, 1);
    // No stack switch: the frame is below the kernel's RSP.
    let rip = mem.read_u64(0x8_0000 - 40).unwrap();
    assert_eq!(rip, top_at, "taken before the block after IRET");
    assert_eq!(vcpu.state().unwrap().gpr[reg::RDX], 5);
}

#[test]
fn iret_takes_a_deferred_interrupt_at_once() {
    deferred_interrupt_is_taken_right_after_iret(Backend::Interp);
}

#[test]
fn iret_takes_a_deferred_interrupt_at_once_jit() {
    deferred_interrupt_is_taken_right_after_iret(Backend::Jit);
}
