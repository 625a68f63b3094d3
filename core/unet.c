/* The SD1.5- and SDXL-family UNet: diffusers UNet2DConditionModel with
 * CrossAttn / plain down and up blocks of any transformer depth, a
 * cross-attention or plain mid block, an optional LCM guidance-embedding
 * input (time_embedding.cond_proj) and SDXL's pooled-text and size
 * conditioning (add_embedding).
 *
 * Activations stay NHWC from conv_in to conv_out. Every tensor is freed as
 * soon as nothing needs it; the skip connections of the down path are the
 * only long-lived activations. Residual adds are fused into the op that
 * produces the sum.
 */
#include "config.h"
#include "model.h"
#include "ops.h"

#include <math.h>
#include <string.h>

/* The transformer's GroupNorm and the LayerNorms use fixed eps values in
 * diffusers (norm_eps only applies to resnets and conv_norm_out). */
#define TRANSFORMER_GROUP_NORM_EPS 1e-6f
#define LAYER_NORM_EPS 1e-5f
/* Latent sides beyond this (32768-pixel images) can only be a caller's bug. */
#define MAX_LATENT_SIDE 4096

typedef struct {
  Norm *norm1, *norm2;
  Conv2d *conv1, *conv2;
  Conv2d *shortcut; /* 1x1 conv when the channel count changes, else NULL */
  Linear *time_emb_proj;
} Resnet;

typedef struct {
  Linear *to_q, *to_k, *to_v, *to_out;
} Attention;

typedef struct {
  Norm *norm1, *norm2, *norm3;
  Attention self_attn, cross_attn;
  Linear *ff_proj[2]; /* the two halves of GEGLU's ff.net.0.proj: value, gate */
  Linear *ff_out;
} TransformerBlock;

/* proj_in / proj_out: a 1x1 convolution or, with use_linear_projection, a
 * linear layer. On NHWC rows both are the same matrix product. */
typedef struct {
  Conv2d *conv;
  Linear *linear;
} Projection;

typedef struct {
  Norm *norm;
  Projection proj_in, proj_out;
  int n_blocks;
  TransformerBlock *blocks;
  int heads;
} Transformer;

/* A down, mid or up block. Down/up blocks pair resnets[j] with
 * attentions[j]; the mid block runs resnets[0], then attentions[j] and
 * resnets[j + 1] in turn. */
typedef struct {
  int n_resnets;
  Resnet *resnets;
  int n_attentions;
  Transformer *attentions;
  Conv2d *downsampler;     /* downsamplers.0.conv, or NULL */
  UpsampleConv *upsampler; /* upsamplers.0.conv, or NULL */
} Block;

struct LcmUNet {
  Ops *ops;
  /* fp32 whatever ops computes in: the time, guidance and added embeddings
   * and every resnet's time_emb_proj. They are tiny, and in bf16 their
   * error reaches every resnet of the network. */
  Ops *embedding_ops;
  UNetConfig config;
  Conv2d *conv_in;
  Linear *cond_proj; /* NULL unless time_cond_proj_dim > 0 */
  Linear *time_linear_1, *time_linear_2;
  Linear *add_linear_1, *add_linear_2; /* SDXL's add_embedding, else NULL */
  Block down[CONFIG_MAX_BLOCKS];
  Block mid;
  Block up[CONFIG_MAX_BLOCKS];
  Norm *conv_norm_out;
  Conv2d *conv_out;
};

/* ---- Freeing ----------------------------------------------------------------- */

static void resnet_clear(Resnet *r) {
  norm_free(r->norm1);
  norm_free(r->norm2);
  conv2d_free(r->conv1);
  conv2d_free(r->conv2);
  conv2d_free(r->shortcut);
  linear_free(r->time_emb_proj);
}

static void attention_clear(Attention *a) {
  linear_free(a->to_q);
  linear_free(a->to_k);
  linear_free(a->to_v);
  linear_free(a->to_out);
}

static void projection_clear(Projection *p) {
  conv2d_free(p->conv);
  linear_free(p->linear);
}

static void transformer_clear(Transformer *t) {
  norm_free(t->norm);
  projection_clear(&t->proj_in);
  projection_clear(&t->proj_out);
  for (int k = 0; k < t->n_blocks; k++) {
    TransformerBlock *b = &t->blocks[k];
    norm_free(b->norm1);
    norm_free(b->norm2);
    norm_free(b->norm3);
    attention_clear(&b->self_attn);
    attention_clear(&b->cross_attn);
    linear_free(b->ff_proj[0]);
    linear_free(b->ff_proj[1]);
    linear_free(b->ff_out);
  }
  g_free(t->blocks);
}

static void block_clear(Block *b) {
  for (int j = 0; j < b->n_resnets; j++) resnet_clear(&b->resnets[j]);
  for (int j = 0; j < b->n_attentions; j++) transformer_clear(&b->attentions[j]);
  g_free(b->resnets);
  g_free(b->attentions);
  conv2d_free(b->downsampler);
  upsample_conv_free(b->upsampler);
}

void lcm_unet_free(LcmUNet *unet) {
  if (!unet) return;
  conv2d_free(unet->conv_in);
  linear_free(unet->cond_proj);
  linear_free(unet->time_linear_1);
  linear_free(unet->time_linear_2);
  linear_free(unet->add_linear_1);
  linear_free(unet->add_linear_2);
  for (int i = 0; i < CONFIG_MAX_BLOCKS; i++) { /* unloaded blocks are all zero */
    block_clear(&unet->down[i]);
    block_clear(&unet->up[i]);
  }
  block_clear(&unet->mid);
  norm_free(unet->conv_norm_out);
  conv2d_free(unet->conv_out);
  ops_free(unet->embedding_ops);
  ops_free(unet->ops);
  g_free(unet);
}

/* ---- Loading ----------------------------------------------------------------- */

/* Everything a loader needs besides its own prefix. */
typedef struct {
  Ops *ops;
  Ops *embedding_ops; /* see LcmUNet.embedding_ops */
  const Weights *weights;
  const UNetConfig *config;
} Loader;

#define NAME_MAX_LEN 256

/* Loaders of PREFIX.LEAF with the Loader's ops and weights. */
static Conv2d *load_conv(const Loader *ld, const char *prefix, const char *leaf, int in_ch,
                         int out_ch, int kernel, int stride, GError **error) {
  char name[NAME_MAX_LEN];
  g_snprintf(name, sizeof name, "%s.%s", prefix, leaf);
  return conv2d_load(ld->ops, ld->weights, name, in_ch, out_ch, kernel, stride, TRUE, error);
}

static Linear *load_linear_on(Ops *ops, const Loader *ld, const char *prefix, const char *leaf,
                              int in_features, int out_features, gboolean has_bias,
                              GError **error) {
  char name[NAME_MAX_LEN];
  g_snprintf(name, sizeof name, "%s.%s", prefix, leaf);
  return linear_load(ops, ld->weights, name, in_features, out_features, has_bias, error);
}

static Linear *load_linear(const Loader *ld, const char *prefix, const char *leaf, int in_features,
                           int out_features, gboolean has_bias, GError **error) {
  return load_linear_on(ld->ops, ld, prefix, leaf, in_features, out_features, has_bias, error);
}

static Norm *load_norm(const Loader *ld, const char *prefix, const char *leaf, int channels,
                       GError **error) {
  char name[NAME_MAX_LEN];
  g_snprintf(name, sizeof name, "%s.%s", prefix, leaf);
  return norm_load(ld->ops, ld->weights, name, channels, error);
}

static gboolean load_resnet(const Loader *ld, const char *prefix, int in_ch, int out_ch, Resnet *r,
                            GError **error) {
  int temb_dim = 4 * ld->config->block_out_channels[0];
  return (r->norm1 = load_norm(ld, prefix, "norm1", in_ch, error)) &&
         (r->conv1 = load_conv(ld, prefix, "conv1", in_ch, out_ch, 3, 1, error)) &&
         (r->time_emb_proj = load_linear_on(ld->embedding_ops, ld, prefix, "time_emb_proj",
                                            temb_dim, out_ch, TRUE, error)) &&
         (r->norm2 = load_norm(ld, prefix, "norm2", out_ch, error)) &&
         (r->conv2 = load_conv(ld, prefix, "conv2", out_ch, out_ch, 3, 1, error)) &&
         (in_ch == out_ch ||
          (r->shortcut = load_conv(ld, prefix, "conv_shortcut", in_ch, out_ch, 1, 1, error)));
}

static gboolean load_attention(const Loader *ld, const char *prefix, int dim, int kv_dim,
                               Attention *a, GError **error) {
  return (a->to_q = load_linear(ld, prefix, "to_q", dim, dim, FALSE, error)) &&
         (a->to_k = load_linear(ld, prefix, "to_k", kv_dim, dim, FALSE, error)) &&
         (a->to_v = load_linear(ld, prefix, "to_v", kv_dim, dim, FALSE, error)) &&
         (a->to_out = load_linear(ld, prefix, "to_out.0", dim, dim, TRUE, error));
}

static gboolean load_transformer_block(const Loader *ld, const char *prefix, int dim,
                                       TransformerBlock *b, GError **error) {
  char attn1[NAME_MAX_LEN], attn2[NAME_MAX_LEN], geglu[NAME_MAX_LEN];
  g_snprintf(attn1, sizeof attn1, "%s.attn1", prefix);
  g_snprintf(attn2, sizeof attn2, "%s.attn2", prefix);
  g_snprintf(geglu, sizeof geglu, "%s.ff.net.0.proj", prefix);
  int ff_inner = 4 * dim;
  return (b->norm1 = load_norm(ld, prefix, "norm1", dim, error)) &&
         load_attention(ld, attn1, dim, dim, &b->self_attn, error) &&
         (b->norm2 = load_norm(ld, prefix, "norm2", dim, error)) &&
         load_attention(ld, attn2, dim, ld->config->cross_attention_dim, &b->cross_attn, error) &&
         (b->norm3 = load_norm(ld, prefix, "norm3", dim, error)) &&
         linear_load_split(ld->ops, ld->weights, geglu, dim, 2, ff_inner, TRUE, b->ff_proj,
                           error) &&
         (b->ff_out = load_linear(ld, prefix, "ff.net.2", ff_inner, dim, TRUE, error));
}

static gboolean load_projection(const Loader *ld, const char *prefix, const char *leaf, int dim,
                                Projection *p, GError **error) {
  if (ld->config->use_linear_projection)
    return (p->linear = load_linear(ld, prefix, leaf, dim, dim, TRUE, error)) != NULL;
  return (p->conv = load_conv(ld, prefix, leaf, dim, dim, 1, 1, error)) != NULL;
}

static gboolean load_transformer(const Loader *ld, const char *prefix, int dim, int heads,
                                 int depth, Transformer *t, GError **error) {
  t->heads = heads;
  if (!(t->norm = load_norm(ld, prefix, "norm", dim, error)) ||
      !load_projection(ld, prefix, "proj_in", dim, &t->proj_in, error) ||
      !load_projection(ld, prefix, "proj_out", dim, &t->proj_out, error))
    return FALSE;
  t->blocks = g_new0(TransformerBlock, depth);
  for (int k = 0; k < depth; k++) {
    char name[NAME_MAX_LEN];
    g_snprintf(name, sizeof name, "%s.transformer_blocks.%d", prefix, k);
    t->n_blocks = k + 1;
    if (!load_transformer_block(ld, name, dim, &t->blocks[k], error)) return FALSE;
  }
  return TRUE;
}

typedef enum { SAMPLER_NONE, SAMPLER_DOWN, SAMPLER_UP } SamplerKind;

/* resnet_in[j] is the input width of resnets[j] (for up blocks: the
 * running activation plus the skip it is concatenated with); depths[j] the
 * transformer depth of attentions[j]. */
static gboolean load_block(const Loader *ld, const char *prefix, int n_resnets,
                           const int *resnet_in, int out_ch, int n_attentions, const int *depths,
                           int heads, SamplerKind sampler, Block *b, GError **error) {
  char name[NAME_MAX_LEN];
  b->resnets = g_new0(Resnet, n_resnets);
  for (int j = 0; j < n_resnets; j++) {
    g_snprintf(name, sizeof name, "%s.resnets.%d", prefix, j);
    b->n_resnets = j + 1;
    if (!load_resnet(ld, name, resnet_in[j], out_ch, &b->resnets[j], error)) return FALSE;
  }
  b->attentions = g_new0(Transformer, n_attentions);
  for (int j = 0; j < n_attentions; j++) {
    g_snprintf(name, sizeof name, "%s.attentions.%d", prefix, j);
    b->n_attentions = j + 1;
    if (!load_transformer(ld, name, out_ch, heads, depths[j], &b->attentions[j], error))
      return FALSE;
  }
  if (sampler == SAMPLER_DOWN &&
      !(b->downsampler = load_conv(ld, prefix, "downsamplers.0.conv", out_ch, out_ch, 3, 2, error)))
    return FALSE;
  if (sampler == SAMPLER_UP) {
    /* Odd latent sizes upsample some levels to 2n - 1: keep the 3x3 for those. */
    g_snprintf(name, sizeof name, "%s.upsamplers.0.conv", prefix);
    if (!(b->upsampler =
              upsample_conv_load(ld->ops, ld->weights, name, out_ch, out_ch, TRUE, TRUE, error)))
      return FALSE;
  }
  return TRUE;
}

/* The divisibility and range facts the forward pass relies on. */
static gboolean check_config(const UNetConfig *c, const char *path, GError **error) {
  const char *problem = NULL;
  if (c->n_blocks < 1 || c->n_blocks > CONFIG_MAX_BLOCKS)
    problem = "the number of blocks";
  else if (c->in_channels < 1 || c->out_channels < 1)
    problem = "in/out_channels";
  else if (c->layers_per_block < 1 || c->layers_per_block > CONFIG_MAX_LAYERS)
    problem = "layers_per_block";
  else if (c->cross_attention_dim < 1)
    problem = "cross_attention_dim";
  else if (c->norm_num_groups < 1)
    problem = "norm_num_groups";
  else if (c->time_cond_proj_dim < 0)
    problem = "time_cond_proj_dim";
  for (int i = 0; !problem && i < c->n_blocks; i++) {
    int ch = c->block_out_channels[i];
    if (ch < 1 || ch % c->norm_num_groups != 0)
      problem = "block_out_channels (each must be a multiple of norm_num_groups)";
    else if (c->heads[i] < 1 || ch % c->heads[i] != 0)
      problem = "the attention heads (each level's width must be a multiple of its head count)";
    for (int j = 0; j <= c->layers_per_block; j++)
      if ((j < c->layers_per_block && c->down_cross_attn[i] && c->down_depth[i][j] < 1) ||
          (c->up_cross_attn[i] && c->up_depth[i][j] < 1))
        problem = "transformer_layers_per_block";
  }
  if (!problem && c->mid_cross_attn && c->mid_depth < 1) problem = "transformer_layers_per_block";
  if (problem) {
    g_set_error(error, LCM_ERROR, LCM_ERROR_UNSUPPORTED, "%s: UNet config has unusable %s", path,
                problem);
    return FALSE;
  }
  return TRUE;
}

static gboolean load_down_mid_up(const Loader *ld, LcmUNet *u, GError **error) {
  const UNetConfig *c = ld->config;
  int n = c->n_blocks, layers = c->layers_per_block;
  char prefix[NAME_MAX_LEN];
  int resnet_in[CONFIG_MAX_LAYERS + 1];
  int in_ch = c->block_out_channels[0];

  for (int i = 0; i < n; i++) {
    int out_ch = c->block_out_channels[i];
    for (int j = 0; j < layers; j++) resnet_in[j] = j == 0 ? in_ch : out_ch;
    g_snprintf(prefix, sizeof prefix, "down_blocks.%d", i);
    if (!load_block(ld, prefix, layers, resnet_in, out_ch, c->down_cross_attn[i] ? layers : 0,
                    c->down_depth[i], c->heads[i], i < n - 1 ? SAMPLER_DOWN : SAMPLER_NONE,
                    &u->down[i], error))
      return FALSE;
    in_ch = out_ch;
  }

  int mid_ch = c->block_out_channels[n - 1];
  int mid_in[2] = {mid_ch, mid_ch};
  /* UNetMidBlock2DCrossAttn: resnet, attention, resnet; UNetMidBlock2D
   * (SSD-1B): one resnet */
  int mid_attentions = c->mid_cross_attn ? 1 : 0;
  if (!load_block(ld, "mid_block", 1 + mid_attentions, mid_in, mid_ch, mid_attentions,
                  &c->mid_depth, c->heads[n - 1], SAMPLER_NONE, &u->mid, error))
    return FALSE;

  /* diffusers' channel bookkeeping: up block i works at reversed width
   * out_ch; its first resnet takes the previous block's width, its last
   * skip comes from the next-shallower level. */
  int prev_ch = mid_ch;
  for (int i = 0; i < n; i++) {
    int out_ch = c->block_out_channels[n - 1 - i];
    int skip_in = c->block_out_channels[MAX(n - 2 - i, 0)];
    for (int j = 0; j <= layers; j++)
      resnet_in[j] = (j == 0 ? prev_ch : out_ch) + (j == layers ? skip_in : out_ch);
    g_snprintf(prefix, sizeof prefix, "up_blocks.%d", i);
    if (!load_block(ld, prefix, layers + 1, resnet_in, out_ch, c->up_cross_attn[i] ? layers + 1 : 0,
                    c->up_depth[i], c->heads[n - 1 - i], i < n - 1 ? SAMPLER_UP : SAMPLER_NONE,
                    &u->up[i], error))
      return FALSE;
    prev_ch = out_ch;
  }
  return TRUE;
}

/* Tensors no loader asked for mean the file describes a different network
 * (extra embeddings, another block layout); running it would be wrong. */
static gboolean check_all_used(const Weights *weights, GError **error) {
  GPtrArray *unused = weights_unused(weights);
  gboolean ok = unused->len == 0;
  if (!ok) {
    char *more = unused->len > 1 ? g_strdup_printf(" (and %u more)", unused->len - 1) : NULL;
    g_set_error(error, LCM_ERROR, LCM_ERROR_UNSUPPORTED,
                "%s: the UNet its config describes has no tensor '%s'%s; the weights belong to "
                "a different network",
                weights_path(weights), (const char *)g_ptr_array_index(unused, 0),
                more ? more : "");
    g_free(more);
  }
  g_ptr_array_unref(unused);
  return ok;
}

LcmUNet *lcm_unet_load(LcmModel *model, LcmPrecision precision, GError **error) {
  if (!model) {
    g_set_error(error, LCM_ERROR, LCM_ERROR_INVALID, "no model given to load a UNet from");
    return NULL;
  }
  Weights *weights = model_weights(model, COMPONENT_UNET, error);
  if (!weights) return NULL;
  LcmUNet *u = g_new0(LcmUNet, 1);
  if (!model_unet_config(model, &u->config, error) ||
      !check_config(&u->config, weights_path(weights), error))
    goto fail;
  if (!(u->ops = ops_new(precision, error)) ||
      !(u->embedding_ops = ops_new(LCM_PRECISION_FP32, error)))
    goto fail;
  ops_use_weight_cache(u->ops, "unet", weights);
  ops_use_weight_cache(u->embedding_ops, "time-embeddings", weights);

  const UNetConfig *c = &u->config;
  Loader ld = {u->ops, u->embedding_ops, weights, c};
  Ops *emb_ops = u->embedding_ops;
  int ch0 = c->block_out_channels[0], temb_dim = 4 * ch0;
  if (!(u->conv_in =
            conv2d_load(u->ops, weights, "conv_in", c->in_channels, ch0, 3, 1, TRUE, error)))
    goto fail;
  if (c->time_cond_proj_dim > 0 &&
      !(u->cond_proj = linear_load(emb_ops, weights, "time_embedding.cond_proj",
                                   c->time_cond_proj_dim, ch0, FALSE, error)))
    goto fail;
  if (!(u->time_linear_1 =
            linear_load(emb_ops, weights, "time_embedding.linear_1", ch0, temb_dim, TRUE, error)) ||
      !(u->time_linear_2 = linear_load(emb_ops, weights, "time_embedding.linear_2", temb_dim,
                                       temb_dim, TRUE, error)) ||
      (c->addition_time_embed_dim > 0 &&
       (!(u->add_linear_1 =
              linear_load(emb_ops, weights, "add_embedding.linear_1",
                          c->projection_class_embeddings_input_dim, temb_dim, TRUE, error)) ||
        !(u->add_linear_2 = linear_load(emb_ops, weights, "add_embedding.linear_2", temb_dim,
                                        temb_dim, TRUE, error)))) ||
      !load_down_mid_up(&ld, u, error) ||
      !(u->conv_norm_out = norm_load(u->ops, weights, "conv_norm_out", ch0, error)) ||
      !(u->conv_out =
            conv2d_load(u->ops, weights, "conv_out", ch0, c->out_channels, 3, 1, TRUE, error)) ||
      !check_all_used(weights, error))
    goto fail;
  ops_load_done(u->ops);
  ops_load_done(emb_ops);
  return u;

fail:
  lcm_unet_free(u);
  return NULL;
}

int lcm_unet_in_channels(const LcmUNet *unet) {
  return unet->config.in_channels;
}

int lcm_unet_out_channels(const LcmUNet *unet) {
  return unet->config.out_channels;
}

int lcm_unet_time_cond_proj_dim(const LcmUNet *unet) {
  return unet->config.time_cond_proj_dim;
}

int lcm_unet_cross_attention_dim(const LcmUNet *unet) {
  return unet->config.cross_attention_dim;
}

int lcm_unet_text_embeds_dim(const LcmUNet *unet) {
  const UNetConfig *c = &unet->config;
  return c->addition_time_embed_dim
             ? c->projection_class_embeddings_input_dim - LCM_TIME_IDS * c->addition_time_embed_dim
             : 0;
}

void lcm_unet_set_attention_chunk(LcmUNet *unet, int rows) {
  ops_set_attention_chunk(unet->ops, rows);
}

void lcm_unet_set_cancel(LcmUNet *unet, volatile gint *cancel) {
  ops_set_cancel(unet->ops, cancel);
  ops_set_cancel(unet->embedding_ops, cancel);
}

/* ---- Embeddings -------------------------------------------------------------- */

/* diffusers get_timestep_embedding, in float32 like PyTorch. */
static void timestep_embedding(float t, int dim, gboolean flip_sin_to_cos, float freq_shift,
                               float *out) {
  int half = dim / 2;
  float neg_log_period = -logf(10000.0f);
  for (int i = 0; i < half; i++) {
    float arg = t * expf(neg_log_period * (float)i / ((float)half - freq_shift));
    out[flip_sin_to_cos ? half + i : i] = sinf(arg);
    out[flip_sin_to_cos ? i : half + i] = cosf(arg);
  }
  if (dim % 2) out[dim - 1] = 0.0f;
}

void lcm_guidance_embedding(float w, int dim, float *out) {
  int half = dim / 2;
  /* diffusers divides by half - 1; dims below 4 would divide by zero. */
  float step = logf(10000.0f) / (float)MAX(half - 1, 1);
  float scaled = w * 1000.0f;
  for (int i = 0; i < half; i++) {
    float arg = scaled * expf((float)i * -step);
    out[i] = sinf(arg);
    out[half + i] = cosf(arg);
  }
  if (dim > 0 && dim % 2) out[dim - 1] = 0.0f;
}

/* ---- Forward ----------------------------------------------------------------- */

/* Replaces *x by next, freeing the old tensor. FALSE (keeping *x) when
 * next is NULL, i.e. the op producing it failed. */
static gboolean advance(Tensor **x, Tensor *next) {
  if (!next) return FALSE;
  tensor_free(*x);
  *x = next;
  return TRUE;
}

/* tensor_from_rows / tensor_from_nchw fail only when memory runs out. */
static gboolean input_allocated(const Tensor *t, const char *what, GError **error) {
  if (t) return TRUE;
  g_set_error(error, LCM_ERROR, LCM_ERROR_INVALID, "UNet run: out of memory for the %s", what);
  return FALSE;
}

/* A copy of a tensor's rows for LcmUNetEmbeddings. */
static float *rows_copy(const Tensor *t) {
  float *rows = g_new(float, tensor_numel(t));
  tensor_to_rows(t, rows);
  return rows;
}

/* add_embedding(text_embeds ‖ sinusoids of the time ids): SDXL's pooled
 * text and size conditioning, [batch, 1, 1, 4*ch0]. */
static Tensor *added_embedding(LcmUNet *u, int batch, const LcmUNetConditions *cond,
                               LcmUNetEmbeddings *debug, GError **error) {
  const UNetConfig *c = &u->config;
  int text_dim = lcm_unet_text_embeds_dim(u), time_dim = c->addition_time_embed_dim;
  int width = c->projection_class_embeddings_input_dim;
  float *rows = g_new(float, (size_t)batch *width);
  for (int b = 0; b < batch; b++) {
    float *row = rows + (size_t)b * width;
    memcpy(row, cond->text_embeds + (size_t)b * text_dim, text_dim * sizeof(float));
    for (int k = 0; k < LCM_TIME_IDS; k++)
      timestep_embedding(cond->time_ids[b * LCM_TIME_IDS + k], time_dim, c->flip_sin_to_cos,
                         c->freq_shift, row + text_dim + k * time_dim);
  }
  if (debug) {
    debug->add_embeds_dim = width;
    debug->add_time_proj_dim = width - text_dim;
    debug->add_embeds = g_memdup2(rows, (size_t)batch * width * sizeof(float));
    debug->add_time_proj = g_new(float, (size_t)batch *(width - text_dim));
    for (int b = 0; b < batch; b++)
      memcpy(debug->add_time_proj + (size_t)b * (width - text_dim),
             rows + (size_t)b * width + text_dim, (width - text_dim) * sizeof(float));
  }
  Tensor *t = tensor_from_rows(u->embedding_ops, rows, batch, 1, width);
  g_free(rows);
  if (!input_allocated(t, "added conditions", error)) return NULL;
  if (!advance(&t, linear(u->embedding_ops, u->add_linear_1, t, NULL, ACT_SILU, error)) ||
      !advance(&t, linear(u->embedding_ops, u->add_linear_2, t, NULL, ACT_NONE, error))) {
    tensor_free(t);
    return NULL;
  }
  return t;
}

/* act(time_embedding(time_proj(t) [+ cond_proj(timestep_cond)]) [+ aug]),
 * [batch, 1, 1, 4*ch0], with per-image timesteps. The resnets only ever see
 * it through a SiLU, so a run fuses that into linear_2 (with the SDXL added
 * embedding as its residual). With `debug` each stage is kept (act is then
 * ACT_NONE). */
static Tensor *conditioning(LcmUNet *u, int batch, const float *timesteps,
                            const LcmUNetConditions *cond, Activation act, LcmUNetEmbeddings *debug,
                            GError **error) {
  const UNetConfig *c = &u->config;
  int dim = c->block_out_channels[0];
  float *rows = g_new(float, (size_t)batch *dim);
  for (int b = 0; b < batch; b++)
    timestep_embedding(timesteps[b], dim, c->flip_sin_to_cos, c->freq_shift,
                       rows + (size_t)b * dim);
  if (debug) {
    debug->time_proj_dim = dim;
    debug->time_proj = g_memdup2(rows, (size_t)batch * dim * sizeof(float));
  }
  Tensor *t = tensor_from_rows(u->embedding_ops, rows, batch, 1, dim);
  g_free(rows);
  if (!input_allocated(t, "time embedding", error)) return NULL;

  gboolean ok = TRUE;
  if (cond && cond->timestep_cond) {
    Tensor *guidance =
        tensor_from_rows(u->embedding_ops, cond->timestep_cond, batch, 1, c->time_cond_proj_dim);
    ok = input_allocated(guidance, "timestep_cond", error) &&
         advance(&t, linear(u->embedding_ops, u->cond_proj, guidance, t, ACT_NONE, error));
    tensor_free(guidance);
  }
  Tensor *aug = NULL;
  if (ok && u->add_linear_1) ok = (aug = added_embedding(u, batch, cond, debug, error)) != NULL;
  ok = ok && advance(&t, linear(u->embedding_ops, u->time_linear_1, t, NULL, ACT_SILU, error));
  if (ok && debug) {
    ok = advance(&t, linear(u->embedding_ops, u->time_linear_2, t, NULL, ACT_NONE, error));
    if (ok) debug->time_embedding = rows_copy(t);
    if (ok && aug) {
      debug->add_embedding = rows_copy(aug);
      ok = advance(&t, tensor_add(u->embedding_ops, t, aug, error));
    }
    if (ok) {
      debug->emb_dim = t->c;
      debug->emb = rows_copy(t);
    }
  } else {
    ok = ok && advance(&t, linear(u->embedding_ops, u->time_linear_2, t, aug, act, error));
  }
  tensor_free(aug);
  if (!ok) {
    tensor_free(t);
    return NULL;
  }
  return t;
}

/* The resnet's time_emb_proj of the fp32 conditioning, in the ops' dtype:
 * [batch, 1, 1, out_ch], the per-channel residual of conv1. */
static Tensor *time_projection(LcmUNet *u, const Resnet *r, const Tensor *temb_silu,
                               GError **error) {
  Tensor *temb = linear(u->embedding_ops, r->time_emb_proj, temb_silu, NULL, ACT_NONE, error);
  if (!temb || ops_dtype(u->ops) == dnnl_f32) return temb;
  float *rows = rows_copy(temb);
  Tensor *converted = tensor_from_rows(u->ops, rows, temb->n, 1, temb->c);
  g_free(rows);
  tensor_free(temb);
  return input_allocated(converted, "time embedding", error) ? converted : NULL;
}

static Tensor *resnet_forward(LcmUNet *u, const Resnet *r, const Tensor *x, const Tensor *temb_silu,
                              GError **error) {
  Ops *ops = u->ops;
  int groups = u->config.norm_num_groups;
  float eps = u->config.norm_eps;
  if (!ops_check_cancel(ops, error)) return NULL;
  Tensor *temb = time_projection(u, r, temb_silu, error);
  if (!temb) return NULL;
  Tensor *h = group_norm(ops, r->norm1, x, groups, eps, ACT_SILU, error);
  if (!h || !advance(&h, conv2d(ops, r->conv1, h, temb, ACT_NONE, error))) {
    tensor_free(h);
    tensor_free(temb);
    return NULL;
  }
  tensor_free(temb);
  Tensor *shortcut = NULL;
  if (!advance(&h, group_norm(ops, r->norm2, h, groups, eps, ACT_SILU, error)) ||
      (r->shortcut && !(shortcut = conv2d(ops, r->shortcut, x, NULL, ACT_NONE, error))) ||
      !advance(&h, conv2d(ops, r->conv2, h, shortcut ? shortcut : x, ACT_NONE, error))) {
    tensor_free(h);
    tensor_free(shortcut);
    return NULL;
  }
  tensor_free(shortcut);
  return h;
}

/* residual + to_out(attention(to_q(x), to_k(kv), to_v(kv))). */
static Tensor *attention_forward(Ops *ops, const Attention *a, const Tensor *x, const Tensor *kv,
                                 int heads, const Tensor *residual, GError **error) {
  Tensor *q = linear(ops, a->to_q, x, NULL, ACT_NONE, error);
  Tensor *k = q ? linear(ops, a->to_k, kv, NULL, ACT_NONE, error) : NULL;
  Tensor *v = k ? linear(ops, a->to_v, kv, NULL, ACT_NONE, error) : NULL;
  Tensor *o = v ? attention(ops, q, k, v, heads, FALSE, error) : NULL;
  tensor_free(q);
  tensor_free(k);
  tensor_free(v);
  if (!o) return NULL;
  Tensor *out = linear(ops, a->to_out, o, residual, ACT_NONE, error);
  tensor_free(o);
  return out;
}

/* BasicTransformerBlock on a [n, 1, tokens, c] sequence. */
static Tensor *transformer_block_forward(Ops *ops, const TransformerBlock *b, const Tensor *x,
                                         const Tensor *context, int heads, GError **error) {
  Tensor *normed = layer_norm(ops, b->norm1, x, LAYER_NORM_EPS, error);
  if (!normed) return NULL;
  Tensor *h = attention_forward(ops, &b->self_attn, normed, normed, heads, x, error);
  tensor_free(normed);
  if (!h) return NULL;

  normed = layer_norm(ops, b->norm2, h, LAYER_NORM_EPS, error);
  if (!normed) goto fail;
  gboolean ok =
      advance(&h, attention_forward(ops, &b->cross_attn, normed, context, heads, h, error));
  tensor_free(normed);
  if (!ok) goto fail;

  normed = layer_norm(ops, b->norm3, h, LAYER_NORM_EPS, error);
  if (!normed) goto fail;
  Tensor *gated = linear_geglu(ops, b->ff_proj[0], b->ff_proj[1], normed, error);
  tensor_free(normed);
  ok = gated && advance(&h, linear(ops, b->ff_out, gated, h, ACT_NONE, error));
  tensor_free(gated);
  if (!ok) goto fail;
  return h;

fail:
  tensor_free(h);
  return NULL;
}

static Tensor *project(Ops *ops, const Projection *p, const Tensor *x, const Tensor *residual,
                       GError **error) {
  if (p->conv) return conv2d(ops, p->conv, x, residual, ACT_NONE, error);
  return linear(ops, p->linear, x, residual, ACT_NONE, error);
}

/* Transformer2DModel: x + proj_out(blocks(proj_in(norm(x)))). */
static Tensor *transformer_forward(LcmUNet *u, const Transformer *t, const Tensor *x,
                                   const Tensor *context, GError **error) {
  Ops *ops = u->ops;
  Tensor *h = group_norm(ops, t->norm, x, u->config.norm_num_groups, TRANSFORMER_GROUP_NORM_EPS,
                         ACT_NONE, error);
  if (!h || !advance(&h, project(ops, &t->proj_in, h, NULL, error))) goto fail;
  tensor_reshape(h, x->n, 1, x->h * x->w, x->c);
  for (int k = 0; k < t->n_blocks; k++)
    if (!advance(&h, transformer_block_forward(ops, &t->blocks[k], h, context, t->heads, error)))
      goto fail;
  tensor_reshape(h, x->n, x->h, x->w, x->c);
  if (!advance(&h, project(ops, &t->proj_out, h, x, error))) goto fail;
  return h;

fail:
  tensor_free(h);
  return NULL;
}

/* resnet (+ attention) at index j of a block. */
static Tensor *resnet_attention_forward(LcmUNet *u, const Block *b, int j, const Tensor *x,
                                        const Tensor *temb, const Tensor *context, GError **error) {
  Tensor *h = resnet_forward(u, &b->resnets[j], x, temb, error);
  if (h && j < b->n_attentions &&
      !advance(&h, transformer_forward(u, &b->attentions[j], h, context, error))) {
    tensor_free(h);
    return NULL;
  }
  return h;
}

/* The skip connections of the down path, consumed last-in first-out by
 * the up path. */
typedef struct {
  Tensor *items[CONFIG_MAX_BLOCKS * (CONFIG_MAX_LAYERS + 1)];
  int count;
} SkipStack;

static void skips_clear(SkipStack *s) {
  while (s->count > 0) tensor_free(s->items[--s->count]);
}

/* Runs the down blocks from conv_in's output `x` (taken over by the stack);
 * every intermediate output becomes a skip. */
static gboolean down_forward(LcmUNet *u, Tensor *x, const Tensor *temb, const Tensor *context,
                             SkipStack *skips, GError **error) {
  skips->items[skips->count++] = x;
  for (int i = 0; i < u->config.n_blocks; i++) {
    const Block *b = &u->down[i];
    for (int j = 0; j < b->n_resnets; j++) {
      Tensor *h =
          resnet_attention_forward(u, b, j, skips->items[skips->count - 1], temb, context, error);
      if (!h) return FALSE;
      skips->items[skips->count++] = h;
    }
    if (b->downsampler) {
      Tensor *h =
          conv2d(u->ops, b->downsampler, skips->items[skips->count - 1], NULL, ACT_NONE, error);
      if (!h) return FALSE;
      skips->items[skips->count++] = h;
    }
  }
  return TRUE;
}

static Tensor *mid_forward(LcmUNet *u, const Tensor *x, const Tensor *temb, const Tensor *context,
                           GError **error) {
  const Block *b = &u->mid;
  Tensor *h = resnet_forward(u, &b->resnets[0], x, temb, error);
  for (int j = 0; h && j < b->n_attentions; j++) {
    if (!advance(&h, transformer_forward(u, &b->attentions[j], h, context, error)) ||
        !advance(&h, resnet_forward(u, &b->resnets[j + 1], h, temb, error))) {
      tensor_free(h);
      return NULL;
    }
  }
  return h;
}

/* Runs the up blocks on *x (replaced as it goes), consuming the skips. */
static gboolean up_forward(LcmUNet *u, Tensor **x, const Tensor *temb, const Tensor *context,
                           SkipStack *skips, GError **error) {
  for (int i = 0; i < u->config.n_blocks; i++) {
    const Block *b = &u->up[i];
    for (int j = 0; j < b->n_resnets; j++) {
      Tensor *skip = skips->items[--skips->count];
      Tensor *joined = concat_channels(u->ops, *x, skip, error);
      tensor_free(skip);
      if (!joined) return FALSE;
      tensor_free(*x);
      *x = joined;
      if (!advance(x, resnet_attention_forward(u, b, j, *x, temb, context, error))) return FALSE;
    }
    if (b->upsampler) {
      /* Upsample to the next skip's size: x2, except where an odd size was
       * rounded up on the way down. */
      const Tensor *next_skip = skips->items[skips->count - 1];
      if (!advance(x, upsample_conv(u->ops, b->upsampler, *x, next_skip->h, next_skip->w, error)))
        return FALSE;
    }
  }
  return TRUE;
}

/* What is wrong with a run's conditions for this UNet, or NULL. */
static const char *conditions_problem(const LcmUNet *u, const LcmUNetConditions *cond) {
  gboolean sdxl = u->add_linear_1 != NULL;
  if (cond && cond->timestep_cond && u->config.time_cond_proj_dim == 0)
    return "timestep_cond was given but this UNet has no time_cond_proj (not an LCM UNet)";
  if (sdxl && (!cond || !cond->text_embeds || !cond->time_ids))
    return "this SDXL UNet needs text_embeds and time_ids";
  if (!sdxl && cond && (cond->text_embeds || cond->time_ids))
    return "text_embeds and time_ids were given but this UNet takes none (not an SDXL UNet)";
  return NULL;
}

static gboolean check_run_args(const LcmUNet *u, const float *sample, int batch, int h, int w,
                               const float *context, int context_tokens,
                               const LcmUNetConditions *cond, const float *out, GError **error) {
  const char *problem = NULL;
  if (!sample || !context || !out)
    problem = "sample, context and out must not be NULL";
  else if (batch < 1 || h < 1 || w < 1 || h > MAX_LATENT_SIDE || w > MAX_LATENT_SIDE)
    problem = "batch must be at least 1 and the latent size between 1 and 4096";
  else if (context_tokens < 1 || context_tokens > MAX_LATENT_SIDE)
    problem = "context_tokens must be between 1 and 4096";
  else
    problem = conditions_problem(u, cond);
  if (problem) {
    g_set_error(error, LCM_ERROR, LCM_ERROR_INVALID, "UNet run: %s", problem);
    return FALSE;
  }
  return TRUE;
}

gboolean lcm_unet_run_conditioned(LcmUNet *unet, const float *sample, int batch, int h, int w,
                                  float timestep, const float *context, int context_tokens,
                                  const LcmUNetConditions *conditions, float *out, GError **error) {
  if (!check_run_args(unet, sample, batch, h, w, context, context_tokens, conditions, out, error))
    return FALSE;
  const UNetConfig *c = &unet->config;
  Ops *ops = unet->ops;
  SkipStack skips = {.count = 0};
  float *timesteps = g_new(float, batch);
  for (int b = 0; b < batch; b++) timesteps[b] = timestep;
  Tensor *temb = conditioning(unet, batch, timesteps, conditions, ACT_SILU, NULL, error);
  g_free(timesteps);
  if (!temb) return FALSE;
  Tensor *ctx = tensor_from_rows(ops, context, batch, context_tokens, c->cross_attention_dim);
  Tensor *x = tensor_from_nchw(ops, sample, batch, c->in_channels, h, w);

  gboolean ok = input_allocated(ctx, "context", error) && input_allocated(x, "sample", error) &&
                advance(&x, conv2d(ops, unet->conv_in, x, NULL, ACT_NONE, error));
  if (ok) {
    Tensor *conv_in_out = x;
    x = NULL; /* owned by the skip stack now */
    ok = down_forward(unet, conv_in_out, temb, ctx, &skips, error) &&
         (x = mid_forward(unet, skips.items[skips.count - 1], temb, ctx, error)) &&
         up_forward(unet, &x, temb, ctx, &skips, error) &&
         advance(&x, group_norm(ops, unet->conv_norm_out, x, c->norm_num_groups, c->norm_eps,
                                ACT_SILU, error)) &&
         advance(&x, conv2d(ops, unet->conv_out, x, NULL, ACT_NONE, error));
  }
  if (ok) {
    tensor_to_nchw(x, out);
    ops_weight_cache_store(ops);
    ops_weight_cache_store(unet->embedding_ops);
  }

  skips_clear(&skips);
  tensor_free(x);
  tensor_free(ctx);
  tensor_free(temb);
  return ok;
}

gboolean lcm_unet_run(LcmUNet *unet, const float *sample, int batch, int h, int w, float timestep,
                      const float *context, int context_tokens, const float *timestep_cond,
                      float *out, GError **error) {
  const LcmUNetConditions conditions = {.timestep_cond = timestep_cond};
  return lcm_unet_run_conditioned(unet, sample, batch, h, w, timestep, context, context_tokens,
                                  &conditions, out, error);
}

gboolean lcm_unet_embeddings(LcmUNet *unet, int batch, const float *timesteps,
                             const LcmUNetConditions *conditions, LcmUNetEmbeddings *out,
                             GError **error) {
  memset(out, 0, sizeof *out);
  const char *problem = !timesteps  ? "timesteps must not be NULL"
                        : batch < 1 ? "batch must be at least 1"
                                    : conditions_problem(unet, conditions);
  if (problem) {
    g_set_error(error, LCM_ERROR, LCM_ERROR_INVALID, "UNet embeddings: %s", problem);
    return FALSE;
  }
  Tensor *emb = conditioning(unet, batch, timesteps, conditions, ACT_NONE, out, error);
  if (!emb) {
    lcm_unet_embeddings_clear(out);
    return FALSE;
  }
  tensor_free(emb);
  return TRUE;
}

void lcm_unet_embeddings_clear(LcmUNetEmbeddings *embeddings) {
  g_free(embeddings->time_proj);
  g_free(embeddings->time_embedding);
  g_free(embeddings->add_time_proj);
  g_free(embeddings->add_embeds);
  g_free(embeddings->add_embedding);
  g_free(embeddings->emb);
  memset(embeddings, 0, sizeof *embeddings);
}
