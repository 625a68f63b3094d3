/* TAESD (diffusers AutoencoderTiny) against the golden cases taesd_*: the
 * diffusers folder and madebyollin's original file layout (written here from
 * the same weights) in fp32 within the cases' tolerance, bf16 by cosine
 * similarity where the CPU has it, lcm_find_taesd on made-up folders, and
 * errors for bad files and arguments. */
#include "lcm.h"
#include "safetensors.h"
#include "testutil.h"

#include <glib/gstdio.h>
#include <math.h>
#include <string.h>

/* ---- Golden cases ---------------------------------------------------------------- */

/* A golden tensor as fp32 with its NCHW shape; g_free it. */
static float *golden_tensor(const TestGoldenCase *gc, const char *name, int64_t shape[4]) {
  float *data = test_golden_tensor(gc->file, name, NULL);
  const StTensor *t = st_find(gc->file, name);
  g_assert_cmpint(t->ndims, ==, 4);
  memcpy(shape, t->shape, 4 * sizeof(int64_t));
  return data;
}

static size_t numel4(const int64_t shape[4]) {
  return (size_t)(shape[0] * shape[1] * shape[2] * shape[3]);
}

static void check_output(const char *what, LcmPrecision precision, const TestGoldenCase *gc,
                         const float *got, const float *golden, size_t n) {
  if (precision == LCM_PRECISION_BF16) {
    double cosine = test_cosine(got, golden, n);
    g_test_message("%s: bf16 cosine %.6f", what, cosine);
    g_assert_cmpfloat(cosine, >=, 0.999);
  } else {
    test_assert_close(what, got, golden, n, gc->atol, gc->rtol);
  }
}

/* NULL (and the test skipped) when the CPU cannot compute in `precision`. */
static LcmTaesd *load_or_skip(const char *path, LcmPrecision precision) {
  g_autoptr(GError) error = NULL;
  LcmTaesd *taesd = lcm_taesd_load(path, precision, &error);
  if (test_skip_if_unsupported(error, precision)) return NULL;
  g_assert_no_error(error);
  return taesd;
}

/* Decodes the case's latents with the TAESD at `path` (NULL = the case's). */
static void check_decode_case(const char *case_name, const char *path, LcmPrecision precision) {
  g_autoptr(TestGoldenCase) gc = test_golden_case_load(case_name);
  g_autofree char *case_taesd = test_golden_case_path(gc, "taesd");
  LcmTaesd *taesd = load_or_skip(path ? path : case_taesd, precision);
  if (taesd) {
    g_assert_true(lcm_taesd_has_decoder(taesd));
    g_assert_cmpint(lcm_taesd_latent_channels(taesd), ==, 4);
    int64_t zs[4], is[4];
    g_autofree float *latents = golden_tensor(gc, "latents", zs);
    g_autofree float *expected = golden_tensor(gc, "image", is);
    g_assert_cmpint(is[2], ==, 8 * zs[2]);
    g_autofree float *image = g_new(float, numel4(is));
    g_autoptr(GError) error = NULL;
    g_assert_true(
        lcm_taesd_decode(taesd, latents, (int)zs[0], (int)zs[2], (int)zs[3], image, &error));
    g_assert_no_error(error);
    check_output(case_name, precision, gc, image, expected, numel4(is));
    lcm_taesd_free(taesd);
  }
}

static void check_encode_case(const char *case_name, const char *path, LcmPrecision precision) {
  g_autoptr(TestGoldenCase) gc = test_golden_case_load(case_name);
  g_autofree char *case_taesd = test_golden_case_path(gc, "taesd");
  LcmTaesd *taesd = load_or_skip(path ? path : case_taesd, precision);
  if (taesd) {
    g_assert_true(lcm_taesd_has_encoder(taesd));
    int64_t is[4], zs[4];
    g_autofree float *image = golden_tensor(gc, "image", is);
    g_autofree float *expected = golden_tensor(gc, "latents", zs);
    g_autofree float *latents = g_new(float, numel4(zs));
    g_autoptr(GError) error = NULL;
    g_assert_true(
        lcm_taesd_encode(taesd, image, (int)is[0], (int)is[2], (int)is[3], latents, &error));
    g_assert_no_error(error);
    check_output(case_name, precision, gc, latents, expected, numel4(zs));
    lcm_taesd_free(taesd);
  }
}

static void test_decode_8x8(void) {
  check_decode_case("taesd_decode_8x8", NULL, LCM_PRECISION_FP32);
}

static void test_decode_8x12(void) {
  check_decode_case("taesd_decode_8x12", NULL, LCM_PRECISION_FP32);
}

static void test_encode_64x64(void) {
  check_encode_case("taesd_encode_64x64", NULL, LCM_PRECISION_FP32);
}

static void test_bf16(void) {
  check_decode_case("taesd_decode_8x12", NULL, LCM_PRECISION_BF16);
  if (!g_test_failed()) check_encode_case("taesd_encode_64x64", NULL, LCM_PRECISION_BF16);
}

/* ---- Other file layouts, written from the tiny TAESD ------------------------------ */

/* How to write a variant of the diffusers file: tensors named FROM_PREFIX k.rest
 * become (k + offset).rest; all others are dropped, as is `drop` (a diffusers
 * name), and a tensor 'extra' is added when asked. */
typedef struct {
  const char *from_prefix;
  int offset;
  const char *drop;
  gboolean extra;
} Variant;

static const Variant ORIGINAL_DECODER = {"decoder.layers.", 1, NULL, FALSE};
static const Variant ORIGINAL_ENCODER = {"encoder.layers.", 0, NULL, FALSE};

static char *variant_name(const Variant *v, const char *name) {
  if (!g_str_has_prefix(name, v->from_prefix) || g_strcmp0(name, v->drop) == 0) return NULL;
  char *rest;
  gint64 k = g_ascii_strtoll(name + strlen(v->from_prefix), &rest, 10);
  return g_strdup_printf("%" G_GINT64_FORMAT "%s", k + v->offset, rest);
}

static void write_variant(const Variant *v, const char *dst) {
  g_autofree char *src_path =
      test_data_path("golden/tiny-taesd/diffusion_pytorch_model.safetensors");
  g_autoptr(GError) error = NULL;
  StFile *src = st_open(src_path, &error);
  g_assert_no_error(error);
  GArray *tensors = g_array_new(FALSE, TRUE, sizeof(StWriteTensor));
  GPtrArray *names = g_ptr_array_new_with_free_func(g_free);
  for (guint i = 0; i < st_count(src); i++) {
    const StTensor *t = st_tensor_at(src, i);
    char *name = variant_name(v, t->name);
    if (!name) continue;
    g_ptr_array_add(names, name);
    StWriteTensor w = {name, t->dtype, t->ndims, t->shape, t->data};
    g_array_append_val(tensors, w);
  }
  static const float extra_data[2] = {1, 2};
  static const int64_t extra_shape[1] = {2};
  if (v->extra) {
    StWriteTensor w = {"extra", ST_F32, 1, extra_shape, extra_data};
    g_array_append_val(tensors, w);
  }
  g_assert_true(st_write(dst, (StWriteTensor *)tensors->data, tensors->len, NULL, &error));
  g_assert_no_error(error);
  g_array_unref(tensors);
  g_ptr_array_unref(names);
  st_close(src);
}

static char *make_temp_dir(void) {
  g_autoptr(GError) error = NULL;
  char *dir = g_dir_make_tmp("test-taesd-XXXXXX", &error);
  g_assert_no_error(error);
  return dir;
}

/* Removes a temp tree (files and folders one level deep are all these tests make). */
static void remove_tree(const char *dir) {
  GDir *d = g_dir_open(dir, 0, NULL);
  for (const char *name; d && (name = g_dir_read_name(d));) {
    g_autofree char *path = g_build_filename(dir, name, NULL);
    if (g_file_test(path, G_FILE_TEST_IS_DIR))
      remove_tree(path);
    else
      g_unlink(path);
  }
  if (d) g_dir_close(d);
  g_rmdir(dir);
}

static void test_original_layout(void) {
  g_autofree char *dir = make_temp_dir();
  g_autofree char *decoder = g_build_filename(dir, "taesd_decoder.safetensors", NULL);
  g_autofree char *encoder = g_build_filename(dir, "taesd_encoder.safetensors", NULL);
  write_variant(&ORIGINAL_DECODER, decoder);
  write_variant(&ORIGINAL_ENCODER, encoder);

  /* The folder loads both; each file alone loads its own network only. */
  check_decode_case("taesd_decode_8x8", dir, LCM_PRECISION_FP32);
  check_encode_case("taesd_encode_64x64", dir, LCM_PRECISION_FP32);
  check_decode_case("taesd_decode_8x12", decoder, LCM_PRECISION_FP32);
  check_encode_case("taesd_encode_64x64", encoder, LCM_PRECISION_FP32);

  g_autoptr(GError) error = NULL;
  LcmTaesd *only_decoder = lcm_taesd_load(decoder, LCM_PRECISION_FP32, &error);
  g_assert_no_error(error);
  g_assert_true(lcm_taesd_has_decoder(only_decoder));
  g_assert_false(lcm_taesd_has_encoder(only_decoder));
  float image[3 * 8 * 8] = {0}, latents[4] = {0};
  g_assert_false(lcm_taesd_encode(only_decoder, image, 1, 8, 8, latents, &error));
  g_assert_error(error, LCM_ERROR, LCM_ERROR_MISSING);
  g_test_message("%s", error->message);
  lcm_taesd_free(only_decoder);
  remove_tree(dir);

  /* TAESDXL's files (madebyollin/taesdxl) have the same layout under their
   * own names; a folder of them loads as well. */
  g_autofree char *xl_dir = make_temp_dir();
  g_autofree char *xl_decoder = g_build_filename(xl_dir, "taesdxl_decoder.safetensors", NULL);
  write_variant(&ORIGINAL_DECODER, xl_decoder);
  check_decode_case("taesd_decode_8x8", xl_dir, LCM_PRECISION_FP32);
  remove_tree(xl_dir);
}

/* ---- Finding TAESD weights ----------------------------------------------------- */

static void touch(const char *dir, const char *relative) {
  g_autofree char *path = g_build_filename(dir, relative, NULL);
  g_autofree char *parent = g_path_get_dirname(path);
  g_assert_cmpint(g_mkdir_with_parents(parent, 0700), ==, 0);
  g_assert_true(g_file_set_contents(path, "", 0, NULL));
}

static void assert_found_for(const char *model_path, LcmModelFamily family, const char *expected) {
  g_autofree char *found = lcm_find_taesd(model_path, family);
  g_assert_cmpstr(found, ==, expected);
}

static void assert_found(const char *model_path, const char *expected) {
  assert_found_for(model_path, LCM_FAMILY_SD15, expected);
}

static void test_find(void) {
  g_autofree char *root = make_temp_dir();
  g_autofree char *models = g_build_filename(root, "models", NULL);
  g_autofree char *pipeline = g_build_filename(root, "pipeline", NULL);
  g_autofree char *checkpoints = g_build_filename(root, "checkpoints", NULL);
  g_autofree char *checkpoint = g_build_filename(checkpoints, "model.safetensors", NULL);
  g_assert_true(g_setenv("GIMP_LCM_MODELS", models, TRUE));
  touch(pipeline, "model_index.json");
  touch(pipeline, "vae/diffusion_pytorch_model.safetensors");
  touch(checkpoints, "model.safetensors");
  /* Diffusers weights beside a checkpoint are not a TAESD. */
  touch(checkpoints, "diffusion_pytorch_model.safetensors");

  assert_found(pipeline, NULL);
  assert_found(checkpoint, NULL);
  assert_found(NULL, NULL);
  assert_found("/nonexistent/model", NULL);

  /* The models folder's taesd/ serves every model without its own. */
  touch(models, "taesd/taesd_decoder.safetensors");
  g_autofree char *shared = g_build_filename(models, "taesd", NULL);
  assert_found(NULL, shared);
  assert_found(pipeline, shared);
  assert_found(checkpoint, shared);

  /* A model's own comes first. */
  touch(pipeline, "vae_tiny/diffusion_pytorch_model.safetensors");
  g_autofree char *own = g_build_filename(pipeline, "vae_tiny", NULL);
  assert_found(pipeline, own);
  touch(checkpoints, "taesd_decoder.safetensors");
  assert_found(checkpoint, checkpoints);

  /* SDXL models never get TAESD, only TAESDXL (the same shapes: names tell). */
  assert_found_for(NULL, LCM_FAMILY_SDXL, NULL);
  assert_found_for(checkpoint, LCM_FAMILY_SDXL, NULL);
  touch(models, "taesdxl/taesdxl_decoder.safetensors");
  g_autofree char *shared_xl = g_build_filename(models, "taesdxl", NULL);
  assert_found_for(NULL, LCM_FAMILY_SDXL, shared_xl);
  assert_found_for(checkpoint, LCM_FAMILY_SDXL, shared_xl);
  assert_found(NULL, shared); /* and SD1.5 keeps TAESD */
  touch(checkpoints, "taesdxl_decoder.safetensors");
  assert_found_for(checkpoint, LCM_FAMILY_SDXL, checkpoints);
  /* An SDXL pipeline's own vae_tiny/ is its family's. */
  assert_found_for(pipeline, LCM_FAMILY_SDXL, own);

  remove_tree(root);
  g_unsetenv("GIMP_LCM_MODELS");
}

/* ---- Bad files and arguments ----------------------------------------------------- */

static void assert_load_fails(const char *path, int code) {
  g_autoptr(GError) error = NULL;
  LcmTaesd *taesd = lcm_taesd_load(path, LCM_PRECISION_FP32, &error);
  g_assert_null(taesd);
  g_assert_error(error, LCM_ERROR, code);
  g_test_message("%s", error->message);
}

static void test_bad_files(void) {
  g_autofree char *dir = make_temp_dir();
  assert_load_fails(dir, LCM_ERROR_MISSING); /* an empty folder */
  g_autofree char *missing = g_build_filename(dir, "none.safetensors", NULL);
  assert_load_fails(missing, LCM_ERROR_IO);
  g_autofree char *garbage = g_build_filename(dir, "garbage.safetensors", NULL);
  g_assert_true(g_file_set_contents(garbage, "not a safetensors file", -1, NULL));
  assert_load_fails(garbage, LCM_ERROR_FORMAT);
  g_autofree char *vae = test_data_path("golden/tiny-lcm/vae/diffusion_pytorch_model.safetensors");
  assert_load_fails(vae, LCM_ERROR_FORMAT); /* an AutoencoderKL, not a TAESD */

  /* A decoder missing one block conv (diffusers layer 17 = file module 18). */
  g_autofree char *incomplete = g_build_filename(dir, "incomplete.safetensors", NULL);
  const Variant no_conv = {"decoder.layers.", 1, "decoder.layers.17.conv.2.weight", FALSE};
  write_variant(&no_conv, incomplete);
  g_autoptr(GError) error = NULL;
  g_assert_null(lcm_taesd_load(incomplete, LCM_PRECISION_FP32, &error));
  g_assert_error(error, LCM_ERROR, LCM_ERROR_MISSING);
  g_assert_nonnull(strstr(error->message, "18.conv.2.weight"));
  g_clear_error(&error);

  /* A tensor no layer uses: some other layout, refused rather than run wrong. */
  g_autofree char *extra = g_build_filename(dir, "extra.safetensors", NULL);
  const Variant with_extra = {"decoder.layers.", 1, NULL, TRUE};
  write_variant(&with_extra, extra);
  assert_load_fails(extra, LCM_ERROR_UNSUPPORTED);

  /* Two decoders in one folder (the encoder file holds a decoder). */
  g_autofree char *two = g_build_filename(dir, "two", NULL);
  g_assert_cmpint(g_mkdir(two, 0700), ==, 0);
  g_autofree char *dec = g_build_filename(two, "taesd_decoder.safetensors", NULL);
  g_autofree char *enc = g_build_filename(two, "taesd_encoder.safetensors", NULL);
  write_variant(&ORIGINAL_DECODER, dec);
  write_variant(&ORIGINAL_DECODER, enc);
  assert_load_fails(two, LCM_ERROR_FORMAT);
  remove_tree(dir);
}

static void test_bad_arguments(void) {
  g_autofree char *path = test_data_path("golden/tiny-taesd");
  g_autoptr(GError) error = NULL;
  LcmTaesd *taesd = lcm_taesd_load(path, LCM_PRECISION_FP32, &error);
  g_assert_no_error(error);
  g_assert_true(lcm_taesd_has_decoder(taesd) && lcm_taesd_has_encoder(taesd));
  float in[3 * 16 * 16] = {0}, out[3 * 64 * 64];
  const struct {
    int batch, h, w;
  } bad_decode[] = {{0, 1, 1}, {1, 0, 1}, {1, 1, -2}, {1, 1, 100000}};
  for (size_t i = 0; i < G_N_ELEMENTS(bad_decode); i++) {
    g_assert_false(lcm_taesd_decode(taesd, in, bad_decode[i].batch, bad_decode[i].h,
                                    bad_decode[i].w, out, &error));
    g_assert_error(error, LCM_ERROR, LCM_ERROR_INVALID);
    g_clear_error(&error);
  }
  const struct {
    int batch, h, w;
  } bad_encode[] = {{1, 12, 16}, {1, 16, 4}, {0, 16, 16}, {1, 0, 8}};
  for (size_t i = 0; i < G_N_ELEMENTS(bad_encode); i++) {
    g_assert_false(lcm_taesd_encode(taesd, in, bad_encode[i].batch, bad_encode[i].h,
                                    bad_encode[i].w, out, &error));
    g_assert_error(error, LCM_ERROR, LCM_ERROR_INVALID);
    g_test_message("%s", error->message);
    g_clear_error(&error);
  }
  /* The smallest sizes work: one latent pixel, an 8x8 image. */
  g_assert_true(lcm_taesd_decode(taesd, in, 1, 1, 1, out, &error));
  g_assert_no_error(error);
  g_assert_true(lcm_taesd_encode(taesd, in, 1, 8, 8, out, &error));
  g_assert_no_error(error);
  lcm_taesd_free(taesd);
}

int main(int argc, char **argv) {
  g_test_init(&argc, &argv, NULL);
  g_test_add_func("/taesd/decode-8x8", test_decode_8x8);
  g_test_add_func("/taesd/decode-8x12", test_decode_8x12);
  g_test_add_func("/taesd/encode-64x64", test_encode_64x64);
  g_test_add_func("/taesd/bf16", test_bf16);
  g_test_add_func("/taesd/original-layout", test_original_layout);
  g_test_add_func("/taesd/find", test_find);
  g_test_add_func("/taesd/bad-files", test_bad_files);
  g_test_add_func("/taesd/bad-arguments", test_bad_arguments);
  return g_test_run();
}
