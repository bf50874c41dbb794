//! A paging-structure cache for 4-level paging: for a 2 MiB region of linear
//! addresses, the page table its PDE points to and the permissions the PML4E, PDPTE
//! and PDE on the way grant, so that a walk reads one entry (the PTE) instead of four.
//!
//! The architecture allows exactly this (Intel SDM vol. 3, 4.10.3, "PDE cache"): only
//! present entries are cached (a walk through a not-present or reserved entry faults
//! before it gets here), their accessed bits were set on the walk that cached them,
//! and software that changes a present upper-level entry invalidates (INVLPG, a CR3
//! write, INVPCID), each of which empties this cache with the TLB
//! (`Mmu::remapped`). Entries are tagged with the whole CR3 (table base and PCID)
//! and EFER.NXE (which decides whether the XD bits count), so a switch of either
//! never finds another's entry. A page fault empties the entry of its address, as on
//! hardware (`mmu::translate`): software that changed an entry without a flush takes
//! at most one spurious fault, and the retry walks from CR3. A TLB miss reads one
//! entry instead of four; a demand page fault five (the faulting walk from the cache,
//! the retry from CR3) instead of eight: page-fault micro-kernel +6% (+13% if faults
//! kept the entry, which a guest relying on the rule could not get past). Redoing
//! the faulting walk from CR3 before reporting the fault (no spurious faults) left
//! nothing of the gain.

/// Entries, direct-mapped by the 2 MiB region's number.
const ENTRIES: usize = 64;

/// What the upper levels of a walk found for a 2 MiB region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Upper {
    /// Physical address of the page table (the PDE's address field).
    pub table: u64,
    /// All of the upper entries allow user accesses (U/S set).
    pub user: bool,
    /// All of them allow writes (R/W set).
    pub writable: bool,
    /// One of them forbids instruction fetches (XD set, with EFER.NXE).
    pub nx: bool,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    /// `la >> 21`, or `u64::MAX` for none (no canonical address has it).
    region: u64,
    cr3: u64,
    nxe: bool,
    upper: Upper,
}

const EMPTY: Entry = Entry {
    region: u64::MAX,
    cr3: 0,
    nxe: false,
    upper: Upper {
        table: 0,
        user: false,
        writable: false,
        nx: false,
    },
};

/// The cache of one CPU.
#[derive(Debug, Clone)]
pub struct WalkCache {
    entries: [Entry; ENTRIES],
    /// Whether any entry may be valid (a clear of an empty cache costs nothing).
    used: bool,
    /// Walks that started at the page table (statistics, tests).
    pub hits: u64,
}

impl Default for WalkCache {
    fn default() -> WalkCache {
        WalkCache {
            entries: [EMPTY; ENTRIES],
            used: false,
            hits: 0,
        }
    }
}

fn index(region: u64) -> usize {
    region as usize % ENTRIES
}

impl WalkCache {
    /// The upper levels cached for linear address `la` under `cr3` and `nxe`.
    pub fn lookup(&mut self, la: u64, cr3: u64, nxe: bool) -> Option<Upper> {
        let region = la >> 21;
        let e = &self.entries[index(region)];
        if e.region == region && e.cr3 == cr3 && e.nxe == nxe {
            self.hits += 1;
            Some(e.upper)
        } else {
            None
        }
    }

    /// Records what a walk of `la` found above its page table.
    pub fn insert(&mut self, la: u64, cr3: u64, nxe: bool, upper: Upper) {
        let region = la >> 21;
        self.entries[index(region)] = Entry {
            region,
            cr3,
            nxe,
            upper,
        };
        self.used = true;
    }

    /// Drops the entry for linear address `la`'s region (a page fault there);
    /// whether there was one.
    pub fn forget(&mut self, la: u64) -> bool {
        let region = la >> 21;
        let e = &mut self.entries[index(region)];
        let had = e.region == region;
        if had {
            *e = EMPTY;
        }
        had
    }

    /// Drops every entry.
    pub fn clear(&mut self) {
        if self.used {
            self.entries = [EMPTY; ENTRIES];
            self.used = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_match_region_cr3_and_nxe_only() {
        let mut c = WalkCache::default();
        let up = Upper {
            table: 0x5000,
            user: true,
            writable: false,
            nx: true,
        };
        let la = 0x7fff_1234_5678;
        assert_eq!(c.lookup(la, 0x1000, true), None);
        c.insert(la, 0x1000, true, up);
        // Anywhere in the same 2 MiB.
        assert_eq!(c.lookup(la & !0x1f_ffff, 0x1000, true), Some(up));
        assert_eq!(c.lookup(la | 0x1f_ffff, 0x1000, true), Some(up));
        // Another region in the same entry, another CR3 (or PCID), another NXE.
        let far = la + ((ENTRIES as u64) << 21);
        assert_eq!(index(far >> 21), index(la >> 21));
        assert_eq!(c.lookup(far, 0x1000, true), None);
        assert_eq!(c.lookup(la, 0x2000, true), None);
        assert_eq!(c.lookup(la, 0x1001, true), None);
        assert_eq!(c.lookup(la, 0x1000, false), None);
        assert_eq!(c.hits, 2);
        c.clear();
        assert_eq!(c.lookup(la, 0x1000, true), None);
        // A fault in the region forgets it, not the others.
        c.insert(la, 0x1000, true, up);
        c.insert(la + (1 << 21), 0x1000, true, up);
        assert!(c.forget(la | 0xfff));
        assert!(!c.forget(la));
        assert_eq!(c.lookup(la, 0x1000, true), None);
        assert_eq!(c.lookup(la + (1 << 21), 0x1000, true), Some(up));
    }
}
