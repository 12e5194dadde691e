//! Every binary must see CUDA on a GPU machine. With the linker's default
//! `--as-needed`, `libtorch_cuda.so` is silently dropped and libtorch reports no
//! CUDA; build/torch_link.rs forces it in. The GPU's presence is detected
//! independently of libtorch (the NVIDIA device node), so a broken link fails here;
//! the test is `#[ignore = "needs CUDA"]` and runs with `--include-ignored` there.
use std::path::Path;

fn gpu_present() -> bool {
    Path::new("/dev/nvidia0").exists() || Path::new("/dev/nvidiactl").exists()
}

#[test]
#[ignore = "needs CUDA"]
fn libtorch_sees_cuda_when_a_gpu_is_present() {
    assert!(
        gpu_present(),
        "no /dev/nvidia0 or /dev/nvidiactl: this test needs a GPU machine"
    );
    assert!(
        tch::Cuda::is_available(),
        "a GPU is present but libtorch sees no CUDA: libtorch_cuda.so not linked?"
    );
    assert!(tch::Cuda::device_count() >= 1);
    let x = tch::Tensor::from_slice(&[1.0f32, 2.0, 3.0]).to_device(tch::Device::Cuda(0));
    let sum = f64::try_from((&x * 2.0).sum(tch::Kind::Float)).expect("scalar");
    assert_eq!(sum, 12.0);
}

#[test]
fn libtorch_cpu_runs() {
    // Fresh random input; checks libtorch itself loads and computes on any machine.
    let x = tch::Tensor::randn([64, 32], (tch::Kind::Double, tch::Device::Cpu));
    let y = x.matmul(&x.tr());
    let diag = y.diagonal(0, 0, 1);
    let sq = (&x * &x).sum_dim_intlist([1i64].as_slice(), false, tch::Kind::Double);
    let err = f64::try_from((diag - sq).abs().max()).expect("scalar");
    assert!(err < 1e-9, "x x^T diagonal != row norms: max diff {err}");
}
