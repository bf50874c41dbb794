//! BAR decoding: which function answers an access on the port or memory bus.
//!
//! The host bridge keeps a [`BarMap`] of every BAR the guest has placed and enabled,
//! rebuilt after each configuration write (only those can move a BAR or flip the
//! command register's enables). A [`BarWindows`] device, one per address space, is
//! the fallback of the machine's port or MMIO bus: the fixed devices registered on
//! the bus keep their ranges, and whatever they leave unclaimed is looked up here.
//! On a PC the chipset decodes the same way: legacy ISA devices are fixed, PCI
//! functions claim what firmware or the OS programmed into their BARs.
//!
//! A BAR is decoded as QEMU's `pci_bar_address` does: its space must be enabled in
//! the command register, its base must not be 0, it must not wrap, and a 32-bit BAR
//! (memory or I/O) must end below 4 GiB — so a BAR that holds all ones while being
//! sized is never decoded. Where BARs overlap, the lowest device/function/BAR wins.
//! RAM and ROM come before the MMIO bus in both engines, so a BAR placed over RAM is
//! shadowed, as QEMU's PCI address space is below RAM.

use super::{BarKind, PciBar, SharedPciDevice, CMD_IO, CMD_MEMORY, LOG};
use parking_lot::RwLock;
use std::collections::BTreeMap;
use std::sync::Arc;
use vireo_core::BusDevice;

/// The two address spaces a BAR can live in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Space {
    Io,
    Memory,
}

/// One decoded BAR.
#[derive(Clone)]
struct Window {
    base: u64,
    len: u64,
    bar: usize,
    dev: SharedPciDevice,
}

/// The decoded BARs of all functions on the bus.
#[derive(Default, Clone)]
pub struct BarMap {
    io: Vec<Window>,
    mem: Vec<Window>,
}

/// The map shared by the host bridge (which rebuilds it) and the bus windows.
pub type SharedBarMap = Arc<RwLock<BarMap>>;

/// Where `bar` is decoded, if it is: `(space, base, length)`.
pub fn decoded(bar: &PciBar, command: u16) -> Option<(Space, u64, u64)> {
    let (space, enable, wide) = match bar.kind {
        BarKind::Io => (Space::Io, CMD_IO, false),
        BarKind::Memory32 { .. } => (Space::Memory, CMD_MEMORY, false),
        BarKind::Memory64 { .. } => (Space::Memory, CMD_MEMORY, true),
    };
    if command & enable == 0 || bar.size == 0 {
        return None;
    }
    let base = bar.address & !(bar.size - 1);
    let last = base.checked_add(bar.size - 1)?;
    if base == 0 || last <= base || (!wide && last >= u64::from(u32::MAX)) {
        return None;
    }
    Some((space, base, bar.size))
}

impl BarMap {
    /// The map for `devices` as they are programmed now.
    pub fn build(devices: &BTreeMap<(u8, u8), SharedPciDevice>) -> BarMap {
        let mut map = BarMap::default();
        for dev in devices.values() {
            let (bars, command) = {
                let d = dev.lock();
                (d.bars(), d.command())
            };
            for bar in &bars {
                if let Some((space, base, len)) = decoded(bar, command) {
                    let w = Window {
                        base,
                        len,
                        bar: bar.index,
                        dev: dev.clone(),
                    };
                    match space {
                        Space::Io => map.io.push(w),
                        Space::Memory => map.mem.push(w),
                    }
                }
            }
        }
        map
    }

    /// The decoded `(base, length, bar)` windows of `space`, for logs and tests.
    pub fn windows(&self, space: Space) -> Vec<(u64, u64, usize)> {
        self.list(space)
            .iter()
            .map(|w| (w.base, w.len, w.bar))
            .collect()
    }

    fn list(&self, space: Space) -> &[Window] {
        match space {
            Space::Io => &self.io,
            Space::Memory => &self.mem,
        }
    }

    /// The function, BAR and offset an access of `len` bytes at `addr` falls in.
    /// Accesses that run past a BAR's end are not the BAR's.
    fn find(&self, space: Space, addr: u64, len: u64) -> Option<(SharedPciDevice, usize, u64)> {
        self.list(space).iter().find_map(|w| {
            let off = addr.checked_sub(w.base)?;
            (off.checked_add(len)? <= w.len).then(|| (w.dev.clone(), w.bar, off))
        })
    }
}

/// The fallback device of the port bus or the MMIO bus: forwards accesses inside a
/// decoded BAR to its function; anything else reads as all ones.
pub struct BarWindows {
    space: Space,
    map: SharedBarMap,
}

impl BarWindows {
    pub fn new(space: Space, map: SharedBarMap) -> BarWindows {
        BarWindows { space, map }
    }

    fn lookup(&self, addr: u64, len: usize) -> Option<(SharedPciDevice, usize, u64)> {
        // The map lock is released before the function is locked.
        let found = self.map.read().find(self.space, addr, len as u64);
        found
    }
}

impl BusDevice for BarWindows {
    fn name(&self) -> &str {
        match self.space {
            Space::Io => "pci-io",
            Space::Memory => "pci-mem",
        }
    }

    fn read(&mut self, addr: u64, data: &mut [u8]) {
        match self.lookup(addr, data.len()) {
            Some((dev, bar, off)) => dev.lock().bar_read(bar, off, data),
            None => {
                data.fill(0xff);
                log::trace!(target: "vireo::bus", "{}: unassigned read {addr:#x}/{}",
                    self.name(), data.len());
            }
        }
    }

    fn write(&mut self, addr: u64, data: &[u8]) {
        match self.lookup(addr, data.len()) {
            Some((dev, bar, off)) => dev.lock().bar_write(bar, off, data),
            None => log::trace!(target: "vireo::bus", "{}: unassigned write {addr:#x} {data:x?}",
                self.name()),
        }
    }
}

/// Firmware-style BAR assignment, as SeaBIOS does before a kernel runs: BARs by
/// decreasing size, I/O upwards from `io.start`, memory downwards from `mem32.end`
/// (64-bit BARs too while they fit), 64-bit BARs that do not fit upwards from
/// `mem64_start`. Returns `(device, BAR, address)` for each BAR placed; a BAR that
/// fits nowhere keeps address 0 (not decoded) and is logged.
pub fn plan(
    bars: &[((u8, u8), PciBar)],
    io: std::ops::Range<u64>,
    mem32: std::ops::Range<u64>,
    mem64_start: u64,
) -> Vec<((u8, u8), usize, u64)> {
    let mut order: Vec<&((u8, u8), PciBar)> = bars.iter().collect();
    // Largest first (then bus order), so alignment wastes no space.
    order.sort_by_key(|(slot, b)| (std::cmp::Reverse(b.size), *slot, b.index));
    let mut io_next = io.start;
    let mut mem_top = mem32.end;
    let mut high_next = mem64_start;
    let mut out = Vec::new();
    for (slot, b) in order {
        let align_up = |v: u64| v.checked_add(b.size - 1).map(|x| x & !(b.size - 1));
        let placed = match b.kind {
            BarKind::Io => align_up(io_next)
                .filter(|&a| a.checked_add(b.size).is_some_and(|end| end <= io.end))
                .inspect(|&a| io_next = a + b.size),
            BarKind::Memory32 { .. } | BarKind::Memory64 { .. } => {
                let low = mem_top
                    .checked_sub(b.size)
                    .map(|a| a & !(b.size - 1))
                    .filter(|&a| a >= mem32.start);
                match (low, b.kind) {
                    (Some(a), _) => {
                        mem_top = a;
                        Some(a)
                    }
                    (None, BarKind::Memory64 { .. }) => align_up(high_next)
                        .filter(|a| a.checked_add(b.size).is_some())
                        .inspect(|&a| high_next = a + b.size),
                    (None, _) => None,
                }
            }
        };
        match placed {
            Some(a) => out.push((*slot, b.index, a)),
            None => log::warn!(target: LOG,
                "00:{:02x}.{} BAR {}: no room for {:#x} bytes", slot.0, slot.1, b.index, b.size),
        }
    }
    out
}
