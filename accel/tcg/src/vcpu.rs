//! The TCG vCPU: the run loop around the block cache, the IR interpreter and the x86
//! frontend.
//!
//! One iteration of [`TcgVcpu::run`] is one block boundary:
//!
//! 1. a kick (stop request, another thread) returns [`VcpuExit::Stopped`]; an exhausted
//!    instruction budget does too;
//! 2. CPU events from the controller (a local APIC's NMI, INIT, SIPI) are taken: an
//!    NMI becomes pending, INIT resets the CPU (an application processor then waits
//!    for SIPI), SIPI starts a waiting CPU in real mode at `vector << 12`;
//! 3. a halted CPU, or one waiting for SIPI, sleeps on the [`Signal`]'s condition
//!    variable until something can wake it (an interrupt it may take, an NMI, INIT,
//!    SIPI, a kick), or returns [`VcpuExit::Halted`] when nothing can (IF clear and a
//!    controller without events, or no controller);
//! 4. a pending NMI is delivered unless NMIs are blocked (until IRET) or an interrupt
//!    shadow is in force; else, with interrupts enabled and the controller's output
//!    up, the interrupt is acknowledged and delivered;
//! 5. the next block is found: through the previous block's link when it jumped to a
//!    known PC on its own page, else by its key (physical address of CS.base+RIP, RIP,
//!    CS base, mode key) in the cache, translated on a miss;
//! 6. the block runs, in the interpreter or (backend [`Backend::Jit`]) as host code
//!    compiled at translation (a block the JIT cannot compile is interpreted);
//!    afterwards, code pages written during the block lose their blocks, a fault is
//!    delivered (a triple fault is [`VcpuExit::Shutdown`]), HLT halts the CPU, PAUSE
//!    ends a round-robin time slice.

use crate::cache::{BlockCache, Limits, Tb, TbId, TbKey};
use crate::frontend::{self, DeliveryError, TranslateError};
use crate::irq::{InterruptController, Signal};
use crate::smp::{CodeShare, SharedCode};
use std::sync::Arc;
use vireo_core::cpu::{flags, sreg};
use vireo_core::exec::IndirectKey;
use vireo_core::exec::{BlockOutcome, Fault};
use vireo_core::ir::ExitKind;
use vireo_core::{CpuState, MachineControl, SystemBus, Vcpu, VcpuExit, VcpuKicker};
use vireo_devices::apic::{CpuEvent, LapicHandle};
use vireo_devices::pic::SharedPic;
use vireo_interp::{Interp, Prepared};
use vireo_jit::JitState;
use vireo_x86::mmu::CodeWatch;
use vireo_x86::X86Cpu;

/// Most guest instructions in one block (QEMU's TCG_MAX_INSNS).
pub const MAX_BLOCK_INSNS: usize = 512;

/// Interpreted runs of a new block before the JIT compiles it (`-tcg-warmup`): most
/// blocks of a Linux boot run once or twice, and translating one in full (IR passes
/// and host code) costs more than interpreting it a few times.
pub const DEFAULT_WARMUP: u32 = 1;

const LOG_IN_ASM: &str = "vireo::tcg::in_asm";
const LOG_OP: &str = "vireo::tcg::op";
const LOG_OUT_ASM: &str = "vireo::tcg::out_asm";

/// Source of indirect-lookup epochs (unique across vCPUs).
static EPOCHS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Entries of the jump cache.
const JCACHE_SIZE: usize = 4096;

/// A jump-cache entry: the block found for CS:RIP = `cs_base`:`pc` in lookup epoch
/// `epoch` (which changes with the mode key, the CPL, A20 and the MMU generation — any
/// TLB flush or PCID switch: the code page may map elsewhere), valid while the epoch
/// is the same, A20 is on and the block lives (dropped blocks, self-modifying code
/// included, fail the id check). Only blocks on
/// one page are entered (a second page would need its own check). It spares the
/// lookups of blocks reached through indirect jumps and returns, which links cannot
/// serve: the fetch translation, the key hash, the page check.
#[derive(Debug, Clone, Copy)]
struct JumpCache {
    pc: u64,
    cs_base: u64,
    epoch: u64,
    id: TbId,
}

impl JumpCache {
    const EMPTY: JumpCache = JumpCache {
        pc: u64::MAX,
        cs_base: u64::MAX,
        epoch: u64::MAX,
        id: TbId::NONE,
    };

    fn slot(pc: u64) -> usize {
        ((pc ^ (pc >> 12)) as usize) & (JCACHE_SIZE - 1)
    }
}
const LOG_EXEC: &str = "vireo::tcg::exec";

/// Run-loop counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TcgStats {
    /// Blocks executed: those the run loop started, and those compiled code went on
    /// into by itself if it counts them ([`TcgVcpu::set_count_chains`]).
    pub blocks: u64,
    /// Blocks reached through a link (no lookup).
    pub chained: u64,
    /// Of those, blocks compiled code went on into by itself (no return to the run
    /// loop), if it counts them.
    pub jit_chained: u64,
    /// Block lookups answered by the jump cache.
    pub jcache_hits: u64,
    /// Blocks translated.
    pub translations: u64,
    /// Of those, translations for an interpreted run while warming up
    /// ([`TcgVcpu::set_warmup`]).
    pub warmups: u64,
    /// Exceptions delivered.
    pub exceptions: u64,
    /// External interrupts delivered.
    pub interrupts: u64,
}

/// What runs translated blocks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Backend {
    /// The IR interpreter (`vireo-interp`): the portable backend and the oracle.
    Interp,
    /// The x86-64 JIT (`vireo-jit`): blocks are compiled when translated.
    #[default]
    Jit,
}

impl std::str::FromStr for Backend {
    type Err = String;
    fn from_str(s: &str) -> Result<Backend, String> {
        match s {
            "interp" => Ok(Backend::Interp),
            "jit" => Ok(Backend::Jit),
            _ => Err(format!("unknown TCG backend '{s}' (interp, jit)")),
        }
    }
}

#[cfg(test)]
thread_local! {
    /// The backend new vCPUs get in this test thread (tests run under both).
    static TEST_BACKEND: std::cell::Cell<Backend> = const { std::cell::Cell::new(Backend::Interp) };
}

/// Runs test `f` with the vCPUs it creates on `backend`.
#[cfg(test)]
pub(crate) fn with_test_backend(backend: Backend, f: impl FnOnce()) {
    TEST_BACKEND.with(|b| b.set(backend));
    f();
}

#[cfg(test)]
thread_local! {
    static TEST_BACKGROUND: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs test `f` with the vCPUs it creates on the JIT, compiling on the background
/// compiler.
#[cfg(test)]
pub(crate) fn with_test_background(f: impl FnOnce()) {
    TEST_BACKEND.with(|b| b.set(Backend::Jit));
    TEST_BACKGROUND.with(|b| b.set(true));
    f();
    TEST_BACKGROUND.with(|b| b.set(false));
}

fn default_backend() -> Backend {
    #[cfg(test)]
    return TEST_BACKEND.with(|b| b.get());
    #[cfg(not(test))]
    Backend::default()
}

/// The engine's unit tests run the JIT on code that mostly runs once: there it
/// compiles every block at once (the warm-up has tests of its own).
fn default_warmup() -> u32 {
    #[cfg(test)]
    return 0;
    #[cfg(not(test))]
    DEFAULT_WARMUP
}

/// A translator: the block at the CPU's CS:RIP, at most `max_insns` instructions.
pub type Translator = fn(&mut X86Cpu, usize) -> Result<vireo_core::ir::Block, TranslateError>;

/// What the loop does after one step.
enum Step {
    Continue,
    Exit(VcpuExit),
}

/// One x86 CPU run by the TCG engine.
pub struct TcgVcpu {
    cpu: X86Cpu,
    cache: BlockCache,
    interp: Interp,
    backend: Backend,
    jit: JitState,
    control: Arc<MachineControl>,
    signal: Arc<Signal>,
    intc: Option<Arc<dyn InterruptController>>,
    /// Stop once the instruction counter reaches this value.
    budget: Option<u64>,
    /// The block that just exited through `ExitKind::Jump` to the PC given: the
    /// candidate for a link.
    chain_from: Option<(TbId, u64)>,
    /// Blocks found by CS:RIP lookups, direct-mapped by PC.
    jcache: Vec<JumpCache>,
    max_insns: usize,
    /// Interpreted runs of a new block before the JIT compiles it ([`Tb::warmup`]).
    warmup: u32,
    translator: Translator,
    pub stats: TcgStats,
    /// The block cache and code watch of a round-robin group, when this vCPU is in
    /// one ([`crate::smp::RoundRobin`]): `cache` and `cpu.mmu.code` hold them while
    /// [`Vcpu::run`] runs (checked out), placeholders otherwise.
    share: Option<CodeShare>,
    checked_out: bool,
    /// The placeholders while the group's code is checked out (swapped, not made
    /// anew: an empty cache allocates its JIT's indirect-exit table, and a run
    /// checks out and in at every return).
    parked: Option<(BlockCache, CodeWatch)>,
    /// In a group: return from `run` instead of sleeping when idle, and after PAUSE.
    group_mode: GroupMode,
    /// Set when `run` returned [`VcpuExit::Halted`] in a group: whether an interrupt
    /// or CPU event can still wake this CPU.
    wakeable: bool,
    /// The machine's clock, held while a block is translated
    /// ([`TcgVcpu::hold_clock_while_translating`]).
    clock: Option<Arc<vireo_core::VirtualClock>>,
}

/// How a vCPU in a round-robin group gives way to the others.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct GroupMode {
    /// An idle CPU returns [`VcpuExit::Halted`] (the scheduler sleeps for the group).
    pub yield_idle: bool,
    /// PAUSE (a spin-wait) ends the time slice.
    pub yield_pause: bool,
}

impl TcgVcpu {
    /// A CPU in the RESET state on `bus`, with no interrupt controller.
    pub fn new(bus: SystemBus, control: Arc<MachineControl>) -> TcgVcpu {
        let mut cpu = X86Cpu::new(bus, CpuState::reset());
        // Alone, a vCPU has no one to give way to (`set_group_mode`).
        cpu.pause_exits = GroupMode::default().yield_pause;
        let mut cache = BlockCache::new(Limits::default());
        // The run summary (debug level) reports the blocks run chained in host code.
        if log::log_enabled!(target: "vireo::tcg", log::Level::Debug) {
            cache.jit.set_count_chains(true);
        }
        #[cfg(test)]
        if TEST_BACKGROUND.with(|b| b.get()) {
            cache
                .compile_in_background(true)
                .expect("the compiler thread");
        }
        TcgVcpu {
            cpu,
            cache,
            interp: Interp::new(),
            backend: default_backend(),
            jit: JitState::new(),
            control,
            signal: Signal::new(),
            intc: None,
            budget: None,
            chain_from: None,
            jcache: vec![JumpCache::EMPTY; JCACHE_SIZE],
            max_insns: MAX_BLOCK_INSNS,
            warmup: default_warmup(),
            translator: frontend::translate,
            stats: TcgStats::default(),
            share: None,
            checked_out: false,
            parked: None,
            group_mode: GroupMode::default(),
            wakeable: true,
            clock: None,
        }
    }

    /// Connects the interrupt controller whose INTR output this CPU samples.
    pub fn with_interrupts(mut self, intc: Arc<dyn InterruptController>) -> TcgVcpu {
        let signal = self.signal.clone();
        intc.set_notify(Box::new(move || signal.raise_irq()));
        let signal = self.signal.clone();
        intc.set_event_notify(Box::new(move || signal.raise_event()));
        // A request or an event may already be waiting.
        self.signal.rearm_irq();
        self.signal.raise_event();
        self.intc = Some(intc);
        self
    }

    /// Gives this CPU its local APIC (on its bus, with the 8259A pair `pic` behind
    /// LINT0): the APIC becomes the interrupt controller, and the frontend routes the
    /// register page, the APIC MSRs and CR8 to it.
    pub fn with_apic(mut self, lapic: LapicHandle, pic: Option<SharedPic>) -> TcgVcpu {
        let id = lapic.lapic.lock().id();
        self.cpu
            .attach_apic(Box::new(crate::apic::CpuApicPort(lapic.clone())), id);
        self.with_interrupts(Arc::new(crate::apic::ApicInterrupts::new(lapic, pic)))
    }

    /// Holds `clock` while a block is translated (and compiled): the guest sees time
    /// pass only while it runs ([`vireo_core::VirtualClock::hold`]). For the thread
    /// that runs every vCPU of the machine; not for a vCPU beside others that run on.
    pub fn hold_clock_while_translating(&mut self, clock: Arc<vireo_core::VirtualClock>) {
        self.clock = Some(clock);
    }

    /// Compiles blocks on a thread of their own ([`crate::compiler`]; `true`), or on
    /// the vCPU's thread, dropping every block. In a round-robin group, the group's
    /// cache is set when it is checked out to this vCPU.
    pub fn compile_in_background(&mut self, on: bool) -> std::io::Result<()> {
        let mut r = Ok(());
        self.with_code(|cache, watch| {
            cache.flush(watch);
            r = cache.compile_in_background(on);
        });
        self.chain_from = None;
        r
    }

    /// Whether blocks compile on the background compiler (and it takes more now).
    pub fn compiles_in_background(&mut self) -> bool {
        self.with_code(|cache, _| cache.compiles_in_background())
    }

    /// Replaces the translator (tests of the engine with a toy guest), dropping every
    /// block.
    pub fn set_translator(&mut self, translator: Translator) {
        self.translator = translator;
        self.flush_code();
    }

    /// Replaces the cache limits (tests of the flush path), dropping every block.
    pub fn set_cache_limits(&mut self, limits: Limits) {
        self.with_code(|cache, watch| {
            cache.flush(watch);
            let count = cache.jit.counts_chains();
            *cache = BlockCache::new(limits);
            cache.jit.set_count_chains(count);
        });
        self.chain_from = None;
    }

    /// Most guest instructions per block (1 makes every instruction a block).
    pub fn set_max_block_insns(&mut self, n: usize) {
        self.max_insns = n.clamp(1, MAX_BLOCK_INSNS);
        self.flush_code();
    }

    /// Whether compiled code counts the blocks it goes on into by itself
    /// ([`TcgStats::jit_chained`]; off unless debug logging of `vireo::tcg` was on when
    /// the vCPU was made: it costs a memory increment per chained block), dropping
    /// every block.
    pub fn set_count_chains(&mut self, on: bool) {
        self.with_code(|cache, watch| {
            cache.flush(watch);
            cache.jit.set_count_chains(on);
        });
        self.chain_from = None;
    }

    /// Interpreted runs of each new block before the JIT compiles it (0: compile
    /// every block when first translated), dropping every block.
    pub fn set_warmup(&mut self, runs: u32) {
        self.warmup = runs;
        self.flush_code();
    }

    /// Interpreted runs of each new block before the JIT compiles it.
    pub fn warmup(&self) -> u32 {
        self.warmup
    }

    /// Selects the backend that runs blocks, dropping every block (a block carries
    /// host code only when translated under the JIT).
    pub fn set_backend(&mut self, backend: Backend) {
        self.backend = backend;
        self.flush_code();
    }

    /// The backend that runs blocks.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Guest instructions executed so far (each started instruction counts).
    pub fn insns(&self) -> u64 {
        self.interp.insns + self.jit.insns
    }

    /// Bytes of host code the JIT holds for this vCPU's block cache.
    pub fn jit_bytes(&mut self) -> usize {
        self.with_code(|cache, _| cache.jit.bytes_used())
    }

    /// Makes `run` return [`VcpuExit::Stopped`] once [`TcgVcpu::insns`] reaches
    /// `limit` (checked at block boundaries); `None` removes the limit.
    pub fn set_insn_limit(&mut self, limit: Option<u64>) {
        self.budget = limit;
    }

    /// Block-cache counters.
    pub fn cache_stats(&mut self) -> crate::cache::CacheStats {
        self.with_code(|cache, _| cache.stats)
    }

    /// Number of blocks in the cache.
    pub fn cached_blocks(&mut self) -> usize {
        self.with_code(|cache, _| cache.len())
    }

    /// IR ops the cache holds for interpreted blocks.
    pub fn cached_ops(&mut self) -> usize {
        self.with_code(|cache, _| cache.ops_held())
    }

    /// Drops every translated block (guest code was replaced behind the engine's
    /// back: a loader, DMA, a test harness).
    pub fn flush_code(&mut self) {
        self.with_code(|cache, watch| cache.flush(watch));
        self.chain_from = None;
    }

    /// Drops the blocks with code in physical `[start, start+len)`.
    pub fn invalidate_code(&mut self, start: u64, len: u64) {
        self.with_code(|cache, watch| cache.invalidate_range(start, len, watch));
        self.chain_from = None;
    }

    /// Runs `f` on the block cache and code watch this vCPU uses: its own, or its
    /// group's (from the share when it is not checked out).
    fn with_code<R>(&mut self, f: impl FnOnce(&mut BlockCache, &mut CodeWatch) -> R) -> R {
        if let (Some(share), false) = (self.share.clone(), self.checked_out) {
            if let Some(code) = share.lock().as_mut() {
                return f(&mut code.cache, &mut code.watch);
            }
        }
        f(&mut self.cache, &mut self.cpu.mmu.code)
    }

    /// Joins a round-robin group: from now on the group's block cache and code watch
    /// are used (this vCPU's own are dropped).
    pub(crate) fn join_group(&mut self, share: CodeShare) {
        // The group's cache counts chained blocks if this vCPU's did (debug
        // logging at its creation: the run summary reports them).
        if self.cache.jit.counts_chains() {
            if let Some(code) = share.lock().as_mut() {
                code.cache.jit.set_count_chains(true);
            }
        }
        self.cache = BlockCache::default();
        self.cpu.mmu.code = CodeWatch::default();
        // Ids of the old cache mean nothing in the group's.
        self.jcache.fill(JumpCache::EMPTY);
        self.share = Some(share);
        self.checked_out = false;
        self.chain_from = None;
    }

    /// How this vCPU gives way to the others of its group.
    pub(crate) fn set_group_mode(&mut self, mode: GroupMode) {
        self.group_mode = mode;
        // PAUSE ends a block with an exit only where it may give way.
        if self.cpu.pause_exits != mode.yield_pause {
            self.cpu.pause_exits = mode.yield_pause;
            self.flush_code();
        }
    }

    /// The wake-up flags of this vCPU (a group sets their doorbell).
    pub(crate) fn signal(&self) -> &Arc<Signal> {
        &self.signal
    }

    /// After `run` returned [`VcpuExit::Halted`]: whether something can still wake
    /// this CPU (an interrupt it may take, or an NMI/INIT/SIPI).
    pub fn wakeable(&self) -> bool {
        self.wakeable
    }

    /// Takes the group's code into this vCPU for a run. Fails if another vCPU holds
    /// it (the group's vCPUs must run one at a time).
    fn check_out(&mut self) -> Result<(), VcpuExit> {
        let Some(share) = self.share.clone() else {
            return Ok(());
        };
        let Some(code) = share.lock().take() else {
            return Err(VcpuExit::Failed(
                "TCG: two vCPUs of one group ran at the same time".into(),
            ));
        };
        let cache = std::mem::replace(&mut self.cache, code.cache);
        let watch = std::mem::replace(&mut self.cpu.mmu.code, code.watch);
        self.parked = Some((cache, watch));
        self.checked_out = true;
        // Links name blocks of the cache as it was; other vCPUs changed it since.
        self.chain_from = None;
        Ok(())
    }

    /// Gives the group's code back after a run.
    fn check_in(&mut self) {
        if let (Some(share), true) = (&self.share, self.checked_out) {
            let (cache, watch) = self.parked.take().unwrap_or_default();
            *share.lock() = Some(SharedCode {
                cache: std::mem::replace(&mut self.cache, cache),
                watch: std::mem::replace(&mut self.cpu.mmu.code, watch),
            });
            self.checked_out = false;
        }
    }

    /// The frontend CPU (tests and debugging).
    pub fn cpu(&mut self) -> &mut X86Cpu {
        &mut self.cpu
    }

    fn run_loop(&mut self) -> VcpuExit {
        if self.control.stop_reason().is_some() {
            return VcpuExit::Stopped;
        }
        loop {
            if self.signal.take_kick() {
                return VcpuExit::Stopped;
            }
            if self.budget.is_some_and(|b| self.insns() >= b) {
                return VcpuExit::Stopped;
            }
            if self.signal.event_hint() {
                self.take_events();
            }
            let ev = &self.cpu.state.events;
            if ev.halted || ev.wait_for_sipi {
                if let Some(exit) = self.halted() {
                    return exit;
                }
                continue;
            }
            if let Step::Exit(e) = self.poll_interrupt() {
                return e;
            }
            if let Step::Exit(e) = self.step() {
                return e;
            }
        }
    }

    /// Moves the controller's CPU events into the CPU: NMI pending, INIT, SIPI.
    fn take_events(&mut self) {
        let Some(intc) = self.intc.clone() else {
            return;
        };
        self.signal.take_event();
        while let Some(ev) = intc.take_event() {
            log::trace!(target: LOG_EXEC, "event {ev:?} at {:#x}", self.cpu.state.rip);
            match ev {
                CpuEvent::Nmi => self.cpu.state.events.nmi_pending = true,
                CpuEvent::Init => self.cpu.init_reset(),
                CpuEvent::StartUp(v) => self.cpu.start_up(v),
            }
            self.chain_from = None;
        }
    }

    /// Whether the controller can wake a CPU that takes no interrupts (NMI, INIT,
    /// SIPI).
    fn has_events(&self) -> bool {
        self.intc.as_ref().is_some_and(|i| i.has_events())
    }

    /// A halted CPU, or one waiting for SIPI: sleeps until something it responds to
    /// arrives. Returns the exit when nothing can wake it or a kick came, `None` when
    /// the loop should go on.
    fn halted(&mut self) -> Option<VcpuExit> {
        self.chain_from = None;
        loop {
            if self.signal.take_kick() {
                return Some(VcpuExit::Stopped);
            }
            if self.signal.event_hint() {
                self.take_events();
            }
            let ev = self.cpu.state.events;
            if ev.wait_for_sipi {
                if !self.has_events() {
                    return Some(self.idle(false));
                }
                if self.group_mode.yield_idle {
                    return Some(self.idle(true));
                }
                self.signal.wait_events();
                continue;
            }
            if !ev.halted {
                return None; // INIT of the BSP restarted it
            }
            if ev.nmi_pending && !ev.nmi_masked {
                // An NMI ends the halt; the loop delivers it.
                self.cpu.state.events.halted = false;
                return None;
            }
            let irq_ok = self.intc.is_some() && self.cpu.state.rflags & flags::IF != 0;
            if irq_ok {
                self.undefer_irq();
            }
            if irq_ok && self.signal.irq_hint() {
                match self.take_interrupt() {
                    Some(Step::Exit(e)) => return Some(e),
                    Some(Step::Continue) => return None,
                    // The request went away: sleep again.
                    None => continue,
                }
            }
            let wakeable = irq_ok || self.has_events();
            if !wakeable || self.group_mode.yield_idle {
                return Some(self.idle(wakeable));
            }
            if irq_ok {
                self.signal.wait();
            } else {
                self.signal.wait_events();
            }
        }
    }

    /// The exit of a CPU that has nothing to run: [`VcpuExit::Halted`], noting whether
    /// it can still be woken.
    fn idle(&mut self, wakeable: bool) -> VcpuExit {
        self.wakeable = wakeable;
        VcpuExit::Halted
    }

    /// Delivers a pending NMI, or a pending external interrupt, if the CPU may take
    /// one now.
    fn poll_interrupt(&mut self) -> Step {
        // The run loop is here: what the guard asked for is looked at now.
        self.cpu.irq_window = false;
        let ev = &self.cpu.state.events;
        if ev.nmi_pending && !ev.nmi_masked && !ev.interrupt_shadow {
            self.cpu.state.events.nmi_pending = false;
            self.chain_from = None;
            self.stats.interrupts += 1;
            log::trace!(target: LOG_EXEC, "NMI at {:#x}", self.cpu.state.rip);
            return match frontend::deliver_nmi(&mut self.cpu) {
                Ok(()) => Step::Continue,
                Err(e) => Step::Exit(delivery_exit(e)),
            };
        }
        if self.intc.is_none() {
            return Step::Continue;
        }
        if !frontend::interrupts_enabled(&self.cpu) {
            // Not now: let compiled code chain (see `irq_deferred`).
            if self.signal.irq_hint() && self.signal.take_irq() {
                self.cpu.irq_deferred = true;
            }
            return Step::Continue;
        }
        self.undefer_irq();
        if !self.signal.irq_hint() {
            return Step::Continue;
        }
        self.take_interrupt().unwrap_or(Step::Continue)
    }

    /// The current lookup epoch.
    /// The current lookup epoch. Blocks are looked up under it, by the jump cache and
    /// by compiled code's indirect exits (`X86Cpu::mmu.jc_guard`); epochs are unique
    /// across vCPUs (they may share a JIT cache). The epochs of the last few states
    /// are kept (`X86Cpu::mmu.epochs`): returning to a recent state (a system call's
    /// return to user mode) finds its entries again.
    fn epoch(&self) -> u64 {
        self.cpu.mmu.epochs[0].1
    }

    /// Interrupts may be taken again: a hint taken while they could not comes back.
    ///
    /// While a hint is deferred (`X86Cpu::irq_deferred`: the hint was taken while the
    /// CPU could not take interrupts, IF clear or the interrupt shadow), compiled code
    /// chains on; the hint comes back once interrupts are enabled. Every instruction
    /// that can set IF (STI, POPF, SYSEXIT, far returns, task switches) ends its
    /// block with a `Sync` exit, which never chains, so the run loop sees it; SYSRET
    /// and IRET exit `Indirect` and set the `X86Cpu::irq_window` chain guard instead
    /// (cleared when the run loop polls for interrupts).
    fn undefer_irq(&mut self) {
        if std::mem::take(&mut self.cpu.irq_deferred) {
            self.signal.rearm_irq();
        }
    }

    /// Acknowledges the controller's request and delivers it (waking a halted CPU).
    /// `None` when no request was pending after all.
    fn take_interrupt(&mut self) -> Option<Step> {
        let intc = self.intc.as_ref()?;
        self.signal.take_irq();
        let vector = intc.acknowledge()?;
        // The controller may hold more requests: look again at the next boundary.
        self.signal.rearm_irq();
        self.cpu.state.events.halted = false;
        self.chain_from = None;
        self.stats.interrupts += 1;
        log::trace!(target: LOG_EXEC, "interrupt vector {vector:#x} at {:#x}", self.cpu.state.rip);
        Some(match frontend::deliver_interrupt(&mut self.cpu, vector) {
            Ok(()) => Step::Continue,
            Err(e) => Step::Exit(delivery_exit(e)),
        })
    }

    /// Delivers `fault` raised by the instruction at `pc`.
    fn fault(&mut self, fault: Fault, pc: u64) -> Step {
        self.chain_from = None;
        self.stats.exceptions += 1;
        self.cpu.state.rip = pc;
        log::trace!(target: LOG_EXEC, "exception {} ({:?}) at {pc:#x}", fault.vector, fault.error_code);
        match frontend::deliver_exception(&mut self.cpu, fault, pc) {
            Ok(()) => Step::Continue,
            Err(e) => Step::Exit(delivery_exit(e)),
        }
    }

    /// Finds or translates the block at CS:RIP and runs it.
    fn step(&mut self) -> Step {
        if self.cache.compiles_pending() {
            // (Installing code is the emulator's time too: see `translate`.)
            self.with_clock_held(|v| v.cache.poll_compiled(&mut v.cpu.mmu.code));
        }
        if self.cpu.bus.mem.dma_pending() {
            self.drop_dma_code();
        }
        let pc = self.cpu.state.rip;
        let prev = self.chain_from.take();
        // RFLAGS.TF: one-instruction blocks (cached apart) and a #DB trap after each.
        let single_step = self.single_stepping();
        let prev = prev.filter(|_| !single_step);
        let linked = prev.and_then(|(from, to_pc)| {
            let next = self.cache.get(from)?.link_to(to_pc)?;
            (to_pc == pc && self.cache.get(next).is_some()).then_some(next)
        });
        let id = match linked {
            Some(next) => {
                self.stats.chained += 1;
                if let (Some((from, to_pc)), true) = (prev, self.cache.has_background_compiler()) {
                    // Either end may have been compiled since the link was recorded.
                    self.cache.link_compiled(from, to_pc, next);
                }
                next
            }
            None => match self.find_block(pc, prev) {
                Ok(id) => id,
                Err(step) => return step,
            },
        };
        let Some(mut tb) = self.cache.get(id) else {
            return Step::Exit(VcpuExit::Failed("block cache lost a block".into()));
        };
        let mut id = id;
        if tb.is_shell() {
            // Warmed up (or another interpreted run to go): translated anew.
            let (key, warmup) = (tb.key, tb.warmup);
            let linear = frontend::code_linear(&self.cpu, pc);
            id = match self.translate(key, linear, warmup) {
                Ok(id) => id,
                Err(step) => return step,
            };
            if linked.is_none() {
                // Found by `find_block`, which registered the shell.
                let key = self.indirect_key(pc);
                self.cache.set_indirect(id, key);
            }
            tb = match self.cache.get(id) {
                Some(tb) => tb,
                None => return Step::Continue,
            };
        }
        let warming = tb.warmup > 0;
        if log::log_enabled!(target: LOG_EXEC, log::Level::Trace) {
            log::trace!(target: LOG_EXEC, "exec {:04x}:{pc:#x} phys {:#x}",
                self.cpu.state.seg[sreg::CS].selector, tb.key.phys);
        }
        let shadow = self.cpu.state.events.interrupt_shadow;
        self.stats.blocks += 1;
        vireo_x86::mmu::sync_fast_tlb(&mut self.cpu);
        let compiled = match (self.backend, &tb.jit) {
            (Backend::Jit, Some(code)) => {
                // Compiled code may go on into linked blocks until the budget is
                // spent or something for the run loop comes up (never while
                // single-stepping: each instruction traps).
                let limit = match self.budget {
                    _ if single_step => 0,
                    Some(b) => b.saturating_sub(self.insns()),
                    None => u64::MAX,
                };
                self.cache.jit.run_chained(
                    code,
                    &mut self.cpu,
                    &mut self.jit,
                    self.signal.gate(),
                    limit,
                )
            }
            _ => None,
        };
        let (outcome, id) = match compiled {
            Some(r) => {
                // (Counted only with `set_count_chains`.)
                self.stats.chained += r.chained;
                self.stats.jit_chained += r.chained;
                self.stats.blocks += r.chained;
                // The block the run ended in (the one entered unless it chained on).
                (r.outcome, TbId::from_tag(r.tag))
            }
            None => match &tb.code {
                Some(code) => {
                    let outcome = self.interp.run(code, &mut self.cpu);
                    if warming {
                        self.cache.cool(id);
                    }
                    (outcome, id)
                }
                None => {
                    // A compiled block whose code is gone (the block and JIT caches
                    // flush together, so this does not happen): translate anew.
                    self.flush_code();
                    return Step::Continue;
                }
            },
        };
        if shadow {
            // The interrupt shadow (STI, MOV SS) covers the instruction after; a
            // block is at least that instruction.
            self.cpu.state.events.interrupt_shadow = false;
        }
        self.after_block();
        if single_step {
            if let BlockOutcome::Exit(
                ExitKind::Jump(_) | ExitKind::Pause(_) | ExitKind::Indirect | ExitKind::Sync,
            ) = outcome
            {
                return self.single_step_trap();
            }
        }
        match outcome {
            BlockOutcome::Exit(ExitKind::Jump(target)) => {
                self.chain_from = Some((id, target));
                Step::Continue
            }
            BlockOutcome::Exit(ExitKind::Pause(target)) => {
                self.chain_from = Some((id, target));
                if self.group_mode.yield_pause {
                    // A spin-wait: the CPU it waits for runs first.
                    Step::Exit(VcpuExit::Stopped)
                } else {
                    Step::Continue
                }
            }
            BlockOutcome::Exit(ExitKind::Indirect | ExitKind::Sync) => Step::Continue,
            BlockOutcome::Exit(ExitKind::Halt) => {
                self.cpu.state.events.halted = true;
                Step::Continue
            }
            BlockOutcome::Stopped { .. } => Step::Continue,
            BlockOutcome::Fault { fault, pc } => self.fault(fault, pc),
        }
    }

    /// The single-step trap after an instruction that started with TF set: #DB with
    /// DR6.BS, returning to the next instruction. (Faults, software interrupts and HLT
    /// take precedence and give no trap, as on the CPU; MOV SS's suppression of the
    /// trap for the following instruction is not modelled.)
    fn single_step_trap(&mut self) -> Step {
        const DR6_BS: u64 = 1 << 14;
        self.cpu.state.dr[4] |= DR6_BS;
        self.stats.exceptions += 1;
        let next = self.cpu.state.rip;
        log::trace!(target: LOG_EXEC, "single-step #DB at {next:#x}");
        match frontend::deliver_exception(&mut self.cpu, Fault::new(1), next) {
            Ok(()) => Step::Continue,
            Err(e) => Step::Exit(delivery_exit(e)),
        }
    }

    /// Drops the blocks on pages a device (or loader) wrote since the last look:
    /// self-modifying code by DMA.
    fn drop_dma_code(&mut self) {
        let mut pages = Vec::new();
        self.cpu.bus.mem.take_dma_pages(|pfn| pages.push(pfn));
        let mut dropped = false;
        for pfn in pages {
            if self.cpu.mmu.code.is_watched(pfn) {
                log::trace!(target: LOG_EXEC, "code page {pfn:#x} written by DMA: dropping its blocks");
                self.cache.invalidate_page(pfn, &mut self.cpu.mmu.code);
                dropped = true;
            }
        }
        if dropped {
            self.chain_from = None;
        }
    }

    /// Drops the blocks of code pages written by the last block.
    fn after_block(&mut self) {
        self.cpu.stop = false;
        let dirty = self.cpu.mmu.code.take_dirty();
        for (pa, len) in dirty {
            log::trace!(target: LOG_EXEC, "code at {pa:#x}+{len:#x} written: dropping its blocks");
            self.cache.invalidate_bytes(pa, len, &mut self.cpu.mmu.code);
        }
    }

    /// The block at CS:`pc`: from the jump cache, else from the cache (linking the
    /// previous block to it when it may be), else translated. Faults fetching it are
    /// delivered (`Err(step)`).
    fn find_block(&mut self, pc: u64, prev: Option<(TbId, u64)>) -> Result<TbId, Step> {
        let cs_base = self.cpu.state.seg[sreg::CS].base;
        let state = frontend::epoch_state(&self.cpu);
        let a20 = state.3;
        if state != self.cpu.mmu.epochs[0].0 {
            // Move the state to the front; a new one takes the oldest place.
            // (Shifted by hand: `rotate_right` goes through `memmove`, which showed
            // in profiles of system-call-heavy guests.)
            let r = &mut self.cpu.mmu.epochs;
            let (i, front) = match r.iter().position(|(s, _)| *s == state) {
                Some(i) => (i, r[i]),
                None => {
                    let e = EPOCHS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    (vireo_x86::mmu::RECENT_EPOCHS - 1, (state, e))
                }
            };
            for j in (1..=i).rev() {
                r[j] = r[j - 1];
            }
            r[0] = front;
        }
        self.cpu.mmu.jc_guard = if a20 { self.epoch() } else { u64::MAX };
        let id = self.find_block_cached(pc, prev, cs_base, state)?;
        // Compiled code's indirect exits (and jumps no link serves) to this PC may go
        // straight in from now on, within this epoch (which also vouches for the
        // second page of a block on two).
        let key = self.indirect_key(pc);
        self.cache.set_indirect(id, key);
        Ok(id)
    }

    /// The indirect-exit table's key for `pc` in the current epoch (`find_block`
    /// brought the guard up to date).
    fn indirect_key(&self, pc: u64) -> IndirectKey {
        IndirectKey {
            pc,
            cs_base: self.cpu.state.seg[sreg::CS].base,
            guard: self.cpu.mmu.jc_guard,
        }
    }

    /// The jump cache in front of [`TcgVcpu::find_block_slow`], in the current epoch
    /// (`find_block` brought it up to date for `state`, the CPU's).
    fn find_block_cached(
        &mut self,
        pc: u64,
        prev: Option<(TbId, u64)>,
        cs_base: u64,
        state: vireo_x86::mmu::EpochState,
    ) -> Result<TbId, Step> {
        let a20 = state.3;
        let slot = JumpCache::slot(pc);
        let j = self.jcache[slot];
        if j.pc == pc
            && j.cs_base == cs_base
            && j.epoch == self.epoch()
            && a20
            && self.cache.get(j.id).is_some()
        {
            self.stats.jcache_hits += 1;
            self.link_prev(prev, pc, j.id);
            return Ok(j.id);
        }
        let id = self.find_block_slow(pc, prev, state.0)?;
        // Blocks on two pages too: the epoch moves with every TLB flush, the only way
        // the second page's mapping changes for the guest (it may use stale
        // translations until it flushes them).
        self.jcache[slot] = JumpCache {
            pc,
            cs_base,
            epoch: self.epoch(),
            id,
        };
        Ok(id)
    }

    /// Links `prev` (the block that exited to `to_pc`) to `id` (at `pc`) when the
    /// link may be followed without a lookup: same linear page and mode, `id` on one
    /// page.
    fn link_prev(&mut self, prev: Option<(TbId, u64)>, pc: u64, id: TbId) {
        let Some((from, to_pc)) = prev else {
            return;
        };
        let Some(t) = self.cache.get(id) else {
            return;
        };
        let (page, mode, single) = (t.linear_page, t.key.mode, t.pages[1].is_none());
        let same_page = self
            .cache
            .get(from)
            .is_some_and(|f| f.linear_page == page && f.key.mode == mode);
        if same_page && single && to_pc == pc {
            self.cache.link(from, pc, id);
        }
    }

    /// [`TcgVcpu::find_block`] without the jump cache; `mode` is the block key's (the
    /// mode key with the single-stepping bit, as in the epoch state).
    fn find_block_slow(
        &mut self,
        pc: u64,
        prev: Option<(TbId, u64)>,
        mode: u64,
    ) -> Result<TbId, Step> {
        let linear = frontend::code_linear(&self.cpu, pc);
        let phys = frontend::code_phys(&mut self.cpu, linear).map_err(|f| self.fault(f, pc))?;
        let key = TbKey {
            phys,
            pc,
            cs_base: self.cpu.state.seg[sreg::CS].base,
            mode,
        };
        let id = match self.cache.lookup(&key) {
            Some(id) if self.second_page_matches(id)? => id,
            _ => {
                let warmup = match self.backend {
                    Backend::Jit if !self.single_stepping() => self.warmup,
                    _ => 0,
                };
                self.translate(key, linear, warmup)?
            }
        };
        if let Some((from, to_pc)) = prev {
            let same_page = self
                .cache
                .get(from)
                .is_some_and(|f| f.linear_page == linear >> 12 && f.key.mode == key.mode);
            let single_page = self.cache.get(id).is_some_and(|t| t.pages[1].is_none());
            if same_page && single_page && to_pc == pc {
                self.cache.link(from, pc, id);
            }
        }
        Ok(id)
    }

    /// Whether block `id`'s second code page (if any) is still mapped where it was
    /// when translated. A fault looking it up is delivered.
    fn second_page_matches(&mut self, id: TbId) -> Result<bool, Step> {
        let Some(tb) = self.cache.get(id) else {
            return Ok(false);
        };
        let Some(pfn2) = tb.pages[1] else {
            return Ok(true);
        };
        let linear2 = (tb.linear_page + 1) << 12;
        let pc = tb.key.pc;
        let phys2 = frontend::code_phys(&mut self.cpu, linear2).map_err(|f| self.fault(f, pc))?;
        Ok(phys2 >> 12 == pfn2)
    }

    /// RFLAGS.TF is set: blocks are one instruction long.
    fn single_stepping(&self) -> bool {
        self.cpu.state.rflags & flags::TF != 0
    }

    /// Translates the block for `key` (at CS:RIP, linear address `linear`) and
    /// caches it.
    fn translate(&mut self, key: TbKey, linear: u64, warmup: u32) -> Result<TbId, Step> {
        self.with_clock_held(|v| v.translate_held(key, linear, warmup))
    }

    /// `f` with the machine's clock held, if this vCPU holds it
    /// ([`TcgVcpu::hold_clock_while_translating`]).
    fn with_clock_held<R>(&mut self, f: impl FnOnce(&mut Self) -> R) -> R {
        let clock = self.clock.take();
        if let Some(c) = &clock {
            c.hold();
        }
        let r = f(self);
        if let Some(c) = &clock {
            c.release();
        }
        self.clock = clock;
        r
    }

    /// [`TcgVcpu::translate`] with the clock held.
    fn translate_held(&mut self, key: TbKey, linear: u64, warmup: u32) -> Result<TbId, Step> {
        let max = if self.single_stepping() {
            1
        } else {
            self.max_insns
        };
        let block = match (self.translator)(&mut self.cpu, max) {
            Ok(b) => b,
            Err(TranslateError::Fault(f)) => return Err(self.fault(f, key.pc)),
            Err(TranslateError::Unavailable(why)) => {
                return Err(Step::Exit(VcpuExit::Failed(format!("TCG: {why}"))))
            }
        };
        // Only checked blocks run: the JIT checks a block itself (after the IR passes,
        // which keep a block valid) before compiling it, and the interpreter gets
        // blocks checked here (a block the JIT did not take is checked below).
        if self.backend == Backend::Interp {
            Self::check_block(&block, key)?;
        }
        self.stats.translations += 1;
        let len = u64::from(block.guest_len.max(1));
        let last = linear.wrapping_add(len - 1);
        let page2 = if last >> 12 != linear >> 12 {
            let phys2 = frontend::code_phys(&mut self.cpu, last & !0xfff)
                .map_err(|f| self.fault(f, key.pc))?;
            Some(phys2 >> 12)
        } else {
            None
        };
        let shown = crate::dfilter::allows(linear, u64::from(block.guest_len));
        if shown {
            self.log_translation(&block, key, page2, warmup > 0);
        }
        // Compiled on the background compiler: the block runs in the interpreter, as
        // translated, until its code is in (not while `-d out_asm` shows it).
        let show_code = shown && log::log_enabled!(target: LOG_OUT_ASM, log::Level::Trace);
        let later = warmup == 0
            && self.backend == Backend::Jit
            && self.cache.compiles_in_background()
            && !show_code;
        let mut block = block;
        let mut job = None;
        if later {
            Self::check_block(&block, key)?;
            job = Some(block.clone());
        } else if warmup > 0 {
            self.stats.warmups += 1;
            // To be interpreted: as translated, without the IR passes (which cost
            // more than they save a block run once).
            Self::check_block(&block, key)?;
        } else {
            vireo_core::opt::optimize(&mut block);
        }
        let jit = match self.backend {
            Backend::Jit if warmup == 0 && !later => {
                self.cache.jit.keep_code = show_code;
                self.cache
                    .make_room(block.ops.len(), &mut self.cpu.mmu.code);
                self.cache.compile(&block, &mut self.cpu.mmu.code)
            }
            _ => None,
        };
        if jit.is_none() && self.backend == Backend::Jit && warmup == 0 && !later {
            Self::check_block(&block, key)?;
        }
        if let (Some(j), true) = (&jit, self.cache.jit.keep_code) {
            log::trace!(target: LOG_OUT_ASM, "OUT: [size={}]\n{}", j.bytes,
                crate::disas::block(&self.cache.jit.last_code, j.entry() as u64, 64));
        }
        if let Some(j) = &jit {
            self.cache.name_in_perf_map(j, key);
        }
        // A compiled block needs its IR no more (the two caches flush together).
        let code = jit.is_none().then(|| Prepared::new(block));
        let tb = Tb {
            key,
            code,
            jit,
            pages: [Some(key.phys >> 12), page2],
            spans: [
                (
                    (linear & 0xfff) as u16,
                    if page2.is_some() {
                        0xfff
                    } else {
                        (last & 0xfff) as u16
                    },
                ),
                (0, (last & 0xfff) as u16),
            ],
            linear_page: linear >> 12,
            links: [None; 2],
            // (0 for a block waiting for its code: not cooled after its runs.)
            warmup,
        };
        let id = self.cache.insert(tb, &mut self.cpu.mmu.code);
        if let Some(b) = job {
            self.cache.compile_later(id, b);
        }
        Ok(id)
    }

    /// A translator's block that is not valid ([`vireo_core::ir::Block::validate`])
    /// never runs: it stops the engine with the reason.
    fn check_block(block: &vireo_core::ir::Block, key: TbKey) -> Result<(), Step> {
        block.validate().map_err(|e| {
            Step::Exit(VcpuExit::Failed(format!(
                "TCG: the translator produced an invalid block at {:#x}: {e}",
                key.pc
            )))
        })
    }

    /// `-d in_asm` and `-d op` output for a new block.
    fn log_translation(
        &self,
        block: &vireo_core::ir::Block,
        key: TbKey,
        page2: Option<u64>,
        warmup: bool,
    ) {
        if log::log_enabled!(target: LOG_IN_ASM, log::Level::Trace) {
            let len = block.guest_len as usize;
            let mut bytes = vec![0u8; len];
            let first = len.min(0x1000 - (key.phys & 0xfff) as usize);
            vireo_x86::mmu::read_phys(&self.cpu, key.phys, &mut bytes[..first]);
            if let Some(p2) = page2 {
                vireo_x86::mmu::read_phys(&self.cpu, p2 << 12, &mut bytes[first..]);
            }
            let cs = &self.cpu.state.seg[sreg::CS];
            let bitness = if cs.l && self.cpu.state.long_mode() {
                64
            } else if cs.db {
                32
            } else {
                16
            };
            // The instructions the block holds (it may skip bytes after a jump).
            let mut text = String::new();
            for op in &block.ops {
                if let vireo_core::ir::Op::InsnStart { pc, len } = *op {
                    let at = pc.wrapping_sub(key.pc) as usize;
                    if let Some(b) = bytes.get(at..at + usize::from(len)) {
                        text.push_str(&crate::disas::block(b, pc, bitness));
                    }
                }
            }
            let warm = if warmup { ", warm-up: interpreted" } else { "" };
            log::trace!(target: LOG_IN_ASM, "IN: {:04x}:{:#x} (phys {:#x}, {} insns{warm})\n{}",
                cs.selector, key.pc, key.phys, block.insns, text.trim_end());
        }
        if log::log_enabled!(target: LOG_OP, log::Level::Trace) {
            log::trace!(target: LOG_OP, "OP:\n{block}");
        }
    }
}

/// The exit for an event that could not be delivered.
fn delivery_exit(e: DeliveryError) -> VcpuExit {
    match e {
        DeliveryError::TripleFault => VcpuExit::Shutdown,
        DeliveryError::Unsupported(why) => VcpuExit::Failed(format!("TCG: {why}")),
    }
}

impl Vcpu for TcgVcpu {
    fn run(&mut self) -> vireo_core::Result<VcpuExit> {
        if let Err(exit) = self.check_out() {
            return Ok(exit);
        }
        let exit = self.run_loop();
        self.check_in();
        if log::log_enabled!(target: "vireo::tcg", log::Level::Debug) {
            let (code, blocks, flushes, dropped, compiled, background) = self.with_code(|c, _| {
                (
                    c.jit.bytes_used(),
                    c.len(),
                    c.stats.flushes,
                    c.stats.invalidated,
                    c.stats.jit_compiled,
                    c.stats.jit_background,
                )
            });
            log::debug!(target: "vireo::tcg",
                "run: {exit:?} after {} insns, {} blocks ({} chained, {} of them in host code, {} by the jump cache, {} translated); cache: {blocks} blocks, {} KiB of host code, {compiled} compiled ({background} on the background compiler), {dropped} dropped by code writes, {flushes} flushes",
                self.insns(), self.stats.blocks, self.stats.chained, self.stats.jit_chained, self.stats.jcache_hits,
                self.stats.translations, code / 1024);
        }
        Ok(exit)
    }

    fn state(&mut self) -> vireo_core::Result<CpuState> {
        Ok(self.cpu.state())
    }

    /// Replaces the state and drops every translated block: whoever replaces the whole
    /// state (reset, snapshot) may have replaced memory too.
    fn set_state(&mut self, state: &CpuState) -> vireo_core::Result<()> {
        self.cpu.set_state(state.clone());
        self.flush_code();
        Ok(())
    }

    fn kicker(&self) -> Arc<dyn VcpuKicker> {
        self.signal.clone()
    }

    fn engine(&self) -> &'static str {
        "tcg"
    }

    fn phys_addr_bits(&self) -> u32 {
        self.cpu.cpuid.phys_bits
    }
}
