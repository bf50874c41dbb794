//! What a backend needs from the guest to run IR: the [`GuestEnv`] trait.
//!
//! Backends (the IR interpreter, the JIT) are generic over this trait; the x86
//! frontend's CPU implements it. Faults are guest exceptions raised by a load, store or
//! helper: the backend stops the block and reports the fault together with the PC of
//! the instruction that raised it (from the last [`crate::ir::Op::InsnStart`]).

use crate::ir::{ExitKind, Global, HelperId, MmuIdx, Size};

/// A guest exception raised while running IR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    pub vector: u8,
    pub error_code: Option<u32>,
    /// Faulting linear address for page faults (x86: CR2).
    pub address: Option<u64>,
}

impl Fault {
    pub fn new(vector: u8) -> Fault {
        Fault {
            vector,
            error_code: None,
            address: None,
        }
    }
    pub fn with_error(vector: u8, error_code: u32) -> Fault {
        Fault {
            vector,
            error_code: Some(error_code),
            address: None,
        }
    }
}

/// How running a block ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockOutcome {
    /// The block left through an exit op.
    Exit(ExitKind),
    /// A guest exception at the instruction starting at `pc`; guest state is as before
    /// that instruction, except for what the instruction's completed stores changed.
    Fault { fault: Fault, pc: u64 },
    /// The environment asked to stop before the instruction at `pc` (a write hit the
    /// code being run, an I/O access changed the machine): `Global::Pc` holds `pc`.
    Stopped { pc: u64 },
}

/// The guest as seen from a backend.
pub trait GuestEnv {
    fn get(&mut self, g: Global) -> u64;
    fn set(&mut self, g: Global, v: u64);
    /// Reads `size` bytes at linear address `addr`; with `write`, the access is the
    /// read of a read-modify-write and is checked (and faults) as a write.
    fn load(&mut self, addr: u64, size: Size, mmu: MmuIdx, write: bool) -> Result<u64, Fault>;
    /// Writes the low `size` bytes of `val` at linear address `addr`.
    fn store(&mut self, addr: u64, val: u64, size: Size, mmu: MmuIdx) -> Result<(), Fault>;
    /// Runs helper `h`.
    fn call(&mut self, h: HelperId, args: &[u64]) -> Result<u64, Fault>;
    /// Whether the block must stop at the next instruction boundary.
    fn stop_requested(&mut self) -> bool;
    /// Called at each instruction boundary with the instruction's PC (for precise
    /// state: helpers that fault need the PC of the current instruction).
    fn insn_start(&mut self, pc: u64);
}

/// Direct access to guest state for a JIT: which globals are plain `u64` fields of the
/// environment, and whether instruction boundaries can be handled inline. Both are
/// optional (`None`: the JIT goes through [`GuestEnv`]'s methods).
///
/// # Safety
///
/// Generated code reads and writes the environment's memory at the offsets given, from
/// the environment's base pointer (`*mut Self`). An implementation promises:
///
/// - `global_offset(g) == Some(off)`: the 8 bytes at `off` lie inside `Self` (not
///   necessarily aligned), `GuestEnv::get(g)` returns them as a little-endian `u64`
///   and `GuestEnv::set(g, v)` stores exactly `v` there, with no other effect;
/// - `insn_hooks() == Some(h)`: `h.stop` is a `bool` inside `Self` that
///   `GuestEnv::stop_requested` returns (with no other effect), and
///   `GuestEnv::insn_start(pc)` does exactly: store `pc` in the `u64` at `h.pc` and
///   add 1 (wrapping) to the `u64` at `h.counter`; the stop request is raised only
///   from inside the environment's methods (a helper, a load or store, a global's
///   access), never from elsewhere while a block runs; and nothing but those
///   methods reads `h.pc` and `h.counter` while a block runs. (Generated code then
///   writes the two lazily: the PC before each call into the environment, the
///   counter there and at the block's exits; between calls `h.pc` may hold an
///   earlier instruction's PC.)
/// - `fast_tlb() == Some(t)`: the tables described by `t` lie inside `Self`; for an
///   access of `len` bytes (1-8) at linear address `la` by MMU index `m`, let `e` be
///   entry `(la >> 12) % 2^t.index_bits` of `m`'s table: if the `u64` read tag of `e`
///   (for a load without `write`) or its write tag (for a store, or a load with
///   `write`) equals `(la + len - 1) >> 12` (wrapping), then the `len` bytes at host
///   address `la + addend` (wrapping) are readable (and, for the write tag, writable)
///   memory that stays mapped while `Self` lives, and `GuestEnv::load`/`store` of
///   that access would do nothing but read or write exactly those bytes, little
///   endian (no fault, no other effect; statistics aside);
/// - every offset in `chain_guards()` is that of a `bool` inside `Self` that only
///   `GuestEnv::call` and `get`/`set` of globals without a direct offset set (never
///   a `load` or a `store`);
/// - `indirect_guard() == Some(off)`: the `u64` at `off` is inside `Self`, and the
///   environment changes it (or sets it to `u64::MAX`) whenever the block that runs
///   at a given PC and segment base could change other than through a block exit
///   that is not `Jump` or `Indirect` (the owner of the JIT cache registers targets
///   with the value current at lookup time: `JitCache::set_indirect`).
pub unsafe trait DirectGlobals {
    /// Byte offset of global `g` from the environment's base pointer, if it is a plain
    /// `u64` field.
    fn global_offset(_g: Global) -> Option<usize> {
        None
    }
    /// An offset inside `Self` near the fields generated code accesses most (guest
    /// registers, lazy flags, the instruction hooks): a JIT may address the
    /// environment relative to it, where the shortest displacements (-128..=127)
    /// reach them. Only a hint: any value is correct.
    fn hot_offset() -> usize {
        0
    }
    /// Offsets that let generated code do `insn_start`/`stop_requested` inline.
    fn insn_hooks() -> Option<InsnHooks> {
        None
    }
    /// The environment's fast TLB, which generated code may look up inline.
    fn fast_tlb() -> Option<FastTlbLayout> {
        None
    }
    /// Offsets of `bool`s inside `Self` that must all be false for a block to go on
    /// directly into the next one (besides [`InsnHooks::stop`]); a JIT chains blocks
    /// only when the environment has [`DirectGlobals::insn_hooks`].
    fn chain_guards() -> Vec<usize> {
        Vec::new()
    }
    /// Offset of a `u64` inside `Self` that names the state indirect exits are looked
    /// up under ([`IndirectKey`]); `u64::MAX` there matches nothing.
    fn indirect_guard() -> Option<usize> {
        None
    }
    /// A plain function that computes helper `h` from its arguments alone, for
    /// helpers whose [`Effects`](crate::ir::Effects) are pure: a JIT calls it directly
    /// (no environment, no fault, no stop request) instead of going through
    /// [`GuestEnv::call`]. It must return what `call(h, args)` returns (missing
    /// arguments are passed as 0).
    fn pure_fn(_h: crate::ir::HelperId) -> Option<PureFn> {
        None
    }
    /// A function that computes helper `h` on the environment and up to three
    /// arguments (missing ones are 0), for helpers that never fault, never raise the
    /// stop request or set a chain guard, read and write no IR global other than
    /// direct ones ([`DirectGlobals::global_offset`], which generated code keeps in
    /// the environment between ops) and never panic: a JIT calls it without syncing
    /// anything (through a minimal trampoline) instead of going through
    /// [`GuestEnv::call`].
    /// It must do what `call(h, args)` does.
    fn env_fn(_h: crate::ir::HelperId) -> Option<EnvFn<Self>>
    where
        Self: Sized,
    {
        None
    }
}

/// An environment helper as a plain function ([`DirectGlobals::env_fn`]).
pub type EnvFn<E> = fn(&mut E, u64, u64, u64) -> u64;

/// A pure helper as a plain function of four arguments ([`DirectGlobals::pure_fn`]).
pub type PureFn = extern "C" fn(u64, u64, u64, u64) -> u64;

/// What an indirect-exit target was registered under: its PC, the code segment
/// base, and the environment's guard value at the time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndirectKey {
    pub pc: u64,
    pub cs_base: u64,
    pub guard: u64,
}

/// Where an environment keeps its fast TLB (see [`DirectGlobals::fast_tlb`]): two
/// tables of `2^index_bits` entries of `2^entry_shift` bytes each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FastTlbLayout {
    /// Offset of the tables from the environment's base.
    pub table: usize,
    /// Offset of the supervisor ([`MmuIdx::Kernel`]) table from `table`.
    pub kernel_table: usize,
    /// Offset of the user ([`MmuIdx::User`]) table from `table`.
    pub user_table: usize,
    pub index_bits: u32,
    pub entry_shift: u32,
    /// Offsets inside an entry: the `u64` read tag, write tag and host addend.
    pub read_tag: usize,
    pub write_tag: usize,
    pub addend: usize,
}

impl FastTlbLayout {
    /// Offset of `mmu`'s table from the environment's base.
    pub fn table_of(&self, mmu: MmuIdx) -> usize {
        self.table
            + match mmu {
                MmuIdx::Kernel => self.kernel_table,
                MmuIdx::User => self.user_table,
            }
    }
}

/// Where [`GuestEnv::insn_start`] and [`GuestEnv::stop_requested`] keep their state (see
/// [`DirectGlobals::insn_hooks`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InsnHooks {
    /// Offset of the `bool` that `stop_requested` returns.
    pub stop: usize,
    /// Offset of the `u64` that `insn_start(pc)` sets to `pc`.
    pub pc: usize,
    /// Offset of the `u64` counter that `insn_start` increments.
    pub counter: usize,
}
