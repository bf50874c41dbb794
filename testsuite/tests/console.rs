//! The terminal as the guest's console: input reaches COM1, Ctrl-A X quits.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use vireo_testsuite::multiboot_kernel::{self, Ending};
use vireo_testsuite::{scratch_dir, skip_without_kvm, vireo_bin};

fn spawn(kernel: &std::path::Path) -> std::process::Child {
    Command::new(vireo_bin())
        .args([
            "-nodefaults",
            "-nographic",
            "-serial",
            "stdio",
            "-accel",
            "kvm",
        ])
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
        .arg("-kernel")
        .arg(kernel)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("vireo starts")
}

/// Waits for the child at most `limit`; kills it if it overstays.
fn wait_bounded(mut child: std::process::Child, limit: Duration) -> (Option<i32>, String) {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            return (
                status.code(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
            );
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            return (None, String::from_utf8_lossy(&out.stdout).into_owned());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn typed_input_reaches_the_guest() {
    if skip_without_kvm("typed_input_reaches_the_guest") {
        return;
    }
    let d = scratch_dir("console-echo");
    let kernel = d.join("echo.elf");
    std::fs::write(
        &kernel,
        multiboot_kernel::build_elf_ending(Ending::EchoUntilNewline),
    )
    .unwrap();
    let mut child = spawn(&kernel);
    // More than the UART's 64-byte FIFO, so input back-pressure is exercised too.
    let line = "hello vireo, ".repeat(8);
    child
        .stdin
        .as_mut()
        .unwrap()
        .write_all(format!("{line}\n").as_bytes())
        .unwrap();
    let (code, out) = wait_bounded(child, Duration::from_secs(60));
    assert!(out.contains(&line.to_uppercase()), "{out}");
    assert_eq!(code, Some((((line.len() as i32) & 0x7f) << 1) | 1));
}

#[test]
fn ctrl_a_x_quits() {
    if skip_without_kvm("ctrl_a_x_quits") {
        return;
    }
    let d = scratch_dir("console-quit");
    let kernel = d.join("hang.elf");
    std::fs::write(&kernel, multiboot_kernel::build_elf_ending(Ending::Hang)).unwrap();
    let mut child = spawn(&kernel);
    std::thread::sleep(Duration::from_millis(300));
    // Ctrl-A Ctrl-A sends one Ctrl-A to the guest; Ctrl-A X quits.
    child
        .stdin
        .as_mut()
        .unwrap()
        .write_all(b"\x01\x01\x01x")
        .unwrap();
    let (code, out) = wait_bounded(child, Duration::from_secs(30));
    assert!(out.contains("hello from the vireo test kernel"), "{out}");
    assert_eq!(code, Some(0), "Ctrl-A X ends the run with status 0");
}
