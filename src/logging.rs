//! Logging set-up: `RUST_LOG` plus QEMU-style `-d` categories and `-D` file.

use crate::cli::{LogConfig, LOG_CATEGORIES};
use crate::error::{Error, Result};

/// Initialises `env_logger`: warnings by default, `RUST_LOG` on top, then each `-d`
/// category's target at trace level. With `-D FILE` the log goes to FILE.
pub fn init(cfg: &LogConfig) -> Result<()> {
    let mut b = env_logger::Builder::new();
    b.filter_level(log::LevelFilter::Warn);
    if let Ok(env) = std::env::var("RUST_LOG") {
        b.parse_filters(&env);
    }
    for c in &cfg.categories {
        if let Some((_, target, _)) = LOG_CATEGORIES.iter().find(|(n, _, _)| n == c) {
            b.filter_module(target, log::LevelFilter::Trace);
        }
    }
    if let Some(path) = &cfg.file {
        let f = std::fs::File::create(path).map_err(|source| Error::File {
            path: path.clone(),
            source,
        })?;
        b.target(env_logger::Target::Pipe(Box::new(f)));
    }
    if let Some(r) = &cfg.dfilter {
        vireo_tcg::dfilter::set(r.clone());
    }
    b.format_timestamp_micros();
    // A second initialisation (tests) is harmless.
    let _ = b.try_init();
    Ok(())
}
