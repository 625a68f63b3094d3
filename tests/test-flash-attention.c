/* flash_attention against a double-precision reference (on the same
 * bf16-rounded inputs in bf16), over the shapes of SD1.5 and SDXL (head
 * dims 40/64/80/160/512, 77 text keys), CLIP's causal attention and odd
 * tails, in fp32 and bf16, on every kind of tiles: bf16 brgemm (AVX512-BF16
 * and AMX, each where the CPU has it), fp32 brgemm and portable loops. */
#include "flash-attention.h"
#include "lcm.h"
#include "testutil.h"

#include <math.h>
#include <string.h>

typedef struct {
  int q_tokens, kv_tokens, heads, head_dim;
  gboolean causal;
} Shape;

static uint16_t to_bf16(float f) {
  uint32_t bits;
  memcpy(&bits, &f, 4);
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return (uint16_t)(bits >> 16);
}

static float from_bf16(uint16_t h) {
  uint32_t bits = (uint32_t)h << 16;
  float f;
  memcpy(&f, &bits, 4);
  return f;
}

/* Random values in [-amplitude, amplitude], already rounded to bf16 when
 * the test runs in bf16 so the reference sees the same inputs. */
static float *random_rows(GRand *rand, size_t count, float amplitude, dnnl_data_type_t dtype) {
  float *x = g_new(float, count);
  for (size_t i = 0; i < count; i++) {
    x[i] = (float)g_rand_double_range(rand, -amplitude, amplitude);
    if (dtype == dnnl_bf16) x[i] = from_bf16(to_bf16(x[i]));
  }
  return x;
}

/* The buffer flash_attention reads: fp32 as is, or bf16. */
static void *in_dtype(const float *x, size_t count, dnnl_data_type_t dtype) {
  if (dtype == dnnl_f32) return g_memdup2(x, count * sizeof(float));
  uint16_t *h = g_new(uint16_t, count);
  for (size_t i = 0; i < count; i++) h[i] = to_bf16(x[i]);
  return h;
}

static float element(const void *buffer, size_t i, dnnl_data_type_t dtype) {
  return dtype == dnnl_f32 ? ((const float *)buffer)[i] : from_bf16(((const uint16_t *)buffer)[i]);
}

/* Reference output row of query i, head h, batch b for rows of `width`
 * values (q/k/v strides as given). */
static void reference_row(const float *q, const float *k, const float *v, size_t q_stride,
                          size_t k_stride, size_t v_stride, int kv_tokens, int d, gboolean causal,
                          int i, int h, double *out) {
  double *p = g_new(double, kv_tokens);
  double max = -INFINITY, sum = 0.0;
  const int visible = causal ? MIN(kv_tokens, i + 1) : kv_tokens;
  for (int j = 0; j < visible; j++) {
    double dot = 0.0;
    for (int c = 0; c < d; c++)
      dot += (double)q[(size_t)i * q_stride + (size_t)h * d + c] *
             k[(size_t)j * k_stride + (size_t)h * d + c];
    p[j] = dot / sqrt((double)d);
    max = MAX(max, p[j]);
  }
  for (int j = 0; j < visible; j++) sum += p[j] = exp(p[j] - max);
  for (int c = 0; c < d; c++) {
    double acc = 0.0;
    for (int j = 0; j < visible; j++) acc += p[j] * v[(size_t)j * v_stride + (size_t)h * d + c];
    out[c] = acc / sum;
  }
  g_free(p);
}

static const char *tiles_name(FlashTiles tiles) {
  return tiles == FLASH_TILES_BF16  ? "bf16 tiles"
         : tiles == FLASH_TILES_F32 ? "f32 tiles"
                                    : "portable";
}

/* Runs one shape with batch 2 on separate q/k/v buffers, tiles no faster
 * than max_tiles, checks every `row_step`-th query row of every head against
 * the reference. Returns the tiles it ran on. */
static FlashTiles check_shape(const Shape *s, dnnl_data_type_t dtype, FlashTiles max_tiles,
                              int row_step) {
  const int batch = 2, width = s->heads * s->head_dim;
  const size_t nq = (size_t)batch * s->q_tokens * width, nkv = (size_t)batch * s->kv_tokens * width;
  GRand *rand = g_rand_new_with_seed(1234u + (guint)s->q_tokens * 7u + (guint)s->head_dim);
  float *q = random_rows(rand, nq, 3.0f, dtype);
  float *k = random_rows(rand, nkv, 3.0f, dtype);
  float *v = random_rows(rand, nkv, 1.0f, dtype);
  void *qd = in_dtype(q, nq, dtype), *kd = in_dtype(k, nkv, dtype), *vd = in_dtype(v, nkv, dtype);
  void *out = g_malloc0(nq * (dtype == dnnl_f32 ? 4 : 2));

  FlashAttentionArgs args = {
      .batch = batch,
      .heads = s->heads,
      .head_dim = s->head_dim,
      .q_tokens = s->q_tokens,
      .kv_tokens = s->kv_tokens,
      .dtype = dtype,
      .q = qd,
      .k = kd,
      .v = vd,
      .out = out,
      .q_stride = width,
      .k_stride = width,
      .v_stride = width,
      .out_stride = width,
      .causal = s->causal,
      .max_tiles = max_tiles,
  };
  GError *error = NULL;
  const FlashTiles tiles = flash_attention_tiles(&args, &error);
  g_assert_no_error(error);
  g_assert_true(flash_attention(&args, &error));
  g_assert_no_error(error);

  double *ref = g_new(double, s->head_dim);
  double max_err = 0.0, max_ref = 0.0, dot = 0.0, ref2 = 0.0, got2 = 0.0;
  for (int b = 0; b < batch; b++)
    for (int i = 0; i < s->q_tokens; i += row_step)
      for (int h = 0; h < s->heads; h++) {
        const size_t q0 = (size_t)b * s->q_tokens * width, kv0 = (size_t)b * s->kv_tokens * width;
        reference_row(q + q0, k + kv0, v + kv0, width, width, width, s->kv_tokens, s->head_dim,
                      s->causal, i, h, ref);
        for (int c = 0; c < s->head_dim; c++) {
          const double got =
              element(out, q0 + (size_t)i * width + (size_t)h * s->head_dim + c, dtype);
          max_err = MAX(max_err, fabs(got - ref[c]));
          max_ref = MAX(max_ref, fabs(ref[c]));
          dot += got * ref[c];
          ref2 += ref[c] * ref[c];
          got2 += got * got;
        }
      }
  const double cosine = dot / sqrt(ref2 * got2);
  g_test_message("tq=%d tk=%d heads=%d d=%d%s %s on %s: max err %.3g (rel %.3g), cosine %.7f",
                 s->q_tokens, s->kv_tokens, s->heads, s->head_dim, s->causal ? " causal" : "",
                 dtype == dnnl_f32 ? "f32" : "bf16", tiles_name(tiles), max_err, max_err / max_ref,
                 cosine);
  /* bf16: the output's own rounding is 2^-9 relative; the probabilities'
   * rounding (bf16 tiles) adds less than that. */
  g_assert_cmpfloat(max_err / max_ref, <=, dtype == dnnl_f32 ? 1e-5 : 5e-3);
  if (dtype == dnnl_bf16) g_assert_cmpfloat(cosine, >=, 0.99999);

  g_free(ref);
  g_free(out);
  g_free(qd);
  g_free(kd);
  g_free(vd);
  g_free(q);
  g_free(k);
  g_free(v);
  g_rand_free(rand);
  return tiles;
}

static const Shape small_shapes[] = {
    {1024, 1024, 8, 80, FALSE},                         /* UNet 32x32 self-attention */
    {256, 77, 8, 160, FALSE},                           /* UNet 16x16 cross-attention */
    {64, 64, 8, 40, FALSE},     {77, 77, 12, 64, TRUE}, /* CLIP */
    {13, 7, 2, 5, FALSE},       {13, 7, 2, 5, TRUE},    {7, 13, 3, 5, TRUE},
    {200, 300, 2, 24, TRUE}, /* several query and key blocks with tails */
};

/* Every shape in fp32 and bf16 on the fastest tiles this CPU has. */
static void test_small_shapes(void) {
  for (size_t i = 0; i < G_N_ELEMENTS(small_shapes); i++) {
    const int row_step = small_shapes[i].q_tokens >= 512 ? 7 : 1; /* keeps the reference cheap */
    check_shape(&small_shapes[i], dnnl_f32, FLASH_TILES_AUTO, row_step);
    check_shape(&small_shapes[i], dnnl_bf16, FLASH_TILES_AUTO, row_step);
  }
}

/* The portable loops, in fp32 and on bf16 data, as on a CPU without the
 * oneDNN ukernel. */
static void test_portable(void) {
  for (size_t i = 0; i < G_N_ELEMENTS(small_shapes); i++) {
    const int row_step = small_shapes[i].q_tokens >= 512 ? 7 : 1;
    g_assert_cmpint(check_shape(&small_shapes[i], dnnl_f32, FLASH_TILES_PORTABLE, row_step), ==,
                    FLASH_TILES_PORTABLE);
    g_assert_cmpint(check_shape(&small_shapes[i], dnnl_bf16, FLASH_TILES_PORTABLE, row_step), ==,
                    FLASH_TILES_PORTABLE);
  }
}

/* bf16 inputs at the head dims of SD1.5 (40, 80, 160), SDXL (64) and the
 * VAE (512), odd token counts and head counts, an odd head dim. */
static const Shape bf16_shapes[] = {
    {333, 333, 3, 40, FALSE}, {129, 77, 8, 64, FALSE},    {257, 300, 5, 80, FALSE},
    {100, 77, 2, 160, FALSE}, {70, 90, 1, 512, FALSE},    {37, 41, 2, 5, FALSE},
    {61, 61, 3, 64, TRUE},    {1025, 1025, 2, 40, FALSE},
};

static void check_bf16_shapes(FlashTiles max_tiles, FlashTiles expected) {
  for (size_t i = 0; i < G_N_ELEMENTS(bf16_shapes); i++)
    g_assert_cmpint(
        check_shape(&bf16_shapes[i], dnnl_bf16, max_tiles, bf16_shapes[i].q_tokens >= 512 ? 7 : 1),
        ==, expected);
}

static gboolean isa_has(dnnl_cpu_isa_t isa) {
  return (dnnl_get_effective_cpu_isa() & isa) == isa;
}

/* bf16 tiles on AVX512-BF16 dot products: where oneDNN's effective ISA has
 * them and no AMX (on AMX CPUs the test flash-attention-avx512-bf16 runs
 * this with the ISA capped). */
static void test_bf16_avx512(void) {
  if (!isa_has(dnnl_cpu_isa_avx512_core_bf16)) {
    g_test_skip("oneDNN's effective ISA on this CPU has no AVX512-BF16");
    return;
  }
  if (isa_has(dnnl_cpu_isa_avx512_core_amx)) {
    g_test_skip("oneDNN runs bf16 brgemms on AMX here; flash-attention-avx512-bf16 caps the ISA");
    return;
  }
  check_bf16_shapes(FLASH_TILES_AUTO, FLASH_TILES_BF16);
}

/* bf16 tiles on AMX: where oneDNN's effective ISA has AMX (the brgemms then
 * configure AMX tiles per thread). */
static void test_bf16_amx(void) {
  if (!isa_has(dnnl_cpu_isa_avx512_core_amx)) {
    g_test_skip("oneDNN's effective ISA on this CPU has no AMX");
    return;
  }
  check_bf16_shapes(FLASH_TILES_AUTO, FLASH_TILES_BF16);
}

/* Arguments of a 64-token, one-head attention for flash_attention_tiles,
 * which reads no data. */
static FlashAttentionArgs probe_args(dnnl_data_type_t dtype, FlashTiles max_tiles) {
  static float unused[1];
  return (FlashAttentionArgs){.batch = 1,
                              .heads = 1,
                              .head_dim = 40,
                              .q_tokens = 64,
                              .kv_tokens = 64,
                              .dtype = dtype,
                              .q = unused,
                              .k = unused,
                              .v = unused,
                              .out = unused,
                              .q_stride = 40,
                              .k_stride = 40,
                              .v_stride = 40,
                              .out_stride = 40,
                              .max_tiles = max_tiles};
}

/* bf16 data on fp32 tiles, as on CPUs without bf16 dot products: the fp32
 * brgemm where oneDNN has one, else the portable loops. */
static void test_bf16_on_f32_tiles(void) {
  const FlashAttentionArgs probe = probe_args(dnnl_bf16, FLASH_TILES_F32);
  const FlashTiles tiles = flash_attention_tiles(&probe, NULL);
  g_assert_true(tiles == FLASH_TILES_F32 || tiles == FLASH_TILES_PORTABLE);
  check_bf16_shapes(FLASH_TILES_F32, tiles);
}

/* The tiles picked are the fastest this CPU has, never above the bound. */
static void test_tiles_choice(void) {
  FlashAttentionArgs args = probe_args(dnnl_bf16, FLASH_TILES_AUTO);
  const gboolean bf16_dot =
      isa_has(dnnl_cpu_isa_avx512_core_bf16) || isa_has(dnnl_cpu_isa_avx2_vnni_2);
  if (bf16_dot) g_assert_cmpint(flash_attention_tiles(&args, NULL), ==, FLASH_TILES_BF16);
  args.max_tiles = FLASH_TILES_PORTABLE;
  g_assert_cmpint(flash_attention_tiles(&args, NULL), ==, FLASH_TILES_PORTABLE);
  args.dtype = dnnl_f32;
  args.max_tiles = FLASH_TILES_AUTO;
  g_assert_cmpint(flash_attention_tiles(&args, NULL), !=, FLASH_TILES_BF16);
  if (isa_has(dnnl_cpu_isa_avx512_core))
    g_assert_cmpint(flash_attention_tiles(&args, NULL), ==, FLASH_TILES_F32);
  args.max_tiles = 42;
  GError *error = NULL;
  g_assert_cmpint(flash_attention_tiles(&args, &error), ==, FLASH_TILES_AUTO);
  g_assert_error(error, LCM_ERROR, LCM_ERROR_INVALID);
  g_clear_error(&error);
}

/* The two 4096-token shapes of SD1.5 at 512x512, on sampled query rows. */
static void test_large_shapes(void) {
  check_shape(&(Shape){4096, 4096, 8, 40, FALSE}, dnnl_bf16, FLASH_TILES_AUTO, 61);
  check_shape(&(Shape){4096, 4096, 1, 512, FALSE}, dnnl_bf16, FLASH_TILES_AUTO, 61);
}

/* q, k and v as views of one fused [tokens, 3*width] buffer, the output
 * written into every other column block of a wider buffer. */
static void test_fused_qkv_strides(void) {
  const int tokens = 50, heads = 3, d = 16, width = heads * d, fused = 3 * width;
  GRand *rand = g_rand_new_with_seed(99);
  float *qkv = random_rows(rand, (size_t)tokens * fused, 2.0f, dnnl_f32);
  float *out = g_new0(float, (size_t)tokens * 2 * width);
  FlashAttentionArgs args = {
      .batch = 1,
      .heads = heads,
      .head_dim = d,
      .q_tokens = tokens,
      .kv_tokens = tokens,
      .dtype = dnnl_f32,
      .q = qkv,
      .k = qkv + width,
      .v = qkv + 2 * width,
      .out = out,
      .q_stride = fused,
      .k_stride = fused,
      .v_stride = fused,
      .out_stride = 2 * width,
  };
  g_assert_true(flash_attention(&args, NULL));
  double ref[16];
  for (int i = 0; i < tokens; i++)
    for (int h = 0; h < heads; h++) {
      reference_row(qkv, qkv + width, qkv + 2 * width, fused, fused, fused, tokens, d, FALSE, i, h,
                    ref);
      for (int c = 0; c < d; c++) {
        g_assert_cmpfloat(fabs(out[(size_t)i * 2 * width + h * d + c] - ref[c]), <=, 1e-5);
        g_assert_cmpfloat(out[(size_t)i * 2 * width + width + h * d + c], ==, 0.0f);
      }
    }
  g_free(qkv);
  g_free(out);
  g_rand_free(rand);
}

static void test_bad_arguments(void) {
  float x[16] = {0};
  FlashAttentionArgs args = {.batch = 1,
                             .heads = 2,
                             .head_dim = 2,
                             .q_tokens = 2,
                             .kv_tokens = 2,
                             .dtype = dnnl_f32,
                             .q = x,
                             .k = x,
                             .v = x,
                             .out = x + 8,
                             .q_stride = 4,
                             .k_stride = 4,
                             .v_stride = 4,
                             .out_stride = 4};
  GError *error = NULL;
  FlashAttentionArgs bad = args;
  bad.k_stride = 3;
  g_assert_false(flash_attention(&bad, &error));
  g_assert_error(error, LCM_ERROR, LCM_ERROR_INVALID);
  g_clear_error(&error);
  bad = args;
  bad.kv_tokens = 0;
  g_assert_false(flash_attention(&bad, &error));
  g_assert_error(error, LCM_ERROR, LCM_ERROR_INVALID);
  g_clear_error(&error);
  bad = args;
  bad.dtype = dnnl_s8;
  g_assert_false(flash_attention(&bad, &error));
  g_assert_error(error, LCM_ERROR, LCM_ERROR_INVALID);
  g_clear_error(&error);
  g_assert_false(flash_attention(NULL, &error));
  g_clear_error(&error);
  g_assert_true(flash_attention(&args, &error));
  g_assert_no_error(error);
}

int main(int argc, char **argv) {
  g_test_init(&argc, &argv, NULL);
  g_test_add_func("/flash-attention/shapes/fastest", test_small_shapes);
  g_test_add_func("/flash-attention/shapes/portable", test_portable);
  g_test_add_func("/flash-attention/bf16/avx512-bf16", test_bf16_avx512);
  g_test_add_func("/flash-attention/bf16/amx", test_bf16_amx);
  g_test_add_func("/flash-attention/bf16/f32-tiles", test_bf16_on_f32_tiles);
  g_test_add_func("/flash-attention/tiles-choice", test_tiles_choice);
  g_test_add_func("/flash-attention/shapes/4096-tokens", test_large_shapes);
  g_test_add_func("/flash-attention/fused-qkv-strides", test_fused_qkv_strides);
  g_test_add_func("/flash-attention/bad-arguments", test_bad_arguments);
  return g_test_run();
}
