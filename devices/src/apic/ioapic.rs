//! The I/O APIC (Intel 82093AA datasheet, 290566): 24 interrupt input pins, each with
//! a 64-bit redirection-table entry that turns an input into a message on the APIC
//! bus.
//!
//! Registers: IOREGSEL at offset 0x00 selects an indirect register, IOWIN at 0x10
//! reads or writes it. Indirect registers: 0x00 ID (bits 27:24), 0x01 version (0x11,
//! maximum redirection entry 23: what KVM's in-kernel IOAPIC reports, so a guest sees
//! the same chip under both engines), 0x02 arbitration ID, 0x10 + 2n / 0x11 + 2n the
//! low and high halves of entry n.
//!
//! Redirection entry: vector (7:0), delivery mode (10:8: fixed, lowest priority, SMI,
//! NMI, INIT, ExtINT), destination mode (11: logical), delivery status (12, read-only:
//! a request is waiting), polarity (13), remote IRR (14, read-only), trigger mode (15:
//! level), mask (16), destination (63:56). After reset every entry is masked.
//!
//! - Edge-triggered pins send one message per rising edge; an edge that arrives while
//!   the pin is masked is ignored, neither delivered nor held pending (datasheet,
//!   "Interrupt Mask"; KVM's in-kernel IOAPIC drops it too, QEMU's would hold it).
//! - Level-triggered pins send a message while asserted and remote IRR is clear, and
//!   set remote IRR; the local APIC's EOI of that vector (broadcast on the bus) clears
//!   it, and a still-asserted pin sends again.
//! - Inputs carry the logical assertion of the device's line (the router already
//!   applies the wiring): the polarity bit is stored and read back but does not invert
//!   the input, as in KVM's and QEMU's IOAPICs.

use super::{ApicBus, DeliveryMode, Message, Shorthand};
use parking_lot::Mutex;
use std::sync::{Arc, Weak};
use vireo_core::BusDevice;

const LOG: &str = "vireo::dev::ioapic";

/// Number of input pins (GSIs 0-23).
pub const PINS: usize = 24;
/// The version register: version 0x11, maximum redirection entry PINS - 1.
pub const VERSION: u32 = 0x11 | ((PINS as u32 - 1) << 16);
/// Size of the MMIO window.
pub const MMIO_LEN: u64 = 0x1000;
/// Offset of IOREGSEL.
pub const IOREGSEL: u64 = 0x00;
/// Offset of IOWIN.
pub const IOWIN: u64 = 0x10;

/// Redirection-entry bits.
pub mod entry {
    pub const LOGICAL: u64 = 1 << 11;
    pub const DELIVERY_STATUS: u64 = 1 << 12;
    pub const POLARITY_LOW: u64 = 1 << 13;
    pub const REMOTE_IRR: u64 = 1 << 14;
    pub const LEVEL: u64 = 1 << 15;
    pub const MASKED: u64 = 1 << 16;
    /// Bits software may write (not delivery status, not remote IRR).
    pub const WRITABLE: u64 = 0xff00_0000_0001_afff;
}

/// An IOAPIC shared by the MMIO bus, the GSI router and the APIC bus's EOI broadcast.
pub type SharedIoapic = Arc<Mutex<Ioapic>>;

/// The IOAPIC.
pub struct Ioapic {
    /// APIC ID (ID register bits 27:24).
    id: u8,
    /// IOREGSEL.
    sel: u8,
    redir: [u64; PINS],
    /// Asserted inputs (bit n = pin n).
    asserted: u32,
    /// Requests not yet sent: edges not yet delivered, asserted levels.
    irr: u32,
    bus: Arc<ApicBus>,
}

impl Ioapic {
    /// An IOAPIC with APIC ID `id` in its reset state, sending on `bus`.
    pub fn new(id: u8, bus: Arc<ApicBus>) -> Ioapic {
        Ioapic {
            id: id & 0xf,
            sel: 0,
            redir: [entry::MASKED; PINS],
            asserted: 0,
            irr: 0,
            bus,
        }
    }

    /// Creates the IOAPIC and connects it to `bus` as the receiver of EOI broadcasts.
    pub fn attach(id: u8, bus: &Arc<ApicBus>) -> SharedIoapic {
        let io = Arc::new(Mutex::new(Ioapic::new(id, bus.clone())));
        let weak: Weak<Mutex<Ioapic>> = Arc::downgrade(&io);
        bus.set_eoi_listener(Box::new(move |v| {
            if let Some(io) = weak.upgrade() {
                io.lock().eoi(v);
            }
        }));
        io
    }

    /// Back to the reset state: every entry masked, no pending request (input levels
    /// are the devices' and stay).
    pub fn reset(&mut self) {
        self.sel = 0;
        self.redir = [entry::MASKED; PINS];
        self.irr = 0;
    }

    /// The redirection entry of `pin` (delivery status computed).
    pub fn entry(&self, pin: usize) -> u64 {
        let Some(&e) = self.redir.get(pin) else {
            return 0;
        };
        // A request held back by the mask (a level-triggered pin asserted while
        // masked).
        let waiting = self.irr & (1 << pin) != 0 && e & entry::MASKED != 0;
        if waiting {
            e | entry::DELIVERY_STATUS
        } else {
            e
        }
    }

    /// Drives input `pin` to `level` (asserted or not).
    pub fn set_irq(&mut self, pin: usize, level: bool) {
        if pin >= PINS {
            return;
        }
        let bit = 1u32 << pin;
        let was = self.asserted & bit != 0;
        if level {
            self.asserted |= bit;
        } else {
            self.asserted &= !bit;
        }
        if self.redir[pin] & entry::LEVEL != 0 {
            if level {
                self.irr |= bit;
                self.service(pin);
            } else {
                self.irr &= !bit;
            }
        } else if level && !was && self.redir[pin] & entry::MASKED == 0 {
            self.irr |= bit;
            self.service(pin);
        }
    }

    /// Sends the request of `pin` if its entry lets it.
    fn service(&mut self, pin: usize) {
        let bit = 1u32 << pin;
        let e = self.redir[pin];
        if self.irr & bit == 0 || e & entry::MASKED != 0 {
            return;
        }
        let level = e & entry::LEVEL != 0;
        if level {
            if e & entry::REMOTE_IRR != 0 {
                return;
            }
            self.redir[pin] |= entry::REMOTE_IRR;
        } else {
            self.irr &= !bit;
        }
        let mode = DeliveryMode::from_bits(e);
        let msg = Message {
            vector: e as u8,
            mode,
            dest: (e >> 56) as u32,
            logical: e & entry::LOGICAL != 0,
            level: true,
            trigger_level: level
                && matches!(mode, DeliveryMode::Fixed | DeliveryMode::LowestPriority),
            shorthand: Shorthand::None,
            x2apic: false,
            source: None,
        };
        log::trace!(target: LOG, "pin {pin}: {msg:?}");
        self.bus.deliver(&msg);
    }

    /// An EOI broadcast for `vector`: clears remote IRR of the level-triggered entries
    /// with that vector and sends again for pins still asserted.
    pub fn eoi(&mut self, vector: u8) {
        for pin in 0..PINS {
            let e = self.redir[pin];
            if e & entry::LEVEL != 0 && e & entry::REMOTE_IRR != 0 && e as u8 == vector {
                self.redir[pin] &= !entry::REMOTE_IRR;
                self.service(pin);
            }
        }
    }

    /// Reads indirect register `index`.
    fn read_indirect(&self, index: u8) -> u32 {
        match index {
            0x00 => u32::from(self.id) << 24,
            0x01 => VERSION,
            0x02 => u32::from(self.id) << 24,
            0x10..=0x3f => {
                let e = self.entry(usize::from((index - 0x10) / 2));
                if index & 1 == 0 {
                    e as u32
                } else {
                    (e >> 32) as u32
                }
            }
            _ => 0,
        }
    }

    /// Writes indirect register `index`.
    fn write_indirect(&mut self, index: u8, v: u32) {
        match index {
            0x00 => self.id = ((v >> 24) & 0xf) as u8,
            0x10..=0x3f => {
                let pin = usize::from((index - 0x10) / 2);
                let old = self.redir[pin];
                let half = if index & 1 == 0 {
                    (old & !0xffff_ffff) | u64::from(v)
                } else {
                    (old & 0xffff_ffff) | (u64::from(v) << 32)
                };
                let mut new = (half & entry::WRITABLE) | (old & entry::REMOTE_IRR);
                if new & entry::LEVEL == 0 {
                    new &= !entry::REMOTE_IRR;
                }
                self.redir[pin] = new;
                log::debug!(target: LOG, "pin {pin}: entry {new:#018x}");
                // A level pin requests exactly while asserted; an edge pin has no
                // request left (edges are sent at once or ignored while masked).
                let bit = 1u32 << pin;
                self.irr = (self.irr & !bit)
                    | if new & entry::LEVEL != 0 {
                        self.asserted & bit
                    } else {
                        0
                    };
                self.service(pin);
            }
            _ => log::debug!(target: LOG, "write of read-only register {index:#x}"),
        }
    }
}

impl BusDevice for Ioapic {
    fn name(&self) -> &str {
        "ioapic"
    }

    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let v = match offset & !3 {
            IOREGSEL => u32::from(self.sel),
            IOWIN => self.read_indirect(self.sel),
            _ => 0,
        };
        let bytes = v.to_le_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            *b = bytes.get((offset & 3) as usize + i).copied().unwrap_or(0);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match offset {
            IOREGSEL => {
                if let Some(&b) = data.first() {
                    self.sel = b;
                }
            }
            IOWIN if data.len() == 4 => {
                let v = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
                self.write_indirect(self.sel, v);
            }
            _ => log::debug!(target: LOG, "ignored {}-byte write at {offset:#x}", data.len()),
        }
    }
}
