/* openledger's CPU kernels, compiled on first use and loaded with ctypes (cpu_kernels.py).

   openledger_linear: a projection of a step's token rows (up to about a thousand) over a
   weight packed in panels (layers/linear.py, PackedWeight). openledger_lora_apply: the LoRA update of one
   projection for a step's tokens grouped by adapter (lora_cpu.py). openledger_paged_decode:
   one-token-per-sequence attention over the paged KV cache (attention_cpu.py).

   LoRA: out[t] += (x[t] A_g^T) B_g^T for every token t of group g, where B_g is given slice by
   slice (q, k, v of a fused projection; an adapter need not target every slice). Built and
   loaded by lora_cpu.py; the layout of the tables is documented there and at
   openledger_lora_apply below.

   Two phases in one OpenMP region, both streaming each weight once, front to back:
   shrink, parallel over (group, rank row): dot products of the group's token rows with
   one row of A, two rows per load of A, four independent sums each; expand, parallel
   over groups (or over column ranges when there are fewer groups than threads): a run of
   columns of every row of the group summed over the rank in registers, then added to
   out once. Each token row belongs to one group, so no two threads write the same
   element. */
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

/* 8 floats in one vector (AVX under -march=native on x86, two NEON registers on arm64);
   aligned(4): loads and stores through it may be unaligned. */
typedef float f32x8 __attribute__((vector_size(32), aligned(4)));
/* Floats ahead the LoRA kernel prefetches along A's rows and B^T's rows: its weights are
   many small tensors, whose short runs the hardware prefetchers do not follow far. */
#define LORA_PF 256
#define LORA_BPF 32

/* Keeps a loaded vector in a register where it feeds several multiply-adds: left to
   itself, the compiler folds the load into each of them (x86 FMAs take a memory operand),
   and the load ports, not the FMA units, then bound the loop. */
#if defined(__AVX__) && defined(__GNUC__)
#define IN_REGISTER(v) __asm__("" : "+x"(v))
#else
#define IN_REGISTER(v) ((void)0)
#endif

/* sums[i] = a . x_i over n floats, for two rows sharing each load of a: four independent
   8-float sums per row, so the adds do not wait on each other. */
static inline void dot2(const float *a, const float *x0, const float *x1, int64_t n,
                        float *sums) {
  f32x8 p0 = {0}, p1 = {0}, p2 = {0}, p3 = {0}, q0 = {0}, q1 = {0}, q2 = {0}, q3 = {0};
  int64_t j = 0;
  for (; j + 32 <= n; j += 32) {
    __builtin_prefetch(a + j + LORA_PF), __builtin_prefetch(a + j + LORA_PF + 16);
    f32x8 a0 = *(const f32x8 *)(a + j), a1 = *(const f32x8 *)(a + j + 8);
    f32x8 a2 = *(const f32x8 *)(a + j + 16), a3 = *(const f32x8 *)(a + j + 24);
    IN_REGISTER(a0);
    IN_REGISTER(a1);
    IN_REGISTER(a2);
    IN_REGISTER(a3);
    p0 += a0 * *(const f32x8 *)(x0 + j), q0 += a0 * *(const f32x8 *)(x1 + j);
    p1 += a1 * *(const f32x8 *)(x0 + j + 8), q1 += a1 * *(const f32x8 *)(x1 + j + 8);
    p2 += a2 * *(const f32x8 *)(x0 + j + 16), q2 += a2 * *(const f32x8 *)(x1 + j + 16);
    p3 += a3 * *(const f32x8 *)(x0 + j + 24), q3 += a3 * *(const f32x8 *)(x1 + j + 24);
  }
  for (; j + 8 <= n; j += 8) {
    const f32x8 a0 = *(const f32x8 *)(a + j);
    p0 += a0 * *(const f32x8 *)(x0 + j), q0 += a0 * *(const f32x8 *)(x1 + j);
  }
  const f32x8 p = (p0 + p1) + (p2 + p3), q = (q0 + q1) + (q2 + q3);
  float s0 = 0.f, s1 = 0.f;
  for (int l = 0; l < 8; l++) s0 += p[l], s1 += q[l];
  for (; j < n; j++) s0 += a[j] * x0[j], s1 += a[j] * x1[j];
  sums[0] = s0, sums[1] = s1;
}

/* o0[c] += sum_k h[k * m] Bt[k - r0, c] (and o1 with h[k * m + 1] when two) for c in c0..c1-1:
   32 columns at a time summed over the rank in registers, then added to the rows once. */
static inline void expand_rows(const float *h, int64_t m, int two, int64_t r0, int64_t r1,
                               const float *bt, int64_t cols, int64_t c0, int64_t c1, float *o0,
                               float *o1) {
  int64_t c = c0;
  for (; c + 32 <= c1; c += 32) {
    f32x8 p0 = {0}, p1 = {0}, p2 = {0}, p3 = {0}, q0 = {0}, q1 = {0}, q2 = {0}, q3 = {0};
    for (int64_t k = r0; k < r1; k++) {
      const float *bk = bt + (k - r0) * cols + c;
      __builtin_prefetch(bk + LORA_BPF), __builtin_prefetch(bk + LORA_BPF + 16);
      f32x8 b0 = *(const f32x8 *)bk, b1 = *(const f32x8 *)(bk + 8);
      f32x8 b2 = *(const f32x8 *)(bk + 16), b3 = *(const f32x8 *)(bk + 24);
      IN_REGISTER(b0);
      IN_REGISTER(b1);
      IN_REGISTER(b2);
      IN_REGISTER(b3);
      const float h0 = h[k * m];
      p0 += b0 * h0, p1 += b1 * h0, p2 += b2 * h0, p3 += b3 * h0;
      if (two) {
        const float h1 = h[k * m + 1];
        q0 += b0 * h1, q1 += b1 * h1, q2 += b2 * h1, q3 += b3 * h1;
      }
    }
    *(f32x8 *)(o0 + c) += p0, *(f32x8 *)(o0 + c + 8) += p1;
    *(f32x8 *)(o0 + c + 16) += p2, *(f32x8 *)(o0 + c + 24) += p3;
    if (two) {
      *(f32x8 *)(o1 + c) += q0, *(f32x8 *)(o1 + c + 8) += q1;
      *(f32x8 *)(o1 + c + 16) += q2, *(f32x8 *)(o1 + c + 24) += q3;
    }
  }
  for (; c < c1; c++) {
    float s0 = 0.f, s1 = 0.f;
    for (int64_t k = r0; k < r1; k++) {
      const float b = bt[(k - r0) * cols + c];
      s0 += h[k * m] * b;
      s1 += two ? h[k * m + 1] * b : 0.f;
    }
    o0[c] += s0;
    if (two) o1[c] += s1;
  }
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
      for (; i + 1 < m; i += 2) /* two rows share each load of A */
        dot2(a, x + rows[first + i] * x_stride, x + rows[first + i + 1] * x_stride, H, hk + i);
      if (i < m) {
        float sums[2];
        const float *x0 = x + rows[first + i] * x_stride;
        dot2(a, x0, x0, H, sums);
        hk[i] = sums[0];
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
        if (mb == 0) { /* decode: fewer than 4 rows, two at a time */
          for (int64_t i = 0; i < m; i += 2)
            expand_rows(hg + i, m, m - i > 1, r0, r1, bt, cols, c0, c1,
                        out + rows[first + i] * out_stride + c_start,
                        out + rows[first + (m - i > 1 ? i + 1 : i)] * out_stride + c_start);
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

/* Projections: out = x W^T (+ b) for a step's token rows, over W packed in panels.

   At a few to a few dozen rows a projection is bound by streaming W from memory and by the
   latency of that stream, not by arithmetic; general GEMM routines tuned for large
   matrices leave much of the bandwidth unused there. W [N, K] is packed once into panels
   of LIN_NR output columns, each panel [K][LIN_NR] contiguous (the last one padded with
   zero columns), so a thread reads its panels front to back. Per panel, the depth is
   taken LIN_KC at a time: every 4-row block of the item's rows runs over that slice (from
   L1 after the first), 4 rows x 24 columns summed in twelve 8-float registers; the first
   block also prefetches the slice ahead (past the end of the last panel too: a prefetch
   is a hint and never faults). Parallel over (panel, run of LIN_MC rows) items,
   panel-major, so each thread streams a contiguous range of the weight. Each output
   element is summed by one thread in depth order: results do not depend on the thread
   count. GCC/Clang vector extensions: AVX2/FMA code under -march=native on x86, NEON on
   arm64, plain SSE otherwise. */
#define LIN_NR 24
#define LIN_MC 32
#define LIN_KC 128
#define LIN_PF 768

/* Floats of the packed copy of a weight [N, K]. */
int64_t openledger_packed_linear_size(int64_t N, int64_t K) {
  return (N + LIN_NR - 1) / LIN_NR * LIN_NR * K;
}

/* packed [ceil(N / LIN_NR)][K][LIN_NR] from w [N, K] (row stride w_stride). */
void openledger_pack_linear(const float *w, int64_t w_stride, int64_t N, int64_t K,
                            float *packed, int nthreads) {
  const int64_t P = (N + LIN_NR - 1) / LIN_NR;
#pragma omp parallel for num_threads(nthreads) schedule(static)
  for (int64_t p = 0; p < P; p++) {
    float *dst = packed + p * K * LIN_NR;
    for (int64_t j = 0; j < LIN_NR; j++) {
      const int64_t n = p * LIN_NR + j;
      const float *src = w + n * w_stride;
      for (int64_t k = 0; k < K; k++) dst[k * LIN_NR + j] = n < N ? src[k] : 0.f;
    }
  }
}

/* acc[0..11] += x[4 rows, k0:k1] . panel[k0:k1, 24 columns]; rows past `rows` repeat row 0
   (computed, never stored). */
static inline void linear_block(const float *x, int64_t x_stride, int64_t rows,
                                const float *panel, int64_t k0, int64_t k1, f32x8 *acc,
                                int prefetch) {
  const float *x0 = x, *x1 = rows > 1 ? x + x_stride : x;
  const float *x2 = rows > 2 ? x + 2 * x_stride : x, *x3 = rows > 3 ? x + 3 * x_stride : x;
  f32x8 a0 = acc[0], a1 = acc[1], a2 = acc[2], a3 = acc[3];
  f32x8 b0 = acc[4], b1 = acc[5], b2 = acc[6], b3 = acc[7];
  f32x8 c0 = acc[8], c1 = acc[9], c2 = acc[10], c3 = acc[11];
  for (int64_t k = k0; k < k1; k++) {
    const float *wk = panel + k * LIN_NR;
    if (prefetch && (k & 7) == 0) /* the 12 cache lines of 8 depth steps, LIN_PF ahead */
      for (int64_t line = 0; line < 8 * LIN_NR; line += 16) __builtin_prefetch(wk + LIN_PF + line);
    f32x8 w0 = *(const f32x8 *)wk, w1 = *(const f32x8 *)(wk + 8), w2 = *(const f32x8 *)(wk + 16);
    IN_REGISTER(w0); /* 7 loads a step, not 16 */
    IN_REGISTER(w1);
    IN_REGISTER(w2);
    float s = x0[k];
    a0 += w0 * s, b0 += w1 * s, c0 += w2 * s;
    s = x1[k];
    a1 += w0 * s, b1 += w1 * s, c1 += w2 * s;
    s = x2[k];
    a2 += w0 * s, b2 += w1 * s, c2 += w2 * s;
    s = x3[k];
    a3 += w0 * s, b3 += w1 * s, c3 += w2 * s;
  }
  acc[0] = a0, acc[1] = a1, acc[2] = a2, acc[3] = a3;
  acc[4] = b0, acc[5] = b1, acc[6] = b2, acc[7] = b3;
  acc[8] = c0, acc[9] = c1, acc[10] = c2, acc[11] = c3;
}

/* out [M, N] (row stride out_stride) = x [M, K] (row stride x_stride) W^T + bias (NULL: none),
   W packed by openledger_pack_linear. */
void openledger_linear(const float *x, int64_t x_stride, int64_t M, const float *packed,
                       int64_t N, int64_t K, const float *bias, float *out, int64_t out_stride,
                       int nthreads) {
  const int64_t P = (N + LIN_NR - 1) / LIN_NR, C = (M + LIN_MC - 1) / LIN_MC;
#pragma omp parallel for num_threads(nthreads) schedule(static)
  for (int64_t item = 0; item < P * C; item++) {
    const int64_t p = item / C, m0 = item % C * LIN_MC;
    const int64_t m = M - m0 < LIN_MC ? M - m0 : LIN_MC, blocks = (m + 3) / 4;
    const int64_t n0 = p * LIN_NR, cols = N - n0 < LIN_NR ? N - n0 : LIN_NR;
    const float *panel = packed + p * K * LIN_NR;
    f32x8 acc[LIN_MC / 4][12];
    for (int64_t b = 0; b < blocks; b++)
      for (int i = 0; i < 12; i++) acc[b][i] = (f32x8){0};
    for (int64_t k0 = 0; k0 < K; k0 += LIN_KC) {
      const int64_t k1 = K - k0 < LIN_KC ? K : k0 + LIN_KC;
      for (int64_t b = 0; b < blocks; b++) {
        const int64_t rows = m - 4 * b < 4 ? m - 4 * b : 4;
        linear_block(x + (m0 + 4 * b) * x_stride, x_stride, rows, panel, k0, k1, acc[b], b == 0);
      }
    }
    for (int64_t r = 0; r < m; r++) {
      float row[LIN_NR];
      *(f32x8 *)row = acc[r / 4][r % 4];
      *(f32x8 *)(row + 8) = acc[r / 4][4 + r % 4];
      *(f32x8 *)(row + 16) = acc[r / 4][8 + r % 4];
      float *o = out + (m0 + r) * out_stride + n0;
      if (bias)
        for (int64_t j = 0; j < cols; j++) o[j] = row[j] + bias[n0 + j];
      else
        for (int64_t j = 0; j < cols; j++) o[j] = row[j];
    }
  }
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
