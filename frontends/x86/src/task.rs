//! Hardware task switching (legacy protected mode) with 32- and 16-bit TSSs, through
//! JMP, CALL, INT (task gates) and IRET (NT set): busy bits, NT and the back link, CR3
//! and LDT loads and the checks of the new task's segments.
//!
//! Everything up to the commit point is checked before any register changes (the
//! new TSS is read whole, the old one probed for writing). Faults after the commit
//! (bad segments in the new TSS, EIP beyond the CS limit) happen in the context of
//! the new task: [`X86Cpu::fault_pc`] then carries the new task's EIP so that the
//! exception is delivered with it as the return address.

use crate::cpu::X86Cpu;
use crate::mmu::{self, Agent};
use crate::seg::{self, sel_fault, Desc, GP, NP, TS};
use vireo_core::cpu::{ctl, flags as fl, sreg, Segment};
use vireo_core::exec::Fault;

/// What started a task switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskSource {
    Jmp,
    Call,
    Int,
    Iret,
}

/// The register image of a TSS.
struct TssImage {
    cr3: Option<u64>,
    eip: u64,
    eflags: u64,
    regs: [u64; 8],
    segs: [u16; 6],
    ldt: u16,
}

/// Offsets in a 32-bit (`wide`) or 16-bit TSS.
struct Layout {
    ip: u64,
    flags: u64,
    regs: u64,
    segs: u64,
    ldt: u64,
    width: usize,
    min_limit: u32,
}

fn layout(wide: bool) -> Layout {
    if wide {
        Layout {
            ip: 0x20,
            flags: 0x24,
            regs: 0x28,
            segs: 0x48,
            ldt: 0x60,
            width: 4,
            min_limit: 0x67,
        }
    } else {
        Layout {
            ip: 0x0e,
            flags: 0x10,
            regs: 0x12,
            segs: 0x22,
            ldt: 0x2a,
            width: 2,
            min_limit: 0x2b,
        }
    }
}

/// Segment registers in TSS order (ES, CS, SS, DS, FS, GS) = `sreg` order; a 16-bit
/// TSS has the first four.
fn seg_count(wide: bool) -> usize {
    if wide {
        6
    } else {
        4
    }
}

fn read_image(cpu: &mut X86Cpu, base: u64, wide: bool) -> Result<TssImage, Fault> {
    let l = layout(wide);
    let w = l.width;
    let rd =
        |cpu: &mut X86Cpu, off: u64, len: usize| mmu::read_sys(cpu, base.wrapping_add(off), len);
    let cr3 = if wide { Some(rd(cpu, 0x1c, 4)?) } else { None };
    let eip = rd(cpu, l.ip, w)?;
    let eflags = rd(cpu, l.flags, w)?;
    let mut regs = [0u64; 8];
    for (i, r) in regs.iter_mut().enumerate() {
        *r = rd(cpu, l.regs + (i * w) as u64, w)?;
    }
    let mut segs = [0u16; 6];
    for (i, s) in segs.iter_mut().enumerate().take(seg_count(wide)) {
        *s = rd(cpu, l.segs + (i * w) as u64, 2)? as u16;
    }
    let ldt = rd(cpu, l.ldt, 2)? as u16;
    Ok(TssImage {
        cr3,
        eip,
        eflags,
        regs,
        segs,
        ldt,
    })
}

/// Switches to the task of TSS selector `sel`. `return_pc` is the EIP saved in the
/// old TSS (the next instruction for JMP/CALL/INT n, the faulting one for
/// exceptions); `ext` sets EXT in error codes.
pub fn switch(
    cpu: &mut X86Cpu,
    sel: u16,
    src: TaskSource,
    return_pc: u64,
    ext: bool,
) -> Result<(), Fault> {
    if cpu.state.long_mode() {
        return Err(sel_fault(GP, sel, ext));
    }
    if sel & 4 != 0 {
        return Err(sel_fault(TS, sel, ext));
    }
    let d = seg::fetch(cpu, sel)?.ok_or(sel_fault(GP, sel, ext))?;
    // Available or busy TSS (1, 3, 9, 0xb).
    if d.s() || d.type4() & 5 != 1 {
        return Err(sel_fault(GP, sel, ext));
    }
    let busy = d.type4() & 2 != 0;
    if src == TaskSource::Iret {
        if !busy {
            return Err(sel_fault(TS, sel, ext));
        }
    } else if busy {
        return Err(sel_fault(GP, sel, ext));
    }
    if !d.present() {
        return Err(sel_fault(NP, sel, ext));
    }
    let wide = d.type4() & 8 != 0;
    let new_seg = d.segment(sel);
    let nl = layout(wide);
    if new_seg.limit < nl.min_limit {
        return Err(sel_fault(TS, sel, ext));
    }
    let old = cpu.state.tr;
    let old_wide = old.type_ & 8 != 0;
    let ol = layout(old_wide);
    if old.limit < ol.min_limit || old.unusable {
        return Err(sel_fault(TS, old.selector, ext));
    }
    let img = read_image(cpu, new_seg.base, wide)?;
    // Probe every write before the first one.
    mmu::probe_write(
        cpu,
        old.base.wrapping_add(ol.ip),
        (ol.segs - ol.ip) as usize + seg_count(old_wide) * ol.width,
        Agent::Implicit,
    )?;
    if matches!(src, TaskSource::Call | TaskSource::Int) {
        mmu::probe_write(cpu, new_seg.base, 2, Agent::Implicit)?;
    }
    let old_desc = match seg::fetch(cpu, old.selector)? {
        Some(od) => od,
        None => return Err(sel_fault(TS, old.selector, ext)),
    };

    // Save the outgoing task.
    let mut old_flags = cpu.rflags();
    if src == TaskSource::Iret {
        old_flags &= !fl::NT;
    }
    if matches!(src, TaskSource::Jmp | TaskSource::Iret) {
        seg::set_busy(cpu, old.selector, old_desc, false)?;
    }
    let ob = old.base;
    let w = ol.width;
    mmu::write_sys(cpu, ob.wrapping_add(ol.ip), w, return_pc)?;
    mmu::write_sys(cpu, ob.wrapping_add(ol.flags), w, old_flags)?;
    for i in 0..8 {
        let v = cpu.state.gpr[i];
        mmu::write_sys(cpu, ob.wrapping_add(ol.regs + (i * w) as u64), w, v)?;
    }
    for i in 0..seg_count(old_wide) {
        let v = u64::from(cpu.state.seg[i].selector);
        mmu::write_sys(cpu, ob.wrapping_add(ol.segs + (i * w) as u64), 2, v)?;
    }
    let mut new_flags = img.eflags;
    if matches!(src, TaskSource::Call | TaskSource::Int) {
        mmu::write_sys(cpu, new_seg.base, 2, u64::from(old.selector))?;
        new_flags |= fl::NT;
    }
    if src != TaskSource::Iret {
        seg::set_busy(cpu, sel, d, true)?;
    }

    // Commit: from here on faults belong to the new task.
    let mut tr = new_seg;
    tr.type_ |= 2;
    cpu.state.tr = tr;
    cpu.state.cr0 |= ctl::CR0_TS;
    if let Some(cr3) = img.cr3 {
        if cpu.state.cr0 & ctl::CR0_PG != 0 {
            cpu.state.cr3 = cr3 & 0xffff_ffff;
            cpu.mmu.flush_nonglobal();
        }
    }
    if wide {
        cpu.set_rflags(new_flags | fl::FIXED1);
        cpu.state.rip = img.eip & 0xffff_ffff;
        for (i, r) in img.regs.iter().enumerate() {
            cpu.state.gpr[i] = *r & 0xffff_ffff;
        }
    } else {
        let f = (cpu.rflags() & !0xffff) | (new_flags & 0xffff);
        cpu.set_rflags(f);
        cpu.state.rip = img.eip & 0xffff;
        for (i, r) in img.regs.iter().enumerate() {
            cpu.state.gpr[i] = (cpu.state.gpr[i] & !0xffff) | (*r & 0xffff);
        }
    }
    cpu.fault_pc = Some(cpu.state.rip);
    let result = load_task_segments(cpu, &img, wide, ext);
    if result.is_ok() {
        cpu.fault_pc = None;
    }
    result
}

/// Loads LDTR and the segment registers of the new task, with the checks that give
/// #TS/#NP/#SS in the new task's context.
fn load_task_segments(
    cpu: &mut X86Cpu,
    img: &TssImage,
    wide: bool,
    ext: bool,
) -> Result<(), Fault> {
    let n = seg_count(wide);
    if cpu.state.rflags & fl::VM != 0 {
        for i in 0..6 {
            let sel = if i < n { img.segs[i] } else { 0 };
            cpu.state.seg[i] = seg::real_segment(&cpu.state.seg[i], sel, true);
        }
    } else {
        // Selectors first, so that a fault leaves them visible in the new task.
        for i in 0..n {
            cpu.state.seg[i] = Segment {
                selector: img.segs[i],
                ..seg::null_segment(img.segs[i])
            };
            if i == sreg::CS || i == sreg::SS {
                cpu.state.seg[i].dpl = (img.segs[sreg::CS] & 3) as u8;
            }
        }
    }
    cpu.state.ldtr = seg::null_segment(img.ldt);
    if img.ldt & 4 != 0 {
        return Err(sel_fault(TS, img.ldt, ext));
    }
    if img.ldt & 0xfffc != 0 {
        let d = seg::fetch(cpu, img.ldt)?.ok_or(sel_fault(TS, img.ldt, ext))?;
        if d.s() || d.type4() != 2 {
            return Err(sel_fault(TS, img.ldt, ext));
        }
        if !d.present() {
            return Err(sel_fault(NP, img.ldt, ext));
        }
        cpu.state.ldtr = d.segment(img.ldt);
    }
    if cpu.state.rflags & fl::VM != 0 {
        return check_eip(cpu);
    }
    // CS.
    let cs_sel = img.segs[sreg::CS];
    let cpl = (cs_sel & 3) as u8;
    if cs_sel & 0xfffc == 0 {
        return Err(sel_fault(TS, cs_sel, ext));
    }
    let cd = seg::fetch(cpu, cs_sel)?.ok_or(sel_fault(TS, cs_sel, ext))?;
    let ok = cd.is_code()
        && if cd.conforming() {
            cd.dpl() <= cpl
        } else {
            cd.dpl() == cpl
        };
    if !ok {
        return Err(sel_fault(TS, cs_sel, ext));
    }
    if !cd.present() {
        return Err(sel_fault(NP, cs_sel, ext));
    }
    seg::set_accessed(cpu, cs_sel, cd)?;
    cpu.state.seg[sreg::CS] = seg::code_segment(cpu, Desc(cd.0), cs_sel, cpl);
    for r in [sreg::SS, sreg::ES, sreg::DS, sreg::FS, sreg::GS] {
        if r >= n {
            cpu.state.seg[r] = seg::null_segment(0);
            continue;
        }
        let (s, _) = seg::check_data_load(cpu, r, img.segs[r], cpl, TS, ext)?;
        cpu.state.seg[r] = s;
    }
    check_eip(cpu)
}

fn check_eip(cpu: &X86Cpu) -> Result<(), Fault> {
    if cpu.state.rip > u64::from(cpu.state.seg[sreg::CS].limit) {
        return Err(seg::gp0());
    }
    Ok(())
}

/// IRET with NT set: returns to the task in the back link of the current TSS.
pub fn task_return(cpu: &mut X86Cpu, return_pc: u64) -> Result<(), Fault> {
    let tr = cpu.state.tr;
    let link = mmu::read_sys(cpu, tr.base, 2)? as u16;
    if link & 4 != 0 {
        return Err(sel_fault(TS, link, false));
    }
    let d = seg::fetch(cpu, link)?.ok_or(sel_fault(TS, link, false))?;
    if d.s() || d.type4() & 7 != 3 {
        return Err(sel_fault(TS, link, false));
    }
    switch(cpu, link, TaskSource::Iret, return_pc, false)
}
