//! The CPU's side of its local APIC under TCG.
//!
//! The frontend knows no APIC model: the engine attaches one through
//! [`LocalApicPort`] ([`X86Cpu::attach_apic`]). With a port attached:
//! - physical accesses to the xAPIC register page (IA32_APIC_BASE[MAXPHYADDR-1:12],
//!   while the APIC is enabled in xAPIC mode) go to this CPU's APIC before the shared
//!   MMIO bus or RAM ([`crate::mmu::read_phys`]/[`crate::mmu::write_phys`]); the TLB
//!   caches only linear → physical translations, so every access to the page reaches
//!   the APIC;
//! - RDMSR/WRMSR of IA32_APIC_BASE (0x1B), IA32_TSC_DEADLINE (0x6E0) and the x2APIC
//!   registers (0x800-0x8FF) reach the APIC;
//! - CR8 reads and writes TPR[7:4] (SDM 10.8.6.1);
//! - CPUID advertises the APIC (leaf 1 EDX bit 9, cleared while IA32_APIC_BASE.EN is
//!   clear, as the SDM says), x2APIC (ECX bit 21) and the TSC-deadline timer (ECX bit
//!   24), and reports the APIC ID in leaf 1 EBX[31:24].
//!
//! Without a port (unit tests, the hybrid engine's one-instruction CPU, lockstep
//! environments), IA32_APIC_BASE is plain state, CR8 is a register of its own and
//! CPUID advertises no APIC.
//!
//! INIT and SIPI ([`X86Cpu::init_reset`], [`X86Cpu::start_up`]) are the CPU's part of
//! the MP start-up protocol; the engine's run loop calls them for the APIC's events.

use crate::cpu::X86Cpu;
use crate::cpuid::{ecx1, edx1, CpuidModel};
use crate::seg::gp0;
use vireo_core::cpu::{ctl, msr, reg, sreg, CpuState, Segment};
use vireo_core::exec::Fault;

/// IA32_TSC_DEADLINE.
pub const TSC_DEADLINE: u32 = 0x6e0;
/// The x2APIC register MSRs.
pub const X2APIC_MSRS: std::ops::RangeInclusive<u32> = 0x800..=0x8ff;

/// An access the APIC refuses: #GP(0) for the CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApicGp;

/// This CPU's local APIC as the frontend reaches it. Methods take `&self`: physical
/// reads happen through shared references to the CPU; the implementation locks.
pub trait LocalApicPort: Send {
    /// Reads the xAPIC register page at `offset` (0-0xFFF).
    fn mmio_read(&self, offset: u64, data: &mut [u8]);
    /// Writes the xAPIC register page at `offset`.
    fn mmio_write(&self, offset: u64, data: &[u8]);
    /// IA32_APIC_BASE.
    fn apic_base(&self) -> u64;
    /// WRMSR IA32_APIC_BASE (mode-transition rules; the frontend has checked the bits
    /// above MAXPHYADDR).
    fn set_apic_base(&self, v: u64) -> Result<(), ApicGp>;
    /// Loads IA32_APIC_BASE from a saved state (no transition rules).
    fn load_apic_base(&self, v: u64);
    /// The physical page of the xAPIC registers, while they are decoded.
    fn mmio_page(&self) -> Option<u64>;
    /// RDMSR of an x2APIC register.
    fn read_x2apic(&self, index: u32) -> Result<u64, ApicGp>;
    /// WRMSR of an x2APIC register.
    fn write_x2apic(&self, index: u32, v: u64) -> Result<(), ApicGp>;
    /// IA32_TSC_DEADLINE.
    fn tsc_deadline(&self) -> u64;
    /// WRMSR IA32_TSC_DEADLINE; `tsc_now` is the TSC at the write.
    fn set_tsc_deadline(&self, deadline: u64, tsc_now: u64);
    /// The task-priority register.
    fn tpr(&self) -> u8;
    /// Writes the task-priority register.
    fn set_tpr(&self, v: u8);
}

impl CpuidModel {
    /// The model of a CPU with a local APIC (initial APIC ID `apic_id`): the APIC,
    /// x2APIC and TSC-deadline timer flags and the ID in leaf 1 EBX[31:24].
    pub fn with_local_apic(mut self, apic_id: u32) -> CpuidModel {
        self.apic_id = apic_id;
        self.edx1 |= edx1::APIC;
        self.ecx1 |= ecx1::X2APIC | ecx1::TSC_DEADLINE;
        self
    }
}

impl X86Cpu {
    /// Attaches this CPU's local APIC (initial APIC ID `apic_id`) and advertises it
    /// in CPUID ([`CpuidModel::with_local_apic`]).
    pub fn attach_apic(&mut self, apic: Box<dyn LocalApicPort>, apic_id: u32) {
        apic.load_apic_base(self.state.msr.apic_base);
        self.apic = Some(apic);
        self.cpuid = self.cpuid.clone().with_local_apic(apic_id);
        self.refresh_apic();
    }

    /// Recomputes what depends on IA32_APIC_BASE: the decoded register page and the
    /// CPUID APIC flag.
    pub(crate) fn refresh_apic(&mut self) {
        // Fast TLB entries were made knowing where the APIC page was.
        self.mmu.fast.flush();
        let Some(a) = &self.apic else {
            self.apic_page = None;
            return;
        };
        self.apic_page = a.mmio_page();
        if a.apic_base() & (1 << 11) != 0 {
            self.cpuid.edx1 |= edx1::APIC;
        } else {
            self.cpuid.edx1 &= !edx1::APIC;
        }
    }

    /// INIT (SDM 9.1.1, table 9-1): the CPU state of a reset, except that the x87/SSE
    /// state, XCR0, the MSRs (IA32_APIC_BASE included), CR0.CD/NW and the TSC are
    /// kept (as KVM's INIT). The bootstrap processor then runs from the reset vector;
    /// an application processor waits for a start-up IPI.
    pub fn init_reset(&mut self) {
        let old = self.state();
        let mut s = CpuState::reset();
        s.fpu = old.fpu;
        s.xcr0 = old.xcr0;
        s.msr = old.msr;
        let cache = ctl::CR0_CD | ctl::CR0_NW;
        s.cr0 = (s.cr0 & !cache) | (old.cr0 & cache);
        s.gpr[reg::RDX] = u64::from(self.cpuid.signature());
        s.events.wait_for_sipi = old.msr.apic_base & (1 << 8) == 0;
        // The TSC keeps counting as it was: keep its offset rather than setting the
        // value read a moment ago (which would move it back by the time in between,
        // and Linux measures that as a TSC warp between CPUs).
        let tsc_offset = self.msrs.tsc_offset;
        self.set_state(s);
        self.msrs.tsc_offset = tsc_offset;
    }

    /// A start-up IPI with `vector`: a CPU waiting for SIPI starts in real mode at
    /// `vector:0000` (physical `vector << 12`). Ignored otherwise.
    pub fn start_up(&mut self, vector: u8) {
        if !self.state.events.wait_for_sipi {
            return;
        }
        let sel = u16::from(vector) << 8;
        self.state.seg[sreg::CS] = Segment::real_mode(sel, true);
        self.state.rip = 0;
        self.state.events.wait_for_sipi = false;
        self.state.events.halted = false;
    }
}

/// The APIC port that claims physical address `pa`, if any (the register page in
/// xAPIC mode).
#[inline]
pub(crate) fn claim(cpu: &X86Cpu, pa: u64) -> Option<&dyn LocalApicPort> {
    match cpu.apic_page {
        Some(page) if pa & !0xfff == page => cpu.apic.as_deref(),
        _ => None,
    }
}

/// RDMSR of an APIC MSR: `None` when `index` is not the APIC's (or no APIC is
/// attached).
pub(crate) fn read_msr(cpu: &X86Cpu, index: u32) -> Option<Result<u64, Fault>> {
    let a = cpu.apic.as_deref()?;
    Some(match index {
        msr::APIC_BASE => Ok(a.apic_base()),
        TSC_DEADLINE => Ok(a.tsc_deadline()),
        i if X2APIC_MSRS.contains(&i) => a.read_x2apic(i).map_err(|_| gp0()),
        _ => return None,
    })
}

/// WRMSR of an APIC MSR: `None` when `index` is not the APIC's.
pub(crate) fn write_msr(cpu: &mut X86Cpu, index: u32, v: u64) -> Option<Result<(), Fault>> {
    let tsc = cpu.tsc();
    let phys_rsvd = !((1u64 << crate::mmu::PHYS_BITS) - 1);
    let a = cpu.apic.as_deref()?;
    let r = match index {
        msr::APIC_BASE => {
            if v & phys_rsvd != 0 {
                return Some(Err(gp0()));
            }
            if a.set_apic_base(v).is_err() {
                return Some(Err(gp0()));
            }
            cpu.state.msr.apic_base = v;
            cpu.refresh_apic();
            Ok(())
        }
        TSC_DEADLINE => {
            a.set_tsc_deadline(v, tsc);
            Ok(())
        }
        i if X2APIC_MSRS.contains(&i) => a.write_x2apic(i, v).map_err(|_| gp0()),
        _ => return None,
    };
    Some(r)
}

/// CR8: TPR[7:4] with an APIC, else the register itself.
pub(crate) fn read_cr8(cpu: &X86Cpu) -> u64 {
    match &cpu.apic {
        Some(a) => u64::from(a.tpr() >> 4),
        None => cpu.state.cr8,
    }
}

/// MOV to CR8 (`v` already checked to fit in 4 bits): TPR = v << 4.
pub(crate) fn write_cr8(cpu: &mut X86Cpu, v: u64) {
    cpu.state.cr8 = v;
    if let Some(a) = &cpu.apic {
        a.set_tpr((v as u8 & 0xf) << 4);
    }
}

#[cfg(test)]
#[path = "apic_tests.rs"]
mod tests;
