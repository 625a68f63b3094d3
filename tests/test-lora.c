/* LoRA merging: merged weights and network outputs against the goldens of
 * the lora_* cases, kohya vs peft vs LDM-path spellings of the same LoRA,
 * and the refusals (unknown keys, other architectures, shapes, late adds). */
#include "lcm.h"
#include "model.h"
#include "safetensors.h"
#include "testutil.h"
#include "weights.h"

#include <glib/gstdio.h>
#include <json-glib/json-glib.h>
#include <math.h>
#include <string.h>

/* Per-output tolerances of the lora_* cases in cases.json. */
#define MERGED_ATOL 1e-6
#define MERGED_RTOL 1e-5
#define UNET_ATOL 2e-4
#define UNET_RTOL 1e-4
#define TEXT_ATOL 5e-4
#define TEXT_RTOL 1e-4
#define BF16_MIN_COSINE 0.999

static char *tmp_dir;

/* ---- Models ----------------------------------------------------------------- */

typedef struct {
  const char *file;
  float scale;
} LoraUse;

/* tiny-lcm (or tiny-sd's plain UNet alone) with `loras` merged in order. */
static LcmModel *open_model(gboolean plain_unet, const LoraUse *loras, int n_loras) {
  g_autoptr(GError) error = NULL;
  LcmModel *model;
  if (plain_unet) {
    g_autofree char *unet = test_golden_path("tiny-sd/unet");
    LcmModelParts parts = {.unet = unet};
    model = lcm_model_open_parts(&parts, &error);
  } else {
    g_autofree char *folder = test_golden_path("tiny-lcm");
    model = lcm_model_open(folder, &error);
  }
  g_assert_no_error(error);
  for (int i = 0; i < n_loras; i++) {
    g_autofree char *path =
        loras[i].file[0] == '/' ? g_strdup(loras[i].file) : test_golden_path(loras[i].file);
    g_assert_true(lcm_model_add_lora(model, path, loras[i].scale, &error));
    g_assert_no_error(error);
  }
  return model;
}

static float *read_weight(LcmModel *model, const char *network, const char *name, int64_t *numel) {
  g_autoptr(GError) error = NULL;
  int ndims;
  int64_t shape[ST_MAX_DIMS];
  float *data = lcm_model_read_tensor(model, network, name, &ndims, shape, &error);
  g_assert_no_error(error);
  *numel = 1;
  for (int d = 0; d < ndims; d++) *numel *= shape[d];
  return data;
}

/* ---- Merged weights and outputs against the goldens ----------------------- */

typedef struct {
  const char *name;
  gboolean plain_unet;
  LoraUse loras[2];
  int n_loras;
} LoraCase;

static const LoraCase lora_cases[] = {
    {"lora_a_scale1.0", FALSE, {{"lora/lora_a_kohya.safetensors", 1.0f}}, 1},
    {"lora_a_scale0.5", FALSE, {{"lora/lora_a_kohya.safetensors", 0.5f}}, 1},
    {"lora_a1.0_b0.8",
     FALSE,
     {{"lora/lora_a_kohya.safetensors", 1.0f}, {"lora/lora_b_kohya.safetensors", 0.8f}},
     2},
    {"lora_lcm_like_plain_unet", TRUE, {{"lora/lcm_lora_like_kohya.safetensors", 1.0f}}, 1},
};

/* The golden merged.NETWORK.NAME weight `key` read through the model with
 * the LoRAs; the same weight without them (base) must differ, or the check
 * proves nothing. Returns NETWORK (g_free it). */
static char *assert_merged_weight(const StFile *golden, const char *key, LcmModel *merged,
                                  LcmModel *base) {
  const char *network_start = key + strlen("merged.");
  char *network = g_strndup(network_start, strcspn(network_start, "."));
  const char *name = network_start + strlen(network) + 1;
  int64_t n, n_golden, n_base;
  g_autofree float *got = read_weight(merged, network, name, &n);
  g_autofree float *original = read_weight(base, network, name, &n_base);
  g_autofree float *expected = test_golden_tensor(golden, key, &n_golden);
  g_assert_cmpint(n, ==, n_golden);
  test_assert_close(key, got, expected, (size_t)n, MERGED_ATOL, MERGED_RTOL);
  g_assert_cmpfloat(test_max_abs_diff(original, expected, (size_t)n), >, 1e-4);
  return network;
}

/* Each merged.NETWORK.NAME golden, read through the model with the LoRAs;
 * the same weight without them must differ, or the check proves nothing. */
static void test_merged_weights(gconstpointer data) {
  const LoraCase *c = data;
  g_autoptr(TestGoldenCase) gc = test_golden_case_load(c->name);
  const StFile *golden = gc->file;
  LcmModel *merged = open_model(c->plain_unet, c->loras, c->n_loras);
  LcmModel *base = open_model(c->plain_unet, NULL, 0);
  int checked = 0;
  for (guint i = 0; i < st_count(golden); i++) {
    const char *key = st_tensor_at(golden, i)->name;
    if (!g_str_has_prefix(key, "merged.")) continue;
    g_free(assert_merged_weight(golden, key, merged, base));
    checked++;
  }
  g_assert_cmpint(checked, >=, 4);
  lcm_model_free(base);
  lcm_model_free(merged);
}

/* NULL (and the test skipped) when this CPU cannot compute in `precision`. */
static float *run_unet(LcmModel *model, const StFile *inputs, LcmPrecision precision,
                       int64_t *numel) {
  g_autoptr(GError) error = NULL;
  LcmUNet *unet = lcm_unet_load(model, precision, &error);
  if (test_skip_if_unsupported(error, precision)) return NULL;
  g_assert_no_error(error);
  int64_t n_sample, n_t, n_ctx, n_cond;
  g_autofree float *sample = test_golden_tensor(inputs, "sample", &n_sample);
  g_autofree float *timestep = test_golden_tensor(inputs, "timestep", &n_t);
  g_autofree float *context = test_golden_tensor(inputs, "encoder_hidden_states", &n_ctx);
  g_autofree float *cond = st_find(inputs, "timestep_cond")
                               ? test_golden_tensor(inputs, "timestep_cond", &n_cond)
                               : NULL;
  const StTensor *shape = st_find(inputs, "sample");
  int h = (int)shape->shape[2], w = (int)shape->shape[3];
  float *out = g_new(float, n_sample);
  g_assert_true(lcm_unet_run(unet, sample, 1, h, w, timestep[0], context, LCM_CLIP_TOKENS, cond,
                             out, &error));
  g_assert_no_error(error);
  lcm_unet_free(unet);
  *numel = n_sample;
  return out;
}

/* The UNet (and text encoder) with the LoRAs merged, on the case's inputs. */
static void test_outputs(gconstpointer data) {
  const LoraCase *c = data;
  g_autoptr(TestGoldenCase) gc = test_golden_case_load(c->name);
  const StFile *golden = gc->file;
  LcmModel *model = open_model(c->plain_unet, c->loras, c->n_loras);
  const char *unet_output = c->plain_unet ? "unet_out_merged" : "unet_out";
  int64_t n, n_golden;
  g_autofree float *out = run_unet(model, golden, LCM_PRECISION_FP32, &n);
  g_autofree float *expected = test_golden_tensor(golden, unet_output, &n_golden);
  g_assert_cmpint(n, ==, n_golden);
  test_assert_close(unet_output, out, expected, (size_t)n, UNET_ATOL, UNET_RTOL);

  if (st_find(golden, "text_encoder_last_hidden_state")) {
    g_autoptr(GError) error = NULL;
    int64_t n_ids;
    g_autofree float *ids_f = test_golden_tensor(golden, "input_ids", &n_ids);
    int32_t ids[LCM_CLIP_TOKENS];
    for (int i = 0; i < LCM_CLIP_TOKENS; i++) ids[i] = (int32_t)ids_f[i];
    LcmTextEncoder *encoder = lcm_text_encoder_load(model, LCM_PRECISION_FP32, &error);
    g_assert_no_error(error);
    int hidden = lcm_text_encoder_hidden_size(encoder);
    g_autofree float *hidden_state = g_new(float, LCM_CLIP_TOKENS *hidden);
    g_assert_true(lcm_text_encoder_encode(encoder, ids, 1, hidden_state, &error));
    g_assert_no_error(error);
    lcm_text_encoder_free(encoder);
    g_autofree float *expected_text =
        test_golden_tensor(golden, "text_encoder_last_hidden_state", &n_golden);
    g_assert_cmpint(n_golden, ==, LCM_CLIP_TOKENS * hidden);
    test_assert_close("text_encoder_last_hidden_state", hidden_state, expected_text,
                      (size_t)n_golden, TEXT_ATOL, TEXT_RTOL);
  }
  lcm_model_free(model);
}

/* Merging happens in fp32 before the conversion to bf16, so a bf16 UNet
 * sees the same merged weights; judged by direction, as bf16 rounds. */
static void test_unet_bf16(void) {
  const LoraCase *c = &lora_cases[0];
  g_autoptr(TestGoldenCase) gc = test_golden_case_load(c->name);
  const StFile *golden = gc->file;
  LcmModel *model = open_model(FALSE, c->loras, c->n_loras);
  int64_t n, n_golden;
  g_autofree float *out = run_unet(model, golden, LCM_PRECISION_BF16, &n);
  if (out) {
    g_autofree float *expected = test_golden_tensor(golden, "unet_out", &n_golden);
    g_assert_cmpfloat(test_cosine(out, expected, (size_t)n), >=, BF16_MIN_COSINE);
  }
  lcm_model_free(model);
}

/* ---- Spellings ---------------------------------------------------------------- */

/* Every weight of both networks, bit for bit. */
static void assert_same_weights(LcmModel *a, LcmModel *b) {
  static const struct {
    Component component;
    const char *network;
  } networks[] = {{COMPONENT_UNET, "unet"}, {COMPONENT_TEXT_ENCODER, "text_encoder"}};
  for (size_t k = 0; k < G_N_ELEMENTS(networks); k++) {
    g_autoptr(GError) error = NULL;
    Weights *weights = model_weights(a, networks[k].component, &error);
    g_assert_no_error(error);
    GPtrArray *names = weights_names(weights);
    for (guint i = 0; i < names->len; i++) {
      int64_t na, nb;
      g_autofree float *wa = read_weight(a, networks[k].network, names->pdata[i], &na);
      g_autofree float *wb = read_weight(b, networks[k].network, names->pdata[i], &nb);
      g_assert_cmpint(na, ==, nb);
      if (memcmp(wa, wb, sizeof(float) * (size_t)na) != 0)
        g_error("%s %s differs", networks[k].network, (const char *)names->pdata[i]);
    }
    g_ptr_array_unref(names);
  }
}

/* lora_a_peft is lora_a_kohya with alpha/rank = 1/2 folded into lora_B;
 * halving is exact in binary, so the merged weights are identical. */
static void test_kohya_and_peft_agree(void) {
  const LoraUse kohya = {"lora/lora_a_kohya.safetensors", 0.7f};
  const LoraUse peft = {"lora/lora_a_peft.safetensors", 0.7f};
  LcmModel *a = open_model(FALSE, &kohya, 1), *b = open_model(FALSE, &peft, 1);
  assert_same_weights(a, b);
  lcm_model_free(a);
  lcm_model_free(b);
}

/* A LoRA file written at runtime. */
typedef struct {
  GArray *tensors;        /* StWriteTensor */
  GPtrArray *allocations; /* names, shapes and data */
} LoraWriter;

static LoraWriter *lora_writer_new(void) {
  LoraWriter *writer = g_new0(LoraWriter, 1);
  writer->tensors = g_array_new(FALSE, TRUE, sizeof(StWriteTensor));
  writer->allocations = g_ptr_array_new_with_free_func(g_free);
  return writer;
}

static gpointer keep(LoraWriter *writer, gpointer p) {
  g_ptr_array_add(writer->allocations, p);
  return p;
}

/* data NULL: filled with 0.01. */
static void lora_add(LoraWriter *writer, const char *name, int ndims, const int64_t *shape,
                     const float *data) {
  int64_t n = 1;
  for (int d = 0; d < ndims; d++) n *= shape[d];
  float *copy = keep(writer, g_new(float, MAX(n, 1)));
  for (int64_t i = 0; i < n; i++) copy[i] = data ? data[i] : 0.01f;
  StWriteTensor t = {keep(writer, g_strdup(name)), ST_F32, ndims,
                     keep(writer, g_memdup2(shape, sizeof(int64_t) * MAX(ndims, 1))), copy};
  g_array_append_val(writer->tensors, t);
}

/* A linear module (rank 4, alpha 4) of the given sizes, under `module`. */
static void lora_add_linear(LoraWriter *writer, const char *module, int64_t out, int64_t in) {
  g_autofree char *down = g_strconcat(module, ".lora_down.weight", NULL);
  g_autofree char *up = g_strconcat(module, ".lora_up.weight", NULL);
  g_autofree char *alpha = g_strconcat(module, ".alpha", NULL);
  const float four = 4;
  lora_add(writer, down, 2, (int64_t[]){4, in}, NULL);
  lora_add(writer, up, 2, (int64_t[]){out, 4}, NULL);
  lora_add(writer, alpha, 0, (int64_t[]){1}, &four);
}

/* Copies module `from` of a LoRA file (down, up, alpha) as `to`. */
static void lora_copy_module(LoraWriter *writer, StFile *source, const char *from, const char *to) {
  static const char *const suffixes[] = {".lora_down.weight", ".lora_up.weight", ".alpha"};
  for (size_t i = 0; i < G_N_ELEMENTS(suffixes); i++) {
    g_autofree char *src_name = g_strconcat(from, suffixes[i], NULL);
    g_autofree char *dst_name = g_strconcat(to, suffixes[i], NULL);
    const StTensor *t = st_find(source, src_name);
    if (!t) g_error("%s has no %s", st_path(source), src_name);
    int64_t n;
    g_autofree float *data = test_golden_tensor(source, src_name, &n);
    lora_add(writer, dst_name, t->ndims, t->shape, data);
  }
}

/* Writes the file into the test's folder and frees the writer; g_free the
 * path. */
static char *lora_write(LoraWriter *writer, const char *file_name) {
  char *path = g_build_filename(tmp_dir, file_name, NULL);
  g_autoptr(GError) error = NULL;
  g_assert_true(st_write(path, (StWriteTensor *)(void *)writer->tensors->data, writer->tensors->len,
                         NULL, &error));
  g_assert_no_error(error);
  g_array_unref(writer->tensors);
  g_ptr_array_unref(writer->allocations);
  g_free(writer);
  return path;
}

static StFile *open_golden_lora(const char *name) {
  g_autofree char *path = test_golden_path(name);
  g_autoptr(GError) error = NULL;
  StFile *file = st_open(path, &error);
  g_assert_no_error(error);
  return file;
}

/* sd-scripts names SD1.5 UNet modules by their LDM path too: the same
 * modules under both spellings give the same weights. */
static void test_ldm_path_names(void) {
  static const char *const pairs[][2] = {
      {"down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q",
       "input_blocks_1_1_transformer_blocks_0_attn1_to_q"},
      {"down_blocks_0_resnets_0_conv1", "input_blocks_1_0_in_layers_2"},
      {"down_blocks_0_downsamplers_0_conv", "input_blocks_3_0_op"},
      {"down_blocks_1_resnets_0_conv_shortcut", "input_blocks_4_0_skip_connection"},
      {"mid_block_attentions_0_proj_in", "middle_block_1_proj_in"},
      {"mid_block_resnets_1_conv2", "middle_block_2_out_layers_3"},
      {"up_blocks_0_resnets_0_time_emb_proj", "output_blocks_0_0_emb_layers_1"},
      {"up_blocks_0_upsamplers_0_conv", "output_blocks_2_1_conv"},
      {"up_blocks_1_attentions_2_transformer_blocks_0_ff_net_0_proj",
       "output_blocks_5_1_transformer_blocks_0_ff_net_0_proj"},
      {"up_blocks_1_attentions_2_transformer_blocks_0_attn2_to_out_0",
       "output_blocks_5_1_transformer_blocks_0_attn2_to_out_0"},
  };
  StFile *source = open_golden_lora("lora/lora_a_kohya.safetensors");
  LoraWriter *diffusers = lora_writer_new(), *ldm = lora_writer_new();
  for (size_t i = 0; i < G_N_ELEMENTS(pairs); i++) {
    g_autofree char *from = g_strconcat("lora_unet_", pairs[i][0], NULL);
    g_autofree char *to = g_strconcat("lora_unet_", pairs[i][1], NULL);
    lora_copy_module(diffusers, source, from, from);
    lora_copy_module(ldm, source, from, to);
  }
  st_close(source);
  g_autofree char *diffusers_path = lora_write(diffusers, "diffusers-names.safetensors");
  g_autofree char *ldm_path = lora_write(ldm, "ldm-names.safetensors");
  LcmModel *a = open_model(FALSE, &(LoraUse){diffusers_path, 1.0f}, 1);
  LcmModel *b = open_model(FALSE, &(LoraUse){ldm_path, 1.0f}, 1);
  LcmModel *base = open_model(FALSE, NULL, 0);
  assert_same_weights(a, b);
  /* and the modules did change something */
  int64_t n;
  g_autofree float *changed = read_weight(b, "unet", "up_blocks.0.upsamplers.0.conv.weight", &n);
  g_autofree float *original =
      read_weight(base, "unet", "up_blocks.0.upsamplers.0.conv.weight", &n);
  g_assert_cmpfloat(test_max_abs_diff(changed, original, (size_t)n), >, 1e-4);
  lcm_model_free(a);
  lcm_model_free(b);
  lcm_model_free(base);
}

/* ---- Refusals ------------------------------------------------------------------ */

static const char *const probe_weight =
    "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight";

/* A failed add must leave the model as it was. */
static void assert_unchanged(LcmModel *model) {
  LcmModel *base = open_model(FALSE, NULL, 0);
  int64_t n;
  g_autofree float *got = read_weight(model, "unet", probe_weight, &n);
  g_autofree float *expected = read_weight(base, "unet", probe_weight, &n);
  g_assert_cmpint(memcmp(got, expected, sizeof(float) * (size_t)n), ==, 0);
  lcm_model_free(base);
}

static void test_unknown_keys_refused(void) {
  LoraWriter *writer = lora_writer_new();
  lora_add_linear(writer, "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q",
                  32, 32);
  lora_add_linear(writer, "lora_unet_down_blocks_0_attentions_0_no_such_layer", 32, 32);
  lora_add_linear(writer, "lora_te_text_model_encoder_layers_9_mlp_fc1", 37, 32);
  lora_add(writer, "lora_unet_mid_block_attentions_0_proj_in.hada_w1_a", 2, (int64_t[]){4, 32},
           NULL);
  g_autofree char *path = lora_write(writer, "unknown-keys.safetensors");
  LcmModel *model = open_model(FALSE, NULL, 0);
  g_autoptr(GError) error = NULL;
  g_assert_false(lcm_model_add_lora(model, path, 1.0f, &error));
  test_expect_error(error, LCM_ERROR_UNSUPPORTED, path, "3 LoRA modules or keys",
                    "lora_unet_down_blocks_0_attentions_0_no_such_layer",
                    "lora_te_text_model_encoder_layers_9_mlp_fc1",
                    "lora_unet_mid_block_attentions_0_proj_in.hada_w1_a", NULL);
  assert_unchanged(model);
  lcm_model_free(model);
}

/* An SDXL UNet LoRA in sd-scripts' LDM spelling: SDXL has 2 and 10
 * transformer blocks where SD1.5 has 1, and two text encoders. */
static void test_other_architecture_refused(void) {
  LoraWriter *unet_only = lora_writer_new();
  lora_add_linear(unet_only, "lora_unet_input_blocks_4_1_transformer_blocks_1_attn1_to_q", 640,
                  640);
  lora_add_linear(unet_only, "lora_unet_input_blocks_7_1_transformer_blocks_9_attn2_to_k", 1280,
                  2048);
  g_autofree char *unet_path = lora_write(unet_only, "sdxl-unet.safetensors");
  LcmModel *model = open_model(FALSE, NULL, 0);
  g_autoptr(GError) error = NULL;
  g_assert_false(lcm_model_add_lora(model, unet_path, 1.0f, &error));
  test_expect_error(error, LCM_ERROR_UNSUPPORTED, unet_path, "none of the LoRA's 2 modules",
                    "lora_unet_input_blocks_4_1_transformer_blocks_1_attn1_to_q",
                    "different architecture", NULL);
  g_clear_error(&error);

  LoraWriter *with_te = lora_writer_new();
  lora_add_linear(with_te, "lora_te1_text_model_encoder_layers_0_mlp_fc1", 3072, 768);
  g_autofree char *te_path = lora_write(with_te, "sdxl-te.safetensors");
  g_assert_false(lcm_model_add_lora(model, te_path, 1.0f, &error));
  test_expect_error(error, LCM_ERROR_UNSUPPORTED, te_path, "Stable Diffusion XL",
                    "lora_te1_text_model_encoder_layers_0_mlp_fc1", NULL);
  assert_unchanged(model);
  lcm_model_free(model);
}

/* A cross-attention LoRA for a 2048-wide text embedding (SDXL). */
static void test_shape_mismatch_refused(void) {
  LoraWriter *writer = lora_writer_new();
  lora_add_linear(writer, "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q",
                  32, 32);
  lora_add_linear(writer, "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k",
                  32, 2048);
  g_autofree char *path = lora_write(writer, "wide.safetensors");
  LcmModel *model = open_model(FALSE, NULL, 0);
  g_autoptr(GError) error = NULL;
  g_assert_false(lcm_model_add_lora(model, path, 1.0f, &error));
  test_expect_error(error, LCM_ERROR_SHAPE, path,
                    "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k",
                    "'down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight'",
                    "[4, 2048]", "[32, 32]", NULL);
  assert_unchanged(model);
  lcm_model_free(model);
}

static void test_not_a_lora_refused(void) {
  LoraWriter *plain = lora_writer_new();
  lora_add(plain, "conv_in.weight", 2, (int64_t[]){4, 4}, NULL);
  g_autofree char *plain_path = lora_write(plain, "plain.safetensors");
  g_autoptr(GError) error = NULL;
  g_assert_null(lcm_lora_networks(plain_path, &error));
  test_expect_error(error, LCM_ERROR_FORMAT, plain_path, "not a LoRA", "'conv_in.weight'", NULL);
  g_clear_error(&error);

  LoraWriter *half = lora_writer_new();
  lora_add(half, "lora_unet_mid_block_attentions_0_proj_in.lora_down.weight", 2, (int64_t[]){4, 64},
           NULL);
  g_autofree char *half_path = lora_write(half, "half.safetensors");
  LcmModel *model = open_model(FALSE, NULL, 0);
  g_assert_false(lcm_model_add_lora(model, half_path, 1.0f, &error));
  test_expect_error(error, LCM_ERROR_FORMAT, half_path, "lora_unet_mid_block_attentions_0_proj_in",
                    "no up matrix", NULL);
  g_clear_error(&error);
  g_assert_false(lcm_model_add_lora(model, half_path, NAN, &error));
  test_expect_error(error, LCM_ERROR_INVALID, "scale", NULL);
  lcm_model_free(model);
}

/* Networks already loaded would not see the LoRA: refused, not ignored. */
static void test_late_add_refused(void) {
  LcmModel *model = open_model(FALSE, NULL, 0);
  int64_t n;
  g_free(read_weight(model, "unet", probe_weight, &n));
  g_autofree char *path = test_golden_path("lora/lora_a_kohya.safetensors");
  g_autoptr(GError) error = NULL;
  g_assert_false(lcm_model_add_lora(model, path, 1.0f, &error));
  test_expect_error(error, LCM_ERROR_INVALID, path, "already loaded", NULL);
  lcm_model_free(model);
}

/* Text-encoder modules are skipped for a model without a text encoder. */
static void test_unet_only_model(void) {
  const LoraUse lora = {"lora/lora_a_kohya.safetensors", 1.0f};
  LcmModel *model = open_model(TRUE, &lora, 1), *base = open_model(TRUE, NULL, 0);
  int64_t n;
  g_autofree float *merged = read_weight(model, "unet", probe_weight, &n);
  g_autofree float *original = read_weight(base, "unet", probe_weight, &n);
  g_assert_cmpfloat(test_max_abs_diff(merged, original, (size_t)n), >, 1e-4);
  lcm_model_free(base);
  lcm_model_free(model);
}

static void test_lora_networks(void) {
  static const struct {
    const char *file;
    const char *networks;
  } cases[] = {
      {"lora/lora_a_kohya.safetensors", "unet text_encoder"},
      {"lora/lora_a_peft.safetensors", "unet text_encoder"},
      {"lora/lcm_lora_like_kohya.safetensors", "unet"},
  };
  for (size_t i = 0; i < G_N_ELEMENTS(cases); i++) {
    g_autofree char *path = test_golden_path(cases[i].file);
    g_autoptr(GError) error = NULL;
    g_auto(GStrv) networks = lcm_lora_networks(path, &error);
    g_assert_no_error(error);
    g_autofree char *joined = g_strjoinv(" ", networks);
    g_assert_cmpstr(joined, ==, cases[i].networks);
  }
}

/* ---- SDXL: two text encoders ------------------------------------------------ */

#define SDXL_STYLE_LORA "golden-sdxl/lora/style_lora_sdxl_kohya_te1_te2.safetensors"
#define SDXL_STYLE_SCALE 0.8f

/* tiny-sdxl-lcm's text side (both encoders; no UNet), or its single file,
 * with the LoRA at `lora` (a path under tests/data) merged when not NULL. */
static LcmModel *open_sdxl_text(gboolean single_file, const char *lora, float scale) {
  g_autoptr(GError) error = NULL;
  LcmModel *model;
  if (single_file) {
    g_autofree char *checkpoint = test_data_path("golden-sdxl/tiny-sdxl-lcm.safetensors");
    /* tiny networks' head counts do not follow from their widths */
    g_autofree char *config = test_data_path("golden-sdxl/tiny-sdxl-lcm/text_encoder/config.json");
    g_autofree char *config_2 =
        test_data_path("golden-sdxl/tiny-sdxl-lcm/text_encoder_2/config.json");
    g_autofree char *unet_config = test_data_path("golden-sdxl/tiny-sdxl-lcm/unet/config.json");
    LcmModelParts parts = {.checkpoint = checkpoint,
                           .text_encoder_config = config,
                           .text_encoder_2_config = config_2,
                           .unet_config = unet_config};
    model = lcm_model_open_parts(&parts, &error);
    g_assert_no_error(error);
  } else {
    model = test_sdxl_text_model();
  }
  if (lora) {
    g_autofree char *path = lora[0] == '/' ? g_strdup(lora) : test_data_path(lora);
    g_assert_true(lcm_model_add_lora(model, path, scale, &error));
    g_assert_no_error(error);
  }
  return model;
}

/* The kohya lora_te1_ / lora_te2_ modules of the style LoRA merge into both
 * encoders as the golden case's merged.text_encoder{,_2}.* weights say (its
 * UNet modules are skipped: this model has no UNet). */
static void test_sdxl_text_encoder_merges(void) {
  g_autofree char *case_path =
      test_data_path("golden-sdxl/cases/lora_xl_style_te1_te2_scale0.8.safetensors");
  g_autoptr(GError) error = NULL;
  StFile *golden = st_open(case_path, &error);
  g_assert_no_error(error);
  LcmModel *merged = open_sdxl_text(FALSE, SDXL_STYLE_LORA, SDXL_STYLE_SCALE);
  LcmModel *base = open_sdxl_text(FALSE, NULL, 0);
  int checked[2] = {0, 0};
  for (guint i = 0; i < st_count(golden); i++) {
    const char *key = st_tensor_at(golden, i)->name;
    if (!g_str_has_prefix(key, "merged.text_encoder")) continue;
    g_autofree char *network = assert_merged_weight(golden, key, merged, base);
    checked[strcmp(network, "text_encoder_2") == 0]++;
  }
  g_assert_cmpint(checked[0], >=, 2);
  g_assert_cmpint(checked[1], >=, 2);
  lcm_model_free(base);
  lcm_model_free(merged);
  st_close(golden);
}

/* Every weight of an SDXL model's two text encoders agrees within fp32
 * rounding (alpha / rank folded at different times). */
static void assert_text_weights_close(LcmModel *a, LcmModel *b) {
  static const struct {
    Component component;
    const char *network;
  } networks[] = {{COMPONENT_TEXT_ENCODER, "text_encoder"},
                  {COMPONENT_TEXT_ENCODER_2, "text_encoder_2"}};
  for (size_t k = 0; k < G_N_ELEMENTS(networks); k++) {
    g_autoptr(GError) error = NULL;
    Weights *weights = model_weights(a, networks[k].component, &error);
    g_assert_no_error(error);
    g_autoptr(GPtrArray) names = weights_names(weights);
    for (guint i = 0; i < names->len; i++) {
      int64_t n_a, n_b;
      g_autofree float *wa = read_weight(a, networks[k].network, names->pdata[i], &n_a);
      g_autofree float *wb = read_weight(b, networks[k].network, names->pdata[i], &n_b);
      g_assert_cmpint(n_a, ==, n_b);
      test_assert_close(names->pdata[i], wa, wb, (size_t)n_a, MERGED_ATOL, MERGED_RTOL);
    }
  }
}

/* The style LoRA's text-encoder modules rewritten in diffusers / peft names
 * (text_encoder.* / text_encoder_2.*, lora_A / lora_B with alpha / rank
 * folded into B), using the golden keymap's module paths, merge alike. */
static void test_sdxl_kohya_and_peft_agree(void) {
  g_autofree char *kohya_path = test_data_path(SDXL_STYLE_LORA);
  g_autofree char *keymap_path = test_data_path("golden-sdxl/lora/sdxl_lora_keymap.json");
  g_autoptr(GError) error = NULL;
  StFile *kohya = st_open(kohya_path, &error);
  g_assert_no_error(error);
  JsonParser *parser = json_parser_new();
  g_assert_true(json_parser_load_from_file(parser, keymap_path, &error));
  JsonObject *style =
      json_object_get_object_member(json_node_get_object(json_parser_get_root(parser)), "style");
  LoraWriter *writer = lora_writer_new();
  GList *modules = json_object_get_members(style);
  int written = 0;
  for (GList *l = modules; l; l = l->next) {
    const char *module = l->data;
    if (!g_str_has_prefix(module, "lora_te")) continue;
    const char *path = json_object_get_string_member(json_object_get_object_member(style, module),
                                                     "diffusers_module");
    g_autofree char *down_key = g_strconcat(module, ".lora_down.weight", NULL);
    g_autofree char *up_key = g_strconcat(module, ".lora_up.weight", NULL);
    g_autofree char *alpha_key = g_strconcat(module, ".alpha", NULL);
    int64_t n_down, n_up, n_alpha;
    g_autofree float *down = test_golden_tensor(kohya, down_key, &n_down);
    g_autofree float *up = test_golden_tensor(kohya, up_key, &n_up);
    g_autofree float *alpha = test_golden_tensor(kohya, alpha_key, &n_alpha);
    const StTensor *down_info = st_find(kohya, down_key), *up_info = st_find(kohya, up_key);
    const int64_t rank = down_info->shape[0];
    for (int64_t i = 0; i < n_up; i++) up[i] *= alpha[0] / (float)rank;
    g_autofree char *a_name = g_strconcat(path, ".lora_A.weight", NULL);
    g_autofree char *b_name = g_strconcat(path, ".lora_B.weight", NULL);
    lora_add(writer, a_name, 2, down_info->shape, down);
    lora_add(writer, b_name, 2, up_info->shape, up);
    written++;
  }
  g_list_free(modules);
  g_object_unref(parser);
  st_close(kohya);
  g_assert_cmpint(written, >, 10);
  g_autofree char *peft_path = lora_write(writer, "sdxl-te-peft.safetensors");
  g_auto(GStrv) networks = lcm_lora_networks(peft_path, &error);
  g_assert_no_error(error);
  g_assert_cmpstr(networks[0], ==, "text_encoder");
  g_assert_cmpstr(networks[1], ==, "text_encoder_2");
  g_assert_null(networks[2]);
  LcmModel *a = open_sdxl_text(FALSE, SDXL_STYLE_LORA, SDXL_STYLE_SCALE);
  LcmModel *b = open_sdxl_text(FALSE, peft_path, SDXL_STYLE_SCALE);
  assert_text_weights_close(a, b);
  lcm_model_free(a);
  lcm_model_free(b);
}

/* In the single file TE2's q, k and v live in one fused in_proj tensor; a
 * LoRA on q_proj changes its rows only, by the same delta as in the folder. */
static void test_sdxl_single_file_lora(void) {
  LcmModel *models[2][2]; /* [single file][with LoRA] */
  for (int f = 0; f < 2; f++)
    for (int l = 0; l < 2; l++)
      models[f][l] = open_sdxl_text(f, l ? SDXL_STYLE_LORA : NULL, SDXL_STYLE_SCALE);
  static const char *const names[] = {"text_model.encoder.layers.0.self_attn.q_proj.weight",
                                      "text_model.encoder.layers.1.self_attn.k_proj.weight",
                                      "text_model.encoder.layers.2.self_attn.v_proj.weight"};
  for (size_t i = 0; i < G_N_ELEMENTS(names); i++) {
    int64_t n[2][2];
    float *w[2][2];
    for (int f = 0; f < 2; f++)
      for (int l = 0; l < 2; l++)
        w[f][l] = read_weight(models[f][l], "text_encoder_2", names[i], &n[f][l]);
    float max_delta = 0;
    for (int64_t k = 0; k < n[0][0]; k++) {
      const float folder_delta = w[0][1][k] - w[0][0][k], file_delta = w[1][1][k] - w[1][0][k];
      g_assert_cmpfloat(fabsf(folder_delta - file_delta), <=, 1e-6f);
      max_delta = fmaxf(max_delta, fabsf(folder_delta));
    }
    g_assert_cmpfloat(max_delta, >, 1e-4f);
    for (int f = 0; f < 2; f++)
      for (int l = 0; l < 2; l++) g_free(w[f][l]);
  }
  for (int f = 0; f < 2; f++)
    for (int l = 0; l < 2; l++) lcm_model_free(models[f][l]);
}

int main(int argc, char **argv) {
  g_test_init(&argc, &argv, NULL);
  tmp_dir = g_dir_make_tmp("test-lora-XXXXXX", NULL);
  g_assert_nonnull(tmp_dir);
  for (size_t i = 0; i < G_N_ELEMENTS(lora_cases); i++) {
    g_autofree char *merged = g_strdup_printf("/lora/merged-weights/%s", lora_cases[i].name);
    g_autofree char *outputs = g_strdup_printf("/lora/outputs/%s", lora_cases[i].name);
    g_test_add_data_func(merged, &lora_cases[i], test_merged_weights);
    g_test_add_data_func(outputs, &lora_cases[i], test_outputs);
  }
  g_test_add_func("/lora/unet-bf16", test_unet_bf16);
  g_test_add_func("/lora/kohya-and-peft-agree", test_kohya_and_peft_agree);
  g_test_add_func("/lora/ldm-path-names", test_ldm_path_names);
  g_test_add_func("/lora/unknown-keys-refused", test_unknown_keys_refused);
  g_test_add_func("/lora/other-architecture-refused", test_other_architecture_refused);
  g_test_add_func("/lora/shape-mismatch-refused", test_shape_mismatch_refused);
  g_test_add_func("/lora/not-a-lora-refused", test_not_a_lora_refused);
  g_test_add_func("/lora/late-add-refused", test_late_add_refused);
  g_test_add_func("/lora/unet-only-model", test_unet_only_model);
  g_test_add_func("/lora/networks", test_lora_networks);
  g_test_add_func("/lora/sdxl-text-encoder-merges", test_sdxl_text_encoder_merges);
  g_test_add_func("/lora/sdxl-kohya-and-peft-agree", test_sdxl_kohya_and_peft_agree);
  g_test_add_func("/lora/sdxl-single-file", test_sdxl_single_file_lora);
  int status = g_test_run();
  /* the files written here */
  GDir *dir = g_dir_open(tmp_dir, 0, NULL);
  for (const char *name; dir && (name = g_dir_read_name(dir));) {
    g_autofree char *path = g_build_filename(tmp_dir, name, NULL);
    g_remove(path);
  }
  if (dir) g_dir_close(dir);
  g_rmdir(tmp_dir);
  g_free(tmp_dir);
  return status;
}
