//! Port I/O with its protection (IOPL and the TSS I/O permission bitmap) and the
//! flag instructions with IOPL rules: CLI, STI, PUSHF, POPF.

use crate::cpu::X86Cpu;
use crate::mmu::{self, cr4};
use crate::seg::gp0;
use crate::transfer::load_flags;
use vireo_core::cpu::{ctl, flags as fl};
use vireo_core::exec::Fault;

/// Checks that the current privilege may access ports `[port, port+size)`: always in
/// real mode and at CPL <= IOPL outside V86; otherwise the TSS I/O permission bitmap
/// decides (#GP(0) when a bit is set, the TSS is not a 32-bit one or the bitmap is
/// beyond the TSS limit).
pub fn check_io(cpu: &mut X86Cpu, port: u16, size: usize) -> Result<(), Fault> {
    if cpu.state.cr0 & ctl::CR0_PE == 0 {
        return Ok(());
    }
    if !cpu.v86() && cpu.state.cpl() <= cpu.iopl() {
        return Ok(());
    }
    let tr = cpu.state.tr;
    if tr.unusable || !tr.present || tr.type_ & 8 == 0 || tr.limit < 0x67 {
        return Err(gp0());
    }
    let map = mmu::read_sys(cpu, tr.base.wrapping_add(0x66), 2)?;
    let off = map + u64::from(port / 8);
    if off + 1 > u64::from(tr.limit) {
        return Err(gp0());
    }
    let bits = mmu::read_sys(cpu, tr.base.wrapping_add(off), 2)?;
    let mask = ((1u64 << size) - 1) << (port % 8);
    if bits & mask != 0 {
        return Err(gp0());
    }
    Ok(())
}

fn io_size(size: u64) -> usize {
    match size {
        1 => 1,
        2 => 2,
        _ => 4,
    }
}

/// The `In` helper.
pub fn port_in(cpu: &mut X86Cpu, port: u64, size: u64) -> Result<u64, Fault> {
    let size = io_size(size);
    let port = port as u16;
    check_io(cpu, port, size)?;
    let mut b = [0u8; 4];
    cpu.bus.pio.read(u64::from(port), &mut b[..size]);
    Ok(u64::from(u32::from_le_bytes(b)))
}

/// The `Out` helper.
pub fn port_out(cpu: &mut X86Cpu, port: u64, size: u64, value: u64) -> Result<(), Fault> {
    let size = io_size(size);
    let port = port as u16;
    check_io(cpu, port, size)?;
    cpu.bus
        .pio
        .write(u64::from(port), &value.to_le_bytes()[..size]);
    // A port write may ask the machine to stop (isa-debug-exit, ACPI S5, a reset) or
    // change what the run loop must look at (an interrupt unmasked): end the block at
    // the next instruction boundary so that the run loop sees it before the guest runs
    // on.
    cpu.stop = true;
    Ok(())
}

/// Whether the virtual-interrupt extensions apply: VME in V86 mode, PVI at CPL 3.
fn virtual_if(cpu: &X86Cpu) -> bool {
    if cpu.v86() {
        cpu.state.cr4 & cr4::VME != 0
    } else {
        cpu.protected() && cpu.state.cpl() == 3 && cpu.state.cr4 & cr4::PVI != 0
    }
}

/// Whether IF may be changed directly (real mode, CPL <= IOPL, V86 with IOPL 3).
fn if_allowed(cpu: &X86Cpu) -> bool {
    if cpu.state.cr0 & ctl::CR0_PE == 0 {
        true
    } else if cpu.v86() {
        cpu.iopl() == 3
    } else {
        cpu.state.cpl() <= cpu.iopl()
    }
}

/// The `Cli` helper.
pub fn cli(cpu: &mut X86Cpu) -> Result<(), Fault> {
    if if_allowed(cpu) {
        cpu.state.rflags &= !fl::IF;
    } else if virtual_if(cpu) {
        cpu.state.rflags &= !fl::VIF;
    } else {
        return Err(gp0());
    }
    Ok(())
}

/// The `Sti` helper: IF 0 → 1 starts an interrupt shadow.
pub fn sti(cpu: &mut X86Cpu) -> Result<(), Fault> {
    if if_allowed(cpu) {
        if cpu.state.rflags & fl::IF == 0 {
            cpu.state.events.interrupt_shadow = true;
        }
        cpu.state.rflags |= fl::IF;
    } else if virtual_if(cpu) && cpu.state.rflags & fl::VIP == 0 {
        cpu.state.rflags |= fl::VIF;
    } else {
        return Err(gp0());
    }
    Ok(())
}

/// The `Pushf` helper: the image PUSHF stores.
pub fn pushf(cpu: &mut X86Cpu, opsize: u64) -> Result<u64, Fault> {
    let f = cpu.rflags();
    if cpu.v86() && cpu.iopl() < 3 {
        if cpu.state.cr4 & cr4::VME != 0 && opsize == 16 {
            let mut v = (f & 0xffff & !fl::IF) | fl::IOPL;
            if f & fl::VIF != 0 {
                v |= fl::IF;
            }
            return Ok(v);
        }
        return Err(gp0());
    }
    let v = f & !(fl::VM | fl::RF);
    Ok(match opsize {
        16 => v & 0xffff,
        32 => v & 0xffff_ffff,
        _ => v,
    })
}

/// The `Popf` helper: the CPL/IOPL rules for IF and IOPL; VM, VIF, VIP unchanged;
/// RF cleared.
pub fn popf(cpu: &mut X86Cpu, value: u64, opsize: u64) -> Result<(), Fault> {
    let base = fl::CF
        | fl::PF
        | fl::AF
        | fl::ZF
        | fl::SF
        | fl::OF
        | fl::DF
        | fl::TF
        | fl::NT
        | fl::AC
        | fl::ID;
    let mut mask = base;
    if cpu.v86() {
        if cpu.iopl() < 3 {
            if cpu.state.cr4 & cr4::VME != 0 && opsize == 16 {
                if value & fl::TF != 0 || (value & fl::IF != 0 && cpu.state.rflags & fl::VIP != 0) {
                    return Err(gp0());
                }
                let vif = if value & fl::IF != 0 { fl::VIF } else { 0 };
                load_flags(cpu, value, base & 0xffff);
                cpu.state.rflags = (cpu.state.rflags & !fl::VIF) | vif;
                cpu.state.rflags &= !fl::RF;
                return Ok(());
            }
            return Err(gp0());
        }
        mask |= fl::IF;
    } else {
        let cpl = cpu.state.cpl();
        if cpl == 0 {
            mask |= fl::IOPL;
        }
        if cpl <= cpu.iopl() {
            mask |= fl::IF;
        }
    }
    if opsize == 16 {
        mask &= 0xffff;
    }
    load_flags(cpu, value, mask | fl::RF);
    cpu.state.rflags &= !fl::RF;
    Ok(())
}
