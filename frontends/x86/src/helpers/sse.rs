//! MMX, SSE, SSE2, SSE3, SSSE3, SSE4.1, SSE4.2 and PCLMULQDQ helpers.
//!
//! The translator calls [`SseHelper::Enter`] first (the #UD/#NM/#MF checks, and for
//! MMX the switch of the x87 stack to MMX mode), then loads a memory source in IR, then
//! calls [`SseHelper::Op`] with a spec word naming the instruction (its iced-x86
//! [`Mnemonic`]) and its register operands:
//!
//! | bits | field |
//! | --- | --- |
//! | 0-11 | mnemonic |
//! | 12-15 | destination register |
//! | 16 | destination is an MMX register |
//! | 17-20 | source register |
//! | 21 | the source is that register (else the `lo`/`hi` arguments) |
//! | 22 | source is an MMX register |
//! | 23 | memory/GPR operand (MOVSS/MOVSD loads zero the upper lanes) |
//! | 24-31 | imm8 |
//! | 32 | 64-bit integer operand (REX.W) |
//! | 33 | high qword wanted (stores) |
//! | 34 | store: return a qword of the source register instead of writing |
//!
//! `Op` returns a value for instructions with a GPR, memory or flags result
//! (PMOVMSKB, PEXTRB/W/D/Q, EXTRACTPS, MOVD r32, CVTSS2SI, the EFLAGS of COMISS and
//! PTEST...) and for stores. The explicit-length string comparisons take a fourth
//! argument, the lengths (absolute values of rAX and rDX, saturated to 16) as
//! `len1 | len2 << 8`; PCMPxSTRI returns `index | eflags << 32`, PCMPxSTRM writes XMM0
//! and returns the EFLAGS. BLENDVPS/BLENDVPD/PBLENDVB read XMM0 as their mask.
//!
//! Floating-point results are computed lane by lane on copies; an unmasked exception
//! sets the MXCSR flags and raises #XM (CR4.OSXMMEXCPT) or #UD with the register
//! unchanged. When one lane raises an unmasked invalid-operation, denormal or
//! divide-by-zero exception, only those (pre-computation) flags are recorded; flags
//! of completed steps of a multi-step instruction (DPPS/DPPD) are kept.

use super::{HelperDef, SSE_BASE};
use crate::cpu::X86Cpu;
use crate::fpu::pcmpstr;
use crate::fpu::simd::{self, lane, set_lane};
use crate::fpu::simd4::{self, Extra};
use crate::fpu::softfloat::flag;
use crate::fpu::sse4_fp;
use crate::fpu::sse_fp::{self as fp, Arith, Env};
use crate::mmu::Agent;
use iced_x86::Mnemonic;
use vireo_core::cpu::ctl;
use vireo_core::exec::Fault;
use vireo_core::ir::{Effects, HelperId, MmuIdx, Size};

/// The SSE helpers, in table order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum SseHelper {
    /// `(mmx | sse << 1 | switch << 2)`: the SSE checks (CR0.EM, CR4.OSFXSR: #UD;
    /// CR0.TS: #NM) if `sse`; if `mmx`, the MMX ones (#UD, #NM, #MF); if `switch`
    /// (MASKMOVQ), the switch to MMX mode.
    Enter,
    /// `(spec, lo, hi[, lens]) -> value`: one instruction (see the module docs). An
    /// MMX register operand first switches the x87 to MMX mode (TOP = 0, all tags
    /// valid): the translator loads a memory source before, and checks a store's
    /// destination for writing before, so that a memory fault leaves the x87 state
    /// alone (as on the CPU; MASKMOVQ switches before its store faults).
    Op,
    /// `(spec, lo, hi) -> value`: [`SseHelper::Op`] for the XMM forms
    /// [`fast_handles`] lists (no MMX operand, not a store): it cannot fault, and
    /// compiled code calls it directly (`DirectGlobals::env_fn`).
    Fast,
}

impl SseHelper {
    /// The IR helper id.
    pub const fn id(self) -> HelperId {
        HelperId(SSE_BASE + self as u16)
    }
    /// The helper's declared effects.
    pub fn effects(self) -> Effects {
        TABLE[self as usize].effects
    }
}

/// Spec word fields.
pub mod spec {
    pub const DST_SHIFT: u32 = 12;
    pub const DST_MMX: u64 = 1 << 16;
    pub const SRC_SHIFT: u32 = 17;
    pub const SRC_REG: u64 = 1 << 21;
    pub const SRC_MMX: u64 = 1 << 22;
    pub const SRC_MEM: u64 = 1 << 23;
    pub const IMM_SHIFT: u32 = 24;
    pub const W64: u64 = 1 << 32;
    pub const HIGH: u64 = 1 << 33;
    pub const STORE: u64 = 1 << 34;
}

fn arg(args: &[u64], i: usize) -> u64 {
    args.get(i).copied().unwrap_or(0)
}

/// #UD/#NM/#MF checks of an MMX (`mmx`) or SSE instruction.
pub fn enter_checks(cpu: &mut X86Cpu, mmx: bool) -> Result<(), Fault> {
    let s = &cpu.state;
    if s.cr0 & ctl::CR0_EM != 0 || (!mmx && s.cr4 & ctl::CR4_OSFXSR == 0) {
        return Err(Fault::new(6));
    }
    if s.cr0 & ctl::CR0_TS != 0 {
        return Err(Fault::new(7));
    }
    if mmx {
        crate::helpers::x87::enter_checks(cpu, true)?;
    }
    Ok(())
}

/// Puts the x87 in MMX mode: TOP = 0 (slots rotated so slot n is physical register
/// n = MMn) and every tag valid.
fn mmx_mode(cpu: &mut X86Cpu) {
    let f = &mut cpu.state.fpu;
    let top = (f.fsw >> 11 & 7) as usize;
    f.st.rotate_right(top);
    f.fsw &= !(7 << 11);
    f.ftw = 0xff;
}

fn enter(cpu: &mut X86Cpu, args: &[u64]) -> Result<u64, Fault> {
    let a = arg(args, 0);
    if a & 2 != 0 {
        enter_checks(cpu, false)?;
    }
    if a & 1 != 0 {
        enter_checks(cpu, true)?;
    }
    // MASKMOVQ switches to MMX mode before any check of its destination.
    if a & 4 != 0 {
        mmx_mode(cpu);
    }
    Ok(0)
}

fn read_reg(cpu: &X86Cpu, r: usize, mmx: bool) -> u128 {
    let f = &cpu.state.fpu;
    if mmx {
        let b = &f.st[r & 7];
        let mut q = [0u8; 8];
        q.copy_from_slice(&b[..8]);
        u128::from(u64::from_le_bytes(q))
    } else {
        u128::from_le_bytes(f.xmm[r & 15])
    }
}

fn write_reg(cpu: &mut X86Cpu, r: usize, mmx: bool, v: u128) {
    let f = &mut cpu.state.fpu;
    if mmx {
        let b = &mut f.st[r & 7];
        b[..8].copy_from_slice(&(v as u64).to_le_bytes());
        b[8] = 0xff;
        b[9] = 0xff;
    } else {
        f.xmm[r & 15] = v.to_le_bytes();
    }
}

/// What an instruction produces.
enum Out {
    Reg(u128),
    Val(u64),
    None,
}

/// Applies `f` to each `bits`-wide float lane of `n` lanes, starting from `base`.
fn fp_lanes(
    env: &mut Env,
    base: u128,
    d: u128,
    s: u128,
    bits: u32,
    n: u32,
    f: impl Fn(&mut Env, u64, u64) -> u64,
) -> u128 {
    let mut r = base;
    for i in 0..n {
        r = set_lane(r, bits, i, f(env, lane(d, bits, i), lane(s, bits, i)));
    }
    r
}

/// Floating-point instructions; `None` if `mn` is not one.
fn fp_op(env: &mut Env, mn: Mnemonic, d: u128, s: u128, imm: u8, w64: bool) -> Option<Out> {
    use Mnemonic as M;
    let arith = match mn {
        M::Addps | M::Addpd | M::Addss | M::Addsd => Some(Arith::Add),
        M::Subps | M::Subpd | M::Subss | M::Subsd => Some(Arith::Sub),
        M::Mulps | M::Mulpd | M::Mulss | M::Mulsd => Some(Arith::Mul),
        M::Divps | M::Divpd | M::Divss | M::Divsd => Some(Arith::Div),
        M::Minps | M::Minpd | M::Minss | M::Minsd => Some(Arith::Min),
        M::Maxps | M::Maxpd | M::Maxss | M::Maxsd => Some(Arith::Max),
        _ => None,
    };
    let (bits, n) = match mn {
        M::Addps | M::Subps | M::Mulps | M::Divps | M::Minps | M::Maxps => (32, 4),
        M::Sqrtps | M::Cmpps => (32, 4),
        M::Addpd | M::Subpd | M::Mulpd | M::Divpd | M::Minpd | M::Maxpd => (64, 2),
        M::Sqrtpd | M::Cmppd => (64, 2),
        M::Addss | M::Subss | M::Mulss | M::Divss | M::Minss | M::Maxss => (32, 1),
        M::Sqrtss | M::Cmpss => (32, 1),
        _ => (64, 1),
    };
    let t = fp::ieee(bits);
    if let Some(op) = arith {
        return Some(Out::Reg(fp_lanes(env, d, d, s, bits, n, |e, a, b| {
            fp::arith(e, t, op, a, b)
        })));
    }
    Some(Out::Reg(match mn {
        M::Sqrtps | M::Sqrtpd | M::Sqrtss | M::Sqrtsd => {
            fp_lanes(env, d, d, s, bits, n, |e, _, b| fp::sqrt(e, t, b))
        }
        M::Cmpps | M::Cmppd | M::Cmpss | M::Cmpsd => {
            fp_lanes(env, d, d, s, bits, n, |e, a, b| fp::cmp(e, t, imm, a, b))
        }
        M::Rcpps | M::Rsqrtps | M::Rcpss | M::Rsqrtss => {
            let rs = matches!(mn, M::Rsqrtps | M::Rsqrtss);
            let n = if matches!(mn, M::Rcpps | M::Rsqrtps) {
                4
            } else {
                1
            };
            fp_lanes(env, d, d, s, 32, n, |_, _, b| {
                u64::from(fp::approx(b as u32, rs))
            })
        }
        M::Comiss | M::Ucomiss | M::Comisd | M::Ucomisd => {
            let t = fp::ieee(if matches!(mn, M::Comiss | M::Ucomiss) {
                32
            } else {
                64
            });
            let signal = matches!(mn, M::Comiss | M::Comisd);
            let m = if t.ebits == 8 { 0xffff_ffff } else { u64::MAX };
            return Some(Out::Val(fp::comi(
                env,
                t,
                signal,
                d as u64 & m,
                s as u64 & m,
            )));
        }
        M::Cvtsi2ss | M::Cvtsi2sd => {
            let v = if w64 {
                s as i64
            } else {
                i64::from(s as u32 as i32)
            };
            let bits = if mn == M::Cvtsi2ss { 32 } else { 64 };
            set_lane(d, bits, 0, fp::from_int(env, fp::ieee(bits), v))
        }
        M::Cvtss2si | M::Cvttss2si | M::Cvtsd2si | M::Cvttsd2si => {
            let single = matches!(mn, M::Cvtss2si | M::Cvttss2si);
            let t = fp::ieee(if single { 32 } else { 64 });
            let a = lane(s, if single { 32 } else { 64 }, 0);
            let trunc = matches!(mn, M::Cvttss2si | M::Cvttsd2si);
            return Some(Out::Val(fp::to_int(
                env,
                t,
                a,
                if w64 { 64 } else { 32 },
                trunc,
            )));
        }
        M::Cvtss2sd => set_lane(
            d,
            64,
            0,
            fp::convert(env, fp::ieee(32), fp::ieee(64), lane(s, 32, 0)),
        ),
        M::Cvtsd2ss => set_lane(
            d,
            32,
            0,
            fp::convert(env, fp::ieee(64), fp::ieee(32), lane(s, 64, 0)),
        ),
        M::Cvtps2pd => {
            let mut r = 0;
            for i in 0..2 {
                let v = fp::convert(env, fp::ieee(32), fp::ieee(64), lane(s, 32, i));
                r = set_lane(r, 64, i, v);
            }
            r
        }
        M::Cvtpd2ps => {
            let mut r = 0;
            for i in 0..2 {
                let v = fp::convert(env, fp::ieee(64), fp::ieee(32), lane(s, 64, i));
                r = set_lane(r, 32, i, v);
            }
            r
        }
        M::Cvtdq2ps => fp_lanes(env, 0, 0, s, 32, 4, |e, _, b| {
            fp::from_int(e, fp::ieee(32), i64::from(b as u32 as i32))
        }),
        M::Cvtdq2pd | M::Cvtpi2pd => {
            let mut r = 0;
            for i in 0..2 {
                let v = fp::from_int(env, fp::ieee(64), i64::from(lane(s, 32, i) as u32 as i32));
                r = set_lane(r, 64, i, v);
            }
            r
        }
        M::Cvtpi2ps => {
            let mut r = d;
            for i in 0..2 {
                let v = fp::from_int(env, fp::ieee(32), i64::from(lane(s, 32, i) as u32 as i32));
                r = set_lane(r, 32, i, v);
            }
            r
        }
        M::Cvtps2dq | M::Cvttps2dq | M::Cvtps2pi | M::Cvttps2pi => {
            let trunc = matches!(mn, M::Cvttps2dq | M::Cvttps2pi);
            let n = if matches!(mn, M::Cvtps2dq | M::Cvttps2dq) {
                4
            } else {
                2
            };
            fp_lanes(env, 0, 0, s, 32, n, |e, _, b| {
                fp::to_int(e, fp::ieee(32), b, 32, trunc)
            })
        }
        M::Cvtpd2dq | M::Cvttpd2dq | M::Cvtpd2pi | M::Cvttpd2pi => {
            let trunc = matches!(mn, M::Cvttpd2dq | M::Cvttpd2pi);
            let mut r = 0;
            for i in 0..2 {
                let v = fp::to_int(env, fp::ieee(64), lane(s, 64, i), 32, trunc);
                r = set_lane(r, 32, i, v);
            }
            r
        }
        _ => return None,
    }))
}

/// Non-floating-point instructions; `None` if `mn` is not one.
fn int_op(mn: Mnemonic, d: u128, s: u128, sp: u64, bytes: u32, xmm0: u128) -> Option<Out> {
    use Mnemonic as M;
    let imm = (sp >> spec::IMM_SHIFT) as u8;
    let mem = sp & spec::SRC_MEM != 0;
    if let Some(r) = simd::int_op(mn, d, s, bytes) {
        return Some(Out::Reg(r));
    }
    if let Some(r) = simd4::int_op(mn, d, s, bytes, &Extra { imm, mem, xmm0 }) {
        return Some(Out::Reg(r));
    }
    if let Some(v) = simd4::extract(mn, s, imm) {
        return Some(Out::Val(v));
    }
    let lo64 = |v: u128| v & u128::from(u64::MAX);
    Some(match mn {
        M::Movaps | M::Movups | M::Movapd | M::Movupd | M::Movdqa | M::Movdqu | M::Lddqu => {
            Out::Reg(s)
        }
        M::Movd if bytes == 16 || sp & spec::DST_MMX != 0 => Out::Reg(s & 0xffff_ffff),
        M::Movq | M::Movq2dq | M::Movdq2q => Out::Reg(lo64(s)),
        M::Movss if mem => Out::Reg(s & 0xffff_ffff),
        M::Movsd if mem => Out::Reg(lo64(s)),
        M::Movss => Out::Reg(set_lane(d, 32, 0, lane(s, 32, 0))),
        M::Movsd => Out::Reg(set_lane(d, 64, 0, lane(s, 64, 0))),
        M::Movlps | M::Movlpd => Out::Reg(set_lane(d, 64, 0, lane(s, 64, 0))),
        M::Movhps | M::Movhpd | M::Movlhps => Out::Reg(set_lane(d, 64, 1, lane(s, 64, 0))),
        M::Movhlps => Out::Reg(set_lane(d, 64, 0, lane(s, 64, 1))),
        M::Pshufd | M::Pshuflw | M::Pshufhw | M::Pshufw => Out::Reg(simd::pshuf(mn, s, imm)),
        M::Shufps => {
            let sel = |i: u32| u32::from(imm >> (2 * i) & 3);
            let mut r = 0;
            for i in 0..4 {
                let src = if i < 2 { d } else { s };
                r = set_lane(r, 32, i, lane(src, 32, sel(i)));
            }
            Out::Reg(r)
        }
        M::Shufpd => {
            let r = set_lane(0, 64, 0, lane(d, 64, u32::from(imm & 1)));
            Out::Reg(set_lane(r, 64, 1, lane(s, 64, u32::from(imm >> 1 & 1))))
        }
        M::Pmovmskb => Out::Val(simd::movmsk(s, bytes, 8)),
        M::Movmskps => Out::Val(simd::movmsk(s, 16, 32)),
        M::Movmskpd => Out::Val(simd::movmsk(s, 16, 64)),
        M::Pextrw => {
            let n = bytes / 2;
            Out::Val(lane(s, 16, u32::from(imm) % n))
        }
        M::Pinsrw => {
            let n = bytes / 2;
            Out::Reg(set_lane(d, 16, u32::from(imm) % n, s as u64))
        }
        // MOVD/MOVQ to a GPR or memory: the low dword/qword.
        M::Movd => Out::Val(s as u64 & 0xffff_ffff),
        M::Ptest => Out::Val(simd4::ptest(d, s)),
        M::Emms => Out::None,
        _ => return None,
    })
}

fn op(cpu: &mut X86Cpu, args: &[u64]) -> Result<u64, Fault> {
    let sp = arg(args, 0);
    let Ok(mn) = Mnemonic::try_from((sp & 0xfff) as usize) else {
        return Err(Fault::new(6));
    };
    let dst = (sp >> spec::DST_SHIFT & 15) as usize;
    let dmmx = sp & spec::DST_MMX != 0;
    let src = (sp >> spec::SRC_SHIFT & 15) as usize;
    let smmx = sp & spec::SRC_MMX != 0;
    // The switch to MMX mode comes after the memory operand was read (a fault there
    // leaves the x87 state alone), before the operation (which may raise #XM).
    if dmmx || smmx || mn == Mnemonic::Emms {
        mmx_mode(cpu);
    }
    let s = if sp & spec::SRC_REG != 0 {
        read_reg(cpu, src, smmx)
    } else {
        u128::from(arg(args, 1)) | u128::from(arg(args, 2)) << 64
    };
    if sp & spec::STORE != 0 {
        let high = sp & spec::HIGH != 0 || matches!(mn, Mnemonic::Movhps | Mnemonic::Movhpd);
        return Ok(if high { (s >> 64) as u64 } else { s as u64 });
    }
    match mn {
        Mnemonic::Emms => {
            cpu.state.fpu.ftw = 0;
            return Ok(0);
        }
        Mnemonic::Ldmxcsr => {
            if s as u64 & !u64::from(super::x87_env::MXCSR_MASK) != 0 {
                return Err(Fault::with_error(13, 0));
            }
            cpu.state.fpu.mxcsr = s as u32;
            return Ok(0);
        }
        Mnemonic::Stmxcsr => return Ok(u64::from(cpu.state.fpu.mxcsr)),
        Mnemonic::Maskmovq | Mnemonic::Maskmovdqu => return maskmov(cpu, sp, args),
        Mnemonic::Pcmpestri
        | Mnemonic::Pcmpestri64
        | Mnemonic::Pcmpestrm
        | Mnemonic::Pcmpestrm64
        | Mnemonic::Pcmpistri
        | Mnemonic::Pcmpistrm => {
            let a = read_reg(cpu, dst, false);
            let imm = (sp >> spec::IMM_SHIFT) as u8;
            let explicit = !matches!(mn, Mnemonic::Pcmpistri | Mnemonic::Pcmpistrm);
            let l = arg(args, 3);
            let lens = explicit.then_some((l as u32 & 0xff, (l >> 8) as u32 & 0xff));
            let r = pcmpstr::compare(a, s, imm, lens);
            if matches!(
                mn,
                Mnemonic::Pcmpestri | Mnemonic::Pcmpestri64 | Mnemonic::Pcmpistri
            ) {
                return Ok(u64::from(r.index(imm)) | r.flags << 32);
            }
            write_reg(cpu, 0, false, r.mask(imm));
            return Ok(r.flags);
        }
        _ => {}
    }
    let d = read_reg(cpu, dst, dmmx);
    let xmm0 = read_reg(cpu, 0, false);
    let bytes = if dmmx || (smmx && sp & spec::SRC_REG != 0) {
        8
    } else {
        16
    };
    let mxcsr = cpu.state.fpu.mxcsr;
    let mut env = Env::new(mxcsr);
    let imm = (sp >> spec::IMM_SHIFT) as u8;
    let out = if let Some(o) = int_op(mn, d, s, sp, bytes, xmm0) {
        o
    } else if let Some(r) = sse4_fp::fp_op(&mut env, mn, d, s, imm) {
        Out::Reg(r)
    } else {
        match fp_op(&mut env, mn, d, s, imm, sp & spec::W64 != 0) {
            Some(o) => o,
            None => return Err(Fault::new(6)),
        }
    };
    let flags = u32::from(env.ctx.flags) & 0x3f;
    let committed = u32::from(env.committed) & 0x3f;
    if flags | committed != 0 {
        let unmasked = flags & !(mxcsr >> 7) & 0x3f;
        let pre = u32::from(flag::INVALID | flag::DENORMAL | flag::ZERO_DIV);
        let recorded = if unmasked & pre != 0 {
            flags & pre
        } else {
            flags
        };
        cpu.state.fpu.mxcsr |= committed | recorded;
        if unmasked != 0 {
            return Err(if cpu.state.cr4 & ctl::CR4_OSXMMEXCPT != 0 {
                Fault::new(19)
            } else {
                Fault::new(6)
            });
        }
    }
    match out {
        Out::Reg(v) => {
            write_reg(cpu, dst, dmmx, v);
            Ok(0)
        }
        Out::Val(v) => Ok(v),
        Out::None => Ok(0),
    }
}

/// What one of the XMM forms C libraries' string functions run most (`strlen`,
/// `memchr`, `strchr`...) does, for [`SseHelper::Fast`].
#[derive(Clone, Copy)]
enum FastOp {
    /// Byte-wise: equal (all ones or zero), minimum, maximum, sum, difference.
    Eq,
    Min,
    Max,
    Add,
    Sub,
    /// Bit-wise: and, and-not (of the destination), or, xor.
    And,
    AndNot,
    Or,
    Xor,
    /// The source into the destination register.
    Move,
    /// PMOVMSKB: the top bit of every source byte, as a value.
    MoveMask,
    /// Word- and dword-wise equal.
    EqW,
    EqD,
    /// Interleaved low (`false`) or high halves of the destination and the source,
    /// by elements of 1, 2 or 4 bytes.
    Unpack(u8, bool),
    /// PSHUFD: dwords of the source picked by the immediate.
    ShufD,
}

fn fast_op(mn: Mnemonic) -> Option<FastOp> {
    use Mnemonic as M;
    Some(match mn {
        M::Pcmpeqb => FastOp::Eq,
        M::Pminub => FastOp::Min,
        M::Pmaxub => FastOp::Max,
        M::Paddb => FastOp::Add,
        M::Psubb => FastOp::Sub,
        M::Pand | M::Andps | M::Andpd => FastOp::And,
        M::Pandn | M::Andnps | M::Andnpd => FastOp::AndNot,
        M::Por | M::Orps | M::Orpd => FastOp::Or,
        M::Pxor | M::Xorps | M::Xorpd => FastOp::Xor,
        M::Movdqa | M::Movdqu | M::Movaps | M::Movups | M::Movapd | M::Movupd => FastOp::Move,
        M::Pmovmskb => FastOp::MoveMask,
        M::Pcmpeqw => FastOp::EqW,
        M::Pcmpeqd => FastOp::EqD,
        M::Punpcklbw => FastOp::Unpack(1, false),
        M::Punpcklwd => FastOp::Unpack(2, false),
        M::Punpckldq => FastOp::Unpack(4, false),
        M::Punpckhbw => FastOp::Unpack(1, true),
        M::Punpckhwd => FastOp::Unpack(2, true),
        M::Punpckhdq => FastOp::Unpack(4, true),
        M::Pshufd => FastOp::ShufD,
        _ => return None,
    })
}

/// The mnemonics [`SseHelper::Fast`] serves (XMM operands only, not a store).
pub fn fast_handles(mn: Mnemonic) -> bool {
    fast_op(mn).is_some()
}

/// Those forms, byte-wise on arrays the host compiler vectorizes (each operation
/// its own loop): the same results as the general path (`int_op`), without its
/// dispatch. `None` for other mnemonics.
fn xmm_fast(cpu: &mut X86Cpu, mn: Mnemonic, dst: usize, s: u128, imm: u8) -> Option<u64> {
    #[inline(always)]
    fn bytewise(reg: &mut [u8; 16], b: [u8; 16], f: impl Fn(u8, u8) -> u8) -> u64 {
        for (d, s) in reg.iter_mut().zip(b) {
            *d = f(*d, s);
        }
        0
    }
    let b = s.to_le_bytes();
    let reg = &mut cpu.state.fpu.xmm[dst & 15];
    Some(match fast_op(mn)? {
        FastOp::Eq => bytewise(reg, b, |x, y| if x == y { 0xff } else { 0 }),
        FastOp::Min => bytewise(reg, b, u8::min),
        FastOp::Max => bytewise(reg, b, u8::max),
        FastOp::Add => bytewise(reg, b, u8::wrapping_add),
        FastOp::Sub => bytewise(reg, b, u8::wrapping_sub),
        FastOp::And => bytewise(reg, b, |x, y| x & y),
        FastOp::AndNot => bytewise(reg, b, |x, y| !x & y),
        FastOp::Or => bytewise(reg, b, |x, y| x | y),
        FastOp::Xor => bytewise(reg, b, |x, y| x ^ y),
        FastOp::Move => {
            *reg = b;
            0
        }
        FastOp::MoveMask => b
            .iter()
            .enumerate()
            .fold(0u64, |m, (i, &x)| m | u64::from(x >> 7) << i),
        FastOp::EqW => {
            let mut r = [0u8; 16];
            for (i, c) in r.chunks_exact_mut(2).enumerate() {
                let eq = reg[2 * i..2 * i + 2] == b[2 * i..2 * i + 2];
                c.fill(if eq { 0xff } else { 0 });
            }
            *reg = r;
            0
        }
        FastOp::EqD => {
            let mut r = [0u8; 16];
            for (i, c) in r.chunks_exact_mut(4).enumerate() {
                let eq = reg[4 * i..4 * i + 4] == b[4 * i..4 * i + 4];
                c.fill(if eq { 0xff } else { 0 });
            }
            *reg = r;
            0
        }
        FastOp::Unpack(n, high) => {
            // Lanes of a size known at compile time: fixed-size copies (a run-time
            // length made each a `memcpy` call).
            #[inline(always)]
            fn unpack<const N: usize>(reg: &mut [u8; 16], b: &[u8; 16], high: bool) {
                let from = if high { 8 } else { 0 };
                let d = *reg;
                for i in 0..8 / N {
                    let at = from + i * N;
                    let mut x = [0u8; N];
                    x.copy_from_slice(&d[at..at + N]);
                    reg[2 * N * i..2 * N * i + N].copy_from_slice(&x);
                    x.copy_from_slice(&b[at..at + N]);
                    reg[2 * N * i + N..2 * N * (i + 1)].copy_from_slice(&x);
                }
            }
            match n {
                1 => unpack::<1>(reg, &b, high),
                2 => unpack::<2>(reg, &b, high),
                _ => unpack::<4>(reg, &b, high),
            }
            0
        }
        FastOp::ShufD => {
            for (i, c) in reg.chunks_exact_mut(4).enumerate() {
                let k = usize::from(imm >> (2 * i) & 3) * 4;
                c.copy_from_slice(&b[k..k + 4]);
            }
            0
        }
    })
}

/// MASKMOVQ/MASKMOVDQU `(spec, addr, user)`: stores the bytes of the destination
/// register whose mask byte (source register) has its top bit set. Every byte of the
/// 8/16-byte destination is checked for writing before the first byte is written,
/// selected or not, also with an all-zero mask (implementation-specific per the SDM;
/// what the CPU does).
fn maskmov(cpu: &mut X86Cpu, sp: u64, args: &[u64]) -> Result<u64, Fault> {
    let mmx = sp & spec::DST_MMX != 0;
    let data = read_reg(cpu, (sp >> spec::DST_SHIFT & 15) as usize, mmx);
    let mask = read_reg(cpu, (sp >> spec::SRC_SHIFT & 15) as usize, mmx);
    let (addr, user) = (arg(args, 1), arg(args, 2) != 0);
    let mmu = if user { MmuIdx::User } else { MmuIdx::Kernel };
    let n = if mmx { 8 } else { 16 };
    let long = cpu.state.long_mode();
    let wrap = move |a: u64| if long { a } else { a & 0xffff_ffff };
    let sel: Vec<u64> = (0..n)
        .filter(|&i| lane(mask, 8, i) & 0x80 != 0)
        .map(u64::from)
        .collect();
    for i in 0..u64::from(n) {
        crate::mmu::probe_write(cpu, wrap(addr.wrapping_add(i)), 1, Agent::from(mmu))?;
    }
    for &i in &sel {
        let a = wrap(addr.wrapping_add(i));
        crate::mmu::write(cpu, a, lane(data, 8, i as u32), Size::B8, mmu)?;
    }
    Ok(0)
}

const EFF: Effects = Effects {
    reads_globals: false,
    writes_globals: false,
    may_fault: true,
    ends_block: false,
};

/// The SSE helper table (ids from [`SSE_BASE`]).
pub static TABLE: [HelperDef; 3] = [
    HelperDef {
        name: "sse_enter",
        f: enter,
        effects: EFF,
    },
    HelperDef {
        name: "sse_op",
        f: op,
        effects: EFF,
    },
    // Declared as `op` (it writes XMM state: not a pure call to drop).
    HelperDef {
        name: "sse_fast",
        f: fast,
        effects: EFF,
    },
];

fn fast(cpu: &mut X86Cpu, a: &[u64]) -> Result<u64, Fault> {
    Ok(fast_direct(cpu, arg(a, 0), arg(a, 1), arg(a, 2)))
}

/// [`SseHelper::Fast`]: `(spec, lo, hi)`, never a fault (a mnemonic outside
/// [`fast_handles`], which the translator never sends, does nothing).
pub fn fast_direct(cpu: &mut X86Cpu, sp: u64, lo: u64, hi: u64) -> u64 {
    let Ok(mn) = Mnemonic::try_from((sp & 0xfff) as usize) else {
        return 0;
    };
    let dst = (sp >> spec::DST_SHIFT & 15) as usize;
    let src = (sp >> spec::SRC_SHIFT & 15) as usize;
    let s = if sp & spec::SRC_REG != 0 {
        read_reg(cpu, src, false)
    } else {
        u128::from(lo) | u128::from(hi) << 64
    };
    xmm_fast(cpu, mn, dst, s, (sp >> spec::IMM_SHIFT) as u8).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_xmm_forms_match_the_general_path() {
        use Mnemonic as M;
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut cpu = crate::testutil::machine();
        for mn in [
            M::Pcmpeqb,
            M::Pminub,
            M::Pmaxub,
            M::Paddb,
            M::Psubb,
            M::Pand,
            M::Andps,
            M::Pandn,
            M::Andnpd,
            M::Por,
            M::Orps,
            M::Pxor,
            M::Xorpd,
            M::Pmovmskb,
            M::Movdqu,
            M::Pcmpeqw,
            M::Pcmpeqd,
            M::Punpcklbw,
            M::Punpcklwd,
            M::Punpckldq,
            M::Punpckhbw,
            M::Punpckhwd,
            M::Punpckhdq,
            M::Pshufd,
        ] {
            for k in 0..300 {
                let d = u128::from(next()) | u128::from(next()) << 64;
                // Some equal bytes, for the comparisons.
                let s = if k % 3 == 0 {
                    d ^ u128::from(next() & 0x00ff_00ff_0000_ff00)
                } else {
                    u128::from(next()) | u128::from(next()) << 64
                };
                cpu.state.fpu.xmm[5] = d.to_le_bytes();
                let imm = next() as u8;
                let v = xmm_fast(&mut cpu, mn, 5, s, imm).expect("fast form");
                let got = u128::from_le_bytes(cpu.state.fpu.xmm[5]);
                let sp = u64::from(imm) << spec::IMM_SHIFT;
                let want = match mn {
                    M::Movdqu => Out::Reg(s),
                    _ => int_op(mn, d, s, sp, 16, 0).expect("general form"),
                };
                match want {
                    Out::Reg(w) => assert_eq!(got, w, "{mn:?} {d:#x} {s:#x}"),
                    Out::Val(w) => {
                        assert_eq!(v, w, "{mn:?} {s:#x}");
                        assert_eq!(got, d, "{mn:?} leaves the register");
                    }
                    Out::None => panic!("{mn:?}: no result"),
                }
            }
        }
        assert_eq!(xmm_fast(&mut cpu, M::Pshufb, 5, 0, 0), None);
    }
}
