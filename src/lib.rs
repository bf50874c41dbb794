//! vireo: machine assembly and the QEMU-compatible command line.
//!
//! The binary (`src/main.rs`) parses the command line with [`cli`], builds a
//! [`machine::Machine`] from the resulting [`config::MachineConfig`] and runs it. Tests
//! build machines the same way, in process, with serial output captured.

pub mod boot;
pub mod cli;
pub mod config;
pub mod console;
pub mod error;
pub mod logging;
pub mod machine;
pub mod platform;

pub use config::{Accel, CharSpec, MachineConfig};
pub use error::{Error, Result};
pub use machine::{Machine, Outcome};
