/* The LoRA update of one projection for a step's tokens grouped by adapter
   (openledger::lora_apply, cpu_ops.py; tables built by lora_cpu.py).

   out[t] += (x[t] A_g^T) B_g^T for every token t of group g, where B_g is given slice by
   slice (q, k, v of a fused projection; an adapter need not target every slice).

   Two phases in one OpenMP region, both streaming each weight once, front to back:
   shrink, parallel over (group, rank row): dot products of the group's token rows with
   one row of A, two rows per load of A, four independent sums each; expand, parallel
   over groups (or over column ranges when there are fewer groups than threads): a run of
   columns of every row of the group summed over the rank in registers, then added to
   out once. Each token row belongs to one group, so no two threads write the same
   element. */
#include "common.h"

#define CHUNK 256 /* groups per pass; offsets live on the stack */
/* Floats ahead the LoRA kernel prefetches along A's rows and B^T's rows: its weights are
   many small tensors, whose short runs the hardware prefetchers do not follow far. */
#define LORA_PF 256
#define LORA_BPF 32

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

/* 1 when the G groups' offsets split rows[0..N-1] in order and every row is one of the
   step's T tokens, in one group only (two threads must never write one row); else 0, or
   -1 when out of memory. */
static int rows_fit(const int64_t *row_off, const int64_t *rows, int64_t G, int64_t N,
                    int64_t T) {
  if (row_off[0] != 0 || row_off[G] != N) return 0;
  for (int64_t g = 0; g < G; g++)
    if (row_off[g + 1] < row_off[g]) return 0;
  unsigned char *seen = calloc((size_t)(T > 0 ? T : 1), 1);
  if (!seen) return -1;
  int ok = 1;
  for (int64_t i = 0; i < N && ok; i++) {
    ok = rows[i] >= 0 && rows[i] < T && !seen[rows[i]];
    if (ok) seen[rows[i]] = 1;
  }
  free(seen);
  return ok;
}

/* groups: G x 4 int64 [a_ptr, rank, first_slice, num_slices], A is [rank, H] row-major;
   slices: 5 int64 each [rank_start, rank_end, col_start, col_end, bt_ptr], Bt is
   [rank_end - rank_start, col_end - col_start] row-major; group g's token rows are
   rows[row_off[g] : row_off[g + 1]], N rows in all, each below T (checked first).
   Returns 0, -1 when out of memory, -2 when the rows do not fit (nothing written). */
int openledger_lora_apply(const float *x, int64_t x_stride, float *out, int64_t out_stride,
                          int64_t H, int64_t G, const int64_t *row_off, const int64_t *rows,
                          int64_t N, int64_t T, const int64_t *groups, const int64_t *slices,
                          int nthreads) {
  const int fit = rows_fit(row_off, rows, G, N, T);
  if (fit != 1) return fit == 0 ? -2 : -1;
  for (int64_t start = 0; start < G; start += CHUNK) {
    const int64_t n = G - start < CHUNK ? G - start : CHUNK;
    if (apply_groups(x, x_stride, out, out_stride, H, n, row_off + start, rows, groups + 4 * start,
                     slices, nthreads))
      return -1;
  }
  return 0;
}
