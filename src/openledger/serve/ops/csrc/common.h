/* What every kernel family shares: the vector type, a vectorisable exp, and the register
   hint. Included by lora.c, linear.c, attention.c and rowwise.c (cpu_kernels.py builds
   them into one shared library). */
#ifndef OPENLEDGER_COMMON_H
#define OPENLEDGER_COMMON_H

#include <math.h>
#include <stdint.h>
#include <stdlib.h>

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

/* Keeps a loaded vector in a register where it feeds several multiply-adds: left to
   itself, the compiler folds the load into each of them (x86 FMAs take a memory operand),
   and the load ports, not the FMA units, then bound the loop. */
#if defined(__AVX__) && defined(__GNUC__)
#define IN_REGISTER(v) __asm__("" : "+x"(v))
#else
#define IN_REGISTER(v) ((void)0)
#endif

#endif
