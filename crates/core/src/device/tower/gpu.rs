//! The user tower on a GPU: [`UserTower`]'s forward pass as one WGSL kernel (`gpu.wgsl`) on a
//! caller-provided wgpu device (native Vulkan/Metal/DX12 or the browser's WebGPU).
//!
//! The tower's parameters are uploaded once ([`GpuTower::new`]). A person costs one small upload
//! (their history's catalog indices, profile tags and fine-tuning offset) and one dispatch of one
//! workgroup, which also writes the int8 query the catalog scan reads: with
//! [`GpuScorer::top_k_for`](crate::device::score::gpu::GpuScorer::top_k_for) the tower and the scan run
//! in one submission with one read-back. [`GpuTower::person_vector`] runs the tower alone.
//!
//! The kernel computes in f32 (the CPU tower accumulates in f64), so its vector equals the CPU's
//! within float rounding, not bit for bit; tests hold both within 1e-5 of burn's forward pass.

use std::borrow::Cow;

use wgpu::util::DeviceExt;

use super::{UserTower, read_input};
use crate::artifact::ModelDims;
use crate::artifact::bundle::PersonInput;
use crate::quant::QuantizedVector;
use crate::device::gpu::{GpuError, bytes_of_f32, bytes_of_u32, submit_and_read, validated};

const SOURCE: &str = include_str!("gpu.wgsl");

/// A person's vector as the GPU tower computed it.
#[derive(Debug, Clone, PartialEq)]
pub struct TowerOutput {
    /// The user vector (`dim` values), fine-tuning offset included.
    pub user: Vec<f32>,
    /// The same, int8-quantized on the device: the query the catalog scan used.
    pub quantized: QuantizedVector,
}

/// A model's user tower resident on a GPU.
pub struct GpuTower {
    device: wgpu::Device,
    queue: wgpu::Queue,
    pipeline: wgpu::ComputePipeline,
    params: wgpu::Buffer,
    hist_id: wgpu::Buffer,
    weights: wgpu::Buffer,
    tags: wgpu::Buffer,
    person: wgpu::Buffer,
    work: wgpu::Buffer,
    /// The query buffer [`GpuTower::person_vector`] writes (the scorer brings its own).
    query: wgpu::Buffer,
    dims: ModelDims,
    dim: usize,
    /// Offset of the output (`dim` values, then the query scale) in `work`, in f32 elements.
    out: usize,
}

/// Offsets of the kernel's `TowerParams` (see `gpu.wgsl`), in the struct's order.
struct Layout {
    hist_tag: usize,
    user_tag: usize,
    recency: usize,
    w1: usize,
    b1: usize,
    w2: usize,
    b2: usize,
}

impl GpuTower {
    /// Uploads `tower`'s parameters to `device` and compiles the kernel.
    pub async fn new(device: &wgpu::Device, queue: &wgpu::Queue, tower: &UserTower) -> Result<GpuTower, GpuError> {
        validated(device, || Self::build(device, queue, tower)).await
    }

    fn build(device: &wgpu::Device, queue: &wgpu::Queue, tower: &UserTower) -> Result<GpuTower, GpuError> {
        let d = tower.dims;
        let (dim, hidden) = (d.dim, d.hidden);
        // Everything but the history-item table in one buffer (WebGPU's default allows only 8
        // storage buffers per stage).
        let mut weights = Vec::new();
        let mut put = |v: &[f32]| {
            let at = weights.len();
            weights.extend_from_slice(v);
            at
        };
        put(&[0.0]); // offset 0 is never a tensor's: keeps every field distinct
        let layout = Layout {
            hist_tag: put(&tower.hist_tag),
            user_tag: put(&tower.user_tag),
            recency: put(&tower.recency),
            w1: put(&tower.w1),
            b1: put(&tower.b1),
            w2: put(&tower.w2),
            b2: put(&tower.b2),
        };
        // Item tags as row starts (items + 1) and one list.
        let mut tags: Vec<u32> = Vec::with_capacity(d.items + 1);
        let mut list: Vec<u32> = Vec::new();
        for item in &tower.item_tags {
            tags.push(list.len() as u32);
            list.extend(item);
        }
        tags.push(list.len() as u32);
        let tag_list = tags.len();
        tags.extend(list);

        let limit = device.limits().max_storage_buffer_binding_size.min(device.limits().max_buffer_size);
        for (what, len) in [("the history-item table", tower.hist_id.len()), ("the tower's weights", weights.len()), ("the item tags", tags.len())] {
            let bytes = 4 * len as u64;
            if bytes > limit {
                return Err(GpuError::TooLarge { what, bytes, limit });
            }
        }
        let words = dim.div_ceil(4);
        // work: offset (dim) | x (3 dim) | hidden | user (dim) | scale
        let (x, h) = (dim, 4 * dim);
        let out = h + hidden;
        let work_len = out + dim + 1;
        let params: Vec<u32> = [
            dim,
            hidden,
            words,
            layout.hist_tag,
            layout.user_tag,
            layout.recency,
            layout.w1,
            layout.b1,
            layout.w2,
            layout.b2,
            tag_list,
            x,
            h,
            out,
            0,
            0,
        ]
        .iter()
        .map(|&v| v as u32)
        .collect();

        let init = |label: &str, contents: &[u8], usage: wgpu::BufferUsages| {
            device.create_buffer_init(&wgpu::util::BufferInitDescriptor { label: Some(label), contents, usage })
        };
        let empty = |label: &str, size: u64, usage: wgpu::BufferUsages| {
            device.create_buffer(&wgpu::BufferDescriptor { label: Some(label), size: size.max(4), usage, mapped_at_creation: false })
        };
        let storage = wgpu::BufferUsages::STORAGE;
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("hearth tower"),
            source: wgpu::ShaderSource::Wgsl(Cow::Borrowed(SOURCE)),
        });
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some("tower"),
            layout: None,
            module: &module,
            entry_point: Some("tower"),
            compilation_options: Default::default(),
            cache: None,
        });
        let tower = GpuTower {
            pipeline,
            params: init("hearth tower params", &bytes_of_u32(&params), wgpu::BufferUsages::UNIFORM),
            hist_id: init("hearth tower items", &bytes_of_f32(&tower.hist_id), storage),
            weights: init("hearth tower weights", &bytes_of_f32(&weights), storage),
            tags: init("hearth tower tags", &bytes_of_u32(&tags), storage),
            person: empty("hearth tower person", 4 * (2 + d.history + d.user_tags) as u64, storage | wgpu::BufferUsages::COPY_DST),
            work: empty("hearth tower work", 4 * work_len as u64, storage | wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC),
            query: empty("hearth tower query", 4 * words as u64, storage | wgpu::BufferUsages::COPY_SRC),
            device: device.clone(),
            queue: queue.clone(),
            dims: d,
            dim,
            out,
        };
        queue.submit([]);
        Ok(tower)
    }

    /// The tower's output width.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The person's vector (plus `offset`, their fine-tuning offset, when given), computed on the
    /// device, and its int8 quantization.
    pub async fn person_vector(&self, input: &PersonInput, offset: Option<&[f32]>) -> Result<TowerOutput, GpuError> {
        let bytes = submit_and_read(&self.device, || {
            self.stage(input, offset)?;
            let mut encoder = self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("hearth tower") });
            self.encode(&mut encoder, &self.query);
            let staging = self.staging(0);
            self.copy_output(&mut encoder, &self.query, &staging, 0);
            self.queue.submit([encoder.finish()]);
            Ok(staging)
        })
        .await?;
        self.output(&bytes)
    }

    /// Writes the person's input and offset for the next [`GpuTower::encode`].
    pub(crate) fn stage(&self, input: &PersonInput, offset: Option<&[f32]>) -> Result<(), GpuError> {
        if let Some(o) = offset.filter(|o| o.len() != self.dim) {
            return Err(GpuError::QueryWidth { expected: self.dim, found: o.len() });
        }
        let (recent, tags) = read_input(&self.dims, input);
        let mut person = Vec::with_capacity(2 + recent.len() + tags.len());
        person.extend([recent.len() as u32, tags.len() as u32]);
        person.extend(recent.iter().chain(&tags).map(|&i| i as u32));
        self.queue.write_buffer(&self.person, 0, &bytes_of_u32(&person));
        let zeros = vec![0f32; self.dim];
        self.queue.write_buffer(&self.work, 0, &bytes_of_f32(offset.unwrap_or(&zeros)));
        Ok(())
    }

    /// Records the tower's dispatch: it writes the person's vector to its work buffer and the
    /// packed int8 query to `query` (at least `dim / 4` rounded up words, `STORAGE`).
    pub(crate) fn encode(&self, encoder: &mut wgpu::CommandEncoder, query: &wgpu::Buffer) {
        let bind = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("hearth tower"),
            layout: &self.pipeline.get_bind_group_layout(0),
            entries: &[
                wgpu::BindGroupEntry { binding: 0, resource: self.params.as_entire_binding() },
                wgpu::BindGroupEntry { binding: 1, resource: self.hist_id.as_entire_binding() },
                wgpu::BindGroupEntry { binding: 2, resource: self.weights.as_entire_binding() },
                wgpu::BindGroupEntry { binding: 3, resource: self.tags.as_entire_binding() },
                wgpu::BindGroupEntry { binding: 4, resource: self.person.as_entire_binding() },
                wgpu::BindGroupEntry { binding: 5, resource: self.work.as_entire_binding() },
                wgpu::BindGroupEntry { binding: 6, resource: query.as_entire_binding() },
            ],
        });
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("hearth tower"), timestamp_writes: None });
        pass.set_pipeline(&self.pipeline);
        pass.set_bind_group(0, &bind, &[]);
        pass.dispatch_workgroups(1, 1, 1);
    }

    /// Bytes of the tower's output in a read-back: `dim` f32 values, the query scale, then the
    /// packed query words.
    pub(crate) fn output_bytes(&self) -> u64 {
        4 * (self.dim as u64 + 1 + self.words() as u64)
    }

    fn words(&self) -> usize {
        self.dim.div_ceil(4)
    }

    /// A mappable buffer for `extra` bytes followed by the tower's output.
    pub(crate) fn staging(&self, extra: u64) -> wgpu::Buffer {
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("hearth read-back"),
            size: extra + self.output_bytes(),
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    }

    /// Copies the tower's output (vector and scale) and the packed `query` it wrote to `staging`
    /// at byte `at` (`query` needs `COPY_SRC`).
    pub(crate) fn copy_output(&self, encoder: &mut wgpu::CommandEncoder, query: &wgpu::Buffer, staging: &wgpu::Buffer, at: u64) {
        let head = 4 * (self.dim as u64 + 1);
        encoder.copy_buffer_to_buffer(&self.work, 4 * self.out as u64, staging, at, head);
        encoder.copy_buffer_to_buffer(query, 0, staging, at + head, 4 * self.words() as u64);
    }

    /// The output in a read-back (`bytes` starting where [`GpuTower::copy_output`] put it).
    /// Refused if any value is not finite (a fine-tuning offset can carry one): the scan's query
    /// would be meaningless.
    pub(crate) fn output(&self, bytes: &[u8]) -> Result<TowerOutput, GpuError> {
        let short = || GpuError::Readback("short read-back".into());
        let word = |i: usize| bytes.get(4 * i..4 * i + 4).and_then(|b| b.try_into().ok()).map(u32::from_le_bytes).ok_or_else(short);
        let user = (0..self.dim).map(|i| word(i).map(f32::from_bits)).collect::<Result<Vec<f32>, _>>()?;
        if user.iter().any(|v| !v.is_finite()) {
            return Err(GpuError::NotFinite);
        }
        let scale = f32::from_bits(word(self.dim)?);
        let mut values = Vec::with_capacity(4 * self.words());
        for w in 0..self.words() {
            values.extend(word(self.dim + 1 + w)?.to_le_bytes().map(|b| b as i8));
        }
        values.truncate(self.dim);
        Ok(TowerOutput { user, quantized: QuantizedVector { values, scale } })
    }
}
