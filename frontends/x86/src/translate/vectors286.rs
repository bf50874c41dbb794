//! Private check against the SingleStepTests 80286 real-mode vectors
//! (`/work/shared/vectors/80286-real`, see its README): `cargo test -p vireo-x86 --lib
//! vectors286 -- --ignored --nocapture`. The official harness lives in `testsuite/`;
//! this one exists to find translator bugs. System helpers the translator calls
//! (IN/OUT, CLI/STI, PUSHF/POPF, INT, IRET, HLT) are stood in for here with 286
//! real-mode semantics, and faults are delivered through the real-mode IVT.

use super::tests::bus;
use super::translate_block;
use crate::cpu::X86Cpu;
use crate::helpers::system::SysHelper;
use std::collections::BTreeMap;
use std::io::Read;
use vireo_core::cpu::{CpuState, Segment};
use vireo_core::exec::{BlockOutcome, Fault, GuestEnv};
use vireo_core::ir::{ExitKind, Global, HelperId, MmuIdx, Size};
use vireo_interp::{Interp, Prepared};

/// A parsed JSON value (the subset the vector files use).
#[derive(Debug, Clone)]
enum J {
    Num(i64),
    Str(String),
    Arr(Vec<J>),
    Obj(BTreeMap<String, J>),
    Other,
}

impl J {
    fn get(&self, k: &str) -> Option<&J> {
        match self {
            J::Obj(m) => m.get(k),
            _ => None,
        }
    }
    fn num(&self) -> i64 {
        match self {
            J::Num(n) => *n,
            _ => 0,
        }
    }
    fn arr(&self) -> &[J] {
        match self {
            J::Arr(a) => a,
            _ => &[],
        }
    }
}

fn parse(s: &[u8], i: &mut usize) -> J {
    while s.get(*i).is_some_and(|c| c.is_ascii_whitespace()) {
        *i += 1;
    }
    match s.get(*i) {
        Some(b'{') => {
            *i += 1;
            let mut m = BTreeMap::new();
            loop {
                while s
                    .get(*i)
                    .is_some_and(|c| c.is_ascii_whitespace() || *c == b',')
                {
                    *i += 1;
                }
                if s.get(*i) == Some(&b'}') || s.get(*i).is_none() {
                    *i += 1;
                    return J::Obj(m);
                }
                let J::Str(k) = parse(s, i) else {
                    return J::Obj(m);
                };
                while s.get(*i).is_some_and(|c| *c != b':') {
                    *i += 1;
                }
                *i += 1;
                let v = parse(s, i);
                m.insert(k, v);
            }
        }
        Some(b'[') => {
            *i += 1;
            let mut a = Vec::new();
            loop {
                while s
                    .get(*i)
                    .is_some_and(|c| c.is_ascii_whitespace() || *c == b',')
                {
                    *i += 1;
                }
                if s.get(*i) == Some(&b']') || s.get(*i).is_none() {
                    *i += 1;
                    return J::Arr(a);
                }
                a.push(parse(s, i));
            }
        }
        Some(b'"') => {
            *i += 1;
            let st = *i;
            while s.get(*i).is_some_and(|c| *c != b'"') {
                *i += 1;
            }
            let v = String::from_utf8_lossy(&s[st..(*i).min(s.len())]).into_owned();
            *i += 1;
            J::Str(v)
        }
        Some(c) if c.is_ascii_digit() || *c == b'-' => {
            let st = *i;
            *i += 1;
            while s.get(*i).is_some_and(|c| c.is_ascii_digit()) {
                *i += 1;
            }
            J::Num(
                std::str::from_utf8(&s[st..*i])
                    .ok()
                    .and_then(|t| t.parse().ok())
                    .unwrap_or(0),
            )
        }
        _ => {
            while s.get(*i).is_some_and(|c| c.is_ascii_alphabetic()) {
                *i += 1;
            }
            J::Other
        }
    }
}

/// Runs blocks with stand-ins for the system helpers.
struct Env<'a>(&'a mut X86Cpu);

impl Env<'_> {
    fn push16(&mut self, v: u64) {
        let c = &mut self.0;
        let sp = c.state.gpr[4].wrapping_sub(2) & 0xffff;
        c.state.gpr[4] = (c.state.gpr[4] & !0xffff) | sp;
        let a = c.state.seg[2].base + sp;
        let _ = crate::mmu::write(c, a, v, Size::B16, MmuIdx::Kernel);
    }
    fn pop16(&mut self) -> u64 {
        let c = &mut self.0;
        let sp = c.state.gpr[4] & 0xffff;
        let a = c.state.seg[2].base + sp;
        let v = crate::mmu::read(c, a, Size::B16, MmuIdx::Kernel).unwrap_or(0);
        c.state.gpr[4] = (c.state.gpr[4] & !0xffff) | ((sp + 2) & 0xffff);
        v
    }
    /// Real-mode interrupt delivery with return address `ret`.
    fn deliver(&mut self, vector: u8, ret: u64) {
        let f = self.0.rflags() & 0x0fff;
        self.push16(f);
        self.push16(u64::from(self.0.state.seg[1].selector));
        self.push16(ret & 0xffff);
        let ivt = u64::from(vector) * 4;
        let ip = crate::mmu::read(self.0, ivt, Size::B16, MmuIdx::Kernel).unwrap_or(0);
        let cs = crate::mmu::read(self.0, ivt + 2, Size::B16, MmuIdx::Kernel).unwrap_or(0);
        self.0.state.seg[1] = Segment::real_mode(cs as u16, true);
        self.0.state.rip = ip;
        let rf = self.0.rflags() & !(vireo_core::cpu::flags::IF | vireo_core::cpu::flags::TF);
        self.0.set_rflags(rf);
    }
}

impl GuestEnv for Env<'_> {
    fn get(&mut self, g: Global) -> u64 {
        self.0.get(g)
    }
    fn set(&mut self, g: Global, v: u64) {
        self.0.set(g, v)
    }
    fn load(&mut self, addr: u64, size: Size, mmu: MmuIdx, write: bool) -> Result<u64, Fault> {
        self.0.load(addr, size, mmu, write)
    }
    fn store(&mut self, addr: u64, val: u64, size: Size, mmu: MmuIdx) -> Result<(), Fault> {
        self.0.store(addr, val, size, mmu)
    }
    fn call(&mut self, h: HelperId, args: &[u64]) -> Result<u64, Fault> {
        let a = |i: usize| args.get(i).copied().unwrap_or(0);
        let id = |s: SysHelper| s.id();
        if h == id(SysHelper::In) {
            return Ok(if a(1) == 1 { 0xff } else { 0xffff });
        }
        if h == id(SysHelper::Out) {
            return Ok(0);
        }
        if h == id(SysHelper::Hlt) {
            self.0.state.rip = a(0);
            return Ok(0);
        }
        if h == id(SysHelper::Cli) || h == id(SysHelper::Sti) {
            let f = self.0.rflags();
            let nf = if h == id(SysHelper::Cli) {
                f & !vireo_core::cpu::flags::IF
            } else {
                f | vireo_core::cpu::flags::IF
            };
            self.0.set_rflags(nf);
            return Ok(0);
        }
        if h == id(SysHelper::Pushf) {
            return Ok(self.0.rflags() & 0x0fff);
        }
        if h == id(SysHelper::Popf) {
            self.0.set_rflags((a(0) & 0x0fd5) | 2);
            return Ok(0);
        }
        if h == id(SysHelper::SoftInt) {
            self.deliver(a(0) as u8, a(1));
            return Ok(0);
        }
        if h == id(SysHelper::Iret) {
            let ip = self.pop16();
            let cs = self.pop16();
            let f = self.pop16();
            self.0.state.seg[1] = Segment::real_mode(cs as u16, true);
            self.0.state.rip = ip;
            self.0.set_rflags((f & 0x0fd5) | 2);
            return Ok(0);
        }
        self.0.call(h, args)
    }
    fn stop_requested(&mut self) -> bool {
        self.0.stop_requested()
    }
    fn insn_start(&mut self, pc: u64) {
        self.0.insn_start(pc)
    }
}

const REGS: [&str; 14] = [
    "ax", "bx", "cx", "dx", "cs", "ss", "ds", "es", "sp", "bp", "si", "di", "ip", "flags",
];

fn reg_of(cpu: &X86Cpu, name: &str) -> u64 {
    let s = &cpu.state;
    match name {
        "ax" => s.gpr[0] & 0xffff,
        "cx" => s.gpr[1] & 0xffff,
        "dx" => s.gpr[2] & 0xffff,
        "bx" => s.gpr[3] & 0xffff,
        "sp" => s.gpr[4] & 0xffff,
        "bp" => s.gpr[5] & 0xffff,
        "si" => s.gpr[6] & 0xffff,
        "di" => s.gpr[7] & 0xffff,
        "es" => u64::from(s.seg[0].selector),
        "cs" => u64::from(s.seg[1].selector),
        "ss" => u64::from(s.seg[2].selector),
        "ds" => u64::from(s.seg[3].selector),
        "ip" => s.rip & 0xffff,
        _ => cpu.rflags() & 0xffff,
    }
}

/// Runs one test; returns a description of the first mismatch.
fn run_test(cpu: &mut X86Cpu, t: &J, fmask: u64) -> Result<(), String> {
    let init = t.get("initial").ok_or("no initial")?;
    let fin = t.get("final").ok_or("no final")?;
    let ir = init.get("regs").ok_or("no regs")?;
    let r = |n: &str| ir.get(n).map(J::num).unwrap_or(0) as u64;
    let mut st = CpuState::reset();
    st.gpr[0] = r("ax");
    st.gpr[1] = r("cx");
    st.gpr[2] = r("dx");
    st.gpr[3] = r("bx");
    st.gpr[4] = r("sp");
    st.gpr[5] = r("bp");
    st.gpr[6] = r("si");
    st.gpr[7] = r("di");
    for (i, n) in ["es", "cs", "ss", "ds"].iter().enumerate() {
        st.seg[i] = Segment::real_mode(r(n) as u16, i == 1);
    }
    st.rip = r("ip");
    st.rflags = (r("flags") & 0x0fff) | 2;
    cpu.set_state(st);
    for e in init.get("ram").map(J::arr).unwrap_or(&[]) {
        let p = e.arr();
        if p.len() == 2 {
            let _ = cpu.bus.mem.write(p[0].num() as u64, &[p[1].num() as u8]);
        }
    }
    let mut interp = Interp::new();
    let mut halted = false;
    for _ in 0..64 {
        let block = match translate_block(cpu, 16) {
            Ok(b) => b,
            Err(f) => return Err(format!("fetch fault {f:?}")),
        };
        let p = Prepared::new(block);
        let out = interp.run(&p, &mut Env(cpu));
        match out {
            BlockOutcome::Exit(ExitKind::Halt) => {
                halted = true;
                break;
            }
            BlockOutcome::Exit(_) => {}
            BlockOutcome::Stopped { .. } => cpu.stop = false,
            BlockOutcome::Fault { fault, pc } => {
                cpu.state.rip = pc;
                Env(cpu).deliver(fault.vector, pc);
            }
        }
    }
    if !halted {
        return Err("no halt".into());
    }
    let fr = fin.get("regs").ok_or("no final regs")?;
    let mut errs = Vec::new();
    for n in REGS {
        let want = fr.get(n).map(|v| v.num() as u64).unwrap_or_else(|| {
            if n == "flags" {
                (r(n) & 0x0fff) | 2
            } else {
                r(n)
            }
        });
        let got = reg_of(cpu, n);
        let m = if n == "flags" { fmask & 0x0fd7 } else { 0xffff };
        if got & m != want & m {
            errs.push(format!("{n}: got {got:#06x} want {want:#06x}"));
        }
    }
    let flag_at = t.get("exception").map(|_| {
        let ss = reg_of(cpu, "ss");
        let sp = reg_of(cpu, "sp");
        (ss << 4) + ((sp + 4) & 0xffff)
    });
    for e in fin.get("ram").map(J::arr).unwrap_or(&[]) {
        let p = e.arr();
        if p.len() != 2 {
            continue;
        }
        let (a, want) = (p[0].num() as u64, p[1].num() as u64);
        let got = u64::from(cpu.bus.mem.read_u8(a).unwrap_or(0));
        let m = match flag_at {
            Some(f) if a == f => fmask & 0xd7,
            Some(f) if a == f + 1 => (fmask >> 8) & 0x0f,
            _ => 0xff,
        };
        if got & m != want & m {
            errs.push(format!("ram[{a:#x}]: got {got:#04x} want {want:#04x}"));
        }
    }
    // Clean the memory this test touched.
    for side in [init, fin] {
        for e in side.get("ram").map(J::arr).unwrap_or(&[]) {
            if let Some(a) = e.arr().first() {
                let _ = cpu.bus.mem.write(a.num() as u64, &[0]);
            }
        }
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(errs.join(", "))
    }
}

#[test]
#[ignore = "needs /work/shared/vectors; run with --ignored"]
fn vectors286() {
    let dir = std::path::Path::new("/work/shared/vectors/80286-real");
    let Ok(idx_text) = std::fs::read(dir.join("index.json")) else {
        eprintln!("no vectors");
        return;
    };
    let index = parse(&idx_text, &mut 0);
    let only = std::env::var("V286_ONLY").ok();
    let mut forms: Vec<(String, u64)> = Vec::new();
    if let Some(J::Obj(m)) = index.get("forms") {
        for (k, v) in m {
            let mask = v
                .get("flags_mask")
                .map(|x| x.num() as u64)
                .unwrap_or(0xffff);
            forms.push((k.clone(), mask));
        }
    }
    let mut cpu = X86Cpu::new(bus(), CpuState::reset());
    let (mut pass, mut total, mut skipped) = (0usize, 0usize, 0usize);
    for (form, mask) in forms {
        if only.as_deref().is_some_and(|o| o != form) {
            continue;
        }
        let path = dir.join(format!("{form}.jsonl.gz"));
        let Ok(out) = std::process::Command::new("gzip")
            .arg("-dc")
            .arg(&path)
            .output()
        else {
            continue;
        };
        let mut text = Vec::new();
        let _ = out.stdout.as_slice().read_to_end(&mut text);
        let (mut p, mut n) = (0, 0);
        let mut first_err = None;
        for line in text.split(|c| *c == b'\n').filter(|l| !l.is_empty()) {
            let t = parse(line, &mut 0);
            // 286-only behaviour (README): LOCK on anything, ESC without an FPU.
            let prefixes: Vec<i64> = t
                .get("bytes")
                .map(J::arr)
                .unwrap_or(&[])
                .iter()
                .map(J::num)
                .take_while(|b| matches!(b, 0x26 | 0x2e | 0x36 | 0x3e | 0xf0 | 0xf2 | 0xf3))
                .collect();
            if prefixes.contains(&0xf0) || form == "D8" {
                skipped += 1;
                continue;
            }
            n += 1;
            match run_test(&mut cpu, &t, mask) {
                Ok(()) => p += 1,
                Err(e) => {
                    if first_err.is_none() {
                        let name = match t.get("name") {
                            Some(J::Str(s)) => s.clone(),
                            _ => String::new(),
                        };
                        let bytes: Vec<String> = t
                            .get("bytes")
                            .map(J::arr)
                            .unwrap_or(&[])
                            .iter()
                            .map(|b| format!("{:02x}", b.num()))
                            .collect();
                        first_err = Some(format!("{name} [{}]: {e}", bytes.join(" ")));
                    }
                }
            }
        }
        pass += p;
        total += n;
        if p != n {
            eprintln!("{form}: {p}/{n} {}", first_err.unwrap_or_default());
        }
    }
    eprintln!(
        "80286 real mode: {pass}/{total} = {:.2}% ({skipped} skipped: LOCK, ESC)",
        100.0 * pass as f64 / total.max(1) as f64
    );
}
