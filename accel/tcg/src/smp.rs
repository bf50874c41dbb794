//! Several TCG vCPUs on one host thread, round-robin (QEMU's single-threaded TCG).
//!
//! The vCPUs of a [`RoundRobin`] group run one at a time, each for a time slice of
//! [`DEFAULT_SLICE`] guest instructions (counted, so the interleaving of guest code
//! does not depend on host timing), in a fixed order; a group of one runs without
//! slices. Because only one runs at a time,
//! every guest instruction is atomic with respect to the other vCPUs, and the group
//! shares one block cache and one code-page watch ([`SharedCode`]): code translated for
//! one CPU serves all, and a write by any CPU to a code page drops its blocks for all.
//! A vCPU takes the shared code for the length of its `run` (checked out) and gives it
//! back after.
//!
//! A vCPU gives way before its slice ends when it executes PAUSE (a spin-wait: the CPU
//! it waits for should run) and when it halts or waits for SIPI with nothing pending.
//! When no vCPU can run, the scheduler sleeps on the group's [`Doorbell`], which every
//! vCPU's [`Signal`](crate::irq::Signal) rings when an interrupt, a CPU event or a
//! kick arrives for it.

use crate::cache::BlockCache;
use crate::irq::Doorbell;
use crate::vcpu::{GroupMode, TcgVcpu};
use parking_lot::Mutex;
use std::sync::Arc;
use vireo_core::{MachineControl, Vcpu, VcpuExit};
use vireo_x86::mmu::CodeWatch;

/// Guest instructions a vCPU runs before the next one's turn (about a millisecond
/// with the interpreter).
pub const DEFAULT_SLICE: u64 = 20_000;

/// The block cache and code-page watch of a group.
#[derive(Default)]
pub struct SharedCode {
    pub cache: BlockCache,
    pub watch: CodeWatch,
}

/// Where a group keeps its [`SharedCode`] while no vCPU has it checked out.
pub type CodeShare = Arc<Mutex<Option<SharedCode>>>;

/// TCG vCPUs run round-robin on the calling thread.
pub struct RoundRobin {
    vcpus: Vec<TcgVcpu>,
    code: CodeShare,
    bell: Arc<Doorbell>,
    control: Arc<MachineControl>,
    slice: u64,
}

impl RoundRobin {
    /// An empty group stopped by `control`.
    pub fn new(control: Arc<MachineControl>) -> RoundRobin {
        RoundRobin {
            vcpus: Vec::new(),
            code: Arc::new(Mutex::new(Some(SharedCode::default()))),
            bell: Doorbell::new(),
            control,
            slice: DEFAULT_SLICE,
        }
    }

    /// Adds `vcpu` (its blocks are dropped: it uses the group's cache from now on);
    /// returns its index.
    pub fn add(&mut self, mut vcpu: TcgVcpu) -> usize {
        vcpu.signal().set_doorbell(self.bell.clone());
        vcpu.join_group(self.code.clone());
        self.vcpus.push(vcpu);
        // Giving way on PAUSE only helps when there is someone to give way to.
        let mode = GroupMode {
            yield_idle: true,
            yield_pause: self.vcpus.len() > 1,
        };
        for v in &mut self.vcpus {
            v.set_group_mode(mode);
        }
        self.vcpus.len() - 1
    }

    /// Compiles the group's blocks on a thread of their own ([`crate::compiler`];
    /// `true`) or in place, dropping every block.
    pub fn compile_in_background(&mut self, on: bool) -> std::io::Result<()> {
        match self.code.lock().as_mut() {
            Some(code) => {
                code.cache.flush(&mut code.watch);
                code.cache.compile_in_background(on)
            }
            None => Ok(()),
        }
    }

    /// Guest instructions per time slice (at least 1).
    pub fn set_slice(&mut self, insns: u64) {
        self.slice = insns.max(1);
    }

    /// Number of vCPUs.
    pub fn len(&self) -> usize {
        self.vcpus.len()
    }

    pub fn is_empty(&self) -> bool {
        self.vcpus.is_empty()
    }

    /// vCPU `i`.
    pub fn vcpu(&mut self, i: usize) -> Option<&mut TcgVcpu> {
        self.vcpus.get_mut(i)
    }

    /// All vCPUs, in scheduling order.
    pub fn vcpus(&mut self) -> &mut [TcgVcpu] {
        &mut self.vcpus
    }

    /// Makes every vCPU's TSC equal to vCPU 0's, as when the CPUs leave RESET
    /// together. (Setting each state's TSC separately reads the clock at slightly
    /// different times; Linux measures the difference as a TSC warp between CPUs and
    /// stops trusting the TSC.)
    pub fn align_tsc(&mut self) {
        let Some(first) = self.vcpus.first_mut() else {
            return;
        };
        let offset = first.cpu().msrs.tsc_offset;
        for v in &mut self.vcpus[1..] {
            v.cpu().msrs.tsc_offset = offset;
        }
    }

    /// Runs the group until a stop is requested ([`VcpuExit::Stopped`]), a vCPU
    /// triple-faults ([`VcpuExit::Shutdown`]) or fails, or no vCPU can ever run again
    /// ([`VcpuExit::Halted`]: all halted with nothing that could wake them).
    pub fn run(&mut self) -> vireo_core::Result<VcpuExit> {
        loop {
            if self.control.stop_reason().is_some() {
                return Ok(VcpuExit::Stopped);
            }
            // Read before looking at the vCPUs: a wake-up from here on is not lost.
            let seen = self.bell.count();
            let mut progress = false;
            let mut wakeable = false;
            // A lone vCPU has no one to give way to: no slices (each end of one
            // costs a return from `run`).
            let slice = if self.vcpus.len() > 1 {
                self.slice
            } else {
                u64::MAX
            };
            for (i, v) in self.vcpus.iter_mut().enumerate() {
                let before = v.insns();
                v.set_insn_limit(Some(before.saturating_add(slice)));
                let exit = v.run()?;
                match exit {
                    VcpuExit::Stopped => {
                        if self.control.stop_reason().is_some() {
                            return Ok(VcpuExit::Stopped);
                        }
                        progress = true;
                    }
                    VcpuExit::Halted => wakeable |= v.wakeable(),
                    VcpuExit::Shutdown => {
                        log::info!(target: "vireo::tcg", "CPU {i}: triple fault");
                        return Ok(VcpuExit::Shutdown);
                    }
                    VcpuExit::Failed(m) | VcpuExit::Unsupported(m) => {
                        return Ok(VcpuExit::Failed(format!("CPU {i}: {m}")));
                    }
                }
                progress |= v.insns() != before;
            }
            if !progress {
                if !wakeable {
                    return Ok(VcpuExit::Halted);
                }
                self.bell.wait_past(seen);
            }
        }
    }
}
