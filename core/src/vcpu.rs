//! The engine boundary: one trait for a virtual CPU, whatever runs it.

use crate::cpu::CpuState;
use crate::error::Result;
use std::sync::Arc;

/// Why [`Vcpu::run`] returned. Port and MMIO accesses never show up here: the engine
/// serves them from the machine's buses itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VcpuExit {
    /// The guest executed HLT with interrupts disabled, or HLT with no interrupt
    /// controller in the engine to wake it: it can only be woken from outside.
    Halted,
    /// Shutdown (triple fault): a PC resets.
    Shutdown,
    /// A device asked the machine to stop (see [`crate::MachineControl`]), or the vCPU
    /// was kicked from another thread.
    Stopped,
    /// The engine cannot execute the current instruction (for KVM: the host's
    /// instruction emulator lacks it). The state is at that instruction: another
    /// engine may execute it and hand the state back (hybrid execution).
    Unsupported(String),
    /// The engine cannot go on; the string says why (unsupported instruction, internal
    /// error of the host hypervisor).
    Failed(String),
}

/// Makes a running vCPU return from [`Vcpu::run`] soon, from any thread.
pub trait VcpuKicker: Send + Sync {
    fn kick(&self);
}

/// A virtual CPU of either engine.
pub trait Vcpu: Send {
    /// Runs guest code until something the machine must handle happens.
    fn run(&mut self) -> Result<VcpuExit>;
    /// The complete architectural state.
    fn state(&mut self) -> Result<CpuState>;
    /// Replaces the complete architectural state.
    fn set_state(&mut self, state: &CpuState) -> Result<()>;
    /// A handle to stop `run` from another thread.
    fn kicker(&self) -> Arc<dyn VcpuKicker>;
    /// The engine's name for logs and `info` output (`"kvm"`, `"tcg"`).
    fn engine(&self) -> &'static str;
    /// MAXPHYADDR as the guest sees it (CPUID 8000_0008h EAX[7:0]); firmware set-up
    /// (MTRR masks) needs it.
    fn phys_addr_bits(&self) -> u32 {
        36
    }
}
