//! The error type of the KVM engine.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum Error {
    #[error("KVM is not available: /dev/kvm: {0}")]
    Open(#[source] kvm_ioctls::Error),
    #[error("KVM {op} failed: {source}")]
    Ioctl {
        op: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("KVM lacks a required capability: {0}")]
    MissingCap(&'static str),
    #[error("unknown CPU model '{0}' for -accel kvm (known: host, max, qemu64)")]
    UnknownCpu(String),
}

pub type Result<T> = std::result::Result<T, Error>;

/// Wraps a kvm-ioctls result with the name of the operation.
pub(crate) trait IoctlContext<T> {
    fn op(self, op: &'static str) -> Result<T>;
}

impl<T> IoctlContext<T> for std::result::Result<T, kvm_ioctls::Error> {
    fn op(self, op: &'static str) -> Result<T> {
        self.map_err(|source| Error::Ioctl { op, source })
    }
}

impl From<Error> for vireo_core::Error {
    fn from(e: Error) -> vireo_core::Error {
        vireo_core::Error::Engine {
            engine: "kvm",
            msg: e.to_string(),
        }
    }
}
