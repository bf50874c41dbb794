//! The SMP test kernel (`vireo_testsuite::smp_kernel`) end to end: the BSP starts the
//! APs with INIT-SIPI-SIPI, every CPU checks in, counts on one shared counter with
//! `lock inc`, runs a job that depends on its APIC ID, and IPIs go both ways.
//!
//! - `vireo_*`: the `vireo` binary with `-smp 2` and `-smp 4` under `-accel tcg`
//!   (round-robin) and `-accel kvm` (one thread per vCPU; skipped without /dev/kvm);
//!   the guest must find the CPUs in fw_cfg, the MADT and the MP table alike.
//! - `uniprocessor_*`: the kernel on a one-CPU machine, in process: everything but
//!   starting APs (fw_cfg, MADT and MP table as the guest finds them, PIT delays, the
//!   job, the counter).
//! - `qemu_*`: the same kernel under QEMU's TCG with 2, 4 and 8 CPUs (skipped when
//!   `qemu-system-x86_64` is not installed): the reference the kernel was written
//!   against.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use vireo::config::DebugExitConfig;
use vireo::{Accel, CharSpec, Machine, MachineConfig, Outcome};
use vireo_devices::chardev::CaptureBuffer;
use vireo_testsuite::smp_kernel::{self, expected_status, job_line};
use vireo_testsuite::{multiboot_kernel, scratch_dir, skip_without_kvm, vireo_bin};

const QEMU: &str = "qemu-system-x86_64";

fn kernel(dir: &Path) -> PathBuf {
    let k = dir.join("smp.elf");
    std::fs::write(&k, smp_kernel::build_elf()).expect("write the kernel");
    k
}

/// The command line both vireo and QEMU take.
fn args(accel: &str, cpus: u32, kernel: &Path) -> Vec<String> {
    let mut v: Vec<String> = ["-accel", accel, "-smp"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    v.push(cpus.to_string());
    v.push("-kernel".into());
    v.push(kernel.display().to_string());
    v.extend(
        [
            "-m",
            "64",
            "-device",
            "isa-debug-exit,iobase=0xf4,iosize=4",
            "-nodefaults",
            "-display",
            "none",
            "-serial",
            "stdio",
            "-no-reboot",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    v
}

/// Runs `program` with the kernel; kills it after `limit`. Returns the exit code (None
/// when killed) and what the guest printed.
fn run(
    program: &Path,
    accel: &str,
    cpus: u32,
    name: &str,
    limit: Duration,
) -> (Option<i32>, String) {
    let d = scratch_dir(name);
    let k = kernel(&d);
    let out = d.join("serial.txt");
    let mut child = Command::new(program)
        .args(args(accel, cpus, &k))
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).expect("serial file"))
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
    let start = Instant::now();
    let code = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s.code();
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    (code, text)
}

/// Asserts a full pass with `cpus` CPUs: the exit status, the CPU counts from fw_cfg
/// and the MADT (and the MP table if `mp_table`), and every CPU's job line.
fn assert_pass(code: Option<i32>, text: &str, cpus: u32, mp_table: bool) {
    assert_eq!(
        code,
        Some(expected_status(cpus)),
        "exit status; serial:\n{text}"
    );
    let mp = format!("smp: mp table cpus {cpus:08x}");
    assert!(
        !mp_table || text.contains(&mp),
        "missing {mp:?} in:\n{text}"
    );
    for want in [
        format!("smp: fw_cfg cpus {cpus:08x}"),
        format!("smp: madt cpus {cpus:08x}"),
        "smp: bsp apic id 00000000".to_string(),
        format!(
            "smp: aps alive {:08x} mask {:08x} ok",
            cpus - 1,
            ((1u32 << cpus) - 1) & !1
        ),
        format!(
            "smp: counter {:08x} ok",
            cpus * smp_kernel::COUNTER_INCREMENTS
        ),
        "smp: jobs ok".to_string(),
        format!("smp: result {:08x}", smp_kernel::pass::ALL),
    ] {
        assert!(text.contains(&want), "missing {want:?} in:\n{text}");
    }
    for id in 0..cpus {
        let want = job_line(id);
        assert!(text.contains(&want), "missing {want:?} in:\n{text}");
    }
}

fn vireo(accel: &str, cpus: u32) {
    let name = format!("smp-{accel}-{cpus}");
    let (code, text) = run(&vireo_bin(), accel, cpus, &name, Duration::from_secs(300));
    assert_pass(code, &text, cpus, true);
}

#[test]
fn vireo_smp2_under_tcg() {
    vireo("tcg", 2);
}

#[test]
fn vireo_smp4_under_tcg() {
    vireo("tcg", 4);
}

#[test]
fn vireo_smp2_under_kvm() {
    if skip_without_kvm("vireo_smp2_under_kvm") {
        return;
    }
    vireo("kvm", 2);
}

#[test]
fn vireo_smp4_under_kvm() {
    if skip_without_kvm("vireo_smp4_under_kvm") {
        return;
    }
    vireo("kvm", 4);
}

/// One CPU, in process (`Machine`): the kernel finds one CPU everywhere, and the parts
/// that need APs report so.
fn uniprocessor(accel: Accel, name: &str) {
    let d = scratch_dir(name);
    let serial = CaptureBuffer::new();
    let cfg = MachineConfig {
        accel,
        ram_size: 64 << 20,
        kernel: Some(kernel(&d)),
        serials: vec![CharSpec::Capture(serial.clone())],
        debug_exits: vec![DebugExitConfig {
            iobase: multiboot_kernel::EXIT_PORT,
            iosize: 4,
        }],
        no_reboot: true,
        ..MachineConfig::default()
    };
    let mut m = Machine::new(cfg).expect("machine");
    let outcome = vireo_testsuite::run_with_watchdog(&mut m, Duration::from_secs(300));
    let text = serial.text();
    assert_eq!(outcome, Outcome::DebugExit(expected_status(1)), "{text}");
    for want in [
        "smp: fw_cfg cpus 00000001",
        "smp: madt cpus 00000001",
        "smp: mp table cpus 00000001",
        "smp: bsp apic id 00000000",
        "smp: aps alive 00000000 mask 00000000 FAILED",
        "smp: done ipis 00000000 ok",
        "smp: jobs ok",
        "smp: ping answers 00000000 ok",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    let counter = format!("smp: counter {:08x} ok", smp_kernel::COUNTER_INCREMENTS);
    assert!(text.contains(&counter), "{text}");
    assert!(text.contains(&job_line(0)), "{text}");
}

#[test]
fn uniprocessor_under_tcg() {
    uniprocessor(Accel::Tcg, "smp-up-tcg");
}

#[test]
fn uniprocessor_under_kvm() {
    if skip_without_kvm("uniprocessor_under_kvm") {
        return;
    }
    uniprocessor(Accel::Kvm, "smp-up-kvm");
}

/// QEMU (TCG) runs the kernel to a full pass with 2, 4 and 8 CPUs. SeaBIOS's MP table
/// lists the first logical CPU of each package only, and QEMU puts `-smp N` CPUs in one
/// package as N cores: it says 1 CPU, so its count is not checked.
#[test]
fn qemu_tcg_reference() {
    let found = Command::new(QEMU)
        .arg("-version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        println!("SKIP qemu_tcg_reference: {QEMU} is not installed");
        return;
    }
    for cpus in [2, 4, 8] {
        let name = format!("smp-qemu-{cpus}");
        let (code, text) = run(
            Path::new(QEMU),
            "tcg",
            cpus,
            &name,
            Duration::from_secs(120),
        );
        println!("{text}");
        assert_pass(code, &text, cpus, false);
    }
}
