// hearth GPU scorer: int8 catalog scoring and top-k selection.
//
// `score_select`: each workgroup scores one segment of SEG items (4 per thread), sorts the segment
// in rank order in workgroup memory (bitonic network) and writes its best `k`.
// `select`: each workgroup sorts SEG candidates and keeps the best `k`; run until one remains.
//
// Rank order: higher score first, ties by lower item index (the CPU scorers' order). Empty slots
// carry score -inf and index 0xffffffff, so they sort after every real item.
//
// The host builds two modules from this file: the common part plus the `@@ score` section (with
// a `dot4` function prepended: dot4I8Packed when the adapter has the WGSL language extension
// packed_4x8_integer_dot_product, an extractBits unpacking otherwise; both exact in i32), and the
// common part plus the `@@ select` section.

const SEG: u32 = 1024u;
const THREADS: u32 = 256u;
const EMPTY: u32 = 0xffffffffu;
// Score of an empty slot, below any item's. (Browsers' WGSL compilers reject a constant
// -inf; no item reaches it: |int8 dot| * scale stays below 1e38 for any valid shard.)
const LOWEST: f32 = -3.0e38f;

struct Cand {
    score: f32,
    index: u32,
}

struct ScoreParams {
    n: u32,          // items in this chunk
    words: u32,      // u32 words per item row (dim rounded up to 4, / 4)
    base: u32,       // global index of this chunk's first item
    k: u32,
    out_offset: u32, // first output slot of this chunk's first segment
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

struct SelectParams {
    m: u32,          // candidates in the input
    k: u32,
    _pad0: u32,
    _pad1: u32,
}

var<workgroup> keys: array<f32, SEG>;
var<workgroup> idxs: array<u32, SEG>;

// True when slot a ranks strictly after slot b.
fn worse(a: u32, b: u32) -> bool {
    let sa = keys[a];
    let sb = keys[b];
    return sa < sb || (sa == sb && idxs[a] > idxs[b]);
}

// Sorts keys/idxs in rank order (best first). Called by all THREADS threads, uniform control flow.
fn bitonic(lid: u32) {
    for (var size = 2u; size <= SEG; size = size << 1u) {
        for (var stride = size >> 1u; stride > 0u; stride = stride >> 1u) {
            for (var p = 0u; p < SEG / 2u / THREADS; p = p + 1u) {
                let t = lid + p * THREADS;
                let i = 2u * stride * (t / stride) + (t % stride);
                let j = i + stride;
                let ascending = (i & size) == 0u;
                if (worse(i, j) == ascending) {
                    let ks = keys[i];
                    keys[i] = keys[j];
                    keys[j] = ks;
                    let is = idxs[i];
                    idxs[i] = idxs[j];
                    idxs[j] = is;
                }
            }
            workgroupBarrier();
        }
    }
}

// @@ score
@group(0) @binding(0) var<uniform> sp: ScoreParams;
@group(0) @binding(1) var<storage, read> items: array<u32>;
@group(0) @binding(2) var<storage, read> scales: array<f32>;
@group(0) @binding(3) var<storage, read> query: array<u32>;
@group(0) @binding(4) var<storage, read_write> scored: array<Cand>;

@compute @workgroup_size(256)
fn score_select(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid3: vec3<u32>) {
    let lid = lid3.x;
    let seg = wid.x + wid.y * 65535u;
    for (var r = 0u; r < SEG / THREADS; r = r + 1u) {
        let slot = r * THREADS + lid;
        let item = seg * SEG + slot;
        var score = LOWEST;
        var index = EMPTY;
        if (item < sp.n) {
            var acc = 0i;
            let row = item * sp.words;
            for (var w = 0u; w < sp.words; w = w + 1u) {
                acc = acc + dot4(items[row + w], query[w]);
            }
            score = f32(acc) * scales[item];
            index = sp.base + item;
        }
        keys[slot] = score;
        idxs[slot] = index;
    }
    workgroupBarrier();
    bitonic(lid);
    for (var o = lid; o < sp.k; o = o + THREADS) {
        scored[sp.out_offset + seg * sp.k + o] = Cand(keys[o], idxs[o]);
    }
}

// @@ select
@group(0) @binding(0) var<uniform> rp: SelectParams;
@group(0) @binding(1) var<storage, read> cand_in: array<Cand>;
@group(0) @binding(2) var<storage, read_write> cand_out: array<Cand>;

@compute @workgroup_size(256)
fn select(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid3: vec3<u32>) {
    let lid = lid3.x;
    let seg = wid.x + wid.y * 65535u;
    for (var r = 0u; r < SEG / THREADS; r = r + 1u) {
        let slot = r * THREADS + lid;
        let c = seg * SEG + slot;
        if (c < rp.m) {
            keys[slot] = cand_in[c].score;
            idxs[slot] = cand_in[c].index;
        } else {
            keys[slot] = LOWEST;
            idxs[slot] = EMPTY;
        }
    }
    workgroupBarrier();
    bitonic(lid);
    for (var o = lid; o < rp.k; o = o + THREADS) {
        cand_out[seg * rp.k + o] = Cand(keys[o], idxs[o]);
    }
}
