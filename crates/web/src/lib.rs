//! hearth-web: hearth in the browser. A thin wasm-bindgen layer over hearth-core; it holds no
//! product logic. Exports use `cfg_attr(target_family = "wasm", wasm_bindgen)`, so the same
//! functions are tested natively. The history, vault, scoring and ranking APIs come with later
//! work; for now it reads a person's own interaction file and reports what it holds.
//!
//! ```
//! let summary = hearth_web::dataset_summary(b"user,item\nme,a\nme,b\n").unwrap();
//! assert!(summary.contains("\"items\":2"));
//! ```

#[cfg(target_family = "wasm")]
use wasm_bindgen::prelude::wasm_bindgen;

/// hearth's version.
#[cfg_attr(target_family = "wasm", wasm_bindgen)]
pub fn version() -> String {
    env!("CARGO_PKG_VERSION").to_owned()
}

/// Parses a CSV of interactions (`user,item[,rating][,timestamp]`) and returns a JSON summary
/// `{"users":…, "items":…, "interactions":…}`, or the parse error (naming the line).
#[cfg_attr(target_family = "wasm", wasm_bindgen(js_name = datasetSummary))]
pub fn dataset_summary(csv: &[u8]) -> Result<String, String> {
    let ds = hearth_core::data::Dataset::from_csv("input.csv", csv, None).map_err(|e| e.to_string())?;
    Ok(serde_json::json!({
        "users": ds.users.len(),
        "items": ds.items.len(),
        "interactions": ds.interactions.len(),
    })
    .to_string())
}

#[cfg(test)]
mod tests {
    #[test]
    fn summary_and_errors() {
        assert_eq!(
            super::dataset_summary(b"u,a\nu,b\nv,a\n").unwrap(),
            r#"{"interactions":3,"items":2,"users":2}"#
        );
        assert_eq!(super::dataset_summary(b"u,a,x\n").unwrap_err(), "input.csv:1: rating \"x\" is not a number");
    }
}
