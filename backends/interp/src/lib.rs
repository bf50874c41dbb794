//! The IR interpreter: runs a [`Block`] against a [`GuestEnv`].
//!
//! It is the portable backend of the TCG engine and the oracle the JIT is checked
//! against, so it is written for obviously-correct semantics first. Labels are resolved
//! once per block ([`Prepared`]); temporaries live in a reusable register file.

use vireo_core::exec::{BlockOutcome, GuestEnv};
use vireo_core::ir::{Block, Op};

/// A block with its label positions resolved, ready to run many times.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub block: Block,
    /// Index of each label's op.
    labels: Vec<usize>,
}

impl Prepared {
    pub fn new(block: Block) -> Prepared {
        let mut labels = vec![usize::MAX; block.labels as usize];
        for (i, op) in block.ops.iter().enumerate() {
            if let Op::Label(l) = op {
                if let Some(slot) = labels.get_mut(l.0 as usize) {
                    *slot = i;
                }
            }
        }
        Prepared { block, labels }
    }
}

/// Reusable interpreter state (the temporaries).
#[derive(Debug, Default)]
pub struct Interp {
    temps: Vec<u64>,
    /// Guest instructions started, for statistics and instruction counting.
    pub insns: u64,
}

impl Interp {
    pub fn new() -> Interp {
        Interp::default()
    }

    /// Runs `p` until it exits, faults or the environment asks it to stop.
    pub fn run<E: GuestEnv + ?Sized>(&mut self, p: &Prepared, env: &mut E) -> BlockOutcome {
        let b = &p.block;
        if self.temps.len() < b.temps as usize {
            self.temps.resize(b.temps as usize, 0);
        }
        let t = &mut self.temps;
        let mut pc = b.pc;
        let mut i = 0usize;
        let mut args = [0u64; 4];
        while let Some(op) = b.ops.get(i) {
            i += 1;
            match op {
                Op::InsnStart { pc: insn_pc, .. } => {
                    if env.stop_requested() {
                        env.set(vireo_core::ir::Global::Pc, *insn_pc);
                        return BlockOutcome::Stopped { pc: *insn_pc };
                    }
                    pc = *insn_pc;
                    self.insns += 1;
                    env.insn_start(pc);
                }
                Op::Const { dst, value } => t[dst.0 as usize] = *value,
                Op::Mov { dst, src } => t[dst.0 as usize] = t[src.0 as usize],
                Op::Get { dst, src } => t[dst.0 as usize] = env.get(*src),
                Op::Set { dst, src } => env.set(*dst, t[src.0 as usize]),
                Op::Bin {
                    op,
                    size,
                    dst,
                    a,
                    b,
                } => t[dst.0 as usize] = op.eval(*size, t[a.0 as usize], t[b.0 as usize]),
                Op::Un { op, size, dst, a } => t[dst.0 as usize] = op.eval(*size, t[a.0 as usize]),
                Op::Ext {
                    dst,
                    src,
                    from,
                    signed,
                } => {
                    let v = t[src.0 as usize];
                    t[dst.0 as usize] = if *signed { from.sext(v) } else { from.trunc(v) };
                }
                Op::SetCond {
                    cond,
                    size,
                    dst,
                    a,
                    b,
                } => {
                    t[dst.0 as usize] =
                        u64::from(cond.eval(*size, t[a.0 as usize], t[b.0 as usize]))
                }
                Op::Select { dst, cond, a, b } => {
                    t[dst.0 as usize] = if t[cond.0 as usize] != 0 {
                        t[a.0 as usize]
                    } else {
                        t[b.0 as usize]
                    }
                }
                Op::Load {
                    dst,
                    addr,
                    size,
                    signed,
                    mmu,
                    write,
                } => match env.load(t[addr.0 as usize], *size, *mmu, *write) {
                    Ok(v) => t[dst.0 as usize] = if *signed { size.sext(v) } else { size.trunc(v) },
                    Err(fault) => return BlockOutcome::Fault { fault, pc },
                },
                Op::Store {
                    addr,
                    val,
                    size,
                    mmu,
                } => {
                    if let Err(fault) =
                        env.store(t[addr.0 as usize], t[val.0 as usize], *size, *mmu)
                    {
                        return BlockOutcome::Fault { fault, pc };
                    }
                }
                Op::Label(_) => {}
                Op::Br(l) => i = p.labels[l.0 as usize],
                Op::BrIf { cond, target } => {
                    if t[cond.0 as usize] != 0 {
                        i = p.labels[target.0 as usize];
                    }
                }
                Op::Call {
                    helper,
                    args: a,
                    ret,
                    ..
                } => {
                    let n = a.len().min(4);
                    for (k, x) in a.iter().take(4).enumerate() {
                        args[k] = t[x.0 as usize];
                    }
                    match env.call(*helper, &args[..n]) {
                        Ok(v) => {
                            if let Some(r) = ret {
                                t[r.0 as usize] = v;
                            }
                        }
                        Err(fault) => return BlockOutcome::Fault { fault, pc },
                    }
                }
                Op::Raise { vector, error } => {
                    let fault = vireo_core::exec::Fault {
                        vector: *vector,
                        error_code: error.map(|e| t[e.0 as usize] as u32),
                        address: None,
                    };
                    return BlockOutcome::Fault { fault, pc };
                }
                Op::Exit(kind) => return BlockOutcome::Exit(*kind),
            }
        }
        // `Block::validate` guarantees a final exit; a block without one falls through
        // to its end: treat it as an indirect exit with the PC the block left.
        BlockOutcome::Exit(vireo_core::ir::ExitKind::Indirect)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vireo_core::exec::Fault;
    use vireo_core::ir::{
        BinOp, Builder, Cond, Effects, ExitKind, Global, HelperId, MmuIdx, Size, UnOp,
    };

    #[derive(Default)]
    struct Env {
        regs: [u64; 16],
        pc: u64,
        mem: Vec<u8>,
        calls: Vec<(u16, Vec<u64>)>,
        stop_at: Option<u64>,
        seen: Vec<u64>,
    }

    impl GuestEnv for Env {
        fn get(&mut self, g: Global) -> u64 {
            match g {
                Global::Gpr(n) => self.regs[n as usize],
                Global::Pc => self.pc,
                _ => 0,
            }
        }
        fn set(&mut self, g: Global, v: u64) {
            match g {
                Global::Gpr(n) => self.regs[n as usize] = v,
                Global::Pc => self.pc = v,
                _ => {}
            }
        }
        fn load(&mut self, addr: u64, size: Size, _: MmuIdx, write: bool) -> Result<u64, Fault> {
            let a = addr as usize;
            let bytes = self
                .mem
                .get(a..a + size.bytes())
                .ok_or(Fault::with_error(14, if write { 2 } else { 0 }))?;
            let mut b = [0u8; 8];
            b[..size.bytes()].copy_from_slice(bytes);
            Ok(u64::from_le_bytes(b))
        }
        fn store(&mut self, addr: u64, val: u64, size: Size, _: MmuIdx) -> Result<(), Fault> {
            let a = addr as usize;
            let n = size.bytes();
            let dst = self.mem.get_mut(a..a + n).ok_or(Fault::with_error(14, 2))?;
            dst.copy_from_slice(&val.to_le_bytes()[..n]);
            Ok(())
        }
        fn call(&mut self, h: HelperId, args: &[u64]) -> Result<u64, Fault> {
            self.calls.push((h.0, args.to_vec()));
            Ok(args.iter().sum())
        }
        fn stop_requested(&mut self) -> bool {
            self.stop_at.is_some_and(|p| self.seen.len() as u64 >= p)
        }
        fn insn_start(&mut self, pc: u64) {
            self.seen.push(pc);
        }
    }

    #[test]
    fn arithmetic_matches_x86_widths() {
        assert_eq!(BinOp::Add.eval(Size::B8, 0xff, 1), 0);
        assert_eq!(BinOp::Sar.eval(Size::B16, 0x8000, 15), 0xffff);
        assert_eq!(BinOp::Rol.eval(Size::B8, 0x81, 1), 0x03);
        assert_eq!(BinOp::Ror.eval(Size::B32, 1, 1), 0x8000_0000);
        assert_eq!(BinOp::MulHiU.eval(Size::B64, u64::MAX, 2), 1);
        assert_eq!(BinOp::MulHiS.eval(Size::B32, 0xffff_ffff, 2), 0xffff_ffff);
        assert_eq!(BinOp::DivS.eval(Size::B8, 0x80, 0xff), 0x80); // -128 / -1 wraps
        assert_eq!(BinOp::DivU.eval(Size::B32, 7, 0), 0);
        assert_eq!(UnOp::Bswap.eval(Size::B32, 0x1122_3344), 0x4433_2211);
        assert_eq!(UnOp::Clz.eval(Size::B16, 1), 15);
        assert_eq!(UnOp::Ctz.eval(Size::B32, 0), 32);
        assert_eq!(UnOp::Neg.eval(Size::B16, 1), 0xffff);
    }

    #[test]
    fn loop_with_labels_loads_stores_and_calls() {
        // r0 = sum of bytes mem[0..r1]; mem[16] = r0 (as 16 bits); h7(r0, 1).
        let mut b = Builder::new(0x100);
        b.insn_start(0x100, 2);
        let (top, done) = (b.label(), b.label());
        let zero = b.konst(0);
        b.set(Global::Gpr(0), zero);
        b.set(Global::Gpr(2), zero);
        b.set_label(top);
        let i = b.get(Global::Gpr(2));
        let n = b.get(Global::Gpr(1));
        let fin = b.setcond(Cond::Geu, Size::B64, i, n);
        b.br_if(fin, done);
        let v = b.load(i, Size::B8, false, MmuIdx::User);
        let acc = b.get(Global::Gpr(0));
        let acc2 = b.bin(BinOp::Add, Size::B64, acc, v);
        b.set(Global::Gpr(0), acc2);
        let i2 = b.bini(BinOp::Add, Size::B64, i, 1);
        b.set(Global::Gpr(2), i2);
        b.br(top);
        b.set_label(done);
        let addr = b.konst(16);
        let r = b.get(Global::Gpr(0));
        b.store(addr, r, Size::B16, MmuIdx::User);
        let one = b.konst(1);
        let ret = b.call(HelperId(7), &[r, one], true, Effects::PURE).unwrap();
        b.set(Global::Gpr(3), ret);
        let next = b.konst(0x102);
        b.set(Global::Pc, next);
        b.exit(ExitKind::Jump(0x102));
        let blk = b.finish();
        blk.validate().unwrap();

        let mut env = Env {
            mem: (1..=32).collect(),
            ..Env::default()
        };
        env.regs[1] = 4;
        let out = Interp::new().run(&Prepared::new(blk), &mut env);
        assert_eq!(out, BlockOutcome::Exit(ExitKind::Jump(0x102)));
        assert_eq!(env.regs[0], 1 + 2 + 3 + 4);
        assert_eq!(&env.mem[16..18], &[10, 0]);
        assert_eq!(env.calls, vec![(7, vec![10, 1])]);
        assert_eq!(env.regs[3], 11);
        assert_eq!(env.pc, 0x102);
    }

    #[test]
    fn faults_report_the_instruction_and_stop_requests_are_honoured() {
        let mut b = Builder::new(0x10);
        b.insn_start(0x10, 1);
        let a = b.konst(1000);
        let one = b.konst(1);
        b.set(Global::Gpr(0), one);
        b.insn_start(0x11, 3);
        b.load(a, Size::B32, false, MmuIdx::Kernel);
        b.exit(ExitKind::Indirect);
        let p = Prepared::new(b.finish());
        let mut env = Env::default();
        let out = Interp::new().run(&p, &mut env);
        assert_eq!(
            out,
            BlockOutcome::Fault {
                fault: Fault::with_error(14, 0),
                pc: 0x11
            }
        );
        assert_eq!(env.regs[0], 1);

        let mut env = Env {
            stop_at: Some(1),
            ..Env::default()
        };
        let out = Interp::new().run(&p, &mut env);
        assert_eq!(out, BlockOutcome::Stopped { pc: 0x11 });
        assert_eq!(env.pc, 0x11);
    }
}
