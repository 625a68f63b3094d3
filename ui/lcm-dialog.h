/* gimp-lcm dialog: the host-agnostic GTK 3 front end.
 *
 * Depends on GTK 3 and the core (lcm.h) only, never on libgimp: the GIMP
 * plug-in calls gimp_ui_init() first (so the dialog follows GIMP's theme),
 * fills an LcmSettings from its stored settings, runs the dialog, and then
 * generates the full-size result itself with the settings the dialog returns.
 *
 * While the dialog is open it shows a live preview: a debounced (default
 * 200 ms) low-resolution generation after each change, one at a time on a
 * worker thread; a change while one runs cancels it. The dialog never makes
 * the full-size image; lcm_dialog_take_pipeline() hands the host the already
 * loaded pipeline so it need not load the model again.
 *
 * Strings are translated through the gettext domain "gimp-lcm"; call
 * lcm_dialog_init_i18n() once before creating a dialog.
 */
#pragma once

#include <gtk/gtk.h>

#include "lcm.h"

G_BEGIN_DECLS

#define LCM_GETTEXT_DOMAIN "gimp-lcm"

typedef enum {
  LCM_OUTPUT_NEW_LAYER, /* put the result on a new layer above the source */
  LCM_OUTPUT_REPLACE,   /* overwrite the source drawable */
} LcmOutput;

typedef enum {
  LCM_DEVICE_CPU,
  LCM_DEVICE_GPU, /* only when lcm_gpu_available(); the core runs on CPU otherwise */
} LcmDevice;

#define LCM_SETTINGS_MIN_STEPS 1
#define LCM_SETTINGS_MAX_STEPS 8
/* CLIP skip's range in the dialog and Script-Fu: SD1.5's CLIP ViT-L has 12
 * layers; the core refuses a skip beyond a model's own depth. */
#define LCM_SETTINGS_MAX_CLIP_SKIP 12

/* Everything the user chooses. Strings are owned by the struct (g_strdup'd):
 * fill one with lcm_settings_init(), free with lcm_settings_clear(). */
typedef struct {
  LcmMode mode;
  char *prompt;
  char *negative_prompt;
  /* A diffusers folder or .safetensors checkpoint, or any name lcm_resolve
   * takes; NULL or "" = the default model (lcm_default_model). */
  char *model_path;
  /* LoRAs merged in this order: "file:scale;file:scale", each file a path or
   * a name lcm_resolve takes (the scale follows
   * the LAST ':' of each entry, so paths may contain ':'); NULL or "" = none. */
  char *loras;
  int steps;              /* LCM_SETTINGS_MIN_STEPS..LCM_SETTINGS_MAX_STEPS, default 4 */
  double guidance;        /* <= 0: the model's default (lcm_pipeline_default_guidance) */
  int clip_skip;          /* 0 = off; N: the prompt from N text-encoder layers before the last */
  double strength;        /* img2img / inpaint, (0, 1], default 0.6 */
  gint64 seed;            /* -1 = a new random seed for each run; else 0..2^32-1 */
  int width, height;      /* txt2img output size, multiples of 8, default 512 */
  LcmPrecision precision; /* default AUTO */
  LcmDevice device;       /* default CPU */
  LcmOutput output;       /* default NEW_LAYER */
} LcmSettings;

/* The defaults listed above. */
void lcm_settings_init(LcmSettings *settings);
/* Frees the strings and resets to the defaults. */
void lcm_settings_clear(LcmSettings *settings);
/* dst (initialised or cleared) becomes a deep copy of src. */
void lcm_settings_copy(LcmSettings *dst, const LcmSettings *src);

/* One LoRA of the settings' `loras` string. */
typedef struct {
  char *path;
  double scale;
} LcmLoraEntry;

/* Parses "file:scale;file:scale" into an array of LcmLoraEntry (with a
 * clear-func that frees the paths; g_array_unref it). An entry without
 * ":scale" has scale 1. NULL with LCM_ERROR_INVALID for a malformed scale. */
GArray *lcm_loras_parse(const char *loras, GError **error);
/* The inverse: "file:scale;..." (scales printed with "%g", C locale). */
char *lcm_loras_format(const GArray *entries);

/* Opens the settings' model (or the default one), merges its LoRAs and
 * loads the pipeline at its precision. *is_test_model (may be NULL) tells
 * whether the bundled tiny test model was used. */
LcmPipeline *lcm_settings_load_pipeline(const LcmSettings *settings, gboolean *is_test_model,
                                        GError **error);
/* What a pipeline loaded by lcm_settings_load_pipeline depends on (model,
 * LoRAs, precision): settings with the same key can reuse it (g_free it). */
char *lcm_settings_pipeline_key(const LcmSettings *settings);
/* The seed a run uses: settings->seed, or a fresh random 32-bit one for -1. */
uint64_t lcm_settings_resolve_seed(const LcmSettings *settings);
/* Fills params (after lcm_pipeline_params_init) from the settings: mode,
 * prompts, steps, guidance (the pipeline's default when <= 0), CLIP skip,
 * strength, size, seed. image and mask stay for the caller to set; the strings point
 * into settings, which must outlive params. */
void lcm_settings_to_params(const LcmSettings *settings, const LcmPipeline *pipeline, uint64_t seed,
                            LcmPipelineParams *params);

/* ---- Model families: native sizes ------------------------------------------- */

/* The side a family was trained at: 512 (SD1.5), 1024 (SDXL, SSD-1B). */
int lcm_family_native_side(LcmModelFamily family);

typedef struct {
  int width, height;
} LcmSize;

/* The family's aspect-ratio presets, the native square first; *count gets
 * their number. */
const LcmSize *lcm_family_sizes(LcmModelFamily family, size_t *count);

/* A size made for the other family (more pixels than SD1.5's largest working
 * size, 768 x 768, for SD1.5; as many or fewer for SDXL) becomes this
 * family's preset nearest in aspect ratio; other sizes stay. */
void lcm_family_fit_size(LcmModelFamily family, int *width, int *height);

/* The family of the settings' model (or of the default model), from its
 * headers only. */
gboolean lcm_settings_model_family(const LcmSettings *settings, LcmModelFamily *family,
                                   GError **error);

/* A copy of image resampled (area-averaged when shrinking, bilinear when
 * growing) to width x height, same channels. */
LcmImage *lcm_image_resize(const LcmImage *image, int width, int height);

/* ---- The dialog -------------------------------------------------------------- */

#define LCM_TYPE_DIALOG (lcm_dialog_get_type())
G_DECLARE_FINAL_TYPE(LcmDialog, lcm_dialog, LCM, DIALOG, GtkDialog)

/* Binds the "gimp-lcm" gettext domain to locale_dir (NULL = the installed
 * locale folder) with UTF-8 output. Safe to call more than once. */
void lcm_dialog_init_i18n(const char *locale_dir);

/* A new dialog. initial: the settings to show (NULL = defaults). source: the
 * RGB image for img2img / inpaint, any size (NULL = txt2img only: the other
 * modes are insensitive). mask: 1 channel, source's size, 1 = repaint (NULL
 * = inpaint unavailable). The images are copied. */
GtkWidget *lcm_dialog_new(GtkWindow *parent, const LcmSettings *initial, const LcmImage *source,
                          const LcmImage *mask);

/* Runs the dialog modally. TRUE when the user pressed Generate; then *out
 * (initialised or cleared) receives the settings. The dialog stays alive (so
 * lcm_dialog_take_pipeline can be called); gtk_widget_destroy it after. */
gboolean lcm_dialog_run(LcmDialog *dialog, LcmSettings *out);

/* The current settings shown by the dialog; *out as above. */
void lcm_dialog_get_settings(LcmDialog *dialog, LcmSettings *out);

/* The pipeline the preview loaded, if it was loaded for the model, LoRAs and
 * precision of the current settings (else NULL). Stops any preview first;
 * ownership passes to the caller (lcm_pipeline_free). Its caches already hold
 * the current prompt's embeddings. */
LcmPipeline *lcm_dialog_take_pipeline(LcmDialog *dialog);

/* ---- Hooks for test hosts ---------------------------------------------------- */

/* Counts of preview generations since the dialog was created. "finished"
 * counts runs that produced an image, "fast_decoded" those of them whose
 * picture came from TAESD rather than the VAE (the model has TAESD weights);
 * "cancelled" runs stopped because the settings changed (or the preview was
 * stopped); "failed" runs that hit an error (shown in the dialog); "updated"
 * the pictures shown (each step's and each result); "quick" the runs made
 * smaller than the preview size because the measured speed would not show a
 * first picture in time (each stops after its first step's picture, and
 * counts as finished then; a full-size one follows when the user pauses). The signals
 * "preview-started", "preview-updated", "preview-finished", "preview-cancelled" and
 * "preview-failed" (no arguments, emitted on the main thread) fire as the counters change. */
typedef struct {
  int started, finished, fast_decoded, cancelled, failed, updated, quick;
} LcmPreviewStats;

void lcm_dialog_get_preview_stats(LcmDialog *dialog, LcmPreviewStats *stats);
/* Whether a download started with the dialog's Download… button runs. When
 * it ends, the signal "download-finished" (gboolean succeeded; main thread)
 * fires, after the lists show what it installed. The download's widgets are
 * named lcm-download-choice (the entries not present), lcm-download-button,
 * lcm-download-progress and lcm-download-cancel (gtk_widget_get_name). */
gboolean lcm_dialog_download_busy(LcmDialog *dialog);
/* Delay between the last change and the preview starting (default 200 ms). */
void lcm_dialog_set_debounce(LcmDialog *dialog, guint milliseconds);
/* The time from the last change to the first preview picture (debounce
 * included) that quick previews aim at; 0 = the default (0.5 s where the
 * preview computes in bf16, 1 s otherwise). */
void lcm_dialog_set_first_picture_target(LcmDialog *dialog, double seconds);
/* Whether a preview is pending (debounce running) or being generated. */
gboolean lcm_dialog_preview_busy(LcmDialog *dialog);
/* The prompt's text buffer, for hosts and tests that type into it. */
GtkTextBuffer *lcm_dialog_get_prompt_buffer(LcmDialog *dialog);

G_END_DECLS
