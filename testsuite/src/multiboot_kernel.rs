//! A Multiboot v1 test kernel, assembled in process with iced-x86 and wrapped in an
//! ELF32 executable.
//!
//! The kernel checks the boot magic in EAX, prints a banner, the command line and the
//! module count on COM1, then writes `0x10 * magic_ok + mods_count` to isa-debug-exit
//! at port 0xf4, so vireo exits with status `(value << 1) | 1`.

use iced_x86::code_asm::*;

/// Physical load address of the kernel image.
pub const LOAD_ADDR: u32 = 0x10_0000;
/// isa-debug-exit port the kernel writes to (`-device isa-debug-exit,iobase=0xf4`).
pub const EXIT_PORT: u16 = 0xf4;
const COM1: u16 = 0x3f8;
const MB_MAGIC: u32 = 0x1BAD_B002;
const MB_BOOT_MAGIC: u32 = 0x2BAD_B002;
/// Multiboot header flags: page-align modules, memory info.
const MB_FLAGS: u32 = 0x3;

const ELF_HDR: usize = 52;
const PH_SIZE: usize = 32;
/// Where the code starts in the file (after ELF header, program header and the
/// 12-byte Multiboot header).
const CODE_OFFSET: usize = ELF_HDR + PH_SIZE + 12;
/// Where the kernel's strings and tables start in the file (and, at LOAD_ADDR+this, in
/// memory); the code must end before it.
const DATA_OFFSET: usize = 0x800;
const DATA_ADDR: u32 = LOAD_ADDR + DATA_OFFSET as u32;
/// The data area: NUL-terminated strings and an empty IDT descriptor, at these offsets.
const DATA: &[(u32, &[u8])] = &[
    (BANNER, b"multiboot: hello from the vireo test kernel\n\0"),
    (CMDLINE_TXT, b"multiboot: cmdline: \0"),
    (MODS_TXT, b"multiboot: modules: \0"),
    (EMPTY_IDT, &[0; 6]),
];
const BANNER: u32 = 0;
const CMDLINE_TXT: u32 = 0x40;
const MODS_TXT: u32 = 0x60;
const EMPTY_IDT: u32 = 0x80;

/// What the kernel does after its report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Write the exit value to isa-debug-exit.
    DebugExit,
    /// On the first boot, mark CMOS byte [`BOOT_MARK_INDEX`] and reset through the
    /// PIIX3 reset register (0xCF9); on the boot after that, exit with value 0x42.
    ResetOnceThenExit,
    /// Load an empty IDT and raise an exception: a triple fault.
    TripleFault,
    /// Halt with interrupts off, forever (only the host can end the run).
    Hang,
    /// Echo COM1 input back in upper case until a newline, then exit with the number
    /// of characters echoed (mod 128).
    EchoUntilNewline,
    /// VERR on the flat data selector (0x10), then exit with `0x30 + ZF`: an
    /// instruction this host's software KVM cannot emulate at CPL 0 (hybrid execution).
    VerrThenExit,
}

/// CMOS NVRAM byte the reset test uses to count boots (it survives a reset).
pub const BOOT_MARK_INDEX: u8 = 0x40;
/// Exit value after the reboot in [`Ending::ResetOnceThenExit`].
pub const AFTER_REBOOT_VALUE: u32 = 0x42;

fn assemble(ending: Ending) -> Result<Vec<u8>, IcedError> {
    let code_addr = u64::from(LOAD_ADDR) + CODE_OFFSET as u64;
    let mut a = CodeAssembler::new(32)?;
    let mut bad_magic = a.create_label();
    let mut print_str = a.create_label();
    let mut putc = a.create_label();
    let mut no_cmdline = a.create_label();
    let mut no_mods = a.create_label();
    let mut hang = a.create_label();

    // EDI = 1 if the boot magic is right.
    a.xor(edi, edi)?;
    a.cmp(eax, MB_BOOT_MAGIC)?;
    a.jne(bad_magic)?;
    a.mov(edi, 1u32)?;
    a.set_label(&mut bad_magic)?;
    a.nop()?;
    a.mov(esp, 0x9_0000u32)?;
    a.mov(ebp, ebx)?; // multiboot info
    a.mov(esi, DATA_ADDR + BANNER)?;
    a.call(print_str)?;
    // Command line (flags bit 2).
    a.test(dword_ptr(ebp), 4u32)?;
    a.jz(no_cmdline)?;
    a.mov(esi, DATA_ADDR + CMDLINE_TXT)?;
    a.call(print_str)?;
    a.mov(esi, dword_ptr(ebp + 16))?;
    a.call(print_str)?;
    a.mov(al, b'\n' as u32)?;
    a.call(putc)?;
    a.set_label(&mut no_cmdline)?;
    // Module count (flags bit 3).
    a.xor(ecx, ecx)?;
    a.test(dword_ptr(ebp), 8u32)?;
    a.jz(no_mods)?;
    a.mov(ecx, dword_ptr(ebp + 20))?;
    a.set_label(&mut no_mods)?;
    a.push(ecx)?;
    a.mov(esi, DATA_ADDR + MODS_TXT)?;
    a.call(print_str)?;
    a.pop(ecx)?;
    a.mov(al, cl)?;
    a.and(al, 0xf)?;
    a.add(al, b'0' as u32)?;
    a.push(ecx)?;
    a.call(putc)?;
    a.mov(al, b'\n' as u32)?;
    a.call(putc)?;
    a.pop(ecx)?;
    match ending {
        Ending::DebugExit => {}
        Ending::ResetOnceThenExit => {
            let mut second_boot = a.create_label();
            a.mov(al, u32::from(BOOT_MARK_INDEX))?;
            a.out(0x70, al)?;
            a.in_(al, 0x71)?;
            a.cmp(al, 0xa5)?;
            a.je(second_boot)?;
            a.mov(al, u32::from(BOOT_MARK_INDEX))?;
            a.out(0x70, al)?;
            a.mov(al, 0xa5u32)?;
            a.out(0x71, al)?;
            a.mov(dx, 0xcf9u32)?;
            a.mov(al, 0x06u32)?;
            a.out(dx, al)?;
            a.jmp(hang)?;
            a.set_label(&mut second_boot)?;
            a.mov(eax, AFTER_REBOOT_VALUE)?;
            a.mov(dx, EXIT_PORT as u32)?;
            a.out(dx, eax)?;
            a.jmp(hang)?;
        }
        Ending::Hang => a.jmp(hang)?,
        Ending::VerrThenExit => {
            a.mov(ax, 0x10u32)?;
            a.verr(ax)?;
            a.setz(al)?;
            a.movzx(eax, al)?;
            a.add(eax, 0x30)?;
            a.mov(dx, EXIT_PORT as u32)?;
            a.out(dx, eax)?;
            a.jmp(hang)?;
        }
        Ending::EchoUntilNewline => {
            let mut next = a.create_label();
            let mut wait_rx = a.create_label();
            let mut not_lower = a.create_label();
            let mut done = a.create_label();
            a.xor(ebx, ebx)?;
            a.set_label(&mut next)?;
            a.mov(dx, u32::from(COM1 + 5))?;
            a.set_label(&mut wait_rx)?;
            a.in_(al, dx)?;
            a.test(al, 1)?;
            a.jz(wait_rx)?;
            a.mov(dx, u32::from(COM1))?;
            a.in_(al, dx)?;
            a.cmp(al, u32::from(b'\n'))?;
            a.je(done)?;
            a.cmp(al, u32::from(b'a'))?;
            a.jb(not_lower)?;
            a.cmp(al, u32::from(b'z'))?;
            a.ja(not_lower)?;
            a.sub(al, 0x20)?;
            a.set_label(&mut not_lower)?;
            a.call(putc)?;
            a.inc(ebx)?;
            a.jmp(next)?;
            a.set_label(&mut done)?;
            a.mov(eax, ebx)?;
            a.and(eax, 0x7f)?;
            a.mov(dx, EXIT_PORT as u32)?;
            a.out(dx, eax)?;
            a.jmp(hang)?;
        }
        Ending::TripleFault => {
            a.lidt(ptr(DATA_ADDR + EMPTY_IDT))?;
            // ud2 rather than int3: this host's software KVM (kvm_pvm) reports an
            // emulation failure for int3 through an empty IDT instead of a triple fault.
            a.ud2()?;
            a.jmp(hang)?;
        }
    }
    // Exit value: 0x10 * magic_ok + mods_count.
    a.mov(eax, edi)?;
    a.shl(eax, 4u32)?;
    a.add(eax, ecx)?;
    a.mov(dx, EXIT_PORT as u32)?;
    a.out(dx, eax)?;
    a.set_label(&mut hang)?;
    a.cli()?;
    a.hlt()?;
    a.jmp(hang)?;

    // print_str: ESI -> COM1 until NUL.
    let mut ps_done = a.create_label();
    a.set_label(&mut print_str)?;
    a.lodsb()?;
    a.test(al, al)?;
    a.jz(ps_done)?;
    a.call(putc)?;
    a.jmp(print_str)?;
    a.set_label(&mut ps_done)?;
    a.ret()?;

    // putc: AL -> COM1 after THR empty.
    a.set_label(&mut putc)?;
    let mut wait = a.create_label();
    a.push(eax)?;
    a.push(edx)?;
    a.mov(ah, al)?;
    a.set_label(&mut wait)?;
    a.mov(dx, (COM1 + 5) as u32)?;
    a.in_(al, dx)?;
    a.test(al, 0x20)?;
    a.jz(wait)?;
    a.mov(al, ah)?;
    a.mov(dx, COM1 as u32)?;
    a.out(dx, al)?;
    a.pop(edx)?;
    a.pop(eax)?;
    a.ret()?;
    a.assemble(code_addr)
}

/// The kernel as an ELF32 executable with a Multiboot header.
pub fn build_elf() -> Vec<u8> {
    build_elf_ending(Ending::DebugExit)
}

/// The kernel with the given ending.
pub fn build_elf_ending(ending: Ending) -> Vec<u8> {
    let code = assemble(ending).expect("the test kernel assembles");
    assert!(
        CODE_OFFSET + code.len() <= DATA_OFFSET,
        "test kernel code too long"
    );
    let mut data = vec![0u8; 0x100];
    for (off, bytes) in DATA {
        data[*off as usize..*off as usize + bytes.len()].copy_from_slice(bytes);
    }
    let mut image = code;
    image.resize(DATA_OFFSET - CODE_OFFSET, 0);
    image.extend_from_slice(&data);
    elf_with_image(&image)
}

/// Address the first byte of an [`elf_with_image`] image is loaded at (the entry).
pub const IMAGE_ADDR: u32 = LOAD_ADDR + CODE_OFFSET as u32;

/// An ELF32 Multiboot kernel whose loaded image, after the ELF and Multiboot headers,
/// is `image` (entered at its first byte, [`IMAGE_ADDR`]), plus 4 KiB of bss.
pub fn elf_with_image(image: &[u8]) -> Vec<u8> {
    let file_len = CODE_OFFSET + image.len();
    let mut f = Vec::with_capacity(file_len);
    // ELF header.
    f.extend_from_slice(&[0x7f, b'E', b'L', b'F', 1, 1, 1, 0]);
    f.extend_from_slice(&[0; 8]);
    f.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    f.extend_from_slice(&3u16.to_le_bytes()); // EM_386
    f.extend_from_slice(&1u32.to_le_bytes()); // version
    f.extend_from_slice(&(LOAD_ADDR + CODE_OFFSET as u32).to_le_bytes()); // entry
    f.extend_from_slice(&(ELF_HDR as u32).to_le_bytes()); // phoff
    f.extend_from_slice(&0u32.to_le_bytes()); // shoff
    f.extend_from_slice(&0u32.to_le_bytes()); // flags
    f.extend_from_slice(&(ELF_HDR as u16).to_le_bytes());
    f.extend_from_slice(&(PH_SIZE as u16).to_le_bytes());
    f.extend_from_slice(&1u16.to_le_bytes()); // phnum
    f.extend_from_slice(&40u16.to_le_bytes()); // shentsize
    f.extend_from_slice(&0u16.to_le_bytes()); // shnum
    f.extend_from_slice(&0u16.to_le_bytes()); // shstrndx
                                              // One PT_LOAD covering the whole file at LOAD_ADDR, plus 4 KiB of bss.
    for v in [
        1u32,
        0,
        LOAD_ADDR,
        LOAD_ADDR,
        file_len as u32,
        file_len as u32 + 0x1000,
        7,
        0x1000,
    ] {
        f.extend_from_slice(&v.to_le_bytes());
    }
    // Multiboot header.
    f.extend_from_slice(&MB_MAGIC.to_le_bytes());
    f.extend_from_slice(&MB_FLAGS.to_le_bytes());
    f.extend_from_slice(&(0u32.wrapping_sub(MB_MAGIC).wrapping_sub(MB_FLAGS)).to_le_bytes());
    debug_assert_eq!(f.len(), CODE_OFFSET);
    f.extend_from_slice(image);
    f
}

/// The exit status vireo reports when the kernel saw the right magic and `mods`
/// modules.
pub fn expected_status(mods: u32) -> i32 {
    (((0x10 + mods) << 1) | 1) as i32
}

/// A 16 MiB KVM machine running the test kernel with `ending` (written to a scratch
/// directory named `name`), COM1 captured, isa-debug-exit at [`EXIT_PORT`].
pub fn machine_config(
    name: &str,
    ending: Ending,
    no_reboot: bool,
) -> (vireo::MachineConfig, vireo_devices::chardev::CaptureBuffer) {
    let kernel = crate::scratch_dir(name).join("kernel.elf");
    std::fs::write(&kernel, build_elf_ending(ending)).expect("write the test kernel");
    let serial = vireo_devices::chardev::CaptureBuffer::new();
    let cfg = vireo::MachineConfig {
        accel: vireo::Accel::Kvm,
        ram_size: 16 << 20,
        kernel: Some(kernel),
        serials: vec![vireo::CharSpec::Capture(serial.clone())],
        debug_exits: vec![vireo::config::DebugExitConfig {
            iobase: EXIT_PORT,
            iosize: 4,
        }],
        no_reboot,
        ..vireo::MachineConfig::default()
    };
    (cfg, serial)
}
