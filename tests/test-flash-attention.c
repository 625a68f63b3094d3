/* flash_attention against a double-precision reference, over the shapes of
 * SD1.5 (head dims 40/80/160/512, 77 text keys), CLIP's causal attention and
 * odd tails, in fp32 and bf16, on the ukernel and the portable path. */
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

/* Runs one shape with batch 2 on separate q/k/v buffers, checks every
 * `row_step`-th query row of every head against the reference. */
static void check_shape(const Shape *s, dnnl_data_type_t dtype, gboolean portable_only,
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
      .max_tiles = portable_only ? FLASH_TILES_PORTABLE : FLASH_TILES_AUTO,
  };
  GError *error = NULL;
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
  g_test_message("tq=%d tk=%d heads=%d d=%d%s %s%s: max err %.3g (rel %.3g), cosine %.7f",
                 s->q_tokens, s->kv_tokens, s->heads, s->head_dim, s->causal ? " causal" : "",
                 dtype == dnnl_f32 ? "f32" : "bf16", portable_only ? " portable" : "", max_err,
                 max_err / max_ref, cosine);
  if (dtype == dnnl_f32)
    g_assert_cmpfloat(max_err / max_ref, <=, 1e-5);
  else
    g_assert_cmpfloat(cosine, >=, 0.999);

  g_free(ref);
  g_free(out);
  g_free(qd);
  g_free(kd);
  g_free(vd);
  g_free(q);
  g_free(k);
  g_free(v);
  g_rand_free(rand);
}

static const Shape small_shapes[] = {
    {1024, 1024, 8, 80, FALSE},                         /* UNet 32x32 self-attention */
    {256, 77, 8, 160, FALSE},                           /* UNet 16x16 cross-attention */
    {64, 64, 8, 40, FALSE},     {77, 77, 12, 64, TRUE}, /* CLIP */
    {13, 7, 2, 5, FALSE},       {13, 7, 2, 5, TRUE},    {7, 13, 3, 5, TRUE},
    {200, 300, 2, 24, TRUE}, /* several query and key blocks with tails */
};

static void test_small_shapes(gconstpointer data) {
  const gboolean portable_only = GPOINTER_TO_INT(data);
  for (size_t i = 0; i < G_N_ELEMENTS(small_shapes); i++) {
    const int row_step = small_shapes[i].q_tokens >= 512 ? 7 : 1; /* keeps the reference cheap */
    check_shape(&small_shapes[i], dnnl_f32, portable_only, row_step);
    check_shape(&small_shapes[i], dnnl_bf16, portable_only, row_step);
  }
}

/* The two 4096-token shapes of SD1.5 at 512x512, on sampled query rows. */
static void test_large_shapes(void) {
  check_shape(&(Shape){4096, 4096, 8, 40, FALSE}, dnnl_bf16, FALSE, 61);
  check_shape(&(Shape){4096, 4096, 1, 512, FALSE}, dnnl_bf16, FALSE, 61);
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
  g_test_add_data_func("/flash-attention/shapes/ukernel", GINT_TO_POINTER(FALSE),
                       test_small_shapes);
  g_test_add_data_func("/flash-attention/shapes/portable", GINT_TO_POINTER(TRUE),
                       test_small_shapes);
  g_test_add_func("/flash-attention/shapes/4096-tokens", test_large_shapes);
  g_test_add_func("/flash-attention/fused-qkv-strides", test_fused_qkv_strides);
  g_test_add_func("/flash-attention/bad-arguments", test_bad_arguments);
  return g_test_run();
}
