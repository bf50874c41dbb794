//! A child process whose stdout is read line by line with arrival times, and whose
//! stderr is collected, shared by the Linux tests and
//! `vireo-tools` (`linux-boot`, `bench`, `bench-linux`, which also takes the child's
//! peak RSS from `wait4`).

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// One line of the child's stdout (without the line end; `\r` stripped), with the time
/// since spawn at which it arrived.
#[derive(Debug, Clone)]
pub struct Line {
    pub at: Duration,
    pub text: String,
}

/// What waiting for the next line gave.
#[derive(Debug)]
pub enum Next {
    Line(Line),
    /// Stdout closed: the child exited (or closed it).
    Eof,
    /// The deadline passed first.
    Timeout,
}

/// How the child ended.
#[derive(Debug, Clone)]
pub enum End {
    /// It exited by itself, `at` after spawn.
    Exited { status: ExitStatus, at: Duration },
    /// It was still running at the deadline and was killed `at` after spawn.
    Killed { at: Duration },
}

impl End {
    /// Time from spawn to exit or kill.
    pub fn at(&self) -> Duration {
        match self {
            End::Exited { at, .. } | End::Killed { at } => *at,
        }
    }

    /// `exit 0`, `exit 33`, `signal 9`, or `killed at the deadline`.
    pub fn describe(&self) -> String {
        match self {
            End::Killed { .. } => "killed at the deadline".to_string(),
            End::Exited { status, .. } => describe_status(status),
        }
    }
}

/// `exit N` or `signal N`.
pub fn describe_status(status: &ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit {c}"),
        (None, Some(s)) => format!("signal {s}"),
        (None, None) => "unknown status".to_string(),
    }
}

/// A spawned child with its output readers.
pub struct Running {
    child: Child,
    start: Instant,
    lines: Receiver<Line>,
    stderr: Option<JoinHandle<String>>,
}

impl Running {
    /// Spawns `cmd` with stdin from /dev/null and stdout/stderr piped. The clock
    /// starts just before the spawn.
    pub fn spawn(cmd: &mut Command) -> Result<Running, String> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let start = Instant::now();
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", cmd.get_program().to_string_lossy()))?;
        let (tx, lines) = mpsc::channel();
        if let Some(out) = child.stdout.take() {
            thread::spawn(move || {
                let mut r = BufReader::new(out);
                let mut buf = Vec::new();
                loop {
                    buf.clear();
                    match r.read_until(b'\n', &mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {
                            let at = start.elapsed();
                            let text = String::from_utf8_lossy(&buf)
                                .trim_end_matches(['\n', '\r'])
                                .replace('\r', "");
                            if tx.send(Line { at, text }).is_err() {
                                break;
                            }
                        }
                    }
                }
            });
        }
        let stderr = child.stderr.take().map(|mut err| {
            thread::spawn(move || {
                let mut s = Vec::new();
                let _ = err.read_to_end(&mut s);
                String::from_utf8_lossy(&s).into_owned()
            })
        });
        Ok(Running {
            child,
            start,
            lines,
            stderr,
        })
    }

    /// CPU time (user + system, all threads) the running child has used so far, from
    /// `/proc/<pid>/stat`; `None` once it has exited or where procfs is missing.
    pub fn cpu_time(&self) -> Option<Duration> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).ok()?;
        // Fields after the parenthesised command name (which may hold spaces).
        let rest = &stat[stat.rfind(')')? + 1..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of the line: 12 and 13 after ')'.
        let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
        // procfs counts in USER_HZ, fixed at 100 by the Linux ABI on x86.
        Some(Duration::from_millis(ticks * 10))
    }

    /// The next stdout line, waiting at most until `deadline`.
    pub fn next_line(&mut self, deadline: Instant) -> Next {
        let wait = deadline.saturating_duration_since(Instant::now());
        match self.lines.recv_timeout(wait) {
            Ok(l) => Next::Line(l),
            Err(RecvTimeoutError::Timeout) => Next::Timeout,
            Err(RecvTimeoutError::Disconnected) => Next::Eof,
        }
    }

    /// Waits for the child to exit until `deadline`, killing it then; returns how it
    /// ended and its whole stderr. Exit times are accurate to about 0.2 ms.
    pub fn finish(mut self, deadline: Instant) -> (End, String) {
        let end = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    break End::Exited {
                        status,
                        at: self.start.elapsed(),
                    }
                }
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_micros(200)),
                Ok(None) | Err(_) => break self.kill(),
            }
        };
        (end, self.stderr_text())
    }

    /// Like [`Running::finish`], but reaps the child with `wait4` so its resource use
    /// (peak RSS, CPU time) comes back too; `None` only if `wait4` failed.
    pub fn finish_with_usage(mut self, deadline: Instant) -> (End, String, Option<Usage>) {
        let pid = self.child.id() as libc::pid_t;
        let (end, usage) = loop {
            match wait4(pid, libc::WNOHANG) {
                Ok(Some((status, usage))) => {
                    let at = self.start.elapsed();
                    break (End::Exited { status, at }, Some(usage));
                }
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_micros(200)),
                Ok(None) => {
                    let at = self.start.elapsed();
                    let _ = self.child.kill();
                    // Reaped here, so std's `Child` never waits on (or signals) it again.
                    let usage = wait4(pid, 0).ok().flatten().map(|(_, u)| u);
                    break (End::Killed { at }, usage);
                }
                Err(_) => break (self.kill(), None),
            }
        };
        (end, self.stderr_text(), usage)
    }

    /// Kills the child now; returns how it ended and its stderr.
    pub fn kill_now(mut self) -> (End, String) {
        let end = match self.child.try_wait() {
            Ok(Some(status)) => End::Exited {
                status,
                at: self.start.elapsed(),
            },
            _ => self.kill(),
        };
        (end, self.stderr_text())
    }

    fn kill(&mut self) -> End {
        let at = self.start.elapsed();
        let _ = self.child.kill();
        let _ = self.child.wait();
        End::Killed { at }
    }

    fn stderr_text(&mut self) -> String {
        self.stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default()
    }
}

/// Resource use of a child that has exited, from `wait4`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Peak resident set size in KiB (`ru_maxrss`).
    pub max_rss_kib: u64,
    /// User CPU time.
    pub user: Duration,
    /// System CPU time.
    pub system: Duration,
}

/// `wait4(pid, flags)`: `None` while a `WNOHANG` wait finds the child still running.
fn wait4(pid: libc::pid_t, flags: libc::c_int) -> std::io::Result<Option<(ExitStatus, Usage)>> {
    use std::os::unix::process::ExitStatusExt;
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec.max(0) as u64) + Duration::from_micros(t.tv_usec.max(0) as u64)
    };
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: an all-zero `rusage` is a valid value (integers and timevals).
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: `status` and `ru` are valid for writes for the duration of the call.
        let r = unsafe { libc::wait4(pid, &mut status, flags, &mut ru) };
        if r == 0 {
            return Ok(None);
        }
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        let usage = Usage {
            max_rss_kib: ru.ru_maxrss.max(0) as u64,
            user: tv(ru.ru_utime),
            system: tv(ru.ru_stime),
        };
        return Ok(Some((ExitStatus::from_raw(status), usage)));
    }
}

/// The last non-empty line of `text`, trimmed.
pub fn last_line(text: &str) -> Option<&str> {
    text.lines().map(str::trim).rev().find(|l| !l.is_empty())
}

/// The `vireo` binary: `explicit` if given, else `vireo` next to this executable
/// (`target/<profile>/vireo`).
pub fn vireo_binary(explicit: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(p) = explicit {
        return if p.is_file() {
            Ok(p.to_path_buf())
        } else {
            Err(format!("--vireo {}: no such file", p.display()))
        };
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot find my own path: {e}"))?;
    let dir = exe.parent().ok_or("cannot find my own directory")?;
    let p = dir.join("vireo");
    if p.is_file() {
        Ok(p)
    } else {
        Err(format!(
            "no vireo binary at {}; build it first (`cargo build -p vireo`, with --release \
             for a release tool) or pass --vireo PATH",
            p.display()
        ))
    }
}

/// The first directory in `$PATH` holding an executable `name`.
pub fn find_in_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_lines_and_exit_status() {
        let mut r = Running::spawn(Command::new("sh").args([
            "-c",
            "echo one; printf 'two\\r\\n'; echo err >&2; printf three; exit 3",
        ]))
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut got = Vec::new();
        loop {
            match r.next_line(deadline) {
                Next::Line(l) => got.push(l.text),
                Next::Eof => break,
                Next::Timeout => panic!("timeout"),
            }
        }
        assert_eq!(got, ["one", "two", "three"]);
        let (end, stderr) = r.finish(deadline);
        assert_eq!(end.describe(), "exit 3");
        assert_eq!(stderr, "err\n");
    }

    #[test]
    fn kills_at_deadline() {
        let mut r = Running::spawn(Command::new("sleep").arg("30")).unwrap();
        let deadline = Instant::now() + Duration::from_millis(100);
        assert!(matches!(r.next_line(deadline), Next::Timeout));
        let (end, _) = r.finish(deadline);
        assert!(matches!(end, End::Killed { .. }));
        assert!(end.at() < Duration::from_secs(5));
    }

    #[test]
    fn reports_resource_use() {
        let mut r = Running::spawn(Command::new("sh").args(["-c", "echo hi; exit 4"])).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut got = Vec::new();
        while let Next::Line(l) = r.next_line(deadline) {
            got.push(l.text);
        }
        let (end, _, usage) = r.finish_with_usage(deadline);
        assert_eq!(end.describe(), "exit 4");
        assert_eq!(got, ["hi"]);
        let u = usage.expect("wait4 gives the usage");
        assert!(u.max_rss_kib > 0, "{u:?}");

        let r = Running::spawn(Command::new("sleep").arg("30")).unwrap();
        let (end, _, usage) = r.finish_with_usage(Instant::now() + Duration::from_millis(50));
        assert!(matches!(end, End::Killed { .. }));
        assert!(usage.is_some());
    }

    #[test]
    fn last_line_skips_blanks() {
        assert_eq!(last_line("a\nb\n\n  \n"), Some("b"));
        assert_eq!(last_line(""), None);
    }
}
