/* Which part of a drawable a run repaints, and at what size the model sees
 * it. Pure geometry, without libgimp, so it is unit-tested on its own. */
#pragma once

#include <glib.h>

G_BEGIN_DECLS

/* Sizes follow the model's native side (its training size: 512 for SD1.5,
 * 1024 for SDXL and SSD-1B). The model's input never has a longer side above
 * 1.5 times it (SD1.5 draws well from 512 to 768 pixels; bigger costs time
 * and repeats things), and selections are enlarged to at least the native
 * side (models draw badly far below their training size). */
int lcm_region_max_side(int native_side);

typedef struct {
  /* The repainted area, in the drawable's coordinates, inside the drawable. */
  int x, y, width, height;
  /* The size the model works at: multiples of 8. Equal to width x height
   * when no scaling is needed. */
  int work_width, work_height;
} LcmRegion;

/* The whole drawable, scaled down only when its longer side exceeds
 * lcm_region_max_side(native_side), and to the nearest multiples of 8. */
void lcm_region_for_drawable(int drawable_width, int drawable_height, int native_side,
                             LcmRegion *region);

/* The selection's bounding box (drawable coordinates, inside the drawable)
 * plus a margin of context around it, clipped to the drawable and grown to
 * multiples of 8 where the drawable has room; scaled to a longer side
 * between native_side and lcm_region_max_side(native_side). */
void lcm_region_for_selection(int drawable_width, int drawable_height, int x, int y, int width,
                              int height, int native_side, LcmRegion *region);

/* Whether the model's input is the area pixel for pixel. */
gboolean lcm_region_is_unscaled(const LcmRegion *region);

G_END_DECLS
