/* The SD1.5 VAE: diffusers AutoencoderKL (0.27) on the op layer.
 *
 * The structs mirror diffusers' module tree, so every weight is found under
 * the module path it has there. Activations stay NHWC from input to output;
 * each stage takes ownership of its input and frees it as soon as it is no
 * longer needed, which keeps the peak memory of a 512x512 decode low.
 */
#include "config.h"
#include "lcm.h"
#include "model.h"
#include "ops.h"

#include <string.h>

/* Every GroupNorm of AutoencoderKL uses eps 1e-6. */
#define VAE_NORM_EPS 1e-6f
/* DiagonalGaussianDistribution clamps the log-variance to this range. */
#define VAE_LOGVAR_MIN -30.0f
#define VAE_LOGVAR_MAX 20.0f

/* ResnetBlock2D without a time embedding. */
typedef struct {
  Norm *norm1, *norm2;
  Conv2d *conv1, *conv2;
  Conv2d *conv_shortcut; /* 1x1, only when the channel count changes */
} VaeResnet;

/* The mid-block Attention: one head as wide as the channels, + residual. */
typedef struct {
  Norm *group_norm;
  Linear *to_qkv; /* to_q, to_k and to_v as one matmul */
  Linear *to_out;
} VaeAttention;

/* A DownEncoderBlock2D or UpDecoderBlock2D. */
typedef struct {
  int n_resnets;
  VaeResnet *resnets;
  Conv2d *downsample;     /* encoder: downsamplers.0.conv; NULL on the last level */
  UpsampleConv *upsample; /* decoder: upsamplers.0.conv; NULL on the last level */
} VaeLevel;

/* Encoder or Decoder: conv_in, the levels, the mid block and the output head. */
typedef struct {
  Conv2d *conv_in;
  int n_levels;
  VaeLevel levels[CONFIG_MAX_BLOCKS];
  VaeResnet mid_resnets[2];
  VaeAttention *mid_attention; /* NULL when mid_block_add_attention is off */
  Norm *conv_norm_out;
  Conv2d *conv_out;
} VaeCoder;

struct LcmVae {
  Ops *ops;
  VaeConfig config;
  VaeCoder encoder, decoder;
  Conv2d *quant_conv, *post_quant_conv;
};

/* ---- Loading ---------------------------------------------------------------- */

static Conv2d *load_conv(Ops *ops, const Weights *w, const char *prefix, const char *name,
                         int in_ch, int out_ch, int kernel, int stride, GError **error) {
  g_autofree char *path = g_strdup_printf("%s.%s", prefix, name);
  return conv2d_load(ops, w, path, in_ch, out_ch, kernel, stride, TRUE, error);
}

static Norm *load_norm(Ops *ops, const Weights *w, const char *prefix, const char *name,
                       int channels, GError **error) {
  g_autofree char *path = g_strdup_printf("%s.%s", prefix, name);
  return norm_load(ops, w, path, channels, error);
}

static void resnet_clear(VaeResnet *r) {
  g_clear_pointer(&r->norm1, norm_free);
  g_clear_pointer(&r->norm2, norm_free);
  g_clear_pointer(&r->conv1, conv2d_free);
  g_clear_pointer(&r->conv2, conv2d_free);
  g_clear_pointer(&r->conv_shortcut, conv2d_free);
}

static gboolean resnet_load(VaeResnet *r, Ops *ops, const Weights *w, const char *prefix, int in_ch,
                            int out_ch, GError **error) {
  return (r->norm1 = load_norm(ops, w, prefix, "norm1", in_ch, error)) &&
         (r->conv1 = load_conv(ops, w, prefix, "conv1", in_ch, out_ch, 3, 1, error)) &&
         (r->norm2 = load_norm(ops, w, prefix, "norm2", out_ch, error)) &&
         (r->conv2 = load_conv(ops, w, prefix, "conv2", out_ch, out_ch, 3, 1, error)) &&
         (in_ch == out_ch || (r->conv_shortcut = load_conv(ops, w, prefix, "conv_shortcut", in_ch,
                                                           out_ch, 1, 1, error)));
}

static void attention_free(VaeAttention *a) {
  if (!a) return;
  g_clear_pointer(&a->group_norm, norm_free);
  g_clear_pointer(&a->to_qkv, linear_free);
  g_clear_pointer(&a->to_out, linear_free);
  g_free(a);
}

static VaeAttention *attention_load(Ops *ops, const Weights *w, const char *prefix, int channels,
                                    GError **error) {
  g_autofree char *to_q = g_strdup_printf("%s.to_q", prefix);
  g_autofree char *to_k = g_strdup_printf("%s.to_k", prefix);
  g_autofree char *to_v = g_strdup_printf("%s.to_v", prefix);
  g_autofree char *to_out = g_strdup_printf("%s.to_out.0", prefix);
  const char *const qkv[3] = {to_q, to_k, to_v};
  VaeAttention *a = g_new0(VaeAttention, 1);
  if ((a->group_norm = load_norm(ops, w, prefix, "group_norm", channels, error)) &&
      (a->to_qkv = linear_load_fused(ops, w, qkv, 3, channels, channels, TRUE, error)) &&
      (a->to_out = linear_load(ops, w, to_out, channels, channels, TRUE, error)))
    return a;
  attention_free(a);
  return NULL;
}

static void coder_clear(VaeCoder *coder) {
  g_clear_pointer(&coder->conv_in, conv2d_free);
  for (int i = 0; i < coder->n_levels; i++) {
    VaeLevel *level = &coder->levels[i];
    for (int j = 0; j < level->n_resnets; j++) resnet_clear(&level->resnets[j]);
    g_clear_pointer(&level->resnets, g_free);
    g_clear_pointer(&level->downsample, conv2d_free);
    g_clear_pointer(&level->upsample, upsample_conv_free);
  }
  for (int j = 0; j < 2; j++) resnet_clear(&coder->mid_resnets[j]);
  g_clear_pointer(&coder->mid_attention, attention_free);
  g_clear_pointer(&coder->conv_norm_out, norm_free);
  g_clear_pointer(&coder->conv_out, conv2d_free);
}

/* The mid block (resnet, attention, resnet) and the GroupNorm + conv_out head,
 * identical in encoder and decoder apart from their channel counts. */
static gboolean coder_load_mid_and_head(VaeCoder *coder, Ops *ops, const Weights *w,
                                        const char *prefix, const VaeConfig *config, int mid_ch,
                                        int head_ch, int out_ch, GError **error) {
  for (int j = 0; j < 2; j++) {
    g_autofree char *path = g_strdup_printf("%s.mid_block.resnets.%d", prefix, j);
    if (!resnet_load(&coder->mid_resnets[j], ops, w, path, mid_ch, mid_ch, error)) return FALSE;
  }
  if (config->mid_block_add_attention) {
    g_autofree char *path = g_strdup_printf("%s.mid_block.attentions.0", prefix);
    if (!(coder->mid_attention = attention_load(ops, w, path, mid_ch, error))) return FALSE;
  }
  return (coder->conv_norm_out = load_norm(ops, w, prefix, "conv_norm_out", head_ch, error)) &&
         (coder->conv_out = load_conv(ops, w, prefix, "conv_out", head_ch, out_ch, 3, 1, error));
}

static gboolean encoder_load(VaeCoder *enc, Ops *ops, const Weights *w, const VaeConfig *config,
                             GError **error) {
  const int *ch = config->block_out_channels;
  const int n = config->n_blocks;
  if (!(enc->conv_in =
            load_conv(ops, w, "encoder", "conv_in", config->in_channels, ch[0], 3, 1, error)))
    return FALSE;
  enc->n_levels = n;
  for (int i = 0; i < n; i++) {
    VaeLevel *level = &enc->levels[i];
    int in_ch = i == 0 ? ch[0] : ch[i - 1];
    level->n_resnets = config->layers_per_block;
    level->resnets = g_new0(VaeResnet, level->n_resnets);
    for (int j = 0; j < level->n_resnets; j++) {
      g_autofree char *path = g_strdup_printf("encoder.down_blocks.%d.resnets.%d", i, j);
      if (!resnet_load(&level->resnets[j], ops, w, path, j == 0 ? in_ch : ch[i], ch[i], error))
        return FALSE;
    }
    if (i < n - 1) {
      g_autofree char *path = g_strdup_printf("encoder.down_blocks.%d.downsamplers.0", i);
      if (!(level->downsample = load_conv(ops, w, path, "conv", ch[i], ch[i], 3, 2, error)))
        return FALSE;
      /* Downsample2D(padding=0) pads (0, 1, 0, 1): right and bottom only. */
      conv2d_set_padding(level->downsample, 0, 0, 1, 1);
    }
  }
  return coder_load_mid_and_head(enc, ops, w, "encoder", config, ch[n - 1], ch[n - 1],
                                 2 * config->latent_channels, error);
}

static gboolean decoder_load(VaeCoder *dec, Ops *ops, const Weights *w, const VaeConfig *config,
                             GError **error) {
  const int n = config->n_blocks;
  int ch[CONFIG_MAX_BLOCKS] = {0}; /* up_blocks run over block_out_channels reversed */
  for (int i = 0; i < n; i++) ch[i] = config->block_out_channels[n - 1 - i];
  if (!(dec->conv_in =
            load_conv(ops, w, "decoder", "conv_in", config->latent_channels, ch[0], 3, 1, error)))
    return FALSE;
  dec->n_levels = n;
  for (int i = 0; i < n; i++) {
    VaeLevel *level = &dec->levels[i];
    int in_ch = i == 0 ? ch[0] : ch[i - 1];
    level->n_resnets = config->layers_per_block + 1;
    level->resnets = g_new0(VaeResnet, level->n_resnets);
    for (int j = 0; j < level->n_resnets; j++) {
      g_autofree char *path = g_strdup_printf("decoder.up_blocks.%d.resnets.%d", i, j);
      if (!resnet_load(&level->resnets[j], ops, w, path, j == 0 ? in_ch : ch[i], ch[i], error))
        return FALSE;
    }
    if (i < n - 1) {
      g_autofree char *path = g_strdup_printf("decoder.up_blocks.%d.upsamplers.0.conv", i);
      if (!(level->upsample = upsample_conv_load(ops, w, path, ch[i], ch[i], TRUE, FALSE, error)))
        return FALSE;
    }
  }
  return coder_load_mid_and_head(dec, ops, w, "decoder", config, ch[0], ch[n - 1],
                                 config->out_channels, error);
}

/* GroupNorm needs every channel count to split into the configured groups. */
static gboolean check_config(const VaeConfig *c, const char *source, GError **error) {
  gboolean ok = c->n_blocks >= 1 && c->n_blocks <= CONFIG_MAX_BLOCKS && c->in_channels > 0 &&
                c->out_channels > 0 && c->latent_channels > 0 && c->layers_per_block > 0 &&
                c->norm_num_groups > 0;
  for (int i = 0; ok && i < c->n_blocks; i++)
    ok = c->block_out_channels[i] > 0 && c->block_out_channels[i] % c->norm_num_groups == 0;
  if (!ok)
    g_set_error(error, LCM_ERROR, LCM_ERROR_FORMAT,
                "%s: unsupported VAE configuration (%d levels, %d layers per block, %d groups "
                "that must divide every block_out_channels entry)",
                source, c->n_blocks, c->layers_per_block, c->norm_num_groups);
  return ok;
}

LcmVae *lcm_vae_load(LcmModel *model, LcmPrecision precision, GError **error) {
  g_return_val_if_fail(model != NULL, NULL);
  Weights *w = model_weights(model, COMPONENT_VAE, error);
  if (!w) return NULL;
  LcmVae *vae = g_new0(LcmVae, 1);
  if (!model_vae_config(model, &vae->config, error) ||
      !check_config(&vae->config, weights_path(w), error) ||
      !(vae->ops = ops_new(precision, error))) {
    lcm_vae_free(vae);
    return NULL;
  }
  ops_use_weight_cache(vae->ops, "vae", w);
  if (!encoder_load(&vae->encoder, vae->ops, w, &vae->config, error) ||
      !decoder_load(&vae->decoder, vae->ops, w, &vae->config, error) ||
      (vae->config.use_quant_conv &&
       !(vae->quant_conv = conv2d_load(vae->ops, w, "quant_conv", 2 * vae->config.latent_channels,
                                       2 * vae->config.latent_channels, 1, 1, TRUE, error))) ||
      (vae->config.use_post_quant_conv &&
       !(vae->post_quant_conv =
             conv2d_load(vae->ops, w, "post_quant_conv", vae->config.latent_channels,
                         vae->config.latent_channels, 1, 1, TRUE, error)))) {
    lcm_vae_free(vae);
    return NULL;
  }
  ops_load_done(vae->ops);
  return vae;
}

void lcm_vae_free(LcmVae *vae) {
  if (!vae) return;
  coder_clear(&vae->encoder);
  coder_clear(&vae->decoder);
  g_clear_pointer(&vae->quant_conv, conv2d_free);
  g_clear_pointer(&vae->post_quant_conv, conv2d_free);
  g_clear_pointer(&vae->ops, ops_free);
  g_free(vae);
}

float lcm_vae_scaling_factor(const LcmVae *vae) {
  return vae->config.scaling_factor;
}

int lcm_vae_latent_channels(const LcmVae *vae) {
  return vae->config.latent_channels;
}

void lcm_vae_set_attention_chunk(LcmVae *vae, int rows) {
  ops_set_attention_chunk(vae->ops, rows);
}

void lcm_vae_set_cancel(LcmVae *vae, volatile gint *cancel) {
  ops_set_cancel(vae->ops, cancel);
}

/* ---- Forward ----------------------------------------------------------------
 * Each stage takes ownership of x (freed on success and on failure) and
 * returns a new tensor, or NULL with error set. */

static Tensor *conv_step(Ops *ops, const Conv2d *conv, Tensor *x, GError **error) {
  Tensor *y = conv2d(ops, conv, x, NULL, ACT_NONE, error);
  tensor_free(x);
  return y;
}

/* GroupNorm + SiLU, then a convolution. */
static Tensor *norm_silu_conv(Ops *ops, const Norm *norm, const Conv2d *conv, int groups,
                              const Tensor *x, const Tensor *residual, GError **error) {
  Tensor *h = group_norm(ops, norm, x, groups, VAE_NORM_EPS, ACT_SILU, error);
  if (!h) return NULL;
  Tensor *y = conv2d(ops, conv, h, residual, ACT_NONE, error);
  tensor_free(h);
  return y;
}

static Tensor *resnet_forward(Ops *ops, const VaeResnet *r, int groups, Tensor *x, GError **error) {
  if (!ops_check_cancel(ops, error)) {
    tensor_free(x);
    return NULL;
  }
  Tensor *shortcut = NULL, *out = NULL;
  Tensor *h = norm_silu_conv(ops, r->norm1, r->conv1, groups, x, NULL, error);
  if (h && r->conv_shortcut) {
    /* The shortcut replaces x, so x can go before conv2 runs. */
    shortcut = conv2d(ops, r->conv_shortcut, x, NULL, ACT_NONE, error);
    g_clear_pointer(&x, tensor_free);
  }
  if (h && (shortcut || x))
    out = norm_silu_conv(ops, r->norm2, r->conv2, groups, h, shortcut ? shortcut : x, error);
  tensor_free(h);
  tensor_free(shortcut);
  tensor_free(x);
  return out;
}

/* x + to_out(softmax(q k^T / sqrt(C)) v) over the h*w pixels as tokens. */
static Tensor *attention_forward(Ops *ops, const VaeAttention *a, int groups, Tensor *x,
                                 GError **error) {
  Tensor *qkv = NULL, *attended = NULL, *out = NULL;
  Tensor *normed = group_norm(ops, a->group_norm, x, groups, VAE_NORM_EPS, ACT_NONE, error);
  if (normed) qkv = linear(ops, a->to_qkv, normed, NULL, ACT_NONE, error);
  tensor_free(normed);
  if (qkv) attended = attention_fused_qkv(ops, qkv, 1, FALSE, error);
  tensor_free(qkv);
  if (attended) {
    tensor_reshape(attended, x->n, x->h, x->w, x->c);
    out = linear(ops, a->to_out, attended, x, ACT_NONE, error);
    tensor_free(attended);
  }
  tensor_free(x);
  return out;
}

static Tensor *level_resnets_forward(Ops *ops, const VaeLevel *level, int groups, Tensor *x,
                                     GError **error) {
  for (int j = 0; x && j < level->n_resnets; j++)
    x = resnet_forward(ops, &level->resnets[j], groups, x, error);
  return x;
}

static Tensor *mid_block_forward(Ops *ops, const VaeCoder *coder, int groups, Tensor *x,
                                 GError **error) {
  x = resnet_forward(ops, &coder->mid_resnets[0], groups, x, error);
  if (x && coder->mid_attention) x = attention_forward(ops, coder->mid_attention, groups, x, error);
  if (x) x = resnet_forward(ops, &coder->mid_resnets[1], groups, x, error);
  return x;
}

static Tensor *head_forward(Ops *ops, const VaeCoder *coder, int groups, Tensor *x,
                            GError **error) {
  Tensor *y = norm_silu_conv(ops, coder->conv_norm_out, coder->conv_out, groups, x, NULL, error);
  tensor_free(x);
  return y;
}

static Tensor *encoder_forward(Ops *ops, const VaeCoder *enc, int groups, Tensor *x,
                               GError **error) {
  x = conv_step(ops, enc->conv_in, x, error);
  for (int i = 0; x && i < enc->n_levels; i++) {
    const VaeLevel *level = &enc->levels[i];
    x = level_resnets_forward(ops, level, groups, x, error);
    if (x && level->downsample) x = conv_step(ops, level->downsample, x, error);
  }
  if (x) x = mid_block_forward(ops, enc, groups, x, error);
  if (x) x = head_forward(ops, enc, groups, x, error);
  return x;
}

static Tensor *decoder_forward(Ops *ops, const VaeCoder *dec, int groups, Tensor *x,
                               GError **error) {
  x = conv_step(ops, dec->conv_in, x, error);
  if (x) x = mid_block_forward(ops, dec, groups, x, error);
  for (int i = 0; x && i < dec->n_levels; i++) {
    const VaeLevel *level = &dec->levels[i];
    x = level_resnets_forward(ops, level, groups, x, error);
    if (x && level->upsample) {
      Tensor *up = upsample_conv(ops, level->upsample, x, 2 * x->h, 2 * x->w, error);
      tensor_free(x);
      x = up;
    }
  }
  if (x) x = head_forward(ops, dec, groups, x, error);
  return x;
}

/* Sizes are in image pixels; `multiple` is what the encoder's downsampling needs. */
#define VAE_MAX_IMAGE_SIDE 16384

static gboolean check_size(const char *what, int batch, gint64 h, gint64 w, int multiple,
                           GError **error) {
  if (batch >= 1 && h >= 1 && w >= 1 && h <= VAE_MAX_IMAGE_SIDE && w <= VAE_MAX_IMAGE_SIDE &&
      h % multiple == 0 && w % multiple == 0)
    return TRUE;
  g_set_error(error, LCM_ERROR, LCM_ERROR_INVALID,
              "VAE %s: a batch of %d images of %" G_GINT64_FORMAT "x%" G_GINT64_FORMAT
              " pixels is not supported (the batch must be at least 1 and each side a multiple "
              "of %d between %d and %d)",
              what, batch, w, h, multiple, multiple, VAE_MAX_IMAGE_SIDE);
  return FALSE;
}

gboolean lcm_vae_encode(LcmVae *vae, const float *image, int batch, int h, int w, float *mean,
                        float *logvar, GError **error) {
  g_return_val_if_fail(vae && image && mean && logvar, FALSE);
  const int factor = 1 << (vae->config.n_blocks - 1);
  if (!check_size("encode", batch, h, w, factor, error)) return FALSE;
  Tensor *x = tensor_from_nchw(vae->ops, image, batch, vae->config.in_channels, h, w);
  x = encoder_forward(vae->ops, &vae->encoder, vae->config.norm_num_groups, x, error);
  if (x && vae->quant_conv) x = conv_step(vae->ops, vae->quant_conv, x, error);
  if (!x) return FALSE;

  /* moments: [batch, 2*latent, h/f, w/f]; mean is the first half of the channels. */
  const int latent = vae->config.latent_channels;
  const size_t plane = (size_t)x->h * x->w, half = latent * plane;
  float *moments = g_new(float, tensor_numel(x));
  tensor_to_nchw(x, moments);
  tensor_free(x);
  for (int b = 0; b < batch; b++) {
    const float *src = moments + 2 * half * b;
    memcpy(mean + half * b, src, half * sizeof(float));
    for (size_t i = 0; i < half; i++)
      logvar[half * b + i] = CLAMP(src[half + i], VAE_LOGVAR_MIN, VAE_LOGVAR_MAX);
  }
  g_free(moments);
  ops_weight_cache_store(vae->ops);
  return TRUE;
}

gboolean lcm_vae_decode(LcmVae *vae, const float *z, int batch, int h, int w, float *image,
                        GError **error) {
  g_return_val_if_fail(vae && z && image, FALSE);
  const int factor = 1 << (vae->config.n_blocks - 1);
  if (!check_size("decode", batch, (gint64)h * factor, (gint64)w * factor, factor, error))
    return FALSE;
  Tensor *x = tensor_from_nchw(vae->ops, z, batch, vae->config.latent_channels, h, w);
  if (vae->post_quant_conv) x = conv_step(vae->ops, vae->post_quant_conv, x, error);
  if (x) x = decoder_forward(vae->ops, &vae->decoder, vae->config.norm_num_groups, x, error);
  if (!x) return FALSE;
  tensor_to_nchw(x, image);
  tensor_free(x);
  ops_weight_cache_store(vae->ops);
  return TRUE;
}
