//! `-dfilter`: the guest address ranges whose blocks the `in_asm`, `op` and `out_asm`
//! logs show (QEMU's option of the same name). Process-wide, like the log itself.

use std::sync::OnceLock;

static RANGES: OnceLock<Vec<(u64, u64)>> = OnceLock::new();

/// Limits the translation logs to blocks that overlap one of `ranges` (inclusive
/// first and last linear addresses). Only the first call takes effect.
pub fn set(ranges: Vec<(u64, u64)>) {
    let _ = RANGES.set(ranges);
}

/// Whether the block of `len` bytes at linear address `start` is shown (always,
/// without a filter).
pub fn allows(start: u64, len: u64) -> bool {
    RANGES.get().is_none_or(|r| overlaps(r, start, len))
}

fn overlaps(ranges: &[(u64, u64)], start: u64, len: u64) -> bool {
    let last = start.wrapping_add(len.max(1) - 1);
    ranges.iter().any(|&(a, b)| {
        if last < start {
            // The block wraps around the top of the address space.
            b >= start || a <= last
        } else {
            a <= last && start <= b
        }
    })
}

/// Parses QEMU's range list: `START..LAST`, `START+LEN` or `END-LEN`, separated by
/// commas (numbers in hex with `0x`, else decimal).
pub fn parse(s: &str) -> Result<Vec<(u64, u64)>, String> {
    let num = |t: &str| -> Result<u64, String> {
        let t = t.trim();
        let r = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
            Some(h) => u64::from_str_radix(h, 16),
            None => t.parse(),
        };
        r.map_err(|_| format!("{t:?} is not a number"))
    };
    s.split(',')
        .map(|part| {
            let r = if let Some((a, b)) = part.split_once("..") {
                (num(a)?, num(b)?)
            } else if let Some((a, n)) = part.split_once('+') {
                let (a, n) = (num(a)?, num(n)?);
                if n == 0 {
                    return Err(format!("{part:?}: empty range"));
                }
                (a, a.saturating_add(n - 1))
            } else if let Some((e, n)) = part.split_once('-') {
                let (e, n) = (num(e)?, num(n)?);
                if n == 0 {
                    return Err(format!("{part:?}: empty range"));
                }
                (e.saturating_sub(n - 1), e)
            } else {
                return Err(format!("{part:?}: want START..LAST, START+LEN or END-LEN"));
            };
            if r.0 > r.1 {
                return Err(format!("{part:?}: the range ends before it starts"));
            }
            Ok(r)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_in_qemus_three_forms() {
        assert_eq!(
            parse("0x1000..0x1fff,0x4000+0x100,8192-16").unwrap(),
            [(0x1000, 0x1fff), (0x4000, 0x40ff), (8177, 8192)]
        );
        for bad in ["", "0x10", "1..x", "5+0", "9..3", "0x10-0"] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_block_is_shown_when_it_overlaps_a_range() {
        let r = [(0x1000, 0x1fff)];
        assert!(overlaps(&r, 0x1000, 1));
        assert!(overlaps(&r, 0xff0, 0x20));
        assert!(overlaps(&r, 0x1ffe, 8));
        assert!(!overlaps(&r, 0x2000, 8));
        assert!(!overlaps(&r, 0xff0, 0x10));
        assert!(overlaps(&[(0, 4)], u64::MAX - 1, 4));
    }
}
