//! The error type of `vireo-core`.

use thiserror::Error;

/// Errors raised by the shared machine model.
#[derive(Debug, Error)]
pub enum Error {
    #[error("guest memory size {0} bytes is invalid: {1}")]
    BadMemorySize(u64, &'static str),
    #[error("cannot allocate {size} MiB of guest memory: {source}")]
    MemoryAlloc {
        size: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("guest physical range {addr:#x}+{len:#x} is not backed by guest RAM or ROM")]
    OutOfRange { addr: u64, len: u64 },
    #[error("bus range {base:#x}+{len:#x} ({name}) overlaps {other} at {other_base:#x}")]
    BusOverlap {
        base: u64,
        len: u64,
        name: String,
        other: String,
        other_base: u64,
    },
    #[error("{engine}: {msg}")]
    Engine { engine: &'static str, msg: String },
    #[error("bus range {base:#x}+{len:#x} is empty or wraps around")]
    BusRange { base: u64, len: u64 },
}

/// Result alias for `vireo-core`.
pub type Result<T> = std::result::Result<T, Error>;
