//! Integer helpers: the parts of general-purpose instructions that are simpler in Rust
//! than in IR (flag evaluation, division with #DE, BCD adjustments, rotates through
//! carry, CRC32) and the segment-limit check of non-flat segments.
//!
//! [`IntHelper`] is the contract between the translator and this table, like
//! [`super::system::SysHelper`]. Helpers that update the arithmetic flags store them
//! in [`X86Cpu::cc`] as `Eflags` (the translator forgets what it knew about `cc_op`).

use super::{HelperDef, INTEGER_BASE};
use crate::cpu::X86Cpu;
use crate::flags::{self, ARITH, CC_EFLAGS};
use vireo_core::cpu::flags::{AF, CF, OF, PF, SF, ZF};
use vireo_core::cpu::{ctl, sreg};
use vireo_core::exec::Fault;
use vireo_core::ir::{Effects, HelperId, Size};

/// The integer helpers, in table order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum IntHelper {
    /// `(cc_op, cc_dst, cc_src, cc_src2) -> rflags`: the six arithmetic flags (pure).
    ComputeEflags,
    /// `(sreg, offset, size | write << 8)`: segment limit and type check of an access
    /// through a segment that is not flat (16/32-bit modes only). #GP(0), or #SS(0)
    /// for SS.
    SegCheck,
    /// `(sreg, selector)`: segment load in real or V86 mode (base = selector << 4;
    /// V86 also resets the limit and attributes). Loading SS sets the interrupt
    /// shadow (the translator ends the block after it).
    LoadSegReal,
    /// `(sreg) -> selector`: the visible part of a segment register.
    ReadSel,
    /// `(divisor, size_code | signed << 2)`: DIV/IDIV of rDX:rAX (AX for bytes) with
    /// #DE on a zero divisor or quotient overflow; writes the quotient and remainder.
    Div,
    /// `(value, count, size_code | right << 2) -> result`: RCL (right = 0) / RCR
    /// (right = 1) with the count already masked to 5/6 bits. Updates CF and OF (count
    /// 0 leaves the flags alone).
    Rcx,
    /// `(op)`: DAA (0), DAS (1), AAA (2), AAS (3) on AL/AX with the flags.
    Bcd,
    /// `(op, imm)`: AAM (0, #DE on imm 0) / AAD (1).
    AamAad,
    /// `() -> cr0`: SMSW (#GP(0) at CPL > 0 with CR4.UMIP).
    Smsw,
    /// `(crc, data, bytes) -> crc`: CRC32 (pure): the CRC-32C of the low `bytes`
    /// bytes of `data` continued from the low 32 bits of `crc`.
    Crc32,
    /// `(cc_op, cc_dst, cc_src, cc_src2) -> 0 | 1`: CF alone (pure; what INC and DEC
    /// keep when the flag-setting operation is not known at translation time).
    ComputeCarry,
}

impl IntHelper {
    /// The IR helper id.
    pub const fn id(self) -> HelperId {
        HelperId(INTEGER_BASE + self as u16)
    }
    /// The helper's declared effects.
    pub fn effects(self) -> Effects {
        TABLE[self as usize].effects
    }
}

const fn size_of_code(code: u64) -> Size {
    match code & 3 {
        0 => Size::B8,
        1 => Size::B16,
        2 => Size::B32,
        _ => Size::B64,
    }
}

fn arg(args: &[u64], i: usize) -> u64 {
    args.get(i).copied().unwrap_or(0)
}

fn compute_carry(_cpu: &mut X86Cpu, args: &[u64]) -> Result<u64, Fault> {
    Ok(flags::carry(
        arg(args, 0),
        arg(args, 1),
        arg(args, 2),
        arg(args, 3),
    ))
}

fn compute_eflags(_cpu: &mut X86Cpu, args: &[u64]) -> Result<u64, Fault> {
    Ok(flags::compute(
        arg(args, 0),
        arg(args, 1),
        arg(args, 2),
        arg(args, 3),
    ))
}

/// Current arithmetic flags of the CPU.
fn cur_flags(cpu: &X86Cpu) -> u64 {
    flags::compute(cpu.cc.op, cpu.cc.dst, cpu.cc.src, cpu.cc.src2)
}

fn set_flags(cpu: &mut X86Cpu, f: u64) {
    cpu.cc.op = CC_EFLAGS;
    cpu.cc.src = f & ARITH;
}

fn parity(v: u64) -> u64 {
    if (v as u8).count_ones().is_multiple_of(2) {
        PF
    } else {
        0
    }
}

fn szp(size: Size, v: u64) -> u64 {
    let v = size.trunc(v);
    parity(v) | if v == 0 { ZF } else { 0 } | if v & size.sign_bit() != 0 { SF } else { 0 }
}

fn seg_check(cpu: &mut X86Cpu, args: &[u64]) -> Result<u64, Fault> {
    let s = (arg(args, 0) % 6) as usize;
    let off = arg(args, 1);
    let size = arg(args, 2) & 0xff;
    let write = arg(args, 2) & 0x100 != 0;
    let seg = cpu.state.seg[s];
    let vector = if s == sreg::SS { 12 } else { 13 };
    let fault = Err(Fault::with_error(vector, 0));
    let pe = cpu.state.cr0 & ctl::CR0_PE != 0;
    let v86 = cpu.state.rflags & vireo_core::cpu::flags::VM != 0;
    let last = off.wrapping_add(size.max(1) - 1);
    if pe && !v86 {
        if seg.unusable || !seg.present {
            return fault;
        }
        let code = seg.type_ & 8 != 0;
        if write && (code || seg.type_ & 2 == 0) {
            return fault;
        }
        if !write && code && seg.type_ & 2 == 0 {
            return fault;
        }
        if !code && seg.type_ & 4 != 0 {
            // Expand-down: valid offsets are limit+1 ..= 0xFFFF or 0xFFFFFFFF.
            let upper = if seg.db { 0xffff_ffff } else { 0xffff };
            if off <= u64::from(seg.limit) || last > upper || last < off {
                return fault;
            }
            return Ok(0);
        }
    }
    if last > u64::from(seg.limit) || last < off {
        return fault;
    }
    Ok(0)
}

fn load_seg_real(cpu: &mut X86Cpu, args: &[u64]) -> Result<u64, Fault> {
    let s = (arg(args, 0) % 6) as usize;
    let sel = arg(args, 1) as u16;
    let v86 = cpu.state.rflags & vireo_core::cpu::flags::VM != 0;
    let seg = &mut cpu.state.seg[s];
    seg.selector = sel;
    seg.base = u64::from(sel) << 4;
    if v86 {
        *seg = vireo_core::cpu::Segment {
            dpl: 3,
            ..vireo_core::cpu::Segment::real_mode(sel, s == sreg::CS)
        };
    }
    if s == sreg::SS {
        cpu.state.events.interrupt_shadow = true;
    }
    Ok(0)
}

fn read_sel(cpu: &mut X86Cpu, args: &[u64]) -> Result<u64, Fault> {
    Ok(u64::from(
        cpu.state.seg[(arg(args, 0) % 6) as usize].selector,
    ))
}

fn set_gpr_sized(cpu: &mut X86Cpu, r: usize, size: Size, v: u64) {
    let old = cpu.state.gpr[r];
    cpu.state.gpr[r] = match size {
        Size::B8 => (old & !0xff) | (v & 0xff),
        Size::B16 => (old & !0xffff) | (v & 0xffff),
        Size::B32 => v & 0xffff_ffff,
        Size::B64 => v,
    };
}

fn div(cpu: &mut X86Cpu, args: &[u64]) -> Result<u64, Fault> {
    let size = size_of_code(arg(args, 1));
    let signed = arg(args, 1) & 4 != 0;
    let divisor = size.trunc(arg(args, 0));
    let de = Err(Fault::new(0));
    if divisor == 0 {
        return de;
    }
    let rax = cpu.state.gpr[0];
    let rdx = cpu.state.gpr[2];
    let bits = size.bits();
    // The double-width dividend.
    let dividend: u128 = match size {
        Size::B8 => u128::from(rax & 0xffff),
        _ => (u128::from(size.trunc(rdx)) << bits) | u128::from(size.trunc(rax)),
    };
    let (q, r) = if signed {
        let dw = 2 * bits;
        let sd = ((dividend << (128 - dw)) as i128) >> (128 - dw);
        let sv = i128::from(size.sext(divisor) as i64);
        let q = sd.checked_div(sv).ok_or(Fault::new(0))?;
        let r = sd.checked_rem(sv).ok_or(Fault::new(0))?;
        let lim = 1i128 << (bits - 1);
        if q >= lim || q < -lim {
            return de;
        }
        (q as u64, r as u64)
    } else {
        let q = dividend / u128::from(divisor);
        let r = dividend % u128::from(divisor);
        if q > u128::from(size.mask()) {
            return de;
        }
        (q as u64, r as u64)
    };
    match size {
        Size::B8 => {
            let ax = (q & 0xff) | ((r & 0xff) << 8);
            set_gpr_sized(cpu, 0, Size::B16, ax);
        }
        _ => {
            set_gpr_sized(cpu, 0, size, q);
            set_gpr_sized(cpu, 2, size, r);
        }
    }
    Ok(0)
}

fn rcx(cpu: &mut X86Cpu, args: &[u64]) -> Result<u64, Fault> {
    let size = size_of_code(arg(args, 2));
    let right = arg(args, 2) & 4 != 0;
    let val = size.trunc(arg(args, 0));
    let bits = size.bits();
    // RCL/RCR rotate through bits+1 positions.
    let count = (arg(args, 1) % u64::from(bits + 1)) as u32;
    let f = cur_flags(cpu);
    if arg(args, 1) == 0 {
        return Ok(val);
    }
    let mut cf = f & CF;
    let mut v = val;
    let msb = size.sign_bit();
    for _ in 0..count {
        if right {
            let out = v & 1;
            v = (v >> 1) | if cf != 0 { msb } else { 0 };
            cf = out;
        } else {
            let out = u64::from(v & msb != 0);
            v = size.trunc(v << 1) | cf;
            cf = out;
        }
    }
    let of = if right {
        // MSB xor the bit below it of the result.
        ((v >> (bits - 1)) ^ (v >> (bits - 2))) & 1
    } else {
        u64::from(v & msb != 0) ^ cf
    };
    let nf = (f & !(CF | OF)) | cf | if of != 0 { OF } else { 0 };
    set_flags(cpu, nf);
    Ok(v)
}

fn bcd(cpu: &mut X86Cpu, args: &[u64]) -> Result<u64, Fault> {
    let f = cur_flags(cpu);
    let ax = cpu.state.gpr[0] & 0xffff;
    let al = ax & 0xff;
    let cf = f & CF != 0;
    let af = f & AF != 0;
    match arg(args, 0) {
        0 | 1 => {
            // DAA / DAS, as the SDM pseudo-code (OF undefined: computed as on Intel,
            // from the sign change of AL).
            let das = arg(args, 0) == 1;
            let mut nal = al;
            let mut ncf = false;
            let mut naf = false;
            if (al & 0xf) > 9 || af {
                nal = if das {
                    ncf = cf || al < 6;
                    nal.wrapping_sub(6) & 0xff
                } else {
                    ncf = cf || al + 6 > 0xff;
                    (nal + 6) & 0xff
                };
                naf = true;
            }
            if al > 0x99 || cf {
                nal = if das {
                    nal.wrapping_sub(0x60) & 0xff
                } else {
                    (nal + 0x60) & 0xff
                };
                ncf = true;
            }
            let of = if das {
                (al & !nal & 0x80) != 0
            } else {
                (!al & nal & 0x80) != 0
            };
            set_gpr_sized(cpu, 0, Size::B8, nal);
            let nf = szp(Size::B8, nal)
                | if ncf { CF } else { 0 }
                | if naf { AF } else { 0 }
                | if of { OF } else { 0 };
            set_flags(cpu, nf);
        }
        op => {
            // AAA / AAS.
            let aas = op == 3;
            let adjust = (al & 0xf) > 9 || af;
            let nax = if adjust {
                if aas {
                    let a = ax.wrapping_sub(6) & 0xffff;
                    let ah2 = ((a >> 8).wrapping_sub(1)) & 0xff;
                    (ah2 << 8) | (a & 0xf)
                } else {
                    let a = (ax + 0x106) & 0xffff;
                    a & 0xff0f
                }
            } else {
                ax & 0xff0f
            };
            set_gpr_sized(cpu, 0, Size::B16, nax);
            // SF/ZF/PF/OF are undefined: computed from the AL result as on Intel.
            let nf = szp(Size::B8, nax & 0xff) | if adjust { CF | AF } else { 0 };
            set_flags(cpu, nf);
        }
    }
    Ok(0)
}

fn aam_aad(cpu: &mut X86Cpu, args: &[u64]) -> Result<u64, Fault> {
    let imm = arg(args, 1) & 0xff;
    let ax = cpu.state.gpr[0] & 0xffff;
    let al = ax & 0xff;
    let nax = if arg(args, 0) == 0 {
        if imm == 0 {
            return Err(Fault::new(0));
        }
        ((al / imm) << 8) | (al % imm)
    } else {
        ((ax >> 8) * imm + al) & 0xff
    };
    set_gpr_sized(cpu, 0, Size::B16, nax);
    // Flags from AL (OF, AF, CF undefined: cleared).
    set_flags(cpu, szp(Size::B8, nax));
    Ok(0)
}

fn smsw(cpu: &mut X86Cpu, _args: &[u64]) -> Result<u64, Fault> {
    const CR4_UMIP: u64 = 1 << 11;
    if cpu.state.cr4 & CR4_UMIP != 0 && cpu.state.cpl() > 0 {
        return Err(Fault::with_error(13, 0));
    }
    Ok(cpu.state.cr0)
}

/// CRC-32C (Castagnoli) of `bytes` bytes of `data` (least significant first) from
/// `crc`: the SSE4.2 CRC32 instruction, polynomial 0x1EDC6F41 in its bit-reflected
/// form 0x82F63B78, without initial or final inversion.
pub fn crc32c(crc: u32, data: u64, bytes: u32) -> u32 {
    let mut c = crc;
    for i in 0..bytes.min(8) {
        c ^= (data >> (8 * i)) as u8 as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                c >> 1 ^ 0x82f6_3b78
            } else {
                c >> 1
            };
        }
    }
    c
}

fn crc32(_cpu: &mut X86Cpu, args: &[u64]) -> Result<u64, Fault> {
    Ok(u64::from(crc32c(
        arg(args, 0) as u32,
        arg(args, 1),
        arg(args, 2) as u32,
    )))
}

const PURE: Effects = Effects::PURE;
const FAULT_ONLY: Effects = Effects {
    reads_globals: false,
    writes_globals: false,
    may_fault: true,
    ends_block: false,
};
const REG: Effects = Effects {
    reads_globals: true,
    writes_globals: true,
    may_fault: false,
    ends_block: false,
};

/// Indexed by `IntHelper as u16`.
pub static TABLE: &[HelperDef] = &[
    HelperDef {
        name: "compute_eflags",
        f: compute_eflags,
        effects: PURE,
    },
    HelperDef {
        name: "seg_check",
        f: seg_check,
        effects: FAULT_ONLY,
    },
    HelperDef {
        name: "load_seg_real",
        f: load_seg_real,
        effects: REG,
    },
    HelperDef {
        name: "read_sel",
        f: read_sel,
        effects: Effects {
            reads_globals: true,
            ..PURE
        },
    },
    HelperDef {
        name: "div",
        f: div,
        effects: Effects::ALL,
    },
    HelperDef {
        name: "rcx",
        f: rcx,
        effects: REG,
    },
    HelperDef {
        name: "bcd",
        f: bcd,
        effects: REG,
    },
    HelperDef {
        name: "aam_aad",
        f: aam_aad,
        effects: Effects::ALL,
    },
    HelperDef {
        name: "smsw",
        f: smsw,
        effects: FAULT_ONLY,
    },
    HelperDef {
        name: "crc32",
        f: crc32,
        effects: PURE,
    },
    HelperDef {
        name: "compute_carry",
        f: compute_carry,
        effects: PURE,
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_matches_enum() {
        assert_eq!(TABLE.len(), IntHelper::ComputeCarry as usize + 1);
        assert_eq!(
            TABLE[IntHelper::ComputeCarry as usize].name,
            "compute_carry"
        );
        assert_eq!(TABLE[IntHelper::Smsw as usize].name, "smsw");
        assert_eq!(TABLE[IntHelper::Crc32 as usize].name, "crc32");
        assert_eq!(
            TABLE[IntHelper::ComputeEflags as usize].name,
            "compute_eflags"
        );
        assert_eq!(TABLE[IntHelper::SegCheck as usize].name, "seg_check");
        assert_eq!(TABLE[IntHelper::LoadSegReal as usize].name, "load_seg_real");
        assert_eq!(TABLE[IntHelper::ReadSel as usize].name, "read_sel");
        assert_eq!(TABLE[IntHelper::Div as usize].name, "div");
        assert_eq!(TABLE[IntHelper::Rcx as usize].name, "rcx");
        assert_eq!(TABLE[IntHelper::Bcd as usize].name, "bcd");
        assert_eq!(TABLE[IntHelper::AamAad as usize].name, "aam_aad");
    }

    #[test]
    fn crc32c_check_value() {
        // The CRC-32C check value: "123456789" from !0, inverted at the end.
        let c = b"123456789"
            .iter()
            .fold(!0u32, |c, &b| crc32c(c, u64::from(b), 1));
        assert_eq!(!c, 0xe306_9283);
        // The same bytes as one qword plus a byte.
        let q = u64::from_le_bytes(*b"12345678");
        assert_eq!(!crc32c(crc32c(!0, q, 8), u64::from(b'9'), 1), 0xe306_9283);
    }
}
