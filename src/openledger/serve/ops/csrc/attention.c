/* Decode attention straight from the paged KV cache (openledger::paged_decode, cpu_ops.py;
   used by attention_cpu.py). */
#include "common.h"

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
   scores per query head. Checked first: each length in 1..max_blocks * block_size (a
   table row holds max_blocks ids) and each block id read in 0..num_blocks - 1.
   Returns 0, -1 when out of memory, -2 for a length, -3 for a block id out of range. */
int openledger_paged_decode(const float *q, int64_t q_stride, const float *k_cache,
                            const float *v_cache, const int32_t *tables, int64_t table_stride,
                            int64_t max_blocks, int64_t num_blocks, const int32_t *lens,
                            int64_t B, int64_t Hq, int64_t KV, int64_t D, int64_t block_size,
                            float scale, int64_t window, float *out, int nthreads) {
  const int64_t group = Hq / KV, token_stride = KV * D;
  int64_t max_len = 1;
  for (int64_t b = 0; b < B; b++) {
    const int64_t len = lens[b], start = window > 0 && len > window ? len - window : 0;
    if (len < 1 || len > max_blocks * block_size) return -2;
    for (int64_t blk = start / block_size; blk * block_size < len; blk++)
      if (tables[b * table_stride + blk] < 0 || tables[b * table_stride + blk] >= num_blocks)
        return -3;
    if (len > max_len) max_len = len;
  }
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
