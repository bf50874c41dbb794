//! Segment descriptors: reading them from the GDT/LDT, the protected-mode checks of
//! segment-register loads, and the instructions that inspect descriptors (LLDT, LTR,
//! LAR, LSL, VERR, VERW).
//!
//! Descriptor tables live in guest memory and are read with implicit supervisor
//! accesses ([`crate::mmu::read_sys`]); any content gives a fault or a defined result.
//!
//! The CS descriptor cache keeps `dpl` equal to the CPL (for a conforming code segment
//! that is the caller's CPL, not the descriptor's DPL): [`CpuState::cpl`] reads it.
//!
//! [`CpuState::cpl`]: vireo_core::cpu::CpuState::cpl

use crate::cpu::X86Cpu;
use crate::mmu;
use vireo_core::cpu::{sreg, Segment};
use vireo_core::exec::Fault;

pub const DE: u8 = 0;
pub const DB: u8 = 1;
pub const NMI: u8 = 2;
pub const BP: u8 = 3;
pub const OF: u8 = 4;
pub const UD: u8 = 6;
pub const NM: u8 = 7;
pub const DF: u8 = 8;
pub const TS: u8 = 10;
pub const NP: u8 = 11;
pub const SS: u8 = 12;
pub const GP: u8 = 13;
pub const PF: u8 = 14;

/// A fault with a selector error code (`sel` with RPL cleared, plus EXT).
pub fn sel_fault(vector: u8, sel: u16, ext: bool) -> Fault {
    Fault::with_error(vector, u32::from(sel & 0xfffc) | u32::from(ext))
}

/// #GP(0).
pub fn gp0() -> Fault {
    Fault::with_error(GP, 0)
}

/// #UD.
pub fn ud() -> Fault {
    Fault::new(UD)
}

/// A raw 8-byte descriptor with field accessors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Desc(pub u64);

impl Desc {
    /// The 5-bit type field including S (bit 4).
    pub fn type5(self) -> u8 {
        ((self.0 >> 40) & 0x1f) as u8
    }
    pub fn type4(self) -> u8 {
        ((self.0 >> 40) & 0xf) as u8
    }
    /// S: code or data segment.
    pub fn s(self) -> bool {
        self.0 & (1 << 44) != 0
    }
    pub fn dpl(self) -> u8 {
        ((self.0 >> 45) & 3) as u8
    }
    pub fn present(self) -> bool {
        self.0 & (1 << 47) != 0
    }
    pub fn l(self) -> bool {
        self.0 & (1 << 53) != 0
    }
    pub fn db(self) -> bool {
        self.0 & (1 << 54) != 0
    }
    pub fn is_code(self) -> bool {
        self.s() && self.0 & (1 << 43) != 0
    }
    pub fn is_data(self) -> bool {
        self.s() && self.0 & (1 << 43) == 0
    }
    pub fn conforming(self) -> bool {
        self.is_code() && self.0 & (1 << 42) != 0
    }
    pub fn readable(self) -> bool {
        self.is_data() || self.0 & (1 << 41) != 0
    }
    pub fn writable_data(self) -> bool {
        self.is_data() && self.0 & (1 << 41) != 0
    }
    pub fn accessed(self) -> bool {
        self.0 & (1 << 40) != 0
    }
    /// Byte-granular limit.
    pub fn limit(self) -> u32 {
        Segment::from_descriptor(0, self.0).limit
    }
    pub fn base(self) -> u64 {
        Segment::from_descriptor(0, self.0).base
    }
    /// The descriptor cache for `selector`.
    pub fn segment(self, selector: u16) -> Segment {
        Segment::from_descriptor(selector, self.0)
    }
}

/// Linear address of the descriptor of `sel`, or `None` if it is beyond the table
/// limit (or TI=1 with no usable LDT).
pub fn desc_addr(cpu: &X86Cpu, sel: u16) -> Option<u64> {
    let s = &cpu.state;
    let (base, limit) = if sel & 4 != 0 {
        if s.ldtr.unusable || s.ldtr.selector & 0xfffc == 0 || !s.ldtr.present {
            return None;
        }
        (s.ldtr.base, u64::from(s.ldtr.limit))
    } else {
        (s.gdtr.base, u64::from(s.gdtr.limit))
    };
    let off = u64::from(sel & 0xfff8);
    (off + 7 <= limit).then_some(base.wrapping_add(off))
}

/// Reads the descriptor of `sel`; `Ok(None)` if it is outside its table.
pub fn fetch(cpu: &mut X86Cpu, sel: u16) -> Result<Option<Desc>, Fault> {
    match desc_addr(cpu, sel) {
        Some(a) => Ok(Some(Desc(mmu::read_sys(cpu, a, 8)?))),
        None => Ok(None),
    }
}

/// Reads the upper 8 bytes of a 16-byte (long-mode system) descriptor of `sel`;
/// `Ok(None)` if they are beyond the table limit (GDT only: system descriptors).
pub fn fetch_high(cpu: &mut X86Cpu, sel: u16) -> Result<Option<u64>, Fault> {
    let s = &cpu.state;
    let off = u64::from(sel & 0xfff8) + 8;
    if off + 7 > u64::from(s.gdtr.limit) {
        return Ok(None);
    }
    let a = s.gdtr.base.wrapping_add(off);
    Ok(Some(mmu::read_sys(cpu, a, 8)?))
}

/// Sets the accessed bit of the descriptor of `sel` if it is clear.
pub fn set_accessed(cpu: &mut X86Cpu, sel: u16, d: Desc) -> Result<(), Fault> {
    if d.accessed() {
        return Ok(());
    }
    match desc_addr(cpu, sel) {
        Some(a) => mmu::write_sys(cpu, a + 5, 1, ((d.0 >> 40) & 0xff) | 1),
        None => Ok(()),
    }
}

/// Sets (or clears) the busy bit of the TSS descriptor of `sel` (GDT).
pub fn set_busy(cpu: &mut X86Cpu, sel: u16, d: Desc, busy: bool) -> Result<(), Fault> {
    let Some(a) = desc_addr(cpu, sel & !4) else {
        return Ok(());
    };
    let t = (d.0 >> 40) & 0xff;
    let t = if busy { t | 2 } else { t & !2 };
    mmu::write_sys(cpu, a + 5, 1, t)
}

/// A null segment register (protected mode) for `sel`.
pub fn null_segment(sel: u16) -> Segment {
    Segment {
        selector: sel,
        unusable: true,
        ..Segment::default()
    }
}

/// The cache of a data segment loaded in real or V86 mode: base = selector << 4.
/// Real mode keeps the limit and attributes; V86 mode sets a 64 KiB DPL 3 data segment.
pub fn real_segment(old: &Segment, sel: u16, v86: bool) -> Segment {
    if v86 {
        Segment {
            selector: sel,
            base: u64::from(sel) << 4,
            limit: 0xffff,
            type_: 3,
            s: true,
            dpl: 3,
            present: true,
            ..Segment::default()
        }
    } else {
        Segment {
            selector: sel,
            base: u64::from(sel) << 4,
            unusable: false,
            ..*old
        }
    }
}

/// Checks a protected-mode load of `sel` into data register `reg` (SS, DS, ES, FS,
/// GS) and returns the new cache and the descriptor (None for a null selector).
/// `vec_gp` is the vector of privilege/type faults (#GP for MOV, #TS for task
/// switches); `cpl` the privilege level the load happens at.
pub fn check_data_load(
    cpu: &mut X86Cpu,
    reg: usize,
    sel: u16,
    cpl: u8,
    vec_gp: u8,
    ext: bool,
) -> Result<(Segment, Option<Desc>), Fault> {
    let rpl = (sel & 3) as u8;
    if sel & 0xfffc == 0 {
        if reg == sreg::SS {
            // A null SS is allowed only in 64-bit mode at CPL < 3 with RPL = CPL.
            if !(cpu.long64() && cpl < 3 && rpl == cpl) || vec_gp == TS {
                return Err(Fault::with_error(vec_gp, u32::from(ext)));
            }
            let mut s = null_segment(sel);
            s.dpl = cpl;
            return Ok((s, None));
        }
        return Ok((null_segment(sel), None));
    }
    let d = fetch(cpu, sel)?.ok_or(sel_fault(vec_gp, sel, ext))?;
    if reg == sreg::SS {
        if rpl != cpl || !d.writable_data() || d.dpl() != cpl {
            return Err(sel_fault(vec_gp, sel, ext));
        }
        if !d.present() {
            return Err(sel_fault(SS, sel, ext));
        }
    } else {
        if !d.readable() || !d.s() {
            return Err(sel_fault(vec_gp, sel, ext));
        }
        if (d.is_data() || !d.conforming()) && (rpl > d.dpl() || cpl > d.dpl()) {
            return Err(sel_fault(vec_gp, sel, ext));
        }
        if !d.present() {
            return Err(sel_fault(NP, sel, ext));
        }
    }
    let mut d = d;
    set_accessed(cpu, sel, d)?;
    d.0 |= 1 << 40;
    Ok((d.segment(sel), Some(d)))
}

/// MOV/POP to a data segment register (and the segment part of LDS...LSS).
pub fn load_seg(cpu: &mut X86Cpu, reg: usize, sel: u16) -> Result<(), Fault> {
    if reg >= 6 || reg == sreg::CS {
        return Err(ud());
    }
    let seg = if !cpu.protected() {
        real_segment(&cpu.state.seg[reg], sel, cpu.v86())
    } else {
        let cpl = cpu.state.cpl();
        check_data_load(cpu, reg, sel, cpl, GP, false)?.0
    };
    cpu.state.seg[reg] = seg;
    if reg == sreg::SS {
        cpu.state.events.interrupt_shadow = true;
    }
    Ok(())
}

/// The CS cache for code descriptor `d` loaded with selector `sel` at privilege `cpl`
/// (RPL and cached DPL set to the CPL). In 64-bit code the base is 0.
pub fn code_segment(cpu: &X86Cpu, d: Desc, sel: u16, cpl: u8) -> Segment {
    let mut s = Desc(d.0 | 1 << 40).segment((sel & 0xfffc) | u16::from(cpl));
    s.dpl = cpl;
    if cpu.state.long_mode() && s.l {
        s.base = 0;
    }
    s
}

/// After a return to an outer privilege level: data registers whose segment the new
/// CPL may not use become null (SDM: RET, IRET).
pub fn invalidate_data_segments(cpu: &mut X86Cpu, cpl: u8) {
    for reg in [sreg::ES, sreg::DS, sreg::FS, sreg::GS] {
        let s = cpu.state.seg[reg];
        if s.unusable || s.selector & 0xfffc == 0 {
            continue;
        }
        let data_or_nc = !(s.type_ & 8 != 0 && s.type_ & 4 != 0);
        if data_or_nc && s.dpl < cpl {
            cpu.state.seg[reg] = null_segment(0);
        }
    }
}

/// LLDT.
pub fn lldt(cpu: &mut X86Cpu, sel: u16) -> Result<(), Fault> {
    if !cpu.protected() {
        return Err(ud());
    }
    if cpu.state.cpl() != 0 {
        return Err(gp0());
    }
    if sel & 0xfffc == 0 {
        cpu.state.ldtr = null_segment(sel);
        return Ok(());
    }
    if sel & 4 != 0 {
        return Err(sel_fault(GP, sel, false));
    }
    let d = fetch(cpu, sel)?.ok_or(sel_fault(GP, sel, false))?;
    if d.s() || d.type4() != 2 {
        return Err(sel_fault(GP, sel, false));
    }
    let mut seg = d.segment(sel);
    if cpu.state.long_mode() {
        let hi = fetch_high(cpu, sel)?.ok_or(sel_fault(GP, sel, false))?;
        seg.base |= (hi & 0xffff_ffff) << 32;
        if !mmu::is_canonical(seg.base) {
            return Err(sel_fault(GP, sel, false));
        }
    }
    if !d.present() {
        return Err(sel_fault(NP, sel, false));
    }
    cpu.state.ldtr = seg;
    Ok(())
}

/// LTR: loads TR and marks the TSS busy.
pub fn ltr(cpu: &mut X86Cpu, sel: u16) -> Result<(), Fault> {
    if !cpu.protected() {
        return Err(ud());
    }
    if cpu.state.cpl() != 0 {
        return Err(gp0());
    }
    if sel & 0xfffc == 0 {
        return Err(gp0());
    }
    if sel & 4 != 0 {
        return Err(sel_fault(GP, sel, false));
    }
    let d = fetch(cpu, sel)?.ok_or(sel_fault(GP, sel, false))?;
    let lm = cpu.state.long_mode();
    let ok_type = if lm {
        d.type4() == 9
    } else {
        matches!(d.type4(), 1 | 9)
    };
    if d.s() || !ok_type {
        return Err(sel_fault(GP, sel, false));
    }
    let mut seg = d.segment(sel);
    if lm {
        let hi = fetch_high(cpu, sel)?.ok_or(sel_fault(GP, sel, false))?;
        seg.base |= (hi & 0xffff_ffff) << 32;
        if !mmu::is_canonical(seg.base) {
            return Err(sel_fault(GP, sel, false));
        }
    }
    if !d.present() {
        return Err(sel_fault(NP, sel, false));
    }
    set_busy(cpu, sel, d, true)?;
    seg.type_ |= 2;
    cpu.state.tr = seg;
    Ok(())
}

/// The descriptor of `sel` if LAR/LSL/VERR/VERW may look at it (not null, inside its
/// table, privilege allowing).
fn visible_desc(cpu: &mut X86Cpu, sel: u16) -> Result<Option<Desc>, Fault> {
    if sel & 0xfffc == 0 {
        return Ok(None);
    }
    let Some(d) = fetch(cpu, sel)? else {
        return Ok(None);
    };
    let cpl = cpu.state.cpl();
    let rpl = (sel & 3) as u8;
    if !d.conforming() && (d.dpl() < cpl || d.dpl() < rpl) {
        return Ok(None);
    }
    Ok(Some(d))
}

/// LAR (`which` 0) / LSL (1): `value | 1 << 63` when valid, 0 when not.
pub fn lar_lsl(cpu: &mut X86Cpu, which: u64, sel: u16) -> Result<u64, Fault> {
    if !cpu.protected() {
        return Err(ud());
    }
    let Some(d) = visible_desc(cpu, sel)? else {
        return Ok(0);
    };
    if !d.s() {
        let lm = cpu.state.long_mode();
        let ok = match (which, lm) {
            (0, false) => matches!(d.type4(), 1 | 2 | 3 | 4 | 5 | 9 | 0xb | 0xc),
            (0, true) => matches!(d.type4(), 2 | 9 | 0xb | 0xc),
            (_, false) => matches!(d.type4(), 1 | 2 | 3 | 9 | 0xb),
            (_, true) => matches!(d.type4(), 2 | 9 | 0xb),
        };
        if !ok {
            return Ok(0);
        }
    }
    let v = if which == 0 {
        (d.0 >> 32) & 0x00f0_ff00
    } else {
        u64::from(d.limit())
    };
    Ok(v | 1 << 63)
}

/// VERR (`which` 0) / VERW (1): whether the segment is readable / writable at the
/// current privilege.
pub fn verify(cpu: &mut X86Cpu, which: u64, sel: u16) -> Result<u64, Fault> {
    if !cpu.protected() {
        return Err(ud());
    }
    let Some(d) = visible_desc(cpu, sel)? else {
        return Ok(0);
    };
    let ok = if which == 0 {
        d.s() && d.readable()
    } else {
        d.writable_data()
    };
    Ok(u64::from(ok))
}
