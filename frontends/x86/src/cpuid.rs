//! The CPUID model: what the guest is told this CPU implements. It advertises only
//! what TCG implements, and the translator raises #UD for an instruction whose CPUID
//! feature the model does not advertise ([`CpuidModel::allows`]), as a CPU without
//! the feature would. Named models ([`CpuidModel::named`], `-cpu`): `max`, everything
//! TCG implements; `qemu64`, QEMU's baseline x86-64 CPU.

use crate::cpu::X86Cpu;
use crate::mmu::{cr4, PHYS_BITS};
use crate::xsave;

/// CPUID.1:EDX bits.
pub mod edx1 {
    pub const FPU: u32 = 1 << 0;
    pub const DE: u32 = 1 << 2;
    pub const PSE: u32 = 1 << 3;
    pub const TSC: u32 = 1 << 4;
    pub const MSR: u32 = 1 << 5;
    pub const PAE: u32 = 1 << 6;
    pub const CX8: u32 = 1 << 8;
    pub const APIC: u32 = 1 << 9;
    pub const SEP: u32 = 1 << 11;
    pub const MTRR: u32 = 1 << 12;
    pub const PGE: u32 = 1 << 13;
    pub const CMOV: u32 = 1 << 15;
    pub const PAT: u32 = 1 << 16;
    pub const PSE36: u32 = 1 << 17;
    pub const CLFSH: u32 = 1 << 19;
    pub const MMX: u32 = 1 << 23;
    pub const FXSR: u32 = 1 << 24;
    pub const SSE: u32 = 1 << 25;
    pub const SSE2: u32 = 1 << 26;
}

/// CPUID.1:ECX bits.
pub mod ecx1 {
    pub const SSE3: u32 = 1 << 0;
    pub const PCLMULQDQ: u32 = 1 << 1;
    /// MONITOR/MWAIT (not implemented by TCG: never advertised).
    pub const MONITOR: u32 = 1 << 3;
    pub const SSSE3: u32 = 1 << 9;
    pub const CX16: u32 = 1 << 13;
    pub const MOVBE: u32 = 1 << 22;
    pub const PCID: u32 = 1 << 17;
    pub const SSE41: u32 = 1 << 19;
    pub const SSE42: u32 = 1 << 20;
    pub const X2APIC: u32 = 1 << 21;
    pub const POPCNT: u32 = 1 << 23;
    pub const TSC_DEADLINE: u32 = 1 << 24;
    pub const XSAVE: u32 = 1 << 26;
    pub const OSXSAVE: u32 = 1 << 27;
}

/// CPUID.(0Dh,1):EAX bits: the XSAVE extensions.
pub mod xsave_d1 {
    pub const XSAVEOPT: u32 = 1 << 0;
    /// XSAVEC and the compacted form of XRSTOR.
    pub const XSAVEC: u32 = 1 << 1;
    /// XGETBV with ECX = 1 (XINUSE).
    pub const XGETBV1: u32 = 1 << 2;
    /// XSAVES/XRSTORS and IA32_XSS (not implemented).
    pub const XSAVES: u32 = 1 << 3;
}

/// CPUID.(7,0):EBX / ECX bits.
pub mod leaf7 {
    pub const FSGSBASE: u32 = 1 << 0;
    pub const SMEP: u32 = 1 << 7;
    pub const INVPCID: u32 = 1 << 10;
    pub const ADX: u32 = 1 << 19;
    pub const SMAP: u32 = 1 << 20;
    /// ECX.
    pub const UMIP: u32 = 1 << 2;
}

/// CPUID.80000001h bits.
pub mod ext1 {
    /// EDX.
    pub const SYSCALL: u32 = 1 << 11;
    pub const NX: u32 = 1 << 20;
    pub const PDPE1GB: u32 = 1 << 26;
    pub const RDTSCP: u32 = 1 << 27;
    pub const LM: u32 = 1 << 29;
    /// ECX.
    pub const LAHF_LM: u32 = 1 << 0;
    pub const ABM: u32 = 1 << 5;
}

/// The CPUID table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuidModel {
    /// 12-byte vendor string.
    pub vendor: [u8; 12],
    pub max_leaf: u32,
    pub max_ext_leaf: u32,
    pub family: u32,
    pub model: u32,
    pub stepping: u32,
    pub edx1: u32,
    pub ecx1: u32,
    pub ebx7: u32,
    pub ecx7: u32,
    pub edx7: u32,
    pub edx_ext1: u32,
    pub ecx_ext1: u32,
    /// CPUID.80000007h:EDX (bit 8: invariant TSC).
    pub edx_ext7: u32,
    /// XCR0 bits that may be set (x87 = 1, SSE = 2, AVX = 4); used when XSAVE is on.
    pub xcr0_supported: u64,
    /// CPUID.(0Dh,1):EAX: XSAVEOPT, XSAVEC, XGETBV(1) ([`xsave_d1`]).
    pub xsave_d1: u32,
    pub phys_bits: u32,
    pub virt_bits: u32,
    /// 48-byte brand string.
    pub brand: [u8; 48],
    /// Initial APIC ID (CPUID.1:EBX[31:24]).
    pub apic_id: u32,
    /// The invariant TSC's frequency, advertised in leaves 15h/16h.
    pub tsc_hz: u64,
}

/// The named TCG models and what they are (`-cpu help`).
pub const MODELS: &[(&str, &str)] = &[
    ("max", "everything vireo's TCG implements"),
    (
        "qemu64",
        "QEMU's baseline x86-64 CPU (SSE3, CX16, no SSSE3/SSE4/XSAVE...)",
    ),
];

/// The TSC frequency of the TCG model (leaf 15h: the crystal clock times 1).
pub const TSC_HZ: u64 = 1_000_000_000;
/// The core crystal clock leaf 15h reports: 1 GHz, the clock of the local APIC
/// timer too (the SDM's APIC timer clock when leaf 15h enumerates the crystal; the
/// TCG APIC model runs its timer at this rate, as KVM and QEMU do).
pub const CRYSTAL_HZ: u64 = 1_000_000_000;

impl Default for CpuidModel {
    /// The TCG model ("vireo", AuthenticAMD family 15 like QEMU's qemu64): long mode,
    /// NX, PAE/PSE/PGE, SYSCALL/SYSENTER, CMPXCHG8B/16B, POPCNT/LZCNT, RDTSCP,
    /// FSGSBASE, SMEP/SMAP, PCID/INVPCID, ADX, x87 (FPU), FXSAVE/FXRSTOR, MMX, SSE,
    /// SSE2, SSE3, SSSE3, SSE4.1, SSE4.2 (with CRC32) and PCLMULQDQ, XSAVE with
    /// XSAVEOPT, XSAVEC and XGETBV(1) for x87 and SSE state (XCR0 up to 3). Exactly
    /// what TCG implements: not MONITOR/MWAIT, AVX, BMI, SSE4a, XSAVES and the rest.
    /// The APIC, x2APIC and TSC-deadline flags are added when a local APIC is attached
    /// ([`crate::apic`]).
    fn default() -> CpuidModel {
        let mut brand = [0u8; 48];
        let name = b"vireo TCG virtual CPU";
        brand[..name.len()].copy_from_slice(name);
        use edx1::*;
        CpuidModel {
            vendor: *b"AuthenticAMD",
            max_leaf: 0x16,
            max_ext_leaf: 0x8000_0008,
            family: 15,
            model: 107,
            stepping: 1,
            edx1: FPU
                | DE
                | PSE
                | TSC
                | MSR
                | PAE
                | CX8
                | SEP
                | MTRR
                | PGE
                | CMOV
                | PAT
                | PSE36
                | CLFSH
                | FXSR
                | MMX
                | SSE
                | SSE2,
            ecx1: ecx1::SSE3
                | ecx1::PCLMULQDQ
                | ecx1::SSSE3
                | ecx1::CX16
                | ecx1::PCID
                | ecx1::SSE41
                | ecx1::SSE42
                | ecx1::MOVBE
                | ecx1::POPCNT
                | ecx1::XSAVE,
            ebx7: leaf7::FSGSBASE | leaf7::SMEP | leaf7::INVPCID | leaf7::ADX | leaf7::SMAP,
            ecx7: 0,
            edx7: 0,
            edx_ext1: ext1::SYSCALL | ext1::NX | ext1::PDPE1GB | ext1::RDTSCP | ext1::LM,
            ecx_ext1: ext1::LAHF_LM | ext1::ABM,
            edx_ext7: 1 << 8,
            xcr0_supported: 0x3,
            xsave_d1: xsave_d1::XSAVEOPT | xsave_d1::XSAVEC | xsave_d1::XGETBV1,
            phys_bits: PHYS_BITS,
            virt_bits: 48,
            brand,
            apic_id: 0,
            tsc_hz: TSC_HZ,
        }
    }
}

fn le(b: &[u8]) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[..4]);
    u32::from_le_bytes(w)
}

impl CpuidModel {
    /// The model `-cpu NAME` names under TCG (see [`MODELS`]).
    pub fn named(name: &str) -> Option<CpuidModel> {
        match name {
            "max" => Some(CpuidModel::default()),
            "qemu64" => Some(CpuidModel::qemu64()),
            _ => None,
        }
    }

    /// QEMU's `qemu64`: the x86-64 baseline (SSE2 plus SSE3 and CMPXCHG16B; LAHF in
    /// long mode), AuthenticAMD family 15 model 107. Leaves 15h/16h stay (the TSC
    /// frequency); QEMU's SVM, MCE and MCA bits are left out, since TCG does not
    /// implement them.
    pub fn qemu64() -> CpuidModel {
        let mut brand = [0u8; 48];
        let name = b"QEMU Virtual CPU version 2.5+";
        brand[..name.len()].copy_from_slice(name);
        CpuidModel {
            ecx1: ecx1::SSE3 | ecx1::CX16,
            ebx7: 0,
            ecx7: 0,
            edx7: 0,
            edx_ext1: ext1::SYSCALL | ext1::NX | ext1::LM,
            ecx_ext1: ext1::LAHF_LM,
            xsave_d1: 0,
            xcr0_supported: 0x3,
            brand,
            ..CpuidModel::default()
        }
    }

    /// Whether an instruction that needs CPUID feature `f` may run on this model.
    /// Features without a bit here are part of every x86-64 CPU vireo models, or not
    /// implemented at all (the translator raises #UD for those anyway).
    pub fn allows(&self, f: iced_x86::CpuidFeature) -> bool {
        use iced_x86::CpuidFeature as F;
        let (reg, bit) = match f {
            F::FPU => (self.edx1, edx1::FPU),
            F::TSC => (self.edx1, edx1::TSC),
            F::MSR => (self.edx1, edx1::MSR),
            F::CX8 => (self.edx1, edx1::CX8),
            F::SEP => (self.edx1, edx1::SEP),
            F::CMOV => (self.edx1, edx1::CMOV),
            F::CLFSH => (self.edx1, edx1::CLFSH),
            F::MMX => (self.edx1, edx1::MMX),
            F::FXSR => (self.edx1, edx1::FXSR),
            F::SSE => (self.edx1, edx1::SSE),
            F::SSE2 => (self.edx1, edx1::SSE2),
            F::SSE3 => (self.ecx1, ecx1::SSE3),
            F::PCLMULQDQ => (self.ecx1, ecx1::PCLMULQDQ),
            F::MONITOR => (self.ecx1, ecx1::MONITOR),
            F::SSSE3 => (self.ecx1, ecx1::SSSE3),
            F::CMPXCHG16B => (self.ecx1, ecx1::CX16),
            F::SSE4_1 => (self.ecx1, ecx1::SSE41),
            F::SSE4_2 => (self.ecx1, ecx1::SSE42),
            F::MOVBE => (self.ecx1, ecx1::MOVBE),
            F::POPCNT => (self.ecx1, ecx1::POPCNT),
            F::XSAVE => (self.ecx1, ecx1::XSAVE),
            F::XSAVEOPT => (self.xsave_d1, xsave_d1::XSAVEOPT),
            F::XSAVEC => (self.xsave_d1, xsave_d1::XSAVEC),
            F::XSAVES => (self.xsave_d1, xsave_d1::XSAVES),
            F::FSGSBASE => (self.ebx7, leaf7::FSGSBASE),
            F::INVPCID => (self.ebx7, leaf7::INVPCID),
            F::ADX => (self.ebx7, leaf7::ADX),
            F::SMAP => (self.ebx7, leaf7::SMAP),
            F::SYSCALL => (self.edx_ext1, ext1::SYSCALL),
            F::RDTSCP => (self.edx_ext1, ext1::RDTSCP),
            F::LZCNT => (self.ecx_ext1, ext1::ABM),
            _ => return true,
        };
        reg & bit != 0
    }

    pub fn has_xsave(&self) -> bool {
        self.ecx1 & ecx1::XSAVE != 0
    }

    /// The family/model/stepping signature (CPUID.1:EAX).
    pub fn signature(&self) -> u32 {
        let (fam, ext_fam) = if self.family > 15 {
            (15, self.family - 15)
        } else {
            (self.family, 0)
        };
        (self.stepping & 0xf)
            | (self.model & 0xf) << 4
            | (fam & 0xf) << 8
            | ((self.model >> 4) & 0xf) << 16
            | (ext_fam & 0xff) << 20
    }

    /// EAX, EBX, ECX, EDX of leaf `leaf`, subleaf `sub`, given CR4 (for OSXSAVE)
    /// and XCR0 (for leaf 0Dh).
    pub fn query(&self, leaf: u32, sub: u32, cr4_val: u64, xcr0: u64) -> [u32; 4] {
        let v = &self.vendor;
        match leaf {
            0 => [self.max_leaf, le(&v[0..]), le(&v[8..]), le(&v[4..])],
            1 => {
                let mut ecx = self.ecx1;
                if self.has_xsave() && cr4_val & cr4::OSXSAVE != 0 {
                    ecx |= ecx1::OSXSAVE;
                }
                let ebx = (self.apic_id << 24) | (1 << 16) | (8 << 8);
                [self.signature(), ebx, ecx, self.edx1]
            }
            7 if leaf <= self.max_leaf && sub == 0 => [0, self.ebx7, self.ecx7, self.edx7],
            // TSC/crystal ratio and crystal frequency: TSC = crystal * EBX / EAX.
            0x15 if leaf <= self.max_leaf => {
                [1, (self.tsc_hz / CRYSTAL_HZ) as u32, CRYSTAL_HZ as u32, 0]
            }
            // Base, maximum and bus frequencies in MHz.
            0x16 if leaf <= self.max_leaf => {
                let mhz = (self.tsc_hz / 1_000_000) as u32;
                [mhz, mhz, 100, 0]
            }
            0xd if leaf <= self.max_leaf && self.has_xsave() => self.leaf_d(sub, xcr0),
            l if l <= self.max_leaf && l < 0x8000_0000 => [0; 4],
            0x8000_0000 => [self.max_ext_leaf, le(&v[0..]), le(&v[8..]), le(&v[4..])],
            0x8000_0001 if leaf <= self.max_ext_leaf => {
                // AMD mirrors most of CPUID.1:EDX here.
                let mirror = self.edx1 & 0x0183_f3ff;
                [self.signature(), 0, self.ecx_ext1, self.edx_ext1 | mirror]
            }
            0x8000_0002..=0x8000_0004 if leaf <= self.max_ext_leaf => {
                let i = ((leaf - 0x8000_0002) * 16) as usize;
                let b = &self.brand[i..i + 16];
                [le(&b[0..]), le(&b[4..]), le(&b[8..]), le(&b[12..])]
            }
            0x8000_0007 if leaf <= self.max_ext_leaf => [0, 0, 0, self.edx_ext7],
            0x8000_0008 if leaf <= self.max_ext_leaf => {
                [self.phys_bits | (self.virt_bits << 8), 0, 0, 0]
            }
            _ => [0; 4],
        }
    }

    /// Leaf 0Dh: subleaf 0 gives the supported XCR0 bits and the standard-format
    /// sizes for the current XCR0 (EBX) and for all supported components (ECX);
    /// subleaf 1 the extensions and the compacted size for the current XCR0 (no
    /// supervisor components); subleaf i >= 2 size and offset of component i.
    fn leaf_d(&self, sub: u32, xcr0: u64) -> [u32; 4] {
        let sup = self.xcr0_supported;
        match sub {
            0 => [
                sup as u32,
                xsave::standard_size(xcr0 & sup) as u32,
                xsave::standard_size(sup) as u32,
                (sup >> 32) as u32,
            ],
            1 => {
                let compact = self.xsave_d1 & (xsave_d1::XSAVEC | xsave_d1::XSAVES) != 0;
                let ebx = if compact {
                    xsave::compacted_size(xcr0 & sup) as u32
                } else {
                    0
                };
                [self.xsave_d1, ebx, 0, 0]
            }
            i if i < 63 && sup & (1u64 << i) != 0 => match xsave::component(i) {
                Some((size, off)) => [size as u32, off as u32, 0, 0],
                None => [0; 4],
            },
            _ => [0; 4],
        }
    }

    /// CR4 bits this model allows to be set.
    pub fn cr4_valid(&self) -> u64 {
        let mut v =
            cr4::TSD | cr4::PSE | cr4::PAE | cr4::PGE | cr4::PCE | cr4::OSFXSR | cr4::OSXMMEXCPT;
        if self.edx1 & edx1::DE != 0 {
            v |= cr4::DE;
        }
        if self.ebx7 & leaf7::FSGSBASE != 0 {
            v |= cr4::FSGSBASE;
        }
        if self.ecx1 & ecx1::PCID != 0 {
            v |= cr4::PCIDE;
        }
        if self.has_xsave() {
            v |= cr4::OSXSAVE;
        }
        if self.ebx7 & leaf7::SMEP != 0 {
            v |= cr4::SMEP;
        }
        if self.ebx7 & leaf7::SMAP != 0 {
            v |= cr4::SMAP;
        }
        if self.ecx7 & leaf7::UMIP != 0 {
            v |= cr4::UMIP;
        }
        v
    }
}

/// The `Cpuid` helper: leaf in EAX, subleaf in ECX; results in EAX, EBX, ECX, EDX
/// (upper halves cleared).
pub fn cpuid(cpu: &mut X86Cpu) {
    let leaf = cpu.state.gpr[0] as u32;
    let sub = cpu.state.gpr[1] as u32;
    let r = cpu.cpuid.query(leaf, sub, cpu.state.cr4, cpu.state.xcr0);
    cpu.state.gpr[0] = u64::from(r[0]);
    cpu.state.gpr[3] = u64::from(r[1]);
    cpu.state.gpr[1] = u64::from(r[2]);
    cpu.state.gpr[2] = u64::from(r[3]);
}
