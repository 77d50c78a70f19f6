//! Tidy rules that can be checked mechanically (ARCHITECTURE.md, "Invariants"):
//! - every Rust source file of the project starts with a `//!` line saying what it is;
//! - in hearth-core, only the platform module and the SIMD kernels name a target (`cfg(target_…)`);
//! - hearth-core's modules form layers: a module uses (`crate::…` outside comments) only modules
//!   listed before it in [`LAYERS`], so no import cycle can come back.

use std::path::{Path, PathBuf};

/// hearth-core's top-level modules, lowest first (the order of `lib.rs`).
const LAYERS: &[&str] = &["platform", "codec", "quant", "data", "eval", "person", "privacy", "secagg", "artifact", "device", "model", "fed", "testkit"];

/// The cfg keys that name a target.
const TARGET_KEYS: &[&str] =
    &["target_arch", "target_family", "target_os", "target_feature", "target_env", "target_vendor", "target_pointer_width", "target_endian", "target_has_atomic"];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let p = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if p.is_dir() {
            if !matches!(name.as_str(), "target" | "node_modules" | "corpus" | "artifacts" | "pkg") && !name.starts_with('.') {
                rust_files(&p, out);
            }
        } else if name.ends_with(".rs") {
            out.push(p);
        }
    }
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn core_src() -> PathBuf {
    root().join("crates/core/src")
}

/// The top-level module a file of hearth-core belongs to (`lib` for lib.rs).
fn module_of(p: &Path) -> String {
    let rel = p.strip_prefix(core_src()).unwrap_or(p);
    let first = rel.components().next().map(|c| c.as_os_str().to_string_lossy().into_owned()).unwrap_or_default();
    first.trim_end_matches(".rs").to_owned()
}

#[test]
fn every_source_file_starts_with_a_module_doc_line() {
    let mut files = vec![];
    for dir in ["crates", "tests", "bench"] {
        rust_files(&root().join(dir), &mut files);
    }
    assert!(files.len() > 40, "found only {} files under {}", files.len(), root().display());
    let bad: Vec<String> = files.iter().filter(|p| !read(p).starts_with("//!")).map(|p| p.display().to_string()).collect();
    assert!(bad.is_empty(), "these files do not start with a `//!` line:\n{}", bad.join("\n"));
}

#[test]
fn only_the_platform_module_and_the_simd_kernels_name_a_target() {
    let mut files = vec![];
    rust_files(&core_src(), &mut files);
    let allowed = |p: &Path| module_of(p) == "platform" || p.ends_with("device/score/simd.rs");
    let mut bad = vec![];
    for p in files.iter().filter(|p| !allowed(p)) {
        for (n, line) in read(p).lines().enumerate() {
            // Any cfg form (`cfg(all(target_…))`, `cfg_attr(target_…, …)`, `cfg!(…)`) names the
            // target through one of these keys; comments may talk about them.
            let code = line.split("//").next().unwrap_or("");
            if TARGET_KEYS.iter().any(|k| code.contains(k)) {
                bad.push(format!("{}:{}: {}", p.display(), n + 1, line.trim()));
            }
        }
    }
    assert!(bad.is_empty(), "target-specific code outside platform/ and the SIMD kernels:\n{}", bad.join("\n"));
}

#[test]
fn core_modules_use_only_lower_layers() {
    let mut files = vec![];
    rust_files(&core_src(), &mut files);
    let rank = |m: &str| LAYERS.iter().position(|l| *l == m);
    let mut bad = vec![];
    for p in &files {
        let module = module_of(p);
        let Some(mine) = rank(&module) else { continue };
        for (n, line) in read(p).lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            for (i, _) in code.match_indices("crate::") {
                let used: String = code[i + 7..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                match rank(&used) {
                    // Test helpers, used by unit tests anywhere.
                    _ if used == "testkit" => {}
                    Some(r) if r > mine => bad.push(format!("{}:{}: {module} uses {used}", p.display(), n + 1)),
                    None => bad.push(format!("{}:{}: unknown module crate::{used}", p.display(), n + 1)),
                    _ => {}
                }
            }
        }
    }
    let lib = read(&core_src().join("lib.rs"));
    let declared: Vec<&str> = lib.lines().filter_map(|l| l.trim().strip_prefix("pub mod ")).map(|m| m.trim_end_matches(';')).collect();
    assert_eq!(declared, LAYERS, "lib.rs declares its modules in layer order");
    assert!(bad.is_empty(), "a module uses a higher layer (an import cycle in the making):\n{}", bad.join("\n"));
}
