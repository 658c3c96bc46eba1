/* openledger's CPU kernels, compiled on first use and loaded with ctypes (cpu_kernels.py).

   openledger_lora_apply: the LoRA update of one projection for a step's tokens grouped by
   adapter (lora_cpu.py). openledger_paged_decode: one-token-per-sequence attention over the
   paged KV cache (attention_cpu.py).

   LoRA: out[t] += (x[t] A_g^T) B_g^T for every token t of group g, where B_g is given slice by
   slice (q, k, v of a fused projection; an adapter need not target every slice). Built and
   loaded by lora_cpu.py; the layout of the tables is documented there and at
   openledger_lora_apply below.

   Two phases in one OpenMP region, both streaming each weight once, front to back:
   shrink, parallel over (group, rank row): dot products of the group's token rows with
   one row of A; expand, parallel over groups (or over column ranges when there are fewer
   groups than threads): for each rank row k of B^T, out[row, cols] += h[k] * Bt[k, cols].
   Each token row belongs to one group, so no two threads write the same element. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#define CHUNK 256 /* groups per pass; offsets live on the stack */

/* exp(x) for float32, written so that loops over it vectorise (the libm call does not):
   Cephes' range reduction and polynomial, within about 1.5 ulp of the exact value
   (tested against float64); NaN stays NaN, overflow gives inf, underflow 0. */
static inline float exp_vec(float x) {
  float c = x < -87.0f ? -87.0f : x;
  c = c > 88.0f ? 88.0f : c;
  const float n = (c * 1.44269504088896341f + 12582912.0f) - 12582912.0f; /* round */
  float r = c - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  union {
    int32_t i;
    float f;
  } scale;
  scale.i = ((int32_t)n + 127) * (1 << 23);
  float y = p * scale.f;
  y = x > 88.0f ? INFINITY : y;
  y = x < -87.0f ? 0.0f : y;
  return x != x ? x : y;
}

static int apply_groups(const float *x, int64_t x_stride, float *out, int64_t out_stride,
                        int64_t H, int64_t G, const int64_t *row_off, const int64_t *rows,
                        const int64_t *groups, const int64_t *slices, int nthreads) {
  int64_t k_off[CHUNK + 1], h_off[CHUNK + 1];
  k_off[0] = 0;
  h_off[0] = 0;
  for (int64_t g = 0; g < G; g++) {
    k_off[g + 1] = k_off[g] + groups[4 * g + 1];
    h_off[g + 1] = h_off[g] + groups[4 * g + 1] * (row_off[g + 1] - row_off[g]);
  }
  const int64_t total_k = k_off[G];
  float *h = malloc(sizeof(float) * (size_t)(h_off[G] > 0 ? h_off[G] : 1));
  if (!h) return -1;
  const int64_t parts = G >= nthreads ? 1 : nthreads;
#pragma omp parallel num_threads(nthreads)
  {
    /* shrink: h[g][k][i] = x[rows[row_off[g] + i]] . A_g[k] */
#pragma omp for schedule(static)
    for (int64_t item = 0; item < total_k; item++) {
      int64_t g = 0;
      while (k_off[g + 1] <= item) g++;
      const int64_t k = item - k_off[g], first = row_off[g], m = row_off[g + 1] - first;
      const float *a = (const float *)(intptr_t)groups[4 * g] + k * H;
      float *hk = h + h_off[g] + k * m;
      int64_t i = 0;
      for (; i + 3 < m; i += 4) { /* four rows share each load of A */
        const float *x0 = x + rows[first + i] * x_stride, *x1 = x + rows[first + i + 1] * x_stride;
        const float *x2 = x + rows[first + i + 2] * x_stride;
        const float *x3 = x + rows[first + i + 3] * x_stride;
        float s0 = 0.f, s1 = 0.f, s2 = 0.f, s3 = 0.f;
#pragma omp simd reduction(+ : s0, s1, s2, s3)
        for (int64_t j = 0; j < H; j++) {
          s0 += x0[j] * a[j];
          s1 += x1[j] * a[j];
          s2 += x2[j] * a[j];
          s3 += x3[j] * a[j];
        }
        hk[i] = s0;
        hk[i + 1] = s1;
        hk[i + 2] = s2;
        hk[i + 3] = s3;
      }
      for (; i + 1 < m; i += 2) {
        const float *x0 = x + rows[first + i] * x_stride, *x1 = x + rows[first + i + 1] * x_stride;
        float s0 = 0.f, s1 = 0.f;
#pragma omp simd reduction(+ : s0, s1)
        for (int64_t j = 0; j < H; j++) {
          s0 += x0[j] * a[j];
          s1 += x1[j] * a[j];
        }
        hk[i] = s0;
        hk[i + 1] = s1;
      }
      for (; i < m; i++) {
        const float *x0 = x + rows[first + i] * x_stride;
        float s0 = 0.f;
#pragma omp simd reduction(+ : s0)
        for (int64_t j = 0; j < H; j++) s0 += x0[j] * a[j];
        hk[i] = s0;
      }
    }
    /* expand: out[row, cols of slice] += h[g][k][i] * Bt[k]   (implicit barrier above) */
#pragma omp for schedule(static)
    for (int64_t item = 0; item < G * parts; item++) {
      const int64_t g = item / parts, part = item % parts;
      const int64_t first = row_off[g], m = row_off[g + 1] - first;
      const int64_t s_first = groups[4 * g + 2], s_count = groups[4 * g + 3];
      const float *hg = h + h_off[g];
      for (int64_t s = s_first; s < s_first + s_count; s++) {
        const int64_t *sl = slices + 5 * s;
        const int64_t r0 = sl[0], r1 = sl[1], c_start = sl[2], cols = sl[3] - sl[2];
        const float *bt = (const float *)(intptr_t)sl[4];
        const int64_t c0 = cols * part / parts, c1 = cols * (part + 1) / parts;
        /* prompts (4+ rows): 4 rows x 16 columns summed over the rank in registers,
           then added once; B^T is reread per 4 rows from cache, not per row */
        const int64_t mb = m / 4 * 4, cb = c0 + (c1 - c0) / 16 * 16;
        for (int64_t i0 = 0; i0 < mb; i0 += 4) {
          float *o0 = out + rows[first + i0] * out_stride + c_start;
          float *o1 = out + rows[first + i0 + 1] * out_stride + c_start;
          float *o2 = out + rows[first + i0 + 2] * out_stride + c_start;
          float *o3 = out + rows[first + i0 + 3] * out_stride + c_start;
          for (int64_t c = c0; c < cb; c += 16) {
            float a0[16] = {0}, a1[16] = {0}, a2[16] = {0}, a3[16] = {0};
            for (int64_t k = r0; k < r1; k++) {
              const float *bk = bt + (k - r0) * cols + c;
              const float *hk = hg + k * m + i0;
              const float h0 = hk[0], h1 = hk[1], h2 = hk[2], h3 = hk[3];
#pragma omp simd
              for (int64_t j = 0; j < 16; j++) {
                a0[j] += h0 * bk[j];
                a1[j] += h1 * bk[j];
                a2[j] += h2 * bk[j];
                a3[j] += h3 * bk[j];
              }
            }
#pragma omp simd
            for (int64_t j = 0; j < 16; j++) {
              o0[c + j] += a0[j];
              o1[c + j] += a1[j];
              o2[c + j] += a2[j];
              o3[c + j] += a3[j];
            }
          }
        }
        if (mb == 0) { /* decode: fewer than 4 rows, each B^T row streamed once */
          for (int64_t k = r0; k < r1; k++) {
            const float *bk = bt + (k - r0) * cols;
            for (int64_t i = 0; i < m; i++) {
              const float hv = hg[k * m + i];
              float *o = out + rows[first + i] * out_stride + c_start;
#pragma omp simd
              for (int64_t c = c0; c < c1; c++) o[c] += hv * bk[c];
            }
          }
          continue;
        }
        /* leftover rows and leftover columns of a prompt */
        for (int64_t k = r0; k < r1; k++) {
          const float *bk = bt + (k - r0) * cols;
          for (int64_t i = 0; i < m; i++) {
            const float hv = hg[k * m + i];
            float *o = out + rows[first + i] * out_stride + c_start;
            for (int64_t c = i < mb ? cb : c0; c < c1; c++) o[c] += hv * bk[c];
          }
        }
      }
    }
  }
  free(h);
  return 0;
}

/* groups: G x 4 int64 [a_ptr, rank, first_slice, num_slices], A is [rank, H] row-major;
   slices: 5 int64 each [rank_start, rank_end, col_start, col_end, bt_ptr], Bt is
   [rank_end - rank_start, col_end - col_start] row-major; group g's token rows are
   rows[row_off[g] : row_off[g + 1]]. Returns 0, or -1 when out of memory. */
int openledger_lora_apply(const float *x, int64_t x_stride, float *out, int64_t out_stride,
                          int64_t H, int64_t G, const int64_t *row_off, const int64_t *rows,
                          const int64_t *groups, const int64_t *slices, int nthreads) {
  for (int64_t start = 0; start < G; start += CHUNK) {
    const int64_t n = G - start < CHUNK ? G - start : CHUNK;
    if (apply_groups(x, x_stride, out, out_stride, H, n, row_off + start, rows, groups + 4 * start,
                     slices, nthreads))
      return -1;
  }
  return 0;
}

/* One (sequence, kv head) of openledger_paged_decode: the group query heads at qb attend
   over keys/values start..len-1 and write ob. Inlined with D = 64 and 128 as constants
   (the common head widths), so the compiler unrolls the head dimension into registers. */
static inline void attend(const float *qb, const float *k_cache, const float *v_cache,
                          const int32_t *table, int64_t start, int64_t len, int64_t h,
                          int64_t group, int64_t token_stride, int64_t block_size, float scale,
                          float *scores, int64_t max_len, float *ob, const int64_t D) {
  const int64_t n = len - start;
  for (int64_t blk = start / block_size; blk * block_size < len; blk++) {
    const float *kb = k_cache + (int64_t)table[blk] * block_size * token_stride + h * D;
    const int64_t first = blk * block_size > start ? blk * block_size : start;
    const int64_t last = (blk + 1) * block_size < len ? (blk + 1) * block_size : len;
    for (int64_t p = first; p < last; p++) {
      const float *kp = kb + (p - blk * block_size) * token_stride;
      for (int64_t g = 0; g < group; g++) {
        const float *qh = qb + g * D;
        float dot = 0.f;
#pragma omp simd reduction(+ : dot)
        for (int64_t d = 0; d < D; d++) dot += qh[d] * kp[d];
        scores[g * max_len + p - start] = dot * scale;
      }
    }
  }
  for (int64_t g = 0; g < group; g++) {
    float *row = scores + g * max_len, best = -INFINITY, total = 0.f;
    for (int64_t i = 0; i < n; i++)
      if (row[i] > best) best = row[i];
#pragma omp simd reduction(+ : total)
    for (int64_t i = 0; i < n; i++) {
      row[i] = exp_vec(row[i] - best);
      total += row[i];
    }
    const float inv = 1.f / total;
    for (int64_t i = 0; i < n; i++) row[i] *= inv;
  }
  for (int64_t g = 0; g < group; g++) {
    float acc[D > 0 ? D : 1];
    for (int64_t d = 0; d < D; d++) acc[d] = 0.f;
    const float *row = scores + g * max_len;
    for (int64_t blk = start / block_size; blk * block_size < len; blk++) {
      const float *vb = v_cache + (int64_t)table[blk] * block_size * token_stride + h * D;
      const int64_t first = blk * block_size > start ? blk * block_size : start;
      const int64_t last = (blk + 1) * block_size < len ? (blk + 1) * block_size : len;
      for (int64_t p = first; p < last; p++) {
        const float *vp = vb + (p - blk * block_size) * token_stride;
        const float w = row[p - start];
#pragma omp simd
        for (int64_t d = 0; d < D; d++) acc[d] += w * vp[d];
      }
    }
    for (int64_t d = 0; d < D; d++) ob[g * D + d] = acc[d];
  }
}

/* Decode attention of B sequences, one query each, over a paged cache.
   q [B, Hq, D] with row stride q_stride (floats between sequences; heads contiguous);
   caches [num_blocks, block_size, KV, D] contiguous; tables [B, table_stride] int32 block ids;
   lens [B] int32 visible tokens (the query's own included); window <= 0 for none, else a
   query at position L - 1 sees keys p with L - 1 - p < window; out [B, Hq, D] contiguous.
   Parallel over (sequence, kv head); the Hq / KV query heads of a kv head share each key
   and value as it is read, block by block. Softmax in two passes over a scratch row of
   scores per query head. Returns 0, or -1 when out of memory. */
int openledger_paged_decode(const float *q, int64_t q_stride, const float *k_cache,
                            const float *v_cache, const int32_t *tables, int64_t table_stride,
                            const int32_t *lens, int64_t B, int64_t Hq, int64_t KV, int64_t D,
                            int64_t block_size, float scale, int64_t window, float *out,
                            int nthreads) {
  const int64_t group = Hq / KV, token_stride = KV * D;
  int64_t max_len = 1;
  for (int64_t b = 0; b < B; b++)
    if (lens[b] > max_len) max_len = lens[b];
  int failed = 0;
#pragma omp parallel num_threads(nthreads) reduction(| : failed)
  {
    float *scores = malloc(sizeof(float) * (size_t)(group * max_len));
    if (!scores) failed = 1;
#pragma omp for schedule(static)
    for (int64_t item = 0; item < B * KV; item++) {
      if (!scores) continue; /* NOTE: every thread must still reach the loop */
      const int64_t b = item / KV, h = item % KV, len = lens[b];
      const int64_t start = window > 0 && len > window ? len - window : 0;
      const int32_t *table = tables + b * table_stride;
      const float *qb = q + b * q_stride + h * group * D;
      float *ob = out + (b * Hq + h * group) * D;
      if (D == 64)
        attend(qb, k_cache, v_cache, table, start, len, h, group, token_stride, block_size, scale,
               scores, max_len, ob, 64);
      else if (D == 128)
        attend(qb, k_cache, v_cache, table, start, len, h, group, token_stride, block_size, scale,
               scores, max_len, ob, 128);
      else
        attend(qb, k_cache, v_cache, table, start, len, h, group, token_stride, block_size, scale,
               scores, max_len, ob, D);
    }
    free(scores);
  }
  return failed ? -1 : 0;
}

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
   out is contiguous [T, n, D]. */
void openledger_rotary(const float *x, int64_t x_stride, int64_t T, int64_t n, int64_t D,
                       const float *table, int64_t P, const int64_t *positions, float *out,
                       int nthreads) {
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
