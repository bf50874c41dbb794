//! Interrupt lines and the interrupt-controller boundary.
//!
//! Devices hold [`IrqLine`]s and only ever set levels on them. What the line is wired
//! to is an [`IrqChip`]: the in-kernel KVM irqchip (a `KVM_IRQ_LINE` ioctl) or a
//! userspace PIC/IOAPIC model for TCG. Devices never learn which.

use parking_lot::Mutex;
use std::sync::Arc;

/// Whatever receives interrupt requests by global system interrupt number.
pub trait IrqChip: Send + Sync {
    /// Sets the level of input `gsi` (ISA IRQs 0-15 are GSIs 0-15).
    fn set_irq(&self, gsi: u32, level: bool);
}

/// One interrupt request line from a device to the interrupt controller.
#[derive(Clone)]
pub struct IrqLine {
    chip: Arc<dyn IrqChip>,
    gsi: u32,
}

impl IrqLine {
    pub fn new(chip: Arc<dyn IrqChip>, gsi: u32) -> IrqLine {
        IrqLine { chip, gsi }
    }
    /// The GSI this line drives.
    pub fn gsi(&self) -> u32 {
        self.gsi
    }
    /// Drives the line to `level`.
    pub fn set(&self, level: bool) {
        self.chip.set_irq(self.gsi, level);
    }
    pub fn raise(&self) {
        self.set(true);
    }
    pub fn lower(&self) {
        self.set(false);
    }
    /// An edge: raise then lower (ISA edge-triggered devices).
    pub fn pulse(&self) {
        self.set(true);
        self.set(false);
    }
}

/// An [`IrqChip`] that records every level change; for tests and for tracing.
#[derive(Default)]
pub struct IrqRecorder {
    events: Mutex<Vec<(u32, bool)>>,
}

impl IrqRecorder {
    pub fn new() -> Arc<IrqRecorder> {
        Arc::new(IrqRecorder::default())
    }
    /// Takes the recorded `(gsi, level)` events.
    pub fn take(&self) -> Vec<(u32, bool)> {
        std::mem::take(&mut *self.events.lock())
    }
    /// Number of rising edges seen on `gsi` (clears nothing).
    pub fn rising_edges(&self, gsi: u32) -> usize {
        let ev = self.events.lock();
        let mut level = false;
        let mut n = 0;
        for &(_, l) in ev.iter().filter(|e| e.0 == gsi) {
            if l && !level {
                n += 1;
            }
            level = l;
        }
        n
    }
    /// A line wired to this recorder.
    pub fn line(self: &Arc<Self>, gsi: u32) -> IrqLine {
        IrqLine::new(self.clone(), gsi)
    }
}

impl IrqChip for IrqRecorder {
    fn set_irq(&self, gsi: u32, level: bool) {
        self.events.lock().push((gsi, level));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_reach_their_chip() {
        let rec = IrqRecorder::new();
        let l4 = rec.line(4);
        l4.pulse();
        l4.raise();
        l4.raise();
        rec.line(8).raise();
        assert_eq!(rec.rising_edges(4), 2);
        assert_eq!(rec.rising_edges(8), 1);
        assert_eq!(rec.take().len(), 5);
    }
}
