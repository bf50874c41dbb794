//! Lockstep CI: random instruction sequences (general purpose, and a floating-point
//! sample: x87, MMX and SSE from a random FPU state) run under KVM (on this host,
//! 64-bit user code runs natively on the real CPU: the ground truth; everything else
//! runs in KVM's instruction emulator) and under TCG, compared register by register
//! (the FPU state too), with the data page and the exception that ended each sequence.
//!
//! The tests fail on any unexplained divergence, hang or unexpected end. Sequences an
//! engine cannot run (KVM's emulator lacks many instructions) are counted as engine
//! limits; divergences a known KVM defect explains (the rules of
//! `lockstep::campaign::KNOWN_KVM`, confirmed per sequence, listed in
//! `docs/LOCKSTEP.md`) are reported apart. Every sequence is replayable:
//! `vireo-tools lockstep --mode MODE --seed SEED --count 1` (with `--fp` for the
//! floating-point sample).

use std::time::Instant;
use vireo_testsuite::lockstep::campaign::{self, Config, Report};
use vireo_testsuite::lockstep::env::{Mode, Privilege};
use vireo_testsuite::lockstep::gen::Features;
use vireo_testsuite::lockstep::runner::Engine;
use vireo_testsuite::skip_without_kvm;

/// Instructions per sequence.
const LENGTH: usize = 8;

/// (mode, privilege, sequences, first seed): most sequences in 64-bit user mode, which
/// runs natively; a few hundred in each emulated environment.
const PLAN: &[(Mode, Privilege, u64, u64)] = &[
    (Mode::Long64, Privilege::User, 20_000, 1),
    (Mode::Compat32, Privilege::User, 400, 1_000_000),
    (Mode::Long64, Privilege::Kernel, 400, 2_000_000),
    (Mode::Protected32, Privilege::User, 200, 3_000_000),
    (Mode::Protected32, Privilege::Kernel, 200, 4_000_000),
    (Mode::Real, Privilege::Kernel, 300, 5_000_000),
];

/// The floating-point sample: x87, MMX and SSE forms from a random FPU state, in 64-bit
/// user mode (natively run: the CPU is the oracle). Longer campaigns: `vireo-tools
/// lockstep --fp`.
const FP_PLAN: (u64, u64) = (3_000, 1);

#[test]
fn tcg_agrees_with_kvm_on_floating_point() {
    if skip_without_kvm("tcg_agrees_with_kvm_on_floating_point") {
        return;
    }
    let mut kvm = Engine::kvm().expect("KVM engine");
    let mut tcg = Engine::tcg().expect("TCG engine");
    let (count, seed) = FP_PLAN;
    let cfg = Config {
        seed,
        count,
        mode: Mode::Long64,
        privilege: Privilege::User,
        length: LENGTH,
        features: Features::FP,
    };
    let t = Instant::now();
    let r: Report = campaign::run(&mut kvm, &mut tcg, &cfg);
    println!(
        "== floating point, Long64 User, seeds {seed}..{} ({:.1} s)",
        seed + count,
        t.elapsed().as_secs_f64()
    );
    print!("{}", r.summary(5));
    assert_eq!(r.sequences, count);
    let failures: Vec<String> = r
        .divergences
        .iter()
        .map(|d| format!("seed {}: {}", d.seed, d.diffs.join("; ")))
        .collect();
    assert!(
        failures.is_empty(),
        "{} unexplained divergences:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn tcg_agrees_with_kvm() {
    if skip_without_kvm("tcg_agrees_with_kvm") {
        return;
    }
    let mut kvm = Engine::kvm().expect("KVM engine");
    let mut tcg = Engine::tcg().expect("TCG engine");
    let start = Instant::now();
    let mut total = 0;
    let mut failures = Vec::new();
    for &(mode, privilege, count, seed) in PLAN {
        let cfg = Config {
            seed,
            count,
            mode,
            privilege,
            length: LENGTH,
            features: Features::GP,
        };
        let t = Instant::now();
        let r: Report = campaign::run(&mut kvm, &mut tcg, &cfg);
        println!(
            "== {mode:?} {privilege:?}, seeds {seed}..{} ({:.1} s)",
            seed + count,
            t.elapsed().as_secs_f64()
        );
        print!("{}", r.summary(5));
        total += r.sequences;
        failures.extend(r.divergences.iter().map(|d| {
            format!(
                "{mode:?} {privilege:?} seed {}: {}",
                d.seed,
                d.diffs.join("; ")
            )
        }));
    }
    println!(
        "{total} sequences in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    assert!(total >= 20_000, "only {total} sequences");
    assert!(
        failures.is_empty(),
        "{} unexplained divergences:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
