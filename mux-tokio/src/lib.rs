//! Tokio driver for `mux-proto` (work in progress: see the driver issue).
#![forbid(unsafe_code)]
