//! MMX, SSE, SSE2, SSE3, SSSE3, SSE4.1, SSE4.2 and PCLMULQDQ (legacy encodings),
//! lowered to [`SseHelper`] calls. CRC32 (SSE4.2, but a general-purpose instruction
//! without the SSE checks) is in [`super::bits`], FISTTP (SSE3) in [`super::x87`];
//! MONITOR/MWAIT are not implemented (#UD, and CPUID does not advertise them).
//!
//! Every instruction calls `Enter` (the #UD/#NM/#MF checks), then computes the address
//! of a memory operand (segment checks, then the 16-byte alignment #GP(0) of the
//! aligned forms), loads a memory source in IR and calls `Op`, which switches the x87
//! to MMX mode for MMX register operands and reads and writes the registers. Stores
//! get the register's qwords from `Op` and write them in IR; an unaligned 16-byte
//! store first probes both qwords for writing so that a fault on the second leaves
//! memory unchanged, and an MMX store probes its destination before `Op`. The
//! extracting stores (PEXTRB/W/D/Q, EXTRACTPS) get their element from `Op`.
//!
//! The string comparisons read their explicit lengths from rAX/rDX (RAX/RDX with
//! REX.W), take the absolute values saturated to 16 in IR, and write ECX (index
//! forms; XMM0 is written by the helper for the mask forms) and the flags.

use super::operand::sreg_index;
use super::{Flow, Tr};
use crate::helpers::sse::{spec, SseHelper};
use iced_x86::{CpuidFeature, Mnemonic, OpKind, Register};
use vireo_core::cpu::sreg;
use vireo_core::ir::{BinOp, Cond, Size, Temp};

/// Register operand kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Xmm(u8),
    Mm(u8),
    Gpr,
    Mem,
    Imm,
}

fn kind_of(i: &iced_x86::Instruction, n: u32) -> Option<Kind> {
    if n >= i.op_count() {
        return None;
    }
    Some(match i.op_kind(n) {
        OpKind::Register => {
            let r = i.op_register(n);
            if r.is_xmm() {
                Kind::Xmm((r as u32 - Register::XMM0 as u32) as u8)
            } else if r.is_mm() {
                Kind::Mm((r as u32 - Register::MM0 as u32) as u8)
            } else {
                Kind::Gpr
            }
        }
        OpKind::Memory => Kind::Mem,
        _ => Kind::Imm,
    })
}

/// Forms with a 16-byte memory operand that need no alignment (the SDM's exception
/// type 4 footnote: LDDQU and the string comparisons; checked on hardware).
pub(super) fn unaligned_ok(mn: Mnemonic) -> bool {
    use Mnemonic as M;
    matches!(
        mn,
        M::Movups
            | M::Movupd
            | M::Movdqu
            | M::Lddqu
            | M::Pcmpestri
            | M::Pcmpestri64
            | M::Pcmpestrm
            | M::Pcmpestrm64
            | M::Pcmpistri
            | M::Pcmpistrm
    )
}

/// The CPUID features whose instructions this module translates.
fn simd_feature(f: CpuidFeature) -> bool {
    use CpuidFeature as F;
    matches!(
        f,
        F::MMX | F::SSE | F::SSE2 | F::SSE3 | F::SSSE3 | F::SSE4_1 | F::SSE4_2 | F::PCLMULQDQ
    )
}

/// Extracting stores: `Op` computes the element to store.
fn extracts(mn: Mnemonic) -> bool {
    use Mnemonic as M;
    matches!(
        mn,
        M::Pextrb | M::Pextrw | M::Pextrd | M::Pextrq | M::Extractps
    )
}

impl Tr {
    fn sse(&mut self, h: SseHelper, args: &[Temp], ret: bool) -> Option<Temp> {
        let eff = h.effects();
        self.b.call(h.id(), args, ret, eff)
    }

    /// Linear address of the memory operand, with the alignment check.
    pub(super) fn sse_addr(&mut self, write: bool) -> Temp {
        let len = self.i.memory_size().size().max(1) as u64;
        let ea = self.ea();
        let seg = sreg_index(self.i.memory_segment()).unwrap_or(sreg::DS as u8);
        let aligned = len == 16 && !unaligned_ok(self.i.mnemonic());
        let addr = if aligned {
            self.linear_aligned(seg, ea, len, write)
        } else {
            self.linear(seg, ea, len, write)
        };
        if aligned {
            let low = self.b.bini(BinOp::And, Size::B64, addr, 15);
            self.raise_if(low, 13, true);
        }
        addr
    }

    /// `addr + 8` in the address width.
    pub(super) fn plus8(&mut self, addr: Temp) -> Temp {
        let a8 = self.b.bini(BinOp::Add, Size::B64, addr, 8);
        if self.m.bits == 64 {
            a8
        } else {
            self.b.ext(a8, Size::B32, false)
        }
    }

    /// The length of a string operand in register `reg` (EAX/EDX, RAX/RDX if `w64`):
    /// its absolute value saturated to 16.
    fn str_len(&mut self, reg: u8, w64: bool) -> Temp {
        let v = if w64 {
            self.get_reg(reg, Size::B64)
        } else {
            let r = self.get_reg(reg, Size::B32);
            self.b.ext(r, Size::B32, true)
        };
        let zero = self.b.konst(0);
        let neg = self.b.bin(BinOp::Sub, Size::B64, zero, v);
        let is_neg = self.b.setcond(Cond::Lt, Size::B64, v, zero);
        let abs = self.b.select(is_neg, neg, v);
        let max = self.b.konst(16);
        let big = self.b.setcond(Cond::Gtu, Size::B64, abs, max);
        self.b.select(big, max, abs)
    }

    /// Translates an MMX/SSE/SSE2/SSE3/SSSE3/SSE4.1/SSE4.2/PCLMULQDQ instruction;
    /// `None` if it is not one.
    pub(crate) fn sse_insn(&mut self) -> Option<Flow> {
        let i = self.i;
        let feats = i.cpuid_features();
        if feats.is_empty() || !feats.iter().all(|f| simd_feature(*f)) {
            return None;
        }
        let mn = i.mnemonic();
        if mn == Mnemonic::Movnti {
            let v = self.operand(1, false);
            let size = self.op_size(1);
            let v = self.read(v, size);
            let d = self.operand(0, true);
            self.write(d, size, v);
            return Some(Flow::Next);
        }
        let kinds: Vec<Kind> = (0..i.op_count()).filter_map(|n| kind_of(&i, n)).collect();
        let has_mm = kinds.iter().any(|k| matches!(k, Kind::Mm(_)));
        let has_xmm = kinds.iter().any(|k| matches!(k, Kind::Xmm(_)));
        let sse_checks = has_xmm || matches!(mn, Mnemonic::Ldmxcsr | Mnemonic::Stmxcsr);
        let mmx = has_mm || mn == Mnemonic::Emms;
        let maskmovq = mn == Mnemonic::Maskmovq;
        if !mmx && self.m.sse_ok {
            // The SSE checks pass in this mode (a block key bit): none at run time,
            // and the plain 64-bit forms need no helper at all.
            if let Some(flow) = self.sse_ir(mn, &kinds) {
                return Some(flow);
            }
        } else {
            let e = self.b.konst(
                u64::from(mmx) | u64::from(sse_checks || !mmx) << 1 | u64::from(maskmovq) << 2,
            );
            self.sse(SseHelper::Enter, &[e], false);
        }

        let mut sp = mn as u64;
        if i.op_count() >= 2 && i.op_kind(i.op_count() - 1) == OpKind::Immediate8 {
            sp |= (i.immediate8() as u64) << spec::IMM_SHIFT;
        }
        // A 64-bit integer operand: a 64-bit GPR, or (CVTSI2SS/SD with REX.W) memory.
        let w64 = (0..i.op_count())
            .any(|n| i.op_kind(n) == OpKind::Register && i.op_register(n).is_gpr64())
            || i.memory_size() == iced_x86::MemorySize::Int64;
        if w64 {
            sp |= spec::W64;
        }
        let mmu = self.m.mmu();
        let zero = self.b.konst(0);
        if matches!(mn, Mnemonic::Maskmovq | Mnemonic::Maskmovdqu) {
            // DS:rDI (segment overridable), the data operand 1, the mask operand 2.
            let (Some(Kind::Xmm(d) | Kind::Mm(d)), Some(Kind::Xmm(m) | Kind::Mm(m))) =
                (kind_of(&i, 1), kind_of(&i, 2))
            else {
                return Some(self.ud());
            };
            sp |= u64::from(d) << spec::DST_SHIFT | u64::from(m) << spec::SRC_SHIFT;
            if has_mm {
                sp |= spec::DST_MMX | spec::SRC_MMX;
            }
            let ea = self.get_areg(7);
            let seg = sreg_index(self.i.memory_segment()).unwrap_or(sreg::DS as u8);
            let len = if has_mm { 8 } else { 16 };
            let addr = self.linear(seg, ea, len, true);
            let s = self.b.konst(sp);
            let u = self.b.konst(u64::from(mmu == vireo_core::ir::MmuIdx::User));
            self.sse(SseHelper::Op, &[s, addr, u], false);
            return Some(Flow::Next);
        }
        match (kinds.first().copied(), kinds.get(1).copied()) {
            (None, _) => {
                // EMMS.
                let s = self.b.konst(sp);
                self.sse(SseHelper::Op, &[s, zero, zero], false);
            }
            (Some(Kind::Mem), src) if mn == Mnemonic::Ldmxcsr || src.is_none() => {
                let write = mn == Mnemonic::Stmxcsr;
                let addr = self.sse_addr(write);
                let s = self.b.konst(sp);
                if write {
                    let v = self.sse(SseHelper::Op, &[s, zero, zero], true)?;
                    self.b.store(addr, v, Size::B32, mmu);
                } else {
                    let v = self.b.load(addr, Size::B32, false, mmu);
                    self.sse(SseHelper::Op, &[s, v, zero], false);
                }
            }
            (Some(Kind::Mem), Some(src)) => {
                // Stores from a register.
                let (r, rmmx) = match src {
                    Kind::Xmm(r) => (r, false),
                    Kind::Mm(r) => (r, true),
                    _ => return Some(self.ud()),
                };
                sp |= u64::from(r) << spec::SRC_SHIFT | spec::SRC_REG;
                if !extracts(mn) {
                    sp |= spec::STORE;
                }
                if rmmx {
                    sp |= spec::SRC_MMX;
                }
                let len = i.memory_size().size();
                let addr = self.sse_addr(true);
                if rmmx {
                    // The store must not fault after Op switched to MMX mode.
                    let size = Size::from_bytes(len).unwrap_or(Size::B64);
                    self.b.load_for_write(addr, size, mmu);
                }
                let s = self.b.konst(sp);
                let lo = self.sse(SseHelper::Op, &[s, zero, zero], true)?;
                if len == 16 {
                    let s2 = self.b.konst(sp | spec::HIGH);
                    let hi = self.sse(SseHelper::Op, &[s2, zero, zero], true)?;
                    let a8 = self.plus8(addr);
                    if unaligned_ok(mn) {
                        self.b.load_for_write(addr, Size::B64, mmu);
                        self.b.load_for_write(a8, Size::B64, mmu);
                    }
                    self.b.store(addr, lo, Size::B64, mmu);
                    self.b.store(a8, hi, Size::B64, mmu);
                } else {
                    let size = Size::from_bytes(len).unwrap_or(Size::B64);
                    self.b.store(addr, lo, size, mmu);
                }
            }
            (Some(dst), src) => {
                let gpr_dst = dst == Kind::Gpr;
                match dst {
                    Kind::Xmm(r) => sp |= u64::from(r) << spec::DST_SHIFT,
                    Kind::Mm(r) => sp |= u64::from(r) << spec::DST_SHIFT | spec::DST_MMX,
                    _ => {}
                }
                // The source: for a GPR destination the register operand after it.
                let (mut lo, mut hi) = (zero, zero);
                match src {
                    Some(Kind::Xmm(r)) => sp |= u64::from(r) << spec::SRC_SHIFT | spec::SRC_REG,
                    Some(Kind::Mm(r)) => {
                        sp |= u64::from(r) << spec::SRC_SHIFT | spec::SRC_REG | spec::SRC_MMX
                    }
                    Some(Kind::Gpr) => {
                        let o = self.operand(1, false);
                        let size = self.op_size(1);
                        lo = self.read(o, size);
                        sp |= spec::SRC_MEM;
                    }
                    Some(Kind::Mem) => {
                        let len = i.memory_size().size();
                        let addr = self.sse_addr(false);
                        if len == 16 {
                            lo = self.b.load(addr, Size::B64, false, mmu);
                            let a8 = self.plus8(addr);
                            hi = self.b.load(a8, Size::B64, false, mmu);
                        } else {
                            let size = Size::from_bytes(len).unwrap_or(Size::B64);
                            lo = self.b.load(addr, size, false, mmu);
                        }
                        sp |= spec::SRC_MEM;
                    }
                    Some(Kind::Imm) => lo = self.b.konst(u64::from(i.immediate8())),
                    None => return Some(self.ud()),
                }
                if gpr_dst && matches!(mn, Mnemonic::Movd | Mnemonic::Movq) {
                    sp |= spec::STORE;
                }
                let s = self.b.konst(sp);
                use Mnemonic as M;
                match mn {
                    M::Pcmpestri | M::Pcmpestri64 | M::Pcmpestrm | M::Pcmpestrm64 => {
                        let w64 = matches!(mn, M::Pcmpestri64 | M::Pcmpestrm64);
                        let la = self.str_len(0, w64);
                        let lb = self.str_len(2, w64);
                        let lb8 = self.b.bini(BinOp::Shl, Size::B64, lb, 8);
                        let lens = self.b.bin(BinOp::Or, Size::B64, la, lb8);
                        let v = self.sse(SseHelper::Op, &[s, lo, hi, lens], true)?;
                        self.str_result(mn, v);
                        return Some(Flow::Next);
                    }
                    M::Pcmpistri | M::Pcmpistrm => {
                        let v = self.sse(SseHelper::Op, &[s, lo, hi], true)?;
                        self.str_result(mn, v);
                        return Some(Flow::Next);
                    }
                    _ => {}
                }
                let mmx_or_store = spec::DST_MMX | spec::SRC_MMX | spec::STORE;
                let h = if sp & mmx_or_store == 0 && crate::helpers::sse::fast_handles(mn) {
                    SseHelper::Fast
                } else {
                    SseHelper::Op
                };
                let v = self.sse(h, &[s, lo, hi], true)?;
                if gpr_dst {
                    let o = self.operand(0, true);
                    let size = self.op_size(0);
                    self.write(o, size, v);
                } else if matches!(
                    mn,
                    M::Comiss | M::Ucomiss | M::Comisd | M::Ucomisd | M::Ptest
                ) {
                    self.set_eflags(v);
                }
            }
        }
        Some(Flow::Next)
    }
}

impl Tr {
    /// The results of a string comparison: `index | eflags << 32` for the index
    /// forms (the index to ECX), the EFLAGS for the mask forms.
    fn str_result(&mut self, mn: Mnemonic, v: Temp) {
        if matches!(
            mn,
            Mnemonic::Pcmpestri | Mnemonic::Pcmpestri64 | Mnemonic::Pcmpistri
        ) {
            self.set_reg(1, Size::B32, v);
            let f = self.b.bini(BinOp::Shr, Size::B64, v, 32);
            self.set_eflags(f);
        } else {
            self.set_eflags(v);
        }
    }
}
