//! The High Precision Event Timer (IA-PC HPET specification 1.0a) at
//! [`vireo_core::layout::HPET_START`]: a 64-bit main counter at 100 MHz (period
//! 10 ns, as QEMU's) and three comparators, on the virtual clock.
//!
//! Registers (64-bit, 32- or 64-bit accesses): 0x000 capabilities and ID (period in
//! fs, vendor 8086h, legacy replacement capable, 64-bit counter, 3 timers), 0x010
//! general configuration (ENABLE_CNF, LEG_RT_CNF), 0x020 general interrupt status
//! (write 1 to clear), 0x0F0 main counter, and per timer n at 0x100 + 0x20·n the
//! configuration and capabilities, the comparator, and the FSB route (no FSB
//! delivery: reads 0).
//!
//! Comparators match when the main counter equals them (in 32-bit mode, its low 32
//! bits): a one-shot timer fires once per pass of the counter over the comparator (a
//! 32-bit timer again after each 2^32 ticks, as the specification's "after a wrap
//! around"); a periodic timer adds the last value written (the period) to its
//! comparator at each match (writes with Tn_VAL_SET_CNF set the comparator itself;
//! without it, writes in periodic mode set only the period, as Linux programs it).
//! Late matches coalesce into one interrupt. A level-triggered timer sets its status
//! bit and holds its line while the bit is set (software clears it by writing 1); an
//! edge-triggered timer pulses its line.
//!
//! Interrupt routes: with LEG_RT_CNF, timer 0 drives GSI 0 (PIC IRQ 0 / IOAPIC pin 2)
//! and timer 1 GSI 8 (the RTC's IRQ), and the PIT's and RTC's own lines are cut off
//! ([`LegacyGate`]); otherwise Tn_INT_ROUTE_CNF selects the GSI among those in
//! Tn_INT_ROUTE_CAP, IOAPIC pins 16-23 as QEMU offers (route writes outside the
//! capability are ignored, as the specification allows). The lines are ordinary
//! [`IrqLine`]s, so the same HPET serves the TCG machine's router and KVM's in-kernel
//! irqchip.

use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use vireo_core::clock::{ns_to_ticks, TimerDevice, TimerWaker};
use vireo_core::{BusDevice, IrqChip, IrqLine, VirtualClock};

const LOG: &str = "vireo::dev::hpet";

/// Main-counter frequency.
pub const HPET_HZ: u64 = 100_000_000;
/// Main-counter period in femtoseconds (10 ns).
pub const PERIOD_FS: u32 = 10_000_000;
/// Number of comparators.
pub const NUM_TIMERS: usize = 3;
/// Size of the register block.
pub const MMIO_LEN: u64 = 0x400;
/// Vendor ID in the capabilities register (Intel, as QEMU's).
pub const VENDOR_ID: u32 = 0x8086;
/// GSIs a comparator may be routed to (bit n = GSI n): IOAPIC pins 16-23.
pub const ROUTE_CAP: u32 = 0x00ff_0000;
/// Capabilities register bits 31:0 (also the ACPI HPET table's event timer block
/// ID): revision 1, NUM_TIM_CAP = timers - 1, 64-bit counter, legacy replacement
/// route capable, vendor ID.
pub const BLOCK_ID: u32 =
    1 | ((NUM_TIMERS as u32 - 1) << 8) | (1 << 13) | (1 << 15) | (VENDOR_ID << 16);
/// Shortest interval between two periodic interrupts (a guest cannot make the timer
/// thread spin).
pub const MIN_PERIOD_NS: u64 = 10_000;
/// Nanoseconds per main-counter tick.
const TICK_NS: u64 = 1_000_000_000 / HPET_HZ;
/// Number of GSIs the HPET can drive (its lines, GSI n at index n).
pub const NUM_LINES: usize = 24;

/// Register offsets.
pub mod reg {
    pub const CAPABILITIES: u64 = 0x000;
    pub const CONFIG: u64 = 0x010;
    pub const STATUS: u64 = 0x020;
    pub const COUNTER: u64 = 0x0f0;
    pub const TIMER0: u64 = 0x100;
    pub const TIMER_STRIDE: u64 = 0x20;
    /// Offsets within a timer's block.
    pub const T_CONFIG: u64 = 0x00;
    pub const T_COMPARATOR: u64 = 0x08;
    pub const T_FSB: u64 = 0x10;
}

/// General configuration bits.
pub mod cfg {
    pub const ENABLE: u64 = 1 << 0;
    pub const LEGACY: u64 = 1 << 1;
}

/// Timer configuration and capability bits.
pub mod tn {
    pub const LEVEL: u64 = 1 << 1;
    pub const INT_ENABLE: u64 = 1 << 2;
    pub const PERIODIC: u64 = 1 << 3;
    pub const PERIODIC_CAP: u64 = 1 << 4;
    pub const SIZE_CAP: u64 = 1 << 5;
    pub const VAL_SET: u64 = 1 << 6;
    pub const MODE32: u64 = 1 << 8;
    pub const ROUTE_SHIFT: u32 = 9;
    pub const ROUTE_MASK: u64 = 0x1f << ROUTE_SHIFT;
    /// Bits software may write.
    pub const WRITABLE: u64 = LEVEL | INT_ENABLE | PERIODIC | VAL_SET | MODE32 | ROUTE_MASK;
    /// Read-only capability bits of every timer: periodic and 64-bit capable, the
    /// route capability in bits 63:32.
    pub const CAPS: u64 = PERIODIC_CAP | SIZE_CAP | ((super::ROUTE_CAP as u64) << 32);
}

/// One comparator.
#[derive(Debug, Clone, Copy)]
struct Comparator {
    /// Configuration (writable bits only; the capabilities are added on read).
    config: u64,
    cmp: u64,
    /// The last value written to the comparator in periodic mode.
    period: u64,
    /// Main-counter value of the next match, while the counter runs.
    next: Option<u64>,
}

impl Comparator {
    const RESET: Comparator = Comparator {
        config: 0,
        cmp: u64::MAX,
        period: 0,
        next: None,
    };

    fn mode32(&self) -> bool {
        self.config & tn::MODE32 != 0
    }

    fn width_mask(&self) -> u64 {
        if self.mode32() {
            0xffff_ffff
        } else {
            u64::MAX
        }
    }
}

/// Cuts the PIT's and the RTC's interrupt lines off while the HPET's legacy
/// replacement route owns GSIs 0 and 8. Changes made while the gate is closed are
/// dropped (the PIT only pulses; an RTC level held at the switch resynchronises at
/// its next change).
pub struct LegacyGate {
    inner: Arc<dyn IrqChip>,
    legacy: Arc<AtomicBool>,
}

impl LegacyGate {
    /// A gate in front of `inner`, closed while `legacy` is set.
    pub fn new(inner: Arc<dyn IrqChip>, legacy: Arc<AtomicBool>) -> LegacyGate {
        LegacyGate { inner, legacy }
    }
}

impl IrqChip for LegacyGate {
    fn set_irq(&self, gsi: u32, level: bool) {
        if !self.legacy.load(Ordering::Acquire) {
            self.inner.set_irq(gsi, level);
        }
    }
}

/// The HPET.
pub struct Hpet {
    clock: Arc<VirtualClock>,
    /// GSI n at index n.
    lines: Vec<IrqLine>,
    /// The levels this HPET drives on its lines.
    levels: [bool; NUM_LINES],
    waker: Option<Arc<TimerWaker>>,
    legacy: Arc<AtomicBool>,
    config: u64,
    status: u64,
    /// Main-counter value at clock time `since` (while enabled), or frozen.
    counter: u64,
    since: u64,
    timers: [Comparator; NUM_TIMERS],
}

impl Hpet {
    /// An HPET in its reset state; `lines[n]` is GSI n (up to [`NUM_LINES`]).
    pub fn new(clock: Arc<VirtualClock>, lines: Vec<IrqLine>) -> Hpet {
        Hpet {
            clock,
            lines,
            levels: [false; NUM_LINES],
            waker: None,
            legacy: Arc::new(AtomicBool::new(false)),
            config: 0,
            status: 0,
            counter: 0,
            since: 0,
            timers: [Comparator::RESET; NUM_TIMERS],
        }
    }

    /// Sets the waker kicked when the guest reprograms a comparator.
    pub fn set_waker(&mut self, waker: Arc<TimerWaker>) {
        self.waker = Some(waker);
    }

    /// The flag that is set while the legacy replacement route is on (for
    /// [`LegacyGate`]s in front of the PIT and the RTC).
    pub fn legacy_flag(&self) -> Arc<AtomicBool> {
        self.legacy.clone()
    }

    /// Back to the reset state (machine reset): counter stopped at 0, legacy route off,
    /// lines low.
    pub fn reset(&mut self) {
        self.config = 0;
        self.status = 0;
        self.counter = 0;
        self.timers = [Comparator::RESET; NUM_TIMERS];
        self.legacy.store(false, Ordering::Release);
        self.update_lines();
    }

    fn enabled(&self) -> bool {
        self.config & cfg::ENABLE != 0
    }

    /// The main counter at clock time `now`.
    fn counter_at(&self, now: u64) -> u64 {
        if self.enabled() {
            self.counter
                .wrapping_add(ns_to_ticks(now.saturating_sub(self.since), HPET_HZ))
        } else {
            self.counter
        }
    }

    /// The clock time at which the running counter reaches `tick`.
    fn tick_time(&self, tick: u64) -> u64 {
        let ahead = tick.wrapping_sub(self.counter);
        self.since.saturating_add(ahead.saturating_mul(TICK_NS))
    }

    /// The GSI timer `i` interrupts on.
    fn route(&self, i: usize) -> usize {
        if self.config & cfg::LEGACY != 0 && i < 2 {
            if i == 0 {
                0
            } else {
                8
            }
        } else {
            ((self.timers[i].config & tn::ROUTE_MASK) >> tn::ROUTE_SHIFT) as usize
        }
    }

    /// Drives every line to what the level-triggered timers ask.
    fn update_lines(&mut self) {
        let mut want = [false; NUM_LINES];
        if self.enabled() {
            for i in 0..NUM_TIMERS {
                let c = self.timers[i].config;
                if c & tn::LEVEL != 0 && c & tn::INT_ENABLE != 0 && self.status & (1 << i) != 0 {
                    if let Some(w) = want.get_mut(self.route(i)) {
                        *w = true;
                    }
                }
            }
        }
        for (g, &w) in want.iter().enumerate() {
            if w != self.levels[g] {
                log::trace!(target: LOG, "GSI {g} {}", if w { "high" } else { "low" });
                self.levels[g] = w;
                if let Some(l) = self.lines.get(g) {
                    l.set(w);
                }
            }
        }
    }

    /// Recomputes when comparator `i` next matches the counter (at `now`).
    fn arm(&mut self, i: usize, now: u64) {
        let c = self.counter_at(now);
        let enabled = self.enabled();
        let t = &mut self.timers[i];
        // A comparator that can neither interrupt, set a status bit nor move needs
        // no match time.
        let idle = t.config & (tn::INT_ENABLE | tn::LEVEL | tn::PERIODIC) == 0;
        t.next = if !enabled || idle {
            None
        } else if t.mode32() {
            Some(c.wrapping_add(u64::from((t.cmp as u32).wrapping_sub(c as u32))))
        } else {
            (t.cmp >= c).then_some(t.cmp)
        };
    }

    /// Comparator `i` neither interrupts nor sets a status bit (edge-triggered with
    /// interrupts off), though it may still move (periodic, or a 32-bit wrap): only
    /// a guest reading the comparator sees its matches, so the timer thread is not
    /// woken for them. (Linux leaves its HPET clockevent like this, periodic at HZ,
    /// once the local APIC timer takes over.)
    fn silent(&self, i: usize) -> bool {
        self.timers[i].config & (tn::INT_ENABLE | tn::LEVEL) == 0
    }

    /// Carries out the matches of silent comparators that are due, so that the
    /// comparators read, and the matches armed from them, are up to date.
    fn catch_up(&mut self, now: u64) {
        if !self.enabled() {
            return;
        }
        let c = self.counter_at(now);
        for i in 0..NUM_TIMERS {
            if let Some(m) = self.timers[i].next.filter(|_| self.silent(i)) {
                if self.tick_time(m) <= now {
                    self.matched(i, m, c);
                }
            }
        }
    }

    fn arm_all(&mut self, now: u64) {
        for i in 0..NUM_TIMERS {
            self.arm(i, now);
        }
    }

    fn wake(&self) {
        if let Some(w) = &self.waker {
            w.wake();
        }
    }

    /// Comparator `i` matched at counter value `m`; the counter is now at `c`.
    fn matched(&mut self, i: usize, m: u64, c: u64) {
        let t = &mut self.timers[i];
        let mask = t.width_mask();
        let period = t.period & mask;
        t.next = if t.config & tn::PERIODIC != 0 && period != 0 {
            let mut n = m.wrapping_add(period);
            if n <= c {
                n = n.wrapping_add(((c - n) / period).saturating_add(1).saturating_mul(period));
            }
            t.cmp = n & mask;
            Some(n)
        } else if t.mode32() {
            Some(m.wrapping_add(1 << 32))
        } else {
            None
        };
        let config = t.config;
        log::trace!(target: LOG, "timer {i} fired at {m:#x}");
        if config & tn::LEVEL != 0 {
            self.status |= 1 << i;
            self.update_lines();
        } else if config & tn::INT_ENABLE != 0 {
            let g = self.route(i);
            if let Some(l) = self.lines.get(g) {
                l.pulse();
            }
        }
    }

    /// The 64-bit register at `off` (8-byte aligned).
    fn read_reg(&self, off: u64, now: u64) -> u64 {
        match off {
            reg::CAPABILITIES => u64::from(BLOCK_ID) | (u64::from(PERIOD_FS) << 32),
            reg::CONFIG => self.config,
            reg::STATUS => self.status,
            reg::COUNTER => self.counter_at(now),
            o if (reg::TIMER0..reg::TIMER0 + NUM_TIMERS as u64 * reg::TIMER_STRIDE)
                .contains(&o) =>
            {
                let t = &self.timers[((o - reg::TIMER0) / reg::TIMER_STRIDE) as usize];
                match (o - reg::TIMER0) % reg::TIMER_STRIDE {
                    reg::T_CONFIG => t.config | tn::CAPS,
                    reg::T_COMPARATOR => t.cmp & t.width_mask(),
                    _ => 0,
                }
            }
            _ => 0,
        }
    }

    /// Writes the bytes of `new` selected by `mask` into the register at `off`.
    fn write_reg(&mut self, off: u64, new: u64, mask: u64, now: u64) {
        let merge = |old: u64| (old & !mask) | (new & mask);
        match off {
            reg::CONFIG => {
                let old = self.config;
                let v = merge(old) & (cfg::ENABLE | cfg::LEGACY);
                if old & cfg::ENABLE != 0 && v & cfg::ENABLE == 0 {
                    self.counter = self.counter_at(now);
                } else if old & cfg::ENABLE == 0 && v & cfg::ENABLE != 0 {
                    self.since = now;
                }
                self.config = v;
                if (old ^ v) & cfg::LEGACY != 0 {
                    log::debug!(target: LOG, "legacy replacement route {}",
                        if v & cfg::LEGACY != 0 { "on" } else { "off" });
                    if v & cfg::LEGACY != 0 {
                        // The HPET now owns GSIs 0 and 8: clear what the PIT or RTC
                        // left on them.
                        for g in [0, 8] {
                            if !self.levels[g] {
                                if let Some(l) = self.lines.get(g) {
                                    l.lower();
                                }
                            }
                        }
                    }
                    self.legacy.store(v & cfg::LEGACY != 0, Ordering::Release);
                }
                self.arm_all(now);
                self.update_lines();
            }
            reg::STATUS => {
                self.status &= !(new & mask);
                self.update_lines();
            }
            reg::COUNTER => {
                self.counter = merge(self.counter_at(now));
                self.since = now;
                self.arm_all(now);
            }
            o if (reg::TIMER0..reg::TIMER0 + NUM_TIMERS as u64 * reg::TIMER_STRIDE)
                .contains(&o) =>
            {
                let i = ((o - reg::TIMER0) / reg::TIMER_STRIDE) as usize;
                match (o - reg::TIMER0) % reg::TIMER_STRIDE {
                    reg::T_CONFIG => self.write_timer_config(i, merge(self.timers[i].config)),
                    reg::T_COMPARATOR => {
                        let t = &mut self.timers[i];
                        let wm = t.width_mask();
                        if t.config & tn::PERIODIC == 0 || t.config & tn::VAL_SET != 0 {
                            t.cmp = ((t.cmp & !mask) | (new & mask)) & wm;
                        }
                        if t.config & tn::PERIODIC != 0 {
                            t.period = ((t.period & !mask) | (new & mask)) & wm;
                        }
                        t.config &= !tn::VAL_SET;
                    }
                    _ => {}
                }
                self.arm(i, now);
                self.update_lines();
            }
            _ => {}
        }
        self.wake();
    }

    fn write_timer_config(&mut self, i: usize, v: u64) {
        let t = &mut self.timers[i];
        let mut new = v & tn::WRITABLE;
        let route = (new & tn::ROUTE_MASK) >> tn::ROUTE_SHIFT;
        if ROUTE_CAP & (1 << route) == 0 {
            new = (new & !tn::ROUTE_MASK) | (t.config & tn::ROUTE_MASK);
        }
        if new & tn::MODE32 != 0 {
            t.cmp &= 0xffff_ffff;
            t.period &= 0xffff_ffff;
        }
        t.config = new;
    }
}

/// `data` as a little-endian value placed at byte `shift` of a 64-bit register, and
/// the mask of the bytes it covers.
fn place(data: &[u8], shift: u64) -> (u64, u64) {
    let mut v = 0u64;
    let mut mask = 0u64;
    for (i, &b) in data.iter().enumerate().take(8) {
        let pos = (shift as usize + i) * 8;
        if pos < 64 {
            v |= u64::from(b) << pos;
            mask |= 0xff << pos;
        }
    }
    (v, mask)
}

impl BusDevice for Hpet {
    fn name(&self) -> &str {
        "hpet"
    }

    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let now = self.clock.now_ns();
        self.catch_up(now);
        let v = self.read_reg(offset & !7, now);
        let shift = offset & 7;
        for (i, b) in data.iter_mut().enumerate() {
            let pos = (shift as usize + i) * 8;
            *b = if pos < 64 { (v >> pos) as u8 } else { 0 };
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let now = self.clock.now_ns();
        self.catch_up(now);
        let (v, mask) = place(data, offset & 7);
        self.write_reg(offset & !7, v, mask, now);
    }
}

impl TimerDevice for Hpet {
    /// Fires the comparators whose match time has come.
    fn poll_timer(&mut self, now: u64) -> Option<u64> {
        if !self.enabled() {
            return None;
        }
        let c = self.counter_at(now);
        let mut next: Option<u64> = None;
        for i in 0..NUM_TIMERS {
            let mut fired = false;
            if let Some(m) = self.timers[i].next {
                if self.tick_time(m) <= now {
                    self.matched(i, m, c);
                    fired = true;
                }
            }
            if let Some(m) = self.timers[i].next.filter(|_| !self.silent(i)) {
                let t = &self.timers[i];
                let short = t.config & tn::PERIODIC != 0
                    && (t.period & t.width_mask()).saturating_mul(TICK_NS) < MIN_PERIOD_NS;
                let mut t = self.tick_time(m);
                if t == u64::MAX {
                    continue; // beyond any run (a 64-bit comparator far ahead)
                }
                if fired && short {
                    // A very short period: at most one interrupt per MIN_PERIOD_NS
                    // (the periods in between coalesce).
                    t = t.max(now.saturating_add(MIN_PERIOD_NS));
                }
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        }
        next
    }
}

/// An HPET ready to share between the MMIO bus and the timer thread.
pub fn shared(hpet: Hpet) -> Arc<Mutex<Hpet>> {
    Arc::new(Mutex::new(hpet))
}

#[cfg(test)]
#[path = "hpet_tests.rs"]
mod tests;
