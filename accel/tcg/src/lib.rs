//! The TCG engine (being written).
