/* Model files: single-file key mapping against the golden keymap, weights
 * access and its errors, configs (read and inferred), and model opening with
 * refusal of pickles, SD2 and incomplete folders. */
#include "config.h"
#include "lcm.h"
#include "model.h"
#include "testutil.h"
#include "weights.h"

#include <glib/gstdio.h>
#include <json-glib/json-glib.h>
#include <math.h>
#include <string.h>

static char *tmp_dir;

static char *tmp_path(const char *name) {
  return g_build_filename(tmp_dir, name, NULL);
}

typedef struct {
  const char *name;
  int ndims;
  int64_t shape[4];
} TensorSpec;

/* A safetensors file of zero-filled fp32 tensors. */
static void write_zeros(const char *path, const TensorSpec *specs, guint n) {
  StWriteTensor *tensors = g_new0(StWriteTensor, n);
  float **buffers = g_new0(float *, n);
  for (guint i = 0; i < n; i++) {
    int64_t numel = 1;
    for (int d = 0; d < specs[i].ndims; d++) numel *= specs[i].shape[d];
    buffers[i] = g_new0(float, numel > 0 ? numel : 1);
    tensors[i] = (StWriteTensor){specs[i].name, ST_F32, specs[i].ndims, specs[i].shape, buffers[i]};
  }
  GError *error = NULL;
  g_assert_true(st_write(path, tensors, n, NULL, &error));
  g_assert_no_error(error);
  for (guint i = 0; i < n; i++) g_free(buffers[i]);
  g_free(buffers);
  g_free(tensors);
}

/* ---- Single-file key mapping ------------------------------------------------ */

static const struct {
  Component component;
  const char *prefix;    /* of the keymap's diffusers names */
  const char *reference; /* the same network as a diffusers file */
} networks[] = {
    {COMPONENT_UNET, "unet.", "golden/tiny-lcm/unet/diffusion_pytorch_model.safetensors"},
    {COMPONENT_VAE, "vae.", "golden/tiny-lcm/vae/diffusion_pytorch_model.safetensors"},
    {COMPONENT_TEXT_ENCODER, "text_encoder.", "golden/tiny-lcm/text_encoder/model.safetensors"},
};

/* Every checkpoint key maps to the keymap's diffusers key, exactly once, with
 * the reference file's values (within fp16 rounding) and shape. */
static void test_checkpoint_keymap(void) {
  char *keymap_path = test_data_path("golden/singlefile_keymap.json");
  JsonParser *parser = json_parser_new();
  GError *error = NULL;
  g_assert_true(json_parser_load_from_file(parser, keymap_path, &error));
  JsonObject *root = json_node_get_object(json_parser_get_root(parser));
  JsonObject *keymap = json_object_get_object_member(root, "map");

  char *checkpoint_path = test_data_path("golden/tiny-lcm.safetensors");
  StFile *checkpoint = st_open(checkpoint_path, &error);
  g_assert_no_error(error);
  g_assert_cmpuint(st_count(checkpoint), ==, json_object_get_int_member(root, "n_keys"));

  GHashTable *seen = g_hash_table_new(g_str_hash, g_str_equal);
  for (size_t n = 0; n < G_N_ELEMENTS(networks); n++) {
    Weights *mapped = weights_open_checkpoint(checkpoint, networks[n].component, &error);
    g_assert_no_error(error);
    char *reference_path = test_data_path(networks[n].reference);
    Weights *reference = weights_open_file(reference_path, &error);
    g_assert_no_error(error);

    GPtrArray *names = weights_names(mapped);
    g_assert_cmpuint(names->len, >, 0);
    for (guint i = 0; i < names->len; i++) {
      const char *name = names->pdata[i];
      const char *source = weights_source_name(mapped, name);
      g_assert_nonnull(source);
      g_assert_true(g_hash_table_add(seen, (gpointer)source)); /* mapped once */
      JsonObject *entry = json_object_get_object_member(keymap, source);
      g_assert_nonnull(entry);
      char *expected = g_strconcat(networks[n].prefix, name, NULL);
      g_assert_cmpstr(json_object_get_string_member(entry, "diffusers"), ==, expected);
      g_free(expected);

      int ndims, ref_ndims;
      int64_t shape[ST_MAX_DIMS], ref_shape[ST_MAX_DIMS];
      g_assert_true(weights_shape(mapped, name, &ndims, shape));
      g_assert_true(weights_shape(reference, name, &ref_ndims, ref_shape));
      g_assert_cmpint(ndims, ==, ref_ndims);
      JsonArray *keymap_shape = json_object_get_array_member(entry, "diffusers_shape");
      g_assert_cmpint(json_array_get_length(keymap_shape), ==, ndims);
      for (int d = 0; d < ndims; d++) {
        g_assert_cmpint(shape[d], ==, ref_shape[d]);
        g_assert_cmpint(shape[d], ==, json_array_get_int_element(keymap_shape, (guint)d));
      }

      float *values = weights_get(mapped, name, ndims, shape, &error);
      g_assert_no_error(error);
      float *ref_values = weights_get(reference, name, ndims, shape, &error);
      g_assert_no_error(error);
      int64_t numel = 1;
      for (int d = 0; d < ndims; d++) numel *= shape[d];
      for (int64_t k = 0; k < numel; k++) {
        /* fp16: 11 significant bits, subnormal step 2^-24 */
        double tolerance = fabs(ref_values[k]) * 0x1p-11 + 0x1p-24;
        if (fabs(values[k] - ref_values[k]) > tolerance)
          g_error("%s[%" G_GINT64_FORMAT "]: %g vs %g", name, k, values[k], ref_values[k]);
      }
      g_free(values);
      g_free(ref_values);
    }
    /* everything was fetched once, so nothing is unused */
    GPtrArray *unused = weights_unused(mapped);
    g_assert_cmpuint(unused->len, ==, 0);
    g_ptr_array_unref(unused);
    g_ptr_array_unref(names);
    weights_free(reference);
    weights_free(mapped);
    g_free(reference_path);
  }
  g_assert_cmpuint(g_hash_table_size(seen), ==, st_count(checkpoint));
  GPtrArray *unmapped = weights_checkpoint_unmapped(checkpoint);
  g_assert_cmpuint(unmapped->len, ==, 0);
  g_ptr_array_unref(unmapped);

  g_hash_table_unref(seen);
  st_close(checkpoint);
  g_free(checkpoint_path);
  g_object_unref(parser);
  g_free(keymap_path);
}

static void test_unmapped_keys_reported(void) {
  char *path = tmp_path("extra-keys.safetensors");
  const TensorSpec specs[] = {
      {"model.diffusion_model.input_blocks.0.0.weight", 4, {2, 4, 3, 3}},
      {"model_ema.decay", 0, {0}},
      {"alphas_cumprod", 1, {3}},
  };
  write_zeros(path, specs, G_N_ELEMENTS(specs));
  GError *error = NULL;
  StFile *file = st_open(path, &error);
  g_assert_no_error(error);
  GPtrArray *unmapped = weights_checkpoint_unmapped(file);
  g_assert_cmpuint(unmapped->len, ==, 2);
  g_assert_cmpstr(unmapped->pdata[0], ==, "alphas_cumprod");
  g_assert_cmpstr(unmapped->pdata[1], ==, "model_ema.decay");
  g_ptr_array_unref(unmapped);
  /* the file has no VAE: that is MISSING, naming the expected keys */
  g_assert_null(weights_open_checkpoint(file, COMPONENT_VAE, &error));
  test_expect_error(error, LCM_ERROR_MISSING, path, "no VAE tensors", "first_stage_model.", NULL);
  g_clear_error(&error);
  st_close(file);
  g_unlink(path);
  g_free(path);
}

/* ---- Weights access --------------------------------------------------------- */

static void test_weights_errors_and_unused(void) {
  char *path = test_data_path("golden/tiny-lcm/unet/diffusion_pytorch_model.safetensors");
  GError *error = NULL;
  Weights *weights = weights_open_file(path, &error);
  g_assert_no_error(error);
  g_assert_cmpstr(weights_path(weights), ==, path);
  GPtrArray *names = weights_names(weights);
  guint total = names->len;
  g_ptr_array_unref(names);

  g_assert_null(weights_get(weights, "conv_in.weight", 3, (int64_t[]){32, 4, 3}, &error));
  test_expect_error(error, LCM_ERROR_SHAPE, path,
                    "tensor 'conv_in.weight' has shape [32, 4, 3, 3], expected [32, 4, 3]", NULL);
  g_clear_error(&error);
  g_assert_null(weights_get(weights, "conv_in.weight", 4, (int64_t[]){32, 9, 3, 3}, &error));
  test_expect_error(error, LCM_ERROR_SHAPE, "expected [32, 9, 3, 3]", NULL);
  g_clear_error(&error);
  g_assert_null(weights_get(weights, "no.such.weight", 1, (int64_t[]){1}, &error));
  test_expect_error(error, LCM_ERROR_MISSING, path, "tensor 'no.such.weight' is missing", NULL);
  g_clear_error(&error);
  g_assert_false(weights_contains(weights, "no.such.weight"));

  /* failed requests do not count as used */
  GPtrArray *unused = weights_unused(weights);
  g_assert_cmpuint(unused->len, ==, total);
  g_ptr_array_unref(unused);
  float *data = weights_get(weights, "conv_in.weight", 4, (int64_t[]){32, 4, 3, 3}, &error);
  g_assert_no_error(error);
  g_assert_nonnull(data);
  g_free(data);
  unused = weights_unused(weights);
  g_assert_cmpuint(unused->len, ==, total - 1);
  for (guint i = 0; i < unused->len; i++) g_assert_cmpstr(unused->pdata[i], !=, "conv_in.weight");
  g_ptr_array_unref(unused);
  weights_free(weights);
  g_free(path);
}

/* VAE attention is [C,C,1,1] in the checkpoint but [C,C] by diffusers name;
 * messages name both the diffusers and the stored key. */
static void test_checkpoint_vae_attention_shape(void) {
  char *path = test_data_path("golden/tiny-lcm.safetensors");
  GError *error = NULL;
  StFile *file = st_open(path, &error);
  g_assert_no_error(error);
  Weights *vae = weights_open_checkpoint(file, COMPONENT_VAE, &error);
  g_assert_no_error(error);
  const char *to_q = "decoder.mid_block.attentions.0.to_q.weight";
  float *data = weights_get(vae, to_q, 2, (int64_t[]){64, 64}, &error);
  g_assert_no_error(error);
  g_free(data);
  g_assert_null(weights_get(vae, to_q, 4, (int64_t[]){64, 64, 1, 1}, &error));
  test_expect_error(error, LCM_ERROR_SHAPE, path, to_q,
                    "first_stage_model.decoder.mid.attn_1.q.weight",
                    "has shape [64, 64], expected [64, 64, 1, 1]", NULL);
  g_clear_error(&error);
  g_assert_null(weights_get(vae, "decoder.missing.weight", 1, (int64_t[]){1}, &error));
  test_expect_error(error, LCM_ERROR_MISSING, path, "'decoder.missing.weight' (VAE) is missing",
                    NULL);
  g_clear_error(&error);
  weights_free(vae);
  st_close(file);
  g_free(path);
}

/* Files from diffusers < 0.14 name the VAE attention query/key/value/proj_attn. */
static void test_legacy_vae_attention_names(void) {
  char *path = tmp_path("legacy-vae.safetensors");
  const TensorSpec specs[] = {
      {"decoder.mid_block.attentions.0.query.weight", 2, {8, 8}},
      {"decoder.mid_block.attentions.0.proj_attn.bias", 1, {8}},
      {"decoder.mid_block.attentions.0.group_norm.weight", 1, {8}},
  };
  write_zeros(path, specs, G_N_ELEMENTS(specs));
  GError *error = NULL;
  Weights *weights = weights_open_file(path, &error);
  g_assert_no_error(error);
  g_assert_true(weights_contains(weights, "decoder.mid_block.attentions.0.to_q.weight"));
  g_assert_true(weights_contains(weights, "decoder.mid_block.attentions.0.to_out.0.bias"));
  g_assert_true(weights_contains(weights, "decoder.mid_block.attentions.0.group_norm.weight"));
  g_assert_cmpstr(weights_source_name(weights, "decoder.mid_block.attentions.0.to_q.weight"), ==,
                  "decoder.mid_block.attentions.0.query.weight");
  weights_free(weights);

  /* old and new names of the same tensor together are ambiguous */
  const TensorSpec both[] = {
      {"decoder.mid_block.attentions.0.query.weight", 2, {8, 8}},
      {"decoder.mid_block.attentions.0.to_q.weight", 2, {8, 8}},
  };
  write_zeros(path, both, G_N_ELEMENTS(both));
  g_assert_null(weights_open_file(path, &error));
  test_expect_error(error, LCM_ERROR_FORMAT, path,
                    "both map to 'decoder.mid_block.attentions.0.to_q.weight'", NULL);
  g_clear_error(&error);
  g_unlink(path);
  g_free(path);
}

/* ---- Configs ---------------------------------------------------------------- */

static void assert_unet_config_equal(const UNetConfig *a, const UNetConfig *b) {
  g_assert_cmpint(a->in_channels, ==, b->in_channels);
  g_assert_cmpint(a->out_channels, ==, b->out_channels);
  g_assert_cmpint(a->n_blocks, ==, b->n_blocks);
  for (int i = 0; i < a->n_blocks; i++) {
    g_assert_cmpint(a->block_out_channels[i], ==, b->block_out_channels[i]);
    g_assert_cmpint(a->down_cross_attn[i], ==, b->down_cross_attn[i]);
    g_assert_cmpint(a->up_cross_attn[i], ==, b->up_cross_attn[i]);
    g_assert_cmpint(a->heads[i], ==, b->heads[i]);
  }
  g_assert_cmpint(a->layers_per_block, ==, b->layers_per_block);
  for (int i = 0; i < a->n_blocks; i++)
    for (int j = 0; j <= a->layers_per_block; j++) {
      if (j < a->layers_per_block) g_assert_cmpint(a->down_depth[i][j], ==, b->down_depth[i][j]);
      g_assert_cmpint(a->up_depth[i][j], ==, b->up_depth[i][j]);
    }
  g_assert_cmpint(a->mid_depth, ==, b->mid_depth);
  g_assert_cmpint(a->mid_cross_attn, ==, b->mid_cross_attn);
  g_assert_cmpint(a->addition_time_embed_dim, ==, b->addition_time_embed_dim);
  g_assert_cmpint(a->projection_class_embeddings_input_dim, ==,
                  b->projection_class_embeddings_input_dim);
  g_assert_cmpint(a->cross_attention_dim, ==, b->cross_attention_dim);
  g_assert_cmpint(a->norm_num_groups, ==, b->norm_num_groups);
  g_assert_cmpfloat(a->norm_eps, ==, b->norm_eps);
  g_assert_cmpint(a->time_cond_proj_dim, ==, b->time_cond_proj_dim);
  g_assert_cmpint(a->use_linear_projection, ==, b->use_linear_projection);
  g_assert_cmpint(a->flip_sin_to_cos, ==, b->flip_sin_to_cos);
  g_assert_cmpfloat(a->freq_shift, ==, b->freq_shift);
}

static void assert_vae_config_equal(const VaeConfig *a, const VaeConfig *b) {
  g_assert_cmpint(a->in_channels, ==, b->in_channels);
  g_assert_cmpint(a->out_channels, ==, b->out_channels);
  g_assert_cmpint(a->latent_channels, ==, b->latent_channels);
  g_assert_cmpint(a->n_blocks, ==, b->n_blocks);
  for (int i = 0; i < a->n_blocks; i++)
    g_assert_cmpint(a->block_out_channels[i], ==, b->block_out_channels[i]);
  g_assert_cmpint(a->layers_per_block, ==, b->layers_per_block);
  g_assert_cmpint(a->norm_num_groups, ==, b->norm_num_groups);
  g_assert_cmpfloat(a->scaling_factor, ==, b->scaling_factor);
  g_assert_cmpint(a->mid_block_add_attention, ==, b->mid_block_add_attention);
  g_assert_cmpint(a->use_quant_conv, ==, b->use_quant_conv);
  g_assert_cmpint(a->use_post_quant_conv, ==, b->use_post_quant_conv);
}

static void test_config_read(void) {
  GError *error = NULL;
  char *path = test_data_path("golden/tiny-lcm/unet/config.json");
  UNetConfig unet;
  g_assert_true(unet_config_read(path, &unet, &error));
  g_assert_no_error(error);
  const UNetConfig expected = {
      .in_channels = 4,
      .out_channels = 4,
      .n_blocks = 3,
      .block_out_channels = {32, 64, 64},
      .down_cross_attn = {TRUE, TRUE, FALSE},
      .up_cross_attn = {FALSE, TRUE, TRUE},
      .heads = {8, 8, 8},
      .layers_per_block = 2,
      .down_depth = {{1, 1}, {1, 1}},
      .up_depth = {{0}, {1, 1, 1}, {1, 1, 1}},
      .mid_depth = 1,
      .mid_cross_attn = TRUE,
      .cross_attention_dim = 32,
      .norm_num_groups = 32,
      .norm_eps = 1e-5f,
      .time_cond_proj_dim = 256,
      .use_linear_projection = FALSE,
      .flip_sin_to_cos = TRUE,
      .freq_shift = 0.0f,
      .sample_size = 64,
  };
  assert_unet_config_equal(&unet, &expected);
  g_assert_cmpint(unet.sample_size, ==, 64);
  g_free(path);

  path = test_data_path("golden/tiny-inpaint/unet/config.json");
  g_assert_true(unet_config_read(path, &unet, &error));
  g_assert_cmpint(unet.in_channels, ==, 9);
  g_assert_cmpint(unet.time_cond_proj_dim, ==, 0); /* null */
  g_free(path);

  path = test_data_path("golden/tiny-lcm/vae/config.json");
  VaeConfig vae;
  g_assert_true(vae_config_read(path, &vae, &error));
  const VaeConfig expected_vae = {
      .in_channels = 3,
      .out_channels = 3,
      .latent_channels = 4,
      .n_blocks = 4,
      .block_out_channels = {32, 32, 64, 64},
      .layers_per_block = 2,
      .norm_num_groups = 32,
      .scaling_factor = 0.18215f,
      .mid_block_add_attention = TRUE,
      .use_quant_conv = TRUE,
      .use_post_quant_conv = TRUE,
  };
  assert_vae_config_equal(&vae, &expected_vae);
  g_free(path);

  path = test_data_path("golden/tiny-lcm/text_encoder/config.json");
  ClipConfig clip;
  g_assert_true(clip_config_read(path, &clip, &error));
  g_assert_cmpint(clip.vocab_size, ==, 49408);
  g_assert_cmpint(clip.hidden_size, ==, 32);
  g_assert_cmpint(clip.intermediate_size, ==, 37);
  g_assert_cmpint(clip.num_hidden_layers, ==, 3);
  g_assert_cmpint(clip.num_attention_heads, ==, 4);
  g_assert_cmpint(clip.max_position_embeddings, ==, 77);
  g_assert_cmpfloat(clip.layer_norm_eps, ==, 1e-5f);
  g_assert_true(clip.quick_gelu);
  g_free(path);

  /* the wrong kind of config is refused by class */
  path = test_data_path("golden/tiny-lcm/vae/config.json");
  g_assert_false(unet_config_read(path, &unet, &error));
  test_expect_error(error, LCM_ERROR_UNSUPPORTED, path, "AutoencoderKL", NULL);
  g_clear_error(&error);
  g_free(path);
  path = tmp_path("absent-config.json");
  g_assert_false(vae_config_read(path, &vae, &error));
  test_expect_error(error, LCM_ERROR_MISSING, path, NULL);
  g_clear_error(&error);
  g_free(path);
}

/* tiny-lcm's UNet config with `from` replaced by `to`, in a temp file. */
static char *unet_config_variant(const char *from, const char *to) {
  char *original = test_data_path("golden/tiny-lcm/unet/config.json");
  char *text;
  g_assert_true(g_file_get_contents(original, &text, NULL, NULL));
  g_assert_nonnull(strstr(text, from));
  GString *edited = g_string_new(text);
  g_string_replace(edited, from, to, 1);
  char *path = tmp_path("variant-config.json");
  g_assert_true(g_file_set_contents(path, edited->str, (gssize)edited->len, NULL));
  g_string_free(edited, TRUE);
  g_free(text);
  g_free(original);
  return path;
}

static void test_config_variants(void) {
  GError *error = NULL;
  UNetConfig unet;
  char *path =
      unet_config_variant("\"attention_head_dim\": 8", "\"attention_head_dim\": [1, 2, 4]");
  g_assert_true(unet_config_read(path, &unet, &error));
  g_assert_no_error(error);
  g_assert_cmpint(unet.heads[0], ==, 1);
  g_assert_cmpint(unet.heads[1], ==, 2);
  g_assert_cmpint(unet.heads[2], ==, 4);
  g_free(path);

  path = unet_config_variant("\"num_attention_heads\": null", "\"num_attention_heads\": 4");
  g_assert_true(unet_config_read(path, &unet, &error));
  for (int i = 0; i < 3; i++) g_assert_cmpint(unet.heads[i], ==, 4);
  g_free(path);

  path = unet_config_variant("\"attention_head_dim\": 8", "\"attention_head_dim\": [8, 8]");
  g_assert_false(unet_config_read(path, &unet, &error));
  test_expect_error(error, LCM_ERROR_FORMAT, path, "'attention_head_dim'", "list of 3", NULL);
  g_clear_error(&error);
  g_free(path);

  path = unet_config_variant("\"DownBlock2D\"", "\"SimpleCrossAttnDownBlock2D\"");
  g_assert_false(unet_config_read(path, &unet, &error));
  test_expect_error(error, LCM_ERROR_UNSUPPORTED, path, "SimpleCrossAttnDownBlock2D", NULL);
  g_clear_error(&error);
  g_free(path);

  /* SDXL's text_time needs its sizes; other added embeddings are refused */
  path = unet_config_variant("\"addition_embed_type\": null",
                             "\"addition_embed_type\": \"text_time\"");
  g_assert_false(unet_config_read(path, &unet, &error));
  test_expect_error(error, LCM_ERROR_FORMAT, path, "addition_time_embed_dim", NULL);
  g_clear_error(&error);
  g_free(path);
  path = unet_config_variant("\"addition_embed_type\": null", "\"addition_embed_type\": \"image\"");
  g_assert_false(unet_config_read(path, &unet, &error));
  test_expect_error(error, LCM_ERROR_UNSUPPORTED, path, "'image'", NULL);
  g_clear_error(&error);
  g_free(path);

  path = unet_config_variant("\"block_out_channels\": [", "\"block_out_channels\": [-1, ");
  g_assert_false(unet_config_read(path, &unet, &error));
  test_expect_error(error, LCM_ERROR_FORMAT, path, "'block_out_channels'", NULL);
  g_clear_error(&error);
  g_free(path);

  path = unet_config_variant("{", "[");
  g_assert_false(unet_config_read(path, &unet, &error));
  test_expect_error(error, LCM_ERROR_FORMAT, path, NULL);
  g_clear_error(&error);
  g_free(path);

  path = tmp_path("vae-no-mid-attention.json");
  const char *vae_json = "{\"block_out_channels\": [8, 16], \"mid_block_add_attention\": false}";
  g_assert_true(g_file_set_contents(path, vae_json, -1, NULL));
  VaeConfig vae;
  g_assert_true(vae_config_read(path, &vae, &error));
  g_assert_false(vae.mid_block_add_attention);
  g_assert_cmpint(vae.n_blocks, ==, 2);
  g_assert_cmpint(vae.latent_channels, ==, 4);
  g_free(path);
}

/* SDXL configs: per-level transformer depth and head count, the SSD-1B
 * layout (per-attention depths, reversed up depths, plain mid block) and
 * the added conditioning; shapes give the same depths. */
static void test_config_sdxl(void) {
  GError *error = NULL;
  char *path = test_data_path("golden-sdxl/tiny-ssd1b-lcm/unet/config.json");
  UNetConfig parsed;
  g_assert_true(unet_config_read(path, &parsed, &error));
  g_assert_no_error(error);
  const UNetConfig expected = {
      .in_channels = 4,
      .out_channels = 4,
      .n_blocks = 3,
      .block_out_channels = {32, 32, 32},
      .down_cross_attn = {FALSE, TRUE, TRUE},
      .up_cross_attn = {TRUE, TRUE, FALSE},
      .heads = {2, 4, 8},
      .layers_per_block = 2,
      .down_depth = {{0, 0}, {1, 1}, {2, 2}},
      .up_depth = {{2, 2, 3}, {2, 1, 1}, {0, 0, 0}},
      .mid_depth = 0,
      .mid_cross_attn = FALSE,
      .cross_attention_dim = 40,
      .norm_num_groups = 32,
      .norm_eps = 1e-5f,
      .time_cond_proj_dim = 256,
      .addition_time_embed_dim = 8,
      .projection_class_embeddings_input_dim = 64,
      .use_linear_projection = TRUE,
      .flip_sin_to_cos = TRUE,
  };
  assert_unet_config_equal(&parsed, &expected);
  g_free(path);

  /* the weights have the depths the config gives */
  path = test_data_path("golden-sdxl/tiny-ssd1b-lcm/unet/diffusion_pytorch_model.safetensors");
  Weights *weights = weights_open_file(path, &error);
  g_assert_no_error(error);
  UNetConfig inferred;
  /* a tiny add_embedding cannot be SDXL's 6 x 256 sinusoids: the config is needed */
  g_assert_false(unet_config_infer(weights, &inferred, &error));
  test_expect_error(error, LCM_ERROR_UNSUPPORTED, "add_embedding", "config.json", NULL);
  g_clear_error(&error);
  weights_free(weights);
  g_free(path);

  /* SDXL proper: one depth per level, mirrored on the way up */
  path = test_data_path("golden-sdxl/tiny-sdxl-lcm/unet/config.json");
  g_assert_true(unet_config_read(path, &parsed, &error));
  g_assert_no_error(error);
  g_assert_true(parsed.mid_cross_attn);
  g_assert_cmpint(parsed.mid_depth, ==, 2);
  g_assert_cmpint(parsed.down_depth[1][1], ==, 2);
  g_assert_cmpint(parsed.up_depth[0][2], ==, 2);
  g_assert_cmpint(parsed.up_depth[1][0], ==, 2);
  g_assert_cmpint(parsed.up_depth[2][0], ==, 0);

  /* per-attention lists need the up path spelled out */
  char *text;
  g_assert_true(g_file_get_contents(path, &text, NULL, NULL));
  GString *edited = g_string_new(text);
  g_assert_cmpuint(g_string_replace(edited, "\"transformer_layers_per_block\": [\n    1,\n    2,",
                                    "\"transformer_layers_per_block\": [\n    1,\n    [2, 2],", 1),
                   ==, 1);
  char *variant = tmp_path("sdxl-variant.json");
  g_assert_true(g_file_set_contents(variant, edited->str, (gssize)edited->len, NULL));
  g_assert_false(unet_config_read(variant, &parsed, &error));
  test_expect_error(error, LCM_ERROR_FORMAT, "reverse_transformer_layers_per_block", NULL);
  g_clear_error(&error);
  g_unlink(variant);
  g_free(variant);
  g_string_free(edited, TRUE);
  g_free(text);
  g_free(path);
}

/* The shapes of tiny-lcm.safetensors give tiny-lcm's configs. */
static void test_config_infer(void) {
  char *checkpoint_path = test_data_path("golden/tiny-lcm.safetensors");
  GError *error = NULL;
  StFile *file = st_open(checkpoint_path, &error);
  g_assert_no_error(error);

  Weights *unet_weights = weights_open_checkpoint(file, COMPONENT_UNET, &error);
  UNetConfig inferred, parsed;
  g_assert_true(unet_config_infer(unet_weights, &inferred, &error));
  g_assert_no_error(error);
  char *path = test_data_path("golden/tiny-lcm/unet/config.json");
  g_assert_true(unet_config_read(path, &parsed, &error));
  assert_unet_config_equal(&inferred, &parsed);
  g_free(path);

  Weights *vae_weights = weights_open_checkpoint(file, COMPONENT_VAE, &error);
  VaeConfig inferred_vae, parsed_vae;
  g_assert_true(vae_config_infer(vae_weights, &inferred_vae, &error));
  g_assert_no_error(error);
  path = test_data_path("golden/tiny-lcm/vae/config.json");
  g_assert_true(vae_config_read(path, &parsed_vae, &error));
  assert_vae_config_equal(&inferred_vae, &parsed_vae);
  g_free(path);

  /* 32 wide: the head count does not follow, the user must give the config */
  Weights *text_weights = weights_open_checkpoint(file, COMPONENT_TEXT_ENCODER, &error);
  ClipConfig clip;
  g_assert_false(clip_config_infer(text_weights, &clip, &error));
  test_expect_error(error, LCM_ERROR_UNSUPPORTED, checkpoint_path, "32 wide", "config.json", NULL);
  g_clear_error(&error);

  /* the inpainting UNet (a diffusers file) infers as 9-channel, no cond_proj */
  char *inpaint_path =
      test_data_path("golden/tiny-inpaint/unet/diffusion_pytorch_model.safetensors");
  Weights *inpaint = weights_open_file(inpaint_path, &error);
  g_assert_true(unet_config_infer(inpaint, &inferred, &error));
  path = test_data_path("golden/tiny-inpaint/unet/config.json");
  g_assert_true(unet_config_read(path, &parsed, &error));
  assert_unet_config_equal(&inferred, &parsed);
  g_free(path);
  weights_free(inpaint);
  g_free(inpaint_path);

  weights_free(text_weights);
  weights_free(vae_weights);
  weights_free(unet_weights);
  st_close(file);
  g_free(checkpoint_path);
}

static void test_clip_infer_heads(void) {
  char *path = tmp_path("clip-128.safetensors");
  const TensorSpec specs[] = {
      {"text_model.embeddings.token_embedding.weight", 2, {10, 128}},
      {"text_model.embeddings.position_embedding.weight", 2, {77, 128}},
      {"text_model.encoder.layers.0.mlp.fc1.weight", 2, {300, 128}},
      {"text_model.encoder.layers.0.self_attn.q_proj.weight", 2, {128, 128}},
      {"text_model.encoder.layers.1.self_attn.q_proj.weight", 2, {128, 128}},
  };
  write_zeros(path, specs, G_N_ELEMENTS(specs));
  GError *error = NULL;
  Weights *weights = weights_open_file(path, &error);
  g_assert_no_error(error);
  ClipConfig clip;
  g_assert_true(clip_config_infer(weights, &clip, &error));
  g_assert_no_error(error);
  g_assert_cmpint(clip.num_attention_heads, ==, 2);
  g_assert_cmpint(clip.hidden_size, ==, 128);
  g_assert_cmpint(clip.vocab_size, ==, 10);
  g_assert_cmpint(clip.intermediate_size, ==, 300);
  g_assert_cmpint(clip.num_hidden_layers, ==, 2);
  g_assert_cmpint(clip.max_position_embeddings, ==, 77);
  weights_free(weights);
  g_unlink(path);
  g_free(path);
}

/* ---- Opening models --------------------------------------------------------- */

static void test_open_folder(void) {
  char *path = test_data_path("golden/tiny-lcm");
  GError *error = NULL;
  LcmModel *model = lcm_model_open(path, &error);
  g_assert_no_error(error);
  g_assert_nonnull(model);
  g_assert_nonnull(strstr(lcm_model_describe(model), "diffusers folder"));
  g_assert_nonnull(strstr(lcm_model_describe(model), path));
  g_assert_true(g_str_has_suffix(model_scheduler_config(model), "scheduler_config.json"));
  ClipConfig clip;
  g_assert_true(model_clip_config(model, COMPONENT_TEXT_ENCODER, &clip, &error));
  g_assert_cmpint(clip.num_attention_heads, ==, 4);
  UNetConfig unet;
  g_assert_true(model_unet_config(model, &unet, &error));
  g_assert_cmpint(unet.time_cond_proj_dim, ==, 256);
  VaeConfig vae;
  g_assert_true(model_vae_config(model, &vae, &error));
  g_assert_cmpint(vae.n_blocks, ==, 4);
  for (int c = COMPONENT_UNET; c <= COMPONENT_TEXT_ENCODER; c++) {
    Weights *weights = model_weights(model, (Component)c, &error);
    g_assert_no_error(error);
    g_assert_nonnull(weights);
  }
  g_assert_true(weights_contains(model_weights(model, COMPONENT_UNET, NULL), "conv_in.weight"));
  LcmTokenizer *tokenizer = lcm_model_load_tokenizer(model, &error);
  g_assert_no_error(error);
  int32_t ids[LCM_CLIP_TOKENS];
  lcm_tokenizer_encode(tokenizer, "a photo", ids);
  g_assert_cmpint(ids[0], ==, LCM_CLIP_BOS);
  lcm_tokenizer_free(tokenizer);
  lcm_model_free(model);
  g_free(path);
}

static void test_open_parts_fp16_unet(void) {
  char *unet = test_data_path("golden/tiny-lcm/unet");
  char *weights_file =
      test_data_path("golden/tiny-lcm/unet/diffusion_pytorch_model.fp16.safetensors");
  LcmModelParts parts = {.unet = unet, .unet_weights = weights_file};
  GError *error = NULL;
  LcmModel *model = lcm_model_open_parts(&parts, &error);
  g_assert_no_error(error);
  Weights *weights = model_weights(model, COMPONENT_UNET, &error);
  g_assert_cmpstr(weights_path(weights), ==, weights_file);
  g_assert_null(model_weights(model, COMPONENT_VAE, &error));
  test_expect_error(error, LCM_ERROR_MISSING, "has no VAE", NULL);
  g_clear_error(&error);
  g_assert_null(model_scheduler_config(model));
  lcm_model_free(model);

  /* a bare file name is looked up inside the folder */
  parts.unet_weights = "diffusion_pytorch_model.fp16.safetensors";
  model = lcm_model_open_parts(&parts, &error);
  g_assert_no_error(error);
  g_assert_cmpstr(weights_path(model_weights(model, COMPONENT_UNET, NULL)), ==, weights_file);
  lcm_model_free(model);
  g_free(weights_file);
  g_free(unet);
}

static void test_open_checkpoint(void) {
  char *path = test_data_path("golden/tiny-lcm.safetensors");
  GError *error = NULL;
  LcmModel *model = lcm_model_open(path, &error);
  g_assert_no_error(error);
  g_assert_nonnull(strstr(lcm_model_describe(model), "single-file checkpoint"));
  g_assert_null(model_scheduler_config(model));
  UNetConfig unet;
  g_assert_true(model_unet_config(model, &unet, &error));
  g_assert_cmpint(unet.time_cond_proj_dim, ==, 256);
  /* the public accessor sees diffusers names and shapes */
  int ndims;
  int64_t shape[ST_MAX_DIMS];
  float *to_q = lcm_model_read_tensor(model, "vae", "decoder.mid_block.attentions.0.to_q.weight",
                                      &ndims, shape, &error);
  g_assert_no_error(error);
  g_assert_cmpint(ndims, ==, 2);
  g_assert_cmpint(shape[0], ==, 64);
  g_assert_cmpint(shape[1], ==, 64);
  g_free(to_q);
  g_assert_null(lcm_model_read_tensor(model, "unet", "absent.weight", &ndims, shape, &error));
  test_expect_error(error, LCM_ERROR_MISSING, path, "UNet tensor 'absent.weight' is missing", NULL);
  g_clear_error(&error);
  g_assert_null(lcm_model_read_tensor(model, "taesd", "x", &ndims, shape, &error));
  test_expect_error(error, LCM_ERROR_INVALID, "unknown network 'taesd'", NULL);
  g_clear_error(&error);

  ClipConfig clip;
  g_assert_false(model_clip_config(model, COMPONENT_TEXT_ENCODER, &clip, &error));
  test_expect_error(error, LCM_ERROR_UNSUPPORTED, "config.json", NULL);
  g_clear_error(&error);
  lcm_model_free(model);

  char *text_config = test_data_path("golden/tiny-lcm/text_encoder/config.json");
  LcmModelParts parts = {.checkpoint = path, .text_encoder_config = text_config};
  model = lcm_model_open_parts(&parts, &error);
  g_assert_no_error(error);
  g_assert_true(model_clip_config(model, COMPONENT_TEXT_ENCODER, &clip, &error));
  g_assert_cmpint(clip.num_attention_heads, ==, 4);
  g_assert_true(weights_contains(model_weights(model, COMPONENT_TEXT_ENCODER, NULL),
                                 "text_model.final_layer_norm.weight"));
  lcm_model_free(model);
  g_free(text_config);
  g_free(path);
}

/* lcm_model_open(path) must fail with `code` and name the file and parts. */
static void expect_open_error(const char *path, int code, const char *part1, const char *part2) {
  GError *error = NULL;
  g_assert_null(lcm_model_open(path, &error));
  test_expect_error(error, code, part1, part2, NULL);
  g_error_free(error);
}

static void test_refuse_pickles(void) {
  char *ckpt = tmp_path("model.ckpt");
  g_assert_true(g_file_set_contents(ckpt, "PK\x03\x04\x14\x00\x00\x00\x08\x00", 10, NULL));
  expect_open_error(ckpt, LCM_ERROR_UNSUPPORTED, ckpt, "convert it to .safetensors");
  char *zip = tmp_path("model-zip.safetensors");
  g_assert_true(g_file_set_contents(zip, "PK\x03\x04\x14\x00\x00\x00\x08\x00", 10, NULL));
  expect_open_error(zip, LCM_ERROR_UNSUPPORTED, zip, "convert it to .safetensors");
  char *absent = tmp_path("absent.safetensors");
  expect_open_error(absent, LCM_ERROR_IO, absent, "no such file");
  for (char **p = (char *[]){ckpt, zip, absent, NULL}; *p; p++) {
    g_unlink(*p);
    g_free(*p);
  }
}

/* A minimal SD1.5-layout UNet whose cross-attention is `context` wide. */
static void write_mini_unet_checkpoint(const char *path, int64_t context, const char *extra_key) {
  const TensorSpec specs[] = {
      {"model.diffusion_model.input_blocks.0.0.weight", 4, {32, 4, 3, 3}},
      {"model.diffusion_model.input_blocks.1.0.in_layers.2.weight", 4, {32, 32, 3, 3}},
      {"model.diffusion_model.middle_block.1.proj_in.weight", 2, {32, 32}},
      {"model.diffusion_model.middle_block.1.transformer_blocks.0.attn1.to_q.weight", 2, {32, 32}},
      {"model.diffusion_model.middle_block.1.transformer_blocks.0.attn2.to_k.weight",
       2,
       {32, context}},
      {"model.diffusion_model.out.2.weight", 4, {4, 32, 3, 3}},
      /* 2-D as SDXL's label_emb.0.0.weight: 2816 = 1280 pooled + 6 x 256 */
      extra_key ? (TensorSpec){extra_key, 2, {4, 2816}}
                : (TensorSpec){"model.diffusion_model.out.2.bias", 1, {4}},
  };
  write_zeros(path, specs, G_N_ELEMENTS(specs));
}

static void test_refuse_sd2(void) {
  char *path = tmp_path("mini.safetensors");
  /* SD1.5 width opens, with linear projections inferred */
  write_mini_unet_checkpoint(path, 768, NULL);
  GError *error = NULL;
  LcmModel *model = lcm_model_open(path, &error);
  g_assert_no_error(error);
  UNetConfig unet;
  g_assert_true(model_unet_config(model, &unet, &error));
  g_assert_true(unet.use_linear_projection);
  g_assert_cmpint(unet.cross_attention_dim, ==, 768);
  g_assert_null(model_weights(model, COMPONENT_VAE, &error));
  test_expect_error(error, LCM_ERROR_MISSING, "has no VAE", NULL);
  g_clear_error(&error);
  lcm_model_free(model);

  write_mini_unet_checkpoint(path, 1024, NULL);
  expect_open_error(path, LCM_ERROR_UNSUPPORTED, path, "Stable Diffusion 2.x");
  write_mini_unet_checkpoint(path, 768, "cond_stage_model.model.token_embedding.weight");
  expect_open_error(path, LCM_ERROR_UNSUPPORTED, path, "Stable Diffusion 2.x");
  /* SDXL checkpoints open as the SDXL family, by either telltale key */
  static const char *const sdxl_keys[] = {"conditioner.embedders.0.transformer.text_model.x",
                                          "model.diffusion_model.label_emb.0.0.weight"};
  for (size_t i = 0; i < G_N_ELEMENTS(sdxl_keys); i++) {
    write_mini_unet_checkpoint(path, 2048, sdxl_keys[i]);
    model = lcm_model_open(path, &error);
    g_assert_no_error(error);
    g_assert_cmpint(lcm_model_family(model), ==, LCM_FAMILY_SDXL);
    lcm_model_free(model);
  }
  /* an SDXL-wide UNet without SDXL's text side is refused, saying why */
  write_mini_unet_checkpoint(path, 2048, NULL);
  expect_open_error(path, LCM_ERROR_UNSUPPORTED, path, "Stable Diffusion XL");

  /* a diffusers UNet file is not a checkpoint */
  char *unet_file = test_data_path("golden/tiny-sd/unet/diffusion_pytorch_model.safetensors");
  expect_open_error(unet_file, LCM_ERROR_UNSUPPORTED, unet_file, "pipeline folder");
  g_free(unet_file);
  g_unlink(path);
  g_free(path);
}

static char *make_dir(const char *relative) {
  char *path = tmp_path(relative);
  g_assert_cmpint(g_mkdir_with_parents(path, 0700), ==, 0);
  return path;
}

static void copy_file(const char *from_relative, const char *to) {
  char *from = test_data_path(from_relative);
  char *contents;
  gsize length;
  g_assert_true(g_file_get_contents(from, &contents, &length, NULL));
  g_assert_true(g_file_set_contents(to, contents, (gssize)length, NULL));
  g_free(contents);
  g_free(from);
}

/* The text side of the tiny SDXL pipeline: both text encoders and
 * tokenizers, the force_zeros_for_empty_prompt default, the second
 * encoder's tensors. */
static void test_open_sdxl_text_parts(void) {
  LcmModel *model = test_sdxl_text_model();
  GError *error = NULL;
  g_assert_cmpint(lcm_model_family(model), ==, LCM_FAMILY_SDXL);
  g_assert_true(model_force_zeros_for_empty_prompt(model));
  ClipConfig clip;
  g_assert_true(model_clip_config(model, COMPONENT_TEXT_ENCODER_2, &clip, &error));
  g_assert_cmpint(clip.hidden_size, ==, 24);
  g_assert_false(clip.quick_gelu);
  g_assert_cmpint(clip.eos_token_id, ==, 2);
  int ndims;
  int64_t shape[ST_MAX_DIMS];
  float *projection = lcm_model_read_tensor(model, "text_encoder_2", "text_projection.weight",
                                            &ndims, shape, &error);
  g_assert_no_error(error);
  g_assert_cmpint(ndims, ==, 2);
  g_assert_cmpint(shape[0], ==, 16);
  g_assert_cmpint(shape[1], ==, 24);
  g_free(projection);
  /* tokenizer_2 pads with "!" (id 0) */
  LcmTokenizer *tokenizer_2 = model_load_tokenizer_2(model, &error);
  g_assert_no_error(error);
  int32_t ids[LCM_CLIP_TOKENS];
  g_assert_cmpint(lcm_tokenizer_encode(tokenizer_2, "wow!", ids), ==, 2);
  g_assert_cmpint(ids[2], ==, 0);
  g_assert_cmpint(ids[3], ==, LCM_CLIP_EOS);
  g_assert_cmpint(ids[4], ==, 0);
  lcm_tokenizer_free(tokenizer_2);
  lcm_model_free(model);
}

/* Both text encoders of the SDXL single file (TE1 under
 * conditioner.embedders.0, TE2 in OpenCLIP names with fused q/k/v and a
 * transposed projection) give every tensor of the diffusers folder it was
 * made from, rounded to fp16 as the file stores them, and nothing else. */
static void test_sdxl_checkpoint_text_encoders(void) {
  char *checkpoint = test_data_path("golden-sdxl/tiny-sdxl-lcm.safetensors");
  /* the tiny UNet's head counts do not follow from its widths */
  g_autofree char *unet_config = test_data_path("golden-sdxl/tiny-sdxl-lcm/unet/config.json");
  GError *error = NULL;
  LcmModelParts parts = {.checkpoint = checkpoint, .unet_config = unet_config};
  LcmModel *model = lcm_model_open_parts(&parts, &error);
  g_assert_no_error(error);
  g_assert_cmpint(lcm_model_family(model), ==, LCM_FAMILY_SDXL);
  static const struct {
    Component component;
    const char *network, *folder_file;
  } encoders[] = {
      {COMPONENT_TEXT_ENCODER, "text_encoder",
       "golden-sdxl/tiny-sdxl-lcm/text_encoder/model.safetensors"},
      {COMPONENT_TEXT_ENCODER_2, "text_encoder_2",
       "golden-sdxl/tiny-sdxl-lcm/text_encoder_2/model.safetensors"},
  };
  for (size_t e = 0; e < G_N_ELEMENTS(encoders); e++) {
    char *folder_path = test_data_path(encoders[e].folder_file);
    Weights *folder = weights_open_file(folder_path, &error);
    g_assert_no_error(error);
    GPtrArray *names = weights_names(folder);
    Weights *mapped = model_weights(model, encoders[e].component, &error);
    g_assert_no_error(error);
    GPtrArray *mapped_names = weights_names(mapped);
    g_assert_cmpuint(mapped_names->len, ==, names->len);
    for (guint i = 0; i < names->len; i++) {
      const char *name = names->pdata[i];
      int ndims;
      int64_t shape[ST_MAX_DIMS];
      g_assert_true(weights_shape(folder, name, &ndims, shape));
      float *want = weights_get(folder, name, ndims, shape, &error);
      g_assert_no_error(error);
      float *got = lcm_model_read_tensor(model, encoders[e].network, name, &ndims, shape, &error);
      g_assert_no_error(error);
      size_t n = weights_shape_numel(ndims, shape);
      for (size_t k = 0; k < n; k++) g_assert_cmpfloat(got[k], ==, (float)(_Float16)want[k]);
      g_free(want);
      g_free(got);
    }
    g_ptr_array_unref(mapped_names);
    g_ptr_array_unref(names);
    weights_free(folder);
    g_free(folder_path);
  }
  lcm_model_free(model);
  g_free(checkpoint);
}

static void test_incomplete_folders(void) {
  char *folder = make_dir("pipeline");
  expect_open_error(folder, LCM_ERROR_MISSING, "pipeline/model_index.json", "is missing");

  char *index = g_build_filename(folder, "model_index.json", NULL);
  copy_file("golden/tiny-lcm/model_index.json", index);
  expect_open_error(folder, LCM_ERROR_MISSING, "pipeline/unet", "folder is missing");

  char *unet = make_dir("pipeline/unet");
  expect_open_error(folder, LCM_ERROR_MISSING, "pipeline/unet/config.json", "is missing");

  char *config = g_build_filename(unet, "config.json", NULL);
  copy_file("golden/tiny-lcm/unet/config.json", config);
  expect_open_error(folder, LCM_ERROR_MISSING, "pipeline/unet",
                    "diffusion_pytorch_model.safetensors");

  char *bin = g_build_filename(unet, "diffusion_pytorch_model.bin", NULL);
  g_assert_true(g_file_set_contents(bin, "PK\x03\x04", 4, NULL));
  expect_open_error(folder, LCM_ERROR_UNSUPPORTED, "diffusion_pytorch_model.bin", "convert it to");
  g_unlink(bin);

  char *weights = g_build_filename(unet, "diffusion_pytorch_model.safetensors", NULL);
  copy_file("golden/tiny-lcm/unet/diffusion_pytorch_model.safetensors", weights);
  expect_open_error(folder, LCM_ERROR_MISSING, "pipeline/vae", "folder is missing");

  /* SDXL pipelines are named by model_index.json and need their second
   * text encoder and tokenizer too */
  g_assert_true(
      g_file_set_contents(index, "{\"_class_name\": \"StableDiffusionXLPipeline\"}", -1, NULL));
  char *vae = make_dir("pipeline/vae"), *text_encoder = make_dir("pipeline/text_encoder");
  static const char *const copies[][2] = {
      {"golden/tiny-lcm/vae/config.json", "pipeline/vae/config.json"},
      {"golden/tiny-lcm/vae/diffusion_pytorch_model.safetensors",
       "pipeline/vae/diffusion_pytorch_model.safetensors"},
      {"golden/tiny-lcm/text_encoder/config.json", "pipeline/text_encoder/config.json"},
      {"golden/tiny-lcm/text_encoder/model.safetensors", "pipeline/text_encoder/model.safetensors"},
  };
  for (size_t i = 0; i < G_N_ELEMENTS(copies); i++) {
    char *to = tmp_path(copies[i][1]);
    copy_file(copies[i][0], to);
    g_free(to);
  }
  expect_open_error(folder, LCM_ERROR_MISSING, "pipeline/text_encoder_2", "folder is missing");
  g_assert_true(
      g_file_set_contents(index, "{\"_class_name\": \"StableDiffusionPipeline\"}", -1, NULL));
  g_free(vae);
  g_free(text_encoder);
  /* found by fuzz-config: a _class_name that is no string was read as a NULL
   * string (a crash); it names no pipeline, so the folder opens as SD1.5 */
  g_assert_true(g_file_set_contents(index, "{\"_class_name\": 5}", -1, NULL));
  expect_open_error(folder, LCM_ERROR_MISSING, "pipeline/tokenizer", "folder is missing");

  /* an SD 2.x UNet folder is refused by its cross-attention width */
  char *sd2_config =
      unet_config_variant("\"cross_attention_dim\": 32", "\"cross_attention_dim\": 1024");
  LcmModelParts parts = {.unet = unet};
  g_assert_true(g_rename(sd2_config, config) == 0);
  GError *error = NULL;
  g_assert_null(lcm_model_open_parts(&parts, &error));
  test_expect_error(error, LCM_ERROR_UNSUPPORTED, config, "Stable Diffusion 2.x", NULL);
  g_clear_error(&error);

  for (char **p = (char *[]){weights, config, index, NULL}; *p; p++) g_unlink(*p);
  g_rmdir(unet);
  g_rmdir(folder);
  for (char **p = (char *[]){sd2_config, weights, bin, config, unet, index, folder, NULL}; *p; p++)
    g_free(*p);
}

int main(int argc, char **argv) {
  g_test_init(&argc, &argv, NULL);
  tmp_dir = g_dir_make_tmp("test-model-XXXXXX", NULL);
  g_assert_nonnull(tmp_dir);
  g_test_add_func("/model/checkpoint-keymap", test_checkpoint_keymap);
  g_test_add_func("/model/unmapped-keys-reported", test_unmapped_keys_reported);
  g_test_add_func("/model/weights-errors-and-unused", test_weights_errors_and_unused);
  g_test_add_func("/model/checkpoint-vae-attention-shape", test_checkpoint_vae_attention_shape);
  g_test_add_func("/model/legacy-vae-attention-names", test_legacy_vae_attention_names);
  g_test_add_func("/model/config-read", test_config_read);
  g_test_add_func("/model/config-variants", test_config_variants);
  g_test_add_func("/model/config-infer", test_config_infer);
  g_test_add_func("/model/config-sdxl", test_config_sdxl);
  g_test_add_func("/model/clip-infer-heads", test_clip_infer_heads);
  g_test_add_func("/model/open-folder", test_open_folder);
  g_test_add_func("/model/open-parts-fp16-unet", test_open_parts_fp16_unet);
  g_test_add_func("/model/open-checkpoint", test_open_checkpoint);
  g_test_add_func("/model/refuse-pickles", test_refuse_pickles);
  g_test_add_func("/model/refuse-sd2", test_refuse_sd2);
  g_test_add_func("/model/incomplete-folders", test_incomplete_folders);
  g_test_add_func("/model/open-sdxl-text-parts", test_open_sdxl_text_parts);
  g_test_add_func("/model/sdxl-checkpoint-text-encoders", test_sdxl_checkpoint_text_encoders);
  int result = g_test_run();
  char *variant = tmp_path("variant-config.json");
  char *vae_config = tmp_path("vae-no-mid-attention.json");
  g_unlink(variant);
  g_unlink(vae_config);
  g_free(variant);
  g_free(vae_config);
  g_rmdir(tmp_dir);
  g_free(tmp_dir);
  return result;
}
