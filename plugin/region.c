#include "region.h"

#include <math.h>

/* Context kept around a selection: a quarter of its longer side, at least
 * this much, so the model sees what surrounds the repainted part. */
#define MIN_CONTEXT_MARGIN 32

static int round_to_multiple_of_8(double length) {
  return MAX(8, (int)lround(length / 8.0) * 8);
}

/* Scales the area so that its longer side lies in [min_side, max_side]. */
static void set_work_size(LcmRegion *region, int min_side, int max_side) {
  int longer = MAX(region->width, region->height);
  double scale = 1.0;
  if (longer > max_side)
    scale = (double)max_side / longer;
  else if (longer < min_side)
    scale = (double)min_side / longer;
  region->work_width = round_to_multiple_of_8(region->width * scale);
  region->work_height = round_to_multiple_of_8(region->height * scale);
}

/* Widens [*start, *start + *length) by margin on both sides, inside
 * [0, extent), then to a multiple of 8 (forwards first) if room is left. */
static void grow_axis(int *start, int *length, int extent, int margin) {
  int low = MAX(0, *start - margin);
  int high = MIN(extent, *start + *length + margin);
  int missing = (8 - (high - low) % 8) % 8;
  int forwards = MIN(missing, extent - high);
  high += forwards;
  low -= MIN(missing - forwards, low);
  *start = low;
  *length = high - low;
}

int lcm_region_max_side(int native_side) {
  return native_side / 2 * 3;
}

void lcm_region_for_drawable(int drawable_width, int drawable_height, int native_side,
                             LcmRegion *region) {
  *region = (LcmRegion){.width = drawable_width, .height = drawable_height};
  set_work_size(region, 0, lcm_region_max_side(native_side));
}

void lcm_region_for_selection(int drawable_width, int drawable_height, int x, int y, int width,
                              int height, int native_side, LcmRegion *region) {
  int margin = MAX(MIN_CONTEXT_MARGIN, MAX(width, height) / 4);
  *region = (LcmRegion){.x = x, .y = y, .width = width, .height = height};
  grow_axis(&region->x, &region->width, drawable_width, margin);
  grow_axis(&region->y, &region->height, drawable_height, margin);
  set_work_size(region, native_side, lcm_region_max_side(native_side));
}

gboolean lcm_region_is_unscaled(const LcmRegion *region) {
  return region->work_width == region->width && region->work_height == region->height;
}
