/* Shared helpers for the unit tests. */
#pragma once

#include "lcm.h"
#include "safetensors.h"

#include <glib.h>
#include <json-glib/json-glib.h>
#include <stdarg.h>

/* Path of a file under tests/data (from LCM_TEST_DATA); g_free it. */
char *test_data_path(const char *relative);
/* Path of a file under tests/data/golden; g_free it. */
char *test_golden_path(const char *relative);
/* Deletes a file or a folder with everything in it (symlinks not followed). */
void test_remove_tree(const char *path);

/* The text side of tests/data/golden-sdxl/tiny-sdxl-lcm (both text
 * encoders and tokenizers, no UNet); fails the test if it does not open. */
LcmModel *test_sdxl_text_model(void);
/* Max |a-b| over n floats. */
double test_max_abs_diff(const float *a, const float *b, size_t n);
/* Cosine similarity of two vectors. */
double test_cosine(const float *a, const float *b, size_t n);
/* Asserts `error` is LCM_ERROR `code` and its message holds every one of the
 * NULL-terminated substrings that follow; logs the message. */
void test_expect_error(const GError *error, int code, ...) G_GNUC_NULL_TERMINATED;
void test_expect_error_valist(const GError *error, int code, va_list parts);

/* ---- Golden cases (tests/data/golden/cases.json, see its README.md) ---- */

typedef struct {
  JsonObject *object; /* the case in cases.json (lives as long as the test) */
  StFile *file;       /* the case's tensors */
  double atol, rtol;  /* its tolerance; 0 where cases.json gives none */
} TestGoldenCase;

/* Every case of cases.json, in file order; read once, kept to the end. */
JsonArray *test_golden_cases(void);
/* The case called `name` with its tensor file open; fails the test if absent. */
TestGoldenCase *test_golden_case_load(const char *name);
void test_golden_case_free(TestGoldenCase *gc);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(TestGoldenCase, test_golden_case_free)
/* The case's paths.<role> made absolute; NULL when it has none. g_free it. */
char *test_golden_case_path(const TestGoldenCase *gc, const char *role);

/* The tensor `name` of a golden file as fp32, failing the test when it is
 * absent; `numel` (may be NULL) receives its element count. g_free it. */
float *test_golden_tensor(const StFile *file, const char *name, int64_t *numel);
/* Asserts every element within atol + rtol*|golden|, logging the max error
 * and the first element out of tolerance; returns the max |got - golden|. */
double test_assert_close(const char *what, const float *got, const float *golden, size_t n,
                         double atol, double rtol);
/* TRUE (and the test skipped) when `error` says the CPU cannot compute in
 * `precision` bf16; a load in fp32 must not fail that way. */
gboolean test_skip_if_unsupported(const GError *error, LcmPrecision precision);
