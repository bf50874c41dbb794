//! vireo's PC devices. Each module is one chip or device. Devices talk to the machine
//! only: they sit on a bus ([`vireo_core::BusDevice`]), raise [`vireo_core::IrqLine`]s,
//! read time from the [`vireo_core::VirtualClock`] and request machine stops through
//! [`vireo_core::MachineControl`]. None knows which engine runs the guest.
