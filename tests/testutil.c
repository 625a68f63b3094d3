#include "testutil.h"

#include <math.h>

char *test_data_path(const char *relative) {
  const char *root = g_getenv("LCM_TEST_DATA");
  g_assert_nonnull(root);
  return g_build_filename(root, relative, NULL);
}

double test_max_abs_diff(const float *a, const float *b, size_t n) {
  double m = 0;
  for (size_t i = 0; i < n; i++) m = fmax(m, fabs((double)a[i] - (double)b[i]));
  return m;
}

double test_cosine(const float *a, const float *b, size_t n) {
  double ab = 0, aa = 0, bb = 0;
  for (size_t i = 0; i < n; i++) {
    ab += (double)a[i] * b[i];
    aa += (double)a[i] * a[i];
    bb += (double)b[i] * b[i];
  }
  return aa == 0 && bb == 0 ? 1.0 : ab / sqrt(aa * bb);
}
