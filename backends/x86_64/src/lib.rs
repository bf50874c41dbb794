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

mod codegen;
mod tramp;

#[cfg(test)]
mod tests;

use dynasmrt::mmap::ExecutableBuffer;
use dynasmrt::AssemblyOffset;
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
}

/// Size of one chunk of code memory (a larger block gets a chunk of its own).
const CHUNK: usize = 1 << 20;

/// Default limit of code memory per cache.
pub const DEFAULT_LIMIT: usize = 128 << 20;

/// A compiled block: where its code is, and the exits its return codes name.
#[derive(Debug)]
pub struct JitBlock {
    /// Entry address (inside a chunk of the cache that compiled it).
    entry: usize,
    /// The cache generation it was compiled in.
    gen: u64,
    exits: Box<[ExitKind]>,
    /// Temporaries of the block (slots the temp area must hold).
    temps: usize,
    /// Bytes of host code.
    pub bytes: usize,
}

struct Chunk {
    /// `None` only transiently, while being written.
    buf: Option<ExecutableBuffer>,
    used: usize,
}

/// The executable memory of compiled blocks for environment type `E`.
pub struct JitCache<E> {
    chunks: Vec<Chunk>,
    gen: u64,
    used: usize,
    limit: usize,
    /// Blocks compiled since creation.
    pub compiled: u64,
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

impl<E> JitCache<E> {
    /// An empty cache holding at most `limit` bytes of code.
    pub fn new(limit: usize) -> JitCache<E> {
        JitCache {
            chunks: Vec::new(),
            gen: 0,
            used: 0,
            limit,
            compiled: 0,
            _env: PhantomData,
        }
    }

    /// Bytes of code held.
    pub fn bytes_used(&self) -> usize {
        self.used
    }

    /// Drops every block: their [`JitBlock`]s no longer run.
    pub fn flush(&mut self) {
        self.chunks.clear();
        self.used = 0;
        self.gen += 1;
    }

    /// Whether `b` can run (compiled by this cache since its last flush).
    pub fn is_live(&self, b: &JitBlock) -> bool {
        b.gen == self.gen
    }
}

impl<E: GuestEnv + DirectGlobals> JitCache<E> {
    /// Compiles `block` (it must pass [`Block::validate`]: the code trusts its temps
    /// and labels to be in range).
    pub fn compile(&mut self, block: &Block) -> Result<JitBlock, JitError> {
        block.validate().map_err(JitError::Unsupported)?;
        let c = codegen::compile::<E>(block)?;
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
            .is_some_and(|ch| ch.buf.as_ref().is_some_and(|b| b.size() - ch.used >= len));
        if !fits {
            self.chunks.push(Chunk {
                buf: Some(ExecutableBuffer::new(len.max(CHUNK))?),
                used: 0,
            });
        }
        let gen = self.gen;
        let Some(chunk) = self.chunks.last_mut() else {
            return Err(JitError::Unsupported("no code chunk".into()));
        };
        let Some(buf) = chunk.buf.take() else {
            return Err(JitError::Unsupported("code chunk lost".into()));
        };
        let start = chunk.used;
        // The chunk becomes writable (not executable) while the code is copied in,
        // then executable again. It stays mapped at the same address throughout.
        let written = buf.make_mut().and_then(|mut m| {
            m.set_len(start + len);
            m[start..].copy_from_slice(&c.code);
            m.make_exec()
        });
        let buf = match written {
            Ok(b) => b,
            Err(e) => {
                // The chunk is gone (unmapped): no block of this generation may run.
                self.flush();
                return Err(JitError::Memory(e));
            }
        };
        let entry = buf.ptr(AssemblyOffset(start)) as usize;
        chunk.buf = Some(buf);
        chunk.used = start + len;
        self.used += len;
        self.compiled += 1;
        Ok(JitBlock {
            entry,
            gen,
            exits: c.exits.into_boxed_slice(),
            temps: block.temps as usize,
            bytes: len,
        })
    }

    /// Runs `b` on `env`. `None` if `b` is not live (flushed since it was compiled).
    /// Instructions started are added to `state.insns`. A panic in the environment
    /// is resumed here, after the generated code has returned.
    pub fn run(&self, b: &JitBlock, env: &mut E, state: &mut JitState) -> Option<BlockOutcome> {
        if !self.is_live(b) {
            return None;
        }
        let mut ctx = tramp::Ctx {
            env: (env as *mut E).cast::<u8>(),
            insns: 0,
            pc: 0,
            fault: None,
            panic: None,
        };
        // The temp area: the generated code trusts it to hold every temp of the block,
        // which is at most the largest block compiled; grow it lazily.
        let need = b.temps.max(1);
        if state.temps.len() < need {
            state.temps.resize(need, 0);
        }
        type Entry = unsafe extern "C" fn(*mut tramp::Ctx, *mut u8, *mut u64) -> u64;
        // SAFETY: `b` is live, so `entry` points to its code in a chunk this cache
        // still maps executable; the code follows the System V ABI with the signature
        // of `Entry` (codegen's prologue/epilogue). `ctx` outlives the call; `env` is
        // borrowed mutably for the call (the code and the trampolines access it only
        // as `E`, at offsets `DirectGlobals` vouches for); the temp area holds at
        // least `b.temps` slots, which covers every temp the code addresses.
        let code = unsafe {
            let f: Entry = std::mem::transmute::<usize, Entry>(b.entry);
            f(&mut ctx, ctx.env, state.temps.as_mut_ptr())
        };
        state.insns += ctx.insns;
        if let Some(p) = ctx.panic.take() {
            std::panic::resume_unwind(p);
        }
        Some(match code {
            codegen::RET_FAULT => BlockOutcome::Fault {
                fault: ctx.fault.unwrap_or(Fault::new(0xff)),
                pc: ctx.pc,
            },
            codegen::RET_STOP => {
                env.set(vireo_core::ir::Global::Pc, ctx.pc);
                BlockOutcome::Stopped { pc: ctx.pc }
            }
            n => BlockOutcome::Exit(
                b.exits
                    .get((n - codegen::RET_EXIT) as usize)
                    .copied()
                    .unwrap_or(ExitKind::Indirect),
            ),
        })
    }
}
