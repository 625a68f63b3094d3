/* The pipelines (core/pipeline.c) through the public API: every golden
 * pipeline case in fp32 (image within 1e-3, 8-bit image within 1), with the
 * number of random draws the reference made; the default noise source
 * against the cases that record their generator seed; determinism, caches,
 * previews, cancelling, compositing, and the errors bad parameters give. */
#include "lcm.h"
#include "safetensors.h"
#include "testutil.h"

#include <json-glib/json-glib.h>
#include <math.h>
#include <string.h>

#define IMAGE_MAX_ABS 1e-3
#define U8_MAX_ABS 1.0
#define BF16_MIN_COSINE 0.99

/* ---- Golden cases ------------------------------------------------------------------ */

static JsonObject *case_params_object(const TestGoldenCase *gc) {
  return json_object_get_object_member(gc->object, "params");
}

static gboolean case_has_loras(const TestGoldenCase *gc) {
  return json_object_has_member(json_object_get_object_member(gc->object, "paths"), "loras");
}

/* The case's model parts with its LoRAs merged. */
static LcmModel *case_model(const TestGoldenCase *gc) {
  g_autofree char *unet = test_golden_case_path(gc, "unet"),
                  *vae = test_golden_case_path(gc, "vae");
  g_autofree char *text = test_golden_case_path(gc, "text_encoder"),
                  *tok = test_golden_case_path(gc, "tokenizer");
  g_autofree char *sched = test_golden_case_path(gc, "scheduler");
  LcmModelParts parts = {
      .unet = unet, .vae = vae, .text_encoder = text, .tokenizer = tok, .scheduler = sched};
  g_autoptr(GError) error = NULL;
  LcmModel *model = lcm_model_open_parts(&parts, &error);
  g_assert_no_error(error);
  if (case_has_loras(gc)) {
    JsonArray *loras =
        json_object_get_array_member(json_object_get_object_member(gc->object, "paths"), "loras");
    for (guint i = 0; i < json_array_get_length(loras); i++) {
      JsonObject *lora = json_array_get_object_element(loras, i);
      g_autofree char *file = test_golden_path(json_object_get_string_member(lora, "file"));
      g_assert_true(
          lcm_model_add_lora(model, file, json_object_get_double_member(lora, "scale"), &error));
      g_assert_no_error(error);
    }
  }
  return model;
}

static LcmPipeline *pipeline_for(LcmModel *model, LcmPrecision precision) {
  g_autoptr(GError) error = NULL;
  LcmPipeline *p = lcm_pipeline_new(model, precision, &error);
  g_assert_no_error(error);
  g_assert_nonnull(p);
  return p;
}

/* An 8-bit HWC tensor as u8/255, as diffusers preprocesses it. */
static LcmImage *case_image(const TestGoldenCase *gc, const char *name) {
  const StTensor *t = st_find(gc->file, name);
  g_assert_nonnull(t);
  LcmImage *image =
      lcm_image_new((int)t->shape[1], (int)t->shape[0], t->ndims == 3 ? (int)t->shape[2] : 1);
  g_autofree float *v = test_golden_tensor(gc->file, name, NULL);
  for (int64_t i = 0; i < st_numel(t); i++) image->data[i] = v[i] / 255.0f;
  return image;
}

/* The case's random tensors by draw index (see LcmNoiseFunc), counting the
 * draws. An LCM txt2img case gives its initial latents as `latents`. */
typedef struct {
  const TestGoldenCase *gc;
  int draws;
} CaseNoise;

static char *draw_name(const TestGoldenCase *gc, int index) {
  gboolean explicit_latents = st_find(gc->file, "latents") != NULL;
  if (explicit_latents && index == 0) return g_strdup("latents");
  return g_strdup_printf("rand_%02d", index - (explicit_latents ? 1 : 0));
}

static gboolean case_noise(int index, float *out, int64_t n, gpointer data, GError **error) {
  CaseNoise *noise = data;
  g_autofree char *name = draw_name(noise->gc, index);
  const StTensor *t = st_find(noise->gc->file, name);
  if (!t || st_numel(t) != n) {
    g_set_error(error, LCM_ERROR, LCM_ERROR_MISSING, "no %" G_GINT64_FORMAT "-value tensor %s", n,
                name);
    return FALSE;
  }
  st_tensor_to_f32(t, out);
  noise->draws = MAX(noise->draws, index + 1);
  return TRUE;
}

/* The case's parameters; images owned by the caller. */
static void case_params(const TestGoldenCase *gc, LcmPipelineParams *params, LcmImage **source,
                        LcmImage **mask) {
  const char *component = json_object_get_string_member(gc->object, "component");
  JsonObject *case_params = case_params_object(gc);
  lcm_pipeline_params_init(params);
  params->mode = strstr(component, "txt2img")   ? LCM_MODE_TXT2IMG
                 : strstr(component, "img2img") ? LCM_MODE_IMG2IMG
                                                : LCM_MODE_INPAINT;
  params->prompt = json_object_get_string_member(case_params, "prompt");
  params->negative_prompt =
      json_object_get_string_member_with_default(case_params, "negative_prompt", NULL);
  params->steps = (int)json_object_get_int_member(case_params, "num_inference_steps");
  params->guidance_scale = json_object_get_double_member(case_params, "guidance_scale");
  params->strength = json_object_get_double_member_with_default(case_params, "strength", 1.0);
  params->width = (int)json_object_get_int_member_with_default(case_params, "width", 0);
  params->height = (int)json_object_get_int_member_with_default(case_params, "height", 0);
  *source = *mask = NULL;
  if (params->mode != LCM_MODE_TXT2IMG)
    params->image = *source = case_image(gc, "init_image_u8_hwc");
  if (params->mode == LCM_MODE_INPAINT) params->mask = *mask = case_image(gc, "mask_u8_hw");
}

/* The result against the case's `image` (NCHW) and `image_u8_nhwc`. */
static void assert_matches_golden(const TestGoldenCase *gc, const LcmImage *image) {
  int64_t n;
  g_autofree float *golden = test_golden_tensor(gc->file, "image", &n);
  g_autofree float *golden_u8 = test_golden_tensor(gc->file, "image_u8_nhwc", NULL);
  g_assert_cmpint(n, ==, (int64_t)3 * image->width * image->height);
  size_t plane = (size_t)image->width * image->height;
  double max_abs = 0, max_u8 = 0;
  for (size_t i = 0; i < plane; i++)
    for (int c = 0; c < 3; c++) {
      float v = image->data[3 * i + c];
      max_abs = fmax(max_abs, fabs(v - golden[c * plane + i]));
      max_u8 = fmax(max_u8, fabs(rintf(v * 255.0f) - golden_u8[3 * i + c]));
    }
  g_test_message("image max abs %.2e, 8-bit max %.0f", max_abs, max_u8);
  g_assert_cmpfloat(max_abs, <=, IMAGE_MAX_ABS);
  g_assert_cmpfloat(max_u8, <=, U8_MAX_ABS);
}

static int recorded_draws(const TestGoldenCase *gc) {
  return (int)json_array_get_length(
             json_object_get_array_member(case_params_object(gc), "random_tensors_in_draw_order")) +
         (st_find(gc->file, "latents") ? 1 : 0);
}

/* A golden case, either with the case's own random tensors (counting the
 * draws) or, for a case that records its generator seed, with the default
 * noise source. */
static void check_golden(const char *name, gboolean default_noise) {
  g_autoptr(TestGoldenCase) gc = test_golden_case_load(name);
  LcmModel *model = case_model(gc);
  LcmPipeline *p = pipeline_for(model, LCM_PRECISION_FP32);
  lcm_model_free(model);
  LcmPipelineParams params;
  LcmImage *source, *mask;
  case_params(gc, &params, &source, &mask);
  CaseNoise noise = {gc, 0};
  if (default_noise) {
    params.seed = (uint64_t)json_object_get_int_member(case_params_object(gc), "generator_seed");
  } else {
    params.noise = case_noise;
    params.noise_data = &noise;
  }
  g_autoptr(GError) error = NULL;
  LcmImage *image = lcm_pipeline_run(p, &params, &error);
  g_assert_no_error(error);
  assert_matches_golden(gc, image);
  if (!default_noise) g_assert_cmpint(noise.draws, ==, recorded_draws(gc));
  lcm_image_free(image);
  lcm_image_free(source);
  lcm_image_free(mask);
  lcm_pipeline_free(p);
}

static void test_golden(gconstpointer name) {
  check_golden(name, FALSE);
}

static void test_golden_seed(gconstpointer name) {
  check_golden(name, TRUE);
}

/* ---- The tiny LCM model, default noise ----------------------------------------------- */

static LcmPipeline *tiny_pipeline(const char *folder) {
  g_autofree char *rel = g_build_filename("golden", folder, NULL);
  g_autofree char *path = test_data_path(rel);
  g_autoptr(GError) error = NULL;
  LcmModel *model = lcm_model_open(path, &error);
  g_assert_no_error(error);
  LcmPipeline *p = pipeline_for(model, LCM_PRECISION_FP32);
  lcm_model_free(model);
  return p;
}

/* A 64x64 test picture: smooth gradients. */
static LcmImage *test_picture(void) {
  LcmImage *image = lcm_image_new(64, 64, 3);
  for (int y = 0; y < 64; y++)
    for (int x = 0; x < 64; x++)
      for (int c = 0; c < 3; c++)
        image->data[(y * 64 + x) * 3 + c] = (float)((x * (c + 1) + y * (3 - c)) % 64) / 63.0f;
  return image;
}

/* Repaint the right half. */
static LcmImage *test_mask(void) {
  LcmImage *mask = lcm_image_new(64, 64, 1);
  for (int i = 0; i < 64 * 64; i++) mask->data[i] = (i % 64) >= 32 ? 1.0f : 0.0f;
  return mask;
}

static LcmImage *run_ok(LcmPipeline *p, const LcmPipelineParams *params) {
  g_autoptr(GError) error = NULL;
  LcmImage *image = lcm_pipeline_run(p, params, &error);
  g_assert_no_error(error);
  g_assert_nonnull(image);
  return image;
}

static gboolean same_image(const LcmImage *a, const LcmImage *b) {
  return a->width == b->width && a->height == b->height && a->channels == b->channels &&
         memcmp(a->data, b->data, sizeof(float) * a->width * a->height * a->channels) == 0;
}

static void txt2img_params(LcmPipelineParams *params, uint64_t seed) {
  lcm_pipeline_params_init(params);
  params->prompt = "a lighthouse at dusk";
  params->width = 64;
  params->height = 48;
  params->guidance_scale = 8.0;
  params->seed = seed;
}

/* Same seed: the same pixels, from the same pipeline (caches warm) and a
 * fresh one; another seed: other pixels. */
static void test_same_seed_same_image(void) {
  LcmPipeline *p = tiny_pipeline("tiny-lcm"), *fresh = tiny_pipeline("tiny-lcm");
  LcmPipelineParams params;
  txt2img_params(&params, 1234);
  LcmImage *a = run_ok(p, &params), *b = run_ok(p, &params), *c = run_ok(fresh, &params);
  g_assert_cmpint(a->width, ==, 64);
  g_assert_cmpint(a->height, ==, 48);
  g_assert_cmpint(a->channels, ==, 3);
  g_assert_true(same_image(a, b));
  g_assert_true(same_image(a, c));
  params.seed = 1235;
  LcmImage *d = run_ok(p, &params);
  g_assert_false(same_image(a, d));
  /* Only the low 32 bits of the seed count, as in torch. */
  params.seed = 1234 + ((uint64_t)7 << 32);
  LcmImage *e = run_ok(p, &params);
  g_assert_true(same_image(a, e));
  lcm_image_free(a);
  lcm_image_free(b);
  lcm_image_free(c);
  lcm_image_free(d);
  lcm_image_free(e);
  lcm_pipeline_free(p);
  lcm_pipeline_free(fresh);
}

/* Cached prompt embeddings and source encodings give what fresh ones give,
 * and the source cache follows the pixels, not the pointer. */
static void test_caches_follow_contents(void) {
  LcmPipeline *p = tiny_pipeline("tiny-lcm");
  LcmImage *source = test_picture();
  LcmPipelineParams params;
  lcm_pipeline_params_init(&params);
  params.mode = LCM_MODE_IMG2IMG;
  params.prompt = "a cat";
  params.image = source;
  params.strength = 0.6;
  params.seed = 5;
  LcmImage *first = run_ok(p, &params);
  params.prompt = "a dog";
  LcmImage *dog = run_ok(p, &params);
  g_assert_false(same_image(first, dog));
  params.prompt = "a cat";
  LcmImage *again = run_ok(p, &params);
  g_assert_true(same_image(first, again));

  source->data[100] = 1.0f - source->data[100];
  source->data[7000] = 1.0f - source->data[7000];
  LcmImage *edited = run_ok(p, &params);
  g_assert_false(same_image(first, edited));
  LcmPipeline *fresh = tiny_pipeline("tiny-lcm");
  LcmImage *edited_fresh = run_ok(fresh, &params);
  g_assert_true(same_image(edited, edited_fresh));
  lcm_pipeline_clear_caches(p);
  LcmImage *cleared = run_ok(p, &params);
  g_assert_true(same_image(edited, cleared));

  lcm_image_free(first);
  lcm_image_free(dog);
  lcm_image_free(again);
  lcm_image_free(edited);
  lcm_image_free(edited_fresh);
  lcm_image_free(cleared);
  lcm_image_free(source);
  lcm_pipeline_free(fresh);
  lcm_pipeline_free(p);
}

typedef struct {
  LcmPipeline *pipeline;
  int calls;
  int cancel_after; /* set the cancel flag after this many steps; 0 = never */
  volatile gint *cancel;
  LcmImage *last_preview;
  int last_timestep;
} ProgressLog;

static void log_progress(const LcmProgress *progress, gpointer data) {
  ProgressLog *log = data;
  g_assert_cmpint(progress->step, ==, log->calls);
  log->calls++;
  g_assert_cmpint(progress->steps, >=, log->calls);
  g_assert_nonnull(progress->denoised);
  log->last_timestep = progress->timestep;
  lcm_image_free(log->last_preview);
  g_autoptr(GError) error = NULL;
  log->last_preview = lcm_pipeline_decode_latents(
      log->pipeline, progress->denoised, progress->latent_width, progress->latent_height, &error);
  g_assert_no_error(error);
  if (log->cancel_after && log->calls == log->cancel_after) g_atomic_int_set(log->cancel, 1);
}

/* A run stopped before decoding gives the latents whose decoding is the
 * whole run's picture, at the latent size of the image asked for. */
static void test_run_latents(void) {
  LcmPipeline *p = tiny_pipeline("tiny-lcm");
  LcmPipelineParams params;
  txt2img_params(&params, 77);
  LcmImage *image = run_ok(p, &params);
  int w = 0, h = 0;
  g_autoptr(GError) error = NULL;
  float *latents = lcm_pipeline_run_latents(p, &params, &w, &h, &error);
  g_assert_no_error(error);
  g_assert_nonnull(latents);
  g_assert_cmpint(w, ==, params.width / 8);
  g_assert_cmpint(h, ==, params.height / 8);
  g_assert_cmpint(lcm_pipeline_latent_channels(p), ==, 4);
  LcmImage *decoded = lcm_pipeline_decode_latents(p, latents, w, h, &error);
  g_assert_no_error(error);
  g_assert_true(same_image(image, decoded));
  g_assert_null(lcm_pipeline_run_latents(p, &params, &w, NULL, &error));
  g_assert_error(error, LCM_ERROR, LCM_ERROR_INVALID);
  g_free(latents);
  lcm_image_free(decoded);
  lcm_image_free(image);
  lcm_pipeline_free(p);
}

/* The latent-to-RGB approximation: a pure first channel gives its RGB row
 * (display scale), zero latents mid grey, large values clamp; only
 * 4-channel latents have one. */
static void test_latents_approx(void) {
  const int w = 3, h = 2, plane = w * h;
  float latents[4 * 3 * 2] = {0};
  latents[0] = 1.0f;                /* pixel 0: channel 0 only */
  latents[3 * plane + 1] = -100.0f; /* pixel 1: far out on channel 3 */
  LcmImage *image = lcm_image_from_latents_approx(latents, 4, w, h);
  g_assert_nonnull(image);
  g_assert_cmpint(image->width, ==, w);
  g_assert_cmpint(image->height, ==, h);
  g_assert_cmpint(image->channels, ==, 3);
  const float channel0[3] = {0.3512f, 0.2297f, 0.3227f};
  for (int c = 0; c < 3; c++) {
    g_assert_cmpfloat_with_epsilon(image->data[c], channel0[c] / 2 + 0.5f, 1e-6);
    g_assert_cmpfloat(image->data[3 + c], ==, 1.0f); /* -100 x negative factors */
    g_assert_cmpfloat(image->data[3 * 2 + c], ==, 0.5f);
  }
  lcm_image_free(image);
  g_assert_null(lcm_image_from_latents_approx(latents, 16, w, h));
}

/* One callback per step; the last step's preview is the result (txt2img
 * decodes the last `denoised`). */
static void test_progress_and_preview(void) {
  LcmPipeline *p = tiny_pipeline("tiny-lcm");
  LcmPipelineParams params;
  txt2img_params(&params, 99);
  params.steps = 3;
  ProgressLog log = {.pipeline = p};
  params.progress = log_progress;
  params.progress_data = &log;
  LcmImage *image = run_ok(p, &params);
  g_assert_cmpint(log.calls, ==, 3);
  g_assert_nonnull(log.last_preview);
  g_assert_true(same_image(image, log.last_preview));
  lcm_image_free(log.last_preview);
  lcm_image_free(image);
  lcm_pipeline_free(p);
}

static void assert_cancelled(LcmPipeline *p, LcmPipelineParams *params, int cancel_after,
                             int expected_steps) {
  volatile gint cancel = 0;
  ProgressLog log = {.pipeline = p, .cancel_after = cancel_after, .cancel = &cancel};
  if (!cancel_after) cancel = 1;
  params->progress = log_progress;
  params->progress_data = &log;
  params->cancel = &cancel;
  g_autoptr(GError) error = NULL;
  LcmImage *image = lcm_pipeline_run(p, params, &error);
  g_assert_null(image);
  g_assert_error(error, LCM_ERROR, LCM_ERROR_CANCELLED);
  g_assert_cmpint(log.calls, ==, expected_steps);
  lcm_image_free(log.last_preview);
}

/* Cancelling stops before the next UNet call; the pipeline runs on after. */
static void test_cancel(void) {
  LcmPipeline *p = tiny_pipeline("tiny-lcm");
  LcmPipelineParams params;
  txt2img_params(&params, 3);
  assert_cancelled(p, &params, 1, 1);
  assert_cancelled(p, &params, 0, 0);
  LcmImage *source = test_picture(), *mask = test_mask();
  params.mode = LCM_MODE_INPAINT;
  params.image = source;
  params.mask = mask;
  assert_cancelled(p, &params, 2, 2);
  params.cancel = NULL;
  params.progress = NULL;
  LcmImage *image = run_ok(p, &params);
  lcm_image_free(image);
  lcm_image_free(source);
  lcm_image_free(mask);
  lcm_pipeline_free(p);
}

static void assert_invalid(LcmPipeline *p, const LcmPipelineParams *params, const char *what) {
  g_autoptr(GError) error = NULL;
  LcmImage *image = lcm_pipeline_run(p, params, &error);
  g_test_message("%s: %s", what, error ? error->message : "(no error)");
  g_assert_null(image);
  g_assert_error(error, LCM_ERROR, LCM_ERROR_INVALID);
}

/* Draw 0 from the generator in rng, then a failure. */
static gboolean failing_noise(int index, float *out, int64_t n, gpointer rng, GError **error) {
  if (index == 0) {
    lcm_rng_randn(rng, out, n);
    return TRUE;
  }
  g_set_error(error, LCM_ERROR, LCM_ERROR_IO, "noise file ended at draw %d", index);
  return FALSE;
}

/* Clip skip changes the prompt's embedding, so the picture; the prompt
 * cache keeps the two apart (same prompt, same seed). */
static void test_clip_skip(void) {
  LcmPipeline *p = tiny_pipeline("tiny-lcm");
  LcmPipelineParams params;
  txt2img_params(&params, 5);
  LcmImage *plain = run_ok(p, &params);
  params.clip_skip = 1;
  LcmImage *skipped = run_ok(p, &params);
  g_assert_false(same_image(plain, skipped));
  params.clip_skip = 0;
  LcmImage *again = run_ok(p, &params);
  g_assert_true(same_image(plain, again));
  lcm_image_free(plain);
  lcm_image_free(skipped);
  lcm_image_free(again);
  lcm_pipeline_free(p);
}

static void test_bad_params(void) {
  LcmPipeline *p = tiny_pipeline("tiny-lcm");
  LcmImage *source = test_picture(), *mask = test_mask();
  LcmImage *odd = lcm_image_new(60, 64, 3), *small_mask = lcm_image_new(32, 32, 1);
  LcmPipelineParams params;

  txt2img_params(&params, 1);
  params.width = 60;
  assert_invalid(p, &params, "width 60");
  txt2img_params(&params, 1);
  params.height = 0;
  assert_invalid(p, &params, "height 0");
  txt2img_params(&params, 1);
  params.steps = 0;
  assert_invalid(p, &params, "0 steps");
  params.steps = LCM_MAX_STEPS + 1;
  assert_invalid(p, &params, "too many steps");
  txt2img_params(&params, 1);
  params.guidance_scale = NAN;
  assert_invalid(p, &params, "NaN guidance");
  txt2img_params(&params, 1);
  params.mode = (LcmMode)7;
  assert_invalid(p, &params, "unknown mode");
  txt2img_params(&params, 1);
  params.clip_skip = 99;
  assert_invalid(p, &params, "clip skip beyond the text encoder's layers");
  params.clip_skip = -1;
  assert_invalid(p, &params, "negative clip skip");

  txt2img_params(&params, 1);
  params.mode = LCM_MODE_IMG2IMG;
  assert_invalid(p, &params, "img2img without an image");
  params.image = source;
  params.strength = 0;
  assert_invalid(p, &params, "strength 0");
  params.strength = 1.5;
  assert_invalid(p, &params, "strength 1.5");
  params.strength = 0.5;
  params.image = odd;
  assert_invalid(p, &params, "source 60 wide");
  params.image = mask;
  assert_invalid(p, &params, "1-channel source");
  params.image = source;
  params.strength = 0.2;
  params.strength_rule = LCM_STRENGTH_SLICE;
  assert_invalid(p, &params, "slice leaving no step");

  params.mode = LCM_MODE_INPAINT;
  params.strength_rule = LCM_STRENGTH_AUTO;
  params.strength = 1.0;
  assert_invalid(p, &params, "inpaint without a mask");
  params.mask = small_mask;
  assert_invalid(p, &params, "mask of another size");
  params.mask = source;
  assert_invalid(p, &params, "3-channel mask");

  /* A failing noise source stops the run with its own error. */
  txt2img_params(&params, 1);
  LcmRng *rng = lcm_rng_new(1);
  params.noise = failing_noise;
  params.noise_data = rng;
  g_autoptr(GError) error = NULL;
  g_assert_null(lcm_pipeline_run(p, &params, &error));
  g_assert_error(error, LCM_ERROR, LCM_ERROR_IO);
  lcm_rng_free(rng);

  lcm_image_free(source);
  lcm_image_free(mask);
  lcm_image_free(odd);
  lcm_image_free(small_mask);
  lcm_pipeline_free(p);
}

/* An inpainting UNet runs only inpainting; guidance defaults per UNet. */
static void test_supports(void) {
  g_autofree char *cases = test_data_path("golden");
  g_autofree char *unet = g_build_filename(cases, "tiny-inpaint", "unet", NULL);
  g_autofree char *lcm = g_build_filename(cases, "tiny-lcm", NULL);
  g_autofree char *vae = g_build_filename(lcm, "vae", NULL);
  g_autofree char *text = g_build_filename(lcm, "text_encoder", NULL);
  g_autofree char *tok = g_build_filename(lcm, "tokenizer", NULL);
  LcmModelParts parts = {.unet = unet, .vae = vae, .text_encoder = text, .tokenizer = tok};
  g_autoptr(GError) error = NULL;
  LcmModel *model = lcm_model_open_parts(&parts, &error);
  g_assert_no_error(error);
  LcmPipeline *inpaint = pipeline_for(model, LCM_PRECISION_FP32);
  lcm_model_free(model);
  g_assert_true(lcm_pipeline_supports(inpaint, LCM_MODE_INPAINT));
  g_assert_false(lcm_pipeline_supports(inpaint, LCM_MODE_TXT2IMG));
  g_assert_false(lcm_pipeline_supports(inpaint, LCM_MODE_IMG2IMG));
  g_assert_cmpfloat(lcm_pipeline_default_guidance(inpaint), ==, 1.0);
  LcmPipelineParams params;
  txt2img_params(&params, 1);
  assert_invalid(inpaint, &params, "txt2img on an inpainting UNet");
  lcm_pipeline_free(inpaint);

  LcmPipeline *p = tiny_pipeline("tiny-lcm");
  g_assert_true(lcm_pipeline_supports(p, LCM_MODE_TXT2IMG));
  g_assert_true(lcm_pipeline_supports(p, LCM_MODE_INPAINT));
  g_assert_cmpfloat(lcm_pipeline_default_guidance(p), ==, 8.0);
  lcm_pipeline_free(p);
}

/* Outside the mask: the source exactly; inside: the result exactly; soft
 * edges in between. */
static void test_composite(void) {
  LcmImage *source = test_picture(), *mask = test_mask(), *result = lcm_image_new(64, 64, 3);
  for (int i = 0; i < 64 * 64 * 3; i++) result->data[i] = 0.25f + 0.5f * (float)(i % 7) / 7.0f;
  LcmImage *expected_inside = lcm_image_new(64, 64, 3);
  memcpy(expected_inside->data, result->data, sizeof(float) * 64 * 64 * 3);
  mask->data[5] = 0.5f; /* a soft pixel at (5, 0) */
  g_autoptr(GError) error = NULL;
  g_assert_true(lcm_image_composite(result, source, mask, &error));
  g_assert_no_error(error);
  for (int i = 0; i < 64 * 64; i++)
    for (int c = 0; c < 3; c++) {
      float got = result->data[3 * i + c];
      if (i == 5)
        g_assert_cmpfloat_with_epsilon(
            got, 0.5f * (source->data[3 * i + c] + expected_inside->data[3 * i + c]), 1e-6);
      else if (mask->data[i] == 0.0f)
        g_assert_true(got == source->data[3 * i + c]);
      else
        g_assert_true(got == expected_inside->data[3 * i + c]);
    }
  LcmImage *small = lcm_image_new(32, 32, 1);
  g_assert_false(lcm_image_composite(result, source, small, &error));
  g_assert_error(error, LCM_ERROR, LCM_ERROR_INVALID);
  lcm_image_free(small);
  lcm_image_free(expected_inside);
  lcm_image_free(result);
  lcm_image_free(source);
  lcm_image_free(mask);
}

/* bf16 where the CPU has it, judged against fp32 by cosine similarity. */
static void test_bf16(void) {
  g_autofree char *path = test_data_path("golden/tiny-lcm");
  g_autoptr(GError) error = NULL;
  LcmModel *model = lcm_model_open(path, &error);
  g_assert_no_error(error);
  LcmPipeline *bf16 = lcm_pipeline_new(model, LCM_PRECISION_BF16, &error);
  if (test_skip_if_unsupported(error, LCM_PRECISION_BF16)) {
    lcm_model_free(model);
    return;
  }
  g_assert_no_error(error);
  LcmPipeline *fp32 = pipeline_for(model, LCM_PRECISION_FP32);
  lcm_model_free(model);
  LcmPipelineParams params;
  txt2img_params(&params, 11);
  LcmImage *a = run_ok(fp32, &params), *b = run_ok(bf16, &params);
  double cosine = test_cosine(a->data, b->data, (size_t)a->width * a->height * 3);
  g_test_message("bf16 vs fp32 cosine %.5f", cosine);
  g_assert_cmpfloat(cosine, >=, BF16_MIN_COSINE);
  lcm_image_free(a);
  lcm_image_free(b);
  lcm_pipeline_free(fp32);
  lcm_pipeline_free(bf16);
}

/* A copy of tiny-lcm's `network` folder in `dir` whose tensor `tensor` holds
 * one NaN, as a damaged download would. */
static void write_damaged_network(const char *dir, const char *network, const char *tensor) {
  g_autofree char *rel = g_build_filename("golden", "tiny-lcm", network, NULL);
  g_autofree char *src = test_data_path(rel);
  g_autofree char *dst = g_build_filename(dir, network, NULL);
  g_assert_cmpint(g_mkdir_with_parents(dst, 0700), ==, 0);
  g_autofree char *config_src = g_build_filename(src, "config.json", NULL);
  g_autofree char *config_dst = g_build_filename(dst, "config.json", NULL);
  g_autofree char *config = NULL;
  gsize config_len = 0;
  g_assert_true(g_file_get_contents(config_src, &config, &config_len, NULL));
  g_assert_true(g_file_set_contents(config_dst, config, (gssize)config_len, NULL));

  g_autofree char *weights = g_build_filename(src, "diffusion_pytorch_model.safetensors", NULL);
  g_autoptr(GError) error = NULL;
  StFile *file = st_open(weights, &error);
  g_assert_no_error(error);
  guint count = st_count(file);
  StWriteTensor *out = g_new0(StWriteTensor, count);
  float **copies = g_new0(float *, count);
  gboolean found = FALSE;
  for (guint i = 0; i < count; i++) {
    const StTensor *t = st_tensor_at(file, i);
    copies[i] = g_new(float, st_numel(t));
    st_tensor_to_f32(t, copies[i]);
    if (strcmp(t->name, tensor) == 0) {
      copies[i][0] = NAN;
      found = TRUE;
    }
    out[i] = (StWriteTensor){t->name, ST_F32, t->ndims, t->shape, copies[i]};
  }
  g_assert_true(found);
  g_autofree char *damaged = g_build_filename(dst, "diffusion_pytorch_model.safetensors", NULL);
  g_assert_true(st_write(damaged, out, count, NULL, &error));
  for (guint i = 0; i < count; i++) g_free(copies[i]);
  g_free(copies);
  g_free(out);
  st_close(file);
}

/* A network that computes NaN (a damaged weight) stops the run with an error
 * naming it, and no image is returned. */
static void test_not_finite(void) {
  static const struct {
    const char *network, *tensor, *expected;
  } cases[] = {
      {"unet", "conv_out.bias", "UNet"},
      {"vae", "decoder.conv_out.bias", "VAE decoder"},
  };
  for (guint c = 0; c < G_N_ELEMENTS(cases); c++) {
    g_autofree char *dir = g_dir_make_tmp("lcm-nan-XXXXXX", NULL);
    write_damaged_network(dir, cases[c].network, cases[c].tensor);
    g_autofree char *tiny = test_data_path("golden/tiny-lcm");
    g_autofree char *unet = g_build_filename(c == 0 ? dir : tiny, "unet", NULL);
    g_autofree char *vae = g_build_filename(c == 1 ? dir : tiny, "vae", NULL);
    g_autofree char *text_encoder = g_build_filename(tiny, "text_encoder", NULL);
    g_autofree char *tokenizer = g_build_filename(tiny, "tokenizer", NULL);
    g_autofree char *scheduler = g_build_filename(tiny, "scheduler", NULL);
    LcmModelParts parts = {.unet = unet,
                           .vae = vae,
                           .text_encoder = text_encoder,
                           .tokenizer = tokenizer,
                           .scheduler = scheduler};
    g_autoptr(GError) error = NULL;
    LcmModel *model = lcm_model_open_parts(&parts, &error);
    g_assert_no_error(error);
    LcmPipeline *p = pipeline_for(model, LCM_PRECISION_FP32);
    lcm_model_free(model);
    LcmPipelineParams params;
    txt2img_params(&params, 7);
    LcmImage *image = lcm_pipeline_run(p, &params, &error);
    g_assert_null(image);
    test_expect_error(error, LCM_ERROR_NOT_FINITE, cases[c].expected, "NaN", NULL);
    if (c == 0) test_expect_error(error, LCM_ERROR_NOT_FINITE, "at step 1", NULL);
    lcm_pipeline_free(p);
    test_remove_tree(dir);
  }
}

int main(int argc, char **argv) {
  g_test_init(&argc, &argv, NULL);
  JsonArray *cases = test_golden_cases();
  GPtrArray *names = g_ptr_array_new_with_free_func(g_free);
  for (guint i = 0; i < json_array_get_length(cases); i++) {
    JsonObject *c = json_array_get_object_element(cases, i);
    if (!g_str_has_prefix(json_object_get_string_member(c, "component"), "pipeline_")) continue;
    const char *name = json_object_get_string_member(c, "name");
    g_ptr_array_add(names, g_strdup_printf("/pipeline/golden/%s", name));
    g_test_add_data_func(names->pdata[names->len - 1], name, test_golden);
    if (json_object_has_member(json_object_get_object_member(c, "params"), "generator_seed")) {
      g_ptr_array_add(names, g_strdup_printf("/pipeline/golden-seed/%s", name));
      g_test_add_data_func(names->pdata[names->len - 1], name, test_golden_seed);
    }
  }
  g_test_add_func("/pipeline/same-seed-same-image", test_same_seed_same_image);
  g_test_add_func("/pipeline/caches-follow-contents", test_caches_follow_contents);
  g_test_add_func("/pipeline/progress-and-preview", test_progress_and_preview);
  g_test_add_func("/pipeline/run-latents", test_run_latents);
  g_test_add_func("/pipeline/latents-approx", test_latents_approx);
  g_test_add_func("/pipeline/cancel", test_cancel);
  g_test_add_func("/pipeline/bad-params", test_bad_params);
  g_test_add_func("/pipeline/clip-skip", test_clip_skip);
  g_test_add_func("/pipeline/supports", test_supports);
  g_test_add_func("/pipeline/composite", test_composite);
  g_test_add_func("/pipeline/bf16", test_bf16);
  g_test_add_func("/pipeline/not-finite", test_not_finite);
  int status = g_test_run();
  g_ptr_array_unref(names);
  return status;
}
