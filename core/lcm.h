/* gimp-lcm core: Latent Consistency Model inference on oneDNN.
 *
 * The one public header of the core library. ui/, plugin/ and tools/ use
 * nothing else. Every fallible function reports failure through a GError in
 * the LCM_ERROR domain, with a message a user can act on.
 */
#pragma once

#include <glib.h>
#include <stdint.h>

G_BEGIN_DECLS

#define LCM_ERROR (lcm_error_quark())
GQuark lcm_error_quark(void);

typedef enum {
  LCM_ERROR_IO,          /* a file could not be opened or read */
  LCM_ERROR_FORMAT,      /* a file is malformed */
  LCM_ERROR_UNSUPPORTED, /* a valid file of a kind we do not run (pickle, SDXL, ...) */
  LCM_ERROR_MISSING,     /* a tensor or file the model needs is absent */
  LCM_ERROR_SHAPE,       /* a tensor has the wrong shape */
  LCM_ERROR_BACKEND,     /* oneDNN refused or failed */
  LCM_ERROR_INVALID,     /* a caller passed a bad argument */
  LCM_ERROR_CANCELLED,   /* the caller cancelled */
} LcmErrorCode;

/* Sets an LCM_ERROR_INVALID error with the formatted message and returns
 * FALSE: argument checks in one line, the library's and its clients'. */
gboolean lcm_error_invalid(GError **error, const char *format, ...) G_GNUC_PRINTF(2, 3);

/* Compute precision. BF16 keeps weights and activations in bfloat16 with
 * fp32 accumulation (the fast path on AMX / AVX512-BF16 CPUs); FP32 is the
 * exact path. AUTO picks BF16 where the CPU has AMX or AVX512-BF16. */
typedef enum {
  LCM_PRECISION_AUTO,
  LCM_PRECISION_FP32,
  LCM_PRECISION_BF16,
} LcmPrecision;

LcmPrecision lcm_precision_resolve(LcmPrecision precision);
const char *lcm_precision_name(LcmPrecision precision);
gboolean lcm_precision_parse(const char *name, LcmPrecision *out, GError **error);

/* ---- Tokenizer (CLIP byte-level BPE, HF CLIPTokenizer + ftfy semantics) --- */

#define LCM_CLIP_TOKENS 77
#define LCM_CLIP_BOS 49406
#define LCM_CLIP_EOS 49407

typedef struct LcmTokenizer LcmTokenizer;

LcmTokenizer *lcm_tokenizer_new(const char *vocab_json_path, const char *merges_txt_path,
                                GError **error);
/* The CLIP vocabulary shipped in the project's data folder. */
LcmTokenizer *lcm_tokenizer_new_default(GError **error);
void lcm_tokenizer_free(LcmTokenizer *tokenizer);
/* Fills ids[LCM_CLIP_TOKENS]: BOS, up to 75 tokens, EOS, padded with EOS.
 * Returns the number of BPE tokens before truncation. */
int lcm_tokenizer_encode(const LcmTokenizer *tokenizer, const char *text,
                         int32_t ids[LCM_CLIP_TOKENS]);

/* ---- Models ---------------------------------------------------------------- */

/* The folder where users put models: $GIMP_LCM_MODELS if set, else
 * $XDG_DATA_HOME/gimp-lcm/models (~/.local/share/gimp-lcm/models). */
char *lcm_models_dir(void);
/* The model used when none is named: the first diffusers folder or
 * .safetensors checkpoint (by name) in the models folder, else the bundled
 * tiny random-weight test model, with *is_test_model set. NULL when neither
 * exists. g_free the result. */
char *lcm_default_model(gboolean *is_test_model);
/* A file of the project's data folder ($GIMP_LCM_DATADIR, the installed
 * share/gimp-lcm, or the source tree's data/), or NULL. g_free it. */
char *lcm_find_data_file(const char *relative);

/* Where each part of a model lives. Any field may be NULL when the part is
 * not needed. A single-file checkpoint provides unet, vae and text encoder. */
typedef struct {
  const char *unet;         /* diffusers folder: config.json + weights */
  const char *unet_weights; /* a non-default weight file inside it (e.g. .fp16) */
  const char *vae;          /* diffusers folder */
  const char *text_encoder; /* diffusers folder */
  const char *tokenizer;    /* folder with vocab.json + merges.txt */
  const char *scheduler;    /* folder with scheduler_config.json */
  const char *checkpoint;   /* A1111 / civitai single-file .safetensors */
  /* A text-encoder config.json to use instead of the one inferred from a
   * checkpoint's shapes (only needed for CLIP variants whose head count does
   * not follow from the width). */
  const char *text_encoder_config;
} LcmModelParts;

typedef struct LcmModel LcmModel;

/* A diffusers pipeline folder (model_index.json) or a single-file checkpoint.
 * Only the headers are read here; weights load with each network. */
LcmModel *lcm_model_open(const char *path, GError **error);
LcmModel *lcm_model_open_parts(const LcmModelParts *parts, GError **error);
void lcm_model_free(LcmModel *model);
/* A short human-readable description ("diffusers folder X", ...). */
const char *lcm_model_describe(const LcmModel *model);
/* A network's tensor by its diffusers name, as the networks load it (fp32,
 * whatever the file layout). network: "unet", "vae" or "text_encoder".
 * shape has room for 8 dims. g_free the result. */
float *lcm_model_read_tensor(LcmModel *model, const char *network, const char *name, int *ndims,
                             int64_t *shape, GError **error);
/* The model's tokenizer: its own vocabulary, or the bundled CLIP one. */
LcmTokenizer *lcm_model_load_tokenizer(LcmModel *model, GError **error);

/* ---- Text encoder (transformers CLIPTextModel) --------------------------- */

typedef struct LcmTextEncoder LcmTextEncoder;

LcmTextEncoder *lcm_text_encoder_load(LcmModel *model, LcmPrecision precision, GError **error);
void lcm_text_encoder_free(LcmTextEncoder *encoder);
int lcm_text_encoder_hidden_size(const LcmTextEncoder *encoder);
/* ids: batch x LCM_CLIP_TOKENS. last_hidden_state: batch x 77 x hidden, fp32. */
gboolean lcm_text_encoder_encode(LcmTextEncoder *encoder, const int32_t *ids, int batch,
                                 float *last_hidden_state, GError **error);

/* ---- UNet (diffusers UNet2DConditionModel, SD1.5 family) ------------------ */

typedef struct LcmUNet LcmUNet;

LcmUNet *lcm_unet_load(LcmModel *model, LcmPrecision precision, GError **error);
void lcm_unet_free(LcmUNet *unet);
int lcm_unet_in_channels(const LcmUNet *unet); /* 4, or 9 for inpainting */
int lcm_unet_out_channels(const LcmUNet *unet);
int lcm_unet_time_cond_proj_dim(const LcmUNet *unet); /* 0 unless an LCM UNet */
int lcm_unet_cross_attention_dim(const LcmUNet *unet);
/* One evaluation. sample: batch x in_channels x h x w (NCHW, fp32, latent
 * pixels; any h, w); timestep: the DDPM step, the same for the whole batch;
 * context: batch x context_tokens x cross_attention_dim; timestep_cond:
 * batch x time_cond_proj_dim or NULL (then no guidance embedding is added).
 * out: batch x out_channels x h x w. */
gboolean lcm_unet_run(LcmUNet *unet, const float *sample, int batch, int h, int w, float timestep,
                      const float *context, int context_tokens, const float *timestep_cond,
                      float *out, GError **error);
/* Query-block size of chunked attention (0 = built-in); tests split small
 * cases into several chunks with it. */
void lcm_unet_set_attention_chunk(LcmUNet *unet, int rows);
/* While set, lcm_unet_run checks *cancel before each resnet block and fails
 * with LCM_ERROR_CANCELLED once it is non-zero, so a long step can be
 * stopped within a fraction of itself. NULL (the default) turns it off. */
void lcm_unet_set_cancel(LcmUNet *unet, volatile gint *cancel);

/* LCM's guidance-scale embedding of w = guidance_scale - 1: dim floats,
 * [sin(1000 w f_i), cos(1000 w f_i)] with f_i = exp(-i ln(10000)/(dim/2 - 1)). */
void lcm_guidance_embedding(float w, int dim, float *out);

/* ---- VAE (diffusers AutoencoderKL) ------------------------------------------ */

typedef struct LcmVae LcmVae;

LcmVae *lcm_vae_load(LcmModel *model, LcmPrecision precision, GError **error);
void lcm_vae_free(LcmVae *vae);
float lcm_vae_scaling_factor(const LcmVae *vae); /* 0.18215 for SD1.5 */
int lcm_vae_latent_channels(const LcmVae *vae);
/* image: batch x 3 x h x w in [-1, 1] (h, w multiples of 8). Writes the
 * posterior's mean and log-variance (clamped to [-30, 20]), each
 * batch x latent_channels x h/8 x w/8; latents = scaling * (mean + std*noise). */
gboolean lcm_vae_encode(LcmVae *vae, const float *image, int batch, int h, int w, float *mean,
                        float *logvar, GError **error);
/* z: batch x latent_channels x h x w, already divided by the scaling factor.
 * image: batch x 3 x 8h x 8w, roughly [-1, 1], not clamped. */
gboolean lcm_vae_decode(LcmVae *vae, const float *z, int batch, int h, int w, float *image,
                        GError **error);
void lcm_vae_set_attention_chunk(LcmVae *vae, int rows);
/* The same as lcm_unet_set_cancel, for lcm_vae_encode and lcm_vae_decode. */
void lcm_vae_set_cancel(LcmVae *vae, volatile gint *cancel);

/* ---- Random numbers (torch CPU generator, bit for bit) -------------------- */

/* torch.manual_seed(seed) then torch.randn draws, reproduced exactly, so a
 * seed gives the same noise here as in diffusers, ComfyUI or sd.cpp --rng cpu.
 * Only the low 32 bits of the seed count (as in torch). */
typedef struct LcmRng LcmRng;

LcmRng *lcm_rng_new(uint64_t seed);
void lcm_rng_free(LcmRng *rng);
/* One torch.randn(n) draw of n float32 values. */
void lcm_rng_randn(LcmRng *rng, float *out, int64_t n);

/* ---- LCM scheduler (diffusers LCMScheduler) -------------------------------- */

#define LCM_MAX_STEPS 50

typedef struct LcmScheduler LcmScheduler;

/* scheduler_config.json, or NULL for the LCM defaults. */
LcmScheduler *lcm_scheduler_new(const char *config_json, GError **error);
/* The same from the config's JSON text (NULL = defaults); `name` labels
 * messages. */
LcmScheduler *lcm_scheduler_new_from_json(const char *json, const char *name, GError **error);
void lcm_scheduler_free(LcmScheduler *scheduler);
/* The LCM timesteps for `steps` steps (1..LCM_MAX_STEPS) inside the first
 * strength x original_inference_steps origin steps (LCM img2img semantics;
 * 1.0 for txt2img). Returns the number written to timesteps[]. */
int lcm_scheduler_timesteps(const LcmScheduler *scheduler, int steps, float strength,
                            int *timesteps, GError **error);
int lcm_scheduler_train_steps(const LcmScheduler *scheduler);
float lcm_scheduler_alpha_cumprod(const LcmScheduler *scheduler, int timestep);
float lcm_scheduler_beta(const LcmScheduler *scheduler, int timestep);
void lcm_scheduler_boundary(const LcmScheduler *scheduler, int timestep, float *c_skip,
                            float *c_out);
/* One LCM step on n values at `timestep`: denoised = c_out x0 + c_skip x
 * (x0 from the model output by the prediction type). When noise is non-NULL
 * prev_sample = sqrt(ac[prev]) denoised + sqrt(1 - ac[prev]) noise;
 * otherwise (the last step) prev_sample = denoised. */
void lcm_scheduler_step(const LcmScheduler *scheduler, const float *model_output, int timestep,
                        int prev_timestep, const float *sample, const float *noise, size_t n,
                        float *denoised, float *prev_sample);
/* sqrt(ac[t]) original + sqrt(1 - ac[t]) noise. */
void lcm_scheduler_add_noise(const LcmScheduler *scheduler, const float *original,
                             const float *noise, int timestep, size_t n, float *out);

/* ---- Benchmarking ------------------------------------------------------------ */

/* Measured throughput, in FLOP/s, of the UNet's commonest layer: a 3x3
 * convolution 320 -> 320 channels at 64x64, batch 1, on random data (best of
 * several runs after a warm-up). The compute peak the benchmark compares each
 * stage with. Returns 0 on failure. */
double lcm_benchmark_conv_peak(LcmPrecision precision, GError **error);

/* ---- Pipelines: txt2img, img2img and inpainting ------------------------------ */

/* An image in memory: height x width x channels floats, row-major (HWC),
 * values in [0, 1]. Pictures are RGB (3 channels); masks have 1 channel,
 * where 1 means "repaint" and values between 0 and 1 are soft edges. */
typedef struct {
  int width, height, channels;
  float *data;
} LcmImage;

/* The longest picture side the pipelines take; readers of user pictures
 * refuse larger ones before decoding them (larger sides would overflow the
 * size arithmetic long before they fit in memory). */
#define LCM_MAX_IMAGE_SIDE 16384

/* A zero-filled image. */
LcmImage *lcm_image_new(int width, int height, int channels);
/* The picture a decoder's output shows: planes is 3 x height x width (CHW,
 * roughly [-1, 1], as lcm_vae_decode and lcm_taesd_decode give it), the
 * image clamp(planes / 2 + 0.5, 0, 1) in HWC. */
LcmImage *lcm_image_from_decoded(const float *planes, int width, int height);
/* A rough picture of SD1.5-family latents (4 channels x height x width, UNet
 * scale, as in LcmProgress) at latent resolution, by the fixed linear
 * latent-to-RGB map previews commonly use: free next to any decoder, for
 * step previews when no TAESD is at hand. NULL for other channel counts. */
LcmImage *lcm_image_from_latents_approx(const float *latents, int channels, int width, int height);
void lcm_image_free(LcmImage *image);

/* The image a caller shows after inpainting: result = (1 - m) source + m
 * result, pixel by pixel, with the mask m as given (soft edges blend), so
 * every pixel where m = 0 is the source pixel exactly. All three must have
 * the same size; result and source 3 channels, mask 1. */
gboolean lcm_image_composite(LcmImage *result, const LcmImage *source, const LcmImage *mask,
                             GError **error);

typedef enum {
  LCM_MODE_TXT2IMG,
  LCM_MODE_IMG2IMG,
  LCM_MODE_INPAINT,
} LcmMode;

/* How `strength` chooses the timesteps of img2img and inpainting:
 * RESPACE (diffusers' LatentConsistencyModelImg2ImgPipeline): all `steps`
 *   steps, spread over the first strength x 50 LCM origin steps, so a run
 *   always makes `steps` UNet calls; strength 0.5, 4 steps: 499 379 259 139.
 * SLICE (StableDiffusionImg2ImgPipeline and StableDiffusionInpaintPipeline):
 *   the last min(int(steps x strength), steps) steps of the full schedule;
 *   strength 0.5, 4 steps: 499 259. Needs strength >= 1/steps.
 * AUTO: what diffusers does: RESPACE for img2img with an LCM UNet (one with
 *   a guidance embedding), SLICE for other UNets and for inpainting. */
typedef enum {
  LCM_STRENGTH_AUTO,
  LCM_STRENGTH_RESPACE,
  LCM_STRENGTH_SLICE,
} LcmStrengthRule;

/* Writes the index-th random tensor of a run (0, 1, ... in draw order) of n
 * floats (always one latent: latent_channels x height/8 x width/8). Returns
 * FALSE with error set to stop the run. The default source is torch.randn
 * on one CPU generator seeded with params->seed, drawn in diffusers' order:
 *   txt2img: the initial latents, then the noise of each non-final step;
 *   img2img: the VAE sample noise of the source, the start noise, steps;
 *   inpaint: the VAE noise of the source (drawn only for a 4-channel UNet
 *            or strength < 1), the start noise, the VAE noise of the masked
 *            source (drawn even by a 4-channel UNet, which does not use it),
 *            then the steps.
 * so a seed gives the picture diffusers gives for that seed. */
typedef gboolean (*LcmNoiseFunc)(int index, float *out, int64_t n, gpointer user_data,
                                 GError **error);

/* What a progress callback is told after each UNet step. */
typedef struct {
  int step;     /* index of the step just done, from 0 */
  int steps;    /* UNet steps in this run */
  int timestep; /* the DDPM timestep of this step */
  /* The step's prediction of the finished latents (LCM's `denoised`),
   * latent_channels x latent_height x latent_width, valid during the call.
   * lcm_pipeline_decode_latents turns it into a preview image. */
  const float *denoised;
  int latent_channels, latent_width, latent_height;
} LcmProgress;

/* Called on the thread running the pipeline; it may call
 * lcm_pipeline_decode_latents on the same pipeline. */
typedef void (*LcmProgressFunc)(const LcmProgress *progress, gpointer user_data);

typedef struct {
  LcmMode mode;
  const char *prompt;          /* NULL = "" */
  const char *negative_prompt; /* NULL = ""; used only with classifier-free guidance */
  int steps;                   /* 1..LCM_MAX_STEPS; 2-8 is typical */
  /* LCM UNets (guidance embedding): w = guidance - 1 goes into the UNet, one
   * UNet call per step; diffusers' default is 8. Other UNets (SD with
   * LCM-LoRA): classifier-free guidance when > 1 (a batch of 2 per step,
   * negative prompt first); 1 to 2 suits LCM-LoRA. */
  double guidance_scale;
  double strength; /* img2img and inpaint: in (0, 1]; 1 = start from pure noise */
  LcmStrengthRule strength_rule;
  uint64_t seed;         /* only the low 32 bits count, as in torch */
  int width, height;     /* txt2img: the output size, multiples of 8 */
  const LcmImage *image; /* img2img, inpaint: the RGB source, sides multiples of 8 */
  /* inpaint: the source's size, 1 channel. The UNet sees it binarised at 0.5
   * (diffusers); soft edges count only in lcm_image_composite. */
  const LcmImage *mask;
  LcmNoiseFunc noise; /* NULL = torch.randn seeded with `seed` (see above) */
  gpointer noise_data;
  LcmProgressFunc progress; /* may be NULL */
  gpointer progress_data;
  /* Checked between the stages of a run and before every resnet block of the
   * UNet and the VAE: when it holds a non-zero value the run stops with
   * LCM_ERROR_CANCELLED within a block's time. May be NULL. */
  volatile gint *cancel;
} LcmPipelineParams;

/* txt2img, 512 x 512, 4 steps, guidance 1, strength 1, seed 0, AUTO, no
 * callbacks. */
void lcm_pipeline_params_init(LcmPipelineParams *params);

/* Tokenizer, text encoder, UNet, VAE and scheduler of a model, loaded once
 * for many runs. The model may be freed once this returns. A pipeline runs
 * one thing at a time: give each thread its own. */
typedef struct LcmPipeline LcmPipeline;

LcmPipeline *lcm_pipeline_new(LcmModel *model, LcmPrecision precision, GError **error);
void lcm_pipeline_free(LcmPipeline *pipeline);
/* Whether the model can run a mode: an inpainting UNet (9 input channels)
 * runs only LCM_MODE_INPAINT; other UNets run all three. */
gboolean lcm_pipeline_supports(const LcmPipeline *pipeline, LcmMode mode);
/* Channels of the model's latents (the VAE's; 4 for SD1.5). */
int lcm_pipeline_latent_channels(const LcmPipeline *pipeline);
/* A guidance scale that suits the model: 8 for an LCM UNet, 1 otherwise. */
double lcm_pipeline_default_guidance(const LcmPipeline *pipeline);

/* One run. Returns the decoded RGB image (the txt2img size, or the source's
 * size), clamp(decoder/2 + 0.5, 0, 1), as diffusers' pipelines give it;
 * inpainting returns the raw result, to be composited with
 * lcm_image_composite. Repeated runs reuse the text embeddings of prompts
 * already seen and the VAE encoding of the same source pixels, so changing
 * only the seed, steps or guidance skips that work. */
LcmImage *lcm_pipeline_run(LcmPipeline *pipeline, const LcmPipelineParams *params, GError **error);
/* The same run stopped before decoding: the final latents (latent_channels x
 * latent_height x latent_width, UNet scale, as in LcmProgress; g_free them),
 * their size in *latent_width and *latent_height. lcm_pipeline_decode_latents
 * makes the run's picture of them; a live preview may use TAESD instead. */
float *lcm_pipeline_run_latents(LcmPipeline *pipeline, const LcmPipelineParams *params,
                                int *latent_width, int *latent_height, GError **error);
/* Decodes latents (latent_channels x latent_height x latent_width, as in
 * LcmProgress) into an RGB image of 8x the size, the way a run's result is
 * decoded. */
LcmImage *lcm_pipeline_decode_latents(LcmPipeline *pipeline, const float *latents, int latent_width,
                                      int latent_height, GError **error);
/* Forgets the cached prompt embeddings and VAE encodings. */
void lcm_pipeline_clear_caches(LcmPipeline *pipeline);

/* ---- TAESD (diffusers AutoencoderTiny): fast approximate VAE ---------------- */

/* madebyollin's tiny autoencoder: a few percent of the VAE's cost, for live
 * previews. Its latents are UNet-scale (scaling factor 1): a pipeline's
 * latents go in unchanged, with no division by the VAE's 0.18215. */
typedef struct LcmTaesd LcmTaesd;

/* path: a folder (diffusers AutoencoderTiny: config.json +
 * diffusion_pytorch_model.safetensors; or madebyollin's
 * taesd_decoder.safetensors and/or taesd_encoder.safetensors), or one such
 * .safetensors file. A file may hold only the decoder or only the encoder. */
LcmTaesd *lcm_taesd_load(const char *path, LcmPrecision precision, GError **error);
void lcm_taesd_free(LcmTaesd *taesd);
gboolean lcm_taesd_has_decoder(const LcmTaesd *taesd);
gboolean lcm_taesd_has_encoder(const LcmTaesd *taesd);
int lcm_taesd_latent_channels(const LcmTaesd *taesd); /* 4 for SD1.5 */
/* latents: batch x latent_channels x h x w (NCHW, fp32, UNet scale).
 * image: batch x 3 x 8h x 8w, roughly [-1, 1] and not clamped, like
 * lcm_vae_decode: display clamp(image/2 + 0.5, 0, 1). */
gboolean lcm_taesd_decode(LcmTaesd *taesd, const float *latents, int batch, int h, int w,
                          float *image, GError **error);
/* image: batch x 3 x h x w in [-1, 1] (h, w multiples of 8). latents:
 * batch x latent_channels x h/8 x w/8, UNet scale, deterministic (no
 * sampling, no scaling factor). */
gboolean lcm_taesd_encode(LcmTaesd *taesd, const float *image, int batch, int h, int w,
                          float *latents, GError **error);
/* TAESD weights for a model, for lcm_taesd_load: a taesd/ or vae_tiny/
 * subfolder of a diffusers model folder; beside a single-file checkpoint,
 * madebyollin's taesd_decoder.safetensors (the folder is returned) or a
 * taesd/ or vae_tiny/ folder; else a taesd/ or vae_tiny/ folder in
 * lcm_models_dir(). model_path may be NULL. NULL when none; g_free it. */
char *lcm_find_taesd(const char *model_path);

/* ---- LoRA (kohya / sd-scripts and diffusers / peft files) ------------------ */

/* Merges a LoRA .safetensors into the model's UNet and text encoder: each
 * weight W a module changes becomes W + scale * alpha/rank * up @ down as its
 * network loads (no second copy of the model is kept). Call it right after
 * opening the model, before its UNet or text encoder loads (lcm_unet_load,
 * lcm_text_encoder_load, lcm_pipeline_new, lcm_model_read_tensor); later it
 * fails with LCM_ERROR_INVALID. Several LoRAs merge in the order added, each
 * with its own scale (e.g. LCM-LoRA at 1.0, then a style LoRA at 0.8).
 * Reads kohya keys (lora_unet_* / lora_te_* with the diffusers or the LDM
 * module path, .lora_down / .lora_up / .alpha) and diffusers / peft keys
 * (unet.* / text_encoder.* with .lora_A / .lora_B or .lora.down / .lora.up;
 * alpha already folded in). The whole file is checked before anything
 * merges: a LoRA for another architecture (SDXL, SD 2.x) and keys that match
 * no tensor of the model fail with LCM_ERROR_UNSUPPORTED (naming the first
 * few), shapes that do not fit with LCM_ERROR_SHAPE. Modules for a network
 * the model lacks (text encoder modules of a UNet-only model) are skipped. */
gboolean lcm_model_add_lora(LcmModel *model, const char *path, float scale, GError **error);
/* The networks a LoRA file changes: a NULL-terminated list of "unet" and / or
 * "text_encoder" (g_strfreev it); NULL with error when it is no LoRA this
 * loader reads. */
char **lcm_lora_networks(const char *path, GError **error);

/* ---- Devices ------------------------------------------------------------------ */

/* Whether the linked oneDNN has a GPU runtime and finds at least one GPU
 * (dnnl_engine_get_count(dnnl_gpu) > 0). Debian's oneDNN is CPU-only, so
 * this is FALSE there; everything runs on the CPU engine then. */
gboolean lcm_gpu_available(void);

G_END_DECLS
