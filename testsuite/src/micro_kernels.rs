//! Micro-kernels for the TCG speed benchmark: Multiboot kernels, assembled in process
//! with iced-x86, that each time one kind of guest work between two marker lines on
//! COM1 and then report a checksum of what they computed.
//!
//! Every kernel switches to long mode, sets up a GDT with user segments and a TSS, an
//! IDT, SYSCALL, and enters ring 3 (which prints and exits through software
//! interrupts); the measured loop runs in user mode, as a Linux program's would:
//! - [`Kernel::Alu`]: a dependent chain of 32-bit integer operations;
//! - [`Kernel::Mem`]: a running sum over a 16 MiB array, read and written back;
//! - [`Kernel::Call`]: recursive Fibonacci (call/ret and stack traffic);
//! - [`Kernel::Indirect`]: a threaded bytecode interpreter (indirect jumps);
//! - [`Kernel::Syscall`]: `syscall`/`sysretq` to a minimal ring-0 handler;
//! - [`Kernel::PageFault`]: user stores to unmapped pages, each mapped by the ring-0
//!   `#PF` handler; `int 0x80` unmaps them all again (and reloads CR3) per pass;
//! - [`Kernel::Bignum`]: multi-precision multiply-subtract over 64-bit limbs (the
//!   inner loop of a kernel's RSA signature checks).
//!
//! The host knows what each kernel computes ([`Built::expected`]) and how many guest
//! instructions its measured part retires ([`Built::instructions`], counted from the
//! code's structure: the loops' instructions plus the handlers they enter).
//!
//! Output: `VIREO-MICRO begin <name>`, `VIREO-MICRO end <name>`,
//! `VIREO-MICRO-RESULT <name> <16 hex digits>`, then the value [`EXIT_VALUE`] to
//! isa-debug-exit at [`EXIT_PORT`] (any unexpected exception writes
//! [`EXIT_UNEXPECTED`] instead).

pub use crate::multiboot_kernel::EXIT_PORT;
use crate::multiboot_kernel::{elf_with_image, IMAGE_ADDR};
use iced_x86::code_asm::*;
use iced_x86::BlockEncoderOptions;

mod bignum;

/// Value the kernel writes to isa-debug-exit when it is done.
pub const EXIT_VALUE: u8 = 0x10;
/// Value written by the handler of any unexpected exception.
pub const EXIT_UNEXPECTED: u8 = 0x7e;
/// Guest RAM the kernels need, MiB.
pub const MEM_MIB: u32 = 64;
/// Marker line prefixes.
pub const BEGIN: &str = "VIREO-MICRO begin ";
pub const END: &str = "VIREO-MICRO end ";
pub const RESULT: &str = "VIREO-MICRO-RESULT ";

/// Where the 64-bit code is assembled (the image is loaded from [`IMAGE_ADDR`]).
const CODE64: u64 = 0x10_1000;
const CODE64_MAX: usize = 0x3000;
const GDT: u64 = 0x10_4000;
const GDTR: u64 = GDT + 0x80;
const IDTR: u64 = GDT + 0x90;
const TSS: u64 = GDT + 0x100;
const IDT: u64 = 0x10_5000;
const PML4: u64 = 0x10_6000;
const PDPT: u64 = 0x10_7000;
const PD_LOW: u64 = 0x10_8000;
const PD_FAULT: u64 = 0x10_9000;
/// The page table of the page-fault region (512 entries, all empty at first).
const PT_FAULT: u64 = 0x10_a000;
/// The indirect kernel's handler table.
const OP_TABLE: u64 = 0x10_b000;
/// The indirect kernel's bytecode.
const BYTECODE: u64 = 0x10_c000;
const IMAGE_END: u64 = 0x10_d000;
const KERNEL_STACK: u64 = 0x7_0000;
const USER_STACK: u64 = 0x6_0000;
/// The memory kernel's array: 2 Mi quadwords.
const ARRAY: u64 = 0x100_0000;
const ARRAY_LEN: u32 = 0x20_0000;
/// Linear address of the page-fault region (its own PDPT entry) and the physical
/// pages behind it.
const FAULT_VA: u32 = 0x4000_0000;
const FAULT_PA: u32 = 0x80_0000;
const FAULT_PAGES: u32 = 512;
/// Bytecode length of the indirect kernel (without its end opcode).
const PROGRAM_LEN: usize = 4000;
/// Depth of the call kernel's Fibonacci recursion.
const FIB_N: u32 = 20;

/// Software interrupts user code prints (string at RSI) and exits with.
const VEC_PRINT: u32 = 0x41;
const VEC_EXIT: u32 = 0x42;

const SEL_KCODE: u16 = 0x08;
const SEL_TSS: u16 = 0x30;
const SEL_UDATA: u64 = 0x20 | 3;
const SEL_UCODE: u64 = 0x28 | 3;

/// The micro-kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kernel {
    Alu,
    Mem,
    Call,
    Indirect,
    Syscall,
    PageFault,
    Bignum,
}

impl Kernel {
    pub const ALL: [Kernel; 7] = [
        Kernel::Alu,
        Kernel::Mem,
        Kernel::Call,
        Kernel::Indirect,
        Kernel::Syscall,
        Kernel::PageFault,
        Kernel::Bignum,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kernel::Alu => "alu",
            Kernel::Mem => "mem",
            Kernel::Call => "call",
            Kernel::Indirect => "indirect",
            Kernel::Syscall => "syscall",
            Kernel::PageFault => "pagefault",
            Kernel::Bignum => "bignum",
        }
    }

    /// Guest instructions the measured part retires at scale 1.0 (roughly).
    pub fn default_work(self) -> u64 {
        match self {
            Kernel::Alu => 400_000_000,
            Kernel::Mem | Kernel::Call | Kernel::Indirect => 200_000_000,
            Kernel::Bignum => 1_600_000_000,
            Kernel::Syscall => 50_000_000,
            Kernel::PageFault => 20_000_000,
        }
    }

    /// What one unit of the kernel's work is called, for rates (`calls`, `faults`).
    pub fn unit(self) -> &'static str {
        match self {
            Kernel::Alu => "iterations",
            Kernel::Mem => "elements",
            Kernel::Call => "calls",
            Kernel::Indirect => "dispatches",
            Kernel::Syscall => "syscalls",
            Kernel::PageFault => "faults",
            Kernel::Bignum => "limbs",
        }
    }
}

/// A built kernel and what the host expects of it.
#[derive(Debug, Clone)]
pub struct Built {
    pub kernel: Kernel,
    pub elf: Vec<u8>,
    /// Guest instructions retired between the begin and end markers (the measured
    /// loop and the handlers it enters; not the marker printing).
    pub instructions: u64,
    /// Units of work done ([`Kernel::unit`]).
    pub units: u64,
    /// The checksum the kernel must report.
    pub expected: u64,
}

/// Builds `k` sized for about `work` guest instructions.
pub fn build(k: Kernel, work: u64) -> Result<Built, String> {
    assemble(k, work).map_err(|e| format!("micro-kernel {}: {e}", k.name()))
}

fn assemble(k: Kernel, work: u64) -> Result<Built, IcedError> {
    let mut a = CodeAssembler::new(64)?;
    let mut l = Labels::new(&mut a);
    prologue(&mut a, &mut l)?;
    let begin = format!("{BEGIN}{}\n", k.name());
    let end = format!("{END}{}\n", k.name());
    let result = format!("{RESULT}{} ", k.name());
    let (s_begin, s_end, s_result, s_nl) = (
        a.create_label(),
        a.create_label(),
        a.create_label(),
        a.create_label(),
    );
    let mut fixups = Vec::new();
    let m = Mark { string: s_begin };
    let body = match k {
        Kernel::Alu => alu(&mut a, work, m)?,
        Kernel::Mem => mem(&mut a, work, m)?,
        Kernel::Call => call(&mut a, work, m)?,
        Kernel::Indirect => indirect(&mut a, work, m, &mut fixups)?,
        Kernel::Syscall => syscall(&mut a, work, m)?,
        Kernel::PageFault => pagefault(&mut a, work, m)?,
        Kernel::Bignum => bignum::bignum(&mut a, work, m)?,
    };
    // After the body (result in RAX): the end marker, the result, the exit.
    a.mov(rbx, rax)?;
    a.lea(rsi, ptr(s_end))?;
    a.int(VEC_PRINT)?;
    a.lea(rsi, ptr(s_result))?;
    a.int(VEC_PRINT)?;
    a.call(l.puthex)?;
    a.lea(rsi, ptr(s_nl))?;
    a.int(VEC_PRINT)?;
    a.int(VEC_EXIT)?;
    let mut spin = a.create_label();
    a.set_label(&mut spin)?;
    a.jmp(spin)?;
    handlers(&mut a, &mut l)?;
    for (mut label, s) in [
        (s_begin, begin.as_str()),
        (s_end, end.as_str()),
        (s_result, result.as_str()),
        (s_nl, "\n"),
        (l.unexpected_text, "VIREO-MICRO unexpected exception "),
        (l.space, " "),
    ] {
        a.set_label(&mut label)?;
        a.db(s.as_bytes())?;
        a.db(&[0])?;
    }
    let r = a.assemble_options(CODE64, BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS)?;
    let code64 = r.inner.code_buffer.clone();
    assert!(code64.len() <= CODE64_MAX, "micro-kernel code too long");
    let mut image = vec![0u8; (IMAGE_END - u64::from(IMAGE_ADDR)) as usize];
    let at = |a: u64| (a - u64::from(IMAGE_ADDR)) as usize;
    let code32 = entry32()?;
    image[..code32.len()].copy_from_slice(&code32);
    image[at(CODE64)..at(CODE64) + code64.len()].copy_from_slice(&code64);
    let mut put =
        |addr: u64, bytes: &[u8]| image[at(addr)..at(addr) + bytes.len()].copy_from_slice(bytes);
    // GDT: null, kernel code 64, kernel data, user code 32, user data, user code 64, TSS.
    let gdt: [u64; 6] = [
        0,
        0x00af_9a00_0000_ffff,
        0x00cf_9200_0000_ffff,
        0x00cf_fa00_0000_ffff,
        0x00cf_f200_0000_ffff,
        0x00af_fa00_0000_ffff,
    ];
    for (i, d) in gdt.iter().enumerate() {
        put(GDT + 8 * i as u64, &d.to_le_bytes());
    }
    let tss_limit = 0x67u64;
    let tss_low =
        tss_limit | ((TSS & 0xff_ffff) << 16) | (0x89 << 40) | (((TSS >> 24) & 0xff) << 56);
    put(GDT + u64::from(SEL_TSS), &tss_low.to_le_bytes());
    put(GDT + u64::from(SEL_TSS) + 8, &(TSS >> 32).to_le_bytes());
    let mut gdtr = (0x3fu16).to_le_bytes().to_vec();
    gdtr.extend_from_slice(&GDT.to_le_bytes());
    put(GDTR, &gdtr);
    let mut idtr = (0xfffu16).to_le_bytes().to_vec();
    idtr.extend_from_slice(&IDT.to_le_bytes());
    put(IDTR, &idtr);
    // TSS: RSP0, no I/O bitmap.
    put(TSS + 4, &KERNEL_STACK.to_le_bytes());
    put(TSS + 0x66, &0x68u16.to_le_bytes());
    // IDT: every exception "unexpected"; #PF; int 0x80 from ring 3.
    for (v, stub) in l.unexpected.iter().enumerate() {
        put(IDT + 16 * v as u64, &gate(r.label_ip(stub)?, 0));
    }
    put(IDT + 16 * 14, &gate(r.label_ip(&l.page_fault)?, 0));
    put(IDT + 16 * 0x80, &gate(r.label_ip(&l.unmap)?, 3));
    put(
        IDT + 16 * u64::from(VEC_PRINT),
        &gate(r.label_ip(&l.print)?, 3),
    );
    put(
        IDT + 16 * u64::from(VEC_EXIT),
        &gate(r.label_ip(&l.exit)?, 3),
    );
    // Page tables: the first GiB identity-mapped with 2 MiB user pages; the second
    // GiB's first 2 MiB through PT_FAULT.
    put(PML4, &(PDPT | 7).to_le_bytes());
    put(PDPT, &(PD_LOW | 7).to_le_bytes());
    put(PDPT + 8, &(PD_FAULT | 7).to_le_bytes());
    put(PD_FAULT, &(PT_FAULT | 7).to_le_bytes());
    for i in 0..512u64 {
        put(PD_LOW + 8 * i, &((i << 21) | 0x87).to_le_bytes());
    }
    for (slot, label) in fixups {
        put(OP_TABLE + 8 * slot, &r.label_ip(&label)?.to_le_bytes());
    }
    if k == Kernel::Indirect {
        let mut prog = program();
        prog.push(OP_END);
        put(BYTECODE, &prog);
    }
    Ok(Built {
        kernel: k,
        elf: elf_with_image(&image),
        instructions: body.instructions,
        units: body.units,
        expected: body.expected,
    })
}

/// A 64-bit interrupt gate to `handler`, callable from privilege `dpl`.
fn gate(handler: u64, dpl: u8) -> [u8; 16] {
    let mut g = [0u8; 16];
    g[0..2].copy_from_slice(&(handler as u16).to_le_bytes());
    g[2..4].copy_from_slice(&SEL_KCODE.to_le_bytes());
    g[5] = 0x8e | (dpl << 5);
    g[6..8].copy_from_slice(&((handler >> 16) as u16).to_le_bytes());
    g[8..12].copy_from_slice(&((handler >> 32) as u32).to_le_bytes());
    g
}

/// The 32-bit Multiboot entry: long mode on, then a far jump to [`CODE64`].
fn entry32() -> Result<Vec<u8>, IcedError> {
    let mut a = CodeAssembler::new(32)?;
    a.cli()?;
    a.lgdt(ptr(GDTR as u32))?;
    a.mov(eax, cr4)?;
    a.or(eax, 0x620)?; // PAE, OSFXSR, OSXMMEXCPT
    a.mov(cr4, eax)?;
    a.mov(eax, PML4 as u32)?;
    a.mov(cr3, eax)?;
    a.mov(ecx, 0xc000_0080u32)?;
    a.rdmsr()?;
    a.or(eax, 0x101)?; // LME, SCE
    a.wrmsr()?;
    a.mov(eax, cr0)?;
    a.or(eax, 0x8000_0001u32 as i32)?;
    a.mov(cr0, eax)?;
    a.jmp_far(SEL_KCODE, CODE64 as u32)?;
    a.assemble(u64::from(IMAGE_ADDR))
}

/// Labels shared by the kernel's pieces.
struct Labels {
    puts: CodeLabel,
    puthex: CodeLabel,
    /// One stub per exception vector 0-31.
    unexpected: Vec<CodeLabel>,
    unexpected_text: CodeLabel,
    space: CodeLabel,
    page_fault: CodeLabel,
    unmap: CodeLabel,
    syscall: CodeLabel,
    print: CodeLabel,
    exit: CodeLabel,
}

impl Labels {
    fn new(a: &mut CodeAssembler) -> Self {
        Labels {
            puts: a.create_label(),
            puthex: a.create_label(),
            unexpected: (0..32).map(|_| a.create_label()).collect(),
            unexpected_text: a.create_label(),
            space: a.create_label(),
            page_fault: a.create_label(),
            unmap: a.create_label(),
            syscall: a.create_label(),
            print: a.create_label(),
            exit: a.create_label(),
        }
    }
}

/// Ring 0 set-up, then ring 3 (interrupts off) at the code that follows.
fn prologue(a: &mut CodeAssembler, l: &mut Labels) -> Result<(), IcedError> {
    a.mov(eax, 0x10u32)?;
    a.mov(ds, ax)?;
    a.mov(es, ax)?;
    a.mov(ss, ax)?;
    a.mov(rsp, KERNEL_STACK)?;
    a.mov(ax, u32::from(SEL_TSS))?;
    a.ltr(ax)?;
    a.mov(rax, IDTR)?;
    a.lidt(ptr(rax))?;
    a.mov(al, 0xffu32)?;
    a.out(0x21, al)?;
    a.out(0xa1, al)?;
    // SYSCALL: kernel CS 0x08, SYSRET base 0x18 (user SS 0x20, CS 0x28); LSTAR.
    a.mov(ecx, 0xc000_0081u32)?;
    a.xor(eax, eax)?;
    a.mov(edx, 0x0018_0008u32)?;
    a.wrmsr()?;
    a.mov(ecx, 0xc000_0082u32)?;
    a.lea(rax, ptr(l.syscall))?;
    a.mov(rdx, rax)?;
    a.shr(rdx, 32)?;
    a.wrmsr()?;
    a.mov(ecx, 0xc000_0084u32)?;
    a.xor(eax, eax)?;
    a.xor(edx, edx)?;
    a.wrmsr()?;
    let mut user = a.create_label();
    a.push(SEL_UDATA as i32)?;
    a.mov(rax, USER_STACK)?;
    a.push(rax)?;
    a.push(0x2)?;
    a.push(SEL_UCODE as i32)?;
    a.lea(rax, ptr(user))?;
    a.push(rax)?;
    a.iretq()?;
    a.set_label(&mut user)?;
    Ok(())
}

/// The begin marker: each body prints it right before its measured part.
#[derive(Clone, Copy)]
struct Mark {
    string: CodeLabel,
}

impl Mark {
    fn emit(self, a: &mut CodeAssembler) -> Result<(), IcedError> {
        a.lea(rsi, ptr(self.string))?;
        a.int(VEC_PRINT)
    }
}

/// The serial routines and the ring-0 handlers.
fn handlers(a: &mut CodeAssembler, l: &mut Labels) -> Result<(), IcedError> {
    // puts: RSI -> COM1 until NUL, each byte once the transmitter is empty.
    let (mut wait, mut done) = (a.create_label(), a.create_label());
    a.set_label(&mut l.puts)?;
    a.mov(cl, byte_ptr(rsi))?;
    a.test(cl, cl)?;
    a.jz(done)?;
    a.mov(dx, 0x3fdu32)?;
    a.set_label(&mut wait)?;
    a.in_(al, dx)?;
    a.test(al, 0x20)?;
    a.jz(wait)?;
    a.mov(al, cl)?;
    a.mov(dx, 0x3f8u32)?;
    a.out(dx, al)?;
    a.inc(rsi)?;
    a.jmp(l.puts)?;
    a.set_label(&mut done)?;
    a.ret()?;
    // puthex: RBX as 16 hex digits (through a 17-byte buffer on the stack).
    let (mut digit, mut low) = (a.create_label(), a.create_label());
    a.set_label(&mut l.puthex)?;
    a.sub(rsp, 32)?;
    a.mov(byte_ptr(rsp + 16), 0)?;
    a.mov(edi, 15u32)?;
    a.set_label(&mut digit)?;
    a.mov(eax, ebx)?;
    a.and(eax, 15)?;
    a.add(eax, i32::from(b'0'))?;
    a.cmp(eax, i32::from(b'9'))?;
    a.jbe(low)?;
    a.add(eax, i32::from(b'a' - b'9' - 1))?;
    a.set_label(&mut low)?;
    a.mov(byte_ptr(rsp + rdi), al)?;
    a.shr(rbx, 4)?;
    a.dec(edi)?;
    a.jns(digit)?;
    a.mov(rsi, rsp)?;
    a.int(VEC_PRINT)?;
    a.add(rsp, 32)?;
    a.ret()?;
    // int VEC_PRINT: the string at RSI (port I/O stays in ring 0).
    a.set_label(&mut l.print)?;
    a.push(rax)?;
    a.push(rcx)?;
    a.push(rdx)?;
    a.call(l.puts)?;
    a.pop(rdx)?;
    a.pop(rcx)?;
    a.pop(rax)?;
    a.iretq()?;
    // int VEC_EXIT: the end.
    let mut halt = a.create_label();
    a.set_label(&mut l.exit)?;
    a.mov(al, u32::from(EXIT_VALUE))?;
    a.out(EXIT_PORT as u32, al)?;
    a.set_label(&mut halt)?;
    a.hlt()?;
    a.jmp(halt)?;
    // Any unexpected exception: `VIREO-MICRO unexpected <vector> <[rsp]> <[rsp+8]>`
    // (RIP, or the error code then RIP), then stop.
    let (mut spin, mut common) = (a.create_label(), a.create_label());
    for (v, stub) in l.unexpected.iter_mut().enumerate() {
        a.set_label(stub)?;
        a.mov(ebx, v as u32)?;
        a.jmp(common)?;
    }
    a.set_label(&mut common)?;
    a.lea(rsi, ptr(l.unexpected_text))?;
    a.call(l.puts)?;
    a.call(l.puthex)?;
    for at in [0, 8] {
        a.lea(rsi, ptr(l.space))?;
        a.call(l.puts)?;
        a.mov(rbx, qword_ptr(rsp + at))?;
        a.call(l.puthex)?;
    }
    a.mov(al, u32::from(EXIT_UNEXPECTED))?;
    a.out(EXIT_PORT as u32, al)?;
    a.set_label(&mut spin)?;
    a.hlt()?;
    a.jmp(spin)?;
    // #PF (14 instructions): map the faulting page of the fault region, count it.
    a.set_label(&mut l.page_fault)?;
    a.push(rax)?;
    a.push(rdx)?;
    a.mov(rax, cr2)?;
    a.sub(rax, FAULT_VA as i32)?;
    a.shr(rax, 12)?;
    a.mov(rdx, rax)?;
    a.shl(rax, 12)?;
    a.add(rax, (FAULT_PA | 7) as i32)?;
    a.mov(qword_ptr(rdx * 8 + PT_FAULT as i32), rax)?;
    a.inc(r15)?;
    a.pop(rdx)?;
    a.pop(rax)?;
    a.add(rsp, 8)?;
    a.iretq()?;
    // int 0x80: unmap the fault region, flush the TLB (see `UNMAP_INSNS`).
    let mut clear = a.create_label();
    a.set_label(&mut l.unmap)?;
    a.push(rax)?;
    a.push(rcx)?;
    a.mov(eax, PT_FAULT as u32)?;
    a.mov(ecx, FAULT_PAGES)?;
    a.set_label(&mut clear)?;
    a.mov(qword_ptr(rax), 0)?;
    a.add(rax, 8)?;
    a.dec(ecx)?;
    a.jnz(clear)?;
    a.mov(rax, cr3)?;
    a.mov(cr3, rax)?;
    a.pop(rcx)?;
    a.pop(rax)?;
    a.iretq()?;
    // SYSCALL (2 instructions): count it, return.
    a.set_label(&mut l.syscall)?;
    a.inc(r15)?;
    a.sysretq()
}

const PF_HANDLER_INSNS: u64 = 14;
const UNMAP_INSNS: u64 = 9 + 4 * FAULT_PAGES as u64;
const SYSCALL_HANDLER_INSNS: u64 = 2;

/// The measured part's size and outcome.
struct Body {
    instructions: u64,
    units: u64,
    expected: u64,
}

/// `n` loop iterations for `work` instructions at `per` each, at least 1.
fn iterations(work: u64, per: u64) -> u32 {
    (work / per).clamp(1, u64::from(u32::MAX)) as u32
}

fn alu(a: &mut CodeAssembler, work: u64, m: Mark) -> Result<Body, IcedError> {
    let n = iterations(work, 11);
    m.emit(a)?;
    let mut top = a.create_label();
    a.mov(r12d, n)?;
    a.mov(eax, 1u32)?;
    a.mov(edx, 0x1234_5678u32)?;
    a.xor(ebx, ebx)?;
    a.set_label(&mut top)?;
    a.add(eax, edx)?;
    a.imul_3(edx, edx, 0x9e37_79b1u32 as i32)?;
    a.xor(ebx, eax)?;
    a.rol(ebx, 5)?;
    a.lea(edx, ptr(rdx + rbx * 2 + 7))?;
    a.sub(eax, ebx)?;
    a.mov(esi, eax)?;
    a.shr(esi, 7)?;
    a.xor(edx, esi)?;
    a.dec(r12d)?;
    a.jnz(top)?;
    a.shl(rbx, 32)?;
    a.or(rax, rbx)?;
    a.xor(rax, rdx)?;
    let (mut x, mut y, mut z) = (1u32, 0x1234_5678u32, 0u32);
    for _ in 0..n {
        x = x.wrapping_add(y);
        y = y.wrapping_mul(0x9e37_79b1);
        z ^= x;
        z = z.rotate_left(5);
        y = y.wrapping_add(z.wrapping_mul(2)).wrapping_add(7);
        x = x.wrapping_sub(z);
        y ^= x >> 7;
    }
    Ok(Body {
        instructions: 4 + 11 * u64::from(n) + 3,
        units: u64::from(n),
        expected: ((u64::from(z) << 32) | u64::from(x)) ^ u64::from(y),
    })
}

/// Passes over the array: `sum += a[i]; a[i] = sum` (the array starts as `a[i] = i`,
/// written before the begin marker).
fn mem(a: &mut CodeAssembler, work: u64, m: Mark) -> Result<Body, IcedError> {
    let per_pass = 3 + 5 * u64::from(ARRAY_LEN);
    let passes = iterations(work, per_pass);
    let (mut init, mut pass, mut inner) = (a.create_label(), a.create_label(), a.create_label());
    a.mov(rsi, ARRAY)?;
    a.xor(ecx, ecx)?;
    a.set_label(&mut init)?;
    a.mov(qword_ptr(rsi + rcx * 8), rcx)?;
    a.inc(ecx)?;
    a.cmp(ecx, ARRAY_LEN as i32)?;
    a.jb(init)?;
    m.emit(a)?;
    a.mov(rsi, ARRAY)?;
    a.xor(eax, eax)?;
    a.mov(r12d, passes)?;
    a.set_label(&mut pass)?;
    a.xor(ecx, ecx)?;
    a.set_label(&mut inner)?;
    a.add(rax, qword_ptr(rsi + rcx * 8))?;
    a.mov(qword_ptr(rsi + rcx * 8), rax)?;
    a.inc(ecx)?;
    a.cmp(ecx, ARRAY_LEN as i32)?;
    a.jb(inner)?;
    a.dec(r12d)?;
    a.jnz(pass)?;
    let mut v: Vec<u64> = (0..u64::from(ARRAY_LEN)).collect();
    let mut sum = 0u64;
    for _ in 0..passes {
        for x in v.iter_mut() {
            sum = sum.wrapping_add(*x);
            *x = sum;
        }
    }
    Ok(Body {
        instructions: 3 + u64::from(passes) * per_pass,
        units: u64::from(passes) * u64::from(ARRAY_LEN),
        expected: sum,
    })
}

/// Instructions of `fib(n)` as emitted by [`call`] (4 for the base case, 13 plus the
/// two recursive calls otherwise) and its number of calls.
fn fib_cost(n: u32) -> (u64, u64) {
    // Iteratively: cost(n) = 13 + cost(n-1) + cost(n-2), cost(0) = cost(1) = 4.
    let (mut c0, mut c1, mut n0, mut n1) = (4u64, 4u64, 1u64, 1u64);
    if n < 2 {
        return (4, 1);
    }
    for _ in 2..=n {
        let (c, k) = (13 + c1 + c0, 1 + n1 + n0);
        (c0, c1, n0, n1) = (c1, c, n1, k);
    }
    (c1, n1)
}

fn fib(n: u32) -> u64 {
    let (mut a, mut b) = (0u64, 1u64);
    for _ in 0..n {
        (a, b) = (b, a + b);
    }
    a
}

/// Repeated recursive `fib(FIB_N)`; the result is the sum of the values.
fn call(a: &mut CodeAssembler, work: u64, m: Mark) -> Result<Body, IcedError> {
    let (cost, calls) = fib_cost(FIB_N);
    let reps = iterations(work, cost + 5);
    let (mut over, mut f, mut base, mut rep) = (
        a.create_label(),
        a.create_label(),
        a.create_label(),
        a.create_label(),
    );
    a.jmp(over)?;
    a.set_label(&mut f)?;
    a.cmp(edi, 2)?;
    a.jb(base)?;
    a.push(rbx)?;
    a.push(rdi)?;
    a.dec(edi)?;
    a.call(f)?;
    a.mov(ebx, eax)?;
    a.pop(rdi)?;
    a.sub(edi, 2)?;
    a.call(f)?;
    a.add(eax, ebx)?;
    a.pop(rbx)?;
    a.ret()?;
    a.set_label(&mut base)?;
    a.mov(eax, edi)?;
    a.ret()?;
    a.set_label(&mut over)?;
    m.emit(a)?;
    a.xor(ebp, ebp)?;
    a.mov(r12d, reps)?;
    a.set_label(&mut rep)?;
    a.mov(edi, FIB_N)?;
    a.call(f)?;
    a.add(rbp, rax)?;
    a.dec(r12d)?;
    a.jnz(rep)?;
    a.mov(rax, rbp)?;
    Ok(Body {
        instructions: 2 + u64::from(reps) * (cost + 5) + 1,
        units: u64::from(reps) * calls,
        expected: fib(FIB_N) * u64::from(reps),
    })
}

const OPS: u8 = 8;
const OP_END: u8 = OPS;

/// The indirect kernel's bytecode: [`PROGRAM_LEN`] opcodes below [`OPS`] from a
/// fixed linear congruential sequence.
fn program() -> Vec<u8> {
    let mut x = 0x2545_f491_u32;
    (0..PROGRAM_LEN)
        .map(|_| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            ((x >> 16) % u32::from(OPS)) as u8
        })
        .collect()
}

/// What opcode `op` does to the accumulator (as the handlers emitted by [`indirect`]).
fn apply(op: u8, v: u64) -> u64 {
    match op {
        0 => v.wrapping_add(0x11),
        1 => v ^ 0x55,
        2 => v.rotate_left(3),
        3 => v.wrapping_sub(7),
        4 => v.wrapping_mul(3),
        5 => !v,
        6 => v.rotate_right(5),
        _ => v.wrapping_mul(2).wrapping_add(1),
    }
}

/// A threaded interpreter of [`program`], run `passes` times: each handler applies its
/// operation to RDX and dispatches the next opcode through the table (`jmp [table +
/// op*8]`); the end opcode restarts the program or leaves.
fn indirect(
    a: &mut CodeAssembler,
    work: u64,
    m: Mark,
    fixups: &mut Vec<(u64, CodeLabel)>,
) -> Result<Body, IcedError> {
    let per_pass = 4 * PROGRAM_LEN as u64 + 6;
    let passes = iterations(work, per_pass);
    let dispatch = |a: &mut CodeAssembler| -> Result<(), IcedError> {
        a.movzx(eax, byte_ptr(rsi))?;
        a.inc(rsi)?;
        a.jmp(qword_ptr(rbx + rax * 8))
    };
    m.emit(a)?;
    a.mov(ebx, OP_TABLE as u32)?;
    a.mov(r14d, BYTECODE as u32)?;
    a.mov(rsi, r14)?;
    a.mov(r13d, passes)?;
    a.xor(edx, edx)?;
    dispatch(a)?;
    for op in 0..=OP_END {
        let mut l = a.create_label();
        a.set_label(&mut l)?;
        fixups.push((u64::from(op), l));
        match op {
            0 => a.add(rdx, 0x11)?,
            1 => a.xor(rdx, 0x55)?,
            2 => a.rol(rdx, 3)?,
            3 => a.sub(rdx, 7)?,
            4 => a.imul_3(rdx, rdx, 3)?,
            5 => a.not(rdx)?,
            6 => a.ror(rdx, 5)?,
            7 => a.lea(rdx, ptr(rdx + rdx + 1))?,
            _ => {
                let mut done = a.create_label();
                a.dec(r13d)?;
                a.jz(done)?;
                a.mov(rsi, r14)?;
                dispatch(a)?;
                a.set_label(&mut done)?;
                a.mov(rax, rdx)?;
                break;
            }
        }
        dispatch(a)?;
    }
    let prog = program();
    let mut v = 0u64;
    for _ in 0..passes {
        for &op in &prog {
            v = apply(op, v);
        }
    }
    let p = u64::from(passes);
    Ok(Body {
        instructions: 5 + 3 + p * per_pass - 4 + 1,
        units: p * (PROGRAM_LEN as u64 + 1),
        expected: v,
    })
}

/// `syscall` in a loop; the handler counts in R15.
fn syscall(a: &mut CodeAssembler, work: u64, m: Mark) -> Result<Body, IcedError> {
    let per = 3 + SYSCALL_HANDLER_INSNS;
    let n = iterations(work, per);
    let mut top = a.create_label();
    m.emit(a)?;
    a.xor(r15d, r15d)?;
    a.mov(r12d, n)?;
    a.set_label(&mut top)?;
    a.syscall()?;
    a.dec(r12d)?;
    a.jnz(top)?;
    a.mov(rax, r15)?;
    Ok(Body {
        instructions: 2 + u64::from(n) * per + 1,
        units: u64::from(n),
        expected: u64::from(n),
    })
}

/// Passes of one store per page of the fault region (each faults once, the handler
/// maps the page and counts in R15), then `int 0x80` to unmap them all.
fn pagefault(a: &mut CodeAssembler, work: u64, m: Mark) -> Result<Body, IcedError> {
    let pages = u64::from(FAULT_PAGES);
    let per_pass = 2 + pages * (4 + PF_HANDLER_INSNS) + 1 + UNMAP_INSNS + 2;
    let passes = iterations(work, per_pass);
    let (mut pass, mut page) = (a.create_label(), a.create_label());
    m.emit(a)?;
    a.xor(r15d, r15d)?;
    a.mov(r12d, passes)?;
    a.set_label(&mut pass)?;
    a.mov(edi, FAULT_VA)?;
    a.mov(ecx, FAULT_PAGES)?;
    a.set_label(&mut page)?;
    a.mov(dword_ptr(rdi), edi)?;
    a.add(edi, 4096)?;
    a.dec(ecx)?;
    a.jnz(page)?;
    a.int(0x80)?;
    a.dec(r12d)?;
    a.jnz(pass)?;
    a.mov(rax, r15)?;
    let p = u64::from(passes);
    Ok(Body {
        instructions: 2 + p * per_pass + 1,
        units: p * pages,
        expected: p * pages,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fib_costs_follow_the_recursion() {
        assert_eq!(fib_cost(0), (4, 1));
        assert_eq!(fib_cost(2), (13 + 4 + 4, 3));
        assert_eq!(fib_cost(3), (13 + 21 + 4, 5));
        assert_eq!(fib(20), 6765);
    }

    #[test]
    fn every_kernel_assembles_within_its_layout() {
        for k in Kernel::ALL {
            let b = build(k, 10_000).unwrap();
            assert!(b.elf.len() > (IMAGE_END - u64::from(IMAGE_ADDR)) as usize);
            assert!(b.instructions >= 5_000, "{k:?}: {}", b.instructions);
            assert!(b.units > 0);
        }
    }
}
