//! The KVM virtual machine: memory slots, in-kernel interrupt controller, GSI routing.

use crate::cpuid::{self, CpuModel};
use crate::error::{Error, IoctlContext, Result};
use crate::vcpu::KvmVcpu;
use kvm_bindings::{
    kvm_irq_routing_entry, kvm_userspace_memory_region, KvmIrqRouting, KVM_IRQCHIP_IOAPIC,
    KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP, KVM_MEM_READONLY,
};
use kvm_ioctls::{Cap, Kvm, VmFd};
use std::sync::Arc;
use vireo_core::layout::RegionKind;
use vireo_core::{Bus, GuestMemory, IrqChip, MachineControl};

/// Where KVM (on Intel hosts) keeps its real-mode TSS and identity page table: three
/// pages just below the firmware alias, in the reserved part of the PCI hole.
const TSS_ADDRESS: usize = 0xfffb_d000;
const IDENTITY_MAP_ADDRESS: u64 = 0xfffb_c000;
/// Number of IOAPIC pins of KVM's in-kernel IOAPIC.
pub const IOAPIC_PINS: u32 = 24;

/// How to build the VM.
#[derive(Debug, Clone)]
pub struct VmConfig {
    pub cpu_model: CpuModel,
    pub cpus: u32,
}

/// A KVM VM wired to vireo's machine.
pub struct KvmVm {
    kvm: Kvm,
    vm: Arc<VmFd>,
    config: VmConfig,
}

/// The in-kernel PIC/IOAPIC as the machine's interrupt controller.
pub struct KvmIrqChip {
    vm: Arc<VmFd>,
}

impl IrqChip for KvmIrqChip {
    fn set_irq(&self, gsi: u32, level: bool) {
        if let Err(e) = self.vm.set_irq_line(gsi, level) {
            log::warn!(target: "vireo::kvm", "KVM_IRQ_LINE gsi {gsi}: {e}");
        }
    }
}

impl KvmVm {
    /// Creates the VM and maps `mem` into it.
    pub fn new(mem: &GuestMemory, config: VmConfig) -> Result<KvmVm> {
        let kvm = Kvm::new().map_err(Error::Open)?;
        let vm = kvm.create_vm().op("KVM_CREATE_VM")?;
        if !kvm.check_extension(Cap::Irqchip) {
            return Err(Error::MissingCap("KVM_CAP_IRQCHIP"));
        }
        if let Err(e) = vm.set_tss_address(TSS_ADDRESS) {
            log::debug!(target: "vireo::kvm", "KVM_SET_TSS_ADDR: {e}");
        }
        if let Err(e) = vm.set_identity_map_address(IDENTITY_MAP_ADDRESS) {
            log::debug!(target: "vireo::kvm", "KVM_SET_IDENTITY_MAP_ADDR: {e}");
        }
        let readonly = kvm.check_extension(Cap::ReadonlyMem);
        for (slot, r) in mem.regions().iter().enumerate() {
            let rom = r.kind == RegionKind::Rom;
            let region = kvm_userspace_memory_region {
                slot: slot as u32,
                flags: if rom && readonly { KVM_MEM_READONLY } else { 0 },
                guest_phys_addr: r.gpa,
                memory_size: r.len,
                userspace_addr: r.host_addr,
            };
            // SAFETY: the host range belongs to `mem`'s mappings, which the caller keeps
            // alive for as long as the VM (the machine owns both and drops the VM first).
            unsafe { vm.set_user_memory_region(region) }.op("KVM_SET_USER_MEMORY_REGION")?;
        }
        vm.create_irq_chip().op("KVM_CREATE_IRQCHIP")?;
        set_pc_routing(&vm)?;
        Ok(KvmVm {
            kvm,
            vm: Arc::new(vm),
            config,
        })
    }

    /// The in-kernel interrupt controller, to wire device IRQ lines to.
    pub fn irq_chip(&self) -> Arc<dyn IrqChip> {
        Arc::new(KvmIrqChip {
            vm: self.vm.clone(),
        })
    }

    /// Creates vCPU `id` serving exits from `pio`/`mmio`.
    pub fn create_vcpu(
        &self,
        id: u32,
        pio: Arc<Bus>,
        mmio: Arc<Bus>,
        control: Arc<MachineControl>,
    ) -> Result<KvmVcpu> {
        let fd = self.vm.create_vcpu(u64::from(id)).op("KVM_CREATE_VCPU")?;
        let table = cpuid::build(&self.kvm, self.config.cpu_model, id, self.config.cpus)?;
        fd.set_cpuid2(&table).op("KVM_SET_CPUID2")?;
        let phys_bits = table
            .as_slice()
            .iter()
            .find(|e| e.function == 0x8000_0008)
            .map(|e| e.eax & 0xff)
            .filter(|&b| b >= 32)
            .unwrap_or(36);
        // KVM_CAP_XSAVE2 gives the XSAVE area size (0 when only the 4 KiB legacy
        // interface exists); larger areas (AMX) would need KVM_GET_XSAVE2.
        let xsave_size = self.vm.check_extension_int(Cap::Xsave2);
        let xsave_ok = self.kvm.check_extension(Cap::Xsave) && xsave_size <= 4096;
        Ok(KvmVcpu::new(fd, pio, mmio, control, xsave_ok, phys_bits))
    }
}

/// PC routing as on QEMU's `pc` machine: ISA IRQs 0-7 to the master PIC (2 is the
/// cascade), 8-15 to the slave, every GSI to the same IOAPIC pin except IRQ0, which the
/// MADT overrides to pin 2.
fn set_pc_routing(vm: &VmFd) -> Result<()> {
    let mut entries = Vec::new();
    let route = |gsi: u32, chip: u32, pin: u32| {
        let mut e = kvm_irq_routing_entry {
            gsi,
            type_: KVM_IRQ_ROUTING_IRQCHIP,
            ..Default::default()
        };
        e.u.irqchip.irqchip = chip;
        e.u.irqchip.pin = pin;
        e
    };
    for i in 0..8 {
        if i != 2 {
            entries.push(route(i, KVM_IRQCHIP_PIC_MASTER, i));
        }
    }
    for i in 8..16 {
        entries.push(route(i, KVM_IRQCHIP_PIC_SLAVE, i - 8));
    }
    for i in 0..IOAPIC_PINS {
        match i {
            0 => entries.push(route(0, KVM_IRQCHIP_IOAPIC, 2)),
            2 => {}
            _ => entries.push(route(i, KVM_IRQCHIP_IOAPIC, i)),
        }
    }
    let routing =
        KvmIrqRouting::from_entries(&entries).map_err(|_| Error::MissingCap("GSI routing"))?;
    vm.set_gsi_routing(&routing).op("KVM_SET_GSI_ROUTING")
}
