/* The SDXL-family UNet (tests/data/golden-sdxl): every "unet" case in bf16
 * by cosine similarity (fp32 runs are the golden tests), the added
 * conditions' accessors, the errors a caller provokes by mixing up the
 * SD1.5 and SDXL conditions, and SDXL UNet LoRAs in both kohya spellings. */
#include "lcm.h"
#include "safetensors.h"
#include "testutil.h"

#include <json-glib/json-glib.h>
#include <string.h>

/* bf16 keeps ~3 significant digits through ~40 layers of tiny random
 * weights. With fp32 attention scores/softmax and fp32 embeddings the SDXL
 * cases measure 0.99962-0.99993 (AVX512-BF16, oneDNN 3.7); with both in
 * bf16 the LCM UNet without its guidance embedding fell to 0.9989. */
#define BF16_MIN_COSINE 0.999

static char *sdxl_path(const char *relative) {
  g_autofree char *path = g_build_filename("golden-sdxl", relative, NULL);
  return test_data_path(path);
}

static LcmUNet *load_unet(const char *unet_dir, LcmPrecision precision) {
  g_autofree char *dir = sdxl_path(unet_dir);
  LcmModelParts parts = {.unet = dir};
  g_autoptr(GError) error = NULL;
  LcmModel *model = lcm_model_open_parts(&parts, &error);
  g_assert_no_error(error);
  LcmUNet *unet = lcm_unet_load(model, precision, &error);
  lcm_model_free(model);
  if (test_skip_if_unsupported(error, precision)) return NULL;
  g_assert_no_error(error);
  return unet;
}

static float *case_tensor(const StFile *file, const char *name, const StTensor **info) {
  if (info) *info = st_find(file, name);
  return st_find(file, name) ? test_golden_tensor(file, name, NULL) : NULL;
}

/* One golden "unet" case of the SDXL set (data: its JSON object) in bf16. */
static void test_bf16(gconstpointer data) {
  JsonObject *c = (JsonObject *)data;
  JsonObject *paths = json_object_get_object_member(c, "paths");
  g_autofree char *file_path = sdxl_path(json_object_get_string_member(c, "file"));
  g_autoptr(GError) error = NULL;
  StFile *file = st_open(file_path, &error);
  g_assert_no_error(error);

  LcmUNet *unet = load_unet(json_object_get_string_member(paths, "unet"), LCM_PRECISION_BF16);
  if (!unet) {
    st_close(file);
    return;
  }
  const StTensor *sample_info, *context_info;
  g_autofree float *sample = case_tensor(file, "sample", &sample_info);
  g_autofree float *context = case_tensor(file, "encoder_hidden_states", &context_info);
  g_autofree float *timestep = case_tensor(file, "timestep", NULL);
  g_autofree float *timestep_cond = case_tensor(file, "timestep_cond", NULL);
  g_autofree float *text_embeds = case_tensor(file, "text_embeds", NULL);
  g_autofree float *time_ids = case_tensor(file, "time_ids", NULL);
  g_autofree float *expected = case_tensor(file, "out", NULL);
  const int batch = (int)sample_info->shape[0], h = (int)sample_info->shape[2],
            w = (int)sample_info->shape[3];
  const size_t n = (size_t)batch * lcm_unet_out_channels(unet) * h * w;
  g_autofree float *out = g_new(float, n);
  const LcmUNetConditions conditions = {timestep_cond, text_embeds, time_ids};
  g_assert_true(lcm_unet_run_conditioned(unet, sample, batch, h, w, timestep[0], context,
                                         (int)context_info->shape[1], &conditions, out, &error));
  g_assert_no_error(error);
  double cosine = test_cosine(out, expected, n);
  g_test_message("bf16: cosine %.6f, max |err| %.3g", cosine, test_max_abs_diff(out, expected, n));
  g_assert_cmpfloat(cosine, >=, BF16_MIN_COSINE);
  lcm_unet_free(unet);
  st_close(file);
}

static void test_accessors(void) {
  LcmUNet *sdxl = load_unet("tiny-sdxl-lcm/unet", LCM_PRECISION_FP32);
  g_assert_cmpint(lcm_unet_text_embeds_dim(sdxl), ==, 16);
  g_assert_cmpint(lcm_unet_cross_attention_dim(sdxl), ==, 40);
  g_assert_cmpint(lcm_unet_time_cond_proj_dim(sdxl), ==, 256);
  lcm_unet_free(sdxl);
  LcmUNet *plain = load_unet("tiny-sdxl/unet", LCM_PRECISION_FP32);
  g_assert_cmpint(lcm_unet_text_embeds_dim(plain), ==, 16);
  g_assert_cmpint(lcm_unet_time_cond_proj_dim(plain), ==, 0);
  lcm_unet_free(plain);
}

/* SDXL runs need text_embeds and time_ids; SD1.5 runs refuse them; both
 * stay usable after the error. The SD1.5 embeddings have no added parts. */
static void test_wrong_conditions(void) {
  LcmUNet *sdxl = load_unet("tiny-ssd1b-lcm/unet", LCM_PRECISION_FP32);
  float sample[4 * 2 * 2] = {0}, context[77 * 40] = {0}, out[4 * 2 * 2];
  float text_embeds[16] = {0}, time_ids[LCM_TIME_IDS] = {16, 16, 0, 0, 16, 16};
  g_autoptr(GError) error = NULL;
  g_assert_false(lcm_unet_run(sdxl, sample, 1, 2, 2, 999, context, 77, NULL, out, &error));
  test_expect_error(error, LCM_ERROR_INVALID, "text_embeds and time_ids", NULL);
  g_clear_error(&error);
  LcmUNetConditions conditions = {.text_embeds = text_embeds, .time_ids = time_ids};
  g_assert_true(
      lcm_unet_run_conditioned(sdxl, sample, 1, 2, 2, 999, context, 77, &conditions, out, &error));
  g_assert_no_error(error);
  LcmUNetEmbeddings emb;
  float timestep = 999;
  g_assert_true(lcm_unet_embeddings(sdxl, 1, &timestep, &conditions, &emb, &error));
  g_assert_cmpint(emb.add_embeds_dim, ==, 16 + LCM_TIME_IDS * 8);
  g_assert_cmpint(emb.add_time_proj_dim, ==, LCM_TIME_IDS * 8);
  /* the time ids' sinusoids follow the text embedding: cos(0) = 1 for crop 0 */
  g_assert_cmpfloat(emb.add_embeds[16 + 2 * 8], ==, 1.0f);
  lcm_unet_embeddings_clear(&emb);
  lcm_unet_free(sdxl);

  g_autofree char *sd_dir = test_data_path("golden/tiny-lcm/unet");
  LcmModelParts parts = {.unet = sd_dir};
  LcmModel *model = lcm_model_open_parts(&parts, &error);
  g_assert_no_error(error);
  LcmUNet *sd = lcm_unet_load(model, LCM_PRECISION_FP32, &error);
  g_assert_no_error(error);
  lcm_model_free(model);
  g_assert_cmpint(lcm_unet_text_embeds_dim(sd), ==, 0);
  float sd_context[77 * 32] = {0};
  g_assert_false(
      lcm_unet_run_conditioned(sd, sample, 1, 2, 2, 999, sd_context, 77, &conditions, out, &error));
  test_expect_error(error, LCM_ERROR_INVALID, "not an SDXL UNet", NULL);
  g_clear_error(&error);
  g_assert_true(lcm_unet_embeddings(sd, 1, &timestep, NULL, &emb, &error));
  g_assert_no_error(error);
  g_assert_null(emb.add_embeds);
  g_assert_cmpint(emb.add_embeds_dim, ==, 0);
  g_assert_nonnull(emb.emb);
  /* without added conditions emb is the time embedding itself */
  g_assert_cmpmem(emb.emb, emb.emb_dim * sizeof(float), emb.time_embedding,
                  emb.emb_dim * sizeof(float));
  lcm_unet_embeddings_clear(&emb);
  lcm_unet_free(sd);
}

/* A merged UNet weight of tiny-sdxl with `lora` (NULL: none) at scale 1. */
static float *merged_weight(const char *lora, const char *name, int64_t *numel) {
  g_autofree char *unet = sdxl_path("tiny-sdxl/unet");
  LcmModelParts parts = {.unet = unet};
  g_autoptr(GError) error = NULL;
  LcmModel *model = lcm_model_open_parts(&parts, &error);
  g_assert_no_error(error);
  if (lora) {
    g_autofree char *path = sdxl_path(lora);
    g_assert_true(lcm_model_add_lora(model, path, 1.0f, &error));
    g_assert_no_error(error);
  }
  int ndims;
  int64_t shape[8];
  float *weight = lcm_model_read_tensor(model, "unet", name, &ndims, shape, &error);
  g_assert_no_error(error);
  *numel = 1;
  for (int d = 0; d < ndims; d++) *numel *= shape[d];
  lcm_model_free(model);
  return weight;
}

/* The LCM-LoRA-like file in sd-scripts' SDXL names (input_blocks, ...) and
 * in diffusers-path kohya names change every module its keymap lists, by
 * the same amounts. */
static void test_lora_spellings(void) {
  g_autofree char *keymap_path = sdxl_path("lora/sdxl_lora_keymap.json");
  JsonParser *parser = json_parser_new();
  g_assert_true(json_parser_load_from_file(parser, keymap_path, NULL));
  JsonObject *modules = json_object_get_object_member(
      json_node_get_object(json_parser_get_root(parser)), "lcm_lora_like");
  GList *keys = json_object_get_members(modules);
  guint checked = 0;
  for (GList *l = keys; l; l = l->next) {
    JsonObject *module = json_object_get_object_member(modules, l->data);
    const char *target = json_object_get_string_member(module, "diffusers_module");
    g_assert_true(g_str_has_prefix(target, "unet."));
    /* a sample of the modules keeps the test quick: every 7th */
    if (checked++ % 7) continue;
    g_autofree char *name = g_strconcat(target + strlen("unet."), ".weight", NULL);
    int64_t n_base, n_sgm, n_diffusers;
    g_autofree float *base = merged_weight(NULL, name, &n_base);
    g_autofree float *sgm =
        merged_weight("lora/lcm_lora_sdxl_like_kohya.safetensors", name, &n_sgm);
    g_autofree float *diffusers = merged_weight(
        "lora/lcm_lora_sdxl_like_kohya_diffusers_names.safetensors", name, &n_diffusers);
    g_assert_cmpint(n_sgm, ==, n_base);
    g_assert_cmpint(n_diffusers, ==, n_base);
    g_assert_cmpfloat(test_max_abs_diff(sgm, base, (size_t)n_base), >, 0);
    g_assert_cmpmem(sgm, n_sgm * sizeof(float), diffusers, n_diffusers * sizeof(float));
  }
  g_assert_cmpuint(checked, >, 50);
  g_list_free(keys);
  g_object_unref(parser);
}

int main(int argc, char **argv) {
  g_test_init(&argc, &argv, NULL);
  g_autofree char *cases_path = sdxl_path("cases.json");
  JsonParser *parser = json_parser_new();
  g_assert_true(json_parser_load_from_file(parser, cases_path, NULL));
  JsonArray *cases =
      json_object_get_array_member(json_node_get_object(json_parser_get_root(parser)), "cases");
  guint n_unet_cases = 0;
  for (guint i = 0; i < json_array_get_length(cases); i++) {
    JsonObject *c = json_array_get_object_element(cases, i);
    if (g_strcmp0(json_object_get_string_member(c, "component"), "unet") != 0) continue;
    g_autofree char *name =
        g_strdup_printf("/unet-xl/%s/bf16", json_object_get_string_member(c, "name"));
    g_test_add_data_func(name, c, test_bf16);
    n_unet_cases++;
  }
  g_assert_cmpuint(n_unet_cases, ==, 8);
  g_test_add_func("/unet-xl/accessors", test_accessors);
  g_test_add_func("/unet-xl/wrong-conditions", test_wrong_conditions);
  g_test_add_func("/unet-xl/lora-spellings", test_lora_spellings);
  int result = g_test_run();
  g_object_unref(parser);
  return result;
}
