//! The local APIC timer (SDM 10.5.4): a down-counter clocked at the APIC timer
//! frequency divided by the divide configuration, in one-shot or periodic mode, or an
//! absolute IA32_TSC_DEADLINE comparison. Nothing ticks: the state is the time the
//! count (re)started, and counts and expiries are computed from the virtual clock.

use vireo_core::clock::{ns_to_ticks, NANOS_PER_SEC};

/// The timer's mode (LVT timer bits 18:17).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TimerMode {
    OneShot,
    Periodic,
    TscDeadline,
}

impl TimerMode {
    /// Decodes LVT timer bits 18:17 (the reserved encoding 11b counts as one-shot).
    pub(super) fn from_lvt(lvt: u32) -> TimerMode {
        match (lvt >> 17) & 3 {
            1 => TimerMode::Periodic,
            2 => TimerMode::TscDeadline,
            _ => TimerMode::OneShot,
        }
    }
}

/// Timer state.
#[derive(Debug, Clone)]
pub(super) struct Timer {
    /// Input clock of the divider (Hz).
    hz: u64,
    /// Initial-count register.
    pub(super) initial: u32,
    /// Divide-configuration register (bits 0, 1, 3).
    pub(super) divide: u32,
    /// Counting (a one-shot count that reached 0 stops).
    armed: bool,
    /// Clock time (ns) at which the count was last (re)loaded.
    start: u64,
    /// Periods completed and already signalled (periodic mode).
    fired: u64,
    /// IA32_TSC_DEADLINE (0: disarmed).
    pub(super) deadline: u64,
    /// The clock time the TSC reaches `deadline`.
    deadline_ns: Option<u64>,
}

impl Timer {
    pub(super) fn new(hz: u64) -> Timer {
        Timer {
            hz,
            initial: 0,
            divide: 0,
            armed: false,
            start: 0,
            fired: 0,
            deadline: 0,
            deadline_ns: None,
        }
    }

    /// Stops and clears everything (reset, INIT).
    pub(super) fn reset(&mut self) {
        *self = Timer::new(self.hz);
    }

    /// The divisor the divide configuration selects: 2, 4, ... 128, or 1 (111b).
    pub(super) fn divisor(&self) -> u64 {
        let v = (self.divide & 3) | ((self.divide >> 1) & 4);
        if v == 7 {
            1
        } else {
            2 << v
        }
    }

    /// Counter decrements per second.
    fn rate(&self) -> u64 {
        (self.hz / self.divisor()).max(1)
    }

    /// Whole counter ticks since the count started.
    fn elapsed(&self, now: u64) -> u64 {
        ns_to_ticks(now.saturating_sub(self.start), self.rate())
    }

    /// Nanoseconds after `start` at which `ticks` decrements have happened.
    fn ticks_ns(&self, ticks: u64) -> u64 {
        let ns = (u128::from(ticks) * u128::from(NANOS_PER_SEC)).div_ceil(u128::from(self.rate()));
        ns.min(u128::from(u64::MAX)) as u64
    }

    /// The current-count register.
    pub(super) fn current(&self, now: u64, mode: TimerMode) -> u32 {
        if !self.armed || self.initial == 0 {
            return 0;
        }
        let init = u64::from(self.initial);
        let e = self.elapsed(now);
        match mode {
            TimerMode::TscDeadline => 0,
            TimerMode::OneShot => (init - e.min(init)) as u32,
            TimerMode::Periodic => (init - e % init) as u32,
        }
    }

    /// A write of the initial-count register (ignored in TSC-deadline mode); 0 stops
    /// the timer.
    pub(super) fn set_initial(&mut self, v: u32, now: u64, mode: TimerMode) {
        if mode == TimerMode::TscDeadline {
            return;
        }
        self.initial = v;
        self.armed = v != 0;
        self.start = now;
        self.fired = 0;
    }

    /// Restarts the count so that it continues from `current` at `now`.
    fn rebase(&mut self, current: u32, now: u64) {
        let done = u64::from(self.initial).saturating_sub(u64::from(current));
        self.start = now.saturating_sub(self.ticks_ns(done));
        self.fired = 0;
    }

    /// A write of the divide-configuration register: the count continues from its
    /// current value at the new rate.
    pub(super) fn set_divide(&mut self, v: u32, now: u64, mode: TimerMode) {
        let cur = self.current(now, mode);
        self.divide = v & 0xb;
        if self.armed {
            self.rebase(cur, now);
        }
    }

    /// The LVT timer's mode changed from `old` to `new`. As KVM does: entering or
    /// leaving TSC-deadline mode disarms the timer (initial count and deadline 0);
    /// between one-shot and periodic the current count continues.
    pub(super) fn mode_changed(&mut self, old: TimerMode, new: TimerMode, now: u64) {
        if old == new {
            return;
        }
        if old == TimerMode::TscDeadline || new == TimerMode::TscDeadline {
            let hz = self.hz;
            let divide = self.divide;
            *self = Timer::new(hz);
            self.divide = divide;
        } else if self.armed {
            let cur = self.current(now, old);
            self.rebase(cur, now);
        }
    }

    /// A write of IA32_TSC_DEADLINE (only in TSC-deadline mode): `tsc_now` is the TSC
    /// at `now`, which runs at `tsc_hz`. 0 disarms.
    pub(super) fn set_deadline(&mut self, deadline: u64, tsc_now: u64, tsc_hz: u64, now: u64) {
        self.deadline = deadline;
        self.deadline_ns = (deadline != 0).then(|| {
            let ahead = deadline.saturating_sub(tsc_now);
            let ns =
                (u128::from(ahead) * u128::from(NANOS_PER_SEC)).div_ceil(u128::from(tsc_hz.max(1)));
            now.saturating_add(ns.min(u128::from(u64::MAX)) as u64)
        });
    }

    /// The length of one period (initial count) in nanoseconds.
    pub(super) fn period_ns(&self) -> u64 {
        self.ticks_ns(u64::from(self.initial))
    }

    /// When the timer next expires.
    pub(super) fn next_expiry(&self, mode: TimerMode) -> Option<u64> {
        match mode {
            TimerMode::TscDeadline => self.deadline_ns,
            _ if !self.armed || self.initial == 0 => None,
            TimerMode::OneShot => Some(
                self.start
                    .saturating_add(self.ticks_ns(u64::from(self.initial))),
            ),
            TimerMode::Periodic => {
                let k = self
                    .fired
                    .saturating_add(1)
                    .saturating_mul(u64::from(self.initial));
                Some(self.start.saturating_add(self.ticks_ns(k)))
            }
        }
    }

    /// Advances the timer to `now`; true if it expired (once, however many periods
    /// were missed: late expiries coalesce, as the interrupt would).
    pub(super) fn poll(&mut self, now: u64, mode: TimerMode) -> bool {
        match self.next_expiry(mode) {
            Some(t) if t <= now => {}
            _ => return false,
        }
        match mode {
            TimerMode::TscDeadline => {
                // The MSR reads 0 once the deadline has passed (the timer disarms).
                self.deadline = 0;
                self.deadline_ns = None;
            }
            TimerMode::OneShot => self.armed = false,
            TimerMode::Periodic => self.fired = self.elapsed(now) / u64::from(self.initial.max(1)),
        }
        true
    }
}
