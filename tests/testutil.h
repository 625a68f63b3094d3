/* Shared helpers for the unit tests. */
#pragma once

#include <glib.h>

/* Path of a file under tests/data (from LCM_TEST_DATA); g_free it. */
char *test_data_path(const char *relative);
/* Max |a-b| over n floats. */
double test_max_abs_diff(const float *a, const float *b, size_t n);
/* Cosine similarity of two vectors. */
double test_cosine(const float *a, const float *b, size_t n);
