//! The fast TLB: linear page → host pointer, for loads and stores that touch plain
//! RAM (or ROM, for reads) and nothing else.
//!
//! The softmmu TLB of [`crate::mmu`] caches translations to physical addresses; every
//! access through it still finds the region, checks the APIC page, A20 and the code
//! watch. The fast TLB caches the end result for the common case: an entry holds, for
//! one 4 KiB linear page and one table ([`Table`]), the difference between the host address
//! of the page and its linear address, and a tag for reads and one for writes. An
//! access that hits (the tag equals the page number of its *last* byte, which also
//! rules out accesses that cross a page) reads or writes host memory directly: in
//! Rust here ([`FastTlb::read`], [`FastTlb::write`]) and inline in the JIT's code
//! (the layout is exported through [`vireo_core::exec::FastTlbLayout`]).
//!
//! An entry is only made when the access is exactly a host memory access:
//! - the translation succeeded in the softmmu TLB for that access (a write tag only
//!   for a page whose dirty bit is set);
//! - A20 is enabled (the entries are dropped when it goes off: [`FastTlb::sync`]);
//! - the physical page is a whole page of RAM (reads: RAM or ROM), not this CPU's
//!   APIC page (dropped when the APIC base moves);
//! - writes: the page holds no translated code (a page that becomes watched loses its
//!   write tags: [`FastTlb::sync`] compares the code watch's generation);
//! - supervisor entries made while RFLAGS.AC opens SMAP go to a third table
//!   ([`Table::KERNEL_AC`]) consulted only in that state; the supervisor table holds
//!   entries made with SMAP enforced or off, which stay right whatever AC is.
//!
//! Every flush of the softmmu TLB flushes the fast TLB too (or the part that covers
//! the flushed pages). The entries keep the guest memory they point into alive.

use crate::filllog::FillLog;
use std::sync::Arc;
use vireo_core::exec::FastTlbLayout;
use vireo_core::ir::MmuIdx;
use vireo_core::memory::{load_le, store_le};
use vireo_core::GuestMemory;

/// log2 of the entries per MMU index: 2048 sets, 8 MiB of linear pages in front
/// and 16 MiB with the back entries. (With 512, the memory micro-kernel walked the
/// page tables for every page of its 16 MiB array on every pass, 20% slower, and a
/// page of gzip's data and one of its buffers met in one set in some boots, each
/// access then taking the Rust path. Indexing with higher page bits folded in
/// spreads aligned buffers but lengthens every load's dependency chain by three
/// instructions: gzip 10% slower.)
pub const FAST_BITS: u32 = 11;
/// Entries per MMU index.
pub const FAST_SIZE: usize = 1 << FAST_BITS;
const INVALID: u64 = u64::MAX;

/// One entry (32 bytes: the JIT indexes with a shift).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct FastEntry {
    /// Linear page number (address >> 12) reads may use this entry for.
    read: u64,
    /// Linear page number writes (and the reads of read-modify-writes) may use it for.
    write: u64,
    /// Host address of the page minus its linear address.
    addend: u64,
    /// Size - 1 of the mapping the entry is a 4 KiB piece of (INVLPG of a large
    /// page drops all its pieces).
    page_mask: u64,
}

const EMPTY: FastEntry = FastEntry {
    read: INVALID,
    write: INVALID,
    addend: 0,
    page_mask: 0xfff,
};

/// Tables: kernel, user, kernel with SMAP opened ([`Table`]).
const TABLES: usize = 3;

/// The fast TLB of one CPU: [`FAST_SIZE`] sets of two entries per [`Table`], the one
/// filled last in front. Generated code looks up the front entries only (inline, at a
/// fixed offset from the CPU); the Rust path its misses call looks up both (the back
/// ones live on the heap), so a page that a conflict pushed back costs a trampoline
/// call, not a page walk and a refill that pushes the other page out in turn. (With
/// one way, the stack and a buffer of gzip's that met in one slot, as in some boots,
/// made the job up to twice as slow; a second inline look would grow every access's
/// code, and a Linux boot 5%.)
pub struct FastTlb {
    /// `entries[table][vpn % FAST_SIZE]` (see [`Table`]): the front of each set.
    entries: [[FastEntry; FAST_SIZE]; TABLES],
    /// The back of each set, the older entry.
    back: Box<[[FastEntry; FAST_SIZE]; TABLES]>,
    /// The guest memory the entries point into (kept alive while they exist).
    mem: Option<Arc<GuestMemory>>,
    /// The code watch generation the write tags were checked against.
    pub(crate) watch_gen: u64,
    /// Whether any entry may be valid (skips needless flushes).
    used: bool,
    /// The sets filled since the last flush (flat: table * FAST_SIZE + slot; an entry
    /// gets to the back of a set only from its front, so the set was logged then).
    log: FillLog,
    /// Hits and fills (statistics, tests).
    pub hits: u64,
    pub fills: u64,
}

impl std::fmt::Debug for FastTlb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FastTlb")
            .field("used", &self.used)
            .field("hits", &self.hits)
            .field("fills", &self.fills)
            .finish_non_exhaustive()
    }
}

impl Default for FastTlb {
    fn default() -> FastTlb {
        FastTlb {
            entries: [[EMPTY; FAST_SIZE]; TABLES],
            back: Box::new([[EMPTY; FAST_SIZE]; TABLES]),
            mem: None,
            watch_gen: 0,
            used: false,
            log: FillLog::new(TABLES * FAST_SIZE),
            hits: 0,
            fills: 0,
        }
    }
}

/// One of the three tables: supervisor accesses (valid whatever RFLAGS.AC is: made
/// with SMAP enforced or off), user accesses, and supervisor accesses while SMAP is
/// opened by RFLAGS.AC (`KERNEL_AC`, used only then; generated code looks up the first
/// two only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Table(usize);

impl Table {
    pub const KERNEL: Table = Table(0);
    pub const USER: Table = Table(1);
    pub const KERNEL_AC: Table = Table(2);
}

impl From<MmuIdx> for Table {
    fn from(mmu: MmuIdx) -> Table {
        match mmu {
            MmuIdx::Kernel => Table::KERNEL,
            MmuIdx::User => Table::USER,
        }
    }
}

fn slot(vpn: u64) -> usize {
    (vpn as usize) & (FAST_SIZE - 1)
}

/// The page number of the last byte of `[la, la+len)`: the tag a hit must match.
fn last_vpn(la: u64, len: usize) -> u64 {
    la.wrapping_add(len as u64 - 1) >> 12
}

impl FastTlb {
    /// Where the entries are inside `FastTlb`, for the JIT (`base`: offset of this
    /// `FastTlb` from the environment's base).
    pub fn layout(base: usize) -> FastTlbLayout {
        use std::mem::{offset_of, size_of};
        FastTlbLayout {
            table: base + offset_of!(FastTlb, entries),
            kernel_table: 0,
            user_table: FAST_SIZE * size_of::<FastEntry>(),
            index_bits: FAST_BITS,
            entry_shift: size_of::<FastEntry>().trailing_zeros(),
            read_tag: offset_of!(FastEntry, read),
            write_tag: offset_of!(FastEntry, write),
            addend: offset_of!(FastEntry, addend),
        }
    }

    /// Runs `f` on every entry that may be valid: the logged ones, or all.
    fn each_filled(&mut self, mut f: impl FnMut(&mut FastEntry)) {
        let FastTlb {
            entries, back, log, ..
        } = self;
        match log.filled() {
            Some(slots) => {
                for &i in slots {
                    let (t, k) = (i as usize / FAST_SIZE, i as usize % FAST_SIZE);
                    f(&mut entries[t][k]);
                    f(&mut back[t][k]);
                }
            }
            None => entries
                .iter_mut()
                .chain(back.iter_mut())
                .flatten()
                .for_each(f),
        }
    }

    /// Makes the fill log hold `n` slots at most (tests of its overflow).
    #[cfg(test)]
    pub(crate) fn set_log_cap(&mut self, n: usize) {
        self.log = FillLog::new(n);
    }

    /// Drops every entry (the filled ones: a context switch resets a few entries,
    /// not the whole table).
    pub fn flush(&mut self) {
        if self.used {
            self.each_filled(|e| *e = EMPTY);
            self.log.clear();
            self.used = false;
        }
    }

    /// Drops every write tag.
    pub fn flush_writes(&mut self) {
        if self.used {
            self.each_filled(|e| e.write = INVALID);
        }
    }

    /// Drops the entries of the mapping that holds linear page `vpn` (INVLPG).
    pub fn flush_page(&mut self, vpn: u64) {
        if !self.used {
            return;
        }
        self.each_filled(|e| {
            let mask = !(e.page_mask >> 12);
            if [e.read, e.write]
                .into_iter()
                .any(|t| t != INVALID && (t ^ vpn) & mask == 0)
            {
                *e = EMPTY;
            }
        });
    }

    /// The host address for `len` bytes at `la`, if an entry allows the access.
    #[inline]
    fn host(&mut self, la: u64, len: usize, table: Table, write: bool) -> Option<*mut u8> {
        let (t, k) = (table.0, slot(la >> 12));
        let want = last_vpn(la, len);
        let hit = |e: &FastEntry| {
            let tag = if write { e.write } else { e.read };
            (tag == want).then(|| la.wrapping_add(e.addend) as *mut u8)
        };
        if let Some(p) = hit(&self.entries[t][k]) {
            return Some(p);
        }
        // A hit at the back comes to the front, where generated code sees it (its set
        // is logged: the entry was in front before).
        let p = hit(&self.back[t][k])?;
        std::mem::swap(&mut self.entries[t][k], &mut self.back[t][k]);
        Some(p)
    }

    /// Reads `len` (1-8) bytes at `la` if an entry allows it (`write`: for a
    /// read-modify-write, which needs the write tag).
    #[inline]
    pub fn read(
        &mut self,
        la: u64,
        len: usize,
        table: impl Into<Table>,
        write: bool,
    ) -> Option<u64> {
        let len = len.min(8);
        let p = self.host(la, len, table.into(), write)?;
        // SAFETY: an entry is made only for a whole 4 KiB page of a region of
        // `self.mem`, which this struct keeps alive (`fill`); a hit means
        // `[la, la+len)` lies in that page (the tag is the page of the last byte and
        // the slot the page of the first, so both are the entry's page), so `p` points
        // at `len` bytes inside the mapping. Guest memory is never borrowed as a Rust
        // reference, so a raw read does not alias one.
        let v = unsafe { load_le(p, len) };
        self.hits += 1;
        Some(v)
    }

    /// Copies `len` bytes from `src` to `dst` (each within one page) if entries allow
    /// the reads and the writes and the copy equals one done byte by byte forwards
    /// (the destination is not ahead of the source within `len`).
    pub fn copy(&mut self, src: u64, dst: u64, len: usize, table: Table) -> bool {
        let (Some(ps), Some(pd)) = (
            self.host(src, len, table, false),
            self.host(dst, len, table, true),
        ) else {
            return false;
        };
        let ahead = (pd as usize).wrapping_sub(ps as usize);
        if ahead != 0 && ahead < len {
            return false;
        }
        // SAFETY: as in `read` and `write`: hits mean `[src, src+len)` and
        // `[dst, dst+len)` are inside pages of `self.mem`'s mappings, the second RAM.
        // `copy` allows overlap (it moves as if through a buffer, which for a
        // destination not ahead of the source is the forward byte order).
        unsafe { std::ptr::copy(ps, pd, len) };
        self.hits += 1;
        true
    }

    /// Writes `pattern` repeated over `len` bytes at `dst` (within one page; `len` a
    /// multiple of the pattern's length) if an entry allows it.
    pub fn fill_with(&mut self, dst: u64, len: usize, pattern: &[u8], table: Table) -> bool {
        let Some(pd) = self.host(dst, len, table, true) else {
            return false;
        };
        let n = pattern.len().max(1);
        let len = len - len % n;
        match pattern.first() {
            // One byte over and over (zeroing a page): `memset`.
            Some(&b) if pattern.iter().all(|&x| x == b) => {
                // SAFETY: as in `write`: `[dst, dst+len)` is inside a RAM page of
                // `self.mem`.
                unsafe { std::ptr::write_bytes(pd, b, len) };
            }
            _ => {
                // Whole patterns in 64-byte pieces (a copy of a length the compiler
                // knows, not a `memcpy` call per element: that was most of a
                // `REP STOSQ`'s time).
                let mut piece = [0u8; 64];
                for (i, b) in piece.iter_mut().enumerate() {
                    *b = pattern.get(i % n).copied().unwrap_or(0);
                }
                let step = 64 - 64 % n;
                let mut at = 0;
                while at < len {
                    let k = step.min(len - at);
                    // SAFETY: as above, `at + k <= len`; `k <= 64`.
                    unsafe { std::ptr::copy_nonoverlapping(piece.as_ptr(), pd.add(at), k) };
                    at += k;
                }
            }
        }
        self.hits += 1;
        true
    }

    /// Writes the low `len` (1-8) bytes of `v` at `la` if an entry allows it.
    #[inline]
    pub fn write(&mut self, la: u64, len: usize, v: u64, table: impl Into<Table>) -> bool {
        let len = len.min(8);
        let Some(p) = self.host(la, len, table.into(), true) else {
            return false;
        };
        // SAFETY: as in `read`; write tags are only made for RAM pages (never ROM),
        // so the page is writable host memory.
        unsafe { store_le(p, len, v) };
        self.hits += 1;
        true
    }

    /// Records that linear page `vpn` (a piece of a mapping of `page_mask + 1`
    /// bytes) is the whole page of `mem` at host address `host`, for reads or
    /// (`write`) writes by `mmu`. The caller vouches for the conditions in the module
    /// documentation.
    pub(crate) fn fill(
        &mut self,
        mem: &Arc<GuestMemory>,
        vpn: u64,
        page_mask: u64,
        host: u64,
        table: impl Into<Table>,
        write: bool,
    ) {
        if !self.mem.as_ref().is_some_and(|m| Arc::ptr_eq(m, mem)) {
            self.used = true;
            self.flush();
            self.mem = Some(Arc::clone(mem));
        }
        let addend = host.wrapping_sub(vpn << 12);
        let (t, k) = (table.into().0, slot(vpn));
        let same = |e: &FastEntry| e.addend == addend && (e.read == vpn || e.write == vpn);
        let empty = |e: &FastEntry| e.read == INVALID && e.write == INVALID;
        // The page's entry, or the set's front one, goes in front; the front one
        // moves back over the older. (The log gets a set when both are empty.)
        let (front, back) = (&mut self.entries[t][k], &mut self.back[t][k]);
        if empty(front) && empty(back) {
            self.log.note(t * FAST_SIZE + k);
        }
        if same(back) {
            std::mem::swap(front, back);
        } else if !same(front) {
            *back = *front;
            *front = EMPTY;
        }
        let e = &mut self.entries[t][k];
        e.addend = addend;
        e.page_mask = e.page_mask.max(page_mask);
        // A writable page is readable (x86 has no write-only pages).
        e.read = vpn;
        if write {
            e.write = vpn;
        }
        self.used = true;
        self.fills += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem() -> Arc<GuestMemory> {
        Arc::new(GuestMemory::new_flat(4 << 20).unwrap())
    }

    fn host_of(m: &GuestMemory, pa: u64) -> u64 {
        let r = m.region_of(pa, 1).unwrap();
        r.host_addr + (pa - r.gpa)
    }

    /// A set holds two pages: the one filled or hit last in front (where generated
    /// code looks), the other behind (a hit there brings it to the front); a third
    /// page pushes out the one behind; the flushes reach both.
    #[test]
    fn a_set_holds_two_pages() {
        let m = mem();
        for (i, pa) in [0x1000u64, 0x2000, 0x3000].into_iter().enumerate() {
            m.write(pa, &[i as u8 + 1]).unwrap();
        }
        let mut t = FastTlb::default();
        let vpn = |k: u64| 0x40 + k * FAST_SIZE as u64;
        let fill = |t: &mut FastTlb, k: u64| {
            t.fill(
                &m,
                vpn(k),
                0xfff,
                host_of(&m, 0x1000 * (k + 1)),
                MmuIdx::User,
                true,
            );
        };
        let read = |t: &mut FastTlb, k: u64| t.read(vpn(k) << 12, 1, MmuIdx::User, false);
        let front = |t: &FastTlb| t.entries[Table::USER.0][slot(vpn(0))].read;
        fill(&mut t, 0);
        fill(&mut t, 1);
        assert_eq!(front(&t), vpn(1));
        assert_eq!((read(&mut t, 1), read(&mut t, 0)), (Some(2), Some(1)));
        assert_eq!(front(&t), vpn(0), "a hit behind comes to the front");
        // Page 2 in front, page 0 behind: page 1 is gone.
        fill(&mut t, 2);
        assert_eq!(read(&mut t, 1), None);
        assert_eq!((read(&mut t, 0), read(&mut t, 2)), (Some(1), Some(3)));
        // Filling the page in front again (a write after a read) keeps both.
        fill(&mut t, 2);
        assert!(t.write(vpn(2) << 12, 1, 9, MmuIdx::User));
        assert_eq!((read(&mut t, 0), read(&mut t, 2)), (Some(1), Some(9)));
        t.flush_page(vpn(2));
        assert_eq!((read(&mut t, 0), read(&mut t, 2)), (Some(1), None));
        t.flush();
        assert_eq!(read(&mut t, 0), None);
    }

    /// `fill_with` repeats any pattern of 1 to 8 bytes over exactly the bytes asked
    /// for (zeroing and patterns whose bytes differ, runs shorter and longer than its
    /// pieces), on a page with a write entry only.
    #[test]
    fn fill_with_repeats_the_pattern_over_the_run() {
        let m = mem();
        let mut t = FastTlb::default();
        let pa = 0x5000u64;
        t.fill(&m, 0x77, 0xfff, host_of(&m, pa), MmuIdx::User, true);
        let pats: [&[u8]; 6] = [
            &[0],
            &[0xab],
            &[1, 2],
            &[0, 0, 0, 0],
            &[1, 2, 3, 4],
            &[9, 8, 7, 6, 5, 4, 3, 2],
        ];
        for pat in pats {
            for (off, len) in [(0usize, 4096usize), (8, 8), (16, 72), (40, 128), (64, 200)] {
                let len = len - len % pat.len();
                m.write(pa, &[0xee; 4096]).unwrap();
                assert!(t.fill_with((0x77 << 12) + off as u64, len, pat, Table::USER));
                let mut got = vec![0u8; 4096];
                m.read(pa, &mut got).unwrap();
                for (i, b) in got.iter().enumerate() {
                    let want = if (off..off + len).contains(&i) {
                        pat[(i - off) % pat.len()]
                    } else {
                        0xee
                    };
                    assert_eq!(*b, want, "{pat:?} at {off} for {len}: byte {i}");
                }
            }
        }
        // Past the page, or a page with a read entry only: nothing.
        assert!(!t.fill_with((0x77 << 12) + 4088, 16, &[1], Table::USER));
        t.fill(&m, 0x78, 0xfff, host_of(&m, pa), MmuIdx::User, false);
        assert!(!t.fill_with(0x78 << 12, 8, &[1], Table::USER));
    }

    #[test]
    fn hits_only_within_the_filled_page_and_access_kind() {
        let m = mem();
        m.write(0x3ff8, &0x1122_3344_5566_7788u64.to_le_bytes())
            .unwrap();
        let mut t = FastTlb::default();
        // Linear page 0x12345 maps to physical page 3.
        t.fill(
            &m,
            0x12345,
            0xfff,
            host_of(&m, 0x3000),
            MmuIdx::Kernel,
            false,
        );
        let la = 0x1234_5ff8;
        assert_eq!(
            t.read(la, 8, MmuIdx::Kernel, false),
            Some(0x1122_3344_5566_7788)
        );
        assert_eq!(t.read(la + 4, 4, MmuIdx::Kernel, false), Some(0x1122_3344));
        // Crossing into the next page, another MMU index, a write: misses.
        assert_eq!(t.read(la + 4, 8, MmuIdx::Kernel, false), None);
        assert_eq!(t.read(la, 8, MmuIdx::User, false), None);
        assert_eq!(t.read(la, 8, MmuIdx::Kernel, true), None);
        assert!(!t.write(la, 8, 0, MmuIdx::Kernel));
        // Every width reads and writes exactly its bytes, little endian.
        t.fill(&m, 0x12345, 0xfff, host_of(&m, 0x3000), MmuIdx::User, true);
        for len in 1..=8usize {
            let at = 0x1234_5100 + 16 * len as u64;
            assert!(t.write(at - 1, 1, 0xee, MmuIdx::User));
            assert!(t.write(at + len as u64, 1, 0xdd, MmuIdx::User));
            assert!(t.write(at, len, 0x0807_0605_0403_0201, MmuIdx::User));
            let want = 0x0807_0605_0403_0201u64 & (u64::MAX >> (64 - 8 * len));
            assert_eq!(t.read(at, len, MmuIdx::User, false), Some(want), "{len}");
            assert_eq!(t.read(at - 1, 1, MmuIdx::User, false), Some(0xee));
            assert_eq!(t.read(at + len as u64, 1, MmuIdx::User, false), Some(0xdd));
        }
        // An alias in the same slot, another linear page: misses.
        assert_eq!(
            t.read(la + ((FAST_SIZE as u64) << 12), 1, MmuIdx::Kernel, false),
            None
        );
        t.fill(
            &m,
            0x12345,
            0xfff,
            host_of(&m, 0x3000),
            MmuIdx::Kernel,
            true,
        );
        assert!(t.write(la, 2, 0xabcd, MmuIdx::Kernel));
        assert_eq!(m.read_u64(0x3ff8).unwrap(), 0x1122_3344_5566_abcd);
        // The read tag survived the write fill of the same page.
        assert_eq!(t.read(la, 2, MmuIdx::Kernel, false), Some(0xabcd));
        t.flush_writes();
        assert!(!t.write(la, 1, 0, MmuIdx::Kernel));
        assert!(t.read(la, 1, MmuIdx::Kernel, false).is_some());
    }

    #[test]
    fn page_flushes_cover_large_pages() {
        let m = mem();
        let mut t = FastTlb::default();
        // 0x200-0x3ff: pieces of a 2 MiB page; 0x410, 0x401: 4 KiB pages (all in
        // different slots).
        for vpn in [0x200, 0x3ff, 0x410, 0x401] {
            let mask = if vpn < 0x400 { 0x1f_ffff } else { 0xfff };
            t.fill(
                &m,
                vpn,
                mask,
                host_of(&m, (vpn & 0x3ff) << 12),
                MmuIdx::User,
                false,
            );
        }
        t.flush_page(0x401);
        assert!(t.read(0x401 << 12, 1, MmuIdx::User, false).is_none());
        assert!(t.read(0x410 << 12, 1, MmuIdx::User, false).is_some());
        assert!(t.read(0x200 << 12, 1, MmuIdx::User, false).is_some());
        // INVLPG anywhere in the 2 MiB page drops all of its 4 KiB pieces.
        t.flush_page(0x2ab);
        assert!(t.read(0x200 << 12, 1, MmuIdx::User, false).is_none());
        assert!(t.read(0x3ff << 12, 1, MmuIdx::User, false).is_none());
        assert!(t.read(0x410 << 12, 1, MmuIdx::User, false).is_some());
        t.flush();
        assert!(t.read(0x410 << 12, 1, MmuIdx::User, false).is_none());
    }

    #[test]
    fn another_memory_drops_the_old_entries() {
        let (m1, m2) = (mem(), mem());
        let mut t = FastTlb::default();
        t.fill(&m1, 1, 0xfff, host_of(&m1, 0x1000), MmuIdx::Kernel, false);
        t.fill(&m2, 2, 0xfff, host_of(&m2, 0x2000), MmuIdx::Kernel, false);
        assert!(t.read(0x1000, 1, MmuIdx::Kernel, false).is_none());
        assert!(t.read(0x2000, 1, MmuIdx::Kernel, false).is_some());
    }
}
