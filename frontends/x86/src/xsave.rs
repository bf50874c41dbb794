//! The XSAVE feature set (SDM vol. 1 ch. 13): XSAVE, XSAVEOPT and XSAVEC, XRSTOR in
//! its standard and compacted forms (all with their REX.W forms, which store FIP/FDP
//! as 64-bit values like FXSAVE64), XINUSE for XGETBV with ECX = 1, and the XSAVE
//! area layout that CPUID leaf 0Dh reports.
//!
//! State components: x87 (0) and SSE (1) in the legacy region, and AVX (2: the upper
//! YMM halves [`FpuState::ymmh`]) at offset 576. TCG executes no AVX instruction and
//! the default model does not let XCR0 enable AVX (`xcr0_supported` = 3), but a state
//! taken from KVM may (hybrid execution), and its XSAVE/XRSTOR must then carry the
//! YMM halves. Components above 2 (AVX-512, PKRU...) are not modelled: with such bits
//! in XCR0 they are left out of the requested-feature bitmap (RFBM).
//!
//! Init tracking: XINUSE is computed from the state (a component is "in use" unless
//! it holds its initial configuration; SSE also counts a MXCSR other than 1F80h as in
//! use, as XGETBV(1) and XSAVEC require), so there is nothing to carry between
//! engines. XSAVEOPT uses neither the init nor the modified optimisation: it writes
//! what XSAVE writes, and XSTATE_BV follows the XSAVE/XSAVEOPT rule (RFBM bits set
//! to XINUSE, the other bits kept). XSAVEC uses the init optimisation.
//!
//! Memory: an instruction touches exactly the bytes of the components it operates
//! on and of the header fields it reads or writes (never bytes 416-511). Saves check
//! every page for writing before the first byte is written; restores read and check
//! everything before committing, so a fault leaves memory or the state unchanged.
//! The IR checks the segment limit for 576 bytes (legacy region and header), the
//! whole area of the x87/SSE model.

use crate::cpu::X86Cpu;
use crate::cpuid::xsave_d1;
use crate::fpu::x87::X87;
use crate::helpers::x87_env::{
    fxsave_image, load_x87_image, load_xmm_image, xmm_count, MXCSR_MASK,
};
use crate::mmu::{self, cr4, Access, Agent};
use crate::seg::{gp0, ud};
use vireo_core::cpu::{ctl, reg, FpuState};
use vireo_core::exec::Fault;

/// State-component bits (XCR0, XSTATE_BV, XCOMP_BV, RFBM).
pub mod comp {
    pub const X87: u64 = 1 << 0;
    pub const SSE: u64 = 1 << 1;
    pub const AVX: u64 = 1 << 2;
}

/// The components this implementation saves and restores.
pub const MODELLED: u64 = comp::X87 | comp::SSE | comp::AVX;

/// Offset of the XSAVE header; the extended region follows it at [`EXT_START`].
pub const HEADER: u64 = 512;
/// Start of the extended region: the size of an area with only x87 and SSE state.
pub const EXT_START: u64 = 576;
/// XCOMP_BV bit 63: the compacted format.
pub const COMPACTED: u64 = 1 << 63;

/// Extended components: (bit number, size, offset in the standard format). Each is
/// placed right after the previous one in the compacted format (no 64-byte alignment,
/// CPUID.(0Dh,i):ECX[1] = 0).
const EXTENDED: [(u32, u64, u64); 1] = [(2, 256, 576)];

/// CPUID.(0Dh,i) for an extended component `i`: (size, standard offset).
pub fn component(i: u32) -> Option<(u64, u64)> {
    EXTENDED
        .iter()
        .find(|e| e.0 == i)
        .map(|&(_, size, off)| (size, off))
}

/// Size of a standard-format area holding the components of `mask` (CPUID.(0Dh,0)
/// EBX/ECX): the legacy region and header, and every enabled extended component.
pub fn standard_size(mask: u64) -> u64 {
    EXTENDED
        .iter()
        .filter(|e| mask & (1 << e.0) != 0)
        .map(|&(_, size, off)| off + size)
        .fold(EXT_START, u64::max)
}

/// Size of a compacted-format area for XCOMP_BV = `mask` (CPUID.(0Dh,1):EBX).
pub fn compacted_size(mask: u64) -> u64 {
    EXTENDED
        .iter()
        .filter(|e| mask & (1 << e.0) != 0)
        .map(|e| e.1)
        .sum::<u64>()
        + EXT_START
}

/// Offset of extended component `i` in a compacted area with XCOMP_BV = `mask`.
fn compacted_offset(mask: u64, i: u32) -> u64 {
    EXTENDED
        .iter()
        .filter(|e| e.0 < i && mask & (1 << e.0) != 0)
        .map(|e| e.1)
        .sum::<u64>()
        + EXT_START
}

/// Whether the x87 state is in its initial configuration (SDM 13.6: FCW 037Fh, FSW
/// 0, all tags empty, FIP/FDP 0, ST0-7 zero; FOP 0 too, so that nothing is lost when
/// an init component is not saved).
fn x87_init(s: &FpuState) -> bool {
    s.fcw == 0x37f
        && s.fsw == 0
        && s.ftw == 0
        && s.fop == 0
        && s.fip == 0
        && s.fdp == 0
        && s.st.iter().all(|r| r.iter().all(|&b| b == 0))
}

/// XINUSE: the components not in their initial configuration. XMM8-15 and the
/// matching YMM halves count only in 64-bit mode; a MXCSR other than 1F80h makes SSE
/// state in use.
pub fn xinuse(cpu: &X86Cpu) -> u64 {
    let s = &cpu.state.fpu;
    let n = xmm_count(cpu);
    let zero = |r: &[[u8; 16]]| r.iter().all(|x| x.iter().all(|&b| b == 0));
    let mut v = 0;
    if !x87_init(s) {
        v |= comp::X87;
    }
    if !zero(&s.xmm[..n]) || s.mxcsr != 0x1f80 {
        v |= comp::SSE;
    }
    if !zero(&s.ymmh[..n]) {
        v |= comp::AVX;
    }
    v
}

/// The instruction of [`xsave`]: the `op` argument of [`crate::helpers::system::SysHelper::Xsave`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum XsaveOp {
    Xsave = 0,
    Xsaveopt = 1,
    Xsavec = 2,
    Xrstor = 3,
}

impl XsaveOp {
    /// Decodes a helper argument (`None`: the helper raises #UD).
    pub fn from_arg(v: u64) -> Option<XsaveOp> {
        Some(match v {
            0 => XsaveOp::Xsave,
            1 => XsaveOp::Xsaveopt,
            2 => XsaveOp::Xsavec,
            3 => XsaveOp::Xrstor,
            _ => return None,
        })
    }
}

/// The checks that come before the memory operand's own (#UD, then #NM): the
/// instruction must be advertised (CPUID.1:ECX.XSAVE, and CPUID.(0Dh,1):EAX for
/// XSAVEOPT and XSAVEC), CR4.OSXSAVE set, CR0.TS clear. CR0.EM does not matter.
pub fn enter(cpu: &X86Cpu, op: u64) -> Result<(), Fault> {
    let op = XsaveOp::from_arg(op).ok_or_else(ud)?;
    let m = &cpu.cpuid;
    let advertised = m.has_xsave()
        && match op {
            XsaveOp::Xsaveopt => m.xsave_d1 & xsave_d1::XSAVEOPT != 0,
            XsaveOp::Xsavec => m.xsave_d1 & xsave_d1::XSAVEC != 0,
            _ => true,
        };
    if !advertised || cpu.state.cr4 & cr4::OSXSAVE == 0 {
        return Err(ud());
    }
    if cpu.state.cr0 & ctl::CR0_TS != 0 {
        return Err(Fault::new(7));
    }
    Ok(())
}

/// The linear address `off` bytes into the area (wrapping at 4 GiB outside 64-bit
/// mode, like the segment arithmetic).
fn at(cpu: &X86Cpu, base: u64, off: u64) -> u64 {
    let la = base.wrapping_add(off);
    if cpu.long64() {
        la
    } else {
        la & 0xffff_ffff
    }
}

/// RFBM: EDX:EAX AND XCR0, restricted to the modelled components.
fn rfbm(cpu: &X86Cpu) -> u64 {
    let mask = (cpu.state.gpr[reg::RAX] & 0xffff_ffff) | (cpu.state.gpr[reg::RDX] << 32);
    mask & cpu.state.xcr0 & MODELLED
}

/// XSAVE/XSAVEOPT/XSAVEC/XRSTOR on the area at linear `addr` (already checked
/// against the segment), `user` for CPL-3 accesses, `wide` for the REX.W forms.
/// [`enter`] has run.
pub fn xsave(cpu: &mut X86Cpu, op: u64, addr: u64, user: bool, wide: bool) -> Result<(), Fault> {
    let op = XsaveOp::from_arg(op).ok_or_else(ud)?;
    if addr & 63 != 0 {
        return Err(gp0());
    }
    let ag = if user { Agent::User } else { Agent::Kernel };
    match op {
        XsaveOp::Xsave | XsaveOp::Xsaveopt => save(cpu, addr, ag, wide, false),
        XsaveOp::Xsavec => save(cpu, addr, ag, wide, true),
        XsaveOp::Xrstor => restore(cpu, addr, ag, wide),
    }
}

/// One piece of a save: `bytes` written at area offset `off`.
struct Piece<'a> {
    off: u64,
    bytes: &'a [u8],
}

fn save(cpu: &mut X86Cpu, addr: u64, ag: Agent, wide: bool, compact: bool) -> Result<(), Fault> {
    let rfbm = rfbm(cpu);
    let inuse = xinuse(cpu);
    let n = xmm_count(cpu);
    let img = fxsave_image(cpu, wide);
    let mut ymmh = [0u8; 256];
    for (i, r) in cpu.state.fpu.ymmh.iter().enumerate().take(n) {
        ymmh[16 * i..16 * i + 16].copy_from_slice(r);
    }
    // The header: XSAVE/XSAVEOPT read XSTATE_BV and change only the RFBM bits;
    // XSAVEC writes XSTATE_BV and XCOMP_BV whole.
    let (stored, hdr_len) = if compact {
        (rfbm & inuse, 16)
    } else {
        let mut b = [0u8; 8];
        mmu::read_bytes(cpu, at(cpu, addr, HEADER), &mut b, Access::Write, ag)?;
        let old = u64::from_le_bytes(b);
        ((old & !rfbm) | (inuse & rfbm), 8)
    };
    let mut hdr = [0u8; 16];
    hdr[..8].copy_from_slice(&stored.to_le_bytes());
    hdr[8..].copy_from_slice(&(rfbm | COMPACTED).to_le_bytes());
    // What is saved: every RFBM component (XSAVE), or only those in use (XSAVEC,
    // whose MXCSR goes with the SSE component; XSAVE's also with AVX).
    let saved = if compact { stored } else { rfbm };
    let mxcsr = if compact {
        saved & comp::SSE != 0
    } else {
        saved & (comp::SSE | comp::AVX) != 0
    };
    let mut pieces: Vec<Piece> = Vec::with_capacity(6);
    if saved & comp::X87 != 0 {
        pieces.push(Piece {
            off: 0,
            bytes: &img[..24],
        });
        pieces.push(Piece {
            off: 32,
            bytes: &img[32..160],
        });
    }
    if mxcsr {
        pieces.push(Piece {
            off: 24,
            bytes: &img[24..32],
        });
    }
    if saved & comp::SSE != 0 {
        pieces.push(Piece {
            off: 160,
            bytes: &img[160..160 + 16 * n],
        });
    }
    if saved & comp::AVX != 0 {
        let off = if compact {
            compacted_offset(rfbm, 2)
        } else {
            EXT_START
        };
        pieces.push(Piece {
            off,
            bytes: &ymmh[..16 * n],
        });
    }
    pieces.push(Piece {
        off: HEADER,
        bytes: &hdr[..hdr_len],
    });
    // Every page first: the gaps between pieces are shorter than a page, so the span
    // from the first to the last byte covers exactly the pages the pieces touch.
    let lo = pieces.iter().map(|p| p.off).min().unwrap_or(HEADER);
    let hi = pieces
        .iter()
        .map(|p| p.off + p.bytes.len() as u64)
        .max()
        .unwrap_or(HEADER);
    mmu::probe_write(cpu, at(cpu, addr, lo), (hi - lo) as usize, ag)?;
    for p in &pieces {
        mmu::write_bytes(cpu, at(cpu, addr, p.off), p.bytes, ag)?;
    }
    Ok(())
}

fn le64(b: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[..8]);
    u64::from_le_bytes(w)
}

/// XRSTOR: header checks of the standard or compacted form, then every RFBM
/// component loaded (XSTATE_BV set) or initialised (clear).
fn restore(cpu: &mut X86Cpu, addr: u64, ag: Agent, wide: bool) -> Result<(), Fault> {
    let rfbm = rfbm(cpu);
    let xcr0 = cpu.state.xcr0;
    let mut hdr = [0u8; 64];
    mmu::read_bytes(cpu, at(cpu, addr, HEADER), &mut hdr, Access::Read, ag)?;
    let xstate_bv = le64(&hdr[0..]);
    let xcomp_bv = le64(&hdr[8..]);
    let compact = xcomp_bv & COMPACTED != 0;
    let bad = if compact {
        cpu.cpuid.xsave_d1 & xsave_d1::XSAVEC == 0
            || xcomp_bv & !COMPACTED & !xcr0 != 0
            || xstate_bv & !xcomp_bv != 0
            || hdr[16..].iter().any(|&b| b != 0)
    } else {
        xstate_bv & !xcr0 != 0 || hdr[8..24].iter().any(|&b| b != 0)
    };
    if bad {
        return Err(gp0());
    }
    let load = rfbm & xstate_bv;
    // MXCSR: the standard form loads it whenever RFBM has SSE or AVX; the compacted
    // form with the SSE component (and sets 1F80h when SSE is initialised).
    let mxcsr_from_mem = if compact {
        load & comp::SSE != 0
    } else {
        rfbm & (comp::SSE | comp::AVX) != 0
    };
    let mut legacy = [0u8; 416];
    if load & (comp::X87 | comp::SSE) != 0 || mxcsr_from_mem {
        mmu::read_bytes(cpu, addr, &mut legacy, Access::Read, ag)?;
    }
    let n = xmm_count(cpu);
    let mut ymmh = [0u8; 256];
    if load & comp::AVX != 0 {
        let off = if compact {
            compacted_offset(xcomp_bv, 2)
        } else {
            EXT_START
        };
        let len = 16 * n;
        mmu::read_bytes(cpu, at(cpu, addr, off), &mut ymmh[..len], Access::Read, ag)?;
    }
    let mut mxcsr = cpu.state.fpu.mxcsr;
    if mxcsr_from_mem {
        mxcsr = le64(&legacy[24..32]) as u32;
        if mxcsr & !MXCSR_MASK != 0 {
            return Err(gp0());
        }
    } else if compact && rfbm & comp::SSE != 0 {
        mxcsr = 0x1f80;
    }
    // Commit.
    let s = &mut cpu.state.fpu;
    if rfbm & comp::X87 != 0 {
        if load & comp::X87 != 0 {
            load_x87_image(s, &legacy, wide);
        } else {
            X87 { s: &mut *s }.init();
            s.st = [[0; 16]; 8];
        }
    }
    if rfbm & comp::SSE != 0 {
        if load & comp::SSE != 0 {
            load_xmm_image(s, &legacy, n);
        } else {
            s.xmm[..n].iter_mut().for_each(|r| *r = [0; 16]);
        }
    }
    if rfbm & comp::AVX != 0 {
        for (i, r) in s.ymmh.iter_mut().enumerate().take(n) {
            r.copy_from_slice(&ymmh[16 * i..16 * i + 16]);
        }
    }
    s.mxcsr = mxcsr;
    if rfbm & comp::X87 != 0 {
        X87 { s }.update_es();
    }
    Ok(())
}
