//! vireo's TCG engine: guest x86 code translated to IR blocks (by `vireo-x86`), cached,
//! and run by the IR interpreter (`vireo-interp`), behind the same [`vireo_core::Vcpu`]
//! trait as the KVM engine.
//!
//! - [`vcpu::TcgVcpu`]: the vCPU and its run loop (kicks, halts, interrupts, faults).
//! - [`cache`]: the block cache (keys, page index for self-modifying code, links).
//! - [`compiler`]: the background compiler thread (IR passes and code generation
//!   off the vCPU thread).
//! - [`irq`]: the interrupt-controller boundary ([`irq::InterruptController`], the
//!   8259A adapter) and the wake-up [`irq::Signal`].
//! - [`apic`]: the local APIC as the CPU's interrupt controller and the frontend's
//!   APIC port (register page, MSRs, CR8).
//! - [`smp`]: several vCPUs round-robin on one thread, sharing one block cache.
//! - [`frontend`]: the calls into the x86 frontend, in one place.
//! - [`disas`]: guest disassembly for `-d in_asm`; [`dfilter`]: which blocks the
//!   translation logs show (`-dfilter`).

pub mod apic;
pub mod cache;
pub mod compiler;
pub mod dfilter;
pub mod disas;
pub mod frontend;
pub mod irq;
pub mod perfmap;
pub mod smp;
pub mod vcpu;

pub use apic::{ApicInterrupts, CpuApicPort};
pub use irq::{InterruptController, PicInterrupts};
pub use smp::RoundRobin;
pub use vcpu::{Backend, TcgStats, TcgVcpu, DEFAULT_WARMUP};

/// Re-runs the named tests of the enclosing test module with the JIT backend (in a
/// module `jit`), and with the JIT compiling on the background compiler (module
/// `background`).
#[cfg(test)]
macro_rules! jit_variants {
    ($($t:ident),* $(,)?) => {
        mod jit {
            $(
                #[test]
                fn $t() {
                    crate::vcpu::with_test_backend(crate::Backend::Jit, super::$t)
                }
            )*
        }
        mod background {
            $(
                #[test]
                fn $t() {
                    crate::vcpu::with_test_background(super::$t)
                }
            )*
        }
    };
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_apic;
#[cfg(test)]
mod tests_calls;
#[cfg(test)]
mod tests_smc;
#[cfg(test)]
mod tests_smp;
#[cfg(test)]
mod tests_sysret;
