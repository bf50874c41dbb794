//! Guest x86 code → IR.
//!
//! [`translate_block`] decodes guest instructions with iced-x86 from `CS.base + RIP`
//! and emits one IR [`Block`]. The block ends at a control transfer, after a helper
//! that changes translation-relevant state (`ends_block`), after `max_insns`
//! instructions, or before the first instruction that starts on another 4 KiB page
//! than the block's first one (an instruction straddling the page boundary may be the
//! block's last). Every instruction starts with `insn_start(pc, len)`; at every exit
//! `Global::Pc` holds the next PC (relative to the CS base, wrapped to the IP width).
//!
//! # What a block depends on: [`mode_key`]
//! The translation reads nothing of the CPU but the bits [`mode_key`] returns (plus
//! the code bytes and the CPUID model, which is fixed for the life of an engine and
//! the same on all its CPUs), so a block cache keyed on (physical PC, mode key) is
//! correct.
//!
//! # Layout
//! - this file: the [`Tr`] context, the block loop, the instruction dispatch;
//! - [`operand`]: registers, effective addresses, segment checks, operand access;
//! - [`cc`]: lazy flags (setting them, evaluating conditions);
//! - [`alu`], [`shift`], [`muldiv`], [`bits`]: arithmetic;
//! - [`string`]: string instructions with REP;
//! - [`control`], [`stack`]: branches, calls, stack operations;
//! - [`system`]: privileged instructions lowered to [`SysHelper`] calls.
//!
//! x87 (with FXSAVE/FXRSTOR) is in [`x87`]; MMX, SSE, SSE2, SSE3, SSSE3, SSE4.1,
//! SSE4.2 and PCLMULQDQ in [`sse`] (CRC32 in [`bits`]); XSAVE, XSAVEOPT, XSAVEC
//! and XRSTOR in [`system`] (helpers in [`crate::xsave`]).
//!
//! # Not translated yet
//! MONITOR/MWAIT, AVX (VEX/EVEX encodings) and the BMI extensions raise #UD (our
//! CPUID does not advertise them).

mod alu;
mod bits;
mod cc;
mod control;
mod hint;
mod muldiv;
mod operand;
mod shift;
mod sse;
mod sse_ir;
mod stack;
mod string;
pub use string::REP_BUDGET;
mod system;
mod x87;

#[cfg(test)]
pub(crate) mod tests;
#[cfg(test)]
mod tests_lockstep;
#[cfg(test)]
mod tests_lockstep_fp;
#[cfg(test)]
mod tests_model;
#[cfg(test)]
mod tests_more;
#[cfg(test)]
mod tests_sse;
#[cfg(test)]
mod tests_sse4;
#[cfg(test)]
mod tests_sse42;
#[cfg(test)]
mod tests_strings;
#[cfg(test)]
mod tests_x87;
#[cfg(test)]
mod tests_xsave;
#[cfg(test)]
mod vectors286;

use crate::cpu::X86Cpu;
use crate::helpers::system::SysHelper;
use iced_x86::{Code, Decoder, DecoderError, DecoderOptions, Instruction, Mnemonic};
use vireo_core::cpu::{ctl, flags as fl, sreg};
use vireo_core::exec::Fault;
use vireo_core::ir::{Block, Builder, ExitKind, Global, MmuIdx, Size, Temp};

pub(crate) use cc::CcTrack;

/// How data accesses through one segment are checked, decided at translation time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegClass {
    /// Call [`crate::helpers::integer::IntHelper::SegCheck`] at run time.
    Checked = 0,
    /// Limit 0xFFFF, expand-up, readable and writable: checked inline.
    Limit64K = 1,
    /// Limit 4 GiB, expand-up, readable and writable: no check (64-bit mode: every
    /// segment).
    Flat = 2,
}

/// The translation-relevant CPU mode (everything [`mode_key`] encodes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mode {
    /// Code size: 16, 32 or 64.
    pub bits: u32,
    /// Stack-pointer width (SS.B; 64 in 64-bit mode).
    pub stack: Size,
    /// CR0.PE.
    pub pe: bool,
    /// RFLAGS.VM (virtual-8086 mode).
    pub vm86: bool,
    /// EFER.LMA.
    pub long: bool,
    pub cpl: u8,
    pub seg: [SegClass; 6],
    /// SSE instructions pass their #UD/#NM checks: CR0.EM and CR0.TS clear, CR4.OSFXSR
    /// set (then the translator checks nothing at run time).
    pub sse_ok: bool,
}

impl Mode {
    /// The mode the CPU is in.
    pub fn of(cpu: &X86Cpu) -> Mode {
        let s = &cpu.state;
        let pe = s.cr0 & ctl::CR0_PE != 0;
        let vm86 = pe && s.rflags & fl::VM != 0;
        let long = s.long_mode();
        let cs = &s.seg[sreg::CS];
        let bits = if long && cs.l {
            64
        } else if pe && !vm86 && cs.db {
            32
        } else {
            16
        };
        let stack = if bits == 64 {
            Size::B64
        } else if s.seg[sreg::SS].db && pe && !vm86 {
            Size::B32
        } else if s.seg[sreg::SS].db && !pe {
            // Real mode keeps a big stack segment loaded in protected mode.
            Size::B32
        } else {
            Size::B16
        };
        let mut seg = [SegClass::Flat; 6];
        if bits != 64 {
            for (i, c) in seg.iter_mut().enumerate() {
                *c = classify(&s.seg[i], pe && !vm86);
            }
        }
        Mode {
            bits,
            stack,
            pe,
            vm86,
            long,
            cpl: s.cpl(),
            seg,
            sse_ok: s.cr0 & (ctl::CR0_EM | ctl::CR0_TS) == 0 && s.cr4 & ctl::CR4_OSFXSR != 0,
        }
    }

    /// The MMU index of data accesses.
    pub fn mmu(&self) -> MmuIdx {
        if self.cpl == 3 {
            MmuIdx::User
        } else {
            MmuIdx::Kernel
        }
    }

    /// Default address size.
    pub fn addr_size(&self) -> Size {
        match self.bits {
            64 => Size::B64,
            32 => Size::B32,
            _ => Size::B16,
        }
    }

    /// Mask of the instruction pointer.
    pub fn ip_mask(&self) -> u64 {
        match self.bits {
            64 => u64::MAX,
            32 => 0xffff_ffff,
            _ => 0xffff,
        }
    }

    /// Whether this is real mode (not V86).
    pub fn real(&self) -> bool {
        !self.pe
    }

    fn key(&self) -> u64 {
        let code = match self.bits {
            16 => 0,
            32 => 1,
            _ => 2,
        };
        let stack = match self.stack {
            Size::B16 => 0,
            Size::B32 => 1,
            _ => 2,
        };
        let mut k = code
            | stack << 2
            | u64::from(self.pe) << 4
            | u64::from(self.vm86) << 5
            | u64::from(self.long) << 6
            | u64::from(self.cpl & 3) << 7;
        for (i, c) in self.seg.iter().enumerate() {
            k |= (*c as u64) << (9 + 2 * i);
        }
        k | u64::from(self.sse_ok) << 21
    }
}

fn classify(seg: &vireo_core::cpu::Segment, protected: bool) -> SegClass {
    let rw_up = if protected {
        !seg.unusable && seg.present && seg.s && seg.type_ & 0xe == 0x2
    } else {
        // Real/V86 mode: no type checks, but an expand-down data segment left by
        // protected mode keeps its limit semantics.
        seg.type_ & 0xc != 0x4
    };
    match seg.limit {
        0xffff if rw_up => SegClass::Limit64K,
        0xffff_ffff if rw_up => SegClass::Flat,
        _ => SegClass::Checked,
    }
}

/// Every bit of CPU state a translation depends on:
///
/// | bits | meaning |
/// | --- | --- |
/// | 0-1 | code size: 0 = 16, 1 = 32, 2 = 64 (CS.L in long mode, else CS.D; real/V86 16) |
/// | 2-3 | stack size: 0 = 16, 1 = 32 (SS.B), 2 = 64 |
/// | 4 | CR0.PE |
/// | 5 | RFLAGS.VM |
/// | 6 | EFER.LMA |
/// | 7-8 | CPL (selects the MMU index and inline privilege checks) |
/// | 9-20 | per segment ES, CS, SS, DS, FS, GS, 2 bits: [`SegClass`] (0 checked at run time, 1 limit 0xFFFF, 2 flat) |
/// | 21 | SSE enabled: CR0.EM = CR0.TS = 0, CR4.OSFXSR = 1 ([`Mode::sse_ok`]) |
///
/// Segment bases are not part of the key: blocks read `Global::SegBase`.
pub fn mode_key(cpu: &X86Cpu) -> u64 {
    Mode::of(cpu).key()
}

/// Whether the instruction ends the block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flow {
    Next,
    End,
}

/// Translation context of one block.
pub(crate) struct Tr {
    pub b: Builder,
    pub m: Mode,
    pub i: Instruction,
    /// PC (CS-relative) of the current instruction and of the next one.
    pub pc: u64,
    pub next_pc: u64,
    /// Effective address size of the current instruction.
    pub asize: Size,
    pub cc: CcTrack,
    /// Added to an RSP base in effective addresses (POP [rsp+x]).
    pub sp_adjust: u64,
    /// The linear address (temp) of the last memory operand computed for writing: a
    /// read of it is the read of a read-modify-write, loaded with write intent.
    pub rmw_addr: Option<Temp>,
    /// The CPUID model: an instruction whose feature it lacks raises #UD. (Fixed for
    /// the life of an engine, and the same on all its CPUs, so not in the mode key.)
    pub model: crate::cpuid::CpuidModel,
    /// PAUSE ends the block with a `Pause` exit (`X86Cpu::pause_exits`), else a jump.
    pub pause_exits: bool,
    /// The lazy-flag operation the CPU held when the block was translated (the state
    /// its first instructions see then): CF of an unknown state is computed inline
    /// when the operation at run time is this one ([`Tr::carry`]).
    pub entry_cc_op: u64,
    /// Side exits taken so far: conditional branches the block went on past
    /// ([`Tr::jcc`]), at most [`MAX_SIDE_EXITS`].
    pub side_exits: u32,
}

/// Conditional branches a block goes on past (each one more exit to a static target;
/// the JIT keeps chain slots for a few).
pub const MAX_SIDE_EXITS: u32 = 3;

/// Whether every memory access of `i` goes through SS: a stack instruction (PUSH,
/// POP, near CALL and RET, ENTER, LEAVE, PUSHF, POPF) whose explicit memory operand,
/// if any, is SS-relative, or another instruction whose only memory operand is
/// SS-relative; not the ones that also read descriptor tables (segment loads, far
/// transfers, LGDT and kin) or string operands. A non-canonical address in such an
/// instruction is #SS(0), in any other #GP(0): the translator leaves its accesses to
/// the softmmu's check (which marks the fault) and exception delivery decides.
pub(crate) fn stack_only(i: &Instruction) -> bool {
    use iced_x86::OpKind as K;
    use Mnemonic as M;
    let mut explicit = false;
    for n in 0..i.op_count() {
        match i.op_kind(n) {
            K::Memory => explicit = true,
            K::Register if i.op_register(n).is_segment_register() => return false,
            K::MemorySegSI
            | K::MemorySegESI
            | K::MemorySegRSI
            | K::MemorySegDI
            | K::MemorySegEDI
            | K::MemorySegRDI
            | K::MemoryESDI
            | K::MemoryESEDI
            | K::MemoryESRDI => return false,
            _ => {}
        }
    }
    if explicit && i.memory_segment() != iced_x86::Register::SS {
        return false;
    }
    let system = matches!(
        i.mnemonic(),
        M::Lgdt
            | M::Lidt
            | M::Lldt
            | M::Ltr
            | M::Lar
            | M::Lsl
            | M::Verr
            | M::Verw
            | M::Lss
            | M::Lfs
            | M::Lgs
            | M::Iret
            | M::Iretd
            | M::Iretq
            | M::Retf
            | M::Int
            | M::Int1
            | M::Int3
            | M::Into
            | M::Xlatb
    ) || i.is_call_far()
        || i.is_call_far_indirect()
        || i.is_jmp_far()
        || i.is_jmp_far_indirect();
    if system {
        return false;
    }
    let stack = matches!(
        i.mnemonic(),
        M::Push
            | M::Pop
            | M::Call
            | M::Ret
            | M::Enter
            | M::Leave
            | M::Pushf
            | M::Pushfq
            | M::Popf
            | M::Popfq
    );
    explicit || stack
}

/// The instruction at CS-relative `pc` in the CPU's current mode, if its bytes can
/// be read and decode.
pub(crate) fn decode_at(cpu: &mut X86Cpu, pc: u64) -> Option<Instruction> {
    let m = Mode::of(cpu);
    let mut buf = [0u8; 15];
    let (avail, _) = fetch(cpu, &m, pc, &mut buf);
    let mut dec = Decoder::with_ip(m.bits, &buf[..avail], pc, DecoderOptions::NONE);
    let i = dec.decode();
    (!i.is_invalid()).then_some(i)
}

/// Reads the code bytes of the instruction at CS-relative `pc`: up to 15 bytes,
/// stopping at the first byte that cannot be fetched (its fault is returned too).
fn fetch(cpu: &mut X86Cpu, m: &Mode, pc: u64, buf: &mut [u8; 15]) -> (usize, Option<Fault>) {
    let base = cpu.state.seg[sreg::CS].base;
    let mmu = m.mmu();
    let n = buf.len();
    // The common case in two reads: all 15 bytes on one page the fast TLB maps
    // (byte by byte, the fetch was a third of decoding a block).
    let last = n as u64 - 1;
    if pc <= m.ip_mask() - last {
        let mut lin = base.wrapping_add(pc);
        if m.bits != 64 {
            lin &= 0xffff_ffff;
        }
        let fits = (m.bits == 64 || lin <= 0xffff_ffff - last) && lin & 0xfff <= 0xfff - last;
        if fits {
            let head = cpu.mmu.fast.read(lin, 8, mmu, false);
            let tail = head.and_then(|_| cpu.mmu.fast.read(lin + 8, n - 8, mmu, false));
            if let (Some(h), Some(t)) = (head, tail) {
                buf[..8].copy_from_slice(&h.to_le_bytes());
                buf[8..].copy_from_slice(&t.to_le_bytes()[..n - 8]);
                return (n, None);
            }
        }
    }
    for (i, byte) in buf.iter_mut().enumerate() {
        let off = pc.wrapping_add(i as u64) & m.ip_mask();
        let mut lin = base.wrapping_add(off);
        if m.bits != 64 {
            lin &= 0xffff_ffff;
        }
        match crate::mmu::read(cpu, lin, Size::B8, mmu) {
            Ok(v) => *byte = v as u8,
            Err(f) => return (i, Some(f)),
        }
    }
    (n, None)
}

/// Linear address of CS-relative `pc`.
fn code_linear(cpu: &X86Cpu, m: &Mode, pc: u64) -> u64 {
    let lin = cpu.state.seg[sreg::CS].base.wrapping_add(pc);
    if m.bits == 64 {
        lin
    } else {
        lin & 0xffff_ffff
    }
}

/// Effective address size from the legacy prefixes of `bytes` (67h toggles).
fn scan_addr_size(m: &Mode, bytes: &[u8]) -> Size {
    let mut has67 = false;
    for &b in bytes {
        match b {
            0x67 => has67 = true,
            0x26 | 0x2e | 0x36 | 0x3e | 0x64 | 0x65 | 0x66 | 0xf0 | 0xf2 | 0xf3 => {}
            0x40..=0x4f if m.bits == 64 => {}
            _ => break,
        }
    }
    match (m.bits, has67) {
        (64, false) => Size::B64,
        (64, true) => Size::B32,
        (32, false) | (16, true) => Size::B32,
        _ => Size::B16,
    }
}

/// Translates the block at the CPU's current CS:RIP.
///
/// Returns `Err(fault)` when the first instruction cannot be fetched (a page fault,
/// with `address` set for CR2): the run loop delivers it. A later instruction that
/// cannot be fetched ends the block before it, so that it faults as the first
/// instruction of the next block.
pub fn translate_block(cpu: &mut X86Cpu, max_insns: usize) -> Result<Block, Fault> {
    let m = Mode::of(cpu);
    let start = cpu.state.rip & m.ip_mask();
    let mut tr = Tr {
        b: Builder::new(start),
        m,
        i: Instruction::default(),
        pc: start,
        next_pc: start,
        asize: m.addr_size(),
        cc: CcTrack::default(),
        sp_adjust: 0,
        rmw_addr: None,
        model: cpu.cpuid.clone(),
        pause_exits: cpu.pause_exits,
        entry_cc_op: cpu.cc.op,
        side_exits: 0,
    };
    let first_page = code_linear(cpu, &m, start) >> 12;
    let mut pc = start;
    let mut n = 0usize;
    loop {
        if n > 0 && (n >= max_insns.max(1) || code_linear(cpu, &m, pc) >> 12 != first_page) {
            tr.exit_to(pc);
            break;
        }
        let mut buf = [0u8; 15];
        let (avail, fault) = fetch(cpu, &m, pc, &mut buf);
        let mut dec = Decoder::with_ip(m.bits, &buf[..avail], pc, DecoderOptions::NONE);
        let insn = dec.decode();
        let len = insn.len().clamp(1, 15);
        if insn.is_invalid() && dec.last_error() == DecoderError::NoMoreBytes {
            if let Some(f) = fault {
                if n == 0 {
                    return Err(f);
                }
                tr.exit_to(pc);
                break;
            }
        }
        n += 1;
        tr.i = insn;
        tr.pc = pc;
        tr.next_pc = pc.wrapping_add(len as u64) & m.ip_mask();
        tr.asize = scan_addr_size(&m, &buf[..avail.min(len)]);
        tr.sp_adjust = 0;
        tr.b.insn_start(pc, len as u8);
        let flow = tr.insn();
        if flow == Flow::End {
            break;
        }
        pc = tr.next_pc;
    }
    let block = tr.b.finish();
    debug_assert!(block.validate().is_ok(), "{:?}", block.validate());
    Ok(block)
}

impl Tr {
    /// Ends the block with a jump to the constant `pc`.
    pub fn exit_to(&mut self, pc: u64) {
        let t = self.b.konst(pc);
        self.b.set(Global::Pc, t);
        self.b.exit(ExitKind::Jump(pc));
    }

    /// Ends the block at the computed `pc`.
    pub fn exit_indirect(&mut self, pc: Temp) {
        self.b.set(Global::Pc, pc);
        self.b.exit(ExitKind::Indirect);
    }

    /// Raises an exception unconditionally; ends the instruction.
    pub fn raise(&mut self, vector: u8, error: Option<u32>) -> Flow {
        let e = error.map(|e| self.b.konst(u64::from(e)));
        self.b.raise(vector, e);
        Flow::End
    }

    /// #UD.
    pub fn ud(&mut self) -> Flow {
        self.raise(6, None)
    }

    /// Raises `vector` (error code 0 if `err0`) when `cond != 0`.
    pub fn raise_if(&mut self, cond: Temp, vector: u8, err0: bool) {
        let skip = self.b.label();
        let ok = self.b.konst(0);
        let is_ok = self
            .b
            .setcond(vireo_core::ir::Cond::Eq, Size::B64, cond, ok);
        self.b.br_if(is_ok, skip);
        let e = err0.then(|| self.b.konst(0));
        self.b.raise(vector, e);
        self.b.set_label(skip);
    }

    /// Calls a system helper (PC set to the next instruction first when it ends the
    /// block).
    pub fn sys(&mut self, h: SysHelper, args: &[Temp], ret: bool) -> Option<Temp> {
        let eff = crate::helpers::lookup(h.id())
            .map(|d| d.effects)
            .unwrap_or(vireo_core::ir::Effects::ALL);
        if eff.ends_block {
            let t = self.b.konst(self.next_pc);
            self.b.set(Global::Pc, t);
        }
        self.cc.forget_if(eff.writes_globals);
        self.b.call(h.id(), args, ret, eff)
    }

    /// Calls an integer helper.
    pub fn int(
        &mut self,
        h: crate::helpers::integer::IntHelper,
        args: &[Temp],
        ret: bool,
    ) -> Option<Temp> {
        let eff = h.effects();
        self.b.call(h.id(), args, ret, eff)
    }

    /// Ends the block after a helper that changed the mode (PC already set).
    pub fn sync(&mut self) -> Flow {
        self.b.exit(ExitKind::Sync);
        Flow::End
    }

    /// Translates the current instruction.
    fn insn(&mut self) -> Flow {
        let i = self.i;
        if i.is_invalid() {
            return self.ud();
        }
        if !i.cpuid_features().iter().all(|f| self.model.allows(*f)) {
            // The model does not advertise the instruction's feature.
            return self.ud();
        }
        if self.is_hint_nop() {
            return self.hint_nop();
        }
        use Mnemonic as M;
        match i.mnemonic() {
            M::Add | M::Or | M::Adc | M::Sbb | M::And | M::Sub | M::Xor | M::Cmp => self.alu2(),
            M::Test => self.test(),
            M::Inc | M::Dec => self.incdec(),
            M::Neg => self.neg(),
            M::Not => self.not(),
            M::Mov => self.mov(),
            M::Movzx | M::Movsx | M::Movsxd => self.movx(),
            M::Lea => self.lea(),
            M::Xchg => self.xchg(),
            M::Cmovo
            | M::Cmovno
            | M::Cmovb
            | M::Cmovae
            | M::Cmove
            | M::Cmovne
            | M::Cmovbe
            | M::Cmova
            | M::Cmovs
            | M::Cmovns
            | M::Cmovp
            | M::Cmovnp
            | M::Cmovl
            | M::Cmovge
            | M::Cmovle
            | M::Cmovg => self.cmov(),
            M::Seto
            | M::Setno
            | M::Setb
            | M::Setae
            | M::Sete
            | M::Setne
            | M::Setbe
            | M::Seta
            | M::Sets
            | M::Setns
            | M::Setp
            | M::Setnp
            | M::Setl
            | M::Setge
            | M::Setle
            | M::Setg => self.setcc(),
            M::Cbw | M::Cwde | M::Cdqe => self.cbw(),
            M::Cwd | M::Cdq | M::Cqo => self.cwd(),
            M::Xadd => self.xadd(),
            M::Adcx | M::Adox => self.adx(),
            M::Cmpxchg => self.cmpxchg(),
            M::Cmpxchg8b | M::Cmpxchg16b => self.cmpxchg8b(),
            M::Bswap => self.bswap(),
            M::Movbe => self.movbe(),
            M::Xlatb => self.xlat(),
            M::Lahf => self.lahf(),
            M::Sahf => self.sahf(),
            M::Clc | M::Stc | M::Cmc => self.carry_op(),
            M::Cld | M::Std => self.df_op(),
            M::Salc => self.salc(),
            M::Nop | M::Endbr32 | M::Endbr64 => Flow::Next,
            M::Prefetch | M::Prefetchw | M::Prefetchnta | M::Prefetcht0 | M::Prefetcht1 => {
                Flow::Next
            }
            M::Pause => {
                // Ends the block: a spin-wait loop lets another vCPU run (with no
                // other to let run, a jump that chains).
                let t = self.b.konst(self.next_pc);
                self.b.set(Global::Pc, t);
                self.b.exit(if self.pause_exits {
                    ExitKind::Pause(self.next_pc)
                } else {
                    ExitKind::Jump(self.next_pc)
                });
                Flow::End
            }
            M::Prefetcht2 | M::Lfence | M::Sfence | M::Mfence => Flow::Next,
            M::Rol | M::Ror | M::Rcl | M::Rcr | M::Shl | M::Sal | M::Shr | M::Sar => self.shift(),
            M::Shld | M::Shrd => self.shxd(),
            M::Mul | M::Imul => self.mul(),
            M::Div | M::Idiv => self.div(),
            M::Daa => self.bcd(0),
            M::Das => self.bcd(1),
            M::Aaa => self.bcd(2),
            M::Aas => self.bcd(3),
            M::Aam | M::Aad => self.aam(),
            M::Bt | M::Bts | M::Btr | M::Btc => self.bt(),
            M::Bsf | M::Bsr => self.bsf(),
            M::Tzcnt | M::Lzcnt => self.tzcnt(),
            M::Popcnt => self.popcnt(),
            M::Crc32 => self.crc32(),
            M::Movsb | M::Movsw | M::Movsd | M::Movsq if self.string_form() => self.string(),
            M::Cmpsb | M::Cmpsw | M::Cmpsd | M::Cmpsq if self.string_form() => self.string(),
            M::Stosb | M::Stosw | M::Stosd | M::Stosq => self.string(),
            M::Lodsb | M::Lodsw | M::Lodsd | M::Lodsq => self.string(),
            M::Scasb | M::Scasw | M::Scasd | M::Scasq => self.string(),
            M::Insb | M::Insw | M::Insd | M::Outsb | M::Outsw | M::Outsd => self.string(),
            M::Jmp => self.jmp(),
            M::Call => self.call(),
            M::Ret | M::Retf => self.ret(),
            M::Jo
            | M::Jno
            | M::Jb
            | M::Jae
            | M::Je
            | M::Jne
            | M::Jbe
            | M::Ja
            | M::Js
            | M::Jns
            | M::Jp
            | M::Jnp
            | M::Jl
            | M::Jge
            | M::Jle
            | M::Jg => self.jcc(),
            M::Loop | M::Loope | M::Loopne | M::Jcxz | M::Jecxz | M::Jrcxz => self.loop_(),
            M::Push => self.push_insn(),
            M::Pop => self.pop_insn(),
            M::Pusha | M::Pushad => self.pusha(),
            M::Popa | M::Popad => self.popa(),
            M::Pushf | M::Pushfd | M::Pushfq => self.pushf(),
            M::Popf | M::Popfd | M::Popfq => self.popf(),
            M::Enter => self.enter(),
            M::Leave => self.leave(),
            M::Bound => self.bound(),
            M::Ud0 | M::Ud1 | M::Ud2 => self.ud(),
            _ => match self.x87_insn().or_else(|| self.sse_insn()) {
                Some(flow) => flow,
                None => self.system(),
            },
        }
    }

    /// MOVSD/CMPSD are also SSE instructions: the string forms have no register
    /// operands.
    fn string_form(&self) -> bool {
        self.i.code() != Code::INVALID
            && (0..self.i.op_count()).all(|n| self.i.op_kind(n) != iced_x86::OpKind::Register)
    }
}

/// The RFLAGS bit DF.
pub(crate) const DF: u64 = fl::DF;
