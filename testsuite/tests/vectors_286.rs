//! The SingleStepTests 80286 real-mode vectors (`shared/vectors/80286-real`, see its
//! README) run through the TCG engine: one `TcgVcpu` on 16 MiB of flat RAM, each test
//! loaded (14 registers, its RAM bytes), run until HLT, and compared.
//!
//! vireo models a modern x86, not a 286. Where the two differ, the test compares against
//! what a modern CPU does, or leaves the test out with the reason; every such case is
//! in [`Adjust`] and [`expectation`]:
//!
//! | 286 behaviour in the data | modern x86 | here |
//! | --- | --- | --- |
//! | FLAGS bits 12-15 always 0 in real mode: POPF and IRET cannot set IOPL/NT | POPF and IRET load IOPL and NT (bit 15 stays 0) | initial flags loaded as `flags & 0x0FFF` (README step 1); for `9D` (POPF) and `CF` (IRET) the expected flags get the popped word's bits 12-14 |
//! | instructions over 10 bytes raise int 13 | the limit is 15 bytes | the over-long tests that take int 13 are excluded (a modern CPU runs them; their result is not in the data) |
//! | LOCK accepted on any instruction | #UD unless a lockable read-modify-write with a memory destination | when iced-x86 refuses the LOCK (valid without it), the expectation is #UD: FLAGS/CS/IP pushed, CS:IP from IVT entry 6, which the test plants pointing to a HLT |
//! | a word at offset 0xFFFF: int 13 for every segment, SS included | #SS (12) for SS-relative accesses, #GP (13) otherwise | for tests taking int 13 the IVT entry 12 is planted equal to entry 13: both vectors land on the handler in the data, with the same frame |
//! | `8C`/`8E` with reg 4/5 (FS/GS): #UD | valid MOV from/to FS/GS | the expectation is the MOV (FS/GS hold known selectors); a memory operand at 0xFFFF (a limit fault on a modern CPU) is excluded |
//! | `D8` (ESC, no coprocessor): no-op, int 13 on a segment overrun | runs the x87 operation | every `D8` operation only writes x87 state, so the 14 registers and RAM match; CR0.EM is clear so no #NM. A 4-byte operand at 0xFFFD/0xFFFE (a fault on a modern CPU only) is excluded (none in this subsample) |
//! | a string instruction (`MOVS CMPS STOS LODS SCAS INS OUTS`) faulting on a word at offset 0xFFFF still advances SI/DI (and some decrement CX) | faults are precise: SI, DI and CX as before the faulting iteration | without REP the expectation keeps the initial SI and DI (not in the README's list; found by this test); with REP the completed iterations are not in the data: excluded |
//! | undefined flags: 286 values | other values | compared under the per-form masks of `metadata.json` (README step 5), also on FLAGS pushed by an exception |
//!
//! Run it with `cargo test --release -p vireo-testsuite --test vectors_286 -- --nocapture`
//! for the per-form table.
//! `VECTORS_FORMS=00,F6.6` limits the run to some forms, `VECTORS_VERBOSE=1` prints
//! every failure.

use flate2::read::GzDecoder;
use iced_x86::{Decoder, DecoderOptions};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use vireo_core::cpu::{reg, sreg, Segment};
use vireo_core::{A20Gate, Bus, CpuState, GuestMemory, MachineControl, SystemBus, Vcpu, VcpuExit};
use vireo_tcg::{Backend, TcgVcpu};

/// The pass rate the non-excluded tests must reach.
const REQUIRED_PASS_RATE: f64 = 99.5;
/// Selectors FS and GS hold (a 286 has neither; `8C`/`8E` reg 4/5 read/write them).
const FS_SEL: u16 = 0x1234;
const GS_SEL: u16 = 0x5678;
/// Instructions one test may run (REP tests have CX < 128).
const INSN_LIMIT: u64 = 2000;

#[derive(Deserialize, Clone, Copy, Default)]
struct Regs {
    ax: Option<u16>,
    bx: Option<u16>,
    cx: Option<u16>,
    dx: Option<u16>,
    cs: Option<u16>,
    ss: Option<u16>,
    ds: Option<u16>,
    es: Option<u16>,
    sp: Option<u16>,
    bp: Option<u16>,
    si: Option<u16>,
    di: Option<u16>,
    ip: Option<u16>,
    flags: Option<u16>,
}

#[derive(Deserialize)]
struct State {
    regs: Regs,
    ram: Vec<(u32, u8)>,
}

#[derive(Deserialize)]
struct Exception {
    number: u8,
}

#[derive(Deserialize)]
struct Test {
    name: String,
    bytes: Vec<u8>,
    initial: State,
    #[serde(rename = "final")]
    fin: State,
    exception: Option<Exception>,
}

/// The 14 registers in a fixed order.
const REG_NAMES: [&str; 14] = [
    "ax", "bx", "cx", "dx", "cs", "ss", "ds", "es", "sp", "bp", "si", "di", "ip", "flags",
];
const AX: usize = 0;
const CS: usize = 4;
const SS: usize = 5;
const DS: usize = 6;
const ES: usize = 7;
const SP: usize = 8;
const BP: usize = 9;
const SI: usize = 10;
const DI: usize = 11;
const IP: usize = 12;
const FLAGS: usize = 13;

impl Regs {
    fn to_array(self) -> [Option<u16>; 14] {
        [
            self.ax, self.bx, self.cx, self.dx, self.cs, self.ss, self.ds, self.es, self.sp,
            self.bp, self.si, self.di, self.ip, self.flags,
        ]
    }
}

/// What a test must end with.
struct Expected {
    regs: [u16; 14],
    /// Every byte whose final value is known (initial bytes, overridden by the final).
    ram: BTreeMap<u32, u8>,
    /// Mask for FLAGS and for the FLAGS word an exception pushed.
    flags_mask: u16,
    /// Where the 286 pushed FLAGS (compared under the mask).
    pushed_flags: Option<u32>,
    /// Why the expectation is not the 286's result, when it is not.
    modern: Option<&'static str>,
}

/// How a test is taken.
enum Adjust {
    /// Compare with the 286 result (possibly adjusted for a modern CPU).
    Compare(Expected),
    /// Left out, with the reason.
    Exclude(&'static str),
}

fn phys(seg: u16, off: u16) -> u32 {
    (u32::from(seg) << 4) + u32::from(off)
}

/// Prefixes, opcode index, and the instruction's length without the final HLT.
struct Decoded {
    seg_override: Option<usize>,
    lock: bool,
    op_index: usize,
}

fn decode_prefixes(bytes: &[u8]) -> Decoded {
    let mut d = Decoded {
        seg_override: None,
        lock: false,
        op_index: 0,
    };
    while let Some(&b) = bytes.get(d.op_index) {
        match b {
            0x26 => d.seg_override = Some(ES),
            0x2E => d.seg_override = Some(CS),
            0x36 => d.seg_override = Some(SS),
            0x3E => d.seg_override = Some(DS),
            0xF0 => d.lock = true,
            0xF2 | 0xF3 => {}
            _ => break,
        }
        d.op_index += 1;
    }
    d
}

/// The 16-bit effective address and segment (register index) of a ModRM memory
/// operand, or `None` for a register operand.
fn effective_address(bytes: &[u8], d: &Decoded, regs: &[u16; 14]) -> Option<(usize, u16)> {
    let modrm = *bytes.get(d.op_index + 1)?;
    let (md, rm) = (modrm >> 6, modrm & 7);
    if md == 3 {
        return None;
    }
    let disp_at = d.op_index + 2;
    let byte = |i: usize| bytes.get(i).copied().unwrap_or(0);
    let w = |i: usize| u16::from_le_bytes([byte(i), byte(i + 1)]);
    let (base, ss_default) = match rm {
        0 => (regs[1].wrapping_add(regs[SI]), false),
        1 => (regs[1].wrapping_add(regs[DI]), false),
        2 => (regs[BP].wrapping_add(regs[SI]), true),
        3 => (regs[BP].wrapping_add(regs[DI]), true),
        4 => (regs[SI], false),
        5 => (regs[DI], false),
        6 if md == 0 => (w(disp_at), false),
        6 => (regs[BP], true),
        _ => (regs[1], false),
    };
    let disp = match md {
        1 => byte(disp_at) as i8 as u16,
        2 => w(disp_at),
        _ => 0,
    };
    let seg = d.seg_override.unwrap_or(if ss_default { SS } else { DS });
    Some((seg, base.wrapping_add(disp)))
}

/// Whether a modern CPU raises #UD for this instruction's LOCK prefix: iced-x86 refuses
/// the encoding, and accepts it once invalid-LOCK checks are off.
fn lock_is_ud(insn: &[u8]) -> bool {
    let strict = Decoder::new(16, insn, DecoderOptions::NONE).decode();
    if !strict.is_invalid() {
        return false;
    }
    let lax = Decoder::new(16, insn, DecoderOptions::NO_INVALID_CHECK).decode();
    !lax.is_invalid() && lax.has_lock_prefix()
}

/// The flags mask of `form` for this test (metadata `flags-mask`, by reg when the
/// opcode's entry is split by ModRM reg).
fn flags_mask(meta: &serde_json::Value, form: &str, bytes: &[u8], d: &Decoded) -> u16 {
    let (op, reg_field) = match form.split_once('.') {
        Some((op, r)) => (op, Some(r.to_string())),
        None => (form, None),
    };
    let entry = &meta["opcodes"][op];
    let entry = if entry.get("reg").is_some() {
        let r = reg_field.unwrap_or_else(|| {
            let modrm = bytes.get(d.op_index + 1).copied().unwrap_or(0);
            ((modrm >> 3) & 7).to_string()
        });
        &entry["reg"][r.as_str()]
    } else {
        entry
    };
    entry["flags-mask"]
        .as_u64()
        .and_then(|m| u16::try_from(m).ok())
        .unwrap_or(0xFFFF)
}

/// Places for the planted #UD handler (CS:IP); the first that overlaps nothing of the
/// test is used.
const HANDLER_CANDIDATES: [(u16, u16); 4] =
    [(0x0050, 0), (0x0070, 0x10), (0x7000, 0), (0xE000, 0x20)];

/// Decides how `t` is compared, planting IVT entries and handlers in `plant`.
fn expectation(
    t: &Test,
    form: &str,
    meta: &serde_json::Value,
    plant: &mut Vec<(u32, u8)>,
) -> Adjust {
    let init = t.initial.regs.to_array();
    let mut regs = [0u16; 14];
    for (i, r) in init.iter().enumerate() {
        regs[i] = r.unwrap_or(0);
    }
    regs[FLAGS] &= 0x0FFF;
    let insn = &t.bytes[..t.bytes.len().saturating_sub(1)];
    let d = decode_prefixes(insn);
    let mut ram: BTreeMap<u32, u8> = t.initial.ram.iter().copied().collect();
    let touched: HashSet<u32> = t
        .initial
        .ram
        .iter()
        .chain(t.fin.ram.iter())
        .map(|(a, _)| *a)
        .collect();
    let exception = t.exception.as_ref().map(|e| e.number);

    if insn.len() > 10 && exception == Some(13) {
        return Adjust::Exclude("over 10 bytes: int 13 on a 286, runs on a modern CPU");
    }
    let modrm_reg = insn.get(d.op_index + 1).map(|m| (m >> 3) & 7);
    let opcode = insn.get(d.op_index).copied().unwrap_or(0);

    // LOCK on a non-lockable instruction: #UD on a modern CPU.
    if d.lock && lock_is_ud(insn) {
        let sp = regs[SP];
        if sp % 2 == 1 && sp < 6 {
            return Adjust::Exclude("LOCK #UD frame would wrap the stack segment");
        }
        let frame: Vec<u32> = (1..=6)
            .map(|k| phys(regs[SS], sp.wrapping_sub(k)))
            .collect();
        let Some((hcs, hip)) = HANDLER_CANDIDATES.iter().copied().find(|(cs, ip)| {
            let h = phys(*cs, *ip);
            !touched.contains(&h) && !frame.contains(&h)
        }) else {
            return Adjust::Exclude("no free place for the planted #UD handler");
        };
        if (0x18..0x1C).any(|a| touched.contains(&a) || frame.contains(&a)) {
            return Adjust::Exclude("the test's data covers IVT entry 6");
        }
        let [ip_lo, ip_hi] = hip.to_le_bytes();
        let [cs_lo, cs_hi] = hcs.to_le_bytes();
        plant.extend([(0x18, ip_lo), (0x19, ip_hi), (0x1A, cs_lo), (0x1B, cs_hi)]);
        plant.push((phys(hcs, hip), 0xF4));
        for (a, v) in plant.iter() {
            ram.insert(*a, *v);
        }
        let words = [regs[FLAGS] | 2, regs[CS], regs[IP]];
        for (k, w) in words.iter().enumerate() {
            let off = sp.wrapping_sub(2 * (k as u16 + 1));
            let [lo, hi] = w.to_le_bytes();
            ram.insert(phys(regs[SS], off), lo);
            ram.insert(phys(regs[SS], off.wrapping_add(1)), hi);
        }
        let mut want = regs;
        want[FLAGS] |= 2;
        want[SP] = sp.wrapping_sub(6);
        want[CS] = hcs;
        want[IP] = hip.wrapping_add(1);
        return Adjust::Compare(Expected {
            regs: want,
            ram,
            flags_mask: 0xFFFF,
            pushed_flags: None,
            modern: Some("LOCK on a non-lockable instruction: #UD"),
        });
    }

    // MOV to/from FS and GS: valid on a modern CPU.
    if matches!(opcode, 0x8C | 0x8E) && matches!(modrm_reg, Some(4 | 5)) {
        let sel = if modrm_reg == Some(4) { FS_SEL } else { GS_SEL };
        let mut want = regs;
        want[IP] = regs[IP].wrapping_add(t.bytes.len() as u16);
        match effective_address(insn, &d, &regs) {
            Some((_, 0xFFFF)) => {
                return Adjust::Exclude("MOV FS/GS with a word at offset 0xFFFF: a limit fault on a modern CPU, no handler in the data")
            }
            Some((seg, ea)) => {
                if opcode == 0x8C {
                    let [lo, hi] = sel.to_le_bytes();
                    ram.insert(phys(regs[seg], ea), lo);
                    ram.insert(phys(regs[seg], ea.wrapping_add(1)), hi);
                }
            }
            None => {
                if opcode == 0x8C {
                    let rm = usize::from(insn[d.op_index + 1] & 7);
                    // ModRM register numbering: AX CX DX BX SP BP SI DI.
                    let idx = [AX, 2, 3, 1, SP, BP, SI, DI][rm];
                    want[idx] = sel;
                }
            }
        }
        return Adjust::Compare(Expected {
            regs: want,
            ram,
            flags_mask: 0xFFFF,
            pushed_flags: None,
            modern: Some("MOV from/to FS or GS instead of #UD"),
        });
    }

    if opcode == 0xD8 {
        if let Some((_, ea)) = effective_address(insn, &d, &regs) {
            if (0xFFFD..=0xFFFE).contains(&ea) {
                return Adjust::Exclude(
                    "x87 dword operand across offset 0xFFFF: a fault on a modern CPU only",
                );
            }
        }
    }

    // The 286 result.
    let mut want = regs;
    for (i, r) in t.fin.regs.to_array().iter().enumerate() {
        if let Some(v) = r {
            want[i] = *v;
        }
    }
    for (a, v) in &t.fin.ram {
        ram.insert(*a, *v);
    }
    let mask = flags_mask(meta, form, insn, &d);
    if exception.is_none() && matches!(form, "9D" | "CF") {
        // POPF / IRET load IOPL and NT on a modern CPU.
        let off = if form == "9D" { 0 } else { 4 };
        let at = |k: u16| phys(regs[SS], regs[SP].wrapping_add(off + k));
        let lo = t.initial.ram.iter().find(|(a, _)| *a == at(0)).map(|x| x.1);
        let hi = t.initial.ram.iter().find(|(a, _)| *a == at(1)).map(|x| x.1);
        if let (Some(lo), Some(hi)) = (lo, hi) {
            want[FLAGS] |= u16::from_le_bytes([lo, hi]) & 0x7000;
        }
    }
    let mut modern = None;
    if exception.is_none() && matches!(form, "9D" | "CF") {
        modern = Some("POPF/IRET load IOPL and NT");
    }
    let string_op = matches!(opcode, 0xA4..=0xA7 | 0xAA..=0xAF | 0x6C..=0x6F);
    if string_op && exception == Some(13) {
        if insn[..d.op_index].iter().any(|p| matches!(p, 0xF2 | 0xF3)) {
            return Adjust::Exclude(
                "REP string op faulting at 0xFFFF: the 286 updates SI/DI/CX imprecisely",
            );
        }
        want[SI] = regs[SI];
        want[DI] = regs[DI];
        modern = Some("precise string-op fault: SI/DI unchanged");
    }
    let mut pushed_flags = None;
    if let Some(n) = exception {
        pushed_flags = Some(phys(want[SS], want[SP].wrapping_add(4)));
        if n == 13 {
            // #SS on a modern CPU for SS-relative accesses: same handler, same frame.
            let entry: Vec<Option<u8>> = (0x34..0x38)
                .map(|a| t.initial.ram.iter().find(|(x, _)| *x == a).map(|x| x.1))
                .collect();
            if (0x30..0x34).all(|a| !touched.contains(&a)) {
                if let [Some(a), Some(b), Some(c), Some(e)] = entry[..] {
                    plant.extend([(0x30, a), (0x31, b), (0x32, c), (0x33, e)]);
                    for (x, v) in plant.iter() {
                        ram.insert(*x, *v);
                    }
                }
            }
        }
    }
    Adjust::Compare(Expected {
        regs: want,
        ram,
        flags_mask: mask,
        pushed_flags,
        modern,
    })
}

/// The state a test starts from: real mode, its 14 registers, FS/GS with known
/// selectors, an x87 present (CR0.ET, EM clear).
fn initial_state(t: &Test) -> CpuState {
    let r = t.initial.regs;
    let g = |v: Option<u16>| u64::from(v.unwrap_or(0));
    let mut s = CpuState::reset();
    s.gpr[reg::RAX] = g(r.ax);
    s.gpr[reg::RBX] = g(r.bx);
    s.gpr[reg::RCX] = g(r.cx);
    s.gpr[reg::RDX] = g(r.dx);
    s.gpr[reg::RSP] = g(r.sp);
    s.gpr[reg::RBP] = g(r.bp);
    s.gpr[reg::RSI] = g(r.si);
    s.gpr[reg::RDI] = g(r.di);
    s.rip = g(r.ip);
    s.rflags = (g(r.flags) & 0x0FFF) | 2;
    let sel = [
        (sreg::ES, r.es),
        (sreg::CS, r.cs),
        (sreg::SS, r.ss),
        (sreg::DS, r.ds),
        (sreg::FS, Some(FS_SEL)),
        (sreg::GS, Some(GS_SEL)),
    ];
    for (i, v) in sel {
        s.seg[i] = Segment::real_mode(v.unwrap_or(0), i == sreg::CS);
    }
    s.idtr.base = 0;
    s.idtr.limit = 0x3FF;
    s
}

/// The engine's 14 registers.
fn actual_regs(s: &CpuState) -> [u64; 14] {
    let seg = |i: usize| u64::from(s.seg[i].selector);
    [
        s.gpr[reg::RAX],
        s.gpr[reg::RBX],
        s.gpr[reg::RCX],
        s.gpr[reg::RDX],
        seg(sreg::CS),
        seg(sreg::SS),
        seg(sreg::DS),
        seg(sreg::ES),
        s.gpr[reg::RSP],
        s.gpr[reg::RBP],
        s.gpr[reg::RSI],
        s.gpr[reg::RDI],
        s.rip,
        s.rflags,
    ]
}

/// Runs one test on `vcpu`; `Err` describes the first mismatch.
fn run_test(
    vcpu: &mut TcgVcpu,
    mem: &GuestMemory,
    t: &Test,
    want: &Expected,
) -> Result<(), String> {
    vcpu.set_state(&initial_state(t))
        .map_err(|e| e.to_string())?;
    vcpu.set_insn_limit(Some(vcpu.insns() + INSN_LIMIT));
    let exit = vcpu.run().map_err(|e| e.to_string())?;
    if exit != VcpuExit::Halted {
        return Err(format!("exit {exit:?}"));
    }
    let s = vcpu.state().map_err(|e| e.to_string())?;
    let got = actual_regs(&s);
    for (i, name) in REG_NAMES.iter().enumerate() {
        let (g, w) = if i == FLAGS {
            let m = u64::from(want.flags_mask);
            (got[i] & 0xFFFF & m, u64::from(want.regs[i]) & m)
        } else {
            (got[i], u64::from(want.regs[i]))
        };
        if g != w {
            return Err(format!("{name} = {:#x}, want {w:#x}", got[i]));
        }
    }
    for (&a, &v) in &want.ram {
        let m = match want.pushed_flags {
            Some(f) if a == f => want.flags_mask as u8,
            Some(f) if a == f + 1 => (want.flags_mask >> 8) as u8,
            _ => 0xFF,
        };
        let g = mem.read_u8(u64::from(a)).map_err(|e| e.to_string())?;
        if g & m != v & m {
            return Err(format!("ram[{a:#x}] = {g:#04x}, want {v:#04x}"));
        }
    }
    Ok(())
}

#[derive(Default)]
struct FormResult {
    total: usize,
    failed: usize,
    excluded: usize,
    first_failure: Option<(String, String)>,
}

/// `shared/vectors/80286-real` beside the repository, or `$VIREO_VECTORS_286`.
fn vectors_dir() -> PathBuf {
    match std::env::var_os("VIREO_VECTORS_286") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/vectors/80286-real"),
    }
}

#[test]
fn vectors_286_real_mode() {
    run_vectors(Backend::Interp);
}

/// The same vectors with every block compiled by the JIT.
#[test]
fn vectors_286_real_mode_jit() {
    run_vectors(Backend::Jit);
}

fn run_vectors(backend: Backend) {
    let dir = vectors_dir();
    let Ok(meta_text) = std::fs::read_to_string(dir.join("metadata.json")) else {
        println!(
            "SKIP vectors_286_real_mode: no vectors at {}",
            dir.display()
        );
        return;
    };
    let meta: serde_json::Value = serde_json::from_str(&meta_text).expect("metadata.json");
    let only: Option<Vec<String>> = std::env::var("VECTORS_FORMS")
        .ok()
        .map(|v| v.split(',').map(str::to_string).collect());
    let verbose = std::env::var_os("VECTORS_VERBOSE").is_some();

    let mem = Arc::new(GuestMemory::new_flat(16 << 20).expect("16 MiB of RAM"));
    let bus = SystemBus {
        mem: mem.clone(),
        pio: Arc::new(Bus::new("pio")),
        mmio: Arc::new(Bus::new("mmio")),
        a20: A20Gate::new(),
    };
    let mut vcpu = TcgVcpu::new(bus, MachineControl::new());
    vcpu.set_backend(backend);
    // Each vector runs once: compiled at once (no interpreted warm-up), so the JIT
    // runs them.
    vcpu.set_warmup(0);

    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("vectors directory")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(".jsonl.gz"))
        .collect();
    files.sort();
    let started = std::time::Instant::now();
    let mut results: BTreeMap<String, FormResult> = BTreeMap::new();
    let mut exclusions: HashMap<&'static str, usize> = HashMap::new();
    let mut adjusted: HashMap<&'static str, usize> = HashMap::new();
    // Bytes written by the previous test, cleared before the next.
    let mut dirty: Vec<u32> = Vec::new();
    let mut plant = Vec::new();
    for path in files {
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        let form = name.trim_end_matches(".jsonl.gz").to_string();
        if only.as_ref().is_some_and(|o| !o.contains(&form)) {
            continue;
        }
        let file = std::fs::File::open(&path).expect("vector file");
        let res = results.entry(form.clone()).or_default();
        for line in std::io::BufReader::new(GzDecoder::new(file)).lines() {
            let line = line.expect("gzip stream");
            let t: Test = serde_json::from_str(&line).expect("test line");
            for a in dirty.drain(..) {
                mem.write_u8(u64::from(a), 0).expect("RAM");
            }
            plant.clear();
            let adjust = expectation(&t, &form, &meta, &mut plant);
            res.total += 1;
            let want = match adjust {
                Adjust::Exclude(why) => {
                    res.excluded += 1;
                    *exclusions.entry(why).or_default() += 1;
                    continue;
                }
                Adjust::Compare(w) => w,
            };
            if let Some(why) = want.modern {
                *adjusted.entry(why).or_default() += 1;
            }
            for &(a, v) in t.initial.ram.iter().chain(plant.iter()) {
                mem.write_u8(u64::from(a), v).expect("RAM");
            }
            dirty.extend(want.ram.keys());
            // Exception frames and stray writes land near the stack; clear what the
            // test could have pushed.
            let ss = t.initial.regs.ss.unwrap_or(0);
            let sp = t.initial.regs.sp.unwrap_or(0);
            dirty.extend((1..=8).map(|k| phys(ss, sp.wrapping_sub(k))));
            if let Err(e) = run_test(&mut vcpu, &mem, &t, &want) {
                res.failed += 1;
                if verbose {
                    println!("FAIL {form} {}: {e}", t.name);
                }
                if res.first_failure.is_none() {
                    res.first_failure = Some((t.name.clone(), e));
                }
            }
        }
    }

    let (mut total, mut failed, mut excluded) = (0, 0, 0);
    let mut rows: Vec<(&String, &FormResult)> =
        results.iter().filter(|(_, r)| r.failed > 0).collect();
    rows.sort_by(|a, b| b.1.failed.cmp(&a.1.failed).then(a.0.cmp(b.0)));
    println!("{:<6} {:>9}  first failing test", "form", "failed");
    for (form, r) in &rows {
        let (n, e) = r.first_failure.clone().unwrap_or_default();
        println!(
            "{form:<6} {:>4}/{:<4}  {n}: {e}",
            r.failed,
            r.total - r.excluded
        );
    }
    for r in results.values() {
        total += r.total;
        failed += r.failed;
        excluded += r.excluded;
    }
    let mut ex: Vec<_> = exclusions.into_iter().collect();
    ex.sort();
    for (why, n) in ex {
        println!("excluded {n:>5}: {why}");
    }
    let mut adj: Vec<_> = adjusted.into_iter().collect();
    adj.sort();
    for (why, n) in adj {
        println!("modern expectation {n:>5}: {why}");
    }
    let compared = total - excluded;
    let rate = if compared == 0 {
        0.0
    } else {
        100.0 * (compared - failed) as f64 / compared as f64
    };
    println!(
        "80286 real mode ({backend:?}): {} of {compared} passed ({rate:.2}%), {failed} failed in {} forms, {excluded} excluded, {:.1} s",
        compared - failed,
        rows.len(),
        started.elapsed().as_secs_f64()
    );
    let cs = vcpu.cache_stats();
    println!(
        "insns {}, blocks {}, translations {}, JIT-compiled {} (failed {})",
        vcpu.insns(),
        vcpu.stats.blocks,
        vcpu.stats.translations,
        cs.jit_compiled,
        cs.jit_failed
    );
    if backend == Backend::Jit {
        assert!(cs.jit_compiled > 0 && cs.jit_failed == 0, "{cs:?}");
    }
    assert!(
        rate >= REQUIRED_PASS_RATE,
        "pass rate {rate:.2}% below {REQUIRED_PASS_RATE}%"
    );
}
