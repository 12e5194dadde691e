//! The loss counts target positions only: the trainer's masked loss (head
//! applied to target rows only) equals a per-token f64 cross-entropy of the
//! full forward's logits summed over the labelled positions, and a batch
//! without targets has zero loss and zero gradient.

mod common;

use tch::{Device, Kind};
use trainer::{make_batch, masked_ce_backward, masked_ce_sum, reference_ce_sum, IGNORE_INDEX};

#[test]
fn masked_loss_equals_the_f64_sum_over_labelled_positions() {
    let seed = test_support::seed();
    let cfg = common::tiny_config(200, true);
    let model = common::tiny_model(&cfg, seed);
    let data = common::random_dataset(5, 200, seed);
    let refs: Vec<_> = data.examples.iter().collect();
    let b = make_batch(&refs, 0, Device::Cpu);
    let (ours, full) = tch::no_grad(|| {
        let mut h = model.embed(&b.input_ids);
        for l in 0..model.num_layers() {
            h = model.block_forward(l, &h, 0).unwrap();
        }
        (
            masked_ce_sum(&model, &h, &b.labels).unwrap(),
            model.forward(&b.input_ids, None).unwrap(),
        )
    });
    // f64 per-token CE from the full logits, labelled positions only.
    let logp = full.to_kind(Kind::Double).log_softmax(-1, Kind::Double);
    let labels = Vec::<i64>::try_from(b.labels.reshape([-1])).unwrap();
    let v = logp.size()[2];
    let flat = logp.reshape([-1, v]);
    let mut want = 0f64;
    let mut counted = 0;
    for (i, &l) in labels.iter().enumerate() {
        if l != IGNORE_INDEX {
            want -= flat.double_value(&[i as i64, l]);
            counted += 1;
        }
    }
    assert_eq!(counted, b.target_tokens);
    let got = ours.double_value(&[]);
    let lib_ref = tch::no_grad(|| reference_ce_sum(&model, &b.input_ids, &b.labels).unwrap())
        .double_value(&[]);
    println!("masked CE sum {got:.6}, f64 reference {want:.6}, full-logits CE {lib_ref:.6}");
    assert!(
        (got - want).abs() <= 1e-5 * want.abs(),
        "masked loss vs f64 reference (rel. tol 1e-5)"
    );
    assert!((lib_ref - want).abs() <= 1e-5 * want.abs());
}

#[test]
fn a_batch_without_targets_has_zero_loss_and_gradient() {
    let seed = test_support::seed();
    let cfg = common::tiny_config(200, true);
    let model = common::tiny_model(&cfg, seed)
        .into_trainable(Kind::Float, None)
        .unwrap();
    let mut data = common::random_dataset(3, 200, seed);
    for ex in &mut data.examples {
        ex.is_target.iter_mut().for_each(|t| *t = false);
    }
    let refs: Vec<_> = data.examples.iter().collect();
    let b = make_batch(&refs, 0, Device::Cpu);
    assert_eq!(b.target_tokens, 0);
    let plan = trainer::BackpropPlan {
        first_trained_layer: 0,
        recompute_every: 0,
        written_out: false,
    };
    let ce = trainer::forward_backward(&model, &b.input_ids, &b.labels, 1.0, plan).unwrap();
    assert_eq!(ce, 0.0);
    for (n, p) in model.named_parameters() {
        let g = p.grad();
        assert!(
            !g.defined() || g.abs().max().double_value(&[]) == 0.0,
            "{n} got a gradient from masked positions"
        );
    }
}

/// The chunked loss (issue 14: the f32 logits never whole) gives the same
/// sum and the same gradients as one chunk, for the hidden state and for
/// every parameter the head touches (f32, tolerance 1e-5 relative).
#[test]
fn chunked_loss_and_gradients_equal_one_chunk() {
    let seed = test_support::seed();
    for tied in [true, false] {
        let cfg = common::tiny_config(200, tied);
        let data = common::random_dataset(6, 200, seed);
        let refs: Vec<_> = data.examples.iter().collect();
        let b = make_batch(&refs, 0, Device::Cpu);
        let run = |chunk: usize| {
            let model = common::tiny_model(&cfg, seed)
                .into_trainable(Kind::Float, None)
                .unwrap();
            let h = tch::no_grad(|| {
                let mut h = model.embed(&b.input_ids);
                for l in 0..model.num_layers() {
                    h = model.block_forward(l, &h, 0).unwrap();
                }
                h
            });
            let leaf = h.detach().set_requires_grad(true);
            let sum = masked_ce_backward(&model, &leaf, &b.labels, 3.0, chunk).unwrap();
            let grads: Vec<(String, tch::Tensor)> = model
                .named_parameters()
                .into_iter()
                .filter(|(_, p)| p.grad().defined())
                .map(|(n, p)| (n, p.grad().copy()))
                .collect();
            (sum, leaf.grad().copy(), grads)
        };
        let (whole, g_whole, p_whole) = run(usize::MAX);
        let (chunked, g_chunked, p_chunked) = run(3);
        println!("tied={tied}: CE sum {whole:.6} whole, {chunked:.6} in chunks of 3");
        assert!((whole - chunked).abs() <= 1e-5 * whole.abs());
        let close = |a: &tch::Tensor, b: &tch::Tensor, what: &str| {
            let scale = a.abs().max().double_value(&[]).max(1e-12);
            let d = (a - b).abs().max().double_value(&[]);
            assert!(d <= 1e-5 * scale, "{what}: {d:e} vs scale {scale:e}");
        };
        close(&g_whole, &g_chunked, "hidden-state gradient");
        assert!(!p_whole.is_empty(), "the head has gradients");
        assert_eq!(p_whole.len(), p_chunked.len());
        for ((n, a), (_, b)) in p_whole.iter().zip(&p_chunked) {
            close(a, b, n);
        }
    }
}
