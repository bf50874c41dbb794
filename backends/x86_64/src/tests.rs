//! Differential tests: random IR blocks run by the interpreter (the oracle) and by the
//! JIT on identical fake environments; every global, the memory, the helper calls,
//! the outcome and the instruction count must agree.

use crate::{Gate, JitCache, JitError, JitState};
use vireo_core::exec::{BlockOutcome, DirectGlobals, FastTlbLayout, Fault, GuestEnv, InsnHooks};
use vireo_core::ir::{
    Args, BinOp, Block, Builder, Cond, Effects, ExitKind, Global, HelperId, Label, MmuIdx, Op,
    Size, Temp, UnOp,
};
use vireo_interp::{Interp, Prepared};

/// A cache that counts chained entries ([`Run::chained`](crate::Run::chained)), which
/// these tests check.
fn counting_cache<E>(limit: usize) -> JitCache<E> {
    let mut jit = JitCache::new(limit);
    jit.set_count_chains(true);
    jit
}

/// Two 4 KiB pages: the fast TLB of `Env<true>` maps both (page 0, which holds
/// `CODE`, for reads only).
const MEM: usize = 0x2000;
/// A store into `[CODE, CODE + 16)` asks the block to stop (as a write to a code page
/// does on x86).
const CODE: u64 = 0x80;

/// A fake guest. `DIRECT`: globals r0-r3 and pc are declared direct and instruction
/// boundaries inline (`DirectGlobals`); otherwise everything goes through the
/// trampolines.
#[derive(Debug, Clone, PartialEq)]
struct Env<const DIRECT: bool> {
    regs: [u64; 8],
    pc: u64,
    cc: [u64; 4],
    flags: u64,
    segbase: [u64; 2],
    /// `Global::Xmm(0)` and `Xmm(1)`: little-endian bytes 1..9 and 9..17 (direct at
    /// an unaligned offset in `Env<true>`).
    vec: [u8; 17],
    mem: Vec<u8>,
    /// Helper calls: number, arguments, and the instruction PC and count they saw.
    calls: Vec<(u16, Vec<u64>, u64, u64)>,
    stop: bool,
    insn_pc: u64,
    icount: u64,
    /// Helper 4 panics when set.
    panic_in_helper: bool,
    tlb: FakeTlb,
    /// The indirect-lookup guard (`DirectGlobals::indirect_guard`).
    guard: u64,
    /// State only helper 6 touches (not a global).
    side: u64,
}

/// The fast TLB of `Env<true>` (see [`Env::map_pages`]): two tables (kernel, user)
/// of four entries `[read tag, write tag, addend, unused]`.
#[derive(Debug, Clone)]
struct FakeTlb([[u64; 4]; 8]);

/// The tables follow from where the memory is: not part of the compared state.
impl PartialEq for FakeTlb {
    fn eq(&self, _: &FakeTlb) -> bool {
        true
    }
}

impl<const D: bool> Env<D> {
    fn new(rng: &mut Rng) -> Self {
        let mut e = Env {
            regs: [0; 8],
            pc: 0,
            cc: [0; 4],
            flags: 2,
            segbase: [0; 2],
            vec: std::array::from_fn(|_| rng.next() as u8),
            mem: (0..MEM).map(|_| rng.next() as u8).collect(),
            calls: Vec::new(),
            stop: false,
            insn_pc: 0,
            icount: 0,
            panic_in_helper: false,
            tlb: FakeTlb([[u64::MAX; 4]; 8]),
            guard: 7,
            side: 0,
        };
        for r in &mut e.regs {
            *r = rng.value();
        }
        for c in &mut e.cc {
            *c = rng.value();
        }
        e.segbase = [rng.value(), rng.value()];
        e
    }
}

impl<const D: bool> Env<D> {
    /// Fills the fast TLB for this memory: pages 0 and 1 readable by both MMU
    /// indexes, page 1 writable by the kernel (page 0 holds `CODE`, whose writes must
    /// reach `store`). Called again on a clone (the memory moved).
    fn map_pages(&mut self) {
        let addend = self.mem.as_ptr() as u64;
        self.tlb = FakeTlb([[u64::MAX; 4]; 8]);
        for (table, writable) in [(0usize, true), (4, false)] {
            self.tlb.0[table] = [0, u64::MAX, addend, 0];
            self.tlb.0[table + 1] = [1, if writable { 1 } else { u64::MAX }, addend, 0];
        }
    }
}

impl<const D: bool> GuestEnv for Env<D> {
    fn get(&mut self, g: Global) -> u64 {
        match g {
            Global::Gpr(n) => self.regs[usize::from(n) % 8],
            Global::Pc => self.pc,
            Global::CcOp => self.cc[0],
            Global::CcDst => self.cc[1],
            Global::CcSrc => self.cc[2],
            Global::CcSrc2 => self.cc[3],
            Global::Flags => self.flags & 0xf00,
            Global::SegBase(n) => self.segbase[usize::from(n) % 2],
            Global::Xmm(n) => {
                let at = 1 + 8 * usize::from(n % 2);
                let mut q = [0u8; 8];
                q.copy_from_slice(&self.vec[at..at + 8]);
                u64::from_le_bytes(q)
            }
        }
    }
    fn set(&mut self, g: Global, v: u64) {
        match g {
            Global::Gpr(n) => self.regs[usize::from(n) % 8] = v,
            Global::Pc => self.pc = v,
            Global::CcOp => self.cc[0] = v,
            Global::CcDst => self.cc[1] = v,
            Global::CcSrc => self.cc[2] = v,
            Global::CcSrc2 => self.cc[3] = v,
            // A global with masking: not a plain field.
            Global::Flags => self.flags = (v & 0xf00) | 2,
            Global::SegBase(n) => self.segbase[usize::from(n) % 2] = v,
            Global::Xmm(n) => {
                let at = 1 + 8 * usize::from(n % 2);
                self.vec[at..at + 8].copy_from_slice(&v.to_le_bytes());
            }
        }
    }
    fn load(&mut self, addr: u64, size: Size, _: MmuIdx, write: bool) -> Result<u64, Fault> {
        let a = usize::try_from(addr).unwrap_or(usize::MAX);
        let Some(bytes) = a
            .checked_add(size.bytes())
            .and_then(|end| self.mem.get(a..end))
        else {
            return Err(Fault {
                vector: 14,
                error_code: Some(if write { 2 } else { 0 }),
                address: Some(addr),
            });
        };
        let mut b = [0u8; 8];
        b[..size.bytes()].copy_from_slice(bytes);
        // Garbage above the width: backends must truncate or extend.
        Ok(u64::from_le_bytes(b) | (0xdead_0000_0000_0000 * u64::from(size != Size::B64)))
    }
    fn store(&mut self, addr: u64, val: u64, size: Size, _: MmuIdx) -> Result<(), Fault> {
        let a = usize::try_from(addr).unwrap_or(usize::MAX);
        let n = size.bytes();
        let Some(dst) = a.checked_add(n).and_then(|end| self.mem.get_mut(a..end)) else {
            return Err(Fault {
                vector: 14,
                error_code: Some(2),
                address: Some(addr),
            });
        };
        dst.copy_from_slice(&val.to_le_bytes()[..n]);
        if (CODE..CODE + 16).contains(&addr) {
            self.stop = true;
        }
        Ok(())
    }
    fn call(&mut self, h: HelperId, args: &[u64]) -> Result<u64, Fault> {
        // Helpers 5 (pure) and 6 (environment function) may be called directly by
        // compiled code: not logged (6 leaves its trace in `side`).
        if h.0 != 5 && h.0 != 6 {
            self.calls
                .push((h.0, args.to_vec(), self.insn_pc, self.icount));
        }
        let a = |i: usize| args.get(i).copied().unwrap_or(0x55);
        match h.0 {
            0 => Ok(a(0).wrapping_mul(3).wrapping_add(a(1).rotate_left(7))
                ^ a(2).wrapping_sub(a(3))
                ^ args.len() as u64),
            1 if a(0) & 1 != 0 => Err(Fault::with_error(13, a(0) as u32)),
            1 => Ok(a(0).wrapping_add(1)),
            2 => {
                self.stop = true;
                Ok(7)
            }
            3 => {
                // Reads and writes globals (direct and not).
                self.regs[5] = a(0);
                self.regs[1] = a(1);
                Ok(self.regs[0] ^ self.regs[6])
            }
            4 if self.panic_in_helper => panic!("helper 4 panicked"),
            6 => Ok(side_step(self, a(0), a(1), a(2))),
            _ => Ok(!a(0)),
        }
    }
    fn stop_requested(&mut self) -> bool {
        self.stop
    }
    fn insn_start(&mut self, pc: u64) {
        self.insn_pc = pc;
        self.icount = self.icount.wrapping_add(1);
    }
}

/// Helper 6: mixes its arguments into `side` (state no global names), returns it.
fn side_step<const D: bool>(e: &mut Env<D>, a0: u64, a1: u64, a2: u64) -> u64 {
    e.side = e.side.rotate_left(7) ^ a0.wrapping_mul(3) ^ a1 ^ a2.wrapping_add(1);
    e.side
}

/// Helper 5 (`!a0`) as a plain function.
extern "C" fn not_first(a0: u64, _: u64, _: u64, _: u64) -> u64 {
    !a0
}

// SAFETY: the offsets are those of plain `u64` fields (and the `bool` stop flag)
// that `get`/`set`/`insn_start`/`stop_requested` use exactly as the trait requires.
unsafe impl DirectGlobals for Env<true> {
    fn global_offset(g: Global) -> Option<usize> {
        match g {
            Global::Gpr(n) if n < 4 => {
                Some(std::mem::offset_of!(Env<true>, regs) + 8 * usize::from(n))
            }
            Global::Pc => Some(std::mem::offset_of!(Env<true>, pc)),
            Global::SegBase(1) => Some(std::mem::offset_of!(Env<true>, segbase) + 8),
            Global::Xmm(n) if n < 2 => {
                Some(std::mem::offset_of!(Env<true>, vec) + 1 + 8 * usize::from(n))
            }
            _ => None,
        }
    }
    // Some fields below it, some above, some beyond a one-byte displacement: every
    // form of addressing the environment is exercised.
    fn hot_offset() -> usize {
        std::mem::offset_of!(Env<true>, pc) + 100
    }
    fn insn_hooks() -> Option<InsnHooks> {
        Some(InsnHooks {
            stop: std::mem::offset_of!(Env<true>, stop),
            pc: std::mem::offset_of!(Env<true>, insn_pc),
            counter: std::mem::offset_of!(Env<true>, icount),
        })
    }
    // Nothing changes `guard` but the tests (which register targets under it).
    fn indirect_guard() -> Option<usize> {
        Some(std::mem::offset_of!(Env<true>, guard))
    }
    fn pure_fn(h: HelperId) -> Option<vireo_core::exec::PureFn> {
        (h.0 == 5).then_some(not_first as _)
    }
    fn env_fn(h: HelperId) -> Option<vireo_core::exec::EnvFn<Self>> {
        (h.0 == 6).then_some(side_step as _)
    }
    // The entries `map_pages` makes map whole pages of `mem` (2 pages long), with
    // write tags only where `store` has no effect beyond writing memory.
    fn fast_tlb() -> Option<FastTlbLayout> {
        Some(FastTlbLayout {
            table: std::mem::offset_of!(Env<true>, tlb),
            kernel_table: 0,
            user_table: 4 * 32,
            index_bits: 2,
            entry_shift: 5,
            read_tag: 0,
            write_tag: 8,
            addend: 16,
        })
    }
}

// SAFETY: declares nothing direct.
unsafe impl DirectGlobals for Env<false> {}

/// SplitMix64.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len() as u64) as usize]
    }
    /// A value with a bias towards edge cases.
    fn value(&mut self) -> u64 {
        const EDGES: [u64; 16] = [
            0,
            1,
            2,
            7,
            8,
            31,
            63,
            0x7f,
            0x80,
            0xff,
            0x7fff,
            0x8000,
            0xffff,
            0x8000_0000,
            0xffff_ffff,
            0x8000_0000_0000_0000,
        ];
        match self.below(6) {
            0 => self.pick(&EDGES),
            1 => self.pick(&EDGES).wrapping_neg(),
            2 => self.below(300),
            3 => self.below(64),
            _ => self.next(),
        }
    }
    fn size(&mut self) -> Size {
        self.pick(&[Size::B8, Size::B16, Size::B32, Size::B64])
    }
}

const BINOPS: [BinOp; 17] = [
    BinOp::Add,
    BinOp::Sub,
    BinOp::And,
    BinOp::Or,
    BinOp::Xor,
    BinOp::Shl,
    BinOp::Shr,
    BinOp::Sar,
    BinOp::Rol,
    BinOp::Ror,
    BinOp::Mul,
    BinOp::MulHiU,
    BinOp::MulHiS,
    BinOp::DivU,
    BinOp::DivS,
    BinOp::RemU,
    BinOp::RemS,
];
const UNOPS: [UnOp; 6] = [
    UnOp::Neg,
    UnOp::Not,
    UnOp::Bswap,
    UnOp::Popcnt,
    UnOp::Ctz,
    UnOp::Clz,
];
const CONDS: [Cond; 10] = [
    Cond::Eq,
    Cond::Ne,
    Cond::Ltu,
    Cond::Leu,
    Cond::Gtu,
    Cond::Geu,
    Cond::Lt,
    Cond::Le,
    Cond::Gt,
    Cond::Ge,
];

fn global(rng: &mut Rng) -> Global {
    match rng.below(13) {
        12 => Global::Xmm(rng.below(2) as u8),
        0..=5 => Global::Gpr(rng.below(8) as u8),
        6 => Global::Pc,
        7 => Global::CcOp,
        8 => Global::CcSrc,
        9 => Global::CcSrc2,
        10 => Global::Flags,
        _ => Global::SegBase(rng.below(2) as u8),
    }
}

/// Exit `kind`, with the PC set first for a `Jump` or `Pause` (the IR's contract:
/// `Global::Pc` holds their target).
fn exit(b: &mut Builder, kind: ExitKind) {
    if let ExitKind::Jump(t) | ExitKind::Pause(t) = kind {
        let k = b.konst(t);
        b.set(Global::Pc, k);
    }
    b.exit(kind);
}

fn exit_kind(rng: &mut Rng) -> ExitKind {
    match rng.below(5) {
        0 => ExitKind::Jump(rng.next() & 0xffff),
        1 => ExitKind::Indirect,
        2 => ExitKind::Sync,
        3 => ExitKind::Halt,
        _ => ExitKind::Pause(rng.next() & 0xffff),
    }
}

/// A random valid block: forward branches, at most one bounded loop at a time
/// (temp 0 is its counter, which nothing else writes), loads and stores around the
/// fake memory (some fault), helper calls (some fault, some ask to stop), exits
/// and raises in the middle.
fn random_block(rng: &mut Rng) -> Block {
    let pc0 = rng.below(0x1000) * 4;
    let mut b = Builder::new(pc0);
    let ntemps = 2 + rng.below(14) as u32;
    let temps: Vec<Temp> = (0..ntemps).map(|_| b.temp()).collect();
    let pick = |rng: &mut Rng| temps[rng.below(u64::from(ntemps)) as usize];
    let pick_dst = |rng: &mut Rng| temps[1 + rng.below(u64::from(ntemps) - 1) as usize];
    let mut pc = pc0;
    // Temps start defined (the interpreter's and the JIT's temp areas are reused).
    b.insn_start(pc, 1);
    pc += 1;
    for t in &temps {
        let v = rng.value();
        b.push(Op::Const { dst: *t, value: v });
    }
    let mut pending: Vec<Label> = Vec::new();
    let mut in_loop: Option<Label> = None;
    let ninsns = 1 + rng.below(12);
    for _ in 0..ninsns {
        let len = 1 + rng.below(6) as u8;
        b.insn_start(pc, len);
        pc += u64::from(len);
        if in_loop.is_none() && rng.chance(8) {
            // Jumps never enter or leave a loop body.
            for l in pending.drain(..) {
                b.set_label(l);
            }
            let init = 1 + rng.below(3);
            b.push(Op::Const {
                dst: temps[0],
                value: init,
            });
            let top = b.label();
            b.set_label(top);
            in_loop = Some(top);
        }
        for _ in 0..1 + rng.below(6) {
            random_op(rng, &mut b, &pick, &pick_dst, &mut pending);
        }
        if let Some(top) = in_loop {
            if rng.chance(30) {
                for l in pending.drain(..) {
                    b.set_label(l);
                }
                let one = pick_dst(rng);
                b.push(Op::Const { dst: one, value: 1 });
                b.push(Op::Bin {
                    op: BinOp::Sub,
                    size: Size::B64,
                    dst: temps[0],
                    a: temps[0],
                    b: one,
                });
                let zero = pick_dst(rng);
                b.push(Op::Const {
                    dst: zero,
                    value: 0,
                });
                let c = pick_dst(rng);
                b.push(Op::SetCond {
                    cond: Cond::Ne,
                    size: Size::B64,
                    dst: c,
                    a: temps[0],
                    b: zero,
                });
                b.br_if(c, top);
                in_loop = None;
            }
        }
        if in_loop.is_none() && rng.chance(5) {
            for l in pending.drain(..) {
                b.set_label(l);
            }
        }
    }
    if let Some(top) = in_loop {
        // Close the loop (a single pass more at most: the counter is 1..3).
        for l in pending.drain(..) {
            b.set_label(l);
        }
        let z = pick_dst(rng);
        b.push(Op::Const {
            dst: temps[0],
            value: 0,
        });
        b.push(Op::Const { dst: z, value: 0 });
        b.br_if(z, top);
    }
    for l in pending.drain(..) {
        b.set_label(l);
    }
    if rng.chance(10) {
        let e = rng.chance(50).then(|| pick(rng));
        b.raise(rng.pick(&[0u8, 6, 13, 14]), e);
    } else {
        exit(&mut b, exit_kind(rng));
    }
    let blk = b.finish();
    blk.validate().expect("generator made an invalid block");
    blk
}

/// A memory address: in page 0, across the page boundary, in page 1, or across the
/// end of the memory.
fn address(rng: &mut Rng) -> u64 {
    rng.pick(&[0, 0xf80, 0x1000, 0x1f80]) + rng.below(0x108)
}

fn random_op(
    rng: &mut Rng,
    b: &mut Builder,
    pick: &dyn Fn(&mut Rng) -> Temp,
    pick_dst: &dyn Fn(&mut Rng) -> Temp,
    pending: &mut Vec<Label>,
) {
    let mmu = |rng: &mut Rng| rng.pick(&[MmuIdx::Kernel, MmuIdx::User]);
    match rng.below(110) {
        106.. => {
            // A mask tested against zero (compiled as one `test`), the result for a
            // branch or kept, at mixed widths.
            let t = b.temp();
            let mask = b.temp();
            let m = rng.pick(&[0xf, 0x8000_0000, 0xffff_ffff_8000_0000, 1, 0x7fff_ffff]);
            b.push(Op::Const {
                dst: mask,
                value: m,
            });
            let zero = b.konst(0);
            b.push(Op::Bin {
                op: BinOp::And,
                size: rng.pick(&[Size::B32, Size::B64, Size::B16]),
                dst: t,
                a: pick(rng),
                b: mask,
            });
            let c = b.temp();
            b.push(Op::SetCond {
                cond: rng.pick(&[Cond::Eq, Cond::Ne]),
                size: rng.pick(&[Size::B32, Size::B64, Size::B8]),
                dst: c,
                a: t,
                b: zero,
            });
            if rng.chance(70) {
                let l = b.label();
                b.br_if(c, l);
                pending.push(l);
            } else {
                b.push(Op::Mov {
                    dst: pick_dst(rng),
                    src: c,
                });
            }
        }
        100..=105 => {
            // A temp assigned once and read after a label that only a branch from
            // after the assignment leads to (it may live in a register across it),
            // with other ops (maybe a call or an exit) skipped over.
            let t = b.temp();
            b.push(Op::Bin {
                op: rng.pick(&BINOPS),
                size: rng.size(),
                dst: t,
                a: pick(rng),
                b: pick(rng),
            });
            let skip = b.label();
            b.br_if(pick(rng), skip);
            for _ in 0..rng.below(3) {
                match rng.below(4) {
                    0 => exit(b, exit_kind(rng)),
                    1 => {
                        let r = pick_dst(rng);
                        b.push(Op::Call {
                            helper: HelperId(rng.pick(&[0u16, 1, 5, 6])),
                            args: Args::new(&[t, pick(rng), pick(rng)]),
                            ret: Some(r),
                            effects: Effects::ALL,
                        });
                    }
                    _ => b.push(Op::Bin {
                        op: rng.pick(&BINOPS),
                        size: rng.size(),
                        dst: pick_dst(rng),
                        a: t,
                        b: pick(rng),
                    }),
                }
            }
            b.set_label(skip);
            b.push(Op::Bin {
                op: rng.pick(&BINOPS),
                size: rng.size(),
                dst: pick_dst(rng),
                a: t,
                b: pick(rng),
            });
        }
        0..=7 => {
            let v = rng.value();
            b.push(Op::Const {
                dst: pick_dst(rng),
                value: v,
            })
        }
        8..=10 => b.push(Op::Mov {
            dst: pick_dst(rng),
            src: pick(rng),
        }),
        11..=17 => {
            let g = global(rng);
            b.push(Op::Get {
                dst: pick_dst(rng),
                src: g,
            })
        }
        18..=23 => {
            let g = global(rng);
            b.push(Op::Set {
                dst: g,
                src: pick(rng),
            })
        }
        24..=45 => b.push(Op::Bin {
            op: rng.pick(&BINOPS),
            size: rng.size(),
            dst: pick_dst(rng),
            a: pick(rng),
            b: pick(rng),
        }),
        46..=51 => b.push(Op::Un {
            op: rng.pick(&UNOPS),
            size: rng.size(),
            dst: pick_dst(rng),
            a: pick(rng),
        }),
        52..=55 => b.push(Op::Ext {
            dst: pick_dst(rng),
            src: pick(rng),
            from: rng.size(),
            signed: rng.chance(50),
        }),
        56..=61 => b.push(Op::SetCond {
            cond: rng.pick(&CONDS),
            size: rng.size(),
            dst: pick_dst(rng),
            a: pick(rng),
            b: pick(rng),
        }),
        62..=64 => b.push(Op::Select {
            dst: pick_dst(rng),
            cond: pick(rng),
            a: pick(rng),
            b: pick(rng),
        }),
        65..=72 => {
            // An address mostly inside the memory: a constant, or a temp masked.
            let addr = pick_dst(rng);
            let a = address(rng);
            b.push(Op::Const {
                dst: addr,
                value: a,
            });
            let size = rng.size();
            b.push(Op::Load {
                dst: pick_dst(rng),
                addr,
                size,
                signed: rng.chance(50),
                mmu: mmu(rng),
                write: rng.chance(30),
            });
        }
        73..=79 => {
            let addr = pick_dst(rng);
            let a = if rng.chance(15) {
                CODE + rng.below(16)
            } else {
                address(rng)
            };
            b.push(Op::Const {
                dst: addr,
                value: a,
            });
            let size = rng.size();
            b.push(Op::Store {
                addr,
                val: pick(rng),
                size,
                mmu: mmu(rng),
            });
        }
        80..=84 => {
            let l = b.label();
            // Half the time on a comparison only the branch reads (compiled as a
            // compare-and-branch), sometimes flipped (the IR passes invert it).
            let c = if rng.chance(50) {
                let c = b.temp();
                b.push(Op::SetCond {
                    cond: rng.pick(&CONDS),
                    size: rng.size(),
                    dst: c,
                    a: pick(rng),
                    b: pick(rng),
                });
                if rng.chance(30) {
                    let one = b.konst(1);
                    b.bin(BinOp::Xor, rng.size(), c, one)
                } else {
                    c
                }
            } else {
                pick(rng)
            };
            b.br_if(c, l);
            pending.push(l);
        }
        85 => {
            let l = b.label();
            b.br(l);
            pending.push(l);
        }
        86..=91 => {
            let helper = rng.pick(&[0u16, 0, 1, 1, 2, 3, 5, 5, 6, 6]);
            // Helper 5 (`!a0`) is pure, with a plain-function form in `Env<true>`
            // (which gets 0 for missing arguments where `call` has 0x55: always one);
            // helper 6 has an environment-function form (always three arguments).
            let n = match helper {
                5 => (rng.below(5) as usize).max(1),
                6 => 3,
                _ => rng.below(5) as usize,
            };
            let args: Vec<Temp> = (0..n).map(|_| pick(rng)).collect();
            let ret = rng.chance(70).then(|| pick_dst(rng));
            let effects = if helper == 5 {
                Effects::PURE
            } else {
                Effects::ALL
            };
            b.push(Op::Call {
                helper: HelperId(helper),
                args: Args::new(&args),
                ret,
                effects,
            });
        }
        92..=95 => {
            // A conditional exit in the middle.
            let skip = b.label();
            b.br_if(pick(rng), skip);
            exit(b, exit_kind(rng));
            b.set_label(skip);
        }
        96 => {
            // A check: the branch past its raise (or exit) is the label's only way
            // in; the skipped path may change temps and globals first (what the
            // passes and the code generator knew at the branch holds after the
            // label, less that).
            let skip = b.label();
            b.br_if(pick(rng), skip);
            for _ in 0..rng.below(4) {
                match rng.below(4) {
                    0 => b.push(Op::Set {
                        dst: global(rng),
                        src: pick(rng),
                    }),
                    1 => b.push(Op::Get {
                        dst: pick_dst(rng),
                        src: global(rng),
                    }),
                    2 => b.push(Op::Const {
                        dst: pick_dst(rng),
                        value: rng.value(),
                    }),
                    _ => b.push(Op::Bin {
                        op: rng.pick(&BINOPS),
                        size: rng.size(),
                        dst: pick_dst(rng),
                        a: pick(rng),
                        b: pick(rng),
                    }),
                }
            }
            if rng.chance(70) {
                let e = rng.chance(50).then(|| pick(rng));
                b.raise(rng.pick(&[0u8, 6, 13, 14]), e);
            } else {
                exit(b, exit_kind(rng));
            }
            b.set_label(skip);
        }
        _ => {
            // Large and negative constants, the temp area's edges.
            let v = rng.pick(&[u64::MAX, i64::MIN as u64, 0x1234_5678_9abc_def0, 1 << 31]);
            b.push(Op::Const {
                dst: pick_dst(rng),
                value: v,
            })
        }
    }
}

/// Runs `blk` in both backends from `env`; panics with the block on a mismatch.
fn check<const D: bool>(jit: &mut JitCache<Env<D>>, blk: &Block, env: &Env<D>) -> BlockOutcome
where
    Env<D>: DirectGlobals,
{
    let mut e1 = env.clone();
    let mut interp = Interp::new();
    let o1 = interp.run(&Prepared::new(blk.clone()), &mut e1);

    let code = match jit.compile(blk) {
        Ok(c) => c,
        Err(JitError::Full { .. }) => {
            jit.flush();
            jit.compile(blk).expect("compile after flush")
        }
        Err(e) => panic!("compile failed: {e}\n{blk}"),
    };
    let mut e2 = env.clone();
    e2.map_pages();
    let mut st = JitState::new();
    let o2 = jit.run(&code, &mut e2, &mut st).expect("live block");
    assert_eq!(o1, o2, "outcome (direct={D})\n{blk}");
    assert_eq!(interp.insns, st.insns, "insns (direct={D})\n{blk}");
    // Between calls into the environment the JIT leaves the PC hook as of the last
    // call (the calls' log holds what each saw).
    e2.insn_pc = e1.insn_pc;
    assert_eq!(e1, e2, "environment (direct={D})\n{blk}");

    // The IR passes change nothing the guest can see, in either backend.
    let mut opt = blk.clone();
    vireo_core::opt::optimize(&mut opt);
    opt.validate().expect("optimized block valid");
    let mut e3 = env.clone();
    let mut interp3 = Interp::new();
    let o3 = interp3.run(&Prepared::new(opt.clone()), &mut e3);
    assert_eq!(o1, o3, "outcome, optimized\n{blk}\noptimized:\n{opt}");
    assert_eq!(interp.insns, interp3.insns, "insns, optimized\n{blk}");
    assert_eq!(e1, e3, "environment, optimized\n{blk}\noptimized:\n{opt}");
    let code = jit.compile(&opt).unwrap_or_else(|_| {
        jit.flush();
        jit.compile(&opt).expect("compile after flush")
    });
    let mut e4 = env.clone();
    e4.map_pages();
    let o4 = jit
        .run(&code, &mut e4, &mut JitState::new())
        .expect("live block");
    assert_eq!(o1, o4, "outcome, optimized, JIT\n{opt}");
    e4.insn_pc = e1.insn_pc;
    assert_eq!(e1, e4, "environment, optimized, JIT\n{opt}");
    OPTIMIZED_OPS.fetch_add(opt.ops.len(), std::sync::atomic::Ordering::Relaxed);
    ORIGINAL_OPS.fetch_add(blk.ops.len(), std::sync::atomic::Ordering::Relaxed);
    o1
}

/// Ops before and after the IR passes, over all `check`s.
static ORIGINAL_OPS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
static OPTIMIZED_OPS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

#[test]
fn differential_random_blocks() {
    let mut direct: JitCache<Env<true>> = counting_cache(8 << 20);
    let mut indirect: JitCache<Env<false>> = counting_cache(8 << 20);
    let mut seen = Seen::default();
    for seed in 0..4000u64 {
        let mut rng = Rng(seed);
        let blk = random_block(&mut rng);
        let mut env_rng = Rng(seed ^ 0xabcdef);
        let env_d = Env::<true>::new(&mut env_rng);
        let mut env_rng = Rng(seed ^ 0xabcdef);
        let env_i = Env::<false>::new(&mut env_rng);
        let o = check(&mut direct, &blk, &env_d);
        check(&mut indirect, &blk, &env_i);
        seen.note(&o);
    }
    // The generator must exercise every way out of a block.
    for k in ["exit", "fault", "stopped"] {
        assert!(seen.0.get(k).copied().unwrap_or(0) > 100, "{seen:?}");
    }
    // ... and give the IR passes work.
    let (before, after) = (
        ORIGINAL_OPS.load(std::sync::atomic::Ordering::Relaxed),
        OPTIMIZED_OPS.load(std::sync::atomic::Ordering::Relaxed),
    );
    assert!(
        after * 20 < before * 19,
        "IR passes: {before} ops -> {after}"
    );
}

/// The lazy `Set`s (one backward pass) are those of their definition, checked `Set`
/// by `Set` by scanning ahead, and the temps allocation takes as constants those of
/// theirs, on random blocks (the same buffers reused).
#[test]
fn lazy_sets_and_constants_match_their_definitions() {
    use crate::codegen::direct;
    fn by_definition(block: &Block) -> (Vec<bool>, Vec<(usize, usize)>) {
        let ops = &block.ops;
        let only = block.branch_only_labels();
        let mut last_read = vec![0; block.temps as usize];
        for (i, op) in ops.iter().enumerate() {
            op.for_each_read(|t| last_read[t.0 as usize] = i);
        }
        let konst = |t: Temp| {
            ops.iter()
                .any(|o| matches!(o, Op::Const { dst, .. } if *dst == t))
        };
        // From op `j` on: the accesses before `g` is set again, if it is (over a
        // branch to a branch-only label when the code it skips is plain and sets `g`
        // again itself or leaves the block without reading it: then that way out
        // too), and where.
        fn ahead(
            ops: &[Op],
            only: &[Option<usize>],
            mut j: usize,
            g: Global,
        ) -> Option<(Vec<usize>, Vec<usize>, usize)> {
            let (mut accesses, mut exits) = (Vec::new(), Vec::new());
            while j < ops.len() {
                match ops[j] {
                    Op::Set { dst, .. } if dst == g => return Some((accesses, exits, j)),
                    Op::Set { dst: h, .. } | Op::Get { src: h, .. }
                        if h != g && direct::<Env<true>>(h).is_some() => {}
                    Op::Load { .. } | Op::Store { .. } => accesses.push(j),
                    Op::InsnStart { .. } => {}
                    ref o if o.is_arith() => {}
                    Op::BrIf { target: l, .. } if only[l.0 as usize] == Some(j) => {
                        let at = ops.iter().position(|o| *o == Op::Label(l))?;
                        let close = at - 1;
                        let skipped = &ops[j + 1..close];
                        let plain = skipped.iter().all(|o| {
                            o.is_arith()
                                || matches!(*o, Op::Set { dst: h, .. } | Op::Get { src: h, .. }
                                    if direct::<Env<true>>(h).is_some())
                        });
                        if !plain {
                            return None;
                        }
                        let first = skipped.iter().find_map(|o| match *o {
                            Op::Set { dst, .. } if dst == g => Some(true),
                            Op::Get { src, .. } if src == g => Some(false),
                            _ => None,
                        });
                        match (first, &ops[close]) {
                            (Some(true), _) => {}
                            (None, Op::Exit(_) | Op::Raise { .. }) => exits.push(close),
                            _ => return None,
                        }
                        j = at;
                    }
                    _ => return None,
                }
                j += 1;
            }
            None
        }
        let (mut lazy, mut pending) = (vec![false; ops.len()], Vec::new());
        for (i, op) in ops.iter().enumerate() {
            let Op::Set { dst: g, src } = *op else {
                continue;
            };
            if g == Global::Pc || direct::<Env<true>>(g).is_none() {
                continue;
            }
            let Some((accesses, exits, next)) = ahead(ops, &only, i + 1, g) else {
                continue;
            };
            // Not when a store before it in its instruction may have raised a stop
            // request that an instruction start before the next `Set` takes.
            let start = ops[..i]
                .iter()
                .rposition(|o| matches!(o, Op::InsnStart { .. }))
                .map_or(0, |s| s + 1);
            let stored = ops[start..i].iter().any(|o| matches!(o, Op::Store { .. }));
            if stored
                && ops[i..next]
                    .iter()
                    .any(|o| matches!(o, Op::InsnStart { .. }))
            {
                continue;
            }
            // Needed by the accesses' slow paths and the ways out: kept in a
            // register up to the last of them.
            let last = accesses.iter().chain(&exits).max();
            let free = konst(src)
                || last
                    .is_some_and(|&a| last_read[src.0 as usize] + crate::analysis::LAZY_REACH >= a);
            if last.is_some() && free {
                lazy[i] = true;
                pending.extend(accesses.iter().chain(&exits).map(|&a| (a, i)));
            }
        }
        pending.sort();
        (lazy, pending)
    }
    // Instruction-like stretches: globals set and read, accesses, arithmetic, now
    // and then something that ends a stretch (a label, a branch, a helper call).
    fn stretches(rng: &mut Rng) -> Block {
        let mut b = Builder::new(0x1000);
        let globals = [
            Global::Gpr(0),
            Global::Gpr(1),
            Global::CcOp,
            Global::CcSrc,
            Global::Pc,
            Global::Flags,
        ];
        let mut temps = vec![b.konst(rng.value())];
        let mut open: Vec<Label> = Vec::new();
        for _ in 0..rng.below(60) {
            let t = temps[rng.below(temps.len() as u64) as usize];
            match rng.below(20) {
                0..=5 => b.set(rng.pick(&globals), t),
                6 | 7 => temps.push(b.get(rng.pick(&globals))),
                8 | 9 => temps.push(b.load(t, Size::B32, false, MmuIdx::Kernel)),
                10 | 11 => b.store(t, t, Size::B64, MmuIdx::Kernel),
                12 | 13 => temps.push(b.bin(BinOp::Add, Size::B64, t, t)),
                14 | 15 => temps.push(b.konst(rng.value())),
                16 | 17 => b.insn_start(0x1000, 1),
                // Branches forward, some labels reached by several.
                18 if !open.is_empty() && rng.chance(40) => {
                    let k = rng.below(open.len() as u64) as usize;
                    if rng.chance(50) {
                        // A way out first (globals set, maybe an access): the label
                        // then is one only its branches reach.
                        for _ in 0..rng.below(4) {
                            b.set(rng.pick(&globals), t);
                        }
                        if rng.chance(20) {
                            temps.push(b.load(t, Size::B32, false, MmuIdx::Kernel));
                        }
                        exit(&mut b, ExitKind::Jump(0x2000));
                    }
                    b.set_label(open.swap_remove(k));
                }
                18 => {
                    let l = match open.is_empty() || rng.chance(50) {
                        true => {
                            open.push(b.label());
                            open[open.len() - 1]
                        }
                        false => rng.pick(&open),
                    };
                    b.br_if(t, l);
                    if rng.chance(40) {
                        // A jump out of the block: the way out sets globals and
                        // leaves, the label right after it (the compare-and-jump
                        // shape, flags stored on the way out and after the label).
                        let flags = [Global::Gpr(0), Global::Gpr(1)];
                        for g in flags {
                            if rng.chance(80) {
                                b.set(g, t);
                            }
                        }
                        exit(&mut b, ExitKind::Jump(0x2000));
                        if let Some(k) = open.iter().position(|&m| m == l) {
                            b.set_label(open.swap_remove(k));
                            if rng.chance(50) {
                                temps.push(b.load(t, Size::B32, false, MmuIdx::Kernel));
                            }
                            for g in flags {
                                if rng.chance(80) {
                                    b.set(g, t);
                                }
                            }
                        }
                    }
                }
                _ => {
                    b.call(HelperId(0x7), &[t], false, Effects::PURE);
                }
            }
        }
        for l in open {
            b.set_label(l);
        }
        exit(&mut b, ExitKind::Indirect);
        b.finish()
    }
    let mut sc = crate::analysis::Scratch::default();
    let (mut found, mut crossing) = (0, 0);
    for seed in 0..3000u64 {
        let blk = if seed % 2 == 0 {
            random_block(&mut Rng(seed))
        } else {
            stretches(&mut Rng(seed))
        };
        let only = blk.branch_only_labels();
        let got = crate::analysis::lazy_sets::<Env<true>>(&blk, &only, &mut sc);
        let want = by_definition(&blk);
        assert_eq!(
            (&got.lazy, &got.pending),
            (&want.0, &want.1),
            "seed {seed}\n{blk}"
        );
        found += got.pending.len();
        // Pending across a branch (the optimizer's flags stored on the way out).
        crossing += got
            .pending
            .iter()
            .filter(|&&(a, i)| blk.ops[i..a].iter().any(|o| matches!(o, Op::BrIf { .. })))
            .count();
        // Temps taken as constants: assigned once by a `Const`, before every use,
        // every path to a use through the assignment (a label between is reached
        // only by branches from between).
        let a = crate::analysis::allocate(&blk, &got, &mut sc);
        let ops = &blk.ops;
        let pos = |l: Label| ops.iter().position(|o| *o == Op::Label(l));
        for t in 0..blk.temps {
            let defs: Vec<usize> = (0..ops.len())
                .filter(|&i| ops[i].dst() == Some(Temp(t)))
                .collect();
            let mut reads = Vec::new();
            for (i, o) in ops.iter().enumerate() {
                o.for_each_read(|x| {
                    if x == Temp(t) {
                        reads.push(i)
                    }
                });
            }
            let want = match (&defs[..], reads.first(), reads.last()) {
                (&[d], Some(&r0), Some(&u)) if d < r0 && matches!(ops[d], Op::Const { .. }) => {
                    ops.iter().enumerate().all(|(b, o)| match *o {
                        Op::Br(l) | Op::BrIf { target: l, .. } => {
                            let inside = |i: usize| d < i && i <= u;
                            !pos(l).is_some_and(inside) || inside(b)
                        }
                        _ => true,
                    })
                }
                _ => false,
            };
            assert_eq!(
                a.konst[t as usize].is_some(),
                want,
                "seed {seed} t{t}\n{blk}"
            );
        }
        sc.lazy = got;
    }
    assert!(found > 100, "{found} pending stores");
    assert!(crossing > 20, "{crossing} pending stores across a branch");
}

/// The kind of a block's outcome, for counting which ways out a test exercised.
fn outcome_kind(o: &BlockOutcome) -> &'static str {
    match o {
        BlockOutcome::Exit(_) => "exit",
        BlockOutcome::Fault { .. } => "fault",
        BlockOutcome::Stopped { .. } => "stopped",
    }
}

/// How many blocks of a test ended each way ([`outcome_kind`]).
#[derive(Debug, Default)]
struct Seen(std::collections::HashMap<&'static str, u32>);

impl Seen {
    fn note(&mut self, o: &BlockOutcome) {
        *self.0.entry(outcome_kind(o)).or_insert(0) += 1;
    }

    /// Asserts that some block left each way: an exit, a fault, a stop.
    fn assert_every_way_out(&self) {
        for k in ["exit", "fault", "stopped"] {
            assert!(self.0.contains_key(k), "{self:?}");
        }
    }
}

/// Every binary and unary op at every width on edge values, one op per block.
#[test]
fn differential_ops_exhaustive_edges() {
    let vals = [
        0u64,
        1,
        2,
        3,
        7,
        8,
        9,
        15,
        16,
        31,
        32,
        33,
        63,
        64,
        65,
        0x7f,
        0x80,
        0xff,
        0x100,
        0x7fff,
        0x8000,
        0xffff,
        0x7fff_ffff,
        0x8000_0000,
        0xffff_ffff,
        0x1_0000_0000,
        i64::MAX as u64,
        i64::MIN as u64,
        u64::MAX,
        u64::MAX - 1,
        0xdead_beef_cafe_f00d,
    ];
    let mut jit: JitCache<Env<true>> = counting_cache(64 << 20);
    let mut rng = Rng(1);
    let env = Env::<true>::new(&mut rng);
    for size in [Size::B8, Size::B16, Size::B32, Size::B64] {
        let mut b = Builder::new(0);
        b.insn_start(0, 1);
        let mut out = 0u8;
        for &x in &vals {
            for &y in &vals {
                let (tx, ty) = (b.konst(x), b.konst(y));
                for op in BINOPS {
                    let r = b.bin(op, size, tx, ty);
                    b.set(Global::Gpr(out % 8), r);
                    out = out.wrapping_add(1);
                    // Fold every result into memory so nothing is lost.
                    let a = b.konst(u64::from(out) * 8 % 248);
                    b.store(a, r, Size::B64, MmuIdx::Kernel);
                }
                let c = b.setcond(CONDS[usize::from(out) % 10], size, tx, ty);
                let a = b.konst(250);
                b.store(a, c, Size::B8, MmuIdx::Kernel);
            }
            for op in UNOPS {
                let tx = b.konst(x);
                let r = b.un(op, size, tx);
                let a = b.konst(u64::from(op as u8) * 8 + 100);
                b.store(a, r, Size::B64, MmuIdx::Kernel);
                let e = b.ext(tx, size, out.is_multiple_of(2));
                b.set(Global::CcDst, e);
                out = out.wrapping_add(1);
            }
        }
        b.exit(ExitKind::Indirect);
        let blk = b.finish();
        // Compare after every op: split into one block per op would be slow to
        // diagnose; instead compare the final state and, on a mismatch, the ops.
        check(&mut jit, &blk, &env);
    }
    // One op per block for precise diagnosis of the divisions (the trap-prone ops).
    for size in [Size::B8, Size::B16, Size::B32, Size::B64] {
        for op in [
            BinOp::DivS,
            BinOp::RemS,
            BinOp::DivU,
            BinOp::RemU,
            BinOp::MulHiS,
        ] {
            for &x in &vals {
                for &y in &vals {
                    let mut b = Builder::new(0);
                    b.insn_start(0, 1);
                    let (tx, ty) = (b.konst(x), b.konst(y));
                    let r = b.bin(op, size, tx, ty);
                    b.set(Global::Gpr(0), r);
                    b.exit(ExitKind::Indirect);
                    check(&mut jit, &b.finish(), &env);
                }
            }
        }
    }
}

#[test]
fn faults_stops_and_panics() {
    let mut jit: JitCache<Env<true>> = counting_cache(1 << 20);
    let mut rng = Rng(5);
    let env = Env::<true>::new(&mut rng);

    // A fault in the second instruction reports its pc; the first one's write stays.
    let mut b = Builder::new(0x10);
    b.insn_start(0x10, 1);
    let one = b.konst(1);
    b.set(Global::Gpr(0), one);
    b.insn_start(0x11, 3);
    let a = b.konst(MEM as u64 + 1000);
    b.load(a, Size::B32, false, MmuIdx::Kernel);
    b.exit(ExitKind::Indirect);
    let blk = b.finish();
    let o = check(&mut jit, &blk, &env);
    assert_eq!(
        o,
        BlockOutcome::Fault {
            fault: Fault {
                vector: 14,
                error_code: Some(0),
                address: Some(MEM as u64 + 1000)
            },
            pc: 0x11
        }
    );

    // A stop request before the second instruction: pc is set, the first counted.
    let mut b = Builder::new(0x20);
    b.insn_start(0x20, 1);
    let a = b.konst(CODE);
    b.store(a, a, Size::B8, MmuIdx::Kernel);
    b.insn_start(0x21, 1);
    b.exit(ExitKind::Jump(0x22));
    let blk = b.finish();
    assert_eq!(
        check(&mut jit, &blk, &env),
        BlockOutcome::Stopped { pc: 0x21 }
    );
    let mut e = env.clone();
    let mut st = JitState::new();
    let code = jit.compile(&blk).unwrap();
    jit.run(&code, &mut e, &mut st).unwrap();
    assert_eq!((e.pc, e.icount, st.insns), (0x21, env.icount + 1, 1));

    // A panic in a helper unwinds out of `run`, not through generated code.
    let mut b = Builder::new(0);
    b.insn_start(0, 1);
    b.call(HelperId(4), &[], false, Effects::ALL);
    b.exit(ExitKind::Indirect);
    let code = jit.compile(&b.finish()).unwrap();
    let mut e = env.clone();
    e.panic_in_helper = true;
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        jit.run(&code, &mut e, &mut JitState::new())
    }));
    assert!(r.is_err());

    // A flush retires blocks: they no longer run.
    assert!(jit.bytes_used() > 0);
    jit.flush();
    assert_eq!(jit.bytes_used(), 0);
    assert!(jit.run(&code, &mut e, &mut JitState::new()).is_none());
}

#[test]
fn full_cache_reports_full() {
    let mut jit: JitCache<Env<false>> = counting_cache(4096);
    let mut b = Builder::new(0);
    for i in 0..200 {
        b.insn_start(i, 1);
        let t = b.konst(i);
        b.set(Global::Gpr(5), t);
    }
    b.exit(ExitKind::Indirect);
    let blk = b.finish();
    assert!(matches!(jit.compile(&blk), Err(JitError::Full { .. })));
    // An invalid block is refused, not compiled.
    let mut bad = Builder::new(0);
    let l = bad.label();
    bad.br(l);
    assert!(matches!(
        jit.compile(&bad.finish()),
        Err(JitError::Unsupported(_))
    ));
}

/// Block at `pc`: one instruction doing `r[dst] += r[src] + 1` (r0-r3 are direct
/// globals), then `Jump(next)`.
fn step_block(pc: u64, dst: u8, src: u8, next: u64) -> Block {
    let mut b = Builder::new(pc);
    b.insn_start(pc, 1);
    let d = b.get(Global::Gpr(dst));
    let s = b.get(Global::Gpr(src));
    let s1 = b.bini(BinOp::Add, Size::B64, s, 1);
    let sum = b.bin(BinOp::Add, Size::B64, d, s1);
    b.set(Global::Gpr(dst), sum);
    let n = b.konst(next);
    b.set(Global::Pc, n);
    b.exit(ExitKind::Jump(next));
    b.finish()
}

/// A block at `pc` that stores into `CODE` (raising the stop request) and jumps to
/// `next`.
fn code_store_block(pc: u64, next: u64) -> Block {
    let mut b = Builder::new(pc);
    b.insn_start(pc, 1);
    let at = b.konst(CODE);
    b.store(at, at, Size::B8, MmuIdx::Kernel);
    let n = b.konst(next);
    b.set(Global::Pc, n);
    b.exit(ExitKind::Jump(next));
    b.finish()
}

/// Without chain counting (the default) the same loop runs the same way, its code
/// a read-modify-write a pass shorter, and reports no count.
#[test]
fn chains_run_the_same_uncounted() {
    let env = Env::<true>::new(&mut Rng(12));
    let blk = step_block(0x100, 0, 1, 0x100);
    let mut runs = Vec::new();
    for count in [false, true] {
        let mut jit: JitCache<Env<true>> = JitCache::new(1 << 20);
        jit.set_count_chains(count);
        let a = jit.compile(&blk).unwrap();
        jit.set_tag(&a, 1);
        let (mut e, mut st) = (env.clone(), JitState::new());
        let r = jit
            .run_chained(&a, &mut e, &mut st, &Gate::new(), 7)
            .unwrap();
        runs.push((r.outcome, r.tag, r.chained, st.insns, e, a.bytes));
    }
    let (uncounted, counted) = (&runs[0], &runs[1]);
    assert_eq!((uncounted.2, counted.2), (0, 6));
    assert_eq!(uncounted.0, counted.0);
    assert_eq!((uncounted.1, uncounted.3), (counted.1, counted.3));
    assert_eq!(uncounted.4, counted.4);
    assert!(uncounted.5 < counted.5, "{} {}", uncounted.5, counted.5);
}

/// A block that jumps to its own start runs on in itself, unlinked, until the
/// limit or a flag; one that stores into code stops after one pass.
#[test]
fn a_block_looping_to_itself_runs_on_until_the_limit_or_a_flag() {
    let mut jit: JitCache<Env<true>> = counting_cache(1 << 20);
    let env = Env::<true>::new(&mut Rng(11));
    let blk = step_block(0x100, 0, 1, 0x100);
    let a = jit.compile(&blk).unwrap();
    jit.set_tag(&a, 1);
    let mut want = env.clone();
    let p = Prepared::new(blk);
    let mut interp = Interp::new();
    for _ in 0..7 {
        interp.run(&p, &mut want);
    }
    let gate = Gate::new();
    let (mut e, mut st) = (env.clone(), JitState::new());
    let r = jit.run_chained(&a, &mut e, &mut st, &gate, 7).unwrap();
    assert_eq!(r.outcome, BlockOutcome::Exit(ExitKind::Jump(0x100)));
    assert_eq!((r.tag, r.chained, st.insns), (1, 6, 7));
    e.insn_pc = want.insn_pc;
    assert_eq!(e, want);
    gate.raise(2);
    let r = jit
        .run_chained(&a, &mut env.clone(), &mut st, &gate, 7)
        .unwrap();
    assert_eq!(r.chained, 0);
    gate.take(2);
    // A store into code raises the stop request: no second pass.
    let c = jit.compile(&code_store_block(0x300, 0x300)).unwrap();
    let mut e = env.clone();
    e.map_pages();
    let r = jit.run_chained(&c, &mut e, &mut st, &gate, 7).unwrap();
    assert_eq!(r.chained, 0);
}

/// A flag raised by another thread while blocks run chained ends the run at a block
/// boundary, long before the limit.
#[test]
fn a_flag_raised_during_a_run_ends_it() {
    let mut jit: JitCache<Env<true>> = counting_cache(1 << 20);
    let env = Env::<true>::new(&mut Rng(12));
    let a = jit.compile(&step_block(0x100, 0, 1, 0x100)).unwrap();
    let gate = std::sync::Arc::new(Gate::new());
    let (mut e, mut st) = (env.clone(), JitState::new());
    // About a second of passes if nothing closed the gate.
    let limit = 1 << 30;
    let raiser = {
        let gate = gate.clone();
        std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(5));
            gate.raise(0);
        })
    };
    let r = jit.run_chained(&a, &mut e, &mut st, &gate, limit).unwrap();
    raiser.join().unwrap();
    assert!(
        r.chained > 0 && r.chained < limit - 1,
        "{} passes",
        r.chained
    );
    assert_eq!(st.insns, r.chained + 1);
    assert_eq!(r.outcome, BlockOutcome::Exit(ExitKind::Jump(0x100)));
}

#[test]
fn linked_blocks_run_on_until_the_limit_or_a_flag() {
    let mut jit: JitCache<Env<true>> = counting_cache(1 << 20);
    let mut rng = Rng(9);
    let env = Env::<true>::new(&mut rng);
    let a = jit.compile(&step_block(0x100, 0, 1, 0x200)).unwrap();
    let b = jit.compile(&step_block(0x200, 1, 0, 0x100)).unwrap();
    jit.set_tag(&a, 1);
    jit.set_tag(&b, 2);
    jit.link(&a, 0x200, &b);
    jit.link(&b, 0x100, &a);
    // The oracle: the same ten blocks one at a time in the interpreter.
    let mut want = env.clone();
    let (pa, pb) = (
        Prepared::new(step_block(0x100, 0, 1, 0x200)),
        Prepared::new(step_block(0x200, 1, 0, 0x100)),
    );
    let mut interp = Interp::new();
    for i in 0..10 {
        interp.run(if i % 2 == 0 { &pa } else { &pb }, &mut want);
    }
    let gate = Gate::new();
    let mut e = env.clone();
    let mut st = JitState::new();
    let r = jit.run_chained(&a, &mut e, &mut st, &gate, 10).unwrap();
    assert_eq!(r.outcome, BlockOutcome::Exit(ExitKind::Jump(0x100)));
    assert_eq!((r.tag, r.chained, st.insns), (2, 9, 10));
    e.insn_pc = want.insn_pc;
    assert_eq!(e, want);
    // Without chaining (plain `run`), or with a flag up: one block.
    let mut e = env.clone();
    assert_eq!(
        jit.run(&a, &mut e, &mut st),
        Some(BlockOutcome::Exit(ExitKind::Jump(0x200)))
    );
    gate.raise(1);
    let r = jit
        .run_chained(&a, &mut env.clone(), &mut st, &gate, 10)
        .unwrap();
    assert_eq!((r.tag, r.chained), (1, 0));
    gate.take(1);
    // A stop request raised inside a block (a store into `CODE`) ends the chain too.
    let c = jit.compile(&code_store_block(0x300, 0x100)).unwrap();
    jit.set_tag(&c, 3);
    jit.link(&c, 0x100, &a);
    let r = jit
        .run_chained(&c, &mut env.clone(), &mut st, &gate, 10)
        .unwrap();
    assert_eq!((r.tag, r.chained), (3, 0));
    assert_eq!(r.outcome, BlockOutcome::Exit(ExitKind::Jump(0x100)));
    // A dropped block is not entered; a new one linked in its place is.
    jit.kill(&b);
    let r = jit
        .run_chained(&a, &mut env.clone(), &mut st, &gate, 10)
        .unwrap();
    assert_eq!((r.tag, r.chained), (1, 0));
    let b2 = jit.compile(&step_block(0x200, 1, 0, 0x100)).unwrap();
    jit.set_tag(&b2, 4);
    jit.link(&a, 0x200, &b2);
    jit.link(&b2, 0x100, &a);
    let mut e = env.clone();
    let r = jit.run_chained(&a, &mut e, &mut st, &gate, 10).unwrap();
    assert_eq!((r.tag, r.chained), (4, 9));
    e.insn_pc = want.insn_pc;
    assert_eq!(e, want);
    // An indirect exit goes into the block registered for its PC, CS base and guard.
    let mut bi = Builder::new(0x400);
    bi.insn_start(0x400, 1);
    let n = bi.konst(0x100);
    bi.set(Global::Pc, n);
    bi.exit(ExitKind::Indirect);
    let ind = jit.compile(&bi.finish()).unwrap();
    jit.set_tag(&ind, 5);
    let key = vireo_core::exec::IndirectKey {
        pc: 0x100,
        cs_base: env.segbase[1],
        guard: env.guard,
    };
    jit.set_indirect(key, &a);
    let r = jit
        .run_chained(&ind, &mut env.clone(), &mut st, &gate, 11)
        .unwrap();
    assert_eq!((r.tag, r.chained), (4, 10));
    // Another guard or code segment base: no.
    let mut e = env.clone();
    e.guard = 8;
    let r = jit.run_chained(&ind, &mut e, &mut st, &gate, 11).unwrap();
    assert_eq!((r.tag, r.chained), (5, 0));
    assert_eq!(r.outcome, BlockOutcome::Exit(ExitKind::Indirect));
    let mut e = env.clone();
    e.segbase[1] ^= 0x10;
    let r = jit.run_chained(&ind, &mut e, &mut st, &gate, 11).unwrap();
    assert_eq!((r.tag, r.chained), (5, 0));
    // A flush ends every block.
    jit.flush();
    assert!(jit.run(&a, &mut e, &mut st).is_none());
}

/// A jump whose chain slot is empty but whose target the indirect-exit table holds
/// links the slot (same page, target on one page): after that it chains without the
/// table; across pages, or into a two-page block, it never does.
#[test]
fn a_table_hit_links_an_empty_slot_within_a_page() {
    let gate = Gate::new();
    let mut rng = Rng(11);
    let env = Env::<true>::new(&mut rng);
    let key = vireo_core::exec::IndirectKey {
        pc: 0x200,
        cs_base: env.segbase[1],
        guard: env.guard,
    };
    // (page of a, page of b, b on one page, linked after the table hit)
    for (pa, pb, single, links) in [
        (7, 7, true, true),
        (7, 8, true, false),
        (7, 7, false, false),
    ] {
        let mut jit: JitCache<Env<true>> = counting_cache(1 << 20);
        let mut st = JitState::new();
        let a = jit.compile(&step_block(0x100, 0, 1, 0x200)).unwrap();
        let b = jit.compile(&step_block(0x200, 1, 0, 0x300)).unwrap();
        jit.set_tag(&a, 1);
        jit.set_tag(&b, 2);
        jit.set_page(&a, pa, true);
        jit.set_page(&b, pb, single);
        jit.set_indirect(key, &b);
        // Through the table: a, then b.
        let r = jit
            .run_chained(&a, &mut env.clone(), &mut st, &gate, 10)
            .unwrap();
        assert_eq!((r.tag, r.chained), (2, 1), "{pa} {pb} {single}");
        // Another guard: the table no longer serves the jump; the slot does if the
        // hit linked it.
        let mut e = env.clone();
        e.guard ^= 1;
        let r = jit.run_chained(&a, &mut e, &mut st, &gate, 10).unwrap();
        let want = if links { (2, 1) } else { (1, 0) };
        assert_eq!((r.tag, r.chained), want, "{pa} {pb} {single}");
        // The link the table hit made is undone when its target is dropped.
        jit.kill(&b);
        let r = jit.run_chained(&a, &mut e, &mut st, &gate, 10).unwrap();
        assert_eq!((r.tag, r.chained), (1, 0), "{pa} {pb} {single}");
    }
}

/// The table lookup links slots only while the run's record of its links has room:
/// a link past it would not be undone when its target is dropped. A run through
/// more blocks than that, each found in the table, links the first ones only; a
/// later target dropped is never entered.
#[test]
fn table_hits_past_the_link_record_do_not_link() {
    let gate = Gate::new();
    let mut rng = Rng(12);
    let env = Env::<true>::new(&mut rng);
    let n = crate::tramp::LINKS + 8;
    let pc = |i: usize| 0x100 + 0x40 * i as u64;
    let mut jit: JitCache<Env<true>> = counting_cache(1 << 20);
    let mut st = JitState::new();
    let blocks: Vec<crate::JitBlock> = (0..n)
        .map(|i| jit.compile(&step_block(pc(i), 0, 1, pc(i + 1))).unwrap())
        .collect();
    for (i, b) in blocks.iter().enumerate() {
        jit.set_tag(b, i as u64);
        jit.set_page(b, 0, true);
        let key = vireo_core::exec::IndirectKey {
            pc: pc(i),
            cs_base: env.segbase[1],
            guard: env.guard,
        };
        jit.set_indirect(key, b);
    }
    // Through the table from the first block to the last.
    let r = jit
        .run_chained(&blocks[0], &mut env.clone(), &mut st, &gate, 1000)
        .unwrap();
    assert_eq!((r.tag, r.chained), (n as u64 - 1, n as u64 - 1));
    // Under another guard the table serves nothing: only the links made go on.
    let mut e = env.clone();
    e.guard ^= 1;
    let r = jit
        .run_chained(&blocks[0], &mut e, &mut st, &gate, 1000)
        .unwrap();
    let linked = crate::tramp::LINKS as u64;
    assert_eq!((r.tag, r.chained), (linked, linked));
    // A block past them dropped: the block before it does not enter it.
    let last = n - 1;
    jit.kill(&blocks[last]);
    let r = jit
        .run_chained(&blocks[last - 1], &mut e, &mut st, &gate, 1000)
        .unwrap();
    assert_eq!((r.tag, r.chained), (last as u64 - 1, 0));
}

/// A jump to another page (by PC) is linked only by a table hit, with the guard
/// it was found under (whichever pages the blocks say they lie on): it chains
/// without the table while the guard is that one, and looks the table up again
/// (and links anew) under another.
#[test]
fn a_jump_to_another_page_links_under_the_guard() {
    let gate = Gate::new();
    let mut rng = Rng(13);
    let env = Env::<true>::new(&mut rng);
    let key = |guard| vireo_core::exec::IndirectKey {
        pc: 0x2100,
        cs_base: env.segbase[1],
        guard,
    };
    let g0 = env.guard;
    let g1 = g0 ^ 1;
    for single in [true, false] {
        let mut jit: JitCache<Env<true>> = counting_cache(1 << 20);
        let mut st = JitState::new();
        let a = jit.compile(&step_block(0x1f00, 0, 1, 0x2100)).unwrap();
        let b = jit.compile(&step_block(0x2100, 1, 0, 0x9000)).unwrap();
        let c = jit.compile(&step_block(0x2100, 2, 0, 0x9000)).unwrap();
        for (blk, tag, page) in [(&a, 1, 1), (&b, 2, 2), (&c, 3, 2)] {
            jit.set_tag(blk, tag);
            jit.set_page(blk, page, single);
        }
        let run = |jit: &JitCache<Env<true>>, st: &mut JitState, guard| {
            let mut e = env.clone();
            e.guard = guard;
            let r = jit.run_chained(&a, &mut e, st, &gate, 10).unwrap();
            (r.tag, r.chained)
        };
        // The owner's link alone does not serve a slot that checks the guard.
        jit.link(&a, 0x2100, &b);
        assert_eq!(run(&jit, &mut st, g0), (1, 0), "{single}");
        // A table hit under g0 links it: b, even once the table holds c.
        jit.set_indirect(key(g0), &b);
        assert_eq!(run(&jit, &mut st, g0), (2, 1), "{single}");
        jit.set_indirect(key(g0), &c);
        assert_eq!(run(&jit, &mut st, g0), (2, 1), "{single}");
        // Under g1 the link does not hold: the table (nothing, then c, linked
        // under g1 from then on).
        assert_eq!(run(&jit, &mut st, g1), (1, 0), "{single}");
        jit.set_indirect(key(g1), &c);
        assert_eq!(run(&jit, &mut st, g1), (3, 1), "{single}");
        jit.set_indirect(key(g1), &b);
        assert_eq!(run(&jit, &mut st, g1), (3, 1), "{single}");
        // Back under g0: the slot (now c's, under g1) misses; the table (which
        // holds a PC once) says c.
        jit.set_indirect(key(g0), &c);
        assert_eq!(run(&jit, &mut st, g0), (3, 1), "{single}");
        // A dropped target is not entered through the slot.
        jit.kill(&c);
        assert_eq!(run(&jit, &mut st, g0), (1, 0), "{single}");
    }
}

/// An indirect exit keeps the target its table hit found (its inline cache) and
/// goes there without the table while the PC, CS base and guard are those it was
/// found for; under another guard, or for its own PC once its block is dropped, it
/// takes the table's next; for another PC under the same guard it keeps the first.
#[test]
fn an_indirect_exit_caches_its_target() {
    let gate = Gate::new();
    let mut rng = Rng(14);
    let env = Env::<true>::new(&mut rng);
    let key = |pc, guard| vireo_core::exec::IndirectKey {
        pc,
        cs_base: env.segbase[1],
        guard,
    };
    let (g0, g1) = (env.guard, env.guard ^ 1);
    let mut jit: JitCache<Env<true>> = counting_cache(1 << 20);
    let mut st = JitState::new();
    // The exit's PC comes from r0.
    let mut bx = Builder::new(0x40);
    bx.insn_start(0x40, 2);
    let to = bx.get(Global::Gpr(0));
    bx.set(Global::Pc, to);
    bx.exit(ExitKind::Indirect);
    let x = jit.compile(&bx.finish()).unwrap();
    let b = jit.compile(&step_block(0x500, 1, 0, 0x9000)).unwrap();
    let c = jit.compile(&step_block(0x500, 2, 0, 0x9000)).unwrap();
    let d = jit.compile(&step_block(0x600, 3, 0, 0x9000)).unwrap();
    for (blk, tag) in [(&x, 1), (&b, 2), (&c, 3), (&d, 4)] {
        jit.set_tag(blk, tag);
    }
    let run = |jit: &JitCache<Env<true>>, st: &mut JitState, pc: u64, guard| {
        let mut e = env.clone();
        e.regs[0] = pc;
        e.guard = guard;
        let r = jit.run_chained(&x, &mut e, st, &gate, 10).unwrap();
        (r.tag, r.chained)
    };
    assert_eq!(run(&jit, &mut st, 0x500, g0), (1, 0));
    jit.set_indirect(key(0x500, g0), &b);
    assert_eq!(run(&jit, &mut st, 0x500, g0), (2, 1));
    // The cache, not the table.
    jit.set_indirect(key(0x500, g0), &c);
    assert_eq!(run(&jit, &mut st, 0x500, g0), (2, 1));
    // Another PC: the table; the cache keeps 0x500.
    jit.set_indirect(key(0x600, g0), &d);
    assert_eq!(run(&jit, &mut st, 0x600, g0), (4, 1));
    assert_eq!(run(&jit, &mut st, 0x500, g0), (2, 1));
    // Another guard: the table (nothing, then c, which the cache takes).
    assert_eq!(run(&jit, &mut st, 0x500, g1), (1, 0));
    jit.set_indirect(key(0x500, g1), &c);
    assert_eq!(run(&jit, &mut st, 0x500, g1), (3, 1));
    jit.set_indirect(key(0x500, g1), &b);
    assert_eq!(run(&jit, &mut st, 0x500, g1), (3, 1));
    // Its block dropped: the table's (b), cached from then on.
    jit.kill(&c);
    assert_eq!(run(&jit, &mut st, 0x500, g1), (2, 1));
    jit.set_indirect(key(0x500, g1), &d);
    assert_eq!(run(&jit, &mut st, 0x500, g1), (2, 1));
}

/// The indirect-exit table keeps as many targets whose PCs share a set as it has
/// ways; one more displaces the one registered longest ago, and registering a PC
/// again makes it the newest.
#[test]
fn the_indirect_table_keeps_a_target_per_way() {
    let gate = Gate::new();
    let mut rng = Rng(12);
    let env = Env::<true>::new(&mut rng);
    let mut jit: JitCache<Env<true>> = counting_cache(1 << 20);
    let mut st = JitState::new();
    let ways = crate::IND_WAYS;
    // More PCs than ways in one set.
    let pcs: Vec<u64> = (0x1000..0x400000u64)
        .step_by(4)
        .filter(|&p| crate::ind_set(p) == crate::ind_set(0x1000))
        .take(ways + 2)
        .collect();
    let indirect_to = |pc: u64| {
        let mut b = Builder::new(0x400 + pc);
        b.insn_start(0x400 + pc, 1);
        let n = b.konst(pc);
        b.set(Global::Pc, n);
        b.exit(ExitKind::Indirect);
        b.finish()
    };
    let key = |pc| vireo_core::exec::IndirectKey {
        pc,
        cs_base: env.segbase[1],
        guard: env.guard,
    };
    let mut targets = Vec::new();
    for (i, &pc) in pcs.iter().enumerate() {
        let t = jit.compile(&step_block(pc, 0, 1, 0x9000)).unwrap();
        jit.set_tag(&t, 100 + i as u64);
        targets.push(t);
    }
    // Whether the exit to target `i` finds it (each exit asks once: a hit fills
    // its inline cache, which would answer a second time).
    let mut found = |jit: &mut JitCache<Env<true>>, i: usize| {
        let x = jit.compile(&indirect_to(pcs[i])).unwrap();
        jit.set_tag(&x, 200 + i as u64);
        let r = jit
            .run_chained(&x, &mut env.clone(), &mut st, &gate, 10)
            .unwrap();
        match (r.tag, r.chained) {
            (t, 1) if t == 100 + i as u64 => true,
            (t, 0) if t == 200 + i as u64 => false,
            other => panic!("target {i} at {:#x}: {other:?}", pcs[i]),
        }
    };
    // The first `ways` registered, then target 0 again (the newest now), then one
    // more, which displaces target 1 (the oldest).
    for (i, t) in targets.iter().enumerate().take(ways) {
        jit.set_indirect(key(pcs[i]), t);
    }
    for i in 0..ways + 1 {
        assert_eq!(found(&mut jit, i), i < ways, "target {i}");
    }
    jit.set_indirect(key(pcs[0]), &targets[0]);
    jit.set_indirect(key(pcs[ways]), &targets[ways]);
    for i in 0..ways + 1 {
        assert_eq!(found(&mut jit, i), i != 1, "target {i}");
    }
}

/// Access addresses for the lazy-store tests: the fast path, the code page (a store
/// stops), past the end (faults), across the end of memory.
const SLOW_PATH_ADDRS: [u64; 4] = [0x1008, CODE + 4, MEM as u64 + 64, MEM as u64 - 4];

/// Stores of globals left to the slow paths (`analysis::lazy_sets`): a fault or a
/// stop request in an access between two stores of a global sees the first value,
/// whichever path the access takes, with values from constants, registers (also
/// caller-saved ones live across the calls) and temp slots; a value no later op
/// reads is not kept for them.
#[test]
fn globals_stored_again_later_are_in_place_for_slow_paths() {
    let mut jit: JitCache<Env<true>> = counting_cache(8 << 20);
    let mut rng = Rng(13);
    let env = Env::<true>::new(&mut rng);
    let mut lazy_seen = 0;
    for (k, &a1) in SLOW_PATH_ADDRS.iter().enumerate() {
        for &a2 in &SLOW_PATH_ADDRS {
            for store in [false, true] {
                for spread in [false, true] {
                    let mut b = Builder::new(0x100);
                    b.insn_start(0x100, 3);
                    // r0 from a constant, r1 from a register temp, r2 from a sum of
                    // many temps (some may end in the temp area or in r10/r11).
                    let c = b.konst(0x1111 * (k as u64 + 1));
                    b.set(Global::Gpr(0), c);
                    let g = b.get(Global::Gpr(3));
                    let x = b.bini(BinOp::Add, Size::B64, g, 7);
                    b.set(Global::Gpr(1), x);
                    let mut acc = b.get(Global::Gpr(2));
                    let mut parts = Vec::new();
                    for i in 0..(if spread { 6 } else { 1 }) {
                        let t = b.bini(BinOp::Xor, Size::B64, acc, 0x30 + i);
                        parts.push(t);
                        acc = t;
                    }
                    b.set(Global::Gpr(2), acc);
                    for (n, &a) in [a1, a2].iter().enumerate() {
                        b.insn_start(0x103 + n as u64, 2);
                        let at = b.konst(a);
                        if store {
                            b.store(at, x, Size::B32, MmuIdx::Kernel);
                        } else {
                            let v = b.load(at, Size::B16, false, MmuIdx::Kernel);
                            parts.push(v);
                        }
                    }
                    b.insn_start(0x105, 2);
                    let mut sum = b.konst(0);
                    for p in parts {
                        sum = b.bin(BinOp::Add, Size::B64, sum, p);
                    }
                    for r in 0..3 {
                        let v = b.bini(BinOp::Add, Size::B64, sum, r);
                        b.set(Global::Gpr(r as u8), v);
                    }
                    let n = b.konst(0x200);
                    b.set(Global::Pc, n);
                    b.exit(ExitKind::Jump(0x200));
                    let blk = b.finish();
                    let lazy = crate::analysis::lazy_sets::<Env<true>>(
                        &blk,
                        &blk.branch_only_labels(),
                        &mut Default::default(),
                    );
                    lazy_seen += lazy.lazy.iter().filter(|&&l| l).count();
                    check(&mut jit, &blk, &env);
                }
            }
        }
    }
    // Left to the slow paths: r0 (a constant) and r2 (read again after the
    // accesses) in every block, r1 where the stores read it, or where it was last
    // read a few ops before the loads (not across the spread sum).
    assert_eq!(lazy_seen, 4 * 4 * (2 * 3 + 3 + 2));
}

/// The same across a jump out of the block (a compare and a conditional jump): the
/// value set before the branch is left to the slow paths of the accesses after the
/// label and to the way out, which stores it unless it sets the global itself;
/// either way a fault or a stop request after the label, or the way out, sees it.
#[test]
fn globals_set_again_on_both_ways_of_a_jump_out_are_left_to_slow_paths() {
    let mut jit: JitCache<Env<true>> = counting_cache(8 << 20);
    let mut rng = Rng(14);
    let env = Env::<true>::new(&mut rng);
    let mut lazy_seen = 0;
    for &a in &SLOW_PATH_ADDRS {
        for store in [false, true] {
            for taken in [0u64, 1] {
                for out_sets in [false, true] {
                    let mut b = Builder::new(0x100);
                    let on = b.label();
                    b.insn_start(0x100, 3);
                    let c = b.konst(0x1234);
                    b.set(Global::Gpr(0), c);
                    let g = b.get(Global::Gpr(3));
                    let x = b.bini(BinOp::Add, Size::B64, g, 7);
                    b.set(Global::Gpr(1), x);
                    b.insn_start(0x103, 2);
                    let cond = b.konst(taken);
                    b.br_if(cond, on);
                    if out_sets {
                        let k = b.konst(0x5678);
                        b.set(Global::Gpr(0), k);
                        b.set(Global::Gpr(1), k);
                    }
                    exit(&mut b, ExitKind::Jump(0x300));
                    b.set_label(on);
                    b.insn_start(0x105, 2);
                    let at = b.konst(a);
                    let v = if store {
                        b.store(at, x, Size::B32, MmuIdx::Kernel);
                        x
                    } else {
                        b.load(at, Size::B16, false, MmuIdx::Kernel)
                    };
                    let y = b.bin(BinOp::Add, Size::B64, v, x);
                    b.set(Global::Gpr(0), y);
                    b.set(Global::Gpr(1), y);
                    exit(&mut b, ExitKind::Jump(0x200));
                    let blk = b.finish();
                    let lazy = crate::analysis::lazy_sets::<Env<true>>(
                        &blk,
                        &blk.branch_only_labels(),
                        &mut Default::default(),
                    );
                    let n = lazy.lazy.iter().filter(|&&l| l).count();
                    // r0 (a constant) and r1 (read after the access), stored on the
                    // way out unless it sets them itself.
                    assert_eq!(n, 2, "{blk}");
                    lazy_seen += n;
                    check(&mut jit, &blk, &env);
                }
            }
        }
    }
    assert_eq!(lazy_seen, 2 * 4 * 2 * 2 * 2);
}

/// Address arithmetic as one `lea`: a shift by 1-3 added to a register or a
/// constant, then perhaps a constant and a 32-bit zero extension (an x86 `lea` or a
/// scaled memory operand), and two registers added into a third; every width mix,
/// shift and constant (wrapping at 32 bits, beyond a 32-bit displacement) as the
/// interpreter computes it, and with the intermediate values read again (no fusion).
#[test]
fn address_arithmetic_matches_the_interpreter() {
    let mut jit: JitCache<Env<true>> = counting_cache(8 << 20);
    let env = Env::<true>::new(&mut Rng(15));
    let consts = [
        0u64,
        7,
        0xffff_fff8,
        u64::MAX - 7,
        0x1_0000_0000,
        0x7fff_ffff,
    ];
    let mut n = 0;
    for shl_size in [Size::B32, Size::B64] {
        for add_size in [Size::B32, Size::B64] {
            for k in 0..5u64 {
                for &c in &consts {
                    for shape in 0..6 {
                        let mut b = Builder::new(0x100);
                        b.insn_start(0x100, 4);
                        let x = b.get(Global::Gpr(0));
                        let y = b.get(Global::Gpr(1));
                        let kk = b.konst(k);
                        let s = b.bin(BinOp::Shl, shl_size, x, kk);
                        let other = if shape % 2 == 0 { y } else { b.konst(c) };
                        let sum = b.bin(BinOp::Add, add_size, s, other);
                        let mut r = sum;
                        if shape >= 2 {
                            let cc = b.konst(c ^ 5);
                            r = b.bin(BinOp::Add, add_size, cc, r);
                        }
                        if shape >= 4 {
                            r = b.ext(r, Size::B32, false);
                        }
                        b.set(Global::Gpr(2), r);
                        // Sometimes the shift's value is read again.
                        if k == 2 && shape == 5 {
                            b.set(Global::Gpr(3), s);
                        }
                        // Two registers into a third.
                        let t = b.bin(BinOp::Add, add_size, x, y);
                        b.set(Global::Gpr(3), t);
                        b.set(Global::Gpr(0), y);
                        exit(&mut b, ExitKind::Jump(0x200));
                        check(&mut jit, &b.finish(), &env);
                        n += 1;
                    }
                }
            }
        }
    }
    assert_eq!(n, 2 * 2 * 5 * consts.len() * 6);
}

/// `-d out_asm` support: the cache keeps the last block's code when asked.
#[test]
fn the_last_code_is_kept_on_request() {
    let mut jit: JitCache<Env<true>> = counting_cache(1 << 20);
    let a = jit.compile(&step_block(0x100, 0, 1, 0x200)).unwrap();
    assert!(jit.last_code.is_empty());
    jit.keep_code = true;
    let b = jit.compile(&step_block(0x100, 0, 1, 0x200)).unwrap();
    assert_eq!(jit.last_code.len(), b.bytes);
    assert_eq!(a.bytes, b.bytes);
    // No prologue (the cache's shared entry builds the frame): the block starts
    // with its first guest register load, `mov r14, [r12 + d32]`.
    assert_eq!(&jit.last_code[..3], &[0x4d, 0x8b, 0xb4]);
}

#[test]
fn flushed_code_stays_mapped_when_asked() {
    // With `keep_flushed` (on under `-perfmap`) every generation's code has its own
    // addresses, so perf's map never names one address twice.
    let blk = step_block(0x100, 0, 1, 0x200);
    let mut jit: JitCache<Env<true>> = counting_cache(1 << 20);
    jit.keep_flushed = true;
    let mut seen = std::collections::HashSet::new();
    for round in 0..8 {
        let b = jit.compile(&blk).unwrap();
        assert!(
            seen.insert(b.entry()),
            "round {round}: an address named two blocks"
        );
        jit.flush();
    }
}

/// Calls whose arguments sit in allocated registers that are argument registers
/// too (r8, r9: each order, cycles among them included), with more temps live
/// across the calls than callee-saved registers hold: the same as the interpreter.
#[test]
fn call_arguments_in_allocated_registers_move_as_one() {
    let mut jit: JitCache<Env<true>> = counting_cache(8 << 20);
    let mut rng = Rng(0x5eed);
    for case in 0..400u64 {
        let mut b = Builder::new(0x1000);
        b.insn_start(0x1000, 4);
        let temps: Vec<Temp> = (0..9u8)
            .map(|i| {
                let g = b.get(Global::Gpr(i));
                b.bini(BinOp::Xor, Size::B64, g, 0x1111 * u64::from(i) + case)
            })
            .collect();
        let mut results = Vec::new();
        for k in 0..3 {
            // (Helper 6 in its environment-function form takes three arguments.)
            let (helper, effects, n) = match (case + k) % 3 {
                0 => (0u16, Effects::ALL, 1 + rng.below(4) as usize),
                1 => (6, Effects::ALL, 3),
                _ => (5, Effects::PURE, 1 + rng.below(4) as usize),
            };
            let args: Vec<Temp> = (0..n)
                .map(|_| temps[rng.below(temps.len() as u64) as usize])
                .collect();
            results.extend(b.call(HelperId(helper), &args, true, effects));
        }
        // Every temp is read after the calls (they live across them).
        let mut acc = b.konst(0);
        for &t in temps.iter().chain(&results) {
            acc = b.bin(BinOp::Add, Size::B64, acc, t);
            acc = b.bini(BinOp::Mul, Size::B64, acc, 0x9e37_79b9);
        }
        b.set(Global::Gpr(9), acc);
        b.set(Global::Pc, acc);
        b.exit(ExitKind::Indirect);
        let blk = b.finish();
        let mut env_rng = Rng(case);
        let env = Env::<true>::new(&mut env_rng);
        check(&mut jit, &blk, &env);
    }
}

/// Two 64-bit stores to an address and 8 bytes on (a 128-bit store in halves) take
/// one fast-TLB lookup; the slow path stores the halves one by one: within a
/// writable page, across pages (one not writable through the fast TLB), with the
/// second half faulting after the first is done, with the first faulting, with the
/// second hitting the code range (a stop request), and as the cold path of a
/// branch; each as the interpreter does it.
#[test]
fn store_pairs_match_the_interpreter() {
    let mut jit: JitCache<Env<true>> = counting_cache(8 << 20);
    let mut seen = Seen::default();
    for at in [0x1100u64, 0x1ff0, 0x0ff8, 0x1ff8, 0x3000, 0x78, 0x70] {
        for (swapped, cold, big) in [
            (false, false, false),
            (true, false, true),
            (false, true, false),
            (true, true, true),
        ] {
            let mut b = Builder::new(0x10);
            b.insn_start(0x10, 4);
            let a = b.get(Global::Gpr(0));
            let v1 = b.get(Global::Gpr(1));
            let v2 = b.konst(if big { 0x1234_5678_9abc_def0 } else { 0x77 });
            let eight = b.konst(8);
            let a8 = if swapped {
                b.bin(BinOp::Add, Size::B64, eight, a)
            } else {
                b.bin(BinOp::Add, Size::B64, a, eight)
            };
            let skip = b.label();
            if cold {
                let c = b.get(Global::Gpr(2));
                b.br_if(c, skip);
            }
            b.store(a, v1, Size::B64, MmuIdx::Kernel);
            b.store(a8, v2, Size::B64, MmuIdx::Kernel);
            b.set_label(skip);
            b.insn_start(0x14, 1);
            let r = b.bini(BinOp::Add, Size::B64, v1, 1);
            b.set(Global::Gpr(3), r);
            let next = b.konst(0x15);
            b.set(Global::Pc, next);
            b.exit(ExitKind::Jump(0x15));
            let blk = b.finish();
            for taken in [0u64, 1] {
                let mut rng = Rng(at ^ taken);
                let mut env = Env::<true>::new(&mut rng);
                env.regs[0] = at;
                env.regs[2] = taken;
                let o = check(&mut jit, &blk, &env);
                seen.note(&o);
            }
        }
    }
    seen.assert_every_way_out();
}

/// A load and a later store to the same address (a read-modify-write; `x[i] += y`
/// across instructions), where the store takes the load's host address: on a page
/// the fast TLB lets the kernel write, on pages it only lets it read (the code page;
/// the user's view of page 1), across a page and the end of memory (the slow paths,
/// a fault), at every size, as the interpreter does it.
#[test]
fn a_store_after_a_load_of_its_address_matches_the_interpreter() {
    let mut jit: JitCache<Env<true>> = counting_cache(8 << 20);
    let mut seen = Seen::default();
    for at in [0x1100u64, 0x0040, 0x0ffc, 0x1ffc, 0x84] {
        for mmu in [MmuIdx::Kernel, MmuIdx::User] {
            for size in [Size::B8, Size::B16, Size::B32, Size::B64] {
                for (write, boundary) in [(false, false), (true, false), (false, true)] {
                    let mut b = Builder::new(0x10);
                    b.insn_start(0x10, 4);
                    let a = b.get(Global::Gpr(0));
                    let v = if write {
                        b.load_for_write(a, size, mmu)
                    } else {
                        b.load(a, size, false, mmu)
                    };
                    let y = b.get(Global::Gpr(1));
                    let s = b.bin(BinOp::Add, size, v, y);
                    b.set(Global::Gpr(2), s);
                    if boundary {
                        b.insn_start(0x14, 3);
                    }
                    b.store(a, s, size, mmu);
                    b.insn_start(0x17, 1);
                    let next = b.konst(0x18);
                    b.set(Global::Pc, next);
                    b.exit(ExitKind::Jump(0x18));
                    let blk = b.finish();
                    let mut env = Env::<true>::new(&mut Rng(at ^ size.bytes() as u64));
                    env.regs[0] = at;
                    let o = check(&mut jit, &blk, &env);
                    seen.note(&o);
                }
            }
        }
    }
    seen.assert_every_way_out();
}

/// A global read only by an extension right after it (a 32-bit register operand)
/// is loaded at the width, zero- or sign-extended: every width and sign, with values
/// whose upper bits and sign bits are set and clear, against the interpreter; and
/// read again (not only by the extension) it is loaded whole.
#[test]
fn a_global_read_for_an_extension_loads_at_the_width() {
    let mut jit: JitCache<Env<true>> = counting_cache(8 << 20);
    let mut extended = 0;
    for v in [
        0u64,
        0x7f,
        0x80,
        0x7fff_8000,
        0x8000_0080,
        0xffff_ffff_ffff_ffff,
        0x1234_5678_9abc_def0,
    ] {
        for from in [Size::B8, Size::B16, Size::B32, Size::B64] {
            for signed in [false, true] {
                for twice in [false, true] {
                    let mut b = Builder::new(0x10);
                    b.insn_start(0x10, 4);
                    let g = b.get(Global::Gpr(3));
                    let x = b.temp();
                    b.push(Op::Ext {
                        dst: x,
                        src: g,
                        from,
                        signed,
                    });
                    b.set(Global::Gpr(2), x);
                    if twice {
                        let y = b.bini(BinOp::Add, Size::B64, g, 1);
                        b.set(Global::Gpr(4), y);
                    }
                    exit(&mut b, ExitKind::Jump(0x14));
                    let blk = b.finish();
                    let mut env = Env::<true>::new(&mut Rng(v ^ from.bytes() as u64));
                    env.regs[3] = v;
                    check(&mut jit, &blk, &env);
                    let want = match (signed, from) {
                        (true, f) => f.sext(v),
                        (false, f) => f.trunc(v),
                    };
                    let mut e = env.clone();
                    e.map_pages();
                    let code = jit.compile(&blk).unwrap();
                    jit.run(&code, &mut e, &mut JitState::new()).unwrap();
                    assert_eq!(e.regs[2], want, "{v:#x} {from:?} signed {signed}");
                    extended += 1;
                }
            }
        }
    }
    assert_eq!(extended, 7 * 4 * 2 * 2);
}

/// Accesses that share a fast-TLB lookup ([`crate::groups`]): pushes and frame
/// loads, loads at a sum of registers with side exits between them, groups across
/// pure and environment calls, at bases within a page, across a page boundary,
/// by the code that asks to stop, at the end of memory, in both tables, as the
/// interpreter does them.
#[test]
fn grouped_accesses_match_the_interpreter() {
    let mut jit: JitCache<Env<true>> = counting_cache(8 << 20);
    let mut seen = Seen::default();
    let mut members = 0;
    for at in [
        0x0100u64, 0x0ff0, 0x1000, 0x1008, 0x1f00, 0x1ff0, 0x1ffe, 0x0090, 0x2008,
    ] {
        for mmu in [MmuIdx::Kernel, MmuIdx::User] {
            for pattern in 0..3 {
                let mut b = Builder::new(0x10);
                b.insn_start(0x10, 4);
                let base = b.get(Global::Gpr(0));
                match pattern {
                    0 => {
                        // Three pushes, then the frame read back.
                        let v = b.get(Global::Gpr(1));
                        let mut sp = base;
                        for k in 0..3u64 {
                            b.insn_start(0x14 + k, 1);
                            sp = b.bini(BinOp::Sub, Size::B64, sp, 8);
                            let x = b.bini(BinOp::Add, Size::B64, v, k);
                            b.store(sp, x, Size::B64, mmu);
                            b.set(Global::Gpr(0), sp);
                        }
                        b.insn_start(0x20, 4);
                        let mut sum = b.konst(0);
                        for (k, size) in [(0u64, Size::B64), (12, Size::B32), (16, Size::B8)] {
                            let a = b.bini(BinOp::Add, Size::B64, sp, k);
                            let x = b.load(a, size, false, mmu);
                            sum = b.bin(BinOp::Add, Size::B64, sum, x);
                        }
                        b.set(Global::Gpr(2), sum);
                    }
                    1 => {
                        // Bytes at base + r3 + i compared one by one, each check
                        // with its side exit.
                        let r3 = b.get(Global::Gpr(3));
                        let p = b.bin(BinOp::Add, Size::B64, r3, base);
                        let bits = b.get(Global::Gpr(4));
                        for i in 0..4u64 {
                            b.insn_start(0x20 + 4 * i, 4);
                            let pi = b.bini(BinOp::Add, Size::B64, p, i);
                            let x = b.load(pi, Size::B8, false, mmu);
                            b.set(Global::Gpr(2), x);
                            let bit = b.bini(BinOp::And, Size::B64, bits, 1 << i);
                            let on = b.label();
                            b.br_if(bit, on);
                            let n = b.konst(0x100 + i);
                            b.set(Global::Pc, n);
                            b.exit(ExitKind::Jump(0x100 + i));
                            b.set_label(on);
                        }
                    }
                    _ => {
                        // A store, a pure call, a load, an environment call, a load.
                        let v = b.get(Global::Gpr(1));
                        b.store(base, v, Size::B32, mmu);
                        let r = b.call(HelperId(5), &[v], true, Effects::PURE);
                        b.set(Global::Gpr(5), r.unwrap_or(v));
                        let a8 = b.bini(BinOp::Add, Size::B64, base, 8);
                        let x = b.load(a8, Size::B64, false, mmu);
                        b.set(Global::Gpr(2), x);
                        let s = b.call(HelperId(6), &[x, v, base], true, Effects::ALL);
                        b.set(Global::Gpr(6), s.unwrap_or(v));
                        let a4 = b.bini(BinOp::Add, Size::B64, base, 4);
                        let y = b.load(a4, Size::B16, false, mmu);
                        b.set(Global::Gpr(3), y);
                    }
                }
                b.insn_start(0x40, 1);
                let next = b.konst(0x41);
                b.set(Global::Pc, next);
                b.exit(ExitKind::Jump(0x41));
                let blk = b.finish();
                let mut groups = crate::groups::Groups::default();
                crate::groups::find(
                    &blk,
                    |_| false,
                    &blk.branch_only_labels(),
                    &mut Default::default(),
                    &mut groups,
                );
                members += groups
                    .role
                    .iter()
                    .filter(|r| matches!(r, Some(crate::groups::Role::Member { .. })))
                    .count();
                for bits in [0u64, 0b0111, 0b1111] {
                    let mut env = Env::<true>::new(&mut Rng(at ^ bits));
                    env.regs[0] = at;
                    env.regs[3] = 0;
                    env.regs[4] = bits;
                    let o = check(&mut jit, &blk, &env);
                    seen.note(&o);
                }
            }
        }
    }
    assert!(members > 50, "{members} members");
    seen.assert_every_way_out();
}

/// A stop request raised before a branch is taken at the first instruction start
/// after the branch's label, also when the code that falls through to the label
/// checked it already (the label's check comes from the branch).
#[test]
fn a_stop_request_pending_at_a_branch_is_taken_after_its_label() {
    let mut jit: JitCache<Env<true>> = counting_cache(1 << 20);
    let block = |store: bool| {
        let mut b = Builder::new(0x10);
        b.insn_start(0x10, 2);
        if store {
            let at = b.konst(CODE);
            b.store(at, at, Size::B8, MmuIdx::Kernel);
        }
        let c = b.get(Global::Gpr(0));
        let l = b.label();
        b.br_if(c, l);
        b.insn_start(0x12, 2);
        let one = b.konst(1);
        b.set(Global::Gpr(2), one);
        b.set_label(l);
        b.insn_start(0x14, 2);
        let five = b.konst(5);
        b.set(Global::Gpr(1), five);
        b.insn_start(0x16, 1);
        let next = b.konst(0x17);
        b.set(Global::Pc, next);
        b.exit(ExitKind::Jump(0x17));
        b.finish()
    };
    for taken in [0, 1] {
        let mut env = Env::<true>::new(&mut Rng(3));
        env.regs[0] = taken;
        let o = check(&mut jit, &block(true), &env);
        let pc = if taken == 1 { 0x14 } else { 0x12 };
        assert_eq!(o, BlockOutcome::Stopped { pc }, "taken: {taken}");
        // Without the store nothing stops, and nothing checks after the label.
        assert!(matches!(
            check(&mut jit, &block(false), &env),
            BlockOutcome::Exit(_)
        ));
    }
}

/// A comparison that only the select right after it reads (compare, then a
/// conditional move on the host flags) chooses as the interpreter does, for every
/// condition and width, with constants and guest registers on either side.
#[test]
fn a_select_on_the_comparison_before_it_matches_the_interpreter() {
    let vals = [
        0u64,
        1,
        0x7f,
        0x80,
        0xff,
        0x7fff_ffff,
        0x8000_0000,
        0xffff_ffff,
        i64::MAX as u64,
        i64::MIN as u64,
        u64::MAX,
    ];
    let mut jit: JitCache<Env<true>> = counting_cache(16 << 20);
    let mut rng = Rng(7);
    let env = Env::<true>::new(&mut rng);
    for size in [Size::B8, Size::B16, Size::B32, Size::B64] {
        for cond in CONDS {
            let mut b = Builder::new(0);
            b.insn_start(0, 1);
            let mut out = 0u64;
            for &x in &vals {
                for &y in &vals {
                    let (tx, ty) = (b.konst(x), b.konst(y));
                    let (ga, gb) = (b.get(Global::Gpr(1)), b.get(Global::Gpr(2)));
                    // Constant against constant, register against constant, and
                    // constant against register; the choice between two registers.
                    for (p, q) in [(tx, ty), (ga, ty), (tx, gb)] {
                        let c = b.setcond(cond, size, p, q);
                        let r = b.select(c, ga, gb);
                        let a = b.konst(out * 8 % 248);
                        b.store(a, r, Size::B64, MmuIdx::Kernel);
                        out += 1;
                    }
                }
            }
            // Registers on both sides.
            let (ga, gb) = (b.get(Global::Gpr(1)), b.get(Global::Gpr(2)));
            let c = b.setcond(cond, size, ga, gb);
            let k = b.konst(5);
            let r = b.select(c, k, ga);
            b.set(Global::Gpr(3), r);
            b.exit(ExitKind::Indirect);
            check(&mut jit, &b.finish(), &env);
        }
    }
}

/// A job compiled elsewhere runs like the block compiled in place, once installed by
/// the cache that made it; another cache, or the same one after a flush, refuses the
/// code (its cell is not theirs).
#[test]
fn a_job_installs_only_in_its_cache_and_generation() {
    use crate::{compile_job, CompileScratch};
    let env = Env::<true>::new(&mut Rng(13));
    let blk = step_block(0x100, 0, 1, 0x200);
    let mut scratch = CompileScratch::default();
    let run = |jit: &JitCache<Env<true>>, b: &crate::JitBlock| {
        let (mut e, mut st) = (env.clone(), JitState::new());
        let o = jit.run(b, &mut e, &mut st).unwrap();
        (o, e)
    };
    let mut a: JitCache<Env<true>> = JitCache::new(1 << 20);
    let mut job = a.job(blk.clone()).unwrap();
    let done = compile_job::<Env<true>>(&mut job, &mut scratch).unwrap();
    let installed = a.install(done).unwrap();
    let inline = a.compile(&blk).unwrap();
    assert_eq!(run(&a, &installed), run(&a, &inline));
    // Another cache's, or a flushed generation's: refused.
    let mut b: JitCache<Env<true>> = JitCache::new(1 << 20);
    let mut job = a.job(blk.clone()).unwrap();
    let done = compile_job::<Env<true>>(&mut job, &mut scratch).unwrap();
    assert!(matches!(b.install(done), Err(JitError::Stale)));
    let mut job = a.job(blk.clone()).unwrap();
    let done = compile_job::<Env<true>>(&mut job, &mut scratch).unwrap();
    a.flush();
    assert!(matches!(a.install(done), Err(JitError::Stale)));
    // A block that does not validate fails on the compiling thread.
    let mut bad = blk.clone();
    bad.temps = 0;
    let mut job = a.job(bad).unwrap();
    assert!(matches!(
        compile_job::<Env<true>>(&mut job, &mut scratch),
        Err(JitError::Unsupported(_))
    ));
}
