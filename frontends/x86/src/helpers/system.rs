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

use super::{HelperDef, SYSTEM_BASE};
use crate::cpu::X86Cpu;
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
    /// `(next_pc)`: INVD/WBINVD/WBNOINVD (#GP at CPL > 0; no cache to model).
    CacheFlush,
}

impl SysHelper {
    /// The IR helper id.
    pub const fn id(self) -> HelperId {
        HelperId(SYSTEM_BASE + self as u16)
    }
}

/// Raised by helpers not written yet: #UD, as for an unknown opcode.
fn not_yet(_cpu: &mut X86Cpu, _args: &[u64]) -> Result<u64, Fault> {
    Err(Fault::new(6))
}

const fn def(name: &'static str, effects: Effects) -> HelperDef {
    HelperDef {
        name,
        f: not_yet,
        effects,
    }
}

const ENDS: Effects = Effects {
    reads_globals: true,
    writes_globals: true,
    may_fault: true,
    ends_block: true,
};

/// Indexed by `SysHelper as u16`.
pub static TABLE: &[HelperDef] = &[
    def("load_seg", ENDS),
    def("far_jmp", ENDS),
    def("far_call", ENDS),
    def("far_ret", ENDS),
    def("iret", ENDS),
    def("soft_int", ENDS),
    def("cpuid", Effects::ALL),
    def("rdmsr", Effects::ALL),
    def("wrmsr", ENDS),
    def("rdtsc", Effects::ALL),
    def("rdtscp", Effects::ALL),
    def("mov_to_cr", ENDS),
    def("mov_from_cr", Effects::ALL),
    def("mov_to_dr", ENDS),
    def("mov_from_dr", Effects::ALL),
    def("clts", ENDS),
    def("lmsw", ENDS),
    def("load_dtr", Effects::ALL),
    def("store_dtr", Effects::ALL),
    def("lldt", Effects::ALL),
    def("ltr", Effects::ALL),
    def("store_sel", Effects::ALL),
    def("lar_lsl", Effects::ALL),
    def("verify", Effects::ALL),
    def("invlpg", ENDS),
    def("invpcid", ENDS),
    def("in", Effects::ALL),
    def("out", Effects::ALL),
    def("hlt", ENDS),
    def("cli", Effects::ALL),
    def("sti", ENDS),
    def("pushf", Effects::ALL),
    def("popf", ENDS),
    def("syscall", ENDS),
    def("sysret", ENDS),
    def("sysenter", ENDS),
    def("sysexit", ENDS),
    def("swapgs", Effects::ALL),
    def("rdfsgsbase", Effects::ALL),
    def("wrfsgsbase", Effects::ALL),
    def("xgetbv", Effects::ALL),
    def("xsetbv", ENDS),
    def("cache_flush", Effects::ALL),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_matches_enum() {
        assert_eq!(TABLE.len(), SysHelper::CacheFlush as usize + 1);
        assert_eq!(TABLE[SysHelper::Iret as usize].name, "iret");
        assert_eq!(TABLE[SysHelper::Sti as usize].name, "sti");
        assert_eq!(TABLE[SysHelper::Xsetbv as usize].name, "xsetbv");
    }
}
