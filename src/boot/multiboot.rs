//! Multiboot v1: loads a kernel carrying a Multiboot header (ELF32, ELF64 with a 32-bit
//! entry point, or an "a.out kludge" image described by the header's address fields)
//! and its modules, builds the Multiboot information structure and returns the 32-bit
//! protected-mode entry state the specification requires.
//!
//! Placement:
//!
//! - kernel: where its ELF program headers (`p_paddr`) or the a.out-kludge address
//!   fields say; every byte must be guest RAM below 4 GiB (not ROM, not a hole).
//! - modules: in order, each page aligned, after the end of the kernel (bss included)
//!   and never below 1 MiB.
//! - information area (the `multiboot_info` structure, memory map, module list,
//!   strings, and the GDT): at [`INFO_ADDR`] (0x10000, it must end below the EBDA at
//!   0x9FC00) unless that overlaps the kernel, else page aligned after the last module.
//!
//! Entry state (spec section 3.2): EAX = 0x2BADB002, EBX = information structure, CS a
//! flat 32-bit code segment (selector 0x08), DS/ES/FS/GS/SS flat data (0x10), both in a
//! GDT written to guest memory, CR0 = PE|ET with paging off, EFLAGS = 2 (IF and VM
//! clear). The A20 gate must be on, which is the machine's power-on state.

use super::{align_up, check_ram, in_low_ram, le16, le32, le64, BootError, BootSetup, Result};
use vireo_core::cpu::{ctl, flags, reg, sreg, DescriptorTable, Segment};
use vireo_core::layout::{EBDA_START, FOUR_GIB, HIGH_MEMORY_START};
use vireo_core::{CpuState, GuestMemory};

/// Magic value of the Multiboot header.
pub const MULTIBOOT_MAGIC: u32 = 0x1bad_b002;
/// Value in EAX at entry.
pub const MULTIBOOT_BOOTLOADER_MAGIC: u32 = 0x2bad_b002;
/// The header must lie entirely in the first 8 KiB of the file.
pub const HEADER_SEARCH_LEN: usize = 8192;
/// Preferred address of the information area.
pub const INFO_ADDR: u64 = 0x1_0000;
/// Code segment selector at entry.
pub const CODE_SELECTOR: u16 = 0x08;
/// Data segment selector at entry.
pub const DATA_SELECTOR: u16 = 0x10;
/// Boot loader name passed in the information structure.
pub const BOOT_LOADER_NAME: &str = "vireo";

/// Header flags (the low 16 bits are requirements the loader must honour).
pub const HDR_PAGE_ALIGN: u32 = 1 << 0;
pub const HDR_MEMORY_INFO: u32 = 1 << 1;
pub const HDR_VIDEO_MODE: u32 = 1 << 2;
pub const HDR_AOUT_KLUDGE: u32 = 1 << 16;
/// Required flags vireo can satisfy. Video mode information (bit 2) is accepted, like
/// QEMU does, but not provided: the info structure has no VBE/framebuffer fields and
/// the guest starts in the text mode the firmware left.
const SUPPORTED_REQUIRED: u32 = HDR_PAGE_ALIGN | HDR_MEMORY_INFO | HDR_VIDEO_MODE;

/// Information structure flags.
pub const INFO_MEMORY: u32 = 1 << 0;
pub const INFO_CMDLINE: u32 = 1 << 2;
pub const INFO_MODS: u32 = 1 << 3;
pub const INFO_MEM_MAP: u32 = 1 << 6;
pub const INFO_BOOT_LOADER_NAME: u32 = 1 << 9;

/// Size of the `multiboot_info` structure (through the framebuffer fields).
const INFO_SIZE: usize = 116;
/// GDT: null, flat 32-bit code (0x08), flat data (0x10).
const GDT: [u64; 3] = [0, 0x00cf_9b00_0000_ffff, 0x00cf_9300_0000_ffff];

const PT_LOAD: u32 = 1;
const EM_386: u16 = 3;
const EM_X86_64: u16 = 62;

/// One module to load with the kernel.
#[derive(Debug, Clone, Copy)]
pub struct Module<'a> {
    /// The module's contents.
    pub data: &'a [u8],
    /// Its command line (by convention, and as QEMU does, the path followed by its
    /// arguments).
    pub cmdline: &'a str,
}

/// A module named on the command line: QEMU's `-initrd "path args,path2 args2"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleSpec {
    /// The file to load: the text before the first space.
    pub path: String,
    /// The module's command line: the whole item, path included.
    pub cmdline: String,
}

/// Splits a QEMU-style module list: items separated by `,` (a doubled `,,` is a
/// literal comma); in each, the file name ends at the first space.
pub fn parse_module_specs(spec: &str) -> Vec<ModuleSpec> {
    let mut items = Vec::new();
    let mut cur = String::new();
    let mut chars = spec.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ',' {
            if chars.peek() == Some(&',') {
                chars.next();
                cur.push(',');
            } else {
                items.push(std::mem::take(&mut cur));
            }
        } else {
            cur.push(c);
        }
    }
    items.push(cur);
    items
        .into_iter()
        .filter(|s| !s.trim().is_empty())
        .map(|s| {
            let path = s.split(' ').next().unwrap_or_default().to_string();
            ModuleSpec { path, cmdline: s }
        })
        .collect()
}

/// The Multiboot header of a kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Offset of the header in the file.
    pub offset: usize,
    pub flags: u32,
    /// The a.out-kludge address fields, when flag 16 is set:
    /// `header_addr, load_addr, load_end_addr, bss_end_addr, entry_addr`.
    pub addrs: Option<[u32; 5]>,
}

/// Finds the Multiboot header: the magic at a 4-byte aligned offset in the first 8 KiB
/// with a valid checksum. `Ok(None)` when there is no magic at all, an error when there
/// is a magic but no valid checksum.
pub fn find_header(bytes: &[u8]) -> Result<Option<usize>> {
    let mut bad_checksum = false;
    let limit = bytes.len().min(HEADER_SEARCH_LEN);
    for off in (0..limit.saturating_sub(11)).step_by(4) {
        let (Some(magic), Some(flags), Some(sum)) =
            (le32(bytes, off), le32(bytes, off + 4), le32(bytes, off + 8))
        else {
            break;
        };
        if magic != MULTIBOOT_MAGIC {
            continue;
        }
        if magic.wrapping_add(flags).wrapping_add(sum) == 0 {
            return Ok(Some(off));
        }
        bad_checksum = true;
    }
    if bad_checksum {
        Err(BootError::MultibootChecksum)
    } else {
        Ok(None)
    }
}

/// Parses the header of `bytes`.
pub fn parse_header(bytes: &[u8]) -> Result<Header> {
    let offset = find_header(bytes)?.ok_or(BootError::NotAKernel)?;
    let flags = le32(bytes, offset + 4).ok_or(BootError::NotAKernel)?;
    let required = flags & 0xffff;
    if required & !SUPPORTED_REQUIRED != 0 {
        return Err(BootError::MultibootFlags(flags));
    }
    let addrs = if flags & HDR_AOUT_KLUDGE != 0 {
        let mut a = [0u32; 5];
        for (i, v) in a.iter_mut().enumerate() {
            *v = le32(bytes, offset + 12 + 4 * i).ok_or_else(|| {
                BootError::Truncated("Multiboot header address fields".to_string())
            })?;
        }
        Some(a)
    } else {
        None
    };
    Ok(Header {
        offset,
        flags,
        addrs,
    })
}

/// A piece of the kernel image in guest memory.
#[derive(Debug, Clone, Copy)]
struct Segment32<'a> {
    paddr: u64,
    data: &'a [u8],
    memsz: u64,
}

/// The kernel's segments and physical entry point.
struct Image<'a> {
    segments: Vec<Segment32<'a>>,
    entry: u64,
}

fn bad(msg: impl Into<String>) -> BootError {
    BootError::Multiboot(msg.into())
}

/// Segments of an a.out-kludge kernel.
fn aout_image<'a>(bytes: &'a [u8], h: &Header, a: [u32; 5]) -> Result<Image<'a>> {
    let [header_addr, load_addr, load_end_addr, bss_end_addr, entry_addr] = a.map(u64::from);
    let before = header_addr
        .checked_sub(load_addr)
        .ok_or_else(|| bad("header_addr is below load_addr"))?;
    let file_start = (h.offset as u64)
        .checked_sub(before)
        .ok_or_else(|| bad("load_addr lies before the start of the file"))?
        as usize;
    let load_len = if load_end_addr == 0 {
        (bytes.len() - file_start) as u64
    } else {
        load_end_addr
            .checked_sub(load_addr)
            .ok_or_else(|| bad("load_end_addr is below load_addr"))?
    };
    let file_end = (file_start as u64).saturating_add(load_len);
    if file_end > bytes.len() as u64 {
        return Err(BootError::Truncated(format!(
            "the Multiboot header asks for {load_len} bytes from offset {file_start:#x}, the file has {}",
            bytes.len()
        )));
    }
    let load_end = load_addr + load_len;
    let memsz = if bss_end_addr == 0 {
        load_len
    } else {
        bss_end_addr
            .checked_sub(load_addr)
            .filter(|m| *m >= load_len)
            .ok_or_else(|| bad("bss_end_addr is below load_end_addr"))?
    };
    log::debug!(target: "vireo::boot",
        "a.out kludge: {load_len:#x} bytes at {load_addr:#x}..{load_end:#x}, memsz {memsz:#x}");
    Ok(Image {
        segments: vec![Segment32 {
            paddr: load_addr,
            data: &bytes[file_start..file_end as usize],
            memsz,
        }],
        entry: entry_addr,
    })
}

/// Segments of an ELF32 or ELF64 kernel (PT_LOAD at `p_paddr`).
fn elf_image(bytes: &[u8]) -> Result<Image<'_>> {
    if bytes.get(..4) != Some(b"\x7fELF") {
        return Err(bad("no a.out kludge address fields and not an ELF file"));
    }
    let trunc = || BootError::Truncated("ELF headers".to_string());
    let class = *bytes.get(4).ok_or_else(trunc)?;
    if bytes.get(5) != Some(&1) {
        return Err(bad("ELF file is not little endian"));
    }
    let machine = le16(bytes, 18).ok_or_else(trunc)?;
    let (is64, entry, phoff, phentsize, phnum) = match (class, machine) {
        (1, EM_386) => (
            false,
            u64::from(le32(bytes, 24).ok_or_else(trunc)?),
            u64::from(le32(bytes, 28).ok_or_else(trunc)?),
            le16(bytes, 42).ok_or_else(trunc)?,
            le16(bytes, 44).ok_or_else(trunc)?,
        ),
        (2, EM_X86_64) => (
            true,
            le64(bytes, 24).ok_or_else(trunc)?,
            le64(bytes, 32).ok_or_else(trunc)?,
            le16(bytes, 54).ok_or_else(trunc)?,
            le16(bytes, 56).ok_or_else(trunc)?,
        ),
        _ => {
            return Err(bad(format!(
                "unsupported ELF class {class} / machine {machine}"
            )))
        }
    };
    let min_phentsize = if is64 { 56 } else { 32 };
    if usize::from(phentsize) < min_phentsize {
        return Err(bad(format!(
            "ELF program header size {phentsize} is too small"
        )));
    }
    let mut segments = Vec::new();
    let mut entry_paddr = None;
    for i in 0..u64::from(phnum) {
        let o = phoff
            .checked_add(i * u64::from(phentsize))
            .and_then(|o| usize::try_from(o).ok())
            .filter(|o| o.saturating_add(min_phentsize) <= bytes.len())
            .ok_or_else(|| BootError::Truncated("ELF program headers".to_string()))?;
        let (ptype, offset, vaddr, paddr, filesz, memsz) = if is64 {
            (
                le32(bytes, o).ok_or_else(trunc)?,
                le64(bytes, o + 8).ok_or_else(trunc)?,
                le64(bytes, o + 16).ok_or_else(trunc)?,
                le64(bytes, o + 24).ok_or_else(trunc)?,
                le64(bytes, o + 32).ok_or_else(trunc)?,
                le64(bytes, o + 40).ok_or_else(trunc)?,
            )
        } else {
            let f = |k: usize| le32(bytes, o + k).map(u64::from).ok_or_else(trunc);
            (f(0)? as u32, f(4)?, f(8)?, f(12)?, f(16)?, f(20)?)
        };
        if ptype != PT_LOAD || memsz == 0 {
            continue;
        }
        if filesz > memsz {
            return Err(bad(format!("ELF segment {i} has p_filesz > p_memsz")));
        }
        let end = offset
            .checked_add(filesz)
            .filter(|e| *e <= bytes.len() as u64)
            .ok_or_else(|| {
                BootError::Truncated(format!("ELF segment {i} runs past the end of the file"))
            })?;
        if entry >= vaddr && entry - vaddr < memsz {
            entry_paddr = Some(paddr.wrapping_add(entry - vaddr));
        }
        segments.push(Segment32 {
            paddr,
            data: &bytes[offset as usize..end as usize],
            memsz,
        });
    }
    if segments.is_empty() {
        return Err(bad("ELF file has no loadable segment"));
    }
    Ok(Image {
        segments,
        entry: entry_paddr.unwrap_or(entry),
    })
}

/// Builds the information area for base address `base`; returns its bytes, the
/// address of the `multiboot_info` structure and the GDT's address.
fn build_info(
    mem: &GuestMemory,
    base: u64,
    cmdline: &str,
    modules: &[Module<'_>],
    mod_ranges: &[(u64, u64)],
) -> (Vec<u8>, u64, u64) {
    let mut b = vec![0u8; INFO_SIZE];
    let pad8 = |b: &mut Vec<u8>| b.resize(b.len().div_ceil(8) * 8, 0);
    pad8(&mut b);
    let gdt_off = b.len();
    for d in GDT {
        b.extend_from_slice(&d.to_le_bytes());
    }
    // Memory map: {size = 20, base, length, type}, `mmap_addr` points at the size field.
    let mmap_off = b.len();
    for (addr, len, ty) in mem.map().e820() {
        b.extend_from_slice(&20u32.to_le_bytes());
        b.extend_from_slice(&addr.to_le_bytes());
        b.extend_from_slice(&len.to_le_bytes());
        b.extend_from_slice(&ty.to_le_bytes());
    }
    let mmap_len = b.len() - mmap_off;
    pad8(&mut b);
    let mods_off = b.len();
    b.resize(mods_off + 16 * modules.len(), 0);
    let add_str = |b: &mut Vec<u8>, s: &str| -> u32 {
        let o = b.len();
        b.extend_from_slice(s.as_bytes());
        b.push(0);
        (base + o as u64) as u32
    };
    let cmdline_addr = add_str(&mut b, cmdline);
    let name_addr = add_str(&mut b, BOOT_LOADER_NAME);
    for (i, (m, &(start, end))) in modules.iter().zip(mod_ranges).enumerate() {
        let s = add_str(&mut b, m.cmdline);
        let o = mods_off + 16 * i;
        b[o..o + 4].copy_from_slice(&(start as u32).to_le_bytes());
        b[o + 4..o + 8].copy_from_slice(&(end as u32).to_le_bytes());
        b[o + 8..o + 12].copy_from_slice(&s.to_le_bytes());
    }

    let map = mem.map();
    let mem_lower = (EBDA_START / 1024) as u32;
    let mem_upper = (map.low_end.saturating_sub(HIGH_MEMORY_START) / 1024) as u32;
    let abs = |o: usize| (base + o as u64) as u32;
    let mut put = |o: usize, v: u32| b[o..o + 4].copy_from_slice(&v.to_le_bytes());
    put(
        0,
        INFO_MEMORY | INFO_CMDLINE | INFO_MODS | INFO_MEM_MAP | INFO_BOOT_LOADER_NAME,
    );
    put(4, mem_lower);
    put(8, mem_upper);
    put(16, cmdline_addr);
    put(20, modules.len() as u32);
    put(24, abs(mods_off));
    put(44, mmap_len as u32);
    put(48, abs(mmap_off));
    put(64, name_addr);
    (b, base, base + gdt_off as u64)
}

fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 < b.1 && b.0 < a.1
}

/// The 32-bit protected-mode entry state.
fn entry_state(entry: u64, info: u64, gdt: u64) -> CpuState {
    let mut s = CpuState::reset();
    s.seg[sreg::CS] = Segment::from_descriptor(CODE_SELECTOR, GDT[1]);
    let data = Segment::from_descriptor(DATA_SELECTOR, GDT[2]);
    for i in [sreg::DS, sreg::ES, sreg::FS, sreg::GS, sreg::SS] {
        s.seg[i] = data;
    }
    s.gdtr = DescriptorTable {
        base: gdt,
        limit: (GDT.len() * 8 - 1) as u16,
    };
    s.idtr = DescriptorTable { base: 0, limit: 0 };
    s.cr0 = ctl::CR0_PE | ctl::CR0_ET;
    s.cr3 = 0;
    s.cr4 = 0;
    s.efer = 0;
    s.rip = entry;
    s.rflags = flags::FIXED1;
    s.gpr[reg::RAX] = u64::from(MULTIBOOT_BOOTLOADER_MAGIC);
    s.gpr[reg::RBX] = info;
    s
}

/// Loads the Multiboot kernel `kernel` with `modules` into `mem`; `cmdline` is the
/// kernel's command line as the information structure passes it (QEMU passes the
/// kernel's path followed by `-append`).
pub fn load(
    mem: &GuestMemory,
    kernel: &[u8],
    cmdline: &str,
    modules: &[Module<'_>],
) -> Result<BootSetup> {
    let h = parse_header(kernel)?;
    if h.flags & HDR_VIDEO_MODE != 0 {
        log::warn!(target: "vireo::boot",
            "Multiboot kernel asks for a video mode: not supported, it gets text mode");
    }
    let image = match h.addrs {
        Some(a) => aout_image(kernel, &h, a)?,
        None => elf_image(kernel)?,
    };
    if image.entry >= FOUR_GIB {
        return Err(bad(format!(
            "entry point {:#x} is above 4 GiB",
            image.entry
        )));
    }

    // Kernel segments.
    let mut kernel_range = (u64::MAX, 0u64);
    let mut used = Vec::new();
    for (i, seg) in image.segments.iter().enumerate() {
        check_ram(mem, &format!("kernel segment {i}"), seg.paddr, seg.memsz)?;
        let end = seg.paddr + seg.memsz;
        mem.write(seg.paddr, seg.data)?;
        let zero_from = seg.paddr + seg.data.len() as u64;
        if end > zero_from {
            mem.write(zero_from, &vec![0u8; (end - zero_from) as usize])?;
        }
        kernel_range = (kernel_range.0.min(seg.paddr), kernel_range.1.max(end));
        used.push((seg.paddr, end));
    }

    // Modules, page aligned after the kernel.
    let mut next = kernel_range.1.max(HIGH_MEMORY_START);
    let mut mod_ranges = Vec::with_capacity(modules.len());
    for (i, m) in modules.iter().enumerate() {
        let len = m.data.len() as u64;
        let start = align_up(next, 4096).unwrap_or(u64::MAX);
        check_ram(mem, &format!("module {i} ({len} bytes)"), start, len)?;
        mem.write(start, m.data)?;
        mod_ranges.push((start, start + len));
        used.push((start, start + len));
        next = start + len;
        log::debug!(target: "vireo::boot", "module {i}: {len} bytes at {start:#x}");
    }

    // The information area: low memory if free, else after the modules.
    let (probe, _, _) = build_info(mem, INFO_ADDR, cmdline, modules, &mod_ranges);
    let len = probe.len() as u64;
    let low = (INFO_ADDR, INFO_ADDR + len);
    let base = if low.1 <= EBDA_START && !used.iter().any(|u| overlaps(*u, low)) {
        INFO_ADDR
    } else {
        align_up(next, 4096).unwrap_or(u64::MAX)
    };
    check_ram(mem, "Multiboot information", base, len)?;
    let (info, info_addr, gdt_addr) = build_info(mem, base, cmdline, modules, &mod_ranges);
    debug_assert!(in_low_ram(mem, base, info.len() as u64));
    mem.write(base, &info)?;

    log::info!(target: "vireo::boot",
        "Multiboot kernel at {:#x}..{:#x}, entry {:#x}, {} module(s), info at {info_addr:#x}",
        kernel_range.0, kernel_range.1, image.entry, modules.len());
    Ok(BootSetup {
        state: entry_state(image.entry, info_addr, gdt_addr),
        kernel: kernel_range,
        ramdisks: mod_ranges,
        info_addr,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put32(b: &mut [u8], o: usize, v: u32) {
        b[o..o + 4].copy_from_slice(&v.to_le_bytes());
    }
    fn put16(b: &mut [u8], o: usize, v: u16) {
        b[o..o + 2].copy_from_slice(&v.to_le_bytes());
    }
    fn header(b: &mut [u8], off: usize, flags: u32) {
        put32(b, off, MULTIBOOT_MAGIC);
        put32(b, off + 4, flags);
        put32(
            b,
            off + 8,
            0u32.wrapping_sub(MULTIBOOT_MAGIC).wrapping_sub(flags),
        );
    }

    /// An ELF32 kernel: one PT_LOAD of 0x200 file bytes + 0x1000 bss at paddr 0x100000,
    /// vaddr 0xC0100000, entry at vaddr + 0x10; the Multiboot header in the segment.
    fn elf_kernel(paddr: u32) -> Vec<u8> {
        let mut b = vec![0u8; 0x1200];
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = 1;
        b[5] = 1;
        b[6] = 1;
        put16(&mut b, 16, 2);
        put16(&mut b, 18, EM_386);
        put32(&mut b, 24, 0xc010_0010);
        put32(&mut b, 28, 52);
        put16(&mut b, 42, 32);
        put16(&mut b, 44, 2);
        // PT_NOTE first (ignored), then PT_LOAD.
        put32(&mut b, 52, 4);
        let p = 52 + 32;
        put32(&mut b, p, PT_LOAD);
        put32(&mut b, p + 4, 0x1000);
        put32(&mut b, p + 8, 0xc010_0000);
        put32(&mut b, p + 12, paddr);
        put32(&mut b, p + 16, 0x200);
        put32(&mut b, p + 20, 0x1200);
        header(&mut b, 0x1000, HDR_PAGE_ALIGN | HDR_MEMORY_INFO);
        for x in &mut b[0x1010..0x1200] {
            *x = 0x90;
        }
        b
    }

    /// An a.out-kludge kernel: header at file offset 0x40, loaded at 0x200000.
    fn aout_kernel() -> Vec<u8> {
        let mut b = vec![0xccu8; 0x800];
        header(&mut b, 0x40, HDR_AOUT_KLUDGE | HDR_MEMORY_INFO);
        put32(&mut b, 0x4c, 0x20_0040); // header_addr
        put32(&mut b, 0x50, 0x20_0000); // load_addr
        put32(&mut b, 0x54, 0x20_0600); // load_end_addr
        put32(&mut b, 0x58, 0x20_2000); // bss_end_addr
        put32(&mut b, 0x5c, 0x20_0100); // entry_addr
        b
    }

    fn mem() -> GuestMemory {
        GuestMemory::new(64 << 20).unwrap()
    }

    fn cstr(m: &GuestMemory, addr: u64) -> String {
        let mut s = Vec::new();
        for a in addr.. {
            let c = m.read_u8(a).unwrap();
            if c == 0 {
                break;
            }
            s.push(c);
        }
        String::from_utf8(s).unwrap()
    }

    #[test]
    fn elf_kernel_with_modules() {
        let m = mem();
        // Dirty the bss first: it must come back zeroed.
        m.write(0x10_0300, &[0xff; 16]).unwrap();
        let k = elf_kernel(0x10_0000);
        let mods = [
            Module {
                data: &[1u8; 5000],
                cmdline: "/boot/mod1 arg=1",
            },
            Module {
                data: &[2u8; 100],
                cmdline: "mod2",
            },
        ];
        let s = load(&m, &k, "kernel.elf console=com1", &mods).unwrap();
        assert_eq!(s.kernel, (0x10_0000, 0x10_1200));
        assert_eq!(m.read_u8(0x10_0010).unwrap(), 0x90);
        assert_eq!(m.read_u64(0x10_0300).unwrap(), 0);
        // Entry translated from vaddr to paddr.
        let st = &s.state;
        assert_eq!(st.rip, 0x10_0010);
        assert_eq!(st.gpr[reg::RAX], 0x2bad_b002);
        assert_eq!(st.gpr[reg::RBX], INFO_ADDR);
        assert_eq!(st.rflags, 2);
        assert_eq!(st.cr0 & ctl::CR0_PG, 0);
        assert_eq!(st.cr0 & ctl::CR0_PE, ctl::CR0_PE);
        assert!(!st.long_mode());
        let cs = st.seg[sreg::CS];
        assert_eq!(
            (cs.selector, cs.base, cs.limit, cs.db, cs.l),
            (8, 0, 0xffff_ffff, true, false)
        );
        for i in [sreg::DS, sreg::ES, sreg::FS, sreg::GS, sreg::SS] {
            assert_eq!(st.seg[i].selector, 0x10);
            assert_eq!(st.seg[i].limit, 0xffff_ffff);
        }
        // The GDT in memory matches the hidden state.
        let g = st.gdtr;
        assert_eq!(g.limit, 23);
        assert_eq!(m.read_u64(g.base + 8).unwrap(), GDT[1]);
        assert_eq!(
            Segment::from_descriptor(0x10, m.read_u64(g.base + 16).unwrap()),
            st.seg[sreg::DS]
        );

        // Information structure.
        let i = s.info_addr;
        let fl = m.read_u32(i).unwrap();
        assert_eq!(
            fl,
            INFO_MEMORY | INFO_CMDLINE | INFO_MODS | INFO_MEM_MAP | INFO_BOOT_LOADER_NAME
        );
        assert_eq!(m.read_u32(i + 4).unwrap(), 639);
        assert_eq!(m.read_u32(i + 8).unwrap(), (64 << 10) - 1024);
        assert_eq!(
            cstr(&m, m.read_u32(i + 16).unwrap().into()),
            "kernel.elf console=com1"
        );
        assert_eq!(cstr(&m, m.read_u32(i + 64).unwrap().into()), "vireo");
        // Modules: page aligned after the kernel, in order, with their strings.
        assert_eq!(m.read_u32(i + 20).unwrap(), 2);
        let mods_addr = u64::from(m.read_u32(i + 24).unwrap());
        let m0 = (
            m.read_u32(mods_addr).unwrap(),
            m.read_u32(mods_addr + 4).unwrap(),
        );
        let m1 = (
            m.read_u32(mods_addr + 16).unwrap(),
            m.read_u32(mods_addr + 20).unwrap(),
        );
        assert_eq!(m0, (0x10_2000, 0x10_2000 + 5000));
        assert_eq!(m1, (0x10_4000, 0x10_4000 + 100));
        assert_eq!(
            cstr(&m, m.read_u32(mods_addr + 8).unwrap().into()),
            "/boot/mod1 arg=1"
        );
        assert_eq!(cstr(&m, m.read_u32(mods_addr + 24).unwrap().into()), "mod2");
        assert_eq!(m.read_u8(0x10_4000 + 99).unwrap(), 2);
        assert_eq!(
            s.ramdisks,
            vec![(0x10_2000, 0x10_2000 + 5000), (0x10_4000, 0x10_4000 + 100)]
        );
        // Memory map.
        let e820 = m.map().e820();
        assert_eq!(m.read_u32(i + 44).unwrap() as usize, e820.len() * 24);
        let mm = u64::from(m.read_u32(i + 48).unwrap());
        for (n, e) in e820.iter().enumerate() {
            let o = mm + n as u64 * 24;
            assert_eq!(m.read_u32(o).unwrap(), 20);
            assert_eq!(m.read_u64(o + 4).unwrap(), e.0);
            assert_eq!(m.read_u64(o + 12).unwrap(), e.1);
            assert_eq!(m.read_u32(o + 20).unwrap(), e.2);
        }
    }

    #[test]
    fn elf64_kernel() {
        let m = mem();
        let mut b = vec![0u8; 0x1100];
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = 2;
        b[5] = 1;
        put16(&mut b, 16, 2);
        put16(&mut b, 18, EM_X86_64);
        b[24..32].copy_from_slice(&0x20_0000u64.to_le_bytes());
        b[32..40].copy_from_slice(&64u64.to_le_bytes());
        put16(&mut b, 54, 56);
        put16(&mut b, 56, 1);
        let p = 64;
        put32(&mut b, p, PT_LOAD);
        for (k, v) in [
            (8, 0x1000u64),
            (16, 0x20_0000),
            (24, 0x20_0000),
            (32, 0x100),
            (40, 0x100),
        ] {
            b[p + k..p + k + 8].copy_from_slice(&v.to_le_bytes());
        }
        header(&mut b, 0x1000, 0);
        let s = load(&m, &b, "", &[]).unwrap();
        assert_eq!(s.state.rip, 0x20_0000);
        assert_eq!(s.kernel, (0x20_0000, 0x20_0100));
    }

    #[test]
    fn aout_kludge_kernel() {
        let m = mem();
        m.write(0x20_1000, &[0xff; 8]).unwrap();
        let k = aout_kernel();
        let s = load(&m, &k, "aout", &[]).unwrap();
        assert_eq!(s.kernel, (0x20_0000, 0x20_2000));
        assert_eq!(s.state.rip, 0x20_0100);
        // File offset 0 is loaded at load_addr; bss is zeroed.
        assert_eq!(m.read_u32(0x20_0040).unwrap(), MULTIBOOT_MAGIC);
        assert_eq!(m.read_u8(0x20_05ff).unwrap(), 0xcc);
        assert_eq!(m.read_u8(0x20_0600).unwrap(), 0);
        assert_eq!(m.read_u64(0x20_1000).unwrap(), 0);
        assert_eq!(m.read_u32(s.info_addr + 20).unwrap(), 0);
    }

    #[test]
    fn info_moves_when_the_kernel_is_in_low_memory() {
        let m = mem();
        let k = elf_kernel(0x1_0000);
        let s = load(
            &m,
            &k,
            "",
            &[Module {
                data: &[7; 10],
                cmdline: "m",
            }],
        )
        .unwrap();
        assert_eq!(s.kernel, (0x1_0000, 0x1_1200));
        assert_eq!(s.ramdisks, vec![(0x10_0000, 0x10_000a)]);
        assert_eq!(s.info_addr, 0x10_1000);
        assert_eq!(s.state.gpr[reg::RBX], 0x10_1000);
    }

    #[test]
    fn errors() {
        let m = mem();
        // No header.
        assert!(matches!(
            load(&m, &[0u8; 9000], "", &[]),
            Err(BootError::NotAKernel)
        ));
        // Bad checksum.
        let mut k = elf_kernel(0x10_0000);
        put32(&mut k, 0x1008, 0x1234);
        assert_eq!(
            load(&m, &k, "", &[]).unwrap_err().to_string(),
            "Multiboot header checksum is wrong"
        );
        // Header past the first 8 KiB is not found.
        let mut far = vec![0u8; 0x3000];
        header(&mut far, 0x2000, 0);
        assert!(matches!(
            load(&m, &far, "", &[]),
            Err(BootError::NotAKernel)
        ));
        // Unsupported required flag.
        let mut k = elf_kernel(0x10_0000);
        header(&mut k, 0x1000, 1 << 5);
        assert!(matches!(
            load(&m, &k, "", &[]),
            Err(BootError::MultibootFlags(0x20))
        ));
        // Unknown optional flags are fine, video mode is tolerated.
        header(&mut k, 0x1000, (1 << 20) | HDR_VIDEO_MODE);
        assert!(load(&m, &k, "", &[]).is_ok());
        // Segment outside RAM: in the VGA hole, and past the end of RAM.
        for paddr in [0xa_0000, (64 << 20) - 0x1000, 0xffff_f000] {
            let e = load(&m, &elf_kernel(paddr), "", &[]).unwrap_err();
            assert!(matches!(e, BootError::OutsideRam { .. }), "{paddr:#x}: {e}");
        }
        // Truncated: the ELF segment runs past the end of the file.
        let k = elf_kernel(0x10_0000);
        let e = load(&m, &k[..0x1100], "", &[]).unwrap_err();
        assert!(matches!(e, BootError::Truncated(_)), "{e}");
        // Truncated a.out: load_end_addr beyond the file.
        let k = aout_kernel();
        let e = load(&m, &k[..0x400], "", &[]).unwrap_err();
        assert!(matches!(e, BootError::Truncated(_)), "{e}");
        // Inconsistent a.out addresses.
        let mut k = aout_kernel();
        put32(&mut k, 0x4c, 0x10_0000); // header_addr below load_addr
        assert!(matches!(
            load(&m, &k, "", &[]),
            Err(BootError::Multiboot(_))
        ));
        let mut k = aout_kernel();
        put32(&mut k, 0x58, 0x20_0100); // bss_end below load_end
        assert!(matches!(
            load(&m, &k, "", &[]),
            Err(BootError::Multiboot(_))
        ));
        // A header but neither a.out fields nor ELF.
        let mut k = vec![0u8; 64];
        header(&mut k, 0, 0);
        assert!(matches!(
            load(&m, &k, "", &[]),
            Err(BootError::Multiboot(_))
        ));
        // Module too large for RAM.
        let big = vec![0u8; 64 << 20];
        let e = load(
            &m,
            &elf_kernel(0x10_0000),
            "",
            &[Module {
                data: &big,
                cmdline: "x",
            }],
        );
        assert!(matches!(e, Err(BootError::OutsideRam { .. })));
        // Hostile program header table offset.
        let mut k = elf_kernel(0x10_0000);
        put32(&mut k, 28, 0xffff_fff0);
        assert!(matches!(
            load(&m, &k, "", &[]),
            Err(BootError::Truncated(_))
        ));
    }

    #[test]
    fn module_specs_like_qemu() {
        let v = parse_module_specs("/a/b.mod arg1 arg2,/c,,d,,");
        assert_eq!(
            v,
            vec![
                ModuleSpec {
                    path: "/a/b.mod".into(),
                    cmdline: "/a/b.mod arg1 arg2".into()
                },
                ModuleSpec {
                    path: "/c,d,".into(),
                    cmdline: "/c,d,".into()
                },
            ]
        );
        assert!(parse_module_specs("").is_empty());
    }
}
