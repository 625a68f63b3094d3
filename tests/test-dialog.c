/* The GTK dialog, run under Xvfb on the tiny test model: the debounced live
 * preview (one run per pause in typing, stale runs cancelled), a screenshot,
 * and the Japanese translation. */
#include "fake-hub.h"
#include "lcm-dialog.h"
#include "testutil.h"

#include <glib/gstdio.h>
#include <locale.h>
#include <string.h>
#include <unistd.h>

/* Long enough that typing one character per main-loop pass never lets the
 * debounce expire in between, even on a loaded machine. */
#define TEST_DEBOUNCE_MS 500
#define WAIT_LIMIT_US (240 * G_USEC_PER_SEC)

static char *models_dir;
static char *locale_dir; /* a LOCPATH made by use_named_utf8_locale, or NULL */
static gboolean have_named_locale;

/* glibc (2.41) ignores LANGUAGE in the C and C.UTF-8 locales, and a minimal
 * Debian root has no other locale. Giving C.UTF-8's data a real locale's
 * name through LOCPATH makes gettext honour LANGUAGE, as on a user's
 * system. */
static void use_named_utf8_locale(void) {
  const char *name = "en_US.UTF-8";
  g_unsetenv("LC_ALL");
  g_unsetenv("LC_MESSAGES");
  if (setlocale(LC_ALL, name)) {
    have_named_locale = TRUE;
  } else if (g_file_test("/usr/lib/locale/C.utf8", G_FILE_TEST_IS_DIR)) {
    locale_dir = g_dir_make_tmp("lcm-dialog-locale-XXXXXX", NULL);
    g_autofree char *link = g_build_filename(locale_dir, name, NULL);
    have_named_locale = symlink("/usr/lib/locale/C.utf8", link) == 0;
    g_setenv("LOCPATH", locale_dir, TRUE);
  }
  g_setenv("LANG", name, TRUE);
}

static void remove_locale_dir(void) {
  if (!locale_dir) return;
  g_autofree char *link = g_build_filename(locale_dir, "en_US.UTF-8", NULL);
  g_unlink(link);
  g_rmdir(locale_dir);
  g_free(locale_dir);
}

static void iterate_for(int milliseconds) {
  gint64 end = g_get_monotonic_time() + milliseconds * 1000;
  while (g_get_monotonic_time() < end) {
    while (g_main_context_iteration(NULL, FALSE)) continue;
    g_usleep(2000);
  }
}

static void wait_for_preview_idle(LcmDialog *dialog) {
  gint64 limit = g_get_monotonic_time() + WAIT_LIMIT_US;
  while (lcm_dialog_preview_busy(dialog) && g_get_monotonic_time() < limit)
    g_main_context_iteration(NULL, TRUE);
  g_assert_false(lcm_dialog_preview_busy(dialog));
}

/* Types text into the prompt one character at a time, a few main-loop
 * passes apart, the way a user does. */
static void type_text(LcmDialog *dialog, const char *text) {
  GtkTextBuffer *buffer = lcm_dialog_get_prompt_buffer(dialog);
  for (const char *p = text; *p; p = g_utf8_next_char(p)) {
    GtkTextIter end;
    gtk_text_buffer_get_end_iter(buffer, &end);
    gtk_text_buffer_insert(buffer, &end, p, g_utf8_next_char(p) - p);
    iterate_for(10);
  }
}

static GtkWidget *new_dialog_for(const char *model_path) {
  LcmSettings settings;
  lcm_settings_init(&settings);
  settings.model_path = g_strdup(model_path);
  settings.seed = 7;
  settings.width = 512;
  settings.height = 384;
  GtkWidget *dialog = lcm_dialog_new(NULL, &settings, NULL, NULL);
  lcm_settings_clear(&settings);
  lcm_dialog_set_debounce(LCM_DIALOG(dialog), TEST_DEBOUNCE_MS);
  gtk_window_move(GTK_WINDOW(dialog), 0, 0);
  return dialog;
}

static GtkWidget *new_test_dialog(void) {
  g_autofree char *model = test_data_path("golden/tiny-lcm");
  return new_dialog_for(model);
}

static void destroy_dialog(GtkWidget *dialog) {
  gtk_widget_destroy(dialog);
  iterate_for(50); /* lets queued progress updates drop their references */
}

static void test_loras_string(void) {
  GError *error = NULL;
  g_autoptr(GArray) entries =
      lcm_loras_parse("/m/lcm-lora.safetensors:1; /m/a:b/style.safetensors:0.75;C:\\x.st", &error);
  g_assert_no_error(error);
  g_assert_cmpuint(entries->len, ==, 3);
  g_assert_cmpstr(g_array_index(entries, LcmLoraEntry, 1).path, ==, "/m/a:b/style.safetensors");
  g_assert_cmpfloat(g_array_index(entries, LcmLoraEntry, 1).scale, ==, 0.75);
  g_assert_cmpstr(g_array_index(entries, LcmLoraEntry, 2).path, ==, "C:\\x.st");
  g_assert_cmpfloat(g_array_index(entries, LcmLoraEntry, 2).scale, ==, 1.0);
  g_autofree char *text = lcm_loras_format(entries);
  g_assert_cmpstr(text, ==, "/m/lcm-lora.safetensors:1;/m/a:b/style.safetensors:0.75;C:\\x.st:1");

  GArray *bad = lcm_loras_parse("/m/style.safetensors:strong", &error);
  g_assert_null(bad);
  g_assert_error(error, LCM_ERROR, LCM_ERROR_INVALID);
  g_clear_error(&error);
}

static void test_settings_round_trip(void) {
  LcmSettings in, out;
  lcm_settings_init(&in);
  lcm_settings_init(&out);
  in.prompt = g_strdup("a lighthouse at dusk");
  in.negative_prompt = g_strdup("blurry");
  in.model_path = test_data_path("golden/tiny-lcm");
  g_autofree char *lora = test_data_path("golden/lora/lora_a_kohya.safetensors");
  in.loras = g_strdup_printf("%s:0.5", lora);
  in.steps = 6;
  in.guidance = 1.5;
  in.clip_skip = 2;
  in.seed = 1234;
  in.width = 320;
  in.height = 256;
  in.output = LCM_OUTPUT_REPLACE;
  GtkWidget *dialog = lcm_dialog_new(NULL, &in, NULL, NULL);
  lcm_dialog_get_settings(LCM_DIALOG(dialog), &out);
  g_assert_cmpstr(out.prompt, ==, in.prompt);
  g_assert_cmpstr(out.negative_prompt, ==, in.negative_prompt);
  g_assert_cmpstr(out.model_path, ==, in.model_path);
  g_assert_cmpstr(out.loras, ==, in.loras);
  g_assert_cmpint(out.mode, ==, LCM_MODE_TXT2IMG);
  g_assert_cmpint(out.steps, ==, 6);
  g_assert_cmpfloat_with_epsilon(out.guidance, 1.5, 1e-9);
  g_assert_cmpint(out.clip_skip, ==, 2);
  LcmPipelineParams params;
  lcm_pipeline_params_init(&params);
  lcm_settings_to_params(&out, NULL, 1, &params); /* no pipeline: guidance is set */
  g_assert_cmpint(params.clip_skip, ==, 2);
  g_assert_cmpint(out.seed, ==, 1234);
  g_assert_cmpint(out.width, ==, 320);
  g_assert_cmpint(out.height, ==, 256);
  g_assert_cmpint(out.device, ==, LCM_DEVICE_CPU);
  g_assert_cmpint(out.output, ==, LCM_OUTPUT_REPLACE);
  lcm_settings_clear(&in);
  lcm_settings_clear(&out);
  destroy_dialog(dialog);
}

static void test_typing_starts_one_preview(void) {
  GtkWidget *dialog = new_test_dialog();
  LcmDialog *lcm = LCM_DIALOG(dialog);
  gtk_widget_show(dialog);
  wait_for_preview_idle(lcm); /* the preview shown when the dialog opens */
  LcmPreviewStats before, after;
  lcm_dialog_get_preview_stats(lcm, &before);
  g_assert_cmpint(before.finished, ==, 1);

  type_text(lcm, "a red fox in the snow");
  lcm_dialog_get_preview_stats(lcm, &after);
  g_assert_cmpint(after.started, ==, before.started); /* still debouncing */
  wait_for_preview_idle(lcm);
  lcm_dialog_get_preview_stats(lcm, &after);
  g_assert_cmpint(after.started - before.started, ==, 1);
  g_assert_cmpint(after.finished - before.finished, ==, 1);
  g_assert_cmpint(after.failed, ==, 0);

  /* The pipeline the preview loaded goes to the host, ready to run. */
  LcmPipeline *pipeline = lcm_dialog_take_pipeline(lcm);
  g_assert_nonnull(pipeline);
  lcm_pipeline_free(pipeline);
  destroy_dialog(dialog);
}

/* Where the measured speed would show the first picture later than the
 * target, the preview runs smaller, counts as quick, stops after its first
 * picture, and is refined at full size when the user pauses; where it is fast enough, no quick
 * preview. */
static void test_slow_cpu_quick_preview(void) {
  GtkWidget *dialog = new_test_dialog();
  LcmDialog *lcm = LCM_DIALOG(dialog);
  gtk_widget_show(dialog);
  wait_for_preview_idle(lcm); /* the opening preview measures the speed */
  LcmPreviewStats before, after;
  lcm_dialog_get_preview_stats(lcm, &before);
  g_assert_cmpint(before.quick, ==, 0);
  g_assert_cmpint(before.updated, >=, 1);

  /* A target no CPU meets at full size: a hair over the debounce. */
  lcm_dialog_set_first_picture_target(lcm, TEST_DEBOUNCE_MS / 1000.0 + 1e-6);
  type_text(lcm, "a harbour");
  wait_for_preview_idle(lcm);
  lcm_dialog_get_preview_stats(lcm, &after);
  g_assert_cmpint(after.quick - before.quick, ==, 1);
  g_assert_cmpint(after.started - before.started, ==, 2); /* quick, then refined */
  g_assert_cmpint(after.finished - before.finished, ==, 2);
  /* The quick one stops at its first step's picture; the full-size one shows
   * each step's but the last, then its result. */
  LcmSettings settings;
  lcm_settings_init(&settings);
  lcm_dialog_get_settings(lcm, &settings);
  g_assert_cmpint(after.updated - before.updated, ==, 1 + settings.steps);
  lcm_settings_clear(&settings);
  g_assert_cmpint(after.failed, ==, 0);

  /* A generous target: the tiny model makes it at full size. */
  lcm_dialog_set_first_picture_target(lcm, TEST_DEBOUNCE_MS / 1000.0 + 60);
  before = after;
  type_text(lcm, " at noon");
  wait_for_preview_idle(lcm);
  lcm_dialog_get_preview_stats(lcm, &after);
  g_assert_cmpint(after.quick, ==, before.quick);
  g_assert_cmpint(after.started - before.started, ==, 1);
  g_assert_cmpint(after.finished - before.finished, ==, 1);
  destroy_dialog(dialog);
}

static void type_once_more(LcmDialog *dialog, gpointer data) {
  gulong *handler = data;
  g_signal_handler_disconnect(dialog, *handler);
  GtkTextBuffer *buffer = lcm_dialog_get_prompt_buffer(dialog);
  GtkTextIter end;
  gtk_text_buffer_get_end_iter(buffer, &end);
  gtk_text_buffer_insert(buffer, &end, ", at night", -1);
}

static void test_typing_cancels_stale_preview(void) {
  GtkWidget *dialog = new_test_dialog();
  LcmDialog *lcm = LCM_DIALOG(dialog);
  gtk_widget_show(dialog);
  wait_for_preview_idle(lcm);
  LcmPreviewStats before, after;
  lcm_dialog_get_preview_stats(lcm, &before);

  /* The user types again while the next preview runs. */
  gulong handler = 0;
  handler = g_signal_connect(dialog, "preview-started", G_CALLBACK(type_once_more), &handler);
  type_text(lcm, "a castle");
  wait_for_preview_idle(lcm);
  lcm_dialog_get_preview_stats(lcm, &after);
  g_assert_cmpint(after.cancelled - before.cancelled, >=, 1);
  g_assert_cmpint(after.finished - before.finished, ==, 1);
  g_assert_cmpint(after.failed, ==, 0);
  GtkTextIter start, end;
  gtk_text_buffer_get_bounds(lcm_dialog_get_prompt_buffer(lcm), &start, &end);
  g_autofree char *prompt = gtk_text_iter_get_text(&start, &end);
  g_assert_cmpstr(prompt, ==, "a castle, at night");
  destroy_dialog(dialog);
}

static GtkWidget *find_named(GtkWidget *widget, const char *name);
static gboolean find_label(GtkWidget *widget, const char *text);

/* CLIP skip starts a preview like any setting; a skip the model's text
 * encoder is too shallow for fails with the core's message shown. */
static void test_clip_skip_preview(void) {
  GtkWidget *dialog = new_test_dialog();
  LcmDialog *lcm = LCM_DIALOG(dialog);
  gtk_widget_show(dialog);
  wait_for_preview_idle(lcm);
  GtkWidget *spin = find_named(dialog, "lcm-clip-skip");
  g_assert_nonnull(spin);
  g_assert_cmpint(gtk_spin_button_get_value_as_int(GTK_SPIN_BUTTON(spin)), ==, 0);
  g_assert_cmpstr(gtk_entry_get_text(GTK_ENTRY(spin)), ==, "Off");
  LcmPreviewStats before, after;
  lcm_dialog_get_preview_stats(lcm, &before);

  gtk_spin_button_set_value(GTK_SPIN_BUTTON(spin), 1);
  wait_for_preview_idle(lcm);
  lcm_dialog_get_preview_stats(lcm, &after);
  g_assert_cmpint(after.finished - before.finished, ==, 1);
  g_assert_cmpint(after.failed, ==, 0);
  LcmSettings shown;
  lcm_settings_init(&shown);
  lcm_dialog_get_settings(lcm, &shown);
  g_assert_cmpint(shown.clip_skip, ==, 1);
  lcm_settings_clear(&shown);

  gtk_spin_button_set_value(GTK_SPIN_BUTTON(spin), LCM_SETTINGS_MAX_CLIP_SKIP);
  wait_for_preview_idle(lcm);
  lcm_dialog_get_preview_stats(lcm, &after);
  g_assert_cmpint(after.failed, ==, 1);
  g_assert_true(find_label(dialog, "clip skip 12 is out of range: this model's text encoder "
                                   "allows 0 to 3"));
  destroy_dialog(dialog);
}

static GtkWidget *new_dialog_sized(const char *model_path, int width, int height) {
  LcmSettings settings;
  lcm_settings_init(&settings);
  settings.model_path = g_strdup(model_path);
  settings.seed = 7;
  settings.width = width;
  settings.height = height;
  GtkWidget *dialog = lcm_dialog_new(NULL, &settings, NULL, NULL);
  lcm_settings_clear(&settings);
  lcm_dialog_set_debounce(LCM_DIALOG(dialog), TEST_DEBOUNCE_MS);
  return dialog;
}

static void assert_dialog_size(LcmDialog *dialog, int width, int height) {
  LcmSettings shown;
  lcm_settings_init(&shown);
  lcm_dialog_get_settings(dialog, &shown);
  g_assert_cmpint(shown.width, ==, width);
  g_assert_cmpint(shown.height, ==, height);
  lcm_settings_clear(&shown);
}

/* An SDXL model stored with an SD1.5 size (512x384, the last values) shows
 * SDXL's preset nearest in aspect ratio, offers SDXL's presets only, and
 * previews; an SD1.5 model stored with an SDXL size gets 512x512, and one
 * with a small size of its own keeps it. */
static void test_sdxl_native_size(void) {
  g_autofree char *sdxl = test_data_path("golden-sdxl/tiny-sdxl-lcm");
  GtkWidget *dialog = new_dialog_sized(sdxl, 512, 384);
  LcmDialog *lcm = LCM_DIALOG(dialog);
  GtkComboBox *presets = GTK_COMBO_BOX(find_named(dialog, "lcm-size-preset"));
  assert_dialog_size(lcm, 1152, 896);
  g_assert_cmpstr(gtk_combo_box_get_active_id(presets), ==, "1152x896");
  g_assert_false(gtk_combo_box_set_active_id(presets, "512x768"));
  g_assert_true(gtk_combo_box_set_active_id(presets, "1024x1024"));
  assert_dialog_size(lcm, 1024, 1024);
  gtk_widget_show(dialog);
  wait_for_preview_idle(lcm);
  LcmPreviewStats stats;
  lcm_dialog_get_preview_stats(lcm, &stats);
  g_assert_cmpint(stats.finished, ==, 1);
  g_assert_cmpint(stats.failed, ==, 0);
  destroy_dialog(dialog);

  g_autofree char *sd15 = test_data_path("golden/tiny-lcm");
  dialog = new_dialog_sized(sd15, 1024, 1024);
  presets = GTK_COMBO_BOX(find_named(dialog, "lcm-size-preset"));
  assert_dialog_size(LCM_DIALOG(dialog), 512, 512);
  g_assert_cmpstr(gtk_combo_box_get_active_id(presets), ==, "512x512");
  g_assert_false(gtk_combo_box_set_active_id(presets, "1152x896"));
  g_assert_true(gtk_combo_box_set_active_id(presets, "768x512"));
  assert_dialog_size(LCM_DIALOG(dialog), 768, 512);
  destroy_dialog(dialog);
  dialog = new_dialog_sized(sd15, 128, 96);
  assert_dialog_size(LCM_DIALOG(dialog), 128, 96);
  destroy_dialog(dialog);
}

static void test_family_sizes(void) {
  size_t count;
  const LcmSize *sizes = lcm_family_sizes(LCM_FAMILY_SDXL, &count);
  g_assert_cmpuint(count, ==, 9);
  g_assert_cmpint(sizes[0].width, ==, 1024);
  g_assert_cmpint(sizes[0].height, ==, 1024);
  for (size_t i = 0; i < count; i++) {
    g_assert_cmpint(sizes[i].width % 64, ==, 0);
    g_assert_cmpint(sizes[i].height % 64, ==, 0);
    g_assert_cmpint(sizes[i].width * sizes[i].height, >, 900000);
  }
  sizes = lcm_family_sizes(LCM_FAMILY_SD15, &count);
  g_assert_cmpint(sizes[0].width, ==, 512);
  g_assert_cmpint(lcm_family_native_side(LCM_FAMILY_SD15), ==, 512);
  g_assert_cmpint(lcm_family_native_side(LCM_FAMILY_SDXL), ==, 1024);
  int width = 640, height = 1536; /* an SDXL size for SD1.5: the tallest preset */
  lcm_family_fit_size(LCM_FAMILY_SD15, &width, &height);
  g_assert_cmpint(width, ==, 432);
  g_assert_cmpint(height, ==, 768);
  width = 768, height = 768; /* SD1.5's largest: kept, and too small for SDXL */
  lcm_family_fit_size(LCM_FAMILY_SD15, &width, &height);
  g_assert_cmpint(width, ==, 768);
  lcm_family_fit_size(LCM_FAMILY_SDXL, &width, &height);
  g_assert_cmpint(width, ==, 1024);
  g_assert_cmpint(height, ==, 1024);
  width = 1344, height = 768; /* an SDXL preset stays */
  lcm_family_fit_size(LCM_FAMILY_SDXL, &width, &height);
  g_assert_cmpint(width, ==, 1344);
  g_assert_cmpint(height, ==, 768);
}

/* GIMP 3's dark theme when GIMP is installed, so the screenshot shows the
 * dialog as it looks inside GIMP (which themes plug-ins in gimp_ui_init). */
static GtkCssProvider *load_gimp_theme(void) {
  const char *path = "/usr/share/gimp/3.0/themes/Default/gimp-dark.css";
  if (!g_file_test(path, G_FILE_TEST_IS_REGULAR)) return NULL;
  GtkCssProvider *provider = gtk_css_provider_new();
  /* GIMP's own widgets' rules do not parse in plain GTK; the rest loads. */
  gtk_css_provider_load_from_path(provider, path, NULL);
  g_object_set(gtk_settings_get_default(), "gtk-application-prefer-dark-theme", TRUE, NULL);
  gtk_style_context_add_provider_for_screen(gdk_screen_get_default(), GTK_STYLE_PROVIDER(provider),
                                            GTK_STYLE_PROVIDER_PRIORITY_APPLICATION);
  return provider;
}

static void test_screenshot(void) {
  GtkCssProvider *theme = load_gimp_theme();
  GtkWidget *dialog = new_test_dialog();
  LcmDialog *lcm = LCM_DIALOG(dialog);
  gtk_widget_show(dialog);
  type_text(lcm, "a watercolor lighthouse on a cliff at dusk");
  wait_for_preview_idle(lcm);
  LcmPreviewStats stats;
  lcm_dialog_get_preview_stats(lcm, &stats);
  g_assert_cmpint(stats.finished, >=, 1);
  iterate_for(300); /* let the window draw the finished preview */

  GdkWindow *window = gtk_widget_get_window(dialog);
  int width = gdk_window_get_width(window), height = gdk_window_get_height(window);
  g_autoptr(GdkPixbuf) shot = gdk_pixbuf_get_from_window(window, 0, 0, width, height);
  g_assert_nonnull(shot);
  g_autofree char *path = g_test_build_filename(G_TEST_BUILT, "dialog-screenshot.png", NULL);
  GError *error = NULL;
  g_assert_true(gdk_pixbuf_save(shot, path, "png", &error, NULL));
  g_assert_no_error(error);
  g_test_message("screenshot: %s (%dx%d)", path, width, height);
  g_assert_cmpint(width, >=, 256);
  destroy_dialog(dialog);
  if (theme) {
    gtk_style_context_remove_provider_for_screen(gdk_screen_get_default(),
                                                 GTK_STYLE_PROVIDER(theme));
    g_object_set(gtk_settings_get_default(), "gtk-application-prefer-dark-theme", FALSE, NULL);
    g_object_unref(theme);
  }
}

/* A model with TAESD weights (a taesd/ subfolder) gets its previews from
 * TAESD, with no full VAE decode; one without, from its VAE. */
static void test_preview_decoder(void) {
  static const char *const parts[] = {"model_index.json", "scheduler", "text_encoder",
                                      "tokenizer",        "unet",      "vae"};
  g_autofree char *plain = test_data_path("golden/tiny-lcm");
  g_autofree char *taesd = test_data_path("golden/tiny-taesd");
  g_autofree char *with_taesd = g_dir_make_tmp("lcm-dialog-taesd-XXXXXX", NULL);
  GPtrArray *links = g_ptr_array_new_with_free_func(g_free);
  for (size_t i = 0; i <= G_N_ELEMENTS(parts); i++) {
    const char *name = i < G_N_ELEMENTS(parts) ? parts[i] : "taesd";
    g_autofree char *target =
        i < G_N_ELEMENTS(parts) ? g_build_filename(plain, name, NULL) : g_strdup(taesd);
    char *link = g_build_filename(with_taesd, name, NULL);
    g_assert_cmpint(symlink(target, link), ==, 0);
    g_ptr_array_add(links, link);
  }
  for (int has_taesd = 0; has_taesd < 2; has_taesd++) {
    GtkWidget *dialog = new_dialog_for(has_taesd ? with_taesd : plain);
    LcmDialog *lcm = LCM_DIALOG(dialog);
    gtk_widget_show(dialog);
    wait_for_preview_idle(lcm); /* the preview shown when the dialog opens */
    LcmPreviewStats stats;
    lcm_dialog_get_preview_stats(lcm, &stats);
    g_assert_cmpint(stats.finished, ==, 1);
    g_assert_cmpint(stats.fast_decoded, ==, has_taesd);
    destroy_dialog(dialog);
  }
  for (guint i = 0; i < links->len; i++) g_unlink(links->pdata[i]);
  g_ptr_array_unref(links);
  g_rmdir(with_taesd);
}

/* Previews of a model decode through its own family's TAESD in the models
 * folder: taesd/ for SD1.5, taesdxl/ for SDXL, never the other one (both are
 * the tiny TAESD here, which fits either's latents: only the name may tell). */
static void test_preview_decoder_family(void) {
  g_autofree char *taesd = test_data_path("golden/tiny-taesd");
  g_autofree char *sd15 = test_data_path("golden/tiny-lcm");
  g_autofree char *sdxl = test_data_path("golden-sdxl/tiny-sdxl-lcm");
  static const struct {
    const char *folder; /* the TAESD's name in the models folder */
    gboolean sdxl_model;
    int fast;
  } cases[] = {{"taesd", TRUE, 0}, {"taesdxl", TRUE, 1}, {"taesdxl", FALSE, 0}};
  for (size_t i = 0; i < G_N_ELEMENTS(cases); i++) {
    g_autofree char *link = g_build_filename(models_dir, cases[i].folder, NULL);
    g_assert_cmpint(symlink(taesd, link), ==, 0);
    GtkWidget *dialog = new_dialog_sized(cases[i].sdxl_model ? sdxl : sd15, 128, 128);
    LcmDialog *lcm = LCM_DIALOG(dialog);
    gtk_widget_show(dialog);
    wait_for_preview_idle(lcm);
    LcmPreviewStats stats;
    lcm_dialog_get_preview_stats(lcm, &stats);
    g_assert_cmpint(stats.finished, ==, 1);
    g_assert_cmpint(stats.fast_decoded, ==, cases[i].fast);
    destroy_dialog(dialog);
    g_unlink(link);
  }
}

static gboolean find_label(GtkWidget *widget, const char *text) {
  if (GTK_IS_LABEL(widget) && !g_strcmp0(gtk_label_get_label(GTK_LABEL(widget)), text)) return TRUE;
  if (!GTK_IS_CONTAINER(widget)) return FALSE;
  GList *children = gtk_container_get_children(GTK_CONTAINER(widget));
  gboolean found = FALSE;
  for (GList *l = children; l && !found; l = l->next) found = find_label(l->data, text);
  g_list_free(children);
  return found;
}

static GtkWidget *find_named(GtkWidget *widget, const char *name) {
  if (!g_strcmp0(gtk_widget_get_name(widget), name)) return widget;
  if (!GTK_IS_CONTAINER(widget)) return NULL;
  GList *children = gtk_container_get_children(GTK_CONTAINER(widget));
  GtkWidget *found = NULL;
  for (GList *l = children; l && !found; l = l->next) found = find_named(l->data, name);
  g_list_free(children);
  return found;
}

static void on_download_finished(LcmDialog *dialog, gboolean succeeded, gpointer data) {
  (void)dialog;
  *(int *)data = succeeded ? 1 : -1;
}

/* Keeps the download progress texts that state an amount. */
static void on_progress_text(GtkProgressBar *bar, GParamSpec *pspec, gpointer data) {
  (void)pspec;
  const char *text = gtk_progress_bar_get_text(bar);
  if (text && strstr(text, " MB of ")) g_ptr_array_add(data, g_strdup(text));
}

/* A fake Hub serving the tiny model as LCM_Dreamshaper_v7, HF_ENDPOINT
 * pointing at it, and an empty models folder of its own. */
typedef struct {
  FakeHub *server;
  char *models, *saved_endpoint;
} HubSetup;

static void hub_setup_start(HubSetup *setup, FakeHubMode mode) {
  setup->server = fake_hub_start();
  g_autofree char *tiny = lcm_find_data_file("tiny-lcm");
  fake_hub_add_repo(setup->server, "SimianLuo/LCM_Dreamshaper_v7", tiny);
  fake_hub_set_mode(setup->server, mode);
  setup->saved_endpoint = g_strdup(g_getenv("HF_ENDPOINT"));
  g_setenv("HF_ENDPOINT", fake_hub_endpoint(setup->server), TRUE);
  setup->models = g_dir_make_tmp("lcm-dialog-download-XXXXXX", NULL);
  g_setenv("GIMP_LCM_MODELS", setup->models, TRUE);
}

static void hub_setup_stop(HubSetup *setup) {
  g_setenv("HF_ENDPOINT", setup->saved_endpoint, TRUE);
  g_setenv("GIMP_LCM_MODELS", models_dir, TRUE);
  test_remove_tree(setup->models);
  fake_hub_stop(setup->server);
  g_free(setup->models);
  g_free(setup->saved_endpoint);
}

/* As a new user: no model, so the test model; Download on
 * LCM_Dreamshaper_v7 (the tiny model from a Hub on 127.0.0.1), its progress
 * shown, then it is the selected model, previews and generates. */
static void test_download_then_generate(void) {
  HubSetup hub;
  hub_setup_start(&hub, FAKE_HUB_NORMAL);
  const char *models = hub.models;

  LcmSettings settings;
  lcm_settings_init(&settings); /* the default model */
  settings.width = settings.height = 128;
  GtkWidget *dialog = lcm_dialog_new(NULL, &settings, NULL, NULL);
  lcm_settings_clear(&settings);
  LcmDialog *lcm = LCM_DIALOG(dialog);
  lcm_dialog_set_debounce(lcm, TEST_DEBOUNCE_MS);
  gtk_widget_show(dialog);
  wait_for_preview_idle(lcm);

  GtkWidget *choice = find_named(dialog, "lcm-download-choice");
  GtkWidget *button = find_named(dialog, "lcm-download-button");
  GtkWidget *progress = find_named(dialog, "lcm-download-progress");
  g_assert_nonnull(choice);
  g_assert_nonnull(button);
  g_assert_true(gtk_widget_is_visible(button));
  g_assert_true(gtk_combo_box_set_active_id(GTK_COMBO_BOX(choice), "lcm-lora-sdxl"));
  /* The LCM UNets with their base's other parts: offered as one download. */
  g_assert_true(gtk_combo_box_set_active_id(GTK_COMBO_BOX(choice), "lcm-ssd-1b"));
  g_assert_true(gtk_combo_box_set_active_id(GTK_COMBO_BOX(choice), "lcm-sdxl"));
  g_assert_true(gtk_combo_box_set_active_id(GTK_COMBO_BOX(choice), "LCM_Dreamshaper_v7"));
  GPtrArray *texts = g_ptr_array_new_with_free_func(g_free);
  g_signal_connect(progress, "notify::text", G_CALLBACK(on_progress_text), texts);
  int finished = 0;
  g_signal_connect(dialog, "download-finished", G_CALLBACK(on_download_finished), &finished);
  LcmPreviewStats before;
  lcm_dialog_get_preview_stats(lcm, &before);

  gtk_button_clicked(GTK_BUTTON(button));
  g_assert_true(lcm_dialog_download_busy(lcm));
  g_assert_true(gtk_widget_is_visible(progress));
  gint64 limit = g_get_monotonic_time() + WAIT_LIMIT_US;
  while (!finished && g_get_monotonic_time() < limit) g_main_context_iteration(NULL, TRUE);
  g_assert_cmpint(finished, ==, 1);
  g_assert_false(lcm_dialog_download_busy(lcm));
  g_assert_cmpuint(texts->len, >=, 1);
  g_test_message("last progress: %s", (char *)texts->pdata[texts->len - 1]);

  /* The downloaded model is selected and no longer offered. */
  g_autofree char *installed = g_build_filename(models, "LCM_Dreamshaper_v7", NULL);
  LcmSettings shown;
  lcm_settings_init(&shown);
  lcm_dialog_get_settings(lcm, &shown);
  g_assert_cmpstr(shown.model_path, ==, installed);
  g_assert_false(gtk_combo_box_set_active_id(GTK_COMBO_BOX(choice), "LCM_Dreamshaper_v7"));

  /* Its preview, then the host's full-size run with the dialog's pipeline. */
  wait_for_preview_idle(lcm);
  LcmPreviewStats after;
  lcm_dialog_get_preview_stats(lcm, &after);
  g_assert_cmpint(after.finished - before.finished, ==, 1);
  g_assert_cmpint(after.failed, ==, 0);
  LcmPipeline *pipeline = lcm_dialog_take_pipeline(lcm);
  g_assert_nonnull(pipeline);
  LcmPipelineParams params;
  lcm_pipeline_params_init(&params);
  lcm_settings_to_params(&shown, pipeline, 5, &params);
  params.steps = 1;
  GError *error = NULL;
  LcmImage *image = lcm_pipeline_run(pipeline, &params, &error);
  g_assert_no_error(error);
  g_assert_cmpint(image->width, ==, 128);
  g_assert_cmpint(image->height, ==, 128);
  lcm_image_free(image);
  lcm_pipeline_free(pipeline);
  lcm_settings_clear(&shown);
  destroy_dialog(dialog);

  g_ptr_array_unref(texts);
  hub_setup_stop(&hub);
}

/* Cancel during a download from a stalled Hub: it stops, says so, and
 * nothing is installed; the entry is still offered. */
static void test_download_cancel(void) {
  HubSetup hub;
  hub_setup_start(&hub, FAKE_HUB_STALL);
  const char *models = hub.models;

  GtkWidget *dialog = new_test_dialog();
  LcmDialog *lcm = LCM_DIALOG(dialog);
  gtk_widget_show(dialog);
  GtkWidget *choice = find_named(dialog, "lcm-download-choice");
  g_assert_true(gtk_combo_box_set_active_id(GTK_COMBO_BOX(choice), "LCM_Dreamshaper_v7"));
  GPtrArray *texts = g_ptr_array_new_with_free_func(g_free);
  g_signal_connect(find_named(dialog, "lcm-download-progress"), "notify::text",
                   G_CALLBACK(on_progress_text), texts);
  int finished = 0;
  g_signal_connect(dialog, "download-finished", G_CALLBACK(on_download_finished), &finished);
  gtk_button_clicked(GTK_BUTTON(find_named(dialog, "lcm-download-button")));
  gint64 limit = g_get_monotonic_time() + WAIT_LIMIT_US;
  while (texts->len == 0 && g_get_monotonic_time() < limit) g_main_context_iteration(NULL, TRUE);
  g_assert_cmpuint(texts->len, >=, 1); /* the stalled file has started */
  iterate_for(100);
  gtk_button_clicked(GTK_BUTTON(find_named(dialog, "lcm-download-cancel")));
  gint64 cancelled_at = g_get_monotonic_time();
  while (!finished && g_get_monotonic_time() < limit) g_main_context_iteration(NULL, TRUE);
  g_assert_cmpint(finished, ==, -1);
  g_assert_cmpint(g_get_monotonic_time() - cancelled_at, <, G_USEC_PER_SEC / 2);
  g_assert_true(find_label(dialog, "Download cancelled."));
  g_assert_true(gtk_combo_box_set_active_id(GTK_COMBO_BOX(choice), "LCM_Dreamshaper_v7"));
  g_autofree char *installed = g_build_filename(models, "LCM_Dreamshaper_v7", NULL);
  g_assert_false(g_file_test(installed, G_FILE_TEST_EXISTS));
  wait_for_preview_idle(lcm);
  destroy_dialog(dialog);

  g_ptr_array_unref(texts);
  hub_setup_stop(&hub);
}

static void test_japanese(void) {
  if (!have_named_locale) {
    g_test_skip("no UTF-8 locale besides C.UTF-8, where gettext ignores LANGUAGE");
    return;
  }
  g_setenv("LANGUAGE", "ja", TRUE);
  LcmSettings settings;
  lcm_settings_init(&settings);
  GtkWidget *dialog = lcm_dialog_new(NULL, &settings, NULL, NULL);
  g_unsetenv("LANGUAGE");
  g_assert_cmpstr(gtk_window_get_title(GTK_WINDOW(dialog)), ==, "LCM で生成");
  g_assert_true(find_label(dialog, "ネガティブプロンプト(_N)"));
  g_assert_true(find_label(dialog, "シード(_E)"));
  g_assert_false(find_label(dialog, "_Negative prompt"));
  destroy_dialog(dialog);
}

int main(int argc, char **argv) {
  use_named_utf8_locale();
  g_unsetenv("LANGUAGE");
  models_dir = g_dir_make_tmp("lcm-dialog-models-XXXXXX", NULL);
  g_setenv("GIMP_LCM_MODELS", models_dir, TRUE); /* empty: the dialog explains */
  g_unsetenv("http_proxy");                      /* the fake Hub is on 127.0.0.1 */
  g_setenv("no_proxy", "127.0.0.1", TRUE);
  /* Not gtk_test_init: it forces en_US.UTF-8, which may not exist here. */
  g_test_init(&argc, &argv, NULL);
  gtk_init(&argc, &argv);
  /* Keep Xvfb's pointer off the dialog, so no tooltip covers the screenshot. */
  GdkDisplay *display = gdk_display_get_default();
  GdkRectangle screen;
  gdk_monitor_get_geometry(gdk_display_get_monitor(display, 0), &screen);
  gdk_device_warp(gdk_seat_get_pointer(gdk_display_get_default_seat(display)),
                  gdk_display_get_default_screen(display), screen.width - 1, screen.height - 1);
  gdk_display_flush(display);
  lcm_dialog_init_i18n(g_getenv("LCM_TEST_LOCALEDIR"));
  g_test_add_func("/dialog/loras-string", test_loras_string);
  g_test_add_func("/dialog/settings-round-trip", test_settings_round_trip);
  g_test_add_func("/dialog/typing-starts-one-preview", test_typing_starts_one_preview);
  g_test_add_func("/dialog/typing-cancels-stale-preview", test_typing_cancels_stale_preview);
  g_test_add_func("/dialog/slow-cpu-quick-preview", test_slow_cpu_quick_preview);
  g_test_add_func("/dialog/clip-skip-preview", test_clip_skip_preview);
  g_test_add_func("/dialog/family-sizes", test_family_sizes);
  g_test_add_func("/dialog/sdxl-native-size", test_sdxl_native_size);
  g_test_add_func("/dialog/preview-decoder", test_preview_decoder);
  g_test_add_func("/dialog/preview-decoder-family", test_preview_decoder_family);
  g_test_add_func("/dialog/screenshot", test_screenshot);
  g_test_add_func("/dialog/japanese", test_japanese);
  g_test_add_func("/dialog/download-then-generate", test_download_then_generate);
  g_test_add_func("/dialog/download-cancel", test_download_cancel);
  int status = g_test_run();
  g_rmdir(models_dir);
  g_free(models_dir);
  remove_locale_dir();
  return status;
}
