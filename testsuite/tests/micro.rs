//! The benchmark micro-kernels (`vireo_testsuite::micro_kernels`), small, end to end:
//! each must reach its end with the checksum the host computed and exit through
//! isa-debug-exit, under TCG with the JIT and with the interpreter.
//!
//! Not under this host's KVM (`kvm_pvm`): its ring 3 gets `#UD` for `int n` and `#GP`
//! for port I/O even with IOPL 3, and the kernels print and exit through both.

use std::time::Duration;
use vireo::config::DebugExitConfig;
use vireo::{Accel, CharSpec, Machine, MachineConfig, Outcome};
use vireo_devices::chardev::CaptureBuffer;
use vireo_testsuite::micro_kernels::{self as mk, Kernel};
use vireo_testsuite::scratch_dir;

/// Runs `k` (about `work` instructions) on `accel`/`backend`; returns the outcome and
/// the serial output.
fn run(k: Kernel, work: u64, accel: Accel, backend: vireo_tcg::Backend) -> (Outcome, String, u64) {
    let b = mk::build(k, work).unwrap();
    let d = scratch_dir(&format!("micro-{}-{accel:?}-{backend:?}", k.name()));
    let kernel = d.join("micro.elf");
    std::fs::write(&kernel, &b.elf).unwrap();
    let serial = CaptureBuffer::new();
    let cfg = MachineConfig {
        accel,
        tcg_backend: backend,
        ram_size: u64::from(mk::MEM_MIB) << 20,
        kernel: Some(kernel),
        serials: vec![CharSpec::Capture(serial.clone())],
        debug_exits: vec![DebugExitConfig {
            iobase: mk::EXIT_PORT,
            iosize: 4,
        }],
        no_reboot: true,
        ..MachineConfig::default()
    };
    let mut m = Machine::new(cfg).expect("machine");
    let outcome = vireo_testsuite::run_with_watchdog(&mut m, Duration::from_secs(300));
    (outcome, serial.text(), b.expected)
}

fn check(accel: Accel, backend: vireo_tcg::Backend) {
    for k in Kernel::ALL {
        // Enough for several passes of each loop (the page-fault kernel maps and
        // unmaps its 512 pages three times, the memory kernel passes once).
        let work = match k {
            Kernel::PageFault => 30_000,
            _ => 100_000,
        };
        let (outcome, text, expected) = run(k, work, accel, backend);
        let name = k.name();
        for want in [
            format!("{}{name}\n", mk::BEGIN),
            format!("{}{name}\n", mk::END),
            format!("{}{name} {expected:016x}\n", mk::RESULT),
        ] {
            assert!(
                text.contains(&want),
                "{accel:?}/{backend:?} {name}: no {want:?} in:\n{text}"
            );
        }
        assert_eq!(
            outcome,
            Outcome::DebugExit((i32::from(mk::EXIT_VALUE) << 1) | 1),
            "{accel:?}/{backend:?} {name}:\n{text}"
        );
    }
}

#[test]
fn micro_kernels_under_the_jit() {
    check(Accel::Tcg, vireo_tcg::Backend::Jit);
}

#[test]
fn micro_kernels_under_the_interpreter() {
    check(Accel::Tcg, vireo_tcg::Backend::Interp);
}
