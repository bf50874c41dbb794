//! Stack accesses of system instructions (interrupt frames, far calls and returns):
//! pushes and pops through a stack segment with its limit checks, committed to RSP
//! only when the whole instruction has succeeded.

use crate::cpu::X86Cpu;
use crate::mmu::{self, Agent};
use vireo_core::cpu::{reg, sreg, Segment};
use vireo_core::exec::Fault;

/// A stack being pushed to or popped from, not yet committed.
#[derive(Debug, Clone, Copy)]
pub struct Stack {
    pub base: u64,
    /// The stack pointer (only its low `mask` bits count).
    pub sp: u64,
    /// 0xffff, 0xffff_ffff or u64::MAX: the stack-pointer width.
    pub mask: u64,
    pub limit: u32,
    pub expand_down: bool,
    pub big: bool,
    /// No limit checks (64-bit mode).
    pub flat: bool,
    pub agent: Agent,
    /// Error code of a #SS on this stack (0, or the new SS selector plus EXT).
    pub ss_error: u32,
}

impl Stack {
    /// A stack on segment `seg` at `sp`.
    pub fn on(seg: &Segment, sp: u64, long64: bool, agent: Agent, ss_error: u32) -> Stack {
        let mask = if long64 {
            u64::MAX
        } else if seg.db {
            0xffff_ffff
        } else {
            0xffff
        };
        Stack {
            base: if long64 { 0 } else { seg.base },
            sp: sp & mask,
            mask,
            limit: seg.limit,
            expand_down: seg.s && seg.type_ & 0xc == 4,
            big: seg.db,
            flat: long64,
            agent,
            ss_error,
        }
    }

    /// The current stack (SS:RSP) at the current privilege.
    pub fn current(cpu: &X86Cpu) -> Stack {
        let ss = cpu.state.seg[sreg::SS];
        Stack::on(
            &ss,
            cpu.state.gpr[reg::RSP],
            cpu.long64(),
            mmu::current_agent(cpu),
            0,
        )
    }

    fn check(&self, off: u64, size: u64) -> Result<(), Fault> {
        if self.flat {
            return Ok(());
        }
        let last = off + size - 1;
        let ok = if self.expand_down {
            let top = if self.big { 0xffff_ffff } else { 0xffff };
            off > u64::from(self.limit) && last <= top
        } else {
            last <= u64::from(self.limit)
        };
        if ok {
            Ok(())
        } else {
            Err(Fault::with_error(crate::seg::SS, self.ss_error))
        }
    }

    fn linear(&self, off: u64) -> u64 {
        let la = self.base.wrapping_add(off);
        if self.flat {
            la
        } else {
            la & 0xffff_ffff
        }
    }

    /// Pushes the low `size` bytes of `v`.
    pub fn push(&mut self, cpu: &mut X86Cpu, v: u64, size: usize) -> Result<(), Fault> {
        let off = self.sp.wrapping_sub(size as u64) & self.mask;
        self.check(off, size as u64)?;
        mmu::write_by(cpu, self.linear(off), size, v, self.agent)?;
        self.sp = off;
        Ok(())
    }

    /// Pushes `values` in order (the first at the highest address), each `size`
    /// bytes, as that many [`Stack::push`]es would: in 64-bit mode a frame within one
    /// page is one write after a check of the first slot (which faults where the
    /// first push would; nothing else of the page can fault then).
    pub fn push_all(&mut self, cpu: &mut X86Cpu, values: &[u64], size: usize) -> Result<(), Fault> {
        let n = values.len() * size;
        let off = self.sp.wrapping_sub(n as u64);
        let first = self.sp.wrapping_sub(size as u64);
        let one_page = off >> 12 == first >> 12 && off < self.sp;
        if !(self.flat && size == 8 && n <= 64 && one_page) {
            for &v in values {
                self.push(cpu, v, size)?;
            }
            return Ok(());
        }
        mmu::probe_write(cpu, self.linear(first), size, self.agent)?;
        let mut buf = [0u8; 64];
        for (i, v) in values.iter().enumerate() {
            let at = n - (i + 1) * 8;
            buf[at..at + 8].copy_from_slice(&v.to_le_bytes());
        }
        mmu::write_bytes(cpu, self.linear(off), &buf[..n], self.agent)?;
        self.sp = off;
        Ok(())
    }

    /// Pops `size` bytes.
    pub fn pop(&mut self, cpu: &mut X86Cpu, size: usize) -> Result<u64, Fault> {
        let v = self.peek(cpu, 0, size)?;
        self.sp = self.sp.wrapping_add(size as u64) & self.mask;
        Ok(v)
    }

    /// Reads `size` bytes at `sp + offset` without popping.
    pub fn peek(&self, cpu: &mut X86Cpu, offset: u64, size: usize) -> Result<u64, Fault> {
        let off = self.sp.wrapping_add(offset) & self.mask;
        self.check(off, size as u64)?;
        mmu::read_by(cpu, self.linear(off), size, self.agent)
    }

    /// Drops `n` bytes (RET imm16).
    pub fn skip(&mut self, n: u64) {
        self.sp = self.sp.wrapping_add(n) & self.mask;
    }

    /// The new value of RSP given its old value: only the low `mask` bits change.
    pub fn rsp(&self, old: u64) -> u64 {
        if self.mask == u64::MAX {
            self.sp
        } else if self.mask == 0xffff_ffff {
            // 32-bit stack-pointer writes zero-extend... except that hardware keeps
            // the upper half of RSP on 32-bit stacks outside 64-bit mode, where it is
            // not observable; zero-extending matches 64-bit-capable CPUs.
            self.sp
        } else {
            (old & !0xffff) | self.sp
        }
    }

    /// Writes the stack pointer back to RSP.
    pub fn commit(&self, cpu: &mut X86Cpu) {
        let old = cpu.state.gpr[reg::RSP];
        cpu.state.gpr[reg::RSP] = self.rsp(old);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{machine, r64};

    /// `push_all` leaves the same bytes and stack pointer as one push per value, for
    /// frames inside a page and across a page boundary, with and without the sixth
    /// slot (an error code).
    #[test]
    fn push_all_writes_what_pushes_would() {
        let seg = Segment::flat(0x10, false, true);
        for sp in [
            0x9_0000u64,
            0x9_0010,
            0x9_0028,
            0x9_0020,
            0x9_0ff0,
            0x9_1000,
        ] {
            for n in [5usize, 6] {
                let values: Vec<u64> = (0..n as u64)
                    .map(|i| 0x1111_0000_0000 * (i + 1) + sp)
                    .collect();
                let mut a = machine();
                let mut b = machine();
                let mut sa = Stack::on(&seg, sp, true, Agent::Kernel, 0);
                let mut sb = sa;
                sa.push_all(&mut a, &values, 8).expect("push_all");
                for &v in &values {
                    sb.push(&mut b, v, 8).expect("push");
                }
                assert_eq!(sa.sp, sb.sp, "{sp:#x} {n}");
                for at in (sp - 64..sp + 16).step_by(8) {
                    assert_eq!(r64(&a, at), r64(&b, at), "{sp:#x} {n} at {at:#x}");
                }
            }
        }
    }
}
