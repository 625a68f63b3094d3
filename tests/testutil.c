#include "testutil.h"

#include <glib/gstdio.h>

#include <math.h>
#include <string.h>

char *test_data_path(const char *relative) {
  const char *root = g_getenv("LCM_TEST_DATA");
  g_assert_nonnull(root);
  return g_build_filename(root, relative, NULL);
}

char *test_golden_path(const char *relative) {
  g_autofree char *path = g_build_filename("golden", relative, NULL);
  return test_data_path(path);
}

LcmModel *test_sdxl_text_model(void) {
  g_autofree char *folder = test_data_path("golden-sdxl/tiny-sdxl-lcm");
  g_autofree char *te = g_build_filename(folder, "text_encoder", NULL);
  g_autofree char *te_2 = g_build_filename(folder, "text_encoder_2", NULL);
  g_autofree char *tok = g_build_filename(folder, "tokenizer", NULL);
  g_autofree char *tok_2 = g_build_filename(folder, "tokenizer_2", NULL);
  LcmModelParts parts = {
      .text_encoder = te, .text_encoder_2 = te_2, .tokenizer = tok, .tokenizer_2 = tok_2};
  g_autoptr(GError) error = NULL;
  LcmModel *model = lcm_model_open_parts(&parts, &error);
  g_assert_no_error(error);
  return model;
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

void test_expect_error(const GError *error, int code, ...) {
  va_list parts;
  va_start(parts, code);
  test_expect_error_valist(error, code, parts);
  va_end(parts);
}

void test_expect_error_valist(const GError *error, int code, va_list parts) {
  g_assert_nonnull(error);
  g_assert_error(error, LCM_ERROR, code);
  g_test_message("%s", error->message);
  for (const char *part; (part = va_arg(parts, const char *));)
    if (!strstr(error->message, part)) g_error("message '%s' lacks '%s'", error->message, part);
}

/* ---- Golden cases ---- */

JsonArray *test_golden_cases(void) {
  static JsonParser *parser;
  if (!parser) {
    g_autofree char *path = test_golden_path("cases.json");
    g_autoptr(GError) error = NULL;
    parser = json_parser_new();
    g_assert_true(json_parser_load_from_file(parser, path, &error));
    g_assert_no_error(error);
  }
  return json_object_get_array_member(json_node_get_object(json_parser_get_root(parser)), "cases");
}

TestGoldenCase *test_golden_case_load(const char *name) {
  JsonArray *cases = test_golden_cases();
  for (guint i = 0; i < json_array_get_length(cases); i++) {
    JsonObject *c = json_array_get_object_element(cases, i);
    if (g_strcmp0(json_object_get_string_member(c, "name"), name) != 0) continue;
    TestGoldenCase *gc = g_new0(TestGoldenCase, 1);
    gc->object = c;
    if (json_object_has_member(c, "tolerance")) {
      JsonObject *tolerance = json_object_get_object_member(c, "tolerance");
      gc->atol = json_object_get_double_member_with_default(tolerance, "atol", 0);
      gc->rtol = json_object_get_double_member_with_default(tolerance, "rtol", 0);
    }
    g_autofree char *file = test_golden_path(json_object_get_string_member(c, "file"));
    g_autoptr(GError) error = NULL;
    gc->file = st_open(file, &error);
    g_assert_no_error(error);
    return gc;
  }
  g_error("golden case %s is not in cases.json", name);
}

void test_golden_case_free(TestGoldenCase *gc) {
  st_close(gc->file);
  g_free(gc);
}

char *test_golden_case_path(const TestGoldenCase *gc, const char *role) {
  JsonObject *paths = json_object_get_object_member(gc->object, "paths");
  if (!json_object_has_member(paths, role)) return NULL;
  return test_golden_path(json_object_get_string_member(paths, role));
}

float *test_golden_tensor(const StFile *file, const char *name, int64_t *numel) {
  const StTensor *t = st_find(file, name);
  if (!t) g_error("golden tensor %s is missing", name);
  float *data = g_new(float, MAX(st_numel(t), 1));
  st_tensor_to_f32(t, data);
  if (numel) *numel = st_numel(t);
  return data;
}

double test_assert_close(const char *what, const float *got, const float *golden, size_t n,
                         double atol, double rtol) {
  size_t bad = 0, first_bad = 0;
  for (size_t i = 0; i < n; i++) {
    if (fabs((double)got[i] - golden[i]) <= atol + rtol * fabs(golden[i])) continue;
    if (bad++ == 0) first_bad = i;
  }
  double max_err = test_max_abs_diff(got, golden, n);
  g_test_message("%s: max |err| %.3g (atol %.3g, rtol %.3g)", what, max_err, atol, rtol);
  if (bad)
    g_test_message("%s: %zu of %zu out of tolerance, first at %zu: %g vs %g", what, bad, n,
                   first_bad, got[first_bad], golden[first_bad]);
  g_assert_cmpuint(bad, ==, 0);
  return max_err;
}

gboolean test_skip_if_unsupported(const GError *error, LcmPrecision precision) {
  if (precision != LCM_PRECISION_BF16 || !g_error_matches(error, LCM_ERROR, LCM_ERROR_UNSUPPORTED))
    return FALSE;
  g_test_skip(error->message); /* no bf16 on this CPU */
  return TRUE;
}

void test_remove_tree(const char *path) {
  if (g_file_test(path, G_FILE_TEST_IS_DIR) && !g_file_test(path, G_FILE_TEST_IS_SYMLINK)) {
    GDir *dir = g_dir_open(path, 0, NULL);
    for (const char *name; dir && (name = g_dir_read_name(dir));) {
      g_autofree char *child = g_build_filename(path, name, NULL);
      test_remove_tree(child);
    }
    if (dir) g_dir_close(dir);
    g_rmdir(path);
  } else {
    g_unlink(path);
  }
}
