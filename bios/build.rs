//! Builds vireo's firmware ROM.
//!
//! `firmware/main.rs` (with `firmware/entry.s` pulled in by `global_asm!`) is compiled
//! by invoking `rustc` directly for `x86_64-unknown-linux-gnu` as a freestanding static
//! executable linked at 0xF0000 by `firmware/link.ld`. The ELF's single `PT_LOAD`
//! segment is then flattened here into `$OUT_DIR/vireo-bios.bin`: exactly 64 KiB for
//! 0xF0000..0x100000, reset vector in the last 16 bytes. Any failure stops the build
//! with the compiler's or the check's message.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{exit, Command};

/// Where the ROM is linked and how big it is.
const ROM_BASE: u64 = 0xF_0000;
const ROM_SIZE: usize = 0x1_0000;
/// Byte used for the parts of the ROM no segment covers (erased flash).
const FILL: u8 = 0xFF;

fn fail(msg: &str) -> ! {
    eprintln!("error: vireo-bios: {msg}");
    println!(
        "cargo:warning=vireo-bios: {}",
        msg.lines().next().unwrap_or(msg)
    );
    exit(1);
}

fn main() {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let src = manifest.join("firmware");
    for f in ["main.rs", "entry.s", "link.ld"] {
        println!("cargo:rerun-if-changed={}", src.join(f).display());
    }
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=RUSTC");

    let elf = out_dir.join("vireo-bios.elf");
    compile(&src, &elf);
    let image = flatten(&elf);
    let bin = out_dir.join("vireo-bios.bin");
    if let Err(e) = fs::write(&bin, &image) {
        fail(&format!("writing {}: {e}", bin.display()));
    }
}

/// Compiles and links the firmware ELF.
fn compile(src: &Path, elf: &Path) {
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let link_ld = src.join("link.ld");
    let mut cmd = Command::new(&rustc);
    cmd.arg(src.join("main.rs"))
        .args([
            "--edition",
            "2021",
            "--crate-type",
            "bin",
            "--crate-name",
            "vireo_firmware",
        ])
        .args(["--target", "x86_64-unknown-linux-gnu"])
        .args(["-C", "panic=abort"])
        .args(["-C", "opt-level=s"])
        .args(["-C", "debug-assertions=off", "-C", "overflow-checks=off"])
        .args([
            "-C",
            "debuginfo=0",
            "-C",
            "codegen-units=1",
            "-C",
            "lto=fat",
        ])
        .args(["-C", "relocation-model=static", "-C", "code-model=small"])
        .args(["-C", "force-unwind-tables=no"])
        .args(["-C", "link-arg=-nostartfiles", "-C", "link-arg=-nostdlib"])
        .args(["-C", "link-arg=-static", "-C", "link-arg=-no-pie"])
        .args(["-C", "link-arg=-Wl,--build-id=none"])
        .arg("-C")
        .arg(format!("link-arg=-T{}", link_ld.display()))
        .arg("-o")
        .arg(elf)
        // Cargo's flags for the host crate are not meant for the firmware.
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS");
    let output = match cmd.output() {
        Ok(o) => o,
        Err(e) => fail(&format!("cannot run {}: {e}", Path::new(&rustc).display())),
    };
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        fail(&format!(
            "compiling the firmware failed ({}):\n{stderr}",
            output.status
        ));
    }
    for line in stderr.lines().filter(|l| l.starts_with("warning")) {
        println!("cargo:warning=vireo-bios firmware: {line}");
    }
}

/// Little-endian field readers for the ELF file.
fn le(b: &[u8], off: usize, n: usize) -> u64 {
    match b.get(off..off + n) {
        Some(s) => s.iter().rev().fold(0, |v, &x| (v << 8) | u64::from(x)),
        None => fail(&format!("firmware ELF truncated at {off:#x}")),
    }
}

/// Lays the ELF's `PT_LOAD` segments out as the 64 KiB ROM and checks the result.
fn flatten(elf: &Path) -> Vec<u8> {
    let b = fs::read(elf).unwrap_or_else(|e| fail(&format!("reading {}: {e}", elf.display())));
    if b.get(..4) != Some(b"\x7fELF") || b.get(4) != Some(&2) || b.get(5) != Some(&1) {
        fail("the firmware is not a little-endian ELF64 file");
    }
    let phoff = le(&b, 0x20, 8) as usize;
    let phentsize = le(&b, 0x36, 2) as usize;
    let phnum = le(&b, 0x38, 2) as usize;
    let mut rom = vec![FILL; ROM_SIZE];
    let mut loads = 0;
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        const PT_LOAD: u64 = 1;
        if le(&b, ph, 4) != PT_LOAD {
            continue;
        }
        let offset = le(&b, ph + 0x08, 8) as usize;
        let paddr = le(&b, ph + 0x18, 8);
        let filesz = le(&b, ph + 0x20, 8) as usize;
        let memsz = le(&b, ph + 0x28, 8) as usize;
        if memsz != filesz {
            fail(&format!("segment at {paddr:#x} has {memsz:#x} bytes in memory but {filesz:#x} in the file: no .bss in ROM"));
        }
        let start = paddr.wrapping_sub(ROM_BASE) as usize;
        if paddr < ROM_BASE || start + filesz > ROM_SIZE {
            fail(&format!(
                "segment {paddr:#x}+{filesz:#x} is outside the ROM 0xf0000..0x100000"
            ));
        }
        let data = b
            .get(offset..offset + filesz)
            .unwrap_or_else(|| fail("firmware ELF segment truncated"));
        rom[start..start + filesz].copy_from_slice(data);
        loads += 1;
    }
    if loads == 0 {
        fail("the firmware ELF has no loadable segment");
    }
    // The reset vector: `ljmp $0xf000, $offset` (EA lo hi 00 F0).
    let rv = &rom[ROM_SIZE - 16..];
    if rv[0] != 0xEA || rv[3..5] != [0x00, 0xF0] {
        fail(&format!(
            "the reset vector is not a far jump into F000: {rv:02x?}"
        ));
    }
    rom
}
