/* Which part of a drawable a run repaints, and at what size the model sees
 * it. Pure geometry, without libgimp, so it is unit-tested on its own. */
#pragma once

#include <glib.h>

G_BEGIN_DECLS

/* The model's input never has a longer side above this (SD1.5 models draw
 * well from 512 to 768 pixels; bigger costs time and repeats things). */
#define LCM_REGION_MAX_SIDE 768
/* Selections are enlarged to at least this longer side: SD1.5 models draw
 * badly far below their training size of 512. */
#define LCM_REGION_MIN_SELECTION_SIDE 512

typedef struct {
  /* The repainted area, in the drawable's coordinates, inside the drawable. */
  int x, y, width, height;
  /* The size the model works at: multiples of 8. Equal to width x height
   * when no scaling is needed. */
  int work_width, work_height;
} LcmRegion;

/* The whole drawable, scaled down only when its longer side exceeds
 * LCM_REGION_MAX_SIDE, and to the nearest multiples of 8. */
void lcm_region_for_drawable(int drawable_width, int drawable_height, LcmRegion *region);

/* The selection's bounding box (drawable coordinates, inside the drawable)
 * plus a margin of context around it, clipped to the drawable and grown to
 * multiples of 8 where the drawable has room; scaled to a longer side
 * between LCM_REGION_MIN_SELECTION_SIDE and LCM_REGION_MAX_SIDE. */
void lcm_region_for_selection(int drawable_width, int drawable_height, int x, int y, int width,
                              int height, LcmRegion *region);

/* Whether the model's input is the area pixel for pixel. */
gboolean lcm_region_is_unscaled(const LcmRegion *region);

G_END_DECLS
