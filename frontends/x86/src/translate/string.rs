//! String instructions: MOVS, CMPS, STOS, LODS, SCAS, INS, OUTS, with REP/REPE/REPNE.
//!
//! The address size (67h) selects SI/DI/CX or ESI/EDI/ECX or RSI/RDI/RCX; DF selects
//! the direction at run time. A REP instruction ends its block and loops through IR
//! labels, one iteration at a time with rCX/rSI/rDI written back after each one (so a
//! fault in iteration k leaves the state of k completed iterations, the PC on the
//! instruction). After [`REP_BUDGET`] iterations the block exits to the same
//! instruction, so that the run loop can take interrupts in long REPs.

use super::{Flow, Tr, DF};
use crate::helpers::system::SysHelper;
use iced_x86::{ConditionCode, Mnemonic};
use vireo_core::cpu::sreg;
use vireo_core::ir::{BinOp, Cond, Global, Size, Temp};

/// Iterations of a REP instruction per block execution (in IR; the long-mode REP
/// MOVS/STOS helper of [`crate::string_ops`] does up to 64 KiB per call instead).
pub const REP_BUDGET: u64 = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Movs,
    Cmps,
    Stos,
    Lods,
    Scas,
    Ins,
    Outs,
}

fn classify(m: Mnemonic) -> (Kind, Size) {
    use Mnemonic as M;
    match m {
        M::Movsb => (Kind::Movs, Size::B8),
        M::Movsw => (Kind::Movs, Size::B16),
        M::Movsd => (Kind::Movs, Size::B32),
        M::Movsq => (Kind::Movs, Size::B64),
        M::Cmpsb => (Kind::Cmps, Size::B8),
        M::Cmpsw => (Kind::Cmps, Size::B16),
        M::Cmpsd => (Kind::Cmps, Size::B32),
        M::Cmpsq => (Kind::Cmps, Size::B64),
        M::Stosb => (Kind::Stos, Size::B8),
        M::Stosw => (Kind::Stos, Size::B16),
        M::Stosd => (Kind::Stos, Size::B32),
        M::Stosq => (Kind::Stos, Size::B64),
        M::Lodsb => (Kind::Lods, Size::B8),
        M::Lodsw => (Kind::Lods, Size::B16),
        M::Lodsd => (Kind::Lods, Size::B32),
        M::Lodsq => (Kind::Lods, Size::B64),
        M::Scasb => (Kind::Scas, Size::B8),
        M::Scasw => (Kind::Scas, Size::B16),
        M::Scasd => (Kind::Scas, Size::B32),
        M::Scasq => (Kind::Scas, Size::B64),
        M::Insb => (Kind::Ins, Size::B8),
        M::Insw => (Kind::Ins, Size::B16),
        M::Insd => (Kind::Ins, Size::B32),
        M::Outsb => (Kind::Outs, Size::B8),
        M::Outsw => (Kind::Outs, Size::B16),
        _ => (Kind::Outs, Size::B32),
    }
}

impl Tr {
    pub(super) fn string(&mut self) -> Flow {
        let (kind, size) = classify(self.i.mnemonic());
        let rep = self.i.has_rep_prefix() || self.i.has_repne_prefix();
        let df = self.b.get(Global::Flags);
        let df = self.b.bini(BinOp::And, Size::B64, df, DF);
        let fwd = self.b.konst(size.bytes() as u64);
        let back = self.b.konst((size.bytes() as u64).wrapping_neg());
        let step = self.b.select(df, back, fwd);
        if !rep {
            self.string_once(kind, size, step);
            return Flow::Next;
        }
        let (top, done) = (self.b.label(), self.b.label());
        if self.asize == Size::B64 && matches!(kind, Kind::Movs | Kind::Stos) {
            // Many iterations per helper call; back here for the rest.
            let sz = self.b.konst(size.bytes() as u64);
            let seg = match kind {
                Kind::Movs => u64::from(self.src_seg()),
                _ => u64::MAX,
            };
            let seg = self.b.konst(seg);
            self.sys(SysHelper::RepString, &[sz, seg], false);
            let cx = self.get_areg(1);
            let z = self.b.konst(0);
            let finished = self.b.setcond(Cond::Eq, Size::B64, cx, z);
            self.b.br_if(finished, done);
            self.exit_to(self.pc);
            self.b.set_label(done);
            self.exit_to(self.next_pc);
            return Flow::End;
        }
        let budget = self.b.konst(REP_BUDGET);
        self.b.set_label(top);
        let cx = self.get_areg(1);
        let z = self.b.konst(0);
        let empty = self.b.setcond(Cond::Eq, Size::B64, cx, z);
        self.b.br_if(empty, done);
        self.string_once(kind, size, step);
        let cx2 = self.b.bini(BinOp::Sub, self.asize, cx, 1);
        self.set_areg(1, cx2);
        if matches!(kind, Kind::Cmps | Kind::Scas) {
            // REPE stops when ZF = 0, REPNE when ZF = 1.
            let stop = if self.i.has_repne_prefix() {
                self.cond(ConditionCode::e)
            } else {
                self.cond(ConditionCode::ne)
            };
            self.b.br_if(stop, done);
        }
        let one = self.b.konst(1);
        let nb = self.b.bin(BinOp::Sub, Size::B64, budget, one);
        self.b.push(vireo_core::ir::Op::Mov {
            dst: budget,
            src: nb,
        });
        self.b.br_if(budget, top);
        let finished = self.b.setcond(Cond::Eq, Size::B64, cx2, z);
        self.b.br_if(finished, done);
        self.exit_to(self.pc);
        self.b.set_label(done);
        self.exit_to(self.next_pc);
        Flow::End
    }

    fn src_seg(&self) -> u8 {
        super::operand::sreg_index(self.i.memory_segment()).unwrap_or(sreg::DS as u8)
    }

    fn advance(&mut self, reg: u8, step: Temp) {
        let v = self.get_areg(reg);
        let nv = self.b.bin(BinOp::Add, self.asize, v, step);
        self.set_areg(reg, nv);
    }

    /// One iteration: accesses, then rSI/rDI updates.
    fn string_once(&mut self, kind: Kind, size: Size, step: Temp) {
        let mmu = self.m.mmu();
        let len = size.bytes() as u64;
        let src_addr = |t: &mut Tr| {
            let si = t.get_areg(6);
            let seg = t.src_seg();
            t.linear(seg, si, len, false)
        };
        let dst_addr = |t: &mut Tr, write: bool| {
            let di = t.get_areg(7);
            t.linear(sreg::ES as u8, di, len, write)
        };
        match kind {
            Kind::Movs => {
                let sa = src_addr(self);
                let v = self.b.load(sa, size, false, mmu);
                let da = dst_addr(self, true);
                self.b.store(da, v, size, mmu);
                self.advance(6, step);
                self.advance(7, step);
            }
            Kind::Cmps => {
                // ES:rDI is checked and read first (as the CPU does: with both
                // operands faulting, the fault is the rDI one).
                let da = dst_addr(self, false);
                let bv = self.b.load(da, size, false, mmu);
                let sa = src_addr(self);
                let a = self.b.load(sa, size, false, mmu);
                self.advance(6, step);
                self.advance(7, step);
                let r = self.b.bin(BinOp::Sub, size, a, bv);
                self.set_cc(crate::flags::CcKind::Sub, size, r, bv, None);
            }
            Kind::Stos => {
                let v = self.get_reg(0, size);
                let da = dst_addr(self, true);
                self.b.store(da, v, size, mmu);
                self.advance(7, step);
            }
            Kind::Lods => {
                let sa = src_addr(self);
                let v = self.b.load(sa, size, false, mmu);
                self.set_reg(0, size, v);
                self.advance(6, step);
            }
            Kind::Scas => {
                let a = self.get_reg(0, size);
                let da = dst_addr(self, false);
                let bv = self.b.load(da, size, false, mmu);
                self.advance(7, step);
                let r = self.b.bin(BinOp::Sub, size, a, bv);
                self.set_cc(crate::flags::CcKind::Sub, size, r, bv, None);
            }
            Kind::Ins => {
                let da = dst_addr(self, true);
                let port = self.get_reg(2, Size::B16);
                let n = self.b.konst(len);
                let v = self.sys(SysHelper::In, &[port, n], true).unwrap_or(port);
                self.b.store(da, v, size, mmu);
                self.advance(7, step);
            }
            Kind::Outs => {
                let sa = src_addr(self);
                let v = self.b.load(sa, size, false, mmu);
                let port = self.get_reg(2, Size::B16);
                let n = self.b.konst(len);
                self.sys(SysHelper::Out, &[port, n, v], false);
                self.advance(6, step);
            }
        }
    }
}
