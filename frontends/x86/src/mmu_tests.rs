//! MMU tests: page walks in every mode with A/D bits, fault error codes and CR2,
//! WP/SMEP/SMAP/NX, TLB flush semantics, page-crossing writes, A20.

use super::*;
use crate::testutil::*;
use vireo_core::cpu::ctl;

const PD: u64 = 0x10000;
const PT: u64 = 0x11000;
const P: u64 = 1;
const RW: u64 = 2;
const US: u64 = 4;
const A: u64 = 0x20;
const D: u64 = 0x40;
const PS: u64 = 0x80;
const G: u64 = 0x100;

/// 32-bit paging: 0x400000 → 0x20000 via PD[1] / PT[0]; `pde`/`pte` are flag bits.
fn legacy(pde: u64, pte: u64) -> X86Cpu {
    let mut cpu = machine();
    w32(&cpu, PD + 4, (PT | pde) as u32);
    w32(&cpu, PT, (0x20000 | pte) as u32);
    cpu.state.cr3 = PD;
    cpu.state.cr0 = ctl::CR0_PE | ctl::CR0_PG | ctl::CR0_ET;
    cpu
}

fn pf_err(r: Result<u64, Fault>) -> (u32, u64) {
    let f = r.expect_err("expected a fault");
    assert_eq!(f.vector, 14, "{f:?}");
    (f.error_code.unwrap_or(99), f.address.unwrap_or(0))
}

#[test]
fn legacy_walk_sets_accessed_then_dirty() {
    let mut cpu = legacy(P | RW | US, P | RW | US);
    w32(&cpu, 0x20010, 0xdead_beef);
    assert_eq!(
        read(&mut cpu, 0x400010, Size::B32, MmuIdx::Kernel),
        Ok(0xdead_beef)
    );
    assert_eq!(u64::from(r32(&cpu, PD + 4)) & (A | D), A);
    assert_eq!(u64::from(r32(&cpu, PT)) & (A | D), A);
    write(&mut cpu, 0x400020, 0x1234, Size::B16, MmuIdx::User).unwrap();
    assert_eq!(r16(&cpu, 0x20020), 0x1234);
    // D only on the leaf.
    assert_eq!(u64::from(r32(&cpu, PD + 4)) & (A | D), A);
    assert_eq!(u64::from(r32(&cpu, PT)) & (A | D), A | D);
}

#[test]
fn legacy_fault_codes_and_cr2_address() {
    // Not present: P=0; user write.
    let mut cpu = legacy(P | RW | US, RW | US);
    let (e, a) = pf_err(write(&mut cpu, 0x400ffc, 1, Size::B32, MmuIdx::User).map(|_| 0));
    assert_eq!((e, a), (pferr::W | pferr::U, 0x400ffc));
    // Supervisor page from user: P | U (read).
    let mut cpu = legacy(P | RW, P | RW | US);
    let (e, _) = pf_err(read(&mut cpu, 0x400000, Size::B8, MmuIdx::User));
    assert_eq!(e, pferr::P | pferr::U);
    // Read-only page, user write: P | W | U; the leaf A bit is not set on a denied access.
    let mut cpu = legacy(P | RW | US, P | US);
    let (e, _) = pf_err(write(&mut cpu, 0x400000, 1, Size::B8, MmuIdx::User).map(|_| 0));
    assert_eq!(e, pferr::P | pferr::W | pferr::U);
    assert_eq!(u64::from(r32(&cpu, PT)) & A, 0);
    assert_eq!(u64::from(r32(&cpu, PD + 4)) & A, A);
}

#[test]
fn write_protect_for_supervisor() {
    let mut cpu = legacy(P | RW, P);
    write(&mut cpu, 0x400000, 7, Size::B8, MmuIdx::Kernel).unwrap();
    assert_eq!(cpu.bus.mem.read_u8(0x20000).unwrap(), 7);
    cpu.state.cr0 |= ctl::CR0_WP;
    cpu.mmu.flush();
    let (e, _) = pf_err(write(&mut cpu, 0x400000, 1, Size::B8, MmuIdx::Kernel).map(|_| 0));
    assert_eq!(e, pferr::P | pferr::W);
}

#[test]
fn pse_large_pages_and_reserved_bit() {
    let mut cpu = legacy(P, P);
    cpu.state.cr4 = cr4::PSE;
    // 4 MiB page at 0x800000 for linear 0xc00000 (PD[3]).
    w32(&cpu, PD + 12, (0x80_0000 | P | RW | PS) as u32);
    w32(&cpu, 0x80_1234, 0x5555_aaaa);
    assert_eq!(
        read(&mut cpu, 0xc0_1234, Size::B32, MmuIdx::Kernel),
        Ok(0x5555_aaaa)
    );
    assert_eq!(u64::from(r32(&cpu, PD + 12)) & A, A);
    // PSE-36: bits 20:13 give physical bits 39:32 (beyond RAM: reads all ones).
    w32(&cpu, PD + 16, (0x40_0000 | (1 << 13) | P | PS) as u32);
    assert_eq!(
        translate(&mut cpu, 0x100_0010, Access::Read, Agent::Kernel),
        Ok(0x1_0040_0010)
    );
    // Bit 21 is reserved.
    w32(&cpu, PD + 20, (0x40_0000 | (1 << 21) | P | PS) as u32);
    let (e, _) = pf_err(read(&mut cpu, 0x140_0000, Size::B8, MmuIdx::Kernel));
    assert_eq!(e, pferr::P | pferr::RSVD);
    // Without CR4.PSE the PS bit is ignored: PD[3] is a page table at 0x800000.
    cpu.state.cr4 = 0;
    cpu.mmu.flush();
    w32(&cpu, 0x80_0000, (0x30000 | P) as u32);
    assert_eq!(
        translate(&mut cpu, 0xc0_0004, Access::Read, Agent::Kernel),
        Ok(0x30004)
    );
}

/// PAE: PDPT at 0x10000, PD at 0x11000, PT at 0x12000; 0x40201000 → 0x20000.
fn pae(pte: u64) -> X86Cpu {
    let mut cpu = machine();
    w64(&cpu, 0x10000 + 8, 0x11000 | P);
    w64(&cpu, 0x11000 + 8, 0x12000 | P | RW | US);
    w64(&cpu, 0x12000 + 8, 0x20000 | pte);
    cpu.state.cr3 = 0x10000;
    cpu.state.cr4 = cr4::PAE;
    cpu.state.cr0 = ctl::CR0_PE | ctl::CR0_PG | ctl::CR0_ET;
    cpu
}

#[test]
fn pae_walk_nx_and_reserved() {
    let mut cpu = pae(P | RW | US | PTE_NX);
    // NXE off: bit 63 is reserved.
    let (e, _) = pf_err(read(&mut cpu, 0x4020_1000, Size::B8, MmuIdx::Kernel));
    assert_eq!(e, pferr::P | pferr::RSVD);
    cpu.state.efer = ctl::EFER_NXE;
    cpu.mmu.flush();
    assert!(read(&mut cpu, 0x4020_1000, Size::B8, MmuIdx::Kernel).is_ok());
    let mut b = [0u8; 1];
    let f = fetch(&mut cpu, 0x4020_1000, &mut b).unwrap_err();
    assert_eq!(f.error_code, Some(pferr::P | pferr::ID));
    assert_eq!(f.address, Some(0x4020_1000));
    // Physical address above MAXPHYADDR: reserved.
    w64(&cpu, 0x12000 + 16, (1 << 45) | P);
    let (e, _) = pf_err(read(&mut cpu, 0x4020_2000, Size::B8, MmuIdx::Kernel));
    assert_eq!(e, pferr::P | pferr::RSVD);
    // PDPTE reserved bits.
    w64(&cpu, 0x10000 + 16, 0x11000 | P | 0x4);
    let (e, _) = pf_err(read(&mut cpu, 0x8000_0000, Size::B8, MmuIdx::Kernel));
    assert_eq!(e, pferr::P | pferr::RSVD);
    // Not-present PDPTE.
    let (e, a) = pf_err(read(&mut cpu, 0xc000_0000, Size::B8, MmuIdx::User));
    assert_eq!((e, a), (pferr::U, 0xc000_0000));
}

/// 4-level: PML4 0x10000, PDPT 0x11000, PD 0x12000, PT 0x13000.
/// 0x7f_8040_3000 → 0x20000 (4 KiB), 0x7f_8060_0000 → 2 MiB page at 0x400000,
/// 0x7f_c000_0000 → 1 GiB page at 0.
fn long4() -> X86Cpu {
    let mut cpu = machine();
    let la: u64 = 0x7f_8040_3000;
    let i4 = (la >> 39) & 511;
    let i3 = (la >> 30) & 511;
    let i2 = (la >> 21) & 511;
    let i1 = (la >> 12) & 511;
    w64(&cpu, 0x10000 + i4 * 8, 0x11000 | P | RW | US);
    w64(&cpu, 0x11000 + i3 * 8, 0x12000 | P | RW | US);
    w64(&cpu, 0x12000 + i2 * 8, 0x13000 | P | RW | US);
    w64(&cpu, 0x13000 + i1 * 8, 0x20000 | P | RW | US);
    w64(&cpu, 0x12000 + (i2 + 1) * 8, 0x40_0000 | P | RW | PS);
    w64(&cpu, 0x11000 + (i3 + 1) * 8, P | RW | PS | G);
    cpu.state.cr3 = 0x10000;
    cpu.state.cr4 = cr4::PAE;
    cpu.state.efer = ctl::EFER_LME | ctl::EFER_LMA | ctl::EFER_NXE;
    cpu.state.cr0 = ctl::CR0_PE | ctl::CR0_PG | ctl::CR0_ET;
    cpu
}

#[test]
fn long_mode_walks() {
    let mut cpu = long4();
    write(
        &mut cpu,
        0x7f_8040_3008,
        0x1122_3344_5566_7788,
        Size::B64,
        MmuIdx::User,
    )
    .unwrap();
    assert_eq!(r64(&cpu, 0x20008), 0x1122_3344_5566_7788);
    // A on every level, D on the leaf only.
    let la: u64 = 0x7f_8040_3000;
    assert_eq!(r64(&cpu, 0x10000 + ((la >> 39) & 511) * 8) & (A | D), A);
    assert_eq!(r64(&cpu, 0x11000 + ((la >> 30) & 511) * 8) & (A | D), A);
    assert_eq!(r64(&cpu, 0x12000 + ((la >> 21) & 511) * 8) & (A | D), A);
    assert_eq!(r64(&cpu, 0x13000 + ((la >> 12) & 511) * 8) & (A | D), A | D);
    // 2 MiB and 1 GiB pages.
    assert_eq!(
        translate(&mut cpu, 0x7f_8061_2345, Access::Read, Agent::Kernel),
        Ok(0x41_2345)
    );
    assert_eq!(
        translate(&mut cpu, 0x7f_c012_3456, Access::Read, Agent::Kernel),
        Ok(0x12_3456)
    );
    // The 2 MiB page is supervisor-only.
    let (e, _) = pf_err(read(&mut cpu, 0x7f_8060_0000, Size::B8, MmuIdx::User));
    assert_eq!(e, pferr::P | pferr::U);
    // Non-canonical: #GP(0).
    let f = read(&mut cpu, 0x8000_0000_0000, Size::B8, MmuIdx::Kernel).unwrap_err();
    assert_eq!((f.vector, f.error_code), (13, Some(0)));
    // Not present with the fetch bit (NXE on).
    let mut b = [0u8; 4];
    let f = fetch(&mut cpu, 0x1000, &mut b).unwrap_err();
    assert_eq!((f.error_code, f.address), (Some(pferr::ID), Some(0x1000)));
    // PS in a PML4E is reserved.
    w64(&cpu, 0x10000 + 8, 0x11000 | P | PS);
    let (e, _) = pf_err(read(&mut cpu, 0x80_0000_0000, Size::B8, MmuIdx::Kernel));
    assert_eq!(e, pferr::P | pferr::RSVD);
}

#[test]
fn smep_and_smap() {
    let mut cpu = long4();
    let la = 0x7f_8040_3000;
    cpu.state.cr4 |= cr4::SMEP | cr4::SMAP;
    let mut b = [0u8; 1];
    // Supervisor fetch from a user page.
    let f = fetch(&mut cpu, la, &mut b).unwrap_err();
    assert_eq!(f.error_code, Some(pferr::P | pferr::ID));
    // Supervisor data access with AC = 0.
    let (e, _) = pf_err(read(&mut cpu, la, Size::B8, MmuIdx::Kernel));
    assert_eq!(e, pferr::P);
    // AC = 1 allows explicit accesses, not implicit ones.
    cpu.state.rflags |= vireo_core::cpu::flags::AC;
    assert!(read(&mut cpu, la, Size::B8, MmuIdx::Kernel).is_ok());
    assert!(write(&mut cpu, la, 1, Size::B8, MmuIdx::Kernel).is_ok());
    let f = read_sys(&mut cpu, la, 8).unwrap_err();
    assert_eq!(f.error_code, Some(pferr::P));
    // Later accesses with AC = 1 take the fast TLB's table for that state...
    let hits = cpu.mmu.fast.hits;
    assert!(read(&mut cpu, la, Size::B8, MmuIdx::Kernel).is_ok());
    assert!(write(&mut cpu, la, 2, Size::B8, MmuIdx::Kernel).is_ok());
    assert_eq!(cpu.mmu.fast.hits, hits + 2);
    // ... and none of those entries outlives AC.
    cpu.state.rflags &= !vireo_core::cpu::flags::AC;
    let (e, _) = pf_err(read(&mut cpu, la, Size::B8, MmuIdx::Kernel));
    assert_eq!(e, pferr::P);
    let (e, _) = pf_err(write(&mut cpu, la, 1, Size::B8, MmuIdx::Kernel).map(|_| 0));
    assert_eq!(e, pferr::P | pferr::W);
    // User code is unaffected.
    assert!(fetch(&mut cpu, la, &mut b).is_err());
    cpu.state.seg[1].dpl = 3;
    assert!(fetch(&mut cpu, la, &mut b).is_ok());
}

#[test]
fn tlb_stale_until_invlpg_and_global_pages() {
    let mut cpu = legacy(P | RW | US, P | RW | US);
    cpu.state.cr4 = cr4::PGE;
    w32(&cpu, 0x20000, 1);
    w32(&cpu, 0x30000, 2);
    // A global page at 0x401000 → 0x30000.
    w32(&cpu, PT + 4, (0x30000 | P | RW | G) as u32);
    assert_eq!(read(&mut cpu, 0x400000, Size::B32, MmuIdx::Kernel), Ok(1));
    assert_eq!(read(&mut cpu, 0x401000, Size::B32, MmuIdx::Kernel), Ok(2));
    let walks = cpu.mmu.walks;
    // Remap both pages in memory: the TLB still holds the old translations.
    w32(&cpu, PT, (0x30000 | P | RW | US) as u32);
    w32(&cpu, PT + 4, (0x20000 | P | RW | G) as u32);
    assert_eq!(read(&mut cpu, 0x400000, Size::B32, MmuIdx::Kernel), Ok(1));
    assert_eq!(cpu.mmu.walks, walks);
    // A CR3 write drops the non-global one only.
    crate::control::write_cr3(&mut cpu, PD).unwrap();
    assert_eq!(read(&mut cpu, 0x400000, Size::B32, MmuIdx::Kernel), Ok(2));
    assert_eq!(read(&mut cpu, 0x401000, Size::B32, MmuIdx::Kernel), Ok(2));
    // INVLPG drops global pages too.
    crate::control::invlpg(&mut cpu, 0x401000).unwrap();
    assert_eq!(read(&mut cpu, 0x401000, Size::B32, MmuIdx::Kernel), Ok(1));
    // Clearing CR4.PGE flushes everything.
    w32(&cpu, PT + 4, (0x30000 | P | RW | G) as u32);
    crate::control::write_cr4(&mut cpu, 0).unwrap();
    assert_eq!(read(&mut cpu, 0x401000, Size::B32, MmuIdx::Kernel), Ok(2));
}

#[test]
fn large_page_invlpg_flushes_whole_page() {
    let mut cpu = long4();
    assert!(translate(&mut cpu, 0x7f_8060_0000, Access::Read, Agent::Kernel).is_ok());
    assert!(translate(&mut cpu, 0x7f_8070_0000, Access::Read, Agent::Kernel).is_ok());
    let la: u64 = 0x7f_8060_0000;
    w64(
        &cpu,
        0x12000 + ((la >> 21) & 511) * 8,
        0x60_0000 | P | RW | PS,
    );
    // One INVLPG anywhere in the 2 MiB page drops all its 4 KiB pieces.
    cpu.mmu.flush_page(0x7f_8061_0000);
    assert_eq!(
        translate(&mut cpu, 0x7f_8070_0000, Access::Read, Agent::Kernel),
        Ok(0x70_0000)
    );
}

#[test]
fn pcid_noflush_keeps_translations() {
    let mut cpu = long4();
    cpu.state.cr4 |= cr4::PCIDE;
    cpu.state.cr3 = 0x10000 | 5;
    cpu.mmu.set_pcid(5);
    let la = 0x7f_8040_3000;
    assert_eq!(
        translate(&mut cpu, la, Access::Read, Agent::Kernel),
        Ok(0x20000)
    );
    w64(
        &cpu,
        0x13000 + ((la >> 12) & 511) * 8,
        0x30000 | P | RW | US,
    );
    // Bit 63: keep.
    crate::control::write_cr3(&mut cpu, 0x10000 | 5 | 1 << 63).unwrap();
    assert_eq!(cpu.state.cr3, 0x10005);
    assert_eq!(
        translate(&mut cpu, la, Access::Read, Agent::Kernel),
        Ok(0x20000)
    );
    // Another PCID does not see PCID 5's entries.
    crate::control::write_cr3(&mut cpu, 0x10000 | 6).unwrap();
    assert_eq!(
        translate(&mut cpu, la, Access::Read, Agent::Kernel),
        Ok(0x30000)
    );
    // Reserved CR3 bits.
    assert!(crate::control::write_cr3(&mut cpu, 1 << 50).is_err());
}

#[test]
fn crossing_write_checks_both_pages_first() {
    // 0x400000 present and writable, 0x401000 not present.
    let mut cpu = legacy(P | RW | US, P | RW | US);
    w32(&cpu, 0x20ffc, 0x1111_1111);
    let f = write(&mut cpu, 0x400ffe, 0xaabb_ccdd, Size::B32, MmuIdx::Kernel).unwrap_err();
    assert_eq!(f.address, Some(0x401000));
    assert_eq!(f.error_code, Some(pferr::W));
    assert_eq!(r32(&cpu, 0x20ffc), 0x1111_1111);
    // A crossing read assembles both pages.
    w32(&cpu, PT + 4, (0x50000 | P) as u32);
    w16(&cpu, 0x50000, 0x7788);
    assert_eq!(
        read(&mut cpu, 0x400ffe, Size::B32, MmuIdx::Kernel),
        Ok(0x7788_1111)
    );
}

#[test]
fn paging_off_a20_and_smc() {
    let mut cpu = machine();
    w32(&cpu, 0x5000, 0xabcd);
    assert_eq!(read(&mut cpu, 0x10_5000, Size::B32, MmuIdx::Kernel), Ok(0));
    cpu.bus.a20.set(false);
    // The run loop does this before each block (A20 changes through a port write,
    // which ends the block).
    sync_fast_tlb(&mut cpu);
    assert_eq!(
        read(&mut cpu, 0x10_5000, Size::B32, MmuIdx::Kernel),
        Ok(0xabcd)
    );
    assert_eq!(translate_code(&mut cpu, 0x10_5000), Ok(0x5000));
    cpu.bus.a20.set(true);
    cpu.mmu.code.watch(5, u64::MAX);
    write(&mut cpu, 0x5ffe, 0, Size::B32, MmuIdx::Kernel).unwrap();
    assert!(cpu.stop);
    assert_eq!(cpu.mmu.code.take_dirty(), vec![(0x5ffe, 2)]);
    // Outside RAM: reads float high, writes vanish.
    assert_eq!(
        read(&mut cpu, 0x2000_0000, Size::B16, MmuIdx::Kernel),
        Ok(0xffff)
    );
    assert!(write(&mut cpu, 0x2000_0000, 1, Size::B8, MmuIdx::Kernel).is_ok());
}

#[test]
fn code_watch_bitmap() {
    let mut w = CodeWatch::default();
    assert!(!w.is_watched(3));
    w.watch(3, u64::MAX);
    w.watch(1 << 30, u64::MAX);
    assert!(w.is_watched(3) && w.is_watched(1 << 30));
    assert!(w.note_write(0x3000, 4));
    assert!(!w.note_write(0x4000, 4));
    assert!(w.note_write((1 << 42) + 0xffc, 4));
    w.unwatch(3);
    assert!(!w.is_watched(3));
}

#[test]
fn code_watch_chunks() {
    assert_eq!(CodeWatch::chunks(0, 0xfff), u64::MAX);
    assert_eq!(CodeWatch::chunks(0x40, 0x7f), 0b10);
    assert_eq!(CodeWatch::chunks(0x3f, 0x40), 0b11);
    assert_eq!(CodeWatch::chunks(0xfc0, 0xfff), 1 << 63);
    // Code at 0x100..0x17f (chunks 4 and 5) of page 3.
    let mut w = CodeWatch::default();
    w.watch(3, CodeWatch::chunks(0x100, 0x17f));
    // Writes beside it are no code writes; one byte of it is.
    assert!(!w.note_write(0x30fc, 4));
    assert!(!w.note_write(0x3180, 8));
    assert!(w.take_dirty().is_empty());
    assert!(w.note_write(0x30fe, 4));
    // The next bytes (a string copy) extend the range; other bytes make another.
    assert!(w.note_write(0x3102, 4));
    assert!(w.note_write(0x3170, 1));
    assert_eq!(w.take_dirty(), vec![(0x30fe, 8), (0x3170, 1)]);
    // More code on the page adds chunks; replacing them drops the old ones.
    w.watch(3, CodeWatch::chunks(0x800, 0x801));
    assert!(w.note_write(0x3800, 1) && w.note_write(0x3100, 1));
    w.set_chunks(3, CodeWatch::chunks(0x800, 0x801));
    assert!(!w.note_write(0x3100, 1));
}

#[test]
fn fast_tlb_serves_repeated_accesses() {
    let mut cpu = legacy(P | RW | US, P | RW | US);
    w32(&cpu, 0x20010, 0x1234_5678);
    assert_eq!(
        read(&mut cpu, 0x400010, Size::B32, MmuIdx::User),
        Ok(0x1234_5678)
    );
    let (fills, hits) = (cpu.mmu.fast.fills, cpu.mmu.fast.hits);
    assert_eq!(
        read(&mut cpu, 0x400012, Size::B16, MmuIdx::User),
        Ok(0x1234)
    );
    assert_eq!(cpu.mmu.fast.hits, hits + 1);
    // Reads do not open the page for writes: the first write takes the slow path
    // (setting D), later ones hit.
    write(
        &mut cpu,
        0x400ff8,
        0x0102_0304_0506_0708,
        Size::B64,
        MmuIdx::User,
    )
    .unwrap();
    assert_eq!(u64::from(r32(&cpu, PT)) & D, D);
    assert_eq!(cpu.mmu.fast.fills, fills + 1);
    write(&mut cpu, 0x400ffc, 0xaabb_ccdd, Size::B32, MmuIdx::User).unwrap();
    assert_eq!(cpu.mmu.fast.hits, hits + 2);
    assert_eq!(r64(&cpu, 0x20ff8), 0xaabb_ccdd_0506_0708);
    // The supervisor table is separate, and an access crossing the page misses.
    assert_eq!(
        read(&mut cpu, 0x400010, Size::B32, MmuIdx::Kernel),
        Ok(0x1234_5678)
    );
    assert_eq!(cpu.mmu.fast.hits, hits + 2);
    let _ = read(&mut cpu, 0x400ffe, Size::B32, MmuIdx::User);
    assert_eq!(cpu.mmu.fast.hits, hits + 2);
}

#[test]
fn fast_tlb_gives_way_to_code_pages_and_remaps() {
    let mut cpu = legacy(P | RW | US, P | RW | US);
    write(&mut cpu, 0x400000, 1, Size::B32, MmuIdx::Kernel).unwrap();
    write(&mut cpu, 0x400004, 2, Size::B32, MmuIdx::Kernel).unwrap();
    let hits = cpu.mmu.fast.hits;
    assert!(hits > 0 && !cpu.stop);
    // Code is translated from the page: its writes are seen again (the run loop syncs
    // before each block).
    cpu.mmu.code.watch(0x20, u64::MAX);
    sync_fast_tlb(&mut cpu);
    write(&mut cpu, 0x400008, 3, Size::B32, MmuIdx::Kernel).unwrap();
    assert!(cpu.stop);
    assert_eq!(cpu.mmu.code.take_dirty(), vec![(0x20008, 4)]);
    assert_eq!(cpu.mmu.fast.hits, hits);
    // Reads still hit.
    assert_eq!(read(&mut cpu, 0x400008, Size::B32, MmuIdx::Kernel), Ok(3));
    assert_eq!(cpu.mmu.fast.hits, hits + 1);
    // Remapped and INVLPG'd: the new page.
    w32(&cpu, 0x30000, 0x77);
    w32(&cpu, PT, (0x30000 | P | RW | US) as u32);
    crate::control::invlpg(&mut cpu, 0x400000).unwrap();
    assert_eq!(
        read(&mut cpu, 0x400000, Size::B32, MmuIdx::Kernel),
        Ok(0x77)
    );
}

/// A helper that changed the mode finds the epoch the run loop gave the new state,
/// and "none" for a state it never saw or with A20 off.
#[test]
fn the_guard_follows_the_state_through_the_recent_epochs() {
    let mut cpu = machine();
    assert!(cpu.bus.a20.enabled());
    let here = epoch_state(&cpu);
    cpu.mmu.epochs[2] = (here, 77);
    refresh_guard(&mut cpu);
    assert_eq!(cpu.mmu.jc_guard, 77);
    // Another CPL (or mode, or MMU generation): a state without an epoch.
    cpu.mmu.gen += 1;
    refresh_guard(&mut cpu);
    assert_eq!(cpu.mmu.jc_guard, u64::MAX);
    cpu.mmu.epochs[0] = (epoch_state(&cpu), 78);
    refresh_guard(&mut cpu);
    assert_eq!(cpu.mmu.jc_guard, 78);
    cpu.bus.a20.set(false);
    cpu.mmu.epochs[1] = (epoch_state(&cpu), 79);
    refresh_guard(&mut cpu);
    assert_eq!(cpu.mmu.jc_guard, u64::MAX);
}

/// A helper's mode transition reuses the epoch it found for the same transition from
/// the same epoch before, while the run loop keeps that epoch; otherwise (no epoch
/// before, another key, an epoch the run loop dropped) it works the state out anew.
#[test]
fn transitions_remember_the_epoch_they_land_in() {
    let mut cpu = machine();
    let here = epoch_state(&cpu);
    cpu.mmu.epochs[1] = (here, 40);
    follow_guard(&mut cpu, 7, 1);
    assert_eq!(cpu.mmu.jc_guard, 40);
    // The state moves on without the transition's knowing (which a caller vouches
    // never happens): the remembered epoch shows that it was not worked out anew.
    cpu.mmu.gen += 1;
    follow_guard(&mut cpu, 7, 1);
    assert_eq!(cpu.mmu.jc_guard, 40);
    // Another key or another epoch before: worked out (no epoch for this state).
    follow_guard(&mut cpu, 7, 2);
    assert_eq!(cpu.mmu.jc_guard, u64::MAX);
    follow_guard(&mut cpu, 8, 1);
    assert_eq!(cpu.mmu.jc_guard, u64::MAX);
    // No epoch before: nothing remembered or reused.
    cpu.mmu.epochs[2] = (epoch_state(&cpu), 41);
    follow_guard(&mut cpu, u64::MAX, 1);
    assert_eq!(cpu.mmu.jc_guard, 41);
    // The run loop dropped epoch 40: worked out again, and the new one remembered.
    cpu.mmu.epochs[1] = (NO_EPOCH_STATE, u64::MAX);
    follow_guard(&mut cpu, 7, 1);
    assert_eq!(cpu.mmu.jc_guard, 41);
    cpu.mmu.gen += 1;
    follow_guard(&mut cpu, 7, 1);
    assert_eq!(cpu.mmu.jc_guard, 41);
}

/// A CR3 write (with CR4.PGE: global entries stay) and a full flush drop every
/// translation filled before them, whether the TLBs logged the slots filled or gave
/// up logging (more than the log holds: a small log here), in both the softmmu and
/// the fast TLB.
#[test]
fn flushes_reach_every_filled_entry() {
    for (pages, cap) in [(6u64, None), (400, None), (400, Some(64))] {
        let mut cpu = legacy(P | RW | US, P | RW | US);
        cpu.state.cr4 |= ctl::CR4_PGE;
        if let Some(n) = cap {
            cpu.mmu.log = crate::filllog::FillLog::new(n);
            cpu.mmu.fast.set_log_cap(n);
        }
        let old = |i: u64| 0x10_0000 + i * 0x1000;
        let new = |i: u64| 0x80_0000 + i * 0x1000;
        let global = |i: u64| i.is_multiple_of(3);
        for i in 0..pages {
            let g = if global(i) { G } else { 0 };
            w32(&cpu, PT + 4 * i, (old(i) | P | RW | US | g) as u32);
            w32(&cpu, old(i), i as u32);
            w32(&cpu, new(i), 0x1000 + i as u32);
        }
        let la = |i: u64| 0x40_0000 + i * 0x1000;
        // Twice: the second pass hits the fast TLB.
        for _ in 0..2 {
            for i in 0..pages {
                assert_eq!(read(&mut cpu, la(i), Size::B32, MmuIdx::User), Ok(i));
            }
        }
        for i in 0..pages {
            let g = if global(i) { G } else { 0 };
            w32(&cpu, PT + 4 * i, (new(i) | P | RW | US | g) as u32);
        }
        cpu.mmu.flush_nonglobal();
        for i in 0..pages {
            // Global pages keep their (now stale) translation; the others walk anew.
            let want = if global(i) { i } else { 0x1000 + i };
            assert_eq!(
                read(&mut cpu, la(i), Size::B32, MmuIdx::User),
                Ok(want),
                "{pages} pages, page {i}"
            );
        }
        cpu.mmu.flush();
        for i in 0..pages {
            assert_eq!(
                read(&mut cpu, la(i), Size::B32, MmuIdx::User),
                Ok(0x1000 + i),
                "{pages} pages, page {i}, after a full flush"
            );
        }
    }
}

/// Two pages of one TLB set stay cached together (each set has two ways, the one
/// used last first); a third evicts the one used longest ago.
#[test]
fn a_tlb_set_keeps_two_pages() {
    let mut cpu = legacy(P | RW | US, P | RW | US);
    let apart = (TLB_SIZE / 2) as u64;
    for k in 0..3 {
        let i = k * apart;
        w32(
            &cpu,
            PT + 4 * i,
            (0x10_0000 + i * 0x1000) as u32 | (P | RW | US) as u32,
        );
    }
    let la = |k: u64| 0x40_0000 + k * apart * 0x1000;
    // (Kernel reads: the walk counter counts the softmmu's walks; the fast TLB is
    // bypassed by going through `translate`.)
    let t = |cpu: &mut X86Cpu, k: u64| translate(cpu, la(k), Access::Read, Agent::Kernel);
    t(&mut cpu, 0).unwrap();
    t(&mut cpu, 1).unwrap();
    let walks = cpu.mmu.walks;
    for _ in 0..4 {
        t(&mut cpu, 0).unwrap();
        t(&mut cpu, 1).unwrap();
    }
    assert_eq!(cpu.mmu.walks, walks, "two pages of a set");
    // Page 0 was used last (a hit, after page 1 was filled last): page 2 evicts
    // page 1.
    t(&mut cpu, 0).unwrap();
    t(&mut cpu, 2).unwrap();
    t(&mut cpu, 0).unwrap();
    assert_eq!(cpu.mmu.walks, walks + 1);
    t(&mut cpu, 1).unwrap();
    assert_eq!(cpu.mmu.walks, walks + 2);
}

/// Implicit supervisor reads (descriptor tables) go through the fast TLB's
/// supervisor table once a read filled it, see what the mapping shows until it is
/// flushed, never take entries made while RFLAGS.AC opened SMAP, and fault as
/// before on pages a supervisor may not read.
#[test]
fn implicit_reads_take_the_supervisor_fast_table() {
    let mut cpu = legacy(P | RW, P | RW);
    w64(&cpu, 0x20010, 0x1122_3344_5566_7788);
    w64(&cpu, 0x30010, 0x99);
    assert_eq!(read_sys(&mut cpu, 0x400010, 8), Ok(0x1122_3344_5566_7788));
    let (walks, hits) = (cpu.mmu.walks, cpu.mmu.fast.hits);
    assert_eq!(read_sys(&mut cpu, 0x400014, 4), Ok(0x1122_3344));
    assert_eq!(read_sys(&mut cpu, 0x400010, 2), Ok(0x7788));
    assert_eq!((cpu.mmu.walks, cpu.mmu.fast.hits), (walks, hits + 2));
    // A remap shows after the flush that makes it visible.
    w32(&cpu, PT, (0x30000 | P | RW) as u32);
    assert_eq!(read_sys(&mut cpu, 0x400010, 8), Ok(0x1122_3344_5566_7788));
    crate::control::invlpg(&mut cpu, 0x400000).unwrap();
    assert_eq!(read_sys(&mut cpu, 0x400010, 8), Ok(0x99));
    // A page crossing reads both pages (the second not mapped: #PF at it).
    let (_, at) = pf_err(read_sys(&mut cpu, 0x400ffc, 8));
    assert_eq!(at, 0x401000);

    // A user page under SMAP: an explicit read with AC set fills its own table,
    // which implicit reads never take.
    let mut cpu = legacy(P | RW | US, P | RW | US);
    cpu.state.cr4 |= cr4::SMAP;
    cpu.state.rflags |= vireo_core::cpu::flags::AC;
    assert!(read(&mut cpu, 0x400010, Size::B64, MmuIdx::Kernel).is_ok());
    assert!(read(&mut cpu, 0x400010, Size::B64, MmuIdx::Kernel).is_ok());
    let (e, _) = pf_err(read_sys(&mut cpu, 0x400010, 8));
    assert_eq!(e, pferr::P);
    let (e, _) = pf_err(read_sys(&mut cpu, 0x400010, 8));
    assert_eq!(e, pferr::P);
}

/// 4-level walks within one 2 MiB region read the upper levels once: later walks
/// start at the page table; an invalidation (INVLPG of any page, a CR3 write) makes
/// the next walk read a changed PDE, and so does a page fault in the region (as on
/// hardware: a change without a flush costs at most one spurious fault).
#[test]
fn walks_within_a_2mib_region_start_at_its_page_table() {
    let mut cpu = long4();
    let la: u64 = 0x7f_8040_3000;
    let (i2, i1) = ((la >> 21) & 511, (la >> 12) & 511);
    let kernel_read = |cpu: &mut X86Cpu, la| translate(cpu, la, Access::Read, Agent::Kernel);
    assert_eq!(kernel_read(&mut cpu, la), Ok(0x20000));
    let (walks, hits) = (cpu.mmu.walks, cpu.mmu.walk_cache.hits);
    assert_eq!(pf_err(kernel_read(&mut cpu, la + 0x1000)).0, 0);
    w64(&cpu, 0x13000 + (i1 + 1) * 8, 0x21000 | P | RW | US);
    assert_eq!(kernel_read(&mut cpu, la + 0x1000), Ok(0x21000));
    // User permission from the cached levels, write permission from the leaf.
    assert_eq!(
        translate(&mut cpu, la + 0x1008, Access::Write, Agent::User),
        Ok(0x21008)
    );
    // The fault (from the cache) emptied the region's entry: the next walk read
    // all four levels, the one after it the page table only.
    assert_eq!(cpu.mmu.walks - walks, 3);
    assert_eq!(cpu.mmu.walk_cache.hits - hits, 2);

    // The PDE now points at another page table, where the third page is mapped.
    w64(&cpu, 0x14000 + (i1 + 2) * 8, 0x30000 | P | RW | US);
    w64(&cpu, 0x12000 + i2 * 8, 0x14000 | P | RW | US | A);
    cpu.mmu.flush_page(0x1234_5000);
    assert_eq!(kernel_read(&mut cpu, la + 0x2000), Ok(0x30000));
    // And back, the fourth page mapped in the first table: a CR3 write.
    w64(&cpu, 0x13000 + (i1 + 3) * 8, 0x31000 | P | RW | US);
    w64(&cpu, 0x12000 + i2 * 8, 0x13000 | P | RW | US | A);
    crate::control::write_cr3(&mut cpu, 0x10000).unwrap();
    assert_eq!(kernel_read(&mut cpu, la + 0x3000), Ok(0x31000));
    // The PDE moved again with no invalidation, the fifth page mapped only in the
    // new table: the walk from the cache faults (spuriously), the retry finds it.
    w64(&cpu, 0x14000 + (i1 + 4) * 8, 0x32000 | P | RW | US);
    w64(&cpu, 0x12000 + i2 * 8, 0x14000 | P | RW | US | A);
    assert_eq!(pf_err(kernel_read(&mut cpu, la + 0x4000)).0, 0);
    assert_eq!(kernel_read(&mut cpu, la + 0x4000), Ok(0x32000));
}
