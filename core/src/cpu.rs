//! The architectural state of one x86 CPU, exchanged by both engines.
//!
//! `CpuState` is exactly what [`crate::Vcpu::state`] returns and
//! [`crate::Vcpu::set_state`] takes, for TCG and KVM alike: it is what lockstep testing,
//! snapshots, the gdb stub and TCG⇄KVM migration move around.

/// Index of a general-purpose register in [`CpuState::gpr`].
pub mod reg {
    pub const RAX: usize = 0;
    pub const RCX: usize = 1;
    pub const RDX: usize = 2;
    pub const RBX: usize = 3;
    pub const RSP: usize = 4;
    pub const RBP: usize = 5;
    pub const RSI: usize = 6;
    pub const RDI: usize = 7;
}

/// Index of a segment register in [`CpuState::seg`].
pub mod sreg {
    pub const ES: usize = 0;
    pub const CS: usize = 1;
    pub const SS: usize = 2;
    pub const DS: usize = 3;
    pub const FS: usize = 4;
    pub const GS: usize = 5;
}

/// RFLAGS bits.
pub mod flags {
    pub const CF: u64 = 1 << 0;
    pub const FIXED1: u64 = 1 << 1;
    pub const PF: u64 = 1 << 2;
    pub const AF: u64 = 1 << 4;
    pub const ZF: u64 = 1 << 6;
    pub const SF: u64 = 1 << 7;
    pub const TF: u64 = 1 << 8;
    pub const IF: u64 = 1 << 9;
    pub const DF: u64 = 1 << 10;
    pub const OF: u64 = 1 << 11;
    pub const IOPL: u64 = 3 << 12;
    pub const NT: u64 = 1 << 14;
    pub const RF: u64 = 1 << 16;
    pub const VM: u64 = 1 << 17;
    pub const AC: u64 = 1 << 18;
    pub const VIF: u64 = 1 << 19;
    pub const VIP: u64 = 1 << 20;
    pub const ID: u64 = 1 << 21;
}

/// Control-register and EFER bits used across the project.
pub mod ctl {
    pub const CR0_PE: u64 = 1 << 0;
    pub const CR0_MP: u64 = 1 << 1;
    pub const CR0_EM: u64 = 1 << 2;
    pub const CR0_TS: u64 = 1 << 3;
    pub const CR0_ET: u64 = 1 << 4;
    pub const CR0_NE: u64 = 1 << 5;
    pub const CR0_WP: u64 = 1 << 16;
    pub const CR0_AM: u64 = 1 << 18;
    pub const CR0_NW: u64 = 1 << 29;
    pub const CR0_CD: u64 = 1 << 30;
    pub const CR0_PG: u64 = 1 << 31;
    pub const CR4_PSE: u64 = 1 << 4;
    pub const CR4_PAE: u64 = 1 << 5;
    pub const CR4_PGE: u64 = 1 << 7;
    pub const CR4_OSFXSR: u64 = 1 << 9;
    pub const CR4_OSXMMEXCPT: u64 = 1 << 10;
    pub const CR4_OSXSAVE: u64 = 1 << 18;
    pub const EFER_SCE: u64 = 1 << 0;
    pub const EFER_LME: u64 = 1 << 8;
    pub const EFER_LMA: u64 = 1 << 10;
    pub const EFER_NXE: u64 = 1 << 11;
    pub const EFER_SVME: u64 = 1 << 12;
}

/// A segment register with its hidden (descriptor cache) part.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Segment {
    pub selector: u16,
    pub base: u64,
    /// Byte-granular limit (already scaled when G is set).
    pub limit: u32,
    /// Descriptor type (4 bits).
    pub type_: u8,
    /// S: code/data (1) or system (0).
    pub s: bool,
    pub dpl: u8,
    pub present: bool,
    pub avl: bool,
    /// L: 64-bit code segment.
    pub l: bool,
    /// D/B: default operand size 32 bits.
    pub db: bool,
    /// G: granularity (4 KiB).
    pub g: bool,
    /// The register holds no usable segment (null selector in protected mode).
    pub unusable: bool,
}

impl Segment {
    /// A real-mode segment for `selector`: base `selector << 4`, 64 KiB limit.
    pub fn real_mode(selector: u16, code: bool) -> Segment {
        Segment {
            selector,
            base: u64::from(selector) << 4,
            limit: 0xffff,
            type_: if code { 0xb } else { 0x3 },
            s: true,
            present: true,
            ..Segment::default()
        }
    }

    /// A flat 4 GiB protected-mode segment.
    pub fn flat(selector: u16, code: bool, long: bool) -> Segment {
        Segment {
            selector,
            base: 0,
            limit: 0xffff_ffff,
            type_: if code { 0xb } else { 0x3 },
            s: true,
            dpl: 0,
            present: true,
            avl: false,
            l: long && code,
            db: !(long && code),
            g: true,
            unusable: false,
        }
    }

    /// The access-rights word as in VMX/SVM formats: type, S, DPL, P, AVL, L, D/B, G.
    pub fn attributes(&self) -> u16 {
        u16::from(self.type_ & 0xf)
            | u16::from(self.s) << 4
            | u16::from(self.dpl & 3) << 5
            | u16::from(self.present) << 7
            | u16::from(self.avl) << 8
            | u16::from(self.l) << 9
            | u16::from(self.db) << 10
            | u16::from(self.g) << 11
    }

    /// Decodes a descriptor-table entry (the 8 bytes of a legacy descriptor).
    pub fn from_descriptor(selector: u16, desc: u64) -> Segment {
        let limit_raw = (desc & 0xffff) as u32 | ((desc >> 32) as u32 & 0xf_0000);
        let base = ((desc >> 16) & 0xff_ffff) | ((desc >> 32) & 0xff00_0000);
        let g = desc & (1 << 55) != 0;
        Segment {
            selector,
            base,
            limit: if g {
                (limit_raw << 12) | 0xfff
            } else {
                limit_raw
            },
            type_: ((desc >> 40) & 0xf) as u8,
            s: desc & (1 << 44) != 0,
            dpl: ((desc >> 45) & 3) as u8,
            present: desc & (1 << 47) != 0,
            avl: desc & (1 << 52) != 0,
            l: desc & (1 << 53) != 0,
            db: desc & (1 << 54) != 0,
            g,
            unusable: false,
        }
    }
}

/// GDTR or IDTR.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DescriptorTable {
    pub base: u64,
    pub limit: u16,
}

/// x87, MMX, SSE and AVX register state in FXSAVE terms (plus the upper YMM halves).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FpuState {
    pub fcw: u16,
    pub fsw: u16,
    /// Abridged tag word as in FXSAVE: bit i set means ST register i is valid.
    pub ftw: u8,
    pub fop: u16,
    pub fip: u64,
    pub fdp: u64,
    /// ST0..ST7 / MM0..MM7: 80-bit values in the low 10 bytes of each slot.
    pub st: [[u8; 16]; 8],
    pub xmm: [[u8; 16]; 16],
    /// Upper halves of YMM0..YMM15 (XSAVE component 2).
    pub ymmh: [[u8; 16]; 16],
    pub mxcsr: u32,
}

impl Default for FpuState {
    fn default() -> FpuState {
        FpuState {
            fcw: 0x37f,
            fsw: 0,
            ftw: 0,
            fop: 0,
            fip: 0,
            fdp: 0,
            st: [[0; 16]; 8],
            xmm: [[0; 16]; 16],
            ymmh: [[0; 16]; 16],
            mxcsr: 0x1f80,
        }
    }
}

impl MsrState {
    /// The MSR numbers held here (APIC_BASE aside: engines keep it with the APIC).
    pub const INDICES: [u32; 40] = Self::indices();

    const fn indices() -> [u32; 40] {
        let fixed = [
            msr::SYSENTER_CS,
            msr::SYSENTER_ESP,
            msr::SYSENTER_EIP,
            msr::PAT,
            msr::MISC_ENABLE,
            msr::STAR,
            msr::LSTAR,
            msr::CSTAR,
            msr::SFMASK,
            msr::KERNEL_GS_BASE,
            msr::TSC_AUX,
            msr::TSC,
            msr::MTRR_DEF_TYPE,
        ];
        let mut out = [0u32; 40];
        let mut n = 0;
        while n < fixed.len() {
            out[n] = fixed[n];
            n += 1;
        }
        let mut i = 0;
        while i < msr::MTRR_FIXED.len() {
            out[n] = msr::MTRR_FIXED[i];
            n += 1;
            i += 1;
        }
        let mut i = 0;
        while i < 2 * msr::MTRR_VAR_COUNT {
            out[n] = msr::MTRR_PHYS_BASE0 + i as u32;
            n += 1;
            i += 1;
        }
        out
    }

    fn slot(&mut self, index: u32) -> Option<&mut u64> {
        const VAR_END: u32 = msr::MTRR_PHYS_BASE0 + 2 * msr::MTRR_VAR_COUNT as u32;
        Some(match index {
            msr::SYSENTER_CS => &mut self.sysenter_cs,
            msr::SYSENTER_ESP => &mut self.sysenter_esp,
            msr::SYSENTER_EIP => &mut self.sysenter_eip,
            msr::PAT => &mut self.pat,
            msr::MISC_ENABLE => &mut self.misc_enable,
            msr::STAR => &mut self.star,
            msr::LSTAR => &mut self.lstar,
            msr::CSTAR => &mut self.cstar,
            msr::SFMASK => &mut self.sfmask,
            msr::KERNEL_GS_BASE => &mut self.kernel_gs_base,
            msr::TSC_AUX => &mut self.tsc_aux,
            msr::TSC => &mut self.tsc,
            msr::APIC_BASE => &mut self.apic_base,
            msr::MTRR_DEF_TYPE => &mut self.mtrr_def_type,
            i if (msr::MTRR_PHYS_BASE0..VAR_END).contains(&i) => {
                &mut self.mtrr_var[(i - msr::MTRR_PHYS_BASE0) as usize]
            }
            i => {
                let p = msr::MTRR_FIXED.iter().position(|&x| x == i)?;
                &mut self.mtrr_fixed[p]
            }
        })
    }

    /// The value of MSR `index`, if it is one held here.
    pub fn get(&self, index: u32) -> Option<u64> {
        let mut copy = *self;
        copy.slot(index).map(|v| *v)
    }

    /// Sets MSR `index`; false if it is not one held here.
    pub fn set(&mut self, index: u32, value: u64) -> bool {
        match self.slot(index) {
            Some(v) => {
                *v = value;
                true
            }
            None => false,
        }
    }

    /// `(index, value)` for every MSR in [`MsrState::INDICES`].
    pub fn entries(&self) -> Vec<(u32, u64)> {
        Self::INDICES
            .iter()
            .filter_map(|&i| self.get(i).map(|v| (i, v)))
            .collect()
    }
}

/// An exception or interrupt in flight (being delivered or pending delivery).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PendingEvent {
    pub vector: u8,
    pub error_code: Option<u32>,
    /// Software interrupt (INT n): delivered with its instruction length.
    pub soft: bool,
}

/// Interrupt-related state that is not in registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EventState {
    /// An exception to be delivered before the next instruction.
    pub exception: Option<PendingEvent>,
    /// An external interrupt acknowledged but not yet delivered.
    pub interrupt: Option<PendingEvent>,
    pub nmi_pending: bool,
    /// NMIs are blocked (an NMI handler is running).
    pub nmi_masked: bool,
    /// Interrupt shadow after STI or MOV SS/POP SS.
    pub interrupt_shadow: bool,
    /// The CPU is halted (HLT) until an interrupt arrives.
    pub halted: bool,
    /// An application processor after INIT: it runs nothing until a start-up IPI
    /// (SIPI) arrives (the SDM's wait-for-SIPI state, KVM's `INIT_RECEIVED`).
    pub wait_for_sipi: bool,
}

/// Architectural MSR numbers of the registers in [`MsrState`].
pub mod msr {
    pub const TSC: u32 = 0x10;
    pub const APIC_BASE: u32 = 0x1b;
    pub const SYSENTER_CS: u32 = 0x174;
    pub const SYSENTER_ESP: u32 = 0x175;
    pub const SYSENTER_EIP: u32 = 0x176;
    pub const MISC_ENABLE: u32 = 0x1a0;
    pub const PAT: u32 = 0x277;
    pub const EFER: u32 = 0xc000_0080;
    pub const STAR: u32 = 0xc000_0081;
    pub const LSTAR: u32 = 0xc000_0082;
    pub const CSTAR: u32 = 0xc000_0083;
    pub const SFMASK: u32 = 0xc000_0084;
    pub const FS_BASE: u32 = 0xc000_0100;
    pub const GS_BASE: u32 = 0xc000_0101;
    pub const KERNEL_GS_BASE: u32 = 0xc000_0102;
    pub const TSC_AUX: u32 = 0xc000_0103;
    /// Variable-range MTRRs: PhysBase n at `0x200 + 2n`, PhysMask n at `0x201 + 2n`.
    pub const MTRR_PHYS_BASE0: u32 = 0x200;
    pub const MTRR_DEF_TYPE: u32 = 0x2ff;
    /// The fixed-range MTRRs (64K at 0, 16K at 0x80000 and 0xA0000, 4K from 0xC0000).
    pub const MTRR_FIXED: [u32; 11] = [
        0x250, 0x258, 0x259, 0x268, 0x269, 0x26a, 0x26b, 0x26c, 0x26d, 0x26e, 0x26f,
    ];
    /// Variable-range MTRR pairs.
    pub const MTRR_VAR_COUNT: usize = 8;
}

/// Model-specific registers carried in the state (the others live in engine tables).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MsrState {
    pub star: u64,
    pub lstar: u64,
    pub cstar: u64,
    pub sfmask: u64,
    pub kernel_gs_base: u64,
    pub sysenter_cs: u64,
    pub sysenter_esp: u64,
    pub sysenter_eip: u64,
    pub tsc: u64,
    pub tsc_aux: u64,
    pub pat: u64,
    pub apic_base: u64,
    pub misc_enable: u64,
    /// MTRRdefType.
    pub mtrr_def_type: u64,
    /// Fixed-range MTRRs, in the order of [`msr::MTRR_FIXED`].
    pub mtrr_fixed: [u64; 11],
    /// Variable-range MTRRs: base, mask, base, mask, ...
    pub mtrr_var: [u64; 2 * msr::MTRR_VAR_COUNT],
}

/// The complete architectural state of one CPU.
///
/// `repr(C)`: the general registers come first, then RIP, RFLAGS and the segments
/// (a JIT addresses the most used fields with short displacements from one point).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[repr(C)]
pub struct CpuState {
    /// RAX, RCX, RDX, RBX, RSP, RBP, RSI, RDI, R8..R15.
    pub gpr: [u64; 16],
    pub rip: u64,
    pub rflags: u64,
    /// ES, CS, SS, DS, FS, GS (see [`sreg`]).
    pub seg: [Segment; 6],
    pub ldtr: Segment,
    pub tr: Segment,
    pub gdtr: DescriptorTable,
    pub idtr: DescriptorTable,
    pub cr0: u64,
    pub cr2: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub cr8: u64,
    pub efer: u64,
    pub xcr0: u64,
    /// DR0..DR3, DR6, DR7.
    pub dr: [u64; 6],
    pub msr: MsrState,
    pub fpu: FpuState,
    pub events: EventState,
}

impl CpuState {
    /// The state of a CPU after RESET: real mode, CS:IP = F000:FFF0 with CS base
    /// 0xFFFF0000, so the first fetch is at the firmware's reset vector below 4 GiB.
    pub fn reset() -> CpuState {
        let mut s = CpuState {
            rip: 0xfff0,
            rflags: flags::FIXED1,
            cr0: ctl::CR0_ET | ctl::CR0_CD | ctl::CR0_NW,
            xcr0: 1,
            ..CpuState::default()
        };
        for (i, seg) in s.seg.iter_mut().enumerate() {
            *seg = Segment::real_mode(0, i == sreg::CS);
        }
        s.seg[sreg::CS].selector = 0xf000;
        s.seg[sreg::CS].base = 0xffff_0000;
        s.ldtr = Segment {
            limit: 0xffff,
            type_: 2,
            present: true,
            ..Segment::default()
        };
        s.tr = Segment {
            limit: 0xffff,
            type_: 0xb,
            present: true,
            ..Segment::default()
        };
        s.gdtr.limit = 0xffff;
        s.idtr.limit = 0xffff;
        s.dr = [0, 0, 0, 0, 0xffff_0ff0, 0x400];
        s.msr.pat = 0x0007_0406_0007_0406;
        s.msr.apic_base = 0xfee0_0000 | (1 << 11) | (1 << 8);
        s.msr.misc_enable = 1; // fast strings
        s
    }

    /// The state of an application processor after RESET: as [`CpuState::reset`],
    /// but IA32_APIC_BASE without the BSP flag, and waiting for a start-up IPI.
    pub fn reset_ap() -> CpuState {
        let mut s = CpuState::reset();
        s.msr.apic_base &= !(1 << 8);
        s.events.wait_for_sipi = true;
        s
    }

    /// Current privilege level (CS.DPL outside real mode, as SS.DPL would be).
    pub fn cpl(&self) -> u8 {
        if self.cr0 & ctl::CR0_PE == 0 {
            0
        } else if self.rflags & flags::VM != 0 {
            3
        } else {
            self.seg[sreg::CS].dpl
        }
    }

    /// Whether the CPU runs in long mode (64-bit or compatibility).
    pub fn long_mode(&self) -> bool {
        self.efer & ctl::EFER_LMA != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptor_decoding() {
        // Flat 4 GiB 32-bit code, DPL 0: 0x00CF9B000000FFFF.
        let s = Segment::from_descriptor(0x08, 0x00CF_9B00_0000_FFFF);
        assert_eq!(s, Segment::flat(0x08, true, false));
        // 64-bit code: 0x00AF9B000000FFFF.
        let l = Segment::from_descriptor(0x10, 0x00AF_9B00_0000_FFFF);
        assert!(l.l && !l.db);
        assert_eq!(l.attributes(), 0xa9b);
        // Byte-granular segment with a scattered base.
        let b = Segment::from_descriptor(0, 0x1240_9212_3456_0fff);
        assert_eq!(b.base, 0x1212_3456);
        assert_eq!(b.limit, 0xfff);
        assert_eq!(b.dpl, 0);
        assert_eq!(b.type_, 2);
    }

    #[test]
    fn msr_table_round_trip() {
        let mut m = MsrState::default();
        for (n, i) in MsrState::INDICES.iter().enumerate() {
            assert!(m.set(*i, n as u64 + 100));
        }
        assert!(!m.set(0xdead, 1));
        assert_eq!(m.get(msr::LSTAR), Some(106));
        assert_eq!(m.entries().len(), MsrState::INDICES.len());
        assert!(m.entries().iter().all(|(i, v)| m.get(*i) == Some(*v)));
    }

    #[test]
    fn reset_state_fetches_below_4g() {
        let s = CpuState::reset();
        let cs = s.seg[sreg::CS];
        assert_eq!(cs.base + s.rip, 0xffff_fff0);
        assert_eq!(s.cpl(), 0);
        assert!(!s.long_mode());
    }

    #[test]
    fn an_application_processor_waits_for_sipi_without_the_bsp_flag() {
        let (bsp, ap) = (CpuState::reset(), CpuState::reset_ap());
        assert_ne!(bsp.msr.apic_base & (1 << 8), 0);
        assert_eq!(ap.msr.apic_base & (1 << 8), 0);
        assert_eq!(ap.msr.apic_base, bsp.msr.apic_base & !(1 << 8));
        assert!(ap.events.wait_for_sipi && !bsp.events.wait_for_sipi);
    }
}
