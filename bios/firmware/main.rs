//! vireo firmware: a tiny PC BIOS written in `no_std` Rust.
//!
//! Built by `bios/build.rs` (not a cargo target) into a flat 64 KiB ROM that ends at
//! 1 MiB (and is aliased to end at 4 GiB), with the reset vector in its last 16 bytes.
//!
//! Start-up (entry.s): reset vector -> real mode (A20, GDT) -> 32-bit protected mode
//! (identity-mapped page tables for 0..4 GiB with 2 MiB pages) -> long mode -> Rust
//! ([`firmware_main`]). The Rust part then:
//!
//! 1. initialises COM1 (16550 at 0x3F8, 115200 8N1) and prints the stages passed;
//! 2. reads the RAM size from CMOS and probes QEMU's fw_cfg interface;
//! 3. finds the ACPI tables (RSDP in 0xE0000..0xFFFFF -> XSDT/RSDT -> FADT -> DSDT),
//!    takes PM1a_CNT from the FADT and SLP_TYP from the DSDT's `\_S5_` package;
//! 4. has no boot device, so it powers the machine off through ACPI S5, or prints
//!    "power-off failed" and halts.
//!
//! RAM used (everything else is left untouched; the ROM is never written):
//!
//! ```text
//! 0x1000..0x2000    PML4
//! 0x2000..0x3000    PDPT
//! 0x3000..0x7000    four page directories (2048 PDEs, 2 MiB pages)
//! 0x7000..0x7200    IDT (32 gates, all to one exception handler)
//! 0x70000..0x80000  stack (top at 0x80000, grows down)
//! ```

#![no_std]
#![no_main]
#![deny(unsafe_op_in_unsafe_fn)]

use core::arch::{asm, global_asm};
use core::fmt::{self, Write};

// ------------------------------------------------------------------ layout and stages

/// Page map level 4 table.
const PML4_ADDR: u32 = 0x1000;
/// Page directory pointer table.
const PDPT_ADDR: u32 = 0x2000;
/// First of the four page directories.
const PD_ADDR: u32 = 0x3000;
/// End of the page directories.
const PD_END: u32 = 0x7000;
/// The IDT built by [`install_idt`].
const IDT_ADDR: u64 = 0x7000;
/// Number of IDT gates (the CPU exceptions).
const IDT_VECTORS: u64 = 32;
/// Initial stack pointer.
const STACK_TOP: u64 = 0x8_0000;

/// GDT selectors (the GDT is in ROM, see entry.s).
const CODE32_SELECTOR: u16 = 0x08;
const DATA_SELECTOR: u16 = 0x10;
const CODE64_SELECTOR: u16 = 0x18;

/// Stage bits collected by entry.s in `%edi`.
const STAGE_RESET: u32 = 1 << 0;
const STAGE_A20: u32 = 1 << 1;
const STAGE_PROTECTED: u32 = 1 << 2;
const STAGE_PAGING: u32 = 1 << 3;
const STAGE_LONG: u32 = 1 << 4;
const STAGES_ALL: u32 = STAGE_RESET | STAGE_A20 | STAGE_PROTECTED | STAGE_PAGING | STAGE_LONG;

global_asm!(
    include_str!("entry.s"),
    PML4_ADDR = const PML4_ADDR,
    PDPT_ADDR = const PDPT_ADDR,
    PD_ADDR = const PD_ADDR,
    PD_END = const PD_END,
    STACK_TOP = const STACK_TOP,
    CODE32_SELECTOR = const CODE32_SELECTOR,
    DATA_SELECTOR = const DATA_SELECTOR,
    CODE64_SELECTOR = const CODE64_SELECTOR,
    STAGE_RESET = const STAGE_RESET,
    STAGE_A20 = const STAGE_A20,
    STAGE_PROTECTED = const STAGE_PROTECTED,
    STAGE_PAGING = const STAGE_PAGING,
    STAGE_LONG = const STAGE_LONG,
    options(att_syntax)
);

// ------------------------------------------------------------------------- CPU access

/// Raw port I/O and CPU registers.
mod cpu {
    use core::arch::asm;

    /// Reads a byte from an I/O port.
    ///
    /// # Safety
    /// The port must belong to a device whose reads have no effect on memory that
    /// Rust code owns (no DMA into it).
    pub unsafe fn inb(port: u16) -> u8 {
        let v: u8;
        // SAFETY: the caller vouches for the port; `in` touches no memory.
        unsafe {
            asm!("in al, dx", in("dx") port, out("al") v, options(nomem, nostack, preserves_flags))
        };
        v
    }

    /// Writes a byte to an I/O port.
    ///
    /// # Safety
    /// As [`inb`], for writes.
    pub unsafe fn outb(port: u16, v: u8) {
        // SAFETY: the caller vouches for the port; `out` touches no memory.
        unsafe {
            asm!("out dx, al", in("dx") port, in("al") v, options(nomem, nostack, preserves_flags))
        };
    }

    /// Writes a 16-bit word to an I/O port.
    ///
    /// # Safety
    /// As [`inb`], for writes.
    pub unsafe fn outw(port: u16, v: u16) {
        // SAFETY: the caller vouches for the port; `out` touches no memory.
        unsafe {
            asm!("out dx, ax", in("dx") port, in("ax") v, options(nomem, nostack, preserves_flags))
        };
    }

    /// Reads a model-specific register.
    pub fn rdmsr(msr: u32) -> u64 {
        let (lo, hi): (u32, u32);
        // SAFETY: only called with architectural MSRs that exist in long mode (EFER);
        // reading them has no side effects.
        unsafe {
            asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags))
        };
        (u64::from(hi) << 32) | u64::from(lo)
    }

    /// CPUID leaf `leaf` (subleaf 0): EAX, EBX, ECX, EDX.
    pub fn cpuid(leaf: u32) -> [u32; 4] {
        let r = core::arch::x86_64::__cpuid_count(leaf, 0);
        [r.eax, r.ebx, r.ecx, r.edx]
    }

    /// Disables interrupts and halts forever.
    pub fn halt_forever() -> ! {
        loop {
            // SAFETY: `cli; hlt` only stops this CPU; nothing else is affected.
            unsafe { asm!("cli", "hlt", options(nomem, nostack)) };
        }
    }
}

/// The EFER MSR and its long-mode-active bit.
const MSR_EFER: u32 = 0xC000_0080;
const EFER_LMA: u64 = 1 << 10;

// ----------------------------------------------------------------------- physical memory

/// Reads of guest physical memory below 4 GiB, which entry.s identity-mapped.
///
/// Addresses come from ACPI tables, so they are checked: anything at 0 or reaching past
/// 4 GiB reads as all ones instead of faulting.
mod phys {
    /// End of the identity map.
    const LIMIT: u64 = 1 << 32;

    /// Whether `len` bytes at `addr` are inside the identity map (and not at 0).
    pub fn mapped(addr: u64, len: u64) -> bool {
        addr != 0 && addr.checked_add(len).is_some_and(|end| end <= LIMIT)
    }

    /// Reads one byte.
    pub fn u8(addr: u64) -> u8 {
        if !mapped(addr, 1) {
            return 0xFF;
        }
        // SAFETY: `addr` is nonzero and below 4 GiB, so it is mapped (identity, 2 MiB
        // pages built by entry.s). Firmware tables live in RAM or ROM, where reads have
        // no side effects; the volatile read keeps the compiler from assuming anything
        // about memory Rust does not own.
        unsafe { core::ptr::read_volatile(addr as *const u8) }
    }

    /// Reads a little-endian u16.
    pub fn u16(addr: u64) -> u16 {
        u16::from_le_bytes([u8(addr), u8(addr.wrapping_add(1))])
    }

    /// Reads a little-endian u32.
    pub fn u32(addr: u64) -> u32 {
        u32::from(u16(addr)) | (u32::from(u16(addr.wrapping_add(2))) << 16)
    }

    /// Reads a little-endian u64.
    pub fn u64(addr: u64) -> u64 {
        u64::from(u32(addr)) | (u64::from(u32(addr.wrapping_add(4))) << 32)
    }

    /// Reads a little-endian u32 with one load (for scans); `addr` must be 4-aligned.
    pub fn u32_fast(addr: u64) -> u32 {
        if !mapped(addr, 4) || addr & 3 != 0 {
            return u32::MAX;
        }
        // SAFETY: as in `u8`; `addr` is aligned and all 4 bytes are below 4 GiB.
        unsafe { core::ptr::read_volatile(addr as *const u32) }
    }

    /// Byte sum of `len` bytes at `addr` (ACPI checksums: 0 when valid).
    pub fn sum(addr: u64, len: u64) -> u8 {
        (0..len).fold(0u8, |s, i| s.wrapping_add(u8(addr.wrapping_add(i))))
    }
}

// ---------------------------------------------------------------------------- serial

/// COM1, a 16550 UART.
const COM1: u16 = 0x3F8;
/// Line status register: transmitter holding register empty.
const LSR_THRE: u8 = 0x20;
/// How long to wait for THRE before sending anyway (a missing UART reads 0xFF).
const THRE_SPINS: u32 = 100_000;

/// Polled output on COM1. Zero-sized: the UART itself is the only state.
struct Serial;

impl Serial {
    /// Programs 115200 baud, 8 data bits, no parity, 1 stop bit, FIFOs on, no interrupts.
    fn init() -> Serial {
        for (reg, val) in [
            (1, 0x00), // IER: no interrupts
            (3, 0x80), // LCR: DLAB
            (0, 0x01), // DLL: divisor 1 = 115200 baud
            (1, 0x00), // DLM
            (3, 0x03), // LCR: 8N1, DLAB off
            (2, 0xC7), // FCR: FIFOs on and cleared, 14-byte trigger
            (4, 0x03), // MCR: DTR, RTS (OUT2 off: no IRQ)
        ] {
            // SAFETY: COM1's registers; the UART does no DMA.
            unsafe { cpu::outb(COM1 + reg, val) };
        }
        Serial
    }

    /// Sends one byte once the transmitter is ready.
    fn put(&mut self, b: u8) {
        let mut spins = 0;
        // SAFETY: reading COM1's line status register has no side effect on memory.
        while unsafe { cpu::inb(COM1 + 5) } & LSR_THRE == 0 && spins < THRE_SPINS {
            spins += 1;
            core::hint::spin_loop();
        }
        // SAFETY: COM1's transmit holding register; the UART does no DMA.
        unsafe { cpu::outb(COM1, b) };
    }
}

impl Write for Serial {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            if b == b'\n' {
                self.put(b'\r');
            }
            self.put(b);
        }
        Ok(())
    }
}

/// Prints one line prefixed with "vireo firmware: " (serial errors cannot happen).
macro_rules! say {
    ($out:expr, $($arg:tt)*) => {{
        let _ = $out.write_str("vireo firmware: ");
        let _ = writeln!($out, $($arg)*);
    }};
}

// ------------------------------------------------------------------------------ CMOS

/// CMOS index and data ports.
const CMOS_INDEX: u16 = 0x70;
const CMOS_DATA: u16 = 0x71;
/// Keeps NMIs masked while selecting a register.
const CMOS_NMI_OFF: u8 = 0x80;

/// Reads one CMOS byte.
fn cmos(reg: u8) -> u8 {
    // SAFETY: the RTC/CMOS index and data ports; the device does no DMA.
    unsafe {
        cpu::outb(CMOS_INDEX, CMOS_NMI_OFF | reg);
        cpu::inb(CMOS_DATA)
    }
}

/// RAM size from the CMOS bytes QEMU and SeaBIOS use:
/// 0x34/0x35 RAM between 16 MiB and 4 GiB in 64 KiB units (0 if none), else
/// 0x30/0x31 extended memory above 1 MiB in KiB; plus 0x5B..0x5D RAM above 4 GiB in
/// 64 KiB units.
fn cmos_ram_bytes() -> u64 {
    let above_16m = u64::from(u16::from_le_bytes([cmos(0x34), cmos(0x35)]));
    let low = if above_16m != 0 {
        (16 << 20) + above_16m * (64 << 10)
    } else {
        let ext_kib = u64::from(u16::from_le_bytes([cmos(0x30), cmos(0x31)]));
        (1 << 20) + ext_kib * 1024
    };
    let above_4g = u64::from_le_bytes([cmos(0x5B), cmos(0x5C), cmos(0x5D), 0, 0, 0, 0, 0]);
    low + above_4g * (64 << 10)
}

/// Writes the characters of a CPUID string held in `words` (little-endian bytes),
/// without NULs and, until `started`, blanks; other non-ASCII bytes print as `?`.
/// (Byte by byte from the registers: a buffer would be zeroed with vector
/// instructions, which this firmware must not use.)
fn write_cpuid_str(
    f: &mut core::fmt::Formatter<'_>,
    words: &[u32],
    started: &mut bool,
) -> core::fmt::Result {
    use core::fmt::Write;
    for w in words {
        for b in w.to_le_bytes() {
            if b == 0 || (!*started && b == b' ') {
                continue;
            }
            *started = true;
            f.write_char(if b.is_ascii_graphic() || b == b' ' { b as char } else { '?' })?;
        }
    }
    Ok(())
}

/// The CPU's brand string, vendor and family/model (CPUID 8000_0002h-4h, 0, 1).
struct CpuName;

impl core::fmt::Display for CpuName {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let mut started = false;
        if cpu::cpuid(0x8000_0000)[0] >= 0x8000_0004 {
            for leaf in 0x8000_0002u32..=0x8000_0004 {
                write_cpuid_str(f, &cpu::cpuid(leaf), &mut started)?;
            }
        }
        if started {
            f.write_str(" ")?;
        }
        let l0 = cpu::cpuid(0);
        f.write_str("(")?;
        write_cpuid_str(f, &[l0[1], l0[3], l0[2]], &mut false)?;
        let sig = cpu::cpuid(1)[0];
        let base = (sig >> 8) & 0xf;
        let family = base + if base == 0xf { (sig >> 20) & 0xff } else { 0 };
        let model = ((sig >> 4) & 0xf) | (((sig >> 16) & 0xf) << 4);
        write!(f, ", family {family:#x} model {model:#x})")
    }
}

/// A byte count printed as MiB when it is a whole number of MiB, else as KiB.
struct Size(u64);

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 & ((1 << 20) - 1) == 0 {
            write!(f, "{} MiB", self.0 >> 20)
        } else {
            write!(f, "{} KiB", self.0 >> 10)
        }
    }
}

// ---------------------------------------------------------------------------- fw_cfg

/// QEMU fw_cfg: 16-bit selector port and 8-bit data port.
const FW_CFG_SELECTOR: u16 = 0x510;
const FW_CFG_DATA: u16 = 0x511;
/// Items read.
const FW_CFG_SIGNATURE: u16 = 0x0000;
const FW_CFG_NB_CPUS: u16 = 0x0005;
const FW_CFG_FILE_DIR: u16 = 0x0019;
/// Length of a file name in a directory entry.
const FW_CFG_NAME_LEN: usize = 56;
/// How many directory entries are listed at most.
const FW_CFG_MAX_LISTED: u32 = 16;

/// The fw_cfg interface (only its legacy I/O port access, no DMA).
struct FwCfg;

impl FwCfg {
    /// Selects an item (and rewinds it).
    fn select(&self, key: u16) {
        // SAFETY: the fw_cfg selector port; selecting an item touches no memory.
        unsafe { cpu::outw(FW_CFG_SELECTOR, key) };
    }

    /// Reads the next byte of the selected item.
    fn byte(&self) -> u8 {
        // SAFETY: the fw_cfg data port (port access only; the DMA interface is unused).
        unsafe { cpu::inb(FW_CFG_DATA) }
    }

    fn be16(&self) -> u16 {
        u16::from_be_bytes([self.byte(), self.byte()])
    }

    fn be32(&self) -> u32 {
        u32::from_be_bytes([self.byte(), self.byte(), self.byte(), self.byte()])
    }

    /// Finds fw_cfg by its "QEMU" signature.
    fn probe() -> Option<FwCfg> {
        let fw = FwCfg;
        fw.select(FW_CFG_SIGNATURE);
        let sig = [fw.byte(), fw.byte(), fw.byte(), fw.byte()];
        (&sig == b"QEMU").then_some(fw)
    }

    /// FW_CFG_NB_CPUS (u16, little endian).
    fn cpus(&self) -> u16 {
        self.select(FW_CFG_NB_CPUS);
        u16::from_le_bytes([self.byte(), self.byte()])
    }
}

/// Prints the fw_cfg file directory: a big-endian u32 count, then entries of
/// `{ be32 size, be16 select, u16 reserved, char name[56] }`.
fn list_fw_cfg_files(out: &mut Serial, fw: &FwCfg) {
    fw.select(FW_CFG_FILE_DIR);
    let count = fw.be32();
    say!(out, "fw_cfg: {} file{}", count, plural(u64::from(count)));
    for _ in 0..count.min(FW_CFG_MAX_LISTED) {
        let size = fw.be32();
        let key = fw.be16();
        let _reserved = fw.be16();
        // The name is streamed byte by byte (no buffer: zeroing one costs SSE stores).
        let _ = write!(out, "vireo firmware: fw_cfg:   {key:#06x} ");
        let mut ended = false;
        for _ in 0..FW_CFG_NAME_LEN {
            let b = fw.byte();
            ended |= b == 0;
            if !ended {
                out.put(if b.is_ascii_graphic() { b } else { b'?' });
            }
        }
        let _ = writeln!(out, " ({size} bytes)");
    }
    if count > FW_CFG_MAX_LISTED {
        say!(out, "fw_cfg:   ... and {} more", count - FW_CFG_MAX_LISTED);
    }
}

/// "s" unless `n` is 1.
fn plural(n: u64) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

// ------------------------------------------------------------------------------ ACPI

/// Where the RSDP may be (the BIOS read-only area), on 16-byte boundaries.
const RSDP_SEARCH_START: u64 = 0xE_0000;
const RSDP_SEARCH_END: u64 = 0x10_0000;
/// Length of the common ACPI table header.
const SDT_HEADER_LEN: u32 = 36;
/// Largest table the firmware accepts (guards against garbage lengths).
const SDT_MAX_LEN: u32 = 1 << 20;
/// FADT fields.
const FADT_DSDT: u64 = 40;
const FADT_PM1A_CNT_BLK: u64 = 64;
const FADT_X_DSDT: u64 = 140;
/// The POST code port, read for a short I/O delay.
const POST_PORT: u16 = 0x80;
/// PM1_CNT bits.
const SLP_TYP_SHIFT: u16 = 10;
const SLP_EN: u16 = 1 << 13;

/// What the firmware found in the ACPI tables.
struct Acpi {
    rsdp: u64,
    /// "XSDT" or "RSDT".
    root: &'static str,
    pm1a_cnt: u16,
    /// SLP_TYP of S5 from the DSDT's `\_S5_` package.
    slp_typ_s5: u8,
}

/// The four-byte signature of a table.
fn signature(sig: &[u8; 4]) -> u32 {
    u32::from_le_bytes(*sig)
}

/// Validates a table's signature, length and checksum; returns its length.
fn check_table(addr: u64, sig: &[u8; 4]) -> Option<u32> {
    if !phys::mapped(addr, u64::from(SDT_HEADER_LEN)) || phys::u32(addr) != signature(sig) {
        return None;
    }
    let len = phys::u32(addr + 4);
    let ok = (SDT_HEADER_LEN..=SDT_MAX_LEN).contains(&len)
        && phys::mapped(addr, u64::from(len))
        && phys::sum(addr, u64::from(len)) == 0;
    ok.then_some(len)
}

/// Scans the BIOS area for a valid RSDP.
///
/// The signature is compared as two halves so that "RSD PTR " never appears whole in
/// the ROM, which is itself inside the search area.
fn find_rsdp() -> Option<u64> {
    let (lo, hi) = (signature(b"RSD "), signature(b"PTR "));
    (RSDP_SEARCH_START..RSDP_SEARCH_END)
        .step_by(16)
        .find(|&a| phys::u32_fast(a) == lo && phys::u32_fast(a + 4) == hi && phys::sum(a, 20) == 0)
}

/// Follows RSDP -> XSDT/RSDT -> FADT -> DSDT.
fn find_acpi() -> Result<Acpi, &'static str> {
    let rsdp = find_rsdp().ok_or("no RSDP in 0xe0000-0xfffff")?;
    let revision = phys::u8(rsdp + 15);
    // ACPI 2.0+: the XSDT, if the extended checksum holds; else the RSDT.
    let rsdp_len = phys::u32(rsdp + 20);
    let xsdt = if revision >= 2
        && (36..=64).contains(&rsdp_len)
        && phys::sum(rsdp, u64::from(rsdp_len)) == 0
    {
        Some(phys::u64(rsdp + 24)).filter(|&a| check_table(a, b"XSDT").is_some())
    } else {
        None
    };
    let (root, root_addr, entry_len) = match xsdt {
        Some(a) => ("XSDT", a, 8),
        None => ("RSDT", u64::from(phys::u32(rsdp + 16)), 4),
    };
    let root_len = check_table(root_addr, if entry_len == 8 { b"XSDT" } else { b"RSDT" })
        .ok_or("bad XSDT/RSDT")?;
    let entries = u64::from(root_len - SDT_HEADER_LEN) / entry_len;
    let fadt = (0..entries)
        .map(|i| {
            let at = root_addr + u64::from(SDT_HEADER_LEN) + i * entry_len;
            if entry_len == 8 {
                phys::u64(at)
            } else {
                u64::from(phys::u32(at))
            }
        })
        .find(|&t| check_table(t, b"FACP").is_some())
        .ok_or("no FADT")?;
    let fadt_len = phys::u32(fadt + 4);

    let pm1a_cnt = phys::u32(fadt + FADT_PM1A_CNT_BLK);
    let pm1a_cnt = u16::try_from(pm1a_cnt)
        .ok()
        .filter(|&p| p != 0)
        .ok_or("FADT has no PM1a_CNT_BLK I/O port")?;

    let x_dsdt = if fadt_len >= FADT_X_DSDT as u32 + 8 {
        phys::u64(fadt + FADT_X_DSDT)
    } else {
        0
    };
    let dsdt = if x_dsdt != 0 {
        x_dsdt
    } else {
        u64::from(phys::u32(fadt + FADT_DSDT))
    };
    let dsdt_len = check_table(dsdt, b"DSDT").ok_or("bad DSDT")?;
    let slp_typ_s5 = find_s5(dsdt, dsdt_len).ok_or("no \\_S5_ package in the DSDT")?;
    Ok(Acpi {
        rsdp,
        root,
        pm1a_cnt,
        slp_typ_s5,
    })
}

/// Finds `Name (_S5_, Package () { SLP_TYP, ... })` in the DSDT's AML and returns the
/// package's first element:
/// `08 [5C] 5F 53 35 5F 12 <PkgLength> <NumElements> <element>` where the element is
/// `00` (Zero), `01` (One), `0A xx` (BytePrefix), `0B xxxx` or `0C xxxxxxxx` (Word,
/// DWord: the low byte counts). SLP_TYP is 3 bits wide.
fn find_s5(dsdt: u64, len: u32) -> Option<u8> {
    let start = dsdt + u64::from(SDT_HEADER_LEN);
    let end = dsdt + u64::from(len);
    let name = signature(b"_S5_");
    let mut p = start + 1;
    while p + 4 <= end {
        if phys::u32(p) == name {
            let op = phys::u8(p - 1);
            let is_name = op == 0x08 || (op == b'\\' && p - 1 > start && phys::u8(p - 2) == 0x08);
            if is_name && phys::u8(p + 4) == 0x12 {
                // PkgLength: bits 7-6 of the lead byte = number of bytes that follow.
                let follow = u64::from(phys::u8(p + 5) >> 6);
                let num_elements = p + 6 + follow;
                let elem = num_elements + 1;
                if elem + 2 > end || phys::u8(num_elements) == 0 {
                    return None;
                }
                let v = match phys::u8(elem) {
                    0x00 => 0,
                    0x01 => 1,
                    // BytePrefix, WordPrefix, DWordPrefix: the low byte.
                    0x0A..=0x0C => phys::u8(elem + 1),
                    _ => return None,
                };
                return Some(v & 7);
            }
        }
        p += 1;
    }
    None
}

// ------------------------------------------------------------------------ exceptions

extern "C" {
    /// The common exception stub in entry.s.
    fn exception_entry();
}

/// Builds a 64-bit IDT in RAM at [`IDT_ADDR`] routing the 32 CPU exceptions to
/// `exception_entry`, and loads it.
fn install_idt() {
    let handler = exception_entry as *const () as u64;
    // Interrupt gate: present, DPL 0, type 0xE; code selector CODE64_SELECTOR.
    let low = (handler & 0xFFFF)
        | (u64::from(CODE64_SELECTOR) << 16)
        | (0x8E00 << 32)
        | (((handler >> 16) & 0xFFFF) << 48);
    let high = handler >> 32;
    for v in 0..IDT_VECTORS {
        let gate = (IDT_ADDR + v * 16) as *mut u64;
        // SAFETY: 0x7000..0x7200 is RAM reserved for the IDT (see the layout above),
        // identity mapped, 8-aligned, and not used by anything else.
        unsafe {
            gate.write_volatile(low);
            gate.add(1).write_volatile(high);
        }
    }
    #[repr(C, packed)]
    struct Descriptor {
        limit: u16,
        base: u64,
    }
    let desc = Descriptor {
        limit: (IDT_VECTORS * 16 - 1) as u16,
        base: IDT_ADDR,
    };
    // SAFETY: `desc` describes the IDT just written, whose gates point to a valid
    // handler; `lidt` only reads the 10-byte descriptor.
    unsafe { asm!("lidt [{}]", in(reg) &desc, options(readonly, nostack, preserves_flags)) };
}

/// Called by `exception_entry` with the stack at the time of the exception (the error
/// code, if any, then RIP, CS, RFLAGS, RSP, SS).
#[no_mangle]
extern "C" fn firmware_exception(frame: *const u64) -> ! {
    let mut out = Serial;
    let _ = out.write_str("vireo firmware: CPU exception; stack");
    for i in 0..4 {
        // SAFETY: `frame` is the stack pointer at the exception; the CPU pushed at least
        // five quadwords there, all inside the firmware's stack in RAM.
        let w = unsafe { frame.add(i).read_volatile() };
        let _ = write!(out, " {w:#x}");
    }
    let _ = writeln!(out, "; halting");
    cpu::halt_forever()
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    let mut out = Serial;
    match info.location() {
        Some(l) => say!(out, "firmware panic at {}:{}; halting", l.file(), l.line()),
        None => say!(out, "firmware panic; halting"),
    }
    cpu::halt_forever()
}

// ------------------------------------------------------------------------------ main

/// The Rust entry, called by entry.s in long mode with the stages it passed.
#[no_mangle]
extern "C" fn firmware_main(stages: u32) -> ! {
    let mut out = Serial::init();
    install_idt();

    let efer = cpu::rdmsr(MSR_EFER);
    if stages == STAGES_ALL && efer & EFER_LMA != 0 {
        say!(out, "real mode -> protected mode -> long mode");
        say!(
            out,
            "A20 on, 0-4 GiB identity-mapped (2 MiB pages at {:#x}), stack at {:#x}",
            PML4_ADDR,
            STACK_TOP
        );
    } else {
        say!(
            out,
            "start-up incomplete: stages {:#x} of {:#x}, EFER {:#x}",
            stages,
            STAGES_ALL,
            efer
        );
    }

    say!(out, "CPU: {}", CpuName);

    let ram = cmos_ram_bytes();
    match FwCfg::probe() {
        Some(fw) => {
            let cpus = fw.cpus();
            say!(
                out,
                "RAM {} (CMOS), fw_cfg signature QEMU, {} CPU{}",
                Size(ram),
                cpus,
                plural(u64::from(cpus))
            );
            list_fw_cfg_files(&mut out, &fw);
        }
        None => say!(
            out,
            "RAM {} (CMOS), no fw_cfg (signature QEMU absent)",
            Size(ram)
        ),
    }

    match find_acpi() {
        Ok(acpi) => {
            say!(
                out,
                "ACPI RSDP at {:#x} ({}), FADT PM1a_CNT {:#x}, S5 SLP_TYP {}",
                acpi.rsdp,
                acpi.root,
                acpi.pm1a_cnt,
                acpi.slp_typ_s5
            );
            say!(out, "no boot device; demo done, powering off (ACPI S5)");
            let v = (u16::from(acpi.slp_typ_s5) << SLP_TYP_SHIFT) | SLP_EN;
            // SAFETY: PM1a_CNT from the FADT: the ACPI PM control register, no DMA.
            unsafe { cpu::outw(acpi.pm1a_cnt, v) };
            // Give a slow power-off a moment (1000 reads of the POST port, the classic
            // I/O delay), then report the failure.
            for _ in 0..1000 {
                // SAFETY: reading port 0x80 has no effect (nothing decodes it for reads).
                unsafe { cpu::inb(POST_PORT) };
            }
            say!(out, "power-off failed; halting");
        }
        Err(why) => {
            say!(out, "ACPI: {}", why);
            say!(
                out,
                "no boot device; demo done, power-off failed (no ACPI); halting"
            );
        }
    }
    cpu::halt_forever()
}
