#include "generation.h"

#include <libgimp/gimp.h>

#define GETTEXT_PACKAGE LCM_GETTEXT_DOMAIN
#include <glib/gi18n-lib.h>

/* How often the progress window looks at the worker, in milliseconds. */
#define PROGRESS_POLL_MS 100

typedef struct {
  const LcmSettings *settings;
  LcmPipeline *pipeline;
  gboolean owns_pipeline; /* loaded here, freed at the end */
  uint64_t seed;
  const LcmImage *source, *mask;
  gboolean threaded;
  /* Shared with the worker thread (atomics). */
  volatile gint cancel;
  gint steps_done, steps, done;
  /* Written by the worker, read after it finished. */
  LcmImage *result;
  GError *error;
} Generation;

static const char *mode_label(LcmMode mode) {
  switch (mode) {
  case LCM_MODE_TXT2IMG:
    return _("text to image");
  case LCM_MODE_IMG2IMG:
    return _("image to image");
  case LCM_MODE_INPAINT:
    return _("inpainting");
  }
  return "";
}

static void on_progress(const LcmProgress *progress, gpointer data) {
  Generation *generation = data;
  g_atomic_int_set(&generation->steps, progress->steps);
  g_atomic_int_set(&generation->steps_done, progress->step + 1);
  if (!generation->threaded) gimp_progress_update((double)(progress->step + 1) / progress->steps);
}

static void execute(Generation *generation) {
  const LcmSettings *settings = generation->settings;
  if (!generation->pipeline) {
    generation->pipeline = lcm_settings_load_pipeline(settings, NULL, &generation->error);
    generation->owns_pipeline = TRUE;
  }
  if (!generation->pipeline) return;
  if (!generation->threaded) gimp_progress_set_text(_("Generating (LCM)…"));
  if (!lcm_pipeline_supports(generation->pipeline, settings->mode)) {
    g_set_error(&generation->error, LCM_ERROR, LCM_ERROR_UNSUPPORTED,
                _("This model cannot do %s: it is an inpainting model, which only inpaints"),
                mode_label(settings->mode));
    return;
  }
  LcmPipelineParams params;
  lcm_pipeline_params_init(&params);
  lcm_settings_to_params(settings, generation->pipeline, generation->seed, &params);
  params.image = generation->source;
  params.mask = generation->mask;
  params.progress = on_progress;
  params.progress_data = generation;
  params.cancel = &generation->cancel;
  generation->result = lcm_pipeline_run(generation->pipeline, &params, &generation->error);
}

static gpointer worker(gpointer data) {
  Generation *generation = data;
  execute(generation);
  g_atomic_int_set(&generation->done, 1);
  return NULL;
}

/* The interactive run's window: what it does, a progress bar and Cancel. */
typedef struct {
  Generation *generation;
  GMainLoop *loop;
  GtkWidget *dialog, *label;
  GtkProgressBar *bar;
} ProgressWindow;

static void on_cancel(GtkDialog *dialog, int response, gpointer data) {
  (void)response;
  ProgressWindow *window = data;
  g_atomic_int_set(&window->generation->cancel, 1);
  gtk_dialog_set_response_sensitive(dialog, GTK_RESPONSE_CANCEL, FALSE);
  gtk_label_set_text(GTK_LABEL(window->label), _("Stopping…"));
}

static gboolean poll_worker(gpointer data) {
  ProgressWindow *window = data;
  Generation *generation = window->generation;
  int steps = g_atomic_int_get(&generation->steps);
  int done = g_atomic_int_get(&generation->steps_done);
  if (steps > 0 && !g_atomic_int_get(&generation->cancel)) {
    gtk_label_set_text(GTK_LABEL(window->label), _("Generating the full-size picture…"));
    g_autofree char *text = g_strdup_printf(_("Step %d of %d"), done, steps);
    gtk_progress_bar_set_text(window->bar, text);
    gtk_progress_bar_set_fraction(window->bar, (double)done / steps);
    gimp_progress_update((double)done / steps);
  } else if (steps == 0) {
    gtk_progress_bar_pulse(window->bar);
  }
  if (g_atomic_int_get(&generation->done)) g_main_loop_quit(window->loop);
  return G_SOURCE_CONTINUE;
}

static void run_with_window(Generation *generation) {
  ProgressWindow window = {.generation = generation, .loop = g_main_loop_new(NULL, FALSE)};
  window.dialog = gtk_dialog_new_with_buttons(_("Generating (LCM)"), NULL, 0, _("_Cancel"),
                                              GTK_RESPONSE_CANCEL, NULL);
  gtk_window_set_default_size(GTK_WINDOW(window.dialog), 360, -1);
  GtkWidget *box = gtk_dialog_get_content_area(GTK_DIALOG(window.dialog));
  gtk_container_set_border_width(GTK_CONTAINER(box), 12);
  gtk_box_set_spacing(GTK_BOX(box), 8);
  window.label = gtk_label_new(generation->pipeline ? _("Generating the full-size picture…")
                                                    : _("Loading the model…"));
  gtk_label_set_xalign(GTK_LABEL(window.label), 0);
  window.bar = GTK_PROGRESS_BAR(gtk_progress_bar_new());
  gtk_progress_bar_set_show_text(window.bar, TRUE);
  gtk_box_pack_start(GTK_BOX(box), window.label, FALSE, FALSE, 0);
  gtk_box_pack_start(GTK_BOX(box), GTK_WIDGET(window.bar), FALSE, FALSE, 0);
  g_signal_connect(window.dialog, "response", G_CALLBACK(on_cancel), &window);
  gtk_widget_show_all(window.dialog);

  GThread *thread = g_thread_new("lcm-generation", worker, generation);
  guint timer = g_timeout_add(PROGRESS_POLL_MS, poll_worker, &window);
  g_main_loop_run(window.loop);
  g_source_remove(timer);
  g_thread_join(thread);
  gtk_widget_destroy(window.dialog);
  g_main_loop_unref(window.loop);
}

LcmImage *lcm_generation_run(const LcmSettings *settings, LcmPipeline *pipeline, uint64_t seed,
                             const LcmImage *source, const LcmImage *mask, gboolean interactive,
                             GError **error) {
  Generation generation = {.settings = settings,
                           .pipeline = pipeline,
                           .seed = seed,
                           .source = source,
                           .mask = mask,
                           .threaded = interactive};
  gimp_progress_init(pipeline ? _("Generating (LCM)…") : _("Loading the model (LCM)…"));
  if (interactive)
    run_with_window(&generation);
  else
    execute(&generation);
  gimp_progress_end();
  if (generation.owns_pipeline && generation.pipeline) lcm_pipeline_free(generation.pipeline);
  if (generation.error) g_propagate_error(error, generation.error);
  return generation.result;
}
