//! vireo's x86-64 JIT: IR blocks compiled to host code with `dynasmrt`.
//!
//! v0 is a template compiler: every temporary lives in a slot of a temp area (no
//! register allocation), guest globals that the environment declares plain `u64`
//! fields ([`DirectGlobals`]) are read and written in place, everything else (other
//! globals, memory, helpers, instruction boundaries unless inlined) goes through
//! `extern "C"` trampolines monomorphized for the environment type (`tramp`). The
//! semantics are the interpreter's (`vireo-interp`), checked by differential tests.
//!
//! A [`JitCache`] owns the executable memory: [`JitCache::compile`] returns a
//! [`JitBlock`] that stays valid until [`JitCache::flush`]; [`JitCache::run`] runs it
//! and turns its return code into a [`BlockOutcome`]. See `codegen` for the frame
//! layout and calling convention.

#[cfg(not(target_arch = "x86_64"))]
compile_error!("vireo-jit generates x86-64 code: build it on an x86-64 host");

mod analysis;
mod codegen;
mod codemem;
mod gate;
mod groups;
pub use codemem::set_anonymous as set_anonymous_code;
pub use gate::{Gate, FLAGS as GATE_FLAGS};

mod job;
pub use job::{compile_job, lower_thread_priority, CompileJob, CompileScratch, CompiledJob};
mod tramp;

#[cfg(test)]
mod tests;

use std::marker::PhantomData;
use vireo_core::exec::{BlockOutcome, DirectGlobals, Fault, GuestEnv};
use vireo_core::ir::{Block, ExitKind};

/// Why a block could not be compiled.
#[derive(Debug, thiserror::Error)]
pub enum JitError {
    /// The code memory is full: flush the cache and compile again.
    #[error("JIT code buffer full ({used} of {limit} bytes)")]
    Full { used: usize, limit: usize },
    /// Something the JIT does not compile (the block runs in the interpreter).
    #[error("JIT: unsupported: {0}")]
    Unsupported(String),
    /// The assembler rejected the code.
    #[error("JIT: assembler: {0}")]
    Asm(String),
    /// Mapping or protecting code memory failed.
    #[error("JIT: code memory: {0}")]
    Memory(#[from] std::io::Error),
    /// Code compiled for a generation flushed since, or for another cache
    /// ([`JitCache::install`]).
    #[error("JIT: compiled for a flushed cache")]
    Stale,
}

/// Size of one chunk of code memory (a larger block gets a chunk of its own).
const CHUNK: usize = 1 << 20;

/// Alignment of a block's chain entry in code memory.
const ENTRY_ALIGN: usize = 64;

/// Default limit of code memory per cache.
pub const DEFAULT_LIMIT: usize = 128 << 20;

/// A compiled block: where its code is, and its [`Cell`] (in this order: what
/// running it reads first).
#[derive(Debug)]
#[repr(C)]
pub struct JitBlock {
    /// Entry address (inside a chunk of the cache that compiled it).
    entry: usize,
    /// The cache generation it was compiled in.
    gen: u64,
    /// Its cell (in the cache's arena, alive until the next flush).
    cell: *mut Cell,
    /// The `Jump` targets its chain slots serve (`cell.slots[k]`).
    slot_targets: [Option<u64>; SLOTS],
    /// Slots whose jump is to another page: they follow their link only while the
    /// environment's indirect guard is the one it was made under (`cell.guards[k]`).
    guarded: [bool; SLOTS],
    /// Bytes of host code.
    pub bytes: usize,
}

// SAFETY: `cell` is only dereferenced by the `JitCache` that made it (through
// `&mut self` or while running code under `&self`), never through a shared `JitBlock`.
unsafe impl Send for JitBlock {}

/// What generated code knows about a block besides its code: where each chain slot
/// leads (the chain entry of the block linked, else the block's own code that looks
/// the target up), for slots of jumps to another page the indirect guard they were
/// linked under, where to enter the block when chaining (0 once it is dropped), the
/// target its indirect exits last found (their inline cache), a tag its owner gives
/// it (the block cache's id) and the page it may be linked within
/// ([`JitCache::set_page`]). Aligned to a cache line: the slots and guards, which
/// every chained exit reads, fill the first.
#[repr(C, align(64))]
#[derive(Debug)]
pub struct Cell {
    /// Where the `Jump` exits of slot `k` go (`jmp [cell + slot]`): the chain entry
    /// of the block linked, or `miss[k]` while none is. Every link is recorded
    /// (`JitCache::incoming`), so that dropping the block it leads to sets the slot
    /// back to `miss[k]` (no exit loads the target's cell to see whether it lives).
    slots: [usize; SLOTS],
    /// For a slot that checks the guard (`JitBlock::guarded`): the environment's
    /// indirect guard under which its link holds (`u64::MAX`, which no table entry
    /// has, until linked).
    guards: [u64; SLOTS],
    entry: usize,
    /// The block's indirect exits' cache: the chain entry of the target its last
    /// table hit found for PC `ic_pc`, CS base `ic_cs` under guard `ic_guard` (the
    /// same key as the table's; `u64::MAX`, which no table entry has, until then,
    /// and once that target is dropped: its link is recorded as a slot's is).
    ic_pc: u64,
    ic_cs: u64,
    ic_guard: u64,
    ic_entry: usize,
    tag: u64,
    /// The block's linear code page ([`NO_PAGE`] until set).
    page: u64,
    /// Nonzero if blocks of the same page may link to this one.
    linkable: u64,
    /// Per slot its exits use, the block's code for an unlinked slot: it stores
    /// the target PC and goes to the table lookup naming the slot (0: no exit
    /// jumps through the slot).
    miss: [usize; SLOTS],
}

// The slots and their guards fill the cell's first cache line.
const _: () = assert!(std::mem::offset_of!(Cell, entry) == 64);

/// Where a cell holds its inline cache's entry, in bytes (see [`JitCache::kill`]).
const IC_ENTRY_IN_CELL: usize = std::mem::offset_of!(Cell, ic_entry);

/// From a chain slot to its `miss` address, in bytes.
const MISS_FROM_SLOT: usize = std::mem::offset_of!(Cell, miss) - std::mem::offset_of!(Cell, slots);

/// Chain slots per block: its first distinct `Jump` targets (a block may exit to a
/// few: the end of a conditional branch and the side exits of those it went on
/// past).
pub const SLOTS: usize = 4;

/// The page of a cell its owner gave none.
const NO_PAGE: u64 = u64::MAX;

/// The cell empty chain slots and indirect-table entries name (never a block's:
/// its entry is 0), so that generated code needs no null test of a cell address.
static NULL_CELL: Cell = Cell {
    slots: [0; SLOTS],
    guards: [u64::MAX; SLOTS],
    entry: 0,
    ic_pc: u64::MAX,
    ic_cs: u64::MAX,
    ic_guard: u64::MAX,
    // (No block runs as the null cell: its own cache is never read.)
    ic_entry: 0,
    tag: 0,
    page: NO_PAGE,
    linkable: 0,
    miss: [0; SLOTS],
};

/// The address of [`NULL_CELL`].
fn null_cell() -> usize {
    (&raw const NULL_CELL) as usize
}

/// Cells per arena chunk.
const CELLS: usize = 4096;

/// An entry of the indirect-exit table: the block (cell) registered for a PC, code
/// segment base and guard value.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub(crate) struct IndEntry {
    pc: u64,
    cs_base: u64,
    guard: u64,
    cell: usize,
}

/// An empty indirect-table entry (matches no key; its cell is [`NULL_CELL`]).
fn ind_empty() -> IndEntry {
    IndEntry {
        pc: u64::MAX,
        cs_base: u64::MAX,
        guard: u64::MAX,
        cell: null_cell(),
    }
}

/// Entries of the indirect-exit table (a power of two): 2,048 (64 KiB), in sets of
/// [`IND_WAYS`]. Direct-mapped (one entry per set), returns in a shell's interpreter
/// loop collided so often that pairs of targets evicted each other on every
/// iteration of the guest's loop; two ways keep both, four keep a user return
/// target that shares its set with hot kernel blocks (with two, in some boots, it
/// went back to the run loop on every pass: kernel addresses move with KASLR;
/// 8,192 entries did no better than 2,048 with four ways). (With 1,024 direct-mapped
/// entries ~57 exits per loop iteration went back to the run loop, 2,048: a third of
/// that; 4,096: a fifth, but a table of 128 KiB, which the allocator maps apart, made
/// unrelated loops ~30% slower on this host; a Fibonacci hash of the low 32 bits did
/// worse than this one.)
pub(crate) const IND_SIZE: usize = 2048;

/// Entries per set of the indirect-exit table: a PC's entry is in its set
/// ([`ind_set`]), the most recently registered first.
pub(crate) const IND_WAYS: usize = 4;

/// Sets of the indirect-exit table.
pub(crate) const IND_SETS: usize = IND_SIZE / IND_WAYS;

/// The set of `pc` in the indirect-exit table (generated code computes the same).
pub(crate) fn ind_set(pc: u64) -> usize {
    ((pc ^ (pc >> 10)) as usize) & (IND_SETS - 1)
}

/// The code a cache's blocks share: its chunk (kept mapped while the cache lives) and
/// the addresses of the entry, the return and the table lookup (0: none).
struct SharedCode {
    chunk: codemem::CodeChunk,
    /// Where the code starts and its length (for `-perfmap`).
    start: usize,
    len: usize,
    /// Not yet handed out by [`JitCache::take_new_shared_code`].
    new: bool,
    enter: usize,
    leave: usize,
    lookup: usize,
}

/// The links made to each cell (see `JitCache::incoming`): per cell, the addresses
/// linked to it, each once (a slot or cache may be linked to it again and again:
/// an inline cache refilled whenever the guard moves, in an idle Linux at every
/// timer tick).
#[derive(Default)]
struct Incoming {
    by_cell: vireo_core::fxhash::FxMap<usize, Vec<usize>>,
    known: std::collections::HashSet<
        (usize, usize),
        std::hash::BuildHasherDefault<vireo_core::fxhash::FxHasher>,
    >,
}

/// A chunk of cells: boxed, so that cells never move while the chunk lives.
struct CellChunk(Box<[Cell]>);

/// The executable memory of compiled blocks for environment type `E`.
pub struct JitCache<E> {
    chunks: Vec<codemem::CodeChunk>,
    /// Chunks of earlier generations kept mapped (see [`JitCache::keep_flushed`]).
    retired: Vec<codemem::CodeChunk>,
    /// A flush keeps the old code mapped instead of unmapping it, so that no address
    /// ever names two blocks (for `perf`, whose map of `/tmp/perf-<pid>.map` keeps the
    /// first symbol of an address; on with anonymous code memory, i.e. `-perfmap`).
    /// The memory of flushed code is then never given back.
    pub keep_flushed: bool,
    /// The cells of this generation's blocks (`cells_used` in the last chunk).
    cells: Vec<CellChunk>,
    cells_used: usize,
    /// Most temporaries of a block compiled (a chain runs any of them on one area).
    max_temps: usize,
    /// Blocks by PC for indirect exits (boxed: generated code holds its address).
    ind: Box<[IndEntry]>,
    /// The code blocks share (`codegen::shared_stubs`) in a chunk of its own, made
    /// with the first block and kept across flushes (the table stays put).
    stubs: Option<SharedCode>,
    /// The offsets of the environment's stop request and chain guards (asked once).
    guard_offsets: std::cell::OnceCell<Box<[usize]>>,
    gen: u64,
    used: usize,
    limit: usize,
    /// Blocks compiled since creation.
    pub compiled: u64,
    /// Count blocks entered straight from another ([`JitCache::set_count_chains`]).
    count_chains: bool,
    /// Keep a copy of the last block's code in `last_code` (`-d out_asm`).
    pub keep_code: bool,
    pub last_code: Vec<u8>,
    /// Code buffers of placed blocks, for jobs to compile into ([`JitCache::job`]): a
    /// compiling thread then never frees memory this one allocated nor the other way
    /// round (each such free took the allocator's lock of the other thread's arena).
    spare_code: Vec<Vec<u8>>,
    /// This cache among all (a job's code is installed only where its cell is).
    owner: u64,
    /// Buffers one compilation leaves to the next.
    scratch: codegen::Scratch,
    /// Per cell, the addresses of the chain slots linked to it (some may lead
    /// elsewhere since), and plus 1 those of the inline caches holding it:
    /// [`JitCache::kill`] sets the slots still leading to it back to their `miss`
    /// code and voids the key of the caches still holding it. Filled by
    /// [`JitCache::link`] and, after each run, from the links the shared lookup
    /// made (`Ctx::links`).
    incoming: std::cell::RefCell<Incoming>,
    _env: PhantomData<fn(&mut E)>,
}

impl<E> std::fmt::Debug for JitCache<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JitCache")
            .field("chunks", &self.chunks.len())
            .field("gen", &self.gen)
            .field("used", &self.used)
            .field("limit", &self.limit)
            .finish()
    }
}

impl<E> Default for JitCache<E> {
    fn default() -> Self {
        JitCache::new(DEFAULT_LIMIT)
    }
}

/// Reusable per-vCPU state of runs: the temp area and the instruction count.
#[derive(Debug, Default)]
pub struct JitState {
    temps: Vec<u64>,
    /// Guest instructions started in compiled code.
    pub insns: u64,
}

impl JitState {
    pub fn new() -> JitState {
        JitState::default()
    }
}

impl JitBlock {
    /// Host address of the block's code.
    pub fn entry(&self) -> usize {
        self.entry
    }
}

impl<E> JitCache<E> {
    /// An empty cache holding at most `limit` bytes of code.
    pub fn new(limit: usize) -> JitCache<E> {
        JitCache {
            chunks: Vec::new(),
            retired: Vec::new(),
            keep_flushed: codemem::is_anonymous(),
            cells: Vec::new(),
            cells_used: CELLS,
            max_temps: 1,
            ind: vec![ind_empty(); IND_SIZE].into_boxed_slice(),
            stubs: None,
            guard_offsets: std::cell::OnceCell::new(),
            gen: 0,
            used: 0,
            limit,
            compiled: 0,
            count_chains: false,
            keep_code: false,
            last_code: Vec::new(),
            spare_code: Vec::new(),
            owner: job::new_owner(),
            scratch: codegen::Scratch::default(),
            incoming: Default::default(),
            _env: PhantomData,
        }
    }

    /// Whether runs count the blocks they enter straight from another
    /// ([`Run::chained`]): for tests and statistics; off, chaining costs one
    /// read-modify-write of memory less a block (3-4% of a shell loop). Changing it
    /// flushes the cache (the shared code counts too).
    pub fn set_count_chains(&mut self, on: bool) {
        if on != self.count_chains {
            self.flush();
            if let Some(s) = self.stubs.take() {
                if self.keep_flushed {
                    self.retired.push(s.chunk);
                }
            }
            self.count_chains = on;
        }
    }

    /// Whether runs count chained blocks ([`JitCache::set_count_chains`]).
    pub fn counts_chains(&self) -> bool {
        self.count_chains
    }

    /// Bytes of code held.
    pub fn bytes_used(&self) -> usize {
        self.used
    }

    /// Drops every block: their [`JitBlock`]s no longer run.
    pub fn flush(&mut self) {
        if self.keep_flushed {
            self.retired.append(&mut self.chunks);
        }
        self.chunks.clear();
        self.ind.fill(ind_empty());
        *self.incoming.get_mut() = Incoming::default();
        self.cells.clear();
        self.cells_used = CELLS;
        self.used = 0;
        self.gen += 1;
    }

    /// Whether `b` can run (compiled by this cache since its last flush).
    pub fn is_live(&self, b: &JitBlock) -> bool {
        b.gen == self.gen
    }

    /// A new cell (entry 0, no links: every slot names [`NULL_CELL`], tag 0).
    fn new_cell(&mut self) -> *mut Cell {
        if self.cells_used == CELLS {
            let chunk = (0..CELLS)
                .map(|_| Cell {
                    slots: [0; SLOTS],
                    guards: [u64::MAX; SLOTS],
                    entry: 0,
                    ic_pc: u64::MAX,
                    ic_cs: u64::MAX,
                    ic_guard: u64::MAX,
                    ic_entry: 0,
                    tag: 0,
                    page: NO_PAGE,
                    linkable: 0,
                    miss: [0; SLOTS],
                })
                .collect();
            self.cells.push(CellChunk(chunk));
            self.cells_used = 0;
        }
        let i = self.cells_used;
        self.cells_used += 1;
        match self.cells.last_mut() {
            Some(c) => &raw mut c.0[i],
            None => std::ptr::null_mut(),
        }
    }

    /// The cell of live block `b`.
    fn cell_mut(&mut self, b: &JitBlock) -> Option<&mut Cell> {
        if !self.is_live(b) {
            return None;
        }
        // SAFETY: `b` is live, so its cell is in a chunk of `self.cells` (dropped only
        // by `flush`, which makes `b` not live); `&mut self` excludes running code.
        unsafe { b.cell.as_mut() }
    }

    /// Gives `b` the tag [`JitCache::run`] reports when a run ends in it.
    pub fn set_tag(&mut self, b: &JitBlock, tag: u64) {
        if let Some(c) = self.cell_mut(b) {
            c.tag = tag;
        }
    }

    /// Where the code all blocks share lies (`start`, `len`), once after it was made
    /// (with the first block), for a symbol map; `None` otherwise.
    pub fn take_new_shared_code(&mut self) -> Option<(usize, usize)> {
        let s = self.stubs.as_mut().filter(|s| s.new)?;
        s.new = false;
        Some((s.start, s.len))
    }

    /// Tells generated code where `b` lies: its linear code `page`, and whether it
    /// lies on that page alone (`single`). A `Jump` exit of a block that one of its
    /// chain slots serves but finds unlinked, and that finds its target in the
    /// indirect-exit table (valid in the current state), links the slot itself when
    /// both blocks have the same page and the target lies on it alone: the
    /// conditions under which the owner links blocks ([`JitCache::link`]; the
    /// table's guard vouches for the mode). Without this, an edge whose target some
    /// other path had registered in the table would never be linked: its exits never
    /// return to the owner.
    ///
    /// A slot of a jump to another page (by PC: a target outside the 4 KiB of the
    /// block's start) is linked by any table hit, together with the guard it was
    /// found under, and followed only while the environment's guard is that one: as
    /// long as the table entry would serve the jump (QEMU looks such jumps up every
    /// time; a shell's loop made 270 of them an iteration, three quarters of its
    /// table lookups).
    pub fn set_page(&mut self, b: &JitBlock, page: u64, single: bool) {
        if let Some(c) = self.cell_mut(b) {
            c.page = page;
            c.linkable = u64::from(single);
        }
    }

    /// Lets `from` go straight on into `to` when it exits to `pc` (a `Jump` to `pc`
    /// that one of its chain slots serves); nothing otherwise. The caller vouches
    /// that `to` is the block that runs at `pc` after `from` for as long as both live.
    /// (A slot of a jump to another page is linked only by generated code, under the
    /// indirect guard its table hit was made in: see [`JitCache::set_page`].)
    pub fn link(&mut self, from: &JitBlock, pc: u64, to: &JitBlock) {
        if !self.is_live(to) {
            return;
        }
        // SAFETY: `to` is live, so its cell is in `self.cells`.
        let entry = unsafe { (*to.cell).entry };
        let slot = from.slot_targets.iter().position(|t| *t == Some(pc));
        let Some(k) = slot.filter(|&k| !from.guarded[k]) else {
            return;
        };
        if entry == 0 {
            return;
        }
        let Some(c) = self.cell_mut(from) else {
            return;
        };
        // (Linked there already: recorded then, and `to` lives.)
        if c.miss[k] == 0 || c.slots[k] == entry {
            return;
        }
        c.slots[k] = entry;
        let at = (&raw mut c.slots[k]) as usize;
        self.note_link(at, to.cell as usize);
    }

    /// Records that the chain slot at address `slot` leads to the block of `cell`.
    fn note_link(&self, slot: usize, cell: usize) {
        let mut incoming = self.incoming.borrow_mut();
        if incoming.known.insert((cell, slot)) {
            incoming.by_cell.entry(cell).or_default().push(slot);
        }
    }

    /// Lets indirect exits (`ExitKind::Indirect`) to `key` go straight into `b`
    /// (replacing what was registered in that slot). The caller vouches that `b` is
    /// the block for `key.pc` at `key.cs_base` in the state `key.guard` names.
    pub fn set_indirect(&mut self, key: vireo_core::exec::IndirectKey, b: &JitBlock) {
        if !self.is_live(b) || key.guard == u64::MAX {
            return;
        }
        let entry = IndEntry {
            pc: key.pc,
            cs_base: key.cs_base,
            guard: key.guard,
            cell: b.cell as usize,
        };
        // The new entry first, the others after it in the order they came; the
        // PC's old entry goes, else the oldest (so a PC is in one way at most: the
        // code finds the first).
        let at = ind_set(key.pc) * IND_WAYS;
        if let Some(set) = self.ind.get_mut(at..at + IND_WAYS) {
            let old = set.iter().position(|e| e.pc == key.pc);
            set[..=old.unwrap_or(IND_WAYS - 1)].rotate_right(1);
            set[0] = entry;
        }
    }

    /// Stops chaining into `b` (it is being dropped): no table hit enters it (its
    /// cell's entry is 0), every chain slot leading to it goes back to its own
    /// block's lookup, and every inline cache holding it to none.
    pub fn kill(&mut self, b: &JitBlock) {
        let Some(c) = self.cell_mut(b) else {
            return;
        };
        let entry = std::mem::take(&mut c.entry);
        let incoming = self.incoming.get_mut();
        let Some(slots) = incoming.by_cell.remove(&(b.cell as usize)) else {
            return;
        };
        for at in slots {
            incoming.known.remove(&(b.cell as usize, at));
            // SAFETY: `at` is the address of a chain slot, or plus 1 that of an
            // inline cache's entry, of a cell of this generation (`incoming` is
            // emptied by `flush`, which drops the cells); `MISS_FROM_SLOT` leads from
            // a slot to its `miss`, `IC_ENTRY_IN_CELL` back from the cache's entry to
            // its cell; `&mut self` excludes running code.
            unsafe {
                if at & 1 == 0 {
                    let p = at as *mut usize;
                    if *p == entry {
                        *p = *((at + MISS_FROM_SLOT) as *const usize);
                    }
                } else if *((at - 1) as *const usize) == entry {
                    let ic = (at - 1 - IC_ENTRY_IN_CELL) as *mut Cell;
                    (*ic).ic_pc = u64::MAX;
                    (*ic).ic_guard = u64::MAX;
                }
            }
        }
    }
}

impl<E: GuestEnv + DirectGlobals> JitCache<E> {
    /// Compiles `block` (it must pass [`Block::validate`]: the code trusts its temps
    /// and labels to be in range).
    pub fn compile(&mut self, block: &Block) -> Result<JitBlock, JitError> {
        block.validate().map_err(JitError::Unsupported)?;
        let (cell, lookup) = self.prepare()?;
        let c = codegen::compile_with::<E>(
            block,
            cell as usize,
            lookup,
            self.count_chains,
            &mut self.scratch,
        )?;
        self.finish(c, cell, block.temps)
    }

    /// A job to compile `block` on another thread ([`compile_job`]), its code to be
    /// installed here ([`JitCache::install`]).
    pub fn job(&mut self, block: Block) -> Result<CompileJob, JitError> {
        let (cell, lookup) = self.prepare()?;
        Ok(CompileJob {
            block,
            cell: cell as usize,
            lookup,
            count_chains: self.count_chains,
            owner: self.owner,
            gen: self.gen,
            out: self.spare_code.pop().unwrap_or_default(),
        })
    }

    /// Places the code of a job made by [`JitCache::job`] of this cache. A job made
    /// before a flush (its cell gone), or by another cache, is refused
    /// ([`JitError::Stale`]).
    pub fn install(&mut self, done: CompiledJob) -> Result<JitBlock, JitError> {
        if done.owner != self.owner || done.gen != self.gen {
            return Err(JitError::Stale);
        }
        self.finish(done.code, done.cell as *mut Cell, done.temps)
    }

    /// The shared code (made on first use) and a new cell, for a block about to be
    /// compiled: the cell, and whether the shared table lookup exists.
    fn prepare(&mut self) -> Result<(*mut Cell, bool), JitError> {
        let cell = self.new_cell();
        if cell.is_null() {
            return Err(JitError::Unsupported("no cell".into()));
        }
        if self.stubs.is_none() {
            let stubs = codegen::shared_stubs::<E>(self.ind.as_ptr() as usize, self.count_chains)
                .ok_or_else(|| JitError::Asm("shared code".into()))?;
            let mut chunk = codemem::CodeChunk::new(4096)?;
            let at = chunk
                .push(&stubs.code)
                .ok_or_else(|| JitError::Asm("shared code does not fit".into()))?;
            chunk.seal();
            self.stubs = Some(SharedCode {
                chunk,
                start: at,
                len: stubs.code.len(),
                new: true,
                enter: at + stubs.enter,
                leave: at + stubs.leave,
                lookup: stubs.lookup.map_or(0, |l| at + l),
            });
        }
        let lookup = self.stubs.as_ref().is_some_and(|s| s.lookup != 0);
        Ok((cell, lookup))
    }

    /// Places compiled code `c` for `cell` (this generation's, from
    /// [`JitCache::prepare`]) of a block with `temps` temporaries.
    fn finish(
        &mut self,
        c: codegen::Compiled,
        cell: *mut Cell,
        temps: u32,
    ) -> Result<JitBlock, JitError> {
        let len = c.code.len();
        if self.used + len > self.limit {
            return Err(JitError::Full {
                used: self.used,
                limit: self.limit,
            });
        }
        let fits = self
            .chunks
            .last()
            .is_some_and(|ch| ch.room() >= len + ENTRY_ALIGN);
        if !fits {
            if let Some(full) = self.chunks.last_mut() {
                full.seal();
            }
            self.chunks
                .push(codemem::CodeChunk::new((len + ENTRY_ALIGN).max(CHUNK))?);
        }
        let gen = self.gen;
        // The block's start, its chain entry (where chained blocks jump in), on a
        // fetch boundary.
        if let Some(ch) = self.chunks.last_mut() {
            ch.align(ENTRY_ALIGN);
        }
        let Some(entry) = self.chunks.last_mut().and_then(|ch| ch.push(&c.code)) else {
            return Err(JitError::Unsupported("code chunk lost".into()));
        };
        self.used += len;
        self.compiled += 1;
        if self.keep_code {
            self.last_code = c.code;
        } else if self.spare_code.len() < job::SPARE_CODE_BUFFERS {
            let mut b = c.code;
            b.clear();
            self.spare_code.push(b);
        }
        // (The temp area also holds the slots of access groups after the temps.)
        self.max_temps = self.max_temps.max(temps as usize + groups::SLOTS);
        // SAFETY: `cell` is one of this generation's cells (from `new_cell`, non-null:
        // `install` refuses a job of another generation); no code runs while
        // `&mut self` is held.
        unsafe {
            (*cell).entry = entry;
            for (k, off) in c.miss.iter().enumerate() {
                if let Some(off) = off {
                    (*cell).miss[k] = entry + off;
                    (*cell).slots[k] = entry + off;
                }
            }
        }
        Ok(JitBlock {
            entry,
            gen,
            cell,
            slot_targets: c.slot_targets,
            guarded: c.guarded,
            bytes: len,
        })
    }

    /// Runs `b` on `env`, that block only. `None` if `b` is not live (flushed since it
    /// was compiled). Instructions started are added to `state.insns`. A panic in the
    /// environment is resumed here, after the generated code has returned.
    pub fn run(&self, b: &JitBlock, env: &mut E, state: &mut JitState) -> Option<BlockOutcome> {
        self.run_chained(b, env, state, &Gate::new(), 0)
            .map(|r| r.outcome)
    }

    /// Runs `b` on `env` and, where blocks were linked ([`JitCache::link`]), the
    /// blocks after it, for as long as fewer than `limit` instructions have started
    /// and `gate`'s flags (and the environment's chain guards) are all clear (see
    /// [`Gate`]). `None` if `b` is not live.
    pub fn run_chained(
        &self,
        b: &JitBlock,
        env: &mut E,
        state: &mut JitState,
        gate: &Gate,
        limit: u64,
    ) -> Option<Run> {
        if !self.is_live(b) {
            return None;
        }
        // With the instruction hooks, generated code counts in the environment's
        // counter only and checks it against an absolute limit; it checks the stop
        // request and chain guards only after blocks that may change them, so if one
        // is already set the run stops after this block.
        let hooks = E::insn_hooks();
        let start = hooks.map(|h| {
            let count = read_u64(env, h.counter);
            let guards = self
                .guard_offsets
                .get_or_init(|| std::iter::once(h.stop).chain(E::chain_guards()).collect());
            let clear = guards.iter().all(|&o| !read_bool(env, o));
            (h.counter, count, clear)
        });
        let limit = match start {
            Some((_, count, true)) => count.saturating_add(limit),
            Some((_, count, false)) => count,
            None => limit,
        };
        gate.open(limit);
        let mut ctx = tramp::Ctx {
            env: (env as *mut E).cast::<u8>(),
            insns: 0,
            pc: 0,
            fault: None,
            panic: None,
            limit: gate.limit().as_ptr(),
            last: b.cell as usize,
            target: 0,
            chains: 0,
            tramps: tramp::table::<E>(),
            lookup: self.stubs.as_ref().map_or(0, |s| s.lookup),
            depth: 0,
            frame: 0,
            leave: self.stubs.as_ref().map_or(0, |s| s.leave),
            nlinks: 0,
            links: [[0; 2]; tramp::LINKS],
        };
        // The temp area: the generated code trusts it to hold every temp of any block
        // it may chain to, which is at most the largest block compiled; grow it lazily.
        if state.temps.len() < self.max_temps {
            state.temps.resize(self.max_temps, 0);
        }
        let enter = self.stubs.as_ref().map(|s| s.enter)?;
        type Entry = unsafe extern "C" fn(*mut tramp::Ctx, *mut u8, *mut u64, usize) -> u64;
        // SAFETY: `enter` is the shared entry in the cache's stub chunk (mapped while
        // the cache lives), which follows the System V ABI with the signature of
        // `Entry`: it builds the frame and jumps to `b.entry`; `b` is live, so that
        // points to its code in a chunk this cache still maps executable, and the
        // code returns through the shared return, which undoes the frame. It may
        // jump on through a live cell's chain slot or inline cache, which lead to
        // blocks of this generation not killed (every link is recorded, and `kill`
        // undoes those to the block it drops; a link the run could not record is
        // not made), or into the block of a cell the indirect table holds while that
        // cell's entry is nonzero: all in chunks still mapped. `ctx` (and `gate`,
        // whose limit it points to) outlive the call; `env` is
        // borrowed mutably for the call (the code and the trampolines access it only
        // as `E`, at offsets `DirectGlobals` vouches for); the temp area holds at
        // least `max_temps` slots, which covers every temp any block addresses.
        let code = unsafe {
            let f: Entry = std::mem::transmute::<usize, Entry>(enter);
            f(&mut ctx, ctx.env, state.temps.as_mut_ptr(), b.entry)
        };
        let made = (ctx.nlinks as usize).min(tramp::LINKS);
        for &[slot, cell] in &ctx.links[..made] {
            self.note_link(slot, cell);
        }
        state.insns += match start {
            Some((counter, count, _)) => read_u64(env, counter).wrapping_sub(count),
            None => ctx.insns,
        };
        if let Some(p) = ctx.panic.take() {
            std::panic::resume_unwind(p);
        }
        // SAFETY: `ctx.last` is the cell of the block that returned (set in its epilogue):
        // a cell of this generation, in `self.cells`.
        let tag = unsafe { (*(ctx.last as *const Cell)).tag };
        let outcome = match code {
            codegen::RET_FAULT => BlockOutcome::Fault {
                fault: ctx.fault.unwrap_or(Fault::new(0xff)),
                pc: ctx.pc,
            },
            codegen::RET_STOP => {
                env.set(vireo_core::ir::Global::Pc, ctx.pc);
                BlockOutcome::Stopped { pc: ctx.pc }
            }
            codegen::RET_EXIT => {
                BlockOutcome::Exit(ExitKind::Jump(env.get(vireo_core::ir::Global::Pc)))
            }
            n => BlockOutcome::Exit(codegen::exit_of(n, ctx.target)),
        };
        Some(Run {
            outcome,
            tag,
            chained: ctx.chains,
        })
    }
}

/// The `u64` at byte offset `off` of `env`, an offset [`DirectGlobals::insn_hooks`]
/// names.
fn read_u64<E: DirectGlobals>(env: &E, off: usize) -> u64 {
    // SAFETY: `DirectGlobals` vouches that the hooks' counter offset is that of a
    // `u64` inside `E` (so in bounds and aligned); `env` is borrowed for the read.
    unsafe { std::ptr::read((env as *const E).cast::<u8>().add(off).cast::<u64>()) }
}

/// The `bool` at byte offset `off` of `env`, the hooks' stop request or a chain guard.
fn read_bool<E: DirectGlobals>(env: &E, off: usize) -> bool {
    // SAFETY: `DirectGlobals` vouches that these offsets are those of `bool`s inside
    // `E`; `env` is borrowed for the read.
    unsafe { std::ptr::read((env as *const E).cast::<u8>().add(off).cast::<bool>()) }
}

/// How a [`JitCache::run_chained`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    pub outcome: BlockOutcome,
    /// The tag of the block it ended in ([`JitCache::set_tag`]).
    pub tag: u64,
    /// Blocks entered straight from the one before: counted only when the cache
    /// counts them ([`JitCache::set_count_chains`]), else 0.
    pub chained: u64,
}
