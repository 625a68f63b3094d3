/* Network configurations from diffusers / transformers config.json files or
 * inferred from the tensor shapes of a checkpoint. */
#include "config.h"

#include "lcm.h"

#include <json-glib/json-glib.h>
#include <string.h>

/* Upper bound for any size in a config: rejects garbage before it turns into
 * absurd allocations. */
#define CONFIG_MAX_SIZE (1 << 20)

/* ---- JSON helpers ---------------------------------------------------------- */

typedef struct {
  const char *path; /* the file, or what names the text, in messages */
  JsonParser *parser;
  JsonObject *root;
} ConfigFile;

static void config_close(ConfigFile *config) {
  g_clear_object(&config->parser);
}

G_DEFINE_AUTO_CLEANUP_CLEAR_FUNC(ConfigFile, config_close)

/* Parses `json`, the text of a config.json, or the file at `path` when json
 * is NULL (loading the file itself keeps its name in parse errors). */
static gboolean config_open(ConfigFile *config, const char *path, const char *json,
                            GError **error) {
  config->path = path;
  config->parser = json_parser_new();
  GError *json_error = NULL;
  gboolean loaded = json ? json_parser_load_from_data(config->parser, json, -1, &json_error)
                         : json_parser_load_from_file(config->parser, path, &json_error);
  if (!loaded) {
    if (g_error_matches(json_error, G_FILE_ERROR, G_FILE_ERROR_NOENT))
      g_set_error(error, LCM_ERROR, LCM_ERROR_MISSING, "%s: config file is missing", path);
    else if (json_error->domain == G_FILE_ERROR)
      g_set_error(error, LCM_ERROR, LCM_ERROR_IO, "%s: %s", path, json_error->message);
    else
      g_set_error(error, LCM_ERROR, LCM_ERROR_FORMAT, "%s: not valid JSON: %s", path,
                  json_error->message);
    g_error_free(json_error);
    return FALSE;
  }
  JsonNode *root = json_parser_get_root(config->parser);
  if (!root || !JSON_NODE_HOLDS_OBJECT(root)) {
    g_set_error(error, LCM_ERROR, LCM_ERROR_FORMAT, "%s: not a JSON object", path);
    return FALSE;
  }
  config->root = json_node_get_object(root);
  return TRUE;
}

static gboolean config_fail(const ConfigFile *config, const char *key, const char *expected,
                            GError **error) {
  g_set_error(error, LCM_ERROR, LCM_ERROR_FORMAT, "%s: '%s' must be %s", config->path, key,
              expected);
  return FALSE;
}

/* A member, or NULL when absent or null (both mean "use the default"). */
static JsonNode *config_member(const ConfigFile *config, const char *key) {
  JsonNode *node = json_object_get_member(config->root, key);
  return node && !JSON_NODE_HOLDS_NULL(node) ? node : NULL;
}

static gboolean node_is_int(JsonNode *node) {
  return JSON_NODE_HOLDS_VALUE(node) && json_node_get_value_type(node) == G_TYPE_INT64;
}

static gboolean size_in_range(gint64 value, int min) {
  return value >= min && value <= CONFIG_MAX_SIZE;
}

/* An integer in [min, CONFIG_MAX_SIZE], or `fallback` when absent. */
static gboolean config_int(const ConfigFile *config, const char *key, int fallback, int min,
                           int *out, GError **error) {
  JsonNode *node = config_member(config, key);
  if (!node) {
    *out = fallback;
    return TRUE;
  }
  if (!node_is_int(node) || !size_in_range(json_node_get_int(node), min))
    return config_fail(config, key, min > 0 ? "a positive integer" : "a non-negative integer",
                       error);
  *out = (int)json_node_get_int(node);
  return TRUE;
}

static gboolean config_float(const ConfigFile *config, const char *key, float fallback, float *out,
                             GError **error) {
  JsonNode *node = config_member(config, key);
  if (!node) {
    *out = fallback;
    return TRUE;
  }
  GType type = JSON_NODE_HOLDS_VALUE(node) ? json_node_get_value_type(node) : G_TYPE_INVALID;
  if (type != G_TYPE_DOUBLE && type != G_TYPE_INT64)
    return config_fail(config, key, "a number", error);
  *out = (float)json_node_get_double(node);
  return TRUE;
}

static gboolean config_bool(const ConfigFile *config, const char *key, gboolean fallback,
                            gboolean *out, GError **error) {
  JsonNode *node = config_member(config, key);
  if (!node) {
    *out = fallback;
    return TRUE;
  }
  if (!JSON_NODE_HOLDS_VALUE(node) || json_node_get_value_type(node) != G_TYPE_BOOLEAN)
    return config_fail(config, key, "true or false", error);
  *out = json_node_get_boolean(node);
  return TRUE;
}

static const char *config_string(const ConfigFile *config, const char *key) {
  JsonNode *node = config_member(config, key);
  if (!node || !JSON_NODE_HOLDS_VALUE(node) || json_node_get_value_type(node) != G_TYPE_STRING)
    return NULL;
  return json_node_get_string(node);
}

/* A list of 1..CONFIG_MAX_BLOCKS positive integers; *n receives its length. */
static gboolean config_int_list(const ConfigFile *config, const char *key, int *values, int *n,
                                GError **error) {
  JsonNode *node = config_member(config, key);
  const char *expected = "a list of 1 to 8 positive integers";
  if (!node || !JSON_NODE_HOLDS_ARRAY(node)) return config_fail(config, key, expected, error);
  JsonArray *array = json_node_get_array(node);
  guint length = json_array_get_length(array);
  if (length == 0 || length > CONFIG_MAX_BLOCKS) return config_fail(config, key, expected, error);
  for (guint i = 0; i < length; i++) {
    JsonNode *element = json_array_get_element(array, i);
    if (!node_is_int(element) || !size_in_range(json_node_get_int(element), 1))
      return config_fail(config, key, expected, error);
    values[i] = (int)json_node_get_int(element);
  }
  *n = (int)length;
  return TRUE;
}

/* An integer applying to every block, or a per-block list of n_blocks. */
static gboolean config_per_block(const ConfigFile *config, const char *key, int n_blocks,
                                 int *values, GError **error) {
  JsonNode *node = config_member(config, key);
  if (node && node_is_int(node)) {
    if (!size_in_range(json_node_get_int(node), 1))
      return config_fail(config, key, "a positive integer or a list of them", error);
    for (int i = 0; i < n_blocks; i++) values[i] = (int)json_node_get_int(node);
    return TRUE;
  }
  int n = 0;
  if (!config_int_list(config, key, values, &n, error)) return FALSE;
  if (n != n_blocks) {
    char *expected = g_strdup_printf("an integer or a list of %d (one per block)", n_blocks);
    config_fail(config, key, expected, error);
    g_free(expected);
    return FALSE;
  }
  return TRUE;
}

/* Maps each block type name to TRUE (cross attention) or FALSE. */
static gboolean config_block_types(const ConfigFile *config, const char *key, int n_blocks,
                                   const char *cross_attn_type, const char *plain_type,
                                   gboolean *cross_attn, GError **error) {
  JsonNode *node = config_member(config, key);
  if (!node || !JSON_NODE_HOLDS_ARRAY(node) ||
      json_array_get_length(json_node_get_array(node)) != (guint)n_blocks) {
    char *expected = g_strdup_printf("a list of %d block types", n_blocks);
    config_fail(config, key, expected, error);
    g_free(expected);
    return FALSE;
  }
  JsonArray *array = json_node_get_array(node);
  for (int i = 0; i < n_blocks; i++) {
    JsonNode *element = json_array_get_element(array, (guint)i);
    const char *type =
        JSON_NODE_HOLDS_VALUE(element) && json_node_get_value_type(element) == G_TYPE_STRING
            ? json_node_get_string(element)
            : "";
    if (strcmp(type, cross_attn_type) == 0) {
      cross_attn[i] = TRUE;
    } else if (strcmp(type, plain_type) == 0) {
      cross_attn[i] = FALSE;
    } else {
      g_set_error(error, LCM_ERROR, LCM_ERROR_UNSUPPORTED,
                  "%s: %s[%d] is '%s'; only %s and %s are supported", config->path, key, i, type,
                  cross_attn_type, plain_type);
      return FALSE;
    }
  }
  return TRUE;
}

/* Fails unless `key` is absent, null or `expected`, the only kind supported. */
static gboolean config_expect_string(const ConfigFile *config, const char *key,
                                     const char *expected, GError **error) {
  const char *value = config_string(config, key);
  if (!value || strcmp(value, expected) == 0) return TRUE;
  g_set_error(error, LCM_ERROR, LCM_ERROR_UNSUPPORTED, "%s: %s '%s' is not supported (%s)",
              config->path, key, value, expected);
  return FALSE;
}

static gboolean config_expect_class(const ConfigFile *config, const char *expected,
                                    GError **error) {
  const char *class_name = config_string(config, "_class_name");
  if (!class_name || strcmp(class_name, expected) == 0) return TRUE;
  g_set_error(error, LCM_ERROR, LCM_ERROR_UNSUPPORTED, "%s: is a %s config, expected %s",
              config->path, class_name, expected);
  return FALSE;
}

/* ---- Reading --------------------------------------------------------------- */

static gboolean clip_config_parse(ConfigFile *config, ClipConfig *out, GError **error) {
  memset(out, 0, sizeof *out);
  /* a full CLIPConfig (text + vision) keeps the text part under text_config */
  JsonNode *text_config = json_object_get_member(config->root, "text_config");
  if (text_config && JSON_NODE_HOLDS_OBJECT(text_config))
    config->root = json_node_get_object(text_config);
  /* transformers' CLIPTextConfig defaults */
  if (!config_int(config, "vocab_size", 49408, 1, &out->vocab_size, error) ||
      !config_int(config, "hidden_size", 512, 1, &out->hidden_size, error) ||
      !config_int(config, "intermediate_size", 2048, 1, &out->intermediate_size, error) ||
      !config_int(config, "num_hidden_layers", 12, 1, &out->num_hidden_layers, error) ||
      !config_int(config, "num_attention_heads", 8, 1, &out->num_attention_heads, error) ||
      !config_int(config, "max_position_embeddings", 77, 1, &out->max_position_embeddings, error) ||
      !config_int(config, "eos_token_id", LCM_CLIP_EOS, 0, &out->eos_token_id, error) ||
      !config_int(config, "projection_dim", 512, 1, &out->projection_dim, error) ||
      !config_float(config, "layer_norm_eps", 1e-5f, &out->layer_norm_eps, error))
    return FALSE;
  const char *act = config_string(config, "hidden_act");
  if (!act || strcmp(act, "quick_gelu") == 0) {
    out->quick_gelu = TRUE;
  } else if (strcmp(act, "gelu") == 0) {
    out->quick_gelu = FALSE;
  } else {
    g_set_error(error, LCM_ERROR, LCM_ERROR_UNSUPPORTED,
                "%s: hidden_act '%s' is not supported (quick_gelu or gelu)", config->path, act);
    return FALSE;
  }
  if (out->hidden_size % out->num_attention_heads != 0) {
    g_set_error(error, LCM_ERROR, LCM_ERROR_FORMAT,
                "%s: hidden_size %d is not a multiple of num_attention_heads %d", config->path,
                out->hidden_size, out->num_attention_heads);
    return FALSE;
  }
  return TRUE;
}

/* One depth entry: an integer for every attention of the block, or a list
 * of `count` integers, one per attention. */
static gboolean depth_entry(JsonNode *node, int count, int *depths) {
  if (node_is_int(node)) {
    if (!size_in_range(json_node_get_int(node), 1)) return FALSE;
    for (int j = 0; j < count; j++) depths[j] = (int)json_node_get_int(node);
    return TRUE;
  }
  if (!JSON_NODE_HOLDS_ARRAY(node)) return FALSE;
  JsonArray *array = json_node_get_array(node);
  if (json_array_get_length(array) != (guint)count) return FALSE;
  for (int j = 0; j < count; j++) {
    JsonNode *element = json_array_get_element(array, (guint)j);
    if (!node_is_int(element) || !size_in_range(json_node_get_int(element), 1)) return FALSE;
    depths[j] = (int)json_node_get_int(element);
  }
  return TRUE;
}

/* transformer_layers_per_block: absent (1), an integer, or a list with one
 * entry per down block (an integer or a per-attention list). The up path
 * mirrors it unless reverse_transformer_layers_per_block (SSD-1B) gives one
 * per-attention list per up block; the mid block takes the last entry. */
static gboolean unet_config_depths(const ConfigFile *config, UNetConfig *out, GError **error) {
  int n = out->n_blocks, layers = out->layers_per_block;
  const char *key = "transformer_layers_per_block";
  JsonNode *node = config_member(config, key);
  JsonArray *list = node && JSON_NODE_HOLDS_ARRAY(node) ? json_node_get_array(node) : NULL;
  gboolean ok = !node || node_is_int(node) || (list && json_array_get_length(list) == (guint)n);
  for (int i = 0; ok && i < n; i++) {
    JsonNode *entry = list ? json_array_get_element(list, (guint)i) : node;
    if (entry)
      ok = depth_entry(entry, layers, out->down_depth[i]);
    else
      for (int j = 0; j < layers; j++) out->down_depth[i][j] = 1;
  }
  if (!ok) {
    char *expected = g_strdup_printf(
        "an integer or a list of %d (one per down block), each an integer or a list of %d", n,
        layers);
    config_fail(config, key, expected, error);
    g_free(expected);
    return FALSE;
  }
  out->mid_depth = out->down_depth[n - 1][0];

  const char *reverse_key = "reverse_transformer_layers_per_block";
  JsonNode *reverse = config_member(config, reverse_key);
  JsonArray *reverse_list =
      reverse && JSON_NODE_HOLDS_ARRAY(reverse) ? json_node_get_array(reverse) : NULL;
  ok = !reverse || (reverse_list && json_array_get_length(reverse_list) == (guint)n);
  for (int i = 0; ok && i < n; i++) {
    if (reverse_list) {
      JsonNode *entry = json_array_get_element(reverse_list, (guint)i);
      ok = JSON_NODE_HOLDS_ARRAY(entry) && depth_entry(entry, layers + 1, out->up_depth[i]);
    } else {
      /* diffusers repeats a mirrored down entry only when it is an integer */
      JsonNode *entry = list ? json_array_get_element(list, (guint)(n - 1 - i)) : NULL;
      if (entry && !node_is_int(entry)) {
        g_set_error(error, LCM_ERROR, LCM_ERROR_FORMAT,
                    "%s: '%s' has per-attention lists, so '%s' must give the up blocks' depths",
                    config->path, key, reverse_key);
        return FALSE;
      }
      for (int j = 0; j <= layers; j++) out->up_depth[i][j] = out->down_depth[n - 1 - i][0];
    }
  }
  if (!ok) {
    char *expected =
        g_strdup_printf("a list of %d lists (one per up block) of %d integers", n, layers + 1);
    config_fail(config, reverse_key, expected, error);
    g_free(expected);
    return FALSE;
  }
  /* blocks without attention have depth 0, as inferred from shapes */
  for (int i = 0; i < n; i++) {
    if (!out->down_cross_attn[i]) memset(out->down_depth[i], 0, sizeof out->down_depth[i]);
    if (!out->up_cross_attn[i]) memset(out->up_depth[i], 0, sizeof out->up_depth[i]);
  }
  if (!out->mid_cross_attn) out->mid_depth = 0;
  return TRUE;
}

/* addition_embed_type: none (SD1.5) or "text_time" (SDXL), whose sizes
 * must then be given. */
static gboolean unet_config_addition(const ConfigFile *config, UNetConfig *out, GError **error) {
  const char *addition = config_string(config, "addition_embed_type");
  if (!addition) return TRUE;
  if (strcmp(addition, "text_time") != 0) {
    g_set_error(error, LCM_ERROR, LCM_ERROR_UNSUPPORTED,
                "%s: addition_embed_type '%s' is not supported (only SDXL's text_time)",
                config->path, addition);
    return FALSE;
  }
  if (!config_int(config, "addition_time_embed_dim", 0, 1, &out->addition_time_embed_dim, error) ||
      !config_int(config, "projection_class_embeddings_input_dim", 0, 1,
                  &out->projection_class_embeddings_input_dim, error))
    return FALSE;
  if (out->addition_time_embed_dim == 0 ||
      out->projection_class_embeddings_input_dim <= LCM_TIME_IDS * out->addition_time_embed_dim) {
    g_set_error(error, LCM_ERROR, LCM_ERROR_FORMAT,
                "%s: addition_embed_type text_time needs addition_time_embed_dim and a larger "
                "projection_class_embeddings_input_dim (the pooled text width + %d x the former)",
                config->path, LCM_TIME_IDS);
    return FALSE;
  }
  return TRUE;
}

static gboolean unet_config_parse(const ConfigFile *config, UNetConfig *out, GError **error) {
  memset(out, 0, sizeof *out);
  if (!config_expect_class(config, "UNet2DConditionModel", error)) return FALSE;
  if (config_member(config, "class_embed_type")) {
    g_set_error(error, LCM_ERROR, LCM_ERROR_UNSUPPORTED,
                "%s: class-conditioned UNets (class_embed_type) are not supported", config->path);
    return FALSE;
  }
  const char *mid_type = config_string(config, "mid_block_type");
  out->mid_cross_attn = !mid_type || strcmp(mid_type, "UNetMidBlock2DCrossAttn") == 0;
  if (!out->mid_cross_attn &&
      !config_expect_string(config, "mid_block_type", "UNetMidBlock2D", error))
    return FALSE;
  if (!config_expect_string(config, "time_embedding_type", "positional", error) ||
      !config_int_list(config, "block_out_channels", out->block_out_channels, &out->n_blocks,
                       error) ||
      !config_block_types(config, "down_block_types", out->n_blocks, "CrossAttnDownBlock2D",
                          "DownBlock2D", out->down_cross_attn, error) ||
      !config_block_types(config, "up_block_types", out->n_blocks, "CrossAttnUpBlock2D",
                          "UpBlock2D", out->up_cross_attn, error) ||
      !config_int(config, "in_channels", 4, 1, &out->in_channels, error) ||
      !config_int(config, "out_channels", 4, 1, &out->out_channels, error) ||
      !config_int(config, "layers_per_block", 2, 1, &out->layers_per_block, error) ||
      !config_int(config, "cross_attention_dim", 1280, 1, &out->cross_attention_dim, error) ||
      !config_int(config, "norm_num_groups", 32, 1, &out->norm_num_groups, error) ||
      !config_float(config, "norm_eps", 1e-5f, &out->norm_eps, error) ||
      !config_int(config, "time_cond_proj_dim", 0, 0, &out->time_cond_proj_dim, error) ||
      !config_bool(config, "use_linear_projection", FALSE, &out->use_linear_projection, error) ||
      !config_bool(config, "flip_sin_to_cos", TRUE, &out->flip_sin_to_cos, error) ||
      !config_float(config, "freq_shift", 0.0f, &out->freq_shift, error) ||
      !config_int(config, "sample_size", 64, 1, &out->sample_size, error) ||
      !unet_config_addition(config, out, error))
    return FALSE;
  if (out->layers_per_block > CONFIG_MAX_LAYERS) {
    char *expected = g_strdup_printf("at most %d", CONFIG_MAX_LAYERS);
    config_fail(config, "layers_per_block", expected, error);
    g_free(expected);
    return FALSE;
  }
  if (!unet_config_depths(config, out, error)) return FALSE;
  /* diffusers' historic misnomer: in SD1.5 configs attention_head_dim is the
   * number of heads; num_attention_heads, when set, is the real thing. */
  const char *heads_key =
      config_member(config, "num_attention_heads") ? "num_attention_heads" : "attention_head_dim";
  if (!config_member(config, heads_key)) {
    for (int i = 0; i < out->n_blocks; i++) out->heads[i] = 8;
  } else if (!config_per_block(config, heads_key, out->n_blocks, out->heads, error)) {
    return FALSE;
  }
  return TRUE;
}

static gboolean vae_config_parse(const ConfigFile *config, VaeConfig *out, GError **error) {
  memset(out, 0, sizeof *out);
  return config_expect_class(config, "AutoencoderKL", error) &&
         config_int_list(config, "block_out_channels", out->block_out_channels, &out->n_blocks,
                         error) &&
         config_int(config, "in_channels", 3, 1, &out->in_channels, error) &&
         config_int(config, "out_channels", 3, 1, &out->out_channels, error) &&
         config_int(config, "latent_channels", 4, 1, &out->latent_channels, error) &&
         config_int(config, "layers_per_block", 1, 1, &out->layers_per_block, error) &&
         config_int(config, "norm_num_groups", 32, 1, &out->norm_num_groups, error) &&
         config_float(config, "scaling_factor", 0.18215f, &out->scaling_factor, error) &&
         config_bool(config, "mid_block_add_attention", TRUE, &out->mid_block_add_attention,
                     error) &&
         config_bool(config, "use_quant_conv", TRUE, &out->use_quant_conv, error) &&
         config_bool(config, "use_post_quant_conv", TRUE, &out->use_post_quant_conv, error);
}

/* Each network's config from a file (json NULL) or from text. */

gboolean clip_config_read(const char *path, ClipConfig *out, GError **error) {
  g_auto(ConfigFile) config = {0};
  return config_open(&config, path, NULL, error) && clip_config_parse(&config, out, error);
}

gboolean clip_config_from_json(const char *json, const char *source, ClipConfig *out,
                               GError **error) {
  g_auto(ConfigFile) config = {0};
  return config_open(&config, source, json, error) && clip_config_parse(&config, out, error);
}

gboolean unet_config_read(const char *path, UNetConfig *out, GError **error) {
  g_auto(ConfigFile) config = {0};
  return config_open(&config, path, NULL, error) && unet_config_parse(&config, out, error);
}

gboolean unet_config_from_json(const char *json, const char *source, UNetConfig *out,
                               GError **error) {
  g_auto(ConfigFile) config = {0};
  return config_open(&config, source, json, error) && unet_config_parse(&config, out, error);
}

gboolean vae_config_read(const char *path, VaeConfig *out, GError **error) {
  g_auto(ConfigFile) config = {0};
  return config_open(&config, path, NULL, error) && vae_config_parse(&config, out, error);
}

gboolean vae_config_from_json(const char *json, const char *source, VaeConfig *out,
                              GError **error) {
  g_auto(ConfigFile) config = {0};
  return config_open(&config, source, json, error) && vae_config_parse(&config, out, error);
}

/* ---- Inference from shapes ------------------------------------------------- */

/* The shape of tensor `name`, or a MISSING error. */
static gboolean shape_of(const Weights *w, const char *name, int *ndims, int64_t *shape,
                         GError **error) {
  if (weights_shape(w, name, ndims, shape)) return TRUE;
  g_set_error(error, LCM_ERROR, LCM_ERROR_MISSING,
              "%s: tensor '%s' is missing, so the network's configuration cannot be inferred",
              weights_path(w), name);
  return FALSE;
}

/* Dimension `dim` of tensor `name`, checked to be a sane size. */
static gboolean shape_dim(const Weights *w, const char *name, int dim, int *out, GError **error) {
  int ndims;
  int64_t shape[ST_MAX_DIMS];
  if (!shape_of(w, name, &ndims, shape, error)) return FALSE;
  if (dim >= ndims || shape[dim] <= 0 || shape[dim] > CONFIG_MAX_SIZE) {
    g_set_error(error, LCM_ERROR, LCM_ERROR_SHAPE,
                "%s: tensor '%s' has %d dims, or an absurd size in dim %d", weights_path(w), name,
                ndims, dim);
    return FALSE;
  }
  *out = (int)shape[dim];
  return TRUE;
}

static gboolean has_tensor(const Weights *w, const char *format, ...) G_GNUC_PRINTF(2, 3);

static gboolean has_tensor(const Weights *w, const char *format, ...) {
  va_list args;
  va_start(args, format);
  char *name = g_strdup_vprintf(format, args);
  va_end(args);
  gboolean found = weights_contains(w, name);
  g_free(name);
  return found;
}

/* How many consecutive `prefix.{i}.suffix` tensors exist, from i = 0. */
static int count_indexed(const Weights *w, const char *prefix, const char *suffix) {
  int n = 0;
  while (n < 1000 && has_tensor(w, "%s.%d.%s", prefix, n, suffix)) n++;
  return n;
}

/* block_out_channels from the first resnet of each level of `blocks`. */
static gboolean infer_levels(const Weights *w, const char *blocks, int *channels, int *n_blocks,
                             GError **error) {
  int n = count_indexed(w, blocks, "resnets.0.conv1.weight");
  if (n == 0 || n > CONFIG_MAX_BLOCKS) {
    g_set_error(error, LCM_ERROR, LCM_ERROR_MISSING,
                "%s: found %d levels of '%s.N.resnets.0.conv1.weight' (expected 1 to %d)",
                weights_path(w), n, blocks, CONFIG_MAX_BLOCKS);
    return FALSE;
  }
  gboolean ok = TRUE;
  for (int i = 0; i < n && ok; i++) {
    char *name = g_strdup_printf("%s.%d.resnets.0.conv1.weight", blocks, i);
    ok = shape_dim(w, name, 0, &channels[i], error);
    g_free(name);
  }
  *n_blocks = n;
  return ok;
}

/* Transformer depth of the attention module `prefix` ("...attentions.j"),
 * 0 when the block has none. */
static int transformer_depth(const Weights *w, const char *prefix) {
  char *blocks = g_strconcat(prefix, ".transformer_blocks", NULL);
  int depth = count_indexed(w, blocks, "attn1.to_q.weight");
  g_free(blocks);
  return depth;
}

/* Cross-attention width and projection kind from one transformer
 * (`prefix` = "...attentions.0"). */
static gboolean infer_transformer(const Weights *w, const char *prefix, UNetConfig *out,
                                  GError **error) {
  char *to_k = g_strconcat(prefix, ".transformer_blocks.0.attn2.to_k.weight", NULL);
  char *proj_in = g_strconcat(prefix, ".proj_in.weight", NULL);
  int ndims;
  int64_t shape[ST_MAX_DIMS];
  gboolean ok = shape_dim(w, to_k, 1, &out->cross_attention_dim, error) &&
                shape_of(w, proj_in, &ndims, shape, error);
  if (ok) out->use_linear_projection = ndims == 2; /* Linear, else 1x1 conv */
  g_free(to_k);
  g_free(proj_in);
  return ok;
}

/* Every attention module's depth, and the widths of one of them. */
static gboolean infer_attentions(const Weights *w, UNetConfig *out, GError **error) {
  char prefix[128], first[128] = "";
  out->mid_depth = transformer_depth(w, "mid_block.attentions.0");
  out->mid_cross_attn = out->mid_depth > 0;
  if (out->mid_cross_attn) g_strlcpy(first, "mid_block.attentions.0", sizeof first);
  for (int i = 0; i < out->n_blocks; i++) {
    for (int j = 0; j <= out->layers_per_block; j++) {
      if (j < out->layers_per_block) {
        g_snprintf(prefix, sizeof prefix, "down_blocks.%d.attentions.%d", i, j);
        out->down_depth[i][j] = transformer_depth(w, prefix);
        if (!first[0] && out->down_depth[i][j]) g_strlcpy(first, prefix, sizeof first);
      }
      g_snprintf(prefix, sizeof prefix, "up_blocks.%d.attentions.%d", i, j);
      out->up_depth[i][j] = transformer_depth(w, prefix);
    }
    out->down_cross_attn[i] = out->down_depth[i][0] > 0;
    out->up_cross_attn[i] = out->up_depth[i][0] > 0;
  }
  if (!first[0]) {
    g_set_error(error, LCM_ERROR, LCM_ERROR_MISSING,
                "%s: the UNet has no attention modules, so its text width cannot be inferred",
                weights_path(w));
    return FALSE;
  }
  return infer_transformer(w, first, out, error);
}

/* SDXL's added conditioning: add_embedding's input width; the time-id
 * sinusoid width is SDXL's 256 (shapes alone cannot split the width). */
static gboolean infer_addition(const Weights *w, UNetConfig *out, GError **error) {
  const char *linear_1 = "add_embedding.linear_1.weight";
  if (!weights_contains(w, linear_1)) return TRUE;
  if (!shape_dim(w, linear_1, 1, &out->projection_class_embeddings_input_dim, error)) return FALSE;
  out->addition_time_embed_dim = 256;
  if (out->projection_class_embeddings_input_dim <= LCM_TIME_IDS * out->addition_time_embed_dim) {
    g_set_error(error, LCM_ERROR, LCM_ERROR_UNSUPPORTED,
                "%s: add_embedding takes %d values, too few for SDXL's size conditioning "
                "(%d x 256 + the pooled text width); pass the UNet's diffusers config.json",
                weights_path(w), out->projection_class_embeddings_input_dim, LCM_TIME_IDS);
    return FALSE;
  }
  return TRUE;
}

gboolean unet_config_infer(const Weights *w, UNetConfig *out, GError **error) {
  memset(out, 0, sizeof *out);
  if (!shape_dim(w, "conv_in.weight", 1, &out->in_channels, error) ||
      !shape_dim(w, "conv_out.weight", 0, &out->out_channels, error) ||
      !infer_levels(w, "down_blocks", out->block_out_channels, &out->n_blocks, error))
    return FALSE;
  out->layers_per_block = count_indexed(w, "down_blocks.0.resnets", "conv1.weight");
  if (out->layers_per_block < 1 || out->layers_per_block > CONFIG_MAX_LAYERS) {
    g_set_error(error, LCM_ERROR, LCM_ERROR_UNSUPPORTED,
                "%s: the UNet has %d resnets per level (1 to %d are supported)", weights_path(w),
                out->layers_per_block, CONFIG_MAX_LAYERS);
    return FALSE;
  }
  if (!infer_attentions(w, out, error) || !infer_addition(w, out, error)) return FALSE;
  for (int i = 0; i < out->n_blocks; i++) {
    /* SD1.5-family UNets have 8 heads per level, SDXL's are 64 wide; shapes
     * cannot tell the head count */
    out->heads[i] = out->addition_time_embed_dim ? MAX(out->block_out_channels[i] / 64, 1) : 8;
  }
  out->time_cond_proj_dim = 0;
  if (weights_contains(w, "time_embedding.cond_proj.weight") &&
      !shape_dim(w, "time_embedding.cond_proj.weight", 1, &out->time_cond_proj_dim, error))
    return FALSE;
  out->norm_num_groups = 32;
  out->norm_eps = 1e-5f;
  out->flip_sin_to_cos = TRUE;
  out->freq_shift = 0.0f;
  out->sample_size = out->addition_time_embed_dim ? 128 : 64;
  return TRUE;
}

gboolean vae_config_infer(const Weights *w, VaeConfig *out, GError **error) {
  memset(out, 0, sizeof *out);
  if (!shape_dim(w, "encoder.conv_in.weight", 1, &out->in_channels, error) ||
      !shape_dim(w, "decoder.conv_out.weight", 0, &out->out_channels, error) ||
      !shape_dim(w, "decoder.conv_in.weight", 1, &out->latent_channels, error) ||
      !infer_levels(w, "encoder.down_blocks", out->block_out_channels, &out->n_blocks, error))
    return FALSE;
  out->layers_per_block = count_indexed(w, "encoder.down_blocks.0.resnets", "conv1.weight");
  out->norm_num_groups = 32;
  out->scaling_factor = 0.18215f;
  out->mid_block_add_attention = weights_contains(w, "decoder.mid_block.attentions.0.to_q.weight");
  out->use_quant_conv = weights_contains(w, "quant_conv.weight");
  out->use_post_quant_conv = weights_contains(w, "post_quant_conv.weight");
  return TRUE;
}

gboolean clip_config_infer(const Weights *w, ClipConfig *out, GError **error) {
  memset(out, 0, sizeof *out);
  const char *token_embedding = "text_model.embeddings.token_embedding.weight";
  if (!shape_dim(w, token_embedding, 0, &out->vocab_size, error) ||
      !shape_dim(w, token_embedding, 1, &out->hidden_size, error) ||
      !shape_dim(w, "text_model.embeddings.position_embedding.weight", 0,
                 &out->max_position_embeddings, error) ||
      !shape_dim(w, "text_model.encoder.layers.0.mlp.fc1.weight", 0, &out->intermediate_size,
                 error))
    return FALSE;
  out->num_hidden_layers = count_indexed(w, "text_model.encoder.layers", "self_attn.q_proj.weight");
  out->layer_norm_eps = 1e-5f;
  /* OpenAI CLIP ViT-L/14 (SD1.5, SDXL's first encoder) uses quick_gelu; the
   * one with a projection is SDXL's OpenCLIP ViT-bigG, with exact gelu */
  out->quick_gelu = !weights_contains(w, "text_projection.weight");
  if (!out->quick_gelu && !shape_dim(w, "text_projection.weight", 0, &out->projection_dim, error))
    return FALSE;
  out->eos_token_id = 2; /* as the configs shipped with SD and SDXL say */
  /* CLIP's heads are 64 wide; other widths need the real config */
  if (out->hidden_size % 64 != 0) {
    g_set_error(error, LCM_ERROR, LCM_ERROR_UNSUPPORTED,
                "%s: the text encoder is %d wide, not a multiple of 64, so its number of "
                "attention heads cannot be inferred; pass its transformers config.json as the "
                "text-encoder config",
                weights_path(w), out->hidden_size);
    return FALSE;
  }
  out->num_attention_heads = out->hidden_size / 64;
  return TRUE;
}
