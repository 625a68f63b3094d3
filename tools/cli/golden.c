/* The golden runner. A case names a component, the model parts it uses
 * (paths relative to cases.json), its input tensors and expected outputs in a
 * safetensors file, and a tolerance. Each component has a runner that turns
 * inputs into outputs; comparing and writing outputs is shared. */
#include "golden.h"

#include "safetensors.h"

#include <json-glib/json-glib.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

typedef struct {
  char *name;
  int ndims;
  int64_t shape[ST_MAX_DIMS];
  float *data;
  gboolean integer; /* compared exactly, written as int32 */
} Output;

typedef struct {
  gboolean exact;
  double atol, rtol;
  double max_abs; /* < 0: not used */
} Tolerance;

typedef struct {
  const GoldenOptions *options;
  JsonArray *all_cases;
  JsonObject *obj;
  const char *name;
  const char *component;
  JsonObject *params;
  char *base_dir;
  StFile *data;
  GPtrArray *outputs; /* Output*, in computation order */
  GString *note;      /* extra words for the report line */
} Case;

typedef gboolean (*CaseRunner)(Case *c, GError **error);

static void output_free(gpointer p) {
  Output *o = p;
  g_free(o->name);
  g_free(o->data);
  g_free(o);
}

static int64_t shape_numel(int ndims, const int64_t *shape) {
  int64_t n = 1;
  for (int i = 0; i < ndims; i++) n *= shape[i];
  return n;
}

/* Takes ownership of data. */
static void case_add_output(Case *c, const char *name, int ndims, const int64_t *shape, float *data,
                            gboolean integer) {
  Output *o = g_new0(Output, 1);
  o->name = g_strdup(name);
  o->ndims = ndims;
  memcpy(o->shape, shape, sizeof(int64_t) * ndims);
  o->data = data;
  o->integer = integer;
  g_ptr_array_add(c->outputs, o);
}

static const StTensor *case_tensor(Case *c, const char *name, GError **error) {
  const StTensor *t = c->data ? st_find(c->data, name) : NULL;
  if (!t)
    g_set_error(error, LCM_ERROR, LCM_ERROR_MISSING, "case %s: input tensor '%s' is missing",
                c->name, name);
  return t;
}

/* A new fp32 copy of an input tensor. */
static float *case_input(Case *c, const char *name, const StTensor **info, GError **error) {
  const StTensor *t = case_tensor(c, name, error);
  if (!t) return NULL;
  float *v = g_new(float, MAX(st_numel(t), 1));
  st_tensor_to_f32(t, v);
  if (info) *info = t;
  return v;
}

static char *case_path(Case *c, const char *role) {
  JsonObject *paths = json_object_has_member(c->obj, "paths")
                          ? json_object_get_object_member(c->obj, "paths")
                          : NULL;
  if (!paths || !json_object_has_member(paths, role)) return NULL;
  JsonNode *node = json_object_get_member(paths, role);
  if (JSON_NODE_TYPE(node) != JSON_NODE_VALUE) return NULL;
  return g_build_filename(c->base_dir, json_node_get_string(node), NULL);
}

/* A file in the diffusers folder a checkpoint was made from, named like it
 * without ".safetensors" (tiny-sdxl-lcm/ for tiny-sdxl-lcm.safetensors),
 * or NULL. Tiny networks need their config.json from there (as diffusers'
 * from_single_file(config=...)): their head counts do not follow from their
 * widths. */
static char *checkpoint_twin_file(const char *checkpoint, const char *relative) {
  if (!checkpoint || !g_str_has_suffix(checkpoint, ".safetensors")) return NULL;
  char *folder = g_strndup(checkpoint, strlen(checkpoint) - strlen(".safetensors"));
  char *path = g_build_filename(folder, relative, NULL);
  g_free(folder);
  if (g_file_test(path, G_FILE_TEST_IS_REGULAR)) return path;
  g_free(path);
  return NULL;
}

/* A checkpoint with the configs of its twin folder's networks (UNet, both
 * text encoders; those missing are inferred from shapes). */
static LcmModel *checkpoint_open(const char *checkpoint, GError **error) {
  char *unet_config = checkpoint_twin_file(checkpoint, "unet/config.json");
  char *config = checkpoint_twin_file(checkpoint, "text_encoder/config.json");
  char *config_2 = checkpoint_twin_file(checkpoint, "text_encoder_2/config.json");
  LcmModelParts parts = {.checkpoint = checkpoint,
                         .unet_config = unet_config,
                         .text_encoder_config = config,
                         .text_encoder_2_config = config_2};
  LcmModel *model = lcm_model_open_parts(&parts, error);
  g_free(unet_config);
  g_free(config);
  g_free(config_2);
  return model;
}

/* The model parts a case's `paths` name, without its LoRAs. */
static LcmModel *case_base_model(Case *c, GError **error) {
  static const char *const roles[] = {"unet",         "unet_weights",   "vae",
                                      "text_encoder", "tokenizer",      "scheduler",
                                      "checkpoint",   "text_encoder_2", "tokenizer_2"};
  char *p[G_N_ELEMENTS(roles)];
  for (size_t i = 0; i < G_N_ELEMENTS(roles); i++) p[i] = case_path(c, roles[i]);
  char *unet_config = p[0] ? NULL : checkpoint_twin_file(p[6], "unet/config.json");
  LcmModelParts parts = {.unet = p[0],
                         .unet_weights = p[1],
                         .vae = p[2],
                         .text_encoder = p[3],
                         .tokenizer = p[4],
                         .scheduler = p[5],
                         .checkpoint = p[6],
                         .text_encoder_2 = p[7],
                         .tokenizer_2 = p[8],
                         .unet_config = unet_config};
  LcmModel *model = lcm_model_open_parts(&parts, error);
  for (size_t i = 0; i < G_N_ELEMENTS(roles); i++) g_free(p[i]);
  g_free(unet_config);
  return model;
}

/* Merges the case's paths.loras ([{file, scale}]) into the model, in order. */
static gboolean case_add_loras(Case *c, LcmModel *model, GError **error) {
  JsonObject *paths = json_object_has_member(c->obj, "paths")
                          ? json_object_get_object_member(c->obj, "paths")
                          : NULL;
  if (!paths || !json_object_has_member(paths, "loras")) return TRUE;
  JsonArray *loras = json_object_get_array_member(paths, "loras");
  gboolean ok = TRUE;
  for (guint i = 0; loras && i < json_array_get_length(loras) && ok; i++) {
    JsonObject *lora = json_array_get_object_element(loras, i);
    char *file = g_build_filename(c->base_dir, json_object_get_string_member(lora, "file"), NULL);
    float scale = (float)json_object_get_double_member_with_default(lora, "scale", 1.0);
    ok = lcm_model_add_lora(model, file, scale, error);
    g_free(file);
  }
  return ok;
}

/* The case's model: its parts with its LoRAs merged. */
static LcmModel *case_model(Case *c, GError **error) {
  LcmModel *model = case_base_model(c, error);
  if (model && !case_add_loras(c, model, error)) {
    lcm_model_free(model);
    return NULL;
  }
  return model;
}

/* ---- Component runners ------------------------------------------------------ */

/* Dimension `axis` of output `name` as cases.json declares it, or -1. */
static int case_output_dim(Case *c, const char *name, guint axis) {
  JsonObject *outputs = json_object_has_member(c->obj, "outputs")
                            ? json_object_get_object_member(c->obj, "outputs")
                            : NULL;
  JsonObject *output = outputs && json_object_has_member(outputs, name)
                           ? json_object_get_object_member(outputs, name)
                           : NULL;
  JsonArray *shape = output && json_object_has_member(output, "shape")
                         ? json_object_get_array_member(output, "shape")
                         : NULL;
  return shape && axis < json_array_get_length(shape) ? (int)json_array_get_int_element(shape, axis)
                                                      : -1;
}

/* Whether the case lists `name` among its outputs. */
static gboolean case_has_output(Case *c, const char *name) {
  JsonObject *outputs = json_object_has_member(c->obj, "outputs")
                            ? json_object_get_object_member(c->obj, "outputs")
                            : NULL;
  return outputs && json_object_has_member(outputs, name);
}

/* The prompts through the tokenizer of paths[role] (the bundled one when
 * the case names none): input_ids{suffix} and the token counts the case
 * lists, n_tokens_untruncated (SD1.5) or n_tokens_with_bos_eos{suffix}
 * (SDXL, whose tokenizer_2 gives suffix "_2"). */
static gboolean tokenize_prompts(Case *c, const char *role, const char *suffix, GError **error) {
  char *dir = case_path(c, role);
  LcmTokenizer *tok =
      dir ? lcm_tokenizer_new_from_folder(dir, error) : lcm_tokenizer_new_default(error);
  g_free(dir);
  if (!tok) return FALSE;
  JsonArray *prompts = json_object_get_array_member(c->params, "prompts");
  guint n = json_array_get_length(prompts);
  float *ids = g_new(float, (size_t)n *LCM_CLIP_TOKENS);
  float *counts = g_new(float, n), *real_tokens = g_new(float, n);
  for (guint i = 0; i < n; i++) {
    int32_t row[LCM_CLIP_TOKENS];
    int count = lcm_tokenizer_encode(tok, json_array_get_string_element(prompts, i), row);
    counts[i] = (float)count;
    real_tokens[i] = (float)(MIN(count, LCM_CLIP_TOKENS - 2) + 2);
    for (int j = 0; j < LCM_CLIP_TOKENS; j++) ids[(size_t)i * LCM_CLIP_TOKENS + j] = (float)row[j];
  }
  lcm_tokenizer_free(tok);
  char *ids_name = g_strconcat("input_ids", suffix, NULL);
  char *real_name = g_strconcat("n_tokens_with_bos_eos", suffix, NULL);
  case_add_output(c, ids_name, 2, (int64_t[]){n, LCM_CLIP_TOKENS}, ids, TRUE);
  if (case_has_output(c, "n_tokens_untruncated"))
    case_add_output(c, "n_tokens_untruncated", 1, (int64_t[]){n}, counts, TRUE);
  else
    g_free(counts);
  if (case_has_output(c, real_name))
    case_add_output(c, real_name, 1, (int64_t[]){n}, real_tokens, TRUE);
  else
    g_free(real_tokens);
  g_free(ids_name);
  g_free(real_name);
  return TRUE;
}

static gboolean run_tokenizer(Case *c, GError **error) {
  if (!tokenize_prompts(c, "tokenizer", "", error)) return FALSE;
  /* SDXL's second tokenizer */
  return !case_has_output(c, "input_ids_2") || tokenize_prompts(c, "tokenizer_2", "_2", error);
}

/* Encodes the case's `input_ids` with the text encoder of `model`. */
static gboolean encode_ids(Case *c, LcmModel *model, const char *ids_name, const char *out_name,
                           GError **error) {
  const StTensor *info;
  float *idsf = case_input(c, ids_name, &info, error);
  if (!idsf) return FALSE;
  int batch = info->ndims == 2 ? (int)info->shape[0] : 1;
  int32_t *ids = g_new(int32_t, (size_t)batch *LCM_CLIP_TOKENS);
  for (int i = 0; i < batch * LCM_CLIP_TOKENS; i++) ids[i] = (int32_t)idsf[i];
  g_free(idsf);
  gboolean ok = FALSE;
  LcmTextEncoder *enc = lcm_text_encoder_load(model, c->options->precision, error);
  if (enc) {
    int hidden = lcm_text_encoder_hidden_size(enc);
    float *out = g_new(float, (size_t)batch *LCM_CLIP_TOKENS *hidden);
    ok = lcm_text_encoder_encode(enc, ids, batch, out, error);
    if (ok)
      case_add_output(c, out_name, 3, (int64_t[]){batch, LCM_CLIP_TOKENS, hidden}, out, FALSE);
    else
      g_free(out);
    lcm_text_encoder_free(enc);
  }
  g_free(ids);
  return ok;
}

static gboolean run_text_encoder(Case *c, GError **error) {
  LcmModel *model = case_model(c, error);
  if (!model) return FALSE;
  gboolean ok = encode_ids(c, model, "input_ids", "last_hidden_state", error);
  lcm_model_free(model);
  return ok;
}

/* ---- SDXL text side ------------------------------------------------------ */

/* The case's int token ids `name` (batch x 77); *batch gets the rows. */
static int32_t *case_ids(Case *c, const char *name, int *batch, GError **error) {
  const StTensor *info;
  float *values = case_input(c, name, &info, error);
  if (!values) return NULL;
  *batch = info->ndims == 2 ? (int)info->shape[0] : 1;
  int32_t *ids = g_new(int32_t, (size_t)*batch *LCM_CLIP_TOKENS);
  for (int i = 0; i < *batch * LCM_CLIP_TOKENS; i++) ids[i] = (int32_t)values[i];
  g_free(values);
  return ids;
}

/* rows x width_1 and rows x width_2 column blocks of rows x (width_1 +
 * width_2) values, added as outputs name_1 and name_2 [batch, 77, width]. */
static void add_context_halves(Case *c, const float *context, int batch, int width_1, int width_2,
                               const char *name_1, const char *name_2) {
  const size_t rows = (size_t)batch * LCM_CLIP_TOKENS;
  float *half_1 = g_new(float, rows *width_1), *half_2 = g_new(float, rows *width_2);
  for (size_t r = 0; r < rows; r++) {
    memcpy(half_1 + r * width_1, context + r * (width_1 + width_2), sizeof(float) * width_1);
    memcpy(half_2 + r * width_2, context + r * (width_1 + width_2) + width_1,
           sizeof(float) * width_2);
  }
  case_add_output(c, name_1, 3, (int64_t[]){batch, LCM_CLIP_TOKENS, width_1}, half_1, FALSE);
  case_add_output(c, name_2, 3, (int64_t[]){batch, LCM_CLIP_TOKENS, width_2}, half_2, FALSE);
}

/* The SDXL encoders of `model` on the case's input_ids / input_ids_2:
 * {prefix}te1_penultimate, te2_penultimate, prompt_embeds and the pooled
 * TE2 vector as {prefix}{pooled_name}. */
static gboolean sdxl_encode_case_ids(Case *c, LcmModel *model, const char *prefix,
                                     const char *pooled_name, GError **error) {
  int batch, batch_2;
  int32_t *ids = case_ids(c, "input_ids", &batch, error);
  int32_t *ids_2 = ids ? case_ids(c, "input_ids_2", &batch_2, error) : NULL;
  LcmPromptEncoder *pe = NULL;
  gboolean ok = ids_2 && (pe = lcm_prompt_encoder_new(model, c->options->precision, error));
  if (ok && batch != batch_2) {
    g_set_error(error, LCM_ERROR, LCM_ERROR_FORMAT,
                "case %s: input_ids and input_ids_2 differ in rows", c->name);
    ok = FALSE;
  }
  if (ok) {
    const int width = lcm_prompt_encoder_context_dim(pe);
    const int pooled_width = lcm_prompt_encoder_pooled_dim(pe);
    float *context = g_new(float, (size_t)batch *LCM_CLIP_TOKENS *width);
    float *pooled = g_new(float, (size_t)batch *MAX(pooled_width, 1));
    ok = lcm_prompt_encoder_encode_ids(pe, ids, ids_2, batch, 0, context, pooled, error);
    char *names[4] = {
        g_strconcat(prefix, "te1_penultimate", NULL), g_strconcat(prefix, "te2_penultimate", NULL),
        g_strconcat(prefix, "prompt_embeds", NULL), g_strconcat(prefix, pooled_name, NULL)};
    /* where TE1's columns end: the width cases.json gives its output */
    const int width_1 = case_output_dim(c, names[0], 2);
    if (ok && (width_1 <= 0 || width_1 >= width)) {
      g_set_error(error, LCM_ERROR, LCM_ERROR_FORMAT,
                  "case %s: output %s needs a shape [batch, 77, width < %d]", c->name, names[0],
                  width);
      ok = FALSE;
    }
    if (ok) {
      add_context_halves(c, context, batch, width_1, width - width_1, names[0], names[1]);
      case_add_output(c, names[2], 3, (int64_t[]){batch, LCM_CLIP_TOKENS, width}, context, FALSE);
      case_add_output(c, names[3], 2, (int64_t[]){batch, pooled_width}, pooled, FALSE);
      context = pooled = NULL;
    }
    for (int i = 0; i < 4; i++) g_free(names[i]);
    g_free(context);
    g_free(pooled);
  }
  lcm_prompt_encoder_free(pe);
  g_free(ids);
  g_free(ids_2);
  return ok;
}

/* encode_prompt with classifier-free guidance for one variant of the
 * case's params (prompt_2 and the negative prompt, NULL when absent):
 * {variant}.prompt_embeds, negative_prompt_embeds, pooled_prompt_embeds and
 * negative_pooled_prompt_embeds, those the case lists. */
static gboolean sdxl_encode_cfg_variant(Case *c, LcmPromptEncoder *pe, const char *variant,
                                        const char *prompt_2, const char *negative,
                                        GError **error) {
  const int width = lcm_prompt_encoder_context_dim(pe),
            pooled_width = lcm_prompt_encoder_pooled_dim(pe);
  const size_t context_size = (size_t)LCM_CLIP_TOKENS * width;
  float *context = g_new(float, 2 * context_size), *pooled = g_new(float, 2 * pooled_width);
  const char *prompt = json_object_get_string_member(c->params, "prompt");
  gboolean ok = lcm_prompt_encoder_encode_cfg(pe, prompt, prompt_2, negative, NULL, 0, context,
                                              pooled, error);
  const struct {
    const char *name;
    const float *data;
    gboolean is_context;
  } parts[] = {{"negative_prompt_embeds", context, TRUE},
               {"prompt_embeds", context + context_size, TRUE},
               {"negative_pooled_prompt_embeds", pooled, FALSE},
               {"pooled_prompt_embeds", pooled + pooled_width, FALSE}};
  for (size_t i = 0; ok && i < G_N_ELEMENTS(parts); i++) {
    char *name = g_strdup_printf("%s.%s", variant, parts[i].name);
    if (case_has_output(c, name)) {
      if (parts[i].is_context)
        case_add_output(c, name, 3, (int64_t[]){1, LCM_CLIP_TOKENS, width},
                        g_memdup2(parts[i].data, sizeof(float) * context_size), FALSE);
      else
        case_add_output(c, name, 2, (int64_t[]){1, pooled_width},
                        g_memdup2(parts[i].data, sizeof(float) * pooled_width), FALSE);
    }
    g_free(name);
  }
  g_free(context);
  g_free(pooled);
  return ok;
}

/* sdxl_text_encoders (token ids in, encoder outputs) and
 * sdxl_encode_prompt_cfg (prompts in, encode_prompt's four tensors). */
static gboolean run_text_encoders(Case *c, GError **error) {
  LcmModel *model = case_model(c, error);
  if (!model) return FALSE;
  gboolean ok;
  if (!json_object_has_member(c->params, "negative_prompt")) {
    ok = sdxl_encode_case_ids(c, model, "", "text_embeds", error);
  } else {
    LcmPromptEncoder *pe = lcm_prompt_encoder_new(model, c->options->precision, error);
    const char *negative = json_object_get_string_member(c->params, "negative_prompt");
    const char *prompt_2 = json_object_get_string_member(c->params, "prompt_2");
    ok = pe && sdxl_encode_cfg_variant(c, pe, "negative_given", NULL, negative, error) &&
         sdxl_encode_cfg_variant(c, pe, "negative_none", NULL, NULL, error) &&
         sdxl_encode_cfg_variant(c, pe, "prompt_2", prompt_2, NULL, error);
    lcm_prompt_encoder_free(pe);
  }
  lcm_model_free(model);
  return ok;
}

static gboolean run_guidance_embedding(Case *c, GError **error) {
  const StTensor *info;
  float *w = case_input(c, "w", &info, error);
  if (!w) return FALSE;
  int dim = (int)json_object_get_int_member(c->params, "embedding_dim");
  int n = (int)st_numel(info);
  float *emb = g_new(float, (size_t)n *dim);
  for (int i = 0; i < n; i++) lcm_guidance_embedding(w[i], dim, emb + (size_t)i * dim);
  g_free(w);
  case_add_output(c, "embedding", 2, (int64_t[]){n, dim}, emb, FALSE);
  return TRUE;
}

/* An input the case may lack: NULL then. */
static float *case_optional_input(Case *c, const char *name) {
  return c->data && st_find(c->data, name) ? case_input(c, name, NULL, NULL) : NULL;
}

/* The UNet's per-image conditions among the case's inputs (SDXL's
 * text_embeds and time_ids, LCM's timestep_cond); free with
 * unet_conditions_free. */
static LcmUNetConditions case_unet_conditions(Case *c) {
  return (LcmUNetConditions){.timestep_cond = case_optional_input(c, "timestep_cond"),
                             .text_embeds = case_optional_input(c, "text_embeds"),
                             .time_ids = case_optional_input(c, "time_ids")};
}

static void unet_conditions_free(LcmUNetConditions *cond) {
  g_free((float *)cond->timestep_cond);
  g_free((float *)cond->text_embeds);
  g_free((float *)cond->time_ids);
}

/* The UNet on the case's inputs; without_guidance leaves out its
 * timestep_cond. */
static gboolean unet_on_inputs_with(Case *c, LcmModel *model, const char *out_name,
                                    gboolean without_guidance, GError **error) {
  const StTensor *sample_info, *ctx_info;
  float *sample = case_input(c, "sample", &sample_info, error);
  float *timestep = sample ? case_input(c, "timestep", NULL, error) : NULL;
  float *context = timestep ? case_input(c, "encoder_hidden_states", &ctx_info, error) : NULL;
  LcmUNetConditions cond = case_unet_conditions(c);
  if (without_guidance) {
    g_free((float *)cond.timestep_cond);
    cond.timestep_cond = NULL;
  }
  gboolean ok = FALSE;
  LcmUNet *unet = context ? lcm_unet_load(model, c->options->precision, error) : NULL;
  if (unet) {
    lcm_unet_set_attention_chunk(unet, c->options->attention_chunk);
    int batch = (int)sample_info->shape[0], h = (int)sample_info->shape[2];
    int w = (int)sample_info->shape[3], oc = lcm_unet_out_channels(unet);
    float *out = g_new(float, (size_t)batch *oc *h *w);
    ok = lcm_unet_run_conditioned(unet, sample, batch, h, w, timestep[0], context,
                                  (int)ctx_info->shape[1], &cond, out, error);
    if (ok)
      case_add_output(c, out_name, 4, (int64_t[]){batch, oc, h, w}, out, FALSE);
    else
      g_free(out);
    lcm_unet_free(unet);
  }
  g_free(sample);
  g_free(timestep);
  g_free(context);
  unet_conditions_free(&cond);
  return ok;
}

static gboolean unet_on_inputs(Case *c, LcmModel *model, const char *out_name, GError **error) {
  return unet_on_inputs_with(c, model, out_name, FALSE, error);
}

static gboolean run_unet(Case *c, GError **error) {
  LcmModel *model = case_model(c, error);
  if (!model) return FALSE;
  gboolean ok = unet_on_inputs(c, model, "out", error);
  lcm_model_free(model);
  return ok;
}

/* SDXL's conditioning vectors (time ids, added embedding, time embedding)
 * for per-image timesteps. */
static gboolean run_unet_added_cond(Case *c, GError **error) {
  const StTensor *info;
  float *timesteps = case_input(c, "timestep", &info, error);
  if (!timesteps) return FALSE;
  int batch = (int)st_numel(info);
  LcmModel *model = case_model(c, error);
  LcmUNet *unet = model ? lcm_unet_load(model, c->options->precision, error) : NULL;
  LcmUNetConditions cond = case_unet_conditions(c);
  LcmUNetEmbeddings emb;
  gboolean ok = unet && lcm_unet_embeddings(unet, batch, timesteps, &cond, &emb, error);
  if (ok) {
    const struct {
      const char *name;
      float **data;
      int dim;
    } outputs[] = {
        {"time_ids_proj", &emb.add_time_proj, emb.add_time_proj_dim},
        {"add_embeds", &emb.add_embeds, emb.add_embeds_dim},
        {"aug_emb", &emb.add_embedding, emb.emb_dim},
        {"t_emb", &emb.time_proj, emb.time_proj_dim},
        {"temb", &emb.time_embedding, emb.emb_dim},
        {"emb", &emb.emb, emb.emb_dim},
    };
    for (size_t i = 0; i < G_N_ELEMENTS(outputs); i++) {
      case_add_output(c, outputs[i].name, 2, (int64_t[]){batch, outputs[i].dim}, *outputs[i].data,
                      FALSE);
      *outputs[i].data = NULL; /* owned by the output now */
    }
    lcm_unet_embeddings_clear(&emb);
  }
  unet_conditions_free(&cond);
  lcm_unet_free(unet);
  if (model) lcm_model_free(model);
  g_free(timesteps);
  return ok;
}

static gboolean vae_encode_inputs(Case *c, LcmModel *model, const char *prefix, GError **error) {
  const StTensor *info;
  float *image = case_input(c, "image", &info, error);
  if (!image) return FALSE;
  LcmVae *vae = lcm_vae_load(model, c->options->precision, error);
  gboolean ok = FALSE;
  if (vae) {
    lcm_vae_set_attention_chunk(vae, c->options->attention_chunk);
    int b = (int)info->shape[0], h = (int)info->shape[2], w = (int)info->shape[3];
    int lc = lcm_vae_latent_channels(vae);
    size_t n = (size_t)b * lc * (h / 8) * (w / 8), plane = (size_t)lc * (h / 8) * (w / 8);
    float *mean = g_new(float, n), *logvar = g_new(float, n);
    ok = lcm_vae_encode(vae, image, b, h, w, mean, logvar, error);
    if (ok) {
      float *std = g_new(float, n), *moments = g_new(float, 2 * n);
      for (size_t i = 0; i < n; i++) std[i] = expf(0.5f * logvar[i]);
      for (int k = 0; k < b; k++) {
        memcpy(moments + 2 * k * plane, mean + k * plane, plane * sizeof(float));
        memcpy(moments + (2 * k + 1) * plane, logvar + k * plane, plane * sizeof(float));
      }
      int64_t shape[4] = {b, lc, h / 8, w / 8}, mshape[4] = {b, 2 * lc, h / 8, w / 8};
      char *names[4] = {g_strconcat(prefix, "moments", NULL), g_strconcat(prefix, "mean", NULL),
                        g_strconcat(prefix, "logvar", NULL), g_strconcat(prefix, "std", NULL)};
      case_add_output(c, names[0], 4, mshape, moments, FALSE);
      case_add_output(c, names[1], 4, shape, mean, FALSE);
      case_add_output(c, names[2], 4, shape, logvar, FALSE);
      case_add_output(c, names[3], 4, shape, std, FALSE);
      for (int i = 0; i < 4; i++) g_free(names[i]);
    } else {
      g_free(mean);
      g_free(logvar);
    }
    lcm_vae_free(vae);
  }
  g_free(image);
  return ok;
}

static gboolean vae_decode_inputs(Case *c, LcmModel *model, const char *out_name, GError **error) {
  const StTensor *info;
  float *z = case_input(c, "z", &info, error);
  if (!z) return FALSE;
  LcmVae *vae = lcm_vae_load(model, c->options->precision, error);
  gboolean ok = FALSE;
  if (vae) {
    lcm_vae_set_attention_chunk(vae, c->options->attention_chunk);
    int b = (int)info->shape[0], h = (int)info->shape[2], w = (int)info->shape[3];
    float *image = g_new(float, (size_t)b * 3 * h * 8 * w * 8);
    ok = lcm_vae_decode(vae, z, b, h, w, image, error);
    if (ok)
      case_add_output(c, out_name, 4, (int64_t[]){b, 3, h * 8, w * 8}, image, FALSE);
    else
      g_free(image);
    lcm_vae_free(vae);
  }
  g_free(z);
  return ok;
}

static gboolean run_vae_encoder(Case *c, GError **error) {
  LcmModel *model = case_model(c, error);
  if (!model) return FALSE;
  gboolean ok = vae_encode_inputs(c, model, "", error);
  lcm_model_free(model);
  return ok;
}

static gboolean run_vae_decoder(Case *c, GError **error) {
  LcmModel *model = case_model(c, error);
  if (!model) return FALSE;
  gboolean ok = vae_decode_inputs(c, model, "image", error);
  lcm_model_free(model);
  return ok;
}

/* A TAESD network on the case's one input: decode "latents" -> "image"
 * (8x the size), or encode "image" -> "latents" (1/8 the size). */
static gboolean taesd_run_case(Case *c, gboolean decode, GError **error) {
  char *path = case_path(c, "taesd");
  if (!path) {
    g_set_error(error, LCM_ERROR, LCM_ERROR_MISSING, "case %s: no paths.taesd", c->name);
    return FALSE;
  }
  LcmTaesd *taesd = lcm_taesd_load(path, c->options->precision, error);
  g_free(path);
  if (!taesd) return FALSE;
  const char *in_name = decode ? "latents" : "image", *out_name = decode ? "image" : "latents";
  const StTensor *info;
  float *input = case_input(c, in_name, &info, error);
  gboolean ok = input && info->ndims == 4;
  if (input && !ok)
    g_set_error(error, LCM_ERROR, LCM_ERROR_SHAPE, "case %s: input '%s' is not NCHW", c->name,
                in_name);
  if (ok) {
    int b = (int)info->shape[0], h = (int)info->shape[2], w = (int)info->shape[3];
    int out_ch = decode ? 3 : lcm_taesd_latent_channels(taesd);
    int oh = decode ? 8 * h : h / 8, ow = decode ? 8 * w : w / 8;
    float *out = g_new(float, (size_t)b *out_ch *oh *ow);
    ok = decode ? lcm_taesd_decode(taesd, input, b, h, w, out, error)
                : lcm_taesd_encode(taesd, input, b, h, w, out, error);
    if (ok)
      case_add_output(c, out_name, 4, (int64_t[]){b, out_ch, oh, ow}, out, FALSE);
    else
      g_free(out);
  }
  g_free(input);
  lcm_taesd_free(taesd);
  return ok;
}

static gboolean run_taesd_decoder(Case *c, GError **error) {
  return taesd_run_case(c, TRUE, error);
}

static gboolean run_taesd_encoder(Case *c, GError **error) {
  return taesd_run_case(c, FALSE, error);
}

/* ---- Scheduler and random numbers ------------------------------------------- */

static LcmScheduler *case_scheduler(Case *c, GError **error) {
  char *dir = case_path(c, "scheduler");
  LcmScheduler *s;
  /* the SDXL set names the config its scheduler saved scheduler_config_saved */
  const char *config_key = json_object_has_member(c->params, "scheduler_config_saved")
                               ? "scheduler_config_saved"
                               : "scheduler_config";
  if (!dir && json_object_has_member(c->params, config_key)) {
    char *json = json_to_string(json_object_get_member(c->params, config_key), FALSE);
    s = lcm_scheduler_new_from_json(json, config_key, error);
    g_free(json);
  } else {
    char *config = dir ? g_build_filename(dir, "scheduler_config.json", NULL) : NULL;
    s = lcm_scheduler_new(config, error);
    g_free(config);
  }
  g_free(dir);
  return s;
}

/* Checks the timestep lists of params.timesteps ("strength=S,steps=N": [...]). */
static gboolean check_timestep_lists(Case *c, LcmScheduler *s) {
  if (!json_object_has_member(c->params, "timesteps")) return TRUE;
  JsonObject *lists = json_object_get_object_member(c->params, "timesteps");
  GList *keys = json_object_get_members(lists);
  guint wrong = 0, total = 0;
  for (GList *l = keys; l; l = l->next) {
    double strength;
    int steps;
    if (sscanf(l->data, "strength=%lf,steps=%d", &strength, &steps) != 2) continue;
    JsonArray *expected = json_object_get_array_member(lists, l->data);
    int got[LCM_MAX_STEPS];
    int n = lcm_scheduler_timesteps(s, steps, (float)strength, got, NULL);
    gboolean same = n == (int)json_array_get_length(expected);
    for (int i = 0; same && i < n; i++) same = got[i] == json_array_get_int_element(expected, i);
    if (!same && wrong++ == 0)
      g_string_append_printf(c->note, " timesteps %s differ;", (char *)l->data);
    total++;
  }
  g_list_free(keys);
  g_string_append_printf(c->note, " timestep lists: %u, %u wrong;", total, wrong);
  return wrong == 0;
}

static gboolean run_scheduler(Case *c, GError **error) {
  LcmScheduler *s = case_scheduler(c, error);
  if (!s) return FALSE;
  gboolean ok = check_timestep_lists(c, s);
  int train = lcm_scheduler_train_steps(s);
  if (st_find(c->data, "alphas_cumprod")) {
    float *ac = g_new(float, train), *betas = g_new(float, train);
    float *skip = g_new(float, train), *out = g_new(float, train);
    for (int t = 0; t < train; t++) {
      ac[t] = lcm_scheduler_alpha_cumprod(s, t);
      betas[t] = lcm_scheduler_beta(s, t);
      lcm_scheduler_boundary(s, t, &skip[t], &out[t]);
    }
    int64_t shape[1] = {train};
    case_add_output(c, "alphas_cumprod", 1, shape, ac, FALSE);
    case_add_output(c, "betas", 1, shape, betas, FALSE);
    case_add_output(c, "c_skip", 1, shape, skip, FALSE);
    case_add_output(c, "c_out", 1, shape, out, FALSE);
  }
  if (st_find(c->data, "noisy")) {
    const StTensor *info;
    float *original = case_input(c, "original", &info, error);
    float *noise = original ? case_input(c, "noise", NULL, error) : NULL;
    float *t = noise ? case_input(c, "timestep", NULL, error) : NULL;
    if (t) {
      float *noisy = g_new(float, st_numel(info));
      lcm_scheduler_add_noise(s, original, noise, (int)t[0], st_numel(info), noisy);
      case_add_output(c, "noisy", info->ndims, info->shape, noisy, FALSE);
    }
    ok = ok && t;
    g_free(original);
    g_free(noise);
    g_free(t);
  }
  if (st_find(c->data, "sample_0")) {
    /* A chain of steps: our own timesteps must equal the recorded ones. */
    const StTensor *info;
    float *recorded = case_input(c, "timesteps", &info, error);
    float *sample = recorded ? case_input(c, "sample_0", NULL, error) : NULL;
    int steps = recorded ? (int)st_numel(info) : 0;
    int ts[LCM_MAX_STEPS];
    int n = sample ? lcm_scheduler_timesteps(
                         s, (int)json_object_get_int_member(c->params, "num_inference_steps"),
                         (float)json_object_get_double_member(c->params, "strength"), ts, error)
                   : 0;
    if (sample && n != steps) {
      g_string_append_printf(c->note, " %d timesteps, recorded %d;", n, steps);
      ok = FALSE;
    }
    for (int i = 0; ok && sample && i < n; i++) {
      if (ts[i] != (int)recorded[i]) {
        g_string_append_printf(c->note, " timestep %d is %d, recorded %d;", i, ts[i],
                               (int)recorded[i]);
        ok = FALSE;
        break;
      }
      char name[64];
      g_snprintf(name, sizeof name, "model_output_%d", i);
      float *eps = case_input(c, name, NULL, error);
      g_snprintf(name, sizeof name, "noise_%d", i);
      float *noise = i + 1 < n ? case_input(c, name, NULL, error) : NULL;
      if (!eps || (i + 1 < n && !noise)) {
        g_free(eps);
        ok = FALSE;
        break;
      }
      size_t count = st_numel(st_find(c->data, "sample_0"));
      float *denoised = g_new(float, count), *prev = g_new(float, count);
      lcm_scheduler_step(s, eps, ts[i], i + 1 < n ? ts[i + 1] : ts[i], sample, noise, count,
                         denoised, prev);
      const StTensor *shape_info = st_find(c->data, "sample_0");
      g_snprintf(name, sizeof name, "denoised_%d", i);
      case_add_output(c, name, shape_info->ndims, shape_info->shape, denoised, FALSE);
      g_snprintf(name, sizeof name, "prev_sample_%d", i);
      case_add_output(c, name, shape_info->ndims, shape_info->shape,
                      g_memdup2(prev, count * sizeof(float)), FALSE);
      g_free(sample);
      sample = prev;
      g_free(eps);
      g_free(noise);
    }
    ok = ok && sample;
    g_free(sample);
    g_free(recorded);
  }
  lcm_scheduler_free(s);
  if (!ok && error && !*error)
    g_set_error(error, LCM_ERROR, LCM_ERROR_FORMAT, "scheduler results differ");
  return ok;
}

/* Draws the case's shapes in the recorded order: draw0/draw1 from a fresh
 * seed per shape, then the sequence on one generator. */
static void add_draw(Case *c, LcmRng *rng, JsonArray *shape_json, const char *name) {
  int64_t shape[ST_MAX_DIMS];
  int ndims = (int)MIN(json_array_get_length(shape_json), ST_MAX_DIMS);
  for (int i = 0; i < ndims; i++) shape[i] = json_array_get_int_element(shape_json, i);
  int64_t n = shape_numel(ndims, shape);
  float *v = g_new(float, MAX(n, 1));
  lcm_rng_randn(rng, v, n);
  case_add_output(c, name, ndims, shape, v, FALSE);
}

static char *shape_label(JsonArray *shape) {
  GString *s = g_string_new(NULL);
  for (guint i = 0; i < json_array_get_length(shape); i++)
    g_string_append_printf(s, "%s%" G_GINT64_FORMAT, i ? "x" : "",
                           json_array_get_int_element(shape, i));
  return g_string_free(s, FALSE);
}

static gboolean run_randn(Case *c, GError **error) {
  (void)error;
  uint64_t seed = (uint64_t)json_object_get_int_member(c->params, "seed");
  JsonArray *shapes = json_object_get_array_member(c->params, "shapes");
  for (guint i = 0; i < json_array_get_length(shapes); i++) {
    JsonArray *shape = json_array_get_array_element(shapes, i);
    char *label = shape_label(shape);
    LcmRng *rng = lcm_rng_new(seed);
    for (int draw = 0; draw < 2; draw++) {
      char *name = g_strdup_printf("randn_%s_draw%d", label, draw);
      add_draw(c, rng, shape, name);
      g_free(name);
    }
    lcm_rng_free(rng);
    g_free(label);
  }
  if (json_object_has_member(c->params, "sequence_shapes")) {
    JsonArray *seq = json_object_get_array_member(c->params, "sequence_shapes");
    LcmRng *rng = lcm_rng_new(seed);
    for (guint i = 0; i < json_array_get_length(seq); i++) {
      char *label = shape_label(json_array_get_array_element(seq, i));
      char *name = g_strdup_printf("seq%u_%s", i, label);
      add_draw(c, rng, json_array_get_array_element(seq, i), name);
      g_free(name);
      g_free(label);
    }
    lcm_rng_free(rng);
  }
  return TRUE;
}

/* ---- Pipelines ------------------------------------------------------------------ *
 * One runner for every pipeline component: the mode comes from the component
 * name, the pipeline's own rules (guidance, strength rule) from the model,
 * and the random tensors from the case's rand_NN, in draw order. */

/* The case's random tensors by draw index. An LCM txt2img case passes its
 * initial latents as `latents` and stores only the step noises as rand_NN;
 * the pipeline draws the initial latents first. */
static gboolean case_noise(int index, float *out, int64_t n, gpointer user_data, GError **error) {
  Case *c = user_data;
  gboolean explicit_latents = st_find(c->data, "latents") != NULL;
  char name[32];
  if (explicit_latents && index == 0)
    g_strlcpy(name, "latents", sizeof name);
  else
    g_snprintf(name, sizeof name, "rand_%02d", index - (explicit_latents ? 1 : 0));
  const StTensor *t = case_tensor(c, name, error);
  if (!t) return FALSE;
  if (st_numel(t) != n) {
    g_set_error(error, LCM_ERROR, LCM_ERROR_SHAPE,
                "case %s: '%s' has %" G_GINT64_FORMAT
                " values, the pipeline draws %" G_GINT64_FORMAT,
                c->name, name, st_numel(t), n);
    return FALSE;
  }
  st_tensor_to_f32(t, out);
  return TRUE;
}

/* An 8-bit HWC input tensor as an LcmImage with values u8/255 (diffusers'
 * preprocessing). */
static LcmImage *case_image_u8(Case *c, const char *name, GError **error) {
  const StTensor *info;
  float *v = case_input(c, name, &info, error);
  if (!v) return NULL;
  int channels = info->ndims == 3 ? (int)info->shape[2] : 1;
  LcmImage *image = lcm_image_new((int)info->shape[1], (int)info->shape[0], channels);
  for (int64_t i = 0; i < st_numel(info); i++) image->data[i] = v[i] / 255.0f;
  g_free(v);
  return image;
}

/* A (height, width) pair of the case's params into *height, *width. */
static void params_size(Case *c, const char *key, int *height, int *width) {
  if (!json_object_has_member(c->params, key)) return;
  JsonArray *pair = json_object_get_array_member(c->params, key);
  if (!pair || json_array_get_length(pair) != 2) return;
  *height = (int)json_array_get_int_element(pair, 0);
  *width = (int)json_array_get_int_element(pair, 1);
}

/* SDXL's second prompts and size conditioning, when the case gives them. */
static void case_sdxl_params(Case *c, LcmPipelineParams *params) {
  params->prompt_2 = json_object_get_string_member_with_default(c->params, "prompt_2", NULL);
  params->negative_prompt_2 =
      json_object_get_string_member_with_default(c->params, "negative_prompt_2", NULL);
  params_size(c, "original_size", &params->original_height, &params->original_width);
  params_size(c, "crops_coords_top_left", &params->crop_top, &params->crop_left);
  params_size(c, "target_size", &params->target_height, &params->target_width);
}

static gboolean run_pipeline(Case *c, GError **error) {
  LcmPipelineParams params;
  lcm_pipeline_params_init(&params);
  params.mode = strstr(c->component, "txt2img")   ? LCM_MODE_TXT2IMG
                : strstr(c->component, "img2img") ? LCM_MODE_IMG2IMG
                                                  : LCM_MODE_INPAINT;
  params.prompt = json_object_get_string_member(c->params, "prompt");
  params.negative_prompt =
      json_object_get_string_member_with_default(c->params, "negative_prompt", NULL);
  params.steps = (int)json_object_get_int_member(c->params, "num_inference_steps");
  params.guidance_scale = json_object_get_double_member(c->params, "guidance_scale");
  params.strength = json_object_get_double_member_with_default(c->params, "strength", 1.0);
  params.width = (int)json_object_get_int_member_with_default(c->params, "width", 0);
  params.height = (int)json_object_get_int_member_with_default(c->params, "height", 0);
  params.noise = case_noise;
  params.noise_data = c;
  case_sdxl_params(c, &params);
  LcmImage *source = NULL, *mask = NULL, *image = NULL;
  if (params.mode != LCM_MODE_TXT2IMG &&
      !(params.image = source = case_image_u8(c, "init_image_u8_hwc", error)))
    return FALSE;
  if (params.mode == LCM_MODE_INPAINT &&
      !(params.mask = mask = case_image_u8(c, "mask_u8_hw", error))) {
    lcm_image_free(source);
    return FALSE;
  }
  LcmModel *model = case_model(c, error);
  LcmPipeline *pipeline = model ? lcm_pipeline_new(model, c->options->precision, error) : NULL;
  if (pipeline) image = lcm_pipeline_run(pipeline, &params, error);
  if (image) {
    int64_t h = image->height, w = image->width, plane = h * w;
    float *nchw = g_new(float, 3 * plane), *u8 = g_new(float, 3 * plane);
    for (int64_t i = 0; i < plane; i++)
      for (int k = 0; k < 3; k++) {
        nchw[k * plane + i] = image->data[3 * i + k];
        u8[3 * i + k] = rintf(image->data[3 * i + k] * 255.0f);
      }
    case_add_output(c, "image", 4, (int64_t[]){1, 3, h, w}, nchw, FALSE);
    case_add_output(c, "image_u8_nhwc", 4, (int64_t[]){1, h, w, 3}, u8, FALSE);
  }
  gboolean ok = image != NULL;
  lcm_image_free(image);
  lcm_pipeline_free(pipeline);
  if (model) lcm_model_free(model);
  lcm_image_free(source);
  lcm_image_free(mask);
  return ok;
}

/* ---- Comparison ----------------------------------------------------------------- */

static Tolerance tolerance_for(Case *c, const char *output) {
  Tolerance t = {FALSE, 1e-4, 1e-4, -1};
  JsonNode *node = json_object_has_member(c->obj, "tolerance")
                       ? json_object_get_member(c->obj, "tolerance")
                       : NULL;
  if (!node || JSON_NODE_TYPE(node) != JSON_NODE_OBJECT) return t;
  JsonObject *tol = json_node_get_object(node);
  /* Per-output tolerances: the output's own entry, or one whose name it
   * starts with ("merged weights" covers every "merged.*"). */
  if (json_object_has_member(tol, output)) {
    tol = json_object_get_object_member(tol, output);
  } else if (!json_object_has_member(tol, "atol") && !json_object_has_member(tol, "exact")) {
    GList *members = json_object_get_members(tol);
    for (GList *l = members; l; l = l->next) {
      char *prefix = g_strdelimit(g_strdup(l->data), " ", '.');
      gboolean match = g_str_has_prefix(output, prefix) ||
                       (strchr(prefix, '.') && g_str_has_prefix(output, "merged."));
      g_free(prefix);
      if (match && JSON_NODE_TYPE(json_object_get_member(tol, l->data)) == JSON_NODE_OBJECT) {
        tol = json_object_get_object_member(tol, l->data);
        break;
      }
    }
    g_list_free(members);
  }
  if (json_object_has_member(tol, "exact")) t.exact = json_object_get_boolean_member(tol, "exact");
  if (json_object_has_member(tol, "atol")) t.atol = json_object_get_double_member(tol, "atol");
  if (json_object_has_member(tol, "rtol")) t.rtol = json_object_get_double_member(tol, "rtol");
  if (json_object_has_member(tol, "max_abs_diff"))
    t.max_abs = json_object_get_double_member(tol, "max_abs_diff");
  return t;
}

static double cosine(const float *a, const float *b, size_t n) {
  double ab = 0, aa = 0, bb = 0;
  for (size_t i = 0; i < n; i++) {
    ab += (double)a[i] * b[i];
    aa += (double)a[i] * a[i];
    bb += (double)b[i] * b[i];
  }
  return aa == 0 && bb == 0 ? 1.0 : ab / sqrt(aa * bb);
}

/* bf16 acceptance: cosine against the fp32 reference, and the PSNR of
 * images (see docs/architecture.md, "bf16"). */
#define BF16_MIN_COSINE 0.999
#define BF16_MIN_IMAGE_PSNR 35.0

static gboolean is_image(const char *output) {
  return !strcmp(output, "image") || !strcmp(output, "image_u8_nhwc") ||
         !strcmp(output, "vae_decode");
}

/* PSNR in dB with the reference's value range as the peak (255 for 8-bit
 * images, 2 for images in [-1, 1]). */
static double psnr(const float *a, const float *ref, size_t n) {
  double squares = 0;
  float lo = n ? ref[0] : 0, hi = lo;
  for (size_t i = 0; i < n; i++) {
    const double d = (double)a[i] - ref[i];
    squares += d * d;
    lo = fminf(lo, ref[i]);
    hi = fmaxf(hi, ref[i]);
  }
  const double mse = squares / (double)MAX(n, 1), peak = hi - lo;
  return mse == 0 ? INFINITY : 10 * log10(peak * peak / mse);
}

/* Compares one output with the golden tensor of its name. Appends a short
 * account to the note; returns FALSE on a mismatch. */
static gboolean compare_output(Case *c, const Output *o, const StFile *golden) {
  const StTensor *g = golden ? st_find(golden, o->name) : NULL;
  if (!g) {
    g_string_append_printf(c->note, " %s: no golden;", o->name);
    return TRUE;
  }
  int64_t n = shape_numel(o->ndims, o->shape);
  if (st_numel(g) != n) {
    g_string_append_printf(c->note,
                           " %s: %" G_GINT64_FORMAT " values, golden has %" G_GINT64_FORMAT ";",
                           o->name, n, st_numel(g));
    return FALSE;
  }
  float *ref = g_new(float, MAX(n, 1));
  st_tensor_to_f32(g, ref);
  Tolerance tol = tolerance_for(c, o->name);
  gboolean integer_golden = g->dtype == ST_I32 || g->dtype == ST_I64;
  double max_abs = 0, worst_excess = 0;
  int64_t bad = 0;
  for (int64_t i = 0; i < n; i++) {
    double d = fabs((double)o->data[i] - ref[i]);
    max_abs = fmax(max_abs, d);
    double allowed = (tol.exact || o->integer || integer_golden) ? 0
                     : tol.max_abs >= 0                          ? tol.max_abs
                                        : tol.atol + tol.rtol * fabs(ref[i]);
    gboolean bits_differ = tol.exact && memcmp(&o->data[i], &ref[i], sizeof(float)) != 0;
    if (d > allowed || bits_differ || isnan(o->data[i]) != isnan(ref[i])) {
      bad++;
      worst_excess = fmax(worst_excess, d - allowed);
    }
  }
  gboolean ok;
  if (c->options->precision == LCM_PRECISION_BF16 && !o->integer && !integer_golden && !tol.exact) {
    /* bf16 keeps ~3 significant digits: judge the direction of the result,
     * and images by their PSNR. */
    double cs = cosine(o->data, ref, (size_t)n);
    ok = cs >= BF16_MIN_COSINE;
    g_string_append_printf(c->note, " %s: cosine %.6f max_abs %.2e", o->name, cs, max_abs);
    if (is_image(o->name)) {
      double db = psnr(o->data, ref, (size_t)n);
      ok = ok && db >= BF16_MIN_IMAGE_PSNR;
      g_string_append_printf(c->note, " psnr %.1f dB", db);
    }
    g_string_append_c(c->note, ';');
  } else {
    ok = bad == 0;
    g_string_append_printf(c->note, " %s: max_abs %.2e", o->name, max_abs);
    if (bad)
      g_string_append_printf(
          c->note, " (%" G_GINT64_FORMAT " of %" G_GINT64_FORMAT " outside tolerance)", bad, n);
    g_string_append_c(c->note, ';');
  }
  g_free(ref);
  return ok;
}

static gboolean write_outputs(Case *c, GError **error) {
  if (!c->options->out_dir || c->outputs->len == 0) return TRUE;
  if (g_mkdir_with_parents(c->options->out_dir, 0755) != 0) {
    g_set_error(error, LCM_ERROR, LCM_ERROR_IO, "%s: cannot create the folder",
                c->options->out_dir);
    return FALSE;
  }
  StWriteTensor *tensors = g_new0(StWriteTensor, c->outputs->len);
  GPtrArray *int_buffers = g_ptr_array_new_with_free_func(g_free);
  for (guint i = 0; i < c->outputs->len; i++) {
    Output *o = c->outputs->pdata[i];
    tensors[i] = (StWriteTensor){o->name, ST_F32, o->ndims, o->shape, o->data};
    if (o->integer) {
      int64_t n = shape_numel(o->ndims, o->shape);
      int32_t *ints = g_new(int32_t, MAX(n, 1));
      for (int64_t k = 0; k < n; k++) ints[k] = (int32_t)lrintf(o->data[k]);
      g_ptr_array_add(int_buffers, ints);
      tensors[i].dtype = ST_I32;
      tensors[i].data = ints;
    }
  }
  char *file = g_strdup_printf("%s.safetensors", c->name);
  char *path = g_build_filename(c->options->out_dir, file, NULL);
  gboolean ok = st_write(path, tensors, c->outputs->len, NULL, error);
  g_free(path);
  g_free(file);
  g_ptr_array_unref(int_buffers);
  g_free(tensors);
  return ok;
}

/* ---- LoRA merging ------------------------------------------------------------- *
 * Outputs: merged.NETWORK.NAME, a weight as its network loads it with the
 * case's LoRAs merged; unet_out / unet_out_merged,
 * text_encoder_last_hidden_state and SDXL's te_out.*, the networks with
 * them on the case's inputs; unet_out_base, the UNet without them. */

static gboolean add_merged_weight(Case *c, LcmModel *model, const char *output, GError **error) {
  const char *network_start = output + strlen("merged.");
  const char *dot = strchr(network_start, '.');
  if (!dot) {
    g_set_error(error, LCM_ERROR, LCM_ERROR_FORMAT,
                "case %s: output '%s' is not merged.NETWORK.TENSOR", c->name, output);
    return FALSE;
  }
  char *network = g_strndup(network_start, dot - network_start);
  int ndims;
  int64_t shape[ST_MAX_DIMS];
  float *weight = lcm_model_read_tensor(model, network, dot + 1, &ndims, shape, error);
  g_free(network);
  if (weight) case_add_output(c, output, ndims, shape, weight, FALSE);
  return weight != NULL;
}

static gboolean run_lora_merge(Case *c, GError **error) {
  LcmModel *model = case_model(c, error);
  if (!model) return FALSE;
  GList *outputs = json_object_get_members(json_object_get_object_member(c->obj, "outputs"));
  gboolean ok = TRUE;
  for (GList *l = outputs; l && ok; l = l->next) {
    const char *name = l->data;
    if (g_str_has_prefix(name, "merged.")) {
      ok = add_merged_weight(c, model, name, error);
    } else if (!strcmp(name, "unet_out") || !strcmp(name, "unet_out_merged")) {
      ok = unet_on_inputs(c, model, name, error);
    } else if (!strcmp(name, "text_encoder_last_hidden_state")) {
      ok = encode_ids(c, model, "input_ids", name, error);
    } else if (!strcmp(name, "te_out.prompt_embeds")) {
      /* SDXL: both merged encoders, all te_out.* at once */
      ok = sdxl_encode_case_ids(c, model, "te_out.", "text_embeds", error);
    } else if (g_str_has_prefix(name, "te_out.")) {
      continue;
    } else if (!strcmp(name, "unet_out_base")) {
      LcmModel *base = case_base_model(c, error);
      ok = base && unet_on_inputs(c, base, name, error);
      if (base) lcm_model_free(base);
    } else {
      g_set_error(error, LCM_ERROR, LCM_ERROR_FORMAT, "case %s: unknown lora_merge output '%s'",
                  c->name, name);
      ok = FALSE;
    }
  }
  g_list_free(outputs);
  lcm_model_free(model);
  return ok;
}

/* ---- Single-file checkpoints ------------------------------------------------- *
 * The case's file is the checkpoint itself. It passes when (1) every key of
 * the keymap reaches its diffusers name with the same values through our
 * loader, and (2) the networks loaded from it reproduce the goldens of the
 * other cases in the same cases.json whose weights have the checkpoint's
 * precision (for tiny-lcm: the fp16-weight UNet golden). */

/* The values a keymap entry's diffusers tensor(s) give the stored key, read
 * through our loader: one tensor ("network.name"), several concatenated
 * along dim 0 (OpenCLIP's fused q/k/v), or one transposed (OpenCLIP's
 * text_projection). *n gets the element count; NULL + error when one is
 * unreadable. */
static float *keymap_values(LcmModel *model, JsonObject *entry, int64_t *n, GError **error) {
  JsonNode *targets = json_object_get_member(entry, "diffusers");
  JsonArray *list = JSON_NODE_HOLDS_ARRAY(targets) ? json_node_get_array(targets) : NULL;
  const guint count = list ? json_array_get_length(list) : 1;
  GByteArray *values = g_byte_array_new();
  int64_t shape[ST_MAX_DIMS];
  int ndims = 0;
  for (guint i = 0; i < count; i++) {
    const char *target =
        list ? json_array_get_string_element(list, i) : json_node_get_string(targets);
    const char *dot = target ? strchr(target, '.') : NULL;
    if (!dot) {
      g_set_error(error, LCM_ERROR, LCM_ERROR_FORMAT, "keymap target '%s' is not NETWORK.NAME",
                  target ? target : "(none)");
      g_byte_array_unref(values);
      return NULL;
    }
    char *network = g_strndup(target, dot - target);
    float *part = lcm_model_read_tensor(model, network, dot + 1, &ndims, shape, error);
    g_free(network);
    if (!part) {
      g_byte_array_unref(values);
      return NULL;
    }
    g_byte_array_append(values, (const guint8 *)part,
                        (guint)(shape_numel(ndims, shape) * sizeof(float)));
    g_free(part);
  }
  *n = values->len / sizeof(float);
  float *data = (float *)g_byte_array_free(values, FALSE);
  if (!g_strcmp0(json_object_get_string_member_with_default(entry, "transform", ""), "transpose") &&
      ndims == 2) {
    float *transposed = g_new(float, MAX(*n, 1));
    for (int64_t r = 0; r < shape[0]; r++)
      for (int64_t col = 0; col < shape[1]; col++)
        transposed[col * shape[0] + r] = data[r * shape[1] + col];
    g_free(data);
    data = transposed;
  }
  return data;
}

static gboolean check_keymap(Case *c, LcmModel *model, GError **error) {
  if (!json_object_has_member(c->params, "keymap")) return TRUE;
  char *path =
      g_build_filename(c->base_dir, json_object_get_string_member(c->params, "keymap"), NULL);
  JsonParser *parser = json_parser_new();
  gboolean ok = json_parser_load_from_file(parser, path, error);
  g_free(path);
  if (!ok) {
    g_object_unref(parser);
    return FALSE;
  }
  JsonObject *map =
      json_object_get_object_member(json_node_get_object(json_parser_get_root(parser)), "map");
  GList *keys = json_object_get_members(map);
  guint checked = 0, wrong = 0;
  for (GList *l = keys; l && ok; l = l->next) {
    const char *orig = l->data;
    const StTensor *raw = st_find(c->data, orig);
    if (!raw) {
      wrong++;
      continue;
    }
    int64_t n;
    GError *local = NULL;
    float *mapped = keymap_values(model, json_object_get_object_member(map, orig), &n, &local);
    if (!mapped) {
      if (wrong++ == 0) g_string_append_printf(c->note, " %s;", local->message);
      g_clear_error(&local);
      continue;
    }
    float *expected = g_new(float, MAX(st_numel(raw), 1));
    st_tensor_to_f32(raw, expected);
    if (st_numel(raw) != n || memcmp(mapped, expected, n * sizeof(float)) != 0) {
      if (wrong == 0) g_string_append_printf(c->note, " %s differs;", orig);
      wrong++;
    }
    checked++;
    g_free(expected);
    g_free(mapped);
  }
  g_list_free(keys);
  g_object_unref(parser);
  g_string_append_printf(c->note, " keymap: %u keys, %u wrong;", checked + wrong, wrong);
  if (wrong) {
    g_set_error(error, LCM_ERROR, LCM_ERROR_FORMAT, "%u checkpoint keys map wrongly", wrong);
    return FALSE;
  }
  return TRUE;
}

/* The dtype of a weight file's first tensor (-1 if unreadable). */
static int weight_file_dtype(const char *path) {
  StFile *f = path ? st_open(path, NULL) : NULL;
  int dtype = f && st_count(f) ? (int)st_tensor_at(f, 0)->dtype : -1;
  if (f) st_close(f);
  return dtype;
}

/* Which sibling cases a checkpoint's networks are re-run against: those
 * whose weight file has the checkpoint's dtype, so the goldens hold for the
 * checkpoint's rounding too. (Text encoder and VAE goldens come from fp32
 * weights; the keymap check proves those weights are the same tensors.) */
static const struct {
  const char *component;
  const char *network;
  const char *weights_role;
  const char *output;
} sibling_checks[] = {
    {"unet", "unet", "unet_weights", "out"},
};

/* Re-runs sibling case `sib` on the checkpoint; FALSE + error on a run
 * failure, *matched = whether its outputs were within tolerance. */
static gboolean rerun_sibling(Case *c, JsonObject *sib, size_t check, gboolean *matched,
                              GError **error) {
  const char *network = sibling_checks[check].network;
  Case sc = *c;
  sc.obj = sib;
  sc.name = json_object_get_string_member(sib, "name");
  sc.note = c->note;
  char *file = g_build_filename(c->base_dir, json_object_get_string_member(sib, "file"), NULL);
  sc.data = st_open(file, error);
  g_free(file);
  if (!sc.data) return FALSE;
  char *ckpt = case_path(c, "checkpoint");
  LcmModel *model = checkpoint_open(ckpt, error);
  sc.outputs = g_ptr_array_new_with_free_func(output_free);
  gboolean ok = model && unet_on_inputs(&sc, model, sibling_checks[check].output, error);
  if (ok) {
    *matched = TRUE;
    g_string_append_printf(c->note, " %s vs %s:", network, sc.name);
    for (guint i = 0; i < sc.outputs->len; i++) {
      Output *o = sc.outputs->pdata[i];
      if (!compare_output(&sc, o, sc.data)) *matched = FALSE;
      char *name = g_strdup_printf("%s.%s.%s", network, sc.name, o->name);
      case_add_output(c, name, o->ndims, o->shape, o->data, FALSE);
      o->data = NULL;
      g_free(name);
    }
  }
  if (model) lcm_model_free(model);
  g_ptr_array_unref(sc.outputs);
  st_close(sc.data);
  g_free(ckpt);
  return ok;
}

/* The dtype of the UNet tensors of the case's checkpoint (paths.checkpoint:
 * the case's own file for SD1.5, not for SDXL's singlefile_sdxl_outputs). */
static int checkpoint_dtype(Case *c) {
  char *path = case_path(c, "checkpoint");
  StFile *file = path ? st_open(path, NULL) : NULL;
  g_free(path);
  int dtype = -1;
  for (guint i = 0; file && i < st_count(file) && dtype < 0; i++)
    if (g_str_has_prefix(st_tensor_at(file, i)->name, "model.diffusion_model."))
      dtype = st_tensor_at(file, i)->dtype;
  if (file) st_close(file);
  return dtype;
}

/* SDXL single files: the text encoders loaded from the checkpoint on the
 * case's ids (te1_penultimate, te2_penultimate, te2_text_embeds), when the
 * case lists them. */
static gboolean single_file_text_outputs(Case *c, GError **error) {
  if (!case_has_output(c, "te1_penultimate")) return TRUE;
  char *checkpoint = case_path(c, "checkpoint");
  LcmModel *model = checkpoint_open(checkpoint, error);
  gboolean ok = model && sdxl_encode_case_ids(c, model, "", "te2_text_embeds", error);
  if (model) lcm_model_free(model);
  g_free(checkpoint);
  return ok;
}

/* A case whose outputs are the networks of the checkpoint on its inputs
 * (singlefile_sdxl_outputs); each output names what computes it. */
static gboolean single_file_outputs(Case *c, LcmModel *model, GError **error) {
  JsonObject *outputs = json_object_has_member(c->obj, "outputs")
                            ? json_object_get_object_member(c->obj, "outputs")
                            : NULL;
  GList *names = outputs ? json_object_get_members(outputs) : NULL;
  gboolean ok = TRUE;
  for (GList *l = names; l && ok; l = l->next) {
    const char *name = l->data;
    if (!strcmp(name, "unet_out"))
      ok = unet_on_inputs(c, model, name, error);
    else if (!strcmp(name, "unet_out_no_timestep_cond"))
      ok = unet_on_inputs_with(c, model, name, TRUE, error);
    else if (!strcmp(name, "vae_decode"))
      ok = vae_decode_inputs(c, model, name, error);
    else if (!strcmp(name, "vae_encode_mean"))
      ok = vae_encode_inputs(c, model, "vae_encode_", error);
    else if (g_str_has_prefix(name, "te1_") || g_str_has_prefix(name, "te2_"))
      continue; /* single_file_text_outputs */
    else {
      g_set_error(error, LCM_ERROR, LCM_ERROR_FORMAT, "case %s: unknown single-file output '%s'",
                  c->name, name);
      ok = FALSE;
    }
  }
  g_list_free(names);
  return ok;
}

static gboolean run_single_file(Case *c, GError **error) {
  LcmModel *model = case_model(c, error);
  if (!model) return FALSE;
  gboolean ok = check_keymap(c, model, error) && single_file_outputs(c, model, error);
  lcm_model_free(model);
  if (!ok || !single_file_text_outputs(c, error)) return FALSE;
  int dtype = checkpoint_dtype(c);
  guint ran = 0, failed = 0;
  for (guint i = 0; i < json_array_get_length(c->all_cases); i++) {
    JsonObject *sib = json_array_get_object_element(c->all_cases, i);
    JsonObject *paths =
        json_object_has_member(sib, "paths") ? json_object_get_object_member(sib, "paths") : NULL;
    if (!paths || json_object_has_member(paths, "loras")) continue;
    for (size_t k = 0; k < G_N_ELEMENTS(sibling_checks); k++) {
      if (g_strcmp0(json_object_get_string_member(sib, "component"), sibling_checks[k].component))
        continue;
      Case tmp = *c;
      tmp.obj = sib;
      char *weights = case_path(&tmp, sibling_checks[k].weights_role);
      int sib_dtype = weight_file_dtype(weights);
      g_free(weights);
      if (sib_dtype != dtype) continue;
      gboolean matched;
      if (!rerun_sibling(c, sib, k, &matched, error)) return FALSE;
      ran++;
      failed += !matched;
    }
  }
  if (failed) {
    g_set_error(error, LCM_ERROR, LCM_ERROR_FORMAT, "%u of %u network checks failed", failed, ran);
    return FALSE;
  }
  return TRUE;
}

/* ---- Driver ------------------------------------------------------------------- */

static const struct {
  const char *component;
  CaseRunner run;
} runners[] = {
    {"tokenizer", run_tokenizer},
    {"text_encoder", run_text_encoder},
    {"text_encoders", run_text_encoders},
    {"lcm_guidance_embedding", run_guidance_embedding},
    {"unet", run_unet},
    {"unet_added_cond", run_unet_added_cond},
    {"vae_encoder", run_vae_encoder},
    {"vae_decoder", run_vae_decoder},
    {"taesd_decoder", run_taesd_decoder},
    {"taesd_encoder", run_taesd_encoder},
    {"single_file_checkpoint", run_single_file},
    {"lora_merge", run_lora_merge},
    {"lcm_scheduler", run_scheduler},
    {"torch_cpu_randn", run_randn},
    {"pipeline_txt2img", run_pipeline},
    {"pipeline_img2img", run_pipeline},
    {"pipeline_inpaint_9ch", run_pipeline},
    {"pipeline_inpaint_4ch", run_pipeline},
    {"pipeline_txt2img_cfg", run_pipeline},
    {"pipeline_img2img_cfg", run_pipeline},
    {"pipeline_sdxl_txt2img", run_pipeline},
    {"pipeline_sdxl_img2img", run_pipeline},
    {"pipeline_sdxl_inpaint", run_pipeline},
    {"pipeline_sdxl_txt2img_cfg", run_pipeline},
    {"pipeline_sdxl_img2img_cfg", run_pipeline},
};

typedef enum { CASE_PASSED, CASE_FAILED, CASE_NOT_IMPLEMENTED } CaseResult;

static CaseResult run_case(const GoldenOptions *options, JsonArray *all, JsonObject *obj,
                           const char *base_dir) {
  Case c = {.options = options, .all_cases = all, .obj = obj, .base_dir = (char *)base_dir};
  c.name = json_object_get_string_member_with_default(obj, "name", "?");
  c.component = json_object_get_string_member_with_default(obj, "component", "?");
  c.params =
      json_object_has_member(obj, "params") ? json_object_get_object_member(obj, "params") : NULL;
  CaseRunner run = NULL;
  for (size_t i = 0; i < G_N_ELEMENTS(runners); i++)
    if (strcmp(runners[i].component, c.component) == 0) run = runners[i].run;
  if (!run) {
    g_print("N/I   %-40s %s: not implemented\n", c.name, c.component);
    return CASE_NOT_IMPLEMENTED;
  }
  JsonObject *empty = json_object_new();
  if (!c.params) c.params = empty;
  c.outputs = g_ptr_array_new_with_free_func(output_free);
  c.note = g_string_new(NULL);
  GError *error = NULL;
  gint64 start = g_get_monotonic_time();
  char *file = g_build_filename(base_dir, json_object_get_string_member(obj, "file"), NULL);
  c.data = st_open(file, &error);
  g_free(file);
  gboolean ok = c.data && run(&c, &error);
  if (ok) {
    for (guint i = 0; i < c.outputs->len; i++)
      if (!compare_output(&c, c.outputs->pdata[i], c.data)) ok = FALSE;
  }
  if (ok || c.outputs->len) {
    GError *write_error = NULL;
    if (!write_outputs(&c, &write_error)) {
      g_string_append_printf(c.note, " %s;", write_error->message);
      g_clear_error(&write_error);
      ok = FALSE;
    }
  }
  double seconds = (g_get_monotonic_time() - start) / 1e6;
  g_print("%s  %-40s %s (%.2f s):%s%s%s\n", ok ? "PASS" : "FAIL", c.name, c.component, seconds,
          c.note->str, error ? " error: " : "", error ? error->message : "");
  g_clear_error(&error);
  g_string_free(c.note, TRUE);
  g_ptr_array_unref(c.outputs);
  if (c.data) st_close(c.data);
  json_object_unref(empty);
  return ok ? CASE_PASSED : CASE_FAILED;
}

int golden_run(const GoldenOptions *options) {
  GError *error = NULL;
  JsonParser *parser = json_parser_new();
  if (!json_parser_load_from_file(parser, options->cases_json, &error)) {
    g_printerr("golden: %s\n", error->message);
    g_error_free(error);
    g_object_unref(parser);
    return 2;
  }
  JsonNode *root = json_parser_get_root(parser);
  JsonObject *root_obj = JSON_NODE_HOLDS_OBJECT(root) ? json_node_get_object(root) : NULL;
  JsonArray *cases = root_obj && json_object_has_member(root_obj, "cases")
                         ? json_object_get_array_member(root_obj, "cases")
                         : NULL;
  if (!cases) {
    g_printerr("golden: %s: no \"cases\" array\n", options->cases_json);
    g_object_unref(parser);
    return 2;
  }
  char *base_dir = g_path_get_dirname(options->cases_json);
  guint counts[3] = {0, 0, 0}, selected = 0;
  CaseResult last = CASE_PASSED;
  for (guint i = 0; i < json_array_get_length(cases); i++) {
    JsonObject *obj = json_array_get_object_element(cases, i);
    if (options->only_case &&
        g_strcmp0(json_object_get_string_member_with_default(obj, "name", ""), options->only_case))
      continue;
    selected++;
    last = run_case(options, cases, obj, base_dir);
    counts[last]++;
  }
  g_free(base_dir);
  g_object_unref(parser);
  if (options->only_case && selected == 0) {
    g_printerr("golden: no case named '%s' in %s\n", options->only_case, options->cases_json);
    return 2;
  }
  g_print("golden (%s): %u passed, %u failed, %u not implemented\n",
          lcm_precision_name(options->precision), counts[CASE_PASSED], counts[CASE_FAILED],
          counts[CASE_NOT_IMPLEMENTED]);
  if (counts[CASE_FAILED]) return 1;
  if (options->only_case && last == CASE_NOT_IMPLEMENTED) return 3;
  return 0;
}
