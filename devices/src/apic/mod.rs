//! The APIC interrupt architecture for engines without an in-kernel irqchip (TCG):
//! local APICs, the 82093AA-style IOAPIC, the "APIC bus" that carries interrupt
//! messages between them, and the PC GSI router that feeds the IOAPIC and the 8259A
//! pair from device IRQ lines.
//!
//! - [`lapic::LocalApic`]: one CPU's local APIC (Intel SDM vol. 3 ch. 10/11): xAPIC
//!   registers and x2APIC MSRs, IRR/ISR/TMR, task and processor priority, EOI, the
//!   local vector table, the timer (one-shot, periodic, TSC-deadline) on the virtual
//!   clock, IPIs.
//! - [`ioapic::Ioapic`]: 24 redirection entries, edge and level inputs (remote IRR
//!   cleared by EOI broadcasts), all delivery modes.
//! - [`ApicBus`]: knows every local APIC and the IOAPIC; delivers [`Message`]s by
//!   destination (physical, logical flat/cluster, x2APIC cluster, shorthands, lowest
//!   priority) and broadcasts EOIs of level-triggered vectors.
//! - [`LapicHandle`]: what a CPU holds: its local APIC plus the bus, so that register
//!   writes that send IPIs or EOIs reach the other chips after the APIC's lock is
//!   dropped (the lock order is always IOAPIC → local APIC, never the reverse).
//! - [`router::ApicIrqRouter`]: the [`vireo_core::IrqChip`] of the TCG machine: ISA
//!   IRQs to the PIC and to the IOAPIC (IRQ 0 to pin 2, as the MADT says), other GSIs
//!   to the IOAPIC pin of the same number.
//!
//! The CPU side (interrupt acknowledge, INIT/SIPI/NMI events, CR8, MSRs, the MMIO page)
//! is reached through [`LapicHandle`]; no chip here knows which engine runs the CPU.

pub mod ioapic;
pub mod lapic;
pub mod lapic_regs;
mod lapic_timer;
pub mod router;
#[cfg(test)]
mod tests_bus;
#[cfg(test)]
mod tests_lapic;

use parking_lot::{Mutex, RwLock};
use std::sync::Arc;

pub use ioapic::{Ioapic, SharedIoapic};
pub use lapic::{LocalApic, SharedLapic};
pub use router::ApicIrqRouter;

/// How an interrupt message is delivered (ICR, LVT and redirection-entry bits 10:8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryMode {
    Fixed,
    LowestPriority,
    Smi,
    Nmi,
    Init,
    StartUp,
    ExtInt,
    /// Encoding 011b: reserved.
    Reserved,
}

impl DeliveryMode {
    /// Decodes bits 10:8 of an ICR, LVT entry or redirection entry.
    pub fn from_bits(v: u64) -> DeliveryMode {
        match (v >> 8) & 7 {
            0 => DeliveryMode::Fixed,
            1 => DeliveryMode::LowestPriority,
            2 => DeliveryMode::Smi,
            4 => DeliveryMode::Nmi,
            5 => DeliveryMode::Init,
            6 => DeliveryMode::StartUp,
            7 => DeliveryMode::ExtInt,
            _ => DeliveryMode::Reserved,
        }
    }
}

/// The destination shorthand of an IPI (ICR bits 19:18).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shorthand {
    None,
    SelfOnly,
    AllIncludingSelf,
    AllExcludingSelf,
}

/// An interrupt message on the APIC bus: an IPI, an IOAPIC redirection, a self-IPI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Message {
    pub vector: u8,
    pub mode: DeliveryMode,
    /// Destination: an APIC ID (physical) or a logical mask; 8 bits in xAPIC format,
    /// 32 in x2APIC format.
    pub dest: u32,
    /// Logical destination mode.
    pub logical: bool,
    /// Level: assert (true) or de-assert (an INIT level de-assert is a no-op).
    pub level: bool,
    /// Level-triggered (the vector is set in the TMR and its EOI is broadcast).
    pub trigger_level: bool,
    pub shorthand: Shorthand,
    /// The destination is in x2APIC format (32 bits, broadcast 0xFFFFFFFF).
    pub x2apic: bool,
    /// The sending local APIC (its index on the bus), for the shorthands.
    pub source: Option<usize>,
}

impl Message {
    /// A fixed, edge-triggered, physical-destination message to APIC `dest`.
    pub fn fixed(vector: u8, dest: u32) -> Message {
        Message {
            vector,
            mode: DeliveryMode::Fixed,
            dest,
            logical: false,
            level: true,
            trigger_level: false,
            shorthand: Shorthand::None,
            x2apic: false,
            source: None,
        }
    }
}

/// Something a CPU must act on outside the IRR/ISR path (SDM 10.8.1: NMI, INIT and
/// start-up messages bypass the IRR and go to the processor core).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuEvent {
    /// A non-maskable interrupt (vector 2), blocked by the CPU until IRET.
    Nmi,
    /// INIT: the CPU resets (an application processor then waits for a SIPI).
    Init,
    /// A start-up IPI: a CPU waiting for SIPI starts in real mode at `vector << 12`.
    StartUp(u8),
}

/// What a register write asks of the rest of the system, done after the local APIC's
/// lock is released.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    None,
    /// Send this IPI on the bus.
    Send(Message),
    /// EOI of a level-triggered vector: broadcast to the IOAPIC.
    Eoi(u8),
}

/// A function told about EOIs of level-triggered vectors (the IOAPIC).
pub type EoiListener = Box<dyn Fn(u8) + Send + Sync>;

/// The bus between the local APICs and the IOAPIC.
#[derive(Default)]
pub struct ApicBus {
    lapics: RwLock<Vec<SharedLapic>>,
    eoi: RwLock<Option<EoiListener>>,
}

impl ApicBus {
    /// A bus with no local APIC and no EOI listener yet.
    pub fn new() -> Arc<ApicBus> {
        Arc::new(ApicBus::default())
    }

    /// Connects a local APIC; returns its index on the bus (the CPU index).
    pub fn attach(&self, lapic: SharedLapic) -> usize {
        let mut l = self.lapics.write();
        l.push(lapic);
        l.len() - 1
    }

    /// Installs the receiver of EOI broadcasts (the IOAPIC).
    pub fn set_eoi_listener(&self, listener: EoiListener) {
        *self.eoi.write() = Some(listener);
    }

    /// The local APIC at bus index `i`.
    pub fn lapic(&self, i: usize) -> Option<SharedLapic> {
        self.lapics.read().get(i).cloned()
    }

    /// Number of local APICs.
    pub fn len(&self) -> usize {
        self.lapics.read().len()
    }

    /// Whether no local APIC is attached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Delivers `msg` to every local APIC it is addressed to. The caller must not hold
    /// any local APIC's lock.
    pub fn deliver(&self, msg: &Message) {
        let lapics = self.lapics.read();
        let targets: Vec<usize> = (0..lapics.len())
            .filter(|&i| match msg.shorthand {
                Shorthand::SelfOnly => msg.source == Some(i),
                Shorthand::AllIncludingSelf => true,
                Shorthand::AllExcludingSelf => msg.source != Some(i),
                Shorthand::None => lapics[i].lock().matches(msg.dest, msg.logical, msg.x2apic),
            })
            .collect();
        if msg.mode == DeliveryMode::LowestPriority && msg.shorthand == Shorthand::None {
            // Lowest priority: the enabled target with the lowest arbitration priority,
            // then the lowest bus index (SDM 10.6.2.4 leaves the tie-break to the
            // implementation).
            let best = targets
                .iter()
                .filter_map(|&i| {
                    let l = lapics[i].lock();
                    l.accepts_fixed().then(|| (l.arbitration_priority(), i))
                })
                .min();
            if let Some((_, i)) = best {
                lapics[i].lock().accept(msg);
            } else {
                log::debug!(target: LOG, "lowest-priority message {msg:?} has no target");
            }
            return;
        }
        if targets.is_empty() {
            log::debug!(target: LOG, "message {msg:?} has no target");
        }
        for i in targets {
            lapics[i].lock().accept(msg);
        }
    }

    /// Broadcasts the EOI of level-triggered `vector` to the IOAPIC.
    pub fn broadcast_eoi(&self, vector: u8) {
        if let Some(l) = &*self.eoi.read() {
            l(vector);
        }
    }

    /// Carries out a register write's [`Effect`].
    pub fn apply(&self, effect: Effect) {
        match effect {
            Effect::None => {}
            Effect::Send(msg) => self.deliver(&msg),
            Effect::Eoi(v) => self.broadcast_eoi(v),
        }
    }
}

const LOG: &str = "vireo::dev::apic";

/// One CPU's view of the APIC system: its local APIC and the bus. Every method takes
/// the local APIC's lock only for itself and performs IPIs and EOI broadcasts after
/// releasing it.
#[derive(Clone)]
pub struct LapicHandle {
    pub lapic: SharedLapic,
    pub bus: Arc<ApicBus>,
}

impl LapicHandle {
    /// Attaches `lapic` to `bus` and returns the CPU's handle.
    pub fn attach(lapic: SharedLapic, bus: Arc<ApicBus>) -> LapicHandle {
        let index = bus.attach(lapic.clone());
        lapic.lock().set_bus_index(index);
        LapicHandle { lapic, bus }
    }

    /// Reads the xAPIC register page at `offset`.
    pub fn mmio_read(&self, offset: u64, data: &mut [u8]) {
        self.lapic.lock().mmio_read(offset, data);
    }

    /// Writes the xAPIC register page at `offset`.
    pub fn mmio_write(&self, offset: u64, data: &[u8]) {
        let e = self.lapic.lock().mmio_write(offset, data);
        self.bus.apply(e);
    }

    /// RDMSR of x2APIC register MSR `index` (0x800-0x8FF); `Err` is #GP.
    pub fn read_x2apic(&self, index: u32) -> Result<u64, lapic::ApicFault> {
        self.lapic.lock().read_x2apic(index)
    }

    /// WRMSR of x2APIC register MSR `index`; `Err` is #GP.
    pub fn write_x2apic(&self, index: u32, v: u64) -> Result<(), lapic::ApicFault> {
        let e = self.lapic.lock().write_x2apic(index, v)?;
        self.bus.apply(e);
        Ok(())
    }

    /// IA32_APIC_BASE.
    pub fn apic_base(&self) -> u64 {
        self.lapic.lock().apic_base()
    }

    /// WRMSR of IA32_APIC_BASE with the architectural checks; `Err` is #GP.
    pub fn set_apic_base(&self, v: u64) -> Result<(), lapic::ApicFault> {
        self.lapic.lock().set_apic_base(v)
    }

    /// The task priority (TPR[7:0]).
    pub fn tpr(&self) -> u8 {
        self.lapic.lock().tpr()
    }

    /// Sets the task priority (CR8 writes `v << 4`).
    pub fn set_tpr(&self, v: u8) {
        self.lapic.lock().set_tpr(v);
    }

    /// IA32_TSC_DEADLINE.
    pub fn tsc_deadline(&self) -> u64 {
        self.lapic.lock().tsc_deadline()
    }

    /// WRMSR of IA32_TSC_DEADLINE, given the TSC at the time of the write.
    pub fn set_tsc_deadline(&self, deadline: u64, tsc_now: u64) {
        self.lapic.lock().set_tsc_deadline(deadline, tsc_now);
    }
}

/// Wraps a local APIC to be shared by its CPU, the bus and the timer thread.
pub fn shared(lapic: LocalApic) -> SharedLapic {
    Arc::new(Mutex::new(lapic))
}
