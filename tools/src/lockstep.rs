//! `lockstep`: long lockstep campaigns (KVM against TCG, or TCG's JIT against its
//! interpreter) from a seed.

use std::time::Instant;
use vireo_testsuite::lockstep::campaign::{self, Config};
use vireo_testsuite::lockstep::env::{Mode, Privilege};
use vireo_testsuite::lockstep::gen::Features;
use vireo_testsuite::lockstep::runner::{Engine, EngineKind};

/// Options of one campaign.
pub struct Options {
    pub seed: u64,
    pub count: u64,
    pub modes: Vec<(Mode, Privilege)>,
    pub length: usize,
    pub show: usize,
    /// Generate x87 instructions too (random initial x87 state).
    pub x87: bool,
    /// Generate MMX and SSE instructions too (random MXCSR, XMM and MMX registers).
    pub sse: bool,
    /// Print the initial floating-point state of the divergences shown.
    pub state: bool,
    /// The engines compared (KVM first when it is one of them).
    pub engines: (EngineKind, EngineKind),
}

/// Parses the two engines of `--engines`: `kvm`, `tcg`/`interp`, `jit`.
pub fn parse_engines(names: &[String]) -> Result<(EngineKind, EngineKind), String> {
    let kind = |n: &str| match n {
        "kvm" => Ok(EngineKind::Kvm),
        "tcg" | "interp" => Ok(EngineKind::Tcg),
        "jit" => Ok(EngineKind::TcgJit),
        _ => Err(format!("unknown engine '{n}' (kvm, tcg/interp, jit)")),
    };
    let [a, b] = names else {
        return Err("--engines takes two engines, e.g. kvm,tcg or interp,jit".into());
    };
    let (a, b) = (kind(a)?, kind(b)?);
    if a == b {
        return Err("--engines: the two engines must differ".into());
    }
    // KVM first: the classifier's rules are about it.
    Ok(if b == EngineKind::Kvm { (b, a) } else { (a, b) })
}

/// Parses `real`, `pm32`, `compat32`, `long64` with an optional `:user`/`:kernel`.
pub fn parse_mode(s: &str) -> Result<Vec<(Mode, Privilege)>, String> {
    let (m, p) = s.split_once(':').unwrap_or((s, "both"));
    let mode = match m {
        "real" => Mode::Real,
        "pm32" => Mode::Protected32,
        "compat32" => Mode::Compat32,
        "long64" => Mode::Long64,
        _ => return Err(format!("unknown mode '{m}' (real, pm32, compat32, long64)")),
    };
    let privs = match (mode, p) {
        (Mode::Real, _) => vec![Privilege::Kernel],
        (_, "user") => vec![Privilege::User],
        (_, "kernel") => vec![Privilege::Kernel],
        (_, "both") => vec![Privilege::User, Privilege::Kernel],
        _ => return Err(format!("unknown privilege '{p}' (user, kernel)")),
    };
    Ok(privs.into_iter().map(|p| (mode, p)).collect())
}

/// Runs the campaigns; returns whether no divergence was found.
pub fn run(o: &Options) -> Result<bool, String> {
    let mut a = Engine::new(o.engines.0)?;
    let mut b = Engine::new(o.engines.1)?;
    let mut clean = true;
    for &(mode, privilege) in &o.modes {
        let cfg = Config {
            seed: o.seed,
            count: o.count,
            mode,
            privilege,
            length: o.length,
            features: Features {
                x87: o.x87,
                mmx_sse: o.sse,
                ..Features::GP
            },
        };
        let t = Instant::now();
        let r = campaign::run(&mut a, &mut b, &cfg);
        println!(
            "== {} vs {}, {mode:?} {privilege:?}, seeds {}..{} ({:.1} s)",
            a.name,
            b.name,
            o.seed,
            o.seed + o.count,
            t.elapsed().as_secs_f64()
        );
        print!("{}", r.summary(o.show));
        if o.state {
            for d in r.divergences.iter().take(o.show) {
                println!("-- seed {}:", d.seed);
                print!("{}", campaign::describe_fp(&cfg, d.seed));
            }
        }
        clean &= r.divergences.is_empty();
    }
    Ok(clean)
}
