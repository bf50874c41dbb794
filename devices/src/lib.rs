//! vireo's PC devices. Each module is one chip or device. Devices talk to the machine
//! only: they sit on a bus ([`vireo_core::BusDevice`]), raise [`vireo_core::IrqLine`]s,
//! read time from the [`vireo_core::VirtualClock`] and request machine stops through
//! [`vireo_core::MachineControl`]. None knows which engine runs the guest.

pub mod acpi;
pub mod acpi_pm;
pub mod apic;
pub mod chardev;
pub mod debug_exit;
pub mod debugcon;
pub mod fw_cfg;
pub mod hpet;
pub mod i8042;
pub mod mptable;
pub mod pc_testdev;
pub mod pci;
pub mod pci_testdev;
pub mod pic;
pub mod pit;
pub mod port92;
pub mod rtc;
pub mod serial;
