//! The PC platform around the CPU: which devices sit where, the firmware tables, and
//! how a `-kernel` is loaded.

use crate::boot::{self, multiboot, KernelFormat};
use crate::config::{CharSpec, MachineConfig};
use crate::error::{Error, Result};
use parking_lot::Mutex;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use vireo_core::clock::{TimerDevice, TimerWaker};
use vireo_core::{
    layout, A20Gate, Bus, BusDevice, CpuState, GuestMemory, IrqChip, IrqLine, MachineControl,
    VirtualClock,
};
use vireo_devices::apic::{ioapic, SharedIoapic};
use vireo_devices::chardev::{CharOut, Stdout};
use vireo_devices::hpet::{self, Hpet, LegacyGate};
use vireo_devices::pic::{PicPair, SharedPic};
use vireo_devices::serial::{Serial, COM_PORTS, UART_REGS};
use vireo_devices::{acpi, acpi_pm, fw_cfg, i8042, mptable, pci, pit, port92, rtc};

/// The machine-wide services devices are wired to.
pub struct Wiring {
    pub mem: Arc<GuestMemory>,
    pub irq: Arc<dyn IrqChip>,
    pub clock: Arc<VirtualClock>,
    pub waker: Arc<TimerWaker>,
    pub control: Arc<MachineControl>,
    pub a20: Arc<A20Gate>,
    /// The userspace 8259A pair when the engine has no interrupt controller of its
    /// own (TCG): its ports go on the port bus.
    pub pic: Option<SharedPic>,
    /// The userspace IOAPIC in the same case: it goes on the MMIO bus.
    pub ioapic: Option<SharedIoapic>,
}

impl Wiring {
    fn line(&self, gsi: u32) -> IrqLine {
        IrqLine::new(self.irq.clone(), gsi)
    }
}

/// The buses with every device registered, and the devices the timer thread polls.
pub struct Platform {
    pub pio: Bus,
    pub mmio: Bus,
    pub timers: Vec<Arc<Mutex<dyn TimerDevice>>>,
    /// COM1 when it is on the terminal (for console input).
    pub com1: Option<Arc<Mutex<Serial>>>,
    /// What a machine reset must put back in its power-up state (the HPET, the
    /// IOAPIC).
    pub resets: Vec<Box<dyn Fn() + Send>>,
}

fn open_char(spec: &CharSpec) -> Result<CharOut> {
    Ok(match spec {
        CharSpec::Stdio => Box::new(Stdout),
        CharSpec::Null => Box::new(std::io::sink()),
        CharSpec::Capture(c) => Box::new(c.clone()),
        CharSpec::File(p) => Box::new(std::fs::File::create(p).map_err(|source| Error::File {
            path: p.clone(),
            source,
        })?),
    })
}

fn shared<T: BusDevice + 'static>(d: T) -> Arc<Mutex<T>> {
    Arc::new(Mutex::new(d))
}

/// The E820 map in fw_cfg's `etc/e820` format: packed `{u64 addr, u64 len, u32 type}`.
fn e820_file(mem: &GuestMemory) -> Vec<u8> {
    let mut v = Vec::new();
    for (addr, len, kind) in mem.map().e820() {
        v.extend_from_slice(&addr.to_le_bytes());
        v.extend_from_slice(&len.to_le_bytes());
        v.extend_from_slice(&kind.to_le_bytes());
    }
    v
}

/// Host wall-clock time in Unix seconds (the RTC's starting point).
fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Builds the PC's devices on fresh buses.
pub fn build(config: &MachineConfig, w: &Wiring, files: Option<&GuestFiles>) -> Result<Platform> {
    let mut pio = Bus::new("pio");
    let mut mmio = Bus::new("mmio");
    let mut timers: Vec<Arc<Mutex<dyn TimerDevice>>> = Vec::new();
    let mut resets: Vec<Box<dyn Fn() + Send>> = Vec::new();

    // Serial ports, debug console, debug exit.
    let mut com1 = None;
    for (i, spec) in config.serials.iter().enumerate() {
        let (port, irq) = COM_PORTS[i];
        let s = shared(Serial::new(
            &format!("serial{i}"),
            w.line(irq),
            open_char(spec)?,
        ));
        if i == 0 && matches!(spec, CharSpec::Stdio) {
            com1 = Some(s.clone());
        }
        pio.insert(u64::from(port), UART_REGS, s)?;
    }
    for d in &config.debugcons {
        let dev = shared(
            vireo_devices::debugcon::DebugCon::new(open_char(&d.chardev)?)
                .with_readback(d.readback),
        );
        pio.insert(u64::from(d.iobase), 1, dev)?;
    }
    for d in &config.debug_exits {
        let dev = shared(vireo_devices::debug_exit::DebugExit::new(w.control.clone()));
        pio.insert(u64::from(d.iobase), u64::from(d.iosize), dev)?;
    }

    // Interrupt controllers (TCG): PIC master 0x20, slave 0xA0, ELCR 0x4D0; the
    // IOAPIC's registers.
    if let Some(pic) = &w.pic {
        PicPair::register(pic, &mut pio)?;
    }
    if let Some(io) = &w.ioapic {
        mmio.insert(layout::IOAPIC_START, ioapic::MMIO_LEN, io.clone())?;
        let io = io.clone();
        resets.push(Box::new(move || io.lock().reset()));
    }

    // HPET (both engines: KVM has no in-kernel one); its legacy replacement route
    // takes GSIs 0 and 8 from the PIT and the RTC.
    let lines = (0..hpet::NUM_LINES as u32).map(|g| w.line(g)).collect();
    let mut h = Hpet::new(w.clock.clone(), lines);
    h.set_waker(w.waker.clone());
    let legacy: Arc<dyn vireo_core::IrqChip> =
        Arc::new(LegacyGate::new(w.irq.clone(), h.legacy_flag()));
    let h = hpet::shared(h);
    mmio.insert(layout::HPET_START, hpet::MMIO_LEN, h.clone())?;
    timers.push(h.clone());
    resets.push(Box::new(move || h.lock().reset()));

    // Timers: PIT (IRQ 0) with port 0x61, RTC/CMOS (IRQ 8).
    let mut p = pit::Pit::new(w.clock.clone(), IrqLine::new(legacy.clone(), 0));
    p.set_waker(w.waker.clone());
    let p = Arc::new(Mutex::new(p));
    pit::Pit::register(&p, &mut pio)?;
    timers.push(p);

    let mut r = rtc::Rtc::new(w.clock.clone(), IrqLine::new(legacy, 8), unix_now());
    r.set_waker(w.waker.clone());
    r.set_memory(w.mem.map().low_end, w.mem.map().high_size);
    let r = shared(r);
    pio.insert(rtc::RTC_BASE, rtc::RTC_PORTS, r.clone())?;
    timers.push(r);

    // Keyboard controller (IRQ 1/12, A20, reset) and port 0x92.
    let kbd = Arc::new(Mutex::new(i8042::I8042::new(
        w.line(1),
        w.line(12),
        w.a20.clone(),
        w.control.clone(),
    )));
    i8042::I8042::register(&kbd, &mut pio)?;
    pio.insert(
        port92::PORT92,
        1,
        shared(port92::Port92::new(w.a20.clone(), w.control.clone())),
    )?;

    // PCI host bridge (i440FX + PIIX3), with the PIIX3 reset register at 0xCF9; it
    // decodes the PCI BARs on both buses.
    let host = Arc::new(Mutex::new(pci::PciHost::new(w.control.clone())));
    pci::PciHost::register(&host, &mut pio, &mut mmio)?;
    add_test_devices(config, w, &host, &mut pio, &mut mmio)?;

    // ACPI power management (SCI on IRQ 9).
    let pm = acpi_pm::AcpiPm::shared(w.clock.clone(), w.control.clone(), w.line(acpi_pm::SCI_IRQ));
    pm.lock().set_waker(w.waker.clone());
    pio.insert(acpi_pm::PM_BASE, acpi_pm::PM_LEN, pm.clone())?;
    timers.push(pm);

    // fw_cfg.
    let mut fw = fw_cfg::FwCfg::new(w.mem.clone());
    fw.add_u64(fw_cfg::FW_CFG_RAM_SIZE, w.mem.ram_size());
    fw.add_u16(fw_cfg::FW_CFG_NB_CPUS, config.cpus as u16);
    fw.add_u16(fw_cfg::FW_CFG_MAX_CPUS, config.cpus as u16);
    fw.add_u16(fw_cfg::FW_CFG_NOGRAPHIC, 1);
    fw.add_file("etc/e820", e820_file(&w.mem))
        .map_err(|e| Error::Machine(format!("fw_cfg: {e}")))?;
    if let Some(f) = files {
        add_kernel_items(&mut fw, config, f);
    }
    pio.insert(fw_cfg::FW_CFG_IO_BASE, fw_cfg::FW_CFG_IO_LEN, shared(fw))?;

    Ok(Platform {
        pio,
        mmio,
        timers,
        com1,
        resets,
    })
}

/// QEMU's test devices (`-device pc-testdev`, `-device pci-testdev`). PCI BARs are
/// placed as PC firmware (SeaBIOS) places them, I/O from 0xC000 and memory below the
/// IOAPIC, since a `-kernel` guest starts without firmware.
fn add_test_devices(
    config: &MachineConfig,
    w: &Wiring,
    host: &Arc<Mutex<pci::PciHost>>,
    pio: &mut Bus,
    mmio: &mut Bus,
) -> Result<()> {
    use vireo_devices::{pc_testdev, pci_testdev};
    if config.pc_testdev {
        let lines = (0..pc_testdev::IRQ_LINES as u32)
            .map(|g| w.line(g))
            .collect();
        let dev = Arc::new(Mutex::new(pc_testdev::PcTestdev::new(lines)));
        pc_testdev::PcTestdev::register(&dev, pio, mmio)?;
    }
    let mut host = host.lock();
    for t in &config.pci_testdevs {
        let dev = pci_testdev::PciTestdev::new(t.membar)
            .map_err(|e| Error::usage(format!("-device pci-testdev: {e}")))?;
        let (slot, func) = match t.addr {
            Some(a) => a,
            None => (
                host.free_slot().ok_or_else(|| {
                    Error::usage("-device pci-testdev: no free PCI slot on bus 0")
                })?,
                0,
            ),
        };
        host.add_device(slot, func, Arc::new(Mutex::new(dev)))
            .map_err(|e| Error::usage(format!("-device pci-testdev: {e}")))?;
    }
    let mem = w.mem.map();
    let high_end = layout::FOUR_GIB + mem.high_size;
    host.assign_bars(
        0xC000..0x1_0000,
        mem.low_end..layout::IOAPIC_START,
        high_end,
    );
    Ok(())
}

/// QEMU's fw_cfg kernel items, so firmware can load the kernel itself: for a bzImage
/// the setup part and the protected-mode part separately, as QEMU splits them.
fn add_kernel_items(fw: &mut fw_cfg::FwCfg, config: &MachineConfig, f: &GuestFiles) {
    let k = &f.kernel;
    let setup_len = if boot::linux::is_bzimage(k) {
        let sects = match k.get(0x1f1).copied().unwrap_or(0) {
            0 => 4,
            n => usize::from(n),
        };
        ((sects + 1) * 512).min(k.len())
    } else {
        0
    };
    if setup_len > 0 {
        fw.add_u32(fw_cfg::FW_CFG_SETUP_SIZE, setup_len as u32);
        fw.add_item(fw_cfg::FW_CFG_SETUP_DATA, k[..setup_len].to_vec());
    }
    fw.add_u32(fw_cfg::FW_CFG_KERNEL_SIZE, (k.len() - setup_len) as u32);
    fw.add_item(fw_cfg::FW_CFG_KERNEL_DATA, k[setup_len..].to_vec());
    if let Some((_, initrd)) = f.initrds.first() {
        fw.add_u32(fw_cfg::FW_CFG_INITRD_SIZE, initrd.len() as u32);
        fw.add_item(fw_cfg::FW_CFG_INITRD_DATA, initrd.clone());
    }
    let mut c = config.append.as_bytes().to_vec();
    c.push(0);
    fw.add_u32(fw_cfg::FW_CFG_CMDLINE_SIZE, c.len() as u32);
    fw.add_item(fw_cfg::FW_CFG_CMDLINE_DATA, c);
}

/// Writes the firmware tables into guest memory: the MP tables (Intel MP spec 1.4,
/// for guests that do not use ACPI) and the ACPI tables, both describing the same
/// CPUs and interrupt routing. Returns the RSDP address.
pub fn write_tables(config: &MachineConfig, mem: &GuestMemory) -> Result<u64> {
    let cfg = acpi::AcpiConfig::new(config.cpus, mem.map());
    mptable::write_config(mem, &mptable::MpConfig::from(&cfg))
        .map_err(|e| Error::Machine(format!("MP tables: {e}")))?;
    acpi::write_tables(mem, &cfg).map_err(|e| Error::Machine(format!("ACPI tables: {e}")))
}

/// The file part of an `-initrd` item (`"path args"` for Multiboot modules).
pub fn initrd_path(item: &str) -> PathBuf {
    PathBuf::from(item.split(' ').next().unwrap_or(item))
}

/// Reads the files a run needs: the kernel and each `-initrd` item's file.
pub fn read_guest_files(config: &MachineConfig) -> Result<Option<GuestFiles>> {
    let Some(kpath) = &config.kernel else {
        return Ok(None);
    };
    let read = |p: &Path| {
        std::fs::read(p).map_err(|source| Error::File {
            path: p.to_path_buf(),
            source,
        })
    };
    let kernel = read(kpath)?;
    let mut initrds = Vec::new();
    for item in &config.initrd {
        initrds.push((item.clone(), read(&initrd_path(item))?));
    }
    Ok(Some(GuestFiles {
        kernel_path: kpath.clone(),
        kernel,
        initrds,
    }))
}

/// A kernel and its initrd(s)/modules, read from disk.
pub struct GuestFiles {
    pub kernel_path: PathBuf,
    pub kernel: Vec<u8>,
    /// `(-initrd item, file contents)`.
    pub initrds: Vec<(String, Vec<u8>)>,
}

/// Loads `files` into memory and returns the boot CPU's state.
pub fn load_kernel(
    config: &MachineConfig,
    mem: &GuestMemory,
    files: &GuestFiles,
    rsdp: u64,
) -> Result<CpuState> {
    let err = |source| Error::Boot {
        path: files.kernel_path.clone(),
        source,
    };
    let setup = match boot::detect(&files.kernel).map_err(err)? {
        KernelFormat::Linux => {
            if files.initrds.len() > 1 {
                return Err(Error::usage(
                    "-initrd: a Linux kernel takes one initrd (several are Multiboot modules)",
                ));
            }
            let initrd = files.initrds.first().map(|(_, d)| d.as_slice());
            boot::linux::load(mem, &files.kernel, initrd, &config.append, Some(rsdp))
                .map_err(err)?
        }
        KernelFormat::Multiboot => {
            let modules: Vec<multiboot::Module<'_>> = files
                .initrds
                .iter()
                .map(|(item, data)| multiboot::Module {
                    data,
                    cmdline: item,
                })
                .collect();
            multiboot::load(mem, &files.kernel, &config.append, &modules).map_err(err)?
        }
    };
    log::info!(target: "vireo::boot", "kernel at {:#x}..{:#x}, entry {:#x}",
        setup.kernel.0, setup.kernel.1, setup.state.rip);
    Ok(setup.state)
}
