//! Helpers shared by the examples (`train`, `run2`, `stress`, `dat`) and the
//! workspace-level tests: device parsing and logging set-up, so that no example
//! copies them from another.
