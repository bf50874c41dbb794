//! vireo's x86 frontend.
//!
//! - [`cpu::X86Cpu`]: the CPU as the TCG engine runs it: architectural state, lazy
//!   flags, the softmmu TLB and the system bus; it implements
//!   [`vireo_core::exec::GuestEnv`] so any IR backend can run its blocks.
//! - [`flags`]: lazy flags (QEMU's CC_OP scheme) and their evaluation.
//! - [`translate`]: guest code → IR blocks (iced-x86 decoding).
//! - [`helpers`]: the helper functions IR blocks call, by table.
//! - [`mmu`]: linear → physical translation (page walks, TLB) and memory access.

pub mod cpu;
pub mod flags;
pub mod helpers;
pub mod mmu;
pub mod translate;

pub use cpu::X86Cpu;
