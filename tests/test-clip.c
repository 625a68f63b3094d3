/* The CLIP text encoder against transformers' CLIPTextModel (golden case
 * text_encoder), from the diffusers folder and the fp16 single-file
 * checkpoint, plus its argument errors. */
#include "lcm.h"
#include "safetensors.h"
#include "testutil.h"

#include <glib/gstdio.h>

#include <math.h>
#include <string.h>

#define BATCH 4
#define HIDDEN 32

typedef struct {
  StFile *file;
  const int32_t *ids;    /* [BATCH, 77] */
  const float *expected; /* last_hidden_state [BATCH, 77, HIDDEN] */
} Golden;

static Golden golden_open(void) {
  char *path = test_data_path("golden/cases/text_encoder.safetensors");
  GError *error = NULL;
  Golden g = {st_open(path, &error), NULL, NULL};
  g_assert_no_error(error);
  g_free(path);
  const StTensor *ids = st_find(g.file, "input_ids");
  const StTensor *out = st_find(g.file, "last_hidden_state");
  g_assert_nonnull(ids);
  g_assert_nonnull(out);
  g_assert_cmpint(ids->dtype, ==, ST_I32);
  g_assert_cmpint(st_numel(ids), ==, BATCH * LCM_CLIP_TOKENS);
  g_assert_cmpint(out->dtype, ==, ST_F32);
  g_assert_cmpint(st_numel(out), ==, BATCH * LCM_CLIP_TOKENS * HIDDEN);
  g.ids = ids->data;
  g.expected = out->data;
  return g;
}

/* The tiny model from its diffusers folder (or `folder`), or from the
 * single file. */
static LcmModel *open_model(gboolean checkpoint, const char *folder) {
  char *te = folder ? g_strdup(folder) : test_data_path("golden/tiny-lcm/text_encoder");
  char *tok = test_data_path("golden/tiny-lcm/tokenizer");
  char *ckpt = test_data_path("golden/tiny-lcm.safetensors");
  char *config = test_data_path("golden/tiny-lcm/text_encoder/config.json");
  LcmModelParts parts = {0};
  if (checkpoint) {
    parts.checkpoint = ckpt;
    /* A 32-wide CLIP's head count cannot be inferred from shapes. */
    parts.text_encoder_config = config;
  } else {
    parts.text_encoder = te;
    parts.tokenizer = tok;
  }
  GError *error = NULL;
  LcmModel *model = lcm_model_open_parts(&parts, &error);
  g_assert_no_error(error);
  g_free(te);
  g_free(tok);
  g_free(ckpt);
  g_free(config);
  return model;
}

/* Encodes the golden ids; NULL (test skipped) when the CPU lacks bf16. */
static float *encode_parts(gboolean checkpoint, const char *folder, LcmPrecision precision) {
  LcmModel *model = open_model(checkpoint, folder);
  GError *error = NULL;
  LcmTextEncoder *encoder = lcm_text_encoder_load(model, precision, &error);
  if (!encoder && g_error_matches(error, LCM_ERROR, LCM_ERROR_UNSUPPORTED) &&
      precision == LCM_PRECISION_BF16) {
    g_test_skip(error->message);
    g_error_free(error);
    lcm_model_free(model);
    return NULL;
  }
  g_assert_no_error(error);
  g_assert_cmpint(lcm_text_encoder_hidden_size(encoder), ==, HIDDEN);
  Golden g = golden_open();
  float *out = g_new(float, BATCH *LCM_CLIP_TOKENS *HIDDEN);
  g_assert_true(lcm_text_encoder_encode(encoder, g.ids, BATCH, out, &error));
  g_assert_no_error(error);
  st_close(g.file);
  lcm_text_encoder_free(encoder);
  lcm_model_free(model);
  return out;
}

static void test_fp32_folder(void) {
  float *out = encode_parts(FALSE, NULL, LCM_PRECISION_FP32);
  Golden g = golden_open();
  const double err = test_max_abs_diff(out, g.expected, BATCH * LCM_CLIP_TOKENS * HIDDEN);
  g_test_message("fp32 max abs error %.3g", err);
  g_assert_cmpfloat(err, <=, 1e-4);
  st_close(g.file);
  g_free(out);
}

static void test_bf16_folder(void) {
  float *out = encode_parts(FALSE, NULL, LCM_PRECISION_BF16);
  if (!out) return;
  Golden g = golden_open();
  double worst = 1;
  for (int t = 0; t < BATCH * LCM_CLIP_TOKENS; t++)
    worst = fmin(worst, test_cosine(out + t * HIDDEN, g.expected + t * HIDDEN, HIDDEN));
  g_test_message("bf16 worst per-token cosine %.6f", worst);
  g_assert_cmpfloat(worst, >=, 0.999);
  st_close(g.file);
  g_free(out);
}

/* A copy of the tiny text encoder folder with every weight rounded to fp16,
 * as the single-file checkpoint stores them; g_free the path. */
static char *write_fp16_rounded_folder(void) {
  GError *error = NULL;
  char *dir = g_dir_make_tmp("test-clip-XXXXXX", &error);
  g_assert_no_error(error);
  char *src_dir = test_data_path("golden/tiny-lcm/text_encoder");
  char *src = g_build_filename(src_dir, "model.safetensors", NULL);
  StFile *file = st_open(src, &error);
  g_assert_no_error(error);
  const guint count = st_count(file);
  StWriteTensor *tensors = g_new0(StWriteTensor, count);
  float **values = g_new0(float *, count);
  for (guint i = 0; i < count; i++) {
    const StTensor *t = st_tensor_at(file, i);
    values[i] = g_new(float, st_numel(t) > 0 ? st_numel(t) : 1);
    st_tensor_to_f32(t, values[i]);
    for (int64_t j = 0; j < st_numel(t); j++) values[i][j] = (float)(_Float16)values[i][j];
    tensors[i] = (StWriteTensor){t->name, ST_F32, t->ndims, t->shape, values[i]};
  }
  char *dst = g_build_filename(dir, "model.safetensors", NULL);
  g_assert_true(st_write(dst, tensors, count, NULL, &error));
  g_assert_no_error(error);
  char *config_src = g_build_filename(src_dir, "config.json", NULL);
  char *config_dst = g_build_filename(dir, "config.json", NULL);
  char *config = NULL;
  gsize config_len = 0;
  g_assert_true(g_file_get_contents(config_src, &config, &config_len, &error));
  g_assert_true(g_file_set_contents(config_dst, config, config_len, &error));
  g_assert_no_error(error);
  for (guint i = 0; i < count; i++) g_free(values[i]);
  g_free(values);
  g_free(tensors);
  st_close(file);
  g_free(config);
  g_free(config_src);
  g_free(config_dst);
  g_free(src);
  g_free(src_dir);
  g_free(dst);
  return dir;
}

static void remove_folder(const char *dir) {
  char *weights = g_build_filename(dir, "model.safetensors", NULL);
  char *config = g_build_filename(dir, "config.json", NULL);
  g_remove(weights);
  g_remove(config);
  g_rmdir(dir);
  g_free(weights);
  g_free(config);
}

/* The single-file checkpoint holds fp16 weights, so it is checked two ways:
 * exactly against the folder model with the same fp16-rounded weights (the
 * checkpoint mapping), and against the fp32 golden within the case's
 * tolerance widened by the fp16 rounding of the weights. */
static void test_fp32_checkpoint(void) {
  const size_t count = BATCH * LCM_CLIP_TOKENS * HIDDEN;
  float *out = encode_parts(TRUE, NULL, LCM_PRECISION_FP32);
  char *rounded_dir = write_fp16_rounded_folder();
  float *rounded = encode_parts(FALSE, rounded_dir, LCM_PRECISION_FP32);
  remove_folder(rounded_dir);
  g_free(rounded_dir);
  const double mapping_err = test_max_abs_diff(out, rounded, count);
  g_test_message("checkpoint vs fp16-rounded folder: max abs error %.3g", mapping_err);
  g_assert_cmpfloat(mapping_err, <=, 1e-5);

  Golden g = golden_open();
  double max_err = 0, worst_excess = -INFINITY;
  for (size_t i = 0; i < count; i++) {
    const double diff = fabs((double)out[i] - g.expected[i]);
    max_err = fmax(max_err, diff);
    worst_excess = fmax(worst_excess, diff - (5e-4 + 1e-4 * fabs(g.expected[i])));
  }
  g_test_message("checkpoint vs fp32 golden: max abs error %.3g (%s atol 5e-4 + rtol 1e-4)",
                 max_err, worst_excess <= 0 ? "within" : "beyond");
  g_assert_cmpfloat(max_err, <=, 1e-2);
  st_close(g.file);
  g_free(out);
  g_free(rounded);
}

static void test_errors(void) {
  LcmModel *model = open_model(FALSE, NULL);
  GError *error = NULL;
  LcmTextEncoder *encoder = lcm_text_encoder_load(model, LCM_PRECISION_FP32, &error);
  g_assert_no_error(error);
  int32_t ids[LCM_CLIP_TOKENS];
  for (int i = 0; i < LCM_CLIP_TOKENS; i++) ids[i] = LCM_CLIP_EOS;
  ids[0] = LCM_CLIP_BOS;
  float *out = g_new(float, LCM_CLIP_TOKENS *HIDDEN);
  g_assert_true(lcm_text_encoder_encode(encoder, ids, 1, out, &error));
  g_assert_no_error(error);
  ids[5] = 49408; /* one past the vocabulary */
  g_assert_false(lcm_text_encoder_encode(encoder, ids, 1, out, &error));
  g_assert_error(error, LCM_ERROR, LCM_ERROR_INVALID);
  g_assert_nonnull(strstr(error->message, "49408"));
  g_clear_error(&error);
  ids[5] = -1;
  g_assert_false(lcm_text_encoder_encode(encoder, ids, 1, out, &error));
  g_assert_error(error, LCM_ERROR, LCM_ERROR_INVALID);
  g_clear_error(&error);
  g_assert_false(lcm_text_encoder_encode(encoder, ids, 0, out, &error));
  g_assert_error(error, LCM_ERROR, LCM_ERROR_INVALID);
  g_clear_error(&error);
  g_free(out);
  lcm_text_encoder_free(encoder);
  lcm_model_free(model);
}

int main(int argc, char **argv) {
  g_test_init(&argc, &argv, NULL);
  g_test_add_func("/clip/fp32-folder", test_fp32_folder);
  g_test_add_func("/clip/bf16-folder", test_bf16_folder);
  g_test_add_func("/clip/fp32-checkpoint", test_fp32_checkpoint);
  g_test_add_func("/clip/errors", test_errors);
  return g_test_run();
}
