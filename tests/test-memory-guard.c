/* The memory guard (core/memory-guard.c): with GIMP_LCM_MEMORY_LIMIT_MB
 * standing in for the machine's memory, a run that does not fit is refused
 * before anything loads, with a message giving the need, what is available
 * and what would fit. */
#include "lcm.h"
#include "testutil.h"

#include <string.h>

static LcmModel *open_golden(const char *relative) {
  g_autofree char *path = test_data_path(relative);
  g_autoptr(GError) error = NULL;
  LcmModel *model = lcm_model_open(path, &error);
  g_assert_no_error(error);
  return model;
}

static guint64 needed(LcmModel *model, LcmPrecision precision, int side) {
  guint64 bytes = 0;
  g_autoptr(GError) error = NULL;
  g_assert_true(lcm_model_memory_needed(model, precision, side, side, &bytes, &error));
  g_assert_no_error(error);
  return bytes;
}

static void set_limit_mb(guint64 mb) {
  g_autofree char *text = g_strdup_printf("%" G_GUINT64_FORMAT, mb);
  g_setenv("GIMP_LCM_MEMORY_LIMIT_MB", text, TRUE);
}

/* Weights at 4 or 2 bytes a parameter; the working set grows with the
 * pixel count and is the same at both precisions. */
static void test_estimate(void) {
  LcmModel *model = open_golden("golden-sdxl/tiny-sdxl-lcm");
  const guint64 fp32 = needed(model, LCM_PRECISION_FP32, 1024);
  const guint64 bf16 = needed(model, LCM_PRECISION_BF16, 1024);
  const guint64 fp32_small = needed(model, LCM_PRECISION_FP32, 512);
  const guint64 bf16_small = needed(model, LCM_PRECISION_BF16, 512);
  g_assert_cmpuint(bf16, <, fp32);
  /* the weights' share halves: fp32 - bf16 = 2 bytes x parameters at any size */
  g_assert_cmpuint(fp32 - bf16, ==, fp32_small - bf16_small);
  const guint64 params = (fp32 - bf16) / 2;
  g_assert_cmpuint(fp32 - 4 * params, ==, 4 * (fp32_small - 4 * params));
  guint64 bytes;
  g_autoptr(GError) error = NULL;
  g_assert_false(lcm_model_memory_needed(model, LCM_PRECISION_FP32, 0, 64, &bytes, &error));
  g_assert_error(error, LCM_ERROR, LCM_ERROR_INVALID);
  lcm_model_free(model);
}

static void test_refuses_when_short(void) {
  LcmModel *model = open_golden("golden-sdxl/tiny-sdxl-lcm");
  const guint64 fp32 = needed(model, LCM_PRECISION_FP32, 1024);
  const guint64 bf16 = needed(model, LCM_PRECISION_BF16, 1024);
  g_assert_cmpuint(fp32 - bf16, >, 2 << 20); /* room for a limit between them */
  set_limit_mb((bf16 + fp32) / 2 >> 20);
  g_assert_cmpuint(lcm_memory_available(), ==, ((bf16 + fp32) / 2 >> 20) << 20);

  g_autoptr(GError) error = NULL;
  g_assert_false(lcm_model_check_memory(model, LCM_PRECISION_FP32, 1024, 1024, &error));
  g_assert_error(error, LCM_ERROR, LCM_ERROR_UNSUPPORTED);
  g_test_message("%s", error->message);
  g_assert_nonnull(strstr(error->message, "needs about"));
  g_assert_nonnull(strstr(error->message, "is available"));
  g_assert_nonnull(strstr(error->message, "bf16 precision needs"));
  g_clear_error(&error);
  g_assert_true(lcm_model_check_memory(model, LCM_PRECISION_BF16, 1024, 1024, &error));
  g_assert_no_error(error);

  /* Nothing fits: no false advice, only the size hint. */
  set_limit_mb(1);
  g_assert_false(lcm_model_check_memory(model, LCM_PRECISION_FP32, 1024, 1024, &error));
  g_assert_error(error, LCM_ERROR, LCM_ERROR_UNSUPPORTED);
  g_assert_null(strstr(error->message, "fits"));
  g_assert_nonnull(strstr(error->message, "smaller image size"));
  g_clear_error(&error);

  /* The pipeline checks the native size (1024 for this SDXL config) before
   * loading anything. */
  g_assert_null(lcm_pipeline_new(model, LCM_PRECISION_FP32, &error));
  g_assert_error(error, LCM_ERROR, LCM_ERROR_UNSUPPORTED);
  g_clear_error(&error);

  set_limit_mb(1 << 20);
  LcmPipeline *pipeline = lcm_pipeline_new(model, LCM_PRECISION_FP32, &error);
  g_assert_no_error(error);
  lcm_pipeline_free(pipeline);
  g_unsetenv("GIMP_LCM_MEMORY_LIMIT_MB");
  lcm_model_free(model);
}

/* The single-file checkpoint of the same model (SGM names, OpenCLIP's
 * stacked q, k, v split into row views) counts the same parameters. */
static void test_single_file_counts_the_same(void) {
  LcmModel *folder = open_golden("golden-sdxl/tiny-sdxl-lcm");
  g_autofree char *checkpoint = test_data_path("golden-sdxl/tiny-sdxl-lcm.safetensors");
  g_autofree char *unet_config = test_data_path("golden-sdxl/tiny-sdxl-lcm/unet/config.json");
  const LcmModelParts parts = {.checkpoint = checkpoint, .unet_config = unet_config};
  g_autoptr(GError) error = NULL;
  LcmModel *single = lcm_model_open_parts(&parts, &error);
  g_assert_no_error(error);
  g_assert_cmpuint(
      needed(single, LCM_PRECISION_FP32, 256) - needed(single, LCM_PRECISION_BF16, 256), ==,
      needed(folder, LCM_PRECISION_FP32, 256) - needed(folder, LCM_PRECISION_BF16, 256));
  lcm_model_free(single);
  lcm_model_free(folder);
}

/* Without the override the machine's own memory is read. */
static void test_reads_meminfo(void) {
  g_unsetenv("GIMP_LCM_MEMORY_LIMIT_MB");
  g_assert_cmpuint(lcm_memory_available(), >, 16 << 20);
}

int main(int argc, char **argv) {
  g_test_init(&argc, &argv, NULL);
  g_test_add_func("/memory-guard/estimate", test_estimate);
  g_test_add_func("/memory-guard/refuses-when-short", test_refuses_when_short);
  g_test_add_func("/memory-guard/single-file-counts-the-same", test_single_file_counts_the_same);
  g_test_add_func("/memory-guard/reads-meminfo", test_reads_meminfo);
  return g_test_run();
}
