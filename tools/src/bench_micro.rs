//! `bench-micro` (and the `micro` job of `bench-linux`): the TCG micro-kernels
//! (`vireo_testsuite::micro_kernels`) under vireo's JIT and interpreter and under
//! `qemu-system-x86_64 -accel tcg`, with the same kernel file and machine options.
//!
//! Each kernel times one kind of guest work between two marker lines on the serial
//! console; the host takes the time between their arrival, checks the kernel's
//! checksum against its own, and divides the guest instructions the measured part
//! retires (known from the code) by that time.

use crate::bench_linux::{median, times, Variant, CPU, MACHINE, REFERENCE};
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
pub use vireo_testsuite::micro_kernels::Kernel;
use vireo_testsuite::micro_kernels::{self as mk, Built};
use vireo_testsuite::process::{self, End, Next, Running};

/// Options of the micro-kernel benchmark.
#[derive(Debug, Clone)]
pub struct Options {
    pub runs: usize,
    pub kernels: Vec<Kernel>,
    /// The engines and their programs (resolved by the caller).
    pub engines: Vec<(&'static Variant, PathBuf)>,
    /// Multiplies each kernel's default amount of work.
    pub scale: f64,
    /// Limit for one run, spawn to exit.
    pub timeout: Duration,
    /// Where the kernel files are written.
    pub dir: PathBuf,
}

/// The arguments of `v` for the kernel file `kernel`.
pub fn engine_args(v: &Variant, kernel: &Path) -> Vec<OsString> {
    let mut a: Vec<OsString> = v.args.iter().map(OsString::from).collect();
    a.push("-m".into());
    a.push(mk::MEM_MIB.to_string().into());
    a.extend(CPU.iter().chain(MACHINE).map(OsString::from));
    a.push("-device".into());
    a.push(format!("isa-debug-exit,iobase={:#x},iosize=0x04", mk::EXIT_PORT).into());
    a.push("-kernel".into());
    a.push(kernel.into());
    a
}

/// What one run gave: the measured time, or why not.
fn run_once(
    program: &Path,
    args: &[OsString],
    b: &Built,
    timeout: Duration,
) -> Result<f64, String> {
    let name = b.kernel.name();
    let mut r = Running::spawn(Command::new(program).args(args))?;
    let deadline = Instant::now() + timeout;
    let (mut begin, mut end, mut result) = (None, None, None);
    let mut last = String::new();
    let timed_out = loop {
        let l = match r.next_line(deadline) {
            Next::Line(l) => l,
            Next::Eof => break false,
            Next::Timeout => break true,
        };
        let text = l.text.trim_end();
        if text.strip_prefix(mk::BEGIN) == Some(name) {
            begin = Some(l.at);
        } else if text.strip_prefix(mk::END) == Some(name) {
            end = Some(l.at);
        } else if let Some(v) = text
            .strip_prefix(mk::RESULT)
            .and_then(|t| t.strip_prefix(name))
        {
            result = Some(v.trim().to_string());
        }
        last = text.to_string();
    };
    let wait = if timed_out {
        Duration::ZERO
    } else {
        Duration::from_secs(10)
    };
    let (ended, stderr) = r.finish(Instant::now() + wait);
    let want_status = (i32::from(mk::EXIT_VALUE) << 1) | 1;
    let why = |what: String| {
        let mut s = what;
        if let Some(l) = process::last_line(&stderr) {
            s.push_str(&format!("; stderr: {l}"));
        }
        if !last.is_empty() {
            s.push_str(&format!("; last serial line: {last}"));
        }
        s
    };
    match &ended {
        End::Exited { status, .. } if status.code() == Some(want_status) => {}
        End::Exited { status, .. }
            if status.code() == Some((i32::from(mk::EXIT_UNEXPECTED) << 1) | 1) =>
        {
            return Err(why("the kernel took an unexpected exception".into()))
        }
        End::Exited { status, .. } => {
            return Err(why(format!("process {}", process::describe_status(status))))
        }
        End::Killed { .. } => {
            return Err(why(format!(
                "still running after {} s; killed",
                timeout.as_secs()
            )))
        }
    }
    let want = format!("{:016x}", b.expected);
    match (begin, end, result) {
        (Some(b0), Some(e), Some(got)) if got == want => Ok(e.saturating_sub(b0).as_secs_f64()),
        (Some(_), Some(_), Some(got)) => Err(why(format!("result {got}, host expects {want}"))),
        _ => Err(why("no begin/end/result lines".into())),
    }
}

/// Runs the benchmark and prints its table; returns whether every run gave its figure.
pub fn run(o: &Options) -> Result<bool, String> {
    std::fs::create_dir_all(&o.dir).map_err(|e| format!("{}: {e}", o.dir.display()))?;
    let mut built = Vec::new();
    for &k in &o.kernels {
        let work = ((k.default_work() as f64) * o.scale).max(1.0) as u64;
        let b = mk::build(k, work)?;
        let path = o.dir.join(format!("micro-{}.elf", k.name()));
        std::fs::write(&path, &b.elf).map_err(|e| format!("{}: {e}", path.display()))?;
        built.push((b, path));
    }
    println!(
        "bench-micro: {} kernel(s) in {}, scale {}, {} run(s) per engine",
        built.len(),
        o.dir.display(),
        o.scale,
        o.runs
    );
    for (v, p) in &o.engines {
        let args = engine_args(v, Path::new("KERNEL"));
        let shown: Vec<String> = args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        println!("  {:<12} {} {}", v.name, p.display(), shown.join(" "));
    }
    // (kernel, engine) -> seconds of the good runs; errors per engine.
    let mut samples: BTreeMap<(Kernel, &str), Vec<f64>> = BTreeMap::new();
    let mut errors: Vec<String> = Vec::new();
    for run in 1..=o.runs {
        for (b, path) in &built {
            for (v, program) in &o.engines {
                let args = engine_args(v, path);
                match run_once(program, &args, b, o.timeout) {
                    Ok(s) => {
                        println!(
                            "run {run}/{} {:<12} {:<9} {:.3} s, {:.0} MIPS",
                            o.runs,
                            v.name,
                            b.kernel.name(),
                            s,
                            b.instructions as f64 / s / 1e6
                        );
                        samples.entry((b.kernel, v.name)).or_default().push(s);
                    }
                    Err(e) => {
                        println!(
                            "run {run}/{} {:<12} {:<9} FAILED: {e}",
                            o.runs,
                            v.name,
                            b.kernel.name()
                        );
                        errors.push(format!("{} {}: {e}", v.name, b.kernel.name()));
                    }
                }
            }
        }
    }
    print_table(&built, o, &samples);
    for e in errors.iter().take(10) {
        println!("error: {e}");
    }
    Ok(errors.is_empty())
}

fn print_table(
    built: &[(Built, PathBuf)],
    o: &Options,
    samples: &BTreeMap<(Kernel, &str), Vec<f64>>,
) {
    println!();
    println!(
        "{:<12} {:<10} {:>9} {:>5} {:>10} {:>10} {:>14}  vs QEMU",
        "engine", "kernel", "Minsns", "ok", "median", "MIPS", "rate"
    );
    println!("{}", "-".repeat(88));
    for (b, _) in built {
        let k = b.kernel;
        let reference = samples.get(&(k, REFERENCE)).and_then(|s| median(s));
        for (v, _) in &o.engines {
            let s = samples.get(&(k, v.name)).cloned().unwrap_or_default();
            let med = median(&s);
            let mips = med.map(|m| b.instructions as f64 / m / 1e6);
            let rate = med.map(|m| b.units as f64 / m);
            // Speed relative to QEMU: above 1 means faster.
            let vs = match (v.name == REFERENCE, med, reference) {
                (true, ..) => "(reference)".to_string(),
                (false, Some(m), Some(q)) if m > 0.0 => format!("{} QEMU's speed", times(q / m)),
                _ => "-".to_string(),
            };
            println!(
                "{:<12} {:<10} {:>9.1} {:>5} {:>10} {:>10} {:>14}  {vs}",
                v.name,
                k.name(),
                b.instructions as f64 / 1e6,
                format!("{}/{}", s.len(), o.runs),
                med.map_or("-".into(), |m| format!("{m:.3} s")),
                mips.map_or("-".into(), |m| format!("{m:.0}")),
                rate.map_or("-".into(), |r| format!("{} {}/s", si(r), short_unit(k))),
            );
        }
    }
    println!("{}", "-".repeat(88));
    println!(
        "Minsns: guest instructions of the measured part; median: host time between the \
         kernel's begin/end lines; MIPS: Minsns / median; vs QEMU: {REFERENCE}'s median / \
         this engine's (above 1.00x: faster than QEMU)"
    );
}

fn short_unit(k: Kernel) -> &'static str {
    match k {
        Kernel::Alu => "iter",
        Kernel::Mem => "elem",
        Kernel::Call => "call",
        Kernel::Indirect => "disp",
        Kernel::Syscall => "sysc",
        Kernel::PageFault => "flt",
        Kernel::Bignum => "limb",
    }
}

/// `1.23M`, `456k`.
fn si(v: f64) -> String {
    if v >= 1e9 {
        format!("{:.2}G", v / 1e9)
    } else if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.0}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench_linux::parse_engine;

    #[test]
    fn every_engine_gets_the_same_machine() {
        let k = Path::new("/x/micro-alu.elf");
        let q = parse_engine("qemu").unwrap();
        for v in crate::bench_linux::VARIANTS {
            assert_eq!(
                engine_args(v, k)[v.args.len()..],
                engine_args(q, k)[q.args.len()..]
            );
        }
        let a = engine_args(q, k);
        let a: Vec<&str> = a.iter().map(|s| s.to_str().unwrap()).collect();
        assert!(a
            .windows(2)
            .any(|w| w == ["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]));
        assert!(a.windows(2).any(|w| w == ["-m", "64"]));
        assert!(a.windows(2).any(|w| w == ["-cpu", "qemu64"]));
    }

    #[test]
    fn run_once_checks_the_result_and_the_exit() {
        let b = mk::build(Kernel::Syscall, 1000).unwrap();
        let want = format!("{:016x}", b.expected);
        let script = |result: &str, status: i32| {
            format!(
                "echo '{}syscall'; sleep 0.1; echo '{}syscall'; echo '{}syscall {result}'; exit {status}",
                mk::BEGIN,
                mk::END,
                mk::RESULT
            )
        };
        let sh = |s: String| vec![OsString::from("-c"), OsString::from(s)];
        let t = Duration::from_secs(20);
        let ok = run_once(Path::new("/bin/sh"), &sh(script(&want, 33)), &b, t).unwrap();
        assert!(ok >= 0.09, "{ok}");
        let e = run_once(Path::new("/bin/sh"), &sh(script("0", 33)), &b, t).unwrap_err();
        assert!(e.contains("host expects"), "{e}");
        let e = run_once(Path::new("/bin/sh"), &sh(script(&want, 253)), &b, t).unwrap_err();
        assert!(e.contains("unexpected exception"), "{e}");
    }
}
