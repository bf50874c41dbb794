//! vireo's shared machine model.
//!
//! Everything both execution engines (TCG and KVM) and all devices agree on lives
//! here: guest memory and the PC memory map, the PIO/MMIO buses, interrupt lines, the
//! virtual clock, the architectural CPU state and the [`Vcpu`] trait.

pub mod bus;
pub mod clock;
pub mod control;
pub mod cpu;
pub mod error;
pub mod exec;
pub mod fxhash;
pub mod ir;
pub mod irq;
pub mod layout;
pub mod memory;
pub mod opt;
pub mod vcpu;

pub use bus::{Bus, BusDevice, SharedDevice, SystemBus};
pub use clock::VirtualClock;
pub use control::{A20Gate, MachineControl, StopReason};
pub use cpu::CpuState;
pub use error::{Error, Result};
pub use irq::{IrqChip, IrqLine};
pub use memory::GuestMemory;
pub use vcpu::{Vcpu, VcpuExit, VcpuKicker};
