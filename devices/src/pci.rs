//! PCI host bridge (i440FX-compatible configuration mechanism #1), the PCI device
//! model and a reusable type-0 configuration space.
//!
//! The host bridge sits at 0xCF8 with length 8:
//! * 0xCF8 (dword accesses only): CONFIG_ADDRESS — bit 31 enable, bits 23:16 bus,
//!   15:11 device, 10:8 function, 7:2 register (PCI Local Bus spec 3.0, §3.2.2.3.2);
//! * 0xCFC-0xCFF: CONFIG_DATA, a window on the addressed dword (byte, word or dword
//!   accesses at any offset inside it);
//! * 0xCF9 (byte accesses): the PIIX3 reset control register — bit 2 (RCPU) set
//!   resets the machine, bit 1 (SRST, hard/soft reset type) is kept.
//!
//! Only bus 0 exists. The bridge itself is 00:00.0 (i440FX PMC) and the PIIX3
//! PCI-to-ISA bridge is 00:01.0; more devices are added with
//! [`PciHost::add_device`]. Absent functions read as all ones.

use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::sync::Arc;
use vireo_core::{Bus, BusDevice, MachineControl, SharedDevice, StopReason};

const LOG: &str = "vireo::dev::pci";

/// Base port of the configuration mechanism.
pub const CONFIG_BASE: u64 = 0xCF8;
/// Ports 0xCF8-0xCFF.
pub const CONFIG_LEN: u64 = 8;
/// Size of a function's configuration space.
pub const CONFIG_SPACE_SIZE: usize = 256;
/// Devices per bus, functions per device.
pub const MAX_DEVICES: u8 = 32;
pub const MAX_FUNCTIONS: u8 = 8;

const ADDR_ENABLE: u32 = 0x8000_0000;
/// Implemented CONFIG_ADDRESS bits (reserved bits 30:24 and 1:0 read as 0).
const ADDR_MASK: u32 = 0x80FF_FFFC;
const DATA_OFFSET: u64 = 4;
const RESET_CONTROL_OFFSET: u64 = 1;
const RC_SRST: u8 = 0x02;
const RC_RCPU: u8 = 0x04;

// Type-0 header registers.
pub const REG_VENDOR_ID: u8 = 0x00;
pub const REG_DEVICE_ID: u8 = 0x02;
pub const REG_COMMAND: u8 = 0x04;
pub const REG_STATUS: u8 = 0x06;
pub const REG_REVISION: u8 = 0x08;
pub const REG_PROG_IF: u8 = 0x09;
pub const REG_SUBCLASS: u8 = 0x0A;
pub const REG_CLASS: u8 = 0x0B;
pub const REG_CACHE_LINE: u8 = 0x0C;
pub const REG_LATENCY: u8 = 0x0D;
pub const REG_HEADER_TYPE: u8 = 0x0E;
pub const REG_BAR0: u8 = 0x10;
pub const REG_SUBSYSTEM_VENDOR: u8 = 0x2C;
pub const REG_SUBSYSTEM_ID: u8 = 0x2E;
pub const REG_CAPABILITIES: u8 = 0x34;
pub const REG_INTERRUPT_LINE: u8 = 0x3C;
pub const REG_INTERRUPT_PIN: u8 = 0x3D;
/// Header type bit 7: the device has more than one function.
pub const HEADER_MULTIFUNCTION: u8 = 0x80;
/// Number of BARs of a type-0 header.
pub const NUM_BARS: usize = 6;

// Command register bits.
pub const CMD_IO: u16 = 0x0001;
pub const CMD_MEMORY: u16 = 0x0002;
pub const CMD_MASTER: u16 = 0x0004;
pub const CMD_PARITY: u16 = 0x0040;
pub const CMD_SERR: u16 = 0x0100;
pub const CMD_INTX_DISABLE: u16 = 0x0400;
const CMD_WRITABLE: u16 =
    CMD_IO | CMD_MEMORY | CMD_MASTER | CMD_PARITY | CMD_SERR | CMD_INTX_DISABLE;
// Status register.
pub const STATUS_CAP_LIST: u16 = 0x0010;
const STATUS_DEVSEL_MEDIUM: u16 = 0x0200;
const STATUS_FAST_B2B: u16 = 0x0080;
/// Error bits, cleared by writing 1 (parity, signalled/received aborts, SERR).
const STATUS_W1C: u16 = 0xF900;

// BAR low bits.
const BAR_IO: u32 = 0x1;
const BAR_MEM_64: u32 = 0x4;
const BAR_MEM_PREFETCH: u32 = 0x8;
const BAR_IO_ADDR_MASK: u32 = !0x3;
const BAR_MEM_ADDR_MASK: u32 = !0xF;
const MIN_IO_BAR: u64 = 4;
const MIN_MEM_BAR: u64 = 16;

// The i440FX/PIIX3 identities.
pub const VENDOR_INTEL: u16 = 0x8086;
pub const DEVICE_I440FX: u16 = 0x1237;
pub const DEVICE_PIIX3_ISA: u16 = 0x7000;
const CLASS_BRIDGE: u8 = 0x06;
const SUBCLASS_HOST: u8 = 0x00;
const SUBCLASS_ISA: u8 = 0x01;
const I440FX_REVISION: u8 = 0x02;
/// Chipset registers firmware programs (PAM, SMRAM, PIRQ routing...): stored only.
const CHIPSET_REGS: std::ops::Range<usize> = 0x40..CONFIG_SPACE_SIZE;
/// PIIX3 PIRQ route control registers 0x60-0x63; 0x80 = routing disabled.
const PIIX3_PIRQRC: u8 = 0x60;
const PIRQ_DISABLED: u8 = 0x80;

/// Errors in setting up PCI devices (VMM configuration mistakes, not guest actions).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PciError {
    #[error("BAR {0} does not exist or is already in use")]
    BadBar(usize),
    #[error("BAR size {size:#x} is not a power of two of at least {min:#x}")]
    BadBarSize { size: u64, min: u64 },
    #[error("PCI slot {dev:02x}.{func} does not exist")]
    BadSlot { dev: u8, func: u8 },
    #[error("PCI slot {dev:02x}.{func} is already taken by {name}")]
    SlotTaken { dev: u8, func: u8, name: String },
}

/// Address space and flavour of a BAR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarKind {
    Io,
    Memory32 {
        prefetchable: bool,
    },
    /// Uses two BAR registers (`index` and `index + 1`).
    Memory64 {
        prefetchable: bool,
    },
}

/// A BAR and where the guest placed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PciBar {
    pub index: usize,
    pub kind: BarKind,
    pub size: u64,
    /// The programmed base address (0 if unassigned). Decoding also depends on the
    /// command register's I/O and memory enable bits.
    pub address: u64,
}

/// A PCI function as the host bridge sees it.
pub trait PciDevice: Send {
    /// Name for logs.
    fn name(&self) -> &str;
    /// Reads the dword at `reg` (a multiple of 4).
    fn config_read(&mut self, reg: u8) -> u32;
    /// Writes `data` (1, 2 or 4 bytes, inside one dword) at `offset`.
    fn config_write(&mut self, offset: u8, data: &[u8]);
    /// The function's BARs with their current addresses.
    fn bars(&self) -> Vec<PciBar> {
        Vec::new()
    }
}

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
}

/// A PCI function shared between the host bridge and the rest of the machine.
pub type SharedPciDevice = Arc<Mutex<dyn PciDevice>>;

/// The host bridge: configuration mechanism #1 for bus 0 plus the 0xCF9 reset
/// control register.
pub struct PciHost {
    address: u32,
    reset_control: u8,
    devices: BTreeMap<(u8, u8), SharedPciDevice>,
    control: Arc<MachineControl>,
}

impl PciHost {
    /// Bus 0 with the i440FX at 00:00.0 and the PIIX3 ISA bridge at 00:01.0.
    pub fn new(control: Arc<MachineControl>) -> PciHost {
        let mut devices: BTreeMap<(u8, u8), SharedPciDevice> = BTreeMap::new();
        devices.insert((0, 0), Arc::new(Mutex::new(PciFunction::i440fx())));
        devices.insert((1, 0), Arc::new(Mutex::new(PciFunction::piix3_isa())));
        PciHost {
            address: 0,
            reset_control: 0,
            devices,
            control,
        }
    }

    /// Registers `host` at 0xCF8-0xCFF.
    pub fn register(host: &Arc<Mutex<PciHost>>, bus: &mut Bus) -> vireo_core::Result<()> {
        bus.insert(CONFIG_BASE, CONFIG_LEN, host.clone() as SharedDevice)
    }

    /// Plugs `device` in at 00:`dev`.`func`.
    pub fn add_device(
        &mut self,
        dev: u8,
        func: u8,
        device: SharedPciDevice,
    ) -> Result<(), PciError> {
        if dev >= MAX_DEVICES || func >= MAX_FUNCTIONS {
            return Err(PciError::BadSlot { dev, func });
        }
        if let Some(d) = self.devices.get(&(dev, func)) {
            let name = d.lock().name().to_string();
            return Err(PciError::SlotTaken { dev, func, name });
        }
        log::debug!(target: LOG, "00:{dev:02x}.{func}: {}", device.lock().name());
        self.devices.insert((dev, func), device);
        Ok(())
    }

    /// The lowest device number with nothing plugged in.
    pub fn free_slot(&self) -> Option<u8> {
        (0..MAX_DEVICES).find(|&d| (0..MAX_FUNCTIONS).all(|f| !self.devices.contains_key(&(d, f))))
    }

    /// The function at 00:`dev`.`func`, if any.
    pub fn device(&self, dev: u8, func: u8) -> Option<SharedPciDevice> {
        self.devices.get(&(dev, func)).cloned()
    }

    /// Reads a configuration dword on bus 0 (all ones if absent).
    pub fn config_read(&self, dev: u8, func: u8, reg: u8) -> u32 {
        self.devices
            .get(&(dev, func))
            .map_or(u32::MAX, |d| d.lock().config_read(reg & !3))
    }

    /// Writes configuration bytes on bus 0 (dropped if absent).
    pub fn config_write(&self, dev: u8, func: u8, offset: u8, data: &[u8]) {
        if let Some(d) = self.devices.get(&(dev, func)) {
            d.lock().config_write(offset, data);
        }
    }

    /// The function and register selected by CONFIG_ADDRESS, if enabled and on bus 0.
    fn selected(&self) -> Option<(u8, u8, u8)> {
        let a = self.address;
        let bus = (a >> 16) & 0xFF;
        (a & ADDR_ENABLE != 0 && bus == 0).then_some((
            ((a >> 11) & 0x1F) as u8,
            ((a >> 8) & 0x7) as u8,
            (a & 0xFC) as u8,
        ))
    }
}

impl BusDevice for PciHost {
    fn name(&self) -> &str {
        "pci-host"
    }

    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (offset, data.len()) {
            (0, 4) => data.copy_from_slice(&self.address.to_le_bytes()),
            (RESET_CONTROL_OFFSET, 1) => data[0] = self.reset_control,
            (DATA_OFFSET..CONFIG_LEN, 1 | 2 | 4) => {
                let shift = (offset - DATA_OFFSET) as usize;
                let v = match self.selected() {
                    Some((dev, func, reg)) => self.config_read(dev, func, reg),
                    None => u32::MAX,
                };
                let bytes = v.to_le_bytes();
                for (i, b) in data.iter_mut().enumerate() {
                    *b = bytes.get(shift + i).copied().unwrap_or(0xFF);
                }
            }
            _ => data.fill(0xFF),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match (offset, data) {
            (0, &[a, b, c, d]) => self.address = u32::from_le_bytes([a, b, c, d]) & ADDR_MASK,
            (RESET_CONTROL_OFFSET, &[v]) => {
                // Only the reset type survives; RCPU is a trigger.
                self.reset_control = v & RC_SRST;
                if v & RC_RCPU != 0 {
                    log::info!(target: LOG, "reset through 0xCF9 ({v:#04x})");
                    self.control.request_stop(StopReason::Reset);
                }
            }
            (DATA_OFFSET..CONFIG_LEN, [_] | [_, _] | [_, _, _, _]) => {
                let shift = (offset - DATA_OFFSET) as usize;
                let Some((dev, func, reg)) = self.selected() else {
                    return;
                };
                // Accesses never cross the dword (the bus ends at 0xCFF).
                let n = data.len().min(4 - shift);
                self.config_write(dev, func, reg + shift as u8, &data[..n]);
            }
            _ => log::trace!(target: LOG, "ignored write {data:x?} at {:#x}", CONFIG_BASE + offset),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> (Bus, Arc<Mutex<PciHost>>, Arc<MachineControl>) {
        let ctl = MachineControl::new();
        let host = Arc::new(Mutex::new(PciHost::new(ctl.clone())));
        let mut bus = Bus::new("pio");
        PciHost::register(&host, &mut bus).unwrap();
        (bus, host, ctl)
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
}
