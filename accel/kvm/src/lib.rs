//! vireo's KVM engine: the host kernel runs the guest, vireo serves its exits with the
//! machine's buses.
//!
//! - [`KvmVm`] owns the VM: memory slots from [`vireo_core::GuestMemory`], the in-kernel
//!   interrupt controller (PIC pair, IOAPIC, local APICs) and its GSI routing. It is the
//!   machine's [`vireo_core::IrqChip`]: device IRQ lines become `KVM_IRQ_LINE` calls.
//! - [`KvmVcpu`] implements [`vireo_core::Vcpu`]; `run` loops over `KVM_RUN` serving
//!   port and MMIO exits, and returns only for what the machine must decide.
//! - [`cpuid`] builds the CPUID table from `KVM_GET_SUPPORTED_CPUID` and a named model.
//! - [`state`] converts between `CpuState` and KVM's register structures.

pub mod cpuid;
pub mod disasm;
pub mod error;
pub mod kick;
pub mod state;
pub mod vcpu;
pub mod vm;

pub use cpuid::CpuModel;
pub use error::{Error, Result};
pub use vcpu::KvmVcpu;
pub use vm::{KvmVm, VmConfig};

/// Whether `/dev/kvm` can be opened by this process, and why not.
pub fn available() -> std::result::Result<(), String> {
    kvm_ioctls::Kvm::new()
        .map(|_| ())
        .map_err(|e| format!("/dev/kvm cannot be opened: {e}"))
}
