//! The local APIC's register file: the xAPIC MMIO page (SDM table 10-1) and the
//! x2APIC MSRs (SDM table 10-6, MSR 0x800 + offset/16).
//!
//! xAPIC registers are 32 bits wide on 16-byte boundaries. Reads of any size return
//! the bytes of the register (the other 12 bytes of each slot read as 0); only aligned
//! 32-bit writes take effect (as in KVM: other sizes are ignored). A read or write of
//! a reserved offset sets ESR bit 7 (illegal register address) and reads 0.

use super::lapic::{esr, lvt, ApicFault, LocalApic, LOG, SVR_ENABLE, VERSION};
use super::{Effect, Message, Shorthand};

/// Register numbers: MMIO offset / 16, x2APIC MSR - 0x800.
pub mod reg {
    pub const ID: u32 = 0x02;
    pub const VERSION: u32 = 0x03;
    pub const TPR: u32 = 0x08;
    pub const APR: u32 = 0x09;
    pub const PPR: u32 = 0x0a;
    pub const EOI: u32 = 0x0b;
    pub const RRD: u32 = 0x0c;
    pub const LDR: u32 = 0x0d;
    pub const DFR: u32 = 0x0e;
    pub const SVR: u32 = 0x0f;
    pub const ISR: u32 = 0x10;
    pub const TMR: u32 = 0x18;
    pub const IRR: u32 = 0x20;
    pub const ESR: u32 = 0x28;
    pub const ICR_LOW: u32 = 0x30;
    pub const ICR_HIGH: u32 = 0x31;
    pub const LVT_TIMER: u32 = 0x32;
    pub const LVT_ERROR: u32 = 0x37;
    pub const TIMER_INITIAL: u32 = 0x38;
    pub const TIMER_CURRENT: u32 = 0x39;
    pub const TIMER_DIVIDE: u32 = 0x3e;
    pub const SELF_IPI: u32 = 0x3f;
}

/// First x2APIC MSR.
pub const X2APIC_MSR_BASE: u32 = 0x800;

/// Writable bits of each LVT entry (timer, thermal, perf, LINT0, LINT1, error):
/// vector, mask, and per entry the timer mode, delivery mode, polarity and trigger.
const LVT_WRITABLE: [u32; lvt::COUNT] = [
    0x0007_00ff,
    0x0001_07ff,
    0x0001_07ff,
    0x0001_a7ff,
    0x0001_a7ff,
    0x0001_00ff,
];
/// ICR low-half writable bits: vector, delivery mode, destination mode, level,
/// trigger mode, shorthand (delivery status reads 0: IPIs are delivered at once).
const ICR_LOW_WRITABLE: u32 = 0x000c_cfff;

impl LocalApic {
    /// The xAPIC value of register `r`, `None` for a reserved or write-only register.
    fn read_reg(&self, r: u32) -> Option<u32> {
        let word = |v: &[u32; 8]| v[(r & 7) as usize];
        Some(match r {
            reg::ID => u32::from(self.xapic_id) << 24,
            reg::VERSION => VERSION,
            reg::TPR => u32::from(self.tpr),
            reg::APR => u32::from(self.arbitration_priority()),
            reg::PPR => u32::from(self.ppr()),
            reg::LDR => self.ldr,
            reg::DFR => self.dfr,
            reg::SVR => self.svr,
            0x10..=0x17 => word(&self.isr),
            0x18..=0x1f => word(&self.tmr),
            0x20..=0x27 => word(&self.irr),
            reg::ESR => self.esr,
            reg::ICR_LOW => self.icr as u32,
            reg::ICR_HIGH => (self.icr >> 32) as u32,
            0x32..=0x37 => self.lvt[(r - reg::LVT_TIMER) as usize],
            reg::TIMER_INITIAL => self.timer.initial,
            reg::TIMER_CURRENT => self.timer_current(),
            reg::TIMER_DIVIDE => self.timer.divide,
            _ => return None,
        })
    }

    /// Writes register `r` (shared by the xAPIC page and the x2APIC MSRs; the callers
    /// check the access rules). `Err` for a read-only or reserved register.
    fn write_reg(&mut self, r: u32, v: u32) -> Result<Effect, ApicFault> {
        let now = self.clock.now_ns();
        match r {
            reg::ID => self.xapic_id = (v >> 24) as u8,
            reg::TPR => self.set_tpr(v as u8),
            reg::EOI => return Ok(self.eoi()),
            reg::LDR => self.ldr = v & 0xff00_0000,
            reg::DFR => self.dfr = v | 0x0fff_ffff,
            reg::SVR => {
                self.svr = v & 0x3ff;
                if v & SVR_ENABLE == 0 {
                    // Software disable masks every LVT entry (SDM 10.4.7.2).
                    for l in self.lvt.iter_mut() {
                        *l |= lvt::MASKED;
                    }
                }
                self.notify_if_pending();
            }
            reg::ESR => {
                self.esr = std::mem::take(&mut self.esr_pending);
            }
            reg::ICR_LOW => {
                self.icr = (self.icr & !0xffff_ffff) | u64::from(v & ICR_LOW_WRITABLE);
                return Ok(self.send_ipi());
            }
            reg::ICR_HIGH => {
                self.icr = (self.icr & 0xffff_ffff) | (u64::from(v & 0xff00_0000) << 32);
            }
            0x32..=0x37 => {
                let i = (r - reg::LVT_TIMER) as usize;
                let old_mode = self.timer_mode();
                let keep = self.lvt[i] & lvt::REMOTE_IRR;
                let mut val = (v & LVT_WRITABLE[i]) | keep;
                if !self.sw_enabled() {
                    val |= lvt::MASKED;
                }
                self.lvt[i] = val;
                if i == lvt::TIMER {
                    let new_mode = self.timer_mode();
                    self.timer.mode_changed(old_mode, new_mode, now);
                    self.wake_timer();
                } else if i == lvt::LINT0 {
                    // The virtual wire may have opened to a waiting 8259A request
                    // (whose rising edge the CPU already saw).
                    self.notify_irq();
                }
            }
            reg::TIMER_INITIAL => {
                let mode = self.timer_mode();
                self.timer.set_initial(v, now, mode);
                self.wake_timer();
            }
            reg::TIMER_DIVIDE => {
                let mode = self.timer_mode();
                self.timer.set_divide(v, now, mode);
                self.wake_timer();
            }
            _ => return Err(ApicFault),
        }
        Ok(Effect::None)
    }

    /// A read of the xAPIC register page at `offset` (any size; see the module doc).
    pub fn mmio_read(&mut self, offset: u64, data: &mut [u8]) {
        let off = offset & 0xfff;
        let r = (off >> 4) as u32;
        let v = match r {
            reg::EOI => Some(0),
            _ => self.read_reg(r),
        };
        let v = v.unwrap_or_else(|| {
            log::debug!(target: LOG, "APIC {}: read of reserved register {off:#x}", self.id);
            self.error(esr::ILLEGAL_REGISTER);
            0
        });
        let bytes = v.to_le_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            let pos = (off & 0xf) as usize + i;
            *b = bytes.get(pos).copied().unwrap_or(0);
        }
    }

    /// A write of the xAPIC register page at `offset`: only aligned 32-bit writes count.
    pub fn mmio_write(&mut self, offset: u64, data: &[u8]) -> Effect {
        let off = offset & 0xfff;
        if data.len() != 4 || off & 0xf != 0 {
            log::debug!(target: LOG, "APIC {}: ignored {}-byte write at {off:#x}", self.id, data.len());
            return Effect::None;
        }
        let v = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
        let r = (off >> 4) as u32;
        let writable = matches!(
            r,
            reg::ID
                | reg::TPR
                | reg::EOI
                | reg::LDR
                | reg::DFR
                | reg::SVR
                | reg::ESR
                | reg::ICR_LOW
                | reg::ICR_HIGH
                | 0x32..=0x37 | reg::TIMER_INITIAL | reg::TIMER_DIVIDE
        );
        let readonly = matches!(
            r,
            reg::VERSION | reg::APR | reg::PPR | reg::RRD | 0x10..=0x27 | reg::TIMER_CURRENT
        );
        if writable {
            if let Ok(e) = self.write_reg(r, v) {
                return e;
            }
        } else if !readonly {
            log::debug!(target: LOG, "APIC {}: write of reserved register {off:#x}", self.id);
            self.error(esr::ILLEGAL_REGISTER);
        }
        Effect::None
    }

    /// RDMSR of x2APIC MSR `index` (0x800-0x8FF).
    pub fn read_x2apic(&self, index: u32) -> Result<u64, ApicFault> {
        if !self.x2apic_mode() {
            return Err(ApicFault);
        }
        let r = index.wrapping_sub(X2APIC_MSR_BASE);
        Ok(match r {
            reg::ID => u64::from(self.id),
            reg::LDR => u64::from(self.x2apic_ldr()),
            reg::ICR_LOW => self.icr,
            // Not in x2APIC mode (APR, DFR, ICR high, remote read) or write-only.
            reg::APR | reg::DFR | reg::ICR_HIGH | reg::RRD | reg::EOI | reg::SELF_IPI => {
                return Err(ApicFault)
            }
            _ => u64::from(self.read_reg(r).ok_or(ApicFault)?),
        })
    }

    /// WRMSR of x2APIC MSR `index` with the x2APIC rules (see the module doc of
    /// [`super::lapic`]).
    pub fn write_x2apic(&mut self, index: u32, v: u64) -> Result<Effect, ApicFault> {
        if !self.x2apic_mode() {
            return Err(ApicFault);
        }
        let r = index.wrapping_sub(X2APIC_MSR_BASE);
        if r != reg::ICR_LOW && v >> 32 != 0 {
            return Err(ApicFault);
        }
        let v32 = v as u32;
        match r {
            reg::TPR | reg::SVR | 0x32..=0x37 | reg::TIMER_INITIAL | reg::TIMER_DIVIDE => {
                self.write_reg(r, v32)
            }
            reg::EOI | reg::ESR if v32 != 0 => Err(ApicFault),
            reg::EOI | reg::ESR => self.write_reg(r, 0),
            reg::ICR_LOW => {
                self.icr = (v & 0xffff_ffff_0000_0000) | (v & u64::from(ICR_LOW_WRITABLE));
                Ok(self.send_ipi())
            }
            reg::SELF_IPI => {
                if v32 >> 8 != 0 {
                    return Err(ApicFault);
                }
                Ok(Effect::Send(Message {
                    shorthand: Shorthand::SelfOnly,
                    x2apic: true,
                    source: Some(self.bus_index),
                    ..Message::fixed(v32 as u8, 0)
                }))
            }
            _ => Err(ApicFault),
        }
    }

    /// Writes a register by MMIO offset bypassing the access rules (tests).
    #[cfg(test)]
    pub(super) fn poke(&mut self, offset: u64, v: u32) -> Effect {
        self.mmio_write(offset, &v.to_le_bytes())
    }

    /// Reads a register by MMIO offset (tests).
    #[cfg(test)]
    pub(super) fn peek(&mut self, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        self.mmio_read(offset, &mut b);
        u32::from_le_bytes(b)
    }
}
