//! Bad input: each case is a one-line error and a non-zero status, never a panic.

use std::process::{Command, Stdio};
use vireo_testsuite::{scratch_dir, vireo_bin};

fn vireo(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(vireo_bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("vireo runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_one_line_error(args: &[&str], needle: &str) {
    let (code, _out, err) = vireo(args);
    assert_eq!(code, 1, "{args:?}: status {code}, stderr {err:?}");
    assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "{args:?}: not one line: {err:?}");
    assert!(lines[0].starts_with("vireo: "), "{args:?}: {err:?}");
    assert!(
        lines[0].to_lowercase().contains(&needle.to_lowercase()),
        "{args:?}: {err:?} lacks {needle:?}"
    );
}

#[test]
fn missing_kernel_file() {
    assert_one_line_error(&["-kernel", "/nonexistent/bzImage"], "/nonexistent/bzImage");
}

#[test]
fn truncated_and_non_kernel_files() {
    let d = scratch_dir("cli-kernels");
    let text = d.join("notes.txt");
    std::fs::write(&text, "this is not a kernel\n".repeat(100)).unwrap();
    assert_one_line_error(&["-kernel", text.to_str().unwrap()], "kernel");
    // The start of a bzImage: a setup header that promises more than the file holds.
    let mut bz = vec![0u8; 0x400];
    bz[0x1f1] = 4; // setup_sects
    bz[0x1fe] = 0x55;
    bz[0x1ff] = 0xaa;
    bz[0x202..0x206].copy_from_slice(b"HdrS");
    bz[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    let trunc = d.join("bzImage.trunc");
    std::fs::write(&trunc, &bz).unwrap();
    assert_one_line_error(&["-kernel", trunc.to_str().unwrap()], "bzImage.trunc");
    let empty = d.join("empty");
    std::fs::write(&empty, b"").unwrap();
    assert_one_line_error(&["-kernel", empty.to_str().unwrap()], "empty");
}

#[test]
fn bad_memory_sizes() {
    assert_one_line_error(&["-m", "0"], "-m 0");
    assert_one_line_error(&["-m", "64T"], "exceeds this host");
    assert_one_line_error(&["-m", "lots"], "not a memory size");
}

#[test]
fn unknown_device_and_option() {
    assert_one_line_error(&["-device", "sb16"], "sb16");
    assert_one_line_error(&["-fancy-option"], "unknown option");
    assert_one_line_error(&["-smp", "4,cores=2"], "own socket");
    assert_one_line_error(&["-smp", "300"], "1 to 254");
    assert_one_line_error(&["-accel", "tcg", "-cpu", "host"], "needs -accel kvm");
}

#[test]
fn help_and_device_list() {
    let (code, out, _) = vireo(&["--help"]);
    assert_eq!(code, 0);
    for opt in [
        "-m ",
        "-kernel",
        "-initrd",
        "-append",
        "-serial",
        "-no-reboot",
        "-accel",
    ] {
        assert!(out.contains(opt), "--help lacks {opt}");
    }
    let (code, out, _) = vireo(&["-device", "help"]);
    assert_eq!(code, 0);
    assert!(out.contains("name \"isa-debug-exit\", bus ISA"));
}

/// `-device help` and `-device NAME,help` print exactly what QEMU 7.2 prints for the
/// same devices (lines checked against `qemu-system-x86_64`), status 0; an unknown
/// model is QEMU's one-line error, status 1.
#[test]
fn device_help_in_qemus_format() {
    let list = "Misc devices:\n\
                name \"isa-debug-exit\", bus ISA\n\
                name \"isa-debugcon\", bus ISA\n\
                name \"pc-testdev\", bus ISA\n\
                name \"pci-testdev\", bus PCI, desc \"PCI Test Device\"\n";
    for arg in ["help", "?"] {
        let (code, out, err) = vireo(&["-device", arg]);
        assert_eq!(
            (code, out.as_str(), err.as_str()),
            (0, list, ""),
            "-device {arg}"
        );
    }
    let (code, out, _) = vireo(&["-device", "pc-testdev,help"]);
    assert_eq!(
        (code, out.as_str()),
        (0, "There are no options for pc-testdev.\n")
    );
    let (code, out, _) = vireo(&["-device", "isa-debug-exit,help"]);
    assert_eq!(
        (code, out.as_str()),
        (
            0,
            "isa-debug-exit options:\n  \
             iobase=<uint32>        -  (default: 1281)\n  \
             iosize=<uint32>        -  (default: 2)\n"
        )
    );
    let (code, out, _) = vireo(&["-device", "pci-testdev,help"]);
    assert_eq!(code, 0);
    assert!(
        out.starts_with("pci-testdev options:\n  addr=<int32>  "),
        "{out}"
    );
    assert_one_line_error(
        &["-device", "foo"],
        "-device foo: 'foo' is not a valid device model name",
    );
    assert_one_line_error(
        &["-device", "pc-testdev,bogus=1"],
        "Property 'pc-testdev.bogus' not found",
    );
}
