/* LoRA files: keys are grouped into modules, each module is matched with the
 * weight it changes, and the updates are queued on the networks' Weights.
 *
 * Spellings read (PATH = the module's diffusers / transformers path):
 *   kohya / sd-scripts: lora_unet_PATH / lora_te_PATH (SDXL: lora_te1_PATH,
 *     lora_te2_PATH) with '.' -> '_', or the LDM path of the UNet
 *     (lora_unet_input_blocks_1_1_...), and .lora_down.weight,
 *     .lora_up.weight, .alpha;
 *   diffusers / peft: unet.PATH / text_encoder.PATH / text_encoder_2.PATH
 *     with .lora_A.weight and .lora_B.weight (alpha / rank already folded
 *     into lora_B), or .lora.down.weight and .lora.up.weight.
 * The '_'-joined kohya paths are ambiguous (module names hold underscores),
 * so they are looked up among the network's own names spelled the same way. */
#include "lora.h"

#include "lcm.h"

#include <math.h>
#include <string.h>

typedef enum { PART_DOWN, PART_UP, PART_ALPHA, N_PARTS } ModulePart;

static const char *const part_names[N_PARTS] = {"down", "up", "alpha"};

static const struct {
  const char *suffix;
  ModulePart part;
} part_suffixes[] = {
    {".lora_down.weight", PART_DOWN}, {".lora_up.weight", PART_UP},
    {".alpha", PART_ALPHA},           {".lora_A.weight", PART_DOWN},
    {".lora_B.weight", PART_UP},      {".lora.down.weight", PART_DOWN},
    {".lora.up.weight", PART_UP},
};

static const struct {
  const char *prefix;
  Component network;
  gboolean underscored; /* kohya: the path with '.' -> '_' */
  gboolean sdxl;        /* a prefix only SDXL LoRAs use (two text encoders) */
} network_prefixes[] = {
    {"lora_unet_", COMPONENT_UNET, TRUE, FALSE},
    {"lora_te_", COMPONENT_TEXT_ENCODER, TRUE, FALSE},
    {"lora_te1_", COMPONENT_TEXT_ENCODER, TRUE, TRUE},
    {"lora_te2_", COMPONENT_TEXT_ENCODER_2, TRUE, TRUE},
    {"unet.", COMPONENT_UNET, FALSE, FALSE},
    {"text_encoder.", COMPONENT_TEXT_ENCODER, FALSE, FALSE},
    {"text_encoder_2.", COMPONENT_TEXT_ENCODER_2, FALSE, TRUE},
};

/* How many names an error message lists. */
#define NAMES_SHOWN 3

typedef struct {
  char *name;       /* the keys' common part, e.g. "lora_unet_mid_block_attentions_0_proj_in" */
  const char *path; /* inside `name`, after the network prefix */
  Component network;
  gboolean underscored;
  gboolean sdxl; /* named as only SDXL LoRAs name modules */
  const StTensor *parts[N_PARTS];
  char *target; /* the weight it changes, once matched */
} LoraModule;

typedef struct {
  StFile *file;
  GPtrArray *modules;      /* LoraModule*, in file order */
  GPtrArray *unknown_keys; /* keys of no known LoRA part (owned by the file) */
} LoraFile;

static void module_free(gpointer p) {
  LoraModule *module = p;
  g_free(module->name);
  g_free(module->target);
  g_free(module);
}

/* Frees the parse; the StFile only when close_file. */
static void lora_file_free(LoraFile *lora, gboolean close_file) {
  if (!lora) return;
  g_ptr_array_unref(lora->modules);
  g_ptr_array_unref(lora->unknown_keys);
  if (close_file) st_close(lora->file);
  g_free(lora);
}

/* "'a', 'b', 'c' and 4 more" */
static char *name_list(const GPtrArray *names) {
  GString *s = g_string_new(NULL);
  for (guint i = 0; i < names->len && i < NAMES_SHOWN; i++)
    g_string_append_printf(s, "%s'%s'", i ? ", " : "", (const char *)names->pdata[i]);
  if (names->len > NAMES_SHOWN) g_string_append_printf(s, " and %u more", names->len - NAMES_SHOWN);
  return g_string_free(s, FALSE);
}

/* SDXL LoRAs (named for two text encoders) do not fit an SD1.5 model, whose
 * text encoder and UNet names they partly share. */
static gboolean refuse_sdxl_lora(const LoraFile *lora, const char *path, GError **error) {
  for (guint i = 0; i < lora->modules->len; i++) {
    const LoraModule *module = lora->modules->pdata[i];
    if (!module->sdxl) continue;
    g_set_error(error, LCM_ERROR, LCM_ERROR_UNSUPPORTED,
                "%s: this is a Stable Diffusion XL LoRA (it changes two text encoders, e.g. "
                "'%s'); this model is of the Stable Diffusion 1.5 family",
                path, module->name);
    return FALSE;
  }
  return TRUE;
}

/* Files one key under its module; FALSE (no error) when the key is no LoRA
 * part this loader knows. */
static gboolean add_key(LoraFile *lora, GHashTable *by_name, const StTensor *tensor,
                        GError **error) {
  const char *key = tensor->name;
  for (size_t s = 0; s < G_N_ELEMENTS(part_suffixes); s++) {
    if (!g_str_has_suffix(key, part_suffixes[s].suffix)) continue;
    char *name = g_strndup(key, strlen(key) - strlen(part_suffixes[s].suffix));
    for (size_t n = 0; n < G_N_ELEMENTS(network_prefixes); n++) {
      if (!g_str_has_prefix(name, network_prefixes[n].prefix)) continue;
      LoraModule *module = g_hash_table_lookup(by_name, name);
      if (!module) {
        module = g_new0(LoraModule, 1);
        module->name = name;
        module->path = name + strlen(network_prefixes[n].prefix);
        module->network = network_prefixes[n].network;
        module->underscored = network_prefixes[n].underscored;
        module->sdxl = network_prefixes[n].sdxl;
        g_hash_table_insert(by_name, module->name, module);
        g_ptr_array_add(lora->modules, module);
      } else {
        g_free(name);
      }
      ModulePart part = part_suffixes[s].part;
      if (module->parts[part]) {
        g_set_error(error, LCM_ERROR, LCM_ERROR_FORMAT,
                    "%s: LoRA tensors '%s' and '%s' both give the %s of module '%s'",
                    st_path(lora->file), module->parts[part]->name, key, part_names[part],
                    module->name);
        return FALSE;
      }
      module->parts[part] = tensor;
      return TRUE;
    }
    g_free(name);
  }
  g_ptr_array_add(lora->unknown_keys, (gpointer)key);
  return TRUE;
}

static LoraFile *lora_file_open(const char *path, GError **error) {
  StFile *file = st_open(path, error);
  if (!file) return NULL;
  LoraFile *lora = g_new0(LoraFile, 1);
  lora->file = file;
  lora->modules = g_ptr_array_new_with_free_func(module_free);
  lora->unknown_keys = g_ptr_array_new();
  GHashTable *by_name = g_hash_table_new(g_str_hash, g_str_equal);
  gboolean ok = TRUE;
  for (guint i = 0; i < st_count(file) && ok; i++)
    ok = add_key(lora, by_name, st_tensor_at(file, i), error);
  g_hash_table_unref(by_name);
  for (guint i = 0; i < lora->modules->len && ok; i++) {
    const LoraModule *module = lora->modules->pdata[i];
    for (ModulePart part = PART_DOWN; part <= PART_UP && ok; part++) {
      if (module->parts[part]) continue;
      g_set_error(error, LCM_ERROR, LCM_ERROR_FORMAT,
                  "%s: LoRA module '%s' has no %s matrix (a '%s' tensor)", path, module->name,
                  part_names[part], part == PART_DOWN ? "lora_down / lora_A" : "lora_up / lora_B");
      ok = FALSE;
    }
  }
  if (ok && lora->modules->len == 0) {
    char *keys = name_list(lora->unknown_keys);
    g_set_error(error, LCM_ERROR, LCM_ERROR_FORMAT,
                "%s: not a LoRA this loader reads: no lora_unet_* / lora_te_* (kohya) or unet.* "
                "/ text_encoder.* (diffusers) module with lora_down / lora_up or lora_A / lora_B "
                "tensors%s%s (LyCORIS LoHa / LoKr files are not supported)",
                path, keys[0] ? "; its keys are " : "", keys);
    g_free(keys);
    ok = FALSE;
  }
  if (!ok) {
    lora_file_free(lora, TRUE);
    return NULL;
  }
  return lora;
}

char **lcm_lora_networks(const char *path, GError **error) {
  LoraFile *lora = lora_file_open(path, error);
  if (!lora) return NULL;
  gboolean has[N_COMPONENTS] = {FALSE};
  for (guint i = 0; i < lora->modules->len; i++)
    has[((const LoraModule *)lora->modules->pdata[i])->network] = TRUE;
  lora_file_free(lora, TRUE);
  GStrvBuilder *networks = g_strv_builder_new();
  if (has[COMPONENT_UNET]) g_strv_builder_add(networks, "unet");
  if (has[COMPONENT_TEXT_ENCODER]) g_strv_builder_add(networks, "text_encoder");
  if (has[COMPONENT_TEXT_ENCODER_2]) g_strv_builder_add(networks, "text_encoder_2");
  char **result = g_strv_builder_end(networks);
  g_strv_builder_unref(networks);
  return result;
}

/* ---- Matching modules with weights ------------------------------------------ */

/* A network's weights by their kohya spelling: the name without ".weight",
 * '.' -> '_'. Two names spelled alike map to NULL (ambiguous). */
typedef struct {
  Weights *weights;
  GHashTable *by_kohya_name; /* owned key -> diffusers name (owned by the Weights) */
  int unet_layers_per_block;
} NetworkIndex;

static char *kohya_spelling(const char *weight_name) {
  char *s = g_strdup(weight_name);
  if (g_str_has_suffix(s, ".weight")) s[strlen(s) - strlen(".weight")] = '\0';
  return g_strdelimit(s, ".", '_');
}

static void network_index_init(NetworkIndex *index, Weights *weights, int unet_layers_per_block) {
  index->weights = weights;
  index->unet_layers_per_block = unet_layers_per_block;
  index->by_kohya_name = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
  if (!weights) return;
  GPtrArray *names = weights_names(weights);
  for (guint i = 0; i < names->len; i++) {
    const char *name = names->pdata[i];
    if (!g_str_has_suffix(name, ".weight")) continue;
    char *key = kohya_spelling(name);
    gboolean seen = g_hash_table_contains(index->by_kohya_name, key);
    g_hash_table_insert(index->by_kohya_name, key, seen ? NULL : (gpointer)name);
  }
  g_ptr_array_unref(names);
}

/* An LDM path in kohya spelling ("input_blocks_4_1_proj_in") as the dotted
 * checkpoint key ("model.diffusion_model.input_blocks.4.1.proj_in.weight"):
 * dots around the numeric indices are what the LDM mapping reads; the parts
 * in between are compared in kohya spelling again afterwards. */
static char *ldm_checkpoint_key(const char *path) {
  char **tokens = g_strsplit(path, "_", -1);
  GString *s = g_string_new("model.diffusion_model.");
  for (int i = 0; tokens[i]; i++) {
    gboolean numeric = tokens[i][0] && strspn(tokens[i], "0123456789") == strlen(tokens[i]);
    gboolean after_numeric =
        i > 0 && tokens[i - 1][0] && strspn(tokens[i - 1], "0123456789") == strlen(tokens[i - 1]);
    if (i > 0) g_string_append_c(s, numeric || after_numeric ? '.' : '_');
    g_string_append(s, tokens[i]);
  }
  g_string_append(s, ".weight");
  g_strfreev(tokens);
  return g_string_free(s, FALSE);
}

/* The weight a module changes (g_free it), or NULL. *ambiguous when its
 * kohya spelling fits several weights. */
static char *find_target(const NetworkIndex *index, const LoraModule *module, gboolean *ambiguous) {
  *ambiguous = FALSE;
  if (!module->underscored) {
    char *name = g_strconcat(module->path, ".weight", NULL);
    if (weights_contains(index->weights, name)) return name;
    g_free(name);
    return NULL;
  }
  char *kohya = g_strdup(module->path);
  gpointer found = NULL;
  gboolean known = g_hash_table_lookup_extended(index->by_kohya_name, kohya, NULL, &found);
  if (!known && module->network == COMPONENT_UNET) {
    char *ldm = ldm_checkpoint_key(module->path);
    char *mapped = weights_unet_diffusers_name(ldm, index->unet_layers_per_block);
    if (mapped) {
      g_free(kohya);
      kohya = kohya_spelling(mapped);
      known = g_hash_table_lookup_extended(index->by_kohya_name, kohya, NULL, &found);
    }
    g_free(mapped);
    g_free(ldm);
  }
  g_free(kohya);
  *ambiguous = known && !found;
  return found ? g_strdup(found) : NULL;
}

/* up [rows, rank] or [rows, rank, 1, 1]; down [rank, ...] with as many
 * values per rank as the weight has per row; alpha one finite value. */
static gboolean module_fits(const LoraModule *module, int ndims, const int64_t *shape) {
  const StTensor *down = module->parts[PART_DOWN], *up = module->parts[PART_UP];
  const StTensor *alpha = module->parts[PART_ALPHA];
  if (ndims < 2 || shape[0] <= 0) return FALSE;
  int64_t per_row = 1;
  for (int d = 1; d < ndims; d++) per_row *= shape[d];
  const int64_t rank = down->ndims >= 2 ? down->shape[0] : 0;
  gboolean up_ok = (up->ndims == 2 || (up->ndims == 4 && up->shape[2] == 1 && up->shape[3] == 1)) &&
                   up->shape[0] == shape[0] && up->shape[1] == rank;
  float alpha_value = 1;
  if (alpha && st_numel(alpha) == 1) st_tensor_to_f32(alpha, &alpha_value);
  gboolean alpha_ok = !alpha || (st_numel(alpha) == 1 && isfinite(alpha_value));
  return rank > 0 && up_ok && st_numel(down) == rank * per_row && alpha_ok;
}

static gboolean check_module_shape(const char *path, const LoraModule *module,
                                   const Weights *weights, GError **error) {
  int ndims;
  int64_t shape[ST_MAX_DIMS];
  weights_shape(weights, module->target, &ndims, shape);
  if (module_fits(module, ndims, shape)) return TRUE;
  const StTensor *down = module->parts[PART_DOWN], *up = module->parts[PART_UP];
  char *down_shape = weights_shape_string(down->ndims, down->shape);
  char *up_shape = weights_shape_string(up->ndims, up->shape);
  char *weight_shape = weights_shape_string(ndims, shape);
  const StTensor *alpha = module->parts[PART_ALPHA];
  char alpha_text[32] = "";
  if (alpha && st_numel(alpha) == 1) {
    float value;
    st_tensor_to_f32(alpha, &value);
    g_snprintf(alpha_text, sizeof alpha_text, "%g", value);
  } else if (alpha) {
    g_strlcpy(alpha_text, "not one value", sizeof alpha_text);
  }
  g_set_error(error, LCM_ERROR, LCM_ERROR_SHAPE,
              "%s: LoRA module '%s' (down %s, up %s%s%s) does not fit the %s tensor '%s' of shape "
              "%s; the LoRA was made for a different model",
              path, module->name, down_shape, up_shape, alpha ? ", alpha " : "",
              alpha ? alpha_text : "", component_name(module->network), module->target,
              weight_shape);
  g_free(down_shape);
  g_free(up_shape);
  g_free(weight_shape);
  return FALSE;
}

/* Matches every module of a network the model has; the names of those that
 * match nothing go to `unmatched`. */
static gboolean match_modules(LoraFile *lora, const NetworkIndex indexes[], GPtrArray *unmatched,
                              guint *considered, GError **error) {
  const char *path = st_path(lora->file);
  *considered = 0;
  for (guint i = 0; i < lora->modules->len; i++) {
    LoraModule *module = lora->modules->pdata[i];
    const NetworkIndex *index = &indexes[module->network];
    if (!index->weights) continue;
    (*considered)++;
    gboolean ambiguous;
    module->target = find_target(index, module, &ambiguous);
    if (ambiguous) {
      g_set_error(error, LCM_ERROR, LCM_ERROR_FORMAT,
                  "%s: LoRA module '%s' could name several %s tensors; rename it with dots "
                  "(diffusers spelling)",
                  path, module->name, component_name(module->network));
      return FALSE;
    }
    if (!module->target)
      g_ptr_array_add(unmatched, module->name);
    else if (!check_module_shape(path, module, index->weights, error))
      return FALSE;
  }
  return TRUE;
}

static float module_factor(const LoraModule *module, float scale) {
  const double rank = (double)module->parts[PART_DOWN]->shape[0];
  float alpha = (float)rank;
  if (module->parts[PART_ALPHA]) st_tensor_to_f32(module->parts[PART_ALPHA], &alpha);
  return (float)(scale * alpha / rank);
}

StFile *lora_attach(const char *path, float scale, const LoraTargets *targets, GError **error) {
  if (!isfinite(scale)) {
    g_set_error(error, LCM_ERROR, LCM_ERROR_INVALID, "%s: LoRA scale %g is not a number", path,
                scale);
    return NULL;
  }
  LoraFile *lora = lora_file_open(path, error);
  if (!lora) return NULL;
  if (!targets->sdxl && !refuse_sdxl_lora(lora, path, error)) {
    lora_file_free(lora, TRUE);
    return NULL;
  }
  NetworkIndex indexes[N_COMPONENTS];
  network_index_init(&indexes[COMPONENT_UNET], targets->unet, targets->unet_layers_per_block);
  network_index_init(&indexes[COMPONENT_VAE], NULL, 0);
  network_index_init(&indexes[COMPONENT_TEXT_ENCODER], targets->text_encoder, 0);
  network_index_init(&indexes[COMPONENT_TEXT_ENCODER_2], targets->text_encoder_2, 0);
  GPtrArray *unmatched = g_ptr_array_new();
  guint considered;
  gboolean ok = match_modules(lora, indexes, unmatched, &considered, error);
  if (ok && considered > 0 && unmatched->len == considered) {
    char *names = name_list(unmatched);
    g_set_error(error, LCM_ERROR, LCM_ERROR_UNSUPPORTED,
                "%s: none of the LoRA's %u modules matches a tensor of this model (%s): it was "
                "made for a different architecture (SD1.5 vs SDXL, SD 2.x, ...)",
                path, considered, names);
    g_free(names);
    ok = FALSE;
  } else if (ok && unmatched->len + lora->unknown_keys->len > 0) {
    g_ptr_array_extend(unmatched, lora->unknown_keys, NULL, NULL);
    char *names = name_list(unmatched);
    g_set_error(error, LCM_ERROR, LCM_ERROR_UNSUPPORTED,
                "%s: %u LoRA modules or keys match no tensor of this model and cannot be merged: "
                "%s (a LoRA for another model, or a LyCORIS / DoRA type this loader does not "
                "read)",
                path, unmatched->len, names);
    g_free(names);
    ok = FALSE;
  }
  for (guint i = 0; i < lora->modules->len && ok; i++) {
    const LoraModule *module = lora->modules->pdata[i];
    if (!module->target) continue;
    WeightUpdate update = {.up = module->parts[PART_UP],
                           .down = module->parts[PART_DOWN],
                           .factor = module_factor(module, scale),
                           .file = lora->file};
    weights_add_update(indexes[module->network].weights, module->target, &update);
  }
  g_ptr_array_unref(unmatched);
  for (size_t n = 0; n < G_N_ELEMENTS(indexes); n++) g_hash_table_unref(indexes[n].by_kohya_name);
  StFile *file = ok ? lora->file : NULL;
  lora_file_free(lora, !ok);
  return file;
}
