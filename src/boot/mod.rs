//! Direct kernel boot: loaders that write a kernel (and its initrd or modules) into
//! guest memory and return the CPU state to start it with.
//!
//! The loaders are pure functions over [`GuestMemory`]: no engine is needed, the caller
//! applies the returned [`BootSetup::state`] to the boot CPU. Reading the files is the
//! caller's business; everything inside them (offsets, sizes, addresses) is treated as
//! hostile and checked, so a bad file is a [`BootError`], never a panic.
//!
//! - [`linux`]: the Linux x86 boot protocol (bzImage, 64-bit entry point).
//! - [`multiboot`]: Multiboot v1 (ELF32/ELF64 or a.out-kludge kernels, 32-bit entry).
//!
//! [`detect`] tells which of the two a file is; [`firmware_mtrrs`] sets the MTRRs as
//! a PC firmware leaves them, since no firmware runs before a directly booted kernel.

pub mod linux;
pub mod multiboot;

use vireo_core::cpu::msr;
use vireo_core::layout::{self, RegionKind};
use vireo_core::{CpuState, GuestMemory};

/// MTRR memory types.
const MTRR_UC: u64 = 0;
const MTRR_WB: u64 = 6;
/// MTRRdefType: MTRRs enabled (E), fixed ranges enabled (FE).
const MTRR_DEF_E_FE: u64 = 0xc00;
/// PhysMask valid bit.
const MTRR_MASK_VALID: u64 = 0x800;

/// The MTRRs a PC firmware sets up (as SeaBIOS does): write-back by default and for
/// low RAM, the legacy VGA window 0xA0000-0xBFFFF uncached (fixed ranges), the 32-bit
/// PCI/device hole from [`layout::PCI_HOLE_START`] to 4 GiB uncached (variable range 0).
/// `phys_bits` is the CPU's MAXPHYADDR, which the mask must cover.
pub fn firmware_mtrrs(state: &mut CpuState, phys_bits: u32) {
    let all = |t: u64| t * 0x0101_0101_0101_0101;
    let m = &mut state.msr;
    m.mtrr_fixed = [all(MTRR_WB); 11];
    // MTRRfix16K_A0000 (index 2 of [`msr::MTRR_FIXED`]) covers 0xA0000-0xBFFFF.
    debug_assert_eq!(msr::MTRR_FIXED[2], 0x259);
    m.mtrr_fixed[2] = all(MTRR_UC);
    let phys_mask = (1u64 << phys_bits.clamp(36, 52)) - 1;
    let hole = layout::FOUR_GIB - layout::PCI_HOLE_START;
    m.mtrr_var = [0; 2 * msr::MTRR_VAR_COUNT];
    m.mtrr_var[0] = layout::PCI_HOLE_START | MTRR_UC;
    m.mtrr_var[1] = (!(hole - 1) & phys_mask & !0xfff) | MTRR_MASK_VALID;
    m.mtrr_def_type = MTRR_DEF_E_FE | MTRR_WB;
}

/// Why a kernel could not be loaded. Messages are one line, meant for the user.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("not a Linux bzImage or Multiboot kernel")]
    NotAKernel,
    #[error("kernel image is truncated: {0}")]
    Truncated(String),
    #[error("Linux boot protocol {major}.{minor:02} is not supported (vireo needs 2.06 or later)")]
    UnsupportedProtocol { major: u8, minor: u8 },
    #[error(
        "Linux kernel has no 64-bit entry point (needs boot protocol 2.12+ with XLF_KERNEL_64)"
    )]
    No64BitEntry,
    #[error("Linux zImage kernels (not loaded high) are not supported; use a bzImage")]
    NotBzImage,
    #[error(
        "kernel needs {addr:#x}..{end:#x} but guest RAM ends at {ram_end:#x}; add memory with -m"
    )]
    KernelTooLarge { addr: u64, end: u64, ram_end: u64 },
    #[error("initrd of {size} bytes does not fit in guest RAM between {low:#x} and {high:#x}")]
    InitrdTooLarge { size: u64, low: u64, high: u64 },
    #[error("kernel command line is {len} bytes long, the kernel accepts at most {max}")]
    CmdlineTooLong { len: usize, max: usize },
    #[error("Multiboot header checksum is wrong")]
    MultibootChecksum,
    #[error("Multiboot kernel requires unsupported features (header flags {0:#x})")]
    MultibootFlags(u32),
    #[error("invalid Multiboot kernel: {0}")]
    Multiboot(String),
    #[error("{what} at {addr:#x}..{end:#x} is not in guest RAM below 4 GiB")]
    OutsideRam { what: String, addr: u64, end: u64 },
    #[error("guest memory access failed: {0}")]
    Memory(#[from] vireo_core::Error),
}

/// Result alias for the loaders.
pub type Result<T> = std::result::Result<T, BootError>;

/// The kind of kernel image a file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFormat {
    /// A Linux bzImage ("HdrS" at offset 0x202).
    Linux,
    /// A Multiboot v1 kernel (a valid header in the first 8 KiB).
    Multiboot,
}

/// Where a loader put things, and how to start the boot CPU.
#[derive(Debug, Clone)]
pub struct BootSetup {
    /// The state of the boot CPU (the others stay in wait-for-SIPI).
    pub state: CpuState,
    /// The guest physical range the kernel occupies (`start..end`, bss included).
    pub kernel: (u64, u64),
    /// Initrd (Linux) or modules (Multiboot): `(start, end)` guest physical ranges.
    pub ramdisks: Vec<(u64, u64)>,
    /// Address of `boot_params` (Linux) or the Multiboot information structure.
    pub info_addr: u64,
}

/// Tells a Linux bzImage from a Multiboot kernel.
pub fn detect(bytes: &[u8]) -> Result<KernelFormat> {
    if linux::is_bzimage(bytes) {
        return Ok(KernelFormat::Linux);
    }
    match multiboot::find_header(bytes) {
        Ok(Some(_)) => Ok(KernelFormat::Multiboot),
        Ok(None) => Err(BootError::NotAKernel),
        Err(e) => Err(e),
    }
}

/// Whether `[addr, addr+len)` lies entirely in one RAM region below 4 GiB.
pub(crate) fn in_low_ram(mem: &GuestMemory, addr: u64, len: u64) -> bool {
    let Some(end) = addr.checked_add(len) else {
        return false;
    };
    if end > vireo_core::layout::FOUR_GIB {
        return false;
    }
    mem.region_of(addr, len.max(1))
        .is_some_and(|r| r.kind == RegionKind::Ram)
}

/// Fails with [`BootError::OutsideRam`] unless `[addr, addr+len)` is RAM below 4 GiB.
pub(crate) fn check_ram(mem: &GuestMemory, what: &str, addr: u64, len: u64) -> Result<()> {
    if in_low_ram(mem, addr, len) {
        Ok(())
    } else {
        Err(BootError::OutsideRam {
            what: what.to_string(),
            addr,
            end: addr.saturating_add(len),
        })
    }
}

/// Rounds `v` up to a multiple of `a` (a power of two), or `None` on overflow.
pub(crate) fn align_up(v: u64, a: u64) -> Option<u64> {
    Some(v.checked_add(a - 1)? & !(a - 1))
}

/// Little-endian field readers over untrusted bytes.
pub(crate) fn le16(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(off..off + 2)?.try_into().ok()?))
}
pub(crate) fn le32(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(off..off + 4)?.try_into().ok()?))
}
pub(crate) fn le64(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(off..off + 8)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detect_formats() {
        let mut bz = vec![0u8; 0x1000];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        assert_eq!(detect(&bz).unwrap(), KernelFormat::Linux);

        let mut mb = vec![0u8; 0x100];
        let flags = 0u32;
        mb[0x40..0x44].copy_from_slice(&multiboot::MULTIBOOT_MAGIC.to_le_bytes());
        mb[0x44..0x48].copy_from_slice(&flags.to_le_bytes());
        let sum = 0u32.wrapping_sub(multiboot::MULTIBOOT_MAGIC);
        mb[0x48..0x4c].copy_from_slice(&sum.to_le_bytes());
        assert_eq!(detect(&mb).unwrap(), KernelFormat::Multiboot);

        let e = detect(b"hello, world").unwrap_err();
        assert_eq!(e.to_string(), "not a Linux bzImage or Multiboot kernel");
        assert!(matches!(detect(&[]), Err(BootError::NotAKernel)));
    }

    /// The memory type the MTRRs give physical address `a` (SDM 11.11.4: fixed ranges
    /// below 1 MiB, else a matching variable range, else the default type).
    fn mtrr_type(s: &CpuState, a: u64) -> u64 {
        let m = &s.msr;
        if a < 0x8_0000 {
            return (m.mtrr_fixed[0] >> ((a >> 16) * 8)) & 0xff;
        }
        if a < 0xc_0000 {
            let i = 1 + ((a - 0x8_0000) >> 17) as usize;
            return (m.mtrr_fixed[i] >> (((a >> 14) & 7) * 8)) & 0xff;
        }
        if a < 0x10_0000 {
            let i = 3 + ((a - 0xc_0000) >> 15) as usize;
            return (m.mtrr_fixed[i] >> (((a >> 12) & 7) * 8)) & 0xff;
        }
        for r in 0..msr::MTRR_VAR_COUNT {
            let (base, mask) = (m.mtrr_var[2 * r], m.mtrr_var[2 * r + 1]);
            if mask & MTRR_MASK_VALID != 0 && (a & mask & !0xfff) == (base & mask & !0xfff) {
                return base & 0xff;
            }
        }
        m.mtrr_def_type & 0xff
    }

    #[test]
    fn firmware_mtrrs_match_a_pc_firmware() {
        for bits in [36, 40, 48] {
            let mut s = CpuState::reset();
            firmware_mtrrs(&mut s, bits);
            assert_eq!(s.msr.mtrr_def_type, 0xc06);
            let top = 1u64 << bits;
            for (a, t) in [
                (0, MTRR_WB),
                (0x9_f000, MTRR_WB),
                (0xa_0000, MTRR_UC),
                (0xb_8000, MTRR_UC),
                (0xc_0000, MTRR_WB),
                (0xf_f000, MTRR_WB),
                (0x10_0000, MTRR_WB),
                (0xbfff_f000, MTRR_WB),
                (0xc000_0000, MTRR_UC),
                (0xfee0_0000, MTRR_UC),
                (0x1_0000_0000, MTRR_WB),
                (0x1_c000_0000, MTRR_WB),
                (top - 0x4000_0000, MTRR_WB),
            ] {
                assert_eq!(mtrr_type(&s, a), t, "{bits} bits, {a:#x}");
            }
            // The mask has no bits beyond MAXPHYADDR (KVM and CPUs #GP on them).
            assert_eq!(s.msr.mtrr_var[1] >> bits, 0);
        }
    }
}
