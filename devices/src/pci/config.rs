//! The type-0 configuration space devices build on, and the functions that are
//! nothing but one (the i440FX host bridge, the PIIX3 ISA bridge).

use super::*;

/// A type-0 configuration space with write masks, write-1-to-clear bits and BAR
/// sizing, for devices to build on.
#[derive(Clone)]
pub struct PciConfigSpace {
    data: [u8; CONFIG_SPACE_SIZE],
    /// Bits the guest may write.
    wmask: [u8; CONFIG_SPACE_SIZE],
    /// Bits the guest clears by writing 1.
    w1c: [u8; CONFIG_SPACE_SIZE],
    bars: [Option<(BarKind, u64)>; NUM_BARS],
}

impl std::fmt::Debug for PciConfigSpace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PciConfigSpace")
            .field(
                "vendor",
                &format_args!("{:#06x}", self.u16_at(REG_VENDOR_ID)),
            )
            .field(
                "device",
                &format_args!("{:#06x}", self.u16_at(REG_DEVICE_ID)),
            )
            .field("bars", &self.bars)
            .finish()
    }
}

impl PciConfigSpace {
    /// A header-type-0 function with the given identity. Command, cache line size,
    /// latency timer and interrupt line are writable; status error bits are RW1C.
    pub fn new(
        vendor: u16,
        device: u16,
        class: u8,
        subclass: u8,
        prog_if: u8,
        revision: u8,
    ) -> PciConfigSpace {
        let mut c = PciConfigSpace {
            data: [0; CONFIG_SPACE_SIZE],
            wmask: [0; CONFIG_SPACE_SIZE],
            w1c: [0; CONFIG_SPACE_SIZE],
            bars: [None; NUM_BARS],
        };
        c.set_u16(REG_VENDOR_ID, vendor);
        c.set_u16(REG_DEVICE_ID, device);
        c.set_u8(REG_REVISION, revision);
        c.set_u8(REG_PROG_IF, prog_if);
        c.set_u8(REG_SUBCLASS, subclass);
        c.set_u8(REG_CLASS, class);
        c.set_writable(REG_COMMAND, &CMD_WRITABLE.to_le_bytes());
        c.w1c[usize::from(REG_STATUS)..usize::from(REG_STATUS) + 2]
            .copy_from_slice(&STATUS_W1C.to_le_bytes());
        c.set_writable(REG_CACHE_LINE, &[0xFF, 0xFF]);
        c.set_writable(REG_INTERRUPT_LINE, &[0xFF]);
        c
    }

    fn u16_at(&self, off: u8) -> u16 {
        u16::from_le_bytes([self.get_u8(off), self.get_u8(off.wrapping_add(1))])
    }

    /// Reads a byte (no side effects).
    pub fn get_u8(&self, off: u8) -> u8 {
        self.data[usize::from(off)]
    }

    /// Reads a little-endian word.
    pub fn get_u16(&self, off: u8) -> u16 {
        self.u16_at(off)
    }

    /// Reads a little-endian dword.
    pub fn get_u32(&self, off: u8) -> u32 {
        let b = |i: u8| self.get_u8(off.wrapping_add(i));
        u32::from_le_bytes([b(0), b(1), b(2), b(3)])
    }

    /// Sets a byte regardless of the write mask (device initialization).
    pub fn set_u8(&mut self, off: u8, v: u8) {
        self.data[usize::from(off)] = v;
    }

    pub fn set_u16(&mut self, off: u8, v: u16) {
        for (i, b) in v.to_le_bytes().into_iter().enumerate() {
            self.set_u8(off.wrapping_add(i as u8), b);
        }
    }

    pub fn set_u32(&mut self, off: u8, v: u32) {
        for (i, b) in v.to_le_bytes().into_iter().enumerate() {
            self.set_u8(off.wrapping_add(i as u8), b);
        }
    }

    /// Makes the bits in `mask` (bytes from `off` on) guest-writable.
    pub fn set_writable(&mut self, off: u8, mask: &[u8]) {
        for (i, &m) in mask.iter().enumerate() {
            if let Some(w) = self.wmask.get_mut(usize::from(off) + i) {
                *w = m;
            }
        }
    }

    /// Sets the header type byte (e.g. [`HEADER_MULTIFUNCTION`]).
    pub fn set_header_type(&mut self, v: u8) {
        self.set_u8(REG_HEADER_TYPE, v);
    }

    pub fn set_subsystem(&mut self, vendor: u16, id: u16) {
        self.set_u16(REG_SUBSYSTEM_VENDOR, vendor);
        self.set_u16(REG_SUBSYSTEM_ID, id);
    }

    /// Sets the interrupt pin (1 = INTA# .. 4 = INTD#, 0 = none).
    pub fn set_interrupt_pin(&mut self, pin: u8) {
        self.set_u8(REG_INTERRUPT_PIN, pin);
    }

    /// Declares BAR `index` of `size` bytes (a power of two, at least 4 for I/O and
    /// 16 for memory). A 64-bit BAR also takes `index + 1`.
    pub fn add_bar(&mut self, index: usize, kind: BarKind, size: u64) -> Result<(), PciError> {
        let wide = matches!(kind, BarKind::Memory64 { .. });
        let last = index + usize::from(wide);
        let taken = |i: usize| {
            self.bars.get(i).is_none_or(|b| b.is_some())
                || (i > 0 && matches!(self.bars[i - 1], Some((BarKind::Memory64 { .. }, _))))
        };
        if last >= NUM_BARS || taken(index) || (wide && taken(last)) {
            return Err(PciError::BadBar(index));
        }
        let min = if kind == BarKind::Io {
            MIN_IO_BAR
        } else {
            MIN_MEM_BAR
        };
        let max = if wide { 1 << 63 } else { 1 << 31 };
        if !size.is_power_of_two() || size < min || size > max {
            return Err(PciError::BadBarSize { size, min });
        }
        let (flags, addr_mask) = match kind {
            BarKind::Io => (BAR_IO, BAR_IO_ADDR_MASK),
            BarKind::Memory32 { prefetchable } => (
                if prefetchable { BAR_MEM_PREFETCH } else { 0 },
                BAR_MEM_ADDR_MASK,
            ),
            BarKind::Memory64 { prefetchable } => (
                BAR_MEM_64 | if prefetchable { BAR_MEM_PREFETCH } else { 0 },
                BAR_MEM_ADDR_MASK,
            ),
        };
        let size_mask = !(size - 1);
        let reg = Self::bar_reg(index);
        self.set_u32(reg, flags);
        self.set_writable(reg, &((size_mask as u32) & addr_mask).to_le_bytes());
        if wide {
            self.set_writable(reg + 4, &((size_mask >> 32) as u32).to_le_bytes());
        }
        self.bars[index] = Some((kind, size));
        Ok(())
    }

    fn bar_reg(index: usize) -> u8 {
        REG_BAR0 + 4 * (index as u8)
    }

    /// The programmed address of BAR `index`, if it exists.
    pub fn bar_address(&self, index: usize) -> Option<u64> {
        let (kind, _) = (*self.bars.get(index)?)?;
        let reg = Self::bar_reg(index);
        let lo = self.get_u32(reg);
        Some(match kind {
            BarKind::Io => u64::from(lo & BAR_IO_ADDR_MASK),
            BarKind::Memory32 { .. } => u64::from(lo & BAR_MEM_ADDR_MASK),
            BarKind::Memory64 { .. } => {
                u64::from(lo & BAR_MEM_ADDR_MASK) | (u64::from(self.get_u32(reg + 4)) << 32)
            }
        })
    }

    /// All declared BARs with their current addresses.
    pub fn bars(&self) -> Vec<PciBar> {
        (0..NUM_BARS)
            .filter_map(|index| {
                let (kind, size) = self.bars[index]?;
                Some(PciBar {
                    index,
                    kind,
                    size,
                    address: self.bar_address(index)?,
                })
            })
            .collect()
    }

    /// The command register.
    pub fn command(&self) -> u16 {
        self.u16_at(REG_COMMAND)
    }

    /// Reads the dword at `reg & 0xFC`.
    pub fn read(&self, reg: u8) -> u32 {
        self.get_u32(reg & !3)
    }

    /// Writes `data` at `offset` as the guest would: read-only bits keep their value,
    /// RW1C bits are cleared by ones. Bytes past the end are dropped.
    pub fn write(&mut self, offset: u8, data: &[u8]) {
        for (i, &v) in data.iter().enumerate() {
            let off = usize::from(offset) + i;
            let (Some(d), Some(&m), Some(&c)) = (
                self.data.get_mut(off),
                self.wmask.get(off),
                self.w1c.get(off),
            ) else {
                return;
            };
            *d = ((*d & !m) | (v & m)) & !(v & c);
        }
    }
}

/// A function that is nothing but its configuration space (bridges, test devices).
pub struct PciFunction {
    name: String,
    pub config: PciConfigSpace,
}

impl PciFunction {
    pub fn new(name: &str, config: PciConfigSpace) -> PciFunction {
        PciFunction {
            name: name.to_string(),
            config,
        }
    }

    /// The i440FX host bridge (00:00.0).
    pub fn i440fx() -> PciFunction {
        let mut c = PciConfigSpace::new(
            VENDOR_INTEL,
            DEVICE_I440FX,
            CLASS_BRIDGE,
            SUBCLASS_HOST,
            0,
            I440FX_REVISION,
        );
        c.set_u16(REG_COMMAND, CMD_MEMORY | CMD_MASTER);
        c.set_u16(REG_STATUS, STATUS_DEVSEL_MEDIUM | STATUS_FAST_B2B);
        c.wmask[CHIPSET_REGS].fill(0xFF);
        PciFunction::new("i440fx", c)
    }

    /// The PIIX3 PCI-to-ISA bridge (00:01.0), a multi-function device.
    pub fn piix3_isa() -> PciFunction {
        let mut c = PciConfigSpace::new(
            VENDOR_INTEL,
            DEVICE_PIIX3_ISA,
            CLASS_BRIDGE,
            SUBCLASS_ISA,
            0,
            0,
        );
        c.set_header_type(HEADER_MULTIFUNCTION);
        c.set_u16(REG_COMMAND, CMD_IO | CMD_MEMORY | CMD_MASTER);
        c.set_u16(REG_STATUS, STATUS_DEVSEL_MEDIUM);
        c.set_u32(PIIX3_PIRQRC, u32::from_le_bytes([PIRQ_DISABLED; 4]));
        c.wmask[CHIPSET_REGS].fill(0xFF);
        PciFunction::new("piix3-isa", c)
    }
}

impl PciDevice for PciFunction {
    fn name(&self) -> &str {
        &self.name
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
}
