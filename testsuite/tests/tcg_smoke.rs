//! The TCG engine end to end through `Machine`: the Multiboot test kernel and the
//! firmware demo guest under `-accel tcg`, with either backend (`-tcg-backend interp`,
//! `-tcg-backend jit`). A watchdog quits a guest that runs too long.

use std::time::Duration;
use vireo::config::DebugExitConfig;
use vireo::{Accel, CharSpec, Machine, MachineConfig, Outcome};
use vireo_devices::chardev::CaptureBuffer;
use vireo_tcg::Backend;
use vireo_testsuite::{multiboot_kernel, scratch_dir};

/// Runs `cfg` under TCG; the watchdog requests `Quit` after `limit`.
fn run_tcg(cfg: MachineConfig, limit: Duration) -> Outcome {
    let mut m = Machine::new(MachineConfig {
        accel: Accel::Tcg,
        ..cfg
    })
    .expect("machine");
    vireo_testsuite::run_with_watchdog(&mut m, limit)
}

#[test]
fn multiboot_kernel_prints_and_exits_under_tcg() {
    multiboot_kernel(Backend::Interp);
}

#[test]
fn multiboot_kernel_prints_and_exits_under_the_jit() {
    multiboot_kernel(Backend::Jit);
}

#[test]
fn demo_guest_reports_and_powers_off_under_tcg() {
    demo_guest(Backend::Interp);
}

#[test]
fn demo_guest_reports_and_powers_off_under_the_jit() {
    demo_guest(Backend::Jit);
}

fn multiboot_kernel(backend: Backend) {
    let d = scratch_dir(&format!("tcg-multiboot-{backend:?}"));
    let kernel = d.join("kernel.elf");
    std::fs::write(&kernel, multiboot_kernel::build_elf()).unwrap();
    let serial = CaptureBuffer::new();
    let cfg = MachineConfig {
        ram_size: 32 << 20,
        tcg_backend: backend,
        kernel: Some(kernel),
        append: "console=ttyS0 vireo.test=1".into(),
        serials: vec![CharSpec::Capture(serial.clone())],
        debug_exits: vec![DebugExitConfig {
            iobase: multiboot_kernel::EXIT_PORT,
            iosize: 4,
        }],
        ..MachineConfig::default()
    };
    let outcome = run_tcg(cfg, Duration::from_secs(60));
    let text = serial.text();
    assert!(
        text.contains("multiboot: hello from the vireo test kernel"),
        "{outcome:?}: {text}"
    );
    assert_eq!(
        outcome,
        Outcome::DebugExit(multiboot_kernel::expected_status(0)),
        "{text}"
    );
}

fn demo_guest(backend: Backend) {
    let serial = CaptureBuffer::new();
    let cfg = MachineConfig {
        tcg_backend: backend,
        serials: vec![CharSpec::Capture(serial.clone())],
        ..MachineConfig::default()
    };
    let outcome = run_tcg(cfg, Duration::from_secs(120));
    let text = serial.text();
    assert_eq!(outcome, Outcome::PowerOff, "serial: {text}");
    assert!(
        text.contains("real mode -> protected mode -> long mode"),
        "{text}"
    );
    assert!(text.contains("RSDP"), "{text}");
}
