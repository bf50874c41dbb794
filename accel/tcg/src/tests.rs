//! Run-loop tests with a toy guest: a translator for a handful of one-byte x86-like
//! opcodes, so the engine (cache, links, self-modifying code, halts, interrupts,
//! faults, kicks) is tested without the real translator.

use crate::frontend::TranslateError;
use crate::irq::PicInterrupts;
use crate::vcpu::TcgVcpu;
use std::sync::Arc;
use vireo_core::cpu::{flags, reg, sreg, Segment};
use vireo_core::ir::{BinOp, Block, Builder, ExitKind, Global, MmuIdx, Size};
use vireo_core::{
    A20Gate, Bus, CpuState, GuestMemory, MachineControl, StopReason, SystemBus, Vcpu, VcpuExit,
};
use vireo_devices::pic::{PicPair, PicPorts, SharedPic};
use vireo_x86::X86Cpu;

/// The toy encoding (real-mode CS-relative PCs):
/// `40` inc ax · `EB rel8` jmp · `C6 lo hi imm8` mov byte [lo:hi], imm8 · `FB` sti ·
/// `FA` cli · `F4` hlt · `CF` iret (within CS 0) · anything else raises #UD.
fn toy_translate(cpu: &mut X86Cpu, max: usize) -> Result<Block, TranslateError> {
    let start = cpu.state.rip;
    let cs_base = cpu.state.seg[sreg::CS].base;
    let mut b = Builder::new(start);
    let mut pc = start;
    let byte = |cpu: &mut X86Cpu, pc: u64| -> Result<u8, TranslateError> {
        vireo_x86::mmu::read(cpu, cs_base + pc, Size::B8, MmuIdx::Kernel)
            .map(|v| v as u8)
            .map_err(TranslateError::Fault)
    };
    for _ in 0..max {
        let op = byte(cpu, pc)?;
        let len = match op {
            0xEB => 2,
            0xC6 => 4,
            _ => 1,
        };
        b.insn_start(pc, len);
        let next = pc + u64::from(len);
        match op {
            0x40 => {
                let ax = b.get(Global::Gpr(0));
                let r = b.bini(BinOp::Add, Size::B16, ax, 1);
                b.set(Global::Gpr(0), r);
            }
            0xEB => {
                let rel = byte(cpu, pc + 1)? as i8;
                let target = next.wrapping_add(rel as u64) & 0xffff;
                let t = b.konst(target);
                b.set(Global::Pc, t);
                b.exit(ExitKind::Jump(target));
                return Ok(b.finish());
            }
            0xC6 => {
                let addr = u64::from(byte(cpu, pc + 1)?) | u64::from(byte(cpu, pc + 2)?) << 8;
                let imm = byte(cpu, pc + 3)?;
                let ds = b.get(Global::SegBase(sreg::DS as u8));
                let a = b.bini(BinOp::Add, Size::B64, ds, addr);
                let v = b.konst(u64::from(imm));
                b.store(a, v, Size::B8, MmuIdx::Kernel);
            }
            0xFB | 0xFA => {
                // STI / CLI on the non-arithmetic flags (no interrupt shadow).
                let f = b.get(Global::Flags);
                let r = if op == 0xFB {
                    b.bini(BinOp::Or, Size::B64, f, flags::IF)
                } else {
                    b.bini(BinOp::And, Size::B64, f, !flags::IF)
                };
                b.set(Global::Flags, r);
                let t = b.konst(next);
                b.set(Global::Pc, t);
                b.exit(ExitKind::Sync);
                return Ok(b.finish());
            }
            0xF4 => {
                let t = b.konst(next);
                b.set(Global::Pc, t);
                b.exit(ExitKind::Halt);
                return Ok(b.finish());
            }
            0xCF => {
                // IRET within CS 0: pop IP, skip CS, pop FLAGS. It may set IF: a
                // `Sync` exit, as every such instruction of the real translator.
                let sp = b.get(Global::Gpr(reg::RSP as u8));
                let ss = b.get(Global::SegBase(sreg::SS as u8));
                let a = b.bin(BinOp::Add, Size::B64, ss, sp);
                let ip = b.load(a, Size::B16, false, MmuIdx::Kernel);
                let a4 = b.bini(BinOp::Add, Size::B64, a, 4);
                let fl = b.load(a4, Size::B16, false, MmuIdx::Kernel);
                let sp6 = b.bini(BinOp::Add, Size::B16, sp, 6);
                b.set(Global::Gpr(reg::RSP as u8), sp6);
                b.set(Global::Pc, ip);
                b.set(Global::Flags, fl);
                b.exit(ExitKind::Sync);
                return Ok(b.finish());
            }
            _ => {
                b.raise(6, None);
                return Ok(b.finish());
            }
        }
        pc = next;
    }
    let t = b.konst(pc);
    b.set(Global::Pc, t);
    b.exit(ExitKind::Jump(pc));
    Ok(b.finish())
}

/// A vCPU on 2 MiB of RAM with the toy translator, CS=DS=SS=0, SP=0x8000, IP=0x100.
struct Toy {
    vcpu: TcgVcpu,
    mem: Arc<GuestMemory>,
    control: Arc<MachineControl>,
}

impl Toy {
    fn new(code: &[u8]) -> Toy {
        let mem = Arc::new(GuestMemory::new_flat(2 << 20).unwrap());
        mem.write(0x100, code).unwrap();
        let control = MachineControl::new();
        let bus = SystemBus {
            mem: mem.clone(),
            pio: Arc::new(Bus::new("pio")),
            mmio: Arc::new(Bus::new("mmio")),
            a20: A20Gate::new(),
        };
        let mut vcpu = TcgVcpu::new(bus, control.clone());
        vcpu.set_translator(toy_translate);
        let mut s = CpuState::reset();
        for (i, seg) in s.seg.iter_mut().enumerate() {
            *seg = Segment::real_mode(0, i == sreg::CS);
        }
        s.rip = 0x100;
        s.gpr[reg::RSP] = 0x8000;
        vcpu.set_state(&s).unwrap();
        Toy { vcpu, mem, control }
    }

    fn ax(&mut self) -> u64 {
        self.vcpu.state().unwrap().gpr[reg::RAX]
    }
}

/// Translations for interpreted warm-up runs a block run many times gets.
fn jit_warmups(v: &TcgVcpu) -> u64 {
    match v.backend() {
        crate::Backend::Jit => u64::from(v.warmup()),
        crate::Backend::Interp => 0,
    }
}

#[test]
fn loop_runs_through_links_until_the_instruction_limit() {
    // inc ax; inc ax; jmp -4
    let mut t = Toy::new(&[0x40, 0x40, 0xEB, 0xFC]);
    t.vcpu.set_insn_limit(Some(3000));
    assert_eq!(t.vcpu.run().unwrap(), VcpuExit::Stopped);
    assert_eq!(t.vcpu.insns(), 3000);
    assert_eq!(t.ax(), 2000);
    // Under the JIT, first translated for one interpreted run (the warm-up).
    let s = t.vcpu.stats;
    assert_eq!(
        (s.translations - s.warmups, s.warmups),
        (1, jit_warmups(&t.vcpu))
    );
    let cs = t.vcpu.cache_stats();
    // (Compiled in the background, the block runs in the interpreter until its code
    // is in: the counts depend on the compiler thread's pace.)
    if t.vcpu.backend() == crate::Backend::Jit && !t.vcpu.compiles_in_background() {
        // The block really ran as host code, which went on in itself: the run loop
        // started it once after the warm-up (compiled code does not count the passes
        // it chains unless asked to).
        assert_eq!((cs.jit_compiled, cs.jit_failed), (1, 0));
        assert!(t.vcpu.jit_bytes() > 0);
        assert_eq!(s.blocks, jit_warmups(&t.vcpu) + 1, "{s:?}");
        // Counted: every pass.
        let mut t = Toy::new(&[0x40, 0x40, 0xEB, 0xFC]);
        t.vcpu.set_count_chains(true);
        t.vcpu.set_insn_limit(Some(3000));
        assert_eq!(t.vcpu.run().unwrap(), VcpuExit::Stopped);
        assert_eq!(t.ax(), 2000);
        let s = t.vcpu.stats;
        assert_eq!(s.blocks, 1000);
        assert_eq!(s.jit_chained, 999 - jit_warmups(&t.vcpu), "{s:?}");
    } else if t.vcpu.backend() == crate::Backend::Jit {
        // At most the one block was compiled, and it went on in itself.
        assert!(cs.jit_compiled <= 1 && cs.jit_failed == 0, "{cs:?}");
        assert!(s.blocks <= 1000, "{s:?}");
    } else {
        assert_eq!(cs.jit_compiled, 0);
        assert_eq!(s.blocks, 1000);
        assert!(s.chained >= 998, "{s:?}");
    }
}

/// A translator whose block reads a temp it never made (a bug in it).
fn bad_translate(cpu: &mut X86Cpu, _max: usize) -> Result<Block, TranslateError> {
    let mut b = Builder::new(cpu.state.rip);
    b.insn_start(cpu.state.rip, 1);
    b.push(vireo_core::ir::Op::Set {
        dst: Global::Gpr(0),
        src: vireo_core::ir::Temp(7),
    });
    b.exit(ExitKind::Halt);
    Ok(b.finish())
}

/// An invalid block never runs: the engine stops and says why.
#[test]
fn an_invalid_block_stops_the_engine() {
    let mut t = Toy::new(&[0x40]);
    t.vcpu.set_translator(bad_translate);
    match t.vcpu.run().unwrap() {
        VcpuExit::Failed(why) => assert!(why.contains("invalid block"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(t.ax(), 0);
}

#[test]
fn one_instruction_blocks_and_cache_flushes() {
    let mut t = Toy::new(&[0x40, 0x40, 0x40, 0xF4]);
    t.vcpu.set_max_block_insns(1);
    t.vcpu.set_cache_limits(crate::cache::Limits {
        blocks: 2,
        ops: 1000,
    });
    assert_eq!(t.vcpu.run().unwrap(), VcpuExit::Halted);
    assert_eq!(t.ax(), 3);
    assert_eq!(t.vcpu.stats.translations, 4);
    assert!(t.vcpu.cache_stats().flushes >= 1);
    assert!(t.vcpu.cached_blocks() <= 2);
}

/// Under the JIT a new block runs interpreted `warmup` times (its IR dropped after
/// each run) and is compiled when it comes back after that; 0 compiles it at once.
#[test]
fn new_blocks_warm_up_in_the_interpreter() {
    for warmup in [0u32, 1, 2, 3] {
        // Run once: `inc ax; inc ax; hlt`.
        let mut t = Toy::new(&[0x40, 0x40, 0xF4]);
        t.vcpu.set_backend(crate::Backend::Jit);
        t.vcpu.set_warmup(warmup);
        assert_eq!(t.vcpu.run().unwrap(), VcpuExit::Halted);
        assert_eq!(t.ax(), 2);
        let cs = t.vcpu.cache_stats();
        assert_eq!(cs.jit_compiled, u64::from(warmup == 0), "warmup {warmup}");
        assert_eq!(t.vcpu.stats.warmups, u64::from(warmup > 0));
        // Nothing of the IR kept, the shell still cached.
        assert_eq!((t.vcpu.cached_ops(), t.vcpu.cached_blocks()), (0, 1));
        // A loop: `inc ax; inc ax; jmp -4`, 1000 passes.
        let mut t = Toy::new(&[0x40, 0x40, 0xEB, 0xFC]);
        t.vcpu.set_backend(crate::Backend::Jit);
        t.vcpu.set_warmup(warmup);
        t.vcpu.set_insn_limit(Some(3000));
        assert_eq!(t.vcpu.run().unwrap(), VcpuExit::Stopped);
        assert_eq!(t.ax(), 2000);
        let s = t.vcpu.stats;
        assert_eq!(
            (s.translations, s.warmups),
            (u64::from(warmup) + 1, u64::from(warmup))
        );
        let cs = t.vcpu.cache_stats();
        assert_eq!((cs.jit_compiled, cs.jit_failed), (1, 0), "warmup {warmup}");
        assert_eq!(t.vcpu.cached_ops(), 0);
        // After the warm-up the passes ran in host code, chained: the run loop
        // started the block once more.
        assert_eq!(s.blocks, u64::from(warmup) + 1, "{s:?}");
    }
}

#[test]
fn self_modifying_code_is_retranslated() {
    // 0x100: mov byte [0x105], 0x40 (turns the F4 at 0x105 into inc ax);
    // 0x104: inc ax; 0x105: hlt -> inc ax; 0x106: hlt
    let mut t = Toy::new(&[0xC6, 0x05, 0x01, 0x40, 0x40, 0xF4, 0xF4]);
    assert_eq!(t.vcpu.run().unwrap(), VcpuExit::Halted);
    assert_eq!(t.ax(), 2);
    assert_eq!(t.vcpu.state().unwrap().rip, 0x107);
    assert_eq!(t.vcpu.cache_stats().invalidated, 1);
    assert_eq!(t.vcpu.stats.translations, 2);
}

#[test]
fn stale_code_after_set_state_is_not_run() {
    let mut t = Toy::new(&[0x40, 0xF4]);
    assert_eq!(t.vcpu.run().unwrap(), VcpuExit::Halted);
    // New code behind the engine's back, then a new state: no stale block runs.
    t.mem.write(0x100, &[0x40, 0x40, 0xF4]).unwrap();
    let mut s = t.vcpu.state().unwrap();
    s.rip = 0x100;
    s.gpr[reg::RAX] = 0;
    s.events.halted = false;
    t.vcpu.set_state(&s).unwrap();
    assert_eq!(t.vcpu.run().unwrap(), VcpuExit::Halted);
    assert_eq!(t.ax(), 2);
}

#[test]
fn faults_go_through_the_ivt() {
    // 0x100: (bad) -> #UD; IVT[6] = 0000:0200 with inc ax; hlt.
    let mut t = Toy::new(&[0x0F]);
    t.mem.write_u16(6 * 4, 0x200).unwrap();
    t.mem.write(0x200, &[0x40, 0xF4]).unwrap();
    assert_eq!(t.vcpu.run().unwrap(), VcpuExit::Halted);
    let s = t.vcpu.state().unwrap();
    assert_eq!(s.gpr[reg::RAX], 1);
    assert_eq!(s.rip, 0x202);
    assert_eq!(s.gpr[reg::RSP], 0x8000 - 6);
    // The frame: IP of the faulting instruction, CS, FLAGS.
    assert_eq!(t.mem.read_u16(0x8000 - 6).unwrap(), 0x100);
    assert_eq!(t.vcpu.stats.exceptions, 1);
}

#[test]
fn trap_flag_single_steps_through_the_ivt() {
    // TF set: inc ax; inc ax; jmp +0; inc ax; hlt. IVT[1] = 0000:0200 with iret (the
    // handler runs with TF clear, IRET restores it). One #DB after each instruction
    // but HLT; the first trap returns to 0x101.
    let mut t = Toy::new(&[0x40, 0x40, 0xEB, 0x00, 0x40, 0xF4]);
    t.mem.write_u16(4, 0x200).unwrap();
    t.mem.write(0x200, &[0xCF]).unwrap();
    let mut s = t.vcpu.state().unwrap();
    s.rflags |= flags::TF;
    t.vcpu.set_state(&s).unwrap();
    assert_eq!(t.vcpu.run().unwrap(), VcpuExit::Halted);
    let s = t.vcpu.state().unwrap();
    assert_eq!(s.gpr[reg::RAX], 3);
    assert_eq!(s.rip, 0x106);
    assert_eq!(t.vcpu.stats.exceptions, 4);
    assert_ne!(s.dr[4] & (1 << 14), 0, "DR6.BS");
    // The last frame (below the final SP): IP after the third inc, FLAGS with TF.
    assert_eq!(t.mem.read_u16(0x8000 - 6).unwrap(), 0x105);
    assert_ne!(
        u64::from(t.mem.read_u16(0x8000 - 2).unwrap()) & flags::TF,
        0
    );
    // Without TF the same code runs in one block and takes no trap.
    let mut t = Toy::new(&[0x40, 0x40, 0xEB, 0x00, 0x40, 0xF4]);
    assert_eq!(t.vcpu.run().unwrap(), VcpuExit::Halted);
    assert_eq!(t.vcpu.stats.exceptions, 0);
}

#[test]
fn halt_with_interrupts_disabled_or_no_controller_returns_halted() {
    let mut t = Toy::new(&[0xF4]);
    assert_eq!(t.vcpu.run().unwrap(), VcpuExit::Halted);
    assert!(t.vcpu.state().unwrap().events.halted);
    // Still halted on the next call.
    assert_eq!(t.vcpu.run().unwrap(), VcpuExit::Halted);
}

#[test]
fn stop_requests_and_kicks_stop_a_running_cpu() {
    let mut t = Toy::new(&[0x40, 0xEB, 0xFD]);
    let kicker = t.vcpu.kicker();
    let h = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(30));
        kicker.kick();
    });
    assert_eq!(t.vcpu.run().unwrap(), VcpuExit::Stopped);
    h.join().unwrap();
    assert!(t.ax() > 0);
    t.control.request_stop(StopReason::Quit);
    assert_eq!(t.vcpu.run().unwrap(), VcpuExit::Stopped);
}

/// An 8259A pair initialised as a PC BIOS does (vectors 0x08 and 0x70), IRQ 0 unmasked.
pub(crate) fn pc_pic() -> SharedPic {
    let pic = PicPair::new_shared();
    let mut p = pic.lock();
    for (ports, off, v) in [
        (PicPorts::Master, 0, 0x11),
        (PicPorts::Master, 1, 0x08),
        (PicPorts::Master, 1, 0x04),
        (PicPorts::Master, 1, 0x01),
        (PicPorts::Slave, 0, 0x11),
        (PicPorts::Slave, 1, 0x70),
        (PicPorts::Slave, 1, 0x02),
        (PicPorts::Slave, 1, 0x01),
        (PicPorts::Master, 1, 0xfe),
    ] {
        p.write_port(ports, off, v);
    }
    drop(p);
    pic
}

#[test]
fn halted_cpu_wakes_for_an_interrupt_from_another_thread() {
    // 0x100: sti; hlt; inc ax; hlt. IRQ 0 -> vector 8 -> 0000:0300: inc ax; inc ax; iret.
    let (mut t, pic) = toy_with_pic(&[0xFB, 0xF4, 0x40, 0xF4]);
    t.mem.write_u16(8 * 4, 0x300).unwrap();
    t.mem.write(0x300, &[0x40, 0x40, 0xCF]).unwrap();
    let raiser = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(30));
        pic.lock().set_irq(0, true);
    });
    // sti; hlt; (IRQ 0) inc ax; inc ax; iret; inc ax; hlt: the last HLT has no IRQ
    // left to wake it (not acknowledged... the PIC holds it in service), so the CPU
    // sleeps until the kick below.
    let kicker = t.vcpu.kicker();
    let waiter = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(300));
        kicker.kick();
    });
    assert_eq!(t.vcpu.run().unwrap(), VcpuExit::Stopped);
    raiser.join().unwrap();
    waiter.join().unwrap();
    assert_eq!(t.vcpu.stats.interrupts, 1);
    let s = t.vcpu.state().unwrap();
    assert_eq!(
        s.gpr[reg::RAX],
        3,
        "the handler ran, then the code after HLT"
    );
    assert_eq!(s.rip, 0x104);
    assert!(s.events.halted);
    // The frame returned after the first HLT.
    assert_eq!(t.mem.read_u16(0x8000 - 6).unwrap(), 0x102);
}

/// A toy vCPU with the PC-style 8259A pair (IRQ 0 unmasked, vector 8) connected.
fn toy_with_pic(code: &[u8]) -> (Toy, SharedPic) {
    let mut t = Toy::new(code);
    let pic = pc_pic();
    let ic = Arc::new(PicInterrupts(pic.clone()));
    let fresh = TcgVcpu::new(
        SystemBus {
            mem: t.mem.clone(),
            pio: Arc::new(Bus::new("pio")),
            mmio: Arc::new(Bus::new("mmio")),
            a20: A20Gate::new(),
        },
        t.control.clone(),
    );
    let backend = t.vcpu.backend();
    t.vcpu = std::mem::replace(&mut t.vcpu, fresh).with_interrupts(ic);
    t.vcpu.set_backend(backend);
    (t, pic)
}

#[test]
fn a_pending_interrupt_waits_for_sti_without_stopping_chains() {
    // IF clear, IRQ 0 raised: inc ax x3, sti, inc ax, cli, hlt. IVT[8] = 0000:0300:
    // iret.
    let (mut t, pic) = toy_with_pic(&[0x40, 0x40, 0x40, 0xFB, 0x40, 0xFA, 0xF4]);
    t.mem.write_u16(8 * 4, 0x300).unwrap();
    t.mem.write(0x300, &[0xCF]).unwrap();
    pic.lock().set_irq(0, true);
    assert_eq!(t.vcpu.run().unwrap(), VcpuExit::Halted);
    assert_eq!(t.vcpu.stats.interrupts, 1);
    // Taken at the first boundary after STI (the toy's STI has no shadow).
    assert_eq!(t.mem.read_u16(0x8000 - 6).unwrap(), 0x104);
    assert_eq!(t.ax(), 4);

    // A loop with IF clear and the request pending: compiled code chains on.
    let (mut t, pic) = toy_with_pic(&[0x40, 0x40, 0xEB, 0xFC]);
    pic.lock().set_irq(0, true);
    t.vcpu.set_insn_limit(Some(3000));
    assert_eq!(t.vcpu.run().unwrap(), VcpuExit::Stopped);
    assert_eq!(t.ax(), 2000);
    assert_eq!(t.vcpu.stats.interrupts, 0);
    if t.vcpu.backend() == crate::Backend::Jit && !t.vcpu.compiles_in_background() {
        // Started by the run loop only while warming up, then once.
        let s = t.vcpu.stats;
        assert_eq!(s.blocks, jit_warmups(&t.vcpu) + 1, "{s:?}");
    }
}

// The same tests with blocks compiled by the JIT.
jit_variants!(
    an_invalid_block_stops_the_engine,
    a_pending_interrupt_waits_for_sti_without_stopping_chains,
    loop_runs_through_links_until_the_instruction_limit,
    one_instruction_blocks_and_cache_flushes,
    self_modifying_code_is_retranslated,
    stale_code_after_set_state_is_not_run,
    faults_go_through_the_ivt,
    trap_flag_single_steps_through_the_ivt,
    halt_with_interrupts_disabled_or_no_controller_returns_halted,
    stop_requests_and_kicks_stop_a_running_cpu,
    halted_cpu_wakes_for_an_interrupt_from_another_thread,
);
