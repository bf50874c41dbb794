//! System control port A (port 0x92, "fast A20 and reset").
//!
//! Bit 1 drives the A20 gate; a 0→1 transition of bit 0 resets the machine (IBM PS/2
//! technical reference, PIIX3 "Port 92h"). Reads return the stored bits with bit 1
//! reflecting the current A20 state, which the i8042 may also have changed.

use std::sync::Arc;
use vireo_core::{A20Gate, BusDevice, MachineControl, StopReason};

/// The port.
pub const PORT92: u64 = 0x92;

const FAST_RESET: u8 = 0x01;
const A20_ENABLE: u8 = 0x02;

/// System control port A.
pub struct Port92 {
    value: u8,
    a20: Arc<A20Gate>,
    control: Arc<MachineControl>,
}

impl Port92 {
    pub fn new(a20: Arc<A20Gate>, control: Arc<MachineControl>) -> Port92 {
        Port92 {
            value: 0,
            a20,
            control,
        }
    }
}

impl BusDevice for Port92 {
    fn name(&self) -> &str {
        "port92"
    }

    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        let mut v = self.value & !A20_ENABLE;
        if self.a20.enabled() {
            v |= A20_ENABLE;
        }
        data.fill(v);
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        let Some(&v) = data.first() else { return };
        let old = self.value;
        self.value = v;
        self.a20.set(v & A20_ENABLE != 0);
        if v & FAST_RESET != 0 && old & FAST_RESET == 0 {
            log::info!(target: "vireo::dev::port92", "fast reset");
            self.control.request_stop(StopReason::Reset);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a20_and_fast_reset() {
        let a20 = A20Gate::new();
        let ctl = MachineControl::new();
        let mut p = Port92::new(a20.clone(), ctl.clone());
        let mut b = [0u8];
        p.read(0, &mut b);
        assert_eq!(b[0], A20_ENABLE, "A20 is on at power-on");
        p.write(0, &[0]);
        assert!(!a20.enabled());
        p.read(0, &mut b);
        assert_eq!(b[0], 0);
        // The i8042 turning A20 on shows up here.
        a20.set(true);
        p.read(0, &mut b);
        assert_eq!(b[0], A20_ENABLE);
        assert_eq!(ctl.stop_reason(), None);
        p.write(0, &[A20_ENABLE | FAST_RESET]);
        assert_eq!(ctl.stop_reason(), Some(StopReason::Reset));
        // Only a 0->1 transition resets.
        ctl.clear();
        p.write(0, &[A20_ENABLE | FAST_RESET]);
        assert_eq!(ctl.stop_reason(), None);
        p.write(0, &[A20_ENABLE]);
        p.write(0, &[A20_ENABLE | FAST_RESET]);
        assert_eq!(ctl.stop_reason(), Some(StopReason::Reset));
    }
}
