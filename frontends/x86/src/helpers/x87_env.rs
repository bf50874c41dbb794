//! FNSTENV/FLDENV/FNSAVE/FRSTOR (14/28-byte environment in the protected-mode or
//! real-mode layout, plus 80 bytes of registers) and FXSAVE/FXRSTOR (the 512-byte
//! legacy area; `wide` = FXSAVE64 with 64-bit FIP/FDP).
//!
//! Saves are built in a buffer and written with one `write_bytes` (every page checked
//! before the first byte is written); restores read and validate everything before
//! committing, so a fault leaves the state unchanged. FCS and FDS are stored as zero:
//! the model does not track the CS of the last x87 instruction (hardware stores it;
//! a known lockstep difference). FXSAVE stores XMM0-7 outside 64-bit mode and
//! XMM0-15 in it, whatever CR4.OSFXSR says.

use crate::cpu::X86Cpu;
use crate::fpu::ext::Ext;
use crate::fpu::x87::X87;
use crate::mmu::{self, Access, Agent};
use vireo_core::cpu::{ctl, FpuState};
use vireo_core::exec::Fault;
use vireo_core::ir::MmuIdx;

/// MXCSR bits that FXRSTOR/LDMXCSR accept (DAZ included).
pub const MXCSR_MASK: u32 = 0xffff;

fn arg(args: &[u64], i: usize) -> u64 {
    args.get(i).copied().unwrap_or(0)
}

fn put(buf: &mut [u8], off: usize, v: u64, n: usize) {
    buf[off..off + n].copy_from_slice(&v.to_le_bytes()[..n]);
}

fn get(buf: &[u8], off: usize, n: usize) -> u64 {
    let mut b = [0u8; 8];
    b[..n].copy_from_slice(&buf[off..off + n]);
    u64::from_le_bytes(b)
}

/// The environment image: 28 bytes (`op32`) or 14.
fn store_env(cpu: &X86Cpu, op32: bool, buf: &mut [u8]) {
    let s = &cpu.state.fpu;
    let tag = X87 { s: &mut s.clone() }.full_tag();
    let real = !cpu.protected();
    let (fip, fdp) = (s.fip, s.fdp);
    let fcs = 0u64;
    if op32 {
        put(buf, 0, u64::from(s.fcw) | 0xffff_0000, 4);
        put(buf, 4, u64::from(s.fsw) | 0xffff_0000, 4);
        put(buf, 8, u64::from(tag) | 0xffff_0000, 4);
        if real {
            put(buf, 12, (fip & 0xffff) | 0xffff_0000, 4);
            put(
                buf,
                16,
                (fip >> 16 & 0xffff) << 12 | u64::from(s.fop & 0x7ff),
                4,
            );
            put(buf, 20, (fdp & 0xffff) | 0xffff_0000, 4);
            put(buf, 24, (fdp >> 16 & 0xffff) << 12, 4);
        } else {
            put(buf, 12, fip & 0xffff_ffff, 4);
            put(buf, 16, fcs | u64::from(s.fop & 0x7ff) << 16, 4);
            put(buf, 20, fdp & 0xffff_ffff, 4);
            put(buf, 24, 0xffff_0000, 4);
        }
    } else {
        put(buf, 0, u64::from(s.fcw), 2);
        put(buf, 2, u64::from(s.fsw), 2);
        put(buf, 4, u64::from(tag), 2);
        if real {
            put(buf, 6, fip & 0xffff, 2);
            put(
                buf,
                8,
                (fip >> 16 & 0xf) << 12 | u64::from(s.fop & 0x7ff),
                2,
            );
            put(buf, 10, fdp & 0xffff, 2);
            put(buf, 12, (fdp >> 16 & 0xf) << 12, 2);
        } else {
            put(buf, 6, fip & 0xffff, 2);
            put(buf, 8, fcs, 2);
            put(buf, 10, fdp & 0xffff, 2);
            put(buf, 12, 0, 2);
        }
    }
}

/// Loads an environment image into `s` (FCW, FSW, tags, pointers).
fn load_env(real: bool, op32: bool, buf: &[u8], s: &mut vireo_core::cpu::FpuState) {
    let (fcw, fsw, tag);
    if op32 {
        fcw = get(buf, 0, 2);
        fsw = get(buf, 4, 2);
        tag = get(buf, 8, 2);
        if real {
            s.fip = get(buf, 12, 2) | (get(buf, 16, 4) >> 12 & 0xffff) << 16;
            s.fop = (get(buf, 16, 2) & 0x7ff) as u16;
            s.fdp = get(buf, 20, 2) | (get(buf, 24, 4) >> 12 & 0xffff) << 16;
        } else {
            s.fip = get(buf, 12, 4);
            s.fop = (get(buf, 18, 2) & 0x7ff) as u16;
            s.fdp = get(buf, 20, 4);
        }
    } else {
        fcw = get(buf, 0, 2);
        fsw = get(buf, 2, 2);
        tag = get(buf, 4, 2);
        s.fip = get(buf, 6, 2);
        s.fdp = get(buf, 10, 2);
        if real {
            s.fip |= (get(buf, 8, 2) >> 12) << 16;
            s.fop = (get(buf, 8, 2) & 0x7ff) as u16;
            s.fdp |= (get(buf, 12, 2) >> 12) << 16;
        }
    }
    s.fcw = (fcw as u16 & 0x1f3f) | 0x40;
    let mut x = X87 { s };
    // The physical registers stay where they are under the new TOP.
    x.load_top((fsw >> 11 & 7) as u8);
    x.s.fsw = fsw as u16;
    x.set_full_tag(tag as u16);
    x.update_es();
}

fn agent(m: u64) -> Agent {
    Agent::from(if m & 1 != 0 {
        MmuIdx::User
    } else {
        MmuIdx::Kernel
    })
}

/// `(op, addr, mmu | opsize32 << 1 | wide << 2)`: see [`super::x87::X87Helper::Env`].
pub fn env(cpu: &mut X86Cpu, args: &[u64]) -> Result<u64, Fault> {
    let op = arg(args, 0);
    let addr = arg(args, 1);
    let flags = arg(args, 2);
    let ag = agent(flags);
    let op32 = flags & 2 != 0;
    let wide = flags & 4 != 0;
    let env_len = if op32 { 28 } else { 14 };
    match op {
        0 | 2 => {
            super::x87::enter_checks(cpu, false)?;
            let mut buf = [0u8; 108];
            store_env(cpu, op32, &mut buf);
            let mut len = env_len;
            if op == 2 {
                for i in 0..8 {
                    let v = Ext::from_slot(&cpu.state.fpu.st[i]).to_bytes();
                    buf[env_len + 10 * i..env_len + 10 * i + 10].copy_from_slice(&v);
                }
                len += 80;
            }
            mmu::write_bytes(cpu, addr, &buf[..len], ag)?;
            if op == 2 {
                X87 {
                    s: &mut cpu.state.fpu,
                }
                .init();
            } else {
                // FNSTENV masks every exception: none is pending any more (ES, B).
                cpu.state.fpu.fcw |= 0x3f;
                X87 {
                    s: &mut cpu.state.fpu,
                }
                .update_es();
            }
        }
        1 | 3 => {
            super::x87::enter_checks(cpu, false)?;
            let len = env_len + if op == 3 { 80 } else { 0 };
            let mut buf = [0u8; 108];
            mmu::read_bytes(cpu, addr, &mut buf[..len], Access::Read, ag)?;
            let real = !cpu.protected();
            let mut s = cpu.state.fpu.clone();
            load_env(real, op32, &buf, &mut s);
            // FRSTOR's registers are in ST(i) order of the loaded TOP.
            if op == 3 {
                for i in 0..8 {
                    let o = env_len + 10 * i;
                    let v = Ext::from_parts(get(&buf, o, 8), get(&buf, o + 8, 2));
                    s.st[i] = v.to_slot();
                }
            }
            cpu.state.fpu = s;
        }
        4 => fxsave(cpu, addr, ag, wide)?,
        _ => fxrstor(cpu, addr, ag, wide)?,
    }
    Ok(0)
}

/// #NM (CR0.EM or TS) and #GP(0) for a misaligned FXSAVE area.
fn fx_checks(cpu: &X86Cpu, addr: u64) -> Result<(), Fault> {
    if cpu.state.cr0 & (ctl::CR0_EM | ctl::CR0_TS) != 0 {
        return Err(Fault::new(7));
    }
    if addr & 15 != 0 {
        return Err(Fault::with_error(13, 0));
    }
    Ok(())
}

/// The number of XMM registers FXSAVE (and XSAVE) covers in the current mode.
pub(crate) fn xmm_count(cpu: &X86Cpu) -> usize {
    if cpu.long64() {
        16
    } else {
        8
    }
}

/// The 512-byte FXSAVE image of the current state.
pub fn fxsave_image(cpu: &X86Cpu, wide: bool) -> [u8; 512] {
    let s = &cpu.state.fpu;
    let mut b = [0u8; 512];
    put(&mut b, 0, u64::from(s.fcw), 2);
    put(&mut b, 2, u64::from(s.fsw), 2);
    b[4] = s.ftw;
    put(&mut b, 6, u64::from(s.fop & 0x7ff), 2);
    if wide {
        put(&mut b, 8, s.fip, 8);
        put(&mut b, 16, s.fdp, 8);
    } else {
        put(&mut b, 8, s.fip & 0xffff_ffff, 4);
        put(&mut b, 16, s.fdp & 0xffff_ffff, 4);
    }
    put(&mut b, 24, u64::from(s.mxcsr), 4);
    put(&mut b, 28, u64::from(MXCSR_MASK), 4);
    for i in 0..8 {
        b[32 + 16 * i..32 + 16 * i + 10].copy_from_slice(&s.st[i][..10]);
    }
    for i in 0..xmm_count(cpu) {
        b[160 + 16 * i..176 + 16 * i].copy_from_slice(&s.xmm[i]);
    }
    b
}

fn fxsave(cpu: &mut X86Cpu, addr: u64, ag: Agent, wide: bool) -> Result<(), Fault> {
    fx_checks(cpu, addr)?;
    let img = fxsave_image(cpu, wide);
    // The whole 512-byte area must be writable (its last byte is checked first: the
    // address a page fault reports, as on the CPU); bytes 416..512 are left alone
    // (available to software).
    mmu::probe_write(cpu, addr.wrapping_add(511), 1, ag)?;
    mmu::probe_write(cpu, addr, 512, ag)?;
    mmu::write_bytes(cpu, addr, &img[..416], ag)
}

fn fxrstor(cpu: &mut X86Cpu, addr: u64, ag: Agent, wide: bool) -> Result<(), Fault> {
    fx_checks(cpu, addr)?;
    // The whole 512-byte area is read (a fault anywhere in it is taken; the last byte
    // is checked first: the address a page fault reports, as on the CPU).
    let mut b = [0u8; 512];
    mmu::read_bytes(cpu, addr.wrapping_add(511), &mut b[..1], Access::Read, ag)?;
    mmu::read_bytes(cpu, addr, &mut b, Access::Read, ag)?;
    let mxcsr = get(&b, 24, 4) as u32;
    if mxcsr & !MXCSR_MASK != 0 {
        return Err(Fault::with_error(13, 0));
    }
    let n = xmm_count(cpu);
    let mut img = [0u8; 416];
    img.copy_from_slice(&b[..416]);
    let s = &mut cpu.state.fpu;
    load_x87_image(s, &img, wide);
    s.mxcsr = mxcsr;
    load_xmm_image(s, &img, n);
    X87 { s }.update_es();
    Ok(())
}

/// Loads the x87 part of a legacy (FXSAVE) image (bytes 0-23 and 32-159): FCW, FSW,
/// abridged FTW, FOP, FIP and FDP (64-bit with `wide`, else 32-bit), ST0-7. The
/// caller recomputes FSW.ES/B ([`X87::update_es`]) once the state is final.
pub(crate) fn load_x87_image(s: &mut FpuState, b: &[u8; 416], wide: bool) {
    s.fcw = (get(b, 0, 2) as u16 & 0x1f3f) | 0x40;
    s.fsw = get(b, 2, 2) as u16;
    s.ftw = b[4];
    s.fop = (get(b, 6, 2) & 0x7ff) as u16;
    if wide {
        s.fip = get(b, 8, 8);
        s.fdp = get(b, 16, 8);
    } else {
        s.fip = get(b, 8, 4);
        s.fdp = get(b, 16, 4);
    }
    for i in 0..8 {
        let mut slot = [0u8; 16];
        slot[..10].copy_from_slice(&b[32 + 16 * i..42 + 16 * i]);
        s.st[i] = slot;
    }
}

/// Loads XMM0..`n` (8 or 16) from bytes 160.. of a legacy image.
pub(crate) fn load_xmm_image(s: &mut FpuState, b: &[u8; 416], n: usize) {
    for i in 0..n.min(16) {
        s.xmm[i].copy_from_slice(&b[160 + 16 * i..176 + 16 * i]);
    }
}
