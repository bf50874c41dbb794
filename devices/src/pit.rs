//! Intel 8254 programmable interval timer (ports 0x40-0x43) and system control port B
//! (port 0x61).
//!
//! Counters are not ticked: each channel remembers when its count was loaded and
//! computes its counting element and OUT from the [`VirtualClock`] at 1.193182 MHz.
//! Channel 0's OUT drives IRQ0; [`Pit`] implements [`TimerDevice`] so that the machine
//! timer thread pulses IRQ0 at each rising edge of OUT. Channel 2's gate is port 0x61
//! bit 0 and its OUT is readable in port 0x61 bit 5 (the PC speaker channel, which
//! Linux also uses to calibrate the TSC).
//!
//! Semantics follow the 82C54 datasheet (Intel 231244): control word
//! `SC1 SC0 RW1 RW0 M2 M1 M0 BCD` at 0x43, counter latch (RW = 00), read-back
//! (SC = 11), modes 0-5 with their gate behaviour. Deliberate simplifications: a new
//! count written in modes 2/3 takes effect immediately instead of at the end of the
//! current period (as in QEMU), and mode 3 counts by two for odd counts too.

use parking_lot::Mutex;
use std::sync::Arc;
use vireo_core::clock::{ns_to_ticks, TimerDevice, TimerWaker, NANOS_PER_SEC};
use vireo_core::{Bus, BusDevice, IrqLine, SharedDevice, VirtualClock};

const LOG: &str = "vireo::dev::pit";

/// The PIT's input clock.
pub const PIT_HZ: u64 = 1_193_182;
/// Base port of the counters and the control word register.
pub const PIT_BASE: u64 = 0x40;
/// Number of PIT ports.
pub const PIT_PORTS: u64 = 4;
/// System control port B.
pub const PORT_B: u64 = 0x61;
/// Virtual time between two flips of the DRAM refresh bit (port 0x61 bit 4).
pub const REFRESH_TOGGLE_NS: u64 = 15_085;

const CONTROL_PORT: u64 = 3;
// Control word fields.
const CW_SC_SHIFT: u8 = 6;
const CW_RW_SHIFT: u8 = 4;
const CW_MODE_SHIFT: u8 = 1;
const CW_BCD: u8 = 0x01;
const SC_READ_BACK: u8 = 3;
// Read-back command: bit 5 clear latches counts, bit 4 clear latches status, bits 3:1
// select counters 2:0.
const RB_NO_COUNT: u8 = 0x20;
const RB_NO_STATUS: u8 = 0x10;
// Status byte.
const ST_OUTPUT: u8 = 0x80;
const ST_NULL_COUNT: u8 = 0x40;
// Port 0x61.
const PB_GATE2: u8 = 0x01;
const PB_SPEAKER: u8 = 0x02;
const PB_WRITABLE: u8 = 0x0F;
const PB_REFRESH: u8 = 0x10;
const PB_OUT2: u8 = 0x20;

/// Count range of binary and BCD counters (a written 0 means the maximum).
const BIN_MODULUS: u32 = 0x1_0000;
const BCD_MODULUS: u32 = 10_000;

/// Rounds a tick count up to the first nanosecond at which it has fully elapsed
/// (the exact inverse of [`ns_to_ticks`]).
fn ticks_to_ns_ceil(ticks: u64) -> u64 {
    let ns = (ticks as u128 * NANOS_PER_SEC as u128).div_ceil(PIT_HZ as u128);
    ns.min(u64::MAX as u128) as u64
}

fn bcd_to_bin(v: u16) -> u32 {
    // Invalid digits (A-F) just weigh their binary value; the result stays small.
    (0..4)
        .rev()
        .fold(0, |acc, i| acc * 10 + u32::from((v >> (i * 4)) & 0xF))
}

fn bin_to_bcd(v: u32) -> u16 {
    let v = v % BCD_MODULUS;
    (0..4).fold(0u16, |acc, i| {
        acc | (((v / 10u32.pow(i)) % 10) as u16) << (i * 4)
    })
}

/// Counter read/write access mode (control word RW1:RW0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    Lsb,
    Msb,
    Word,
}

impl Access {
    fn from_bits(rw: u8) -> Access {
        match rw & 3 {
            1 => Access::Lsb,
            2 => Access::Msb,
            _ => Access::Word,
        }
    }
    fn bits(self) -> u8 {
        match self {
            Access::Lsb => 1,
            Access::Msb => 2,
            Access::Word => 3,
        }
    }
}

/// A latched count waiting to be read.
#[derive(Debug, Clone, Copy)]
struct Latched {
    value: u16,
    msb_next: bool,
}

/// One counter of the 8254.
#[derive(Debug, Clone)]
struct Channel {
    /// The count the counting element starts from, 1..=modulus.
    reload: u32,
    /// Mode bits as written (6 and 7 alias 2 and 3); reported by read-back status.
    mode_bits: u8,
    bcd: bool,
    access: Access,
    /// A count has been written since the last control word.
    loaded: bool,
    null_count: bool,
    /// When the counting element started from `reload` (None: not counting).
    start: Option<u64>,
    /// Ticks counted when the gate stopped counting (modes 0 and 4).
    frozen: Option<u64>,
    gate: bool,
    write_lsb: Option<u8>,
    read_msb_next: bool,
    latched: Option<Latched>,
    status_latched: Option<u8>,
    /// Tick (since `start`) of the next rising edge of OUT, for IRQ0.
    next_edge: Option<u64>,
}

impl Channel {
    /// The state QEMU and PC BIOSes leave: mode 3, count 65536, counting since `now`.
    fn new(gate: bool, now: u64) -> Channel {
        let mut c = Channel {
            reload: BIN_MODULUS,
            mode_bits: 3,
            bcd: false,
            access: Access::Word,
            loaded: true,
            null_count: false,
            start: None,
            frozen: None,
            gate,
            write_lsb: None,
            read_msb_next: false,
            latched: None,
            status_latched: None,
            next_edge: None,
        };
        c.start_counting(now);
        c
    }

    fn mode(&self) -> u8 {
        match self.mode_bits & 7 {
            m @ 6..=7 => m - 4,
            m => m,
        }
    }

    fn modulus(&self) -> u32 {
        if self.bcd {
            BCD_MODULUS
        } else {
            BIN_MODULUS
        }
    }

    fn elapsed(&self, now: u64) -> Option<u64> {
        self.frozen.or_else(|| {
            self.start
                .map(|s| ns_to_ticks(now.saturating_sub(s), PIT_HZ))
        })
    }

    /// (Re)starts counting from `reload` at `now`, as far as the gate allows.
    fn start_counting(&mut self, now: u64) {
        let n = u64::from(self.reload);
        let mode = self.mode();
        self.frozen = None;
        self.start = Some(now);
        // OUT rises at the terminal count (modes 0-3) or one clock after it (4, 5).
        self.next_edge = Some(if matches!(mode, 4 | 5) { n + 1 } else { n });
        if !self.gate {
            match mode {
                // Gate low: modes 0/4 do not count, modes 2/3 hold until a rising edge.
                0 | 4 => self.frozen = Some(0),
                2 | 3 => {
                    self.start = None;
                    self.next_edge = None;
                }
                _ => {}
            }
        }
    }

    /// The counting element, in binary (0 stands for the full modulus).
    fn counter(&self, now: u64) -> u32 {
        let m = u64::from(self.modulus());
        let n = u64::from(self.reload);
        let Some(d) = self.elapsed(now).filter(|_| self.loaded) else {
            return (n % m) as u32;
        };
        let v = match self.mode() {
            2 => n - d % n,
            3 => n - d.wrapping_mul(2) % n,
            // Modes 0, 1, 4, 5 count down and wrap past zero.
            _ => (n % m + m - d % m) % m,
        };
        (v % m) as u32
    }

    /// The value presented on reads (BCD-encoded in BCD mode).
    fn read_value(&self, now: u64) -> u16 {
        let c = self.counter(now);
        if self.bcd {
            bin_to_bcd(c)
        } else {
            c as u16
        }
    }

    /// The OUT pin.
    fn out(&self, now: u64) -> bool {
        let mode = self.mode();
        if !self.loaded {
            // After a control word, OUT is low in mode 0 and high otherwise.
            return mode != 0;
        }
        if matches!(mode, 2 | 3) && !self.gate {
            return true;
        }
        let Some(d) = self.elapsed(now) else {
            return true; // modes 1/5 waiting for a trigger
        };
        let n = u64::from(self.reload);
        match mode {
            0 | 1 => d >= n,
            2 => d % n != n - 1,
            3 => d % n < n.div_ceil(2),
            _ => d != n,
        }
    }

    fn write_control(&mut self, val: u8, now: u64) {
        let rw = (val >> CW_RW_SHIFT) & 3;
        if rw == 0 {
            // Counter latch command; a second latch before the read is ignored.
            if self.latched.is_none() {
                self.latched = Some(Latched {
                    value: self.read_value(now),
                    msb_next: self.access == Access::Msb,
                });
            }
            return;
        }
        self.access = Access::from_bits(rw);
        self.mode_bits = (val >> CW_MODE_SHIFT) & 7;
        self.bcd = val & CW_BCD != 0;
        self.loaded = false;
        self.null_count = true;
        self.start = None;
        self.frozen = None;
        self.next_edge = None;
        self.write_lsb = None;
        self.read_msb_next = false;
        self.latched = None;
        self.status_latched = None;
    }

    /// Writes one byte of a count; returns whether a full count was loaded.
    fn write_count(&mut self, val: u8, now: u64) -> bool {
        let raw = match (self.access, self.write_lsb.take()) {
            (Access::Lsb, _) => u16::from(val),
            (Access::Msb, _) => u16::from(val) << 8,
            (Access::Word, None) => {
                self.write_lsb = Some(val);
                return false;
            }
            (Access::Word, Some(lsb)) => u16::from_le_bytes([lsb, val]),
        };
        let n = if self.bcd {
            bcd_to_bin(raw)
        } else {
            u32::from(raw)
        };
        self.reload = if n == 0 { self.modulus() } else { n };
        self.loaded = true;
        self.null_count = false;
        match self.mode() {
            // Hardware-triggered modes wait for a rising gate edge.
            1 | 5 => {
                self.start = None;
                self.frozen = None;
                self.next_edge = None;
            }
            _ => self.start_counting(now),
        }
        true
    }

    fn read(&mut self, now: u64) -> u8 {
        if let Some(s) = self.status_latched.take() {
            return s;
        }
        if let Some(l) = self.latched {
            let [lsb, msb] = l.value.to_le_bytes();
            return match (self.access, l.msb_next) {
                (Access::Word, false) => {
                    self.latched = Some(Latched {
                        msb_next: true,
                        ..l
                    });
                    lsb
                }
                (_, msb_next) => {
                    self.latched = None;
                    if msb_next {
                        msb
                    } else {
                        lsb
                    }
                }
            };
        }
        let [lsb, msb] = self.read_value(now).to_le_bytes();
        match self.access {
            Access::Lsb => lsb,
            Access::Msb => msb,
            Access::Word => {
                self.read_msb_next = !self.read_msb_next;
                if self.read_msb_next {
                    lsb
                } else {
                    msb
                }
            }
        }
    }

    fn status(&self, now: u64) -> u8 {
        let mut s = (self.access.bits() << CW_RW_SHIFT)
            | ((self.mode_bits & 7) << CW_MODE_SHIFT)
            | u8::from(self.bcd);
        if self.out(now) {
            s |= ST_OUTPUT;
        }
        if self.null_count {
            s |= ST_NULL_COUNT;
        }
        s
    }

    fn set_gate(&mut self, gate: bool, now: u64) {
        if gate == self.gate {
            return;
        }
        self.gate = gate;
        if !self.loaded {
            return;
        }
        match self.mode() {
            // Modes 0/4: the gate enables counting.
            0 | 4 => {
                if gate {
                    if let Some(f) = self.frozen.take() {
                        self.start = Some(now.saturating_sub(ticks_to_ns_ceil(f)));
                    }
                } else {
                    self.frozen = self.elapsed(now);
                }
            }
            // Modes 1/5 trigger on a rising edge; 2/3 reload on it and hold while low.
            _ => {
                if gate {
                    self.start_counting(now);
                } else if matches!(self.mode(), 2 | 3) {
                    self.start = None;
                    self.next_edge = None;
                }
            }
        }
    }

    /// The virtual time of the next IRQ edge, if any.
    fn next_edge_time(&self) -> Option<u64> {
        if self.frozen.is_some() {
            return None;
        }
        Some(
            self.start?
                .saturating_add(ticks_to_ns_ceil(self.next_edge?)),
        )
    }

    /// Called once the edge at `next_edge` has been delivered at `now`.
    fn advance_edge(&mut self, now: u64) {
        let n = u64::from(self.reload);
        self.next_edge = match (self.mode(), self.elapsed(now)) {
            // Periodic modes: the first period boundary after `now` (missed periods
            // coalesce into the one edge just delivered).
            (2 | 3, Some(d)) => Some((d / n).saturating_add(1).saturating_mul(n)),
            _ => None,
        };
    }
}

/// The 8254 plus the port 0x61 bits it owns.
pub struct Pit {
    channels: [Channel; 3],
    clock: Arc<VirtualClock>,
    irq0: IrqLine,
    waker: Option<Arc<TimerWaker>>,
    /// Port 0x61 bits 3:0 (gate 2, speaker data, parity/channel check enables).
    port_b: u8,
}

impl Pit {
    /// A PIT in the state a PC BIOS leaves it (all channels mode 3 with count 65536,
    /// channel 2's gate low), OUT0 wired to `irq0`.
    pub fn new(clock: Arc<VirtualClock>, irq0: IrqLine) -> Pit {
        let now = clock.now_ns();
        Pit {
            channels: [
                Channel::new(true, now),
                Channel::new(true, now),
                Channel::new(false, now),
            ],
            clock,
            irq0,
            waker: None,
            port_b: 0,
        }
    }

    /// Sets the waker kicked when the guest reprograms channel 0.
    pub fn set_waker(&mut self, waker: Arc<TimerWaker>) {
        self.waker = Some(waker);
    }

    /// Registers `pit` at 0x40-0x43 and its port B at 0x61.
    pub fn register(pit: &Arc<Mutex<Pit>>, bus: &mut Bus) -> vireo_core::Result<()> {
        bus.insert(PIT_BASE, PIT_PORTS, pit.clone() as SharedDevice)?;
        bus.insert(PORT_B, 1, Arc::new(Mutex::new(PortB(pit.clone()))))
    }

    /// Whether the speaker data bit (port 0x61 bit 1) is set.
    pub fn speaker_enabled(&self) -> bool {
        self.port_b & PB_SPEAKER != 0
    }

    /// Reads port 0x61.
    pub fn read_port_b(&self) -> u8 {
        let now = self.clock.now_ns();
        let mut v = self.port_b & PB_WRITABLE;
        if (now / REFRESH_TOGGLE_NS) & 1 != 0 {
            v |= PB_REFRESH;
        }
        if self.channels[2].out(now) {
            v |= PB_OUT2;
        }
        v
    }

    /// Writes port 0x61 (bit 0 is channel 2's gate).
    pub fn write_port_b(&mut self, val: u8) {
        let now = self.clock.now_ns();
        self.port_b = val & PB_WRITABLE;
        self.channels[2].set_gate(val & PB_GATE2 != 0, now);
    }

    fn write_control(&mut self, val: u8, now: u64) {
        let sc = val >> CW_SC_SHIFT;
        if sc == SC_READ_BACK {
            for (i, c) in self.channels.iter_mut().enumerate() {
                if val & (2 << i) == 0 {
                    continue;
                }
                if val & RB_NO_STATUS == 0 && c.status_latched.is_none() {
                    c.status_latched = Some(c.status(now));
                }
                if val & RB_NO_COUNT == 0 {
                    c.write_control(0, now); // same as a counter latch command
                }
            }
            return;
        }
        let ch = usize::from(sc);
        if let Some(c) = self.channels.get_mut(ch) {
            c.write_control(val, now);
            if val & (3 << CW_RW_SHIFT) != 0 {
                log::debug!(target: LOG, "channel {ch}: control word {val:#04x}");
                if ch == 0 {
                    self.kick();
                }
            }
        }
    }

    fn kick(&self) {
        if let Some(w) = &self.waker {
            w.wake();
        }
    }

    fn read_byte(&mut self, offset: u64) -> u8 {
        let now = self.clock.now_ns();
        match self.channels.get_mut(offset as usize) {
            Some(c) => c.read(now),
            None => 0xFF, // the control word register cannot be read
        }
    }

    fn write_byte(&mut self, offset: u64, val: u8) {
        let now = self.clock.now_ns();
        if offset == CONTROL_PORT {
            self.write_control(val, now);
        } else if let Some(c) = self.channels.get_mut(offset as usize) {
            if c.write_count(val, now) {
                log::trace!(target: LOG, "channel {offset}: count {} mode {}", c.reload, c.mode());
                if offset == 0 {
                    self.kick();
                }
            }
        }
    }
}

impl BusDevice for Pit {
    fn name(&self) -> &str {
        "pit"
    }

    fn read(&mut self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = self.read_byte(offset.wrapping_add(i as u64));
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        for (i, b) in data.iter().enumerate() {
            self.write_byte(offset.wrapping_add(i as u64), *b);
        }
    }
}

impl TimerDevice for Pit {
    /// Pulses IRQ0 at each rising edge of channel 0's OUT that is due.
    fn poll_timer(&mut self, now: u64) -> Option<u64> {
        let c = &mut self.channels[0];
        let due = c.next_edge_time()?;
        if due > now {
            return Some(due);
        }
        self.irq0.pulse();
        c.advance_edge(now);
        c.next_edge_time()
    }
}

/// Port 0x61 on the bus, sharing the [`Pit`]'s state.
pub struct PortB(pub Arc<Mutex<Pit>>);

impl BusDevice for PortB {
    fn name(&self) -> &str {
        "port61"
    }

    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        let v = self.0.lock().read_port_b();
        data.fill(v);
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        if let Some(&v) = data.first() {
            self.0.lock().write_port_b(v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vireo_core::irq::IrqRecorder;

    fn setup() -> (Arc<VirtualClock>, Arc<IrqRecorder>, Pit) {
        let clock = VirtualClock::manual();
        let rec = IrqRecorder::new();
        let pit = Pit::new(clock.clone(), rec.line(0));
        (clock, rec, pit)
    }

    fn out(p: &mut Pit, port: u64, v: u8) {
        p.write(port - PIT_BASE, &[v]);
    }

    fn inb(p: &mut Pit, port: u64) -> u8 {
        let mut b = [0u8];
        p.read(port - PIT_BASE, &mut b);
        b[0]
    }

    fn latch_count(p: &mut Pit, ch: u8) -> u16 {
        out(p, 0x43, ch << 6);
        let lo = inb(p, 0x40 + u64::from(ch));
        let hi = inb(p, 0x40 + u64::from(ch));
        u16::from_le_bytes([lo, hi])
    }

    #[test]
    fn counts_decrease_and_latch_freezes() {
        let (clock, _, mut p) = setup();
        out(&mut p, 0x43, 0x34); // ch0, lo/hi, mode 2
        out(&mut p, 0x40, 0xE8);
        out(&mut p, 0x40, 0x03); // 1000
        assert_eq!(latch_count(&mut p, 0), 1000);
        clock.set(ticks_to_ns_ceil(100));
        assert_eq!(latch_count(&mut p, 0), 900);
        // Mode 2 reloads: 1000 ticks later the count is back at 900.
        clock.set(ticks_to_ns_ceil(1100));
        assert_eq!(latch_count(&mut p, 0), 900);
        // A latched value does not move while the clock does.
        out(&mut p, 0x43, 0x00);
        clock.set(ticks_to_ns_ceil(1500));
        // A second latch before reading is ignored.
        out(&mut p, 0x43, 0x00);
        assert_eq!(inb(&mut p, 0x40), 0x84); // 900 = 0x384
        assert_eq!(inb(&mut p, 0x40), 0x03);
        // Live reads (lsb then msb) see the current count again.
        let lo = inb(&mut p, 0x40);
        let hi = inb(&mut p, 0x40);
        assert_eq!(u16::from_le_bytes([lo, hi]), 500);
    }

    #[test]
    fn lsb_only_and_bcd() {
        let (clock, _, mut p) = setup();
        out(&mut p, 0x43, 0x50); // ch1, lsb only, mode 0
        out(&mut p, 0x41, 50);
        clock.set(ticks_to_ns_ceil(20));
        assert_eq!(inb(&mut p, 0x41), 30);
        // BCD: 0x1000 is one thousand; mode 0 wraps 0000 -> 9999.
        out(&mut p, 0x43, 0x71); // ch1, lo/hi, mode 0, BCD
        out(&mut p, 0x41, 0x00);
        out(&mut p, 0x41, 0x10);
        clock.advance(ticks_to_ns_ceil(1) + 1);
        assert_eq!(latch_count(&mut p, 1), 0x0999);
        clock.advance(ticks_to_ns_ceil(1000));
        assert_eq!(latch_count(&mut p, 1), 0x9999);
    }

    #[test]
    fn mode0_fires_once() {
        let (clock, rec, mut p) = setup();
        out(&mut p, 0x43, 0x30); // ch0, lo/hi, mode 0
        out(&mut p, 0x40, 0xA9);
        out(&mut p, 0x40, 0x04); // 1193 ticks, ~1 ms
        rec.take();
        let due = p.poll_timer(0).unwrap();
        assert_eq!(due, ticks_to_ns_ceil(1193));
        assert!((999_000..1_001_000).contains(&due));
        // OUT low until the terminal count (read-back status bit 7).
        clock.set(due - 1);
        assert_eq!(p.poll_timer(due - 1), Some(due));
        out(&mut p, 0x43, 0xE2); // read back status of ch0
        assert_eq!(inb(&mut p, 0x40) & ST_OUTPUT, 0);
        assert!(rec.take().is_empty());
        clock.set(due);
        assert_eq!(p.poll_timer(due), None);
        assert_eq!(rec.rising_edges(0), 1);
        out(&mut p, 0x43, 0xE2);
        assert_ne!(inb(&mut p, 0x40) & ST_OUTPUT, 0);
        clock.set(10 * due);
        assert_eq!(p.poll_timer(10 * due), None);
        assert_eq!(rec.rising_edges(0), 1);
    }

    #[test]
    fn mode2_is_periodic() {
        let (clock, rec, mut p) = setup();
        let waker = TimerWaker::new();
        p.set_waker(waker.clone());
        out(&mut p, 0x43, 0x34);
        out(&mut p, 0x40, 0x9C);
        out(&mut p, 0x40, 0x2E); // 11932: Linux's LATCH for HZ=100
        assert!(
            waker.wait(Some(std::time::Duration::ZERO)),
            "reprogramming kicks"
        );
        rec.take();
        let mut due = p.poll_timer(0).unwrap();
        let mut last = 0;
        while due <= NANOS_PER_SEC + 10_000_000 {
            clock.set(due);
            let next = p.poll_timer(due).unwrap();
            let period = next - due;
            assert!((9_999_000..10_001_000).contains(&period), "{period}");
            last = due;
            due = next;
        }
        assert_eq!(rec.rising_edges(0), 100);
        assert!(last > 990_000_000);
        // A late poll delivers one edge and resynchronizes on the period grid.
        clock.set(due + 35_000_000);
        let next = p.poll_timer(due + 35_000_000).unwrap();
        assert_eq!(rec.rising_edges(0), 101);
        assert!(next > due + 35_000_000 && next - due <= 40_001_000);
    }

    #[test]
    fn read_back_command() {
        let (clock, _, mut p) = setup();
        out(&mut p, 0x43, 0xB6); // ch2, lo/hi, mode 3, binary
                                 // After the control word: null count set.
        out(&mut p, 0x43, 0xE8); // read back status of ch2
        assert_eq!(inb(&mut p, 0x42), 0x80 | ST_NULL_COUNT | 0x36);
        out(&mut p, 0x42, 0x00);
        out(&mut p, 0x42, 0x10); // 4096
        p.write_port_b(PB_GATE2);
        clock.advance(ticks_to_ns_ceil(10));
        // Latch count and status together: status first, then the count.
        out(&mut p, 0x43, 0xC8);
        assert_eq!(inb(&mut p, 0x42), 0x80 | 0x36);
        let lo = inb(&mut p, 0x42);
        let hi = inb(&mut p, 0x42);
        // Mode 3 counts down by two.
        assert_eq!(u16::from_le_bytes([lo, hi]), 4096 - 20);
    }

    #[test]
    fn linux_calibration_on_channel2() {
        let (clock, _, mut p) = setup();
        // pit_calibrate_tsc(): gate high, speaker off, mode 0, count 0xFFFF... here 5966.
        let pb = p.read_port_b();
        p.write_port_b((pb & !PB_SPEAKER) | PB_GATE2);
        out(&mut p, 0x43, 0xB0);
        out(&mut p, 0x42, 0x4E);
        out(&mut p, 0x42, 0x17); // 0x174E = 5966 ticks, 5 ms
        assert_eq!(p.read_port_b() & PB_OUT2, 0);
        clock.set(ticks_to_ns_ceil(5965));
        assert_eq!(p.read_port_b() & PB_OUT2, 0);
        clock.set(ticks_to_ns_ceil(5966));
        assert_ne!(p.read_port_b() & PB_OUT2, 0);
        // Gate low in mode 0 stops counting.
        out(&mut p, 0x43, 0xB0);
        out(&mut p, 0x42, 0x00);
        out(&mut p, 0x42, 0x01); // 256
        let t = clock.now_ns();
        clock.set(t + ticks_to_ns_ceil(100));
        p.write_port_b(0);
        assert_eq!(p.read_port_b() & PB_GATE2, 0);
        clock.advance(ticks_to_ns_ceil(1000));
        assert_eq!(latch_count(&mut p, 2), 156);
        assert_eq!(p.read_port_b() & PB_OUT2, 0);
        p.write_port_b(PB_GATE2 | PB_SPEAKER);
        assert!(p.speaker_enabled());
        clock.advance(ticks_to_ns_ceil(156));
        assert_ne!(p.read_port_b() & PB_OUT2, 0);
    }

    #[test]
    fn gate_triggers_mode1() {
        let (clock, _, mut p) = setup();
        out(&mut p, 0x43, 0xB2); // ch2, lo/hi, mode 1
        out(&mut p, 0x42, 100);
        out(&mut p, 0x42, 0);
        assert_ne!(p.read_port_b() & PB_OUT2, 0, "OUT high until triggered");
        p.write_port_b(PB_GATE2);
        assert_eq!(p.read_port_b() & PB_OUT2, 0, "one-shot pulse starts");
        clock.advance(ticks_to_ns_ceil(100));
        assert_ne!(p.read_port_b() & PB_OUT2, 0);
    }

    #[test]
    fn refresh_bit_toggles() {
        let (clock, _, p) = setup();
        let a = p.read_port_b() & PB_REFRESH;
        clock.advance(REFRESH_TOGGLE_NS);
        let b = p.read_port_b() & PB_REFRESH;
        clock.advance(REFRESH_TOGGLE_NS);
        assert_ne!(a, b);
        assert_eq!(p.read_port_b() & PB_REFRESH, a);
    }

    #[test]
    fn registers_on_bus_and_survives_odd_writes() {
        let clock = VirtualClock::manual();
        let rec = IrqRecorder::new();
        let pit = Arc::new(Mutex::new(Pit::new(clock, rec.line(0))));
        let mut bus = Bus::new("pio");
        Pit::register(&pit, &mut bus).unwrap();
        assert!(bus.contains(0x43) && bus.contains(0x61) && !bus.contains(0x60));
        // Every control word and count, including illegal ones, is harmless.
        for cw in 0..=255u8 {
            bus.write(0x43, &[cw]);
            bus.write(0x40 + u64::from(cw & 3), &[0x00, 0xFF]);
            bus.write(0x40 + u64::from(cw & 3), &[0xFF]);
            let mut b = [0u8; 4];
            bus.read(0x40, &mut b);
            pit.lock().poll_timer(u64::from(cw) * 1_000_000);
        }
        bus.write(0x61, &[0xFF]);
        let mut b = [0u8];
        bus.read(0x61, &mut b);
        assert_eq!(b[0] & 0x0F, 0x0F);
    }
}
