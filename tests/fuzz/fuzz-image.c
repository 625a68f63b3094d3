/* User pictures: any bytes as gimp-lcm-cli's source picture and mask
 * (tools/cli/picture.c, GdkPixbuf's loaders), composited as after an
 * inpainting (core/image.c); and the first bytes as a drawable and selection
 * the plug-in turns into the model's working area (plugin/region.c). */
#include "fuzz-common.h"
#include "picture.h"
#include "region.h"

#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* GIMP's largest image side. */
#define GIMP_MAX_SIDE 524288

static int read_side(const uint8_t *bytes) {
  guint32 value;
  memcpy(&value, bytes, sizeof value);
  return 1 + (int)(value % GIMP_MAX_SIDE);
}

static void check_region(const LcmRegion *region, int drawable_width, int drawable_height,
                         int native_side) {
  fuzz_assert(region->x >= 0 && region->y >= 0 && region->width > 0 && region->height > 0 &&
                  region->x + region->width <= drawable_width &&
                  region->y + region->height <= drawable_height,
              "the region leaves the drawable");
  fuzz_assert(region->work_width >= 8 && region->work_height >= 8 && region->work_width % 8 == 0 &&
                  region->work_height % 8 == 0,
              "the working size is not made of multiples of 8");
  fuzz_assert(MAX(region->work_width, region->work_height) <= lcm_region_max_side(native_side),
              "the working size exceeds lcm_region_max_side");
}

static void check_regions(const uint8_t *data, size_t size) {
  if (size < 24) return;
  int width = read_side(data), height = read_side(data + 4);
  int native_side = data[0] & 1 ? 1024 : 512; /* SDXL's or SD1.5's */
  LcmRegion region;
  lcm_region_for_drawable(width, height, native_side, &region);
  check_region(&region, width, height, native_side);
  /* a selection bounding box inside the drawable */
  int x = read_side(data + 8) % width, y = read_side(data + 12) % height;
  int selection_width = 1 + read_side(data + 16) % (width - x);
  int selection_height = 1 + read_side(data + 20) % (height - y);
  lcm_region_for_selection(width, height, x, y, selection_width, selection_height, native_side,
                           &region);
  check_region(&region, width, height, native_side);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  check_regions(data, size);
  const char *path = fuzz_write_file("picture", data, size);
  GError *error = NULL;
  LcmImage *source = picture_load_source(path, &error);
  if (!source) {
    fuzz_expect_lcm_error(error);
    return 0;
  }
  LcmImage *mask = picture_load_mask(path, source, path, &error);
  fuzz_assert(mask != NULL, "a picture that loads as a source fails as its own mask");
  LcmImage *result = lcm_image_new(source->width, source->height, 3);
  fuzz_assert(lcm_image_composite(result, source, mask, &error), "compositing failed");
  for (size_t i = 0; i < (size_t)source->width * source->height; i++)
    if (mask->data[i] == 0.0f)
      fuzz_assert(memcmp(&result->data[3 * i], &source->data[3 * i], 3 * sizeof(float)) == 0,
                  "an unmasked pixel changed");
  lcm_image_free(result);
  lcm_image_free(mask);
  lcm_image_free(source);
  return 0;
}
