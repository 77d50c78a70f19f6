//! The wasm32 `simd128` scorer against the reference, run in Node by wasm-bindgen-test-runner:
//! `cargo test -p hearth-core --target wasm32-unknown-unknown --no-default-features --test wasm_score`
//! (with `CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner`; `.ci/test` does).
#![cfg(target_family = "wasm")]

use hearth_core::artifact::shard::CatalogShard;
use hearth_core::quant::quantize;
use hearth_core::device::score;
use wasm_bindgen_test::wasm_bindgen_test;

#[wasm_bindgen_test]
fn simd128_kernel_matches_the_reference() {
    assert_eq!(score::cpu_kernel(), "simd128");
    let dims = [1, 3, 15, 16, 17, 33, 64, 100, 128];
    for seed in 0..27u64 {
        let n = [1, 9, 1000, 4097][seed as usize % 4];
        let dim = dims[seed as usize % dims.len()];
        let k = [1, 10, 37][seed as usize % 3];
        let shard = CatalogShard::from_f32("w", (0..n).map(|i| i.to_string()).collect(), dim, &hearth_core::testkit::gaussian(seed, n * dim)).unwrap();
        let q = quantize(&hearth_core::testkit::gaussian(seed + 100, dim)).unwrap();
        let want = score::reference_top_k(shard.view(), &q, k);
        assert_eq!(score::top_k(shard.view(), &q, k), want, "seed {seed} n {n} dim {dim}");
        assert_eq!(score::top_k_portable(shard.view(), &q, k), want, "seed {seed} portable");
    }
}

#[wasm_bindgen_test]
fn shard_round_trips_on_wasm() {
    let shard = CatalogShard::from_f32("w", vec!["a".into(), "b".into()], 3, &[1.0, -2.0, 0.5, 0.0, 0.25, -1.0]).unwrap();
    let bytes = shard.encode();
    assert_eq!(CatalogShard::decode(&bytes).unwrap(), shard);
    assert!(CatalogShard::decode(&bytes[..bytes.len() - 1]).is_err());
}
