//! The x86 CPU as the TCG engine runs it.

use crate::flags::{self, ARITH, CC_EFLAGS};
use vireo_core::cpu::{flags as fl, CpuState};
use vireo_core::exec::{DirectGlobals, FastTlbLayout, Fault, GuestEnv, InsnHooks};
use vireo_core::ir::{Global, HelperId, MmuIdx, Size};
use vireo_core::SystemBus;

/// Lazy arithmetic flags (see [`crate::flags`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LazyFlags {
    pub op: u64,
    pub dst: u64,
    pub src: u64,
    pub src2: u64,
}

/// One x86 CPU under TCG.
///
/// `repr(C)`, in this order: the fields compiled code touches most (lazy flags,
/// the instruction hooks, the stop request, then the guest registers at the start of
/// [`CpuState`]) lie within 128 bytes of [`DirectGlobals::hot_offset`], where the
/// JIT reaches them with one-byte displacements. Aligned to a cache line, so that
/// where the struct lands (which moved with the size of its neighbours in `TcgVcpu`)
/// does not decide how many lines those fields and each fast-TLB entry span: the ALU
/// and memory kernels ran 4-8% slower in one placement than in another.
#[repr(C, align(64))]
pub struct X86Cpu {
    pub cc: LazyFlags,
    /// PC (relative to CS) of the instruction being executed: helpers that fault
    /// report it.
    pub insn_pc: u64,
    /// Guest instructions executed, kept by the run loop (the default TSC source).
    pub icount: u64,
    /// Stop the current block at the next instruction boundary.
    pub stop: bool,
    /// The run loop took an interrupt request while the CPU could not take it (IF
    /// clear, or the interrupt shadow) and let compiled code chain on meanwhile.
    pub irq_deferred: bool,
    /// A chain guard: an instruction whose block chains on (SYSRET, IRET) set IF
    /// while a request was deferred, or may have unblocked a pending NMI, so compiled
    /// code must return to the run loop to deliver it. The run loop clears it.
    pub irq_window: bool,
    /// Architectural state. While the CPU runs, the arithmetic bits of
    /// `state.rflags` are stale: [`X86Cpu::cc`] holds them (use [`X86Cpu::rflags`]).
    pub state: CpuState,
    pub bus: SystemBus,
    /// Softmmu state (TLB).
    pub mmu: crate::mmu::Mmu,
    /// The CPUID model (what the guest is told this CPU implements).
    pub cpuid: crate::cpuid::CpuidModel,
    /// MSRs not carried in [`CpuState`] (MTRRs, TSC offset...).
    pub msrs: crate::msr::MsrExtra,
    /// The TSC's time source: a monotonic counter the TSC is derived from (TSC =
    /// source + offset, the offset moved by writes to IA32_TSC). `None` uses
    /// [`X86Cpu::icount`]. The run loop may install e.g. the virtual clock in TSC ticks.
    pub tsc_source: Option<crate::msr::TscSource>,
    /// Set by a helper whose fault belongs to a different instruction than the one
    /// running (a fault in the new task after a task switch): the return address
    /// [`X86Cpu::deliver_exception`] pushes instead of its `insn_pc`.
    pub fault_pc: Option<u64>,
    /// This CPU's local APIC, if the engine attached one ([`crate::apic`]).
    pub apic: Option<Box<dyn crate::apic::LocalApicPort>>,
    /// The physical page the APIC's registers are decoded at (cached from it).
    pub(crate) apic_page: Option<u64>,
    /// PAUSE ends its block with a `Pause` exit, which gives the run loop the chance
    /// to let another vCPU run (a spin-wait waits for it); clear, it is a plain
    /// jump to the next instruction, which compiled code chains through. Blocks
    /// translated under one setting are not valid under the other.
    pub pause_exits: bool,
}

impl X86Cpu {
    pub fn new(bus: SystemBus, state: CpuState) -> X86Cpu {
        let mut cpu = X86Cpu {
            state: CpuState::default(),
            cc: LazyFlags::default(),
            bus,
            mmu: crate::mmu::Mmu::default(),
            insn_pc: 0,
            stop: false,
            irq_deferred: false,
            irq_window: false,
            cpuid: crate::cpuid::CpuidModel::default(),
            msrs: crate::msr::MsrExtra::default(),
            tsc_source: None,
            icount: 0,
            fault_pc: None,
            apic: None,
            apic_page: None,
            pause_exits: true,
        };
        cpu.set_state(state);
        cpu
    }

    /// The complete RFLAGS, lazy flags evaluated.
    pub fn rflags(&self) -> u64 {
        (self.state.rflags & !ARITH)
            | flags::compute(self.cc.op, self.cc.dst, self.cc.src, self.cc.src2)
            | fl::FIXED1
    }

    /// Replaces RFLAGS (arithmetic bits go to the lazy flags as `Eflags`).
    pub fn set_rflags(&mut self, v: u64) {
        self.state.rflags = (v & !ARITH) | fl::FIXED1;
        self.cc = LazyFlags {
            op: CC_EFLAGS,
            src: v & ARITH,
            ..LazyFlags::default()
        };
    }

    /// The architectural state with RFLAGS complete (`msr.tsc` the current TSC, and with
    /// an APIC attached, `msr.apic_base` and `cr8` the APIC's).
    pub fn state(&self) -> CpuState {
        let mut s = self.state.clone();
        s.rflags = self.rflags();
        s.msr.tsc = self.tsc();
        if let Some(a) = &self.apic {
            s.msr.apic_base = a.apic_base();
            s.cr8 = u64::from(a.tpr() >> 4);
        }
        s
    }

    /// Loads a complete architectural state (flushes the TLB; the TSC continues from
    /// `msr.tsc`; an attached APIC takes `msr.apic_base` and the TPR from `cr8`).
    pub fn set_state(&mut self, s: CpuState) {
        let rflags = s.rflags;
        let tsc = s.msr.tsc;
        self.state = s;
        self.set_rflags(rflags);
        self.set_tsc(tsc);
        self.mmu.flush();
        self.mmu.set_pcid(self.current_pcid());
        if let Some(a) = &self.apic {
            a.load_apic_base(self.state.msr.apic_base);
            a.set_tpr(((self.state.cr8 & 0xf) as u8) << 4);
        }
        self.refresh_apic();
    }

    /// The PCID translations are tagged with (CR3[11:0] under CR4.PCIDE).
    pub fn current_pcid(&self) -> u16 {
        if self.state.cr4 & crate::mmu::cr4::PCIDE != 0 {
            (self.state.cr3 & 0xfff) as u16
        } else {
            0
        }
    }

    /// Protected mode (CR0.PE) and not virtual-8086.
    pub fn protected(&self) -> bool {
        self.state.cr0 & vireo_core::cpu::ctl::CR0_PE != 0 && self.state.rflags & fl::VM == 0
    }

    /// Virtual-8086 mode.
    pub fn v86(&self) -> bool {
        self.state.cr0 & vireo_core::cpu::ctl::CR0_PE != 0 && self.state.rflags & fl::VM != 0
    }

    /// 64-bit mode (long mode with a 64-bit code segment).
    pub fn long64(&self) -> bool {
        self.state.long_mode() && self.state.seg[vireo_core::cpu::sreg::CS].l
    }

    /// I/O privilege level.
    pub fn iopl(&self) -> u8 {
        ((self.state.rflags >> 12) & 3) as u8
    }

    /// The MMU index of data accesses at the current privilege level.
    pub fn mmu_idx(&self) -> MmuIdx {
        if self.state.cpl() == 3 {
            MmuIdx::User
        } else {
            MmuIdx::Kernel
        }
    }
}

impl GuestEnv for X86Cpu {
    fn get(&mut self, g: Global) -> u64 {
        match g {
            Global::Gpr(n) => self.state.gpr[usize::from(n & 15)],
            Global::Pc => self.state.rip,
            Global::CcOp => self.cc.op,
            Global::CcDst => self.cc.dst,
            Global::CcSrc => self.cc.src,
            Global::CcSrc2 => self.cc.src2,
            Global::Flags => self.state.rflags & !ARITH,
            Global::SegBase(n) => self.state.seg[usize::from(n % 6)].base,
            Global::Xmm(n) => {
                let (r, h) = (usize::from(n / 2 % 16), usize::from(n % 2) * 8);
                let mut q = [0u8; 8];
                q.copy_from_slice(&self.state.fpu.xmm[r][h..h + 8]);
                u64::from_le_bytes(q)
            }
        }
    }

    fn set(&mut self, g: Global, v: u64) {
        match g {
            Global::Gpr(n) => self.state.gpr[usize::from(n & 15)] = v,
            Global::Pc => self.state.rip = v,
            Global::CcOp => self.cc.op = v,
            Global::CcDst => self.cc.dst = v,
            Global::CcSrc => self.cc.src = v,
            Global::CcSrc2 => self.cc.src2 = v,
            Global::Flags => {
                self.state.rflags = (self.state.rflags & ARITH) | (v & !ARITH) | fl::FIXED1
            }
            Global::SegBase(n) => self.state.seg[usize::from(n % 6)].base = v,
            Global::Xmm(n) => {
                let (r, h) = (usize::from(n / 2 % 16), usize::from(n % 2) * 8);
                self.state.fpu.xmm[r][h..h + 8].copy_from_slice(&v.to_le_bytes());
            }
        }
    }

    fn load(&mut self, addr: u64, size: Size, mmu: MmuIdx, write: bool) -> Result<u64, Fault> {
        if write {
            crate::mmu::read_for_write(self, addr, size, mmu)
        } else {
            crate::mmu::read(self, addr, size, mmu)
        }
    }

    fn store(&mut self, addr: u64, val: u64, size: Size, mmu: MmuIdx) -> Result<(), Fault> {
        crate::mmu::write(self, addr, val, size, mmu)
    }

    fn call(&mut self, h: HelperId, args: &[u64]) -> Result<u64, Fault> {
        crate::helpers::call(self, h, args)
    }

    fn stop_requested(&mut self) -> bool {
        self.stop
    }

    /// Also counts the instruction in [`X86Cpu::icount`] (the default TSC source), so
    /// that RDTSC sees every instruction started before it, within a block too.
    fn insn_start(&mut self, pc: u64) {
        self.insn_pc = pc;
        self.icount = self.icount.wrapping_add(1);
    }
}

// SAFETY: every offset is that of a plain `u64` field of `X86Cpu` that `get`/`set`
// read and write as is (GPRs, RIP, the lazy-flag quadruple, the segment bases; not
// `Flags`, which `set` masks), or of eight bytes of an XMM register that they read
// and write as a little-endian `u64` (generated code, on x86-64, accesses them with
// plain 64-bit moves, for which alignment does not matter); `stop` is the `bool` `stop_requested` returns, and
// `insn_start` does exactly: `insn_pc = pc; icount += 1` (wrapping); `stop` is
// raised only inside the environment's methods (a store that hits code, a port
// write), and `insn_pc`/`icount` are read only by them (helpers, exception
// delivery, RDTSC) and by the run loop between blocks. The fast TLB
// is `mmu.fast`, whose entries hold exactly what the contract asks (see
// `crate::fasttlb`: entries only for whole RAM/ROM pages of the guest memory the TLB
// keeps alive, write tags only for RAM pages without code, and `load`/`store` take
// the same entries first). The chain guards are the `bool` interrupt shadow (set by
// the STI, MOV/POP SS and segment-load helpers) and `irq_window` (set by the SYSRET and
// IRET helpers): no load or store sets either. The
// indirect guard is `mmu.jc_guard`: any TLB flush sets it to `u64::MAX`, and the run
// loop sets it to an epoch that changes with the mode, CPL, MMU generation and A20;
// the mode and CPL change only through exits other than `Jump`/`Indirect`, or in
// SYSCALL, whose helper then sets the guard to the epoch of the new state
// (`mmu::refresh_guard`, from the run loop's recent epochs) (far
// transfers that exit `Indirect`, in real and V86 mode, change only the CS base,
// which lookups compare separately).
unsafe impl DirectGlobals for X86Cpu {
    fn global_offset(g: Global) -> Option<usize> {
        use std::mem::{offset_of, size_of};
        let state = offset_of!(X86Cpu, state);
        let cc = offset_of!(X86Cpu, cc);
        Some(match g {
            Global::Gpr(n) if n < 16 => state + offset_of!(CpuState, gpr) + 8 * usize::from(n),
            Global::Pc => state + offset_of!(CpuState, rip),
            Global::CcOp => cc + offset_of!(LazyFlags, op),
            Global::CcDst => cc + offset_of!(LazyFlags, dst),
            Global::CcSrc => cc + offset_of!(LazyFlags, src),
            Global::CcSrc2 => cc + offset_of!(LazyFlags, src2),
            Global::SegBase(n) if n < 6 => {
                state
                    + offset_of!(CpuState, seg)
                    + size_of::<vireo_core::cpu::Segment>() * usize::from(n)
                    + offset_of!(vireo_core::cpu::Segment, base)
            }
            // Little-endian bytes, as `get`/`set` read them (the JIT runs on x86-64).
            Global::Xmm(n) if n < 32 => {
                state
                    + offset_of!(CpuState, fpu)
                    + offset_of!(vireo_core::cpu::FpuState, xmm)
                    + 8 * usize::from(n)
            }
            _ => return None,
        })
    }

    fn hot_offset() -> usize {
        // The guest registers from -64, the lazy flags and hooks below them.
        std::mem::offset_of!(X86Cpu, state) + std::mem::offset_of!(CpuState, gpr) + 64
    }

    fn insn_hooks() -> Option<InsnHooks> {
        Some(InsnHooks {
            stop: std::mem::offset_of!(X86Cpu, stop),
            pc: std::mem::offset_of!(X86Cpu, insn_pc),
            counter: std::mem::offset_of!(X86Cpu, icount),
        })
    }

    fn chain_guards() -> Vec<usize> {
        use std::mem::offset_of;
        vec![
            offset_of!(X86Cpu, state)
                + offset_of!(CpuState, events)
                + offset_of!(vireo_core::cpu::EventState, interrupt_shadow),
            offset_of!(X86Cpu, irq_window),
        ]
    }

    fn indirect_guard() -> Option<usize> {
        use std::mem::offset_of;
        Some(offset_of!(X86Cpu, mmu) + offset_of!(crate::mmu::Mmu, jc_guard))
    }

    fn pure_fn(h: vireo_core::ir::HelperId) -> Option<vireo_core::exec::PureFn> {
        crate::helpers::pure_fn(h)
    }

    fn env_fn(h: vireo_core::ir::HelperId) -> Option<vireo_core::exec::EnvFn<Self>> {
        use crate::helpers::sse::{fast_direct, SseHelper};
        (h == SseHelper::Fast.id()).then_some(fast_direct as _)
    }

    fn fast_tlb() -> Option<FastTlbLayout> {
        use std::mem::offset_of;
        Some(crate::fasttlb::FastTlb::layout(
            offset_of!(X86Cpu, mmu) + offset_of!(crate::mmu::Mmu, fast),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fields compiled code touches most lie within a one-byte displacement of
    /// the hot offset: all sixteen registers, RIP, the CS base, the lazy flags and
    /// the instruction hooks.
    #[test]
    fn hot_fields_are_near_the_hot_offset() {
        let hot = X86Cpu::hot_offset() as i64;
        let h = X86Cpu::insn_hooks().expect("hooks");
        let mut offs: Vec<(String, usize)> = (0..16)
            .map(Global::Gpr)
            .chain([
                Global::Pc,
                Global::SegBase(1),
                Global::CcOp,
                Global::CcDst,
                Global::CcSrc,
                Global::CcSrc2,
            ])
            .map(|g| (g.to_string(), X86Cpu::global_offset(g).expect("direct")))
            .collect();
        offs.extend([
            ("stop".into(), h.stop),
            ("pc".into(), h.pc),
            ("counter".into(), h.counter),
        ]);
        for (name, off) in offs {
            let d = off as i64 - hot;
            assert!(
                (-128..=127).contains(&d),
                "{name} at {d} from the hot offset"
            );
        }
    }

    /// The direct-access offsets name the fields `get`/`set` use.
    #[test]
    fn direct_global_offsets() {
        let mut cpu = crate::testutil::machine();
        let mut globals: Vec<Global> = (0..16).map(Global::Gpr).collect();
        globals.extend((0..6).map(Global::SegBase));
        globals.extend((0..32).map(Global::Xmm));
        globals.extend([
            Global::Pc,
            Global::CcOp,
            Global::CcDst,
            Global::CcSrc,
            Global::CcSrc2,
        ]);
        for (i, g) in globals.iter().enumerate() {
            let off = X86Cpu::global_offset(*g).expect("direct");
            let v = 0x1234_5678_0000_0000 | i as u64;
            cpu.set(*g, v);
            let base = (&raw const cpu).cast::<u8>();
            // SAFETY: the offset is inside `X86Cpu` (that is what is tested: a wrong
            // one would read another field, and the values are all different).
            let raw = unsafe { base.add(off).cast::<u64>().read_unaligned() };
            assert_eq!(raw, v, "{g}");
        }
        assert_eq!(X86Cpu::global_offset(Global::Flags), None);
        let h = X86Cpu::insn_hooks().expect("hooks");
        cpu.insn_start(0x4242);
        cpu.stop = true;
        let base = (&raw const cpu).cast::<u8>();
        // SAFETY: as above.
        let (pc, n, stop) = unsafe {
            (
                base.add(h.pc).cast::<u64>().read(),
                base.add(h.counter).cast::<u64>().read(),
                base.add(h.stop).cast::<bool>().read(),
            )
        };
        assert_eq!((pc, n, stop), (0x4242, cpu.icount, true));
    }
}
