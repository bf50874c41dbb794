//! Guest disassembly for `-d in_asm`.

use iced_x86::{Decoder, DecoderOptions, Formatter, Instruction, IntelFormatter};
use std::fmt::Write;

/// Disassembles `bytes` (code at CS-relative `pc`, `bitness` 16, 32 or 64), one
/// instruction per line as `pc: bytes  text`. Undecodable bytes show as `(bad)`.
pub fn block(bytes: &[u8], pc: u64, bitness: u32) -> String {
    let mut out = String::new();
    let mut dec = Decoder::with_ip(bitness, bytes, pc, DecoderOptions::NONE);
    let mut fmt = IntelFormatter::new();
    fmt.options_mut().set_uppercase_hex(false);
    let mut insn = Instruction::default();
    let mut text = String::new();
    while dec.can_decode() {
        let at = dec.position();
        dec.decode_out(&mut insn);
        text.clear();
        if insn.is_invalid() {
            text.push_str("(bad)");
        } else {
            fmt.format(&insn, &mut text);
        }
        let raw = bytes.get(at..at + insn.len().max(1)).unwrap_or(&[]);
        let hex: Vec<String> = raw.iter().map(|b| format!("{b:02x}")).collect();
        let _ = writeln!(out, "  {:#010x}: {:<24} {text}", insn.ip(), hex.join(" "));
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn real_mode_block() {
        // mov ax, 0x1234; add [bx+0x0e], bl; hlt
        let text = super::block(&[0xb8, 0x34, 0x12, 0x00, 0x5f, 0x0e, 0xf4], 0x100, 16);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(
            lines[0].contains("0x00000100") && lines[0].contains("mov ax,1234h"),
            "{text}"
        );
        assert!(lines[1].contains("add [bx+0eh],bl"), "{text}");
        assert!(lines[2].contains("hlt"), "{text}");
    }
}
