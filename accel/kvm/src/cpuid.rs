//! The CPUID table a KVM guest sees: `KVM_GET_SUPPORTED_CPUID` filtered by a named model.
//!
//! - `host` / `max`: everything this host's KVM can virtualise.
//! - `qemu64`: QEMU's baseline x86-64 model (family 15 model 107 stepping 1, "QEMU
//!   Virtual CPU"), intersected with what KVM supports, so a guest sees the same
//!   features on any host.

use crate::error::{Error, IoctlContext, Result};
use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::Kvm;

/// A named CPU model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuModel {
    Host,
    Max,
    Qemu64,
}

impl std::str::FromStr for CpuModel {
    type Err = Error;
    fn from_str(s: &str) -> Result<CpuModel> {
        match s {
            "host" => Ok(CpuModel::Host),
            "max" => Ok(CpuModel::Max),
            "qemu64" => Ok(CpuModel::Qemu64),
            other => Err(Error::UnknownCpu(other.to_string())),
        }
    }
}

// Leaf 1 EDX/ECX bits of qemu64 (QEMU's target/i386/cpu.c PPRO_FEATURES + CX16/SSE3).
const QEMU64_1_EDX: u32 = (1 << 0) // fpu
    | (1 << 1) // vme
    | (1 << 2) // de
    | (1 << 3) // pse
    | (1 << 4) // tsc
    | (1 << 5) // msr
    | (1 << 6) // pae
    | (1 << 7) // mce
    | (1 << 8) // cx8
    | (1 << 9) // apic
    | (1 << 11) // sep
    | (1 << 12) // mtrr
    | (1 << 13) // pge
    | (1 << 14) // mca
    | (1 << 15) // cmov
    | (1 << 16) // pat
    | (1 << 17) // pse36
    | (1 << 19) // clflush
    | (1 << 23) // mmx
    | (1 << 24) // fxsr
    | (1 << 25) // sse
    | (1 << 26); // sse2
const QEMU64_1_ECX: u32 = (1 << 0) // sse3
    | (1 << 13) // cx16
    | (1 << 31); // hypervisor
const QEMU64_EXT_EDX: u32 = (1 << 11) // syscall
    | (1 << 20) // nx
    | (1 << 29); // lm
const QEMU64_EXT_ECX: u32 = (1 << 0) // lahf_lm
    | (1 << 5) // abm
    | (1 << 6); // sse4a

/// Builds the CPUID table for vCPU `apic_id` of `ncpus`.
pub fn build(kvm: &Kvm, model: CpuModel, apic_id: u32, ncpus: u32) -> Result<CpuId> {
    let supported = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .op("KVM_GET_SUPPORTED_CPUID")?;
    let mut entries: Vec<kvm_cpuid_entry2> = supported.as_slice().to_vec();
    for e in entries.iter_mut() {
        match e.function {
            1 => {
                // Initial APIC ID, logical processor count, CLFLUSH line size.
                e.ebx = (e.ebx & 0x0000_ffff) | (apic_id << 24) | ((ncpus.min(255)) << 16);
                e.ebx = (e.ebx & !0xff00) | (8 << 8);
                e.ecx |= 1 << 31; // running under a hypervisor
                if ncpus > 1 {
                    e.edx |= 1 << 28; // HTT: EBX[23:16] is valid
                }
            }
            0xb | 0x1f => e.edx = apic_id,
            _ => {}
        }
        if model == CpuModel::Qemu64 {
            match e.function {
                0 => {
                    // "AuthenticAMD", max basic leaf 0xd as QEMU's qemu64.
                    e.eax = e.eax.min(0xd);
                    e.ebx = u32::from_le_bytes(*b"Auth");
                    e.edx = u32::from_le_bytes(*b"enti");
                    e.ecx = u32::from_le_bytes(*b"cAMD");
                }
                1 => {
                    // Family 15, model 107, stepping 1.
                    e.eax = 0x000f_06b1;
                    e.edx &= QEMU64_1_EDX;
                    e.ecx &= QEMU64_1_ECX;
                }
                7 => {
                    e.ebx = 0;
                    e.ecx = 0;
                    e.edx = 0;
                }
                0x8000_0001 => {
                    e.edx &= QEMU64_EXT_EDX | (QEMU64_1_EDX & 0x0183_f3ff);
                    e.ecx &= QEMU64_EXT_ECX;
                }
                _ => {}
            }
        }
    }
    if model == CpuModel::Qemu64 {
        set_brand(&mut entries, "QEMU Virtual CPU version 2.5+");
    }
    CpuId::from_entries(&entries).map_err(|_| Error::MissingCap("CPUID table too large"))
}

/// Writes a processor brand string into leaves 0x80000002..4.
fn set_brand(entries: &mut [kvm_cpuid_entry2], brand: &str) {
    let mut bytes = [0u8; 48];
    let n = brand.len().min(47);
    bytes[..n].copy_from_slice(&brand.as_bytes()[..n]);
    for (i, leaf) in (0x8000_0002u32..=0x8000_0004).enumerate() {
        if let Some(e) = entries.iter_mut().find(|e| e.function == leaf) {
            let w = |k: usize| {
                let o = i * 16 + k * 4;
                u32::from_le_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]])
            };
            e.eax = w(0);
            e.ebx = w(1);
            e.ecx = w(2);
            e.edx = w(3);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_names() {
        assert_eq!("qemu64".parse::<CpuModel>().unwrap(), CpuModel::Qemu64);
        let e = "pentium9".parse::<CpuModel>().unwrap_err();
        assert!(e.to_string().contains("pentium9"));
    }

    #[test]
    fn tables_keep_long_mode_and_apic_id() {
        let Ok(kvm) = Kvm::new() else {
            println!("SKIP tables_keep_long_mode_and_apic_id: /dev/kvm not available");
            return;
        };
        for model in [CpuModel::Host, CpuModel::Qemu64] {
            let t = build(&kvm, model, 3, 4).unwrap();
            let leaf = |f: u32| t.as_slice().iter().find(|e| e.function == f).copied();
            let l1 = leaf(1).unwrap();
            assert_eq!(l1.ebx >> 24, 3, "{model:?}: APIC ID");
            assert_ne!(l1.ecx & (1 << 31), 0, "{model:?}: hypervisor bit");
            let ext = leaf(0x8000_0001).unwrap();
            assert_ne!(ext.edx & (1 << 29), 0, "{model:?}: long mode");
        }
        let q = build(&kvm, CpuModel::Qemu64, 0, 1).unwrap();
        let l0 = q.as_slice().iter().find(|e| e.function == 0).unwrap();
        assert_eq!(&l0.ebx.to_le_bytes(), b"Auth");
        let l1 = q.as_slice().iter().find(|e| e.function == 1).unwrap();
        assert_eq!(l1.edx & !QEMU64_1_EDX, 0, "no feature beyond the model");
    }
}
