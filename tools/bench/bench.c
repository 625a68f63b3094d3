/* gimp-lcm-bench: writes a full-size SD1.5, SDXL or SSD-1B model (LCM UNet)
 * with random weights, and times every stage of the pipeline on a model.
 *
 *   gimp-lcm-bench make-model DIR [--family sd15|sdxl|ssd1b] [--seed N]
 *   gimp-lcm-bench run --model DIR [--sizes 256,512] [--precision fp32,bf16]
 *                      [--repeat N] [--make-if-missing] [--family F] [--seed N]
 *                      [--no-fresh] [--cli PATH] [--plugin PATH] [--batch N]
 *
 * `run` prints a Markdown report on stdout (progress goes to stderr), ready
 * for docs/benchmarks.md.
 */
#include "lcm.h"
#include "model-gen.h"

#include <fcntl.h>
#include <glib/gstdio.h>
#include <math.h>
#include <omp.h>
#include <oneapi/dnnl/dnnl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#define MAX_SIZES 16
#define MAX_PRECISIONS 2
#define PROMPT "a photograph of an astronaut riding a horse on the moon, detailed, 8k"
#define GUIDANCE_SCALE 8.0f
#define TIMESTEP 999.0f
#define LATENT_FACTOR 8 /* image pixels per latent pixel (SD1.5 VAE) */

static const char *const network_labels[] = {
    [GEN_TEXT_ENCODER] = "text encoder",
    [GEN_TEXT_ENCODER_2] = "text encoder 2",
    [GEN_UNET] = "UNet",
    [GEN_VAE] = "VAE",
};

/* What a load row times: the text encoder(s), the UNet and the VAE. */
enum { PART_TEXT, PART_UNET, PART_VAE, N_PARTS };
static const char *const part_labels[] = {"text encoder(s)", "UNet", "VAE"};

/* ---- Measurements ------------------------------------------------------------ */

static double now_ms(void) {
  return g_get_monotonic_time() / 1000.0;
}

typedef struct {
  double first_ms; /* the warm-up run: primitives are created then */
  double min_ms, median_ms;
} Timing;

static int compare_doubles(const void *a, const void *b) {
  const double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

typedef gboolean (*StageRun)(gpointer data, GError **error);

/* One warm-up, then `repeat` timed runs. */
static gboolean time_stage(StageRun run, gpointer data, int repeat, Timing *out, GError **error) {
  const double start = now_ms();
  if (!run(data, error)) return FALSE;
  out->first_ms = now_ms() - start;
  double *ms = g_new(double, repeat);
  gboolean ok = TRUE;
  for (int i = 0; i < repeat && ok; i++) {
    const double t0 = now_ms();
    ok = run(data, error);
    ms[i] = now_ms() - t0;
  }
  if (ok) {
    qsort(ms, (size_t)repeat, sizeof *ms, compare_doubles);
    out->min_ms = ms[0];
    out->median_ms = repeat % 2 ? ms[repeat / 2] : (ms[repeat / 2 - 1] + ms[repeat / 2]) / 2;
  }
  g_free(ms);
  return ok;
}

/* A field of /proc/self/status in KiB ("VmHWM"), or -1. */
static long proc_status_kib(const char *field) {
  g_autofree char *status = NULL;
  if (!g_file_get_contents("/proc/self/status", &status, NULL, NULL)) return -1;
  g_autofree char *key = g_strconcat("\n", field, ":", NULL);
  const char *line = strstr(status, key);
  return line ? strtol(line + strlen(key), NULL, 10) : -1;
}

/* Resets VmHWM to the current resident size, so each configuration reports
 * its own peak (ru_maxrss cannot be reset: it stays the process's peak). */
static gboolean reset_peak_rss(void) {
  FILE *f = fopen("/proc/self/clear_refs", "w");
  if (!f) return FALSE;
  const gboolean ok = fputs("5", f) >= 0;
  return fclose(f) == 0 && ok;
}

static long max_rss_kib(void) {
  struct rusage usage;
  return getrusage(RUSAGE_SELF, &usage) == 0 ? usage.ru_maxrss : -1;
}

/* Asks the kernel to drop the files of `folder` ending in `suffix` from the
 * page cache (best effort: pages another process maps stay; written pages
 * are flushed first, since dirty ones cannot be dropped). */
static void drop_folder_page_cache(const char *folder, const char *suffix) {
  GDir *d = g_dir_open(folder, 0, NULL);
  for (const char *name; d && (name = g_dir_read_name(d));) {
    if (!g_str_has_suffix(name, suffix)) continue;
    g_autofree char *path = g_build_filename(folder, name, NULL);
    const int fd = open(path, O_RDONLY);
    if (fd < 0) continue;
    fdatasync(fd);
    posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    close(fd);
  }
  if (d) g_dir_close(d);
}

/* Deletes a folder and everything in it. */
static void remove_tree(const char *path) {
  if (g_file_test(path, G_FILE_TEST_IS_DIR) && !g_file_test(path, G_FILE_TEST_IS_SYMLINK)) {
    GDir *d = g_dir_open(path, 0, NULL);
    for (const char *name; d && (name = g_dir_read_name(d));) {
      g_autofree char *child = g_build_filename(path, name, NULL);
      remove_tree(child);
    }
    if (d) g_dir_close(d);
    g_rmdir(path);
  } else {
    g_unlink(path);
  }
}

/* The model's weight files out of the page cache, for a cold load. */
static void drop_page_cache(const char *dir) {
  for (GenNetwork n = 0; n < GEN_N_NETWORKS; n++) {
    g_autofree char *folder = g_build_filename(dir, model_gen_folder(n), NULL);
    drop_folder_page_cache(folder, ".safetensors");
  }
}

static gboolean all_finite(const float *values, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (!isfinite(values[i])) return FALSE;
  return TRUE;
}

static float *random_floats(LcmRng *rng, size_t n, float scale) {
  float *values = g_new(float, n);
  lcm_rng_randn(rng, values, (int64_t)n);
  for (size_t i = 0; i < n; i++) values[i] *= scale;
  return values;
}

/* ---- The machine --------------------------------------------------------------- */

static char *cpu_name(void) {
  g_autofree char *info = NULL;
  if (g_file_get_contents("/proc/cpuinfo", &info, NULL, NULL)) {
    const char *line = strstr(info, "model name");
    const char *colon = line ? strchr(line, ':') : NULL;
    if (colon) {
      const char *end = strchr(colon, '\n');
      return g_strstrip(g_strndup(colon + 1, end ? (gsize)(end - colon - 1) : strlen(colon + 1)));
    }
  }
  return g_strdup("unknown CPU");
}

static const char *isa_name(dnnl_cpu_isa_t isa) {
  switch (isa) {
  case dnnl_cpu_isa_sse41:
    return "sse41";
  case dnnl_cpu_isa_avx:
    return "avx";
  case dnnl_cpu_isa_avx2:
    return "avx2";
  case dnnl_cpu_isa_avx2_vnni:
    return "avx2_vnni";
  case dnnl_cpu_isa_avx2_vnni_2:
    return "avx2_vnni_2";
  case dnnl_cpu_isa_avx512_core:
    return "avx512_core";
  case dnnl_cpu_isa_avx512_core_vnni:
    return "avx512_core_vnni";
  case dnnl_cpu_isa_avx512_core_bf16:
    return "avx512_core_bf16";
  case dnnl_cpu_isa_avx10_1_512:
    return "avx10_1_512 (avx512_core_fp16)";
  case dnnl_cpu_isa_avx10_1_512_amx:
    return "avx10_1_512_amx (avx512_core_amx)";
  case dnnl_cpu_isa_avx10_1_512_amx_fp16:
    return "avx10_1_512_amx_fp16 (avx512_core_amx_fp16)";
  default:
    return "default";
  }
}

static char *load_average(void) {
  double load[3];
  if (getloadavg(load, 3) != 3) return g_strdup("unknown");
  return g_strdup_printf("%.2f %.2f %.2f", load[0], load[1], load[2]);
}

/* ---- Networks and stages ------------------------------------------------------ */

typedef struct {
  LcmModel *model;
  LcmPromptEncoder *prompts; /* the tokenizer(s) and text encoder(s) */
  LcmUNet *unet;
  LcmVae *vae;
} Networks;

static void networks_clear(Networks *n) {
  if (n->prompts) lcm_prompt_encoder_free(n->prompts);
  if (n->unet) lcm_unet_free(n->unet);
  if (n->vae) lcm_vae_free(n->vae);
  if (n->model) lcm_model_free(n->model);
  *n = (Networks){0};
}

/* Loads the networks, timing each part (ms). */
static gboolean networks_load(const char *dir, LcmPrecision precision, Networks *n, double *ms,
                              GError **error) {
  if (!(n->model = lcm_model_open(dir, error))) return FALSE;
  double t0 = now_ms();
  if (!(n->prompts = lcm_prompt_encoder_new(n->model, precision, error))) return FALSE;
  ms[PART_TEXT] = now_ms() - t0;
  t0 = now_ms();
  if (!(n->unet = lcm_unet_load(n->model, precision, error))) return FALSE;
  ms[PART_UNET] = now_ms() - t0;
  t0 = now_ms();
  if (!(n->vae = lcm_vae_load(n->model, precision, error))) return FALSE;
  ms[PART_VAE] = now_ms() - t0;
  return TRUE;
}

/* Inputs and outputs of the stages at one image size. */
typedef struct {
  Networks *nets;
  int size, latent;             /* image and latent side */
  float *context;               /* LCM_CLIP_TOKENS x context width: the text encoder(s)' output */
  float *pooled;                /* SDXL's pooled text embedding, or NULL */
  float *sample;                /* UNet input latents */
  float *guidance;              /* LCM guidance embedding, or NULL */
  float time_ids[LCM_TIME_IDS]; /* SDXL's size conditioning */
  LcmUNetConditions conditions;
  float *noise_pred;
  float *z;       /* latents to decode */
  float *decoded; /* 3 x size x size */
  float *image;   /* random image to encode */
  float *mean, *logvar;
} StageData;

static gboolean run_text_encode(gpointer p, GError **error) {
  StageData *d = p;
  return lcm_prompt_encoder_encode(d->nets->prompts, PROMPT, NULL, 0, d->context, d->pooled, error);
}

static gboolean run_unet_step(gpointer p, GError **error) {
  StageData *d = p;
  return lcm_unet_run_conditioned(d->nets->unet, d->sample, 1, d->latent, d->latent, TIMESTEP,
                                  d->context, LCM_CLIP_TOKENS, &d->conditions, d->noise_pred,
                                  error);
}

static gboolean run_vae_decode(gpointer p, GError **error) {
  StageData *d = p;
  return lcm_vae_decode(d->nets->vae, d->z, 1, d->latent, d->latent, d->decoded, error);
}

static gboolean run_vae_encode(gpointer p, GError **error) {
  StageData *d = p;
  return lcm_vae_encode(d->nets->vae, d->image, 1, d->size, d->size, d->mean, d->logvar, error);
}

static gboolean stage_data_init(StageData *d, Networks *nets, GError **error) {
  *d = (StageData){.nets = nets};
  const int width = lcm_prompt_encoder_context_dim(nets->prompts);
  const int pooled = lcm_prompt_encoder_pooled_dim(nets->prompts);
  if (width != lcm_unet_cross_attention_dim(nets->unet) ||
      pooled != lcm_unet_text_embeds_dim(nets->unet)) {
    g_set_error(error, LCM_ERROR, LCM_ERROR_SHAPE,
                "the text encoders give %d-wide states and a %d-wide pooled embedding; the UNet "
                "takes %d and %d",
                width, pooled, lcm_unet_cross_attention_dim(nets->unet),
                lcm_unet_text_embeds_dim(nets->unet));
    return FALSE;
  }
  d->context = g_new0(float, (size_t)LCM_CLIP_TOKENS *width);
  if (pooled) d->pooled = g_new0(float, pooled);
  const int guidance_dim = lcm_unet_time_cond_proj_dim(nets->unet);
  if (guidance_dim) {
    d->guidance = g_new(float, guidance_dim);
    lcm_guidance_embedding(GUIDANCE_SCALE - 1, guidance_dim, d->guidance);
  }
  d->conditions = (LcmUNetConditions){
      .timestep_cond = d->guidance,
      .text_embeds = d->pooled,
      .time_ids = pooled ? d->time_ids : NULL,
  };
  return TRUE;
}

static void stage_data_free_buffers(StageData *d) {
  g_clear_pointer(&d->sample, g_free);
  g_clear_pointer(&d->noise_pred, g_free);
  g_clear_pointer(&d->z, g_free);
  g_clear_pointer(&d->decoded, g_free);
  g_clear_pointer(&d->image, g_free);
  g_clear_pointer(&d->mean, g_free);
  g_clear_pointer(&d->logvar, g_free);
}

static void stage_data_clear(StageData *d) {
  stage_data_free_buffers(d);
  g_free(d->context);
  g_free(d->pooled);
  g_free(d->guidance);
}

/* Random inputs of realistic scale for one image size. */
static void stage_data_set_size(StageData *d, int size, LcmRng *rng) {
  stage_data_free_buffers(d);
  d->size = size;
  d->latent = size / LATENT_FACTOR;
  /* the pipelines' default: original and target size the output's, no crop */
  const float time_ids[LCM_TIME_IDS] = {size, size, 0, 0, size, size};
  memcpy(d->time_ids, time_ids, sizeof time_ids);
  const size_t latent_pixels = (size_t)d->latent * d->latent, pixels = (size_t)size * size;
  const int latent_channels = lcm_vae_latent_channels(d->nets->vae);
  d->sample = random_floats(rng, lcm_unet_in_channels(d->nets->unet) * latent_pixels, 1.0f);
  d->noise_pred = g_new(float, lcm_unet_out_channels(d->nets->unet) * latent_pixels);
  /* The decoder sees latents divided by the scaling factor. */
  d->z = random_floats(rng, latent_channels * latent_pixels,
                       1.0f / lcm_vae_scaling_factor(d->nets->vae));
  d->decoded = g_new(float, 3 * pixels);
  d->image = random_floats(rng, 3 * pixels, 0.5f);
  d->mean = g_new(float, latent_channels *latent_pixels);
  d->logvar = g_new(float, latent_channels *latent_pixels);
}

/* ---- Results ------------------------------------------------------------------- */

typedef struct {
  LcmPrecision precision;
  int size; /* 0: independent of the size */
  const char *stage;
  double flops; /* 0: unknown */
  Timing timing;
  gboolean finite;
} StageRow;

typedef struct {
  LcmPrecision precision;
  double cold_ms[N_PARTS], warm_ms[N_PARTS];
} LoadRow;

typedef struct {
  LcmPrecision precision;
  int size;
  long hwm_kib, rss_kib, max_rss_kib;
  gboolean hwm_reset;
} MemoryRow;

/* A whole txt2img run at one size, and how fast a cancel stops one. */
typedef struct {
  LcmPrecision precision;
  int size;
  double load_ms; /* lcm_pipeline_new, files in the page cache */
  Timing timing;
  double cancel_in_step_ms;   /* cancel half-way through the third UNet step */
  double cancel_in_decode_ms; /* cancel a quarter of the way through the VAE decode */
} PipelineRow;

/* A fresh process (the CLI, or a gimp-console batch) at one size. */
typedef struct {
  LcmPrecision precision;
  int size;
  const char *what;
  double ms;
  int images; /* the time covers this many images (a batch) */
} FreshRow;

typedef struct {
  const char *model_dir;
  const char *cli, *plugin; /* gimp-lcm-cli and the plug-in binary */
  int batch;                /* plug-in calls in a Script-Fu batch; 0: none */
  char *work;               /* temp folder: outputs, weight cache, GIMP profile */
  int n_sizes, sizes[MAX_SIZES];
  int n_precisions;
  LcmPrecision precisions[MAX_PRECISIONS];
  int repeat;
  char *config_texts[GEN_N_NETWORKS];        /* NULL when the model has no config.json */
  gboolean xl;                               /* the SDXL family */
  double peak[LCM_PRECISION_BF16 + 1];       /* FLOP/s by precision, 0 = not measured */
  char *unsupported[LCM_PRECISION_BF16 + 1]; /* why the CPU cannot run a precision, or NULL */
  GArray *stages, *loads, *memory, *pipelines, *fresh;
} Run;

/* FLOPs of a stage from the model's own config.json (0 if unknown or the
 * model has no such network). */
static double stage_flops(const Run *run, GenStage stage, GenNetwork network, int latent) {
  const char *config = run->config_texts[network];
  double flops = 0;
  GError *error = NULL;
  if (config && !model_gen_stage_flops(stage, config, latent, latent, &flops, &error)) {
    g_printerr("warning: no FLOP count: %s\n", error->message);
    g_error_free(error);
  }
  return flops;
}

/* Text encoding: both encoders for the SDXL family. */
static double text_encode_flops(const Run *run) {
  return stage_flops(run, GEN_STAGE_TEXT_ENCODE, GEN_TEXT_ENCODER, 0) +
         stage_flops(run, GEN_STAGE_TEXT_ENCODE_2, GEN_TEXT_ENCODER_2, 0);
}

/* Times one stage; size 0 for one that does not depend on the image size. */
static gboolean bench_stage(Run *run, StageData *d, LcmPrecision precision, const char *label,
                            StageRun fn, int size, double flops, const float *output,
                            size_t output_count, GError **error) {
  if (!size)
    g_printerr("  %s: %s...\n", lcm_precision_name(precision), label);
  else
    g_printerr("  %s %dx%d: %s...\n", lcm_precision_name(precision), size, size, label);
  StageRow row = {.precision = precision, .size = size, .stage = label, .flops = flops};
  if (!time_stage(fn, d, run->repeat, &row.timing, error)) return FALSE;
  row.finite = all_finite(output, output_count);
  g_array_append_val(run->stages, row);
  return TRUE;
}

static void record_memory(Run *run, LcmPrecision precision, int size, gboolean hwm_reset) {
  MemoryRow row = {.precision = precision,
                   .size = size,
                   .hwm_kib = proc_status_kib("VmHWM"),
                   .rss_kib = proc_status_kib("VmRSS"),
                   .max_rss_kib = max_rss_kib(),
                   .hwm_reset = hwm_reset};
  g_array_append_val(run->memory, row);
}

/* Loads (cold, then warm) and times every stage at every size. */
/* The memory guard at the largest size asked for, before any load. */
static gboolean check_memory(const Run *run, LcmPrecision precision, GError **error) {
  int largest = 0;
  for (int s = 0; s < run->n_sizes; s++) largest = MAX(largest, run->sizes[s]);
  LcmModel *model = lcm_model_open(run->model_dir, error);
  const gboolean ok = model && lcm_model_check_memory(model, precision, largest, largest, error);
  if (model) lcm_model_free(model);
  return ok;
}

static gboolean bench_precision(Run *run, LcmPrecision precision, GError **error) {
  if (!check_memory(run, precision, error)) return FALSE;
  LoadRow load = {precision, {0}, {0}};
  Networks nets = {0};
  g_printerr("%s: cold load...\n", lcm_precision_name(precision));
  drop_page_cache(run->model_dir);
  gboolean ok = networks_load(run->model_dir, precision, &nets, load.cold_ms, error);
  networks_clear(&nets);
  g_printerr("%s: warm load...\n", lcm_precision_name(precision));
  ok = ok && networks_load(run->model_dir, precision, &nets, load.warm_ms, error);
  if (!ok) {
    networks_clear(&nets);
    return FALSE;
  }
  g_array_append_val(run->loads, load);

  StageData d;
  LcmRng *rng = lcm_rng_new(42);
  ok = stage_data_init(&d, &nets, error);
  const int width = ok ? lcm_prompt_encoder_context_dim(nets.prompts) : 0;
  ok = ok && bench_stage(run, &d, precision, "text encode", run_text_encode, 0,
                         text_encode_flops(run), d.context, (size_t)LCM_CLIP_TOKENS * width, error);
  for (int s = 0; s < run->n_sizes && ok; s++) {
    stage_data_set_size(&d, run->sizes[s], rng);
    const int size = d.size, latent = d.latent;
    const size_t latent_values = (size_t)lcm_unet_out_channels(nets.unet) * latent * latent;
    const size_t image_values = (size_t)3 * size * size;
    const size_t moment_values = (size_t)lcm_vae_latent_channels(nets.vae) * latent * latent;
    const gboolean hwm_reset = reset_peak_rss();
    ok = bench_stage(run, &d, precision, "UNet step", run_unet_step, size,
                     stage_flops(run, GEN_STAGE_UNET_STEP, GEN_UNET, latent), d.noise_pred,
                     latent_values, error) &&
         bench_stage(run, &d, precision, "VAE decode", run_vae_decode, size,
                     stage_flops(run, GEN_STAGE_VAE_DECODE, GEN_VAE, latent), d.decoded,
                     image_values, error);
    if (ok) record_memory(run, precision, size, hwm_reset);
    ok = ok && bench_stage(run, &d, precision, "VAE encode", run_vae_encode, size,
                           stage_flops(run, GEN_STAGE_VAE_ENCODE, GEN_VAE, latent), d.mean,
                           moment_values, error);
  }
  lcm_rng_free(rng);
  stage_data_clear(&d);
  networks_clear(&nets);
  return ok;
}

/* ---- Whole runs and cancelling -------------------------------------------------- */

#define PIPELINE_STEPS 4

typedef struct {
  LcmPipeline *pipeline;
  LcmPipelineParams params;
  int runs; /* each run gets a new prompt, so its text encoding is timed too */
  char *prompt;
} PipelineData;

static gboolean run_txt2img(gpointer p, GError **error) {
  PipelineData *d = p;
  g_free(d->prompt);
  d->prompt = g_strdup_printf("%s, variation %d", PROMPT, d->runs++);
  d->params.prompt = d->prompt;
  LcmImage *image = lcm_pipeline_run(d->pipeline, &d->params, error);
  const gboolean ok = image != NULL;
  lcm_image_free(image);
  return ok;
}

typedef struct {
  LcmPipeline *pipeline;
  LcmPipelineParams params;
  volatile gint cancel;
  volatile gint steps_done;
  volatile gint finished;
  double step_end_ms[PIPELINE_STEPS]; /* written before steps_done counts the step */
  int cancel_at_step;                 /* > 0: the progress callback cancels as it ends */
  double cancelled_at_ms;
  LcmImage *image;
  GError *error;
} CancelledRun;

static void count_steps(const LcmProgress *progress, gpointer data) {
  CancelledRun *c = data;
  c->step_end_ms[progress->step] = now_ms();
  if (progress->step + 1 == c->cancel_at_step) {
    c->cancelled_at_ms = now_ms();
    g_atomic_int_set(&c->cancel, 1);
  }
  g_atomic_int_set(&c->steps_done, progress->step + 1);
}

static gpointer cancelled_run_thread(gpointer data) {
  CancelledRun *c = data;
  c->image = lcm_pipeline_run(c->pipeline, &c->params, &c->error);
  g_atomic_int_set(&c->finished, 1);
  return NULL;
}

/* Runs txt2img on a thread and sets its cancel flag once `after_steps`
 * steps are done: half a step later when the run has steps left (the step
 * time as this run measures it), else `decode_delay_ms` later, inside the
 * decode. When the run outpaces that timer (a tiny model's steps take a
 * millisecond), a second run gets its flag set by the progress callback as
 * step `after_steps` ends. Returns how long the run took to stop after the
 * flag went up (ms); -1 with error set if it failed otherwise or finished
 * first both times. */
static double cancel_latency(LcmPipeline *pipeline, const LcmPipelineParams *params,
                             int after_steps, double decode_delay_ms, GError **error) {
  double too_late_ms = 0;
  for (int attempt = 0; attempt < 2; attempt++) {
    CancelledRun c = {.pipeline = pipeline, .params = *params};
    c.params.progress = count_steps;
    c.params.progress_data = &c;
    c.params.cancel = &c.cancel;
    c.cancel_at_step = attempt ? after_steps : 0;
    GThread *thread = g_thread_new("cancelled-run", cancelled_run_thread, &c);
    if (!attempt) {
      while (g_atomic_int_get(&c.steps_done) < after_steps && !g_atomic_int_get(&c.finished))
        g_usleep(1000);
      const double delay_ms =
          after_steps < c.params.steps
              ? (c.step_end_ms[after_steps - 1] - c.step_end_ms[after_steps - 2]) / 2
              : decode_delay_ms;
      g_usleep((gulong)(delay_ms * 1000));
      c.cancelled_at_ms = now_ms();
      g_atomic_int_set(&c.cancel, 1);
    }
    g_thread_join(thread);
    const double latency = now_ms() - c.cancelled_at_ms;
    if (g_error_matches(c.error, LCM_ERROR, LCM_ERROR_CANCELLED)) {
      g_error_free(c.error);
      return latency;
    }
    if (c.error) {
      g_propagate_error(error, c.error);
      return -1;
    }
    lcm_image_free(c.image);
    if (!attempt) too_late_ms = latency;
  }
  g_set_error(error, LCM_ERROR, LCM_ERROR_INVALID,
              "a run meant to be cancelled finished first twice (the timed cancel came %.0f ms "
              "too late, then the one set as step %d ended)",
              too_late_ms, after_steps);
  return -1;
}

/* The median of a stage already timed at this precision and size. */
static double stage_median(const Run *run, LcmPrecision precision, int size, const char *stage) {
  for (guint i = 0; i < run->stages->len; i++) {
    const StageRow *r = &g_array_index(run->stages, StageRow, i);
    if (r->precision == precision && r->size == size && strcmp(r->stage, stage) == 0)
      return r->timing.median_ms;
  }
  return 0;
}

/* The pipeline as the plug-in uses it: load, 4-step txt2img at each size,
 * and cancelling in the middle of a UNet step and of the decode. */
static gboolean bench_pipeline(Run *run, LcmPrecision precision, GError **error) {
  LcmModel *model = lcm_model_open(run->model_dir, error);
  if (!model) return FALSE;
  g_printerr("%s: pipeline load...\n", lcm_precision_name(precision));
  const double t0 = now_ms();
  PipelineData d = {.pipeline = lcm_pipeline_new(model, precision, error)};
  const double load_ms = now_ms() - t0;
  lcm_model_free(model);
  if (!d.pipeline) return FALSE;
  lcm_pipeline_params_init(&d.params);
  d.params.steps = PIPELINE_STEPS;
  d.params.guidance_scale = lcm_pipeline_default_guidance(d.pipeline);
  gboolean ok = TRUE;
  for (int s = 0; s < run->n_sizes && ok; s++) {
    const int size = run->sizes[s];
    PipelineRow row = {.precision = precision, .size = size, .load_ms = load_ms};
    d.params.width = d.params.height = size;
    g_printerr("  %s %dx%d: txt2img, %d steps...\n", lcm_precision_name(precision), size, size,
               PIPELINE_STEPS);
    ok = time_stage(run_txt2img, &d, run->repeat, &row.timing, error);
    const double decode_ms = stage_median(run, precision, size, "VAE decode");
    g_printerr("  %s %dx%d: cancelling...\n", lcm_precision_name(precision), size, size);
    /* In the third step: the second one's time tells where its middle is. */
    if (ok) row.cancel_in_step_ms = cancel_latency(d.pipeline, &d.params, 2, 0, error);
    ok = ok && row.cancel_in_step_ms >= 0;
    if (ok)
      row.cancel_in_decode_ms =
          cancel_latency(d.pipeline, &d.params, PIPELINE_STEPS, decode_ms / 4, error);
    ok = ok && row.cancel_in_decode_ms >= 0;
    if (ok) g_array_append_val(run->pipelines, row);
  }
  g_free(d.prompt);
  lcm_pipeline_free(d.pipeline);
  return ok;
}

/* ---- Fresh processes ------------------------------------------------------------ */

/* Every GIMP plug-in call is a new process: what a user waits for is the
 * process's whole life, load and first-call costs included. */

#define FRESH_PROMPT "a lighthouse on a cliff at dusk"

/* The environment of a child: ours with `pairs` (NULL-terminated name,
 * value, ...) set. */
static char **child_environment(const char *const *pairs) {
  char **env = g_get_environ();
  for (int i = 0; pairs[i]; i += 2) env = g_environ_setenv(env, pairs[i], pairs[i + 1], TRUE);
  return env;
}

/* Runs argv to its end; its wall time in ms, or -1 with error set. */
static double time_child(const char *const *argv, const char *const *env_pairs, GError **error) {
  g_auto(GStrv) env = child_environment(env_pairs);
  g_autofree char *out = NULL, *err = NULL;
  int status = 0;
  const double t0 = now_ms();
  if (!g_spawn_sync(NULL, (char **)argv, env, G_SPAWN_SEARCH_PATH, NULL, NULL, &out, &err, &status,
                    error))
    return -1;
  const double ms = now_ms() - t0;
  if (!g_spawn_check_wait_status(status, NULL)) {
    g_set_error(error, LCM_ERROR, LCM_ERROR_BACKEND, "%s failed: %s%s", argv[0], err,
                out && strstr(out, "error") ? out : "");
    return -1;
  }
  return ms;
}

/* A fresh gimp-lcm-cli txt2img (4 steps) with the weight cache in `cache`
 * ("off": none): process start to PNG written. */
static double time_cli(const Run *run, LcmPrecision precision, int size, const char *cache,
                       GError **error) {
  g_autofree char *side = g_strdup_printf("%d", size);
  g_autofree char *png = g_build_filename(run->work, "fresh.png", NULL);
  const char *argv[] = {run->cli,       "txt2img",     FRESH_PROMPT,
                        "-o",           png,           "--model",
                        run->model_dir, "--precision", lcm_precision_name(precision),
                        "--width",      side,          "--height",
                        side,           "--steps",     G_STRINGIFY(PIPELINE_STEPS),
                        "--seed",       "1",           NULL};
  const char *env[] = {"GIMP_LCM_WEIGHT_CACHE", cache, NULL};
  return time_child(argv, env, error);
}

/* A gimp-console batch of `count` plug-in-lcm-txt2img calls at `size`,
 * with the plug-in installed in a throw-away profile (as
 * tests/gimp/run-gimp-tests.sh does). */
static double time_gimp_batch(const Run *run, LcmPrecision precision, int size, int count,
                              const char *cache, GError **error) {
  g_autofree char *profile = g_build_filename(run->work, "gimp-profile", NULL);
  g_autofree char *models = g_build_filename(run->work, "no-models", NULL);
  g_autofree char *expr = g_strdup_printf(
      "(begin (script-fu-use-v3)"
      " (let* ((image (gimp-image-new %d %d RGB))"
      "        (layer (gimp-layer-new image \"background\" %d %d RGB-IMAGE 100 "
      "LAYER-MODE-NORMAL)))"
      "   (gimp-image-insert-layer image layer 0 0)"
      "   (let loop ((i 0))"
      "     (when (< i %d)"
      "       (plug-in-lcm-txt2img #:run-mode RUN-NONINTERACTIVE #:image image"
      "         #:drawables (vector layer) #:model \"%s\" #:prompt \"" FRESH_PROMPT "\""
      "         #:seed (+ i 1) #:width %d #:height %d)"
      "       (loop (+ i 1))))"
      "   (gimp-image-delete image)))",
      size, size, size, size, count, run->model_dir, size, size);
  g_mkdir_with_parents(models, 0700);
  const char *argv[] = {"gimp-console-3.0",
                        "-i",
                        "--quit",
                        "--batch-interpreter=plug-in-script-fu-eval",
                        "-b",
                        expr,
                        NULL};
  const char *env[] = {"GIMP3_DIRECTORY",
                       profile,
                       "GIMP_LCM_PRECISION",
                       lcm_precision_name(precision),
                       "GIMP_LCM_MODELS",
                       models,
                       "GIMP_LCM_WEIGHT_CACHE",
                       cache,
                       NULL};
  return time_child(argv, env, error);
}

static gboolean install_plugin(const Run *run, GError **error) {
  g_autofree char *folder =
      g_build_filename(run->work, "gimp-profile", "plug-ins", "gimp-lcm", NULL);
  g_autofree char *target = g_build_filename(folder, "gimp-lcm", NULL);
  g_autofree char *data = NULL;
  gsize size = 0;
  if (g_mkdir_with_parents(folder, 0700) != 0 ||
      !g_file_get_contents(run->plugin, &data, &size, error) ||
      !g_file_set_contents(target, data, size, error))
    return FALSE;
  return g_chmod(target, 0755) == 0;
}

static void add_fresh(Run *run, LcmPrecision precision, int size, const char *what, double ms,
                      int images) {
  const FreshRow row = {precision, size, what, ms, images};
  g_array_append_val(run->fresh, row);
}

/* The fresh-process rows of one precision and size: the CLI without the
 * weight cache, filling it, with it warm (min of two) and with it and the
 * model cold; then Script-Fu batches without and with the cache, less a
 * batch without calls (GIMP's own start and stop). */
static gboolean bench_fresh(Run *run, LcmPrecision precision, int size, GError **error) {
  g_autofree char *cache = g_build_filename(run->work, "weight-cache", NULL);
  g_printerr("  %s %dx%d: fresh processes...\n", lcm_precision_name(precision), size, size);
  double ms = time_cli(run, precision, size, "off", error);
  if (ms < 0) return FALSE;
  add_fresh(run, precision, size, "CLI, weight cache off", ms, 1);
  ms = time_cli(run, precision, size, cache, error);
  if (ms < 0) return FALSE;
  add_fresh(run, precision, size, "CLI, weight cache written (first call ever)", ms, 1);
  double best = G_MAXDOUBLE;
  for (int i = 0; i < 2; i++) {
    ms = time_cli(run, precision, size, cache, error);
    if (ms < 0) return FALSE;
    best = MIN(best, ms);
  }
  add_fresh(run, precision, size, "CLI, weight cache read, page cache warm", best, 1);
  drop_page_cache(run->model_dir);
  drop_folder_page_cache(cache, ".lcmw");
  ms = time_cli(run, precision, size, cache, error);
  if (ms < 0) return FALSE;
  add_fresh(run, precision, size, "CLI, weight cache read, page cache cold", ms, 1);
  if (run->batch <= 0) return TRUE;

  g_printerr("  %s %dx%d: Script-Fu batches of %d calls...\n", lcm_precision_name(precision), size,
             size, run->batch);
  /* The first start registers the plug-in in the new profile: not timed. */
  if (!install_plugin(run, error) || time_gimp_batch(run, precision, size, 0, cache, error) < 0)
    return FALSE;
  const double empty = time_gimp_batch(run, precision, size, 0, cache, error);
  if (empty < 0) return FALSE;
  const char *caches[] = {"off", cache};
  const char *labels[] = {"Script-Fu batch, weight cache off",
                          "Script-Fu batch, weight cache read"};
  for (int c = 0; c < 2; c++) {
    ms = time_gimp_batch(run, precision, size, run->batch, caches[c], error);
    if (ms < 0) return FALSE;
    add_fresh(run, precision, size, labels[c], ms - empty, run->batch);
  }
  return TRUE;
}

/* The minimum time of a whole txt2img run at this precision and size. */
static double pipeline_min(const Run *run, LcmPrecision precision, int size) {
  for (guint i = 0; i < run->pipelines->len; i++) {
    const PipelineRow *r = &g_array_index(run->pipelines, PipelineRow, i);
    if (r->precision == precision && r->size == size) return r->timing.min_ms;
  }
  return 0;
}

/* The FLOPs of a whole txt2img run: text encoding, the UNet steps and the
 * decode. */
static double pipeline_flops(const Run *run, int size) {
  const int latent = size / LATENT_FACTOR;
  return text_encode_flops(run) +
         PIPELINE_STEPS * stage_flops(run, GEN_STAGE_UNET_STEP, GEN_UNET, latent) +
         stage_flops(run, GEN_STAGE_VAE_DECODE, GEN_VAE, latent);
}

/* ---- Report -------------------------------------------------------------------- */

/* "SDXL family; parameters: UNet 2568 M, VAE 84 M, ..." from the configs. */
static char *model_summary(const Run *run) {
  GString *text = g_string_new(run->xl ? "SDXL family" : "SD1.5 family");
  const char *separator = "; parameters: ";
  for (GenNetwork n = 0; n < GEN_N_NETWORKS; n++) {
    GArray *tensors =
        run->config_texts[n] ? model_gen_tensors(n, run->config_texts[n], NULL) : NULL;
    if (!tensors) continue;
    double params = 0;
    for (guint i = 0; i < tensors->len; i++) {
      const GenTensor *t = &g_array_index(tensors, GenTensor, i);
      double numel = 1;
      for (int d = 0; d < t->ndims; d++) numel *= (double)t->shape[d];
      params += numel;
    }
    g_array_unref(tensors);
    g_string_append_printf(text, "%s%s %.1f M", separator, network_labels[n], params / 1e6);
    separator = ", ";
  }
  return g_string_free(text, FALSE);
}

static void print_report(const Run *run, const char *load_before, const char *load_after) {
  const dnnl_version_t *version = dnnl_version();
  g_autofree char *cpu = cpu_name();
  GDateTime *now = g_date_time_new_now_local();
  g_autofree char *when = g_date_time_format(now, "%Y-%m-%d %H:%M");
  g_date_time_unref(now);

  printf("## Benchmark: %s\n\n", run->model_dir);
  printf("| | |\n|---|---|\n");
  g_autofree char *summary = model_summary(run);
  printf("| Model | %s |\n", summary);
  printf("| Date | %s |\n", when);
  printf("| CPU | %s, %d OpenMP threads |\n", cpu, omp_get_max_threads());
  printf("| oneDNN | %d.%d.%d, effective ISA %s |\n", version->major, version->minor,
         version->patch, isa_name(dnnl_get_effective_cpu_isa()));
  printf("| Load average (1/5/15 min) before | %s |\n", load_before);
  printf("| Load average (1/5/15 min) after | %s |\n", load_after);
  printf("| Timing | min and median of %d run%s after one warm-up |\n\n", run->repeat,
         run->repeat == 1 ? "" : "s");

  printf("### Convolution peak\n\n");
  printf("3×3 convolution 320→320 at 64×64, batch 1, random data (best of several runs).\n\n");
  printf("| precision | TFLOP/s |\n|---|---:|\n");
  for (int p = LCM_PRECISION_FP32; p <= LCM_PRECISION_BF16; p++) {
    if (run->peak[p] > 0)
      printf("| %s | %.3f |\n", lcm_precision_name(p), run->peak[p] / 1e12);
    else if (run->unsupported[p])
      printf("| %s | not run: %s |\n", lcm_precision_name(p), run->unsupported[p]);
  }

  printf("\n### Model load (ms)\n\n");
  printf("Cold: the weight files dropped from the page cache first (best effort); warm: loaded "
         "again right after.\n\n");
  printf("| precision | network | cold | warm |\n|---|---|---:|---:|\n");
  for (guint i = 0; i < run->loads->len; i++) {
    const LoadRow *l = &g_array_index(run->loads, LoadRow, i);
    for (int n = 0; n < N_PARTS; n++)
      printf("| %s | %s | %.0f | %.0f |\n", lcm_precision_name(l->precision), part_labels[n],
             l->cold_ms[n], l->warm_ms[n]);
  }

  printf("\n### Stages (ms)\n\n");
  printf(
      "GFLOP: 2 × multiply-accumulates of every convolution, matrix product and attention "
      "product, from the model's config. First: the first call at that size (its oneDNN primitives "
      "created then); TFLOP/s from the min time; \"of peak\" compares it with the convolution "
      "peak of the same precision.\n\n");
  printf("| precision | size | stage | GFLOP | first | min | median | TFLOP/s | of peak |\n");
  printf("|---|---|---|---:|---:|---:|---:|---:|---:|\n");
  for (guint i = 0; i < run->stages->len; i++) {
    const StageRow *r = &g_array_index(run->stages, StageRow, i);
    g_autofree char *size =
        r->size ? g_strdup_printf("%d×%d", r->size, r->size) : g_strdup("77 tokens");
    printf("| %s | %s | %s%s | ", lcm_precision_name(r->precision), size, r->stage,
           r->finite ? "" : " (**non-finite output**)");
    g_autofree char *times = g_strdup_printf("%.1f | %.1f | %.1f", r->timing.first_ms,
                                             r->timing.min_ms, r->timing.median_ms);
    const double peak = run->peak[r->precision];
    if (r->flops > 0) {
      const double rate = r->flops / (r->timing.min_ms * 1e-3);
      printf("%.4g | %s | %.3f | ", r->flops / 1e9, times, rate / 1e12);
      if (peak > 0)
        printf("%.0f%% |\n", 100 * rate / peak);
      else
        printf("– |\n");
    } else {
      printf("– | %s | – | – |\n", times);
    }
  }

  printf("\n### Peak resident memory after the UNet step and VAE decode (MiB)\n\n");
  printf("VmHWM: peak since the resident-set peak was reset before this size's stages (all "
         "networks loaded); ru_maxrss: peak of the whole process so far.\n\n");
  printf("| precision | size | VmHWM | VmRSS | ru_maxrss |\n|---|---|---:|---:|---:|\n");
  for (guint i = 0; i < run->memory->len; i++) {
    const MemoryRow *m = &g_array_index(run->memory, MemoryRow, i);
    printf("| %s | %d×%d | %.0f%s | %.0f | %.0f |\n", lcm_precision_name(m->precision), m->size,
           m->size, m->hwm_kib / 1024.0, m->hwm_reset ? "" : " (not reset)", m->rss_kib / 1024.0,
           m->max_rss_kib / 1024.0);
  }

  printf("\n### txt2img, %d steps, and cancelling (ms)\n\n", PIPELINE_STEPS);
  printf("The whole run as the plug-in makes it (lcm_pipeline_run: text encoding of a new prompt, "
         "%d UNet steps with the LCM guidance embedding (SDXL family: and the pooled text "
         "embedding and time ids), VAE decode): the first run at a size "
         "(oneDNN primitives created), then min and median. Cancel: the flag is set half-way "
         "through the third UNet step, or a quarter of the way through the decode; latency is "
         "the time until the run returns, next to one UNet step.\n\n",
         PIPELINE_STEPS);
  printf("| precision | size | pipeline load | first run | min | median | cancel in a step | "
         "cancel in the decode | one UNet step |\n");
  printf("|---|---|---:|---:|---:|---:|---:|---:|---:|\n");
  for (guint i = 0; i < run->pipelines->len; i++) {
    const PipelineRow *r = &g_array_index(run->pipelines, PipelineRow, i);
    printf("| %s | %d×%d | %.0f | %.0f | %.0f | %.0f | %.0f | %.0f | %.0f |\n",
           lcm_precision_name(r->precision), r->size, r->size, r->load_ms, r->timing.first_ms,
           r->timing.min_ms, r->timing.median_ms, r->cancel_in_step_ms, r->cancel_in_decode_ms,
           stage_median(run, r->precision, r->size, "UNet step"));
  }

  printf("\n### Against the compute floor\n\n");
  printf("The floor: the whole run's FLOPs (text encoding, %d UNet steps, VAE decode) at the "
         "convolution peak of the same precision.\n\n",
         PIPELINE_STEPS);
  printf("| precision | size | GFLOP | floor (ms) | run min (ms) | run ÷ floor |\n");
  printf("|---|---|---:|---:|---:|---:|\n");
  for (guint i = 0; i < run->pipelines->len; i++) {
    const PipelineRow *r = &g_array_index(run->pipelines, PipelineRow, i);
    const double flops = pipeline_flops(run, r->size), peak = run->peak[r->precision];
    if (flops <= 0 || peak <= 0) continue;
    const double floor_ms = flops / peak * 1e3;
    printf("| %s | %d×%d | %.0f | %.0f | %.0f | %.2f× |\n", lcm_precision_name(r->precision),
           r->size, r->size, flops / 1e9, floor_ms, r->timing.min_ms, r->timing.min_ms / floor_ms);
  }

  if (!run->fresh->len) return;
  printf("\n### Fresh processes\n\n");
  printf(
      "What a user waits for: a new process per image, as every GIMP plug-in call is. CLI: "
      "gimp-lcm-cli txt2img, %d steps, process start to PNG written. Script-Fu: gimp-console-3.0 "
      "running a batch of plug-in-lcm-txt2img calls, less a batch without calls (GIMP's own "
      "start and stop), per image. Cold: the model's and the cache's files dropped from the "
      "page cache first (this VM's host may still cache them). ÷ steady: against the minimum "
      "whole run in one process above.\n\n",
      PIPELINE_STEPS);
  printf("| precision | size | process | ms per image | ÷ steady run |\n|---|---|---|---:|---:|\n");
  for (guint i = 0; i < run->fresh->len; i++) {
    const FreshRow *f = &g_array_index(run->fresh, FreshRow, i);
    const double per_image = f->ms / f->images, steady = pipeline_min(run, f->precision, f->size);
    g_autofree char *what =
        f->images > 1 ? g_strdup_printf("%s (%d calls)", f->what, f->images) : g_strdup(f->what);
    printf("| %s | %d×%d | %s | %.0f | %.2f× |\n", lcm_precision_name(f->precision), f->size,
           f->size, what, per_image, steady > 0 ? per_image / steady : 0);
  }
}

/* ---- Commands ------------------------------------------------------------------ */

static gboolean make_model(const char *dir, GenFamily family, guint64 seed, GError **error) {
  g_printerr("writing a random-weight %s LCM model (seed %" G_GUINT64_FORMAT ") to %s...\n",
             model_gen_family_name(family), seed, dir);
  const double t0 = now_ms();
  const GenConfigs *configs = model_gen_family_configs(family);
  if (!model_gen_make_model(dir, configs, seed, error)) return FALSE;
  for (GenNetwork n = 0; n < GEN_N_NETWORKS; n++) {
    if (!model_gen_config_of(configs, n)) continue;
    g_autofree char *path = g_build_filename(dir, model_gen_weights_file(n), NULL);
    GStatBuf st;
    if (g_stat(path, &st) == 0)
      g_printerr("  %s: %.2f GB (%.0f M parameters)\n", path, st.st_size / 1e9, st.st_size / 2e6);
  }
  g_printerr("done in %.1f s\n", (now_ms() - t0) / 1000);
  return TRUE;
}

/* The sizes a model is meant for: 256 and 512 for SD1.5, 768 and 1024 for
 * the SDXL family (a model that does not open fails later, with its error). */
static const char *default_sizes(const char *model_dir) {
  LcmModel *model = lcm_model_open(model_dir, NULL);
  const gboolean xl = model && lcm_model_family(model) == LCM_FAMILY_SDXL;
  if (model) lcm_model_free(model);
  return xl ? "768,1024" : "256,512";
}

static gboolean parse_sizes(const char *text, Run *run, GError **error) {
  g_auto(GStrv) parts = g_strsplit(text, ",", -1);
  run->n_sizes = 0;
  for (int i = 0; parts[i]; i++) {
    char *end = NULL;
    const long size = strtol(parts[i], &end, 10);
    if (end == parts[i] || *end || size < 64 || size > 2048 || size % LATENT_FACTOR ||
        run->n_sizes == MAX_SIZES) {
      g_set_error(error, LCM_ERROR, LCM_ERROR_INVALID,
                  "--sizes: '%s' is not a side of 64..2048 pixels, a multiple of %d "
                  "(at most %d sizes)",
                  parts[i], LATENT_FACTOR, MAX_SIZES);
      return FALSE;
    }
    run->sizes[run->n_sizes++] = (int)size;
  }
  if (!run->n_sizes) g_set_error(error, LCM_ERROR, LCM_ERROR_INVALID, "--sizes: no size given");
  return run->n_sizes > 0;
}

static gboolean parse_precisions(const char *text, Run *run, GError **error) {
  g_auto(GStrv) parts = g_strsplit(text, ",", -1);
  run->n_precisions = 0;
  for (int i = 0; parts[i]; i++) {
    LcmPrecision precision;
    if (!lcm_precision_parse(parts[i], &precision, error)) return FALSE;
    precision = lcm_precision_resolve(precision);
    gboolean seen = FALSE;
    for (int j = 0; j < run->n_precisions; j++) seen |= run->precisions[j] == precision;
    if (!seen) run->precisions[run->n_precisions++] = precision;
  }
  if (!run->n_precisions)
    g_set_error(error, LCM_ERROR, LCM_ERROR_INVALID, "--precision: no precision given");
  return run->n_precisions > 0;
}

static gboolean bench_run(Run *run, GError **error) {
  /* A model that does not open fails now, not after the peak measurements. */
  LcmModel *model = lcm_model_open(run->model_dir, error);
  if (!model) return FALSE;
  const gboolean xl = run->xl = lcm_model_family(model) == LCM_FAMILY_SDXL;
  lcm_model_free(model);
  for (GenNetwork n = 0; n < GEN_N_NETWORKS; n++) {
    if (n == GEN_TEXT_ENCODER_2 && !xl) continue;
    g_autofree char *path =
        g_build_filename(run->model_dir, model_gen_folder(n), "config.json", NULL);
    if (!g_file_get_contents(path, &run->config_texts[n], NULL, NULL))
      g_printerr("warning: %s is not readable: no FLOP counts for the %s\n", path,
                 network_labels[n]);
  }
  g_autofree char *load_before = load_average();
  /* The bf16 peak is the reference whatever is benchmarked; measured first,
   * while nothing else is resident. */
  gboolean measure[LCM_PRECISION_BF16 + 1] = {[LCM_PRECISION_BF16] = TRUE};
  for (int p = 0; p < run->n_precisions; p++) measure[run->precisions[p]] = TRUE;
  for (int p = LCM_PRECISION_FP32; p <= LCM_PRECISION_BF16; p++) {
    if (!measure[p]) continue;
    g_printerr("%s: convolution peak...\n", lcm_precision_name(p));
    GError *peak_error = NULL;
    run->peak[p] = lcm_benchmark_conv_peak(p, &peak_error);
    if (g_error_matches(peak_error, LCM_ERROR, LCM_ERROR_UNSUPPORTED)) {
      /* Reported, and the precision's stages skipped: the rest still runs. */
      g_printerr("%s: %s\n", lcm_precision_name(p), peak_error->message);
      run->unsupported[p] = g_strdup(peak_error->message);
      g_clear_error(&peak_error);
    } else if (peak_error) {
      g_propagate_error(error, peak_error);
      return FALSE;
    }
  }
  for (int p = 0; p < run->n_precisions; p++) {
    const LcmPrecision precision = run->precisions[p];
    if (run->unsupported[precision]) continue;
    if (!(bench_precision(run, precision, error) && bench_pipeline(run, precision, error)))
      return FALSE;
    for (int s = 0; s < run->n_sizes && run->cli; s++)
      if (!bench_fresh(run, precision, run->sizes[s], error)) return FALSE;
  }
  g_autofree char *load_after = load_average();
  print_report(run, load_before, load_after);
  return TRUE;
}

static int usage(void) {
  g_printerr("usage: gimp-lcm-bench make-model DIR [--family sd15|sdxl|ssd1b] [--seed N]\n"
             "       gimp-lcm-bench run --model DIR [--sizes 256,512] [--precision fp32,bf16]\n"
             "                          [--repeat N] [--make-if-missing] [--family F] [--seed N]\n"
             "                          [--no-fresh] [--cli PATH] [--plugin PATH] [--batch N]\n");
  return 2;
}

/* Parses a subcommand's options; argv[0] is the subcommand. */
static gboolean parse_options(int *argc, char ***argv, const GOptionEntry *entries,
                              GError **error) {
  GOptionContext *context = g_option_context_new(NULL);
  g_option_context_add_main_entries(context, entries, NULL);
  const gboolean ok = g_option_context_parse(context, argc, argv, error);
  g_option_context_free(context);
  return ok;
}

static int report_error(GError *error) {
  g_printerr("gimp-lcm-bench: %s\n", error->message);
  g_error_free(error);
  return 1;
}

#define FAMILY_OPTION(family)                                                                      \
  {"family",  0,                                                                                   \
   0,         G_OPTION_ARG_STRING,                                                                 \
   &(family), "Architecture of the random-weight model: sd15 (default), sdxl or ssd1b",            \
   "F"}

static int command_make_model(int argc, char **argv) {
  gint64 seed = 0;
  g_autofree char *family_name = NULL;
  const GOptionEntry entries[] = {
      FAMILY_OPTION(family_name),
      {"seed", 0, 0, G_OPTION_ARG_INT64, &seed, "Seed of the random weights (0)", "N"},
      {NULL, 0, 0, 0, NULL, NULL, NULL},
  };
  GError *error = NULL;
  GenFamily family = GEN_FAMILY_SD15;
  if (!parse_options(&argc, &argv, entries, &error) ||
      (family_name && !model_gen_family_parse(family_name, &family, &error)))
    return report_error(error);
  if (argc != 2) return usage();
  return make_model(argv[1], family, (guint64)seed, &error) ? 0 : report_error(error);
}

static int command_run(int argc, char **argv) {
  gint64 seed = 0;
  g_autofree char *model_dir = NULL, *sizes = NULL, *precisions = NULL, *family_name = NULL;
  int repeat = 3, batch = 4;
  gboolean make_if_missing = FALSE, no_fresh = FALSE;
  g_autofree char *cli = NULL, *plugin = NULL;
  const GOptionEntry entries[] = {
      {"model", 0, 0, G_OPTION_ARG_FILENAME, &model_dir, "Diffusers model folder", "DIR"},
      {"sizes", 0, 0, G_OPTION_ARG_STRING, &sizes, "Image sides (256,512)", "N,N"},
      {"precision", 0, 0, G_OPTION_ARG_STRING, &precisions, "Precisions (fp32,bf16)", "P,P"},
      {"repeat", 0, 0, G_OPTION_ARG_INT, &repeat, "Timed runs per stage (3)", "N"},
      {"make-if-missing", 0, 0, G_OPTION_ARG_NONE, &make_if_missing,
       "First write a random-weight model to DIR if it holds none", NULL},
      FAMILY_OPTION(family_name),
      {"seed", 0, 0, G_OPTION_ARG_INT64, &seed, "Seed of those random weights (0)", "N"},
      {"no-fresh", 0, 0, G_OPTION_ARG_NONE, &no_fresh, "Skip the fresh-process measurements", NULL},
      {"cli", 0, 0, G_OPTION_ARG_FILENAME, &cli,
       "gimp-lcm-cli for the fresh processes (default: next to this program)", "PATH"},
      {"plugin", 0, 0, G_OPTION_ARG_FILENAME, &plugin,
       "The plug-in binary for the Script-Fu batch (default: ../plugin/gimp-lcm from here)",
       "PATH"},
      {"batch", 0, 0, G_OPTION_ARG_INT, &batch,
       "plug-in-lcm-txt2img calls per Script-Fu batch (4; 0: no batch)", "N"},
      {NULL, 0, 0, 0, NULL, NULL, NULL},
  };
  GError *error = NULL;
  const char *program = argv[0];
  GenFamily family = GEN_FAMILY_SD15;
  if (!parse_options(&argc, &argv, entries, &error) ||
      (family_name && !model_gen_family_parse(family_name, &family, &error)))
    return report_error(error);
  if (argc != 1 || !model_dir || repeat < 1) return usage();

  /* In this process every load packs from the model files (the loads are
   * timed that way); the fresh processes get a weight cache of their own. */
  lcm_weight_cache_set_enabled(FALSE);
  g_autofree char *self = g_file_read_link("/proc/self/exe", NULL);
  g_autofree char *self_dir = self ? g_path_get_dirname(self) : g_path_get_dirname(program);
  if (!cli) cli = g_build_filename(self_dir, "gimp-lcm-cli", NULL);
  if (!plugin) plugin = g_build_filename(self_dir, "..", "plugin", "gimp-lcm", NULL);
  Run run = {.model_dir = model_dir,
             .repeat = repeat,
             .cli = no_fresh ? NULL : cli,
             .plugin = plugin,
             .batch = batch};
  if (!no_fresh && !(run.work = g_dir_make_tmp("gimp-lcm-bench-XXXXXX", &error)))
    return report_error(error);
  g_autofree char *index = g_build_filename(model_dir, "model_index.json", NULL);
  if (make_if_missing && !g_file_test(index, G_FILE_TEST_EXISTS) &&
      !make_model(model_dir, family, (guint64)seed, &error))
    return report_error(error);
  if (!parse_sizes(sizes ? sizes : default_sizes(model_dir), &run, &error) ||
      !parse_precisions(precisions ? precisions : "fp32,bf16", &run, &error))
    return report_error(error);

  run.stages = g_array_new(FALSE, FALSE, sizeof(StageRow));
  run.loads = g_array_new(FALSE, FALSE, sizeof(LoadRow));
  run.memory = g_array_new(FALSE, FALSE, sizeof(MemoryRow));
  run.pipelines = g_array_new(FALSE, FALSE, sizeof(PipelineRow));
  run.fresh = g_array_new(FALSE, FALSE, sizeof(FreshRow));
  const gboolean ok = bench_run(&run, &error);
  for (GenNetwork n = 0; n < GEN_N_NETWORKS; n++) g_free(run.config_texts[n]);
  for (size_t p = 0; p < G_N_ELEMENTS(run.unsupported); p++) g_free(run.unsupported[p]);
  g_array_unref(run.stages);
  g_array_unref(run.loads);
  g_array_unref(run.memory);
  g_array_unref(run.pipelines);
  g_array_unref(run.fresh);
  if (run.work) remove_tree(run.work);
  g_free(run.work);
  return ok ? 0 : report_error(error);
}

int main(int argc, char **argv) {
  if (argc >= 2 && strcmp(argv[1], "make-model") == 0)
    return command_make_model(argc - 1, argv + 1);
  if (argc >= 2 && strcmp(argv[1], "run") == 0) return command_run(argc - 1, argv + 1);
  return usage();
}
