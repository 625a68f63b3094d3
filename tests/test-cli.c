/* gimp-lcm-cli txt2img, img2img and inpaint end to end: the CLI (found
 * through $LCM_CLI) is spawned on the tiny test model and each PNG it writes
 * is compared pixel for pixel with the same run through the C API; the same
 * seed gives the same bytes; bad inputs give a message and a failure status. */
#include "fake-hub.h"
#include "lcm.h"
#include "testutil.h"

#include <gdk-pixbuf/gdk-pixbuf.h>
#include <glib/gstdio.h>
#include <math.h>
#include <stdarg.h>
#include <string.h>
#include <sys/wait.h>

#define SIDE 64
#define SEED 1234
#define MAX_ARGS 40

/* The model every run uses, with or without LoRAs. */
typedef struct {
  const char *path; /* under tests/data */
  float scale;
} LoraUse;

static const LoraUse test_loras[] = {{"golden/lora/lora_a_kohya.safetensors", 0.5f},
                                     {"golden/lora/lora_b_kohya.safetensors", 0.8f}};

static char *work_dir;

static char *work_path(const char *name) {
  return g_build_filename(work_dir, name, NULL);
}

/* ---- Running the CLI ------------------------------------------------------------------- */

typedef struct {
  int status; /* exit status, -1 when killed by a signal */
  char *out, *err;
} CliResult;

static void cli_result_clear(CliResult *r) {
  g_free(r->out);
  g_free(r->err);
}

/* Runs gimp-lcm-cli with the NULL-terminated arguments. */
static CliResult run_cli_argv(const char *const *args) {
  const char *cli = g_getenv("LCM_CLI");
  g_assert_nonnull(cli);
  const char *argv[MAX_ARGS + 2] = {cli};
  int n = 0;
  while (args[n]) {
    g_assert_cmpint(n, <, MAX_ARGS);
    argv[n + 1] = args[n];
    n++;
  }
  CliResult r = {0};
  int wait_status = 0;
  g_autoptr(GError) error = NULL;
  g_assert_true(g_spawn_sync(NULL, (char **)argv, NULL, G_SPAWN_DEFAULT, NULL, NULL, &r.out, &r.err,
                             &wait_status, &error));
  g_assert_no_error(error);
  r.status = WIFEXITED(wait_status) ? WEXITSTATUS(wait_status) : -1;
  if (r.status != 0) g_test_message("gimp-lcm-cli %s: status %d: %s", args[0], r.status, r.err);
  return r;
}

static void append_args(GPtrArray *args, ...) G_GNUC_NULL_TERMINATED;
static void append_args(GPtrArray *args, ...) {
  va_list list;
  va_start(list, args);
  for (const char *arg; (arg = va_arg(list, const char *));) g_ptr_array_add(args, g_strdup(arg));
  va_end(list);
}

#define run_cli(...) run_cli_argv((const char *const[]){__VA_ARGS__, NULL})

static void assert_cli_ok(CliResult r) {
  g_assert_cmpint(r.status, ==, 0);
  cli_result_clear(&r);
}

/* The run fails with `status` and a one-line message containing `needle`. */
static void assert_cli_fails(CliResult r, int status, const char *needle) {
  g_assert_cmpint(r.status, ==, status);
  g_assert_nonnull(strstr(r.err, needle));
  g_assert_cmpstr(r.out, ==, "");
  cli_result_clear(&r);
}

/* ---- Pictures ------------------------------------------------------------------------ */

typedef struct {
  int width, height;
  guint8 *rgb; /* height x width x 3 */
} Picture;

static Picture picture_read(const char *path) {
  g_autoptr(GError) error = NULL;
  GdkPixbuf *pixbuf = gdk_pixbuf_new_from_file(path, &error);
  g_assert_no_error(error);
  g_assert_cmpint(gdk_pixbuf_get_n_channels(pixbuf), ==, 3);
  g_assert_cmpint(gdk_pixbuf_get_bits_per_sample(pixbuf), ==, 8);
  Picture p = {gdk_pixbuf_get_width(pixbuf), gdk_pixbuf_get_height(pixbuf), NULL};
  p.rgb = g_new(guint8, (size_t)p.width * p.height * 3);
  const guint8 *pixels = gdk_pixbuf_read_pixels(pixbuf);
  for (int y = 0; y < p.height; y++)
    memcpy(p.rgb + (size_t)y * p.width * 3, pixels + (size_t)y * gdk_pixbuf_get_rowstride(pixbuf),
           (size_t)p.width * 3);
  g_object_unref(pixbuf);
  return p;
}

/* The PNG rule: round(clamp(x, 0, 1) x 255). */
static Picture picture_from_image(const LcmImage *image) {
  Picture p = {image->width, image->height,
               g_new(guint8, (size_t)image->width * image->height * 3)};
  for (size_t i = 0; i < (size_t)p.width * p.height * 3; i++)
    p.rgb[i] = (guint8)roundf(CLAMP(image->data[i], 0.0f, 1.0f) * 255.0f);
  return p;
}

/* A source picture as the CLI reads it: each byte / 255. */
static LcmImage *image_from_picture(const Picture *p) {
  LcmImage *image = lcm_image_new(p->width, p->height, 3);
  for (size_t i = 0; i < (size_t)p->width * p->height * 3; i++) image->data[i] = p->rgb[i] / 255.0f;
  return image;
}

static void assert_pictures_equal(const Picture *a, const Picture *b) {
  g_assert_cmpint(a->width, ==, b->width);
  g_assert_cmpint(a->height, ==, b->height);
  size_t n = (size_t)a->width * a->height * 3, differing = 0;
  for (size_t i = 0; i < n; i++) differing += a->rgb[i] != b->rgb[i];
  g_assert_cmpuint(differing, ==, 0);
}

/* The grey mask the inpaint test uses: keep the left columns (0), a soft
 * edge (128), repaint the rest (255). */
static guint8 mask_value(int x) {
  return x < SIDE / 2 - 8 ? 0 : x < SIDE / 2 ? 128 : 255;
}

static void write_rgb_png(const char *path, int width, int height, guint8 (*value)(int x)) {
  GdkPixbuf *pixbuf = gdk_pixbuf_new(GDK_COLORSPACE_RGB, FALSE, 8, width, height);
  guint8 *pixels = gdk_pixbuf_get_pixels(pixbuf);
  for (int y = 0; y < height; y++)
    for (int x = 0; x < width; x++)
      memset(pixels + (size_t)y * gdk_pixbuf_get_rowstride(pixbuf) + 3 * x, value(x), 3);
  g_autoptr(GError) error = NULL;
  g_assert_true(gdk_pixbuf_save(pixbuf, path, "png", &error, NULL));
  g_object_unref(pixbuf);
}

static LcmImage *test_mask(void) {
  LcmImage *mask = lcm_image_new(SIDE, SIDE, 1);
  for (int y = 0; y < SIDE; y++)
    for (int x = 0; x < SIDE; x++) mask->data[y * SIDE + x] = mask_value(x) / 255.0f;
  return mask;
}

/* ---- The same runs through the C API --------------------------------------------------- */

static char *model_path(void) {
  return test_data_path("golden/tiny-lcm");
}

static LcmPipeline *api_pipeline(gboolean with_loras) {
  g_autofree char *path = model_path();
  g_autoptr(GError) error = NULL;
  LcmModel *model = lcm_model_open(path, &error);
  g_assert_no_error(error);
  for (size_t i = 0; with_loras && i < G_N_ELEMENTS(test_loras); i++) {
    g_autofree char *lora = test_data_path(test_loras[i].path);
    g_assert_true(lcm_model_add_lora(model, lora, test_loras[i].scale, &error));
  }
  LcmPipeline *pipeline = lcm_pipeline_new(model, LCM_PRECISION_FP32, &error);
  g_assert_no_error(error);
  lcm_model_free(model);
  return pipeline;
}

/* Runs params (the model's default guidance) and composites an inpainting. */
static Picture api_run(LcmPipeline *pipeline, LcmPipelineParams *params) {
  params->guidance_scale = lcm_pipeline_default_guidance(pipeline);
  g_autoptr(GError) error = NULL;
  LcmImage *result = lcm_pipeline_run(pipeline, params, &error);
  g_assert_no_error(error);
  if (params->mode == LCM_MODE_INPAINT)
    g_assert_true(lcm_image_composite(result, params->image, params->mask, &error));
  Picture p = picture_from_image(result);
  lcm_image_free(result);
  return p;
}

/* ---- Tests ----------------------------------------------------------------------------- */

static gboolean files_equal(const char *a, const char *b) {
  g_autofree char *bytes_a = NULL, *bytes_b = NULL;
  gsize length_a, length_b;
  g_assert_true(g_file_get_contents(a, &bytes_a, &length_a, NULL));
  g_assert_true(g_file_get_contents(b, &bytes_b, &length_b, NULL));
  return length_a == length_b && memcmp(bytes_a, bytes_b, length_a) == 0;
}

/* The same seed twice gives the same PNG bytes, with 1 and with 2 threads. */
static void test_same_seed_same_bytes(void) {
  g_autofree char *model = model_path();
  const char *threads[] = {"1", "2"};
  for (size_t t = 0; t < G_N_ELEMENTS(threads); t++) {
    g_autofree char *first = work_path("seed-first.png"), *second = work_path("seed-second.png");
    const char *outputs[] = {first, second};
    for (int run = 0; run < 2; run++)
      assert_cli_ok(run_cli("txt2img", "a red cube", "-o", outputs[run], "--model", model,
                            "--precision", "fp32", "--seed", "77", "--steps", "3", "--width", "48",
                            "--height", "32", "--threads", threads[t]));
    g_assert_true(files_equal(first, second));
  }
}

/* --no-weight-cache writes nothing even where GIMP_LCM_WEIGHT_CACHE names a
 * folder; without it the second process reads what the first wrote and
 * gives the same bytes. */
static void test_weight_cache_flag(void) {
  g_autofree char *model = model_path(), *cache = work_path("weight-cache");
  g_autofree char *first = work_path("cache-first.png"), *second = work_path("cache-second.png");
  g_setenv("GIMP_LCM_WEIGHT_CACHE", cache, TRUE);
  assert_cli_ok(run_cli("txt2img", "a red cube", "-o", first, "--model", model, "--precision",
                        "fp32", "--seed", "5", "--steps", "2", "--width", "32", "--height", "32",
                        "--no-weight-cache"));
  g_assert_false(g_file_test(cache, G_FILE_TEST_EXISTS));
  for (int run = 0; run < 2; run++)
    assert_cli_ok(run_cli("txt2img", "a red cube", "-o", second, "--model", model, "--precision",
                          "fp32", "--seed", "5", "--steps", "2", "--width", "32", "--height",
                          "32"));
  g_setenv("GIMP_LCM_WEIGHT_CACHE", "off", TRUE);
  GDir *dir = g_dir_open(cache, 0, NULL);
  g_assert_nonnull(dir);
  int files = 0;
  for (const char *name; (name = g_dir_read_name(dir));) {
    g_autofree char *path = g_build_filename(cache, name, NULL);
    g_unlink(path);
    files++;
  }
  g_dir_close(dir);
  g_rmdir(cache);
  g_assert_cmpint(files, ==, 4); /* text encoder, UNet, its fp32 time embeddings, VAE */
  g_assert_true(files_equal(first, second));
}

static void test_txt2img_matches_api(gconstpointer with_loras_data) {
  gboolean with_loras = GPOINTER_TO_INT(with_loras_data);
  g_autofree char *model = model_path(), *out = work_path("txt2img.png");
  g_autoptr(GPtrArray) args = g_ptr_array_new_with_free_func(g_free);
  append_args(args, "txt2img", "an astronaut on a horse", "-o", out, "--model", model,
              "--precision", "fp32", "--seed", G_STRINGIFY(SEED), "--steps", "2", "--width",
              G_STRINGIFY(SIDE), "--height", "40", NULL);
  for (size_t i = 0; with_loras && i < G_N_ELEMENTS(test_loras); i++) {
    g_autofree char *lora = test_data_path(test_loras[i].path);
    g_ptr_array_add(args, g_strdup("--lora"));
    g_ptr_array_add(args, g_strdup_printf("%s:%g", lora, test_loras[i].scale));
  }
  g_ptr_array_add(args, NULL);
  CliResult r = run_cli_argv((const char *const *)args->pdata);
  g_assert_nonnull(strstr(r.out, "seed " G_STRINGIFY(SEED)));
  assert_cli_ok(r);
  Picture cli = picture_read(out);
  LcmPipeline *pipeline = api_pipeline(with_loras);
  LcmPipelineParams params;
  lcm_pipeline_params_init(&params);
  params.prompt = "an astronaut on a horse";
  params.seed = SEED;
  params.steps = 2;
  params.width = SIDE;
  params.height = 40;
  Picture api = api_run(pipeline, &params);
  assert_pictures_equal(&cli, &api);
  lcm_pipeline_free(pipeline);
  g_free(cli.rgb);
  g_free(api.rgb);
}

/* txt2img -> img2img on its output -> inpaint of that with a mask PNG. */
static void test_chain_matches_api(void) {
  g_autofree char *model = model_path(), *generated = work_path("chain-txt2img.png"),
                  *redrawn = work_path("chain-img2img.png"), *mask_png = work_path("mask.png"),
                  *inpainted = work_path("chain-inpaint.png");
  LcmPipeline *pipeline = api_pipeline(FALSE);

  assert_cli_ok(run_cli("txt2img", "a house", "-o", generated, "--model", model, "--precision",
                        "fp32", "--seed", "5", "--steps", "2", "--width", G_STRINGIFY(SIDE),
                        "--height", G_STRINGIFY(SIDE)));
  Picture source = picture_read(generated);

  assert_cli_ok(run_cli("img2img", "a house in winter", "-i", generated, "-o", redrawn, "--model",
                        model, "--precision", "fp32", "--seed", "6", "--steps", "3", "--strength",
                        "0.6", "--negative", "summer"));
  LcmImage *source_image = image_from_picture(&source);
  LcmPipelineParams params;
  lcm_pipeline_params_init(&params);
  params.mode = LCM_MODE_IMG2IMG;
  params.prompt = "a house in winter";
  params.negative_prompt = "summer";
  params.seed = 6;
  params.steps = 3;
  params.strength = 0.6;
  params.image = source_image;
  Picture cli = picture_read(redrawn), api = api_run(pipeline, &params);
  assert_pictures_equal(&cli, &api);
  g_free(cli.rgb);
  g_free(api.rgb);

  write_rgb_png(mask_png, SIDE, SIDE, mask_value);
  assert_cli_ok(run_cli("inpaint", "a door", "-i", generated, "-m", mask_png, "-o", inpainted,
                        "--model", model, "--precision", "fp32", "--seed", "7", "--steps", "4",
                        "--strength", "0.75", "--strength-rule", "slice"));
  LcmImage *mask = test_mask();
  lcm_pipeline_params_init(&params);
  params.mode = LCM_MODE_INPAINT;
  params.prompt = "a door";
  params.seed = 7;
  params.steps = 4;
  params.strength = 0.75;
  params.strength_rule = LCM_STRENGTH_SLICE;
  params.image = source_image;
  params.mask = mask;
  cli = picture_read(inpainted);
  api = api_run(pipeline, &params);
  assert_pictures_equal(&cli, &api);
  /* Where the mask is 0 the source comes through exactly; elsewhere the
   * model painted something else. */
  size_t kept = 0, changed = 0;
  for (int y = 0; y < SIDE; y++)
    for (int x = 0; x < SIDE; x++)
      for (int c = 0; c < 3; c++) {
        size_t i = ((size_t)y * SIDE + x) * 3 + c;
        if (mask_value(x) == 0) {
          g_assert_cmpuint(cli.rgb[i], ==, source.rgb[i]);
          kept++;
        } else {
          changed += cli.rgb[i] != source.rgb[i];
        }
      }
  g_assert_cmpuint(kept, >, 0);
  g_assert_cmpuint(changed, >, 0);

  g_free(cli.rgb);
  g_free(api.rgb);
  g_free(source.rgb);
  lcm_image_free(mask);
  lcm_image_free(source_image);
  lcm_pipeline_free(pipeline);
}

static guint8 grey(int x) {
  return (guint8)(x * 4);
}

static void test_bad_inputs(void) {
  g_autofree char *model = model_path(), *out = work_path("never.png"),
                  *missing = work_path("missing.png"), *not_png = work_path("not-a-png.png"),
                  *source = work_path("source.png"), *small_mask = work_path("small-mask.png"),
                  *odd = work_path("odd.png");
  g_assert_true(g_file_set_contents(not_png, "this is text, not a picture\n", -1, NULL));
  write_rgb_png(source, SIDE, SIDE, grey);
  write_rgb_png(small_mask, SIDE, SIDE / 2, grey);
  write_rgb_png(odd, 60, SIDE, grey);

  assert_cli_fails(run_cli("img2img", "x", "-i", missing, "-o", out, "--model", model), 1,
                   "missing.png");
  assert_cli_fails(run_cli("img2img", "x", "-i", not_png, "-o", out, "--model", model), 1,
                   "not-a-png.png");
  assert_cli_fails(run_cli("img2img", "x", "-i", odd, "-o", out, "--model", model), 1,
                   "multiples of 8");
  assert_cli_fails(
      run_cli("inpaint", "x", "-i", source, "-m", small_mask, "-o", out, "--model", model), 1,
      "the mask must have the source's size");
  assert_cli_fails(
      run_cli("inpaint", "x", "-i", source, "-m", not_png, "-o", out, "--model", model), 1,
      "not-a-png.png");
  /* Found by tests/fuzz/fuzz-image (its corpus keeps these files): the GIF
   * loader returned part of a damaged file with an error (leaked, and the
   * part used); the BMP loader allocated 2 GB for a 178-byte file (only PNG
   * and JPEG are read now); a 200-byte PNG announcing 20000 x 20000 pixels
   * was decoded into 1.2 GB before anything checked its size; a 246-byte JPEG
   * announcing 15624 x 2048 pixels took seconds and a GB to decode. */
  g_autofree char *damaged_gif = g_test_build_filename(G_TEST_DIST, "fuzz", "corpus", "image",
                                                       "truncated-gif-with-error.gif", NULL);
  g_autofree char *bomb = g_test_build_filename(G_TEST_DIST, "fuzz", "corpus", "image",
                                                "announces-20000x20000.png", NULL);
  g_autofree char *bmp = g_test_build_filename(G_TEST_DIST, "fuzz", "corpus", "image",
                                               "bmp-header-allocates-2gb.bmp", NULL);
  assert_cli_fails(run_cli("img2img", "x", "-i", damaged_gif, "-o", out, "--model", model), 1,
                   "truncated-gif-with-error.gif: not a PNG or JPEG picture");
  assert_cli_fails(run_cli("img2img", "x", "-i", bmp, "-o", out, "--model", model), 1,
                   "bmp-header-allocates-2gb.bmp: not a PNG or JPEG picture");
  /* a PNG cut short is damaged, not the part of it that decodes */
  g_autofree char *cut = work_path("cut.png");
  g_autofree char *bytes = NULL;
  gsize length;
  g_assert_true(g_file_get_contents(source, &bytes, &length, NULL));
  g_assert_true(g_file_set_contents(cut, bytes, (gssize)(length / 2), NULL));
  assert_cli_fails(run_cli("img2img", "x", "-i", cut, "-o", out, "--model", model), 1,
                   "cut.png: damaged png picture");
  assert_cli_fails(
      run_cli("img2img", "x", "-i", bomb, "-o", out, "--model", model), 1,
      "is 20000x20000 pixels; pictures of at most 16384 pixels per side and 16 megapixels");
  assert_cli_fails(run_cli("inpaint", "x", "-i", source, "-m", bomb, "-o", out, "--model", model),
                   1, "announces-20000x20000.png");
  g_autofree char *wide_bomb = g_test_build_filename(G_TEST_DIST, "fuzz", "corpus", "image",
                                                     "announces-15624x2048.jpg", NULL);
  assert_cli_fails(run_cli("img2img", "x", "-i", wide_bomb, "-o", out, "--model", model), 1,
                   "is 15624x2048 pixels; pictures of at most 16384 pixels per side and 16 "
                   "megapixels");
  /* gdk_pixbuf_get_file_info finds no size in this one, which then decodes
   * to a GB in seconds: the header is read by picture.c itself. */
  g_autofree char *unread_bomb = g_test_build_filename(G_TEST_DIST, "fuzz", "corpus", "image",
                                                       "no-file-info-32776x2048.jpg", NULL);
  assert_cli_fails(run_cli("img2img", "x", "-i", unread_bomb, "-o", out, "--model", model), 1,
                   "is 32776x2048 pixels; pictures of at most 16384 pixels per side");
  assert_cli_fails(run_cli("txt2img", "x", "-o", out, "--model", missing), 1, "missing.png");
  assert_cli_fails(run_cli("txt2img", "x", "-o", out, "--model", model, "--lora", missing), 1,
                   "missing.png");
  assert_cli_fails(run_cli("txt2img", "x", "-o", out, "--lora", "style.safetensors:strong"), 2,
                   "FILE:SCALE");
  assert_cli_fails(run_cli("txt2img", "x", "-o", out, "--lora", ":0.5"), 2, "no file");
  assert_cli_fails(run_cli("txt2img", "x", "-o", out, "--seed", "abc"), 2, "--seed");
  assert_cli_fails(run_cli("txt2img", "x", "-o", out, "--steps", "many"), 2, "many");
  assert_cli_fails(run_cli("txt2img", "x", "-o", out, "--precision", "fp8"), 2, "fp8");
  assert_cli_fails(run_cli("txt2img", "x", "-o", out, "--clip-skip", "-1"), 2, "--clip-skip -1");
  assert_cli_fails(run_cli("txt2img", "x"), 2, "-o OUT.png");
  assert_cli_fails(run_cli("img2img", "x", "-o", out), 2, "-i IN.png");
  assert_cli_fails(run_cli("inpaint", "x", "-i", source, "-o", out), 2, "-m MASK.png");
  assert_cli_fails(run_cli("txt2img", "-o", out), 2, "PROMPT");
  /* Parameters the pipeline refuses. */
  assert_cli_fails(run_cli("txt2img", "x", "-o", out, "--model", model, "--width", "30"), 1,
                   "multiple of 8");
  assert_cli_fails(run_cli("txt2img", "x", "-o", out, "--model", model, "--steps", "0"), 1,
                   "steps");
  assert_cli_fails(run_cli("txt2img", "x", "-o", out, "--model", model, "--clip-skip", "9"), 1,
                   "clip skip 9");
  g_assert_false(g_file_test(out, G_FILE_TEST_EXISTS));
}

/* models list / get / verify against the fake Hub, then a picture made with
 * the downloaded model named by its catalogue name. */
static void test_models_get(void) {
  FakeHub *hub = fake_hub_start();
  g_autofree char *tiny = lcm_find_data_file("tiny-lcm");
  fake_hub_add_repo(hub, "SimianLuo/LCM_Dreamshaper_v7", tiny);
  g_autofree char *models = work_path("models");
  g_autofree char *saved_endpoint = g_strdup(g_getenv("HF_ENDPOINT"));
  g_setenv("HF_ENDPOINT", fake_hub_endpoint(hub), TRUE);
  g_setenv("GIMP_LCM_MODELS", models, TRUE);

  CliResult r = run_cli("models", "list");
  g_assert_cmpint(r.status, ==, 0);
  g_assert_nonnull(strstr(r.out, "LCM_Dreamshaper_v7"));
  g_assert_nonnull(strstr(r.out, "not downloaded"));
  g_assert_nonnull(strstr(r.out, "made of several Hub repositories"));
  g_assert_nonnull(strstr(r.out, "latent-consistency/lcm-ssd-1b (into unet/), segmind/SSD-1B"));
  cli_result_clear(&r);

  r = run_cli("models", "get", "LCM_Dreamshaper_v7");
  g_assert_cmpint(r.status, ==, 0);
  g_assert_nonnull(strstr(r.err, "(file 12/12 vae/diffusion_pytorch_model.safetensors)"));
  g_assert_nonnull(strstr(r.err, " MB of "));
  g_autofree char *installed = g_build_filename(models, "LCM_Dreamshaper_v7", NULL);
  g_assert_nonnull(strstr(r.out, installed));
  cli_result_clear(&r);
  assert_cli_ok(run_cli("models", "verify", "SimianLuo/LCM_Dreamshaper_v7"));

  g_autofree char *out = work_path("downloaded.png");
  assert_cli_ok(run_cli("txt2img", "a lighthouse", "-o", out, "--model", "LCM_Dreamshaper_v7",
                        "--width", "64", "--height", "64", "--steps", "1", "--seed", "3"));
  Picture picture = picture_read(out);
  g_assert_cmpint(picture.width, ==, 64);
  g_free(picture.rgb);
  g_unlink(out);

  /* Not on this Hub: a 404, said plainly; nothing installed. */
  assert_cli_fails(run_cli("models", "get", "taesd"), 1, "HTTP 404");
  assert_cli_fails(run_cli("models", "verify", "taesd"), 1, "not installed");
  assert_cli_fails(run_cli("models", "get", "no-such-model"), 1, "not in the catalogue");
  assert_cli_fails(run_cli("models", "fetch"), 2, "usage");
  g_autofree char *taesd = g_build_filename(models, "taesd", NULL);
  g_assert_false(g_file_test(taesd, G_FILE_TEST_EXISTS));

  g_setenv("HF_ENDPOINT", saved_endpoint, TRUE);
  g_unsetenv("GIMP_LCM_MODELS");
  test_remove_tree(models);
  fake_hub_stop(hub);
}

static void copy_into(const char *from, const char *to) {
  g_autofree char *data = NULL;
  gsize length = 0;
  g_assert_true(g_file_get_contents(from, &data, &length, NULL));
  g_autofree char *dir = g_path_get_dirname(to);
  g_assert_cmpint(g_mkdir_with_parents(dir, 0755), ==, 0);
  g_assert_true(g_file_set_contents(to, data, (gssize)length, NULL));
}

/* The catalogue's lcm-ssd-1b as it is (fp16 file names, two repositories)
 * from a fake Hub serving the tiny SSD-1B-like UNet as
 * latent-consistency/lcm-ssd-1b and the tiny SDXL's other parts as
 * segmind/SSD-1B: get, verify, list, then a picture made with it by name. */
static void test_models_get_combined(void) {
  g_autoptr(GPtrArray) catalogue = lcm_catalogue_load(NULL, NULL);
  g_assert_nonnull(catalogue);
  const LcmCatalogueEntry *entry = lcm_catalogue_find(catalogue, "lcm-ssd-1b");
  g_assert_nonnull(entry);
  g_assert_cmpint(entry->n_sources, ==, 2);
  g_autofree char *unet_repo = work_path("hub-lcm-ssd-1b");
  g_autofree char *base_repo = work_path("hub-ssd-1b");
  g_autofree char *tiny_unet = test_data_path("golden-sdxl/tiny-ssd1b-lcm/unet");
  g_autofree char *tiny_sdxl = test_data_path("golden-sdxl/tiny-sdxl-lcm");
  const char *dirs[] = {unet_repo, base_repo};
  const char *tiny[] = {tiny_unet, tiny_sdxl};
  for (int s = 0; s < 2; s++)
    for (char **file = entry->sources[s].files; *file; file++) {
      /* The tiny models have no fp16 variants: the same bytes under the name. */
      g_auto(GStrv) parts = g_strsplit(*file, ".fp16.", 2);
      g_autofree char *plain = g_strjoinv(".", parts);
      g_autofree char *from = g_build_filename(tiny[s], plain, NULL);
      g_autofree char *to = g_build_filename(dirs[s], *file, NULL);
      copy_into(from, to);
    }
  FakeHub *hub = fake_hub_start();
  fake_hub_add_repo(hub, "latent-consistency/lcm-ssd-1b", unet_repo);
  fake_hub_add_repo(hub, "segmind/SSD-1B", base_repo);
  g_autofree char *models = work_path("models-combined");
  g_autofree char *saved_endpoint = g_strdup(g_getenv("HF_ENDPOINT"));
  g_setenv("HF_ENDPOINT", fake_hub_endpoint(hub), TRUE);
  g_setenv("GIMP_LCM_MODELS", models, TRUE);

  CliResult r = run_cli("models", "get", "lcm-ssd-1b");
  g_assert_cmpint(r.status, ==, 0);
  g_assert_nonnull(strstr(r.err, "latent-consistency/lcm-ssd-1b@"));
  g_assert_nonnull(strstr(r.err, " + segmind/SSD-1B@main"));
  g_assert_nonnull(
      strstr(r.err, "(file 18/18 vae/diffusion_pytorch_model.fp16.safetensors (segmind/SSD-1B))"));
  g_autofree char *installed = g_build_filename(models, "lcm-ssd-1b", NULL);
  g_assert_nonnull(strstr(r.out, installed));
  cli_result_clear(&r);
  g_autofree char *unet = g_build_filename(installed, "unet", "config.json", NULL);
  g_assert_true(g_file_test(unet, G_FILE_TEST_IS_REGULAR));
  assert_cli_ok(run_cli("models", "verify", "lcm-ssd-1b"));
  r = run_cli("models", "list");
  g_assert_cmpint(r.status, ==, 0);
  g_autofree char *listed = g_strdup_printf("models folder   %s", installed);
  g_assert_nonnull(strstr(r.out, listed));
  cli_result_clear(&r);

  g_autofree char *out = work_path("combined.png");
  assert_cli_ok(run_cli("txt2img", "a lighthouse", "-o", out, "--model", "lcm-ssd-1b", "--width",
                        "64", "--height", "64", "--steps", "1", "--seed", "3"));
  Picture picture = picture_read(out);
  g_assert_cmpint(picture.width, ==, 64);
  g_free(picture.rgb);
  g_unlink(out);

  g_setenv("HF_ENDPOINT", saved_endpoint, TRUE);
  g_unsetenv("GIMP_LCM_MODELS");
  fake_hub_stop(hub);
  test_remove_tree(models);
  test_remove_tree(unet_repo);
  test_remove_tree(base_repo);
}

static void remove_work_dir(void) {
  GDir *dir = g_dir_open(work_dir, 0, NULL);
  for (const char *name; dir && (name = g_dir_read_name(dir));) {
    g_autofree char *path = work_path(name);
    g_unlink(path);
  }
  if (dir) g_dir_close(dir);
  g_rmdir(work_dir);
  g_free(work_dir);
}

int main(int argc, char **argv) {
  g_test_init(&argc, &argv, NULL);
  g_unsetenv("http_proxy"); /* the fake Hub is on 127.0.0.1 */
  g_setenv("no_proxy", "127.0.0.1", TRUE);
  g_autoptr(GError) error = NULL;
  work_dir = g_dir_make_tmp("lcm-cli-test-XXXXXX", &error);
  g_assert_no_error(error);
  g_test_add_func("/cli/same-seed-same-bytes", test_same_seed_same_bytes);
  g_test_add_func("/cli/weight-cache-flag", test_weight_cache_flag);
  g_test_add_data_func("/cli/txt2img-matches-api", GINT_TO_POINTER(FALSE),
                       test_txt2img_matches_api);
  g_test_add_data_func("/cli/txt2img-lora-matches-api", GINT_TO_POINTER(TRUE),
                       test_txt2img_matches_api);
  g_test_add_func("/cli/chain-matches-api", test_chain_matches_api);
  g_test_add_func("/cli/bad-inputs", test_bad_inputs);
  g_test_add_func("/cli/models-get", test_models_get);
  g_test_add_func("/cli/models-get-combined", test_models_get_combined);
  int status = g_test_run();
  remove_work_dir();
  return status;
}
