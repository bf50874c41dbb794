//! ACPI table builder: the tables the machine writes into guest memory at
//! [`layout::ACPI_TABLES_START`] (inside the BIOS RSDP search area, reserved in E820).
//!
//! [`build`] returns one blob to be placed at a given guest physical address; every
//! pointer inside it is absolute. Layout of the blob (offsets from its base):
//!
//! ```text
//! 0x000  RSDP   revision 2 ("RSD PTR "), RSDT and XSDT addresses, both checksums
//! 0x040  FACS   (64-byte aligned, as the spec requires)
//! 0x080  DSDT   AML: \_S5_, \_SB_.PCI0 (PNP0A03 host bridge with _CRS, optional _PRT),
//!               \_SB_.HPET (PNP0103 with its register block, when there is an HPET)
//! ...    FADT   revision 6.5: PM1a_EVT 0x600/4, PM1a_CNT 0x604/2, PM_TMR 0x608/4, SCI 9,
//!               SMI_CMD 0 (always in ACPI mode), RESET_REG = I/O 0xCF9 value 0x06
//! ...    MADT   local APIC per CPU, IOAPIC, IRQ0->GSI2 and IRQ9 (SCI) overrides, LINT1 NMI
//! ...    HPET   (IA-PC HPET specification 1.0a, table 3) when there is an HPET
//! ...    extra tables given in [`AcpiConfig::extra_tables`] (SRAT, SLIT, ... later)
//! ...    XSDT   FADT, MADT, HPET, extra tables (64-bit pointers)
//! ...    RSDT   the same with 32-bit pointers, for ACPI 1.0 guests
//! ```
//!
//! Every table after the RSDP starts on a 16-byte boundary.
//!
//! The rust-vmm `acpi_tables` crate provides the AML encoder (the error-prone part:
//! package lengths, name strings, EISA IDs, resource templates), the FADT and FACS
//! layouts and the generic [`Sdt`] container with its checksum handling. Its RSDP type
//! cannot carry an RSDT address and its MADT has no x86 interrupt source override or
//! local APIC NMI structures, so the RSDP and the MADT entries are encoded here by hand
//! (a few fixed-layout bytes each); it has no HPET table either (20 bytes after the
//! header, written here too).

use acpi_tables::aml;
use acpi_tables::facs::FACS;
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::sdt::Sdt;
use acpi_tables::Aml;
use vireo_core::layout::{self, MemoryMap};
use vireo_core::GuestMemory;

use crate::{acpi_pm, hpet};

/// OEM ID in every table header.
pub const OEM_ID: [u8; 6] = *b"VIREO ";
/// OEM revision in every table header.
pub const OEM_REVISION: u32 = 1;
/// Reset register (PCI reset control, port 0xCF9) and the value that resets the machine.
pub const RESET_PORT: u16 = 0xcf9;
pub const RESET_VALUE: u8 = 0x06;
/// CMOS index of the century byte.
pub const RTC_CENTURY_INDEX: u8 = 0x32;
/// IAPC_BOOT_ARCH bits.
pub const BOOT_ARCH_LEGACY_DEVICES: u16 = 1 << 0;
pub const BOOT_ARCH_8042: u16 = 1 << 1;
/// MADT flag: the machine also has dual 8259 PICs.
pub const MADT_PCAT_COMPAT: u32 = 1;
/// MADT interrupt flags: polarity active high (bits 0-1 = 01), trigger level (bits 2-3 = 11).
pub const MPS_INTI_ACTIVE_HIGH_LEVEL: u16 = 0x000d;
/// MADT interrupt flags: conforming to the bus (ISA: edge, active high).
pub const MPS_INTI_CONFORMING: u16 = 0;

/// Offset of the RSDP in the blob.
pub const RSDP_OFFSET: u64 = 0;
/// Size of an ACPI 2.0+ RSDP.
pub const RSDP_LEN: usize = 36;
const FACS_OFFSET: usize = 0x40;
const FACS_LEN: usize = 64;
const HEADER_LEN: usize = 36;
const TABLE_ALIGN: usize = 16;

/// Errors while building the tables.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AcpiError {
    #[error("ACPI tables need at least one CPU")]
    NoCpus,
    #[error("{0} CPUs do not fit in xAPIC MADT entries (at most 254)")]
    TooManyCpus(u32),
    #[error("PCI MMIO window {start:#x}..={end:#x} is empty or reversed")]
    BadPciWindow { start: u32, end: u32 },
    #[error("extra ACPI table #{0} is malformed (shorter than its header or its length field)")]
    BadTable(usize),
    #[error("ACPI tables take {size:#x} bytes, more than the {max:#x} reserved for them")]
    TooLarge { size: usize, max: u64 },
    #[error("cannot write the ACPI tables to guest memory: {0}")]
    Memory(String),
}

/// A static PCI INTx route for the host bridge's `_PRT`: `pin` (0 = INTA .. 3 = INTD)
/// of device `slot` on bus 0 is wired to `gsi`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PciIrqRoute {
    pub slot: u8,
    pub pin: u8,
    pub gsi: u32,
}

/// What the tables describe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcpiConfig {
    /// Number of CPUs (APIC IDs 0..cpus, ACPI processor UIDs the same).
    pub cpus: u32,
    /// First byte of the PCI MMIO window below 4 GiB (the host bridge's `_CRS`).
    pub pci_mmio_start: u32,
    /// Last byte (inclusive) of the PCI MMIO window below 4 GiB.
    pub pci_mmio_end: u32,
    /// Static INTx routes for `\_SB.PCI0._PRT` (none: no `_PRT` is emitted).
    pub pci_irq_routes: Vec<PciIrqRoute>,
    /// ISA IRQs (besides the SCI) shared with PCI devices: overridden in the MADT as
    /// level triggered, active high, as QEMU does for its PCI link IRQs.
    pub pci_level_irqs: Vec<u8>,
    /// Complete extra tables (header included) to list in the XSDT/RSDT, such as SRAT
    /// or SLIT. Their checksums are recomputed.
    pub extra_tables: Vec<Vec<u8>>,
    /// The HPET's register block (an HPET table and a `PNP0103` device), if any.
    pub hpet: Option<u64>,
}

impl Default for AcpiConfig {
    fn default() -> AcpiConfig {
        AcpiConfig {
            cpus: 1,
            pci_mmio_start: layout::PCI_HOLE_START as u32,
            pci_mmio_end: (layout::IOAPIC_START - 1) as u32,
            pci_irq_routes: Vec::new(),
            pci_level_irqs: Vec::new(),
            extra_tables: Vec::new(),
            hpet: Some(layout::HPET_START),
        }
    }
}

impl AcpiConfig {
    /// Tables for `cpus` CPUs on a machine laid out as `map`: the PCI MMIO window runs
    /// from the end of low RAM to just below the IOAPIC.
    pub fn new(cpus: u32, map: &MemoryMap) -> AcpiConfig {
        AcpiConfig {
            cpus,
            pci_mmio_start: map.low_end.min(layout::PCI_HOLE_START) as u32,
            ..AcpiConfig::default()
        }
    }

    /// Adds an extra table (builder style).
    pub fn with_table(mut self, table: Vec<u8>) -> AcpiConfig {
        self.extra_tables.push(table);
        self
    }
}

/// The guest physical address of the RSDP when the tables are placed at the standard
/// [`layout::ACPI_TABLES_START`].
pub fn rsdp_address() -> u64 {
    layout::ACPI_TABLES_START + RSDP_OFFSET
}

/// 8-bit checksum byte that makes `data` sum to zero.
fn checksum(data: &[u8]) -> u8 {
    0u8.wrapping_sub(data.iter().fold(0u8, |a, b| a.wrapping_add(*b)))
}

fn align_up(v: usize, a: usize) -> usize {
    v.div_ceil(a) * a
}

/// An 8-character OEM table ID: "VIREO" followed by the first 3 letters of `sig`.
fn oem_table_id(sig: &[u8; 4]) -> [u8; 8] {
    let mut id = *b"VIREO   ";
    id[5..8].copy_from_slice(&sig[..3]);
    id
}

fn new_sdt(sig: [u8; 4], revision: u8) -> Sdt {
    Sdt::new(
        sig,
        HEADER_LEN as u32,
        revision,
        OEM_ID,
        oem_table_id(&sig),
        OEM_REVISION,
    )
}

/// The DSDT's AML body (without the table header).
fn dsdt_aml(cfg: &AcpiConfig) -> Vec<u8> {
    let mut body = Vec::new();

    // Name (_S5, Package () { SLP_TYP_S5, SLP_TYP_S5, 0, 0 })
    let s5 = acpi_pm::SLP_TYP_S5;
    aml::Name::new(
        "_S5_".into(),
        &aml::Package::new(vec![&s5, &s5, &0u8, &0u8]),
    )
    .to_aml_bytes(&mut body);

    // The host bridge's resources: bus 0-255, the config ports, all other I/O ports and
    // the MMIO windows (legacy VGA and the PCI hole).
    let bus = aml::AddressSpace::new_bus_number(0u16, 0xffu16);
    let cfg_ports = aml::IO::new(0xcf8, 0xcf8, 1, 8);
    let io_low = aml::AddressSpace::new_io(0u16, 0x0cf7u16, None);
    let io_high = aml::AddressSpace::new_io(0x0d00u16, 0xffffu16, None);
    let vga = aml::AddressSpace::new_memory(
        aml::AddressSpaceCacheable::Cacheable,
        true,
        0xa_0000u32,
        0xb_ffffu32,
        None,
    );
    let hole = aml::AddressSpace::new_memory(
        aml::AddressSpaceCacheable::NotCacheable,
        true,
        cfg.pci_mmio_start,
        cfg.pci_mmio_end,
        None,
    );
    let crs = aml::ResourceTemplate::new(vec![&bus, &cfg_ports, &io_low, &io_high, &vga, &hole]);

    let hid = aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0A03"));
    let uid = aml::Name::new("_UID".into(), &aml::ZERO);
    let bbn = aml::Name::new("_BBN".into(), &aml::ZERO);
    let adr = aml::Name::new("_ADR".into(), &aml::ZERO);
    let crs = aml::Name::new("_CRS".into(), &crs);

    // _PRT: Package { Package { slot << 16 | 0xFFFF, pin, 0, gsi }, ... }
    let addrs: Vec<u32> = cfg
        .pci_irq_routes
        .iter()
        .map(|r| (u32::from(r.slot) << 16) | 0xffff)
        .collect();
    let entries: Vec<aml::Package> = cfg
        .pci_irq_routes
        .iter()
        .zip(&addrs)
        .map(|(r, a)| aml::Package::new(vec![a, &r.pin, &aml::ZERO, &r.gsi]))
        .collect();
    let prt_pkg = aml::Package::new(entries.iter().map(|e| e as &dyn Aml).collect());
    let prt = aml::Name::new("_PRT".into(), &prt_pkg);

    let mut children: Vec<&dyn Aml> = vec![&hid, &uid, &bbn, &adr, &crs];
    if !cfg.pci_irq_routes.is_empty() {
        children.push(&prt);
    }
    let pci0 = aml::Device::new("PCI0".into(), children);

    // The HPET: its register block, always present (_STA 0x0F).
    let hpet_hid = aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0103"));
    let hpet_uid = aml::Name::new("_UID".into(), &aml::ZERO);
    let sta = 0x0fu8;
    let hpet_sta = aml::Name::new("_STA".into(), &sta);
    let hpet_mem =
        aml::Memory32Fixed::new(false, cfg.hpet.unwrap_or(0) as u32, hpet::MMIO_LEN as u32);
    let hpet_res = aml::ResourceTemplate::new(vec![&hpet_mem]);
    let hpet_crs = aml::Name::new("_CRS".into(), &hpet_res);
    let hpet_dev = aml::Device::new(
        "HPET".into(),
        vec![&hpet_hid, &hpet_uid, &hpet_sta, &hpet_crs],
    );
    let mut devices: Vec<&dyn Aml> = vec![&pci0];
    if cfg.hpet.is_some() {
        devices.push(&hpet_dev);
    }
    aml::Scope::new("\\_SB_".into(), devices).to_aml_bytes(&mut body);
    body
}

/// The HPET description table (IA-PC HPET specification 1.0a, table 3) for the
/// register block at `addr`.
fn hpet_table(addr: u64) -> Vec<u8> {
    let mut t = new_sdt(*b"HPET", 1);
    let mut body = Vec::new();
    // Event Timer Block ID: the capabilities register's low half.
    body.extend_from_slice(&hpet::BLOCK_ID.to_le_bytes());
    // Base address (GAS): system memory, 64-bit registers.
    let gas = GAS::new(
        AddressSpace::SystemMemory,
        64,
        0,
        AccessSize::Undefined,
        addr,
    );
    gas.to_aml_bytes(&mut body);
    // HPET sequence number.
    body.push(0);
    // Main counter minimum clock tick in periodic mode: the shortest period that
    // interrupts without coalescing.
    let min_ticks = (hpet::MIN_PERIOD_NS * hpet::HPET_HZ / 1_000_000_000) as u16;
    body.extend_from_slice(&min_ticks.to_le_bytes());
    // Page protection and OEM attribute: none.
    body.push(0);
    t.append_slice(&body);
    t.as_slice().to_vec()
}

fn dsdt(cfg: &AcpiConfig) -> Vec<u8> {
    let mut t = new_sdt(*b"DSDT", 2);
    t.append_slice(&dsdt_aml(cfg));
    t.as_slice().to_vec()
}

fn madt(cfg: &AcpiConfig) -> Vec<u8> {
    let mut t = new_sdt(*b"APIC", 3);
    let mut body = Vec::new();
    body.extend_from_slice(&(layout::LAPIC_START as u32).to_le_bytes());
    body.extend_from_slice(&MADT_PCAT_COMPAT.to_le_bytes());
    // Processor Local APIC (type 0): uid, APIC ID, flags = enabled.
    for cpu in 0..cfg.cpus {
        let id = cpu as u8;
        body.extend_from_slice(&[0, 8, id, id]);
        body.extend_from_slice(&1u32.to_le_bytes());
    }
    // I/O APIC (type 1): id = number of CPUs, address, GSI base 0.
    body.extend_from_slice(&[1, 12, cfg.cpus as u8, 0]);
    body.extend_from_slice(&(layout::IOAPIC_START as u32).to_le_bytes());
    body.extend_from_slice(&0u32.to_le_bytes());
    // Interrupt Source Override (type 2): bus 0 (ISA), source IRQ, GSI, flags.
    let mut iso = |irq: u8, gsi: u32, flags: u16| {
        body.extend_from_slice(&[2, 10, 0, irq]);
        body.extend_from_slice(&gsi.to_le_bytes());
        body.extend_from_slice(&flags.to_le_bytes());
    };
    iso(0, 2, MPS_INTI_CONFORMING);
    let sci = acpi_pm::SCI_IRQ as u8;
    iso(sci, u32::from(sci), MPS_INTI_ACTIVE_HIGH_LEVEL);
    let mut level: Vec<u8> = cfg
        .pci_level_irqs
        .iter()
        .copied()
        .filter(|&i| i != 0 && i != sci && i < 16)
        .collect();
    level.sort_unstable();
    level.dedup();
    for irq in level {
        iso(irq, u32::from(irq), MPS_INTI_ACTIVE_HIGH_LEVEL);
    }
    // Local APIC NMI (type 4): all processors (0xFF), conforming, LINT1.
    body.extend_from_slice(&[4, 6, 0xff, 0, 0, 1]);
    t.append_slice(&body);
    t.as_slice().to_vec()
}

fn fadt(facs: u64, dsdt: u64) -> Vec<u8> {
    let io = |bits: u8, port: u64| {
        GAS::new(AddressSpace::SystemIo, bits, 0, AccessSize::Undefined, port)
    };
    let none = GAS::default();
    let mut f = FADTBuilder::new(OEM_ID, oem_table_id(b"FACP"), OEM_REVISION)
        .flag(Flags::Wbinvd)
        .flag(Flags::ProcC1)
        .flag(Flags::SlpButton)
        .flag(Flags::ResetRegSup)
        .flag(Flags::UsePlatformClock);
    f.firmware_ctrl = (facs as u32).into();
    f.x_firmware_ctrl = facs.into();
    f.dsdt = (dsdt as u32).into();
    f.x_dsdt = dsdt.into();
    f.sci_int = (acpi_pm::SCI_IRQ as u16).into();
    f.smi_cmd = 0.into();
    f.pm1a_evt_blk = (acpi_pm::PM1A_EVT as u32).into();
    f.pm1a_cnt_blk = (acpi_pm::PM1A_CNT as u32).into();
    f.pm_tmr_blk = (acpi_pm::PM_TMR as u32).into();
    f.pm1_evt_len = acpi_pm::PM1_EVT_LEN;
    f.pm1_cnt_len = acpi_pm::PM1_CNT_LEN;
    f.pm_tmr_len = acpi_pm::PM_TMR_LEN;
    // Latencies above 100 / 1000 us mean C2 / C3 are not supported.
    f.p_lvl2_lat = 0x0fff.into();
    f.p_lvl3_lat = 0x0fff.into();
    f.century = RTC_CENTURY_INDEX;
    f.iapc_boot_arch = (BOOT_ARCH_LEGACY_DEVICES | BOOT_ARCH_8042).into();
    f.reset_reg = GAS::new(
        AddressSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        u64::from(RESET_PORT),
    );
    f.reset_value = RESET_VALUE;
    f.x_pm1a_evt_blk = io(8 * acpi_pm::PM1_EVT_LEN, acpi_pm::PM1A_EVT);
    f.x_pm1b_evt_blk = none;
    f.x_pm1a_cnt_blk = io(8 * acpi_pm::PM1_CNT_LEN, acpi_pm::PM1A_CNT);
    f.x_pm_tmr_blk = io(8 * acpi_pm::PM_TMR_LEN, acpi_pm::PM_TMR);
    let mut v = Vec::new();
    f.finalize().to_aml_bytes(&mut v);
    v
}

/// XSDT (`ptr_size` 8) or RSDT (`ptr_size` 4) listing `entries`.
fn sdt_list(sig: [u8; 4], entries: &[u64], ptr_size: usize) -> Vec<u8> {
    let mut t = new_sdt(sig, 1);
    let mut body = Vec::new();
    for e in entries {
        body.extend_from_slice(&e.to_le_bytes()[..ptr_size]);
    }
    t.append_slice(&body);
    t.as_slice().to_vec()
}

fn rsdp(rsdt: u32, xsdt: u64) -> [u8; RSDP_LEN] {
    let mut r = [0u8; RSDP_LEN];
    r[0..8].copy_from_slice(b"RSD PTR ");
    r[9..15].copy_from_slice(&OEM_ID);
    r[15] = 2;
    r[16..20].copy_from_slice(&rsdt.to_le_bytes());
    r[20..24].copy_from_slice(&(RSDP_LEN as u32).to_le_bytes());
    r[24..32].copy_from_slice(&xsdt.to_le_bytes());
    r[8] = checksum(&r[..20]);
    r[32] = checksum(&r);
    r
}

/// Checks an extra table's header and fixes its checksum.
fn fix_extra(i: usize, t: &[u8]) -> Result<Vec<u8>, AcpiError> {
    if t.len() < HEADER_LEN {
        return Err(AcpiError::BadTable(i));
    }
    let len = u32::from_le_bytes([t[4], t[5], t[6], t[7]]) as usize;
    if len != t.len() {
        return Err(AcpiError::BadTable(i));
    }
    let mut t = t.to_vec();
    t[9] = 0;
    t[9] = checksum(&t);
    Ok(t)
}

/// Builds all tables as one blob to be placed at `base_gpa` (RSDP at offset 0, every
/// pointer absolute). `base_gpa` must be below 4 GiB for the 32-bit pointers (the
/// standard place is [`layout::ACPI_TABLES_START`]).
pub fn build(cfg: &AcpiConfig, base_gpa: u64) -> Result<Vec<u8>, AcpiError> {
    if cfg.cpus == 0 {
        return Err(AcpiError::NoCpus);
    }
    if cfg.cpus > 254 {
        return Err(AcpiError::TooManyCpus(cfg.cpus));
    }
    if cfg.pci_mmio_start > cfg.pci_mmio_end {
        return Err(AcpiError::BadPciWindow {
            start: cfg.pci_mmio_start,
            end: cfg.pci_mmio_end,
        });
    }
    let extras = cfg
        .extra_tables
        .iter()
        .enumerate()
        .map(|(i, t)| fix_extra(i, t))
        .collect::<Result<Vec<_>, _>>()?;

    let dsdt = dsdt(cfg);
    let madt = madt(cfg);
    let fadt_len = acpi_tables::fadt::FADT::len();
    // Tables listed after the MADT: the HPET's, then the caller's.
    let mut extras = extras;
    if let Some(addr) = cfg.hpet {
        extras.insert(0, hpet_table(addr));
    }

    // Offsets of everything.
    let dsdt_off = FACS_OFFSET + FACS_LEN;
    let fadt_off = align_up(dsdt_off + dsdt.len(), TABLE_ALIGN);
    let madt_off = align_up(fadt_off + fadt_len, TABLE_ALIGN);
    let mut off = align_up(madt_off + madt.len(), TABLE_ALIGN);
    let mut extra_offs = Vec::with_capacity(extras.len());
    for t in &extras {
        extra_offs.push(off);
        off = align_up(off + t.len(), TABLE_ALIGN);
    }
    let n_entries = 2 + extras.len();
    let xsdt_off = off;
    let rsdt_off = align_up(xsdt_off + HEADER_LEN + 8 * n_entries, TABLE_ALIGN);
    let total = rsdt_off + HEADER_LEN + 4 * n_entries;
    if total as u64 > layout::ACPI_TABLES_SIZE {
        return Err(AcpiError::TooLarge {
            size: total,
            max: layout::ACPI_TABLES_SIZE,
        });
    }
    let at = |o: usize| base_gpa + o as u64;

    let fadt = fadt(at(FACS_OFFSET), at(dsdt_off));
    debug_assert_eq!(fadt.len(), fadt_len);
    let mut entries = vec![at(fadt_off), at(madt_off)];
    entries.extend(extra_offs.iter().map(|&o| at(o)));
    let xsdt = sdt_list(*b"XSDT", &entries, 8);
    let rsdt = sdt_list(*b"RSDT", &entries, 4);
    let rsdp = rsdp(at(rsdt_off) as u32, at(xsdt_off));
    let mut facs = Vec::new();
    FACS::new().to_aml_bytes(&mut facs);

    let mut blob = vec![0u8; total];
    let mut put = |o: usize, t: &[u8]| blob[o..o + t.len()].copy_from_slice(t);
    put(RSDP_OFFSET as usize, &rsdp);
    put(FACS_OFFSET, &facs);
    put(dsdt_off, &dsdt);
    put(fadt_off, &fadt);
    put(madt_off, &madt);
    for (t, &o) in extras.iter().zip(&extra_offs) {
        put(o, t);
    }
    put(xsdt_off, &xsdt);
    put(rsdt_off, &rsdt);
    log::debug!(target: "vireo::dev::acpi",
        "ACPI tables for {} CPUs: {total:#x} bytes at {base_gpa:#x}", cfg.cpus);
    Ok(blob)
}

/// Builds the tables and writes them at [`layout::ACPI_TABLES_START`]; returns the RSDP
/// address to hand to the guest (e.g. Linux's `acpi_rsdp_addr`).
pub fn write_tables(mem: &GuestMemory, cfg: &AcpiConfig) -> Result<u64, AcpiError> {
    let blob = build(cfg, layout::ACPI_TABLES_START)?;
    mem.write(layout::ACPI_TABLES_START, &blob)
        .map_err(|e| AcpiError::Memory(e.to_string()))?;
    Ok(rsdp_address())
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: u64 = layout::ACPI_TABLES_START;

    fn u32_at(b: &[u8], o: usize) -> u32 {
        u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
    }
    fn u64_at(b: &[u8], o: usize) -> u64 {
        u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
    }
    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    /// The table at guest address `gpa` in `blob`, checked for a sane length.
    fn table(blob: &[u8], gpa: u64) -> &[u8] {
        let o = (gpa - BASE) as usize;
        let len = u32_at(blob, o + 4) as usize;
        assert!(len >= 36 && o + len <= blob.len());
        &blob[o..o + len]
    }

    fn xsdt_entries(blob: &[u8]) -> Vec<u64> {
        let x = table(blob, u64_at(blob, 24));
        (36..x.len()).step_by(8).map(|o| u64_at(x, o)).collect()
    }

    fn find(blob: &[u8], sig: &[u8; 4]) -> Vec<u8> {
        xsdt_entries(blob)
            .into_iter()
            .map(|a| table(blob, a))
            .find(|t| &t[..4] == sig)
            .unwrap()
            .to_vec()
    }

    #[test]
    fn rsdp_signature_and_checksums() {
        let blob = build(&AcpiConfig::default(), BASE).unwrap();
        assert_eq!(&blob[..8], b"RSD PTR ");
        assert_eq!(blob[15], 2);
        assert_eq!(sum(&blob[..20]), 0);
        assert_eq!(sum(&blob[..36]), 0);
        assert_eq!(u32_at(&blob, 20), 36);
        assert_eq!(rsdp_address(), BASE);
        assert_eq!(BASE % 16, 0);
    }

    #[test]
    fn every_table_checksums_to_zero() {
        let cfg = AcpiConfig {
            cpus: 4,
            pci_irq_routes: vec![PciIrqRoute {
                slot: 1,
                pin: 0,
                gsi: 11,
            }],
            ..AcpiConfig::default()
        }
        .with_table({
            let mut t = vec![0u8; 48];
            t[..4].copy_from_slice(b"SLIT");
            t[4] = 48;
            t
        });
        let blob = build(&cfg, BASE).unwrap();
        let x = table(&blob, u64_at(&blob, 24));
        assert_eq!(&x[..4], b"XSDT");
        assert_eq!(sum(x), 0);
        let r = table(&blob, u64::from(u32_at(&blob, 16)));
        assert_eq!(&r[..4], b"RSDT");
        assert_eq!(sum(r), 0);
        let addrs = xsdt_entries(&blob);
        assert_eq!(addrs.len(), 4);
        // The RSDT lists the same tables.
        let rs: Vec<u64> = (36..r.len())
            .step_by(4)
            .map(|o| u64::from(u32_at(r, o)))
            .collect();
        assert_eq!(rs, addrs);
        for a in addrs {
            assert_eq!(a % 16, 0);
            let t = table(&blob, a);
            assert_eq!(sum(t), 0, "{}", String::from_utf8_lossy(&t[..4]));
        }
        let fadt = find(&blob, b"FACP");
        let dsdt = table(&blob, u64::from(u32_at(&fadt, 40)));
        assert_eq!(&dsdt[..4], b"DSDT");
        assert_eq!(sum(dsdt), 0);
        assert_eq!(&find(&blob, b"SLIT")[..4], b"SLIT");
    }

    #[test]
    fn xsdt_points_to_fadt_madt_and_hpet() {
        let sigs = |cfg: &AcpiConfig| -> Vec<[u8; 4]> {
            let blob = build(cfg, BASE).unwrap();
            xsdt_entries(&blob)
                .into_iter()
                .map(|a| table(&blob, a)[..4].try_into().unwrap())
                .collect()
        };
        assert_eq!(
            sigs(&AcpiConfig::default()),
            vec![*b"FACP", *b"APIC", *b"HPET"]
        );
        let no_hpet = AcpiConfig {
            hpet: None,
            ..AcpiConfig::default()
        };
        assert_eq!(sigs(&no_hpet), vec![*b"FACP", *b"APIC"]);
    }

    #[test]
    fn hpet_table_describes_the_block() {
        let blob = build(&AcpiConfig::default(), BASE).unwrap();
        let h = find(&blob, b"HPET");
        // 36-byte header + block ID (4) + GAS (12) + number (1) + min tick (2) +
        // attributes (1).
        assert_eq!(h.len(), 56);
        assert_eq!(h[8], 1, "revision");
        assert_eq!(sum(&h), 0);
        // Block ID: vendor 8086h, legacy capable, 64-bit counter, 3 timers, rev 1.
        assert_eq!(u32_at(&h, 36), 0x8086_a201);
        // GAS: system memory (0), 64-bit, offset 0, address 0xFED00000.
        assert_eq!((h[40], h[41], h[42]), (0, 64, 0));
        assert_eq!(u64_at(&h, 44), 0xfed0_0000);
        assert_eq!(h[52], 0);
        // 10 us at 100 MHz.
        assert_eq!(u16::from_le_bytes([h[53], h[54]]), 1000);
        assert_eq!(h[55], 0);
    }

    #[test]
    fn dsdt_declares_the_hpet_device() {
        let dsdt_of = |cfg: &AcpiConfig| {
            let blob = build(cfg, BASE).unwrap();
            let f = find(&blob, b"FACP");
            table(&blob, u64::from(u32_at(&f, 40))).to_vec()
        };
        let d = dsdt_of(&AcpiConfig::default());
        let has = |d: &[u8], n: &[u8]| d.windows(n.len()).any(|w| w == n);
        // _HID EISAID("PNP0103") = 0x0301D041.
        assert!(has(
            &d,
            &[0x08, b'_', b'H', b'I', b'D', 0x0c, 0x41, 0xd0, 0x01, 0x03]
        ));
        assert!(has(&d, b"HPET"));
        // Memory32Fixed (read-only) 0xFED00000, length 0x400.
        assert!(has(
            &d,
            &[0x86, 9, 0, 0, 0x00, 0x00, 0xd0, 0xfe, 0x00, 0x04, 0, 0]
        ));
        let none = dsdt_of(&AcpiConfig {
            hpet: None,
            ..AcpiConfig::default()
        });
        assert!(!has(&none, b"HPET"));
    }

    #[test]
    fn fadt_holds_pm_ports_and_pointers() {
        let blob = build(&AcpiConfig::default(), BASE).unwrap();
        let f = find(&blob, b"FACP");
        assert_eq!(f[8], 6); // revision
        assert_eq!(f.len(), 276);
        let facs = u32_at(&f, 36);
        assert_eq!(facs % 64, 0);
        assert_eq!(u64_at(&f, 132), u64::from(facs)); // X_FIRMWARE_CTRL
        let fo = (u64::from(facs) - BASE) as usize;
        assert_eq!(&blob[fo..fo + 4], b"FACS");
        assert_eq!(u32_at(&blob, fo + 4), 64);
        let dsdt = u32_at(&f, 40);
        assert_eq!(u64_at(&f, 140), u64::from(dsdt)); // X_DSDT
        assert_eq!(u16::from_le_bytes([f[46], f[47]]), 9); // SCI_INT
        assert_eq!(u32_at(&f, 48), 0); // SMI_CMD
        assert_eq!(u32_at(&f, 56), 0x600); // PM1a_EVT_BLK
        assert_eq!(u32_at(&f, 64), 0x604); // PM1a_CNT_BLK
        assert_eq!(u32_at(&f, 76), 0x608); // PM_TMR_BLK
        assert_eq!((f[88], f[89], f[91]), (4, 2, 4)); // lengths
        let flags = u32_at(&f, 112);
        assert_ne!(flags & (1 << 10), 0); // RESET_REG_SUP
        assert_eq!(flags & (1 << 8), 0); // 24-bit PM timer
        assert_eq!(flags & (1 << 20), 0); // not hardware reduced
        assert_eq!(u16::from_le_bytes([f[109], f[110]]) & 2, 2); // 8042
                                                                 // RESET_REG: SystemIO, 8 bits, port 0xCF9, value 6.
        assert_eq!((f[116], f[117]), (1, 8));
        assert_eq!(u64_at(&f, 120), 0xcf9);
        assert_eq!(f[128], 6);
        // X_PM1a_EVT_BLK / X_PM1a_CNT_BLK / X_PM_TMR_BLK.
        assert_eq!((f[148], f[149], u64_at(&f, 152)), (1, 32, 0x600));
        assert_eq!((f[172], f[173], u64_at(&f, 176)), (1, 16, 0x604));
        assert_eq!((f[208], f[209], u64_at(&f, 212)), (1, 32, 0x608));
    }

    #[test]
    fn dsdt_has_s5_and_pci0() {
        let blob = build(&AcpiConfig::default(), BASE).unwrap();
        let f = find(&blob, b"FACP");
        let d = table(&blob, u64::from(u32_at(&f, 40))).to_vec();
        let s5 = acpi_pm::SLP_TYP_S5;
        // NameOp "_S5_" PackageOp PkgLength(6) NumElements(4) then 4 integers.
        let enc = |v: u8| if v <= 1 { vec![v] } else { vec![0x0a, v] };
        let mut pkg = vec![4];
        pkg.extend(enc(s5));
        pkg.extend(enc(s5));
        pkg.extend([0, 0]);
        let mut want = vec![0x08, b'_', b'S', b'5', b'_', 0x12, pkg.len() as u8 + 1];
        want.extend(pkg);
        assert!(d.windows(want.len()).any(|w| w == want), "{d:x?}");
        let has = |n: &[u8]| d.windows(n.len()).any(|w| w == n);
        assert!(has(b"_SB_"));
        assert!(has(&[0x5b, 0x82])); // DeviceOp
        assert!(has(b"PCI0"));
        // _HID EISAID("PNP0A03") = 0x030AD041 as a DWord constant.
        assert!(has(&[
            0x08, b'_', b'H', b'I', b'D', 0x0c, 0x41, 0xd0, 0x0a, 0x03
        ]));
        assert!(has(b"_UID") && has(b"_BBN") && has(b"_CRS"));
        assert!(!has(b"_PRT"));
    }

    #[test]
    fn madt_has_one_lapic_per_cpu() {
        for cpus in [1u32, 2, 8] {
            let blob = build(
                &AcpiConfig {
                    cpus,
                    ..AcpiConfig::default()
                },
                BASE,
            )
            .unwrap();
            let m = find(&blob, b"APIC");
            assert_eq!(u32_at(&m, 36), 0xfee0_0000);
            assert_eq!(u32_at(&m, 40), MADT_PCAT_COMPAT);
            let mut o = 44;
            let mut lapics = vec![];
            let mut ioapic = None;
            let mut isos = vec![];
            let mut nmi = None;
            while o < m.len() {
                let (ty, len) = (m[o], m[o + 1] as usize);
                assert!(len >= 2 && o + len <= m.len());
                match ty {
                    0 => lapics.push((m[o + 2], m[o + 3], u32_at(&m, o + 4))),
                    1 => ioapic = Some((m[o + 2], u32_at(&m, o + 4), u32_at(&m, o + 8))),
                    2 => isos.push((
                        m[o + 3],
                        u32_at(&m, o + 4),
                        u16::from_le_bytes([m[o + 8], m[o + 9]]),
                    )),
                    4 => nmi = Some((m[o + 2], m[o + 5])),
                    _ => panic!("unexpected MADT entry {ty}"),
                }
                o += len;
            }
            let want: Vec<_> = (0..cpus as u8).map(|i| (i, i, 1)).collect();
            assert_eq!(lapics, want);
            assert_eq!(ioapic, Some((cpus as u8, 0xfec0_0000, 0)));
            assert_eq!(isos, vec![(0, 2, 0), (9, 9, 0xd)]);
            assert_eq!(nmi, Some((0xff, 1)));
        }
    }

    #[test]
    fn bad_configs_are_refused() {
        let c = |cpus| AcpiConfig {
            cpus,
            ..AcpiConfig::default()
        };
        assert_eq!(build(&c(0), BASE), Err(AcpiError::NoCpus));
        assert_eq!(build(&c(255), BASE), Err(AcpiError::TooManyCpus(255)));
        assert!(build(&c(254), BASE).is_ok());
        let bad = AcpiConfig::default().with_table(vec![0; 10]);
        assert_eq!(build(&bad, BASE), Err(AcpiError::BadTable(0)));
        let big = AcpiConfig::default().with_table({
            let mut t = vec![0u8; 0x10000];
            t[4..8].copy_from_slice(&0x10000u32.to_le_bytes());
            t
        });
        assert!(matches!(build(&big, BASE), Err(AcpiError::TooLarge { .. })));
    }

    #[test]
    fn written_to_guest_memory() {
        let mem = GuestMemory::new(64 << 20).unwrap();
        let cfg = AcpiConfig::new(2, mem.map());
        assert_eq!(cfg.pci_mmio_start, 64 << 20);
        let rsdp = write_tables(&mem, &cfg).unwrap();
        let mut sig = [0u8; 8];
        mem.read(rsdp, &mut sig).unwrap();
        assert_eq!(&sig, b"RSD PTR ");
    }
}
