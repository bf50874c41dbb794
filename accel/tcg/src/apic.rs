//! The local APIC as the TCG CPU's interrupt controller.
//!
//! - [`ApicInterrupts`]: the [`InterruptController`] of a CPU with a local APIC. An
//!   INTA takes the highest deliverable fixed vector from the APIC; otherwise, when
//!   the APIC passes 8259A interrupts (LINT0 unmasked in ExtINT mode, an ExtINT
//!   message, or the APIC globally disabled: QEMU's `cpu_get_pic_interrupt` order),
//!   the PIC's. NMI, INIT and SIPI come as events. The APIC's lock is always released
//!   before the PIC's is taken.
//! - [`CpuApicPort`]: the frontend's [`LocalApicPort`] (register page, MSRs, CR8) on
//!   a [`LapicHandle`].

use crate::irq::{InterruptController, IntrNotify};
use std::sync::Arc;
use vireo_devices::apic::{lapic::ApicFault, CpuEvent, LapicHandle};
use vireo_devices::pic::SharedPic;
use vireo_x86::apic::{ApicGp, LocalApicPort};

/// A CPU's local APIC (and the 8259A pair behind its LINT0) as its interrupt
/// controller.
pub struct ApicInterrupts {
    lapic: LapicHandle,
    pic: Option<SharedPic>,
}

impl ApicInterrupts {
    /// The controller of the CPU that owns `lapic`, with `pic` behind its LINT0.
    pub fn new(lapic: LapicHandle, pic: Option<SharedPic>) -> ApicInterrupts {
        ApicInterrupts { lapic, pic }
    }
}

impl InterruptController for ApicInterrupts {
    fn pending(&self) -> bool {
        let (fixed, pic_ok) = {
            let l = self.lapic.lapic.lock();
            (l.has_interrupt(), l.accepts_pic())
        };
        fixed || (pic_ok && self.pic.as_ref().is_some_and(|p| p.lock().pending()))
    }

    fn acknowledge(&self) -> Option<u8> {
        let (pic_ok, extint) = {
            let mut l = self.lapic.lapic.lock();
            if let Some(v) = l.acknowledge() {
                return Some(v);
            }
            (l.accepts_pic(), l.take_extint())
        };
        if !(pic_ok || extint) {
            return None;
        }
        let mut pic = self.pic.as_ref()?.lock();
        pic.pending().then(|| pic.acknowledge())
    }

    fn set_notify(&self, notify: IntrNotify) {
        let n: Arc<dyn Fn() + Send + Sync> = Arc::from(notify);
        let n2 = n.clone();
        self.lapic
            .lapic
            .lock()
            .set_irq_notify(Box::new(move || n2()));
        if let Some(p) = &self.pic {
            p.lock().set_intr_notify(Box::new(move || n()));
        }
    }

    fn set_event_notify(&self, notify: IntrNotify) {
        self.lapic.lapic.lock().set_event_notify(notify);
    }

    fn take_event(&self) -> Option<CpuEvent> {
        self.lapic.lapic.lock().take_event()
    }

    fn has_events(&self) -> bool {
        true
    }
}

/// The frontend's view of a local APIC.
pub struct CpuApicPort(pub LapicHandle);

fn gp<T>(r: Result<T, ApicFault>) -> Result<T, ApicGp> {
    r.map_err(|_| ApicGp)
}

impl LocalApicPort for CpuApicPort {
    fn mmio_read(&self, offset: u64, data: &mut [u8]) {
        self.0.mmio_read(offset, data);
    }
    fn mmio_write(&self, offset: u64, data: &[u8]) {
        self.0.mmio_write(offset, data);
    }
    fn apic_base(&self) -> u64 {
        self.0.apic_base()
    }
    fn set_apic_base(&self, v: u64) -> Result<(), ApicGp> {
        gp(self.0.set_apic_base(v))
    }
    fn load_apic_base(&self, v: u64) {
        self.0.lapic.lock().load_apic_base(v);
    }
    fn mmio_page(&self) -> Option<u64> {
        self.0.lapic.lock().mmio_page()
    }
    fn read_x2apic(&self, index: u32) -> Result<u64, ApicGp> {
        gp(self.0.read_x2apic(index))
    }
    fn write_x2apic(&self, index: u32, v: u64) -> Result<(), ApicGp> {
        gp(self.0.write_x2apic(index, v))
    }
    fn tsc_deadline(&self) -> u64 {
        self.0.tsc_deadline()
    }
    fn set_tsc_deadline(&self, deadline: u64, tsc_now: u64) {
        self.0.set_tsc_deadline(deadline, tsc_now);
    }
    fn tpr(&self) -> u8 {
        self.0.tpr()
    }
    fn set_tpr(&self, v: u8) {
        self.0.set_tpr(v);
    }
}
