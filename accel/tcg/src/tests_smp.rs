//! Several vCPUs round-robin on one thread ([`RoundRobin`]): INIT/SIPI, the shared
//! block cache seeing one CPU's code writes for all, PAUSE giving way, and the group
//! sleeping when every CPU is idle.

use crate::smp::RoundRobin;
use crate::tests_apic::{pm_state, Mp, APIC, DATA};
use iced_x86::code_asm::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use vireo_core::cpu::{reg, sreg, CpuState};
use vireo_core::{GuestMemory, StopReason, Vcpu, VcpuExit};

/// Runs the group on this thread until `done` holds for guest memory (checked by
/// another thread, which then stops the group; at most 10 s), and returns its exit.
fn run_until(
    mp: &Mp,
    rr: &mut RoundRobin,
    done: impl Fn(&GuestMemory) -> bool + Send + 'static,
) -> VcpuExit {
    let control = mp.control.clone();
    let mem = mp.mem.clone();
    let t0 = Instant::now();
    let returned = Arc::new(AtomicBool::new(false));
    let r2 = returned.clone();
    let stopper = std::thread::spawn(move || {
        while !done(&mem) && !r2.load(Ordering::SeqCst) && t0.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(1));
        }
        control.request_stop(StopReason::Quit);
    });
    let exit = rr.run().unwrap();
    returned.store(true, Ordering::SeqCst);
    stopper.join().unwrap();
    exit
}

/// A group of `n` CPUs with local APICs 0..n.
fn group(mp: &mut Mp, n: u32) -> RoundRobin {
    let mut rr = RoundRobin::new(mp.control.clone());
    for id in 0..n {
        rr.add(mp.cpu(id));
    }
    rr
}

fn set(rr: &mut RoundRobin, i: usize, s: &CpuState) {
    rr.vcpu(i).expect("vCPU").set_state(s).unwrap();
}

#[test]
fn init_and_sipi_start_the_second_cpu_on_the_same_thread() {
    let mut mp = Mp::new();
    let mut rr = group(&mut mp, 2);
    mp.code(0x1000, |a| {
        a.mov(dword_ptr(APIC + 0x310), 1u32 << 24)?;
        a.mov(dword_ptr(APIC + 0x300), 0xc500u32)?;
        a.mov(dword_ptr(APIC + 0x300), 0x8500u32)?;
        a.mov(dword_ptr(APIC + 0x300), 0x0608u32)?;
        a.cli()?;
        a.hlt()
    });
    mp.code16(0x8000, |a| {
        a.mov(word_ptr(DATA as u32), 0x4321u32)?;
        a.cli()?;
        a.hlt()
    });
    set(&mut rr, 0, &pm_state(0xfee0_0900, 0x1000));
    set(&mut rr, 1, &CpuState::reset_ap());
    let exit = run_until(&mp, &mut rr, |m| {
        m.read_u32(DATA).unwrap() & 0xffff == 0x4321
    });
    assert_eq!(exit, VcpuExit::Stopped);
    assert_eq!(mp.r32(DATA) & 0xffff, 0x4321, "the AP ran");
    let ap = rr.vcpu(1).unwrap().state().unwrap();
    assert_eq!(ap.seg[sreg::CS].base, 0x8000);
}

/// CPU 1 calls a function and publishes the result; CPU 0 then rewrites the
/// function and tells CPU 1, which calls it again: it must run the new code (one
/// cache and one code watch for the group), and so must CPU 0.
#[test]
fn code_one_cpu_rewrites_is_retranslated_for_the_other() {
    const FUNC: u64 = 0x3000;
    const R1: u32 = DATA as u32; // CPU 1's first result
    const GO: u32 = DATA as u32 + 4; // CPU 0 -> CPU 1: the code is rewritten
    const R1B: u32 = DATA as u32 + 8; // CPU 1's second result
    const R0: u32 = DATA as u32 + 12; // CPU 0's result
    let mut mp = Mp::new();
    let mut rr = group(&mut mp, 2);
    let func = |v: u32| {
        move |a: &mut CodeAssembler| -> Result<(), IcedError> {
            a.mov(eax, v)?;
            a.ret()
        }
    };
    mp.code(FUNC, func(1));
    // The replacement, assembled elsewhere for CPU 0 to copy in.
    mp.code(0x3800, func(2));
    mp.code(0x1000, |a| {
        let mut wait = a.create_label();
        a.set_label(&mut wait)?;
        a.pause()?;
        a.cmp(dword_ptr(R1), 0)?;
        a.je(wait)?;
        // Copy the new function (mov eax, imm32; ret: 6 bytes) over the old.
        a.mov(eax, dword_ptr(0x3800u32))?;
        a.mov(dword_ptr(FUNC as u32), eax)?;
        a.mov(ax, word_ptr(0x3804u32))?;
        a.mov(word_ptr(FUNC as u32 + 4), ax)?;
        a.call(FUNC)?;
        a.mov(dword_ptr(R0), eax)?;
        a.mov(dword_ptr(GO), 1u32)?;
        a.cli()?;
        a.hlt()
    });
    mp.code(0x2000, |a| {
        a.call(FUNC)?;
        a.mov(dword_ptr(R1), eax)?;
        let mut wait = a.create_label();
        a.set_label(&mut wait)?;
        a.pause()?;
        a.cmp(dword_ptr(GO), 0)?;
        a.je(wait)?;
        a.call(FUNC)?;
        a.mov(dword_ptr(R1B), eax)?;
        a.cli()?;
        a.hlt()
    });
    set(&mut rr, 0, &pm_state(0xfee0_0900, 0x1000));
    let mut s1 = pm_state(0xfee0_0800, 0x2000);
    s1.gpr[reg::RSP] = 0x8800;
    set(&mut rr, 1, &s1);
    let exit = run_until(&mp, &mut rr, |m| m.read_u32(u64::from(R1B)).unwrap() != 0);
    assert_eq!(exit, VcpuExit::Stopped);
    let r = |a: u32| mp.r32(u64::from(a));
    assert_eq!((r(R1), r(R0), r(R1B)), (1, 2, 2));
    assert!(rr.vcpu(1).unwrap().cache_stats().invalidated >= 1);
}

/// With a time slice too long to ever end, CPU 0 spinning on a flag only finishes
/// if PAUSE gives way to CPU 1, which sets it.
#[test]
fn pause_gives_way_to_the_cpu_being_waited_for() {
    let mut mp = Mp::new();
    let mut rr = group(&mut mp, 2);
    rr.set_slice(u64::MAX / 2);
    mp.code(0x1000, |a| {
        let mut wait = a.create_label();
        a.set_label(&mut wait)?;
        a.pause()?;
        a.cmp(dword_ptr(DATA as u32), 0)?;
        a.je(wait)?;
        a.mov(dword_ptr(DATA as u32 + 4), 0x600du32)?;
        a.cli()?;
        a.hlt()
    });
    mp.code(0x2000, |a| {
        a.mov(dword_ptr(DATA as u32), 1u32)?;
        a.cli()?;
        a.hlt()
    });
    set(&mut rr, 0, &pm_state(0xfee0_0900, 0x1000));
    set(&mut rr, 1, &pm_state(0xfee0_0800, 0x2000));
    let exit = run_until(&mp, &mut rr, |m| m.read_u32(DATA + 4).unwrap() != 0);
    assert_eq!(exit, VcpuExit::Stopped);
    assert_eq!(mp.r32(DATA + 4), 0x600d);
}

/// A CPU alone (in no group, or in a group of one) has no one to give way to: PAUSE
/// is a jump its compiled code chains through, not an exit to the run loop. (In a
/// group of two it gives way: `pause_gives_way_to_the_cpu_being_waited_for`, which
/// would spin for ever otherwise.)
#[test]
fn pause_alone_chains() {
    let mp = Mp::new();
    mp.code(0x1000, |a| {
        let mut spin = a.create_label();
        a.mov(ecx, 1000u32)?;
        a.set_label(&mut spin)?;
        a.pause()?;
        a.dec(ecx)?;
        a.jnz(spin)?;
        a.mov(dword_ptr(DATA as u32), 0x600du32)?;
        a.cli()?;
        a.hlt()
    });
    let mut v = mp.jit_cpu(0xfee0_0900, 0x1000);
    assert_eq!(v.run().unwrap(), VcpuExit::Halted);
    assert_eq!(mp.r32(DATA), 0x600d);
    // ~2,000 blocks (PAUSE ends one), nearly all entered from the one before in
    // host code: the run loop starts a few (the uncounted rest chain).
    let s = v.stats;
    assert!(v.insns() >= 3000 && s.blocks <= 10, "{s:?}");
}

/// Both CPUs halt with interrupts on; CPU 1's APIC timer fires 20 ms later. The group
/// sleeps meanwhile (on its doorbell) and wakes for the interrupt.
#[test]
fn idle_group_sleeps_until_a_timer_interrupt() {
    let mut mp = Mp::new();
    let mut rr = group(&mut mp, 2);
    const HANDLER: u32 = 0x4000;
    mp.gate(0x40, HANDLER);
    mp.code(u64::from(HANDLER), |a| {
        a.mov(dword_ptr(DATA as u32), 0x7777u32)?;
        a.mov(dword_ptr(APIC + 0xb0), 0u32)?; // EOI
        a.iretd()
    });
    mp.code(0x1000, |a| {
        a.sti()?;
        let mut l = a.create_label();
        a.set_label(&mut l)?;
        a.hlt()?;
        a.jmp(l)
    });
    // CPU 1: APIC on, one-shot timer (divide by 1) for 20 ms at 1 GHz, vector 0x40.
    mp.code(0x2000, |a| {
        a.mov(dword_ptr(APIC + 0xf0), 0x1ffu32)?;
        a.mov(dword_ptr(APIC + 0x3e0), 0xbu32)?;
        a.mov(dword_ptr(APIC + 0x320), 0x40u32)?;
        a.mov(dword_ptr(APIC + 0x380), 20_000_000u32)?;
        a.sti()?;
        let mut l = a.create_label();
        a.set_label(&mut l)?;
        a.hlt()?;
        a.cmp(dword_ptr(DATA as u32), 0)?;
        a.je(l)?;
        a.cli()?;
        a.hlt()
    });
    set(&mut rr, 0, &pm_state(0xfee0_0900, 0x1000));
    let mut s1 = pm_state(0xfee0_0800, 0x2000);
    s1.gpr[reg::RSP] = 0x8800;
    set(&mut rr, 1, &s1);
    let _timers = mp.timer_thread();
    let t0 = Instant::now();
    let exit = run_until(&mp, &mut rr, |m| m.read_u32(DATA).unwrap() == 0x7777);
    assert_eq!(exit, VcpuExit::Stopped);
    assert_eq!(mp.r32(DATA), 0x7777, "the timer interrupt arrived");
    assert!(t0.elapsed() >= Duration::from_millis(20));
    // Idle means asleep: far fewer instructions than a spinning loop would run.
    let insns: u64 = rr.vcpus().iter().map(|v| v.insns()).sum();
    assert!(insns < 1000, "{insns} instructions while idle");
}

/// CPUs without an interrupt controller halted with interrupts off can never wake:
/// the group says so instead of sleeping forever.
#[test]
fn a_group_that_can_never_wake_returns_halted() {
    let mp = Mp::new();
    let mut rr = RoundRobin::new(mp.control.clone());
    for _ in 0..2 {
        rr.add(crate::TcgVcpu::new(mp.bus(), mp.control.clone()));
    }
    mp.code(0x1000, |a| {
        a.inc(dword_ptr(DATA as u32))?;
        a.cli()?;
        a.hlt()
    });
    set(&mut rr, 0, &pm_state(0xfee0_0900, 0x1000));
    set(&mut rr, 1, &pm_state(0xfee0_0800, 0x1000));
    let exit = run_until(&mp, &mut rr, |_| false);
    assert_eq!(exit, VcpuExit::Halted);
    assert_eq!(mp.r32(DATA), 2, "each CPU ran the code once");
}

// The same tests with blocks compiled by the JIT.
jit_variants!(
    init_and_sipi_start_the_second_cpu_on_the_same_thread,
    code_one_cpu_rewrites_is_retranslated_for_the_other,
    pause_gives_way_to_the_cpu_being_waited_for,
    idle_group_sleeps_until_a_timer_interrupt,
    a_group_that_can_never_wake_returns_halted,
);

/// A vCPU that counts the blocks it runs chained in host code (made with debug
/// logging: the run summary reports them) goes on counting in its group's cache.
#[test]
fn a_vcpu_counting_chains_counts_them_in_its_group() {
    let mut mp = Mp::new();
    let mut cpu = mp.cpu(0);
    cpu.set_backend(crate::Backend::Jit);
    cpu.set_warmup(0);
    cpu.set_count_chains(true);
    let mut rr = RoundRobin::new(mp.control.clone());
    rr.add(cpu);
    mp.code(0x1000, |a| {
        let mut l = a.create_label();
        a.mov(ecx, 1000u32)?;
        a.set_label(&mut l)?;
        a.dec(ecx)?;
        a.jnz(l)?;
        a.mov(dword_ptr(DATA as u32), 1u32)?;
        a.cli()?;
        a.hlt()
    });
    set(&mut rr, 0, &pm_state(0xfee0_0900, 0x1000));
    run_until(&mp, &mut rr, |m| m.read_u32(DATA).unwrap() == 1);
    assert_eq!(mp.r32(DATA), 1);
    let v = rr.vcpu(0).expect("vCPU");
    assert!(v.stats.jit_chained > 900, "{:?}", v.stats);
}
