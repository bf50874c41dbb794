//! Lockstep CI, TCG's JIT against its interpreter: random instruction sequences
//! (general purpose in every environment, and floating point: x87, MMX and SSE from a
//! random FPU state) run on TCG with the IR interpreter and on TCG with the x86-64 JIT
//! backend, from the same state and memory. Both run the same IR, so nothing is
//! excused: registers, every flag, the data and stack pages, the exception that ended
//! the sequence and the whole FPU state must agree bit for bit. Needs no `/dev/kvm`.
//!
//! Every sequence is replayable: `vireo-tools lockstep --engines interp,jit --mode MODE
//! --seed SEED --count 1` (with `--fp` for the floating-point ones).

use std::time::Instant;
use vireo_testsuite::lockstep::campaign::{self, Config, Report};
use vireo_testsuite::lockstep::env::{Mode, Privilege};
use vireo_testsuite::lockstep::gen::Features;
use vireo_testsuite::lockstep::runner::Engine;

/// Instructions per sequence.
const LENGTH: usize = 8;

/// (mode, privilege, general-purpose sequences, floating-point sequences, first seed).
const PLAN: &[(Mode, Privilege, u64, u64, u64)] = &[
    (Mode::Long64, Privilege::User, 4_000, 1_500, 10_000_000),
    (Mode::Compat32, Privilege::User, 800, 300, 11_000_000),
    (Mode::Long64, Privilege::Kernel, 800, 300, 12_000_000),
    (Mode::Protected32, Privilege::User, 800, 300, 13_000_000),
    (Mode::Protected32, Privilege::Kernel, 800, 300, 14_000_000),
    (Mode::Real, Privilege::Kernel, 800, 300, 15_000_000),
];

#[test]
fn jit_agrees_with_interpreter() {
    let mut interp = Engine::tcg().expect("TCG engine (interpreter)");
    let mut jit = Engine::tcg_jit().expect("TCG engine (JIT)");
    assert!(campaign::strict(&interp, &jit));
    let start = Instant::now();
    let (mut total, mut total_fp) = (0, 0);
    let mut failures = Vec::new();
    for &(mode, privilege, count, fp_count, seed) in PLAN {
        for (features, count) in [(Features::GP, count), (Features::FP, fp_count)] {
            let cfg = Config {
                seed,
                count,
                mode,
                privilege,
                length: LENGTH,
                features,
            };
            let fp = features.fp();
            let t = Instant::now();
            let r: Report = campaign::run(&mut interp, &mut jit, &cfg);
            println!(
                "== {mode:?} {privilege:?}{}, seeds {seed}..{} ({:.1} s)",
                if fp { " fp" } else { "" },
                seed + count,
                t.elapsed().as_secs_f64()
            );
            print!("{}", r.summary(5));
            assert_eq!(r.sequences, count);
            assert_eq!(r.known_kvm_sequences, 0);
            if fp {
                total_fp += r.compared;
            } else {
                total += r.compared;
            }
            failures.extend(r.divergences.iter().map(|d| {
                format!(
                    "{mode:?} {privilege:?}{} seed {}: {}",
                    if fp { " --fp" } else { "" },
                    d.seed,
                    d.diffs.join("; ")
                )
            }));
        }
    }
    println!(
        "{total} general-purpose and {total_fp} floating-point sequences compared in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    assert!(
        total >= 8_000,
        "only {total} general-purpose sequences compared"
    );
    assert!(
        total_fp >= 3_000,
        "only {total_fp} floating-point sequences compared"
    );
    assert!(
        failures.is_empty(),
        "{} divergences between the JIT and the interpreter:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
