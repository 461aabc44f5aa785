//! The small dense products of the fast user side, in f32. Each takes an explicit output slice so
//! callers reuse scratch buffers (no allocation per request).

/// `out[m × n] = x[m × k] · w[n × k]ᵀ (+ bias[n])` — the `nn.Linear` shape.
pub(crate) fn matmul_t(
    x: &[f32],
    m: usize,
    k: usize,
    w: &[f32],
    n: usize,
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    debug_assert!(x.len() >= m * k && w.len() >= n * k && out.len() >= m * n);
    for i in 0..m {
        let xi = &x[i * k..(i + 1) * k];
        let oi = &mut out[i * n..(i + 1) * n];
        for (o, slot) in oi.iter_mut().enumerate() {
            *slot = dot(xi, &w[o * k..(o + 1) * k]) + bias.map_or(0.0, |b| b[o]);
        }
    }
}

/// `Σ a_i b_i` with eight independent accumulators (lets the compiler vectorise and keeps the
/// rounding error small).
#[inline]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let chunks = a.len() / 8;
    for c in 0..chunks {
        for l in 0..8 {
            acc[l] += a[c * 8 + l] * b[c * 8 + l];
        }
    }
    let mut s = 0.0;
    for i in chunks * 8..a.len() {
        s += a[i] * b[i];
    }
    (acc[0] + acc[4]) + (acc[1] + acc[5]) + (acc[2] + acc[6]) + (acc[3] + acc[7]) + s
}

/// Numerically stable softmax of each `len`-long row of `v`, in place.
pub(crate) fn softmax_rows(v: &mut [f32], len: usize) {
    if len == 0 {
        return;
    }
    for row in v.chunks_exact_mut(len) {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0f32;
        for x in row.iter_mut() {
            *x = (*x - max).exp();
            sum += *x;
        }
        let inv = 1.0 / sum;
        row.iter_mut().for_each(|x| *x *= inv);
    }
}

/// `out[cols × rows] = inᵀ` for `input[rows × cols]`.
pub(crate) fn transpose(input: &[f32], rows: usize, cols: usize, out: &mut [f32]) {
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = input[r * cols + c];
        }
    }
}
