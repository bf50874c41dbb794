//! Floating-point state and arithmetic shared by the x87 and SSE helpers:
//! [`softfloat`] (exact significands, one rounding step: the x87 extended format at
//! any precision control, IEEE binary32/binary64), [`ext`] (the 80-bit format and
//! conversions to the memory formats), [`x87`] (register stack, tags, status word,
//! exception masking, the instruction classes).

pub mod ext;
pub mod simd;
pub mod softfloat;
pub mod sse_fp;
pub mod x87;

#[cfg(all(test, target_arch = "x86_64"))]
mod host_tests;
