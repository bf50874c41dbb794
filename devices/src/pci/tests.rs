//! Host bridge, configuration space and BAR decoding tests.

use super::*;

fn host() -> (Bus, Arc<Mutex<PciHost>>, Arc<MachineControl>) {
    let (pio, _, host, ctl) = buses();
    (pio, host, ctl)
}

/// The port and MMIO buses with the host bridge registered.
fn buses() -> (Bus, Bus, Arc<Mutex<PciHost>>, Arc<MachineControl>) {
    let ctl = MachineControl::new();
    let host = Arc::new(Mutex::new(PciHost::new(ctl.clone())));
    let mut pio = Bus::new("pio");
    let mut mmio = Bus::new("mmio");
    PciHost::register(&host, &mut pio, &mut mmio).unwrap();
    (pio, mmio, host, ctl)
}

fn addr(dev: u8, func: u8, reg: u8) -> u32 {
    ADDR_ENABLE | u32::from(dev) << 11 | u32::from(func) << 8 | u32::from(reg)
}

fn cfg_read(bus: &Bus, dev: u8, func: u8, reg: u8) -> u32 {
    bus.write(0xCF8, &addr(dev, func, reg).to_le_bytes());
    let mut b = [0u8; 4];
    bus.read(0xCFC, &mut b);
    u32::from_le_bytes(b)
}

fn cfg_write(bus: &Bus, dev: u8, func: u8, reg: u8, v: u32) {
    bus.write(0xCF8, &addr(dev, func, reg).to_le_bytes());
    bus.write(0xCFC, &v.to_le_bytes());
}

/// A device with a 4 KiB memory BAR, a 32-byte I/O BAR and a 1 MiB 64-bit
/// prefetchable BAR (virtio-pci-like).
fn test_device() -> PciFunction {
    let mut c = PciConfigSpace::new(0x1AF4, 0x1041, 0x02, 0x00, 0, 1);
    c.add_bar(
        0,
        BarKind::Memory32 {
            prefetchable: false,
        },
        0x1000,
    )
    .unwrap();
    c.add_bar(1, BarKind::Io, 0x20).unwrap();
    c.add_bar(2, BarKind::Memory64 { prefetchable: true }, 1 << 20)
        .unwrap();
    c.set_interrupt_pin(1);
    PciFunction::new("test", c)
}

#[test]
fn linux_enumerates_bus0() {
    let (bus, host, _) = host();
    host.lock()
        .add_device(3, 0, Arc::new(Mutex::new(test_device())))
        .unwrap();
    // pci_check_type1(): a byte write to 0xCFB does not disturb CONFIG_ADDRESS
    // and the enable bit reads back.
    bus.write(0xCFB, &[0x01]);
    bus.write(0xCF8, &ADDR_ENABLE.to_le_bytes());
    let mut b = [0u8; 4];
    bus.read(0xCF8, &mut b);
    assert_eq!(u32::from_le_bytes(b), ADDR_ENABLE);
    // pci_scan_bus: function 0 of every device, more functions if multifunction.
    let mut found = vec![];
    for dev in 0..MAX_DEVICES {
        for func in 0..MAX_FUNCTIONS {
            let id = cfg_read(&bus, dev, func, REG_VENDOR_ID);
            if id == u32::MAX {
                if func == 0 {
                    break;
                }
                continue;
            }
            let class = cfg_read(&bus, dev, func, REG_REVISION);
            found.push((dev, func, id, class));
            let hdr = (cfg_read(&bus, dev, func, REG_CACHE_LINE) >> 16) as u8;
            if func == 0 && hdr & HEADER_MULTIFUNCTION == 0 {
                break;
            }
        }
    }
    assert_eq!(
        found,
        [
            (0, 0, 0x1237_8086, 0x0600_0002),
            (1, 0, 0x7000_8086, 0x0601_0000),
            (3, 0, 0x1041_1AF4, 0x0200_0001),
        ]
    );
    assert_eq!(cfg_read(&bus, 1, 0, REG_CACHE_LINE) >> 16 & 0xFF, 0x80);
    assert_eq!(cfg_read(&bus, 0, 0, REG_COMMAND), 0x0280_0006);
}

#[test]
fn bar_sizing() {
    let (bus, host, _) = host();
    let dev = Arc::new(Mutex::new(test_device()));
    host.lock().add_device(5, 0, dev.clone()).unwrap();
    // Linux's __pci_read_base: save, write all ones, read the mask, restore.
    let size = |reg: u8| {
        let orig = cfg_read(&bus, 5, 0, reg);
        cfg_write(&bus, 5, 0, reg, u32::MAX);
        let mask = cfg_read(&bus, 5, 0, reg);
        cfg_write(&bus, 5, 0, reg, orig);
        assert_eq!(cfg_read(&bus, 5, 0, reg), orig);
        mask
    };
    assert_eq!(size(0x10), 0xFFFF_F000); // 4 KiB memory, 32-bit, not prefetchable
    assert_eq!(size(0x14), 0xFFFF_FFE1); // 32 bytes of I/O
    assert_eq!(size(0x18), 0xFFF0_000C); // 1 MiB, 64-bit, prefetchable
    assert_eq!(size(0x1C), 0xFFFF_FFFF); // upper half
    assert_eq!(size(0x20), 0); // unimplemented
    assert_eq!(size(0x30), 0); // no expansion ROM
                               // Firmware assigns addresses; the device reports them.
    cfg_write(&bus, 5, 0, 0x10, 0xFEBF_1000);
    cfg_write(&bus, 5, 0, 0x14, 0xC041);
    cfg_write(&bus, 5, 0, 0x18, 0x0010_0000);
    cfg_write(&bus, 5, 0, 0x1C, 0x8);
    cfg_write(&bus, 5, 0, REG_COMMAND, u32::from(CMD_IO | CMD_MEMORY));
    let bars = dev.lock().bars();
    let addrs: Vec<_> = bars.iter().map(|b| (b.index, b.address, b.size)).collect();
    assert_eq!(
        addrs,
        [
            (0, 0xFEBF_1000, 0x1000),
            (1, 0xC040, 0x20),
            (2, 0x8_0010_0000, 1 << 20)
        ]
    );
    assert_eq!(dev.lock().config.command(), CMD_IO | CMD_MEMORY);
    // Misuse of add_bar is reported.
    let mut c = PciConfigSpace::new(1, 2, 3, 4, 5, 6);
    c.add_bar(
        4,
        BarKind::Memory64 {
            prefetchable: false,
        },
        0x1000,
    )
    .unwrap();
    assert_eq!(c.add_bar(5, BarKind::Io, 4), Err(PciError::BadBar(5)));
    assert_eq!(c.add_bar(6, BarKind::Io, 4), Err(PciError::BadBar(6)));
    assert!(matches!(
        c.add_bar(0, BarKind::Io, 6),
        Err(PciError::BadBarSize { .. })
    ));
    assert!(c
        .add_bar(
            0,
            BarKind::Memory64 {
                prefetchable: false
            },
            1 << 40
        )
        .is_ok());
    assert_eq!(c.bar_address(1), None);
}

#[test]
fn header_fields_are_protected() {
    let (bus, host, _) = host();
    host.lock()
        .add_device(2, 0, Arc::new(Mutex::new(test_device())))
        .unwrap();
    // Vendor/device, class and header type are read-only.
    cfg_write(&bus, 2, 0, REG_VENDOR_ID, 0);
    cfg_write(&bus, 2, 0, REG_REVISION, 0);
    assert_eq!(cfg_read(&bus, 2, 0, REG_VENDOR_ID), 0x1041_1AF4);
    assert_eq!(cfg_read(&bus, 2, 0, REG_REVISION), 0x0200_0001);
    // Command: only implemented bits; status error bits are write-1-to-clear.
    cfg_write(&bus, 2, 0, REG_COMMAND, 0xFFFF);
    assert_eq!(cfg_read(&bus, 2, 0, REG_COMMAND), u32::from(CMD_WRITABLE));
    let mut c = PciConfigSpace::new(1, 2, 3, 4, 5, 6);
    c.set_u16(REG_STATUS, 0x8000 | STATUS_CAP_LIST);
    c.write(REG_STATUS, &[0xFF, 0x00]);
    assert_eq!(c.get_u16(REG_STATUS), 0x8000 | STATUS_CAP_LIST);
    c.write(REG_STATUS, &[0x00, 0x80]);
    assert_eq!(c.get_u16(REG_STATUS), STATUS_CAP_LIST);
    // Interrupt line is writable, pin is not.
    cfg_write(&bus, 2, 0, REG_INTERRUPT_LINE, 0xFFFF_FF0B);
    assert_eq!(cfg_read(&bus, 2, 0, REG_INTERRUPT_LINE), 0x0000_010B);
    // Writes past the end of config space are dropped.
    c.write(0xFE, &[1, 2, 3, 4]);
}

#[test]
fn absent_functions_and_disabled_window() {
    let (bus, host, _) = host();
    assert_eq!(cfg_read(&bus, 7, 0, 0), u32::MAX);
    assert_eq!(cfg_read(&bus, 1, 1, 0), u32::MAX);
    // Bus 1 does not exist.
    bus.write(0xCF8, &(ADDR_ENABLE | 1 << 16).to_le_bytes());
    let mut b = [0u8; 4];
    bus.read(0xCFC, &mut b);
    assert_eq!(b, [0xFF; 4]);
    bus.write(0xCFC, &[0; 4]);
    // Enable bit clear: the data window floats.
    bus.write(0xCF8, &0u32.to_le_bytes());
    bus.read(0xCFC, &mut b);
    assert_eq!(b, [0xFF; 4]);
    // Reserved address bits read as zero.
    bus.write(0xCF8, &u32::MAX.to_le_bytes());
    bus.read(0xCF8, &mut b);
    assert_eq!(u32::from_le_bytes(b), ADDR_MASK);
    // Slot bookkeeping.
    let mut h = host.lock();
    assert_eq!(h.free_slot(), Some(2));
    let d = Arc::new(Mutex::new(test_device()));
    assert!(matches!(
        h.add_device(0, 0, d.clone()),
        Err(PciError::SlotTaken { .. })
    ));
    assert_eq!(
        h.add_device(32, 0, d.clone()),
        Err(PciError::BadSlot { dev: 32, func: 0 })
    );
    assert_eq!(
        h.add_device(2, 8, d),
        Err(PciError::BadSlot { dev: 2, func: 8 })
    );
}

#[test]
fn byte_and_word_accesses_in_the_window() {
    let (bus, _, _) = host();
    bus.write(0xCF8, &addr(0, 0, REG_VENDOR_ID).to_le_bytes());
    let mut w = [0u8; 2];
    bus.read(0xCFC, &mut w);
    assert_eq!(u16::from_le_bytes(w), VENDOR_INTEL);
    bus.read(0xCFE, &mut w);
    assert_eq!(u16::from_le_bytes(w), DEVICE_I440FX);
    let mut b = [0u8];
    bus.read(0xCFD, &mut b);
    assert_eq!(b[0], 0x80);
    bus.write(0xCF8, &addr(1, 0, REG_REVISION).to_le_bytes());
    bus.read(0xCFF, &mut b);
    assert_eq!(b[0], CLASS_BRIDGE);
    bus.read(0xCFE, &mut b);
    assert_eq!(b[0], SUBCLASS_ISA);
    // PIIX3 PIRQ routing: byte writes at 0x61 and a word write at 0x62.
    bus.write(0xCF8, &addr(1, 0, PIIX3_PIRQRC).to_le_bytes());
    let mut d = [0u8; 4];
    bus.read(0xCFC, &mut d);
    assert_eq!(d, [PIRQ_DISABLED; 4]);
    bus.write(0xCFD, &[0x0B]);
    bus.write(0xCFE, &[0x0A, 0x05]);
    bus.read(0xCFC, &mut d);
    assert_eq!(d, [PIRQ_DISABLED, 0x0B, 0x0A, 0x05]);
    // Non-dword accesses to 0xCF8 do not touch CONFIG_ADDRESS.
    bus.write(0xCF8, &[0]);
    bus.write(0xCFA, &[0, 0]);
    bus.read(0xCF8, &mut d);
    assert_eq!(u32::from_le_bytes(d), addr(1, 0, PIIX3_PIRQRC));
    bus.read(0xCFA, &mut w);
    assert_eq!(w, [0xFF; 2]);
}

#[test]
fn cf9_resets() {
    let (bus, _, ctl) = host();
    let mut b = [0u8];
    bus.write(0xCF9, &[RC_SRST]);
    assert_eq!(ctl.stop_reason(), None);
    bus.read(0xCF9, &mut b);
    assert_eq!(b[0], RC_SRST);
    // The usual "outb(0x06, 0xCF9)" hard reset.
    bus.write(0xCF9, &[RC_SRST | RC_RCPU]);
    assert_eq!(ctl.stop_reason(), Some(StopReason::Reset));
    bus.read(0xCF9, &mut b);
    assert_eq!(b[0], RC_SRST);
    // A dword write to 0xCF8 is CONFIG_ADDRESS, not a reset.
    ctl.clear();
    bus.write(0xCF8, &(ADDR_ENABLE | 0x0400).to_le_bytes());
    assert_eq!(ctl.stop_reason(), None);
}

/// A function with [`test_device`]'s BARs whose BAR accesses are recorded; a read
/// returns `bar * 0x10 + offset` in each byte.
struct BarProbe {
    config: PciConfigSpace,
    log: Vec<(usize, u64, Vec<u8>)>,
}

impl PciDevice for BarProbe {
    fn name(&self) -> &str {
        "probe"
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
        data.fill((bar as u64 * 0x10 + offset) as u8);
    }
    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) {
        self.log.push((bar, offset, data.to_vec()));
    }
}

fn probe() -> Arc<Mutex<BarProbe>> {
    Arc::new(Mutex::new(BarProbe {
        config: test_device().config,
        log: Vec::new(),
    }))
}

fn read8(bus: &Bus, addr: u64) -> u8 {
    let mut b = [0u8];
    bus.read(addr, &mut b);
    b[0]
}

#[test]
fn bars_are_decoded_where_the_guest_puts_them() {
    let (pio, mmio, host, _) = buses();
    let p = probe();
    host.lock().add_device(4, 0, p.clone()).unwrap();
    cfg_write(&pio, 4, 0, 0x10, 0xFEBF_1000);
    cfg_write(&pio, 4, 0, 0x14, 0xC041);
    cfg_write(&pio, 4, 0, 0x18, 0x0010_0000);
    cfg_write(&pio, 4, 0, 0x1C, 0x8);
    // Programmed but not enabled: nothing answers.
    assert_eq!(read8(&mmio, 0xFEBF_1000), 0xFF);
    assert_eq!(read8(&pio, 0xC040), 0xFF);
    // I/O enabled only.
    cfg_write(&pio, 4, 0, REG_COMMAND, u32::from(CMD_IO));
    assert_eq!(read8(&pio, 0xC045), 0x15);
    assert_eq!(read8(&mmio, 0xFEBF_1000), 0xFF);
    // Both. The 64-bit BAR is decoded above 4 GiB.
    cfg_write(&pio, 4, 0, REG_COMMAND, u32::from(CMD_IO | CMD_MEMORY));
    assert_eq!(read8(&mmio, 0xFEBF_1003), 0x03);
    assert_eq!(read8(&mmio, 0x8_0010_0002), 0x22);
    assert_eq!(
        host.lock().windows(Space::Memory),
        [(0xFEBF_1000, 0x1000, 0), (0x8_0010_0000, 1 << 20, 2)]
    );
    pio.write(0xC05F, &[0xAB]);
    mmio.write(0xFEBF_1FFC, &[1, 2, 3, 4]);
    // An access running past a BAR's end is not the BAR's.
    pio.write(0xC05F, &[1, 2]);
    let mut w = [0u8; 2];
    pio.read(0xC05F, &mut w);
    assert_eq!(w, [0xFF, 0xFF]);
    assert_eq!(
        std::mem::take(&mut p.lock().log),
        [(1, 0x1F, vec![0xAB]), (0, 0xFFC, vec![1, 2, 3, 4])]
    );
    // Moving BAR 0 moves the region: the old place floats, the new one answers.
    cfg_write(&pio, 4, 0, 0x10, 0xE000_0000);
    assert_eq!(read8(&mmio, 0xFEBF_1000), 0xFF);
    assert_eq!(read8(&mmio, 0xE000_0010), 0x10);
    mmio.write(0xE000_0FFF, &[9]);
    assert_eq!(p.lock().log, [(0, 0xFFF, vec![9])]);
    // While a BAR is being sized (all ones) or is at 0 it is not decoded.
    cfg_write(&pio, 4, 0, 0x10, u32::MAX);
    assert_eq!(read8(&mmio, 0xFFFF_F000), 0xFF);
    cfg_write(&pio, 4, 0, 0x14, 0);
    assert_eq!(read8(&pio, 0), 0xFF);
    assert_eq!(host.lock().windows(Space::Io), []);
    // Memory disabled: the memory BARs go, I/O would stay.
    cfg_write(&pio, 4, 0, 0x14, 0xC041);
    cfg_write(&pio, 4, 0, REG_COMMAND, u32::from(CMD_IO));
    assert_eq!(read8(&mmio, 0x8_0010_0002), 0xFF);
    assert_eq!(host.lock().windows(Space::Io), [(0xC040, 0x20, 1)]);
    // A device registered on the bus keeps its range over a BAR.
    cfg_write(&pio, 4, 0, 0x14, 0x0CE1);
    assert_eq!(host.lock().windows(Space::Io), [(0xCE0, 0x20, 1)]);
    assert_eq!(read8(&pio, 0xCE0), 0x10);
    pio.write(0xCF8, &addr(4, 0, 0).to_le_bytes());
    let mut d = [0u8; 4];
    pio.read(0xCF8, &mut d);
    assert_eq!(u32::from_le_bytes(d), addr(4, 0, 0));
}

#[test]
fn firmware_style_assignment() {
    let (pio, mmio, host, _) = buses();
    let p = probe();
    host.lock().add_device(2, 0, p.clone()).unwrap();
    // A 2 GiB 64-bit BAR and a 4 KiB I/O BAR that cannot fit the I/O window.
    let mut c = PciConfigSpace::new(1, 2, 0xFF, 0, 0, 0);
    c.add_bar(0, BarKind::Memory64 { prefetchable: true }, 2 << 30)
        .unwrap();
    c.add_bar(2, BarKind::Io, 0x4000).unwrap();
    let big = Arc::new(Mutex::new(PciFunction::new("big", c)));
    host.lock().add_device(3, 0, big.clone()).unwrap();
    host.lock()
        .assign_bars(0xC000..0x1_0000, 0xE000_0000..0xFEC0_0000, 0x1_2000_0000);
    // Largest first: the 2 GiB BAR does not fit the 32-bit window and goes above
    // 4 GiB, aligned to its size; the 1 MiB 64-bit BAR fits below 4 GiB, top down,
    // then the 4 KiB one under it. The 16 KiB I/O BAR fills 0xC000-0xFFFF, which
    // leaves no room for the 32-byte one: it stays at 0, not decoded.
    let bars = |d: &dyn PciDevice| -> Vec<(usize, u64)> {
        d.bars().iter().map(|b| (b.index, b.address)).collect()
    };
    assert_eq!(bars(&*big.lock()), [(0, 0x1_8000_0000), (2, 0xC000)]);
    assert_eq!(
        bars(&*p.lock()),
        [(0, 0xFEAF_F000), (1, 0), (2, 0xFEB0_0000)]
    );
    assert_eq!(p.lock().command(), CMD_IO | CMD_MEMORY);
    assert_eq!(big.lock().command(), CMD_IO | CMD_MEMORY);
    assert_eq!(read8(&mmio, 0xFEAF_F001), 0x01);
    assert_eq!(read8(&mmio, 0xFEB0_0001), 0x21);
    assert_eq!(
        host.lock().windows(Space::Memory),
        [
            (0xFEAF_F000, 0x1000, 0),
            (0xFEB0_0000, 1 << 20, 2),
            (0x1_8000_0000, 2 << 30, 0)
        ]
    );
    assert_eq!(host.lock().windows(Space::Io), [(0xC000, 0x4000, 2)]);
    // The guest sees the same through configuration space.
    assert_eq!(cfg_read(&pio, 2, 0, 0x10), 0xFEAF_F000);
    assert_eq!(cfg_read(&pio, 2, 0, 0x18), 0xFEB0_000C);
    assert_eq!(cfg_read(&pio, 2, 0, 0x1C), 0);
    assert_eq!(cfg_read(&pio, 3, 0, 0x10), 0x8000_000C);
    assert_eq!(cfg_read(&pio, 3, 0, 0x14), 1);
}
