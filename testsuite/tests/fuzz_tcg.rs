//! Bounded fuzzing of the TCG engine with random bytes and random CPU states (see
//! `vireo_testsuite::fuzz`), plus every seed that ever crashed it.
//!
//! `VIREO_FUZZ_SECONDS` sets the time budget (default 10 s); `VIREO_FUZZ_SEED` the
//! first seed (default: derived from the time, printed, so a failure can be replayed).

use std::time::{Duration, Instant};
use vireo_testsuite::fuzz;

fn run_seed(seed: u64) -> Result<u64, String> {
    std::panic::catch_unwind(|| fuzz::run_case(seed)).map_err(|e| {
        let msg = e
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        format!("seed {seed} panicked: {msg}")
    })
}

#[test]
fn regression_seeds_do_not_panic() {
    for seed in fuzz::regression_seeds() {
        run_seed(seed).unwrap();
    }
}

#[test]
fn random_code_and_states_never_panic() {
    let budget = std::env::var("VIREO_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10u64);
    let first = std::env::var("VIREO_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(1)
        });
    println!("fuzz: first seed {first}, budget {budget} s");
    let start = Instant::now();
    let (mut cases, mut insns) = (0u64, 0u64);
    let mut failures = Vec::new();
    while start.elapsed() < Duration::from_secs(budget) {
        match run_seed(first + cases) {
            Ok(n) => insns += n,
            Err(e) => failures.push(e),
        }
        cases += 1;
    }
    println!(
        "fuzz: {cases} cases, {insns} guest instructions, {} panics",
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "add these seeds to testsuite/fuzz-regressions.txt after fixing: {failures:#?}"
    );
}
