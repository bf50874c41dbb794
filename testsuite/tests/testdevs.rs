//! QEMU's test devices end to end: the testdev kernel (`vireo_testsuite::testdev_kernel`)
//! checks pc-testdev and pci-testdev from inside a guest, under TCG and under KVM,
//! built in process and through the command line kvm-unit-tests' runner uses; when
//! QEMU is installed, the same kernel under QEMU must end with the same status.

use std::process::{Command, Stdio};
use std::time::Duration;
use vireo::config::{DebugExitConfig, PciTestdevConfig};
use vireo::{Accel, Machine, MachineConfig, Outcome};
use vireo_testsuite::testdev_kernel::{self, failed_check, PASS_STATUS};
use vireo_testsuite::{scratch_dir, skip_without_kvm, vireo_bin};

fn kernel(name: &str) -> std::path::PathBuf {
    let k = scratch_dir(name).join("testdev.elf");
    std::fs::write(&k, testdev_kernel::build_elf()).expect("write the kernel");
    k
}

/// Runs the testdev kernel on `accel`; a watchdog quits after 60 s.
fn run(accel: Accel, name: &str) -> Outcome {
    let cfg = MachineConfig {
        accel,
        ram_size: 16 << 20,
        kernel: Some(kernel(name)),
        serials: Vec::new(),
        debug_exits: vec![DebugExitConfig {
            iobase: 0xf4,
            iosize: 4,
        }],
        pc_testdev: true,
        pci_testdevs: vec![PciTestdevConfig::default()],
        no_reboot: true,
        ..MachineConfig::default()
    };
    let mut m = Machine::new(cfg).expect("machine");
    vireo_testsuite::run_with_watchdog(&mut m, Duration::from_secs(60))
}

fn assert_pass(outcome: Outcome) {
    let status = outcome.exit_status();
    assert_eq!(
        outcome,
        Outcome::DebugExit(PASS_STATUS),
        "check {:?} failed",
        failed_check(status)
    );
}

#[test]
fn testdevs_under_tcg() {
    assert_pass(run(Accel::Tcg, "testdev-tcg"));
}

#[test]
fn testdevs_under_kvm() {
    if skip_without_kvm("testdevs_under_kvm") {
        return;
    }
    assert_pass(run(Accel::Kvm, "testdev-kvm"));
}

/// The options kvm-unit-tests' `x86/run` passes to QEMU.
fn kvm_unit_tests_args(accel: &str, kernel: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = [
        "--no-reboot",
        "-nodefaults",
        "-device",
        "pc-testdev",
        "-device",
        "isa-debug-exit,iobase=0xf4,iosize=0x4",
        "-vnc",
        "none",
        "-serial",
        "stdio",
        "-device",
        "pci-testdev",
        "-machine",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.push(format!("accel={accel}"));
    v.push("-kernel".into());
    v.push(kernel.display().to_string());
    v
}

fn status_of(cmd: &mut Command) -> Option<i32> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .ok()?;
    for _ in 0..600 {
        if let Some(s) = child.try_wait().ok()? {
            return s.code();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

#[test]
fn testdevs_through_the_kvm_unit_tests_command_line() {
    let k = kernel("testdev-cli");
    let status = status_of(Command::new(vireo_bin()).args(kvm_unit_tests_args("tcg", &k)));
    assert_eq!(
        status,
        Some(PASS_STATUS),
        "check {:?} failed",
        status.and_then(failed_check)
    );
}

/// The reference: QEMU (when installed) runs the same kernel to the same status.
#[test]
fn qemu_agrees() {
    let qemu = "qemu-system-x86_64";
    let found = Command::new(qemu)
        .arg("-version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        println!("SKIP qemu_agrees: {qemu} is not installed");
        return;
    }
    let k = kernel("testdev-qemu");
    let status = status_of(Command::new(qemu).args(kvm_unit_tests_args("tcg", &k)));
    assert_eq!(
        status,
        Some(PASS_STATUS),
        "QEMU: check {:?} failed",
        status.and_then(failed_check)
    );
}
