//! The run-time context of a block and the `extern "C"` trampolines generated code
//! calls back into Rust through.
//!
//! Every trampoline is monomorphized for the environment type `E` and takes the
//! context first. Trampolines never unwind into generated code: a panic in the
//! environment is caught, parked in the context, and reported as [`ST_PANIC`]; the
//! block then leaves through its fault path and [`crate::JitCache::run`] resumes the
//! panic on the Rust side.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use vireo_core::exec::{Fault, GuestEnv};
use vireo_core::ir::{Global, HelperId, MmuIdx, Size};

/// Trampoline status: success.
pub const ST_OK: u64 = 0;
/// Trampoline status: a guest fault, parked in [`Ctx::fault`].
pub const ST_FAULT: u64 = 1;
/// Trampoline status: the environment panicked (payload in [`Ctx::panic`]).
pub const ST_PANIC: u64 = 2;
/// `insn_tramp` status: the environment asked to stop before this instruction.
pub const ST_STOP: u64 = 3;

/// The context a block runs with (its address is in `rbx` while the block runs).
/// The fields generated code touches lie first, within a one-byte displacement.
#[repr(C)]
pub struct Ctx {
    /// Chain to another block only while the environment's counter (with the
    /// instruction hooks) is below the `u64` this points to (a [`crate::Gate`]'s
    /// limit, which raising a wake-up flag sets to 0).
    pub limit: *const u64,
    /// Jumps from one block straight into the next.
    pub chains: u64,
    /// The [`crate::Cell`] of the block that returned (set on its way out).
    pub last: usize,
    /// The target of a `Jump` or `Pause` exit.
    pub target: u64,
    /// The PC of a fault (the current instruction's) or of a stop.
    pub pc: u64,
    /// The cache's shared indirect-exit-table lookup (`codegen::shared_stubs`), 0
    /// if none (no block then jumps there).
    pub lookup: usize,
    /// Guest calls whose host `call` frames are on the stack (see `codegen::exits`).
    pub depth: u64,
    /// The stack pointer blocks run at (the shared return restores it).
    pub frame: usize,
    /// The cache's shared return from a run (`codegen::shared_stubs`).
    pub leave: usize,
    /// The trampolines generated code calls (`call [rbx + off]`), by [`Tramp`].
    pub tramps: [usize; TRAMPS],
    /// The environment (`*mut E`).
    pub env: *mut u8,
    /// Guest instructions started by this run (without the instruction hooks; with
    /// them, the environment's counter counts).
    pub insns: u64,
    pub fault: Option<Fault>,
    pub panic: Option<Box<dyn Any + Send>>,
    /// Chain slots the shared table lookup linked during the run, `links[..nlinks]`:
    /// (the slot's address, the cell of the block it now leads to). The cache
    /// records them after the run, so that dropping that block empties the slot
    /// (`JitCache::kill`); with the list full the lookup links nothing more.
    pub nlinks: u64,
    pub links: [[usize; 2]; LINKS],
}

/// Room in [`Ctx::links`].
pub const LINKS: usize = 32;

/// The trampolines of [`Ctx::tramps`].
#[derive(Debug, Clone, Copy)]
pub enum Tramp {
    Get,
    Set,
    Load,
    Store,
    Call,
    Insn,
    Env,
    Raise,
}

/// Entries of [`Ctx::tramps`].
pub const TRAMPS: usize = 8;

/// The trampolines for environment type `E`, in [`Tramp`] order.
pub fn table<E: GuestEnv>() -> [usize; TRAMPS] {
    [
        get_tramp::<E> as *const () as usize,
        set_tramp::<E> as *const () as usize,
        load_tramp::<E> as *const () as usize,
        store_tramp::<E> as *const () as usize,
        call_tramp::<E> as *const () as usize,
        insn_tramp::<E> as *const () as usize,
        env_tramp::<E> as *const () as usize,
        raise_tramp as *const () as usize,
    ]
}

/// Two values back in `rax:rdx` (System V returns a 16-byte integer struct there).
#[repr(C)]
pub struct Ret {
    pub status: u64,
    pub value: u64,
}

/// Packs a load/store's attributes into one argument.
pub fn pack_access(size: Size, mmu: MmuIdx, write: bool, signed: bool) -> u64 {
    let s = match size {
        Size::B8 => 0,
        Size::B16 => 1,
        Size::B32 => 2,
        Size::B64 => 3,
    };
    s | u64::from(mmu == MmuIdx::User) << 2 | u64::from(write) << 3 | u64::from(signed) << 4
}

fn unpack_access(p: u64) -> (Size, MmuIdx, bool, bool) {
    let size = match p & 3 {
        0 => Size::B8,
        1 => Size::B16,
        2 => Size::B32,
        _ => Size::B64,
    };
    let mmu = if p & 4 != 0 {
        MmuIdx::User
    } else {
        MmuIdx::Kernel
    };
    (size, mmu, p & 8 != 0, p & 16 != 0)
}

/// Encodes a global as one argument.
pub fn pack_global(g: Global) -> u64 {
    match g {
        Global::Gpr(n) => u64::from(n),
        Global::Pc => 0x100,
        Global::CcOp => 0x101,
        Global::CcDst => 0x102,
        Global::CcSrc => 0x103,
        Global::CcSrc2 => 0x104,
        Global::Flags => 0x105,
        Global::SegBase(n) => 0x200 | u64::from(n),
        Global::Xmm(n) => 0x400 | u64::from(n),
    }
}

fn unpack_global(v: u64) -> Global {
    match v {
        0x100 => Global::Pc,
        0x101 => Global::CcOp,
        0x102 => Global::CcDst,
        0x103 => Global::CcSrc,
        0x104 => Global::CcSrc2,
        0x105 => Global::Flags,
        v if v & 0x400 != 0 => Global::Xmm(v as u8),
        v if v & 0x200 != 0 => Global::SegBase(v as u8),
        v => Global::Gpr(v as u8),
    }
}

/// Runs `f` on the context's environment, catching a panic.
///
/// # Safety
///
/// `ctx` must be the context [`crate::JitCache::run`] passed to the block, whose `env`
/// points to the `E` borrowed mutably for that run.
unsafe fn with_env<E: GuestEnv, R>(
    ctx: *mut Ctx,
    f: impl FnOnce(&mut E) -> Result<R, Fault>,
) -> Result<R, u64> {
    // SAFETY: per this function's contract, `ctx` is live and exclusively ours for the
    // call (generated code does not touch it while a trampoline runs), and `env` is
    // the environment borrowed mutably by `run` (generated code's direct accesses to it
    // do not overlap a trampoline call).
    let (ctx, env) = unsafe { (&mut *ctx, &mut *(*ctx).env.cast::<E>()) };
    match catch_unwind(AssertUnwindSafe(|| f(env))) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(fault)) => {
            ctx.fault = Some(fault);
            Err(ST_FAULT)
        }
        Err(p) => {
            ctx.panic = Some(p);
            Err(ST_PANIC)
        }
    }
}

fn ret(r: Result<u64, u64>) -> Ret {
    match r {
        Ok(value) => Ret {
            status: ST_OK,
            value,
        },
        Err(status) => Ret { status, value: 0 },
    }
}

/// `t = global` through [`GuestEnv::get`].
pub extern "C" fn get_tramp<E: GuestEnv>(ctx: *mut Ctx, g: u64) -> Ret {
    // SAFETY: called only by generated code with the run's context.
    ret(unsafe { with_env::<E, _>(ctx, |e| Ok(e.get(unpack_global(g)))) })
}

/// `global = v` through [`GuestEnv::set`].
pub extern "C" fn set_tramp<E: GuestEnv>(ctx: *mut Ctx, g: u64, v: u64) -> u64 {
    // SAFETY: called only by generated code with the run's context.
    match unsafe {
        with_env::<E, _>(ctx, |e| {
            e.set(unpack_global(g), v);
            Ok(())
        })
    } {
        Ok(()) => ST_OK,
        Err(st) => st,
    }
}

/// A load, zero- or sign-extended as packed.
pub extern "C" fn load_tramp<E: GuestEnv>(ctx: *mut Ctx, addr: u64, packed: u64) -> Ret {
    let (size, mmu, write, signed) = unpack_access(packed);
    // SAFETY: called only by generated code with the run's context.
    ret(unsafe {
        with_env::<E, _>(ctx, |e| {
            let v = e.load(addr, size, mmu, write)?;
            Ok(if signed { size.sext(v) } else { size.trunc(v) })
        })
    })
}

/// A store; returns the status.
pub extern "C" fn store_tramp<E: GuestEnv>(ctx: *mut Ctx, addr: u64, val: u64, packed: u64) -> u64 {
    let (size, mmu, _, _) = unpack_access(packed);
    // SAFETY: called only by generated code with the run's context.
    match unsafe { with_env::<E, _>(ctx, |e| e.store(addr, val, size, mmu)) } {
        Ok(()) => ST_OK,
        Err(st) => st,
    }
}

/// A helper call: `hn` is the helper id in bits 0-15 and the argument count in bits
/// 16-23; the arguments follow.
pub extern "C" fn call_tramp<E: GuestEnv>(
    ctx: *mut Ctx,
    hn: u64,
    a0: u64,
    a1: u64,
    a2: u64,
    a3: u64,
) -> Ret {
    let args = [a0, a1, a2, a3];
    let n = ((hn >> 16) as usize).min(4);
    // SAFETY: called only by generated code with the run's context.
    ret(unsafe { with_env::<E, _>(ctx, |e| e.call(HelperId(hn as u16), &args[..n])) })
}

/// An instruction boundary: [`ST_STOP`] (with `ctx.pc` set) if the environment asks
/// to stop, else counts the instruction and calls [`GuestEnv::insn_start`].
pub extern "C" fn insn_tramp<E: GuestEnv>(ctx: *mut Ctx, pc: u64) -> u64 {
    // SAFETY: called only by generated code with the run's context.
    let r = unsafe {
        with_env::<E, _>(ctx, |e| {
            if e.stop_requested() {
                return Ok(true);
            }
            e.insn_start(pc);
            Ok(false)
        })
    };
    // SAFETY: as above; `with_env`'s borrow of the context has ended.
    let ctx = unsafe { &mut *ctx };
    match r {
        Ok(true) => {
            ctx.pc = pc;
            ST_STOP
        }
        Ok(false) => {
            ctx.insns += 1;
            ST_OK
        }
        Err(st) => st,
    }
}

/// A helper's plain function on the environment (`DirectGlobals::env_fn`): no status
/// (it cannot fault); a panic is parked in the context (and resumed by `run` after the
/// block returned) with 0 as the value.
// `f` is a Rust function pointer passed through as a pointer-sized value and called
// from Rust: the generated code never calls it itself.
#[allow(improper_ctypes_definitions)]
pub extern "C" fn env_tramp<E: GuestEnv>(
    ctx: *mut Ctx,
    f: vireo_core::exec::EnvFn<E>,
    a0: u64,
    a1: u64,
    a2: u64,
) -> u64 {
    // SAFETY: called only by generated code with the run's context (see `with_env`).
    let r = unsafe { with_env::<E, _>(ctx, |e| Ok(f(e, a0, a1, a2))) };
    r.unwrap_or(0)
}

/// `Raise`: parks the fault in the context.
pub extern "C" fn raise_tramp(ctx: *mut Ctx, vector: u64, has_error: u64, error: u64) {
    // SAFETY: called only by generated code with the run's context.
    let ctx = unsafe { &mut *ctx };
    ctx.fault = Some(Fault {
        vector: vector as u8,
        error_code: (has_error != 0).then_some(error as u32),
        address: None,
    });
}
