/* lcm-preview-bench: the live preview as a user feels it.
 *
 *   lcm-preview-bench [--model PATH] [--rounds N] [--char-ms MS] [--pause-ms MS]
 *                     [--precision auto|fp32|bf16] [--debounce MS] [--cold]
 *
 * Drives the real dialog (ui/, under an X server: xvfb-run) the way a user
 * does: it opens on a prompt, then each round types a few words at human
 * speed, pauses long enough for a preview to start, types on (which makes
 * that preview stale) and stops. It times, from the dialog's signals:
 * opening → first picture and → finished preview; last keystroke → first
 * picture and → finished full-size preview; how long a stale preview keeps
 * running after the keystroke that made it stale; and the finished preview
 * against the compute floor of what it computes (FLOPs of the model's text
 * encoder, UNet steps and VAE decode at the preview size, over the conv peak
 * measured in the same run). Prints a Markdown report; exits non-zero when a
 * preview failed or none finished. The opening is timed in a fresh process
 * after a warm-up process opened the dialog once (so the weight cache is
 * filled, as for every call but a model's first); --cold skips the warm-up.
 * See docs/benchmarks.md. */
#include "lcm-dialog.h"
#include "model-gen.h"

#include <math.h>
#include <string.h>

#define WAIT_LIMIT_US (900 * G_USEC_PER_SEC)

typedef enum { EV_STARTED, EV_UPDATED, EV_FINISHED, EV_CANCELLED, EV_FAILED } EventKind;

typedef struct {
  EventKind kind;
  gint64 us;
} Event;

typedef struct {
  GArray *events; /* Event, in order */
} Recorder;

static void record(Recorder *r, EventKind kind) {
  Event e = {kind, g_get_monotonic_time()};
  g_array_append_val(r->events, e);
}

static void on_started(LcmDialog *d, Recorder *r) {
  (void)d;
  record(r, EV_STARTED);
}
static void on_updated(LcmDialog *d, Recorder *r) {
  (void)d;
  record(r, EV_UPDATED);
}
static void on_finished(LcmDialog *d, Recorder *r) {
  (void)d;
  record(r, EV_FINISHED);
}
static void on_cancelled(LcmDialog *d, Recorder *r) {
  (void)d;
  record(r, EV_CANCELLED);
}
static void on_failed(LcmDialog *d, Recorder *r) {
  (void)d;
  record(r, EV_FAILED);
}

static void iterate_for(int milliseconds) {
  gint64 end = g_get_monotonic_time() + (gint64)milliseconds * 1000;
  while (g_get_monotonic_time() < end) {
    while (g_main_context_iteration(NULL, FALSE)) continue;
    g_usleep(1000);
  }
}

static gboolean wait_idle(LcmDialog *dialog) {
  gint64 limit = g_get_monotonic_time() + WAIT_LIMIT_US;
  while (lcm_dialog_preview_busy(dialog) && g_get_monotonic_time() < limit)
    g_main_context_iteration(NULL, TRUE);
  return !lcm_dialog_preview_busy(dialog);
}

/* Types text one character every char_ms; returns the last keystroke's time. */
static gint64 type_text(LcmDialog *dialog, const char *text, int char_ms) {
  GtkTextBuffer *buffer = lcm_dialog_get_prompt_buffer(dialog);
  gint64 last = 0;
  for (const char *p = text; *p; p = g_utf8_next_char(p)) {
    GtkTextIter end;
    gtk_text_buffer_get_end_iter(buffer, &end);
    last = g_get_monotonic_time();
    gtk_text_buffer_insert(buffer, &end, p, (gint)(g_utf8_next_char(p) - p));
    iterate_for(char_ms);
  }
  return last;
}

/* The first event of `kind` at or after `from`, or -1. */
static gint64 first_event(const Recorder *r, EventKind kind, gint64 from) {
  for (guint i = 0; i < r->events->len; i++) {
    const Event *e = &g_array_index(r->events, Event, i);
    if (e->kind == kind && e->us >= from) return e->us;
  }
  return -1;
}

static gint64 last_event(const Recorder *r, EventKind kind) {
  for (guint i = r->events->len; i > 0; i--) {
    const Event *e = &g_array_index(r->events, Event, i - 1);
    if (e->kind == kind) return e->us;
  }
  return -1;
}

static int count_events(const Recorder *r, EventKind kind) {
  int n = 0;
  for (guint i = 0; i < r->events->len; i++) n += g_array_index(r->events, Event, i).kind == kind;
  return n;
}

/* A preview started and not yet ended. */
static gboolean preview_running(const Recorder *r) {
  return count_events(r, EV_STARTED) >
         count_events(r, EV_FINISHED) + count_events(r, EV_CANCELLED) + count_events(r, EV_FAILED);
}

static int compare_doubles(gconstpointer a, gconstpointer b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

/* One report row: median, min and max of the seconds in `values`. */
static void print_row(const char *what, GArray *values) {
  if (!values->len) {
    g_print("| %s | – | – | – | 0 |\n", what);
    return;
  }
  g_array_sort(values, compare_doubles);
  double *v = (double *)values->data;
  double median =
      values->len % 2 ? v[values->len / 2] : (v[values->len / 2 - 1] + v[values->len / 2]) / 2;
  g_print("| %s | %.3f | %.3f | %.3f | %u |\n", what, median, v[0], v[values->len - 1],
          values->len);
}

static char *read_config(const char *model, const char *network) {
  g_autofree char *path = g_build_filename(model, network, "config.json", NULL);
  char *text = NULL;
  return g_file_get_contents(path, &text, NULL, NULL) ? text : NULL;
}

/* FLOPs of one full-size preview of `steps` steps at width x height (the VAE
 * decode only when the preview decodes with it), or 0 when the model's
 * configs are not in a diffusers folder. */
static double preview_flops(const char *model, int steps, int width, int height, gboolean vae) {
  g_autofree char *text = read_config(model, "text_encoder");
  g_autofree char *unet = read_config(model, "unet");
  g_autofree char *vae_config = read_config(model, "vae");
  double text_flops = 0, step_flops = 0, decode_flops = 0;
  int lh = height / 8, lw = width / 8;
  if (!text || !unet || !vae_config ||
      !model_gen_stage_flops(GEN_STAGE_TEXT_ENCODE, text, lh, lw, &text_flops, NULL) ||
      !model_gen_stage_flops(GEN_STAGE_UNET_STEP, unet, lh, lw, &step_flops, NULL) ||
      !model_gen_stage_flops(GEN_STAGE_VAE_DECODE, vae_config, lh, lw, &decode_flops, NULL))
    return 0;
  return text_flops + steps * step_flops + (vae ? decode_flops : 0);
}

static char *cpu_model(void) {
  g_autofree char *info = NULL;
  if (!g_file_get_contents("/proc/cpuinfo", &info, NULL, NULL)) return g_strdup("unknown");
  const char *line = strstr(info, "model name");
  const char *colon = line ? strchr(line, ':') : NULL;
  if (!colon) return g_strdup("unknown");
  const char *end = strchr(colon, '\n');
  return g_strstrip(g_strndup(colon + 1, end ? (gsize)(end - colon - 1) : strlen(colon + 1)));
}

int main(int argc, char **argv) {
  g_autofree char *model = NULL, *precision_name = NULL;
  int rounds = 3, char_ms = 150, pause_ms = 700, debounce_ms = 200;
  gboolean open_only = FALSE, cold = FALSE;
  GOptionEntry entries[] = {
      {"model", 0, 0, G_OPTION_ARG_FILENAME, &model, "Model folder (default: the default model)",
       "PATH"},
      {"rounds", 0, 0, G_OPTION_ARG_INT, &rounds, "Typing rounds (default 3)", "N"},
      {"char-ms", 0, 0, G_OPTION_ARG_INT, &char_ms, "Time between keystrokes (default 150)", "MS"},
      {"pause-ms", 0, 0, G_OPTION_ARG_INT, &pause_ms,
       "Pause mid-round, so a preview starts and goes stale (default 700)", "MS"},
      {"precision", 0, 0, G_OPTION_ARG_STRING, &precision_name, "auto, fp32 or bf16", "P"},
      {"debounce", 0, 0, G_OPTION_ARG_INT, &debounce_ms, "The dialog's debounce (default 200)",
       "MS"},
      {"cold", 0, 0, G_OPTION_ARG_NONE, &cold,
       "Skip the warm-up process: time the opening as it was left (e.g. the first one ever)", NULL},
      {"open-only", 0, G_OPTION_FLAG_HIDDEN, G_OPTION_ARG_NONE, &open_only,
       "Open the dialog, wait for its preview and quit (the warm-up)", NULL},
      {NULL, 0, 0, 0, NULL, NULL, NULL},
  };
  GError *error = NULL;
  if (!gtk_init_with_args(&argc, &argv, "- time the live preview", entries, NULL, &error)) {
    g_printerr("lcm-preview-bench: %s\n", error->message);
    return 2;
  }
  LcmPrecision precision = LCM_PRECISION_AUTO;
  if (precision_name && !lcm_precision_parse(precision_name, &precision, &error)) {
    g_printerr("lcm-preview-bench: %s\n", error->message);
    return 2;
  }
  if (!model) model = lcm_default_model(NULL);
  /* Each GIMP call is a new process: a warm-up process opens the dialog once,
   * as the user did before, filling the weight cache; the timed opening is
   * then a fresh process's, like every later one. */
  if (!open_only && !cold) {
    const char *child[] = {argv[0], "--open-only", "--model",
                           model,   "--precision", precision_name ? precision_name : "auto",
                           NULL};
    int wait_status = 0;
    if (!g_spawn_sync(NULL, (char **)child, NULL, G_SPAWN_DEFAULT, NULL, NULL, NULL, NULL,
                      &wait_status, &error) ||
        !g_spawn_check_wait_status(wait_status, &error)) {
      g_printerr("lcm-preview-bench: the warm-up failed: %s\n", error->message);
      return 2;
    }
  }
  LcmPrecision resolved = lcm_precision_resolve(precision);
  double peak = open_only ? 1 : lcm_benchmark_conv_peak(resolved, &error);
  if (peak <= 0) {
    g_printerr("lcm-preview-bench: %s\n", error ? error->message : "no conv peak");
    return 2;
  }

  LcmSettings settings;
  lcm_settings_init(&settings);
  settings.model_path = g_strdup(model);
  settings.prompt = g_strdup("a lighthouse");
  settings.precision = precision;
  settings.seed = 42;
  Recorder recorder = {g_array_new(FALSE, FALSE, sizeof(Event))};

  gint64 opened = g_get_monotonic_time();
  GtkWidget *widget = lcm_dialog_new(NULL, &settings, NULL, NULL);
  LcmDialog *dialog = LCM_DIALOG(widget);
  lcm_dialog_set_debounce(dialog, (guint)debounce_ms);
  g_signal_connect(dialog, "preview-started", G_CALLBACK(on_started), &recorder);
  g_signal_connect(dialog, "preview-updated", G_CALLBACK(on_updated), &recorder);
  g_signal_connect(dialog, "preview-finished", G_CALLBACK(on_finished), &recorder);
  g_signal_connect(dialog, "preview-cancelled", G_CALLBACK(on_cancelled), &recorder);
  g_signal_connect(dialog, "preview-failed", G_CALLBACK(on_failed), &recorder);
  gtk_widget_show(widget);
  gboolean idle = wait_idle(dialog);
  double open_first = (first_event(&recorder, EV_UPDATED, opened) - opened) / 1e6;
  double open_finished = (last_event(&recorder, EV_FINISHED) - opened) / 1e6;
  if (open_only) {
    int open_status = idle && count_events(&recorder, EV_FINISHED) > 0 ? 0 : 1;
    gtk_widget_destroy(widget);
    while (g_main_context_iteration(NULL, FALSE)) continue;
    g_array_unref(recorder.events);
    lcm_settings_clear(&settings);
    return open_status;
  }

  static const char *const words[][2] = {
      {" at dusk", " in the fog"},    {" with seagulls", " and waves"},
      {" oil painting", " detailed"}, {" in winter", " under stars"},
      {" from the sea", " at dawn"},  {" watercolor", " soft light"},
  };
  GArray *first_picture = g_array_new(FALSE, FALSE, sizeof(double));
  GArray *finished = g_array_new(FALSE, FALSE, sizeof(double));
  GArray *stale = g_array_new(FALSE, FALSE, sizeof(double));
  GArray *over_floor = g_array_new(FALSE, FALSE, sizeof(double));
  LcmPreviewStats stats;
  lcm_dialog_get_preview_stats(dialog, &stats);
  int quick_before = stats.quick;
  int fast_before = stats.fast_decoded;
  for (int round = 0; round < rounds && idle; round++) {
    const char *const *pair = words[round % G_N_ELEMENTS(words)];
    type_text(dialog, pair[0], char_ms);
    iterate_for(pause_ms);
    gint64 stale_key = g_get_monotonic_time();
    gboolean running = preview_running(&recorder);
    gint64 last_key = type_text(dialog, pair[1], char_ms);
    idle = wait_idle(dialog);
    if (running) {
      gint64 cancelled = first_event(&recorder, EV_CANCELLED, stale_key);
      if (cancelled > 0) {
        double s = (cancelled - stale_key) / 1e6;
        g_array_append_val(stale, s);
      }
    }
    gint64 picture = first_event(&recorder, EV_UPDATED, last_key);
    gint64 done = last_event(&recorder, EV_FINISHED);
    if (picture > 0) {
      double s = (picture - last_key) / 1e6;
      g_array_append_val(first_picture, s);
    }
    if (done > last_key) {
      double s = (done - last_key) / 1e6;
      g_array_append_val(finished, s);
    }
  }
  lcm_dialog_get_preview_stats(dialog, &stats);

  /* The floor of one full-size preview at the settings' size. */
  int width = MIN(256, settings.width), height = MIN(256, settings.height);
  gboolean vae_decode = stats.fast_decoded == fast_before;
  double floor_s = preview_flops(model, settings.steps, width, height, vae_decode) / peak;
  for (guint i = 0; i < finished->len && floor_s > 0; i++) {
    double ratio = (g_array_index(finished, double, i) - debounce_ms / 1000.0) / floor_s;
    g_array_append_val(over_floor, ratio);
  }

  g_autofree char *cpu = cpu_model();
  g_print("## Live preview, %s\n\n", cpu);
  g_print("model `%s`, %s, conv peak %.3f TFLOP/s, %d steps, preview %dx%d, final picture by %s; "
          "debounce %d ms, a keystroke every %d ms, pause %d ms, %d rounds; quick previews %d; "
          "failed %d\n\n",
          model, lcm_precision_name(resolved), peak / 1e12, settings.steps, width, height,
          vae_decode ? "the VAE" : "TAESD", debounce_ms, char_ms, pause_ms, rounds,
          stats.quick - quick_before, stats.failed);
  g_print("| measure (s) | median | min | max | n |\n|---|---:|---:|---:|---:|\n");
  const char *opening = cold ? "opening" : "opening (after a warm-up process)";
  g_print("| %s → first picture | %.3f | | | 1 |\n", opening, open_first);
  g_print("| %s → finished preview | %.3f | | | 1 |\n", opening, open_finished);
  print_row("last keystroke → first picture", first_picture);
  print_row("last keystroke → finished preview", finished);
  print_row("stale preview runs on after a keystroke", stale);
  if (floor_s > 0) {
    g_print("\nCompute floor of one finished preview: %.3f s. ", floor_s);
    g_print("Finished preview (less the debounce) over that floor:\n\n");
    g_print("| ratio | median | min | max | n |\n|---|---:|---:|---:|---:|\n");
    print_row("finished ÷ floor", over_floor);
  }

  int status = idle && stats.failed == 0 && stats.finished > 0 && first_picture->len > 0 ? 0 : 1;
  if (status) g_printerr("lcm-preview-bench: a preview failed, hung or never showed a picture\n");
  gtk_widget_destroy(widget);
  while (g_main_context_iteration(NULL, FALSE)) continue;
  g_array_unref(first_picture);
  g_array_unref(finished);
  g_array_unref(stale);
  g_array_unref(over_floor);
  g_array_unref(recorder.events);
  lcm_settings_clear(&settings);
  return status;
}
