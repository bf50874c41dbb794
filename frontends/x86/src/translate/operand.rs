//! Registers, effective addresses, segment checks and operand access.

use super::{SegClass, Tr};
use crate::helpers::integer::IntHelper;
use iced_x86::{OpKind, Register};
use vireo_core::cpu::sreg;
use vireo_core::ir::{BinOp, Cond, Global, Size, Temp};

/// A general-purpose register operand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Gpr {
    pub idx: u8,
    pub size: Size,
    /// AH, CH, DH, BH.
    pub high: bool,
}

/// Decodes an iced general-purpose register.
pub(crate) fn gpr(r: Register) -> Option<Gpr> {
    let v = r as u32;
    let (al, ax, eax, rax, r15) = (
        Register::AL as u32,
        Register::AX as u32,
        Register::EAX as u32,
        Register::RAX as u32,
        Register::R15 as u32,
    );
    if v < al || v > r15 {
        return None;
    }
    Some(if v < ax {
        let n = v - al;
        match n {
            0..=3 => Gpr {
                idx: n as u8,
                size: Size::B8,
                high: false,
            },
            4..=7 => Gpr {
                idx: (n - 4) as u8,
                size: Size::B8,
                high: true,
            },
            _ => Gpr {
                idx: (n - 4) as u8,
                size: Size::B8,
                high: false,
            },
        }
    } else if v < eax {
        Gpr {
            idx: (v - ax) as u8,
            size: Size::B16,
            high: false,
        }
    } else if v < rax {
        Gpr {
            idx: (v - eax) as u8,
            size: Size::B32,
            high: false,
        }
    } else {
        Gpr {
            idx: (v - rax) as u8,
            size: Size::B64,
            high: false,
        }
    })
}

/// Index (ES=0 … GS=5) of an iced segment register.
pub(crate) fn sreg_index(r: Register) -> Option<u8> {
    let v = r as u32;
    let es = Register::ES as u32;
    (es..es + 6).contains(&v).then(|| (v - es) as u8)
}

/// An instruction operand, resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Opnd {
    Reg(Gpr),
    /// Memory at a linear address.
    Mem(Temp),
    Imm(u64),
    /// Something else (segment, control register...): handled by the caller.
    Other,
}

impl Tr {
    /// Reads a register of width `size` (zero-extended).
    pub fn get_reg(&mut self, idx: u8, size: Size) -> Temp {
        let g = self.b.get(Global::Gpr(idx & 15));
        if size == Size::B64 {
            g
        } else {
            self.b.ext(g, size, false)
        }
    }

    /// Writes the low `size` bytes of a register (32-bit writes zero-extend).
    pub fn set_reg(&mut self, idx: u8, size: Size, v: Temp) {
        let idx = idx & 15;
        let nv = match size {
            Size::B64 => v,
            Size::B32 => self.b.ext(v, Size::B32, false),
            Size::B8 | Size::B16 => {
                let old = self.b.get(Global::Gpr(idx));
                let keep = self.b.bini(BinOp::And, Size::B64, old, !size.mask());
                let low = self.b.ext(v, size, false);
                self.b.bin(BinOp::Or, Size::B64, keep, low)
            }
        };
        self.b.set(Global::Gpr(idx), nv);
    }

    pub fn read_gpr(&mut self, r: Gpr) -> Temp {
        if r.high {
            let g = self.b.get(Global::Gpr(r.idx & 15));
            let s = self.b.bini(BinOp::Shr, Size::B64, g, 8);
            self.b.ext(s, Size::B8, false)
        } else {
            self.get_reg(r.idx, r.size)
        }
    }

    pub fn write_gpr(&mut self, r: Gpr, v: Temp) {
        if r.high {
            let idx = r.idx & 15;
            let old = self.b.get(Global::Gpr(idx));
            let keep = self.b.bini(BinOp::And, Size::B64, old, !0xff00);
            let low = self.b.ext(v, Size::B8, false);
            let sh = self.b.bini(BinOp::Shl, Size::B64, low, 8);
            let nv = self.b.bin(BinOp::Or, Size::B64, keep, sh);
            self.b.set(Global::Gpr(idx), nv);
        } else {
            self.set_reg(r.idx, r.size, v);
        }
    }

    /// The effective address (offset) of the memory operand, truncated to the
    /// address size.
    pub fn ea(&mut self) -> Temp {
        let i = self.i;
        let asize = self.asize;
        let base = i.memory_base();
        if matches!(base, Register::RIP | Register::EIP) {
            return self.b.konst(asize.trunc(i.memory_displacement64()));
        }
        // Base + index * scale + displacement, each only if present (a zero
        // displacement adds nothing: `[rax]` is rax).
        let mut acc: Option<Temp> = None;
        if let Some(g) = gpr(base) {
            let mut v = self.read_gpr(g);
            if g.idx == 4 && !g.high && self.sp_adjust != 0 {
                v = self.b.bini(BinOp::Add, Size::B64, v, self.sp_adjust);
            }
            acc = Some(v);
        }
        if let Some(g) = gpr(i.memory_index()) {
            let v = self.read_gpr(g);
            let scale = u64::from(i.memory_index_scale().max(1));
            let sv = if scale > 1 {
                self.b
                    .bini(BinOp::Shl, Size::B64, v, u64::from(scale.trailing_zeros()))
            } else {
                v
            };
            acc = Some(match acc {
                Some(a) => self.b.bin(BinOp::Add, Size::B64, a, sv),
                None => sv,
            });
        }
        let disp = i.memory_displacement64();
        let acc = match acc {
            Some(a) if disp == 0 => a,
            Some(a) => self.b.bini(BinOp::Add, Size::B64, a, disp),
            None => self.b.konst(disp),
        };
        if asize == Size::B64 {
            acc
        } else {
            self.b.ext(acc, asize, false)
        }
    }

    /// Linear address of `ea` in segment `seg` for an access of `len` bytes, with the
    /// segment-limit (16/32-bit) or canonical (64-bit) checks.
    pub fn linear(&mut self, seg: u8, ea: Temp, len: u64, write: bool) -> Temp {
        self.linear_with(seg, ea, len, write, false)
    }

    /// [`Self::linear`] for an access of at most 16 bytes whose natural alignment
    /// the caller checks right after (and before any access): such an access lies in
    /// one page and on one side of 2^47, so a non-canonical address faults in the
    /// softmmu on its first part, as for an access of at most 8 bytes.
    pub fn linear_aligned(&mut self, seg: u8, ea: Temp, len: u64, write: bool) -> Temp {
        self.linear_with(seg, ea, len, write, len <= 16)
    }

    fn linear_with(&mut self, seg: u8, ea: Temp, len: u64, write: bool, aligned: bool) -> Temp {
        let lin = self.linear_unrecorded(seg, ea, len, write, aligned);
        if write {
            self.rmw_addr = Some(lin);
        }
        lin
    }

    fn linear_unrecorded(
        &mut self,
        seg: u8,
        ea: Temp,
        len: u64,
        write: bool,
        aligned: bool,
    ) -> Temp {
        let seg = seg % 6;
        let stack = usize::from(seg) == sreg::SS;
        let vector = if stack { 12 } else { 13 };
        if self.m.bits == 64 {
            let lin = if usize::from(seg) == sreg::FS || usize::from(seg) == sreg::GS {
                let base = self.b.get(Global::SegBase(seg));
                self.b.bin(BinOp::Add, Size::B64, base, ea)
            } else {
                ea
            };
            // Non-canonical: bits 63..47 of the first or the last byte's address not
            // all equal (an access crossing 2^47 faults before any page is walked).
            // An access of at most 8 bytes (one load or store) faults in the softmmu
            // (no fast TLB entry matches such an address, and `mmu` checks both ends
            // first), which keeps the block free of a branch per access: #GP(0), or
            // #SS(0) when all of the instruction's accesses go through SS (exception
            // delivery decides: `stack_only`). An SS access of an instruction that
            // also has others, and a wider operand (several loads, which must fault
            // before the first part is accessed) unless it is aligned (see
            // `linear_aligned`), are checked here.
            // With b = lin + 2^47, the first byte is canonical iff b < 2^48, the last
            // iff b + len - 1 < 2^48.
            if (len <= 8 || aligned) && (!stack || super::stack_only(&self.i)) {
                return lin;
            }
            let biased = self
                .b
                .bini(BinOp::Add, Size::B64, lin, 0x0000_8000_0000_0000);
            let limit = self.b.konst((1u64 << 48) - len.max(1));
            let bad = self.b.setcond(Cond::Gtu, Size::B64, biased, limit);
            self.raise_if(bad, vector, true);
            return lin;
        }
        match self.m.seg[usize::from(seg)] {
            SegClass::Flat => {}
            SegClass::Limit64K => {
                if self.asize != Size::B16 || len > 1 {
                    let last = self.b.bini(BinOp::Add, Size::B64, ea, len - 1);
                    let lim = self.b.konst(0xffff);
                    let bad = self.b.setcond(Cond::Gtu, Size::B64, last, lim);
                    self.raise_if(bad, vector, true);
                }
            }
            SegClass::Checked => {
                let s = self.b.konst(u64::from(seg));
                let info = self.b.konst(len | (u64::from(write) << 8));
                self.int(IntHelper::SegCheck, &[s, ea, info], false);
            }
        }
        let base = self.b.get(Global::SegBase(seg));
        self.b.bin(BinOp::Add, Size::B32, base, ea)
    }

    /// Linear address of the instruction's memory operand (`len` bytes accessed).
    pub fn mem_addr(&mut self, len: u64, write: bool) -> Temp {
        let ea = self.ea();
        let seg = sreg_index(self.i.memory_segment()).unwrap_or(sreg::DS as u8);
        self.linear(seg, ea, len, write)
    }

    /// Resolves operand `n`; for memory computes the linear address (`len` bytes,
    /// `write` for destinations).
    pub fn operand(&mut self, n: u32, write: bool) -> Opnd {
        match self.i.op_kind(n) {
            OpKind::Register => match gpr(self.i.op_register(n)) {
                Some(g) => Opnd::Reg(g),
                None => Opnd::Other,
            },
            OpKind::Memory => {
                let len = self.op_size(n).bytes() as u64;
                Opnd::Mem(self.mem_addr(len, write))
            }
            OpKind::Immediate8
            | OpKind::Immediate16
            | OpKind::Immediate32
            | OpKind::Immediate64
            | OpKind::Immediate8to16
            | OpKind::Immediate8to32
            | OpKind::Immediate8to64
            | OpKind::Immediate32to64
            | OpKind::Immediate8_2nd => Opnd::Imm(self.i.immediate(n)),
            _ => Opnd::Other,
        }
    }

    /// Width of operand `n` (register size, memory size; immediates: operand 0's).
    pub fn op_size(&self, n: u32) -> Size {
        match self.i.op_kind(n) {
            OpKind::Register => gpr(self.i.op_register(n))
                .map(|g| g.size)
                .unwrap_or(Size::B16),
            OpKind::Memory => Size::from_bytes(self.i.memory_size().size()).unwrap_or(Size::B16),
            OpKind::Immediate8 | OpKind::Immediate8_2nd => Size::B8,
            OpKind::Immediate16 | OpKind::Immediate8to16 => Size::B16,
            OpKind::Immediate32 | OpKind::Immediate8to32 => Size::B32,
            _ => Size::B64,
        }
    }

    /// Reads an operand at `size` (zero-extended). A memory operand computed for
    /// writing is read with write intent (read-modify-write: see [`Tr::rmw_addr`]).
    pub fn read(&mut self, o: Opnd, size: Size) -> Temp {
        match o {
            Opnd::Reg(g) => self.read_gpr(g),
            Opnd::Mem(a) => {
                let mmu = self.m.mmu();
                if self.rmw_addr == Some(a) {
                    self.b.load_for_write(a, size, mmu)
                } else {
                    self.b.load(a, size, false, mmu)
                }
            }
            Opnd::Imm(v) => self.b.konst(size.trunc(v)),
            Opnd::Other => self.b.konst(0),
        }
    }

    /// Writes an operand.
    pub fn write(&mut self, o: Opnd, size: Size, v: Temp) {
        match o {
            Opnd::Reg(g) => self.write_gpr(g, v),
            Opnd::Mem(a) => {
                let mmu = self.m.mmu();
                self.b.store(a, v, size, mmu)
            }
            Opnd::Imm(_) | Opnd::Other => {}
        }
    }

    /// The register operand `n` (None if it is not a GPR).
    pub fn reg_op(&self, n: u32) -> Option<Gpr> {
        if self.i.op_kind(n) == OpKind::Register {
            gpr(self.i.op_register(n))
        } else {
            None
        }
    }

    /// Reads a register of the address size.
    pub fn get_areg(&mut self, idx: u8) -> Temp {
        let s = self.asize;
        self.get_reg(idx, s)
    }

    /// Writes a register at the address size (16-bit: low word only).
    pub fn set_areg(&mut self, idx: u8, v: Temp) {
        let s = self.asize;
        self.set_reg(idx, s, v);
    }
}
