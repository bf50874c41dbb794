//! isa-debug-exit (QEMU's): a write of `value` ends vireo with status `(value << 1) | 1`.

use std::sync::Arc;
use vireo_core::{BusDevice, MachineControl, StopReason};

/// QEMU's defaults.
pub const DEFAULT_IOBASE: u16 = 0x501;
pub const DEFAULT_IOSIZE: u16 = 2;

pub struct DebugExit {
    control: Arc<MachineControl>,
}

impl DebugExit {
    pub fn new(control: Arc<MachineControl>) -> DebugExit {
        DebugExit { control }
    }
}

/// The process exit status for a value written to the port (QEMU: `(val << 1) | 1`,
/// truncated to a byte by the operating system).
pub fn exit_status(value: u64) -> i32 {
    (((value << 1) | 1) & 0xff) as i32
}

impl BusDevice for DebugExit {
    fn name(&self) -> &str {
        "isa-debug-exit"
    }
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }
    fn write(&mut self, _offset: u64, data: &[u8]) {
        let mut b = [0u8; 8];
        b[..data.len().min(8)].copy_from_slice(&data[..data.len().min(8)]);
        let value = u64::from_le_bytes(b);
        log::info!(target: "vireo::dev::debug_exit", "guest wrote {value:#x}");
        self.control
            .request_stop(StopReason::DebugExit(exit_status(value)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_is_value_shifted_with_low_bit() {
        let c = MachineControl::new();
        let mut d = DebugExit::new(c.clone());
        d.write(0, &[0x10, 0]);
        assert_eq!(c.stop_reason(), Some(StopReason::DebugExit(0x21)));
        assert_eq!(exit_status(0), 1);
        assert_eq!(exit_status(0x7f), 0xff);
    }
}
