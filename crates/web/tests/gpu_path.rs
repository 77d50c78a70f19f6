//! The page's GPU path (query → the GPU tower and int8 scan → refine → rank), natively on
//! lavapipe: the browser runs the same code on WebGPU, and its list must be the CPU path's.

use hearth_core::device::session::{ModelFiles, RecommendOptions, Secret, Session};
use hearth_core::quant::quantize;

fn read(name: &str) -> Vec<u8> {
    std::fs::read(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/ml100k").join(name)).unwrap()
}

#[test]
fn the_gpu_path_gives_the_cpu_paths_recommendations() {
    use hearth_core::device::gpu::request_device;
    use hearth_core::device::score::gpu::{GpuScorer, Kernel};
    use hearth_core::device::tower::gpu::GpuTower;
    let (manifest, global, catalog, shard) = (read("manifest.json"), read("global.bin"), read("catalog.json"), read("items.shard"));
    let files = ModelFiles { manifest: &manifest, global: &global, catalog: &catalog, shard: &shard };
    let mut e = Session::open(&files, None, Secret::DeviceKey([3; 32]), "phone", 7).unwrap();
    let instance = wgpu::Instance::default();
    let (device, queue, info) = pollster::block_on(request_device(&instance)).expect("a wgpu adapter (lavapipe: apt mesa-vulkan-drivers)");
    let gpu = pollster::block_on(GpuScorer::new(&device, &queue, e.model().catalog_view(), Kernel::best_for(&instance))).unwrap();
    let tower = pollster::block_on(GpuTower::new(&device, &queue, e.model().tower())).unwrap();
    let mut compared = 0;
    for (t, item) in ["50", "172", "181", "1", "98", "313", "427", "7", "100", "258"].iter().enumerate() {
        e.record(item, if t % 3 == 0 { "like" } else { "play" }, None, t as i64, None).unwrap();
        for opts in [RecommendOptions::default(), RecommendOptions { k: Some(40), explore: Some(0.0), ..Default::default() }] {
            let q = e.query(&opts).unwrap();
            let user = e.user_vector(&q);
            let hits = pollster::block_on(gpu.top_k(&quantize(&user).unwrap(), q.candidates())).unwrap();
            let on_gpu = e.rank(&q, &user, &opts, &e.refine(&q, &user, &hits)).unwrap();
            let on_cpu = e.recommend(&opts).unwrap();
            assert_eq!(on_gpu, on_cpu, "after {} events on {}", t + 1, info.name);
            // The tower on the device too (what the page runs): its f32 vector differs from
            // the CPU's in the last bits, so the raw scores may too; the list may not.
            let (out, hits) = pollster::block_on(gpu.top_k_for(&tower, q.input(), q.offset(), q.candidates())).unwrap();
            let worst = out.user.iter().zip(&user).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(worst < 1e-5, "GPU tower vs CPU tower: {worst}");
            let fused = e.rank(&q, &out.user, &opts, &e.refine(&q, &out.user, &hits)).unwrap();
            assert_eq!(fused.len(), on_cpu.len());
            for (a, b) in fused.iter().zip(&on_cpu) {
                assert_eq!((&a.id, a.match_percent, &a.reason, a.source), (&b.id, b.match_percent, &b.reason, b.source), "after {} events", t + 1);
                assert!((a.score - b.score).abs() <= 1e-5 * b.score.abs().max(1.0), "{} vs {}", a.score, b.score);
            }
            compared += 1;
        }
    }
    assert_eq!(compared, 20);
}
