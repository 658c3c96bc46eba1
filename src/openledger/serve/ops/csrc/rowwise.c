/* Row-wise kernels of a decoder layer: residual add + RMSNorm, the gated MLP activation,
   the rotary embedding, and the greedy argmax over a step's logits
   (openledger::rms_norm, add_rms_norm, silu_mul, rotary, argmax_rows; cpu_ops.py). */
#include "common.h"

/* hidden[t] += delta[t] (when delta is not NULL), then
   out[t] = weight * hidden[t] / sqrt(mean(hidden[t]^2) + eps), rows of H floats with their
   own strides. Parallel over rows when there are enough of them to pay for the threads. */
void openledger_add_rms_norm(float *hidden, int64_t hidden_stride, const float *delta,
                             int64_t delta_stride, const float *weight, float eps, int64_t T,
                             int64_t H, float *out, int64_t out_stride, int nthreads) {
#pragma omp parallel for if (T * H >= 65536) num_threads(nthreads) schedule(static)
  for (int64_t t = 0; t < T; t++) {
    float *h = hidden + t * hidden_stride;
    if (delta) {
      const float *d = delta + t * delta_stride;
#pragma omp simd
      for (int64_t j = 0; j < H; j++) h[j] += d[j];
    }
    float squares = 0.f;
#pragma omp simd reduction(+ : squares)
    for (int64_t j = 0; j < H; j++) squares += h[j] * h[j];
    const float scale = 1.f / sqrtf(squares / (float)H + eps);
    float *o = out + t * out_stride;
#pragma omp simd
    for (int64_t j = 0; j < H; j++) o[j] = weight[j] * (h[j] * scale);
  }
}

/* out[t, j] = silu(gate_up[t, j]) * gate_up[t, W + j]: the gated MLP activation, rows of
   the fused gate|up projection (row stride `stride`) into contiguous [T, W]. */
void openledger_silu_mul(const float *gate_up, int64_t stride, int64_t T, int64_t W, float *out,
                         int nthreads) {
#pragma omp parallel for if (T * W >= 8192) num_threads(nthreads) schedule(static)
  for (int64_t t = 0; t < T; t++) {
    const float *g = gate_up + t * stride, *u = g + W;
    float *o = out + t * W;
#pragma omp simd
    for (int64_t j = 0; j < W; j++) o[j] = g[j] / (1.f + exp_vec(-g[j])) * u[j];
  }
}

/* Rotary embedding, half-split layout: for each of the n heads of token t (x row stride
   x_stride, heads contiguous, width D), with c, s the cosine and sine of its position p
   (table [2, P, D]: cos then sin, each half a copy of the other):
   out[:half] = x[:half] c - x[half:] s, out[half:] = x[half:] c + x[:half] s;
   out is contiguous [T, n, D]. Returns 0, or -2 (nothing written) when a position is
   outside 0..P-1. */
int openledger_rotary(const float *x, int64_t x_stride, int64_t T, int64_t n, int64_t D,
                      const float *table, int64_t P, const int64_t *positions, float *out,
                      int nthreads) {
  for (int64_t t = 0; t < T; t++)
    if (positions[t] < 0 || positions[t] >= P) return -2;
  const int64_t half = D / 2;
#pragma omp parallel for if (T * n * D >= 65536) num_threads(nthreads) schedule(static)
  for (int64_t t = 0; t < T; t++) {
    const float *c = table + positions[t] * D, *s = table + (P + positions[t]) * D;
    for (int64_t h = 0; h < n; h++) {
      const float *xh = x + t * x_stride + h * D;
      float *o = out + (t * n + h) * D;
#pragma omp simd
      for (int64_t j = 0; j < half; j++) {
        o[j] = xh[j] * c[j] - xh[j + half] * s[j];
        o[j + half] = xh[j + half] * c[j + half] + xh[j] * s[j + half];
      }
    }
  }
  return 0;
}

/* out[r] = index of the largest element of row r of x [rows, cols] (row stride `stride`):
   the first one among equals; a row holding NaN gives its first NaN (torch.argmax's
   convention). Parallel over rows. */
void openledger_argmax_rows(const float *x, int64_t stride, int64_t rows, int64_t cols,
                            int64_t *out, int nthreads) {
#pragma omp parallel for num_threads(nthreads) schedule(static)
  for (int64_t r = 0; r < rows; r++) {
    const float *row = x + r * stride;
    float best = -INFINITY;
    int nan = 0;
#pragma omp simd reduction(max : best) reduction(| : nan)
    for (int64_t j = 0; j < cols; j++) {
      best = row[j] > best ? row[j] : best;
      nan |= row[j] != row[j];
    }
    int64_t at = 0;
    if (nan) {
      while (row[at] == row[at]) at++;
    } else {
      while (at < cols - 1 && row[at] != best) at++;
    }
    out[r] = at;
  }
}
