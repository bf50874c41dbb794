//! Test machinery for the system-architecture tests: a CPU on flat RAM and builders
//! for descriptors, page tables and TSSs written by hand into guest memory.

use crate::cpu::X86Cpu;
use std::sync::Arc;
use vireo_core::cpu::{ctl, flags as fl, sreg, CpuState, Segment};
use vireo_core::{A20Gate, Bus, GuestMemory, SystemBus};

/// A CPU in real mode (reset state) on 16 MiB of flat RAM.
pub fn machine() -> X86Cpu {
    let mem = Arc::new(GuestMemory::new_flat(16 << 20).expect("ram"));
    let bus = SystemBus {
        mem,
        pio: Arc::new(Bus::new("pio")),
        mmio: Arc::new(Bus::new("mmio")),
        a20: A20Gate::new(),
    };
    X86Cpu::new(bus, CpuState::reset())
}

pub fn w64(cpu: &X86Cpu, pa: u64, v: u64) {
    cpu.bus.mem.write_u64(pa, v).expect("write");
}
pub fn w32(cpu: &X86Cpu, pa: u64, v: u32) {
    cpu.bus.mem.write_u32(pa, v).expect("write");
}
pub fn w16(cpu: &X86Cpu, pa: u64, v: u16) {
    cpu.bus.mem.write_u16(pa, v).expect("write");
}
pub fn r64(cpu: &X86Cpu, pa: u64) -> u64 {
    cpu.bus.mem.read_u64(pa).expect("read")
}
pub fn r32(cpu: &X86Cpu, pa: u64) -> u32 {
    cpu.bus.mem.read_u32(pa).expect("read")
}
pub fn r16(cpu: &X86Cpu, pa: u64) -> u16 {
    cpu.bus.mem.read_u16(pa).expect("read")
}

/// A segment descriptor: `access` is the byte with P, DPL, S and type; `flags` the
/// nibble with G, D/B, L, AVL.
pub fn desc(base: u32, limit: u32, access: u8, flags: u8) -> u64 {
    let base = u64::from(base);
    let limit = u64::from(limit);
    (limit & 0xffff)
        | (base & 0xff_ffff) << 16
        | u64::from(access) << 40
        | ((limit >> 16) & 0xf) << 48
        | u64::from(flags & 0xf) << 52
        | (base >> 24) << 56
}

/// Flat 4 GiB code (32-bit) at `dpl`.
pub fn code32(dpl: u8) -> u64 {
    desc(0, 0xfffff, 0x9a | dpl << 5, 0xc)
}
/// 64-bit code at `dpl`.
pub fn code64(dpl: u8) -> u64 {
    desc(0, 0xfffff, 0x9a | dpl << 5, 0xa)
}
/// Flat 4 GiB writable data at `dpl`.
pub fn data32(dpl: u8) -> u64 {
    desc(0, 0xfffff, 0x92 | dpl << 5, 0xc)
}
/// An available 32-bit TSS.
pub fn tss32(base: u32, limit: u32) -> u64 {
    desc(base, limit, 0x89, 0)
}
/// A gate: 32-bit interrupt (0xe), trap (0xf), call (0xc), task (5) with `dpl`.
pub fn gate(sel: u16, offset: u32, kind: u8, dpl: u8, params: u8) -> u64 {
    let o = u64::from(offset);
    (o & 0xffff)
        | u64::from(sel) << 16
        | u64::from(params & 0x1f) << 32
        | u64::from(0x80 | dpl << 5 | kind) << 40
        | (o >> 16) << 48
}

pub const GDT: u64 = 0x1000;
pub const IDT: u64 = 0x2000;
pub const TSS: u64 = 0x3000;

/// Writes `entries` as the GDT at [`GDT`] and loads GDTR.
pub fn set_gdt(cpu: &mut X86Cpu, entries: &[u64]) {
    for (i, e) in entries.iter().enumerate() {
        w64(cpu, GDT + i as u64 * 8, *e);
    }
    cpu.state.gdtr.base = GDT;
    cpu.state.gdtr.limit = (entries.len() * 8 - 1) as u16;
}

/// Segment cache for selector `sel` from GDT entry `d`.
pub fn seg_of(sel: u16, d: u64) -> Segment {
    Segment::from_descriptor(sel, d | 1 << 40)
}

/// Switches `cpu` to 32-bit protected mode, CS = `cs_sel` (from the GDT), SS/DS/ES
/// = `ds_sel`, at the DPL of the code descriptor.
pub fn protected32(cpu: &mut X86Cpu, cs_sel: u16, ds_sel: u16) {
    cpu.state.cr0 = ctl::CR0_PE | ctl::CR0_ET;
    let cs = r64(cpu, GDT + u64::from(cs_sel & !7));
    let ds = r64(cpu, GDT + u64::from(ds_sel & !7));
    for r in 0..6 {
        cpu.state.seg[r] = seg_of(ds_sel, ds);
    }
    cpu.state.seg[sreg::CS] = seg_of(cs_sel, cs);
    cpu.state.rflags = fl::FIXED1;
    cpu.set_rflags(fl::FIXED1);
}
