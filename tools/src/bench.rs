//! `bench`: boot-to-marker times of vireo (KVM) against `qemu-system-x86_64 -accel kvm`.
//!
//! Guests:
//! - `demo`: vireo's built-in firmware demo (vireo with no kernel; QEMU with the same
//!   firmware image as `-bios`); marker: the first line containing `long mode`.
//! - `multiboot`: the testsuite's Multiboot kernel (`-kernel kernel.elf` plus
//!   isa-debug-exit at 0xf4); marker: `hello from the vireo test kernel`.
//!
//! Each run measures the wall time from spawn to the marker line on stdout, then
//! waits a short while for the process to exit by itself (the "total" column) and
//! kills it otherwise (QEMU may not find the ACPI tables vireo's firmware expects, so
//! it may never power off).

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use vireo_testsuite::process::{self, End, Next, Running};

/// Options of `bench`.
#[derive(Debug, Clone)]
pub struct Options {
    pub runs: usize,
    pub warmup: usize,
    pub timeout: Duration,
    /// How long to wait for the process to exit after the marker before killing it.
    pub exit_wait: Duration,
    pub vireo: Option<PathBuf>,
    pub qemu: Option<PathBuf>,
    pub dir: PathBuf,
}

/// One guest: its marker and the arguments each engine needs for it.
struct GuestSpec {
    name: &'static str,
    marker: &'static str,
    vireo_args: Vec<OsString>,
    qemu_args: Vec<OsString>,
}

/// Arguments common to both engines: KVM, no default devices, COM1 on stdout.
const COMMON: &[&str] = &[
    "-accel",
    "kvm",
    "-nodefaults",
    "-display",
    "none",
    "-serial",
    "stdio",
];

fn args(list: &[&str]) -> Vec<OsString> {
    list.iter().map(OsString::from).collect()
}

/// The firmware image as QEMU's `-bios` wants it: QEMU requires a multiple of 64 KiB
/// and maps the file so it ends at 4 GiB, so pad at the front with 0xff.
pub fn qemu_bios_image(fw: &[u8]) -> Vec<u8> {
    const UNIT: usize = 64 * 1024;
    let size = fw.len().div_ceil(UNIT).max(1) * UNIT;
    let mut img = vec![0xff; size - fw.len()];
    img.extend_from_slice(fw);
    img
}

/// Writes the guest files into `dir` and describes the guests.
fn guests(dir: &Path) -> Result<Vec<GuestSpec>, String> {
    fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let firmware: &[u8] = vireo_bios::FIRMWARE;
    let bios = dir.join("vireo-firmware-qemu.bin");
    fs::write(&bios, qemu_bios_image(firmware)).map_err(|e| format!("{}: {e}", bios.display()))?;
    let kernel = dir.join("multiboot-kernel.elf");
    fs::write(&kernel, vireo_testsuite::multiboot_kernel::build_elf())
        .map_err(|e| format!("{}: {e}", kernel.display()))?;
    let exit_dev = format!(
        "isa-debug-exit,iobase={:#x},iosize=0x04",
        vireo_testsuite::multiboot_kernel::EXIT_PORT
    );

    let mut demo_q = args(COMMON);
    demo_q.push("-bios".into());
    demo_q.push(bios.into_os_string());

    let mut mb = args(COMMON);
    mb.push("-kernel".into());
    mb.push(kernel.into_os_string());
    mb.push("-device".into());
    mb.push(exit_dev.into());

    Ok(vec![
        GuestSpec {
            name: "demo",
            marker: "long mode",
            vireo_args: args(COMMON),
            qemu_args: demo_q,
        },
        GuestSpec {
            name: "multiboot",
            marker: "hello from the vireo test kernel",
            vireo_args: mb.clone(),
            qemu_args: mb,
        },
    ])
}

/// The outcome of one run.
#[derive(Debug, Clone)]
struct Sample {
    /// Spawn to marker, or why there was none.
    marker: Result<Duration, String>,
    end: End,
    /// The guest printed a [`HALT_MARKERS`] line and was killed then.
    halted: bool,
}

/// Lines after which a guest never exits by itself (vireo's firmware under QEMU,
/// which lacks the ACPI tables the firmware looks for).
const HALT_MARKERS: &[&str] = &["power-off failed"];

/// Spawns `program args`, waits for `marker`, then for the exit.
fn run_once(program: &Path, args: &[OsString], marker: &str, o: &Options) -> Sample {
    let mut r = match Running::spawn(Command::new(program).args(args)) {
        Ok(r) => r,
        Err(e) => {
            return Sample {
                marker: Err(e),
                end: End::Killed { at: Duration::ZERO },
                halted: false,
            };
        }
    };
    let deadline = Instant::now() + o.timeout;
    let mut last = String::new();
    let found = loop {
        match r.next_line(deadline) {
            Next::Line(l) if l.text.contains(marker) => break Ok(l.at),
            Next::Line(l) => last = l.text,
            Next::Eof => break Err("exited before the marker".to_string()),
            Next::Timeout => break Err(format!("no marker within {} s", o.timeout.as_secs())),
        }
    };
    let mut halted = false;
    let (end, stderr) = match &found {
        Ok(_) => {
            // Until the exit: a guest that says it halted for good is killed at once.
            let deadline = Instant::now() + o.exit_wait;
            loop {
                match r.next_line(deadline) {
                    Next::Line(l) if HALT_MARKERS.iter().any(|m| l.text.contains(m)) => {
                        halted = true;
                        break r.kill_now();
                    }
                    Next::Line(_) => {}
                    Next::Eof | Next::Timeout => break r.finish(deadline),
                }
            }
        }
        Err(_) => r.finish(Instant::now() + Duration::from_secs(1)),
    };
    let marker = found.map_err(|e| {
        // The last stderr line that is not a mere warning, else the last one.
        let why = stderr
            .lines()
            .map(str::trim)
            .rev()
            .find(|l| !l.is_empty() && !l.contains("warning:"))
            .or_else(|| process::last_line(&stderr))
            .map(str::to_string)
            .or_else(|| (!last.is_empty()).then(|| format!("last output: {last}")));
        match why {
            Some(w) => format!("{e} ({}; {w})", end.describe()),
            None => format!("{e} ({})", end.describe()),
        }
    });
    Sample {
        marker,
        end,
        halted,
    }
}

/// Median of a sorted, non-empty slice.
fn median(sorted: &[Duration]) -> Duration {
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// `vireo / qemu` as a ratio plus a plain-words reading: `0.0021 (vireo 485.4x faster)`.
fn ratio(vireo: Duration, qemu: Duration) -> String {
    let r = vireo.as_secs_f64() / qemu.as_secs_f64();
    let digits = if r < 0.1 { 4 } else { 2 };
    if r <= 1.0 {
        format!("{r:.digits$} (vireo {:.1}x faster)", 1.0 / r)
    } else {
        format!("{r:.digits$} (vireo {r:.1}x slower)")
    }
}

/// Summary of one (guest, engine) row.
struct Row {
    guest: &'static str,
    engine: &'static str,
    ok: usize,
    runs: usize,
    /// (median, min, max) to marker.
    marker: Option<(Duration, Duration, Duration)>,
    total_median: Option<Duration>,
    /// The distinct ways the processes ended, e.g. `exit 0`, `killed`.
    ends: Vec<String>,
    first_error: Option<String>,
}

fn summarize(guest: &'static str, engine: &'static str, samples: &[Sample]) -> Row {
    let mut times: Vec<Duration> = samples
        .iter()
        .filter_map(|s| s.marker.as_ref().ok().copied())
        .collect();
    times.sort();
    let mut totals: Vec<Duration> = samples
        .iter()
        .filter(|s| s.marker.is_ok())
        .map(|s| s.end.at())
        .collect();
    totals.sort();
    let mut ends: Vec<String> = Vec::new();
    for s in samples {
        let d = match &s.end {
            End::Killed { .. } if s.halted => "halted, killed".to_string(),
            End::Killed { .. } => "killed".to_string(),
            e => e.describe(),
        };
        if !ends.contains(&d) {
            ends.push(d);
        }
    }
    Row {
        guest,
        engine,
        ok: times.len(),
        runs: samples.len(),
        marker: (!times.is_empty()).then(|| (median(&times), times[0], times[times.len() - 1])),
        total_median: (!totals.is_empty()).then(|| median(&totals)),
        ends,
        first_error: samples
            .iter()
            .find_map(|s| s.marker.as_ref().err().cloned()),
    }
}

fn print_row(r: &Row) {
    let (med, min, max) = match r.marker {
        Some((a, b, c)) => (ms(a), ms(b), ms(c)),
        None => ("-".into(), "-".into(), "-".into()),
    };
    let total = r.total_median.map_or("-".to_string(), ms);
    println!(
        "{:<10} {:<10} {:>3}/{:<3} {:>10} {:>10} {:>10} {:>11}  {}",
        r.guest,
        r.engine,
        r.ok,
        r.runs,
        med,
        min,
        max,
        total,
        r.ends.join(", ")
    );
    if let Some(e) = &r.first_error {
        println!("{:<10} {:<10} error: {e}", "", "");
    }
}

/// An engine gives up on a guest after this many failed runs in a row.
const GIVE_UP: usize = 2;

/// One engine's runs of one guest.
struct Engine<'a> {
    name: &'static str,
    program: &'a Path,
    args: &'a [OsString],
    samples: Vec<Sample>,
    /// Failed runs in a row, warm-up included.
    failures: usize,
    warmup_error: Option<String>,
}

impl<'a> Engine<'a> {
    fn new(name: &'static str, program: &'a Path, args: &'a [OsString]) -> Self {
        Engine {
            name,
            program,
            args,
            samples: Vec::new(),
            failures: 0,
            warmup_error: None,
        }
    }

    fn summarize(&self, guest: &'static str, planned: usize) -> Row {
        let mut r = summarize(guest, self.name, &self.samples);
        r.runs = planned;
        if r.first_error.is_none() {
            r.first_error = self.warmup_error.clone();
        }
        if self.failures >= GIVE_UP && self.samples.len() < planned {
            r.ends
                .push(format!("gave up after {GIVE_UP} failures in a row"));
        }
        r
    }
}

/// Runs the benchmark and prints the table.
pub fn run(o: &Options) -> Result<(), String> {
    let started = Instant::now();
    let vireo = process::vireo_binary(o.vireo.as_deref())?;
    let qemu = match &o.qemu {
        Some(p) if p.is_file() => Some(p.clone()),
        Some(p) => return Err(format!("--qemu {}: no such file", p.display())),
        None => process::find_in_path("qemu-system-x86_64"),
    };
    if qemu.is_none() {
        println!(
            "bench: qemu-system-x86_64 not found; install it with `apt-get install qemu-system-x86` \
             to compare (vireo's figures follow alone)"
        );
    }
    let specs = guests(&o.dir)?;
    println!(
        "bench: {} run(s) per guest and engine after {} warm-up run(s); vireo {}{}",
        o.runs,
        o.warmup,
        vireo.display(),
        qemu.as_ref()
            .map_or(String::new(), |q| format!(", qemu {}", q.display()))
    );

    let mut rows = Vec::new();
    for g in &specs {
        let mut engines = vec![Engine::new("vireo-kvm", &vireo, &g.vireo_args)];
        if let Some(q) = &qemu {
            engines.push(Engine::new("qemu-kvm", q, &g.qemu_args));
        }
        // Interleaved, so drift in the host's load affects both engines alike.
        for i in 0..o.warmup + o.runs {
            for e in engines.iter_mut().filter(|e| e.failures < GIVE_UP) {
                let s = run_once(e.program, e.args, g.marker, o);
                e.failures = if s.marker.is_ok() { 0 } else { e.failures + 1 };
                if i >= o.warmup {
                    e.samples.push(s);
                } else if let Err(err) = &s.marker {
                    e.warmup_error.get_or_insert_with(|| err.clone());
                }
            }
        }
        let mut summary: Vec<Row> = engines
            .iter()
            .map(|e| e.summarize(g.name, o.runs))
            .collect();
        let q = (summary.len() > 1).then(|| summary.remove(1));
        rows.push((summary.remove(0), q));
    }

    println!();
    println!(
        "{:<10} {:<10} {:>7} {:>10} {:>10} {:>10} {:>11}  end",
        "guest", "engine", "ok", "median", "min", "max", "total med"
    );
    println!("{}", "-".repeat(84));
    for (v, q) in &rows {
        print_row(v);
        if let Some(q) = q {
            print_row(q);
            match (v.marker, q.marker) {
                (Some((vm, ..)), Some((qm, ..))) if !qm.is_zero() && !vm.is_zero() => println!(
                    "{:<10} ratio vireo/qemu (median to marker): {}",
                    "",
                    ratio(vm, qm)
                ),
                _ => println!("{:<10} ratio vireo/qemu: n/a", ""),
            }
        }
    }
    println!("{}", "-".repeat(84));
    println!(
        "times: spawn -> marker line on stdout; 'total med' = spawn -> process exit (or kill \
         when the guest says it halted, or {:.1} s after the marker)",
        o.exit_wait.as_secs_f64()
    );
    println!("bench wall time: {:.2} s", started.elapsed().as_secs_f64());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bios_image_is_padded_at_the_front() {
        let img = qemu_bios_image(&[1, 2, 3]);
        assert_eq!(img.len(), 64 * 1024);
        assert_eq!(&img[img.len() - 3..], &[1, 2, 3]);
        assert!(img[..img.len() - 3].iter().all(|&b| b == 0xff));
        assert_eq!(qemu_bios_image(&vec![0; 64 * 1024]).len(), 64 * 1024);
        assert_eq!(qemu_bios_image(&vec![0; 64 * 1024 + 1]).len(), 128 * 1024);
    }

    #[test]
    fn medians() {
        let d = Duration::from_millis;
        assert_eq!(median(&[d(1), d(2), d(9)]), d(2));
        assert_eq!(median(&[d(1), d(3)]), d(2));
        assert_eq!(ratio(d(1), d(4)), "0.25 (vireo 4.0x faster)");
        assert_eq!(ratio(d(6), d(4)), "1.50 (vireo 1.5x slower)");
        assert_eq!(ratio(d(2), d(1000)), "0.0020 (vireo 500.0x faster)");
    }

    #[test]
    fn run_once_finds_markers_and_reports_errors() {
        let o = Options {
            runs: 1,
            warmup: 0,
            timeout: Duration::from_secs(5),
            exit_wait: Duration::from_secs(2),
            vireo: None,
            qemu: None,
            dir: PathBuf::new(),
        };
        let sh = Path::new("/bin/sh");
        let s = run_once(
            sh,
            &args(&["-c", "echo boot; echo in long mode; exit 0"]),
            "long mode",
            &o,
        );
        assert!(s.marker.is_ok());
        assert_eq!(s.end.describe(), "exit 0");
        let s = run_once(
            sh,
            &args(&["-c", "echo nope; echo KVM failure >&2; exit 1"]),
            "long mode",
            &o,
        );
        let e = s.marker.unwrap_err();
        assert!(
            e.contains("exited before the marker") && e.contains("KVM failure"),
            "{e}"
        );
        let s = run_once(
            sh,
            &args(&["-c", "echo long mode; echo power-off failed; exec sleep 30"]),
            "long mode",
            &o,
        );
        assert!(s.marker.is_ok() && s.halted);
        assert!(s.end.at() < Duration::from_secs(2));
        let s = run_once(Path::new("/nonexistent/qemu"), &[], "x", &o);
        assert!(s.marker.unwrap_err().contains("cannot start"));
    }
}
