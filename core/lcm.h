/* gimp-lcm core: Latent Consistency Model inference on oneDNN.
 *
 * The one public header of the core library. ui/, plugin/ and tools/ use
 * nothing else. Every fallible function reports failure through a GError in
 * the LCM_ERROR domain, with a message a user can act on.
 */
#pragma once

#include <gio/gio.h>
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
  LCM_ERROR_NOT_FINITE,  /* a network computed NaN or infinity (damaged weights, overflow) */
  LCM_ERROR_NETWORK,     /* a download failed: offline, server unreachable, HTTP error */
  LCM_ERROR_CHECKSUM,    /* a downloaded or installed file differs from what the Hub states */
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

/* The packed-weight cache (docs/architecture.md, "Weight cache"): networks
 * loaded by this process keep their weights, packed for this CPU, in
 * g_get_user_cache_dir()/gimp-lcm/weights so that the next process maps
 * them instead of converting them again. The environment decides by
 * default: GIMP_LCM_WEIGHT_CACHE=off turns it off, =DIR puts it in DIR;
 * GIMP_LCM_WEIGHT_CACHE_MAX_MB bounds its size (default 12288, least
 * recently used entries go first). This call overrides the on/off choice
 * for the process; call it before loading. */
void lcm_weight_cache_set_enabled(gboolean enabled);
const char *lcm_precision_name(LcmPrecision precision);
gboolean lcm_precision_parse(const char *name, LcmPrecision *out, GError **error);

/* ---- Tokenizer (CLIP byte-level BPE, HF CLIPTokenizer + ftfy semantics) --- */

#define LCM_CLIP_TOKENS 77
#define LCM_CLIP_BOS 49406
#define LCM_CLIP_EOS 49407

typedef struct LcmTokenizer LcmTokenizer;

LcmTokenizer *lcm_tokenizer_new(const char *vocab_json_path, const char *merges_txt_path,
                                GError **error);
/* A tokenizer folder: vocab.json, merges.txt and the pad token named by
 * special_tokens_map.json or tokenizer_config.json (EOS when neither names
 * one; SDXL's tokenizer_2 pads with "!"). */
LcmTokenizer *lcm_tokenizer_new_from_folder(const char *dir, GError **error);
/* Makes `pad_text` (a vocabulary entry) the pad token; one other than EOS
 * becomes a special token, as lcm_tokenizer_encode says. */
gboolean lcm_tokenizer_set_pad_token(LcmTokenizer *tokenizer, const char *pad_text, GError **error);
/* The CLIP vocabulary shipped in the project's data folder. */
LcmTokenizer *lcm_tokenizer_new_default(GError **error);
void lcm_tokenizer_free(LcmTokenizer *tokenizer);
/* Fills ids[LCM_CLIP_TOKENS]: BOS, up to 75 tokens, EOS, then the pad
 * token. A pad token other than EOS is special, as in HF: each occurrence
 * of its text in `text` is cut out as that id (SDXL's tokenizer_2 turns
 * every "!" into id 0). Returns the number of tokens before truncation. */
int lcm_tokenizer_encode(const LcmTokenizer *tokenizer, const char *text,
                         int32_t ids[LCM_CLIP_TOKENS]);

/* ---- Models ---------------------------------------------------------------- */

/* The folder where users put models: $GIMP_LCM_MODELS if set, else
 * $XDG_DATA_HOME/gimp-lcm/models (~/.local/share/gimp-lcm/models). */
char *lcm_models_dir(void);
/* The model used when none is named: the first diffusers folder or
 * .safetensors checkpoint (by name) in the models folder, else the first
 * supported catalogue model found in the Hugging Face cache, else the bundled
 * tiny random-weight test model, with *is_test_model set. NULL when none
 * exists. g_free the result. */
char *lcm_default_model(gboolean *is_test_model);
/* ---- Catalogue, discovery and downloads (core/catalogue.c, core/hub.c) ------ */

/* What a model-like file or folder is to the pipeline. */
typedef enum {
  LCM_ASSET_MODEL, /* a diffusers folder or a single-file checkpoint: lcm_model_open */
  LCM_ASSET_LORA,  /* a LoRA .safetensors: lcm_model_add_lora */
  LCM_ASSET_TAESD, /* TAESD weights: lcm_taesd_load */
} LcmAssetKind;

/* One Hub repository an entry takes files from. */
typedef struct {
  char *repo;     /* Hub repository id, "segmind/SSD-1B" */
  char *revision; /* a commit or a branch ("main") */
  char *into;     /* folder inside the install folder its files go to; "" for the folder itself */
  char **files;   /* repository paths to fetch, NULL-terminated */
} LcmCatalogueSource;

/* One entry of the catalogue of downloadable models (data/models.json): the
 * files of one or several Hub repositories, put together into one folder
 * (lcm-ssd-1b: its UNet into unet/, everything else from segmind/SSD-1B). */
typedef struct {
  char *name;        /* "LCM_Dreamshaper_v7" */
  char *repo;        /* the first source's repository, "SimianLuo/LCM_Dreamshaper_v7" */
  char *revision;    /* the first source's revision */
  char *family;      /* "sd15", "sdxl" */
  char *install;     /* folder inside lcm_models_dir() it installs into */
  char *description; /* one line for people */
  LcmAssetKind kind;
  /* Every file's path inside the install folder (a source's `into` joined
   * with its repository path), all sources in order, NULL-terminated; for an
   * entry of one source without `into`, its repository paths. */
  char **files;
  LcmCatalogueSource *sources; /* at least one */
  int n_sources;
  /* The family is one this build opens; other entries are listed but
   * neither offered nor downloaded. */
  gboolean supported;
} LcmCatalogueEntry;

/* The catalogue: `path`, or NULL for the project's data/models.json. A
 * GPtrArray of LcmCatalogueEntry (freeing them); NULL with error. */
GPtrArray *lcm_catalogue_load(const char *path, GError **error);
/* The entry named `name` or whose first source is Hub repository `name` (both
 * case-insensitive). */
const LcmCatalogueEntry *lcm_catalogue_find(const GPtrArray *catalogue, const char *name);
/* Where the entry installs: lcm_models_dir()/install. g_free it. */
char *lcm_catalogue_install_dir(const LcmCatalogueEntry *entry);
/* The usable path of an entry already present, in the models folder (a
 * complete download: every file of every source) or, for an entry of one
 * source without `into`, in the Hugging Face cache (a snapshot holding all
 * its files; parts spread over several cached repositories are not combined);
 * what lcm_model_open / lcm_model_add_lora / lcm_taesd_load take (a LoRA's
 * .safetensors file, else the folder). NULL when absent. */
char *lcm_catalogue_locate(const LcmCatalogueEntry *entry);

/* The Hugging Face Hub cache, found as huggingface_hub finds it:
 * $HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub. It is
 * only ever read. g_free it. */
char *lcm_hf_cache_dir(void);
/* The Hub's base URL: $HF_ENDPOINT (without a trailing '/'), else
 * https://huggingface.co. g_free it. */
char *lcm_hub_endpoint(void);

typedef enum {
  LCM_FOUND_MODELS_FOLDER, /* in lcm_models_dir() */
  LCM_FOUND_HF_CACHE,      /* a snapshot in lcm_hf_cache_dir() */
  LCM_FOUND_NOT_DOWNLOADED /* a catalogue entry not present yet */
} LcmFoundWhere;

/* A model, LoRA or TAESD found by lcm_discover. */
typedef struct {
  char *name;      /* the catalogue name, else the Hub repo id (cache), else the file name */
  char *path;      /* as lcm_catalogue_locate; NULL when not downloaded */
  char *catalogue; /* the catalogue entry's name when it is one, else NULL */
  LcmAssetKind kind;
  LcmFoundWhere where;
} LcmFoundModel;

/* Every usable model, LoRA and TAESD in the models folder and the Hugging
 * Face cache, then the supported catalogue entries present in neither
 * (LCM_FOUND_NOT_DOWNLOADED); sorted by name within each group. A GPtrArray
 * of LcmFoundModel (freeing them). catalogue may be NULL. Folders and files
 * whose name starts with '.' (unfinished downloads) are never listed. */
GPtrArray *lcm_discover(const GPtrArray *catalogue);

/* The one resolver of the CLI's --model / --lora, Script-Fu's model and loras
 * and the dialog: `spec` is a path (file or folder), a catalogue name, a Hub
 * repository id found in the cache or the models folder ("ORG/NAME"), or a
 * name inside the models folder. For LCM_ASSET_MODEL, NULL or "" is the
 * default model (lcm_default_model, with *is_test_model; may be NULL). A
 * catalogue entry not downloaded yet fails with LCM_ERROR_MISSING saying how
 * to download it. g_free the result. */
char *lcm_resolve(const char *spec, LcmAssetKind kind, gboolean *is_test_model, GError **error);

/* "PATH size N mtime S.NS inode D:I" of a file or folder, or NULL if it
 * cannot be examined: what the weight cache and the plug-in's resident
 * process key loaded weights on, so that a replaced file is loaded anew.
 * g_free the result. */
char *lcm_file_identity(const char *path);

/* Progress of lcm_catalogue_download, over all the entry's files. */
typedef struct {
  const char *file;        /* the repository path being fetched */
  int file_index;          /* 0-based */
  int file_count;          /* files of the entry */
  guint64 done, total;     /* bytes present of all files (resumed bytes included), their sum */
  double bytes_per_second; /* recent rate; 0 until known */
  double seconds_left;     /* < 0 until known */
} LcmDownloadProgress;

typedef void (*LcmDownloadProgressFunc)(const LcmDownloadProgress *progress, gpointer user_data);

/* "1.20 GB of 4.30 GB, 5.2 MB/s, 9:57 left (file 10/12 unet/...)": the
 * line the CLI and the dialog show. g_free it. */
char *lcm_download_progress_text(const LcmDownloadProgress *progress);

/* Downloads a supported catalogue entry from lcm_hub_endpoint() into
 * lcm_catalogue_install_dir(entry). Runs synchronously in the calling thread
 * (hosts with a GUI call it from a worker: progress is called in the calling
 * thread, a few times a second). What the Hub states of every file of every
 * source comes first (a missing file in any repository fails before a byte is
 * written). Each file goes to NAME.part in one hidden staging folder beside
 * the install folder (a source's files under its `into`), resuming an earlier .part with a
 * Range request (and a dropped connection up to 3 times), is checked against
 * the size and sha256 (or git blob sha1) the Hub states, and renamed; the
 * staging folder becomes the install folder once every file is verified, so a
 * folder under the install name is always complete. cancellable stops it at
 * any moment (LCM_ERROR_CANCELLED; the staging folder stays for a resume).
 * Errors: LCM_ERROR_NETWORK (offline, unreachable, HTTP 404/5xx...),
 * LCM_ERROR_CHECKSUM (nothing installed, the bad file discarded), LCM_ERROR_IO
 * (disk full, unwritable folder), LCM_ERROR_UNSUPPORTED (family not opened by
 * this build). Does nothing when the entry is already installed. */
gboolean lcm_catalogue_download(const LcmCatalogueEntry *entry, LcmDownloadProgressFunc progress,
                                gpointer user_data, GCancellable *cancellable, GError **error);
/* Re-reads an installed entry's files and checks them against the sizes and
 * sha256 recorded when it was downloaded (LCM_ERROR_CHECKSUM naming the first
 * bad file; LCM_ERROR_MISSING when not installed by lcm_catalogue_download). */
gboolean lcm_catalogue_verify(const LcmCatalogueEntry *entry, GError **error);

/* A file of the project's data folder ($GIMP_LCM_DATADIR, the installed
 * share/gimp-lcm, or the source tree's data/), or NULL. g_free it. */
char *lcm_find_data_file(const char *relative);

/* Where each part of a model lives. Any field may be NULL when the part is
 * not needed. A single-file checkpoint provides unet, vae and text encoder. */
typedef struct {
  const char *unet;           /* diffusers folder: config.json + weights */
  const char *unet_weights;   /* a non-default weight file inside it (e.g. .fp16) */
  const char *vae;            /* diffusers folder */
  const char *text_encoder;   /* diffusers folder */
  const char *text_encoder_2; /* SDXL's second text encoder (diffusers folder) */
  const char *tokenizer;      /* folder with vocab.json + merges.txt */
  const char *tokenizer_2;    /* SDXL's second tokenizer */
  const char *scheduler;      /* folder with scheduler_config.json */
  const char *checkpoint;     /* A1111 / civitai single-file .safetensors */
  /* A text-encoder config.json to use instead of the one inferred from a
   * checkpoint's shapes (only needed for CLIP variants whose head count does
   * not follow from the width). */
  const char *text_encoder_config;
  const char *text_encoder_2_config; /* the same for the second text encoder */
  /* A diffusers UNet config.json to use instead of the one inferred from a
   * checkpoint's shapes (needed where the head count or SDXL's time-id width
   * do not follow SD1.5's or SDXL's, e.g. tiny test models). */
  const char *unet_config;
} LcmModelParts;

/* SD1.5 (one CLIP text encoder, 768-wide context) or SDXL (CLIP + OpenCLIP
 * text encoders, their penultimate states concatenated, and a pooled text
 * embedding for the UNet's added conditioning), SSD-1B included. */
typedef enum {
  LCM_FAMILY_SD15,
  LCM_FAMILY_SDXL,
} LcmModelFamily;

typedef struct LcmModel LcmModel;

/* A diffusers pipeline folder (model_index.json) or a single-file checkpoint.
 * Only the headers are read here; weights load with each network. */
LcmModel *lcm_model_open(const char *path, GError **error);
LcmModel *lcm_model_open_parts(const LcmModelParts *parts, GError **error);
void lcm_model_free(LcmModel *model);
/* SDXL for a diffusers folder with an "XL" pipeline class, a checkpoint
 * with SGM conditioner keys, or parts with a second text encoder. */
LcmModelFamily lcm_model_family(const LcmModel *model);
/* A short human-readable description ("diffusers folder X", ...). */
const char *lcm_model_describe(const LcmModel *model);
/* Memory guard (docs/architecture.md, "Memory guard"): the bytes a
 * width x height run of the model needs at a precision: every network's
 * packed weights (parameter counts from the weight files x 4 bytes for fp32,
 * 2 for bf16) plus the largest working set (UNet step or VAE decode). */
gboolean lcm_model_memory_needed(LcmModel *model, LcmPrecision precision, int width, int height,
                                 guint64 *bytes, GError **error);
/* The memory a run may use: $GIMP_LCM_MEMORY_LIMIT_MB when set (tests),
 * else MemAvailable (else MemTotal) of /proc/meminfo; 0 when unknown. */
guint64 lcm_memory_available(void);
/* Fails with LCM_ERROR_UNSUPPORTED, saying how much is needed, how much
 * there is, and whether bf16 or SSD-1B would fit, when the run does not fit;
 * lcm_pipeline_new checks the model's native size before loading. */
gboolean lcm_model_check_memory(LcmModel *model, LcmPrecision precision, int width, int height,
                                GError **error);
/* A network's tensor by its diffusers name, as the networks load it (fp32,
 * whatever the file layout). network: "unet", "vae", "text_encoder" or
 * "text_encoder_2".
 * shape has room for 8 dims. g_free the result. */
float *lcm_model_read_tensor(LcmModel *model, const char *network, const char *name, int *ndims,
                             int64_t *shape, GError **error);
/* The model's tokenizer: its own vocabulary, or the bundled CLIP one. */
LcmTokenizer *lcm_model_load_tokenizer(LcmModel *model, GError **error);

/* ---- Text encoder (transformers CLIPTextModel / ...WithProjection) ------- */

typedef struct LcmTextEncoder LcmTextEncoder;

/* The model's (first) text encoder: SD1.5's, or SDXL's CLIP ViT-L. */
LcmTextEncoder *lcm_text_encoder_load(LcmModel *model, LcmPrecision precision, GError **error);
/* SDXL's second text encoder (OpenCLIP ViT-bigG, with a text_projection). */
LcmTextEncoder *lcm_text_encoder_load_2(LcmModel *model, LcmPrecision precision, GError **error);
void lcm_text_encoder_free(LcmTextEncoder *encoder);
int lcm_text_encoder_hidden_size(const LcmTextEncoder *encoder);
int lcm_text_encoder_layers(const LcmTextEncoder *encoder);
/* Width of the pooled output: the projection's, else the hidden size. */
int lcm_text_encoder_pooled_size(const LcmTextEncoder *encoder);

/* What lcm_text_encoder_run writes. */
typedef struct {
  /* hidden = hidden_states[-(1 + skip)]: 0 is the last layer's output, 1
   * the penultimate's (SDXL), up to the layer count (the embeddings). */
  int skip;
  gboolean final_layer_norm; /* through final_layer_norm (SD1.5, clip skip) */
  float *hidden;             /* batch x 77 x hidden_size, or NULL */
  /* batch x pooled_size, or NULL: final_layer_norm of the last layer at
   * each sequence's EOS (transformers' rule), through text_projection when
   * the encoder has one (SDXL's text_embeds). */
  float *pooled;
} LcmTextEncoderOutputs;

/* ids: batch x LCM_CLIP_TOKENS; no attention mask (causal only). */
gboolean lcm_text_encoder_run(LcmTextEncoder *encoder, const int32_t *ids, int batch,
                              const LcmTextEncoderOutputs *outputs, GError **error);
/* last_hidden_state: batch x 77 x hidden, fp32 (skip 0, final layer norm). */
gboolean lcm_text_encoder_encode(LcmTextEncoder *encoder, const int32_t *ids, int batch,
                                 float *last_hidden_state, GError **error);

/* ---- Prompt encoding (diffusers' encode_prompt, SD1.5 and SDXL) ----------- */

/* The tokenizer(s) and text encoder(s) of a model, turning prompts into the
 * UNet's text conditioning:
 *   context: 77 x context_dim floats, the UNet's encoder_hidden_states.
 *     SD1.5: the CLIP encoder's last layer through its final layer norm
 *     (768 wide). SDXL: the penultimate layers of both encoders, without
 *     final layer norm, concatenated TE1 first (768 + 1280 = 2048 wide).
 *   pooled: pooled_dim floats, SDXL's text_embeds (TE2's projected EOS
 *     vector, 1280 wide) for the UNet's added conditioning; SD1.5 has none
 *     (pooled_dim 0, pass NULL).
 *   clip_skip: 0 = the default above; N takes the hidden state N layers
 *     earlier (SD1.5: then through the final layer norm, as
 *     StableDiffusionPipeline's clip_skip; SDXL: from both encoders).
 *   prompt_2: SDXL's prompt for TE2 (NULL = prompt); SD1.5 ignores it. */
typedef struct LcmPromptEncoder LcmPromptEncoder;

LcmPromptEncoder *lcm_prompt_encoder_new(LcmModel *model, LcmPrecision precision, GError **error);
void lcm_prompt_encoder_free(LcmPromptEncoder *encoder);
LcmModelFamily lcm_prompt_encoder_family(const LcmPromptEncoder *encoder);
int lcm_prompt_encoder_context_dim(const LcmPromptEncoder *encoder);
int lcm_prompt_encoder_pooled_dim(const LcmPromptEncoder *encoder);
/* The largest clip_skip the encoders allow. */
int lcm_prompt_encoder_max_clip_skip(const LcmPromptEncoder *encoder);
/* One prompt: context (77 x context_dim) and pooled (pooled_dim or NULL). */
gboolean lcm_prompt_encoder_encode(LcmPromptEncoder *encoder, const char *prompt,
                                   const char *prompt_2, int clip_skip, float *context,
                                   float *pooled, GError **error);
/* The same from token ids (batch x 77 each; ids_2 from the second
 * tokenizer, NULL for SD1.5): batch x 77 x context_dim, batch x pooled_dim. */
gboolean lcm_prompt_encoder_encode_ids(LcmPromptEncoder *encoder, const int32_t *ids,
                                       const int32_t *ids_2, int batch, int clip_skip,
                                       float *context, float *pooled, GError **error);
/* Whether a classifier-free-guidance run with this negative prompt uses
 * all-zero uncond embeddings instead of encoding it: SDXL with no negative
 * prompt (NULL) when the model has force_zeros_for_empty_prompt (SDXL's
 * default). A NULL negative prompt otherwise means "". */
gboolean lcm_prompt_encoder_negative_is_zero(const LcmPromptEncoder *encoder,
                                             const char *negative_prompt);
/* A classifier-free-guidance batch, uncond first as diffusers orders it:
 * context 2 x 77 x context_dim, pooled 2 x pooled_dim (or NULL for SD1.5).
 * The negative half: zeros (see above), or negative_prompt (NULL = "") and
 * negative_prompt_2 (NULL = negative_prompt) without clip skip, as in
 * diffusers. */
gboolean lcm_prompt_encoder_encode_cfg(LcmPromptEncoder *encoder, const char *prompt,
                                       const char *prompt_2, const char *negative_prompt,
                                       const char *negative_prompt_2, int clip_skip, float *context,
                                       float *pooled, GError **error);

/* ---- UNet (diffusers UNet2DConditionModel, SD1.5 and SDXL families) ---------- */

typedef struct LcmUNet LcmUNet;

/* SDXL's size conditioning per image: original size (height, width), crop
 * top-left (top, left), target size (height, width), in pixels. */
#define LCM_TIME_IDS 6

LcmUNet *lcm_unet_load(LcmModel *model, LcmPrecision precision, GError **error);
void lcm_unet_free(LcmUNet *unet);
int lcm_unet_in_channels(const LcmUNet *unet); /* 4, or 9 for inpainting */
int lcm_unet_out_channels(const LcmUNet *unet);
int lcm_unet_time_cond_proj_dim(const LcmUNet *unet); /* 0 unless an LCM UNet */
int lcm_unet_cross_attention_dim(const LcmUNet *unet);
/* Width of the pooled text embedding an SDXL UNet takes with its time ids
 * (addition_embed_type text_time); 0 for SD1.5-family UNets. */
int lcm_unet_text_embeds_dim(const LcmUNet *unet);

/* The per-image conditions besides the text context; NULL for those the
 * UNet does not take. */
typedef struct {
  /* batch x time_cond_proj_dim: LCM's guidance embedding; NULL adds none */
  const float *timestep_cond;
  /* SDXL (required there): batch x lcm_unet_text_embeds_dim pooled text
   * embeddings and batch x LCM_TIME_IDS time ids */
  const float *text_embeds;
  const float *time_ids;
} LcmUNetConditions;

/* One evaluation. sample: batch x in_channels x h x w (NCHW, fp32, latent
 * pixels; any h, w); timestep: the DDPM step, the same for the whole batch;
 * context: batch x context_tokens x cross_attention_dim; conditions may be
 * NULL for an SD1.5-family UNet. out: batch x out_channels x h x w. */
gboolean lcm_unet_run_conditioned(LcmUNet *unet, const float *sample, int batch, int h, int w,
                                  float timestep, const float *context, int context_tokens,
                                  const LcmUNetConditions *conditions, float *out, GError **error);
/* The same with only a guidance embedding (timestep_cond: batch x
 * time_cond_proj_dim or NULL): the SD1.5-family call. */
gboolean lcm_unet_run(LcmUNet *unet, const float *sample, int batch, int h, int w, float timestep,
                      const float *context, int context_tokens, const float *timestep_cond,
                      float *out, GError **error);

/* The vectors a UNet conditions its resnets on, for tests and debugging
 * (diffusers' names). Each array holds batch rows of its *_dim floats. */
typedef struct {
  int time_proj_dim, emb_dim, add_time_proj_dim, add_embeds_dim;
  float *time_proj;      /* sinusoid of the timestep */
  float *time_embedding; /* time_embedding(time_proj [+ cond_proj(timestep_cond)]) */
  float *add_time_proj;  /* SDXL: sinusoids of the time ids, LCM_TIME_IDS per row */
  float *add_embeds;     /* SDXL: text_embeds, then add_time_proj */
  float *add_embedding;  /* SDXL: add_embedding(add_embeds) */
  float *emb;            /* time_embedding [+ add_embedding]: each resnet's input, before SiLU */
} LcmUNetEmbeddings;

/* Fills *out (SD1.5: add_* NULL and 0 wide) for per-image timesteps[batch];
 * free it with lcm_unet_embeddings_clear. */
gboolean lcm_unet_embeddings(LcmUNet *unet, int batch, const float *timesteps,
                             const LcmUNetConditions *conditions, LcmUNetEmbeddings *out,
                             GError **error);
void lcm_unet_embeddings_clear(LcmUNetEmbeddings *embeddings);
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
 * AUTO: what diffusers does: RESPACE for SD1.5-family img2img with an LCM
 *   UNet (one with a guidance embedding), SLICE for other UNets, for
 *   inpainting and for the SDXL family (StableDiffusionXLImg2ImgPipeline). */
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
  const char *prompt; /* NULL = "" */
  /* Used only with classifier-free guidance. NULL: SD1.5 encodes "", SDXL
   * uses all-zero embeddings (force_zeros_for_empty_prompt); "" is encoded. */
  const char *negative_prompt;
  /* SDXL: the prompts for the second text encoder (and the pooled
   * embedding); NULL = prompt / negative_prompt. SD1.5 ignores them. */
  const char *prompt_2, *negative_prompt_2;
  int steps; /* 1..LCM_MAX_STEPS; 2-8 is typical */
  /* LCM UNets (guidance embedding): w = guidance - 1 goes into the UNet, one
   * UNet call per step; diffusers' default is 8. Other UNets (SD with
   * LCM-LoRA): classifier-free guidance when > 1 (a batch of 2 per step,
   * negative prompt first); 1 to 2 suits LCM-LoRA. */
  double guidance_scale;
  double strength; /* img2img and inpaint: in (0, 1]; 1 = start from pure noise */
  LcmStrengthRule strength_rule;
  /* 0 = off; N takes the text encoder's hidden state N layers before the
   * last, then its final layer norm (diffusers' clip_skip, which some SD1.5
   * checkpoints ask for, usually 1). The negative prompt ignores it, as in
   * diffusers. */
  int clip_skip;
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
  /* SDXL's size conditioning (time ids), in pixels: the original image size
   * (0 = the output's), the crop's top-left corner, the target size (0 = the
   * output's). SD1.5 ignores them. */
  int original_width, original_height;
  int crop_top, crop_left;
  int target_width, target_height;
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
/* diffusers' default strength of the model family's pipeline for a mode: 1
 * for txt2img; img2img 0.8 (SD1.5) or 0.3 (SDXL); inpainting 1 (SD1.5) or
 * 0.9999 (SDXL, which starts from the source noised to the second
 * timestep). */
double lcm_pipeline_default_strength(const LcmPipeline *pipeline, LcmMode mode);

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
/* TAESD weights for a model of the family, for lcm_taesd_load. SD1.5: a
 * taesd/ or vae_tiny/ subfolder of a diffusers model folder; beside a
 * single-file checkpoint, madebyollin's taesd_decoder.safetensors (the
 * folder is returned) or a taesd/ or vae_tiny/ folder; else a taesd/ or
 * vae_tiny/ folder in lcm_models_dir(). SDXL the same with TAESDXL's names
 * (taesdxl/, taesdxl_decoder.safetensors), and only taesdxl/ in the models
 * folder: TAESD never serves an SDXL model, nor TAESDXL an SD1.5 one.
 * model_path may be NULL. NULL when none; g_free it. */
char *lcm_find_taesd(const char *model_path, LcmModelFamily family);

/* ---- LoRA (kohya / sd-scripts and diffusers / peft files) ------------------ */

/* Merges a LoRA .safetensors into the model's UNet and text encoder(s): each
 * weight W a module changes becomes W + scale * alpha/rank * up @ down as its
 * network loads (no second copy of the model is kept). Call it right after
 * opening the model, before its UNet or text encoder loads (lcm_unet_load,
 * lcm_text_encoder_load, lcm_pipeline_new, lcm_model_read_tensor); later it
 * fails with LCM_ERROR_INVALID. Several LoRAs merge in the order added, each
 * with its own scale (e.g. LCM-LoRA at 1.0, then a style LoRA at 0.8).
 * Reads kohya keys (lora_unet_* / lora_te_* / SDXL's lora_te1_* and
 * lora_te2_* with the diffusers or the LDM module path, SDXL's UNet
 * input_blocks / middle_block / output_blocks too, .lora_down /
 * .lora_up / .alpha) and diffusers / peft keys (unet.* / text_encoder.* /
 * text_encoder_2.* with .lora_A / .lora_B or .lora.down / .lora.up; alpha
 * already folded in). The whole file is checked before anything merges: a
 * LoRA for another architecture (SDXL on SD1.5, SD 2.x) and keys that match
 * no tensor of the model fail with LCM_ERROR_UNSUPPORTED (naming the first
 * few), shapes that do not fit with LCM_ERROR_SHAPE. Modules for a network
 * the model lacks (text encoder modules of a UNet-only model) are skipped. */
gboolean lcm_model_add_lora(LcmModel *model, const char *path, float scale, GError **error);
/* The networks a LoRA file changes: a NULL-terminated list of "unet",
 * "text_encoder" and / or "text_encoder_2" (g_strfreev it); NULL with error
 * when it is no LoRA this loader reads. */
char **lcm_lora_networks(const char *path, GError **error);

/* ---- Devices ------------------------------------------------------------------ */

/* Whether the linked oneDNN has a GPU runtime and finds at least one GPU
 * (dnnl_engine_get_count(dnnl_gpu) > 0). Debian's oneDNN is CPU-only, so
 * this is FALSE there; everything runs on the CPU engine then. */
gboolean lcm_gpu_available(void);

G_END_DECLS
