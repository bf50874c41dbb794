//! Debian's cloud kernel with the busybox initramfs (`vireo-tools prepare-guest`),
//! booted to `/init`, where a job checks the kernel log, the CPU flags, CPU-bound
//! results against the host, timer accuracy and idle cost, then powers off.
//!
//! One test per engine, one parameter apart. The guest is fetched with `apt-get
//! download` into `target/guest` on first use (cached after). Hosts without `apt-get`
//! print a SKIP line; a host with it that cannot fetch fails the test.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use vireo_testsuite::guest::{self, Guest, CMD_DONE, INIT_MARKER};
use vireo_testsuite::process::{Line, Next, Running};
use vireo_testsuite::vireo_bin;

/// Lines of `seq 1 SEQ_N` make the generated data.
const SEQ_N: u32 = 150_000;
/// The md5 job hashes this many bytes of repeated `seq` output.
const MD5_BYTES: usize = 32 << 20;

/// What the kernel log must not hold. (The brackets keep the pattern from matching
/// the command line that holds it.) Besides warnings and oopses: a TSC that Linux
/// found to differ between CPUs, and MTRRs that differ between CPUs.
const BADLOG: &str = "dmesg | grep -E 'WARN[I]NG|BU[G]|Oop[s]|Call Tra[c]e|unchecked MS[R]\
|TSC unstabl[e]|inconsisten[t]' | sed 's/^/BADLOG: /'";

/// The job `/init` runs. Every result is on a line of its own with a tag.
fn job() -> String {
    [
        BADLOG,
        "grep -m1 ^flags /proc/cpuinfo | sed 's/^/CPUFLAGS: /'",
        "echo ONLINE: $(cat /sys/devices/system/cpu/online)",
        &format!("seq 1 {SEQ_N} > /tmp/s"),
        "cat /tmp/s /tmp/s /tmp/s /tmp/s > /tmp/4; cat /tmp/4 /tmp/4 /tmp/4 /tmp/4 > /tmp/16",
        "cat /tmp/16 /tmp/16 /tmp/4 > /tmp/36; rm /tmp/4 /tmp/16",
        &format!("head -c {MD5_BYTES} /tmp/36 > /tmp/b; rm /tmp/36"),
        "md5sum /tmp/b | sed 's/^/MD5: /'; rm /tmp/b",
        // The gzip header holds a time stamp: compare what follows it (10 bytes).
        "gzip -c < /tmp/s | tail -c +11 | md5sum | sed 's/^/GZIP: /'",
        "echo SLEEP-BEGIN; sleep 5; echo SLEEP-END",
        // Two idle windows of 10 s: the host's own noise (other tenants of this
        // machine, the other core's work) only ever adds CPU time, so the quieter
        // window is the guest's idle cost.
        "echo IDLE-BEGIN; sleep 10; echo IDLE-MID; sleep 10; echo IDLE-END",
    ]
    .join("; ")
}

/// The generated data, as the guest builds it.
fn seq_output() -> Vec<u8> {
    seq_output_n(SEQ_N)
}

/// The output of `seq 1 n`.
fn seq_output_n(n: u32) -> Vec<u8> {
    let mut s = Vec::new();
    for i in 1..=n {
        writeln!(s, "{i}").expect("write to a Vec");
    }
    s
}

/// `md5sum` of `data` on the host (coreutils or busybox).
fn host_md5(md5sum: &Path, data: &[u8]) -> String {
    pipe(Command::new(md5sum).arg("-"), data)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Runs `cmd` with `input` on stdin; its stdout as text.
fn pipe(cmd: &mut Command, input: &[u8]) -> String {
    String::from_utf8_lossy(&pipe_bytes(cmd, input)).into_owned()
}

fn pipe_bytes(cmd: &mut Command, input: &[u8]) -> Vec<u8> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let data = input.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&data);
    });
    let out = child.wait_with_output().expect("wait for the child");
    writer.join().expect("stdin writer");
    assert!(out.status.success(), "{cmd:?} failed");
    out.stdout
}

/// The prepared guest, fetching it on first use; `None` (after a SKIP line) on hosts
/// without `apt-get`.
fn guest_or_skip(test: &str) -> Option<Guest> {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .map(|t| t.join("guest"))
        .unwrap_or_else(|| PathBuf::from("target/guest"));
    if let Ok(g) = guest::prepared(&dir) {
        return Some(g);
    }
    if vireo_testsuite::process::find_in_path("apt-get").is_none() {
        println!("SKIP {test}: no apt-get to fetch the Debian guest");
        return None;
    }
    Some(guest::prepare(&dir).unwrap_or_else(|e| panic!("prepare the guest: {e}")))
}

/// The Linux flag names of the CPUID bits vireo's TCG model may set, by register.
/// Only bits the model advertises may appear; synthetic flags Linux adds itself are
/// listed in [`SYNTHETIC`].
const CPUID_FLAGS: &[(&str, u32, &str)] = &[
    // (leaf.register, bit, Linux name)
    ("1.edx", 0, "fpu"),
    ("1.edx", 1, "vme"),
    ("1.edx", 2, "de"),
    ("1.edx", 3, "pse"),
    ("1.edx", 4, "tsc"),
    ("1.edx", 5, "msr"),
    ("1.edx", 6, "pae"),
    ("1.edx", 7, "mce"),
    ("1.edx", 8, "cx8"),
    ("1.edx", 9, "apic"),
    ("1.edx", 11, "sep"),
    ("1.edx", 12, "mtrr"),
    ("1.edx", 13, "pge"),
    ("1.edx", 14, "mca"),
    ("1.edx", 15, "cmov"),
    ("1.edx", 16, "pat"),
    ("1.edx", 17, "pse36"),
    ("1.edx", 19, "clflush"),
    ("1.edx", 23, "mmx"),
    ("1.edx", 24, "fxsr"),
    ("1.edx", 25, "sse"),
    ("1.edx", 26, "sse2"),
    ("1.edx", 28, "ht"),
    ("1.ecx", 0, "pni"),
    ("1.ecx", 1, "pclmulqdq"),
    ("1.ecx", 3, "monitor"),
    ("1.ecx", 9, "ssse3"),
    ("1.ecx", 12, "fma"),
    ("1.ecx", 13, "cx16"),
    ("1.ecx", 17, "pcid"),
    ("1.ecx", 19, "sse4_1"),
    ("1.ecx", 20, "sse4_2"),
    ("1.ecx", 21, "x2apic"),
    ("1.ecx", 22, "movbe"),
    ("1.ecx", 23, "popcnt"),
    ("1.ecx", 24, "tsc_deadline_timer"),
    ("1.ecx", 25, "aes"),
    ("1.ecx", 26, "xsave"),
    ("1.ecx", 28, "avx"),
    ("1.ecx", 29, "f16c"),
    ("1.ecx", 30, "rdrand"),
    ("1.ecx", 31, "hypervisor"),
    ("d1.eax", 0, "xsaveopt"),
    ("d1.eax", 1, "xsavec"),
    ("d1.eax", 2, "xgetbv1"),
    ("d1.eax", 3, "xsaves"),
    ("7.ebx", 0, "fsgsbase"),
    ("7.ebx", 3, "bmi1"),
    ("7.ebx", 5, "avx2"),
    ("7.ebx", 7, "smep"),
    ("7.ebx", 8, "bmi2"),
    ("7.ebx", 9, "erms"),
    ("7.ebx", 10, "invpcid"),
    ("7.ebx", 18, "rdseed"),
    ("7.ebx", 19, "adx"),
    ("7.ebx", 20, "smap"),
    ("7.ebx", 23, "clflushopt"),
    ("7.ebx", 24, "clwb"),
    ("7.ecx", 2, "umip"),
    ("7.ecx", 22, "rdpid"),
    ("e1.edx", 11, "syscall"),
    ("e1.edx", 20, "nx"),
    ("e1.edx", 22, "mmxext"),
    ("e1.edx", 25, "fxsr_opt"),
    ("e1.edx", 26, "pdpe1gb"),
    ("e1.edx", 27, "rdtscp"),
    ("e1.edx", 29, "lm"),
    ("e1.edx", 31, "3dnow"),
    ("e1.edx", 30, "3dnowext"),
    ("e1.ecx", 0, "lahf_lm"),
    ("e1.ecx", 1, "cmp_legacy"),
    ("e1.ecx", 2, "svm"),
    ("e1.ecx", 4, "cr8_legacy"),
    ("e1.ecx", 5, "abm"),
    ("e1.ecx", 6, "sse4a"),
    ("e1.ecx", 7, "misalignsse"),
    ("e1.ecx", 8, "3dnowprefetch"),
    ("e1.ecx", 9, "osvw"),
    ("e1.ecx", 22, "topoext"),
];

/// Flags Linux derives itself (software features, bugs and mitigations it reports in
/// the same list), which no CPUID bit of the model stands for.
const SYNTHETIC: &[&str] = &[
    "constant_tsc",
    "nonstop_tsc",
    "tsc_known_freq",
    "rep_good",
    "nopl",
    "cpuid",
    "xtopology",
    "tsc_reliable",
    "extd_apicid",
    "invpcid_single",
    // AMD: Linux sets PREFETCHW support for every long-mode CPU.
    "3dnowprefetch",
    "pti",
    "vmmcall",
    "arat",
    "tsc_adjust",
    // CPUID.1:ECX[27] mirrors CR4.OSXSAVE, which Linux sets itself.
    "osxsave",
];

/// The flags the TCG model's CPUID should make Linux show (the machine's CPU 0 has a
/// local APIC).
fn expected_flags() -> Vec<&'static str> {
    let m = vireo_x86::cpuid::CpuidModel::default().with_local_apic(0);
    let reg = |name: &str| -> u32 {
        match name {
            "1.edx" => m.edx1,
            "1.ecx" => m.ecx1,
            "7.ebx" => m.ebx7,
            "7.ecx" => m.ecx7,
            "e1.edx" => m.edx_ext1,
            "e1.ecx" => m.ecx_ext1,
            "d1.eax" if m.has_xsave() => m.xsave_d1,
            _ => 0,
        }
    };
    CPUID_FLAGS
        .iter()
        .filter(|(r, bit, _)| reg(r) & (1 << bit) != 0)
        .map(|(_, _, name)| *name)
        .collect()
}

/// What the guest printed, with arrival times.
struct Run {
    lines: Vec<Line>,
    /// CPU time vireo used in each idle window (`IDLE-BEGIN` to `IDLE-MID` to
    /// `IDLE-END`), with the wall time.
    idle: Vec<(Duration, Duration)>,
}

impl Run {
    fn tagged(&self, tag: &str) -> Vec<&str> {
        self.lines
            .iter()
            .filter_map(|l| l.text.strip_prefix(tag))
            .map(str::trim)
            .collect()
    }
    fn at(&self, text: &str) -> Option<Duration> {
        self.lines.iter().find(|l| l.text == text).map(|l| l.at)
    }
    fn tail(&self) -> String {
        let n = self.lines.len().saturating_sub(40);
        self.lines[n..]
            .iter()
            .map(|l| format!("[{:8.3}] {}", l.at.as_secs_f64(), l.text))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// One Linux guest at a time: the timing checks need the host's cores.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// How vireo runs the guest: the engine, TCG's backend, the number of CPUs.
struct Engine<'a> {
    accel: &'a str,
    /// `-tcg-backend` (TCG only).
    backend: Option<&'a str>,
    cpus: u32,
}

/// Boots the guest on `e` with `job`, and collects its output.
fn boot(g: &Guest, e: &Engine<'_>, job: &str, timeout: Duration) -> Run {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let append = format!(
        "console=ttyS0 panic=-1 rdinit=/init vireo.cmd={}",
        guest::encode_cmd(job)
    );
    let mut cmd = Command::new(vireo_bin());
    if let Some(b) = e.backend {
        cmd.args(["-tcg-backend", b]);
    }
    cmd.args([
        "-accel",
        e.accel,
        "-m",
        "512",
        "-smp",
        &e.cpus.to_string(),
        "-nodefaults",
        "-display",
        "none",
    ])
    .args(["-serial", "stdio", "-no-reboot", "-kernel"])
    .arg(&g.kernel)
    .arg("-initrd")
    .arg(&g.initramfs)
    .args(["-append", &append]);
    let mut child = Running::spawn(&mut cmd).expect("start vireo");
    let deadline = Instant::now() + timeout;
    let mut lines = Vec::new();
    let mut idle_start = None;
    let mut idle = Vec::new();
    // Until end of output or the deadline.
    while let Next::Line(l) = child.next_line(deadline) {
        if matches!(l.text.as_str(), "IDLE-MID" | "IDLE-END") {
            if let (Some((c0, t0)), Some(c1)) = (idle_start.take(), child.cpu_time()) {
                idle.push((c1.saturating_sub(c0), l.at - t0));
            }
        }
        if matches!(l.text.as_str(), "IDLE-BEGIN" | "IDLE-MID") {
            idle_start = child.cpu_time().map(|c| (c, l.at));
        }
        lines.push(l);
    }
    let (end, stderr) = child.finish(deadline);
    let run = Run { lines, idle };
    assert!(
        matches!(end, vireo_testsuite::process::End::Exited { status, .. } if status.success()),
        "vireo ended with {} after {:.1} s\nstderr: {stderr}\nserial tail:\n{}",
        end.describe(),
        end.at().as_secs_f64(),
        run.tail()
    );
    run
}

/// Boots Linux under `accel` and checks everything the job reports. All checks run;
/// the test fails with the list of those that did not hold (a boot is slow: one run
/// should tell everything).
fn linux_boots_and_runs_the_job(accel: &str, test: &str) {
    let Some(g) = guest_or_skip(test) else {
        return;
    };
    let e = Engine {
        accel,
        backend: None,
        cpus: 1,
    };
    let run = boot(&g, &e, &job(), Duration::from_secs(1500));
    let ctx = run.tail();
    let mut bad: Vec<String> = Vec::new();
    let mut check = |ok: bool, what: String| {
        if !ok {
            bad.push(what);
        }
    };
    let init = run
        .lines
        .iter()
        .find(|l| l.text.starts_with(INIT_MARKER))
        .map(|l| l.at);
    check(init.is_some(), "/init not reached".into());
    check(
        run.tagged(CMD_DONE) == ["0"],
        format!("job status {:?}", run.tagged(CMD_DONE)),
    );

    // 1. A clean kernel log.
    let badlog = run.tagged("BADLOG:");
    check(badlog.is_empty(), format!("kernel log: {badlog:#?}"));

    // 2. /proc/cpuinfo flags are the CPUID model's (TCG) bits, nothing more.
    let flags = run.tagged("CPUFLAGS:");
    let shown: Vec<&str> = flags
        .first()
        .and_then(|l| l.split_once(':'))
        .map(|(_, f)| f.split_whitespace().collect())
        .unwrap_or_default();
    check(!shown.is_empty(), "no flags line".into());
    if accel == "tcg" {
        let want = expected_flags();
        let missing: Vec<_> = want.iter().filter(|f| !shown.contains(f)).collect();
        let extra: Vec<_> = shown
            .iter()
            .filter(|f| !want.contains(f) && !SYNTHETIC.contains(f))
            .collect();
        check(
            missing.is_empty() && extra.is_empty(),
            format!("cpuinfo flags: missing {missing:?}, extra {extra:?}; shown {shown:?}"),
        );
    }
    let online = run.tagged("ONLINE:");
    check(online == ["0"], format!("CPUs online: {online:?}"));

    // 3. CPU-bound jobs give the host's results.
    let data = seq_output();
    let mut big = Vec::with_capacity(MD5_BYTES);
    while big.len() < MD5_BYTES {
        big.extend_from_slice(&data);
    }
    big.truncate(MD5_BYTES);
    let md5sum = vireo_testsuite::process::find_in_path("md5sum").unwrap_or(g.busybox.clone());
    let first_word = |tag: &str| {
        run.tagged(tag)
            .first()
            .and_then(|l| l.split_whitespace().next())
            .map(str::to_string)
    };
    let want_md5 = host_md5(&md5sum, &big);
    let got_md5 = first_word("MD5:");
    check(
        got_md5.as_deref() == Some(want_md5.as_str()),
        format!("md5sum: guest {got_md5:?}, host {want_md5}"),
    );
    let gz = pipe_bytes(Command::new(&g.busybox).args(["gzip", "-c"]), &data);
    let want_gz = host_md5(&md5sum, gz.get(10..).unwrap_or_default());
    let got_gz = first_word("GZIP:");
    check(
        got_gz.as_deref() == Some(want_gz.as_str()),
        format!("gzip output md5: guest {got_gz:?}, host {want_gz}"),
    );

    // 4. `sleep 5` takes 5 s of host time, within 5%.
    match (run.at("SLEEP-BEGIN"), run.at("SLEEP-END")) {
        (Some(s0), Some(s1)) => {
            let slept = (s1 - s0).as_secs_f64();
            println!("sleep 5 took {slept:.3} s of host time");
            check(
                (4.75..=5.25).contains(&slept),
                format!("sleep 5 took {slept:.3} s"),
            );
        }
        _ => check(false, "no sleep markers".into()),
    }

    // 5. An idle guest costs under 5% of one host core (in the quieter of its two
    //    idle windows).
    let shares: Vec<f64> = run
        .idle
        .iter()
        .map(|(cpu, wall)| {
            let share = cpu.as_secs_f64() / wall.as_secs_f64();
            println!(
                "idle: {:.2} s CPU in {:.2} s ({:.1}% of a core)",
                cpu.as_secs_f64(),
                wall.as_secs_f64(),
                share * 100.0
            );
            share
        })
        .collect();
    match shares.iter().copied().reduce(f64::min) {
        Some(share) if shares.len() == 2 => check(
            share < 0.05,
            format!("idle guest used {:.1}% of a core", share * 100.0),
        ),
        _ => check(false, "idle CPU time not measured".into()),
    }
    if let Some(t) = init {
        println!("/init reached after {:.1} s", t.as_secs_f64());
    }
    assert!(bad.is_empty(), "{}\n\nserial tail:\n{ctx}", bad.join("\n"));
}

#[test]
fn linux_under_tcg() {
    linux_boots_and_runs_the_job("tcg", "linux_under_tcg");
}

#[test]
#[ignore = "this host's KVM (kvm_pvm) emulates the kernel's CPL0 code: with hybrid execution the \
            kernel gets to its clocksource switch in ~470 s, then stalls (docs/ARCHITECTURE.md, \
            hybrid execution); run with --ignored elsewhere"]
fn linux_under_kvm() {
    if vireo_testsuite::skip_without_kvm("linux_under_kvm") {
        return;
    }
    linux_boots_and_runs_the_job("kvm", "linux_under_kvm");
}

/// Lines of `seq 1 N` each pinned job hashes, repeated [`PIN_REPEAT`] times.
const PIN_SEQ: u32 = 100_000;
const PIN_REPEAT: usize = 8;

/// The `-smp 2` job: both CPUs online, and a job pinned to each CPU with `taskset`,
/// both running at once. Each reports its md5sum and the CPU its last process ran on
/// (field 39 of `/proc/self/stat`).
fn smp_job() -> String {
    let pinned = |c: u32| {
        format!(
            "taskset -c {c} sh -c 'i=0; while [ $i -lt {PIN_REPEAT} ]; do cat /tmp/s; \
             i=$((i+1)); done | md5sum | sed \"s/^/PIN{c}: /\"; \
             cut -d\" \" -f39 /proc/self/stat | sed \"s/^/ONCPU{c}: /\"'"
        )
    };
    format!(
        "{BADLOG}; echo ONLINE: $(cat /sys/devices/system/cpu/online); seq 1 {PIN_SEQ} > /tmp/s; \
         {} & {} & wait",
        pinned(0),
        pinned(1)
    )
}

/// `-smp 2`: Linux brings up both CPUs, the kernel log stays clean (no TSC warp
/// between CPUs, no MTRR mismatch), and a job pinned to each CPU gives the host's
/// result on that CPU. Under TCG this runs on the JIT backend (the one-CPU test runs
/// the interpreter), so both backends boot Linux in CI.
fn linux_smp2(accel: &str, backend: Option<&str>, test: &str) {
    let Some(g) = guest_or_skip(test) else {
        return;
    };
    let e = Engine {
        accel,
        backend,
        cpus: 2,
    };
    let run = boot(&g, &e, &smp_job(), Duration::from_secs(1500));
    let ctx = run.tail();
    let mut bad: Vec<String> = Vec::new();
    let mut check = |ok: bool, what: String| {
        if !ok {
            bad.push(what);
        }
    };
    check(
        run.tagged(CMD_DONE) == ["0"],
        format!("job status {:?}", run.tagged(CMD_DONE)),
    );
    let badlog = run.tagged("BADLOG:");
    check(badlog.is_empty(), format!("kernel log: {badlog:#?}"));
    let online = run.tagged("ONLINE:");
    check(online == ["0-1"], format!("CPUs online: {online:?}"));
    let data = seq_output_n(PIN_SEQ).repeat(PIN_REPEAT);
    let md5sum = vireo_testsuite::process::find_in_path("md5sum").unwrap_or(g.busybox.clone());
    let want = host_md5(&md5sum, &data);
    for c in 0..2 {
        let got: Vec<&str> = run
            .tagged(&format!("PIN{c}:"))
            .iter()
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        check(
            got == [want.as_str()],
            format!("job pinned to CPU {c}: md5 {got:?}, host {want}"),
        );
        let on = run.tagged(&format!("ONCPU{c}:"));
        check(
            on == [c.to_string().as_str()],
            format!("job pinned to CPU {c} ran on {on:?}"),
        );
    }
    assert!(bad.is_empty(), "{}\n\nserial tail:\n{ctx}", bad.join("\n"));
}

#[test]
fn linux_smp2_under_tcg() {
    linux_smp2("tcg", Some("jit"), "linux_smp2_under_tcg");
}
