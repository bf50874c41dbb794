//! Far control transfers: far JMP and CALL (code segments, call gates with privilege
//! change and parameter copy, task gates and TSS selectors), far RET (to outer
//! privilege) and IRET in every mode.
//!
//! Each function checks everything before changing registers: a fault leaves the
//! CPU as it was before the instruction (apart from memory below the stack pointer
//! and descriptor accessed bits, as on hardware).

use crate::cpu::X86Cpu;
use crate::exception::{check_tss_ss, tss_stack};
use crate::mmu::{self, Agent};
use crate::seg::{self, gp0, sel_fault, Desc, GP, NP, SS, TS};
use crate::stack::Stack;
use crate::task::{self, TaskSource};
use vireo_core::cpu::{flags as fl, reg, sreg, Segment};
use vireo_core::exec::Fault;

fn opmask(opsize: u64) -> u64 {
    match opsize {
        16 => 0xffff,
        32 => 0xffff_ffff,
        _ => u64::MAX,
    }
}

fn opbytes(opsize: u64) -> usize {
    match opsize {
        16 => 2,
        32 => 4,
        _ => 8,
    }
}

/// Length of the instruction at CS:`insn_pc` (for JMP/IRET task switches, which save
/// the next EIP in the outgoing TSS).
fn insn_len(cpu: &mut X86Cpu) -> u64 {
    let cs = cpu.state.seg[sreg::CS];
    let bitness = if cpu.long64() {
        64
    } else if cs.db {
        32
    } else {
        16
    };
    let mut buf = [0u8; 15];
    let mut n = 0;
    while n < buf.len() {
        let la = cs.base.wrapping_add(cpu.insn_pc).wrapping_add(n as u64);
        if mmu::fetch(cpu, la, &mut buf[n..=n]).is_err() {
            break;
        }
        n += 1;
    }
    let mut dec = iced_x86::Decoder::new(bitness, &buf[..n], iced_x86::DecoderOptions::NONE);
    let insn = dec.decode();
    insn.len() as u64
}

/// Where the new CS:RIP is checked: the limit outside 64-bit code, canonical in it.
fn check_target(cpu: &X86Cpu, cs: &Segment, rip: u64) -> Result<(), Fault> {
    let ok = if cpu.state.long_mode() && cs.l {
        mmu::is_canonical(rip)
    } else {
        rip <= u64::from(cs.limit)
    };
    if ok {
        Ok(())
    } else {
        Err(gp0())
    }
}

/// CS for a real- or V86-mode far transfer.
fn real_cs(cpu: &X86Cpu, sel: u16) -> Segment {
    let v86 = cpu.v86();
    let mut s = seg::real_segment(&cpu.state.seg[sreg::CS], sel, v86);
    if v86 {
        s.type_ = 0xb;
    }
    s
}

/// Checks a direct transfer to code segment `d` (JMP/CALL); returns the new CS.
fn check_direct_code(cpu: &mut X86Cpu, sel: u16, d: Desc) -> Result<Segment, Fault> {
    let cpl = cpu.state.cpl();
    let rpl = (sel & 3) as u8;
    if !d.is_code() {
        return Err(sel_fault(GP, sel, false));
    }
    if d.conforming() {
        if d.dpl() > cpl {
            return Err(sel_fault(GP, sel, false));
        }
    } else if rpl > cpl || d.dpl() != cpl {
        return Err(sel_fault(GP, sel, false));
    }
    if !d.present() {
        return Err(sel_fault(NP, sel, false));
    }
    Ok(seg::code_segment(cpu, d, sel, cpl))
}

/// A call gate, decoded: target selector and offset, parameter count, width.
struct Gate {
    sel: u16,
    offset: u64,
    params: u64,
    /// Bytes per pushed value (2, 4 or 8).
    size: usize,
}

/// Reads and checks a call gate at `sel` whose low half is `d`.
fn read_call_gate(cpu: &mut X86Cpu, sel: u16, d: Desc) -> Result<Gate, Fault> {
    let sel_t = (d.0 >> 16) as u16;
    let mut offset = (d.0 & 0xffff) | ((d.0 >> 32) & 0xffff_0000);
    let size = if cpu.state.long_mode() {
        let hi = seg::fetch_high(cpu, sel)?.ok_or(sel_fault(GP, sel, false))?;
        if (hi >> 40) & 0x1f != 0 {
            return Err(sel_fault(GP, sel, false));
        }
        offset |= (hi & 0xffff_ffff) << 32;
        8
    } else if d.type4() == 0xc {
        4
    } else {
        offset &= 0xffff;
        2
    };
    Ok(Gate {
        sel: sel_t,
        offset,
        params: (d.0 >> 32) & 0x1f,
        size,
    })
}

/// The target code segment of a call gate (checked for JMP when `jmp`).
fn gate_code(cpu: &mut X86Cpu, g: &Gate, jmp: bool) -> Result<Desc, Fault> {
    if g.sel & 0xfffc == 0 {
        return Err(gp0());
    }
    let d = seg::fetch(cpu, g.sel)?.ok_or(sel_fault(GP, g.sel, false))?;
    let cpl = cpu.state.cpl();
    let bad = !d.is_code()
        || d.dpl() > cpl
        || (jmp && !d.conforming() && d.dpl() != cpl)
        || (cpu.state.long_mode() && (!d.l() || d.db()));
    if bad {
        return Err(sel_fault(GP, g.sel, false));
    }
    if !d.present() {
        return Err(sel_fault(NP, g.sel, false));
    }
    Ok(d)
}

/// Checks a system descriptor used by far JMP/CALL; returns its 5-bit type.
fn check_system(cpu: &X86Cpu, sel: u16, d: Desc) -> Result<u8, Fault> {
    let cpl = cpu.state.cpl();
    let rpl = (sel & 3) as u8;
    let t = d.type4();
    let ok = if cpu.state.long_mode() {
        t == 0xc
    } else {
        matches!(t, 1 | 4 | 5 | 9 | 0xc)
    };
    if !ok || d.dpl() < cpl || d.dpl() < rpl {
        return Err(sel_fault(GP, sel, false));
    }
    if !d.present() {
        return Err(sel_fault(NP, sel, false));
    }
    Ok(t)
}

/// A task switch through a TSS descriptor or a task gate.
fn task_via(cpu: &mut X86Cpu, sel: u16, d: Desc, src: TaskSource, ret: u64) -> Result<(), Fault> {
    let tss = if d.type4() == 5 {
        (d.0 >> 16) as u16
    } else {
        sel
    };
    task::switch(cpu, tss, src, ret, false)
}

/// Far JMP.
pub fn far_jmp(cpu: &mut X86Cpu, sel: u16, offset: u64, opsize: u64) -> Result<(), Fault> {
    let offset = offset & opmask(opsize);
    if !cpu.protected() {
        let cs = real_cs(cpu, sel);
        check_target(cpu, &cs, offset)?;
        cpu.state.seg[sreg::CS] = cs;
        cpu.state.rip = offset;
        return Ok(());
    }
    if sel & 0xfffc == 0 {
        return Err(gp0());
    }
    let d = seg::fetch(cpu, sel)?.ok_or(sel_fault(GP, sel, false))?;
    if d.s() {
        let cs = check_direct_code(cpu, sel, d)?;
        check_target(cpu, &cs, offset)?;
        seg::set_accessed(cpu, sel, d)?;
        cpu.state.seg[sreg::CS] = cs;
        cpu.state.rip = offset;
        return Ok(());
    }
    match check_system(cpu, sel, d)? {
        1 | 5 | 9 => {
            let next = cpu.insn_pc.wrapping_add(insn_len(cpu));
            task_via(cpu, sel, d, TaskSource::Jmp, next)
        }
        _ => {
            let g = read_call_gate(cpu, sel, d)?;
            let td = gate_code(cpu, &g, true)?;
            let cpl = cpu.state.cpl();
            let cs = seg::code_segment(cpu, td, g.sel, cpl);
            check_target(cpu, &cs, g.offset)?;
            seg::set_accessed(cpu, g.sel, td)?;
            cpu.state.seg[sreg::CS] = cs;
            cpu.state.rip = g.offset;
            Ok(())
        }
    }
}

/// Far CALL.
pub fn far_call(
    cpu: &mut X86Cpu,
    sel: u16,
    offset: u64,
    opsize: u64,
    next_pc: u64,
) -> Result<(), Fault> {
    let offset = offset & opmask(opsize);
    let size = opbytes(opsize);
    let old_cs = u64::from(cpu.state.seg[sreg::CS].selector);
    if !cpu.protected() {
        let cs = real_cs(cpu, sel);
        check_target(cpu, &cs, offset)?;
        let mut st = Stack::current(cpu);
        st.push(cpu, old_cs, size)?;
        st.push(cpu, next_pc, size)?;
        st.commit(cpu);
        cpu.state.seg[sreg::CS] = cs;
        cpu.state.rip = offset;
        return Ok(());
    }
    if sel & 0xfffc == 0 {
        return Err(gp0());
    }
    let d = seg::fetch(cpu, sel)?.ok_or(sel_fault(GP, sel, false))?;
    if d.s() {
        let cs = check_direct_code(cpu, sel, d)?;
        check_target(cpu, &cs, offset)?;
        let mut st = Stack::current(cpu);
        st.push(cpu, old_cs, size)?;
        st.push(cpu, next_pc, size)?;
        seg::set_accessed(cpu, sel, d)?;
        st.commit(cpu);
        cpu.state.seg[sreg::CS] = cs;
        cpu.state.rip = offset;
        return Ok(());
    }
    match check_system(cpu, sel, d)? {
        1 | 5 | 9 => task_via(cpu, sel, d, TaskSource::Call, next_pc),
        _ => call_gate(cpu, sel, d, next_pc),
    }
}

fn call_gate(cpu: &mut X86Cpu, sel: u16, d: Desc, next_pc: u64) -> Result<(), Fault> {
    let g = read_call_gate(cpu, sel, d)?;
    let td = gate_code(cpu, &g, false)?;
    let cpl = cpu.state.cpl();
    let old_cs = u64::from(cpu.state.seg[sreg::CS].selector);
    let old_ss = cpu.state.seg[sreg::SS];
    let old_rsp = cpu.state.gpr[reg::RSP];
    if td.conforming() || td.dpl() == cpl {
        let cs = seg::code_segment(cpu, td, g.sel, cpl);
        check_target(cpu, &cs, g.offset)?;
        let mut st = Stack::current(cpu);
        st.push(cpu, old_cs, g.size)?;
        st.push(cpu, next_pc, g.size)?;
        seg::set_accessed(cpu, g.sel, td)?;
        st.commit(cpu);
        cpu.state.seg[sreg::CS] = cs;
        cpu.state.rip = g.offset;
        return Ok(());
    }
    // More privileged: switch stacks.
    let new_cpl = td.dpl();
    let agent = if new_cpl == 3 {
        Agent::User
    } else {
        Agent::Kernel
    };
    let cs = seg::code_segment(cpu, td, g.sel, new_cpl);
    check_target(cpu, &cs, g.offset)?;
    if cpu.state.long_mode() {
        let tr = cpu.state.tr;
        let index = 4 + u64::from(new_cpl) * 8;
        if index + 7 > u64::from(tr.limit) {
            return Err(sel_fault(TS, tr.selector, false));
        }
        let rsp = mmu::read_sys(cpu, tr.base.wrapping_add(index), 8)?;
        if !mmu::is_canonical(rsp) {
            return Err(Fault::with_error(SS, 0));
        }
        let mut st = Stack::on(&old_ss, rsp, true, agent, 0);
        st.push(cpu, u64::from(old_ss.selector), 8)?;
        st.push(cpu, old_rsp, 8)?;
        st.push(cpu, old_cs, 8)?;
        st.push(cpu, next_pc, 8)?;
        seg::set_accessed(cpu, g.sel, td)?;
        let mut ss = seg::null_segment(u16::from(new_cpl));
        ss.dpl = new_cpl;
        cpu.state.seg[sreg::SS] = ss;
        cpu.state.gpr[reg::RSP] = st.sp;
    } else {
        let (ss, sp) = tss_stack(cpu, new_cpl, false)?;
        let ssd = check_tss_ss(cpu, ss, new_cpl, false)?;
        let new_ss = ssd.segment(ss);
        let mut st = Stack::on(&new_ss, sp, false, agent, u32::from(ss & 0xfffc));
        st.push(cpu, u64::from(old_ss.selector), g.size)?;
        st.push(cpu, old_rsp, g.size)?;
        let old = Stack::current(cpu);
        for i in (0..g.params).rev() {
            let v = old.peek(cpu, i * g.size as u64, g.size)?;
            st.push(cpu, v, g.size)?;
        }
        st.push(cpu, old_cs, g.size)?;
        st.push(cpu, next_pc, g.size)?;
        seg::set_accessed(cpu, g.sel, td)?;
        seg::set_accessed(cpu, ss, ssd)?;
        cpu.state.seg[sreg::SS] = Desc(ssd.0 | 1 << 40).segment(ss);
        cpu.state.gpr[reg::RSP] = st.rsp(old_rsp);
    }
    cpu.state.seg[sreg::CS] = cs;
    cpu.state.rip = g.offset;
    Ok(())
}

/// Checks the code segment a RET/IRET returns to; returns its descriptor.
fn check_return_cs(cpu: &mut X86Cpu, sel: u16) -> Result<Desc, Fault> {
    if sel & 0xfffc == 0 {
        return Err(gp0());
    }
    let d = seg::fetch(cpu, sel)?.ok_or(sel_fault(GP, sel, false))?;
    let cpl = cpu.state.cpl();
    let rpl = (sel & 3) as u8;
    let bad = !d.is_code()
        || rpl < cpl
        || if d.conforming() {
            d.dpl() > rpl
        } else {
            d.dpl() != rpl
        };
    if bad {
        return Err(sel_fault(GP, sel, false));
    }
    if !d.present() {
        return Err(sel_fault(NP, sel, false));
    }
    Ok(d)
}

/// Checks the SS a return to outer privilege `rpl` loads; `None` for an allowed null
/// SS (64-bit target at CPL < 3).
fn check_return_ss(
    cpu: &mut X86Cpu,
    sel: u16,
    rpl: u8,
    target64: bool,
) -> Result<(Segment, Option<Desc>), Fault> {
    if sel & 0xfffc == 0 {
        if cpu.state.long_mode() && target64 && rpl != 3 {
            let mut s = seg::null_segment(sel);
            s.dpl = rpl;
            return Ok((s, None));
        }
        return Err(gp0());
    }
    if (sel & 3) as u8 != rpl {
        return Err(sel_fault(GP, sel, false));
    }
    let d = seg::fetch(cpu, sel)?.ok_or(sel_fault(GP, sel, false))?;
    if !d.writable_data() || d.dpl() != rpl {
        return Err(sel_fault(GP, sel, false));
    }
    if !d.present() {
        return Err(sel_fault(SS, sel, false));
    }
    Ok((Desc(d.0 | 1 << 40).segment(sel), Some(d)))
}

/// Far RET, popping `imm` extra bytes.
pub fn far_ret(cpu: &mut X86Cpu, opsize: u64, imm: u64) -> Result<(), Fault> {
    let size = opbytes(opsize);
    let mut st = Stack::current(cpu);
    let rip = st.pop(cpu, size)? & opmask(opsize);
    let sel = st.pop(cpu, size)? as u16;
    if !cpu.protected() {
        let cs = real_cs(cpu, sel);
        check_target(cpu, &cs, rip)?;
        st.skip(imm);
        st.commit(cpu);
        cpu.state.seg[sreg::CS] = cs;
        cpu.state.rip = rip;
        return Ok(());
    }
    let d = check_return_cs(cpu, sel)?;
    let cpl = cpu.state.cpl();
    let rpl = (sel & 3) as u8;
    let cs = seg::code_segment(cpu, d, sel, rpl);
    check_target(cpu, &cs, rip)?;
    st.skip(imm);
    if rpl == cpl {
        seg::set_accessed(cpu, sel, d)?;
        st.commit(cpu);
        cpu.state.seg[sreg::CS] = cs;
        cpu.state.rip = rip;
        return Ok(());
    }
    let new_sp = st.pop(cpu, size)?;
    let ss_sel = st.pop(cpu, size)? as u16;
    let (ss, ssd) = check_return_ss(cpu, ss_sel, rpl, cs.l)?;
    seg::set_accessed(cpu, sel, d)?;
    if let Some(ssd) = ssd {
        seg::set_accessed(cpu, ss_sel, ssd)?;
    }
    let long64 = cpu.state.long_mode() && cs.l;
    let mut nst = Stack::on(&ss, new_sp, long64, Agent::User, 0);
    nst.skip(imm);
    let old_rsp = cpu.state.gpr[reg::RSP];
    cpu.state.seg[sreg::CS] = cs;
    cpu.state.seg[sreg::SS] = ss;
    cpu.state.gpr[reg::RSP] = nst.rsp(old_rsp);
    cpu.state.rip = rip;
    seg::invalidate_data_segments(cpu, rpl);
    Ok(())
}

/// Arithmetic flags and DF: always loaded by IRET/POPF.
const ALWAYS: u64 = fl::CF | fl::PF | fl::AF | fl::ZF | fl::SF | fl::OF | fl::DF;

/// Replaces the `mask` bits of RFLAGS with those of `v`.
pub fn load_flags(cpu: &mut X86Cpu, v: u64, mask: u64) {
    let f = (cpu.rflags() & !mask) | (v & mask);
    cpu.set_rflags(f);
}

/// IRET / IRETD / IRETQ.
pub fn iret(cpu: &mut X86Cpu, opsize: u64) -> Result<(), Fault> {
    let size = opbytes(opsize);
    let mask16 = if opsize == 16 { 0xffff } else { u64::MAX };
    let pe = cpu.state.cr0 & vireo_core::cpu::ctl::CR0_PE != 0;
    if pe && !cpu.v86() && cpu.state.rflags & fl::NT != 0 {
        if cpu.state.long_mode() {
            return Err(gp0());
        }
        let next = cpu.insn_pc.wrapping_add(insn_len(cpu));
        task::task_return(cpu, next)?;
        cpu.state.events.nmi_masked = false;
        return Ok(());
    }
    let mut st = Stack::current(cpu);
    let rip = st.pop(cpu, size)? & opmask(opsize);
    let sel = st.pop(cpu, size)? as u16;
    let flags = st.pop(cpu, size)?;
    if !pe || cpu.v86() {
        let base = ALWAYS | fl::TF | fl::AC | fl::ID | fl::IF | fl::NT | fl::RF;
        let mask = if !pe {
            base | fl::IOPL
        } else {
            if cpu.iopl() < 3 {
                return Err(gp0());
            }
            base
        };
        let cs = real_cs(cpu, sel);
        check_target(cpu, &cs, rip)?;
        st.commit(cpu);
        cpu.state.seg[sreg::CS] = cs;
        cpu.state.rip = rip;
        load_flags(cpu, flags, mask & mask16);
        cpu.state.events.nmi_masked = false;
        return Ok(());
    }
    let cpl = cpu.state.cpl();
    if opsize == 32 && flags & fl::VM != 0 && cpl == 0 && !cpu.state.long_mode() {
        return iret_to_v86(cpu, st, rip, sel, flags);
    }
    let d = check_return_cs(cpu, sel)?;
    let rpl = (sel & 3) as u8;
    let cs = seg::code_segment(cpu, d, sel, rpl);
    check_target(cpu, &cs, rip)?;
    let mut mask = ALWAYS | fl::TF | fl::AC | fl::ID | fl::RF | fl::NT;
    if cpl == 0 {
        mask |= fl::IOPL | fl::VIF | fl::VIP;
    }
    if cpl <= cpu.iopl() {
        mask |= fl::IF;
    }
    mask &= mask16;
    if rpl == cpl && !cpu.long64() {
        seg::set_accessed(cpu, sel, d)?;
        st.commit(cpu);
        cpu.state.seg[sreg::CS] = cs;
        cpu.state.rip = rip;
        load_flags(cpu, flags, mask);
        cpu.state.events.nmi_masked = false;
        return Ok(());
    }
    let new_sp = st.pop(cpu, size)?;
    let ss_sel = st.pop(cpu, size)? as u16;
    let (ss, ssd) = if rpl == cpl && ss_sel & 0xfffc == 0 && cpu.long64() && rpl != 3 {
        let mut s = seg::null_segment(ss_sel);
        s.dpl = rpl;
        (s, None)
    } else {
        check_return_ss(cpu, ss_sel, rpl, cs.l)?
    };
    seg::set_accessed(cpu, sel, d)?;
    if let Some(ssd) = ssd {
        seg::set_accessed(cpu, ss_sel, ssd)?;
    }
    let long64 = cpu.state.long_mode() && cs.l;
    let nst = Stack::on(&ss, new_sp, long64, Agent::User, 0);
    let old_rsp = cpu.state.gpr[reg::RSP];
    cpu.state.seg[sreg::CS] = cs;
    cpu.state.seg[sreg::SS] = ss;
    cpu.state.gpr[reg::RSP] = if size == 2 {
        nst.rsp(old_rsp)
    } else {
        new_sp & if long64 { u64::MAX } else { 0xffff_ffff }
    };
    cpu.state.rip = rip;
    load_flags(cpu, flags, mask);
    if rpl > cpl {
        seg::invalidate_data_segments(cpu, rpl);
    }
    cpu.state.events.nmi_masked = false;
    Ok(())
}

/// IRETD at CPL 0 with VM set in the popped EFLAGS: back to virtual-8086 mode.
fn iret_to_v86(
    cpu: &mut X86Cpu,
    mut st: Stack,
    rip: u64,
    cs: u16,
    flags: u64,
) -> Result<(), Fault> {
    let esp = st.pop(cpu, 4)?;
    let mut sels = [0u16; 5];
    for s in sels.iter_mut() {
        *s = st.pop(cpu, 4)? as u16;
    }
    let [ss, es, ds, fs, gs] = sels;
    let rip = rip & 0xffff;
    let mask = ALWAYS
        | fl::TF
        | fl::AC
        | fl::ID
        | fl::RF
        | fl::NT
        | fl::IF
        | fl::IOPL
        | fl::VM
        | fl::VIF
        | fl::VIP;
    load_flags(cpu, flags, mask);
    for (r, sel) in [
        (sreg::CS, cs),
        (sreg::SS, ss),
        (sreg::ES, es),
        (sreg::DS, ds),
        (sreg::FS, fs),
        (sreg::GS, gs),
    ] {
        let old = cpu.state.seg[r];
        cpu.state.seg[r] = seg::real_segment(&old, sel, true);
    }
    cpu.state.seg[sreg::CS].type_ = 0xb;
    cpu.state.gpr[reg::RSP] = esp & 0xffff_ffff;
    cpu.state.rip = rip;
    cpu.state.events.nmi_masked = false;
    Ok(())
}
