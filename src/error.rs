//! The error type of the `vireo` package: everything that ends a run with a message.

use std::path::PathBuf;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum Error {
    #[error("{0}")]
    Usage(String),
    #[error("cannot read {path}: {source}")]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Boot {
        path: PathBuf,
        #[source]
        source: crate::boot::BootError,
    },
    #[error(transparent)]
    Core(#[from] vireo_core::Error),
    #[error(transparent)]
    Kvm(#[from] vireo_kvm::Error),
    #[error("{0}")]
    Machine(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn usage(msg: impl Into<String>) -> Error {
        Error::Usage(msg.into())
    }
}
