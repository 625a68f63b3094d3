/* gimp-lcm: the GIMP 3 plug-in. Three image procedures under
 * Filters ▸ Generative (text to image, image to image, inpainting) whose
 * arguments are the settings GIMP stores as last values; the interactive
 * run shows the ui/ dialog, the others run on their arguments. */
#include "canvas.h"
#include "generation.h"
#include "resident.h"

#include <libgimp/gimp.h>
#include <libgimp/gimpui.h>

#define GETTEXT_PACKAGE LCM_GETTEXT_DOMAIN
#include <glib/gi18n-lib.h>

#define PLUG_IN_BINARY "gimp-lcm"
#define MENU_PATH "<Image>/Filters/Generative"
/* Layer names show this much of the prompt. */
#define LAYER_NAME_PROMPT_CHARS 32

typedef struct {
  const char *name;
  LcmMode mode;
  const char *menu_label, *blurb, *help;
  int sensitivity;
  double default_strength; /* img2img and inpaint */
} ProcedureInfo;

static const ProcedureInfo procedure_infos[] = {
    {"plug-in-lcm-txt2img", LCM_MODE_TXT2IMG, N_("_Text to Image (LCM)…"),
     N_("Generate a picture from a text prompt with a Latent Consistency Model"),
     N_("Makes a new picture of width × height pixels from the prompt, in a few steps, with a "
        "Latent Consistency Model (SD 1.5, SDXL or SSD-1B, or one of them with LCM-LoRA) running "
        "on the CPU. The picture goes on a new layer at the image's top left corner, above the "
        "selected layer, or replaces the selected layer's pixels (scaled to the layer, through "
        "the selection)."),
     GIMP_PROCEDURE_SENSITIVE_DRAWABLE | GIMP_PROCEDURE_SENSITIVE_NO_DRAWABLES, 0},
    {"plug-in-lcm-img2img", LCM_MODE_IMG2IMG, N_("_Image to Image (LCM)…"),
     N_("Redraw a layer, or its selected part, following a text prompt"),
     N_("Redraws the selected layer following the prompt; strength says how much changes. With "
        "a selection only the selected part (and some context around it) is redrawn and blended "
        "in through the selection. Large areas are scaled down for the model and back, to at "
        "most 1.5 times its native size (768 pixels for SD 1.5, 1536 for SDXL). The result goes on "
        "a new layer above the layer or replaces its "
        "pixels."),
     GIMP_PROCEDURE_SENSITIVE_DRAWABLE, 0.6},
    {"plug-in-lcm-inpaint", LCM_MODE_INPAINT, N_("In_paint Selection (LCM)…"),
     N_("Repaint the selected part of a layer following a text prompt"),
     N_("Repaints the selection of the selected layer following the prompt; feathered edges "
        "blend softly and pixels outside the selection stay exactly as they were. The "
        "selection with some context around it is scaled to the model's working size (512 to "
        "768 pixels for SD 1.5, 1024 to 1536 for SDXL) and back. The result goes on a new layer "
        "above the layer or replaces its "
        "pixels."),
     GIMP_PROCEDURE_SENSITIVE_DRAWABLE, 1.0},
};

#define LCM_TYPE_PLUG_IN (lcm_plug_in_get_type())
G_DECLARE_FINAL_TYPE(LcmPlugIn, lcm_plug_in, LCM, PLUG_IN, GimpPlugIn)

struct _LcmPlugIn {
  GimpPlugIn parent_instance;
};

G_DEFINE_TYPE(LcmPlugIn, lcm_plug_in, GIMP_TYPE_PLUG_IN)

static const ProcedureInfo *find_procedure(const char *name) {
  for (size_t i = 0; i < G_N_ELEMENTS(procedure_infos); i++)
    if (g_strcmp0(procedure_infos[i].name, name) == 0) return &procedure_infos[i];
  return NULL;
}

static gboolean config_has(GimpProcedureConfig *config, const char *property) {
  return g_object_class_find_property(G_OBJECT_GET_CLASS(config), property) != NULL;
}

/* The LoRAs' names (catalogue names, cached Hub repo ids, names in the models
 * folder, paths) as paths, as the settings keep them. */
static gboolean resolve_loras(LcmSettings *settings, GError **error) {
  g_autoptr(GArray) loras = lcm_loras_parse(settings->loras, error);
  if (!loras) return FALSE;
  for (guint i = 0; i < loras->len; i++) {
    LcmLoraEntry *entry = &g_array_index(loras, LcmLoraEntry, i);
    char *resolved = lcm_resolve(entry->path, LCM_ASSET_LORA, NULL, error);
    if (!resolved) return FALSE;
    g_free(entry->path);
    entry->path = resolved;
  }
  g_free(settings->loras);
  settings->loras = lcm_loras_format(loras);
  return TRUE;
}

/* The procedure's arguments as settings; the precision comes from
 * $GIMP_LCM_PRECISION (fp32, bf16 or auto; GIMP passes its environment on). */
static gboolean settings_from_config(GimpProcedureConfig *config, LcmMode mode,
                                     LcmSettings *settings, GError **error) {
  lcm_settings_init(settings);
  settings->mode = mode;
  double seed;
  int output;
  g_autofree char *model = NULL;
  g_object_get(config, "prompt", &settings->prompt, "negative-prompt", &settings->negative_prompt,
               "model", &model, "loras", &settings->loras, "steps", &settings->steps, "guidance",
               &settings->guidance, "clip-skip", &settings->clip_skip, "seed", &seed, "output",
               &output, NULL);
  /* "" keeps the default model; anything else resolves now, failing early. */
  if (model && *model && !(settings->model_path = lcm_resolve(model, LCM_ASSET_MODEL, NULL, error)))
    return FALSE;
  settings->seed = (gint64)seed;
  settings->output = output ? LCM_OUTPUT_REPLACE : LCM_OUTPUT_NEW_LAYER;
  if (config_has(config, "width"))
    g_object_get(config, "width", &settings->width, "height", &settings->height, NULL);
  if (config_has(config, "strength")) g_object_get(config, "strength", &settings->strength, NULL);
  const char *precision = g_getenv("GIMP_LCM_PRECISION");
  if (precision && !lcm_precision_parse(precision, &settings->precision, error)) {
    g_prefix_error(error, "GIMP_LCM_PRECISION: ");
    return FALSE;
  }
  return resolve_loras(settings, error);
}

/* What the dialog chose, stored as the procedure's last values. */
static void settings_to_config(const LcmSettings *settings, GimpProcedureConfig *config) {
  g_object_set(config, "prompt", settings->prompt, "negative-prompt", settings->negative_prompt,
               "model", settings->model_path, "loras", settings->loras, "steps", settings->steps,
               "guidance", settings->guidance, "clip-skip", settings->clip_skip, "seed",
               (double)settings->seed, "output", settings->output == LCM_OUTPUT_REPLACE, NULL);
  if (config_has(config, "width"))
    g_object_set(config, "width", settings->width, "height", settings->height, NULL);
  if (config_has(config, "strength")) g_object_set(config, "strength", settings->strength, NULL);
}

/* "LCM: a cat in a hat… (seed 42)". */
static char *layer_name(const char *prompt, uint64_t seed) {
  g_autofree char *seed_text = g_strdup_printf("%" G_GUINT64_FORMAT, seed);
  g_autofree char *text = g_strdup(prompt ? prompt : "");
  g_strdelimit(g_strstrip(text), "\r\n\t", ' ');
  if (!*text) return g_strdup_printf(_("LCM (seed %s)"), seed_text);
  if (g_utf8_strlen(text, -1) > LAYER_NAME_PROMPT_CHARS) {
    g_autofree char *start = g_utf8_substring(text, 0, LAYER_NAME_PROMPT_CHARS);
    g_free(text);
    text = g_strconcat(g_strchomp(start), "…", NULL);
  }
  return g_strdup_printf(_("LCM: %s (seed %s)"), text, seed_text);
}

/* Reads the pixels, runs the model and puts the result into the image.
 * pipeline: the caller's, or NULL to load one. The image changes only on
 * success. */
static GimpLayer *generate(GimpImage *image, GimpDrawable **drawables, const LcmSettings *settings,
                           LcmPipeline *pipeline, gboolean interactive, GError **error) {
  LcmCanvas canvas;
  LcmModelFamily family;
  if (!lcm_settings_model_family(settings, &family, error) ||
      !lcm_canvas_init(&canvas, image, drawables, settings->mode, settings->output, settings->width,
                       settings->height, lcm_family_native_side(family), error))
    return NULL;
  LcmImage *source = lcm_canvas_work_source(&canvas);
  LcmImage *mask = lcm_canvas_work_mask(&canvas);
  uint64_t seed = lcm_settings_resolve_seed(settings);
  LcmImage *result = lcm_generation_run(settings, pipeline, seed, source, mask, interactive, error);
  GimpLayer *layer = NULL;
  if (result) {
    g_autofree char *name = layer_name(settings->prompt, seed);
    layer = lcm_canvas_apply(&canvas, result, name, error);
    lcm_image_free(result);
  }
  if (source) lcm_image_free(source);
  if (mask) lcm_image_free(mask);
  lcm_canvas_clear(&canvas);
  return layer;
}

/* Shows the dialog on the area the run will repaint. TRUE on Generate, with
 * the chosen settings (also stored in config) and the pipeline the preview
 * loaded, if any. FALSE with error unset when the user cancelled. */
static gboolean run_dialog(GimpImage *image, GimpDrawable **drawables, GimpProcedureConfig *config,
                           LcmSettings *settings, LcmPipeline **pipeline, GError **error) {
  LcmImage *source = NULL, *mask = NULL;
  if (settings->mode != LCM_MODE_TXT2IMG) {
    /* The preview's source at the stored model's working size; a model that
     * does not open is the dialog's to report (SD1.5's size meanwhile). */
    LcmModelFamily family = LCM_FAMILY_SD15;
    lcm_settings_model_family(settings, &family, NULL);
    LcmCanvas canvas;
    if (!lcm_canvas_init(&canvas, image, drawables, settings->mode, settings->output, 0, 0,
                         lcm_family_native_side(family), error))
      return FALSE;
    source = lcm_canvas_work_source(&canvas);
    mask = lcm_canvas_work_mask(&canvas);
    lcm_canvas_clear(&canvas);
  }
  gimp_ui_init(PLUG_IN_BINARY);
  GtkWidget *dialog = lcm_dialog_new(NULL, settings, source, mask);
  gimp_window_set_transient(GTK_WINDOW(dialog));
  gboolean accepted = lcm_dialog_run(LCM_DIALOG(dialog), settings);
  if (accepted) {
    *pipeline = lcm_dialog_take_pipeline(LCM_DIALOG(dialog));
    settings_to_config(settings, config);
  }
  gtk_widget_destroy(dialog);
  if (source) lcm_image_free(source);
  if (mask) lcm_image_free(mask);
  return accepted;
}

/* Runs both the procedures and their twins in the resident process (the
 * temporary procedures); the procedures forward non-interactive runs to the
 * twins when the resident serves them. */
static GimpValueArray *run(GimpProcedure *procedure, GimpRunMode run_mode, GimpImage *image,
                           GimpDrawable **drawables, GimpProcedureConfig *config,
                           gpointer run_data) {
  const ProcedureInfo *info = run_data;
  const gboolean twin = gimp_procedure_get_proc_type(procedure) == GIMP_PDB_PROC_TYPE_TEMPORARY;
  const gboolean interactive = run_mode == GIMP_RUN_INTERACTIVE && !twin;
  if (twin && !lcm_resident_begin()) return lcm_resident_busy_values(procedure);
  if (!twin && !interactive) {
    GimpValueArray *forwarded = lcm_resident_forward(procedure, config, image, drawables);
    if (forwarded) return forwarded;
  }
  GError *error = NULL;
  LcmSettings settings;
  LcmPipeline *dialog_pipeline = NULL, *pipeline = NULL;
  GimpLayer *layer = NULL;
  gboolean proceed = settings_from_config(config, info->mode, &settings, &error);
  if (proceed && interactive)
    proceed = run_dialog(image, drawables, config, &settings, &dialog_pipeline, &error);
  pipeline = dialog_pipeline;
  if (proceed && twin) proceed = (pipeline = lcm_resident_pipeline(&settings, &error)) != NULL;
  if (proceed) layer = generate(image, drawables, &settings, pipeline, interactive, &error);
  if (dialog_pipeline) lcm_pipeline_free(dialog_pipeline);
  lcm_settings_clear(&settings);
  if (twin) lcm_resident_end();

  if (!layer && (!error || g_error_matches(error, LCM_ERROR, LCM_ERROR_CANCELLED))) {
    g_clear_error(&error);
    return gimp_procedure_new_return_values(procedure, GIMP_PDB_CANCEL, NULL);
  }
  if (!layer) return gimp_procedure_new_return_values(procedure, GIMP_PDB_EXECUTION_ERROR, error);
  GimpValueArray *values = gimp_procedure_new_return_values(procedure, GIMP_PDB_SUCCESS, NULL);
  GIMP_VALUES_SET_LAYER(values, 1, layer);
  return values;
}

static void add_arguments(GimpProcedure *procedure, const ProcedureInfo *info) {
  gimp_procedure_add_string_argument(procedure, "prompt", _("_Prompt"), _("What the picture shows"),
                                     "", G_PARAM_READWRITE);
  gimp_procedure_add_string_argument(
      procedure, "negative-prompt", _("_Negative prompt"),
      _("What the picture should not show (used only with classifier-free guidance: SD 1.5 "
        "with LCM-LoRA and guidance above 1)"),
      "", G_PARAM_READWRITE);
  gimp_procedure_add_string_argument(
      procedure, "model", _("_Model"),
      _("A diffusers model folder or a .safetensors checkpoint: a path, a name in the models "
        "folder ($GIMP_LCM_MODELS, else ~/.local/share/gimp-lcm/models), a catalogue name "
        "(LCM_Dreamshaper_v7) or a Hub repository id in the Hugging Face cache. Empty: the "
        "first model there, else a catalogue model in the cache, else the bundled tiny test "
        "model"),
      "", G_PARAM_READWRITE);
  gimp_procedure_add_string_argument(
      procedure, "loras", _("_LoRAs"),
      _("LoRAs merged in order, as \"lora:scale;lora:scale\": each a file, a name in the "
        "models folder, a catalogue name (lcm-lora-sdv1-5) or a Hub repository id in the Hugging "
        "Face cache; no scale means 1. Empty: none"),
      "", G_PARAM_READWRITE);
  gimp_procedure_add_int_argument(
      procedure, "steps", _("_Steps"), _("Denoising steps: 2 to 8 suit LCM models"),
      LCM_SETTINGS_MIN_STEPS, LCM_SETTINGS_MAX_STEPS, 4, G_PARAM_READWRITE);
  gimp_procedure_add_double_argument(
      procedure, "guidance", _("_Guidance"),
      _("Guidance scale; 0 = the model's default (8 for LCM models, 1 for SD 1.5 with "
        "LCM-LoRA)"),
      0.0, 20.0, 0.0, G_PARAM_READWRITE);
  gimp_procedure_add_int_argument(
      procedure, "clip-skip", _("CLIP s_kip"),
      _("0 = off; N reads the prompt N text-encoder layers before the last (some SD 1.5 "
        "checkpoints ask for 1)"),
      0, LCM_SETTINGS_MAX_CLIP_SKIP, 0, G_PARAM_READWRITE);
  gimp_procedure_add_double_argument(
      procedure, "seed", _("S_eed"),
      _("Random seed, a whole number from 0 to 4294967295 (the same seed gives the same "
        "picture); -1 = a new random seed each run"),
      -1.0, 4294967295.0, -1.0, G_PARAM_READWRITE);
  if (info->mode == LCM_MODE_TXT2IMG) {
    gimp_procedure_add_int_argument(procedure, "width", _("_Width"),
                                    _("Width of the picture, a multiple of 8"), 8, 2048, 512,
                                    G_PARAM_READWRITE);
    gimp_procedure_add_int_argument(procedure, "height", _("_Height"),
                                    _("Height of the picture, a multiple of 8"), 8, 2048, 512,
                                    G_PARAM_READWRITE);
  } else {
    gimp_procedure_add_double_argument(
        procedure, "strength", _("St_rength"),
        _("How much changes: near 0 keeps the picture, 1 repaints it from noise"), 0.01, 1.0,
        info->default_strength, G_PARAM_READWRITE);
  }
  gimp_procedure_add_int_argument(
      procedure, "output", _("_Output"),
      _("0 = a new layer above the layer, 1 = replace the layer's pixels"), 0, 1, 0,
      G_PARAM_READWRITE);
  gimp_procedure_add_layer_return_value(procedure, "layer", _("Layer"),
                                        _("The new layer, or the changed one"), FALSE,
                                        G_PARAM_READWRITE);
}

static GList *query_procedures(GimpPlugIn *plug_in) {
  (void)plug_in;
  GList *names = NULL;
  for (size_t i = 0; i < G_N_ELEMENTS(procedure_infos); i++)
    names = g_list_append(names, g_strdup(procedure_infos[i].name));
  return g_list_append(names, g_strdup(LCM_RESIDENT_PROCEDURE));
}

/* A procedure of the plug-in (type PLUGIN, in the menu) or its twin in the
 * resident process (TEMPORARY, under the twin's name, no menu path: the
 * menu label names its undo step). */
static GimpProcedure *new_image_procedure(GimpPlugIn *plug_in, const ProcedureInfo *info,
                                          GimpPDBProcType type) {
  g_autofree char *twin_name = NULL;
  const char *name = info->name;
  if (type == GIMP_PDB_PROC_TYPE_TEMPORARY) name = twin_name = lcm_resident_twin_name(info->name);
  GimpProcedure *procedure =
      gimp_image_procedure_new(plug_in, name, type, run, (gpointer)info, NULL);
  gimp_procedure_set_image_types(procedure, "RGB*, GRAY*");
  gimp_procedure_set_sensitivity_mask(procedure, info->sensitivity);
  gimp_procedure_set_menu_label(procedure, _(info->menu_label));
  if (type != GIMP_PDB_PROC_TYPE_TEMPORARY) gimp_procedure_add_menu_path(procedure, MENU_PATH);
  gimp_procedure_set_documentation(procedure, _(info->blurb), _(info->help), name);
  gimp_procedure_set_attribution(procedure, "gimp-lcm contributors", "gimp-lcm contributors",
                                 "2026");
  add_arguments(procedure, info);
  return procedure;
}

static GimpValueArray *run_resident(GimpProcedure *procedure, GimpProcedureConfig *config,
                                    gpointer run_data) {
  (void)config;
  (void)run_data;
  GimpPlugIn *plug_in = gimp_procedure_get_plug_in(procedure);
  GList *twins = NULL;
  for (size_t i = 0; i < G_N_ELEMENTS(procedure_infos); i++)
    twins = g_list_append(
        twins, new_image_procedure(plug_in, &procedure_infos[i], GIMP_PDB_PROC_TYPE_TEMPORARY));
  lcm_resident_serve(procedure, twins);
  return gimp_procedure_new_return_values(procedure, GIMP_PDB_SUCCESS, NULL);
}

static GimpProcedure *create_procedure(GimpPlugIn *plug_in, const gchar *name) {
  const ProcedureInfo *info = find_procedure(name);
  if (info) return new_image_procedure(plug_in, info, GIMP_PDB_PROC_TYPE_PLUGIN);
  if (g_strcmp0(name, LCM_RESIDENT_PROCEDURE)) return NULL;
  /* Persistent and without arguments: GIMP starts it when it starts. */
  GimpProcedure *procedure =
      gimp_procedure_new(plug_in, name, GIMP_PDB_PROC_TYPE_PERSISTENT, run_resident, NULL, NULL);
  gimp_procedure_set_documentation(
      procedure, _("Keeps the LCM model loaded between non-interactive calls"),
      _("Started by GIMP when it starts. Serves the non-interactive runs of the LCM procedures "
        "(Script-Fu, batch mode, Repeat Last) so that a batch loads the model once; frees the "
        "model after five minutes without calls ($GIMP_LCM_RESIDENT_IDLE seconds). "
        "GIMP_LCM_RESIDENT=off makes every call load the model itself."),
      name);
  gimp_procedure_set_attribution(procedure, "gimp-lcm contributors", "gimp-lcm contributors",
                                 "2026");
  return procedure;
}

/* The catalog lives in the installed locale folder, not beside the plug-in
 * (where GIMP would look): bind it ourselves and tell GIMP to do nothing. */
static gboolean set_i18n(GimpPlugIn *plug_in, const gchar *procedure_name, gchar **gettext_domain,
                         gchar **catalog_dir) {
  (void)plug_in;
  (void)procedure_name;
  (void)gettext_domain;
  (void)catalog_dir;
  lcm_dialog_init_i18n(NULL);
  return FALSE;
}

static void lcm_plug_in_class_init(LcmPlugInClass *klass) {
  GimpPlugInClass *plug_in_class = GIMP_PLUG_IN_CLASS(klass);
  plug_in_class->query_procedures = query_procedures;
  plug_in_class->create_procedure = create_procedure;
  plug_in_class->set_i18n = set_i18n;
}

static void lcm_plug_in_init(LcmPlugIn *plug_in) {
  (void)plug_in;
}

GIMP_MAIN(LCM_TYPE_PLUG_IN)
