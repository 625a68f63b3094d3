/* gimp-lcm-cli txt2img, img2img and inpaint: option parsing, PNG in and out
 * (picture.c), a progress bar and per-stage timings around lcm_pipeline_run. */
#include "generate.h"
#include "cli.h"
#include "lcm.h"
#include "picture.h"

#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#define EXIT_BAD_ARGUMENTS 2
#define PROGRESS_BAR_WIDTH 30

/* ---- Options ---------------------------------------------------------------------- */

typedef struct {
  char *output, *input, *mask, *model, *negative, *precision, *seed, *guidance, *strength_rule;
  char **loras;
  int steps, width, height, threads, clip_skip;
  double strength;
  gboolean verbose, no_weight_cache;
} Options;

static void options_clear(Options *o) {
  g_free(o->output);
  g_free(o->input);
  g_free(o->mask);
  g_free(o->model);
  g_free(o->negative);
  g_free(o->precision);
  g_free(o->seed);
  g_free(o->guidance);
  g_free(o->strength_rule);
  g_strfreev(o->loras);
}

/* The options every command has; the mode's own come first in --help. */
static void add_common_entries(GOptionContext *context, Options *o) {
  GOptionEntry entries[] = {
      {"output", 'o', 0, G_OPTION_ARG_FILENAME, &o->output, "Write the picture to this PNG file",
       "OUT.png"},
      {"model", 0, 0, G_OPTION_ARG_FILENAME, &o->model,
       "Model: a diffusers folder or .safetensors checkpoint, a catalogue name (gimp-lcm-cli "
       "models list) or a Hub repo id in the Hugging Face cache (default: the first in the "
       "models folder, else a catalogue model in the cache, else the bundled tiny test model)",
       "MODEL"},
      {"lora", 0, 0, G_OPTION_ARG_FILENAME_ARRAY, &o->loras,
       "Merge a LoRA (file, catalogue name or cached Hub repo id) at SCALE (default 1); repeat "
       "for several, merged in order",
       "LORA[:SCALE]"},
      {"negative", 0, 0, G_OPTION_ARG_STRING, &o->negative,
       "Negative prompt (used only with classifier-free guidance: non-LCM UNets, guidance > 1)",
       "TEXT"},
      {"steps", 0, 0, G_OPTION_ARG_INT, &o->steps, "UNet steps, 1 to 50 (default 4)", "N"},
      {"guidance", 0, 0, G_OPTION_ARG_STRING, &o->guidance,
       "Guidance scale (default: 8 for an LCM UNet, 1 otherwise)", "G"},
      {"seed", 0, 0, G_OPTION_ARG_STRING, &o->seed,
       "Random seed; -1 or absent picks one and prints it (only the low 32 bits count, as in "
       "torch)",
       "S"},
      {"clip-skip", 0, 0, G_OPTION_ARG_INT, &o->clip_skip,
       "Take the prompt's text embedding N layers before the last (default 0: off; some SD1.5 "
       "checkpoints ask for 1)",
       "N"},
      {"precision", 0, 0, G_OPTION_ARG_STRING, &o->precision, "auto (default), fp32 or bf16", "P"},
      {"threads", 0, 0, G_OPTION_ARG_INT, &o->threads,
       "Compute threads (default: OpenMP's, OMP_NUM_THREADS or all cores)", "N"},
      {"verbose", 'v', 0, G_OPTION_ARG_NONE, &o->verbose, "Print the time of each stage", NULL},
      {"no-weight-cache", 0, 0, G_OPTION_ARG_NONE, &o->no_weight_cache,
       "Pack the weights from the model files; neither read nor write the packed-weight cache "
       "(also: GIMP_LCM_WEIGHT_CACHE=off)",
       NULL},
      G_OPTION_ENTRY_NULL};
  g_option_context_add_main_entries(context, entries, NULL);
}

static void add_source_entries(GOptionContext *context, Options *o, gboolean with_mask) {
  GOptionEntry entries[] = {
      {"input", 'i', 0, G_OPTION_ARG_FILENAME, &o->input,
       "The source picture (PNG or JPEG; alpha is ignored)", "IN.png"},
      {"strength", 0, 0, G_OPTION_ARG_DOUBLE, &o->strength,
       with_mask ? "How much to change, above 0 to 1 (default: the model's pipeline's, 1 = "
                   "repaint from noise for SD1.5, 0.9999 for SDXL)"
                 : "How much to change, above 0 to 1 (default: the model's pipeline's, 0.8 for "
                   "SD1.5, 0.3 for SDXL)",
       "S"},
      {"strength-rule", 0, 0, G_OPTION_ARG_STRING, &o->strength_rule,
       "How strength picks the timesteps: auto (default, as diffusers), respace or slice", "R"},
      G_OPTION_ENTRY_NULL};
  g_option_context_add_main_entries(context, entries, NULL);
  GOptionEntry mask_entries[] = {
      {"mask", 'm', 0, G_OPTION_ARG_FILENAME, &o->mask,
       "Where to repaint: white repaints, black keeps, grey blends (see below)", "MASK.png"},
      G_OPTION_ENTRY_NULL};
  if (with_mask) g_option_context_add_main_entries(context, mask_entries, NULL);
}

static const char source_help[] =
    "The source's sides must be multiples of 8: other sizes are refused, not scaled; crop or\n"
    "scale the picture first.\n\n";
static const char mask_help[] =
    "The mask has the source's size. Its value is the luminance (0.2126 R + 0.7152 G +\n"
    "0.0722 B) times the alpha: white repaints, black or transparent keeps the source pixel\n"
    "exactly, grey blends the two (the model repaints where the value is at least 0.5).\n\n";
static const char common_help[] =
    "LoRA: --lora LORA or --lora LORA:SCALE, e.g. --lora lcm-lora-sdv1-5:1.0.\n"
    "Writes an 8-bit RGB PNG and prints its name and seed on stdout; progress goes to stderr.\n"
    "Exit status: 0 done, 1 failed, 2 bad arguments.\n";

static gboolean parse_double(const char *option, const char *text, double *out, GError **error) {
  char *end = NULL;
  *out = g_ascii_strtod(text, &end);
  if (!*text || *end || !isfinite(*out))
    return lcm_error_invalid(error, "%s '%s' is not a number", option, text);
  return TRUE;
}

/* --seed: absent or -1 = a random 32-bit seed. */
static gboolean parse_seed(const char *text, uint64_t *seed, GError **error) {
  if (!text || strcmp(text, "-1") == 0) {
    *seed = g_random_int();
    return TRUE;
  }
  guint64 value;
  if (!g_ascii_string_to_unsigned(text, 10, 0, G_MAXUINT64, &value, NULL))
    return lcm_error_invalid(error,
                             "--seed '%s' is not a number from 0 to %" G_GUINT64_FORMAT " (or -1)",
                             text, G_MAXUINT64);
  *seed = value;
  return TRUE;
}

static gboolean parse_strength_rule(const char *text, LcmStrengthRule *rule, GError **error) {
  static const char *const names[] = {"auto", "respace", "slice"};
  static const LcmStrengthRule rules[] = {LCM_STRENGTH_AUTO, LCM_STRENGTH_RESPACE,
                                          LCM_STRENGTH_SLICE};
  for (size_t i = 0; i < G_N_ELEMENTS(names); i++)
    if (strcmp(text, names[i]) == 0) {
      *rule = rules[i];
      return TRUE;
    }
  return lcm_error_invalid(error, "--strength-rule '%s': give auto, respace or slice", text);
}

typedef struct {
  char *path;
  float scale;
} LoraSpec;

/* FILE or FILE:SCALE (the last colon splits, so FILE may hold colons). */
static gboolean parse_lora(const char *spec, LoraSpec *out, GError **error) {
  const char *colon = strrchr(spec, ':');
  double scale = 1.0;
  if (colon) {
    char *end = NULL;
    scale = g_ascii_strtod(colon + 1, &end);
    if (!colon[1] || *end || !isfinite(scale))
      return lcm_error_invalid(
          error, "--lora '%s': expected FILE or FILE:SCALE with a number as SCALE", spec);
  }
  size_t length = colon ? (size_t)(colon - spec) : strlen(spec);
  if (length == 0) return lcm_error_invalid(error, "--lora '%s': no file named", spec);
  out->path = g_strndup(spec, length);
  out->scale = (float)scale;
  return TRUE;
}

/* ---- Progress and timings ------------------------------------------------------------- */

/* Watches a run through its two callbacks. The noise callback replays the
 * default source (torch.randn on one generator seeded with the seed, drawn in
 * order) and notes the time of each draw: the draw just before the first UNet
 * call marks the end of the text (and source) encoding, which the progress
 * callback alone cannot separate from the first step. */
typedef struct {
  LcmRng *rng;
  gint64 previous_draw, last_draw; /* times of the two latest draws */
  gint64 start, encoded;           /* run start; end of the encoding */
  gint64 *step_end;                /* LCM_MAX_STEPS */
  int *step_timestep;
  int steps;
  gboolean tty;
} RunMonitor;

static gboolean monitor_noise(int index, float *out, int64_t n, gpointer data, GError **error) {
  (void)index;
  (void)error;
  RunMonitor *m = data;
  lcm_rng_randn(m->rng, out, n);
  m->previous_draw = m->last_draw;
  m->last_draw = g_get_monotonic_time();
  return TRUE;
}

static void draw_progress(const RunMonitor *m, int done) {
  if (!m->tty) {
    g_printerr("step %d/%d\n", done, m->steps);
    return;
  }
  int filled = done * PROGRESS_BAR_WIDTH / m->steps;
  char bar[PROGRESS_BAR_WIDTH + 1];
  memset(bar, '#', filled);
  memset(bar + filled, '.', PROGRESS_BAR_WIDTH - filled);
  bar[PROGRESS_BAR_WIDTH] = '\0';
  g_printerr("\r[%s] step %d/%d", bar, done, m->steps);
  if (done == m->steps) g_printerr("\n");
}

static void monitor_progress(const LcmProgress *progress, gpointer data) {
  RunMonitor *m = data;
  gint64 now = g_get_monotonic_time();
  if (progress->step == 0) {
    /* Every step but the last draws its noise after its UNet call. */
    m->encoded = progress->steps > 1 ? m->previous_draw : m->last_draw;
    m->steps = progress->steps;
  }
  if (progress->step < LCM_MAX_STEPS) {
    m->step_end[progress->step] = now;
    m->step_timestep[progress->step] = progress->timestep;
  }
  draw_progress(m, progress->step + 1);
}

static void print_timing(const char *stage, gint64 microseconds) {
  g_printerr("  %-22s %9.1f ms\n", stage, microseconds / 1e3);
}

static void print_timings(const RunMonitor *m, LcmMode mode, gint64 load_start, gint64 load_end,
                          gint64 run_end, gint64 total_end) {
  g_printerr("timings:\n");
  print_timing("model load", load_end - load_start);
  print_timing(mode == LCM_MODE_TXT2IMG ? "text encode" : "text + VAE encode",
               m->encoded - m->start);
  gint64 previous = m->encoded;
  for (int i = 0; i < m->steps; i++) {
    char label[64];
    g_snprintf(label, sizeof label, "UNet step %d/%d (t=%d)", i + 1, m->steps, m->step_timestep[i]);
    print_timing(label, m->step_end[i] - previous);
    previous = m->step_end[i];
  }
  print_timing("VAE decode", run_end - previous);
  print_timing("total", total_end - load_start);
}

/* ---- The commands ------------------------------------------------------------------- */

static const char *mode_name(LcmMode mode) {
  return mode == LCM_MODE_TXT2IMG ? "txt2img" : mode == LCM_MODE_IMG2IMG ? "img2img" : "inpaint";
}

/* Checks the arguments and fills params (except the pipeline's defaults);
 * on failure the caller exits with status 2. */
static gboolean prepare_params(LcmMode mode, const Options *o, int argc, char **argv,
                               LcmPipelineParams *params, LcmPrecision *precision, GArray *loras,
                               GError **error) {
  if (argc != 2)
    return lcm_error_invalid(error, "give one PROMPT (quote it); see 'gimp-lcm-cli %s --help'",
                             mode_name(mode));
  if (!o->output) return lcm_error_invalid(error, "give the output file with -o OUT.png");
  if (mode != LCM_MODE_TXT2IMG && !o->input)
    return lcm_error_invalid(error, "give the source picture with -i IN.png");
  if (mode == LCM_MODE_INPAINT && !o->mask)
    return lcm_error_invalid(error, "give the mask with -m MASK.png");
  if (o->threads < 0) return lcm_error_invalid(error, "--threads %d: give 1 or more", o->threads);
  if (o->clip_skip < 0)
    return lcm_error_invalid(error, "--clip-skip %d: give 0 (off) or more", o->clip_skip);
  params->mode = mode;
  params->prompt = argv[1];
  params->negative_prompt = o->negative;
  params->steps = o->steps;
  params->width = o->width;
  params->height = o->height;
  params->strength = o->strength;
  params->clip_skip = o->clip_skip;
  params->guidance_scale = NAN; /* the model's default, once loaded */
  if (o->guidance && !parse_double("--guidance", o->guidance, &params->guidance_scale, error))
    return FALSE;
  if (o->strength_rule && !parse_strength_rule(o->strength_rule, &params->strength_rule, error))
    return FALSE;
  if (!parse_seed(o->seed, &params->seed, error)) return FALSE;
  if (o->precision && !lcm_precision_parse(o->precision, precision, error)) return FALSE;
  for (char **spec = o->loras; spec && *spec; spec++) {
    LoraSpec lora;
    if (!parse_lora(*spec, &lora, error)) return FALSE;
    g_array_append_val(loras, lora);
  }
  return TRUE;
}

static LcmPipeline *load_pipeline(const char *model_option, const GArray *loras,
                                  LcmPrecision precision, GError **error) {
  char *path = cli_resolve_model(model_option, error);
  if (!path) return NULL;
  LcmModel *model = lcm_model_open(path, error);
  g_free(path);
  if (!model) return NULL;
  LcmPipeline *pipeline = NULL;
  gboolean ok = TRUE;
  for (guint i = 0; ok && i < loras->len; i++) {
    const LoraSpec *lora = &g_array_index(loras, LoraSpec, i);
    char *lora_path = lcm_resolve(lora->path, LCM_ASSET_LORA, NULL, error);
    ok = lora_path && lcm_model_add_lora(model, lora_path, lora->scale, error);
    g_free(lora_path);
  }
  if (ok) pipeline = lcm_pipeline_new(model, precision, error);
  lcm_model_free(model);
  return pipeline;
}

static void lora_spec_clear(gpointer data) {
  g_free(((LoraSpec *)data)->path);
}

/* Loads, runs and saves; returns the exit status. */
static int generate(LcmMode mode, const Options *o, LcmPipelineParams *params,
                    LcmPrecision precision, const GArray *loras) {
  GError *error = NULL;
  LcmImage *source = NULL, *mask = NULL, *result = NULL;
  LcmPipeline *pipeline = NULL;
  gint64 load_start, load_end, run_end;
  RunMonitor monitor = {.rng = lcm_rng_new(params->seed),
                        .step_end = g_new0(gint64, LCM_MAX_STEPS),
                        .step_timestep = g_new0(int, LCM_MAX_STEPS),
                        .tty = isatty(STDERR_FILENO)};
  /* Read the inputs before the (slow) model load, to fail early. */
  if (mode != LCM_MODE_TXT2IMG && !(source = picture_load_source(o->input, &error))) goto out;
  if (mode == LCM_MODE_INPAINT && !(mask = picture_load_mask(o->mask, source, o->input, &error)))
    goto out;
  if (o->threads > 0) omp_set_num_threads(o->threads);
  if (o->no_weight_cache) lcm_weight_cache_set_enabled(FALSE);
  load_start = g_get_monotonic_time();
  if (!(pipeline = load_pipeline(o->model, loras, precision, &error))) goto out;
  load_end = g_get_monotonic_time();
  if (isnan(params->guidance_scale))
    params->guidance_scale = lcm_pipeline_default_guidance(pipeline);
  if (isnan(params->strength)) params->strength = lcm_pipeline_default_strength(pipeline, mode);
  params->image = source;
  params->mask = mask;
  params->noise = monitor_noise;
  params->noise_data = &monitor;
  params->progress = monitor_progress;
  params->progress_data = &monitor;
  if (o->verbose)
    g_printerr("%s: %s, %d steps, guidance %g, seed %" G_GUINT64_FORMAT "\n", mode_name(mode),
               lcm_precision_name(lcm_precision_resolve(precision)), params->steps,
               params->guidance_scale, params->seed);
  monitor.start = g_get_monotonic_time();
  if (!(result = lcm_pipeline_run(pipeline, params, &error))) goto out;
  run_end = g_get_monotonic_time();
  if (mode == LCM_MODE_INPAINT && !lcm_image_composite(result, source, mask, &error)) goto out;
  if (!picture_save_png(result, o->output, &error)) goto out;
  if (o->verbose)
    print_timings(&monitor, mode, load_start, load_end, run_end, g_get_monotonic_time());
  printf("%s: %dx%d, seed %" G_GUINT64_FORMAT "\n", o->output, result->width, result->height,
         params->seed);
out:
  lcm_rng_free(monitor.rng);
  g_free(monitor.step_end);
  g_free(monitor.step_timestep);
  if (result) lcm_image_free(result);
  if (pipeline) lcm_pipeline_free(pipeline);
  if (mask) lcm_image_free(mask);
  if (source) lcm_image_free(source);
  return error ? cli_report_error(error) : 0;
}

static int run_command(LcmMode mode, int argc, char **argv) {
  /* strength NAN: the model's default, once loaded */
  Options o = {.steps = 4, .width = 512, .height = 512, .strength = NAN};
  GOptionContext *context;
  char *description;
  if (mode == LCM_MODE_TXT2IMG) {
    context = g_option_context_new("PROMPT -o OUT.png - make a picture from a prompt");
    GOptionEntry size_entries[] = {
        {"width", 0, 0, G_OPTION_ARG_INT, &o.width, "Width, a multiple of 8 (default 512)", "W"},
        {"height", 0, 0, G_OPTION_ARG_INT, &o.height, "Height, a multiple of 8 (default 512)", "H"},
        G_OPTION_ENTRY_NULL};
    g_option_context_add_main_entries(context, size_entries, NULL);
    description = g_strdup(common_help);
  } else if (mode == LCM_MODE_IMG2IMG) {
    context = g_option_context_new("PROMPT -i IN.png -o OUT.png - redraw a picture");
    add_source_entries(context, &o, FALSE);
    description = g_strconcat(source_help, common_help, NULL);
  } else {
    context = g_option_context_new("PROMPT -i IN.png -m MASK.png -o OUT.png - repaint the "
                                   "masked part of a picture");
    add_source_entries(context, &o, TRUE);
    description = g_strconcat(source_help, mask_help, common_help, NULL);
  }
  add_common_entries(context, &o);
  g_option_context_set_description(context, description);
  LcmPipelineParams params;
  lcm_pipeline_params_init(&params);
  LcmPrecision precision = LCM_PRECISION_AUTO;
  GArray *loras = g_array_new(FALSE, FALSE, sizeof(LoraSpec));
  g_array_set_clear_func(loras, lora_spec_clear);
  int status = EXIT_BAD_ARGUMENTS;
  GError *error = NULL;
  if (cli_parse_options(context, &argc, &argv)) {
    if (prepare_params(mode, &o, argc, argv, &params, &precision, loras, &error))
      status = generate(mode, &o, &params, precision, loras);
    else
      cli_report_error(error);
  }
  g_array_free(loras, TRUE);
  g_option_context_free(context);
  g_free(description);
  options_clear(&o);
  return status;
}

int generate_txt2img(int argc, char **argv) {
  return run_command(LCM_MODE_TXT2IMG, argc, argv);
}

int generate_img2img(int argc, char **argv) {
  return run_command(LCM_MODE_IMG2IMG, argc, argv);
}

int generate_inpaint(int argc, char **argv) {
  return run_command(LCM_MODE_INPAINT, argc, argv);
}
