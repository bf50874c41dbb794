//! Port I/O and MMIO buses: address ranges dispatched to devices.
//!
//! A device is registered for `[base, base+len)`; ranges may not overlap. Accesses no
//! registered range claims go to the bus's fallback device if it has one (the PCI host
//! bridge, which forwards them to whatever PCI BAR the guest placed there), and
//! otherwise read as all ones and drop writes, as on a PC.

use crate::error::{Error, Result};
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::sync::Arc;

/// A device on a bus. `offset` is relative to the base the device was registered at.
pub trait BusDevice: Send {
    /// A short name for logs and overlap errors.
    fn name(&self) -> &str;
    /// Reads `data.len()` bytes (1, 2, 4 or 8) at `offset`.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Writes `data` at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// A device shared between the bus and whoever else holds it (timer thread, machine).
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

struct Entry {
    len: u64,
    name: String,
    dev: SharedDevice,
}

/// A range-dispatching bus (one for port I/O, one for MMIO).
#[derive(Default)]
pub struct Bus {
    name: &'static str,
    ranges: BTreeMap<u64, Entry>,
    /// Receives the accesses no range claims, with the absolute address as offset.
    fallback: Option<SharedDevice>,
}

impl Bus {
    /// An empty bus; `name` (`"pio"`, `"mmio"`) is used in logs.
    pub fn new(name: &'static str) -> Bus {
        Bus {
            name,
            ranges: BTreeMap::new(),
            fallback: None,
        }
    }

    /// Sets the device that receives every access no registered range claims (a
    /// subtractive decoder such as the PCI host bridge's BAR windows). Its `offset` is
    /// the absolute bus address; it decides itself what an address it does not
    /// decode reads as (all ones on a PC).
    pub fn set_fallback(&mut self, dev: SharedDevice) {
        self.fallback = Some(dev);
    }

    /// Registers `dev` for `[base, base+len)`. Overlapping an existing range is an error.
    pub fn insert(&mut self, base: u64, len: u64, dev: SharedDevice) -> Result<()> {
        let end = base.checked_add(len).filter(|_| len > 0);
        let Some(end) = end else {
            return Err(Error::BusRange { base, len });
        };
        let name = dev.lock().name().to_string();
        // The closest range starting at or before the end of the new one.
        if let Some((&ob, e)) = self.ranges.range(..end).next_back() {
            if ob + e.len > base {
                return Err(Error::BusOverlap {
                    base,
                    len,
                    name,
                    other: e.name.clone(),
                    other_base: ob,
                });
            }
        }
        self.ranges.insert(base, Entry { len, name, dev });
        Ok(())
    }

    fn find(&self, addr: u64, size: u64) -> Option<(u64, &Entry)> {
        let (&base, e) = self.ranges.range(..=addr).next_back()?;
        (addr - base + size <= e.len).then_some((base, e))
    }

    /// Whether any device claims `addr`.
    pub fn contains(&self, addr: u64) -> bool {
        self.find(addr, 1).is_some()
    }

    /// Reads from the device at `addr`; unassigned addresses read as all ones. Returns
    /// whether a device (a registered one or the fallback) took the access.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr, data.len() as u64) {
            Some((base, e)) => {
                e.dev.lock().read(addr - base, data);
                true
            }
            None => {
                if let Some(f) = &self.fallback {
                    f.lock().read(addr, data);
                    return true;
                }
                data.fill(0xff);
                log::trace!(target: "vireo::bus", "{}: unassigned read {addr:#x}/{}", self.name, data.len());
                false
            }
        }
    }

    /// Writes to the device at `addr`; writes to unassigned addresses are dropped.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr, data.len() as u64) {
            Some((base, e)) => {
                e.dev.lock().write(addr - base, data);
                true
            }
            None => {
                if let Some(f) = &self.fallback {
                    f.lock().write(addr, data);
                    return true;
                }
                log::trace!(target: "vireo::bus", "{}: unassigned write {addr:#x} {data:x?}", self.name);
                false
            }
        }
    }

    /// Names and ranges of the registered devices, in address order.
    pub fn devices(&self) -> Vec<(u64, u64, String)> {
        self.ranges
            .iter()
            .map(|(b, e)| (*b, e.len, e.name.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Reg {
        name: &'static str,
        last: Vec<(u64, Vec<u8>)>,
    }
    impl BusDevice for Reg {
        fn name(&self) -> &str {
            self.name
        }
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.last.push((offset, data.to_vec()));
        }
    }
    fn dev(name: &'static str) -> Arc<Mutex<Reg>> {
        Arc::new(Mutex::new(Reg { name, last: vec![] }))
    }

    #[test]
    fn dispatch_by_offset() {
        let mut bus = Bus::new("pio");
        let a = dev("a");
        bus.insert(0x3f8, 8, a.clone()).unwrap();
        let mut b = [0u8; 1];
        assert!(bus.read(0x3fd, &mut b));
        assert_eq!(b, [5]);
        assert!(bus.write(0x3f8, &[0x41]));
        assert_eq!(a.lock().last, vec![(0, vec![0x41])]);
        // Unassigned reads float high.
        let mut w = [0u8; 2];
        assert!(!bus.read(0x3f0, &mut w));
        assert_eq!(w, [0xff, 0xff]);
        // An access running past the device's end is not the device's.
        let mut d = [0u8; 4];
        assert!(!bus.read(0x3fe, &mut d));
    }

    #[test]
    fn overlaps_are_refused() {
        let mut bus = Bus::new("pio");
        bus.insert(0x60, 1, dev("kbd")).unwrap();
        bus.insert(0x64, 1, dev("kbd-cmd")).unwrap();
        for (b, l) in [(0x60, 1), (0x5f, 2), (0x61, 4), (0x64, 1), (0x50, 0x100)] {
            let e = bus.insert(b, l, dev("x")).unwrap_err();
            assert!(e.to_string().contains("overlaps"), "{e}");
        }
        bus.insert(0x61, 3, dev("gap")).unwrap();
        assert!(bus.insert(0x10, 0, dev("empty")).is_err());
        assert!(bus.insert(u64::MAX, 2, dev("wrap")).is_err());
        assert_eq!(bus.devices().len(), 3);
    }

    #[test]
    fn fallback_gets_what_no_range_claims() {
        let mut bus = Bus::new("pio");
        let a = dev("a");
        let f = dev("fallback");
        bus.insert(0x60, 1, a.clone()).unwrap();
        bus.set_fallback(f.clone());
        // A registered range still wins.
        let mut b = [0u8; 1];
        assert!(bus.read(0x60, &mut b));
        assert_eq!(b, [0]);
        bus.write(0x60, &[1]);
        assert_eq!(a.lock().last, vec![(0, vec![1])]);
        // Everything else reaches the fallback with its absolute address.
        assert!(bus.read(0xc012, &mut b));
        assert_eq!(b, [0x12]);
        bus.write(0xc004, &[7, 8]);
        // An access running past a registered range's end is not that device's.
        bus.write(0x60, &[1, 2]);
        assert_eq!(
            f.lock().last,
            vec![(0xc004, vec![7, 8]), (0x60, vec![1, 2])]
        );
        assert_eq!(a.lock().last.len(), 1);
    }
}

/// Everything a CPU engine reaches by address: RAM/ROM, the MMIO and port buses, and
/// the A20 gate.
#[derive(Clone)]
pub struct SystemBus {
    pub mem: Arc<crate::GuestMemory>,
    pub pio: Arc<Bus>,
    pub mmio: Arc<Bus>,
    pub a20: Arc<crate::A20Gate>,
}
