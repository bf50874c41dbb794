//! REP MOVS and REP STOS with 64-bit addresses, many iterations per call: the
//! helpers the translator uses for them in long mode (other address sizes loop in IR,
//! see `translate::string`).
//!
//! The result is that of the iterations one by one, only faster:
//! - forward (DF clear), a run of iterations whose source and destination each stay
//!   within one page of RAM (the source may be ROM) is one read and one write of
//!   the run's bytes; a run never reaches a destination byte that an earlier source
//!   byte of the same run would read (overlap), by linear and by physical address;
//! - anything else (backward, an element across a page boundary, MMIO or the local
//!   APIC's page) goes one element at a time;
//! - RCX, RSI and RDI are written back after every run, so a fault leaves the state
//!   of the iterations completed before it (a run's source is read and its
//!   destination checked before any byte of it is written);
//! - one call does at most [`BYTES_PER_CALL`] bytes (or `REP_BUDGET` single
//!   elements); the translated code comes back for the rest, so interrupts are taken
//!   in long copies.

use crate::cpu::X86Cpu;
use crate::fasttlb::Table;
use crate::mmu::{self, Access};
use vireo_core::cpu::{flags, reg, sreg};
use vireo_core::exec::Fault;
use vireo_core::ir::Size;
use vireo_core::layout::RegionKind;

/// Bytes one call copies or stores at most.
pub const BYTES_PER_CALL: usize = 64 << 10;
/// Runs shorter than this go one element at a time.
const MIN_RUN: usize = 64;
const PAGE: u64 = 0x1000;

/// What the string instruction does per element.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// MOVS from segment `src_seg`:RSI to ES:RDI.
    Movs { src_seg: usize },
    /// STOS of the low bytes of RAX to ES:RDI.
    Stos,
}

/// Runs REP `kind` with elements of `size` bytes (1, 2, 4, 8) from the current RCX,
/// RSI, RDI (64-bit address size).
pub fn rep(cpu: &mut X86Cpu, kind: Kind, size: usize) -> Result<(), Fault> {
    let size = size.clamp(1, 8);
    let agent = mmu::current_agent(cpu);
    let back = cpu.state.rflags & flags::DF != 0;
    let mut budget = BYTES_PER_CALL;
    let mut singles = crate::translate::REP_BUDGET as usize;
    // The slow path's page buffer, made when first needed (zeroing 4 KiB at every
    // call was most of a short REP's cost).
    let mut buf: Option<Box<[u8; PAGE as usize]>> = None;
    while cpu.state.gpr[reg::RCX] != 0 && budget >= size && singles > 0 {
        let rcx = cpu.state.gpr[reg::RCX];
        let dst = cpu.state.gpr[reg::RDI];
        let src = match kind {
            Kind::Movs { src_seg } => {
                Some(seg_base(cpu, src_seg).wrapping_add(cpu.state.gpr[reg::RSI]))
            }
            Kind::Stos => None,
        };
        check_canonical(dst, size, false)?;
        if let (Some(s), Kind::Movs { src_seg }) = (src, kind) {
            check_canonical(s, size, src_seg == sreg::SS)?;
        }
        let mut k = if back {
            0
        } else {
            let room = |a: u64| ((PAGE - (a & (PAGE - 1))) as usize) / size;
            let mut k = room(dst).min(budget / size).min(rcx.min(1 << 20) as usize);
            if let Some(s) = src {
                k = k.min(room(s)).min(apart(s, dst, size));
            }
            k
        };
        // Through the fast TLB if it maps both pages; else short runs (a source
        // just behind the destination, a page end near) go one element at a time.
        if k == 0 || !fast_run(cpu, src, dst, k * size, size) {
            k = if k * size >= MIN_RUN {
                let b = buf.get_or_insert_with(|| Box::new([0u8; PAGE as usize]));
                run(cpu, src, dst, k, size, agent, b)?
            } else {
                0
            };
        }
        if k == 0 {
            one(cpu, src, dst, size)?;
            k = 1;
            singles -= 1;
        }
        let bytes = (k * size) as u64;
        let step = if back { bytes.wrapping_neg() } else { bytes };
        cpu.state.gpr[reg::RCX] = rcx - k as u64;
        cpu.state.gpr[reg::RDI] = dst.wrapping_add(step);
        if let Kind::Movs { .. } = kind {
            cpu.state.gpr[reg::RSI] = cpu.state.gpr[reg::RSI].wrapping_add(step);
        }
        budget = budget.saturating_sub(k * size);
    }
    Ok(())
}

/// The segment base that applies in 64-bit mode (FS and GS only).
fn seg_base(cpu: &X86Cpu, seg: usize) -> u64 {
    if seg == sreg::FS || seg == sreg::GS {
        cpu.state.seg[seg].base
    } else {
        0
    }
}

/// #GP(0) (#SS(0) for the stack segment) unless `[la, la+size)` is canonical.
fn check_canonical(la: u64, size: usize, stack: bool) -> Result<(), Fault> {
    if mmu::canonical_range(la, size) {
        Ok(())
    } else {
        Err(Fault::with_error(if stack { 12 } else { 13 }, 0))
    }
}

/// Elements a forward run from `src` to `dst` may copy before a destination byte
/// could be a source byte still to be read (unbounded when the destination is not
/// ahead of the source within reach).
fn apart(src: u64, dst: u64, size: usize) -> usize {
    let d = dst.wrapping_sub(src);
    if d == 0 || d >= (BYTES_PER_CALL as u64) {
        usize::MAX
    } else {
        (d as usize) / size
    }
}

/// Whether `[pa, pa+len)` is plain memory: RAM (or ROM when `rom_ok`), not the APIC
/// page.
fn plain(cpu: &X86Cpu, pa: u64, len: usize, rom_ok: bool) -> bool {
    if crate::apic::claim(cpu, pa).is_some() {
        return false;
    }
    match cpu.bus.mem.region_of(pa, len as u64) {
        Some(r) => r.kind == RegionKind::Ram || (rom_ok && r.kind == RegionKind::Rom),
        None => false,
    }
}

/// A run of `len` bytes within one page each side through the fast TLB (host memory
/// directly); `false` if its entries do not allow it (or the copy would overlap).
fn fast_run(cpu: &mut X86Cpu, src: Option<u64>, dst: u64, len: usize, size: usize) -> bool {
    let (mmu, ac) = mmu::fast_tables(cpu);
    let tables = std::iter::once(Table::from(mmu)).chain(ac);
    let pattern = cpu.state.gpr[reg::RAX].to_le_bytes();
    for t in tables {
        let done = match src {
            Some(s) => cpu.mmu.fast.copy(s, dst, len, t),
            None => cpu.mmu.fast.fill_with(dst, len, &pattern[..size], t),
        };
        if done {
            return true;
        }
    }
    false
}

/// A run of `k` elements within one page each side; returns the elements done (0: not
/// plain memory or overlapping physically, the caller goes one element at a time).
/// The pages get fast TLB entries for the next run. `src`: MOVS's source, `None` for
/// STOS.
fn run(
    cpu: &mut X86Cpu,
    src: Option<u64>,
    dst: u64,
    k: usize,
    size: usize,
    agent: mmu::Agent,
    buf: &mut [u8; PAGE as usize],
) -> Result<usize, Fault> {
    let len = k * size;
    let data = &mut buf[..len];
    match src {
        Some(s) => {
            // Translate both first (a source fault comes before a destination one,
            // as in the first iteration): both pages must be plain memory and the
            // destination must not lie ahead within the run physically.
            let ps = mmu::translate(cpu, s, Access::Read, agent)? & mmu::a20_mask(cpu);
            let pd = mmu::translate(cpu, dst, Access::Write, agent)? & mmu::a20_mask(cpu);
            if !plain(cpu, ps, len, true) || !plain(cpu, pd, len, false) {
                return Ok(0);
            }
            if apart(ps, pd, size) < k {
                return Ok(0);
            }
            mmu::read_bytes(cpu, s, data, Access::Read, agent)?;
        }
        None => {
            let pd = mmu::translate(cpu, dst, Access::Write, agent)? & mmu::a20_mask(cpu);
            if !plain(cpu, pd, len, false) {
                return Ok(0);
            }
            let v = cpu.state.gpr[reg::RAX].to_le_bytes();
            for chunk in data.chunks_exact_mut(size) {
                chunk.copy_from_slice(&v[..size]);
            }
        }
    }
    mmu::write_bytes(cpu, dst, data, agent)?;
    let (idx, _) = mmu::fast_tables(cpu);
    if let Some(s) = src {
        mmu::fill_fast(cpu, s, size, idx, Access::Read);
    }
    mmu::fill_fast(cpu, dst, size, idx, Access::Write);
    Ok(k)
}

/// One element.
fn one(cpu: &mut X86Cpu, src: Option<u64>, dst: u64, size: usize) -> Result<(), Fault> {
    let (idx, _) = mmu::fast_tables(cpu);
    let size = Size::from_bytes(size).unwrap_or(Size::B8);
    let v = match src {
        Some(s) => mmu::read(cpu, s, size, idx)?,
        None => cpu.state.gpr[reg::RAX],
    };
    mmu::write(cpu, dst, v, size, idx)
}
