/* The VAE (diffusers AutoencoderKL) against the golden cases vae_encode_* and
 * vae_decode_*: fp32 within the cases' tolerance, also with the mid-block
 * attention split into many chunks, bf16 by cosine similarity, and the same
 * VAE read from the fp16 single-file checkpoint. */
#include "lcm.h"
#include "safetensors.h"
#include "testutil.h"

#include <glib/gstdio.h>
#include <math.h>
#include <string.h>
#include <unistd.h>

/* How a run loads and configures the VAE. */
typedef enum { SOURCE_DIFFUSERS, SOURCE_CHECKPOINT } Source;

typedef struct {
  const char *case_name;
  LcmPrecision precision;
  int attention_chunk; /* 0 = built-in */
  Source source;
} VaeRun;

/* A golden tensor as fp32, checked to hold `numel` values; g_free it. */
static float *golden_tensor(const TestGoldenCase *gc, const char *name, size_t numel) {
  int64_t golden_numel;
  float *data = test_golden_tensor(gc->file, name, &golden_numel);
  g_assert_cmpint(golden_numel, ==, (int64_t)numel);
  return data;
}

static int64_t golden_dim(const TestGoldenCase *gc, const char *name, int axis) {
  const StTensor *t = st_find(gc->file, name);
  g_assert_nonnull(t);
  g_assert_cmpint(axis, <, t->ndims);
  return t->shape[axis];
}

static void assert_cosine(const char *what, const float *got, const float *golden, size_t n) {
  double cosine = test_cosine(got, golden, n);
  g_test_message("%s: cosine %.6f, max |err| %.3g", what, cosine,
                 test_max_abs_diff(got, golden, n));
  g_assert_cmpfloat(cosine, >=, 0.999);
}

/* fp16 weights are rounded by up to 2^-11 relative; through the VAE's ~30
 * layers with GroupNorms renormalising at each step that grows to about 1e-3
 * relative, so allow 5e-3 absolute on values of order 1 (measured max: see the
 * test log) plus the case's own tolerance. */
#define CHECKPOINT_ATOL 5e-3
#define CHECKPOINT_RTOL 5e-3

/* Compares one output as the run's precision and source allow. */
static void check_output(const VaeRun *run, const TestGoldenCase *gc, const char *what,
                         const float *got, const float *golden, size_t n) {
  g_autofree char *label = g_strdup_printf("%s %s", run->case_name, what);
  if (run->precision == LCM_PRECISION_BF16)
    assert_cosine(label, got, golden, n);
  else if (run->source == SOURCE_CHECKPOINT)
    test_assert_close(label, got, golden, n, gc->atol + CHECKPOINT_ATOL,
                      gc->rtol + CHECKPOINT_RTOL);
  else
    test_assert_close(label, got, golden, n, gc->atol, gc->rtol);
}

/* NULL (test skipped) when the CPU cannot run the run's precision. */
static LcmVae *load_vae(const VaeRun *run, const TestGoldenCase *gc) {
  g_autofree char *checkpoint = test_data_path("golden/tiny-lcm.safetensors");
  g_autofree char *vae_folder = test_golden_case_path(gc, "vae");
  LcmModelParts parts = {0};
  if (run->source == SOURCE_CHECKPOINT)
    parts.checkpoint = checkpoint;
  else
    parts.vae = vae_folder;
  g_autoptr(GError) error = NULL;
  LcmModel *model = lcm_model_open_parts(&parts, &error);
  g_assert_no_error(error);
  LcmVae *vae = lcm_vae_load(model, run->precision, &error);
  if (test_skip_if_unsupported(error, run->precision)) {
    lcm_model_free(model);
    return NULL;
  }
  g_assert_no_error(error);
  /* The VAE holds its weights in its own layout; the model may go. */
  lcm_model_free(model);
  g_assert_cmpfloat_with_epsilon(lcm_vae_scaling_factor(vae), 0.18215f, 1e-7);
  g_assert_cmpint(lcm_vae_latent_channels(vae), ==, 4);
  if (run->attention_chunk) lcm_vae_set_attention_chunk(vae, run->attention_chunk);
  return vae;
}

static void test_encode(gconstpointer data) {
  const VaeRun *run = data;
  g_autoptr(TestGoldenCase) gc = test_golden_case_load(run->case_name);
  LcmVae *vae = load_vae(run, gc);
  if (!vae) return;

  const int h = golden_dim(gc, "image", 2), w = golden_dim(gc, "image", 3);
  const size_t latent_n = (size_t)4 * (h / 8) * (w / 8);
  g_autofree float *image = golden_tensor(gc, "image", (size_t)3 * h * w);
  g_autofree float *mean = g_new(float, latent_n);
  g_autofree float *logvar = g_new(float, latent_n);
  g_autoptr(GError) error = NULL;
  g_assert_true(lcm_vae_encode(vae, image, 1, h, w, mean, logvar, &error));
  g_assert_no_error(error);

  g_autofree float *std = g_new(float, latent_n);
  for (size_t i = 0; i < latent_n; i++) std[i] = expf(0.5f * logvar[i]);
  g_autofree float *golden_mean = golden_tensor(gc, "mean", latent_n);
  g_autofree float *golden_logvar = golden_tensor(gc, "logvar", latent_n);
  g_autofree float *golden_std = golden_tensor(gc, "std", latent_n);
  check_output(run, gc, "mean", mean, golden_mean, latent_n);
  check_output(run, gc, "logvar", logvar, golden_logvar, latent_n);
  check_output(run, gc, "std", std, golden_std, latent_n);

  lcm_vae_free(vae);
}

static void test_decode(gconstpointer data) {
  const VaeRun *run = data;
  g_autoptr(TestGoldenCase) gc = test_golden_case_load(run->case_name);
  LcmVae *vae = load_vae(run, gc);
  if (!vae) return;

  const int h = golden_dim(gc, "z", 2), w = golden_dim(gc, "z", 3);
  const size_t image_n = (size_t)3 * (8 * h) * (8 * w);
  g_autofree float *z = golden_tensor(gc, "z", (size_t)4 * h * w);
  g_autofree float *image = g_new(float, image_n);
  g_autoptr(GError) error = NULL;
  g_assert_true(lcm_vae_decode(vae, z, 1, h, w, image, &error));
  g_assert_no_error(error);

  g_autofree float *golden_image = golden_tensor(gc, "image", image_n);
  check_output(run, gc, "image", image, golden_image, image_n);

  lcm_vae_free(vae);
}

/* A batch of two different inputs gives each one's single-image result. */
static void test_batch(void) {
  const VaeRun run = {"vae_decode_a", LCM_PRECISION_FP32, 0, SOURCE_DIFFUSERS};
  g_autoptr(TestGoldenCase) gc = test_golden_case_load(run.case_name);
  LcmVae *vae = load_vae(&run, gc);

  const size_t z_n = 4 * 8 * 8, image_n = 3 * 64 * 64;
  g_autofree float *golden_z = golden_tensor(gc, "z", z_n);
  g_autofree float *golden_image = golden_tensor(gc, "image", image_n);
  g_autofree float *z = g_new(float, 2 * z_n);
  for (size_t i = 0; i < z_n; i++) {
    z[i] = -golden_z[i];
    z[z_n + i] = golden_z[i];
  }
  g_autofree float *images = g_new(float, 2 * image_n);
  g_autoptr(GError) error = NULL;
  g_assert_true(lcm_vae_decode(vae, z, 2, 8, 8, images, &error));
  g_assert_no_error(error);
  test_assert_close("batch item 1", images + image_n, golden_image, image_n, gc->atol, gc->rtol);
  /* Item 0 is another input, so it must differ from the golden image. */
  g_assert_cmpfloat(test_max_abs_diff(images, golden_image, image_n), >, 1e-2);

  lcm_vae_free(vae);
}

/* A set cancel flag stops decoding and encoding with LCM_ERROR_CANCELLED;
 * cleared, both run again. */
static void test_cancel_flag(void) {
  const VaeRun run = {"vae_decode_a", LCM_PRECISION_FP32, 0, SOURCE_DIFFUSERS};
  g_autoptr(TestGoldenCase) gc = test_golden_case_load(run.case_name);
  LcmVae *vae = load_vae(&run, gc);
  g_autofree float *z = g_new0(float, 4 * 8 * 8);
  g_autofree float *image = g_new0(float, 3 * 64 * 64);
  g_autofree float *mean = g_new(float, 4 * 8 * 8);
  g_autofree float *logvar = g_new(float, 4 * 8 * 8);
  volatile gint cancel = 1;
  GError *error = NULL;

  lcm_vae_set_cancel(vae, &cancel);
  g_assert_false(lcm_vae_decode(vae, z, 1, 8, 8, image, &error));
  g_assert_error(error, LCM_ERROR, LCM_ERROR_CANCELLED);
  g_clear_error(&error);
  g_assert_false(lcm_vae_encode(vae, image, 1, 64, 64, mean, logvar, &error));
  g_assert_error(error, LCM_ERROR, LCM_ERROR_CANCELLED);
  g_clear_error(&error);
  g_atomic_int_set(&cancel, 0);
  g_assert_true(lcm_vae_decode(vae, z, 1, 8, 8, image, &error));
  g_assert_true(lcm_vae_encode(vae, image, 1, 64, 64, mean, logvar, &error));
  g_assert_no_error(error);
  lcm_vae_free(vae);
}

/* Sizes the encoder cannot take are refused with an error, not a crash. */
static void test_bad_sizes(void) {
  const VaeRun run = {"vae_decode_a", LCM_PRECISION_FP32, 0, SOURCE_DIFFUSERS};
  g_autoptr(TestGoldenCase) gc = test_golden_case_load(run.case_name);
  LcmVae *vae = load_vae(&run, gc);
  float pixels[3 * 12 * 16] = {0}, latents[4 * 2 * 2];

  g_autoptr(GError) error = NULL;
  g_assert_false(lcm_vae_encode(vae, pixels, 1, 12, 16, latents, latents, &error));
  g_assert_error(error, LCM_ERROR, LCM_ERROR_INVALID);
  g_clear_error(&error);
  g_assert_false(lcm_vae_encode(vae, pixels, 0, 16, 16, latents, latents, &error));
  g_assert_error(error, LCM_ERROR, LCM_ERROR_INVALID);
  g_clear_error(&error);
  g_assert_false(lcm_vae_decode(vae, latents, 1, 0, 2, pixels, &error));
  g_assert_error(error, LCM_ERROR, LCM_ERROR_INVALID);
  g_clear_error(&error);
  g_assert_false(lcm_vae_decode(vae, latents, 1, 1 << 20, 2, pixels, &error));
  g_assert_error(error, LCM_ERROR, LCM_ERROR_INVALID);

  lcm_vae_free(vae);
}

/* A model without a VAE reports what is missing. */
static void test_missing_vae(void) {
  g_autofree char *scheduler = test_data_path("golden/tiny-lcm/scheduler");
  LcmModelParts parts = {.scheduler = scheduler};
  g_autoptr(GError) error = NULL;
  LcmModel *model = lcm_model_open_parts(&parts, &error);
  g_assert_no_error(error);
  g_assert_null(lcm_vae_load(model, LCM_PRECISION_FP32, &error));
  g_assert_nonnull(error);
  g_test_message("%s", error->message);
  lcm_model_free(model);
}

/* A config that does not fit the weights fails with the tensor named, and
 * what was loaded until then is freed (the sanitizer run checks that). */
static void test_config_mismatch(void) {
  g_autofree char *vae_dir = test_data_path("golden/tiny-lcm/vae");
  g_autofree char *weights = g_build_filename(vae_dir, "diffusion_pytorch_model.safetensors", NULL);
  g_autofree char *config_path = g_build_filename(vae_dir, "config.json", NULL);
  g_autoptr(GError) error = NULL;
  g_autofree char *config = NULL;
  g_assert_true(g_file_get_contents(config_path, &config, NULL, &error));
  g_autofree char *tmp = g_dir_make_tmp("test-vae-XXXXXX", &error);
  g_assert_no_error(error);
  /* The last level widened from 64 to 128 channels. */
  g_auto(GStrv) parts_of_config = g_strsplit(config, "64\n  ]", 2);
  g_assert_cmpint(g_strv_length(parts_of_config), ==, 2);
  g_autofree char *bad_config = g_strjoinv("128\n  ]", parts_of_config);
  g_autofree char *tmp_config = g_build_filename(tmp, "config.json", NULL);
  g_autofree char *tmp_weights = g_build_filename(tmp, "diffusion_pytorch_model.safetensors", NULL);
  g_assert_true(g_file_set_contents(tmp_config, bad_config, -1, &error));
  g_assert_cmpint(symlink(weights, tmp_weights), ==, 0);

  LcmModelParts parts = {.vae = tmp};
  LcmModel *model = lcm_model_open_parts(&parts, &error);
  g_assert_no_error(error);
  g_assert_null(lcm_vae_load(model, LCM_PRECISION_FP32, &error));
  g_assert_error(error, LCM_ERROR, LCM_ERROR_SHAPE);
  g_test_message("%s", error->message);
  g_assert_nonnull(strstr(error->message, "encoder.down_blocks.3.resnets.0.conv1.weight"));
  lcm_model_free(model);
  g_unlink(tmp_config);
  g_unlink(tmp_weights);
  g_rmdir(tmp);
}

static const VaeRun runs[] = {
    {"vae_encode_a", LCM_PRECISION_FP32, 0, SOURCE_DIFFUSERS},
    {"vae_encode_b", LCM_PRECISION_FP32, 0, SOURCE_DIFFUSERS},
    {"vae_decode_a", LCM_PRECISION_FP32, 0, SOURCE_DIFFUSERS},
    {"vae_decode_b", LCM_PRECISION_FP32, 0, SOURCE_DIFFUSERS},
    /* 64 and 96 tokens in 5-row query blocks: many chunks and a ragged last one. */
    {"vae_encode_a", LCM_PRECISION_FP32, 5, SOURCE_DIFFUSERS},
    {"vae_encode_b", LCM_PRECISION_FP32, 5, SOURCE_DIFFUSERS},
    {"vae_decode_a", LCM_PRECISION_FP32, 5, SOURCE_DIFFUSERS},
    {"vae_decode_b", LCM_PRECISION_FP32, 5, SOURCE_DIFFUSERS},
    {"vae_encode_a", LCM_PRECISION_BF16, 0, SOURCE_DIFFUSERS},
    {"vae_encode_b", LCM_PRECISION_BF16, 0, SOURCE_DIFFUSERS},
    {"vae_decode_a", LCM_PRECISION_BF16, 0, SOURCE_DIFFUSERS},
    {"vae_decode_b", LCM_PRECISION_BF16, 5, SOURCE_DIFFUSERS},
    {"vae_encode_a", LCM_PRECISION_FP32, 0, SOURCE_CHECKPOINT},
    {"vae_decode_b", LCM_PRECISION_FP32, 0, SOURCE_CHECKPOINT},
};

int main(int argc, char **argv) {
  g_test_init(&argc, &argv, NULL);
  for (size_t i = 0; i < G_N_ELEMENTS(runs); i++) {
    const VaeRun *run = &runs[i];
    g_autofree char *path =
        g_strdup_printf("/vae/%s/%s%s%s", run->case_name, lcm_precision_name(run->precision),
                        run->attention_chunk ? "-chunked" : "",
                        run->source == SOURCE_CHECKPOINT ? "-checkpoint" : "");
    gboolean encode = g_str_has_prefix(run->case_name, "vae_encode");
    g_test_add_data_func(path, run, encode ? test_encode : test_decode);
  }
  g_test_add_func("/vae/batch", test_batch);
  g_test_add_func("/vae/cancel-flag", test_cancel_flag);
  g_test_add_func("/vae/bad-sizes", test_bad_sizes);
  g_test_add_func("/vae/missing", test_missing_vae);
  g_test_add_func("/vae/config-mismatch", test_config_mismatch);
  return g_test_run();
}
