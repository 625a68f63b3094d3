/* Every op of core/ops.h against a naive fp32 reference, in fp32 (tight)
 * and bf16 (loose; skipped on CPUs without bf16 support). */
#include "ops-internal.h"
#include "testutil.h"

#include <math.h>
#include <string.h>

/* ---- Helpers ------------------------------------------------------------------ */

typedef struct {
  Ops *ops;
  gboolean bf16;
} Ctx;

static guint32 rng_state = 12345;

static float rand_uniform(void) {
  rng_state = rng_state * 1664525u + 1013904223u;
  return (float)((rng_state >> 8) * (2.0 / 16777216.0) - 1.0);
}

/* Random values in [-scale, scale], rounded to bf16 when the ops compute
 * in bf16 so that the reference sees what the op sees. */
static float *random_values(const Ctx *ctx, size_t count, float scale) {
  float *v = g_new(float, count);
  for (size_t i = 0; i < count; i++) {
    v[i] = rand_uniform() * scale;
    if (ctx->bf16) {
      guint32 bits;
      memcpy(&bits, &v[i], 4);
      bits = (bits + 0x7fffu + ((bits >> 16) & 1u)) & 0xffff0000u;
      memcpy(&v[i], &bits, 4);
    }
  }
  return v;
}

static Tensor *make_tensor(const Ctx *ctx, const float *nhwc, int n, int h, int w, int c) {
  Tensor *t = tensor_from_rows(ctx->ops, nhwc, n, h * w, c);
  g_assert_nonnull(t);
  tensor_reshape(t, n, h, w, c);
  return t;
}

/* Asserts |got - want| <= atol + rtol*|want| everywhere (bf16: looser). */
static void assert_close(const Ctx *ctx, const Tensor *t, const float *want, size_t count,
                         const char *what) {
  g_assert_cmpuint(tensor_numel(t), ==, count);
  float *got = g_new(float, count);
  tensor_to_rows(t, got);
  const double atol = ctx->bf16 ? 3e-2 : 2e-5, rtol = ctx->bf16 ? 2e-2 : 1e-5;
  double worst = 0;
  size_t worst_at = 0;
  for (size_t i = 0; i < count; i++) {
    double excess = fabs((double)got[i] - want[i]) - (atol + rtol * fabs(want[i]));
    if (isnan(got[i]) || excess > worst) {
      worst = isnan(got[i]) ? INFINITY : excess;
      worst_at = i;
    }
  }
  if (worst > 0)
    g_error("%s: element %zu is %g, expected %g", what, worst_at, got[worst_at], want[worst_at]);
  g_free(got);
}

static float act_ref(Activation act, float x) {
  switch (act) {
  case ACT_SILU:
    return x / (1.0f + expf(-x));
  case ACT_RELU:
    return x > 0 ? x : 0;
  case ACT_GELU_ERF:
    return 0.5f * x * (1.0f + erff(x / sqrtf(2.0f)));
  case ACT_QUICK_GELU:
    return x / (1.0f + expf(-1.702f * x));
  default:
    return x;
  }
}

/* residual [n,oh,ow,c] or [n,1,1,c] (broadcast) added before the activation. */
static void epilogue_ref(float *out, const float *residual, gboolean broadcast, Activation act,
                         int n, int hw, int c) {
  for (int b = 0; b < n; b++)
    for (int p = 0; p < hw; p++)
      for (int o = 0; o < c; o++) {
        size_t i = ((size_t)b * hw + p) * c + o;
        float r = !residual ? 0 : broadcast ? residual[(size_t)b * c + o] : residual[i];
        out[i] = act_ref(act, out[i] + r);
      }
}

typedef void (*OpsTest)(const Ctx *ctx);

static void run_with_precision(gconstpointer data) {
  const LcmPrecision precision = GPOINTER_TO_INT(((const gpointer *)data)[0]);
  OpsTest test = (OpsTest)((const gpointer *)data)[1];
  GError *error = NULL;
  Ops *ops = ops_new(precision, &error);
  if (!ops && g_error_matches(error, LCM_ERROR, LCM_ERROR_UNSUPPORTED)) {
    g_test_skip(error->message);
    g_error_free(error);
    return;
  }
  g_assert_no_error(error);
  g_assert_cmpint(ops_precision(ops), ==, precision);
  const Ctx ctx = {ops, precision == LCM_PRECISION_BF16};
  test(&ctx);
  ops_free(ops);
}

/* ---- Convolution --------------------------------------------------------------- */

typedef struct {
  int n, in_ch, out_ch, kernel, stride, h, w;
  int top, left, bottom, right;
  gboolean bias;
  int residual; /* 0 none, 1 full, 2 per-channel */
  Activation act;
} ConvCase;

static void conv_ref(const ConvCase *cc, const float *x, const float *wt, const float *bias,
                     float *out, int oh, int ow) {
  for (int b = 0; b < cc->n; b++)
    for (int oy = 0; oy < oh; oy++)
      for (int ox = 0; ox < ow; ox++)
        for (int o = 0; o < cc->out_ch; o++) {
          double sum = bias ? bias[o] : 0;
          for (int ky = 0; ky < cc->kernel; ky++)
            for (int kx = 0; kx < cc->kernel; kx++) {
              int iy = oy * cc->stride - cc->top + ky, ix = ox * cc->stride - cc->left + kx;
              if (iy < 0 || iy >= cc->h || ix < 0 || ix >= cc->w) continue;
              for (int i = 0; i < cc->in_ch; i++)
                sum += (double)x[(((size_t)b * cc->h + iy) * cc->w + ix) * cc->in_ch + i] *
                       wt[(((size_t)o * cc->in_ch + i) * cc->kernel + ky) * cc->kernel + kx];
            }
          out[(((size_t)b * oh + oy) * ow + ox) * cc->out_ch + o] = (float)sum;
        }
}

static void check_conv(const Ctx *ctx, Conv2d *conv, const ConvCase *cc, const float *wt,
                       const float *bias) {
  const int oh = (cc->h + cc->top + cc->bottom - cc->kernel) / cc->stride + 1;
  const int ow = (cc->w + cc->left + cc->right - cc->kernel) / cc->stride + 1;
  const size_t in_count = (size_t)cc->n * cc->h * cc->w * cc->in_ch;
  const size_t out_count = (size_t)cc->n * oh * ow * cc->out_ch;
  float *x = random_values(ctx, in_count, 1.0f);
  float *residual = NULL;
  Tensor *res = NULL;
  if (cc->residual) {
    int rh = cc->residual == 1 ? oh : 1, rw = cc->residual == 1 ? ow : 1;
    residual = random_values(ctx, (size_t)cc->n * rh * rw * cc->out_ch, 1.0f);
    res = make_tensor(ctx, residual, cc->n, rh, rw, cc->out_ch);
  }
  float *want = g_new(float, out_count);
  conv_ref(cc, x, wt, bias, want, oh, ow);
  epilogue_ref(want, residual, cc->residual == 2, cc->act, cc->n, oh * ow, cc->out_ch);

  conv2d_set_padding(conv, cc->top, cc->left, cc->bottom, cc->right);
  Tensor *tx = make_tensor(ctx, x, cc->n, cc->h, cc->w, cc->in_ch);
  GError *error = NULL;
  Tensor *out = conv2d(ctx->ops, conv, tx, res, cc->act, &error);
  g_assert_no_error(error);
  g_assert_cmpint(out->n, ==, cc->n);
  g_assert_cmpint(out->h, ==, oh);
  g_assert_cmpint(out->w, ==, ow);
  g_assert_cmpint(out->c, ==, cc->out_ch);
  assert_close(ctx, out, want, out_count, "conv2d");
  tensor_free(out);
  tensor_free(tx);
  tensor_free(res);
  g_free(x);
  g_free(residual);
  g_free(want);
}

static void test_conv2d(const Ctx *ctx) {
  const ConvCase cases[] = {
      {1, 3, 5, 3, 1, 7, 9, 1, 1, 1, 1, TRUE, 0, ACT_NONE},
      {2, 8, 16, 3, 2, 9, 6, 0, 0, 1, 1, TRUE, 1, ACT_SILU}, /* VAE-style downsampling */
      {2, 4, 6, 1, 1, 5, 4, 0, 0, 0, 0, TRUE, 2, ACT_RELU},  /* broadcast residual */
      {1, 6, 4, 3, 1, 4, 11, 1, 1, 1, 1, FALSE, 1, ACT_GELU_ERF},
      {3, 5, 7, 3, 2, 8, 8, 1, 1, 1, 1, TRUE, 2, ACT_QUICK_GELU},
      {1, 16, 32, 3, 1, 13, 5, 1, 1, 1, 1, TRUE, 0, ACT_NONE},
      /* Wide enough that oneDNN's weights layout depends on the size. */
      {1, 64, 64, 3, 2, 9, 9, 1, 1, 1, 1, TRUE, 1, ACT_SILU},
  };
  for (size_t i = 0; i < G_N_ELEMENTS(cases); i++) {
    const ConvCase *cc = &cases[i];
    const size_t wcount = (size_t)cc->out_ch * cc->in_ch * cc->kernel * cc->kernel;
    float *wt = random_values(ctx, wcount, 0.5f);
    float *bias = cc->bias ? random_values(ctx, cc->out_ch, 0.5f) : NULL;
    GError *error = NULL;
    Conv2d *conv =
        conv2d_new(ctx->ops, wt, bias, cc->in_ch, cc->out_ch, cc->kernel, cc->stride, &error);
    g_assert_no_error(error);
    check_conv(ctx, conv, cc, wt, bias);
    /* The same layer at other sizes (weights may need another layout). */
    ConvCase resized = *cc;
    resized.h = cc->h + 3;
    resized.w = 2;
    check_conv(ctx, conv, &resized, wt, bias);
    check_conv(ctx, conv, cc, wt, bias);
    conv2d_free(conv);
    g_free(wt);
    g_free(bias);
  }
}

static void test_conv2d_errors(const Ctx *ctx) {
  float *wt = random_values(ctx, 4 * 3 * 3 * 3, 1.0f);
  GError *error = NULL;
  Conv2d *conv = conv2d_new(ctx->ops, wt, NULL, 3, 4, 3, 1, &error);
  g_assert_no_error(error);
  float *x = random_values(ctx, 2 * 5 * 5 * 3, 1.0f);
  /* Wrong input channel count. */
  Tensor *tx = make_tensor(ctx, x, 2, 5, 5, 3);
  tensor_reshape(tx, 2, 5, 3, 5);
  g_assert_null(conv2d(ctx->ops, conv, tx, NULL, ACT_NONE, &error));
  g_assert_error(error, LCM_ERROR, LCM_ERROR_SHAPE);
  g_clear_error(&error);
  /* A residual of the wrong size. */
  tensor_reshape(tx, 2, 5, 5, 3);
  Tensor *res = make_tensor(ctx, x, 1, 5, 5, 4);
  g_assert_null(conv2d(ctx->ops, conv, tx, res, ACT_NONE, &error));
  g_assert_error(error, LCM_ERROR, LCM_ERROR_SHAPE);
  g_clear_error(&error);
  tensor_free(res);
  tensor_free(tx);
  g_assert_null(conv2d_new(ctx->ops, wt, NULL, 3, 4, 0, 1, &error));
  g_assert_error(error, LCM_ERROR, LCM_ERROR_INVALID);
  g_clear_error(&error);
  conv2d_free(conv);
  g_free(wt);
  g_free(x);
}

/* ---- Linear -------------------------------------------------------------------- */

static void linear_ref(const float *x, const float *wt, const float *bias, float *out, int rows,
                       int in, int out_features) {
  for (int r = 0; r < rows; r++)
    for (int o = 0; o < out_features; o++) {
      double sum = bias ? bias[o] : 0;
      for (int i = 0; i < in; i++) sum += (double)x[(size_t)r * in + i] * wt[(size_t)o * in + i];
      out[(size_t)r * out_features + o] = (float)sum;
    }
}

static void test_linear(const Ctx *ctx) {
  const int n = 2, h = 3, w = 5, in = 12, out_f = 7;
  const int rows = n * h * w;
  const Activation acts[] = {ACT_NONE, ACT_SILU, ACT_RELU, ACT_GELU_ERF, ACT_QUICK_GELU};
  for (int variant = 0; variant < 3 * (int)G_N_ELEMENTS(acts); variant++) {
    const int residual_kind = variant % 3; /* none, full, per-channel */
    const Activation act = acts[variant / 3];
    const gboolean has_bias = variant % 2 == 0;
    float *x = random_values(ctx, (size_t)rows * in, 1.0f);
    float *wt = random_values(ctx, (size_t)out_f * in, 0.5f);
    float *bias = has_bias ? random_values(ctx, out_f, 0.5f) : NULL;
    float *residual = NULL;
    Tensor *res = NULL;
    if (residual_kind == 1) {
      residual = random_values(ctx, (size_t)rows * out_f, 1.0f);
      res = make_tensor(ctx, residual, n, h, w, out_f);
    } else if (residual_kind == 2) {
      residual = random_values(ctx, (size_t)n * out_f, 1.0f);
      res = make_tensor(ctx, residual, n, 1, 1, out_f);
    }
    float *want = g_new(float, (size_t)rows *out_f);
    linear_ref(x, wt, bias, want, rows, in, out_f);
    epilogue_ref(want, residual, residual_kind == 2, act, n, h * w, out_f);

    GError *error = NULL;
    Linear *lin = linear_new(ctx->ops, wt, bias, in, out_f, &error);
    g_assert_no_error(error);
    Tensor *tx = make_tensor(ctx, x, n, h, w, in);
    Tensor *out = linear(ctx->ops, lin, tx, res, act, &error);
    g_assert_no_error(error);
    g_assert_cmpint(out->h, ==, h);
    g_assert_cmpint(out->c, ==, out_f);
    assert_close(ctx, out, want, (size_t)rows * out_f, "linear");
    tensor_free(out);
    tensor_free(tx);
    tensor_free(res);
    linear_free(lin);
    g_free(x);
    g_free(wt);
    g_free(bias);
    g_free(residual);
    g_free(want);
  }
}

static void test_linear_geglu(const Ctx *ctx) {
  const int n = 1, tokens = 9, in = 10, half = 6;
  const int rows = n * tokens;
  float *x = random_values(ctx, (size_t)rows * in, 1.0f);
  float *wt = random_values(ctx, (size_t)2 * half * in, 0.5f);
  float *bias = random_values(ctx, 2 * half, 0.5f);
  float *proj = g_new(float, (size_t)rows * 2 * half);
  linear_ref(x, wt, bias, proj, rows, in, 2 * half);
  float *want = g_new(float, (size_t)rows *half);
  for (int r = 0; r < rows; r++)
    for (int o = 0; o < half; o++)
      want[r * half + o] =
          proj[r * 2 * half + o] * act_ref(ACT_GELU_ERF, proj[r * 2 * half + half + o]);
  GError *error = NULL;
  Linear *a = linear_new(ctx->ops, wt, bias, in, half, &error);
  g_assert_no_error(error);
  Linear *b = linear_new(ctx->ops, wt + half * in, bias + half, in, half, &error);
  g_assert_no_error(error);
  Tensor *tx = make_tensor(ctx, x, n, 1, tokens, in);
  Tensor *out = linear_geglu(ctx->ops, a, b, tx, &error);
  g_assert_no_error(error);
  assert_close(ctx, out, want, (size_t)rows * half, "linear_geglu");
  tensor_free(out);
  tensor_free(tx);
  linear_free(a);
  linear_free(b);
  g_free(x);
  g_free(wt);
  g_free(bias);
  g_free(proj);
  g_free(want);
}

/* ---- Normalization --------------------------------------------------------------- */

static void test_group_norm(const Ctx *ctx) {
  const int n = 2, h = 3, w = 5, c = 16, groups = 4, cg = c / groups;
  const float eps = 1e-5f;
  const size_t count = (size_t)n * h * w * c;
  float *x = random_values(ctx, count, 2.0f);
  for (size_t i = 0; i < count; i++) x[i] += 0.5f; /* a non-zero mean */
  float *scale = random_values(ctx, c, 1.0f), *shift = random_values(ctx, c, 1.0f);
  /* Then SiLU far into both tails (shifts of about ±50..150): exp's range. */
  for (int act_i = 0; act_i < 3; act_i++) {
    const Activation act = act_i ? ACT_SILU : ACT_NONE;
    if (act_i == 2)
      for (int k = 0; k < c; k++) shift[k] = (k % 2 ? 1.0f : -1.0f) * (50.0f + 6.0f * k);
    float *want = g_new(float, count);
    for (int b = 0; b < n; b++)
      for (int g = 0; g < groups; g++) {
        double sum = 0, sq = 0;
        for (int p = 0; p < h * w; p++)
          for (int k = 0; k < cg; k++) sum += x[((size_t)b * h * w + p) * c + g * cg + k];
        const double mean = sum / (h * w * cg);
        for (int p = 0; p < h * w; p++)
          for (int k = 0; k < cg; k++) {
            double d = x[((size_t)b * h * w + p) * c + g * cg + k] - mean;
            sq += d * d;
          }
        const double inv = 1.0 / sqrt(sq / (h * w * cg) + eps);
        for (int p = 0; p < h * w; p++)
          for (int k = 0; k < cg; k++) {
            size_t i = ((size_t)b * h * w + p) * c + g * cg + k;
            int ch = g * cg + k;
            want[i] = act_ref(act, (float)((x[i] - mean) * inv * scale[ch] + shift[ch]));
          }
      }
    GError *error = NULL;
    Norm *norm = norm_new(ctx->ops, scale, shift, c, &error);
    g_assert_no_error(error);
    Tensor *tx = make_tensor(ctx, x, n, h, w, c);
    Tensor *out = group_norm(ctx->ops, norm, tx, groups, eps, act, &error);
    g_assert_no_error(error);
    assert_close(ctx, out, want, count, "group_norm");
    g_assert_null(group_norm(ctx->ops, norm, tx, 5, eps, act, &error));
    g_assert_error(error, LCM_ERROR, LCM_ERROR_INVALID);
    g_clear_error(&error);
    tensor_free(out);
    tensor_free(tx);
    norm_free(norm);
    g_free(want);
  }
  g_free(x);
  g_free(scale);
  g_free(shift);
}

/* group_norm_nhwc in both dtypes whatever the CPU computes in: odd channel
 * counts, groups of 1..32 channels, images larger than one work block, SiLU
 * on and off, against a two-pass double reference on the values the kernel
 * sees (bf16-rounded inputs in bf16). */
static void test_group_norm_kernel(void) {
  const struct {
    int n, h, w, c, groups;
  } cases[] = {{1, 1, 1, 3, 3},    {2, 17, 23, 35, 5},   {1, 9, 31, 96, 3},
               {1, 4, 5, 130, 65}, {2, 19, 21, 512, 32}, {1, 33, 8, 64, 2}};
  GError *error = NULL;
  Ops *ops = ops_new(LCM_PRECISION_FP32, &error);
  g_assert_no_error(error);
  for (int bf16 = 0; bf16 < 2; bf16++)
    for (size_t ci = 0; ci < G_N_ELEMENTS(cases); ci++)
      for (int silu = 0; silu < 2; silu++) {
        const int n = cases[ci].n, hw = cases[ci].h * cases[ci].w, c = cases[ci].c;
        const int groups = cases[ci].groups, cg = c / groups;
        const float eps = 1e-6f;
        const dnnl_data_type_t dtype = bf16 ? dnnl_bf16 : dnnl_f32;
        const Ctx ctx = {ops, bf16};
        const size_t count = (size_t)n * hw * c;
        float *x = random_values(&ctx, count, 2.0f);
        for (size_t i = 0; i < count; i++) x[i] += 3.0f; /* a mean far from 0 */
        Tensor *tx = tensor_new(n, cases[ci].h, cases[ci].w, c, dtype);
        for (size_t i = 0; i < count; i++) element_set(tx->data, dtype, i, x[i]);
        for (size_t i = 0; i < count; i++) x[i] = element_get(tx->data, dtype, i);
        float *scale = random_values(&ctx, c, 1.5f), *shift = random_values(&ctx, c, 1.0f);
        float *want = g_new(float, count);
        for (int b = 0; b < n; b++)
          for (int g = 0; g < groups; g++) {
            const float *xb = x + (size_t)b * hw * c;
            double sum = 0, sq = 0;
            for (int p = 0; p < hw; p++)
              for (int k = g * cg; k < (g + 1) * cg; k++) sum += xb[(size_t)p * c + k];
            const double mean = sum / ((double)hw * cg);
            for (int p = 0; p < hw; p++)
              for (int k = g * cg; k < (g + 1) * cg; k++)
                sq += (xb[(size_t)p * c + k] - mean) * (xb[(size_t)p * c + k] - mean);
            const double inv = 1.0 / sqrt(sq / ((double)hw * cg) + eps);
            for (int p = 0; p < hw; p++)
              for (int k = g * cg; k < (g + 1) * cg; k++) {
                const size_t i = ((size_t)b * hw + p) * c + k;
                want[i] = act_ref(silu ? ACT_SILU : ACT_NONE,
                                  (float)((x[i] - mean) * inv * scale[k] + shift[k]));
              }
          }
        Norm *norm = norm_new(ops, scale, shift, c, &error);
        g_assert_no_error(error);
        Tensor *out = group_norm_nhwc(norm, tx, groups, eps, silu ? ACT_SILU : ACT_NONE, &error);
        g_assert_no_error(error);
        g_assert_cmpint(out->dtype, ==, dtype);
        g_assert_true(out->n == n && out->h == cases[ci].h && out->w == cases[ci].w && out->c == c);
        assert_close(&ctx, out, want, count, bf16 ? "group_norm bf16" : "group_norm fp32");
        tensor_free(out);
        tensor_free(tx);
        norm_free(norm);
        g_free(x);
        g_free(scale);
        g_free(shift);
        g_free(want);
      }
  ops_free(ops);
}

static void test_layer_norm(const Ctx *ctx) {
  const int n = 2, tokens = 7, c = 24;
  const float eps = 1e-5f;
  const int rows = n * tokens;
  float *x = random_values(ctx, (size_t)rows * c, 3.0f);
  float *scale = random_values(ctx, c, 1.0f), *shift = random_values(ctx, c, 1.0f);
  float *want = g_new(float, (size_t)rows *c);
  for (int r = 0; r < rows; r++) {
    double sum = 0, sq = 0;
    for (int k = 0; k < c; k++) sum += x[r * c + k];
    const double mean = sum / c;
    for (int k = 0; k < c; k++) sq += (x[r * c + k] - mean) * (x[r * c + k] - mean);
    const double inv = 1.0 / sqrt(sq / c + eps);
    for (int k = 0; k < c; k++)
      want[r * c + k] = (float)((x[r * c + k] - mean) * inv * scale[k] + shift[k]);
  }
  GError *error = NULL;
  Norm *norm = norm_new(ctx->ops, scale, shift, c, &error);
  g_assert_no_error(error);
  Tensor *tx = make_tensor(ctx, x, n, 1, tokens, c);
  Tensor *out = layer_norm(ctx->ops, norm, tx, eps, &error);
  g_assert_no_error(error);
  assert_close(ctx, out, want, (size_t)rows * c, "layer_norm");
  tensor_free(out);
  tensor_free(tx);
  norm_free(norm);
  g_free(x);
  g_free(scale);
  g_free(shift);
  g_free(want);
}

/* ---- Attention ------------------------------------------------------------------- */

/* q [n,tq,ldq] k,v [n,tk,ldkv] (first heads*d columns used) -> out [n,tq,heads*d]. */
static void attention_ref(const float *q, const float *k, const float *v, int ld_q, int ld_kv,
                          float *out, int n, int tq, int tk, int heads, int d, gboolean causal) {
  const int c = heads * d;
  double *p = g_new(double, tk);
  for (int b = 0; b < n; b++)
    for (int h = 0; h < heads; h++)
      for (int i = 0; i < tq; i++) {
        double max = -INFINITY, sum = 0;
        const int keys = causal ? MIN(i + 1, tk) : tk;
        for (int j = 0; j < keys; j++) {
          double s = 0;
          for (int e = 0; e < d; e++)
            s += (double)q[((size_t)b * tq + i) * ld_q + h * d + e] *
                 k[((size_t)b * tk + j) * ld_kv + h * d + e];
          p[j] = s / sqrt(d);
          max = fmax(max, p[j]);
        }
        for (int j = 0; j < keys; j++) sum += p[j] = exp(p[j] - max);
        for (int e = 0; e < d; e++) {
          double o = 0;
          for (int j = 0; j < keys; j++)
            o += p[j] / sum * v[((size_t)b * tk + j) * ld_kv + h * d + e];
          out[((size_t)b * tq + i) * c + h * d + e] = (float)o;
        }
      }
  g_free(p);
}

static void test_attention(const Ctx *ctx) {
  const struct {
    int n, tq, tk, heads, d;
    gboolean causal;
  } cases[] = {
      {2, 13, 13, 3, 4, TRUE},
      {2, 13, 13, 3, 4, FALSE},
      {1, 9, 7, 2, 8, FALSE},
      {3, 5, 11, 1, 6, FALSE},
      {1, 77, 77, 4, 8, TRUE},
      /* >= 1024 queries take the flash kernel by default (chunk 0) */
      {1, 1030, 40, 2, 8, TRUE},
      {2, 1024, 96, 2, 4, FALSE},
  };
  const int chunks[] = {0, 1, 4, 5, 13};
  for (size_t ci = 0; ci < G_N_ELEMENTS(cases); ci++) {
    const int n = cases[ci].n, tq = cases[ci].tq, tk = cases[ci].tk;
    const int heads = cases[ci].heads, d = cases[ci].d, c = heads * d;
    float *q = random_values(ctx, (size_t)n * tq * c, 2.0f);
    float *k = random_values(ctx, (size_t)n * tk * c, 2.0f);
    float *v = random_values(ctx, (size_t)n * tk * c, 1.0f);
    float *want = g_new(float, (size_t)n *tq *c);
    attention_ref(q, k, v, c, c, want, n, tq, tk, heads, d, cases[ci].causal);
    Tensor *tq_t = make_tensor(ctx, q, n, 1, tq, c);
    Tensor *tk_t = make_tensor(ctx, k, n, 1, tk, c);
    Tensor *tv_t = make_tensor(ctx, v, n, 1, tk, c);
    for (size_t chunk = 0; chunk < G_N_ELEMENTS(chunks); chunk++) {
      ops_set_attention_chunk(ctx->ops, chunks[chunk]);
      GError *error = NULL;
      Tensor *out = attention(ctx->ops, tq_t, tk_t, tv_t, heads, cases[ci].causal, &error);
      g_assert_no_error(error);
      g_assert_cmpint(out->n, ==, n);
      g_assert_cmpint(out->h * out->w, ==, tq);
      assert_close(ctx, out, want, (size_t)n * tq * c, "attention");
      tensor_free(out);
    }
    ops_set_attention_chunk(ctx->ops, 0);
    tensor_free(tq_t);
    tensor_free(tk_t);
    tensor_free(tv_t);
    g_free(q);
    g_free(k);
    g_free(v);
    g_free(want);
  }
}

static void test_attention_fused_qkv(const Ctx *ctx) {
  const int n = 2, t = 11, heads = 2, d = 5, c = heads * d;
  float *qkv = random_values(ctx, (size_t)n * t * 3 * c, 2.0f);
  float *want = g_new(float, (size_t)n *t *c);
  for (int causal = 0; causal < 2; causal++) {
    attention_ref(qkv, qkv + c, qkv + 2 * c, 3 * c, 3 * c, want, n, t, t, heads, d, causal);
    Tensor *tqkv = make_tensor(ctx, qkv, n, 1, t, 3 * c);
    ops_set_attention_chunk(ctx->ops, 4);
    GError *error = NULL;
    Tensor *out = attention_fused_qkv(ctx->ops, tqkv, heads, causal, &error);
    g_assert_no_error(error);
    assert_close(ctx, out, want, (size_t)n * t * c, "attention_fused_qkv");
    tensor_free(out);
    g_assert_null(attention_fused_qkv(ctx->ops, tqkv, 3, causal, &error));
    g_assert_error(error, LCM_ERROR, LCM_ERROR_INVALID);
    g_clear_error(&error);
    tensor_free(tqkv);
  }
  ops_set_attention_chunk(ctx->ops, 0);
  g_free(qkv);
  g_free(want);
}

/* ---- Data movement ---------------------------------------------------------------- */

static void test_concat(const Ctx *ctx) {
  const int n = 2, h = 3, w = 4, ca = 5, cb = 3;
  float *a = random_values(ctx, (size_t)n * h * w * ca, 1.0f);
  float *b = random_values(ctx, (size_t)n * h * w * cb, 1.0f);
  float *want = g_new(float, (size_t)n *h *w *(ca + cb));
  for (int p = 0; p < n * h * w; p++) {
    memcpy(want + p * (ca + cb), a + p * ca, ca * sizeof(float));
    memcpy(want + p * (ca + cb) + ca, b + p * cb, cb * sizeof(float));
  }
  Tensor *ta = make_tensor(ctx, a, n, h, w, ca), *tb = make_tensor(ctx, b, n, h, w, cb);
  GError *error = NULL;
  Tensor *out = concat_channels(ctx->ops, ta, tb, &error);
  g_assert_no_error(error);
  assert_close(ctx, out, want, (size_t)n * h * w * (ca + cb), "concat_channels");
  tensor_free(out);
  tensor_reshape(tb, n, w, h, cb);
  g_assert_null(concat_channels(ctx->ops, ta, tb, &error));
  g_assert_error(error, LCM_ERROR, LCM_ERROR_SHAPE);
  g_clear_error(&error);
  tensor_free(ta);
  tensor_free(tb);
  g_free(a);
  g_free(b);
  g_free(want);
}

static void test_upsample(const Ctx *ctx) {
  const int n = 2, h = 3, w = 5, c = 4;
  /* x2, to odd skip sizes, and shrinking: torch's floor(dst * in/out). */
  const int sizes[][2] = {{6, 10}, {7, 11}, {4, 9}, {2, 3}};
  /* Source rows for the 3 -> 7 case, worked out by hand from torch. */
  const int rows_3_to_7[7] = {0, 0, 0, 1, 1, 2, 2};
  float *x = random_values(ctx, (size_t)n * h * w * c, 1.0f);
  Tensor *tx = make_tensor(ctx, x, n, h, w, c);
  for (size_t s = 0; s < G_N_ELEMENTS(sizes); s++) {
    const int oh = sizes[s][0], ow = sizes[s][1];
    float *want = g_new(float, (size_t)n *oh *ow *c);
    for (int b = 0; b < n; b++)
      for (int y = 0; y < oh; y++)
        for (int xx = 0; xx < ow; xx++) {
          int sy = (int)floor(y * ((double)h / oh)), sx = (int)floor(xx * ((double)w / ow));
          if (oh == 7) g_assert_cmpint(sy, ==, rows_3_to_7[y]);
          memcpy(want + (((size_t)b * oh + y) * ow + xx) * c,
                 x + (((size_t)b * h + sy) * w + sx) * c, c * sizeof(float));
        }
    GError *error = NULL;
    Tensor *out = upsample_nearest(ctx->ops, tx, oh, ow, &error);
    g_assert_no_error(error);
    g_assert_cmpint(out->h, ==, oh);
    g_assert_cmpint(out->w, ==, ow);
    assert_close(ctx, out, want, (size_t)n * oh * ow * c, "upsample_nearest");
    tensor_free(out);
    g_free(want);
  }
  tensor_free(tx);
  g_free(x);
}

/* upsample_conv against upsample_nearest followed by the 3x3 conv computed
 * directly (conv_ref in double): x2 through the folded phases, a 2n-1
 * target through the kept 3x3, and the error when that was not kept; with
 * a bias (the layer keeping the 3x3) and without (the other). */
static void test_upsample_conv(const Ctx *ctx) {
  const int n = 2, h = 3, w = 5, in_ch = 6, out_ch = 7;
  const int sizes[][2] = {{6, 10}, {5, 9}, {1, 2}};
  float *x = random_values(ctx, (size_t)n * h * w * in_ch, 1.0f);
  float *wt = random_values(ctx, (size_t)out_ch * in_ch * 9, 0.5f);
  float *bias = random_values(ctx, out_ch, 1.0f);
  Tensor *tx = make_tensor(ctx, x, n, h, w, in_ch);
  GError *error = NULL;
  UpsampleConv *any = upsample_conv_new(ctx->ops, wt, bias, in_ch, out_ch, TRUE, &error);
  g_assert_no_error(error);
  UpsampleConv *x2_only = upsample_conv_new(ctx->ops, wt, NULL, in_ch, out_ch, FALSE, &error);
  g_assert_no_error(error);
  for (size_t si = 0; si < G_N_ELEMENTS(sizes); si++) {
    const int oh = sizes[si][0], ow = sizes[si][1];
    const gboolean x2 = oh == 2 * h && ow == 2 * w;
    float *up = g_new(float, (size_t)n *oh *ow *in_ch);
    for (int b = 0; b < n; b++)
      for (int y = 0; y < oh; y++)
        for (int xx = 0; xx < ow; xx++)
          memcpy(up + (((size_t)b * oh + y) * ow + xx) * in_ch,
                 x + (((size_t)b * h + y * h / oh) * w + xx * w / ow) * in_ch,
                 in_ch * sizeof(float));
    const ConvCase cc = {n, in_ch, out_ch, 3, 1, oh, ow, 1, 1, 1, 1, TRUE, 0, ACT_NONE};
    float *want = g_new(float, (size_t)n *oh *ow *out_ch);
    for (int kept = 0; kept < 2; kept++) {
      conv_ref(&cc, up, wt, kept ? bias : NULL, want, oh, ow);
      Tensor *out = upsample_conv(ctx->ops, kept ? any : x2_only, tx, oh, ow, &error);
      if (!kept && !x2) {
        g_assert_error(error, LCM_ERROR, LCM_ERROR_SHAPE);
        g_assert_null(out);
        g_clear_error(&error);
        continue;
      }
      g_assert_no_error(error);
      g_assert_true(out->n == n && out->h == oh && out->w == ow && out->c == out_ch);
      assert_close(ctx, out, want, (size_t)n * oh * ow * out_ch, "upsample_conv");
      tensor_free(out);
    }
    g_free(up);
    g_free(want);
  }
  upsample_conv_free(any);
  upsample_conv_free(x2_only);
  tensor_free(tx);
  g_free(x);
  g_free(wt);
  g_free(bias);
}

static void test_elementwise(const Ctx *ctx) {
  const int n = 1, h = 4, w = 3, c = 7;
  const size_t count = (size_t)n * h * w * c;
  float *x = random_values(ctx, count, 1.0f), *y = random_values(ctx, count, 1.0f);
  float *sum = g_new(float, count), *affine = g_new(float, count);
  for (size_t i = 0; i < count; i++) {
    sum[i] = x[i] + y[i];
    affine[i] = x[i] * 2.5f - 0.75f;
  }
  Tensor *tx = make_tensor(ctx, x, n, h, w, c), *ty = make_tensor(ctx, y, n, h, w, c);
  GError *error = NULL;
  Tensor *out = tensor_add(ctx->ops, tx, ty, &error);
  g_assert_no_error(error);
  assert_close(ctx, out, sum, count, "tensor_add");
  tensor_free(out);
  out = tensor_affine(ctx->ops, tx, 2.5f, -0.75f, &error);
  g_assert_no_error(error);
  assert_close(ctx, out, affine, count, "tensor_affine");
  tensor_free(out);
  tensor_reshape(ty, n, h, c, w);
  g_assert_null(tensor_add(ctx->ops, tx, ty, &error));
  g_assert_error(error, LCM_ERROR, LCM_ERROR_SHAPE);
  g_clear_error(&error);
  tensor_free(tx);
  tensor_free(ty);
  g_free(x);
  g_free(y);
  g_free(sum);
  g_free(affine);
}

static void test_nchw_round_trip(const Ctx *ctx) {
  const int n = 2, c = 3, h = 4, w = 5;
  const size_t count = (size_t)n * c * h * w;
  float *nchw = random_values(ctx, count, 1.0f);
  Tensor *t = tensor_from_nchw(ctx->ops, nchw, n, c, h, w);
  g_assert_cmpint(t->c, ==, c);
  g_assert_cmpint(t->h, ==, h);
  g_assert_cmpint(((uintptr_t)t->data) % 64, ==, 0);
  float *rows = g_new(float, count);
  for (int b = 0; b < n; b++)
    for (int ch = 0; ch < c; ch++)
      for (int p = 0; p < h * w; p++)
        rows[((size_t)b * h * w + p) * c + ch] = nchw[((size_t)b * c + ch) * h * w + p];
  assert_close(ctx, t, rows, count, "tensor_from_nchw");
  float *back = g_new(float, count);
  tensor_to_nchw(t, back);
  g_assert_cmpfloat(test_max_abs_diff(back, nchw, count), ==, 0.0);
  tensor_free(t);
  g_free(nchw);
  g_free(rows);
  g_free(back);
}

static void test_dtype_mismatch(const Ctx *ctx) {
  Tensor *t = tensor_new(1, 2, 2, 3, ctx->bf16 ? dnnl_f32 : dnnl_bf16);
  GError *error = NULL;
  g_assert_null(tensor_affine(ctx->ops, t, 1, 0, &error));
  g_assert_error(error, LCM_ERROR, LCM_ERROR_INVALID);
  g_clear_error(&error);
  tensor_free(t);
}

/* ---- Registration ------------------------------------------------------------------ */

static void add_test(const char *name, OpsTest test) {
  const LcmPrecision precisions[] = {LCM_PRECISION_FP32, LCM_PRECISION_BF16};
  for (size_t i = 0; i < G_N_ELEMENTS(precisions); i++) {
    gpointer *data = g_new(gpointer, 2);
    data[0] = GINT_TO_POINTER(precisions[i]);
    data[1] = (gpointer)test;
    char *path = g_strdup_printf("/ops/%s/%s", lcm_precision_name(precisions[i]), name);
    g_test_add_data_func_full(path, data, run_with_precision, g_free);
    g_free(path);
  }
}

int main(int argc, char **argv) {
  g_test_init(&argc, &argv, NULL);
  add_test("conv2d", test_conv2d);
  add_test("conv2d-errors", test_conv2d_errors);
  add_test("linear", test_linear);
  add_test("linear-geglu", test_linear_geglu);
  add_test("group-norm", test_group_norm);
  g_test_add_func("/ops/group-norm-kernel", test_group_norm_kernel);
  add_test("layer-norm", test_layer_norm);
  add_test("attention", test_attention);
  add_test("attention-fused-qkv", test_attention_fused_qkv);
  add_test("concat", test_concat);
  add_test("upsample", test_upsample);
  add_test("upsample-conv", test_upsample_conv);
  add_test("elementwise", test_elementwise);
  add_test("nchw-round-trip", test_nchw_round_trip);
  add_test("dtype-mismatch", test_dtype_mismatch);
  return g_test_run();
}
