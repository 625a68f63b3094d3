#include "fuzz-common.h"

#include <glib/gstdio.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char *scratch_dir;
static GHashTable *paths; /* name -> path in scratch_dir */

static void remove_scratch(void) {
  GDir *dir = g_dir_open(scratch_dir, 0, NULL);
  const char *name;
  while (dir && (name = g_dir_read_name(dir))) {
    char *path = g_build_filename(scratch_dir, name, NULL);
    g_remove(path);
    g_free(path);
  }
  if (dir) g_dir_close(dir);
  g_rmdir(scratch_dir);
}

/* Criticals (a failed g_return_if_fail) and warnings are bugs here: they
 * abort, which libFuzzer catches and keeps the input of (GLib's own fatal
 * logs raise SIGTRAP, which it does not). */
static GLogWriterOutput abort_on_warning(GLogLevelFlags level, const GLogField *fields,
                                         gsize n_fields, gpointer user_data) {
  GLogWriterOutput written = g_log_writer_standard_streams(level, fields, n_fields, user_data);
  if (level & (G_LOG_LEVEL_ERROR | G_LOG_LEVEL_CRITICAL | G_LOG_LEVEL_WARNING)) abort();
  return written;
}

int LLVMFuzzerInitialize(int *argc, char ***argv);

/* libFuzzer calls this once before any input. */
int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  g_log_set_writer_func(abort_on_warning, NULL, NULL);
  return 0;
}

const char *fuzz_scratch_dir(void) {
  if (!scratch_dir) {
    scratch_dir = g_dir_make_tmp("gimp-lcm-fuzz-XXXXXX", NULL);
    if (!scratch_dir) abort();
    paths = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
    atexit(remove_scratch);
  }
  return scratch_dir;
}

const char *fuzz_write_file(const char *name, const uint8_t *data, size_t size) {
  const char *dir = fuzz_scratch_dir();
  const char *path = g_hash_table_lookup(paths, name);
  if (!path) {
    path = g_build_filename(dir, name, NULL);
    g_hash_table_insert(paths, g_strdup(name), (char *)path);
  }
  FILE *out = fopen(path, "wb");
  if (!out || (size > 0 && fwrite(data, 1, size, out) != size) || fclose(out) != 0) abort();
  return path;
}

char *fuzz_string(const uint8_t *data, size_t size) {
  char *text = g_malloc(size + 1);
  memcpy(text, data, size);
  text[size] = '\0';
  return text;
}

void fuzz_assert(gboolean condition, const char *what) {
  if (condition) return;
  fprintf(stderr, "fuzz target: %s\n", what);
  abort();
}

void fuzz_expect_lcm_error(GError *error) {
  fuzz_assert(error != NULL, "failure without a GError");
  fuzz_assert(error->domain == LCM_ERROR, error->message);
  fuzz_assert(error->message && *error->message, "GError without a message");
  g_error_free(error);
}

void fuzz_read_all_weights(const Weights *weights) {
  GPtrArray *names = weights_names(weights);
  for (guint i = 0; i < names->len; i++) {
    int ndims;
    int64_t shape[ST_MAX_DIMS];
    fuzz_assert(weights_shape(weights, names->pdata[i], &ndims, shape),
                "a listed weight has no shape");
    GError *error = NULL;
    float *values = weights_get(weights, names->pdata[i], ndims, shape, &error);
    if (!values) fuzz_expect_lcm_error(error);
    g_free(values);
  }
  g_ptr_array_unref(names);
}

char *fuzz_test_data(const char *relative) {
  return g_build_filename(FUZZ_TEST_DATA, relative, NULL);
}
