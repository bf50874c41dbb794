//! Every call the engine makes into the x86 frontend, in one place: block translation,
//! the mode key, code addresses, and event delivery.

use vireo_core::exec::Fault;
use vireo_core::ir::Block;
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
pub fn translate(cpu: &mut X86Cpu, max_insns: usize) -> Result<Block, TranslateError> {
    vireo_x86::translate::translate_block(cpu, max_insns).map_err(TranslateError::Fault)
}

/// The CPU's state as block keys and lookup epochs see it: the mode key
/// (everything besides CS base, RIP and physical address that changes how guest
/// code translates; bit 63 single-stepping), CPL, MMU generation, A20.
pub fn epoch_state(cpu: &X86Cpu) -> vireo_x86::mmu::EpochState {
    vireo_x86::mmu::epoch_state(cpu)
}

/// Whether the CPU runs 64-bit code (linear addresses are not truncated to 32 bits).
fn in_64bit_mode(cpu: &X86Cpu) -> bool {
    cpu.state.long_mode() && cpu.state.seg[vireo_core::cpu::sreg::CS].l
}

/// The linear address of the instruction at CS:`pc`.
pub fn code_linear(cpu: &X86Cpu, pc: u64) -> u64 {
    let linear = cpu.state.seg[vireo_core::cpu::sreg::CS]
        .base
        .wrapping_add(pc);
    if in_64bit_mode(cpu) {
        linear
    } else {
        linear & 0xffff_ffff
    }
}

/// The physical address of the code byte at `linear` (an instruction-fetch access:
/// page walk with execute permission, A20).
pub fn code_phys(cpu: &mut X86Cpu, linear: u64) -> Result<u64, Fault> {
    vireo_x86::mmu::translate_code(cpu, linear)
}

/// Whether an external interrupt may be delivered now (IF set, no interrupt shadow).
pub fn interrupts_enabled(cpu: &X86Cpu) -> bool {
    cpu.interrupts_enabled()
}

/// Delivers exception `fault` raised by the instruction at CS:`insn_pc`.
pub fn deliver_exception(
    cpu: &mut X86Cpu,
    fault: Fault,
    insn_pc: u64,
) -> Result<(), DeliveryError> {
    cpu.deliver_exception(fault, insn_pc)
        .map_err(|_| DeliveryError::TripleFault)
}

/// Delivers external interrupt `vector` (acknowledged from the interrupt controller).
pub fn deliver_interrupt(cpu: &mut X86Cpu, vector: u8) -> Result<(), DeliveryError> {
    cpu.deliver_interrupt(vector)
        .map_err(|_| DeliveryError::TripleFault)
}

/// Delivers an NMI (vector 2) at the current RIP; further NMIs are blocked until IRET.
pub fn deliver_nmi(cpu: &mut X86Cpu) -> Result<(), DeliveryError> {
    cpu.deliver_nmi().map_err(|_| DeliveryError::TripleFault)
}
