//! The SSE instructions that are plain 64-bit work on the halves of the XMM registers
//! (`Global::Xmm`), done in IR with no helper call: the 128-bit moves (to, from and
//! between registers), the bitwise logic, PADDQ/PSUBQ, the qword unpacks and shuffles
//! (PUNPCKLQDQ/PUNPCKHQDQ, MOVLPS/MOVHPS/MOVHLPS/MOVLHPS and their PD forms), MOVQ and
//! MOVD, PSHUFD; and, as bit tricks on 64-bit halves, the byte/word/dword unpacks
//! (PUNPCKL/H BW, WD, DQ), PCMPEQB and PMOVMSKB (the core of the C library's SSE2
//! string functions: the unpacks and PSHUFD broadcast the byte searched for). Used when the mode says SSE passes its checks ([`super::Mode::sse_ok`]); a
//! memory operand is read before any register is written, so a fault leaves them.

use super::sse::{unaligned_ok, Kind};
use super::{Flow, Tr};
use iced_x86::Mnemonic;
use vireo_core::ir::{BinOp, Global, Size, Temp, UnOp};

/// The IR global of half `hi` (0 low, 1 high) of XMM register `r`.
fn half(r: u8, hi: u8) -> Global {
    Global::Xmm((r & 15) * 2 + hi)
}

impl Tr {
    fn xmm_get(&mut self, r: u8) -> (Temp, Temp) {
        (self.b.get(half(r, 0)), self.b.get(half(r, 1)))
    }

    fn xmm_set(&mut self, r: u8, lo: Temp, hi: Temp) {
        self.b.set(half(r, 0), lo);
        self.b.set(half(r, 1), hi);
    }

    /// A 128-bit source operand: a register, or memory (alignment checked).
    fn src128(&mut self, k: Kind) -> Option<(Temp, Temp)> {
        match k {
            Kind::Xmm(r) => Some(self.xmm_get(r)),
            Kind::Mem => {
                let mmu = self.m.mmu();
                let addr = self.sse_addr(false);
                let lo = self.b.load(addr, Size::B64, false, mmu);
                let a8 = self.plus8(addr);
                let hi = self.b.load(a8, Size::B64, false, mmu);
                Some((lo, hi))
            }
            _ => None,
        }
    }

    /// Translates `mn` with operands `kinds` in IR if it is one of this module's;
    /// `None` otherwise (nothing emitted).
    pub(super) fn sse_ir(&mut self, mn: Mnemonic, kinds: &[Kind]) -> Option<Flow> {
        use Mnemonic as M;
        let mmu = self.m.mmu();
        match (mn, kinds) {
            (
                M::Movaps | M::Movups | M::Movapd | M::Movupd | M::Movdqa | M::Movdqu | M::Lddqu,
                &[Kind::Xmm(d), s @ (Kind::Xmm(_) | Kind::Mem)],
            ) => {
                let (lo, hi) = self.src128(s)?;
                self.xmm_set(d, lo, hi);
            }
            (
                M::Movaps
                | M::Movups
                | M::Movapd
                | M::Movupd
                | M::Movdqa
                | M::Movdqu
                | M::Movntps
                | M::Movntpd
                | M::Movntdq,
                &[Kind::Mem, Kind::Xmm(s)],
            ) => {
                let addr = self.sse_addr(true);
                let a8 = self.plus8(addr);
                if unaligned_ok(mn) {
                    // Both qwords writable before either is written (the aligned
                    // forms are on one page).
                    self.b.load_for_write(addr, Size::B64, mmu);
                    self.b.load_for_write(a8, Size::B64, mmu);
                }
                let (lo, hi) = self.xmm_get(s);
                self.b.store(addr, lo, Size::B64, mmu);
                self.b.store(a8, hi, Size::B64, mmu);
            }
            (
                M::Pxor
                | M::Xorps
                | M::Xorpd
                | M::Por
                | M::Orps
                | M::Orpd
                | M::Pand
                | M::Andps
                | M::Andpd
                | M::Pandn
                | M::Andnps
                | M::Andnpd
                | M::Paddq
                | M::Psubq,
                &[Kind::Xmm(d), s @ (Kind::Xmm(_) | Kind::Mem)],
            ) => {
                let zeroing =
                    matches!(mn, M::Pxor | M::Xorps | M::Xorpd | M::Psubq) && s == Kind::Xmm(d);
                if zeroing {
                    let z = self.b.konst(0);
                    self.xmm_set(d, z, z);
                    return Some(Flow::Next);
                }
                let (slo, shi) = self.src128(s)?;
                let (mut dlo, mut dhi) = self.xmm_get(d);
                let op = match mn {
                    M::Pxor | M::Xorps | M::Xorpd => BinOp::Xor,
                    M::Por | M::Orps | M::Orpd => BinOp::Or,
                    M::Paddq => BinOp::Add,
                    M::Psubq => BinOp::Sub,
                    M::Pandn | M::Andnps | M::Andnpd => {
                        dlo = self.b.un(UnOp::Not, Size::B64, dlo);
                        dhi = self.b.un(UnOp::Not, Size::B64, dhi);
                        BinOp::And
                    }
                    _ => BinOp::And,
                };
                let lo = self.b.bin(op, Size::B64, dlo, slo);
                let hi = self.b.bin(op, Size::B64, dhi, shi);
                self.xmm_set(d, lo, hi);
            }
            (
                M::Punpcklbw
                | M::Punpcklwd
                | M::Punpckldq
                | M::Punpckhbw
                | M::Punpckhwd
                | M::Punpckhdq,
                &[Kind::Xmm(d), s @ (Kind::Xmm(_) | Kind::Mem)],
            ) => {
                let (slo, shi) = self.src128(s)?;
                let (dlo, dhi) = self.xmm_get(d);
                let (a, b) = if matches!(mn, M::Punpcklbw | M::Punpcklwd | M::Punpckldq) {
                    (dlo, slo)
                } else {
                    (dhi, shi)
                };
                let bits = match mn {
                    M::Punpcklbw | M::Punpckhbw => 8,
                    M::Punpcklwd | M::Punpckhwd => 16,
                    _ => 32,
                };
                // The low result half interleaves the low dwords of the two halves
                // chosen, the high result half their high dwords.
                let (a0, b0) = (self.low_dword(a), self.low_dword(b));
                let lo = self.interleave(a0, b0, bits);
                let a1 = self.b.bini(BinOp::Shr, Size::B64, a, 32);
                let b1 = self.b.bini(BinOp::Shr, Size::B64, b, 32);
                let hi = self.interleave(a1, b1, bits);
                self.xmm_set(d, lo, hi);
            }
            (M::Pshufd, &[Kind::Xmm(d), s @ (Kind::Xmm(_) | Kind::Mem), Kind::Imm]) => {
                let imm = self.i.immediate8();
                let (slo, shi) = self.src128(s)?;
                let dword = |tr: &mut Self, i: u8| {
                    let sel = imm >> (2 * i) & 3;
                    let half = if sel < 2 { slo } else { shi };
                    if sel & 1 == 0 {
                        tr.low_dword(half)
                    } else {
                        tr.b.bini(BinOp::Shr, Size::B64, half, 32)
                    }
                };
                let pair = |tr: &mut Self, i: u8| {
                    let l = dword(tr, i);
                    let h = dword(tr, i + 1);
                    let h = tr.b.bini(BinOp::Shl, Size::B64, h, 32);
                    tr.b.bin(BinOp::Or, Size::B64, l, h)
                };
                let lo = pair(self, 0);
                let hi = pair(self, 2);
                self.xmm_set(d, lo, hi);
            }
            (M::Punpcklqdq, &[Kind::Xmm(d), s @ (Kind::Xmm(_) | Kind::Mem)]) => {
                let (slo, _) = self.src128(s)?;
                self.b.set(half(d, 1), slo);
            }
            (M::Punpckhqdq, &[Kind::Xmm(d), s @ (Kind::Xmm(_) | Kind::Mem)]) => {
                let (_, shi) = self.src128(s)?;
                let dhi = self.b.get(half(d, 1));
                self.xmm_set(d, dhi, shi);
            }
            (M::Movlps | M::Movlpd | M::Movhps | M::Movhpd, &[Kind::Xmm(d), Kind::Mem]) => {
                let addr = self.sse_addr(false);
                let v = self.b.load(addr, Size::B64, false, mmu);
                let h = u8::from(matches!(mn, M::Movhps | M::Movhpd));
                self.b.set(half(d, h), v);
            }
            (M::Movlps | M::Movlpd | M::Movhps | M::Movhpd, &[Kind::Mem, Kind::Xmm(s)]) => {
                let addr = self.sse_addr(true);
                let h = u8::from(matches!(mn, M::Movhps | M::Movhpd));
                let v = self.b.get(half(s, h));
                self.b.store(addr, v, Size::B64, mmu);
            }
            (M::Movhlps, &[Kind::Xmm(d), Kind::Xmm(s)]) => {
                let v = self.b.get(half(s, 1));
                self.b.set(half(d, 0), v);
            }
            (M::Movlhps, &[Kind::Xmm(d), Kind::Xmm(s)]) => {
                let v = self.b.get(half(s, 0));
                self.b.set(half(d, 1), v);
            }
            // MOVQ/MOVD into a register: the element, the rest zeroed.
            (M::Movq | M::Movd, &[Kind::Xmm(d), s @ (Kind::Xmm(_) | Kind::Mem | Kind::Gpr)]) => {
                let size = if mn == M::Movq { Size::B64 } else { Size::B32 };
                let v = match s {
                    Kind::Xmm(r) if mn == M::Movq => self.b.get(half(r, 0)),
                    Kind::Mem | Kind::Gpr => {
                        let o = self.operand(1, false);
                        self.read(o, size)
                    }
                    _ => return None,
                };
                let z = self.b.konst(0);
                self.xmm_set(d, v, z);
            }
            // MOVQ/MOVD out of a register: its low element.
            (M::Movq | M::Movd, &[Kind::Mem | Kind::Gpr, Kind::Xmm(s)]) => {
                let size = if mn == M::Movq { Size::B64 } else { Size::B32 };
                let o = self.operand(0, true);
                let v = self.b.get(half(s, 0));
                self.write(o, size, v);
            }
            (M::Pcmpeqb, &[Kind::Xmm(d), s @ (Kind::Xmm(_) | Kind::Mem)]) => {
                let (slo, shi) = self.src128(s)?;
                let (dlo, dhi) = self.xmm_get(d);
                let lo = self.bytes_equal(dlo, slo);
                let hi = self.bytes_equal(dhi, shi);
                self.xmm_set(d, lo, hi);
            }
            (M::Pmovmskb, &[Kind::Gpr, Kind::Xmm(s)]) => {
                let (lo, hi) = self.xmm_get(s);
                let lo = self.sign_bits(lo);
                let hi = self.sign_bits(hi);
                let hi = self.b.bini(BinOp::Shl, Size::B64, hi, 8);
                let mask = self.b.bin(BinOp::Or, Size::B64, lo, hi);
                let size = if self.i.op0_register().is_gpr64() {
                    Size::B64
                } else {
                    Size::B32
                };
                let o = self.operand(0, true);
                self.write(o, size, mask);
            }
            _ => return None,
        }
        Some(Flow::Next)
    }

    /// The low 32 bits of `v`, zero-extended.
    fn low_dword(&mut self, v: Temp) -> Temp {
        self.b.ext(v, Size::B32, false)
    }

    /// The elements (`bits` wide) of the 32-bit values `a` and `b` interleaved into
    /// 64 bits, `a`'s first (a PUNPCK half): each spread to every other element,
    /// `b`'s shifted up by one.
    fn interleave(&mut self, a: Temp, b: Temp, bits: u32) -> Temp {
        let a = self.spread(a, bits);
        let b = self.spread(b, bits);
        let b = self.b.bini(BinOp::Shl, Size::B64, b, u64::from(bits));
        self.b.bin(BinOp::Or, Size::B64, a, b)
    }

    /// The `bits`-wide elements of the 32-bit value `x` moved to every other element
    /// of 64 bits (zeros between).
    fn spread(&mut self, x: Temp, bits: u32) -> Temp {
        if bits == 32 {
            return x;
        }
        let t = self.b.bini(BinOp::Shl, Size::B64, x, 16);
        let t = self.b.bin(BinOp::Or, Size::B64, x, t);
        let t = self.b.bini(BinOp::And, Size::B64, t, 0x0000_ffff_0000_ffff);
        if bits == 16 {
            return t;
        }
        let u = self.b.bini(BinOp::Shl, Size::B64, t, 8);
        let u = self.b.bin(BinOp::Or, Size::B64, t, u);
        self.b.bini(BinOp::And, Size::B64, u, 0x00ff_00ff_00ff_00ff)
    }

    /// 0xff in each byte where `a` and `b` are equal, else 0 (PCMPEQB on a half):
    /// with x = a ^ b, a byte's top bit of `(x & 7f..) + 7f.. | x` is set iff the byte
    /// is not zero (the sum carries out of no byte).
    fn bytes_equal(&mut self, a: Temp, b: Temp) -> Temp {
        const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
        let x = self.b.bin(BinOp::Xor, Size::B64, a, b);
        let m = self.b.bini(BinOp::And, Size::B64, x, LOW7);
        let y = self.b.bini(BinOp::Add, Size::B64, m, LOW7);
        let y = self.b.bin(BinOp::Or, Size::B64, y, x);
        let n = self.b.un(UnOp::Not, Size::B64, y);
        // 0x80 in each equal byte; minus its 0x01s, or itself: 0xff.
        let z = self.b.bini(BinOp::And, Size::B64, n, !LOW7);
        let ones = self.b.bini(BinOp::Shr, Size::B64, z, 7);
        let f = self.b.bin(BinOp::Sub, Size::B64, z, ones);
        self.b.bin(BinOp::Or, Size::B64, f, z)
    }

    /// The top bits of the eight bytes of `v`, byte i's as bit i (PMOVMSKB on a
    /// half): the bits moved to the bottom of their bytes, then gathered into the top
    /// byte by one multiplication (every partial product lands on its own bit).
    fn sign_bits(&mut self, v: Temp) -> Temp {
        let t = self.b.bini(BinOp::Shr, Size::B64, v, 7);
        let t = self.b.bini(BinOp::And, Size::B64, t, 0x0101_0101_0101_0101);
        let t = self.b.bini(BinOp::Mul, Size::B64, t, 0x0102_0408_1020_4080);
        self.b.bini(BinOp::Shr, Size::B64, t, 56)
    }
}
