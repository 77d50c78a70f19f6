//! `--backend auto|cpu|wgpu|cuda`, through the binary as operators run it. What CUDA does depends
//! on the machine, so the probe is asked first and every other answer is checked against it:
//! without a GPU (CI), `--backend cuda` must fail with the probe's reason and no panic, and `auto`
//! must fall back to the CPU and say why; with one, both must evaluate on CUDA with the CPU's
//! metrics. wgpu runs everywhere CI runs (lavapipe) and must reproduce the CPU's metrics.

mod common;

use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_hearth-aggregator"))
}

/// `eval --json` of the committed model on MovieLens on `backend`: (success, metrics, stderr).
fn eval(backend: &str) -> (bool, Option<serde_json::Value>, String) {
    let out = bin()
        .args(["eval", "--json", "--backend", backend, "--model"])
        .arg(common::root().join("models/ml100k"))
        .arg("--data")
        .arg(common::ml100k())
        .output()
        .expect("run hearth-aggregator");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!err.contains("panicked"), "--backend {backend} panicked: {err}");
    let metrics = serde_json::from_slice(&out.stdout).ok();
    (out.status.success(), metrics, err)
}

/// The probe's own answer: Ok(devices found) or Err(why not).
fn probe() -> Result<String, String> {
    let out = bin().env("HEARTH_PROBE", "cuda").output().expect("run the probe");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("probe answered {text:?}: {e}"));
    match (v["found"].as_str(), v["error"].as_str()) {
        (Some(f), None) => {
            assert!(out.status.success());
            Ok(f.to_string())
        }
        (None, Some(e)) => {
            assert!(!out.status.success(), "a failed probe exits non-zero");
            Err(e.to_string())
        }
        _ => panic!("the probe must answer exactly one of found/error: {line}"),
    }
}

fn sampled_hr(m: &serde_json::Value) -> f64 {
    m["model"]["sampled"]["hr@10"].as_f64().expect("sampled HR@10")
}

fn full_hr(m: &serde_json::Value) -> f64 {
    m["model"]["full"]["hr@10"].as_f64().expect("full HR@10")
}

#[test]
fn backends_are_probed_chosen_and_agree_with_the_cpu() {
    let (ok, cpu, err) = eval("cpu");
    assert!(ok, "cpu: {err}");
    let cpu = cpu.expect("cpu metrics");
    assert!(err.contains("backend: cpu (asked for"), "{err}");
    assert!(sampled_hr(&cpu) > 0.6, "the committed model scores {cpu}");

    // wgpu (lavapipe here): the same scores; float sums in another order may move a tie, so
    // allow a hair.
    let (ok, wgpu, err) = eval("wgpu");
    assert!(ok, "wgpu (lavapipe is installed in CI): {err}");
    let wgpu = wgpu.expect("wgpu metrics");
    assert!(err.contains("backend: wgpu (asked for; adapter"), "{err}");
    assert!((sampled_hr(&wgpu) - sampled_hr(&cpu)).abs() < 2e-3, "wgpu {wgpu} vs cpu {cpu}");
    assert!((full_hr(&wgpu) - full_hr(&cpu)).abs() < 2e-3, "wgpu {wgpu} vs cpu {cpu}");

    let (cuda_ok, cuda, cuda_err) = eval("cuda");
    let (auto_ok, auto, auto_err) = eval("auto");
    assert!(auto_ok, "auto never fails for want of a GPU: {auto_err}");
    let auto = auto.expect("auto metrics");
    match probe() {
        Ok(found) => {
            eprintln!("CUDA here: {found}");
            assert!(cuda_ok, "the probe found {found} but --backend cuda failed: {cuda_err}");
            let cuda = cuda.expect("cuda metrics");
            assert!((sampled_hr(&cuda) - sampled_hr(&cpu)).abs() < 2e-3, "cuda {cuda} vs cpu {cpu}");
            assert!(auto_err.contains("backend: cuda ("), "auto must take CUDA when it works: {auto_err}");
        }
        Err(why) => {
            eprintln!("no CUDA here: {why}");
            assert!(!cuda_ok && cuda.is_none(), "--backend cuda must fail without CUDA");
            assert!(cuda_err.contains(&format!("error: backend: --backend cuda: {why}")), "{cuda_err}");
            assert!(!why.contains("searched for library names"), "the reason is one line, not cudarc's list: {why}");
            assert!(auto_err.contains(&format!("no CUDA ({why})")), "auto says why it did not take CUDA: {auto_err}");
            assert!(!auto_err.contains("backend: cuda"), "{auto_err}");
        }
    }
    // Whatever auto took, its scores are the CPU's.
    assert!((sampled_hr(&auto) - sampled_hr(&cpu)).abs() < 2e-3, "auto {auto} vs cpu {cpu}");
}

#[test]
fn unknown_backends_are_refused_by_name() {
    let out = bin().args(["eval", "--model", "m", "--data", "d", "--backend", "tpu"]).output().expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("invalid value 'tpu'") && err.contains("auto, cpu, wgpu, cuda"), "{err}");
    let out = bin()
        .args(["serve", "--print-config"])
        .env("HEARTH_AGGREGATOR_BACKEND", "tpu")
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("HEARTH_AGGREGATOR_BACKEND=tpu") && err.contains("auto, cpu, wgpu or cuda"), "{err}");
    let out = bin().args(["serve", "--print-config", "--backend", "wgpu"]).output().expect("run");
    assert!(String::from_utf8_lossy(&out.stdout).contains("backend = \"wgpu\""));
}
