//! Floating-point state and arithmetic shared by the x87 and SSE helpers:
//! [`softfloat`] (exact significands, one rounding step: the x87 extended format at
//! any precision control, IEEE binary32/binary64), [`ext`] (the 80-bit format and
//! conversions to the memory formats), [`x87`] (register stack, tags, status word,
//! exception masking, the instruction classes), [`sse_fp`] and [`sse4_fp`] (MXCSR
//! floating point of SSE/SSE2 and of SSE3/SSE4.1), and the packed-integer SIMD
//! operations: [`simd`] (MMX/SSE2), [`simd4`] (SSE3 to SSE4.2, PCLMULQDQ) and
//! [`pcmpstr`] (the SSE4.2 string comparisons).

pub mod ext;
pub mod pcmpstr;
pub mod simd;
pub mod simd4;
pub mod softfloat;
pub mod sse4_fp;
pub mod sse_fp;
pub mod x87;

#[cfg(all(test, target_arch = "x86_64"))]
mod host_tests;
