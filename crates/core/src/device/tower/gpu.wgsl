// hearth user tower: one person's forward pass on the GPU, then the int8 query for the scan.
//
// One workgroup runs the whole pass (a person's tower is a few small matrix-vector products);
// its phases meet at storage barriers:
//   1. pool: x = [mean of history rows | recency-softmax of history rows | mean of profile tags],
//      where a history row is the item's `hist_id` row plus the mean of its tags' `hist_tag` rows;
//   2. hidden = relu(b1 + x · w1);
//   3. user = b2 + hidden · w2 + offset (the person's fine-tuning offset, zeros without one);
//   4. the int8 query: scale = max|user| / 127, q = round(user / scale) (half away from zero,
//      clamped to ±127, as `quant::quantize`), packed four to a little-endian u32 word.
// It computes what `tower::UserTower::person_vector` computes, in f32 (the CPU tower
// accumulates in f64); tests hold both within 1e-5 of burn's forward pass.

struct TowerParams {
    dim: u32,
    hidden: u32,
    words: u32,       // u32 words of the packed query (dim rounded up to 4, / 4)
    hist_tag: u32,    // offsets into `weights` (f32 elements)
    user_tag: u32,
    recency: u32,
    w1: u32,
    b1: u32,
    w2: u32,
    b2: u32,
    tag_list: u32,    // offset of the tag list in `tags` (after items + 1 row starts)
    x: u32,           // offsets into `work`: offset (at 0), x, hidden, user (+ its scale)
    h: u32,
    out: u32,
    _pad0: u32,
    _pad1: u32,
}

const WG: u32 = 64u;

@group(0) @binding(0) var<uniform> tp: TowerParams;
@group(0) @binding(1) var<storage, read> hist_id: array<f32>;
@group(0) @binding(2) var<storage, read> weights: array<f32>;
@group(0) @binding(3) var<storage, read> tags: array<u32>;
// [n, m, n history items (catalog indices, most recent first), m profile tags]
@group(0) @binding(4) var<storage, read> person: array<u32>;
@group(0) @binding(5) var<storage, read_write> work: array<f32>;
@group(0) @binding(6) var<storage, read_write> query: array<u32>;

// Rust's f32::round: half away from zero (WGSL's round() breaks ties to even).
fn round_away(v: f32) -> f32 {
    let a = abs(v);
    var r = round(a);
    if (a - floor(a) == 0.5) {
        r = floor(a) + 1.0;
    }
    return sign(v) * r;
}

@compute @workgroup_size(64)
fn tower(@builtin(local_invocation_id) lid3: vec3<u32>) {
    let t = lid3.x;
    let d = tp.dim;
    let n = person[0];
    let m = person[1];

    // 1. Pooling. The softmax of the recency logits over the n positions that hold an item.
    var top = -3.0e38f;
    for (var p = 0u; p < n; p = p + 1u) {
        top = max(top, weights[tp.recency + p]);
    }
    var total = 0.0f;
    for (var p = 0u; p < n; p = p + 1u) {
        total = total + exp(weights[tp.recency + p] - top);
    }
    let mean_w = 1.0f / f32(max(n, 1u));
    for (var c = t; c < d; c = c + WG) {
        var mean = 0.0f;
        var recent = 0.0f;
        for (var p = 0u; p < n; p = p + 1u) {
            let item = person[2u + p];
            let first = tags[item];
            let last = tags[item + 1u];
            var tag_sum = 0.0f;
            for (var q = first; q < last; q = q + 1u) {
                tag_sum = tag_sum + weights[tp.hist_tag + tags[tp.tag_list + q] * d + c];
            }
            let row = hist_id[item * d + c] + tag_sum / f32(max(last - first, 1u));
            mean = mean + mean_w * row;
            recent = recent + (exp(weights[tp.recency + p] - top) / total) * row;
        }
        var profile = 0.0f;
        for (var q = 0u; q < m; q = q + 1u) {
            profile = profile + weights[tp.user_tag + person[2u + n + q] * d + c];
        }
        work[tp.x + c] = mean;
        work[tp.x + d + c] = recent;
        work[tp.x + 2u * d + c] = profile / f32(max(m, 1u));
    }
    storageBarrier();

    // 2. Hidden layer.
    let hidden = tp.hidden;
    for (var j = t; j < hidden; j = j + WG) {
        var acc = weights[tp.b1 + j];
        for (var i = 0u; i < 3u * d; i = i + 1u) {
            acc = acc + work[tp.x + i] * weights[tp.w1 + i * hidden + j];
        }
        work[tp.h + j] = max(acc, 0.0f);
    }
    storageBarrier();

    // 3. Output, plus the fine-tuning offset.
    for (var c = t; c < d; c = c + WG) {
        var acc = weights[tp.b2 + c];
        for (var j = 0u; j < hidden; j = j + 1u) {
            acc = acc + work[tp.h + j] * weights[tp.w2 + j * d + c];
        }
        work[tp.out + c] = acc + work[c];
    }
    storageBarrier();

    // 4. The int8 query (each thread finds the same maximum: d is small).
    var largest = 0.0f;
    for (var i = 0u; i < d; i = i + 1u) {
        largest = max(largest, abs(work[tp.out + i]));
    }
    let scale = largest / 127.0f;
    if (t == 0u) {
        work[tp.out + d] = scale;
    }
    for (var w = t; w < tp.words; w = w + WG) {
        var packed = 0u;
        for (var b = 0u; b < 4u; b = b + 1u) {
            let i = w * 4u + b;
            var q = 0i;
            if (i < d && scale > 0.0f) {
                q = i32(clamp(round_away(work[tp.out + i] / scale), -127.0f, 127.0f));
            }
            packed = packed | ((bitcast<u32>(q) & 0xffu) << (8u * b));
        }
        query[w] = packed;
    }
}
