//! Fast system calls (SYSCALL/SYSRET, SYSENTER/SYSEXIT), SWAPGS and the FS/GS base
//! instructions.

use crate::cpu::X86Cpu;
use crate::mmu::{self, cr4};
use crate::seg::{gp0, ud};
use vireo_core::cpu::{ctl, flags as fl, reg, sreg, Segment};
use vireo_core::exec::Fault;

/// A flat segment as SYSCALL & co. load it (their descriptors are not read).
fn flat(sel: u16, code: bool, long: bool, dpl: u8) -> Segment {
    let mut s = Segment::flat(sel, code, long);
    s.dpl = dpl;
    s
}

fn is_amd(cpu: &X86Cpu) -> bool {
    &cpu.cpuid.vendor == b"AuthenticAMD"
}

/// SYSCALL.
pub fn syscall(cpu: &mut X86Cpu, next_pc: u64) -> Result<(), Fault> {
    if cpu.state.efer & ctl::EFER_SCE == 0 || cpu.state.cr0 & ctl::CR0_PE == 0 {
        return Err(ud());
    }
    let star = cpu.state.msr.star;
    let sel = ((star >> 32) & 0xfffc) as u16;
    let flags = cpu.rflags();
    if cpu.state.long_mode() {
        cpu.state.gpr[reg::RCX] = next_pc;
        cpu.state.gpr[11] = flags & !fl::RF;
        let target = if cpu.long64() {
            cpu.state.msr.lstar
        } else {
            cpu.state.msr.cstar
        };
        cpu.state.seg[sreg::CS] = flat(sel, true, true, 0);
        cpu.state.seg[sreg::SS] = flat(sel.wrapping_add(8), false, true, 0);
        cpu.set_rflags(flags & !(cpu.state.msr.sfmask & 0xffff_ffff) & !fl::RF);
        cpu.state.rip = target;
    } else {
        cpu.state.gpr[reg::RCX] = next_pc & 0xffff_ffff;
        cpu.state.seg[sreg::CS] = flat(sel, true, false, 0);
        cpu.state.seg[sreg::SS] = flat(sel.wrapping_add(8), false, false, 0);
        cpu.set_rflags(flags & !(fl::IF | fl::VM | fl::RF));
        cpu.state.rip = star & 0xffff_ffff;
    }
    Ok(())
}

/// SYSRET (opsize 64: to 64-bit code; else to 32-bit code).
pub fn sysret(cpu: &mut X86Cpu, opsize: u64) -> Result<(), Fault> {
    if cpu.state.efer & ctl::EFER_SCE == 0 {
        return Err(ud());
    }
    if !cpu.protected() || cpu.state.cpl() != 0 {
        return Err(gp0());
    }
    let sel = ((cpu.state.msr.star >> 48) & 0xfffc) as u16;
    let rcx = cpu.state.gpr[reg::RCX];
    if cpu.state.long_mode() {
        if opsize == 64 {
            if !mmu::is_canonical(rcx) {
                return Err(gp0());
            }
            cpu.state.seg[sreg::CS] = flat(sel.wrapping_add(16) | 3, true, true, 3);
            cpu.state.rip = rcx;
        } else {
            cpu.state.seg[sreg::CS] = flat(sel | 3, true, false, 3);
            cpu.state.rip = rcx & 0xffff_ffff;
        }
        let r11 = cpu.state.gpr[11];
        cpu.set_rflags((r11 & !(fl::RF | fl::VM)) | fl::FIXED1);
    } else {
        cpu.state.seg[sreg::CS] = flat(sel | 3, true, false, 3);
        cpu.state.rip = rcx & 0xffff_ffff;
        cpu.state.rflags |= fl::IF;
    }
    cpu.state.seg[sreg::SS] = flat(sel.wrapping_add(8) | 3, false, false, 3);
    Ok(())
}

/// SYSENTER (#UD in long mode on AMD).
pub fn sysenter(cpu: &mut X86Cpu) -> Result<(), Fault> {
    let lma = cpu.state.long_mode();
    if lma && is_amd(cpu) {
        return Err(ud());
    }
    let cs = (cpu.state.msr.sysenter_cs & 0xfffc) as u16;
    if cpu.state.cr0 & ctl::CR0_PE == 0 || cs == 0 {
        return Err(gp0());
    }
    cpu.state.rflags &= !(fl::VM | fl::IF | fl::RF);
    cpu.state.seg[sreg::CS] = flat(cs, true, lma, 0);
    cpu.state.seg[sreg::SS] = flat(cs.wrapping_add(8), false, false, 0);
    cpu.state.gpr[reg::RSP] = cpu.state.msr.sysenter_esp;
    cpu.state.rip = cpu.state.msr.sysenter_eip;
    if !lma {
        cpu.state.gpr[reg::RSP] &= 0xffff_ffff;
        cpu.state.rip &= 0xffff_ffff;
    }
    Ok(())
}

/// SYSEXIT (opsize 64 returns to 64-bit code).
pub fn sysexit(cpu: &mut X86Cpu, opsize: u64) -> Result<(), Fault> {
    if cpu.state.long_mode() && is_amd(cpu) {
        return Err(ud());
    }
    let cs = (cpu.state.msr.sysenter_cs & 0xfffc) as u16;
    if !cpu.protected() || cpu.state.cpl() != 0 || cs == 0 {
        return Err(gp0());
    }
    let (rcx, rdx) = (cpu.state.gpr[reg::RCX], cpu.state.gpr[reg::RDX]);
    if opsize == 64 {
        if !mmu::is_canonical(rcx) || !mmu::is_canonical(rdx) {
            return Err(gp0());
        }
        cpu.state.seg[sreg::CS] = flat(cs.wrapping_add(32) | 3, true, true, 3);
        cpu.state.seg[sreg::SS] = flat(cs.wrapping_add(40) | 3, false, false, 3);
        cpu.state.gpr[reg::RSP] = rcx;
        cpu.state.rip = rdx;
    } else {
        cpu.state.seg[sreg::CS] = flat(cs.wrapping_add(16) | 3, true, false, 3);
        cpu.state.seg[sreg::SS] = flat(cs.wrapping_add(24) | 3, false, false, 3);
        cpu.state.gpr[reg::RSP] = rcx & 0xffff_ffff;
        cpu.state.rip = rdx & 0xffff_ffff;
    }
    Ok(())
}

/// SWAPGS.
pub fn swapgs(cpu: &mut X86Cpu) -> Result<(), Fault> {
    if !cpu.long64() {
        return Err(ud());
    }
    if cpu.state.cpl() != 0 {
        return Err(gp0());
    }
    std::mem::swap(
        &mut cpu.state.msr.kernel_gs_base,
        &mut cpu.state.seg[sreg::GS].base,
    );
    Ok(())
}

fn fsgs_check(cpu: &X86Cpu) -> Result<(), Fault> {
    if !cpu.long64() || cpu.state.cr4 & cr4::FSGSBASE == 0 {
        return Err(ud());
    }
    Ok(())
}

fn fsgs_reg(which: u64) -> usize {
    if which == 0 {
        sreg::FS
    } else {
        sreg::GS
    }
}

/// RDFSBASE / RDGSBASE.
pub fn rd_fsgs_base(cpu: &mut X86Cpu, which: u64) -> Result<u64, Fault> {
    fsgs_check(cpu)?;
    Ok(cpu.state.seg[fsgs_reg(which)].base)
}

/// WRFSBASE / WRGSBASE.
pub fn wr_fsgs_base(cpu: &mut X86Cpu, which: u64, base: u64) -> Result<(), Fault> {
    fsgs_check(cpu)?;
    if !mmu::is_canonical(base) {
        return Err(gp0());
    }
    cpu.state.seg[fsgs_reg(which)].base = base;
    Ok(())
}
