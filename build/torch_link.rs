//! Build script shared by every package of the workspace (named by `build =` in
//! each Cargo.toml), so that every test, example and bench binary:
//! 1. records `libtorch_cuda.so` as needed: with the linker's default
//!    `--as-needed` nothing references a symbol in it, it is dropped, and CUDA
//!    then looks absent on a GPU machine;
//! 2. finds libtorch at run time without `LD_LIBRARY_PATH`, through a run path
//!    to the venv's `torch/lib` that `scripts/setup.sh` links at `.libtorch`.
//!    `LD_LIBRARY_PATH` still wins (RUNPATH semantics), which the GPU machine uses.
use std::path::PathBuf;

pub fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let root = manifest
        .ancestors()
        .find(|dir| dir.join("rust-toolchain.toml").exists())
        .unwrap_or(&manifest)
        .to_path_buf();
    let torch_lib = root.join(".libtorch").join("lib");
    // Plain `rustc-link-arg` reaches every linked target of the package, unit-test
    // binaries of the library included (the `-tests` form covers only tests/*.rs
    // and is an error in a package that has none).
    println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", torch_lib.display());
    // Binaries live three levels below the root (target/<profile>/{deps,examples}).
    println!("cargo:rustc-link-arg=-Wl,-rpath,$ORIGIN/../../../.libtorch/lib");
    println!("cargo:rerun-if-changed=../../build/torch_link.rs");
}
