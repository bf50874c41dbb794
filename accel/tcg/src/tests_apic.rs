//! The run loop with local APICs and the real x86 translator: INIT/SIPI between two
//! vCPUs, the APIC timer waking HLT with EOIs, NMIs blocked until IRET, the 8259A
//! through LINT0. Guests are 32-bit protected-mode code assembled with iced-x86.

use crate::vcpu::TcgVcpu;
use iced_x86::code_asm::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use vireo_core::clock::{TimerDevice, TimerWaker};
use vireo_core::cpu::{ctl, reg, sreg, CpuState, DescriptorTable, Segment};
use vireo_core::{
    A20Gate, Bus, GuestMemory, MachineControl, StopReason, SystemBus, Vcpu, VcpuExit, VirtualClock,
};
use vireo_devices::apic::{self, ApicBus, LapicHandle, LocalApic};
use vireo_devices::pic::PicPorts;

pub(crate) const GDT: u64 = 0x500;
const IDT: u64 = 0x600;
pub(crate) const DATA: u64 = 0x7000;
pub(crate) const APIC: u32 = 0xfee0_0000;

pub(crate) struct Mp {
    pub(crate) mem: Arc<GuestMemory>,
    bus: SystemBus,
    pub(crate) control: Arc<MachineControl>,
    clock: Arc<VirtualClock>,
    waker: Arc<TimerWaker>,
    apic_bus: Arc<ApicBus>,
    lapics: Vec<apic::SharedLapic>,
}

impl Mp {
    pub(crate) fn new() -> Mp {
        let mem = Arc::new(GuestMemory::new_flat(2 << 20).unwrap());
        let bus = SystemBus {
            mem: mem.clone(),
            pio: Arc::new(Bus::new("pio")),
            mmio: Arc::new(Bus::new("mmio")),
            a20: A20Gate::new(),
        };
        // GDT: null, flat 32-bit code 0x08, flat data 0x10.
        for (i, d) in [0u64, 0x00cf_9b00_0000_ffff, 0x00cf_9300_0000_ffff]
            .iter()
            .enumerate()
        {
            mem.write_u64(GDT + 8 * i as u64, *d).unwrap();
        }
        Mp {
            mem,
            bus,
            control: MachineControl::new(),
            clock: VirtualClock::host(),
            waker: TimerWaker::new(),
            apic_bus: ApicBus::new(),
            lapics: Vec::new(),
        }
    }

    /// A vCPU with local APIC `id` (the BSP when 0).
    pub(crate) fn cpu(&mut self, id: u32) -> TcgVcpu {
        let l = apic::shared(LocalApic::new(
            id,
            id == 0,
            self.clock.clone(),
            1_000_000_000,
        ));
        l.lock().set_waker(self.waker.clone());
        self.lapics.push(l.clone());
        let h = LapicHandle::attach(l, self.apic_bus.clone());
        let v = TcgVcpu::new(self.bus.clone(), self.control.clone()).with_apic(h, None);
        self.kick_on_stop(&v);
        v
    }

    /// Makes a stop request kick `v` (as the machine does).
    fn kick_on_stop(&self, v: &TcgVcpu) {
        let k = v.kicker();
        self.control.add_kick(Box::new(move || k.kick()));
    }

    /// Assembles 32-bit code at `addr`.
    pub(crate) fn code(
        &self,
        addr: u64,
        f: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>,
    ) {
        let mut a = CodeAssembler::new(32).unwrap();
        f(&mut a).unwrap();
        self.mem.write(addr, &a.assemble(addr).unwrap()).unwrap();
    }

    /// The system bus (for vCPUs without an APIC).
    pub(crate) fn bus(&self) -> SystemBus {
        self.bus.clone()
    }

    /// Real-mode (16-bit) code at `addr`.
    pub(crate) fn code16(
        &self,
        addr: u64,
        f: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>,
    ) {
        let mut a = CodeAssembler::new(16).unwrap();
        f(&mut a).unwrap();
        self.mem.write(addr, &a.assemble(addr).unwrap()).unwrap();
    }

    /// A 32-bit interrupt gate for `vector` to `handler`.
    pub(crate) fn gate(&self, vector: u64, handler: u32) {
        let h = u64::from(handler);
        let g = (h & 0xffff) | (0x08 << 16) | (0x8e << 40) | ((h >> 16) << 48);
        self.mem.write_u64(IDT + 8 * vector, g).unwrap();
    }

    /// A CPU with no APIC that runs the code at `entry` in protected mode (stack at
    /// `stack`) with the JIT, every block compiled at once (no interpreted warm-up:
    /// the tests look at compiled code).
    pub(crate) fn jit_cpu(&self, stack: u64, entry: u64) -> TcgVcpu {
        let mut v = TcgVcpu::new(self.bus(), self.control.clone());
        v.set_backend(crate::Backend::Jit);
        v.set_warmup(0);
        v.set_state(&pm_state(stack, entry)).unwrap();
        v
    }

    pub(crate) fn r32(&self, a: u64) -> u32 {
        self.mem.read_u32(a).unwrap()
    }

    /// Polls the APIC timers like the machine's timer thread, until dropped.
    pub(crate) fn timer_thread(&self) -> TimerThread {
        let stop = Arc::new(AtomicBool::new(false));
        let (s, w, c) = (stop.clone(), self.waker.clone(), self.clock.clone());
        let lapics = self.lapics.clone();
        let h = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                let now = c.now_ns();
                let next = lapics.iter().filter_map(|l| l.lock().poll_timer(now)).min();
                let t = next.map_or(Duration::from_millis(5), |n| {
                    Duration::from_nanos(n.saturating_sub(c.now_ns())).min(Duration::from_millis(5))
                });
                w.wait(Some(t));
            }
        });
        TimerThread {
            stop,
            waker: self.waker.clone(),
            handle: Some(h),
        }
    }

    /// Waits until `cond` holds (at most 10 s), then stops every vCPU.
    pub(crate) fn wait_then_stop(&self, what: &str, cond: impl Fn() -> bool) {
        let t0 = Instant::now();
        while !cond() {
            assert!(t0.elapsed() < Duration::from_secs(10), "timed out: {what}");
            std::thread::sleep(Duration::from_millis(2));
        }
        self.control.request_stop(StopReason::Quit);
    }
}

pub(crate) struct TimerThread {
    stop: Arc<AtomicBool>,
    waker: Arc<TimerWaker>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Drop for TimerThread {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.waker.wake();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Flat 32-bit protected mode at `rip`, stack below 0x9000.
pub(crate) fn pm_state(base: u64, rip: u64) -> CpuState {
    let mut s = CpuState::reset();
    s.cr0 = ctl::CR0_PE | ctl::CR0_ET;
    s.seg[sreg::CS] = Segment::flat(0x08, true, false);
    for i in [sreg::DS, sreg::ES, sreg::SS, sreg::FS, sreg::GS] {
        s.seg[i] = Segment::flat(0x10, false, false);
    }
    s.gdtr = DescriptorTable {
        base: GDT,
        limit: 23,
    };
    s.idtr = DescriptorTable {
        base: IDT,
        limit: 0x7ff,
    };
    s.gpr[reg::RSP] = 0x9000;
    s.rip = rip;
    s.msr.apic_base = base;
    s
}

fn spawn(mut v: TcgVcpu) -> std::thread::JoinHandle<(VcpuExit, CpuState)> {
    std::thread::spawn(move || {
        let exit = v.run().unwrap();
        (exit, v.state().unwrap())
    })
}

#[test]
fn init_and_sipi_start_the_second_cpu() {
    let mut mp = Mp::new();
    let mut bsp = mp.cpu(0);
    let mut ap = mp.cpu(1);
    // BSP: INIT assert, INIT de-assert, SIPI (vector 8: 0x8000) to APIC 1, then halt.
    mp.code(0x1000, |a| {
        a.mov(dword_ptr(APIC + 0x310), 1u32 << 24)?;
        a.mov(dword_ptr(APIC + 0x300), 0xc500u32)?;
        a.mov(dword_ptr(APIC + 0x300), 0x8500u32)?;
        a.mov(dword_ptr(APIC + 0x300), 0x0608u32)?;
        a.cli()?;
        a.hlt()
    });
    // AP: real mode at 0800:0000; writes its CS and a marker, then halts.
    mp.code16(0x8000, |a| {
        a.mov(ax, cs)?;
        a.mov(word_ptr(DATA as u32 + 2), ax)?;
        a.mov(word_ptr(DATA as u32), 0x4321u32)?;
        a.cli()?;
        a.hlt()
    });
    bsp.set_state(&pm_state(0xfee0_0900, 0x1000)).unwrap();
    // The AP waits for SIPI (as after the firmware's INIT).
    let mut s = CpuState::reset();
    s.msr.apic_base = 0xfee0_0800;
    s.events.wait_for_sipi = true;
    ap.set_state(&s).unwrap();
    let (hb, ha) = (spawn(bsp), spawn(ap));
    mp.wait_then_stop("AP marker", || mp.r32(DATA) & 0xffff == 0x4321);
    let (eb, _) = hb.join().unwrap();
    let (ea, sa) = ha.join().unwrap();
    assert_eq!((eb, ea), (VcpuExit::Stopped, VcpuExit::Stopped));
    assert_eq!(mp.r32(DATA) >> 16, 0x0800, "CS = vector << 8");
    assert_eq!(sa.seg[sreg::CS].base, 0x8000);
    assert!(!sa.events.wait_for_sipi);
    assert_eq!(sa.msr.apic_base & (1 << 8), 0, "not the BSP");
    // The AP got the reset state (EDX holds the signature), not the BSP's.
    assert_ne!(sa.gpr[reg::RDX], 0);
    assert_eq!(sa.cr0 & ctl::CR0_PE, 0);
}

#[test]
fn a_cpu_waiting_for_sipi_runs_nothing() {
    let mut mp = Mp::new();
    let mut ap = mp.cpu(1);
    let mut s = CpuState::reset();
    s.msr.apic_base = 0xfee0_0800;
    s.events.wait_for_sipi = true;
    ap.set_state(&s).unwrap();
    let h = spawn(ap);
    std::thread::sleep(Duration::from_millis(50));
    mp.control.request_stop(StopReason::Quit);
    let (e, s) = h.join().unwrap();
    assert_eq!(e, VcpuExit::Stopped);
    assert!(s.events.wait_for_sipi);
    assert_eq!(s.rip, 0xfff0);
}

/// Code that enables the APIC (SVR = 0x1FF).
fn enable_apic(a: &mut CodeAssembler) -> Result<(), IcedError> {
    a.mov(dword_ptr(APIC + 0xf0), 0x1ffu32)
}

#[test]
fn periodic_timer_wakes_hlt_and_eoi_lets_the_next_one_in() {
    let mut mp = Mp::new();
    let mut cpu = mp.cpu(0);
    // Vector 0x40: count, EOI, IRET.
    mp.code(0x3000, |a| {
        a.inc(dword_ptr(DATA as u32))?;
        a.mov(dword_ptr(APIC + 0xb0), 0u32)?;
        a.iretd()
    });
    mp.gate(0x40, 0x3000);
    mp.code(0x1000, |a| {
        let mut wait = a.create_label();
        enable_apic(a)?;
        a.mov(dword_ptr(APIC + 0x3e0), 0xbu32)?; // divide by 1
        a.mov(dword_ptr(APIC + 0x320), 0x2_0040u32)?; // periodic, vector 0x40
        a.mov(dword_ptr(APIC + 0x380), 200_000u32)?; // 200 us
        a.sti()?;
        a.set_label(&mut wait)?;
        a.hlt()?;
        a.cmp(dword_ptr(DATA as u32), 5)?;
        a.jb(wait)?;
        a.mov(dword_ptr(APIC + 0x320), 0x1_0040u32)?; // mask
        a.mov(dword_ptr(DATA as u32 + 4), 1u32)?;
        a.cli()?;
        a.hlt()
    });
    cpu.set_state(&pm_state(0xfee0_0900, 0x1000)).unwrap();
    let _timers = mp.timer_thread();
    let h = spawn(cpu);
    mp.wait_then_stop("five timer interrupts", || mp.r32(DATA + 4) == 1);
    let (e, s) = h.join().unwrap();
    assert_eq!(e, VcpuExit::Stopped);
    assert!(mp.r32(DATA) >= 5);
    assert!(s.events.halted);
    // Nothing left in service: every interrupt was EOI'd.
    let isr: u32 = (0..8)
        .map(|i| {
            let mut b = [0u8; 4];
            mp.lapics[0].lock().mmio_read(0x100 + 0x10 * i, &mut b);
            u32::from_le_bytes(b)
        })
        .fold(0, |a, w| a | w);
    assert_eq!(isr, 0);
}

#[test]
fn nmi_is_blocked_until_iret() {
    let mut mp = Mp::new();
    let mut cpu = mp.cpu(0);
    // NMI handler: count; the first one sends itself another NMI and records the
    // count a few instructions later (still 1: NMIs are blocked until IRET).
    mp.code(0x3000, |a| {
        let mut done = a.create_label();
        a.push(eax)?;
        a.mov(eax, dword_ptr(DATA as u32))?;
        a.inc(eax)?;
        a.mov(dword_ptr(DATA as u32), eax)?;
        a.cmp(eax, 1)?;
        a.jne(done)?;
        a.mov(dword_ptr(APIC + 0x310), 0u32)?;
        a.mov(dword_ptr(APIC + 0x300), 0x4400u32)?; // NMI to APIC 0
        a.nop()?;
        a.nop()?;
        a.mov(eax, dword_ptr(DATA as u32))?;
        a.mov(dword_ptr(DATA as u32 + 8), eax)?;
        a.set_label(&mut done)?;
        a.pop(eax)?;
        a.iretd()
    });
    mp.gate(2, 0x3000);
    mp.code(0x1000, |a| {
        let mut wait = a.create_label();
        enable_apic(a)?;
        a.mov(dword_ptr(APIC + 0x310), 0u32)?;
        a.mov(dword_ptr(APIC + 0x300), 0x4400u32)?;
        // NMIs are taken with IF clear, and wake HLT.
        a.cli()?;
        a.set_label(&mut wait)?;
        a.cmp(dword_ptr(DATA as u32), 2)?;
        a.jb(wait)?;
        a.mov(dword_ptr(DATA as u32 + 4), 1u32)?;
        a.hlt()
    });
    cpu.set_state(&pm_state(0xfee0_0900, 0x1000)).unwrap();
    let h = spawn(cpu);
    mp.wait_then_stop("two NMIs", || mp.r32(DATA + 4) == 1);
    let (e, _) = h.join().unwrap();
    assert_eq!(e, VcpuExit::Stopped);
    assert_eq!(mp.r32(DATA), 2);
    assert_eq!(mp.r32(DATA + 8), 1, "the second NMI waited for IRET");
}

#[test]
fn pic_interrupts_arrive_through_lint0() {
    let mp = Mp::new();
    let l = apic::shared(LocalApic::new(0, true, mp.clock.clone(), 1_000_000_000));
    let h = LapicHandle::attach(l.clone(), mp.apic_bus.clone());
    let pic = crate::tests::pc_pic(); // vectors 0x08.., IRQ 0 unmasked
    let mut cpu = TcgVcpu::new(mp.bus.clone(), mp.control.clone()).with_apic(h, Some(pic.clone()));
    mp.kick_on_stop(&cpu);
    mp.code(0x3000, |a| {
        a.inc(dword_ptr(DATA as u32))?;
        a.mov(al, 0x20u32)?;
        a.out(0x20, al)?;
        a.iretd()
    });
    mp.gate(0x08, 0x3000);
    // Virtual wire: LINT0 is unmasked ExtINT at reset (BSP), even software-disabled.
    mp.code(0x1000, |a| {
        let mut wait = a.create_label();
        a.sti()?;
        a.set_label(&mut wait)?;
        a.hlt()?;
        a.cmp(dword_ptr(DATA as u32), 1)?;
        a.jb(wait)?;
        // Mask LINT0: the next PIC interrupt is not taken.
        a.mov(dword_ptr(APIC + 0xf0), 0x1ffu32)?;
        a.mov(dword_ptr(APIC + 0x350), 0x1_0700u32)?;
        a.mov(dword_ptr(DATA as u32 + 4), 1u32)?;
        a.hlt()?;
        a.mov(dword_ptr(DATA as u32 + 8), 1u32)?;
        a.hlt()
    });
    cpu.set_state(&pm_state(0xfee0_0900, 0x1000)).unwrap();
    // The PIC port bus is not needed: the handler's OUT 0x20 goes nowhere, so EOI the
    // PIC from here.
    let hd = spawn(cpu);
    std::thread::sleep(Duration::from_millis(20));
    pic.lock().set_irq(0, true);
    pic.lock().set_irq(0, false);
    let t0 = Instant::now();
    while mp.r32(DATA + 4) != 1 {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "first PIC interrupt"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    pic.lock().write_port(PicPorts::Master, 0, 0x20);
    pic.lock().set_irq(0, true);
    pic.lock().set_irq(0, false);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(mp.r32(DATA + 8), 0, "LINT0 masked: no wake-up");
    assert_eq!(mp.r32(DATA), 1);
    mp.control.request_stop(StopReason::Quit);
    assert_eq!(hd.join().unwrap().0, VcpuExit::Stopped);
}

#[test]
fn tsc_deadline_timer_from_the_guest() {
    let mut mp = Mp::new();
    let mut cpu = mp.cpu(0);
    // The TSC follows the virtual clock at 1 GHz, as the machine sets it up.
    let clock = mp.clock.clone();
    cpu.cpu().tsc_source = Some(Box::new(move || clock.now_ns()));
    mp.code(0x3000, |a| {
        a.inc(dword_ptr(DATA as u32))?;
        a.mov(dword_ptr(APIC + 0xb0), 0u32)?;
        a.iretd()
    });
    mp.gate(0x41, 0x3000);
    mp.code(0x1000, |a| {
        let mut wait = a.create_label();
        enable_apic(a)?;
        a.mov(dword_ptr(APIC + 0x320), 0x4_0041u32)?; // TSC-deadline mode
        a.rdtsc()?;
        a.add(eax, 300_000u32)?; // 300 us ahead
        a.adc(edx, 0u32)?;
        a.mov(ecx, 0x6e0u32)?;
        a.wrmsr()?;
        a.sti()?;
        a.set_label(&mut wait)?;
        a.hlt()?;
        a.cmp(dword_ptr(DATA as u32), 1)?;
        a.jb(wait)?;
        // Fired: the MSR reads 0.
        a.rdmsr()?;
        a.or(eax, edx)?;
        a.mov(dword_ptr(DATA as u32 + 8), eax)?;
        a.mov(dword_ptr(DATA as u32 + 4), 1u32)?;
        a.cli()?;
        a.hlt()
    });
    mp.mem.write_u32(DATA + 8, 0xdead).unwrap();
    cpu.set_state(&pm_state(0xfee0_0900, 0x1000)).unwrap();
    let _timers = mp.timer_thread();
    let h = spawn(cpu);
    mp.wait_then_stop("the deadline interrupt", || mp.r32(DATA + 4) == 1);
    assert_eq!(h.join().unwrap().0, VcpuExit::Stopped);
    assert_eq!(mp.r32(DATA), 1);
    assert_eq!(mp.r32(DATA + 8), 0);
}

#[test]
fn apic_timer_clock_is_the_cpuid_crystal() {
    assert_eq!(
        vireo_devices::apic::lapic::TIMER_HZ,
        vireo_x86::cpuid::CRYSTAL_HZ
    );
}

// The same tests with blocks compiled by the JIT.
jit_variants!(
    init_and_sipi_start_the_second_cpu,
    a_cpu_waiting_for_sipi_runs_nothing,
    periodic_timer_wakes_hlt_and_eoi_lets_the_next_one_in,
    nmi_is_blocked_until_iret,
    pic_interrupts_arrive_through_lint0,
    tsc_deadline_timer_from_the_guest,
    apic_timer_clock_is_the_cpuid_crystal,
);

/// The real translator, 50 ms slower per block.
fn slow_translator(
    cpu: &mut vireo_x86::X86Cpu,
    max: usize,
) -> Result<vireo_core::ir::Block, crate::frontend::TranslateError> {
    std::thread::sleep(Duration::from_millis(50));
    crate::frontend::translate(cpu, max)
}

/// The TSC (the machine's clock at 1 GHz) read before and after a jump to code not
/// yet translated: with the clock held while translating, the guest does not see the
/// 50 ms the translator takes; without, it does.
#[test]
fn guest_time_stands_still_while_a_block_is_translated() {
    let measure = |hold: bool| -> u64 {
        let mut mp = Mp::new();
        let mut cpu = mp.cpu(0);
        let clock = mp.clock.clone();
        cpu.cpu().tsc_source = Some(Box::new(move || clock.now_ns()));
        cpu.set_translator(slow_translator);
        if hold {
            cpu.hold_clock_while_translating(mp.clock.clone());
        }
        mp.code(0x1000, |a| {
            a.mov(ebx, 0x2000u32)?;
            a.rdtsc()?;
            a.mov(esi, eax)?;
            a.mov(edi, edx)?;
            a.jmp(ebx) // ends the block: the next one is translated when reached
        });
        mp.code(0x2000, |a| {
            a.rdtsc()?;
            a.sub(eax, esi)?;
            a.sbb(edx, edi)?;
            a.mov(dword_ptr(DATA as u32), eax)?;
            a.mov(dword_ptr(DATA as u32 + 4), edx)?;
            a.mov(dword_ptr(DATA as u32 + 8), 1u32)?;
            a.cli()?;
            a.hlt()
        });
        cpu.set_state(&pm_state(0xfee0_0900, 0x1000)).unwrap();
        let h = spawn(cpu);
        mp.wait_then_stop("the second TSC read", || mp.r32(DATA + 8) == 1);
        assert_eq!(h.join().unwrap().0, VcpuExit::Stopped);
        u64::from(mp.r32(DATA)) | (u64::from(mp.r32(DATA + 4)) << 32)
    };
    let seen = measure(false);
    assert!(
        seen >= 50_000_000,
        "the translation is in the window: {seen} ns"
    );
    let held = measure(true);
    assert!(held < 10_000_000, "held while translating: {held} ns");
}
