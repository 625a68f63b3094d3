/* Network configurations: read from diffusers / transformers config.json, or
 * inferred from a single-file checkpoint's tensor shapes. */
#pragma once

#include "lcm.h"
#include "weights.h"
#include <glib.h>

#define CONFIG_MAX_BLOCKS 8
/* Bounds layers_per_block (SD1.5 and SDXL have 2; up blocks have one more). */
#define CONFIG_MAX_LAYERS 8

typedef struct {
  int vocab_size;
  int hidden_size;
  int intermediate_size;
  int num_hidden_layers;
  int num_attention_heads;
  int max_position_embeddings;
  float layer_norm_eps;
  gboolean quick_gelu; /* hidden_act: quick_gelu (SD1.5) or gelu */
  /* transformers pools at the first eos_token_id, except for the legacy
   * value 2 (SD and SDXL configs), where it pools at argmax(ids) */
  int eos_token_id;
  /* width of CLIPTextModelWithProjection's text_projection (SDXL's second
   * encoder); the config states it for plain CLIPTextModels too, unused */
  int projection_dim;
} ClipConfig;

typedef struct {
  int in_channels; /* 4, or 9 for inpainting UNets */
  int out_channels;
  int n_blocks; /* len(block_out_channels) */
  int block_out_channels[CONFIG_MAX_BLOCKS];
  gboolean down_cross_attn[CONFIG_MAX_BLOCKS]; /* CrossAttnDownBlock2D vs DownBlock2D */
  gboolean up_cross_attn[CONFIG_MAX_BLOCKS];   /* in up_blocks order */
  int heads[CONFIG_MAX_BLOCKS];                /* attention heads per down level (SD1.5: 8) */
  int layers_per_block;
  /* Transformer depth of each attention module: down_blocks.i.attentions.j,
   * up_blocks.i.attentions.j and the mid block's (SD1.5: all 1; SDXL: 1, 2,
   * 10 per level; SSD-1B differs between the down and up paths). */
  int down_depth[CONFIG_MAX_BLOCKS][CONFIG_MAX_LAYERS];
  int up_depth[CONFIG_MAX_BLOCKS][CONFIG_MAX_LAYERS + 1];
  int mid_depth;
  gboolean mid_cross_attn; /* UNetMidBlock2DCrossAttn; else UNetMidBlock2D (one resnet) */
  int cross_attention_dim;
  int norm_num_groups;
  float norm_eps;
  int time_cond_proj_dim; /* 0 = none; LCM UNets have 256 */
  /* addition_embed_type "text_time" (SDXL): the pooled text embedding and
   * the sinusoids of the LCM_TIME_IDS size/crop values go through
   * add_embedding into the time embedding. 0 = none. */
  int addition_time_embed_dim;
  int projection_class_embeddings_input_dim; /* text_embeds width + 6 x the above */
  gboolean use_linear_projection;
  gboolean flip_sin_to_cos;
  float freq_shift;
  int sample_size;
} UNetConfig;

typedef struct {
  int in_channels;
  int out_channels;
  int latent_channels;
  int n_blocks;
  int block_out_channels[CONFIG_MAX_BLOCKS];
  int layers_per_block;
  int norm_num_groups;
  float scaling_factor;
  gboolean mid_block_add_attention;
  gboolean use_quant_conv;      /* quant_conv after the encoder */
  gboolean use_post_quant_conv; /* post_quant_conv before the decoder */
} VaeConfig;

/* From the config.json file at `path`. */
gboolean clip_config_read(const char *path, ClipConfig *out, GError **error);
gboolean unet_config_read(const char *path, UNetConfig *out, GError **error);
gboolean vae_config_read(const char *path, VaeConfig *out, GError **error);

/* From the text of a config.json; `source` names it in error messages. */
gboolean clip_config_from_json(const char *json, const char *source, ClipConfig *out,
                               GError **error);
gboolean unet_config_from_json(const char *json, const char *source, UNetConfig *out,
                               GError **error);
gboolean vae_config_from_json(const char *json, const char *source, VaeConfig *out, GError **error);

/* Inferred from shapes (single-file checkpoints). */
gboolean clip_config_infer(const Weights *w, ClipConfig *out, GError **error);
gboolean unet_config_infer(const Weights *w, UNetConfig *out, GError **error);
gboolean vae_config_infer(const Weights *w, VaeConfig *out, GError **error);
