//! Hybrid execution: an instruction this host's KVM cannot emulate runs under TCG and
//! the guest continues under KVM.

use vireo::{Machine, Outcome};
use vireo_testsuite::multiboot_kernel::{Ending, XSAVE_VALUE};
use vireo_testsuite::{multiboot_machine, skip_without_kvm};

#[test]
fn kvm_hands_an_instruction_to_tcg_and_continues() {
    if skip_without_kvm("kvm_hands_an_instruction_to_tcg_and_continues") {
        return;
    }
    let (cfg, serial) = multiboot_machine("hybrid", Ending::VerrThenExit, false);
    let mut m = Machine::new(cfg).unwrap();
    let outcome = m.run().unwrap();
    assert!(serial.text().contains("hello from the vireo test kernel"));
    // VERR of a readable data segment sets ZF: 0x31 -> status 0x63.
    assert_eq!(outcome, Outcome::DebugExit((0x31 << 1) | 1));
    // Whether KVM needs help depends on the host's KVM: this project's machines run the
    // software-only kvm_pvm, whose instruction emulator (it runs CPL-0 code) lacks VERR.
    println!("hybrid steps: {}", m.hybrid_steps());
    if std::path::Path::new("/sys/module/kvm_pvm").exists() {
        assert!(m.hybrid_steps() >= 1, "kvm_pvm ran VERR itself?");
    }
}

#[test]
fn kvm_hands_xsave_and_xrstor_to_tcg() {
    if skip_without_kvm("kvm_hands_xsave_and_xrstor_to_tcg") {
        return;
    }
    // XSETBV, XSAVE and XRSTOR at CPL 0 (KVM's XCR0 and CR4 go to TCG and back): XMM0
    // survives the round trip through memory.
    let (cfg, serial) = multiboot_machine("hybrid-xsave", Ending::XsaveThenExit, false);
    let mut m = Machine::new(cfg).unwrap();
    let outcome = m.run().unwrap();
    assert!(serial.text().contains("hello from the vireo test kernel"));
    assert_eq!(outcome, Outcome::DebugExit(((XSAVE_VALUE << 1) | 1) as i32));
    println!("hybrid steps: {}", m.hybrid_steps());
    if std::path::Path::new("/sys/module/kvm_pvm").exists() {
        assert!(m.hybrid_steps() >= 2, "kvm_pvm ran XSAVE/XRSTOR itself?");
    }
}
