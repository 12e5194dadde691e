//! The written-out training block (`block_forward_tape` / `block_backward_tape`)
//! against the autograd block (`block_forward` + backward): same output, same
//! input gradient, same parameter gradients, for the dense, W4A16 and W4A4
//! recipes; on the CPU in f32 (tolerance 1e-5 of each tensor's largest value:
//! only summation order differs) and on CUDA in bf16 with the fused kernels
//! (tolerance [`BF16_REL_TOL`]). The same for the written-out loss at the
//! top (`head_loss_backward`: final norm, head, fused cross-entropy) against
//! `head` + `cross_entropy_loss` under autograd.

mod common;

use common::{rel_diff, tiny_cfg, BF16_REL_TOL};
use qwen3_model::{LoadOptions, QuantRecipe, Qwen3Model, ScaleMode};
use tch::{Device, Kind, Tensor};

/// Output, input gradient and every parameter gradient of block `layer`,
/// for the upstream gradient `g`.
struct BlockGrads {
    out: Tensor,
    dx: Tensor,
    params: Vec<(String, Tensor)>,
}

fn zero_grads(m: &Qwen3Model) {
    for (_, mut p) in m.named_parameters() {
        p.zero_grad();
    }
}

fn collect(m: &Qwen3Model, out: Tensor, dx: Tensor) -> BlockGrads {
    let params = m
        .named_parameters()
        .into_iter()
        .filter(|(_, p)| p.grad().defined())
        .map(|(n, p)| (n, p.grad().copy()))
        .collect();
    BlockGrads { out, dx, params }
}

fn autograd_block(m: &Qwen3Model, layer: usize, x: &Tensor, g: &Tensor) -> BlockGrads {
    zero_grads(m);
    let x = x.detach().set_requires_grad(true);
    let out = m.block_forward(layer, &x, 0).unwrap();
    (&out * g).sum(Kind::Float).backward();
    collect(m, out.detach(), x.grad().copy())
}

fn written_out_block(m: &Qwen3Model, layer: usize, x: &Tensor, g: &Tensor) -> BlockGrads {
    zero_grads(m);
    let (out, tape) = m.block_forward_tape(layer, x).unwrap();
    let dx = m.block_backward_tape(tape, g).unwrap();
    collect(m, out, dx)
}

/// Output, input gradient and parameter gradients within `tol` (relative to
/// each tensor's largest value), and enough of them non-zero to matter.
fn compare(recipe: &str, got: &BlockGrads, want: &BlockGrads, tol: f64) {
    let out = rel_diff(&got.out, &want.out);
    println!("{recipe}: output within {out:.3e}");
    assert!(
        out <= tol,
        "{recipe}: output differs by {out:.3e} > {tol:e}"
    );
    let nonzero = want
        .params
        .iter()
        .filter(|(_, g)| g.abs().max().double_value(&[]) > 0.0)
        .count();
    assert!(
        nonzero >= 11,
        "{recipe}: only {nonzero} gradients are non-zero"
    );
    compare_params(recipe, got, want, tol);
}

/// Every parameter gradient of `want` (and the input gradient) found in
/// `got` within `tol` of its largest value.
fn compare_params(recipe: &str, got: &BlockGrads, want: &BlockGrads, tol: f64) {
    let mut worst = (rel_diff(&got.dx, &want.dx), "input gradient".to_string());
    for (name, w) in &want.params {
        let (_, g) = got
            .params
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("{recipe}: no gradient for {name} written out"));
        let d = rel_diff(g, w);
        if d > worst.0 {
            worst = (d, name.clone());
        }
    }
    println!(
        "{recipe}: max relative difference {:.3e} ({})",
        worst.0, worst.1
    );
    assert!(
        worst.0 <= tol,
        "{recipe}: {} differs by {:.3e} > {tol:e}",
        worst.1,
        worst.0
    );
}

fn recipes() -> [QuantRecipe; 3] {
    [
        QuantRecipe::DENSE,
        QuantRecipe::nvfp4(ScaleMode::TwoLevel, false),
        QuantRecipe::nvfp4(ScaleMode::Single, true),
    ]
}

fn check_on(device: Device, master: Kind, tol: f64) {
    let seed = test_support::seed_i64();
    for recipe in recipes() {
        let cfg = tiny_cfg(true);
        let mut m = Qwen3Model::random(&cfg, &LoadOptions::new(device), 5)
            .unwrap()
            .into_trainable(master, None)
            .unwrap();
        m.set_recipe(&recipe);
        tch::manual_seed(seed);
        let opts = (Kind::Float, device);
        let x = (Tensor::randn([2, 7, cfg.hidden_size as i64], opts) * 2.0).to_kind(m.dtype());
        let g = Tensor::randn([2, 7, cfg.hidden_size as i64], opts).to_kind(m.dtype());
        for layer in 0..m.num_layers() {
            let want = autograd_block(&m, layer, &x, &g);
            let got = written_out_block(&m, layer, &x, &g);
            compare(
                &format!("{} block {layer}", recipe.label()),
                &got,
                &want,
                tol,
            );
        }
    }
}

#[test]
fn written_out_block_equals_the_autograd_block_on_the_cpu() {
    check_on(Device::Cpu, Kind::Float, 1e-5);
}

#[test]
#[ignore = "needs CUDA"]
fn written_out_block_with_fused_kernels_tracks_the_autograd_block_on_cuda() {
    check_on(test_support::cuda(), Kind::BFloat16, BF16_REL_TOL);
}

#[test]
fn written_out_head_loss_equals_autograd_on_the_cpu() {
    check_head_on(Device::Cpu, Kind::Float, 1e-5);
}

#[test]
#[ignore = "needs CUDA"]
fn written_out_head_loss_with_the_fused_cross_entropy_tracks_autograd_on_cuda() {
    check_head_on(test_support::cuda(), Kind::BFloat16, BF16_REL_TOL);
}

#[test]
fn a_block_that_does_not_train_is_refused_by_name() {
    let cfg = tiny_cfg(false);
    let m = Qwen3Model::random(&cfg, &LoadOptions::new(Device::Cpu), 5).unwrap();
    assert!(!m.written_out_ok(0));
    let x = Tensor::randn([1, 3, cfg.hidden_size as i64], (Kind::Float, Device::Cpu));
    let e = m.block_forward_tape(0, &x).unwrap_err().to_string();
    assert!(e.contains("block 0") && e.contains("trainable"), "{e}");
    let m = m.into_trainable(Kind::Float, None).unwrap();
    assert!(m.written_out_ok(1) && !m.written_out_ok(2));
    let bad = Tensor::randn([1, 3, 5], (Kind::Float, Device::Cpu));
    let e = m.block_forward_tape(0, &bad).unwrap_err().to_string();
    assert!(e.contains("hidden") && e.contains("[1, 3, 5]"), "{e}");
}

/// The loss, hidden-state gradient and head/norm gradients of `scale * CE`
/// over `hidden` [N, H] through autograd.
fn autograd_head(
    m: &Qwen3Model,
    hidden: &Tensor,
    targets: &Tensor,
    scale: f64,
) -> (f64, BlockGrads) {
    zero_grads(m);
    let x = hidden.detach().set_requires_grad(true);
    let logits = m.head(&x.unsqueeze(0)).unwrap().squeeze_dim(0);
    let ce = logits.cross_entropy_loss::<Tensor>(targets, None, tch::Reduction::Sum, -100, 0.0);
    (&ce * scale).backward();
    let sum = ce.double_value(&[]);
    (sum, collect(m, ce.detach(), x.grad().copy()))
}

fn check_head_on(device: Device, master: Kind, tol: f64) {
    let seed = test_support::seed_i64();
    for (tied, recipe) in [(true, "w4a16"), (false, "w4a4+head"), (true, "bf16")] {
        let cfg = tiny_cfg(tied);
        let mut m = Qwen3Model::random(&cfg, &LoadOptions::new(device), 5)
            .unwrap()
            .into_trainable(master, None)
            .unwrap();
        m.set_recipe(&recipe.parse().unwrap());
        tch::manual_seed(seed);
        let hidden = (Tensor::randn([11, cfg.hidden_size as i64], (Kind::Float, device)) * 2.0)
            .to_kind(m.dtype());
        let targets = Tensor::randint(cfg.vocab_size as i64, [11], (Kind::Int64, device));
        let (want_sum, want) = autograd_head(&m, &hidden, &targets, 0.25);
        zero_grads(&m);
        // Chunks of 4 rows: 4 + 4 + 3.
        let (sum, dh) = m.head_loss_backward(&hidden, &targets, 0.25, 4).unwrap();
        let got = collect(&m, want.out.shallow_clone(), dh);
        let label = format!("head tied={tied} {recipe}");
        println!("{label}: CE sum {sum} vs autograd {want_sum}");
        assert!((sum - want_sum).abs() <= tol * want_sum.abs(), "{label}");
        assert!(got.params.len() >= 2, "{label}: head and norm gradients");
        compare_params(&label, &got, &want, tol);
    }
}
