//! Lockstep testing: the same random instruction sequence, from the same state and
//! memory, on two engines (KVM and TCG, or TCG's JIT and interpreter), compared after
//! every sequence.

pub mod campaign;
pub mod env;
pub mod fp;
pub mod gen;
pub mod runner;
