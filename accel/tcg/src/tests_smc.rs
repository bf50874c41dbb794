//! Self-modifying code through the whole run loop with the real x86 translator: a
//! write into the block being run, into a block linked to itself (chained under the
//! JIT), and through a second linear mapping of the code's physical page; and code
//! remapped under an indirect call (the jump cache must not keep the old block), and
//! code a device writes (DMA).
//! Each runs with the interpreter and with the JIT.

use crate::tests_apic::{pm_state, Mp, DATA};
use crate::vcpu::TcgVcpu;
use iced_x86::code_asm::*;
use vireo_core::cpu::{ctl, reg};
use vireo_core::{Vcpu, VcpuExit};

/// Runs flat 32-bit code at 0x1000 (paging per `setup`) until it halts.
fn run(mp: &Mp, setup: impl FnOnce(&mut vireo_core::cpu::CpuState)) -> u32 {
    let mut v = TcgVcpu::new(mp.bus(), mp.control.clone());
    let mut s = pm_state(0xfee0_0900, 0x1000);
    setup(&mut s);
    v.set_state(&s).unwrap();
    assert_eq!(v.run().unwrap(), VcpuExit::Halted);
    assert_eq!(v.state().unwrap().gpr[reg::RCX], 0, "ran to the end");
    mp.r32(DATA)
}

/// `mov byte [at], imm` (7 bytes, absolute address).
fn patch(a: &mut CodeAssembler, at: u32, imm: u32) -> Result<(), IcedError> {
    a.mov(byte_ptr(at), imm)
}

#[test]
fn a_write_into_the_running_block_is_seen_by_the_next_instruction() {
    let mp = Mp::new();
    // 0x1000: patch the immediate of the `mov al, 1` right after (at 0x1007).
    mp.code(0x1000, |a| {
        a.xor(eax, eax)?; // 2 bytes
        a.xor(ecx, ecx)?; // 2 bytes
        patch(a, 0x100c, 7)?; // 7 bytes: 0x1004..0x100b
        a.mov(al, 1u32)?; // 0x100b: B0 01
        a.mov(dword_ptr(DATA as u32), eax)?;
        a.hlt()
    });
    assert_eq!(mp.mem.read_u8(0x100b).unwrap(), 0xb0, "layout");
    assert_eq!(run(&mp, |_| {}), 7);
}

#[test]
fn a_block_linked_to_itself_sees_its_own_patch() {
    let mp = Mp::new();
    // A loop body at 0x1100 that adds its `mov al, imm` to EBX and then patches that
    // immediate: the second pass must add the new value (the block, linked to
    // itself, must be dropped and translated again).
    mp.code(0x1000, |a| {
        a.xor(eax, eax)?;
        a.xor(ebx, ebx)?;
        a.mov(ecx, 3u32)?;
        a.jmp(0x1100u64)
    });
    mp.code(0x1100, |a| {
        a.mov(al, 1u32)?; // 0x1100: B0 01
        a.add(ebx, eax)?;
        a.add(byte_ptr(0x1101u32), 4u32)?; // 1, 5, 9
        a.dec(ecx)?;
        a.jnz(0x1100u64)?;
        a.mov(dword_ptr(DATA as u32), ebx)?;
        a.hlt()
    });
    assert_eq!(run(&mp, |_| {}), 1 + 5 + 9);
}

#[test]
fn a_write_through_an_alias_mapping_reaches_the_code() {
    let mp = Mp::new();
    // 32-bit paging with 4 MiB pages: linear 0 and linear 4 MiB both map physical 0.
    const PD: u64 = 0x10000;
    mp.mem.write_u32(PD, 0x83).unwrap();
    mp.mem.write_u32(PD + 4, 0x83).unwrap();
    mp.code(0x1000, |a| {
        a.xor(eax, eax)?;
        a.xor(ecx, ecx)?;
        patch(a, 0x40_100c, 9)?; // through the alias
        a.mov(al, 1u32)?; // 0x100b
        a.mov(dword_ptr(DATA as u32), eax)?;
        a.hlt()
    });
    let v = run(&mp, |s| {
        s.cr3 = PD;
        s.cr4 |= vireo_x86::mmu::cr4::PSE;
        s.cr0 |= ctl::CR0_PG;
    });
    assert_eq!(v, 9);
}

#[test]
fn an_indirect_call_after_a_remap_runs_the_new_page() {
    let mp = Mp::new();
    const PD: u64 = 0x10000;
    const PT: u64 = 0x11000;
    // Linear 0-4 MiB identity (one 4 MiB page); linear 4 MiB through a page table
    // whose first entry maps physical 0x20000, later 0x21000.
    mp.mem.write_u32(PD, 0x83).unwrap();
    mp.mem.write_u32(PD + 4, (PT | 3) as u32).unwrap();
    mp.mem.write_u32(PT, 0x20003).unwrap();
    mp.code(0x20000, |a| {
        a.mov(eax, 1u32)?;
        a.ret()
    });
    mp.code(0x21000, |a| {
        a.mov(eax, 2u32)?;
        a.ret()
    });
    mp.code(0x1000, |a| {
        a.xor(ecx, ecx)?;
        a.mov(ebx, 0x40_0000u32)?;
        a.call(ebx)?;
        a.mov(esi, eax)?;
        a.mov(dword_ptr(PT as u32), 0x21003u32)?;
        a.invlpg(byte_ptr(0x40_0000u32))?;
        a.call(ebx)?;
        a.add(esi, eax)?;
        a.mov(dword_ptr(DATA as u32), esi)?;
        a.hlt()
    });
    let v = run(&mp, |s| {
        s.cr3 = PD;
        s.cr4 |= vireo_x86::mmu::cr4::PSE;
        s.cr0 |= ctl::CR0_PG;
    });
    assert_eq!(v, 1 + 2);
}

#[test]
fn code_written_by_a_device_is_translated_again() {
    let mp = Mp::new();
    // An endless loop storing its `mov al, imm` into DATA.
    mp.code(0x1000, |a| {
        a.xor(eax, eax)?;
        a.xor(ecx, ecx)?;
        a.jmp(0x1100u64)
    });
    mp.code(0x1100, |a| {
        a.mov(al, 1u32)?; // 0x1100: B0 01
        a.mov(dword_ptr(DATA as u32), eax)?;
        a.jmp(0x1100u64)
    });
    let mut v = TcgVcpu::new(mp.bus(), mp.control.clone());
    v.set_state(&pm_state(0xfee0_0900, 0x1000)).unwrap();
    v.set_insn_limit(Some(v.insns() + 1000));
    assert_eq!(v.run().unwrap(), VcpuExit::Stopped);
    assert_eq!(mp.r32(DATA), 1);
    // A device (DMA, through `GuestMemory::write`) patches the immediate while the
    // vCPU is out of `run`; the cached (and, under the JIT, self-linked) block must
    // not run again.
    mp.mem.write(0x1101, &[6]).unwrap();
    v.set_insn_limit(Some(v.insns() + 1000));
    assert_eq!(v.run().unwrap(), VcpuExit::Stopped);
    assert_eq!(mp.r32(DATA), 6);
}

#[test]
fn data_beside_code_leaves_the_code_alone() {
    let mp = Mp::new();
    // A loop at 0x1100 that counts in a word at 0x1800, on its own code page (a
    // kernel's init data next to its init text): 200 writes, no block dropped.
    mp.code(0x1000, |a| {
        a.xor(ecx, ecx)?;
        a.mov(edx, 200u32)?;
        a.jmp(0x1100u64)
    });
    mp.code(0x1100, |a| {
        a.add(dword_ptr(0x1800u32), 1u32)?;
        a.dec(edx)?;
        a.jnz(0x1100u64)?;
        a.mov(eax, dword_ptr(0x1800u32))?;
        a.mov(dword_ptr(DATA as u32), eax)?;
        a.hlt()
    });
    let mut v = TcgVcpu::new(mp.bus(), mp.control.clone());
    v.set_state(&pm_state(0xfee0_0900, 0x1000)).unwrap();
    assert_eq!(v.run().unwrap(), VcpuExit::Halted);
    assert_eq!(mp.r32(DATA), 200);
    let stats = v.cache_stats();
    assert_eq!(stats.invalidated, 0, "{stats:?}");
    assert!(stats.inserted <= 4, "{stats:?}");
}

#[test]
fn a_code_write_drops_only_the_blocks_it_reaches() {
    let mp = Mp::new();
    // Two functions on the page of the loop calling them; the loop patches the
    // second one's immediate each time round: the second is translated again every
    // time, the first and the loop itself only once.
    mp.code(0x1000, |a| {
        a.xor(ecx, ecx)?;
        a.xor(ebx, ebx)?;
        a.mov(edx, 4u32)?;
        a.jmp(0x1100u64)
    });
    mp.code(0x1100, |a| {
        a.mov(esi, 0x1400u32)?;
        a.call(esi)?; // ebx += 10
        a.mov(esi, 0x1600u32)?;
        a.call(esi)?; // ebx += imm (1, 2, 3, 4)
        a.add(byte_ptr(0x1602u32), 1u32)?;
        a.dec(edx)?;
        a.jnz(0x1100u64)?;
        a.mov(dword_ptr(DATA as u32), ebx)?;
        a.hlt()
    });
    mp.code(0x1400, |a| {
        a.add(ebx, 10u32)?;
        a.ret()
    });
    mp.code(0x1600, |a| {
        a.add(ebx, 1u32)?; // 0x1600: 83 C3 01
        a.ret()
    });
    assert_eq!(mp.mem.read_u8(0x1602).unwrap(), 1, "layout");
    let mut v = TcgVcpu::new(mp.bus(), mp.control.clone());
    v.set_state(&pm_state(0xfee0_0900, 0x1000)).unwrap();
    assert_eq!(v.run().unwrap(), VcpuExit::Halted);
    assert_eq!(mp.r32(DATA), 4 * 10 + 1 + 2 + 3 + 4);
    // The function at 0x1600 was dropped after each patch (four times); nothing
    // else was.
    let stats = v.cache_stats();
    assert_eq!(stats.invalidated, 4, "{stats:?}");
}

/// `-perfmap`: compiled blocks are named in `/tmp/perf-<pid>.map` by guest address,
/// and the code they share as `vireo:shared`.
#[test]
fn the_perf_map_names_compiled_blocks() {
    crate::perfmap::enable();
    assert!(crate::perfmap::enabled());
    let mp = Mp::new();
    mp.code(0x7340, |a| {
        a.xor(ecx, ecx)?;
        a.mov(dword_ptr(DATA as u32), 0x55u32)?;
        a.hlt()
    });
    let mut v = mp.jit_cpu(0xfee0_0900, 0x7340);
    assert_eq!(v.run().unwrap(), VcpuExit::Halted);
    let map = std::fs::read_to_string(crate::perfmap::path()).unwrap();
    let line = map
        .lines()
        .find(|l| l.ends_with(" guest:0:7340"))
        .unwrap_or_else(|| panic!("no line for the block in:\n{map}"));
    let mut f = line.split(' ');
    let start = usize::from_str_radix(f.next().unwrap(), 16).unwrap();
    let size = usize::from_str_radix(f.next().unwrap(), 16).unwrap();
    assert!(start != 0 && size > 0, "{line}");
    // The code blocks share (entry, return, table lookup) is named too.
    assert!(
        map.lines().any(|l| l.ends_with(" vireo:shared")),
        "no line for the shared code in:\n{map}"
    );
    let _ = std::fs::remove_file(crate::perfmap::path());
}

jit_variants!(
    code_written_by_a_device_is_translated_again,
    an_indirect_call_after_a_remap_runs_the_new_page,
    a_write_into_the_running_block_is_seen_by_the_next_instruction,
    a_block_linked_to_itself_sees_its_own_patch,
    a_write_through_an_alias_mapping_reaches_the_code,
    data_beside_code_leaves_the_code_alone,
    a_code_write_drops_only_the_blocks_it_reaches,
);
