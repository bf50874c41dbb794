//! QEMU-compatible command line: `-m 512 -kernel bzImage -append ... -nographic`.
//!
//! QEMU's options are single-dash long options with comma-separated properties, which
//! derive-style parsers do not model, so this is a small hand-written parser. Every
//! unknown option, device or value is a one-line error. `-device` and its help output
//! live in [`device`].

use crate::config::{Accel, CharSpec, DebugconConfig, MachineConfig};
use crate::error::{Error, Result};
use std::collections::HashMap;
use std::path::PathBuf;
use vireo_core::layout::MIN_RAM;

pub mod device;

/// What the command line asks for.
#[derive(Debug)]
pub enum Command {
    Run(Box<MachineConfig>, LogConfig),
    Help,
    Version,
    /// `-device help`: the device models.
    DeviceHelp,
    /// `-device NAME,help`: the properties of one model.
    DeviceProps(&'static str),
    CpuHelp,
    LogHelp,
    MachineHelp,
}

/// `-d` categories and the `-D` file.
#[derive(Debug, Default, Clone)]
pub struct LogConfig {
    pub categories: Vec<String>,
    pub file: Option<PathBuf>,
    /// `-dfilter`: guest address ranges (inclusive) the translation logs show.
    pub dfilter: Option<Vec<(u64, u64)>>,
}

/// `-d` categories and the log targets they enable (see docs/ARCHITECTURE.md).
pub const LOG_CATEGORIES: &[(&str, &str, &str)] = &[
    (
        "guest_errors",
        "vireo::guest",
        "guest actions the hardware would reject or ignore",
    ),
    (
        "unimp",
        "vireo::unimp",
        "guest use of unimplemented features",
    ),
    ("int", "vireo::int", "interrupts and exceptions"),
    ("cpu", "vireo::cpu", "CPU state at each exit"),
    ("cpu_reset", "vireo::machine", "machine and CPU resets"),
    (
        "in_asm",
        "vireo::tcg::in_asm",
        "guest code of each translated block (TCG)",
    ),
    ("op", "vireo::tcg::op", "IR of each translated block (TCG)"),
    (
        "out_asm",
        "vireo::tcg::out_asm",
        "host code of each translated block (TCG)",
    ),
    ("exec", "vireo::tcg::exec", "each block executed (TCG)"),
    ("mmu", "vireo::mmu", "page walks and TLB fills"),
    ("ioport", "vireo::bus", "unassigned port and MMIO accesses"),
    ("kvm", "vireo::kvm", "KVM engine details"),
    ("dev", "vireo::dev", "all devices"),
];

pub const HELP: &str = "\
vireo - a PC emulator with a TCG and a KVM engine (QEMU-compatible options)

usage: vireo [options]
With no kernel, vireo boots its built-in firmware demo: real mode -> protected mode ->
long mode, a report on the serial port, then ACPI power-off (exit status 0).

Machine:
  -m [size=]SIZE          guest RAM; MiB by default, suffixes K, M, G (default 128M)
  -smp [cpus=]N[,sockets=N][,maxcpus=N]
                          number of CPUs (each its own socket)
  -machine|-M [pc][,accel=kvm|tcg]   machine type (pc, i440FX) and properties
  -accel kvm|tcg          execution engine (default: kvm; tcg: translator + JIT)
  -enable-kvm             same as -accel kvm
  -cpu host|max|qemu64    CPU model (default: host under KVM, max under TCG); -cpu help
  -tcg-backend interp|jit what runs TCG's translated blocks: the x86-64 JIT
                          (default) or the IR interpreter
  -tcg-warmup N           interpreted runs of a new block before the JIT compiles
                          it (default 1; 0 compiles every block at once)
  -tcg-compiler thread|inline
                          where the JIT compiles: on a thread of its own, the
                          vCPU interpreting a block until its code is in
                          (default), or on the vCPU's thread
  -perfmap                write /tmp/perf-<pid>.map naming the JIT's code by guest
                          block, for Linux perf
Boot:
  -kernel FILE            Linux bzImage or Multiboot v1 kernel (ELF or a.out kludge)
  -initrd FILE[,FILE...]  Linux initrd, or Multiboot modules (\"path args\" each)
  -append CMDLINE         kernel command line
Character devices:
  -serial DEV             next COM port: stdio, mon:stdio, file:PATH, null, none,
                          chardev:ID (the first -serial replaces the default COM1)
  -chardev stdio|file|null,id=ID[,path=PATH]
  -nographic              no display; COM1 on the terminal in raw mode, Ctrl-A X quits
  -display none           no display (vireo never has one)
  -vnc none               no VNC server (vireo never has one)
  -nodefaults             no default devices (no COM1 on stdio)
Devices (properties as in QEMU; -device NAME,help lists a model's):
  -device isa-debug-exit[,iobase=0x501][,iosize=2]
  -device isa-debugcon[,iobase=0xe9][,chardev=ID]
  -device pc-testdev      QEMU's ISA test device: scratch ports 0xe0/0xe8, flush
                          port 0xe4, IRQ lines at ports 0x2000-0x2017, test memory
                          at 0xff000000
  -device pci-testdev[,addr=SLOT[.FN]][,membar=SIZE]
                          QEMU's PCI test device (1b36:0005)
  -device help|?          list devices (QEMU's format)
  -device NAME,help       list a device's properties
Run control and debugging:
  -no-reboot              exit instead of rebooting on reset or triple fault
  -d CAT[,CAT...]         enable log categories (-d help lists them); RUST_LOG works too
  -D FILE                 write the log to FILE instead of stderr
  -dfilter RANGE[,RANGE...]
                          in_asm, op and out_asm only for blocks overlapping a
                          range: START..LAST, START+LEN or END-LEN
  -h, -help, --help       this text
  -version, --version     version
Exit status: 0 after ACPI power-off or Ctrl-A X; (value << 1) | 1 after a write of
value to isa-debug-exit; 1 with a one-line error for bad input.
";

fn parse_size(s: &str) -> Result<u64> {
    let bad = || {
        Error::usage(format!(
            "-m {s}: not a memory size (examples: 512, 512M, 2G)"
        ))
    };
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m: u64 = match c.to_ascii_uppercase() {
                'B' => 1,
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => return Err(bad()),
            };
            (&s[..i], m)
        }
        _ => (s, 1 << 20),
    };
    let n: f64 = num.parse().map_err(|_| bad())?;
    if !n.is_finite() || n < 0.0 {
        return Err(bad());
    }
    let bytes = n * mult as f64;
    if bytes > (1u64 << 52) as f64 {
        return Err(Error::usage(format!("-m {s}: far too large")));
    }
    // Whole pages.
    Ok(((bytes as u64) + 4095) & !4095)
}

/// A decimal or `0x` hexadecimal number.
fn parse_num(opt: &str, s: &str) -> Result<u64> {
    let r = if let Some(h) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        u64::from_str_radix(h, 16)
    } else {
        s.parse()
    };
    r.map_err(|_| Error::usage(format!("{opt}: '{s}' is not a number")))
}

/// `-smp [cpus=]N[,maxcpus=N][,sockets=S][,dies=1][,cores=1][,threads=1]`: the number
/// of CPUs. As in QEMU, a missing count is the product of the topology. vireo models
/// every CPU as its own socket and has no CPU hotplug, so cores, threads and dies
/// above 1 and a `maxcpus` other than the count are refused.
fn parse_smp(v: &str) -> Result<u32> {
    let bad = |why: String| Error::usage(format!("-smp {v}: {why}"));
    let (first, props) = split_props(v);
    let mut cpus = first.map(|n| parse_num("-smp", n)).transpose()?;
    let (mut maxcpus, mut sockets) = (None, None);
    for (k, val) in props {
        let n = parse_num("-smp", val)?;
        match k {
            "cpus" => cpus = Some(n),
            "maxcpus" => maxcpus = Some(n),
            "sockets" => sockets = Some(n),
            "dies" | "clusters" | "cores" | "threads" if n == 1 => {}
            "dies" | "clusters" | "cores" | "threads" => {
                return Err(bad(format!(
                "{k}={n}: vireo models each CPU as its own socket (use sockets= or a plain count)"
            )))
            }
            _ => return Err(bad(format!("unknown property '{k}'"))),
        }
    }
    let n = cpus.or(sockets).or(maxcpus).unwrap_or(1);
    if sockets.is_some_and(|s| s != n) {
        return Err(bad(format!("sockets must equal the CPU count {n}")));
    }
    if maxcpus.is_some_and(|m| m != n) {
        return Err(bad(format!(
            "maxcpus must equal the CPU count {n} (vireo has no CPU hotplug)"
        )));
    }
    let max = u64::from(crate::machine::MAX_CPUS);
    if n == 0 || n > max {
        return Err(bad(format!("expected 1 to {max} CPUs")));
    }
    Ok(n as u32)
}

/// Splits `name,key=val,...` into the first bare word and the properties.
fn split_props(s: &str) -> (Option<&str>, Vec<(&str, &str)>) {
    let mut first = None;
    let mut props = Vec::new();
    for (i, part) in s.split(',').enumerate() {
        match part.split_once('=') {
            Some((k, v)) => props.push((k, v)),
            None if i == 0 => first = Some(part),
            None => props.push((part, "on")),
        }
    }
    (first, props)
}

/// A character device as written on the command line, before chardev IDs resolve.
enum CharRef {
    Spec(CharSpec),
    Id(String),
    None,
}

fn parse_serial(s: &str) -> Result<CharRef> {
    Ok(match s {
        "stdio" | "mon:stdio" => CharRef::Spec(CharSpec::Stdio),
        "null" | "vc" => CharRef::Spec(CharSpec::Null),
        "none" => CharRef::None,
        _ => {
            if let Some(p) = s.strip_prefix("file:") {
                CharRef::Spec(CharSpec::File(PathBuf::from(p)))
            } else if let Some(id) = s.strip_prefix("chardev:") {
                CharRef::Id(id.to_string())
            } else {
                return Err(Error::usage(format!(
                    "-serial {s}: unsupported back end (use stdio, file:PATH, null, none or chardev:ID)"
                )));
            }
        }
    })
}

fn parse_chardev(s: &str) -> Result<(String, CharSpec)> {
    let (kind, props) = split_props(s);
    let props: HashMap<&str, &str> = props.into_iter().collect();
    let id = props
        .get("id")
        .ok_or_else(|| Error::usage(format!("-chardev {s}: missing id=")))?;
    let spec =
        match kind {
            Some("stdio") => CharSpec::Stdio,
            Some("null") => CharSpec::Null,
            Some("file") => CharSpec::File(PathBuf::from(props.get("path").ok_or_else(|| {
                Error::usage(format!("-chardev {s}: file back end needs path="))
            })?)),
            Some(other) => {
                return Err(Error::usage(format!(
                    "-chardev {other}: unsupported back end (use stdio, file or null)"
                )))
            }
            None => return Err(Error::usage(format!("-chardev {s}: missing back end"))),
        };
    Ok((id.to_string(), spec))
}

fn parse_accel(opt: &str, s: &str) -> Result<Accel> {
    // QEMU allows a fallback list "kvm:tcg": take the first vireo can use.
    let mut last = None;
    for a in s.split(':') {
        match a {
            "kvm" => {
                if vireo_kvm::available().is_ok() || last.is_none() && !s.contains(':') {
                    return Ok(Accel::Kvm);
                }
                last = Some(Accel::Kvm);
            }
            "tcg" => return Ok(Accel::Tcg),
            other => {
                return Err(Error::usage(format!(
                    "{opt} {s}: unknown accelerator '{other}' (kvm or tcg)"
                )))
            }
        }
    }
    last.ok_or_else(|| Error::usage(format!("{opt}: empty accelerator")))
}

/// Parses the arguments (without the program name).
pub fn parse(args: &[String]) -> Result<Command> {
    let mut cfg = MachineConfig::default();
    let mut log = LogConfig::default();
    let mut serials: Vec<CharRef> = Vec::new();
    let mut chardevs: HashMap<String, CharSpec> = HashMap::new();
    let mut debugcons: Vec<device::Debugcon> = Vec::new();
    let mut nodefaults = false;
    let mut nographic = false;

    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let opt = if arg.starts_with("--") && arg.len() > 2 {
            &arg[1..]
        } else {
            arg.as_str()
        };
        if !opt.starts_with('-') {
            return Err(Error::usage(format!(
                "{arg}: disk images are not supported yet (vireo has no disk controller)"
            )));
        }
        let mut value = || {
            it.next()
                .map(|s| s.as_str())
                .ok_or_else(|| Error::usage(format!("{opt}: missing argument")))
        };
        match opt {
            "-h" | "-help" => return Ok(Command::Help),
            "-version" => return Ok(Command::Version),
            "-m" => {
                let v = value()?;
                let (first, props) = split_props(v);
                let size = match first {
                    Some(s) => s,
                    None => props
                        .iter()
                        .find(|(k, _)| *k == "size")
                        .map(|(_, v)| *v)
                        .ok_or_else(|| Error::usage(format!("-m {v}: missing size")))?,
                };
                let bytes = parse_size(size)?;
                if bytes < MIN_RAM {
                    return Err(Error::usage(format!(
                        "-m {v}: guest RAM must be at least {} MiB",
                        MIN_RAM >> 20
                    )));
                }
                let host = host_memory();
                if bytes > host {
                    return Err(Error::usage(format!(
                        "-m {v}: {} MiB exceeds this host's {} MiB of memory",
                        bytes >> 20,
                        host >> 20
                    )));
                }
                cfg.ram_size = bytes;
            }
            "-smp" => cfg.cpus = parse_smp(value()?)?,
            "-kernel" => cfg.kernel = Some(PathBuf::from(value()?)),
            "-initrd" => {
                cfg.initrd = crate::boot::multiboot::parse_module_specs(value()?)
                    .into_iter()
                    .map(|m| m.cmdline)
                    .collect()
            }
            "-append" => cfg.append = value()?.to_string(),
            "-serial" => serials.push(parse_serial(value()?)?),
            "-chardev" => {
                let (id, spec) = parse_chardev(value()?)?;
                if chardevs.insert(id.clone(), spec).is_some() {
                    return Err(Error::usage(format!("-chardev: duplicate id '{id}'")));
                }
            }
            "-nographic" => nographic = true,
            "-display" => {
                let v = value()?;
                if v != "none" && !v.starts_with("none,") {
                    return Err(Error::usage(format!(
                        "-display {v}: vireo has no display; use -display none"
                    )));
                }
            }
            "-vnc" => {
                let v = value()?;
                if v != "none" {
                    return Err(Error::usage(format!(
                        "-vnc {v}: vireo has no display; use -vnc none"
                    )));
                }
            }
            "-nodefaults" => nodefaults = true,
            "-no-reboot" => cfg.no_reboot = true,
            "-enable-kvm" => cfg.accel = Accel::Kvm,
            "-accel" => {
                let v = value()?;
                let (first, _props) = split_props(v);
                cfg.accel = parse_accel("-accel", first.unwrap_or(""))?;
            }
            "-machine" | "-M" => {
                let v = value()?;
                let (first, props) = split_props(v);
                if let Some(m) = first {
                    if m == "help" {
                        return Ok(Command::MachineHelp);
                    }
                    if m != "pc" && !m.starts_with("pc-i440fx") {
                        return Err(Error::usage(format!(
                            "-machine {m}: unsupported machine type (vireo models 'pc')"
                        )));
                    }
                }
                for (k, val) in props {
                    match k {
                        "accel" => cfg.accel = parse_accel("-machine accel=", val)?,
                        "type" => {
                            if val != "pc" {
                                return Err(Error::usage(format!(
                                    "-machine type={val}: unsupported machine type"
                                )));
                            }
                        }
                        "kernel-irqchip" | "usb" | "vmport" | "graphics" => {}
                        other => {
                            return Err(Error::usage(format!(
                                "-machine: unknown property '{other}'"
                            )))
                        }
                    }
                }
            }
            "-perfmap" => cfg.perfmap = true,
            "-tcg-backend" => {
                let v = value()?;
                cfg.tcg_backend = v
                    .parse()
                    .map_err(|e: String| Error::usage(format!("-tcg-backend: {e}")))?;
            }
            "-tcg-compiler" => {
                cfg.tcg_compile_thread = match value()? {
                    "thread" => true,
                    "inline" => false,
                    v => {
                        return Err(Error::usage(format!(
                            "-tcg-compiler: '{v}' is not thread or inline"
                        )))
                    }
                };
            }
            "-tcg-warmup" => {
                let v = value()?;
                cfg.tcg_warmup = v.parse().map_err(|_| {
                    Error::usage(format!("-tcg-warmup: '{v}' is not a number of runs"))
                })?;
            }
            "-cpu" => {
                let v = value()?;
                let (model, _props) = split_props(v);
                match model {
                    Some("help") => return Ok(Command::CpuHelp),
                    Some(m @ ("host" | "max" | "qemu64")) => cfg.cpu_model = Some(m.to_string()),
                    Some(m) => {
                        return Err(Error::usage(format!(
                            "-cpu {m}: unknown CPU model (host, max, qemu64; -cpu help)"
                        )))
                    }
                    None => return Err(Error::usage("-cpu: missing model")),
                }
            }
            "-device" => match device::parse(value()?, &mut cfg, &mut debugcons)? {
                device::DeviceArg::List => return Ok(Command::DeviceHelp),
                device::DeviceArg::Props(name) => return Ok(Command::DeviceProps(name)),
                device::DeviceArg::Added => {}
            },
            "-d" => {
                let v = value()?;
                for c in v.split(',') {
                    if c == "help" {
                        return Ok(Command::LogHelp);
                    }
                    if !LOG_CATEGORIES.iter().any(|(n, _, _)| *n == c) {
                        return Err(Error::usage(format!(
                            "-d {c}: unknown log category (-d help lists them)"
                        )));
                    }
                    log.categories.push(c.to_string());
                }
            }
            "-D" => log.file = Some(PathBuf::from(value()?)),
            "-dfilter" => {
                let v = value()?;
                let r = vireo_tcg::dfilter::parse(v)
                    .map_err(|e| Error::usage(format!("-dfilter {v}: {e}")))?;
                log.dfilter = Some(r);
            }
            other => {
                return Err(Error::usage(format!(
                    "{other}: unknown option (vireo --help lists the options)"
                )))
            }
        }
    }

    let resolve = |r: &CharRef| -> Result<Option<CharSpec>> {
        Ok(match r {
            CharRef::Spec(s) => Some(s.clone()),
            CharRef::None => None,
            CharRef::Id(id) => Some(
                chardevs
                    .get(id)
                    .cloned()
                    .ok_or_else(|| Error::usage(format!("chardev '{id}' is not defined")))?,
            ),
        })
    };
    cfg.serials.clear();
    if serials.is_empty() && !nodefaults {
        cfg.serials.push(CharSpec::Stdio);
    }
    for s in &serials {
        if let Some(spec) = resolve(s)? {
            cfg.serials.push(spec);
        }
    }
    if cfg.serials.len() > 4 {
        return Err(Error::usage("at most 4 -serial ports (COM1..COM4)"));
    }
    for device::Debugcon {
        iobase,
        chardev,
        readback,
    } in debugcons
    {
        let spec = match chardev {
            Some(id) => resolve(&CharRef::Id(id))?.unwrap_or(CharSpec::Null),
            None => CharSpec::Stdio,
        };
        cfg.debugcons.push(DebugconConfig {
            iobase,
            chardev: spec,
            readback,
        });
    }
    cfg.stdin_input = nographic || cfg.serials.iter().any(|s| matches!(s, CharSpec::Stdio));
    Ok(Command::Run(Box::new(cfg), log))
}

/// Total host memory in bytes (MemTotal), or u64::MAX if it cannot be read.
pub fn host_memory() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{DebugExitConfig, PciTestdevConfig};

    fn run(args: &[&str]) -> Result<MachineConfig> {
        let a: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        match parse(&a)? {
            Command::Run(c, _) => Ok(*c),
            other => panic!("not a run: {other:?}"),
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512").unwrap(), 512 << 20);
        assert_eq!(parse_size("2G").unwrap(), 2 << 30);
        assert_eq!(parse_size("1.5g").unwrap(), 3 << 29);
        assert_eq!(parse_size("4096k").unwrap(), 4 << 20);
        assert!(parse_size("lots").is_err());
        assert!(parse_size("-1").is_err());
        assert_eq!(run(&["-m", "size=64M"]).unwrap().ram_size, 64 << 20);
    }

    #[test]
    fn smp_takes_a_count_or_sockets_as_qemu_does() {
        for (v, n) in [
            ("1", 1),
            ("2", 2),
            ("cpus=4", 4),
            ("4,maxcpus=4", 4),
            ("sockets=3", 3),
            ("2,sockets=2,cores=1,threads=1,dies=1", 2),
            ("254", 254),
        ] {
            assert_eq!(parse_smp(v).unwrap(), n, "-smp {v}");
        }
    }

    #[test]
    fn bad_input_is_one_line_error() {
        for args in [
            &["-m", "0"][..],
            &["-m", "100000G"],
            &["-device", "sb16"],
            &["-smp", "0"],
            &["-smp", "255"],
            &["-smp", "4,cores=2"],
            &["-smp", "2,maxcpus=4"],
            &["-smp", "2,sockets=3"],
            &["-smp", "2,turbo=on"],
            &["-frobnicate"],
            &["-kernel"],
            &["-serial", "pty"],
            &["-cpu", "pentium9"],
            &["-d", "nonsense"],
            &["-dfilter", "0x1000"],
            &["-dfilter", "0x2000..0x1000"],
            &["-device", "isa-debug-exit,iobase=0xffff,iosize=4"],
            &["-serial", "chardev:nope"],
            &["disk.img"],
        ] {
            let e = run(args)
                .err()
                .unwrap_or_else(|| panic!("{args:?} accepted"));
            let msg = e.to_string();
            assert!(!msg.is_empty() && !msg.contains('\n'), "{args:?}: {msg:?}");
        }
    }

    #[test]
    fn qemu_style_machine() {
        let c = run(&[
            "-nodefaults",
            "-nographic",
            "--m",
            "256",
            "-machine",
            "pc,accel=kvm",
            "-device",
            "isa-debug-exit,iobase=0xf4,iosize=0x04",
            "-chardev",
            "file,id=log,path=/tmp/x",
            "-device",
            "isa-debugcon,chardev=log",
            "-serial",
            "chardev:log",
            "-no-reboot",
        ])
        .unwrap();
        assert_eq!(c.ram_size, 256 << 20);
        assert_eq!(
            c.debug_exits,
            vec![DebugExitConfig {
                iobase: 0xf4,
                iosize: 4
            }]
        );
        assert_eq!(c.debugcons[0].iobase, 0xe9);
        assert!(matches!(c.debugcons[0].chardev, CharSpec::File(_)));
        assert_eq!(c.serials.len(), 1);
        assert!(c.no_reboot);
        // -nodefaults removes the default COM1.
        assert!(run(&["-nodefaults"]).unwrap().serials.is_empty());
        assert_eq!(run(&[]).unwrap().serials.len(), 1);
    }

    #[test]
    fn tcg_backend_option() {
        assert_eq!(run(&[]).unwrap().tcg_backend, vireo_tcg::Backend::Jit);
        let c = run(&["-accel", "tcg", "-tcg-backend", "jit"]).unwrap();
        assert_eq!(c.tcg_backend, vireo_tcg::Backend::Jit);
        assert!(!run(&[]).unwrap().perfmap);
        assert!(run(&["-accel", "tcg", "-perfmap"]).unwrap().perfmap);
        let c = run(&["-tcg-backend", "interp"]).unwrap();
        assert_eq!(c.tcg_backend, vireo_tcg::Backend::Interp);
        assert!(run(&["-tcg-backend", "llvm"]).is_err());
        assert!(HELP.contains("-tcg-backend"));
        assert_eq!(run(&[]).unwrap().tcg_warmup, vireo_tcg::DEFAULT_WARMUP);
        assert_eq!(run(&["-tcg-warmup", "0"]).unwrap().tcg_warmup, 0);
        assert_eq!(run(&["-tcg-warmup", "3"]).unwrap().tcg_warmup, 3);
        assert!(run(&["-tcg-warmup", "-1"]).is_err());
        assert!(run(&["-tcg-warmup", "many"]).is_err());
        assert!(HELP.contains("-tcg-warmup"));
        assert!(run(&[]).unwrap().tcg_compile_thread);
        assert!(
            run(&["-tcg-compiler", "thread"])
                .unwrap()
                .tcg_compile_thread
        );
        assert!(
            !run(&["-tcg-compiler", "inline"])
                .unwrap()
                .tcg_compile_thread
        );
        assert!(run(&["-tcg-compiler", "both"]).is_err());
        assert!(HELP.contains("-tcg-compiler"));
    }

    /// The command line kvm-unit-tests' x86 runner (`x86/run`) builds for QEMU.
    #[test]
    fn kvm_unit_tests_command_line() {
        let c = run(&[
            "--no-reboot",
            "-nodefaults",
            "-device",
            "pc-testdev",
            "-device",
            "isa-debug-exit,iobase=0xf4,iosize=0x4",
            "-vnc",
            "none",
            "-serial",
            "stdio",
            "-device",
            "pci-testdev",
            "-machine",
            "accel=tcg",
            "-kernel",
            "x86/msr.flat",
            "-smp",
            "1",
        ])
        .unwrap();
        assert!(c.pc_testdev && c.no_reboot);
        assert_eq!(c.pci_testdevs, [PciTestdevConfig::default()]);
        assert_eq!(
            c.debug_exits[0],
            DebugExitConfig {
                iobase: 0xf4,
                iosize: 4
            }
        );
        assert_eq!(c.accel, Accel::Tcg);
        // Its probes: `-device '?'` must list the test devices.
        let a = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(matches!(
            parse(&a(&["-device", "?"])),
            Ok(Command::DeviceHelp)
        ));
        assert!(device::list().contains("\"pc-testdev\""));
        assert!(matches!(
            parse(&a(&["-device", "pci-testdev,help"])),
            Ok(Command::DeviceProps("pci-testdev"))
        ));
        assert!(run(&["-vnc", ":0"]).is_err());
    }

    /// Every option `--help` names is one the parser knows.
    #[test]
    fn help_names_only_known_options() {
        let mut seen = std::collections::BTreeSet::new();
        for line in HELP.lines().filter(|l| l.starts_with("  -")) {
            let column = line.trim_start().split("  ").next().unwrap_or("");
            for alt in column.split([',', '|']) {
                let opt = alt.split([' ', '[']).find(|w| !w.is_empty()).unwrap_or("");
                if opt.starts_with('-') {
                    seen.insert(opt.to_string());
                }
            }
        }
        for opt in &seen {
            let args = vec![opt.clone(), "help".to_string()];
            if let Err(e) = parse(&args) {
                assert!(!e.to_string().contains("unknown option"), "{opt}: {e}");
            }
        }
        for opt in [
            "-vnc",
            "-device",
            "-no-reboot",
            "-nodefaults",
            "-M",
            "-D",
            "--help",
            "-smp",
        ] {
            assert!(seen.contains(opt), "--help lacks {opt}: {seen:?}");
        }
    }
}
