//! `bench-linux`: Debian's kernel and the busybox initramfs under TCG, vireo against
//! `qemu-system-x86_64 -accel tcg`, with the same kernel, initramfs, kernel command
//! line and machine options for every engine.
//!
//! Measured, per engine, `--runs` times (engines interleaved, so drift in the host's
//! load affects them alike):
//! - `boot`: spawn to the `/init` marker line on the serial console (every boot);
//! - `md5`, `gzip`, `loop`: CPU-bound jobs inside the guest, from the host-side arrival
//!   times of marker lines the guest prints just before and after each job (boot time
//!   and data generation excluded; see [`guest_jobs`]);
//! - `wall` and `RSS`: the whole process (spawn to exit, reaped with `wait4`) and its
//!   peak resident set of the boot that runs `md5` (boot + data + md5 + power-off).
//!
//! A run is one boot doing `md5` and, if selected, a second boot doing `gzip` and
//! `loop`; both boots add a `boot` sample. Each job's result is checked against the
//! host's (the guest's busybox run natively), so a fast wrong answer does not count.

mod guest_jobs;
mod report;

pub use guest_jobs::{Job, Sizes};
pub use report::{median, times};

use report::{load, metric_name, print_table, show, table_rows, write_json};
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use vireo_testsuite::guest::{self, CMD_DONE, INIT_MARKER};
use vireo_testsuite::process::{self, End, Next, Running, Usage};

/// Which program an engine variant runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Program {
    Vireo,
    Qemu,
}

/// An engine variant: a program and the arguments that select its engine.
#[derive(Debug, PartialEq, Eq)]
pub struct Variant {
    pub name: &'static str,
    pub program: Program,
    pub args: &'static [&'static str],
    /// What the variant is, for the header.
    pub about: &'static str,
}

/// The engine variants, in table order.
pub const VARIANTS: &[Variant] = &[
    Variant {
        name: "vireo-interp",
        program: Program::Vireo,
        args: &["-accel", "tcg", "-tcg-backend", "interp"],
        about: "vireo, TCG with the IR interpreter (CPU model: `-cpu qemu64`, as for all)",
    },
    Variant {
        name: "vireo-jit",
        program: Program::Vireo,
        args: &["-accel", "tcg", "-tcg-backend", "jit"],
        about: "vireo, TCG with the x86-64 JIT (CPU model: `-cpu qemu64`, as for all)",
    },
    Variant {
        name: "qemu-tcg",
        program: Program::Qemu,
        args: &["-accel", "tcg"],
        about: "QEMU TCG (`-cpu qemu64`, its default)",
    },
];

/// The variant ratios are taken against.
pub const REFERENCE: &str = "qemu-tcg";

/// `--engines` values: a variant's name, `qemu` / `vireo` for the first of those, or
/// `vireo-tcg` (the interpreter's earlier name).
pub fn parse_engine(s: &str) -> Result<&'static Variant, String> {
    let want = |v: &&Variant| match s {
        "qemu" => v.program == Program::Qemu,
        "vireo" => v.program == Program::Vireo,
        "vireo-tcg" => v.name == "vireo-interp",
        _ => v.name == s,
    };
    VARIANTS.iter().find(want).ok_or_else(|| {
        let names: Vec<&str> = VARIANTS.iter().map(|v| v.name).collect();
        format!("unknown engine (known: {}, qemu, vireo)", names.join(", "))
    })
}

/// Options of `bench-linux`.
#[derive(Debug, Clone)]
pub struct Options {
    pub runs: usize,
    pub jobs: Vec<Job>,
    pub engines: Vec<&'static Variant>,
    /// The engines were chosen with `--engines` (a missing QEMU is then an error).
    pub engines_given: bool,
    pub sizes: Sizes,
    pub mem_mib: u32,
    /// Limit for one boot, spawn to exit.
    pub timeout: Duration,
    pub vireo: Option<PathBuf>,
    pub qemu: Option<PathBuf>,
    pub dir: PathBuf,
    pub json: Option<PathBuf>,
    /// `bench-micro`'s work scale for the `micro` job.
    pub micro_scale: f64,
}

/// The jobs of each boot of a run: `md5` (or nothing: a bare boot) first, then `gzip`
/// and `loop` if selected; no boots when `micro` is the only job.
pub fn boots(jobs: &[Job]) -> Vec<Vec<Job>> {
    let has = |j| jobs.contains(&j);
    if jobs == [Job::Micro] {
        return Vec::new();
    }
    let rest: Vec<Job> = [Job::Gzip, Job::Loop]
        .into_iter()
        .filter(|&j| has(j))
        .collect();
    let mut b = Vec::new();
    if has(Job::Md5) || rest.is_empty() {
        b.push(if has(Job::Md5) {
            vec![Job::Md5]
        } else {
            vec![]
        });
    }
    if !rest.is_empty() {
        b.push(rest);
    }
    b
}

/// The CPU model of every benchmark run: the guest sees the same CPU under each
/// engine, QEMU's TCG default `qemu64` (vireo's TCG default is `max`, which has
/// SSSE3 and SSE4.2: the C library would pick other string functions than under
/// QEMU, and time would go to different guest code).
pub const CPU: &[&str] = &["-cpu", "qemu64"];

/// Machine options shared by every engine.
pub const MACHINE: &[&str] = &[
    "-nodefaults",
    "-display",
    "none",
    "-serial",
    "stdio",
    "-no-reboot",
];

/// The arguments of `v`: its own, then memory, [`CPU`], [`MACHINE`] and the guest.
pub fn engine_args(
    v: &Variant,
    mem_mib: u32,
    kernel: &Path,
    initrd: &Path,
    append: &str,
) -> Vec<OsString> {
    let mut a: Vec<OsString> = v.args.iter().map(OsString::from).collect();
    a.push("-m".into());
    a.push(mem_mib.to_string().into());
    a.extend(CPU.iter().chain(MACHINE).map(OsString::from));
    a.push("-kernel".into());
    a.push(kernel.into());
    a.push("-initrd".into());
    a.push(initrd.into());
    a.push("-append".into());
    a.push(append.into());
    a
}

/// A row of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Metric {
    Job(Job),
    /// Whole process of the first boot: spawn to exit.
    Wall,
    /// Peak RSS of the first boot's process, MiB.
    Rss,
}

/// One value: the metric, the host-side value, the guest clock's (jobs only).
type Sample = (Metric, f64, Option<f64>);

/// What one boot printed and how its process ended.
#[derive(Debug, Default)]
struct Outcome {
    boot: Option<Duration>,
    /// Job name, host-side duration, guest-clock duration.
    jobs: Vec<(String, Duration, Option<f64>)>,
    results: Vec<(String, String)>,
    cpu: Option<String>,
    status: Option<String>,
    end: Option<End>,
    usage: Option<Usage>,
    stderr: String,
    /// The last serial lines, for error messages.
    tail: Vec<String>,
}

/// Spawns one boot and reads its serial output until it exits or `timeout` passes.
fn boot_once(program: &Path, args: &[OsString], timeout: Duration) -> Outcome {
    let mut o = Outcome::default();
    let mut r = match Running::spawn(Command::new(program).args(args)) {
        Ok(r) => r,
        Err(e) => {
            o.stderr = e;
            return o;
        }
    };
    let deadline = Instant::now() + timeout;
    let mut begun: Vec<(String, Duration, Option<f64>)> = Vec::new();
    let timed_out = loop {
        let l = match r.next_line(deadline) {
            Next::Line(l) => l,
            Next::Eof => break false,
            Next::Timeout => break true,
        };
        if o.boot.is_none() && l.text.starts_with(INIT_MARKER) {
            o.boot = Some(l.at);
        }
        if let Some(s) = l.text.strip_prefix(CMD_DONE) {
            o.status = Some(s.trim().to_string());
        }
        match guest_jobs::parse(&l.text) {
            Some(guest_jobs::Event::Cpu(c)) => o.cpu = Some(c.to_string()),
            Some(guest_jobs::Event::Begin(j, up)) => begun.push((j.to_string(), l.at, up)),
            Some(guest_jobs::Event::End(j, up)) => {
                if let Some((_, t0, up0)) = begun.iter().rev().find(|(n, ..)| n == j) {
                    let guest = up.zip(*up0).map(|(b, a)| b - a);
                    o.jobs
                        .push((j.to_string(), l.at.saturating_sub(*t0), guest));
                }
            }
            Some(guest_jobs::Event::Result(j, v)) => o.results.push((j.into(), v.into())),
            None => {}
        }
        if o.tail.len() == 8 {
            o.tail.remove(0);
        }
        o.tail.push(l.text);
    };
    // Stdout closed: the process is exiting; give it a moment.
    let wait = if timed_out {
        Duration::ZERO
    } else {
        Duration::from_secs(30)
    };
    let (end, stderr, usage) = r.finish_with_usage(Instant::now() + wait);
    o.end = Some(end);
    o.stderr = stderr;
    o.usage = usage;
    o
}

/// The samples of one boot that ran `jobs`, and what went wrong if anything did.
/// `process` says whether this boot's wall time and RSS are the ones reported.
fn judge(
    o: &Outcome,
    jobs: &[Job],
    expected: &BTreeMap<Job, String>,
    process: bool,
    timeout: Duration,
) -> (Vec<Sample>, Vec<String>) {
    let mut samples = Vec::new();
    let mut errors = Vec::new();
    match o.boot {
        Some(at) => samples.push((Metric::Job(Job::Boot), at.as_secs_f64(), None)),
        None => errors.push("no /init marker".to_string()),
    }
    for &job in jobs {
        let timed = o.jobs.iter().find(|(n, ..)| n == job.name());
        let got = o
            .results
            .iter()
            .find(|(n, _)| n == job.name())
            .map(|(_, v)| v);
        match (timed, got, expected.get(&job)) {
            (None, ..) => errors.push(format!("{}: no begin/end markers", job.name())),
            (Some(_), g, Some(want)) if g != Some(want) => errors.push(format!(
                "{}: guest result {:?}, host expects {want}",
                job.name(),
                g.map_or("(none)", |g| g.as_str())
            )),
            (Some((_, d, guest)), ..) => samples.push((Metric::Job(job), d.as_secs_f64(), *guest)),
        }
    }
    if o.status.is_some() && o.status.as_deref() != Some("0") {
        errors.push(format!(
            "guest command status {}",
            o.status.as_deref().unwrap_or("")
        ));
    }
    let clean = match &o.end {
        Some(End::Exited { status, .. }) if status.success() => true,
        Some(End::Exited { status, .. }) => {
            errors.push(format!("process {}", process::describe_status(status)));
            false
        }
        Some(End::Killed { .. }) => {
            errors.push(format!(
                "still running after {} s; killed",
                timeout.as_secs()
            ));
            false
        }
        None => {
            errors.push(format!("did not start: {}", o.stderr));
            false
        }
    };
    if process && clean && errors.is_empty() {
        if let Some(end) = &o.end {
            samples.push((Metric::Wall, end.at().as_secs_f64(), None));
        }
        if let Some(u) = o.usage {
            samples.push((Metric::Rss, u.max_rss_kib as f64 / 1024.0, None));
        }
    }
    if !errors.is_empty() {
        if let Some(l) = process::last_line(&o.stderr) {
            errors.push(format!("stderr: {l}"));
        }
        if let Some(l) = o.tail.last() {
            errors.push(format!("last serial line: {l}"));
        }
    }
    (samples, errors)
}

/// One engine's samples and state.
struct EngineRuns {
    variant: &'static Variant,
    program: PathBuf,
    /// Host-side values, guest-clock values.
    samples: BTreeMap<Metric, (Vec<f64>, Vec<f64>)>,
    cpu: Option<String>,
    errors: Vec<String>,
    /// Failed boots in a row; the engine gives up at [`GIVE_UP`].
    failures: usize,
}

/// An engine stops after this many failed boots in a row.
const GIVE_UP: usize = 2;

/// Resolves each engine's program; drops QEMU with a note when it is missing and
/// the engines were not chosen explicitly (`engines_given`).
pub fn programs(
    engines: &[&'static Variant],
    engines_given: bool,
    vireo: Option<&Path>,
    qemu: Option<&Path>,
) -> Result<Vec<(&'static Variant, PathBuf)>, String> {
    let mut out = Vec::new();
    for v in engines {
        let p = match v.program {
            Program::Vireo => process::vireo_binary(vireo)?,
            Program::Qemu => match (qemu, process::find_in_path("qemu-system-x86_64")) {
                (Some(p), _) if p.is_file() => p.to_path_buf(),
                (Some(p), _) => return Err(format!("--qemu {}: no such file", p.display())),
                (None, Some(p)) => p,
                (None, None) if engines_given => {
                    return Err("qemu-system-x86_64 not found; install it with `apt-get \
                                install qemu-system-x86` or leave qemu out of --engines"
                        .into())
                }
                (None, None) => {
                    println!("qemu-system-x86_64 not found; {} left out", v.name);
                    continue;
                }
            },
        };
        out.push((*v, p));
    }
    Ok(out)
}

/// Runs the benchmark (the Linux boots, then the micro-kernels if asked for) and
/// prints the tables; returns whether every boot and run gave all its figures.
pub fn run(o: &Options) -> Result<bool, String> {
    let started = Instant::now();
    let engines = programs(
        &o.engines,
        o.engines_given,
        o.vireo.as_deref(),
        o.qemu.as_deref(),
    )?;
    let linux_ok = if boots(&o.jobs).is_empty() {
        true
    } else {
        run_linux(o, &engines)?
    };
    let micro_ok = if o.jobs.contains(&Job::Micro) {
        println!();
        crate::bench_micro::run(&crate::bench_micro::Options {
            runs: o.runs,
            kernels: crate::bench_micro::Kernel::ALL.to_vec(),
            engines,
            scale: o.micro_scale,
            timeout: o.timeout,
            dir: o.dir.join("micro"),
        })?
    } else {
        true
    };
    println!("bench wall time {:.1} s", started.elapsed().as_secs_f64());
    Ok(linux_ok && micro_ok)
}

/// The Linux part.
fn run_linux(o: &Options, programs: &[(&'static Variant, PathBuf)]) -> Result<bool, String> {
    let started = Instant::now();
    let load_start = load();
    let g = guest::prepared(&o.dir)?;
    let boots = boots(&o.jobs);
    let mut expected = BTreeMap::new();
    for &job in boots.iter().flatten() {
        if let Some(want) = guest_jobs::expected(job, &o.sizes, &g.busybox)? {
            expected.insert(job, want);
        }
    }
    let appends: Vec<String> = boots
        .iter()
        .map(|jobs| crate::boot::kernel_cmdline(&guest_jobs::script(jobs, &o.sizes), None))
        .collect();
    if let Some(a) = appends.iter().find(|a| a.len() >= 2047) {
        return Err(format!("kernel command line too long ({} bytes)", a.len()));
    }
    let mut engines: Vec<EngineRuns> = programs
        .iter()
        .map(|(variant, program)| EngineRuns {
            variant,
            program: program.clone(),
            samples: BTreeMap::new(),
            cpu: None,
            errors: Vec::new(),
            failures: 0,
        })
        .collect();

    println!(
        "bench-linux: kernel {} ({}), initramfs {}",
        g.kernel.display(),
        g.release,
        g.initramfs.display()
    );
    for e in &engines {
        let args = engine_args(e.variant, o.mem_mib, &g.kernel, &g.initramfs, "...");
        let shown: Vec<String> = args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        println!(
            "  {:<12} {} {}",
            e.variant.name,
            e.program.display(),
            shown.join(" ")
        );
        println!("  {:<12} ({})", "", e.variant.about);
    }
    println!(
        "  -append \"{} vireo.cmd=SCRIPT\" (SCRIPT percent-encoded), per boot of a run:",
        crate::boot::kernel_cmdline("", None)
    );
    for jobs in &boots {
        let names: Vec<&str> = jobs.iter().map(|j| j.name()).collect();
        let what = std::iter::once("boot")
            .chain(names)
            .collect::<Vec<_>>()
            .join("+");
        println!("  {what}: {}", guest_jobs::script(jobs, &o.sizes));
    }
    println!(
        "bench-linux: {} run(s), {} boot(s) per run and engine; load average {load_start}",
        o.runs,
        boots.len()
    );

    for run in 1..=o.runs {
        for (bi, jobs) in boots.iter().enumerate() {
            for e in engines.iter_mut().filter(|e| e.failures < GIVE_UP) {
                let args = engine_args(e.variant, o.mem_mib, &g.kernel, &g.initramfs, &appends[bi]);
                let out = boot_once(&e.program, &args, o.timeout);
                let (samples, errors) = judge(&out, jobs, &expected, bi == 0, o.timeout);
                if e.cpu.is_none() {
                    e.cpu.clone_from(&out.cpu);
                }
                let shown: Vec<String> = samples
                    .iter()
                    .map(|(m, v, _)| format!("{} {}", metric_name(*m, &boots), show(*m, *v)))
                    .collect();
                println!(
                    "run {run}/{} {:<12} boot {}: {}{}",
                    o.runs,
                    e.variant.name,
                    bi + 1,
                    shown.join(", "),
                    if errors.is_empty() { "" } else { "  FAILED" }
                );
                for (m, v, guest) in samples {
                    let s = e.samples.entry(m).or_default();
                    s.0.push(v);
                    s.1.extend(guest);
                }
                e.failures = if errors.is_empty() { 0 } else { e.failures + 1 };
                if let Some(first) = errors.first() {
                    println!("    error: {}", errors.join("; "));
                    e.errors.push(format!("run {run} boot {}: {first}", bi + 1));
                }
            }
        }
    }

    let rows = table_rows(&engines, o, &boots);
    print_table(&rows, &engines, &boots);
    println!(
        "load average at start {load_start}, at end {}; Linux part wall time {:.1} s",
        load(),
        started.elapsed().as_secs_f64()
    );
    if let Some(path) = &o.json {
        write_json(path, o, &rows, &engines, &appends, &load_start)?;
        println!("json: {}", path.display());
    }
    Ok(engines.iter().all(|e| e.errors.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn engines_parse_and_build_the_same_machine() {
        assert_eq!(parse_engine("vireo-tcg").unwrap().name, "vireo-interp");
        assert_eq!(parse_engine("vireo-jit").unwrap().args[3], "jit");
        assert_eq!(parse_engine("vireo-interp").unwrap().args[3], "interp");
        assert_eq!(parse_engine("qemu").unwrap().name, "qemu-tcg");
        assert!(parse_engine("bochs").unwrap_err().contains("vireo-interp"));
        assert!(VARIANTS.iter().any(|v| v.name == REFERENCE));
        let k = Path::new("/g/vmlinuz");
        let i = Path::new("/g/initramfs.cpio");
        let strip =
            |v: &Variant| engine_args(v, 512, k, i, "console=ttyS0")[v.args.len()..].to_vec();
        let qemu = parse_engine("qemu").unwrap();
        for v in VARIANTS {
            assert_eq!(
                strip(v),
                strip(qemu),
                "{}: the same machine and guest",
                v.name
            );
        }
        let a = engine_args(qemu, 512, k, i, "console=ttyS0");
        let a: Vec<&str> = a.iter().map(|s| s.to_str().unwrap()).collect();
        assert_eq!(
            a,
            [
                "-accel",
                "tcg",
                "-m",
                "512",
                "-cpu",
                "qemu64",
                "-nodefaults",
                "-display",
                "none",
                "-serial",
                "stdio",
                "-no-reboot",
                "-kernel",
                "/g/vmlinuz",
                "-initrd",
                "/g/initramfs.cpio",
                "-append",
                "console=ttyS0"
            ]
        );
    }

    #[test]
    fn boots_split_the_jobs() {
        use Job::*;
        assert_eq!(
            boots(&[Boot, Md5, Gzip, Loop]),
            [vec![Md5], vec![Gzip, Loop]]
        );
        assert_eq!(boots(&[Loop, Boot]), [vec![Loop]]);
        assert_eq!(boots(&[Boot]), [Vec::<Job>::new()]);
        assert_eq!(boots(&[Md5]), [vec![Md5]]);
        assert_eq!(boots(&[Md5, Micro]), [vec![Md5]]);
        assert!(boots(&[Micro]).is_empty());
    }

    fn outcome(result: &str) -> Outcome {
        Outcome {
            boot: Some(Duration::from_secs(2)),
            jobs: vec![("md5".into(), Duration::from_millis(1060), Some(1.05))],
            results: vec![("md5".into(), result.into())],
            status: Some("0".into()),
            end: Some(End::Exited {
                status: std::process::ExitStatus::from_raw(0),
                at: Duration::from_secs(5),
            }),
            usage: Some(Usage {
                max_rss_kib: 204_800,
                user: Duration::ZERO,
                system: Duration::ZERO,
            }),
            ..Outcome::default()
        }
    }

    #[test]
    fn judges_results() {
        let want = BTreeMap::from([(Job::Md5, "abc".to_string())]);
        let t = Duration::from_secs(60);
        let (s, e) = judge(&outcome("abc"), &[Job::Md5], &want, true, t);
        assert!(e.is_empty(), "{e:?}");
        assert_eq!(
            s,
            [
                (Metric::Job(Job::Boot), 2.0, None),
                (Metric::Job(Job::Md5), 1.06, Some(1.05)),
                (Metric::Wall, 5.0, None),
                (Metric::Rss, 200.0, None)
            ]
        );
        // A wrong result drops the job's sample and the process figures.
        let (s, e) = judge(&outcome("abd"), &[Job::Md5], &want, true, t);
        assert_eq!(s, [(Metric::Job(Job::Boot), 2.0, None)]);
        assert!(
            e[0].contains("guest result \"abd\", host expects abc"),
            "{e:?}"
        );
        // Only the first boot of a run reports the process.
        let (s, _) = judge(&outcome("abc"), &[Job::Md5], &want, false, t);
        assert_eq!(s.len(), 2);
        let mut o = outcome("abc");
        o.end = Some(End::Killed { at: t });
        o.jobs.clear();
        let (_, e) = judge(&o, &[Job::Md5], &want, true, t);
        assert!(
            e.iter().any(|e| e.contains("no begin/end markers")),
            "{e:?}"
        );
        assert!(e.iter().any(|e| e.contains("killed")), "{e:?}");
    }

    #[test]
    fn boot_once_reads_a_fake_guest() {
        let script = format!(
            "echo '{INIT_MARKER} (kernel x)'; echo 'VIREO-BENCH-CPU model name : Fake'; \
             echo 'VIREO-BENCH begin md5 1.00'; sleep 0.2; echo 'VIREO-BENCH end md5 1.20'; \
             echo 'VIREO-BENCH-RESULT md5 abc'; echo '{CMD_DONE}0'"
        );
        let args: Vec<OsString> = ["-c", script.as_str()].iter().map(OsString::from).collect();
        let o = boot_once(Path::new("/bin/sh"), &args, Duration::from_secs(20));
        assert!(o.boot.is_some());
        assert_eq!(o.cpu.as_deref(), Some("Fake"));
        assert_eq!(o.status.as_deref(), Some("0"));
        let (name, host, guest) = &o.jobs[0];
        assert_eq!(name, "md5");
        assert!(*host >= Duration::from_millis(150), "{host:?}");
        assert!((guest.unwrap() - 0.2).abs() < 1e-9);
        let want = BTreeMap::from([(Job::Md5, "abc".to_string())]);
        let (s, e) = judge(&o, &[Job::Md5], &want, true, Duration::from_secs(20));
        assert!(e.is_empty(), "{e:?}");
        assert!(s.iter().any(|(m, ..)| *m == Metric::Rss));
    }
}
