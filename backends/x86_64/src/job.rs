//! Compiling away from the thread that runs code: a [`CompileJob`] is made by a
//! [`crate::JitCache`] (`JitCache::job`, which takes the block's cell there), compiled
//! on any thread ([`compile_job`]: generated code is plain bytes until placed), and
//! its code placed by the same cache (`JitCache::install`).

use crate::{codegen, JitError};
use vireo_core::exec::{DirectGlobals, GuestEnv};
use vireo_core::ir::Block;

/// Source of [`crate::JitCache`] identities.
static OWNERS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// A new cache identity.
pub(crate) fn new_owner() -> u64 {
    OWNERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}
/// A block to compile away from the thread that runs code ([`JitCache::job`]).
pub struct CompileJob {
    /// The block (to be validated, and optimized as the caller likes, before
    /// [`compile_job`]).
    pub block: Block,
    pub(crate) cell: usize,
    pub(crate) lookup: bool,
    pub(crate) count_chains: bool,
    /// The cache that made the job and its generation then.
    pub(crate) owner: u64,
    pub(crate) gen: u64,
    /// The buffer the code goes to (one of the cache's, see `JitCache::spare_code`).
    pub(crate) out: Vec<u8>,
}

/// Code buffers a [`JitCache`] keeps for jobs.
pub(crate) const SPARE_CODE_BUFFERS: usize = 64;

/// The code of a [`CompileJob`], for [`JitCache::install`] on the thread that made
/// the job.
pub struct CompiledJob {
    pub(crate) code: codegen::Compiled,
    pub(crate) cell: usize,
    pub(crate) owner: u64,
    pub(crate) gen: u64,
    pub(crate) temps: u32,
}

/// A compiling thread's reusable buffers.
#[derive(Default)]
pub struct CompileScratch(pub(crate) codegen::Scratch);

/// Lowers the calling thread's scheduling priority as far as it goes (nice 19), for a
/// thread that compiles while another runs code: `false` if the host refused.
pub fn lower_thread_priority() -> bool {
    // SAFETY: `gettid` and `setpriority` take and return plain integers; `PRIO_PROCESS`
    // with a thread ID changes that thread's nice value only.
    unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 19) == 0
    }
}

/// Compiles `job` (on any thread: generated code is only data until installed).
pub fn compile_job<E: GuestEnv + DirectGlobals>(
    job: &mut CompileJob,
    scratch: &mut CompileScratch,
) -> Result<CompiledJob, JitError> {
    job.block.validate().map_err(JitError::Unsupported)?;
    let mut code = codegen::compile_with::<E>(
        &job.block,
        job.cell,
        job.lookup,
        job.count_chains,
        &mut scratch.0,
    )?;
    // Into the job's buffer (the assembler's own goes on this thread).
    let mut out = std::mem::take(&mut job.out);
    out.clear();
    out.extend_from_slice(&code.code);
    code.code = out;
    Ok(CompiledJob {
        code,
        cell: job.cell,
        owner: job.owner,
        gen: job.gen,
        temps: job.block.temps,
    })
}
