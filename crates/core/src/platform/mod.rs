//! What differs between wasm32 and native targets, in one place: system randomness, threads and
//! the wait for GPU work. Outside this module only the SIMD kernels
//! (`device::score::simd`) name a target (the tidy test checks it).
//!
//! Core reads no clock: times (`ts`, `now`) come from the caller, so the same code runs in a
//! browser, in workerd and natively, and tests choose their time.

/// The system's secure random generator failed (it does not on any platform we run on; the
/// error keeps that an error instead of a panic).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the system random generator failed")]
pub struct RandomError;

/// `N` bytes from the system's secure generator (ring: `getrandom` natively, `crypto.getRandomValues`
/// in a browser or a worker).
pub fn random<const N: usize>() -> Result<[u8; N], RandomError> {
    let mut b = [0u8; N];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b).map_err(|_| RandomError)?;
    Ok(b)
}

/// How many threads a scan may use when `requested`: as asked natively, one on wasm32 (a page's
/// module has one thread; the page spreads work over Web Workers itself).
pub fn threads(requested: usize) -> usize {
    if cfg!(target_family = "wasm") { 1 } else { requested.max(1) }
}

/// `f(0), …, f(n - 1)`, in order: on rayon's pool natively, one after another on wasm32.
pub fn par_map<T: Send>(n: usize, f: impl Fn(usize) -> T + Sync + Send) -> Vec<T> {
    #[cfg(not(target_family = "wasm"))]
    {
        use rayon::prelude::*;
        (0..n).into_par_iter().map(f).collect()
    }
    #[cfg(target_family = "wasm")]
    {
        (0..n).map(f).collect()
    }
}

/// Waits until `device` has finished its submitted work, so a mapped read-back completes:
/// natively by polling; in a browser WebGPU calls back on its own, so there is nothing to do.
#[cfg(feature = "gpu")]
pub fn gpu_wait(device: &wgpu::Device) -> Result<(), String> {
    #[cfg(not(target_family = "wasm"))]
    {
        device.poll(wgpu::PollType::wait_indefinitely()).map(|_| ()).map_err(|e| e.to_string())
    }
    #[cfg(target_family = "wasm")]
    {
        let _ = device;
        Ok(())
    }
}
