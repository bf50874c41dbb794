//! Integer helpers (being written).

use super::HelperDef;

pub static TABLE: &[HelperDef] = &[];
