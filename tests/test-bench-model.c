/* The benchmark's random-model generator (tools/bench/model-gen.c): with the
 * tiny model's configs it must list exactly the tiny model's tensors; with the
 * SD1.5 configs the published parameter counts and FLOP figures; the folder
 * it writes must hold sensible fp16 values, be reproducible from the seed,
 * and load and run through the public API. */
#include "../tools/bench/model-gen.h"
#include "lcm.h"
#include "safetensors.h"
#include "testutil.h"

#include <glib/gstdio.h>
#include <math.h>
#include <string.h>

typedef struct {
  GenNetwork network;
  const char *folder;
  const char *tiny_weights; /* the tiny model's fp32 file */
} NetworkCase;

static const NetworkCase network_cases[] = {
    {GEN_TEXT_ENCODER, "text_encoder", "model.safetensors"},
    {GEN_UNET, "unet", "diffusion_pytorch_model.safetensors"},
    {GEN_VAE, "vae", "diffusion_pytorch_model.safetensors"},
};

static char *read_text(const char *path) {
  char *text = NULL;
  g_autoptr(GError) error = NULL;
  g_assert_true(g_file_get_contents(path, &text, NULL, &error));
  g_assert_no_error(error);
  return text;
}

static char *tiny_config(const char *folder) {
  g_autofree char *path = test_data_path("golden/tiny-lcm");
  g_autofree char *config = g_build_filename(path, folder, "config.json", NULL);
  return read_text(config);
}

static int64_t tensor_list_params(GArray *tensors) {
  int64_t total = 0;
  for (guint i = 0; i < tensors->len; i++) {
    const GenTensor *t = &g_array_index(tensors, GenTensor, i);
    int64_t n = 1;
    for (int d = 0; d < t->ndims; d++) n *= t->shape[d];
    total += n;
  }
  return total;
}

/* The file holds exactly the listed tensors, with the listed shapes. */
static void assert_same_tensors(GArray *tensors, const StFile *file) {
  g_assert_cmpuint(tensors->len, ==, st_count(file));
  for (guint i = 0; i < tensors->len; i++) {
    const GenTensor *t = &g_array_index(tensors, GenTensor, i);
    const StTensor *found = st_find(file, t->name);
    if (!found) g_error("%s: no tensor '%s'", st_path(file), t->name);
    g_assert_cmpint(found->ndims, ==, t->ndims);
    for (int d = 0; d < t->ndims; d++) g_assert_cmpint(found->shape[d], ==, t->shape[d]);
  }
}

/* The walk of `folder`'s config.json lists exactly the tensors of its weights. */
static void assert_walk_matches(GenNetwork network, const char *folder, const char *weights) {
  g_autofree char *config_relative = g_build_filename(folder, "config.json", NULL);
  g_autofree char *config_path = test_data_path(config_relative);
  g_autofree char *config = read_text(config_path);
  g_autoptr(GError) error = NULL;
  GArray *tensors = model_gen_tensors(network, config, &error);
  g_assert_no_error(error);
  g_autofree char *relative = g_build_filename(folder, weights, NULL);
  g_autofree char *path = test_data_path(relative);
  StFile *file = st_open(path, &error);
  g_assert_no_error(error);
  assert_same_tensors(tensors, file);
  st_close(file);
  g_array_unref(tensors);
}

/* The golden SDXL-family models: both text encoders, the SDXL UNet with and
 * without LCM's cond_proj, the SSD-1B-like one (reversed depths, plain mid
 * block) and the SDXL VAE. */
static void test_tiny_sdxl_tensor_lists(void) {
  const struct {
    GenNetwork network;
    const char *folder, *weights;
  } cases[] = {
      {GEN_TEXT_ENCODER, "golden-sdxl/tiny-sdxl-lcm/text_encoder", "model.safetensors"},
      {GEN_TEXT_ENCODER_2, "golden-sdxl/tiny-sdxl-lcm/text_encoder_2", "model.safetensors"},
      {GEN_UNET, "golden-sdxl/tiny-sdxl-lcm/unet", "diffusion_pytorch_model.safetensors"},
      {GEN_UNET, "golden-sdxl/tiny-sdxl/unet", "diffusion_pytorch_model.safetensors"},
      {GEN_UNET, "golden-sdxl/tiny-ssd1b-lcm/unet", "diffusion_pytorch_model.safetensors"},
      {GEN_VAE, "golden-sdxl/tiny-sdxl-lcm/vae", "diffusion_pytorch_model.safetensors"},
  };
  for (size_t i = 0; i < G_N_ELEMENTS(cases); i++)
    assert_walk_matches(cases[i].network, cases[i].folder, cases[i].weights);
}

static void test_tiny_tensor_lists(void) {
  for (size_t i = 0; i < G_N_ELEMENTS(network_cases); i++) {
    const NetworkCase *c = &network_cases[i];
    g_autofree char *config = tiny_config(c->folder);
    g_autoptr(GError) error = NULL;
    GArray *tensors = model_gen_tensors(c->network, config, &error);
    g_assert_no_error(error);
    g_autofree char *relative =
        g_build_filename("golden/tiny-lcm", c->folder, c->tiny_weights, NULL);
    g_autofree char *path = test_data_path(relative);
    StFile *file = st_open(path, &error);
    g_assert_no_error(error);
    assert_same_tensors(tensors, file);
    st_close(file);
    g_array_unref(tensors);
  }
}

/* Published sizes: SD1.5 UNet 859,520,964 parameters plus LCM's cond_proj
 * (256 x 320); the SD VAE 83,653,863; CLIP ViT-L/14's text model 123,060,480. */
static void test_sd15_parameter_counts(void) {
  const GenConfigs *configs = model_gen_family_configs(GEN_FAMILY_SD15);
  const struct {
    GenNetwork network;
    const char *config;
    int64_t params;
  } expected[] = {
      {GEN_TEXT_ENCODER, configs->text_encoder, 123060480},
      {GEN_UNET, configs->unet, 859520964 + 256 * 320},
      {GEN_VAE, configs->vae, 83653863},
  };
  for (size_t i = 0; i < G_N_ELEMENTS(expected); i++) {
    g_autoptr(GError) error = NULL;
    GArray *tensors = model_gen_tensors(expected[i].network, expected[i].config, &error);
    g_assert_no_error(error);
    g_assert_cmpint(tensor_list_params(tensors), ==, expected[i].params);
    g_array_unref(tensors);
  }
}

/* Published sizes: the SDXL base UNet 2,567,463,684 parameters plus LCM's
 * cond_proj (256 x 320; lcm-sdxl: 2.567 G); SSD-1B's "1.3 B"; the OpenCLIP
 * ViT-bigG text tower with its projection 694,659,840; the VAE SD's. */
static void test_sdxl_parameter_counts(void) {
  const GenConfigs *xl = model_gen_family_configs(GEN_FAMILY_SDXL);
  const GenConfigs *ssd = model_gen_family_configs(GEN_FAMILY_SSD1B);
  const struct {
    GenNetwork network;
    const char *config;
    int64_t params;
  } expected[] = {
      {GEN_TEXT_ENCODER, xl->text_encoder, 123060480},
      {GEN_TEXT_ENCODER_2, xl->text_encoder_2, 694659840},
      {GEN_UNET, xl->unet, 2567463684 + 256 * 320},
      {GEN_VAE, xl->vae, 83653863},
  };
  for (size_t i = 0; i < G_N_ELEMENTS(expected); i++) {
    g_autoptr(GError) error = NULL;
    GArray *tensors = model_gen_tensors(expected[i].network, expected[i].config, &error);
    g_assert_no_error(error);
    g_assert_cmpint(tensor_list_params(tensors), ==, expected[i].params);
    g_array_unref(tensors);
  }
  g_autoptr(GError) error = NULL;
  GArray *tensors = model_gen_tensors(GEN_UNET, ssd->unet, &error);
  g_assert_no_error(error);
  const int64_t ssd_params = tensor_list_params(tensors);
  g_test_message("SSD-1B LCM UNet: %" G_GINT64_FORMAT " parameters", ssd_params);
  g_assert_cmpfloat(fabs(ssd_params / 1.3e9 - 1), <, 0.05);
  g_array_unref(tensors);
  g_assert_true(ssd->text_encoder_2 == xl->text_encoder_2 && ssd->vae == xl->vae);
}

static gboolean finite_and_nonzero(const float *values, size_t n);

static double stage_flops(GenStage stage, const char *config, int latent) {
  double flops = 0;
  g_autoptr(GError) error = NULL;
  g_assert_true(model_gen_stage_flops(stage, config, latent, latent, &flops, &error));
  g_assert_no_error(error);
  return flops;
}

/* Published figures at 512x512 (latent 64): one UNet step about 0.80 TFLOP,
 * the VAE decoder about 2.5 TFLOP; the encoder, which skips the decoder's
 * extra resnet per level and works at lower widths, clearly less. */
static void test_sd15_flops(void) {
  const GenConfigs *configs = model_gen_family_configs(GEN_FAMILY_SD15);
  const double unet = stage_flops(GEN_STAGE_UNET_STEP, configs->unet, 64);
  const double decode = stage_flops(GEN_STAGE_VAE_DECODE, configs->vae, 64);
  const double encode = stage_flops(GEN_STAGE_VAE_ENCODE, configs->vae, 64);
  const double text = stage_flops(GEN_STAGE_TEXT_ENCODE, configs->text_encoder, 64);
  g_test_message("512x512: UNet step %.4f, VAE decode %.4f, VAE encode %.4f, text %.4f TFLOP",
                 unet / 1e12, decode / 1e12, encode / 1e12, text / 1e12);
  g_assert_cmpfloat(fabs(unet / 0.80e12 - 1), <, 0.05);
  g_assert_cmpfloat(fabs(decode / 2.5e12 - 1), <, 0.05);
  g_assert_cmpfloat(encode, <, decode);
  g_assert_cmpfloat(encode, >, 0.3 * decode);
  /* 77 tokens through 85 M weights (embeddings are lookups): ~2 x 77 x 85 M. */
  g_assert_cmpfloat(fabs(text / (2.0 * 77 * 85e6) - 1), <, 0.05);
  /* A quarter of the pixels: convolutions scale by 4, self-attention by 16. */
  const double unet_half = stage_flops(GEN_STAGE_UNET_STEP, configs->unet, 32);
  g_assert_cmpfloat(unet / unet_half, >, 4.0);
  g_assert_cmpfloat(unet / unet_half, <, 16.0);
}

/* SDXL's extra work is where the walks put it: text_projection on the pooled
 * token only, and add_embedding on one row; SSD-1B's shallower UNet costs
 * less than SDXL's; attention grows faster than the pixel count. */
static void test_sdxl_flops(void) {
  const GenConfigs *xl = model_gen_family_configs(GEN_FAMILY_SDXL);
  const GenConfigs *ssd = model_gen_family_configs(GEN_FAMILY_SSD1B);
  g_assert_cmpfloat(stage_flops(GEN_STAGE_TEXT_ENCODE_2, xl->text_encoder_2, 0) -
                        stage_flops(GEN_STAGE_TEXT_ENCODE, xl->text_encoder_2, 0),
                    ==, 2.0 * 1280 * 1280);
  GString *edited = g_string_new(xl->unet);
  g_assert_cmpuint(g_string_replace(edited, "\"text_time\"", "null", 1), ==, 1);
  g_assert_cmpuint(g_string_replace(edited, "\"addition_time_embed_dim\": 256",
                                    "\"addition_time_embed_dim\": null", 1),
                   ==, 1);
  g_autofree char *no_addition = g_string_free(edited, FALSE);
  const double unet = stage_flops(GEN_STAGE_UNET_STEP, xl->unet, 128);
  g_assert_cmpfloat(unet - stage_flops(GEN_STAGE_UNET_STEP, no_addition, 128), ==,
                    2.0 * (2816 * 1280 + 1280 * 1280));
  const double ssd_unet = stage_flops(GEN_STAGE_UNET_STEP, ssd->unet, 128);
  g_test_message("1024x1024: SDXL UNet step %.3f, SSD-1B %.3f TFLOP", unet / 1e12, ssd_unet / 1e12);
  g_assert_cmpfloat(ssd_unet, <, 0.8 * unet);
  const double unet_768 = stage_flops(GEN_STAGE_UNET_STEP, xl->unet, 96);
  g_assert_cmpfloat(unet / unet_768, >, (128.0 * 128) / (96 * 96));
}

static char *golden_sdxl_config(const char *model, const char *folder) {
  g_autofree char *relative = g_build_filename("golden-sdxl", model, folder, "config.json", NULL);
  g_autofree char *path = test_data_path(relative);
  return read_text(path);
}

/* A generated SDXL-family folder opens as SDXL, tokenizer_2 pads with "!"
 * (id 0), and the pipeline runs a step on it with finite output. */
static void test_make_sdxl_model(void) {
  g_autofree char *te = golden_sdxl_config("tiny-sdxl-lcm", "text_encoder");
  g_autofree char *te2 = golden_sdxl_config("tiny-sdxl-lcm", "text_encoder_2");
  g_autofree char *unet = golden_sdxl_config("tiny-ssd1b-lcm", "unet");
  g_autofree char *vae = golden_sdxl_config("tiny-sdxl-lcm", "vae");
  const GenConfigs configs = {te, te2, unet, vae};
  g_autoptr(GError) error = NULL;
  g_autofree char *dir = g_dir_make_tmp("lcm-bench-model-XXXXXX", &error);
  g_assert_no_error(error);
  g_assert_true(model_gen_make_model(dir, &configs, 4, &error));
  g_assert_no_error(error);
  for (GenNetwork n = 0; n < GEN_N_NETWORKS; n++) {
    g_autofree char *path = g_build_filename(dir, model_gen_weights_file(n), NULL);
    StFile *file = st_open(path, &error);
    g_assert_no_error(error);
    GArray *tensors = model_gen_tensors(n, model_gen_config_of(&configs, n), &error);
    g_assert_no_error(error);
    assert_same_tensors(tensors, file);
    g_array_unref(tensors);
    st_close(file);
  }

  g_autofree char *tokenizer_dir = g_build_filename(dir, "tokenizer_2", NULL);
  LcmTokenizer *tokenizer = lcm_tokenizer_new_from_folder(tokenizer_dir, &error);
  g_assert_no_error(error);
  int32_t ids[LCM_CLIP_TOKENS];
  lcm_tokenizer_encode(tokenizer, "a cat", ids);
  lcm_tokenizer_free(tokenizer);
  g_assert_cmpint(ids[3], ==, LCM_CLIP_EOS);
  g_assert_cmpint(ids[4], ==, 0);

  LcmModel *model = lcm_model_open(dir, &error);
  g_assert_no_error(error);
  g_assert_cmpint(lcm_model_family(model), ==, LCM_FAMILY_SDXL);
  LcmPipeline *pipeline = lcm_pipeline_new(model, LCM_PRECISION_FP32, &error);
  g_assert_no_error(error);
  lcm_model_free(model);
  LcmPipelineParams params;
  lcm_pipeline_params_init(&params);
  params.prompt = "a cat";
  params.steps = 1;
  params.width = params.height = 64;
  params.guidance_scale = lcm_pipeline_default_guidance(pipeline);
  LcmImage *image = lcm_pipeline_run(pipeline, &params, &error);
  g_assert_no_error(error);
  g_assert_true(finite_and_nonzero(image->data, (size_t)64 * 64 * 3));
  lcm_image_free(image);
  lcm_pipeline_free(pipeline);
  test_remove_tree(dir);
}

static void test_bad_configs(void) {
  const struct {
    GenNetwork network;
    GenStage stage;
    const char *json;
    LcmErrorCode code;
    const char *mention;
  } cases[] = {
      {GEN_UNET, GEN_STAGE_UNET_STEP, "not json", LCM_ERROR_FORMAT, "JSON"},
      {GEN_UNET, GEN_STAGE_UNET_STEP, "[1, 2]", LCM_ERROR_FORMAT, "JSON object"},
      {GEN_VAE, GEN_STAGE_VAE_DECODE, "{\"in_channels\": 3}", LCM_ERROR_FORMAT, "out_channels"},
      {GEN_TEXT_ENCODER, GEN_STAGE_TEXT_ENCODE, "{\"vocab_size\": -4}", LCM_ERROR_FORMAT,
       "vocab_size"},
      {GEN_UNET, GEN_STAGE_UNET_STEP,
       "{\"in_channels\": 4, \"out_channels\": 4, \"block_out_channels\": [32, 64],"
       " \"down_block_types\": [\"CrossAttnDownBlock2D\", \"SkipDownBlock2D\"]}",
       LCM_ERROR_UNSUPPORTED, "down_block_types"},
      {GEN_UNET, GEN_STAGE_UNET_STEP,
       "{\"in_channels\": 4, \"out_channels\": 4, \"block_out_channels\": [32, 64],"
       " \"down_block_types\": [\"DownBlock2D\"]}",
       LCM_ERROR_FORMAT, "down_block_types"},
  };
  for (size_t i = 0; i < G_N_ELEMENTS(cases); i++) {
    g_autoptr(GError) error = NULL;
    g_assert_null(model_gen_tensors(cases[i].network, cases[i].json, &error));
    g_assert_error(error, LCM_ERROR, (gint)cases[i].code);
    g_assert_nonnull(strstr(error->message, cases[i].mention));
    g_assert_nonnull(strstr(error->message, "config.json")); /* names what was wrong */
    g_clear_error(&error);
    double flops = -1;
    g_assert_false(model_gen_stage_flops(cases[i].stage, cases[i].json, 8, 8, &flops, &error));
    g_assert_error(error, LCM_ERROR, (gint)cases[i].code);
  }
}

static GenConfigs tiny_configs(char *texts[3]) {
  texts[0] = tiny_config("text_encoder");
  texts[1] = tiny_config("unet");
  texts[2] = tiny_config("vae");
  return (GenConfigs){.text_encoder = texts[0], .unet = texts[1], .vae = texts[2]};
}

static char *make_tiny_model(guint64 seed) {
  g_autoptr(GError) error = NULL;
  char *dir = g_dir_make_tmp("lcm-bench-model-XXXXXX", &error);
  g_assert_no_error(error);
  char *texts[3];
  const GenConfigs configs = tiny_configs(texts);
  g_assert_true(model_gen_make_model(dir, &configs, seed, &error));
  g_assert_no_error(error);
  for (int i = 0; i < 3; i++) g_free(texts[i]);
  return dir;
}

/* Mean and standard deviation of a tensor's values. */
static void tensor_stats(const StTensor *t, double *mean, double *std) {
  const int64_t n = st_numel(t);
  float *values = g_new(float, n);
  st_tensor_to_f32(t, values);
  double sum = 0, sum_sq = 0;
  for (int64_t i = 0; i < n; i++) {
    g_assert_true(isfinite(values[i]));
    sum += values[i];
    sum_sq += (double)values[i] * values[i];
  }
  *mean = sum / n;
  *std = sqrt(fmax(sum_sq / n - *mean * *mean, 0));
  g_free(values);
}

/* Each tensor initialised as its kind asks: ones, zeros, or random values of
 * the intended spread (checked where there are enough of them). */
static void assert_sensible_values(GArray *tensors, const StFile *file) {
  for (guint i = 0; i < tensors->len; i++) {
    const GenTensor *t = &g_array_index(tensors, GenTensor, i);
    const StTensor *found = st_find(file, t->name);
    g_assert_nonnull(found);
    g_assert_cmpint(found->dtype, ==, ST_F16);
    double mean, std;
    tensor_stats(found, &mean, &std);
    const int64_t n = st_numel(found);
    switch (t->init) {
    case GEN_INIT_ONES:
      g_assert_cmpfloat(mean, ==, 1.0);
      g_assert_cmpfloat(std, ==, 0.0);
      break;
    case GEN_INIT_ZEROS:
      g_assert_cmpfloat(mean, ==, 0.0);
      g_assert_cmpfloat(std, ==, 0.0);
      break;
    case GEN_INIT_FAN_IN:
    case GEN_INIT_EMBEDDING: {
      const double expected =
          t->init == GEN_INIT_EMBEDDING ? 0.02 : 1.0 / sqrt((double)n / t->shape[0]);
      g_assert_cmpfloat(std, >, 0);
      if (n >= 4096) {
        g_assert_cmpfloat(fabs(std / expected - 1), <, 0.1);
        g_assert_cmpfloat(fabs(mean), <, 0.1 * expected);
      }
      break;
    }
    }
  }
}

static gboolean files_equal(const char *a, const char *b) {
  g_autofree char *ta = NULL, *tb = NULL;
  gsize la = 0, lb = 0;
  g_assert_true(g_file_get_contents(a, &ta, &la, NULL));
  g_assert_true(g_file_get_contents(b, &tb, &lb, NULL));
  return la == lb && memcmp(ta, tb, la) == 0;
}

static void test_make_model_writes_folder(void) {
  g_autofree char *dir = make_tiny_model(7);
  for (size_t i = 0; i < G_N_ELEMENTS(network_cases); i++) {
    const NetworkCase *c = &network_cases[i];
    g_autofree char *config = tiny_config(c->folder);
    g_autofree char *written_config_path = g_build_filename(dir, c->folder, "config.json", NULL);
    g_autofree char *written_config = read_text(written_config_path);
    g_assert_cmpstr(written_config, ==, config);

    g_autoptr(GError) error = NULL;
    GArray *tensors = model_gen_tensors(c->network, config, &error);
    g_assert_no_error(error);
    g_autofree char *path = g_build_filename(dir, model_gen_weights_file(c->network), NULL);
    StFile *file = st_open(path, &error);
    g_assert_no_error(error);
    assert_same_tensors(tensors, file);
    assert_sensible_values(tensors, file);
    st_close(file);
    g_array_unref(tensors);
  }
  const char *other_files[] = {"model_index.json", "scheduler/scheduler_config.json",
                               "tokenizer/vocab.json", "tokenizer/merges.txt"};
  for (size_t i = 0; i < G_N_ELEMENTS(other_files); i++) {
    g_autofree char *path = g_build_filename(dir, other_files[i], NULL);
    g_assert_true(g_file_test(path, G_FILE_TEST_IS_REGULAR));
  }
  test_remove_tree(dir);
}

static void test_make_model_is_reproducible(void) {
  g_autofree char *first = make_tiny_model(11);
  g_autofree char *same = make_tiny_model(11);
  g_autofree char *other = make_tiny_model(12);
  for (size_t i = 0; i < G_N_ELEMENTS(network_cases); i++) {
    const char *file = model_gen_weights_file(network_cases[i].network);
    g_autofree char *a = g_build_filename(first, file, NULL);
    g_autofree char *b = g_build_filename(same, file, NULL);
    g_autofree char *c = g_build_filename(other, file, NULL);
    g_assert_true(files_equal(a, b));
    g_assert_false(files_equal(a, c));
  }
  test_remove_tree(first);
  test_remove_tree(same);
  test_remove_tree(other);
}

static gboolean finite_and_nonzero(const float *values, size_t n) {
  gboolean nonzero = FALSE;
  for (size_t i = 0; i < n; i++) {
    if (!isfinite(values[i])) return FALSE;
    nonzero |= values[i] != 0;
  }
  return nonzero;
}

/* The folder opens as a model, and every network loads and produces finite,
 * non-zero output: what the benchmark needs. */
static void test_generated_model_runs(void) {
  g_autofree char *dir = make_tiny_model(3);
  g_autoptr(GError) error = NULL;
  LcmModel *model = lcm_model_open(dir, &error);
  g_assert_no_error(error);

  LcmTokenizer *tokenizer = lcm_model_load_tokenizer(model, &error);
  g_assert_no_error(error);
  int32_t ids[LCM_CLIP_TOKENS];
  lcm_tokenizer_encode(tokenizer, "a red bicycle", ids);
  lcm_tokenizer_free(tokenizer);
  LcmTextEncoder *encoder = lcm_text_encoder_load(model, LCM_PRECISION_FP32, &error);
  g_assert_no_error(error);
  const int hidden = lcm_text_encoder_hidden_size(encoder);
  float *context = g_new(float, LCM_CLIP_TOKENS *hidden);
  g_assert_true(lcm_text_encoder_encode(encoder, ids, 1, context, &error));
  g_assert_no_error(error);
  g_assert_true(finite_and_nonzero(context, LCM_CLIP_TOKENS * hidden));

  LcmUNet *unet = lcm_unet_load(model, LCM_PRECISION_FP32, &error);
  g_assert_no_error(error);
  const int side = 8, dim = lcm_unet_time_cond_proj_dim(unet);
  g_assert_cmpint(dim, ==, 256);
  float guidance[256];
  lcm_guidance_embedding(7.0f, dim, guidance);
  float sample[4 * 8 * 8], out[4 * 8 * 8];
  LcmRng *rng = lcm_rng_new(5);
  lcm_rng_randn(rng, sample, G_N_ELEMENTS(sample));
  lcm_rng_free(rng);
  g_assert_true(lcm_unet_run(unet, sample, 1, side, side, 999, context, LCM_CLIP_TOKENS, guidance,
                             out, &error));
  g_assert_no_error(error);
  g_assert_true(finite_and_nonzero(out, G_N_ELEMENTS(out)));

  LcmVae *vae = lcm_vae_load(model, LCM_PRECISION_FP32, &error);
  g_assert_no_error(error);
  float *image = g_new(float, 3 * 64 * 64);
  g_assert_true(lcm_vae_decode(vae, out, 1, side, side, image, &error));
  g_assert_no_error(error);
  g_assert_true(finite_and_nonzero(image, 3 * 64 * 64));

  g_free(image);
  g_free(context);
  lcm_vae_free(vae);
  lcm_unet_free(unet);
  lcm_text_encoder_free(encoder);
  lcm_model_free(model);
  test_remove_tree(dir);
}

static gboolean lists_tensor(GArray *tensors, const char *name) {
  for (guint i = 0; i < tensors->len; i++)
    if (strcmp(g_array_index(tensors, GenTensor, i).name, name) == 0) return TRUE;
  return FALSE;
}

/* A VAE config with use_quant_conv and use_post_quant_conv false: the
 * generator leaves both 1x1 convolutions out, in tensors and FLOPs, and the
 * loader runs such a VAE without them. */
static void test_vae_without_quant_convs(void) {
  g_autofree char *with = tiny_config("vae");
  GString *edited = g_string_new(with);
  g_assert_cmpuint(g_string_replace(edited, "{",
                                    "{\"use_quant_conv\": false, \"use_post_quant_conv\": false,",
                                    1),
                   ==, 1);
  g_autofree char *without = g_string_free(edited, FALSE);

  g_autoptr(GError) error = NULL;
  GArray *all = model_gen_tensors(GEN_VAE, with, &error);
  g_assert_no_error(error);
  GArray *fewer = model_gen_tensors(GEN_VAE, without, &error);
  g_assert_no_error(error);
  const char *names[] = {"quant_conv.weight", "quant_conv.bias", "post_quant_conv.weight",
                         "post_quant_conv.bias"};
  for (size_t i = 0; i < G_N_ELEMENTS(names); i++) {
    g_assert_true(lists_tensor(all, names[i]));
    g_assert_false(lists_tensor(fewer, names[i]));
  }
  g_assert_cmpuint(all->len, ==, fewer->len + 4);
  /* 8 -> 8 and 4 -> 4 channels, 1x1, with biases */
  g_assert_cmpint(tensor_list_params(all) - tensor_list_params(fewer), ==, 8 * 8 + 8 + 4 * 4 + 4);
  g_array_unref(all);
  /* 2 x the multiply-accumulates of the 1x1 convs at the 8x8 latent size */
  g_assert_cmpfloat(stage_flops(GEN_STAGE_VAE_DECODE, with, 8) -
                        stage_flops(GEN_STAGE_VAE_DECODE, without, 8),
                    ==, 2.0 * 4 * 4 * 8 * 8);
  g_assert_cmpfloat(stage_flops(GEN_STAGE_VAE_ENCODE, with, 8) -
                        stage_flops(GEN_STAGE_VAE_ENCODE, without, 8),
                    ==, 2.0 * 8 * 8 * 8 * 8);

  char *texts[3];
  GenConfigs configs = tiny_configs(texts);
  configs.vae = without;
  g_autofree char *dir = g_dir_make_tmp("lcm-bench-model-XXXXXX", &error);
  g_assert_no_error(error);
  g_assert_true(model_gen_make_model(dir, &configs, 5, &error));
  g_assert_no_error(error);
  for (int i = 0; i < 3; i++) g_free(texts[i]);
  g_autofree char *weights_path = g_build_filename(dir, model_gen_weights_file(GEN_VAE), NULL);
  StFile *file = st_open(weights_path, &error);
  g_assert_no_error(error);
  assert_same_tensors(fewer, file);
  st_close(file);
  g_array_unref(fewer);

  LcmModel *model = lcm_model_open(dir, &error);
  g_assert_no_error(error);
  LcmVae *vae = lcm_vae_load(model, LCM_PRECISION_FP32, &error);
  g_assert_no_error(error);
  enum { SIDE = 64, LATENT = SIDE / 8 };
  float image[3 * SIDE * SIDE], mean[4 * LATENT * LATENT], logvar[4 * LATENT * LATENT];
  LcmRng *rng = lcm_rng_new(9);
  lcm_rng_randn(rng, image, G_N_ELEMENTS(image));
  lcm_rng_free(rng);
  g_assert_true(lcm_vae_encode(vae, image, 1, SIDE, SIDE, mean, logvar, &error));
  g_assert_no_error(error);
  g_assert_true(finite_and_nonzero(mean, G_N_ELEMENTS(mean)));
  g_assert_true(lcm_vae_decode(vae, mean, 1, LATENT, LATENT, image, &error));
  g_assert_no_error(error);
  g_assert_true(finite_and_nonzero(image, G_N_ELEMENTS(image)));
  lcm_vae_free(vae);
  lcm_model_free(model);
  test_remove_tree(dir);
}

int main(int argc, char **argv) {
  g_test_init(&argc, &argv, NULL);
  g_test_add_func("/bench-model/tiny-tensor-lists", test_tiny_tensor_lists);
  g_test_add_func("/bench-model/sd15-parameter-counts", test_sd15_parameter_counts);
  g_test_add_func("/bench-model/tiny-sdxl-tensor-lists", test_tiny_sdxl_tensor_lists);
  g_test_add_func("/bench-model/sdxl-parameter-counts", test_sdxl_parameter_counts);
  g_test_add_func("/bench-model/sdxl-flops", test_sdxl_flops);
  g_test_add_func("/bench-model/make-sdxl-model", test_make_sdxl_model);
  g_test_add_func("/bench-model/sd15-flops", test_sd15_flops);
  g_test_add_func("/bench-model/bad-configs", test_bad_configs);
  g_test_add_func("/bench-model/make-model-writes-folder", test_make_model_writes_folder);
  g_test_add_func("/bench-model/make-model-is-reproducible", test_make_model_is_reproducible);
  g_test_add_func("/bench-model/generated-model-runs", test_generated_model_runs);
  g_test_add_func("/bench-model/vae-without-quant-convs", test_vae_without_quant_convs);
  return g_test_run();
}
