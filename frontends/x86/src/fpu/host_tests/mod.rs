//! Host-CPU oracle tests: the SIMD arithmetic of SSE3 to SSE4.2 and PCLMULQDQ
//! against the real instructions of the machine running the tests, on random and
//! special operands. The expected values come from hardware (an AMD EPYC here); a
//! host without the features prints SKIP and passes. Only masked MXCSR settings are
//! run on the host (an unmasked exception would be a SIGFPE).
//!
//! The instructions run through `asm!` with their immediates as constants:
//! [`with_imm!`] expands a body once per imm8 value.

mod fp;
mod int;
mod strcmp;

use core::arch::x86_64::__m128i;

/// Whether the host runs SSSE3, SSE4.1, SSE4.2 and PCLMULQDQ (prints SKIP if not).
pub fn host_ok() -> bool {
    let ok = std::arch::is_x86_feature_detected!("ssse3")
        && std::arch::is_x86_feature_detected!("sse4.1")
        && std::arch::is_x86_feature_detected!("sse4.2")
        && std::arch::is_x86_feature_detected!("pclmulqdq");
    if !ok {
        eprintln!("SKIP: the host lacks SSSE3/SSE4.1/SSE4.2/PCLMULQDQ");
    }
    ok
}

/// A deterministic generator (xorshift64).
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub fn u128(&mut self) -> u128 {
        u128::from(self.next()) | u128::from(self.next()) << 64
    }
}

/// A register value as the vector type `asm!` takes.
pub fn m(v: u128) -> __m128i {
    // SAFETY: both types are 16 plain bytes; every bit pattern is valid for both.
    unsafe { core::mem::transmute::<u128, __m128i>(v) }
}

/// The vector type back to a register value.
pub fn u(v: __m128i) -> u128 {
    // SAFETY: as in `m`.
    unsafe { core::mem::transmute::<__m128i, u128>(v) }
}

/// `with_imm!(imm, IMM => body)`: runs `body` with the constant `IMM` equal to the
/// run-time `imm: u8`.
macro_rules! with_imm {
    ($imm:expr, $c:ident => $body:expr) => {
        with_imm!(@ $imm, $c, $body, 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31 32 33 34 35 36 37 38 39 40 41 42 43 44 45 46 47 48 49 50 51 52 53 54 55 56 57 58 59 60 61 62 63 64 65 66 67 68 69 70 71 72 73 74 75 76 77 78 79 80 81 82 83 84 85 86 87 88 89 90 91 92 93 94 95 96 97 98 99 100 101 102 103 104 105 106 107 108 109 110 111 112 113 114 115 116 117 118 119 120 121 122 123 124 125 126 127 128 129 130 131 132 133 134 135 136 137 138 139 140 141 142 143 144 145 146 147 148 149 150 151 152 153 154 155 156 157 158 159 160 161 162 163 164 165 166 167 168 169 170 171 172 173 174 175 176 177 178 179 180 181 182 183 184 185 186 187 188 189 190 191 192 193 194 195 196 197 198 199 200 201 202 203 204 205 206 207 208 209 210 211 212 213 214 215 216 217 218 219 220 221 222 223 224 225 226 227 228 229 230 231 232 233 234 235 236 237 238 239 240 241 242 243 244 245 246 247 248 249 250 251 252 253 254 255)
    };
    (@ $imm:expr, $c:ident, $body:expr, $($n:literal)*) => {
        match $imm {
            $($n => {
                const $c: u8 = $n;
                $body
            })*
        }
    };
}
pub(crate) use with_imm;

/// `run2!("insn", d, s, mxcsr [, IMM])`: `insn xmm_d, xmm_s[, IMM]` on the host with
/// MXCSR = `mxcsr` (all exceptions forced masked): (destination, MXCSR after).
macro_rules! run2 {
    ($insn:literal, $d:expr, $s:expr, $mx:expr) => {
        run2!(@ $insn, "", $d, $s, $mx, )
    };
    ($insn:literal, $d:expr, $s:expr, $mx:expr, $imm:ident) => {
        run2!(@ $insn, ", {imm}", $d, $s, $mx, imm = const $imm,)
    };
    (@ $insn:literal, $tail:literal, $d:expr, $s:expr, $mx:expr, $($extra:tt)*) => {{
        let mut d = super::m($d);
        let s = super::m($s);
        let mut mx: u32 = $mx | 0x1f80;
        let mut saved = 0u32;
        // SAFETY: the instruction (present on the host: `host_ok`) reads and writes
        // only the named registers and MXCSR, which is restored; the two pointers are
        // to live locals.
        unsafe {
            core::arch::asm!(
                "stmxcsr dword ptr [{saved}]",
                "ldmxcsr dword ptr [{mx}]",
                concat!($insn, " {d}, {s}", $tail),
                "stmxcsr dword ptr [{mx}]",
                "ldmxcsr dword ptr [{saved}]",
                d = inout(xmm_reg) d,
                s = in(xmm_reg) s,
                mx = in(reg) core::ptr::addr_of_mut!(mx),
                saved = in(reg) core::ptr::addr_of_mut!(saved),
                $($extra)*
                options(nostack),
            );
        }
        (super::u(d), mx)
    }};
}
pub(crate) use run2;
