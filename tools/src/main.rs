//! `vireo-tools`: helper programs for vireo's development.
//!
//! - `prepare-guest`: download a Debian cloud kernel and busybox, build a busybox
//!   initramfs (cached under `target/guest/`).
//! - `linux-boot`: boot that guest under vireo and report how far it got.
//! - `bench`: boot-to-marker times of vireo against QEMU, both with KVM.
//! - `bench-linux`: Linux under TCG, vireo against QEMU: boot time, CPU-bound jobs in
//!   the guest, whole-process wall time and peak RSS.
//! - `bench-micro`: TCG micro-kernels (ALU, memory, call/ret, indirect jumps, system
//!   calls, page faults), vireo's JIT and interpreter against QEMU's TCG.
//! - `lockstep`: long lockstep campaigns, KVM against TCG (or TCG's JIT against its
//!   interpreter), from a seed.
//! - `tcg-speed`: guest instructions per second of the TCG engine on CPU-bound loops
//!   (interpreter and JIT).
//!
//! Errors are one line, `vireo-tools: ...`, with exit status 1.

mod bench;
mod bench_linux;
mod bench_micro;
mod boot;
mod lockstep;
mod tcgbench;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use vireo_testsuite::guest;
use vireo_testsuite::lockstep::runner::EngineKind;
use vireo_testsuite::micro_kernels::Kernel;

#[derive(Parser, Debug)]
#[command(name = "vireo-tools", version, about = "vireo's helper programs")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Download a Debian cloud kernel and busybox and build a busybox initramfs.
    ///
    /// Downloads are cached: with a populated cache nothing is fetched. The
    /// initramfs's /init runs the kernel command line's `vireo.cmd=` (percent-encoded:
    /// %20 is a space, %XX any byte), prints `VIREO-CMD-DONE status=<rc>` and powers off.
    PrepareGuest {
        /// Cache directory [default: <target dir>/guest]
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Boot the prepared guest under vireo and report how far it got (a diagnostic).
    ///
    /// Exit status: 0 if /init was reached, 2 if not, 1 on errors.
    LinuxBoot {
        /// Execution engine passed to vireo's -accel.
        #[arg(long, default_value = "kvm", value_parser = ["kvm", "tcg"])]
        accel: String,
        /// TCG backend passed to vireo's -tcg-backend (under --accel tcg).
        #[arg(long, default_value = "jit", value_parser = ["interp", "jit"])]
        tcg_backend: String,
        /// Stop (kill vireo) after this many seconds.
        #[arg(long, default_value_t = 120)]
        timeout: u64,
        /// Shell command /init runs (sent as vireo.cmd=, percent-encoded).
        #[arg(long, default_value = "uname -a; md5sum /bin/busybox")]
        cmd: String,
        /// The vireo binary [default: `vireo` next to this program]
        #[arg(long)]
        vireo: Option<PathBuf>,
        /// Guest RAM in MiB.
        #[arg(short = 'm', long = "mem", default_value_t = 512)]
        mem: u32,
        /// Number of vCPUs.
        #[arg(long, default_value_t = 1)]
        smp: u32,
        /// Extra kernel command-line arguments.
        #[arg(long)]
        append: Option<String>,
        /// Do not echo the serial output while it runs (the report still shows its tail).
        #[arg(long, short)]
        quiet: bool,
        /// Guest cache directory [default: <target dir>/guest]
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Lockstep: random instruction sequences run under KVM and TCG (or TCG's JIT and
    /// interpreter: --engines interp,jit) and compared.
    ///
    /// Sequence i uses seed SEED+i, so a divergence can be replayed alone with
    /// `--seed S --count 1`. Exit status: 0 without divergences, 2 with, 1 on errors.
    Lockstep {
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long, default_value_t = 10_000)]
        count: u64,
        /// Modes: real, pm32, compat32, long64, each optionally :user or :kernel
        /// [default: long64:user,compat32:user,pm32:user,long64:kernel,pm32:kernel,real;
        /// with --x87/--sse/--fp long64:user, the only environment whose floating point
        /// KVM runs (natively): its emulator lacks nearly all of it; all of them with
        /// --engines interp,jit]
        #[arg(long, value_delimiter = ',')]
        mode: Vec<String>,
        /// Instructions per sequence.
        #[arg(long, default_value_t = 8)]
        length: usize,
        /// Divergences shown per mode.
        #[arg(long, default_value_t = 10)]
        show: usize,
        /// Also generate x87 instructions, from a random x87 state.
        #[arg(long)]
        x87: bool,
        /// Also generate MMX and SSE instructions (as far as TCG's CPUID model
        /// advertises them), from random MXCSR, XMM and MMX registers.
        #[arg(long)]
        sse: bool,
        /// Both --x87 and --sse.
        #[arg(long)]
        fp: bool,
        /// Print the initial floating-point state (and FP memory operands) of the
        /// divergences shown.
        #[arg(long)]
        state: bool,
        /// The two engines compared: `kvm,tcg` (KVM against TCG's interpreter, the
        /// default) or `interp,jit` (TCG's JIT against its interpreter: no /dev/kvm
        /// needed, everything compared bit for bit, nothing excused).
        #[arg(long, value_delimiter = ',', default_value = "kvm,tcg")]
        engines: Vec<String>,
    },
    /// Guest instructions per second of the TCG engine on CPU-bound micro-benchmarks.
    TcgSpeed,
    /// Boot-to-marker benchmark: vireo (KVM) against qemu-system-x86_64 -accel kvm.
    Bench {
        /// Timed runs per guest and engine.
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=1000))]
        runs: u64,
        /// Untimed warm-up runs per guest and engine.
        #[arg(long, default_value_t = 1)]
        warmup: u64,
        /// Seconds to wait for the marker in each run.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
        /// Seconds to wait for the process to exit after the marker before killing it.
        #[arg(long, default_value_t = 2.0)]
        exit_wait: f64,
        /// The vireo binary [default: `vireo` next to this program]
        #[arg(long)]
        vireo: Option<PathBuf>,
        /// The QEMU binary [default: qemu-system-x86_64 in $PATH]
        #[arg(long)]
        qemu: Option<PathBuf>,
        /// Where the guest images are written [default: <target dir>/guest/bench]
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Linux under TCG: vireo against qemu-system-x86_64 -accel tcg on the same guest.
    ///
    /// Boots the prepared Debian kernel and busybox initramfs (`prepare-guest`) with the
    /// same kernel command line, `-m`, CPU model (`-cpu qemu64`, QEMU's TCG default) and
    /// machine options under each engine, and measures
    /// spawn to the /init marker, CPU-bound jobs timed between marker lines the guest
    /// prints (md5sum and gzip of generated files, a shell arithmetic loop), and the
    /// whole process (wall time, peak RSS) of the boot that runs md5. Prints medians and
    /// each engine's ratio to QEMU (25.3x = it takes 25.3 times QEMU's time).
    ///
    /// Exit status: 0 if every boot gave all its figures, 2 if some failed (timeout,
    /// wrong job result, crash), 1 on errors.
    BenchLinux {
        /// Runs per engine.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=1000))]
        runs: u64,
        /// What to measure: boot (on every boot anyway; alone: boots only), md5, gzip,
        /// loop, micro (the micro-kernels of bench-micro, after the boots).
        #[arg(
            long,
            value_enum,
            value_delimiter = ',',
            default_value = "boot,md5,gzip,loop,micro"
        )]
        jobs: Vec<bench_linux::Job>,
        /// Engines: vireo-interp, vireo-jit, qemu-tcg (or qemu, vireo) [default: all]
        #[arg(long, value_delimiter = ',', value_parser = bench_linux::parse_engine)]
        engines: Vec<&'static bench_linux::Variant>,
        /// MiB of generated data md5sum hashes.
        #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=1024))]
        md5_mib: u32,
        /// MiB of generated data gzip compresses.
        #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1024))]
        gzip_mib: u32,
        /// Work scale of the micro-kernels (see bench-micro --scale).
        #[arg(long, default_value_t = 1.0, value_parser = parse_scale)]
        micro_scale: f64,
        /// Iterations of the shell loop.
        #[arg(long = "loop", default_value_t = 300_000, value_parser = clap::value_parser!(u64).range(1..))]
        loop_iters: u64,
        /// Guest RAM in MiB (at least twice the larger data file plus 128).
        #[arg(short = 'm', long = "mem", default_value_t = 512)]
        mem: u32,
        /// Seconds one boot may take, spawn to exit, before it is killed.
        #[arg(long, default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..))]
        timeout: u64,
        /// The vireo binary [default: `vireo` next to this program]
        #[arg(long)]
        vireo: Option<PathBuf>,
        /// The QEMU binary [default: qemu-system-x86_64 in $PATH]
        #[arg(long)]
        qemu: Option<PathBuf>,
        /// Guest cache directory [default: <target dir>/guest]
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Also write the samples and medians to this file as JSON.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// TCG micro-kernels: vireo (JIT, interpreter) against qemu-system-x86_64 -accel tcg.
    ///
    /// Multiboot kernels built in process, one per kind of guest work (integer ALU
    /// loop, memory-bound loop over a 16 MiB array, call/ret recursion, indirect jumps,
    /// system calls, page faults), each run with the same file, CPU model and machine
    /// options under each engine. Prints the median time between the kernel's begin/end
    /// marker lines, guest instructions per second, and each engine's speed relative to
    /// QEMU.
    ///
    /// Exit status: 0 if every run gave its figure (right checksum), 2 if some failed,
    /// 1 on errors.
    BenchMicro {
        /// Runs per kernel and engine.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=1000))]
        runs: u64,
        /// Kernels: alu, mem, call, indirect, syscall, pagefault [default: all]
        #[arg(long, value_delimiter = ',', value_parser = parse_kernel)]
        kernels: Vec<Kernel>,
        /// Engines: vireo-interp, vireo-jit, qemu-tcg (or qemu, vireo) [default: all]
        #[arg(long, value_delimiter = ',', value_parser = bench_linux::parse_engine)]
        engines: Vec<&'static bench_linux::Variant>,
        /// Multiplies each kernel's amount of work (1.0: 20M to 400M instructions).
        #[arg(long, default_value_t = 1.0, value_parser = parse_scale)]
        scale: f64,
        /// Seconds one run may take before it is killed.
        #[arg(long, default_value_t = 900, value_parser = clap::value_parser!(u64).range(1..))]
        timeout: u64,
        /// The vireo binary [default: `vireo` next to this program]
        #[arg(long)]
        vireo: Option<PathBuf>,
        /// The QEMU binary [default: qemu-system-x86_64 in $PATH]
        #[arg(long)]
        qemu: Option<PathBuf>,
        /// Where the kernel files are written [default: <target dir>/guest/micro]
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

/// A micro-kernel work scale: more than 0, at most 1000.
fn parse_scale(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v <= 1000.0 => Ok(v),
        _ => Err("expected a number more than 0, at most 1000".into()),
    }
}

fn parse_kernel(s: &str) -> Result<Kernel, String> {
    Kernel::ALL
        .into_iter()
        .find(|k| k.name() == s)
        .ok_or_else(|| {
            let names: Vec<&str> = Kernel::ALL.iter().map(|k| k.name()).collect();
            format!("unknown kernel (known: {})", names.join(", "))
        })
}

/// The engines chosen (without repeats), or every variant.
fn chosen_engines(
    engines: Vec<&'static bench_linux::Variant>,
) -> Vec<&'static bench_linux::Variant> {
    let mut chosen: Vec<&'static bench_linux::Variant> = Vec::new();
    let all = if engines.is_empty() {
        bench_linux::VARIANTS.iter().collect()
    } else {
        engines
    };
    for v in all {
        if !chosen.contains(&v) {
            chosen.push(v);
        }
    }
    chosen
}

fn run(cli: Cli) -> Result<ExitCode, String> {
    match cli.command {
        Cmd::PrepareGuest { dir } => {
            let dir = dir.unwrap_or_else(guest::default_dir);
            let g = guest::prepare(&dir)?;
            println!("kernel      {} ({})", g.kernel.display(), g.release);
            println!("initramfs   {}", g.initramfs.display());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::LinuxBoot {
            accel,
            tcg_backend,
            timeout,
            cmd,
            vireo,
            mem,
            smp,
            append,
            quiet,
            dir,
        } => {
            let o = boot::Options {
                accel,
                tcg_backend,
                timeout: Duration::from_secs(timeout),
                cmd,
                vireo,
                mem_mib: mem,
                cpus: smp,
                dir: dir.unwrap_or_else(guest::default_dir),
                append,
                quiet,
            };
            Ok(if boot::run(&o)? {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            })
        }
        Cmd::TcgSpeed => {
            tcgbench::run_all()?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Lockstep {
            seed,
            count,
            mode,
            length,
            show,
            x87,
            sse,
            fp,
            state,
            engines,
        } => {
            let engines = lockstep::parse_engines(&engines)?;
            let kvm = engines.0 == EngineKind::Kvm;
            let mode = match (mode.is_empty(), (x87 || sse || fp) && kvm) {
                (false, _) => mode,
                (true, true) => vec!["long64:user".to_string()],
                (true, false) => [
                    "long64:user",
                    "compat32:user",
                    "pm32:user",
                    "long64:kernel",
                    "pm32:kernel",
                    "real",
                ]
                .map(String::from)
                .to_vec(),
            };
            let mut modes = Vec::new();
            for m in &mode {
                modes.extend(lockstep::parse_mode(m)?);
            }
            let o = lockstep::Options {
                seed,
                count,
                modes,
                length: length.clamp(1, 64),
                show,
                x87: x87 || fp,
                sse: sse || fp,
                state,
                engines,
            };
            Ok(if lockstep::run(&o)? {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            })
        }
        Cmd::Bench {
            runs,
            warmup,
            timeout,
            exit_wait,
            vireo,
            qemu,
            dir,
        } => {
            if !(0.0..=600.0).contains(&exit_wait) {
                return Err(format!(
                    "--exit-wait {exit_wait}: expected 0 to 600 seconds"
                ));
            }
            let o = bench::Options {
                runs: runs as usize,
                warmup: warmup as usize,
                timeout: Duration::from_secs(timeout),
                exit_wait: Duration::from_secs_f64(exit_wait),
                vireo,
                qemu,
                dir: dir.unwrap_or_else(|| guest::default_dir().join("bench")),
            };
            bench::run(&o)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::BenchLinux {
            runs,
            jobs,
            engines,
            md5_mib,
            gzip_mib,
            loop_iters,
            micro_scale,
            mem,
            timeout,
            vireo,
            qemu,
            dir,
            json,
        } => {
            let sizes = bench_linux::Sizes {
                md5_mib: if jobs.contains(&bench_linux::Job::Md5) {
                    md5_mib
                } else {
                    0
                },
                gzip_mib: if jobs.contains(&bench_linux::Job::Gzip) {
                    gzip_mib
                } else {
                    0
                },
                loop_iters,
            };
            let need = 2 * u64::from(sizes.md5_mib.max(sizes.gzip_mib)) + 128;
            if u64::from(mem) < need {
                return Err(format!(
                    "-m {mem}: the jobs need at least {need} MiB of guest RAM \
                     (twice the larger data file plus 128)"
                ));
            }
            let engines_given = !engines.is_empty();
            let o = bench_linux::Options {
                runs: runs as usize,
                jobs,
                engines: chosen_engines(engines),
                engines_given,
                sizes,
                mem_mib: mem,
                timeout: Duration::from_secs(timeout),
                vireo,
                qemu,
                dir: dir.unwrap_or_else(guest::default_dir),
                json,
                micro_scale,
            };
            Ok(if bench_linux::run(&o)? {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            })
        }
        Cmd::BenchMicro {
            runs,
            kernels,
            engines,
            scale,
            timeout,
            vireo,
            qemu,
            dir,
        } => {
            let engines_given = !engines.is_empty();
            let engines = bench_linux::programs(
                &chosen_engines(engines),
                engines_given,
                vireo.as_deref(),
                qemu.as_deref(),
            )?;
            let o = bench_micro::Options {
                runs: runs as usize,
                kernels: if kernels.is_empty() {
                    Kernel::ALL.to_vec()
                } else {
                    kernels
                },
                engines,
                scale,
                timeout: Duration::from_secs(timeout),
                dir: dir.unwrap_or_else(|| guest::default_dir().join("micro")),
            };
            Ok(if bench_micro::run(&o)? {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            })
        }
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vireo-tools: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_subcommands() {
        let c = Cli::try_parse_from(["vireo-tools", "linux-boot", "--timeout", "5", "-m", "256"])
            .unwrap();
        assert!(matches!(
            c.command,
            Cmd::LinuxBoot {
                timeout: 5,
                mem: 256,
                ..
            }
        ));
        let c = Cli::try_parse_from(["vireo-tools", "bench", "--runs", "3"]).unwrap();
        assert!(matches!(c.command, Cmd::Bench { runs: 3, .. }));
        assert!(Cli::try_parse_from(["vireo-tools", "bench", "--runs", "0"]).is_err());
        assert!(Cli::try_parse_from(["vireo-tools", "linux-boot", "--accel", "xen"]).is_err());
    }

    #[test]
    fn parses_bench_linux() {
        use bench_linux::Job;
        let c = Cli::try_parse_from(["vireo-tools", "bench-linux"]).unwrap();
        let Cmd::BenchLinux {
            runs,
            jobs,
            engines,
            md5_mib,
            gzip_mib,
            loop_iters,
            mem,
            ..
        } = c.command
        else {
            panic!("not bench-linux");
        };
        assert_eq!(
            (runs, md5_mib, gzip_mib, loop_iters, mem),
            (3, 64, 16, 300_000, 512)
        );
        assert_eq!(
            jobs,
            [Job::Boot, Job::Md5, Job::Gzip, Job::Loop, Job::Micro]
        );
        assert!(engines.is_empty());

        let c = Cli::try_parse_from([
            "vireo-tools",
            "bench-linux",
            "--runs",
            "1",
            "--jobs",
            "boot,md5",
            "--engines",
            "vireo-tcg,qemu",
            "--md5-mib",
            "8",
            "--loop",
            "30000",
            "--json",
            "/tmp/x.json",
        ])
        .unwrap();
        let Cmd::BenchLinux {
            runs,
            jobs,
            engines,
            md5_mib,
            loop_iters,
            json,
            ..
        } = c.command
        else {
            panic!("not bench-linux");
        };
        assert_eq!((runs, md5_mib, loop_iters), (1, 8, 30_000));
        assert_eq!(jobs, [Job::Boot, Job::Md5]);
        let names: Vec<&str> = engines.iter().map(|v| v.name).collect();
        assert_eq!(names, ["vireo-interp", "qemu-tcg"]);
        assert_eq!(json, Some(PathBuf::from("/tmp/x.json")));

        for bad in [
            &["--runs", "0"][..],
            &["--jobs", "sha1"],
            &["--engines", "bochs"],
            &["--md5-mib", "0"],
            &["--loop", "-5"],
            &["--loop", "many"],
            &["--timeout", "0"],
            &["--micro-scale", "0"],
            &["--micro-scale", "nan"],
            &["--micro-scale", "1001"],
        ] {
            let mut argv = vec!["vireo-tools", "bench-linux"];
            argv.extend_from_slice(bad);
            assert!(Cli::try_parse_from(&argv).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn bench_linux_checks_guest_ram() {
        let c = Cli::try_parse_from(["vireo-tools", "bench-linux", "-m", "200"]).unwrap();
        let e = run(c).unwrap_err();
        assert!(e.contains("at least 256 MiB"), "{e}");
    }
}
