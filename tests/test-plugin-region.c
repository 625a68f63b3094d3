/* The plug-in's choice of the repainted area and the model's working size. */
#include "../plugin/region.h"

/* The native sides of SD1.5 and SDXL (lcm_family_native_side). */
#define SD15 512
#define SDXL 1024

static void assert_region(const LcmRegion *r, int x, int y, int width, int height, int work_width,
                          int work_height) {
  g_assert_cmpint(r->x, ==, x);
  g_assert_cmpint(r->y, ==, y);
  g_assert_cmpint(r->width, ==, width);
  g_assert_cmpint(r->height, ==, height);
  g_assert_cmpint(r->work_width, ==, work_width);
  g_assert_cmpint(r->work_height, ==, work_height);
}

/* A whole layer that fits is taken as it is; only big or odd sizes scale. */
static void test_drawable(void) {
  LcmRegion r;
  lcm_region_for_drawable(64, 48, SD15, &r);
  assert_region(&r, 0, 0, 64, 48, 64, 48);
  g_assert_true(lcm_region_is_unscaled(&r));
  lcm_region_for_drawable(1536, 1024, SD15, &r);
  assert_region(&r, 0, 0, 1536, 1024, 768, 512);
  g_assert_false(lcm_region_is_unscaled(&r));
  lcm_region_for_drawable(100, 75, SD15, &r);
  assert_region(&r, 0, 0, 100, 75, 104, 72);
}

/* The selection plus a quarter of its size as context, clipped to the
 * layer: here the whole 512x384 layer, which needs no scaling. */
static void test_selection_covering_layer(void) {
  LcmRegion r;
  lcm_region_for_selection(512, 384, 60, 48, 380, 300, SD15, &r);
  assert_region(&r, 0, 0, 512, 384, 512, 384);
  g_assert_true(lcm_region_is_unscaled(&r));
}

/* A small selection inside a big layer: 32 pixels of context on each side,
 * then enlarged to the model's 512. */
static void test_small_selection(void) {
  LcmRegion r;
  lcm_region_for_selection(2000, 2000, 1000, 1000, 64, 32, SD15, &r);
  assert_region(&r, 968, 968, 128, 96, 512, 384);
}

/* Odd sizes grow to multiples of 8, forwards first, backwards at the edge. */
static void test_grow_to_multiple_of_8(void) {
  LcmRegion r;
  lcm_region_for_selection(1000, 1000, 500, 500, 401, 401, SD15, &r);
  /* margin 100: 400..1001 clipped to 1000 -> 600 wide, a multiple already */
  assert_region(&r, 400, 400, 600, 600, 600, 600);
  lcm_region_for_selection(1003, 700, 700, 100, 203, 403, SD15, &r);
  /* x: margin 100 gives 600..1003, 403 wide; the 5 missing pixels cannot go
   * forwards (the layer ends), so the area starts 5 earlier. */
  g_assert_cmpint(r.x, ==, 595);
  g_assert_cmpint(r.width, ==, 408);
  g_assert_cmpint(r.width % 8, ==, 0);
  g_assert_cmpint(r.height % 8, ==, 0);
  g_assert_cmpint(r.y + r.height, <=, 700);
}

/* Huge selections scale down to the 768 limit. */
static void test_large_selection(void) {
  LcmRegion r;
  lcm_region_for_selection(4000, 3000, 0, 0, 4000, 3000, SD15, &r);
  assert_region(&r, 0, 0, 4000, 3000, 768, 576);
}

/* SDXL's sizes are twice SD1.5's: selections grow to at least 1024 and
 * areas shrink to at most 1536 on the longer side. */
static void test_sdxl_sizes(void) {
  LcmRegion r;
  g_assert_cmpint(lcm_region_max_side(SD15), ==, 768);
  g_assert_cmpint(lcm_region_max_side(SDXL), ==, 1536);
  lcm_region_for_drawable(1536, 1024, SDXL, &r);
  assert_region(&r, 0, 0, 1536, 1024, 1536, 1024);
  g_assert_true(lcm_region_is_unscaled(&r));
  lcm_region_for_drawable(3072, 2048, SDXL, &r);
  assert_region(&r, 0, 0, 3072, 2048, 1536, 1024);
  lcm_region_for_drawable(64, 48, SDXL, &r); /* a small layer is taken as it is */
  assert_region(&r, 0, 0, 64, 48, 64, 48);
  lcm_region_for_selection(2000, 2000, 1000, 1000, 64, 32, SDXL, &r);
  assert_region(&r, 968, 968, 128, 96, 1024, 768);
  lcm_region_for_selection(1024, 768, 120, 96, 760, 600, SDXL, &r);
  assert_region(&r, 0, 0, 1024, 768, 1024, 768);
  g_assert_true(lcm_region_is_unscaled(&r));
  lcm_region_for_selection(4000, 3000, 0, 0, 4000, 3000, SDXL, &r);
  assert_region(&r, 0, 0, 4000, 3000, 1536, 1152);
}

int main(int argc, char **argv) {
  g_test_init(&argc, &argv, NULL);
  g_test_add_func("/plugin-region/drawable", test_drawable);
  g_test_add_func("/plugin-region/selection-covering-layer", test_selection_covering_layer);
  g_test_add_func("/plugin-region/small-selection", test_small_selection);
  g_test_add_func("/plugin-region/grow-to-multiple-of-8", test_grow_to_multiple_of_8);
  g_test_add_func("/plugin-region/large-selection", test_large_selection);
  g_test_add_func("/plugin-region/sdxl-sizes", test_sdxl_sizes);
  return g_test_run();
}
