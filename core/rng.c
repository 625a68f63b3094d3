/* torch's CPU generator (torch 1.13+, x86-64 with AVX2/AVX-512) reproduced
 * bit for bit: mt19937 seeded with the low 32 bits of the seed; randn of
 * n >= 16 values transforms blocks of 16 uniforms with Box-Muller using the
 * cephes log/sincos polynomials of torch's vectorised kernels (with the
 * multiply-adds GCC fuses there), randn of n < 16 values draws doubles one by
 * one and caches the second Box-Muller value. Must not be built with
 * -ffast-math: every rounding matters. */
#include "lcm.h"

#include <math.h>

#define MT_N 624
#define MT_M 397

struct LcmRng {
  uint32_t state[MT_N];
  int next;
  gboolean has_cached_normal;
  double cached_normal;
};

LcmRng *lcm_rng_new(uint64_t seed) {
  LcmRng *rng = g_new0(LcmRng, 1);
  rng->state[0] = (uint32_t)seed;
  for (int i = 1; i < MT_N; i++)
    rng->state[i] = 1812433253u * (rng->state[i - 1] ^ (rng->state[i - 1] >> 30)) + (uint32_t)i;
  rng->next = MT_N;
  return rng;
}

void lcm_rng_free(LcmRng *rng) {
  g_free(rng);
}

static void mt_twist(LcmRng *rng) {
  for (int k = 0; k < MT_N; k++) {
    uint32_t y = (rng->state[k] & 0x80000000u) | (rng->state[(k + 1) % MT_N] & 0x7fffffffu);
    rng->state[k] = rng->state[(k + MT_M) % MT_N] ^ (y >> 1) ^ ((y & 1u) ? 0x9908b0dfu : 0u);
  }
  rng->next = 0;
}

static uint32_t mt_next(LcmRng *rng) {
  if (rng->next >= MT_N) mt_twist(rng);
  uint32_t y = rng->state[rng->next++];
  y ^= y >> 11;
  y ^= (y << 7) & 0x9d2c5680u;
  y ^= (y << 15) & 0xefc60000u;
  y ^= y >> 18;
  return y;
}

/* Uniform in [0, 1) from 24 random bits (torch's float uniform). */
static float uniform24(LcmRng *rng) {
  return (float)(mt_next(rng) & 0xffffffu) * 0x1p-24f;
}

/* Uniform in [0, 1) from 53 random bits (torch's double uniform). */
static double uniform53(LcmRng *rng) {
  uint64_t hi = mt_next(rng), lo = mt_next(rng);
  return (double)(((hi << 32) | lo) & ((1ull << 53) - 1)) * 0x1p-53;
}

/* Natural log for x in (0, 1]: cephes polynomial as vectorised by torch. */
static float cephes_logf(float x) {
  union {
    float f;
    int32_t i;
  } bits = {x};
  float exponent = (float)((bits.i >> 23) - 127) + 1.0f;
  bits.i = (bits.i & ~0x7f800000) | 0x3f000000; /* mantissa in [0.5, 1) */
  x = bits.f;
  float low = 0.0f;
  if (x < 0.707106781186547524f) {
    low = x;
    exponent -= 1.0f;
  }
  x = (x - 1.0f) + low;
  static const float poly[] = {7.0376836292E-2f,  -1.1514610310E-1f, 1.1676998740E-1f,
                               -1.2420140846E-1f, 1.4249322787E-1f,  -1.6668057665E-1f,
                               2.0000714765E-1f,  -2.4999993993E-1f, 3.3333331174E-1f};
  float z = x * x, y = poly[0];
  for (size_t i = 1; i < G_N_ELEMENTS(poly); i++) y = fmaf(y, x, poly[i]);
  y = y * x;
  y = fmaf(y, z, exponent * -2.12194440e-4f);
  y = y - z * 0.5f;
  x = x + y;
  return x + exponent * 0.693359375f;
}

/* sin and cos for x in [0, 2 pi): cephes, as vectorised by torch. */
static void cephes_sincosf(float x, float *sin_out, float *cos_out) {
  int octant = (int)(x * 1.27323954473516f);
  octant = (octant + 1) & ~1;
  float y = (float)octant;
  x = fmaf(y, -0.78515625f, x);
  x = fmaf(y, -2.4187564849853515625e-4f, x);
  x = fmaf(y, -3.77489497744594108e-8f, x);
  float z = x * x;
  float c = 2.443315711809948E-005f;
  c = fmaf(c, z, -1.388731625493765E-003f);
  c = fmaf(c, z, 4.166664568298827E-002f);
  c = c * z;
  c = fmaf(c, z, -(z * 0.5f));
  c = c + 1.0f;
  float s = -1.9515295891E-4f;
  s = fmaf(s, z, 8.3321608736E-3f);
  s = fmaf(s, z, -1.6666654611E-1f);
  s = s * z;
  s = fmaf(s, x, x);
  gboolean sine_poly = (octant & 2) == 0;
  float sv = sine_poly ? s : c, cv = sine_poly ? c : s;
  if (octant & 4) sv = -sv;
  if (!((octant - 2) & 4)) cv = -cv;
  *sin_out = sv;
  *cos_out = cv;
}

/* Box-Muller over 16 uniforms in place: pairs (k, k + 8). */
static void normal_block16(float *d) {
  for (int k = 0; k < 8; k++) {
    float radius = sqrtf(-2.0f * cephes_logf(1.0f - d[k])), s, c;
    cephes_sincosf(6.2831855f * d[k + 8], &s, &c);
    d[k] = radius * c + 0.0f; /* + 0: -0 becomes +0, as torch's fused add does */
    d[k + 8] = radius * s + 0.0f;
  }
}

static double normal_double(LcmRng *rng) {
  if (rng->has_cached_normal) {
    rng->has_cached_normal = FALSE;
    return rng->cached_normal;
  }
  double u1 = uniform53(rng), u2 = uniform53(rng);
  double radius = sqrt(-2.0 * log(1.0 - u2)), theta = 2.0 * G_PI * u1;
  rng->cached_normal = radius * sin(theta);
  rng->has_cached_normal = TRUE;
  return radius * cos(theta);
}

void lcm_rng_randn(LcmRng *rng, float *out, int64_t n) {
  if (n < 16) {
    for (int64_t i = 0; i < n; i++) out[i] = (float)normal_double(rng);
    return;
  }
  for (int64_t i = 0; i < n; i++) out[i] = uniform24(rng);
  for (int64_t i = 0; i + 16 <= n; i += 16) normal_block16(out + i);
  if (n % 16) {
    /* The tail block is redrawn over the last 16 slots. */
    for (int k = 0; k < 16; k++) out[n - 16 + k] = uniform24(rng);
    normal_block16(out + n - 16);
  }
}
