//! Linear → physical translation and guest memory access for the TCG engine.
//!
//! This first version handles paging-off accesses (linear = physical, with the A20
//! mask); page walks and the TLB come with the MMU work.

use crate::cpu::X86Cpu;
use vireo_core::exec::Fault;
use vireo_core::ir::{MmuIdx, Size};

/// Physical pages that hold translated code, and the ones written since the run loop
/// last looked: a write to a watched page is self-modifying code.
#[derive(Debug, Default)]
pub struct CodeWatch {
    pages: std::collections::HashSet<u64>,
    /// Watched pages written since [`CodeWatch::take_dirty`].
    dirty: Vec<u64>,
}

impl CodeWatch {
    /// Starts watching physical page `pfn` (address >> 12).
    pub fn watch(&mut self, pfn: u64) {
        self.pages.insert(pfn);
    }
    /// Stops watching `pfn` (its blocks were dropped).
    pub fn unwatch(&mut self, pfn: u64) {
        self.pages.remove(&pfn);
    }
    pub fn is_watched(&self, pfn: u64) -> bool {
        self.pages.contains(&pfn)
    }
    /// Records a write to `pfn`; true if it holds code.
    pub fn note_write(&mut self, pfn: u64) -> bool {
        if self.pages.contains(&pfn) {
            if !self.dirty.contains(&pfn) {
                self.dirty.push(pfn);
            }
            true
        } else {
            false
        }
    }
    /// Code pages written since the last call.
    pub fn take_dirty(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.dirty)
    }
}

/// The softmmu state of one CPU.
#[derive(Debug, Default)]
pub struct Mmu {
    /// Pages with translated code (self-modifying-code detection).
    pub code: CodeWatch,
}

impl Mmu {
    /// Drops every cached translation.
    pub fn flush(&mut self) {}
}

fn a20_mask(cpu: &X86Cpu) -> u64 {
    if cpu.bus.a20.enabled() {
        u64::MAX
    } else {
        !(1u64 << 20)
    }
}

/// Reads one byte of physical memory: RAM/ROM, else MMIO (unassigned reads all ones).
pub fn read_phys(cpu: &X86Cpu, pa: u64, buf: &mut [u8]) {
    if cpu.bus.mem.read(pa, buf).is_err() {
        cpu.bus.mmio.read(pa, buf);
    }
}

/// Writes physical memory: RAM, else MMIO (ROM and unassigned writes are dropped).
pub fn write_phys(cpu: &X86Cpu, pa: u64, data: &[u8]) {
    if cpu.bus.mem.write(pa, data).is_err() {
        cpu.bus.mmio.write(pa, data);
    }
}

/// Reads `size` bytes at linear address `addr`.
pub fn read(cpu: &mut X86Cpu, addr: u64, size: Size, _mmu: MmuIdx) -> Result<u64, Fault> {
    let mut b = [0u8; 8];
    let mask = a20_mask(cpu);
    for (i, byte) in b.iter_mut().take(size.bytes()).enumerate() {
        let mut one = [0u8; 1];
        read_phys(cpu, addr.wrapping_add(i as u64) & mask, &mut one);
        *byte = one[0];
    }
    Ok(u64::from_le_bytes(b))
}

/// Writes the low `size` bytes of `val` at linear address `addr`.
pub fn write(cpu: &mut X86Cpu, addr: u64, val: u64, size: Size, _mmu: MmuIdx) -> Result<(), Fault> {
    let mask = a20_mask(cpu);
    for (i, byte) in val.to_le_bytes().iter().take(size.bytes()).enumerate() {
        let pa = addr.wrapping_add(i as u64) & mask;
        if cpu.mmu.code.note_write(pa >> 12) {
            // Self-modifying code: finish this instruction, then leave the block.
            cpu.stop = true;
        }
        write_phys(cpu, pa, &[*byte]);
    }
    Ok(())
}
