//! The x87 80-bit extended format: classification, special values, and conversions
//! to and from the memory formats (binary32, binary64, integers, packed BCD).

use super::softfloat::{self as sf, Ctx, Format, Rounded, Unpacked};

/// An 80-bit extended value as stored: sign, 15-bit biased exponent, 64-bit
/// significand with an explicit integer bit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Ext {
    pub sign: bool,
    pub exp: u16,
    pub sig: u64,
}

/// What an extended value is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Zero,
    /// Exponent 0 with a non-zero significand (including pseudo-denormals).
    Denormal,
    Normal,
    Inf,
    QNan,
    SNan,
    /// Unnormals, pseudo-NaNs, pseudo-infinities: invalid operands since the 387.
    Unsupported,
}

pub const BIAS: i32 = 16383;
const INT_BIT: u64 = 1 << 63;
const QUIET: u64 = 1 << 62;

impl Ext {
    /// The "real indefinite" QNaN of masked invalid operations.
    pub const INDEFINITE: Ext = Ext {
        sign: true,
        exp: 0x7fff,
        sig: 0xc000_0000_0000_0000,
    };
    pub const ZERO: Ext = Ext {
        sign: false,
        exp: 0,
        sig: 0,
    };
    pub const ONE: Ext = Ext {
        sign: false,
        exp: 0x3fff,
        sig: INT_BIT,
    };

    pub fn inf(sign: bool) -> Ext {
        Ext {
            sign,
            exp: 0x7fff,
            sig: INT_BIT,
        }
    }

    pub fn zero(sign: bool) -> Ext {
        Ext {
            sign,
            exp: 0,
            sig: 0,
        }
    }

    /// From the low 64 bits (significand) and the high 16 (sign and exponent).
    pub fn from_parts(lo: u64, hi: u64) -> Ext {
        Ext {
            sign: hi & 0x8000 != 0,
            exp: (hi & 0x7fff) as u16,
            sig: lo,
        }
    }

    /// The high 16 bits (sign and exponent).
    pub fn hi(self) -> u64 {
        u64::from(self.exp) | if self.sign { 0x8000 } else { 0 }
    }

    /// From a 16-byte register slot (value in the low 10 bytes).
    pub fn from_slot(s: &[u8; 16]) -> Ext {
        let mut lo = [0u8; 8];
        lo.copy_from_slice(&s[..8]);
        let hi = u16::from_le_bytes([s[8], s[9]]);
        Ext::from_parts(u64::from_le_bytes(lo), u64::from(hi))
    }

    /// The 16-byte register slot (upper 6 bytes zero).
    pub fn to_slot(self) -> [u8; 16] {
        let mut s = [0u8; 16];
        s[..8].copy_from_slice(&self.sig.to_le_bytes());
        s[8..10].copy_from_slice(&(self.hi() as u16).to_le_bytes());
        s
    }

    /// The 10 bytes of memory format.
    pub fn to_bytes(self) -> [u8; 10] {
        let mut b = [0u8; 10];
        b.copy_from_slice(&self.to_slot()[..10]);
        b
    }

    pub fn class(self) -> Class {
        let int = self.sig & INT_BIT != 0;
        match self.exp {
            0 if self.sig == 0 => Class::Zero,
            0 => Class::Denormal,
            0x7fff if !int => Class::Unsupported,
            0x7fff if self.sig << 1 == 0 => Class::Inf,
            0x7fff if self.sig & QUIET != 0 => Class::QNan,
            0x7fff => Class::SNan,
            _ if !int => Class::Unsupported,
            _ => Class::Normal,
        }
    }

    pub fn is_nan(self) -> bool {
        matches!(self.class(), Class::QNan | Class::SNan)
    }

    /// The value unpacked for the soft-float (finite classes only; zero gives
    /// `sig == 0`).
    pub fn unpack(self) -> Unpacked {
        let exp = i32::from(self.exp.max(1)) - BIAS;
        Unpacked {
            sign: self.sign,
            exp,
            sig: u128::from(self.sig) << 64,
        }
    }

    /// Packs a rounded extended result.
    pub fn from_rounded(r: Rounded) -> Ext {
        match r {
            Rounded::Inf(s) => Ext::inf(s),
            Rounded::Finite(u) if u.sig == 0 => Ext::zero(u.sign),
            Rounded::Finite(u) => {
                let exp = if u.sig >> 127 != 0 {
                    (u.exp + BIAS) as u16
                } else {
                    0
                };
                Ext {
                    sign: u.sign,
                    exp,
                    sig: (u.sig >> 64) as u64,
                }
            }
        }
    }

    /// The NaN quieted.
    pub fn quiet(self) -> Ext {
        Ext {
            sig: self.sig | QUIET,
            ..self
        }
    }

    /// Exact conversion of an integer.
    pub fn from_i64(v: i64) -> Ext {
        if v == 0 {
            return Ext::ZERO;
        }
        let m = v.unsigned_abs();
        let lz = m.leading_zeros();
        Ext {
            sign: v < 0,
            exp: (BIAS + 63 - lz as i32) as u16,
            sig: m << lz,
        }
    }

    /// Rounds a finite value to the extended format at precision `prec`.
    pub fn round(ctx: &mut Ctx, u: Unpacked, prec: u32) -> Ext {
        Ext::from_rounded(sf::round_pack(ctx, u.sign, u.exp, u.sig, sf::ext(prec)))
    }
}

/// An IEEE interchange format (binary32 or binary64).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ieee {
    pub ebits: u32,
    pub fbits: u32,
    pub fmt: Format,
}

pub const F32: Ieee = Ieee {
    ebits: 8,
    fbits: 23,
    fmt: sf::SINGLE,
};
pub const F64: Ieee = Ieee {
    ebits: 11,
    fbits: 52,
    fmt: sf::DOUBLE,
};

impl Ieee {
    fn bias(self) -> i32 {
        (1 << (self.ebits - 1)) - 1
    }
    fn emax_biased(self) -> u64 {
        (1 << self.ebits) - 1
    }

    /// Exact widening of an IEEE value to extended (SNaNs stay signalling).
    pub fn to_ext(self, bits: u64) -> Ext {
        let sign = bits >> (self.ebits + self.fbits) & 1 != 0;
        let e = bits >> self.fbits & self.emax_biased();
        let frac = bits & ((1u64 << self.fbits) - 1);
        let shift = 63 - self.fbits;
        if e == self.emax_biased() {
            return Ext {
                sign,
                exp: 0x7fff,
                sig: INT_BIT | frac << shift,
            };
        }
        if e == 0 {
            if frac == 0 {
                return Ext::zero(sign);
            }
            // Denormal: normalise (representable as a normal extended value).
            let lz = frac.leading_zeros();
            let sig = frac << lz;
            let exp = 1 - self.bias() - (lz as i32 - (63 - self.fbits as i32));
            return Ext {
                sign,
                exp: (exp + BIAS) as u16,
                sig,
            };
        }
        Ext {
            sign,
            exp: (e as i32 - self.bias() + BIAS) as u16,
            sig: INT_BIT | frac << shift,
        }
    }

    /// Whether `bits` is a denormal of this format.
    pub fn is_denormal(self, bits: u64) -> bool {
        bits >> self.fbits & self.emax_biased() == 0 && bits & ((1u64 << self.fbits) - 1) != 0
    }

    /// Whether `bits` is a signalling NaN of this format.
    pub fn is_snan(self, bits: u64) -> bool {
        bits >> self.fbits & self.emax_biased() == self.emax_biased()
            && bits & ((1u64 << self.fbits) - 1) != 0
            && bits >> (self.fbits - 1) & 1 == 0
    }

    /// Whether `bits` is a NaN of this format.
    pub fn is_nan(self, bits: u64) -> bool {
        bits >> self.fbits & self.emax_biased() == self.emax_biased()
            && bits & ((1u64 << self.fbits) - 1) != 0
    }

    /// Packs a rounded result.
    pub fn pack(self, r: Rounded) -> u64 {
        let sign_bit = 1u64 << (self.ebits + self.fbits);
        match r {
            Rounded::Inf(s) => (u64::from(s) * sign_bit) | (self.emax_biased() << self.fbits),
            Rounded::Finite(u) => {
                let s = u64::from(u.sign) * sign_bit;
                if u.sig == 0 {
                    return s;
                }
                let frac = (u.sig >> (127 - self.fbits)) as u64 & ((1u64 << self.fbits) - 1);
                let e = if u.sig >> 127 != 0 {
                    (u.exp + self.bias()) as u64
                } else {
                    0
                };
                s | e << self.fbits | frac
            }
        }
    }

    /// The default QNaN ("indefinite") of this format.
    pub fn indefinite(self) -> u64 {
        (1u64 << (self.ebits + self.fbits))
            | self.emax_biased() << self.fbits
            | 1 << (self.fbits - 1)
    }

    /// Narrows an extended value (NaNs quieted with their payload truncated).
    pub fn from_ext(self, ctx: &mut Ctx, v: Ext) -> u64 {
        let sign_bit = u64::from(v.sign) << (self.ebits + self.fbits);
        match v.class() {
            Class::Zero => sign_bit,
            Class::Inf => sign_bit | self.emax_biased() << self.fbits,
            Class::QNan | Class::SNan => {
                let frac = (v.sig | QUIET) << 1 >> (64 - self.fbits);
                sign_bit | self.emax_biased() << self.fbits | frac
            }
            Class::Unsupported => self.indefinite(),
            Class::Normal | Class::Denormal => {
                let u = v.unpack();
                self.pack(sf::round_pack(ctx, u.sign, u.exp, u.sig, self.fmt))
            }
        }
    }
}

/// Converts packed BCD (18 digits, sign in bit 79) to an extended value. Invalid
/// digits (A-F) give an undefined result (SDM); like the CPU, they count with their
/// value (10-15) in the sum of digit × 10^k, which still fits 63 bits exactly.
pub fn from_bcd(lo: u64, hi: u64) -> Ext {
    let mut v: i64 = 0;
    for i in (0..18).rev() {
        let byte = if i < 16 {
            lo >> (i / 2 * 8)
        } else {
            hi >> ((i - 16) / 2 * 8)
        };
        let digit = if i % 2 == 0 {
            byte & 0xf
        } else {
            byte >> 4 & 0xf
        };
        v = v * 10 + digit as i64;
    }
    let e = Ext::from_i64(v);
    Ext {
        sign: hi & 0x8000 != 0,
        ..e
    }
}

/// Packed BCD of `|v| < 10^18` with `neg` as the sign: (low 8 bytes, high 2 bytes).
pub fn to_bcd(neg: bool, mut v: u64) -> (u64, u64) {
    let mut lo = 0u64;
    let mut hi = 0u64;
    for i in 0..18 {
        let d = v % 10;
        v /= 10;
        if i < 16 {
            lo |= d << (i * 4);
        } else {
            hi |= d << ((i - 16) * 4);
        }
    }
    if neg {
        hi |= 0x8000;
    }
    (lo, hi)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sf::Round;

    #[test]
    fn ieee_round_trip() {
        for v in [1.0f64, -2.5, 1e-310, 3.0e300, 0.1, -0.0] {
            let e = F64.to_ext(v.to_bits());
            let mut c = Ctx::new(Round::Nearest);
            assert_eq!(F64.from_ext(&mut c, e), v.to_bits(), "{v}");
            assert_eq!(c.flags, 0);
        }
        for v in [1.0f32, -2.5, 1e-40, 3.0e38, 0.1] {
            let e = F32.to_ext(u64::from(v.to_bits()));
            let mut c = Ctx::new(Round::Nearest);
            assert_eq!(F32.from_ext(&mut c, e), u64::from(v.to_bits()), "{v}");
        }
        // 1.0 is 3FFF 8000000000000000.
        assert_eq!(F64.to_ext(1f64.to_bits()), Ext::ONE);
        assert!(F32.is_snan(0x7f80_0001));
        assert_eq!(F32.indefinite(), 0xffc0_0000);
        assert_eq!(F64.indefinite(), 0xfff8_0000_0000_0000);
    }

    #[test]
    fn bcd() {
        let e = from_bcd(0x1234, 0x8000);
        assert_eq!(e, Ext::from_i64(-1234));
        assert_eq!(to_bcd(true, 1234), (0x1234, 0x8000));
    }
}
