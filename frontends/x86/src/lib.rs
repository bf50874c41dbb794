//! vireo's x86 frontend.
//!
//! - [`cpu::X86Cpu`]: the CPU as the TCG engine runs it: architectural state, lazy
//!   flags, the softmmu TLB and the system bus; it implements
//!   [`vireo_core::exec::GuestEnv`] so any IR backend can run its blocks.
//! - [`flags`]: lazy flags (QEMU's CC_OP scheme) and their evaluation.
//! - [`translate`]: guest code → IR blocks (iced-x86 decoding).
//! - [`helpers`]: the helper functions IR blocks call, by table.
//! - [`mmu`]: linear → physical translation (page walks, TLB) and memory access.
//! - System architecture: [`exception`] (interrupt and exception delivery), [`seg`]
//!   (descriptors, segment loads), [`transfer`] (far JMP/CALL/RET, IRET), [`task`]
//!   (hardware task switches), [`control`] (CRs, DRs, descriptor-table registers),
//!   [`msr`], [`cpuid`], [`io`] (port I/O, IOPL rules), [`syscall`], [`stack`],
//!   [`apic`] (the CPU's side of its local APIC: register page, MSRs, CR8, INIT/SIPI),
//!   [`xsave`] (the XSAVE feature set).

pub mod apic;
pub mod control;
pub mod cpu;
pub mod cpuid;
pub mod exception;
#[cfg(test)]
mod exception_tests;
pub mod fasttlb;
mod filllog;
pub mod flags;
pub mod fpu;
pub mod helpers;
pub mod io;
pub mod mmu;
pub mod msr;
pub mod seg;
pub mod stack;
pub mod string_ops;
pub mod syscall;
#[cfg(test)]
mod system_tests;
pub mod task;
#[cfg(test)]
mod testutil;
pub mod transfer;
#[cfg(test)]
mod transfer_tests;
pub mod translate;
pub mod walkcache;
pub mod xsave;

pub use cpu::X86Cpu;
pub use exception::Shutdown;
