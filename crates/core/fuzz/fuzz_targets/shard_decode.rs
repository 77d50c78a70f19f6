//! `CatalogShard::decode` on arbitrary bytes, and on the same bytes framed with a valid magic,
//! version and checksum, so the fuzzer reaches the parser behind the checksum. A shard that
//! decodes must encode back to the same bytes.
#![no_main]

use hearth_core::artifact::shard::{CatalogShard, SHARD_MAGIC, SHARD_VERSION};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = CatalogShard::decode(data);
    let mut framed = SHARD_MAGIC.to_vec();
    framed.extend_from_slice(&SHARD_VERSION.to_le_bytes());
    framed.extend_from_slice(data);
    let digest = ring::digest::digest(&ring::digest::SHA256, &framed);
    framed.extend_from_slice(digest.as_ref());
    if let Ok(shard) = CatalogShard::decode(&framed) {
        assert_eq!(shard.encode(), framed, "decode/encode is not the identity");
        let _ = hearth_core::device::score::reference_top_k(shard.view(), &hearth_core::quant::QuantizedVector {
            values: vec![1; shard.dim()],
            scale: 1.0,
        }, 3);
    }
});
