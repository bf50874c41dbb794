//! Intel MultiProcessor Specification 1.4 tables: the MP floating pointer structure and
//! the MP configuration table, as SeaBIOS builds them for QEMU's `pc` machine, for
//! guests that look for them besides (or instead of, `acpi=off`) the ACPI MADT.
//!
//! Where they go ([`write`]): the 16-byte floating pointer at
//! [`layout::MPTABLE_FLOATING`] (the first paragraph of the EBDA at 0x9FC00: Linux scans
//! the last KiB of base memory whatever the BDA says, and E820 reserves it; the other
//! places Linux scans are the IVT and the read-only ROM at 0xF0000), the configuration
//! table at [`layout::MPTABLE_START`] (0xEE000, after the ACPI tables, E820 reserved).
//!
//! The configuration table describes the same machine as the MADT
//! ([`crate::acpi`]), entries in the order the specification asks for:
//!
//! ```text
//! processor  one per CPU: APIC ID i, local APIC version 14h, enabled, BSP flag on CPU 0
//! bus        0 "PCI   ", 1 "ISA   "
//! I/O APIC   ID = number of CPUs (as in the MADT), version 11h, enabled, 0xFEC00000
//! I/O int    PCI INTx routes (bus 0, source (slot << 2) | pin), when given
//!            ISA IRQs 0-15 to the IOAPIC pin of the same number, except IRQ 0 to pin 2
//!            (no entry for IRQ 2, as SeaBIOS with QEMU's irq0-override); flags
//!            conforming to the bus (edge, active high), except the SCI (IRQ 9) and the
//!            PCI-shared ISA IRQs: level, active high, as the MADT's overrides say
//! local int  ExtINT on LINT0, NMI on LINT1, both to every local APIC (ID 0xFF)
//! ```
//!
//! The floating pointer's feature byte 1 is 0 (a configuration table is present, no
//! default configuration) and feature byte 2 is 0 (no IMCR: the PIC is connected in
//! virtual wire mode, through the BSP's LINT0), as SeaBIOS leaves them. There is no
//! extended table and no OEM table.
//!
//! SeaBIOS differs in two details: it lists no ISA entry for its PCI IRQs (5, 9, 10,
//! 11), where this table lists IRQ 9 as level triggered like the MADT, and it sends
//! ExtINT to the BSP's LINT0 only; the specification's default configurations send it
//! to all local APICs, which Linux (the only reader that matters) ignores either way.

use vireo_core::layout;
use vireo_core::GuestMemory;

use crate::acpi::{AcpiConfig, PciIrqRoute, MPS_INTI_ACTIVE_HIGH_LEVEL, MPS_INTI_CONFORMING};
use crate::acpi_pm;
use crate::apic::{ioapic, lapic};

/// Length of the floating pointer structure (one paragraph).
pub const FLOATING_LEN: usize = 16;
/// Length of the configuration table header.
pub const HEADER_LEN: usize = 44;
/// Specification revision 1.4.
pub const SPEC_REV: u8 = 4;
/// OEM ID of the configuration table.
pub const OEM_ID: [u8; 8] = *b"VIREO   ";
/// Product ID of the configuration table.
pub const PRODUCT_ID: [u8; 12] = *b"PC          ";
/// Most CPUs the tables describe: 8-bit APIC IDs, with one ID left for the IOAPIC and
/// 0xFF meaning "all local APICs" (the MADT's limit too).
pub const MAX_CPUS: u32 = 254;
/// Bus IDs.
pub const BUS_PCI: u8 = 0;
pub const BUS_ISA: u8 = 1;
/// CPU signature (CPUID leaf 1 EAX) SeaBIOS writes when CPUID has none: family 6.
pub const DEFAULT_CPU_SIGNATURE: u32 = 0x600;
/// Feature flags (CPUID leaf 1 EDX) SeaBIOS writes when CPUID has none: FPU and APIC.
pub const DEFAULT_CPU_FEATURES: u32 = 0x201;

/// Entry types.
pub mod entry {
    pub const PROCESSOR: u8 = 0;
    pub const BUS: u8 = 1;
    pub const IOAPIC: u8 = 2;
    pub const IO_INTERRUPT: u8 = 3;
    pub const LOCAL_INTERRUPT: u8 = 4;
    /// Length of a processor entry; every other entry is 8 bytes.
    pub const PROCESSOR_LEN: usize = 20;
    pub const OTHER_LEN: usize = 8;
}

/// Interrupt types of I/O and local interrupt entries.
pub mod int_type {
    pub const INT: u8 = 0;
    pub const NMI: u8 = 1;
    pub const SMI: u8 = 2;
    pub const EXTINT: u8 = 3;
}

/// Processor entry flags.
pub const CPU_ENABLED: u8 = 1 << 0;
pub const CPU_BSP: u8 = 1 << 1;
/// I/O APIC entry flag.
pub const IOAPIC_ENABLED: u8 = 1 << 0;
/// Destination "all local APICs" of a local interrupt entry.
pub const ALL_LOCAL_APICS: u8 = 0xff;

/// Errors while building or writing the tables.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MpError {
    #[error("MP tables need at least one CPU")]
    NoCpus,
    #[error("{0} CPUs do not fit in MP processor entries (at most 254)")]
    TooManyCpus(u32),
    #[error("PCI interrupt route slot {slot} pin {pin} -> GSI {gsi} is out of range")]
    BadRoute { slot: u8, pin: u8, gsi: u32 },
    #[error("MP configuration table address {0:#x} is not below 4 GiB")]
    BadAddress(u64),
    #[error(
        "MP configuration table takes {size:#x} bytes, more than the {max:#x} reserved for it"
    )]
    TooLarge { size: usize, max: u64 },
    #[error("cannot write the MP tables to guest memory: {0}")]
    Memory(String),
}

/// What the tables describe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MpConfig {
    /// Number of CPUs (APIC IDs 0..cpus; CPU 0 is the BSP).
    pub cpus: u32,
    /// CPU signature of every processor entry (CPUID leaf 1 EAX).
    pub cpu_signature: u32,
    /// Feature flags of every processor entry (CPUID leaf 1 EDX).
    pub cpu_features: u32,
    /// Static PCI INTx routes (bus 0), as in the DSDT's `_PRT`.
    pub pci_irq_routes: Vec<PciIrqRoute>,
    /// ISA IRQs shared with PCI devices: level triggered, active high, as in the MADT.
    pub pci_level_irqs: Vec<u8>,
}

impl MpConfig {
    /// Tables for `cpus` CPUs, SeaBIOS's fallback CPU signature and features, no PCI
    /// routes.
    pub fn new(cpus: u32) -> MpConfig {
        MpConfig {
            cpus,
            cpu_signature: DEFAULT_CPU_SIGNATURE,
            cpu_features: DEFAULT_CPU_FEATURES,
            pci_irq_routes: Vec::new(),
            pci_level_irqs: Vec::new(),
        }
    }
}

impl From<&AcpiConfig> for MpConfig {
    /// The MP view of the machine the ACPI tables describe (same CPUs, PCI routes and
    /// level-triggered ISA IRQs), so that both agree.
    fn from(acpi: &AcpiConfig) -> MpConfig {
        MpConfig {
            pci_irq_routes: acpi.pci_irq_routes.clone(),
            pci_level_irqs: acpi.pci_level_irqs.clone(),
            ..MpConfig::new(acpi.cpus)
        }
    }
}

/// The two structures, ready to be copied into guest memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MpTables {
    /// The floating pointer structure (points to the configuration table).
    pub floating: [u8; FLOATING_LEN],
    /// The configuration table (base table only).
    pub config: Vec<u8>,
}

/// 8-bit checksum byte that makes `data` sum to zero.
fn checksum(data: &[u8]) -> u8 {
    0u8.wrapping_sub(data.iter().fold(0u8, |a, b| a.wrapping_add(*b)))
}

/// The floating pointer structure for a configuration table at `config_gpa`.
fn floating(config_gpa: u32) -> [u8; FLOATING_LEN] {
    let mut f = [0u8; FLOATING_LEN];
    f[..4].copy_from_slice(b"_MP_");
    f[4..8].copy_from_slice(&config_gpa.to_le_bytes());
    f[8] = 1; // length in paragraphs
    f[9] = SPEC_REV;
    // f[11] feature byte 1 = 0: a configuration table is present.
    // f[12] feature byte 2 = 0: IMCR absent, virtual wire mode.
    f[10] = checksum(&f);
    f
}

/// The ISA interrupt assignments: `(ISA IRQ, IOAPIC pin, MPS INTI flags)` for IRQs 0-15.
fn isa_irqs(cfg: &MpConfig) -> Vec<(u8, u8, u16)> {
    let sci = acpi_pm::SCI_IRQ as u8;
    (0u8..16)
        .filter(|&irq| irq != 2)
        .map(|irq| {
            let pin = if irq == 0 { 2 } else { irq };
            let level = irq != 0 && (irq == sci || cfg.pci_level_irqs.contains(&irq));
            let flags = if level {
                MPS_INTI_ACTIVE_HIGH_LEVEL
            } else {
                MPS_INTI_CONFORMING
            };
            (irq, pin, flags)
        })
        .collect()
}

/// Builds both structures; the floating pointer points to `config_gpa`, where the
/// caller places the configuration table (below 4 GiB; the standard place is
/// [`layout::MPTABLE_START`]).
pub fn build(cfg: &MpConfig, config_gpa: u64) -> Result<MpTables, MpError> {
    if cfg.cpus == 0 {
        return Err(MpError::NoCpus);
    }
    if cfg.cpus > MAX_CPUS {
        return Err(MpError::TooManyCpus(cfg.cpus));
    }
    let config_gpa32 = u32::try_from(config_gpa).map_err(|_| MpError::BadAddress(config_gpa))?;
    for r in &cfg.pci_irq_routes {
        if r.slot >= 32 || r.pin > 3 || r.gsi >= ioapic::PINS as u32 {
            return Err(MpError::BadRoute {
                slot: r.slot,
                pin: r.pin,
                gsi: r.gsi,
            });
        }
    }
    let ioapic_id = cfg.cpus as u8;
    let mut t = vec![0u8; HEADER_LEN];
    let mut entries: u16 = 0;
    let mut short = |t: &mut Vec<u8>, e: [u8; 8]| {
        t.extend_from_slice(&e);
        entries += 1;
    };

    // Processors.
    for cpu in 0..cfg.cpus {
        let flags = CPU_ENABLED | if cpu == 0 { CPU_BSP } else { 0 };
        t.extend_from_slice(&[entry::PROCESSOR, cpu as u8, lapic::VERSION as u8, flags]);
        t.extend_from_slice(&cfg.cpu_signature.to_le_bytes());
        t.extend_from_slice(&cfg.cpu_features.to_le_bytes());
        t.extend_from_slice(&[0; 8]);
    }
    // Buses.
    for (id, name) in [(BUS_PCI, b"PCI   "), (BUS_ISA, b"ISA   ")] {
        let mut e = [entry::BUS, id, 0, 0, 0, 0, 0, 0];
        e[2..].copy_from_slice(name);
        short(&mut t, e);
    }
    // The IOAPIC.
    let mut e = [
        entry::IOAPIC,
        ioapic_id,
        ioapic::VERSION as u8,
        IOAPIC_ENABLED,
        0,
        0,
        0,
        0,
    ];
    e[4..].copy_from_slice(&(layout::IOAPIC_START as u32).to_le_bytes());
    short(&mut t, e);
    // I/O interrupt assignments: PCI INTx, then the ISA IRQs.
    let io_int = |flags: u16, bus: u8, src: u8, pin: u8| {
        let f = flags.to_le_bytes();
        [
            entry::IO_INTERRUPT,
            int_type::INT,
            f[0],
            f[1],
            bus,
            src,
            ioapic_id,
            pin,
        ]
    };
    for r in &cfg.pci_irq_routes {
        let src = (r.slot << 2) | r.pin;
        short(
            &mut t,
            io_int(MPS_INTI_ACTIVE_HIGH_LEVEL, BUS_PCI, src, r.gsi as u8),
        );
    }
    for (irq, pin, flags) in isa_irqs(cfg) {
        short(&mut t, io_int(flags, BUS_ISA, irq, pin));
    }
    // Local interrupt assignments.
    for (ty, lint) in [(int_type::EXTINT, 0), (int_type::NMI, 1)] {
        short(
            &mut t,
            [
                entry::LOCAL_INTERRUPT,
                ty,
                0,
                0,
                BUS_ISA,
                0,
                ALL_LOCAL_APICS,
                lint,
            ],
        );
    }
    let entries = entries + cfg.cpus as u16;

    let len = t.len();
    if len as u64 > layout::MPTABLE_SIZE {
        return Err(MpError::TooLarge {
            size: len,
            max: layout::MPTABLE_SIZE,
        });
    }
    // The header.
    t[..4].copy_from_slice(b"PCMP");
    t[4..6].copy_from_slice(&(len as u16).to_le_bytes());
    t[6] = SPEC_REV;
    t[8..16].copy_from_slice(&OEM_ID);
    t[16..28].copy_from_slice(&PRODUCT_ID);
    // 28..32 OEM table pointer, 32..34 OEM table size: none.
    t[34..36].copy_from_slice(&entries.to_le_bytes());
    t[36..40].copy_from_slice(&(layout::LAPIC_START as u32).to_le_bytes());
    // 40..42 extended table length 0, 42 its checksum 0 (of no bytes), 43 reserved.
    t[7] = checksum(&t);

    Ok(MpTables {
        floating: floating(config_gpa32),
        config: t,
    })
}

/// Builds the tables for `cfg` and writes them at their standard places (module doc);
/// returns the floating pointer's address.
pub fn write_config(mem: &GuestMemory, cfg: &MpConfig) -> Result<u64, MpError> {
    let t = build(cfg, layout::MPTABLE_START)?;
    let wr = |gpa: u64, data: &[u8]| {
        mem.write(gpa, data)
            .map_err(|e| MpError::Memory(e.to_string()))
    };
    wr(layout::MPTABLE_START, &t.config)?;
    wr(layout::MPTABLE_FLOATING, &t.floating)?;
    log::debug!(target: "vireo::dev::mptable",
        "MP tables for {} CPUs: floating pointer at {:#x}, {:#x}-byte configuration table at {:#x}",
        cfg.cpus, layout::MPTABLE_FLOATING, t.config.len(), layout::MPTABLE_START);
    Ok(layout::MPTABLE_FLOATING)
}

/// [`write_config`] for `cpus` CPUs and no PCI routes ([`MpConfig::new`]).
pub fn write(mem: &GuestMemory, cpus: u32) -> Result<u64, MpError> {
    write_config(mem, &MpConfig::new(cpus))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: u64 = layout::MPTABLE_START;

    fn u16_at(b: &[u8], o: usize) -> u16 {
        u16::from_le_bytes([b[o], b[o + 1]])
    }
    fn u32_at(b: &[u8], o: usize) -> u32 {
        u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
    }
    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    /// The configuration table's entries, parsed back, with the checks a reader makes
    /// (as Linux's `smp_read_mpc`: the walk ends exactly at the table's length).
    #[derive(Debug, Default)]
    struct Parsed {
        cpus: Vec<(u8, u8, u8, u32, u32)>,
        buses: Vec<(u8, [u8; 6])>,
        ioapics: Vec<(u8, u8, u8, u32)>,
        /// (type, flags, bus, source IRQ, IOAPIC ID, pin)
        io_ints: Vec<(u8, u16, u8, u8, u8, u8)>,
        /// (type, flags, bus, source IRQ, local APIC ID, LINT)
        local_ints: Vec<(u8, u16, u8, u8, u8, u8)>,
    }

    fn parse(t: &[u8]) -> Parsed {
        assert_eq!(&t[..4], b"PCMP");
        let len = u16_at(t, 4) as usize;
        assert_eq!(len, t.len());
        assert_eq!(t[6], 4, "spec revision 1.4");
        assert_eq!(sum(t), 0, "base table checksum");
        assert_eq!(&t[8..16], b"VIREO   ");
        assert_eq!(&t[16..28], b"PC          ");
        assert_eq!(u32_at(t, 28), 0, "no OEM table");
        assert_eq!(u16_at(t, 32), 0);
        assert_eq!(u32_at(t, 36), 0xfee0_0000);
        assert_eq!(u16_at(t, 40), 0, "no extended table");
        assert_eq!(t[42], 0);
        let count = u16_at(t, 34) as usize;
        let mut p = Parsed::default();
        let mut o = HEADER_LEN;
        let mut last_type = 0;
        for _ in 0..count {
            let ty = t[o];
            assert!(ty >= last_type, "entries sorted by type");
            last_type = ty;
            let e = &t[o..];
            let int = |e: &[u8]| (e[1], u16_at(e, 2), e[4], e[5], e[6], e[7]);
            o += match ty {
                0 => {
                    p.cpus.push((e[1], e[2], e[3], u32_at(e, 4), u32_at(e, 8)));
                    assert_eq!(&e[12..20], &[0; 8]);
                    20
                }
                1 => {
                    p.buses.push((e[1], e[2..8].try_into().unwrap()));
                    8
                }
                2 => {
                    p.ioapics.push((e[1], e[2], e[3], u32_at(e, 4)));
                    8
                }
                3 => {
                    p.io_ints.push(int(e));
                    8
                }
                4 => {
                    p.local_ints.push(int(e));
                    8
                }
                _ => panic!("unknown entry type {ty}"),
            };
        }
        assert_eq!(o, len, "entries end at the table's length");
        p
    }

    fn check_floating(f: &[u8], config_gpa: u32) {
        assert_eq!(f.len(), 16);
        assert_eq!(&f[..4], b"_MP_");
        assert_eq!(u32_at(f, 4), config_gpa);
        assert_eq!(f[8], 1, "length in paragraphs");
        assert_eq!(f[9], 4, "spec revision 1.4");
        assert_eq!(sum(f), 0, "floating pointer checksum");
        assert_eq!(f[11], 0, "a configuration table is present");
        assert_eq!(f[12] & 0x80, 0, "no IMCR: virtual wire mode");
        assert_eq!(&f[13..16], &[0; 3]);
    }

    #[test]
    fn structures_parse_back() {
        for cpus in [1u32, 2, 4, 8, 64, 254] {
            let t = build(&MpConfig::new(cpus), BASE).unwrap();
            check_floating(&t.floating, BASE as u32);
            let p = parse(&t.config);
            assert_eq!(p.cpus.len(), cpus as usize);
            for (i, &(id, ver, flags, sig, feat)) in p.cpus.iter().enumerate() {
                assert_eq!(id as usize, i);
                assert_eq!(ver, 0x14);
                assert_eq!(flags & CPU_ENABLED, CPU_ENABLED);
                assert_eq!(flags & CPU_BSP != 0, i == 0, "BSP flag only on CPU 0");
                assert_eq!((sig, feat), (0x600, 0x201));
            }
            assert_eq!(p.buses, vec![(0, *b"PCI   "), (1, *b"ISA   ")]);
            assert_eq!(p.ioapics, vec![(cpus as u8, 0x11, 1, 0xfec0_0000)]);
            assert_eq!(p.io_ints.len(), 15);
            assert!(p.io_ints.iter().all(|i| i.0 == 0 && i.4 == cpus as u8));
            assert_eq!(
                p.local_ints,
                vec![(3, 0, 1, 0, 0xff, 0), (1, 0, 1, 0, 0xff, 1)]
            );
            assert_eq!(
                u16_at(&t.config, 34) as usize,
                cpus as usize + 2 + 1 + 15 + 2
            );
        }
    }

    #[test]
    fn isa_interrupts_agree_with_the_madt() {
        let cfg = MpConfig {
            pci_level_irqs: vec![10, 11, 9, 0],
            ..MpConfig::new(2)
        };
        let p = parse(&build(&cfg, BASE).unwrap().config);
        let isa: Vec<(u8, u8, u16)> = p
            .io_ints
            .iter()
            .filter(|i| i.2 == BUS_ISA)
            .map(|i| (i.3, i.5, i.1))
            .collect();
        let mut want = vec![(0, 2, 0)];
        for irq in (1..16).filter(|&i| i != 2) {
            let level = matches!(irq, 9..=11);
            want.push((irq, irq, if level { 0xd } else { 0 }));
        }
        assert_eq!(isa, want);
        // The MADT of the same machine overrides exactly IRQ 0 (to GSI 2) and the
        // level-triggered IRQs.
        let acpi = AcpiConfig {
            cpus: 2,
            pci_level_irqs: vec![10, 11, 9, 0],
            ..AcpiConfig::default()
        };
        assert_eq!(MpConfig::from(&acpi), cfg);
    }

    #[test]
    fn pci_routes_become_pci_bus_entries() {
        let cfg = MpConfig {
            pci_irq_routes: vec![
                PciIrqRoute {
                    slot: 3,
                    pin: 0,
                    gsi: 10,
                },
                PciIrqRoute {
                    slot: 3,
                    pin: 1,
                    gsi: 11,
                },
            ],
            ..MpConfig::new(4)
        };
        let p = parse(&build(&cfg, BASE).unwrap().config);
        let pci: Vec<_> = p.io_ints.iter().filter(|i| i.2 == BUS_PCI).collect();
        assert_eq!(pci, vec![&(0, 0xd, 0, 12, 4, 10), &(0, 0xd, 0, 13, 4, 11)]);
        let bad = MpConfig {
            pci_irq_routes: vec![PciIrqRoute {
                slot: 1,
                pin: 4,
                gsi: 10,
            }],
            ..MpConfig::new(1)
        };
        assert!(matches!(build(&bad, BASE), Err(MpError::BadRoute { .. })));
    }

    #[test]
    fn bad_configs_are_refused() {
        assert_eq!(build(&MpConfig::new(0), BASE), Err(MpError::NoCpus));
        assert_eq!(
            build(&MpConfig::new(255), BASE),
            Err(MpError::TooManyCpus(255))
        );
        assert_eq!(
            build(&MpConfig::new(2), 1 << 32),
            Err(MpError::BadAddress(1 << 32))
        );
        // The largest table fits its area.
        let big = build(&MpConfig::new(MAX_CPUS), BASE).unwrap();
        assert!(big.config.len() as u64 <= layout::MPTABLE_SIZE);
    }

    /// Linux's `default_find_smp_config`: the first KiB of memory, the last KiB of
    /// base memory (639 KiB), the BIOS ROM area, then the EBDA the BDA names.
    fn linux_scan(mem: &GuestMemory) -> Option<u64> {
        let ebda = u64::from(mem.read_u16(0x40e).unwrap_or(0)) << 4;
        let mut areas = vec![(0u64, 0x400u64), (639 * 0x400, 0x400), (0xf_0000, 0x1_0000)];
        if ebda != 0 {
            areas.push((ebda, 0x400));
        }
        for (base, len) in areas {
            for a in (base..base + len).step_by(16) {
                let mut f = [0u8; 16];
                if mem.read(a, &mut f).is_err() {
                    continue;
                }
                if &f[..4] == b"_MP_" && f[8] == 1 && sum(&f) == 0 && matches!(f[9], 1 | 4) {
                    return Some(a);
                }
            }
        }
        None
    }

    #[test]
    fn linux_finds_the_tables_in_guest_memory() {
        let mem = GuestMemory::new(64 << 20).unwrap();
        let at = write(&mem, 4).unwrap();
        assert_eq!(at, layout::EBDA_START);
        assert_eq!(linux_scan(&mem), Some(at));
        // The floating pointer is in the last KiB of base memory, which Linux scans.
        assert!((639 * 1024..640 * 1024 - 16).contains(&at) && at.is_multiple_of(16));
        let mut f = [0u8; 16];
        mem.read(at, &mut f).unwrap();
        check_floating(&f, BASE as u32);
        // smp_check_mpc: signature, checksum over the length, revision, LAPIC address.
        let len = mem.read_u16(BASE + 4).unwrap() as usize;
        let mut t = vec![0u8; len];
        mem.read(BASE, &mut t).unwrap();
        let p = parse(&t);
        assert_eq!(p.cpus.len(), 4);
        assert_eq!(p.ioapics[0].0, 4);
        // Both structures lie in reserved RAM.
        let e820 = mem.map().e820();
        for (a, l) in [(at, 16u64), (BASE, len as u64)] {
            assert!(e820
                .iter()
                .any(|e| e.2 == layout::E820_RESERVED && e.0 <= a && a + l <= e.0 + e.1));
        }
    }

    #[test]
    fn tables_do_not_touch_the_acpi_tables() {
        let mem = GuestMemory::new(64 << 20).unwrap();
        let acpi_cfg = AcpiConfig::new(8, mem.map());
        let rsdp = crate::acpi::write_tables(&mem, &acpi_cfg).unwrap();
        let acpi_len = crate::acpi::build(&acpi_cfg, layout::ACPI_TABLES_START)
            .unwrap()
            .len();
        let mut before = vec![0u8; acpi_len];
        mem.read(layout::ACPI_TABLES_START, &mut before).unwrap();
        write_config(&mem, &MpConfig::from(&acpi_cfg)).unwrap();
        let mut after = vec![0u8; acpi_len];
        mem.read(layout::ACPI_TABLES_START, &mut after).unwrap();
        assert_eq!(before, after);
        let mut sig = [0u8; 8];
        mem.read(rsdp, &mut sig).unwrap();
        assert_eq!(&sig, b"RSD PTR ");
    }
}
