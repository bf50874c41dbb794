//! pci-testdev register tests. The expected values come from QEMU's definition of
//! the device (header layout, offsets 2048 + i and 128 + i, data 0xFA/0xCE, the test
//! names) and from kvm-unit-tests' `pci_testdev_one` procedure.

use super::*;
use crate::pci::{PciHost, CMD_IO, CMD_MEMORY, REG_COMMAND};
use parking_lot::Mutex;
use std::sync::Arc;
use vireo_core::{Bus, MachineControl};

/// Port and MMIO buses with the device at 00:03.0, BAR 0 at 0xFEBFF000 and BAR 1 at
/// 0xC000, both enabled.
fn machine(membar: u64) -> (Bus, Bus, Arc<Mutex<PciTestdev>>) {
    let host = Arc::new(Mutex::new(PciHost::new(MachineControl::new())));
    let (mut pio, mut mmio) = (Bus::new("pio"), Bus::new("mmio"));
    PciHost::register(&host, &mut pio, &mut mmio).unwrap();
    let dev = Arc::new(Mutex::new(PciTestdev::new(membar).unwrap()));
    host.lock().add_device(3, 0, dev.clone()).unwrap();
    cfg_write(&pio, 0x10, 0xFEBF_F000);
    cfg_write(&pio, 0x14, 0xC000);
    cfg_write(&pio, u32::from(REG_COMMAND), u32::from(CMD_IO | CMD_MEMORY));
    (pio, mmio, dev)
}

const MEM: u64 = 0xFEBF_F000;
const IO: u64 = 0xC000;

fn cfg_addr(reg: u32) -> [u8; 4] {
    (0x8000_0000u32 | 3 << 11 | reg).to_le_bytes()
}

fn cfg_read(pio: &Bus, reg: u32) -> u32 {
    pio.write(0xCF8, &cfg_addr(reg));
    let mut b = [0u8; 4];
    pio.read(0xCFC, &mut b);
    u32::from_le_bytes(b)
}

fn cfg_write(pio: &Bus, reg: u32, v: u32) {
    pio.write(0xCF8, &cfg_addr(reg));
    pio.write(0xCFC, &v.to_le_bytes());
}

fn rd(bus: &Bus, addr: u64, len: usize) -> u32 {
    let mut b = [0u8; 4];
    bus.read(addr, &mut b[..len]);
    u32::from_le_bytes(b)
}

fn wr(bus: &Bus, addr: u64, len: usize, v: u32) {
    bus.write(addr, &v.to_le_bytes()[..len]);
}

fn name(bus: &Bus, base: u64) -> String {
    (16..)
        .map(|i| rd(bus, base + i, 1) as u8)
        .take_while(|&c| c != 0)
        .map(char::from)
        .collect()
}

#[test]
fn identity_and_bars() {
    let (pio, _, _) = machine(0);
    assert_eq!(cfg_read(&pio, 0x00), 0x0005_1B36);
    // Class code 0x00FF (QEMU's PCI_CLASS_OTHERS as a class ID; `info pci` in QEMU
    // 7.2 says "Class 0255"), revision 0.
    assert_eq!(cfg_read(&pio, 0x08), 0x00FF_0000);
    assert_eq!(cfg_read(&pio, 0x2C), 0x1100_1AF4);
    assert_eq!(cfg_read(&pio, 0x3C) >> 8 & 0xFF, 0); // no interrupt pin
    let size = |reg| {
        let orig = cfg_read(&pio, reg);
        cfg_write(&pio, reg, u32::MAX);
        let m = cfg_read(&pio, reg);
        cfg_write(&pio, reg, orig);
        m
    };
    assert_eq!(size(0x10), 0xFFFF_F000); // 4 KiB, 32-bit memory
    assert_eq!(size(0x14), 0xFFFF_FF01); // 256 ports
    assert_eq!(size(0x18), 0); // no membar
    let (pio, mmio, _) = machine(1 << 30);
    assert_eq!(size_of_bar(&pio, 0x18), 0xC000_000C); // 1 GiB, 64-bit, prefetchable
    assert_eq!(size_of_bar(&pio, 0x1C), 0xFFFF_FFFF);
    // membar has nothing behind it.
    cfg_write(&pio, 0x18, 0x4000_0000);
    cfg_write(&pio, 0x1C, 0x1);
    assert_eq!(rd(&mmio, 0x1_4000_0000, 4), u32::MAX);
    wr(&mmio, 0x1_4000_0000, 1, 0);
    assert!(PciTestdev::new(3).is_err());
}

fn size_of_bar(pio: &Bus, reg: u32) -> u32 {
    let orig = cfg_read(pio, reg);
    cfg_write(pio, reg, u32::MAX);
    let m = cfg_read(pio, reg);
    cfg_write(pio, reg, orig);
    m
}

#[test]
fn headers_of_the_six_tests() {
    let (pio, mmio, _) = machine(0);
    // No test yet: everything reads 0.
    assert_eq!(rd(&mmio, MEM, 4), 0);
    assert_eq!(rd(&pio, IO + 4, 4), 0);
    let expect = [
        (MEM, 0u8, 2048u32, 0xFAu32, "mmio-no-eventfd"),
        (MEM, 1, 2049, 0xCE, "mmio-wildcard-eventfd"),
        (MEM, 2, 2050, 0xFA, "mmio-datamatch-eventfd"),
        (IO, 0, 131, 0xFA, "portio-no-eventfd"),
        (IO, 1, 132, 0xCE, "portio-wildcard-eventfd"),
        (IO, 2, 133, 0xFA, "portio-datamatch-eventfd"),
    ];
    for (i, (base, n, offset, data, nm)) in expect.into_iter().enumerate() {
        let bus = if base == MEM { &mmio } else { &pio };
        wr(bus, base, 1, u32::from(n));
        assert_eq!(rd(bus, base, 1), i as u32, "test field of {nm}");
        assert_eq!(rd(bus, base + 1, 1), 1, "width of {nm}");
        assert_eq!(rd(bus, base + 2, 2), 0);
        assert_eq!(rd(bus, base + 4, 4), offset);
        // `data` is a byte followed by padding: a dword read gives the byte.
        assert_eq!(rd(bus, base + 8, 4), data);
        assert_eq!(rd(bus, base + 12, 4), 0, "count of {nm}");
        assert_eq!(name(bus, base), nm);
        // The other BAR shows the same header.
        let other = if base == MEM {
            (&pio, IO)
        } else {
            (&mmio, MEM)
        };
        assert_eq!(name(other.0, other.1), nm);
        // Past the name: zeros.
        assert_eq!(rd(bus, base + 16 + nm.len() as u64, 4), 0);
        assert_eq!(rd(bus, base + 200, 4), 0);
    }
    // 3 and above stop the test.
    wr(&pio, IO, 1, 3);
    assert_eq!(rd(&pio, IO + 1, 1), 0);
    assert_eq!(name(&pio, IO), "");
}

/// kvm-unit-tests' `pci_testdev_one`: start test `n`, check count 0 and width 1,
/// write `data` 16 times at `offset`, return the count.
fn run_one(bus: &Bus, base: u64, n: u32) -> Option<u32> {
    wr(bus, base, 1, n);
    if rd(bus, base + 12, 4) != 0 || rd(bus, base + 1, 1) != 1 {
        return None;
    }
    let sig = rd(bus, base + 8, 4);
    let off = u64::from(rd(bus, base + 4, 4));
    for _ in 0..16 {
        wr(bus, base + off, 1, sig);
    }
    Some(rd(bus, base + 12, 4))
}

#[test]
fn kvm_unit_tests_procedure() {
    let (pio, mmio, dev) = machine(0);
    // no-eventfd counts every write; the eventfds take theirs (count 0).
    assert_eq!(run_one(&mmio, MEM, 0), Some(16));
    assert_eq!(run_one(&mmio, MEM, 1), Some(0));
    assert_eq!(run_one(&mmio, MEM, 2), Some(0));
    assert_eq!(run_one(&mmio, MEM, 3), None);
    assert_eq!(run_one(&pio, IO, 0), Some(16));
    assert_eq!(run_one(&pio, IO, 1), Some(0));
    assert_eq!(run_one(&pio, IO, 2), Some(0));
    assert_eq!(run_one(&pio, IO, 3), None);
    assert_eq!(dev.lock().notified(), 4 * 16);
}

#[test]
fn what_counts() {
    let (pio, mmio, dev) = machine(0);
    // no-eventfd matches data: only 0xFA bytes at 2048 count.
    wr(&mmio, MEM, 1, 0);
    wr(&mmio, MEM + 2048, 1, 0x12);
    wr(&mmio, MEM + 2047, 1, 0xFA);
    assert_eq!(dev.lock().count(), Some(0));
    // A dword write is four byte writes: its low byte lands on the offset.
    wr(&mmio, MEM + 2048, 4, 0x1234_56FA);
    wr(&mmio, MEM + 2047, 2, 0xFA00);
    assert_eq!(rd(&mmio, MEM + 12, 4), 2);
    // Restarting clears the count.
    wr(&mmio, MEM, 4, 0);
    assert_eq!(rd(&mmio, MEM + 12, 4), 0);
    // portio-wildcard: a byte goes to the eventfd, a word reaches the registers
    // and its low byte counts whatever its value.
    wr(&pio, IO, 1, 1);
    wr(&pio, IO + 132, 1, 0x77);
    assert_eq!(rd(&pio, IO + 12, 4), 0);
    wr(&pio, IO + 132, 2, 0x7777);
    assert_eq!(rd(&pio, IO + 12, 4), 1);
    // mmio-wildcard: the length-0 eventfd takes any width.
    wr(&mmio, MEM, 1, 1);
    wr(&mmio, MEM + 2049, 4, 0xDEAD_BEEF);
    wr(&mmio, MEM + 2049, 1, 0);
    assert_eq!(rd(&mmio, MEM + 12, 4), 0);
    // portio-datamatch: a 0xFA byte goes to the eventfd, another byte does not
    // count, a dword 0xFA reaches the registers and counts once.
    wr(&pio, IO, 1, 2);
    let before = dev.lock().notified();
    wr(&pio, IO + 133, 1, 0xFA);
    wr(&pio, IO + 133, 1, 0xFB);
    assert_eq!(dev.lock().notified(), before + 1);
    assert_eq!(rd(&pio, IO + 12, 4), 0);
    wr(&pio, IO + 133, 4, 0xFA);
    assert_eq!(rd(&pio, IO + 12, 4), 1);
    // The eventfd sits on its own BAR only: through BAR 0 the same offset is a
    // register write (QEMU keeps one current test for both BARs).
    wr(&mmio, MEM + 133, 1, 0xFA);
    assert_eq!(rd(&pio, IO + 12, 4), 2);
    // The header is read-only.
    wr(&pio, IO + 12, 4, 0);
    wr(&pio, IO + 4, 4, 0);
    assert_eq!(rd(&pio, IO + 12, 4), 2);
    assert_eq!(rd(&pio, IO + 4, 4), 133);
    // A reset stops the test.
    dev.lock().reset();
    assert_eq!(rd(&pio, IO + 4, 4), 0);
}

#[test]
fn registers_follow_the_bars() {
    let (pio, mmio, _) = machine(0);
    wr(&pio, IO, 1, 0);
    assert_eq!(rd(&pio, IO + 4, 4), 131);
    cfg_write(&pio, 0x14, 0xD101);
    assert_eq!(rd(&pio, IO + 4, 4), u32::MAX);
    assert_eq!(rd(&pio, 0xD100 + 4, 4), 131);
    cfg_write(&pio, 0x10, 0xE000_0000);
    assert_eq!(rd(&mmio, MEM + 4, 4), u32::MAX);
    assert_eq!(rd(&mmio, 0xE000_0004, 4), 131);
    // Memory decoding off: BAR 0 goes, BAR 1 stays.
    cfg_write(&pio, u32::from(REG_COMMAND), u32::from(CMD_IO));
    assert_eq!(rd(&mmio, 0xE000_0004, 4), u32::MAX);
    assert_eq!(rd(&pio, 0xD104, 4), 131);
}
