//! Build script shared by every package of the workspace (named by `build =` in
//! each Cargo.toml), so that every test, example and bench binary:
//! 1. records `libtorch_cuda.so` as needed: with the linker's default
//!    `--as-needed` nothing references a symbol in it, it is dropped, and CUDA
//!    then looks absent on a GPU machine;
//! 2. finds libtorch at run time without `LD_LIBRARY_PATH`, through a run path
//!    to the venv's `torch/lib` that `scripts/setup.sh` links at `.libtorch`.
//!    `LD_LIBRARY_PATH` still wins (RUNPATH semantics), which the GPU machine uses;
//! 3. finds the CUDA libraries the torch wheel ships beside it (NVRTC among
//!    them, `site-packages/nvidia/cu13/lib`), so the NVFP4 kernels compile with
//!    NVRTC on any machine with the venv, GPU or not (cudarc dlopens NVRTC, and
//!    an executable's run path applies to its own dlopen calls).
use std::path::PathBuf;

fn main() {
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
    let cuda_libs = root.join(".libtorch").join("../nvidia/cu13/lib");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", cuda_libs.display());
    println!("cargo:rerun-if-changed=../../build/torch_link.rs");
}
