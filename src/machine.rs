//! Machine assembly: memory, buses, devices, firmware or kernel, and one engine.

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
use vireo_tcg::TcgVcpu;

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

/// A PC with one engine, ready to run.
pub struct Machine {
    // Fields drop in declaration order: the vCPU, the timer thread and the VM (none
    // under TCG) go before the guest memory they reference.
    vcpu: Box<dyn Vcpu>,
    _timers: TimerThread,
    _vm: Option<vireo_kvm::KvmVm>,
    /// COM1, for console input.
    com1: Option<Arc<Mutex<Serial>>>,
    control: Arc<MachineControl>,
    mem: Arc<GuestMemory>,
    /// What the CPU reaches (for the hybrid TCG engine).
    bus: SystemBus,
    /// TCG engine that runs single instructions KVM cannot (created on first need).
    hybrid: Option<TcgVcpu>,
    hybrid_steps: u64,
    config: MachineConfig,
    /// Devices a reset puts back in their power-up state.
    resets: Vec<Box<dyn Fn() + Send>>,
}

impl Machine {
    /// Builds the machine `config` describes.
    pub fn new(config: MachineConfig) -> Result<Machine> {
        if config.cpus != 1 {
            return Err(Error::usage("vireo runs 1 CPU for now"));
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
                let model = config.cpu_model.parse()?;
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
        let state = match &files {
            Some(f) => platform::load_kernel(&config, &mem, f, rsdp)?,
            None => CpuState::reset(),
        };

        let bus = SystemBus {
            mem: mem.clone(),
            pio: Arc::new(plat.pio),
            mmio: Arc::new(plat.mmio),
            a20,
        };
        let mut vcpu: Box<dyn Vcpu> = match (&vm, pic) {
            (Some(vm), _) => {
                Box::new(vm.create_vcpu(0, bus.pio.clone(), bus.mmio.clone(), control.clone())?)
            }
            (None, pic) => {
                let mut tcg = TcgVcpu::new(bus.clone(), control.clone());
                // An invariant TSC at the advertised frequency, following the virtual
                // clock (as the PIT and RTC do), so guests see consistent time.
                let clock = wiring.clock.clone();
                let hz = tcg.cpu().cpuid.tsc_hz;
                tcg.cpu().tsc_source = Some(Box::new(move || {
                    vireo_core::clock::ns_to_ticks(clock.now_ns(), hz)
                }));
                if let Some(bus) = apic_bus {
                    // CPU 0's local APIC (the BSP), its timer polled with the others.
                    let l = apic::shared(LocalApic::new(0, true, wiring.clock.clone(), hz));
                    l.lock().set_waker(wiring.waker.clone());
                    plat.timers.push(l.clone());
                    let l2 = l.clone();
                    plat.resets.push(Box::new(move || l2.lock().reset()));
                    tcg = tcg.with_apic(LapicHandle::attach(l, bus), pic);
                }
                Box::new(tcg)
            }
        };
        let mut state = state;
        if files.is_some() {
            // No firmware ran before a directly booted kernel: set what it would have.
            crate::boot::firmware_mtrrs(&mut state, vcpu.phys_addr_bits());
        }
        vcpu.set_state(&state)?;
        let kicker = vcpu.kicker();
        control.add_kick(Box::new(move || kicker.kick()));
        let timers = TimerThread::spawn(wiring.clock, wiring.waker, plat.timers)?;
        Ok(Machine {
            vcpu,
            _timers: timers,
            _vm: vm,
            com1: plat.com1,
            control,
            mem,
            bus,
            hybrid: None,
            hybrid_steps: 0,
            config,
            resets: plat.resets,
        })
    }

    /// The machine's stop control (for tests and signal handlers).
    pub fn control(&self) -> Arc<MachineControl> {
        self.control.clone()
    }

    /// Guest memory.
    pub fn memory(&self) -> &Arc<GuestMemory> {
        &self.mem
    }

    /// The vCPU (state inspection in tests).
    pub fn vcpu(&mut self) -> &mut dyn Vcpu {
        self.vcpu.as_mut()
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
            let exit = self.vcpu.run()?;
            log::debug!(target: "vireo::machine", "vcpu exit: {exit:?}");
            let reset = match exit {
                VcpuExit::Stopped => match self.control.stop_reason() {
                    Some(StopReason::PowerOff) => return Ok(Outcome::PowerOff),
                    Some(StopReason::DebugExit(s)) => return Ok(Outcome::DebugExit(s)),
                    Some(StopReason::Quit) => return Ok(Outcome::Quit),
                    Some(StopReason::Reset) => true,
                    None => false,
                },
                VcpuExit::Shutdown => {
                    log::info!(target: "vireo::machine", "triple fault");
                    true
                }
                VcpuExit::Halted => {
                    // Only an outside event can wake a CPU halted with no interrupt
                    // source: wait for a stop request.
                    while self.control.stop_reason().is_none() {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    false
                }
                VcpuExit::Unsupported(msg) => {
                    self.hybrid_step(&msg)?;
                    false
                }
                VcpuExit::Failed(msg) => {
                    let rip = self.vcpu.state().map(|s| s.rip).unwrap_or(0);
                    return Err(Error::Machine(format!(
                        "guest stopped: {msg} (rip {rip:#x})"
                    )));
                }
            };
            if reset {
                if self.config.no_reboot {
                    return Ok(Outcome::Reset);
                }
                self.reboot()?;
            }
        }
    }

    /// Hybrid execution: the engine (KVM) cannot execute the current instruction, so
    /// TCG executes exactly that one instruction on the same memory and buses, and the
    /// state goes back to the engine. Counters the guest reads for time (TSC) and the
    /// APIC base stay the engine's.
    fn hybrid_step(&mut self, why: &str) -> Result<()> {
        let before = self.vcpu.state()?;
        if self.hybrid.is_none() {
            log::info!(target: "vireo::machine",
                "hybrid execution: {why} at rip {:#x}; running it under TCG", before.rip);
            let mut tcg = TcgVcpu::new(self.bus.clone(), self.control.clone());
            tcg.set_max_block_insns(1);
            self.hybrid = Some(tcg);
        }
        let Some(tcg) = self.hybrid.as_mut() else {
            return Err(Error::Machine("hybrid engine missing".into()));
        };
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
        log::debug!(target: "vireo::machine", "hybrid step {}: {why}", self.hybrid_steps);
        Ok(())
    }

    /// Instructions run under TCG on behalf of KVM so far (hybrid execution).
    pub fn hybrid_steps(&self) -> u64 {
        self.hybrid_steps
    }

    /// A warm reboot: RAM cleared, tables and kernel written again, CPU reset.
    fn reboot(&mut self) -> Result<()> {
        log::info!(target: "vireo::machine", "reboot");
        self.mem.clear_ram();
        for r in &self.resets {
            r();
        }
        let rsdp = platform::write_tables(&self.config, &self.mem)?;
        let state = match platform::read_guest_files(&self.config)? {
            Some(f) => platform::load_kernel(&self.config, &self.mem, &f, rsdp)?,
            None => CpuState::reset(),
        };
        self.vcpu.set_state(&state)?;
        self.control.clear();
        Ok(())
    }
}
