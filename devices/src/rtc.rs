//! Motorola MC146818 real-time clock with 128 bytes of CMOS RAM (ports 0x70/0x71).
//!
//! Port 0x70 selects a register (bits 6:0) and holds the NMI mask (bit 7, 1 = NMIs
//! disabled); port 0x71 reads and writes the selected register.
//!
//! The time of day is not ticked: it is `base` (Unix seconds, the host's wall time at
//! machine creation) plus the [`VirtualClock`]'s elapsed seconds, and is encoded into
//! the time registers (BCD or binary, 12- or 24-hour, per register B) when they are
//! read. While the clock is stopped (register B SET, or the divider held in reset by
//! register A) the time registers are plain RAM that the guest rewrites; restarting
//! the clock takes them as the new base.
//!
//! Interrupts (periodic, alarm, update-ended) are flags in register C that are
//! caught up lazily from the virtual clock on every access and in
//! [`TimerDevice::poll_timer`]; IRQ8 is raised when an enabled flag is set and lowered
//! when register C is read, as on the MC146818 (datasheet: "IRQF ... reading
//! register C clears all flags"). Daylight-saving adjustment (DSE) is stored but not
//! applied.

use std::sync::Arc;
use vireo_core::clock::{ns_to_ticks, TimerDevice, TimerWaker, NANOS_PER_SEC};
use vireo_core::{BusDevice, IrqLine, VirtualClock};

const LOG: &str = "vireo::dev::rtc";

/// Index/NMI port and data port.
pub const RTC_BASE: u64 = 0x70;
/// Number of RTC ports.
pub const RTC_PORTS: u64 = 2;
/// Size of the CMOS RAM, clock registers included.
pub const CMOS_SIZE: usize = 128;
/// The MC146818's time base.
const RTC_HZ: u64 = 32_768;

// Register indices.
pub const REG_SECONDS: u8 = 0x00;
pub const REG_SECONDS_ALARM: u8 = 0x01;
pub const REG_MINUTES: u8 = 0x02;
pub const REG_MINUTES_ALARM: u8 = 0x03;
pub const REG_HOURS: u8 = 0x04;
pub const REG_HOURS_ALARM: u8 = 0x05;
pub const REG_DAY_OF_WEEK: u8 = 0x06;
pub const REG_DAY_OF_MONTH: u8 = 0x07;
pub const REG_MONTH: u8 = 0x08;
pub const REG_YEAR: u8 = 0x09;
pub const REG_A: u8 = 0x0A;
pub const REG_B: u8 = 0x0B;
pub const REG_C: u8 = 0x0C;
pub const REG_D: u8 = 0x0D;
/// IBM PC/AT equipment byte.
pub const REG_EQUIPMENT: u8 = 0x14;
/// Checksum of 0x10..=0x2D, high byte first.
pub const REG_CHECKSUM_HI: u8 = 0x2E;
pub const REG_CHECKSUM_LO: u8 = 0x2F;
/// Century (ACPI FADT `century` points here).
pub const REG_CENTURY: u8 = 0x32;

/// The registers that hold the time of day.
const TIME_REGS: [u8; 8] = [
    REG_SECONDS,
    REG_MINUTES,
    REG_HOURS,
    REG_DAY_OF_WEEK,
    REG_DAY_OF_MONTH,
    REG_MONTH,
    REG_YEAR,
    REG_CENTURY,
];

// Register A.
const A_UIP: u8 = 0x80;
const A_DV_MASK: u8 = 0x70;
/// Divider values above this (11x) hold the divider chain in reset.
const A_DV_32K: u8 = 0x20;
const A_RS_MASK: u8 = 0x0F;
/// Power-on value as firmware leaves it: 32.768 kHz time base, 1024 Hz periodic rate.
const A_DEFAULT: u8 = 0x26;
// Register B.
const B_SET: u8 = 0x80;
const B_PIE: u8 = 0x40;
const B_AIE: u8 = 0x20;
const B_UIE: u8 = 0x10;
const B_DM_BINARY: u8 = 0x04;
const B_24H: u8 = 0x02;
const B_DEFAULT: u8 = B_24H;
// Register C.
const C_IRQF: u8 = 0x80;
const C_PF: u8 = 0x40;
const C_AF: u8 = 0x20;
const C_UF: u8 = 0x10;
// Register D: valid RAM and time.
const D_VRT: u8 = 0x80;

/// Port 0x70 bit 7: NMI disabled.
const NMI_DISABLE: u8 = 0x80;
const INDEX_MASK: u8 = 0x7F;
/// Hours register bit 7 in 12-hour mode.
const HOUR_PM: u8 = 0x80;
/// Alarm register values with both top bits set match any value.
const ALARM_DONT_CARE: u8 = 0xC0;
/// The update cycle: UIP is set this long before the registers change (tBUC).
const UIP_WINDOW_NS: u64 = 244_000;
const SECS_PER_DAY: i64 = 86_400;

// CMOS memory-size bytes as SeaBIOS reads them (QEMU's pc_cmos_init).
const CMOS_BASE_MEM: u8 = 0x15;
const CMOS_EXT_MEM: u8 = 0x17;
const CMOS_EXT_MEM2: u8 = 0x30;
const CMOS_MEM_ABOVE_16M: u8 = 0x34;
const CMOS_MEM_ABOVE_4G: u8 = 0x5B;
const CHECKSUM_RANGE: std::ops::RangeInclusive<usize> = 0x10..=0x2D;
/// Equipment: math coprocessor and PS/2 mouse present, VGA, no floppy (as QEMU).
const EQUIPMENT_DEFAULT: u8 = 0x06;
const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

fn to_bcd(v: u8) -> u8 {
    ((v / 10) << 4) | (v % 10)
}

fn from_bcd(v: u8) -> u8 {
    // Invalid digits just weigh their binary value (at most 165).
    (v >> 4) * 10 + (v & 0xF)
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (H. Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u8, u8) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// (year, month 1-12, day) to days since 1970-01-01.
fn days_from_civil(year: i64, month: u8, day: u8) -> i64 {
    let year = year - i64::from(month <= 2);
    let era = year.div_euclid(400);
    let yoe = year.rem_euclid(400);
    let mp = (i64::from(month) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// First nanosecond at which `ticks` of the 32.768 kHz time base have elapsed.
fn rtc_ticks_to_ns_ceil(ticks: u64) -> u64 {
    let ns = (ticks as u128 * NANOS_PER_SEC as u128).div_ceil(RTC_HZ as u128);
    ns.min(u64::MAX as u128) as u64
}

/// The MC146818 and its CMOS RAM.
pub struct Rtc {
    cmos: [u8; CMOS_SIZE],
    index: u8,
    nmi_disabled: bool,
    clock: Arc<VirtualClock>,
    irq8: IrqLine,
    irq_level: bool,
    waker: Option<Arc<TimerWaker>>,
    /// Unix time at virtual instant `base_ns` (an exact second boundary).
    base_secs: i64,
    base_ns: u64,
    /// The last second whose update cycle has been accounted for (UF/AF).
    last_update: i64,
    /// The last periodic-interrupt period accounted for (PF), on the 32 kHz grid.
    last_periodic: u64,
}

impl Rtc {
    /// An RTC whose time is `base_unix_secs` now and runs with `clock`; `irq8` is
    /// its interrupt line.
    pub fn new(clock: Arc<VirtualClock>, irq8: IrqLine, base_unix_secs: i64) -> Rtc {
        let now = clock.now_ns();
        let mut cmos = [0u8; CMOS_SIZE];
        cmos[usize::from(REG_A)] = A_DEFAULT;
        cmos[usize::from(REG_B)] = B_DEFAULT;
        cmos[usize::from(REG_D)] = D_VRT;
        cmos[usize::from(REG_EQUIPMENT)] = EQUIPMENT_DEFAULT;
        let mut rtc = Rtc {
            cmos,
            index: 0,
            nmi_disabled: false,
            clock,
            irq8,
            irq_level: false,
            waker: None,
            base_secs: base_unix_secs,
            base_ns: now,
            last_update: base_unix_secs,
            last_periodic: 0,
        };
        rtc.restart_periodic(now);
        rtc.update_checksum();
        rtc
    }

    /// Sets the waker kicked when the guest changes interrupt settings.
    pub fn set_waker(&mut self, waker: Arc<TimerWaker>) {
        self.waker = Some(waker);
    }

    /// Whether the guest masked NMIs through port 0x70 bit 7.
    pub fn nmi_disabled(&self) -> bool {
        self.nmi_disabled
    }

    fn reg(&self, idx: u8) -> u8 {
        self.cmos[usize::from(idx & INDEX_MASK)]
    }

    fn set_reg(&mut self, idx: u8, val: u8) {
        self.cmos[usize::from(idx & INDEX_MASK)] = val;
    }

    /// A CMOS byte as the guest would read it (time registers are refreshed).
    pub fn read_cmos(&mut self, idx: u8) -> u8 {
        let now = self.clock.now_ns();
        self.read_reg(idx & INDEX_MASK, now)
    }

    /// Stores a raw CMOS RAM byte (firmware configuration, not the clock registers).
    pub fn set_cmos(&mut self, idx: u8, val: u8) {
        self.set_reg(idx, val);
    }

    /// Stores the RAM size where SeaBIOS/QEMU-compatible firmware looks for it and
    /// refreshes the checksum. `low_ram_end` is the end of RAM below 4 GiB, `high_ram`
    /// the amount of RAM above 4 GiB, both in bytes.
    pub fn set_memory(&mut self, low_ram_end: u64, high_ram: u64) {
        let set16 = |rtc: &mut Rtc, idx: u8, v: u64| {
            let [lo, hi, ..] = v.min(0xFFFF).to_le_bytes();
            rtc.set_reg(idx, lo);
            rtc.set_reg(idx + 1, hi);
        };
        // Base memory in KiB (at most 640).
        set16(self, CMOS_BASE_MEM, (low_ram_end / KIB).min(640));
        // Extended memory above 1 MiB in KiB, capped at 0xFFFF (64 MiB).
        let ext = low_ram_end.saturating_sub(MIB) / KIB;
        set16(self, CMOS_EXT_MEM, ext);
        set16(self, CMOS_EXT_MEM2, ext);
        // Memory between 16 MiB and 4 GiB in 64 KiB units.
        set16(
            self,
            CMOS_MEM_ABOVE_16M,
            low_ram_end.saturating_sub(16 * MIB) / (64 * KIB),
        );
        // Memory above 4 GiB in 64 KiB units, 24 bits.
        let high = (high_ram / (64 * KIB)).min(0xFF_FFFF).to_le_bytes();
        for (i, b) in high.iter().take(3).enumerate() {
            self.set_reg(CMOS_MEM_ABOVE_4G + i as u8, *b);
        }
        self.set_reg(REG_EQUIPMENT, EQUIPMENT_DEFAULT);
        self.update_checksum();
    }

    /// Recomputes the standard checksum (0x2E/0x2F = sum of 0x10..=0x2D, big endian).
    pub fn update_checksum(&mut self) {
        let sum: u16 = self.cmos[CHECKSUM_RANGE]
            .iter()
            .fold(0u16, |s, &b| s.wrapping_add(u16::from(b)));
        let [hi, lo] = sum.to_be_bytes();
        self.set_reg(REG_CHECKSUM_HI, hi);
        self.set_reg(REG_CHECKSUM_LO, lo);
    }

    fn binary(&self) -> bool {
        self.reg(REG_B) & B_DM_BINARY != 0
    }

    /// The clock does not advance: SET, or the divider chain held in reset.
    fn stopped(&self) -> bool {
        self.reg(REG_B) & B_SET != 0 || self.reg(REG_A) & A_DV_MASK > A_DV_32K
    }

    fn encode(&self, v: u8) -> u8 {
        if self.binary() {
            v
        } else {
            to_bcd(v)
        }
    }

    fn decode(&self, v: u8) -> u8 {
        if self.binary() {
            v
        } else {
            from_bcd(v)
        }
    }

    fn encode_hour(&self, h: u8) -> u8 {
        if self.reg(REG_B) & B_24H != 0 {
            return self.encode(h);
        }
        let h12 = match h % 12 {
            0 => 12,
            x => x,
        };
        self.encode(h12) | if h >= 12 { HOUR_PM } else { 0 }
    }

    fn decode_hour(&self, v: u8) -> u8 {
        if self.reg(REG_B) & B_24H != 0 {
            return self.decode(v) % 24;
        }
        let h = self.decode(v & !HOUR_PM) % 12;
        if v & HOUR_PM != 0 {
            h + 12
        } else {
            h
        }
    }

    /// Unix seconds at virtual time `now` while the clock runs.
    fn running_secs(&self, now: u64) -> i64 {
        let elapsed = now.saturating_sub(self.base_ns) / NANOS_PER_SEC;
        self.base_secs.saturating_add(elapsed as i64)
    }

    /// Encodes the current time into the time registers.
    fn sync_time_regs(&mut self, now: u64) {
        let t = self.running_secs(now);
        let days = t.div_euclid(SECS_PER_DAY);
        let sod = t.rem_euclid(SECS_PER_DAY);
        let (year, month, day) = civil_from_days(days);
        // 1970-01-01 was a Thursday; the register counts Sunday = 1.
        let dow = (days + 4).rem_euclid(7) as u8 + 1;
        let regs = [
            (REG_SECONDS, self.encode((sod % 60) as u8)),
            (REG_MINUTES, self.encode((sod / 60 % 60) as u8)),
            (REG_HOURS, self.encode_hour((sod / 3600) as u8)),
            (REG_DAY_OF_WEEK, self.encode(dow)),
            (REG_DAY_OF_MONTH, self.encode(day)),
            (REG_MONTH, self.encode(month)),
            (REG_YEAR, self.encode(year.rem_euclid(100) as u8)),
            (
                REG_CENTURY,
                self.encode(year.div_euclid(100).clamp(0, 99) as u8),
            ),
        ];
        for (r, v) in regs {
            self.set_reg(r, v);
        }
    }

    /// The time the time registers hold, as Unix seconds.
    fn time_from_regs(&self) -> i64 {
        let d = |r| i64::from(self.decode(self.reg(r)));
        let year = d(REG_CENTURY) * 100 + d(REG_YEAR);
        let month = self.decode(self.reg(REG_MONTH)).clamp(1, 12);
        let day = self.decode(self.reg(REG_DAY_OF_MONTH)).clamp(1, 31);
        let days = days_from_civil(year, month, day);
        days * SECS_PER_DAY
            + i64::from(self.decode_hour(self.reg(REG_HOURS))) * 3600
            + d(REG_MINUTES) * 60
            + d(REG_SECONDS)
    }

    /// Makes the time registers the new base; the next update is a second after
    /// `phase_start`.
    fn rebase(&mut self, phase_start: u64) {
        self.base_secs = self.time_from_regs();
        self.base_ns = phase_start;
        self.last_update = self.base_secs;
        log::debug!(target: LOG, "time set to {} (Unix)", self.base_secs);
    }

    /// The periodic interrupt period in 32 kHz ticks, if the periodic timer runs.
    fn periodic_ticks(&self) -> Option<u64> {
        let rs = self.reg(REG_A) & A_RS_MASK;
        if rs == 0 || self.reg(REG_A) & A_DV_MASK > A_DV_32K {
            return None;
        }
        // RS 1 and 2 repeat rates 8 and 9 (256 Hz, 128 Hz); RS n >= 3 is 65536 >> n Hz.
        let rs = if rs <= 2 { rs + 7 } else { rs };
        Some(1 << (rs - 1))
    }

    fn restart_periodic(&mut self, now: u64) {
        if let Some(p) = self.periodic_ticks() {
            self.last_periodic = ns_to_ticks(now, RTC_HZ) / p;
        }
    }

    fn alarm_matches(&self, t: i64) -> bool {
        let sod = t.rem_euclid(SECS_PER_DAY);
        [
            (REG_SECONDS_ALARM, self.encode((sod % 60) as u8)),
            (REG_MINUTES_ALARM, self.encode((sod / 60 % 60) as u8)),
            (REG_HOURS_ALARM, self.encode_hour((sod / 3600) as u8)),
        ]
        .iter()
        .all(|&(r, v)| {
            let a = self.reg(r);
            a & ALARM_DONT_CARE == ALARM_DONT_CARE || a == v
        })
    }

    /// Sets the register C flags of everything that became due up to `now` and
    /// drives IRQ8.
    fn catch_up(&mut self, now: u64) {
        let mut flags = 0;
        if !self.stopped() {
            let cur = self.running_secs(now);
            if cur > self.last_update {
                flags |= C_UF;
                // At most a day of missed updates can hold a distinct alarm match.
                let first = self
                    .last_update
                    .saturating_add(1)
                    .max(cur.saturating_sub(SECS_PER_DAY - 1));
                if (first..=cur).any(|t| self.alarm_matches(t)) {
                    flags |= C_AF;
                }
                self.last_update = cur;
            }
        }
        if let Some(p) = self.periodic_ticks() {
            let idx = ns_to_ticks(now, RTC_HZ) / p;
            if idx > self.last_periodic {
                flags |= C_PF;
                self.last_periodic = idx;
            }
        }
        let c = self.reg(REG_C) | flags;
        let b = self.reg(REG_B);
        let enabled = (c & C_PF != 0 && b & B_PIE != 0)
            || (c & C_AF != 0 && b & B_AIE != 0)
            || (c & C_UF != 0 && b & B_UIE != 0);
        if enabled {
            self.set_reg(REG_C, c | C_IRQF);
            if !self.irq_level {
                self.irq_level = true;
                self.irq8.raise();
            }
        } else {
            self.set_reg(REG_C, c);
        }
    }

    /// Update in progress: within [`UIP_WINDOW_NS`] before the next second.
    fn uip(&self, now: u64) -> bool {
        let phase = now.saturating_sub(self.base_ns) % NANOS_PER_SEC;
        !self.stopped() && phase >= NANOS_PER_SEC - UIP_WINDOW_NS
    }

    fn read_reg(&mut self, idx: u8, now: u64) -> u8 {
        self.catch_up(now);
        match idx {
            _ if TIME_REGS.contains(&idx) && !self.stopped() => {
                self.sync_time_regs(now);
                self.reg(idx)
            }
            REG_A => (self.reg(REG_A) & !A_UIP) | if self.uip(now) { A_UIP } else { 0 },
            REG_C => {
                let c = self.reg(REG_C);
                self.set_reg(REG_C, 0);
                if self.irq_level {
                    self.irq_level = false;
                    self.irq8.lower();
                }
                c
            }
            REG_D => D_VRT,
            _ => self.reg(idx),
        }
    }

    fn write_reg(&mut self, idx: u8, val: u8, now: u64) {
        self.catch_up(now);
        match idx {
            REG_A | REG_B => {
                let was_stopped = self.stopped();
                let val = match idx {
                    REG_A => val & !A_UIP,
                    // Setting SET clears UIE (datasheet, register B bit 7).
                    _ if val & B_SET != 0 => val & !B_UIE,
                    _ => val,
                };
                let old_a = self.reg(REG_A);
                if !was_stopped {
                    // Freeze the time in the registers in the old data mode.
                    self.sync_time_regs(now);
                }
                self.set_reg(idx, val);
                if was_stopped && !self.stopped() {
                    self.rebase(now);
                }
                if idx == REG_A && old_a != val {
                    self.restart_periodic(now);
                }
                log::debug!(target: LOG, "register {} = {val:#04x}",
                    if idx == REG_A { 'A' } else { 'B' });
                self.catch_up(now);
                if let Some(w) = &self.waker {
                    w.wake();
                }
            }
            REG_C | REG_D => {}
            _ if TIME_REGS.contains(&idx) && !self.stopped() => {
                self.sync_time_regs(now);
                self.set_reg(idx, val);
                // Keep the sub-second phase of the divider chain.
                let phase = now.saturating_sub(self.base_ns) % NANOS_PER_SEC;
                self.rebase(now - phase);
            }
            _ => self.set_reg(idx, val),
        }
    }
}

impl BusDevice for Rtc {
    fn name(&self) -> &str {
        "rtc"
    }

    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let now = self.clock.now_ns();
        for (i, b) in data.iter_mut().enumerate() {
            *b = match offset.wrapping_add(i as u64) {
                // The index register is write-only.
                0 => 0xFF,
                _ => self.read_reg(self.index, now),
            };
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let now = self.clock.now_ns();
        for (i, &v) in data.iter().enumerate() {
            match offset.wrapping_add(i as u64) {
                0 => {
                    self.index = v & INDEX_MASK;
                    self.nmi_disabled = v & NMI_DISABLE != 0;
                }
                _ => self.write_reg(self.index, v, now),
            }
        }
    }
}

impl TimerDevice for Rtc {
    /// Raises IRQ8 for due interrupts and returns the next time one can become due.
    fn poll_timer(&mut self, now: u64) -> Option<u64> {
        self.catch_up(now);
        let b = self.reg(REG_B);
        let mut next: Option<u64> = None;
        if b & B_PIE != 0 {
            if let Some(p) = self.periodic_ticks() {
                let t = rtc_ticks_to_ns_ceil((self.last_periodic + 1).saturating_mul(p));
                next = Some(t);
            }
        }
        if b & (B_AIE | B_UIE) != 0 && !self.stopped() {
            let since = now.saturating_sub(self.base_ns) / NANOS_PER_SEC;
            let t = self
                .base_ns
                .saturating_add((since + 1).saturating_mul(NANOS_PER_SEC));
            next = Some(next.map_or(t, |n| n.min(t)));
        }
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vireo_core::irq::IrqRecorder;

    /// 2024-02-29 23:59:58 UTC, a Thursday.
    const LEAP_EVE: i64 = 1_709_251_198;

    fn setup(base: i64) -> (Arc<VirtualClock>, Arc<IrqRecorder>, Rtc) {
        let clock = VirtualClock::manual();
        let rec = IrqRecorder::new();
        let rtc = Rtc::new(clock.clone(), rec.line(8), base);
        (clock, rec, rtc)
    }

    fn rd(r: &mut Rtc, idx: u8) -> u8 {
        r.write(0, &[idx]);
        let mut b = [0u8];
        r.read(1, &mut b);
        b[0]
    }

    fn wr(r: &mut Rtc, idx: u8, v: u8) {
        r.write(0, &[idx]);
        r.write(1, &[v]);
    }

    fn date(r: &mut Rtc) -> [u8; 8] {
        TIME_REGS.map(|i| rd(r, i))
    }

    #[test]
    fn bcd_date_and_rollover() {
        let (clock, _, mut r) = setup(LEAP_EVE);
        // sec, min, hour, dow, day, month, year, century
        assert_eq!(date(&mut r), [0x58, 0x59, 0x23, 5, 0x29, 0x02, 0x24, 0x20]);
        clock.advance(2 * NANOS_PER_SEC);
        assert_eq!(date(&mut r), [0x00, 0x00, 0x00, 6, 0x01, 0x03, 0x24, 0x20]);
        assert_eq!(rd(&mut r, REG_D), D_VRT);
        // The Unix epoch and a date before it.
        let (_, _, mut e) = setup(0);
        assert_eq!(date(&mut e), [0, 0, 0, 5, 0x01, 0x01, 0x70, 0x19]);
        let (_, _, mut e) = setup(-1);
        assert_eq!(date(&mut e), [0x59, 0x59, 0x23, 4, 0x31, 0x12, 0x69, 0x19]);
    }

    #[test]
    fn binary_and_12_hour_modes() {
        let (clock, _, mut r) = setup(LEAP_EVE);
        wr(&mut r, REG_B, B_24H | B_DM_BINARY);
        assert_eq!(date(&mut r), [58, 59, 23, 5, 29, 2, 24, 20]);
        // 12-hour BCD: 23:59 is 11 PM.
        wr(&mut r, REG_B, 0);
        assert_eq!(rd(&mut r, REG_HOURS), HOUR_PM | 0x11);
        // Midnight is 12 AM, noon is 12 PM.
        clock.advance(2 * NANOS_PER_SEC);
        assert_eq!(rd(&mut r, REG_HOURS), 0x12);
        clock.advance(12 * 3600 * NANOS_PER_SEC);
        assert_eq!(rd(&mut r, REG_HOURS), HOUR_PM | 0x12);
        // 12-hour binary.
        wr(&mut r, REG_B, B_DM_BINARY);
        assert_eq!(rd(&mut r, REG_HOURS), HOUR_PM | 12);
    }

    #[test]
    fn set_bit_changes_the_base() {
        let (clock, _, mut r) = setup(LEAP_EVE);
        wr(&mut r, REG_B, B_SET | B_24H | B_UIE);
        assert_eq!(rd(&mut r, REG_B), B_SET | B_24H, "SET clears UIE");
        // Frozen while SET: the registers hold what was written.
        for (i, v) in [(REG_SECONDS, 0x30), (REG_MINUTES, 0x15), (REG_HOURS, 0x08)] {
            wr(&mut r, i, v);
        }
        for (i, v) in [
            (REG_DAY_OF_MONTH, 0x04),
            (REG_MONTH, 0x07),
            (REG_YEAR, 0x99),
        ] {
            wr(&mut r, i, v);
        }
        wr(&mut r, REG_CENTURY, 0x19);
        clock.advance(5 * NANOS_PER_SEC);
        assert_eq!(rd(&mut r, REG_SECONDS), 0x30);
        assert_eq!(rd(&mut r, REG_A) & A_UIP, 0, "no update while SET");
        wr(&mut r, REG_B, B_24H);
        clock.advance(NANOS_PER_SEC);
        // 1999-07-04 08:15:31, a Sunday.
        assert_eq!(date(&mut r), [0x31, 0x15, 0x08, 1, 0x04, 0x07, 0x99, 0x19]);
        // Writing a time register while running also sets the time.
        wr(&mut r, REG_YEAR, 0x00);
        wr(&mut r, REG_CENTURY, 0x20);
        assert_eq!(rd(&mut r, REG_YEAR), 0x00);
        assert_eq!(rd(&mut r, REG_SECONDS), 0x31);
        // Garbage in the registers is harmless.
        wr(&mut r, REG_B, B_SET);
        for i in TIME_REGS {
            wr(&mut r, i, 0xFF);
        }
        wr(&mut r, REG_B, 0);
        let _ = date(&mut r);
    }

    #[test]
    fn uip_precedes_each_update() {
        let (clock, _, mut r) = setup(LEAP_EVE);
        clock.set(NANOS_PER_SEC - UIP_WINDOW_NS - 1);
        assert_eq!(rd(&mut r, REG_A), A_DEFAULT);
        clock.set(NANOS_PER_SEC - UIP_WINDOW_NS);
        assert_eq!(rd(&mut r, REG_A), A_UIP | A_DEFAULT);
        assert_eq!(rd(&mut r, REG_SECONDS), 0x58);
        clock.set(NANOS_PER_SEC);
        assert_eq!(rd(&mut r, REG_A), A_DEFAULT);
        assert_eq!(rd(&mut r, REG_SECONDS), 0x59);
        // Divider held in reset: no updates, no UIP.
        wr(&mut r, REG_A, 0x70 | 0x06);
        clock.set(3 * NANOS_PER_SEC - 1000);
        assert_eq!(rd(&mut r, REG_A) & A_UIP, 0);
        assert_eq!(rd(&mut r, REG_SECONDS), 0x59);
    }

    #[test]
    fn periodic_interrupt_rate() {
        let (clock, rec, mut r) = setup(LEAP_EVE);
        assert_eq!(r.poll_timer(0), None, "no interrupts enabled");
        wr(&mut r, REG_B, B_24H | B_PIE); // RS = 6: 1024 Hz
        let mut due = r.poll_timer(0).unwrap();
        assert_eq!(due, 976_563);
        while due <= NANOS_PER_SEC {
            clock.set(due);
            let next = r.poll_timer(due).unwrap();
            // The handler acknowledges by reading register C.
            assert_eq!(rd(&mut r, REG_C) & (C_IRQF | C_PF), C_IRQF | C_PF);
            due = next;
        }
        assert_eq!(rec.rising_edges(8), 1024);
        // RS = 15: 2 Hz.
        wr(&mut r, REG_A, 0x2F);
        let t = clock.now_ns();
        let next = r.poll_timer(t).unwrap();
        assert_eq!(next, t + NANOS_PER_SEC / 2);
    }

    #[test]
    fn register_c_reads_clear() {
        let (clock, rec, mut r) = setup(LEAP_EVE);
        wr(&mut r, REG_B, B_24H | B_UIE);
        assert_eq!(r.poll_timer(0), Some(NANOS_PER_SEC));
        clock.set(NANOS_PER_SEC);
        r.poll_timer(NANOS_PER_SEC);
        assert_eq!(rec.take(), vec![(8, true)]);
        // PF runs at the default rate whether or not PIE is set.
        assert_eq!(rd(&mut r, REG_C) & !C_PF, C_IRQF | C_UF);
        assert_eq!(rec.take(), vec![(8, false)]);
        assert_eq!(rd(&mut r, REG_C), 0);
        // Flags without their enable bit set no IRQF and no interrupt.
        wr(&mut r, REG_B, B_24H);
        clock.set(2 * NANOS_PER_SEC);
        // (AF is set too: the zeroed alarm registers match midnight.)
        assert_eq!(rd(&mut r, REG_C), C_UF | C_AF | C_PF);
        assert!(rec.take().is_empty());
    }

    #[test]
    fn alarm_interrupt() {
        let (clock, rec, mut r) = setup(LEAP_EVE);
        // Alarm at 00:00:03 the next day, 5 s from now.
        wr(&mut r, REG_HOURS_ALARM, 0x00);
        wr(&mut r, REG_MINUTES_ALARM, 0x00);
        wr(&mut r, REG_SECONDS_ALARM, 0x03);
        wr(&mut r, REG_B, B_24H | B_AIE);
        for s in 1..=4 {
            clock.set(s * NANOS_PER_SEC);
            assert_eq!(
                r.poll_timer(s * NANOS_PER_SEC),
                Some((s + 1) * NANOS_PER_SEC)
            );
        }
        assert_eq!(rec.rising_edges(8), 0);
        clock.set(5 * NANOS_PER_SEC);
        r.poll_timer(5 * NANOS_PER_SEC);
        assert_eq!(rec.rising_edges(8), 1);
        // PF runs at the default rate whether or not PIE is set.
        assert_eq!(rd(&mut r, REG_C) & !C_PF, C_IRQF | C_AF | C_UF);
        // Don't-care hours and minutes: every minute at :30.
        wr(&mut r, REG_HOURS_ALARM, 0xC0);
        wr(&mut r, REG_MINUTES_ALARM, 0xFF);
        wr(&mut r, REG_SECONDS_ALARM, 0x30);
        let mut hits = 0;
        for s in 6..=(6 + 180) {
            clock.set(s * NANOS_PER_SEC);
            r.poll_timer(s * NANOS_PER_SEC);
            if rd(&mut r, REG_C) & C_AF != 0 {
                hits += 1;
            }
        }
        assert_eq!(hits, 3);
        // A poll after a long gap still reports a missed alarm.
        clock.set(1000 * NANOS_PER_SEC);
        r.poll_timer(1000 * NANOS_PER_SEC);
        assert_ne!(rd(&mut r, REG_C) & C_AF, 0);
    }

    #[test]
    fn memory_size_bytes() {
        let (_, _, mut r) = setup(0);
        r.set_memory(128 * MIB, 0);
        let w = |r: &mut Rtc, i: u8| u16::from_le_bytes([rd(r, i), rd(r, i + 1)]);
        assert_eq!(w(&mut r, 0x15), 640);
        assert_eq!(w(&mut r, 0x17), 0xFFFF);
        assert_eq!(w(&mut r, 0x30), 0xFFFF);
        assert_eq!(w(&mut r, 0x34), ((128 - 16) * 16) as u16);
        assert_eq!(
            [rd(&mut r, 0x5B), rd(&mut r, 0x5C), rd(&mut r, 0x5D)],
            [0; 3]
        );
        assert_eq!(rd(&mut r, REG_EQUIPMENT), EQUIPMENT_DEFAULT);
        let sum: u16 = (0x10..=0x2D).map(|i| u16::from(rd(&mut r, i))).sum();
        assert_eq!(w(&mut r, 0x2E), sum.swap_bytes());
        // Small guest: 16 MiB.
        r.set_memory(16 * MIB, 0);
        assert_eq!(w(&mut r, 0x17), 15 * 1024);
        assert_eq!(w(&mut r, 0x34), 0);
        // 3 GiB below 4 GiB plus 2 GiB above.
        r.set_memory(3 << 30, 2 << 30);
        assert_eq!(
            w(&mut r, 0x34),
            (((3 << 30) - 16 * MIB) / (64 * KIB)) as u16
        );
        assert_eq!(
            [rd(&mut r, 0x5B), rd(&mut r, 0x5C), rd(&mut r, 0x5D)],
            [0, 0x80, 0]
        );
    }

    #[test]
    fn index_port_and_nmi_mask() {
        let (_, _, mut r) = setup(0);
        r.write(0, &[NMI_DISABLE | 0x40]);
        assert!(r.nmi_disabled());
        r.write(1, &[0xA5]);
        r.write(0, &[0x40]);
        assert!(!r.nmi_disabled());
        let mut b = [0u8; 2];
        r.read(0, &mut b);
        assert_eq!(b, [0xFF, 0xA5]);
        // Registers C and D are read-only.
        wr(&mut r, REG_D, 0);
        assert_eq!(rd(&mut r, REG_D), D_VRT);
    }
}
