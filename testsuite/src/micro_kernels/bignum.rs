//! [`Kernel::Bignum`](super::Kernel::Bignum): multi-precision arithmetic as a
//! kernel's RSA signature check does it (Linux's generic `mpihelp_submul_1`, the
//! loop that dominates its boot-time crypto self-tests): `r -= x * v` over 64-bit
//! limbs, each 64x64 product built from four 32x32 multiplies, the carries through
//! compares, `setb`, `cmovae` and `adc`.

use super::{iterations, Body, Mark, ARRAY};
use iced_x86::code_asm::*;

/// Limbs per number (a 4096-bit one).
const LIMBS: u32 = 64;
/// The second number, after the first.
const R_OFFSET: u64 = 0x1000;
/// The multiplier.
const V: u64 = 0xd1b5_4a32_d192_ed03;
/// Instructions per limb of the inner loop.
const PER_LIMB: u64 = 36;

/// The limbs' first values: `x[i]` and `r[i]`.
fn initial(i: u64) -> (u64, u64) {
    let x = (i + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (x, x ^ (x >> 29))
}

pub(super) fn bignum(a: &mut CodeAssembler, work: u64, m: Mark) -> Result<Body, IcedError> {
    let n = u64::from(LIMBS);
    let per_pass = 3 + PER_LIMB * n;
    let passes = iterations(work, per_pass);
    let x_end = ARRAY + 8 * n;
    let r_end = ARRAY + R_OFFSET + 8 * n;
    // Set-up (not measured): x[i] and r[i] as `initial` gives them.
    let mut init = a.create_label();
    a.xor(ecx, ecx)?;
    a.set_label(&mut init)?;
    a.lea(rax, ptr(rcx + 1))?;
    a.mov(rdx, 0x9e37_79b9_7f4a_7c15u64)?;
    a.imul_2(rax, rdx)?;
    a.mov(qword_ptr(rcx * 8 + ARRAY as i32), rax)?;
    a.mov(rdx, rax)?;
    a.shr(rdx, 29)?;
    a.xor(rdx, rax)?;
    a.mov(qword_ptr(rcx * 8 + (ARRAY + R_OFFSET) as i32), rdx)?;
    a.inc(ecx)?;
    a.cmp(ecx, LIMBS as i32)?;
    a.jb(init)?;
    m.emit(a)?;
    // rdi, r11: ends of x and r; r8d counts up from -n; r9, r10: the multiplier's
    // halves; rbp: 2^32; rsi: the carry limb; r12d: passes.
    let (mut pass, mut limb) = (a.create_label(), a.create_label());
    a.mov(edi, x_end as u32)?;
    a.mov(r11d, r_end as u32)?;
    a.mov(r9d, V as u32)?;
    a.mov(r10d, (V >> 32) as u32)?;
    a.mov(rbp, 1u64 << 32)?;
    a.xor(esi, esi)?;
    a.mov(r12d, passes)?;
    a.set_label(&mut pass)?;
    a.mov(r8d, -(LIMBS as i32))?;
    a.set_label(&mut limb)?;
    a.movsxd(rax, r8d)?;
    a.mov(rcx, qword_ptr(rdi + rax * 8))?;
    a.lea(r15, ptr(r11 + rax * 8))?;
    a.mov(rdx, rcx)?;
    a.mov(ecx, ecx)?;
    a.shr(rdx, 32)?;
    a.mov(rax, rcx)?;
    a.imul_2(rax, r9)?;
    a.mov(r13, rdx)?;
    a.imul_2(r13, r9)?;
    a.imul_2(rcx, r10)?;
    a.imul_2(rdx, r10)?;
    a.mov(r14, rax)?;
    a.mov(eax, eax)?;
    a.shr(r14, 32)?;
    a.add(rcx, r13)?;
    a.add(rcx, r14)?;
    a.mov(r14, rdx)?;
    a.add(rdx, rbp)?;
    a.cmp(rcx, r13)?;
    a.cmovae(rdx, r14)?;
    a.add(rax, rsi)?;
    a.mov(r13, rcx)?;
    a.shl(r13, 32)?;
    a.add(rax, r13)?;
    a.cmp(rax, rsi)?;
    a.setb(sil)?;
    a.shr(rcx, 32)?;
    a.movzx(esi, sil)?;
    a.mov(r13, qword_ptr(r15))?;
    a.sub(r13, rax)?;
    a.adc(rsi, rcx)?;
    a.mov(qword_ptr(r15), r13)?;
    a.add(rsi, rdx)?;
    a.add(r8d, 1)?;
    a.jnz(limb)?;
    a.dec(r12d)?;
    a.jnz(pass)?;
    // Result: the carry plus three limbs of r.
    a.mov(rax, rsi)?;
    a.add(rax, qword_ptr(ARRAY + R_OFFSET))?;
    a.add(rax, qword_ptr(ARRAY + R_OFFSET + 8 * (n / 2)))?;
    a.add(rax, qword_ptr(ARRAY + R_OFFSET + 8 * (n - 1)))?;
    let expected = reference(passes);
    Ok(Body {
        instructions: 7 + u64::from(passes) * per_pass + 4,
        units: u64::from(passes) * n,
        expected,
    })
}

/// What the kernel computes, instruction by instruction of its loop.
fn reference(passes: u32) -> u64 {
    let n = LIMBS as usize;
    let (mut x, mut r) = (vec![0u64; n], vec![0u64; n]);
    for i in 0..n {
        (x[i], r[i]) = initial(i as u64);
    }
    let (v_lo, v_hi) = (V & 0xffff_ffff, V >> 32);
    let mut cy = 0u64;
    for _ in 0..passes {
        for i in 0..n {
            let lo = x[i] & 0xffff_ffff;
            let hi = x[i] >> 32;
            let p0 = lo.wrapping_mul(v_lo);
            let p1 = hi.wrapping_mul(v_lo);
            let mut mid = lo.wrapping_mul(v_hi);
            let mut top = hi.wrapping_mul(v_hi);
            mid = mid.wrapping_add(p1).wrapping_add(p0 >> 32);
            if mid < p1 {
                top = top.wrapping_add(1 << 32);
            }
            let low = (p0 & 0xffff_ffff).wrapping_add(cy).wrapping_add(mid << 32);
            let mut c = u64::from(low < cy);
            let (diff, borrow) = r[i].overflowing_sub(low);
            c = c.wrapping_add(mid >> 32).wrapping_add(u64::from(borrow));
            r[i] = diff;
            cy = c.wrapping_add(top);
        }
    }
    cy.wrapping_add(r[0])
        .wrapping_add(r[n / 2])
        .wrapping_add(r[n - 1])
}
