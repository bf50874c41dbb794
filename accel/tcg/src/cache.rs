//! The translation-block cache.
//!
//! A translated block ([`Tb`]) is found by its [`TbKey`]: the physical address of its
//! first byte, the PC and CS base it was translated at (blocks embed CS-relative PCs),
//! and the frontend's mode key. Blocks live in a slab and are named by [`TbId`]s that
//! carry a generation, so a stale id (a block invalidated since) is detected rather
//! than followed. A page index maps each physical code page to its blocks: a write to a
//! watched page (self-modifying code, reported by the softmmu's `CodeWatch`) drops them
//! all. The cache is bounded: when it holds too many blocks or IR ops, it is flushed
//! whole, as QEMU does when its code buffer fills.
//!
//! Under the JIT backend a block also carries its host code ([`Tb::jit`]), held in the
//! cache's [`JitCache`]: a flush (full cache, or the JIT's code buffer full) resets the
//! code buffer with the blocks; an invalidated block's code stays in the buffer,
//! unreachable, until the next flush.
//!
//! Each block keeps up to two *links*: the block that followed it through a
//! `ExitKind::Jump` to a PC on the same linear page. The run loop follows a link
//! without hashing or walking page tables; links die with their target's generation.

use crate::compiler::Compiler;
use vireo_core::fxhash::FxMap;
use vireo_interp::Prepared;
use vireo_jit::{JitBlock, JitCache, JitError};
use vireo_x86::mmu::CodeWatch;
use vireo_x86::X86Cpu;

/// What identifies a translation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TbKey {
    /// Physical address of the first instruction byte.
    pub phys: u64,
    /// PC (relative to the CS base) of the first instruction.
    pub pc: u64,
    /// The CS base the block was translated with.
    pub cs_base: u64,
    /// The frontend's mode key.
    pub mode: u64,
}

/// A block in the cache, by slot and generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TbId {
    index: u32,
    gen: u32,
}

impl TbId {
    /// An id no block ever has.
    pub const NONE: TbId = TbId {
        index: u32::MAX,
        gen: u32::MAX,
    };

    /// As one number (the tag of the block's JIT cell).
    pub fn to_tag(self) -> u64 {
        u64::from(self.index) << 32 | u64::from(self.gen)
    }
    pub fn from_tag(tag: u64) -> TbId {
        TbId {
            index: (tag >> 32) as u32,
            gen: tag as u32,
        }
    }
}

/// A direct successor: the block that runs when this one exits to `pc`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link {
    pub pc: u64,
    pub target: TbId,
}

/// One translated block. (Laid out in order: what the run loop reads of a block it
/// is about to run, its slot's generation and the compiled code's entry, share the
/// slot's first cache line; the run loop of an idle Linux, cold at every wake-up,
/// waited on a line per block for the generation alone, at the end of the slot.)
#[derive(Debug)]
#[repr(C)]
pub struct Tb {
    /// The block compiled by the JIT (backend `Jit`, unless it could not be compiled).
    pub jit: Option<JitBlock>,
    /// Interpreted runs left before the block is compiled (`-tcg-warmup`; 0 for a
    /// block translated in full). Most blocks of a boot run once or twice: a block
    /// first seen is translated without the IR passes and run by the interpreter;
    /// after each such run its IR goes ([`BlockCache::cool`]), leaving a *shell*
    /// ([`Tb::is_shell`]) that keeps its place, pages and count; seen again, it is
    /// translated anew, in full (optimized, compiled) once the count is spent.
    pub warmup: u32,
    pub key: TbKey,
    /// Linear page number of the first byte (links stay within it).
    pub linear_page: u64,
    /// Up to two direct successors (the two sides of a conditional branch).
    pub links: [Option<Link>; 2],
    /// Physical page numbers (address >> 12) holding its guest code: the first page,
    /// and the second when the code crosses a page boundary.
    pub pages: [Option<u64>; 2],
    /// The page offsets (first and last byte) the code spans on each of `pages`.
    pub spans: [(u16, u16); 2],
    /// The IR, for the interpreter: only for blocks the JIT did not compile (the
    /// IR of a compiled block is dropped, its code lives as long as the block).
    pub code: Option<Prepared>,
}

impl Tb {
    /// The code chunks ([`CodeWatch::chunks`]) the block holds on page `pfn`.
    pub fn chunks_on(&self, pfn: u64) -> u64 {
        let mut c = 0;
        for (p, &(first, last)) in self.pages.iter().zip(&self.spans) {
            if *p == Some(pfn) {
                c |= CodeWatch::chunks(u64::from(first), u64::from(last));
            }
        }
        c
    }

    /// Whether the block's code on page `pfn` overlaps page offsets `first..=last`.
    pub fn overlaps(&self, pfn: u64, first: u64, last: u64) -> bool {
        self.pages
            .iter()
            .zip(&self.spans)
            .any(|(p, &(a, b))| *p == Some(pfn) && u64::from(a) <= last && first <= u64::from(b))
    }

    /// The linked successor for an exit to `pc`, if one was recorded.
    pub fn link_to(&self, pc: u64) -> Option<TbId> {
        self.links
            .iter()
            .flatten()
            .find(|l| l.pc == pc)
            .map(|l| l.target)
    }

    /// Number of IR ops held (the cache's size measure for interpreted blocks).
    fn ops(&self) -> usize {
        self.code.as_ref().map_or(0, |c| c.block.ops.len())
    }

    /// A block whose IR went after its interpreted runs ([`Tb::warmup`]): to be
    /// translated again before it runs.
    pub fn is_shell(&self) -> bool {
        self.code.is_none() && self.jit.is_none()
    }
}

/// The compiled code of block `id` in `slots`, if it lives and is compiled.
fn jit_of(slots: &[Slot], id: TbId) -> Option<&JitBlock> {
    let slot = slots.get(id.index as usize)?;
    if slot.gen != id.gen {
        return None;
    }
    slot.tb.as_ref()?.jit.as_ref()
}

#[derive(Debug, Default)]
#[repr(C)]
struct Slot {
    gen: u32,
    tb: Option<Tb>,
}

/// Cache limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most blocks held before a flush.
    pub blocks: usize,
    /// Most IR ops held (all interpreted blocks together) before a flush.
    pub ops: usize,
}

impl Default for Limits {
    /// 65,536 blocks (~1.4 KiB of host code each: ~90 MiB of code at most; a Linux
    /// boot translates ~52,000 distinct blocks and so never flushes). Compiled
    /// blocks keep no IR, so the ops limit only bounds interpreted blocks. Peak RSS
    /// of a Linux boot stays below QEMU's (228 vs 231 MiB here).
    fn default() -> Limits {
        Limits {
            blocks: 1 << 16,
            ops: 1 << 20,
        }
    }
}

/// Counters for statistics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Blocks inserted.
    pub inserted: u64,
    /// Blocks dropped because their code pages were written.
    pub invalidated: u64,
    /// Whole-cache flushes (full cache, state replaced).
    pub flushes: u64,
    /// Blocks compiled by the JIT.
    pub jit_compiled: u64,
    /// Of those, compiled on the background compiler.
    pub jit_background: u64,
    /// Blocks the JIT could not compile (they run in the interpreter).
    pub jit_failed: u64,
}

/// The block cache of one vCPU.
#[derive(Debug, Default)]
pub struct BlockCache {
    slots: Vec<Slot>,
    free: Vec<u32>,
    map: FxMap<TbKey, TbId>,
    /// Physical page → the blocks with code on it.
    pages: FxMap<u64, Vec<TbId>>,
    len: usize,
    ops: usize,
    limits: Limits,
    /// Host code of the blocks (JIT backend).
    pub jit: JitCache<X86Cpu>,
    pub stats: CacheStats,
    /// The background compiler, when blocks compile off the vCPU thread
    /// ([`BlockCache::compile_in_background`]).
    compiler: Option<Compiler>,
}

impl BlockCache {
    pub fn new(limits: Limits) -> BlockCache {
        BlockCache {
            limits,
            ..BlockCache::default()
        }
    }

    /// Number of blocks held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// IR ops held (by interpreted blocks).
    pub fn ops_held(&self) -> usize {
        self.ops
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Flushes everything if a block of `ops` IR ops would not fit. Called before
    /// compiling a block (so that the insertion that follows does not flush the code
    /// just compiled), and by [`BlockCache::insert`].
    pub fn make_room(&mut self, ops: usize, watch: &mut CodeWatch) {
        if self.len + 1 > self.limits.blocks || self.ops + ops > self.limits.ops {
            log::debug!(target: "vireo::tcg", "block cache full ({} blocks, {} ops): flush",
                self.len, self.ops);
            self.flush(watch);
        }
    }

    /// Compiles `block` with the JIT for a block about to be inserted. When the code
    /// buffer is full the whole cache is flushed first (as when it holds too many
    /// blocks). `None` if the JIT cannot compile it: it runs in the interpreter.
    pub fn compile(
        &mut self,
        block: &vireo_core::ir::Block,
        watch: &mut CodeWatch,
    ) -> Option<JitBlock> {
        let r = match self.jit.compile(block) {
            Err(JitError::Full { .. }) => {
                self.flush_full_code(watch);
                self.jit.compile(block)
            }
            r => r,
        };
        match r {
            Ok(b) => {
                self.stats.jit_compiled += 1;
                Some(b)
            }
            Err(e) => {
                log::debug!(target: "vireo::tcg", "block {:#x} stays interpreted: {e}", block.pc);
                self.stats.jit_failed += 1;
                None
            }
        }
    }

    /// Compiles blocks on a thread of their own from now on (`true`), or in place.
    pub fn compile_in_background(&mut self, on: bool) -> std::io::Result<()> {
        self.compiler = if on { Some(Compiler::spawn()?) } else { None };
        Ok(())
    }

    /// Whether the background compiler takes another block now (there is one, and
    /// it has fewer than [`crate::compiler::MAX_PENDING`] in hand).
    pub fn compiles_in_background(&self) -> bool {
        self.compiler
            .as_ref()
            .is_some_and(|c| c.pending() < crate::compiler::MAX_PENDING)
    }

    /// Whether there is a background compiler (busy or not).
    pub fn has_background_compiler(&self) -> bool {
        self.compiler.is_some()
    }

    /// Whether compiled blocks wait to be installed ([`BlockCache::poll_compiled`]).
    pub fn compiles_pending(&self) -> bool {
        self.compiler.as_ref().is_some_and(|c| c.pending() > 0)
    }

    /// Hands interpreted block `id` (`block` its IR as translated) to the background
    /// compiler. `false` if there is none (any more): the block stays interpreted.
    pub fn compile_later(&mut self, id: TbId, block: vireo_core::ir::Block) -> bool {
        let Some(c) = self.compiler.as_mut() else {
            return false;
        };
        let job = match self.jit.job(block) {
            Ok(j) => j,
            Err(e) => {
                log::debug!(target: "vireo::tcg", "block stays interpreted: {e}");
                self.stats.jit_failed += 1;
                return false;
            }
        };
        if !c.submit(id, job) {
            self.compiler = None;
            return false;
        }
        true
    }

    /// Installs the blocks the background compiler finished, each in place of its
    /// interpreted block (same id; its IR goes): from now on it runs as host code, the
    /// links it recorded to compiled blocks go on in host code, and a compiled block
    /// the run loop linked to it is linked in host code when the run loop follows that
    /// link ([`BlockCache::link_compiled`]). A block dropped since (code written, cache
    /// flushed) is left out; one the JIT refused stays interpreted.
    pub fn poll_compiled(&mut self, watch: &mut CodeWatch) {
        while let Some((id, r, _ir)) = self.compiler.as_mut().and_then(|c| c.try_done()) {
            let Some(tb) = self.get(id).filter(|t| t.jit.is_none()) else {
                continue;
            };
            let (key, page, single) = (tb.key, tb.linear_page, tb.pages[1].is_none());
            let jit = match r.and_then(|done| self.jit.install(done)) {
                Ok(j) => j,
                Err(JitError::Full { .. }) => {
                    self.flush_full_code(watch);
                    continue;
                }
                Err(JitError::Stale) => continue,
                Err(e) => {
                    log::debug!(target: "vireo::tcg", "block {:#x} stays interpreted: {e}", key.pc);
                    self.stats.jit_failed += 1;
                    continue;
                }
            };
            self.stats.jit_compiled += 1;
            self.stats.jit_background += 1;
            self.name_in_perf_map(&jit, key);
            self.jit.set_tag(&jit, id.to_tag());
            self.jit.set_page(&jit, page, single);
            let Some(tb) = self.get_mut(id) else {
                continue;
            };
            let held = tb.ops();
            tb.code = None;
            tb.jit = Some(jit);
            let links = tb.links;
            self.ops -= held;
            for l in links.into_iter().flatten() {
                self.link_compiled(id, l.pc, l.target);
            }
        }
    }

    /// The JIT's code buffer is full: everything goes (as when the cache holds too
    /// many blocks).
    fn flush_full_code(&mut self, watch: &mut CodeWatch) {
        log::debug!(target: "vireo::tcg", "JIT code buffer full ({} bytes): flush",
            self.jit.bytes_used());
        self.flush(watch);
    }

    /// Names compiled block `jit` (the block at `key`), and shared code new since the
    /// last call, in the perf map (`-perfmap`).
    pub fn name_in_perf_map(&mut self, jit: &JitBlock, key: TbKey) {
        if crate::perfmap::enabled() {
            crate::perfmap::record(jit.entry(), jit.bytes, key.cs_base, key.pc);
            if let Some((start, len)) = self.jit.take_new_shared_code() {
                crate::perfmap::record_shared(start, len);
            }
        }
    }

    /// Links `from` to `to` (at `pc`) in host code when both are compiled (a link the
    /// run loop recorded while one of them was not).
    pub fn link_compiled(&mut self, from: TbId, pc: u64, to: TbId) {
        if let (Some(f), Some(t)) = (jit_of(&self.slots, from), jit_of(&self.slots, to)) {
            self.jit.link(f, pc, t);
        }
    }

    /// The block for `key`, if translated.
    pub fn lookup(&self, key: &TbKey) -> Option<TbId> {
        self.map.get(key).copied()
    }

    /// The block `id` names, unless it was dropped since.
    pub fn get(&self, id: TbId) -> Option<&Tb> {
        let slot = self.slots.get(id.index as usize)?;
        if slot.gen == id.gen {
            slot.tb.as_ref()
        } else {
            None
        }
    }

    fn get_mut(&mut self, id: TbId) -> Option<&mut Tb> {
        let slot = self.slots.get_mut(id.index as usize)?;
        if slot.gen == id.gen {
            slot.tb.as_mut()
        } else {
            None
        }
    }

    /// Adds `tb` (replacing a block with the same key), watching its code pages.
    /// Flushes everything first when the cache is full.
    pub fn insert(&mut self, tb: Tb, watch: &mut CodeWatch) -> TbId {
        self.make_room(tb.ops(), watch);
        if let Some(old) = self.map.get(&tb.key).copied() {
            self.remove(old, watch);
        }
        let index = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(Slot::default());
                (self.slots.len() - 1) as u32
            }
        };
        let id = TbId {
            index,
            gen: self.slots[index as usize].gen,
        };
        // (Both pages may be the same physical page, mapped twice.)
        let second = tb.pages[1].filter(|&p| Some(p) != tb.pages[0]);
        for pfn in [tb.pages[0], second].into_iter().flatten() {
            self.pages.entry(pfn).or_default().push(id);
            watch.watch(pfn, tb.chunks_on(pfn));
        }
        self.map.insert(tb.key, id);
        self.len += 1;
        self.ops += tb.ops();
        self.stats.inserted += 1;
        if let Some(j) = &tb.jit {
            self.jit.set_tag(j, id.to_tag());
            self.jit.set_page(j, tb.linear_page, tb.pages[1].is_none());
        }
        self.slots[index as usize].tb = Some(tb);
        id
    }

    /// After an interpreted run of warming block `id` ([`Tb::warmup`]): one run less
    /// to go, and its IR dropped (the shell stays). Nothing for other blocks.
    pub fn cool(&mut self, id: TbId) {
        let Some(slot) = self.slots.get_mut(id.index as usize) else {
            return;
        };
        let Some(tb) = slot
            .tb
            .as_mut()
            .filter(|t| slot.gen == id.gen && t.warmup > 0)
        else {
            return;
        };
        self.ops -= tb.ops();
        tb.code = None;
        tb.warmup -= 1;
    }

    /// Records that `from` continues at `pc` with block `to` (at most two links per
    /// block; a third replaces the older).
    pub fn link(&mut self, from: TbId, pc: u64, to: TbId) {
        // Compiled code goes straight on, too.
        if let (Some(f), Some(t)) = (jit_of(&self.slots, from), jit_of(&self.slots, to)) {
            self.jit.link(f, pc, t);
        }
        if let Some(tb) = self.get_mut(from) {
            let link = Some(Link { pc, target: to });
            match tb.links {
                [None, _] => tb.links[0] = link,
                [Some(_), None] => tb.links[1] = link,
                [Some(_), Some(_)] => tb.links = [tb.links[1], link],
            }
        }
    }

    /// Registers block `id` (if compiled) as the target of indirect exits, and of
    /// jumps no link serves, to `key` (the key's guard is the lookup epoch, which
    /// also vouches for a second code page).
    pub fn set_indirect(&mut self, id: TbId, key: vireo_core::exec::IndirectKey) {
        let Some(slot) = self.slots.get(id.index as usize) else {
            return;
        };
        if slot.gen != id.gen {
            return;
        }
        if let Some(tb) = &slot.tb {
            if let Some(j) = &tb.jit {
                self.jit.set_indirect(key, j);
            }
        }
    }

    /// Drops one block: out of the map and the page index; pages left without blocks
    /// are no longer watched.
    fn remove(&mut self, id: TbId, watch: &mut CodeWatch) {
        let Some(slot) = self.slots.get_mut(id.index as usize) else {
            return;
        };
        if slot.gen != id.gen {
            return;
        }
        let Some(tb) = slot.tb.take() else {
            return;
        };
        slot.gen = slot.gen.wrapping_add(1);
        if let Some(j) = &tb.jit {
            self.jit.kill(j);
        }
        self.free.push(id.index);
        self.len -= 1;
        self.ops -= tb.ops();
        if self.map.get(&tb.key) == Some(&id) {
            self.map.remove(&tb.key);
        }
        for pfn in tb.pages.iter().flatten() {
            if let Some(list) = self.pages.get_mut(pfn) {
                list.retain(|x| *x != id);
                if list.is_empty() {
                    self.pages.remove(pfn);
                    watch.unwatch(*pfn);
                }
            }
        }
    }

    /// Drops every block with code on physical page `pfn` (it was written).
    pub fn invalidate_page(&mut self, pfn: u64, watch: &mut CodeWatch) {
        let Some(ids) = self.pages.remove(&pfn) else {
            watch.unwatch(pfn);
            return;
        };
        for id in ids {
            self.stats.invalidated += 1;
            self.remove(id, watch);
        }
        watch.unwatch(pfn);
    }

    /// Drops the blocks whose code overlaps physical `[pa, pa+len)` (within one
    /// page: code the guest wrote); the page's other blocks stay, and the page's
    /// code chunks are those of the blocks left.
    pub fn invalidate_bytes(&mut self, pa: u64, len: u64, watch: &mut CodeWatch) {
        let pfn = pa >> 12;
        let (first, last) = (pa & 0xfff, ((pa & 0xfff) + len.max(1) - 1).min(0xfff));
        let Some(ids) = self.pages.get(&pfn) else {
            watch.unwatch(pfn);
            return;
        };
        let hit: Vec<TbId> = ids
            .iter()
            .copied()
            .filter(|&id| self.get(id).is_none_or(|tb| tb.overlaps(pfn, first, last)))
            .collect();
        for id in hit {
            self.stats.invalidated += 1;
            self.remove(id, watch);
        }
        if let Some(ids) = self.pages.get(&pfn) {
            let chunks = ids
                .iter()
                .filter_map(|&id| self.get(id))
                .fold(0, |c, tb| c | tb.chunks_on(pfn));
            watch.set_chunks(pfn, chunks);
        }
    }

    /// Drops every block with code in physical `[start, start+len)`.
    pub fn invalidate_range(&mut self, start: u64, len: u64, watch: &mut CodeWatch) {
        if len == 0 {
            return;
        }
        let (first, last) = (start >> 12, start.saturating_add(len - 1) >> 12);
        if last - first > self.pages.len() as u64 {
            let hit: Vec<u64> = self
                .pages
                .keys()
                .copied()
                .filter(|p| (first..=last).contains(p))
                .collect();
            for p in hit {
                self.invalidate_page(p, watch);
            }
        } else {
            for p in first..=last {
                if self.pages.contains_key(&p) {
                    self.invalidate_page(p, watch);
                }
            }
        }
    }

    /// Drops everything.
    pub fn flush(&mut self, watch: &mut CodeWatch) {
        for pfn in self.pages.keys() {
            watch.unwatch(*pfn);
        }
        self.pages.clear();
        self.map.clear();
        for (i, slot) in self.slots.iter_mut().enumerate() {
            if slot.tb.take().is_some() {
                slot.gen = slot.gen.wrapping_add(1);
                self.free.push(i as u32);
            }
        }
        self.len = 0;
        self.ops = 0;
        self.jit.flush();
        self.stats.flushes += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vireo_core::ir::{Builder, ExitKind};

    fn tb(phys: u64, pages: [Option<u64>; 2], nops: usize) -> Tb {
        let mut b = Builder::new(phys);
        for _ in 0..nops {
            b.konst(0);
        }
        b.exit(ExitKind::Indirect);
        Tb {
            key: TbKey {
                phys,
                pc: phys,
                cs_base: 0,
                mode: 0,
            },
            code: Some(Prepared::new(b.finish())),
            jit: None,
            spans: [((phys & 0xfff) as u16, 0xfff), (0, 0xfff)],
            pages,
            linear_page: phys >> 12,
            links: [None; 2],
            warmup: 0,
        }
    }

    /// Polls until the background compiler has nothing in hand (or a minute passed).
    fn drain(c: &mut BlockCache, w: &mut CodeWatch) {
        let t0 = std::time::Instant::now();
        while c.compiles_pending() {
            assert!(
                t0.elapsed() < std::time::Duration::from_secs(60),
                "compiler stuck"
            );
            c.poll_compiled(w);
            std::thread::yield_now();
        }
    }

    #[test]
    fn background_compiles_replace_the_interpreted_block_unless_it_went() {
        let mut w = CodeWatch::default();
        let mut c = BlockCache::new(Limits::default());
        c.compile_in_background(true).unwrap();
        let block = |t: &Tb| t.code.as_ref().unwrap().block.clone();
        // Installed in place: the same block, compiled, its IR gone.
        let t = tb(0x1000, [Some(1), None], 3);
        let (key, b) = (t.key, block(&t));
        let a = c.insert(t, &mut w);
        assert!(c.compile_later(a, b));
        drain(&mut c, &mut w);
        assert_eq!(c.lookup(&key), Some(a));
        let done = c.get(a).unwrap();
        assert!(done.jit.is_some() && done.code.is_none() && done.warmup == 0);
        assert_eq!((c.stats.jit_compiled, c.len(), c.ops_held()), (1, 1, 0));
        assert!(w.is_watched(1));
        // Its code written before the result came: nothing installed.
        let t = tb(0x5000, [Some(5), None], 3);
        let (key, b) = (t.key, block(&t));
        let d = c.insert(t, &mut w);
        assert!(c.compile_later(d, b));
        c.invalidate_page(5, &mut w);
        drain(&mut c, &mut w);
        assert!(c.lookup(&key).is_none() && !w.is_watched(5));
        assert_eq!(c.stats.jit_compiled, 1);
        // The cache flushed meanwhile: the code (for cells gone) is refused.
        let t = tb(0x7000, [Some(7), None], 3);
        let b = block(&t);
        let e = c.insert(t, &mut w);
        assert!(c.compile_later(e, b));
        c.flush(&mut w);
        drain(&mut c, &mut w);
        assert!(c.is_empty());
        assert_eq!(c.stats.jit_compiled, 1);
        // Off: nothing is handed over.
        c.compile_in_background(false).unwrap();
        let t = tb(0x9000, [Some(9), None], 3);
        let b = block(&t);
        let f = c.insert(t, &mut w);
        assert!(!c.compiles_in_background() && !c.compile_later(f, b));
    }

    #[test]
    fn insert_lookup_invalidate() {
        let mut w = CodeWatch::default();
        let mut c = BlockCache::new(Limits::default());
        let a = c.insert(tb(0x1000, [Some(1), None], 1), &mut w);
        let b = c.insert(tb(0x1ff0, [Some(1), Some(2)], 1), &mut w);
        let d = c.insert(tb(0x5000, [Some(5), None], 1), &mut w);
        assert_eq!(c.len(), 3);
        assert!(w.is_watched(1) && w.is_watched(2) && w.is_watched(5));
        assert_eq!(c.lookup(&c.get(b).unwrap().key), Some(b));
        c.link(a, 0x1ff0, b);
        assert_eq!(c.get(a).unwrap().link_to(0x1ff0), Some(b));

        // A write to page 2 drops the block that crosses into it, and only it.
        c.invalidate_page(2, &mut w);
        assert!(c.get(b).is_none());
        assert!(c.get(a).is_some() && c.get(d).is_some());
        assert!(!w.is_watched(2) && w.is_watched(1));
        // The link now names a dead generation.
        let stale = c.get(a).unwrap().link_to(0x1ff0).unwrap();
        assert!(c.get(stale).is_none());
        // The slot is reused with a new generation.
        let e = c.insert(tb(0x7000, [Some(7), None], 1), &mut w);
        assert!(c.get(e).is_some() && c.get(stale).is_none());

        c.invalidate_range(0x1000, 0x10, &mut w);
        assert!(c.get(a).is_none() && !w.is_watched(1));
        c.flush(&mut w);
        assert!(c.is_empty() && !w.is_watched(5) && !w.is_watched(7));
        assert_eq!(c.stats.invalidated, 2);
    }

    #[test]
    fn code_writes_drop_the_blocks_they_reach() {
        let mut w = CodeWatch::default();
        let mut c = BlockCache::new(Limits::default());
        let span = |mut t: Tb, first: u16, last: u16| {
            t.spans[0] = (first, last);
            t
        };
        let a = c.insert(span(tb(0x1100, [Some(1), None], 1), 0x100, 0x11f), &mut w);
        let b = c.insert(span(tb(0x1400, [Some(1), None], 1), 0x400, 0x40f), &mut w);
        let x = c.insert(tb(0x1ff0, [Some(1), Some(2)], 1), &mut w);
        // Beside the code: no block reached (the page stays watched).
        c.invalidate_bytes(0x1200, 4, &mut w);
        assert!(c.get(a).is_some() && c.get(b).is_some() && c.get(x).is_some());
        assert!(!w.note_write(0x1200, 4) && w.note_write(0x1404, 1));
        w.take_dirty();
        // Into `b` (its last byte): only `b` goes; its chunk is no longer code.
        c.invalidate_bytes(0x140e, 4, &mut w);
        assert!(c.get(b).is_none() && c.get(a).is_some() && c.get(x).is_some());
        assert!(!w.note_write(0x1404, 1) && w.note_write(0x1110, 1));
        // The block crossing into page 2 is reached from either page.
        c.invalidate_bytes(0x2000, 1, &mut w);
        assert!(c.get(x).is_none() && !w.is_watched(2) && w.is_watched(1));
        c.invalidate_bytes(0x1100, 0x100, &mut w);
        assert!(c.is_empty() && !w.is_watched(1));
        assert_eq!(c.stats.invalidated, 3);
    }

    #[test]
    fn same_key_replaces_and_limits_flush() {
        let mut w = CodeWatch::default();
        let mut c = BlockCache::new(Limits { blocks: 3, ops: 50 });
        let a = c.insert(tb(0x1000, [Some(1), None], 1), &mut w);
        let a2 = c.insert(tb(0x1000, [Some(1), None], 1), &mut w);
        assert!(c.get(a).is_none() && c.get(a2).is_some());
        assert_eq!(c.len(), 1);
        c.insert(tb(0x2000, [Some(2), None], 1), &mut w);
        c.insert(tb(0x3000, [Some(3), None], 1), &mut w);
        c.insert(tb(0x4000, [Some(4), None], 1), &mut w);
        assert_eq!(c.stats.flushes, 1);
        assert_eq!(c.len(), 1);
        assert!(!w.is_watched(2) && w.is_watched(4));
        // Too many ops flushes as well.
        c.insert(tb(0x5000, [Some(5), None], 60), &mut w);
        assert_eq!(c.stats.flushes, 2);
    }
}
