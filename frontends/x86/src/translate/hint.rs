//! Hint instructions that execute as NOPs on this CPU model.
//!
//! - The reserved-NOP space `0F 18`–`0F 1F` with any ModRM (register or memory
//!   operands): hardware treats every form that is not a defined instruction as a NOP
//!   (Intel SDM vol. 2B, "NOP"; AMD APM vol. 3, "NOP"), including the forms later
//!   given to PREFETCHh (`0F 18 /0-3`), MPX (`0F 1A`/`0F 1B`, with MPX absent or
//!   disabled), CLDEMOTE and PREFETCHIT0/1 (`0F 1C`/`0F 18 /6-7`), CET's RDSSP and
//!   ENDBR (`F3 0F 1E`, with CET disabled) and the canonical `0F 1F /0` NOP.
//! - The `0F 0D` prefetch group (PREFETCH, PREFETCHW, PREFETCHWT1): hints.
//!
//! None of them accesses memory (no fault from the operand), but a LOCK prefix makes
//! them #UD like any instruction that is not a locked read-modify-write.

use super::{Flow, Tr};
use iced_x86::OpCodeTableKind;

impl Tr {
    /// Whether the current instruction is a hint NOP (see the module docs).
    pub(super) fn is_hint_nop(&self) -> bool {
        let oc = self.i.op_code();
        oc.table() == OpCodeTableKind::T0F && matches!(oc.op_code(), 0x0d | 0x18..=0x1f)
    }

    /// Executes a hint NOP.
    pub(super) fn hint_nop(&mut self) -> Flow {
        if self.i.has_lock_prefix() {
            return self.ud();
        }
        Flow::Next
    }
}
