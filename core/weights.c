/* Weights of one network by diffusers name, from a diffusers file or mapped
 * from the LDM / A1111 names of a single-file checkpoint. */
#include "weights.h"

#include "lcm.h"

#include <oneapi/dnnl/dnnl.h>
#include <string.h>
#include <sys/stat.h>

/* How a checkpoint tensor becomes its diffusers tensor(s). */
typedef enum {
  MAP_AS_IS,
  /* VAE attention q/k/v/proj_out: stored as 1x1 conv [C,C,1,1], used as
   * Linear [C,C]. The data is the same; only the shape differs. */
  MAP_SQUEEZE_1X1,
  /* OpenCLIP's text_projection, [hidden, proj] used as x @ P: transposed
   * into transformers' Linear weight [proj, hidden]. */
  MAP_TRANSPOSE,
  /* OpenCLIP's in_proj_weight / in_proj_bias: q, k and v stacked along dim
   * 0; the mapped name is the attention's prefix, and each third becomes
   * its q_proj / k_proj / v_proj tensor. */
  MAP_SPLIT_QKV,
} MapKind;

typedef struct {
  const StTensor *tensor;
  gboolean squeeze_1x1, transpose;
  /* rows [row_offset, row_offset + rows) of dim 0 (MAP_SPLIT_QKV); rows 0:
   * the whole tensor */
  int64_t row_offset, rows;
  GArray *updates; /* WeightUpdate, merged in order by weights_get; NULL: none */
} WeightEntry;

struct Weights {
  char *path;
  StFile *owned_file;    /* the diffusers file; NULL for a checkpoint view */
  const char *network;   /* for messages: NULL, or "UNet" etc. in a checkpoint */
  GHashTable *entries;   /* diffusers name (owned) -> WeightEntry* (owned) */
  GHashTable *requested; /* set of names (owned by `entries`) fetched so far */
};

const char *component_name(Component component) {
  switch (component) {
  case COMPONENT_UNET:
    return "UNet";
  case COMPONENT_VAE:
    return "VAE";
  case COMPONENT_TEXT_ENCODER:
    return "text encoder";
  default:
    return "second text encoder";
  }
}

/* ---- LDM -> diffusers name mapping ----------------------------------------- */

/* File-wide facts the index arithmetic of the LDM layout depends on. */
typedef struct {
  int unet_layers_per_block; /* resnets per UNet down level */
  int vae_levels;            /* number of VAE decoder levels */
} LdmLayout;

/* Advances *p past `prefix` if it starts with it. */
static gboolean take_prefix(const char **p, const char *prefix) {
  size_t n = strlen(prefix);
  if (strncmp(*p, prefix, n) != 0) return FALSE;
  *p += n;
  return TRUE;
}

/* Reads "<digits>." (a module index), advancing *p. */
static gboolean take_index(const char **p, int *index) {
  const char *s = *p;
  int value = 0, digits = 0;
  while (*s >= '0' && *s <= '9' && digits < 6) value = value * 10 + (*s++ - '0'), digits++;
  if (digits == 0 || *s != '.') return FALSE;
  *index = value;
  *p = s + 1;
  return TRUE;
}

/* Renames the head of `rest` by the first matching {from, to} pair and
 * prepends `prefix` (freed here); NULL when nothing matches. */
static char *rename_under(char *prefix, const char *rest, const char *const (*renames)[2],
                          size_t n_renames) {
  char *result = NULL;
  for (size_t i = 0; i < n_renames && !result; i++) {
    const char *tail = rest;
    if (take_prefix(&tail, renames[i][0])) result = g_strconcat(prefix, renames[i][1], tail, NULL);
  }
  g_free(prefix);
  return result;
}

static const char *const unet_resnet_renames[][2] = {
    {"in_layers.0.", "norm1."},          {"in_layers.2.", "conv1."},
    {"emb_layers.1.", "time_emb_proj."}, {"out_layers.0.", "norm2."},
    {"out_layers.3.", "conv2."},         {"skip_connection.", "conv_shortcut."},
};

static char *unet_resnet(char *prefix, const char *rest) {
  return rename_under(prefix, rest, unet_resnet_renames, G_N_ELEMENTS(unet_resnet_renames));
}

/* Modules that keep their inner names (transformers, convs) under a new
 * parent path. */
static char *under(char *prefix, const char *rest) {
  char *result = g_strconcat(prefix, rest, NULL);
  g_free(prefix);
  return result;
}

static const char *const unet_top_renames[][2] = {
    {"time_embed.0.", "time_embedding.linear_1."},
    {"time_embed.2.", "time_embedding.linear_2."},
    /* SDXL's pooled-text and size conditioning */
    {"label_emb.0.0.", "add_embedding.linear_1."},
    {"label_emb.0.2.", "add_embedding.linear_2."},
    /* LCM's guidance projection has no LDM name; converters keep diffusers' */
    {"time_embedding.cond_proj.", "time_embedding.cond_proj."},
    {"out.0.", "conv_norm_out."},
    {"out.2.", "conv_out."},
    {"input_blocks.0.0.", "conv_in."},
};

/* input_blocks.{(L+1)i+j+1}: resnet j / attention j of down level i, or its
 * downsampler when j == L; output_blocks.{(L+1)i+j}: the same for up level
 * i with L+1 resnets, the upsampler following the last one. */
static char *map_unet_key(const char *key, const LdmLayout *layout) {
  const char *p = key;
  if (!take_prefix(&p, "model.diffusion_model.")) return NULL;
  char *top = rename_under(g_strdup(""), p, unet_top_renames, G_N_ELEMENTS(unet_top_renames));
  if (top) return top;

  const int layers = layout->unet_layers_per_block, per_level = layers + 1;
  int block, part;
  if (take_prefix(&p, "input_blocks.") && take_index(&p, &block) && take_index(&p, &part)) {
    if (block == 0) return NULL;
    int level = (block - 1) / per_level, j = (block - 1) % per_level;
    if (j < layers && part == 0)
      return unet_resnet(g_strdup_printf("down_blocks.%d.resnets.%d.", level, j), p);
    if (j < layers && part == 1)
      return under(g_strdup_printf("down_blocks.%d.attentions.%d.", level, j), p);
    if (j == layers && part == 0 && take_prefix(&p, "op."))
      return under(g_strdup_printf("down_blocks.%d.downsamplers.0.conv.", level), p);
    return NULL;
  }
  if (take_prefix(&p, "middle_block.") && take_index(&p, &part)) {
    if (part == 0) return unet_resnet(g_strdup("mid_block.resnets.0."), p);
    if (part == 1) return under(g_strdup("mid_block.attentions.0."), p);
    if (part == 2) return unet_resnet(g_strdup("mid_block.resnets.1."), p);
    return NULL;
  }
  if (take_prefix(&p, "output_blocks.") && take_index(&p, &block) && take_index(&p, &part)) {
    int level = block / per_level, j = block % per_level;
    if (part == 0) return unet_resnet(g_strdup_printf("up_blocks.%d.resnets.%d.", level, j), p);
    if ((part == 1 || part == 2) && take_prefix(&p, "conv."))
      return under(g_strdup_printf("up_blocks.%d.upsamplers.0.conv.", level), p);
    if (part == 1) return under(g_strdup_printf("up_blocks.%d.attentions.%d.", level, j), p);
    return NULL;
  }
  return NULL;
}

char *weights_unet_diffusers_name(const char *ldm_name, int layers_per_block) {
  const LdmLayout layout = {.unet_layers_per_block = layers_per_block};
  return map_unet_key(ldm_name, &layout);
}

static const char *const vae_resnet_renames[][2] = {
    {"norm1.", "norm1."},
    {"conv1.", "conv1."},
    {"norm2.", "norm2."},
    {"conv2.", "conv2."},
    {"nin_shortcut.", "conv_shortcut."},
};

static const char *const vae_attention_renames[][2] = {
    {"norm.", "group_norm."},   {"q.", "to_q."}, {"k.", "to_k."}, {"v.", "to_v."},
    {"proj_out.", "to_out.0."},
};

static char *vae_resnet(char *prefix, const char *rest) {
  return rename_under(prefix, rest, vae_resnet_renames, G_N_ELEMENTS(vae_resnet_renames));
}

static const char *const vae_coder_renames[][2] = {
    {"conv_in.", "conv_in."},
    {"conv_out.", "conv_out."},
    {"norm_out.", "conv_norm_out."},
};

/* encoder.down.i ↔ encoder.down_blocks.i, but decoder.up.i ↔
 * decoder.up_blocks.{n-1-i}: LDM numbers decoder levels by resolution. */
static char *map_vae_key(const char *key, const LdmLayout *layout, MapKind *kind) {
  const char *p = key;
  if (!take_prefix(&p, "first_stage_model.")) return NULL;
  if (g_str_has_prefix(p, "quant_conv.") || g_str_has_prefix(p, "post_quant_conv."))
    return g_strdup(p);
  const char *coder = take_prefix(&p, "encoder.")   ? "encoder."
                      : take_prefix(&p, "decoder.") ? "decoder."
                                                    : NULL;
  if (!coder) return NULL;
  char *top = rename_under(g_strdup(coder), p, vae_coder_renames, G_N_ELEMENTS(vae_coder_renames));
  if (top) return top;

  if (take_prefix(&p, "mid.block_1."))
    return vae_resnet(g_strconcat(coder, "mid_block.resnets.0.", NULL), p);
  if (take_prefix(&p, "mid.block_2."))
    return vae_resnet(g_strconcat(coder, "mid_block.resnets.1.", NULL), p);
  if (take_prefix(&p, "mid.attn_1.")) {
    if (g_str_has_suffix(p, ".weight") && !g_str_has_prefix(p, "norm.")) *kind = MAP_SQUEEZE_1X1;
    return rename_under(g_strconcat(coder, "mid_block.attentions.0.", NULL), p,
                        vae_attention_renames, G_N_ELEMENTS(vae_attention_renames));
  }

  gboolean encoder = coder[0] == 'e';
  int level, j;
  if (!take_prefix(&p, encoder ? "down." : "up.") || !take_index(&p, &level)) return NULL;
  if (!encoder) level = layout->vae_levels - 1 - level;
  if (level < 0) return NULL;
  const char *blocks = encoder ? "down_blocks" : "up_blocks";
  if (take_prefix(&p, "block.") && take_index(&p, &j))
    return vae_resnet(g_strdup_printf("%s%s.%d.resnets.%d.", coder, blocks, level, j), p);
  if (take_prefix(&p, encoder ? "downsample.conv." : "upsample.conv."))
    return under(g_strdup_printf("%s%s.%d.%s.0.conv.", coder, blocks, level,
                                 encoder ? "downsamplers" : "upsamplers"),
                 p);
  return NULL;
}

/* transformers' CLIPTextModel under SD1.5's FrozenCLIPEmbedder or as
 * SDXL's first embedder; very old transformers versions had no
 * `text_model.` level. */
static char *map_text_encoder_key(const char *key) {
  const char *p = key;
  if (!take_prefix(&p, "cond_stage_model.transformer.") &&
      !take_prefix(&p, "conditioner.embedders.0.transformer."))
    return NULL;
  take_prefix(&p, "text_model.");
  return g_strconcat("text_model.", p, NULL);
}

static const char *const open_clip_top_renames[][2] = {
    {"token_embedding.", "text_model.embeddings.token_embedding."},
    {"positional_embedding", "text_model.embeddings.position_embedding.weight"},
    {"ln_final.", "text_model.final_layer_norm."},
};

static const char *const open_clip_layer_renames[][2] = {
    {"ln_1.", "layer_norm1."},
    {"ln_2.", "layer_norm2."},
    {"attn.out_proj.", "self_attn.out_proj."},
    {"mlp.c_fc.", "mlp.fc1."},
    {"mlp.c_proj.", "mlp.fc2."},
};

/* SDXL's second text encoder in OpenCLIP names (the SGM conditioner's
 * embedder 1) -> transformers' CLIPTextModelWithProjection. */
static char *map_open_clip_key(const char *key, MapKind *kind) {
  const char *p = key;
  if (!take_prefix(&p, "conditioner.embedders.1.model.")) return NULL;
  if (strcmp(p, "text_projection") == 0) {
    *kind = MAP_TRANSPOSE;
    return g_strdup("text_projection.weight");
  }
  char *top =
      rename_under(g_strdup(""), p, open_clip_top_renames, G_N_ELEMENTS(open_clip_top_renames));
  if (top) return top;
  int layer;
  if (!take_prefix(&p, "transformer.resblocks.") || !take_index(&p, &layer)) return NULL;
  char *prefix = g_strdup_printf("text_model.encoder.layers.%d.", layer);
  if (strcmp(p, "attn.in_proj_weight") == 0 || strcmp(p, "attn.in_proj_bias") == 0) {
    *kind = MAP_SPLIT_QKV;
    return under(prefix, p + strlen("attn.in_proj_"));
  }
  return rename_under(prefix, p, open_clip_layer_renames, G_N_ELEMENTS(open_clip_layer_renames));
}

static char *map_checkpoint_key(Component component, const char *key, const LdmLayout *layout,
                                MapKind *kind) {
  *kind = MAP_AS_IS;
  switch (component) {
  case COMPONENT_UNET:
    return map_unet_key(key, layout);
  case COMPONENT_VAE:
    return map_vae_key(key, layout, kind);
  case COMPONENT_TEXT_ENCODER:
    return map_text_encoder_key(key);
  default:
    return map_open_clip_key(key, kind);
  }
}

static LdmLayout ldm_layout(const StFile *checkpoint) {
  LdmLayout layout = {.unet_layers_per_block = -1, .vae_levels = 0};
  int max_input_block = 0;
  for (guint i = 0; i < st_count(checkpoint); i++) {
    const char *p = st_tensor_at(checkpoint, i)->name;
    int index;
    if (take_prefix(&p, "model.diffusion_model.input_blocks.") && take_index(&p, &index)) {
      max_input_block = MAX(max_input_block, index);
      /* the first downsampler follows the first level's resnets */
      if (g_str_has_prefix(p, "0.op.") &&
          (layout.unet_layers_per_block < 0 || index - 1 < layout.unet_layers_per_block))
        layout.unet_layers_per_block = index - 1;
    } else if (take_prefix(&p, "first_stage_model.decoder.up.") && take_index(&p, &index)) {
      layout.vae_levels = MAX(layout.vae_levels, index + 1);
    }
  }
  /* a single-level UNet has no downsampler: all its input blocks are resnets */
  if (layout.unet_layers_per_block < 0) layout.unet_layers_per_block = max_input_block;
  return layout;
}

/* ---- Weights --------------------------------------------------------------- */

static void entry_free(gpointer p) {
  WeightEntry *entry = p;
  if (entry->updates) g_array_unref(entry->updates);
  g_free(entry);
}

static Weights *weights_new(const char *path) {
  Weights *weights = g_new0(Weights, 1);
  weights->path = g_strdup(path);
  weights->entries = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, entry_free);
  weights->requested = g_hash_table_new(g_str_hash, g_str_equal);
  return weights;
}

void weights_free(Weights *weights) {
  if (!weights) return;
  g_hash_table_unref(weights->requested);
  g_hash_table_unref(weights->entries);
  st_close(weights->owned_file);
  g_free(weights->path);
  g_free(weights);
}

/* Takes ownership of `name`; `entry` is copied. */
static gboolean weights_add_entry(Weights *weights, char *name, const WeightEntry *entry,
                                  GError **error) {
  WeightEntry *existing = g_hash_table_lookup(weights->entries, name);
  if (existing) {
    g_set_error(error, LCM_ERROR, LCM_ERROR_FORMAT, "%s: tensors '%s' and '%s' both map to '%s'",
                weights->path, existing->tensor->name, entry->tensor->name, name);
    g_free(name);
    return FALSE;
  }
  g_hash_table_insert(weights->entries, name, g_memdup2(entry, sizeof *entry));
  return TRUE;
}

/* Adds the diffusers tensor(s) `name` (owned) that `tensor` maps to. */
static gboolean weights_add(Weights *weights, char *name, const StTensor *tensor, MapKind kind,
                            GError **error) {
  WeightEntry entry = {.tensor = tensor};
  switch (kind) {
  case MAP_SQUEEZE_1X1:
    entry.squeeze_1x1 = tensor->ndims == 4 && tensor->shape[2] == 1 && tensor->shape[3] == 1;
    break;
  case MAP_TRANSPOSE:
    entry.transpose = tensor->ndims == 2;
    break;
  case MAP_SPLIT_QKV: {
    /* name is "PREFIX.weight" or "PREFIX.bias" */
    const char *suffix = strrchr(name, '.');
    if (!suffix || tensor->ndims < 1 || tensor->shape[0] % 3 != 0) {
      g_set_error(error, LCM_ERROR, LCM_ERROR_SHAPE,
                  "%s: tensor '%s' should stack q, k and v along its first dimension, but its "
                  "shape does not divide by 3",
                  weights->path, tensor->name);
      g_free(name);
      return FALSE;
    }
    static const char *const parts[] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"};
    gboolean ok = TRUE;
    entry.rows = tensor->shape[0] / 3;
    for (int i = 0; i < 3 && ok; i++) {
      entry.row_offset = i * entry.rows;
      char *part = g_strdup_printf("%.*s.%s%s", (int)(suffix - name), name, parts[i], suffix);
      ok = weights_add_entry(weights, part, &entry, error);
    }
    g_free(name);
    return ok;
  }
  default:
    break;
  }
  return weights_add_entry(weights, name, &entry, error);
}

/* diffusers before 0.14 named the VAE's attention query/key/value/proj_attn;
 * such files are still published. */
static const char *const legacy_attention_renames[][2] = {
    {"query.", "to_q."}, {"key.", "to_k."}, {"value.", "to_v."}, {"proj_attn.", "to_out.0."}};

static char *current_diffusers_name(const char *name) {
  const char *attention = "mid_block.attentions.0.";
  const char *found = strstr(name, attention);
  if (found) {
    const char *rest = found + strlen(attention);
    char *renamed = rename_under(g_strndup(name, (gsize)(rest - name)), rest,
                                 legacy_attention_renames, G_N_ELEMENTS(legacy_attention_renames));
    if (renamed) return renamed;
  }
  return g_strdup(name);
}

Weights *weights_open_file(const char *path, GError **error) {
  StFile *file = st_open(path, error);
  if (!file) return NULL;
  Weights *weights = weights_new(path);
  weights->owned_file = file;
  for (guint i = 0; i < st_count(file); i++) {
    const StTensor *tensor = st_tensor_at(file, i);
    if (!weights_add(weights, current_diffusers_name(tensor->name), tensor, MAP_AS_IS, error)) {
      weights_free(weights);
      return NULL;
    }
  }
  return weights;
}

static const char *component_key_prefix(Component component) {
  switch (component) {
  case COMPONENT_UNET:
    return "model.diffusion_model.";
  case COMPONENT_VAE:
    return "first_stage_model.";
  case COMPONENT_TEXT_ENCODER:
    return "cond_stage_model.transformer. or conditioner.embedders.0.transformer.";
  default:
    return "conditioner.embedders.1.model.";
  }
}

Weights *weights_open_checkpoint(StFile *checkpoint, Component component, GError **error) {
  Weights *weights = weights_new(st_path(checkpoint));
  weights->network = component_name(component);
  LdmLayout layout = ldm_layout(checkpoint);
  for (guint i = 0; i < st_count(checkpoint); i++) {
    const StTensor *tensor = st_tensor_at(checkpoint, i);
    MapKind kind;
    char *name = map_checkpoint_key(component, tensor->name, &layout, &kind);
    if (name && !weights_add(weights, name, tensor, kind, error)) {
      weights_free(weights);
      return NULL;
    }
  }
  if (g_hash_table_size(weights->entries) == 0) {
    g_set_error(error, LCM_ERROR, LCM_ERROR_MISSING, "%s: the checkpoint holds no %s tensors (%s*)",
                weights->path, component_name(component), component_key_prefix(component));
    weights_free(weights);
    return NULL;
  }
  return weights;
}

gboolean weights_contains(const Weights *weights, const char *name) {
  return g_hash_table_contains(weights->entries, name);
}

static void entry_shape(const WeightEntry *entry, int *ndims, int64_t *shape) {
  *ndims = entry->squeeze_1x1 ? 2 : entry->tensor->ndims;
  memcpy(shape, entry->tensor->shape, sizeof(int64_t) * (size_t)*ndims);
  if (entry->rows) shape[0] = entry->rows;
  if (entry->transpose) {
    const int64_t rows = shape[0];
    shape[0] = shape[1];
    shape[1] = rows;
  }
}

/* The stored tensor, or the rows of it the entry covers, as a tensor of
 * its own (the data stays in the file's mapping). */
static StTensor entry_stored(const WeightEntry *entry) {
  StTensor view = *entry->tensor;
  if (entry->rows) {
    const size_t row_bytes = view.nbytes / (size_t)view.shape[0];
    view.data = (const char *)view.data + (size_t)entry->row_offset * row_bytes;
    view.shape[0] = entry->rows;
    view.nbytes = (size_t)entry->rows * row_bytes;
  }
  return view;
}

/* The entry's values in fp32, in its diffusers shape, into dst. */
static gboolean entry_to_f32(const WeightEntry *entry, float *dst) {
  const StTensor stored = entry_stored(entry);
  if (!entry->transpose) {
    st_tensor_to_f32(&stored, dst);
    return TRUE;
  }
  const int64_t rows = stored.shape[0], cols = stored.shape[1];
  float *plain = g_try_new(float, (size_t)MAX(rows * cols, 1));
  if (!plain) return FALSE;
  st_tensor_to_f32(&stored, plain);
  for (int64_t r = 0; r < rows; r++)
    for (int64_t c = 0; c < cols; c++) dst[c * rows + r] = plain[r * cols + c];
  g_free(plain);
  return TRUE;
}

gboolean weights_shape(const Weights *weights, const char *name, int *ndims, int64_t *shape) {
  const WeightEntry *entry = g_hash_table_lookup(weights->entries, name);
  if (!entry) return FALSE;
  entry_shape(entry, ndims, shape);
  return TRUE;
}

char *weights_shape_string(int ndims, const int64_t *shape) {
  GString *s = g_string_new("[");
  for (int i = 0; i < ndims; i++)
    g_string_append_printf(s, "%s%" G_GINT64_FORMAT, i ? ", " : "", shape[i]);
  g_string_append_c(s, ']');
  return g_string_free(s, FALSE);
}

/* "'name'" or, in a checkpoint, "'name' (UNet, stored as 'original')". */
static char *describe_tensor(const Weights *weights, const char *name, const WeightEntry *entry) {
  if (!weights->network) return g_strdup_printf("'%s'", name);
  if (!entry) return g_strdup_printf("'%s' (%s)", name, weights->network);
  return g_strdup_printf("'%s' (%s, stored as '%s')", name, weights->network, entry->tensor->name);
}

/* W += factor * up @ down for each queued update, in fp32 on the fresh copy,
 * so a LoRA costs no second copy of the network. */
static gboolean merge_updates(const Weights *weights, const char *name, const WeightEntry *entry,
                              float *data, GError **error) {
  int ndims;
  int64_t shape[ST_MAX_DIMS];
  entry_shape(entry, &ndims, shape);
  const int64_t rows = shape[0], cols = (int64_t)weights_shape_numel(ndims, shape) / rows;
  for (guint i = 0; i < entry->updates->len; i++) {
    const WeightUpdate *update = &g_array_index(entry->updates, WeightUpdate, i);
    const int64_t rank = update->down->shape[0];
    const size_t up_values = (size_t)(rows * rank), down_values = (size_t)(rank * cols);
    float *up = g_try_new(float, up_values), *down = g_try_new(float, down_values);
    dnnl_status_t status = dnnl_out_of_memory;
    if (up && down) {
      st_tensor_to_f32(update->up, up);
      st_tensor_to_f32(update->down, down);
      status = dnnl_sgemm('N', 'N', rows, cols, rank, update->factor, up, rank, down, cols, 1.0f,
                          data, cols);
    }
    g_free(up);
    g_free(down);
    if (status != dnnl_success) {
      g_set_error(error, LCM_ERROR, status == dnnl_out_of_memory ? LCM_ERROR_IO : LCM_ERROR_BACKEND,
                  "%s: merging LoRA update %u of tensor '%s' failed (oneDNN status %d)",
                  weights->path, i + 1, name, (int)status);
      return FALSE;
    }
  }
  return TRUE;
}

/* The entry of `name` if it has that shape (else an error); *key is its name. */
static const WeightEntry *checked_entry(const Weights *weights, const char *name, int ndims,
                                        const int64_t *shape, gpointer *key, GError **error) {
  gpointer value = NULL;
  if (!g_hash_table_lookup_extended(weights->entries, name, key, &value)) {
    char *what = describe_tensor(weights, name, NULL);
    g_set_error(error, LCM_ERROR, LCM_ERROR_MISSING, "%s: tensor %s is missing", weights->path,
                what);
    g_free(what);
    return NULL;
  }
  const WeightEntry *entry = value;
  int actual_ndims;
  int64_t actual_shape[ST_MAX_DIMS];
  entry_shape(entry, &actual_ndims, actual_shape);
  if (actual_ndims != ndims ||
      memcmp(actual_shape, shape, sizeof(int64_t) * (size_t)(ndims > 0 ? ndims : 0)) != 0) {
    char *what = describe_tensor(weights, name, entry);
    char *actual = weights_shape_string(actual_ndims, actual_shape);
    char *expected = weights_shape_string(ndims, shape);
    g_set_error(error, LCM_ERROR, LCM_ERROR_SHAPE, "%s: tensor %s has shape %s, expected %s",
                weights->path, what, actual, expected);
    g_free(what);
    g_free(actual);
    g_free(expected);
    return NULL;
  }
  return entry;
}

gboolean weights_check(const Weights *weights, const char *name, int ndims, const int64_t *shape,
                       GError **error) {
  gpointer key = NULL;
  if (!checked_entry(weights, name, ndims, shape, &key, error)) return FALSE;
  g_hash_table_add(weights->requested, key);
  return TRUE;
}

gboolean weights_read(const Weights *weights, const char *name, int ndims, const int64_t *shape,
                      float *dst, GError **error) {
  gpointer key = NULL;
  const WeightEntry *entry = checked_entry(weights, name, ndims, shape, &key, error);
  if (!entry) return FALSE;
  if (!entry_to_f32(entry, dst)) {
    g_set_error(error, LCM_ERROR, LCM_ERROR_IO, "%s: out of memory loading tensor '%s'",
                weights->path, name);
    return FALSE;
  }
  /* the other thirds of a split tensor drop their own pages */
  const StTensor stored = entry_stored(entry);
  st_tensor_drop_pages(&stored);
  if (entry->updates && !merge_updates(weights, name, entry, dst, error)) return FALSE;
  g_hash_table_add(weights->requested, key);
  return TRUE;
}

size_t weights_shape_numel(int ndims, const int64_t *shape) {
  size_t numel = 1;
  for (int i = 0; i < ndims; i++) numel *= (size_t)MAX(shape[i], 0);
  return numel;
}

float *weights_get(const Weights *weights, const char *name, int ndims, const int64_t *shape,
                   GError **error) {
  size_t numel = weights_shape_numel(ndims, shape);
  float *data = g_try_new(float, MAX(numel, 1));
  if (!data) {
    g_set_error(error, LCM_ERROR, LCM_ERROR_IO, "%s: out of memory loading tensor '%s' (%zu MB)",
                weights->path, name, numel * sizeof(float) >> 20);
    return NULL;
  }
  if (!weights_read(weights, name, ndims, shape, data, error)) {
    g_free(data);
    return NULL;
  }
  return data;
}

void weights_add_update(Weights *weights, const char *name, const WeightUpdate *update) {
  WeightEntry *entry = g_hash_table_lookup(weights->entries, name);
  g_return_if_fail(entry != NULL);
  if (!entry->updates) entry->updates = g_array_new(FALSE, FALSE, sizeof(WeightUpdate));
  g_array_append_val(entry->updates, *update);
}

gboolean weights_any_fetched(const Weights *weights) {
  return g_hash_table_size(weights->requested) > 0;
}

const char *weights_path(const Weights *weights) {
  return weights->path;
}

static int compare_names(gconstpointer a, gconstpointer b) {
  return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Sorted names of `entries`, skipping those in `exclude` (may be NULL). */
static GPtrArray *sorted_names(GHashTable *entries, GHashTable *exclude) {
  GPtrArray *names = g_ptr_array_new();
  GHashTableIter iter;
  gpointer key;
  g_hash_table_iter_init(&iter, entries);
  while (g_hash_table_iter_next(&iter, &key, NULL))
    if (!exclude || !g_hash_table_contains(exclude, key)) g_ptr_array_add(names, key);
  g_ptr_array_sort(names, compare_names);
  return names;
}

GPtrArray *weights_names(const Weights *weights) {
  return sorted_names(weights->entries, NULL);
}

GPtrArray *weights_unused(const Weights *weights) {
  return sorted_names(weights->entries, weights->requested);
}

char *lcm_file_identity(const char *path) {
  struct stat st;
  if (stat(path, &st) != 0) return NULL;
  return g_strdup_printf("%s size %lld mtime %lld.%09ld inode %llu:%llu", path,
                         (long long)st.st_size, (long long)st.st_mtim.tv_sec,
                         (long)st.st_mtim.tv_nsec, (unsigned long long)st.st_dev,
                         (unsigned long long)st.st_ino);
}

char *weights_identity(const Weights *weights) {
  char *file = lcm_file_identity(weights->path);
  if (!file) return NULL;
  GString *text = g_string_new(NULL);
  g_string_append_printf(text, "weights %s network %s\n", file,
                         weights->network ? weights->network : "-");
  g_free(file);
  GPtrArray *names = sorted_names(weights->entries, NULL);
  gboolean ok = TRUE;
  for (guint i = 0; i < names->len && ok; i++) {
    const WeightEntry *entry = g_hash_table_lookup(weights->entries, names->pdata[i]);
    for (guint k = 0; entry->updates && k < entry->updates->len && ok; k++) {
      const WeightUpdate *u = &g_array_index(entry->updates, WeightUpdate, k);
      char *lora = lcm_file_identity(st_path(u->file));
      ok = lora != NULL;
      if (ok)
        g_string_append_printf(text, "update %s factor %a from %s (%s, %s)\n",
                               (const char *)names->pdata[i], u->factor, lora, u->up->name,
                               u->down->name);
      g_free(lora);
    }
  }
  g_ptr_array_unref(names);
  return ok ? g_string_free(text, FALSE) : (g_string_free(text, TRUE), NULL);
}

const char *weights_source_name(const Weights *weights, const char *name) {
  const WeightEntry *entry = g_hash_table_lookup(weights->entries, name);
  return entry ? entry->tensor->name : NULL;
}

GPtrArray *weights_checkpoint_unmapped(const StFile *checkpoint) {
  LdmLayout layout = ldm_layout(checkpoint);
  GPtrArray *unmapped = g_ptr_array_new();
  for (guint i = 0; i < st_count(checkpoint); i++) {
    const char *key = st_tensor_at(checkpoint, i)->name;
    gboolean mapped = FALSE;
    for (int c = 0; c < N_COMPONENTS && !mapped; c++) {
      MapKind kind;
      char *name = map_checkpoint_key((Component)c, key, &layout, &kind);
      mapped = name != NULL;
      g_free(name);
    }
    if (!mapped) g_ptr_array_add(unmapped, (gpointer)key);
  }
  g_ptr_array_sort(unmapped, compare_names);
  return unmapped;
}

int64_t weights_parameter_count(const Weights *weights) {
  int64_t total = 0;
  GHashTableIter iter;
  gpointer value;
  g_hash_table_iter_init(&iter, weights->entries);
  while (g_hash_table_iter_next(&iter, NULL, &value)) {
    const WeightEntry *entry = value;
    const int64_t numel = (int64_t)st_numel(entry->tensor);
    /* a third of OpenCLIP's stacked q, k, v */
    total += entry->rows ? numel / entry->tensor->shape[0] * entry->rows : numel;
  }
  return total;
}
