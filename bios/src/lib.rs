//! vireo's own firmware ROM, built from `no_std` Rust by `build.rs` (sources in
//! `bios/firmware/`).
//!
//! # Contract with the VMM
//!
//! Placement: [`FIRMWARE`] is [`ROM_SIZE`] bytes, linked at [`ROM_BASE`]; it must end at
//! 1 MiB and at 4 GiB (the CPU starts at the reset vector, [`RESET_VECTOR`] aliased at
//! 0xFFFF_FFF0). It never writes to itself.
//!
//! RAM it uses (needs at least 512 KiB of RAM; the machine minimum is 2 MiB):
//! [`PAGE_TABLES`] (PML4, PDPT and four page directories identity-mapping 0..4 GiB
//! with 2 MiB pages), [`IDT`], and a stack growing down from [`STACK_TOP`].
//!
//! What it reads or drives:
//! - COM1 16550 at 0x3F8, polled, 115200 8N1: all its output, lines starting with
//!   [`BANNER_PREFIX`];
//! - port 0x92 (fast A20 gate, bit 1), port 0x80 (POST codes 1 real mode, 2 protected
//!   mode, 3 page tables built, 4 long mode);
//! - CMOS via 0x70/0x71: 0x34/0x35 RAM between 16 MiB and 4 GiB in 64 KiB units, else
//!   0x30/0x31 KiB above 1 MiB; 0x5B..0x5D RAM above 4 GiB in 64 KiB units;
//! - fw_cfg at 0x510 (16-bit selector) / 0x511 (data): key 0x0000 signature "QEMU",
//!   0x0005 CPU count (u16 LE), 0x0019 file directory (listed); without the signature
//!   it says so and goes on;
//! - ACPI: RSDP on a 16-byte boundary in 0xE0000..0xFFFFF (checksum; revision 2 with a
//!   valid extended checksum -> XSDT, else RSDT), the FADT ("FACP") found through it
//!   (PM1a_CNT_BLK at offset 64, DSDT at 40 or X_DSDT at 140), and the DSDT's
//!   `Name (_S5_, Package () { SLP_TYP, ... })`; every table's checksum is checked;
//! - power off: a 16-bit write of `(SLP_TYP << 10) | (1 << 13)` to PM1a_CNT. If that
//!   returns or the tables are missing it prints "power-off failed" and halts with
//!   interrupts off.

/// The firmware ROM image.
pub static FIRMWARE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/vireo-bios.bin"));

/// Guest physical address the image is linked at (and where it must be mapped below
/// 1 MiB).
pub const ROM_BASE: u64 = 0xF_0000;
/// Size of [`FIRMWARE`].
pub const ROM_SIZE: usize = 0x1_0000;
/// Address of the reset vector in the low copy of the ROM.
pub const RESET_VECTOR: u64 = 0xF_FFF0;
/// RAM holding the page tables (PML4 at the start).
pub const PAGE_TABLES: std::ops::Range<u64> = 0x1000..0x7000;
/// RAM holding the 64-bit IDT (32 exception gates).
pub const IDT: std::ops::Range<u64> = 0x7000..0x7200;
/// Initial stack pointer; the stack grows down (64 KiB reserved below it).
pub const STACK_TOP: u64 = 0x8_0000;
/// Every line the firmware prints starts with this.
pub const BANNER_PREFIX: &str = "vireo firmware: ";
/// The line printed once the CPU is in long mode.
pub const LONG_MODE_LINE: &str = "vireo firmware: real mode -> protected mode -> long mode";
/// The I/O port the firmware expects PM1a_CNT at on vireo's machine (from the FADT).
pub const PM1A_CNT_PORT: u16 = 0x604;
/// PM1_CNT SLP_EN bit; SLP_TYP sits in bits 10..=12.
pub const PM1_CNT_SLP_EN: u16 = 1 << 13;
