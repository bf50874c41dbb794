//! ACPI fixed-hardware power-management registers, PIIX4 style, at I/O port 0x600.
//!
//! ```text
//! 0x600  PM1a_EVT_BLK: PM1_STS (16-bit, write 1 to clear)
//! 0x602                PM1_EN  (16-bit)
//! 0x604  PM1a_CNT_BLK: PM1_CNT (16-bit: SCI_EN bit 0, SLP_TYP bits 10-12, SLP_EN bit 13)
//! 0x608  PM_TMR_BLK:   PM_TMR  (32-bit read-only, 24-bit counter at 3.579545 MHz)
//! ```
//!
//! vireo has no SMM, so the FADT advertises `SMI_CMD = 0` ("always in ACPI mode") and
//! `SCI_EN` always reads as set. Writing `SLP_EN` with `SLP_TYP ==` [`SLP_TYP_S5`] powers
//! the machine off through [`MachineControl`]; other sleep states are logged and ignored
//! (the DSDT only advertises `_S5`).
//!
//! The SCI ([`SCI_IRQ`], level triggered) is asserted while `PM1_STS & PM1_EN` has an
//! event bit set. The timer carry (`TMR_STS`, set whenever bit 23 of the counter
//! toggles) is computed from the [`VirtualClock`] whenever the registers are touched and
//! from [`TimerDevice::poll_timer`], which asks to be polled at the next carry while
//! `TMR_EN` is set. The timer is 24 bits wide: the FADT must not set `TMR_VAL_EXT`.

use parking_lot::Mutex;
use std::sync::Arc;
use vireo_core::clock::{ns_to_ticks, ticks_to_ns, TimerDevice, TimerWaker};
use vireo_core::{BusDevice, IrqLine, MachineControl, StopReason, VirtualClock};

/// Base I/O port of the PM register block.
pub const PM_BASE: u64 = 0x600;
/// Length of the I/O range the device is registered for.
pub const PM_LEN: u64 = 0x10;
/// PM1a event block (PM1_STS, PM1_EN), 4 bytes.
pub const PM1A_EVT: u64 = PM_BASE;
/// Length of the PM1a event block.
pub const PM1_EVT_LEN: u8 = 4;
/// PM1a control block, 2 bytes.
pub const PM1A_CNT: u64 = PM_BASE + 4;
/// Length of the PM1a control block.
pub const PM1_CNT_LEN: u8 = 2;
/// PM timer, 4 bytes.
pub const PM_TMR: u64 = PM_BASE + 8;
/// Length of the PM timer block.
pub const PM_TMR_LEN: u8 = 4;
/// The SLP_TYP value of S5 (soft off), as in the DSDT's `_S5` package (PIIX4 uses 0).
pub const SLP_TYP_S5: u8 = 0;
/// The SCI's IRQ (= GSI), level triggered, active high.
pub const SCI_IRQ: u32 = 9;
/// PM timer frequency.
pub const PM_TIMER_HZ: u64 = 3_579_545;
/// PM timer counter mask (24 bits).
pub const PM_TIMER_MASK: u32 = 0x00ff_ffff;

/// PM1_STS / PM1_EN bits.
pub const TMR_STS: u16 = 1 << 0;
pub const BM_STS: u16 = 1 << 4;
pub const GBL_STS: u16 = 1 << 5;
pub const PWRBTN_STS: u16 = 1 << 8;
pub const SLPBTN_STS: u16 = 1 << 9;
pub const RTC_STS: u16 = 1 << 10;
pub const WAK_STS: u16 = 1 << 15;
/// PM1_CNT bits.
pub const SCI_EN: u16 = 1 << 0;
pub const BM_RLD: u16 = 1 << 1;
pub const GBL_RLS: u16 = 1 << 2;
pub const SLP_TYP_SHIFT: u16 = 10;
pub const SLP_TYP_MASK: u16 = 7 << SLP_TYP_SHIFT;
pub const SLP_EN: u16 = 1 << 13;

/// Status bits that can raise the SCI when enabled.
const EVENT_BITS: u16 = TMR_STS | GBL_STS | PWRBTN_STS | SLPBTN_STS | RTC_STS;
/// Writable bits of PM1_EN.
const EN_BITS: u16 = EVENT_BITS;
/// Bits of PM1_CNT kept on write (SLP_EN is write-only, SCI_EN is fixed).
const CNT_KEEP: u16 = BM_RLD | SLP_TYP_MASK;
/// Timer carry period: bit 23 toggles every 2^23 ticks.
const CARRY_TICKS: u64 = 1 << 23;

const OFF_STS: u64 = 0;
const OFF_EN: u64 = 2;
const OFF_CNT: u64 = 4;
const OFF_TMR: u64 = 8;

/// The PM register block.
pub struct AcpiPm {
    clock: Arc<VirtualClock>,
    control: Arc<MachineControl>,
    sci: IrqLine,
    waker: Option<Arc<TimerWaker>>,
    sts: u16,
    en: u16,
    cnt: u16,
    /// Number of timer carries already accounted for in TMR_STS.
    carries: u64,
    sci_level: bool,
}

impl AcpiPm {
    /// A PM block in its power-on state.
    pub fn new(clock: Arc<VirtualClock>, control: Arc<MachineControl>, sci: IrqLine) -> AcpiPm {
        let carries = ns_to_ticks(clock.now_ns(), PM_TIMER_HZ) / CARRY_TICKS;
        AcpiPm {
            clock,
            control,
            sci,
            waker: None,
            sts: 0,
            en: 0,
            cnt: SCI_EN,
            carries,
            sci_level: false,
        }
    }

    /// A shared PM block, ready for the bus and the timer thread.
    pub fn shared(
        clock: Arc<VirtualClock>,
        control: Arc<MachineControl>,
        sci: IrqLine,
    ) -> Arc<Mutex<AcpiPm>> {
        Arc::new(Mutex::new(AcpiPm::new(clock, control, sci)))
    }

    /// Sets the waker used to have the timer thread re-poll when TMR_EN is turned on.
    pub fn set_waker(&mut self, waker: Arc<TimerWaker>) {
        self.waker = Some(waker);
    }

    /// Back to the power-on state (machine reset).
    pub fn reset(&mut self) {
        self.sts = 0;
        self.en = 0;
        self.cnt = SCI_EN;
        self.carries = self.ticks_now() / CARRY_TICKS;
        self.update_sci();
    }

    /// The current PM timer value (24 bits).
    pub fn timer(&self) -> u32 {
        (self.ticks_now() as u32) & PM_TIMER_MASK
    }

    /// Presses the (fixed-feature) power button: the guest sees PWRBTN_STS and, if it
    /// enabled PWRBTN_EN, an SCI; ACPI-aware guests then shut down cleanly.
    pub fn press_power_button(&mut self) {
        self.sts |= PWRBTN_STS;
        self.update_sci();
    }

    fn ticks_now(&self) -> u64 {
        ns_to_ticks(self.clock.now_ns(), PM_TIMER_HZ)
    }

    /// Folds timer carries since the last look into TMR_STS.
    fn update_timer_status(&mut self) {
        let carries = self.ticks_now() / CARRY_TICKS;
        if carries != self.carries {
            self.carries = carries;
            self.sts |= TMR_STS;
        }
    }

    /// Drives the SCI from PM1_STS & PM1_EN.
    fn update_sci(&mut self) {
        let level = self.cnt & SCI_EN != 0 && self.sts & self.en & EVENT_BITS != 0;
        if level != self.sci_level {
            self.sci_level = level;
            self.sci.set(level);
        }
    }

    fn pm1_cnt_write(&mut self, value: u16) {
        self.cnt = (value & CNT_KEEP) | SCI_EN;
        if value & SLP_EN != 0 {
            let typ = ((value & SLP_TYP_MASK) >> SLP_TYP_SHIFT) as u8;
            if typ == SLP_TYP_S5 {
                log::info!(target: "vireo::dev::acpi", "guest entered S5: power off");
                self.control.request_stop(StopReason::PowerOff);
            } else {
                log::warn!(target: "vireo::dev::acpi", "sleep type {typ} not supported, ignored");
            }
        }
    }

    /// The 16 bytes of the block as the guest reads them.
    fn register_image(&mut self) -> [u8; PM_LEN as usize] {
        self.update_timer_status();
        self.update_sci();
        let mut r = [0u8; PM_LEN as usize];
        r[0..2].copy_from_slice(&self.sts.to_le_bytes());
        r[2..4].copy_from_slice(&self.en.to_le_bytes());
        r[4..6].copy_from_slice(&(self.cnt | SCI_EN).to_le_bytes());
        r[8..12].copy_from_slice(&self.timer().to_le_bytes());
        r
    }
}

/// The part of a write at `offset` that falls on the 16-bit register at `reg`:
/// `(value, byte mask)` or `None` when the write does not touch it.
fn reg16_part(reg: u64, offset: u64, data: &[u8]) -> Option<(u16, u16)> {
    let mut value = 0u16;
    let mut mask = 0u16;
    for (i, b) in data.iter().enumerate() {
        let a = offset + i as u64;
        if a == reg || a == reg + 1 {
            let shift = 8 * (a - reg);
            value |= u16::from(*b) << shift;
            mask |= 0xff << shift;
        }
    }
    (mask != 0).then_some((value, mask))
}

impl BusDevice for AcpiPm {
    fn name(&self) -> &str {
        "acpi-pm"
    }

    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let image = self.register_image();
        for (i, b) in data.iter_mut().enumerate() {
            *b = usize::try_from(offset)
                .ok()
                .and_then(|o| image.get(o + i))
                .copied()
                .unwrap_or(0);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        self.update_timer_status();
        if let Some((v, m)) = reg16_part(OFF_STS, offset, data) {
            // Write 1 to clear.
            self.sts &= !(v & m);
        }
        if let Some((v, m)) = reg16_part(OFF_EN, offset, data) {
            let old = self.en;
            self.en = ((self.en & !m) | (v & m)) & EN_BITS;
            if self.en & TMR_EN != 0 && old & TMR_EN == 0 {
                if let Some(w) = &self.waker {
                    w.wake();
                }
            }
        }
        if let Some((v, m)) = reg16_part(OFF_CNT, offset, data) {
            // SLP_EN only counts if it was part of this write.
            let merged = (self.cnt & !m & CNT_KEEP) | (v & m);
            self.pm1_cnt_write(merged);
        }
        if offset >= OFF_TMR {
            log::debug!(target: "vireo::dev::acpi", "write to read-only PM register +{offset:#x}");
        }
        self.update_sci();
    }
}

/// PM1_EN bit enabling the timer carry SCI.
pub const TMR_EN: u16 = TMR_STS;
/// PM1_EN bit enabling the power button SCI.
pub const PWRBTN_EN: u16 = PWRBTN_STS;

impl TimerDevice for AcpiPm {
    fn poll_timer(&mut self, now: u64) -> Option<u64> {
        let _ = now; // the clock is read directly
        self.update_timer_status();
        self.update_sci();
        if self.en & TMR_EN == 0 {
            return None;
        }
        let next_carry = (self.carries + 1).saturating_mul(CARRY_TICKS);
        // Round up so that the carry has happened by the deadline.
        Some(ticks_to_ns(next_carry, PM_TIMER_HZ).saturating_add(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vireo_core::clock::NANOS_PER_SEC;
    use vireo_core::irq::IrqRecorder;

    fn pm() -> (
        Arc<VirtualClock>,
        Arc<MachineControl>,
        Arc<IrqRecorder>,
        AcpiPm,
    ) {
        let clock = VirtualClock::manual();
        let ctl = MachineControl::new();
        let rec = IrqRecorder::new();
        let pm = AcpiPm::new(clock.clone(), ctl.clone(), rec.line(SCI_IRQ));
        (clock, ctl, rec, pm)
    }

    fn r16(pm: &mut AcpiPm, off: u64) -> u16 {
        let mut b = [0u8; 2];
        pm.read(off, &mut b);
        u16::from_le_bytes(b)
    }

    fn r32(pm: &mut AcpiPm, off: u64) -> u32 {
        let mut b = [0u8; 4];
        pm.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn timer_runs_at_3_579545_mhz() {
        let (clock, _, _, mut pm) = pm();
        assert_eq!(r32(&mut pm, OFF_TMR), 0);
        clock.advance(NANOS_PER_SEC);
        assert_eq!(r32(&mut pm, OFF_TMR), 3_579_545);
        clock.advance(NANOS_PER_SEC / 1000);
        assert_eq!(r32(&mut pm, OFF_TMR), 3_579_545 + 3_579);
        // 24-bit wrap: 2^24 ticks later the value is the same.
        let before = r32(&mut pm, OFF_TMR);
        clock.advance(ticks_to_ns(1 << 24, PM_TIMER_HZ) + 1);
        let after = r32(&mut pm, OFF_TMR);
        assert!(after < (1 << 24));
        assert!(after.wrapping_sub(before) & PM_TIMER_MASK <= 1);
        // Read-only.
        pm.write(OFF_TMR, &0u32.to_le_bytes());
        assert_eq!(r32(&mut pm, OFF_TMR), after);
    }

    #[test]
    fn s5_requests_power_off() {
        let (_, ctl, _, mut pm) = pm();
        // SCI_EN always reads as set; SLP_TYP without SLP_EN does nothing.
        assert_eq!(r16(&mut pm, OFF_CNT) & SCI_EN, SCI_EN);
        pm.write(OFF_CNT, &(5u16 << SLP_TYP_SHIFT).to_le_bytes());
        assert_eq!(ctl.stop_reason(), None);
        // Another sleep type is ignored.
        pm.write(OFF_CNT, &(SLP_EN | (1 << SLP_TYP_SHIFT)).to_le_bytes());
        assert_eq!(ctl.stop_reason(), None);
        // SLP_EN reads back as 0.
        assert_eq!(r16(&mut pm, OFF_CNT) & SLP_EN, 0);
        let v = SLP_EN | (u16::from(SLP_TYP_S5) << SLP_TYP_SHIFT);
        pm.write(OFF_CNT, &v.to_le_bytes());
        assert_eq!(ctl.stop_reason(), Some(StopReason::PowerOff));
    }

    #[test]
    fn s5_by_byte_write() {
        let (_, ctl, _, mut pm) = pm();
        // The high byte alone carries SLP_EN and SLP_TYP.
        let v = SLP_EN | (u16::from(SLP_TYP_S5) << SLP_TYP_SHIFT);
        pm.write(OFF_CNT + 1, &[(v >> 8) as u8]);
        assert_eq!(ctl.stop_reason(), Some(StopReason::PowerOff));
    }

    #[test]
    fn status_is_write_one_to_clear_and_drives_sci() {
        let (clock, _, rec, mut pm) = pm();
        pm.write(OFF_EN, &(TMR_EN | PWRBTN_EN).to_le_bytes());
        assert_eq!(r16(&mut pm, OFF_EN), TMR_EN | PWRBTN_EN);
        pm.press_power_button();
        assert_eq!(r16(&mut pm, OFF_STS), PWRBTN_STS);
        assert_eq!(rec.take(), vec![(SCI_IRQ, true)]);
        // Writing 0 clears nothing; writing the bit clears it and lowers the SCI.
        pm.write(OFF_STS, &0u16.to_le_bytes());
        assert_eq!(r16(&mut pm, OFF_STS), PWRBTN_STS);
        pm.write(OFF_STS, &PWRBTN_STS.to_le_bytes());
        assert_eq!(r16(&mut pm, OFF_STS), 0);
        assert_eq!(rec.take(), vec![(SCI_IRQ, false)]);

        // The timer carry sets TMR_STS and, with TMR_EN, raises the SCI from the poll.
        let deadline = pm.poll_timer(clock.now_ns()).unwrap();
        assert_eq!(ns_to_ticks(deadline, PM_TIMER_HZ), 1 << 23);
        clock.set(deadline);
        assert_eq!(
            pm.poll_timer(clock.now_ns()),
            Some(ticks_to_ns(2 << 23, PM_TIMER_HZ) + 1)
        );
        assert_eq!(rec.take(), vec![(SCI_IRQ, true)]);
        assert_eq!(r16(&mut pm, OFF_STS), TMR_STS);
        pm.write(OFF_STS, &[TMR_STS as u8]);
        assert_eq!(r16(&mut pm, OFF_STS), 0);
        assert_eq!(rec.take(), vec![(SCI_IRQ, false)]);
        // Without TMR_EN nobody needs polling.
        pm.write(OFF_EN, &0u16.to_le_bytes());
        assert_eq!(pm.poll_timer(clock.now_ns()), None);
    }
}
