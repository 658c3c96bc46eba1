/* Projections of a step's token rows over a packed weight (openledger::linear and
   openledger::pack_linear, cpu_ops.py; used by layers/linear.py, PackedWeight), float32 or
   weight-only int8 (openledger::linear_int8, openledger::pack_linear_int8; used by
   layers/quant.py, QuantizedWeight). */
#include "common.h"

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

/* packed [ceil(N / LIN_NR)][K][LIN_NR] from w [N, K] (row stride w_stride), for weights of
   any element type (float32 here, int8 below). */
#define DEFINE_PACK_LINEAR(name, type)                                                      \
  void name(const type *w, int64_t w_stride, int64_t N, int64_t K, type *packed,           \
            int nthreads) {                                                                 \
    const int64_t P = (N + LIN_NR - 1) / LIN_NR;                                            \
    _Pragma("omp parallel for num_threads(nthreads) schedule(static)")                      \
    for (int64_t p = 0; p < P; p++) {                                                       \
      type *dst = packed + p * K * LIN_NR;                                                  \
      for (int64_t j = 0; j < LIN_NR; j++) {                                                \
        const int64_t n = p * LIN_NR + j;                                                   \
        const type *src = w + n * w_stride;                                                 \
        for (int64_t k = 0; k < K; k++) dst[k * LIN_NR + j] = n < N ? src[k] : (type)0;     \
      }                                                                                     \
    }                                                                                       \
  }

DEFINE_PACK_LINEAR(openledger_pack_linear, float)

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

/* Weight-only INT8 projections: out = (x Q^T) * scale (+ b), Q [N, K] int8 with one float
   scale per output column (openledger::linear_int8 and openledger::pack_linear_int8).

   The same panels as above, one byte per weight: a decode step streams a quarter of the
   fp32 bytes. Per (panel, run of rows) item, each LIN_KC-deep slice of the panel is
   widened to floats once into a buffer that stays in L1, and every 4-row block runs the
   fp32 block over it; the scale multiplies each column's sum at the end, so the result is
   x (Q * scale)^T up to rounding. The int8 stream is prefetched one slice ahead. */
#if defined(__AVX2__)
#include <immintrin.h>
/* dst[0..7] = 8 int8 at p widened to floats: one sign extension, one conversion (AVX2). */
static inline void widen_i8x8(const int8_t *p, float *dst) {
  _mm256_storeu_ps(dst,
                   _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p))));
}
#else
/* dst[0..7] = 8 int8 at p widened to floats (a loop the compiler vectorises). */
static inline void widen_i8x8(const int8_t *p, float *dst) {
  for (int i = 0; i < 8; i++) dst[i] = (float)p[i];
}
#endif

/* packed [ceil(N / LIN_NR)][K][LIN_NR] int8 from q [N, K] (row stride q_stride). */
DEFINE_PACK_LINEAR(openledger_pack_linear_int8, int8_t)

#if defined(__AVX2__)
#define LIN_ROWS_DIRECT 2
/* acc[0..2] += x[0:K] . panel[0:K, 24 columns], the int8 weights widened in registers: for
   one or two rows a step, the slice buffer's store and reload would cost more than the
   widening they share. */
static inline void linear_i8_row(const float *x, const int8_t *panel, int64_t K, f32x8 *acc) {
  f32x8 a = acc[0], b = acc[1], c = acc[2];
  for (int64_t k = 0; k < K; k++) {
    const int8_t *wk = panel + k * LIN_NR;
    if ((k & 7) == 0) /* 8 depth steps are 3 cache lines; LIN_PF bytes ahead */
      for (int64_t line = 0; line < 8 * LIN_NR; line += 64) __builtin_prefetch(wk + LIN_PF + line);
    __m256 w[3];
    for (int j = 0; j < 3; j++)
      w[j] = _mm256_cvtepi32_ps(
          _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(wk + 8 * j))));
    f32x8 w0, w1, w2;
    __builtin_memcpy(&w0, &w[0], sizeof w0);
    __builtin_memcpy(&w1, &w[1], sizeof w1);
    __builtin_memcpy(&w2, &w[2], sizeof w2);
    const float s = x[k];
    a += w0 * s, b += w1 * s, c += w2 * s;
  }
  acc[0] = a, acc[1] = b, acc[2] = c;
}
#else
#define LIN_ROWS_DIRECT 0
#endif

/* out [M, N] (row stride out_stride) = x [M, K] (row stride x_stride) (Q * scale)^T + bias
   (NULL: none), Q packed by openledger_pack_linear_int8, scale [N]. */
void openledger_linear_int8(const float *x, int64_t x_stride, int64_t M, const int8_t *packed,
                            const float *scale, int64_t N, int64_t K, const float *bias,
                            float *out, int64_t out_stride, int nthreads) {
  const int64_t P = (N + LIN_NR - 1) / LIN_NR, C = (M + LIN_MC - 1) / LIN_MC;
#pragma omp parallel for num_threads(nthreads) schedule(static)
  for (int64_t item = 0; item < P * C; item++) {
    const int64_t p = item / C, m0 = item % C * LIN_MC;
    const int64_t m = M - m0 < LIN_MC ? M - m0 : LIN_MC, blocks = (m + 3) / 4;
    const int64_t n0 = p * LIN_NR, cols = N - n0 < LIN_NR ? N - n0 : LIN_NR;
    const int8_t *panel = packed + p * K * LIN_NR;
    const float *s = scale + n0;
#if LIN_ROWS_DIRECT
    if (M <= LIN_ROWS_DIRECT) {
      for (int64_t r = 0; r < m; r++) {
        f32x8 acc[3] = {{0}, {0}, {0}};
        linear_i8_row(x + (m0 + r) * x_stride, panel, K, acc);
        float row[LIN_NR];
        __builtin_memcpy(row, acc, sizeof row);
        float *o = out + (m0 + r) * out_stride + n0;
        for (int64_t j = 0; j < cols; j++) o[j] = row[j] * s[j] + (bias ? bias[n0 + j] : 0.f);
      }
      continue;
    }
#endif
    float slice[LIN_KC * LIN_NR] __attribute__((aligned(64)));
    f32x8 acc[LIN_MC / 4][12];
    for (int64_t b = 0; b < blocks; b++)
      for (int i = 0; i < 12; i++) acc[b][i] = (f32x8){0};
    for (int64_t k0 = 0; k0 < K; k0 += LIN_KC) {
      const int64_t k1 = K - k0 < LIN_KC ? K : k0 + LIN_KC, depth = k1 - k0;
      const int8_t *src = panel + k0 * LIN_NR;
      for (int64_t k = 0; k < depth; k++) {
        if ((k & 7) == 0) /* the next slice's bytes: 8 depth steps are 3 cache lines */
          for (int64_t line = 0; line < 8 * LIN_NR; line += 64)
            __builtin_prefetch(src + (LIN_KC + k) * LIN_NR + line);
        for (int j = 0; j < LIN_NR; j += 8)
          widen_i8x8(src + k * LIN_NR + j, slice + k * LIN_NR + j);
      }
      for (int64_t b = 0; b < blocks; b++) {
        const int64_t rows = m - 4 * b < 4 ? m - 4 * b : 4;
        linear_block(x + (m0 + 4 * b) * x_stride + k0, x_stride, rows, slice, 0, depth, acc[b],
                     0);
      }
    }
    for (int64_t r = 0; r < m; r++) {
      float row[LIN_NR];
      *(f32x8 *)row = acc[r / 4][r % 4];
      *(f32x8 *)(row + 8) = acc[r / 4][4 + r % 4];
      *(f32x8 *)(row + 16) = acc[r / 4][8 + r % 4];
      float *o = out + (m0 + r) * out_stride + n0;
      if (bias)
        for (int64_t j = 0; j < cols; j++) o[j] = row[j] * s[j] + bias[n0 + j];
      else
        for (int64_t j = 0; j < cols; j++) o[j] = row[j] * s[j];
    }
  }
}

/* Int8 weights with bfloat16 dot products (openledger::linear_int8_bf16): where the CPU has
   AVX512-BF16, one VDPBF16PS multiplies 32 bfloat16 pairs and adds them into 16 float32
   sums, twice the multiply-adds of float32 FMAs per instruction. The int8 weights widen to
   bfloat16 exactly (|q| <= 127 needs 7 bits); the activations are rounded to bfloat16 once
   per call (the only extra rounding: 2^-9 of each input), and sums stay float32.

   Panels of BF_NR = 32 output columns, depth in pairs: packed [ceil(N / 32)][ceil(K / 2)][32][2]
   int8 (column j's weights at depths 2p and 2p + 1 side by side; padding zero). Per item,
   each BF_KC-pair slice of a panel widens once into a bfloat16 buffer; every 8-row block
   runs over it with 16 accumulators (8 rows x 2 vectors of 16 columns). One or two rows are
   computed in float32 straight from the panels instead (bf16_panel_row_f32). Without AVX512-BF16
   the entry points report so (openledger_has_bf16_dot) and are never called. */
#define BF_NR 32
#define BF_MC 32
#define BF_KC 64

int64_t openledger_has_bf16_dot(void) {
#if defined(__AVX512BF16__) && defined(__AVX512F__)
  return 1;
#else
  return 0;
#endif
}

/* packed [ceil(N / 32)][ceil(K / 2)][32][2] int8 from q [N, K] (row stride q_stride). */
void openledger_pack_linear_int8_bf16(const int8_t *q, int64_t q_stride, int64_t N, int64_t K,
                                      int8_t *packed, int nthreads) {
  const int64_t P = (N + BF_NR - 1) / BF_NR, K2 = (K + 1) / 2;
#pragma omp parallel for num_threads(nthreads) schedule(static)
  for (int64_t p = 0; p < P; p++) {
    int8_t *dst = packed + p * K2 * BF_NR * 2;
    for (int64_t j = 0; j < BF_NR; j++) {
      const int64_t n = p * BF_NR + j;
      const int8_t *src = q + n * q_stride;
      for (int64_t k = 0; k < 2 * K2; k++)
        dst[(k / 2) * BF_NR * 2 + j * 2 + (k & 1)] = n < N && k < K ? src[k] : 0;
    }
  }
}

#if defined(__AVX512BF16__) && defined(__AVX512F__)
#include <immintrin.h>

/* f rounded to bfloat16, to nearest even (as VCVTNE2PS2BF16 rounds; NaN stays NaN). */
static inline uint16_t bf16_bits(float f) {
  uint32_t u;
  __builtin_memcpy(&u, &f, sizeof u);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u);
  return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

/* acc[0..15] += 8 rows of xb (bfloat16 pairs as uint32, row stride xb_stride) . slice. */
static inline void bf16_block(const uint32_t *xb, int64_t xb_stride, int64_t rows,
                              const __m512bh *slice, int64_t pairs, __m512 *acc) {
  const uint32_t *x[8];
  for (int r = 0; r < 8; r++) x[r] = xb + (r < rows ? r : 0) * xb_stride;
  __m512 a[16];
  for (int i = 0; i < 16; i++) a[i] = acc[i];
  for (int64_t p = 0; p < pairs; p++) {
    const __m512bh w0 = slice[2 * p], w1 = slice[2 * p + 1];
    for (int r = 0; r < 8; r++) {
      const __m512bh s = (__m512bh)_mm512_set1_epi32((int)x[r][p]);
      a[2 * r] = _mm512_dpbf16_ps(a[2 * r], w0, s);
      a[2 * r + 1] = _mm512_dpbf16_ps(a[2 * r + 1], w1, s);
    }
  }
  for (int i = 0; i < 16; i++) acc[i] = a[i];
}

/* row[0..31] = x[0:K] . the 32 columns of a depth-paired int8 panel, in float32: for one
   or two rows a step the weight stream, not the multiplies, bounds the step, and the
   panel's bytes are widened straight into float32 registers (no bfloat16 rounding). Each
   16-float vector holds 8 columns at depths 2p and 2p + 1 side by side; the two halves of
   each column's sum are added at the end. */
static inline void bf16_panel_row_f32(const float *x, int64_t K, const int8_t *panel,
                                      float *row) {
  const int64_t K2 = (K + 1) / 2;
  __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(),
                   _mm512_setzero_ps()};
  for (int64_t p = 0; p < K2; p++) {
    const int8_t *w = panel + p * BF_NR * 2;
    _mm_prefetch((const char *)(w + 16 * BF_NR * 2), _MM_HINT_T0);
    const float second = 2 * p + 1 < K ? x[2 * p + 1] : 0.f;
    const __m512 pair =
        _mm512_mask_blend_ps(0xAAAA, _mm512_set1_ps(x[2 * p]), _mm512_set1_ps(second));
    for (int c = 0; c < 4; c++) {
      const __m512 wc =
          _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(w + 16 * c))));
      acc[c] = _mm512_fmadd_ps(wc, pair, acc[c]);
    }
  }
  for (int c = 0; c < 4; c++) {
    float t[16];
    _mm512_storeu_ps(t, acc[c]);
    for (int j = 0; j < 8; j++) row[8 * c + j] = t[2 * j] + t[2 * j + 1];
  }
}
#endif

/* out [M, N] = bf16(x) (Q * scale)^T + bias, Q packed by openledger_pack_linear_int8_bf16;
   xb: scratch of M * ceil(K / 2) uint32 (the rows of x as bfloat16 pairs). Returns 0, or -1
   where the CPU build lacks AVX512-BF16 (nothing written). */
int openledger_linear_int8_bf16(const float *x, int64_t x_stride, int64_t M,
                                const int8_t *packed, const float *scale, int64_t N, int64_t K,
                                const float *bias, float *out, int64_t out_stride, uint32_t *xb,
                                int nthreads) {
#if defined(__AVX512BF16__) && defined(__AVX512F__)
  const int64_t P = (N + BF_NR - 1) / BF_NR, C = (M + BF_MC - 1) / BF_MC, K2 = (K + 1) / 2;
  if (M <= 2) { /* float32 arithmetic over the same panels: faster at one or two rows */
#pragma omp parallel for num_threads(nthreads) schedule(static)
    for (int64_t item = 0; item < P * M; item++) {
      const int64_t p = item / M, r = item % M;
      const int64_t n0 = p * BF_NR, cols = N - n0 < BF_NR ? N - n0 : BF_NR;
      float row[BF_NR];
      bf16_panel_row_f32(x + r * x_stride, K, packed + p * K2 * BF_NR * 2, row);
      float *o = out + r * out_stride + n0;
      for (int64_t j = 0; j < cols; j++)
        o[j] = row[j] * scale[n0 + j] + (bias ? bias[n0 + j] : 0.f);
    }
    return 0;
  }
#pragma omp parallel for num_threads(nthreads) schedule(static)
  for (int64_t m = 0; m < M; m++) {
    const float *row = x + m * x_stride;
    uint32_t *dst = xb + m * K2;
    int64_t p = 0;
    for (; p + 16 <= K / 2; p += 16) {
      const __m512 lo = _mm512_loadu_ps(row + 2 * p), hi = _mm512_loadu_ps(row + 2 * p + 16);
      _mm512_storeu_si512(dst + p, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
    }
    for (; p < K2; p++)
      dst[p] = bf16_bits(row[2 * p]) |
               (uint32_t)bf16_bits(2 * p + 1 < K ? row[2 * p + 1] : 0.f) << 16;
  }
#pragma omp parallel for num_threads(nthreads) schedule(static)
  for (int64_t item = 0; item < P * C; item++) {
    const int64_t p = item / C, m0 = item % C * BF_MC;
    const int64_t m = M - m0 < BF_MC ? M - m0 : BF_MC, blocks = (m + 7) / 8;
    const int64_t n0 = p * BF_NR, cols = N - n0 < BF_NR ? N - n0 : BF_NR;
    const int8_t *panel = packed + p * K2 * BF_NR * 2;
    __m512bh slice[BF_KC * 2];
    __m512 acc[BF_MC / 8][16];
    for (int64_t b = 0; b < blocks; b++)
      for (int i = 0; i < 16; i++) acc[b][i] = _mm512_setzero_ps();
    for (int64_t p0 = 0; p0 < K2; p0 += BF_KC) {
      const int64_t pairs = K2 - p0 < BF_KC ? K2 - p0 : BF_KC;
      const int8_t *src = panel + p0 * BF_NR * 2;
      for (int64_t i = 0; i < pairs; i++) {
        const int8_t *s = src + i * BF_NR * 2;
        _mm_prefetch((const char *)(s + BF_KC * BF_NR * 2), _MM_HINT_T0); /* next slice */
        __m512 f[4];
        for (int h = 0; h < 4; h++)
          f[h] = _mm512_cvtepi32_ps(
              _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(s + 16 * h))));
        slice[2 * i] = _mm512_cvtne2ps_pbh(f[1], f[0]);
        slice[2 * i + 1] = _mm512_cvtne2ps_pbh(f[3], f[2]);
      }
      for (int64_t b = 0; b < blocks; b++) {
        const int64_t rows = m - 8 * b < 8 ? m - 8 * b : 8;
        bf16_block(xb + (m0 + 8 * b) * K2 + p0, K2, rows, slice, pairs, acc[b]);
      }
    }
    for (int64_t r = 0; r < m; r++) {
      float row[BF_NR];
      _mm512_storeu_ps(row, acc[r / 8][2 * (r % 8)]);
      _mm512_storeu_ps(row + 16, acc[r / 8][2 * (r % 8) + 1]);
      float *o = out + (m0 + r) * out_stride + n0;
      const float *s = scale + n0;
      if (bias)
        for (int64_t j = 0; j < cols; j++) o[j] = row[j] * s[j] + bias[n0 + j];
      else
        for (int64_t j = 0; j < cols; j++) o[j] = row[j] * s[j];
    }
  }
  return 0;
#else
  (void)x, (void)x_stride, (void)M, (void)packed, (void)scale, (void)N, (void)K, (void)bias;
  (void)out, (void)out_stride, (void)xb, (void)nthreads;
  return -1;
#endif
}
