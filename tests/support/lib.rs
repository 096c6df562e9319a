//! Shared helpers for the end-to-end tests and the benchmarks: reading `spec/vectors/`.
#![forbid(unsafe_code)]

use std::path::PathBuf;

/// The workspace's `spec/vectors/` directory.
pub fn vectors_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("spec")
        .join("vectors")
}
