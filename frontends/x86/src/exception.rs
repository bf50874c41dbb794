//! Exception and interrupt delivery: real-mode IVT, protected-mode IDT (interrupt,
//! trap and task gates, 16- and 32-bit, privilege-level stack switch through the TSS,
//! V86 → ring 0), long-mode IDT (16-byte gates, IST, 64-bit frames), double-fault
//! promotion and triple fault.
//!
//! The run loop calls [`X86Cpu::deliver_exception`] with a [`Fault`] and the PC to
//! push as the return address, [`X86Cpu::deliver_interrupt`] for an acknowledged
//! external interrupt and [`X86Cpu::deliver_nmi`] for an NMI; a `Shutdown` result is
//! a triple fault (`VcpuExit::Shutdown`). Software interrupts (INT n, INT3, INTO,
//! INT1) come through the `SoftInt` helper ([`soft_int`]).

use crate::cpu::X86Cpu;
use crate::mmu::{self, Agent};
use crate::seg::{self, sel_fault, Desc, DF, GP, NP, PF, SS, TS};
use crate::stack::Stack;
use crate::task::{self, TaskSource};
use vireo_core::cpu::{flags as fl, reg, sreg};
use vireo_core::exec::Fault;

/// The CPU shut down (triple fault): the run loop reports `VcpuExit::Shutdown`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shutdown;

/// What kind of event is delivered: decides DPL checks, EXT and the return address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// A processor exception (fault, trap or abort).
    Exception,
    /// An external (maskable) interrupt.
    External,
    /// An NMI.
    Nmi,
    /// INT n: gate DPL checked against the CPL.
    SoftInt,
    /// INT3 / INTO: DPL checked, not EXT.
    SoftException,
    /// INT1 (ICEBP): no DPL check, EXT set.
    Icebp,
}

/// An event being delivered.
#[derive(Debug, Clone, Copy)]
pub struct Event {
    pub vector: u8,
    pub error_code: Option<u32>,
    pub kind: EventKind,
    /// CS-relative PC pushed as the return address.
    pub return_pc: u64,
}

impl Event {
    /// EXT bit of error codes of faults during this delivery.
    fn ext(&self) -> bool {
        !matches!(self.kind, EventKind::SoftInt | EventKind::SoftException)
    }
    fn soft(&self) -> bool {
        matches!(self.kind, EventKind::SoftInt | EventKind::SoftException)
    }
    /// Error code of faults that refer to this vector's IDT entry.
    fn idt_error(&self) -> u32 {
        u32::from(self.vector) * 8 + 2 + u32::from(self.ext())
    }
}

/// Exception classes of the SDM's double-fault table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Benign,
    Contributory,
    PageFault,
    DoubleFault,
}

fn class(vector: u8) -> Class {
    match vector {
        0 | 10 | 11 | 12 | 13 => Class::Contributory,
        14 => Class::PageFault,
        8 => Class::DoubleFault,
        _ => Class::Benign,
    }
}

/// Whether `vector` is a fault-class exception (the pushed RFLAGS has RF set).
fn is_fault_class(vector: u8) -> bool {
    matches!(vector, 0 | 5 | 6 | 7 | 10..=14 | 16 | 17 | 19 | 20)
}

impl X86Cpu {
    /// Whether an external interrupt may be delivered now: IF set and no interrupt
    /// shadow (STI, MOV SS/POP SS).
    pub fn interrupts_enabled(&self) -> bool {
        self.state.rflags & fl::IF != 0 && !self.state.events.interrupt_shadow
    }

    /// Delivers exception `fault` raised by the instruction at CS:`insn_pc` (which is
    /// pushed as the return address: for traps the run loop passes the next PC).
    /// Writes CR2 for a #PF, promotes to #DF per the SDM's table, and returns
    /// `Err(Shutdown)` on a triple fault.
    pub fn deliver_exception(&mut self, fault: Fault, insn_pc: u64) -> Result<(), Shutdown> {
        let fault = self.noncanonical_fault(fault, insn_pc);
        let insn_pc = self.fault_pc.take().unwrap_or(insn_pc);
        self.deliver(
            Event {
                vector: fault.vector,
                error_code: fault.error_code,
                kind: EventKind::Exception,
                return_pc: insn_pc,
            },
            fault.address,
        )
    }

    /// A #GP(0) the softmmu marked as a non-canonical data access (it carries the
    /// address): #SS(0) if every access of the instruction at `insn_pc` goes through
    /// SS (`crate::translate::stack_only`), else #GP(0); other faults as they are.
    pub(crate) fn noncanonical_fault(&mut self, fault: Fault, insn_pc: u64) -> Fault {
        if fault.vector != 13 || fault.error_code != Some(0) || fault.address.is_none() {
            return fault;
        }
        let stack = crate::translate::decode_at(self, insn_pc)
            .is_some_and(|i| crate::translate::stack_only(&i));
        Fault::with_error(if stack { 12 } else { 13 }, 0)
    }

    /// Delivers external interrupt `vector` at the current RIP.
    pub fn deliver_interrupt(&mut self, vector: u8) -> Result<(), Shutdown> {
        let pc = self.state.rip;
        self.deliver(
            Event {
                vector,
                error_code: None,
                kind: EventKind::External,
                return_pc: pc,
            },
            None,
        )
    }

    /// Delivers an NMI at the current RIP and blocks further NMIs until IRET.
    pub fn deliver_nmi(&mut self) -> Result<(), Shutdown> {
        let pc = self.state.rip;
        self.deliver(
            Event {
                vector: 2,
                error_code: None,
                kind: EventKind::Nmi,
                return_pc: pc,
            },
            None,
        )?;
        self.state.events.nmi_masked = true;
        Ok(())
    }

    /// Delivers `first`, handling faults during delivery (#DF, triple fault).
    pub fn deliver(&mut self, first: Event, cr2: Option<u64>) -> Result<(), Shutdown> {
        if first.vector == PF {
            if let Some(a) = cr2 {
                self.state.cr2 = a;
            }
        }
        let mut cur = first;
        for _ in 0..8 {
            match deliver_event(self, &cur) {
                Ok(()) => {
                    self.state.events.halted = false;
                    self.state.events.interrupt_shadow = false;
                    return Ok(());
                }
                Err(f) => {
                    if let Some(pc) = self.fault_pc.take() {
                        cur.return_pc = pc;
                    }
                    log::debug!(target: "vireo::int", "vector {} faulted with {:?} during delivery", cur.vector, f);
                    if f.vector == PF {
                        if let Some(a) = f.address {
                            self.state.cr2 = a;
                        }
                    }
                    let c1 = if cur.kind == EventKind::Exception {
                        class(cur.vector)
                    } else {
                        Class::Benign
                    };
                    let c2 = class(f.vector);
                    let second_bad = matches!(c2, Class::Contributory | Class::PageFault);
                    cur = match c1 {
                        Class::DoubleFault if second_bad => {
                            log::warn!(target: "vireo::int", "triple fault");
                            return Err(Shutdown);
                        }
                        Class::Contributory if c2 == Class::Contributory => double_fault(&cur),
                        Class::PageFault if second_bad => double_fault(&cur),
                        _ => Event {
                            vector: f.vector,
                            error_code: f.error_code,
                            kind: EventKind::Exception,
                            return_pc: cur.return_pc,
                        },
                    };
                }
            }
        }
        log::warn!(target: "vireo::int", "endless nested faults: shutdown");
        Err(Shutdown)
    }
}

fn double_fault(cur: &Event) -> Event {
    Event {
        vector: DF,
        error_code: Some(0),
        kind: EventKind::Exception,
        return_pc: cur.return_pc,
    }
}

/// The `SoftInt` helper: INT n (kind 0), INT3 (1), INTO (2), INT1 (3). A fault is
/// returned to be delivered for the instruction itself.
pub fn soft_int(cpu: &mut X86Cpu, vector: u8, next_pc: u64, kind: u64) -> Result<(), Fault> {
    let kind = match kind {
        0 => EventKind::SoftInt,
        1 | 2 => EventKind::SoftException,
        _ => EventKind::Icebp,
    };
    if kind == EventKind::SoftInt && cpu.v86() && cpu.iopl() < 3 {
        return Err(seg::gp0());
    }
    deliver_event(
        cpu,
        &Event {
            vector,
            error_code: None,
            kind,
            return_pc: next_pc,
        },
    )?;
    cpu.state.events.halted = false;
    Ok(())
}

/// The RFLAGS image pushed for `ev`.
fn pushed_flags(cpu: &X86Cpu, ev: &Event) -> u64 {
    let f = cpu.rflags();
    if ev.kind == EventKind::Exception && is_fault_class(ev.vector) {
        f | fl::RF
    } else {
        f
    }
}

/// Delivers one event; on a fault, the CPU state is unchanged (apart from memory
/// below the stack pointer and descriptor accessed bits).
pub fn deliver_event(cpu: &mut X86Cpu, ev: &Event) -> Result<(), Fault> {
    log::trace!(target: "vireo::int", "deliver vector {} ({:?}) err {:?} at {:#x}", ev.vector, ev.kind, ev.error_code, ev.return_pc);
    if cpu.state.cr0 & vireo_core::cpu::ctl::CR0_PE == 0 {
        deliver_real(cpu, ev)
    } else if cpu.state.long_mode() {
        deliver_long(cpu, ev)
    } else {
        deliver_protected(cpu, ev)
    }
}

fn deliver_real(cpu: &mut X86Cpu, ev: &Event) -> Result<(), Fault> {
    let off = u64::from(ev.vector) * 4;
    if off + 3 > u64::from(cpu.state.idtr.limit) {
        return Err(Fault::with_error(GP, ev.idt_error()));
    }
    let ent = mmu::read_sys(cpu, cpu.state.idtr.base.wrapping_add(off), 4)?;
    let mut st = Stack::current(cpu);
    st.push(cpu, cpu.rflags(), 2)?;
    st.push(cpu, u64::from(cpu.state.seg[sreg::CS].selector), 2)?;
    st.push(cpu, ev.return_pc, 2)?;
    st.commit(cpu);
    let cs = (ent >> 16) as u16;
    let old = cpu.state.seg[sreg::CS];
    cpu.state.seg[sreg::CS] = seg::real_segment(&old, cs, false);
    cpu.state.rip = ent & 0xffff;
    cpu.state.rflags &= !(fl::IF | fl::TF | fl::AC | fl::RF);
    Ok(())
}

/// Reads the stack pointer for privilege `dpl` from a 16- or 32-bit TSS.
pub fn tss_stack(cpu: &mut X86Cpu, dpl: u8, ext: bool) -> Result<(u16, u64), Fault> {
    let tr = cpu.state.tr;
    if !tr.present || tr.unusable {
        return Err(sel_fault(TS, tr.selector, ext));
    }
    let wide = tr.type_ & 8 != 0;
    let shift = u32::from(wide);
    let index = (u64::from(dpl) * 4 + 2) << shift;
    if index + (4 << shift) - 1 > u64::from(tr.limit) {
        return Err(sel_fault(TS, tr.selector, ext));
    }
    if wide {
        let sp = mmu::read_sys(cpu, tr.base.wrapping_add(index), 4)?;
        let ss = mmu::read_sys(cpu, tr.base.wrapping_add(index + 4), 2)? as u16;
        Ok((ss, sp))
    } else {
        let sp = mmu::read_sys(cpu, tr.base.wrapping_add(index), 2)?;
        let ss = mmu::read_sys(cpu, tr.base.wrapping_add(index + 2), 2)? as u16;
        Ok((ss, sp))
    }
}

/// Checks the stack segment `ss` taken from the TSS for privilege `dpl`.
pub fn check_tss_ss(cpu: &mut X86Cpu, ss: u16, dpl: u8, ext: bool) -> Result<Desc, Fault> {
    if ss & 0xfffc == 0 {
        return Err(Fault::with_error(TS, u32::from(ext)));
    }
    if (ss & 3) as u8 != dpl {
        return Err(sel_fault(TS, ss, ext));
    }
    let d = seg::fetch(cpu, ss)?.ok_or(sel_fault(TS, ss, ext))?;
    if d.dpl() != dpl || !d.writable_data() {
        return Err(sel_fault(TS, ss, ext));
    }
    if !d.present() {
        return Err(sel_fault(SS, ss, ext));
    }
    Ok(d)
}

/// The gate's target code segment, checked (common to 32- and 64-bit IDTs).
fn gate_target(cpu: &mut X86Cpu, sel: u16, ext: bool) -> Result<Desc, Fault> {
    if sel & 0xfffc == 0 {
        return Err(Fault::with_error(GP, u32::from(ext)));
    }
    let d = seg::fetch(cpu, sel)?.ok_or(sel_fault(GP, sel, ext))?;
    if !d.is_code() || d.dpl() > cpu.state.cpl() {
        return Err(sel_fault(GP, sel, ext));
    }
    if !d.present() {
        return Err(sel_fault(NP, sel, ext));
    }
    Ok(d)
}

fn deliver_protected(cpu: &mut X86Cpu, ev: &Event) -> Result<(), Fault> {
    let ext = ev.ext();
    let off = u64::from(ev.vector) * 8;
    if off + 7 > u64::from(cpu.state.idtr.limit) {
        return Err(Fault::with_error(GP, ev.idt_error()));
    }
    let gate = Desc(mmu::read_sys(
        cpu,
        cpu.state.idtr.base.wrapping_add(off),
        8,
    )?);
    let gtype = gate.type5();
    if !matches!(gtype, 5 | 6 | 7 | 0xe | 0xf) {
        return Err(Fault::with_error(GP, ev.idt_error()));
    }
    let cpl = cpu.state.cpl();
    if ev.soft() && gate.dpl() < cpl {
        return Err(Fault::with_error(GP, ev.idt_error()));
    }
    if !gate.present() {
        return Err(Fault::with_error(NP, ev.idt_error()));
    }
    let sel = (gate.0 >> 16) as u16;
    if gtype == 5 {
        task::switch(cpu, sel, TaskSource::Int, ev.return_pc, ext)?;
        if let Some(e) = ev.error_code {
            let size = if cpu.state.tr.type_ & 8 != 0 { 4 } else { 2 };
            let mut st = Stack::current(cpu);
            st.push(cpu, u64::from(e), size)?;
            st.commit(cpu);
        }
        return Ok(());
    }
    let wide = gtype & 8 != 0;
    let size = if wide { 4 } else { 2 };
    let mut offset = (gate.0 & 0xffff) | ((gate.0 >> 32) & 0xffff_0000);
    if !wide {
        offset &= 0xffff;
    }
    let d = gate_target(cpu, sel, ext)?;
    let vm = cpu.v86();
    let inner = !d.conforming() && d.dpl() < cpl;
    if !inner && vm {
        return Err(sel_fault(GP, sel, ext));
    }
    let new_cpl = if inner { d.dpl() } else { cpl };
    if vm && new_cpl != 0 {
        return Err(sel_fault(GP, sel, ext));
    }
    let old_flags = pushed_flags(cpu, ev);
    let old_cs = cpu.state.seg[sreg::CS].selector;
    let mut new_ss = None;
    let mut st = if inner {
        let (ss, sp) = tss_stack(cpu, new_cpl, ext)?;
        let ssd = check_tss_ss(cpu, ss, new_cpl, ext)?;
        let seg = ssd.segment(ss);
        new_ss = Some((ss, ssd));
        let agent = if new_cpl == 3 {
            Agent::User
        } else {
            Agent::Kernel
        };
        let e = u32::from(ss & 0xfffc) | u32::from(ext);
        let mut st = Stack::on(&seg, sp, false, agent, e);
        if vm {
            for r in [sreg::GS, sreg::FS, sreg::DS, sreg::ES] {
                st.push(cpu, u64::from(cpu.state.seg[r].selector), size)?;
            }
        }
        st.push(cpu, u64::from(cpu.state.seg[sreg::SS].selector), size)?;
        st.push(cpu, cpu.state.gpr[reg::RSP], size)?;
        st
    } else {
        Stack::current(cpu)
    };
    st.push(cpu, old_flags, size)?;
    st.push(cpu, u64::from(old_cs), size)?;
    st.push(cpu, ev.return_pc, size)?;
    if let Some(e) = ev.error_code {
        st.push(cpu, u64::from(e), size)?;
    }
    let cs = seg::code_segment(cpu, d, sel, new_cpl);
    if offset > u64::from(cs.limit) {
        return Err(Fault::with_error(GP, u32::from(ext)));
    }
    // Commit.
    seg::set_accessed(cpu, sel, d)?;
    if let Some((ss, ssd)) = new_ss {
        seg::set_accessed(cpu, ss, ssd)?;
        cpu.state.seg[sreg::SS] = Desc(ssd.0 | 1 << 40).segment(ss);
        cpu.state.gpr[reg::RSP] = st.rsp(cpu.state.gpr[reg::RSP]);
        if vm {
            for r in [sreg::ES, sreg::DS, sreg::FS, sreg::GS] {
                cpu.state.seg[r] = seg::null_segment(0);
            }
        }
    } else {
        st.commit(cpu);
    }
    cpu.state.seg[sreg::CS] = cs;
    cpu.state.rip = offset;
    let mut clear = fl::TF | fl::VM | fl::RF | fl::NT;
    if gtype & 1 == 0 {
        clear |= fl::IF;
    }
    cpu.state.rflags &= !clear;
    Ok(())
}

fn deliver_long(cpu: &mut X86Cpu, ev: &Event) -> Result<(), Fault> {
    let ext = ev.ext();
    let off = u64::from(ev.vector) * 16;
    if off + 15 > u64::from(cpu.state.idtr.limit) {
        return Err(Fault::with_error(GP, ev.idt_error()));
    }
    let base = cpu.state.idtr.base.wrapping_add(off);
    let lo = Desc(mmu::read_sys(cpu, base, 8)?);
    let hi = mmu::read_sys(cpu, base.wrapping_add(8), 8)?;
    let gtype = lo.type5();
    if !matches!(gtype, 0xe | 0xf) || (hi >> 40) & 0x1f != 0 {
        return Err(Fault::with_error(GP, ev.idt_error()));
    }
    let cpl = cpu.state.cpl();
    if ev.soft() && lo.dpl() < cpl {
        return Err(Fault::with_error(GP, ev.idt_error()));
    }
    if !lo.present() {
        return Err(Fault::with_error(NP, ev.idt_error()));
    }
    let sel = (lo.0 >> 16) as u16;
    let offset = (lo.0 & 0xffff) | ((lo.0 >> 32) & 0xffff_0000) | ((hi & 0xffff_ffff) << 32);
    let ist = (lo.0 >> 32) & 7;
    let d = gate_target(cpu, sel, ext)?;
    if !d.l() || d.db() {
        return Err(sel_fault(GP, sel, ext));
    }
    let new_cpl = if d.conforming() { cpl } else { d.dpl() };
    let tr = cpu.state.tr;
    let mut rsp = if new_cpl < cpl || ist != 0 {
        let index = if ist != 0 {
            0x1c + ist * 8
        } else {
            4 + u64::from(new_cpl) * 8
        };
        if index + 7 > u64::from(tr.limit) || !tr.present {
            return Err(sel_fault(TS, tr.selector, ext));
        }
        mmu::read_sys(cpu, tr.base.wrapping_add(index), 8)?
    } else {
        cpu.state.gpr[reg::RSP]
    };
    if !mmu::is_canonical(rsp) {
        return Err(Fault::with_error(SS, u32::from(ext)));
    }
    rsp &= !0xf;
    let agent = if new_cpl == 3 {
        Agent::User
    } else {
        Agent::Kernel
    };
    let ss_seg = cpu.state.seg[sreg::SS];
    let mut st = Stack::on(&ss_seg, rsp, true, agent, u32::from(ext));
    let frame = [
        u64::from(ss_seg.selector),
        cpu.state.gpr[reg::RSP],
        pushed_flags(cpu, ev),
        u64::from(cpu.state.seg[sreg::CS].selector),
        ev.return_pc,
        u64::from(ev.error_code.unwrap_or(0)),
    ];
    let len = if ev.error_code.is_some() { 6 } else { 5 };
    st.push_all(cpu, &frame[..len], 8)?;
    if !mmu::is_canonical(offset) {
        return Err(Fault::with_error(GP, u32::from(ext)));
    }
    seg::set_accessed(cpu, sel, d)?;
    if new_cpl < cpl {
        let mut ss = seg::null_segment(u16::from(new_cpl));
        ss.dpl = new_cpl;
        cpu.state.seg[sreg::SS] = ss;
    }
    cpu.state.gpr[reg::RSP] = st.sp;
    cpu.state.seg[sreg::CS] = seg::code_segment(cpu, d, sel, new_cpl);
    cpu.state.rip = offset;
    let mut clear = fl::TF | fl::VM | fl::RF | fl::NT;
    if gtype & 1 == 0 {
        clear |= fl::IF;
    }
    cpu.state.rflags &= !clear;
    Ok(())
}
