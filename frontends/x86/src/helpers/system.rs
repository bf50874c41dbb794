//! System helpers: privileged and mode-changing instructions whose semantics live in
//! Rust rather than IR. This enum is the contract between the translator (which emits
//! `Call { helper: SysHelper::X.id(), args }`) and the implementations.
//!
//! Conventions: all arguments and results are `u64`; `opsize` is the operand size in
//! bits (16, 32, 64); `next_pc` is the PC (relative to CS) of the following
//! instruction. A helper that faults must leave architectural state as it was before
//! the instruction (check everything, then commit). Helpers whose effects say
//! `ends_block` change translation-relevant mode: the translator ends the block
//! after them with `ExitKind::Sync` (and must have set `Global::Pc` to `next_pc` first
//! unless the helper sets the PC itself: far transfers, INT, IRET, SYSCALL...).
//! Before any helper that reads or writes RFLAGS, the translator has stored the lazy
//! flags in their globals (they are always in `X86Cpu::cc`).

use super::{HelperDef, HelperFn, SYSTEM_BASE};
use crate::cpu::X86Cpu;
use crate::syscall as fast;
use crate::{control, io, msr, transfer};
use vireo_core::exec::Fault;
use vireo_core::ir::{Effects, HelperId};

/// The system helpers, in table order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum SysHelper {
    /// `(sreg, selector)`: MOV/POP to a segment register, LDS/LES/LFS/LGS/LSS
    /// (segment part). Real/V86 mode: base = selector << 4; protected mode: full
    /// descriptor checks (#GP/#SS/#NP with the selector as error code). Loading SS
    /// sets the interrupt shadow. Ends the block (SS/CS-size changes).
    LoadSeg,
    /// `(selector, offset, opsize)`: far JMP, including call gates and task switches.
    /// Sets CS:RIP.
    FarJmp,
    /// `(selector, offset, opsize, next_pc)`: far CALL, including call gates (with
    /// privilege change and parameter copy) and task switches. Sets CS:RIP.
    FarCall,
    /// `(opsize, imm)`: far RET, popping `imm` extra bytes; returns to outer privilege.
    FarRet,
    /// `(opsize)`: IRET/IRETD/IRETQ in every mode (real, V86 with IOPL/VME, protected,
    /// nested task return, long mode).
    Iret,
    /// `(vector, next_pc, kind)`: software interrupt; kind 0 = INT n, 1 = INT3,
    /// 2 = INTO (only called when OF is set), 3 = INT1/ICEBP. Sets CS:RIP.
    SoftInt,
    /// `()`: CPUID with the leaf in EAX and subleaf in ECX; writes EAX, EBX, ECX, EDX.
    Cpuid,
    /// `()`: RDMSR of ECX into EDX:EAX (#GP for unknown MSRs or CPL > 0).
    Rdmsr,
    /// `()`: WRMSR of EDX:EAX to ECX. Ends the block (EFER, bases...).
    Wrmsr,
    /// `()`: RDTSC into EDX:EAX (#GP at CPL > 0 with CR4.TSD).
    Rdtsc,
    /// `()`: RDTSCP: RDTSC plus TSC_AUX into ECX.
    Rdtscp,
    /// `(cr, value)`: MOV to CR0/2/3/4/8 with all checks (#GP for reserved bits, PG
    /// without PE, entering long mode...), TLB flushes. Ends the block.
    MovToCr,
    /// `(cr) -> value`: MOV from CR0/2/3/4/8.
    MovFromCr,
    /// `(dr, value)`: MOV to DR0-7 (DR4/5 alias 6/7 unless CR4.DE).
    MovToDr,
    /// `(dr) -> value`: MOV from DR0-7.
    MovFromDr,
    /// `()`: CLTS. Ends the block.
    Clts,
    /// `(value)`: LMSW. Ends the block.
    Lmsw,
    /// `(which, linear_addr, opsize)`: LGDT (which 0) / LIDT (which 1) from memory.
    LoadDtr,
    /// `(which, linear_addr)`: SGDT (0) / SIDT (1) to memory (#UD with UMIP at CPL>0).
    StoreDtr,
    /// `(selector)`: LLDT.
    Lldt,
    /// `(selector)`: LTR (marks the TSS busy).
    Ltr,
    /// `(which) -> selector`: SLDT (0) / STR (1).
    StoreSel,
    /// `(which, selector) -> value | (valid << 63)`: LAR (0), LSL (1); the translator
    /// sets ZF from bit 63 and writes the value only when valid.
    LarLsl,
    /// `(which, selector) -> 1 if accessible`: VERR (0) / VERW (1); translator sets ZF.
    Verify,
    /// `(linear_addr)`: INVLPG.
    Invlpg,
    /// `(type, linear_addr_of_descriptor)`: INVPCID.
    Invpcid,
    /// `(port, size_bytes) -> value`: IN with IOPL / TSS I/O-bitmap checks.
    In,
    /// `(port, size_bytes, value)`: OUT with the same checks.
    Out,
    /// `(next_pc)`: HLT (#GP at CPL > 0): marks the CPU halted, PC = next_pc.
    Hlt,
    /// `()`: CLI with IOPL/VME/PVI rules.
    Cli,
    /// `()`: STI with IOPL/VME/PVI rules; sets the interrupt shadow. Ends the block.
    Sti,
    /// `(opsize) -> value`: the FLAGS image PUSHF pushes (VM/RF cleared, V86 IOPL and
    /// VME rules, #GP in V86 with IOPL < 3 and no VME).
    Pushf,
    /// `(value, opsize)`: POPF's flag update with the CPL/IOPL rules for IF, IOPL,
    /// VIF/VIP, AC, ID, NT (and #GP in V86). Ends the block.
    Popf,
    /// `(next_pc)`: SYSCALL. Sets CS:RIP.
    Syscall,
    /// `(opsize)`: SYSRET. Sets CS:RIP.
    Sysret,
    /// `()`: SYSENTER. Sets CS:RIP.
    Sysenter,
    /// `(opsize)`: SYSEXIT. Sets CS:RIP.
    Sysexit,
    /// `()`: SWAPGS (#UD outside 64-bit mode, #GP at CPL > 0).
    Swapgs,
    /// `(which) -> base`: RDFSBASE (0) / RDGSBASE (1) (#UD unless CR4.FSGSBASE).
    RdFsGsBase,
    /// `(which, base)`: WRFSBASE (0) / WRGSBASE (1) (#GP for non-canonical).
    WrFsGsBase,
    /// `()`: XGETBV (XCR in ECX → EDX:EAX).
    Xgetbv,
    /// `()`: XSETBV (EDX:EAX → XCR[ECX]). Ends the block.
    Xsetbv,
    /// `(op)`: the #UD/#NM checks of XSAVE (op 0), XSAVEOPT (1), XSAVEC (2) and
    /// XRSTOR (3), called before the memory operand is computed (see [`crate::xsave`]).
    XsaveEnter,
    /// `(op, linear_addr, user | wide << 1)`: XSAVE/XSAVEOPT/XSAVEC/XRSTOR with the
    /// instruction mask in EDX:EAX; `wide` for the REX.W forms.
    Xsave,
    /// `(next_pc)`: INVD/WBINVD/WBNOINVD (#GP at CPL > 0; no cache to model).
    CacheFlush,
    /// `(size, src_seg)`: REP MOVS (`src_seg` the source segment) or REP STOS
    /// (`src_seg` = `u64::MAX`) with 64-bit addresses, many iterations per call
    /// ([`crate::string_ops`]).
    RepString,
}

impl SysHelper {
    /// The IR helper id.
    pub const fn id(self) -> HelperId {
        HelperId(SYSTEM_BASE + self as u16)
    }
}

fn arg(args: &[u64], i: usize) -> u64 {
    args.get(i).copied().unwrap_or(0)
}

/// `Ok(0)` after a helper that returns nothing.
fn unit(r: Result<(), Fault>) -> Result<u64, Fault> {
    r.map(|()| 0)
}

fn load_seg(cpu: &mut X86Cpu, a: &[u64]) -> Result<u64, Fault> {
    unit(crate::seg::load_seg(
        cpu,
        arg(a, 0) as usize,
        arg(a, 1) as u16,
    ))
}
fn far_jmp(cpu: &mut X86Cpu, a: &[u64]) -> Result<u64, Fault> {
    unit(transfer::far_jmp(
        cpu,
        arg(a, 0) as u16,
        arg(a, 1),
        arg(a, 2),
    ))
}
fn far_call(cpu: &mut X86Cpu, a: &[u64]) -> Result<u64, Fault> {
    unit(transfer::far_call(
        cpu,
        arg(a, 0) as u16,
        arg(a, 1),
        arg(a, 2),
        arg(a, 3),
    ))
}
fn far_ret(cpu: &mut X86Cpu, a: &[u64]) -> Result<u64, Fault> {
    unit(transfer::far_ret(cpu, arg(a, 0), arg(a, 1)))
}
/// IRET, whose block exits `Indirect` (see [`deliverable_guard`]).
fn iret(cpu: &mut X86Cpu, a: &[u64]) -> Result<u64, Fault> {
    transfer::iret(cpu, arg(a, 0))?;
    deliverable_guard(cpu);
    Ok(0)
}

/// After an instruction whose block exits `Indirect` although it may change the mode
/// and make an interrupt deliverable (SYSRET, IRET): the lookup guard follows the new
/// state, and the `irq_window` chain guard sends compiled code back to the run loop
/// when IF is set while an interrupt request was deferred, or an NMI is pending (IRET
/// unblocks NMIs).
fn deliverable_guard(cpu: &mut X86Cpu) {
    crate::mmu::refresh_guard(cpu);
    irq_window(cpu);
}

/// Sets the `irq_window` chain guard if an interrupt request was deferred and IF is
/// now set, or an NMI is pending (see [`deliverable_guard`]).
fn irq_window(cpu: &mut X86Cpu) {
    let ev = &cpu.state.events;
    let irq = cpu.irq_deferred && cpu.state.rflags & vireo_core::cpu::flags::IF != 0;
    if irq || ev.nmi_pending {
        cpu.irq_window = true;
    }
}
fn soft_int(cpu: &mut X86Cpu, a: &[u64]) -> Result<u64, Fault> {
    unit(crate::exception::soft_int(
        cpu,
        arg(a, 0) as u8,
        arg(a, 1),
        arg(a, 2),
    ))
}
fn cpuid(cpu: &mut X86Cpu, _a: &[u64]) -> Result<u64, Fault> {
    crate::cpuid::cpuid(cpu);
    Ok(0)
}
fn rdmsr(cpu: &mut X86Cpu, _a: &[u64]) -> Result<u64, Fault> {
    unit(msr::rdmsr(cpu))
}
fn wrmsr(cpu: &mut X86Cpu, _a: &[u64]) -> Result<u64, Fault> {
    unit(msr::wrmsr(cpu))
}
fn rdtsc(cpu: &mut X86Cpu, _a: &[u64]) -> Result<u64, Fault> {
    unit(msr::rdtsc(cpu, false))
}
fn rdtscp(cpu: &mut X86Cpu, _a: &[u64]) -> Result<u64, Fault> {
    unit(msr::rdtsc(cpu, true))
}
fn mov_to_cr(cpu: &mut X86Cpu, a: &[u64]) -> Result<u64, Fault> {
    unit(control::mov_to_cr(cpu, arg(a, 0), arg(a, 1)))
}
fn mov_from_cr(cpu: &mut X86Cpu, a: &[u64]) -> Result<u64, Fault> {
    control::mov_from_cr(cpu, arg(a, 0))
}
fn mov_to_dr(cpu: &mut X86Cpu, a: &[u64]) -> Result<u64, Fault> {
    unit(control::mov_to_dr(cpu, arg(a, 0), arg(a, 1)))
}
fn mov_from_dr(cpu: &mut X86Cpu, a: &[u64]) -> Result<u64, Fault> {
    control::mov_from_dr(cpu, arg(a, 0))
}
fn clts(cpu: &mut X86Cpu, _a: &[u64]) -> Result<u64, Fault> {
    unit(control::clts(cpu))
}
fn lmsw(cpu: &mut X86Cpu, a: &[u64]) -> Result<u64, Fault> {
    unit(control::lmsw(cpu, arg(a, 0)))
}
fn load_dtr(cpu: &mut X86Cpu, a: &[u64]) -> Result<u64, Fault> {
    unit(control::load_dtr(cpu, arg(a, 0), arg(a, 1), arg(a, 2)))
}
fn store_dtr(cpu: &mut X86Cpu, a: &[u64]) -> Result<u64, Fault> {
    unit(control::store_dtr(cpu, arg(a, 0), arg(a, 1)))
}
fn lldt(cpu: &mut X86Cpu, a: &[u64]) -> Result<u64, Fault> {
    unit(crate::seg::lldt(cpu, arg(a, 0) as u16))
}
fn ltr(cpu: &mut X86Cpu, a: &[u64]) -> Result<u64, Fault> {
    unit(crate::seg::ltr(cpu, arg(a, 0) as u16))
}
fn store_sel(cpu: &mut X86Cpu, a: &[u64]) -> Result<u64, Fault> {
    control::store_sel(cpu, arg(a, 0))
}
fn lar_lsl(cpu: &mut X86Cpu, a: &[u64]) -> Result<u64, Fault> {
    crate::seg::lar_lsl(cpu, arg(a, 0), arg(a, 1) as u16)
}
fn verify(cpu: &mut X86Cpu, a: &[u64]) -> Result<u64, Fault> {
    crate::seg::verify(cpu, arg(a, 0), arg(a, 1) as u16)
}
fn invlpg(cpu: &mut X86Cpu, a: &[u64]) -> Result<u64, Fault> {
    unit(control::invlpg(cpu, arg(a, 0)))
}
fn invpcid(cpu: &mut X86Cpu, a: &[u64]) -> Result<u64, Fault> {
    unit(control::invpcid(cpu, arg(a, 0), arg(a, 1)))
}
fn port_in(cpu: &mut X86Cpu, a: &[u64]) -> Result<u64, Fault> {
    io::port_in(cpu, arg(a, 0), arg(a, 1))
}
fn port_out(cpu: &mut X86Cpu, a: &[u64]) -> Result<u64, Fault> {
    unit(io::port_out(cpu, arg(a, 0), arg(a, 1), arg(a, 2)))
}
fn hlt(cpu: &mut X86Cpu, a: &[u64]) -> Result<u64, Fault> {
    unit(control::hlt(cpu, arg(a, 0)))
}
fn cli(cpu: &mut X86Cpu, _a: &[u64]) -> Result<u64, Fault> {
    unit(io::cli(cpu))
}
fn sti(cpu: &mut X86Cpu, _a: &[u64]) -> Result<u64, Fault> {
    unit(io::sti(cpu))
}
fn pushf(cpu: &mut X86Cpu, a: &[u64]) -> Result<u64, Fault> {
    io::pushf(cpu, arg(a, 0))
}
fn popf(cpu: &mut X86Cpu, a: &[u64]) -> Result<u64, Fault> {
    unit(io::popf(cpu, arg(a, 0), arg(a, 1)))
}
/// SYSCALL, whose block exits `Indirect`: the lookup guard follows the new CPL and
/// mode, so that compiled code may go straight on into the kernel's entry block.
fn syscall(cpu: &mut X86Cpu, a: &[u64]) -> Result<u64, Fault> {
    let from = cpu.mmu.jc_guard;
    let long = cpu.state.long_mode();
    fast::syscall(cpu, arg(a, 0))?;
    if long {
        // To 64-bit CPL 0 with flat CS and SS; the trap flag stays unless SFMASK
        // clears it: nothing else of the new mode comes from outside the old one.
        let key = TRANSITION_SYSCALL | (cpu.state.msr.sfmask & vireo_core::cpu::flags::TF);
        crate::mmu::follow_guard(cpu, from, key);
    } else {
        // Legacy SYSCALL keeps DS, ES, FS and GS, whose checks the mode key holds
        // only outside V86 mode.
        crate::mmu::refresh_guard(cpu);
    }
    Ok(0)
}

/// Transition keys of [`crate::mmu::follow_guard`] (the low bits: the trap flag).
const TRANSITION_SYSCALL: u64 = 1 << 32;
const TRANSITION_SYSRET64: u64 = 2 << 32;
/// SYSRET, whose block exits `Indirect` too (back to user mode without the run
/// loop; see [`deliverable_guard`]).
fn sysret(cpu: &mut X86Cpu, a: &[u64]) -> Result<u64, Fault> {
    let from = cpu.mmu.jc_guard;
    let to64 = cpu.state.long_mode() && arg(a, 0) == 64;
    fast::sysret(cpu, arg(a, 0))?;
    if to64 {
        // To 64-bit CPL 3 with flat CS and SS and R11's trap flag. (A return to
        // 32-bit code brings back DS, ES, FS and GS checks the old mode key lacks.)
        let key = TRANSITION_SYSRET64 | (cpu.state.gpr[11] & vireo_core::cpu::flags::TF);
        crate::mmu::follow_guard(cpu, from, key);
        irq_window(cpu);
    } else {
        deliverable_guard(cpu);
    }
    Ok(0)
}
fn sysenter(cpu: &mut X86Cpu, _a: &[u64]) -> Result<u64, Fault> {
    unit(fast::sysenter(cpu))
}
fn sysexit(cpu: &mut X86Cpu, a: &[u64]) -> Result<u64, Fault> {
    unit(fast::sysexit(cpu, arg(a, 0)))
}
fn swapgs(cpu: &mut X86Cpu, _a: &[u64]) -> Result<u64, Fault> {
    unit(fast::swapgs(cpu))
}
fn rd_fsgs_base(cpu: &mut X86Cpu, a: &[u64]) -> Result<u64, Fault> {
    fast::rd_fsgs_base(cpu, arg(a, 0))
}
fn wr_fsgs_base(cpu: &mut X86Cpu, a: &[u64]) -> Result<u64, Fault> {
    unit(fast::wr_fsgs_base(cpu, arg(a, 0), arg(a, 1)))
}
fn xgetbv(cpu: &mut X86Cpu, _a: &[u64]) -> Result<u64, Fault> {
    unit(control::xgetbv(cpu))
}
fn xsetbv(cpu: &mut X86Cpu, _a: &[u64]) -> Result<u64, Fault> {
    unit(control::xsetbv(cpu))
}
fn xsave_enter(cpu: &mut X86Cpu, a: &[u64]) -> Result<u64, Fault> {
    unit(crate::xsave::enter(cpu, arg(a, 0)))
}
fn xsave(cpu: &mut X86Cpu, a: &[u64]) -> Result<u64, Fault> {
    let f = arg(a, 2);
    unit(crate::xsave::xsave(
        cpu,
        arg(a, 0),
        arg(a, 1),
        f & 1 != 0,
        f & 2 != 0,
    ))
}
fn cache_flush(cpu: &mut X86Cpu, _a: &[u64]) -> Result<u64, Fault> {
    unit(control::cache_flush(cpu))
}
fn rep_string(cpu: &mut X86Cpu, a: &[u64]) -> Result<u64, Fault> {
    use crate::string_ops::{rep, Kind};
    let kind = match arg(a, 1) {
        s if s < 6 => Kind::Movs {
            src_seg: s as usize,
        },
        _ => Kind::Stos,
    };
    unit(rep(cpu, kind, arg(a, 0) as usize))
}

const fn def(name: &'static str, f: HelperFn, effects: Effects) -> HelperDef {
    HelperDef { name, f, effects }
}

const ENDS: Effects = Effects {
    reads_globals: true,
    writes_globals: true,
    may_fault: true,
    ends_block: true,
};

/// XSAVE and XRSTOR: read EDX:EAX, write FPU state and memory (no IR global).
const XSAVE: Effects = Effects {
    reads_globals: true,
    writes_globals: false,
    may_fault: true,
    ends_block: false,
};

/// Indexed by `SysHelper as u16`.
pub static TABLE: &[HelperDef] = &[
    def("load_seg", load_seg, ENDS),
    def("far_jmp", far_jmp, ENDS),
    def("far_call", far_call, ENDS),
    def("far_ret", far_ret, ENDS),
    def("iret", iret, ENDS),
    def("soft_int", soft_int, ENDS),
    def("cpuid", cpuid, Effects::ALL),
    def("rdmsr", rdmsr, Effects::ALL),
    def("wrmsr", wrmsr, ENDS),
    def("rdtsc", rdtsc, Effects::ALL),
    def("rdtscp", rdtscp, Effects::ALL),
    def("mov_to_cr", mov_to_cr, ENDS),
    def("mov_from_cr", mov_from_cr, Effects::ALL),
    def("mov_to_dr", mov_to_dr, ENDS),
    def("mov_from_dr", mov_from_dr, Effects::ALL),
    def("clts", clts, ENDS),
    def("lmsw", lmsw, ENDS),
    def("load_dtr", load_dtr, Effects::ALL),
    def("store_dtr", store_dtr, Effects::ALL),
    def("lldt", lldt, Effects::ALL),
    def("ltr", ltr, Effects::ALL),
    def("store_sel", store_sel, Effects::ALL),
    def("lar_lsl", lar_lsl, Effects::ALL),
    def("verify", verify, Effects::ALL),
    def("invlpg", invlpg, ENDS),
    def("invpcid", invpcid, ENDS),
    def("in", port_in, Effects::ALL),
    def("out", port_out, Effects::ALL),
    def("hlt", hlt, ENDS),
    def("cli", cli, Effects::ALL),
    def("sti", sti, ENDS),
    def("pushf", pushf, Effects::ALL),
    def("popf", popf, ENDS),
    def("syscall", syscall, ENDS),
    def("sysret", sysret, ENDS),
    def("sysenter", sysenter, ENDS),
    def("sysexit", sysexit, ENDS),
    def("swapgs", swapgs, Effects::ALL),
    def("rdfsgsbase", rd_fsgs_base, Effects::ALL),
    def("wrfsgsbase", wr_fsgs_base, Effects::ALL),
    def("xgetbv", xgetbv, Effects::ALL),
    def("xsetbv", xsetbv, ENDS),
    def("xsave_enter", xsave_enter, XSAVE),
    def("xsave", xsave, XSAVE),
    def("cache_flush", cache_flush, Effects::ALL),
    def("rep_string", rep_string, Effects::ALL),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_matches_enum() {
        assert_eq!(TABLE.len(), SysHelper::RepString as usize + 1);
        assert_eq!(TABLE[SysHelper::RepString as usize].name, "rep_string");
        assert_eq!(TABLE[SysHelper::Iret as usize].name, "iret");
        assert_eq!(TABLE[SysHelper::Sti as usize].name, "sti");
        assert_eq!(TABLE[SysHelper::Xsetbv as usize].name, "xsetbv");
        assert_eq!(TABLE[SysHelper::Xsave as usize].name, "xsave");
    }
}
