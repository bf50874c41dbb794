//! Hybrid execution: an instruction this host's KVM cannot emulate runs under TCG and
//! the guest continues under KVM.

use vireo::config::DebugExitConfig;
use vireo::{Accel, CharSpec, Machine, MachineConfig, Outcome};
use vireo_devices::chardev::CaptureBuffer;
use vireo_testsuite::multiboot_kernel::{self, Ending};
use vireo_testsuite::{scratch_dir, skip_without_kvm};

#[test]
fn kvm_hands_an_instruction_to_tcg_and_continues() {
    if skip_without_kvm("kvm_hands_an_instruction_to_tcg_and_continues") {
        return;
    }
    let d = scratch_dir("hybrid");
    let kernel = d.join("verr.elf");
    std::fs::write(
        &kernel,
        multiboot_kernel::build_elf_ending(Ending::VerrThenExit),
    )
    .unwrap();
    let serial = CaptureBuffer::new();
    let cfg = MachineConfig {
        accel: Accel::Kvm,
        ram_size: 16 << 20,
        kernel: Some(kernel),
        serials: vec![CharSpec::Capture(serial.clone())],
        debug_exits: vec![DebugExitConfig {
            iobase: multiboot_kernel::EXIT_PORT,
            iosize: 4,
        }],
        ..MachineConfig::default()
    };
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
