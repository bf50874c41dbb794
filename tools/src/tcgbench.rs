//! `tcg-speed`: guest instructions per second of the TCG engine on CPU-bound loops,
//! with each backend (the IR interpreter and the x86-64 JIT).

use iced_x86::code_asm::*;
use std::sync::Arc;
use std::time::Instant;
use vireo_core::cpu::{ctl, sreg, CpuState, Segment};
use vireo_core::{A20Gate, Bus, GuestMemory, MachineControl, SystemBus, Vcpu, VcpuExit};

const CODE: u64 = 0x10_0000;

/// A 64-bit loop of `iters` iterations; returns the code bytes.
fn alu_loop(iters: u32) -> Result<Vec<u8>, IcedError> {
    let mut a = CodeAssembler::new(64)?;
    let mut top = a.create_label();
    a.mov(ecx, iters)?;
    a.xor(eax, eax)?;
    a.set_label(&mut top)?;
    a.add(eax, ecx)?;
    a.xor(edx, eax)?;
    a.rol(edx, 3)?;
    a.sub(edx, 7)?;
    a.dec(ecx)?;
    a.jnz(top)?;
    a.hlt()?;
    a.assemble(CODE)
}

/// A loop that sums a 1 MiB array with 64-bit loads, `passes` times.
fn mem_loop(passes: u32) -> Result<Vec<u8>, IcedError> {
    let mut a = CodeAssembler::new(64)?;
    let (mut outer, mut inner) = (a.create_label(), a.create_label());
    a.mov(r8d, passes)?;
    a.xor(eax, eax)?;
    a.set_label(&mut outer)?;
    a.mov(rsi, 0x20_0000u64)?;
    a.mov(ecx, 0x2_0000u32)?;
    a.set_label(&mut inner)?;
    a.add(rax, qword_ptr(rsi))?;
    a.add(rsi, 8)?;
    a.dec(ecx)?;
    a.jnz(inner)?;
    a.dec(r8d)?;
    a.jnz(outer)?;
    a.hlt()?;
    a.assemble(CODE)
}

fn long_mode_state(mem: &GuestMemory) -> CpuState {
    // Identity map of the first 1 GiB with 2 MiB pages at 0x1000.
    let _ = mem.write_u64(0x1000, 0x2003);
    let _ = mem.write_u64(0x2000, 0x3003);
    for i in 0..512u64 {
        let _ = mem.write_u64(0x3000 + i * 8, (i << 21) | 0x83);
    }
    let mut s = CpuState::reset();
    s.cr0 = ctl::CR0_PE | ctl::CR0_PG | ctl::CR0_ET | ctl::CR0_NE;
    s.cr3 = 0x1000;
    s.cr4 = ctl::CR4_PAE;
    s.efer = ctl::EFER_LME | ctl::EFER_LMA;
    for (i, seg) in s.seg.iter_mut().enumerate() {
        *seg = Segment::flat(if i == sreg::CS { 8 } else { 16 }, i == sreg::CS, true);
    }
    s.rip = CODE;
    s.gpr[4] = 0x8_0000;
    s
}

/// Runs one program to its HLT; returns (instructions, seconds).
fn run(code: &[u8], backend: vireo_tcg::Backend) -> Result<(u64, f64), String> {
    let mem = Arc::new(GuestMemory::new_flat(8 << 20).map_err(|e| e.to_string())?);
    mem.write(CODE, code).map_err(|e| e.to_string())?;
    let state = long_mode_state(&mem);
    let bus = SystemBus {
        mem,
        pio: Arc::new(Bus::new("pio")),
        mmio: Arc::new(Bus::new("mmio")),
        a20: A20Gate::new(),
    };
    let mut vcpu = vireo_tcg::TcgVcpu::new(bus, MachineControl::new());
    vcpu.set_backend(backend);
    vcpu.set_state(&state).map_err(|e| e.to_string())?;
    let t = Instant::now();
    loop {
        match vcpu.run().map_err(|e| e.to_string())? {
            VcpuExit::Halted => break,
            VcpuExit::Failed(m) | VcpuExit::Unsupported(m) => return Err(m),
            VcpuExit::Shutdown => return Err("triple fault".into()),
            VcpuExit::Stopped => {}
        }
    }
    Ok((vcpu.insns(), t.elapsed().as_secs_f64()))
}

/// Prints instructions per second for each micro-benchmark.
pub fn run_all() -> Result<(), String> {
    let progs: [(&str, Vec<u8>); 2] = [
        ("alu loop", alu_loop(20_000_000).map_err(|e| e.to_string())?),
        (
            "memory loop (1 MiB array)",
            mem_loop(40).map_err(|e| e.to_string())?,
        ),
    ];
    println!(
        "{:<28} {:>14} {:>9} {:>9} {:>9} {:>9}",
        "program", "instructions", "s interp", "MIPS", "s jit", "MIPS"
    );
    for (name, code) in progs {
        let (n, secs) = run(&code, vireo_tcg::Backend::Interp)?;
        let (nj, secs_j) = run(&code, vireo_tcg::Backend::Jit)?;
        if nj != n {
            return Err(format!(
                "{name}: the JIT ran {nj} instructions, the interpreter {n}"
            ));
        }
        println!(
            "{name:<28} {n:>14} {secs:>9.3} {:>9.1} {secs_j:>9.3} {:>9.1}",
            n as f64 / secs / 1e6,
            n as f64 / secs_j / 1e6
        );
    }
    Ok(())
}
