//! The model on CUDA (bf16 compute, every compute path) tracks the CPU f32
//! reference, with and without a cache. `#[ignore = "needs CUDA"]`.

mod common;

use common::{entries_of, random_ids, rel_diff, tiny_cfg, write_dat, BF16_REL_TOL};
use dat_format::DatFile;
use qwen3_model::{ComputePath, LoadOptions, Qwen3Model};
use tch::{Device, Kind, Tensor};

#[test]
#[ignore = "needs CUDA"]
fn cuda_bf16_forward_tracks_cpu_f32_on_every_path() {
    let gpu = test_support::cuda();
    tch::no_grad(|| {
        let cfg = tiny_cfg(false);
        let cpu = Qwen3Model::random(&cfg, &LoadOptions::new(Device::Cpu), 3).unwrap();
        let ids = random_ids(cfg.vocab_size, 2, 11);
        let want = cpu.forward(&ids, None).unwrap();
        // Same weights on the GPU: through a .dat (CUDA's generator draws other numbers).
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.dat");
        write_dat(&path, &entries_of(&cpu));
        let dat = DatFile::open(&path).unwrap();
        for path in [
            ComputePath::Auto,
            ComputePath::KernelOnly,
            ComputePath::DequantMatmulOnly,
        ] {
            let opts = LoadOptions {
                compute_path: path,
                ..LoadOptions::new(gpu)
            };
            let model = Qwen3Model::load_dat(&dat, &cfg, &opts).unwrap();
            assert_eq!(model.dtype(), Kind::BFloat16);
            let full = model.forward(&ids, None).unwrap();
            let r = rel_diff(&full, &want);
            println!(
                "{path:?} ({}): cuda bf16 vs cpu f32 ratio {r:.3e}",
                model.backend().describe()
            );
            assert!(r <= BF16_REL_TOL, "{path:?}: {r}");

            // Cached: a prefix, then a chunk on top of it, then single tokens.
            let mut cache = model.new_cache(2, 4).unwrap();
            let parts = [(0, 5), (5, 4), (9, 1), (10, 1)];
            let rows: Vec<Tensor> = parts
                .iter()
                .map(|&(s, n)| {
                    model
                        .forward(&ids.narrow(1, s, n), Some(&mut cache))
                        .unwrap()
                })
                .collect();
            let r = rel_diff(&Tensor::cat(&rows, 1), &full.to_device(Device::Cpu));
            println!("{path:?}: cached vs uncached on cuda ratio {r:.3e}");
            assert!(r <= BF16_REL_TOL, "{path:?} cached: {r}");
        }
    })
}
