//! The APIC test kernel (`vireo_testsuite::apic_kernel`) end to end: LAPIC timer in
//! one-shot, periodic and TSC-deadline modes, the PIT and the HPET through IOAPIC
//! pin 2 (edge, and level with remote IRR), EOIs — under TCG (vireo's LAPIC, IOAPIC
//! and HPET) and under KVM (the in-kernel LAPIC/IOAPIC with vireo's PIT and HPET),
//! which must report the same.
//!
//! One known KVM-side divergence on this host's software KVM (`kvm_pvm`): for the
//! level-triggered HPET interrupt its in-kernel local APIC shows no in-service bit
//! while the handler runs, keeps the vector requested after the EOI and does not
//! clear the IOAPIC entry's remote IRR, so the vector arrives a second time although
//! the line was lowered before the EOI (one `KVM_IRQ_LINE` raise, one lower). QEMU 7.2
//! TCG reports one interrupt, as vireo's TCG does. The kernel prints those registers
//! on failure; the test recognises exactly that signature.

use std::time::Duration;
use vireo::config::DebugExitConfig;
use vireo::{Accel, CharSpec, Machine, MachineConfig, Outcome};
use vireo_devices::chardev::CaptureBuffer;
use vireo_testsuite::apic_kernel::{self, pass};
use vireo_testsuite::{multiboot_kernel, scratch_dir, skip_without_kvm};

/// Runs the kernel on `accel`; a watchdog quits after `limit`.
fn run(accel: Accel, name: &str, limit: Duration) -> (Outcome, String) {
    let d = scratch_dir(name);
    let kernel = d.join("apic.elf");
    std::fs::write(&kernel, apic_kernel::build_elf()).unwrap();
    let serial = CaptureBuffer::new();
    let cfg = MachineConfig {
        accel,
        ram_size: 32 << 20,
        kernel: Some(kernel),
        serials: vec![CharSpec::Capture(serial.clone())],
        debug_exits: vec![DebugExitConfig {
            iobase: multiboot_kernel::EXIT_PORT,
            iosize: 4,
        }],
        ..MachineConfig::default()
    };
    let mut m = Machine::new(cfg).expect("machine");
    let outcome = vireo_testsuite::run_with_watchdog(&mut m, limit);
    (outcome, serial.text())
}

/// The report lines that describe hardware (not CPUID, which differs by engine).
fn hardware_lines(text: &str) -> Vec<&str> {
    text.lines()
        .filter(|l| !l.starts_with("apic: cpuid") && !l.contains("tsc-deadline"))
        .collect()
}

#[test]
fn apic_kernel_under_tcg() {
    let (outcome, text) = run(Accel::Tcg, "apic-tcg", Duration::from_secs(120));
    // Values from the specifications: local APIC version 14h with 6 LVT entries
    // (max LVT 5), IOAPIC version 11h with 24 entries, HPET period 10 ns = 989680h fs,
    // vendor 8086h, legacy route capable, 64-bit, 3 timers, revision 1.
    for want in [
        "apic: cpuid apic=00000001 x2apic=00000001 tsc-deadline=00000001",
        "apic: base fee00800 id 00000000 version 00050014",
        "apic: timer one-shot ok",
        "apic: timer periodic ok",
        "apic: timer tsc-deadline ok",
        "ioapic: version 00170011",
        "ioapic: pit irq 0 on pin 2 ok",
        "hpet: period 00989680 id 8086a201",
        "hpet: legacy timer 0 periodic on pin 2 ok",
        "hpet: level-triggered one-shot ok",
        "apic: result 0000007f",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    assert_eq!(
        outcome,
        Outcome::DebugExit(apic_kernel::status(pass::ALL)),
        "{text}"
    );
}

#[test]
fn apic_kernel_under_kvm_reports_as_under_tcg() {
    if skip_without_kvm("apic_kernel_under_kvm_reports_as_under_tcg") {
        return;
    }
    let (kvm_outcome, kvm) = run(Accel::Kvm, "apic-kvm", Duration::from_secs(300));
    let (_, tcg) = run(Accel::Tcg, "apic-tcg2", Duration::from_secs(120));
    assert!(kvm.contains("apic: cpuid apic=00000001"), "{kvm}");
    let offered = kvm.contains("tsc-deadline=00000001");
    let mut want = pass::ALL;
    if offered {
        assert!(kvm.contains("apic: timer tsc-deadline ok"), "{kvm}");
    } else {
        want &= !pass::TSC_DEADLINE;
    }
    // The known KVM-side divergence (module doc): no ISR bit during the handler, the
    // vector still requested and remote IRR still set after the EOI, two interrupts.
    const KNOWN_KVM_LEVEL: &str = "hpet: level-triggered one-shot FAILED (ticks 00000000 00000002 \
         isr 00000000 irr-after-eoi 00020000 entry-after-eoi 0000c031)";
    let known = kvm.lines().any(|l| l == KNOWN_KVM_LEVEL);
    if known {
        println!("known KVM-side divergence: {KNOWN_KVM_LEVEL}");
        want &= !pass::HPET_LEVEL;
    }
    let comparable = |t: &str| -> Vec<String> {
        hardware_lines(t)
            .into_iter()
            .filter(|l| !l.starts_with("apic: result"))
            .filter(|l| !(known && l.starts_with("hpet: level-triggered")))
            .map(str::to_string)
            .collect()
    };
    assert_eq!(
        comparable(&kvm),
        comparable(&tcg),
        "KVM:\n{kvm}\nTCG:\n{tcg}"
    );
    assert_eq!(
        kvm_outcome,
        Outcome::DebugExit(apic_kernel::status(want)),
        "{kvm}"
    );
}
