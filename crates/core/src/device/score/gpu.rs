//! The GPU scorer: WGSL compute kernels on a caller-provided wgpu device (native Vulkan/Metal/DX12
//! or the browser's WebGPU), returning the same hits as [`super::reference_top_k`].
//!
//! The catalog is uploaded once ([`GpuScorer::new`]), rows padded to whole u32 words, split into
//! chunks that fit the device's storage-binding limit. A query costs one upload of the packed
//! query, one `score_select` dispatch per chunk (score 1024 items per workgroup, keep the best
//! `k`), `select` passes until at most [`CPU_MERGE`] candidates remain, their read-back, and a
//! merge of those on the host.

use std::borrow::Cow;

use wgpu::util::DeviceExt;

use super::{Hit, finish};
use crate::artifact::bundle::PersonInput;
use crate::device::gpu::{GpuError, bytes_of_f32, bytes_of_u32, submit_and_read, validated};
use crate::device::tower::gpu::{GpuTower, TowerOutput};
use crate::quant::{CatalogView, QuantizedVector};

const SOURCE: &str = include_str!("gpu.wgsl");
/// Items (or candidates) one workgroup handles.
const SEG: u64 = 1024;
/// Largest `k` the GPU scorer selects (half a segment, so every select pass at least halves the
/// candidates).
pub const MAX_GPU_K: usize = 512;
const EMPTY: u32 = u32::MAX;
/// Candidates the host merges itself (32 KiB of read-back) instead of one more select pass: on
/// small catalogs (ml100k: 2 segments) no select pass runs at all, which on a software adapter
/// (SwiftShader) saves a third of the work.
const CPU_MERGE: u32 = 4096;

/// Which dot-product kernel to compile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// `dot4I8Packed` (WGSL `packed_4x8_integer_dot_product`).
    Packed,
    /// Unpacking with `extractBits`, for adapters without the extension.
    Unpacked,
}

impl Kernel {
    /// The packed kernel when the instance's WGSL implementation has the extension.
    pub fn best_for(instance: &wgpu::Instance) -> Kernel {
        if instance.wgsl_language_features().contains(wgpu::WgslLanguageFeatures::Packed4x8IntegerDotProduct) {
            Kernel::Packed
        } else {
            Kernel::Unpacked
        }
    }

    fn dot4(self) -> &'static str {
        match self {
            Kernel::Packed => "fn dot4(a: u32, b: u32) -> i32 { return dot4I8Packed(a, b); }\n",
            Kernel::Unpacked => concat!(
                "fn dot4(a: u32, b: u32) -> i32 {\n",
                "    let x = bitcast<i32>(a);\n    let y = bitcast<i32>(b);\n",
                "    let xa = vec4<i32>(extractBits(x, 0u, 8u), extractBits(x, 8u, 8u), extractBits(x, 16u, 8u), extractBits(x, 24u, 8u));\n",
                "    let ya = vec4<i32>(extractBits(y, 0u, 8u), extractBits(y, 8u, 8u), extractBits(y, 16u, 8u), extractBits(y, 24u, 8u));\n",
                "    return dot(xa, ya);\n}\n"
            ),
        }
    }
}

struct Chunk {
    items: wgpu::Buffer,
    scales: wgpu::Buffer,
    params: wgpu::Buffer,
    n: u32,
    base: u32,
    segments: u32,
}

/// A catalog resident on a GPU, ready to score queries.
pub struct GpuScorer {
    device: wgpu::Device,
    queue: wgpu::Queue,
    kernel: Kernel,
    score: wgpu::ComputePipeline,
    select: wgpu::ComputePipeline,
    query: wgpu::Buffer,
    chunks: Vec<Chunk>,
    dim: usize,
    words: u32,
    len: usize,
}

/// Packs int8 values four to a little-endian u32, zero-padding the last word.
fn pack(values: &[i8], words: usize) -> Vec<u32> {
    (0..words)
        .map(|w| {
            let b: [u8; 4] = std::array::from_fn(|j| values.get(w * 4 + j).map_or(0, |&v| v as u8));
            u32::from_le_bytes(b)
        })
        .collect()
}

/// Workgroup grid for `groups` workgroups (x at most 65535, the WebGPU default limit).
fn grid(groups: u32) -> (u32, u32) {
    if groups <= 65535 { (groups.max(1), 1) } else { (65535, groups.div_ceil(65535)) }
}

impl GpuScorer {
    /// Uploads `view` to `device` and compiles the kernels.
    pub async fn new(device: &wgpu::Device, queue: &wgpu::Queue, view: CatalogView<'_>, kernel: Kernel) -> Result<Self, GpuError> {
        validated(device, || Self::build(device, queue, view, kernel)).await
    }

    fn build(device: &wgpu::Device, queue: &wgpu::Queue, view: CatalogView<'_>, kernel: Kernel) -> Result<Self, GpuError> {
        let (common, rest) = SOURCE.split_once("// @@ score").ok_or(GpuError::Device("scorer source lacks its score section".into()))?;
        let (score_src, select_src) = rest.split_once("// @@ select").ok_or(GpuError::Device("scorer source lacks its select section".into()))?;
        let module = |label: &str, body: &str, with_dot: bool| {
            let mut src = String::from(common);
            if with_dot {
                src.push_str(kernel.dot4());
            }
            src.push_str(body);
            device.create_shader_module(wgpu::ShaderModuleDescriptor { label: Some(label), source: wgpu::ShaderSource::Wgsl(Cow::Owned(src)) })
        };
        let pipeline = |m: &wgpu::ShaderModule, entry: &str| {
            device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(entry),
                layout: None,
                module: m,
                entry_point: Some(entry),
                compilation_options: Default::default(),
                cache: None,
            })
        };
        let score = pipeline(&module("hearth score", score_src, true), "score_select");
        let select = pipeline(&module("hearth select", select_src, false), "select");

        let dim = view.dim();
        let words = dim.div_ceil(4);
        let row_bytes = (words * 4) as u64;
        let limit = device.limits().max_storage_buffer_binding_size.min(device.limits().max_buffer_size);
        if row_bytes > limit {
            return Err(GpuError::TooWide { row: row_bytes, limit });
        }
        // Whole segments per chunk, as many as the binding limit allows.
        let per_chunk = ((limit / row_bytes) / SEG * SEG).max(SEG.min(limit / row_bytes)) as usize;
        let mut chunks = vec![];
        let mut start = 0;
        while start < view.len() {
            let end = (start + per_chunk).min(view.len());
            let part = view.slice(start..end);
            let mut packed = Vec::with_capacity((end - start) * words);
            for i in 0..part.len() {
                packed.extend(pack(part.row(i), words));
            }
            let n = (end - start) as u32;
            chunks.push(Chunk {
                items: device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: Some("hearth items"),
                    contents: &bytes_of_u32(&packed),
                    usage: wgpu::BufferUsages::STORAGE,
                }),
                scales: device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: Some("hearth scales"),
                    contents: &bytes_of_f32(part.scales()),
                    usage: wgpu::BufferUsages::STORAGE,
                }),
                params: device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("hearth score params"),
                    size: 32,
                    usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                }),
                n,
                base: start as u32,
                segments: n.div_ceil(SEG as u32),
            });
            start = end;
        }
        let query = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("hearth query"),
            size: row_bytes,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        queue.submit([]);
        Ok(GpuScorer { device: device.clone(), queue: queue.clone(), kernel, score, select, query, chunks, dim, words: words as u32, len: view.len() })
    }

    /// The kernel this scorer compiled.
    pub fn kernel(&self) -> Kernel {
        self.kernel
    }

    /// Number of items.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when the catalog is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The best `k` items for `q`, best first: the same hits as [`super::reference_top_k`].
    pub async fn top_k(&self, q: &QuantizedVector, k: usize) -> Result<Vec<Hit>, GpuError> {
        if q.values.len() != self.dim {
            return Err(GpuError::QueryWidth { expected: self.dim, found: q.values.len() });
        }
        if k > MAX_GPU_K {
            return Err(GpuError::KTooLarge(k));
        }
        if k == 0 || self.len == 0 {
            return Ok(vec![]);
        }
        let bytes = submit_and_read(&self.device, || self.dispatch(q, k)).await?;
        Ok(finish(merge(&bytes, k), q.scale))
    }

    /// The best `k` items for a person, with the user tower on the device too: `tower` computes
    /// their vector (plus `offset`, their fine-tuning offset) and the int8 query, and the scan
    /// selects from it, in one submission with one read-back. Returns the tower's output (the
    /// vector refines and ranks the hits) and the hits, as [`GpuScorer::top_k`] would give for
    /// that query. `tower` must live on this scorer's device.
    pub async fn top_k_for(&self, tower: &GpuTower, input: &PersonInput, offset: Option<&[f32]>, k: usize) -> Result<(TowerOutput, Vec<Hit>), GpuError> {
        if tower.dim() != self.dim {
            return Err(GpuError::QueryWidth { expected: self.dim, found: tower.dim() });
        }
        if k > MAX_GPU_K {
            return Err(GpuError::KTooLarge(k));
        }
        let bytes = submit_and_read(&self.device, || {
            tower.stage(input, offset)?;
            let mut encoder = self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("hearth person top-k") });
            tower.encode(&mut encoder, &self.query);
            let (current, m) = self.encode_scan(&mut encoder, k);
            let hits_bytes = u64::from(m) * 8;
            let staging = tower.staging(hits_bytes);
            if let Some(current) = current {
                encoder.copy_buffer_to_buffer(&current, 0, &staging, 0, hits_bytes);
            }
            tower.copy_output(&mut encoder, &self.query, &staging, hits_bytes);
            self.queue.submit([encoder.finish()]);
            Ok(staging)
        })
        .await?;
        // The candidates, then the tower's output (GpuTower::staging).
        let (hits, rest) = bytes.split_at(bytes.len().saturating_sub(tower.output_bytes() as usize));
        let out = tower.output(rest)?;
        let hits = finish(merge(hits, k), out.quantized.scale);
        Ok((out, hits))
    }

    fn dispatch(&self, q: &QuantizedVector, k: usize) -> Result<wgpu::Buffer, GpuError> {
        self.queue.write_buffer(&self.query, 0, &bytes_of_u32(&pack(&q.values, self.words as usize)));
        let mut encoder = self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("hearth top-k") });
        let (current, m) = self.encode_scan(&mut encoder, k);
        let Some(current) = current else { return Err(GpuError::Device("empty scan".into())) };
        let size = u64::from(m) * 8;
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("hearth read-back"),
            size,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        encoder.copy_buffer_to_buffer(&current, 0, &staging, 0, size);
        self.queue.submit([encoder.finish()]);
        Ok(staging)
    }

    /// Records the scan of the packed query in `self.query`: score passes, then select passes
    /// while more than [`CPU_MERGE`] candidates remain. Returns the candidates' buffer and their
    /// number `m`: groups of up to `k` in rank order, whose best `k` are the hits ([`merge`]).
    /// `None` when `k` is 0 or the catalog empty.
    fn encode_scan(&self, encoder: &mut wgpu::CommandEncoder, k: usize) -> (Option<wgpu::Buffer>, u32) {
        if k == 0 || self.len == 0 {
            return (None, 0);
        }
        let (device, queue) = (&self.device, &self.queue);
        let k32 = k as u32;
        let segments: u32 = self.chunks.iter().map(|c| c.segments).sum();
        let cand_buffer = |count: u64, label: &str| {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: count.max(1) * 8,
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            })
        };
        let mut current = cand_buffer(segments as u64 * k as u64, "hearth candidates");
        let mut out_offset = 0u32;
        for c in &self.chunks {
            let params = [c.n, self.words, c.base, k32, out_offset, 0, 0, 0];
            queue.write_buffer(&c.params, 0, &bytes_of_u32(&params));
            let bind = device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some("hearth score"),
                layout: &self.score.get_bind_group_layout(0),
                entries: &[
                    wgpu::BindGroupEntry { binding: 0, resource: c.params.as_entire_binding() },
                    wgpu::BindGroupEntry { binding: 1, resource: c.items.as_entire_binding() },
                    wgpu::BindGroupEntry { binding: 2, resource: c.scales.as_entire_binding() },
                    wgpu::BindGroupEntry { binding: 3, resource: self.query.as_entire_binding() },
                    wgpu::BindGroupEntry { binding: 4, resource: current.as_entire_binding() },
                ],
            });
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("hearth score"), timestamp_writes: None });
            pass.set_pipeline(&self.score);
            pass.set_bind_group(0, &bind, &[]);
            let (x, y) = grid(c.segments);
            pass.dispatch_workgroups(x, y, 1);
            drop(pass);
            out_offset += c.segments * k32;
        }
        // Reduce: each pass keeps the best k of every SEG candidates (at least halving them, as
        // k <= SEG / 2), until the CPU can merge what is left.
        let mut m = segments * k32;
        let mut groups = segments;
        while groups > 1 && m > CPU_MERGE {
            groups = m.div_ceil(SEG as u32);
            let next = cand_buffer(groups as u64 * k as u64, "hearth candidates");
            let params = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("hearth select params"),
                contents: &bytes_of_u32(&[m, k32, 0, 0]),
                usage: wgpu::BufferUsages::UNIFORM,
            });
            let bind = device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some("hearth select"),
                layout: &self.select.get_bind_group_layout(0),
                entries: &[
                    wgpu::BindGroupEntry { binding: 0, resource: params.as_entire_binding() },
                    wgpu::BindGroupEntry { binding: 1, resource: current.as_entire_binding() },
                    wgpu::BindGroupEntry { binding: 2, resource: next.as_entire_binding() },
                ],
            });
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("hearth select"), timestamp_writes: None });
            pass.set_pipeline(&self.select);
            pass.set_bind_group(0, &bind, &[]);
            let (x, y) = grid(groups);
            pass.dispatch_workgroups(x, y, 1);
            drop(pass);
            current = next;
            m = groups * k32;
        }
        (Some(current), m)
    }
}

/// The best `k` of a read-back of candidates, in rank order (empty slots dropped). The candidates'
/// scores are the GPU's exact ones, so this is the order a last select pass would give.
fn merge(bytes: &[u8], k: usize) -> Vec<Hit> {
    let mut hits: Vec<Hit> = bytes
        .chunks_exact(8)
        .map(|c| (f32::from_le_bytes([c[0], c[1], c[2], c[3]]), u32::from_le_bytes([c[4], c[5], c[6], c[7]])))
        .filter(|&(_, index)| index != EMPTY)
        .map(|(score, index)| Hit { index, score })
        .collect();
    hits.sort_by(super::rank_cmp);
    hits.truncate(k);
    hits
}

