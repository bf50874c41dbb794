//! One CPU's local APIC (Intel SDM vol. 3 ch. 10; AMD calls the same chip the local
//! APIC too).
//!
//! State and behaviour:
//! - IA32_APIC_BASE: global enable (bit 11), x2APIC mode (bit 10), BSP (bit 8) and the
//!   register page base; the mode transitions of SDM 10.12.5 (x2APIC → xAPIC and
//!   disabled → x2APIC are #GP). A global disable returns the APIC to its power-up
//!   state (SDM 10.4.3).
//! - IRR, ISR and TMR (256 bits each); acceptance of fixed interrupts into the IRR
//!   (vectors 0-15 are illegal and set ESR bit 6); delivery of the highest IRR vector
//!   whose priority class is above the processor priority (PPR = TPR or the highest
//!   in-service class); EOI clears the highest ISR bit and, for a level-triggered
//!   vector (TMR), broadcasts the EOI to the IOAPIC.
//! - The spurious-interrupt register's software enable: while it is clear, LVT entries
//!   stay masked and fixed interrupts are refused (NMI, INIT and SIPI still arrive).
//! - The local vector table: timer, thermal, performance counters, LINT0, LINT1,
//!   error. LINT0 in ExtINT mode is the virtual wire to the 8259A pair: the CPU takes
//!   PIC interrupts when LINT0 is unmasked ExtINT or the APIC is globally disabled (as
//!   KVM's `kvm_apic_accept_pic_intr`). The BSP's LINT0 comes out of reset as
//!   unmasked ExtINT, as a PC BIOS leaves it (and as KVM and QEMU model it).
//! - NMI, INIT and start-up messages bypass the IRR and wait as [`CpuEvent`]s for the
//!   CPU; an INIT resets the APIC except its ID and base.
//! - The ICR sends IPIs (fixed, lowest priority, NMI, INIT, INIT de-assert, SIPI;
//!   physical/logical destinations; shorthands), handed to the bus as an [`Effect`].
//! - The timer ([`super::lapic_timer`]) at [`TIMER_HZ`] before the divider, and the
//!   TSC deadline.
//! - x2APIC mode: the registers as MSRs 0x800-0x8FF with the x2APIC rules (#GP for
//!   reserved registers, reads of write-only and writes of read-only ones, non-zero
//!   EOI/ESR writes and set bits 63:32; a 64-bit ICR; no DFR; an LDR derived from the
//!   x2APIC ID; the self-IPI register).
//!
//! The xAPIC MMIO decoding and the register file are in [`super::lapic_regs`].

use super::lapic_timer::{Timer, TimerMode};
use super::{CpuEvent, DeliveryMode, Effect, Message, Shorthand};
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::Arc;
use vireo_core::clock::{TimerDevice, TimerWaker};
use vireo_core::VirtualClock;

pub(super) const LOG: &str = "vireo::dev::lapic";

/// The APIC timer's input clock (before the divider): 1 GHz, the same rate as the TCG
/// TSC and as KVM's and QEMU's local APIC timers, and the core crystal clock the TCG
/// CPUID leaf 15h reports (the SDM's APIC timer clock when leaf 15h enumerates it).
pub const TIMER_HZ: u64 = 1_000_000_000;
/// The shortest interval between two periodic timer interrupts (a guest cannot make
/// the timer thread spin; KVM clamps periodic timers too).
pub const MIN_PERIOD_NS: u64 = 10_000;
/// Default register page base (IA32_APIC_BASE[35:12] at reset).
pub const DEFAULT_BASE: u64 = 0xfee0_0000;

/// IA32_APIC_BASE bits.
pub mod base {
    pub const BSP: u64 = 1 << 8;
    pub const EXTD: u64 = 1 << 10;
    pub const EN: u64 = 1 << 11;
    /// Bits 0-7 and 9.
    pub const RESERVED: u64 = 0x2ff;
}

/// Version register: version 14h, highest LVT entry 5 (timer, thermal, performance,
/// LINT0, LINT1, error), no EOI-broadcast suppression.
pub const VERSION: u32 = 0x0005_0014;

/// LVT indices (register 0x32 + index).
pub mod lvt {
    pub const TIMER: usize = 0;
    pub const THERMAL: usize = 1;
    pub const PERF: usize = 2;
    pub const LINT0: usize = 3;
    pub const LINT1: usize = 4;
    pub const ERROR: usize = 5;
    pub const COUNT: usize = 6;
    pub const MASKED: u32 = 1 << 16;
    pub const REMOTE_IRR: u32 = 1 << 14;
    pub const LEVEL: u32 = 1 << 15;
}

/// ESR bits.
pub mod esr {
    pub const SEND_ILLEGAL_VECTOR: u32 = 1 << 5;
    pub const RECEIVE_ILLEGAL_VECTOR: u32 = 1 << 6;
    pub const ILLEGAL_REGISTER: u32 = 1 << 7;
}

/// SVR bit 8: APIC software enable.
pub const SVR_ENABLE: u32 = 1 << 8;

/// A #GP for the CPU (an invalid x2APIC access or IA32_APIC_BASE write).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApicFault;

/// A local APIC shared by its CPU, the APIC bus and the timer thread.
pub type SharedLapic = Arc<Mutex<LocalApic>>;

/// The callback that tells the CPU about a new interrupt or event. It runs with the
/// APIC locked: it must only flag and wake.
pub type Notify = Box<dyn Fn() + Send + Sync>;

/// Events queued beyond this many are dropped (a guest cannot grow the queue).
const MAX_EVENTS: usize = 8;

/// One local APIC.
pub struct LocalApic {
    /// Initial APIC ID (also the x2APIC ID).
    pub(super) id: u32,
    /// Index on the APIC bus (the sender of this APIC's shorthand IPIs).
    pub(super) bus_index: usize,
    /// IA32_APIC_BASE.
    pub(super) base: u64,
    /// The xAPIC ID register's bits 31:24 (software may change it).
    pub(super) xapic_id: u8,
    pub(super) tpr: u8,
    pub(super) ldr: u32,
    pub(super) dfr: u32,
    pub(super) svr: u32,
    pub(super) irr: [u32; 8],
    pub(super) isr: [u32; 8],
    pub(super) tmr: [u32; 8],
    /// ESR as last latched by a write.
    pub(super) esr: u32,
    /// Errors since the last ESR write.
    pub(super) esr_pending: u32,
    /// ICR: low half, and the destination in the high half.
    pub(super) icr: u64,
    pub(super) lvt: [u32; lvt::COUNT],
    /// Input levels of LINT0/LINT1 (edge detection).
    lint_level: [bool; 2],
    pub(super) timer: Timer,
    events: VecDeque<CpuEvent>,
    /// An ExtINT message is waiting: the CPU's next INTA goes to the 8259A.
    extint: bool,
    pub(super) clock: Arc<VirtualClock>,
    tsc_hz: u64,
    waker: Option<Arc<TimerWaker>>,
    irq_notify: Option<Notify>,
    event_notify: Option<Notify>,
}

impl std::fmt::Debug for LocalApic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalApic")
            .field("id", &self.id)
            .field("base", &format_args!("{:#x}", self.base))
            .field("tpr", &self.tpr)
            .field("svr", &format_args!("{:#x}", self.svr))
            .field("irr", &self.irr)
            .field("isr", &self.isr)
            .field("lvt", &self.lvt)
            .finish_non_exhaustive()
    }
}

fn bit(v: &[u32; 8], n: u8) -> bool {
    v[usize::from(n >> 5)] & (1 << (n & 31)) != 0
}

fn set_bit(v: &mut [u32; 8], n: u8, on: bool) {
    let w = &mut v[usize::from(n >> 5)];
    if on {
        *w |= 1 << (n & 31);
    } else {
        *w &= !(1 << (n & 31));
    }
}

/// The highest set bit of a 256-bit register.
fn highest(v: &[u32; 8]) -> Option<u8> {
    (0..8)
        .rev()
        .find(|&i| v[i] != 0)
        .map(|i| (i * 32 + 31 - v[i].leading_zeros() as usize) as u8)
}

impl LocalApic {
    /// The local APIC with initial ID `id` in its power-up state, its timer on `clock`;
    /// `bsp` sets IA32_APIC_BASE.BSP. `tsc_hz` is the TSC rate (for TSC-deadline mode).
    pub fn new(id: u32, bsp: bool, clock: Arc<VirtualClock>, tsc_hz: u64) -> LocalApic {
        let mut a = LocalApic {
            id,
            bus_index: 0,
            base: DEFAULT_BASE | base::EN | if bsp { base::BSP } else { 0 },
            xapic_id: id as u8,
            tpr: 0,
            ldr: 0,
            dfr: u32::MAX,
            svr: 0xff,
            irr: [0; 8],
            isr: [0; 8],
            tmr: [0; 8],
            esr: 0,
            esr_pending: 0,
            icr: 0,
            lvt: [lvt::MASKED; lvt::COUNT],
            lint_level: [false; 2],
            timer: Timer::new(TIMER_HZ),
            events: VecDeque::new(),
            extint: false,
            clock,
            tsc_hz,
            waker: None,
            irq_notify: None,
            event_notify: None,
        };
        a.reset_registers();
        a
    }

    /// Sets the waker of the timer thread (kicked when the timer is reprogrammed).
    pub fn set_waker(&mut self, waker: Arc<TimerWaker>) {
        self.waker = Some(waker);
    }

    /// Installs the CPU's callbacks: `irq` when an interrupt may have become
    /// deliverable, `event` when an NMI, INIT or SIPI arrived.
    pub fn set_notify(&mut self, irq: Notify, event: Notify) {
        self.irq_notify = Some(irq);
        self.event_notify = Some(event);
    }

    /// Installs only the interrupt callback (see [`LocalApic::set_notify`]).
    pub fn set_irq_notify(&mut self, irq: Notify) {
        self.irq_notify = Some(irq);
    }

    /// Installs only the event callback (see [`LocalApic::set_notify`]).
    pub fn set_event_notify(&mut self, event: Notify) {
        self.event_notify = Some(event);
    }

    pub(super) fn set_bus_index(&mut self, i: usize) {
        self.bus_index = i;
    }

    /// The initial APIC ID.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The registers' power-up values (SDM 10.4.7.1), ID and base kept (an INIT keeps
    /// the APIC ID register, SDM 10.4.7.3).
    fn reset_registers(&mut self) {
        self.tpr = 0;
        self.ldr = 0;
        self.dfr = u32::MAX;
        self.svr = 0xff;
        self.irr = [0; 8];
        self.isr = [0; 8];
        self.tmr = [0; 8];
        self.esr = 0;
        self.esr_pending = 0;
        self.icr = 0;
        self.lvt = [lvt::MASKED; lvt::COUNT];
        if self.bsp() {
            // Virtual wire mode, as the firmware sets it up (ExtINT, unmasked).
            self.lvt[lvt::LINT0] = 0x700;
        }
        self.lint_level = [false; 2];
        self.timer.reset();
        self.extint = false;
    }

    /// Power-up reset (machine reset): registers, events and IA32_APIC_BASE.
    pub fn reset(&mut self) {
        let bsp = self.bsp();
        self.base = DEFAULT_BASE | base::EN | if bsp { base::BSP } else { 0 };
        self.events.clear();
        self.xapic_id = self.id as u8;
        self.reset_registers();
    }

    /// IA32_APIC_BASE.
    pub fn apic_base(&self) -> u64 {
        self.base
    }

    /// The APIC is globally enabled (IA32_APIC_BASE.EN).
    pub fn hw_enabled(&self) -> bool {
        self.base & base::EN != 0
    }

    /// The APIC is software-enabled (SVR bit 8) and globally enabled.
    pub fn sw_enabled(&self) -> bool {
        self.hw_enabled() && self.svr & SVR_ENABLE != 0
    }

    /// x2APIC mode.
    pub fn x2apic_mode(&self) -> bool {
        self.base & (base::EN | base::EXTD) == base::EN | base::EXTD
    }

    /// This is the bootstrap processor's APIC.
    pub fn bsp(&self) -> bool {
        self.base & base::BSP != 0
    }

    /// WRMSR IA32_APIC_BASE: reserved bits, the invalid state (EXTD without EN) and
    /// the invalid transitions (x2APIC → xAPIC, disabled → x2APIC) are #GP. Bits above
    /// the CPU's physical-address width are the caller's to check.
    pub fn set_apic_base(&mut self, v: u64) -> Result<(), ApicFault> {
        let (en, extd) = (v & base::EN != 0, v & base::EXTD != 0);
        if v & base::RESERVED != 0 || (extd && !en) {
            return Err(ApicFault);
        }
        if self.x2apic_mode() && en && !extd {
            return Err(ApicFault);
        }
        if !self.hw_enabled() && extd {
            return Err(ApicFault);
        }
        let was_enabled = self.hw_enabled();
        self.base = v;
        if was_enabled && !en {
            // SDM 10.4.3: the APIC may return to its power-up state; it does here.
            self.events.clear();
            self.xapic_id = self.id as u8;
            self.reset_registers();
        }
        log::debug!(target: LOG, "APIC {}: base {v:#x}", self.id);
        self.wake_timer();
        // The 8259A path may have opened (a disabled APIC passes INTR through).
        self.notify_irq();
        Ok(())
    }

    /// Loads IA32_APIC_BASE from a saved CPU state (no transition rules: the state was
    /// valid where it was saved).
    pub fn load_apic_base(&mut self, v: u64) {
        let mut v = v & !base::RESERVED;
        if v & base::EN == 0 {
            v &= !base::EXTD;
        }
        self.base = v;
    }

    /// The page the xAPIC registers are decoded at, when they are (xAPIC mode).
    pub fn mmio_page(&self) -> Option<u64> {
        (self.hw_enabled() && !self.x2apic_mode()).then_some(self.base & 0x000f_ffff_ffff_f000)
    }

    /// The task priority register.
    pub fn tpr(&self) -> u8 {
        self.tpr
    }

    /// Writes the task priority register (MMIO, x2APIC MSR or CR8).
    pub fn set_tpr(&mut self, v: u8) {
        self.tpr = v;
        self.notify_if_pending();
    }

    /// The highest in-service vector (0 when none).
    fn isrv(&self) -> u8 {
        highest(&self.isr).unwrap_or(0)
    }

    /// The processor-priority register (SDM 10.8.3.1).
    pub fn ppr(&self) -> u8 {
        let isrv = self.isrv();
        if self.tpr >> 4 >= isrv >> 4 {
            self.tpr
        } else {
            isrv & 0xf0
        }
    }

    /// The arbitration-priority register (SDM 10.6.2.4, figure 10-15): the TPR when it
    /// is at least the highest pending and above the highest in-service class, else the
    /// highest of the three classes.
    pub fn arbitration_priority(&self) -> u8 {
        let isrv = self.isrv();
        let irrv = highest(&self.irr).unwrap_or(0);
        if self.tpr >> 4 >= irrv >> 4 && self.tpr >> 4 > isrv >> 4 {
            self.tpr
        } else {
            (self.tpr & 0xf0).max(isrv & 0xf0).max(irrv & 0xf0)
        }
    }

    /// The vector the APIC would deliver now: the highest IRR vector whose class is
    /// above the processor priority's.
    fn deliverable(&self) -> Option<u8> {
        if !self.hw_enabled() {
            return None;
        }
        let v = highest(&self.irr)?;
        (v >> 4 > self.ppr() >> 4).then_some(v)
    }

    /// An interrupt is waiting for an INTA: a deliverable IRR vector or an ExtINT
    /// message (the 8259A side is the caller's to check).
    pub fn has_interrupt(&self) -> bool {
        self.deliverable().is_some() || self.extint
    }

    /// The INTA cycle for a fixed interrupt: the highest deliverable vector moves from
    /// the IRR to the ISR.
    pub fn acknowledge(&mut self) -> Option<u8> {
        let v = self.deliverable()?;
        set_bit(&mut self.irr, v, false);
        set_bit(&mut self.isr, v, true);
        Some(v)
    }

    /// Takes a pending ExtINT message (the CPU then acknowledges the 8259A).
    pub fn take_extint(&mut self) -> bool {
        std::mem::replace(&mut self.extint, false)
    }

    /// Whether the CPU takes interrupts from the 8259A pair: LINT0 unmasked in ExtINT
    /// mode, or the APIC globally disabled (the PIC then drives INTR directly).
    pub fn accepts_pic(&self) -> bool {
        let l = self.lvt[lvt::LINT0];
        !self.hw_enabled()
            || (l & lvt::MASKED == 0
                && DeliveryMode::from_bits(u64::from(l)) == DeliveryMode::ExtInt)
    }

    /// Takes the next NMI, INIT or SIPI for the CPU.
    pub fn take_event(&mut self) -> Option<CpuEvent> {
        self.events.pop_front()
    }

    /// Whether events are waiting.
    pub fn has_events(&self) -> bool {
        !self.events.is_empty()
    }

    pub(super) fn notify_irq(&self) {
        if let Some(n) = &self.irq_notify {
            n();
        }
    }

    pub(super) fn notify_if_pending(&self) {
        if self.has_interrupt() {
            self.notify_irq();
        }
    }

    fn push_event(&mut self, e: CpuEvent) {
        if e == CpuEvent::Nmi && self.events.contains(&CpuEvent::Nmi) {
            return; // one NMI latch
        }
        if self.events.len() >= MAX_EVENTS {
            log::debug!(target: LOG, "APIC {}: event {e:?} dropped (queue full)", self.id);
            return;
        }
        self.events.push_back(e);
        if let Some(n) = &self.event_notify {
            n();
        }
    }

    /// Records error `bits` in the ESR (latched at the next ESR write) and raises the
    /// LVT error interrupt for a new error.
    pub(super) fn error(&mut self, bits: u32) {
        let new = bits & !self.esr_pending;
        self.esr_pending |= bits;
        if new == 0 {
            return;
        }
        let l = self.lvt[lvt::ERROR];
        let v = (l & 0xff) as u8;
        if l & lvt::MASKED == 0 && self.sw_enabled() && v >= 16 {
            set_bit(&mut self.irr, v, true);
            set_bit(&mut self.tmr, v, false);
            self.notify_if_pending();
        }
    }

    /// Accepts fixed `vector` into the IRR (level-triggered: also set in the TMR).
    fn set_irr(&mut self, vector: u8, level: bool) {
        if vector < 16 {
            self.error(esr::RECEIVE_ILLEGAL_VECTOR);
            return;
        }
        set_bit(&mut self.irr, vector, true);
        set_bit(&mut self.tmr, vector, level);
        self.notify_if_pending();
    }

    /// Whether this APIC accepts fixed and lowest-priority messages.
    pub fn accepts_fixed(&self) -> bool {
        self.sw_enabled()
    }

    /// Whether a message for `dest` (logical or physical, in x2APIC or xAPIC format)
    /// is addressed to this APIC.
    pub fn matches(&self, dest: u32, logical: bool, x2apic_format: bool) -> bool {
        if !self.hw_enabled() {
            return false;
        }
        if x2apic_format {
            if dest == u32::MAX {
                return true;
            }
            if !self.x2apic_mode() {
                return !logical && dest == u32::from(self.xapic_id);
            }
            if logical {
                let ldr = self.x2apic_ldr();
                return dest >> 16 == ldr >> 16 && dest & ldr & 0xffff != 0;
            }
            return dest == self.id;
        }
        let d = dest as u8;
        if d == 0xff {
            return true;
        }
        if self.x2apic_mode() {
            // An xAPIC-format message (an IOAPIC entry) to an x2APIC: physical IDs
            // below 255 still match.
            return !logical && u32::from(d) == self.id;
        }
        if !logical {
            return d == self.xapic_id;
        }
        let ldr = (self.ldr >> 24) as u8;
        if self.dfr >> 28 == 0xf {
            d & ldr != 0
        } else {
            d >> 4 == ldr >> 4 && d & ldr & 0xf != 0
        }
    }

    /// The x2APIC logical ID (SDM 10.12.10.2): cluster ID[19:4] in bits 31:16 and one
    /// bit for ID[3:0].
    pub(super) fn x2apic_ldr(&self) -> u32 {
        ((self.id >> 4) << 16) | (1 << (self.id & 0xf))
    }

    /// Receives a message from the bus.
    pub fn accept(&mut self, msg: &Message) {
        if !self.hw_enabled() {
            return;
        }
        match msg.mode {
            DeliveryMode::Fixed | DeliveryMode::LowestPriority => {
                if self.sw_enabled() {
                    self.set_irr(msg.vector, msg.trigger_level);
                }
            }
            DeliveryMode::Nmi => self.push_event(CpuEvent::Nmi),
            DeliveryMode::Init => {
                if !msg.level && msg.trigger_level {
                    // INIT level de-assert: only synchronises arbitration IDs.
                    return;
                }
                log::debug!(target: LOG, "APIC {}: INIT", self.id);
                self.events.clear();
                self.reset_registers();
                self.push_event(CpuEvent::Init);
                self.wake_timer();
            }
            DeliveryMode::StartUp => self.push_event(CpuEvent::StartUp(msg.vector)),
            DeliveryMode::ExtInt => {
                self.extint = true;
                self.notify_irq();
            }
            DeliveryMode::Smi | DeliveryMode::Reserved => {
                log::debug!(target: LOG, "APIC {}: {:?} message ignored", self.id, msg.mode);
            }
        }
    }

    /// Drives local interrupt pin LINT0 (`pin` 0) or LINT1 (1) to `level`, delivered
    /// as its LVT entry says (a PC wires NMI sources to LINT1).
    pub fn set_lint(&mut self, pin: usize, level: bool) {
        let Some(was) = self.lint_level.get_mut(pin) else {
            return;
        };
        let rising = level && !*was;
        *was = level;
        let i = lvt::LINT0 + pin;
        let l = self.lvt[i];
        if l & lvt::MASKED != 0 {
            return;
        }
        match DeliveryMode::from_bits(u64::from(l)) {
            DeliveryMode::Fixed => {
                let level_trig = l & lvt::LEVEL != 0;
                if level_trig && level && l & lvt::REMOTE_IRR == 0 {
                    self.lvt[i] |= lvt::REMOTE_IRR;
                    self.set_irr(l as u8, true);
                } else if !level_trig && rising {
                    self.set_irr(l as u8, false);
                }
            }
            DeliveryMode::Nmi if rising => self.push_event(CpuEvent::Nmi),
            DeliveryMode::Init if rising => self.accept(&Message {
                mode: DeliveryMode::Init,
                ..Message::fixed(0, 0)
            }),
            // ExtINT: the 8259A is asked at INTA time (`accepts_pic`).
            _ => {}
        }
    }

    /// Delivers LVT entry `i` (timer, thermal, performance, error) if unmasked.
    pub(super) fn fire_lvt(&mut self, i: usize) {
        let l = self.lvt[i];
        if l & lvt::MASKED != 0 || !self.sw_enabled() {
            return;
        }
        match DeliveryMode::from_bits(u64::from(l)) {
            DeliveryMode::Nmi if i == lvt::THERMAL || i == lvt::PERF => {
                self.push_event(CpuEvent::Nmi)
            }
            _ => self.set_irr(l as u8, false),
        }
    }

    /// EOI: the highest in-service vector completes. Returns the broadcast to make for
    /// a level-triggered vector.
    pub(super) fn eoi(&mut self) -> Effect {
        let Some(v) = highest(&self.isr) else {
            return Effect::None;
        };
        set_bit(&mut self.isr, v, false);
        for i in [lvt::LINT0, lvt::LINT1] {
            if self.lvt[i] & lvt::REMOTE_IRR != 0 && self.lvt[i] as u8 == v {
                self.lvt[i] &= !lvt::REMOTE_IRR;
            }
        }
        self.notify_if_pending();
        if bit(&self.tmr, v) {
            Effect::Eoi(v)
        } else {
            Effect::None
        }
    }

    /// The IPI the ICR describes (a write of its low half, or the x2APIC ICR MSR).
    pub(super) fn send_ipi(&mut self) -> Effect {
        let icr = self.icr;
        let vector = icr as u8;
        let mode = DeliveryMode::from_bits(icr);
        let shorthand = match (icr >> 18) & 3 {
            0 => Shorthand::None,
            1 => Shorthand::SelfOnly,
            2 => Shorthand::AllIncludingSelf,
            _ => Shorthand::AllExcludingSelf,
        };
        if matches!(mode, DeliveryMode::Fixed | DeliveryMode::LowestPriority) && vector < 16 {
            self.error(esr::SEND_ILLEGAL_VECTOR);
            return Effect::None;
        }
        if shorthand == Shorthand::SelfOnly && mode != DeliveryMode::Fixed {
            // Only fixed interrupts can be sent to self (SDM table 10-3).
            log::debug!(target: LOG, "APIC {}: {mode:?} to self ignored", self.id);
            return Effect::None;
        }
        let x2 = self.x2apic_mode();
        let msg = Message {
            vector,
            mode,
            dest: if x2 {
                (icr >> 32) as u32
            } else {
                (icr >> 56) as u32
            },
            logical: icr & (1 << 11) != 0,
            level: icr & (1 << 14) != 0,
            trigger_level: icr & (1 << 15) != 0,
            shorthand,
            x2apic: x2,
            source: Some(self.bus_index),
        };
        log::trace!(target: LOG, "APIC {}: IPI {msg:?}", self.id);
        Effect::Send(msg)
    }

    /// The timer's mode (LVT timer bits 18:17).
    pub(super) fn timer_mode(&self) -> TimerMode {
        TimerMode::from_lvt(self.lvt[lvt::TIMER])
    }

    /// Asks the timer thread to poll again (the timer was reprogrammed).
    pub(super) fn wake_timer(&self) {
        if let Some(w) = &self.waker {
            w.wake();
        }
    }

    /// IA32_TSC_DEADLINE: 0 unless the timer is in TSC-deadline mode (as KVM).
    pub fn tsc_deadline(&self) -> u64 {
        if self.timer_mode() == TimerMode::TscDeadline {
            self.timer.deadline
        } else {
            0
        }
    }

    /// WRMSR IA32_TSC_DEADLINE: `tsc_now` is the TSC at the time of the write. Ignored
    /// outside TSC-deadline mode (SDM 10.5.4.1).
    pub fn set_tsc_deadline(&mut self, deadline: u64, tsc_now: u64) {
        if !self.hw_enabled() || self.timer_mode() != TimerMode::TscDeadline {
            return;
        }
        let now = self.clock.now_ns();
        self.timer.set_deadline(deadline, tsc_now, self.tsc_hz, now);
        self.wake_timer();
    }

    /// The timer's current count (for tests and the register).
    pub fn timer_current(&self) -> u32 {
        self.timer.current(self.clock.now_ns(), self.timer_mode())
    }
}

impl TimerDevice for LocalApic {
    /// Fires the timer's LVT entry when the count reaches zero or the TSC deadline
    /// passes.
    fn poll_timer(&mut self, now: u64) -> Option<u64> {
        let mode = self.timer_mode();
        let fired = self.timer.poll(now, mode);
        if fired {
            self.fire_lvt(lvt::TIMER);
        }
        let next = self.timer.next_expiry(mode)?;
        Some(
            if fired && mode == TimerMode::Periodic && self.timer.period_ns() < MIN_PERIOD_NS {
                // A very short period: at most one interrupt per MIN_PERIOD_NS (the
                // periods in between coalesce).
                next.max(now.saturating_add(MIN_PERIOD_NS))
            } else {
                next
            },
        )
    }
}
