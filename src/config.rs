//! What a machine is made of, as the command line (or a test) describes it.

use std::path::PathBuf;
use vireo_devices::chardev::CaptureBuffer;

/// Which engine runs the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

/// Where a character device's output goes.
#[derive(Clone)]
pub enum CharSpec {
    /// The terminal; also the source of guest input.
    Stdio,
    /// A file, created or truncated.
    File(PathBuf),
    /// Nowhere.
    Null,
    /// An in-memory buffer (tests, boot-marker watchers).
    Capture(CaptureBuffer),
}

impl std::fmt::Debug for CharSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CharSpec::Stdio => write!(f, "stdio"),
            CharSpec::File(p) => write!(f, "file:{}", p.display()),
            CharSpec::Null => write!(f, "null"),
            CharSpec::Capture(_) => write!(f, "capture"),
        }
    }
}

/// An isa-debug-exit device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DebugExitConfig {
    pub iobase: u16,
    pub iosize: u16,
}

/// An isa-debugcon device.
#[derive(Debug, Clone)]
pub struct DebugconConfig {
    pub iobase: u16,
    pub chardev: CharSpec,
    /// What reads return (QEMU's `readback`, default 0xE9).
    pub readback: u32,
}

/// A pci-testdev device (QEMU's PCI test device).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PciTestdevConfig {
    /// Slot and function on bus 0 (`addr=`); the first free slot if `None`.
    pub addr: Option<(u8, u8)>,
    /// Size of the optional 64-bit memory BAR 2 (`membar=`); 0 = none.
    pub membar: u64,
}

/// The whole machine.
#[derive(Debug, Clone)]
pub struct MachineConfig {
    pub ram_size: u64,
    pub cpus: u32,
    pub accel: Accel,
    /// `-cpu NAME`; `None` is the engine's default (KVM: `host`, TCG: `max`).
    pub cpu_model: Option<String>,
    /// `-tcg-backend`: what runs translated blocks under TCG.
    pub tcg_backend: vireo_tcg::Backend,
    /// `-tcg-warmup`: interpreted runs of a new block before the JIT compiles it.
    pub tcg_warmup: u32,
    /// `-tcg-compiler thread|inline`: the JIT compiles on a thread of its own (the
    /// vCPU interprets a block until its code is in) or on the vCPU's.
    pub tcg_compile_thread: bool,
    /// Write `/tmp/perf-<pid>.map` for the JIT's code (`-perfmap`).
    pub perfmap: bool,
    pub kernel: Option<PathBuf>,
    /// `-initrd` items: a Linux initrd, or Multiboot modules as `"path args"`.
    pub initrd: Vec<String>,
    pub append: String,
    /// COM1..COM4 in order.
    pub serials: Vec<CharSpec>,
    pub debugcons: Vec<DebugconConfig>,
    pub debug_exits: Vec<DebugExitConfig>,
    /// QEMU's ISA test device (`-device pc-testdev`).
    pub pc_testdev: bool,
    pub pci_testdevs: Vec<PciTestdevConfig>,
    pub no_reboot: bool,
    /// Take guest input from the terminal in raw mode (Ctrl-A X quits).
    pub stdin_input: bool,
}

impl Default for MachineConfig {
    fn default() -> MachineConfig {
        MachineConfig {
            ram_size: 128 << 20,
            cpus: 1,
            accel: Accel::Kvm,
            cpu_model: None,
            tcg_backend: vireo_tcg::Backend::Jit,
            tcg_warmup: vireo_tcg::DEFAULT_WARMUP,
            tcg_compile_thread: true,
            perfmap: false,
            kernel: None,
            initrd: Vec::new(),
            append: String::new(),
            serials: vec![CharSpec::Stdio],
            debugcons: Vec::new(),
            debug_exits: Vec::new(),
            pc_testdev: false,
            pci_testdevs: Vec::new(),
            no_reboot: false,
            stdin_input: false,
        }
    }
}
