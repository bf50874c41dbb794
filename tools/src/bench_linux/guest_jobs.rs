//! The guest side of `bench-linux`: the shell script `/init` runs (as `vireo.cmd=`),
//! the marker lines it prints, and the results the host expects from it.
//!
//! Each job runs between two marker lines, `VIREO-BENCH begin <job> <uptime>` and
//! `VIREO-BENCH end <job> <uptime>`; the host times the job from the arrival times of
//! those lines (the guest's `/proc/uptime`, 10 ms resolution, is kept as a cross-check
//! of the guest clock). Input data is generated before the `begin` marker and results
//! are checked after the `end` marker, outside the timed window.

use clap::ValueEnum;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

/// A measurement `bench-linux` can make.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, ValueEnum)]
pub enum Job {
    /// Spawn to the `/init` marker (measured on every boot).
    Boot,
    /// `md5sum` of a generated file.
    Md5,
    /// `gzip -c` of a generated file.
    Gzip,
    /// A shell arithmetic loop.
    Loop,
    /// Not a Linux job: the micro-kernels of `bench-micro`, run after the boots.
    Micro,
}

impl Job {
    pub fn name(self) -> &'static str {
        match self {
            Job::Boot => "boot",
            Job::Md5 => "md5",
            Job::Gzip => "gzip",
            Job::Loop => "loop",
            Job::Micro => "micro",
        }
    }
}

/// Job sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sizes {
    pub md5_mib: u32,
    pub gzip_mib: u32,
    pub loop_iters: u64,
}

impl Sizes {
    /// The job with its size, for tables: `md5 64 MiB`, `loop 300000`.
    pub fn label(&self, job: Job) -> String {
        match job {
            Job::Boot => "boot".to_string(),
            Job::Md5 => format!("md5 {} MiB", self.md5_mib),
            Job::Gzip => format!("gzip {} MiB", self.gzip_mib),
            Job::Loop => format!("loop {}", self.loop_iters),
            Job::Micro => "micro".to_string(),
        }
    }
}

/// Prefix of every line the script prints for the host.
pub const PREFIX: &str = "VIREO-BENCH";

/// `seq 1 UNIT_LINES` is cut to [`UNIT_BYTES`] to make the unit of generated data.
const UNIT_LINES: u32 = 170_000;
const UNIT_BYTES: usize = 1 << 20;

/// The shell script for one boot doing `jobs` (in this order; `boot` adds nothing).
pub fn script(jobs: &[Job], s: &Sizes) -> String {
    let mut parts: Vec<String> = [
        // m begin|end JOB: a marker line with the guest's uptime (builtins only).
        "m(){ read u r </proc/uptime;echo VIREO-BENCH $1 $2 $u;}",
        // v JOB: the first word of /tmp/r as JOB's result.
        "v(){ read h r </tmp/r;echo VIREO-BENCH-RESULT $1 $h;}",
        "grep -m1 'model name' /proc/cpuinfo|sed 's/^/VIREO-BENCH-CPU /'",
    ]
    .map(String::from)
    .to_vec();
    if jobs.iter().any(|j| matches!(j, Job::Md5 | Job::Gzip)) {
        parts.push(format!("seq 1 {UNIT_LINES}|head -c {UNIT_BYTES} >/tmp/u"));
        // g N FILE: N copies of /tmp/u in FILE, with one `cat`.
        parts.push(
            "g(){ f=;i=0;while [ $i -lt $1 ];do f=\"$f /tmp/u\";i=$((i+1));done;cat $f >$2;}"
                .to_string(),
        );
    }
    for job in jobs {
        match job {
            Job::Boot | Job::Micro => {}
            Job::Md5 => parts.push(format!(
                "g {} /tmp/m;m begin md5;md5sum /tmp/m >/tmp/r;m end md5;rm /tmp/m;v md5",
                s.md5_mib
            )),
            // The gzip header's first 10 bytes hold a time stamp: check what follows.
            Job::Gzip => parts.push(format!(
                "g {} /tmp/g;m begin gzip;gzip -c </tmp/g >/tmp/z;m end gzip;rm /tmp/g;\
                 tail -c +11 /tmp/z|md5sum >/tmp/r;rm /tmp/z;v gzip",
                s.gzip_mib
            )),
            Job::Loop => parts.push(format!(
                "m begin loop;i=0;while [ $i -lt {} ];do i=$((i+1));done;m end loop;\
                 echo VIREO-BENCH-RESULT loop $i",
                s.loop_iters
            )),
        }
    }
    parts.join(";")
}

/// A line of the script's output.
#[derive(Debug, Clone, PartialEq)]
pub enum Event<'a> {
    /// The guest CPU's model name.
    Cpu(&'a str),
    /// A job's start or end, with the guest's uptime in seconds.
    Begin(&'a str, Option<f64>),
    End(&'a str, Option<f64>),
    /// A job's result (an md5 sum, or the loop's final count).
    Result(&'a str, &'a str),
}

/// The event on `line`, if it is one of the script's lines.
pub fn parse(line: &str) -> Option<Event<'_>> {
    let rest = line.trim().strip_prefix(PREFIX)?;
    if let Some(cpu) = rest.strip_prefix("-CPU ") {
        return Some(Event::Cpu(
            cpu.split_once(':').map_or(cpu, |(_, m)| m).trim(),
        ));
    }
    if let Some(r) = rest.strip_prefix("-RESULT ") {
        let mut w = r.split_whitespace();
        return Some(Event::Result(w.next()?, w.next().unwrap_or("")));
    }
    let mut w = rest.strip_prefix(' ')?.split_whitespace();
    let (kind, job) = (w.next()?, w.next()?);
    let uptime = w.next().and_then(|u| u.parse().ok());
    match kind {
        "begin" => Some(Event::Begin(job, uptime)),
        "end" => Some(Event::End(job, uptime)),
        _ => None,
    }
}

/// One MiB of `seq 1 170000` output: what the guest's `/tmp/u` holds.
pub fn unit() -> Vec<u8> {
    let mut s = Vec::with_capacity(UNIT_BYTES + 16);
    let mut i = 1;
    while s.len() < UNIT_BYTES {
        writeln!(s, "{i}").expect("write to a Vec");
        i += 1;
    }
    s.truncate(UNIT_BYTES);
    s
}

/// `mib` copies of [`unit`]: the file the guest hashes or compresses.
pub fn data(mib: u32) -> Vec<u8> {
    unit().repeat(mib as usize)
}

/// The result the guest must print for `job`, computed on the host with the guest's
/// own (static) busybox; `None` for `boot`.
pub fn expected(job: Job, s: &Sizes, busybox: &Path) -> Result<Option<String>, String> {
    let md5 = |bytes: &[u8]| -> Result<String, String> {
        let out = pipe(busybox, &["md5sum"], bytes)?;
        let text = String::from_utf8_lossy(&out);
        text.split_whitespace()
            .next()
            .map(str::to_string)
            .ok_or_else(|| format!("{} md5sum printed nothing", busybox.display()))
    };
    Ok(match job {
        Job::Boot | Job::Micro => None,
        Job::Md5 => Some(md5(&data(s.md5_mib))?),
        Job::Gzip => {
            let gz = pipe(busybox, &["gzip", "-c"], &data(s.gzip_mib))?;
            Some(md5(gz.get(10..).unwrap_or_default())?)
        }
        Job::Loop => Some(s.loop_iters.to_string()),
    })
}

/// Runs `program args` with `input` on stdin; its stdout.
fn pipe(program: &Path, args: &[&str], input: &[u8]) -> Result<Vec<u8>, String> {
    let what = format!("{} {}", program.display(), args.join(" "));
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run {what}: {e}"))?;
    let mut stdin = child.stdin.take().ok_or("no stdin pipe")?;
    let data = input.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&data));
    let out = child
        .wait_with_output()
        .map_err(|e| format!("{what}: {e}"))?;
    let written = writer
        .join()
        .map_err(|_| format!("{what}: writer panicked"))?;
    written.map_err(|e| format!("{what}: writing its input: {e}"))?;
    if !out.status.success() {
        return Err(format!("{what} failed ({})", out.status));
    }
    Ok(out.stdout)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIZES: Sizes = Sizes {
        md5_mib: 64,
        gzip_mib: 16,
        loop_iters: 300_000,
    };

    #[test]
    fn unit_is_seq_output_cut_to_one_mib() {
        let u = unit();
        assert_eq!(u.len(), 1 << 20);
        assert!(u.starts_with(b"1\n2\n3\n"));
        // `seq 1 170000` is longer than 1 MiB, so the cut falls inside it.
        let last_full = u.split(|&b| b == b'\n').rev().nth(1).unwrap();
        assert!(String::from_utf8_lossy(last_full).parse::<u32>().unwrap() < UNIT_LINES);
        assert_eq!(data(3).len(), 3 << 20);
        assert_eq!(&data(2)[1 << 20..], &u[..]);
    }

    #[test]
    fn script_has_the_jobs_in_order() {
        let s = script(&[Job::Boot, Job::Md5], &SIZES);
        assert!(s.contains("g 64 /tmp/m;m begin md5;md5sum /tmp/m >/tmp/r;m end md5"));
        assert!(!s.contains("gzip") && !s.contains("begin loop"));
        let s = script(&[Job::Gzip, Job::Loop], &SIZES);
        let (gz, lp) = (s.find("begin gzip").unwrap(), s.find("begin loop").unwrap());
        assert!(gz < lp);
        assert!(s.contains("while [ $i -lt 300000 ]"));
        // A boot alone generates no data.
        let s = script(&[Job::Boot], &SIZES);
        assert!(!s.contains("seq ") && s.contains("model name"));
    }

    #[test]
    fn script_fits_the_kernel_command_line() {
        // x86's COMMAND_LINE_SIZE is 2048 with the terminating NUL.
        let big = Sizes {
            md5_mib: 1000,
            gzip_mib: 1000,
            loop_iters: u64::MAX,
        };
        for jobs in [
            &[Job::Md5][..],
            &[Job::Gzip, Job::Loop],
            &[Job::Md5, Job::Gzip, Job::Loop],
        ] {
            let line = crate::boot::kernel_cmdline(&script(jobs, &big), None);
            assert!(line.len() < 2047, "{} bytes", line.len());
        }
    }

    #[test]
    fn parses_the_script_lines() {
        assert_eq!(
            parse("VIREO-BENCH begin md5 12.34"),
            Some(Event::Begin("md5", Some(12.34)))
        );
        assert_eq!(
            parse("VIREO-BENCH end loop 99.00\r"),
            Some(Event::End("loop", Some(99.0)))
        );
        assert_eq!(
            parse("VIREO-BENCH end loop"),
            Some(Event::End("loop", None))
        );
        assert_eq!(
            parse("VIREO-BENCH-CPU model name\t: QEMU Virtual CPU version 2.5+"),
            Some(Event::Cpu("QEMU Virtual CPU version 2.5+"))
        );
        assert_eq!(
            parse("VIREO-BENCH-RESULT md5 d41d8cd98f00b204e9800998ecf8427e"),
            Some(Event::Result("md5", "d41d8cd98f00b204e9800998ecf8427e"))
        );
        assert_eq!(
            parse("VIREO-BENCH-RESULT md5"),
            Some(Event::Result("md5", ""))
        );
        // The command echo and the kernel's command line are not events.
        assert_eq!(
            parse("VIREO-CMD: m(){ read u r </proc/uptime;echo VIREO-BENCH $1"),
            None
        );
        assert_eq!(parse("VIREO-BENCH middle md5 1.0"), None);
        assert_eq!(parse("VIREO-BENCHX begin md5"), None);
    }

    #[test]
    fn labels() {
        assert_eq!(Job::Gzip.name(), "gzip");
        assert_eq!(SIZES.label(Job::Md5), "md5 64 MiB");
        assert_eq!(SIZES.label(Job::Loop), "loop 300000");
    }
}
