//! Which burn backend trains and evaluates, chosen at run time (`--backend auto|cpu|wgpu|cuda`).
//!
//! CUDA and wgpu are compiled in (the `cuda` and `wgpu` features, both default), but neither may
//! work on the machine at hand, and both fail by panicking: burn's CUDA client when libcuda,
//! NVRTC or a GPU is missing, cubecl's wgpu client when there is no adapter. So each is probed
//! before burn touches it:
//! - **CUDA** in a child process (`hearth-aggregator` re-run with `HEARTH_PROBE=cuda`): cudarc
//!   loads the driver, counts the devices and names device 0, and one small burn op runs there
//!   and is checked. A panic, or a crash inside the driver, ends the child, not the caller; the
//!   caller reads one JSON line. CUDA needs no toolkit at build time (cudarc dlopens libcuda and
//!   NVRTC at run time; `.cargo/config.toml` pins the bindings' version).
//! - **wgpu** by asking wgpu for an adapter (an error, not a panic) and reading its type.
//!
//! `auto` takes CUDA when it works, else a wgpu adapter that is a real GPU, else the CPU
//! (burn-flex), and says why: a software adapter (Mesa's lavapipe) is slower than burn-flex.

use std::path::Path;

use burn::backend::{Autodiff, Flex};
use burn::tensor::backend::AutodiffBackend;
use serde::{Deserialize, Serialize};

use crate::error::{AggregatorError, Result};

/// What the operator asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// CUDA if it works, else a wgpu GPU, else the CPU; prints what it chose and why.
    #[default]
    Auto,
    /// burn-flex on the CPU (SIMD, multi-threaded).
    Cpu,
    /// burn-wgpu (Vulkan, Metal or DX12; Mesa lavapipe on machines without a GPU).
    Wgpu,
    /// burn-cuda (NVIDIA; libcuda and NVRTC loaded at run time).
    Cuda,
}

/// The backend that runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    /// burn-flex.
    Cpu,
    /// burn-wgpu on the default adapter.
    Wgpu,
    /// burn-cuda on device 0.
    Cuda,
}

impl Device {
    /// Its name, as `--backend` spells it.
    pub fn name(self) -> &'static str {
        match self {
            Device::Cpu => "cpu",
            Device::Wgpu => "wgpu",
            Device::Cuda => "cuda",
        }
    }
}

impl From<Device> for Backend {
    /// Asks for exactly that device (a choice passed on, probed again where it is used).
    fn from(d: Device) -> Backend {
        match d {
            Device::Cpu => Backend::Cpu,
            Device::Wgpu => Backend::Wgpu,
            Device::Cuda => Backend::Cuda,
        }
    }
}

/// The backend chosen and why.
#[derive(Debug, Clone, Serialize)]
pub struct Choice {
    /// What runs.
    pub device: Device,
    /// One line for people: what was found and why this one.
    pub why: String,
}

/// Work generic over the backend: [`run_on`] monomorphises it for the chosen one.
pub trait Job {
    /// What the work returns.
    type Out;
    /// Runs on `B` (an autodiff backend; evaluation uses `B::InnerBackend` on the same device).
    fn run<B: AutodiffBackend>(self, device: &B::Device) -> Self::Out;
}

/// Runs `job` on `device`'s backend (a [`Choice`]'s device: probed, so burn does not panic).
pub fn run_on<J: Job>(device: Device, job: J) -> Result<J::Out> {
    match device {
        Device::Cpu => Ok(job.run::<Autodiff<Flex>>(&Default::default())),
        #[cfg(feature = "wgpu")]
        Device::Wgpu => Ok(job.run::<Autodiff<burn::backend::Wgpu>>(&Default::default())),
        #[cfg(feature = "cuda")]
        Device::Cuda => Ok(job.run::<Autodiff<burn::backend::Cuda>>(&Default::default())),
        #[allow(unreachable_patterns)]
        other => Err(AggregatorError::Backend(format!("this build has no {} backend (cargo feature `{}`)", other.name(), other.name()))),
    }
}

/// The environment variable that makes `hearth-aggregator` run the CUDA probe and exit.
pub const PROBE_ENV: &str = "HEARTH_PROBE";

/// Resolves what the operator asked for, probing what it needs. `probe_exe` is the
/// `hearth-aggregator` executable the CUDA probe re-runs (None: probe in this process, catching
/// the panic; the default hook then prints its message too).
pub fn choose(asked: Backend, probe_exe: Option<&Path>) -> Result<Choice> {
    let cuda = || probe_cuda(probe_exe);
    match asked {
        Backend::Cpu => Ok(Choice { device: Device::Cpu, why: "asked for".into() }),
        Backend::Cuda => match cuda() {
            Ok(found) => Ok(Choice { device: Device::Cuda, why: format!("asked for; {found}") }),
            Err(e) => Err(AggregatorError::Backend(format!("--backend cuda: {e} (--backend auto takes another backend)"))),
        },
        Backend::Wgpu => match probe_wgpu() {
            Ok(a) => Ok(Choice { device: Device::Wgpu, why: format!("asked for; adapter {}", a.describe()) }),
            Err(e) => Err(AggregatorError::Backend(format!("--backend wgpu: {e}"))),
        },
        Backend::Auto => {
            let no_cuda = match cuda() {
                Ok(found) => return Ok(Choice { device: Device::Cuda, why: found }),
                Err(e) => e,
            };
            let why = match probe_wgpu() {
                Ok(a) if a.gpu => return Ok(Choice { device: Device::Wgpu, why: format!("no CUDA ({no_cuda}); wgpu adapter {}", a.describe()) }),
                Ok(a) => format!("no CUDA ({no_cuda}); the wgpu adapter {} is software, slower than burn-flex", a.describe()),
                Err(e) => format!("no CUDA ({no_cuda}); no wgpu GPU ({e})"),
            };
            Ok(Choice { device: Device::Cpu, why })
        }
    }
}

/// A wgpu adapter, as the probe found it.
#[derive(Debug, Clone)]
pub struct Adapter {
    /// Its name.
    pub name: String,
    /// Its type (discrete, integrated, virtual, CPU).
    pub kind: String,
    /// Its API (Vulkan, Metal, …).
    pub api: String,
    /// A GPU (discrete or integrated), not a software rasteriser.
    pub gpu: bool,
}

impl Adapter {
    fn describe(&self) -> String {
        format!("\"{}\" ({}, {})", self.name, self.kind, self.api)
    }
}

/// Asks wgpu for the high-performance adapter burn-wgpu would take: on the graphics API cubecl
/// uses (Metal on macOS, Vulkan elsewhere), not any wgpu knows (a GL-only "GPU" would pass a
/// wider probe and then panic inside cubecl).
#[cfg(feature = "wgpu")]
pub fn probe_wgpu() -> std::result::Result<Adapter, String> {
    let api = if cfg!(target_os = "macos") { wgpu::Backends::METAL } else { wgpu::Backends::VULKAN };
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor { backends: api, ..wgpu::InstanceDescriptor::new_without_display_handle() });
    let options = wgpu::RequestAdapterOptions { power_preference: wgpu::PowerPreference::HighPerformance, ..Default::default() };
    let adapter = pollster::block_on(instance.request_adapter(&options)).map_err(|e| format!("no adapter: {e}"))?;
    let info = adapter.get_info();
    let gpu = matches!(info.device_type, wgpu::DeviceType::DiscreteGpu | wgpu::DeviceType::IntegratedGpu);
    Ok(Adapter { name: info.name, kind: format!("{:?}", info.device_type), api: format!("{:?}", info.backend), gpu })
}

/// Without the `wgpu` feature there is nothing to probe.
#[cfg(not(feature = "wgpu"))]
pub fn probe_wgpu() -> std::result::Result<Adapter, String> {
    Err("this build has no wgpu backend (cargo feature `wgpu`)".into())
}

/// How long the CUDA probe may take (a GPU in an error state can hang `cuInit`).
pub const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Probes CUDA: in a child `probe_exe` when given (killed after [`PROBE_TIMEOUT`]), else on the
/// calling thread. Ok: one line naming the devices found; Err: why CUDA cannot run here.
pub fn probe_cuda(probe_exe: Option<&Path>) -> std::result::Result<String, String> {
    if !cfg!(feature = "cuda") {
        return Err("this build has no CUDA backend (cargo feature `cuda`)".into());
    }
    let Some(exe) = probe_exe else {
        return std::panic::catch_unwind(cuda_here).unwrap_or_else(|p| {
            let msg = p.downcast_ref::<String>().map(String::as_str).or_else(|| p.downcast_ref::<&str>().copied());
            Err(first_sentence(msg.unwrap_or("the probe panicked")))
        });
    };
    let line = answer_of(exe, PROBE_TIMEOUT)?;
    let v: ProbeAnswer = serde_json::from_str(&line).map_err(|e| format!("unreadable probe answer {line:?}: {e}"))?;
    match (v.found, v.error) {
        (Some(found), None) => Ok(found),
        (_, Some(e)) => Err(e),
        (None, None) => Err("empty probe answer".into()),
    }
}

/// Runs the probe `exe` and returns the last JSON line it printed.
fn answer_of(exe: &Path, timeout: std::time::Duration) -> std::result::Result<String, String> {
    use std::io::Read;
    let mut child = std::process::Command::new(exe)
        .env(PROBE_ENV, "cuda")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run the probe {}: {e}", exe.display()))?;
    let deadline = std::time::Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if std::time::Instant::now() < deadline => std::thread::sleep(std::time::Duration::from_millis(10)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("the probe did not answer within {} s (a hung driver?)", timeout.as_secs()));
            }
            Err(e) => return Err(format!("waiting for the probe: {e}")),
        }
    };
    let mut text = String::new();
    if let Some(mut out) = child.stdout.take() {
        out.read_to_string(&mut text).map_err(|e| format!("reading the probe's answer: {e}"))?;
    }
    match text.lines().rev().find(|l| l.starts_with('{')) {
        Some(l) => Ok(l.to_string()),
        None => Err(format!("the probe ended with {status} and no answer")),
    }
}

/// What the probe prints: exactly one of the two.
#[derive(Serialize, Deserialize)]
struct ProbeAnswer {
    found: Option<String>,
    error: Option<String>,
}

fn answer(r: std::result::Result<String, String>) -> String {
    let (found, error) = match r {
        Ok(f) => (Some(f), None),
        Err(e) => (None, Some(e)),
    };
    serde_json::to_string(&ProbeAnswer { found, error }).unwrap_or_default()
}

/// The probe's own side: what `hearth-aggregator` runs (and prints, then exits) when
/// [`PROBE_ENV`] is `cuda`. A panic inside cudarc or burn is turned into an answer by the hook
/// this installs; the process exits right after, so the hook is never restored.
pub fn run_probe_and_exit() -> ! {
    std::panic::set_hook(Box::new(|info| {
        let msg = info.payload_as_str().unwrap_or("a panic without a message");
        println!("{}", answer(Err(first_sentence(msg))));
        std::process::exit(2);
    }));
    println!("{}", answer(cuda_here()));
    std::process::exit(0);
}

/// cudarc's load failure is a paragraph listing three dozen file names: say which library is
/// missing; any other panic's first sentence says it.
fn first_sentence(msg: &str) -> String {
    if msg.contains("load the \"cuda\" shared library") {
        return "libcuda not found (no NVIDIA driver installed)".into();
    }
    if msg.contains("load the \"nvrtc\" shared library") {
        return "libnvrtc not found (NVRTC: the CUDA runtime compiler, from the toolkit or nvidia-cuda-nvrtc)".into();
    }
    msg.split(". ").next().unwrap_or(msg).to_string()
}

/// The probe itself (may panic inside cudarc or burn).
#[cfg(feature = "cuda")]
fn cuda_here() -> std::result::Result<String, String> {
    use burn::tensor::Tensor;
    use cudarc::driver::CudaContext;
    let n = CudaContext::device_count().map_err(|e| format!("libcuda loaded but cuInit failed: {e}"))?;
    if n < 1 {
        return Err("libcuda loaded, no CUDA device".into());
    }
    let name = CudaContext::new(0).and_then(|c| c.name()).map_err(|e| format!("device 0: {e}"))?;
    // One op through burn (NVRTC compiles its kernel): the backend works, not only the driver.
    type B = burn::backend::Cuda;
    let device = burn::backend::cuda::CudaDevice::default();
    let sum: f32 = Tensor::<B, 1>::from_floats([1.0, 2.0, 3.0, 4.0], &device).sum().into_scalar();
    if sum != 10.0 {
        return Err(format!("burn-cuda summed 1+2+3+4 to {sum}"));
    }
    Ok(format!("{n} CUDA device{} ({name}); a burn op ran on device 0", if n == 1 { "" } else { "s" }))
}

#[cfg(not(feature = "cuda"))]
fn cuda_here() -> std::result::Result<String, String> {
    Err("this build has no CUDA backend (cargo feature `cuda`)".into())
}

/// This executable when it is `hearth-aggregator` (it answers [`PROBE_ENV`]); None otherwise (a
/// test or another program embedding the crate), so the probe runs in-process.
pub fn probe_exe() -> Option<std::path::PathBuf> {
    let exe = std::env::current_exe().ok()?;
    (exe.file_stem()? == "hearth-aggregator").then_some(exe)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_in_process_probe_answers_instead_of_panicking() {
        // No GPU (CI): cudarc's panic becomes the one-line reason; with one, the devices found.
        match probe_cuda(None) {
            Ok(found) => assert!(found.contains("CUDA device"), "{found}"),
            Err(why) => assert!(!why.is_empty() && !why.contains("searched for library names"), "{why}"),
        }
        // Asking for it says the same, as an error; auto never fails for want of it.
        let auto = choose(Backend::Auto, None).expect("auto always chooses");
        match choose(Backend::Cuda, None) {
            Ok(c) => assert_eq!((c.device, auto.device), (Device::Cuda, Device::Cuda)),
            Err(e) => {
                assert!(e.to_string().starts_with("backend: --backend cuda: "), "{e}");
                assert_ne!(auto.device, Device::Cuda);
            }
        }
    }

    /// A stand-in probe: a shell script printing `out` and exiting with `code`.
    fn fake_probe(name: &str, body: &str) -> std::path::PathBuf {
        let p = std::env::temp_dir().join(format!("hearth-fake-probe-{}-{name}", std::process::id()));
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).expect("write the script");
        let _ = std::process::Command::new("chmod").arg("+x").arg(&p).status();
        p
    }

    #[test]
    fn the_child_probe_answer_is_read_strictly() {
        let ok = fake_probe("ok", "echo 'a log line'; echo '{\"found\":\"2 CUDA devices\",\"error\":null}'");
        assert_eq!(probe_cuda(Some(&ok)), if cfg!(feature = "cuda") { Ok("2 CUDA devices".into()) } else { Err("this build has no CUDA backend (cargo feature `cuda`)".into()) });
        if !cfg!(feature = "cuda") {
            return;
        }
        let no = fake_probe("no", "echo '{\"found\":null,\"error\":\"libcuda not found\"}'; exit 2");
        assert_eq!(probe_cuda(Some(&no)), Err("libcuda not found".into()));
        let garbage = fake_probe("garbage", "echo '{not json'");
        assert!(probe_cuda(Some(&garbage)).is_err_and(|e| e.starts_with("unreadable probe answer")));
        let silent = fake_probe("silent", "kill -SEGV $$");
        assert!(probe_cuda(Some(&silent)).is_err_and(|e| e.contains("no answer")), "a crashed probe");
        let hung = fake_probe("hung", "sleep 30");
        assert!(answer_of(&hung, std::time::Duration::from_millis(300)).is_err_and(|e| e.contains("did not answer")));
        let missing = std::path::Path::new("/nonexistent/hearth-aggregator");
        assert!(probe_cuda(Some(missing)).is_err_and(|e| e.starts_with("cannot run the probe")));
        for p in [ok, no, garbage, silent, hung] {
            let _ = std::fs::remove_file(p);
        }
    }

    #[test]
    fn messages_name_the_missing_library() {
        let cudarc = "Unable to dynamically load the \"cuda\" shared library - searched for library names: [\"libcuda.so\"]. Ensure that `LD_LIBRARY_PATH` has the correct path";
        assert_eq!(first_sentence(cudarc), "libcuda not found (no NVIDIA driver installed)");
        assert!(first_sentence("Unable to dynamically load the \"nvrtc\" shared library - …").starts_with("libnvrtc not found"));
        assert_eq!(first_sentence("CUDA_ERROR_NO_DEVICE. More words."), "CUDA_ERROR_NO_DEVICE");
    }
}
