//! `linux-boot`: boots the prepared kernel and initramfs under vireo and reports how
//! far it got. A diagnostic, not a test: a software-only KVM runs Linux slowly, and
//! the run is cut at the timeout.

use std::collections::VecDeque;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use vireo_testsuite::guest::{self, CMD_DONE, INIT_MARKER};
use vireo_testsuite::process::{self, End, Line, Next, Running};

/// Options of `linux-boot`.
#[derive(Debug, Clone)]
pub struct Options {
    pub accel: String,
    /// `-tcg-backend` (used under TCG).
    pub tcg_backend: String,
    pub timeout: Duration,
    pub cmd: String,
    pub vireo: Option<PathBuf>,
    pub mem_mib: u32,
    /// Number of vCPUs (`-smp`).
    pub cpus: u32,
    pub dir: PathBuf,
    /// Extra kernel command-line arguments.
    pub append: Option<String>,
    /// Do not echo the serial output while it runs.
    pub quiet: bool,
}

/// Lines kept for the report.
const TAIL: usize = 15;

/// The kernel command line for `cmd`.
pub fn kernel_cmdline(cmd: &str, extra: Option<&str>) -> String {
    let mut s = String::from("console=ttyS0 earlyprintk=ttyS0 panic=-1 printk.time=1 rdinit=/init");
    if let Some(x) = extra.filter(|x| !x.trim().is_empty()) {
        s.push(' ');
        s.push_str(x.trim());
    }
    if !cmd.is_empty() {
        s.push_str(" vireo.cmd=");
        s.push_str(&guest::encode_cmd(cmd));
    }
    s
}

/// The `[    1.234567]` timestamp at the start of a kernel log line, as text.
pub fn kernel_timestamp(line: &str) -> Option<&str> {
    let rest = line.trim_start().strip_prefix('[')?;
    let end = rest.find(']')?;
    let ts = rest[..end].trim();
    let (secs, frac) = ts.split_once('.')?;
    let ok = !secs.is_empty()
        && secs.bytes().all(|b| b.is_ascii_digit())
        && frac.len() == 6
        && frac.bytes().all(|b| b.is_ascii_digit());
    ok.then_some(ts)
}

/// Runs `linux-boot`; returns whether `/init` was reached.
pub fn run(o: &Options) -> Result<bool, String> {
    let g = guest::prepared(&o.dir)?;
    let vireo = process::vireo_binary(o.vireo.as_deref())?;
    let append = kernel_cmdline(&o.cmd, o.append.as_deref());
    let mut cmd = Command::new(&vireo);
    cmd.args(["-accel", &o.accel, "-m", &o.mem_mib.to_string()]);
    if o.accel == "tcg" {
        cmd.args(["-tcg-backend", &o.tcg_backend]);
    }
    cmd.args(["-smp", &o.cpus.to_string()])
        .args(crate::bench_linux::MACHINE)
        .arg("-kernel")
        .arg(&g.kernel)
        .arg("-initrd")
        .arg(&g.initramfs)
        .args(["-append", &append]);
    let log_path = log_file(&o.dir);
    let mut log =
        fs::File::create(&log_path).map_err(|e| format!("{}: {e}", log_path.display()))?;
    let shown = format!("{cmd:?}");
    let _ = writeln!(log, "# {shown}");
    println!("linux-boot: {shown}");
    println!(
        "linux-boot: kernel {} ({}), timeout {} s",
        g.kernel.display(),
        g.release,
        o.timeout.as_secs()
    );

    let mut r = Running::spawn(&mut cmd)?;
    let deadline = Instant::now() + o.timeout;
    let mut tail: VecDeque<Line> = VecDeque::with_capacity(TAIL);
    let mut marker: Option<Duration> = None;
    let mut done: Option<(Duration, String)> = None;
    let mut last_ts: Option<(String, Duration)> = None;
    let mut lines = 0usize;
    let mut first: Option<Duration> = None;
    let timed_out = loop {
        match r.next_line(deadline) {
            Next::Line(l) => {
                lines += 1;
                first.get_or_insert(l.at);
                let stamped = format!("[+{:8.3}s] {}", l.at.as_secs_f64(), l.text);
                let _ = writeln!(log, "{stamped}");
                if !o.quiet {
                    println!("{stamped}");
                }
                if marker.is_none() && l.text.contains(INIT_MARKER) {
                    marker = Some(l.at);
                }
                if let Some(i) = l.text.find(CMD_DONE) {
                    let status = l.text[i + CMD_DONE.len()..].trim().to_string();
                    done = Some((l.at, status));
                }
                if let Some(ts) = kernel_timestamp(&l.text) {
                    last_ts = Some((ts.to_string(), l.at));
                }
                if tail.len() == TAIL {
                    tail.pop_front();
                }
                tail.push_back(l);
            }
            Next::Eof => break false,
            Next::Timeout => break true,
        }
    };
    // After stdout closes vireo is exiting; give it a moment before killing.
    let (end, stderr) = if timed_out {
        r.kill_now()
    } else {
        r.finish(Instant::now() + Duration::from_secs(5))
    };
    let _ = writeln!(log, "# vireo: {}", end.describe());
    if !stderr.is_empty() {
        let _ = writeln!(log, "# vireo stderr:\n{stderr}");
    }

    println!();
    println!("== linux-boot report ==");
    println!(
        "elapsed:         {:.1} s{}",
        end.at().as_secs_f64(),
        if timed_out {
            format!(" (timeout {} s reached; vireo killed)", o.timeout.as_secs())
        } else {
            String::new()
        }
    );
    match &first {
        Some(at) => println!(
            "serial lines:    {lines}, the first at {:.1} s (time before it: loader, \
             decompressor)",
            at.as_secs_f64()
        ),
        None => println!("serial lines:    none"),
    }
    match marker {
        Some(at) => println!("/init reached:   yes, at {:.1} s", at.as_secs_f64()),
        None => println!("/init reached:   no"),
    }
    match &done {
        Some((at, status)) => println!(
            "command:         `{}` finished at {:.1} s, status {status}",
            o.cmd,
            at.as_secs_f64()
        ),
        None => println!("command:         `{}` did not finish", o.cmd),
    }
    match &last_ts {
        Some((ts, at)) => println!(
            "last kernel ts:  [{ts}] (seen at {:.1} s wall)",
            at.as_secs_f64()
        ),
        None => println!("last kernel ts:  none seen"),
    }
    match &end {
        End::Exited { .. } => println!("vireo exit:      {}", end.describe()),
        End::Killed { .. } => println!("vireo exit:      still running at the timeout; killed"),
    }
    match process::last_line(&stderr) {
        Some(l) => println!("vireo stderr:    {l}"),
        None => println!("vireo stderr:    (empty)"),
    }
    println!("last {} serial lines:", tail.len());
    for l in &tail {
        println!("  [+{:8.3}s] {}", l.at.as_secs_f64(), l.text);
    }
    println!("full log:        {}", log_path.display());
    Ok(marker.is_some())
}

/// Where `linux-boot` writes the timestamped serial log of its last run.
pub fn log_file(dir: &Path) -> PathBuf {
    dir.join("linux-boot.log")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_kernel_timestamps() {
        assert_eq!(
            kernel_timestamp("[    0.000000] Linux version 6.1"),
            Some("0.000000")
        );
        assert_eq!(kernel_timestamp("[ 1234.567890] x"), Some("1234.567890"));
        assert_eq!(kernel_timestamp("[+ 1.2s] x"), None);
        assert_eq!(kernel_timestamp("VIREO-INIT: reached /init"), None);
        assert_eq!(kernel_timestamp("[1.23] short"), None);
    }

    #[test]
    fn builds_the_command_line() {
        let c = kernel_cmdline("md5sum /bin/busybox", Some("loglevel=8"));
        assert!(c.starts_with("console=ttyS0 earlyprintk=ttyS0 panic=-1"));
        assert!(c.contains(" loglevel=8 "));
        assert!(c.ends_with(" vireo.cmd=md5sum%20/bin/busybox"));
        assert!(!kernel_cmdline("", None).contains("vireo.cmd"));
    }
}
