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
//!
//! BARs are decoded on the machine's buses ([`decode`]): the host bridge is the
//! fallback of the port and MMIO buses and forwards accesses inside a BAR the guest
//! placed and enabled to [`PciDevice::bar_read`]/[`PciDevice::bar_write`];
//! reprogramming a BAR moves the region. [`PciHost::assign_bars`] places BARs as PC
//! firmware does, for guests that start without firmware (`-kernel`).

use parking_lot::{Mutex, RwLock};
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
    /// The command register, whose I/O and memory enables gate BAR decoding.
    fn command(&self) -> u16 {
        0
    }
    /// Reads `data.len()` bytes at `offset` inside BAR `bar`. Only called for
    /// accesses entirely inside a BAR that is placed and enabled.
    fn bar_read(&mut self, _bar: usize, _offset: u64, data: &mut [u8]) {
        data.fill(0xFF);
    }
    /// Writes `data` at `offset` inside BAR `bar` (same conditions as `bar_read`).
    fn bar_write(&mut self, _bar: usize, _offset: u64, _data: &[u8]) {}
}

mod config;
pub mod decode;
pub use config::{PciConfigSpace, PciFunction};
use decode::{BarMap, BarWindows, SharedBarMap, Space};

/// A PCI function shared between the host bridge and the rest of the machine.
pub type SharedPciDevice = Arc<Mutex<dyn PciDevice>>;

/// The host bridge: configuration mechanism #1 for bus 0 plus the 0xCF9 reset
/// control register.
pub struct PciHost {
    address: u32,
    reset_control: u8,
    devices: BTreeMap<(u8, u8), SharedPciDevice>,
    control: Arc<MachineControl>,
    /// Where the BARs are decoded, shared with the buses' [`BarWindows`].
    map: SharedBarMap,
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
            map: Arc::new(RwLock::new(BarMap::default())),
        }
    }

    /// Registers `host` at 0xCF8-0xCFF of `pio` and makes its BAR windows the
    /// fallback of `pio` and `mmio`.
    pub fn register(
        host: &Arc<Mutex<PciHost>>,
        pio: &mut Bus,
        mmio: &mut Bus,
    ) -> vireo_core::Result<()> {
        pio.insert(CONFIG_BASE, CONFIG_LEN, host.clone() as SharedDevice)?;
        let map = host.lock().map.clone();
        pio.set_fallback(Arc::new(Mutex::new(BarWindows::new(
            Space::Io,
            map.clone(),
        ))));
        mmio.set_fallback(Arc::new(Mutex::new(BarWindows::new(Space::Memory, map))));
        Ok(())
    }

    /// Decodes the BARs again (after anything that may have moved one).
    fn remap(&self) {
        *self.map.write() = BarMap::build(&self.devices);
    }

    /// The decoded `(base, length, BAR)` windows of `space`.
    pub fn windows(&self, space: Space) -> Vec<(u64, u64, usize)> {
        self.map.read().windows(space)
    }

    /// Places every BAR as PC firmware does (see [`decode::plan`]) and enables I/O
    /// and memory decoding on the functions that have such BARs. For guests that
    /// start without firmware, which would otherwise find every BAR at 0.
    pub fn assign_bars(
        &mut self,
        io: std::ops::Range<u64>,
        mem32: std::ops::Range<u64>,
        mem64_start: u64,
    ) {
        let mut bars = Vec::new();
        for (&slot, d) in &self.devices {
            bars.extend(d.lock().bars().into_iter().map(|b| (slot, b)));
        }
        for ((dev, func), index, addr) in decode::plan(&bars, io, mem32, mem64_start) {
            let Some(d) = self.devices.get(&(dev, func)) else {
                continue;
            };
            let mut d = d.lock();
            let reg = REG_BAR0 + 4 * index as u8;
            let wide = bars.iter().any(|(s, b)| {
                *s == (dev, func) && b.index == index && matches!(b.kind, BarKind::Memory64 { .. })
            });
            // The BAR's low (type) bits are read-only.
            d.config_write(reg, &(addr as u32).to_le_bytes());
            if wide {
                d.config_write(reg + 4, &((addr >> 32) as u32).to_le_bytes());
            }
            log::debug!(target: LOG, "00:{dev:02x}.{func} BAR {index} at {addr:#x}");
        }
        for d in self.devices.values() {
            let mut d = d.lock();
            let mut enable = 0;
            for b in d.bars() {
                enable |= match b.kind {
                    BarKind::Io => CMD_IO,
                    _ => CMD_MEMORY,
                };
            }
            if enable != 0 {
                let cmd = d.command() | enable;
                d.config_write(REG_COMMAND, &cmd.to_le_bytes());
            }
        }
        self.remap();
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
        self.remap();
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

    /// Writes configuration bytes on bus 0 (dropped if absent). A write may move a
    /// BAR or change what the function decodes: the BAR map follows.
    pub fn config_write(&self, dev: u8, func: u8, offset: u8, data: &[u8]) {
        if let Some(d) = self.devices.get(&(dev, func)) {
            d.lock().config_write(offset, data);
            let end = usize::from(offset) + data.len();
            let touches = |r: std::ops::Range<u8>| {
                usize::from(offset) < usize::from(r.end) && end > usize::from(r.start)
            };
            if touches(REG_COMMAND..REG_STATUS) || touches(REG_BAR0..REG_BAR0 + 24) {
                self.remap();
            }
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
mod tests;
