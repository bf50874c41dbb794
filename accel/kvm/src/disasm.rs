//! Disassembly of single instructions for error messages.

use iced_x86::{Decoder, DecoderOptions, Formatter, IntelFormatter};

/// The first instruction in `bytes`, in Intel syntax, for code of `bitness` 16/32/64.
pub fn one(bytes: &[u8], bitness: u32) -> String {
    let mut d = Decoder::new(bitness, bytes, DecoderOptions::NONE);
    let insn = d.decode();
    if insn.is_invalid() {
        return "(invalid instruction)".to_string();
    }
    let mut out = String::new();
    IntelFormatter::new().format(&insn, &mut out);
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn linux_cmpxchg16b() {
        // What this host's KVM fails on while booting Debian's kernel.
        let s = super::one(&[0xf0, 0x48, 0x0f, 0xc7, 0x4d, 0x20, 0x74], 64);
        assert_eq!(s, "lock cmpxchg16b [rbp+20h]");
        assert_eq!(super::one(&[0x0f, 0xff], 64), "(invalid instruction)");
    }
}
