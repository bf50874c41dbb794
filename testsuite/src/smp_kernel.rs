//! A Multiboot test kernel for several CPUs, assembled in process with iced-x86: the
//! BSP starts every AP with the Intel "universal startup algorithm" (INIT, SIPI, SIPI
//! broadcast to all CPUs but itself), each AP goes from real mode through a trampoline
//! into 32-bit protected mode, and the CPUs then work together:
//!
//! - **ALIVE**: every AP checks in (its APIC ID into a table and a mask, then
//!   `lock inc` on a counter); exactly N - 1 must, N being QEMU's fw_cfg `FW_CFG_NB_CPUS`
//!   (key 5, ports 0x510/0x511, on both of vireo's engines and under QEMU);
//! - **ATOMIC**: after a common start signal, every CPU (the BSP too) increments one
//!   shared counter [`COUNTER_INCREMENTS`] times with `lock inc`; the total must be
//!   exactly N × that;
//! - **JOBS**: every CPU runs a CPU-bound job that depends on its APIC ID ([`job`]: an
//!   xorshift32 walk) and stores the result in its slot; the BSP recomputes each one;
//! - **IPI**: every AP then sends a fixed IPI to the BSP, vector 0x40 + its APIC ID
//!   (one vector per AP, so that IPIs arriving together cannot merge in one IRR bit);
//!   the BSP's handlers record them in a mask that must equal the APs';
//! - **PING**: the BSP sends a fixed IPI (vector 0x50) to each AP by physical APIC ID;
//!   each AP, waiting in `sti; hlt`, answers from its handler with vector 0x60 + its
//!   APIC ID;
//! - **DONE**: the kernel reached its end.
//!
//! Delays (10 ms after INIT, 200 µs between the SIPIs) and the bounded waits measure
//! time with the PIT's channel 2 (gate and OUT through port 0x61), so they last the
//! same on every engine; a wait stops as soon as its condition holds.
//!
//! Only the BSP prints (COM1): the CPU counts that fw_cfg, the ACPI MADT and the MP
//! table report, each CPU's APIC ID and job result, one line per check. It exits through
//! isa-debug-exit with a bit per passed check ([`pass`]); an unexpected interrupt or
//! exception on any CPU exits with [`UNEXPECTED`].
//!
//! Memory (below 1 MiB, besides the image at 1 MiB): trampoline at [`TRAMPOLINE`]
//! (SIPI vector 0x08: 16-bit code, then the GDT both the BSP and the APs load),
//! AP stacks 0x70000-0x80000 (4 KiB per APIC ID, IDs below [`MAX_APIC_IDS`]),
//! variables at 0x80000, the IDT at 0x81000, the BSP's stack below 0x90000.

use crate::multiboot_kernel::{elf_with_image, EXIT_PORT, IMAGE_ADDR};
use iced_x86::code_asm::*;
use iced_x86::BlockEncoderOptions;

const APIC: u32 = 0xfee0_0000;
const APIC_ID: u32 = APIC + 0x20;
const APIC_EOI: u32 = APIC + 0xb0;
const APIC_SVR: u32 = APIC + 0xf0;
const APIC_ICR_LO: u32 = APIC + 0x300;
const APIC_ICR_HI: u32 = APIC + 0x310;
const APIC_LVT_LINT0: u32 = APIC + 0x350;
/// ICR: delivery status (send pending).
const ICR_PENDING: u32 = 1 << 12;
/// ICR: level assert (fixed IPIs and INIT).
const ICR_ASSERT: u32 = 1 << 14;
/// ICR: destination shorthand "all excluding self".
const ICR_ALL_BUT_SELF: u32 = 3 << 18;
const ICR_INIT: u32 = 5 << 8;
const ICR_SIPI: u32 = 6 << 8;

/// Where the real-mode trampoline is copied: APs start at `SIPI_VECTOR << 12`.
pub const TRAMPOLINE: u32 = 0x8000;
/// The SIPI vector (the trampoline's page).
pub const SIPI_VECTOR: u32 = TRAMPOLINE >> 12;
/// Offsets in the trampoline: its GDT (null, flat code 0x08, flat data 0x10) and the
/// GDT's pseudo-descriptor.
const TRAMP_GDT: usize = 0x40;
const TRAMP_GDTR: usize = 0x58;
const TRAMP_LEN: usize = 0x60;
const CODE_SEL: u32 = 0x08;
const DATA_SEL: u32 = 0x10;

/// Variables.
const VARS: u32 = 0x8_0000;
/// APs that checked in (each counts itself last, once its ID and mask bit are in:
/// the BSP reads them as soon as the count is complete).
const ALIVE: u32 = VARS;
/// Start signal for the counter and the jobs.
const GO: u32 = VARS + 4;
/// Bit per AP APIC ID that checked in.
const AP_MASK: u32 = VARS + 8;
/// Bit per AP whose "done" IPI reached the BSP.
const DONE_MASK: u32 = VARS + 12;
/// Bit per AP whose answer to the ping reached the BSP.
const PONG_MASK: u32 = VARS + 16;
/// The shared counter.
const COUNTER: u32 = VARS + 20;
const RESULT: u32 = VARS + 24;
const NCPUS: u32 = VARS + 28;
const BSP_ID: u32 = VARS + 32;
/// APs that arrived (their index in `IDS`).
const ARRIVED: u32 = VARS + 36;
const IDTR: u32 = VARS + 0x30;
/// APIC IDs in check-in order (16 dwords).
const IDS: u32 = VARS + 0x40;
/// Job results by APIC ID (16 dwords).
const RESULTS: u32 = VARS + 0x80;
const VARS_LEN: u32 = 0xc0;
const IDT: u32 = 0x8_1000;
const STACK: u32 = 0x9_0000;
/// The AP with APIC ID i has its stack below `AP_STACKS + (i + 1) * 0x1000`.
const AP_STACKS: u32 = 0x7_0000;

/// APs with an APIC ID at or above this park at once (they have no slot).
pub const MAX_APIC_IDS: u32 = 16;
/// Iterations of each CPU's job.
pub const JOB_ITERATIONS: u32 = 20_000;
/// `lock inc`s of the shared counter per CPU.
pub const COUNTER_INCREMENTS: u32 = 10_000;

/// "Done" IPI vector of the AP with APIC ID i: `V_DONE + i`.
const V_DONE: u32 = 0x40;
/// The BSP's ping to an AP.
const V_PING: u32 = 0x50;
/// An AP's answer to the ping: `V_PONG + APIC ID`.
const V_PONG: u32 = 0x60;
const V_SPURIOUS: u32 = 0xff;

/// PIT ticks (1.193182 MHz) in 1 ms, 10 ms and 200 µs.
const PIT_1MS: u32 = 1193;
const PIT_10MS: u32 = 11932;
const PIT_200US: u32 = 239;
/// Bounds of the waits, in milliseconds. (The waits end as soon as what they wait
/// for happens; the bounds only matter when it does not. 5 s for the APs to check in
/// was too short for QEMU's vCPU threads on a loaded two-core host: one of eight CI
/// runs saw an AP alive only after it.)
const ALIVE_WAIT_MS: u32 = 30_000;
const IPI_WAIT_MS: u32 = 30_000;

/// Result bits.
pub mod pass {
    /// Exactly N - 1 APs checked in.
    pub const ALIVE: u32 = 1 << 0;
    /// Every AP's IPI reached the BSP.
    pub const IPI: u32 = 1 << 1;
    /// Every CPU's job result is right.
    pub const JOBS: u32 = 1 << 2;
    /// The shared counter is exactly N × [`super::COUNTER_INCREMENTS`].
    pub const ATOMIC: u32 = 1 << 3;
    /// Every AP answered the BSP's IPI.
    pub const PING: u32 = 1 << 4;
    /// The kernel reached its end.
    pub const DONE: u32 = 1 << 5;
    pub const ALL: u32 = 0x3f;
}

/// Exit value after an unexpected interrupt or exception.
pub const UNEXPECTED: u32 = 0x7e;

/// The exit status vireo (and QEMU) report for exit value `v`.
pub fn status(v: u32) -> i32 {
    ((v << 1) | 1) as i32
}

/// The exit status of a run with `cpus` CPUs (APIC IDs 0..cpus): every check passes
/// with 2 to [`MAX_APIC_IDS`] CPUs; with one CPU no AP can check in, and the other
/// checks pass trivially. The kernel has no slots for more CPUs.
pub fn expected_status(cpus: u32) -> i32 {
    assert!(
        (1..=MAX_APIC_IDS).contains(&cpus),
        "the SMP kernel runs 1 to {MAX_APIC_IDS} CPUs, not {cpus}"
    );
    if cpus == 1 {
        status(pass::ALL & !pass::ALIVE)
    } else {
        status(pass::ALL)
    }
}

/// The job of the CPU with APIC ID `apic_id`, as the kernel computes it: an xorshift32
/// walk of [`JOB_ITERATIONS`] steps from `(apic_id + 1) * 0x9E3779B9`, with a rotating
/// sum of the states.
pub fn job(apic_id: u32) -> u32 {
    let mut x = apic_id.wrapping_add(1).wrapping_mul(0x9e37_79b9);
    let mut acc = 0u32;
    for _ in 0..JOB_ITERATIONS {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        acc = acc.wrapping_add(x).rotate_left(1);
    }
    x ^ acc
}

/// The serial line the kernel prints for the job of `apic_id` when it checks out.
pub fn job_line(apic_id: u32) -> String {
    format!("smp: cpu {apic_id:08x} result {:08x} ok", job(apic_id))
}

/// The 16-bit trampoline: real mode at `SIPI_VECTOR << 12`, load the GDT, set CR0.PE,
/// far jump to `entry32` (flat 32-bit code). Then the GDT and its pseudo-descriptor.
fn trampoline(entry32: u32) -> Result<Vec<u8>, IcedError> {
    let mut a = CodeAssembler::new(16)?;
    a.cli()?;
    a.xor(ax, ax)?;
    a.mov(ds, ax)?;
    a.lgdt(ptr(TRAMPOLINE + TRAMP_GDTR as u32))?;
    a.mov(eax, cr0)?;
    a.or(eax, 1)?;
    a.mov(cr0, eax)?;
    // jmp dword CODE_SEL:entry32 (operand-size prefix, JMP ptr16:32).
    let mut far = vec![0x66, 0xea];
    far.extend_from_slice(&entry32.to_le_bytes());
    far.extend_from_slice(&(CODE_SEL as u16).to_le_bytes());
    a.db(&far)?;
    let mut t = a.assemble(0)?;
    assert!(t.len() <= TRAMP_GDT, "trampoline code too long");
    t.resize(TRAMP_GDT, 0);
    for d in [0u64, 0x00cf_9a00_0000_ffff, 0x00cf_9200_0000_ffff] {
        t.extend_from_slice(&d.to_le_bytes());
    }
    debug_assert_eq!(t.len(), TRAMP_GDTR);
    t.extend_from_slice(&(3 * 8 - 1u16).to_le_bytes());
    t.extend_from_slice(&(TRAMPOLINE + TRAMP_GDT as u32).to_le_bytes());
    t.resize(TRAMP_LEN, 0);
    Ok(t)
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
    pit_delay: CodeLabel,
    wait_eq: CodeLabel,
    wait_icr: CodeLabel,
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

    /// The address of slot `i` (from the previous pass).
    fn addr(&self, i: usize) -> u32 {
        self.prev.labels.get(i).copied().unwrap_or(0)
    }

    /// Moves the address of slot `i` into `r`.
    fn mov_addr(&mut self, r: AsmRegister32, i: usize) -> Result<(), IcedError> {
        let v = self.addr(i);
        self.a.mov(r, v)
    }

    /// Prints `s` (a string emitted after the code); clobbers EAX and ESI.
    fn print(&mut self, s: &str) -> Result<(), IcedError> {
        let i = self.slot();
        let mut bytes = s.as_bytes().to_vec();
        bytes.push(0);
        self.strings.push((i, bytes));
        self.mov_addr(esi, i)?;
        self.a.call(self.puts)
    }

    /// Prints `s` then the dword at `addr` in hex.
    fn print_var(&mut self, s: &str, addr: u32) -> Result<(), IcedError> {
        self.print(s)?;
        self.a.mov(eax, dword_ptr(addr))?;
        self.a.call(self.puthex)
    }

    /// ORs `bit` into the result if ZF is set; ends the line with "ok" or "FAILED".
    fn check(&mut self, bit: u32) -> Result<(), IcedError> {
        let mut bad = self.a.create_label();
        let mut end = self.a.create_label();
        self.a.jnz(bad)?;
        self.a.or(dword_ptr(RESULT), bit)?;
        self.print(" ok\n")?;
        self.a.jmp(end)?;
        self.a.set_label(&mut bad)?;
        self.print(" FAILED\n")?;
        self.a.set_label(&mut end)?;
        Ok(())
    }

    /// Waits at most `ms` milliseconds for dword `addr` to equal EDX (ZF set if it
    /// does); clobbers ECX, ESI, EDI.
    fn wait_for(&mut self, addr: u32, ms: u32) -> Result<(), IcedError> {
        self.a.mov(esi, addr)?;
        self.a.mov(edi, ms)?;
        self.a.call(self.wait_eq)
    }

    /// Sends an IPI once the ICR is idle: ICR high from EAX (the destination APIC ID
    /// in bits 31:24), then ICR low `lo`.
    fn send_ipi(&mut self, lo: u32) -> Result<(), IcedError> {
        self.a.call(self.wait_icr)?;
        self.a.mov(dword_ptr(APIC_ICR_HI), eax)?;
        self.a.mov(dword_ptr(APIC_ICR_LO), lo)
    }

    /// Loads the flat data selector into every data segment register.
    fn flat_data(&mut self) -> Result<(), IcedError> {
        self.a.mov(ax, DATA_SEL)?;
        for s in [ds, es, ss, fs, gs] {
            self.a.mov(s, ax)?;
        }
        Ok(())
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
    let pit_delay = a.create_label();
    let wait_eq = a.create_label();
    let wait_icr = a.create_label();
    let mut k = K {
        a,
        putc,
        puts,
        puthex,
        pit_delay,
        wait_eq,
        wait_icr,
        strings: Vec::new(),
        slots: Vec::new(),
        prev,
    };
    let mut set_gate = k.a.create_label();
    let mut job_l = k.a.create_label();
    let mut madt_count = k.a.create_label();
    let mut mp_count = k.a.create_label();
    let mut mp_scan = k.a.create_label();
    let mut hang = k.a.create_label();
    let tramp_blob = k.slot();
    let reload = k.slot();
    let ap_entry = k.slot();
    let ping_isr = k.slot();
    let spurious_isr = k.slot();
    let unexpected_isr = k.slot();
    let done_isrs: Vec<usize> = (0..MAX_APIC_IDS).map(|_| k.slot()).collect();
    let pong_isrs: Vec<usize> = (0..MAX_APIC_IDS).map(|_| k.slot()).collect();

    // === The BSP.
    // Stack; the trampoline (with the GDT) to its page; our own GDT and segments.
    k.a.cli()?;
    k.a.cld()?;
    k.a.mov(esp, STACK)?;
    k.mov_addr(esi, tramp_blob)?;
    k.a.mov(edi, TRAMPOLINE)?;
    k.a.mov(ecx, TRAMP_LEN as u32)?;
    k.a.rep().movsb()?;
    k.a.lgdt(ptr(TRAMPOLINE + TRAMP_GDTR as u32))?;
    k.a.push(CODE_SEL)?;
    k.mov_addr(eax, reload)?;
    k.a.push(eax)?;
    k.a.retf()?;
    k.place(reload)?;
    k.flat_data()?;
    k.a.mov(esp, STACK)?;
    // Variables to zero.
    k.a.mov(edi, VARS)?;
    k.a.xor(eax, eax)?;
    k.a.mov(ecx, VARS_LEN / 4)?;
    k.a.rep().stosd()?;
    // Both PICs masked: only APIC interrupts.
    k.a.mov(al, 0xffu32)?;
    k.a.out(0x21, al)?;
    k.a.out(0xa1, al)?;
    // IDT: every vector "unexpected", then the handlers.
    let mut fill = k.a.create_label();
    k.a.xor(ecx, ecx)?;
    k.a.set_label(&mut fill)?;
    k.mov_addr(eax, unexpected_isr)?;
    k.a.call(set_gate)?;
    k.a.inc(ecx)?;
    k.a.cmp(ecx, 256)?;
    k.a.jb(fill)?;
    let mut gates = vec![(V_PING, ping_isr), (V_SPURIOUS, spurious_isr)];
    for i in 0..MAX_APIC_IDS {
        gates.push((V_DONE + i, done_isrs[i as usize]));
        gates.push((V_PONG + i, pong_isrs[i as usize]));
    }
    for (v, l) in gates {
        k.a.mov(ecx, v)?;
        k.mov_addr(eax, l)?;
        k.a.call(set_gate)?;
    }
    k.a.mov(word_ptr(IDTR), 0x7ffu32)?;
    k.a.mov(dword_ptr(IDTR + 2), IDT)?;
    k.a.lidt(ptr(IDTR))?;

    // --- How many CPUs: fw_cfg FW_CFG_NB_CPUS (16 bits), then what the tables say.
    k.a.mov(dx, 0x510u32)?;
    k.a.mov(ax, 0x05u32)?;
    k.a.out(dx, ax)?;
    k.a.mov(dx, 0x511u32)?;
    k.a.in_(al, dx)?;
    k.a.movzx(ecx, al)?;
    k.a.in_(al, dx)?;
    k.a.movzx(eax, al)?;
    k.a.shl(eax, 8)?;
    k.a.or(eax, ecx)?;
    k.a.mov(dword_ptr(NCPUS), eax)?;
    k.print_var("smp: fw_cfg cpus ", NCPUS)?;
    for (what, routine) in [("madt", madt_count), ("mp table", mp_count)] {
        let mut none = k.a.create_label();
        let mut next = k.a.create_label();
        k.a.call(routine)?;
        k.a.cmp(eax, -1)?;
        k.a.je(none)?;
        k.a.push(eax)?;
        k.print(&format!("\nsmp: {what} cpus "))?;
        k.a.pop(eax)?;
        k.a.call(k.puthex)?;
        k.a.jmp(next)?;
        k.a.set_label(&mut none)?;
        k.print(&format!("\nsmp: {what} none"))?;
        k.a.set_label(&mut next)?;
    }

    // --- The BSP's local APIC: software enabled, spurious vector 0xFF, LINT0 masked.
    k.a.mov(dword_ptr(APIC_SVR), 0x100 | V_SPURIOUS)?;
    k.a.mov(dword_ptr(APIC_LVT_LINT0), 0x1_0700u32)?;
    k.a.mov(eax, dword_ptr(APIC_ID))?;
    k.a.shr(eax, 24)?;
    k.a.mov(dword_ptr(BSP_ID), eax)?;
    k.print_var("\nsmp: bsp apic id ", BSP_ID)?;
    k.print("\n")?;

    // --- INIT, 10 ms, SIPI, 200 us, SIPI, to all CPUs but this one; then wait until
    // N - 1 APs checked in (or `ALIVE_WAIT_MS`).
    let mut uni = k.a.create_label();
    k.a.cmp(dword_ptr(NCPUS), 2)?;
    k.a.jb(uni)?;
    k.a.xor(eax, eax)?;
    k.send_ipi(ICR_ALL_BUT_SELF | ICR_ASSERT | ICR_INIT)?;
    k.a.mov(ecx, PIT_10MS)?;
    k.a.call(k.pit_delay)?;
    k.a.xor(eax, eax)?;
    k.send_ipi(ICR_ALL_BUT_SELF | ICR_ASSERT | ICR_SIPI | SIPI_VECTOR)?;
    k.a.mov(ecx, PIT_200US)?;
    k.a.call(k.pit_delay)?;
    k.a.xor(eax, eax)?;
    k.send_ipi(ICR_ALL_BUT_SELF | ICR_ASSERT | ICR_SIPI | SIPI_VECTOR)?;
    k.a.call(k.wait_icr)?;
    k.a.set_label(&mut uni)?;
    k.a.mov(edx, dword_ptr(NCPUS))?;
    k.a.dec(edx)?;
    k.wait_for(ALIVE, ALIVE_WAIT_MS)?;
    // Everyone starts counting together.
    k.a.mov(dword_ptr(GO), 1u32)?;
    // ALIVE: exactly N - 1 APs (N >= 2), N - 1 distinct IDs, none the BSP's.
    k.print_var("smp: aps alive ", ALIVE)?;
    k.print_var(" mask ", AP_MASK)?;
    let mut alive_bad = k.a.create_label();
    let mut alive_end = k.a.create_label();
    k.a.mov(edx, dword_ptr(NCPUS))?;
    k.a.dec(edx)?;
    k.a.jz(alive_bad)?; // no AP to start: not an SMP run
    k.a.cmp(dword_ptr(ALIVE), edx)?;
    k.a.jne(alive_bad)?;
    // Bits in the mask (no POPCNT: not every CPU model has it).
    let mut bits = k.a.create_label();
    let mut counted = k.a.create_label();
    k.a.mov(ecx, dword_ptr(AP_MASK))?;
    k.a.xor(eax, eax)?;
    k.a.set_label(&mut bits)?;
    k.a.test(ecx, ecx)?;
    k.a.jz(counted)?;
    k.a.lea(esi, ecx - 1)?;
    k.a.and(ecx, esi)?;
    k.a.inc(eax)?;
    k.a.jmp(bits)?;
    k.a.set_label(&mut counted)?;
    k.a.cmp(eax, edx)?;
    k.a.jne(alive_bad)?;
    k.a.mov(ecx, dword_ptr(BSP_ID))?;
    k.a.bt(dword_ptr(AP_MASK), ecx)?;
    k.a.jc(alive_bad)?;
    k.a.cmp(eax, eax)?; // ZF: ok
    k.a.jmp(alive_end)?;
    k.a.set_label(&mut alive_bad)?;
    k.a.or(eax, 1)?; // ZF clear
    k.a.set_label(&mut alive_end)?;
    k.check(pass::ALIVE)?;

    // --- The BSP's share: the counter, then its own job.
    let mut count = k.a.create_label();
    k.a.mov(ecx, COUNTER_INCREMENTS)?;
    k.a.set_label(&mut count)?;
    k.a.lock().inc(dword_ptr(COUNTER))?;
    k.a.dec(ecx)?;
    k.a.jnz(count)?;
    k.a.mov(ebx, dword_ptr(BSP_ID))?;
    k.a.and(ebx, MAX_APIC_IDS - 1)?;
    k.a.call(job_l)?;
    k.a.mov(dword_ptr(ebx * 4 + RESULTS), eax)?;

    // --- IPI: every AP's "done" IPI (sent after its counting and its job).
    k.a.mov(edx, dword_ptr(AP_MASK))?;
    k.a.sti()?;
    k.wait_for(DONE_MASK, IPI_WAIT_MS)?;
    k.a.cli()?;
    k.print_var("smp: done ipis ", DONE_MASK)?;
    k.a.mov(eax, dword_ptr(DONE_MASK))?;
    k.a.cmp(eax, dword_ptr(AP_MASK))?;
    k.check(pass::IPI)?;

    // --- ATOMIC: N * COUNTER_INCREMENTS.
    k.print_var("smp: counter ", COUNTER)?;
    k.a.imul_3(eax, dword_ptr(NCPUS), COUNTER_INCREMENTS as i32)?;
    k.a.cmp(eax, dword_ptr(COUNTER))?;
    k.check(pass::ATOMIC)?;

    // --- JOBS: recompute every CPU's job (APs and the BSP).
    let mut next_cpu = k.a.create_label();
    let mut each_cpu = k.a.create_label();
    let mut job_ok = k.a.create_label();
    k.a.xor(ebp, ebp)?; // failures
    k.a.mov(edi, dword_ptr(AP_MASK))?;
    k.a.mov(ecx, dword_ptr(BSP_ID))?;
    k.a.and(ecx, MAX_APIC_IDS - 1)?;
    k.a.bts(edi, ecx)?;
    k.a.xor(ebx, ebx)?;
    k.a.set_label(&mut each_cpu)?;
    k.a.bt(edi, ebx)?;
    k.a.jnc(next_cpu)?;
    k.print("smp: cpu ")?;
    k.a.mov(eax, ebx)?;
    k.a.call(k.puthex)?;
    k.print(" result ")?;
    k.a.mov(eax, dword_ptr(ebx * 4 + RESULTS))?;
    k.a.call(k.puthex)?;
    k.a.call(job_l)?;
    k.a.cmp(eax, dword_ptr(ebx * 4 + RESULTS))?;
    k.a.je(job_ok)?;
    k.a.inc(ebp)?;
    k.print(" FAILED\n")?;
    k.a.jmp(next_cpu)?;
    k.a.set_label(&mut job_ok)?;
    k.print(" ok\n")?;
    k.a.set_label(&mut next_cpu)?;
    k.a.inc(ebx)?;
    k.a.cmp(ebx, MAX_APIC_IDS)?;
    k.a.jb(each_cpu)?;
    k.print("smp: jobs")?;
    k.a.test(ebp, ebp)?;
    k.check(pass::JOBS)?;

    // --- PING: an IPI to each AP by physical APIC ID; each answers.
    let mut next_ap = k.a.create_label();
    let mut each_ap = k.a.create_label();
    k.a.xor(ebx, ebx)?;
    k.a.set_label(&mut each_ap)?;
    k.a.bt(dword_ptr(AP_MASK), ebx)?;
    k.a.jnc(next_ap)?;
    k.a.mov(eax, ebx)?;
    k.a.shl(eax, 24)?;
    k.send_ipi(ICR_ASSERT | V_PING)?;
    k.a.set_label(&mut next_ap)?;
    k.a.inc(ebx)?;
    k.a.cmp(ebx, MAX_APIC_IDS)?;
    k.a.jb(each_ap)?;
    k.a.mov(edx, dword_ptr(AP_MASK))?;
    k.a.sti()?;
    k.wait_for(PONG_MASK, IPI_WAIT_MS)?;
    k.a.cli()?;
    k.print_var("smp: ping answers ", PONG_MASK)?;
    k.a.mov(eax, dword_ptr(PONG_MASK))?;
    k.a.cmp(eax, dword_ptr(AP_MASK))?;
    k.check(pass::PING)?;

    // --- Done: report and exit.
    k.a.or(dword_ptr(RESULT), pass::DONE)?;
    k.print_var("smp: result ", RESULT)?;
    k.print("\n")?;
    k.a.mov(eax, dword_ptr(RESULT))?;
    k.a.mov(dx, EXIT_PORT as u32)?;
    k.a.out(dx, eax)?;
    k.a.set_label(&mut hang)?;
    k.a.cli()?;
    k.a.hlt()?;
    k.a.jmp(hang)?;

    // === An AP, from the trampoline: flat segments, the shared IDT, its APIC ID.
    let mut park = k.a.create_label();
    k.place(ap_entry)?;
    k.flat_data()?;
    k.a.lidt(ptr(IDTR))?;
    k.a.mov(ebx, dword_ptr(APIC_ID))?;
    k.a.shr(ebx, 24)?;
    k.a.cmp(ebx, MAX_APIC_IDS)?;
    k.a.jae(park)?;
    k.a.mov(esp, ebx)?;
    k.a.shl(esp, 12)?;
    k.a.add(esp, AP_STACKS + 0x1000)?;
    k.a.mov(dword_ptr(APIC_SVR), 0x100 | V_SPURIOUS)?;
    // Check in: arrival index, APIC ID, mask bit, then the count the BSP waits for
    // (counted first, an AP was once seen in the count but not yet in the mask under
    // QEMU's vCPU threads).
    let mut no_slot = k.a.create_label();
    k.a.mov(eax, 1u32)?;
    k.a.lock().xadd(dword_ptr(ARRIVED), eax)?;
    k.a.cmp(eax, MAX_APIC_IDS)?;
    k.a.jae(no_slot)?;
    k.a.mov(dword_ptr(eax * 4 + IDS), ebx)?;
    k.a.set_label(&mut no_slot)?;
    k.a.lock().bts(dword_ptr(AP_MASK), ebx)?;
    k.a.lock().inc(dword_ptr(ALIVE))?;
    // Wait for the start signal, count, run the job.
    let mut wait_go = k.a.create_label();
    k.a.set_label(&mut wait_go)?;
    k.a.pause()?;
    k.a.cmp(dword_ptr(GO), 0)?;
    k.a.je(wait_go)?;
    let mut ap_count = k.a.create_label();
    k.a.mov(ecx, COUNTER_INCREMENTS)?;
    k.a.set_label(&mut ap_count)?;
    k.a.lock().inc(dword_ptr(COUNTER))?;
    k.a.dec(ecx)?;
    k.a.jnz(ap_count)?;
    k.a.call(job_l)?;
    k.a.mov(dword_ptr(ebx * 4 + RESULTS), eax)?;
    // "Done" IPI to the BSP, vector V_DONE + APIC ID; then wait for the ping.
    k.a.mov(eax, dword_ptr(BSP_ID))?;
    k.a.shl(eax, 24)?;
    k.a.call(k.wait_icr)?;
    k.a.mov(dword_ptr(APIC_ICR_HI), eax)?;
    k.a.lea(eax, ebx + (ICR_ASSERT | V_DONE) as i32)?;
    k.a.mov(dword_ptr(APIC_ICR_LO), eax)?;
    let mut idle = k.a.create_label();
    k.a.set_label(&mut idle)?;
    k.a.sti()?;
    k.a.hlt()?;
    k.a.jmp(idle)?;
    k.a.set_label(&mut park)?;
    k.a.cli()?;
    k.a.hlt()?;
    k.a.jmp(park)?;

    // === Interrupt handlers.
    // AP: the ping; answer with V_PONG + APIC ID.
    k.place(ping_isr)?;
    k.a.push(eax)?;
    k.a.push(ebx)?;
    k.a.mov(ebx, dword_ptr(APIC_ID))?;
    k.a.shr(ebx, 24)?;
    k.a.mov(eax, dword_ptr(BSP_ID))?;
    k.a.shl(eax, 24)?;
    k.a.call(k.wait_icr)?;
    k.a.mov(dword_ptr(APIC_ICR_HI), eax)?;
    k.a.lea(eax, ebx + (ICR_ASSERT | V_PONG) as i32)?;
    k.a.mov(dword_ptr(APIC_ICR_LO), eax)?;
    k.a.mov(dword_ptr(APIC_EOI), 0u32)?;
    k.a.pop(ebx)?;
    k.a.pop(eax)?;
    k.a.iretd()?;
    // BSP: one handler per AP for its "done" IPI and its answer.
    for (isrs, mask) in [(&done_isrs, DONE_MASK), (&pong_isrs, PONG_MASK)] {
        for (i, &l) in isrs.iter().enumerate() {
            k.place(l)?;
            k.a.lock().or(dword_ptr(mask), 1i32 << i)?;
            k.a.mov(dword_ptr(APIC_EOI), 0u32)?;
            k.a.iretd()?;
        }
    }
    k.place(spurious_isr)?;
    k.a.iretd()?;
    k.place(unexpected_isr)?;
    k.print("smp: unexpected interrupt or exception on apic id ")?;
    k.a.mov(eax, dword_ptr(APIC_ID))?;
    k.a.shr(eax, 24)?;
    k.a.call(k.puthex)?;
    k.print("\n")?;
    k.a.mov(eax, UNEXPECTED)?;
    k.a.mov(dx, EXIT_PORT as u32)?;
    k.a.out(dx, eax)?;
    k.a.jmp(hang)?;

    // === Subroutines.
    // set_gate: ECX = vector, EAX = handler (32-bit interrupt gate, selector 0x08).
    k.a.set_label(&mut set_gate)?;
    k.a.mov(edx, eax)?;
    k.a.and(eax, 0xffffu32)?;
    k.a.or(eax, CODE_SEL << 16)?;
    k.a.mov(dword_ptr(ecx * 8 + IDT), eax)?;
    k.a.and(edx, 0xffff_0000u32)?;
    k.a.or(edx, 0x8e00u32)?;
    k.a.mov(dword_ptr(ecx * 8 + (IDT + 4)), edx)?;
    k.a.ret()?;

    // job: EBX = APIC ID -> EAX (see `job`); clobbers ECX, EDX, ESI.
    let mut step = k.a.create_label();
    k.a.set_label(&mut job_l)?;
    k.a.lea(eax, ebx + 1)?;
    k.a.imul_3(eax, eax, 0x9e37_79b9u32)?;
    k.a.xor(edx, edx)?;
    k.a.mov(ecx, JOB_ITERATIONS)?;
    k.a.set_label(&mut step)?;
    for (shl, n) in [(true, 13), (false, 17), (true, 5)] {
        k.a.mov(esi, eax)?;
        if shl {
            k.a.shl(esi, n)?;
        } else {
            k.a.shr(esi, n)?;
        }
        k.a.xor(eax, esi)?;
    }
    k.a.add(edx, eax)?;
    k.a.rol(edx, 1)?;
    k.a.dec(ecx)?;
    k.a.jnz(step)?;
    k.a.xor(eax, edx)?;
    k.a.ret()?;

    // pit_delay: ECX = PIT ticks (at most 0xFFFF); channel 2, mode 0, gate on, speaker
    // off; polls OUT2 (port 0x61 bit 5) a bounded number of times.
    let mut poll = k.a.create_label();
    let mut expired = k.a.create_label();
    let mut pit_l = k.pit_delay;
    k.a.set_label(&mut pit_l)?;
    k.a.push(eax)?;
    k.a.push(ebx)?;
    k.a.in_(al, 0x61)?;
    k.a.and(al, 0xfc)?;
    k.a.or(al, 1)?;
    k.a.out(0x61, al)?;
    k.a.mov(al, 0xb0u32)?;
    k.a.out(0x43, al)?;
    k.a.mov(al, cl)?;
    k.a.out(0x42, al)?;
    k.a.mov(al, ch)?;
    k.a.out(0x42, al)?;
    k.a.mov(ebx, 50_000_000u32)?;
    k.a.set_label(&mut poll)?;
    k.a.in_(al, 0x61)?;
    k.a.test(al, 0x20)?;
    k.a.jnz(expired)?;
    k.a.dec(ebx)?;
    k.a.jnz(poll)?;
    k.a.set_label(&mut expired)?;
    k.a.pop(ebx)?;
    k.a.pop(eax)?;
    k.a.ret()?;

    // wait_eq: waits until dword [ESI] == EDX, at most EDI milliseconds; ZF set if
    // equal. Clobbers ECX, EDI.
    let mut wdone = k.a.create_label();
    let mut wait_l = k.wait_eq;
    k.a.set_label(&mut wait_l)?;
    k.a.cmp(dword_ptr(esi), edx)?;
    k.a.je(wdone)?;
    k.a.mov(ecx, PIT_1MS)?;
    k.a.call(k.pit_delay)?;
    k.a.dec(edi)?;
    k.a.jnz(k.wait_eq)?;
    k.a.cmp(dword_ptr(esi), edx)?;
    k.a.set_label(&mut wdone)?;
    k.a.ret()?;

    // wait_icr: until the ICR's delivery status is idle (bounded).
    let mut icr_l = k.wait_icr;
    let mut icr_spin = k.a.create_label();
    let mut icr_idle = k.a.create_label();
    k.a.set_label(&mut icr_l)?;
    k.a.push(ecx)?;
    k.a.mov(ecx, 1_000_000u32)?;
    k.a.set_label(&mut icr_spin)?;
    k.a.test(dword_ptr(APIC_ICR_LO), ICR_PENDING)?;
    k.a.jz(icr_idle)?;
    k.a.pause()?;
    k.a.dec(ecx)?;
    k.a.jnz(icr_spin)?;
    k.a.set_label(&mut icr_idle)?;
    k.a.pop(ecx)?;
    k.a.ret()?;

    // madt_count: enabled processor local APIC entries of the MADT the RSDT lists
    // (RSDP searched in 0xE0000-0xFFFFF), or -1 without one. Clobbers ECX, EDX, ESI, EDI.
    {
        let mut l = k.a.create_label();
        let mut n = k.a.create_label();
        let mut found = k.a.create_label();
        let mut tables = k.a.create_label();
        let mut madt = k.a.create_label();
        let mut entries = k.a.create_label();
        let mut skip = k.a.create_label();
        let mut done = k.a.create_label();
        let mut none = k.a.create_label();
        k.a.set_label(&mut madt_count)?;
        k.a.mov(esi, 0xe_0000u32)?;
        k.a.set_label(&mut l)?;
        k.a.cmp(dword_ptr(esi), u32::from_le_bytes(*b"RSD "))?;
        k.a.jne(n)?;
        k.a.cmp(dword_ptr(esi + 4), u32::from_le_bytes(*b"PTR "))?;
        k.a.je(found)?;
        k.a.set_label(&mut n)?;
        k.a.add(esi, 16)?;
        k.a.cmp(esi, 0x10_0000)?;
        k.a.jb(l)?;
        k.a.jmp(none)?;
        k.a.set_label(&mut found)?;
        k.a.mov(esi, dword_ptr(esi + 16))?; // RSDT
        k.a.mov(edx, esi)?;
        k.a.add(edx, dword_ptr(esi + 4))?;
        k.a.add(esi, 36)?;
        k.a.set_label(&mut tables)?;
        k.a.cmp(esi, edx)?;
        k.a.jae(none)?;
        k.a.mov(edi, dword_ptr(esi))?;
        k.a.cmp(dword_ptr(edi), u32::from_le_bytes(*b"APIC"))?;
        k.a.je(madt)?;
        k.a.add(esi, 4)?;
        k.a.jmp(tables)?;
        k.a.set_label(&mut madt)?;
        k.a.mov(edx, edi)?;
        k.a.add(edx, dword_ptr(edi + 4))?;
        k.a.add(edi, 44)?;
        k.a.xor(eax, eax)?;
        k.a.set_label(&mut entries)?;
        k.a.cmp(edi, edx)?;
        k.a.jae(done)?;
        k.a.cmp(byte_ptr(edi), 0)?;
        k.a.jne(skip)?;
        k.a.test(byte_ptr(edi + 4), 1)?;
        k.a.jz(skip)?;
        k.a.inc(eax)?;
        k.a.set_label(&mut skip)?;
        k.a.movzx(ecx, byte_ptr(edi + 1))?;
        k.a.test(ecx, ecx)?;
        k.a.jz(done)?;
        k.a.add(edi, ecx)?;
        k.a.jmp(entries)?;
        k.a.set_label(&mut done)?;
        k.a.ret()?;
        k.a.set_label(&mut none)?;
        k.a.mov(eax, -1)?;
        k.a.ret()?;
    }

    // mp_count: enabled processor entries of the MP configuration table whose floating
    // pointer is in the EBDA the BDA names, the last KiB of base memory or the BIOS
    // area (where Linux looks), or -1 without one. Clobbers ECX, EDX, ESI, EDI.
    {
        let mut found = k.a.create_label();
        let mut entries = k.a.create_label();
        let mut other = k.a.create_label();
        let mut next = k.a.create_label();
        let mut none = k.a.create_label();
        let mut no_ebda = k.a.create_label();
        k.a.set_label(&mut mp_count)?;
        k.a.movzx(esi, word_ptr(0x40e))?;
        k.a.shl(esi, 4)?;
        k.a.jz(no_ebda)?;
        k.a.lea(edi, esi + 0x400)?;
        k.a.call(mp_scan)?;
        k.a.jnc(found)?;
        k.a.set_label(&mut no_ebda)?;
        for (start, end) in [(0x9_fc00u32, 0xa_0000u32), (0xf_0000, 0x10_0000)] {
            k.a.mov(esi, start)?;
            k.a.mov(edi, end)?;
            k.a.call(mp_scan)?;
            k.a.jnc(found)?;
        }
        k.a.jmp(none)?;
        k.a.set_label(&mut found)?;
        k.a.mov(esi, dword_ptr(esi + 4))?;
        k.a.cmp(dword_ptr(esi), u32::from_le_bytes(*b"PCMP"))?;
        k.a.jne(none)?;
        k.a.movzx(ecx, word_ptr(esi + 34))?;
        k.a.lea(edi, esi + 44)?;
        k.a.xor(eax, eax)?;
        k.a.set_label(&mut entries)?;
        k.a.test(ecx, ecx)?;
        k.a.jz(next)?;
        k.a.cmp(byte_ptr(edi), 0)?;
        k.a.jne(other)?;
        k.a.test(byte_ptr(edi + 3), 1)?;
        k.a.setnz(dl)?;
        k.a.movzx(edx, dl)?;
        k.a.add(eax, edx)?;
        k.a.add(edi, 20)?;
        k.a.dec(ecx)?;
        k.a.jmp(entries)?;
        k.a.set_label(&mut other)?;
        k.a.add(edi, 8)?;
        k.a.dec(ecx)?;
        k.a.jmp(entries)?;
        k.a.set_label(&mut next)?;
        k.a.ret()?;
        k.a.set_label(&mut none)?;
        k.a.mov(eax, -1)?;
        k.a.ret()?;
    }

    // mp_scan: a valid floating pointer ("_MP_", length 1, checksum 0) in [ESI, EDI)
    // on a 16-byte boundary: CF clear and ESI = its address, else CF set.
    {
        let mut n = k.a.create_label();
        let mut sum = k.a.create_label();
        let mut none = k.a.create_label();
        k.a.set_label(&mut mp_scan)?;
        k.a.cmp(esi, edi)?;
        k.a.jae(none)?;
        k.a.cmp(dword_ptr(esi), u32::from_le_bytes(*b"_MP_"))?;
        k.a.jne(n)?;
        k.a.cmp(byte_ptr(esi + 8), 1)?;
        k.a.jne(n)?;
        k.a.xor(eax, eax)?;
        k.a.xor(ecx, ecx)?;
        k.a.set_label(&mut sum)?;
        k.a.add(al, byte_ptr(esi + ecx))?;
        k.a.inc(ecx)?;
        k.a.cmp(ecx, 16)?;
        k.a.jb(sum)?;
        k.a.test(al, al)?; // clears CF
        k.a.jnz(n)?;
        k.a.ret()?;
        k.a.set_label(&mut n)?;
        k.a.add(esi, 16)?;
        k.a.jmp(mp_scan)?;
        k.a.set_label(&mut none)?;
        k.a.stc()?;
        k.a.ret()?;
    }

    // puts, putc and puthex on COM1.
    crate::kernel_asm::serial_routines(&mut k.a, k.putc, k.puts, k.puthex)?;

    // The trampoline (it jumps to the AP entry of the previous pass) and the strings.
    let blob = trampoline(k.addr(ap_entry))?;
    k.place(tramp_blob)?;
    k.a.db(&blob)?;
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
    elf_with_image(&assemble().expect("the SMP test kernel assembles"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use iced_x86::{Decoder, DecoderOptions, Mnemonic};

    #[test]
    fn assembles_to_a_multiboot_elf() {
        let elf = build_elf();
        assert_eq!(&elf[..4], b"\x7fELF");
        assert_eq!(elf[4], 1, "ELF32");
        assert_eq!(u16::from_le_bytes([elf[18], elf[19]]), 3, "EM_386");
        let entry = u32::from_le_bytes(elf[24..28].try_into().unwrap());
        assert_eq!(entry, IMAGE_ADDR);
        // One PT_LOAD covering the file.
        let ph = 52;
        assert_eq!(u32::from_le_bytes(elf[ph..ph + 4].try_into().unwrap()), 1);
        let filesz = u32::from_le_bytes(elf[ph + 16..ph + 20].try_into().unwrap());
        assert_eq!(filesz as usize, elf.len());
        // The Multiboot header right after, within the first 8 KiB, checksummed.
        let mb = ph + 32;
        let w = |o: usize| u32::from_le_bytes(elf[o..o + 4].try_into().unwrap());
        assert_eq!(w(mb), 0x1bad_b002);
        assert_eq!(w(mb).wrapping_add(w(mb + 4)).wrapping_add(w(mb + 8)), 0);
        // Deterministic.
        assert_eq!(build_elf(), elf);
    }

    #[test]
    fn the_image_holds_the_trampoline_and_it_decodes() {
        let elf = build_elf();
        let image = &elf[(IMAGE_ADDR - crate::multiboot_kernel::LOAD_ADDR) as usize..];
        // The trampoline's GDT: flat code and data.
        let code = 0x00cf_9a00_0000_ffffu64.to_le_bytes();
        let at = image
            .windows(8)
            .position(|w| w == code)
            .expect("the trampoline's GDT is in the image");
        let start = at - 8 - TRAMP_GDT;
        let tramp = &image[start..start + TRAMP_LEN];
        assert_eq!(&tramp[TRAMP_GDT..TRAMP_GDT + 8], &[0; 8]);
        let gdtr = &tramp[TRAMP_GDTR..TRAMP_GDTR + 6];
        assert_eq!(u16::from_le_bytes([gdtr[0], gdtr[1]]), 23);
        assert_eq!(
            u32::from_le_bytes(gdtr[2..6].try_into().unwrap()),
            TRAMPOLINE + TRAMP_GDT as u32
        );
        // 16-bit code: CLI first, then LGDT, a CR0 write and a far jump into the image.
        let mut d = Decoder::with_ip(16, tramp, 0, DecoderOptions::NONE);
        let mut mnemonics = Vec::new();
        let mut target = 0;
        while d.can_decode() && mnemonics.last() != Some(&Mnemonic::Jmp) {
            let i = d.decode();
            if i.mnemonic() == Mnemonic::Jmp {
                assert_eq!(i.far_branch_selector(), CODE_SEL as u16);
                target = i.far_branch32();
            }
            mnemonics.push(i.mnemonic());
        }
        assert_eq!(mnemonics[0], Mnemonic::Cli);
        assert!(mnemonics.contains(&Mnemonic::Lgdt));
        assert!(mnemonics.contains(&Mnemonic::Mov));
        let image_end = IMAGE_ADDR + image.len() as u32;
        assert!(
            (IMAGE_ADDR..image_end).contains(&target),
            "far jump to {target:#x}"
        );
    }

    #[test]
    fn job_model_and_statuses() {
        // Different CPUs, different results; the model is fixed.
        let r: Vec<u32> = (0..8).map(job).collect();
        for (i, a) in r.iter().enumerate() {
            assert!(r[i + 1..].iter().all(|b| b != a));
        }
        assert_eq!(job(0), job(0));
        assert_eq!(
            job_line(1),
            format!("smp: cpu 00000001 result {:08x} ok", job(1))
        );
        assert_eq!(status(pass::ALL), 0x7f);
        assert_eq!(expected_status(2), 0x7f);
        assert_eq!(expected_status(8), 0x7f);
        assert_eq!(expected_status(1), status(pass::ALL & !pass::ALIVE));
        assert_eq!(expected_status(MAX_APIC_IDS), 0x7f);
        assert_ne!(status(UNEXPECTED), status(pass::ALL));
    }
}
