//! No byte sequence and no CPU state can panic vireo: random code bytes are run from
//! random (often inconsistent) `CpuState`s through the whole TCG engine (translator,
//! interpreter, helpers, MMU, exception delivery). Every outcome is acceptable except a
//! panic. Each case is reproducible from its seed; seeds that once crashed live in
//! `testsuite/fuzz-regressions.txt` and are replayed by the test forever.

use crate::lockstep::gen::Rng;
use std::sync::Arc;
use vireo_core::cpu::{ctl, flags, sreg, CpuState, DescriptorTable, Segment};
use vireo_core::{A20Gate, Bus, GuestMemory, MachineControl, SystemBus, Vcpu};

/// Guest memory of a fuzz case.
pub const MEM: u64 = 2 << 20;
/// Instructions a case may run.
pub const INSN_LIMIT: u64 = 2_000;

fn random_segment(rng: &mut Rng, code: bool) -> Segment {
    if rng.chance(60) {
        let mut s = Segment::flat(
            (rng.below(16) * 8) as u16 | rng.below(4) as u16,
            code,
            rng.chance(30),
        );
        s.dpl = rng.below(4) as u8;
        return s;
    }
    Segment {
        selector: rng.next_u64() as u16,
        base: if rng.chance(50) {
            rng.below(MEM)
        } else {
            rng.next_u64()
        },
        limit: rng.next_u64() as u32,
        type_: rng.below(16) as u8,
        s: rng.chance(90),
        dpl: rng.below(4) as u8,
        present: rng.chance(90),
        avl: rng.chance(10),
        l: rng.chance(30),
        db: rng.chance(50),
        g: rng.chance(50),
        unusable: rng.chance(5),
    }
}

/// A random CPU state; about half of them plausible (a real mode, protected mode or
/// long mode set-up), the rest with arbitrary control registers and segments.
pub fn random_state(rng: &mut Rng) -> CpuState {
    let mut s = CpuState::reset();
    for r in s.gpr.iter_mut() {
        *r = if rng.chance(50) {
            rng.below(MEM)
        } else {
            rng.value()
        };
    }
    s.rip = rng.below(MEM - 0x100);
    s.rflags = flags::FIXED1 | (rng.next_u64() & 0x3f_7fd5);
    match rng.below(4) {
        0 => {
            // Real mode.
            s.seg[sreg::CS] = Segment::real_mode(0, true);
        }
        1 => {
            // Protected mode, maybe paged with garbage tables.
            s.cr0 = ctl::CR0_PE | ctl::CR0_ET | if rng.chance(30) { ctl::CR0_PG } else { 0 };
            for (i, seg) in s.seg.iter_mut().enumerate() {
                *seg = random_segment(rng, i == sreg::CS);
            }
        }
        2 => {
            // Long mode.
            s.cr0 = ctl::CR0_PE | ctl::CR0_PG | ctl::CR0_ET;
            s.cr4 = ctl::CR4_PAE;
            s.efer = ctl::EFER_LME | ctl::EFER_LMA;
            s.cr3 = rng.below(MEM) & !0xfff;
            for (i, seg) in s.seg.iter_mut().enumerate() {
                *seg = Segment::flat(8 * i as u16, i == sreg::CS, true);
            }
        }
        _ => {
            // Anything.
            s.cr0 = rng.next_u64() & 0xffff_ffff;
            s.cr4 = rng.next_u64() & 0x3f_ffff;
            s.efer = rng.next_u64() & 0xfff;
            s.cr3 = rng.next_u64();
            for (i, seg) in s.seg.iter_mut().enumerate() {
                *seg = random_segment(rng, i == sreg::CS);
            }
        }
    }
    s.gdtr = DescriptorTable {
        base: rng.below(MEM),
        limit: rng.next_u64() as u16,
    };
    s.idtr = DescriptorTable {
        base: rng.below(MEM),
        limit: rng.next_u64() as u16,
    };
    s.tr = random_segment(rng, false);
    s.ldtr = random_segment(rng, false);
    s.fpu.fcw = rng.next_u64() as u16;
    s.fpu.mxcsr = (rng.next_u64() as u32) & 0xffff;
    s.events.interrupt_shadow = rng.chance(10);
    s
}

/// Runs case `seed`: random bytes around RIP (and random data elsewhere), a random
/// state, up to [`INSN_LIMIT`] instructions. Returns how many instructions ran.
pub fn run_case(seed: u64) -> u64 {
    let mut rng = Rng::new(seed);
    let mem = Arc::new(GuestMemory::new_flat(MEM).expect("fuzz memory"));
    let state = random_state(&mut rng);
    // Code bytes at the linear RIP (assuming a zero CS base) and at CS.base + RIP.
    for at in [state.rip, state.seg[sreg::CS].base.wrapping_add(state.rip)] {
        let bytes: Vec<u8> = (0..256).map(|_| rng.next_u64() as u8).collect();
        let _ = mem.write(at % (MEM - 256), &bytes);
    }
    // Random page-sized blobs (page tables, descriptor tables, stacks).
    for _ in 0..16 {
        let page: Vec<u8> = (0..4096).map(|_| rng.next_u64() as u8).collect();
        let _ = mem.write(rng.below(MEM / 4096) * 4096, &page);
    }
    let control = MachineControl::new();
    let bus = SystemBus {
        mem,
        pio: Arc::new(Bus::new("pio")),
        mmio: Arc::new(Bus::new("mmio")),
        a20: A20Gate::new(),
    };
    let mut vcpu = vireo_tcg::TcgVcpu::new(bus, control);
    vcpu.set_insn_limit(Some(INSN_LIMIT));
    // A state the engine refuses is a fine outcome too.
    if vcpu.set_state(&state).is_err() {
        return 0;
    }
    for _ in 0..4 {
        match vcpu.run() {
            Ok(vireo_core::VcpuExit::Halted) | Err(_) => break,
            Ok(_) => {}
        }
        if vcpu.insns() >= INSN_LIMIT {
            break;
        }
    }
    let _ = vcpu.state();
    vcpu.insns()
}

/// Seeds that once crashed vireo (one per line, `#` comments).
pub fn regression_seeds() -> Vec<u64> {
    include_str!("../fuzz-regressions.txt")
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .filter_map(|l| l.parse().ok())
        .collect()
}
