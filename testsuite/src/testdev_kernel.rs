//! A Multiboot test kernel for QEMU's test devices, assembled in process with iced-x86.
//!
//! It runs a list of numbered checks against `-device pc-testdev` and
//! `-device pci-testdev` the way kvm-unit-tests uses them, and writes to isa-debug-exit
//! at port 0xf4 either [`PASS`] or the number of the first check that failed. The
//! expected values come from QEMU's definitions of the devices (and of a PC's 8259A
//! and PCI configuration mechanism), so the same kernel gives the same status under
//! QEMU.
//!
//! 1-6: pc-testdev's scratch register at 0xE0/0xE8 (widths, `rep outsb`/`rep insb`)
//! and its flush register. 7-11: the test memory at 0xFF000000 (`xchg` included).
//! 12-14: IRQ line 5 through ports 0x2005, seen in the master 8259A's IRR.
//! 15-20: pci-testdev found by scanning bus 0 through 0xCF8/0xCFC; its class, the BARs
//! firmware placed, BAR sizing, then BAR 0 moved to 0xE0000000 and BAR 1 to 0xB000.
//! 21-27: the memory tests (header, name, 16 counted writes, an eventfd test, test 3
//! does not exist). 28-31: the port tests. 32-35: BAR 1 moved again, memory decoding
//! disabled (BAR 0's registers gone, BAR 1's still there).

use crate::multiboot_kernel::{elf_with_image, EXIT_PORT, IMAGE_ADDR};
use iced_x86::code_asm::*;

/// What the kernel writes to isa-debug-exit when every check passed.
pub const PASS: u32 = 0x55;
/// The process status vireo (and QEMU) exit with after [`PASS`].
pub const PASS_STATUS: i32 = ((PASS << 1) | 1) as i32;

/// Where the kernel moves pci-testdev's BARs.
const MEM_BAR: u32 = 0xE000_0000;
const IO_BAR: u32 = 0xB000;
const IO_BAR_MOVED: u32 = 0xB100;
/// pc-testdev's test memory.
const IOMEM: u32 = 0xFF00_0000;
/// Room for the code at the start of the image; the data area follows.
const CODE_ROOM: u32 = 0x1000;
/// Data area: "xy" for `rep outsb`, then room for `rep insb`.
const XY: u32 = IMAGE_ADDR + CODE_ROOM;
const INBUF: u32 = XY + 0x10;

/// The check number a failing exit value names (`value = check`).
pub fn failed_check(status: i32) -> Option<i32> {
    (status != PASS_STATUS).then_some(status >> 1)
}

struct K {
    a: CodeAssembler,
    fail: CodeLabel,
    cfg_rd: CodeLabel,
    cfg_wr: CodeLabel,
}

impl K {
    /// Check `step`: EAX must equal `expected`.
    fn expect(&mut self, step: u32, expected: u32) -> Result<(), IcedError> {
        self.a.mov(ecx, step)?;
        self.a.cmp(eax, expected)?;
        self.a.jne(self.fail)
    }

    /// EAX = configuration dword `reg` of the function EBX addresses.
    fn cfg_read(&mut self, reg: u32) -> Result<(), IcedError> {
        self.a.mov(edi, reg)?;
        self.a.call(self.cfg_rd)
    }

    fn cfg_write(&mut self, reg: u32, v: u32) -> Result<(), IcedError> {
        self.a.mov(edi, reg)?;
        self.a.mov(esi, v)?;
        self.a.call(self.cfg_wr)
    }

    /// `n` byte writes of `v` to port `port`.
    fn outb_n(&mut self, port: u32, v: u32, n: u32) -> Result<(), IcedError> {
        let mut l = self.a.create_label();
        self.a.mov(ecx, n)?;
        self.a.mov(edx, port)?;
        self.a.mov(al, v)?;
        self.a.set_label(&mut l)?;
        self.a.out(dx, al)?;
        self.a.loop_(l)
    }

    /// `n` byte stores of `v` at `addr`.
    fn movb_n(&mut self, addr: u32, v: u32, n: u32) -> Result<(), IcedError> {
        let mut l = self.a.create_label();
        self.a.mov(ecx, n)?;
        self.a.set_label(&mut l)?;
        self.a.mov(byte_ptr(addr), v)?;
        self.a.loop_(l)
    }
}

fn assemble() -> Result<Vec<u8>, IcedError> {
    let mut a = CodeAssembler::new(32)?;
    let fail = a.create_label();
    let cfg_rd = a.create_label();
    let cfg_wr = a.create_label();
    let mut k = K {
        a,
        fail,
        cfg_rd,
        cfg_wr,
    };
    k.a.mov(esp, 0x9_0000u32)?;
    k.a.cld()?;

    // pc-testdev scratch register: little endian, the same at 0xE0 and 0xE8.
    k.a.mov(eax, 0x1234_5678u32)?;
    k.a.out(0xE0, eax)?;
    k.a.in_(al, 0xE8)?;
    k.a.movzx(eax, al)?;
    k.expect(1, 0x78)?;
    k.a.in_(ax, 0xEA)?;
    k.a.movzx(eax, ax)?;
    k.expect(2, 0x1234)?;
    k.a.mov(al, 0xABu32)?;
    k.a.out(0xE9, al)?;
    k.a.in_(eax, 0xE0)?;
    k.expect(3, 0x1234_AB78)?;
    // String I/O is one access per element: the last byte out is what reads back.
    k.a.mov(esi, XY)?;
    k.a.mov(ecx, 2u32)?;
    k.a.mov(edx, 0xE0u32)?;
    k.a.rep().outsb()?;
    k.a.in_(al, 0xE0)?;
    k.a.movzx(eax, al)?;
    k.expect(4, u32::from(b'y'))?;
    k.a.mov(edi, INBUF)?;
    k.a.mov(ecx, 2u32)?;
    k.a.mov(edx, 0xE0u32)?;
    k.a.rep().insb()?;
    k.a.movzx(eax, word_ptr(INBUF))?;
    k.expect(5, u32::from(u16::from_le_bytes([b'y', b'y'])))?;
    // The flush register takes a page address and reads 0.
    k.a.mov(eax, 0x10_0000u32)?;
    k.a.out(0xE4, eax)?;
    k.a.in_(eax, 0xE4)?;
    k.expect(6, 0)?;

    // Test memory at 0xFF000000.
    k.a.mov(dword_ptr(IOMEM), 0xCAFE_BABEu32)?;
    k.a.mov(eax, dword_ptr(IOMEM))?;
    k.expect(7, 0xCAFE_BABE)?;
    k.a.movzx(eax, byte_ptr(IOMEM + 1))?;
    k.expect(8, 0xBA)?;
    k.a.mov(eax, 0x1122_3344u32)?;
    k.a.xchg(dword_ptr(IOMEM + 4), eax)?;
    k.expect(9, 0)?;
    k.a.mov(eax, dword_ptr(IOMEM + 4))?;
    k.expect(10, 0x1122_3344)?;
    k.a.mov(word_ptr(IOMEM + 0xFFFE), 0x5A5Au32)?;
    k.a.movzx(eax, word_ptr(IOMEM + 0xFFFE))?;
    k.expect(11, 0x5A5A)?;

    // IRQ line 5: raised through port 0x2005, it is latched in the 8259A's IRR.
    k.a.mov(al, 0x0Au32)?; // OCW3: read IRR
    k.a.out(0x20, al)?;
    k.a.in_(al, 0x20)?;
    k.a.movzx(eax, al)?;
    k.a.and(eax, 0x20)?;
    k.expect(12, 0)?;
    k.a.mov(edx, 0x2005u32)?;
    k.a.mov(al, 1u32)?;
    k.a.out(dx, al)?;
    k.a.in_(al, 0x20)?;
    k.a.movzx(eax, al)?;
    k.a.and(eax, 0x20)?;
    k.expect(13, 0x20)?;
    k.a.mov(al, 0u32)?;
    k.a.out(dx, al)?;
    k.a.mov(edx, 0x2000u32)?;
    k.a.in_(eax, dx)?;
    k.expect(14, 0)?;

    // Find pci-testdev on bus 0: EBX = its CONFIG_ADDRESS.
    let mut scan = k.a.create_label();
    let mut found = k.a.create_label();
    k.a.mov(ebx, 0x8000_0000u32)?;
    k.a.set_label(&mut scan)?;
    k.cfg_read(0)?;
    k.a.cmp(eax, 0x0005_1B36)?;
    k.a.je(found)?;
    k.a.add(ebx, 0x800)?;
    k.a.cmp(ebx, 0x8001_0000u32)?;
    k.a.jb(scan)?;
    k.a.mov(ecx, 15u32)?;
    k.a.jmp(k.fail)?;
    k.a.set_label(&mut found)?;
    k.cfg_read(0x08)?;
    k.expect(16, 0x00FF_0000)?; // class code 0x00FF, revision 0
                                // Where PC firmware (SeaBIOS under QEMU) puts the BARs, decoding enabled.
    k.cfg_read(0x10)?;
    k.expect(17, 0xFEBF_F000)?;
    k.cfg_read(0x14)?;
    k.expect(18, 0xC001)?;
    // Sizing: 4 KiB of memory, 256 ports.
    k.cfg_write(0x10, u32::MAX)?;
    k.cfg_read(0x10)?;
    k.expect(19, 0xFFFF_F000)?;
    k.cfg_write(0x14, u32::MAX)?;
    k.cfg_read(0x14)?;
    k.expect(20, 0xFFFF_FF01)?;
    k.cfg_write(0x10, MEM_BAR)?;
    k.cfg_write(0x14, IO_BAR)?;
    k.cfg_write(0x04, 3)?;

    // The memory tests through BAR 0.
    k.a.mov(byte_ptr(MEM_BAR), 0u32)?;
    k.a.mov(eax, dword_ptr(MEM_BAR + 4))?;
    k.expect(21, 2048)?;
    k.a.mov(eax, dword_ptr(MEM_BAR + 8))?;
    k.expect(22, 0xFA)?;
    k.a.mov(eax, dword_ptr(MEM_BAR + 16))?;
    k.expect(23, u32::from_le_bytes(*b"mmio"))?;
    k.movb_n(MEM_BAR + 2048, 0xFA, 16)?;
    k.a.mov(eax, dword_ptr(MEM_BAR + 12))?;
    k.expect(24, 16)?;
    // mmio-datamatch-eventfd: the eventfd may take the writes (count 0) or not (16).
    k.a.mov(byte_ptr(MEM_BAR), 2u32)?;
    k.a.mov(eax, dword_ptr(MEM_BAR + 12))?;
    k.expect(25, 0)?;
    k.movb_n(MEM_BAR + 2050, 0xFA, 16)?;
    k.a.mov(eax, dword_ptr(MEM_BAR + 12))?;
    k.a.and(eax, !16u32)?;
    k.expect(26, 0)?;
    k.a.mov(byte_ptr(MEM_BAR), 3u32)?;
    k.a.movzx(eax, byte_ptr(MEM_BAR + 1))?;
    k.expect(27, 0)?;

    // The port tests through BAR 1.
    k.outb_n(IO_BAR, 0, 1)?;
    k.a.mov(edx, IO_BAR + 4)?;
    k.a.in_(eax, dx)?;
    k.expect(28, 131)?;
    k.a.mov(edx, IO_BAR + 16)?;
    k.a.in_(eax, dx)?;
    k.expect(29, u32::from_le_bytes(*b"port"))?;
    k.outb_n(IO_BAR + 131, 0xFA, 16)?;
    k.a.mov(edx, IO_BAR + 12)?;
    k.a.in_(eax, dx)?;
    k.expect(30, 16)?;
    k.outb_n(IO_BAR, 2, 1)?;
    k.outb_n(IO_BAR + 133, 0xFA, 16)?;
    k.a.mov(edx, IO_BAR + 12)?;
    k.a.in_(eax, dx)?;
    k.a.and(eax, !16u32)?;
    k.expect(31, 0)?;

    // Move BAR 1: the old ports float, the new ones answer.
    k.cfg_write(0x14, IO_BAR_MOVED)?;
    k.a.mov(edx, IO_BAR + 4)?;
    k.a.in_(eax, dx)?;
    k.expect(32, u32::MAX)?;
    k.a.mov(edx, IO_BAR_MOVED + 4)?;
    k.a.in_(eax, dx)?;
    k.expect(33, 133)?;
    // Memory decoding off: BAR 0 goes, BAR 1 stays.
    k.cfg_write(0x04, 1)?;
    // Unassigned memory then: all ones in vireo (a master abort, as on a PC), zero
    // in QEMU; either way no longer the register.
    k.a.mov(eax, dword_ptr(MEM_BAR + 4))?;
    k.a.inc(eax)?;
    k.a.and(eax, !1u32)?;
    k.expect(34, 0)?;
    k.a.mov(edx, IO_BAR_MOVED + 4)?;
    k.a.in_(eax, dx)?;
    k.expect(35, 133)?;

    k.a.mov(ecx, PASS)?;
    k.a.set_label(&mut k.fail)?;
    k.a.mov(eax, ecx)?;
    k.a.mov(edx, u32::from(EXIT_PORT))?;
    k.a.out(dx, eax)?;
    let mut hang = k.a.create_label();
    k.a.set_label(&mut hang)?;
    k.a.cli()?;
    k.a.hlt()?;
    k.a.jmp(hang)?;

    // cfg_rd: EAX = dword EDI of the function at EBX (EDX clobbered).
    k.a.set_label(&mut k.cfg_rd)?;
    k.a.lea(eax, ebx + edi)?;
    k.a.mov(edx, 0xCF8u32)?;
    k.a.out(dx, eax)?;
    k.a.mov(edx, 0xCFCu32)?;
    k.a.in_(eax, dx)?;
    k.a.ret()?;
    // cfg_wr: dword EDI of the function at EBX = ESI (EAX, EDX clobbered).
    k.a.set_label(&mut k.cfg_wr)?;
    k.a.lea(eax, ebx + edi)?;
    k.a.mov(edx, 0xCF8u32)?;
    k.a.out(dx, eax)?;
    k.a.mov(eax, esi)?;
    k.a.mov(edx, 0xCFCu32)?;
    k.a.out(dx, eax)?;
    k.a.ret()?;
    k.a.assemble(u64::from(IMAGE_ADDR))
}

/// The kernel as a Multiboot ELF32 executable.
pub fn build_elf() -> Vec<u8> {
    let mut image = assemble().expect("the testdev kernel assembles");
    assert!(
        image.len() <= CODE_ROOM as usize,
        "testdev kernel code too long"
    );
    image.resize(CODE_ROOM as usize, 0);
    image.extend_from_slice(b"xy");
    image.resize(image.len() + 0x20, 0);
    elf_with_image(&image)
}
