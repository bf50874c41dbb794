//! Privileged and system instructions, lowered to [`SysHelper`] calls (plus a few
//! inline checks that depend only on the mode: CPL 0 requirements, #UD in real/V86
//! mode for the protected-mode-only instructions). Everything not recognised here
//! (x87, MMX, SSE/AVX, unadvertised extensions) raises #UD.

use super::operand::{gpr, sreg_index, Opnd};
use super::{Flow, Tr};
use crate::helpers::integer::IntHelper;
use crate::helpers::system::SysHelper;
use crate::xsave::XsaveOp;
use iced_x86::{Code, ConditionCode, Mnemonic, OpKind, Register};
use vireo_core::cpu::flags::{AC, ZF};
use vireo_core::cpu::sreg;
use vireo_core::ir::{BinOp, Cond, ExitKind, Global, Size, Temp};

impl Tr {
    /// #GP(0) unless CPL 0. Returns true if it raised.
    fn need_cpl0(&mut self) -> bool {
        if self.m.cpl != 0 {
            self.raise(13, Some(0));
            true
        } else {
            false
        }
    }

    /// #UD in real and V86 mode. Returns true if it raised.
    fn need_protected(&mut self) -> bool {
        if self.m.real() || self.m.vm86 {
            self.ud();
            true
        } else {
            false
        }
    }

    /// Linear address of the memory operand without checks (INVLPG).
    fn linear_nocheck(&mut self) -> Temp {
        let ea = self.ea();
        let seg = sreg_index(self.i.memory_segment()).unwrap_or(sreg::DS as u8);
        if self.m.bits == 64 && usize::from(seg) != sreg::FS && usize::from(seg) != sreg::GS {
            return ea;
        }
        let base = self.b.get(Global::SegBase(seg));
        let size = if self.m.bits == 64 {
            Size::B64
        } else {
            Size::B32
        };
        self.b.bin(BinOp::Add, size, base, ea)
    }

    /// Sets ZF to `bit` (0/1), keeping the other flags.
    fn set_zf(&mut self, bit: Temp) {
        let f = self.eflags();
        let keep = self.b.bini(BinOp::And, Size::B64, f, !ZF);
        let z = self.b.bini(BinOp::Shl, Size::B64, bit, 6);
        let nf = self.b.bin(BinOp::Or, Size::B64, keep, z);
        self.set_eflags(nf);
    }

    /// Writes a selector-like 16-bit value: registers at their size (zero-extended),
    /// memory as a word.
    fn write_sel_dst(&mut self, v: Temp) {
        let o = if self.i.op_kind(0) == OpKind::Memory {
            Opnd::Mem(self.mem_addr(2, true))
        } else {
            self.operand(0, true)
        };
        let size = match o {
            Opnd::Reg(g) => g.size,
            _ => Size::B16,
        };
        self.write(o, size, v);
    }

    pub(super) fn system(&mut self) -> Flow {
        use Mnemonic as M;
        let next = self.next_pc;
        match self.i.mnemonic() {
            M::Iret | M::Iretd | M::Iretq => self.iret(),
            M::Int => {
                let v = self.b.konst(self.i.immediate(0) & 0xff);
                self.soft_int(v, 0)
            }
            M::Int3 => {
                let v = self.b.konst(3);
                self.soft_int(v, 1)
            }
            M::Int1 => {
                let v = self.b.konst(1);
                self.soft_int(v, 3)
            }
            M::Into => {
                let of = self.cond(ConditionCode::o);
                let z = self.b.konst(0);
                let clear = self.b.setcond(Cond::Eq, Size::B64, of, z);
                let skip = self.b.label();
                self.b.br_if(clear, skip);
                let v = self.b.konst(4);
                self.soft_int(v, 2);
                self.b.set_label(skip);
                self.exit_to(next);
                Flow::End
            }
            M::Hlt => {
                if self.need_cpl0() {
                    return Flow::End;
                }
                let n = self.b.konst(next);
                self.sys(SysHelper::Hlt, &[n], false);
                self.b.exit(ExitKind::Halt);
                Flow::End
            }
            M::Clac | M::Stac => {
                // #UD at CPL > 0 and in V86 mode (where CPL is 3); real mode is CPL 0.
                if self.m.cpl != 0 || self.m.vm86 {
                    self.ud();
                    return Flow::End;
                }
                let f = self.b.get(Global::Flags);
                let nf = if self.i.mnemonic() == M::Clac {
                    self.b.bini(BinOp::And, Size::B64, f, !AC)
                } else {
                    self.b.bini(BinOp::Or, Size::B64, f, AC)
                };
                self.b.set(Global::Flags, nf);
                // SMAP checks of later accesses depend on AC: end the block.
                self.exit_to(next);
                Flow::End
            }
            M::Cli => {
                self.sys(SysHelper::Cli, &[], false);
                Flow::Next
            }
            M::Sti => {
                self.sys(SysHelper::Sti, &[], false);
                self.sync()
            }
            M::In => self.in_out(true),
            M::Out => self.in_out(false),
            M::Cpuid => self.simple(SysHelper::Cpuid),
            M::Rdtsc => self.simple(SysHelper::Rdtsc),
            M::Rdtscp => self.simple(SysHelper::Rdtscp),
            M::Rdmsr => {
                if self.need_cpl0() {
                    return Flow::End;
                }
                self.simple(SysHelper::Rdmsr)
            }
            M::Wrmsr => {
                if self.need_cpl0() {
                    return Flow::End;
                }
                self.simple(SysHelper::Wrmsr)
            }
            M::Xgetbv => self.simple(SysHelper::Xgetbv),
            // The helper checks CR4.OSXSAVE (#UD) before the CPL (#GP).
            M::Xsetbv => self.simple(SysHelper::Xsetbv),
            M::Xsave
            | M::Xsave64
            | M::Xsaveopt
            | M::Xsaveopt64
            | M::Xsavec
            | M::Xsavec64
            | M::Xrstor
            | M::Xrstor64 => self.xsave_insn(),
            M::Swapgs => self.simple(SysHelper::Swapgs),
            M::Sysenter => self.simple(SysHelper::Sysenter),
            M::Syscall => {
                // An `Indirect` exit, not `Sync`: the helper sets the lookup guard for
                // the new mode, and SYSCALL never sets IF (it can only clear it), so
                // no interrupt becomes deliverable.
                let n = self.b.konst(next);
                self.sys(SysHelper::Syscall, &[n], false);
                self.b.exit(ExitKind::Indirect);
                Flow::End
            }
            M::Sysret | M::Sysretq => {
                let bits = self.b.konst(if self.i.code() == Code::Sysretq {
                    64
                } else {
                    32
                });
                // `Indirect` too: the helper sets the lookup guard and, when it
                // enables a deferred interrupt, a chain guard (`X86Cpu::irq_window`).
                self.sys(SysHelper::Sysret, &[bits], false);
                self.b.exit(ExitKind::Indirect);
                Flow::End
            }
            M::Sysexit | M::Sysexitq => {
                let bits = self.b.konst(if self.i.code() == Code::Sysexitq {
                    64
                } else {
                    32
                });
                self.sys(SysHelper::Sysexit, &[bits], false);
                self.sync()
            }
            M::Invd | M::Wbinvd | M::Wbnoinvd => {
                if self.need_cpl0() {
                    return Flow::End;
                }
                let n = self.b.konst(next);
                self.sys(SysHelper::CacheFlush, &[n], false);
                Flow::Next
            }
            M::Lgdt | M::Lidt => {
                if self.need_cpl0() {
                    return Flow::End;
                }
                let which = self.b.konst(u64::from(self.i.mnemonic() == M::Lidt));
                let len = if self.m.bits == 64 { 10 } else { 6 };
                let a = self.mem_addr(len, false);
                let opsize = self.b.konst(match self.i.code() {
                    Code::Lgdt_m1632_16 | Code::Lidt_m1632_16 => 16,
                    Code::Lgdt_m1664 | Code::Lidt_m1664 => 64,
                    _ => 32,
                });
                self.sys(SysHelper::LoadDtr, &[which, a, opsize], false);
                Flow::Next
            }
            M::Sgdt | M::Sidt => {
                let which = self.b.konst(u64::from(self.i.mnemonic() == M::Sidt));
                let len = if self.m.bits == 64 { 10 } else { 6 };
                let a = self.mem_addr(len, true);
                self.sys(SysHelper::StoreDtr, &[which, a], false);
                Flow::Next
            }
            M::Lldt | M::Ltr => {
                if self.need_protected() || self.need_cpl0() {
                    return Flow::End;
                }
                let o = self.operand(0, false);
                let sel = self.read(o, Size::B16);
                let h = if self.i.mnemonic() == M::Lldt {
                    SysHelper::Lldt
                } else {
                    SysHelper::Ltr
                };
                self.sys(h, &[sel], false);
                Flow::Next
            }
            M::Sldt | M::Str => {
                if self.need_protected() {
                    return Flow::End;
                }
                let which = self.b.konst(u64::from(self.i.mnemonic() == M::Str));
                let v = self
                    .sys(SysHelper::StoreSel, &[which], true)
                    .unwrap_or(which);
                self.write_sel_dst(v);
                Flow::Next
            }
            M::Smsw => {
                let v = self
                    .int(IntHelper::Smsw, &[], true)
                    .unwrap_or_else(|| self.b.konst(0));
                self.write_sel_dst(v);
                Flow::Next
            }
            M::Lmsw => {
                if self.need_cpl0() {
                    return Flow::End;
                }
                let o = self.operand(0, false);
                let v = self.read(o, Size::B16);
                self.sys(SysHelper::Lmsw, &[v], false);
                self.sync()
            }
            M::Clts => {
                if self.need_cpl0() {
                    return Flow::End;
                }
                self.sys(SysHelper::Clts, &[], false);
                self.sync()
            }
            M::Lar | M::Lsl => {
                if self.need_protected() {
                    return Flow::End;
                }
                let which = self.b.konst(u64::from(self.i.mnemonic() == M::Lsl));
                let o = self.operand(1, false);
                let sel = self.read(o, Size::B16);
                let r = self
                    .sys(SysHelper::LarLsl, &[which, sel], true)
                    .unwrap_or(sel);
                let valid = self.b.bini(BinOp::Shr, Size::B64, r, 63);
                let z = self.b.konst(0);
                let invalid = self.b.setcond(Cond::Eq, Size::B64, valid, z);
                let skip = self.b.label();
                self.b.br_if(invalid, skip);
                let size = self.op_size(0);
                let d = self.operand(0, true);
                self.write(d, size, r);
                self.b.set_label(skip);
                self.set_zf(valid);
                Flow::Next
            }
            M::Verr | M::Verw => {
                if self.need_protected() {
                    return Flow::End;
                }
                let which = self.b.konst(u64::from(self.i.mnemonic() == M::Verw));
                let o = self.operand(0, false);
                let sel = self.read(o, Size::B16);
                let r = self
                    .sys(SysHelper::Verify, &[which, sel], true)
                    .unwrap_or(sel);
                let z = self.b.konst(0);
                let ok = self.b.setcond(Cond::Ne, Size::B64, r, z);
                self.set_zf(ok);
                Flow::Next
            }
            M::Invlpg => {
                if self.need_cpl0() {
                    return Flow::End;
                }
                let a = self.linear_nocheck();
                self.sys(SysHelper::Invlpg, &[a], false);
                self.sync()
            }
            M::Invpcid => {
                if self.need_cpl0() {
                    return Flow::End;
                }
                let t = self.operand(0, false);
                let ty = self.read(t, Size::B64);
                let a = self.mem_addr(16, false);
                self.sys(SysHelper::Invpcid, &[ty, a], false);
                self.sync()
            }
            M::Rdfsbase | M::Rdgsbase => {
                let which = self.b.konst(u64::from(self.i.mnemonic() == M::Rdgsbase));
                let v = self
                    .sys(SysHelper::RdFsGsBase, &[which], true)
                    .unwrap_or(which);
                let size = self.op_size(0);
                let d = self.operand(0, true);
                self.write(d, size, v);
                Flow::Next
            }
            M::Wrfsbase | M::Wrgsbase => {
                let which = self.b.konst(u64::from(self.i.mnemonic() == M::Wrgsbase));
                let size = self.op_size(0);
                let o = self.operand(0, false);
                let v = self.read(o, size);
                self.sys(SysHelper::WrFsGsBase, &[which, v], false);
                Flow::Next
            }
            M::Lds | M::Les | M::Lfs | M::Lgs | M::Lss => self.load_far_ptr(),
            M::Arpl => self.arpl(),
            M::Wait => Flow::Next,
            _ => self.ud(),
        }
    }

    /// A helper without arguments; ends the block if the helper does.
    /// XSAVE, XSAVEOPT, XSAVEC, XRSTOR and their REX.W forms: #UD/#NM checks, then
    /// the operand (segment limit checked for the 576-byte legacy region and header),
    /// then the operation.
    fn xsave_insn(&mut self) -> Flow {
        use Mnemonic as M;
        let mn = self.i.mnemonic();
        let op = match mn {
            M::Xsave | M::Xsave64 => XsaveOp::Xsave,
            M::Xsaveopt | M::Xsaveopt64 => XsaveOp::Xsaveopt,
            M::Xsavec | M::Xsavec64 => XsaveOp::Xsavec,
            _ => XsaveOp::Xrstor,
        };
        let wide = matches!(mn, M::Xsave64 | M::Xsaveopt64 | M::Xsavec64 | M::Xrstor64);
        let o = self.b.konst(op as u64);
        self.sys(SysHelper::XsaveEnter, &[o], false);
        let a = self.mem_addr(crate::xsave::EXT_START, op != XsaveOp::Xrstor);
        let f = self
            .b
            .konst(u64::from(self.m.cpl == 3) | u64::from(wide) << 1);
        self.sys(SysHelper::Xsave, &[o, a, f], false);
        Flow::Next
    }

    fn simple(&mut self, h: SysHelper) -> Flow {
        let ends = crate::helpers::lookup(h.id()).is_some_and(|d| d.effects.ends_block);
        self.sys(h, &[], false);
        if ends {
            self.sync()
        } else {
            Flow::Next
        }
    }

    fn soft_int(&mut self, vector: Temp, kind: u64) -> Flow {
        let n = self.b.konst(self.next_pc);
        let k = self.b.konst(kind);
        self.sys(SysHelper::SoftInt, &[vector, n, k], false);
        self.sync()
    }

    fn in_out(&mut self, is_in: bool) -> Flow {
        let (acc_n, port_n) = if is_in { (0, 1) } else { (1, 0) };
        let size = self.op_size(acc_n);
        let port = match self.i.op_kind(port_n) {
            OpKind::Register => self.get_reg(2, Size::B16),
            _ => self.b.konst(self.i.immediate(port_n) & 0xff),
        };
        let n = self.b.konst(size.bytes() as u64);
        if is_in {
            let v = self.sys(SysHelper::In, &[port, n], true).unwrap_or(n);
            self.set_reg(0, size, v);
        } else {
            let v = self.get_reg(0, size);
            self.sys(SysHelper::Out, &[port, n, v], false);
        }
        Flow::Next
    }

    /// MOV to/from segment, control, debug and test registers.
    pub(super) fn mov_special(&mut self, r0: Option<Register>, r1: Option<Register>) -> Flow {
        if r0.is_some_and(|r| r.is_tr()) || r1.is_some_and(|r| r.is_tr()) {
            return self.ud();
        }
        if let Some(s) = r0.and_then(sreg_index) {
            let o = self.operand(1, false);
            let v = self.read(o, Size::B16);
            return if self.load_sreg(s, v) {
                self.sync()
            } else {
                Flow::Next
            };
        }
        if let Some(s) = r1.and_then(sreg_index) {
            let v = self.read_sel(s);
            self.write_sel_dst(v);
            return Flow::Next;
        }
        if self.need_cpl0() {
            return Flow::End;
        }
        let num = |r: Register, base: Register| u64::from((r as u32).wrapping_sub(base as u32));
        match (r0, r1) {
            (Some(c), Some(g)) if c.is_cr() => {
                let Some(g) = gpr(g) else { return self.ud() };
                let v = self.read_gpr(g);
                let n = self.b.konst(num(c, Register::CR0));
                self.sys(SysHelper::MovToCr, &[n, v], false);
                self.sync()
            }
            (Some(g), Some(c)) if c.is_cr() => {
                let Some(g) = gpr(g) else { return self.ud() };
                let n = self.b.konst(num(c, Register::CR0));
                let v = self.sys(SysHelper::MovFromCr, &[n], true).unwrap_or(n);
                self.write_gpr(g, v);
                Flow::Next
            }
            (Some(d), Some(g)) if d.is_dr() => {
                let Some(g) = gpr(g) else { return self.ud() };
                let v = self.read_gpr(g);
                let n = self.b.konst(num(d, Register::DR0));
                self.sys(SysHelper::MovToDr, &[n, v], false);
                self.sync()
            }
            (Some(g), Some(d)) if d.is_dr() => {
                let Some(g) = gpr(g) else { return self.ud() };
                let n = self.b.konst(num(d, Register::DR0));
                let v = self.sys(SysHelper::MovFromDr, &[n], true).unwrap_or(n);
                self.write_gpr(g, v);
                Flow::Next
            }
            _ => self.ud(),
        }
    }

    /// LDS, LES, LFS, LGS, LSS.
    fn load_far_ptr(&mut self) -> Flow {
        let Some(g) = self.reg_op(0) else {
            return self.ud();
        };
        if self.i.op_kind(1) != OpKind::Memory {
            return self.ud();
        }
        let s = match self.i.mnemonic() {
            Mnemonic::Lds => sreg::DS,
            Mnemonic::Les => sreg::ES,
            Mnemonic::Lfs => sreg::FS,
            Mnemonic::Lgs => sreg::GS,
            _ => sreg::SS,
        } as u8;
        let size = g.size;
        let addr = self.mem_addr(size.bytes() as u64 + 2, false);
        let mmu = self.m.mmu();
        let off = self.b.load(addr, size, false, mmu);
        let a2 = self
            .b
            .bini(BinOp::Add, Size::B64, addr, size.bytes() as u64);
        let sel = self.b.load(a2, Size::B16, false, mmu);
        let end = self.load_sreg(s, sel);
        self.write_gpr(g, off);
        if end {
            self.sync()
        } else {
            Flow::Next
        }
    }

    /// ARPL r/m16, r16 (protected mode, not 64-bit): raises the RPL, sets ZF.
    fn arpl(&mut self) -> Flow {
        if self.need_protected() {
            return Flow::End;
        }
        let d = self.operand(0, true);
        let s = self.operand(1, false);
        let dv = self.read(d, Size::B16);
        let sv = self.read(s, Size::B16);
        let drpl = self.b.bini(BinOp::And, Size::B64, dv, 3);
        let srpl = self.b.bini(BinOp::And, Size::B64, sv, 3);
        let lower = self.b.setcond(Cond::Ltu, Size::B64, drpl, srpl);
        let cleared = self.b.bini(BinOp::And, Size::B64, dv, !3);
        let raised = self.b.bin(BinOp::Or, Size::B64, cleared, srpl);
        let nv = self.b.select(lower, raised, dv);
        self.write(d, Size::B16, nv);
        self.set_zf(lower);
        Flow::Next
    }
}
