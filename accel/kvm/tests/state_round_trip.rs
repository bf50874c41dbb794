//! `set_state` then `state` gives back the same architectural state under KVM.

use std::sync::Arc;
use vireo_core::cpu::{ctl, flags, msr, sreg, CpuState, DescriptorTable, Segment};
use vireo_core::{Bus, GuestMemory, MachineControl, Vcpu};
use vireo_kvm::{CpuModel, KvmVm, VmConfig};

fn long_mode_state() -> CpuState {
    let mut s = CpuState::reset();
    for (i, r) in s.gpr.iter_mut().enumerate() {
        *r = 0x1111_2222_3333_0000 + i as u64 * 0x1001;
    }
    s.rip = 0x20_0000;
    s.rflags = flags::FIXED1 | flags::CF | flags::ZF | flags::DF;
    s.cr0 = ctl::CR0_PE | ctl::CR0_MP | ctl::CR0_ET | ctl::CR0_NE | ctl::CR0_WP | ctl::CR0_PG;
    s.cr3 = 0x9000;
    s.cr4 = ctl::CR4_PAE | ctl::CR4_OSFXSR | ctl::CR4_OSXMMEXCPT;
    s.efer = ctl::EFER_LME | ctl::EFER_LMA | ctl::EFER_SCE | ctl::EFER_NXE;
    for (i, seg) in s.seg.iter_mut().enumerate() {
        *seg = Segment::flat(if i == sreg::CS { 0x10 } else { 0x18 }, i == sreg::CS, true);
    }
    s.seg[sreg::FS].base = 0x7fff_0000_1000;
    s.seg[sreg::GS].base = 0xffff_8880_0000_0000;
    s.gdtr = DescriptorTable {
        base: 0x500,
        limit: 0x1f,
    };
    s.idtr = DescriptorTable {
        base: 0x3000,
        limit: 0xfff,
    };
    s.tr = Segment {
        selector: 0x20,
        base: 0x4000,
        limit: 0x67,
        type_: 0xb,
        present: true,
        ..Segment::default()
    };
    s.cr2 = 0xdead_b000;
    s.dr[..4].copy_from_slice(&[0x1000, 0x2000, 0x3000, 0x4000]);
    s.msr.set(msr::STAR, 0x0023_0010_0000_0000);
    s.msr.set(msr::LSTAR, 0xffff_ffff_8100_0000);
    s.msr.set(msr::CSTAR, 0xffff_ffff_8100_1000);
    s.msr.set(msr::SFMASK, 0x4_7700);
    s.msr.set(msr::KERNEL_GS_BASE, 0xffff_8880_1234_0000);
    s.msr.set(msr::SYSENTER_CS, 0x10);
    s.msr.set(msr::SYSENTER_EIP, 0xffff_ffff_8100_2000);
    s.msr.set(msr::SYSENTER_ESP, 0xffff_c900_0000_0000);
    s.msr.set(msr::TSC_AUX, 7);
    // MTRRs as a firmware leaves them (write-back default, a UC range at 3 GiB).
    s.msr.set(msr::MTRR_DEF_TYPE, 0xc06);
    s.msr.set(msr::MTRR_FIXED[0], 0x0606_0606_0606_0606);
    s.msr.set(msr::MTRR_FIXED[2], 0);
    s.msr.set(msr::MTRR_PHYS_BASE0, 0xc000_0000);
    s.msr.set(msr::MTRR_PHYS_BASE0 + 1, 0xf_c000_0800);
    s.fpu.fcw = 0x27f;
    s.fpu.mxcsr = 0x1fa0;
    for (i, x) in s.fpu.xmm.iter_mut().enumerate() {
        *x = [i as u8 ^ 0x5a; 16];
    }
    s.fpu.st[3] = [1, 2, 3, 4, 5, 6, 7, 0x80, 0xff, 0x3f, 0, 0, 0, 0, 0, 0];
    s.fpu.ftw = 0x08;
    s.fpu.ymmh[2] = [0x77; 16];
    s.xcr0 = 0b111; // x87, SSE, AVX
    s
}

#[test]
fn state_round_trip() {
    if let Err(why) = vireo_kvm::available() {
        println!("SKIP state_round_trip: {why}");
        return;
    }
    let mem = GuestMemory::new(4 << 20).unwrap();
    let vm = KvmVm::new(
        &mem,
        VmConfig {
            cpu_model: CpuModel::Host,
            cpus: 1,
        },
    )
    .unwrap();
    let mut vcpu = vm
        .create_vcpu(
            0,
            Arc::new(Bus::new("pio")),
            Arc::new(Bus::new("mmio")),
            MachineControl::new(),
        )
        .unwrap();
    let want = long_mode_state();
    vcpu.set_state(&want).unwrap();
    let got = vcpu.state().unwrap();
    assert_eq!(got.gpr, want.gpr);
    assert_eq!(got.rip, want.rip);
    assert_eq!(got.rflags, want.rflags);
    assert_eq!(
        (got.cr0, got.cr2, got.cr3, got.cr4, got.efer),
        (want.cr0, want.cr2, want.cr3, want.cr4, want.efer)
    );
    for i in 0..6 {
        let (g, w) = (got.seg[i], want.seg[i]);
        assert_eq!(
            (g.selector, g.base, g.limit, g.l, g.db, g.dpl),
            (w.selector, w.base, w.limit, w.l, w.db, w.dpl),
            "segment {i}"
        );
    }
    assert_eq!((got.gdtr, got.idtr), (want.gdtr, want.idtr));
    assert_eq!(
        (got.tr.selector, got.tr.base),
        (want.tr.selector, want.tr.base)
    );
    assert_eq!(got.dr[..4], want.dr[..4]);
    for (index, value) in want.msr.entries() {
        if index != msr::TSC {
            assert_eq!(got.msr.get(index), Some(value), "MSR {index:#x}");
        }
    }
    assert_eq!(got.fpu.xmm, want.fpu.xmm);
    assert_eq!((got.fpu.fcw, got.fpu.mxcsr), (want.fpu.fcw, want.fpu.mxcsr));
    assert_eq!(got.fpu.st[3][..10], want.fpu.st[3][..10]);
    if std::arch::is_x86_feature_detected!("avx") {
        assert_eq!(got.xcr0, want.xcr0);
        assert_eq!(got.fpu.ymmh, want.fpu.ymmh);
    }
}
