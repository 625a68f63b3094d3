/* The diffusers pipelines the plug-in runs, on one loaded model:
 * LatentConsistencyModel(Img2Img)Pipeline for LCM UNets, and
 * StableDiffusion(Img2Img|Inpaint)Pipeline with an LCMScheduler for plain and
 * inpainting UNets (SD + LCM-LoRA); for the SDXL family
 * StableDiffusionXL(Img2Img|Inpaint)Pipeline with an LCMScheduler (LCM-SDXL,
 * LCM-SSD-1B, SDXL + LCM-LoRA). They share one loop; the differences are the
 * guidance (w-embedding or classifier-free batch), how strength picks the
 * timesteps, the UNet input (9 channels for inpainting UNets), SDXL's pooled
 * text embedding and size conditioning, and the latent blend of inpainting
 * with a 4-channel UNet. Every random tensor comes from one noise source in
 * diffusers' draw order, so a seed reproduces diffusers' image. */
#include "image.h"
#include "lcm.h"
#include "model.h"

#include <math.h>
#include <string.h>

/* The VAE's spatial factor (SD1.5 family). */
#define LATENT_FACTOR 8
/* Prompt embeddings kept for reuse; the table starts afresh beyond this. */
#define PROMPT_CACHE_SIZE 32
/* VAE encodings kept: the source and the masked source of an inpainting. */
#define ENCODE_CACHE_SIZE 2

/* The posterior of one encoder input, kept while the same pixels return. */
typedef struct {
  float *input; /* the encoder's input, NCHW in [-1, 1]; NULL = empty slot */
  int width, height;
  float *mean, *logvar;
  guint64 last_use;
} EncodeCacheEntry;

struct LcmPipeline {
  LcmPromptEncoder *prompts;
  LcmUNet *unet;
  LcmVae *vae;
  LcmScheduler *scheduler;
  LcmModelFamily family;
  int hidden;          /* text context width = the UNet's cross-attention width */
  int pooled;          /* SDXL's pooled text width (the UNet's text_embeds), else 0 */
  int latent_channels; /* the VAE's */
  /* "clip skip \n prompt \x1f prompt_2" -> LCM_CLIP_TOKENS x hidden context
   * floats, then `pooled` floats */
  GHashTable *prompt_cache;
  EncodeCacheEntry encode_cache[ENCODE_CACHE_SIZE];
  guint64 encode_uses;
};

/* ---- Images ------------------------------------------------------------------- */

/* RGB HWC [0, 1] -> NCHW [-1, 1], as diffusers' VaeImageProcessor. When
 * `keep` is given, pixels where it is 0 become 0 (the masked image). */
static void image_to_vae_input(const LcmImage *image, const float *keep, float *out) {
  size_t plane = (size_t)image->width * image->height;
  for (size_t i = 0; i < plane; i++)
    for (int c = 0; c < 3; c++) {
      float v = 2.0f * image->data[3 * i + c] - 1.0f;
      out[c * plane + i] = keep ? v * keep[i] : v;
    }
}

/* ---- Caches --------------------------------------------------------------------- */

/* A damaged weight or an overflow turns a network's output into NaN or
 * infinity, which would reach the user's image as black or garbage: a run
 * stops at the first network that produced one, naming it. `step` is 1-based;
 * 0 when the network does not run per step. */
static gboolean check_finite(const float *values, size_t n, const char *network, int step,
                             GError **error) {
  size_t bad = 0;
  for (size_t i = 0; i < n; i++) bad += !isfinite(values[i]);
  if (!bad) return TRUE;
  g_autofree char *where = step > 0 ? g_strdup_printf(" at step %d", step) : g_strdup("");
  g_set_error(error, LCM_ERROR, LCM_ERROR_NOT_FINITE,
              "the %s computed %zu non-finite values (NaN or infinity)%s: its weights may be "
              "damaged; try the model again after re-downloading it, or another precision",
              network, bad, where);
  return FALSE;
}

/* The text conditioning of `text` (and SDXL's `text_2` for the second
 * encoder, NULL = text) with that clip skip: context (LCM_CLIP_TOKENS x
 * hidden) and, for SDXL, the pooled embedding (`pooled` floats; NULL
 * otherwise). */
static gboolean encode_prompt(LcmPipeline *p, const char *text, const char *text_2, int clip_skip,
                              float *context, float *pooled, GError **error) {
  size_t n = (size_t)LCM_CLIP_TOKENS * p->hidden;
  char *key = g_strdup_printf("%d\n%s\x1f%s", clip_skip, text, text_2 ? text_2 : text);
  const float *cached = g_hash_table_lookup(p->prompt_cache, key);
  if (!cached) {
    float *embedding = g_new(float, n + p->pooled);
    if (!lcm_prompt_encoder_encode(p->prompts, text, text_2, clip_skip, embedding,
                                   p->pooled ? embedding + n : NULL, error) ||
        !check_finite(embedding, n + p->pooled, "text encoder", 0, error)) {
      g_free(embedding);
      g_free(key);
      return FALSE;
    }
    if (g_hash_table_size(p->prompt_cache) >= PROMPT_CACHE_SIZE)
      g_hash_table_remove_all(p->prompt_cache);
    g_hash_table_insert(p->prompt_cache, g_steal_pointer(&key), embedding);
    cached = embedding;
  }
  g_free(key);
  memcpy(context, cached, n * sizeof(float));
  if (p->pooled) memcpy(pooled, cached + n, p->pooled * sizeof(float));
  return TRUE;
}

static void encode_entry_clear(EncodeCacheEntry *e) {
  g_free(e->input);
  g_free(e->mean);
  g_free(e->logvar);
  memset(e, 0, sizeof *e);
}

/* The cache entry holding `input` (*hit = TRUE), else the slot to reuse:
 * an empty one or the least recently used. */
static EncodeCacheEntry *encode_cache_find(LcmPipeline *p, const float *input, int width,
                                           int height, gboolean *hit) {
  size_t input_bytes = (size_t)3 * width * height * sizeof(float);
  EncodeCacheEntry *slot = &p->encode_cache[0];
  for (int i = 0; i < ENCODE_CACHE_SIZE; i++) {
    EncodeCacheEntry *e = &p->encode_cache[i];
    *hit = e->input && e->width == width && e->height == height &&
           memcmp(e->input, input, input_bytes) == 0;
    if (*hit) return e;
    if (!e->input || (slot->input && e->last_use < slot->last_use)) slot = e;
  }
  return slot;
}

/* The VAE posterior (mean, log-variance) of an NCHW [-1, 1] image, from the
 * cache when the same pixels were encoded lately. The pointers stay valid
 * until the next call. */
static gboolean vae_posterior(LcmPipeline *p, const float *input, int width, int height,
                              const float **mean, const float **logvar, GError **error) {
  gboolean hit;
  EncodeCacheEntry *slot = encode_cache_find(p, input, width, height, &hit);
  if (!hit) {
    encode_entry_clear(slot);
    size_t n = (size_t)p->latent_channels * (width / LATENT_FACTOR) * (height / LATENT_FACTOR);
    float *m = g_new(float, n), *lv = g_new(float, n);
    if (!lcm_vae_encode(p->vae, input, 1, height, width, m, lv, error) ||
        !check_finite(m, n, "VAE encoder", 0, error)) {
      g_free(m);
      g_free(lv);
      return FALSE;
    }
    size_t input_bytes = (size_t)3 * width * height * sizeof(float);
    *slot = (EncodeCacheEntry){g_memdup2(input, input_bytes), width, height, m, lv, 0};
  }
  slot->last_use = ++p->encode_uses;
  *mean = slot->mean;
  *logvar = slot->logvar;
  return TRUE;
}

void lcm_pipeline_clear_caches(LcmPipeline *p) {
  g_return_if_fail(p);
  g_hash_table_remove_all(p->prompt_cache);
  for (int i = 0; i < ENCODE_CACHE_SIZE; i++) encode_entry_clear(&p->encode_cache[i]);
}

/* ---- Loading -------------------------------------------------------------------- */

void lcm_pipeline_free(LcmPipeline *p) {
  if (!p) return;
  lcm_pipeline_clear_caches(p);
  g_hash_table_unref(p->prompt_cache);
  lcm_prompt_encoder_free(p->prompts);
  lcm_unet_free(p->unet);
  lcm_vae_free(p->vae);
  lcm_scheduler_free(p->scheduler);
  g_free(p);
}

/* The networks must fit together: text width = cross-attention width, the
 * pooled text width = the UNet's text_embeds width (SDXL; 0 for SD1.5), and
 * the UNet's channels those of the VAE's latents (9 = latents, mask and
 * masked-image latents for inpainting UNets). */
static gboolean check_compatible(LcmPipeline *p, LcmModel *model, GError **error) {
  int lc = p->latent_channels, in = lcm_unet_in_channels(p->unet);
  int cross = lcm_unet_cross_attention_dim(p->unet);
  const char *problem = NULL;
  if (p->hidden != cross)
    problem = "its text encoder's width differs from the UNet's cross-attention width";
  else if (p->pooled != lcm_unet_text_embeds_dim(p->unet))
    problem = p->pooled ? "its pooled text embedding does not fit the UNet's added conditioning "
                          "(an SDXL text side with a UNet of another family)"
                        : "its UNet takes SDXL's pooled text embedding, which the text side "
                          "lacks (an SDXL UNet with SD1.5 text encoders)";
  else if (lcm_unet_out_channels(p->unet) != lc || (in != lc && in != 2 * lc + 1))
    problem = "its UNet's channels do not match the VAE's latent channels";
  if (problem)
    g_set_error(error, LCM_ERROR, LCM_ERROR_UNSUPPORTED,
                "%s: %s (text %d, cross-attention %d, UNet in/out %d/%d, latents %d); the parts "
                "belong to different models",
                lcm_model_describe(model), problem, p->hidden, cross, in,
                lcm_unet_out_channels(p->unet), lc);
  return problem == NULL;
}

typedef struct {
  LcmModel *model;
  LcmPrecision precision;
  LcmPromptEncoder *encoder;
  GError *error;
} PromptLoad;

static gpointer load_prompts(gpointer data) {
  PromptLoad *load = data;
  load->encoder = lcm_prompt_encoder_new(load->model, load->precision, &load->error);
  return NULL;
}

LcmPipeline *lcm_pipeline_new(LcmModel *model, LcmPrecision precision, GError **error) {
  if (!model) {
    g_set_error(error, LCM_ERROR, LCM_ERROR_INVALID, "no model given to build a pipeline from");
    return NULL;
  }
  /* Refuse before loading gigabytes when the model's native size cannot fit
   * (SDXL: 1024x1024) */
  UNetConfig unet_config;
  VaeConfig vae_config;
  if (!model_unet_config(model, &unet_config, error) ||
      !model_vae_config(model, &vae_config, error))
    return NULL;
  const int native_side = unet_config.sample_size << (vae_config.n_blocks - 1);
  if (!lcm_model_check_memory(model, precision, native_side, native_side, error)) return NULL;
  LcmPipeline *p = g_new0(LcmPipeline, 1);
  p->prompt_cache = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
  /* The tokenizers and text encoders load on a thread of their own while
   * the UNet and the VAE load here: a fresh process waits for the longer
   * of the two (the parts read disjoint files; oneDNN creates primitives
   * from several threads). An error is reported in the order of a serial
   * load. */
  PromptLoad prompt_load = {model, precision, NULL, NULL};
  GThread *prompt_thread = g_thread_new("lcm-load-prompts", load_prompts, &prompt_load);
  GError *unet_error = NULL;
  if ((p->unet = lcm_unet_load(model, precision, &unet_error)))
    p->vae = lcm_vae_load(model, precision, &unet_error);
  g_thread_join(prompt_thread);
  p->prompts = prompt_load.encoder;
  if (prompt_load.error || unet_error) {
    g_propagate_error(error, prompt_load.error ? prompt_load.error : unet_error);
    if (prompt_load.error) g_clear_error(&unet_error);
    goto fail;
  }
  if (!(p->scheduler = lcm_scheduler_new(model_scheduler_config(model), error))) goto fail;
  p->family = lcm_prompt_encoder_family(p->prompts);
  p->hidden = lcm_prompt_encoder_context_dim(p->prompts);
  p->pooled = lcm_prompt_encoder_pooled_dim(p->prompts);
  p->latent_channels = lcm_vae_latent_channels(p->vae);
  if (!check_compatible(p, model, error)) goto fail;
  return p;

fail:
  lcm_pipeline_free(p);
  return NULL;
}

static gboolean is_inpainting_unet(const LcmPipeline *p) {
  return lcm_unet_in_channels(p->unet) != p->latent_channels;
}

gboolean lcm_pipeline_supports(const LcmPipeline *p, LcmMode mode) {
  g_return_val_if_fail(p, FALSE);
  return mode == LCM_MODE_INPAINT || !is_inpainting_unet(p);
}

int lcm_pipeline_latent_channels(const LcmPipeline *pipeline) {
  return pipeline->latent_channels;
}

double lcm_pipeline_default_guidance(const LcmPipeline *p) {
  g_return_val_if_fail(p, 1.0);
  return lcm_unet_time_cond_proj_dim(p->unet) > 0 ? 8.0 : 1.0;
}

double lcm_pipeline_default_strength(const LcmPipeline *p, LcmMode mode) {
  g_return_val_if_fail(p, 1.0);
  gboolean sdxl = p->family == LCM_FAMILY_SDXL;
  switch (mode) {
  case LCM_MODE_IMG2IMG:
    return sdxl ? 0.3 : 0.8;
  case LCM_MODE_INPAINT:
    /* StableDiffusionXLInpaintPipeline's 0.9999 starts from the noised
     * source at the second timestep, not from pure noise */
    return sdxl ? 0.9999 : 1.0;
  default:
    return 1.0;
  }
}

void lcm_pipeline_params_init(LcmPipelineParams *params) {
  *params = (LcmPipelineParams){.mode = LCM_MODE_TXT2IMG,
                                .steps = 4,
                                .guidance_scale = 1.0,
                                .strength = 1.0,
                                .strength_rule = LCM_STRENGTH_AUTO,
                                .width = 512,
                                .height = 512};
}

/* ---- Decoding ------------------------------------------------------------------- */

LcmImage *lcm_pipeline_decode_latents(LcmPipeline *p, const float *latents, int latent_width,
                                      int latent_height, GError **error) {
  g_return_val_if_fail(p && latents, NULL);
  if (latent_width < 1 || latent_height < 1 || latent_width > LCM_MAX_IMAGE_SIDE / LATENT_FACTOR ||
      latent_height > LCM_MAX_IMAGE_SIDE / LATENT_FACTOR) {
    g_set_error(error, LCM_ERROR, LCM_ERROR_INVALID, "cannot decode %dx%d latents", latent_width,
                latent_height);
    return NULL;
  }
  size_t n = (size_t)p->latent_channels * latent_width * latent_height;
  float scaling = lcm_vae_scaling_factor(p->vae);
  float *z = g_new(float, n);
  for (size_t i = 0; i < n; i++) z[i] = latents[i] / scaling;
  int w = latent_width * LATENT_FACTOR, h = latent_height * LATENT_FACTOR;
  float *decoded = g_new(float, (size_t)3 * w * h);
  gboolean ok = lcm_vae_decode(p->vae, z, 1, latent_height, latent_width, decoded, error) &&
                check_finite(decoded, (size_t)3 * w * h, "VAE decoder", 0, error);
  g_free(z);
  LcmImage *image = ok ? lcm_image_from_decoded(decoded, w, h) : NULL;
  g_free(decoded);
  return image;
}

/* ---- Running -------------------------------------------------------------------- */

/* Where the run's random tensors come from, and how many it drew. */
typedef struct {
  LcmNoiseFunc func;
  gpointer data;
  LcmRng *rng; /* the default source */
  int next;
} NoiseSource;

static gboolean noise_draw(NoiseSource *s, float *out, int64_t n, GError **error) {
  int index = s->next++;
  if (!s->func) {
    lcm_rng_randn(s->rng, out, n);
    return TRUE;
  }
  GError *local = NULL;
  if (s->func(index, out, n, s->data, &local)) return TRUE;
  if (local)
    g_propagate_error(error, local);
  else
    g_set_error(error, LCM_ERROR, LCM_ERROR_INVALID, "the noise source failed on draw %d", index);
  return FALSE;
}

/* Everything one run allocates; freed in one place. */
typedef struct {
  int width, height; /* image */
  int lw, lh;        /* latents */
  size_t n;          /* floats in one latent */
  gboolean cfg;      /* classifier-free guidance batch of 2 */
  int batch;
  int timesteps[LCM_MAX_STEPS];
  int first, count; /* the run does timesteps[first .. first+count) */
  NoiseSource noise;
  float *context;        /* batch x 77 x hidden */
  float *pooled;         /* SDXL: batch x pooled text embeddings, else NULL */
  float *time_ids;       /* SDXL: batch x LCM_TIME_IDS, else NULL */
  float *w_embedding;    /* time_cond_proj_dim floats, or NULL */
  float *latents;        /* n */
  float *image_latents;  /* n: the source's, or NULL */
  float *start_noise;    /* n: kept for the 4-channel inpainting blend */
  float *mask_latent;    /* lw x lh, inpainting */
  float *masked_latents; /* n, inpainting */
  float *unet_in, *unet_out, *eps, *step_noise, *denoised, *prev;
} Run;

static void run_clear(Run *r) {
  lcm_rng_free(r->noise.rng);
  g_free(r->context);
  g_free(r->pooled);
  g_free(r->time_ids);
  g_free(r->w_embedding);
  g_free(r->latents);
  g_free(r->image_latents);
  g_free(r->start_noise);
  g_free(r->mask_latent);
  g_free(r->masked_latents);
  g_free(r->unet_in);
  g_free(r->unet_out);
  g_free(r->eps);
  g_free(r->step_noise);
  g_free(r->denoised);
  g_free(r->prev);
}

static gboolean check_side(const char *what, int side, GError **error) {
  if (side >= LATENT_FACTOR && side <= LCM_MAX_IMAGE_SIDE && side % LATENT_FACTOR == 0) return TRUE;
  return lcm_error_invalid(error, "the %s is %d pixels; it must be a multiple of %d from %d to %d",
                           what, side, LATENT_FACTOR, LATENT_FACTOR, LCM_MAX_IMAGE_SIDE);
}

/* Checks the parameters and fixes the run's sizes. */
static gboolean check_params(const LcmPipeline *p, const LcmPipelineParams *params, Run *r,
                             GError **error) {
  if (params->mode != LCM_MODE_TXT2IMG && params->mode != LCM_MODE_IMG2IMG &&
      params->mode != LCM_MODE_INPAINT)
    return lcm_error_invalid(error, "unknown pipeline mode %d", (int)params->mode);
  if (!lcm_pipeline_supports(p, params->mode))
    return lcm_error_invalid(error, "this model has an inpainting UNet; it can only inpaint");
  if (params->steps < 1 || params->steps > LCM_MAX_STEPS)
    return lcm_error_invalid(error, "%d steps asked for; give 1 to %d", params->steps,
                             LCM_MAX_STEPS);
  if (!isfinite(params->guidance_scale) || params->guidance_scale < 0 ||
      params->guidance_scale > 100)
    return lcm_error_invalid(error, "guidance scale %g is out of range; give 0 to 100",
                             params->guidance_scale);
  if (params->strength_rule != LCM_STRENGTH_AUTO && params->strength_rule != LCM_STRENGTH_RESPACE &&
      params->strength_rule != LCM_STRENGTH_SLICE)
    return lcm_error_invalid(error, "unknown strength rule %d", (int)params->strength_rule);
  if (params->mode == LCM_MODE_TXT2IMG) {
    r->width = params->width;
    r->height = params->height;
    if (!check_side("width", r->width, error) || !check_side("height", r->height, error))
      return FALSE;
  } else {
    if (!(params->strength > 0 && params->strength <= 1))
      return lcm_error_invalid(error,
                               "strength %g is out of range; give a value above 0 and at most 1",
                               params->strength);
    if (!params->image || !params->image->data)
      return lcm_error_invalid(error, "img2img and inpainting need a source image");
    r->width = params->image->width;
    r->height = params->image->height;
    if (!image_check(params->image, "source image", r->width, r->height, 3, error) ||
        !check_side("source image width", r->width, error) ||
        !check_side("source image height", r->height, error))
      return FALSE;
    if (params->mode == LCM_MODE_INPAINT &&
        !image_check(params->mask, "mask", r->width, r->height, 1, error))
      return FALSE;
  }
  r->lw = r->width / LATENT_FACTOR;
  r->lh = r->height / LATENT_FACTOR;
  r->n = (size_t)p->latent_channels * r->lw * r->lh;
  return TRUE;
}

/* The timesteps of the run by mode and strength rule (see LcmStrengthRule). */
static gboolean choose_timesteps(const LcmPipeline *p, const LcmPipelineParams *params, Run *r,
                                 GError **error) {
  int steps = params->steps;
  LcmStrengthRule rule = params->strength_rule;
  if (params->mode == LCM_MODE_TXT2IMG) {
    rule = LCM_STRENGTH_RESPACE; /* at strength 1 both rules give the full schedule */
  } else if (rule == LCM_STRENGTH_AUTO) {
    /* only the SD1.5 LCM img2img pipeline respaces; SDXL's slices */
    rule = params->mode == LCM_MODE_IMG2IMG && p->family == LCM_FAMILY_SD15 &&
                   lcm_unet_time_cond_proj_dim(p->unet) > 0
               ? LCM_STRENGTH_RESPACE
               : LCM_STRENGTH_SLICE;
  }
  float strength = params->mode == LCM_MODE_TXT2IMG ? 1.0f : (float)params->strength;
  if (rule == LCM_STRENGTH_RESPACE) {
    r->first = 0;
    r->count = lcm_scheduler_timesteps(p->scheduler, steps, strength, r->timesteps, error);
    return r->count > 0;
  }
  if (lcm_scheduler_timesteps(p->scheduler, steps, 1.0f, r->timesteps, error) != steps)
    return FALSE;
  /* diffusers: init_timestep = min(int(steps * strength), steps), in doubles. */
  r->count = MIN((int)(steps * params->strength), steps);
  r->first = steps - r->count;
  if (r->count < 1)
    return lcm_error_invalid(
        error,
        "strength %g with %d steps leaves no step to run; raise the strength to at "
        "least %g or the steps",
        params->strength, steps, 1.0 / steps);
  return TRUE;
}

/* SDXL's time ids of every batch row: original size, crop top-left and
 * target size, (height, width) order, defaulting to the output's size and
 * crop (0, 0) as diffusers does. */
static void fill_time_ids(const LcmPipelineParams *params, Run *r) {
  const float row[LCM_TIME_IDS] = {
      (float)(params->original_height ? params->original_height : r->height),
      (float)(params->original_width ? params->original_width : r->width),
      (float)params->crop_top,
      (float)params->crop_left,
      (float)(params->target_height ? params->target_height : r->height),
      (float)(params->target_width ? params->target_width : r->width)};
  r->time_ids = g_new(float, r->batch *LCM_TIME_IDS);
  for (int b = 0; b < r->batch; b++) memcpy(r->time_ids + b * LCM_TIME_IDS, row, sizeof row);
}

/* The prompt embeddings (negative first with classifier-free guidance),
 * SDXL's pooled embeddings and time ids, and an LCM UNet's guidance
 * embedding. */
static gboolean prepare_conditioning(LcmPipeline *p, const LcmPipelineParams *params, Run *r,
                                     GError **error) {
  int cond_dim = lcm_unet_time_cond_proj_dim(p->unet);
  /* diffusers: guidance through the embedding when the UNet has one, else a
   * classifier-free batch when guidance > 1. */
  r->cfg = cond_dim == 0 && params->guidance_scale > 1.0;
  r->batch = r->cfg ? 2 : 1;
  size_t one = (size_t)LCM_CLIP_TOKENS * p->hidden;
  r->context = g_new0(float, r->batch *one);
  if (p->pooled) {
    r->pooled = g_new0(float, (size_t)r->batch * p->pooled);
    fill_time_ids(params, r);
  }
  const char *prompt = params->prompt ? params->prompt : "";
  /* SDXL's missing negative prompt is all-zero embeddings (the g_new0 above) */
  gboolean encode_negative =
      r->cfg && !lcm_prompt_encoder_negative_is_zero(p->prompts, params->negative_prompt);
  const char *negative = params->negative_prompt ? params->negative_prompt : "";
  /* diffusers applies clip skip to the prompt only */
  if ((encode_negative &&
       !encode_prompt(p, negative, params->negative_prompt_2, 0, r->context, r->pooled, error)) ||
      !encode_prompt(p, prompt, params->prompt_2, params->clip_skip,
                     r->context + (r->batch - 1) * one,
                     r->pooled ? r->pooled + (r->batch - 1) * p->pooled : NULL, error))
    return FALSE;
  if (cond_dim > 0) {
    r->w_embedding = g_new(float, cond_dim);
    lcm_guidance_embedding((float)(params->guidance_scale - 1.0), cond_dim, r->w_embedding);
  }
  return TRUE;
}

/* latents = scaling x (mean + std x noise) of an encoder input (VAE sample). */
static float *sample_image_latents(LcmPipeline *p, Run *r, const float *vae_input, GError **error) {
  const float *mean, *logvar;
  if (!vae_posterior(p, vae_input, r->width, r->height, &mean, &logvar, error)) return NULL;
  float *latents = g_new(float, r->n);
  if (!noise_draw(&r->noise, latents, r->n, error)) {
    g_free(latents);
    return NULL;
  }
  float scaling = lcm_vae_scaling_factor(p->vae);
  for (size_t i = 0; i < r->n; i++)
    latents[i] = scaling * (mean[i] + expf(0.5f * logvar[i]) * latents[i]);
  return latents;
}

/* The start latents: noise for txt2img (and inpainting at strength 1),
 * else the source's latents noised to the first timestep. With inpainting,
 * also the latent mask and the masked source's latents. Draws happen in
 * diffusers' order (see LcmNoiseFunc). */
static gboolean prepare_latents(LcmPipeline *p, const LcmPipelineParams *params, Run *r,
                                GError **error) {
  r->latents = g_new(float, r->n);
  if (params->mode == LCM_MODE_TXT2IMG) return noise_draw(&r->noise, r->latents, r->n, error);
  r->start_noise = g_new(float, r->n);
  size_t pixels = (size_t)r->width * r->height;
  float *vae_input = g_new(float, 3 * pixels);
  image_to_vae_input(params->image, NULL, vae_input);
  gboolean inpaint = params->mode == LCM_MODE_INPAINT;
  gboolean from_noise = inpaint && params->strength == 1.0;
  gboolean ok = TRUE;
  /* The inpaint pipeline encodes the source only for the blend of a
   * 4-channel UNet or to noise it (strength < 1). */
  if (!inpaint || !is_inpainting_unet(p) || !from_noise)
    ok = (r->image_latents = sample_image_latents(p, r, vae_input, error)) != NULL;
  ok = ok && noise_draw(&r->noise, r->start_noise, r->n, error);
  if (ok && from_noise)
    memcpy(r->latents, r->start_noise, r->n * sizeof(float));
  else if (ok)
    lcm_scheduler_add_noise(p->scheduler, r->image_latents, r->start_noise, r->timesteps[r->first],
                            r->n, r->latents);
  if (ok && inpaint) {
    /* Binarised at 0.5; masked image = image x (mask < 0.5); the latent mask
     * by nearest interpolation. */
    float *keep = g_new(float, pixels);
    for (size_t i = 0; i < pixels; i++) keep[i] = params->mask->data[i] >= 0.5f ? 0.0f : 1.0f;
    r->mask_latent = g_new(float, (size_t)r->lw * r->lh);
    for (int y = 0; y < r->lh; y++)
      for (int x = 0; x < r->lw; x++)
        r->mask_latent[y * r->lw + x] =
            1.0f - keep[(size_t)y * LATENT_FACTOR * r->width + (size_t)x * LATENT_FACTOR];
    image_to_vae_input(params->image, keep, vae_input);
    g_free(keep);
    ok = (r->masked_latents = sample_image_latents(p, r, vae_input, error)) != NULL;
  }
  g_free(vae_input);
  return ok;
}

static gboolean cancelled(const LcmPipelineParams *params, GError **error) {
  if (!params->cancel || !g_atomic_int_get(params->cancel)) return FALSE;
  g_set_error(error, LCM_ERROR, LCM_ERROR_CANCELLED, "cancelled");
  return TRUE;
}

/* One UNet evaluation on the current latents, guided: r->eps. */
static gboolean predict_noise(LcmPipeline *p, const LcmPipelineParams *params, Run *r, int t,
                              int step, GError **error) {
  int in = lcm_unet_in_channels(p->unet);
  size_t plane = (size_t)r->lw * r->lh, per_item = (size_t)in * plane;
  for (int b = 0; b < r->batch; b++) {
    /* The same input for both halves of a guidance batch; an inpainting
     * UNet reads cat([latents, mask, masked-image latents]). */
    float *item = r->unet_in + b * per_item;
    memcpy(item, r->latents, r->n * sizeof(float));
    if (is_inpainting_unet(p)) {
      memcpy(item + r->n, r->mask_latent, plane * sizeof(float));
      memcpy(item + r->n + plane, r->masked_latents, r->n * sizeof(float));
    }
  }
  /* A UNet with a guidance embedding never gets a guidance batch, so the
   * one embedding covers the batch. */
  const LcmUNetConditions conditions = {r->w_embedding, r->pooled, r->time_ids};
  if (!lcm_unet_run_conditioned(p->unet, r->unet_in, r->batch, r->lh, r->lw, (float)t, r->context,
                                LCM_CLIP_TOKENS, &conditions, r->unet_out, error) ||
      !check_finite(r->unet_out, r->batch * r->n, "UNet", step, error))
    return FALSE;
  if (!r->cfg) {
    memcpy(r->eps, r->unet_out, r->n * sizeof(float));
    return TRUE;
  }
  float g = (float)params->guidance_scale;
  const float *uncond = r->unet_out, *text = r->unet_out + r->n;
  for (size_t i = 0; i < r->n; i++) r->eps[i] = uncond[i] + g * (text[i] - uncond[i]);
  return TRUE;
}

/* The denoising loop; leaves the latents to decode in r->latents. */
static gboolean denoise(LcmPipeline *p, const LcmPipelineParams *params, Run *r, GError **error) {
  int in = lcm_unet_in_channels(p->unet);
  size_t plane = (size_t)r->lw * r->lh;
  gboolean blend = params->mode == LCM_MODE_INPAINT && !is_inpainting_unet(p);
  r->unet_in = g_new(float, (size_t)r->batch *in *plane);
  r->unet_out = g_new(float, r->batch * r->n);
  r->eps = g_new(float, r->n);
  r->step_noise = g_new(float, r->n);
  r->denoised = g_new(float, r->n);
  r->prev = g_new(float, r->n);
  int end = r->first + r->count;
  for (int i = r->first; i < end; i++) {
    int t = r->timesteps[i];
    gboolean last = i + 1 == end;
    if (cancelled(params, error) || !predict_noise(p, params, r, t, i - r->first + 1, error))
      return FALSE;
    if (!last && !noise_draw(&r->noise, r->step_noise, r->n, error)) return FALSE;
    int next = last ? t : r->timesteps[i + 1];
    lcm_scheduler_step(p->scheduler, r->eps, t, next, r->latents, last ? NULL : r->step_noise, r->n,
                       r->denoised, r->prev);
    float *swap = r->latents;
    r->latents = r->prev;
    r->prev = swap;
    if (blend) {
      /* Keep the unmasked region on the source's trajectory: the source
       * latents noised to the next timestep, clean after the last step. */
      if (last)
        memcpy(r->prev, r->image_latents, r->n * sizeof(float));
      else
        lcm_scheduler_add_noise(p->scheduler, r->image_latents, r->start_noise, next, r->n,
                                r->prev);
      for (size_t k = 0; k < r->n; k++) {
        float m = r->mask_latent[k % plane];
        r->latents[k] = (1.0f - m) * r->prev[k] + m * r->latents[k];
      }
    }
    if (params->progress) {
      LcmProgress progress = {.step = i - r->first,
                              .steps = r->count,
                              .timestep = t,
                              .denoised = r->denoised,
                              .latent_channels = p->latent_channels,
                              .latent_width = r->lw,
                              .latent_height = r->lh};
      params->progress(&progress, params->progress_data);
    }
  }
  return TRUE;
}

/* The networks watch the run's cancel flag too (NULL: none), so a cancel
 * lands within a block, not after a whole UNet step or VAE pass. */
static void watch_cancel(LcmPipeline *p, volatile gint *cancel) {
  lcm_unet_set_cancel(p->unet, cancel);
  lcm_vae_set_cancel(p->vae, cancel);
}

float *lcm_pipeline_run_latents(LcmPipeline *p, const LcmPipelineParams *params, int *latent_width,
                                int *latent_height, GError **error) {
  if (!p || !params || !latent_width || !latent_height) {
    lcm_error_invalid(error, "no pipeline, parameters or latent size given");
    return NULL;
  }
  Run r = {0};
  r.noise = (NoiseSource){params->noise, params->noise_data,
                          params->noise ? NULL : lcm_rng_new(params->seed), 0};
  float *latents = NULL;
  watch_cancel(p, params->cancel);
  if (check_params(p, params, &r, error) && choose_timesteps(p, params, &r, error) &&
      !cancelled(params, error) && prepare_conditioning(p, params, &r, error) &&
      prepare_latents(p, params, &r, error) && denoise(p, params, &r, error) &&
      !cancelled(params, error)) {
    latents = g_steal_pointer(&r.latents);
    *latent_width = r.lw;
    *latent_height = r.lh;
  }
  watch_cancel(p, NULL);
  run_clear(&r);
  return latents;
}

LcmImage *lcm_pipeline_run(LcmPipeline *p, const LcmPipelineParams *params, GError **error) {
  int latent_width = 0, latent_height = 0;
  float *latents = lcm_pipeline_run_latents(p, params, &latent_width, &latent_height, error);
  if (!latents) return NULL;
  watch_cancel(p, params->cancel);
  LcmImage *image = lcm_pipeline_decode_latents(p, latents, latent_width, latent_height, error);
  watch_cancel(p, NULL);
  g_free(latents);
  return image;
}
