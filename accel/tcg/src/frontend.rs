//! Every call the engine makes into the x86 frontend, in one place.
//!
//! The run loop needs five things from the frontend: translate a block at CS:RIP, the
//! mode key of the current CPU mode, the physical address of a code byte, exception
//! delivery and external-interrupt delivery. While the translator and the MMU/exception
//! code are being written, the functions below stand in for the missing parts (paging-off
//! code addresses, real-mode-only delivery, no translator); each says what it waits for.

use vireo_core::cpu::{flags, sreg};
use vireo_core::exec::Fault;
use vireo_core::ir::{Block, MmuIdx, Size};
use vireo_x86::X86Cpu;

/// Why a block could not be translated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TranslateError {
    /// A guest exception fetching the first instruction (#PF, #GP on a CS limit): it is
    /// delivered like any other fault.
    Fault(Fault),
    /// The engine cannot translate here at all (no translator in this build).
    Unavailable(String),
}

/// Why an event could not be delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryError {
    /// A fault while delivering a double fault: the CPU shuts down.
    TripleFault,
    /// The engine cannot deliver in the current mode (an incomplete frontend).
    Unsupported(String),
}

/// Translates the block at the CPU's CS:RIP, at most `max_insns` instructions.
pub fn translate(_cpu: &mut X86Cpu, _max_insns: usize) -> Result<Block, TranslateError> {
    // Waits for `vireo_x86::translate::translate_block`.
    Err(TranslateError::Unavailable(
        "the x86 translator is not built yet".into(),
    ))
}

/// Everything besides CS base, RIP and physical address that changes how guest code
/// translates (operand/address sizes, CPU mode, CPL...): part of the block-cache key.
pub fn mode_key(cpu: &X86Cpu) -> u64 {
    // Waits for `vireo_x86::translate::mode_key`; this one covers what a translator
    // can depend on in the modes the stand-ins support.
    let s = &cpu.state;
    let cs = &s.seg[sreg::CS];
    let ss = &s.seg[sreg::SS];
    u64::from(cs.db)
        | u64::from(cs.l) << 1
        | u64::from(ss.db) << 2
        | u64::from(s.cpl()) << 3
        | (s.cr0 & 0xffff_ffff) << 8
        | (s.efer & 0xffff) << 40
        | u64::from(s.rflags & flags::VM != 0) << 56
}

/// Whether the CPU runs 64-bit code (linear addresses are not truncated to 32 bits).
fn in_64bit_mode(cpu: &X86Cpu) -> bool {
    cpu.state.long_mode() && cpu.state.seg[sreg::CS].l
}

/// The linear address of the instruction at CS:`pc`.
pub fn code_linear(cpu: &X86Cpu, pc: u64) -> u64 {
    let linear = cpu.state.seg[sreg::CS].base.wrapping_add(pc);
    if in_64bit_mode(cpu) {
        linear
    } else {
        linear & 0xffff_ffff
    }
}

/// The physical address of the code byte at `linear` (an instruction-fetch access).
pub fn code_phys(cpu: &mut X86Cpu, linear: u64) -> Result<u64, Fault> {
    // Waits for `vireo_x86::mmu::translate_code`: paging off, A20 honoured.
    let a20 = if cpu.bus.a20.enabled() {
        u64::MAX
    } else {
        !(1u64 << 20)
    };
    Ok(linear & a20)
}

/// Whether an external interrupt may be delivered now (IF set, no interrupt shadow).
pub fn interrupts_enabled(cpu: &X86Cpu) -> bool {
    cpu.state.rflags & flags::IF != 0 && !cpu.state.events.interrupt_shadow
}

/// Delivers exception `fault` raised by the instruction at CS:`insn_pc`.
pub fn deliver_exception(
    cpu: &mut X86Cpu,
    fault: Fault,
    insn_pc: u64,
) -> Result<(), DeliveryError> {
    // Waits for `X86Cpu::deliver_exception`.
    if fault.vector == 14 {
        if let Some(a) = fault.address {
            cpu.state.cr2 = a;
        }
    }
    real_mode_vector(cpu, fault.vector, insn_pc)
}

/// Delivers external interrupt `vector` (acknowledged from the interrupt controller).
pub fn deliver_interrupt(cpu: &mut X86Cpu, vector: u8) -> Result<(), DeliveryError> {
    // Waits for `X86Cpu::deliver_interrupt`.
    let pc = cpu.state.rip;
    real_mode_vector(cpu, vector, pc)
}

/// Real-mode delivery through the IVT: push FLAGS, CS, IP (= `return_pc`), clear IF,
/// TF and AC, load CS:IP from the vector's entry.
fn real_mode_vector(cpu: &mut X86Cpu, vector: u8, return_pc: u64) -> Result<(), DeliveryError> {
    use vireo_core::cpu::ctl::CR0_PE;
    if cpu.state.cr0 & CR0_PE != 0 {
        return Err(DeliveryError::Unsupported(format!(
            "vector {vector} in protected mode: exception delivery is not built yet"
        )));
    }
    let fail = |f: Fault| DeliveryError::Unsupported(format!("real-mode delivery: {f:?}"));
    let ivt = cpu.state.idtr.base.wrapping_add(u64::from(vector) * 4);
    let ip = cpu.load_phys_u16(ivt).map_err(fail)?;
    let cs = cpu.load_phys_u16(ivt + 2).map_err(fail)?;
    let image = cpu.rflags() & 0xffff;
    let old_cs = u64::from(cpu.state.seg[sreg::CS].selector);
    for v in [image, old_cs, return_pc & 0xffff] {
        cpu.push16(v).map_err(fail)?;
    }
    let rf = cpu.state.rflags & !(flags::IF | flags::TF | flags::AC | flags::RF);
    cpu.state.rflags = rf;
    let seg = &mut cpu.state.seg[sreg::CS];
    seg.selector = cs;
    seg.base = u64::from(cs) << 4;
    cpu.state.rip = u64::from(ip);
    Ok(())
}

/// Small real-mode memory helpers for the stand-in delivery.
trait RealModeAccess {
    fn load_phys_u16(&mut self, linear: u64) -> Result<u16, Fault>;
    fn push16(&mut self, v: u64) -> Result<(), Fault>;
}

impl RealModeAccess for X86Cpu {
    fn load_phys_u16(&mut self, linear: u64) -> Result<u16, Fault> {
        Ok(vireo_x86::mmu::read(self, linear, Size::B16, MmuIdx::Kernel)? as u16)
    }

    fn push16(&mut self, v: u64) -> Result<(), Fault> {
        let sp = self.state.gpr[vireo_core::cpu::reg::RSP].wrapping_sub(2) & 0xffff;
        let base = self.state.seg[sreg::SS].base;
        vireo_x86::mmu::write(self, base.wrapping_add(sp), v, Size::B16, MmuIdx::Kernel)?;
        let rsp = &mut self.state.gpr[vireo_core::cpu::reg::RSP];
        *rsp = (*rsp & !0xffff) | sp;
        Ok(())
    }
}
