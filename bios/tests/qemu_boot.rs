//! Runs the firmware ROM in QEMU with TCG (`-bios`), an independent CPU model: a check
//! that the start-up code does not depend on KVM's leniency (descriptor flags, mode
//! switches) and that it reads QEMU's own CMOS and fw_cfg correctly. QEMU keeps its
//! ACPI tables behind fw_cfg's table loader, which the firmware does not implement, so
//! the run ends with "power-off failed" and the test stops QEMU itself.
//!
//! Skipped (with a message) when `qemu-system-x86_64` is not installed.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const QEMU: &str = "qemu-system-x86_64";
/// Generous: TCG starts in well under a second, but CI machines are busy.
const TIMEOUT: Duration = Duration::from_secs(60);

#[test]
fn boots_in_qemu_tcg() {
    if Command::new(QEMU).arg("--version").output().is_err() {
        eprintln!("skipping: {QEMU} is not installed");
        return;
    }
    let dir = std::env::temp_dir().join(format!("vireo-bios-qemu-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bios = dir.join("vireo-bios.bin");
    // QEMU maps a -bios file so that it ends at 4 GiB and its last 128 KiB (at most)
    // below 1 MiB: the 64 KiB image lands exactly where vireo puts it.
    std::fs::write(&bios, vireo_bios::FIRMWARE).unwrap();

    let mut child = Command::new(QEMU)
        .args([
            "-accel",
            "tcg",
            "-nodefaults",
            "-display",
            "none",
            "-serial",
            "stdio",
        ])
        .args(["-m", "256", "-smp", "3", "-no-reboot", "-bios"])
        .arg(&bios)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });

    let mut lines = Vec::new();
    let done = loop {
        match rx.recv_timeout(TIMEOUT) {
            Ok(line) => {
                let last = line.contains("halting");
                lines.push(line);
                if last {
                    break true;
                }
            }
            Err(_) => break false,
        }
    };
    // Stop this test's own QEMU (by its handle) and reap it.
    let _ = child.kill();
    let _ = child.wait();
    let _ = reader.join();
    let _ = std::fs::remove_dir_all(&dir);

    let text = lines.join("\n");
    eprintln!("{text}");
    assert!(done, "no final line within {TIMEOUT:?}:\n{text}");
    assert!(text.contains(vireo_bios::LONG_MODE_LINE), "{text}");
    assert!(
        text.contains("RAM 256 MiB (CMOS), fw_cfg signature QEMU, 3 CPUs"),
        "{text}"
    );
    assert!(text.contains("etc/acpi/tables"), "{text}");
    assert!(text.contains("power-off failed"), "{text}");
}
