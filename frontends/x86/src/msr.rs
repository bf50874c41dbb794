//! Model-specific registers (RDMSR/WRMSR) and the time-stamp counter.
//!
//! The TSC is `source + offset`: the source is [`X86Cpu::tsc_source`] if the run loop
//! installed one (e.g. the virtual clock scaled to TSC ticks), else the instruction
//! count [`X86Cpu::icount`]; writes to IA32_TSC move the offset.

use crate::cpu::X86Cpu;
use crate::cpuid::{edx1, ext1};
use crate::mmu::{self, cr4};
use crate::seg::gp0;
use vireo_core::cpu::{ctl, msr};
use vireo_core::exec::Fault;

/// A TSC source: returns a monotonic tick count.
pub type TscSource = Box<dyn Fn() -> u64 + Send>;

pub const MTRR_CAP: u32 = 0xfe;
pub use msr::{MTRR_DEF_TYPE, MTRR_FIXED};
pub const UCODE_REV: u32 = 0x8b;
pub const HWCR: u32 = 0xc001_0015;
/// AMD SYSCFG: reads as 0 (no fixed-MTRR DRAM attribute bits, no SME), writes of
/// the MTRR extension bits kept.
pub const AMD_SYSCFG: u32 = 0xc001_0010;
/// AMD interrupt pending message (family 0Fh/10h C1E control): reads as 0 (no C1E,
/// no SMI/IO message); writes of the message fields are kept.
pub const AMD_INT_PENDING_MSG: u32 = 0xc001_0055;
/// Variable-range MTRR pairs (base/mask) advertised in MTRRcap.
pub const MTRR_VAR_COUNT: u32 = msr::MTRR_VAR_COUNT as u32;

/// MSRs kept by the TCG engine beyond [`vireo_core::cpu::MsrState`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MsrExtra {
    /// TSC = source + `tsc_offset` (wrapping).
    pub tsc_offset: u64,
    pub hwcr: u64,
    pub syscfg: u64,
    pub int_pending_msg: u64,
}

impl X86Cpu {
    fn tsc_raw(&self) -> u64 {
        match &self.tsc_source {
            Some(f) => f(),
            None => self.icount,
        }
    }

    /// The current TSC value.
    pub fn tsc(&self) -> u64 {
        self.tsc_raw().wrapping_add(self.msrs.tsc_offset)
    }

    /// Sets the TSC (adjusts the offset from the source).
    pub fn set_tsc(&mut self, v: u64) {
        self.msrs.tsc_offset = v.wrapping_sub(self.tsc_raw());
    }
}

fn valid_mem_type(t: u64, pat: bool) -> bool {
    matches!(t, 0 | 1 | 4 | 5 | 6) || (pat && t == 7)
}

fn all_types_valid(v: u64, pat: bool) -> bool {
    (0..8).all(|i| valid_mem_type((v >> (i * 8)) & 0xff, pat))
}

fn phys_rsvd() -> u64 {
    !((1u64 << mmu::PHYS_BITS) - 1)
}

/// Reads MSR `index` (no privilege check: the helper does it).
pub fn read_msr(cpu: &X86Cpu, index: u32) -> Result<u64, Fault> {
    if let Some(r) = crate::apic::read_msr(cpu, index) {
        return r;
    }
    let s = &cpu.state;
    let m = &cpu.msrs;
    Ok(match index {
        msr::TSC => cpu.tsc(),
        msr::EFER => s.efer,
        msr::FS_BASE => s.seg[4].base,
        msr::GS_BASE => s.seg[5].base,
        MTRR_CAP => 0x500 | u64::from(MTRR_VAR_COUNT),
        UCODE_REV => 0x0100_0065,
        HWCR => m.hwcr,
        AMD_SYSCFG => m.syscfg,
        AMD_INT_PENDING_MSG => m.int_pending_msg,
        msr::TSC_AUX if cpu.cpuid.edx_ext1 & ext1::RDTSCP != 0 => s.msr.tsc_aux,
        msr::TSC_AUX => return Err(unknown(index, "read")),
        i => match s.msr.get(i) {
            Some(v) => v,
            None => return Err(unknown(i, "read")),
        },
    })
}

fn unknown(index: u32, what: &str) -> Fault {
    log::warn!(target: "vireo::tcg", "{what} of unknown MSR {index:#x}: #GP");
    gp0()
}

/// Writes MSR `index` with every validity check first (#GP(0) leaves it unchanged).
pub fn write_msr(cpu: &mut X86Cpu, index: u32, v: u64) -> Result<(), Fault> {
    if let Some(r) = crate::apic::write_msr(cpu, index, v) {
        return r;
    }
    let canon = |v: u64| {
        if mmu::is_canonical(v) {
            Ok(())
        } else {
            Err(gp0())
        }
    };
    match index {
        msr::TSC => cpu.set_tsc(v),
        msr::EFER => write_efer(cpu, v)?,
        msr::FS_BASE => {
            canon(v)?;
            cpu.state.seg[4].base = v;
        }
        msr::GS_BASE => {
            canon(v)?;
            cpu.state.seg[5].base = v;
        }
        msr::KERNEL_GS_BASE | msr::LSTAR | msr::CSTAR => {
            canon(v)?;
            cpu.state.msr.set(index, v);
        }
        msr::SYSENTER_ESP | msr::SYSENTER_EIP => {
            canon(v)?;
            cpu.state.msr.set(index, v);
        }
        msr::SYSENTER_CS => cpu.state.msr.sysenter_cs = v & 0xffff,
        msr::STAR => cpu.state.msr.star = v,
        msr::SFMASK => cpu.state.msr.sfmask = v & 0xffff_ffff,
        msr::TSC_AUX => {
            if cpu.cpuid.edx_ext1 & ext1::RDTSCP == 0 || v >> 32 != 0 {
                return Err(gp0());
            }
            cpu.state.msr.tsc_aux = v;
        }
        msr::PAT => {
            if !all_types_valid(v, true) {
                return Err(gp0());
            }
            cpu.state.msr.pat = v;
        }
        msr::MISC_ENABLE => cpu.state.msr.misc_enable = v,
        msr::APIC_BASE => {
            // Bits 0-7, 9 and those above MAXPHYADDR are reserved.
            if v & (0x2ff | phys_rsvd()) != 0 {
                return Err(gp0());
            }
            cpu.state.msr.apic_base = v;
        }
        MTRR_DEF_TYPE => {
            if v & !0xcff != 0 || !valid_mem_type(v & 0xff, false) {
                return Err(gp0());
            }
            cpu.state.msr.set(index, v);
        }
        0x200..=0x20f => {
            let ok = if index.is_multiple_of(2) {
                valid_mem_type(v & 0xff, false) && v & (0xf00 | phys_rsvd()) == 0
            } else {
                v & (0x7ff | phys_rsvd()) == 0
            };
            if !ok {
                return Err(gp0());
            }
            cpu.state.msr.set(index, v);
        }
        HWCR => cpu.msrs.hwcr = v,
        // MtrrFixDramEn (18), MtrrFixDramModEn (19), MtrrVarDramEn (20), Tom2ForceMemTypeWB
        // (22) are kept; the other bits (SME, SNP, ...) are reserved here.
        AMD_SYSCFG => {
            if v & !((1 << 18) | (1 << 19) | (1 << 20) | (1 << 22)) != 0 {
                return Err(gp0());
            }
            cpu.msrs.syscfg = v;
        }
        // IOMsgAddr (15:0), IOMsgData (23:16), IntrPndMsgDis (24), IntrPndMsg (25) are
        // kept; C1E enables (27, 28) would make the CPU enter C1E on HLT: refused.
        AMD_INT_PENDING_MSG => {
            if v & !0x3ff_ffff != 0 {
                return Err(gp0());
            }
            cpu.msrs.int_pending_msg = v;
        }
        UCODE_REV => {}
        i if MTRR_FIXED.contains(&i) => {
            if !all_types_valid(v, false) {
                return Err(gp0());
            }
            cpu.state.msr.set(i, v);
        }
        i => return Err(unknown(i, "write")),
    }
    Ok(())
}

/// WRMSR to EFER: reserved bits, LME changes with paging on, LMA read-only.
fn write_efer(cpu: &mut X86Cpu, v: u64) -> Result<(), Fault> {
    let mut valid = ctl::EFER_LMA;
    if cpu.cpuid.edx_ext1 & ext1::SYSCALL != 0 {
        valid |= ctl::EFER_SCE;
    }
    if cpu.cpuid.edx_ext1 & ext1::LM != 0 {
        valid |= ctl::EFER_LME;
    }
    if cpu.cpuid.edx_ext1 & ext1::NX != 0 {
        valid |= ctl::EFER_NXE;
    }
    if v & !valid != 0 {
        return Err(gp0());
    }
    let old = cpu.state.efer;
    if (old ^ v) & ctl::EFER_LME != 0 && cpu.state.cr0 & ctl::CR0_PG != 0 {
        return Err(gp0());
    }
    let new = (v & !ctl::EFER_LMA) | (old & ctl::EFER_LMA);
    cpu.state.efer = new;
    if (old ^ new) & ctl::EFER_NXE != 0 {
        cpu.mmu.flush();
    }
    Ok(())
}

/// The `Rdmsr` helper.
pub fn rdmsr(cpu: &mut X86Cpu) -> Result<(), Fault> {
    if cpu.state.cpl() != 0 {
        return Err(gp0());
    }
    let v = read_msr(cpu, cpu.state.gpr[1] as u32)?;
    cpu.state.gpr[0] = v & 0xffff_ffff;
    cpu.state.gpr[2] = v >> 32;
    Ok(())
}

/// The `Wrmsr` helper.
pub fn wrmsr(cpu: &mut X86Cpu) -> Result<(), Fault> {
    if cpu.state.cpl() != 0 {
        return Err(gp0());
    }
    let v = (cpu.state.gpr[0] & 0xffff_ffff) | (cpu.state.gpr[2] << 32);
    write_msr(cpu, cpu.state.gpr[1] as u32, v)
}

/// The `Rdtsc` helper (RDTSCP also sets ECX = TSC_AUX).
pub fn rdtsc(cpu: &mut X86Cpu, rdtscp: bool) -> Result<(), Fault> {
    if rdtscp && cpu.cpuid.edx_ext1 & ext1::RDTSCP == 0 {
        return Err(crate::seg::ud());
    }
    if cpu.cpuid.edx1 & edx1::TSC == 0 {
        return Err(crate::seg::ud());
    }
    if cpu.state.cr4 & cr4::TSD != 0 && cpu.state.cpl() != 0 {
        return Err(gp0());
    }
    let t = cpu.tsc();
    cpu.state.gpr[0] = t & 0xffff_ffff;
    cpu.state.gpr[2] = t >> 32;
    if rdtscp {
        cpu.state.gpr[1] = cpu.state.msr.tsc_aux & 0xffff_ffff;
    }
    Ok(())
}
