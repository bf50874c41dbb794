//! Which slots (or sets) of a TLB were filled since it was last emptied, so that
//! emptying it (every CR3 write: each context switch) resets those, not the whole
//! table: a full reset of TLBs big enough that a process's hot pages rarely meet in
//! one set costs more than the few entries it touches between switches.

/// The filled slots of one table (indices into its flat entry array).
#[derive(Debug, Clone)]
pub(crate) struct FillLog {
    slots: Vec<u32>,
    /// More slots were filled than the log holds: any slot may be filled.
    overflowed: bool,
    /// Slots logged before the table counts as wholly filled.
    cap: usize,
}

impl FillLog {
    /// A log for a table of `slots` entries: it holds as many (a slot is logged when
    /// it goes from empty to filled, and leaves the log when a partial reset empties
    /// it), so it overflows only through slots emptied and filled again without a
    /// reset that looks at the log.
    pub fn new(slots: usize) -> FillLog {
        FillLog {
            slots: Vec::new(),
            overflowed: false,
            cap: slots,
        }
    }

    /// Records that slot `i` was filled (possibly again).
    pub fn note(&mut self, i: usize) {
        if self.overflowed {
            return;
        }
        if self.slots.len() >= self.cap {
            self.overflowed = true;
            self.slots = Vec::new();
        } else {
            self.slots.push(i as u32);
        }
    }

    /// The slots that may be filled, `None` for any of them.
    pub fn filled(&self) -> Option<&[u32]> {
        (!self.overflowed).then_some(&self.slots[..])
    }

    /// Forgets every slot (the table was emptied).
    pub fn clear(&mut self) {
        self.slots.clear();
        self.overflowed = false;
    }

    /// Keeps only the slots `keep` says still hold an entry (after a partial reset).
    /// An overflowed log is built anew from the slots of all `n` that hold one, if
    /// they fit.
    pub fn retain(&mut self, n: usize, mut keep: impl FnMut(usize) -> bool) {
        if self.overflowed {
            self.clear();
            for i in (0..n).filter(|&i| keep(i)) {
                self.note(i);
            }
        } else {
            self.slots.retain(|&i| keep(i as usize));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_slots_until_the_cap_then_any() {
        const CAP: usize = 64;
        let mut l = FillLog::new(CAP);
        l.note(3);
        l.note(7);
        assert_eq!(l.filled(), Some(&[3, 7][..]));
        l.retain(10, |i| i == 7);
        assert_eq!(l.filled(), Some(&[7][..]));
        for i in 0..CAP {
            l.note(i);
        }
        assert_eq!(l.filled(), None);
        // Overflowed: rebuilt from what still holds an entry, when it fits...
        l.retain(4 * CAP, |i| i % 8 == 1);
        assert_eq!(l.filled().map(<[u32]>::len), Some(CAP / 2));
        // ... or left overflowed.
        for i in 0..CAP {
            l.note(i);
        }
        l.retain(4 * CAP, |i| i % 2 == 0);
        assert_eq!(l.filled(), None);
        l.clear();
        assert_eq!(l.filled(), Some(&[][..]));
    }
}
