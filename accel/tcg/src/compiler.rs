//! The background compiler: a thread that runs the IR passes and the JIT's code
//! generation for blocks the vCPU thread hands it, so that the vCPU goes on (running
//! the block in the interpreter) instead of waiting. Compiling was most of a Linux
//! boot's translation time (~13 us of ~15 us per compiled block), and a PC emulator
//! usually has a core to spare for it.
//!
//! The vCPU thread makes each job ([`vireo_jit::JitCache::job`]: the block's cell
//! and the shared code are its), the compiler thread validates, optimizes and
//! compiles it (generated code is plain bytes until placed), and the vCPU thread
//! installs the result between blocks ([`crate::cache::BlockCache::poll_compiled`]);
//! code compiled for a cache flushed since is refused there.

use crate::cache::TbId;
use std::sync::mpsc;
use vireo_jit::{CompileJob, CompileScratch, CompiledJob, JitError};
use vireo_x86::X86Cpu;

const LOG: &str = "vireo::tcg";

/// Jobs the compiler may have in hand: past this the vCPU compiles in place (a
/// compiler the host starves of CPU time leaves blocks interpreted no longer than
/// that).
pub const MAX_PENDING: usize = 32;

/// A finished job: the block it was for, its code (or why there is none), and its IR
/// back (freed on the thread that allocated it).
pub type Done = (TbId, Result<CompiledJob, JitError>, vireo_core::ir::Block);

/// The compiler thread and the channels to it (bounded: at most [`MAX_PENDING`] jobs
/// are out, so neither side waits, and the channels allocate nothing per message).
pub struct Compiler {
    jobs: Option<mpsc::SyncSender<(TbId, CompileJob)>>,
    done: mpsc::Receiver<Done>,
    /// Jobs sent whose results were not taken yet.
    pending: usize,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Compiler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compiler")
            .field("pending", &self.pending)
            .finish()
    }
}

impl Compiler {
    /// Starts the compiler thread.
    pub fn spawn() -> std::io::Result<Compiler> {
        let (jobs, inbox) = mpsc::sync_channel::<(TbId, CompileJob)>(MAX_PENDING);
        let (outbox, done) = mpsc::sync_channel::<Done>(MAX_PENDING);
        let thread = std::thread::Builder::new()
            .name("vireo-compiler".into())
            .spawn(move || {
                // Below the vCPU thread: the guest's timing loops (Linux's TSC
                // calibration) must not see the vCPU preempted for a compile; a
                // starved compiler costs speed only ([`MAX_PENDING`]).
                vireo_jit::lower_thread_priority();
                let mut scratch = CompileScratch::default();
                // Ends when the vCPU side drops its sender (or its receiver).
                while let Some((id, mut job)) = next_job(&inbox) {
                    vireo_core::opt::optimize(&mut job.block);
                    let r = vireo_jit::compile_job::<X86Cpu>(&mut job, &mut scratch);
                    if outbox.send((id, r, job.block)).is_err() {
                        break;
                    }
                }
            })?;
        Ok(Compiler {
            jobs: Some(jobs),
            done,
            pending: 0,
            thread: Some(thread),
        })
    }

    /// Hands `job` (for block `id`) to the thread. `false` if the thread is gone.
    pub fn submit(&mut self, id: TbId, job: CompileJob) -> bool {
        let sent = self
            .jobs
            .as_ref()
            .is_some_and(|j| j.send((id, job)).is_ok());
        if sent {
            self.pending += 1;
        } else {
            log::warn!(target: LOG, "the compiler thread is gone: blocks compile in place");
        }
        sent
    }

    /// Jobs handed over whose results were not taken yet.
    pub fn pending(&self) -> usize {
        self.pending
    }

    /// A finished job, if one is ready.
    pub fn try_done(&mut self) -> Option<Done> {
        if self.pending == 0 {
            return None;
        }
        let d = self.done.try_recv().ok()?;
        self.pending -= 1;
        Some(d)
    }
}

/// How long the compiler thread waits for the next job awake before it sleeps: jobs
/// come in bursts, and each one sent to a sleeping thread cost the vCPU thread a
/// wake-up (a system call, a microsecond, as much as the rest of handing a job over).
const STAY_AWAKE: std::time::Duration = std::time::Duration::from_micros(50);

/// The next job (`None` once the vCPU side is gone).
fn next_job(inbox: &mpsc::Receiver<(TbId, CompileJob)>) -> Option<(TbId, CompileJob)> {
    let t0 = std::time::Instant::now();
    loop {
        match inbox.try_recv() {
            Ok(j) => return Some(j),
            Err(mpsc::TryRecvError::Disconnected) => return None,
            Err(mpsc::TryRecvError::Empty) if t0.elapsed() < STAY_AWAKE => std::hint::spin_loop(),
            Err(mpsc::TryRecvError::Empty) => return inbox.recv().ok(),
        }
    }
}

impl Drop for Compiler {
    fn drop(&mut self) {
        // Closing the job channel ends the thread after the job at hand.
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
