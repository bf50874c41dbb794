//! The Linux x86 boot protocol (`Documentation/arch/x86/boot.rst`): loads a bzImage
//! and enters it at its 64-bit entry point, as a 64-bit boot loader does.
//!
//! Guest physical memory used below 1 MiB (all well below the EBDA at 0x9FC00 and the
//! ACPI tables at 0xE0000):
//!
//! ```text
//! 0x0500 .. 0x0520   GDT: null, null, __BOOT_CS (0x10, 64-bit code), __BOOT_DS (0x18)
//! 0x7000 .. 0x8000   boot_params ("zero page"), pointed to by RSI
//! 0x8000 .. 0x9000   initial stack (RSP = 0x8FF0; the kernel sets up its own at once)
//! 0x9000 .. 0xA000   PML4
//! 0xA000 .. 0xB000   PDPT
//! 0xB000 .. 0xF000   4 page directories: 2 MiB pages identity-mapping 0..4 GiB
//! 0x20000 .. 0x30000 kernel command line (NUL-terminated, at most 64 KiB - 1)
//! ```
//!
//! The protected-mode kernel goes to 1 MiB, or to its `pref_address` when it is
//! relocatable and that range is RAM; the initrd goes to the highest page-aligned
//! address that keeps it below both `initrd_addr_max` and the end of low RAM, above the
//! kernel's `init_size` footprint. The real-mode setup code is not loaded: only its
//! setup header is copied into `boot_params`.

use super::{align_up, check_ram, in_low_ram, le16, le32, le64, BootError, BootSetup, Result};
use vireo_core::cpu::{ctl, flags, reg, sreg, DescriptorTable, Segment};
use vireo_core::layout::{E820_RAM, HIGH_MEMORY_START};
use vireo_core::{CpuState, GuestMemory};

/// GDT address.
pub const GDT_ADDR: u64 = 0x500;
/// `boot_params` (zero page) address.
pub const BOOT_PARAMS_ADDR: u64 = 0x7000;
/// Initial stack pointer.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Page map level 4.
pub const PML4_ADDR: u64 = 0x9000;
/// Page directory pointer table.
pub const PDPT_ADDR: u64 = 0xa000;
/// First of the four page directories.
pub const PD_ADDR: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_ADDR: u64 = 0x2_0000;
/// Room for the command line, terminating NUL included.
pub const CMDLINE_AREA: u64 = 0x1_0000;
/// Default load address of the protected-mode kernel.
pub const KERNEL_LOAD_ADDR: u64 = HIGH_MEMORY_START;
/// Code segment selector the kernel expects (`__BOOT_CS`).
pub const BOOT_CS: u16 = 0x10;
/// Data segment selector the kernel expects (`__BOOT_DS`).
pub const BOOT_DS: u16 = 0x18;
/// Size of `boot_params`.
pub const BOOT_PARAMS_SIZE: usize = 4096;
/// Maximum number of E820 entries in `boot_params`.
pub const E820_MAX_ENTRIES: usize = 128;
/// Oldest boot protocol accepted.
pub const MIN_PROTOCOL: u16 = 0x0206;

/// Offsets in the image / `boot_params`.
mod off {
    pub const ACPI_RSDP_ADDR: usize = 0x070;
    pub const EXT_RAMDISK_IMAGE: usize = 0x0c0;
    pub const EXT_RAMDISK_SIZE: usize = 0x0c4;
    pub const EXT_CMD_LINE_PTR: usize = 0x0c8;
    pub const E820_ENTRIES: usize = 0x1e8;
    pub const SETUP_HEADER: usize = 0x1f1;
    pub const SETUP_SECTS: usize = 0x1f1;
    pub const SYSSIZE: usize = 0x1f4;
    pub const JUMP: usize = 0x200;
    pub const HEADER: usize = 0x202;
    pub const VERSION: usize = 0x206;
    pub const TYPE_OF_LOADER: usize = 0x210;
    pub const LOADFLAGS: usize = 0x211;
    pub const CODE32_START: usize = 0x214;
    pub const RAMDISK_IMAGE: usize = 0x218;
    pub const RAMDISK_SIZE: usize = 0x21c;
    pub const HEAP_END_PTR: usize = 0x224;
    pub const CMD_LINE_PTR: usize = 0x228;
    pub const INITRD_ADDR_MAX: usize = 0x22c;
    pub const KERNEL_ALIGNMENT: usize = 0x230;
    pub const RELOCATABLE_KERNEL: usize = 0x234;
    pub const XLOADFLAGS: usize = 0x236;
    pub const CMDLINE_SIZE: usize = 0x238;
    pub const PREF_ADDRESS: usize = 0x258;
    pub const INIT_SIZE: usize = 0x260;
    /// End of the area the setup header may occupy in `boot_params`.
    pub const SETUP_HEADER_MAX_END: usize = 0x290;
    pub const E820_TABLE: usize = 0x2d0;
}

/// `loadflags` bits.
const LOADED_HIGH: u8 = 1 << 0;
const CAN_USE_HEAP: u8 = 1 << 7;
/// `xloadflags` bit: the kernel has a 64-bit entry point at +0x200.
const XLF_KERNEL_64: u16 = 1 << 0;
/// `type_of_loader`: undefined loader.
const LOADER_TYPE_UNDEFINED: u8 = 0xff;
/// `heap_end_ptr`: end of the setup heap relative to the real-mode code, minus 0x200.
const HEAP_END: u16 = 0xfe00;

/// What the setup header says about the kernel.
#[derive(Debug, Clone)]
struct Header {
    version: u16,
    /// End of the setup header in the image (0x202 + the jump's offset byte).
    header_end: usize,
    setup_size: usize,
    relocatable: bool,
    pref_address: u64,
    init_size: u64,
    kernel_alignment: u64,
    initrd_addr_max: u64,
    cmdline_size: usize,
}

/// Whether `bytes` carries the bzImage setup header signature.
pub fn is_bzimage(bytes: &[u8]) -> bool {
    bytes.get(off::HEADER..off::HEADER + 4) == Some(b"HdrS")
}

fn truncated(what: &str) -> BootError {
    BootError::Truncated(what.to_string())
}

fn parse_header(image: &[u8]) -> Result<Header> {
    if !is_bzimage(image) {
        return Err(BootError::NotAKernel);
    }
    let version = le16(image, off::VERSION).ok_or_else(|| truncated("setup header"))?;
    if version < MIN_PROTOCOL {
        return Err(BootError::UnsupportedProtocol {
            major: (version >> 8) as u8,
            minor: version as u8,
        });
    }
    let jump_len = *image
        .get(off::JUMP + 1)
        .ok_or_else(|| truncated("setup header"))?;
    let header_end = off::HEADER + usize::from(jump_len);
    // A 2.06 header runs at least to cmdline_size (0x23c).
    if header_end < off::CMDLINE_SIZE + 4 || image.len() < header_end {
        return Err(truncated("setup header"));
    }
    let field32 = |o: usize| le32(image, o).ok_or_else(|| truncated("setup header"));
    let loadflags = image[off::LOADFLAGS];
    if loadflags & LOADED_HIGH == 0 {
        return Err(BootError::NotBzImage);
    }
    let xloadflags = if version >= 0x020c {
        le16(image, off::XLOADFLAGS).ok_or_else(|| truncated("setup header"))?
    } else {
        0
    };
    if xloadflags & XLF_KERNEL_64 == 0 {
        return Err(BootError::No64BitEntry);
    }
    let setup_sects = match image[off::SETUP_SECTS] {
        0 => 4,
        n => usize::from(n),
    };
    let setup_size = (setup_sects + 1) * 512;
    if image.len() <= setup_size {
        return Err(truncated("no protected-mode kernel after the setup code"));
    }
    let kernel_len = (image.len() - setup_size) as u64;
    let syssize = u64::from(field32(off::SYSSIZE)?);
    if syssize * 16 > kernel_len + 15 {
        return Err(BootError::Truncated(format!(
            "the header announces {} bytes of kernel, the file has {kernel_len}",
            syssize * 16
        )));
    }
    let (pref_address, init_size) = if version >= 0x020a && header_end >= off::INIT_SIZE + 4 {
        (
            le64(image, off::PREF_ADDRESS).ok_or_else(|| truncated("setup header"))?,
            u64::from(field32(off::INIT_SIZE)?),
        )
    } else {
        (0, 0)
    };
    Ok(Header {
        version,
        header_end,
        setup_size,
        relocatable: image[off::RELOCATABLE_KERNEL] != 0,
        pref_address,
        init_size,
        kernel_alignment: u64::from(field32(off::KERNEL_ALIGNMENT)?),
        initrd_addr_max: u64::from(field32(off::INITRD_ADDR_MAX)?),
        cmdline_size: field32(off::CMDLINE_SIZE)? as usize,
    })
}

/// Where the protected-mode kernel goes: `pref_address` if the kernel is relocatable and
/// its whole footprint fits in RAM there, else 1 MiB.
fn load_address(mem: &GuestMemory, h: &Header, kernel_len: u64) -> u64 {
    let need = kernel_len.max(h.init_size);
    let pref = h.pref_address;
    let aligned = h.kernel_alignment.is_power_of_two() && pref & (h.kernel_alignment - 1) == 0;
    if h.relocatable && pref > KERNEL_LOAD_ADDR && aligned && in_low_ram(mem, pref, need) {
        pref
    } else {
        KERNEL_LOAD_ADDR
    }
}

/// End of the memory the kernel uses while it decompresses: the decompressor runs at
/// the load address rounded up to `kernel_alignment`, but never below
/// `pref_address` (the kernel's `LOAD_PHYSICAL_ADDR`), and needs `init_size` bytes there.
fn footprint_end(h: &Header, load_addr: u64, kernel_len: u64) -> u64 {
    let loaded_end = load_addr + kernel_len;
    let run_addr = if h.pref_address != 0 {
        let aligned = if h.kernel_alignment.is_power_of_two() {
            align_up(load_addr, h.kernel_alignment).unwrap_or(u64::MAX)
        } else {
            load_addr
        };
        aligned.max(h.pref_address)
    } else {
        load_addr
    };
    loaded_end.max(run_addr.saturating_add(h.init_size))
}

/// Identity map of the first 4 GiB with 2 MiB pages.
fn write_page_tables(mem: &GuestMemory) -> Result<()> {
    const PRESENT_RW: u64 = 0x3;
    const PAGE_SIZE_2M: u64 = 0x80;
    let mut pml4 = vec![0u8; 4096];
    pml4[..8].copy_from_slice(&(PDPT_ADDR | PRESENT_RW).to_le_bytes());
    mem.write(PML4_ADDR, &pml4)?;
    let mut pdpt = vec![0u8; 4096];
    for i in 0..4u64 {
        let pd = PD_ADDR + i * 0x1000;
        pdpt[i as usize * 8..][..8].copy_from_slice(&(pd | PRESENT_RW).to_le_bytes());
        let mut dir = vec![0u8; 4096];
        for j in 0..512u64 {
            let addr = (i << 30) | (j << 21);
            dir[j as usize * 8..][..8]
                .copy_from_slice(&(addr | PRESENT_RW | PAGE_SIZE_2M).to_le_bytes());
        }
        mem.write(pd, &dir)?;
    }
    mem.write(PDPT_ADDR, &pdpt)?;
    Ok(())
}

/// The 64-bit boot GDT: null, null, `__BOOT_CS`, `__BOOT_DS`.
pub fn gdt() -> [u64; 4] {
    [0, 0, 0x00af_9b00_0000_ffff, 0x00cf_9300_0000_ffff]
}

/// The CPU state for the 64-bit entry point at `entry` with `boot_params` in RSI.
fn entry_state(entry: u64) -> CpuState {
    let mut s = CpuState::reset();
    let g = gdt();
    s.seg[sreg::CS] = Segment::from_descriptor(BOOT_CS, g[usize::from(BOOT_CS >> 3)]);
    let data = Segment::from_descriptor(BOOT_DS, g[usize::from(BOOT_DS >> 3)]);
    for i in [sreg::DS, sreg::ES, sreg::SS, sreg::FS, sreg::GS] {
        s.seg[i] = data;
    }
    s.gdtr = DescriptorTable {
        base: GDT_ADDR,
        limit: (g.len() * 8 - 1) as u16,
    };
    s.idtr = DescriptorTable { base: 0, limit: 0 };
    s.cr0 = ctl::CR0_PE | ctl::CR0_ET | ctl::CR0_NE | ctl::CR0_PG;
    s.cr3 = PML4_ADDR;
    s.cr4 = ctl::CR4_PAE;
    s.efer = ctl::EFER_LME | ctl::EFER_LMA;
    s.rip = entry;
    s.rflags = flags::FIXED1;
    s.gpr[reg::RSI] = BOOT_PARAMS_ADDR;
    s.gpr[reg::RSP] = BOOT_STACK_POINTER;
    s
}

fn put16(b: &mut [u8], o: usize, v: u16) {
    b[o..o + 2].copy_from_slice(&v.to_le_bytes());
}
fn put32(b: &mut [u8], o: usize, v: u32) {
    b[o..o + 4].copy_from_slice(&v.to_le_bytes());
}
fn put64(b: &mut [u8], o: usize, v: u64) {
    b[o..o + 8].copy_from_slice(&v.to_le_bytes());
}

/// Loads the bzImage `image` with an optional `initrd` and the command line `cmdline`
/// into `mem`; `rsdp_addr` (the ACPI RSDP) is passed in `boot_params` when the kernel
/// knows the field (protocol 2.14+). Returns the 64-bit entry state.
pub fn load(
    mem: &GuestMemory,
    image: &[u8],
    initrd: Option<&[u8]>,
    cmdline: &str,
    rsdp_addr: Option<u64>,
) -> Result<BootSetup> {
    let h = parse_header(image)?;
    let kernel = &image[h.setup_size..];
    let kernel_len = kernel.len() as u64;
    let low_end = mem.map().low_end;

    // The protected-mode kernel.
    let load_addr = load_address(mem, &h, kernel_len);
    if !in_low_ram(mem, load_addr, kernel_len) {
        return Err(BootError::KernelTooLarge {
            addr: load_addr,
            end: load_addr.saturating_add(kernel_len),
            ram_end: low_end,
        });
    }
    mem.write(load_addr, kernel)?;
    let footprint_end = footprint_end(&h, load_addr, kernel_len);
    if footprint_end > low_end {
        log::warn!(target: "vireo::boot",
            "kernel needs memory up to {footprint_end:#x} to decompress, guest RAM ends at {low_end:#x}");
    }

    // boot_params: the image's setup header plus what the loader fills in.
    let mut bp = vec![0u8; BOOT_PARAMS_SIZE];
    let hdr_end = h.header_end.min(off::SETUP_HEADER_MAX_END);
    bp[off::SETUP_HEADER..hdr_end].copy_from_slice(&image[off::SETUP_HEADER..hdr_end]);
    bp[off::TYPE_OF_LOADER] = LOADER_TYPE_UNDEFINED;
    bp[off::LOADFLAGS] |= CAN_USE_HEAP;
    put16(&mut bp, off::HEAP_END_PTR, HEAP_END);
    put32(&mut bp, off::CODE32_START, load_addr as u32);

    // Command line.
    let max = if h.cmdline_size == 0 {
        255
    } else {
        h.cmdline_size
    }
    .min(CMDLINE_AREA as usize - 1);
    if cmdline.len() > max {
        return Err(BootError::CmdlineTooLong {
            len: cmdline.len(),
            max,
        });
    }
    let mut cl = cmdline.as_bytes().to_vec();
    cl.push(0);
    mem.write(CMDLINE_ADDR, &cl)?;
    put32(&mut bp, off::CMD_LINE_PTR, CMDLINE_ADDR as u32);
    put32(&mut bp, off::EXT_CMD_LINE_PTR, 0);

    // Initrd: as high as allowed, above the kernel's footprint.
    let mut ramdisks = Vec::new();
    if let Some(rd) = initrd.filter(|rd| !rd.is_empty()) {
        let size = rd.len() as u64;
        let max_addr = if h.initrd_addr_max == 0 {
            0x37ff_ffff
        } else {
            h.initrd_addr_max
        };
        let high = (max_addr + 1).min(low_end);
        let low = align_up(footprint_end, 4096).unwrap_or(u64::MAX);
        let too_large = BootError::InitrdTooLarge { size, low, high };
        let addr = high.checked_sub(size).ok_or(too_large)? & !0xfff;
        if addr < low {
            return Err(BootError::InitrdTooLarge { size, low, high });
        }
        check_ram(mem, "initrd", addr, size)?;
        mem.write(addr, rd)?;
        put32(&mut bp, off::RAMDISK_IMAGE, addr as u32);
        put32(&mut bp, off::RAMDISK_SIZE, size as u32);
        put32(&mut bp, off::EXT_RAMDISK_IMAGE, (addr >> 32) as u32);
        put32(&mut bp, off::EXT_RAMDISK_SIZE, (size >> 32) as u32);
        ramdisks.push((addr, addr + size));
        log::debug!(target: "vireo::boot", "initrd: {size} bytes at {addr:#x}");
    }

    // E820 map.
    let e820 = mem.map().e820();
    if e820.len() > E820_MAX_ENTRIES {
        log::warn!(target: "vireo::boot", "E820 map truncated to {E820_MAX_ENTRIES} entries");
    }
    let n = e820.len().min(E820_MAX_ENTRIES);
    bp[off::E820_ENTRIES] = n as u8;
    for (i, &(base, len, ty)) in e820.iter().take(n).enumerate() {
        let o = off::E820_TABLE + i * 20;
        put64(&mut bp, o, base);
        put64(&mut bp, o + 8, len);
        put32(&mut bp, o + 16, ty);
    }
    debug_assert!(e820.iter().any(|e| e.2 == E820_RAM));

    if let Some(rsdp) = rsdp_addr {
        if h.version >= 0x020e {
            put64(&mut bp, off::ACPI_RSDP_ADDR, rsdp);
        }
    }
    mem.write(BOOT_PARAMS_ADDR, &bp)?;

    // GDT and page tables.
    let gdt: Vec<u8> = gdt().iter().flat_map(|d| d.to_le_bytes()).collect();
    mem.write(GDT_ADDR, &gdt)?;
    write_page_tables(mem)?;

    let entry = load_addr + 0x200;
    log::info!(target: "vireo::boot",
        "Linux boot protocol {}.{:02}: kernel {kernel_len} bytes at {load_addr:#x}, entry {entry:#x}",
        h.version >> 8, h.version & 0xff);
    Ok(BootSetup {
        state: entry_state(entry),
        kernel: (load_addr, load_addr + kernel_len),
        ramdisks,
        info_addr: BOOT_PARAMS_ADDR,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vireo_core::layout::{ACPI_TABLES_START, EBDA_START};

    /// A synthetic bzImage: `setup_sects` = 4, protocol `version`, `kernel_len` bytes of
    /// protected-mode kernel (a recognizable pattern).
    fn bzimage(version: u16, kernel_len: usize) -> Vec<u8> {
        let setup = 5 * 512;
        let mut b = vec![0u8; setup + kernel_len];
        b[0x1f1] = 4;
        put32(&mut b, 0x1f4, kernel_len.div_ceil(16) as u32);
        put16(&mut b, 0x1fe, 0xaa55);
        b[0x200] = 0xeb;
        b[0x201] = 0x6a; // header ends at 0x26c
        b[0x202..0x206].copy_from_slice(b"HdrS");
        put16(&mut b, 0x206, version);
        b[0x211] = LOADED_HIGH;
        put32(&mut b, 0x22c, 0x7fff_ffff);
        put32(&mut b, 0x230, 0x20_0000);
        b[0x234] = 1;
        put16(&mut b, 0x236, XLF_KERNEL_64 | 2);
        put32(&mut b, 0x238, 2048);
        put64(&mut b, 0x258, 0x100_0000);
        put32(&mut b, 0x260, 0x40_0000);
        for (i, x) in b[setup..].iter_mut().enumerate() {
            *x = (i % 251) as u8;
        }
        b
    }

    fn mem(mib: u64) -> GuestMemory {
        GuestMemory::new(mib << 20).unwrap()
    }

    #[test]
    fn low_memory_areas_do_not_collide() {
        let mut areas = [
            (GDT_ADDR, GDT_ADDR + 32),
            (BOOT_PARAMS_ADDR, BOOT_PARAMS_ADDR + BOOT_PARAMS_SIZE as u64),
            (0x8000, 0x9000), // stack
            (PML4_ADDR, PML4_ADDR + 0x1000),
            (PDPT_ADDR, PDPT_ADDR + 0x1000),
            (PD_ADDR, PD_ADDR + 0x4000),
            (CMDLINE_ADDR, CMDLINE_ADDR + CMDLINE_AREA),
        ];
        areas.sort();
        for w in areas.windows(2) {
            assert!(w[0].1 <= w[1].0, "{w:x?}");
        }
        assert!(areas.iter().all(|a| a.0 >= 0x500 && a.1 <= EBDA_START));
        const { assert!(BOOT_STACK_POINTER > 0x8000 && BOOT_STACK_POINTER < 0x9000) };
        const { assert!(EBDA_START < ACPI_TABLES_START) };
    }

    #[test]
    fn loads_kernel_initrd_cmdline_and_boot_params() {
        let m = mem(128);
        let img = bzimage(0x020f, 0x12345);
        let initrd = vec![0x5a; 3 << 20];
        let s = load(
            &m,
            &img,
            Some(&initrd),
            "console=ttyS0 root=/dev/vda",
            Some(0xe0000),
        )
        .unwrap();

        // Relocatable with pref_address 16 MiB that fits: loaded there.
        let load_addr = 0x100_0000;
        assert_eq!(s.kernel, (load_addr, load_addr + 0x12345));
        let mut k = vec![0u8; 0x12345];
        m.read(load_addr, &mut k).unwrap();
        assert_eq!(k, img[5 * 512..]);

        // boot_params: the header copied, loader fields filled in.
        let bp = BOOT_PARAMS_ADDR;
        assert_eq!(s.info_addr, bp);
        let mut hdrs = [0u8; 4];
        m.read(bp + 0x202, &mut hdrs).unwrap();
        assert_eq!(&hdrs, b"HdrS");
        assert_eq!(m.read_u16(bp + 0x206).unwrap(), 0x020f);
        assert_eq!(m.read_u16(bp + 0x1fe).unwrap(), 0xaa55);
        assert_eq!(m.read_u8(bp + 0x210).unwrap(), 0xff);
        assert_eq!(m.read_u8(bp + 0x211).unwrap(), LOADED_HIGH | CAN_USE_HEAP);
        assert_eq!(m.read_u16(bp + 0x224).unwrap(), HEAP_END);
        assert_eq!(m.read_u32(bp + 0x214).unwrap(), load_addr as u32);
        assert_eq!(m.read_u64(bp + 0x070).unwrap(), 0xe0000);
        // Nothing past the header was copied.
        assert_eq!(m.read_u32(bp + 0x26c).unwrap(), 0);

        // Command line.
        assert_eq!(m.read_u32(bp + 0x228).unwrap(), CMDLINE_ADDR as u32);
        let mut cl = vec![0u8; 28];
        m.read(CMDLINE_ADDR, &mut cl).unwrap();
        assert_eq!(&cl, b"console=ttyS0 root=/dev/vda\0");

        // Initrd at the top of RAM, page aligned.
        let rd = m.read_u32(bp + 0x218).unwrap() as u64;
        assert_eq!(m.read_u32(bp + 0x21c).unwrap(), 3 << 20);
        assert_eq!(rd, (128 << 20) - (3 << 20));
        assert_eq!(rd % 4096, 0);
        assert_eq!(m.read_u32(bp + 0xc0).unwrap(), 0);
        assert_eq!(m.read_u8(rd + 12345).unwrap(), 0x5a);
        assert_eq!(s.ramdisks, vec![(rd, rd + (3 << 20))]);

        // E820.
        let e820 = m.map().e820();
        assert_eq!(m.read_u8(bp + 0x1e8).unwrap() as usize, e820.len());
        for (i, e) in e820.iter().enumerate() {
            let o = bp + 0x2d0 + i as u64 * 20;
            assert_eq!(m.read_u64(o).unwrap(), e.0);
            assert_eq!(m.read_u64(o + 8).unwrap(), e.1);
            assert_eq!(m.read_u32(o + 16).unwrap(), e.2);
        }

        // Page tables: 4 GiB identity map with 2 MiB pages.
        assert_eq!(m.read_u64(PML4_ADDR).unwrap(), PDPT_ADDR | 3);
        for i in 0..4 {
            let pd = m.read_u64(PDPT_ADDR + i * 8).unwrap();
            assert_eq!(pd, (PD_ADDR + i * 0x1000) | 3);
        }
        assert_eq!(m.read_u64(PDPT_ADDR + 32).unwrap(), 0);
        assert_eq!(m.read_u64(PD_ADDR).unwrap(), 0x83);
        assert_eq!(m.read_u64(PD_ADDR + 8).unwrap(), 0x20_0000 | 0x83);
        assert_eq!(
            m.read_u64(PD_ADDR + 3 * 0x1000 + 511 * 8).unwrap(),
            0xffe0_0000 | 0x83
        );

        // GDT.
        assert_eq!(m.read_u64(GDT_ADDR + 0x10).unwrap(), 0x00af_9b00_0000_ffff);
        assert_eq!(m.read_u64(GDT_ADDR + 0x18).unwrap(), 0x00cf_9300_0000_ffff);

        // Entry state.
        let st = &s.state;
        assert_eq!(st.rip, load_addr + 0x200);
        assert_eq!(st.gpr[reg::RSI], BOOT_PARAMS_ADDR);
        assert_eq!(st.rflags, 2);
        assert_eq!(st.cr3, PML4_ADDR);
        assert_eq!(
            st.cr0 & (ctl::CR0_PE | ctl::CR0_PG),
            ctl::CR0_PE | ctl::CR0_PG
        );
        assert_eq!(st.cr0 & (ctl::CR0_CD | ctl::CR0_NW), 0);
        assert_eq!(st.cr4 & ctl::CR4_PAE, ctl::CR4_PAE);
        assert!(st.long_mode() && st.efer & ctl::EFER_LME != 0);
        let cs = st.seg[sreg::CS];
        assert_eq!(
            (cs.selector, cs.l, cs.db, cs.present),
            (BOOT_CS, true, false, true)
        );
        for i in [sreg::DS, sreg::ES, sreg::SS] {
            assert_eq!(st.seg[i].selector, BOOT_DS);
            assert_eq!(st.seg[i].limit, 0xffff_ffff);
        }
        assert_eq!(
            st.gdtr,
            DescriptorTable {
                base: GDT_ADDR,
                limit: 31
            }
        );
    }

    #[test]
    fn non_relocatable_or_small_ram_loads_at_1mib() {
        let m = mem(16);
        let img = bzimage(0x020c, 0x1000);
        let s = load(&m, &img, None, "", Some(0xe0000)).unwrap();
        assert_eq!(s.kernel.0, KERNEL_LOAD_ADDR);
        assert_eq!(s.state.rip, KERNEL_LOAD_ADDR + 0x200);
        // Protocol 2.12 has no acpi_rsdp_addr: the field stays zero.
        assert_eq!(m.read_u64(BOOT_PARAMS_ADDR + 0x70).unwrap(), 0);
        assert!(s.ramdisks.is_empty());
        assert_eq!(m.read_u32(BOOT_PARAMS_ADDR + 0x218).unwrap(), 0);

        let m = mem(128);
        let mut img = bzimage(0x020f, 0x1000);
        img[0x234] = 0;
        assert_eq!(
            load(&m, &img, None, "", None).unwrap().kernel.0,
            KERNEL_LOAD_ADDR
        );
    }

    #[test]
    fn initrd_respects_initrd_addr_max() {
        let m = mem(256);
        let mut img = bzimage(0x020f, 0x1000);
        put32(&mut img, 0x22c, 0x07ff_ffff); // 128 MiB - 1
        let s = load(&m, &img, Some(&[1u8; 5000]), "", None).unwrap();
        let (a, e) = s.ramdisks[0];
        assert_eq!(a, (0x0800_0000 - 5000) & !0xfff);
        assert_eq!(e, a + 5000);
    }

    #[test]
    fn initrd_stays_above_the_decompression_area() {
        // A non-relocatable kernel is loaded at 1 MiB but decompresses at its
        // pref_address (16 MiB) and needs init_size (30 MiB) there: in 48 MiB, a 3 MiB
        // initrd cannot go below 46 MiB.
        let m = mem(48);
        let mut img = bzimage(0x020f, 0x1000);
        img[0x234] = 0;
        put32(&mut img, 0x260, 30 << 20);
        let e = load(&m, &img, Some(&vec![0u8; 3 << 20]), "", None).unwrap_err();
        assert!(
            matches!(e, BootError::InitrdTooLarge { low, .. } if low == 46 << 20),
            "{e}"
        );
        let s = load(&m, &img, Some(&vec![0u8; 2 << 20]), "", None).unwrap();
        assert_eq!(s.kernel.0, KERNEL_LOAD_ADDR);
        assert_eq!(s.ramdisks, vec![(46 << 20, 48 << 20)]);
    }

    #[test]
    fn errors_are_clear() {
        let m = mem(32);
        // Not a kernel.
        let e = load(&m, &[0u8; 8192], None, "", None).unwrap_err();
        assert!(matches!(e, BootError::NotAKernel), "{e}");
        // Old protocol.
        let e = load(&m, &bzimage(0x0204, 0x1000), None, "", None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "Linux boot protocol 2.04 is not supported (vireo needs 2.06 or later)"
        );
        // 2.10: no 64-bit entry point.
        let mut img = bzimage(0x020a, 0x1000);
        put16(&mut img, 0x236, 0);
        assert!(matches!(
            load(&m, &img, None, "", None),
            Err(BootError::No64BitEntry)
        ));
        // zImage.
        let mut img = bzimage(0x020f, 0x1000);
        img[0x211] = 0;
        assert!(matches!(
            load(&m, &img, None, "", None),
            Err(BootError::NotBzImage)
        ));
        // Truncated: cut inside the kernel, inside the setup code, inside the header.
        let img = bzimage(0x020f, 0x10000);
        for cut in [img.len() - 100, 0x800, 0x230, 0x204] {
            let e = load(&m, &img[..cut], None, "", None).unwrap_err();
            assert!(
                matches!(e, BootError::Truncated(_) | BootError::NotAKernel),
                "{cut:#x}: {e}"
            );
        }
        assert!(matches!(
            load(&m, &img[..img.len() - 100], None, "", None),
            Err(BootError::Truncated(_))
        ));
        // Kernel bigger than RAM.
        let big = bzimage(0x020f, 40 << 20);
        let e = load(&m, &big, None, "", None).unwrap_err();
        assert!(matches!(e, BootError::KernelTooLarge { .. }), "{e}");
        // Initrd bigger than RAM.
        let img = bzimage(0x020f, 0x1000);
        let e = load(&m, &img, Some(&vec![0u8; 32 << 20]), "", None).unwrap_err();
        assert!(matches!(e, BootError::InitrdTooLarge { .. }), "{e}");
        // Command line longer than cmdline_size.
        let e = load(&m, &img, None, &"x".repeat(2049), None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "kernel command line is 2049 bytes long, the kernel accepts at most 2048"
        );
        assert!(load(&m, &img, None, &"x".repeat(2048), None).is_ok());
    }

    #[test]
    fn hostile_header_values_do_not_panic() {
        let m = mem(32);
        let mut img = bzimage(0x020f, 0x1000);
        img[0x201] = 0xff; // header claims to run to 0x301 (clamped to 0x290)
        put64(&mut img, 0x258, u64::MAX - 0x100);
        put32(&mut img, 0x260, u32::MAX);
        put32(&mut img, 0x230, 0);
        put32(&mut img, 0x238, u32::MAX);
        put32(&mut img, 0x22c, u32::MAX);
        let s = load(&m, &img, Some(&[1; 100]), "x", None);
        // init_size claims 4 GiB: no room for an initrd above it.
        assert!(matches!(s, Err(BootError::InitrdTooLarge { .. })), "{s:?}");
        let s = load(&m, &img, None, "x", None).unwrap();
        assert_eq!(s.kernel.0, KERNEL_LOAD_ADDR);
        // setup_sects = 0 means 4.
        img[0x1f1] = 0;
        assert!(load(&m, &img, None, "", None).is_ok());
        img[0x1f1] = 0xff;
        assert!(matches!(
            load(&m, &img, None, "", None),
            Err(BootError::Truncated(_))
        ));
    }
}
