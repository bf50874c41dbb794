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
//!   mode, 3 page tables built, 4 long mode; after the power-off write it is read 1000
//!   times as an I/O delay before "power-off failed" is printed);
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
//!
//! # Output (vireo's machine: 128 MiB, fw_cfg, ACPI tables at 0xE0000)
//!
//! ```text
//! vireo firmware: real mode -> protected mode -> long mode
//! vireo firmware: A20 on, 0-4 GiB identity-mapped (2 MiB pages at 0x1000), stack at 0x80000
//! vireo firmware: RAM 128 MiB (CMOS), fw_cfg signature QEMU, 1 CPU
//! vireo firmware: fw_cfg: 1 file
//! vireo firmware: fw_cfg:   0x0020 etc/acpi/tables (4096 bytes)
//! vireo firmware: ACPI RSDP at 0xe0000 (XSDT), FADT PM1a_CNT 0x604, S5 SLP_TYP 0
//! vireo firmware: no boot device; demo done, powering off (ACPI S5)
//! ```
//!
//! # Cost
//!
//! About 32,000 instructions from reset to the power-off write (17,500 of them building
//! the page tables), a few thousand port I/O exits (two per serial byte). Without ACPI
//! tables the full RSDP scan brings it to about 80,000. `tests/kvm_boot.rs` measures this by
//! single-stepping, because on hosts whose KVM emulates real-mode and CPL0 code every
//! instruction counts (about a million per second).
//!
//! # Tests
//!
//! Unit tests check the image (size, reset vector, strings, no reachable panic) and
//! disassemble the entry code; `tests/kvm_boot.rs` boots the ROM under KVM on a
//! hand-built machine with fake devices and hand-written ACPI tables.

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

#[cfg(test)]
mod tests {
    use super::*;
    use iced_x86::{Code, Decoder, DecoderOptions, Instruction, Mnemonic, OpKind};

    /// The linked firmware ELF (next to the flat image), for the `.text` bounds.
    static ELF: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/vireo-bios.elf"));

    fn le(b: &[u8], off: usize, n: usize) -> u64 {
        b[off..off + n]
            .iter()
            .rev()
            .fold(0, |v, &x| (v << 8) | u64::from(x))
    }

    /// Address and size of the ELF's `.text` section.
    fn text_section() -> (u64, usize) {
        let shoff = le(ELF, 0x28, 8) as usize;
        let shentsize = le(ELF, 0x3A, 2) as usize;
        let shnum = le(ELF, 0x3C, 2) as usize;
        let shstrndx = le(ELF, 0x3E, 2) as usize;
        let sh = |i: usize| shoff + i * shentsize;
        let strtab = le(ELF, sh(shstrndx) + 0x18, 8) as usize;
        (0..shnum)
            .find(|&i| {
                let name = strtab + le(ELF, sh(i), 4) as usize;
                ELF[name..].starts_with(b".text\0")
            })
            .map(|i| (le(ELF, sh(i) + 0x10, 8), le(ELF, sh(i) + 0x20, 8) as usize))
            .expect("no .text in the firmware ELF")
    }

    /// The ROM bytes from guest physical address `addr` on.
    fn rom_at(addr: u64) -> &'static [u8] {
        &FIRMWARE[(addr - ROM_BASE) as usize..]
    }

    /// Decodes `bitness`-bit code at `addr` up to and including the first far jump.
    fn decode_to_far_jump(bitness: u32, addr: u64) -> Vec<Instruction> {
        let mut d = Decoder::with_ip(bitness, rom_at(addr), addr, DecoderOptions::NONE);
        let mut out = Vec::new();
        while d.can_decode() && out.len() < 200 {
            let i = d.decode();
            assert_ne!(
                i.code(),
                Code::INVALID,
                "bad {bitness}-bit code at {:#x}",
                i.ip()
            );
            out.push(i);
            if i.mnemonic() == Mnemonic::Jmp
                && matches!(i.op0_kind(), OpKind::FarBranch16 | OpKind::FarBranch32)
            {
                return out;
            }
        }
        panic!("no far jump after {addr:#x}");
    }

    fn far_target(i: &Instruction) -> (u16, u64) {
        let off = match i.op0_kind() {
            OpKind::FarBranch16 => u64::from(i.far_branch16()),
            _ => u64::from(i.far_branch32()),
        };
        (i.far_branch_selector(), off)
    }

    #[test]
    fn image_is_a_64k_rom_with_a_reset_vector() {
        assert_eq!(FIRMWARE.len(), ROM_SIZE);
        assert!(FIRMWARE.len() <= 64 * 1024);
        let rv = &FIRMWARE[FIRMWARE.len() - 16..];
        // jmp far F000:xxxx
        assert_eq!(rv[0], 0xEA, "{rv:02x?}");
        assert_eq!(&rv[3..5], &[0x00, 0xF0], "{rv:02x?}");
        let target = 0xF_0000 + u64::from(u16::from_le_bytes([rv[1], rv[2]]));
        assert!((ROM_BASE..RESET_VECTOR).contains(&target));
        assert_eq!(RESET_VECTOR, ROM_BASE + ROM_SIZE as u64 - 16);
    }

    #[test]
    fn image_contains_the_banner() {
        let has = |s: &str| FIRMWARE.windows(s.len()).any(|w| w == s.as_bytes());
        assert!(has(BANNER_PREFIX));
        let line = LONG_MODE_LINE.strip_prefix(BANNER_PREFIX).unwrap();
        assert!(has(line));
        for s in [
            "(CMOS), fw_cfg signature QEMU, ",
            "ACPI RSDP at ",
            "FADT PM1a_CNT ",
        ] {
            assert!(has(s), "{s}");
        }
        assert!(has("no boot device; demo done, powering off (ACPI S5)"));
        assert!(has("power-off failed"));
        // No panic is reachable in the firmware: the linker drops its panic handler
        // (and that message) when nothing calls it.
        assert!(
            !has("firmware panic"),
            "a panic became reachable in the firmware (indexing, unwrap, division...)"
        );
        // The RSDP scan covers the ROM itself: the signature must not be in it whole.
        assert!(!FIRMWARE.windows(8).any(|w| w == b"RSD PTR "));
    }

    /// Follows the reset vector through the 16- and 32-bit entry code to long mode,
    /// checking that only plain instructions are used there (KVM may emulate them).
    #[test]
    fn entry_code_walks_from_real_to_long_mode() {
        let reset = decode_to_far_jump(16, RESET_VECTOR);
        assert_eq!(reset.len(), 1);
        let (seg, off) = far_target(&reset[0]);
        assert_eq!(seg, 0xF000);
        let entry16 = (u64::from(seg) << 4) + off;

        let real = decode_to_far_jump(16, entry16);
        let allowed16 = [
            Mnemonic::Cli,
            Mnemonic::Cld,
            Mnemonic::Mov,
            Mnemonic::In,
            Mnemonic::Out,
            Mnemonic::Or,
            Mnemonic::And,
            Mnemonic::Test,
            Mnemonic::Je,
            Mnemonic::Lgdt,
            Mnemonic::Jmp,
        ];
        for i in &real {
            assert!(
                allowed16.contains(&i.mnemonic()),
                "16-bit: {:?} at {:#x}",
                i.code(),
                i.ip()
            );
        }
        assert!(real.iter().any(|i| i.mnemonic() == Mnemonic::Lgdt));
        let (sel32, entry32) = far_target(real.last().unwrap());
        assert_eq!(sel32, 0x08);

        let prot = decode_to_far_jump(32, entry32);
        let allowed32 = [
            Mnemonic::Mov,
            Mnemonic::Or,
            Mnemonic::Xor,
            Mnemonic::Add,
            Mnemonic::Cmp,
            Mnemonic::Jne,
            Mnemonic::Out,
            Mnemonic::Rdmsr,
            Mnemonic::Wrmsr,
            Mnemonic::Jmp,
        ];
        for i in &prot {
            assert!(
                allowed32.contains(&i.mnemonic()),
                "32-bit: {:?} at {:#x}",
                i.code(),
                i.ip()
            );
        }
        assert!(prot.iter().any(|i| i.mnemonic() == Mnemonic::Wrmsr));
        let (sel64, entry64) = far_target(prot.last().unwrap());
        assert_eq!(sel64, 0x18);
        let (text, size) = text_section();
        assert!(entry64 > text && entry64 < text + size as u64);
    }

    /// The 64-bit code (Rust and the precompiled core::fmt it uses) must not touch
    /// SSE/MMX/AVX registers: hosts whose KVM emulates CPL0 code lack most of them.
    #[test]
    fn long_mode_code_uses_no_vector_registers() {
        let (text, size) = text_section();
        let reset = decode_to_far_jump(16, RESET_VECTOR);
        let (seg, off) = far_target(&reset[0]);
        let real = decode_to_far_jump(16, (u64::from(seg) << 4) + off);
        let prot = decode_to_far_jump(32, far_target(real.last().unwrap()).1);
        let entry64 = far_target(prot.last().unwrap()).1;

        let end = text + size as u64;
        let code = &rom_at(entry64)[..(end - entry64) as usize];
        let mut d = Decoder::with_ip(64, code, entry64, DecoderOptions::NONE);
        let mut count = 0;
        for i in &mut d {
            count += 1;
            for op in 0..i.op_count() {
                if i.op_kind(op) == OpKind::Register {
                    let r = i.op_register(op);
                    assert!(
                        !(r.is_xmm() || r.is_ymm() || r.is_zmm() || r.is_mm()),
                        "vector register in {:?} at {:#x}",
                        i.code(),
                        i.ip()
                    );
                }
            }
        }
        assert!(count > 100, "only {count} instructions decoded");
    }
}
