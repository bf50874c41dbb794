//! Linear → physical translation and guest memory access for the TCG engine.
//!
//! - Page walks for every x86 paging mode the CPU model offers: 32-bit paging (with
//!   PSE 4 MiB pages and PSE-36), PAE, and 4-level paging (2 MiB and 1 GiB pages);
//!   accessed and dirty bits are set as hardware does (A on each entry used, D on the
//!   leaf of a write; leaf bits only when the access is allowed), with a
//!   read-modify-write through guest memory.
//! - Permission checks: U/S, R/W with CR0.WP, NX (EFER.NXE), SMEP and SMAP (with
//!   RFLAGS.AC for explicit supervisor accesses; *implicit* supervisor accesses, the
//!   processor's own reads and writes of descriptor tables, the TSS and the like, go
//!   through [`read_sys`]/[`write_sys`] and are always subject to SMAP).
//! - Page faults carry the exact error code (P, W/R, U/S, RSVD, I/D) and the faulting
//!   linear address in [`Fault::address`] (the delivery code writes CR2).
//! - A softmmu TLB: direct-mapped, [`TLB_SIZE`] entries for each of three access
//!   classes (user, supervisor with SMAP enforced, supervisor without), each entry
//!   with separate read / write / execute tags, tagged with the PCID and the global
//!   bit so that CR3 writes, INVLPG and INVPCID flush exactly what the architecture
//!   allows to survive (flushing more would also be correct; flushing less never).
//! - Physical accesses go to the CPU's own local APIC page first (see [`crate::apic`]),
//!   then to RAM/ROM through `GuestMemory` (ROM writes are dropped) and anything else
//!   to the MMIO bus; A20 masking applies to every physical address including
//!   page-table reads.
//!
//! An access that crosses a page boundary translates both pages before touching
//! memory, so a fault on the second page leaves memory unwritten.

use crate::cpu::X86Cpu;
use crate::fasttlb::{FastTlb, Table};
use vireo_core::cpu::{ctl, flags as fl};
use vireo_core::exec::Fault;
use vireo_core::ir::{MmuIdx, Size};
use vireo_core::layout::RegionKind;

/// CR4 bits the MMU depends on.
pub mod cr4 {
    pub const VME: u64 = 1 << 0;
    pub const PVI: u64 = 1 << 1;
    pub const TSD: u64 = 1 << 2;
    pub const DE: u64 = 1 << 3;
    pub const PSE: u64 = 1 << 4;
    pub const PAE: u64 = 1 << 5;
    pub const MCE: u64 = 1 << 6;
    pub const PGE: u64 = 1 << 7;
    pub const PCE: u64 = 1 << 8;
    pub const OSFXSR: u64 = 1 << 9;
    pub const OSXMMEXCPT: u64 = 1 << 10;
    pub const UMIP: u64 = 1 << 11;
    pub const FSGSBASE: u64 = 1 << 16;
    pub const PCIDE: u64 = 1 << 17;
    pub const OSXSAVE: u64 = 1 << 18;
    pub const SMEP: u64 = 1 << 20;
    pub const SMAP: u64 = 1 << 21;
}

/// Page-fault error code bits.
pub mod pferr {
    pub const P: u32 = 1 << 0;
    pub const W: u32 = 1 << 1;
    pub const U: u32 = 1 << 2;
    pub const RSVD: u32 = 1 << 3;
    pub const ID: u32 = 1 << 4;
}

/// Physical address width of the CPU model (CPUID 0x80000008 EAX[7:0]).
pub const PHYS_BITS: u32 = 40;
/// Entries per access class in the TLB: 256 sets of two (pages 1 MiB apart that
/// shared a slot of a direct-mapped TLB made some boots' gzip twice as slow).
pub const TLB_SIZE: usize = 512;
const CLASSES: usize = 3;
const INVALID: u64 = u64::MAX;
/// Bits 51:12 of a paging-structure entry (the address field before MAXPHYADDR).
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
/// Bits MAXPHYADDR-1:12.
const PHYS_PAGE_MASK: u64 = ((1u64 << PHYS_BITS) - 1) & !0xfff;
const PTE_P: u64 = 1 << 0;
const PTE_RW: u64 = 1 << 1;
const PTE_US: u64 = 1 << 2;
const PTE_A: u64 = 1 << 5;
const PTE_D: u64 = 1 << 6;
const PTE_PS: u64 = 1 << 7;
const PTE_G: u64 = 1 << 8;
const PTE_NX: u64 = 1 << 63;

/// Physical pages that hold translated code, which parts of them do, and the code
/// bytes written since the run loop last looked: a write to code is self-modifying
/// code. A write to a watched page outside its code (data next to code: a kernel's
/// init data beside its init text, a static key's neighbours) is an ordinary write,
/// as QEMU's code bitmaps make it; otherwise such a page's blocks were dropped and
/// translated again every time the data was written.
#[derive(Debug, Default)]
pub struct CodeWatch {
    /// Watched page → its code chunks ([`CodeWatch::chunks`]: bit n covers bytes
    /// 64n..64n+63).
    pages: std::collections::HashMap<u64, u64>,
    /// One bit per page below 4 GiB, mirroring `pages`, for a cheap write-path test.
    low: Vec<u64>,
    /// Code bytes written since [`CodeWatch::take_dirty`]: physical (start, length),
    /// each within one page.
    dirty: Vec<(u64, u64)>,
    /// Changes whenever a page starts being watched; unique across all watches.
    gen: u64,
}

/// Source of [`CodeWatch`] generations (0: a watch that never watched a page).
static WATCH_GEN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

const LOW_PAGES: u64 = 1 << 20;

impl CodeWatch {
    /// The chunk mask of page offsets `first..=last` (64 bytes a bit).
    pub fn chunks(first: u64, last: u64) -> u64 {
        let (a, b) = ((first & 0xfff) >> 6, (last & 0xfff) >> 6);
        if a > b {
            return 0;
        }
        (u64::MAX >> (63 - b)) & (u64::MAX << a)
    }
    /// Starts watching the `chunks` of physical page `pfn` (address >> 12) as code
    /// (added to those watched already).
    pub fn watch(&mut self, pfn: u64, chunks: u64) {
        match self.pages.entry(pfn) {
            std::collections::hash_map::Entry::Occupied(mut e) => *e.get_mut() |= chunks,
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(chunks);
                self.gen = WATCH_GEN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        if pfn < LOW_PAGES {
            if self.low.is_empty() {
                self.low = vec![0; (LOW_PAGES / 64) as usize];
            }
            self.low[(pfn / 64) as usize] |= 1 << (pfn % 64);
        }
    }
    /// Replaces the code chunks of watched page `pfn` (some of its blocks were
    /// dropped).
    pub fn set_chunks(&mut self, pfn: u64, chunks: u64) {
        if let Some(c) = self.pages.get_mut(&pfn) {
            *c = chunks;
        }
    }
    /// Stops watching `pfn` (its blocks were dropped).
    pub fn unwatch(&mut self, pfn: u64) {
        self.pages.remove(&pfn);
        if let Some(w) = self.low.get_mut((pfn / 64) as usize) {
            if pfn < LOW_PAGES {
                *w &= !(1 << (pfn % 64));
            }
        }
    }
    pub fn is_watched(&self, pfn: u64) -> bool {
        if pfn < LOW_PAGES {
            self.low
                .get((pfn / 64) as usize)
                .is_some_and(|w| w & (1 << (pfn % 64)) != 0)
        } else {
            self.pages.contains_key(&pfn)
        }
    }
    /// Records a write of physical `[pa, pa+len)` (within one page, `len` > 0); true
    /// if it reaches code.
    pub fn note_write(&mut self, pa: u64, len: u64) -> bool {
        let pfn = pa >> 12;
        if !self.is_watched(pfn) {
            return false;
        }
        let last = pa + len.max(1) - 1;
        let code = self.pages.get(&pfn).copied().unwrap_or(u64::MAX);
        if code & Self::chunks(pa, last) == 0 {
            return false;
        }
        match self.dirty.last_mut() {
            // The same bytes again, or the next ones (a string copy): one range.
            Some((s, l)) if *s >> 12 == pfn && *s <= pa && pa <= *s + *l => {
                *l = (*l).max(last + 1 - *s);
            }
            _ => self.dirty.push((pa, last + 1 - pa)),
        }
        true
    }
    /// Changes whenever a page starts being watched (the fast TLB then drops its
    /// write tags); no two watches share a nonzero value.
    pub fn generation(&self) -> u64 {
        self.gen
    }
    /// Code written since the last call: physical (start, length), each within one
    /// page.
    pub fn take_dirty(&mut self) -> Vec<(u64, u64)> {
        std::mem::take(&mut self.dirty)
    }
}

/// What an access does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
    Exec,
}

/// Who makes an access, for the permission checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Agent {
    /// An explicit access at CPL 3.
    User,
    /// An explicit access at CPL 0-2 (SMAP honours RFLAGS.AC).
    Kernel,
    /// An implicit supervisor access (descriptor tables, TSS, IDT): SMAP always applies
    /// and the page-fault error code says "supervisor" even at CPL 3.
    Implicit,
}

impl From<MmuIdx> for Agent {
    fn from(m: MmuIdx) -> Agent {
        match m {
            MmuIdx::User => Agent::User,
            MmuIdx::Kernel => Agent::Kernel,
        }
    }
}

/// One TLB entry: a 4 KiB piece of a mapping.
#[derive(Debug, Clone, Copy)]
struct TlbEntry {
    /// Linear page number (address >> 12) the entry allows reads / writes / fetches
    /// for, or `INVALID`.
    tag_r: u64,
    tag_w: u64,
    tag_x: u64,
    /// Physical address of the 4 KiB page.
    phys: u64,
    global: bool,
    pcid: u16,
    /// Size - 1 of the mapping the entry came from (INVLPG of a large page).
    page_mask: u64,
}

const EMPTY: TlbEntry = TlbEntry {
    tag_r: INVALID,
    tag_w: INVALID,
    tag_x: INVALID,
    phys: 0,
    global: false,
    pcid: 0,
    page_mask: 0xfff,
};

impl TlbEntry {
    fn vpn(&self) -> Option<u64> {
        [self.tag_r, self.tag_w, self.tag_x]
            .into_iter()
            .find(|&t| t != INVALID)
    }
}

/// The softmmu state of one CPU.
#[derive(Debug)]
pub struct Mmu {
    /// Pages with translated code (self-modifying-code detection).
    pub code: CodeWatch,
    tlb: Vec<TlbEntry>,
    /// The sets of `tlb` filled since it was last emptied (by their first entry's
    /// index: an entry reaches a set's second way only from its first).
    log: crate::filllog::FillLog,
    /// The current PCID (CR3[11:0] when CR4.PCIDE is set, else 0).
    pcid: u16,
    /// Walks done (statistics, tests).
    pub walks: u64,
    /// Page tables of recently walked 2 MiB regions (4-level paging).
    pub walk_cache: crate::walkcache::WalkCache,
    /// Host pointers for plain RAM accesses ([`crate::fasttlb`]).
    pub fast: FastTlb,
    /// Changes with every flush (any kind) and PCID switch: what was looked up
    /// through the TLB before may map elsewhere now.
    pub gen: u64,
    /// The run loop's epoch of the CPU state compiled code may look up indirect
    /// targets under (see `DirectGlobals::indirect_guard`); `u64::MAX` (matches
    /// nothing) from any TLB flush until the run loop sets it again.
    pub jc_guard: u64,
    /// The lookup epochs of the last few CPU states ([`epoch_state`]), the current
    /// one first: kept by the run loop, read by helpers that change the state and
    /// let their block chain on (SYSCALL: [`refresh_guard`]).
    pub epochs: [(EpochState, u64); RECENT_EPOCHS],
    /// Recent mode transitions of helpers that let their block go on (SYSCALL,
    /// SYSRET): (epoch before, transition key, epoch after), see [`follow_guard`].
    transitions: [(u64, u64, u64); RECENT_EPOCHS],
    /// The entry of `transitions` the next new transition replaces.
    next_transition: usize,
}

/// What a lookup epoch stands for: mode key (bit 63: single-stepping), CPL, MMU
/// generation, A20.
pub type EpochState = (u64, u8, u64, bool);
/// No state has it.
pub const NO_EPOCH_STATE: EpochState = (u64::MAX, u8::MAX, u64::MAX, false);
/// States whose epochs are remembered.
pub const RECENT_EPOCHS: usize = 4;

/// The CPU's state as lookup epochs name it.
pub fn epoch_state(cpu: &X86Cpu) -> EpochState {
    let single_step = cpu.state.rflags & vireo_core::cpu::flags::TF != 0;
    let mode = crate::translate::mode_key(cpu) | u64::from(single_step) << 63;
    (mode, cpu.state.cpl(), cpu.mmu.gen, cpu.bus.a20.enabled())
}

/// Sets the indirect-lookup guard to the epoch of the CPU's current state if the run
/// loop gave it one recently, else to "none" (`u64::MAX`): for a helper that changed
/// the mode or CPL in a block that then exits `Indirect` (compiled code may then go
/// on into the block registered for the new state).
pub fn refresh_guard(cpu: &mut X86Cpu) {
    let state = epoch_state(cpu);
    cpu.mmu.jc_guard = match cpu.mmu.epochs.iter().find(|(s, _)| *s == state) {
        Some(&(_, e)) if state.3 => e,
        _ => u64::MAX,
    };
}

/// [`refresh_guard`] after a helper's mode change that is a function of the state
/// before it and of `key` alone: `from` is the indirect-lookup guard the helper found
/// (the epoch of the state before, or `u64::MAX`). The same transition from the same
/// epoch lands in the same state, so its epoch is remembered and reused while the run
/// loop still keeps it among the recent ones; working out the state (the mode key)
/// anew was a quarter of a system-call-bound guest's time.
///
/// The caller vouches that the state after depends on nothing but the state before
/// (as its epoch names it: mode key with the trap flag, CPL, MMU generation, A20) and
/// `key`; the guard it found is the epoch of the state before because no helper
/// changes that state without leaving its block to the run loop or setting the guard
/// itself (see `X86Cpu`'s `DirectGlobals` contract).
pub fn follow_guard(cpu: &mut X86Cpu, from: u64, key: u64) {
    let m = &mut cpu.mmu;
    if from != u64::MAX {
        let hit = m.transitions.iter().find(|t| t.0 == from && t.1 == key);
        if let Some(&(_, _, to)) = hit {
            if m.epochs.iter().any(|e| e.1 == to) {
                m.jc_guard = to;
                return;
            }
        }
    }
    refresh_guard(cpu);
    let m = &mut cpu.mmu;
    if from != u64::MAX && m.jc_guard != u64::MAX {
        let i = match m.transitions.iter().position(|t| t.0 == from && t.1 == key) {
            Some(i) => i,
            None => {
                let i = m.next_transition;
                m.next_transition = (i + 1) % RECENT_EPOCHS;
                i
            }
        };
        m.transitions[i] = (from, key, m.jc_guard);
    }
}

impl Default for Mmu {
    fn default() -> Mmu {
        Mmu {
            gen: 0,
            jc_guard: u64::MAX,
            epochs: [(NO_EPOCH_STATE, u64::MAX); RECENT_EPOCHS],
            transitions: [(u64::MAX, 0, u64::MAX); RECENT_EPOCHS],
            next_transition: 0,
            fast: FastTlb::default(),
            code: CodeWatch::default(),
            tlb: vec![EMPTY; CLASSES * TLB_SIZE],
            log: crate::filllog::FillLog::new(CLASSES * TLB_SIZE),
            pcid: 0,
            walks: 0,
            walk_cache: Default::default(),
        }
    }
}

impl Mmu {
    /// Resets the entries that may be valid (those of the logged sets, or all) for
    /// which `drop` holds; the log then lists the sets left with one.
    fn drop_where(&mut self, drop: impl Fn(&TlbEntry) -> bool) {
        let Mmu { tlb, log, .. } = self;
        match log.filled() {
            Some(sets) => {
                for &i in sets {
                    for e in &mut tlb[i as usize..i as usize + 2] {
                        if drop(e) {
                            *e = EMPTY;
                        }
                    }
                }
            }
            None => {
                for e in tlb.iter_mut().filter(|e| drop(e)) {
                    *e = EMPTY;
                }
            }
        }
        log.retain(tlb.len(), |i| {
            i % 2 == 0 && (tlb[i].vpn().is_some() || tlb[i + 1].vpn().is_some())
        });
    }

    /// Drops every cached translation, global ones included.
    pub fn flush(&mut self) {
        self.drop_where(|_| true);
        self.log.clear();
        self.fast.flush();
        self.remapped();
    }

    /// Drops every non-global translation (a CR3 write with CR4.PGE).
    pub fn flush_nonglobal(&mut self) {
        self.drop_where(|e| !e.global);
        self.fast.flush();
        self.remapped();
    }

    /// Drops the non-global translations of `pcid` (a CR3 write with PCIDE that does
    /// not ask to keep them, INVPCID single-context).
    pub fn flush_pcid(&mut self, pcid: u16) {
        self.drop_where(|e| !e.global && e.pcid == pcid);
        // The fast entries all belong to the current PCID.
        if pcid == self.pcid {
            self.fast.flush();
        }
        self.remapped();
    }

    /// Drops every translation (global or not) covering linear address `la` (INVLPG;
    /// large pages are flushed whole).
    pub fn flush_page(&mut self, la: u64) {
        let vpn = la >> 12;
        self.drop_where(|e| {
            e.vpn()
                .is_some_and(|t| (t ^ vpn) & !(e.page_mask >> 12) == 0)
        });
        self.fast.flush_page(vpn);
        self.remapped();
    }

    /// Drops the translations of `la` for `pcid` only (INVPCID individual address);
    /// global translations of `la` are dropped too, which the architecture allows.
    pub fn flush_page_pcid(&mut self, la: u64, _pcid: u16) {
        self.flush_page(la);
    }

    /// Sets the PCID translations are tagged with.
    pub fn set_pcid(&mut self, pcid: u16) {
        if self.pcid != pcid & 0xfff {
            self.fast.flush();
            self.remapped();
        }
        self.pcid = pcid & 0xfff;
    }

    /// Drops the fast TLB's write tags if pages became code since it last looked.
    fn sync_code_watch(&mut self) {
        let gen = self.code.generation();
        if self.fast.watch_gen != gen {
            self.fast.flush_writes();
            self.fast.watch_gen = gen;
        }
    }

    /// Translations were dropped: what was looked up through them may map elsewhere
    /// now (the jump cache's generation moves, the indirect-exit guard is void).
    fn remapped(&mut self) {
        self.gen += 1;
        self.jc_guard = u64::MAX;
        // Every invalidation the architecture has (INVLPG, CR3, INVPCID, a mode
        // change) empties the paging-structure cache too.
        self.walk_cache.clear();
    }

    /// The first entry of `vpn`'s set in `class` (two ways: the one used last first).
    fn slot(class: usize, vpn: u64) -> usize {
        class * TLB_SIZE + 2 * (vpn as usize % (TLB_SIZE / 2))
    }
}

/// A page fault at `la` with error code `err`.
pub fn page_fault(la: u64, err: u32) -> Fault {
    Fault {
        vector: 14,
        error_code: Some(err),
        address: Some(la),
    }
}

fn gp0() -> Fault {
    Fault::with_error(13, 0)
}

pub(crate) fn a20_mask(cpu: &X86Cpu) -> u64 {
    if cpu.bus.a20.enabled() {
        u64::MAX
    } else {
        !(1u64 << 20)
    }
}

/// Reads physical memory: this CPU's APIC page, else RAM/ROM, else MMIO (unassigned
/// reads all ones).
pub fn read_phys(cpu: &X86Cpu, pa: u64, buf: &mut [u8]) {
    if let Some(a) = crate::apic::claim(cpu, pa) {
        a.mmio_read(pa & 0xfff, buf);
    } else if cpu.bus.mem.read(pa, buf).is_err() {
        cpu.bus.mmio.read(pa, buf);
    }
}

/// Writes physical memory: this CPU's APIC page, else RAM, else MMIO (ROM and
/// unassigned writes are dropped).
pub fn write_phys(cpu: &X86Cpu, pa: u64, data: &[u8]) {
    if let Some(a) = crate::apic::claim(cpu, pa) {
        a.mmio_write(pa & 0xfff, data);
    } else if cpu.bus.mem.write_cpu(pa, data).is_err() {
        cpu.bus.mmio.write(pa, data);
    }
}

fn read_phys_le(cpu: &X86Cpu, pa: u64, len: usize) -> u64 {
    let mut b = [0u8; 8];
    read_phys(cpu, pa & a20_mask(cpu), &mut b[..len]);
    u64::from_le_bytes(b)
}

fn write_phys_le(cpu: &mut X86Cpu, pa: u64, len: usize, v: u64) {
    let pa = pa & a20_mask(cpu);
    note_code_write(cpu, pa, len);
    write_phys(cpu, pa, &v.to_le_bytes()[..len]);
}

/// Records a write to physical `[pa, pa+len)` for self-modifying-code detection.
fn note_code_write(cpu: &mut X86Cpu, pa: u64, len: usize) {
    let end = pa.saturating_add(len.max(1) as u64);
    let mut at = pa;
    while at < end {
        let piece = (at | 0xfff).saturating_add(1).min(end) - at;
        if cpu.mmu.code.note_write(at, piece) {
            // Self-modifying code: finish this instruction, then leave the block.
            cpu.stop = true;
        }
        at += piece;
    }
}

/// The paging mode in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PagingMode {
    Off,
    Legacy32,
    Pae,
    Long4,
}

/// The paging mode given CR0, CR4 and EFER.
pub fn paging_mode(cpu: &X86Cpu) -> PagingMode {
    let s = &cpu.state;
    if s.cr0 & ctl::CR0_PG == 0 || s.cr0 & ctl::CR0_PE == 0 {
        PagingMode::Off
    } else if s.cr4 & cr4::PAE == 0 {
        PagingMode::Legacy32
    } else if s.efer & ctl::EFER_LMA != 0 {
        PagingMode::Long4
    } else {
        PagingMode::Pae
    }
}

/// Whether `la` is canonical for 48-bit linear addresses.
pub fn is_canonical(la: u64) -> bool {
    ((la as i64) << 16 >> 16) as u64 == la
}

/// TLB class of an access: 0 user, 1 supervisor with SMAP enforced, 2 supervisor
/// without SMAP.
fn class_of(cpu: &X86Cpu, agent: Agent) -> usize {
    match agent {
        Agent::User => 0,
        Agent::Implicit => 1,
        Agent::Kernel => {
            if cpu.state.cr4 & cr4::SMAP != 0 && cpu.state.rflags & fl::AC == 0 {
                1
            } else {
                2
            }
        }
    }
}

/// Result of a successful page walk.
struct Walk {
    phys: u64,
    page_mask: u64,
    global: bool,
    can_read: bool,
    can_write: bool,
    can_exec: bool,
}

/// Sets `bits` in the paging entry at `pa` (of `len` bytes) if they are not set yet.
fn set_entry_bits(cpu: &mut X86Cpu, pa: u64, len: usize, old: u64, bits: u64) {
    if old & bits != bits {
        write_phys_le(cpu, pa, len, old | bits);
    }
}

/// Walks the page tables for `la` (already checked canonical / truncated).
fn walk(cpu: &mut X86Cpu, la: u64, access: Access, class: usize) -> Result<Walk, Fault> {
    cpu.mmu.walks += 1;
    let mode = paging_mode(cpu);
    let s = &cpu.state;
    let (cr3, cr0, cr4, efer) = (s.cr3, s.cr0, s.cr4, s.efer);
    let nxe = efer & ctl::EFER_NXE != 0;
    let user_access = class == 0;
    let mut err = 0u32;
    if access == Access::Write {
        err |= pferr::W;
    }
    if user_access {
        err |= pferr::U;
    }
    if access == Access::Exec && (nxe || cr4 & cr4::SMEP != 0) {
        err |= pferr::ID;
    }
    let not_present = |e: u32| page_fault(la, e);
    let reserved = |e: u32| page_fault(la, e | pferr::P | pferr::RSVD);

    // Accumulated permissions and the leaf.
    let mut user = true;
    let mut writable = true;
    let mut nx = false;
    let (leaf_pa, leaf, leaf_len, phys_base, page_mask);
    match mode {
        PagingMode::Off => {
            return Ok(Walk {
                phys: la & !0xfff,
                page_mask: 0xfff,
                global: true,
                can_read: true,
                can_write: true,
                can_exec: true,
            })
        }
        PagingMode::Legacy32 => {
            let pde_pa = (cr3 & 0xffff_f000) + ((la >> 22) & 0x3ff) * 4;
            let pde = read_phys_le(cpu, pde_pa, 4);
            if pde & PTE_P == 0 {
                return Err(not_present(err));
            }
            user &= pde & PTE_US != 0;
            writable &= pde & PTE_RW != 0;
            if pde & PTE_PS != 0 && cr4 & cr4::PSE != 0 {
                // 4 MiB page; bits 20:13 are physical address bits 39:32 (PSE-36).
                if pde & (1 << 21) != 0 {
                    return Err(reserved(err));
                }
                leaf_pa = pde_pa;
                leaf = pde;
                leaf_len = 4;
                phys_base = (pde & 0xffc0_0000) | (((pde >> 13) & 0xff) << 32);
                page_mask = 0x3f_ffff;
            } else {
                set_entry_bits(cpu, pde_pa, 4, pde, PTE_A);
                let pte_pa = (pde & 0xffff_f000) + ((la >> 12) & 0x3ff) * 4;
                let pte = read_phys_le(cpu, pte_pa, 4);
                if pte & PTE_P == 0 {
                    return Err(not_present(err));
                }
                user &= pte & PTE_US != 0;
                writable &= pte & PTE_RW != 0;
                leaf_pa = pte_pa;
                leaf = pte;
                leaf_len = 4;
                phys_base = pte & 0xffff_f000;
                page_mask = 0xfff;
            }
        }
        PagingMode::Pae | PagingMode::Long4 => {
            let long = mode == PagingMode::Long4;
            let nx_rsvd = if nxe { 0 } else { PTE_NX };
            // Reserved bits of PDE/PTE-level entries.
            let rsvd = if long {
                (ADDR_MASK & !PHYS_PAGE_MASK) | nx_rsvd
            } else {
                (!PTE_NX & !((1u64 << PHYS_BITS) - 1)) | nx_rsvd
            };
            let mut table;
            let mut shift;
            let cached = if long {
                cpu.mmu.walk_cache.lookup(la, cr3, nxe)
            } else {
                None
            };
            if let Some(up) = cached {
                // The page table, and what the levels above it grant.
                table = up.table;
                shift = 12;
                user = up.user;
                writable = up.writable;
                nx = up.nx;
            } else if long {
                table = cr3 & PHYS_PAGE_MASK;
                shift = 39;
            } else {
                let pdpte_pa = (cr3 & 0xffff_ffe0) + ((la >> 30) & 3) * 8;
                let pdpte = read_phys_le(cpu, pdpte_pa, 8);
                if pdpte & PTE_P == 0 {
                    return Err(not_present(err));
                }
                if pdpte & (!((1u64 << PHYS_BITS) - 1) | 0x1e6) != 0 {
                    return Err(reserved(err));
                }
                table = pdpte & PHYS_PAGE_MASK;
                shift = 21;
            }
            loop {
                let pa = table + ((la >> shift) & 0x1ff) * 8;
                let e = read_phys_le(cpu, pa, 8);
                if e & PTE_P == 0 {
                    return Err(not_present(err));
                }
                let mut r = rsvd;
                let large = e & PTE_PS != 0 && (shift == 21 || shift == 30);
                if shift == 39 {
                    r |= PTE_PS;
                } else if large && shift == 30 {
                    r |= 0x3fff_e000;
                } else if large {
                    r |= 0x1f_e000;
                }
                if e & r != 0 {
                    return Err(reserved(err));
                }
                user &= e & PTE_US != 0;
                writable &= e & PTE_RW != 0;
                nx |= nxe && e & PTE_NX != 0;
                if shift == 12 || large {
                    leaf_pa = pa;
                    leaf = e;
                    leaf_len = 8;
                    page_mask = (1u64 << shift) - 1;
                    phys_base = e & PHYS_PAGE_MASK & !page_mask;
                    break;
                }
                set_entry_bits(cpu, pa, 8, e, PTE_A);
                table = e & PHYS_PAGE_MASK;
                if long && shift == 21 {
                    let up = crate::walkcache::Upper {
                        table,
                        user,
                        writable,
                        nx,
                    };
                    cpu.mmu.walk_cache.insert(la, cr3, nxe, up);
                }
                shift -= 9;
            }
        }
    }

    // Permissions of this access class.
    let wp = cr0 & ctl::CR0_WP != 0;
    let smep = cr4 & cr4::SMEP != 0;
    let smap = class == 1 && cr4 & cr4::SMAP != 0;
    let (can_read, can_write, can_exec) = if user_access {
        (user, user && writable, user && !nx)
    } else {
        let data_ok = !(user && smap);
        (
            data_ok,
            data_ok && (writable || !wp),
            !(nx || (user && smep)),
        )
    };
    let allowed = match access {
        Access::Read => can_read,
        Access::Write => can_write,
        Access::Exec => can_exec,
    };
    if !allowed {
        return Err(page_fault(la, err | pferr::P));
    }
    let dirty_bit = if access == Access::Write { PTE_D } else { 0 };
    set_entry_bits(cpu, leaf_pa, leaf_len, leaf, PTE_A | dirty_bit);
    let dirty = leaf & PTE_D != 0 || access == Access::Write;
    Ok(Walk {
        phys: phys_base + (la & page_mask & !0xfff),
        page_mask,
        global: leaf & PTE_G != 0 && cr4 & cr4::PGE != 0,
        can_read,
        // Writes to a clean page walk again to set D.
        can_write: can_write && dirty,
        can_exec,
    })
}

/// Translates linear address `la` for `access` by `agent` into a physical address
/// (A20 not applied). Faults: #PF, or #GP(0) for a non-canonical address in long mode.
pub fn translate(cpu: &mut X86Cpu, la: u64, access: Access, agent: Agent) -> Result<u64, Fault> {
    let la = if cpu.state.efer & ctl::EFER_LMA != 0 {
        if !is_canonical(la) {
            return Err(gp0());
        }
        la
    } else {
        la & 0xffff_ffff
    };
    let class = class_of(cpu, agent);
    let vpn = la >> 12;
    let i = Mmu::slot(class, vpn);
    for way in [i, i + 1] {
        let e = cpu.mmu.tlb[way];
        let tag = match access {
            Access::Read => e.tag_r,
            Access::Write => e.tag_w,
            Access::Exec => e.tag_x,
        };
        if tag == vpn && (e.global || e.pcid == cpu.mmu.pcid) {
            // The set's entry used last comes first.
            cpu.mmu.tlb.swap(i, way);
            return Ok(e.phys | (la & 0xfff));
        }
    }
    let w = match walk(cpu, la, access, class) {
        Ok(w) => w,
        // A page fault invalidates what the paging-structure cache holds for its
        // address, as on hardware: software that changed an entry without a flush
        // takes at most one spurious fault, and the retry walks from CR3.
        Err(f) => {
            if f.vector == 14 {
                cpu.mmu.walk_cache.forget(la);
            }
            return Err(f);
        }
    };
    let pcid = cpu.mmu.pcid;
    // Keep the tags of an entry for the same page (a write after a read), moved to
    // the front; else the front entry moves to the back, over the older one.
    // (The fill log gets a set when both its entries are empty.)
    let same = |e: &TlbEntry| e.vpn() == Some(vpn) && e.phys == w.phys && e.pcid == pcid;
    let m = &mut cpu.mmu;
    if m.tlb[i].vpn().is_none() && m.tlb[i + 1].vpn().is_none() {
        m.log.note(i);
    }
    if same(&m.tlb[i + 1]) {
        m.tlb.swap(i, i + 1);
    } else if !same(&m.tlb[i]) {
        m.tlb[i + 1] = m.tlb[i];
        m.tlb[i] = EMPTY;
    }
    let slot = &mut cpu.mmu.tlb[i];
    slot.phys = w.phys;
    slot.global = w.global;
    slot.pcid = pcid;
    slot.page_mask = w.page_mask;
    if w.can_read {
        slot.tag_r = vpn;
    }
    if w.can_write {
        slot.tag_w = vpn;
    }
    if w.can_exec {
        slot.tag_x = vpn;
    }
    Ok(w.phys | (la & 0xfff))
}

/// Splits `[la, la+len)` at a page boundary: the first piece's length.
fn first_piece(la: u64, len: usize) -> usize {
    let room = 0x1000 - (la & 0xfff) as usize;
    len.min(room)
}

/// Reads `buf.len()` bytes at linear `la` (any length; both pages of a crossing access
/// are translated before anything is read).
pub fn read_bytes(
    cpu: &mut X86Cpu,
    la: u64,
    buf: &mut [u8],
    access: Access,
    agent: Agent,
) -> Result<(), Fault> {
    check_canonical(cpu, la, buf.len())?;
    let mut done = 0;
    while done < buf.len() {
        let cur = la.wrapping_add(done as u64);
        let n = first_piece(cur, buf.len() - done);
        let pa = translate(cpu, cur, access, agent)? & a20_mask(cpu);
        read_phys(cpu, pa, &mut buf[done..done + n]);
        done += n;
    }
    Ok(())
}

/// #GP(0) in long mode unless both ends of `[la, la+len)` are canonical (checked
/// before any page of the access is walked, as the CPU does). The fault carries the
/// address, which marks it as a non-canonical data access: if the instruction's
/// accesses all go through SS it is #SS(0) instead, which exception delivery decides
/// (see [`crate::translate::stack_only`]; the translator leaves such accesses
/// unchecked).
fn check_canonical(cpu: &X86Cpu, la: u64, len: usize) -> Result<(), Fault> {
    if cpu.state.efer & ctl::EFER_LMA != 0 && !canonical_range(la, len) {
        return Err(Fault {
            address: Some(la),
            ..gp0()
        });
    }
    Ok(())
}

/// Whether both ends of `[la, la+len)` are canonical.
pub(crate) fn canonical_range(la: u64, len: usize) -> bool {
    is_canonical(la) && is_canonical(la.wrapping_add(len.max(1) as u64 - 1))
}

/// Writes `data` at linear `la`; every page is translated (and checked) before the
/// first byte is written.
pub fn write_bytes(cpu: &mut X86Cpu, la: u64, data: &[u8], agent: Agent) -> Result<(), Fault> {
    check_canonical(cpu, la, data.len())?;
    let mut pieces = [(0u64, 0usize, 0usize); 3];
    let mut count = 0;
    let mut done = 0;
    while done < data.len() {
        let cur = la.wrapping_add(done as u64);
        let n = first_piece(cur, data.len() - done);
        let pa = translate(cpu, cur, Access::Write, agent)? & a20_mask(cpu);
        if count < pieces.len() {
            pieces[count] = (pa, done, n);
            count += 1;
        } else {
            // Longer than two pages: write what was checked so far (not used by the
            // helpers, which write at most 16 bytes at once).
            flush_pieces(cpu, &pieces[..count], data);
            count = 0;
            pieces[count] = (pa, done, n);
            count += 1;
        }
        done += n;
    }
    flush_pieces(cpu, &pieces[..count], data);
    Ok(())
}

fn flush_pieces(cpu: &mut X86Cpu, pieces: &[(u64, usize, usize)], data: &[u8]) {
    for &(pa, off, n) in pieces {
        note_code_write(cpu, pa, n);
        write_phys(cpu, pa, &data[off..off + n]);
    }
}

/// Checks that `[la, la+len)` is writable by `agent` without writing (sets A/D bits as
/// the write would).
pub fn probe_write(cpu: &mut X86Cpu, la: u64, len: usize, agent: Agent) -> Result<(), Fault> {
    let mut done = 0;
    while done < len {
        let cur = la.wrapping_add(done as u64);
        let n = first_piece(cur, len - done);
        translate(cpu, cur, Access::Write, agent)?;
        done += n;
    }
    Ok(())
}

/// Reads `size` bytes at linear address `addr`.
pub fn read(cpu: &mut X86Cpu, addr: u64, size: Size, mmu: MmuIdx) -> Result<u64, Fault> {
    let len = size.bytes().min(8);
    if let Some(v) = cpu.mmu.fast.read(addr, len, mmu, false) {
        return Ok(v);
    }
    if smap_open(cpu, mmu) {
        if let Some(v) = cpu.mmu.fast.read(addr, len, Table::KERNEL_AC, false) {
            return Ok(v);
        }
    }
    let v = read_le(cpu, addr, len, Agent::from(mmu))?;
    fill_fast(cpu, addr, len, mmu, Access::Read);
    Ok(v)
}

/// Reads `size` bytes at linear address `addr` for a read-modify-write: every page
/// is translated and checked for write permission (a fault carries the W bit, as on
/// hardware, which checks an RMW destination before reading it).
pub fn read_for_write(cpu: &mut X86Cpu, addr: u64, size: Size, mmu: MmuIdx) -> Result<u64, Fault> {
    let len = size.bytes().min(8);
    if let Some(v) = cpu.mmu.fast.read(addr, len, mmu, true) {
        return Ok(v);
    }
    if smap_open(cpu, mmu) {
        if let Some(v) = cpu.mmu.fast.read(addr, len, Table::KERNEL_AC, true) {
            return Ok(v);
        }
    }
    let mut b = [0u8; 8];
    read_bytes(cpu, addr, &mut b[..len], Access::Write, Agent::from(mmu))?;
    fill_fast(cpu, addr, len, mmu, Access::Write);
    Ok(u64::from_le_bytes(b))
}

/// Writes the low `size` bytes of `val` at linear address `addr`.
pub fn write(cpu: &mut X86Cpu, addr: u64, val: u64, size: Size, mmu: MmuIdx) -> Result<(), Fault> {
    let len = size.bytes().min(8);
    if cpu.mmu.fast.write(addr, len, val, mmu)
        || (smap_open(cpu, mmu) && cpu.mmu.fast.write(addr, len, val, Table::KERNEL_AC))
    {
        return Ok(());
    }
    write_le(cpu, addr, len, val, Agent::from(mmu))?;
    fill_fast(cpu, addr, len, mmu, Access::Write);
    Ok(())
}

/// After a successful explicit access of `len` bytes at `la`: makes a fast TLB entry
/// for its page if the access was a plain RAM (reads: or ROM) access that any later
/// access of the same kind would repeat (the rules are in [`crate::fasttlb`]).
pub(crate) fn fill_fast(cpu: &mut X86Cpu, la: u64, len: usize, mmu: MmuIdx, access: Access) {
    if (la & 0xfff) as usize + len > 0x1000 || !cpu.bus.a20.enabled() {
        return;
    }
    if cpu.state.efer & ctl::EFER_LMA == 0 && la > 0xffff_ffff {
        return; // wraps at 4 GiB: the entry's tag would not be the page accessed
    }
    let agent = Agent::from(mmu);
    let class = class_of(cpu, agent);
    // A supervisor access while RFLAGS.AC opens SMAP goes to its own table (the
    // others' entries must hold whatever AC is).
    let table = if smap_open(cpu, mmu) {
        Table::KERNEL_AC
    } else {
        Table::from(mmu)
    };
    let Ok(pa) = translate(cpu, la, access, agent) else {
        return;
    };
    let vpn = la >> 12;
    let entry = cpu.mmu.tlb[Mmu::slot(class, vpn)];
    let page_mask = if entry.vpn() == Some(vpn) {
        entry.page_mask
    } else {
        u64::MAX // unknown: any INVLPG drops the entry
    };
    if crate::apic::claim(cpu, pa).is_some() {
        return;
    }
    let page = pa & !0xfff;
    let Some(r) = cpu.bus.mem.region_of(page, 0x1000) else {
        return;
    };
    let write = access == Access::Write;
    cpu.mmu.sync_code_watch();
    if write && (r.kind != RegionKind::Ram || cpu.mmu.code.is_watched(page >> 12)) {
        return;
    }
    let host = r.host_addr + (page - r.gpa);
    cpu.mmu
        .fast
        .fill(&cpu.bus.mem, vpn, page_mask, host, table, write);
}

/// The fast TLB tables explicit accesses at the current privilege level may use: the
/// level's own, and the supervisor table for SMAP opened by RFLAGS.AC.
pub(crate) fn fast_tables(cpu: &X86Cpu) -> (MmuIdx, Option<Table>) {
    let mmu = if cpu.state.cpl() == 3 {
        MmuIdx::User
    } else {
        MmuIdx::Kernel
    };
    (mmu, smap_open(cpu, mmu).then_some(Table::KERNEL_AC))
}

/// A supervisor access with SMAP enabled and opened by RFLAGS.AC.
fn smap_open(cpu: &X86Cpu, mmu: MmuIdx) -> bool {
    mmu == MmuIdx::Kernel && cpu.state.cr4 & cr4::SMAP != 0 && cpu.state.rflags & fl::AC != 0
}

/// Brings the fast TLB up to date with what may change outside the MMU between two
/// blocks: pages that became code (their write tags go) and the A20 gate (all entries
/// go while it is off).
pub fn sync_fast_tlb(cpu: &mut X86Cpu) {
    cpu.mmu.sync_code_watch();
    if !cpu.bus.a20.enabled() {
        cpu.mmu.fast.flush();
    }
}

/// Reads a little-endian value of `len` (1-8) bytes.
pub fn read_le(cpu: &mut X86Cpu, la: u64, len: usize, agent: Agent) -> Result<u64, Fault> {
    let mut b = [0u8; 8];
    let len = len.min(8);
    read_bytes(cpu, la, &mut b[..len], Access::Read, agent)?;
    Ok(u64::from_le_bytes(b))
}

/// Writes the low `len` (1-8) bytes of `v`, little endian.
pub fn write_le(cpu: &mut X86Cpu, la: u64, len: usize, v: u64, agent: Agent) -> Result<(), Fault> {
    write_bytes(cpu, la, &v.to_le_bytes()[..len.min(8)], agent)
}

/// The fast TLB's table of an explicit access by `agent` (implicit ones have none).
fn explicit_idx(agent: Agent) -> Option<MmuIdx> {
    match agent {
        Agent::User => Some(MmuIdx::User),
        Agent::Kernel => Some(MmuIdx::Kernel),
        Agent::Implicit => None,
    }
}

/// [`read_le`] of 1, 2, 4 or 8 bytes through the fast TLB when `agent`'s accesses
/// have a table there (the stack accesses of far transfers, IRET, interrupts).
pub fn read_by(cpu: &mut X86Cpu, la: u64, len: usize, agent: Agent) -> Result<u64, Fault> {
    match (explicit_idx(agent), Size::from_bytes(len)) {
        (Some(mmu), Some(size)) => read(cpu, la, size, mmu),
        _ => read_le(cpu, la, len, agent),
    }
}

/// [`write_le`] through the fast TLB, as [`read_by`].
pub fn write_by(cpu: &mut X86Cpu, la: u64, len: usize, v: u64, agent: Agent) -> Result<(), Fault> {
    match (explicit_idx(agent), Size::from_bytes(len)) {
        (Some(mmu), Some(size)) => write(cpu, la, v, size, mmu),
        _ => write_le(cpu, la, len, v, agent),
    }
}

/// An implicit supervisor read (descriptor tables, IDT, TSS), through the fast
/// TLB's supervisor table when it holds the page: its entries allow what a
/// supervisor access with RFLAGS.AC clear may do, which is what an implicit one
/// may (those opened by AC have a table of their own). A read that misses fills it,
/// so that exception delivery and IRET read their descriptors without walking the
/// soft TLB and the bus each time (a fifth of a page-fault-bound guest's time was
/// translations).
pub fn read_sys(cpu: &mut X86Cpu, la: u64, len: usize) -> Result<u64, Fault> {
    if len <= 8 {
        if let Some(v) = cpu.mmu.fast.read(la, len, Table::KERNEL, false) {
            return Ok(v);
        }
    }
    let v = read_le(cpu, la, len, Agent::Implicit)?;
    if !smap_open(cpu, MmuIdx::Kernel) {
        fill_fast(cpu, la, len, MmuIdx::Kernel, Access::Read);
    }
    Ok(v)
}

/// An implicit supervisor write (accessed/busy bits, TSS state save).
pub fn write_sys(cpu: &mut X86Cpu, la: u64, len: usize, v: u64) -> Result<(), Fault> {
    write_le(cpu, la, len, v, Agent::Implicit)
}

/// The agent of explicit accesses at the current privilege level.
pub fn current_agent(cpu: &X86Cpu) -> Agent {
    if cpu.state.cpl() == 3 {
        Agent::User
    } else {
        Agent::Kernel
    }
}

/// Instruction fetch of `buf.len()` bytes at linear address `linear`, with execute
/// permission at the current privilege level (the translator's byte source).
pub fn fetch(cpu: &mut X86Cpu, linear: u64, buf: &mut [u8]) -> Result<(), Fault> {
    let agent = current_agent(cpu);
    read_bytes(cpu, linear, buf, Access::Exec, agent)
}

/// The physical address (A20 applied) of the code at `linear`, checked for execute
/// permission: the block-cache key.
pub fn translate_code(cpu: &mut X86Cpu, linear: u64) -> Result<u64, Fault> {
    let agent = current_agent(cpu);
    Ok(translate(cpu, linear, Access::Exec, agent)? & a20_mask(cpu))
}

#[cfg(test)]
#[path = "mmu_tests.rs"]
mod tests;
