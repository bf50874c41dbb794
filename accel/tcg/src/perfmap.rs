//! `-perfmap`: a symbol map of compiled blocks for Linux `perf`.
//!
//! `perf report` attributes samples in anonymous executable memory to symbols named in
//! `/tmp/perf-<pid>.map` (lines `START SIZE NAME`, hexadecimal). With the map on,
//! every block the JIT compiles is written there as `guest:<cs base>:<pc>`, so the
//! host time spent in generated code is reported per guest block (QEMU's
//! `-perfmap`); the code the blocks of a cache share is `vireo:shared`. The file is
//! shared by all vCPUs of the process and only appended to.

use parking_lot::Mutex;
use std::io::Write;
use std::sync::OnceLock;

static MAP: OnceLock<Option<Mutex<std::fs::File>>> = OnceLock::new();

/// The path of this process's map.
pub fn path() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("perf-{}.map", std::process::id()))
}

/// Opens (creates) the map; later calls do nothing. An error is logged once and the
/// map stays off.
pub fn enable() {
    MAP.get_or_init(|| {
        let p = path();
        match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p)
        {
            Ok(f) => {
                // perf only consults the map for anonymous memory.
                vireo_jit::set_anonymous_code(true);
                Some(Mutex::new(f))
            }
            Err(e) => {
                log::warn!(target: "vireo::tcg", "-perfmap: {}: {e}", p.display());
                None
            }
        }
    });
}

/// Records a compiled block of `size` bytes at host address `start`.
pub fn record(start: usize, size: usize, cs_base: u64, pc: u64) {
    if let Some(Some(f)) = MAP.get() {
        let _ = writeln!(f.lock(), "{start:x} {size:x} guest:{cs_base:x}:{pc:x}");
    }
}

/// Records the code all of a JIT cache's blocks share (its entry, return and
/// indirect-exit-table lookup), `size` bytes at `start`, as `vireo:shared`.
pub fn record_shared(start: usize, size: usize) {
    if let Some(Some(f)) = MAP.get() {
        let _ = writeln!(f.lock(), "{start:x} {size:x} vireo:shared");
    }
}

/// Whether the map is on.
pub fn enabled() -> bool {
    matches!(MAP.get(), Some(Some(_)))
}
