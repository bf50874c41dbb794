//! A Multiboot test kernel built here prints through the UART and exits through
//! isa-debug-exit, under KVM.

use vireo::config::DebugExitConfig;
use vireo::{Accel, CharSpec, Machine, MachineConfig, Outcome};
use vireo_devices::chardev::CaptureBuffer;
use vireo_testsuite::{multiboot_kernel, scratch_dir, skip_without_kvm};

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
        initrd: vec![m1, m2],
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
