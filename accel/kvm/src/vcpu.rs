//! A KVM vCPU implementing [`vireo_core::Vcpu`].

use crate::kick::{self, Kicker};
use crate::state;
use kvm_ioctls::{VcpuExit as KvmExit, VcpuFd};
use std::sync::Arc;
use vireo_core::{Bus, CpuState, MachineControl, Vcpu, VcpuExit, VcpuKicker};

/// One KVM vCPU; port and MMIO exits are served from the machine's buses.
pub struct KvmVcpu {
    fd: VcpuFd,
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    control: Arc<MachineControl>,
    kicker: Arc<Kicker>,
    /// FPU state goes through KVM_GET/SET_XSAVE (the host's area fits in 4 KiB).
    xsave_ok: bool,
    /// MAXPHYADDR from the CPUID table given to KVM.
    phys_bits: u32,
    /// Number of exits served, for statistics.
    pub exits: u64,
}

impl KvmVcpu {
    pub(crate) fn new(
        fd: VcpuFd,
        pio: Arc<Bus>,
        mmio: Arc<Bus>,
        control: Arc<MachineControl>,
        xsave_ok: bool,
        phys_bits: u32,
    ) -> KvmVcpu {
        kick::install_handler();
        KvmVcpu {
            fd,
            pio,
            mmio,
            control,
            kicker: Kicker::new(),
            xsave_ok,
            phys_bits,
            exits: 0,
        }
    }

    fn run_loop(&mut self) -> vireo_core::Result<VcpuExit> {
        loop {
            if self.control.stop_reason().is_some() || self.kicker.take() {
                return Ok(VcpuExit::Stopped);
            }
            self.exits += 1;
            match self.fd.run() {
                Ok(KvmExit::IoIn(port, data)) => {
                    self.pio.read(u64::from(port), data);
                }
                Ok(KvmExit::IoOut(port, data)) => {
                    self.pio.write(u64::from(port), data);
                }
                Ok(KvmExit::MmioRead(addr, data)) => {
                    self.mmio.read(addr, data);
                }
                Ok(KvmExit::MmioWrite(addr, data)) => {
                    // Writes to read-only slots (the firmware ROM) arrive here and are
                    // dropped unless a device claims the address.
                    self.mmio.write(addr, data);
                }
                Ok(KvmExit::Hlt) => return Ok(VcpuExit::Halted),
                Ok(KvmExit::Shutdown) => return Ok(VcpuExit::Shutdown),
                Ok(KvmExit::Intr) => continue,
                Ok(KvmExit::SystemEvent(kind, _)) => {
                    log::info!(target: "vireo::kvm", "system event {kind}");
                    return Ok(VcpuExit::Shutdown);
                }
                Ok(KvmExit::InternalError) => {
                    let run = self.fd.get_kvm_run();
                    // SAFETY: KVM filled the `internal` member of the exit union for
                    // KVM_EXIT_INTERNAL_ERROR.
                    let internal = unsafe { run.__bindgen_anon_1.internal };
                    let n = (internal.ndata as usize).min(internal.data.len());
                    let data = internal.data[..n].to_vec();
                    let msg = self.describe_internal_error(internal.suberror, &data);
                    return Ok(if internal.suberror == SUBERROR_EMULATION {
                        VcpuExit::Unsupported(msg)
                    } else {
                        VcpuExit::Failed(msg)
                    });
                }
                Ok(KvmExit::FailEntry(reason, cpu)) => {
                    return Ok(VcpuExit::Failed(format!(
                        "KVM entry failed: hardware reason {reason:#x} on cpu {cpu}"
                    )))
                }
                Ok(other) => {
                    return Ok(VcpuExit::Failed(format!("unexpected KVM exit {other:?}")));
                }
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    self.fd.set_kvm_immediate_exit(0);
                    continue;
                }
                Err(e) => {
                    return Err(vireo_core::Error::Engine {
                        engine: "kvm",
                        msg: format!("KVM_RUN: {e}"),
                    })
                }
            }
        }
    }
}

/// KVM_INTERNAL_ERROR_EMULATION: the in-kernel emulator met an instruction it lacks.
const SUBERROR_EMULATION: u32 = 1;
/// `data[0]` flag: `data[1..3]` hold the instruction length and bytes.
const EMULATION_FLAG_INSN_BYTES: u64 = 1;

impl KvmVcpu {
    /// A readable description of a KVM internal error, with the failing instruction
    /// disassembled when KVM reports its bytes.
    fn describe_internal_error(&self, suberror: u32, data: &[u64]) -> String {
        if suberror == SUBERROR_EMULATION
            && data.len() >= 3
            && data[0] & EMULATION_FLAG_INSN_BYTES != 0
        {
            let raw: Vec<u8> = data[1..3].iter().flat_map(|w| w.to_le_bytes()).collect();
            let len = usize::from(raw[0]).min(15);
            let bytes = &raw[1..1 + len];
            let bitness = match self.fd.get_sregs() {
                Ok(s) if s.cs.l != 0 => 64,
                Ok(s) if s.cs.db != 0 => 32,
                Ok(_) => 16,
                Err(_) => 64,
            };
            let text = crate::disasm::one(bytes, bitness);
            return format!(
                "the host KVM cannot emulate `{text}` (bytes {})",
                bytes
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            );
        }
        format!("KVM internal error, suberror {suberror}, data {data:x?}")
    }
}

impl Vcpu for KvmVcpu {
    fn run(&mut self) -> vireo_core::Result<VcpuExit> {
        let imm = &mut self.fd.get_kvm_run().immediate_exit as *mut u8;
        kick::publish_immediate_exit(imm);
        self.kicker.enter();
        let r = self.run_loop();
        self.kicker.leave();
        kick::publish_immediate_exit(std::ptr::null_mut());
        self.fd.set_kvm_immediate_exit(0);
        r
    }

    fn state(&mut self) -> vireo_core::Result<CpuState> {
        Ok(state::get(&self.fd, self.xsave_ok)?)
    }

    fn set_state(&mut self, s: &CpuState) -> vireo_core::Result<()> {
        Ok(state::set(&self.fd, s, self.xsave_ok)?)
    }

    fn kicker(&self) -> Arc<dyn VcpuKicker> {
        self.kicker.clone()
    }

    fn engine(&self) -> &'static str {
        "kvm"
    }

    fn phys_addr_bits(&self) -> u32 {
        self.phys_bits
    }
}
