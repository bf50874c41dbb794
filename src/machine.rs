//! Machine assembly: memory, buses, devices, firmware or kernel, and the vCPUs of one
//! engine.
//!
//! The vCPUs run as the engine wants them to: under KVM each on its own thread for
//! the length of a run (until a stop request), under TCG round-robin on the calling
//! thread ([`RoundRobin`]). A triple fault or reset request on any CPU resets the
//! whole machine; CPU 0 is the bootstrap processor, the others wait for INIT/SIPI.

use crate::config::{Accel, MachineConfig};
use crate::error::{Error, Result};
use crate::platform::{self, Wiring};
use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use vireo_core::clock::{TimerDevice, TimerWaker};
use vireo_core::{
    A20Gate, CpuState, GuestMemory, IrqChip, MachineControl, StopReason, SystemBus, Vcpu, VcpuExit,
    VirtualClock,
};
use vireo_devices::apic::{self, ApicBus, ApicIrqRouter, Ioapic, LapicHandle, LocalApic};
use vireo_devices::pic::{PicPair, SharedPic};
use vireo_devices::serial::Serial;
use vireo_tcg::{RoundRobin, TcgVcpu};

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// ACPI power-off (or Ctrl-A X): status 0.
    PowerOff,
    /// isa-debug-exit with this process status.
    DebugExit(i32),
    /// The user quit.
    Quit,
    /// Reset or triple fault with `-no-reboot`.
    Reset,
}

impl Outcome {
    /// The process exit status QEMU would use.
    pub fn exit_status(self) -> i32 {
        match self {
            Outcome::PowerOff | Outcome::Quit | Outcome::Reset => 0,
            Outcome::DebugExit(s) => s,
        }
    }
}

/// A timer thread that polls time-driven devices at their deadlines.
struct TimerThread {
    stop: Arc<AtomicBool>,
    waker: Arc<TimerWaker>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl TimerThread {
    fn spawn(
        clock: Arc<VirtualClock>,
        waker: Arc<TimerWaker>,
        devices: Vec<Arc<Mutex<dyn TimerDevice>>>,
    ) -> Result<TimerThread> {
        let stop = Arc::new(AtomicBool::new(false));
        let (s, w) = (stop.clone(), waker.clone());
        let handle = std::thread::Builder::new()
            .name("vireo-timers".into())
            .spawn(move || {
                while !s.load(Ordering::Acquire) {
                    let now = clock.now_ns();
                    let next = devices
                        .iter()
                        .filter_map(|d| d.lock().poll_timer(now))
                        .min();
                    let timeout =
                        next.map(|t| Duration::from_nanos(t.saturating_sub(clock.now_ns())));
                    w.wait(timeout);
                }
            })
            .map_err(|e| Error::Machine(format!("cannot start the timer thread: {e}")))?;
        Ok(TimerThread {
            stop,
            waker,
            handle: Some(handle),
        })
    }
}

impl Drop for TimerThread {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.waker.wake();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// The vCPUs of the machine.
enum Cpus {
    /// KVM: one host thread per vCPU while the machine runs.
    Threads(Vec<VcpuRunner>),
    /// TCG: every vCPU on the calling thread, round-robin.
    RoundRobin(RoundRobin),
}

/// A vCPU of a threaded engine (KVM), with the TCG engine that runs the single
/// instructions it cannot (hybrid execution, created on first need).
struct VcpuRunner {
    index: usize,
    vcpu: Box<dyn Vcpu>,
    hybrid: Option<TcgVcpu>,
    hybrid_steps: u64,
}

/// Stack of a vCPU thread (reserved, touched as used).
const VCPU_STACK: usize = 16 << 20;

/// A PC with one engine, ready to run.
pub struct Machine {
    // Fields drop in declaration order: the vCPUs, the timer thread and the VM (none
    // under TCG) go before the guest memory they reference.
    cpus: Cpus,
    _timers: TimerThread,
    _vm: Option<vireo_kvm::KvmVm>,
    /// COM1, for console input.
    com1: Option<Arc<Mutex<Serial>>>,
    control: Arc<MachineControl>,
    mem: Arc<GuestMemory>,
    /// What the CPU reaches (for the hybrid TCG engine).
    bus: SystemBus,
    /// MAXPHYADDR of the vCPUs (MTRR masks of a direct kernel boot).
    phys_bits: u32,
    config: MachineConfig,
    /// Devices a reset puts back in their power-up state.
    resets: Vec<Box<dyn Fn() + Send>>,
}

/// Most vCPUs a machine may have: APIC IDs 0..N-1 and the IOAPIC's ID N must fit the
/// 8-bit xAPIC ID space below the broadcast ID 0xFF.
pub const MAX_CPUS: u32 = 254;

impl Machine {
    /// Builds the machine `config` describes.
    pub fn new(config: MachineConfig) -> Result<Machine> {
        if config.cpus == 0 || config.cpus > MAX_CPUS {
            return Err(Error::usage(format!(
                "-smp {}: expected 1 to {MAX_CPUS} CPUs",
                config.cpus
            )));
        }
        // Read the guest files first: a missing kernel is reported before anything
        // heavier happens.
        let files = platform::read_guest_files(&config)?;

        let mem = Arc::new(GuestMemory::new(config.ram_size)?);
        mem.load_rom(vireo_bios::FIRMWARE)?;
        let control = MachineControl::new();

        let a20 = A20Gate::new();
        // The engine's interrupt controller: KVM's in-kernel irqchip, or for TCG the
        // userspace 8259A pair and IOAPIC behind the PC GSI router (the platform puts
        // them on the buses), with a local APIC per CPU on one APIC bus.
        let mut apic_bus = None;
        let (vm, irq, pic, ioapic): (
            Option<vireo_kvm::KvmVm>,
            Arc<dyn IrqChip>,
            Option<SharedPic>,
            Option<apic::SharedIoapic>,
        ) = match config.accel {
            Accel::Kvm => {
                let model = config.cpu_model.as_deref().unwrap_or("host").parse()?;
                let vm = vireo_kvm::KvmVm::new(
                    &mem,
                    vireo_kvm::VmConfig {
                        cpu_model: model,
                        cpus: config.cpus,
                    },
                )?;
                let irq = vm.irq_chip();
                (Some(vm), irq, None, None)
            }
            Accel::Tcg => {
                let pic = PicPair::new_shared();
                let bus = ApicBus::new();
                // The IOAPIC's ID follows the CPUs' (as the MADT says).
                let io = Ioapic::attach(config.cpus as u8, &bus);
                apic_bus = Some(bus);
                let router = ApicIrqRouter::new(pic.clone(), io.clone());
                (None, Arc::new(router), Some(pic), Some(io))
            }
        };
        let wiring = Wiring {
            mem: mem.clone(),
            irq,
            clock: VirtualClock::host(),
            waker: TimerWaker::new(),
            control: control.clone(),
            a20: a20.clone(),
            pic: pic.clone(),
            ioapic,
        };
        let mut plat = platform::build(&config, &wiring, files.as_ref())?;
        let rsdp = platform::write_tables(&config, &mem)?;
        let boot_state = match &files {
            Some(f) => platform::load_kernel(&config, &mem, f, rsdp)?,
            None => CpuState::reset(),
        };

        let bus = SystemBus {
            mem: mem.clone(),
            pio: Arc::new(plat.pio),
            mmio: Arc::new(plat.mmio),
            a20,
        };
        let mut cpus = match &vm {
            Some(vm) => {
                let mut runners = Vec::new();
                for i in 0..config.cpus {
                    let v =
                        vm.create_vcpu(i, bus.pio.clone(), bus.mmio.clone(), control.clone())?;
                    runners.push(VcpuRunner {
                        index: i as usize,
                        vcpu: Box::new(v),
                        hybrid: None,
                        hybrid_steps: 0,
                    });
                }
                Cpus::Threads(runners)
            }
            None => {
                let model = tcg_model(config.cpu_model.as_deref())?;
                if config.perfmap {
                    vireo_tcg::perfmap::enable();
                }
                let mut rr = RoundRobin::new(control.clone());
                for i in 0..config.cpus {
                    let mut tcg = TcgVcpu::new(bus.clone(), control.clone());
                    tcg.set_backend(config.tcg_backend);
                    tcg.set_warmup(config.tcg_warmup);
                    tcg.cpu().cpuid = model.clone();
                    // An invariant TSC at the advertised frequency, following the
                    // virtual clock (as the PIT and RTC do), so guests see consistent
                    // time on every CPU.
                    let clock = wiring.clock.clone();
                    // Every vCPU runs on this thread: guest time may stand still while
                    // one of them translates.
                    tcg.hold_clock_while_translating(clock.clone());
                    let hz = tcg.cpu().cpuid.tsc_hz;
                    tcg.cpu().tsc_source = Some(Box::new(move || {
                        vireo_core::clock::ns_to_ticks(clock.now_ns(), hz)
                    }));
                    if let Some(bus) = &apic_bus {
                        // CPU i's local APIC (APIC ID i; CPU 0 is the BSP), its timer
                        // polled with the other timers. The 8259A pair is wired to
                        // the BSP's LINT0 only, where virtual-wire mode uses it.
                        let l = apic::shared(LocalApic::new(i, i == 0, wiring.clock.clone(), hz));
                        l.lock().set_waker(wiring.waker.clone());
                        plat.timers.push(l.clone());
                        let l2 = l.clone();
                        plat.resets.push(Box::new(move || l2.lock().reset()));
                        let pic = if i == 0 { pic.clone() } else { None };
                        tcg = tcg.with_apic(LapicHandle::attach(l, bus.clone()), pic);
                    }
                    rr.add(tcg);
                }
                if config.tcg_compile_thread && config.tcg_backend == vireo_tcg::Backend::Jit {
                    rr.compile_in_background(true).map_err(|e| {
                        Error::Machine(format!("cannot start the compiler thread: {e}"))
                    })?;
                }
                Cpus::RoundRobin(rr)
            }
        };
        let phys_bits = match &mut cpus {
            Cpus::Threads(r) => r.first().map(|r| r.vcpu.phys_addr_bits()),
            Cpus::RoundRobin(rr) => rr.vcpu(0).map(|v| v.phys_addr_bits()),
        }
        .unwrap_or(36);
        for kicker in kickers(&mut cpus) {
            control.add_kick(Box::new(move || kicker.kick()));
        }
        let timers = TimerThread::spawn(wiring.clock, wiring.waker, plat.timers)?;
        let mut m = Machine {
            cpus,
            _timers: timers,
            _vm: vm,
            com1: plat.com1,
            control,
            mem,
            bus,
            phys_bits,
            config,
            resets: plat.resets,
        };
        m.set_boot_states(boot_state, files.is_some())?;
        Ok(m)
    }

    /// Puts every CPU in its power-up state: the BSP in `boot` (the reset state, or
    /// the entry state of a directly loaded kernel), the others waiting for SIPI.
    /// Without firmware (`direct`), the MTRRs are set on all CPUs as firmware would.
    fn set_boot_states(&mut self, boot: CpuState, direct: bool) -> Result<()> {
        let phys_bits = self.phys_bits;
        let state = |i: usize| {
            let mut s = if i == 0 {
                boot.clone()
            } else {
                CpuState::reset_ap()
            };
            if direct {
                // No firmware ran before a directly booted kernel: set what it would
                // have (on every CPU, as SeaBIOS does, so they agree).
                crate::boot::firmware_mtrrs(&mut s, phys_bits);
            }
            s
        };
        match &mut self.cpus {
            Cpus::Threads(runners) => {
                for r in runners {
                    r.vcpu.set_state(&state(r.index))?;
                }
            }
            Cpus::RoundRobin(rr) => {
                for (i, v) in rr.vcpus().iter_mut().enumerate() {
                    v.set_state(&state(i))?;
                }
                rr.align_tsc();
            }
        }
        Ok(())
    }

    /// The machine's stop control (for tests and signal handlers).
    pub fn control(&self) -> Arc<MachineControl> {
        self.control.clone()
    }

    /// Guest memory.
    pub fn memory(&self) -> &Arc<GuestMemory> {
        &self.mem
    }

    /// Number of vCPUs.
    pub fn cpu_count(&self) -> usize {
        match &self.cpus {
            Cpus::Threads(r) => r.len(),
            Cpus::RoundRobin(rr) => rr.len(),
        }
    }

    /// The architectural state of CPU `i` (tests and debugging; call while the
    /// machine is not running).
    pub fn cpu_state(&mut self, i: usize) -> Result<CpuState> {
        let missing = || Error::Machine(format!("no CPU {i}"));
        Ok(match &mut self.cpus {
            Cpus::Threads(r) => r.get_mut(i).ok_or_else(missing)?.vcpu.state()?,
            Cpus::RoundRobin(rr) => rr.vcpu(i).ok_or_else(missing)?.state()?,
        })
    }

    /// Forwards the terminal to COM1 (when COM1 is on stdio).
    pub fn attach_stdin(&self) {
        if let Some(s) = &self.com1 {
            crate::console::spawn_stdin(s.clone(), self.control.clone());
        }
    }

    /// Runs the guest until it powers off, exits through isa-debug-exit, or resets with
    /// `-no-reboot`.
    pub fn run(&mut self) -> Result<Outcome> {
        loop {
            match &mut self.cpus {
                Cpus::Threads(runners) => run_threads(runners, &self.control, &self.bus)?,
                Cpus::RoundRobin(rr) => {
                    let exit = rr.run()?;
                    log::debug!(target: "vireo::machine", "vcpus exit: {exit:?}");
                    settle(exit, &self.control)?;
                }
            }
            match self.control.stop_reason() {
                Some(StopReason::PowerOff) => return Ok(Outcome::PowerOff),
                Some(StopReason::DebugExit(s)) => return Ok(Outcome::DebugExit(s)),
                Some(StopReason::Quit) => return Ok(Outcome::Quit),
                Some(StopReason::Reset) => {
                    if self.config.no_reboot {
                        return Ok(Outcome::Reset);
                    }
                    self.reboot()?;
                }
                // The engine returned without a stop request (a stale kick): go on.
                None => {}
            }
        }
    }

    /// Instructions run under TCG on behalf of KVM so far (hybrid execution), over
    /// all vCPUs.
    pub fn hybrid_steps(&self) -> u64 {
        match &self.cpus {
            Cpus::Threads(r) => r.iter().map(|r| r.hybrid_steps).sum(),
            Cpus::RoundRobin(_) => 0,
        }
    }

    /// A warm reboot: RAM cleared, tables and kernel written again, CPUs reset.
    fn reboot(&mut self) -> Result<()> {
        log::info!(target: "vireo::machine", "reboot");
        self.mem.clear_ram();
        for r in &self.resets {
            r();
        }
        let rsdp = platform::write_tables(&self.config, &self.mem)?;
        let files = platform::read_guest_files(&self.config)?;
        let boot = match &files {
            Some(f) => platform::load_kernel(&self.config, &self.mem, f, rsdp)?,
            None => CpuState::reset(),
        };
        self.set_boot_states(boot, files.is_some())?;
        self.control.clear();
        Ok(())
    }
}

/// The TCG CPUID model `-cpu` names (`max` by default).
fn tcg_model(name: Option<&str>) -> Result<vireo_x86::cpuid::CpuidModel> {
    let name = name.unwrap_or("max");
    vireo_x86::cpuid::CpuidModel::named(name).ok_or_else(|| {
        let known: Vec<&str> = vireo_x86::cpuid::MODELS.iter().map(|m| m.0).collect();
        if name == "host" {
            Error::usage(format!(
                "-cpu host: the host CPU model needs -accel kvm (TCG has {})",
                known.join(", ")
            ))
        } else {
            Error::usage(format!(
                "-cpu {name}: not a TCG model ({})",
                known.join(", ")
            ))
        }
    })
}

/// The kick handles of every vCPU.
fn kickers(cpus: &mut Cpus) -> Vec<Arc<dyn vireo_core::VcpuKicker>> {
    match cpus {
        Cpus::Threads(r) => r.iter().map(|r| r.vcpu.kicker()).collect(),
        Cpus::RoundRobin(rr) => rr.vcpus().iter().map(|v| v.kicker()).collect(),
    }
}

/// Turns an engine exit into a stop request (or an error): a triple fault resets the
/// machine; a CPU that can never wake again waits for an outside stop (the user,
/// a signal).
fn settle(exit: VcpuExit, control: &MachineControl) -> Result<()> {
    match exit {
        VcpuExit::Stopped => {}
        VcpuExit::Shutdown => {
            log::info!(target: "vireo::machine", "triple fault");
            control.request_stop(StopReason::Reset);
        }
        VcpuExit::Halted => {
            while control.stop_reason().is_none() {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        VcpuExit::Unsupported(msg) | VcpuExit::Failed(msg) => {
            return Err(Error::Machine(format!("guest stopped: {msg}")));
        }
    }
    Ok(())
}

/// Runs each vCPU on its own thread until a stop is requested. The first error any
/// of them meets stops the others and is returned.
fn run_threads(
    runners: &mut [VcpuRunner],
    control: &Arc<MachineControl>,
    bus: &SystemBus,
) -> Result<()> {
    let failure: Mutex<Option<Error>> = Mutex::new(None);
    let fail = |e: Error| {
        failure.lock().get_or_insert(e);
        control.request_stop(StopReason::Quit);
    };
    std::thread::scope(|scope| {
        for r in runners.iter_mut() {
            let name = format!("vireo-cpu{}", r.index);
            let fail = &fail;
            let spawned = std::thread::Builder::new()
                .name(name)
                // A vCPU thread may build a TCG CPU (hybrid execution under KVM),
                // whose fast TLB is ~200 KiB inline: room for it and its moves.
                .stack_size(VCPU_STACK)
                .spawn_scoped(scope, move || {
                    if let Err(e) = r.run_until_stop(control, bus) {
                        fail(e);
                    }
                });
            if let Err(e) = spawned {
                fail(Error::Machine(format!("cannot start a vCPU thread: {e}")));
            }
        }
    });
    match failure.into_inner() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

impl VcpuRunner {
    /// Runs the vCPU, serving the exits it cannot serve itself, until a stop is
    /// requested.
    fn run_until_stop(&mut self, control: &Arc<MachineControl>, bus: &SystemBus) -> Result<()> {
        loop {
            let exit = self.vcpu.run()?;
            log::debug!(target: "vireo::machine", "CPU {} exit: {exit:?}", self.index);
            match exit {
                VcpuExit::Unsupported(msg) => self.hybrid_step(&msg, control, bus)?,
                VcpuExit::Failed(msg) => {
                    let rip = self.vcpu.state().map(|s| s.rip).unwrap_or(0);
                    return Err(Error::Machine(format!(
                        "guest stopped: CPU {}: {msg} (rip {rip:#x})",
                        self.index
                    )));
                }
                other => settle(other, control)?,
            }
            if control.stop_reason().is_some() {
                return Ok(());
            }
        }
    }

    /// Hybrid execution: the engine (KVM) cannot execute the current instruction, so
    /// TCG executes exactly that one instruction on the same memory and buses, and the
    /// state goes back to the engine. Counters the guest reads for time (TSC) and the
    /// APIC base stay the engine's.
    fn hybrid_step(
        &mut self,
        why: &str,
        control: &Arc<MachineControl>,
        bus: &SystemBus,
    ) -> Result<()> {
        let before = self.vcpu.state()?;
        let index = self.index;
        let tcg = self.hybrid.get_or_insert_with(|| {
            log::info!(target: "vireo::machine",
                "hybrid execution on CPU {index}: {why} at rip {:#x}; running it under TCG", before.rip);
            let mut tcg = TcgVcpu::new(bus.clone(), control.clone());
            tcg.set_max_block_insns(1);
            tcg
        });
        tcg.set_state(&before)?;
        tcg.set_insn_limit(Some(tcg.insns() + 1));
        match tcg.run()? {
            VcpuExit::Stopped | VcpuExit::Halted => {}
            VcpuExit::Shutdown => {
                return Err(Error::Machine(format!(
                    "guest stopped: triple fault in the instruction KVM could not run ({why})"
                )))
            }
            VcpuExit::Unsupported(m) | VcpuExit::Failed(m) => {
                return Err(Error::Machine(format!(
                    "guest stopped: {why}, and TCG cannot run it either: {m} (rip {:#x})",
                    before.rip
                )))
            }
        }
        let mut after = tcg.state()?;
        after.msr.tsc = before.msr.tsc;
        after.msr.apic_base = before.msr.apic_base;
        self.vcpu.set_state(&after)?;
        self.hybrid_steps += 1;
        log::debug!(target: "vireo::machine", "CPU {index}: hybrid step {}: {why}", self.hybrid_steps);
        Ok(())
    }
}
