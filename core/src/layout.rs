//! The PC physical memory map, shared by firmware, loaders and both engines.
//!
//! ```text
//! 0x0000_0000 .. 0x000A_0000   low RAM (IVT, BDA, EBDA at the top; the MP floating
//!                              pointer is the EBDA's first 16 bytes)
//! 0x000A_0000 .. 0x000C_0000   legacy VGA window (unassigned: reads all ones)
//! 0x000C_0000 .. 0x000F_0000   RAM (option-ROM area; ACPI tables live at 0xE0000, the
//!                              MP configuration table at 0xEE000)
//! 0x000F_0000 .. 0x0010_0000   firmware ROM (vireo's BIOS), read-only
//! 0x0010_0000 .. low_end       RAM
//! low_end     .. 0xFEC0_0000   PCI hole (MMIO; low_end is at most 3 GiB)
//! 0xFEC0_0000                  IOAPIC, 0xFED0_0000 HPET, 0xFEE0_0000 local APIC
//! 0xFFFF_0000 .. 4 GiB         firmware ROM alias (reset vector at 0xFFFF_FFF0)
//! 4 GiB       .. 4 GiB + rest  RAM above 4 GiB when -m exceeds low_end
//! ```

/// End of conventional memory (the VGA window starts here).
pub const LOW_RAM_END: u64 = 0xA_0000;
/// Start of the EBDA, the last KiB of conventional memory.
pub const EBDA_START: u64 = 0x9_FC00;
/// Start of RAM again after the VGA window.
pub const OPTION_ROM_START: u64 = 0xC_0000;
/// Where the VMM writes the ACPI tables (RSDP first, inside the BIOS search area).
pub const ACPI_TABLES_START: u64 = 0xE_0000;
/// Size of the area reserved for ACPI tables (up to the MP configuration table).
pub const ACPI_TABLES_SIZE: u64 = MPTABLE_START - ACPI_TABLES_START;
/// Where the VMM writes the MP floating pointer structure (Intel MultiProcessor
/// Specification 1.4): the first 16 bytes of the EBDA. Linux scans the last KiB of base
/// memory (639 KiB) for it whatever the BDA says, E820 reserves the EBDA, and the other
/// places Linux scans are the IVT and the read-only firmware ROM at 0xF0000.
pub const MPTABLE_FLOATING: u64 = EBDA_START;
/// Where the VMM writes the MP configuration table: the last 8 KiB of the RAM below the
/// firmware ROM, after the ACPI tables (E820 reserved). 254 CPUs take about 5.3 KiB;
/// the rest of the EBDA (1 KiB) would hold only some 40.
pub const MPTABLE_START: u64 = 0xE_E000;
/// Size of the area reserved for the MP configuration table.
pub const MPTABLE_SIZE: u64 = BIOS_START - MPTABLE_START;
/// Firmware ROM base below 1 MiB.
pub const BIOS_START: u64 = 0xF_0000;
/// Firmware ROM size.
pub const BIOS_SIZE: u64 = 0x1_0000;
/// Firmware ROM alias just below 4 GiB.
pub const BIOS_ALIAS_START: u64 = 0x1_0000_0000 - BIOS_SIZE;
/// Start of extended memory.
pub const HIGH_MEMORY_START: u64 = 0x10_0000;
/// Where low RAM stops at the latest: the PCI hole starts here.
pub const PCI_HOLE_START: u64 = 0xC000_0000;
/// End of the 32-bit address space.
pub const FOUR_GIB: u64 = 0x1_0000_0000;
/// IOAPIC MMIO base.
pub const IOAPIC_START: u64 = 0xFEC0_0000;
/// HPET MMIO base.
pub const HPET_START: u64 = 0xFED0_0000;
/// Local APIC MMIO base.
pub const LAPIC_START: u64 = 0xFEE0_0000;
/// Smallest guest RAM size vireo accepts (the firmware needs its tables and stack).
pub const MIN_RAM: u64 = 2 << 20;

/// Kind of a guest physical region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegionKind {
    /// Guest RAM: read and write.
    Ram,
    /// Firmware ROM: the guest reads it, its writes are dropped.
    Rom,
}

/// One guest physical region and where it sits in its backing store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionSpec {
    pub gpa: u64,
    pub len: u64,
    pub kind: RegionKind,
    /// Offset in the RAM backing (for [`RegionKind::Ram`]) or the ROM backing.
    pub offset: u64,
}

/// The memory map for a given RAM size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryMap {
    pub ram_size: u64,
    /// End of RAM below 4 GiB.
    pub low_end: u64,
    /// Bytes of RAM above 4 GiB.
    pub high_size: u64,
    pub regions: Vec<RegionSpec>,
}

impl MemoryMap {
    /// Lays out `ram_size` bytes of RAM as on a PC (`ram_size` must be at least [`MIN_RAM`]).
    pub fn pc(ram_size: u64) -> MemoryMap {
        let low_end = ram_size.min(PCI_HOLE_START);
        let high_size = ram_size - low_end;
        let ram = |gpa: u64, end: u64| RegionSpec {
            gpa,
            len: end - gpa,
            kind: RegionKind::Ram,
            offset: gpa,
        };
        let mut regions = vec![
            ram(0, LOW_RAM_END),
            ram(OPTION_ROM_START, BIOS_START),
            RegionSpec {
                gpa: BIOS_START,
                len: BIOS_SIZE,
                kind: RegionKind::Rom,
                offset: 0,
            },
            ram(HIGH_MEMORY_START, low_end),
            RegionSpec {
                gpa: BIOS_ALIAS_START,
                len: BIOS_SIZE,
                kind: RegionKind::Rom,
                offset: 0,
            },
        ];
        if high_size > 0 {
            regions.push(RegionSpec {
                gpa: FOUR_GIB,
                len: high_size,
                kind: RegionKind::Ram,
                offset: low_end,
            });
        }
        MemoryMap {
            ram_size,
            low_end,
            high_size,
            regions,
        }
    }

    /// One flat RAM region `[0, ram_size)` with no holes and no ROM: for instruction
    /// tests that need memory everywhere (the 286 vectors touch the whole first 1 MiB
    /// and beyond).
    pub fn flat(ram_size: u64) -> MemoryMap {
        MemoryMap {
            ram_size,
            low_end: ram_size,
            high_size: 0,
            regions: vec![RegionSpec {
                gpa: 0,
                len: ram_size,
                kind: RegionKind::Ram,
                offset: 0,
            }],
        }
    }

    /// The BIOS-style E820 map of this layout: `(base, length, type)` with type 1 for
    /// usable RAM and 2 for reserved ranges.
    pub fn e820(&self) -> Vec<(u64, u64, u32)> {
        let mut map = vec![
            (0, EBDA_START, E820_RAM),
            (EBDA_START, LOW_RAM_END - EBDA_START, E820_RESERVED),
            (
                ACPI_TABLES_START,
                HIGH_MEMORY_START - ACPI_TABLES_START,
                E820_RESERVED,
            ),
            (
                HIGH_MEMORY_START,
                self.low_end - HIGH_MEMORY_START,
                E820_RAM,
            ),
            (IOAPIC_START, 0x1000, E820_RESERVED),
            (LAPIC_START, 0x1000, E820_RESERVED),
            (BIOS_ALIAS_START, BIOS_SIZE, E820_RESERVED),
        ];
        if self.high_size > 0 {
            map.push((FOUR_GIB, self.high_size, E820_RAM));
        }
        map
    }
}

/// E820 type: usable RAM.
pub const E820_RAM: u32 = 1;
/// E820 type: reserved.
pub const E820_RESERVED: u32 = 2;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_guest_has_no_high_ram() {
        let m = MemoryMap::pc(128 << 20);
        assert_eq!(m.low_end, 128 << 20);
        assert_eq!(m.high_size, 0);
        assert!(m.regions.iter().all(|r| r.gpa + r.len <= FOUR_GIB));
        let ram: u64 = m
            .regions
            .iter()
            .filter(|r| r.kind == RegionKind::Ram)
            .map(|r| r.len)
            .sum();
        // The VGA window and the BIOS ROM window hide RAM below 1 MiB.
        assert_eq!(
            ram,
            (128 << 20) - (OPTION_ROM_START - LOW_RAM_END) - BIOS_SIZE
        );
    }

    #[test]
    fn large_guest_splits_around_pci_hole() {
        let m = MemoryMap::pc(5 << 30);
        assert_eq!(m.low_end, PCI_HOLE_START);
        assert_eq!(m.high_size, (5 << 30) - PCI_HOLE_START);
        let high = m.regions.last().unwrap();
        assert_eq!(high.gpa, FOUR_GIB);
        assert_eq!(high.offset, PCI_HOLE_START);
        let usable: u64 = m
            .e820()
            .iter()
            .filter(|e| e.2 == E820_RAM)
            .map(|e| e.1)
            .sum();
        assert_eq!(usable, (5 << 30) - (HIGH_MEMORY_START - EBDA_START));
    }

    #[test]
    fn mp_tables_sit_in_reserved_ram() {
        let m = MemoryMap::pc(MIN_RAM);
        let reserved = |a: u64, len: u64| {
            m.e820()
                .iter()
                .any(|e| e.2 == E820_RESERVED && e.0 <= a && a + len <= e.0 + e.1)
        };
        let ram = |a: u64, len: u64| {
            m.regions
                .iter()
                .any(|r| r.kind == RegionKind::Ram && r.gpa <= a && a + len <= r.gpa + r.len)
        };
        for (a, len) in [(MPTABLE_FLOATING, 16), (MPTABLE_START, MPTABLE_SIZE)] {
            assert!(reserved(a, len) && ram(a, len), "{a:#x}+{len:#x}");
            assert_eq!(a % 16, 0);
        }
        assert_eq!(ACPI_TABLES_START + ACPI_TABLES_SIZE, MPTABLE_START);
        assert_eq!(MPTABLE_START + MPTABLE_SIZE, BIOS_START);
    }

    #[test]
    fn regions_do_not_overlap() {
        for size in [MIN_RAM, 512 << 20, 3 << 30, 8 << 30] {
            let mut r = MemoryMap::pc(size).regions;
            r.sort_by_key(|r| r.gpa);
            for w in r.windows(2) {
                assert!(w[0].gpa + w[0].len <= w[1].gpa, "{size:#x}: {w:x?}");
            }
        }
    }
}
