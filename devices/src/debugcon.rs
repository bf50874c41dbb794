//! isa-debugcon: a one-port console (QEMU's, default port 0xE9). Bytes written go to
//! the back end; reads return the `readback` value (0xE9 by default, as QEMU) so guests
//! can detect it.

use crate::chardev::CharOut;
use vireo_core::BusDevice;

/// Default port, as in QEMU and Bochs.
pub const DEFAULT_PORT: u16 = 0xe9;
/// Value a read returns (QEMU's `readback` default).
pub const READBACK: u32 = 0xe9;

pub struct DebugCon {
    out: CharOut,
    readback: u32,
}

impl DebugCon {
    pub fn new(out: CharOut) -> DebugCon {
        DebugCon {
            out,
            readback: READBACK,
        }
    }

    /// Sets what reads return (QEMU's `readback` property), little endian over the
    /// access width.
    pub fn with_readback(mut self, readback: u32) -> DebugCon {
        self.readback = readback;
        self
    }
}

impl BusDevice for DebugCon {
    fn name(&self) -> &str {
        "isa-debugcon"
    }
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
        for (d, b) in data.iter_mut().zip(self.readback.to_le_bytes()) {
            *d = b;
        }
    }
    fn write(&mut self, _offset: u64, data: &[u8]) {
        if let Err(e) = self
            .out
            .write_all(&data[..1])
            .and_then(|_| self.out.flush())
        {
            log::warn!(target: "vireo::dev::debugcon", "output error: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chardev::CaptureBuffer;

    #[test]
    fn writes_and_readback() {
        let cap = CaptureBuffer::new();
        let mut d = DebugCon::new(Box::new(cap.clone()));
        d.write(0, b"A");
        d.write(0, &[b'B', 0]); // a word write sends its low byte
        let mut r = [0u8];
        d.read(0, &mut r);
        assert_eq!(r[0], 0xe9);
        assert_eq!(cap.text(), "AB");
        // readback=0x1234: a word read returns it, a byte read its low byte.
        let mut d = DebugCon::new(Box::new(cap.clone())).with_readback(0x1234);
        let mut w = [0u8; 2];
        d.read(0, &mut w);
        assert_eq!(u16::from_le_bytes(w), 0x1234);
        d.read(0, &mut r);
        assert_eq!(r[0], 0x34);
    }
}
