//! Running a lockstep setup on an engine and comparing the results.

use super::env::{decode_stop, Mode, Setup, Stop, DATA, DATA_LEN, MEM_SIZE, STOP_PORT, USTACK_TOP};
use parking_lot::{Condvar, Mutex};
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};
use vireo_core::cpu::{CpuState, FpuState};
use vireo_core::{
    A20Gate, Bus, BusDevice, GuestMemory, MachineControl, StopReason, Vcpu, VcpuExit, VcpuKicker,
};

/// How a run ended, as far as the comparison cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub state: CpuState,
    /// The exception that ended the sequence (`None` after a shutdown).
    pub stop: Option<Stop>,
    /// The data page after the run.
    pub data: Vec<u8>,
    /// The user stack page after the run (user-mode pushes land there; the kernel
    /// stack also holds the exception frame and is not compared as a whole).
    pub stack: Vec<u8>,
    /// The run ended in a triple fault.
    pub shutdown: bool,
}

/// Why a run could not be compared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunError {
    /// The engine gave up (for KVM on this host: its instruction emulator lacks the
    /// instruction): a known limitation, not a divergence.
    EngineLimit(String),
    /// Anything else.
    Other(String),
}

struct StopPort(Arc<MachineControl>);

impl BusDevice for StopPort {
    fn name(&self) -> &str {
        "lockstep-stop"
    }
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }
    fn write(&mut self, _offset: u64, _data: &[u8]) {
        self.0.request_stop(StopReason::Quit);
    }
}

/// Wall-clock time a run may take before the watchdog stops it.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(2);

/// The watchdog's shared state: the deadline of the run in progress.
#[derive(Default)]
struct WatchState {
    /// `Some(deadline)` while a run is armed.
    deadline: Option<Instant>,
    /// The armed run passed its deadline and its vCPU was kicked.
    fired: bool,
    /// The engine is gone: the thread ends.
    quit: bool,
}

/// A thread that kicks the vCPU of a run that outlives its deadline, so that a guest
/// (or engine) that never stops is reported as a timeout instead of hanging the
/// campaign. One thread per engine, armed and disarmed around every run.
struct Watchdog {
    shared: Arc<(Mutex<WatchState>, Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watchdog {
    fn new(kicker: Arc<dyn VcpuKicker>) -> Watchdog {
        let shared = Arc::new((Mutex::new(WatchState::default()), Condvar::new()));
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("lockstep-watchdog".into())
            .spawn(move || {
                let (lock, cv) = &*s;
                let mut st = lock.lock();
                while !st.quit {
                    match st.deadline {
                        Some(d) if !st.fired && Instant::now() >= d => {
                            st.fired = true;
                            kicker.kick();
                        }
                        Some(d) if !st.fired => {
                            cv.wait_until(&mut st, d);
                        }
                        _ => cv.wait(&mut st),
                    }
                }
            })
            .ok();
        Watchdog { shared, thread }
    }

    /// Starts watching a run that may take `timeout`.
    fn arm(&self, timeout: Duration) {
        let (lock, cv) = &*self.shared;
        let mut st = lock.lock();
        st.deadline = Some(Instant::now() + timeout);
        st.fired = false;
        cv.notify_all();
    }

    /// Stops watching; returns whether the run timed out (its vCPU was kicked).
    fn disarm(&self) -> bool {
        let (lock, _) = &*self.shared;
        let mut st = lock.lock();
        st.deadline = None;
        std::mem::take(&mut st.fired)
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        {
            let (lock, cv) = &*self.shared;
            lock.lock().quit = true;
            cv.notify_all();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Which engine an [`Engine`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineKind {
    /// The host's KVM.
    Kvm,
    /// TCG with the IR interpreter.
    Tcg,
    /// TCG with the x86-64 JIT backend.
    TcgJit,
}

/// A vCPU of either engine on a small flat machine with the stop port.
pub struct Engine {
    pub name: &'static str,
    pub kind: EngineKind,
    mem: Arc<GuestMemory>,
    control: Arc<MachineControl>,
    vcpu: Box<dyn Vcpu>,
    _vm: Option<vireo_kvm::KvmVm>,
    watchdog: Watchdog,
    /// A run timed out: the vCPU may hold a stale kick, so the next run rebuilds the
    /// engine.
    stale: bool,
}

fn buses(control: &Arc<MachineControl>) -> Result<(Arc<Bus>, Arc<Bus>), String> {
    let mut pio = Bus::new("pio");
    pio.insert(
        u64::from(STOP_PORT),
        1,
        Arc::new(Mutex::new(StopPort(control.clone()))),
    )
    .map_err(|e| e.to_string())?;
    Ok((Arc::new(pio), Arc::new(Bus::new("mmio"))))
}

impl Engine {
    /// A KVM vCPU.
    pub fn kvm() -> Result<Engine, String> {
        let mem = Arc::new(GuestMemory::new_flat(MEM_SIZE).map_err(|e| e.to_string())?);
        let control = MachineControl::new();
        let vm = vireo_kvm::KvmVm::new(
            &mem,
            vireo_kvm::VmConfig {
                cpu_model: vireo_kvm::CpuModel::Host,
                cpus: 1,
            },
        )
        .map_err(|e| e.to_string())?;
        let (pio, mmio) = buses(&control)?;
        let vcpu = vm
            .create_vcpu(0, pio, mmio, control.clone())
            .map_err(|e| e.to_string())?;
        let watchdog = Watchdog::new(vcpu.kicker());
        Ok(Engine {
            name: "kvm",
            kind: EngineKind::Kvm,
            mem,
            control,
            vcpu: Box::new(vcpu),
            _vm: Some(vm),
            watchdog,
            stale: false,
        })
    }

    /// A TCG vCPU (IR interpreter backend).
    pub fn tcg() -> Result<Engine, String> {
        Engine::tcg_with(vireo_tcg::Backend::Interp)
    }

    /// A TCG vCPU running its blocks with the x86-64 JIT backend.
    pub fn tcg_jit() -> Result<Engine, String> {
        Engine::tcg_with(vireo_tcg::Backend::Jit)
    }

    /// A TCG vCPU with `backend`.
    fn tcg_with(backend: vireo_tcg::Backend) -> Result<Engine, String> {
        let mem = Arc::new(GuestMemory::new_flat(MEM_SIZE).map_err(|e| e.to_string())?);
        let control = MachineControl::new();
        let (pio, mmio) = buses(&control)?;
        let bus = vireo_core::SystemBus {
            mem: mem.clone(),
            pio,
            mmio,
            a20: A20Gate::new(),
        };
        let mut vcpu = vireo_tcg::TcgVcpu::new(bus, control.clone());
        vcpu.set_backend(backend);
        // Every block compiled (no interpreted warm-up): the JIT's code is what is
        // compared, and most test programs run once.
        vcpu.set_warmup(0);
        // As `Machine` does: a stop request (the stop port) kicks the run loop, which
        // returns at the next block boundary. (KVM's loop reads the stop request after
        // every exit; a self-kick there would linger into the next run.)
        let kicker = vcpu.kicker();
        control.add_kick(Box::new(move || kicker.kick()));
        let watchdog = Watchdog::new(vcpu.kicker());
        let (name, kind) = match backend {
            vireo_tcg::Backend::Interp => ("tcg", EngineKind::Tcg),
            vireo_tcg::Backend::Jit => ("jit", EngineKind::TcgJit),
        };
        Ok(Engine {
            name,
            kind,
            mem,
            control,
            vcpu: Box::new(vcpu),
            _vm: None,
            watchdog,
            stale: false,
        })
    }

    /// A fresh engine of `kind`.
    pub fn new(kind: EngineKind) -> Result<Engine, String> {
        match kind {
            EngineKind::Kvm => Engine::kvm(),
            EngineKind::Tcg => Engine::tcg(),
            EngineKind::TcgJit => Engine::tcg_jit(),
        }
    }

    /// Runs `setup` to its stop.
    pub fn run(&mut self, mode: Mode, setup: &Setup) -> Result<Outcome, RunError> {
        let other = |e: vireo_core::Error| RunError::Other(e.to_string());
        if self.stale {
            *self = Engine::new(self.kind).map_err(RunError::Other)?;
        }
        if setup.clear >= self.mem.ram_size() {
            self.mem.clear_ram();
        } else if setup.clear > 0 {
            let zeros = vec![0u8; setup.clear as usize];
            self.mem.write(0, &zeros).map_err(other)?;
        }
        for (addr, bytes) in &setup.memory {
            self.mem.write(*addr, bytes).map_err(other)?;
        }
        self.control.clear();
        self.vcpu.set_state(&setup.state).map_err(other)?;
        self.watchdog.arm(RUN_TIMEOUT);
        let exit = self.vcpu.run();
        if self.watchdog.disarm() {
            self.stale = true;
            return Err(RunError::Other("timeout".into()));
        }
        let shutdown = match exit.map_err(other)? {
            VcpuExit::Stopped => false,
            VcpuExit::Shutdown => true,
            // The stub's `hlt` after its port write: TCG runs both in one block.
            VcpuExit::Halted if self.control.stop_reason().is_some() => false,
            VcpuExit::Halted => return Err(RunError::Other("halted".into())),
            VcpuExit::Failed(msg) | VcpuExit::Unsupported(msg) => {
                return Err(RunError::EngineLimit(msg))
            }
        };
        let state = self.vcpu.state().map_err(other)?;
        let mem = &self.mem;
        let stop = if shutdown {
            None
        } else {
            decode_stop(mode, setup, &state, |a, n| mem.read_le(a, n).ok())
        };
        let mut data = vec![0u8; DATA_LEN as usize];
        self.mem.read(DATA, &mut data).map_err(other)?;
        let mut stack = vec![0u8; 0x1000];
        self.mem
            .read(USTACK_TOP - 0x1000, &mut stack)
            .map_err(other)?;
        Ok(Outcome {
            state,
            stop,
            data,
            stack,
            shutdown,
        })
    }
}

/// The general-purpose registers as differences name them, in `CpuState::gpr` order.
pub const GPR_NAMES: [&str; 16] = [
    "rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12", "r13",
    "r14", "r15",
];

/// What a comparison leaves out: what the sequence left undefined, and bytes of the
/// data page that hold state not compared.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ignore {
    /// Arithmetic flags (RFLAGS bits) left undefined.
    pub flags: u64,
    /// x87 condition codes (FSW bits C0-C3) left undefined.
    pub fsw: u16,
    /// Data-page byte ranges not compared (see [`super::fp::uncompared_bytes`]).
    pub data: Vec<Range<usize>>,
}

impl Ignore {
    /// Only the undefined arithmetic flags `flags`.
    pub fn flags(flags: u64) -> Ignore {
        Ignore {
            flags,
            ..Ignore::default()
        }
    }
}

/// Differences of the x87/MMX/SSE state (see [`super::fp`] for what is compared).
fn compare_fpu(a: &FpuState, b: &FpuState, fsw_undefined: u16, d: &mut Vec<String>) {
    if a.fcw != b.fcw {
        d.push(format!("fcw {:#06x} vs {:#06x}", a.fcw, b.fcw));
    }
    let m = !fsw_undefined;
    if a.fsw & m != b.fsw & m {
        d.push(format!(
            "fsw {:#06x} vs {:#06x} (undefined {fsw_undefined:#06x})",
            a.fsw, b.fsw
        ));
    }
    if a.ftw != b.ftw {
        d.push(format!("ftw {:#04x} vs {:#04x}", a.ftw, b.ftw));
    }
    let f80 = |s: &[u8; 16]| {
        let mut v = [0u8; 16];
        v[..10].copy_from_slice(&s[..10]);
        u128::from_le_bytes(v)
    };
    for (i, (x, y)) in a.st.iter().zip(&b.st).enumerate() {
        if f80(x) != f80(y) {
            d.push(format!("st{i} {:#022x} vs {:#022x}", f80(x), f80(y)));
        }
    }
    if a.mxcsr != b.mxcsr {
        d.push(format!("mxcsr {:#06x} vs {:#06x}", a.mxcsr, b.mxcsr));
    }
    for (i, (x, y)) in a.xmm.iter().zip(&b.xmm).enumerate() {
        if x != y {
            d.push(format!(
                "xmm{i} {:#034x} vs {:#034x}",
                u128::from_le_bytes(*x),
                u128::from_le_bytes(*y)
            ));
        }
    }
    if a.ymmh != b.ymmh {
        d.push("ymm upper halves differ".into());
    }
}

/// Differences between two outcomes, leaving out what `ignore` names.
pub fn compare(a: &Outcome, b: &Outcome, ignore: &Ignore) -> Vec<String> {
    let undefined_flags = ignore.flags;
    let mut d = Vec::new();
    if a.shutdown != b.shutdown {
        d.push(format!("shutdown {} vs {}", a.shutdown, b.shutdown));
        return d;
    }
    for (i, name) in GPR_NAMES.iter().enumerate() {
        if a.state.gpr[i] != b.state.gpr[i] {
            d.push(format!(
                "{name} {:#x} vs {:#x}",
                a.state.gpr[i], b.state.gpr[i]
            ));
        }
    }
    match (&a.stop, &b.stop) {
        (Some(x), Some(y)) => {
            if x.vector != y.vector {
                d.push(format!("exception #{} vs #{}", x.vector, y.vector));
            } else {
                if x.error_code != y.error_code {
                    d.push(format!(
                        "error code {:?} vs {:?}",
                        x.error_code, y.error_code
                    ));
                }
                if x.cr2 != y.cr2 {
                    d.push(format!("cr2 {:x?} vs {:x?}", x.cr2, y.cr2));
                }
            }
            if x.rip != y.rip {
                d.push(format!("rip {:#x} vs {:#x}", x.rip, y.rip));
            }
            let m = !undefined_flags & 0x3f_ffff;
            if x.rflags & m != y.rflags & m {
                d.push(format!(
                    "rflags {:#x} vs {:#x} (undefined {undefined_flags:#x})",
                    x.rflags, y.rflags
                ));
            }
        }
        (x, y) => d.push(format!("stop {x:?} vs {y:?}")),
    }
    compare_fpu(&a.state.fpu, &b.state.fpu, ignore.fsw, &mut d);
    for (name, x, y, skip) in [
        ("data", &a.data, &b.data, ignore.data.as_slice()),
        ("stack", &a.stack, &b.stack, &[]),
    ] {
        let differ =
            |(i, (p, q)): &(usize, (&u8, &u8))| p != q && !skip.iter().any(|r| r.contains(i));
        if let Some((i, _)) = x.iter().zip(y).enumerate().find(differ) {
            d.push(format!("{name}[{i:#x}] {:#04x} vs {:#04x}", x[i], y[i]));
        }
    }
    d
}
