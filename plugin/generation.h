/* One full-size generation: loads the model (unless the dialog already did),
 * runs the pipeline on the canvas' working-size inputs and reports progress
 * through GIMP's progress bar. */
#pragma once

#include "lcm-dialog.h"

G_BEGIN_DECLS

/* settings: what to run (settings->seed already resolved into seed).
 * pipeline: a loaded pipeline to use (it stays the caller's), or NULL: one
 * is loaded for this run.
 * source, mask: the working-size inputs (NULL for txt2img; mask NULL for
 * img2img without a selection). interactive (after the dialog, so GTK is
 * set up): run on a worker thread behind a small window with a Cancel
 * button (a cancelled run fails with LCM_ERROR_CANCELLED); otherwise run
 * here, with GIMP's progress bar only. Returns the model's result at the
 * working size. */
LcmImage *lcm_generation_run(const LcmSettings *settings, LcmPipeline *pipeline, uint64_t seed,
                             const LcmImage *source, const LcmImage *mask, gboolean interactive,
                             GError **error);

G_END_DECLS
