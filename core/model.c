/* Model locations: diffusers pipeline folders, separate parts, or a single
 * A1111 / civitai checkpoint; refuses what we cannot (or must not) load. */
#include "model.h"

#include "lora.h"

#include <json-glib/json-glib.h>
#include <string.h>

/* Where one network comes from. */
typedef struct {
  char *config;     /* diffusers / transformers config.json; NULL: inferred */
  Weights *weights; /* NULL when the model lacks this network */
} Part;

struct LcmModel {
  char *description;
  StFile *checkpoint;
  Part parts[N_COMPONENTS];
  char *text_encoder_config;   /* overrides parts[TEXT_ENCODER].config */
  char *text_encoder_2_config; /* overrides parts[TEXT_ENCODER_2].config */
  char *tokenizer_dir, *tokenizer_2_dir;
  LcmModelFamily family;
  /* SDXL pipelines: no negative prompt gives all-zero uncond embeddings
   * (model_index.json's force_zeros_for_empty_prompt, true by default) */
  gboolean force_zeros_for_empty_prompt;
  char *scheduler_config;
  GPtrArray *loras; /* StFile* of the merged LoRAs; the Weights point into them */
};

/* The weight files a diffusers part folder may hold, preferred first. */
static const char *const unet_vae_weight_files[] = {"diffusion_pytorch_model.safetensors",
                                                    "diffusion_pytorch_model.fp16.safetensors"};
static const char *const text_encoder_weight_files[] = {"model.safetensors",
                                                        "model.fp16.safetensors"};
static const char *const unet_vae_pickles[] = {"diffusion_pytorch_model.bin",
                                               "diffusion_pytorch_model.fp16.bin"};
static const char *const text_encoder_pickles[] = {"pytorch_model.bin", "pytorch_model.fp16.bin"};

void lcm_model_free(LcmModel *model) {
  if (!model) return;
  for (int c = 0; c < N_COMPONENTS; c++) {
    weights_free(model->parts[c].weights);
    g_free(model->parts[c].config);
  }
  g_ptr_array_unref(model->loras);
  st_close(model->checkpoint);
  g_free(model->description);
  g_free(model->text_encoder_config);
  g_free(model->text_encoder_2_config);
  g_free(model->tokenizer_dir);
  g_free(model->tokenizer_2_dir);
  g_free(model->scheduler_config);
  g_free(model);
}

const char *lcm_model_describe(const LcmModel *model) {
  return model->description;
}

/* PyTorch pickles can run arbitrary code when loaded; st_open also refuses
 * them by content, whatever their name. */
static gboolean refuse_pickle_name(const char *path, GError **error) {
  static const char *const extensions[] = {".ckpt", ".pt", ".pth", ".bin"};
  char *lower = g_ascii_strdown(path, -1);
  const char *found = NULL;
  for (size_t i = 0; i < G_N_ELEMENTS(extensions) && !found; i++)
    if (g_str_has_suffix(lower, extensions[i])) found = extensions[i];
  g_free(lower);
  if (!found) return TRUE;
  g_set_error(error, LCM_ERROR, LCM_ERROR_UNSUPPORTED,
              "%s: is a PyTorch pickle checkpoint (%s); pickles can run arbitrary code and are "
              "not loaded: convert it to .safetensors",
              path, found);
  return FALSE;
}

static gboolean require_file(const char *path, const char *what, GError **error) {
  if (g_file_test(path, G_FILE_TEST_IS_REGULAR)) return TRUE;
  g_set_error(error, LCM_ERROR, LCM_ERROR_MISSING, "%s is missing (expected %s there)", path, what);
  return FALSE;
}

static gboolean require_dir(const char *path, const char *what, GError **error) {
  if (g_file_test(path, G_FILE_TEST_IS_DIR)) return TRUE;
  g_set_error(error, LCM_ERROR, LCM_ERROR_MISSING, "%s: folder is missing (expected %s there)",
              path, what);
  return FALSE;
}

/* The weight file of a diffusers part folder: `override` (a path, or a file
 * name inside the folder) or the first of `names` present. */
static char *find_weight_file(const char *dir, const char *override, const char *const *names,
                              const char *const *pickles, size_t n_names, GError **error) {
  if (override) {
    char *path = g_file_test(override, G_FILE_TEST_EXISTS) ? g_strdup(override)
                                                           : g_build_filename(dir, override, NULL);
    if (refuse_pickle_name(path, error) && require_file(path, "the weight file", error))
      return path;
    g_free(path);
    return NULL;
  }
  for (size_t i = 0; i < n_names; i++) {
    char *path = g_build_filename(dir, names[i], NULL);
    if (g_file_test(path, G_FILE_TEST_IS_REGULAR)) return path;
    g_free(path);
  }
  for (size_t i = 0; i < n_names; i++) {
    char *path = g_build_filename(dir, pickles[i], NULL);
    gboolean pickle = g_file_test(path, G_FILE_TEST_IS_REGULAR);
    g_free(path);
    if (pickle) {
      g_set_error(error, LCM_ERROR, LCM_ERROR_UNSUPPORTED,
                  "%s: holds only %s, a PyTorch pickle (not loaded: pickles can run arbitrary "
                  "code); convert it to %s",
                  dir, pickles[i], names[i]);
      return NULL;
    }
  }
  g_set_error(error, LCM_ERROR, LCM_ERROR_MISSING, "%s: no weights (expected %s or %s there)", dir,
              names[0], names[1]);
  return NULL;
}

static gboolean part_open_folder(Part *part, Component component, const char *dir,
                                 const char *weights_override, GError **error) {
  gboolean text = component == COMPONENT_TEXT_ENCODER || component == COMPONENT_TEXT_ENCODER_2;
  char *what = g_strdup_printf("the %s's %s config.json", component_name(component),
                               text ? "transformers" : "diffusers");
  part->config = g_build_filename(dir, "config.json", NULL);
  gboolean ok = require_dir(dir, what, error) && require_file(part->config, what, error);
  g_free(what);
  if (!ok) return FALSE;
  char *weight_file = find_weight_file(dir, weights_override,
                                       text ? text_encoder_weight_files : unet_vae_weight_files,
                                       text ? text_encoder_pickles : unet_vae_pickles, 2, error);
  if (!weight_file) return FALSE;
  part->weights = weights_open_file(weight_file, error);
  g_free(weight_file);
  return part->weights != NULL;
}

/* The first key starting with `prefix`, or NULL. */
static const char *find_prefix(const StFile *file, const char *prefix) {
  for (guint i = 0; i < st_count(file); i++)
    if (g_str_has_prefix(st_tensor_at(file, i)->name, prefix)) return st_tensor_at(file, i)->name;
  return NULL;
}

/* The family of a checkpoint by its telltale keys (SDXL: the SGM
 * conditioner's embedders or the UNet's size conditioning); refuses
 * others. */
static gboolean check_checkpoint_family(const StFile *file, LcmModelFamily *family,
                                        GError **error) {
  static const struct {
    const char *prefix, *family, *part;
  } foreign[] = {
      {"cond_stage_model.model.", "Stable Diffusion 2.x", "OpenCLIP text encoder"},
  };
  *family = find_prefix(file, "conditioner.embedders.") ||
                    find_prefix(file, "model.diffusion_model.label_emb.")
                ? LCM_FAMILY_SDXL
                : LCM_FAMILY_SD15;
  for (size_t i = 0; i < G_N_ELEMENTS(foreign); i++) {
    const char *key = find_prefix(file, foreign[i].prefix);
    if (key) {
      g_set_error(error, LCM_ERROR, LCM_ERROR_UNSUPPORTED,
                  "%s: this is a %s checkpoint (%s, e.g. '%s'); only the Stable Diffusion 1.5 "
                  "and XL families are supported",
                  st_path(file), foreign[i].family, foreign[i].part, key);
      return FALSE;
    }
  }
  if (!find_prefix(file, "model.diffusion_model.")) {
    g_set_error(error, LCM_ERROR, LCM_ERROR_UNSUPPORTED,
                "%s: not a Stable Diffusion checkpoint: it has no UNet tensors "
                "(model.diffusion_model.*)%s",
                st_path(file),
                st_find(file, "conv_in.weight")
                    ? "; it looks like a single diffusers network: open its pipeline folder"
                    : "");
    return FALSE;
  }
  return TRUE;
}

/* SD 2.x UNets are recognisable by their text-embedding width. */
static gboolean check_unet_family(LcmModel *model, GError **error) {
  UNetConfig config;
  if (!model_unet_config(model, &config, error)) return FALSE;
  const char *source = model->parts[COMPONENT_UNET].config
                           ? model->parts[COMPONENT_UNET].config
                           : weights_path(model->parts[COMPONENT_UNET].weights);
  /* an SDXL-width UNet is fine in an SDXL model (its two text encoders) */
  const char *family = config.cross_attention_dim == 1024 ? "Stable Diffusion 2.x"
                       : config.cross_attention_dim >= 2048 && model->family != LCM_FAMILY_SDXL
                           ? "Stable Diffusion XL"
                           : NULL;
  if (family) {
    g_set_error(error, LCM_ERROR, LCM_ERROR_UNSUPPORTED,
                "%s: this is a %s UNet (cross-attention width %d) without the model's other "
                "parts; open its whole pipeline folder or checkpoint (SD 2.x is not supported)",
                source, family, config.cross_attention_dim);
    return FALSE;
  }
  if (config.in_channels != 4 && config.in_channels != 9) {
    g_set_error(error, LCM_ERROR, LCM_ERROR_UNSUPPORTED,
                "%s: UNet with %d input channels; only 4 (text-to-image) and 9 (inpainting) are "
                "supported",
                source, config.in_channels);
    return FALSE;
  }
  return TRUE;
}

static gboolean open_checkpoint(LcmModel *model, const char *path, GError **error) {
  if (!refuse_pickle_name(path, error)) return FALSE;
  model->checkpoint = st_open(path, error);
  return model->checkpoint && check_checkpoint_family(model->checkpoint, &model->family, error);
}

/* Checks a tokenizer folder and remembers it in *dir_out. */
static gboolean open_tokenizer(const char *dir, char **dir_out, GError **error) {
  const char *what = "the CLIP tokenizer's vocab.json and merges.txt";
  char *vocab = g_build_filename(dir, "vocab.json", NULL);
  char *merges = g_build_filename(dir, "merges.txt", NULL);
  gboolean ok = require_dir(dir, what, error) && require_file(vocab, what, error) &&
                require_file(merges, what, error);
  g_free(vocab);
  g_free(merges);
  if (ok) *dir_out = g_strdup(dir);
  return ok;
}

static gboolean open_scheduler(LcmModel *model, const char *dir, GError **error) {
  char *config = g_build_filename(dir, "scheduler_config.json", NULL);
  if (!require_file(config, "the scheduler's scheduler_config.json", error)) {
    g_free(config);
    return FALSE;
  }
  model->scheduler_config = config;
  return TRUE;
}

static char *describe_parts(const LcmModelParts *parts) {
  GString *s = g_string_new("model parts:");
  const struct {
    const char *role, *path;
  } roles[] = {{"checkpoint", parts->checkpoint},
               {"unet", parts->unet},
               {"vae", parts->vae},
               {"text encoder", parts->text_encoder},
               {"second text encoder", parts->text_encoder_2},
               {"tokenizer", parts->tokenizer},
               {"second tokenizer", parts->tokenizer_2},
               {"scheduler", parts->scheduler}};
  for (size_t i = 0; i < G_N_ELEMENTS(roles); i++)
    if (roles[i].path) g_string_append_printf(s, " %s %s,", roles[i].role, roles[i].path);
  if (s->str[s->len - 1] == ',')
    g_string_truncate(s, s->len - 1);
  else
    g_string_append(s, " none");
  return g_string_free(s, FALSE);
}

static gboolean open_parts(LcmModel *model, const LcmModelParts *parts, GError **error) {
  if (parts->checkpoint && !open_checkpoint(model, parts->checkpoint, error)) return FALSE;
  const char *folders[N_COMPONENTS] = {
      [COMPONENT_UNET] = parts->unet,
      [COMPONENT_VAE] = parts->vae,
      [COMPONENT_TEXT_ENCODER] = parts->text_encoder,
      [COMPONENT_TEXT_ENCODER_2] = parts->text_encoder_2,
  };
  if (parts->text_encoder_2) model->family = LCM_FAMILY_SDXL;
  model->force_zeros_for_empty_prompt = model->family == LCM_FAMILY_SDXL;
  for (int c = 0; c < N_COMPONENTS; c++) {
    Part *part = &model->parts[c];
    if (folders[c]) {
      const char *override = c == COMPONENT_UNET ? parts->unet_weights : NULL;
      if (!part_open_folder(part, (Component)c, folders[c], override, error)) return FALSE;
    } else if (model->checkpoint) {
      GError *local = NULL;
      part->weights = weights_open_checkpoint(model->checkpoint, (Component)c, &local);
      /* a checkpoint without a VAE or text encoder is usable with other parts */
      if (!part->weights && !g_error_matches(local, LCM_ERROR, LCM_ERROR_MISSING)) {
        g_propagate_error(error, local);
        return FALSE;
      }
      g_clear_error(&local);
    }
  }
  const char *const text_configs[] = {parts->text_encoder_config, parts->text_encoder_2_config};
  char **text_config_fields[] = {&model->text_encoder_config, &model->text_encoder_2_config};
  for (size_t i = 0; i < G_N_ELEMENTS(text_configs); i++) {
    if (!text_configs[i]) continue;
    if (!require_file(text_configs[i], "a transformers CLIP text config.json", error)) return FALSE;
    *text_config_fields[i] = g_strdup(text_configs[i]);
  }
  if (parts->unet_config) {
    if (!require_file(parts->unet_config, "a diffusers UNet config.json", error)) return FALSE;
    g_free(model->parts[COMPONENT_UNET].config);
    model->parts[COMPONENT_UNET].config = g_strdup(parts->unet_config);
  }
  if (model->parts[COMPONENT_UNET].weights && !check_unet_family(model, error)) return FALSE;
  if (parts->tokenizer && !open_tokenizer(parts->tokenizer, &model->tokenizer_dir, error))
    return FALSE;
  if (parts->tokenizer_2 && !open_tokenizer(parts->tokenizer_2, &model->tokenizer_2_dir, error))
    return FALSE;
  if (parts->scheduler && !open_scheduler(model, parts->scheduler, error)) return FALSE;
  return TRUE;
}

LcmModel *lcm_model_open_parts(const LcmModelParts *parts, GError **error) {
  LcmModel *model = g_new0(LcmModel, 1);
  model->loras = g_ptr_array_new_with_free_func((GDestroyNotify)st_close);
  if (!open_parts(model, parts, error)) {
    lcm_model_free(model);
    return NULL;
  }
  model->description = describe_parts(parts);
  return model;
}

/* model_index.json names the pipeline class: an "XL" one is the SDXL
 * family; *force_zeros gets its force_zeros_for_empty_prompt. */
static gboolean read_model_index(const char *index, LcmModelFamily *family, gboolean *force_zeros,
                                 GError **error) {
  if (!require_file(index, "a diffusers pipeline's model_index.json", error)) return FALSE;
  JsonParser *parser = json_parser_new();
  GError *json_error = NULL;
  gboolean ok = json_parser_load_from_file(parser, index, &json_error);
  if (!ok) {
    g_set_error(error, LCM_ERROR, LCM_ERROR_FORMAT, "%s: %s", index, json_error->message);
    g_error_free(json_error);
  } else {
    JsonNode *root = json_parser_get_root(parser);
    JsonObject *object = root && JSON_NODE_HOLDS_OBJECT(root) ? json_node_get_object(root) : NULL;
    JsonNode *class_name = object ? json_object_get_member(object, "_class_name") : NULL;
    JsonNode *zeros =
        object ? json_object_get_member(object, "force_zeros_for_empty_prompt") : NULL;
    /* members of another type say nothing (a name that is no string names no
     * pipeline; found by fuzzing, it was read as a NULL string) */
    const char *pipeline = class_name && JSON_NODE_HOLDS_VALUE(class_name) &&
                                   json_node_get_value_type(class_name) == G_TYPE_STRING
                               ? json_node_get_string(class_name)
                               : "";
    *family = strstr(pipeline, "XL") ? LCM_FAMILY_SDXL : LCM_FAMILY_SD15;
    /* diffusers' SDXL pipelines default to true */
    *force_zeros =
        zeros && JSON_NODE_HOLDS_VALUE(zeros) && json_node_get_value_type(zeros) == G_TYPE_BOOLEAN
            ? json_node_get_boolean(zeros)
            : TRUE;
  }
  g_object_unref(parser);
  return ok;
}

static LcmModel *open_folder(const char *path, GError **error) {
  char *index = g_build_filename(path, "model_index.json", NULL);
  LcmModelFamily family;
  gboolean force_zeros;
  gboolean ok = read_model_index(index, &family, &force_zeros, error);
  g_free(index);
  if (!ok) return NULL;

  gboolean xl = family == LCM_FAMILY_SDXL;
  char *unet = g_build_filename(path, "unet", NULL);
  char *vae = g_build_filename(path, "vae", NULL);
  char *text_encoder = g_build_filename(path, "text_encoder", NULL);
  char *text_encoder_2 = xl ? g_build_filename(path, "text_encoder_2", NULL) : NULL;
  char *tokenizer = g_build_filename(path, "tokenizer", NULL);
  char *tokenizer_2 = xl ? g_build_filename(path, "tokenizer_2", NULL) : NULL;
  char *scheduler = g_build_filename(path, "scheduler", NULL);
  LcmModelParts parts = {
      .unet = unet,
      .vae = vae,
      .text_encoder = text_encoder,
      .text_encoder_2 = text_encoder_2,
      .tokenizer = tokenizer,
      .tokenizer_2 = tokenizer_2,
      /* without a scheduler config the LCM defaults hold */
      .scheduler = g_file_test(scheduler, G_FILE_TEST_IS_DIR) ? scheduler : NULL,
  };
  LcmModel *model = lcm_model_open_parts(&parts, error);
  if (model) {
    g_free(model->description);
    model->description = g_strdup_printf("diffusers folder %s", path);
    model->force_zeros_for_empty_prompt = xl && force_zeros;
  }
  g_free(unet);
  g_free(vae);
  g_free(text_encoder);
  g_free(text_encoder_2);
  g_free(tokenizer);
  g_free(tokenizer_2);
  g_free(scheduler);
  return model;
}

LcmModel *lcm_model_open(const char *path, GError **error) {
  if (g_file_test(path, G_FILE_TEST_IS_DIR)) return open_folder(path, error);
  if (!g_file_test(path, G_FILE_TEST_EXISTS)) {
    g_set_error(error, LCM_ERROR, LCM_ERROR_IO, "%s: no such file or folder", path);
    return NULL;
  }
  LcmModelParts parts = {.checkpoint = path};
  LcmModel *model = lcm_model_open_parts(&parts, error);
  if (model) {
    g_free(model->description);
    model->description = g_strdup_printf("single-file checkpoint %s", path);
  }
  return model;
}

float *lcm_model_read_tensor(LcmModel *model, const char *network, const char *name, int *ndims,
                             int64_t *shape, GError **error) {
  static const char *const network_names[N_COMPONENTS] = {
      [COMPONENT_UNET] = "unet",
      [COMPONENT_VAE] = "vae",
      [COMPONENT_TEXT_ENCODER] = "text_encoder",
      [COMPONENT_TEXT_ENCODER_2] = "text_encoder_2",
  };
  for (int c = 0; c < N_COMPONENTS; c++) {
    if (strcmp(network, network_names[c]) != 0) continue;
    Weights *weights = model_weights(model, (Component)c, error);
    if (!weights) return NULL;
    if (!weights_shape(weights, name, ndims, shape)) {
      g_set_error(error, LCM_ERROR, LCM_ERROR_MISSING, "%s: %s tensor '%s' is missing",
                  weights_path(weights), component_name((Component)c), name);
      return NULL;
    }
    return weights_get(weights, name, *ndims, shape, error);
  }
  g_set_error(error, LCM_ERROR, LCM_ERROR_INVALID,
              "unknown network '%s' (use unet, vae, text_encoder or text_encoder_2)", network);
  return NULL;
}

gboolean lcm_model_add_lora(LcmModel *model, const char *path, float scale, GError **error) {
  if (!model || !path) {
    g_set_error(error, LCM_ERROR, LCM_ERROR_INVALID, "no %s given to add a LoRA to",
                model ? "LoRA file" : "model");
    return FALSE;
  }
  if (!refuse_pickle_name(path, error)) return FALSE;
  static const Component changed[] = {COMPONENT_UNET, COMPONENT_TEXT_ENCODER,
                                      COMPONENT_TEXT_ENCODER_2};
  for (size_t i = 0; i < G_N_ELEMENTS(changed); i++) {
    const Weights *weights = model->parts[changed[i]].weights;
    if (weights && weights_any_fetched(weights)) {
      g_set_error(error, LCM_ERROR, LCM_ERROR_INVALID,
                  "%s: cannot add the LoRA %s: the model's %s has already loaded; add LoRAs "
                  "right after opening the model",
                  model->description, path, component_name(changed[i]));
      return FALSE;
    }
  }
  LoraTargets targets = {.unet = model->parts[COMPONENT_UNET].weights,
                         .text_encoder = model->parts[COMPONENT_TEXT_ENCODER].weights,
                         .text_encoder_2 = model->parts[COMPONENT_TEXT_ENCODER_2].weights,
                         .sdxl = model->family == LCM_FAMILY_SDXL};
  if (targets.unet) {
    UNetConfig config;
    if (!model_unet_config(model, &config, error)) return FALSE;
    targets.unet_layers_per_block = config.layers_per_block;
  }
  StFile *lora = lora_attach(path, scale, &targets, error);
  if (!lora) return FALSE;
  g_ptr_array_add(model->loras, lora);
  return TRUE;
}

LcmTokenizer *lcm_model_load_tokenizer(LcmModel *model, GError **error) {
  if (!model->tokenizer_dir) return lcm_tokenizer_new_default(error);
  return lcm_tokenizer_new_from_folder(model->tokenizer_dir, error);
}

/* SDXL's second tokenizer: the model's tokenizer_2 folder; without one (a
 * single-file checkpoint) the bundled vocabulary padded with "!", as every
 * SDXL tokenizer_2 is. */
LcmTokenizer *model_load_tokenizer_2(LcmModel *model, GError **error) {
  if (model->tokenizer_2_dir) return lcm_tokenizer_new_from_folder(model->tokenizer_2_dir, error);
  LcmTokenizer *tokenizer = lcm_tokenizer_new_default(error);
  if (tokenizer && !lcm_tokenizer_set_pad_token(tokenizer, "!", error)) {
    lcm_tokenizer_free(tokenizer);
    return NULL;
  }
  return tokenizer;
}

LcmModelFamily lcm_model_family(const LcmModel *model) {
  return model->family;
}

gboolean model_force_zeros_for_empty_prompt(const LcmModel *model) {
  return model->force_zeros_for_empty_prompt;
}

Weights *model_weights(LcmModel *model, Component component, GError **error) {
  Weights *weights = model->parts[component].weights;
  if (!weights)
    g_set_error(error, LCM_ERROR, LCM_ERROR_MISSING, "%s: has no %s; give its folder separately",
                model->description, component_name(component));
  return weights;
}

/* Each config comes from the part's config.json, else from its shapes. */
gboolean model_clip_config(LcmModel *model, Component encoder, ClipConfig *out, GError **error) {
  const char *override =
      encoder == COMPONENT_TEXT_ENCODER ? model->text_encoder_config : model->text_encoder_2_config;
  const char *config = override ? override : model->parts[encoder].config;
  if (config) return clip_config_read(config, out, error);
  Weights *weights = model_weights(model, encoder, error);
  return weights && clip_config_infer(weights, out, error);
}

gboolean model_unet_config(LcmModel *model, UNetConfig *out, GError **error) {
  const char *config = model->parts[COMPONENT_UNET].config;
  if (config) return unet_config_read(config, out, error);
  Weights *weights = model_weights(model, COMPONENT_UNET, error);
  return weights && unet_config_infer(weights, out, error);
}

gboolean model_vae_config(LcmModel *model, VaeConfig *out, GError **error) {
  const char *config = model->parts[COMPONENT_VAE].config;
  if (config) return vae_config_read(config, out, error);
  Weights *weights = model_weights(model, COMPONENT_VAE, error);
  return weights && vae_config_infer(weights, out, error);
}

const char *model_scheduler_config(const LcmModel *model) {
  return model->scheduler_config;
}
