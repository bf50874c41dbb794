//! Pieces of code the in-process test kernels share, assembled with iced-x86.

use iced_x86::code_asm::*;

/// COM1's base port.
pub const COM1: u16 = 0x3f8;

/// Emits the serial-port routines at labels `putc`, `puts` and `puthex` (32-bit code):
/// - `putc`: AL to COM1 once the transmitter is empty (registers kept);
/// - `puts`: the NUL-terminated string at ESI (ESI moves past it);
/// - `puthex`: EAX as 8 hex digits (registers kept).
pub fn serial_routines(
    a: &mut CodeAssembler,
    putc: CodeLabel,
    puts: CodeLabel,
    puthex: CodeLabel,
) -> Result<(), IcedError> {
    // puts: ESI -> COM1 until NUL.
    let mut ps_done = a.create_label();
    let mut puts_l = puts;
    a.set_label(&mut puts_l)?;
    a.lodsb()?;
    a.test(al, al)?;
    a.jz(ps_done)?;
    a.call(putc)?;
    a.jmp(puts)?;
    a.set_label(&mut ps_done)?;
    a.ret()?;

    // putc: AL -> COM1 after THR empty.
    let mut putc_l = putc;
    a.set_label(&mut putc_l)?;
    let mut wait = a.create_label();
    a.push(eax)?;
    a.push(edx)?;
    a.mov(ah, al)?;
    a.set_label(&mut wait)?;
    a.mov(dx, u32::from(COM1 + 5))?;
    a.in_(al, dx)?;
    a.test(al, 0x20)?;
    a.jz(wait)?;
    a.mov(al, ah)?;
    a.mov(dx, u32::from(COM1))?;
    a.out(dx, al)?;
    a.pop(edx)?;
    a.pop(eax)?;
    a.ret()?;

    // puthex: EAX as 8 hex digits.
    let mut puthex_l = puthex;
    a.set_label(&mut puthex_l)?;
    let mut digit = a.create_label();
    let mut dec_digit = a.create_label();
    a.push(eax)?;
    a.push(ebx)?;
    a.push(ecx)?;
    a.mov(ebx, eax)?;
    a.mov(ecx, 8u32)?;
    a.set_label(&mut digit)?;
    a.rol(ebx, 4)?;
    a.mov(eax, ebx)?;
    a.and(eax, 0xf)?;
    a.add(al, u32::from(b'0'))?;
    a.cmp(al, u32::from(b'9'))?;
    a.jbe(dec_digit)?;
    a.add(al, u32::from(b'a' - b'9' - 1))?;
    a.set_label(&mut dec_digit)?;
    a.call(putc)?;
    a.dec(ecx)?;
    a.jnz(digit)?;
    a.pop(ecx)?;
    a.pop(ebx)?;
    a.pop(eax)?;
    a.ret()?;
    Ok(())
}
