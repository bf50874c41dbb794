//! Calls and returns through the whole run loop with the real x86 translator: under
//! the JIT a call runs as a host `call` and a return whose call did so as a host
//! `ret` (see `vireo_jit`'s exits); whatever the guest does with its stack, the
//! code that runs after a return is the code at the address it returned to. Each
//! runs with the interpreter and with the JIT.

use crate::tests_apic::{pm_state, Mp, DATA};
use crate::vcpu::TcgVcpu;
use iced_x86::code_asm::*;
use vireo_core::cpu::reg;
use vireo_core::{Vcpu, VcpuExit};

/// Runs flat 32-bit code at 0x1000 until it halts; returns EAX.
fn run(mp: &Mp) -> u32 {
    let mut v = TcgVcpu::new(mp.bus(), mp.control.clone());
    v.set_state(&pm_state(0xfee0_0900, 0x1000)).unwrap();
    assert_eq!(v.run().unwrap(), VcpuExit::Halted);
    v.state().unwrap().gpr[reg::RAX] as u32
}

/// Recursion deeper than the host frames kept (64): `sum(n) = n + sum(n - 1)`,
/// three times over (the second and third runs go through linked code).
#[test]
fn deep_recursion_returns_to_each_caller() {
    let mp = Mp::new();
    mp.code(0x1000, |a| {
        a.xor(esi, esi)?;
        a.mov(edi, 3u32)?;
        a.mov(ecx, 200u32)?; // 0x1007
        a.call(0x1100u64)?;
        a.add(esi, eax)?;
        a.dec(edi)?;
        a.jnz(0x1007u64)?;
        a.mov(eax, esi)?;
        a.hlt()
    });
    // sum: ecx = n; eax = result.
    mp.code(0x1100, |a| {
        a.test(ecx, ecx)?;
        a.jz(0x1120u64)?;
        a.push(ecx)?;
        a.dec(ecx)?;
        a.call(0x1100u64)?;
        a.pop(ecx)?;
        a.add(eax, ecx)?;
        a.ret()
    });
    mp.code(0x1120, |a| {
        a.xor(eax, eax)?;
        a.ret()
    });
    assert_eq!(run(&mp), 3 * (200 * 201 / 2));
}

/// Returns that do not go where their call would have: a callee that replaces its
/// return address, one that returns for its caller too (dropping the caller's
/// frame), and a return without a call (`push` + `ret`).
#[test]
fn returns_elsewhere_go_where_the_stack_says() {
    let mp = Mp::new();
    mp.code(0x1000, |a| {
        a.xor(esi, esi)?;
        a.mov(edi, 20u32)?;
        // 0x1007: the loop.
        a.call(0x1200u64)?; // returns to 0x1300 instead
        a.add(esi, 1000u32)?; // never runs
        a.hlt()
    });
    // 0x1200: replace the return address with 0x1300 (odd EDI) or 0x1340.
    mp.code(0x1200, |a| {
        a.add(esi, 1u32)?;
        a.test(edi, 1u32)?;
        a.jz(0x1220u64)?;
        a.mov(dword_ptr(esp), 0x1300u32)?;
        a.ret()
    });
    mp.code(0x1220, |a| {
        a.mov(dword_ptr(esp), 0x1340u32)?;
        a.ret()
    });
    mp.code(0x1340, |a| {
        a.add(esi, 8u32)?;
        a.jmp(0x1300u64)
    });
    // 0x1300: call f (0x1400), which calls g (0x1480), which returns for both (to
    // 0x1305, f's return address).
    mp.code(0x1300, |a| {
        a.call(0x1400u64)?; // 0x1300, 5 bytes
        a.add(esi, 2u32)?; // 0x1305: g returns here, for f
        a.push(0x1500u32)?; // 0x1308: a return without a call
        a.ret()
    });
    mp.code(0x1400, |a| {
        a.call(0x1480u64)?;
        a.add(esi, 1000u32)?; // never runs: g dropped f's frame
        a.ret()
    });
    mp.code(0x1480, |a| {
        a.add(esp, 4u32)?;
        a.ret()
    });
    mp.code(0x1500, |a| {
        a.add(esi, 4u32)?;
        a.dec(edi)?;
        a.jnz(0x1007u64)?;
        a.mov(eax, esi)?;
        a.hlt()
    });
    assert_eq!(run(&mp), 20 * (1 + 2 + 4) + 10 * 8);
}

/// A callee that leaves the run (a port write the run loop serves, a self-modifying
/// store) before it returns: the return goes on where the guest says.
#[test]
fn a_return_after_the_run_was_left() {
    let mp = Mp::new();
    mp.code(0x1000, |a| {
        a.xor(esi, esi)?;
        a.xor(ecx, ecx)?;
        a.mov(edi, 10u32)?;
        let mut top = a.create_label();
        a.set_label(&mut top)?;
        a.call(0x1100u64)?;
        a.add(esi, eax)?;
        a.dec(edi)?;
        a.jnz(top)?;
        a.mov(dword_ptr(DATA as u32), esi)?;
        a.mov(eax, esi)?;
        a.hlt()
    });
    mp.code(0x1100, |a| {
        a.mov(al, 0x55u32)?;
        a.out(0x80u32, al)?;
        // Patch the immediate of the `mov eax` below (self-modifying code).
        a.mov(byte_ptr(0x1110u32), 3u32)?;
        for _ in 0..4 {
            a.nop()?;
        }
        a.mov(eax, 7u32)?; // 0x110f: B8 07 00 00 00
        a.ret()
    });
    assert_eq!(mp.mem.read_u8(0x110f).unwrap(), 0xb8, "layout");
    assert_eq!(run(&mp), 10 * 3);
}

jit_variants!(
    deep_recursion_returns_to_each_caller,
    returns_elsewhere_go_where_the_stack_says,
    a_return_after_the_run_was_left,
);
