//! A lockstep campaign: many random sequences, each run on two engines from the same
//! state and memory, compared; divergences that a known defect of the host's KVM
//! explains are classified apart (see [`KNOWN_KVM`] and `docs/LOCKSTEP.md`).

use super::env::{self, Mode, Privilege, Setup};
use super::fp;
use super::gen::{self, Features, Rng};
use super::runner::{compare, Engine, EngineKind, Ignore, Outcome, RunError};
use iced_x86::{Decoder, DecoderOptions, Instruction, Mnemonic, OpCodeTableKind, OpKind};
use std::collections::BTreeMap;

/// What to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// Sequence `i` uses seed `seed + i`: any sequence can be replayed alone.
    pub seed: u64,
    pub count: u64,
    pub mode: Mode,
    pub privilege: Privilege,
    /// Instructions per sequence.
    pub length: usize,
    pub features: Features,
}

/// A sequence on which the engines disagree.
#[derive(Debug, Clone)]
pub struct Divergence {
    pub seed: u64,
    /// The sequence, disassembled.
    pub listing: Vec<String>,
    /// The instructions left when every instruction whose replacement (see `replacement`) keeps
    /// the engines disagreeing is replaced (a reduction of the sequence, for triage),
    /// and the differences then.
    pub reduced: Reduced,
    /// When known KVM-side rules matched but did not explain everything: the
    /// differences left with their instructions replaced.
    pub after_known: Vec<String>,
    pub diffs: Vec<String>,
}

/// The result of a campaign.
#[derive(Debug, Default)]
pub struct Report {
    /// Sequences generated.
    pub sequences: u64,
    /// Sequences both engines ran and that were compared.
    pub compared: u64,
    /// Sequences skipped because an engine could not run them, by reason.
    pub engine_limits: BTreeMap<String, u64>,
    /// Sequences whose divergence a known defect of the host's KVM explains.
    pub known_kvm_sequences: u64,
    /// The same by reason (a sequence may count under several).
    pub known_kvm: BTreeMap<&'static str, u64>,
    /// Unexplained divergences, hangs and unexpected ends: failures.
    pub divergences: Vec<Divergence>,
}

/// A known way in which this host's KVM differs from the architecture, so that TCG
/// is right to disagree. `applies` selects the environments, `matches` the
/// instructions; `reason` says what KVM does and why it is wrong.
pub struct KnownKvm {
    pub applies: fn(Mode, Privilege) -> bool,
    pub matches: fn(&Instruction) -> bool,
    /// Which differences the rule may explain (all of them must satisfy it).
    pub diffs: fn(&str) -> bool,
    /// A difference the rule requires (one of them must satisfy it).
    pub needs: fn(&str) -> bool,
    pub reason: &'static str,
}

fn any_diff(_: &str) -> bool {
    true
}

/// A REPE/REPNE CMPS or SCAS.
fn rep_cmps_scas(i: &Instruction) -> bool {
    (i.has_repe_prefix() || i.has_repne_prefix())
        && matches!(
            i.mnemonic(),
            Mnemonic::Cmpsb
                | Mnemonic::Cmpsw
                | Mnemonic::Cmpsd
                | Mnemonic::Cmpsq
                | Mnemonic::Scasb
                | Mnemonic::Scasw
                | Mnemonic::Scasd
                | Mnemonic::Scasq
        )
}

/// Whether KVM runs code of this environment in its instruction emulator (on this
/// host, everything but 64-bit user code, which runs natively).
pub fn kvm_emulates(mode: Mode, privilege: Privilege) -> bool {
    !(mode == Mode::Long64 && privilege == Privilege::User)
}

fn emulated(mode: Mode, privilege: Privilege) -> bool {
    kvm_emulates(mode, privilege)
}

fn native(mode: Mode, privilege: Privilege) -> bool {
    !kvm_emulates(mode, privilege)
}

fn anywhere(_: Mode, _: Privilege) -> bool {
    true
}

/// Whether `i` accesses memory (an explicit operand or a string operand).
fn accesses_memory(i: &Instruction) -> bool {
    (0..i.op_count()).any(|n| {
        matches!(
            i.op_kind(n),
            OpKind::Memory
                | OpKind::MemorySegSI
                | OpKind::MemorySegESI
                | OpKind::MemorySegRSI
                | OpKind::MemorySegDI
                | OpKind::MemorySegEDI
                | OpKind::MemorySegRDI
                | OpKind::MemoryESDI
                | OpKind::MemoryESEDI
                | OpKind::MemoryESRDI
        )
    })
}

/// An MMX/SSE instruction (or FXSAVE/FXRSTOR, LDMXCSR...): not x87, not general purpose.
fn is_simd(i: &Instruction) -> bool {
    i.cpuid_features()
        .iter()
        .any(|x| fp::advertised(*x).is_some() && !fp::is_x87_feature(*x))
}

fn is_hint_nop(i: &Instruction) -> bool {
    let oc = i.op_code();
    oc.table() == OpCodeTableKind::T0F && matches!(oc.op_code(), 0x0d | 0x18..=0x1f)
}

/// The known KVM-side divergences. A divergence is classified under a rule only if
/// replacing the matching instructions by NOPs (`cmp eax, eax` first when they write flags) makes the engines agree (checked by
/// running the patched sequence on both), so a rule cannot hide a TCG bug in the
/// rest of the sequence.
pub const KNOWN_KVM: &[KnownKvm] = &[
    KnownKvm {
        applies: emulated,
        matches: |i| {
            matches!(
                i.mnemonic(),
                Mnemonic::Fxsave | Mnemonic::Fxsave64 | Mnemonic::Fxrstor | Mnemonic::Fxrstor64
            )
        },
        diffs: any_diff,
        needs: any_diff,
        reason: "KVM's emulator runs FXSAVE/FXRSTOR piecewise (a save crossing into a \
                 faulting page writes the first part, CR2 the page start) and without \
                 the XMM registers when CR4.OSFXSR is clear (implementation-specific; TCG \
                 saves them)",
    },
    KnownKvm {
        applies: |m, p| kvm_emulates(m, p) && p == Privilege::User,
        matches: |i| {
            i.cpuid_features()
                .iter()
                .any(|x| fp::advertised(*x).is_some())
        },
        diffs: any_diff,
        needs: any_diff,
        reason: "KVM's emulator injects #UD for the x87, MMX and SSE instructions it lacks \
                 (nearly all) in user-mode 32-bit code",
    },
    KnownKvm {
        applies: anywhere,
        matches: |i| {
            matches!(
                i.mnemonic(),
                Mnemonic::Ldmxcsr | Mnemonic::Fxrstor | Mnemonic::Fxrstor64
            )
        },
        diffs: any_diff,
        // TCG raised #GP (at the load) where the CPU went on: TCG's stop is a #GP, or
        // (both stopped in a #GP) at another place.
        needs: |d| d.starts_with("rip ") || (d.starts_with("exception") && d.ends_with("vs #13")),
        reason: "not a KVM defect: this host's CPU has AMD's misaligned-SSE mode, MXCSR \
                 bit 17 (MM; MXCSR_MASK 0x2ffff): loading it is valid there, #GP in TCG's \
                 model (MXCSR_MASK 0xffff)",
    },
    KnownKvm {
        applies: anywhere,
        matches: accesses_memory,
        diffs: |d| d.starts_with("exception #14 vs #13") || d.starts_with("error code"),
        needs: any_diff,
        reason: "an access crossing into non-canonical addresses (2^47) goes to KVM's \
                 instruction emulator (natively run code: PVM hands it the #GP), which \
                 checks only the first byte and reports a #PF (the CPU on the bare host \
                 raises #GP)",
    },
    KnownKvm {
        applies: native,
        matches: |i| {
            matches!(
                i.mnemonic(),
                Mnemonic::Fxsave | Mnemonic::Fxsave64 | Mnemonic::Fxrstor | Mnemonic::Fxrstor64
            ) && i.memory_displacement64() % 16 != 0
        },
        diffs: any_diff,
        needs: any_diff,
        reason: "natively run FXSAVE/FXRSTOR with a misaligned operand: the #GP goes to \
                 KVM's instruction emulator (PVM), which saves/restores without the \
                 16-byte alignment check",
    },
    KnownKvm {
        applies: native,
        matches: is_simd,
        diffs: |d| d.starts_with("exception #6 vs #13") || d.starts_with("rsp "),
        needs: any_diff,
        reason: "a #GP of natively run MMX/SSE code (misaligned 16-byte operand, reserved \
                 MXCSR bits) goes to KVM's instruction emulator (PVM), which lacks the \
                 instruction and injects #UD",
    },
    KnownKvm {
        applies: emulated,
        matches: |i| {
            matches!(
                i.mnemonic(),
                Mnemonic::Movbe
                    | Mnemonic::Popcnt
                    | Mnemonic::Adcx
                    | Mnemonic::Adox
                    | Mnemonic::Wait
            ) || is_hint_nop(i)
        },
        diffs: any_diff,
        needs: any_diff,
        reason: "KVM's emulator lacks MOVBE, POPCNT, ADCX/ADOX, FWAIT and most hint NOPs \
                 (0F 0D, 0F 18-1F): it injects #UD",
    },
    KnownKvm {
        applies: |m, p| kvm_emulates(m, p) && p == Privilege::User,
        matches: |i| {
            matches!(
                i.mnemonic(),
                Mnemonic::Lar | Mnemonic::Lsl | Mnemonic::Verr | Mnemonic::Verw
            )
        },
        diffs: any_diff,
        needs: any_diff,
        reason: "KVM's emulator injects #UD for LAR/LSL/VERR/VERW in user-mode 32-bit code",
    },
    KnownKvm {
        applies: |m, p| kvm_emulates(m, p) && p == Privilege::User,
        matches: |i| {
            matches!(
                i.mnemonic(),
                Mnemonic::Daa | Mnemonic::Das | Mnemonic::Aaa | Mnemonic::Aas
            )
        },
        diffs: any_diff,
        needs: any_diff,
        reason: "KVM's emulator injects #UD for DAA/DAS/AAA/AAS in user-mode 32-bit code",
    },
    KnownKvm {
        applies: emulated,
        matches: |i| matches!(i.mnemonic(), Mnemonic::Aam | Mnemonic::Aad),
        diffs: any_diff,
        needs: any_diff,
        reason: "KVM's emulator sets SF/ZF after AAM/AAD from the whole AX/EAX (an OR at \
                 the operand size); the architecture sets them from AL",
    },
    KnownKvm {
        applies: emulated,
        matches: |i| matches!(i.mnemonic(), Mnemonic::Lzcnt | Mnemonic::Tzcnt),
        diffs: any_diff,
        needs: any_diff,
        reason: "KVM's emulator runs LZCNT/TZCNT as BSR/BSF (ignores the F3 prefix)",
    },
    KnownKvm {
        applies: emulated,
        matches: |i| i.mnemonic() == Mnemonic::Cmpxchg && i.op0_kind() == OpKind::Register,
        diffs: any_diff,
        needs: any_diff,
        reason: "KVM's emulator writes a CMPXCHG register destination back when the \
                 comparison fails (zero-extending a 32-bit one); hardware leaves it alone",
    },
    KnownKvm {
        applies: anywhere,
        matches: |i| {
            matches!(
                i.mnemonic(),
                Mnemonic::Sldt | Mnemonic::Str | Mnemonic::Smsw
            ) && i.op0_kind() == OpKind::Memory
        },
        diffs: any_diff,
        needs: any_diff,
        reason: "KVM's emulator (also UMIP emulation of user-mode SLDT/STR/SMSW) stores \
                 the operand size (8 bytes with REX.W) to memory; hardware stores 16 bits",
    },
    KnownKvm {
        applies: native,
        matches: |i| {
            matches!(
                i.mnemonic(),
                Mnemonic::Lar | Mnemonic::Lsl | Mnemonic::Verr | Mnemonic::Verw
            )
        },
        diffs: any_diff,
        needs: any_diff,
        reason: "natively run LAR/LSL/VERR/VERW check the selector against the host's \
                 descriptor tables (PVM), not the guest's",
    },
    KnownKvm {
        applies: emulated,
        matches: |i| {
            matches!(
                i.mnemonic(),
                Mnemonic::Movsb
                    | Mnemonic::Movsw
                    | Mnemonic::Movsd
                    | Mnemonic::Movsq
                    | Mnemonic::Stosb
                    | Mnemonic::Stosw
                    | Mnemonic::Stosd
                    | Mnemonic::Stosq
            )
        },
        diffs: |d| d.starts_with("data[") || d.starts_with("stack["),
        needs: any_diff,
        reason: "KVM's emulator commits the first page of a page-split string store before \
                 the second page faults; the CPU writes nothing",
    },
    KnownKvm {
        applies: emulated,
        matches: rep_cmps_scas,
        diffs: |d| d.starts_with("rflags"),
        needs: any_diff,
        reason: "KVM's emulator: when an iteration of REP CMPS/SCAS faults, the frame holds \
                 RFLAGS from before the instruction, not from the last completed iteration",
    },
    KnownKvm {
        // Natively run 64-bit user code hands a fault inside a REP CMPS/SCAS to the
        // emulator on some hosts (seen on an Intel host: the same frame RFLAGS).
        applies: native,
        matches: rep_cmps_scas,
        diffs: |d| d.starts_with("rflags"),
        needs: any_diff,
        reason: "KVM (natively run code, seen on an Intel host): when an iteration of REP \
                 CMPS/SCAS faults, the frame holds RFLAGS from before the instruction",
    },
    KnownKvm {
        applies: anywhere,
        matches: |i| i.mnemonic() == Mnemonic::Dpps,
        diffs: |d| d.starts_with("xmm"),
        needs: any_diff,
        reason: "host CPU (seen on an Intel host): which NaN DPPS returns when several \
                 products are NaN differs between CPU generations; vireo adds in the SDM's \
                 order",
    },
    KnownKvm {
        applies: anywhere,
        matches: |i| matches!(i.mnemonic(), Mnemonic::Maskmovq | Mnemonic::Maskmovdqu),
        diffs: |d| {
            ["cr2", "error code", "exception", "rsp"]
                .iter()
                .any(|p| d.starts_with(p))
        },
        needs: any_diff,
        reason: "implementation-specific (SDM): the address (and access) a MASKMOVQ/MASKMOVDQU \
                 page fault reports (vireo checks every byte of the destination in order); on \
                 some hosts KVM's emulator, which gets the fault, does not know MASKMOVQ (#UD)",
    },
    KnownKvm {
        applies: native,
        matches: |i| {
            (i.has_rep_prefix() || i.has_repe_prefix() || i.has_repne_prefix())
                && (0..i.op_count())
                    .any(|n| matches!(i.op_kind(n), OpKind::MemorySegESI | OpKind::MemoryESEDI))
        },
        // What follows from different RCX/RSI/RDI (a later REP running much longer,
        // its fault) is this rule's too: the NOP check vouches that the instruction
        // alone makes the difference.
        diffs: any_diff,
        needs: any_diff,
        reason: "host CPU (seen on an Intel host): a REP string instruction with 32-bit \
                 addresses in 64-bit mode clears the upper halves of RCX, RSI and RDI also \
                 when it does no iteration or its first one faults; vireo's model (AMD, its \
                 CPUID vendor) leaves them",
    },
    KnownKvm {
        applies: anywhere,
        matches: |i| {
            matches!(
                i.mnemonic(),
                Mnemonic::Cmpsb | Mnemonic::Cmpsw | Mnemonic::Cmpsd | Mnemonic::Cmpsq
            )
        },
        diffs: |d| {
            d.starts_with("exception") || d.starts_with("error code") || d.starts_with("cr2")
        },
        needs: any_diff,
        reason: "unspecified, not a KVM defect: which fault CMPS reports when both operands \
                 fault (TCG reads ES:rDI first; KVM's emulator and the CPU under PVM differ)",
    },
];

fn short_reason(e: &RunError, engine: &str) -> String {
    match e {
        RunError::EngineLimit(m) | RunError::Other(m) => {
            // Group by mnemonic: "the host KVM cannot emulate `adcx eax,ecx` (bytes ..)".
            let m = m.split(" (bytes").next().unwrap_or(m);
            let m = match m.split_once('`') {
                Some((head, rest)) => {
                    let insn = rest.trim_end_matches('`');
                    let mnemonic = insn.split_whitespace().next().unwrap_or(insn);
                    format!("{head}`{mnemonic}`")
                }
                None => m.to_string(),
            };
            format!("{engine}: {m}")
        }
    }
}

/// The instructions of `code` (decoded at [`env::CODE`]) with their offsets.
fn decode(code: &[u8], bitness: u32) -> Vec<(usize, Instruction)> {
    let mut d = Decoder::with_ip(bitness, code, env::CODE, DecoderOptions::NONE);
    let mut out = Vec::new();
    while d.can_decode() {
        let pos = d.position();
        out.push((pos, d.decode()));
    }
    out
}

/// The sequence `code` disassembled, one line per instruction with its bytes.
fn listing(code: &[u8], bitness: u32) -> Vec<String> {
    decode(code, bitness)
        .into_iter()
        .map(|(pos, i)| {
            let end = (pos + i.len()).min(code.len());
            let hex: String = code[pos..end].iter().map(|b| format!("{b:02x}")).collect();
            format!("{:#x}: {:<24} {i}", i.ip(), hex)
        })
        .collect()
}

/// What the comparison leaves out when the sequence stopped at code offset `stop` (the
/// faulting instruction's, or the end): the arithmetic flags and x87 condition codes
/// left undefined by the instructions before it, skipping those in `skip` (replaced:
/// see `replacement`), and the uncompared bytes of FPU environment images.
fn ignore(insns: &[(usize, Instruction)], skip: &[usize], stop: usize) -> Ignore {
    let before = || insns.iter().filter(|(pos, _)| *pos < stop);
    let flags = before().fold(0, |u, (pos, i)| match skip.contains(pos) {
        false => gen::after(u, i),
        true if defines_flags(i) => 0,
        // SAHF: all but OF.
        true if i.rflags_modified() != 0 => u & (1 << 11),
        true => u,
    });
    let fsw = before()
        .filter(|(pos, _)| !skip.contains(pos))
        .fold(0, |u, (_, i)| fp::cc_after(u, i));
    let data = insns
        .iter()
        .filter_map(|(_, i)| fp::uncompared_bytes(i))
        .collect();
    Ignore { flags, fsw, data }
}

/// Whether neither engine is KVM (TCG's JIT against its interpreter): both run the
/// same IR, so everything is compared bit for bit (no undefined flags or condition
/// codes, every byte of the data page) and no known KVM-side rule applies.
pub fn strict(a: &Engine, b: &Engine) -> bool {
    a.kind != EngineKind::Kvm && b.kind != EngineKind::Kvm
}

/// What the comparison of `a`'s outcome `oa` with `b`'s leaves out: nothing when
/// [`strict`], else what [`ignore`] says.
fn comparison(
    a: &Engine,
    b: &Engine,
    insns: &[(usize, Instruction)],
    patched: &[usize],
    setup: &Setup,
    oa: &Outcome,
) -> Ignore {
    if strict(a, b) {
        Ignore::default()
    } else {
        ignore(insns, patched, stop_offset(setup, oa))
    }
}

/// Whether the replacement of a patched instruction is `cmp eax, eax` (which defines
/// every arithmetic flag) rather than only NOPs: when the instruction itself writes
/// flags, so that a later instruction reading them still reads defined values.
fn defines_flags(i: &Instruction) -> bool {
    i.rflags_modified() != 0 && i.len() >= 2
}

/// The bytes that replace instruction `i` in a patched sequence: `cmp eax, eax` and
/// NOPs, or for a one-byte instruction that writes flags SAHF (defines all but OF from
/// AH), or NOPs.
fn replacement(i: &Instruction) -> Vec<u8> {
    let mut r = vec![0x90; i.len()];
    if defines_flags(i) {
        r[..2].copy_from_slice(&[0x39, 0xc0]);
    } else if i.rflags_modified() != 0 {
        r[0] = 0x9e;
    }
    r
}

/// Code offset of the instruction a run stopped at (the end if unknown).
fn stop_offset(setup: &Setup, o: &Outcome) -> usize {
    o.stop
        .as_ref()
        .and_then(|s| s.rip.checked_sub(setup.state.rip))
        .and_then(|off| usize::try_from(off).ok())
        .unwrap_or(usize::MAX)
}

/// The reasons of the [`KNOWN_KVM`] rules that explain a divergence of `code`, or
/// the differences left once the matching instructions are replaced (see
/// `replacement`; the patched sequence must run the same on both engines).
fn explain(
    a: &mut Engine,
    b: &mut Engine,
    cfg: &Config,
    setup: &Setup,
    code: &[u8],
    diffs: &[String],
) -> Result<Vec<&'static str>, Vec<String>> {
    let mut left = diffs.to_vec();
    explain_rounds(a, b, cfg, setup, code, &mut left).ok_or(left)
}

/// [`explain`]'s rounds; `diffs` ends as the differences of the last patched run.
fn explain_rounds(
    a: &mut Engine,
    b: &mut Engine,
    cfg: &Config,
    setup: &Setup,
    code: &[u8],
    diffs: &mut Vec<String>,
) -> Option<Vec<&'static str>> {
    let insns = decode(code, cfg.mode.bitness());
    let mut reasons: Vec<&'static str> = Vec::new();
    let mut patched: Vec<usize> = Vec::new();
    // Patching one instruction can let the sequence reach another known one (KVM
    // stopped at the first): a few rounds, each adding the rules the new differences
    // call for.
    for _ in 0..4 {
        let before = patched.len();
        for rule in KNOWN_KVM {
            if !(rule.applies)(cfg.mode, cfg.privilege)
                || !diffs.iter().all(|d| (rule.diffs)(d))
                || !diffs.iter().any(|d| (rule.needs)(d))
            {
                continue;
            }
            let hits: Vec<usize> = insns
                .iter()
                .filter(|(pos, i)| (rule.matches)(i) && !patched.contains(pos))
                .map(|(pos, _)| *pos)
                .collect();
            if !hits.is_empty() {
                if !reasons.contains(&rule.reason) {
                    reasons.push(rule.reason);
                }
                patched.extend(hits);
            }
        }
        if patched.len() == before {
            return None;
        }
        match run_patched(a, b, cfg, setup, &insns, &patched) {
            Some(Patched::Agree) => return Some(reasons),
            Some(Patched::Disagree(d)) => *diffs = d,
            None => {
                // Patched, the sequence reaches an instruction KVM cannot run at all
                // (it stopped before it unpatched): compare what KVM can run, the
                // sequence up to the first patched instruction.
                let first = patched.iter().copied().min()?;
                let tail: Vec<usize> = insns
                    .iter()
                    .map(|(pos, _)| *pos)
                    .filter(|pos| *pos >= first)
                    .collect();
                return (run_patched(a, b, cfg, setup, &insns, &tail)? == Patched::Agree)
                    .then_some(reasons);
            }
        }
    }
    None
}

/// How a sequence with some instructions replaced ran.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Patched {
    Agree,
    /// The differences (empty for a hang or an unexpected end).
    Disagree(Vec<String>),
}

/// Runs `setup` with the instructions at offsets `patched` replaced (see `replacement`) on both
/// engines; `None` when an engine could not run it.
fn run_patched(
    a: &mut Engine,
    b: &mut Engine,
    cfg: &Config,
    setup: &Setup,
    insns: &[(usize, Instruction)],
    patched: &[usize],
) -> Option<Patched> {
    let mut s = setup.clone();
    let (_, bytes) = s.memory.iter_mut().find(|(addr, _)| *addr == env::CODE)?;
    for (pos, i) in insns {
        if patched.contains(pos) {
            bytes
                .get_mut(*pos..*pos + i.len())?
                .copy_from_slice(&replacement(i));
        }
    }
    let ra = a.run(cfg.mode, &s);
    let rb = b.run(cfg.mode, &s);
    match (ra, rb) {
        (Ok(oa), Ok(ob)) => {
            let d = compare(&oa, &ob, &comparison(a, b, insns, patched, setup, &oa));
            Some(if d.is_empty() {
                Patched::Agree
            } else {
                Patched::Disagree(d)
            })
        }
        (Err(RunError::Other(_)), _) | (_, Err(RunError::Other(_))) => {
            Some(Patched::Disagree(Vec::new()))
        }
        _ => None,
    }
}

/// Reduces a divergent sequence: each instruction in turn is replaced and
/// stays replaced if the engines still disagree. Returns the listing of what is left.
fn reduce(a: &mut Engine, b: &mut Engine, cfg: &Config, setup: &Setup, code: &[u8]) -> Reduced {
    let bitness = cfg.mode.bitness();
    let insns = decode(code, bitness);
    let mut patched: Vec<usize> = Vec::new();
    let mut diffs = Vec::new();
    for (pos, _) in &insns {
        patched.push(*pos);
        match run_patched(a, b, cfg, setup, &insns, &patched) {
            Some(Patched::Disagree(d)) => diffs = d,
            _ => {
                patched.pop();
            }
        }
    }
    let listing = listing(code, bitness)
        .into_iter()
        .zip(&insns)
        .filter(|(_, (pos, _))| !patched.contains(pos))
        .map(|(l, _)| l)
        .collect();
    Reduced { listing, diffs }
}

/// A reduced divergent sequence.
#[derive(Debug, Clone, Default)]
pub struct Reduced {
    /// The instructions left.
    pub listing: Vec<String>,
    /// How the engines disagree on it (empty if nothing could be replaced).
    pub diffs: Vec<String>,
}

/// The code and environment of sequence `seed` (`codes`: the candidates of `cfg`).
fn sequence(cfg: &Config, codes: &[iced_x86::Code], seed: u64) -> (Vec<u8>, Setup) {
    let mut rng = Rng::new(seed);
    let (code, insns, _) =
        gen::random_sequence(&mut rng, codes, cfg.mode.bitness(), cfg.length, env::CODE);
    let mut setup = env::setup(cfg.mode, cfg.privilege, &mut rng, &code);
    if cfg.features.fp() {
        fp::randomize(&mut rng, &mut setup, &insns);
    }
    (code, setup)
}

/// The initial floating-point state of sequence `seed` and the memory operands of its
/// floating-point instructions, for triage (see [`fp::describe`]).
pub fn describe_fp(cfg: &Config, seed: u64) -> String {
    let codes = gen::candidates(cfg.mode.bitness(), cfg.features);
    let (code, setup) = sequence(cfg, &codes, seed);
    let insns: Vec<Instruction> = decode(&code, cfg.mode.bitness())
        .into_iter()
        .map(|(_, i)| i)
        .collect();
    fp::describe(&setup, &insns)
}

/// Runs the campaign on engines `a` and `b`: KVM (as `a`: the classifier's rules are
/// about it) against TCG, or two TCG backends (the JIT against the interpreter), which
/// must agree on everything (see [`strict`]).
pub fn run(a: &mut Engine, b: &mut Engine, cfg: &Config) -> Report {
    let codes = gen::candidates(cfg.mode.bitness(), cfg.features);
    let mut report = Report::default();
    for i in 0..cfg.count {
        let seed = cfg.seed.wrapping_add(i);
        let (code, setup) = sequence(cfg, &codes, seed);
        report.sequences += 1;
        let ra = a.run(cfg.mode, &setup);
        let rb = b.run(cfg.mode, &setup);
        let (oa, ob) = match (ra, rb) {
            (Ok(x), Ok(y)) => (x, y),
            (ra, rb) => {
                let (e, name) = match (ra, rb) {
                    (Err(e), _) => (e, a.name),
                    (_, Err(e)) => (e, b.name),
                    (Ok(_), Ok(_)) => continue,
                };
                match e {
                    RunError::EngineLimit(_) => {
                        *report
                            .engine_limits
                            .entry(short_reason(&e, name))
                            .or_default() += 1;
                    }
                    // A hang or an unexpected end is a failure, not a limitation.
                    RunError::Other(m) => report.divergences.push(Divergence {
                        seed,
                        listing: listing(&code, cfg.mode.bitness()),
                        reduced: reduce(a, b, cfg, &setup, &code),
                        after_known: Vec::new(),
                        diffs: vec![format!("{name}: {m}")],
                    }),
                }
                continue;
            }
        };
        report.compared += 1;
        let insns = decode(&code, cfg.mode.bitness());
        let diffs = compare(&oa, &ob, &comparison(a, b, &insns, &[], &setup, &oa));
        if diffs.is_empty() {
            continue;
        }
        // Between two TCG backends nothing is excused: no KVM-side rule applies.
        let explained = if strict(a, b) {
            Err(diffs.clone())
        } else {
            explain(a, b, cfg, &setup, &code, &diffs)
        };
        let after_known = match explained {
            Ok(reasons) => {
                report.known_kvm_sequences += 1;
                for r in reasons {
                    *report.known_kvm.entry(r).or_default() += 1;
                }
                continue;
            }
            Err(left) => left,
        };
        report.divergences.push(Divergence {
            seed,
            listing: listing(&code, cfg.mode.bitness()),
            reduced: reduce(a, b, cfg, &setup, &code),
            after_known: if after_known == diffs {
                Vec::new()
            } else {
                after_known
            },
            diffs,
        });
    }
    report
}

impl Report {
    /// A human-readable summary: counts, engine limits, known KVM-side divergences and
    /// the first unexplained divergences.
    pub fn summary(&self, max_divergences: usize) -> String {
        let known = self.known_kvm_sequences;
        let limits: u64 = self.engine_limits.values().sum();
        let mut s = format!(
            "{} sequences, {} compared, {} engine limits, {} known KVM-side divergences, {} \
             divergences\n",
            self.sequences,
            self.compared,
            limits,
            known,
            self.divergences.len()
        );
        for (why, n) in &self.engine_limits {
            s.push_str(&format!("  skipped {n}: {why}\n"));
        }
        for (why, n) in &self.known_kvm {
            s.push_str(&format!("  known {n}: {why}\n"));
        }
        for d in self.divergences.iter().take(max_divergences) {
            s.push_str(&format!("  seed {}: {}\n", d.seed, d.diffs.join("; ")));
            for l in &d.listing {
                s.push_str(&format!("      {l}\n"));
            }
            if !d.after_known.is_empty() {
                s.push_str(&format!(
                    "    known KVM-side rules leave: {}\n",
                    d.after_known.join("; ")
                ));
            }
            if d.reduced.listing.len() < d.listing.len() {
                s.push_str(&format!(
                    "    reduced to ({}):\n",
                    d.reduced.diffs.join("; ")
                ));
                for l in &d.reduced.listing {
                    s.push_str(&format!("      {l}\n"));
                }
            }
        }
        s
    }
}
