//! The lockstep harness itself, checked on KVM alone: the same sequence run twice gives
//! the same outcome, and the stop decoding sees the exceptions the sequences raise.

use vireo_testsuite::lockstep::env::{self, Privilege};
use vireo_testsuite::lockstep::gen::{self, Features, Rng};
use vireo_testsuite::lockstep::runner::{compare, Engine};
use vireo_testsuite::skip_without_kvm;

#[test]
fn kvm_runs_are_reproducible_and_end_in_an_exception() {
    if skip_without_kvm("kvm_runs_are_reproducible_and_end_in_an_exception") {
        return;
    }
    let codes = gen::candidates(64, Features::GP);
    let mut engine = Engine::kvm().unwrap();
    let mut ud2_stops = 0;
    for seed in 0..40u64 {
        let mut rng = Rng::new(seed);
        let (code, _, undefined) = gen::random_sequence(&mut rng, &codes, 64, 8, env::CODE);
        let setup = env::long_mode(&mut rng, &code, Privilege::User);
        let a = engine.run(&setup).unwrap();
        let b = engine.run(&setup).unwrap();
        let diff = compare(&a, &b, undefined);
        assert!(diff.is_empty(), "seed {seed}: {diff:?}");
        let stop = a.stop.as_ref().expect("every run stops in a stub");
        if stop.vector == 6 && stop.rip == env::CODE + code.len() as u64 {
            ud2_stops += 1;
        }
    }
    // Most short sequences run to the final ud2.
    assert!(ud2_stops > 10, "only {ud2_stops} sequences reached the end");
}
