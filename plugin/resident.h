/* The resident process: keeps the model loaded between non-interactive
 * calls, so a Script-Fu batch loads it once (docs/architecture.md,
 * "Resident process"). GIMP autostarts the persistent procedure
 * plug-in-lcm-resident (it has no arguments) when it starts; it registers
 * temporary twins of the three procedures and serves them. The normal
 * procedures forward their non-interactive runs to the twins and run
 * in-process when no twin answers. */
#pragma once

#include "lcm-dialog.h"

#include <libgimp/gimp.h>

G_BEGIN_DECLS

#define LCM_RESIDENT_PROCEDURE "plug-in-lcm-resident"

/* "plug-in-lcm-txt2img" → "plug-in-lcm-resident-txt2img" (g_free it). */
char *lcm_resident_twin_name(const char *procedure_name);

/* Runs procedure's arguments (config, image, drawables) through its twin in
 * the resident process. NULL when no resident serves the call: none runs
 * (with GIMP_LCM_RESIDENT=off it has no twins), it is busy with another
 * call, or it ended during this one; the caller then runs in-process. Otherwise the twin's return
 * values: success with the layer, cancel, or the run's error. */
GimpValueArray *lcm_resident_forward(GimpProcedure *procedure, GimpProcedureConfig *config,
                                     GimpImage *image, GimpDrawable **drawables);

/* The resident procedure's body: installs the twins (temporary procedures;
 * the list and its references are taken), tells GIMP it is ready, then
 * serves calls until GIMP quits (it returns at once, without twins, when
 * GIMP_LCM_RESIDENT=off). The pipeline is freed
 * after GIMP_LCM_RESIDENT_IDLE seconds without calls (default 300; 0 frees
 * it after every call). */
void lcm_resident_serve(GimpProcedure *procedure, GList *twins);

/* A twin's run brackets its work with these. begin is FALSE when a call is
 * already being served (GIMP can deliver a second call while the first one
 * waits for a PDB reply): the twin then returns lcm_resident_busy_values. */
gboolean lcm_resident_begin(void);
void lcm_resident_end(void);
GimpValueArray *lcm_resident_busy_values(GimpProcedure *twin);

/* The pipeline for settings: the one loaded by an earlier call when it was
 * loaded for the same model and LoRA files (unchanged on disk) and
 * precision, else a new one (the old one is freed first). It stays the
 * resident's. settings->model_path is resolved here ("" → the default
 * model) so that the key names the files. */
LcmPipeline *lcm_resident_pipeline(LcmSettings *settings, GError **error);

G_END_DECLS
