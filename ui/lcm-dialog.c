/* The generation dialog: controls for LcmSettings and a live preview.
 *
 * Threading: the preview runs on one worker GThread at a time (a PreviewJob).
 * The main thread owns the widgets and the dialog's fields; a job owns the
 * pipeline while it runs and hands it back when it completes (on the main
 * thread, through an idle). The worker reaches the main thread only through
 * g_idle_add with data it owns, so no widget is touched off the main thread.
 */
#include "lcm-dialog.h"

#define GETTEXT_PACKAGE LCM_GETTEXT_DOMAIN
#include <glib/gi18n-lib.h>

#include <math.h>
#include <stdio.h>
#include <string.h>

#define PREVIEW_MAX_SIDE 256
/* Quick previews never go below this long side: smaller tells too little. */
#define PREVIEW_MIN_SIDE 96
/* From the last keystroke to the first preview picture, debounce included:
 * what live mode must feel like on a CPU with native bf16, and on any. */
#define FIRST_PICTURE_TARGET_BF16_S 0.5
#define FIRST_PICTURE_TARGET_S 1.0
#define DEFAULT_DEBOUNCE_MS 200
#define RESPONSE_RESET 1

typedef struct PreviewJob PreviewJob;
static void start_preview(LcmDialog *self);

struct _LcmDialog {
  GtkDialog parent;

  LcmImage *source, *mask; /* copies of what the host passed, or NULL */
  LcmSettings initial;     /* for Reset */
  char *test_model_path;   /* the bundled tiny model, or NULL */

  GtkWidget *mode_combo, *prompt_view, *negative_view;
  GtkWidget *model_combo, *model_info_bar, *model_info;
  GtkWidget *download_label, *download_row, *download_combo, *download_button;
  GtkWidget *download_progress_row, *download_progress, *download_cancel;
  GtkWidget *lora_box;
  GtkWidget *steps_spin, *guidance_spin, *clip_skip_spin, *strength_spin;
  GtkWidget *seed_spin, *random_seed_check;
  GtkWidget *width_spin, *height_spin, *size_preset_combo;
  GtkWidget *device_combo, *precision_combo, *output_combo;
  GtkWidget *live_check, *preview_image, *progress_bar, *stop_button, *status_label;

  guint debounce_ms, debounce_source;
  PreviewJob *job;  /* the one preview in flight, or NULL */
  gboolean pending; /* the debounce fired while a cancelled job was finishing */
  guint job_serial;
  LcmPipeline *pipeline; /* loaded for pipeline_key; NULL while a job has it */
  LcmTaesd *taesd;       /* preview decoder for the same key, or NULL */
  char *pipeline_key;
  LcmPreviewStats stats;
  /* The preview's measured speed for pipeline_key (step_s == 0: not measured
   * yet): the time of one step at speed_pixels, and what comes before the
   * first step (prompt encoding). */
  double step_s, before_first_step_s;
  int speed_pixels;
  /* Preview sizes (w << 16 | h) run since loading → the time (us) from a
   * run's start to its first picture with a new prompt, once measured on a
   * run after the first at that size (0 until then). */
  GHashTable *first_picture_us;
  char *last_prompt;             /* the prompts of the last run, to tell a new one */
  gboolean refine_next;          /* the next preview is the full-size one after a quick one */
  double first_picture_target_s; /* 0: by precision */
  GPtrArray *catalogue;          /* the download catalogue, or NULL */
  GPtrArray *found;              /* lcm_discover's list, refreshed after downloads */
  GCancellable *download;        /* the download in flight, or NULL */
  gboolean building;             /* widgets are being filled: changes are not edits */
  gboolean disposed;
};

G_DEFINE_TYPE(LcmDialog, lcm_dialog, GTK_TYPE_DIALOG)

enum {
  PREVIEW_STARTED,
  PREVIEW_UPDATED,
  PREVIEW_FINISHED,
  PREVIEW_CANCELLED,
  PREVIEW_FAILED,
  DOWNLOAD_FINISHED,
  N_SIGNALS
};
static guint signals[N_SIGNALS];

struct PreviewJob {
  LcmDialog *dialog; /* a reference, so idles never see a finalized dialog */
  guint serial;
  LcmSettings settings;
  uint64_t seed;
  int width, height;       /* preview size, multiples of 8 */
  gboolean quick;          /* smaller than the preview size, to be refined */
  LcmImage *source, *mask; /* preview-size copies, or NULL */
  /* Monotonic times (us) of the run's start and of its first and last step,
   * written by the worker, read once it has ended. */
  gint64 run_start_us, first_step_us, last_step_us;
  int steps_done;
  char *pipeline_key;
  LcmPipeline *pipeline; /* given by the dialog, or loaded by the worker */
  LcmTaesd *taesd;
  volatile gint cancel; /* the settings changed or the user stopped it */
  /* The run's cancel flag: set with `cancel`, or by a quick preview once its
   * first picture is out (the full-size one follows; its later steps would
   * be thrown away). */
  volatile gint stop;
  gboolean quick_shown;
  GThread *thread;
  guint done_source;
  gboolean fresh_pipeline; /* loaded by this job: no speed known for it yet */
  gboolean new_prompt;     /* the prompts differ from the previous run's: encoded anew */
  GdkPixbuf *result;
  gboolean result_fast; /* decoded by TAESD */
  GError *error;
};

/* ---- Small helpers ------------------------------------------------------------ */

void lcm_dialog_init_i18n(const char *locale_dir) {
  bindtextdomain(LCM_GETTEXT_DOMAIN, locale_dir ? locale_dir : LCM_LOCALEDIR);
  bind_textdomain_codeset(LCM_GETTEXT_DOMAIN, "UTF-8");
}

/* RGB floats to a pixbuf: value = data[pixel * pixel_stride + channel *
 * channel_stride] * scale + offset, clamped to [0, 1]. Covers HWC [0, 1]
 * images and planar [-1, 1] decoder output alike. */
static GdkPixbuf *pixbuf_from_image(const LcmImage *image) {
  const int width = image->width, height = image->height;
  GdkPixbuf *pixbuf = gdk_pixbuf_new(GDK_COLORSPACE_RGB, FALSE, 8, width, height);
  int rowstride = gdk_pixbuf_get_rowstride(pixbuf);
  guchar *pixels = gdk_pixbuf_get_pixels(pixbuf);
  for (int y = 0; y < height; y++)
    for (int x = 0; x < width; x++) {
      const float *pixel = image->data + ((size_t)y * width + x) * image->channels;
      for (int c = 0; c < 3; c++)
        pixels[y * rowstride + x * 3 + c] = (guchar)lrintf(CLAMP(pixel[c], 0.0f, 1.0f) * 255.0f);
    }
  return pixbuf;
}

static int round_to_8(double side) {
  return MAX(8, (int)lrint(side / 8) * 8);
}

/* The preview's size for a picture of width x height: at most max_side on
 * the long side, never larger, multiples of 8. */
static void preview_size(int width, int height, int max_side, int *out_width, int *out_height) {
  double scale = MIN(1.0, (double)max_side / MAX(width, height));
  *out_width = round_to_8(width * scale);
  *out_height = round_to_8(height * scale);
}

/* Combo boxes whose items can be insensitive (unavailable modes, devices). */
enum { CHOICE_ID, CHOICE_LABEL, CHOICE_SENSITIVE, CHOICE_COLUMNS };

static GtkWidget *choice_combo_new(void) {
  GtkListStore *store =
      gtk_list_store_new(CHOICE_COLUMNS, G_TYPE_INT, G_TYPE_STRING, G_TYPE_BOOLEAN);
  GtkWidget *combo = gtk_combo_box_new_with_model(GTK_TREE_MODEL(store));
  g_object_unref(store);
  GtkCellRenderer *cell = gtk_cell_renderer_text_new();
  gtk_cell_layout_pack_start(GTK_CELL_LAYOUT(combo), cell, TRUE);
  gtk_cell_layout_set_attributes(GTK_CELL_LAYOUT(combo), cell, "text", CHOICE_LABEL, "sensitive",
                                 CHOICE_SENSITIVE, NULL);
  return combo;
}

static void choice_combo_add(GtkWidget *combo, int id, const char *label, gboolean sensitive) {
  GtkListStore *store = GTK_LIST_STORE(gtk_combo_box_get_model(GTK_COMBO_BOX(combo)));
  gtk_list_store_insert_with_values(store, NULL, -1, CHOICE_ID, id, CHOICE_LABEL, label,
                                    CHOICE_SENSITIVE, sensitive, -1);
}

static int choice_combo_get(GtkWidget *combo) {
  GtkTreeIter iter;
  int id = 0;
  if (gtk_combo_box_get_active_iter(GTK_COMBO_BOX(combo), &iter))
    gtk_tree_model_get(gtk_combo_box_get_model(GTK_COMBO_BOX(combo)), &iter, CHOICE_ID, &id, -1);
  return id;
}

/* Selects id when it is available, else the first available item. */
static void choice_combo_set(GtkWidget *combo, int id) {
  GtkTreeModel *model = gtk_combo_box_get_model(GTK_COMBO_BOX(combo));
  GtkTreeIter iter, fallback;
  gboolean have_fallback = FALSE;
  for (gboolean ok = gtk_tree_model_get_iter_first(model, &iter); ok;
       ok = gtk_tree_model_iter_next(model, &iter)) {
    int item_id;
    gboolean sensitive;
    gtk_tree_model_get(model, &iter, CHOICE_ID, &item_id, CHOICE_SENSITIVE, &sensitive, -1);
    if (!sensitive) continue;
    if (item_id == id) {
      gtk_combo_box_set_active_iter(GTK_COMBO_BOX(combo), &iter);
      return;
    }
    if (!have_fallback) fallback = iter, have_fallback = TRUE;
  }
  if (have_fallback) gtk_combo_box_set_active_iter(GTK_COMBO_BOX(combo), &fallback);
}

static char *text_view_get_text(GtkWidget *view) {
  GtkTextBuffer *buffer = gtk_text_view_get_buffer(GTK_TEXT_VIEW(view));
  GtkTextIter start, end;
  gtk_text_buffer_get_bounds(buffer, &start, &end);
  return gtk_text_buffer_get_text(buffer, &start, &end, FALSE);
}

/* ---- Models ------------------------------------------------------------------- */

static void refresh_found(LcmDialog *self) {
  g_clear_pointer(&self->found, g_ptr_array_unref);
  self->found = lcm_discover(self->catalogue);
}

/* Shows or hides a widget a host's gtk_widget_show_all must not show. */
static void set_shown(GtkWidget *widget, gboolean shown) {
  gtk_widget_set_no_show_all(widget, FALSE);
  if (shown)
    gtk_widget_show_all(widget);
  else
    gtk_widget_hide(widget);
  gtk_widget_set_no_show_all(widget, TRUE);
}

/* Every model present, by name; the test model when there is none (or it
 * is wanted); then `wanted` is selected. */
static void fill_model_combo(LcmDialog *self, const char *wanted) {
  GtkComboBoxText *combo = GTK_COMBO_BOX_TEXT(self->model_combo);
  gtk_combo_box_text_remove_all(combo);
  guint models = 0;
  for (guint i = 0; i < self->found->len; i++) {
    const LcmFoundModel *f = self->found->pdata[i];
    if (f->kind != LCM_ASSET_MODEL || !f->path) continue;
    g_autofree char *label = f->where == LCM_FOUND_HF_CACHE
                                 ? g_strdup_printf(_("%s (Hugging Face cache)"), f->name)
                                 : g_strdup(f->name);
    gtk_combo_box_text_append(combo, f->path, label);
    models++;
  }
  if (wanted && *wanted && !gtk_combo_box_set_active_id(GTK_COMBO_BOX(combo), wanted) &&
      g_strcmp0(wanted, self->test_model_path) != 0) {
    /* A model outside the models folder, chosen earlier. */
    gtk_combo_box_text_append(combo, wanted, wanted);
  }
  if (self->test_model_path && (models == 0 || !g_strcmp0(wanted, self->test_model_path)))
    gtk_combo_box_text_append(combo, self->test_model_path,
                              _("Test model (tiny, random weights: makes only noise)"));
  if (!wanted || !*wanted || !gtk_combo_box_set_active_id(GTK_COMBO_BOX(combo), wanted))
    gtk_combo_box_set_active(GTK_COMBO_BOX(combo), 0);

  if (models == 0) {
    g_autofree char *dir = lcm_models_dir();
    g_autofree char *cache = lcm_hf_cache_dir();
    g_autofree char *message = g_strdup_printf(
        _("No model found in %s or in the Hugging Face cache (%s).\n"
          "Download LCM_Dreamshaper_v7 below, or put there a diffusers model folder or a Stable "
          "Diffusion 1.5 .safetensors checkpoint (with lcm-lora-sdv1-5 under LoRAs).\n"
          "Until then the bundled test model is used; its weights are random, so it makes only "
          "noise."),
        dir, cache);
    gtk_label_set_text(GTK_LABEL(self->model_info), message);
  }
  set_shown(self->model_info_bar, models == 0);
}

static const char *kind_label(LcmAssetKind kind) {
  return kind == LCM_ASSET_LORA    ? _("LoRA")
         : kind == LCM_ASSET_TAESD ? _("preview decoder")
                                   : _("model");
}

/* The catalogue entries not present yet, offered for download. */
static void fill_download_combo(LcmDialog *self) {
  GtkComboBoxText *combo = GTK_COMBO_BOX_TEXT(self->download_combo);
  gtk_combo_box_text_remove_all(combo);
  guint missing = 0;
  for (guint i = 0; i < self->found->len; i++) {
    const LcmFoundModel *f = self->found->pdata[i];
    if (f->where != LCM_FOUND_NOT_DOWNLOADED) continue;
    g_autofree char *label = g_strdup_printf("%s (%s)", f->name, kind_label(f->kind));
    gtk_combo_box_text_append(combo, f->name, label);
    missing++;
  }
  gtk_combo_box_set_active(GTK_COMBO_BOX(combo), 0);
  set_shown(self->download_label, missing > 0);
  set_shown(self->download_row, missing > 0);
}

/* ---- LoRA rows ---------------------------------------------------------------- */

static void schedule_preview(LcmDialog *self);

static void lora_row_remove(GtkButton *button, gpointer row) {
  (void)button;
  gtk_widget_destroy(GTK_WIDGET(row));
}

static void on_lora_row_destroy(GtkWidget *row, LcmDialog *self) {
  (void)row;
  schedule_preview(self);
}

/* The LoRAs present (by name), `path` if it is none of them, and "Other
 * file…" (id "") which asks for a file. */
static void fill_lora_combo(LcmDialog *self, GtkComboBoxText *combo, const char *path) {
  gtk_combo_box_text_remove_all(combo);
  for (guint i = 0; i < self->found->len; i++) {
    const LcmFoundModel *f = self->found->pdata[i];
    if (f->kind == LCM_ASSET_LORA && f->path) gtk_combo_box_text_append(combo, f->path, f->name);
  }
  if (path && *path && !gtk_combo_box_set_active_id(GTK_COMBO_BOX(combo), path)) {
    g_autofree char *name = g_path_get_basename(path);
    gtk_combo_box_text_append(combo, path, name);
    gtk_combo_box_set_active_id(GTK_COMBO_BOX(combo), path);
  }
  gtk_combo_box_text_append(combo, "", _("Other file…"));
}

static char *choose_lora_file(LcmDialog *self) {
  GtkWidget *chooser = gtk_file_chooser_dialog_new(
      _("Choose a LoRA"), GTK_WINDOW(self), GTK_FILE_CHOOSER_ACTION_OPEN, _("_Cancel"),
      GTK_RESPONSE_CANCEL, _("_Open"), GTK_RESPONSE_ACCEPT, NULL);
  GtkFileFilter *filter = gtk_file_filter_new();
  gtk_file_filter_set_name(filter, _("LoRA weights (*.safetensors)"));
  gtk_file_filter_add_pattern(filter, "*.safetensors");
  gtk_file_chooser_add_filter(GTK_FILE_CHOOSER(chooser), filter);
  g_autofree char *dir = lcm_models_dir();
  gtk_file_chooser_set_current_folder(GTK_FILE_CHOOSER(chooser), dir);
  char *path = gtk_dialog_run(GTK_DIALOG(chooser)) == GTK_RESPONSE_ACCEPT
                   ? gtk_file_chooser_get_filename(GTK_FILE_CHOOSER(chooser))
                   : NULL;
  gtk_widget_destroy(chooser);
  return path;
}

static void on_lora_choice_changed(GtkComboBox *combo, LcmDialog *self) {
  const char *id = gtk_combo_box_get_active_id(combo);
  if (self->building || !id) return;
  if (!*id) {
    g_autofree char *previous = g_strdup(g_object_get_data(G_OBJECT(combo), "lcm-previous"));
    g_autofree char *path = choose_lora_file(self);
    self->building = TRUE;
    fill_lora_combo(self, GTK_COMBO_BOX_TEXT(combo), path ? path : previous);
    if (!path && !previous) gtk_combo_box_set_active(combo, -1);
    self->building = FALSE;
  }
  g_object_set_data_full(G_OBJECT(combo), "lcm-previous",
                         g_strdup(gtk_combo_box_get_active_id(combo)), g_free);
  schedule_preview(self);
}

static void add_lora_row(LcmDialog *self, const char *path, double scale) {
  GtkWidget *row = gtk_box_new(GTK_ORIENTATION_HORIZONTAL, 6);
  GtkWidget *choice = gtk_combo_box_text_new();
  gboolean building = self->building;
  self->building = TRUE;
  fill_lora_combo(self, GTK_COMBO_BOX_TEXT(choice), path);
  self->building = building;
  g_object_set_data_full(G_OBJECT(choice), "lcm-previous", g_strdup(path), g_free);
  gtk_widget_set_tooltip_text(choice, _("A LoRA from the models folder or the Hugging Face cache, "
                                        "or any .safetensors LoRA file"));
  gtk_widget_set_hexpand(choice, TRUE);
  GtkWidget *spin = gtk_spin_button_new_with_range(-4, 4, 0.05);
  gtk_spin_button_set_digits(GTK_SPIN_BUTTON(spin), 2);
  gtk_spin_button_set_value(GTK_SPIN_BUTTON(spin), scale);
  gtk_widget_set_tooltip_text(spin, _("How strongly the LoRA changes the model (1 = as trained)"));
  GtkWidget *remove = gtk_button_new_from_icon_name("list-remove-symbolic", GTK_ICON_SIZE_BUTTON);
  gtk_widget_set_tooltip_text(remove, _("Remove this LoRA"));
  gtk_box_pack_start(GTK_BOX(row), choice, TRUE, TRUE, 0);
  gtk_box_pack_start(GTK_BOX(row), spin, FALSE, FALSE, 0);
  gtk_box_pack_start(GTK_BOX(row), remove, FALSE, FALSE, 0);
  g_object_set_data(G_OBJECT(row), "lcm-file", choice);
  g_object_set_data(G_OBJECT(row), "lcm-scale", spin);
  g_signal_connect(remove, "clicked", G_CALLBACK(lora_row_remove), row);
  g_signal_connect(choice, "changed", G_CALLBACK(on_lora_choice_changed), self);
  g_signal_connect_swapped(spin, "value-changed", G_CALLBACK(schedule_preview), self);
  g_signal_connect(row, "destroy", G_CALLBACK(on_lora_row_destroy), self);
  gtk_box_pack_start(GTK_BOX(self->lora_box), row, FALSE, FALSE, 0);
  gtk_widget_show_all(row);
}

static void on_add_lora(GtkButton *button, LcmDialog *self) {
  (void)button;
  add_lora_row(self, NULL, 1.0);
}

static char *loras_from_rows(LcmDialog *self) {
  GArray *entries = g_array_new(FALSE, TRUE, sizeof(LcmLoraEntry));
  GList *rows = gtk_container_get_children(GTK_CONTAINER(self->lora_box));
  for (GList *l = rows; l; l = l->next) {
    if (gtk_widget_in_destruction(l->data)) continue;
    GtkWidget *choice = g_object_get_data(l->data, "lcm-file");
    GtkWidget *spin = g_object_get_data(l->data, "lcm-scale");
    const char *path = gtk_combo_box_get_active_id(GTK_COMBO_BOX(choice));
    if (!path || !*path) continue;
    LcmLoraEntry entry = {g_strdup(path), gtk_spin_button_get_value(GTK_SPIN_BUTTON(spin))};
    g_array_append_val(entries, entry);
  }
  g_list_free(rows);
  char *loras = lcm_loras_format(entries);
  for (guint i = 0; i < entries->len; i++) g_free(g_array_index(entries, LcmLoraEntry, i).path);
  g_array_unref(entries);
  return loras;
}

/* ---- Settings <-> widgets ------------------------------------------------------ */

static void update_sensitivity(LcmDialog *self) {
  LcmMode mode = choice_combo_get(self->mode_combo);
  gtk_widget_set_sensitive(self->strength_spin, mode != LCM_MODE_TXT2IMG);
  gtk_widget_set_sensitive(self->width_spin, mode == LCM_MODE_TXT2IMG);
  gtk_widget_set_sensitive(self->height_spin, mode == LCM_MODE_TXT2IMG);
  gtk_widget_set_sensitive(self->size_preset_combo, mode == LCM_MODE_TXT2IMG);
}

/* ---- Sizes: the model family's presets ---------------------------------------- */

/* The selected model's family, from its headers; SD1.5 when it does not
 * open (the preview then says why). */
static LcmModelFamily selected_family(LcmDialog *self) {
  LcmSettings settings;
  lcm_settings_init(&settings);
  settings.model_path = g_strdup(gtk_combo_box_get_active_id(GTK_COMBO_BOX(self->model_combo)));
  LcmModelFamily family = LCM_FAMILY_SD15;
  lcm_settings_model_family(&settings, &family, NULL);
  lcm_settings_clear(&settings);
  return family;
}

/* Shows the preset matching the spins, or none. */
static void sync_size_preset(LcmDialog *self) {
  g_autofree char *id = g_strdup_printf(
      "%dx%d", round_to_8(gtk_spin_button_get_value(GTK_SPIN_BUTTON(self->width_spin))),
      round_to_8(gtk_spin_button_get_value(GTK_SPIN_BUTTON(self->height_spin))));
  gboolean building = self->building;
  self->building = TRUE;
  if (!gtk_combo_box_set_active_id(GTK_COMBO_BOX(self->size_preset_combo), id))
    gtk_combo_box_set_active(GTK_COMBO_BOX(self->size_preset_combo), -1);
  self->building = building;
}

/* The presets of the selected model's family, and a size that suits it
 * (lcm_family_fit_size: one made for the other family is replaced). */
static void fit_size_to_model(LcmDialog *self) {
  LcmModelFamily family = selected_family(self);
  GtkComboBoxText *combo = GTK_COMBO_BOX_TEXT(self->size_preset_combo);
  gboolean building = self->building;
  self->building = TRUE;
  gtk_combo_box_text_remove_all(combo);
  size_t count;
  const LcmSize *sizes = lcm_family_sizes(family, &count);
  for (size_t i = 0; i < count; i++) {
    g_autofree char *id = g_strdup_printf("%dx%d", sizes[i].width, sizes[i].height);
    g_autofree char *label = g_strdup_printf("%d × %d", sizes[i].width, sizes[i].height);
    gtk_combo_box_text_append(combo, id, label);
  }
  int width = round_to_8(gtk_spin_button_get_value(GTK_SPIN_BUTTON(self->width_spin)));
  int height = round_to_8(gtk_spin_button_get_value(GTK_SPIN_BUTTON(self->height_spin)));
  lcm_family_fit_size(family, &width, &height);
  gtk_spin_button_set_value(GTK_SPIN_BUTTON(self->width_spin), width);
  gtk_spin_button_set_value(GTK_SPIN_BUTTON(self->height_spin), height);
  self->building = building;
  sync_size_preset(self);
}

static void on_size_preset_changed(GtkComboBox *combo, LcmDialog *self) {
  int width, height;
  const char *id = gtk_combo_box_get_active_id(combo);
  if (self->building || !id || sscanf(id, "%dx%d", &width, &height) != 2) return;
  gtk_spin_button_set_value(GTK_SPIN_BUTTON(self->width_spin), width);
  gtk_spin_button_set_value(GTK_SPIN_BUTTON(self->height_spin), height);
}

static void on_model_changed(LcmDialog *self) {
  if (!self->building) fit_size_to_model(self);
}

static void destroy_widget(GtkWidget *widget, gpointer data) {
  (void)data;
  gtk_widget_destroy(widget);
}

static void apply_settings(LcmDialog *self, const LcmSettings *s) {
  self->building = TRUE;
  choice_combo_set(self->mode_combo, s->mode);
  gtk_text_buffer_set_text(gtk_text_view_get_buffer(GTK_TEXT_VIEW(self->prompt_view)),
                           s->prompt ? s->prompt : "", -1);
  gtk_text_buffer_set_text(gtk_text_view_get_buffer(GTK_TEXT_VIEW(self->negative_view)),
                           s->negative_prompt ? s->negative_prompt : "", -1);
  refresh_found(self);
  fill_model_combo(self, s->model_path);
  fill_download_combo(self);
  gtk_container_foreach(GTK_CONTAINER(self->lora_box), destroy_widget, NULL);
  g_autoptr(GArray) loras = lcm_loras_parse(s->loras, NULL);
  for (guint i = 0; loras && i < loras->len; i++) {
    const LcmLoraEntry *entry = &g_array_index(loras, LcmLoraEntry, i);
    add_lora_row(self, entry->path, entry->scale);
  }
  gtk_spin_button_set_value(GTK_SPIN_BUTTON(self->steps_spin), s->steps);
  gtk_spin_button_set_value(GTK_SPIN_BUTTON(self->guidance_spin), MAX(0, s->guidance));
  gtk_spin_button_set_value(GTK_SPIN_BUTTON(self->clip_skip_spin), s->clip_skip);
  gtk_spin_button_set_value(GTK_SPIN_BUTTON(self->strength_spin), s->strength);
  gtk_toggle_button_set_active(GTK_TOGGLE_BUTTON(self->random_seed_check), s->seed < 0);
  gtk_spin_button_set_value(GTK_SPIN_BUTTON(self->seed_spin),
                            s->seed < 0 ? g_random_int() : (double)(s->seed & 0xffffffffu));
  gtk_spin_button_set_value(GTK_SPIN_BUTTON(self->width_spin), s->width);
  gtk_spin_button_set_value(GTK_SPIN_BUTTON(self->height_spin), s->height);
  fit_size_to_model(self);
  choice_combo_set(self->device_combo, s->device);
  choice_combo_set(self->precision_combo, s->precision);
  choice_combo_set(self->output_combo, s->output);
  update_sensitivity(self);
  self->building = FALSE;
}

void lcm_dialog_get_settings(LcmDialog *self, LcmSettings *out) {
  g_return_if_fail(LCM_IS_DIALOG(self));
  lcm_settings_clear(out);
  out->mode = choice_combo_get(self->mode_combo);
  out->prompt = text_view_get_text(self->prompt_view);
  out->negative_prompt = text_view_get_text(self->negative_view);
  out->model_path = g_strdup(gtk_combo_box_get_active_id(GTK_COMBO_BOX(self->model_combo)));
  out->loras = loras_from_rows(self);
  out->steps = gtk_spin_button_get_value_as_int(GTK_SPIN_BUTTON(self->steps_spin));
  out->guidance = gtk_spin_button_get_value(GTK_SPIN_BUTTON(self->guidance_spin));
  out->clip_skip = gtk_spin_button_get_value_as_int(GTK_SPIN_BUTTON(self->clip_skip_spin));
  out->strength = gtk_spin_button_get_value(GTK_SPIN_BUTTON(self->strength_spin));
  out->seed = gtk_toggle_button_get_active(GTK_TOGGLE_BUTTON(self->random_seed_check))
                  ? -1
                  : (gint64)gtk_spin_button_get_value(GTK_SPIN_BUTTON(self->seed_spin));
  out->width = round_to_8(gtk_spin_button_get_value(GTK_SPIN_BUTTON(self->width_spin)));
  out->height = round_to_8(gtk_spin_button_get_value(GTK_SPIN_BUTTON(self->height_spin)));
  out->device = choice_combo_get(self->device_combo);
  out->precision = choice_combo_get(self->precision_combo);
  out->output = choice_combo_get(self->output_combo);
}

/* ---- The preview worker ------------------------------------------------------- */

typedef struct {
  LcmDialog *dialog;
  guint serial;
  int step, steps;
  GdkPixbuf *pixbuf; /* or NULL */
} PreviewUpdate;

static void show_preview_pixbuf(LcmDialog *self, GdkPixbuf *pixbuf) {
  int width = gdk_pixbuf_get_width(pixbuf), height = gdk_pixbuf_get_height(pixbuf);
  double scale = (double)PREVIEW_MAX_SIDE / MAX(width, height);
  g_autoptr(GdkPixbuf) shown = gdk_pixbuf_scale_simple(
      pixbuf, MAX(1, (int)lrint(width * scale)), MAX(1, (int)lrint(height * scale)),
      scale > 1 ? GDK_INTERP_NEAREST : GDK_INTERP_BILINEAR);
  gtk_image_set_from_pixbuf(GTK_IMAGE(self->preview_image), shown);
}

static gboolean preview_update_idle(gpointer data) {
  PreviewUpdate *update = data;
  LcmDialog *self = update->dialog;
  if (!self->disposed && self->job && self->job->serial == update->serial &&
      !g_atomic_int_get(&self->job->cancel)) {
    g_autofree char *text = g_strdup_printf(_("Step %d of %d"), update->step + 1, update->steps);
    gtk_progress_bar_set_text(GTK_PROGRESS_BAR(self->progress_bar), text);
    gtk_progress_bar_set_fraction(GTK_PROGRESS_BAR(self->progress_bar),
                                  (double)(update->step + 1) / update->steps);
    if (update->pixbuf) {
      show_preview_pixbuf(self, update->pixbuf);
      self->stats.updated++;
      g_signal_emit(self, signals[PREVIEW_UPDATED], 0);
    }
  }
  g_clear_object(&update->pixbuf);
  g_object_unref(self);
  g_free(update);
  return G_SOURCE_REMOVE;
}

/* Latents as a picture through TAESD (a few percent of the VAE's time), or
 * NULL when there is none for latents of this kind. */
static LcmImage *taesd_picture(PreviewJob *job, const float *latents, int w, int h, int channels) {
  if (!job->taesd || lcm_taesd_latent_channels(job->taesd) != channels) return NULL;
  g_autofree float *planes = g_new(float, (size_t)3 * 64 * w * h);
  if (!lcm_taesd_decode(job->taesd, latents, 1, h, w, planes, NULL)) return NULL;
  return lcm_image_from_decoded(planes, 8 * w, 8 * h);
}

/* A step's `denoised` as a picture: TAESD, else the linear latent-to-RGB
 * approximation; a full VAE decode per step would cost more than the step
 * on a CPU, so it is the last resort (latents of another kind). */
static GdkPixbuf *decode_denoised(PreviewJob *job, const LcmProgress *progress) {
  const int w = progress->latent_width, h = progress->latent_height;
  LcmImage *image = taesd_picture(job, progress->denoised, w, h, progress->latent_channels);
  if (!image)
    image = lcm_image_from_latents_approx(progress->denoised, progress->latent_channels, w, h);
  if (!image) image = lcm_pipeline_decode_latents(job->pipeline, progress->denoised, w, h, NULL);
  GdkPixbuf *pixbuf = image ? pixbuf_from_image(image) : NULL;
  lcm_image_free(image);
  return pixbuf;
}

static void preview_progress(const LcmProgress *progress, gpointer data) {
  PreviewJob *job = data;
  job->last_step_us = g_get_monotonic_time();
  if (progress->step == 0) job->first_step_us = job->last_step_us;
  job->steps_done = progress->step + 1;
  if (g_atomic_int_get(&job->cancel)) return;
  PreviewUpdate *update = g_new0(PreviewUpdate, 1);
  update->dialog = g_object_ref(job->dialog);
  update->serial = job->serial;
  update->step = progress->step;
  update->steps = progress->steps;
  /* The last step's prediction is the result, which the worker decodes. */
  if (progress->step + 1 < progress->steps) update->pixbuf = decode_denoised(job, progress);
  const gboolean has_picture = update->pixbuf != NULL;
  g_idle_add(preview_update_idle, update); /* frees update, maybe before the next line */
  if (job->quick && has_picture) {
    job->quick_shown = TRUE;
    g_atomic_int_set(&job->stop, 1);
  }
}

/* The preview decoder of the model's family (TAESD for SD1.5, TAESDXL for
 * SDXL: the same network, with weights for other latents). */
static LcmTaesd *load_preview_taesd(const LcmSettings *settings) {
  LcmModelFamily family;
  if (!lcm_settings_model_family(settings, &family, NULL)) return NULL;
  g_autofree char *path = lcm_find_taesd(settings->model_path, family);
  if (!path) return NULL;
  LcmTaesd *taesd = lcm_taesd_load(path, settings->precision, NULL);
  if (taesd && !lcm_taesd_has_decoder(taesd)) g_clear_pointer(&taesd, lcm_taesd_free);
  return taesd;
}

static gboolean preview_done_idle(gpointer data);

static gpointer preview_worker(gpointer data) {
  PreviewJob *job = data;
  if (!job->pipeline) {
    job->pipeline = lcm_settings_load_pipeline(&job->settings, NULL, &job->error);
    if (job->pipeline) job->taesd = load_preview_taesd(&job->settings);
  }
  if (job->pipeline) {
    LcmPipelineParams params;
    lcm_pipeline_params_init(&params);
    lcm_settings_to_params(&job->settings, job->pipeline, job->seed, &params);
    params.width = job->width;
    params.height = job->height;
    params.image = job->source;
    params.mask = job->mask;
    params.progress = preview_progress;
    params.progress_data = job;
    params.cancel = &job->stop;
    job->run_start_us = g_get_monotonic_time();
    int w = 0, h = 0;
    float *latents = lcm_pipeline_run_latents(job->pipeline, &params, &w, &h, &job->error);
    LcmImage *image = NULL;
    /* The result through TAESD too when the model has it: no full decode. */
    if (latents && !g_atomic_int_get(&job->stop)) {
      image = taesd_picture(job, latents, w, h, lcm_pipeline_latent_channels(job->pipeline));
      job->result_fast = image != NULL;
      if (!image) image = lcm_pipeline_decode_latents(job->pipeline, latents, w, h, &job->error);
    }
    g_free(latents);
    if (image && job->settings.mode == LCM_MODE_INPAINT)
      lcm_image_composite(image, job->source, job->mask, NULL);
    if (image) job->result = pixbuf_from_image(image);
    lcm_image_free(image);
  }
  job->done_source = g_idle_add(preview_done_idle, job);
  return NULL;
}

static void free_pipeline(LcmDialog *self) {
  g_clear_pointer(&self->pipeline, lcm_pipeline_free);
  g_clear_pointer(&self->taesd, lcm_taesd_free);
  g_clear_pointer(&self->pipeline_key, g_free);
}

static void set_status(LcmDialog *self, const char *text) {
  gtk_label_set_text(GTK_LABEL(self->status_label), text ? text : "");
}

/* Learns the preview's speed from a run (cancelled ones too). The step time
 * comes from the later steps of a run with two or more, which never include
 * the one-off work of a new size (primitives, weight layouts); the time to
 * the first picture, per size, only from a size run before, for that reason,
 * and with a new prompt (its encoding included), as when the user types. */
static void learn_preview_speed(LcmDialog *self, const PreviewJob *job) {
  if (job->fresh_pipeline) {
    self->step_s = self->before_first_step_s = 0;
    g_hash_table_remove_all(self->first_picture_us);
  }
  if (job->steps_done < 1 || !job->run_start_us) return;
  const gint64 first_us = job->first_step_us - job->run_start_us;
  gpointer size = GINT_TO_POINTER(job->width << 16 | job->height);
  const gboolean size_run_before = g_hash_table_contains(self->first_picture_us, size);
  if (!size_run_before)
    g_hash_table_insert(self->first_picture_us, size, GINT_TO_POINTER(0));
  else if (job->new_prompt)
    g_hash_table_insert(self->first_picture_us, size, GINT_TO_POINTER((int)first_us));
  if (job->steps_done < 2) return;
  self->step_s = (job->last_step_us - job->first_step_us) / 1e6 / (job->steps_done - 1);
  self->speed_pixels = job->width * job->height;
  if (size_run_before) self->before_first_step_s = MAX(0.0, first_us / 1e6 - self->step_s);
}

/* The long side of the next preview: PREVIEW_MAX_SIDE, or, when the measured
 * speed says its first picture would come later than the target after the
 * last keystroke (debounce included), the largest of a few smaller sides
 * that makes it (few, because each new size costs a first call). A size's
 * own measured time to its first picture counts where known: a step's time
 * does not shrink in proportion to the pixels at small sizes (it reads all
 * the weights whatever the size). A quick preview is refined at full size
 * once its first picture is shown. */
static int preview_side(LcmDialog *self, const LcmSettings *settings, int width, int height) {
  static const int sides[] = {PREVIEW_MAX_SIDE, 192, 128, PREVIEW_MIN_SIDE};
  if (self->refine_next || self->step_s <= 0) return PREVIEW_MAX_SIDE;
  gboolean bf16 = lcm_precision_resolve(settings->precision) == LCM_PRECISION_BF16;
  double target = self->first_picture_target_s > 0 ? self->first_picture_target_s
                  : bf16                           ? FIRST_PICTURE_TARGET_BF16_S
                                                   : FIRST_PICTURE_TARGET_S;
  double budget = target - self->debounce_ms / 1000.0;
  if (budget <= 0) return PREVIEW_MAX_SIDE; /* the debounce alone misses it */
  for (guint i = 0; i < G_N_ELEMENTS(sides); i++) {
    int w, h;
    preview_size(width, height, sides[i], &w, &h);
    const int measured_us =
        GPOINTER_TO_INT(g_hash_table_lookup(self->first_picture_us, GINT_TO_POINTER(w << 16 | h)));
    double estimate = measured_us > 0
                          ? measured_us / 1e6
                          : self->before_first_step_s + self->step_s * w * h / self->speed_pixels;
    if (estimate <= budget) return sides[i];
  }
  return PREVIEW_MIN_SIDE;
}

/* Runs on the main thread once the worker is done (or joined). */
static void complete_job(LcmDialog *self, PreviewJob *job) {
  if (job->thread) g_thread_join(job->thread);
  self->job = NULL;
  free_pipeline(self);
  self->pipeline = g_steal_pointer(&job->pipeline);
  self->taesd = g_steal_pointer(&job->taesd);
  self->pipeline_key = g_steal_pointer(&job->pipeline_key);
  if (self->disposed) free_pipeline(self);
  if (self->pipeline) learn_preview_speed(self, job);
  /* A quick preview that showed its first picture is done, not cancelled. */
  const gboolean cancelled =
      g_atomic_int_get(&job->cancel) ||
      (!job->quick_shown && g_error_matches(job->error, LCM_ERROR, LCM_ERROR_CANCELLED));
  if (job->quick_shown && !cancelled) g_clear_error(&job->error);
  /* G_MESSAGES_DEBUG=gimp-lcm traces the previews (lcm-preview-bench). */
  if (job->run_start_us)
    g_debug("preview %u %dx%d: %s; first step after %.3f s, %d steps in %.3f s", job->serial,
            job->width, job->height,
            cancelled                         ? "cancelled"
            : job->result || job->quick_shown ? "finished"
                                              : "failed",
            job->first_step_us ? (job->first_step_us - job->run_start_us) / 1e6 : -1.0,
            job->steps_done,
            job->last_step_us ? (job->last_step_us - job->run_start_us) / 1e6 : -1.0);

  guint signal;
  if (cancelled) {
    self->stats.cancelled++;
    signal = PREVIEW_CANCELLED;
  } else if (job->result || job->quick_shown) {
    self->stats.finished++;
    self->stats.fast_decoded += job->result_fast;
    signal = PREVIEW_FINISHED;
  } else {
    self->stats.failed++;
    signal = PREVIEW_FAILED;
  }
  if (!self->disposed) {
    GtkProgressBar *bar = GTK_PROGRESS_BAR(self->progress_bar);
    gtk_widget_set_sensitive(self->stop_button, FALSE);
    if (signal == PREVIEW_FINISHED) {
      if (job->result) {
        show_preview_pixbuf(self, job->result);
        self->stats.updated++;
        g_signal_emit(self, signals[PREVIEW_UPDATED], 0);
      }
      gtk_progress_bar_set_fraction(bar, 1);
      gboolean test_model = !g_strcmp0(job->settings.model_path, self->test_model_path);
      g_autofree char *quick = NULL;
      if (job->quick) {
        quick = g_strdup_printf(_("Quick %d×%d preview while you type: this computer is too slow "
                                  "for a full-size one. Refining…"),
                                job->width, job->height);
        /* The user has paused: the full-size preview follows at once. */
        self->refine_next = !self->pending && !self->debounce_source;
        self->pending = self->pending || self->refine_next;
      }
      gtk_progress_bar_set_text(bar, job->quick ? _("Quick preview ready") : _("Preview ready"));
      set_status(self, quick        ? quick
                       : test_model ? _("Test model: random weights, so the preview is noise.")
                                    : NULL);
    } else if (signal == PREVIEW_FAILED) {
      gtk_progress_bar_set_fraction(bar, 0);
      gtk_progress_bar_set_text(bar, _("Preview failed"));
      set_status(self, job->error ? job->error->message : NULL);
    } else {
      gtk_progress_bar_set_text(bar, _("Preview stopped"));
    }
    g_signal_emit(self, signals[signal], 0);
  }

  lcm_settings_clear(&job->settings);
  lcm_image_free(job->source);
  lcm_image_free(job->mask);
  g_clear_object(&job->result);
  g_clear_error(&job->error);
  gboolean start_pending = self->pending && !self->disposed;
  self->pending = FALSE;
  g_free(job);
  if (start_pending) start_preview(self);
  g_object_unref(self);
}

static gboolean preview_done_idle(gpointer data) {
  PreviewJob *job = data;
  complete_job(job->dialog, job);
  return G_SOURCE_REMOVE;
}

static void cancel_job(PreviewJob *job) {
  g_atomic_int_set(&job->cancel, 1);
  g_atomic_int_set(&job->stop, 1);
}

/* Cancels the job in flight and completes it now, without the main loop. */
static void stop_job_now(LcmDialog *self) {
  if (self->debounce_source) g_source_remove(self->debounce_source);
  self->debounce_source = 0;
  self->pending = FALSE;
  PreviewJob *job = self->job;
  if (!job) return;
  cancel_job(job);
  g_thread_join(job->thread);
  job->thread = NULL;
  g_source_remove(job->done_source); /* the worker added it before it ended */
  complete_job(self, job);
}

static void start_preview(LcmDialog *self) {
  PreviewJob *job = g_new0(PreviewJob, 1);
  job->dialog = g_object_ref(self);
  job->serial = ++self->job_serial;
  lcm_settings_init(&job->settings);
  lcm_dialog_get_settings(self, &job->settings);
  /* The preview keeps the shown seed even when each final run draws anew. */
  job->seed = (uint64_t)gtk_spin_button_get_value(GTK_SPIN_BUTTON(self->seed_spin));
  gboolean from_source = job->settings.mode != LCM_MODE_TXT2IMG && self->source;
  int width = from_source ? self->source->width : job->settings.width;
  int height = from_source ? self->source->height : job->settings.height;
  job->pipeline_key = lcm_settings_pipeline_key(&job->settings);
  if (self->pipeline_key && !strcmp(self->pipeline_key, job->pipeline_key)) {
    job->pipeline = g_steal_pointer(&self->pipeline);
    job->taesd = g_steal_pointer(&self->taesd);
  }
  job->fresh_pipeline = !job->pipeline;
  g_autofree char *prompts =
      g_strconcat(job->settings.prompt ? job->settings.prompt : "", "\n",
                  job->settings.negative_prompt ? job->settings.negative_prompt : "", NULL);
  job->new_prompt = g_strcmp0(prompts, self->last_prompt) != 0;
  g_free(self->last_prompt);
  self->last_prompt = g_steal_pointer(&prompts);
  int full_width, full_height;
  preview_size(width, height, PREVIEW_MAX_SIDE, &full_width, &full_height);
  int side = job->pipeline ? preview_side(self, &job->settings, width, height) : PREVIEW_MAX_SIDE;
  preview_size(width, height, side, &job->width, &job->height);
  job->quick = job->width != full_width || job->height != full_height;
  g_debug("preview %u %dx%d starts%s (measured step %.3f s at %d pixels, %.3f s before it)",
          job->serial, job->width, job->height, self->refine_next ? ", refining" : "", self->step_s,
          self->speed_pixels, self->before_first_step_s);
  self->refine_next = FALSE;
  if (from_source) {
    job->source = lcm_image_resize(self->source, job->width, job->height);
    if (self->mask) job->mask = lcm_image_resize(self->mask, job->width, job->height);
  }
  free_pipeline(self);
  self->job = job;

  GtkProgressBar *bar = GTK_PROGRESS_BAR(self->progress_bar);
  gtk_progress_bar_set_fraction(bar, 0);
  gtk_progress_bar_set_text(bar, !job->pipeline ? _("Loading model…")
                                 : job->quick   ? _("Quick preview…")
                                                : _("Generating preview…"));
  gtk_widget_set_sensitive(self->stop_button, TRUE);
  set_status(self, NULL);
  self->stats.started++;
  self->stats.quick += job->quick;
  /* Emitted before the worker starts, so a handler that changes a setting
   * reliably cancels this very run. */
  g_signal_emit(self, signals[PREVIEW_STARTED], 0);
  job->thread = g_thread_new("lcm-preview", preview_worker, job);
}

static gboolean on_debounce(gpointer data) {
  LcmDialog *self = data;
  self->debounce_source = 0;
  if (self->job)
    self->pending = TRUE; /* starts when the cancelled run has stopped */
  else
    start_preview(self);
  return G_SOURCE_REMOVE;
}

/* Every edit: the run in flight is stale now; a new one starts once the
 * user has paused for debounce_ms. */
static void schedule_preview(LcmDialog *self) {
  if (self->building || self->disposed) return;
  if (self->job) cancel_job(self->job);
  self->pending = FALSE;
  if (self->debounce_source) g_source_remove(self->debounce_source);
  self->debounce_source = 0;
  if (gtk_toggle_button_get_active(GTK_TOGGLE_BUTTON(self->live_check)))
    self->debounce_source = g_timeout_add(self->debounce_ms, on_debounce, self);
}

static void on_setting_changed(LcmDialog *self) {
  if (self->building) return;
  update_sensitivity(self);
  schedule_preview(self);
}

static void on_stop_clicked(GtkButton *button, LcmDialog *self) {
  (void)button;
  if (self->debounce_source) g_source_remove(self->debounce_source);
  self->debounce_source = 0;
  self->pending = FALSE;
  if (self->job) cancel_job(self->job);
}

static void on_dice_clicked(GtkButton *button, LcmDialog *self) {
  (void)button;
  gtk_spin_button_set_value(GTK_SPIN_BUTTON(self->seed_spin), g_random_int());
}

/* Spin buttons where 0 means a word (guidance "Auto", CLIP skip "Off"):
 * data is the word's untranslated text, typed in either language. */
static gboolean on_zero_word_output(GtkSpinButton *spin, gpointer word) {
  if (gtk_spin_button_get_value(spin) != 0) return FALSE;
  gtk_entry_set_text(GTK_ENTRY(spin), _(word));
  return TRUE;
}

static gint on_zero_word_input(GtkSpinButton *spin, gdouble *value, gpointer word) {
  const char *text = gtk_entry_get_text(GTK_ENTRY(spin));
  if (g_ascii_strcasecmp(text, _(word)) && g_ascii_strcasecmp(text, word)) return FALSE;
  *value = 0;
  return TRUE;
}

static void show_zero_as_word(GtkWidget *spin, const char *word) {
  g_signal_connect(spin, "output", G_CALLBACK(on_zero_word_output), (gpointer)word);
  g_signal_connect(spin, "input", G_CALLBACK(on_zero_word_input), (gpointer)word);
}

/* ---- Downloads ----------------------------------------------------------------
 * A catalogue entry downloads on a GTask thread; progress reaches the main
 * thread through idles holding a reference to the dialog. */

typedef struct {
  LcmDialog *dialog;
  char *text;
  double fraction;
} DownloadUpdate;

static gboolean download_update_idle(gpointer data) {
  DownloadUpdate *update = data;
  LcmDialog *self = update->dialog;
  if (!self->disposed && self->download) {
    GtkProgressBar *bar = GTK_PROGRESS_BAR(self->download_progress);
    gtk_progress_bar_set_text(bar, update->text);
    gtk_progress_bar_set_fraction(bar, update->fraction);
  }
  g_free(update->text);
  g_object_unref(self);
  g_free(update);
  return G_SOURCE_REMOVE;
}

/* On the download thread. */
static void on_download_progress(const LcmDownloadProgress *progress, gpointer data) {
  DownloadUpdate *update = g_new0(DownloadUpdate, 1);
  update->dialog = g_object_ref(data);
  update->text = lcm_download_progress_text(progress);
  update->fraction = progress->total ? (double)progress->done / (double)progress->total : 0;
  g_idle_add(download_update_idle, update);
}

static void download_thread(GTask *task, gpointer source, gpointer entry,
                            GCancellable *cancellable) {
  GError *error = NULL;
  if (lcm_catalogue_download(entry, on_download_progress, source, cancellable, &error))
    g_task_return_boolean(task, TRUE);
  else
    g_task_return_error(task, error);
}

/* The lists after a download: the new model selected, a new LoRA added as
 * a row, a new TAESD used by the next preview. */
static void show_downloaded(LcmDialog *self, const LcmCatalogueEntry *entry) {
  g_autofree char *path = lcm_catalogue_locate(entry);
  g_autofree char *model = g_strdup(gtk_combo_box_get_active_id(GTK_COMBO_BOX(self->model_combo)));
  self->building = TRUE;
  refresh_found(self);
  fill_model_combo(self, entry->kind == LCM_ASSET_MODEL ? path : model);
  fill_download_combo(self);
  GList *rows = gtk_container_get_children(GTK_CONTAINER(self->lora_box));
  for (GList *l = rows; l; l = l->next) {
    GtkComboBox *choice = g_object_get_data(l->data, "lcm-file");
    g_autofree char *chosen = g_strdup(gtk_combo_box_get_active_id(choice));
    fill_lora_combo(self, GTK_COMBO_BOX_TEXT(choice), chosen);
  }
  g_list_free(rows);
  if (entry->kind == LCM_ASSET_LORA) add_lora_row(self, path, 1.0);
  self->building = FALSE;
  if (entry->kind == LCM_ASSET_MODEL) fit_size_to_model(self);
  if (entry->kind == LCM_ASSET_TAESD && !self->job) free_pipeline(self);
  g_autofree char *status = g_strdup_printf(_("%s downloaded."), entry->name);
  set_status(self, status);
  schedule_preview(self);
}

static void on_download_done(GObject *source, GAsyncResult *result, gpointer entry) {
  LcmDialog *self = LCM_DIALOG(source);
  GError *error = NULL;
  gboolean ok = g_task_propagate_boolean(G_TASK(result), &error);
  g_clear_object(&self->download);
  if (!self->disposed) {
    set_shown(self->download_progress_row, FALSE);
    gtk_widget_set_sensitive(self->download_row, TRUE);
    if (ok)
      show_downloaded(self, entry);
    else
      set_status(self, g_error_matches(error, LCM_ERROR, LCM_ERROR_CANCELLED) ||
                               g_error_matches(error, G_IO_ERROR, G_IO_ERROR_CANCELLED)
                           ? _("Download cancelled.")
                           : error->message);
    g_signal_emit(self, signals[DOWNLOAD_FINISHED], 0, ok);
  }
  g_clear_error(&error);
}

static void on_download_clicked(GtkButton *button, LcmDialog *self) {
  (void)button;
  const char *name = gtk_combo_box_get_active_id(GTK_COMBO_BOX(self->download_combo));
  const LcmCatalogueEntry *entry = lcm_catalogue_find(self->catalogue, name);
  if (!entry || self->download) return;
  self->download = g_cancellable_new();
  GTask *task = g_task_new(self, self->download, on_download_done, (gpointer)entry);
  g_task_set_task_data(task, (gpointer)entry, NULL);
  GtkProgressBar *bar = GTK_PROGRESS_BAR(self->download_progress);
  g_autofree char *text = g_strdup_printf(_("Connecting to %s…"), "Hugging Face");
  gtk_progress_bar_set_text(bar, text);
  gtk_progress_bar_set_fraction(bar, 0);
  set_shown(self->download_progress_row, TRUE);
  gtk_widget_set_sensitive(self->download_row, FALSE);
  set_status(self, NULL);
  g_task_run_in_thread(task, download_thread);
  g_object_unref(task);
}

static void on_download_cancel(GtkButton *button, LcmDialog *self) {
  (void)button;
  if (self->download) g_cancellable_cancel(self->download);
}

/* ---- Construction ------------------------------------------------------------- */

static GtkWidget *add_row(GtkWidget *grid, int *row, const char *mnemonic, GtkWidget *control) {
  GtkWidget *label = gtk_label_new_with_mnemonic(mnemonic);
  gtk_label_set_xalign(GTK_LABEL(label), 0);
  gtk_label_set_mnemonic_widget(GTK_LABEL(label), control);
  gtk_grid_attach(GTK_GRID(grid), label, 0, *row, 1, 1);
  gtk_grid_attach(GTK_GRID(grid), control, 1, *row, 1, 1);
  gtk_widget_set_hexpand(control, TRUE);
  (*row)++;
  return label;
}

static GtkWidget *prompt_view_new(LcmDialog *self, GtkWidget **scrolled) {
  GtkWidget *view = gtk_text_view_new();
  gtk_text_view_set_wrap_mode(GTK_TEXT_VIEW(view), GTK_WRAP_WORD_CHAR);
  gtk_text_view_set_left_margin(GTK_TEXT_VIEW(view), 4);
  gtk_text_view_set_right_margin(GTK_TEXT_VIEW(view), 4);
  gtk_text_view_set_accepts_tab(GTK_TEXT_VIEW(view), FALSE);
  *scrolled = gtk_scrolled_window_new(NULL, NULL);
  gtk_scrolled_window_set_policy(GTK_SCROLLED_WINDOW(*scrolled), GTK_POLICY_NEVER,
                                 GTK_POLICY_AUTOMATIC);
  gtk_scrolled_window_set_shadow_type(GTK_SCROLLED_WINDOW(*scrolled), GTK_SHADOW_IN);
  gtk_widget_set_size_request(*scrolled, -1, 64);
  gtk_widget_set_hexpand(*scrolled, TRUE);
  gtk_container_add(GTK_CONTAINER(*scrolled), view);
  g_signal_connect_swapped(gtk_text_view_get_buffer(GTK_TEXT_VIEW(view)), "changed",
                           G_CALLBACK(on_setting_changed), self);
  return view;
}

static GtkWidget *spin_new(LcmDialog *self, double min, double max, double step, int digits) {
  GtkWidget *spin = gtk_spin_button_new_with_range(min, max, step);
  gtk_spin_button_set_digits(GTK_SPIN_BUTTON(spin), digits);
  gtk_spin_button_set_numeric(GTK_SPIN_BUTTON(spin), FALSE);
  g_signal_connect_swapped(spin, "value-changed", G_CALLBACK(on_setting_changed), self);
  return spin;
}

static GtkWidget *section_label(const char *text) {
  g_autofree char *markup = g_markup_printf_escaped("<b>%s</b>", text);
  GtkWidget *label = gtk_label_new(NULL);
  gtk_label_set_markup(GTK_LABEL(label), markup);
  gtk_label_set_xalign(GTK_LABEL(label), 0);
  return label;
}

static GtkWidget *build_preview_column(LcmDialog *self) {
  GtkWidget *box = gtk_box_new(GTK_ORIENTATION_VERTICAL, 6);
  gtk_box_pack_start(GTK_BOX(box), section_label(_("Preview")), FALSE, FALSE, 0);
  GtkWidget *frame = gtk_frame_new(NULL);
  gtk_frame_set_shadow_type(GTK_FRAME(frame), GTK_SHADOW_IN);
  self->preview_image = gtk_image_new();
  gtk_widget_set_size_request(self->preview_image, PREVIEW_MAX_SIDE, PREVIEW_MAX_SIDE);
  gtk_container_add(GTK_CONTAINER(frame), self->preview_image);
  gtk_widget_set_halign(frame, GTK_ALIGN_CENTER);
  gtk_box_pack_start(GTK_BOX(box), frame, FALSE, FALSE, 0);
  if (self->source) {
    g_autoptr(GdkPixbuf) pixbuf = pixbuf_from_image(self->source);
    show_preview_pixbuf(self, pixbuf);
  }

  GtkWidget *progress_row = gtk_box_new(GTK_ORIENTATION_HORIZONTAL, 6);
  self->progress_bar = gtk_progress_bar_new();
  gtk_progress_bar_set_show_text(GTK_PROGRESS_BAR(self->progress_bar), TRUE);
  gtk_progress_bar_set_text(GTK_PROGRESS_BAR(self->progress_bar), "");
  gtk_widget_set_valign(self->progress_bar, GTK_ALIGN_CENTER);
  self->stop_button = gtk_button_new_from_icon_name("process-stop-symbolic", GTK_ICON_SIZE_BUTTON);
  gtk_widget_set_tooltip_text(self->stop_button, _("Stop the preview"));
  gtk_widget_set_sensitive(self->stop_button, FALSE);
  g_signal_connect(self->stop_button, "clicked", G_CALLBACK(on_stop_clicked), self);
  gtk_box_pack_start(GTK_BOX(progress_row), self->progress_bar, TRUE, TRUE, 0);
  gtk_box_pack_start(GTK_BOX(progress_row), self->stop_button, FALSE, FALSE, 0);
  gtk_box_pack_start(GTK_BOX(box), progress_row, FALSE, FALSE, 0);

  self->live_check = gtk_check_button_new_with_mnemonic(_("_Live preview"));
  gtk_toggle_button_set_active(GTK_TOGGLE_BUTTON(self->live_check), TRUE);
  gtk_widget_set_tooltip_text(self->live_check,
                              _("Make a small preview whenever a setting changes"));
  g_signal_connect_swapped(self->live_check, "toggled", G_CALLBACK(schedule_preview), self);
  gtk_box_pack_start(GTK_BOX(box), self->live_check, FALSE, FALSE, 0);

  self->status_label = gtk_label_new(NULL);
  gtk_label_set_line_wrap(GTK_LABEL(self->status_label), TRUE);
  gtk_label_set_max_width_chars(GTK_LABEL(self->status_label), 36);
  gtk_label_set_xalign(GTK_LABEL(self->status_label), 0);
  gtk_label_set_selectable(GTK_LABEL(self->status_label), TRUE);
  gtk_box_pack_start(GTK_BOX(box), self->status_label, FALSE, FALSE, 0);
  return box;
}

static GtkWidget *build_settings_column(LcmDialog *self) {
  GtkWidget *grid = gtk_grid_new();
  gtk_grid_set_row_spacing(GTK_GRID(grid), 6);
  gtk_grid_set_column_spacing(GTK_GRID(grid), 12);
  int row = 0;

  GtkWidget *info_bar = self->model_info_bar = gtk_info_bar_new();
  gtk_info_bar_set_message_type(GTK_INFO_BAR(info_bar), GTK_MESSAGE_WARNING);
  self->model_info = gtk_label_new(NULL);
  gtk_label_set_line_wrap(GTK_LABEL(self->model_info), TRUE);
  gtk_label_set_max_width_chars(GTK_LABEL(self->model_info), 60);
  gtk_label_set_xalign(GTK_LABEL(self->model_info), 0);
  gtk_label_set_selectable(GTK_LABEL(self->model_info), TRUE);
  gtk_container_add(GTK_CONTAINER(gtk_info_bar_get_content_area(GTK_INFO_BAR(info_bar))),
                    self->model_info);
  gtk_widget_show(self->model_info);
  gtk_grid_attach(GTK_GRID(grid), info_bar, 0, row++, 2, 1);

  self->mode_combo = choice_combo_new();
  choice_combo_add(self->mode_combo, LCM_MODE_TXT2IMG, _("Text to image"), TRUE);
  choice_combo_add(self->mode_combo, LCM_MODE_IMG2IMG, _("Image to image"), self->source != NULL);
  choice_combo_add(self->mode_combo, LCM_MODE_INPAINT, _("Inpaint the selection"),
                   self->source && self->mask);
  g_signal_connect_swapped(self->mode_combo, "changed", G_CALLBACK(on_setting_changed), self);
  add_row(grid, &row, _("_Mode"), self->mode_combo);

  GtkWidget *scrolled;
  self->prompt_view = prompt_view_new(self, &scrolled);
  GtkWidget *label = gtk_label_new_with_mnemonic(_("_Prompt"));
  gtk_label_set_xalign(GTK_LABEL(label), 0);
  gtk_label_set_mnemonic_widget(GTK_LABEL(label), self->prompt_view);
  gtk_grid_attach(GTK_GRID(grid), label, 0, row++, 2, 1);
  gtk_grid_attach(GTK_GRID(grid), scrolled, 0, row++, 2, 1);
  gtk_widget_set_tooltip_text(self->prompt_view, _("Describe the picture you want"));

  self->negative_view = prompt_view_new(self, &scrolled);
  label = gtk_label_new_with_mnemonic(_("_Negative prompt"));
  gtk_label_set_xalign(GTK_LABEL(label), 0);
  gtk_label_set_mnemonic_widget(GTK_LABEL(label), self->negative_view);
  gtk_grid_attach(GTK_GRID(grid), label, 0, row++, 2, 1);
  gtk_grid_attach(GTK_GRID(grid), scrolled, 0, row++, 2, 1);
  gtk_widget_set_tooltip_text(self->negative_view,
                              _("What the picture should not show (used when guidance is "
                                "above 1 with a model that is not an LCM model)"));

  self->model_combo = gtk_combo_box_text_new();
  g_signal_connect_swapped(self->model_combo, "changed", G_CALLBACK(on_model_changed), self);
  g_signal_connect_swapped(self->model_combo, "changed", G_CALLBACK(on_setting_changed), self);
  add_row(grid, &row, _("M_odel"), self->model_combo);

  self->download_row = gtk_box_new(GTK_ORIENTATION_HORIZONTAL, 6);
  self->download_combo = gtk_combo_box_text_new();
  gtk_widget_set_name(self->download_combo, "lcm-download-choice");
  self->download_button = gtk_button_new_with_mnemonic(_("_Download…"));
  gtk_widget_set_name(self->download_button, "lcm-download-button");
  g_signal_connect(self->download_button, "clicked", G_CALLBACK(on_download_clicked), self);
  gtk_box_pack_start(GTK_BOX(self->download_row), self->download_combo, TRUE, TRUE, 0);
  gtk_box_pack_start(GTK_BOX(self->download_row), self->download_button, FALSE, FALSE, 0);
  gtk_widget_set_tooltip_text(self->download_row,
                              _("Models, LoRAs and preview decoders that gimp-lcm can fetch from "
                                "the Hugging Face Hub into the models folder"));
  self->download_label = add_row(grid, &row, _("Not downloaded"), self->download_row);
  gtk_label_set_mnemonic_widget(GTK_LABEL(self->download_label), self->download_combo);

  self->download_progress_row = gtk_box_new(GTK_ORIENTATION_HORIZONTAL, 6);
  self->download_progress = gtk_progress_bar_new();
  gtk_widget_set_name(self->download_progress, "lcm-download-progress");
  gtk_progress_bar_set_show_text(GTK_PROGRESS_BAR(self->download_progress), TRUE);
  gtk_progress_bar_set_ellipsize(GTK_PROGRESS_BAR(self->download_progress), PANGO_ELLIPSIZE_END);
  gtk_widget_set_valign(self->download_progress, GTK_ALIGN_CENTER);
  self->download_cancel = gtk_button_new_with_mnemonic(_("C_ancel download"));
  gtk_widget_set_name(self->download_cancel, "lcm-download-cancel");
  g_signal_connect(self->download_cancel, "clicked", G_CALLBACK(on_download_cancel), self);
  gtk_box_pack_start(GTK_BOX(self->download_progress_row), self->download_progress, TRUE, TRUE, 0);
  gtk_box_pack_start(GTK_BOX(self->download_progress_row), self->download_cancel, FALSE, FALSE, 0);
  gtk_grid_attach(GTK_GRID(grid), self->download_progress_row, 1, row++, 1, 1);
  gtk_widget_set_no_show_all(self->download_progress_row, TRUE);

  GtkWidget *lora_column = gtk_box_new(GTK_ORIENTATION_VERTICAL, 6);
  self->lora_box = gtk_box_new(GTK_ORIENTATION_VERTICAL, 6);
  GtkWidget *add = gtk_button_new_with_mnemonic(_("_Add LoRA…"));
  gtk_widget_set_halign(add, GTK_ALIGN_START);
  g_signal_connect(add, "clicked", G_CALLBACK(on_add_lora), self);
  gtk_box_pack_start(GTK_BOX(lora_column), self->lora_box, FALSE, FALSE, 0);
  gtk_box_pack_start(GTK_BOX(lora_column), add, FALSE, FALSE, 0);
  label = add_row(grid, &row, _("LoRAs"), lora_column);
  gtk_label_set_mnemonic_widget(GTK_LABEL(label), add);
  gtk_widget_set_valign(label, GTK_ALIGN_START);

  self->steps_spin = spin_new(self, LCM_SETTINGS_MIN_STEPS, LCM_SETTINGS_MAX_STEPS, 1, 0);
  gtk_widget_set_tooltip_text(self->steps_spin, _("More steps add detail; 4 is usually enough"));
  add_row(grid, &row, _("_Steps"), self->steps_spin);

  self->guidance_spin = spin_new(self, 0, 20, 0.1, 1);
  show_zero_as_word(self->guidance_spin, N_("Auto"));
  gtk_widget_set_tooltip_text(self->guidance_spin,
                              _("How closely to follow the prompt. Auto: the model's default "
                                "(8 for LCM models, 1 with LCM-LoRA)"));
  add_row(grid, &row, _("G_uidance"), self->guidance_spin);

  self->clip_skip_spin = spin_new(self, 0, LCM_SETTINGS_MAX_CLIP_SKIP, 1, 0);
  gtk_widget_set_name(self->clip_skip_spin, "lcm-clip-skip");
  show_zero_as_word(self->clip_skip_spin, N_("Off"));
  gtk_widget_set_tooltip_text(self->clip_skip_spin,
                              _("Read the prompt this many text-encoder layers before the last. "
                                "Off for most models; some SD 1.5 checkpoints ask for 1 (in "
                                "other programs' counting, 2)"));
  add_row(grid, &row, _("CLIP s_kip"), self->clip_skip_spin);

  self->strength_spin = spin_new(self, 0.05, 1, 0.05, 2);
  gtk_widget_set_tooltip_text(self->strength_spin,
                              _("How much of the image to repaint: 1 starts from noise"));
  add_row(grid, &row, _("Strengt_h"), self->strength_spin);

  GtkWidget *seed_row = gtk_box_new(GTK_ORIENTATION_HORIZONTAL, 6);
  self->seed_spin = spin_new(self, 0, 4294967295.0, 1, 0);
  GtkWidget *dice =
      gtk_button_new_from_icon_name("media-playlist-shuffle-symbolic", GTK_ICON_SIZE_BUTTON);
  gtk_widget_set_tooltip_text(dice, _("Pick a new random seed"));
  g_signal_connect(dice, "clicked", G_CALLBACK(on_dice_clicked), self);
  self->random_seed_check = gtk_check_button_new_with_mnemonic(_("Ne_w seed each time"));
  gtk_widget_set_tooltip_text(self->random_seed_check,
                              _("Draw a new seed for every generated image; the preview keeps "
                                "the seed shown"));
  gtk_box_pack_start(GTK_BOX(seed_row), self->seed_spin, TRUE, TRUE, 0);
  gtk_box_pack_start(GTK_BOX(seed_row), dice, FALSE, FALSE, 0);
  gtk_box_pack_start(GTK_BOX(seed_row), self->random_seed_check, FALSE, FALSE, 0);
  label = add_row(grid, &row, _("S_eed"), seed_row);
  gtk_label_set_mnemonic_widget(GTK_LABEL(label), self->seed_spin);

  GtkWidget *size_row = gtk_box_new(GTK_ORIENTATION_HORIZONTAL, 6);
  self->width_spin = spin_new(self, 64, 2048, 8, 0);
  self->height_spin = spin_new(self, 64, 2048, 8, 0);
  gtk_box_pack_start(GTK_BOX(size_row), self->width_spin, TRUE, TRUE, 0);
  gtk_box_pack_start(GTK_BOX(size_row), gtk_label_new("×"), FALSE, FALSE, 0);
  gtk_box_pack_start(GTK_BOX(size_row), self->height_spin, TRUE, TRUE, 0);
  g_signal_connect_swapped(self->width_spin, "value-changed", G_CALLBACK(sync_size_preset), self);
  g_signal_connect_swapped(self->height_spin, "value-changed", G_CALLBACK(sync_size_preset), self);
  self->size_preset_combo = gtk_combo_box_text_new();
  gtk_widget_set_name(self->size_preset_combo, "lcm-size-preset");
  gtk_widget_set_tooltip_text(self->size_preset_combo,
                              _("Sizes the model was trained at: about 512 × 512 pixels for "
                                "SD 1.5, one megapixel for SDXL and SSD-1B"));
  g_signal_connect(self->size_preset_combo, "changed", G_CALLBACK(on_size_preset_changed), self);
  gtk_box_pack_start(GTK_BOX(size_row), self->size_preset_combo, FALSE, FALSE, 0);
  gtk_widget_set_tooltip_text(size_row, _("Size of the new image in pixels (multiples of 8)"));
  label = add_row(grid, &row, _("Si_ze"), size_row);
  gtk_label_set_mnemonic_widget(GTK_LABEL(label), self->width_spin);

  gboolean gpu = lcm_gpu_available();
  self->device_combo = choice_combo_new();
  choice_combo_add(self->device_combo, LCM_DEVICE_CPU, _("CPU"), TRUE);
  choice_combo_add(self->device_combo, LCM_DEVICE_GPU, _("GPU"), gpu);
  gtk_widget_set_sensitive(self->device_combo, gpu);
  gtk_widget_set_tooltip_text(self->device_combo,
                              gpu ? _("Where the model runs")
                                  : _("Only the CPU can be used: the installed oneDNN library "
                                      "has no GPU support, or it found no GPU"));
  g_signal_connect_swapped(self->device_combo, "changed", G_CALLBACK(on_setting_changed), self);
  add_row(grid, &row, _("_Device"), self->device_combo);

  gboolean bf16 = lcm_precision_resolve(LCM_PRECISION_AUTO) == LCM_PRECISION_BF16;
  self->precision_combo = choice_combo_new();
  choice_combo_add(self->precision_combo, LCM_PRECISION_AUTO, _("Automatic"), TRUE);
  choice_combo_add(self->precision_combo, LCM_PRECISION_FP32, _("Full (fp32)"), TRUE);
  choice_combo_add(self->precision_combo, LCM_PRECISION_BF16, _("Fast (bfloat16)"), bf16);
  gtk_widget_set_tooltip_text(self->precision_combo,
                              bf16 ? _("bfloat16 is faster and almost as exact")
                                   : _("This CPU has no bfloat16 support (AVX512-BF16 or AMX), "
                                       "so the model runs in fp32"));
  g_signal_connect_swapped(self->precision_combo, "changed", G_CALLBACK(on_setting_changed), self);
  add_row(grid, &row, _("Prec_ision"), self->precision_combo);

  self->output_combo = choice_combo_new();
  choice_combo_add(self->output_combo, LCM_OUTPUT_NEW_LAYER, _("New layer"), TRUE);
  choice_combo_add(self->output_combo, LCM_OUTPUT_REPLACE, _("Replace the layer"), TRUE);
  add_row(grid, &row, _("Outpu_t"), self->output_combo);
  return grid;
}

static void on_map(LcmDialog *self) {
  schedule_preview(self);
}

GtkWidget *lcm_dialog_new(GtkWindow *parent, const LcmSettings *initial, const LcmImage *source,
                          const LcmImage *mask) {
  LcmDialog *self = g_object_new(LCM_TYPE_DIALOG, "title", _("Generate with LCM"), "transient-for",
                                 parent, "modal", parent != NULL, "use-header-bar", FALSE, NULL);
  if (source) self->source = lcm_image_resize(source, source->width, source->height);
  if (source && mask && mask->width == source->width && mask->height == source->height)
    self->mask = lcm_image_resize(mask, mask->width, mask->height);
  if (initial) lcm_settings_copy(&self->initial, initial);

  gtk_dialog_add_buttons(GTK_DIALOG(self), _("_Reset"), RESPONSE_RESET, _("_Cancel"),
                         GTK_RESPONSE_CANCEL, _("_Generate"), GTK_RESPONSE_OK, NULL);
  gtk_dialog_set_default_response(GTK_DIALOG(self), GTK_RESPONSE_OK);

  GtkWidget *content = gtk_dialog_get_content_area(GTK_DIALOG(self));
  GtkWidget *columns = gtk_box_new(GTK_ORIENTATION_HORIZONTAL, 18);
  gtk_container_set_border_width(GTK_CONTAINER(columns), 12);
  gtk_box_pack_start(GTK_BOX(columns), build_preview_column(self), FALSE, FALSE, 0);
  gtk_box_pack_start(GTK_BOX(columns), build_settings_column(self), TRUE, TRUE, 0);
  gtk_box_pack_start(GTK_BOX(content), columns, TRUE, TRUE, 0);
  gtk_widget_show_all(columns);

  apply_settings(self, &self->initial);
  g_signal_connect(self, "map", G_CALLBACK(on_map), NULL);
  return GTK_WIDGET(self);
}

gboolean lcm_dialog_run(LcmDialog *self, LcmSettings *out) {
  g_return_val_if_fail(LCM_IS_DIALOG(self), FALSE);
  int response;
  while ((response = gtk_dialog_run(GTK_DIALOG(self))) == RESPONSE_RESET) {
    apply_settings(self, &self->initial);
    schedule_preview(self);
  }
  stop_job_now(self);
  if (self->download) g_cancellable_cancel(self->download);
  if (response != GTK_RESPONSE_OK) return FALSE;
  lcm_dialog_get_settings(self, out);
  return TRUE;
}

LcmPipeline *lcm_dialog_take_pipeline(LcmDialog *self) {
  g_return_val_if_fail(LCM_IS_DIALOG(self), NULL);
  stop_job_now(self);
  LcmSettings settings;
  lcm_settings_init(&settings);
  lcm_dialog_get_settings(self, &settings);
  g_autofree char *key = lcm_settings_pipeline_key(&settings);
  lcm_settings_clear(&settings);
  LcmPipeline *pipeline = NULL;
  if (self->pipeline_key && !strcmp(key, self->pipeline_key))
    pipeline = g_steal_pointer(&self->pipeline);
  free_pipeline(self);
  return pipeline;
}

void lcm_dialog_get_preview_stats(LcmDialog *self, LcmPreviewStats *stats) {
  g_return_if_fail(LCM_IS_DIALOG(self));
  *stats = self->stats;
}

void lcm_dialog_set_debounce(LcmDialog *self, guint milliseconds) {
  g_return_if_fail(LCM_IS_DIALOG(self));
  self->debounce_ms = milliseconds;
}

void lcm_dialog_set_first_picture_target(LcmDialog *self, double seconds) {
  g_return_if_fail(LCM_IS_DIALOG(self));
  self->first_picture_target_s = seconds;
}

gboolean lcm_dialog_download_busy(LcmDialog *self) {
  g_return_val_if_fail(LCM_IS_DIALOG(self), FALSE);
  return self->download != NULL;
}

gboolean lcm_dialog_preview_busy(LcmDialog *self) {
  g_return_val_if_fail(LCM_IS_DIALOG(self), FALSE);
  return self->job != NULL || self->debounce_source != 0;
}

GtkTextBuffer *lcm_dialog_get_prompt_buffer(LcmDialog *self) {
  g_return_val_if_fail(LCM_IS_DIALOG(self), NULL);
  return gtk_text_view_get_buffer(GTK_TEXT_VIEW(self->prompt_view));
}

static void lcm_dialog_init(LcmDialog *self) {
  self->debounce_ms = DEFAULT_DEBOUNCE_MS;
  self->first_picture_us = g_hash_table_new(NULL, NULL);
  lcm_settings_init(&self->initial);
  gboolean test_model = FALSE;
  g_autofree char *default_model = lcm_default_model(&test_model);
  self->test_model_path =
      test_model ? g_steal_pointer(&default_model) : lcm_find_data_file("tiny-lcm");
  self->catalogue = lcm_catalogue_load(NULL, NULL); /* without it, nothing is offered */
}

static void lcm_dialog_dispose(GObject *object) {
  LcmDialog *self = LCM_DIALOG(object);
  if (!self->disposed) {
    self->disposed = TRUE;
    if (self->download) g_cancellable_cancel(self->download);
    stop_job_now(self);
    free_pipeline(self);
  }
  G_OBJECT_CLASS(lcm_dialog_parent_class)->dispose(object);
}

static void lcm_dialog_finalize(GObject *object) {
  LcmDialog *self = LCM_DIALOG(object);
  lcm_image_free(self->source);
  lcm_image_free(self->mask);
  lcm_settings_clear(&self->initial);
  g_free(self->test_model_path);
  g_hash_table_unref(self->first_picture_us);
  g_free(self->last_prompt);
  g_clear_pointer(&self->catalogue, g_ptr_array_unref);
  g_clear_pointer(&self->found, g_ptr_array_unref);
  G_OBJECT_CLASS(lcm_dialog_parent_class)->finalize(object);
}

static void lcm_dialog_class_init(LcmDialogClass *klass) {
  GObjectClass *object_class = G_OBJECT_CLASS(klass);
  object_class->dispose = lcm_dialog_dispose;
  object_class->finalize = lcm_dialog_finalize;
  const char *names[DOWNLOAD_FINISHED] = {"preview-started", "preview-updated", "preview-finished",
                                          "preview-cancelled", "preview-failed"};
  for (int i = 0; i < DOWNLOAD_FINISHED; i++)
    signals[i] = g_signal_new(names[i], G_TYPE_FROM_CLASS(klass), G_SIGNAL_RUN_LAST, 0, NULL, NULL,
                              NULL, G_TYPE_NONE, 0);
  signals[DOWNLOAD_FINISHED] =
      g_signal_new("download-finished", G_TYPE_FROM_CLASS(klass), G_SIGNAL_RUN_LAST, 0, NULL, NULL,
                   NULL, G_TYPE_NONE, 1, G_TYPE_BOOLEAN);
}
