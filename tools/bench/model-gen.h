/* Random-weight models of the SD1.5 and SDXL families (LCM UNets).
 *
 * One walk per network mirrors the diffusers / transformers module tree from
 * its config.json. The same walk lists every tensor (name, shape, how to
 * initialise it) and counts the multiply-accumulates of a forward pass, so the
 * files written and the FLOP figures of the benchmark cannot drift apart.
 */
#pragma once

#include <glib.h>
#include <stdint.h>

typedef enum {
  GEN_TEXT_ENCODER,   /* transformers CLIPTextModel */
  GEN_UNET,           /* diffusers UNet2DConditionModel, SD1.5 and SDXL families */
  GEN_VAE,            /* diffusers AutoencoderKL */
  GEN_TEXT_ENCODER_2, /* transformers CLIPTextModelWithProjection (SDXL's second); last, so
                         the SD1.5 networks keep their seeds */
  GEN_N_NETWORKS,
} GenNetwork;

typedef enum {
  GEN_INIT_ZEROS,     /* biases and norm shifts */
  GEN_INIT_ONES,      /* norm scales */
  GEN_INIT_FAN_IN,    /* conv and linear weights: zero mean, variance 1/fan_in */
  GEN_INIT_EMBEDDING, /* embedding tables: std 0.02, as transformers initialises them */
} GenInit;

typedef struct {
  char *name;
  int ndims;
  int64_t shape[4];
  GenInit init;
} GenTensor;

/* The tensors of a network described by config_json (the text of its
 * config.json), in module order. g_array_unref frees it. */
GArray *model_gen_tensors(GenNetwork network, const char *config_json, GError **error);

typedef enum {
  GEN_STAGE_TEXT_ENCODE,   /* one prompt of LCM_CLIP_TOKENS tokens */
  GEN_STAGE_TEXT_ENCODE_2, /* the same through the second text encoder (SDXL) */
  GEN_STAGE_UNET_STEP,     /* one evaluation at latent_h x latent_w */
  GEN_STAGE_VAE_DECODE,    /* latent_h x latent_w latents to an image */
  GEN_STAGE_VAE_ENCODE,    /* the image that decodes from latent_h x latent_w, to latents */
} GenStage;

/* FLOPs of one stage, batch 1: 2 x the multiply-accumulates of every
 * convolution, matrix product and attention product (QK^T and AV). Norms,
 * activations and elementwise work are not counted. config_json is the
 * config.json text of the stage's network. The text encoder ignores the
 * latent size. */
gboolean model_gen_stage_flops(GenStage stage, const char *config_json, int latent_h, int latent_w,
                               double *flops, GError **error);

/* The config.json texts of the networks of a model; text_encoder_2 is NULL
 * for the SD1.5 family. */
typedef struct {
  const char *text_encoder;
  const char *text_encoder_2;
  const char *unet;
  const char *vae;
} GenConfigs;

/* The full-size models make-model writes. */
typedef enum {
  GEN_FAMILY_SD15,  /* SD1.5 + LCM UNet: about 1.07 B parameters */
  GEN_FAMILY_SDXL,  /* SDXL base 1.0 + LCM UNet (lcm-sdxl): about 3.47 B */
  GEN_FAMILY_SSD1B, /* SSD-1B + LCM UNet (lcm-ssd-1b): about 2.2 B */
} GenFamily;

/* The published configs of a family's networks. */
const GenConfigs *model_gen_family_configs(GenFamily family);
/* "sd15", "sdxl" or "ssd1b"; FALSE with an LCM_ERROR_INVALID error. */
gboolean model_gen_family_parse(const char *name, GenFamily *out, GError **error);
const char *model_gen_family_name(GenFamily family);

/* The config text of one network (NULL when the model has none). */
const char *model_gen_config_of(const GenConfigs *configs, GenNetwork network);

/* Writes a diffusers pipeline folder at dir: configs, fp16 weights
 * (*.fp16.safetensors) drawn from `seed`, the project's CLIP tokenizer (and,
 * with a second text encoder, tokenizer_2 padding with "!" and a
 * StableDiffusionXLPipeline model_index.json) and the LCM scheduler config.
 * The same seed and configs give the same bytes. Each network's weights are
 * generated straight into the one buffer that is written out, then freed
 * before the next network. */
gboolean model_gen_make_model(const char *dir, const GenConfigs *configs, guint64 seed,
                              GError **error);

/* The weight file model_gen_make_model writes for a network, relative to the
 * model folder ("unet/diffusion_pytorch_model.fp16.safetensors"). */
const char *model_gen_weights_file(GenNetwork network);
/* The network's folder in a diffusers pipeline ("text_encoder_2"). */
const char *model_gen_folder(GenNetwork network);
