//! Translator tests: a tiny machine (flat memory, no devices) running blocks with the
//! IR interpreter; expected values come from reference models written here from the
//! SDM's definitions (arithmetic on wider integers, bit-by-bit shift loops).

use super::translate_block;
use crate::cpu::X86Cpu;
use crate::flags::ARITH;
use std::sync::Arc;
use vireo_core::cpu::flags::{AF, CF, OF, PF, SF, ZF};
use vireo_core::cpu::{ctl, CpuState, Segment};
use vireo_core::exec::{BlockOutcome, Fault};
use vireo_core::ir::ExitKind;
use vireo_core::{A20Gate, Bus, GuestMemory, SystemBus};
use vireo_interp::{Interp, Prepared};

/// Where test code is loaded (linear).
pub const CODE: u64 = 0x1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum M {
    Real,
    Prot32,
    Long64,
}

/// How a test run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    Halt,
    Fault(u8, Option<u32>),
    /// Ran out of blocks.
    Timeout,
}

pub fn bus() -> SystemBus {
    SystemBus {
        mem: Arc::new(GuestMemory::new_flat(16 << 20).expect("guest memory")),
        pio: Arc::new(Bus::new("pio")),
        mmio: Arc::new(Bus::new("mmio")),
        a20: A20Gate::new(),
    }
}

pub fn state(m: M) -> CpuState {
    let mut s = CpuState::reset();
    match m {
        M::Real => {
            s.seg[1] = Segment::real_mode(0, true);
        }
        M::Prot32 | M::Long64 => {
            let long = m == M::Long64;
            s.cr0 |= ctl::CR0_PE;
            if long {
                s.cr0 |= ctl::CR0_PG;
                s.cr4 |= ctl::CR4_PAE;
                s.cr3 = PML4;
                s.efer = ctl::EFER_LME | ctl::EFER_LMA;
            }
            for (i, seg) in s.seg.iter_mut().enumerate() {
                *seg = Segment::flat(if i == 1 { 8 } else { 16 }, i == 1, long);
            }
        }
    }
    s.rip = CODE;
    s.gpr[4] = 0x8000;
    s
}

/// Page tables of the 64-bit tests: the first GiB identity-mapped with 2 MiB pages.
pub const PML4: u64 = 0xf0_0000;

fn identity_map(bus: &SystemBus) {
    let w = |a: u64, v: u64| bus.mem.write_u64(a, v).expect("page tables");
    w(PML4, (PML4 + 0x1000) | 7);
    w(PML4 + 0x1000, (PML4 + 0x2000) | 7);
    for i in 0..512u64 {
        w(PML4 + 0x2000 + 8 * i, (i << 21) | 0x87);
    }
}

/// A CPU in mode `m` with `code` at [`CODE`].
/// Data area (identity-mapped) the x87 and SSE tests point RBX at.
pub const DATA: u64 = 0x4000;

/// 64-bit code assembled by `f`, followed by HLT, at [`CODE`].
pub fn asm64(
    f: impl FnOnce(&mut iced_x86::code_asm::CodeAssembler) -> Result<(), iced_x86::IcedError>,
) -> Vec<u8> {
    let mut a = iced_x86::code_asm::CodeAssembler::new(64).expect("assembler");
    f(&mut a).expect("assemble");
    a.hlt().expect("hlt");
    a.assemble(CODE).expect("assemble")
}

/// Runs 64-bit `code` with `data` at [`DATA`] (RBX = DATA), after `setup`.
pub fn run_with_data(code: &[u8], data: &[u8], setup: impl FnOnce(&mut X86Cpu)) -> (X86Cpu, End) {
    let mut cpu = machine(M::Long64, code);
    load(&cpu, DATA, data);
    cpu.state.gpr[3] = DATA;
    setup(&mut cpu);
    let end = run(&mut cpu, 1000);
    (cpu, end)
}

pub fn machine(m: M, code: &[u8]) -> X86Cpu {
    let bus = bus();
    identity_map(&bus);
    let cpu = X86Cpu::new(bus, state(m));
    load(&cpu, CODE, code);
    cpu
}

pub fn load(cpu: &X86Cpu, at: u64, bytes: &[u8]) {
    cpu.bus.mem.write(at, bytes).expect("write guest memory");
}

pub fn rd(cpu: &X86Cpu, at: u64, n: usize) -> u64 {
    cpu.bus.mem.read_le(at, n).expect("read guest memory")
}

/// Runs until HLT, a fault or `max_blocks` blocks. Until the system helpers exist, a
/// #UD on an `F4` byte (the HLT helper stand-in) counts as a halt.
///
/// Blocks run in the interpreter, or in the JIT when `VIREO_TEST_BACKEND=jit` (the
/// whole translator test set under the JIT: `.ci/run` does both).
pub fn run(cpu: &mut X86Cpu, max_blocks: usize) -> End {
    let mut interp = Interp::new();
    let use_jit = std::env::var("VIREO_TEST_BACKEND").is_ok_and(|v| v == "jit");
    let mut jit = vireo_jit::JitCache::<X86Cpu>::new(64 << 20);
    let mut jit_state = vireo_jit::JitState::new();
    for _ in 0..max_blocks {
        let mut block = match translate_block(cpu, 32) {
            Ok(b) => b,
            Err(f) => return End::Fault(f.vector, f.error_code),
        };
        if let Err(e) = block.validate() {
            panic!("invalid block: {e}\n{block}");
        }
        // As the run loop does.
        vireo_core::opt::optimize(&mut block);
        let compiled = if use_jit {
            let code = jit.compile(&block).expect("JIT compile");
            jit.run(&code, cpu, &mut jit_state)
        } else {
            None
        };
        let outcome = match compiled {
            Some(o) => o,
            None => interp.run(&Prepared::new(block), cpu),
        };
        match outcome {
            BlockOutcome::Exit(ExitKind::Halt) => return End::Halt,
            BlockOutcome::Exit(_) => {}
            BlockOutcome::Stopped { .. } => cpu.stop = false,
            BlockOutcome::Fault { fault, pc } => {
                cpu.state.rip = pc;
                // As exception delivery classifies it.
                let fault = cpu.noncanonical_fault(fault, pc);
                if is_hlt_standin(cpu, &fault, pc) {
                    cpu.state.rip = pc + 1;
                    return End::Halt;
                }
                return End::Fault(fault.vector, fault.error_code);
            }
        }
    }
    End::Timeout
}

fn is_hlt_standin(cpu: &mut X86Cpu, fault: &Fault, pc: u64) -> bool {
    let lin = cpu.state.seg[1].base.wrapping_add(pc);
    fault.vector == 6
        && crate::mmu::read(
            cpu,
            lin,
            vireo_core::ir::Size::B8,
            vireo_core::ir::MmuIdx::Kernel,
        )
        .is_ok_and(|b| b == 0xf4)
}

/// Runs `code` (HLT appended) in mode `m` with registers preset.
pub fn exec(m: M, code: &[u8], regs: &[(usize, u64)], flags: u64) -> (X86Cpu, End) {
    let mut c = code.to_vec();
    c.push(0xf4);
    let mut cpu = machine(m, &c);
    for &(r, v) in regs {
        cpu.state.gpr[r] = v;
    }
    cpu.set_rflags(flags | 2);
    let end = run(&mut cpu, 1000);
    (cpu, end)
}

// ---- reference models -----------------------------------------------------------

pub fn mask(bits: u32) -> u64 {
    if bits == 64 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    }
}

pub fn szp(bits: u32, r: u64) -> u64 {
    let r = r & mask(bits);
    let mut f = 0;
    if r == 0 {
        f |= ZF;
    }
    if r >> (bits - 1) & 1 == 1 {
        f |= SF;
    }
    if (r as u8).count_ones().is_multiple_of(2) {
        f |= PF;
    }
    f
}

fn sx(bits: u32, v: u64) -> i128 {
    let v = v & mask(bits);
    if v >> (bits - 1) & 1 == 1 {
        v as i128 - (1i128 << bits)
    } else {
        v as i128
    }
}

/// ALU op `op` (x86 /r numbering: add or adc sbb and sub xor cmp) → (result, flags).
pub fn ref_alu(op: u8, bits: u32, a: u64, b: u64, cf: u64) -> (u64, u64) {
    let m = mask(bits);
    let (a, b) = (a & m, b & m);
    let (ua, ub) = (a as u128, b as u128);
    let (sa, sb) = (sx(bits, a), sx(bits, b));
    let lim = 1i128 << (bits - 1);
    match op {
        0 | 2 => {
            let c = if op == 2 { cf } else { 0 };
            let wide = ua + ub + c as u128;
            let r = wide as u64 & m;
            let s = sa + sb + c as i128;
            let mut f = szp(bits, r);
            if wide >> bits != 0 {
                f |= CF;
            }
            if s >= lim || s < -lim {
                f |= OF;
            }
            if ((a & 0xf) + (b & 0xf) + c) & 0x10 != 0 {
                f |= AF;
            }
            (r, f)
        }
        3 | 5 | 7 => {
            let c = if op == 3 { cf } else { 0 };
            let r = a.wrapping_sub(b).wrapping_sub(c) & m;
            let s = sa - sb - c as i128;
            let mut f = szp(bits, r);
            if ua < ub + c as u128 {
                f |= CF;
            }
            if s >= lim || s < -lim {
                f |= OF;
            }
            if (a & 0xf) < (b & 0xf) + c {
                f |= AF;
            }
            (r, f)
        }
        1 => ((a | b), szp(bits, a | b)),
        4 => ((a & b), szp(bits, a & b)),
        _ => ((a ^ b), szp(bits, a ^ b)),
    }
}

/// Shift/rotate `op` (/r numbering) by a masked count: (result, CF, OF) with the
/// loop semantics of the SDM; `None` flags when the count is 0.
pub fn ref_shift(op: u8, bits: u32, v: u64, count: u32, cf_in: u64) -> (u64, Option<(u64, u64)>) {
    let m = mask(bits);
    let msb = |x: u64| (x >> (bits - 1)) & 1;
    let mut x = v & m;
    if count == 0 {
        return (x, None);
    }
    let mut cf = cf_in & 1;
    let steps = match op {
        2 | 3 => count % (bits + 1),
        _ => count,
    };
    for _ in 0..steps {
        match op {
            0 => {
                cf = msb(x);
                x = ((x << 1) | cf) & m;
            }
            1 => {
                cf = x & 1;
                x = (x >> 1) | (cf << (bits - 1));
            }
            2 => {
                let out = msb(x);
                x = ((x << 1) | cf) & m;
                cf = out;
            }
            3 => {
                let out = x & 1;
                x = (x >> 1) | (cf << (bits - 1));
                cf = out;
            }
            4 | 6 => {
                cf = msb(x);
                x = (x << 1) & m;
            }
            5 => {
                cf = x & 1;
                x >>= 1;
            }
            _ => {
                cf = x & 1;
                x = (x >> 1) | (msb(x) << (bits - 1));
            }
        }
    }
    if op <= 1 && steps == 0 {
        // Rotates by a multiple of the width: flags from the (unchanged) value.
        cf = if op == 0 { x & 1 } else { msb(x) };
    }
    let of = match op {
        0 | 2 | 4 | 6 => msb(x) ^ cf,
        1 | 3 => msb(x) ^ ((x >> (bits - 2)) & 1),
        5 => msb(v & m),
        _ => 0,
    };
    (x, Some((cf, of)))
}

/// Prefix bytes for operand size `bits` on register forms (64-bit mode).
pub fn size_prefix(bits: u32) -> Vec<u8> {
    match bits {
        16 => vec![0x66],
        64 => vec![0x48],
        _ => vec![],
    }
}

pub const EDGE: [u64; 12] = [
    0,
    1,
    2,
    0x7f,
    0x80,
    0xff,
    0x7fff,
    0x8000,
    0xffff_ffff,
    0x8000_0000,
    0x7fff_ffff_ffff_ffff,
    0xffff_ffff_ffff_ffff,
];

// ---- tests ------------------------------------------------------------------------

#[test]
fn alu_flags_every_op_and_size() {
    for op in 0u8..8 {
        for bits in [8u32, 16, 32, 64] {
            let mut code = size_prefix(bits);
            code.push(op * 8 + if bits == 8 { 0 } else { 1 });
            code.push(0xc3); // op bl/bx/ebx/rbx, al/ax/eax/rax
            for &a in &EDGE {
                for &b in &[
                    0u64,
                    1,
                    0x7f,
                    0x80,
                    0xffff,
                    0x8000_0001,
                    u64::MAX,
                    0x1234_5678_9abc_def0,
                ] {
                    for cf in [0u64, 1] {
                        let (cpu, end) = exec(M::Long64, &code, &[(3, a), (0, b)], cf);
                        assert_eq!(end, End::Halt);
                        let (r, f) = ref_alu(op, bits, a, b, cf);
                        let want_rbx = if op == 7 {
                            a
                        } else {
                            match bits {
                                8 => (a & !0xff) | r,
                                16 => (a & !0xffff) | r,
                                _ => r,
                            }
                        };
                        let got_f = cpu.rflags() & ARITH;
                        let fmask = if matches!(op, 1 | 4 | 6) {
                            ARITH & !AF
                        } else {
                            ARITH
                        };
                        assert_eq!(
                            cpu.state.gpr[3], want_rbx,
                            "op {op} bits {bits} a {a:#x} b {b:#x} cf {cf}"
                        );
                        assert_eq!(
                            got_f & fmask,
                            f & fmask,
                            "flags op {op} bits {bits} a {a:#x} b {b:#x} cf {cf}"
                        );
                    }
                }
            }
        }
    }
}

/// INC and DEC keep the CF of the operation before, which a block translated
/// while the CPU held a given lazy-flag state computes inline for that state (an
/// EFLAGS image after SYSRET or POPF, a SUB, an ADD) and through the helper for any
/// other: the same block run from every state gives that state's CF.
#[test]
fn carry_kept_by_inc_follows_the_state_it_runs_from() {
    use crate::cpu::LazyFlags;
    use crate::flags::{cc_op, CcKind};
    use vireo_core::ir::Size;
    // (state, its CF)
    let states = [
        (
            LazyFlags {
                op: cc_op(CcKind::Eflags, Size::B8),
                dst: 0,
                src: CF | ZF,
                src2: 0,
            },
            1,
        ),
        (
            LazyFlags {
                op: cc_op(CcKind::Eflags, Size::B8),
                dst: 0,
                src: ZF,
                src2: 0,
            },
            0,
        ),
        // 3 - 5: a borrow; 5 - 3: none.
        (
            LazyFlags {
                op: cc_op(CcKind::Sub, Size::B32),
                dst: 3u64.wrapping_sub(5) & 0xffff_ffff,
                src: 5,
                src2: 0,
            },
            1,
        ),
        (
            LazyFlags {
                op: cc_op(CcKind::Sub, Size::B32),
                dst: 2,
                src: 3,
                src2: 0,
            },
            0,
        ),
        // 0xff + 1 in 8 bits: a carry.
        (
            LazyFlags {
                op: cc_op(CcKind::Add, Size::B8),
                dst: 0,
                src: 1,
                src2: 0,
            },
            1,
        ),
        (
            LazyFlags {
                op: cc_op(CcKind::Logic, Size::B64),
                dst: 5,
                src: 0,
                src2: 0,
            },
            0,
        ),
    ];
    let use_jit = std::env::var("VIREO_TEST_BACKEND").is_ok_and(|v| v == "jit");
    let mut jit = vireo_jit::JitCache::<X86Cpu>::new(16 << 20);
    for (entry, _) in &states {
        // inc ebx; hlt, translated from `entry`.
        let mut cpu = machine(M::Long64, &[0xff, 0xc3, 0xf4]);
        cpu.cc = *entry;
        let mut block = translate_block(&mut cpu, 1).expect("translate");
        vireo_core::opt::optimize(&mut block);
        let code = use_jit.then(|| jit.compile(&block).expect("compile"));
        for (from, cf) in &states {
            let mut c = machine(M::Long64, &[0xff, 0xc3, 0xf4]);
            c.cc = *from;
            let o = match &code {
                Some(code) => jit.run(code, &mut c, &mut vireo_jit::JitState::new()),
                None => None,
            };
            if o.is_none() {
                Interp::new().run(&Prepared::new(block.clone()), &mut c);
            }
            assert_eq!(
                c.rflags() & CF,
                *cf,
                "translated from {entry:?}, run from {from:?}"
            );
            assert_eq!(c.state.gpr[3], 1);
        }
    }
}

#[test]
fn inc_dec_neg_not_flags() {
    for bits in [8u32, 16, 32, 64] {
        for &a in &EDGE {
            for cf in [0u64, 1] {
                // inc rbx / dec rbx / neg rbx / not rbx: FE|FF /0 /1, F6|F7 /3 /2.
                for (opc, reg, name) in [
                    (0xfeu8, 0u8, "inc"),
                    (0xfe, 1, "dec"),
                    (0xf6, 3, "neg"),
                    (0xf6, 2, "not"),
                ] {
                    let mut code = size_prefix(bits);
                    code.push(opc + u8::from(bits != 8));
                    code.push(0xc3 | (reg << 3));
                    let (cpu, end) = exec(M::Long64, &code, &[(3, a)], cf);
                    assert_eq!(end, End::Halt);
                    let m = mask(bits);
                    let (r, f) = match name {
                        "inc" => {
                            let (r, f) = ref_alu(0, bits, a, 1, 0);
                            (r, (f & !CF) | cf)
                        }
                        "dec" => {
                            let (r, f) = ref_alu(5, bits, a, 1, 0);
                            (r, (f & !CF) | cf)
                        }
                        "neg" => ref_alu(5, bits, 0, a, 0),
                        _ => (!a & m, cf),
                    };
                    let got = cpu.state.gpr[3] & m;
                    assert_eq!(got, r, "{name} {bits} {a:#x}");
                    assert_eq!(
                        cpu.rflags() & ARITH,
                        f,
                        "{name} flags {bits} {a:#x} cf {cf}"
                    );
                }
            }
        }
    }
}

#[test]
fn shifts_and_rotates_edge_counts() {
    let values = [
        0u64,
        1,
        0x80,
        0x81,
        0x8000_0001,
        0xdead_beef_1234_5678,
        u64::MAX,
        0x4000,
    ];
    for op in 0u8..8 {
        for bits in [8u32, 16, 32, 64] {
            for &v in &values {
                for count in [0u32, 1, 2, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 255] {
                    for cf in [0u64, 1] {
                        for by_cl in [false, true] {
                            let mut code = size_prefix(bits);
                            let w = u8::from(bits != 8);
                            if by_cl {
                                code.extend([0xd2 + w, 0xc3 | (op << 3)]);
                            } else {
                                code.extend([0xc0 + w, 0xc3 | (op << 3), count as u8]);
                            }
                            // Other flags preset to a recognisable pattern.
                            let f0 = cf | PF | SF;
                            let (cpu, end) =
                                exec(M::Long64, &code, &[(3, v), (1, count as u64)], f0);
                            assert_eq!(end, End::Halt);
                            let cmask = if bits == 64 { 63 } else { 31 };
                            let (r, fl) = ref_shift(op, bits, v, count & cmask, cf);
                            let got = cpu.state.gpr[3] & mask(bits);
                            let ctx = format!(
                                "op {op} bits {bits} v {v:#x} count {count} cf {cf} cl {by_cl}"
                            );
                            assert_eq!(got, r, "{ctx}");
                            let f = cpu.rflags() & ARITH;
                            match fl {
                                None => assert_eq!(f, f0, "flags changed with count 0: {ctx}"),
                                Some((c, o)) => {
                                    assert_eq!(f & CF, c, "CF {ctx}");
                                    if count & cmask == 1 {
                                        assert_eq!((f & OF) >> 11, o, "OF {ctx}");
                                    }
                                    if op >= 4 {
                                        assert_eq!(f & (ZF | SF | PF), szp(bits, r), "SZP {ctx}");
                                    } else {
                                        assert_eq!(
                                            f & (ZF | SF | PF | AF),
                                            f0 & (ZF | SF | PF | AF),
                                            "{ctx}"
                                        );
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// A rotate keeps SF, ZF, AF and PF of the operation before it (computed inline when
/// that is an add, subtract, compare, logic op, increment or decrement in the same
/// block) and sets CF (and OF for a count of 1).
#[test]
fn rotates_keep_the_flags_of_the_operation_before() {
    let values = [0u64, 1, 0x0f, 0x10, 0x7f, 0x80, 0xff, 0x8000_0000, u64::MAX];
    // (opcode byte of `op rbx, rcx` (01 add, 29 sub, 39 cmp, 21 and, 31 xor) or
    // FF /0 /1 (inc/dec rbx), /r number for `ref_alu`).
    let ops: [(&[u8], u8); 7] = [
        (&[0x01, 0xcb], 0),
        (&[0x29, 0xcb], 5),
        (&[0x39, 0xcb], 7),
        (&[0x21, 0xcb], 4),
        (&[0x31, 0xcb], 6),
        (&[0xff, 0xc3], 8),
        (&[0xff, 0xcb], 9),
    ];
    for bits in [8u32, 16, 32, 64] {
        for (code_op, alu) in ops {
            for &a in &values {
                for &b in &values {
                    for (rot, count) in [(0u8, 1u32), (1, 1), (0, 5), (1, 13)] {
                        let mut code = size_prefix(bits);
                        let w = u8::from(bits != 8);
                        code.push(code_op[0] - u8::from(bits == 8));
                        code.push(code_op[1]);
                        // rol/ror rdx, count
                        code.extend(size_prefix(bits));
                        code.extend([0xc0 + w, 0xc2 | (rot << 3), count as u8]);
                        let (cpu, end) = exec(M::Long64, &code, &[(3, a), (1, b), (2, a ^ b)], 0);
                        assert_eq!(end, End::Halt);
                        let f1 = match alu {
                            8 => ref_alu(0, bits, a, 1, 0).1 & !CF,
                            9 => ref_alu(5, bits, a, 1, 0).1 & !CF,
                            k => ref_alu(k, bits, a, b, 0).1,
                        };
                        let cmask = if bits == 64 { 63 } else { 31 };
                        let (_, fl) = ref_shift(rot, bits, a ^ b, count & cmask, 0);
                        let (cf, of) = fl.expect("count not 0");
                        let ctx = format!(
                            "bits {bits} op {alu} a {a:#x} b {b:#x} rot {rot} count {count}"
                        );
                        let f = cpu.rflags() & ARITH;
                        assert_eq!(f & (SF | ZF | AF | PF), f1 & (SF | ZF | AF | PF), "{ctx}");
                        assert_eq!(f & CF, cf, "CF {ctx}");
                        if count == 1 {
                            assert_eq!((f & OF) >> 11, of, "OF {ctx}");
                        }
                    }
                }
            }
        }
    }
}

/// INC and DEC keep CF: after a shift or a multiply in the same block the translator
/// computes it from the known operation inline.
#[test]
fn inc_and_dec_keep_the_carry_of_a_shift_or_multiply() {
    let values = [1u64, 0x81, 0x8000_0001, 0xdead_beef_1234_5678, u64::MAX];
    for op in [4u8, 5, 7] {
        for bits in [8u32, 16, 32, 64] {
            for &v in &values {
                for count in [1u32, 2, 7, 8, 31, 63] {
                    for (post, name) in [(0xc1u8, "inc"), (0xc9, "dec")] {
                        // shift rbx, count; inc/dec ecx.
                        let mut code = size_prefix(bits);
                        let w = u8::from(bits != 8);
                        code.extend([0xc0 + w, 0xc3 | (op << 3), count as u8, 0xff, post]);
                        let (cpu, end) = exec(M::Long64, &code, &[(3, v), (1, 5)], 0);
                        assert_eq!(end, End::Halt);
                        let cmask = if bits == 64 { 63 } else { 31 };
                        let (_, fl) = ref_shift(op, bits, v, count & cmask, 0);
                        let cf = fl.map_or(0, |(c, _)| c);
                        assert_eq!(
                            cpu.rflags() & CF,
                            cf,
                            "op {op} bits {bits} v {v:#x} count {count} then {name}"
                        );
                    }
                }
            }
        }
    }
    for bits in [16u32, 32, 64] {
        for (a, b) in [
            (3u64, 5u64),
            (0x7fff, 2),
            (0x4000_0000, 4),
            (u64::MAX, 2),
            (1 << 40, 1 << 30),
        ] {
            // imul rbx, rdx; dec ecx: CF set when the product does not fit.
            let mut code = size_prefix(bits);
            code.extend([0x0f, 0xaf, 0xda, 0xff, 0xc9]);
            let (cpu, end) = exec(M::Long64, &code, &[(3, a), (2, b), (1, 5)], 0);
            assert_eq!(end, End::Halt);
            let p = sx(bits, a) * sx(bits, b);
            let fits = sx(bits, p as u64) == p;
            assert_eq!(
                cpu.rflags() & CF,
                u64::from(!fits),
                "imul {bits} {a:#x} {b:#x}"
            );
        }
    }
}

#[test]
fn jcc_setcc_cmov_after_every_flag_producer() {
    // Each flag producer, then SETcc for all 16 conditions into memory: what the
    // conditions read (evaluated inline from the producer's operands where the
    // translator can) agrees with the flags (through the flags helper) at the end.
    // The second field names the reference ALU operation (op, width, carry in) of
    // a producer that is one.
    // The reference ALU operation: (op, width, carry in).
    type Reference = Option<(u8, u32, u64)>;
    let producers: [(&[u8], Reference); 25] = [
        (&[0x48, 0x39, 0xc3], Some((7, 64, 0))),       // cmp rbx, rax
        (&[0x48, 0x01, 0xc3], Some((0, 64, 0))),       // add rbx, rax
        (&[0x48, 0x21, 0xc3], Some((4, 64, 0))),       // and rbx, rax
        (&[0x48, 0x29, 0xc3], Some((5, 64, 0))),       // sub rbx, rax
        (&[0x48, 0xff, 0xc3], None),                   // inc rbx
        (&[0x48, 0xff, 0xcb], None),                   // dec rbx
        (&[0x48, 0xf7, 0xdb], None),                   // neg rbx
        (&[0x48, 0xd1, 0xe3], None),                   // shl rbx, 1
        (&[0x48, 0xd1, 0xfb], None),                   // sar rbx, 1
        (&[0x48, 0xd1, 0xeb], None),                   // shr rbx, 1
        (&[0x48, 0x0f, 0xaf, 0xd8], None),             // imul rbx, rax
        (&[0xf9, 0x48, 0x11, 0xc3], Some((2, 64, 1))), // stc; adc rbx, rax
        (&[0xf8, 0x48, 0x11, 0xc3], Some((2, 64, 0))), // clc; adc rbx, rax
        (&[0xf9, 0x48, 0x19, 0xc3], Some((3, 64, 1))), // stc; sbb rbx, rax
        (&[0xf8, 0x48, 0x19, 0xc3], Some((3, 64, 0))), // clc; sbb rbx, rax
        (&[0x48, 0x01, 0xc3, 0x48, 0x11, 0xc3], None), // add; adc rbx, rax
        (&[0x48, 0x39, 0xc3, 0x48, 0x19, 0xc3], None), // cmp; sbb rbx, rax
        (&[0x01, 0xc3], Some((0, 32, 0))),             // add ebx, eax
        (&[0x29, 0xc3], Some((5, 32, 0))),             // sub ebx, eax
        (&[0xf9, 0x11, 0xc3], Some((2, 32, 1))),       // stc; adc ebx, eax
        (&[0xff, 0xcb], None),                         // dec ebx
        (&[0x00, 0xc3], Some((0, 8, 0))),              // add bl, al
        (&[0xf9, 0x18, 0xc3], Some((3, 8, 1))),        // stc; sbb bl, al
        (&[0xfe, 0xc3], None),                         // inc bl
        (&[0x66, 0x0f, 0xaf, 0xd8], None),             // imul bx, ax
    ];
    let vals = [
        0u64,
        1,
        5,
        0x7f,
        0x80,
        0xffff_ffff,
        0x8000_0000,
        0x7fff_ffff_ffff_ffff,
        0x8000_0000_0000_0000,
        u64::MAX,
    ];
    for (p, reference) in producers {
        for &a in &vals {
            for &b in &vals {
                let mut code = p.to_vec();
                // setcc byte [0x2000 + cc] for each cc.
                for cc in 0u8..16 {
                    code.extend([0x0f, 0x90 + cc, 0x04, 0x25]);
                    code.extend((0x2000u32 + u32::from(cc)).to_le_bytes());
                }
                let (cpu, end) = exec(M::Long64, &code, &[(3, a), (0, b)], 0);
                assert_eq!(end, End::Halt);
                let f = cpu.rflags();
                for cc in 0u8..16 {
                    let bit = |m: u64| f & m != 0;
                    let v = match cc >> 1 {
                        0 => bit(OF),
                        1 => bit(CF),
                        2 => bit(ZF),
                        3 => bit(CF) || bit(ZF),
                        4 => bit(SF),
                        5 => bit(PF),
                        6 => bit(SF) != bit(OF),
                        _ => bit(ZF) || bit(SF) != bit(OF),
                    } ^ (cc & 1 == 1);
                    assert_eq!(
                        rd(&cpu, 0x2000 + u64::from(cc), 1),
                        u64::from(v),
                        "producer {p:x?} a {a:#x} b {b:#x} cc {cc}"
                    );
                }
                // And the flags themselves agree with the reference.
                if let Some((op, bits, cf)) = reference {
                    let (_, rf) = ref_alu(op, bits, a, b, cf);
                    let m = if op == 4 { ARITH & !AF } else { ARITH };
                    assert_eq!(f & m, rf & m, "producer {p:x?} a {a:#x} b {b:#x}");
                }
            }
        }
    }
}

#[test]
fn jcc_branches_both_ways() {
    // cmp eax, ebx; jl +5 (over mov ecx,1); mov edx, 2; hlt
    let code = [0x39, 0xd8, 0x7c, 0x05, 0xb9, 1, 0, 0, 0, 0xba, 2, 0, 0, 0];
    for (a, b, taken) in [(1u64, 2u64, true), (2, 1, false), (0xffff_ffff, 0, true)] {
        let (cpu, end) = exec(M::Prot32, &code, &[(0, a), (3, b)], 0);
        assert_eq!(end, End::Halt);
        assert_eq!(cpu.state.gpr[1], u64::from(!taken));
        assert_eq!(cpu.state.gpr[2], 2);
    }
}
