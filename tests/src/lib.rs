//! Cross-crate scenarios for hearth, run as one test binary (`cargo test -p hearth-tests`).
//!
//! - the committed default model (`models/ml100k`) loads into the current model code and
//!   reproduces the metrics recorded in its manifest, above the quality bar;
//! - the same model code runs on burn's wgpu backend (Mesa lavapipe when there is no GPU) and
//!   agrees with the CPU backend; training on wgpu lowers the loss.

use std::path::PathBuf;

/// Root of the workspace.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// MovieLens 100K: `$HEARTH_ML100K`, else `../shared/data/movielens-100k` beside the checkout.
pub fn ml100k_dir() -> PathBuf {
    match std::env::var_os("HEARTH_ML100K") {
        Some(p) => PathBuf::from(p),
        None => workspace_root().join("../shared/data/movielens-100k"),
    }
}

#[cfg(test)]
mod scenarios {
    use super::*;
    use hearth_aggregator::{evaluate_dir, load_dataset, read_model_dir};
    use hearth_core::data::leave_one_out;
    use hearth_core::model::{self, ScoreTable, TrainConfig};

    fn ml100k() -> hearth_core::data::Dataset {
        let dir = ml100k_dir();
        load_dataset(&dir, None).unwrap_or_else(|e| {
            panic!("MovieLens 100K is required at {} (or set HEARTH_ML100K): {e:#}", dir.display())
        })
    }

    #[test]
    fn committed_model_reproduces_its_metrics_and_beats_the_bar() {
        let ds = ml100k();
        let dir = workspace_root().join("models/ml100k");
        let bundle = read_model_dir(&dir).unwrap();
        let recorded = bundle.manifest.metrics.expect("the committed model records its metrics");
        let report = evaluate_dir(&dir, &ds, None, None, recorded.seed).unwrap();
        assert_eq!(report.users, 942);
        let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
        for (now, then) in [(report.model, recorded.model), (report.most_popular, recorded.most_popular)] {
            assert!(close(now.sampled.hr, then.sampled.hr), "sampled HR {} vs recorded {}", now.sampled.hr, then.sampled.hr);
            assert!(close(now.sampled.ndcg, then.sampled.ndcg));
            assert!(close(now.full.hr, then.full.hr), "full HR {} vs recorded {}", now.full.hr, then.full.hr);
            assert!(close(now.full.ndcg, then.full.ndcg));
        }
        // The quality bar (ALS tuned: 0.626 / 0.152; most popular 0.407 / 0.086).
        assert!(report.model.sampled.hr >= 0.68, "sampled HR@10 {}", report.model.sampled.hr);
        assert!(report.model.full.hr >= 0.17, "full HR@10 {}", report.model.full.hr);
        assert!((report.most_popular.sampled.hr - 0.407).abs() < 0.02, "most-popular {}", report.most_popular.sampled.hr);
    }

    #[test]
    fn wgpu_backend_agrees_with_cpu_and_trains() {
        use burn::backend::{Autodiff, Flex, Wgpu};
        let ds = ml100k();
        let bundle = read_model_dir(&workspace_root().join("models/ml100k")).unwrap();
        let split = leave_one_out(&ds).unwrap();
        let histories: Vec<Vec<u32>> = split.histories(ds.users.len()).into_iter().take(64).collect();

        let cpu = bundle.to_model::<Flex>(&Default::default()).unwrap();
        let gpu_device = burn::backend::wgpu::WgpuDevice::default();
        let gpu = bundle.to_model::<Wgpu>(&gpu_device).unwrap();
        let a = ScoreTable::compute(&cpu, &histories, &Default::default());
        let b = ScoreTable::compute(&gpu, &histories, &gpu_device);
        let mut worst = 0f32;
        for u in 0..histories.len() as u32 {
            for (x, y) in a.row(u).iter().zip(b.row(u)) {
                worst = worst.max((x - y).abs() / (1.0 + x.abs()));
            }
        }
        assert!(worst < 1e-4, "wgpu and CPU scores differ by {worst}");

        // A short training run on wgpu: the loss falls.
        let small: Vec<Vec<u32>> = split.histories(ds.users.len()).into_iter().map(|h| h.into_iter().rev().take(20).rev().collect()).collect();
        let cfg = TrainConfig { epochs: 2, dim: 16, hidden: 32, history: 10, batch: 512, negatives: 128, lr: 5e-3, ..Default::default() };
        let mut losses = Vec::new();
        model::train::<Autodiff<Wgpu>>(&ds, &small, &cfg, &gpu_device, &mut |p| losses.push(p.loss)).unwrap();
        let (first, last) = (losses[0], losses[losses.len() - 1]);
        assert!(last < first * 0.9, "wgpu loss {first} -> {last}");
    }
}
