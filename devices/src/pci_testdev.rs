//! pci-testdev: QEMU's PCI test device (`hw/misc/pci-testdev.c`), which
//! kvm-unit-tests uses to time and check MMIO and port I/O exits.
//!
//! Identity: vendor 0x1B36 (Red Hat), device 0x0005, class code 0x00FF (QEMU's
//! `PCI_CLASS_OTHERS` as a 16-bit class ID: base class 0x00, subclass 0xFF),
//! revision 0, subsystem 0x1AF4:0x1100 (QEMU's default), no interrupt pin.
//! BAR 0 is 4 KiB of memory, BAR 1 256 ports; with `membar=SIZE` BAR 2 is a 64-bit
//! prefetchable memory BAR of that size with nothing behind it (reads all ones).
//!
//! Six tests, three per BAR type — `mmio-` and `portio-` followed by `no-eventfd`,
//! `wildcard-eventfd` and `datamatch-eventfd`. Test `i` (0-2 through BAR 0, 3-5
//! through BAR 1) has this header, which both BARs show at offset 0 while it is the
//! current test (all zeros while none is):
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 1 | `test`: write `n` (< 3) here to start test `n` of this BAR's type; anything else stops |
//! | 1 | 1 | `width`: 1, the width of the writes the test counts |
//! | 4 | 4 | `offset`: where to write: 2048 + i (memory) or 128 + i (ports) |
//! | 8 | 1 | `data`: the value to write, 0xFA (0xCE for the wildcard tests) |
//! | 12 | 4 | `count`: writes seen since the test started |
//! | 16 | .. | `name`, NUL-terminated, e.g. `portio-datamatch-eventfd` |
//!
//! Registers are bytes: a wider access is handled a byte at a time, as QEMU's
//! memory core splits it for this device. A byte written at the current test's
//! `offset` counts when the test matches data (every test but the wildcard ones)
//! and the byte equals `data`, or always for the wildcard tests.
//!
//! The eventfd tests model QEMU's ioeventfd: while one runs, a write to its `offset`
//! through its own BAR that is exactly one byte (any width for `mmio-wildcard-eventfd`,
//! whose eventfd has length 0) and, for `datamatch`, equals `data`, is taken by the
//! "eventfd" and never reaches the registers, so it does not count. kvm-unit-tests
//! accepts a count of either 0 or the number of writes. (QEMU's own TCG dispatch
//! treats a length-0 eventfd as matching no access; vireo follows KVM, which defines
//! length 0 as any length.)

use crate::pci::{BarKind, PciBar, PciConfigSpace, PciDevice, PciError};

const LOG: &str = "vireo::dev::pci_testdev";

/// Red Hat's PCI vendor ID and the test device's ID.
pub const VENDOR_ID: u16 = 0x1B36;
pub const DEVICE_ID: u16 = 0x0005;
/// QEMU's class ID `PCI_CLASS_OTHERS` (0x00FF): base class 0, subclass 0xFF.
pub const CLASS: u8 = 0x00;
pub const SUBCLASS: u8 = 0xFF;
/// QEMU's default subsystem.
pub const SUBSYSTEM_VENDOR: u16 = 0x1AF4;
pub const SUBSYSTEM_ID: u16 = 0x1100;
/// BAR 0 (memory) and BAR 1 (ports) sizes.
pub const MEM_BAR_SIZE: u64 = 4096;
pub const IO_BAR_SIZE: u64 = 256;
/// Where the memory and port tests' counted offsets start.
const MEM_TEST_BASE: u32 = 2048;
const IO_TEST_BASE: u32 = 128;
/// `data` of the tests that match data, and of the wildcard ones.
pub const DATAMATCH: u8 = 0xFA;
pub const NOMATCH: u8 = 0xCE;
/// Tests per BAR type.
pub const TESTS_PER_TYPE: usize = 3;
/// Header size before the name.
const HDR_LEN: usize = 16;
const KINDS: [&str; TESTS_PER_TYPE] = ["no-eventfd", "wildcard-eventfd", "datamatch-eventfd"];

/// The bytes the test registers answer with, and how the test counts.
#[derive(Debug, Clone)]
struct Test {
    /// Header then the NUL-terminated name.
    buf: Vec<u8>,
    offset: u64,
    data: u8,
    match_data: bool,
    /// The eventfd's access length (0 = any); `None` without an eventfd.
    eventfd: Option<usize>,
    /// BAR 0 or 1.
    bar: usize,
}

impl Test {
    fn new(i: usize) -> Test {
        let (bar, prefix, base) = if i < TESTS_PER_TYPE {
            (0, "mmio", MEM_TEST_BASE)
        } else {
            (1, "portio", IO_TEST_BASE)
        };
        let kind = KINDS[i % TESTS_PER_TYPE];
        let match_data = kind != "wildcard-eventfd";
        let eventfd = match kind {
            "no-eventfd" => None,
            "wildcard-eventfd" if bar == 0 => Some(0),
            _ => Some(1),
        };
        let offset = base + i as u32;
        let data = if match_data { DATAMATCH } else { NOMATCH };
        let mut buf = vec![0u8; HDR_LEN];
        buf[0] = i as u8;
        buf[1] = 1;
        buf[4..8].copy_from_slice(&offset.to_le_bytes());
        buf[8] = data;
        buf.extend_from_slice(format!("{prefix}-{kind}").as_bytes());
        buf.push(0);
        Test {
            buf,
            offset: u64::from(offset),
            data,
            match_data,
            eventfd,
            bar,
        }
    }

    fn count(&self) -> u32 {
        u32::from_le_bytes([self.buf[12], self.buf[13], self.buf[14], self.buf[15]])
    }

    fn set_count(&mut self, c: u32) {
        self.buf[12..16].copy_from_slice(&c.to_le_bytes());
    }
}

/// The pci-testdev function.
pub struct PciTestdev {
    config: PciConfigSpace,
    tests: Vec<Test>,
    current: Option<usize>,
    /// Writes the eventfds took (for tests and logs).
    notified: u64,
}

impl PciTestdev {
    /// The device; `membar` > 0 adds BAR 2 of that size (a power of two, at least 16).
    pub fn new(membar: u64) -> Result<PciTestdev, PciError> {
        let mut config = PciConfigSpace::new(VENDOR_ID, DEVICE_ID, CLASS, SUBCLASS, 0, 0);
        config.set_subsystem(SUBSYSTEM_VENDOR, SUBSYSTEM_ID);
        config.set_interrupt_pin(0);
        config.add_bar(
            0,
            BarKind::Memory32 {
                prefetchable: false,
            },
            MEM_BAR_SIZE,
        )?;
        config.add_bar(1, BarKind::Io, IO_BAR_SIZE)?;
        if membar > 0 {
            config.add_bar(2, BarKind::Memory64 { prefetchable: true }, membar)?;
        }
        Ok(PciTestdev {
            config,
            tests: (0..2 * TESTS_PER_TYPE).map(Test::new).collect(),
            current: None,
            notified: 0,
        })
    }

    /// Stops the current test (machine reset).
    pub fn reset(&mut self) {
        self.current = None;
    }

    /// The current test's count, if a test runs.
    pub fn count(&self) -> Option<u32> {
        Some(self.tests.get(self.current?)?.count())
    }

    /// Writes the eventfds took so far.
    pub fn notified(&self) -> u64 {
        self.notified
    }

    fn read_byte(&self, offset: u64) -> u8 {
        let Some(t) = self.current.and_then(|c| self.tests.get(c)) else {
            return 0;
        };
        usize::try_from(offset)
            .ok()
            .and_then(|o| t.buf.get(o))
            .copied()
            .unwrap_or(0)
    }

    fn write_byte(&mut self, bar: usize, offset: u64, v: u8) {
        if offset == 0 {
            self.current =
                (usize::from(v) < TESTS_PER_TYPE).then(|| bar * TESTS_PER_TYPE + usize::from(v));
            if let Some(t) = self.current.and_then(|c| self.tests.get_mut(c)) {
                t.set_count(0);
                log::debug!(target: LOG, "test {} started", t.buf[0]);
            }
            return;
        }
        let Some(t) = self.current.and_then(|c| self.tests.get_mut(c)) else {
            return;
        };
        if offset != t.offset || (t.match_data && v != t.data) {
            return;
        }
        let c = t.count().wrapping_add(1);
        t.set_count(c);
    }

    /// Whether the current test's eventfd takes this write.
    fn eventfd_takes(&self, bar: usize, offset: u64, data: &[u8]) -> bool {
        let Some(t) = self.current.and_then(|c| self.tests.get(c)) else {
            return false;
        };
        let Some(len) = t.eventfd else {
            return false;
        };
        let value = data
            .iter()
            .rev()
            .fold(0u128, |acc, &b| (acc << 8) | u128::from(b));
        t.bar == bar
            && offset == t.offset
            && (len == 0 || data.len() == len)
            && (!t.match_data || value == u128::from(t.data))
    }
}

impl PciDevice for PciTestdev {
    fn name(&self) -> &str {
        "pci-testdev"
    }
    fn config_read(&mut self, reg: u8) -> u32 {
        self.config.read(reg)
    }
    fn config_write(&mut self, offset: u8, data: &[u8]) {
        self.config.write(offset, data);
    }
    fn bars(&self) -> Vec<PciBar> {
        self.config.bars()
    }
    fn command(&self) -> u16 {
        self.config.command()
    }
    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        if bar > 1 {
            data.fill(0xFF);
            return;
        }
        for (i, b) in data.iter_mut().enumerate() {
            *b = self.read_byte(offset.saturating_add(i as u64));
        }
    }
    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) {
        if bar > 1 {
            return;
        }
        if self.eventfd_takes(bar, offset, data) {
            self.notified = self.notified.wrapping_add(1);
            return;
        }
        for (i, &v) in data.iter().enumerate() {
            self.write_byte(bar, offset.saturating_add(i as u64), v);
        }
    }
}

#[cfg(test)]
mod tests;
