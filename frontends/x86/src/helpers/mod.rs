//! Helper functions IR blocks call. A [`HelperId`] indexes one table per area:
//! ids `0x000..0x100` are [`integer::TABLE`], `0x100..0x200` [`system::TABLE`],
//! `0x200..0x300` [`x87::TABLE`], `0x300..0x400` [`sse::TABLE`].

pub mod integer;
pub mod sse;
pub mod system;
pub mod x87;
pub(crate) mod x87_env;

use crate::cpu::X86Cpu;
use vireo_core::exec::Fault;
use vireo_core::ir::{Effects, HelperId};

/// A helper: gets the CPU and up to four arguments, returns a value or a fault.
pub type HelperFn = fn(&mut X86Cpu, &[u64]) -> Result<u64, Fault>;

/// One helper table entry.
#[derive(Clone, Copy)]
pub struct HelperDef {
    pub name: &'static str,
    pub f: HelperFn,
    pub effects: Effects,
}

/// First id of the integer helpers.
pub const INTEGER_BASE: u16 = 0x000;
/// First id of the system helpers.
pub const SYSTEM_BASE: u16 = 0x100;
/// First id of the x87 helpers.
pub const X87_BASE: u16 = 0x200;

/// First id of the MMX/SSE helpers.
pub const SSE_BASE: u16 = 0x300;

/// The definition behind `h`.
pub fn lookup(h: HelperId) -> Option<&'static HelperDef> {
    match h.0 {
        n if n < SYSTEM_BASE => integer::TABLE.get(usize::from(n - INTEGER_BASE)),
        n if n < SYSTEM_BASE + 0x100 => system::TABLE.get(usize::from(n - SYSTEM_BASE)),
        n if n < X87_BASE + 0x100 => x87::TABLE.get(usize::from(n - X87_BASE)),
        n if n < SSE_BASE + 0x100 => sse::TABLE.get(usize::from(n - SSE_BASE)),
        _ => None,
    }
}

/// The plain-function form of pure helper `h`, if it has one (see
/// [`vireo_core::exec::DirectGlobals::pure_fn`]).
pub fn pure_fn(h: HelperId) -> Option<vireo_core::exec::PureFn> {
    if h == integer::IntHelper::ComputeEflags.id() {
        Some(compute_eflags_c as _)
    } else if h == integer::IntHelper::ComputeCarry.id() {
        Some(compute_carry_c as _)
    } else {
        None
    }
}

/// [`crate::flags::carry`] (the `compute_carry` helper) for compiled code.
extern "C" fn compute_carry_c(op: u64, dst: u64, src: u64, src2: u64) -> u64 {
    crate::flags::carry(op, dst, src, src2)
}

/// [`crate::flags::compute`] (the `compute_eflags` helper) for compiled code.
extern "C" fn compute_eflags_c(op: u64, dst: u64, src: u64, src2: u64) -> u64 {
    crate::flags::compute(op, dst, src, src2)
}

/// Runs helper `h`. An unknown id (a frontend bug) raises #UD rather than panicking.
pub fn call(cpu: &mut X86Cpu, h: HelperId, args: &[u64]) -> Result<u64, Fault> {
    match lookup(h) {
        Some(d) => (d.f)(cpu, args),
        None => {
            log::error!(target: "vireo::tcg", "unknown helper id {:#x}", h.0);
            Err(Fault::new(6))
        }
    }
}
