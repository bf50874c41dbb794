//! Guest x86 code → IR (being written).
