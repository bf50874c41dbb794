//! The KVM engine.
