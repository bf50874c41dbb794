//! `-device`: the device models vireo offers, their properties, and QEMU's help output
//! for them (`-device help`, `-device NAME,help`) in QEMU 7.2's format, so that
//! scripts written for QEMU (kvm-unit-tests' runner greps `-device '?'`) work.

use super::parse_num;
use crate::config::{DebugExitConfig, MachineConfig, PciTestdevConfig};
use crate::error::{Error, Result};

/// QEMU's device categories, in the order `-device help` prints them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Category {
    Bridge,
    Usb,
    Storage,
    Network,
    Input,
    Display,
    Sound,
    Misc,
    Cpu,
    Watchdog,
    Uncategorized,
}

impl Category {
    const ALL: [Category; 11] = [
        Category::Bridge,
        Category::Usb,
        Category::Storage,
        Category::Network,
        Category::Input,
        Category::Display,
        Category::Sound,
        Category::Misc,
        Category::Cpu,
        Category::Watchdog,
        Category::Uncategorized,
    ];

    /// The group header QEMU prints.
    pub fn header(self) -> &'static str {
        match self {
            Category::Bridge => "Controller/Bridge/Hub devices:",
            Category::Usb => "USB devices:",
            Category::Storage => "Storage devices:",
            Category::Network => "Network devices:",
            Category::Input => "Input devices:",
            Category::Display => "Display devices:",
            Category::Sound => "Sound devices:",
            Category::Misc => "Misc devices:",
            Category::Cpu => "CPU devices:",
            Category::Watchdog => "Watchdog devices:",
            Category::Uncategorized => "Uncategorized devices:",
        }
    }
}

/// One property of a device model, as `-device NAME,help` lists it.
#[derive(Debug, Clone, Copy)]
pub struct PropInfo {
    pub name: &'static str,
    /// QEMU's type name: `uint32`, `int32`, `str`, `size`, `bool`.
    pub ty: &'static str,
    pub desc: &'static str,
    /// The default as QEMU prints it, if the property has one.
    pub default: Option<&'static str>,
}

/// A device model `-device` accepts.
#[derive(Debug, Clone, Copy)]
pub struct DeviceInfo {
    pub name: &'static str,
    pub bus: Option<&'static str>,
    pub desc: Option<&'static str>,
    pub category: Category,
    pub props: &'static [PropInfo],
}

const fn prop(
    name: &'static str,
    ty: &'static str,
    desc: &'static str,
    default: Option<&'static str>,
) -> PropInfo {
    PropInfo {
        name,
        ty,
        desc,
        default,
    }
}

/// Every device model vireo offers, with the properties it implements (QEMU's names,
/// types and defaults).
pub const DEVICES: &[DeviceInfo] = &[
    DeviceInfo {
        name: "isa-debug-exit",
        bus: Some("ISA"),
        desc: None,
        category: Category::Misc,
        props: &[
            prop("iobase", "uint32", "", Some("1281")),
            prop("iosize", "uint32", "", Some("2")),
        ],
    },
    DeviceInfo {
        name: "isa-debugcon",
        bus: Some("ISA"),
        desc: None,
        category: Category::Misc,
        props: &[
            prop(
                "chardev",
                "str",
                "ID of a chardev to use as a backend",
                None,
            ),
            prop("iobase", "uint32", "", Some("233")),
            prop("readback", "uint32", "", Some("233")),
        ],
    },
    DeviceInfo {
        name: "pc-testdev",
        bus: Some("ISA"),
        desc: None,
        category: Category::Misc,
        props: &[],
    },
    DeviceInfo {
        name: "pci-testdev",
        bus: Some("PCI"),
        desc: Some("PCI Test Device"),
        category: Category::Misc,
        props: &[
            prop(
                "addr",
                "int32",
                "Slot and optional function number, example: 06.0 or 06",
                Some("-1"),
            ),
            prop("membar", "size", "", Some("0")),
        ],
    },
];

/// An isa-debugcon as written on the command line, before its chardev ID resolves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Debugcon {
    pub iobase: u16,
    pub chardev: Option<String>,
    pub readback: u32,
}

/// What a `-device` argument asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum DeviceArg {
    /// `-device help` (or `?`): the list.
    List,
    /// `-device NAME,help`: the properties of NAME.
    Props(&'static str),
    /// A device was added to the configuration.
    Added,
}

/// The `-device help` text.
pub fn list() -> String {
    let mut out = String::new();
    for cat in Category::ALL {
        let mut devs: Vec<&DeviceInfo> = DEVICES.iter().filter(|d| d.category == cat).collect();
        if devs.is_empty() {
            continue;
        }
        devs.sort_by_key(|d| d.name.to_ascii_lowercase());
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str(cat.header());
        out.push('\n');
        for d in devs {
            out.push_str(&format!("name \"{}\"", d.name));
            if let Some(bus) = d.bus {
                out.push_str(&format!(", bus {bus}"));
            }
            if let Some(desc) = d.desc {
                out.push_str(&format!(", desc \"{desc}\""));
            }
            out.push('\n');
        }
    }
    out
}

/// The `-device NAME,help` text.
pub fn props(name: &str) -> String {
    let Some(d) = DEVICES.iter().find(|d| d.name == name) else {
        return String::new();
    };
    if d.props.is_empty() {
        return format!("There are no options for {}.\n", d.name);
    }
    let mut lines: Vec<String> = d
        .props
        .iter()
        .map(|p| {
            let mut l = format!("  {}=<{}>", p.name, p.ty);
            let mut desc = p.desc.to_string();
            if let Some(def) = p.default {
                desc.push_str(&format!(" (default: {def})"));
            }
            if !desc.is_empty() {
                l = format!("{l:<24} - {desc}");
            }
            l
        })
        .collect();
    lines.sort();
    format!("{} options:\n{}\n", d.name, lines.join("\n"))
}

fn is_help(s: &str) -> bool {
    matches!(s, "help" | "?")
}

/// A QEMU `size` value: bytes, or a number with a K/M/G/T/P/E suffix (binary units).
fn parse_qemu_size(s: &str) -> Option<u64> {
    let (num, shift) = match s.char_indices().last()? {
        (i, c) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'B' => 0,
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                'P' => 50,
                'E' => 60,
                _ => return None,
            };
            (&s[..i], shift)
        }
        _ => (s, 0),
    };
    let n = match num.strip_prefix("0x").or_else(|| num.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16).ok()?,
        None => num.parse().ok()?,
    };
    n.checked_mul(1u64.checked_shl(shift)?)
        .filter(|v| shift == 0 || v >> shift == n)
}

/// A PCI `addr` value: `SLOT` or `SLOT.FN`, hexadecimal.
fn parse_pci_addr(s: &str) -> Option<(u8, u8)> {
    let (slot, func) = match s.split_once('.') {
        Some((d, f)) => (d, f),
        None => (s, "0"),
    };
    let slot = u8::from_str_radix(slot, 16).ok().filter(|&d| d < 32)?;
    let func = u8::from_str_radix(func, 16).ok().filter(|&f| f < 8)?;
    Some((slot, func))
}

/// Parses one `-device` argument into `cfg` (isa-debugcons go to `debugcons`, to be
/// resolved once every `-chardev` is known). Errors read like
/// QEMU's, prefixed with the argument.
pub fn parse(
    arg: &str,
    cfg: &mut MachineConfig,
    debugcons: &mut Vec<Debugcon>,
) -> Result<DeviceArg> {
    let err = |msg: String| Error::usage(format!("-device {arg}: {msg}"));
    let mut driver = None;
    let mut props = Vec::new();
    let mut help = false;
    for (i, part) in arg.split(',').enumerate() {
        match part.split_once('=') {
            Some(("driver", v)) => driver = Some(v),
            Some(("help", v)) => help |= v != "off",
            Some((k, v)) => props.push((k, v)),
            None if i == 0 => driver = Some(part),
            None if is_help(part) => help = true,
            None => props.push((part, "on")),
        }
    }
    let Some(name) = driver.filter(|n| !n.is_empty()) else {
        return Err(err("Parameter 'driver' is missing".into()));
    };
    if is_help(name) {
        return Ok(DeviceArg::List);
    }
    let Some(info) = DEVICES.iter().find(|d| d.name == name) else {
        return Err(err(if help {
            format!("Device '{name}' not found")
        } else {
            format!("'{name}' is not a valid device model name")
        }));
    };
    if help {
        return Ok(DeviceArg::Props(info.name));
    }
    // `id` is every device's; the rest must be the model's.
    let props: Vec<(&str, &str)> = props.into_iter().filter(|(k, _)| *k != "id").collect();
    if let Some((k, _)) = props
        .iter()
        .find(|(k, _)| !info.props.iter().any(|p| p.name == *k))
    {
        return Err(err(format!("Property '{name}.{k}' not found")));
    }
    let int = |k: &str, v: &str| -> Result<u16> {
        let n = parse_num(k, v).map_err(|_| err(format!("Parameter '{k}' expects integer")))?;
        u16::try_from(n).map_err(|_| err(format!("{k}={v} is outside the 64 KiB port space")))
    };
    match info.name {
        "isa-debug-exit" => {
            let mut d = DebugExitConfig {
                iobase: vireo_devices::debug_exit::DEFAULT_IOBASE,
                iosize: vireo_devices::debug_exit::DEFAULT_IOSIZE,
            };
            for (k, v) in props {
                match k {
                    "iobase" => d.iobase = int(k, v)?,
                    _ => d.iosize = int(k, v)?,
                }
            }
            if d.iosize == 0 || u32::from(d.iobase) + u32::from(d.iosize) > 0x1_0000 {
                return Err(err(
                    "iobase/iosize outside the 64 KiB port space".to_string()
                ));
            }
            cfg.debug_exits.push(d);
        }
        "isa-debugcon" => {
            let mut d = Debugcon {
                iobase: vireo_devices::debugcon::DEFAULT_PORT,
                chardev: None,
                readback: vireo_devices::debugcon::READBACK,
            };
            for (k, v) in props {
                match k {
                    "iobase" => d.iobase = int(k, v)?,
                    "readback" => {
                        d.readback = parse_num(k, v)
                            .ok()
                            .and_then(|n| u32::try_from(n).ok())
                            .ok_or_else(|| err(format!("Parameter '{k}' expects integer")))?
                    }
                    _ => d.chardev = Some(v.to_string()),
                }
            }
            debugcons.push(d);
        }
        "pc-testdev" => {
            if cfg.pc_testdev {
                return Err(err("only one pc-testdev per machine".into()));
            }
            cfg.pc_testdev = true;
        }
        _ => {
            let mut d = PciTestdevConfig::default();
            for (k, v) in props {
                let bad = || err(format!("Property '{name}.{k}' doesn't take value '{v}'"));
                match k {
                    "addr" => d.addr = Some(parse_pci_addr(v).ok_or_else(bad)?),
                    _ => {
                        d.membar = parse_qemu_size(v).ok_or_else(bad)?;
                        if d.membar != 0 && (!d.membar.is_power_of_two() || d.membar < 16) {
                            return Err(err(format!(
                                "membar={v}: not a power of two of at least 16 bytes"
                            )));
                        }
                    }
                }
            }
            cfg.pci_testdevs.push(d);
        }
    }
    Ok(DeviceArg::Added)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_one(arg: &str) -> Result<(DeviceArg, MachineConfig)> {
        let mut cfg = MachineConfig::default();
        let mut dc = Vec::new();
        let r = parse(arg, &mut cfg, &mut dc)?;
        Ok((r, cfg))
    }

    /// `qemu-system-x86_64 -device help` (QEMU 7.2), the lines of the devices vireo
    /// has, in QEMU's order.
    #[test]
    fn list_is_qemus() {
        assert_eq!(
            list(),
            "Misc devices:\n\
             name \"isa-debug-exit\", bus ISA\n\
             name \"isa-debugcon\", bus ISA\n\
             name \"pc-testdev\", bus ISA\n\
             name \"pci-testdev\", bus PCI, desc \"PCI Test Device\"\n"
        );
    }

    /// `qemu-system-x86_64 -device NAME,help` (QEMU 7.2) for the properties vireo
    /// implements.
    #[test]
    fn props_are_qemus() {
        assert_eq!(
            props("pc-testdev"),
            "There are no options for pc-testdev.\n"
        );
        assert_eq!(
            props("isa-debug-exit"),
            "isa-debug-exit options:\n  \
             iobase=<uint32>        -  (default: 1281)\n  \
             iosize=<uint32>        -  (default: 2)\n"
        );
        assert_eq!(
            props("isa-debugcon"),
            "isa-debugcon options:\n  \
             chardev=<str>          - ID of a chardev to use as a backend\n  \
             iobase=<uint32>        -  (default: 233)\n  \
             readback=<uint32>      -  (default: 233)\n"
        );
        assert_eq!(
            props("pci-testdev"),
            "pci-testdev options:\n  \
             addr=<int32>           - Slot and optional function number, example: 06.0 or 06 (default: -1)\n  \
             membar=<size>          -  (default: 0)\n"
        );
    }

    #[test]
    fn help_forms() {
        for a in ["help", "?", "help,foo=1"] {
            assert_eq!(parse_one(a).unwrap().0, DeviceArg::List, "{a}");
        }
        for a in [
            "pc-testdev,help",
            "pc-testdev,?",
            "pc-testdev,help=on",
            "driver=pc-testdev,help",
        ] {
            assert_eq!(
                parse_one(a).unwrap().0,
                DeviceArg::Props("pc-testdev"),
                "{a}"
            );
        }
    }

    #[test]
    fn errors_read_like_qemus() {
        let e = |a: &str| parse_one(a).unwrap_err().to_string();
        assert_eq!(
            e("foo"),
            "-device foo: 'foo' is not a valid device model name"
        );
        assert_eq!(e("foo,help"), "-device foo,help: Device 'foo' not found");
        assert_eq!(
            e("pc-testdev,foo=1"),
            "-device pc-testdev,foo=1: Property 'pc-testdev.foo' not found"
        );
        assert_eq!(
            e("isa-debug-exit,iobase=zz"),
            "-device isa-debug-exit,iobase=zz: Parameter 'iobase' expects integer"
        );
        assert_eq!(
            e("pci-testdev,addr=20.0"),
            "-device pci-testdev,addr=20.0: Property 'pci-testdev.addr' doesn't take value '20.0'"
        );
        assert!(e("pci-testdev,membar=3").contains("power of two"));
        assert!(e(",iobase=1").contains("'driver' is missing"));
    }

    #[test]
    fn test_devices() {
        let (_, c) = parse_one("pc-testdev").unwrap();
        assert!(c.pc_testdev);
        let (_, c) = parse_one("driver=pci-testdev,id=t0").unwrap();
        assert_eq!(c.pci_testdevs, [PciTestdevConfig::default()]);
        let (_, c) = parse_one("pci-testdev,addr=0a.0,membar=2G").unwrap();
        assert_eq!(
            c.pci_testdevs,
            [PciTestdevConfig {
                addr: Some((10, 0)),
                membar: 2 << 30
            }]
        );
        let (_, c) = parse_one("pci-testdev,addr=6,membar=4096").unwrap();
        assert_eq!(c.pci_testdevs[0].addr, Some((6, 0)));
        assert_eq!(c.pci_testdevs[0].membar, 4096);
        let mut cfg = MachineConfig::default();
        let mut dc = Vec::new();
        parse(
            "isa-debugcon,iobase=0x402,readback=0x1234",
            &mut cfg,
            &mut dc,
        )
        .unwrap();
        assert_eq!(
            dc,
            [Debugcon {
                iobase: 0x402,
                chardev: None,
                readback: 0x1234
            }]
        );
        assert_eq!(parse_qemu_size("1M"), Some(1 << 20));
        assert_eq!(parse_qemu_size("16E"), None);
        assert_eq!(parse_qemu_size("x"), None);
    }
}
