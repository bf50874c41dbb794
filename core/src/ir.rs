//! vireo's intermediate representation: what a translated block does, independent of
//! the guest decoder that produced it and of the backend that runs it.
//!
//! A [`Block`] is a list of [`Op`]s over 64-bit temporaries ([`Temp`]). Guest state is
//! reached through [`Global`]s (registers the backends may cache), guest memory through
//! [`Op::Load`]/[`Op::Store`] (linear addresses, translated by the softmmu with an
//! [`MmuIdx`]), and everything else through [`Op::Call`] of a helper that declares what
//! it reads and writes. Control leaves a block only through [`Op::Exit`] (or a fault).
//! `docs/IR.md` describes the semantics; [`Block`]'s `Display` is the printed form
//! (`-d op`).

use std::fmt;

/// A 64-bit temporary, local to one block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Temp(pub u32);

/// A branch target inside one block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Label(pub u32);

/// Operand width. Results of sized operations are truncated to the width and
/// zero-extended to 64 bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Size {
    B8,
    B16,
    B32,
    B64,
}

impl Size {
    pub fn bits(self) -> u32 {
        match self {
            Size::B8 => 8,
            Size::B16 => 16,
            Size::B32 => 32,
            Size::B64 => 64,
        }
    }
    pub fn bytes(self) -> usize {
        self.bits() as usize / 8
    }
    /// All-ones mask of the width.
    pub fn mask(self) -> u64 {
        match self {
            Size::B64 => u64::MAX,
            s => (1u64 << s.bits()) - 1,
        }
    }
    /// Sign bit of the width.
    pub fn sign_bit(self) -> u64 {
        1u64 << (self.bits() - 1)
    }
    /// `v` truncated to the width.
    pub fn trunc(self, v: u64) -> u64 {
        v & self.mask()
    }
    /// `v` truncated to the width then sign-extended to 64 bits.
    pub fn sext(self, v: u64) -> u64 {
        let sh = 64 - self.bits();
        (((v << sh) as i64) >> sh) as u64
    }
    pub fn from_bytes(n: usize) -> Option<Size> {
        Some(match n {
            1 => Size::B8,
            2 => Size::B16,
            4 => Size::B32,
            8 => Size::B64,
            _ => return None,
        })
    }
}

/// Guest state a block reads and writes directly (backends may keep these in host
/// registers within a block). The guest frontend defines what each index means; for
/// x86: GPRs 0-15, RIP, the lazy-flag quadruple, the non-arithmetic RFLAGS bits and the
/// six segment bases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Global {
    /// General-purpose register `n` (0-15), all 64 bits.
    Gpr(u8),
    /// The instruction pointer (RIP/EIP/IP; in x86, relative to the CS base).
    Pc,
    /// Lazy flags: the operation kind that last set the arithmetic flags.
    CcOp,
    /// Lazy flags: the result of that operation.
    CcDst,
    /// Lazy flags: its source operand.
    CcSrc,
    /// Lazy flags: a second source (carry-in of ADC/SBB, and the like).
    CcSrc2,
    /// Flag bits not covered by the lazy flags (x86: TF, IF, DF, IOPL, NT, RF, VM, AC,
    /// VIF, VIP, ID, and the fixed bit 1).
    Flags,
    /// Base of segment register `n` (x86: ES, CS, SS, DS, FS, GS).
    SegBase(u8),
    /// Half of a 128-bit vector register: `Xmm(2r)` is the low 64 bits of register
    /// `r` (0-15), `Xmm(2r + 1)` the high ones. Helpers that touch vector state may
    /// read and write these without declaring it (the passes assume any call that is
    /// not pure does).
    Xmm(u8),
}

/// A guest memory access class: selects the page-table permission checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MmuIdx {
    /// Supervisor access (CPL 0-2, or an implicit system access such as a descriptor
    /// table read).
    Kernel,
    /// User access (CPL 3).
    User,
}

/// Two-operand arithmetic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BinOp {
    Add,
    Sub,
    And,
    Or,
    Xor,
    /// Shifts and rotates take the count modulo the width.
    Shl,
    Shr,
    Sar,
    Rol,
    Ror,
    /// Low half of the product.
    Mul,
    /// High half of the unsigned / signed product.
    MulHiU,
    MulHiS,
    /// Division: a zero divisor is the frontend's business (it checks first);
    /// backends return 0 rather than trap.
    DivU,
    DivS,
    RemU,
    RemS,
}

/// One-operand arithmetic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UnOp {
    Neg,
    Not,
    /// Byte swap within the width.
    Bswap,
    /// Population count.
    Popcnt,
    /// Count trailing zeros (the width if zero).
    Ctz,
    /// Count leading zeros within the width (the width if zero).
    Clz,
}

/// Comparison conditions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cond {
    Eq,
    Ne,
    /// Unsigned.
    Ltu,
    Leu,
    Gtu,
    Geu,
    /// Signed.
    Lt,
    Le,
    Gt,
    Ge,
}

impl Cond {
    /// The condition that holds exactly when `self` does not.
    pub fn invert(self) -> Cond {
        match self {
            Cond::Eq => Cond::Ne,
            Cond::Ne => Cond::Eq,
            Cond::Ltu => Cond::Geu,
            Cond::Geu => Cond::Ltu,
            Cond::Leu => Cond::Gtu,
            Cond::Gtu => Cond::Leu,
            Cond::Lt => Cond::Ge,
            Cond::Ge => Cond::Lt,
            Cond::Le => Cond::Gt,
            Cond::Gt => Cond::Le,
        }
    }

    /// Evaluates the condition on two values of width `size`.
    pub fn eval(self, size: Size, a: u64, b: u64) -> bool {
        let (ua, ub) = (size.trunc(a), size.trunc(b));
        let (sa, sb) = (size.sext(a) as i64, size.sext(b) as i64);
        match self {
            Cond::Eq => ua == ub,
            Cond::Ne => ua != ub,
            Cond::Ltu => ua < ub,
            Cond::Leu => ua <= ub,
            Cond::Gtu => ua > ub,
            Cond::Geu => ua >= ub,
            Cond::Lt => sa < sb,
            Cond::Le => sa <= sb,
            Cond::Gt => sa > sb,
            Cond::Ge => sa >= sb,
        }
    }
}

/// A helper function, by index into the frontend's helper table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HelperId(pub u16);

/// A helper call's arguments: up to [`Args::MAX`] temps, held in the op (a call
/// allocated its argument list once: a fifth of the allocations of translation).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Args {
    len: u8,
    temps: [Temp; Args::MAX],
}

impl Args {
    /// Arguments a helper takes at most.
    pub const MAX: usize = 4;

    /// The first [`Args::MAX`] of `temps` (helpers take no more).
    pub fn new(temps: &[Temp]) -> Args {
        debug_assert!(
            temps.len() <= Args::MAX,
            "a helper takes at most four arguments"
        );
        let mut a = Args {
            len: 0,
            temps: [Temp(0); Args::MAX],
        };
        for (d, &t) in a.temps.iter_mut().zip(temps) {
            *d = t;
            a.len += 1;
        }
        a
    }
}

impl std::ops::Deref for Args {
    type Target = [Temp];
    fn deref(&self) -> &[Temp] {
        &self.temps[..usize::from(self.len)]
    }
}

impl std::ops::DerefMut for Args {
    fn deref_mut(&mut self) -> &mut [Temp] {
        &mut self.temps[..usize::from(self.len)]
    }
}

impl std::fmt::Debug for Args {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// What a helper may touch besides its arguments: backends write cached globals back
/// before the call and reload them after, as declared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Effects {
    /// Reads globals (they must be in guest state before the call).
    pub reads_globals: bool,
    /// Writes globals (cached copies are stale after the call).
    pub writes_globals: bool,
    /// May raise a guest exception (the guest PC must be exact before the call).
    pub may_fault: bool,
    /// Ends the block after it returns (mode change, halt...).
    pub ends_block: bool,
}

impl Effects {
    /// A helper that only computes from its arguments.
    pub const PURE: Effects = Effects {
        reads_globals: false,
        writes_globals: false,
        may_fault: false,
        ends_block: false,
    };
    /// A helper that may do anything to guest state.
    pub const ALL: Effects = Effects {
        reads_globals: true,
        writes_globals: true,
        may_fault: true,
        ends_block: false,
    };
}

/// How a block ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExitKind {
    /// Continue at a guest PC known at translation time (`Global::Pc` is already set
    /// to it): the run loop may chain directly to that block.
    Jump(u64),
    /// Continue at whatever `Global::Pc` holds (indirect jumps, returns).
    Indirect,
    /// Return to the run loop and re-evaluate everything (after a mode change, an
    /// interrupt-window change such as STI, or a self-modifying write).
    Sync,
    /// HLT: the CPU waits for an interrupt.
    Halt,
    /// PAUSE (a spin-wait hint): continue at the guest PC known at translation time,
    /// as [`ExitKind::Jump`]; a scheduler running several vCPUs on one thread may
    /// switch to another one first (the spinning CPU waits for another's progress).
    Pause(u64),
}

/// One IR operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Start of guest instruction at `pc` (relative to the code segment) of `len`
    /// bytes. A fault in the ops that follow is reported for this instruction.
    InsnStart {
        pc: u64,
        len: u8,
    },
    Const {
        dst: Temp,
        value: u64,
    },
    Mov {
        dst: Temp,
        src: Temp,
    },
    Get {
        dst: Temp,
        src: Global,
    },
    Set {
        dst: Global,
        src: Temp,
    },
    Bin {
        op: BinOp,
        size: Size,
        dst: Temp,
        a: Temp,
        b: Temp,
    },
    Un {
        op: UnOp,
        size: Size,
        dst: Temp,
        a: Temp,
    },
    /// Sign- or zero-extends the low `from` bits of `src`.
    Ext {
        dst: Temp,
        src: Temp,
        from: Size,
        signed: bool,
    },
    /// `dst = (a cond b) ? 1 : 0`, comparing at width `size`.
    SetCond {
        cond: Cond,
        size: Size,
        dst: Temp,
        a: Temp,
        b: Temp,
    },
    /// `dst = cond != 0 ? a : b`.
    Select {
        dst: Temp,
        cond: Temp,
        a: Temp,
        b: Temp,
    },
    /// `dst = memory[addr]` (linear address), zero- or sign-extended.
    Load {
        dst: Temp,
        addr: Temp,
        size: Size,
        signed: bool,
        mmu: MmuIdx,
        /// The read of a read-modify-write: the access is checked for write
        /// permission (a fault reports a write), as x86 CPUs check the destination of
        /// an RMW instruction before reading it.
        write: bool,
    },
    /// `memory[addr] = val` (low `size` bytes).
    Store {
        addr: Temp,
        val: Temp,
        size: Size,
        mmu: MmuIdx,
    },
    /// A branch target.
    Label(Label),
    Br(Label),
    /// Branch if `cond != 0`.
    BrIf {
        cond: Temp,
        target: Label,
    },
    /// Calls a helper with up to four arguments.
    Call {
        helper: HelperId,
        args: Args,
        ret: Option<Temp>,
        effects: Effects,
    },
    /// Raises guest exception `vector` (with an error code if given) at the current
    /// instruction.
    Raise {
        vector: u8,
        error: Option<Temp>,
    },
    /// Leaves the block.
    Exit(ExitKind),
}

/// A translated block.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Block {
    /// Guest PC of the first instruction (relative to the code segment).
    pub pc: u64,
    /// Guest bytes from the block's first byte to the end of its furthest
    /// instruction (instructions may skip bytes forward: a block may go on at the
    /// target of a forward jump, but never back).
    pub guest_len: u32,
    /// Number of guest instructions.
    pub insns: u32,
    pub ops: Vec<Op>,
    /// Number of temporaries used (`Temp(0)..Temp(temps)`).
    pub temps: u32,
    /// Number of labels used.
    pub labels: u32,
    /// What the block's last exit is to the guest: a plain transfer, a call or a
    /// return (backends may predict returns from calls).
    pub tail: Tail,
}

/// What a block's last op, an exit, does in the guest's terms (a hint: the exit's
/// meaning is the same either way).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Tail {
    #[default]
    Plain,
    /// A near call: the callee returns to `ret` (the PC after the call).
    Call { ret: u64 },
    /// A near return (to the PC `Global::Pc` holds).
    Return,
}

/// Builds a block op by op.
#[derive(Debug, Default)]
pub struct Builder {
    block: Block,
}

impl Builder {
    pub fn new(pc: u64) -> Builder {
        Builder {
            block: Block {
                pc,
                // Room for most blocks (~40 ops in a Linux boot, more since blocks go
                // on past forward branches): rarely a regrowth.
                ops: Vec::with_capacity(256),
                ..Block::default()
            },
        }
    }
    pub fn temp(&mut self) -> Temp {
        self.block.temps += 1;
        Temp(self.block.temps - 1)
    }
    pub fn label(&mut self) -> Label {
        self.block.labels += 1;
        Label(self.block.labels - 1)
    }
    pub fn push(&mut self, op: Op) {
        self.block.ops.push(op);
    }
    /// Ops emitted so far (frontends may inspect the current instruction's ops).
    pub fn ops(&self) -> &[Op] {
        &self.block.ops
    }
    /// Truncates the op list (a frontend abandoning a partly emitted instruction).
    pub fn truncate(&mut self, len: usize) {
        self.block.ops.truncate(len);
    }
    pub fn insn_start(&mut self, pc: u64, len: u8) {
        self.block.insns += 1;
        let end = pc.wrapping_sub(self.block.pc).wrapping_add(u64::from(len));
        let end = u32::try_from(end).unwrap_or(u32::MAX);
        self.block.guest_len = self.block.guest_len.max(end);
        self.push(Op::InsnStart { pc, len });
    }
    pub fn konst(&mut self, value: u64) -> Temp {
        let dst = self.temp();
        self.push(Op::Const { dst, value });
        dst
    }
    pub fn get(&mut self, src: Global) -> Temp {
        let dst = self.temp();
        self.push(Op::Get { dst, src });
        dst
    }
    pub fn set(&mut self, dst: Global, src: Temp) {
        self.push(Op::Set { dst, src });
    }
    pub fn bin(&mut self, op: BinOp, size: Size, a: Temp, b: Temp) -> Temp {
        let dst = self.temp();
        self.push(Op::Bin {
            op,
            size,
            dst,
            a,
            b,
        });
        dst
    }
    /// `a op imm`.
    pub fn bini(&mut self, op: BinOp, size: Size, a: Temp, imm: u64) -> Temp {
        let b = self.konst(imm);
        self.bin(op, size, a, b)
    }
    pub fn un(&mut self, op: UnOp, size: Size, a: Temp) -> Temp {
        let dst = self.temp();
        self.push(Op::Un { op, size, dst, a });
        dst
    }
    pub fn ext(&mut self, src: Temp, from: Size, signed: bool) -> Temp {
        // `src` just made as a zero extension from at most `from` bits: already the
        // value (a 32-bit register write of a 32-bit read, `mov eax, r13d`).
        if let Some(&Op::Ext {
            dst: d,
            from: f,
            signed: false,
            ..
        }) = self.block.ops.last()
        {
            if d == src && f.bytes() <= from.bytes() && (!signed || f.bytes() < from.bytes()) {
                return src;
            }
        }
        let dst = self.temp();
        self.push(Op::Ext {
            dst,
            src,
            from,
            signed,
        });
        dst
    }
    pub fn setcond(&mut self, cond: Cond, size: Size, a: Temp, b: Temp) -> Temp {
        let dst = self.temp();
        self.push(Op::SetCond {
            cond,
            size,
            dst,
            a,
            b,
        });
        dst
    }
    pub fn select(&mut self, cond: Temp, a: Temp, b: Temp) -> Temp {
        let dst = self.temp();
        self.push(Op::Select { dst, cond, a, b });
        dst
    }
    pub fn load(&mut self, addr: Temp, size: Size, signed: bool, mmu: MmuIdx) -> Temp {
        let dst = self.temp();
        self.push(Op::Load {
            dst,
            addr,
            size,
            signed,
            mmu,
            write: false,
        });
        dst
    }
    /// A zero-extending load with write intent (the read of a read-modify-write: see
    /// [`Op::Load`]'s `write`).
    pub fn load_for_write(&mut self, addr: Temp, size: Size, mmu: MmuIdx) -> Temp {
        let dst = self.temp();
        self.push(Op::Load {
            dst,
            addr,
            size,
            signed: false,
            mmu,
            write: true,
        });
        dst
    }
    pub fn store(&mut self, addr: Temp, val: Temp, size: Size, mmu: MmuIdx) {
        self.push(Op::Store {
            addr,
            val,
            size,
            mmu,
        });
    }
    pub fn set_label(&mut self, l: Label) {
        self.push(Op::Label(l));
    }
    pub fn br(&mut self, l: Label) {
        self.push(Op::Br(l));
    }
    pub fn br_if(&mut self, cond: Temp, target: Label) {
        self.push(Op::BrIf { cond, target });
    }
    pub fn call(
        &mut self,
        helper: HelperId,
        args: &[Temp],
        want_ret: bool,
        effects: Effects,
    ) -> Option<Temp> {
        let ret = want_ret.then(|| self.temp());
        self.push(Op::Call {
            helper,
            args: Args::new(args),
            ret,
            effects,
        });
        ret
    }
    pub fn raise(&mut self, vector: u8, error: Option<Temp>) {
        self.push(Op::Raise { vector, error });
    }
    pub fn exit(&mut self, kind: ExitKind) {
        self.push(Op::Exit(kind));
    }
    /// Marks the block's last exit (the one just emitted) as a call or a return.
    pub fn set_tail(&mut self, tail: Tail) {
        self.block.tail = tail;
    }
    pub fn finish(self) -> Block {
        self.block
    }
}

impl Block {
    /// The position in `ops` of each label's definition (`usize::MAX`: none; the last
    /// one if a label is defined twice, which `validate` refuses), into `at` (reused:
    /// no allocation once it has room).
    pub fn label_positions_into(&self, at: &mut Vec<usize>) {
        at.clear();
        at.resize(self.labels as usize, usize::MAX);
        for (i, op) in self.ops.iter().enumerate() {
            if let Op::Label(l) = op {
                if let Some(a) = at.get_mut(l.0 as usize) {
                    *a = i;
                }
            }
        }
    }

    /// For each label, the position of the branch that is its only way in, if it has
    /// such a branch: one `Br`/`BrIf` targets it, from before it and from the same
    /// instruction (no `InsnStart` in between), and the op before the label does not
    /// fall through (`Br`, `Raise`, `Exit`). The code after such a label runs in the
    /// state the branch left: what passes and backends know at the branch still holds
    /// there, less what the skipped ops changed (the typical case: the `Raise` of a
    /// check, skipped when the check passes).
    pub fn branch_only_labels(&self) -> Vec<Option<usize>> {
        let mut out = Vec::new();
        self.branch_only_labels_into(&mut out);
        out
    }

    /// [`Block::branch_only_labels`] into `out` (reused: no allocation once it has
    /// room), in one pass over the ops.
    pub fn branch_only_labels_into(&self, out: &mut Vec<Option<usize>>) {
        // While the pass runs, an entry holds the position of the one branch to the
        // label seen so far, with flags above it: the label is defined (and this
        // branch qualified), or the label is out (several branches, a branch after
        // it, or a definition that falls through or follows an instruction start).
        const DEFINED: usize = 1 << (usize::BITS - 1);
        const OUT: usize = 1 << (usize::BITS - 2);
        const POS: usize = OUT - 1;
        out.clear();
        out.resize(self.labels as usize, None);
        let mut last_insn = None;
        let mut prev: Option<&Op> = None;
        for (i, op) in self.ops.iter().enumerate() {
            match *op {
                Op::Br(l) | Op::BrIf { target: l, .. } => {
                    if let Some(e) = out.get_mut(l.0 as usize) {
                        *e = Some(match *e {
                            None if i <= POS => i,
                            _ => OUT,
                        });
                    }
                }
                Op::Label(l) => {
                    if let Some(e) = out.get_mut(l.0 as usize) {
                        let closed =
                            matches!(prev, Some(Op::Br(_) | Op::Raise { .. } | Op::Exit(_)));
                        *e = Some(match *e {
                            Some(b)
                                if b & (DEFINED | OUT) == 0
                                    && closed
                                    && last_insn.is_none_or(|s| s < b) =>
                            {
                                b | DEFINED
                            }
                            _ => OUT,
                        });
                    }
                }
                Op::InsnStart { .. } => last_insn = Some(i),
                _ => {}
            }
            prev = Some(op);
        }
        for e in out.iter_mut() {
            *e = e
                .filter(|&v| v & (DEFINED | OUT) == DEFINED)
                .map(|v| v & POS);
        }
    }

    /// Checks structural invariants: temps and labels in range, every label defined
    /// once, every branch to a defined label, the block ends with an exit or a raise.
    pub fn validate(&self) -> Result<(), String> {
        // One pass (a fifth of a Linux boot's translations went through the checks
        // of a block about to run): the highest temp named and each label's state
        // in bitsets, the message built only for a block that fails.
        let mut defined = LabelBits::new(self.labels);
        let mut targets = LabelBits::new(self.labels);
        let mut top = 0u32;
        for op in &self.ops {
            match op {
                Op::Label(l) => {
                    if l.0 >= self.labels {
                        return Err(format!("label L{} out of range", l.0));
                    }
                    if defined.get(l.0) {
                        return Err(format!("label L{} defined twice", l.0));
                    }
                    defined.set(l.0);
                }
                Op::Br(l) | Op::BrIf { target: l, .. } => {
                    if l.0 >= self.labels {
                        return Err(format!("branch to undefined label L{}", l.0));
                    }
                    targets.set(l.0);
                }
                _ => {}
            }
            if let Some(d) = op.dst() {
                top = top.max(d.0.saturating_add(1));
            }
            op.for_each_read(|x| top = top.max(x.0.saturating_add(1)));
        }
        if top > self.temps {
            // The first op naming a temp out of range, for the message.
            for op in &self.ops {
                let mut bad = op.dst().filter(|d| d.0 >= self.temps);
                op.for_each_read(|x| {
                    if x.0 >= self.temps {
                        bad.get_or_insert(x);
                    }
                });
                if let Some(x) = bad {
                    return Err(format!("temp t{} out of range", x.0));
                }
            }
        }
        if let Some(l) = (0..self.labels).find(|&l| targets.get(l) && !defined.get(l)) {
            return Err(format!("branch to undefined label L{l}"));
        }
        match self.ops.last() {
            Some(Op::Exit(_)) | Some(Op::Raise { .. }) => Ok(()),
            other => Err(format!("block does not end with an exit: {other:?}")),
        }
    }
}

/// One bit per label of a block: inline for up to 256 labels (no allocation for a
/// typical block), on the heap beyond.
enum LabelBits {
    Inline([u64; 4]),
    Heap(Vec<u64>),
}

impl LabelBits {
    fn new(labels: u32) -> LabelBits {
        let words = (labels as usize).div_ceil(64);
        if words <= 4 {
            LabelBits::Inline([0; 4])
        } else {
            LabelBits::Heap(vec![0; words])
        }
    }

    fn words(&self) -> &[u64] {
        match self {
            LabelBits::Inline(w) => w,
            LabelBits::Heap(w) => w,
        }
    }

    /// Whether label `l` (in range) is set.
    fn get(&self, l: u32) -> bool {
        self.words()
            .get(l as usize / 64)
            .is_some_and(|w| w >> (l % 64) & 1 != 0)
    }

    /// Sets label `l` (in range).
    fn set(&mut self, l: u32) {
        let w = match self {
            LabelBits::Inline(w) => w.get_mut(l as usize / 64),
            LabelBits::Heap(w) => w.get_mut(l as usize / 64),
        };
        if let Some(w) = w {
            *w |= 1 << (l % 64);
        }
    }
}

impl BinOp {
    /// `a op b` at width `size`, result zero-extended (the IR's semantics of the op).
    pub fn eval(self, size: Size, a: u64, b: u64) -> u64 {
        let op = self;
        let bits = size.bits();
        let (ua, ub) = (size.trunc(a), size.trunc(b));
        let r = match op {
            BinOp::Add => ua.wrapping_add(ub),
            BinOp::Sub => ua.wrapping_sub(ub),
            BinOp::And => ua & ub,
            BinOp::Or => ua | ub,
            BinOp::Xor => ua ^ ub,
            BinOp::Shl => ua.checked_shl((ub % u64::from(bits)) as u32).unwrap_or(0),
            BinOp::Shr => ua >> (ub % u64::from(bits)),
            BinOp::Sar => (size.sext(ua) as i64 >> (ub % u64::from(bits))) as u64,
            BinOp::Rol => {
                let n = (ub % u64::from(bits)) as u32;
                if n == 0 {
                    ua
                } else {
                    (ua << n) | (ua >> (bits - n))
                }
            }
            BinOp::Ror => {
                let n = (ub % u64::from(bits)) as u32;
                if n == 0 {
                    ua
                } else {
                    (ua >> n) | (ua << (bits - n))
                }
            }
            BinOp::Mul => ua.wrapping_mul(ub),
            BinOp::MulHiU => ((u128::from(ua) * u128::from(ub)) >> bits) as u64,
            BinOp::MulHiS => {
                let p = i128::from(size.sext(ua) as i64) * i128::from(size.sext(ub) as i64);
                (p >> bits) as u64
            }
            BinOp::DivU => ua.checked_div(ub).unwrap_or(0),
            BinOp::RemU => ua.checked_rem(ub).unwrap_or(0),
            BinOp::DivS => (size.sext(ua) as i64)
                .checked_div(size.sext(ub) as i64)
                .unwrap_or(0) as u64,
            BinOp::RemS => (size.sext(ua) as i64)
                .checked_rem(size.sext(ub) as i64)
                .unwrap_or(0) as u64,
        };
        size.trunc(r)
    }
}

impl UnOp {
    /// `op a` at width `size`, result zero-extended (the IR's semantics of the op).
    pub fn eval(self, size: Size, a: u64) -> u64 {
        let op = self;
        let ua = size.trunc(a);
        let bits = size.bits();
        let r = match op {
            UnOp::Neg => ua.wrapping_neg(),
            UnOp::Not => !ua,
            UnOp::Bswap => ua.swap_bytes() >> (64 - bits),
            UnOp::Popcnt => u64::from(ua.count_ones()),
            UnOp::Ctz => {
                if ua == 0 {
                    u64::from(bits)
                } else {
                    u64::from(ua.trailing_zeros())
                }
            }
            UnOp::Clz => {
                if ua == 0 {
                    u64::from(bits)
                } else {
                    u64::from(ua.leading_zeros() - (64 - bits))
                }
            }
        };
        size.trunc(r)
    }
}

impl Op {
    /// Whether the op only computes a temp from temps (no global, memory, call or
    /// control flow): it cannot fault, observe or change guest state.
    pub fn is_arith(&self) -> bool {
        matches!(
            self,
            Op::Const { .. }
                | Op::Mov { .. }
                | Op::Bin { .. }
                | Op::Un { .. }
                | Op::Ext { .. }
                | Op::SetCond { .. }
                | Op::Select { .. }
        )
    }

    /// The temp the op assigns, if any.
    pub fn dst(&self) -> Option<Temp> {
        match self {
            Op::Const { dst, .. }
            | Op::Mov { dst, .. }
            | Op::Get { dst, .. }
            | Op::Bin { dst, .. }
            | Op::Un { dst, .. }
            | Op::Ext { dst, .. }
            | Op::SetCond { dst, .. }
            | Op::Select { dst, .. }
            | Op::Load { dst, .. } => Some(*dst),
            Op::Call { ret, .. } => *ret,
            _ => None,
        }
    }

    /// [`Op::for_each_read`] with each operand to rewrite in place.
    pub fn for_each_read_mut(&mut self, mut f: impl FnMut(&mut Temp)) {
        match self {
            Op::Mov { src, .. } | Op::Ext { src, .. } | Op::Set { src, .. } => f(src),
            Op::Bin { a, b, .. } | Op::SetCond { a, b, .. } => {
                f(a);
                f(b);
            }
            Op::Un { a, .. } => f(a),
            Op::Select { cond, a, b, .. } => {
                f(cond);
                f(a);
                f(b);
            }
            Op::Load { addr, .. } => f(addr),
            Op::Store { addr, val, .. } => {
                f(addr);
                f(val);
            }
            Op::BrIf { cond, .. } => f(cond),
            Op::Call { args, .. } => args.iter_mut().for_each(f),
            Op::Raise { error, .. } => error.iter_mut().for_each(f),
            Op::InsnStart { .. }
            | Op::Const { .. }
            | Op::Get { .. }
            | Op::Label(_)
            | Op::Br(_)
            | Op::Exit(_) => {}
        }
    }

    /// Calls `f` with every temp the op reads (its operands, not its result), without
    /// allocating.
    pub fn for_each_read(&self, mut f: impl FnMut(Temp)) {
        match self {
            Op::Mov { src, .. } | Op::Ext { src, .. } | Op::Set { src, .. } => f(*src),
            Op::Bin { a, b, .. } | Op::SetCond { a, b, .. } => {
                f(*a);
                f(*b);
            }
            Op::Un { a, .. } => f(*a),
            Op::Select { cond, a, b, .. } => {
                f(*cond);
                f(*a);
                f(*b);
            }
            Op::Load { addr, .. } => f(*addr),
            Op::Store { addr, val, .. } => {
                f(*addr);
                f(*val);
            }
            Op::BrIf { cond, .. } => f(*cond),
            Op::Call { args, .. } => args.iter().copied().for_each(f),
            Op::Raise { error, .. } => error.iter().copied().for_each(f),
            Op::InsnStart { .. }
            | Op::Const { .. }
            | Op::Get { .. }
            | Op::Label(_)
            | Op::Br(_)
            | Op::Exit(_) => {}
        }
    }
}

impl fmt::Display for Temp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "t{}", self.0)
    }
}

impl fmt::Display for Global {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Global::Gpr(n) => write!(f, "r{n}"),
            Global::Pc => write!(f, "pc"),
            Global::CcOp => write!(f, "cc_op"),
            Global::CcDst => write!(f, "cc_dst"),
            Global::CcSrc => write!(f, "cc_src"),
            Global::CcSrc2 => write!(f, "cc_src2"),
            Global::Flags => write!(f, "flags"),
            Global::SegBase(n) => write!(f, "segbase{n}"),
            Global::Xmm(n) => write!(f, "xmm{}.{}", n / 2, if n % 2 == 0 { "lo" } else { "hi" }),
        }
    }
}

fn size_suffix(s: Size) -> &'static str {
    match s {
        Size::B8 => "8",
        Size::B16 => "16",
        Size::B32 => "32",
        Size::B64 => "64",
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lc = |s: String| s.to_lowercase();
        match self {
            Op::InsnStart { pc, len } => write!(f, "---- {pc:#x} ({len} bytes)"),
            Op::Const { dst, value } => write!(f, "{dst} = {value:#x}"),
            Op::Mov { dst, src } => write!(f, "{dst} = {src}"),
            Op::Get { dst, src } => write!(f, "{dst} = {src}"),
            Op::Set { dst, src } => write!(f, "{dst} = {src}"),
            Op::Bin {
                op,
                size,
                dst,
                a,
                b,
            } => write!(
                f,
                "{dst} = {}{} {a}, {b}",
                lc(format!("{op:?}")),
                size_suffix(*size)
            ),
            Op::Un { op, size, dst, a } => {
                write!(
                    f,
                    "{dst} = {}{} {a}",
                    lc(format!("{op:?}")),
                    size_suffix(*size)
                )
            }
            Op::Ext {
                dst,
                src,
                from,
                signed,
            } => write!(
                f,
                "{dst} = {}ext{} {src}",
                if *signed { "s" } else { "z" },
                size_suffix(*from)
            ),
            Op::SetCond {
                cond,
                size,
                dst,
                a,
                b,
            } => write!(
                f,
                "{dst} = set{}{} {a}, {b}",
                lc(format!("{cond:?}")),
                size_suffix(*size)
            ),
            Op::Select { dst, cond, a, b } => write!(f, "{dst} = {cond} ? {a} : {b}"),
            Op::Load {
                dst,
                addr,
                size,
                signed,
                mmu,
                write,
            } => write!(
                f,
                "{dst} = ld{}{}{}.{} [{addr}]",
                if *signed { "s" } else { "u" },
                size_suffix(*size),
                if *write { "w" } else { "" },
                lc(format!("{mmu:?}"))
            ),
            Op::Store {
                addr,
                val,
                size,
                mmu,
            } => write!(
                f,
                "st{}.{} [{addr}] = {val}",
                size_suffix(*size),
                lc(format!("{mmu:?}"))
            ),
            Op::Label(l) => write!(f, "L{}:", l.0),
            Op::Br(l) => write!(f, "br L{}", l.0),
            Op::BrIf { cond, target } => write!(f, "br_if {cond}, L{}", target.0),
            Op::Call {
                helper, args, ret, ..
            } => {
                if let Some(r) = ret {
                    write!(f, "{r} = ")?;
                }
                write!(f, "call h{}(", helper.0)?;
                for (i, a) in args.iter().enumerate() {
                    if i > 0 {
                        write!(f, ", ")?;
                    }
                    write!(f, "{a}")?;
                }
                write!(f, ")")
            }
            Op::Raise { vector, error } => match error {
                Some(e) => write!(f, "raise #{vector} ({e})"),
                None => write!(f, "raise #{vector}"),
            },
            Op::Exit(k) => match k {
                ExitKind::Jump(pc) => write!(f, "exit jump {pc:#x}"),
                ExitKind::Indirect => write!(f, "exit indirect"),
                ExitKind::Sync => write!(f, "exit sync"),
                ExitKind::Halt => write!(f, "exit halt"),
                ExitKind::Pause(pc) => write!(f, "exit pause {pc:#x}"),
            },
        }
    }
}

impl fmt::Display for Block {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "block {:#x}: {} insns, {} bytes, {} temps",
            self.pc, self.insns, self.guest_len, self.temps
        )?;
        for op in &self.ops {
            match op {
                Op::InsnStart { .. } | Op::Label(_) => writeln!(f, " {op}")?,
                _ => writeln!(f, "    {op}")?,
            }
        }
        match self.tail {
            Tail::Plain => {}
            Tail::Call { ret } => writeln!(f, "    (a call, returning to {ret:#x})")?,
            Tail::Return => writeln!(f, "    (a return)")?,
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A zero extension of a value just zero-extended from as many bits or fewer is
    /// the value (no op); a sign extension of the same width, or a wider source, is
    /// not.
    #[test]
    fn extensions_of_extensions_fold_in_the_builder() {
        let mut b = Builder::new(0);
        let r = b.get(Global::Gpr(0));
        let z32 = b.ext(r, Size::B32, false);
        assert_eq!(b.ext(z32, Size::B32, false), z32);
        let z8 = b.ext(r, Size::B8, false);
        assert_eq!(b.ext(z8, Size::B16, true), z8);
        let z16 = b.ext(r, Size::B16, false);
        let s16 = b.ext(z16, Size::B16, true);
        assert_ne!(s16, z16);
        let z = b.ext(s16, Size::B8, false);
        assert_ne!(b.ext(z, Size::B8, true), z);
        let z32b = b.ext(r, Size::B32, false);
        assert_ne!(b.ext(z32b, Size::B16, false), z32b);
        let n = b.finish().ops.len();
        // get, then z32, z8, z16, s16, z, its sign extension, z32b, its narrowing.
        assert_eq!(n, 9);
    }

    #[test]
    fn sizes() {
        assert_eq!(Size::B16.sext(0x8000), 0xffff_ffff_ffff_8000);
        assert_eq!(Size::B32.trunc(u64::MAX), 0xffff_ffff);
        assert_eq!(Size::B64.mask(), u64::MAX);
        assert!(Cond::Lt.eval(Size::B8, 0x80, 0x7f));
        assert!(Cond::Gtu.eval(Size::B8, 0x80, 0x7f));
        assert!(Cond::Eq.eval(Size::B16, 0x1_0005, 5));
    }

    /// A block's guest length spans its furthest instruction, bytes skipped by a
    /// forward jump included.
    #[test]
    fn guest_length_spans_skipped_bytes() {
        let mut b = Builder::new(0x1ff0);
        b.insn_start(0x1ff0, 2);
        assert_eq!(b.block.guest_len, 2);
        b.insn_start(0x1ffa, 5);
        b.exit(ExitKind::Jump(0x1fff));
        let blk = b.finish();
        assert_eq!(blk.guest_len, 0xf);
        assert_eq!(blk.insns, 2);
    }

    /// Labels whose only way in is one branch of the same instruction, past code
    /// that cannot fall through (a check's `Raise`), and the cases that are not.
    #[test]
    fn labels_only_a_branch_reaches() {
        let mut b = Builder::new(0x1000);
        let (ok, two, fall, other_insn, back, never) = (
            b.label(),
            b.label(),
            b.label(),
            b.label(),
            b.label(),
            b.label(),
        );
        b.insn_start(0x1000, 3);
        let c = b.konst(1);
        b.br_if(c, ok); // 2
        b.raise(13, None);
        b.set_label(ok); // 4
        b.br_if(c, two); // 5
        b.br_if(c, two);
        b.raise(13, None);
        b.set_label(two);
        b.br_if(c, fall); // 9
        b.set_label(fall);
        b.br_if(c, other_insn); // 11
        b.raise(13, None);
        b.insn_start(0x1003, 1);
        b.exit(ExitKind::Jump(0x1004));
        b.set_label(other_insn);
        b.set_label(back); // 16
        b.br_if(c, back);
        b.br_if(c, never);
        b.exit(ExitKind::Jump(0x1004));
        let blk = b.finish();
        let only = blk.branch_only_labels();
        assert_eq!(only, vec![Some(2), None, None, None, None, None]);
        // The buffer version reuses what it is given.
        let mut out = vec![Some(7); 9];
        blk.branch_only_labels_into(&mut out);
        assert_eq!(out, only);
    }

    #[test]
    fn build_print_validate() {
        let mut b = Builder::new(0x1000);
        b.insn_start(0x1000, 3);
        let a = b.get(Global::Gpr(0));
        let c = b.bini(BinOp::Add, Size::B32, a, 5);
        b.set(Global::Gpr(0), c);
        let skip = b.label();
        let z = b.konst(0);
        let is_zero = b.setcond(Cond::Eq, Size::B32, c, z);
        b.br_if(is_zero, skip);
        let addr = b.konst(0x2000);
        b.store(addr, c, Size::B32, MmuIdx::Kernel);
        b.set_label(skip);
        b.exit(ExitKind::Jump(0x1003));
        let blk = b.finish();
        blk.validate().unwrap();
        let text = blk.to_string();
        assert!(text.contains("t2 = add32 t0, t1"), "{text}");
        assert!(text.contains("st32.kernel [t5] = t2"), "{text}");
        assert!(text.contains("exit jump 0x1003"), "{text}");
        assert_eq!(blk.insns, 1);

        let mut bad = Builder::new(0);
        let l = bad.label();
        bad.br(l);
        assert!(bad.finish().validate().is_err());
    }

    /// Each way a block can be malformed is caught, with what and where.
    #[test]
    fn validate_names_what_is_wrong() {
        let err = |ops: Vec<Op>, temps: u32, labels: u32| {
            let mut b = Builder::new(0).finish();
            (b.ops, b.temps, b.labels) = (ops, temps, labels);
            b.validate().err().unwrap_or_default()
        };
        let exit = Op::Exit(ExitKind::Halt);
        let (t0, t5) = (Temp(0), Temp(5));
        let ok = err(
            vec![Op::Br(Label(0)), Op::Label(Label(0)), exit.clone()],
            1,
            1,
        );
        assert_eq!(ok, "");
        let e = err(vec![Op::Label(Label(3)), exit.clone()], 1, 1);
        assert!(e.contains("label L3 out of range"), "{e}");
        let e = err(
            vec![Op::Label(Label(0)), Op::Label(Label(0)), exit.clone()],
            1,
            1,
        );
        assert!(e.contains("L0 defined twice"), "{e}");
        let e = err(
            vec![Op::Br(Label(1)), Op::Label(Label(0)), exit.clone()],
            1,
            2,
        );
        assert!(e.contains("undefined label L1"), "{e}");
        let e = err(
            vec![
                Op::BrIf {
                    cond: t0,
                    target: Label(7),
                },
                exit.clone(),
            ],
            1,
            2,
        );
        assert!(e.contains("undefined label L7"), "{e}");
        let e = err(vec![Op::Const { dst: t5, value: 1 }, exit.clone()], 2, 0);
        assert!(e.contains("temp t5 out of range"), "{e}");
        let e = err(vec![Op::Mov { dst: t0, src: t5 }, exit.clone()], 2, 0);
        assert!(e.contains("temp t5 out of range"), "{e}");
        let e = err(vec![Op::Const { dst: t0, value: 1 }], 1, 0);
        assert!(e.contains("does not end with an exit"), "{e}");
        // Beyond the inline label bits.
        let (l299, l298) = (Label(299), Label(298));
        let many = |target| vec![Op::Br(target), Op::Label(l299), exit.clone()];
        assert_eq!(err(many(l299), 1, 300), "");
        let e = err(many(l298), 1, 300);
        assert!(e.contains("undefined label L298"), "{e}");
    }
}
