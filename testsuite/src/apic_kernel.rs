//! A Multiboot test kernel for the interrupt controllers and timers, assembled in
//! process with iced-x86: it enables the local APIC, takes LAPIC timer interrupts in
//! one-shot, periodic and (when CPUID offers it) TSC-deadline mode, routes the PIT's
//! IRQ 0 through IOAPIC pin 2 (the MADT's override), then the HPET's legacy timer 0
//! through the same pin, edge-triggered and periodic, then level-triggered (the
//! handler clears the HPET status before its EOI: exactly one interrupt per match,
//! which exercises remote IRR and the EOI broadcast). Every interrupt ends with an
//! EOI to the local APIC.
//!
//! It reports on COM1 and exits through isa-debug-exit with a bit per passed check
//! ([`pass`]); an unexpected interrupt vector exits with [`UNEXPECTED`]. The same
//! kernel runs under TCG (vireo's APIC, IOAPIC and HPET) and KVM (the in-kernel
//! LAPIC/IOAPIC with vireo's HPET and PIT), which must report the same.

use crate::multiboot_kernel::{elf_with_image, EXIT_PORT, IMAGE_ADDR};
use iced_x86::code_asm::*;
use iced_x86::BlockEncoderOptions;

const APIC: u32 = 0xfee0_0000;
const IOAPIC: u32 = 0xfec0_0000;
const HPET: u32 = 0xfed0_0000;
/// Variables: LAPIC timer ticks, IOAPIC ticks, results, HPET-level mode.
const VARS: u32 = 0x8_0000;
const TIMER_TICKS: u32 = VARS;
const IO_TICKS: u32 = VARS + 4;
const RESULT: u32 = VARS + 8;
const HPET_LEVEL: u32 = VARS + 12;
const IDTR: u32 = VARS + 0x20;
/// Diagnostics of the first level-triggered interrupt (3 dwords).
const DIAG: u32 = VARS + 0x40;
const IDT: u32 = 0x8_1000;
const STACK: u32 = 0x9_0000;
const V_TIMER: u32 = 0x30;
const V_IO: u32 = 0x31;

/// Result bits.
pub mod pass {
    pub const ONE_SHOT: u32 = 1 << 0;
    pub const PERIODIC: u32 = 1 << 1;
    pub const TSC_DEADLINE: u32 = 1 << 2;
    pub const IOAPIC_PIT: u32 = 1 << 3;
    pub const HPET_PERIODIC: u32 = 1 << 4;
    pub const HPET_LEVEL: u32 = 1 << 5;
    /// The kernel reached its end.
    pub const DONE: u32 = 1 << 6;
    pub const ALL: u32 = 0x7f;
}

/// Exit value after an unexpected interrupt.
pub const UNEXPECTED: u32 = 0x7e;

/// The exit status vireo reports for exit value `v`.
pub fn status(v: u32) -> i32 {
    ((v << 1) | 1) as i32
}

/// Absolute addresses of labels, from the previous assembly pass (32-bit code cannot
/// take a label's address as an immediate; the layout does not depend on these
/// values, so two passes agree).
#[derive(Default, Clone)]
struct Addrs {
    labels: Vec<u32>,
}

struct K {
    a: CodeAssembler,
    putc: CodeLabel,
    puts: CodeLabel,
    puthex: CodeLabel,
    /// Strings emitted after the code: their slot and bytes.
    strings: Vec<(usize, Vec<u8>)>,
    /// Labels whose address is taken ([`K::place`] updates them when emitted).
    slots: Vec<CodeLabel>,
    prev: Addrs,
}

impl K {
    /// A label whose address the code may take.
    fn slot(&mut self) -> usize {
        let l = self.a.create_label();
        self.slots.push(l);
        self.slots.len() - 1
    }

    /// Emits slot `i`'s label here.
    fn place(&mut self, i: usize) -> Result<(), IcedError> {
        let mut l = self.slots[i];
        self.a.set_label(&mut l)?;
        self.slots[i] = l;
        Ok(())
    }

    /// Moves the address of slot `i` into `r`.
    fn mov_addr(&mut self, r: AsmRegister32, i: usize) -> Result<(), IcedError> {
        let v = self.prev.labels.get(i).copied().unwrap_or(0);
        self.a.mov(r, v)
    }

    /// Prints `s` (a string emitted after the code).
    fn print(&mut self, s: &str) -> Result<(), IcedError> {
        let i = self.slot();
        let mut bytes = s.as_bytes().to_vec();
        bytes.push(0);
        self.strings.push((i, bytes));
        self.mov_addr(esi, i)?;
        self.a.call(self.puts)
    }

    /// Prints EAX as 8 hex digits.
    fn hex(&mut self) -> Result<(), IcedError> {
        self.a.call(self.puthex)
    }

    /// Waits (halting with interrupts on) until dword `addr` >= ECX; interrupts off
    /// again afterwards.
    fn wait_at_least(&mut self, addr: u32) -> Result<(), IcedError> {
        let a = &mut self.a;
        let mut top = a.create_label();
        let mut done = a.create_label();
        a.set_label(&mut top)?;
        a.cli()?;
        a.cmp(dword_ptr(addr), ecx)?;
        a.jae(done)?;
        // STI's shadow covers HLT: no interrupt is lost between the test and HLT.
        a.sti()?;
        a.hlt()?;
        a.jmp(top)?;
        a.set_label(&mut done)?;
        Ok(())
    }

    /// ORs `bit` into the result if ZF is set; prints "ok" or "FAILED" with the tick
    /// counts.
    fn check(&mut self, bit: u32) -> Result<(), IcedError> {
        self.check_with(bit, &[])
    }

    /// [`K::check`], printing the dwords at `extra` (name, address) after a failure.
    fn check_with(&mut self, bit: u32, extra: &[(&str, u32)]) -> Result<(), IcedError> {
        let mut bad = self.a.create_label();
        let mut end = self.a.create_label();
        self.a.jnz(bad)?;
        self.a.or(dword_ptr(RESULT), bit)?;
        self.print(" ok\n")?;
        self.a.jmp(end)?;
        self.a.set_label(&mut bad)?;
        self.print(" FAILED (ticks ")?;
        self.a.mov(eax, dword_ptr(TIMER_TICKS))?;
        self.hex()?;
        self.print(" ")?;
        self.a.mov(eax, dword_ptr(IO_TICKS))?;
        self.hex()?;
        for (name, addr) in extra {
            self.print(&format!(" {name} "))?;
            self.a.mov(eax, dword_ptr(*addr))?;
            self.hex()?;
        }
        self.print(")\n")?;
        self.a.set_label(&mut end)?;
        Ok(())
    }

    /// Lets interrupts already requested arrive (a loop with interrupts on: every
    /// iteration is an instruction boundary where they are taken), then zeroes both
    /// tick counters.
    fn drain(&mut self) -> Result<(), IcedError> {
        let a = &mut self.a;
        let mut spin = a.create_label();
        a.mov(ebx, 2000u32)?;
        a.sti()?;
        a.set_label(&mut spin)?;
        a.pause()?;
        a.dec(ebx)?;
        a.jnz(spin)?;
        a.cli()?;
        a.mov(dword_ptr(TIMER_TICKS), 0u32)?;
        a.mov(dword_ptr(IO_TICKS), 0u32)
    }

    /// Writes IOAPIC redirection entry `pin` (low half `low`, destination APIC 0).
    fn redir(&mut self, pin: u32, low: u32) -> Result<(), IcedError> {
        let a = &mut self.a;
        a.mov(dword_ptr(IOAPIC), 0x11 + 2 * pin)?;
        a.mov(dword_ptr(IOAPIC + 0x10), 0u32)?;
        a.mov(dword_ptr(IOAPIC), 0x10 + 2 * pin)?;
        a.mov(dword_ptr(IOAPIC + 0x10), low)
    }

    /// Spins until the HPET main counter (low half) passed EAX + `ticks`.
    fn hpet_spin(&mut self, ticks: u32) -> Result<(), IcedError> {
        let a = &mut self.a;
        let mut spin = a.create_label();
        a.mov(ebx, dword_ptr(HPET + 0xf0))?;
        a.set_label(&mut spin)?;
        a.mov(eax, dword_ptr(HPET + 0xf0))?;
        a.sub(eax, ebx)?;
        a.cmp(eax, ticks)?;
        a.jb(spin)
    }
}

fn assemble() -> Result<Vec<u8>, IcedError> {
    let (_, addrs) = assemble_pass(Addrs::default())?;
    let (code, again) = assemble_pass(addrs.clone())?;
    assert_eq!(
        addrs.labels, again.labels,
        "the layout moved between passes"
    );
    Ok(code)
}

fn assemble_pass(prev: Addrs) -> Result<(Vec<u8>, Addrs), IcedError> {
    let mut a = CodeAssembler::new(32)?;
    let putc = a.create_label();
    let puts = a.create_label();
    let puthex = a.create_label();
    let mut k = K {
        a,
        putc,
        puts,
        puthex,
        strings: Vec::new(),
        slots: Vec::new(),
        prev,
    };
    let mut set_gate = k.a.create_label();
    let timer_isr = k.slot();
    let io_isr = k.slot();
    let spurious_isr = k.slot();
    let unexpected_isr = k.slot();
    let mut no_deadline = k.a.create_label();
    let mut after_deadline = k.a.create_label();
    let mut hang = k.a.create_label();

    // --- Set-up: stack, variables, PIC masked, IDT.
    k.a.mov(esp, STACK)?;
    for v in [TIMER_TICKS, IO_TICKS, RESULT, HPET_LEVEL] {
        k.a.mov(dword_ptr(v), 0u32)?;
    }
    k.a.mov(al, 0xffu32)?;
    k.a.out(0x21, al)?;
    k.a.out(0xa1, al)?;
    // Every vector: "unexpected"; then the three handlers.
    let mut fill = k.a.create_label();
    k.a.xor(ecx, ecx)?;
    k.a.set_label(&mut fill)?;
    k.mov_addr(eax, unexpected_isr)?;
    k.a.call(set_gate)?;
    k.a.inc(ecx)?;
    k.a.cmp(ecx, 256)?;
    k.a.jb(fill)?;
    for (v, l) in [(V_TIMER, timer_isr), (V_IO, io_isr), (0xff, spurious_isr)] {
        k.a.mov(ecx, v)?;
        k.mov_addr(eax, l)?;
        k.a.call(set_gate)?;
    }
    k.a.mov(word_ptr(IDTR), 0x7ffu32)?;
    k.a.mov(dword_ptr(IDTR + 2), IDT)?;
    k.a.lidt(ptr(IDTR))?;

    // --- CPUID and the APIC.
    k.a.mov(eax, 1u32)?;
    k.a.cpuid()?;
    k.a.mov(edi, ecx)?; // keep leaf 1 ECX
    k.print("apic: cpuid apic=")?;
    k.a.mov(eax, edx)?;
    k.a.shr(eax, 9)?;
    k.a.and(eax, 1)?;
    k.hex()?;
    k.print(" x2apic=")?;
    k.a.mov(eax, edi)?;
    k.a.shr(eax, 21)?;
    k.a.and(eax, 1)?;
    k.hex()?;
    k.print(" tsc-deadline=")?;
    k.a.mov(eax, edi)?;
    k.a.shr(eax, 24)?;
    k.a.and(eax, 1)?;
    k.hex()?;
    k.print("\napic: base ")?;
    k.a.mov(ecx, 0x1bu32)?;
    k.a.rdmsr()?;
    k.a.and(eax, 0xffff_fe00u32)?; // without the BSP flag
    k.hex()?;
    k.print(" id ")?;
    k.a.mov(eax, dword_ptr(APIC + 0x20))?;
    k.hex()?;
    k.print(" version ")?;
    k.a.mov(eax, dword_ptr(APIC + 0x30))?;
    k.hex()?;
    k.print("\n")?;
    // Software enable, spurious vector 0xFF; LINT0 masked (the IOAPIC routes IRQs).
    k.a.mov(dword_ptr(APIC + 0xf0), 0x1ffu32)?;
    k.a.mov(dword_ptr(APIC + 0x350), 0x1_0700u32)?;
    k.a.mov(dword_ptr(APIC + 0x80), 0u32)?;

    // --- LAPIC timer, one-shot: divide by 16, 100000 counts (1.6 ms at 1 GHz).
    k.print("apic: timer one-shot")?;
    k.a.mov(dword_ptr(APIC + 0x3e0), 3u32)?;
    k.a.mov(dword_ptr(APIC + 0x320), V_TIMER)?;
    k.a.mov(dword_ptr(APIC + 0x380), 100_000u32)?;
    k.a.mov(ecx, 1u32)?;
    k.wait_at_least(TIMER_TICKS)?;
    // Expired: the current count stays 0, one interrupt only.
    k.a.mov(eax, dword_ptr(APIC + 0x390))?;
    k.a.mov(ebx, 100u32)?;
    let mut spin = k.a.create_label();
    k.a.set_label(&mut spin)?;
    k.a.pause()?;
    k.a.dec(ebx)?;
    k.a.jnz(spin)?;
    k.a.or(eax, dword_ptr(APIC + 0x390))?;
    k.a.mov(ebx, dword_ptr(TIMER_TICKS))?;
    k.a.dec(ebx)?;
    k.a.or(eax, ebx)?;
    k.a.test(eax, eax)?;
    k.check(pass::ONE_SHOT)?;

    // --- Periodic: three more interrupts, then masked and stopped.
    k.print("apic: timer periodic")?;
    k.a.mov(dword_ptr(APIC + 0x320), 0x2_0000 | V_TIMER)?;
    k.a.mov(dword_ptr(APIC + 0x380), 100_000u32)?;
    k.a.mov(ecx, 4u32)?;
    k.wait_at_least(TIMER_TICKS)?;
    k.a.mov(dword_ptr(APIC + 0x320), 0x1_0000 | V_TIMER)?;
    k.a.mov(dword_ptr(APIC + 0x380), 0u32)?;
    k.a.cmp(dword_ptr(TIMER_TICKS), 4)?;
    k.a.setae(al)?;
    k.a.cmp(al, 1)?;
    k.check(pass::PERIODIC)?;
    k.drain()?;

    // --- TSC deadline (if offered): 1 ms of TSC ahead (at least at a 1 GHz TSC).
    k.a.bt(edi, 24)?;
    k.a.jnc(no_deadline)?;
    k.print("apic: timer tsc-deadline")?;
    k.a.mov(dword_ptr(APIC + 0x320), 0x4_0000 | V_TIMER)?;
    k.a.rdtsc()?;
    k.a.add(eax, 1_000_000u32)?;
    k.a.adc(edx, 0u32)?;
    k.a.mov(ecx, 0x6e0u32)?;
    k.a.wrmsr()?;
    k.a.mov(ecx, 1u32)?;
    k.wait_at_least(TIMER_TICKS)?;
    // Once it fired the MSR reads 0.
    k.a.mov(ecx, 0x6e0u32)?;
    k.a.rdmsr()?;
    k.a.or(eax, edx)?;
    k.a.mov(ebx, dword_ptr(TIMER_TICKS))?;
    k.a.sub(ebx, 1)?;
    k.a.or(eax, ebx)?;
    k.a.test(eax, eax)?;
    k.check(pass::TSC_DEADLINE)?;
    k.a.mov(dword_ptr(APIC + 0x320), 0x1_0000 | V_TIMER)?;
    k.a.jmp(after_deadline)?;
    k.a.set_label(&mut no_deadline)?;
    k.print("apic: timer tsc-deadline not offered\n")?;
    k.a.set_label(&mut after_deadline)?;

    // --- IOAPIC: version, then the PIT (1 kHz, mode 2) through pin 2, edge.
    k.print("ioapic: version ")?;
    k.a.mov(dword_ptr(IOAPIC), 1u32)?;
    k.a.mov(eax, dword_ptr(IOAPIC + 0x10))?;
    k.hex()?;
    k.print("\nioapic: pit irq 0 on pin 2")?;
    k.a.mov(al, 0x34u32)?;
    k.a.out(0x43, al)?;
    k.a.mov(al, (1193 & 0xff) as u32)?;
    k.a.out(0x40, al)?;
    k.a.mov(al, (1193 >> 8) as u32)?;
    k.a.out(0x40, al)?;
    k.drain()?;
    k.redir(2, V_IO)?;
    k.a.mov(ecx, 3u32)?;
    k.wait_at_least(IO_TICKS)?;
    k.redir(2, 0x1_0000 | V_IO)?;
    k.a.cmp(dword_ptr(IO_TICKS), 3)?;
    k.a.setae(al)?;
    k.a.cmp(al, 1)?;
    k.check(pass::IOAPIC_PIT)?;

    // --- HPET: capabilities, then legacy timer 0, periodic, 1 ms, edge on pin 2.
    k.print("hpet: period ")?;
    k.a.mov(eax, dword_ptr(HPET + 4))?;
    k.hex()?;
    k.print(" id ")?;
    k.a.mov(eax, dword_ptr(HPET))?;
    k.hex()?;
    k.print("\nhpet: legacy timer 0 periodic on pin 2")?;
    k.drain()?;
    k.a.mov(dword_ptr(HPET + 0x10), 0u32)?;
    k.a.mov(dword_ptr(HPET + 0xf0), 0u32)?;
    k.a.mov(dword_ptr(HPET + 0xf4), 0u32)?;
    // Interrupt enable, periodic, value set, 32-bit mode.
    k.a.mov(dword_ptr(HPET + 0x100), 0x14cu32)?;
    k.a.mov(dword_ptr(HPET + 0x108), 100_000u32)?;
    k.a.mov(dword_ptr(HPET + 0x108), 100_000u32)?;
    k.a.mov(dword_ptr(HPET + 0x10), 3u32)?; // enable, legacy replacement
    k.redir(2, V_IO)?;
    k.a.mov(ecx, 3u32)?;
    k.wait_at_least(IO_TICKS)?;
    k.a.mov(dword_ptr(HPET + 0x100), 0u32)?;
    k.a.cmp(dword_ptr(IO_TICKS), 3)?;
    k.a.setae(al)?;
    k.a.cmp(al, 1)?;
    k.check(pass::HPET_PERIODIC)?;

    // --- HPET level-triggered one-shot on a level-triggered pin: one interrupt.
    k.print("hpet: level-triggered one-shot")?;
    k.drain()?;
    k.a.mov(dword_ptr(HPET_LEVEL), 1u32)?;
    k.redir(2, 0x8000 | V_IO)?;
    // Interrupt enable, level, 32-bit mode; match 1 ms ahead.
    k.a.mov(dword_ptr(HPET + 0x100), 0x106u32)?;
    k.a.mov(eax, dword_ptr(HPET + 0xf0))?;
    k.a.add(eax, 100_000u32)?;
    k.a.mov(dword_ptr(HPET + 0x108), eax)?;
    k.a.mov(ecx, 1u32)?;
    k.wait_at_least(IO_TICKS)?;
    // 5 ms later, still one: the status was cleared before the EOI.
    k.a.sti()?;
    k.hpet_spin(500_000)?;
    k.a.cli()?;
    k.a.cmp(dword_ptr(IO_TICKS), 1)?;
    k.check_with(
        pass::HPET_LEVEL,
        &[
            ("isr", DIAG),
            ("irr-after-eoi", DIAG + 4),
            ("entry-after-eoi", DIAG + 8),
        ],
    )?;
    k.redir(2, 0x1_0000 | V_IO)?;
    k.a.mov(dword_ptr(HPET + 0x10), 0u32)?;

    // --- Done: report and exit.
    k.a.or(dword_ptr(RESULT), pass::DONE)?;
    k.print("apic: result ")?;
    k.a.mov(eax, dword_ptr(RESULT))?;
    k.hex()?;
    k.print("\n")?;
    k.a.mov(eax, dword_ptr(RESULT))?;
    k.a.mov(dx, EXIT_PORT as u32)?;
    k.a.out(dx, eax)?;
    k.a.set_label(&mut hang)?;
    k.a.cli()?;
    k.a.hlt()?;
    k.a.jmp(hang)?;

    // --- Interrupt handlers.
    k.place(timer_isr)?;
    k.a.inc(dword_ptr(TIMER_TICKS))?;
    k.a.mov(dword_ptr(APIC + 0xb0), 0u32)?;
    k.a.iretd()?;

    k.place(io_isr)?;
    let mut eoi = k.a.create_label();
    k.a.inc(dword_ptr(IO_TICKS))?;
    k.a.cmp(dword_ptr(HPET_LEVEL), 0)?;
    k.a.je(eoi)?;
    k.a.mov(dword_ptr(HPET + 0x20), 1u32)?; // clear timer 0's status: line low
                                            // Diagnostics of the first level-triggered interrupt: the in-service bits of
                                            // vectors 20h-3Fh, then after the EOI the request bits and pin 2's entry.
    k.a.cmp(dword_ptr(IO_TICKS), 1)?;
    k.a.jne(eoi)?;
    k.a.push(eax)?;
    k.a.mov(eax, dword_ptr(APIC + 0x110))?;
    k.a.mov(dword_ptr(DIAG), eax)?;
    k.a.mov(dword_ptr(APIC + 0xb0), 0u32)?;
    k.a.mov(eax, dword_ptr(APIC + 0x210))?;
    k.a.mov(dword_ptr(DIAG + 4), eax)?;
    k.a.mov(dword_ptr(IOAPIC), 0x14u32)?;
    k.a.mov(eax, dword_ptr(IOAPIC + 0x10))?;
    k.a.mov(dword_ptr(DIAG + 8), eax)?;
    k.a.pop(eax)?;
    k.a.iretd()?;
    k.a.set_label(&mut eoi)?;
    k.a.mov(dword_ptr(APIC + 0xb0), 0u32)?;
    k.a.iretd()?;

    k.place(spurious_isr)?;
    k.a.iretd()?;

    k.place(unexpected_isr)?;
    k.print("apic: unexpected interrupt\n")?;
    k.a.mov(eax, UNEXPECTED)?;
    k.a.mov(dx, EXIT_PORT as u32)?;
    k.a.out(dx, eax)?;
    k.a.jmp(hang)?;

    // set_gate: ECX = vector, EAX = handler (32-bit interrupt gate, selector 0x08).
    k.a.set_label(&mut set_gate)?;
    k.a.mov(edx, eax)?;
    k.a.and(eax, 0xffffu32)?;
    k.a.or(eax, 0x8_0000u32)?;
    k.a.mov(dword_ptr(ecx * 8 + IDT), eax)?;
    k.a.and(edx, 0xffff_0000u32)?;
    k.a.or(edx, 0x8e00u32)?;
    k.a.mov(dword_ptr(ecx * 8 + (IDT + 4)), edx)?;
    k.a.ret()?;

    // puts, putc and puthex on COM1.
    crate::kernel_asm::serial_routines(&mut k.a, k.putc, k.puts, k.puthex)?;

    // The strings.
    for (i, bytes) in std::mem::take(&mut k.strings) {
        k.place(i)?;
        k.a.db(&bytes)?;
    }
    let r = k.a.assemble_options(
        u64::from(IMAGE_ADDR),
        BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS,
    )?;
    let labels = k
        .slots
        .iter()
        .map(|l| r.label_ip(l).map(|ip| ip as u32))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((r.inner.code_buffer, Addrs { labels }))
}

/// The kernel as an ELF32 Multiboot executable.
pub fn build_elf() -> Vec<u8> {
    elf_with_image(&assemble().expect("the APIC test kernel assembles"))
}
