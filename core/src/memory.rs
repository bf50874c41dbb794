//! Guest physical memory: RAM and firmware ROM backed by anonymous host mappings.
//!
//! Accesses are bounds-checked against the PC memory map ([`crate::layout`]): an access
//! that is not entirely inside one RAM or ROM region is an error the caller turns into
//! a guest-visible result (all-ones read, dropped write, DMA error status), never a
//! host access outside the mappings.

use crate::error::{Error, Result};
use crate::layout::{MemoryMap, RegionKind, RegionSpec, BIOS_SIZE, MIN_RAM};
use memmap2::{MmapMut, MmapOptions};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// A region as the engines see it: where it is in the guest and in the host.
#[derive(Debug, Clone, Copy)]
pub struct HostRegion {
    pub gpa: u64,
    pub len: u64,
    pub kind: RegionKind,
    /// Host address of the region's first byte.
    pub host_addr: u64,
}

/// Guest RAM plus the firmware ROM, laid out as on a PC.
pub struct GuestMemory {
    map: MemoryMap,
    /// Kept alive for the pointers below; never accessed through a reference.
    _ram: MmapMut,
    _rom: MmapMut,
    ram_ptr: *mut u8,
    ram_len: usize,
    rom_ptr: *mut u8,
    regions: Vec<HostRegion>,
    /// One bit per 4 KiB page below `dma_limit`: written through [`GuestMemory::write`]
    /// (devices, loaders) since the last [`GuestMemory::take_dma_pages`]. The TCG
    /// engine drops translated code on those pages (self-modifying code by DMA).
    dma_pages: Box<[AtomicU64]>,
    dma_pending: AtomicBool,
}

// SAFETY: the mappings live as long as `GuestMemory` and are only accessed through raw
// pointer copies that are bounds-checked; concurrent access from vCPU threads is the
// guest's own business, as on real hardware (no Rust reference into guest memory is
// ever created).
unsafe impl Send for GuestMemory {}
// SAFETY: see `Send` above; all shared access goes through `&self` raw copies.
unsafe impl Sync for GuestMemory {}

impl GuestMemory {
    /// Allocates `ram_size` bytes of RAM (lazily, pages are touched on first use) and the
    /// firmware ROM.
    pub fn new(ram_size: u64) -> Result<GuestMemory> {
        Self::with_map(ram_size, MemoryMap::pc)
    }

    /// Flat RAM `[0, ram_size)` without PC holes or ROM (instruction tests).
    pub fn new_flat(ram_size: u64) -> Result<GuestMemory> {
        Self::with_map(ram_size, MemoryMap::flat)
    }

    fn with_map(ram_size: u64, layout: fn(u64) -> MemoryMap) -> Result<GuestMemory> {
        if ram_size < MIN_RAM {
            return Err(Error::BadMemorySize(ram_size, "vireo needs at least 2 MiB"));
        }
        if !ram_size.is_multiple_of(4096) {
            return Err(Error::BadMemorySize(ram_size, "not a multiple of 4 KiB"));
        }
        let len = usize::try_from(ram_size)
            .map_err(|_| Error::BadMemorySize(ram_size, "larger than the host address space"))?;
        let alloc = |len: usize| {
            MmapOptions::new()
                .len(len)
                .map_anon()
                .map_err(|source| Error::MemoryAlloc {
                    size: ram_size >> 20,
                    source,
                })
        };
        let mut ram = alloc(len)?;
        let mut rom = alloc(BIOS_SIZE as usize)?;
        // Fill the ROM with 0xFF like an erased flash part.
        rom.fill(0xff);
        let map = layout(ram_size);
        let ram_base = ram.as_mut_ptr() as u64;
        let rom_base = rom.as_mut_ptr() as u64;
        let regions: Vec<HostRegion> = map
            .regions
            .iter()
            .map(|r: &RegionSpec| HostRegion {
                gpa: r.gpa,
                len: r.len,
                kind: r.kind,
                host_addr: match r.kind {
                    RegionKind::Ram => ram_base + r.offset,
                    RegionKind::Rom => rom_base + r.offset,
                },
            })
            .collect();
        let top = regions
            .iter()
            .filter(|r: &&HostRegion| r.kind == RegionKind::Ram)
            .map(|r| r.gpa + r.len)
            .max()
            .unwrap_or(0);
        let words = (top >> 12).div_ceil(64) as usize;
        Ok(GuestMemory {
            dma_pages: (0..words).map(|_| AtomicU64::new(0)).collect(),
            dma_pending: AtomicBool::new(false),
            map,
            ram_ptr: ram.as_mut_ptr(),
            ram_len: ram.len(),
            rom_ptr: rom.as_mut_ptr(),
            _ram: ram,
            _rom: rom,
            regions,
        })
    }

    /// The memory map this memory was laid out with.
    pub fn map(&self) -> &MemoryMap {
        &self.map
    }

    /// Total RAM size in bytes.
    pub fn ram_size(&self) -> u64 {
        self.map.ram_size
    }

    /// All RAM and ROM regions with their host addresses (for KVM memory slots and the
    /// TCG softmmu).
    pub fn regions(&self) -> &[HostRegion] {
        &self.regions
    }

    /// The region that holds all of `[gpa, gpa+len)`.
    pub fn region_of(&self, gpa: u64, len: u64) -> Option<&HostRegion> {
        let end = gpa.checked_add(len)?;
        self.regions
            .iter()
            .find(|r| gpa >= r.gpa && end <= r.gpa + r.len)
    }

    /// Host pointer for `[gpa, gpa+len)` if it lies in RAM or ROM.
    fn host_ptr(&self, gpa: u64, len: usize) -> Result<(*mut u8, RegionKind)> {
        let r = self.region_of(gpa, len as u64).ok_or(Error::OutOfRange {
            addr: gpa,
            len: len as u64,
        })?;
        Ok(((r.host_addr + (gpa - r.gpa)) as *mut u8, r.kind))
    }

    /// Reads guest memory (RAM or ROM) into `buf`.
    pub fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<()> {
        let (p, _) = self.host_ptr(gpa, buf.len())?;
        // SAFETY: `host_ptr` checked that the whole range lies inside one live mapping;
        // `buf` is a distinct host buffer.
        unsafe { copy(p, buf.as_mut_ptr(), buf.len()) };
        Ok(())
    }

    /// Writes `data` to guest memory as a DMA master (a device, a loader) would:
    /// writes into ROM are dropped, and the pages written are recorded for the TCG
    /// engine's self-modifying-code check ([`GuestMemory::take_dma_pages`]).
    pub fn write(&self, gpa: u64, data: &[u8]) -> Result<()> {
        if self.write_cpu(gpa, data)? && !data.is_empty() {
            let last = gpa + data.len() as u64 - 1;
            for pfn in gpa >> 12..=last >> 12 {
                if let Some(w) = self.dma_pages.get((pfn / 64) as usize) {
                    w.fetch_or(1 << (pfn % 64), Ordering::Relaxed);
                }
            }
            self.dma_pending.store(true, Ordering::Release);
        }
        Ok(())
    }

    /// Writes `data` as the CPU does (the TCG engine notes its own writes to code):
    /// writes into ROM are dropped. `Ok(true)` if RAM was written.
    pub fn write_cpu(&self, gpa: u64, data: &[u8]) -> Result<bool> {
        let (p, kind) = self.host_ptr(gpa, data.len())?;
        if kind == RegionKind::Rom {
            log::debug!(target: "vireo::mem", "dropped write to ROM at {gpa:#x}");
            return Ok(false);
        }
        // SAFETY: `host_ptr` checked that the whole range lies inside one live RAM mapping.
        unsafe { copy(data.as_ptr(), p, data.len()) };
        Ok(true)
    }

    /// Whether [`GuestMemory::write`] wrote RAM since the last `take_dma_pages`
    /// (cheap: one atomic load).
    pub fn dma_pending(&self) -> bool {
        self.dma_pending.load(Ordering::Acquire)
    }

    /// Calls `f` with each page number (address >> 12) written through
    /// [`GuestMemory::write`] since the last call, and forgets them.
    pub fn take_dma_pages(&self, mut f: impl FnMut(u64)) {
        if !self.dma_pending.swap(false, Ordering::AcqRel) {
            return;
        }
        for (i, w) in self.dma_pages.iter().enumerate() {
            if w.load(Ordering::Relaxed) == 0 {
                continue;
            }
            let mut bits = w.swap(0, Ordering::AcqRel);
            while bits != 0 {
                let b = bits.trailing_zeros();
                bits &= bits - 1;
                f(i as u64 * 64 + u64::from(b));
            }
        }
    }

    /// Loads the firmware image so that it ends at the top of the ROM (the reset vector
    /// is the image's last 16 bytes).
    pub fn load_rom(&self, image: &[u8]) -> Result<()> {
        if image.is_empty() || image.len() as u64 > BIOS_SIZE {
            return Err(Error::OutOfRange {
                addr: 0,
                len: image.len() as u64,
            });
        }
        let start = BIOS_SIZE as usize - image.len();
        // SAFETY: `start + image.len() == rom.len()`, inside the live ROM mapping; only
        // raw copies ever touch it.
        unsafe {
            std::ptr::copy_nonoverlapping(image.as_ptr(), self.rom_ptr.add(start), image.len())
        };
        Ok(())
    }

    /// Fills RAM with zeros again (machine reset keeps the mapping).
    pub fn clear_ram(&self) {
        // SAFETY: writes exactly the live RAM mapping, through a raw pointer.
        unsafe { std::ptr::write_bytes(self.ram_ptr, 0, self.ram_len) };
    }

    /// Reads a little-endian value of 1, 2, 4 or 8 bytes.
    pub fn read_le(&self, gpa: u64, size: usize) -> Result<u64> {
        let mut b = [0u8; 8];
        self.read(gpa, &mut b[..size.min(8)])?;
        Ok(u64::from_le_bytes(b))
    }

    /// Writes the low `size` bytes of `v`, little endian.
    pub fn write_le(&self, gpa: u64, size: usize, v: u64) -> Result<()> {
        self.write(gpa, &v.to_le_bytes()[..size.min(8)])
    }

    pub fn read_u8(&self, gpa: u64) -> Result<u8> {
        Ok(self.read_le(gpa, 1)? as u8)
    }
    pub fn read_u16(&self, gpa: u64) -> Result<u16> {
        Ok(self.read_le(gpa, 2)? as u16)
    }
    pub fn read_u32(&self, gpa: u64) -> Result<u32> {
        Ok(self.read_le(gpa, 4)? as u32)
    }
    pub fn read_u64(&self, gpa: u64) -> Result<u64> {
        self.read_le(gpa, 8)
    }
    pub fn write_u8(&self, gpa: u64, v: u8) -> Result<()> {
        self.write_le(gpa, 1, v.into())
    }
    pub fn write_u16(&self, gpa: u64, v: u16) -> Result<()> {
        self.write_le(gpa, 2, v.into())
    }
    pub fn write_u32(&self, gpa: u64, v: u32) -> Result<()> {
        self.write_le(gpa, 4, v.into())
    }
    pub fn write_u64(&self, gpa: u64, v: u64) -> Result<()> {
        self.write_le(gpa, 8, v)
    }
}

/// Reads `len` (1-8) bytes at `p` as a little-endian value: the CPU's accesses (1, 2,
/// 4 or 8 bytes) as one unaligned load of the width, other lengths byte-wise (a
/// `memcpy` call of a length not known at compile time into a buffer read back whole
/// cost more than the access).
///
/// # Safety
/// `p` must be valid for reads of `len` bytes.
#[inline]
pub unsafe fn load_le(p: *const u8, len: usize) -> u64 {
    // SAFETY: the caller's contract; each arm reads exactly `len` bytes, unaligned.
    unsafe {
        match len {
            8 => u64::from_le(p.cast::<u64>().read_unaligned()),
            4 => u64::from(u32::from_le(p.cast::<u32>().read_unaligned())),
            2 => u64::from(u16::from_le(p.cast::<u16>().read_unaligned())),
            1 => u64::from(p.read()),
            _ => {
                let mut b = [0u8; 8];
                std::ptr::copy_nonoverlapping(p, b.as_mut_ptr(), len.min(8));
                u64::from_le_bytes(b)
            }
        }
    }
}

/// Writes the low `len` (1-8) bytes of `v` at `p`, little endian (as [`load_le`]).
///
/// # Safety
/// `p` must be valid for writes of `len` bytes.
#[inline]
pub unsafe fn store_le(p: *mut u8, len: usize, v: u64) {
    // SAFETY: the caller's contract; each arm writes exactly `len` bytes, unaligned.
    unsafe {
        match len {
            8 => p.cast::<u64>().write_unaligned(v.to_le()),
            4 => p.cast::<u32>().write_unaligned((v as u32).to_le()),
            2 => p.cast::<u16>().write_unaligned((v as u16).to_le()),
            1 => p.write(v as u8),
            _ => std::ptr::copy_nonoverlapping(v.to_le_bytes().as_ptr(), p, len.min(8)),
        }
    }
}

/// Copies `len` bytes from `src` to `dst`: the CPU's accesses (1, 2, 4 or 8 bytes:
/// page-table entries, descriptors, stack slots) as one unaligned load and store
/// ([`load_le`], [`store_le`]), anything else through `copy_nonoverlapping` (a
/// `memmove` call when the length is not known at compile time, which cost more than
/// the copy).
///
/// # Safety
/// `src` must be valid for reads and `dst` for writes of `len` bytes, not overlapping.
#[inline]
unsafe fn copy(src: *const u8, dst: *mut u8, len: usize) {
    // SAFETY: the caller's contract: `len` readable bytes at `src`, writable at `dst`.
    unsafe {
        match len {
            1 | 2 | 4 | 8 => store_le(dst, len, load_le(src, len)),
            _ => std::ptr::copy_nonoverlapping(src, dst, len),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_writes_are_recorded_by_page_cpu_writes_are_not() {
        let m = GuestMemory::new_flat(4 << 20).unwrap();
        assert!(!m.dma_pending());
        m.write_cpu(0x5000, &[1, 2]).unwrap();
        assert!(!m.dma_pending());
        m.write(0x6ffe, &[1, 2, 3, 4]).unwrap(); // pages 6 and 7
        m.write_u32(0x3f_f000, 9).unwrap();
        assert!(m.dma_pending());
        let mut pages = Vec::new();
        m.take_dma_pages(|p| pages.push(p));
        assert_eq!(pages, vec![6, 7, 0x3ff]);
        assert!(!m.dma_pending());
        m.take_dma_pages(|_| panic!("nothing new"));
        assert_eq!(m.read_u32(0x3f_f000).unwrap(), 9);
    }
    use crate::layout::*;

    #[test]
    fn ram_round_trip_and_holes() {
        let m = GuestMemory::new(16 << 20).unwrap();
        m.write_u64(0x1000, 0x1122_3344_5566_7788).unwrap();
        assert_eq!(m.read_u32(0x1004).unwrap(), 0x1122_3344);
        // The VGA window is not memory.
        assert!(m.read_u8(0xA_0000).is_err());
        // Nothing past the end of RAM.
        assert!(m.read_u8(16 << 20).is_err());
        // An access straddling the end of a region is refused as a whole.
        assert!(m.read_u32((16 << 20) - 2).is_err());
        assert!(m.write(u64::MAX - 1, &[0; 4]).is_err());
    }

    #[test]
    fn rom_is_read_only_and_aliased() {
        let m = GuestMemory::new(4 << 20).unwrap();
        m.load_rom(&[0xEA, 0x5B, 0xE0, 0x00, 0xF0]).unwrap();
        assert_eq!(m.read_u8(0xF_FFFB).unwrap(), 0xEA);
        assert_eq!(m.read_u8(0xFFFF_FFFB).unwrap(), 0xEA);
        m.write_u8(0xF_FFFB, 0).unwrap();
        assert_eq!(m.read_u8(0xF_FFFB).unwrap(), 0xEA);
        // Bytes before the image read as erased flash.
        assert_eq!(m.read_u8(BIOS_START).unwrap(), 0xFF);
    }

    #[test]
    fn high_ram_is_backed_after_low_ram() {
        let m = GuestMemory::new(PCI_HOLE_START + (64 << 20)).unwrap();
        m.write_u32(FOUR_GIB, 0xdead_beef).unwrap();
        assert_eq!(m.read_u32(FOUR_GIB).unwrap(), 0xdead_beef);
        assert!(m.read_u8(PCI_HOLE_START).is_err());
    }

    #[test]
    fn bad_sizes_are_refused() {
        assert!(GuestMemory::new(0).is_err());
        assert!(GuestMemory::new((4 << 20) + 1).is_err());
    }
}
