//! Runs the firmware ROM under KVM on a bare, hand-built machine (no vireo device
//! models): 2 MiB of RAM, the ROM at 0xF0000 and 0xFFFF0000 (read-only when KVM allows
//! it), and just enough fake devices behind port I/O exits: COM1 (collects bytes),
//! CMOS, port 0x92, port 0x80 (POST codes), an optional fw_cfg, and PM1a_CNT at 0x604.
//! ACPI tables are written into RAM at 0xE0000 by hand.
//!
//! Each test runs the firmware until it writes PM1a_CNT, halts, or fails, then checks
//! its serial output. Skipped (with a message) when /dev/kvm cannot be opened.

use kvm_bindings::{
    kvm_guest_debug, kvm_userspace_memory_region, KVM_GUESTDBG_ENABLE, KVM_GUESTDBG_SINGLESTEP,
    KVM_MAX_CPUID_ENTRIES, KVM_MEM_READONLY,
};
use kvm_ioctls::{Cap, Kvm, VcpuExit};
use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::time::{Duration, Instant};

const RAM_SIZE: usize = 2 << 20;
const ROM_BASE: u64 = 0xF_0000;
const ROM_ALIAS: u64 = 0xFFFF_0000;
const ACPI_BASE: u64 = 0xE_0000;
const PM1A_CNT: u16 = 0x604;
/// Upper bound on the guest's run time (it needs well under a second).
const TIMEOUT: Duration = Duration::from_secs(30);

/// Page-aligned zeroed host memory that backs a guest region.
struct HostMem {
    ptr: *mut u8,
    layout: Layout,
}

impl HostMem {
    fn new(len: usize) -> HostMem {
        let layout = Layout::from_size_align(len, 4096).unwrap();
        // SAFETY: the layout has a nonzero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        assert!(!ptr.is_null(), "out of memory");
        HostMem { ptr, layout }
    }

    fn slice(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` owns `layout.size()` initialised (zeroed) bytes; `&mut self`
        // makes this the only live reference from the host side.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.layout.size()) }
    }
}

impl Drop for HostMem {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { dealloc(self.ptr, self.layout) };
    }
}

/// The fake machine's configuration.
#[derive(Default)]
struct Setup {
    /// CMOS bytes (index, value).
    cmos: Vec<(u8, u8)>,
    /// fw_cfg items (key, contents); no items means no fw_cfg at all.
    fw_cfg: Vec<(u16, Vec<u8>)>,
    /// ACPI tables, placed at [`ACPI_BASE`].
    acpi: Option<Vec<u8>>,
    /// Single-step the guest to count its instructions.
    single_step: bool,
    /// Let the guest go on after it writes PM1a_CNT, as if power-off did not work.
    ignore_power_off: bool,
}

/// How a run ended and what the guest did.
#[derive(Debug)]
struct Run {
    serial: String,
    post: Vec<u8>,
    /// The 16-bit value written to PM1a_CNT, if any.
    pm1a_cnt: Option<u16>,
    halted: bool,
    exits: u64,
    /// Instructions retired (counted only when single-stepping), and the count at each
    /// POST code.
    steps: u64,
    post_steps: Vec<u64>,
    /// Whether the ROM was mapped read-only (so a write to it would have failed the run).
    rom_read_only: bool,
    elapsed: Duration,
}

/// Opens KVM, or explains why the test is skipped.
fn kvm() -> Option<Kvm> {
    match Kvm::new() {
        Ok(k) => Some(k),
        Err(e) => {
            eprintln!("skipping: cannot open /dev/kvm: {e}");
            None
        }
    }
}

fn run(kvm: &Kvm, setup: &Setup) -> Run {
    let vm = kvm.create_vm().unwrap();
    let _ = vm.set_tss_address(0xfffb_d000);
    let _ = vm.set_identity_map_address(0xfffb_c000);

    let mut ram = HostMem::new(RAM_SIZE);
    let mut rom = HostMem::new(vireo_bios::ROM_SIZE);
    assert_eq!(vireo_bios::FIRMWARE.len(), vireo_bios::ROM_SIZE);
    rom.slice().copy_from_slice(vireo_bios::FIRMWARE);
    if let Some(tables) = &setup.acpi {
        let at = ACPI_BASE as usize;
        ram.slice()[at..at + tables.len()].copy_from_slice(tables);
    }

    let ro = if kvm.check_extension(Cap::ReadonlyMem) {
        KVM_MEM_READONLY
    } else {
        0
    };
    let regions = [
        (0, ROM_BASE, ram.ptr as u64, 0),
        (ROM_BASE, 0x1_0000, rom.ptr as u64, ro),
        (
            0x10_0000,
            RAM_SIZE as u64 - 0x10_0000,
            ram.ptr as u64 + 0x10_0000,
            0,
        ),
        (ROM_ALIAS, 0x1_0000, rom.ptr as u64, ro),
    ];
    for (slot, &(gpa, len, host, flags)) in regions.iter().enumerate() {
        let region = kvm_userspace_memory_region {
            slot: slot as u32,
            flags,
            guest_phys_addr: gpa,
            memory_size: len,
            userspace_addr: host,
        };
        // SAFETY: the host ranges belong to `ram` and `rom`, which outlive the VM (both
        // are dropped after `vm` at the end of this function).
        unsafe { vm.set_user_memory_region(region) }.unwrap();
    }

    let mut vcpu = vm.create_vcpu(0).unwrap();
    // This host's KVM refuses EFER.LME unless CPUID advertises long mode.
    let cpuid = kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).unwrap();
    vcpu.set_cpuid2(&cpuid).unwrap();

    if setup.single_step {
        let dbg = kvm_guest_debug {
            control: KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_SINGLESTEP,
            ..Default::default()
        };
        vcpu.set_guest_debug(&dbg).unwrap();
    }

    let mut cmos = [0u8; 128];
    for &(i, v) in &setup.cmos {
        cmos[i as usize] = v;
    }
    let mut cmos_index = 0usize;
    let mut port92 = 0u8;
    let mut lcr = 0u8;
    let mut fw_item: &[u8] = &[];
    let mut fw_offset = 0usize;
    let mut out = Run {
        serial: String::new(),
        post: Vec::new(),
        pm1a_cnt: None,
        halted: false,
        exits: 0,
        steps: 0,
        post_steps: Vec::new(),
        rom_read_only: ro != 0,
        elapsed: Duration::ZERO,
    };
    let mut unexpected = None;
    let start = Instant::now();
    loop {
        assert!(start.elapsed() < TIMEOUT, "timed out: {out:?}");
        out.exits += 1;
        match vcpu.run().expect("KVM_RUN") {
            VcpuExit::IoOut(port, data) => {
                let v = data[0];
                match port {
                    0x3F8 if lcr & 0x80 == 0 => out.serial.push(v as char),
                    0x3FB => lcr = v,
                    0x3F8..=0x3FF => {}
                    0x70 => cmos_index = usize::from(v & 0x7F),
                    0x71 => cmos[cmos_index] = v,
                    0x80 => {
                        out.post.push(v);
                        out.post_steps.push(out.steps);
                    }
                    0x92 => port92 = v,
                    0x510 if !setup.fw_cfg.is_empty() => {
                        assert_eq!(data.len(), 2, "fw_cfg selector takes 16-bit writes");
                        let key = u16::from_le_bytes([data[0], data[1]]);
                        fw_item = setup
                            .fw_cfg
                            .iter()
                            .find(|(k, _)| *k == key)
                            .map_or(&[][..], |(_, d)| d.as_slice());
                        fw_offset = 0;
                    }
                    PM1A_CNT => {
                        assert_eq!(data.len(), 2, "PM1a_CNT takes 16-bit writes");
                        out.pm1a_cnt = Some(u16::from_le_bytes([data[0], data[1]]));
                        if !setup.ignore_power_off {
                            break;
                        }
                    }
                    _ => {}
                }
            }
            VcpuExit::IoIn(port, data) => {
                let v = match port {
                    0x3FD => 0x60, // LSR: THRE and TEMT
                    0x3FB => lcr,
                    0x3F8..=0x3FF => 0,
                    0x71 => cmos[cmos_index],
                    0x92 => port92,
                    0x511 if !setup.fw_cfg.is_empty() => {
                        let b = fw_item.get(fw_offset).copied().unwrap_or(0);
                        fw_offset += 1;
                        b
                    }
                    _ => 0xFF,
                };
                data.fill(v);
            }
            VcpuExit::Hlt => {
                out.halted = true;
                break;
            }
            VcpuExit::MmioWrite(addr, data) => {
                panic!("guest wrote {data:x?} to {addr:#x} (ROM or unmapped): {out:?}")
            }
            VcpuExit::MmioRead(_, data) => data.fill(0xFF),
            VcpuExit::Debug(arch) if setup.single_step => {
                out.steps += 1;
                // A single-stepped `hlt` does not exit as HLT: look at the next opcode.
                let next = arch.pc.wrapping_sub(ROM_BASE) as usize;
                if vireo_bios::FIRMWARE.get(next) == Some(&0xF4) {
                    out.halted = true;
                    break;
                }
            }
            other => {
                unexpected = Some(format!("{other:?}"));
                break;
            }
        }
    }
    if let Some(exit) = unexpected {
        let regs = vcpu.get_regs().unwrap();
        let sregs = vcpu.get_sregs().unwrap();
        panic!(
            "unexpected exit {exit}; rip {:#x} cs {:#x} cr0 {:#x} efer {:#x}; {out:?}",
            regs.rip, sregs.cs.selector, sregs.cr0, sregs.efer
        );
    }
    out.elapsed = start.elapsed();
    eprintln!(
        "firmware run: {} exits in {:?}, POST {:x?}, ROM read-only {}\n{}",
        out.exits, out.elapsed, out.post, out.rom_read_only, out.serial
    );
    drop(vcpu);
    drop(vm);
    out
}

// ------------------------------------------------------------------- ACPI by hand

/// Sets the checksum byte at `at` so that `bytes` sums to 0.
fn fix_checksum(bytes: &mut [u8], at: usize) {
    bytes[at] = 0;
    let sum = bytes.iter().fold(0u8, |s, &b| s.wrapping_add(b));
    bytes[at] = 0u8.wrapping_sub(sum);
}

/// A system description table: header plus body, checksummed.
fn sdt(sig: &[u8; 4], revision: u8, body: &[u8]) -> Vec<u8> {
    let mut t = Vec::new();
    t.extend_from_slice(sig);
    t.extend_from_slice(&((36 + body.len()) as u32).to_le_bytes());
    t.push(revision);
    t.push(0); // checksum
    t.extend_from_slice(b"VIREO ");
    t.extend_from_slice(b"TESTTBL ");
    t.extend_from_slice(&1u32.to_le_bytes());
    t.extend_from_slice(b"VIRO");
    t.extend_from_slice(&1u32.to_le_bytes());
    t.extend_from_slice(body);
    fix_checksum(&mut t, 9);
    t
}

/// Offsets of the tables inside the blob at [`ACPI_BASE`].
const RSDT_OFF: usize = 0x40;
const XSDT_OFF: usize = 0x80;
const FADT_OFF: usize = 0x100;
const DSDT_OFF: usize = 0x300;

/// RSDP (revision 0 or 2) -> RSDT and XSDT -> FADT (PM1a_CNT 0x604) -> DSDT with `aml`.
fn acpi_tables(rsdp_revision: u8, aml: &[u8]) -> Vec<u8> {
    let addr = |off: usize| ACPI_BASE + off as u64;
    let mut blob = vec![0u8; 0x1000];
    let mut put = |off: usize, bytes: &[u8]| blob[off..off + bytes.len()].copy_from_slice(bytes);

    // Some filler AML first, so the parser has to skip: Name (_FOO, 0x1234).
    let mut dsdt_body = vec![0x08, b'_', b'F', b'O', b'O', 0x0B, 0x34, 0x12];
    dsdt_body.extend_from_slice(aml);
    put(DSDT_OFF, &sdt(b"DSDT", 2, &dsdt_body));

    let mut fadt = vec![0u8; 276 - 36];
    let field = |fadt: &mut Vec<u8>, off: usize, v: &[u8]| {
        fadt[off - 36..off - 36 + v.len()].copy_from_slice(v)
    };
    field(&mut fadt, 40, &(addr(DSDT_OFF) as u32).to_le_bytes());
    field(&mut fadt, 56, &0x600u32.to_le_bytes());
    field(&mut fadt, 64, &u32::from(PM1A_CNT).to_le_bytes());
    field(&mut fadt, 140, &addr(DSDT_OFF).to_le_bytes());
    put(FADT_OFF, &sdt(b"FACP", 6, &fadt));

    put(
        RSDT_OFF,
        &sdt(b"RSDT", 1, &(addr(FADT_OFF) as u32).to_le_bytes()),
    );
    put(XSDT_OFF, &sdt(b"XSDT", 1, &addr(FADT_OFF).to_le_bytes()));

    let mut rsdp = Vec::new();
    rsdp.extend_from_slice(b"RSD PTR ");
    rsdp.push(0);
    rsdp.extend_from_slice(b"VIREO ");
    rsdp.push(rsdp_revision);
    rsdp.extend_from_slice(&(addr(RSDT_OFF) as u32).to_le_bytes());
    if rsdp_revision >= 2 {
        rsdp.extend_from_slice(&36u32.to_le_bytes());
        rsdp.extend_from_slice(&addr(XSDT_OFF).to_le_bytes());
        rsdp.extend_from_slice(&[0; 4]);
        fix_checksum(&mut rsdp[..20], 8);
        fix_checksum(&mut rsdp, 32);
    } else {
        fix_checksum(&mut rsdp, 8);
    }
    put(0, &rsdp);
    blob
}

/// CMOS bytes for `mib` MiB of RAM below 4 GiB, as QEMU and vireo's RTC store them.
fn cmos_ram(mib: u64) -> Vec<(u8, u8)> {
    let ext_kib = ((mib - 1) * 1024).min(0xFFFF) as u16;
    let above_16m = ((mib.saturating_sub(16) << 20) / (64 << 10)) as u16;
    let [e0, e1] = ext_kib.to_le_bytes();
    let [a0, a1] = above_16m.to_le_bytes();
    vec![
        (0x17, e0),
        (0x18, e1),
        (0x30, e0),
        (0x31, e1),
        (0x34, a0),
        (0x35, a1),
    ]
}

/// A fw_cfg file directory.
fn fw_cfg_dir(files: &[(&str, u16, u32)]) -> Vec<u8> {
    let mut d = (files.len() as u32).to_be_bytes().to_vec();
    for (name, key, size) in files {
        d.extend_from_slice(&size.to_be_bytes());
        d.extend_from_slice(&key.to_be_bytes());
        d.extend_from_slice(&[0, 0]);
        let mut n = [0u8; 56];
        n[..name.len()].copy_from_slice(name.as_bytes());
        d.extend_from_slice(&n);
    }
    d
}

fn assert_started(r: &Run) {
    assert!(r.serial.contains(vireo_bios::LONG_MODE_LINE), "{r:?}");
    assert_eq!(
        r.post,
        [1, 2, 3, 4],
        "POST codes: real, protected, paging, long"
    );
    for line in r.serial.lines() {
        assert!(line.starts_with(vireo_bios::BANNER_PREFIX), "{line:?}");
    }
}

// ------------------------------------------------------------------------- tests

#[test]
fn full_machine_powers_off_through_xsdt() {
    let Some(kvm) = kvm() else { return };
    // `Name (\_S5_, Package (0x04) { 0x05, 0x05, Zero, Zero })`, root-prefixed.
    let s5 = [
        0x08, b'\\', b'_', b'S', b'5', b'_', 0x12, 0x08, 0x04, 0x0A, 0x05, 0x0A, 0x05, 0x00, 0x00,
    ];
    let setup = Setup {
        cmos: cmos_ram(2),
        fw_cfg: vec![
            (0x0000, b"QEMU".to_vec()),
            (0x0005, 2u16.to_le_bytes().to_vec()),
            (
                0x0019,
                fw_cfg_dir(&[("etc/acpi/tables", 0x20, 4096), ("etc/e820", 0x21, 100)]),
            ),
        ],
        acpi: Some(acpi_tables(2, &s5)),
        ..Setup::default()
    };
    let r = run(&kvm, &setup);
    assert_started(&r);
    let s = &r.serial;
    assert!(
        s.contains("RAM 2 MiB (CMOS), fw_cfg signature QEMU, 2 CPUs"),
        "{s}"
    );
    assert!(s.contains("fw_cfg: 2 files"), "{s}");
    assert!(s.contains("0x0020 etc/acpi/tables (4096 bytes)"), "{s}");
    assert!(s.contains("0x0021 etc/e820 (100 bytes)"), "{s}");
    assert!(
        s.contains("ACPI RSDP at 0xe0000 (XSDT), FADT PM1a_CNT 0x604, S5 SLP_TYP 5"),
        "{s}"
    );
    assert!(
        s.contains("no boot device; demo done, powering off (ACPI S5)"),
        "{s}"
    );
    assert_eq!(r.pm1a_cnt, Some((5 << 10) | vireo_bios::PM1_CNT_SLP_EN));
}

#[test]
fn acpi_1_tables_without_fw_cfg() {
    let Some(kvm) = kvm() else { return };
    // vireo's own encoding: `Name (_S5_, Package () { Zero, Zero, Zero, Zero })`.
    let s5 = [
        0x08, b'_', b'S', b'5', b'_', 0x12, 0x06, 0x04, 0x00, 0x00, 0x00, 0x00,
    ];
    let setup = Setup {
        cmos: cmos_ram(128),
        fw_cfg: Vec::new(),
        acpi: Some(acpi_tables(0, &s5)),
        ..Setup::default()
    };
    let r = run(&kvm, &setup);
    assert_started(&r);
    let s = &r.serial;
    assert!(s.contains("RAM 128 MiB (CMOS), no fw_cfg"), "{s}");
    assert!(
        s.contains("ACPI RSDP at 0xe0000 (RSDT), FADT PM1a_CNT 0x604, S5 SLP_TYP 0"),
        "{s}"
    );
    assert_eq!(r.pm1a_cnt, Some(vireo_bios::PM1_CNT_SLP_EN));
}

#[test]
fn bare_machine_reports_and_halts() {
    let Some(kvm) = kvm() else { return };
    let r = run(&kvm, &Setup::default());
    assert_started(&r);
    let s = &r.serial;
    // All-zero CMOS: 1 MiB base only.
    assert!(s.contains("RAM 1 MiB (CMOS), no fw_cfg"), "{s}");
    assert!(s.contains("ACPI: no RSDP in 0xe0000-0xfffff"), "{s}");
    assert!(s.contains("power-off failed"), "{s}");
    assert!(r.halted && r.pm1a_cnt.is_none(), "{r:?}");
}

#[test]
fn failed_power_off_is_reported() {
    let Some(kvm) = kvm() else { return };
    let s5 = [
        0x08, b'_', b'S', b'5', b'_', 0x12, 0x06, 0x04, 0x00, 0x00, 0x00, 0x00,
    ];
    let setup = Setup {
        cmos: cmos_ram(2),
        acpi: Some(acpi_tables(2, &s5)),
        ignore_power_off: true,
        ..Setup::default()
    };
    let r = run(&kvm, &setup);
    assert_started(&r);
    assert_eq!(r.pm1a_cnt, Some(vireo_bios::PM1_CNT_SLP_EN));
    assert!(r.serial.contains("powering off (ACPI S5)"), "{}", r.serial);
    assert!(
        r.serial.ends_with("power-off failed; halting\r\n"),
        "{}",
        r.serial
    );
    assert!(r.halted);
}

#[test]
fn bad_checksums_are_rejected() {
    let Some(kvm) = kvm() else { return };
    let s5 = [
        0x08, b'_', b'S', b'5', b'_', 0x12, 0x06, 0x04, 0x01, 0x01, 0x00, 0x00,
    ];
    let mut tables = acpi_tables(2, &s5);
    // Corrupt the DSDT body (after the filler name) without fixing its checksum.
    tables[DSDT_OFF + 36 + 7] ^= 0x01;
    let setup = Setup {
        cmos: cmos_ram(16),
        acpi: Some(tables),
        ..Setup::default()
    };
    let r = run(&kvm, &setup);
    assert_started(&r);
    assert!(r.serial.contains("RAM 16 MiB (CMOS)"), "{}", r.serial);
    assert!(r.serial.contains("ACPI: bad DSDT"), "{}", r.serial);
    assert!(r.halted && r.pm1a_cnt.is_none(), "{r:?}");
}

/// Counts the instructions of a full run by single-stepping (where KVM supports it) and
/// keeps the firmware lean: hosts whose KVM emulates real-mode and CPL0 code run it at
/// about a million instructions per second.
#[test]
fn instruction_budget() {
    let Some(kvm) = kvm() else { return };
    if !kvm.check_extension(Cap::SetGuestDebug) {
        eprintln!("skipping: no KVM_CAP_SET_GUEST_DEBUG");
        return;
    }
    let s5 = [
        0x08, b'_', b'S', b'5', b'_', 0x12, 0x06, 0x04, 0x00, 0x00, 0x00, 0x00,
    ];
    let setup = Setup {
        cmos: cmos_ram(128),
        fw_cfg: vec![
            (0x0000, b"QEMU".to_vec()),
            (0x0005, 1u16.to_le_bytes().to_vec()),
            (0x0019, fw_cfg_dir(&[("etc/acpi/tables", 0x20, 4096)])),
        ],
        acpi: Some(acpi_tables(2, &s5)),
        single_step: true,
        ..Setup::default()
    };
    let r = run(&kvm, &setup);
    assert_started(&r);
    assert_eq!(r.pm1a_cnt, Some(vireo_bios::PM1_CNT_SLP_EN));
    eprintln!(
        "instructions: {} in all; at POST codes {:?}",
        r.steps, r.post_steps
    );
    assert!(r.steps > 1000, "single-stepping counted {} steps", r.steps);
    assert!(
        r.steps < 100_000,
        "the firmware ran {} instructions",
        r.steps
    );

    // Worst case: no ACPI tables, so the RSDP scan covers all of 0xE0000..0xFFFFF.
    let bare = run(
        &kvm,
        &Setup {
            single_step: true,
            ..Setup::default()
        },
    );
    assert!(bare.halted);
    eprintln!("instructions without ACPI tables: {}", bare.steps);
    assert!(
        bare.steps < 250_000,
        "the firmware ran {} instructions",
        bare.steps
    );
}
