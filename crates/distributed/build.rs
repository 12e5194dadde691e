//! Compiles the C++ shim over libtorch's c10d (cpp/) against the venv's libtorch
//! headers, then does what every package's build does (build/torch_link.rs).
//!
//! NCCL's header pulls in the CUDA runtime and CCCL headers; they come from the
//! venv's nvidia wheels (nvidia-cuda-runtime with torch, nvidia-cuda-crt and
//! nvidia-cuda-cccl from scripts/setup.sh), so no CUDA toolkit is needed.
#[path = "../../build/torch_link.rs"]
mod torch_link;

use std::path::PathBuf;

fn main() {
    torch_link::main();
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let libtorch = std::env::var("LIBTORCH")
        .map(PathBuf::from)
        .unwrap_or_else(|_| manifest.join("../../.libtorch"));
    let include = libtorch.join("include");
    let nvidia = libtorch.join("..").join("nvidia");
    for header in [
        include.join("torch/csrc/distributed/c10d/ProcessGroupGloo.hpp"),
        nvidia.join("cu13/include/crt/host_config.h"),
        nvidia.join("cu13/include/nv/target"),
        nvidia.join("nccl/include/nccl.h"),
    ] {
        assert!(
            header.exists(),
            "{} is missing: run scripts/setup.sh (it installs torch and the CUDA header wheels)",
            header.display()
        );
    }
    cc::Build::new()
        .cpp(true)
        .files(["cpp/shim.cpp", "cpp/nccl.cpp"])
        .include("cpp/gloo_decl")
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .include(nvidia.join("cu13/include"))
        .include(nvidia.join("nccl/include"))
        .flag("-std=c++17")
        .flag("-D_GLIBCXX_USE_CXX11_ABI=1")
        .flag("-DGLOG_USE_GLOG_EXPORT")
        .flag("-DUSE_C10D_GLOO")
        .flag("-DUSE_C10D_NCCL")
        .flag("-w")
        .compile("qwen3_c10d_shim");
    // The static shim refers to c10d symbols in these; name them after it.
    for lib in ["torch_cpu", "torch_cuda", "c10"] {
        println!("cargo:rustc-link-lib=dylib={lib}");
    }
    println!(
        "cargo:rustc-link-search=native={}",
        libtorch.join("lib").display()
    );
    for file in [
        "cpp/shim.cpp",
        "cpp/shim.h",
        "cpp/nccl.cpp",
        "cpp/gloo_decl/gloo/decl.h",
    ] {
        println!("cargo:rerun-if-changed={file}");
    }
    println!("cargo:rerun-if-env-changed=LIBTORCH");
}
