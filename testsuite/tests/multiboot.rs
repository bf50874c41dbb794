//! A Multiboot test kernel built here prints through the UART and exits through
//! isa-debug-exit, under KVM.

use vireo::config::DebugExitConfig;
use vireo::{Accel, CharSpec, Machine, MachineConfig, Outcome};
use vireo_devices::chardev::CaptureBuffer;
use vireo_testsuite::{multiboot_kernel, multiboot_machine, scratch_dir, skip_without_kvm};

#[test]
fn multiboot_kernel_prints_and_exits_under_kvm() {
    if skip_without_kvm("multiboot_kernel_prints_and_exits_under_kvm") {
        return;
    }
    let d = scratch_dir("multiboot");
    let kernel = d.join("kernel.elf");
    std::fs::write(&kernel, multiboot_kernel::build_elf()).unwrap();
    let (m1, m2) = (d.join("mod1"), d.join("mod2"));
    std::fs::write(&m1, vec![0xabu8; 5000]).unwrap();
    std::fs::write(&m2, b"second module").unwrap();

    let serial = CaptureBuffer::new();
    let cfg = MachineConfig {
        accel: Accel::Kvm,
        ram_size: 32 << 20,
        kernel: Some(kernel),
        initrd: vec![
            m1.to_string_lossy().into_owned(),
            format!("{} arg=1", m2.display()),
        ],
        append: "console=ttyS0 vireo.test=1".into(),
        serials: vec![CharSpec::Capture(serial.clone())],
        debug_exits: vec![DebugExitConfig {
            iobase: multiboot_kernel::EXIT_PORT,
            iosize: 4,
        }],
        ..MachineConfig::default()
    };
    let outcome = Machine::new(cfg).unwrap().run().unwrap();
    let text = serial.text();
    assert!(
        text.contains("multiboot: hello from the vireo test kernel"),
        "{text}"
    );
    assert!(
        text.contains("cmdline: ") && text.contains("console=ttyS0 vireo.test=1"),
        "{text}"
    );
    assert!(text.contains("multiboot: modules: 2"), "{text}");
    assert_eq!(
        outcome,
        Outcome::DebugExit(multiboot_kernel::expected_status(2))
    );
}

#[test]
fn multiboot_kernel_via_command_line() {
    if skip_without_kvm("multiboot_kernel_via_command_line") {
        return;
    }
    let d = scratch_dir("multiboot-cli");
    let kernel = d.join("kernel.elf");
    std::fs::write(&kernel, multiboot_kernel::build_elf()).unwrap();
    let out = std::process::Command::new(vireo_testsuite::vireo_bin())
        .args([
            "-nodefaults",
            "-display",
            "none",
            "-serial",
            "stdio",
            "-accel",
            "kvm",
        ])
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
        .arg("-kernel")
        .arg(&kernel)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("hello from the vireo test kernel"),
        "{stdout}"
    );
    assert_eq!(
        out.status.code(),
        Some(multiboot_kernel::expected_status(0))
    );
}

#[test]
fn reset_reboots_and_the_kernel_runs_again() {
    if skip_without_kvm("reset_reboots_and_the_kernel_runs_again") {
        return;
    }
    let (cfg, serial) =
        multiboot_machine("reboot", multiboot_kernel::Ending::ResetOnceThenExit, false);
    let outcome = Machine::new(cfg).unwrap().run().unwrap();
    let text = serial.text();
    assert_eq!(
        text.matches("hello from the vireo test kernel").count(),
        2,
        "two boots: {text}"
    );
    assert_eq!(
        outcome,
        Outcome::DebugExit(((multiboot_kernel::AFTER_REBOOT_VALUE << 1) | 1) as i32)
    );
}

#[test]
fn reset_with_no_reboot_exits() {
    if skip_without_kvm("reset_with_no_reboot_exits") {
        return;
    }
    let (cfg, serial) = multiboot_machine(
        "noreboot",
        multiboot_kernel::Ending::ResetOnceThenExit,
        true,
    );
    assert_eq!(Machine::new(cfg).unwrap().run().unwrap(), Outcome::Reset);
    assert_eq!(serial.text().matches("hello from").count(), 1);
}

#[test]
fn triple_fault_resets() {
    if skip_without_kvm("triple_fault_resets") {
        return;
    }
    let (cfg, serial) = multiboot_machine("triple", multiboot_kernel::Ending::TripleFault, true);
    assert_eq!(Machine::new(cfg).unwrap().run().unwrap(), Outcome::Reset);
    assert!(serial.text().contains("hello from"));
}
