//! The guest environment a lockstep sequence runs in, identical for every engine:
//! memory image (page tables, GDT, IDT, TSS, exception stubs, code, data) and the
//! initial `CpuState`.
//!
//! Every run ends in an exception stub: either an exception the sequence raised, or
//! the `ud2` placed after it. Stub `v` sits at `STUBS + 16 * v` and does
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

use super::gen::{Rng, DATA_WINDOW};
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
/// Guest memory size for lockstep machines.
pub const MEM_SIZE: u64 = 4 << 20;
/// Bytes of the data page compared after a run.
pub const DATA_LEN: u64 = 0x1000;

const KCODE: u16 = 0x08;
const KDATA: u16 = 0x10;
const UDATA: u16 = 0x18 | 3;
const UCODE: u16 = 0x20 | 3;
const TSS_SEL: u16 = 0x28;

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
}

/// The 64-bit environment for a code sequence (`ud2` is appended) at `privilege`.
pub fn long_mode(rng: &mut Rng, code: &[u8], privilege: Privilege) -> Setup {
    let mut mem: Vec<(u64, Vec<u8>)> = Vec::new();
    let user = privilege == Privilege::User;

    // Page tables: PML4[0] -> PDPT[0] -> PD[0] -> PT mapping 0..2 MiB.
    const P: u64 = 1;
    const RW: u64 = 2;
    const US: u64 = 4;
    let entry = |v: u64| v.to_le_bytes().to_vec();
    mem.push((PML4, entry(0x2000 | P | RW | US)));
    mem.push((0x2000, entry(0x3000 | P | RW | US)));
    mem.push((0x3000, entry(0x4000 | P | RW | US)));
    let mut pt = vec![0u8; 4096];
    let mut map = |page: u64, flags: u64| {
        let i = (page >> 12) as usize * 8;
        pt[i..i + 8].copy_from_slice(&(page | flags).to_le_bytes());
    };
    for page in (0..0xc000).step_by(0x1000) {
        map(page, P | RW);
    }
    let code_flags = if user { P | US } else { P };
    let data_flags = if user { P | RW | US } else { P | RW };
    map(CODE, code_flags);
    map(CODE + 0x1000, code_flags);
    map(DATA, data_flags);
    map(0x30000, data_flags);
    mem.push((0x4000, pt));

    // GDT: null, kernel code/data, user data/code, 64-bit TSS.
    let tss_lo = 0x67 | ((TSS & 0xff_ffff) << 16) | (0x89u64 << 40) | ((TSS >> 24) << 56);
    let gdt: [u64; 7] = [
        0,
        0x00af_9b00_0000_ffff,
        0x00cf_9300_0000_ffff,
        0x00cf_f300_0000_ffff,
        0x00af_fb00_0000_ffff,
        tss_lo,
        TSS >> 32,
    ];
    mem.push((GDT, gdt.iter().flat_map(|d| d.to_le_bytes()).collect()));

    // IDT: 256 interrupt gates to the stubs.
    let mut idt = Vec::with_capacity(256 * 16);
    for v in 0..256u64 {
        let h = STUBS + 16 * v;
        let lo =
            (h & 0xffff) | (u64::from(KCODE) << 16) | (0x8eu64 << 40) | ((h >> 16 & 0xffff) << 48);
        idt.extend_from_slice(&lo.to_le_bytes());
        idt.extend_from_slice(&(h >> 32).to_le_bytes());
    }
    mem.push((IDT, idt));

    // TSS: RSP0.
    let mut tss = vec![0u8; 0x68];
    tss[4..12].copy_from_slice(&KSTACK_TOP.to_le_bytes());
    tss[0x66..0x68].copy_from_slice(&0x68u16.to_le_bytes());
    mem.push((TSS, tss));

    // Stubs: out 0xe0, al; hlt.
    let mut stubs = vec![0xccu8; 256 * 16];
    for v in 0..256 {
        stubs[v * 16..v * 16 + 3].copy_from_slice(&[0xe6, STOP_PORT as u8, 0xf4]);
    }
    mem.push((STUBS, stubs));
    mem.push((KSTACK_TOP - 0x2000, vec![0; 0x2000]));

    // Code and data.
    let mut c = code.to_vec();
    c.extend_from_slice(&[0x0f, 0x0b]); // ud2
    mem.push((CODE, c));
    let data: Vec<u8> = (0..DATA_LEN).map(|_| rng.next_u64() as u8).collect();
    mem.push((DATA, data));
    mem.push((0x30000, vec![0; 0x1000]));

    let mut s = CpuState::reset();
    for r in s.gpr.iter_mut() {
        *r = rng.value();
    }
    s.gpr[3] = DATA; // the pointer register
    s.gpr[4] = if user {
        USTACK_TOP - 0x100
    } else {
        KSTACK_TOP - 0x100
    };
    s.rip = CODE;
    s.rflags = flags::FIXED1
        | flags::IF
        | (rng.next_u64() & crate::lockstep::gen::arch_flags(u32::MAX) & 0x8d5);
    s.cr0 = ctl::CR0_PE | ctl::CR0_MP | ctl::CR0_ET | ctl::CR0_NE | ctl::CR0_WP | ctl::CR0_PG;
    s.cr3 = PML4;
    s.cr4 = ctl::CR4_PAE | ctl::CR4_OSFXSR | ctl::CR4_OSXMMEXCPT;
    s.efer = ctl::EFER_LME | ctl::EFER_LMA | ctl::EFER_NXE | ctl::EFER_SCE;
    let (cs, ds) = if user { (UCODE, UDATA) } else { (KCODE, KDATA) };
    for (i, seg) in s.seg.iter_mut().enumerate() {
        let code_seg = i == sreg::CS;
        *seg = Segment::flat(if code_seg { cs } else { ds }, code_seg, true);
        seg.dpl = if user { 3 } else { 0 };
    }
    s.gdtr = DescriptorTable {
        base: GDT,
        limit: 7 * 8 - 1,
    };
    s.idtr = DescriptorTable {
        base: IDT,
        limit: 256 * 16 - 1,
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
    let _ = DATA_WINDOW;
    Setup {
        memory: mem,
        state: s,
    }
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

/// Decodes the stop from the final state and the kernel stack contents
/// (`kstack` = the 0x100 bytes below `KSTACK_TOP`).
pub fn decode_stop(
    final_rip: u64,
    final_rsp: u64,
    read_u64: impl Fn(u64) -> Option<u64>,
    cr2: u64,
) -> Option<Stop> {
    let off = final_rip.checked_sub(STUBS)?;
    let vector = u8::try_from(off / 16).ok()?;
    let mut sp = final_rsp;
    let error_code = if has_error_code(vector) {
        let e = read_u64(sp)?;
        sp += 8;
        Some(e)
    } else {
        None
    };
    let rip = read_u64(sp)?;
    let rflags = read_u64(sp + 16)?;
    Some(Stop {
        vector,
        error_code,
        rip,
        rflags,
        cr2: (vector == 14).then_some(cr2),
    })
}
