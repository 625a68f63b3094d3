/* Random-weight SD1.5- and SDXL-family models: the module-tree walks, the FLOP counts
 * and the diffusers folder writer. */
#include "model-gen.h"

#include "config.h"
#include "lcm.h"
#include "safetensors.h"

#include <errno.h>
#include <glib/gstdio.h>
#include <math.h>
#include <string.h>

/* Generation works in chunks of this many values, each with its own random
 * stream, so threads can share large tensors and the bytes do not depend on
 * the thread count. */
#define CHUNK_VALUES ((int64_t)1 << 20)
#define EMBEDDING_STD 0.02

/* ---- Configurations ---------------------------------------------------------- */

typedef union {
  ClipConfig clip;
  UNetConfig unet;
  VaeConfig vae;
} NetworkConfig;

/* Reads config_json with the loader's own reader, so a generated model and
 * the FLOP counts follow exactly the configs the loader accepts. */
static gboolean read_config(GenNetwork network, const char *config_json, NetworkConfig *config,
                            GError **error) {
  switch (network) {
  case GEN_TEXT_ENCODER:
    return clip_config_from_json(config_json, "text encoder config.json", &config->clip, error);
  case GEN_TEXT_ENCODER_2:
    return clip_config_from_json(config_json, "text_encoder_2 config.json", &config->clip, error);
  case GEN_UNET:
    return unet_config_from_json(config_json, "UNet config.json", &config->unet, error);
  case GEN_VAE:
    return vae_config_from_json(config_json, "VAE config.json", &config->vae, error);
  case GEN_N_NETWORKS:
    break;
  }
  g_return_val_if_reached(FALSE);
}

/* ---- Module-tree walks ----------------------------------------------------------- */

typedef struct {
  GArray *tensors; /* GenTensor, or NULL when only counting */
  double macs;
} Walk;

static void add_param(Walk *walk, const char *prefix, const char *suffix, GenInit init, int ndims,
                      int64_t d0, int64_t d1, int64_t d2, int64_t d3) {
  if (!walk->tensors) return;
  GenTensor t = {g_strconcat(prefix, suffix, NULL), ndims, {d0, d1, d2, d3}, init};
  g_array_append_val(walk->tensors, t);
}

static void norm(Walk *walk, const char *prefix, int channels) {
  add_param(walk, prefix, ".weight", GEN_INIT_ONES, 1, channels, 0, 0, 0);
  add_param(walk, prefix, ".bias", GEN_INIT_ZEROS, 1, channels, 0, 0, 0);
}

/* A convolution with bias, producing out_h x out_w. */
static void conv(Walk *walk, const char *prefix, int in, int out, int kernel, int out_h,
                 int out_w) {
  add_param(walk, prefix, ".weight", GEN_INIT_FAN_IN, 4, out, in, kernel, kernel);
  add_param(walk, prefix, ".bias", GEN_INIT_ZEROS, 1, out, 0, 0, 0);
  walk->macs += (double)out * in * kernel * kernel * out_h * out_w;
}

/* A linear layer applied to `rows` rows. */
static void linear(Walk *walk, const char *prefix, int in, int out, gboolean bias, int64_t rows) {
  add_param(walk, prefix, ".weight", GEN_INIT_FAN_IN, 2, out, in, 0, 0);
  if (bias) add_param(walk, prefix, ".bias", GEN_INIT_ZEROS, 1, out, 0, 0, 0);
  walk->macs += (double)out * in * rows;
}

/* Names of the q, k, v and output projections. */
static const char *const diffusers_projections[4] = {".to_q", ".to_k", ".to_v", ".to_out.0"};
static const char *const clip_projections[4] = {".q_proj", ".k_proj", ".v_proj", ".out_proj"};

/* Attention of `queries` rows of width `channels` over `keys` rows of width
 * kv_dim: projections plus QK^T and AV (whatever the head count, each is
 * queries x keys x channels multiply-accumulates). */
static void attention(Walk *walk, const char *prefix, const char *const names[4], int channels,
                      int kv_dim, gboolean qkv_bias, int64_t queries, int64_t keys) {
  g_autofree char *q = g_strconcat(prefix, names[0], NULL);
  g_autofree char *k = g_strconcat(prefix, names[1], NULL);
  g_autofree char *v = g_strconcat(prefix, names[2], NULL);
  g_autofree char *out = g_strconcat(prefix, names[3], NULL);
  linear(walk, q, channels, channels, qkv_bias, queries);
  linear(walk, k, kv_dim, channels, qkv_bias, keys);
  linear(walk, v, kv_dim, channels, qkv_bias, keys);
  walk->macs += 2.0 * (double)queries * keys * channels;
  linear(walk, out, channels, channels, TRUE, queries);
}

/* diffusers ResnetBlock2D at h x w; temb_dim 0 = no time embedding (VAE). */
static void resnet(Walk *walk, const char *prefix, int in, int out, int temb_dim, int h, int w) {
  g_autofree char *norm1 = g_strconcat(prefix, ".norm1", NULL);
  g_autofree char *conv1 = g_strconcat(prefix, ".conv1", NULL);
  g_autofree char *time_emb_proj = g_strconcat(prefix, ".time_emb_proj", NULL);
  g_autofree char *norm2 = g_strconcat(prefix, ".norm2", NULL);
  g_autofree char *conv2 = g_strconcat(prefix, ".conv2", NULL);
  g_autofree char *shortcut = g_strconcat(prefix, ".conv_shortcut", NULL);
  norm(walk, norm1, in);
  conv(walk, conv1, in, out, 3, h, w);
  if (temb_dim) linear(walk, time_emb_proj, temb_dim, out, TRUE, 1);
  norm(walk, norm2, out);
  conv(walk, conv2, out, out, 3, h, w);
  if (in != out) conv(walk, shortcut, in, out, 1, h, w);
}

/* proj_in / proj_out of a Transformer2DModel. */
static void projection(Walk *walk, const UNetConfig *u, const char *prefix, int channels, int h,
                       int w) {
  if (u->use_linear_projection)
    linear(walk, prefix, channels, channels, TRUE, (int64_t)h * w);
  else
    conv(walk, prefix, channels, channels, 1, h, w);
}

/* diffusers Transformer2DModel over h x w tokens, cross-attending to the
 * text encoder's LCM_CLIP_TOKENS states. */
static void transformer(Walk *walk, const UNetConfig *u, const char *prefix, int depth,
                        int channels, int h, int w) {
  const int64_t tokens = (int64_t)h * w;
  g_autofree char *norm_name = g_strconcat(prefix, ".norm", NULL);
  g_autofree char *proj_in = g_strconcat(prefix, ".proj_in", NULL);
  g_autofree char *proj_out = g_strconcat(prefix, ".proj_out", NULL);
  norm(walk, norm_name, channels);
  projection(walk, u, proj_in, channels, h, w);
  for (int t = 0; t < depth; t++) {
    g_autofree char *block = g_strdup_printf("%s.transformer_blocks.%d", prefix, t);
    g_autofree char *norm1 = g_strconcat(block, ".norm1", NULL);
    g_autofree char *attn1 = g_strconcat(block, ".attn1", NULL);
    g_autofree char *norm2 = g_strconcat(block, ".norm2", NULL);
    g_autofree char *attn2 = g_strconcat(block, ".attn2", NULL);
    g_autofree char *norm3 = g_strconcat(block, ".norm3", NULL);
    g_autofree char *ff_in = g_strconcat(block, ".ff.net.0.proj", NULL);
    g_autofree char *ff_out = g_strconcat(block, ".ff.net.2", NULL);
    norm(walk, norm1, channels);
    attention(walk, attn1, diffusers_projections, channels, channels, FALSE, tokens, tokens);
    norm(walk, norm2, channels);
    attention(walk, attn2, diffusers_projections, channels, u->cross_attention_dim, FALSE, tokens,
              LCM_CLIP_TOKENS);
    norm(walk, norm3, channels);
    /* GEGLU: one projection to twice the 4x inner width. */
    linear(walk, ff_in, channels, 8 * channels, TRUE, tokens);
    linear(walk, ff_out, 4 * channels, channels, TRUE, tokens);
  }
  projection(walk, u, proj_out, channels, h, w);
}

/* Side lengths of each level: stride-2 3x3 convolutions with padding 1. */
static void level_sizes(int n_levels, int side, int *sides) {
  sides[0] = side;
  for (int i = 1; i < n_levels; i++) sides[i] = (sides[i - 1] + 1) / 2;
}

static void walk_unet(Walk *walk, const UNetConfig *u, int latent_h, int latent_w) {
  const int n = u->n_blocks, c0 = u->block_out_channels[0], temb = 4 * c0;
  int lh[CONFIG_MAX_BLOCKS], lw[CONFIG_MAX_BLOCKS];
  level_sizes(n, latent_h, lh);
  level_sizes(n, latent_w, lw);

  if (u->time_cond_proj_dim)
    linear(walk, "time_embedding.cond_proj", u->time_cond_proj_dim, c0, FALSE, 1);
  linear(walk, "time_embedding.linear_1", c0, temb, TRUE, 1);
  linear(walk, "time_embedding.linear_2", temb, temb, TRUE, 1);
  /* addition_embed_type text_time: the pooled text embedding and the time-id
   * sinusoids through their own TimestepEmbedding */
  if (u->addition_time_embed_dim) {
    linear(walk, "add_embedding.linear_1", u->projection_class_embeddings_input_dim, temb, TRUE, 1);
    linear(walk, "add_embedding.linear_2", temb, temb, TRUE, 1);
  }
  conv(walk, "conv_in", u->in_channels, c0, 3, lh[0], lw[0]);

  int out = c0;
  for (int i = 0; i < n; i++) {
    const int in = out;
    out = u->block_out_channels[i];
    for (int j = 0; j < u->layers_per_block; j++) {
      g_autofree char *res = g_strdup_printf("down_blocks.%d.resnets.%d", i, j);
      g_autofree char *attn = g_strdup_printf("down_blocks.%d.attentions.%d", i, j);
      resnet(walk, res, j == 0 ? in : out, out, temb, lh[i], lw[i]);
      if (u->down_cross_attn[i]) transformer(walk, u, attn, u->down_depth[i][j], out, lh[i], lw[i]);
    }
    if (i < n - 1) {
      g_autofree char *down = g_strdup_printf("down_blocks.%d.downsamplers.0.conv", i);
      conv(walk, down, out, out, 3, lh[i + 1], lw[i + 1]);
    }
  }

  const int deepest = u->block_out_channels[n - 1];
  resnet(walk, "mid_block.resnets.0", deepest, deepest, temb, lh[n - 1], lw[n - 1]);
  if (u->mid_cross_attn) {
    transformer(walk, u, "mid_block.attentions.0", u->mid_depth, deepest, lh[n - 1], lw[n - 1]);
    resnet(walk, "mid_block.resnets.1", deepest, deepest, temb, lh[n - 1], lw[n - 1]);
  }

  /* Up block i runs at level n-1-i; each resnet takes a skip connection:
   * the block's own width, except the last one, which takes the width of the
   * level below (diffusers' input_channel). */
  int prev = deepest;
  for (int i = 0; i < n; i++) {
    const int level = n - 1 - i;
    const int width = u->block_out_channels[level];
    const int skip_last = u->block_out_channels[level > 0 ? level - 1 : 0];
    for (int j = 0; j <= u->layers_per_block; j++) {
      const int skip = j == u->layers_per_block ? skip_last : width;
      g_autofree char *res = g_strdup_printf("up_blocks.%d.resnets.%d", i, j);
      g_autofree char *attn = g_strdup_printf("up_blocks.%d.attentions.%d", i, j);
      resnet(walk, res, (j == 0 ? prev : width) + skip, width, temb, lh[level], lw[level]);
      if (u->up_cross_attn[i])
        transformer(walk, u, attn, u->up_depth[i][j], width, lh[level], lw[level]);
    }
    if (level > 0) {
      g_autofree char *up = g_strdup_printf("up_blocks.%d.upsamplers.0.conv", i);
      conv(walk, up, width, width, 3, lh[level - 1], lw[level - 1]);
    }
    prev = width;
  }

  norm(walk, "conv_norm_out", c0);
  conv(walk, "conv_out", c0, u->out_channels, 3, lh[0], lw[0]);
}

/* AutoencoderKL's mid block: resnet, single-head self-attention, resnet. */
static void vae_mid_block(Walk *walk, const VaeConfig *v, const char *prefix, int h, int w) {
  const int c = v->block_out_channels[v->n_blocks - 1];
  g_autofree char *res0 = g_strconcat(prefix, ".resnets.0", NULL);
  g_autofree char *attn = g_strconcat(prefix, ".attentions.0", NULL);
  g_autofree char *attn_norm = g_strconcat(prefix, ".attentions.0.group_norm", NULL);
  g_autofree char *res1 = g_strconcat(prefix, ".resnets.1", NULL);
  resnet(walk, res0, c, c, 0, h, w);
  if (v->mid_block_add_attention) {
    norm(walk, attn_norm, c);
    attention(walk, attn, diffusers_projections, c, c, TRUE, (int64_t)h * w, (int64_t)h * w);
  }
  resnet(walk, res1, c, c, 0, h, w);
}

/* Encoder of an image_h x image_w image (downsampling pads right and bottom
 * by one: each level halves the side, rounding down), then quant_conv. */
static void walk_vae_encoder(Walk *walk, const VaeConfig *v, int image_h, int image_w) {
  const int n = v->n_blocks;
  int h = image_h, w = image_w;
  conv(walk, "encoder.conv_in", v->in_channels, v->block_out_channels[0], 3, h, w);
  int out = v->block_out_channels[0];
  for (int i = 0; i < n; i++) {
    const int in = out;
    out = v->block_out_channels[i];
    for (int j = 0; j < v->layers_per_block; j++) {
      g_autofree char *res = g_strdup_printf("encoder.down_blocks.%d.resnets.%d", i, j);
      resnet(walk, res, j == 0 ? in : out, out, 0, h, w);
    }
    if (i < n - 1) {
      h /= 2;
      w /= 2;
      g_autofree char *down = g_strdup_printf("encoder.down_blocks.%d.downsamplers.0.conv", i);
      conv(walk, down, out, out, 3, h, w);
    }
  }
  vae_mid_block(walk, v, "encoder.mid_block", h, w);
  norm(walk, "encoder.conv_norm_out", out);
  const int moments = 2 * v->latent_channels; /* mean and log-variance */
  conv(walk, "encoder.conv_out", out, moments, 3, h, w);
  if (v->use_quant_conv) conv(walk, "quant_conv", moments, moments, 1, h, w);
}

/* post_quant_conv, then the decoder from latent_h x latent_w. */
static void walk_vae_decoder(Walk *walk, const VaeConfig *v, int latent_h, int latent_w) {
  const int n = v->n_blocks;
  int h = latent_h, w = latent_w;
  if (v->use_post_quant_conv)
    conv(walk, "post_quant_conv", v->latent_channels, v->latent_channels, 1, h, w);
  int out = v->block_out_channels[n - 1];
  conv(walk, "decoder.conv_in", v->latent_channels, out, 3, h, w);
  vae_mid_block(walk, v, "decoder.mid_block", h, w);
  for (int i = 0; i < n; i++) {
    const int prev = out;
    out = v->block_out_channels[n - 1 - i];
    for (int j = 0; j <= v->layers_per_block; j++) {
      g_autofree char *res = g_strdup_printf("decoder.up_blocks.%d.resnets.%d", i, j);
      resnet(walk, res, j == 0 ? prev : out, out, 0, h, w);
    }
    if (i < n - 1) {
      h *= 2;
      w *= 2;
      g_autofree char *up = g_strdup_printf("decoder.up_blocks.%d.upsamplers.0.conv", i);
      conv(walk, up, out, out, 3, h, w);
    }
  }
  norm(walk, "decoder.conv_norm_out", out);
  conv(walk, "decoder.conv_out", out, v->out_channels, 3, h, w);
}

/* transformers CLIPTextModel over LCM_CLIP_TOKENS tokens (the causal mask is
 * not subtracted from the attention count: the kernels compute it in full);
 * CLIPTextModelWithProjection adds a bias-free projection of the pooled
 * token. */
static void walk_clip(Walk *walk, const ClipConfig *c, gboolean with_projection) {
  const int hidden = c->hidden_size, tokens = LCM_CLIP_TOKENS;
  add_param(walk, "text_model.embeddings.token_embedding", ".weight", GEN_INIT_EMBEDDING, 2,
            c->vocab_size, hidden, 0, 0);
  add_param(walk, "text_model.embeddings.position_embedding", ".weight", GEN_INIT_EMBEDDING, 2,
            c->max_position_embeddings, hidden, 0, 0);
  for (int l = 0; l < c->num_hidden_layers; l++) {
    g_autofree char *layer = g_strdup_printf("text_model.encoder.layers.%d", l);
    g_autofree char *norm1 = g_strconcat(layer, ".layer_norm1", NULL);
    g_autofree char *attn = g_strconcat(layer, ".self_attn", NULL);
    g_autofree char *norm2 = g_strconcat(layer, ".layer_norm2", NULL);
    g_autofree char *fc1 = g_strconcat(layer, ".mlp.fc1", NULL);
    g_autofree char *fc2 = g_strconcat(layer, ".mlp.fc2", NULL);
    norm(walk, norm1, hidden);
    attention(walk, attn, clip_projections, hidden, hidden, TRUE, tokens, tokens);
    norm(walk, norm2, hidden);
    linear(walk, fc1, hidden, c->intermediate_size, TRUE, tokens);
    linear(walk, fc2, c->intermediate_size, hidden, TRUE, tokens);
  }
  norm(walk, "text_model.final_layer_norm", hidden);
  if (with_projection) linear(walk, "text_projection", hidden, c->projection_dim, FALSE, 1);
}

static void free_gen_tensor(gpointer p) {
  g_free(((GenTensor *)p)->name);
}

GArray *model_gen_tensors(GenNetwork network, const char *config_json, GError **error) {
  NetworkConfig config;
  if (!read_config(network, config_json, &config, error)) return NULL;
  Walk walk = {g_array_new(FALSE, FALSE, sizeof(GenTensor)), 0};
  g_array_set_clear_func(walk.tensors, free_gen_tensor);
  /* Sizes only matter for counting; any valid latent size lists the tensors. */
  const int latent_side = 64;
  switch (network) {
  case GEN_TEXT_ENCODER:
  case GEN_TEXT_ENCODER_2:
    walk_clip(&walk, &config.clip, network == GEN_TEXT_ENCODER_2);
    break;
  case GEN_UNET:
    walk_unet(&walk, &config.unet, latent_side, latent_side);
    break;
  case GEN_VAE:
    walk_vae_encoder(&walk, &config.vae, latent_side, latent_side);
    walk_vae_decoder(&walk, &config.vae, latent_side, latent_side);
    break;
  case GEN_N_NETWORKS:
    g_return_val_if_reached(NULL);
  }
  return walk.tensors;
}

gboolean model_gen_stage_flops(GenStage stage, const char *config_json, int latent_h, int latent_w,
                               double *flops, GError **error) {
  static const GenNetwork stage_network[] = {
      [GEN_STAGE_TEXT_ENCODE] = GEN_TEXT_ENCODER, [GEN_STAGE_TEXT_ENCODE_2] = GEN_TEXT_ENCODER_2,
      [GEN_STAGE_UNET_STEP] = GEN_UNET,           [GEN_STAGE_VAE_DECODE] = GEN_VAE,
      [GEN_STAGE_VAE_ENCODE] = GEN_VAE,
  };
  const gboolean text = stage == GEN_STAGE_TEXT_ENCODE || stage == GEN_STAGE_TEXT_ENCODE_2;
  if (!text && (latent_h <= 0 || latent_w <= 0)) {
    g_set_error(error, LCM_ERROR, LCM_ERROR_INVALID, "latent size %dx%d is not positive", latent_h,
                latent_w);
    return FALSE;
  }
  NetworkConfig config;
  if (!read_config(stage_network[stage], config_json, &config, error)) return FALSE;
  Walk walk = {NULL, 0};
  switch (stage) {
  case GEN_STAGE_TEXT_ENCODE:
  case GEN_STAGE_TEXT_ENCODE_2:
    walk_clip(&walk, &config.clip, stage == GEN_STAGE_TEXT_ENCODE_2);
    break;
  case GEN_STAGE_UNET_STEP:
    walk_unet(&walk, &config.unet, latent_h, latent_w);
    break;
  case GEN_STAGE_VAE_DECODE:
    walk_vae_decoder(&walk, &config.vae, latent_h, latent_w);
    break;
  case GEN_STAGE_VAE_ENCODE: {
    const int factor = 1 << (config.vae.n_blocks - 1);
    walk_vae_encoder(&walk, &config.vae, latent_h * factor, latent_w * factor);
    break;
  }
  }
  *flops = 2.0 * walk.macs;
  return TRUE;
}

/* ---- Random values ----------------------------------------------------------- */

static guint64 splitmix64(guint64 x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

/* xorshift64*: fast and plenty for weights that only need to look random. */
static guint64 xorshift64_star(guint64 *state) {
  guint64 x = *state;
  x ^= x >> 12;
  x ^= x << 25;
  x ^= x >> 27;
  *state = x;
  return x * 0x2545F4914F6CDD1Dull;
}

/* IEEE binary16 bits of a float, rounded to nearest even (gradual underflow;
 * magnitudes here are far below the fp16 maximum). */
static guint16 half_from_float(float value) {
  guint32 bits;
  memcpy(&bits, &value, sizeof bits);
  const guint32 sign = (bits >> 16) & 0x8000u;
  const int exponent = (int)((bits >> 23) & 0xffu) - 127 + 15;
  guint32 mantissa = bits & 0x7fffffu;
  if (exponent >= 31) return (guint16)(sign | 0x7c00u);
  int shift = 13;
  guint32 half;
  if (exponent <= 0) {
    if (exponent < -10) return (guint16)sign;
    mantissa |= 0x800000u; /* the implicit leading one becomes explicit */
    shift = 14 - exponent;
    half = mantissa >> shift;
  } else {
    half = ((guint32)exponent << 10) | (mantissa >> shift);
  }
  const guint32 rest = mantissa & ((1u << shift) - 1), halfway = 1u << (shift - 1);
  if (rest > halfway || (rest == halfway && (half & 1u))) half++; /* may carry into the exponent */
  return (guint16)(sign | half);
}

static int64_t gen_numel(const GenTensor *t) {
  int64_t n = 1;
  for (int d = 0; d < t->ndims; d++) n *= t->shape[d];
  return n;
}

/* Half-width of the uniform distribution with the tensor's standard
 * deviation (uniform on [-a, a] has variance a^2 / 3). */
static double uniform_half_width(const GenTensor *t) {
  if (t->init == GEN_INIT_EMBEDDING) return EMBEDDING_STD * sqrt(3.0);
  const double fan_in = (double)gen_numel(t) / (double)t->shape[0];
  return sqrt(3.0 / fan_in);
}

/* Fills values [start, start + count) of tensor `index` of a network. */
static void fill_chunk(const GenTensor *t, guint64 network_seed, guint index, int64_t start,
                       int64_t count, guint16 *dst) {
  if (t->init == GEN_INIT_ZEROS || t->init == GEN_INIT_ONES) {
    const guint16 value = t->init == GEN_INIT_ONES ? 0x3c00u : 0;
    for (int64_t i = 0; i < count; i++) dst[i] = value;
    return;
  }
  guint64 state =
      splitmix64(network_seed ^ splitmix64(((guint64)index << 32) ^ (guint64)(start >> 20)));
  state |= 1; /* xorshift must not start at zero */
  const float scale = (float)(uniform_half_width(t) / 2147483648.0);
  for (int64_t i = 0; i < count; i++) {
    const gint32 r = (gint32)(xorshift64_star(&state) >> 32);
    dst[i] = half_from_float((float)r * scale);
  }
}

typedef struct {
  guint tensor;
  int64_t start, count;
} Chunk;

/* Generates a network's tensors into one fp16 buffer and writes it. */
static gboolean write_network(const char *path, GArray *tensors, guint64 network_seed,
                              GError **error) {
  const guint n = tensors->len;
  int64_t *offsets = g_new(int64_t, n + 1);
  GArray *chunks = g_array_new(FALSE, FALSE, sizeof(Chunk));
  offsets[0] = 0;
  for (guint i = 0; i < n; i++) {
    const int64_t numel = gen_numel(&g_array_index(tensors, GenTensor, i));
    offsets[i + 1] = offsets[i] + numel;
    for (int64_t start = 0; start < numel; start += CHUNK_VALUES) {
      Chunk chunk = {i, start, MIN(CHUNK_VALUES, numel - start)};
      g_array_append_val(chunks, chunk);
    }
  }
  const size_t bytes = (size_t)offsets[n] * sizeof(guint16);
  guint16 *data = g_try_malloc(MAX(bytes, 1));
  gboolean ok = FALSE;
  if (!data) {
    g_set_error(error, LCM_ERROR, LCM_ERROR_IO, "%s: cannot allocate %.2f GB for the weights", path,
                bytes / 1e9);
    goto out;
  }

  const int n_chunks = (int)chunks->len;
#pragma omp parallel for schedule(dynamic)
  for (int c = 0; c < n_chunks; c++) {
    const Chunk *chunk = &g_array_index(chunks, Chunk, c);
    fill_chunk(&g_array_index(tensors, GenTensor, chunk->tensor), network_seed, chunk->tensor,
               chunk->start, chunk->count, data + offsets[chunk->tensor] + chunk->start);
  }

  StWriteTensor *records = g_new(StWriteTensor, n);
  for (guint i = 0; i < n; i++) {
    const GenTensor *t = &g_array_index(tensors, GenTensor, i);
    records[i] = (StWriteTensor){t->name, ST_F16, t->ndims, t->shape, data + offsets[i]};
  }
  GHashTable *metadata = g_hash_table_new(g_str_hash, g_str_equal);
  g_hash_table_insert(metadata, "format", "pt");
  ok = st_write(path, records, n, metadata, error);
  g_hash_table_unref(metadata);
  g_free(records);
out:
  g_free(data);
  g_array_unref(chunks);
  g_free(offsets);
  return ok;
}

/* ---- The diffusers folder ------------------------------------------------------ */

static const char sd15_model_index_json[] =
    "{\n"
    "  \"_class_name\": \"LatentConsistencyModelPipeline\",\n"
    "  \"_diffusers_version\": \"0.27.2\",\n"
    "  \"feature_extractor\": [null, null],\n"
    "  \"image_encoder\": [null, null],\n"
    "  \"requires_safety_checker\": false,\n"
    "  \"safety_checker\": [null, null],\n"
    "  \"scheduler\": [\"diffusers\", \"LCMScheduler\"],\n"
    "  \"text_encoder\": [\"transformers\", \"CLIPTextModel\"],\n"
    "  \"tokenizer\": [\"transformers\", \"CLIPTokenizer\"],\n"
    "  \"unet\": [\"diffusers\", \"UNet2DConditionModel\"],\n"
    "  \"vae\": [\"diffusers\", \"AutoencoderKL\"]\n"
    "}\n";

/* lcm-sdxl's and lcm-ssd-1b's pipeline: both text encoders and tokenizers,
 * empty negative prompts as zeros. */
static const char sdxl_model_index_json[] =
    "{\n"
    "  \"_class_name\": \"StableDiffusionXLPipeline\",\n"
    "  \"_diffusers_version\": \"0.27.2\",\n"
    "  \"feature_extractor\": [null, null],\n"
    "  \"force_zeros_for_empty_prompt\": true,\n"
    "  \"image_encoder\": [null, null],\n"
    "  \"scheduler\": [\"diffusers\", \"LCMScheduler\"],\n"
    "  \"text_encoder\": [\"transformers\", \"CLIPTextModel\"],\n"
    "  \"text_encoder_2\": [\"transformers\", \"CLIPTextModelWithProjection\"],\n"
    "  \"tokenizer\": [\"transformers\", \"CLIPTokenizer\"],\n"
    "  \"tokenizer_2\": [\"transformers\", \"CLIPTokenizer\"],\n"
    "  \"unet\": [\"diffusers\", \"UNet2DConditionModel\"],\n"
    "  \"vae\": [\"diffusers\", \"AutoencoderKL\"]\n"
    "}\n";

/* SDXL's tokenizer_2 pads with "!" (id 0) instead of the end token. */
static const char tokenizer_2_special_tokens_json[] = "{\n"
                                                      "  \"bos_token\": \"<|startoftext|>\",\n"
                                                      "  \"eos_token\": \"<|endoftext|>\",\n"
                                                      "  \"pad_token\": \"!\",\n"
                                                      "  \"unk_token\": \"<|endoftext|>\"\n"
                                                      "}\n";

static const char scheduler_config_json[] = "{\n"
                                            "  \"_class_name\": \"LCMScheduler\",\n"
                                            "  \"_diffusers_version\": \"0.27.2\",\n"
                                            "  \"beta_end\": 0.012,\n"
                                            "  \"beta_schedule\": \"scaled_linear\",\n"
                                            "  \"beta_start\": 0.00085,\n"
                                            "  \"clip_sample\": false,\n"
                                            "  \"clip_sample_range\": 1.0,\n"
                                            "  \"dynamic_thresholding_ratio\": 0.995,\n"
                                            "  \"num_train_timesteps\": 1000,\n"
                                            "  \"original_inference_steps\": 50,\n"
                                            "  \"prediction_type\": \"epsilon\",\n"
                                            "  \"rescale_betas_zero_snr\": false,\n"
                                            "  \"sample_max_value\": 1.0,\n"
                                            "  \"set_alpha_to_one\": true,\n"
                                            "  \"steps_offset\": 1,\n"
                                            "  \"thresholding\": false,\n"
                                            "  \"timestep_scaling\": 10.0,\n"
                                            "  \"timestep_spacing\": \"leading\",\n"
                                            "  \"trained_betas\": null\n"
                                            "}\n";

/* openai/clip-vit-large-patch14's text model, as SD1.5 pipelines ship it. */
static const char sd15_text_encoder_json[] = "{\n"
                                             "  \"architectures\": [\"CLIPTextModel\"],\n"
                                             "  \"attention_dropout\": 0.0,\n"
                                             "  \"bos_token_id\": 0,\n"
                                             "  \"dropout\": 0.0,\n"
                                             "  \"eos_token_id\": 2,\n"
                                             "  \"hidden_act\": \"quick_gelu\",\n"
                                             "  \"hidden_size\": 768,\n"
                                             "  \"initializer_factor\": 1.0,\n"
                                             "  \"initializer_range\": 0.02,\n"
                                             "  \"intermediate_size\": 3072,\n"
                                             "  \"layer_norm_eps\": 1e-05,\n"
                                             "  \"max_position_embeddings\": 77,\n"
                                             "  \"model_type\": \"clip_text_model\",\n"
                                             "  \"num_attention_heads\": 12,\n"
                                             "  \"num_hidden_layers\": 12,\n"
                                             "  \"pad_token_id\": 1,\n"
                                             "  \"projection_dim\": 768,\n"
                                             "  \"torch_dtype\": \"float16\",\n"
                                             "  \"vocab_size\": 49408\n"
                                             "}\n";

/* The SD1.5 UNet with LCM's guidance-embedding input. */
static const char sd15_lcm_unet_json[] =
    "{\n"
    "  \"_class_name\": \"UNet2DConditionModel\",\n"
    "  \"_diffusers_version\": \"0.27.2\",\n"
    "  \"act_fn\": \"silu\",\n"
    "  \"addition_embed_type\": null,\n"
    "  \"attention_head_dim\": 8,\n"
    "  \"block_out_channels\": [320, 640, 1280, 1280],\n"
    "  \"center_input_sample\": false,\n"
    "  \"class_embed_type\": null,\n"
    "  \"conv_in_kernel\": 3,\n"
    "  \"conv_out_kernel\": 3,\n"
    "  \"cross_attention_dim\": 768,\n"
    "  \"down_block_types\": [\"CrossAttnDownBlock2D\", \"CrossAttnDownBlock2D\",\n"
    "                       \"CrossAttnDownBlock2D\", \"DownBlock2D\"],\n"
    "  \"downsample_padding\": 1,\n"
    "  \"dual_cross_attention\": false,\n"
    "  \"flip_sin_to_cos\": true,\n"
    "  \"freq_shift\": 0,\n"
    "  \"in_channels\": 4,\n"
    "  \"layers_per_block\": 2,\n"
    "  \"mid_block_scale_factor\": 1,\n"
    "  \"mid_block_type\": \"UNetMidBlock2DCrossAttn\",\n"
    "  \"norm_eps\": 1e-05,\n"
    "  \"norm_num_groups\": 32,\n"
    "  \"num_attention_heads\": null,\n"
    "  \"only_cross_attention\": false,\n"
    "  \"out_channels\": 4,\n"
    "  \"resnet_time_scale_shift\": \"default\",\n"
    "  \"sample_size\": 64,\n"
    "  \"time_cond_proj_dim\": 256,\n"
    "  \"time_embedding_type\": \"positional\",\n"
    "  \"transformer_layers_per_block\": 1,\n"
    "  \"up_block_types\": [\"UpBlock2D\", \"CrossAttnUpBlock2D\", \"CrossAttnUpBlock2D\",\n"
    "                     \"CrossAttnUpBlock2D\"],\n"
    "  \"upcast_attention\": false,\n"
    "  \"use_linear_projection\": false\n"
    "}\n";

static const char sd15_vae_json[] =
    "{\n"
    "  \"_class_name\": \"AutoencoderKL\",\n"
    "  \"_diffusers_version\": \"0.27.2\",\n"
    "  \"act_fn\": \"silu\",\n"
    "  \"block_out_channels\": [128, 256, 512, 512],\n"
    "  \"down_block_types\": [\"DownEncoderBlock2D\", \"DownEncoderBlock2D\",\n"
    "                       \"DownEncoderBlock2D\", \"DownEncoderBlock2D\"],\n"
    "  \"force_upcast\": true,\n"
    "  \"in_channels\": 3,\n"
    "  \"latent_channels\": 4,\n"
    "  \"layers_per_block\": 2,\n"
    "  \"norm_num_groups\": 32,\n"
    "  \"out_channels\": 3,\n"
    "  \"sample_size\": 512,\n"
    "  \"scaling_factor\": 0.18215,\n"
    "  \"up_block_types\": [\"UpDecoderBlock2D\", \"UpDecoderBlock2D\", \"UpDecoderBlock2D\",\n"
    "                     \"UpDecoderBlock2D\"]\n"
    "}\n";

/* SDXL's second text encoder: the OpenCLIP ViT-bigG/14 text tower. */
static const char sdxl_text_encoder_2_json[] =
    "{\n"
    "  \"architectures\": [\"CLIPTextModelWithProjection\"],\n"
    "  \"attention_dropout\": 0.0,\n"
    "  \"bos_token_id\": 0,\n"
    "  \"dropout\": 0.0,\n"
    "  \"eos_token_id\": 2,\n"
    "  \"hidden_act\": \"gelu\",\n"
    "  \"hidden_size\": 1280,\n"
    "  \"initializer_factor\": 1.0,\n"
    "  \"initializer_range\": 0.02,\n"
    "  \"intermediate_size\": 5120,\n"
    "  \"layer_norm_eps\": 1e-05,\n"
    "  \"max_position_embeddings\": 77,\n"
    "  \"model_type\": \"clip_text_model\",\n"
    "  \"num_attention_heads\": 20,\n"
    "  \"num_hidden_layers\": 32,\n"
    "  \"pad_token_id\": 1,\n"
    "  \"projection_dim\": 1280,\n"
    "  \"torch_dtype\": \"float16\",\n"
    "  \"vocab_size\": 49408\n"
    "}\n";

/* The SDXL UNet (stable-diffusion-xl-base-1.0) with LCM's guidance-embedding
 * input, as latent-consistency/lcm-sdxl publishes it; SSD-1B's differs in the
 * three depth and mid-block lines given by XL_UNET_JSON's arguments. */
#define XL_UNET_JSON(DOWN_DEPTHS, REVERSE_DEPTHS, MID_BLOCK)                                       \
  "{\n"                                                                                            \
  "  \"_class_name\": \"UNet2DConditionModel\",\n"                                                 \
  "  \"_diffusers_version\": \"0.27.2\",\n"                                                        \
  "  \"act_fn\": \"silu\",\n"                                                                      \
  "  \"addition_embed_type\": \"text_time\",\n"                                                    \
  "  \"addition_embed_type_num_heads\": 64,\n"                                                     \
  "  \"addition_time_embed_dim\": 256,\n"                                                          \
  "  \"attention_head_dim\": [5, 10, 20],\n"                                                       \
  "  \"block_out_channels\": [320, 640, 1280],\n"                                                  \
  "  \"center_input_sample\": false,\n"                                                            \
  "  \"class_embed_type\": null,\n"                                                                \
  "  \"class_embeddings_concat\": false,\n"                                                        \
  "  \"conv_in_kernel\": 3,\n"                                                                     \
  "  \"conv_out_kernel\": 3,\n"                                                                    \
  "  \"cross_attention_dim\": 2048,\n"                                                             \
  "  \"cross_attention_norm\": null,\n"                                                            \
  "  \"down_block_types\": [\"DownBlock2D\", \"CrossAttnDownBlock2D\", "                           \
  "\"CrossAttnDownBlock2D\"],\n"                                                                   \
  "  \"downsample_padding\": 1,\n"                                                                 \
  "  \"dual_cross_attention\": false,\n"                                                           \
  "  \"encoder_hid_dim\": null,\n"                                                                 \
  "  \"encoder_hid_dim_type\": null,\n"                                                            \
  "  \"flip_sin_to_cos\": true,\n"                                                                 \
  "  \"freq_shift\": 0,\n"                                                                         \
  "  \"in_channels\": 4,\n"                                                                        \
  "  \"layers_per_block\": 2,\n"                                                                   \
  "  \"mid_block_only_cross_attention\": null,\n"                                                  \
  "  \"mid_block_scale_factor\": 1,\n"                                                             \
  "  \"mid_block_type\": \"" MID_BLOCK "\",\n"                                                     \
  "  \"norm_eps\": 1e-05,\n"                                                                       \
  "  \"norm_num_groups\": 32,\n"                                                                   \
  "  \"num_attention_heads\": null,\n"                                                             \
  "  \"num_class_embeds\": null,\n"                                                                \
  "  \"only_cross_attention\": false,\n"                                                           \
  "  \"out_channels\": 4,\n"                                                                       \
  "  \"projection_class_embeddings_input_dim\": 2816,\n"                                           \
  "  \"resnet_out_scale_factor\": 1.0,\n"                                                          \
  "  \"resnet_skip_time_act\": false,\n"                                                           \
  "  \"resnet_time_scale_shift\": \"default\",\n"                                                  \
  "  \"reverse_transformer_layers_per_block\": " REVERSE_DEPTHS ",\n"                              \
  "  \"sample_size\": 128,\n"                                                                      \
  "  \"time_cond_proj_dim\": 256,\n"                                                               \
  "  \"time_embedding_act_fn\": null,\n"                                                           \
  "  \"time_embedding_dim\": null,\n"                                                              \
  "  \"time_embedding_type\": \"positional\",\n"                                                   \
  "  \"timestep_post_act\": null,\n"                                                               \
  "  \"transformer_layers_per_block\": " DOWN_DEPTHS ",\n"                                         \
  "  \"up_block_types\": [\"CrossAttnUpBlock2D\", \"CrossAttnUpBlock2D\", \"UpBlock2D\"],\n"       \
  "  \"upcast_attention\": null,\n"                                                                \
  "  \"use_linear_projection\": true\n"                                                            \
  "}\n"

/* SDXL: depths 1, 2, 10 mirrored on the way up, a cross-attention mid block. */
static const char sdxl_lcm_unet_json[] =
    XL_UNET_JSON("[1, 2, 10]", "null", "UNetMidBlock2DCrossAttn");
/* SSD-1B: the distilled asymmetric depths and a mid block of one resnet. */
static const char ssd1b_lcm_unet_json[] =
    XL_UNET_JSON("[1, [2, 2], [4, 4]]", "[[4, 4, 10], [2, 1, 1], [1, 1, 1]]", "UNetMidBlock2D");

/* SDXL's VAE: SD's architecture with its own scaling factor. */
static const char sdxl_vae_json[] =
    "{\n"
    "  \"_class_name\": \"AutoencoderKL\",\n"
    "  \"_diffusers_version\": \"0.27.2\",\n"
    "  \"act_fn\": \"silu\",\n"
    "  \"block_out_channels\": [128, 256, 512, 512],\n"
    "  \"down_block_types\": [\"DownEncoderBlock2D\", \"DownEncoderBlock2D\",\n"
    "                       \"DownEncoderBlock2D\", \"DownEncoderBlock2D\"],\n"
    "  \"force_upcast\": true,\n"
    "  \"in_channels\": 3,\n"
    "  \"latent_channels\": 4,\n"
    "  \"layers_per_block\": 2,\n"
    "  \"norm_num_groups\": 32,\n"
    "  \"out_channels\": 3,\n"
    "  \"sample_size\": 1024,\n"
    "  \"scaling_factor\": 0.13025,\n"
    "  \"up_block_types\": [\"UpDecoderBlock2D\", \"UpDecoderBlock2D\", \"UpDecoderBlock2D\",\n"
    "                     \"UpDecoderBlock2D\"]\n"
    "}\n";

static const char *const family_names[] = {
    [GEN_FAMILY_SD15] = "sd15",
    [GEN_FAMILY_SDXL] = "sdxl",
    [GEN_FAMILY_SSD1B] = "ssd1b",
};

const GenConfigs *model_gen_family_configs(GenFamily family) {
  /* SDXL's first text encoder is SD1.5's CLIP ViT-L/14 text tower. */
  static const GenConfigs configs[] = {
      [GEN_FAMILY_SD15] = {sd15_text_encoder_json, NULL, sd15_lcm_unet_json, sd15_vae_json},
      [GEN_FAMILY_SDXL] = {sd15_text_encoder_json, sdxl_text_encoder_2_json, sdxl_lcm_unet_json,
                           sdxl_vae_json},
      [GEN_FAMILY_SSD1B] = {sd15_text_encoder_json, sdxl_text_encoder_2_json, ssd1b_lcm_unet_json,
                            sdxl_vae_json},
  };
  g_return_val_if_fail((size_t)family < G_N_ELEMENTS(configs), NULL);
  return &configs[family];
}

const char *model_gen_family_name(GenFamily family) {
  g_return_val_if_fail((size_t)family < G_N_ELEMENTS(family_names), NULL);
  return family_names[family];
}

gboolean model_gen_family_parse(const char *name, GenFamily *out, GError **error) {
  for (size_t i = 0; i < G_N_ELEMENTS(family_names); i++) {
    if (g_ascii_strcasecmp(name, family_names[i]) == 0) {
      *out = (GenFamily)i;
      return TRUE;
    }
  }
  g_set_error(error, LCM_ERROR, LCM_ERROR_INVALID,
              "unknown model family '%s' (sd15, sdxl or ssd1b)", name);
  return FALSE;
}

const char *model_gen_config_of(const GenConfigs *configs, GenNetwork network) {
  switch (network) {
  case GEN_TEXT_ENCODER:
    return configs->text_encoder;
  case GEN_TEXT_ENCODER_2:
    return configs->text_encoder_2;
  case GEN_UNET:
    return configs->unet;
  case GEN_VAE:
    return configs->vae;
  case GEN_N_NETWORKS:
    break;
  }
  return NULL;
}

const char *model_gen_folder(GenNetwork network) {
  static const char *const folders[] = {
      [GEN_TEXT_ENCODER] = "text_encoder",
      [GEN_TEXT_ENCODER_2] = "text_encoder_2",
      [GEN_UNET] = "unet",
      [GEN_VAE] = "vae",
  };
  g_return_val_if_fail((size_t)network < G_N_ELEMENTS(folders), NULL);
  return folders[network];
}

const char *model_gen_weights_file(GenNetwork network) {
  switch (network) {
  case GEN_TEXT_ENCODER:
    return "text_encoder/model.fp16.safetensors";
  case GEN_TEXT_ENCODER_2:
    return "text_encoder_2/model.fp16.safetensors";
  case GEN_UNET:
    return "unet/diffusion_pytorch_model.fp16.safetensors";
  case GEN_VAE:
    return "vae/diffusion_pytorch_model.fp16.safetensors";
  case GEN_N_NETWORKS:
    break;
  }
  return NULL;
}

/* Writes dir/relative (making its folder), naming the file on failure. */
static gboolean write_text(const char *dir, const char *relative, const char *text, gsize len,
                           GError **error) {
  g_autofree char *path = g_build_filename(dir, relative, NULL);
  g_autofree char *folder = g_path_get_dirname(path);
  if (g_mkdir_with_parents(folder, 0755) != 0) {
    g_set_error(error, LCM_ERROR, LCM_ERROR_IO, "%s: cannot create the folder (%s)", folder,
                g_strerror(errno));
    return FALSE;
  }
  GError *io_error = NULL;
  if (!g_file_set_contents(path, text, (gssize)len, &io_error)) {
    g_set_error(error, LCM_ERROR, LCM_ERROR_IO, "%s", io_error->message);
    g_error_free(io_error);
    return FALSE;
  }
  return TRUE;
}

/* Copies a file of the project's data folder into the model. */
static gboolean copy_data_file(const char *dir, const char *data_relative,
                               const char *model_relative, GError **error) {
  g_autofree char *source = lcm_find_data_file(data_relative);
  if (!source) {
    g_set_error(error, LCM_ERROR, LCM_ERROR_MISSING,
                "%s is not in the project's data folder (set GIMP_LCM_DATADIR)", data_relative);
    return FALSE;
  }
  g_autofree char *contents = NULL;
  gsize len = 0;
  GError *io_error = NULL;
  if (!g_file_get_contents(source, &contents, &len, &io_error)) {
    g_set_error(error, LCM_ERROR, LCM_ERROR_IO, "%s", io_error->message);
    g_error_free(io_error);
    return FALSE;
  }
  return write_text(dir, model_relative, contents, len, error);
}

/* The tokenizer folder `folder` from the project's CLIP vocabulary. */
static gboolean write_tokenizer(const char *dir, const char *folder, GError **error) {
  g_autofree char *vocab = g_build_filename(folder, "vocab.json", NULL);
  g_autofree char *merges = g_build_filename(folder, "merges.txt", NULL);
  return copy_data_file(dir, "clip-tokenizer/vocab.json", vocab, error) &&
         copy_data_file(dir, "clip-tokenizer/merges.txt", merges, error);
}

gboolean model_gen_make_model(const char *dir, const GenConfigs *configs, guint64 seed,
                              GError **error) {
  const gboolean xl = configs->text_encoder_2 != NULL;
  const char *model_index = xl ? sdxl_model_index_json : sd15_model_index_json;
  if (!write_text(dir, "model_index.json", model_index, strlen(model_index), error) ||
      !write_text(dir, "scheduler/scheduler_config.json", scheduler_config_json,
                  strlen(scheduler_config_json), error) ||
      !write_tokenizer(dir, "tokenizer", error))
    return FALSE;
  if (xl &&
      !(write_tokenizer(dir, "tokenizer_2", error) &&
        write_text(dir, "tokenizer_2/special_tokens_map.json", tokenizer_2_special_tokens_json,
                   strlen(tokenizer_2_special_tokens_json), error)))
    return FALSE;
  for (GenNetwork network = 0; network < GEN_N_NETWORKS; network++) {
    const char *text = model_gen_config_of(configs, network);
    if (!text) continue;
    g_autofree char *config_file = g_build_filename(model_gen_folder(network), "config.json", NULL);
    if (!write_text(dir, config_file, text, strlen(text), error)) return FALSE;
    GArray *tensors = model_gen_tensors(network, text, error);
    if (!tensors) {
      g_prefix_error(error, "%s/%s: ", dir, config_file);
      return FALSE;
    }
    g_autofree char *path = g_build_filename(dir, model_gen_weights_file(network), NULL);
    const gboolean ok = write_network(path, tensors, splitmix64(seed + network), error);
    g_array_unref(tensors);
    if (!ok) return FALSE;
  }
  return TRUE;
}
