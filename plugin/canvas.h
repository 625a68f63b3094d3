/* The plug-in's side of the pixels: what a run reads from a GIMP image (the
 * drawable's area as perceptual RGB, the selection as a soft mask) and how
 * the result goes back (a new layer or the drawable's own pixels, as one
 * undo step). */
#pragma once

#include <libgimp/gimp.h>

#include "lcm-dialog.h"
#include "region.h"

G_BEGIN_DECLS

typedef struct {
  GimpImage *image;
  GimpDrawable *drawable; /* NULL: txt2img with no layer selected */
  LcmMode mode;
  LcmOutput output;
  int native_side; /* the model's (lcm_family_native_side): the working sizes follow it */
  /* The repainted area and the model's size. txt2img onto a new layer: the
   * result's size at the image's origin (x, y are image coordinates then). */
  LcmRegion region;
  LcmImage *source; /* the area's RGB at the area's size; NULL for txt2img */
  float *alpha;     /* the area's alpha, one float per pixel; NULL for txt2img */
  LcmImage *mask;   /* the selection over the area; NULL when nothing is selected */
} LcmCanvas;

/* Checks that the run can happen on this image (one drawable at most, not
 * indexed, a layer for img2img / inpaint / replacing, a selection that
 * touches the layer for inpainting, a txt2img size in multiples of 8) and
 * reads the source pixels and the selection at a working size for a model of
 * native_side (plugin/region.h). Nothing in the image changes. On failure the
 * canvas is empty and needs no clearing. */
gboolean lcm_canvas_init(LcmCanvas *canvas, GimpImage *image, GimpDrawable **drawables,
                         LcmMode mode, LcmOutput output, int width, int height, int native_side,
                         GError **error);
void lcm_canvas_clear(LcmCanvas *canvas);

/* The source and the mask at the model's working size (copies when no
 * scaling is needed); NULL when the canvas has none. lcm_image_free them. */
LcmImage *lcm_canvas_work_source(const LcmCanvas *canvas);
LcmImage *lcm_canvas_work_mask(const LcmCanvas *canvas);

/* Puts the model's result (at the working size) into the image, scaled back
 * to the area, as one undo group: on a new layer named layer_name above the
 * drawable (inpainting composited through the soft mask, so unselected
 * pixels equal the source exactly), or into the drawable's pixels (merged
 * through the selection by GIMP). Returns the new or changed layer. */
GimpLayer *lcm_canvas_apply(LcmCanvas *canvas, const LcmImage *result, const char *layer_name,
                            GError **error);

G_END_DECLS
