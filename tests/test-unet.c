/* The UNet (diffusers UNet2DConditionModel) against every golden case with
 * component "unet": fp32 within the case's tolerance, also with attention
 * split into 7-row chunks, bf16 by cosine similarity; the same UNet read from
 * the fp16 single-file checkpoint; LCM's guidance embedding; and the errors
 * a caller can provoke. */
#include "lcm.h"
#include "safetensors.h"
#include "testutil.h"

#include <glib/gstdio.h>
#include <math.h>
#include <string.h>

#define SMALL_ATTENTION_CHUNK 7
#define BF16_MIN_COSINE 0.999

/* How one test runs a case. */
typedef enum { RUN_FP32, RUN_FP32_SMALL_CHUNKS, RUN_BF16, RUN_CHECKPOINT } RunKind;

typedef struct {
  const char *case_name;
  RunKind kind;
} UNetRun;

/* A golden tensor as fp32 (g_free it); `shape` receives its dims. */
static float *golden_tensor(const StFile *file, const char *name, int64_t *shape, int max_dims) {
  float *data = test_golden_tensor(file, name, NULL);
  const StTensor *t = st_find(file, name);
  g_assert_cmpint(t->ndims, <=, max_dims);
  for (int d = 0; d < t->ndims && shape; d++) shape[d] = t->shape[d];
  return data;
}

static LcmModel *open_model(const TestGoldenCase *c, gboolean from_checkpoint) {
  g_autofree char *checkpoint = test_golden_path("tiny-lcm.safetensors");
  g_autofree char *unet = test_golden_case_path(c, "unet");
  g_autofree char *unet_weights = test_golden_case_path(c, "unet_weights");
  LcmModelParts parts = {0};
  if (from_checkpoint) {
    parts.checkpoint = checkpoint;
  } else {
    parts.unet = unet;
    parts.unet_weights = unet_weights; /* NULL: the folder's default weights */
  }
  g_autoptr(GError) error = NULL;
  LcmModel *model = lcm_model_open_parts(&parts, &error);
  g_assert_no_error(error);
  return model;
}

/* NULL (and the test skipped) when this CPU cannot compute in bf16. */
static LcmUNet *load_unet(const TestGoldenCase *c, gboolean from_checkpoint,
                          LcmPrecision precision) {
  LcmModel *model = open_model(c, from_checkpoint);
  g_autoptr(GError) error = NULL;
  LcmUNet *unet = lcm_unet_load(model, precision, &error);
  /* The UNet keeps its weights in its own layout; the model may go. */
  lcm_model_free(model);
  if (test_skip_if_unsupported(error, precision)) return NULL;
  g_assert_no_error(error);
  return unet;
}

static void test_golden(gconstpointer data) {
  const UNetRun *run = data;
  g_autoptr(TestGoldenCase) c = test_golden_case_load(run->case_name);
  const StFile *file = c->file;

  int64_t sample_shape[4], context_shape[3];
  g_autofree float *sample = golden_tensor(file, "sample", sample_shape, 4);
  g_autofree float *context = golden_tensor(file, "encoder_hidden_states", context_shape, 3);
  g_autofree float *timestep = golden_tensor(file, "timestep", NULL, 1);
  g_autofree float *timestep_cond =
      st_find(file, "timestep_cond") ? golden_tensor(file, "timestep_cond", NULL, 2) : NULL;
  int64_t out_shape[4];
  g_autofree float *expected = golden_tensor(file, "out", out_shape, 4);
  const int batch = sample_shape[0], h = sample_shape[2], w = sample_shape[3];

  LcmUNet *unet = load_unet(c, run->kind == RUN_CHECKPOINT,
                            run->kind == RUN_BF16 ? LCM_PRECISION_BF16 : LCM_PRECISION_FP32);
  if (!unet) return;
  g_assert_cmpint(lcm_unet_in_channels(unet), ==, sample_shape[1]);
  g_assert_cmpint(lcm_unet_out_channels(unet), ==, out_shape[1]);
  g_assert_cmpint(lcm_unet_cross_attention_dim(unet), ==, context_shape[2]);
  if (run->kind == RUN_FP32_SMALL_CHUNKS) lcm_unet_set_attention_chunk(unet, SMALL_ATTENTION_CHUNK);

  const size_t n = (size_t)batch * out_shape[1] * h * w;
  g_autofree float *out = g_new(float, n);
  g_autoptr(GError) error = NULL;
  g_assert_true(lcm_unet_run(unet, sample, batch, h, w, timestep[0], context, (int)context_shape[1],
                             timestep_cond, out, &error));
  g_assert_no_error(error);

  if (run->kind == RUN_BF16) {
    double cosine = test_cosine(out, expected, n);
    g_test_message("%s bf16: cosine %.6f, max |err| %.3g", run->case_name, cosine,
                   test_max_abs_diff(out, expected, n));
    g_assert_cmpfloat(cosine, >=, BF16_MIN_COSINE);
  } else {
    test_assert_close(run->case_name, out, expected, n, c->atol, c->rtol);
  }
  lcm_unet_free(unet);
}

static void test_guidance_embedding(void) {
  g_autoptr(TestGoldenCase) gc = test_golden_case_load("guidance_embedding");
  const StFile *file = gc->file;
  int64_t w_shape[1], emb_shape[2];
  g_autofree float *w = golden_tensor(file, "w", w_shape, 1);
  g_autofree float *expected = golden_tensor(file, "embedding", emb_shape, 2);
  g_assert_cmpint(emb_shape[0], ==, w_shape[0]);
  const int dim = emb_shape[1];
  g_autofree float *got = g_new(float, w_shape[0] * dim);
  for (int i = 0; i < w_shape[0]; i++) lcm_guidance_embedding(w[i], dim, got + (size_t)i * dim);
  test_assert_close("guidance embedding", got, expected, w_shape[0] * dim, 2e-3, 0);
}

/* The accessors report the configuration of each kind of UNet. */
static void test_accessors(void) {
  g_autoptr(TestGoldenCase) lcm_case = test_golden_case_load("unet_lcm_a");
  g_autoptr(TestGoldenCase) inpaint_case = test_golden_case_load("unet_inpaint_a");
  LcmUNet *lcm = load_unet(lcm_case, FALSE, LCM_PRECISION_FP32);
  g_assert_cmpint(lcm_unet_in_channels(lcm), ==, 4);
  g_assert_cmpint(lcm_unet_out_channels(lcm), ==, 4);
  g_assert_cmpint(lcm_unet_time_cond_proj_dim(lcm), ==, 256);
  g_assert_cmpint(lcm_unet_cross_attention_dim(lcm), ==, 32);
  lcm_unet_free(lcm);

  LcmUNet *inpaint = load_unet(inpaint_case, FALSE, LCM_PRECISION_FP32);
  g_assert_cmpint(lcm_unet_in_channels(inpaint), ==, 9);
  g_assert_cmpint(lcm_unet_time_cond_proj_dim(inpaint), ==, 0);
  lcm_unet_free(inpaint);

  LcmUNet *single = load_unet(lcm_case, TRUE, LCM_PRECISION_FP32);
  g_assert_cmpint(lcm_unet_time_cond_proj_dim(single), ==, 256);
  lcm_unet_free(single);
}

/* Bad arguments give LCM_ERROR_INVALID and leave the UNet usable. */
static void test_bad_arguments(void) {
  g_autoptr(TestGoldenCase) inpaint_case = test_golden_case_load("unet_inpaint_a");
  LcmUNet *unet = load_unet(inpaint_case, FALSE, LCM_PRECISION_FP32);
  const int h = 4, w = 4, tokens = 3;
  g_autofree float *sample = g_new0(float, 9 * h * w);
  g_autofree float *context = g_new0(float, tokens * 32);
  g_autofree float *cond = g_new0(float, 256);
  g_autofree float *out = g_new(float, 4 * h * w);
  GError *error = NULL;

  g_assert_false(lcm_unet_run(unet, sample, 1, h, w, 999, context, tokens, cond, out, &error));
  g_assert_error(error, LCM_ERROR, LCM_ERROR_INVALID);
  g_assert_nonnull(strstr(error->message, "timestep_cond"));
  g_clear_error(&error);

  g_assert_false(lcm_unet_run(unet, sample, 0, h, w, 999, context, tokens, NULL, out, &error));
  g_assert_error(error, LCM_ERROR, LCM_ERROR_INVALID);
  g_clear_error(&error);

  g_assert_false(lcm_unet_run(unet, sample, 1, h, w, 999, context, 0, NULL, out, &error));
  g_assert_error(error, LCM_ERROR, LCM_ERROR_INVALID);
  g_clear_error(&error);

  /* Tiny and odd sizes, a short context: all valid. */
  g_assert_true(lcm_unet_run(unet, sample, 1, 1, 3, 999, context, tokens, NULL, out, &error));
  g_assert_no_error(error);
  for (int i = 0; i < 4 * 1 * 3; i++) g_assert_true(isfinite(out[i]));
  lcm_unet_free(unet);
}

/* A set cancel flag stops a step with LCM_ERROR_CANCELLED; a clear one, or
 * none, lets it run. */
static void test_cancel_flag(void) {
  g_autoptr(TestGoldenCase) gc = test_golden_case_load("unet_lcm_a");
  LcmUNet *unet = load_unet(gc, FALSE, LCM_PRECISION_FP32);
  const int h = 4, w = 4, tokens = 3;
  g_autofree float *sample = g_new0(float, 4 * h * w);
  g_autofree float *context = g_new0(float, tokens * 32);
  g_autofree float *cond = g_new0(float, lcm_unet_time_cond_proj_dim(unet));
  g_autofree float *out = g_new(float, 4 * h * w);
  volatile gint cancel = 1;
  GError *error = NULL;

  lcm_unet_set_cancel(unet, &cancel);
  g_assert_false(lcm_unet_run(unet, sample, 1, h, w, 999, context, tokens, cond, out, &error));
  g_assert_error(error, LCM_ERROR, LCM_ERROR_CANCELLED);
  g_clear_error(&error);
  g_atomic_int_set(&cancel, 0);
  g_assert_true(lcm_unet_run(unet, sample, 1, h, w, 999, context, tokens, cond, out, &error));
  g_assert_no_error(error);
  g_atomic_int_set(&cancel, 1);
  lcm_unet_set_cancel(unet, NULL);
  g_assert_true(lcm_unet_run(unet, sample, 1, h, w, 999, context, tokens, cond, out, &error));
  g_assert_no_error(error);
  lcm_unet_free(unet);
}

/* A weight file of another UNet (9 input channels instead of 4) is refused
 * with a message naming the file and the tensor. */
static void test_wrong_weights(void) {
  g_autoptr(TestGoldenCase) lcm_case = test_golden_case_load("unet_lcm_a");
  g_autofree char *lcm_unet = test_golden_case_path(lcm_case, "unet");
  g_autofree char *inpaint_weights =
      test_golden_path("tiny-inpaint/unet/diffusion_pytorch_model.safetensors");
  LcmModelParts parts = {.unet = lcm_unet, .unet_weights = inpaint_weights};
  g_autoptr(GError) error = NULL;
  LcmModel *model = lcm_model_open_parts(&parts, &error);
  g_assert_no_error(error);
  LcmUNet *unet = lcm_unet_load(model, LCM_PRECISION_FP32, &error);
  g_assert_null(unet);
  g_assert_error(error, LCM_ERROR, LCM_ERROR_SHAPE);
  g_test_message("%s", error->message);
  g_assert_nonnull(strstr(error->message, "conv_in.weight"));
  g_assert_nonnull(strstr(error->message, "diffusion_pytorch_model.safetensors"));
  lcm_model_free(model);
}

/* Weights with a tensor more than the config describes (the LCM UNet's
 * cond_proj under a plain SD config) are refused, not silently ignored. */
static void test_unused_weights(void) {
  g_autofree char *plain_sd = test_golden_path("tiny-sd/unet");
  g_autofree char *lcm_weights =
      test_golden_path("tiny-lcm/unet/diffusion_pytorch_model.safetensors");
  LcmModelParts parts = {.unet = plain_sd, .unet_weights = lcm_weights};
  g_autoptr(GError) error = NULL;
  LcmModel *model = lcm_model_open_parts(&parts, &error);
  g_assert_no_error(error);
  g_assert_null(lcm_unet_load(model, LCM_PRECISION_FP32, &error));
  g_assert_error(error, LCM_ERROR, LCM_ERROR_UNSUPPORTED);
  g_test_message("%s", error->message);
  g_assert_nonnull(strstr(error->message, "time_embedding.cond_proj.weight"));
  lcm_model_free(model);
}

/* A tensor missing deep inside the network fails the load after most
 * layers were built (which must all be freed again), naming the tensor. */
static void test_missing_tensor(void) {
  static const char *const missing = "up_blocks.2.attentions.1.transformer_blocks.0.ff.net.2.bias";
  g_autoptr(TestGoldenCase) lcm_case = test_golden_case_load("unet_lcm_a");
  g_autofree char *lcm_unet = test_golden_case_path(lcm_case, "unet");
  g_autoptr(GError) error = NULL;
  g_autofree char *src_path =
      g_build_filename(lcm_unet, "diffusion_pytorch_model.safetensors", NULL);
  StFile *src = st_open(src_path, &error);
  g_assert_no_error(error);
  g_autofree char *dir = g_dir_make_tmp("test-unet-XXXXXX", &error);
  g_assert_no_error(error);
  g_autofree char *weights = g_build_filename(dir, "diffusion_pytorch_model.safetensors", NULL);
  g_autofree char *config_src = g_build_filename(lcm_unet, "config.json", NULL);
  g_autofree char *config_dst = g_build_filename(dir, "config.json", NULL);
  g_autofree char *config_text = NULL;
  gsize config_len = 0;
  g_assert_true(g_file_get_contents(config_src, &config_text, &config_len, &error));
  g_assert_true(g_file_set_contents(config_dst, config_text, config_len, &error));

  g_autofree StWriteTensor *kept = g_new0(StWriteTensor, st_count(src));
  guint n_kept = 0;
  for (guint i = 0; i < st_count(src); i++) {
    const StTensor *t = st_tensor_at(src, i);
    if (strcmp(t->name, missing) == 0) continue;
    kept[n_kept++] = (StWriteTensor){t->name, t->dtype, t->ndims, t->shape, t->data};
  }
  g_assert_cmpuint(n_kept, ==, st_count(src) - 1);
  g_assert_true(st_write(weights, kept, n_kept, NULL, &error));
  g_assert_no_error(error);
  st_close(src);

  LcmModelParts parts = {.unet = dir};
  LcmModel *model = lcm_model_open_parts(&parts, &error);
  g_assert_no_error(error);
  g_assert_null(lcm_unet_load(model, LCM_PRECISION_FP32, &error));
  g_assert_error(error, LCM_ERROR, LCM_ERROR_MISSING);
  g_test_message("%s", error->message);
  g_assert_nonnull(strstr(error->message, missing));
  lcm_model_free(model);
  g_unlink(weights);
  g_unlink(config_dst);
  g_rmdir(dir);
}

int main(int argc, char **argv) {
  g_test_init(&argc, &argv, NULL);

  static const struct {
    RunKind kind;
    const char *suffix;
  } kinds[] = {{RUN_FP32, "fp32"}, {RUN_FP32_SMALL_CHUNKS, "fp32-chunk7"}, {RUN_BF16, "bf16"}};
  /* Every case of component "unet" in cases.json. */
  GPtrArray *runs = g_ptr_array_new_with_free_func(g_free);
  JsonArray *cases = test_golden_cases();
  guint n_unet_cases = 0;
  for (guint i = 0; i < json_array_get_length(cases); i++) {
    JsonObject *c = json_array_get_object_element(cases, i);
    if (g_strcmp0(json_object_get_string_member(c, "component"), "unet") != 0) continue;
    const char *name = json_object_get_string_member(c, "name");
    n_unet_cases++;
    for (size_t k = 0; k < G_N_ELEMENTS(kinds); k++) {
      UNetRun *run = g_new(UNetRun, 1);
      *run = (UNetRun){name, kinds[k].kind};
      g_ptr_array_add(runs, run);
      g_autofree char *path = g_strdup_printf("/unet/%s/%s", name, kinds[k].suffix);
      g_test_add_data_func(path, run, test_golden);
    }
  }
  g_assert_cmpuint(n_unet_cases, >=, 8);
  /* The fp16 single-file checkpoint holds exactly the fp16 diffusers weights. */
  UNetRun *checkpoint_run = g_new(UNetRun, 1);
  *checkpoint_run = (UNetRun){"unet_lcm_fp16weights", RUN_CHECKPOINT};
  g_ptr_array_add(runs, checkpoint_run);
  g_test_add_data_func("/unet/checkpoint/unet_lcm_fp16weights", checkpoint_run, test_golden);

  g_test_add_func("/unet/guidance-embedding", test_guidance_embedding);
  g_test_add_func("/unet/accessors", test_accessors);
  g_test_add_func("/unet/bad-arguments", test_bad_arguments);
  g_test_add_func("/unet/cancel-flag", test_cancel_flag);
  g_test_add_func("/unet/wrong-weights", test_wrong_weights);
  g_test_add_func("/unet/unused-weights", test_unused_weights);
  g_test_add_func("/unet/missing-tensor", test_missing_tensor);

  int result = g_test_run();
  g_ptr_array_unref(runs);
  return result;
}
