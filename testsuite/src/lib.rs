//! Helpers for vireo's end-to-end tests: test guests built in process, and machine
//! runners with captured consoles.

pub mod apic_kernel;
pub mod cpio;
pub mod fuzz;
pub mod guest;
pub mod kernel_asm;
pub mod lockstep;
pub mod micro_kernels;
pub mod multiboot_kernel;
pub mod process;
pub mod smp_kernel;
pub mod testdev_kernel;

pub use multiboot_kernel::machine_config as multiboot_machine;

use std::path::PathBuf;

/// Why KVM tests cannot run here, if they cannot.
pub fn kvm_unavailable() -> Option<String> {
    vireo_kvm::available().err()
}

/// Prints the visible SKIP line KVM-less hosts get and returns true when KVM is absent.
pub fn skip_without_kvm(test: &str) -> bool {
    match kvm_unavailable() {
        Some(why) => {
            println!("SKIP {test}: {why}");
            true
        }
        None => false,
    }
}

/// A fresh scratch directory under the target directory for one test.
pub fn scratch_dir(test: &str) -> PathBuf {
    let base = std::env::var_os("CARGO_TARGET_TMPDIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let d = base.join(format!("vireo-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("scratch dir");
    d
}

/// Path of the `vireo` binary built alongside the tests.
pub fn vireo_bin() -> PathBuf {
    let mut p = std::env::current_exe().expect("test binary path");
    p.pop(); // the test binary
    if p.ends_with("deps") {
        p.pop();
    }
    p.join("vireo")
}

/// Runs `m` until it stops by itself, or stops it (`Quit`) after `limit`: a guest that
/// hangs fails its test instead of blocking the run.
pub fn run_with_watchdog(m: &mut vireo::Machine, limit: std::time::Duration) -> vireo::Outcome {
    let control = m.control();
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let dog = std::thread::spawn(move || {
        if rx.recv_timeout(limit).is_err() {
            control.request_stop(vireo_core::StopReason::Quit);
        }
    });
    let outcome = m.run().expect("run");
    let _ = tx.send(());
    dog.join().expect("watchdog");
    outcome
}
