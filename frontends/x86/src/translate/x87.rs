//! x87 instructions, lowered to [`X87Helper`] calls.
//!
//! Memory forms first call `Enter(wait, ea)` (so #NM/#MF come before segment and
//! page faults), then compute the linear address with the usual segment checks and,
//! for loads, read the operand in IR (m80: a 64-bit and a 16-bit load) and pass the
//! bits to the helper. Stores are written by the helpers (see `helpers::x87`).

use super::operand::sreg_index;
use super::{Flow, Tr};
use crate::helpers::x87::{StackOp, X87Helper};
use iced_x86::{MemorySize, Mnemonic, OpKind, Register};
use vireo_core::cpu::sreg;
use vireo_core::ir::{BinOp, MmuIdx, Size, Temp};

/// Operand format codes of the x87 helpers.
fn mem_fmt(m: MemorySize) -> Option<u64> {
    Some(match m {
        MemorySize::Float32 => 0,
        MemorySize::Float64 => 1,
        MemorySize::Float80 => 2,
        MemorySize::Int16 => 3,
        MemorySize::Int32 => 4,
        MemorySize::Int64 => 5,
        MemorySize::Bcd => 6,
        _ => return None,
    })
}

const FMT_STI: u64 = 7;
const FMT_CONST: u64 = 8;

impl Tr {
    fn x87(&mut self, h: X87Helper, args: &[Temp], ret: bool) -> Option<Temp> {
        let eff = h.effects();
        self.b.call(h.id(), args, ret, eff)
    }

    fn x87c(&mut self, h: X87Helper, args: &[u64]) {
        let t: Vec<Temp> = args.iter().map(|&a| self.b.konst(a)).collect();
        self.x87(h, &t, false);
    }

    /// The ST(i) index of operand `n`, if it is an x87 register.
    fn st_index(&self, n: u32) -> Option<u64> {
        if n >= self.i.op_count() || self.i.op_kind(n) != OpKind::Register {
            return None;
        }
        let r = self.i.op_register(n) as u32;
        let st0 = Register::ST0 as u32;
        (st0..st0 + 8).contains(&r).then(|| u64::from(r - st0))
    }

    fn has_mem(&self) -> bool {
        (0..self.i.op_count()).any(|n| self.i.op_kind(n) == OpKind::Memory)
    }

    /// `Enter(wait, ea)` then the linear address of the memory operand.
    fn x87_addr(&mut self, wait: bool, write: bool) -> Temp {
        let ea = self.ea();
        let w = self.b.konst(u64::from(wait));
        self.x87(X87Helper::Enter, &[w, ea], false);
        let len = self.i.memory_size().size().max(1) as u64;
        let seg = sreg_index(self.i.memory_segment()).unwrap_or(sreg::DS as u8);
        self.linear(seg, ea, len, write)
    }

    /// Loads the memory operand: (fmt, lo, hi).
    fn x87_load_mem(&mut self) -> Option<(Temp, Temp, Temp)> {
        let fmt = mem_fmt(self.i.memory_size())?;
        let addr = self.x87_addr(true, false);
        let mmu = self.m.mmu();
        let (lo, hi) = match fmt {
            0 | 4 => (self.b.load(addr, Size::B32, false, mmu), self.b.konst(0)),
            1 | 5 => (self.b.load(addr, Size::B64, false, mmu), self.b.konst(0)),
            3 => (self.b.load(addr, Size::B16, false, mmu), self.b.konst(0)),
            _ => {
                let lo = self.b.load(addr, Size::B64, false, mmu);
                let a8 = self.b.bini(BinOp::Add, Size::B64, addr, 8);
                let a8 = if self.m.bits == 64 {
                    a8
                } else {
                    self.b.ext(a8, Size::B32, false)
                };
                (lo, self.b.load(a8, Size::B16, false, mmu))
            }
        };
        Some((self.b.konst(fmt), lo, hi))
    }

    /// The source operand of a two-operand instruction: memory, ST(i), or (no
    /// operands) ST(1).
    fn x87_source(&mut self) -> Option<(Temp, Temp, Temp)> {
        if self.has_mem() {
            return self.x87_load_mem();
        }
        let i = (0..self.i.op_count())
            .filter_map(|n| self.st_index(n))
            .find(|&i| i != 0)
            .unwrap_or(if self.i.op_count() == 0 { 1 } else { 0 });
        Some((self.b.konst(FMT_STI), self.b.konst(i), self.b.konst(0)))
    }

    fn mmu_arg(&self) -> u64 {
        u64::from(self.m.mmu() == MmuIdx::User)
    }

    /// Translates an x87 instruction; `None` if the mnemonic is not x87.
    pub(crate) fn x87_insn(&mut self) -> Option<Flow> {
        use Mnemonic as M;
        let mn = self.i.mnemonic();
        let konst = |n: u64| Some(n);
        let cst = match mn {
            M::Fldz => konst(0),
            M::Fld1 => konst(1),
            M::Fldpi => konst(2),
            M::Fldl2e => konst(3),
            M::Fldl2t => konst(4),
            M::Fldlg2 => konst(5),
            M::Fldln2 => konst(6),
            _ => None,
        };
        if let Some(c) = cst {
            self.x87c(X87Helper::Load, &[FMT_CONST, c, 0]);
            return Some(Flow::Next);
        }
        let arith = match mn {
            M::Fadd | M::Faddp | M::Fiadd => Some(0),
            M::Fmul | M::Fmulp | M::Fimul => Some(1),
            M::Fsub | M::Fsubp | M::Fisub => Some(2),
            M::Fsubr | M::Fsubrp | M::Fisubr => Some(2 | 4),
            M::Fdiv | M::Fdivp | M::Fidiv => Some(3),
            M::Fdivr | M::Fdivrp | M::Fidivr => Some(3 | 4),
            _ => None,
        };
        if let Some(op) = arith {
            let pop = matches!(
                mn,
                M::Faddp | M::Fmulp | M::Fsubp | M::Fsubrp | M::Fdivp | M::Fdivrp
            );
            // Destination ST(i) when the first operand is a register other than ST0, or
            // for the P forms.
            let dest_sti = pop || self.st_index(0).is_some_and(|i| i != 0);
            let (fmt, lo, hi) = self.x87_source()?;
            let spec = self
                .b
                .konst(op | u64::from(dest_sti) << 3 | u64::from(pop) << 4);
            self.x87(X87Helper::Arith, &[spec, fmt, lo, hi], false);
            return Some(Flow::Next);
        }
        Some(match mn {
            M::Fld | M::Fild | M::Fbld => {
                let (fmt, lo, hi) = if self.has_mem() {
                    self.x87_load_mem()?
                } else {
                    let i = self.st_index(0).unwrap_or(0);
                    (self.b.konst(FMT_STI), self.b.konst(i), self.b.konst(0))
                };
                self.x87(X87Helper::Load, &[fmt, lo, hi], false);
                Flow::Next
            }
            // FSTPNCE (D9 D8+i, "FSTP1") is FSTP ST(i).
            M::Fst | M::Fstp | M::Fstpnce | M::Fist | M::Fistp | M::Fisttp | M::Fbstp => {
                let pop = matches!(mn, M::Fstp | M::Fstpnce | M::Fistp | M::Fisttp | M::Fbstp);
                if self.has_mem() {
                    let fmt = mem_fmt(self.i.memory_size())?;
                    let trunc = mn == M::Fisttp;
                    let addr = self.x87_addr(true, true);
                    let spec = self
                        .b
                        .konst(fmt | u64::from(pop) << 4 | u64::from(trunc) << 5);
                    let m = self.b.konst(self.mmu_arg());
                    self.x87(X87Helper::Store, &[spec, addr, m], false);
                } else {
                    let i = self.st_index(0).unwrap_or(0);
                    let nce = u64::from(mn == M::Fstpnce) << 1;
                    self.x87c(
                        X87Helper::Stack,
                        &[StackOp::StoreReg as u64, i, u64::from(pop) | nce],
                    );
                }
                Flow::Next
            }
            M::Fcom
            | M::Fcomp
            | M::Fcompp
            | M::Fucom
            | M::Fucomp
            | M::Fucompp
            | M::Ficom
            | M::Ficomp
            | M::Ftst
            | M::Fcomi
            | M::Fcomip
            | M::Fucomi
            | M::Fucomip => {
                let quiet = matches!(
                    mn,
                    M::Fucom | M::Fucomp | M::Fucompp | M::Fucomi | M::Fucomip
                );
                let pops: u64 = match mn {
                    M::Fcompp | M::Fucompp => 2,
                    M::Fcomp | M::Fucomp | M::Ficomp | M::Fcomip | M::Fucomip => 1,
                    _ => 0,
                };
                let eflags = matches!(mn, M::Fcomi | M::Fcomip | M::Fucomi | M::Fucomip);
                let (fmt, lo, hi) = if mn == M::Ftst {
                    (self.b.konst(FMT_CONST), self.b.konst(0), self.b.konst(0))
                } else {
                    self.x87_source()?
                };
                let spec = self
                    .b
                    .konst(u64::from(quiet) | pops << 1 | u64::from(eflags) << 3);
                let r = self.x87(X87Helper::Compare, &[spec, fmt, lo, hi], eflags);
                if let Some(r) = r {
                    self.set_eflags(r);
                }
                Flow::Next
            }
            M::Fxch => {
                let i = (0..2).filter_map(|n| self.st_index(n)).find(|&i| i != 0);
                let i = i.unwrap_or(if self.i.op_count() == 0 { 1 } else { 0 });
                self.x87c(X87Helper::Stack, &[StackOp::Fxch as u64, i, 0]);
                Flow::Next
            }
            M::Ffree | M::Ffreep => {
                let op = if mn == M::Ffree {
                    StackOp::Ffree
                } else {
                    StackOp::Ffreep
                };
                let i = self.st_index(0).unwrap_or(0);
                self.x87c(X87Helper::Stack, &[op as u64, i, 0]);
                Flow::Next
            }
            M::Fcmovb
            | M::Fcmove
            | M::Fcmovbe
            | M::Fcmovu
            | M::Fcmovnb
            | M::Fcmovne
            | M::Fcmovnbe
            | M::Fcmovnu => {
                // iced's condition_code() knows no FCMOVcc: map the mnemonic.
                use iced_x86::ConditionCode as C;
                let cc = match mn {
                    M::Fcmovb => C::b,
                    M::Fcmove => C::e,
                    M::Fcmovbe => C::be,
                    M::Fcmovu => C::p,
                    M::Fcmovnb => C::ae,
                    M::Fcmovne => C::ne,
                    M::Fcmovnbe => C::a,
                    _ => C::np,
                };
                let c = self.cond(cc);
                let i = self.st_index(1).unwrap_or(0);
                let op = self.b.konst(StackOp::Fcmov as u64);
                let it = self.b.konst(i);
                self.x87(X87Helper::Stack, &[op, it, c], false);
                Flow::Next
            }
            M::Fincstp
            | M::Fdecstp
            | M::Fchs
            | M::Fabs
            | M::Fsqrt
            | M::Frndint
            | M::Fscale
            | M::Fxtract
            | M::Fprem
            | M::Fprem1
            | M::Fxam
            | M::F2xm1
            | M::Fyl2x
            | M::Fyl2xp1
            | M::Fptan
            | M::Fpatan
            | M::Fsin
            | M::Fcos
            | M::Fsincos => {
                let op = match mn {
                    M::Fincstp => StackOp::Fincstp,
                    M::Fdecstp => StackOp::Fdecstp,
                    M::Fchs => StackOp::Fchs,
                    M::Fabs => StackOp::Fabs,
                    M::Fsqrt => StackOp::Fsqrt,
                    M::Frndint => StackOp::Frndint,
                    M::Fscale => StackOp::Fscale,
                    M::Fxtract => StackOp::Fxtract,
                    M::Fprem => StackOp::Fprem,
                    M::Fprem1 => StackOp::Fprem1,
                    M::Fxam => StackOp::Fxam,
                    M::F2xm1 => StackOp::F2xm1,
                    M::Fyl2x => StackOp::Fyl2x,
                    M::Fyl2xp1 => StackOp::Fyl2xp1,
                    M::Fptan => StackOp::Fptan,
                    M::Fpatan => StackOp::Fpatan,
                    M::Fsin => StackOp::Fsin,
                    M::Fcos => StackOp::Fcos,
                    _ => StackOp::Fsincos,
                };
                self.x87c(X87Helper::Stack, &[op as u64, 0, 0]);
                Flow::Next
            }
            M::Fldcw => {
                let addr = self.x87_addr(true, false);
                let mmu = self.m.mmu();
                let v = self.b.load(addr, Size::B16, false, mmu);
                let op = self.b.konst(0);
                self.x87(X87Helper::Control, &[op, v], false);
                Flow::Next
            }
            M::Fnstcw | M::Fstcw | M::Fnstsw | M::Fstsw => {
                let wait = matches!(mn, M::Fstcw | M::Fstsw);
                if wait {
                    self.x87c(X87Helper::Control, &[5]);
                }
                let code = if matches!(mn, M::Fnstcw | M::Fstcw) {
                    1
                } else {
                    2
                };
                let addr = self.has_mem().then(|| self.x87_addr(false, true));
                let op = self.b.konst(code);
                let v = self.x87(X87Helper::Control, &[op], true)?;
                match addr {
                    Some(a) => {
                        let mmu = self.m.mmu();
                        self.b.store(a, v, Size::B16, mmu);
                    }
                    None => self.set_reg(0, Size::B16, v),
                }
                Flow::Next
            }
            M::Fnclex | M::Fclex | M::Fninit | M::Finit => {
                if matches!(mn, M::Fclex | M::Finit) {
                    self.x87c(X87Helper::Control, &[5]);
                }
                let code = if matches!(mn, M::Fnclex | M::Fclex) {
                    3
                } else {
                    4
                };
                self.x87c(X87Helper::Control, &[code]);
                Flow::Next
            }
            // 8087/287 controls: no-ops since the 387.
            M::Fneni | M::Fndisi | M::Fnsetpm => Flow::Next,
            // FNOP is a waiting instruction despite its name (#MF, as on the CPU).
            M::Fnop => {
                self.x87c(X87Helper::Enter, &[1, 0]);
                Flow::Next
            }
            M::Wait => {
                self.x87c(X87Helper::Control, &[5]);
                Flow::Next
            }
            M::Fnstenv
            | M::Fstenv
            | M::Fldenv
            | M::Fnsave
            | M::Fsave
            | M::Frstor
            | M::Fxsave
            | M::Fxsave64
            | M::Fxrstor
            | M::Fxrstor64 => {
                let op: u64 = match mn {
                    M::Fnstenv | M::Fstenv => 0,
                    M::Fldenv => 1,
                    M::Fnsave | M::Fsave => 2,
                    M::Frstor => 3,
                    M::Fxsave | M::Fxsave64 => 4,
                    _ => 5,
                };
                if matches!(mn, M::Fstenv | M::Fsave) {
                    self.x87c(X87Helper::Control, &[5]);
                }
                let write = matches!(op, 0 | 2 | 4);
                let wait = matches!(op, 1 | 3);
                let addr = if op >= 4 {
                    // FXSAVE/FXRSTOR do their own #NM check.
                    self.mem_addr(512, write)
                } else {
                    self.x87_addr(wait, write)
                };
                let op32 = !matches!(
                    self.i.memory_size(),
                    MemorySize::FpuEnv14 | MemorySize::FpuState94
                );
                let wide = matches!(mn, M::Fxsave64 | M::Fxrstor64);
                let flags = self.mmu_arg() | u64::from(op32) << 1 | u64::from(wide) << 2;
                let o = self.b.konst(op);
                let f = self.b.konst(flags);
                self.x87(X87Helper::Env, &[o, addr, f], false);
                Flow::Next
            }
            _ => return None,
        })
    }
}
