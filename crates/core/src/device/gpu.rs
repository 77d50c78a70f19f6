//! The GPU runtime the scorer ([`super::score::gpu`]) and the user tower
//! ([`super::tower::gpu`]) share: opening a device, the error type, validation scopes, and reading
//! results back (natively by polling, in a browser when WebGPU calls back).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use super::score::gpu::MAX_GPU_K;

/// Why the GPU scorer could not run.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum GpuError {
    /// No GPU adapter is available.
    #[error("no GPU adapter available: {0}")]
    NoAdapter(String),
    /// The device rejected a shader, pipeline or buffer (the message is wgpu's).
    #[error("the GPU device rejected the scorer: {0}")]
    Device(String),
    /// One item row is larger than the device's storage-binding limit.
    #[error("an item row of {row} bytes does not fit the device's {limit}-byte storage binding")]
    TooWide {
        /// Bytes per row.
        row: u64,
        /// The device limit.
        limit: u64,
    },
    /// `k` above [`MAX_GPU_K`].
    #[error("k = {0} is above the GPU scorer's maximum of {MAX_GPU_K}")]
    KTooLarge(usize),
    /// The query's width is not the catalog's.
    #[error("query has {found} values, the catalog {expected}")]
    QueryWidth {
        /// Catalog width.
        expected: usize,
        /// Query width.
        found: usize,
    },
    /// Reading the results back failed.
    #[error("reading results back from the GPU failed: {0}")]
    Readback(String),
    /// A buffer is larger than the device's storage-binding limit.
    #[error("{what} ({bytes} bytes) does not fit the device's {limit}-byte storage binding")]
    TooLarge {
        /// What did not fit.
        what: &'static str,
        /// Its size.
        bytes: u64,
        /// The device limit.
        limit: u64,
    },
    /// The user tower's vector holds a NaN or an infinity (from a damaged fine-tuning offset).
    #[error("the user vector is not finite")]
    NotFinite,
}

/// Opens the first high-performance adapter of `instance` with its own limits (the defaults cap
/// storage bindings far below what most adapters allow). Errors if there is none.
pub async fn request_device(instance: &wgpu::Instance) -> Result<(wgpu::Device, wgpu::Queue, wgpu::AdapterInfo), GpuError> {
    let adapter = instance
        .request_adapter(&wgpu::RequestAdapterOptions { power_preference: wgpu::PowerPreference::HighPerformance, ..Default::default() })
        .await
        .map_err(|e| GpuError::NoAdapter(e.to_string()))?;
    let (device, queue) = adapter
        .request_device(&wgpu::DeviceDescriptor {
            label: Some("hearth"),
            required_limits: adapter.limits(),
            ..Default::default()
        })
        .await
        .map_err(|e| GpuError::Device(e.to_string()))?;
    Ok((device, queue, adapter.get_info()))
}

/// Little-endian bytes of `v`, for a buffer upload.
pub(crate) fn bytes_of_u32(v: &[u32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Little-endian bytes of `v`, for a buffer upload.
pub(crate) fn bytes_of_f32(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Runs `f` (it records or submits work on `device`) under a validation error scope: `f`'s own
/// error first, else a validation error as [`GpuError::Device`], else `f`'s value.
pub(crate) async fn validated<T>(device: &wgpu::Device, f: impl FnOnce() -> Result<T, GpuError>) -> Result<T, GpuError> {
    let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
    let ran = f();
    let error = scope.pop().await;
    let value = ran?;
    match error {
        Some(e) => Err(GpuError::Device(e.to_string())),
        None => Ok(value),
    }
}

/// [`validated`] work that submits itself and returns the mappable buffer holding its results;
/// then the bytes of that buffer.
pub(crate) async fn submit_and_read(device: &wgpu::Device, record: impl FnOnce() -> Result<wgpu::Buffer, GpuError>) -> Result<Vec<u8>, GpuError> {
    let staging = validated(device, record).await?;
    read_back(device, &staging).await
}

/// Maps `buffer` for reading and returns its bytes. Natively this polls the device until the map
/// completes; in a browser the future resolves when WebGPU calls back.
async fn read_back(device: &wgpu::Device, buffer: &wgpu::Buffer) -> Result<Vec<u8>, GpuError> {
    let state: Arc<Mutex<MapState>> = Arc::default();
    let cb_state = state.clone();
    buffer.slice(..).map_async(wgpu::MapMode::Read, move |r| {
        if let Ok(mut s) = cb_state.lock() {
            s.result = Some(r.map_err(|e| e.to_string()));
            if let Some(w) = s.waker.take() {
                w.wake();
            }
        }
    });
    crate::platform::gpu_wait(device).map_err(GpuError::Readback)?;
    MapFuture { state }.await.map_err(GpuError::Readback)?;
    let bytes = buffer.slice(..).get_mapped_range().to_vec();
    buffer.unmap();
    Ok(bytes)
}

#[derive(Default)]
struct MapState {
    result: Option<Result<(), String>>,
    waker: Option<Waker>,
}

struct MapFuture {
    state: Arc<Mutex<MapState>>,
}

impl Future for MapFuture {
    type Output = Result<(), String>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Ok(mut s) = self.state.lock() else {
            return Poll::Ready(Err("map state poisoned".into()));
        };
        match s.result.take() {
            Some(r) => Poll::Ready(r),
            None => {
                s.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}
