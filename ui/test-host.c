/* lcm-dialog-host: runs the generation dialog without GIMP.
 *
 *   lcm-dialog-host [--model PATH] [--image PNG [--mask PNG]] [--prompt TEXT]
 *                   [--output PNG] [--auto-ok MS] [--locale-dir DIR]
 *
 * Shows the dialog on the given model and source image; on Generate it runs
 * the full-size generation the way a host does (reusing the dialog's
 * pipeline) and writes the result to --output. --auto-ok presses Generate
 * after MS milliseconds, for scripted runs. */
#include "lcm-dialog.h"

#define GETTEXT_PACKAGE LCM_GETTEXT_DOMAIN
#include <glib/gi18n-lib.h>

#include <math.h>

static LcmImage *image_from_pixbuf(GdkPixbuf *pixbuf, int channels) {
  int width = gdk_pixbuf_get_width(pixbuf), height = gdk_pixbuf_get_height(pixbuf);
  int stride = gdk_pixbuf_get_rowstride(pixbuf), n = gdk_pixbuf_get_n_channels(pixbuf);
  const guchar *pixels = gdk_pixbuf_read_pixels(pixbuf);
  LcmImage *image = lcm_image_new(width, height, channels);
  for (int y = 0; y < height; y++)
    for (int x = 0; x < width; x++)
      for (int c = 0; c < channels; c++)
        image->data[((size_t)y * width + x) * channels + c] =
            pixels[y * stride + x * n + c] / 255.0f;
  return image;
}

static LcmImage *load_image(const char *path, int channels, GError **error) {
  g_autoptr(GdkPixbuf) pixbuf = gdk_pixbuf_new_from_file(path, error);
  return pixbuf ? image_from_pixbuf(pixbuf, channels) : NULL;
}

static gboolean save_image(const LcmImage *image, const char *path, GError **error) {
  g_autoptr(GdkPixbuf) pixbuf =
      gdk_pixbuf_new(GDK_COLORSPACE_RGB, FALSE, 8, image->width, image->height);
  int stride = gdk_pixbuf_get_rowstride(pixbuf);
  guchar *pixels = gdk_pixbuf_get_pixels(pixbuf);
  for (int y = 0; y < image->height; y++)
    for (int x = 0; x < image->width; x++)
      for (int c = 0; c < 3; c++) {
        float v = image->data[((size_t)y * image->width + x) * 3 + c];
        pixels[y * stride + x * 3 + c] = (guchar)lrintf(CLAMP(v, 0.0f, 1.0f) * 255.0f);
      }
  return gdk_pixbuf_save(pixbuf, path, "png", error, NULL);
}

static gboolean press_generate(gpointer dialog) {
  gtk_dialog_response(GTK_DIALOG(dialog), GTK_RESPONSE_OK);
  return G_SOURCE_REMOVE;
}

/* The full-size run a host makes after the dialog. Sides are cropped down to
 * multiples of 8, as the pipeline needs. */
static LcmImage *generate(LcmDialog *dialog, const LcmSettings *settings, LcmImage *source,
                          LcmImage *mask, GError **error) {
  LcmPipeline *pipeline = lcm_dialog_take_pipeline(dialog);
  if (!pipeline) pipeline = lcm_settings_load_pipeline(settings, NULL, error);
  if (!pipeline) return NULL;
  LcmPipelineParams params;
  lcm_pipeline_params_init(&params);
  lcm_settings_to_params(settings, pipeline, lcm_settings_resolve_seed(settings), &params);
  LcmImage *sized_source = NULL, *sized_mask = NULL;
  if (settings->mode != LCM_MODE_TXT2IMG && source) {
    int width = source->width / 8 * 8, height = source->height / 8 * 8;
    params.image = sized_source = lcm_image_resize(source, width, height);
    if (mask) params.mask = sized_mask = lcm_image_resize(mask, width, height);
  }
  LcmImage *result = lcm_pipeline_run(pipeline, &params, error);
  if (result && settings->mode == LCM_MODE_INPAINT &&
      !lcm_image_composite(result, sized_source, sized_mask, error))
    g_clear_pointer(&result, lcm_image_free);
  lcm_image_free(sized_source);
  lcm_image_free(sized_mask);
  lcm_pipeline_free(pipeline);
  return result;
}

int main(int argc, char **argv) {
  g_autofree char *model = NULL, *image_path = NULL, *mask_path = NULL, *prompt = NULL;
  g_autofree char *output = NULL, *locale_dir = NULL;
  int auto_ok_ms = 0;
  GOptionEntry entries[] = {
      {"model", 0, 0, G_OPTION_ARG_FILENAME, &model, "Model folder or .safetensors", "PATH"},
      {"image", 0, 0, G_OPTION_ARG_FILENAME, &image_path, "Source image (img2img)", "PNG"},
      {"mask", 0, 0, G_OPTION_ARG_FILENAME, &mask_path, "Mask, white = repaint", "PNG"},
      {"prompt", 0, 0, G_OPTION_ARG_STRING, &prompt, "Initial prompt", "TEXT"},
      {"output", 0, 0, G_OPTION_ARG_FILENAME, &output, "Where to write the result", "PNG"},
      {"auto-ok", 0, 0, G_OPTION_ARG_INT, &auto_ok_ms, "Press Generate after MS ms", "MS"},
      {"locale-dir", 0, 0, G_OPTION_ARG_FILENAME, &locale_dir, "Translations folder", "DIR"},
      {NULL, 0, 0, 0, NULL, NULL, NULL},
  };
  GError *error = NULL;
  if (!gtk_init_with_args(&argc, &argv, NULL, entries, NULL, &error)) {
    g_printerr("%s\n", error->message);
    return 2;
  }
  lcm_dialog_init_i18n(locale_dir);

  LcmImage *source = NULL, *mask = NULL;
  if (image_path && !(source = load_image(image_path, 3, &error))) goto fail;
  if (mask_path && !(mask = load_image(mask_path, 1, &error))) goto fail;

  LcmSettings settings;
  lcm_settings_init(&settings);
  settings.model_path = g_strdup(model);
  settings.prompt = g_strdup(prompt);
  if (source) settings.mode = mask ? LCM_MODE_INPAINT : LCM_MODE_IMG2IMG;

  GtkWidget *dialog = lcm_dialog_new(NULL, &settings, source, mask);
  if (auto_ok_ms > 0) g_timeout_add(auto_ok_ms, press_generate, dialog);
  gboolean accepted = lcm_dialog_run(LCM_DIALOG(dialog), &settings);
  LcmImage *result = NULL;
  if (accepted) {
    g_print("mode=%d steps=%d guidance=%g strength=%g seed=%" G_GINT64_FORMAT
            " size=%dx%d model=%s loras=%s\n",
            settings.mode, settings.steps, settings.guidance, settings.strength, settings.seed,
            settings.width, settings.height, settings.model_path,
            settings.loras ? settings.loras : "");
    if (output) result = generate(LCM_DIALOG(dialog), &settings, source, mask, &error);
  }
  gtk_widget_destroy(dialog);
  while (g_main_context_iteration(NULL, FALSE)) continue;
  gboolean saved = !accepted || !output || (result && save_image(result, output, &error));
  lcm_image_free(result);
  lcm_settings_clear(&settings);
  lcm_image_free(source);
  lcm_image_free(mask);
  if (saved) return accepted ? 0 : 1;
fail:
  g_printerr("lcm-dialog-host: %s\n", error->message);
  g_error_free(error);
  return 2;
}
