//! Regression tests for divergences the lockstep campaigns (TCG against the host CPU
//! under KVM, `testsuite/src/lockstep`) found: each test fails without its fix.

use super::tests::{exec, machine, rd, run, End, CODE, M, PML4};
use super::translate_block;
use vireo_core::cpu::ctl;
use vireo_core::cpu::flags::{CF, OF, ZF};
use vireo_core::exec::BlockOutcome;
use vireo_interp::{Interp, Prepared};

const RAX: usize = 0;
const RCX: usize = 1;
const RBX: usize = 3;
const RSI: usize = 6;
const R8: usize = 8;

/// The reserved-NOP space (0F 18-0F 1F with any ModRM) and the 0F 0D prefetch group
/// are NOPs, register and memory forms alike; they touch no memory.
#[test]
fn hint_nops_are_nops() {
    for code in [
        &[0x0f, 0x1f, 0xf0][..],                     // nop eax, esi
        &[0x44, 0x0f, 0x1a, 0x8b, 0xc1, 0x09, 0, 0], // nop [rbx+9C1h], r9d (MPX space)
        &[0x4c, 0x0f, 0x1d, 0xe6],                   // nop rsi, r12
        &[0x0f, 0x18, 0x33],                         // prefetch hint /6 [rbx]
        &[0x0f, 0x1c, 0x03],                         // cldemote [rbx]
        &[0x66, 0x0f, 0x0d, 0x13],                   // prefetchwt1 [rbx]
        &[0xf3, 0x0f, 0x1e, 0xc8],                   // rdsspd eax (CET off)
    ] {
        // RBX points far outside memory: a real access would fault.
        let (cpu, end) = exec(M::Long64, code, &[(RBX, 0x7fff_0000_0000)], 0);
        assert_eq!(end, End::Halt, "{code:02x?}");
        assert_eq!(cpu.state.rip, CODE + code.len() as u64 + 1, "{code:02x?}");
    }
    // LOCK makes them #UD.
    let (_, end) = exec(M::Long64, &[0xf0, 0x0f, 0x18, 0x33], &[], 0);
    assert_eq!(end, End::Fault(6, None));
}

/// CMPXCHG with a 32-bit register destination: on failure only EAX is written (RAX
/// zero-extended), the destination keeps all 64 bits; on success only the
/// destination is written.
#[test]
fn cmpxchg_r32_writes_one_register() {
    // cmpxchg r8d, ecx (45 0F B1 C8 would be r8d, r9d; 41 0F B1 C8 = r8d, ecx)
    let code = [0x41, 0x0f, 0xb1, 0xc8];
    let fail = [
        (RAX, 0xaaaa_aaaa_0000_0001),
        (RCX, 5),
        (R8, 0x0123_4567_89ab_cdef),
    ];
    let (cpu, end) = exec(M::Long64, &code, &fail, 0);
    assert_eq!(end, End::Halt);
    assert_eq!(cpu.state.gpr[R8], 0x0123_4567_89ab_cdef);
    assert_eq!(cpu.state.gpr[RAX], 0x89ab_cdef);
    assert_eq!(cpu.rflags() & ZF, 0);
    let ok = [
        (RAX, 0xaaaa_aaaa_89ab_cdef),
        (RCX, 5),
        (R8, 0x0123_4567_89ab_cdef),
    ];
    let (cpu, _) = exec(M::Long64, &code, &ok, 0);
    assert_eq!(cpu.state.gpr[R8], 5);
    assert_eq!(cpu.state.gpr[RAX], 0xaaaa_aaaa_89ab_cdef);
    assert_ne!(cpu.rflags() & ZF, 0);
}

/// SHRD/SHLD r64 with a count of 0 leave the destination alone.
#[test]
fn shxd64_count_zero_keeps_destination() {
    for code in [
        [0x48, 0x0f, 0xac, 0xf0, 0x00], // shrd rax, rsi, 0
        [0x48, 0x0f, 0xa4, 0xf0, 0x00], // shld rax, rsi, 0
    ] {
        let (cpu, end) = exec(M::Long64, &code, &[(RAX, 0xfffd), (RSI, u64::MAX)], 0);
        assert_eq!(end, End::Halt);
        assert_eq!(cpu.state.gpr[RAX], 0xfffd, "{code:02x?}");
    }
}

/// ADCX/ADOX carry through CF/OF only and keep the other flags.
#[test]
fn adcx_adox() {
    // adcx rax, rsi (66 REX.W 0F 38 F6 /r); adox rax, rsi (F3 ...)
    let adcx = [0x66, 0x48, 0x0f, 0x38, 0xf6, 0xc6];
    let adox = [0xf3, 0x48, 0x0f, 0x38, 0xf6, 0xc6];
    let (cpu, _) = exec(M::Long64, &adcx, &[(RAX, u64::MAX), (RSI, 0)], CF | ZF);
    assert_eq!(cpu.state.gpr[RAX], 0);
    assert_eq!(cpu.rflags() & (CF | OF | ZF), CF | ZF);
    let (cpu, _) = exec(M::Long64, &adcx, &[(RAX, 1), (RSI, 2)], OF);
    assert_eq!(cpu.state.gpr[RAX], 3);
    assert_eq!(cpu.rflags() & (CF | OF), OF);
    let (cpu, _) = exec(M::Long64, &adox, &[(RAX, u64::MAX), (RSI, 1)], OF);
    assert_eq!(cpu.state.gpr[RAX], 1);
    assert_eq!(cpu.rflags() & (CF | OF), OF);
    let (cpu, _) = exec(M::Long64, &adox, &[(RAX, 5), (RSI, 1)], CF);
    assert_eq!(cpu.state.gpr[RAX], 6);
    assert_eq!(cpu.rflags() & (CF | OF), CF);
}

/// The read of a read-modify-write is checked as a write: BTC on a read-only page
/// faults with W=1 in the error code, and memory is unchanged.
#[test]
fn rmw_read_faults_as_a_write() {
    // btc [rbx], rcx ; with rcx = 8 * 0x100 the bit lies 0x100 bytes on.
    let code = [0x48, 0x0f, 0xbb, 0x0b];
    let mut cpu = machine(M::Long64, &[code.as_slice(), &[0xf4]].concat());
    // 2..4 MiB: present, read-only, supervisor.
    cpu.bus
        .mem
        .write_u64(PML4 + 0x2000 + 8, (1 << 21) | 0x81)
        .expect("page table");
    cpu.state.cr0 |= ctl::CR0_WP;
    cpu.state.gpr[RBX] = 0x20_0000;
    cpu.state.gpr[RCX] = 8 * 0x100;
    let before = rd(&cpu, 0x20_0100, 8);
    assert_eq!(run(&mut cpu, 10), End::Fault(14, Some(0b11)));
    assert_eq!(rd(&cpu, 0x20_0100, 8), before);
    // The IR marks the load.
    cpu.state.rip = CODE;
    let block = translate_block(&mut cpu, 1).expect("translates");
    assert!(block.to_string().contains("ldu64w.kernel"), "{block}");
}

/// A port write ends the block at the next instruction boundary (it may have asked
/// the machine to stop).
#[test]
fn port_write_stops_the_block() {
    // out 0xe0, al; inc eax; hlt
    let mut cpu = machine(M::Prot32, &[0xe6, 0xe0, 0x40, 0xf4]);
    let block = translate_block(&mut cpu, 32).expect("translates");
    let outcome = Interp::new().run(&Prepared::new(block), &mut cpu);
    assert!(
        matches!(outcome, BlockOutcome::Stopped { pc } if pc == CODE + 2),
        "{outcome:?}"
    );
    assert_eq!(cpu.state.gpr[RAX], 0);
}

/// With no TSC source the TSC counts instructions: every started instruction, within
/// a block too (`X86Cpu::icount`, kept by `insn_start`).
#[test]
fn rdtsc_counts_instructions() {
    // rdtsc; mov esi, eax; rdtsc; hlt (one block)
    let (cpu, end) = exec(M::Long64, &[0x0f, 0x31, 0x89, 0xc6, 0x0f, 0x31], &[], 0);
    assert_eq!(end, End::Halt);
    assert_eq!(cpu.state.gpr[RAX].wrapping_sub(cpu.state.gpr[RSI]), 2);
    assert_eq!(cpu.icount, 4);
}

/// In 64-bit mode the ES, DS and SS bases are ignored (only FS and GS have bases),
/// for explicit operands, string and stack accesses alike.
#[test]
fn long_mode_ignores_es_ds_ss_bases() {
    use vireo_core::cpu::sreg;
    // mov [rbx], eax; stosb; push rax; hlt
    let code = [0x89, 0x03, 0xaa, 0x50, 0xf4];
    let mut cpu = machine(M::Long64, &code);
    for s in [sreg::ES, sreg::DS, sreg::SS] {
        cpu.state.seg[s].base = 0x10_0000;
    }
    cpu.state.gpr[RAX] = 0x1122_3344;
    cpu.state.gpr[RBX] = 0x3000;
    cpu.state.gpr[7] = 0x3100; // RDI
    cpu.state.gpr[4] = 0x8000; // RSP
    assert_eq!(run(&mut cpu, 10), End::Halt);
    assert_eq!(rd(&cpu, 0x3000, 4), 0x1122_3344);
    assert_eq!(rd(&cpu, 0x3100, 1), 0x44);
    assert_eq!(rd(&cpu, 0x8000 - 8, 8), 0x1122_3344);
    assert_eq!(rd(&cpu, 0x10_3000, 4), 0);
}

/// CMPS checks and reads ES:rDI before DS:rSI (with both operands faulting, the fault
/// reported is rDI's, as on the CPU for two page faults).
#[test]
fn cmps_reads_es_rdi_first() {
    // cmpsb with RSI non-canonical and RDI unmapped (beyond the identity-mapped GiB).
    let regs = [(RSI, 0x8000_0000_0000_0000), (7, 0x8000_0000)];
    let (_, end) = exec(M::Long64, &[0xa6], &regs, 0);
    assert_eq!(end, End::Fault(14, Some(0)));
}
