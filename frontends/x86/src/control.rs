//! Control and debug registers, descriptor-table registers, TLB maintenance, HLT,
//! cache flushes and XCR0: the privileged instructions that change the CPU's mode.
//!
//! Every write is checked completely before it is committed (#GP(0) for reserved
//! bits and invalid combinations); TLB flushes follow the architecture: CR3 writes
//! keep global pages (CR4.PGE) and, with CR4.PCIDE and bit 63 set, everything;
//! changes of CR0.PG/WP/PE, of the CR4 paging bits and of EFER.NXE flush all.

use crate::cpu::X86Cpu;
use crate::cpuid::xsave_d1;
use crate::mmu::{self, cr4, PagingMode};
use crate::seg::{gp0, ud};
use vireo_core::cpu::{ctl, reg};
use vireo_core::exec::Fault;

fn require_cpl0(cpu: &X86Cpu) -> Result<(), Fault> {
    if cpu.state.cpl() != 0 {
        Err(gp0())
    } else {
        Ok(())
    }
}

/// Checks the four PAE PDPTEs at `cr3` (loaded by MOV CR3/CR0/CR4 in PAE mode):
/// a present entry with reserved bits set is #GP(0).
fn check_pdptes(cpu: &X86Cpu, cr3: u64) -> Result<(), Fault> {
    let base = cr3 & 0xffff_ffe0;
    for i in 0..4 {
        let mut b = [0u8; 8];
        mmu::read_phys(cpu, base + i * 8, &mut b);
        let e = u64::from_le_bytes(b);
        if e & 1 != 0 && e & (!((1u64 << mmu::PHYS_BITS) - 1) | 0x1e6) != 0 {
            return Err(gp0());
        }
    }
    Ok(())
}

const CR0_VALID: u64 = ctl::CR0_PE
    | ctl::CR0_MP
    | ctl::CR0_EM
    | ctl::CR0_TS
    | ctl::CR0_ET
    | ctl::CR0_NE
    | ctl::CR0_WP
    | ctl::CR0_AM
    | ctl::CR0_NW
    | ctl::CR0_CD
    | ctl::CR0_PG;

/// MOV to CR0 (and LMSW, CLTS): long-mode activation and deactivation.
pub fn write_cr0(cpu: &mut X86Cpu, v: u64) -> Result<(), Fault> {
    if v >> 32 != 0 {
        return Err(gp0());
    }
    let v = (v & CR0_VALID) | ctl::CR0_ET;
    if (v & ctl::CR0_PG != 0 && v & ctl::CR0_PE == 0)
        || (v & ctl::CR0_NW != 0 && v & ctl::CR0_CD == 0)
    {
        return Err(gp0());
    }
    let s = &cpu.state;
    let old = s.cr0;
    let mut efer = s.efer;
    let paging_on = v & ctl::CR0_PG != 0 && old & ctl::CR0_PG == 0;
    let paging_off = v & ctl::CR0_PG == 0 && old & ctl::CR0_PG != 0;
    if paging_on {
        if efer & ctl::EFER_LME != 0 {
            if s.cr4 & cr4::PAE == 0 || s.seg[1].l {
                return Err(gp0());
            }
            efer |= ctl::EFER_LMA;
        } else if s.cr4 & cr4::PAE != 0 {
            check_pdptes(cpu, s.cr3)?;
        }
    }
    if paging_off && efer & ctl::EFER_LMA != 0 {
        if cpu.long64() {
            return Err(gp0());
        }
        efer &= !ctl::EFER_LMA;
    }
    if v & ctl::CR0_PE == 0 && cpu.state.long_mode() {
        return Err(gp0());
    }
    cpu.state.cr0 = v;
    cpu.state.efer = efer;
    if (old ^ v) & (ctl::CR0_PG | ctl::CR0_WP | ctl::CR0_PE) != 0 {
        cpu.mmu.flush();
    }
    Ok(())
}

/// MOV to CR3.
pub fn write_cr3(cpu: &mut X86Cpu, v: u64) -> Result<(), Fault> {
    let pcide = cpu.state.cr4 & cr4::PCIDE != 0;
    let mut noflush = false;
    let v = if cpu.state.long_mode() {
        let mut v = v;
        if pcide && v >> 63 != 0 {
            noflush = true;
            v &= !(1 << 63);
        }
        if v & !((1u64 << mmu::PHYS_BITS) - 1) != 0 {
            return Err(gp0());
        }
        v
    } else {
        let v = v & 0xffff_ffff;
        if mmu::paging_mode(cpu) == PagingMode::Pae {
            check_pdptes(cpu, v)?;
        }
        v
    };
    cpu.state.cr3 = v;
    let pcid = cpu.current_pcid();
    cpu.mmu.set_pcid(pcid);
    if pcide {
        if !noflush {
            cpu.mmu.flush_pcid(pcid);
        }
    } else {
        cpu.mmu.flush_nonglobal();
    }
    Ok(())
}

/// MOV to CR4.
pub fn write_cr4(cpu: &mut X86Cpu, v: u64) -> Result<(), Fault> {
    if v & !cpu.cpuid.cr4_valid() != 0 {
        return Err(gp0());
    }
    let s = &cpu.state;
    let old = s.cr4;
    if s.long_mode() && v & cr4::PAE == 0 {
        return Err(gp0());
    }
    if v & cr4::PCIDE != 0 && old & cr4::PCIDE == 0 && (!s.long_mode() || s.cr3 & 0xfff != 0) {
        return Err(gp0());
    }
    if v & cr4::PAE != 0 && old & cr4::PAE == 0 && s.cr0 & ctl::CR0_PG != 0 && !s.long_mode() {
        check_pdptes(cpu, s.cr3)?;
    }
    cpu.state.cr4 = v;
    let paging_bits = cr4::PGE | cr4::PAE | cr4::PSE | cr4::PCIDE | cr4::SMEP | cr4::SMAP;
    if (old ^ v) & paging_bits != 0 {
        cpu.mmu.flush();
    }
    cpu.mmu.set_pcid(cpu.current_pcid());
    Ok(())
}

/// The `MovToCr` helper.
pub fn mov_to_cr(cpu: &mut X86Cpu, cr: u64, v: u64) -> Result<(), Fault> {
    if !matches!(cr, 0 | 2 | 3 | 4 | 8) {
        return Err(ud());
    }
    require_cpl0(cpu)?;
    match cr {
        0 => write_cr0(cpu, v),
        2 => {
            cpu.state.cr2 = v;
            Ok(())
        }
        3 => write_cr3(cpu, v),
        4 => write_cr4(cpu, v),
        _ => {
            if v & !0xf != 0 {
                return Err(gp0());
            }
            crate::apic::write_cr8(cpu, v);
            Ok(())
        }
    }
}

/// The `MovFromCr` helper.
pub fn mov_from_cr(cpu: &mut X86Cpu, cr: u64) -> Result<u64, Fault> {
    if !matches!(cr, 0 | 2 | 3 | 4 | 8) {
        return Err(ud());
    }
    require_cpl0(cpu)?;
    let s = &cpu.state;
    Ok(match cr {
        0 => s.cr0,
        2 => s.cr2,
        3 => s.cr3,
        4 => s.cr4,
        _ => crate::apic::read_cr8(cpu),
    })
}

/// Index in `state.dr` of DR`n` (DR4/5 alias DR6/7 unless CR4.DE, then #UD).
fn dr_index(cpu: &mut X86Cpu, n: u64) -> Result<usize, Fault> {
    if n > 7 {
        return Err(ud());
    }
    if (n == 4 || n == 5) && cpu.state.cr4 & cr4::DE != 0 {
        return Err(ud());
    }
    require_cpl0(cpu)?;
    if cpu.state.dr[5] & (1 << 13) != 0 {
        // DR7.GD: #DB before the access, with DR6.BD.
        cpu.state.dr[5] &= !(1 << 13);
        cpu.state.dr[4] |= 1 << 13;
        return Err(Fault::new(1));
    }
    Ok(match n {
        0..=3 => n as usize,
        4 | 6 => 4,
        _ => 5,
    })
}

/// The `MovToDr` helper.
pub fn mov_to_dr(cpu: &mut X86Cpu, n: u64, v: u64) -> Result<(), Fault> {
    let i = dr_index(cpu, n)?;
    let v = match i {
        0..=3 => v,
        4 => {
            if v >> 32 != 0 {
                return Err(gp0());
            }
            (v & 0xe00f) | 0xffff_0ff0
        }
        _ => {
            if v >> 32 != 0 {
                return Err(gp0());
            }
            (v & 0xffff_23ff) | 0x400
        }
    };
    cpu.state.dr[i] = v;
    Ok(())
}

/// The `MovFromDr` helper.
pub fn mov_from_dr(cpu: &mut X86Cpu, n: u64) -> Result<u64, Fault> {
    let i = dr_index(cpu, n)?;
    Ok(cpu.state.dr[i])
}

/// CLTS.
pub fn clts(cpu: &mut X86Cpu) -> Result<(), Fault> {
    require_cpl0(cpu)?;
    cpu.state.cr0 &= !ctl::CR0_TS;
    Ok(())
}

/// LMSW: loads PE, MP, EM, TS (PE cannot be cleared).
pub fn lmsw(cpu: &mut X86Cpu, v: u64) -> Result<(), Fault> {
    require_cpl0(cpu)?;
    let old = cpu.state.cr0;
    let new = (old & !0xe) | (v & 0xf) | (old & ctl::CR0_PE);
    write_cr0(cpu, new)
}

/// LGDT (`which` 0) / LIDT (1) from the 6- or 10-byte operand at `la`.
pub fn load_dtr(cpu: &mut X86Cpu, which: u64, la: u64, opsize: u64) -> Result<(), Fault> {
    require_cpl0(cpu)?;
    let agent = mmu::current_agent(cpu);
    let limit = mmu::read_le(cpu, la, 2, agent)? as u16;
    let base = if cpu.long64() {
        let b = mmu::read_le(cpu, la.wrapping_add(2), 8, agent)?;
        if !mmu::is_canonical(b) {
            return Err(gp0());
        }
        b
    } else {
        let b = mmu::read_le(cpu, la.wrapping_add(2), 4, agent)?;
        if opsize == 16 {
            b & 0xff_ffff
        } else {
            b
        }
    };
    let t = if which == 0 {
        &mut cpu.state.gdtr
    } else {
        &mut cpu.state.idtr
    };
    t.base = base;
    t.limit = limit;
    Ok(())
}

fn umip_check(cpu: &X86Cpu) -> Result<(), Fault> {
    if cpu.state.cr4 & cr4::UMIP != 0 && cpu.state.cpl() > 0 {
        return Err(gp0());
    }
    Ok(())
}

/// SGDT (`which` 0) / SIDT (1) to `la`.
pub fn store_dtr(cpu: &mut X86Cpu, which: u64, la: u64) -> Result<(), Fault> {
    umip_check(cpu)?;
    let t = if which == 0 {
        cpu.state.gdtr
    } else {
        cpu.state.idtr
    };
    let agent = mmu::current_agent(cpu);
    let mut b = [0u8; 10];
    b[..2].copy_from_slice(&t.limit.to_le_bytes());
    b[2..].copy_from_slice(&t.base.to_le_bytes());
    let len = if cpu.long64() { 10 } else { 6 };
    mmu::write_bytes(cpu, la, &b[..len], agent)
}

/// SLDT (`which` 0) / STR (1).
pub fn store_sel(cpu: &mut X86Cpu, which: u64) -> Result<u64, Fault> {
    if !cpu.protected() {
        return Err(ud());
    }
    umip_check(cpu)?;
    Ok(u64::from(if which == 0 {
        cpu.state.ldtr.selector
    } else {
        cpu.state.tr.selector
    }))
}

/// INVLPG.
pub fn invlpg(cpu: &mut X86Cpu, la: u64) -> Result<(), Fault> {
    require_cpl0(cpu)?;
    let la = if cpu.state.long_mode() {
        la
    } else {
        la & 0xffff_ffff
    };
    cpu.mmu.flush_page(la);
    Ok(())
}

/// INVPCID `kind` with the 16-byte descriptor at `la`.
pub fn invpcid(cpu: &mut X86Cpu, kind: u64, la: u64) -> Result<(), Fault> {
    if cpu.cpuid.ebx7 & crate::cpuid::leaf7::INVPCID == 0 || !cpu.protected() {
        return Err(ud());
    }
    require_cpl0(cpu)?;
    let agent = mmu::current_agent(cpu);
    let d0 = mmu::read_le(cpu, la, 8, agent)?;
    let addr = mmu::read_le(cpu, la.wrapping_add(8), 8, agent)?;
    if d0 >> 12 != 0 {
        return Err(gp0());
    }
    let pcid = (d0 & 0xfff) as u16;
    let pcide = cpu.state.cr4 & cr4::PCIDE != 0;
    match kind {
        0 | 1 if !pcide && pcid != 0 => return Err(gp0()),
        0 => {
            if !mmu::is_canonical(addr) {
                return Err(gp0());
            }
            cpu.mmu.flush_page_pcid(addr, pcid);
        }
        1 => cpu.mmu.flush_pcid(pcid),
        2 => cpu.mmu.flush(),
        3 => cpu.mmu.flush_nonglobal(),
        _ => return Err(gp0()),
    }
    Ok(())
}

/// HLT.
pub fn hlt(cpu: &mut X86Cpu, next_pc: u64) -> Result<(), Fault> {
    require_cpl0(cpu)?;
    cpu.state.rip = next_pc;
    cpu.state.events.halted = true;
    Ok(())
}

/// INVD / WBINVD / WBNOINVD: privileged, nothing to model.
pub fn cache_flush(cpu: &mut X86Cpu) -> Result<(), Fault> {
    require_cpl0(cpu)
}

/// XGETBV: ECX = 0 reads XCR0; ECX = 1 (when CPUID.(0Dh,1):EAX[2] says so) reads
/// XCR0 AND XINUSE, the components not in their initial configuration.
pub fn xgetbv(cpu: &mut X86Cpu) -> Result<(), Fault> {
    if cpu.state.cr4 & cr4::OSXSAVE == 0 {
        return Err(ud());
    }
    let v = match cpu.state.gpr[reg::RCX] as u32 {
        0 => cpu.state.xcr0,
        1 if cpu.cpuid.xsave_d1 & xsave_d1::XGETBV1 != 0 => {
            cpu.state.xcr0 & crate::xsave::xinuse(cpu)
        }
        _ => return Err(gp0()),
    };
    cpu.state.gpr[reg::RAX] = v & 0xffff_ffff;
    cpu.state.gpr[reg::RDX] = v >> 32;
    Ok(())
}

/// XSETBV (#UD without CR4.OSXSAVE before #GP at CPL > 0): XCR0 must keep x87, may
/// only hold advertised components, AVX needs SSE.
pub fn xsetbv(cpu: &mut X86Cpu) -> Result<(), Fault> {
    if cpu.state.cr4 & cr4::OSXSAVE == 0 {
        return Err(ud());
    }
    require_cpl0(cpu)?;
    if cpu.state.gpr[reg::RCX] as u32 != 0 {
        return Err(gp0());
    }
    let v = (cpu.state.gpr[reg::RAX] & 0xffff_ffff) | (cpu.state.gpr[reg::RDX] << 32);
    if v & 1 == 0 || v & !cpu.cpuid.xcr0_supported != 0 || (v & 4 != 0 && v & 2 == 0) {
        return Err(gp0());
    }
    cpu.state.xcr0 = v;
    Ok(())
}
