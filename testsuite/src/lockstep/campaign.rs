//! A lockstep campaign: many random sequences, each run on two engines from the same
//! state and memory, compared.

use super::env::{self, Mode, Privilege};
use super::gen::{self, Features, Rng};
use super::runner::{compare, Engine, RunError};
use std::collections::BTreeMap;

/// What to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// Sequence `i` uses seed `seed + i`: any sequence can be replayed alone.
    pub seed: u64,
    pub count: u64,
    pub mode: Mode,
    pub privilege: Privilege,
    /// Instructions per sequence.
    pub length: usize,
    pub features: Features,
}

/// A sequence on which the engines disagree.
#[derive(Debug, Clone)]
pub struct Divergence {
    pub seed: u64,
    /// The sequence, disassembled.
    pub listing: Vec<String>,
    pub diffs: Vec<String>,
}

/// The result of a campaign.
#[derive(Debug, Default)]
pub struct Report {
    /// Sequences generated.
    pub sequences: u64,
    /// Sequences both engines ran and that were compared.
    pub compared: u64,
    /// Sequences skipped because an engine could not run them, by reason.
    pub engine_limits: BTreeMap<String, u64>,
    pub divergences: Vec<Divergence>,
}

fn short_reason(e: &RunError, engine: &str) -> String {
    match e {
        RunError::EngineLimit(m) | RunError::Other(m) => {
            // Group by instruction: "the host KVM cannot emulate `x` (bytes ...)".
            let m = m.split(" (bytes").next().unwrap_or(m);
            format!("{engine}: {m}")
        }
    }
}

/// Runs the campaign on engines `a` and `b`.
pub fn run(a: &mut Engine, b: &mut Engine, cfg: &Config) -> Report {
    let codes = gen::candidates(cfg.mode.bitness(), cfg.features);
    let mut report = Report::default();
    for i in 0..cfg.count {
        let seed = cfg.seed.wrapping_add(i);
        let mut rng = Rng::new(seed);
        let (code, insns, undefined) =
            gen::random_sequence(&mut rng, &codes, cfg.mode.bitness(), cfg.length, env::CODE);
        let setup = env::setup(cfg.mode, cfg.privilege, &mut rng, &code);
        report.sequences += 1;
        let ra = a.run(cfg.mode, &setup);
        let rb = b.run(cfg.mode, &setup);
        let (oa, ob) = match (ra, rb) {
            (Ok(x), Ok(y)) => (x, y),
            (Err(e), _) => {
                *report
                    .engine_limits
                    .entry(short_reason(&e, a.name))
                    .or_default() += 1;
                continue;
            }
            (_, Err(e)) => {
                *report
                    .engine_limits
                    .entry(short_reason(&e, b.name))
                    .or_default() += 1;
                continue;
            }
        };
        report.compared += 1;
        let diffs = compare(&oa, &ob, undefined);
        if !diffs.is_empty() {
            report.divergences.push(Divergence {
                seed,
                listing: insns.iter().map(|i| i.to_string()).collect(),
                diffs,
            });
        }
    }
    report
}

impl Report {
    /// A human-readable summary: counts, engine limits, and the first divergences.
    pub fn summary(&self, max_divergences: usize) -> String {
        let mut s = format!(
            "{} sequences, {} compared, {} divergences\n",
            self.sequences,
            self.compared,
            self.divergences.len()
        );
        for (why, n) in &self.engine_limits {
            s.push_str(&format!("  skipped {n}: {why}\n"));
        }
        for d in self.divergences.iter().take(max_divergences) {
            s.push_str(&format!("  seed {}: {}\n", d.seed, d.diffs.join("; ")));
            for l in &d.listing {
                s.push_str(&format!("      {l}\n"));
            }
        }
        s
    }
}
