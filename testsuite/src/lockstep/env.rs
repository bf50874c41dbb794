//! The guest environment a lockstep sequence runs in, identical for every engine:
//! memory image (page tables, GDT, IDT, TSS, exception stubs, code, data) and the
//! initial `CpuState`.
//!
//! Every run ends either at the `out` placed after the sequence or in an exception
//! stub. Stub `v` sits at `STUBS + 16 * v` and does
//! `out 0xe0, al; hlt`: the port write stops the machine, and the exception frame on
//! the kernel stack tells where and why the sequence stopped. Nothing in the stub
//! changes a register, so the registers are the sequence's.
//!
//! 64-bit layout (4 KiB pages, identity-mapped):
//!
//! | address | what | access |
//! | --- | --- | --- |
//! | 0x1000-0x4fff | PML4, PDPT, PD, PT | supervisor |
//! | 0x5000 | GDT | supervisor |
//! | 0x6000 | IDT (256 interrupt gates) | supervisor |
//! | 0x7000 | TSS (RSP0 = kernel stack top) | supervisor |
//! | 0x8000 | exception stubs | supervisor |
//! | 0xa000-0xbfff | kernel stack | supervisor |
//! | 0x10000 | code | user, read-only |
//! | 0x20000 | data (pointer register) | user, read/write |
//! | 0x30000 | user stack | user, read/write |

use super::gen::Rng;
use vireo_core::cpu::{ctl, flags, sreg, CpuState, DescriptorTable, Segment};

pub const PML4: u64 = 0x1000;
pub const GDT: u64 = 0x5000;
pub const IDT: u64 = 0x6000;
pub const TSS: u64 = 0x7000;
pub const STUBS: u64 = 0x8000;
pub const KSTACK_TOP: u64 = 0xc000;
pub const CODE: u64 = 0x10000;
pub const DATA: u64 = 0x20000;
pub const USTACK_TOP: u64 = 0x31000;
/// The port the stubs write to.
pub const STOP_PORT: u16 = 0xe0;
/// The instruction appended to every sequence. In 64-bit user mode `int3` (the stub
/// for vector 3 stops the machine); elsewhere `out 0xe0, al` (user mode runs with
/// IOPL 3). No single choice works on this host's software KVM: it cannot emulate
/// `ud2` in real mode, turns `int3` into #UD in 32-bit code (protected and
/// compatibility mode), and runs 64-bit user code natively with IOPL forced to 0.
pub fn terminator(mode: Mode, privilege: Privilege) -> &'static [u8] {
    match (mode, privilege) {
        (Mode::Long64, Privilege::User) => &[0xcc],
        _ => &[0xe6, STOP_PORT as u8],
    }
}
/// `Stop::vector` of a sequence that ran to its terminator.
pub const COMPLETED: u8 = 0xff;
/// Guest memory size for lockstep machines.
pub const MEM_SIZE: u64 = 4 << 20;
/// Bytes of the data page compared after a run.
pub const DATA_LEN: u64 = 0x1000;

const KCODE: u16 = 0x08;
const KDATA: u16 = 0x10;
const UDATA: u16 = 0x18 | 3;
const UCODE: u16 = 0x20 | 3;
const TSS_SEL: u16 = 0x28;
const KCODE32: u16 = 0x38;
const UCODE32: u16 = 0x40 | 3;

/// Processor mode of the sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Real mode (CPL 0 only; 16-bit code).
    Real,
    /// 32-bit protected mode, paging off. (This host's software KVM does not run
    /// legacy 32-bit paging, 2-level or PAE: it clears CR0.PG and shuts the guest
    /// down; 32-bit code under paging is covered by [`Mode::Compat32`].)
    Protected32,
    /// 32-bit code in long mode's compatibility mode (4-level paging, 64-bit IDT).
    Compat32,
    /// 64-bit long mode with 4-level paging.
    Long64,
}

impl Mode {
    pub fn bitness(self) -> u32 {
        match self {
            Mode::Real => 16,
            Mode::Protected32 | Mode::Compat32 => 32,
            Mode::Long64 => 64,
        }
    }
}

/// Privilege of the sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Privilege {
    User,
    Kernel,
}

/// A memory image and a start state.
#[derive(Debug, Clone)]
pub struct Setup {
    /// `(guest physical address, bytes)` to write before the run.
    pub memory: Vec<(u64, Vec<u8>)>,
    pub state: CpuState,
    /// RIP of the terminator (relative to CS).
    pub end_rip: u64,
    /// The terminator's bytes (see [`terminator`]).
    pub terminator: &'static [u8],
    /// Guest physical `[0, clear)` is zeroed before `memory` is written: everything a
    /// sequence can reach (with paging, the mapped pages; without, all of RAM: a bit
    /// offset of BT* reaches ±256 MiB), so that no run sees what an earlier run (on
    /// one engine only, when they diverged) left behind.
    pub clear: u64,
}

/// What [`Setup::clear`] covers under paging and in real mode: the system pages, code,
/// data and stack (paging), the 64 KiB segments (real mode).
pub const CLEAR_LOW: u64 = 0x40000;

const P: u64 = 1;
const RW: u64 = 2;
const US: u64 = 4;

/// The last-level page table (8-byte entries, PAE and 4-level) for 0..2 MiB: system
/// pages supervisor-only, code read-only, data and stack writable. The page tables,
/// GDT, IDT, TSS and stubs (0x1000-0x9fff) are read-only (CR0.WP is set): a kernel
/// sequence that rewrote live paging structures or descriptor tables would see
/// implementation-specific results (what the TLB and descriptor caches keep).
fn page_table(user: bool) -> Vec<u8> {
    let mut pt = vec![0u8; 4096];
    let mut map = |page: u64, flags: u64| {
        let i = (page >> 12) as usize * 8;
        pt[i..i + 8].copy_from_slice(&(page | flags).to_le_bytes());
    };
    for page in (0..0xc000).step_by(0x1000) {
        let system = (0x1000..0xa000).contains(&page);
        map(page, if system { P } else { P | RW });
    }
    let u = if user { US } else { 0 };
    map(CODE, P | u);
    map(CODE + 0x1000, P | u);
    map(DATA, P | RW | u);
    map(0x30000, P | RW | u);
    pt
}

/// The 64-bit environment for a code sequence (`int3` is appended) at `privilege`.
pub fn long_mode(rng: &mut Rng, code: &[u8], privilege: Privilege) -> Setup {
    let mut mem: Vec<(u64, Vec<u8>)> = Vec::new();
    let user = privilege == Privilege::User;

    // Page tables: PML4[0] -> PDPT[0] -> PD[0] -> PT mapping 0..2 MiB.
    let entry = |v: u64| v.to_le_bytes().to_vec();
    mem.push((PML4, entry(0x2000 | P | RW | US)));
    mem.push((0x2000, entry(0x3000 | P | RW | US)));
    mem.push((0x3000, entry(0x4000 | P | RW | US)));
    mem.push((0x4000, page_table(user)));

    // GDT: null, kernel code/data, user data/code, 64-bit TSS.
    let tss_lo = 0x67 | ((TSS & 0xff_ffff) << 16) | (0x89u64 << 40) | ((TSS >> 24) << 56);
    let gdt: [u64; 9] = [
        0,
        0x00af_9b00_0000_ffff,
        0x00cf_9300_0000_ffff,
        0x00cf_f300_0000_ffff,
        0x00af_fb00_0000_ffff,
        tss_lo,
        TSS >> 32,
        0x00cf_9b00_0000_ffff, // 32-bit kernel code (compatibility mode)
        0x00cf_fb00_0000_ffff, // 32-bit user code
    ];
    mem.push((GDT, gdt.iter().flat_map(|d| d.to_le_bytes()).collect()));

    // IDT: 256 interrupt gates to the stubs.
    let mut idt = Vec::with_capacity(256 * 16);
    for v in 0..256u64 {
        let h = STUBS + 16 * v;
        let lo =
            (h & 0xffff) | (u64::from(KCODE) << 16) | (0xeeu64 << 40) | ((h >> 16 & 0xffff) << 48);
        idt.extend_from_slice(&lo.to_le_bytes());
        idt.extend_from_slice(&(h >> 32).to_le_bytes());
    }
    mem.push((IDT, idt));

    // TSS: RSP0.
    let mut tss = vec![0u8; 0x68];
    tss[4..12].copy_from_slice(&KSTACK_TOP.to_le_bytes());
    tss[0x66..0x68].copy_from_slice(&0x68u16.to_le_bytes());
    mem.push((TSS, tss));

    common_tail(&mut mem, rng, code, terminator(Mode::Long64, privilege));

    let mut s = CpuState::reset();
    random_gprs(&mut s, rng, u64::MAX, DATA);
    s.gpr[3] = DATA; // the pointer register
    s.gpr[4] = if user {
        USTACK_TOP - 0x100
    } else {
        KSTACK_TOP - 0x100
    };
    s.rip = CODE;
    s.rflags = flags::FIXED1 | flags::IF | random_arith_flags(rng);
    s.cr0 = ctl::CR0_PE | ctl::CR0_MP | ctl::CR0_ET | ctl::CR0_NE | ctl::CR0_WP | ctl::CR0_PG;
    s.cr3 = PML4;
    s.cr4 = ctl::CR4_PAE | ctl::CR4_OSFXSR | ctl::CR4_OSXMMEXCPT;
    s.efer = ctl::EFER_LME | ctl::EFER_LMA | ctl::EFER_NXE | ctl::EFER_SCE;
    protected_segments(&mut s, user, true, 9, 16);
    let end_rip = s.rip + code.len() as u64;
    Setup {
        memory: mem,
        state: s,
        end_rip,
        terminator: terminator(Mode::Long64, privilege),
        clear: CLEAR_LOW,
    }
}

/// The environment for `mode` and `privilege` (real mode ignores the privilege).
pub fn setup(mode: Mode, privilege: Privilege, rng: &mut Rng, code: &[u8]) -> Setup {
    match mode {
        Mode::Long64 => long_mode(rng, code, privilege),
        Mode::Compat32 => {
            let mut s = long_mode(rng, code, privilege);
            // The `out` terminator replaces the `int3` long_mode appended.
            if let Some((_, c)) = s.memory.iter_mut().find(|(a, _)| *a == CODE) {
                c.truncate(code.len());
                c.extend_from_slice(terminator(Mode::Compat32, privilege));
            }
            s.state.rflags |= flags::IOPL;
            s.terminator = terminator(Mode::Compat32, privilege);
            let user = privilege == Privilege::User;
            s.state.seg[sreg::CS] =
                Segment::flat(if user { UCODE32 } else { KCODE32 }, true, false);
            s.state.seg[sreg::CS].dpl = if user { 3 } else { 0 };
            for r in s.state.gpr.iter_mut() {
                *r &= 0xffff_ffff;
            }
            s.state.gpr[3] = DATA;
            s
        }
        Mode::Protected32 => protected32(rng, code, privilege),
        Mode::Real => real_mode(rng, code),
    }
}

fn common_tail(mem: &mut Vec<(u64, Vec<u8>)>, rng: &mut Rng, code: &[u8], end: &[u8]) {
    // Stubs: out 0xe0, al; hlt.
    let mut stubs = vec![0xccu8; 256 * 16];
    for v in 0..256 {
        stubs[v * 16..v * 16 + 3].copy_from_slice(&[0xe6, STOP_PORT as u8, 0xf4]);
    }
    mem.push((STUBS, stubs));
    mem.push((KSTACK_TOP - 0x2000, vec![0; 0x2000]));
    let mut c = code.to_vec();
    c.extend_from_slice(end);
    mem.push((CODE, c));
    let data: Vec<u8> = (0..DATA_LEN).map(|_| rng.next_u64() as u8).collect();
    mem.push((DATA, data));
    mem.push((0x30000, vec![0; 0x1000]));
}

/// Random register values; half the time RSI and RDI point into the data page (an
/// offset from the data segment in real mode) and RCX is a small count, so that string
/// instructions do something other than fault.
fn random_gprs(s: &mut CpuState, rng: &mut Rng, mask: u64, data: u64) {
    for r in s.gpr.iter_mut() {
        *r = rng.value() & mask;
    }
    for r in [6, 7] {
        if rng.chance(50) {
            s.gpr[r] = data + rng.below(super::gen::DATA_WINDOW);
        }
    }
    if rng.chance(50) {
        s.gpr[1] = rng.below(64);
    }
}

fn random_arith_flags(rng: &mut Rng) -> u64 {
    // CF PF AF ZF SF OF
    rng.next_u64() & 0x8d5
}

/// Real mode: IVT at 0 pointing at the stubs (CS = 0), code at 1000:0000, data at
/// DS = 2000 with BX = 0, stack at 0000:C000.
pub fn real_mode(rng: &mut Rng, code: &[u8]) -> Setup {
    let mut mem: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut ivt = Vec::with_capacity(1024);
    for v in 0..256u64 {
        ivt.extend_from_slice(&((STUBS + 16 * v) as u16).to_le_bytes());
        ivt.extend_from_slice(&0u16.to_le_bytes());
    }
    mem.push((0, ivt));
    common_tail(
        &mut mem,
        rng,
        code,
        terminator(Mode::Real, Privilege::Kernel),
    );
    let mut s = CpuState::reset();
    random_gprs(&mut s, rng, 0xffff_ffff, 0);
    s.gpr[3] = 0; // BX: offset into the data segment
    s.gpr[4] = KSTACK_TOP - 0x100;
    s.seg[sreg::CS] = Segment::real_mode((CODE >> 4) as u16, true);
    for i in [sreg::DS, sreg::ES, sreg::FS, sreg::GS] {
        s.seg[i] = Segment::real_mode((DATA >> 4) as u16, false);
    }
    s.seg[sreg::SS] = Segment::real_mode(0, false);
    s.rip = 0;
    s.rflags = flags::FIXED1 | flags::IF | random_arith_flags(rng);
    s.cr0 = ctl::CR0_ET | ctl::CR0_NE;
    s.idtr = DescriptorTable {
        base: 0,
        limit: 0x3ff,
    };
    let end_rip = s.rip + code.len() as u64;
    Setup {
        memory: mem,
        state: s,
        end_rip,
        terminator: terminator(Mode::Real, Privilege::Kernel),
        clear: CLEAR_LOW,
    }
}

/// 32-bit protected mode, paging off (see [`Mode::Protected32`]).
pub fn protected32(rng: &mut Rng, code: &[u8], privilege: Privilege) -> Setup {
    let mut mem: Vec<(u64, Vec<u8>)> = Vec::new();
    let user = privilege == Privilege::User;
    // GDT: null, kernel code/data, user data/code (all flat 32-bit), 32-bit TSS.
    let tss = 0x67 | ((TSS & 0xff_ffff) << 16) | (0x89u64 << 40) | ((TSS >> 24) << 56);
    let gdt: [u64; 6] = [
        0,
        0x00cf_9b00_0000_ffff,
        0x00cf_9300_0000_ffff,
        0x00cf_f300_0000_ffff,
        0x00cf_fb00_0000_ffff,
        tss,
    ];
    mem.push((GDT, gdt.iter().flat_map(|d| d.to_le_bytes()).collect()));
    let mut idt = Vec::with_capacity(256 * 8);
    for v in 0..256u64 {
        let h = STUBS + 16 * v;
        let gate = (h & 0xffff) | (u64::from(KCODE) << 16) | (0xeeu64 << 40) | ((h >> 16) << 48);
        idt.extend_from_slice(&gate.to_le_bytes());
    }
    mem.push((IDT, idt));
    let mut t = vec![0u8; 0x68];
    t[4..8].copy_from_slice(&(KSTACK_TOP as u32).to_le_bytes());
    t[8..12].copy_from_slice(&u32::from(KDATA).to_le_bytes());
    t[0x66..0x68].copy_from_slice(&0x68u16.to_le_bytes());
    mem.push((TSS, t));
    common_tail(
        &mut mem,
        rng,
        code,
        terminator(Mode::Protected32, privilege),
    );

    let mut s = CpuState::reset();
    random_gprs(&mut s, rng, 0xffff_ffff, DATA);
    s.gpr[3] = DATA;
    s.gpr[4] = if user {
        USTACK_TOP - 0x100
    } else {
        KSTACK_TOP - 0x100
    };
    s.rip = CODE;
    s.rflags = flags::FIXED1 | flags::IF | flags::IOPL | random_arith_flags(rng);
    s.cr0 = ctl::CR0_PE | ctl::CR0_MP | ctl::CR0_ET | ctl::CR0_NE;
    s.cr4 = ctl::CR4_OSFXSR | ctl::CR4_OSXMMEXCPT;
    protected_segments(&mut s, user, false, 6, 8);
    let end_rip = s.rip + code.len() as u64;
    Setup {
        memory: mem,
        state: s,
        end_rip,
        terminator: terminator(Mode::Protected32, privilege),
        clear: MEM_SIZE,
    }
}

/// Flat segments for the privilege, and the GDT (`gdt_entries`), IDT (256 gates of
/// `gate_size` bytes), TSS and LDT registers of the protected-mode environments.
fn protected_segments(s: &mut CpuState, user: bool, long: bool, gdt_entries: u16, gate_size: u16) {
    let (cs, ds) = if user { (UCODE, UDATA) } else { (KCODE, KDATA) };
    for (i, seg) in s.seg.iter_mut().enumerate() {
        let code_seg = i == sreg::CS;
        *seg = Segment::flat(if code_seg { cs } else { ds }, code_seg, long);
        seg.dpl = if user { 3 } else { 0 };
    }
    s.gdtr = DescriptorTable {
        base: GDT,
        limit: gdt_entries * 8 - 1,
    };
    s.idtr = DescriptorTable {
        base: IDT,
        limit: 256 * gate_size - 1,
    };
    s.tr = Segment {
        selector: TSS_SEL,
        base: TSS,
        limit: 0x67,
        type_: 0xb,
        present: true,
        ..Segment::default()
    };
    s.ldtr = Segment {
        unusable: true,
        ..Segment::default()
    };
}

/// What a run ended with, read from the exception frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stop {
    pub vector: u8,
    pub error_code: Option<u64>,
    /// RIP pushed in the frame (the faulting instruction, or the one after a trap).
    pub rip: u64,
    pub rflags: u64,
    pub cr2: Option<u64>,
}

/// Whether exception `v` pushes an error code.
pub fn has_error_code(v: u8) -> bool {
    matches!(v, 8 | 10 | 11 | 12 | 13 | 14 | 17 | 21 | 29 | 30)
}

/// Decodes the stop from the final state: the stub the CPU stopped in gives the
/// vector, the frame at the stack pointer the rest. `read` reads guest physical memory
/// (the environments identity-map everything they use).
pub fn decode_stop(
    mode: Mode,
    setup: &Setup,
    state: &CpuState,
    read: impl Fn(u64, usize) -> Option<u64>,
) -> Option<Stop> {
    let end_rip = setup.end_rip;
    let cs_base = state.seg[sreg::CS].base;
    // At the `out` terminator, before it (KVM reports the port exit with RIP still on
    // the `out`) or after it (TCG): the sequence completed.
    let out_end = setup.terminator.len() == 2;
    if out_end && (state.rip == end_rip || state.rip == end_rip + 2) {
        return Some(Stop {
            vector: COMPLETED,
            error_code: None,
            rip: end_rip,
            rflags: state.rflags,
            cr2: None,
        });
    }
    let off = (cs_base + state.rip).checked_sub(STUBS)?;
    let vector = u8::try_from(off / 16).ok()?;
    let (width, mut sp) = match mode {
        Mode::Real => (2usize, state.seg[sreg::SS].base + (state.gpr[4] & 0xffff)),
        Mode::Protected32 => (4, state.gpr[4] & 0xffff_ffff),
        Mode::Long64 | Mode::Compat32 => (8, state.gpr[4]),
    };
    let w = width as u64;
    let error_code = if mode != Mode::Real && has_error_code(vector) {
        let e = read(sp, width)?;
        sp += w;
        Some(e)
    } else {
        None
    };
    let rip = read(sp, width)?;
    let rflags = read(sp + 2 * w, width)?;
    if !out_end && vector == 3 && rip == end_rip + 1 {
        // The `int3` terminator.
        return Some(Stop {
            vector: COMPLETED,
            error_code: None,
            rip: end_rip,
            rflags,
            cr2: None,
        });
    }
    Some(Stop {
        vector,
        error_code,
        rip,
        rflags,
        cr2: (vector == 14).then_some(state.cr2),
    })
}
