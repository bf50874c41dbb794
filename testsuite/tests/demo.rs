//! The built-in demo guest: vireo's firmware goes from real mode to long mode, reports
//! on the serial port and powers the machine off through ACPI.

use vireo::{Accel, CharSpec, Machine, MachineConfig, Outcome};
use vireo_devices::chardev::CaptureBuffer;
use vireo_testsuite::{skip_without_kvm, vireo_bin};

#[test]
fn demo_guest_reports_and_powers_off() {
    if skip_without_kvm("demo_guest_reports_and_powers_off") {
        return;
    }
    let serial = CaptureBuffer::new();
    let cfg = MachineConfig {
        accel: Accel::Kvm,
        serials: vec![CharSpec::Capture(serial.clone())],
        ..MachineConfig::default()
    };
    let outcome = Machine::new(cfg).unwrap().run().unwrap();
    let text = serial.text();
    assert_eq!(outcome, Outcome::PowerOff, "serial: {text}");
    assert!(
        text.contains("real mode -> protected mode -> long mode"),
        "{text}"
    );
    assert!(text.contains("RAM 128 MiB"), "{text}");
    assert!(text.contains("fw_cfg"), "{text}");
    assert!(text.contains("RSDP"), "{text}");
}

#[test]
fn demo_guest_from_the_command_line_exits_0() {
    if skip_without_kvm("demo_guest_from_the_command_line_exits_0") {
        return;
    }
    let out = std::process::Command::new(vireo_bin())
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout {stdout}, stderr {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("long mode"), "{stdout}");
}

#[test]
fn demo_guest_with_more_memory() {
    if skip_without_kvm("demo_guest_with_more_memory") {
        return;
    }
    let serial = CaptureBuffer::new();
    let cfg = MachineConfig {
        accel: Accel::Kvm,
        ram_size: 3 << 29, // 1.5 GiB
        serials: vec![CharSpec::Capture(serial.clone())],
        ..MachineConfig::default()
    };
    assert_eq!(Machine::new(cfg).unwrap().run().unwrap(), Outcome::PowerOff);
    assert!(serial.text().contains("RAM 1536 MiB"), "{}", serial.text());
}

/// The firmware prints the CPU's CPUID identity: under TCG it is the model `-cpu`
/// names (`max` by default), and `-smp` reaches the firmware through fw_cfg.
#[test]
fn demo_guest_under_tcg_sees_the_named_cpu_model() {
    for (model, brand) in [
        (None, "vireo TCG virtual CPU"),
        (Some("max"), "vireo TCG virtual CPU"),
        (Some("qemu64"), "QEMU Virtual CPU version 2.5+"),
    ] {
        let serial = CaptureBuffer::new();
        let cfg = MachineConfig {
            accel: Accel::Tcg,
            cpus: 2,
            cpu_model: model.map(str::to_string),
            serials: vec![CharSpec::Capture(serial.clone())],
            ..MachineConfig::default()
        };
        assert_eq!(Machine::new(cfg).unwrap().run().unwrap(), Outcome::PowerOff);
        let text = serial.text();
        assert!(
            text.contains(&format!(
                "CPU: {brand} (AuthenticAMD, family 0xf model 0x6b)"
            )),
            "-cpu {model:?}: {text}"
        );
        assert!(text.contains("2 CPUs"), "{text}");
    }
}
