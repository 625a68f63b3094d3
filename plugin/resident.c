#include "resident.h"

#include <gio/gio.h>
#include <string.h>

#define GETTEXT_PACKAGE LCM_GETTEXT_DOMAIN
#include <glib/gi18n-lib.h>

/* Seconds without calls before the resident frees its pipeline: long enough
 * for a batch and a user's repeats, short enough not to hold gigabytes of
 * memory for a whole GIMP session. */
#define DEFAULT_IDLE_SECONDS 300
#define TWIN_PREFIX "plug-in-lcm-resident-"
#define PROCEDURE_PREFIX "plug-in-lcm-"

/* The resident process's state: one per process. */
static struct {
  gboolean busy;
  LcmPipeline *pipeline;
  char *pipeline_key;
  gint64 last_call_us;
  gint64 idle_us; /* read from the environment once, when serving starts */
} resident;

char *lcm_resident_twin_name(const char *procedure_name) {
  g_return_val_if_fail(g_str_has_prefix(procedure_name, PROCEDURE_PREFIX), NULL);
  return g_strconcat(TWIN_PREFIX, procedure_name + strlen(PROCEDURE_PREFIX), NULL);
}

/* Copies the properties the two configs share (the procedures' arguments). */
static void copy_arguments(GimpProcedureConfig *from, GimpProcedureConfig *to) {
  guint n = 0;
  g_autofree GParamSpec **specs = g_object_class_list_properties(G_OBJECT_GET_CLASS(to), &n);
  for (guint i = 0; i < n; i++) {
    const char *name = g_param_spec_get_name(specs[i]);
    GParamSpec *source = g_object_class_find_property(G_OBJECT_GET_CLASS(from), name);
    if (!source || !(source->flags & G_PARAM_READABLE) || !(specs[i]->flags & G_PARAM_WRITABLE) ||
        (specs[i]->flags & G_PARAM_CONSTRUCT_ONLY) || source->value_type != specs[i]->value_type)
      continue;
    GValue value = G_VALUE_INIT;
    g_value_init(&value, source->value_type);
    g_object_get_property(G_OBJECT(from), name, &value);
    g_object_set_property(G_OBJECT(to), name, &value);
    g_value_unset(&value);
  }
}

GimpValueArray *lcm_resident_forward(GimpProcedure *procedure, GimpProcedureConfig *config,
                                     GimpImage *image, GimpDrawable **drawables) {
  GimpPDB *pdb = gimp_get_pdb();
  g_autofree char *twin_name = lcm_resident_twin_name(gimp_procedure_get_name(procedure));
  if (!gimp_pdb_procedure_exists(pdb, twin_name)) return NULL;
  GimpProcedure *twin = gimp_pdb_lookup_procedure(pdb, twin_name);
  if (!twin) return NULL;
  GimpProcedureConfig *twin_config = gimp_procedure_create_config(twin);
  copy_arguments(config, twin_config);
  g_object_set(twin_config, "run-mode", GIMP_RUN_NONINTERACTIVE, "image", image, "drawables",
               drawables, NULL);
  GimpValueArray *values = gimp_procedure_run_config(twin, twin_config);
  g_object_unref(twin_config);
  GimpPDBStatusType status = GIMP_VALUES_GET_ENUM(values, 0);
  /* Busy (a calling error, as the arguments were already checked against the
   * same signature), or the resident died during the call (its twins are
   * gone): run in-process instead. */
  if (status == GIMP_PDB_CALLING_ERROR ||
      (status == GIMP_PDB_EXECUTION_ERROR && !gimp_pdb_procedure_exists(pdb, twin_name))) {
    g_debug("resident: %s did not serve the call (status %d); running in-process", twin_name,
            (int)status);
    gimp_value_array_unref(values);
    return NULL;
  }
  return values;
}

static void free_pipeline(const char *why) {
  if (!resident.pipeline) return;
  g_debug("resident: pipeline freed (%s)", why);
  g_clear_pointer(&resident.pipeline, lcm_pipeline_free);
  g_clear_pointer(&resident.pipeline_key, g_free);
}

static gint64 idle_us(void) {
  const char *text = g_getenv("GIMP_LCM_RESIDENT_IDLE");
  guint64 seconds = DEFAULT_IDLE_SECONDS;
  if (text && !g_ascii_string_to_unsigned(text, 10, 0, G_MAXINT, &seconds, NULL))
    seconds = DEFAULT_IDLE_SECONDS;
  return (gint64)seconds * G_USEC_PER_SEC;
}

void lcm_resident_serve(GimpProcedure *procedure, GList *twins) {
  GimpPlugIn *plug_in = gimp_procedure_get_plug_in(procedure);
  const gboolean off = !g_strcmp0(g_getenv("GIMP_LCM_RESIDENT"), "off");
  for (GList *t = twins; t && !off; t = t->next)
    gimp_plug_in_add_temp_procedure(plug_in, GIMP_PROCEDURE(t->data));
  g_list_free_full(twins, g_object_unref);
  /* GIMP's start waits for this: nothing slow comes before it. */
  gimp_procedure_persistent_ready(procedure);
  if (off) return;
  resident.idle_us = idle_us();
  for (;;) {
    guint wait_ms = 0; /* 0: until the next message */
    if (resident.pipeline) {
      const gint64 left = resident.last_call_us + resident.idle_us - g_get_monotonic_time();
      if (left <= 0) {
        free_pipeline("idle");
        continue;
      }
      wait_ms = (guint)MIN(left / 1000 + 1, G_MAXUINT);
    }
    /* Serves at most one message; GIMP's quit ends the process in here. */
    gimp_plug_in_persistent_process(plug_in, wait_ms);
  }
}

gboolean lcm_resident_begin(void) {
  if (resident.busy) return FALSE;
  resident.busy = TRUE;
  return TRUE;
}

void lcm_resident_end(void) {
  resident.busy = FALSE;
  resident.last_call_us = g_get_monotonic_time();
  if (resident.idle_us == 0) free_pipeline("GIMP_LCM_RESIDENT_IDLE=0");
}

GimpValueArray *lcm_resident_busy_values(GimpProcedure *twin) {
  return gimp_procedure_new_return_values(
      twin, GIMP_PDB_CALLING_ERROR,
      g_error_new_literal(G_IO_ERROR, G_IO_ERROR_BUSY,
                          _("The resident LCM process is busy with another call")));
}

/* A model or LoRA path's identity: a file replaced on disk changes it (a
 * model folder's own entry changes when a file in it is replaced by
 * renaming, as downloads and the weight tools do). */
static void append_file_identity(GString *key, const char *path) {
  g_autofree char *identity = lcm_file_identity(path);
  g_string_append_printf(key, "\n%s", identity ? identity : path);
}

LcmPipeline *lcm_resident_pipeline(LcmSettings *settings, GError **error) {
  if (!settings->model_path || !*settings->model_path) {
    g_free(settings->model_path);
    if (!(settings->model_path = lcm_resolve(NULL, LCM_ASSET_MODEL, NULL, error))) return NULL;
  }
  g_autoptr(GArray) loras = lcm_loras_parse(settings->loras, error);
  if (!loras) return NULL;
  g_autofree char *settings_key = lcm_settings_pipeline_key(settings);
  GString *key = g_string_new(settings_key);
  append_file_identity(key, settings->model_path);
  for (guint i = 0; i < loras->len; i++)
    append_file_identity(key, g_array_index(loras, LcmLoraEntry, i).path);
  g_autofree char *wanted = g_string_free(key, FALSE);
  if (resident.pipeline && !strcmp(resident.pipeline_key, wanted)) {
    g_debug("resident: pipeline reused");
    return resident.pipeline;
  }
  /* Free first: two full-size pipelines may not fit in memory. */
  free_pipeline("another model");
  if (!(resident.pipeline = lcm_settings_load_pipeline(settings, NULL, error))) return NULL;
  resident.pipeline_key = g_steal_pointer(&wanted);
  g_debug("resident: pipeline loaded");
  return resident.pipeline;
}
