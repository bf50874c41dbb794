//! The TCG machine's [`IrqChip`]: device lines (GSIs) to the 8259A pair and the
//! IOAPIC, wired as on QEMU's `pc` machine and as the KVM engine's GSI routing
//! (`vireo_kvm::vm`), so the MADT describes both engines:
//!
//! - GSI 0 (ISA IRQ 0, the PIT or the HPET's legacy timer 0): PIC IRQ 0 and IOAPIC
//!   pin 2 (the MADT's interrupt source override);
//! - GSI 1 and 3-15 (ISA IRQs): the PIC IRQ and the IOAPIC pin of the same number;
//! - GSI 2: nothing (PIC IRQ 2 is the cascade, IOAPIC pin 2 is IRQ 0);
//! - GSI 16-23: the IOAPIC pin of the same number.

use super::ioapic::{SharedIoapic, PINS};
use crate::pic::SharedPic;
use vireo_core::IrqChip;

/// GSI → PIC and IOAPIC.
pub struct ApicIrqRouter {
    pic: SharedPic,
    ioapic: SharedIoapic,
}

impl ApicIrqRouter {
    /// A router feeding `pic` and `ioapic`.
    pub fn new(pic: SharedPic, ioapic: SharedIoapic) -> ApicIrqRouter {
        ApicIrqRouter { pic, ioapic }
    }

    /// The IOAPIC pin GSI `gsi` drives, if any.
    pub fn ioapic_pin(gsi: u32) -> Option<usize> {
        match gsi {
            0 => Some(2),
            2 => None,
            g => usize::try_from(g).ok().filter(|&p| p < PINS),
        }
    }
}

impl IrqChip for ApicIrqRouter {
    fn set_irq(&self, gsi: u32, level: bool) {
        if gsi < 16 && gsi != 2 {
            self.pic.lock().set_irq(gsi as u8, level);
        }
        if let Some(pin) = ApicIrqRouter::ioapic_pin(gsi) {
            self.ioapic.lock().set_irq(pin, level);
        }
    }
}
