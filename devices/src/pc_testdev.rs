//! pc-testdev: QEMU's ISA test device for x86 test suites (kvm-unit-tests), with the
//! register layout of QEMU's `hw/misc/pc-testdev.c`:
//!
//! | where | size | what |
//! | --- | --- | --- |
//! | ports 0xE0-0xE3 | 4 | a 32-bit scratch register, little endian, any access size |
//! | ports 0xE4-0xE7 | 4 | "flush page": a dword write names a guest page; reads 0 |
//! | ports 0xE8-0xEB | 4 | the same scratch register as 0xE0, again |
//! | ports 0x2000-0x2017 | 24 | IRQ lines: a byte write of `v` to 0x2000+n sets GSI n to `v != 0`; reads 0 |
//! | MMIO 0xFF000000 | 64 KiB | test memory: reads return what was written (zero at first) |
//!
//! Access rules follow QEMU's memory core. Port accesses are split into aligned
//! pieces no wider than a region allows, so the scratch register and the test memory
//! behave as byte-addressed storage whatever the width or alignment; the IRQ region
//! takes byte accesses only, so a word write sets two consecutive lines; the flush
//! register takes only dword accesses (anything else reads 0 and is ignored).
//!
//! The flush register exists to test KVM's MMU: QEMU drops and restores the host
//! mapping of the page, which makes KVM fault it in again. Nothing about it is visible
//! to the guest (under QEMU's TCG it has no effect either); vireo logs it.
//!
//! QEMU asserts (and aborts) on lines 16-23, which its ISA bus does not have; vireo
//! drives GSIs 16-23 as the IOAPIC's extra pins, where the interrupt controller has
//! them (the 8259A pair alone ignores them).

use parking_lot::Mutex;
use std::sync::Arc;
use vireo_core::{Bus, BusDevice, IrqLine, SharedDevice};

const LOG: &str = "vireo::dev::pc_testdev";

/// The scratch register's ports.
pub const IOPORT: u64 = 0xE0;
/// The flush-page register.
pub const FLUSH_PORT: u64 = 0xE4;
/// The scratch register again (QEMU's byte-wide copy).
pub const IOPORT_BYTE: u64 = 0xE8;
/// First IRQ-line port; port `IRQ_PORT + n` drives GSI n.
pub const IRQ_PORT: u64 = 0x2000;
/// Number of IRQ lines (the IOAPIC's pins).
pub const IRQ_LINES: usize = 24;
/// The test memory.
pub const IOMEM_BASE: u64 = 0xFF00_0000;
/// Size of the test memory.
pub const IOMEM_LEN: u64 = 0x1_0000;
/// Size of each 4-port register block.
const REG_LEN: u64 = 4;

/// The device's state, shared by its five bus regions.
pub struct PcTestdev {
    scratch: [u8; 4],
    iomem: Box<[u8]>,
    irqs: Vec<IrqLine>,
    /// Flush-page writes so far (for tests and logs).
    flushes: u64,
}

/// One of the device's regions on a bus.
struct Region {
    kind: RegionKind,
    dev: Arc<Mutex<PcTestdev>>,
}

#[derive(Clone, Copy)]
enum RegionKind {
    Scratch,
    Flush,
    Irq,
    Iomem,
}

impl PcTestdev {
    /// The device with `irqs[n]` as line n (at most [`IRQ_LINES`] are used).
    pub fn new(irqs: Vec<IrqLine>) -> PcTestdev {
        PcTestdev {
            scratch: [0; 4],
            iomem: vec![0; IOMEM_LEN as usize].into_boxed_slice(),
            irqs,
            flushes: 0,
        }
    }

    /// Puts the device's regions on `pio` (0xE0, 0xE4, 0xE8, 0x2000) and `mmio`
    /// (0xFF000000).
    pub fn register(
        dev: &Arc<Mutex<PcTestdev>>,
        pio: &mut Bus,
        mmio: &mut Bus,
    ) -> vireo_core::Result<()> {
        let region = |kind| -> SharedDevice {
            Arc::new(Mutex::new(Region {
                kind,
                dev: dev.clone(),
            }))
        };
        pio.insert(IOPORT, REG_LEN, region(RegionKind::Scratch))?;
        pio.insert(FLUSH_PORT, REG_LEN, region(RegionKind::Flush))?;
        pio.insert(IOPORT_BYTE, REG_LEN, region(RegionKind::Scratch))?;
        pio.insert(IRQ_PORT, IRQ_LINES as u64, region(RegionKind::Irq))?;
        mmio.insert(IOMEM_BASE, IOMEM_LEN, region(RegionKind::Iomem))?;
        Ok(())
    }

    /// The scratch register's value.
    pub fn scratch(&self) -> u32 {
        u32::from_le_bytes(self.scratch)
    }

    /// How many flush-page writes the guest made.
    pub fn flushes(&self) -> u64 {
        self.flushes
    }

    fn read(&mut self, kind: RegionKind, offset: u64, data: &mut [u8]) {
        match kind {
            RegionKind::Scratch => copy_out(&self.scratch, offset, data),
            RegionKind::Iomem => copy_out(&self.iomem, offset, data),
            RegionKind::Flush | RegionKind::Irq => data.fill(0),
        }
    }

    fn write(&mut self, kind: RegionKind, offset: u64, data: &[u8]) {
        match kind {
            RegionKind::Scratch => copy_in(&mut self.scratch, offset, data),
            RegionKind::Iomem => copy_in(&mut self.iomem, offset, data),
            RegionKind::Flush => match (offset, data) {
                (0, &[a, b, c, d]) => {
                    let page = u32::from_le_bytes([a, b, c, d]) & !0xFFF;
                    self.flushes = self.flushes.wrapping_add(1);
                    log::debug!(target: LOG, "flush page {page:#x}");
                }
                _ => log::debug!(target: LOG,
                    "ignored {}-byte flush write at +{offset}", data.len()),
            },
            RegionKind::Irq => {
                for (i, &v) in data.iter().enumerate() {
                    let line = usize::try_from(offset)
                        .ok()
                        .and_then(|o| o.checked_add(i))
                        .and_then(|n| self.irqs.get(n));
                    if let Some(line) = line {
                        line.set(v != 0);
                    }
                }
            }
        }
    }
}

/// Copies the bytes of `src` at `offset` into `data`; bytes past the end read 0.
fn copy_out(src: &[u8], offset: u64, data: &mut [u8]) {
    for (i, b) in data.iter_mut().enumerate() {
        *b = usize::try_from(offset)
            .ok()
            .and_then(|o| o.checked_add(i))
            .and_then(|n| src.get(n))
            .copied()
            .unwrap_or(0);
    }
}

/// Copies `data` into `dst` at `offset`; bytes past the end are dropped.
fn copy_in(dst: &mut [u8], offset: u64, data: &[u8]) {
    for (i, &b) in data.iter().enumerate() {
        let slot = usize::try_from(offset)
            .ok()
            .and_then(|o| o.checked_add(i))
            .and_then(|n| dst.get_mut(n));
        if let Some(s) = slot {
            *s = b;
        }
    }
}

impl BusDevice for Region {
    fn name(&self) -> &str {
        match self.kind {
            RegionKind::Scratch => "pc-testdev-ioport",
            RegionKind::Flush => "pc-testdev-flush-page",
            RegionKind::Irq => "pc-testdev-irq-line",
            RegionKind::Iomem => "pc-testdev-iomem",
        }
    }
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.dev.lock().read(self.kind, offset, data);
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        self.dev.lock().write(self.kind, offset, data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vireo_core::irq::IrqRecorder;

    fn machine() -> (Bus, Bus, Arc<Mutex<PcTestdev>>, Arc<IrqRecorder>) {
        let rec = IrqRecorder::new();
        let lines = (0..IRQ_LINES as u32).map(|g| rec.line(g)).collect();
        let dev = Arc::new(Mutex::new(PcTestdev::new(lines)));
        let (mut pio, mut mmio) = (Bus::new("pio"), Bus::new("mmio"));
        PcTestdev::register(&dev, &mut pio, &mut mmio).unwrap();
        (pio, mmio, dev, rec)
    }

    fn rd(bus: &Bus, addr: u64, len: usize) -> u64 {
        let mut b = [0u8; 8];
        assert!(bus.read(addr, &mut b[..len]), "{addr:#x} unclaimed");
        u64::from_le_bytes(b)
    }

    fn wr(bus: &Bus, addr: u64, len: usize, v: u64) {
        assert!(
            bus.write(addr, &v.to_le_bytes()[..len]),
            "{addr:#x} unclaimed"
        );
    }

    #[test]
    fn scratch_register_at_e0_and_e8() {
        let (pio, _, dev, _) = machine();
        assert_eq!(rd(&pio, 0xE0, 4), 0);
        wr(&pio, 0xE0, 4, 0x1234_5678);
        // Little endian, any width or offset, the same register at 0xE8.
        assert_eq!(rd(&pio, 0xE0, 1), 0x78);
        assert_eq!(rd(&pio, 0xE3, 1), 0x12);
        assert_eq!(rd(&pio, 0xE2, 2), 0x1234);
        assert_eq!(rd(&pio, 0xE9, 2), 0x3456);
        assert_eq!(rd(&pio, 0xE8, 4), 0x1234_5678);
        // A byte write replaces one byte, a word write two.
        wr(&pio, 0xEA, 1, 0xAB);
        assert_eq!(rd(&pio, 0xE0, 4), 0x12AB_5678);
        wr(&pio, 0xE1, 2, 0xCDEF);
        assert_eq!(rd(&pio, 0xE0, 4), 0x12CD_EF78);
        assert_eq!(dev.lock().scratch(), 0x12CD_EF78);
        // kvm-unit-tests' string I/O test: rep outsb leaves the last byte at 0xE0.
        for b in b"xy" {
            wr(&pio, 0xE0, 1, u64::from(*b));
        }
        assert_eq!(rd(&pio, 0xE0, 1), u64::from(b'y'));
    }

    #[test]
    fn flush_register_takes_dwords_and_reads_zero() {
        let (pio, _, dev, _) = machine();
        wr(&pio, 0xE4, 4, 0x0012_3456);
        assert_eq!(dev.lock().flushes(), 1);
        wr(&pio, 0xE4, 2, 0x1000);
        wr(&pio, 0xE5, 1, 0x10);
        assert_eq!(dev.lock().flushes(), 1);
        assert_eq!(rd(&pio, 0xE4, 4), 0);
        assert_eq!(rd(&pio, 0xE6, 2), 0);
        // The flush register is not part of the scratch register.
        assert_eq!(rd(&pio, 0xE0, 4), 0);
    }

    #[test]
    fn irq_lines_follow_byte_writes() {
        let (pio, _, _, rec) = machine();
        wr(&pio, 0x200E, 1, 1);
        wr(&pio, 0x200E, 1, 0);
        wr(&pio, 0x2000, 1, 0x80); // any non-zero value raises
        wr(&pio, 0x2017, 1, 1); // GSI 23, an IOAPIC pin
                                // A word write is two byte writes: lines 4 and 5.
        wr(&pio, 0x2004, 2, 0x0100);
        assert_eq!(
            rec.take(),
            [
                (14, true),
                (14, false),
                (0, true),
                (23, true),
                (4, false),
                (5, true)
            ]
        );
        assert_eq!(rd(&pio, 0x2000, 1), 0);
        assert_eq!(rd(&pio, 0x2010, 4), 0);
        // 0x2018 is past the device.
        let mut b = [0u8];
        assert!(!pio.read(0x2018, &mut b));
        assert_eq!(b, [0xFF]);
    }

    #[test]
    fn test_memory_at_ff000000() {
        let (_, mmio, _, _) = machine();
        assert_eq!(rd(&mmio, IOMEM_BASE, 8), 0);
        wr(&mmio, IOMEM_BASE, 8, 0x0123_4567_89AB_CDEF);
        assert_eq!(rd(&mmio, IOMEM_BASE, 4), 0x89AB_CDEF);
        assert_eq!(rd(&mmio, IOMEM_BASE + 4, 4), 0x0123_4567);
        assert_eq!(rd(&mmio, IOMEM_BASE + 3, 2), 0x6789);
        // Unaligned and at the very end.
        wr(&mmio, IOMEM_BASE + 0xFFFD, 2, 0xBEEF);
        wr(&mmio, IOMEM_BASE + 0xFFFF, 1, 0x5A);
        assert_eq!(rd(&mmio, IOMEM_BASE + 0xFFFC, 4), 0x5ABE_EF00);
        // A 16-byte access (SSE through TCG) is memory too.
        let mut x = [0u8; 16];
        let pattern: Vec<u8> = (1..=16).collect();
        mmio.write(IOMEM_BASE + 0x100, &pattern);
        mmio.read(IOMEM_BASE + 0x100, &mut x);
        assert_eq!(x.to_vec(), pattern);
        // Past the end belongs to nobody.
        let mut b = [0u8; 2];
        assert!(!mmio.read(IOMEM_BASE + IOMEM_LEN - 1, &mut b));
    }
}
