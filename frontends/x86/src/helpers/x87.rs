//! x87 helpers: one helper per instruction class, operands as arguments.
//!
//! The translator loads memory operands in IR (m32/m64 as one load, m80 as a 64-bit
//! and a 16-bit load) after calling [`X87Helper::Enter`], so that #NM/#MF come before
//! any page fault; the helpers convert and compute. Stores are done by the helpers
//! through the softmmu (`write_bytes` translates every page before writing a byte),
//! on a copy of the FPU state that is committed only after the write succeeded, so a
//! faulting store leaves the x87 state unchanged.
//!
//! Operand formats (`fmt` arguments): 0 m32 real, 1 m64 real, 2 m80 real, 3 m16 int,
//! 4 m32 int, 5 m64 int, 6 m80 packed BCD, 7 ST(i) (`lo` = i), 8 a constant (`lo`:
//! 0 +0.0, 1 +1.0, 2 π, 3 log2 e, 4 log2 10, 5 log10 2, 6 ln 2).

use super::{HelperDef, X87_BASE};
use crate::cpu::X86Cpu;
use crate::fpu::ext::{self, Class, Ext, F32, F64};
use crate::fpu::softfloat::{self as sf, flag, Ctx, Round};
use crate::fpu::x87::{self as x, sw, ArithOp, Order, X87};
use crate::mmu::{self, Agent};
use vireo_core::cpu::flags::{CF, PF, ZF};
use vireo_core::cpu::{ctl, FpuState};
use vireo_core::exec::Fault;
use vireo_core::ir::{Effects, HelperId, MmuIdx};

/// The x87 helpers, in table order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum X87Helper {
    /// `(wait, ea)`: #NM (CR0.EM/TS) and, if `wait`, #MF for a pending unmasked
    /// exception. Called before the IR loads a memory operand. FDP is left alone, as
    /// on processors with FDP_EXCPTN_ONLY (it only changes with unmasked exceptions,
    /// which this model does not track per operand).
    Enter,
    /// `(fmt, lo, hi)`: FLD, FILD, FBLD, FLD1/FLDZ/FLDPI...: pushes the operand.
    Load,
    /// `(op | reverse << 2 | dest_sti << 3 | pop << 4, fmt, lo, hi)`: FADD (op 0),
    /// FMUL (1), FSUB (2), FDIV (3); `reverse` swaps the operands (FSUBR, FDIVR);
    /// the destination is ST(0) unless `dest_sti` (ST(i) forms, `fmt` 7).
    Arith,
    /// `(quiet | pops << 1 | eflags << 3, fmt, lo, hi) -> rflags`: FCOM/FUCOM(P/PP),
    /// FICOM, FTST (constant 0), FCOMI/FUCOMI(P) (`eflags`: returns the new ZF/PF/CF
    /// with OF/SF/AF clear, which the translator installs).
    Compare,
    /// `(fmt | pop << 4 | truncate << 5, addr, mmu)`: FST/FSTP/FIST/FISTP/FISTTP/FBSTP
    /// to memory.
    Store,
    /// `(op, i, arg)`: register-stack and one-operand operations ([`StackOp`]).
    Stack,
    /// `(op, value) -> value`: FLDCW (0), FNSTCW (1), FNSTSW (2), FNCLEX (3),
    /// FNINIT (4), FWAIT (5).
    Control,
    /// `(op, addr, mmu | opsize32 << 1 | wide << 2)`: FNSTENV (0), FLDENV (1),
    /// FNSAVE (2), FRSTOR (3), FXSAVE (4), FXRSTOR (5); `wide` = REX.W (FXSAVE64).
    Env,
}

impl X87Helper {
    /// The IR helper id.
    pub const fn id(self) -> HelperId {
        HelperId(X87_BASE + self as u16)
    }
    /// The helper's declared effects.
    pub fn effects(self) -> Effects {
        TABLE[self as usize].effects
    }
}

/// Operations of [`X87Helper::Stack`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum StackOp {
    /// FST/FSTP ST(i) (`arg`: bit 0 pop, bit 1 FSTPNCE, which does not check ST(0)).
    StoreReg,
    Fxch,
    Ffree,
    /// FCMOVcc ST(0), ST(i) (`arg` = the condition, evaluated by the translator).
    Fcmov,
    Fincstp,
    Fdecstp,
    Fchs,
    Fabs,
    Fsqrt,
    Frndint,
    Fscale,
    Fxtract,
    Fprem,
    Fprem1,
    Fxam,
    F2xm1,
    Fyl2x,
    Fyl2xp1,
    Fptan,
    Fpatan,
    Fsin,
    Fcos,
    Fsincos,
    /// FFREEP (FFREE then pop).
    Ffreep,
}

impl StackOp {
    const ALL: [StackOp; 24] = [
        StackOp::StoreReg,
        StackOp::Fxch,
        StackOp::Ffree,
        StackOp::Fcmov,
        StackOp::Fincstp,
        StackOp::Fdecstp,
        StackOp::Fchs,
        StackOp::Fabs,
        StackOp::Fsqrt,
        StackOp::Frndint,
        StackOp::Fscale,
        StackOp::Fxtract,
        StackOp::Fprem,
        StackOp::Fprem1,
        StackOp::Fxam,
        StackOp::F2xm1,
        StackOp::Fyl2x,
        StackOp::Fyl2xp1,
        StackOp::Fptan,
        StackOp::Fpatan,
        StackOp::Fsin,
        StackOp::Fcos,
        StackOp::Fsincos,
        StackOp::Ffreep,
    ];
}

fn arg(args: &[u64], i: usize) -> u64 {
    args.get(i).copied().unwrap_or(0)
}

/// The #NM/#MF checks every x87 instruction starts with (`wait`: not an FN* form).
pub fn enter_checks(cpu: &mut X86Cpu, wait: bool) -> Result<(), Fault> {
    let cr0 = cpu.state.cr0;
    if cr0 & (ctl::CR0_EM | ctl::CR0_TS) != 0 {
        return Err(Fault::new(7));
    }
    if wait && cpu.state.fpu.fsw & sw::ES != 0 && cr0 & ctl::CR0_NE != 0 {
        return Err(Fault::new(16));
    }
    Ok(())
}

/// Records the instruction pointer of a non-control x87 instruction.
fn note_ip(cpu: &mut X86Cpu) {
    cpu.state.fpu.fip = cpu.insn_pc;
}

fn enter(cpu: &mut X86Cpu, args: &[u64]) -> Result<u64, Fault> {
    enter_checks(cpu, arg(args, 0) != 0)?;
    Ok(0)
}

/// The 128-bit constants (value = sig × 2^(exp − 127)) FLDPI & co. round from.
const CONSTS: [(i32, u128); 5] = [
    (1, 0xc90f_daa2_2168_c234_c4c6_628b_80dc_1cd1),
    (0, 0xb8aa_3b29_5c17_f0bb_be87_fed0_691d_3e88),
    (1, 0xd49a_784b_cd1b_8afe_492b_f6ff_4daf_db4d),
    (-2, 0x9a20_9a84_fbcf_f798_8f89_59ac_0b7c_9178),
    (-1, 0xb172_17f7_d1cf_79ab_c9e3_b398_03f2_f6af),
];

/// Decodes an operand (`fmt`, `lo`, `hi`) to an extended value; `None` on stack
/// underflow (ST(i) empty, already signalled). Adds DE for denormal memory reals and
/// IE for signalling NaNs of the memory formats (they are quieted on conversion).
fn operand(f: &mut X87, ctx: &mut Ctx, fmt: u64, lo: u64, hi: u64) -> Option<Ext> {
    Some(match fmt {
        0 | 1 => {
            let ieee = if fmt == 0 { F32 } else { F64 };
            let bits = if fmt == 0 { lo & 0xffff_ffff } else { lo };
            if ieee.is_denormal(bits) {
                ctx.flags |= flag::DENORMAL;
            }
            ieee.to_ext(bits)
        }
        2 => Ext::from_parts(lo, hi),
        3 => Ext::from_i64(i64::from(lo as u16 as i16)),
        4 => Ext::from_i64(i64::from(lo as u32 as i32)),
        5 => Ext::from_i64(lo as i64),
        6 => ext::from_bcd(lo, hi),
        7 => return f.read((lo & 7) as u8),
        _ => match lo {
            0 => Ext::ZERO,
            1 => Ext::ONE,
            n => {
                let (e, s) = CONSTS[(n as usize - 2).min(4)];
                let mut c = Ctx::new(ctx.round);
                Ext::from_rounded(sf::round_pack(&mut c, false, e, s, sf::ext(64)))
            }
        },
    })
}

fn load(cpu: &mut X86Cpu, args: &[u64]) -> Result<u64, Fault> {
    enter_checks(cpu, true)?;
    note_ip(cpu);
    let (fmt, lo, hi) = (arg(args, 0), arg(args, 1), arg(args, 2));
    let mut f = X87 {
        s: &mut cpu.state.fpu,
    };
    let mut ctx = f.ctx();
    let Some(v) = operand(&mut f, &mut ctx, fmt, lo, hi) else {
        // FLD ST(i) of an empty register: masked → push the indefinite (the underflow
        // is the exception reported, even if ST(7) is full too).
        if f.s.fcw & 1 != 0 {
            f.dec_top();
            f.set_st(0, Ext::INDEFINITE);
        }
        return Ok(0);
    };
    // A stack overflow is the only exception then (no DE or IE for the operand).
    if !f.empty(7) {
        f.push(v);
        return Ok(0);
    }
    // FLD m32/m64 of an SNaN: invalid; the value is quieted.
    let v = if (fmt <= 1) && v.class() == Class::SNan {
        ctx.flags |= flag::INVALID;
        v.quiet()
    } else {
        v
    };
    // A denormal source is loaded even with DE unmasked (the conversion is exact);
    // an unmasked IE (SNaN) loads nothing.
    let de = ctx.flags & flag::DENORMAL;
    ctx.flags &= !flag::DENORMAL;
    if !f.finish(&ctx) {
        return Ok(0);
    }
    f.signal(de);
    f.push(v);
    Ok(0)
}

fn arith(cpu: &mut X86Cpu, args: &[u64]) -> Result<u64, Fault> {
    enter_checks(cpu, true)?;
    note_ip(cpu);
    let spec = arg(args, 0);
    let (fmt, lo, hi) = (arg(args, 1), arg(args, 2), arg(args, 3));
    let op = match spec & 3 {
        0 => ArithOp::Add,
        1 => ArithOp::Mul,
        2 => ArithOp::Sub,
        _ => ArithOp::Div,
    };
    let reverse = spec & 4 != 0;
    let dest_sti = spec & 8 != 0;
    let pop = spec & 16 != 0;
    let dest = if dest_sti { (lo & 7) as u8 } else { 0 };
    let mut f = X87 {
        s: &mut cpu.state.fpu,
    };
    let mut ctx = f.result_ctx();
    let (d, s) = if dest_sti {
        (f.read(dest), f.read(0))
    } else {
        let d = f.read(0);
        (d, operand(&mut f, &mut ctx, fmt, lo, hi))
    };
    let (Some(d), Some(s)) = (d, s) else {
        f.underflow_result(dest);
        if pop && f.s.fcw & 1 != 0 {
            f.pop();
        }
        return Ok(0);
    };
    let (a, b) = if reverse { (s, d) } else { (d, s) };
    let r = x::arith(&mut ctx, op, a, b, f.prec());
    if f.finish(&ctx) {
        f.set_st(dest, r);
        if pop {
            f.pop();
        }
    }
    Ok(0)
}

fn compare(cpu: &mut X86Cpu, args: &[u64]) -> Result<u64, Fault> {
    enter_checks(cpu, true)?;
    note_ip(cpu);
    let spec = arg(args, 0);
    let quiet = spec & 1 != 0;
    let pops = (spec >> 1) & 3;
    let eflags = spec & 8 != 0;
    let mut f = X87 {
        s: &mut cpu.state.fpu,
    };
    let mut ctx = f.ctx();
    let a = f.read(0);
    let b = operand(&mut f, &mut ctx, arg(args, 1), arg(args, 2), arg(args, 3));
    // The condition codes (EFLAGS for FCOMI) are set even when an unmasked exception
    // is raised (stack underflow, denormal, and on the CPU also an invalid operand,
    // for which Intel's SDM says they are not); the pops happen only when the
    // instruction completes.
    let (order, complete) = match (a, b) {
        (Some(a), Some(b)) => {
            let o = x::compare(&mut ctx, a, b, quiet);
            let c1 = f.s.fsw & sw::C1;
            let complete = f.finish(&ctx);
            // FCOMI/FUCOMI leave C1 alone unless the stack underflows (as the CPU
            // does; Intel's SDM says they clear it).
            if eflags {
                f.s.fsw = (f.s.fsw & !sw::C1) | c1;
            }
            (o, complete)
        }
        _ => (Order::Unordered, f.s.fcw & 1 != 0),
    };
    let mut out = 0;
    if eflags {
        out = match order {
            Order::Greater => 0,
            Order::Less => CF,
            Order::Equal => ZF,
            Order::Unordered => ZF | PF | CF,
        };
    } else {
        let c1 = f.s.fsw & sw::C1;
        f.s.fsw = (f.s.fsw & !sw::CC) | x::compare_cc(order) | c1;
        if a.is_some() && b.is_some() {
            f.s.fsw &= !sw::C1;
        }
    }
    if complete {
        for _ in 0..pops {
            f.pop();
        }
    }
    Ok(out)
}

/// The bytes a store of `v` in format `fmt` writes (None: unmasked invalid, no store).
fn store_bytes(f: &mut X87, v: Option<Ext>, fmt: u64, trunc: bool) -> Option<([u8; 10], usize)> {
    let mut ctx = f.ctx();
    let round = if trunc { Round::Zero } else { f.round() };
    let mut out = [0u8; 10];
    let put =
        |out: &mut [u8; 10], v: u64, n: usize| out[..n].copy_from_slice(&v.to_le_bytes()[..n]);
    let len = match fmt {
        0 | 1 => 4 << fmt,
        2 | 6 => 10,
        3 => 2,
        4 => 4,
        _ => 8,
    };
    let Some(v) = v else {
        // Stack underflow (signalled): masked → store the indefinite of the format.
        if f.s.fcw & 1 == 0 {
            return None;
        }
        match fmt {
            0 => put(&mut out, F32.indefinite(), 4),
            1 => put(&mut out, F64.indefinite(), 8),
            2 => out = Ext::INDEFINITE.to_bytes(),
            3..=5 => put(&mut out, 1u64 << (8 * len - 1), len),
            _ => {
                put(&mut out, 0xc000_0000_0000_0000, 8);
                out[8] = 0xff;
                out[9] = 0xff;
            }
        }
        return Some((out, len));
    };
    match fmt {
        // FST m32/m64 reports IS, IA, U, O and P: no DE for a denormal source.
        0 | 1 => {
            let ieee = if fmt == 0 { F32 } else { F64 };
            if v.class() == Class::SNan || v.class() == Class::Unsupported {
                ctx.flags |= flag::INVALID;
            }
            let bits = ieee.from_ext(&mut ctx, v);
            // An unmasked overflow or underflow stores nothing (no biased result fits
            // a memory format): only that exception is recorded.
            let over = ctx.flags & flag::OVERFLOW != 0 && f.s.fcw & 8 == 0;
            let under = (ctx.flags & flag::UNDERFLOW != 0 || ctx.tiny) && f.s.fcw & 16 == 0;
            if over || under {
                f.clear_c1();
                f.signal(if over {
                    flag::OVERFLOW
                } else {
                    flag::UNDERFLOW
                });
                return None;
            }
            put(&mut out, bits, len);
        }
        2 => out = v.to_bytes(),
        3..=5 => {
            let bits = (8 * len) as u32;
            let r = x::to_int(&mut ctx, v, bits, round);
            let val = r.map(|i| i as u64).unwrap_or(1u64 << (bits - 1));
            put(&mut out, val, len);
        }
        _ => {
            let r = x::to_int(&mut ctx, v, 64, round);
            match r {
                Some(i) if i.unsigned_abs() < 1_000_000_000_000_000_000 => {
                    let (lo, hi) = ext::to_bcd(v.sign, i.unsigned_abs());
                    put(&mut out, lo, 8);
                    out[8] = hi as u8;
                    out[9] = (hi >> 8) as u8;
                }
                // Out of range: invalid only (not inexact, whatever the rounding).
                _ => {
                    ctx.flags = (ctx.flags & !flag::INEXACT) | flag::INVALID;
                    put(&mut out, 0xc000_0000_0000_0000, 8);
                    out[8] = 0xff;
                    out[9] = 0xff;
                }
            }
        }
    }
    if !f.finish(&ctx) {
        return None;
    }
    Some((out, len))
}

fn agent(m: u64) -> Agent {
    Agent::from(if m & 1 != 0 {
        MmuIdx::User
    } else {
        MmuIdx::Kernel
    })
}

fn store(cpu: &mut X86Cpu, args: &[u64]) -> Result<u64, Fault> {
    enter_checks(cpu, true)?;
    note_ip(cpu);
    let spec = arg(args, 0);
    let (fmt, pop, trunc) = (spec & 15, spec & 16 != 0, spec & 32 != 0);
    let mut s: FpuState = cpu.state.fpu.clone();
    let mut f = X87 { s: &mut s };
    let v = f.read(0);
    let empty = v.is_none();
    if let Some((bytes, len)) = store_bytes(&mut f, v, fmt, trunc) {
        mmu::write_bytes(cpu, arg(args, 1), &bytes[..len], agent(arg(args, 2)))?;
        if pop {
            X87 { s: &mut s }.pop();
        }
    } else if empty && pop && s.fcw & 1 != 0 {
        X87 { s: &mut s }.pop();
    }
    cpu.state.fpu = s;
    Ok(0)
}

/// Transcendental argument limit: |x| < 2^63 (else C2 = 1, operand unchanged).
fn in_trig_range(v: Ext) -> bool {
    v.class() != Class::Normal || i32::from(v.exp) < ext::BIAS + 63
}

/// A result computed in f64 and rounded to the current precision (PE set when
/// the f64 result is not exactly representable or the function inexact).
fn from_approx(ctx: &mut Ctx, v: f64, prec: u32) -> Ext {
    ctx.flags |= flag::INEXACT;
    x::reround(ctx, x::from_f64(v), prec)
}

fn stack(cpu: &mut X86Cpu, args: &[u64]) -> Result<u64, Fault> {
    enter_checks(cpu, true)?;
    note_ip(cpu);
    let op = StackOp::ALL
        .get(arg(args, 0) as usize)
        .copied()
        .ok_or(Fault::new(6))?;
    let i = (arg(args, 1) & 7) as u8;
    let a2 = arg(args, 2);
    let mut f = X87 {
        s: &mut cpu.state.fpu,
    };
    let mut ctx = f.result_ctx();
    let prec = f.prec();
    match op {
        // FSTPNCE (`arg` bit 1) with ST(0) empty only pops: no stack fault, no write.
        StackOp::StoreReg if a2 & 2 != 0 && f.empty(0) => {
            f.clear_c1();
            f.pop();
        }
        StackOp::StoreReg => {
            match f.read(0) {
                Some(v) => {
                    f.set_st(i, v);
                    f.clear_c1();
                }
                // An unmasked stack underflow leaves the stack alone (no pop).
                None if f.s.fcw & 1 == 0 => return Ok(0),
                None => f.underflow_result(i),
            }
            if a2 & 1 != 0 {
                f.pop();
            }
        }
        StackOp::Fxch => {
            let (a, b) = (f.empty(0), f.empty(i));
            if a || b {
                if f.stack_fault(false) {
                    return Ok(0);
                }
                let va = if a { Ext::INDEFINITE } else { f.st(0) };
                let vb = if b { Ext::INDEFINITE } else { f.st(i) };
                f.set_st(0, vb);
                f.set_st(i, va);
            } else {
                let (va, vb) = (f.st(0), f.st(i));
                f.set_st(0, vb);
                f.set_st(i, va);
                f.clear_c1();
            }
        }
        // C1 is undefined after FFREE; the CPU clears it.
        StackOp::Ffree | StackOp::Ffreep => {
            f.clear_c1();
            f.set_valid(i, false);
            if op == StackOp::Ffreep {
                f.pop();
            }
        }
        // C1 only changes on a stack underflow (cleared by the stack fault).
        StackOp::Fcmov => match (f.read(0), f.read(i)) {
            (Some(_), Some(v)) => {
                if a2 != 0 {
                    f.set_st(0, v);
                }
            }
            _ => f.underflow_result(0),
        },
        StackOp::Fincstp => {
            f.inc_top();
            f.clear_c1();
        }
        StackOp::Fdecstp => {
            f.dec_top();
            f.clear_c1();
        }
        _ => unary(&mut f, &mut ctx, op, prec),
    }
    Ok(0)
}

/// The operations on ST(0) (and ST(1)).
fn unary(f: &mut X87, ctx: &mut Ctx, op: StackOp, prec: u32) {
    if op == StackOp::Fxam {
        let v = f.st(0);
        let cc = x::examine(v, f.empty(0));
        f.s.fsw = (f.s.fsw & !sw::CC) | cc;
        return;
    }
    let two = matches!(
        op,
        StackOp::Fscale
            | StackOp::Fprem
            | StackOp::Fprem1
            | StackOp::Fyl2x
            | StackOp::Fyl2xp1
            | StackOp::Fpatan
    );
    let pushes = matches!(op, StackOp::Fxtract | StackOp::Fptan | StackOp::Fsincos);
    // FPREM/FPREM1 clear C1 and C2 first, whatever happens next.
    if matches!(op, StackOp::Fprem | StackOp::Fprem1) {
        f.s.fsw &= !(sw::C1 | sw::C2);
    }
    let a = f.read(0);
    let b = if two { f.read(1) } else { Some(Ext::ZERO) };
    let (Some(a), Some(b)) = (a, b) else {
        f.underflow_result(0);
        // The underflow is the exception reported, even if ST(7) is full too.
        if pushes && f.s.fcw & 1 != 0 {
            f.dec_top();
            f.set_st(0, Ext::INDEFINITE);
        }
        if matches!(op, StackOp::Fyl2x | StackOp::Fyl2xp1 | StackOp::Fpatan) && f.s.fcw & 1 != 0 {
            f.set_st(1, Ext::INDEFINITE);
            f.pop();
        }
        return;
    };
    if pushes && !f.empty(7) {
        if !f.stack_fault(true) {
            f.set_st(0, Ext::INDEFINITE);
            f.push(Ext::INDEFINITE);
        }
        return;
    }
    let nan = a.is_nan() || b.is_nan() || a.class() == Class::Unsupported;
    match op {
        StackOp::Fchs | StackOp::Fabs => {
            let sign = if op == StackOp::Fchs { !a.sign } else { false };
            f.clear_c1();
            f.set_st(0, Ext { sign, ..a });
        }
        StackOp::Fsqrt => {
            let r = x::sqrt(ctx, a, prec);
            if f.finish(ctx) {
                f.set_st(0, r);
            }
        }
        StackOp::Frndint => {
            let r = x::round_int(ctx, a);
            if f.finish(ctx) {
                f.set_st(0, r);
            }
        }
        StackOp::Fscale => {
            // Precision control applies to the basic arithmetic and FSQRT only.
            let r = x::scale(ctx, a, b, 64);
            if f.finish(ctx) {
                f.set_st(0, r);
            }
        }
        StackOp::Fxtract => {
            let (e, s) = x::extract(ctx, a);
            if f.finish(ctx) {
                f.set_st(0, e);
                f.push(s);
            }
        }
        StackOp::Fprem | StackOp::Fprem1 => fprem(f, ctx, a, b, op == StackOp::Fprem1),
        _ if nan => {
            let r = x::propagate_nan(ctx, a, if two { b } else { a });
            if f.finish(ctx) {
                if two {
                    f.set_st(1, r);
                    f.pop();
                } else {
                    f.set_st(0, r);
                    if pushes {
                        f.push(r);
                    }
                }
            }
        }
        _ => transcendental(f, ctx, op, a, b, 64),
    }
}

fn fprem(f: &mut X87, ctx: &mut Ctx, a: Ext, b: Ext, nearest: bool) {
    let (ca, cb) = (a.class(), b.class());
    let unsupported = ca == Class::Unsupported || cb == Class::Unsupported;
    let invalid = a.is_nan() || b.is_nan() || ca == Class::Inf || cb == Class::Zero || unsupported;
    if invalid {
        // An unsupported operand takes precedence over a NaN.
        let r = if !unsupported && (a.is_nan() || b.is_nan()) {
            x::propagate_nan(ctx, a, b)
        } else {
            ctx.flags |= flag::INVALID;
            Ext::INDEFINITE
        };
        if f.finish(ctx) {
            f.set_st(0, r);
            f.s.fsw &= !sw::C2;
        }
        return;
    }
    if ca == Class::Denormal || cb == Class::Denormal {
        ctx.flags |= flag::DENORMAL;
    }
    if ca == Class::Zero || cb == Class::Inf {
        // ST(0) is the remainder, written back as a result: a pseudo-denormal
        // normalised, a denormal with underflow unmasked biased (UE).
        let mut c = f.result_ctx();
        let r = if ca == Class::Denormal {
            let u = a.unpack();
            Ext::from_rounded(sf::round_pack(&mut c, u.sign, u.exp, u.sig, sf::ext(64)))
        } else {
            a
        };
        ctx.flags |= c.flags & flag::UNDERFLOW;
        if f.finish(ctx) {
            f.s.fsw &= !(sw::CC);
            f.set_st(0, r);
        }
        return;
    }
    let (r, q, done) = sf::rem(a.unpack(), b.unpack(), nearest);
    // The remainder is exact; a tiny one is a denormal, or with underflow unmasked is
    // delivered biased (UE).
    let mut c = f.result_ctx();
    let v = Ext::from_rounded(sf::round_pack(&mut c, r.sign, r.exp, r.sig, sf::ext(64)));
    ctx.flags |= c.flags & flag::UNDERFLOW;
    let v = if r.sig == 0 { Ext::zero(a.sign) } else { v };
    if !f.finish(ctx) {
        return;
    }
    f.set_st(0, v);
    let mut cc = 0;
    if done {
        if q & 4 != 0 {
            cc |= sw::C0;
        }
        if q & 2 != 0 {
            cc |= sw::C3;
        }
        if q & 1 != 0 {
            cc |= sw::C1;
        }
    } else {
        cc |= sw::C2;
    }
    f.s.fsw = (f.s.fsw & !sw::CC) | cc;
}

/// FSIN & co., computed through f64 (about 53 correct bits instead of 64; the
/// documented precision loss of this engine).
fn transcendental(f: &mut X87, ctx: &mut Ctx, op: StackOp, a: Ext, b: Ext, prec: u32) {
    let (ca, cb) = (a.class(), b.class());
    if ca == Class::Denormal || cb == Class::Denormal {
        ctx.flags |= flag::DENORMAL;
    }
    let invalid = |ctx: &mut Ctx| {
        ctx.flags |= flag::INVALID;
        Ext::INDEFINITE
    };
    let (x, y) = (x::to_f64(a), x::to_f64(b));
    match op {
        StackOp::Fsin | StackOp::Fcos | StackOp::Fptan | StackOp::Fsincos => {
            if ca == Class::Inf {
                let r = invalid(ctx);
                if f.finish(ctx) {
                    f.set_st(0, r);
                    if op != StackOp::Fsin && op != StackOp::Fcos {
                        f.push(r);
                    }
                }
                return;
            }
            if !in_trig_range(a) {
                f.s.fsw |= sw::C2;
                return;
            }
            f.s.fsw &= !sw::C2;
            let zero = ca == Class::Zero;
            let (s, c) = x.sin_cos();
            let res = |v: f64, exact: Option<Ext>, ctx: &mut Ctx| match exact {
                Some(e) => e,
                None => from_approx(ctx, v, prec),
            };
            match op {
                StackOp::Fsin => {
                    let r = res(s, zero.then_some(a), ctx);
                    if f.finish(ctx) {
                        f.set_st(0, r);
                    }
                }
                StackOp::Fcos => {
                    let r = res(c, zero.then_some(Ext::ONE), ctx);
                    if f.finish(ctx) {
                        f.set_st(0, r);
                    }
                }
                StackOp::Fptan => {
                    let r = res(x.tan(), zero.then_some(a), ctx);
                    if f.finish(ctx) {
                        f.set_st(0, r);
                        f.push(Ext::ONE);
                    }
                }
                _ => {
                    let rs = res(s, zero.then_some(a), ctx);
                    let rc = res(c, zero.then_some(Ext::ONE), ctx);
                    if f.finish(ctx) {
                        f.set_st(0, rs);
                        f.push(rc);
                    }
                }
            }
        }
        StackOp::F2xm1 => {
            let r = match ca {
                Class::Zero => a,
                Class::Inf if a.sign => Ext {
                    sign: true,
                    ..Ext::ONE
                },
                Class::Inf => a,
                _ => from_approx(ctx, (x * std::f64::consts::LN_2).exp_m1(), prec),
            };
            if f.finish(ctx) {
                f.set_st(0, r);
            }
        }
        StackOp::Fyl2x | StackOp::Fyl2xp1 => {
            let arg = if op == StackOp::Fyl2xp1 {
                x.ln_1p()
            } else {
                x.ln()
            };
            let bad = if op == StackOp::Fyl2x {
                a.sign && ca != Class::Zero
            } else {
                x < -1.0
            };
            let r = if bad || (ca == Class::Zero && cb == Class::Zero && op == StackOp::Fyl2x) {
                invalid(ctx)
            } else if ca == Class::Zero && op == StackOp::Fyl2x {
                ctx.flags |= flag::ZERO_DIV;
                Ext::inf(!b.sign)
            } else {
                let v = y * arg / std::f64::consts::LN_2;
                if v == 0.0 && (cb == Class::Zero || arg == 0.0) {
                    Ext::zero(v.is_sign_negative())
                } else {
                    from_approx(ctx, v, prec)
                }
            };
            if f.finish(ctx) {
                f.set_st(1, r);
                f.pop();
            }
        }
        StackOp::Fpatan => {
            let v = y.atan2(x);
            let r = if v == 0.0 {
                Ext::zero(v.is_sign_negative())
            } else {
                from_approx(ctx, v, prec)
            };
            if f.finish(ctx) {
                f.set_st(1, r);
                f.pop();
            }
        }
        _ => {}
    }
}

fn control(cpu: &mut X86Cpu, args: &[u64]) -> Result<u64, Fault> {
    let op = arg(args, 0);
    match op {
        5 => {
            // FWAIT: #NM only with CR0.MP and TS.
            let cr0 = cpu.state.cr0;
            if cr0 & ctl::CR0_MP != 0 && cr0 & ctl::CR0_TS != 0 {
                return Err(Fault::new(7));
            }
            if cpu.state.fpu.fsw & sw::ES != 0 && cr0 & ctl::CR0_NE != 0 {
                return Err(Fault::new(16));
            }
            return Ok(0);
        }
        0 => enter_checks(cpu, true)?,
        _ => enter_checks(cpu, false)?,
    }
    let f = &mut cpu.state.fpu;
    Ok(match op {
        0 => {
            f.fcw = (arg(args, 1) as u16 & 0x1f3f) | 0x40;
            X87 { s: f }.update_es();
            0
        }
        1 => u64::from(f.fcw),
        2 => u64::from(f.fsw),
        3 => {
            f.fsw &= !(0xff | sw::B);
            0
        }
        _ => {
            X87 { s: f }.init();
            0
        }
    })
}

/// Handlers in table order.
pub static TABLE: [HelperDef; 8] = [
    HelperDef {
        name: "x87_enter",
        f: enter,
        effects: FPU,
    },
    HelperDef {
        name: "x87_load",
        f: load,
        effects: FPU,
    },
    HelperDef {
        name: "x87_arith",
        f: arith,
        effects: FPU,
    },
    HelperDef {
        name: "x87_compare",
        f: compare,
        effects: Effects {
            reads_globals: true,
            ..FPU
        },
    },
    HelperDef {
        name: "x87_store",
        f: store,
        effects: FPU,
    },
    HelperDef {
        name: "x87_stack",
        f: stack,
        effects: FPU,
    },
    HelperDef {
        name: "x87_control",
        f: control,
        effects: FPU,
    },
    HelperDef {
        name: "x87_env",
        f: super::x87_env::env,
        effects: FPU,
    },
];

/// x87 helpers touch FPU state only (not IR globals) and may fault (#NM, #MF, #PF).
const FPU: Effects = Effects {
    reads_globals: false,
    writes_globals: false,
    may_fault: true,
    ends_block: false,
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_matches_enum() {
        assert_eq!(TABLE.len(), X87Helper::Env as usize + 1);
        assert_eq!(TABLE[X87Helper::Enter as usize].name, "x87_enter");
        assert_eq!(TABLE[X87Helper::Load as usize].name, "x87_load");
        assert_eq!(TABLE[X87Helper::Arith as usize].name, "x87_arith");
        assert_eq!(TABLE[X87Helper::Compare as usize].name, "x87_compare");
        assert_eq!(TABLE[X87Helper::Store as usize].name, "x87_store");
        assert_eq!(TABLE[X87Helper::Stack as usize].name, "x87_stack");
        assert_eq!(TABLE[X87Helper::Control as usize].name, "x87_control");
        assert_eq!(TABLE[X87Helper::Env as usize].name, "x87_env");
        for (i, op) in StackOp::ALL.iter().enumerate() {
            assert_eq!(*op as usize, i);
        }
    }
}
