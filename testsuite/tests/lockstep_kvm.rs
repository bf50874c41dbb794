//! The lockstep harness itself, checked on KVM alone: the same sequence run twice gives
//! the same outcome, and the stop decoding sees the exceptions the sequences raise.

use vireo_testsuite::lockstep::env::{self, Mode, Privilege};
use vireo_testsuite::lockstep::gen::{self, Features, Rng};
use vireo_testsuite::lockstep::runner::{compare, Engine, Ignore, RunError};
use vireo_testsuite::skip_without_kvm;

#[test]
fn kvm_runs_are_reproducible_and_end_in_an_exception() {
    if skip_without_kvm("kvm_runs_are_reproducible_and_end_in_an_exception") {
        return;
    }
    let mut engine = Engine::kvm().unwrap();
    for (mode, privilege, runs) in [
        (Mode::Long64, Privilege::User, 40u64),
        (Mode::Protected32, Privilege::User, 20),
        (Mode::Compat32, Privilege::User, 20),
        (Mode::Long64, Privilege::Kernel, 5),
        (Mode::Compat32, Privilege::Kernel, 5),
        (Mode::Protected32, Privilege::Kernel, 5),
        (Mode::Real, Privilege::Kernel, 5),
    ] {
        let codes = gen::candidates(mode.bitness(), Features::GP);
        let mut end_stops = 0;
        let mut ran = 0;
        for seed in 0..runs {
            let mut rng = Rng::new(seed);
            let (code, _, undefined) =
                gen::random_sequence(&mut rng, &codes, mode.bitness(), 6, env::CODE);
            let setup = env::setup(mode, privilege, &mut rng, &code);
            let a = match engine.run(mode, &setup) {
                Ok(a) => a,
                // The host KVM's emulator (kernel and real mode) lacks some instructions.
                Err(RunError::EngineLimit(_)) => continue,
                Err(e) => panic!("{mode:?} seed {seed}: {e:?}"),
            };
            ran += 1;
            let b = engine.run(mode, &setup).unwrap();
            let diff = compare(&a, &b, &Ignore::flags(undefined));
            assert!(diff.is_empty(), "{mode:?} seed {seed}: {diff:?}");
            let stop = a.stop.as_ref().expect("every run stops in a stub");
            if stop.vector == env::COMPLETED && stop.rip == setup.end_rip {
                end_stops += 1;
            }
        }
        // Many short sequences run to the end (of those KVM could run).
        assert!(
            end_stops * 4 >= ran,
            "{mode:?}: only {end_stops} of {ran} reached the end"
        );
    }
}
